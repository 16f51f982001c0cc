//! End-to-end generation on the tiny SDXL: pixels as diffusers writes them, seeds, PNG metadata, the CLI.
use crate::common::*;
use hyperlora::files::png_meta::{read_png, to_rgb8, write_png};
use hyperlora::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
use std::ops::ControlFlow;
use std::process::Command;

#[test]
fn decoded_image_converts_like_the_reference_png() {
    let decoded = load("sdxl-tiny/reference/sampling_dpmpp2m_karras_3steps.safetensors", "decoded");
    let (rgb, w, h) = to_rgb8(&decoded.get(0).unwrap()).unwrap();
    let (want, ww, wh, _) = read_png(&fixture("sdxl-tiny/reference/sampling_decoded.png")).unwrap();
    assert_eq!((w, h), (ww, wh));
    let worst = rgb.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "pixel difference {worst}");
}

fn tiny() -> Sdxl {
    Sdxl::load(&fixture("sdxl-tiny"), None, &SdxlOptions::default()).unwrap()
}

fn req(seed: u64) -> GenerateRequest {
    GenerateRequest {
        seed,
        steps: 3,
        width: 128,
        height: 96,
        ..GenerateRequest::new("fcsks fxhks fhyks, a photo of a person")
    }
}

#[test]
fn same_seed_same_image_and_metadata_round_trips() {
    let m = tiny();
    let go = |r: &GenerateRequest| m.generate(r, &mut |_, _| ControlFlow::Continue(())).unwrap().unwrap();
    let a = go(&req(7));
    let b = go(&req(7));
    let c = go(&req(8));
    assert_eq!(a.images[0].dims(), &[3, 96, 128]);
    assert_max_abs("same seed", &a.images[0], &b.images[0], 0.0);
    let (d, _) = max_abs(&a.images[0], &c.images[0]);
    assert!(d > 1e-3, "different seeds gave the same image");
    // a negative prompt changes the result; sizes that are not multiples of 8 are refused
    let neg = go(&GenerateRequest { negative: Some("blurry".into()), ..req(7) });
    assert!(max_abs(&a.images[0], &neg.images[0]).0 > 1e-4);
    assert!(m
        .generate(&GenerateRequest { width: 100, ..req(7) }, &mut |_, _| ControlFlow::Continue(()))
        .err()
        .unwrap()
        .to_string()
        .contains("multiples of 8"));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.png");
    let meta =
        vec![("prompt".to_string(), "fcsks fxhks fhyks, ünïcode".to_string()), ("seed".to_string(), "7".to_string())];
    write_png(&p, &a.images[0], &meta, false).unwrap();
    let (rgb, w, h, text) = read_png(&p).unwrap();
    assert_eq!((w, h), (128, 96));
    assert_eq!(rgb, to_rgb8(&a.images[0]).unwrap().0);
    assert_eq!(text, meta);
    assert!(write_png(&p, &c.images[0], &meta, false).is_err(), "overwrote an existing PNG");
}

