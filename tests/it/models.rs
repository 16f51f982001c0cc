//! Discovery (ComfyUI trees, the hub cache, the usual mistakes), the config file and `doctor` on synthetic trees
//! made of the tiny fixture files.
use crate::common::*;
use hyperlora::models::{discover_comfyui, discover_hub, doctor, load_config, Status};
use hyperlora::session::ModelPaths;
use std::path::Path;
use std::process::Command;

fn antelope(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture("onnx-tiny/scrfd_tiny.onnx"), dir.join("scrfd_10g_bnkps.onnx")).unwrap();
    std::fs::copy(fixture("onnx-tiny/arcface_tiny.onnx"), dir.join("glintr100.onnx")).unwrap();
    let raw = hyperlora::synthetic::onnx::mean_face_106();
    std::fs::write(dir.join("2d106det.onnx"), hyperlora::synthetic::onnx::landmark_106(&raw, &[0.0; 212]).unwrap())
        .unwrap();
}

/// A ComfyUI `models/` tree with every component in its usual place.
fn comfy(root: &Path) {
    let m = root.join("models");
    std::fs::create_dir_all(m.join("checkpoints")).unwrap();
    std::fs::copy(
        fixture("sdxl-tiny-single-file/sdxl_tiny_sgm_fp16.safetensors"),
        m.join("checkpoints/tiny_xl.safetensors"),
    )
    .unwrap();
    // a LoRA in checkpoints/ is not a checkpoint
    std::fs::copy(fixture("hyperlora-tiny/lora_n1.safetensors"), m.join("checkpoints/a_lora.safetensors")).unwrap();
    copy_tree(&fixture("hyperlora-tiny"), &m.join("hyper_lora/hyper_lora/sdxl_hyper_id_lora_v1_fidelity"));
    copy_tree(&fixture("clip-vision-tiny"), &m.join("hyper_lora/clip_vit/clip_vit_large_14"));
    antelope(&m.join("insightface/models/antelopev2"));
}

#[test]
fn comfyui_tree_is_found_and_checks_out() {
    let t = tempfile::tempdir().unwrap();
    comfy(t.path());
    // the ComfyUI folder or its models/ folder both work
    for root in [t.path().to_path_buf(), t.path().join("models")] {
        let d = discover_comfyui(&root);
        let p = &d.paths;
        assert!(p.sdxl.as_ref().unwrap().ends_with("checkpoints/tiny_xl.safetensors"), "{p:?}");
        assert!(p.hyperlora.as_ref().unwrap().ends_with("sdxl_hyper_id_lora_v1_fidelity"));
        assert!(p.clip.as_ref().unwrap().ends_with("clip_vit_large_14"));
        assert!(p.antelopev2.as_ref().unwrap().ends_with("antelopev2"));
        assert!(d.hints.is_empty(), "{:?}", d.hints);
        assert_eq!(d.candidates.iter().filter(|(c, _)| *c == "sdxl").count(), 1, "the LoRA file is not a checkpoint");
    }
    // the tiny single file is not SDXL-base-shaped: without its configs doctor says so (as the loader would)
    let mut paths = discover_comfyui(t.path()).paths;
    let sdxl = doctor(&paths).into_iter().find(|c| c.component == "sdxl").unwrap();
    assert!(sdxl.status == Status::Bad && sdxl.detail.contains("--sdxl-config"), "{sdxl:?}");
    paths.sdxl_config = Some(fixture("sdxl-tiny"));
    let checks = doctor(&paths);
    for c in &checks {
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }
    let hyper = checks.iter().find(|c| c.component == "hyperlora").unwrap();
    assert!(hyper.detail.contains("34 modules") && hyper.licence.contains("CC BY-NC 4.0"), "{hyper:?}");
    assert!(checks.iter().find(|c| c.component == "antelopev2").unwrap().licence.contains("non-commercial"));
    assert!(checks.iter().find(|c| c.component == "clip").unwrap().detail.contains("not ViT-L/14"));
}

