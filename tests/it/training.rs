//! The training path against PyTorch autograd: `hyperlora train step` on the fixture's inputs reproduces its loss,
//! noise prediction, coefficients and every gradient group (fixture README §6b), and one AdamW step equals
//! `torch.optim.AdamW`'s.
use crate::common::*;
use candle_core::Var;
use hyperlora::weights::StFile;
use std::collections::{BTreeMap, BTreeSet};

const STEP: &str = "training/training_step.safetensors";

/// The group a key is compared in: `grad.lora.id.….lora_up.weight` → `grad.lora`, `coeffs.id` → `coeffs.id`.
fn group(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    parts[..2.min(parts.len())].join(".")
}

fn values(f: &StFile, key: &str) -> Vec<f32> {
    f.to_f32_vec(key).unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn train_step_matches_pytorch_autograd() {
    let tmp = tempfile::tempdir().unwrap();
    step_against_fixture(&tmp.path().join("step.safetensors"), "auto");
}

/// With gradient checkpointing on (each transformer block recomputed in backward) the step still matches the
/// fixture, and equals the step without it to 1e-5 × each group's scale (f32 sums in another order).
#[test]
fn gradient_checkpointing_gives_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let on = step_against_fixture(&tmp.path().join("on.safetensors"), "on");
    let off = step_against_fixture(&tmp.path().join("off.safetensors"), "off");
    let mut worst: BTreeMap<String, (f32, f32)> = BTreeMap::new();
    for key in off.keys().into_iter().filter(|k| k.starts_with("grad.")) {
        let (a, b) = (values(&on, &key), values(&off, &key));
        let e = worst.entry(group(&key)).or_insert((0.0, 0.0));
        for (x, y) in a.iter().zip(&b) {
            e.0 = e.0.max((x - y).abs());
            e.1 = e.1.max(y.abs());
            assert!(x.is_finite(), "{key}: {x}");
        }
    }
    assert_eq!(worst.len(), 7);
    for (grp, (d, scale)) in worst {
        assert!(scale > 1e-4 && d <= 1e-5 * scale, "{grp}: max |Δ| {d:e} against a scale of {scale:e}");
    }
}

