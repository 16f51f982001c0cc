//! `hyperlora bench sdxl` and `hyperlora bench lora` (direct model calls on purpose: they time the engine, not
//! the session's caches).
use super::table::{median, Table};
use super::Args;
use crate::hyper::modules::{sdxl_release_modules, Proj};
use crate::sdxl::model::{sdxl_base_unet_config, GenerateRequest, Sdxl, SdxlOptions};
use crate::sdxl::pipeline::{denoise, seeded_noise, time_ids, Conditioning, SampleSpec};
use crate::sdxl::scheduler::{Sampler, SamplerKind, SchedulerConfig};
use crate::sdxl::unet::UNet;
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// What `bench/compare_diffusers.py` prints.
#[derive(serde::Deserialize)]
struct Diffusers {
    diffusers: String,
    torch: String,
    device: String,
    total_s: f64,
}

/// Run the comparison script (built in) with `python`: the same shapes (SDXL base, or `--model`'s UNet config),
/// size, steps, CFG, sampler and dtype; on the CPU with as many threads as ours.
fn run_diffusers(python: &std::path::Path, a: &Args, dev: &Device) -> anyhow::Result<Diffusers> {
    const SCRIPT: &str = include_str!("../../../bench/compare_diffusers.py");
    let dtype = match a.dtype.dtype() {
        DType::F16 => "fp16",
        DType::BF16 => "bf16",
        _ => "fp32",
    };
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-").args(["--device", if dev.is_cpu() { "cpu" } else { a.device.as_str() }, "--dtype", dtype]);
    cmd.args(["--size", &bench_size(a)?.to_string(), "--steps", &a.steps.to_string(), "--cfg", "5"]);
    if dev.is_cpu() {
        cmd.args(["--threads", &rayon::current_num_threads().to_string()]);
    }
    if let Some(m) = &a.model {
        let c = m.join("unet").join("config.json");
        if c.is_file() {
            cmd.arg("--config").arg(c);
        }
    }
    eprintln!("timing diffusers with {} …", python.display());
    super::table::run_script(cmd, SCRIPT, "diffusers")
}

/// One sampling step (UNet batch 2) again with the device synchronised around each block kind
/// (`sdxl::profile`): a row per kind, per step, with its share of the profiled step; what no kind covers
/// (residual adds, embeddings, the sampler) is the rest.
fn profile_step(unet: &UNet, spec: &SampleSpec, noise: &Tensor, dev: &Device, table: &mut Table) -> anyhow::Result<()> {
    use crate::sdxl::profile;
    let mut s = Sampler::new(SamplerKind::DpmPp2mKarras, &SchedulerConfig::default(), 1)?;
    let step = SampleSpec {
        sampler: spec.sampler,
        steps: 1,
        cfg: spec.cfg,
        cond: spec.cond,
        uncond: spec.uncond,
        time_ids: spec.time_ids.clone(),
        strength: spec.strength,
    };
    sync(dev)?;
    profile::enable(true);
    let t = Instant::now();
    let r =
        denoise(unet, &mut s, noise.clone(), &step, 0, &mut |_| unreachable!(), &mut |_, _| ControlFlow::Continue(()));
    let synced = sync(dev);
    let whole = t.elapsed();
    let kinds = profile::take();
    profile::enable(false);
    r?;
    synced?;
    table.row("profiled step (synchronised around every block)", whole, "100 %".into());
    let covered: std::time::Duration = kinds.iter().map(|(_, d, _)| *d).sum();
    let share = |d: std::time::Duration| format!("{:.1} %", 100.0 * d.as_secs_f64() / whole.as_secs_f64().max(1e-12));
    for (what, d, n) in kinds {
        table.row(&format!("  {what}"), d, format!("{} ({n} calls)", share(d)));
    }
    let rest = whole.saturating_sub(covered);
    table.row("  the rest (residual adds, embeddings, sampler)", rest, share(rest));
    Ok(())
}

/// Random N(0, 0.02) weights of whatever shape a model asks for: timing needs real shapes, not real values.
pub(super) struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        _: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn sync(dev: &Device) -> anyhow::Result<()> {
    dev.synchronize()?;
    Ok(())
}

/// `--size` for sdxl and lora: a multiple of 64 up to the generation limit (default 1024).
fn bench_size(a: &Args) -> anyhow::Result<usize> {
    let size = a.size.unwrap_or(1024);
    anyhow::ensure!(
        size >= 64 && size.is_multiple_of(64) && size <= crate::sdxl::model::MAX_SIDE,
        "--size {size}: a multiple of 64 from 64 to {}",
        crate::sdxl::model::MAX_SIDE
    );
    Ok(size)
}

