//! `hyperlora bench space`: identity space on real-size 1120×128 identities.
use super::table::{median, Table};
use super::Args;
use crate::hyper::modules;
use crate::Identity;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Identity space with real shapes (1120 × 128 raw tokens, 140 module names); the goals from the issue beside
/// each row.
pub(super) fn run(a: Args) -> anyhow::Result<()> {
    use crate::identity::space::{orthogonalize, pca, Coeffs};
    use crate::identity::Variant;
    let (q, k) = (1120, 128);
    let variant = Variant { hash: "0".repeat(64), label: "real-size random".into() };
    let names: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new(modules::sdxl_release_modules().into_iter().map(|m| m.name).collect());
    let mut rng = crate::rng::Rng::new(5);
    let mut ident = |i: usize| -> anyhow::Result<Identity> {
        let mut v = vec![0f32; q * k];
        rng.fill(&mut v, 0.0, 1.0);
        let t = candle_core::Tensor::from_vec(v, (q, k), &candle_core::Device::Cpu)?;
        Ok(Identity::new(
            t,
            1,
            None,
            vec![crate::identity::Source { hash: format!("{i:064}"), label: format!("random {i}") }],
            variant.clone(),
        )?)
    };
    let ids: Vec<Identity> = (0..100).map(&mut ident).collect::<anyhow::Result<_>>()?;
    let cs: Vec<Coeffs> = ids.iter().map(|i| Coeffs::of(i, names.clone())).collect::<crate::Result<_>>()?;
    let (x, y) = (&cs[0], &cs[1]);
    let d = y.sub(x)?;
    let mut table = Table(Vec::new());
    let n = 20u32;
    let per = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        Ok(t.elapsed() / n)
    };
    let goal = "goal < 1 ms".to_string();
    table.row(
        "coeffs(id) (1120×128 raw tokens out of an identity)",
        per(&|| {
            std::hint::black_box(Coeffs::of(&ids[0], names.clone())?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "a + b",
        per(&|| {
            std::hint::black_box(x.add(y)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "a − b (direction)",
        per(&|| {
            std::hint::black_box(y.sub(x)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "a × 0.5",
        per(&|| {
            std::hint::black_box(x.scale(0.5));
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "dot(a, b)",
        per(&|| {
            std::hint::black_box(x.dot(y)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "norm(a)",
        per(&|| {
            std::hint::black_box(x.norm());
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "cosine(a, b)",
        per(&|| {
            std::hint::black_box(x.cosine(y)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "project(a, dir)",
        per(&|| {
            std::hint::black_box(x.project(&d)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "reject(a, dir)",
        per(&|| {
            std::hint::black_box(x.reject(&d)?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        ".normalized",
        per(&|| {
            std::hint::black_box(x.normalized());
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        ".module(\"…mid_block…attn2\").proj(\"to_k\").down",
        per(&|| {
            std::hint::black_box(
                x.module(x.module_index("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2")?)?
                    .proj("to_k")?
                    .factor(false)?,
            );
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "identity_from(coeffs, like)",
        per(&|| {
            std::hint::black_box(x.to_identity(&ids[0], "bench")?);
            Ok(())
        })?,
        goal.clone(),
    );
    table.row(
        "orthogonalize 4 directions",
        per(&|| {
            std::hint::black_box(orthogonalize(&cs[1..5])?);
            Ok(())
        })?,
        "(4 × the single ops)".into(),
    );
    let (dp, _) = median(a.repeat, || Ok(pca(&cs, 8)?))?;
    table.row("pca(100 identities, 8)", dp, "goal < 50 ms".into());
    let dir = tempfile_dir()?;
    let lib = crate::identity::library::Library::open(&dir.join("lib"))?;
    let t = Instant::now();
    for i in 0..1000 {
        lib.save(&format!("person_{i:04}"), &ids[i % 100], candle_core::DType::F16, false)?;
    }
    table.row("library: save 1,000 identities (f16; setup)", t.elapsed() / 1000, "per identity".into());
    let (dl, list) = median(a.repeat, || Ok(lib.list()?))?;
    table.row(&format!("library: list {} identities", list.len()), dl, "goal < 100 ms".into());
    let (dg, _) = median(a.repeat, || Ok(lib.get("person_0500")?))?;
    table.row("library: get one", dg, String::new());
    let size = std::fs::metadata(dir.join("lib").join("person_0000.id.safetensors"))?.len();
    let back = lib.get("person_0000")?;
    let err = Coeffs::of(&back, names.clone())?.sub(x)?.norm() / x.norm();
    table.row(
        "library: f16 file size and relative error",
        Duration::ZERO,
        format!("{:.0} KB, ‖f16 − f32‖/‖f32‖ = {err:.2e}", size as f64 / 1e3),
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("hyperlora {} bench space — {} threads", env!("CARGO_PKG_VERSION"), rayon::current_num_threads());
    table.print();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("hyperlora-bench-space-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
