//! One training step: the ε-prediction MSE through the frozen UNet whose attention projections carry LoRA terms as
//! functions of their factors, and the gradients back to whatever produced the factors. The backward runs in
//! stages joined by vector-Jacobian products, with the tensors between stages as leaves: the UNet stage gives the
//! gradient of every LoRA factor; synthesis turns it into the gradient of the coefficient tokens (and the bases);
//! the normalisation into that of the raw mean; the hypernetwork stage into that of every weight. Each stage is a
//! candle backward of `Σ output ⊙ gradient`, which equals one backward through the whole chain, and the UNet —
//! the large graph — knows only LoRA factors, never identities.
use crate::error::{Error, Result};
use crate::hyper::synth::Branch;
use crate::hyper::trainable::Trainable;
use crate::hyper::{HyperLora, ALPHA_RATIO};
use crate::identity::normalize_tokens;
use crate::lora::names::kohya_name;
use crate::lora::LoraLayer;
use crate::sdxl::unet::UNet;
use candle_core::{DType, Device, Tensor, Var};

/// A batch of training rows: clean latents, their noise and timesteps, and the UNet's conditioning.
pub struct Batch {
    /// [B, 4, h, w] latents (VAE mean × scaling factor).
    pub x0: Tensor,
    /// [B, 4, h, w] unit Gaussian noise.
    pub noise: Tensor,
    /// One integer timestep per row, in [0, len(alphas_cumprod)).
    pub timesteps: Vec<usize>,
    /// [B, 77, cross_dim]
    pub context: Tensor,
    /// [B, pooled]
    pub text_embeds: Tensor,
    /// [B, 6]
    pub time_ids: Tensor,
}

/// How the per-row losses are weighed.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossOptions {
    /// min-SNR-γ weighting (Hang et al. 2023) for ε-prediction: row weight min(SNR_t, γ) / SNR_t with
    /// SNR_t = ᾱ_t / (1 − ᾱ_t). None: the plain mean over every element.
    pub min_snr_gamma: Option<f64>,
}

/// Gradient checkpointing per transformer block (`UNet::set_gradient_checkpointing`): on, off, or on from a
/// training size of 512 px up (the default), where the blocks' activations dominate the memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checkpointing {
    #[default]
    Auto,
    On,
    Off,
}

impl Checkpointing {
    /// The size from which `Auto` turns checkpointing on.
    pub const AUTO_FROM: usize = 512;
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Checkpointing::Auto),
            "on" => Ok(Checkpointing::On),
            "off" => Ok(Checkpointing::Off),
            o => Err(Error::InvalidValue(format!("gradient checkpointing `{o}`: use auto, on or off"))),
        }
    }
    /// Whether it is on for a training size of `size` pixels.
    pub fn at(self, size: usize) -> bool {
        match self {
            Checkpointing::Auto => size >= Self::AUTO_FROM,
            Checkpointing::On => true,
            Checkpointing::Off => false,
        }
    }
}

/// Refuse a training step on `batch` latents of `size`² whose activation estimate
/// (`UNetConfig::training_elements`) does not fit in the memory available (CPU), before anything is allocated:
/// the error names the memory needed and available, and what would lower it.
pub fn check_memory(unet: &UNet, batch: usize, size: usize, checkpointing: bool) -> Result<()> {
    let dev = unet.device();
    if !dev.is_cpu() {
        return Ok(());
    }
    let elem = unet.dtype().size_in_bytes() as u128;
    let need = unet.config().training_elements(batch, size, size, checkpointing) * elem;
    crate::sdxl::model::refuse_over_available(
        need,
        &format!(
            "a training step at {size}² (batch {batch}, gradient checkpointing {})",
            if checkpointing { "on" } else { "off" }
        ),
        " for the UNet's activations",
        if checkpointing { ": use a smaller size" } else { ": turn gradient checkpointing on or use a smaller size" },
    )
}