pub fn sdxl(a: Args) -> anyhow::Result<()> {
    let size = bench_size(&a)?;
    // the refusal generation makes, before any weight is made (the bench calls the sampler directly)
    let elem = if matches!(a.dtype.dtype(), DType::F32) { 4 } else { 2 };
    let need = crate::sdxl::model::memory_needed(&sdxl_base_unet_config(), 128, elem, 1, size, size);
    if a.device == "cpu" {
        crate::sdxl::model::refuse_over_available(need, &format!("--size {size}"), " beyond the weights", "")?;
    }
    let dev = crate::front::device(&a.device)?;
    let dtype = a.dtype.dtype();
    let mut table = Table(Vec::new());
    // diffusers first, so that its process has ended (and freed its copy of the weights) before ours loads
    let theirs = a.diffusers.as_ref().map(|py| run_diffusers(py, &a, &dev)).transpose()?;
    let t = Instant::now();
    let model = match &a.model {
        Some(p) => Some(Sdxl::load(
            p,
            a.config.as_deref(),
            &SdxlOptions { device: dev.clone(), dtype, vae_dtype: DType::F32 },
        )?),
        None => None,
    };
    let random = match &model {
        Some(_) => None,
        None => Some(UNet::new(
            &sdxl_base_unet_config(),
            candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), dtype, dev.clone()),
        )?),
    };
    let unet: &UNet = match (&model, &random) {
        (Some(m), _) => &m.unet,
        (None, Some(u)) => u,
        (None, None) => unreachable!("one of them is loaded"),
    };
    sync(&dev)?;
    let what =
        a.model.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "SDXL base shapes, random weights".into());
    table.row("load UNet", t.elapsed(), what);
    let c = unet.config();
    let ctx = Tensor::randn(0f32, 1.0, (1, 77, c.cross_attention_dim), &dev)?.to_dtype(dtype)?;
    let pooled_dim = c.projection_class_embeddings_input_dim.unwrap_or(0) - 6 * c.addition_time_embed_dim.unwrap_or(0);
    let cond =
        Conditioning { embeds: ctx.clone(), pooled: Tensor::randn(0f32, 1.0, (1, pooled_dim), &dev)?.to_dtype(dtype)? };
    let uncond = Conditioning::zeros_like(&cond)?;
    let lat = size / 8;
    let spec = SampleSpec {
        sampler: SamplerKind::DpmPp2mKarras,
        steps: a.steps,
        cfg: 5.0,
        cond: &cond,
        uncond: &uncond,
        time_ids: time_ids(size, size, &dev)?,
        strength: 1.0,
    };
    let noise = seeded_noise(1, &[1, 4, lat, lat], &dev)?.to_dtype(dtype)?;
    // warm-up step (kernel compilation, allocator)
    let mut s = Sampler::new(SamplerKind::DpmPp2mKarras, &SchedulerConfig::default(), 1)?;
    denoise(unet, &mut s, noise.clone(), &spec, 0, &mut |_| unreachable!(), &mut |_, _| ControlFlow::Continue(()))?;
    sync(&dev)?;
    let mut sampler = Sampler::new(SamplerKind::DpmPp2mKarras, &SchedulerConfig::default(), a.steps)?;
    let t = Instant::now();
    denoise(unet, &mut sampler, noise.clone(), &spec, 0, &mut |_| unreachable!(), &mut |_, _| {
        ControlFlow::Continue(())
    })?;
    sync(&dev)?;
    let total = t.elapsed();
    table.row(
        &format!("{} steps, {}², CFG 5 (UNet batch 2)", a.steps, size),
        total,
        format!("{:.3} s/step", total.as_secs_f64() / a.steps as f64),
    );
    if let Some(theirs) = &theirs {
        table.row(
            &format!("diffusers {} (torch {}), same shapes and settings", theirs.diffusers, theirs.torch),
            Duration::from_secs_f64(theirs.total_s),
            format!("{:.3} s/step on {}", theirs.total_s / a.steps as f64, theirs.device),
        );
        let ratio = total.as_secs_f64() / theirs.total_s;
        table.row("ratio hyperlora ÷ diffusers per step", Duration::ZERO, format!("{ratio:.2}× (goal ≤ 1.0)"));
    }
    if a.profile {
        profile_step(unet, &spec, &noise, &dev, &mut table)?;
    }
    if model.is_none() {
        // the rest of an image with random real-size weights: both text encoders and the VAE decode (f32)
        let rv = |dt: DType| candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), dt, dev.clone());
        let (c1, c2) = crate::sdxl::model::sdxl_base_text_configs();
        let te1 = crate::sdxl::text::ClipTextModel::new(&c1, rv(dtype), false)?;
        let te2 = crate::sdxl::text::ClipTextModel::new(&c2, rv(dtype), true)?;
        let vae = crate::sdxl::vae::Vae::new(&crate::sdxl::model::sdxl_base_vae_config(), rv(DType::F32))?;
        let mut ids = vec![49407u32; 77];
        ids[0] = 49406;
        let ids = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
        let z = Tensor::randn(0f32, 1.0, (1, 4, lat, lat), &dev)?;
        let run_rest = || -> anyhow::Result<()> {
            te1.forward(&ids)?;
            te2.forward(&ids)?;
            vae.decode(&z)?;
            sync(&dev)?;
            Ok(())
        };
        run_rest()?; // warm-up
        let t = Instant::now();
        run_rest()?;
        let rest = t.elapsed();
        table.row(&format!("text encoders + VAE decode at {}² (f32 VAE)", size), rest, String::new());
        table.row("whole image = sampling + the above", total + rest, "s/image".into());
    }
    if let Some(m) = &model {
        let t = Instant::now();
        let req = GenerateRequest {
            steps: a.steps,
            width: size,
            height: size,
            ..GenerateRequest::new("fcsks fxhks fhyks, a portrait")
        };
        m.generate(&req, &mut |_, _| ControlFlow::Continue(()))?;
        sync(&dev)?;
        table.row("whole image (text encoders + sampling + VAE decode)", t.elapsed(), "s/image".into());
    }
    println!("hyperlora {} bench sdxl — {:?} {:?}", env!("CARGO_PKG_VERSION"), dev, dtype);
    table.print();
    Ok(())
}