/// Run `train step` on the fixture's inputs (checkpointing `mode`) and check it against the fixture.
fn step_against_fixture(out: &std::path::Path, mode: &str) -> StFile {
    let o = hyperlora(&[
        "train",
        "step",
        "--sdxl",
        fixture("sdxl-tiny").to_str().unwrap(),
        "--hyperlora",
        fixture("hyperlora-tiny-base").to_str().unwrap(),
        "--inputs",
        fixture(STEP).to_str().unwrap(),
        "--gradient-checkpointing",
        mode,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = StFile::open(out).unwrap();
    let want = StFile::open(fixture(STEP)).unwrap();

    // every gradient the fixture has, and no other
    let grads = |f: &StFile| f.keys().into_iter().filter(|k| k.starts_with("grad.")).collect::<BTreeSet<_>>();
    let (g, w) = (grads(&got), grads(&want));
    assert_eq!(w.len(), 1204, "the fixture's gradient count");
    assert!(
        g == w,
        "missing: {:?}\nextra: {:?}",
        w.difference(&g).take(5).collect::<Vec<_>>(),
        g.difference(&w).take(5).collect::<Vec<_>>()
    );

    // loss: 1e-5 relative; prediction, coefficients and the noised latents: 1e-4 max-abs
    let loss = (values(&got, "output.loss")[0], values(&want, "output.loss")[0]);
    assert!(loss.1 > 1.0 && ((loss.0 - loss.1) / loss.1).abs() <= 1e-5, "loss {} vs {}", loss.0, loss.1);
    for key in ["output.noise_pred", "coeffs.id", "coeffs.base", "input.noisy_latents"] {
        let (a, b) = (values(&got, key), values(&want, key));
        assert_eq!(a.len(), b.len(), "{key}");
        assert!(b.iter().any(|v| v.abs() > 0.1), "{key}: the reference is ~zero");
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
        assert!(d <= 1e-4, "{key}: max |Δ| {d:e}");
    }

    // each gradient group within 1e-4 × its largest |value| (never a fixed absolute tolerance)
    let mut worst: BTreeMap<String, (f32, f32, String)> = BTreeMap::new();
    for key in &w {
        let (a, b) = (values(&got, key), values(&want, key));
        assert_eq!(a.len(), b.len(), "{key}: size");
        let e = worst.entry(group(key)).or_insert((0.0, 0.0, String::new()));
        for (x, y) in a.iter().zip(&b) {
            assert!(x.is_finite(), "{key}: {x}");
            e.1 = e.1.max(y.abs());
            let d = (x - y).abs();
            if d > e.0 {
                e.0 = d;
                e.2 = key.clone();
            }
        }
    }
    assert_eq!(worst.len(), 7, "groups: {:?}", worst.keys().collect::<Vec<_>>());
    for (grp, (d, scale, at)) in &worst {
        assert!(*scale > 1e-4, "{grp}: the reference gradient is ~zero ({scale:e})");
        assert!(*d <= 1e-4 * scale, "{grp}: max |Δ| {d:e} at {at} > 1e-4 × {scale:e}");
    }
    got
}

/// `adamw_step1.raw_mean.id`: the raw mean of the fixture's photo after one AdamW step (lr 1e-2, betas (0.9,
/// 0.999), eps 1e-8, weight decay 1e-2) from `grad.raw_mean.id`; 5e-4 max-abs (README).
#[test]
fn adamw_first_step_equals_torch() {
    use hyperlora::train::adamw::{AdamW, AdamWConfig};
    let h = hyperlora::HyperLora::load(fixture("hyperlora-tiny-base"), &Default::default()).unwrap();
    let m = h.raw_id(&load(STEP, "input.arcface"), &load(STEP, "input.clip_hidden_states")).unwrap();
    let m = m.mean_keepdim(0).unwrap();
    let var = Var::from_tensor(&m).unwrap();
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 };
    let mut opt = AdamW::new(cfg, &[&var]).unwrap();
    opt.step(&[&var], &[load(STEP, "grad.raw_mean.id")], cfg.lr).unwrap();
    let want = load(STEP, "adamw_step1.raw_mean.id");
    let moved = max_abs(&want, &m).0;
    assert!(moved > 5e-3, "the reference step moved m by only {moved}");
    assert_max_abs("adamw_step1.raw_mean.id", var.as_tensor(), &want, 5e-4);
}

/// `hyperlora finetune` on the demo set with the env the tests share (the demo set written once).
fn finetune(extra: &[&str]) -> std::process::Output {
    let b = hyperlora::synthetic::demo::PHOTO_FACE_BOX;
    let bx = format!("{},{},{},{}", b[0], b[1], b[2], b[3]);
    let demo = demo_dir();
    let photo = hyperlora::synthetic::demo::DemoSet::in_dir(&demo).photo;
    let mut args: Vec<String> = ["finetune", "--demo", "--box", &bx].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(photo.display().to_string());
    std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(&args)
        .env("HYPERLORA_DEMO_DIR", &demo)
        .env_remove("HYPERLORA_HYPERLORA")
        .output()
        .unwrap()
}

fn eval_line(o: &std::process::Output) -> (f64, f64) {
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap_or_default();
    let rest = last.strip_prefix("eval loss ").unwrap_or_else(|| panic!("last line: {last:?}\n{out}"));
    let (a, b) = rest.split_once(" -> ").unwrap();
    (a.trim().parse().unwrap(), b.trim().parse().unwrap())
}

#[test]
fn finetune_lowers_the_eval_loss_and_gives_an_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("me-ft.safetensors");
    let o = finetune(&[
        "--steps",
        "30",
        "--seed",
        "7",
        "--lr",
        "0.05",
        "--sample-steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (before, after) = eval_line(&o);
    assert!(before.is_finite() && after.is_finite() && before > 0.0, "{before} -> {after}");
    assert!(after < before, "eval loss did not drop: {before} -> {after}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("face_score before: ") && text.contains("face_score after: "), "{text}");

    // the loss log beside it: a header and 30 rows of finite numbers
    let csv = std::fs::read_to_string(tmp.path().join("me-ft.loss.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "step,loss,lr,grad_norm");
    assert_eq!(rows.len(), 31);
    for (i, r) in rows[1..].iter().enumerate() {
        let v: Vec<f64> = r.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0] as usize, i + 1);
        assert!(v[1].is_finite() && v[1] > 0.0 && v[2] == 0.05, "{r}");
    }

    // the identity: marked as fine-tuned from the photo's identity, and usable like any other
    let ft = hyperlora::Identity::load(&out).unwrap();
    let info = ft.finetuned().expect("marked as fine-tuned").clone();
    assert_eq!((info.steps, info.lr, info.seed), (30, 0.05, 7));
    assert!((info.eval_before - before).abs() < 1e-5 && (info.eval_after - after).abs() < 1e-5);
    let (mut s, origin, _) = demo_session();
    assert_eq!(info.from, origin.hash(), "fine-tuned from the photo's identity");
    assert!(max_abs(ft.raw(), origin.raw()).0 > 1e-3, "the coefficients did not move");
    s.check_identity(&ft).unwrap();
    let mid = s.mix(&origin, &ft, 0.5).unwrap();
    let want = ((origin.raw() + ft.raw()).unwrap() * 0.5).unwrap();
    assert_max_abs("mix(origin, finetuned, 0.5)", mid.raw(), &want, 1e-6);
    // a library keeps it, mark included
    let lib = hyperlora::identity::library::Library::open(&tmp.path().join("lib")).unwrap();
    lib.save("me-ft", &ft, candle_core::DType::F32, false).unwrap();
    let back = lib.get("me-ft").unwrap();
    assert_eq!(back.hash(), ft.hash());
    assert_eq!(back.finetuned(), Some(&info));
    // info says so
    let o = hyperlora(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("fine-tuned from") && text.contains("30 steps"), "{text}");
}

#[test]
fn finetune_is_deterministic_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = tmp.path().join(name);
        let o = finetune(&["--steps", "3", "--seed", "11", "--sample-steps", "0", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        StFile::open(&out).unwrap().raw("raw").unwrap().to_vec()
    };
    assert_eq!(run("a.safetensors"), run("b.safetensors"), "two CPU runs with one seed differ");
}

#[test]
fn finetune_refuses_bad_requests_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--steps", "0", "--out", o], "steps must be 1"),
        (vec!["--lr", "NaN", "--out", o], "learning rate NaN"),
        (vec!["--size", "1024", "--out", o], "is 512×512, smaller than the training size 1024"),
        // the memory estimate is checked before anything is encoded (the tiny UNet at 8192²: terabytes)
        (vec!["--size", "8192", "--out", o], "needs about"),
        (vec!["--schedule", "linear", "--out", o], "schedule `linear`"),
    ] {
        let r = finetune(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote a file");
    }
    // no face found (a photo without one, no box given): said, with the way out
    let demo = demo_dir();
    let photo = crate::common::faceless_photo(tmp.path(), "corner.png");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["finetune", "--demo", "--steps", "2", "--out", o])
        .arg(&photo)
        .env("HYPERLORA_DEMO_DIR", &demo)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("no face detected") && err.contains("--box"), "{err}");
    assert!(!out.exists());
}