/// DDPM `add_noise`: `sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise`, row by row (ᾱ from the scheduler's `alphas_cumprod`).
pub fn add_noise(x0: &Tensor, noise: &Tensor, timesteps: &[usize], alphas_cumprod: &[f64]) -> Result<Tensor> {
    let b = x0.dim(0)?;
    if timesteps.len() != b || noise.dims() != x0.dims() {
        return Err(Error::Mismatch(format!(
            "{b} latents, noise {:?} and {} timesteps",
            noise.dims(),
            timesteps.len()
        )));
    }
    let mut rows = Vec::with_capacity(b);
    for (i, &t) in timesteps.iter().enumerate() {
        let a = *alphas_cumprod.get(t).ok_or_else(|| {
            Error::InvalidValue(format!("timestep {t} is outside the schedule's {} steps", alphas_cumprod.len()))
        })?;
        rows.push(((x0.get(i)? * a.sqrt())? + (noise.get(i)? * (1.0 - a).sqrt())?)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// The loss of one batch through the UNet as it stands (with whatever functional terms it carries): the loss
/// tensor (on the autograd graph when the terms are variables), its value, the noised latents and the prediction.
fn batch_loss(
    unet: &UNet,
    batch: &Batch,
    alphas_cumprod: &[f64],
    opts: LossOptions,
) -> Result<(Tensor, f64, Tensor, Tensor)> {
    let noisy = add_noise(&batch.x0, &batch.noise, &batch.timesteps, alphas_cumprod)?;
    let t: Vec<f32> = batch.timesteps.iter().map(|&t| t as f32).collect();
    let t = Tensor::from_vec(t, batch.timesteps.len(), noisy.device())?;
    let pred = unet.forward_timesteps(&noisy, &t, &batch.context, &batch.text_embeds, &batch.time_ids)?;
    let err = (pred.to_dtype(DType::F32)? - batch.noise.to_dtype(DType::F32)?)?.sqr()?;
    let loss = match opts.min_snr_gamma {
        None => err.mean_all()?,
        Some(gamma) => {
            let w: Vec<f32> = batch
                .timesteps
                .iter()
                .map(|&t| {
                    let a = alphas_cumprod[t];
                    let snr = a / (1.0 - a);
                    (snr.min(gamma) / snr) as f32
                })
                .collect();
            let w = Tensor::from_vec(w, batch.timesteps.len(), err.device())?;
            (err.flatten_from(1)?.mean(1)? * w)?.mean_all()?
        }
    };
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(Error::InvalidValue(format!(
            "the training loss is {value}: non-finite latents or LoRA factors (a learning rate too high?)"
        )));
    }
    Ok((loss, value, noisy, pred))
}

/// Run `f` with `weights` carried by the UNet as functional terms, and take them out again whatever `f` returns;
/// targets that name no projection of this UNet are an error before anything runs.
fn with_functional<T>(
    unet: &mut UNet,
    weights: &crate::lora::LoraWeights,
    f: impl FnOnce(&UNet) -> Result<T>,
) -> Result<T> {
    let report = unet.set_functional_lora(weights)?;
    let out = match report.unmatched.first() {
        Some(first) => Err(Error::Mismatch(format!(
            "{} LoRA targets name no projection of this UNet (first: {first})",
            report.unmatched.len()
        ))),
        None => f(unet),
    };
    let _ = unet.set_functional_lora(&Default::default());
    out
}

/// The loss of `batch` with `layers` applied as functional terms, forward only (no gradient).
pub fn eval_loss(
    unet: &mut UNet,
    layers: &[LoraLayer],
    batch: &Batch,
    alphas_cumprod: &[f64],
    opts: LossOptions,
) -> Result<f64> {
    let constant = crate::lora::LoraWeights {
        layers: layers.iter().map(|l| LoraLayer { down: l.down.detach(), up: l.up.detach(), ..l.clone() }).collect(),
    };
    with_functional(unet, &constant, |unet| Ok(batch_loss(unet, batch, alphas_cumprod, opts)?.1))
}

/// What the UNet stage gives.
pub struct UnetGrads {
    pub loss: f64,
    pub noisy: Tensor,
    pub noise_pred: Tensor,
    /// (∂down, ∂up) for every layer passed in, in order.
    pub grads: Vec<(Tensor, Tensor)>,
}

/// The loss of `batch` with `layers` (scale included) applied as functional LoRA terms, and its gradient with
/// respect to each layer's factors. The UNet itself is left as it was (its functional terms cleared).
pub fn unet_stage(
    unet: &mut UNet,
    layers: &[LoraLayer],
    batch: &Batch,
    alphas_cumprod: &[f64],
    opts: LossOptions,
) -> Result<UnetGrads> {
    // on a worker of the compute pool: the serial ops between candle's parallel kernels then share the cores with
    // one spinning worker instead of two (`crate::pool`)
    crate::pool::install(|| unet_stage_here(unet, layers, batch, alphas_cumprod, opts))
}

fn unet_stage_here(
    unet: &mut UNet,
    layers: &[LoraLayer],
    batch: &Batch,
    alphas_cumprod: &[f64],
    opts: LossOptions,
) -> Result<UnetGrads> {
    let vars: Vec<(Var, Var)> = layers
        .iter()
        .map(|l| Ok((Var::from_tensor(&l.down.detach())?, Var::from_tensor(&l.up.detach())?)))
        .collect::<Result<_>>()?;
    let functional = crate::lora::LoraWeights {
        layers: layers
            .iter()
            .zip(&vars)
            .map(|(l, (d, u))| LoraLayer {
                target: l.target.clone(),
                down: d.as_tensor().clone(),
                up: u.as_tensor().clone(),
                scale: l.scale,
            })
            .collect(),
    };
    with_functional(unet, &functional, |unet| {
        let (loss, value, noisy, pred) = batch_loss(unet, batch, alphas_cumprod, opts)?;
        let store = loss.backward()?;
        let grads = vars
            .iter()
            .map(|(d, u)| Ok((grad_or_zero(&store, d.as_tensor())?, grad_or_zero(&store, u.as_tensor())?)))
            .collect::<Result<_>>()?;
        Ok(UnetGrads { loss: value, noisy: noisy.detach(), noise_pred: pred.detach(), grads })
    })
}

/// Everything one full step reads: the hypernetwork's inputs, a batch, the schedule and the two strengths.
pub struct FullInputs {
    /// [N, E] ArcFace embeddings and [N, *, W] CLIP features of one person's N photos.
    pub arcface: Tensor,
    pub clip: Tensor,
    /// [M, *, W] Base-condition CLIP features (used when the variant has the Base branch).
    pub base_clip: Option<Tensor>,
    pub batch: Batch,
    pub alphas_cumprod: Vec<f64>,
    pub strength_id: f64,
    pub strength_base: f64,
}

/// `Σ a ⊙ b` over pairs of tensors (the objective whose gradient is a vector-Jacobian product).
fn inner(pairs: &[(&Tensor, &Tensor)]) -> Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (a, b) in pairs {
        let s = (*a * *b)?.sum_all()?;
        acc = Some(match acc {
            None => s,
            Some(x) => (x + s)?,
        });
    }
    Ok(acc)
}

/// The vector-Jacobian product ∂⟨y, g⟩/∂x: the gradient reaching `x` (a variable `y` was computed from) for the
/// gradient `g` of `y`; zeros when `y` does not depend on `x`.
pub fn vjp(y: &Tensor, g: &Tensor, x: &Tensor) -> Result<Tensor> {
    grad_or_zero(&(y * g)?.sum_all()?.backward()?, x)
}

fn grad_or_zero(store: &candle_core::backprop::GradStore, t: &Tensor) -> Result<Tensor> {
    Ok(match store.get(t) {
        Some(g) => g.clone(),
        None => t.zeros_like()?,
    })
}

/// Which LoRA branches a staged step applies, and which of them carries gradients back to the hypernetwork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branches {
    pub id: bool,
    pub base: bool,
}

