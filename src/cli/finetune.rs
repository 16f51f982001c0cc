//! `hyperlora finetune`: photos → identity → ~50 steps of fine-tuning in identity space → a saved identity.
use super::encode::face_picks;
use crate::face::analyser::FaceOptions;
use crate::files::output::{refuse_existing, write_file};
use crate::session::{Finetune, PhotoSpec};
use crate::train::adamw::{AdamWConfig, Schedule};
use crate::train::finetune::FinetuneOptions;
use crate::train::step::LossOptions;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub models: crate::front::args::ModelArgs,
    /// Photos of one person: the identity is made from them and they are the training pairs.
    #[arg(required = true, value_name = "PHOTO")]
    pub photos: Vec<PathBuf>,
    /// Face box x1,y1,x2,y2 instead of detection (once for all photos or once per photo).
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2")]
    pub face_box: Vec<String>,
    /// Fine-tuning steps (each step sees every photo once).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Seed of the timesteps and noise (the same seed gives the same result on the same device).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// AdamW learning rate on the identity's raw coefficients.
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Learning rate after warm-up: constant or cosine (to 0 at the last step).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Clip the gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// min-SNR-γ loss weighting (e.g. 5); off by default.
    #[arg(long, value_name = "GAMMA")]
    pub min_snr_gamma: Option<f64>,
    /// Training size in pixels (default: the model's native size — 1024 for SDXL, 128 for the demo set).
    #[arg(long)]
    pub size: Option<usize>,
    /// Caption of photos without a same-name .txt (default: the trigger words + "a photo of a person").
    #[arg(long)]
    pub prompt: Option<String>,
    /// LoRA strength during training.
    #[arg(long, default_value_t = 1.0)]
    pub strength: f64,
    /// Gradient checkpointing per transformer block: auto (on from 512 px), on, off. It trades a second forward
    /// of each block for far less memory; the result is the same.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub gradient_checkpointing: String,
    /// Sampling steps of the before/after images whose face_score is reported (0: none).
    #[arg(long, default_value_t = 20)]
    pub sample_steps: usize,
    /// The fine-tuned identity (a `.safetensors` identity file); the loss log goes beside it as `<name>.loss.csv`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

/// `<out without extension>.loss.csv`.
pub fn log_path(out: &std::path::Path) -> PathBuf {
    out.with_extension("loss.csv")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let log = log_path(&a.out);
    refuse_existing(&a.out, a.force)?;
    refuse_existing(&log, a.force)?;
    let specs: Vec<PhotoSpec> = face_picks(&a.face_box, a.photos.len(), None)?
        .into_iter()
        .zip(&a.photos)
        .map(|(pick, p)| PhotoSpec::with_options(p, FaceOptions { pick, ..Default::default() }))
        .collect();
    let options = FinetuneOptions {
        steps: a.steps,
        adamw: AdamWConfig { lr: a.lr, weight_decay: a.weight_decay, ..AdamWConfig::default() },
        warmup: a.warmup,
        schedule: Schedule::parse(&a.schedule)?,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        loss: LossOptions { min_snr_gamma: a.min_snr_gamma },
        seed: a.seed,
        strength: a.strength,
        checkpointing: crate::train::step::Checkpointing::parse(&a.gradient_checkpointing)?,
    };
    options.validate()?;
    let (session, _) = super::session_args::session(&a.models)?;
    super::session_args::install_ctrl_c(session.lock().map_err(|_| anyhow::anyhow!("session lock"))?.cancel_flag());
    let mut s = session.lock().map_err(|_| anyhow::anyhow!("session lock poisoned"))?;
    let id = s.identity(&specs)?;
    eprintln!("start: {id}");
    let f =
        Finetune { photos: a.photos.clone(), prompt: a.prompt, size: a.size, options, sample_steps: a.sample_steps };
    let t = std::time::Instant::now();
    let (trained, report) = s.finetune(&id, &f)?;
    let mut csv = String::from("step,loss,lr,grad_norm\n");
    for r in &report.log {
        csv += &format!("{},{},{},{}\n", r.step, r.loss, r.lr, r.grad_norm);
    }
    s.save_identity(&trained, &a.out, a.force)?;
    write_file(&log, csv.as_bytes(), a.force)?;
    println!("{trained}");
    println!("{} steps in {:.1} s → {} (log {})", a.steps, t.elapsed().as_secs_f64(), a.out.display(), log.display());
    let score = |r: &Result<f64, String>| match r {
        Ok(v) => format!("{v:.4}"),
        Err(e) => format!("n/a ({e})"),
    };
    println!("face_score before: {}", score(&report.face_before));
    println!("face_score after: {}", score(&report.face_after));
    println!("eval loss {:.6} -> {:.6}", report.eval_before, report.eval_after);
    Ok(())
}
