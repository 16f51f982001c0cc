//! `hyperlora bench`: the hypernetwork's speed on real-size shapes, printed as a table. The benchmarks call the
//! model code directly, not through the `Session`, on purpose: they time the model code itself, without the
//! session's caches.
use super::load_hyper;
use crate::hyper::config::HyperConfig;
use crate::hyper::modules;
use crate::hyper::synth::Branch;
use crate::synthetic::hyper as synthetic;
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
    /// Identity space on real-size 1120×128 identities: coefficient operations, PCA of 100, a library of 1,000.
    Space,
    /// The decode and generation limits chosen, and SDXL base's memory estimate by size against this machine.
    Limits,
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
    /// sdxl: image size (square).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
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
    /// hyper: also time torch on the same bases with this Python (runs bench/compare_synthesis.py, built into the
    /// binary: einsum on the f16 bases, and on bases upcast to f32 beforehand) and print the ratio.
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

/// Run a comparison script (`cmd` is the Python with `-` and the script's arguments) with `script` on stdin, and
/// read the JSON line it ends with. On failure the script's output is shown first (errors print as one line).
pub(super) fn run_script<T: serde::de::DeserializeOwned>(
    mut cmd: std::process::Command,
    script: &str,
    what: &str,
) -> anyhow::Result<T> {
    use std::io::Write;
    let python = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    let parsed = serde_json::from_str(last);
    if !out.status.success() || parsed.is_err() {
        eprintln!("{text}");
    }
    if !out.status.success() {
        anyhow::bail!("the {what} run failed ({}); its output is above", out.status);
    }
    parsed.map_err(|e| anyhow::anyhow!("the {what} run printed no result line ({e}); its output is above"))
}

/// What `bench/compare_synthesis.py` prints.
#[derive(serde::Deserialize)]
struct TorchSynthesis {
    torch: String,
    threads: usize,
    f16_s: f64,
    f32_upcast_s: f64,
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
        What::Space => run_space(a),
        What::Limits => run_limits(),
    }
}

/// Identity space with real shapes (1120 × 128 raw tokens, 140 module names); the goals from the issue beside
/// each row.
fn run_space(a: Args) -> anyhow::Result<()> {
    use crate::identity::Variant;
    use crate::space::{orthogonalize, pca, Coeffs};
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
    let lib = crate::library::Library::open(&dir.join("lib"))?;
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
        const SCRIPT: &str = include_str!("../../bench/compare_synthesis.py");
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

/// The limits table: constants, then SDXL base's estimate per size and batch (the same function the refusal uses).
fn run_limits() -> anyhow::Result<()> {
    use crate::sdxl::model::{available_memory, memory_needed, sdxl_base_unet_config, MAX_BATCH, MAX_SIDE};
    println!("| limit | value |\n| --- | --- |");
    let rows = [
        ("photo side (JPEG/PNG/WebP)", format!("{} px", crate::vision::processor::MAX_PHOTO_SIDE)),
        ("photo decoded size", format!("{} MiB", crate::vision::processor::MAX_PHOTO_BYTES >> 20)),
        ("PNG side (settings, gather, load_image)", format!("{} px", crate::png_meta::MAX_PNG_SIDE)),
        ("generation side", format!("{MAX_SIDE} px")),
        ("batch", format!("1 to {MAX_BATCH}")),
        ("attention scores at once", format!("{} M elements", crate::sdxl::unet::attention::ATTENTION_CHUNK >> 20)),
        ("contact sheet", format!("{} M pixels", crate::render::grid::MAX_PIXELS / 1_000_000)),
        ("numbers from users", "finite, magnitude ≤ 1e6".to_string()),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    let avail = available_memory();
    let gb = |b: u128| format!("{:.1} GB", b as f64 / 1e9);
    println!(
        "\nSDXL base, CPU: memory a generation needs beyond the weights ({} available here)\n",
        avail.map(gb).unwrap_or_else(|| "unknown".into())
    );
    println!("| size | batch | f16 | f32 | f32 fits here |\n| --- | --- | --- | --- | --- |");
    let unet = sdxl_base_unet_config();
    for side in [1024, 2048, 4096, 8192] {
        for batch in [1, 4] {
            let (h, f) =
                (memory_needed(&unet, 128, 2, batch, side, side), memory_needed(&unet, 128, 4, batch, side, side));
            let fits = avail.map(|a| if f <= a { "yes" } else { "no: refused" }).unwrap_or("?");
            println!("| {side}² | {batch} | {} | {} | {fits} |", gb(h), gb(f));
        }
    }
    Ok(())
}
