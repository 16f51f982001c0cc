//! `hyperlora bench train`: one training step (ε-MSE forward through the UNet carrying a rank-8 LoRA on every
//! attention projection, and the backward to every LoRA factor) — its time and peak memory on the demo set's tiny
//! UNet and on SDXL base's shapes at `--size`, with and without gradient checkpointing, beside the estimate the
//! refusal uses; with `--torch PY`, the same step in PyTorch (diffusers' UNet, the same LoRA) in the same run.
use super::sdxl::RandomWeights;
use super::table::run_script;
use super::Args;
use crate::lora::LoraLayer;
use crate::sdxl::model::sdxl_base_unet_config;
use crate::sdxl::pipeline::seeded_noise;
use crate::sdxl::scheduler::SchedulerConfig;
use crate::sdxl::unet::{UNet, UNetConfig};
use crate::train::step::{unet_stage, Batch, LossOptions};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::time::{Duration, Instant};

/// What `bench/compare_train.py` prints per mode.
#[derive(serde::Deserialize)]
struct TorchRow {
    checkpointing: bool,
    step_s: f64,
    peak_bytes: f64,
}

#[derive(serde::Deserialize)]
struct Torch {
    torch: String,
    diffusers: String,
    threads: usize,
    rows: Vec<TorchRow>,
}

/// Hand freed memory back to the OS (glibc keeps it otherwise, and the resident set before a step would already
/// hold the last step's activations), then reset the resident-memory high-water mark (VmHWM) to the current RSS;
/// Linux only.
fn reset_peak() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
/// A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes.
fn status_bytes(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// One measured configuration.
struct Row {
    model: String,
    checkpointing: bool,
    step: Duration,
    /// Peak resident memory during the step beyond what was resident before it (activations, gradients).
    peak: Option<f64>,
    estimate: f64,
    torch: Option<(Duration, f64)>,
}

/// A rank-8 LoRA (HyperLoRA's rank) on every attention projection, small random factors, scale 0.5 (alpha/rank).
fn lora_on_every_projection(unet: &mut UNet) -> anyhow::Result<Vec<LoraLayer>> {
    let mut rng = crate::rng::Rng::new(3);
    let mut layers = Vec::new();
    for p in unet.projections_mut() {
        let (out, inp) = p.original().dims2()?;
        let mut f = |n: usize| {
            let mut v = vec![0f32; n];
            rng.fill(&mut v, 0.0, 0.01);
            v
        };
        layers.push(LoraLayer {
            target: p.target.clone(),
            down: Tensor::from_vec(f(8 * inp), (8, inp), &Device::Cpu)?,
            up: Tensor::from_vec(f(out * 8), (out, 8), &Device::Cpu)?,
            scale: 0.5,
        });
    }
    Ok(layers)
}

/// Time one step (the median of `repeat` steps run one after another, after a warm-up) and its peak memory beyond
/// the resident set before it (on a step of its own, from a trimmed heap).
fn measure(
    unet: &mut UNet,
    size: usize,
    checkpointing: bool,
    repeat: usize,
) -> anyhow::Result<(Duration, Option<f64>)> {
    let dev = Device::Cpu;
    let c = unet.config().clone();
    let layers = lora_on_every_projection(unet)?;
    let lat = size / 8;
    let pooled = c.projection_class_embeddings_input_dim.unwrap_or(0) - 6 * c.addition_time_embed_dim.unwrap_or(0);
    let batch = Batch {
        x0: seeded_noise(1, &[1, 4, lat, lat], &dev)?,
        noise: seeded_noise(2, &[1, 4, lat, lat], &dev)?,
        timesteps: vec![500],
        context: seeded_noise(3, &[1, 77, c.cross_attention_dim], &dev)?,
        text_embeds: seeded_noise(4, &[1, pooled], &dev)?,
        time_ids: Tensor::new(&[[size as f32, size as f32, 0., 0., size as f32, size as f32]], &dev)?,
    };
    let ac = SchedulerConfig::default().alphas_cumprod();
    unet.set_gradient_checkpointing(checkpointing);
    let mut run = || -> anyhow::Result<()> {
        let g = unet_stage(unet, &layers, &batch, &ac, LossOptions::default())?;
        anyhow::ensure!(g.loss.is_finite(), "the loss is {}", g.loss);
        Ok(())
    };
    // a warm-up step, then the peak: one step from a trimmed heap, its high-water mark over the resident set before it
    run()?;
    reset_peak();
    let before = status_bytes("VmRSS:");
    run()?;
    let peak = before.zip(status_bytes("VmHWM:")).map(|(b, p)| p - b);
    // the time: steps one after another, as a training loop runs them (the heap warm from the step before)
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed());
    }
    unet.set_gradient_checkpointing(false);
    times.sort();
    Ok((times[times.len() / 2], peak))
}