#[test]
fn common_mistakes_get_hints() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("models");
    // nested antelopev2/antelopev2 and a variant without its folder level
    antelope(&m.join("insightface/models/antelopev2/antelopev2"));
    copy_tree(&fixture("hyperlora-tiny"), &m.join("hyper_lora/hyper_lora"));
    let d = discover_comfyui(&m);
    assert!(d.hints.iter().any(|h| h.contains("nested antelopev2/antelopev2")), "{:?}", d.hints);
    assert!(d.hints.iter().any(|h| h.contains("one level down")), "{:?}", d.hints);
    assert!(d.paths.antelopev2.as_ref().unwrap().ends_with("antelopev2/antelopev2"));
    // doctor on the folder above the nested one names the mistake too
    let checks =
        doctor(&ModelPaths { antelopev2: Some(m.join("insightface/models/antelopev2")), ..Default::default() });
    let a = checks.iter().find(|c| c.component == "antelopev2").unwrap();
    assert!(a.status == Status::Bad && a.detail.contains("nested"), "{a:?}");
    // buffalo_l in place of antelopev2
    let t2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t2.path().join("insightface/models/buffalo_l")).unwrap();
    std::fs::create_dir_all(t2.path().join("checkpoints")).unwrap();
    let d = discover_comfyui(t2.path());
    assert!(d.hints.iter().any(|h| h.contains("buffalo_l")), "{:?}", d.hints);
}

