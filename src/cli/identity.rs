use super::HyperArgs;
use crate::encode::features::FeatureSet;
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// Features file(s): `arcface` [N,512], `clip` [N,257,D], optional `clip_base`; all images are fused.
    #[arg(long = "features", value_name = "FILE", required = true)]
    pub features: Vec<PathBuf>,
    /// Where to write the identity (.safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::files::output::refuse_existing(&a.out, a.force)?;
    let sets = a.features.iter().map(|p| FeatureSet::load(p)).collect::<crate::Result<Vec<_>>>()?;
    let set = FeatureSet::concat(&sets)?;
    let dir = &a.hyper.hyperlora;
    let mut session = super::session_args::quiet_session(crate::session::ModelPaths {
        hyperlora: Some(dir.clone()),
        ..Default::default()
    });
    let id = session
        .identity_from_features(&set)
        .with_context(|| format!("computing the identity with {}", dir.display()))?;
    id.save(&a.out, a.force)?;
    println!("{} → {}", id.summary(), a.out.display());
    Ok(())
}
