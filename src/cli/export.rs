use super::{HyperArgs, OutDtype};
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
    crate::files::output::refuse_existing(&a.out, a.force)?;
    let id = Identity::load(&a.identity)?;
    let dir = &a.hyper.hyperlora;
    let mut session = super::session_args::quiet_session(crate::session::ModelPaths {
        hyperlora: Some(dir.clone()),
        ..Default::default()
    });
    session.check_identity(&id).with_context(|| format!("{} with {}", a.identity.display(), dir.display()))?;
    let weight = crate::session::finite(a.weight, "--weight")?;
    let base_weight = crate::session::finite(a.base_weight, "--base-weight")?;
    let mix = LoraMix::lora_with_base(&id, weight, base_weight);
    let s = session.export_lora(&mix, &a.out, a.dtype.dtype(), a.force)?;
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
