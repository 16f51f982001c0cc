//! The fine-tunes users ask for, from a HyperLoRA init: in identity space (the identity's pre-normalisation
//! coefficients move; bases, resampler and SDXL stay frozen, so the result is still a coefficient vector) and in
//! LoRA space (the synthesized LoRA factors themselves move, rank unchanged). Both run AdamW over a few training
//! pairs (one photo each: latents, caption encodings, time ids), accumulating the gradient over all photos each
//! step, with warm-up and a constant or cosine schedule, optional gradient-norm clipping and min-SNR weighting.
//! Randomness (timesteps, noise) comes from the seed alone: two runs with one seed on one device are equal bit for
//! bit.
use super::adamw::{clip_grad_norm, lr_at, AdamW, AdamWConfig, Schedule};
use super::step::{eval_loss, unet_stage, vjp, Batch, Checkpointing, LossOptions};
use crate::error::{Error, Result};
use crate::hyper::synth::{Bases, Branch};
use crate::hyper::ALPHA_RATIO;
use crate::identity::normalize_tokens;
use crate::lora::{LoraLayer, LoraWeights};
use crate::sdxl::pipeline::seeded_noise;
use crate::sdxl::unet::UNet;
use candle_core::{Tensor, Var};
use std::ops::ControlFlow;

/// One training photo, ready for the UNet.
pub struct Pair {
    pub name: String,
    /// [1, 4, h, w]: the VAE's latent mean × scaling factor.
    pub latents: Tensor,
    /// [1, 77, C] and [1, P]: the caption's encodings.
    pub context: Tensor,
    pub text_embeds: Tensor,
    /// [1, 6]: original size, crop top-left, target size.
    pub time_ids: Tensor,
}

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub steps: usize,
    pub adamw: AdamWConfig,
    pub warmup: usize,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this.
    pub max_grad_norm: Option<f64>,
    pub loss: LossOptions,
    pub seed: u64,
    /// The LoRA's strength during training (ΔW = strength · alpha/rank · up·down).
    pub strength: f64,
    /// Gradient checkpointing per transformer block (default: from 512 px up).
    pub checkpointing: Checkpointing,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            steps: 50,
            adamw: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
            warmup: 0,
            schedule: Schedule::Constant,
            max_grad_norm: Some(1.0),
            loss: LossOptions::default(),
            seed: 0,
            strength: 1.0,
            checkpointing: Checkpointing::Auto,
        }
    }
}

impl FinetuneOptions {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > 100_000 {
            return Err(Error::InvalidValue(format!("steps must be 1 to 100000, got {}", self.steps)));
        }
        self.adamw.validate()?;
        if !self.strength.is_finite() || self.strength == 0.0 {
            return Err(Error::InvalidValue(format!("strength {} must be a non-zero number", self.strength)));
        }
        if let Some(g) = self.loss.min_snr_gamma {
            if !(g.is_finite() && g > 0.0) {
                return Err(Error::InvalidValue(format!("min-SNR γ {g} must be positive")));
            }
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidValue(format!("gradient clipping norm {c} must be positive")));
            }
        }
        Ok(())
    }
}

/// A finished step, for progress bars, logs and plots.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    pub total: usize,
    /// Mean training loss over the photos of this step.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// The (timestep, noise) pairs each photo's eval loss is measured at: four timesteps spread over the schedule and
/// noise from a fixed seed, the same before and after training.
const EVAL_TIMESTEPS: [f64; 4] = [0.125, 0.375, 0.625, 0.875];
const EVAL_SEED: u64 = 0xE7A1_5EED;

fn pair_batch(p: &Pair, timesteps: Vec<usize>, noise: Tensor) -> Result<Batch> {
    let n = timesteps.len();
    Ok(Batch {
        x0: p.latents.repeat((n, 1, 1, 1))?,
        noise,
        timesteps,
        context: p.context.repeat((n, 1, 1))?,
        text_embeds: p.text_embeds.repeat((n, 1))?,
        time_ids: p.time_ids.repeat((n, 1))?,
    })
}

/// Mean loss over every photo's fixed eval set with `layers` applied.
pub fn eval(unet: &mut UNet, layers: &[LoraLayer], pairs: &[Pair], ac: &[f64], opts: LossOptions) -> Result<f64> {
    let mut total = 0.0;
    for (i, p) in pairs.iter().enumerate() {
        let ts: Vec<usize> =
            EVAL_TIMESTEPS.iter().map(|f| ((ac.len() as f64 * f) as usize).min(ac.len() - 1)).collect();
        let mut shape = p.latents.dims().to_vec();
        shape[0] = ts.len();
        let noise = seeded_noise(EVAL_SEED.wrapping_add(i as u64), &shape, p.latents.device())?;
        total += eval_loss(unet, layers, &pair_batch(p, ts, noise)?, ac, opts)?;
    }
    Ok(total / pairs.len() as f64)
}

/// The training row of photo `i` at step `step`: a uniform timestep and fresh noise, both from the seed.
fn train_batch(p: &Pair, i: usize, step: usize, seed: u64, ac: &[f64]) -> Result<Batch> {
    let mut rng = crate::rng::Rng::new(seed ^ ((step as u64) << 20) ^ (i as u64).wrapping_mul(0x9E37_79B9));
    let t = (rng.next_u64() % ac.len() as u64) as usize;
    let noise = seeded_noise(rng.next_u64(), p.latents.dims(), p.latents.device())?;
    pair_batch(p, vec![t], noise)
}