/// Ctrl-C (a real SIGINT) mid fine-tune: it stops between steps, says so, exits non-zero, and writes neither the
/// identity nor the loss log.
#[test]
fn finetune_stops_on_ctrl_c_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ft.safetensors");
    let b = hyperlora::synthetic::demo::PHOTO_FACE_BOX;
    let bx = format!("{},{},{},{}", b[0], b[1], b[2], b[3]);
    let demo = demo_dir();
    let photo = hyperlora::synthetic::demo::DemoSet::in_dir(&demo).photo;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["finetune", "--demo", "--box", &bx, "--steps", "100000", "--sample-steps", "0", "--out"])
        .arg(&out)
        .arg(&photo)
        .env("HYPERLORA_DEMO_DIR", &demo)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // the first step's line: training runs (no bar on a pipe, a line instead)
    let (status, rest) = crate::common::interrupt_after(child, "train step 1/100000: loss ");
    assert!(!status.success(), "exit 0 after Ctrl-C:\n{rest}");
    assert!(rest.contains("cancelled"), "{rest}");
    assert!(!out.exists() && !out.with_extension("loss.csv").exists(), "a file was written after Ctrl-C");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "something was left in the output folder");
}

fn demo_session() -> (hyperlora::session::Session, hyperlora::Identity, std::path::PathBuf) {
    use hyperlora::session::{FaceOptions, FacePick, ModelPaths, PhotoSpec, Session, SessionOptions};
    let demo = hyperlora::synthetic::demo::DemoSet::in_dir(&demo_dir());
    let paths = ModelPaths {
        sdxl: Some(demo.sdxl.clone()),
        hyperlora: Some(demo.hyperlora.clone()),
        clip: Some(demo.clip.clone()),
        antelopev2: Some(demo.antelopev2.clone()),
        ..Default::default()
    };
    let mut s = Session::new(
        SessionOptions { paths, device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 },
        std::sync::Arc::new(|_: &hyperlora::session::Event| {}),
    );
    let opts = FaceOptions { pick: FacePick::Box(hyperlora::synthetic::demo::PHOTO_FACE_BOX), ..Default::default() };
    let id = s.identity(&[PhotoSpec::with_options(&demo.photo, opts)]).unwrap();
    (s, id, demo.photo)
}

