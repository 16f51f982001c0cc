//! Turn the tiny fixture's stored encoder outputs (three real photos' CLIP hidden states, ArcFace-like unit
//! vectors) into a features file for `hyperlora identity`. Until the encoders land this is how the README's first
//! command gets its input.
//!
//! Usage: cargo run --example fixture_features -- OUT.safetensors [FIXTURES_DIR]
use hyperlora::features::FeatureSet;
use hyperlora::weights::StFile;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(
        args.next().ok_or_else(|| anyhow::anyhow!("usage: fixture_features OUT.safetensors [FIXTURES_DIR]"))?,
    );
    let fixtures = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/fixtures"));
    let inputs = fixtures.join("hyperlora-tiny/inputs.safetensors");
    let f = StFile::open(&inputs)?;
    let dev = candle_core::Device::Cpu;
    let a = f.tensor("arcface_n3", candle_core::DType::F32, &dev)?;
    let c = f.tensor("clip_hidden_states_n3", candle_core::DType::F32, &dev)?;
    if out.exists() {
        println!("{} exists; keeping it", out.display());
        return Ok(());
    }
    FeatureSet::new(a, c, None, vec![])?.save(&out, false)?;
    println!("wrote {} (3 images from {})", out.display(), inputs.display());
    Ok(())
}