/// The mean over the photos of one step's loss and of `per_pair`'s gradients, each photo at its own row (timestep
/// and noise from the seed) with `layers` applied: gradient accumulation over photos.
fn accumulate(
    unet: &mut UNet,
    layers: &[LoraLayer],
    pairs: &[Pair],
    step: usize,
    ac: &[f64],
    opts: &FinetuneOptions,
    mut per_pair: impl FnMut(Vec<(Tensor, Tensor)>) -> Result<Vec<Tensor>>,
) -> Result<(f64, Vec<Tensor>)> {
    let n = pairs.len() as f64;
    let (mut loss, mut acc) = (0.0, Vec::<Tensor>::new());
    for (i, p) in pairs.iter().enumerate() {
        let ug = unet_stage(unet, layers, &train_batch(p, i, step, opts.seed, ac)?, ac, opts.loss)?;
        loss += ug.loss / n;
        let g = per_pair(ug.grads)?.into_iter().map(|g| g / n).collect::<candle_core::Result<Vec<_>>>()?;
        acc = if acc.is_empty() {
            g
        } else {
            acc.iter().zip(g).map(|(a, g)| a + g).collect::<candle_core::Result<_>>()?
        };
    }
    if acc.is_empty() {
        return Err(Error::Mismatch("no training photos".into()));
    }
    Ok((loss, acc))
}

/// The loop both fine-tunes share: each step `step_grads(step)` gives the step's loss and the gradient of every
/// parameter; then the learning rate of the schedule, clipping, one AdamW step and the report. False when
/// `on_step` broke off (between steps).
fn optimise(
    params: &[&Var],
    opts: &FinetuneOptions,
    on_step: &mut dyn FnMut(StepReport) -> ControlFlow<()>,
    mut step_grads: impl FnMut(usize) -> Result<(f64, Vec<Tensor>)>,
) -> Result<bool> {
    opts.validate()?;
    let mut opt = AdamW::new(opts.adamw, params)?;
    for step in 0..opts.steps {
        let lr = lr_at(opts.adamw.lr, opts.schedule, opts.warmup, step, opts.steps);
        let (loss, mut grads) = step_grads(step)?;
        let grad_norm = clip_grad_norm(&mut grads, opts.max_grad_norm)?;
        opt.step(params, &grads, lr)?;
        if on_step(StepReport { step: step + 1, total: opts.steps, loss, lr, grad_norm }).is_break() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Identity space: optimise the raw coefficient tokens `m0` [Q, K] of the ID branch. Returns the final tokens, or
/// `None` when `on_step` broke off (between steps).
pub fn identity_space(
    unet: &mut UNet,
    bases: &Bases,
    m0: &Tensor,
    pairs: &[Pair],
    ac: &[f64],
    opts: &FinetuneOptions,
    on_step: &mut dyn FnMut(StepReport) -> ControlFlow<()>,
) -> Result<Option<Tensor>> {
    let m = Var::from_tensor(m0)?;
    let done = optimise(&[&m], opts, on_step, |step| {
        let c = normalize_tokens(m.as_tensor())?;
        let layers = LoraWeights { layers: bases.synthesize(&c.detach(), Branch::Id)? }
            .scaled(opts.strength * ALPHA_RATIO)
            .layers;
        let (loss, g_c) =
            accumulate(unet, &layers, pairs, step, ac, opts, |g| Ok(vec![bases.coefficient_grad(&g, Branch::Id)?]))?;
        // through the per-token normalisation to the raw tokens
        Ok((loss, vec![vjp(&c, &g_c[0], m.as_tensor())?]))
    })?;
    Ok(done.then(|| m.as_tensor().detach()))
}

/// LoRA space: optimise the factors of `start` (each layer's down and up; scales kept). Returns the trained layers,
/// or `None` when `on_step` broke off.
pub fn lora_space(
    unet: &mut UNet,
    start: &LoraWeights,
    pairs: &[Pair],
    ac: &[f64],
    opts: &FinetuneOptions,
    on_step: &mut dyn FnMut(StepReport) -> ControlFlow<()>,
) -> Result<Option<LoraWeights>> {
    let vars: Vec<(Var, Var)> = start
        .layers
        .iter()
        .map(|l| Ok((Var::from_tensor(&l.down)?, Var::from_tensor(&l.up)?)))
        .collect::<Result<_>>()?;
    let params: Vec<&Var> = vars.iter().flat_map(|(d, u)| [d, u]).collect();
    let current = || -> LoraWeights {
        let layers = start.layers.iter().zip(&vars);
        LoraWeights {
            layers: layers
                .map(|(l, (d, u))| LoraLayer { down: d.as_tensor().detach(), up: u.as_tensor().detach(), ..l.clone() })
                .collect(),
        }
    };
    let done = optimise(&params, opts, on_step, |step| {
        accumulate(unet, &current().layers, pairs, step, ac, opts, |g| {
            Ok(g.into_iter().flat_map(|(d, u)| [d, u]).collect())
        })
    })?;
    Ok(done.then(current))
}
