//! `hyperlora bench hyper`: the hypernetwork on a real-size variant — load, identity forward, LoRA synthesis, and
//! torch's einsum on the same bases when `--torch` is given.
use super::table::{median, run_script, Table};
use super::Args;
use crate::cli::load_hyper;
use crate::hyper::config::HyperConfig;
use crate::hyper::modules;
use crate::hyper::synth::Branch;
use crate::identity::Identity;
use crate::synthetic::hyper as synthetic;
use std::time::{Duration, Instant};

/// What `bench/compare_synthesis.py` prints.
#[derive(serde::Deserialize)]
struct TorchSynthesis {
    torch: String,
    threads: usize,
    f16_s: f64,
    f32_upcast_s: f64,
}

pub(super) fn run(a: Args) -> anyhow::Result<()> {
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
    table.row(
        &format!("identity forward ({} image(s))", a.images),
        d,
        format!("{}×{} coefficients", c.resampler.num_queries, c.hyper_dim),
    );

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
    if let Some(py) = &a.torch {
        const SCRIPT: &str = include_str!("../../../bench/compare_synthesis.py");
        let mut cmd = std::process::Command::new(py);
        cmd.arg("-").arg(dir);
        cmd.args(["--threads", &rayon::current_num_threads().to_string(), "--repeat", &a.repeat.max(1).to_string()]);
        eprintln!("timing torch with {} …", py.display());
        let t: TorchSynthesis = run_script(cmd, SCRIPT, "torch")?;
        let ours = d.as_secs_f64();
        table.row(
            &format!("torch {} einsum on the f16 bases ({} threads)", t.torch, t.threads),
            Duration::from_secs_f64(t.f16_s),
            format!("ours ÷ this: {:.2}×", ours / t.f16_s),
        );
        table.row(
            "torch einsum on the bases upcast to f32 beforehand (2× the memory)",
            Duration::from_secs_f64(t.f32_upcast_s),
            format!("ours ÷ this: {:.2}× (goal ≤ 1.0, reading f16)", ours / t.f32_upcast_s),
        );
    }

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
    table.row(
        "identity mix(a, b, 0.3)",
        per(&|| {
            std::hint::black_box(id.mix(&other, 0.3)?);
            Ok(())
        })?,
        shape.clone(),
    );
    table.row(
        "identity mean of 8",
        per(&|| {
            std::hint::black_box(Identity::mean(&[&id; 8])?);
            Ok(())
        })?,
        shape.clone(),
    );
    table.row(
        "identity a − b",
        per(&|| {
            std::hint::black_box(id.sub(&other)?);
            Ok(())
        })?,
        shape.clone(),
    );
    table.row(
        "identity similarity(a, b)",
        per(&|| {
            std::hint::black_box(id.similarity(&other)?);
            Ok(())
        })?,
        shape.clone(),
    );
    table.row(
        "identity normalised coefficients",
        per(&|| {
            std::hint::black_box(id.coefficients()?);
            Ok(())
        })?,
        shape.clone(),
    );
    table.row(
        "identity a − b, then its content hash (first use; cached after)",
        per(&|| {
            std::hint::black_box(id.sub(&other)?.hash());
            Ok(())
        })?,
        shape,
    );
    Ok(())
}