/// What a staged step gives: the loss and prediction, the named intermediates of `full_step` (coefficients and
/// the gradients of the LoRA factors, coefficient tokens and raw means), and the gradient of each of the
/// trainable's variables, in the order of `Trainable::vars`.
pub struct StagedStep {
    pub loss: f64,
    pub named: Vec<(String, Tensor)>,
    pub var_grads: Vec<Tensor>,
}

/// One step through the hypernetwork (`tr`: its variables are what trains) and the UNet, applying the branches
/// `which` asks for (the Base branch only when the variant has it and Base features are given). The backward runs
/// in the stages the module comment describes.
pub fn staged_step(unet: &mut UNet, tr: &Trainable, inp: &FullInputs, which: Branches) -> Result<StagedStep> {
    let use_base = which.base && tr.has_base() && inp.base_clip.is_some();
    if !which.id && !use_base {
        return Err(Error::Mismatch(
            "a training step needs a LoRA branch: the Base branch needs Base features and a variant with it".into(),
        ));
    }
    // hypernetwork forward (graph kept for the last stage)
    let mut branches = Vec::new();
    if which.id {
        let m_id = tr.raw_id(&inp.arcface, &inp.clip)?.mean_keepdim(0)?;
        branches.push((Branch::Id, "id", m_id, inp.strength_id));
    }
    if let (Some(b), true) = (&inp.base_clip, use_base) {
        let m_base = tr.raw_base(b)?.mean_keepdim(0)?;
        branches.push((Branch::Base, "base", m_base, inp.strength_base));
    }
    // stage values as leaves
    let m_vars: Vec<Var> =
        branches.iter().map(|b| Var::from_tensor(&b.2.detach())).collect::<candle_core::Result<_>>()?;
    let c_vals: Vec<Tensor> =
        m_vars.iter().map(|m| normalize_tokens(&m.as_tensor().detach())).collect::<candle_core::Result<_>>()?;
    let c_vars: Vec<Var> = c_vals.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
    // synthesis (graph over the coefficient leaves and the bases)
    let mut factor_sets = Vec::new();
    for ((branch, _, _, _), c) in branches.iter().zip(&c_vars) {
        factor_sets.push(tr.factors(&c.as_tensor().squeeze(0)?, *branch)?);
    }
    // UNet stage on detached factors carrying strength · alpha/rank
    let mut layers = Vec::new();
    for ((_, _, _, s), set) in branches.iter().zip(&factor_sets) {
        for l in set {
            layers.push(LoraLayer {
                target: l.target.clone(),
                down: l.down.detach(),
                up: l.up.detach(),
                scale: s * ALPHA_RATIO,
            });
        }
    }
    let ug = unet_stage(unet, &layers, &inp.batch, &inp.alphas_cumprod, LossOptions::default())?;
    let mut named: Vec<(String, Tensor)> = vec![
        ("input.noisy_latents".into(), ug.noisy.clone()),
        ("output.loss".into(), Tensor::new(ug.loss as f32, &Device::Cpu)?),
        ("output.noise_pred".into(), ug.noise_pred.clone()),
    ];
    // synthesis stage: Σ factor ⊙ ∂factor over the branches → ∂coeffs and ∂bases
    let mut pairs = Vec::new();
    let mut at = 0;
    for ((_, name, _, _), set) in branches.iter().zip(&factor_sets) {
        for l in set {
            let (gd, gu) = &ug.grads[at];
            at += 1;
            pairs.push((&l.down, gd));
            pairs.push((&l.up, gu));
            let k = kohya_name(&l.target);
            named.push((format!("grad.lora.{name}.{k}.lora_down.weight"), gd.clone()));
            named.push((format!("grad.lora.{name}.{k}.lora_up.weight"), gu.clone()));
        }
    }
    let synth = inner(&pairs)?.ok_or_else(|| Error::Mismatch("no LoRA layers".into()))?.backward()?;
    let g_c: Vec<Tensor> = c_vars.iter().map(|c| grad_or_zero(&synth, c.as_tensor())).collect::<Result<_>>()?;
    // normalisation stage: ∂raw_mean
    let mut g_m = Vec::new();
    for (m, g) in m_vars.iter().zip(&g_c) {
        g_m.push(vjp(&normalize_tokens(m.as_tensor())?, g, m.as_tensor())?);
    }
    for (((_, name, _, _), c), (gc, gm)) in branches.iter().zip(&c_vals).zip(g_c.iter().zip(&g_m)) {
        named.push((format!("coeffs.{name}"), c.clone()));
        named.push((format!("grad.coeffs.{name}"), gc.clone()));
        named.push((format!("grad.raw_mean.{name}"), gm.clone()));
    }
    // hypernetwork stage: Σ m ⊙ ∂m through the resamplers and the id projector
    let ms: Vec<&Tensor> = branches.iter().map(|b| &b.2).collect();
    let pairs: Vec<(&Tensor, &Tensor)> = ms.into_iter().zip(g_m.iter()).collect();
    let hyper_grads = inner(&pairs)?.ok_or_else(|| Error::Mismatch("no branch".into()))?.backward()?;
    let mut var_grads = Vec::with_capacity(tr.vars().len());
    for (_, v) in tr.vars() {
        var_grads.push(match synth.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => grad_or_zero(&hyper_grads, v.as_tensor())?,
        });
    }
    Ok(StagedStep { loss: ug.loss, named, var_grads })
}

