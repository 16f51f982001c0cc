//! `hyperlora bench`: speed (and memory) tables on real-size shapes, one room per subject; `table` holds what
//! they share (the table, medians, running a PyTorch comparison script). The benchmarks call the
//! model code directly, not through the `Session`, on purpose: they time the model code itself, without the
//! session's caches.
use std::path::PathBuf;

mod encode;
mod hyper;
mod limits;
mod sdxl;
mod space;
mod table;
mod train;

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
    /// Identity space on real-size 1120×128 identities: coefficient operations, PCA of 100, a library of 1,000.
    Space,
    /// The decode and generation limits chosen, and SDXL base's memory estimate by size against this machine.
    Limits,
    /// One training step (forward + backward to a LoRA on every attention projection) on the demo's tiny UNet and
    /// SDXL base's shapes at --size (256), with and without gradient checkpointing: time, peak memory, estimate;
    /// with --torch, the same step in PyTorch (diffusers) in the same run, and the ratio.
    Train,
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
    pub dtype: crate::front::args::ComputeDtype,
    /// sdxl, lora, train: image size (square; default 1024, and 256 for train).
    #[arg(long)]
    pub size: Option<usize>,
    /// sdxl: denoising steps per image.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// sdxl: also time one step by block kind (GroupNorm, convolutions, attention, feed-forward…), the device
    /// synchronised around each.
    #[arg(long)]
    pub profile: bool,
    /// sdxl: also time diffusers on the same shapes and settings with this Python (torch and diffusers
    /// installed; runs bench/compare_diffusers.py, built into the binary) and print the ratio per step.
    #[arg(long, value_name = "PYTHON")]
    pub diffusers: Option<PathBuf>,
    /// Benchmark a real variant folder instead of real-size random f16 weights.
    #[arg(long, value_name = "DIR")]
    pub hyperlora: Option<PathBuf>,
    /// hyper, train: also time torch with this Python and print the ratio. hyper: bench/compare_synthesis.py (einsum
    /// on the f16 bases, and on bases upcast to f32 beforehand); train: bench/compare_train.py (torch and diffusers:
    /// the same step on diffusers' UNet). Both scripts are built into the binary.
    #[arg(long, value_name = "PYTHON")]
    pub torch: Option<PathBuf>,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Hyper => hyper::run(a),
        What::Sdxl => sdxl::sdxl(a),
        What::Lora => sdxl::lora(a),
        What::Encode => encode::encode(a),
        What::Space => space::run(a),
        What::Limits => limits::run(),
        What::Train => train::run(a),
    }
}