/// LoRA space: the factors move, the result generates, mixes, and exports to a kohya file whose import gives the
/// same ΔW on every layer.
#[test]
fn finetune_lora_exports_what_it_trained() {
    use hyperlora::train::finetune::FinetuneOptions;
    let (mut s, id, photo) = demo_session();
    let start = hyperlora::LoraMix::lora(&id, 1.0);
    let f = hyperlora::session::Finetune {
        photos: vec![photo],
        prompt: None,
        size: None,
        options: FinetuneOptions { steps: 12, seed: 5, ..Default::default() },
        sample_steps: 0,
    };
    let (trained, report) = s.finetune_lora(&start, &f).unwrap();
    assert_eq!(report.log.len(), 12);
    assert!(report.eval_after < report.eval_before, "{} -> {}", report.eval_before, report.eval_after);
    let w0 = s.lora_weights(&start).unwrap();
    let w1 = s.lora_weights(&trained).unwrap();
    assert_eq!(w0.targets(), w1.targets());
    let mut moved = 0f32;
    for t in w1.targets() {
        let (a, b) = (w0.delta(t).unwrap().unwrap(), w1.delta(t).unwrap().unwrap());
        assert_eq!(a.dims(), b.dims());
        moved = moved.max(max_abs(&a, &b).0);
    }
    assert!(moved > 1e-4, "the LoRA did not move ({moved})");
    // the project's own import reads back the same ΔW
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ft.safetensors");
    s.export_lora(&trained, &path, candle_core::DType::F32, false).unwrap();
    let imported = hyperlora::lora::file::import(&path).unwrap().weights;
    for t in w1.targets() {
        let want = w1.delta(t).unwrap().unwrap();
        let scale = max_abs(&want, &want.zeros_like().unwrap()).0;
        assert!(scale > 0.0, "{t}: zero ΔW");
        let got = imported.delta(t).unwrap().unwrap_or_else(|| panic!("{t} not in the exported file"));
        assert!(max_abs(&got, &want).0 <= 1e-5 * scale.max(1.0), "{t}: ΔW differs after export/import");
    }
    // it generates and mixes like any LoRA
    let mut g = hyperlora::session::Generate::new("a photo of a person");
    (g.width, g.height, g.steps) = (64, 64, 1);
    g.lora = Some(s.mix_add(&trained, &hyperlora::LoraMix::lora(&id, 0.5)));
    s.generate(&g).unwrap();
}

/// The script functions: `finetune` and `finetune_lora` in a recipe run by `hyperlora run` on the demo set.
#[test]
fn finetune_from_a_script() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("ft.rhai");
    let out = tmp.path().join("ft.safetensors");
    std::fs::write(
        &script,
        format!(
            r#"let me = identity(#{{ path: demo_photo, box: demo_box }});
let ft = finetune(me, #{{ photos: [demo_photo], steps: 2, lr: 0.02, seed: 3 }});
print(ft);
let l = finetune_lora(ft, #{{ photos: demo_photo, steps: 2 }});
export_lora(l, "{}");
print(similarity(me, ft) < 1.0);
"#,
            out.display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["run", "--demo", "--preview", "never", script.to_str().unwrap()])
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{}", text, String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("fine-tuned from") && text.contains("2 steps"), "{text}");
    assert!(text.lines().last() == Some("true"), "{text}");
    assert!(hyperlora::lora::file::import(&out).unwrap().weights.layers.len() > 100);
}
