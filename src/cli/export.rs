use super::{load_hyper, HyperArgs, OutDtype};
use crate::lora::file::{export_kohya, kohya_metadata};
use crate::{Identity, LoraMix};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// A saved identity (from `hyperlora identity`).
    #[arg(value_name = "ID.safetensors")]
    pub identity: PathBuf,
    /// Strength baked into the file (ΔW = weight · 0.5 · up · down when loaded at strength 1).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub weight: f64,
    /// Strength of the Base LoRA (needs a variant with the Base branch and an identity with Base features).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub base_weight: f64,
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: OutDtype,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.force && a.out.exists() {
        anyhow::bail!("{}: already exists; refusing to overwrite it (use --force)", a.out.display());
    }
    let id = Identity::load(&a.identity)?;
    let hyper = load_hyper(&a.hyper.hyperlora)?;
    hyper.check_identity(&id).with_context(|| a.identity.display().to_string())?;
    let mix = LoraMix::lora_with_base(&id, a.weight, a.base_weight);
    let weights = hyper.lora_weights(&mix)?;
    let title = a.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let max_rank = hyper.config().lora_rank + if a.base_weight != 0.0 { hyper.config().base_lora_rank.unwrap_or(0) } else { 0 };
    let meta = kohya_metadata(
        &title,
        max_rank,
        "HyperLoRA identity LoRA (UNet attention only); start prompts with the trigger phrase",
        &[
            ("hyperlora.variant", format!("{} {}", hyper.variant().label, hyper.variant().hash)),
            ("hyperlora.mix", mix.summary()),
            ("hyperlora.identity", id.hash()),
        ],
    );
    let s = export_kohya(&weights, &a.out, a.dtype.dtype(), meta, a.force)?;
    println!(
        "{} → {} ({} tensors, {} layers, rank {}, {:.1} MB, {:?})",
        mix.summary(),
        a.out.display(),
        s.tensors,
        s.layers,
        s.max_rank,
        s.bytes as f64 / 1e6,
        a.dtype
    );
    Ok(())
}