#[test]
fn hub_cache_layout_is_found() {
    let t = tempfile::tempdir().unwrap();
    let hub = t.path();
    let repo = hub.join("models--bytedance-research--HyperLoRA");
    copy_tree(&fixture("hyperlora-tiny"), &repo.join("snapshots/0123abc/sdxl_hyper_id_lora_v1_edit"));
    copy_tree(&fixture("hyperlora-tiny"), &repo.join("snapshots/fedcba9/sdxl_hyper_id_lora_v1_fidelity"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "fedcba9\n").unwrap();
    copy_tree(&fixture("clip-vision-tiny"), &hub.join("models--openai--clip-vit-large-patch14/snapshots/1111"));
    copy_tree(&fixture("sdxl-tiny"), &hub.join("models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/2222"));
    let d = discover_hub(hub);
    assert!(
        d.paths.hyperlora.as_ref().unwrap().ends_with("fedcba9/sdxl_hyper_id_lora_v1_fidelity"),
        "refs/main wins: {:?}",
        d.paths
    );
    assert_eq!(d.candidates.iter().filter(|(c, _)| *c == "hyperlora").count(), 2);
    assert!(d.paths.clip.as_ref().unwrap().ends_with("1111"));
    let checks = doctor(&d.paths);
    let sdxl = checks.iter().find(|c| c.component == "sdxl").unwrap();
    assert!(sdxl.status == Status::Ok && sdxl.detail.contains("diffusers folder"), "{sdxl:?}");
}

#[test]
fn doctor_names_corrupt_and_mismatched_files() {
    let t = tempfile::tempdir().unwrap();
    let v = t.path().join("variant");
    copy_tree(&fixture("hyperlora-tiny"), &v);
    let bases = v.join("hyper_lora_modules.safetensors");
    // a garbage header length: HeaderTooLarge, named
    let mut bytes = std::fs::read(&bases).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&bases, &bytes).unwrap();
    let c = doctor(&ModelPaths { hyperlora: Some(v.clone()), ..Default::default() });
    let h = c.iter().find(|c| c.component == "hyperlora").unwrap();
    assert!(
        h.status == Status::Bad
            && h.detail.contains("HeaderTooLarge")
            && h.detail.contains("hyper_lora_modules.safetensors"),
        "{h:?}"
    );
    // a CLIP config from another model beside the weights
    let clip = t.path().join("clip");
    copy_tree(&fixture("clip-vision-tiny"), &clip);
    let cfg = std::fs::read_to_string(clip.join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 32", "\"hidden_size\": 768");
    std::fs::write(clip.join("config.json"), cfg).unwrap();
    let c = doctor(&ModelPaths { clip: Some(clip), ..Default::default() });
    let k = c.iter().find(|c| c.component == "clip").unwrap();
    assert!(k.status == Status::Bad && k.detail.contains("768") && k.detail.contains("32"), "{k:?}");
    // nothing configured: missing
    assert!(c.iter().find(|c| c.component == "sdxl").unwrap().status == Status::Missing);
    // doctor checks what loading checks: a random-bytes recognizer, a UNet config that cannot build
    let ante = t.path().join("antelopev2");
    std::fs::create_dir(&ante).unwrap();
    antelope(&ante);
    let c = doctor(&ModelPaths { antelopev2: Some(ante.clone()), ..Default::default() });
    let a = c.iter().find(|c| c.component == "antelopev2").unwrap();
    assert!(a.status == Status::Ok, "the intact antelopev2 folder: {a:?}");
    let mut rng = hyperlora::rng::Rng::new(7);
    let junk: Vec<u8> = (0..4096).map(|_| (rng.uniform() * 255.0) as u8).collect();
    std::fs::write(ante.join("glintr100.onnx"), junk).unwrap();
    let c = doctor(&ModelPaths { antelopev2: Some(ante), ..Default::default() });
    let a = c.iter().find(|c| c.component == "antelopev2").unwrap();
    assert!(a.status == Status::Bad && a.detail.contains("glintr100.onnx"), "{a:?}");
    let sdxl = t.path().join("sdxl");
    copy_tree(&fixture("sdxl-tiny"), &sdxl);
    let cfg = std::fs::read_to_string(sdxl.join("unet/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["attention_head_dim"] = serde_json::json!([]);
    std::fs::write(sdxl.join("unet/config.json"), v.to_string()).unwrap();
    let c = doctor(&ModelPaths { sdxl: Some(sdxl), ..Default::default() });
    let s = c.iter().find(|c| c.component == "sdxl").unwrap();
    assert!(s.status == Status::Bad && s.detail.contains("attention_head_dim"), "{s:?}");
}

#[test]
fn config_file_and_doctor_command() {
    let t = tempfile::tempdir().unwrap();
    comfy(t.path());
    let cfg = t.path().join("config.toml");
    // relative paths are relative to the config file; the ComfyUI tree fills the rest
    // (the tiny single file needs its configs: `sdxl_config`)
    std::fs::write(
        &cfg,
        format!(
            "comfyui = \"models\"\nclip = \"models/hyper_lora/clip_vit/clip_vit_large_14\"\nsdxl_config = \"{}\"\ndevice = \"cpu\"\ndtype = \"f16\"\n",
            fixture("sdxl-tiny").display()
        ),
    )
    .unwrap();
    let c = load_config(&cfg).unwrap().unwrap();
    assert_eq!(c.comfyui.unwrap(), t.path().join("models"));
    std::fs::write(t.path().join("bad.toml"), "sdxl = \"x\"\ncolour = \"red\"\n").unwrap();
    let e = load_config(&t.path().join("bad.toml")).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("colour"), "{e}");
    assert!(load_config(&t.path().join("none.toml")).unwrap().is_none());
    let hub = tempfile::tempdir().unwrap();
    let run = |cfg: &Path, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hyperlora"));
        c.arg("doctor").args(extra).env("HYPERLORA_CONFIG", cfg).env("HF_HOME", hub.path());
        for v in [
            "HYPERLORA_SDXL",
            "HYPERLORA_HYPERLORA",
            "HYPERLORA_CLIP",
            "HYPERLORA_ANTELOPEV2",
            "HYPERLORA_COMFYUI",
            "HYPERLORA_DEVICE",
            "HYPERLORA_DTYPE",
            "HF_HUB_CACHE",
        ] {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let r = run(&cfg, &[]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{out}{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 4, "{out}");
    assert!(out.contains("licence: HyperLoRA weights: CC BY-NC 4.0"));
    // device and dtype come from the config unless a flag or variable names them
    assert!(out.contains("device  cpu, F16"), "{out}");
    let r = run(&cfg, &["--dtype", "f32"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("device  cpu, F32"));
    // no config, nothing found: non-zero exit naming what is missing
    let r = run(&t.path().join("none.toml"), &[]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("MISSING"));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not usable"));
    // a flag wins over the config file
    let r = run(&cfg, &["--hyperlora", "/no/such/variant"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stdout).contains("/no/such/variant"));
}