/// One step through the hypernetwork and the UNet with every gradient a trainer or a fine-tune may want, named
/// as in the fixture `training/training_step.safetensors`: `output.loss`, `output.noise_pred`, `coeffs.{id,base}`,
/// `grad.raw_mean.*`, `grad.coeffs.*`, `grad.lora.{id,base}.{kohya}.lora_{down,up}.weight` and `grad.{file}.{key}`
/// for every weight of the variant. All f32 on the CPU.
pub fn full_step(unet: &mut UNet, hyper: &HyperLora, inp: &FullInputs) -> Result<Vec<(String, Tensor)>> {
    let tr = hyper.trainable(inp.batch.x0.device())?;
    let s = staged_step(unet, &tr, inp, Branches { id: true, base: true })?;
    let mut out = s.named;
    for ((name, _), g) in tr.vars().iter().zip(s.var_grads) {
        out.push((format!("grad.{name}"), g));
    }
    out.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?))).collect()
}

/// Read `input.*` tensors named as in the fixture `training/training_step.safetensors` (fixture README §6b):
/// `arcface`, `clip_hidden_states`, `base_clip_hidden_states` (optional), `x0`, `noise`, `timesteps` (int),
/// `encoder_hidden_states`, `text_embeds`, `time_ids`, `alphas_cumprod`, `strength_id`, `strength_base`.
pub fn read_inputs(path: &std::path::Path, device: &Device) -> Result<FullInputs> {
    let f = crate::weights::StFile::read(path)?;
    let t = |k: &str| -> Result<Tensor> { f.tensor(&format!("input.{k}"), DType::F32, device) };
    let scalar = |k: &str, default: f64| -> Result<f64> {
        let key = format!("input.{k}");
        if !f.contains(&key) {
            return Ok(default);
        }
        let v = f.to_f32_vec(&key)?;
        match v.as_slice() {
            [x] if x.is_finite() => Ok(*x as f64),
            _ => Err(Error::invalid(path, format!("{key} must hold one finite number, found {} values", v.len()))),
        }
    };
    let timesteps = f
        .to_i64_vec("input.timesteps")?
        .into_iter()
        .map(|t| {
            usize::try_from(t).map_err(|_| Error::invalid(path, format!("input.timesteps holds {t}, not a timestep")))
        })
        .collect::<Result<Vec<_>>>()?;
    let alphas_cumprod: Vec<f64> = f.to_f32_vec("input.alphas_cumprod")?.into_iter().map(|a| a as f64).collect();
    if alphas_cumprod.iter().any(|a| !(a.is_finite() && *a > 0.0 && *a < 1.0)) {
        return Err(Error::invalid(path, "input.alphas_cumprod must lie strictly between 0 and 1"));
    }
    let base_clip =
        if f.contains("input.base_clip_hidden_states") { Some(t("base_clip_hidden_states")?) } else { None };
    let batch = Batch {
        x0: t("x0")?,
        noise: t("noise")?,
        timesteps,
        context: t("encoder_hidden_states")?,
        text_embeds: t("text_embeds")?,
        time_ids: t("time_ids")?,
    };
    for (name, v) in [("x0", &batch.x0), ("noise", &batch.noise), ("encoder_hidden_states", &batch.context)] {
        if v.flatten_all()?.to_vec1::<f32>()?.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid(path, format!("input.{name} holds NaN or ±inf")));
        }
    }
    Ok(FullInputs {
        arcface: t("arcface")?,
        clip: t("clip_hidden_states")?,
        base_clip,
        batch,
        alphas_cumprod,
        strength_id: scalar("strength_id", 1.0)?,
        strength_base: scalar("strength_base", 1.0)?,
    })
}
