//! The command line: one file per command, errors as `anyhow` with context.
mod bench;
mod demo;
mod doctor;
mod download;
mod encode;
mod export;
mod finetune;
mod gather;
mod generate;
mod identity;
mod info;
mod library;
pub mod tui {
    //! `hyperlora tui`
    #[derive(clap::Args, Debug)]
    pub struct Args {
        #[command(flatten)]
        pub models: crate::front::args::ModelArgs,
    }
}
mod repl;
mod run;
pub(crate) mod session_args;
mod train;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "hyperlora",
    version,
    about = "Tuning-free portrait personalisation with HyperLoRA",
    after_long_help = "Quick start:\n  hyperlora demo                       the whole path on the tiny demo set (random weights)\n  hyperlora doctor --comfyui DIR       find and check your models\n  hyperlora --comfyui DIR              the TUI (the line REPL without a terminal); help() lists the API\n  hyperlora run scripts/average.rhai --set a=me1.jpg --set b=me2.jpg --comfyui DIR"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Without a command: the TUI on a terminal, the line REPL otherwise (no TTY, or TERM=dumb).
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub models: session_args::ModelArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the whole path on the embedded tiny demo set (random weights): photo → identity → LoRA → image.
    Demo(demo::Args),
    /// Run a Rhai recipe headless; exits non-zero on the first error (printed as file:line:col).
    Run(run::Args),
    /// The full-screen terminal UI: input, output log, values, image preview, progress (over SSH and in tmux).
    Tui(tui::Args),
    /// The interactive line REPL (Rhai, with history and completion).
    Repl(repl::Args),
    /// Check the models: found or missing, path, size, dtype, headers and shapes, licence (exit 1 if not usable).
    Doctor(doctor::Args),
    /// Fetch the released HyperLoRA variant and CLIP (and optionally an SDXL repo) into the Hugging Face cache.
    Download(download::Args),
    /// Encode photos of one person into a features file (face detection, landmarks, ID cutout, ArcFace, CLIP).
    Encode(encode::Args),
    /// Fuse precomputed encoder outputs (ArcFace + CLIP features of one person's photos) into an identity.
    Identity(identity::Args),
    /// Turn a saved identity into a kohya LoRA file (ComfyUI LoraLoaderModelOnly, diffusers' kohya loader).
    ExportLora(export::Args),
    /// Generate images with SDXL (diffusers folder or single-file checkpoint), optionally with LoRA files.
    Generate(generate::Args),
    /// After a sweep (from every shard): index.csv of the generated images' settings and a contact sheet per recipe.
    Gather(gather::Args),
    /// Show what a file is: a generated PNG's settings, an identity, a LoRA.
    Info(info::Args),
    /// An identity library folder: list it, show one entry, remove one.
    Library(library::Args),
    /// Fine-tune an identity from its photos (~50 steps in identity space; the result is still an identity).
    Finetune(finetune::Args),
    /// Training: `train step` computes one step's loss and every gradient (to check other code against ours).
    Train(Box<train::Args>),
    /// Print benchmark tables (real-size random weights unless --hyperlora is given).
    Bench(bench::Args),
}

/// Storage dtype of written files (LoRA factors); the compute dtype is `front::args::ComputeDtype`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

impl OutDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            OutDtype::F32 => candle_core::DType::F32,
            OutDtype::F16 => candle_core::DType::F16,
            OutDtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Arguments shared by commands that load a HyperLoRA variant.
#[derive(clap::Args, Debug, Clone)]
pub struct HyperArgs {
    /// HyperLoRA variant folder (hyper_lora_modules.json/.safetensors, resampler.safetensors, id_projector.safetensors).
    #[arg(long, env = "HYPERLORA_HYPERLORA", value_name = "DIR")]
    pub hyperlora: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(cmd) = cli.cmd else {
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false);
        return if tty {
            crate::tui::run(&cli.models)
        } else {
            repl::run(repl::Args { models: cli.models, history: None })
        };
    };
    match cmd {
        Cmd::Tui(a) => crate::tui::run(&a.models),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Repl(a) => repl::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Download(a) => download::run(a),
        Cmd::Encode(a) => encode::run(a),
        Cmd::Identity(a) => identity::run(a),
        Cmd::ExportLora(a) => export::run(a),
        Cmd::Generate(a) => generate::run(a),
        Cmd::Info(a) => info::run(a),
        Cmd::Gather(a) => gather::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Library(a) => library::run(a),
        Cmd::Train(a) => train::run(*a),
        Cmd::Finetune(a) => finetune::run(a),
    }
}

fn load_hyper(dir: &std::path::Path) -> anyhow::Result<crate::HyperLora> {
    use anyhow::Context;
    crate::HyperLora::load(dir, &crate::hyper::LoadOptions::default())
        .with_context(|| format!("loading HyperLoRA from {}", dir.display()))
}