/// Tokens each attention module sees at 1024² (latent 128²): 64² in the 640-channel levels, 32² in the 1280 ones.
fn tokens(hidden: usize, size: usize) -> usize {
    let lat = size / 8;
    if hidden <= 640 {
        (lat / 2) * (lat / 2)
    } else {
        (lat / 4) * (lat / 4)
    }
}

pub fn lora(a: Args) -> anyhow::Result<()> {
    let size = bench_size(&a)?;
    let dev = crate::front::device(&a.device)?;
    let dtype = a.dtype.dtype();
    let r = 8;
    let modules = sdxl_release_modules();
    let mut layers = Vec::new();
    for m in &modules {
        for p in Proj::ALL {
            let (i, o) = m.dims(p);
            let rows = 2 * if matches!(p, Proj::K | Proj::V) && m.cross_attention_dim.is_some() {
                77
            } else {
                tokens(m.hidden_size, size)
            };
            let w = Tensor::randn(0f32, 0.02, (o, i), &dev)?.to_dtype(dtype)?;
            let down = Tensor::randn(0f32, 0.02, (r, i), &dev)?;
            let up = Tensor::randn(0f32, 0.02, (o, r), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (rows, i), &dev)?.to_dtype(dtype)?;
            layers.push((w, down, up, x));
        }
    }
    sync(&dev)?;
    let mut table = Table(Vec::new());
    let (merge, _) = median(3, || {
        for (w, d, u, _) in &layers {
            let delta = (u.matmul(d)? * 0.5)?;
            let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
            std::hint::black_box(merged);
        }
        sync(&dev)?;
        Ok(())
    })?;
    table.row("merge: switch a 560-projection LoRA (W₀ + ΔW, f32 sum, cast)", merge, "paid once per mix change".into());
    let dd: Vec<(Tensor, Tensor)> = layers
        .iter()
        .map(|(_, d, u, _)| Ok((d.t()?.to_dtype(dtype)?, (u.t()? * 0.5)?.to_dtype(dtype)?)))
        .collect::<anyhow::Result<_>>()?;
    let (runtime, _) = median(3, || {
        for ((_, _, _, x), (dt, ut)) in layers.iter().zip(&dd) {
            std::hint::black_box(x.matmul(dt)?.matmul(ut)?);
        }
        sync(&dev)?;
        Ok(())
    })?;
    table.row(
        &format!("runtime terms: x·Dᵀ·Uᵀ on every projection, one UNet forward at {}² with CFG", size),
        runtime,
        format!("paid every step: {:.2} s over {} steps", runtime.as_secs_f64() * a.steps as f64, a.steps),
    );
    let (base, _) = median(3, || {
        for (w, _, _, x) in &layers {
            std::hint::black_box(x.matmul(&w.t()?)?);
        }
        sync(&dev)?;
        Ok(())
    })?;
    table.row("for scale: the base projections themselves (x·Wᵀ), one forward", base, String::new());
    println!(
        "hyperlora {} bench lora — {:?} {:?}, rank {r}, {} projections",
        env!("CARGO_PKG_VERSION"),
        dev,
        dtype,
        layers.len()
    );
    table.print();
    Ok(())
}