fn run_torch(python: &Path, config: &Path, size: usize, repeat: usize) -> anyhow::Result<Torch> {
    const SCRIPT: &str = include_str!("../../../bench/compare_train.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-").args(["--size", &size.to_string(), "--repeat", &repeat.to_string()]);
    cmd.args(["--threads", &rayon::current_num_threads().to_string()]);
    cmd.arg("--config").arg(config);
    eprintln!("timing a PyTorch training step with {} …", python.display());
    run_script(cmd, SCRIPT, "torch")
}

pub(super) fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.device == "cpu", "bench train measures the CPU (the GPU step is the GPU issue's script)");
    let size = a.size.unwrap_or(256);
    anyhow::ensure!(
        size > 0 && size.is_multiple_of(32) && size <= 1024,
        "--size must be a multiple of 32 up to 1024 for bench train, got {size}"
    );
    let (demo, _) = crate::synthetic::demo::ensure(&crate::synthetic::demo::default_dir())?;
    let tiny_dir = demo.sdxl.join("unet");
    let tiny_cfg = UNetConfig::load(&tiny_dir.join("config.json"))?;
    let tiny_size = tiny_cfg.native_size();
    let mut rows = Vec::new();
    let mut versions = None;
    let tiny_config = tiny_dir.join("config.json");
    // the script builds the same shapes from the same config.json
    let sdxl_config = std::env::temp_dir().join(format!("hyperlora-bench-train-{}.json", std::process::id()));
    if a.torch.is_some() {
        std::fs::write(&sdxl_config, crate::sdxl::model::SDXL_UNET)?;
    }
    for (real, size) in [(false, tiny_size), (true, size)] {
        // torch first, so that its process has ended (and freed its weights) before ours are made
        let torch = match &a.torch {
            Some(py) => {
                let t = run_torch(py, if real { &sdxl_config } else { &tiny_config }, size, a.repeat)?;
                versions = Some(format!("torch {}, diffusers {}, {} threads", t.torch, t.diffusers, t.threads));
                Some(t.rows)
            }
            None => None,
        };
        let t = Instant::now();
        let (mut unet, cfg, model) = if real {
            let cfg = sdxl_base_unet_config();
            let vb = candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, Device::Cpu);
            (UNet::new(&cfg, vb)?, cfg, format!("SDXL base shapes, random f32, {size}²"))
        } else {
            (
                crate::sdxl::unet::load_unet(&tiny_dir, DType::F32, &Device::Cpu)?,
                tiny_cfg.clone(),
                format!("demo tiny UNet, {size}²"),
            )
        };
        eprintln!("{model}: built in {:.1} s", t.elapsed().as_secs_f64());
        for checkpointing in [false, true] {
            let (step, peak) = measure(&mut unet, size, checkpointing, a.repeat)?;
            eprintln!("  checkpointing {checkpointing}: {:.2} s", step.as_secs_f64());
            let theirs = torch.as_ref().and_then(|rows| rows.iter().find(|r| r.checkpointing == checkpointing));
            rows.push(Row {
                model: model.clone(),
                checkpointing,
                step,
                peak,
                estimate: cfg.training_elements(1, size, size, checkpointing) as f64 * 4.0,
                torch: theirs.map(|r| (Duration::from_secs_f64(r.step_s), r.peak_bytes)),
            });
        }
    }
    let _ = std::fs::remove_file(&sdxl_config);
    println!(
        "hyperlora {} bench train — one step (forward + backward to a rank-8 LoRA on every attention projection), CPU, {} threads{}",
        env!("CARGO_PKG_VERSION"),
        rayon::current_num_threads(),
        versions.map(|v| format!("; {v}")).unwrap_or_default()
    );
    println!("\n| model | checkpointing | step | peak memory | estimate | torch step | torch peak | time ratio (ours/torch) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mb = |b: f64| format!("{:.0} MB", b / 1e6);
    for r in rows {
        let (ts, tp, ratio) = match r.torch {
            Some((t, p)) => (
                format!("{:.2} s", t.as_secs_f64()),
                mb(p),
                format!("{:.2}×", r.step.as_secs_f64() / t.as_secs_f64().max(1e-9)),
            ),
            None => ("—".into(), "—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {:.2} s | {} | {} | {ts} | {tp} | {ratio} |",
            r.model,
            if r.checkpointing { "on" } else { "off" },
            r.step.as_secs_f64(),
            r.peak.map(mb).unwrap_or_else(|| "?".into()),
            mb(r.estimate)
        );
    }
    println!("\npeak memory: the resident set's high-water mark during a step minus the resident set before it (weights excluded).");
    Ok(())
}
