use crate::front::args::ComputeDtype;
use crate::lora::file::import;
use crate::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
use crate::sdxl::scheduler::SamplerKind;
use anyhow::Context;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SDXL diffusers folder or single-file checkpoint (.safetensors).
    #[arg(long, env = "HYPERLORA_SDXL", value_name = "DIR_OR_FILE")]
    pub model: PathBuf,
    /// For a single-file checkpoint: a diffusers-layout folder with its tokenizers (and configs).
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt (none: zero conditioning, as SDXL does).
    #[arg(long)]
    pub negative: Option<String>,
    /// LoRA file with an optional strength, e.g. me.lora.safetensors:0.85 (repeatable).
    #[arg(long = "lora", value_name = "FILE[:W]")]
    pub loras: Vec<String>,
    /// Random seed (default: from the clock; always written into the PNG).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5.0)]
    pub cfg: f64,
    #[arg(long, value_enum, default_value = "dpmpp_2m_karras")]
    pub sampler: SamplerKind,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Unit-Gaussian starting latents (.safetensors, first tensor or `latents`) instead of seeded noise.
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// img2img: start from this PNG (same size as --width × --height).
    #[arg(long, value_name = "PNG")]
    pub init_image: Option<PathBuf>,
    /// img2img: fraction of the schedule to run (1.0 = ignore the image's content).
    #[arg(long, default_value_t = 0.6)]
    pub strength: f64,
    /// UNet/text-encoder dtype (the VAE stays f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ComputeDtype,
    /// `cpu`, or `cuda` / `cuda:N` in builds with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output PNG (with batch > 1: NAME_0.png, NAME_1.png, …).
    #[arg(long, value_name = "PNG")]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
}

fn out_paths(a: &Args) -> Vec<PathBuf> {
    if a.batch == 1 {
        return vec![a.out.clone()];
    }
    let stem = a.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    (0..a.batch).map(|i| a.out.with_file_name(format!("{stem}_{i}.png"))).collect()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let outs = out_paths(&a);
    for p in &outs {
        crate::output::refuse_existing(p, a.force)?;
    }
    let opts = SdxlOptions {
        device: crate::front::device(&a.device)?,
        dtype: a.dtype.dtype(),
        vae_dtype: candle_core::DType::F32,
    };
    eprintln!("loading {} …", a.model.display());
    let mut model = Sdxl::load(&a.model, a.config.as_deref(), &opts)
        .with_context(|| format!("loading SDXL from {}", a.model.display()))?;
    let mut lora_notes = Vec::new();
    if !a.loras.is_empty() {
        let mut all = crate::lora::LoraWeights::default();
        for spec in &a.loras {
            let (path, w) = match spec.rsplit_once(':') {
                Some((p, w)) if w.parse::<f64>().is_ok() => (PathBuf::from(p), w.parse::<f64>()?),
                _ => (PathBuf::from(spec), 1.0),
            };
            let imp = import(&path)?;
            if !imp.unmatched.is_empty() {
                eprintln!(
                    "{}: {} keys not applied (not UNet attention/linear LoRA), e.g. {}",
                    path.display(),
                    imp.unmatched.len(),
                    imp.unmatched[0]
                );
            }
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            lora_notes.push(format!(
                "{}:{w}:{}",
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                &crate::identity::sha256_hex(&bytes)[..12]
            ));
            all.extend(imp.weights.scaled(w));
        }
        let r = model.unet.set_lora(&all)?;
        eprintln!("LoRA: {} projections merged, {} targets not in this UNet", r.merged, r.unmatched.len());
        if let Some(t) = r.unmatched.first() {
            eprintln!("  e.g. {t}");
        }
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let init_noise = match &a.init_latents {
        Some(p) => {
            let f = crate::weights::StFile::open(p)?;
            let key = if f.contains("latents") {
                "latents".to_string()
            } else {
                f.keys().into_iter().next().context("empty latents file")?
            };
            Some(f.tensor(&key, candle_core::DType::F32, &candle_core::Device::Cpu)?)
        }
        None => None,
    };
    let req = GenerateRequest {
        prompt: a.prompt.clone(),
        negative: a.negative.clone(),
        seed,
        steps: a.steps,
        cfg: a.cfg,
        sampler: a.sampler,
        width: a.width,
        height: a.height,
        batch: a.batch,
        init_noise,
        init_image: match &a.init_image {
            Some(p) => Some((crate::png_meta::load_image(p, a.width, a.height)?, a.strength)),
            None => None,
        },
    };
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let out = model
        .generate(&req, &mut |p, _| {
            bar.set_length(p.total as u64);
            bar.set_position(p.step as u64);
            ControlFlow::Continue(())
        })?
        .context("generation was cancelled")?;
    bar.finish_and_clear();
    if let Some(t) = &out.truncated {
        eprintln!("prompt longer than 77 tokens; dropped: {t:?}");
    }
    let text = |i: usize| -> Vec<(String, String)> {
        vec![
            ("prompt".into(), a.prompt.clone()),
            ("negative_prompt".into(), a.negative.clone().unwrap_or_default()),
            ("seed".into(), seed.to_string()),
            ("batch_index".into(), i.to_string()),
            ("steps".into(), a.steps.to_string()),
            ("cfg".into(), a.cfg.to_string()),
            ("sampler".into(), a.sampler.name().into()),
            ("size".into(), format!("{}x{}", a.width, a.height)),
            ("model".into(), model.name.clone()),
            ("loras".into(), lora_notes.join(" ")),
            ("hyperlora_version".into(), env!("CARGO_PKG_VERSION").into()),
        ]
    };
    for (i, (img, path)) in out.images.iter().zip(&outs).enumerate() {
        crate::png_meta::write_png(path, img, &text(i), a.force)?;
        println!(
            "{} ({}×{}, seed {seed}, {} steps {}, {:.1}s)",
            path.display(),
            a.width,
            a.height,
            a.steps,
            a.sampler.name(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
