//! `hyperlora bench`: the hypernetwork's speed on real-size shapes, printed as a table.
use super::load_hyper;
use crate::hyper::config::HyperConfig;
use crate::hyper::synth::Branch;
use crate::hyper::{modules, synthetic};
use crate::Identity;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// The hypernetwork: load, identity forward, LoRA synthesis, identity algebra.
    Hyper,
    /// SDXL sampling: s/step and s/image (real-size random UNet unless --model is given).
    Sdxl,
    /// LoRA merge (switch cost) vs low-rank terms at run time (per-step cost) on SDXL's 560 attention projections.
    Lora,
    /// The encoders per photo: detection, landmarks, cutout, ArcFace, CLIP (real-size stand-ins unless given).
    Encode,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum, default_value = "hyper")]
    pub what: What,
    /// sdxl: a diffusers folder or single file to time instead of random real-size weights.
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub model: Option<PathBuf>,
    /// sdxl: config/tokenizer folder for a single-file --model.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// sdxl/lora: `cpu`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// sdxl/lora: compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: super::OutDtype,
    /// sdxl: image size (square).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// sdxl: denoising steps per image.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Benchmark a real variant folder instead of real-size random f16 weights.
    #[arg(long, value_name = "DIR")]
    pub hyperlora: Option<PathBuf>,
    /// Photos per identity in the forward benchmark.
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// encode: an antelopev2 folder to time instead of real-size stand-ins.
    #[arg(long, value_name = "DIR")]
    pub antelopev2: Option<PathBuf>,
    /// encode: a CLIP vision folder to time instead of random ViT-L/14 weights.
    #[arg(long, value_name = "DIR")]
    pub clip: Option<PathBuf>,
    /// encode: the photo to encode (default: a 1024×768 test card).
    #[arg(long, value_name = "PHOTO")]
    pub photo: Option<PathBuf>,
    /// Repetitions of each timed step (the table shows the median).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub(super) struct Table(pub(super) Vec<(String, Duration, String)>);

impl Table {
    pub(super) fn row(&mut self, name: &str, d: Duration, note: String) {
        eprintln!("  {name}: {:.1} ms", d.as_secs_f64() * 1e3);
        self.0.push((name.to_string(), d, note));
    }
    pub(super) fn print(&self) {
        println!("| step | time | note |\n|---|---:|---|");
        for (n, d, note) in &self.0 {
            println!("| {n} | {:.2} ms | {note} |", d.as_secs_f64() * 1e3);
        }
    }
}

pub(super) fn median<T>(repeat: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], last.expect("ran once")))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Hyper => run_hyper(a),
        What::Sdxl => super::bench_sdxl::sdxl(a),
        What::Lora => super::bench_sdxl::lora(a),
        What::Encode => super::bench_encode::encode(a),
    }
}

fn run_hyper(a: Args) -> anyhow::Result<()> {
    let mut table = Table(Vec::new());
    let tmp = std::env::temp_dir().join(format!("hyperlora-bench-{}", std::process::id()));
    let dir = match &a.hyperlora {
        Some(d) => d.clone(),
        None => {
            let cfg = HyperConfig::release(140);
            eprintln!("writing a real-size random f16 variant to {} …", tmp.display());
            let t = Instant::now();
            synthetic::write_variant(&tmp, &cfg, &modules::sdxl_release_modules(), 7, false)?;
            table.row("write random real-size variant (3.1 GB f16)", t.elapsed(), "setup, not a product path".into());
            tmp.clone()
        }
    };
    let result = bench(&dir, &a, &mut table);
    if a.hyperlora.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    println!(
        "hyperlora {} bench — {} threads, {}",
        env!("CARGO_PKG_VERSION"),
        rayon::current_num_threads(),
        if cfg!(feature = "cuda") { "cuda build" } else { "cpu build" }
    );
    table.print();
    Ok(())
}

fn bench(dir: &std::path::Path, a: &Args, table: &mut Table) -> anyhow::Result<()> {
    let t = Instant::now();
    let hyper = load_hyper(dir)?;
    table.row("load variant (strict check, resampler to f32)", t.elapsed(), format!("{}", dir.display()));
    let c = hyper.config().clone();
    let feats = synthetic::random_features(a.images, c.id_embed_dim, 257, c.embedding_dim, 11)?;
    let (d, id) = median(a.repeat, || Ok(hyper.identity(&feats)?))?;
    table.row(&format!("identity forward ({} image(s))", a.images), d, format!("{}×{} coefficients", c.resampler.num_queries, c.hyper_dim));

    let bytes = hyper.bases().branch_bytes(Branch::Id);
    let (d, lw) = median(a.repeat, || Ok(hyper.synthesize(&id, Branch::Id)?))?;
    table.row(
        "LoRA synthesis from coefficients",
        d,
        format!(
            "{} tensors, {} params; {:.2} GB of bases → {:.2} GB/s",
            lw.layers.len() * 2,
            lw.num_params(),
            bytes as f64 / 1e9,
            bytes as f64 / 1e9 / d.as_secs_f64()
        ),
    );

    let other = hyper.identity(&synthetic::random_features(1, c.id_embed_dim, 257, c.embedding_dim, 12)?)?;
    let n = 50;
    let per = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        Ok(t.elapsed() / n)
    };
    let shape = format!("{}×{}", c.resampler.num_queries, c.hyper_dim);
    table.row("identity mix(a, b, 0.3)", per(&|| Ok(drop(id.mix(&other, 0.3)?)))?, shape.clone());
    table.row("identity mean of 8", per(&|| Ok(drop(Identity::mean(&[&id; 8])?)))?, shape.clone());
    table.row("identity a − b", per(&|| Ok(drop(id.sub(&other)?)))?, shape.clone());
    table.row("identity similarity(a, b)", per(&|| { std::hint::black_box(id.similarity(&other)?); Ok(()) })?, shape.clone());
    table.row("identity normalised coefficients", per(&|| Ok(drop(id.coefficients()?)))?, shape.clone());
    table.row("identity a − b, then its content hash (first use; cached after)", per(&|| Ok(drop(id.sub(&other)?.hash())))?, shape);
    Ok(())
}