#[test]
fn generate_cli_writes_png_with_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("img.png");
    let bin = env!("CARGO_BIN_EXE_hyperlora");
    let lora = format!("{}:0.8", fixture("hyperlora-tiny/lora_n1.safetensors").display());
    let args = |o: &std::path::Path| {
        vec![
            "generate".to_string(),
            "--model".into(),
            fixture("sdxl-tiny").display().to_string(),
            "--prompt".into(),
            "a photo".into(),
            "--lora".into(),
            lora.clone(),
            "--seed".into(),
            "3".into(),
            "--steps".into(),
            "2".into(),
            "--width".into(),
            "64".into(),
            "--height".into(),
            "64".into(),
            "--sampler".into(),
            "euler_a".into(),
            "--out".into(),
            o.display().to_string(),
        ]
    };
    let o = Command::new(bin).args(args(&out)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("136 projections merged"));
    let o = Command::new(bin).args(["info", out.to_str().unwrap()]).output().unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    for want in [
        "64×64 PNG",
        "prompt: a photo",
        "seed: 3",
        "sampler: euler_a",
        "steps: 2",
        "model: sdxl-tiny",
        "lora_n1.safetensors:0.8:",
    ] {
        assert!(info.contains(want), "{want} missing in\n{info}");
    }
    // same seed, same bytes; an existing output is refused
    let again = tmp.path().join("again.png");
    assert!(Command::new(bin).args(args(&again)).output().unwrap().status.success());
    assert_eq!(read_png(&out).unwrap().0, read_png(&again).unwrap().0);
    let o = Command::new(bin).args(args(&out)).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already exists"));
    // a model path that is not SDXL
    let o = Command::new(bin)
        .args([
            "generate",
            "--model",
            fixture("hyperlora-tiny").to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            tmp.path().join("x.png").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("model_index.json"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn img2img_runs_the_strength_fraction_of_the_schedule() {
    let m = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let base = m.generate(&req(7), &mut |_, _| ControlFlow::Continue(())).unwrap().unwrap();
    let p = tmp.path().join("init.png");
    write_png(&p, &base.images[0], &[], false).unwrap();
    let init = hyperlora::files::png_meta::load_image(&p, 128, 96).unwrap();
    assert!(hyperlora::files::png_meta::load_image(&p, 64, 64).err().unwrap().to_string().contains("128×96"));
    let r = GenerateRequest { steps: 10, init_image: Some((init.clone(), 0.5)), ..req(9) };
    let mut steps = Vec::new();
    let a = m
        .generate(&r, &mut |s, _| {
            steps.push(s.step);
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(steps, vec![6, 7, 8, 9, 10], "strength 0.5 of 10 steps runs the last 5");
    let b = m.generate(&r, &mut |_, _| ControlFlow::Continue(())).unwrap().unwrap();
    assert_max_abs("img2img is deterministic", &a.images[0], &b.images[0], 0.0);
    let weaker = m
        .generate(&GenerateRequest { init_image: Some((init.clone(), 0.2)), ..r.clone() }, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert!(max_abs(&weaker.images[0], &a.images[0]).0 > 1e-4);
    let e =
        m.generate(&GenerateRequest { init_image: Some((init, 0.0)), ..r.clone() }, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("strength"), "{e}");
    let wrong = load("sdxl-tiny/reference/vae.safetensors", "encode.image"); // 128×128, the request is 128×96
    let e = m
        .generate(&GenerateRequest { init_image: Some((wrong, 0.5)), ..r }, &mut |_, _| ControlFlow::Continue(()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("128×128") && e.to_string().contains("128×96"), "{e}");
}

/// Defaults that fit the model, on the default path (the CLI on the demo set, nothing overridden): generate makes
/// the model's native size, img2img keeps the init image's, no LoRA line without a LoRA, `doctor --demo` checks
/// the demo set, `library ls` of a missing folder is an error, `help("generate")` lists every option's default.
#[test]
fn defaults_fit_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_dir();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hyperlora")).args(args).env("HYPERLORA_DEMO_DIR", &demo).output().unwrap()
    };
    let generate = |extra: &[&str]| cli(&[&["generate", "--demo", "--prompt", "x"][..], extra].concat());
    let a = tmp.path().join("a.png");
    let o = generate(&["--steps", "1", "--seed", "1", "--out", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let native = hyperlora::sdxl::unet::UNetConfig::load(
        &hyperlora::synthetic::demo::DemoSet::in_dir(&demo).sdxl.join("unet/config.json"),
    )
    .unwrap()
    .native_size();
    let img = hyperlora::session::Image::load(&a).unwrap();
    assert_eq!((img.width, img.height), (native, native), "not the demo's native size");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("projections merged"), "a LoRA line without a LoRA");
    // img2img keeps the init image's size
    let init = tmp.path().join("init.png");
    let o = generate(&["--steps", "1", "--width", "64", "--height", "96", "--out", init.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = tmp.path().join("b.png");
    let o = generate(&["--steps", "2", "--init-image", init.to_str().unwrap(), "--out", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = hyperlora::session::Image::load(&b).unwrap();
    assert_eq!((img.width, img.height), (64, 96), "img2img changed the init image's size");
    // doctor --demo checks the demo set (and passes)
    let o = cli(&["doctor", "--demo"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains(&demo.join("sdxl-tiny").display().to_string()), "{out}");
    // a library that does not exist
    let o = cli(&["library", "ls", tmp.path().join("nope").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no such library folder"));
    // help lists every generate option with its default
    let h = hyperlora::script::api::help(Some("generate"));
    for want in ["steps: 20", "cfg: 5.0", "batch: 1", "init: none", "strength: 0.6", "width: native"] {
        assert!(h.contains(want), "help(\"generate\") lacks {want}: {h}");
    }
}
