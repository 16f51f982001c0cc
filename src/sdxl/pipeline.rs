//! Text-to-image (and image-to-image) sampling with classifier-free guidance, as `StableDiffusionXLPipeline` does
//! it: both branches in one UNet batch [uncond; cond], ε = u + cfg·(c − u), time ids
//! (original size, crop top-left, target size) on both branches.
use super::scheduler::{Sampler, SamplerKind, SchedulerConfig};
use super::unet::UNet;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;

/// Text conditioning of one prompt: `embeds` [B, 77, cross_dim], `pooled` [B, pooled_dim].
#[derive(Clone, Debug)]
pub struct Conditioning {
    pub embeds: Tensor,
    pub pooled: Tensor,
}

impl Conditioning {
    /// SDXL's `force_zeros_for_empty_prompt`: no negative prompt means all-zero embeddings.
    pub fn zeros_like(c: &Conditioning) -> Result<Conditioning> {
        Ok(Conditioning { embeds: c.embeds.zeros_like()?, pooled: c.pooled.zeros_like()? })
    }
}

/// One denoising step's report to the caller; returning `Break` cancels the run.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    pub step: usize,
    pub total: usize,
    pub timestep: f64,
}

/// Intermediates of one step, for parity tests and previews.
pub struct StepTrace {
    pub eps_uncond: Tensor,
    pub eps_cond: Tensor,
    pub x_after: Tensor,
}

pub struct SampleSpec<'a> {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub cfg: f64,
    pub cond: &'a Conditioning,
    pub uncond: &'a Conditioning,
    /// [1, 6]: original (h, w), crop (top, left), target (h, w).
    pub time_ids: Tensor,
    /// img2img: start at this fraction of the schedule (1.0 = from pure noise).
    pub strength: f64,
}

/// Time ids for an image of `h`×`w` with no crop: [h, w, 0, 0, h, w].
pub fn time_ids(h: usize, w: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(&[[h as f32, w as f32, 0.0, 0.0, h as f32, w as f32]], device)?)
}

/// Gaussian noise from a seed, made on the CPU so the same seed gives the same noise on every device.
pub fn seeded_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let mut rng = crate::rng::Rng::new(seed ^ 0x5EED_5EED_5EED_5EED);
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        // Box–Muller on two uniforms in (0, 1]
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        v.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
        v.push((r * (2.0 * std::f64::consts::PI * u2).sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
}

/// Denoise `x` (already scaled: pure noise × init σ for txt2img, or noised latents for img2img) from step
/// `start`. `noise_for_step` supplies fresh noise for ancestral samplers. Returns the final latents, or
/// `Ok(None)` when `progress` asked to stop.
pub fn denoise(
    unet: &UNet,
    sampler: &mut Sampler,
    mut x: Tensor,
    spec: &SampleSpec,
    start: usize,
    noise_for_step: &mut dyn FnMut(usize) -> Result<Tensor>,
    progress: &mut dyn FnMut(StepProgress, Option<&StepTrace>) -> ControlFlow<()>,
) -> Result<Option<Tensor>> {
    let b = x.dim(0)?;
    let dtype = x.dtype();
    let rep = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.repeat((b, 1, 1))?) };
    let rep2 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.repeat((b, 1))?) };
    let ctx = Tensor::cat(&[rep(&spec.uncond.embeds)?, rep(&spec.cond.embeds)?], 0)?;
    let pooled = Tensor::cat(&[rep2(&spec.uncond.pooled)?, rep2(&spec.cond.pooled)?], 0)?;
    let tids = spec.time_ids.to_dtype(dtype)?.repeat((2 * b, 1))?;
    let total = sampler.timesteps().len();
    for i in start..total {
        let t = sampler.timesteps()[i];
        let x_in = sampler.scale_model_input(&x, i)?;
        let eps = unet.forward(&Tensor::cat(&[&x_in, &x_in], 0)?, t, &ctx, &pooled, &tids)?;
        let (u, c) = (eps.narrow(0, 0, b)?, eps.narrow(0, b, b)?);
        let guided = (&u + ((&c - &u)? * spec.cfg)?)?;
        let noise = if sampler.needs_noise() { Some(noise_for_step(i)?) } else { None };
        x = sampler.step(&guided, i, &x, noise.as_ref())?;
        let trace = StepTrace { eps_uncond: u, eps_cond: c, x_after: x.clone() };
        if progress(StepProgress { step: i + 1, total, timestep: t }, Some(&trace)).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(x))
}

/// Gaussian noise for a batch: item `i` drawn from `seeds[i]` alone, so an image of a batch equals the one made
/// alone with its seed.
pub fn batch_noise(seeds: &[u64], item_shape: &[usize], device: &Device) -> Result<Tensor> {
    let items = seeds.iter().map(|s| seeded_noise(*s, item_shape, device)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&items, 0)?)
}

/// Where img2img starts, as diffusers' `get_timesteps`: `int(steps · strength)` steps are run (the product truncated,
/// as Python's `int`), the last ones of the schedule; the image is noised to the first of them. None are run when
/// the product is below 1 — an error, as in diffusers' SDXL img2img pipeline (not a silent single step).
pub fn img2img_start(total: usize, strength: f64) -> Result<usize> {
    let run = ((total as f64 * strength) as usize).min(total);
    if run == 0 {
        return Err(Error::InvalidValue(format!(
            "img2img with strength {strength} of {total} steps runs int({total} × {strength}) = 0 steps; raise the \
             steps or the strength"
        )));
    }
    Ok(total - run)
}

/// txt2img from given initial noise (unit Gaussian, [B, 4, h/8, w/8]): scales by the sampler's init σ and
/// denoises. With `init_latents` and `strength` < 1 it is img2img: the latents are noised to the start step.
/// `seeds` (one per batch item) seed the ancestral samplers' fresh noise.
pub fn sample(
    unet: &UNet,
    scheduler: &SchedulerConfig,
    spec: &SampleSpec,
    noise: &Tensor,
    init_latents: Option<&Tensor>,
    seeds: &[u64],
    progress: &mut dyn FnMut(StepProgress, Option<&StepTrace>) -> ControlFlow<()>,
) -> Result<Option<Tensor>> {
    if !(0.0..=1.0).contains(&spec.strength) || spec.strength == 0.0 {
        return Err(Error::Mismatch(format!("strength must be in (0, 1], got {}", spec.strength)));
    }
    let mut sampler = Sampler::new(spec.sampler, scheduler, spec.steps)?;
    let total = sampler.timesteps().len();
    let start = img2img_start(total, spec.strength)?;
    let x = match init_latents {
        None => (noise * sampler.init_noise_sigma())?,
        Some(z) => sampler.add_noise(z, noise, start)?,
    };
    let dev = noise.device().clone();
    let mut item = noise.dims().to_vec();
    if seeds.len() != item[0] {
        return Err(Error::Mismatch(format!("{} seeds for a batch of {}", seeds.len(), item[0])));
    }
    item[0] = 1;
    let mut step_noise = |i: usize| {
        let s: Vec<u64> = seeds.iter().map(|s| s.wrapping_add(1 + i as u64)).collect();
        batch_noise(&s, &item, &dev).and_then(|n| Ok(n.to_dtype(DType::F32)?))
    };
    denoise(unet, &mut sampler, x, spec, start, &mut step_noise, progress)
}
