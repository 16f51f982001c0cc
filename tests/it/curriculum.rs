//! `hyperlora train`: the three-stage curriculum on the demo set, from a fresh variant, on a tiny dataset built
//! from the fixture photo. Each stage changes exactly its own tensors (and some of them); a resume equals an
//! uninterrupted run bit for bit; the result loads in a recipe and generates; the loss falls; bad data is named.
use crate::common::{demo_dir, fixture};
use hyperlora::weights::StFile;
use std::path::Path;
use std::process::Output;

/// The fixture photo's face box (the demo's face models are random: boxes are given).
const BOX: [f64; 4] = hyperlora::synthetic::demo::PHOTO_FACE_BOX;

/// A dataset from the fixture photo: the photo, its mirror image and a 384² crop (each with its face box), and a
/// 200² corner with no face and no box (the detector runs and finds none: listed, then skipped).
fn dataset(dir: &Path) {
    let img = image::open(fixture("photo.png")).unwrap().to_rgb8();
    img.save(dir.join("a.png")).unwrap();
    image::imageops::flip_horizontal(&img).save(dir.join("b.png")).unwrap();
    image::imageops::crop_imm(&img, 100, 0, 384, 384).to_image().save(dir.join("c.png")).unwrap();
    crate::common::faceless_photo(dir, "d.png");
    let w = img.width() as f64;
    let b = |x: [f64; 4]| format!("[{}, {}, {}, {}]", x[0], x[1], x[2], x[3]);
    let lines = [
        format!(r#"{{"file_name": "a.png", "text": "a photo of an astronaut", "box": {}}}"#, b(BOX)),
        format!(r#"{{"file_name": "b.png", "box": {}}}"#, b([w - BOX[2], BOX[1], w - BOX[0], BOX[3]])),
        format!(r#"{{"file_name": "c.png", "box": {}}}"#, b([BOX[0] - 100.0, BOX[1], BOX[2] - 100.0, BOX[3]])),
        r#"{"file_name": "d.png"}"#.to_string(),
    ];
    std::fs::write(dir.join("metadata.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("b.txt"), "a mirrored astronaut").unwrap();
}

fn train(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["train", "--demo", "--size", "64", "--data"])
        .arg(data)
        .args(args)
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .env_remove("HYPERLORA_HYPERLORA")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    t
}

const FILES: [(&str, &str); 4] = [
    ("id_projector.safetensors", "id_projector"),
    ("resampler.safetensors", "resampler"),
    ("base_resampler.safetensors", "base_resampler"),
    ("hyper_lora_modules.safetensors", "bases"),
];

/// Compare two variants tensor by tensor: every tensor the stage does not train is byte-identical (dtype and
/// shape too); returns the trained tensors that changed, by file group.
fn changed(before: &Path, after: &Path, stage: hyperlora::train::curriculum::Stage) -> Vec<String> {
    let mut moved = Vec::new();
    for (file, group) in FILES {
        let (a, b) = (StFile::open(before.join(file)).unwrap(), StFile::open(after.join(file)).unwrap());
        assert_eq!(a.keys(), b.keys(), "{file}: the key set changed");
        for k in a.keys() {
            let name = format!("{group}.{k}");
            assert_eq!(a.shape(&k), b.shape(&k), "{name}");
            if stage.trains(&name) {
                let (x, y) = (a.to_f32_vec(&k).unwrap(), b.to_f32_vec(&k).unwrap());
                assert!(y.iter().all(|v| v.is_finite()), "{name} holds NaN or ±inf");
                if x != y {
                    moved.push(name);
                }
            } else {
                assert_eq!(a.dtype(&k), b.dtype(&k), "{name}: a stage {stage:?} does not train it");
                assert!(a.raw(&k) == b.raw(&k), "{name} changed, but stage {stage:?} does not train it");
            }
        }
    }
    moved
}

fn groups(moved: &[String]) -> std::collections::BTreeSet<String> {
    moved
        .iter()
        .map(|n| {
            let g = n.split('.').next().unwrap();
            if g == "bases" {
                format!("bases.{}", if n.contains(".base_") { "base" } else { "id" })
            } else {
                g.to_string()
            }
        })
        .collect()
}

#[test]
fn the_three_stages_run_in_order_and_each_changes_only_its_own_tensors() {
    use hyperlora::train::curriculum::Stage;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data);
    let cache = tmp.path().join("cache");
    let run = |stage: &str, from: Option<&Path>, out: &str| -> String {
        let out = tmp.path().join(out);
        let mut args = vec!["--stage", stage, "--steps", "3", "--lr", "1e-2", "--weight-decay", "0", "--cache"];
        args.push(cache.to_str().unwrap());
        args.extend(["--out", out.to_str().unwrap()]);
        if let Some(f) = from {
            args.extend(["--from", f.to_str().unwrap()]);
        }
        ok(train(&data, &args))
    };
    let t = run("base", None, "base");
    assert!(t.contains("stage base: ") && t.contains("trainable tensors"), "{t}");
    assert!(t.contains("bases.*.to_q.base_down_basis ×34"), "the trainable tensors are listed:\n{t}");
    assert!(t.contains("d.png") && t.contains("metadata.jsonl:4"), "the faceless image is listed as skipped:\n{t}");
    let (init, base) = (tmp.path().join("base/init"), tmp.path().join("base/checkpoint-3"));
    let moved = changed(&init, &base, Stage::Base);
    assert_eq!(groups(&moved), ["base_resampler", "bases.base"].map(String::from).into(), "{moved:?}");

    // held-out photos given: the fixture photo, found by the demo's detector; a sample at step 3 with its settings
    let t = {
        let out = tmp.path().join("clip");
        let photo = fixture("photo.png");
        let a = ["--stage", "id-clip", "--steps", "3", "--lr", "1e-2", "--weight-decay", "0", "--eval-every", "3"];
        let mut args: Vec<&str> = a.to_vec();
        args.extend([
            "--eval-steps",
            "1",
            "--eval-photos",
            photo.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ]);
        args.extend(["--from", base.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        ok(train(&data, &args))
    };
    assert!(t.contains("sample ") && tmp.path().join("clip/samples/step-3/000-photo.png").is_file(), "{t}");
    let clip = tmp.path().join("clip/checkpoint-3");
    let moved = changed(&base, &clip, Stage::IdClip);
    assert_eq!(groups(&moved), ["bases.id", "resampler"].map(String::from).into(), "{moved:?}");
    assert!(!tmp.path().join("clip/init").exists(), "--from makes no fresh variant");

    run("id-arcface", Some(&clip), "arcface");
    let arc = tmp.path().join("arcface/checkpoint-3");
    let moved = changed(&clip, &arc, Stage::IdArcface);
    assert_eq!(groups(&moved), ["bases.id", "id_projector", "resampler"].map(String::from).into(), "{moved:?}");
    assert!(moved.iter().any(|n| n.contains(".attn2.")), "the ArcFace path trains in stage 3: {moved:?}");

    // the result is a variant like any other: a recipe loads it and generates with an identity of it
    let recipe = tmp.path().join("use.rhai");
    std::fs::write(
        &recipe,
        "let me = identity(#{ path: demo_photo, box: demo_box });\n\
         let img = generate(\"a photo of a person\", #{ lora: lora(me, 0.85), steps: 2, width: 64, height: 64, seed: 1 });\n\
         save(img, \"sample.png\");\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["run", "--demo", "--hyperlora"])
        .arg(&arc)
        .arg(&recipe)
        .current_dir(tmp.path())
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .output()
        .unwrap();
    let t = ok(o);
    assert!(t.contains("projections merged"), "{t}");
    assert!(tmp.path().join("sample.png").is_file(), "{t}");
    let d = crate::common::hyperlora(&["doctor", "--demo", "--hyperlora", arc.to_str().unwrap()]);
    let dt = text(&d);
    assert!(dt.lines().any(|l| l.starts_with("ok") && l.contains("hyperlora")), "{dt}");
}

fn state_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let f = StFile::read(dir.join("train_state.safetensors")).unwrap();
    f.keys().into_iter().map(|k| (k.clone(), f.to_f32_vec(&k).unwrap())).collect()
}

#[test]
fn two_plus_two_steps_equal_four_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data);
    let cache = tmp.path().join("cache");
    let go = |steps: &str, out: &str, resume: bool| {
        let out = tmp.path().join(out);
        let mut a = vec!["--stage", "base", "--lr", "1e-2", "--steps", steps, "--save-every", "2", "--seed", "5"];
        // batches of 2 rows, 2 accumulated per step: 4 rows a step, drawn across epochs of 3 images
        a.extend(["--batch", "2", "--grad-accum", "2"]);
        a.extend(["--cache", cache.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        if resume {
            a.push("--resume");
        }
        ok(train(&data, &a))
    };
    go("4", "straight", false);
    go("2", "split", false);
    let t = go("4", "split", true);
    assert!(t.contains("train step 3/4"), "the resumed run starts at step 3:\n{t}");
    let (a, b) = (tmp.path().join("straight/checkpoint-4"), tmp.path().join("split/checkpoint-4"));
    for (file, _) in FILES {
        let (x, y) = (std::fs::read(a.join(file)).unwrap(), std::fs::read(b.join(file)).unwrap());
        assert!(x == y, "{file} differs after 2 + 2 steps");
    }
    assert_eq!(state_tensors(&a), state_tensors(&b), "the optimiser moments differ");
    let (ma, mb) = (
        StFile::read(a.join("train_state.safetensors")).unwrap().metadata(),
        StFile::read(b.join("train_state.safetensors")).unwrap().metadata(),
    );
    assert_eq!(ma, mb);
    let log = std::fs::read_to_string(tmp.path().join("split/log.csv")).unwrap();
    let steps: Vec<&str> = log.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["1", "2", "3", "4"], "{log}");
    let straight = std::fs::read_to_string(tmp.path().join("straight/log.csv")).unwrap();
    let losses = |l: &str| l.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(losses(&log), losses(&straight), "the logged losses differ");
    // no second run into a used folder without --resume, and no resume of another stage
    let o = train(&data, &["--stage", "base", "--steps", "6", "--out", tmp.path().join("split").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--resume"), "{}", text(&o));
    let o = train(
        &data,
        &["--stage", "id-clip", "--steps", "6", "--resume", "--out", tmp.path().join("split").to_str().unwrap()],
    );
    assert!(!o.status.success() && text(&o).contains("stage base"), "{}", text(&o));
}

fn eval_losses(t: &str) -> (f64, f64) {
    let l = t.lines().find(|l| l.starts_with("eval loss ")).unwrap_or_else(|| panic!("{t}"));
    let v: Vec<f64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (v[0], v[1])
}

#[test]
fn the_loss_falls_over_40_steps_and_samples_are_made() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data);
    let out = tmp.path().join("run");
    let t = ok(train(
        &data,
        &["--stage", "base", "--steps", "40", "--lr", "1e-3", "--eval-every", "20", "--eval-steps", "2", "--out"]
            .into_iter()
            .chain([out.to_str().unwrap()])
            .collect::<Vec<_>>(),
    ));
    let (before, after) = eval_losses(&t);
    assert!(before.is_finite() && after.is_finite() && after < before, "eval loss {before} -> {after}\n{t}");
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert_eq!(log.lines().next(), Some("step,loss,lr,seconds"));
    assert_eq!(log.lines().count(), 41, "{log}");
    // the held-out photo (the last usable one, c.png) sampled at steps 20 and 40, with their settings
    for step in [20, 40] {
        let dir = out.join(format!("samples/step-{step}"));
        let png = dir.join("000-c.png");
        let (_, _, settings) = hyperlora::files::png_meta::read_png_text(&png).unwrap();
        let recipe = settings.iter().find(|(k, _)| k == "recipe").map(|(_, v)| v.clone());
        assert_eq!(recipe.as_deref(), Some(format!("base-step-{step}").as_str()), "{settings:?}");
        let scores = std::fs::read_to_string(dir.join("scores.csv")).unwrap();
        assert!(scores.starts_with("photo,sample,face_score\n") && scores.contains("c.png"), "{scores}");
    }
    // gather makes one sheet per checkpoint
    let g = crate::common::hyperlora(&["gather", out.join("samples").to_str().unwrap()]);
    let gt = text(&g);
    assert!(g.status.success(), "{gt}");
    assert!(
        out.join("samples/sheet-base-step-20.png").is_file() && out.join("samples/sheet-base-step-40.png").is_file(),
        "{gt}"
    );
    // plot the log from a script
    let recipe = tmp.path().join("plot.rhai");
    std::fs::write(&recipe, format!("plot_loss({:?});\n", out.join("log.csv").display().to_string())).unwrap();
    let p = crate::common::hyperlora(&["run", "--demo", recipe.to_str().unwrap()]);
    let pt = text(&p);
    assert!(p.status.success() && pt.contains("loss"), "{pt}");
}

#[test]
fn bad_data_names_the_file_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image::open(fixture("photo.png")).unwrap().to_rgb8();
    let case = |name: &str, meta: &str, files: &[(&str, &[u8])]| -> String {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        img.save(dir.join("a.png")).unwrap();
        for (f, bytes) in files {
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        if !meta.is_empty() {
            std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
        }
        let out = tmp.path().join(format!("{name}-out"));
        let o = train(&dir, &["--stage", "base", "--steps", "1", "--out", out.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{name}: accepted\n{t}");
        assert!(!t.contains("panicked"), "{t}");
        t
    };
    let b = "[180, 52, 270, 180]";
    let t = case(
        "corrupt",
        &format!("{{\"file_name\": \"a.png\", \"box\": {b}}}\n{{\"file_name\": \"x.png\", \"box\": {b}}}\n"),
        &[("x.png", b"\x89PNG\r\n\x1a\nnot really")],
    );
    assert!(t.contains("x.png") && t.contains("metadata.jsonl:2"), "{t}");
    let t = case("no-name", "{\"file_name\": \"a.png\"}\n{\"text\": \"who?\"}\n", &[]);
    assert!(t.contains("metadata.jsonl") && t.contains("line 2") && t.contains("file_name"), "{t}");
    let t = case("off", "{\"file_name\": \"a.png\", \"box\": [400, 52, 600, 180]}\n", &[]);
    assert!(t.contains("a.png") && t.contains("off the 512×512 image") && t.contains("metadata.jsonl:1"), "{t}");
    let t = case("missing", "{\"file_name\": \"gone.png\"}\n", &[]);
    assert!(t.contains("gone.png") && t.contains("line 1"), "{t}");
    let t = case("not-json", "{\"file_name\": \"a.png\"\n", &[]);
    assert!(t.contains("line 1") && t.contains("JSON"), "{t}");
    // zero images: an empty folder, and a folder whose only image has no usable face
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = train(&empty, &["--stage", "base", "--steps", "1", "--out", tmp.path().join("e-out").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("no training images"), "{}", text(&o));
    let corner = crate::common::faceless_photo(tmp.path(), "corner.png");
    let t = case("faceless", "{\"file_name\": \"d.png\"}\n", &[("d.png", &std::fs::read(&corner).unwrap())]);
    assert!(t.contains("no usable training image") && t.contains("1 skipped"), "{t}");
    // a stage the variant cannot train
    let good = tmp.path().join("good");
    std::fs::create_dir(&good).unwrap();
    img.save(good.join("a.png")).unwrap();
    std::fs::write(good.join("metadata.jsonl"), format!("{{\"file_name\": \"a.png\", \"box\": {b}}}\n")).unwrap();
    let o = train(
        &good,
        &[
            "--stage",
            "base",
            "--steps",
            "1",
            "--from",
            &demo_hyperlora(),
            "--out",
            tmp.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success() && text(&o).contains("trains the Base branch, but"), "{}", text(&o));
}

fn demo_hyperlora() -> String {
    hyperlora::synthetic::demo::DemoSet::in_dir(&demo_dir()).hyperlora.display().to_string()
}

#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    dataset(&data);
    let out = tmp.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["train", "--demo", "--size", "64", "--stage", "base", "--steps", "100000", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (status, rest) = crate::common::interrupt_after(child, "train step 1/100000: loss ");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("--resume"), "{rest}");
    let (step, dir) = hyperlora::train::curriculum::latest_checkpoint(&out).expect("a checkpoint after Ctrl-C");
    assert!(dir.join("train_state.safetensors").is_file() && step >= 1, "{rest}");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "a partial checkpoint was left: {leftovers:?}");
    let next = (step + 1).to_string();
    let t = ok(train(&data, &["--stage", "base", "--steps", &next, "--resume", "--out", out.to_str().unwrap()]));
    assert!(t.contains(&format!("train step {next}/{next}")), "{t}");
    assert!(out.join(format!("checkpoint-{next}")).is_dir());
}
