use crate::front::args::ComputeDtype;
use crate::sdxl::scheduler::SamplerKind;
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SDXL diffusers folder or single-file checkpoint (.safetensors).
    #[arg(long, env = "HYPERLORA_SDXL", value_name = "DIR_OR_FILE", required_unless_present = "demo")]
    pub model: Option<PathBuf>,
    /// Use the embedded demo set's tiny SDXL (random weights) instead of --model.
    #[arg(long)]
    pub demo: bool,
    /// For a single-file checkpoint whose dimensions differ from SDXL base: a diffusers-layout folder with its
    /// configs (tokenizers are built in; a tokenizer*/ folder there overrides them).
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
    /// Image width (default: the init image's with --init-image, else the model's native size — 1024 for SDXL base,
    /// the demo set's own on the demo set).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height (default as --width).
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Unit-Gaussian starting latents (.safetensors, first tensor or `latents`) instead of seeded noise.
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// img2img: start from this image (its size kept unless --width/--height say otherwise).
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
    crate::front::args::configs_folder(a.config.as_deref(), "--config")?;
    anyhow::ensure!(
        (1..=crate::sdxl::model::MAX_BATCH).contains(&a.batch),
        "--batch {}: batch must be 1 to {} (images in one UNet batch)",
        a.batch,
        crate::sdxl::model::MAX_BATCH
    );
    let outs = out_paths(&a);
    for p in &outs {
        crate::files::output::refuse_existing(p, a.force)?;
    }
    // the one-shot command is a session like every front end: same loading, LoRA import, sampling, PNG settings
    let sdxl = match (&a.model, a.demo) {
        (_, true) => crate::front::args::demo_set()?.sdxl,
        (Some(m), false) => m.clone(),
        (None, false) => anyhow::bail!("give --model DIR_OR_FILE (or HYPERLORA_SDXL), or --demo"),
    };
    let paths = crate::session::ModelPaths { sdxl: Some(sdxl), sdxl_config: a.config.clone(), ..Default::default() };
    let opts =
        crate::session::SessionOptions { paths, device: crate::front::device(&a.device)?, dtype: a.dtype.dtype() };
    // the progress every command shows: loads, notes, a step bar
    let mut session = crate::session::Session::new(opts, super::session_args::listener());
    let mut mix = crate::LoraMix::empty();
    for spec in &a.loras {
        let (path, w) = match spec.rsplit_once(':') {
            Some((p, w)) if w.parse::<f64>().is_ok() => (PathBuf::from(p), w.parse::<f64>()?),
            _ => (PathBuf::from(spec), 1.0),
        };
        mix = mix.add(&session.lora_file(&path, w)?);
    }
    let mut g = crate::session::Generate::new(a.prompt.clone());
    g.negative = a.negative.clone();
    g.seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    (g.steps, g.cfg, g.sampler, g.batch) = (a.steps, a.cfg, a.sampler, a.batch);
    // 0: the init image's size, or the model's native size (the session decides)
    (g.width, g.height) = (a.width.unwrap_or(0), a.height.unwrap_or(0));
    g.lora = (!mix.is_empty()).then_some(mix);
    if let Some(p) = &a.init_image {
        g.init = Some((crate::session::Image::load(p)?, a.strength));
    }
    if let Some(p) = &a.init_latents {
        let f = crate::weights::StFile::open(p)?;
        let key = if f.contains("latents") {
            "latents".to_string()
        } else {
            f.keys().into_iter().next().context("empty latents file")?
        };
        g.init_noise = Some(f.tensor(&key, candle_core::DType::F32, &candle_core::Device::Cpu)?);
    }
    let t0 = std::time::Instant::now();
    let images = session.generate_batch(&g)?;
    for (mut img, path) in images.into_iter().zip(&outs) {
        session.save_image(&mut img, path, a.force)?;
        println!(
            "{} ({}×{}, seed {}, {} steps {}, {:.1}s)",
            path.display(),
            img.width,
            img.height,
            img.seed,
            a.steps,
            a.sampler.name(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
