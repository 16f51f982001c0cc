//! Hardening (the hardening issue, items 2, 3, 5, 7–10): what bad files, configs and values do — each an error
//! that names the file or value, never a crash, a hang or a silent NaN.
use crate::common::*;
use candle_core::{DType, Device};
use std::path::Path;
use std::time::{Duration, Instant};

/// The bases are read into memory: truncating the file under a loaded model does not kill the process (with a
/// memory map, the next synthesis would die of SIGBUS and take this test binary with it).
#[test]
fn bases_replaced_under_a_loaded_model_do_not_kill_the_session() {
    use hyperlora::hyper::{synth::Branch, HyperLora, LoadOptions};
    let d = copy_dir(&fixture("hyperlora-tiny"));
    let h = HyperLora::load(d.path(), &LoadOptions::default()).unwrap();
    let set = features(1);
    let id = h.identity(&set).unwrap();
    let before = h.synthesize(&id, Branch::Id).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(d.path().join("hyper_lora_modules.safetensors")).unwrap();
    f.set_len(100).unwrap();
    drop(f);
    let after = h.synthesize(&id, Branch::Id).unwrap();
    assert_eq!(before.layers.len(), after.layers.len());
    assert_max_abs("synthesis after the file was truncated", &after.layers[3].up, &before.layers[3].up, 0.0);
}

/// A FIFO as a photo, a model file or `info`'s argument is refused at once instead of blocking forever.
#[test]
fn fifos_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("photo.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = hyperlora::pixels::photo::load_photo(&fifo).unwrap_err().to_string();
    assert!(e.contains("photo.png") && e.contains("FIFO"), "{e}");
    assert!(hyperlora::weights::StFile::open(&fifo).is_err());
    let t = Instant::now();
    let o = hyperlora(&["info", fifo.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("FIFO"));
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A JPEG cut short is an error (the decoder alone would fill the missing rows with grey); a whole one loads, also
/// with data after its end marker.
#[test]
fn truncated_jpegs_are_named() {
    use hyperlora::pixels::photo::{jpeg_complete, load_photo};
    let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/astronaut.jpg")).unwrap();
    assert!(jpeg_complete(&jpeg));
    let mut longer = jpeg.clone();
    longer.extend_from_slice(b"trailing data, as a motion photo's video");
    assert!(jpeg_complete(&longer));
    let dir = tempfile::tempdir().unwrap();
    for cut in [jpeg.len() / 2, jpeg.len() - 2, 2000] {
        assert!(!jpeg_complete(&jpeg[..cut]), "cut at {cut}");
        let p = dir.path().join(format!("cut{cut}.jpg"));
        std::fs::write(&p, &jpeg[..cut]).unwrap();
        let e = load_photo(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("cut{cut}.jpg")) && e.contains("truncated"), "{e}");
    }
    let p = dir.path().join("whole.jpg");
    std::fs::write(&p, &longer).unwrap();
    assert!(load_photo(&p).is_ok());
}

/// Configs with numbers that used to panic or be used as they are: errors naming the file and the field.
#[test]
fn bad_config_numbers_are_named() {
    use hyperlora::sdxl::scheduler::SchedulerConfig;
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(fixture("sdxl-tiny/scheduler/scheduler_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    for (field, value, says) in [
        ("num_train_timesteps", serde_json::json!(1), "num_train_timesteps 1"),
        ("steps_offset", serde_json::json!(5000), "steps_offset 5000"),
        ("beta_start", serde_json::json!(0.5), "beta_start 0.5"),
        ("beta_end", serde_json::json!(1.5), "beta_end 1.5"),
    ] {
        let mut c = v.clone();
        c[field] = value;
        let p = dir.path().join("scheduler_config.json");
        std::fs::write(&p, c.to_string()).unwrap();
        let e = SchedulerConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("scheduler_config.json") && e.contains(says), "{field}: {e}");
    }
    v["steps_offset"] = serde_json::json!(1);
    // CLIP vision: an activation we do not implement, a zero patch size
    let clip = std::fs::read_to_string(fixture("clip-vision-tiny/config.json")).unwrap();
    for (field, value, says) in [
        ("hidden_act", serde_json::json!("relu"), "hidden_act `relu`"),
        ("patch_size", serde_json::json!(0), "patch_size 0"),
        ("num_attention_heads", serde_json::json!(0), "num_attention_heads 0"),
    ] {
        let mut c: serde_json::Value = serde_json::from_str(&clip).unwrap();
        let target = if c.get("vision_config").is_some() { &mut c["vision_config"] } else { &mut c };
        target[field] = value;
        let p = dir.path().join("config.json");
        std::fs::write(&p, c.to_string()).unwrap();
        let e = hyperlora::vision::clip::ClipVisionConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(says), "{field}: {e}");
    }
}

/// Model configs that used to panic while building: errors naming the file and the field.
#[test]
fn model_configs_that_cannot_build_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let check = |rel: &str, edit: &dyn Fn(&mut serde_json::Value), says: &str, load: &dyn Fn(&Path) -> String| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap();
        edit(&mut v);
        let p = dir.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = load(&p);
        assert!(e.contains("config.json") && e.contains(says), "{rel} / {says}: {e}");
    };
    let unet = |p: &Path| hyperlora::sdxl::unet::UNetConfig::load(p).unwrap_err().to_string();
    let vae = |p: &Path| hyperlora::sdxl::vae::VaeConfig::load(p).unwrap_err().to_string();
    let te = |p: &Path| hyperlora::sdxl::text::ClipTextConfig::load(p).unwrap_err().to_string();
    let u = "sdxl-tiny/unet/config.json";
    check(u, &|v| v["attention_head_dim"] = serde_json::json!([]), "attention_head_dim is an empty list", &unet);
    check(u, &|v| v["attention_head_dim"] = serde_json::json!(0), "attention_head_dim is 0", &unet);
    check(
        u,
        &|v| {
            v["block_out_channels"] = serde_json::json!([]);
            v["down_block_types"] = serde_json::json!([]);
            v["up_block_types"] = serde_json::json!([]);
        },
        "block_out_channels has 0 entries",
        &unet,
    );
    check(u, &|v| v["norm_num_groups"] = serde_json::json!(0), "norm_num_groups is 0", &unet);
    let a = "sdxl-tiny/vae/config.json";
    check(a, &|v| v["block_out_channels"] = serde_json::json!([]), "block_out_channels has 0 entries", &vae);
    check(a, &|v| v["scaling_factor"] = serde_json::json!(0.0), "scaling_factor 0", &vae);
    check(
        "sdxl-tiny/text_encoder/config.json",
        &|v| v["num_attention_heads"] = serde_json::json!(0),
        "num_attention_heads 0",
        &te,
    );
}

/// `info` reads a PNG's settings without decoding its pixels (a header claiming 50000² pixels is refused, not
/// allocated), names a photo for what it is, and says when a PNG has no settings.
#[test]
fn info_reads_headers_only_and_names_photos() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/astronaut.jpg");
    let o = hyperlora(&["info", jpg.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("Jpeg image") && out.contains("no generation settings"), "{out}");
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, super::limits::png_claiming(50_000, 50_000)).unwrap();
    let o = hyperlora(&["info", bomb.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("50000×50000") && e.contains("16384"), "{e}");
    let plain = dir.path().join("plain.png");
    std::fs::write(&plain, hyperlora::files::png_meta::encode_png(&[0; 12], 2, 2, &[]).unwrap()).unwrap();
    let o = hyperlora(&["info", plain.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2×2 PNG") && out.contains("no generation settings"), "{out}");
}

/// Non-finite numbers where they enter: cfg, export weights, a face index below 0 — and a UNet with a NaN weight
/// stops at the sampling stage with an error instead of writing a black PNG.
#[test]
fn non_finite_numbers_stop_where_they_enter() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = hyperlora::script::Script::new(
        std::sync::Arc::new(std::sync::Mutex::new(hyperlora::session::Session::new(
            hyperlora::session::SessionOptions {
                paths: hyperlora::session::ModelPaths { sdxl: Some(fixture("sdxl-tiny")), ..Default::default() },
                device: Device::Cpu,
                dtype: DType::F32,
            },
            std::sync::Arc::new(|_: &hyperlora::session::Event| {}),
        ))),
        std::sync::Arc::new(|_| {}),
        hyperlora::script::Limits::default(),
    );
    let e = s.eval(r#"generate("x", #{ cfg: 0.0 / 0.0, width: 64, height: 64, steps: 1 })"#).unwrap_err().message;
    assert!(e.contains("cfg") && e.contains("NaN"), "{e}");
    let e = s.eval(r#"identity(#{ path: "p.png", face: -5 })"#).unwrap_err().message;
    assert!(e.contains("face") && e.contains("-5"), "{e}");
    // the script goes on after errors
    assert_eq!(s.eval("1 + 1").unwrap().as_int().unwrap(), 2);

    // export-lora --weight nan
    let id = dir.path().join("id.safetensors");
    let h = hyperlora::HyperLora::load(fixture("hyperlora-tiny"), &Default::default()).unwrap();
    let set = features(1);
    h.identity(&set).unwrap().save(&id, false).unwrap();
    let out = dir.path().join("l.safetensors");
    let o = hyperlora(&[
        "export-lora",
        "--hyperlora",
        fixture("hyperlora-tiny").to_str().unwrap(),
        id.to_str().unwrap(),
        "--weight",
        "nan",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--weight") && e.contains("NaN"), "{e}");
    assert!(!out.exists());

    // a NaN in the UNet: the run stops at sampling, naming the stage and the likely cause
    let sdxl = dir.path().join("sdxl");
    copy_tree(&fixture("sdxl-tiny"), &sdxl);
    let unet = sdxl.join("unet/diffusion_pytorch_model.safetensors");
    rewrite(&fixture("sdxl-tiny/unet/diffusion_pytorch_model.safetensors"), &unet, |t| {
        let (_, e) = t.iter_mut().find(|(k, _)| k == "conv_out.bias").unwrap();
        let mut v: Vec<f32> = bytemuck::cast_slice(&e.data).to_vec();
        v[0] = f32::NAN;
        *e = hyperlora::files::output::RawTensor::f32(&e.shape.clone(), &v);
    });
    let m = hyperlora::sdxl::model::Sdxl::load(&sdxl, None, &Default::default()).unwrap();
    let req = hyperlora::sdxl::model::GenerateRequest {
        width: 64,
        height: 64,
        steps: 2,
        ..hyperlora::sdxl::model::GenerateRequest::new("x")
    };
    let e = match m.generate(&req, &mut |_, _| std::ops::ControlFlow::Continue(())) {
        Ok(_) => panic!("a NaN UNet made an image"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("sampling") && e.contains("non-finite"), "{e}");

    // a NaN in a text encoder: named at the text encoders, before any sampling
    copy_tree(&fixture("sdxl-tiny/unet"), &sdxl.join("unet"));
    let te = sdxl.join("text_encoder/model.safetensors");
    rewrite(&fixture("sdxl-tiny/text_encoder/model.safetensors"), &te, |t| {
        let (_, e) = t
            .iter_mut()
            .find(|(k, _)| k.ends_with("final_layer_norm.bias") || k.ends_with("layers.0.mlp.fc1.bias"))
            .unwrap();
        let mut v: Vec<f32> = match e.dtype {
            safetensors::Dtype::F16 => {
                bytemuck::cast_slice::<u8, half::f16>(&e.data).iter().map(|x| x.to_f32()).collect()
            }
            _ => bytemuck::cast_slice(&e.data).to_vec(),
        };
        v[0] = f32::NAN;
        *e = hyperlora::files::output::RawTensor::f32(&e.shape.clone(), &v);
    });
    let m = hyperlora::sdxl::model::Sdxl::load(&sdxl, None, &Default::default()).unwrap();
    let e = match m.generate(&req, &mut |_, _| std::ops::ControlFlow::Continue(())) {
        Ok(_) => panic!("a NaN text encoder made an image"),
        Err(e) => e.to_string(),
    };
    // the error names the encoder whose weights are wrong
    assert!(e.contains("text_encoder") && e.contains("non-finite"), "{e}");
}

/// Stale temporary files of our own pattern (from a writer killed mid-write) are removed on the next write into
/// their folder once they are old; fresh ones (a live writer's) and other files are left alone. Long valid names
/// still write.
#[test]
fn stale_temporary_files_are_cleaned_and_long_names_write() {
    use hyperlora::files::output::{is_temp_name, write_file, STALE_TEMP};
    assert!(is_temp_name(".out.png.1234.0.tmp"));
    assert!(!is_temp_name(".out.png.tmp") && !is_temp_name("out.png.1.2.tmp") && !is_temp_name(".x.a.2.tmp"));
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".a.png.4242.7.tmp");
    let fresh = dir.path().join(".b.png.4243.0.tmp");
    let other = dir.path().join(".notes.tmp");
    for p in [&stale, &fresh, &other] {
        std::fs::write(p, b"half").unwrap();
    }
    let old = std::time::SystemTime::now() - STALE_TEMP - Duration::from_secs(60);
    for p in [&stale, &other] {
        std::fs::File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    }
    let long = dir.path().join(format!("{}.png", "n".repeat(246)));
    write_file(&long, b"data", false).unwrap();
    assert_eq!(std::fs::read(&long).unwrap(), b"data");
    assert!(!stale.exists(), "the stale temporary file is removed");
    assert!(fresh.exists() && other.exists(), "a live writer's file and other files stay");
}

/// `face_score` with a box that cannot be a face on the image: an error, not a score.
#[test]
fn face_score_refuses_impossible_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let (set, _) = hyperlora::synthetic::demo::ensure(&dir.path().join("demo")).unwrap();
    let mut s = hyperlora::session::Session::new(
        hyperlora::session::SessionOptions {
            paths: hyperlora::session::ModelPaths {
                sdxl: Some(set.sdxl),
                hyperlora: Some(set.hyperlora),
                clip: Some(set.clip),
                antelopev2: Some(set.antelopev2),
                ..Default::default()
            },
            device: Device::Cpu,
            dtype: DType::F32,
        },
        std::sync::Arc::new(|_: &hyperlora::session::Event| {}),
    );
    let spec = hyperlora::session::PhotoSpec::with_options(
        set.photo,
        hyperlora::face::analyser::FaceOptions {
            pick: hyperlora::face::analyser::FacePick::Box(hyperlora::synthetic::demo::PHOTO_FACE_BOX),
            ..Default::default()
        },
    );
    let id = s.identity(&[spec]).unwrap();
    let mut g = hyperlora::session::Generate::new("x");
    (g.width, g.height, g.steps) = (64, 64, 1);
    let img = s.generate(&g).unwrap();
    use hyperlora::face::analyser::FacePick::Box;
    for b in [[f64::NAN, 0.0, 10.0, 10.0], [40.0, 40.0, 10.0, 10.0], [0.0, 0.0, 1e9, 1e9], [500.0, 500.0, 600.0, 600.0]]
    {
        let e = s.face_score(&img, &id, Box(b)).unwrap_err().to_string();
        assert!(e.contains("not a face box"), "{b:?}: {e}");
    }
    let v = s.face_score(&img, &id, Box([10.0, 10.0, 50.0, 50.0])).unwrap();
    assert!(v.is_finite() && v.abs() <= 1.0 + 1e-6);
}

/// NaN inside an identity file or a features file is refused where it enters, naming the file.
#[test]
fn non_finite_identities_and_features_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = hyperlora::HyperLora::load(fixture("hyperlora-tiny"), &Default::default()).unwrap();
    let set = features(1);
    let good = dir.path().join("good.safetensors");
    h.identity(&set).unwrap().save(&good, false).unwrap();
    let bad = dir.path().join("nan.id.safetensors");
    let meta = hyperlora::weights::StFile::open(&good).unwrap().metadata();
    let raw = hyperlora::weights::StFile::open(&good).unwrap().to_f32_vec("raw").unwrap();
    let shape = hyperlora::weights::StFile::open(&good).unwrap().shape("raw").unwrap().to_vec();
    let mut v = raw.clone();
    v[17] = f32::NAN;
    let t = vec![("raw".to_string(), hyperlora::files::output::RawTensor::f32(&shape, &v))];
    std::fs::write(&bad, hyperlora::files::output::safetensors_bytes(&t, meta).unwrap()).unwrap();
    let e = hyperlora::Identity::load(&bad).unwrap_err().to_string();
    assert!(e.contains("nan.id.safetensors") && e.contains("NaN"), "{e}");

    let features = dir.path().join("nan.features.safetensors");
    let mut clip = load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n1")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    clip[5] = f32::INFINITY;
    let t = vec![
        (
            "arcface".to_string(),
            hyperlora::files::output::RawTensor::from_tensor(
                &load("hyperlora-tiny/inputs.safetensors", "arcface_n1"),
                DType::F32,
            )
            .unwrap(),
        ),
        ("clip".to_string(), hyperlora::files::output::RawTensor::f32(&[1, 257, 32], &clip)),
    ];
    std::fs::write(&features, hyperlora::files::output::safetensors_bytes(&t, Default::default()).unwrap()).unwrap();
    let e =
        hyperlora::encode::features::FeatureSet::load(&features).err().expect("a NaN features file loaded").to_string();
    assert!(e.contains("nan.features.safetensors") && e.contains("CLIP features"), "{e}");
}

/// A variant config whose heads × dim_head is zero or overflows: an error, not a panic.
#[test]
fn variant_attention_width_is_checked() {
    for (heads, dim_head) in [(0u64, 16u64), (4_611_686_018_427_387_904, 4)] {
        let d = copy_dir(&fixture("hyperlora-tiny"));
        let p = d.path().join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["resampler"]["heads"] = serde_json::json!(heads);
        v["resampler"]["dim_head"] = serde_json::json!(dim_head);
        std::fs::write(&p, v.to_string()).unwrap();
        let e = match hyperlora::HyperLora::load(d.path(), &Default::default()) {
            Ok(_) => panic!("heads {heads} × dim_head {dim_head} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&format!("heads {heads}")) && e.contains("resampler.safetensors"), "{e}");
    }
}

/// A box far larger than the photo (the polygon fill once spun over a billion rows for it, deaf to Ctrl-C): an
/// error at once; and the polygon fill only visits the image's rows.
#[test]
fn huge_face_boxes_are_refused_at_once() {
    use hyperlora::face::analyser::{Antelope, FaceOptions, FacePick};
    let dir = tempfile::tempdir().unwrap();
    let (set, _) = hyperlora::synthetic::demo::ensure(&dir.path().join("demo")).unwrap();
    let face = Antelope::load(&set.antelopev2).unwrap();
    let photo = hyperlora::pixels::photo::load_photo(&set.photo).unwrap();
    let t = Instant::now();
    let opts = FaceOptions { pick: FacePick::Box([0.0, 0.0, 100_000.0, 100_000.0]), ..Default::default() };
    let e = face.analyse(&photo, "astronaut.jpg", &opts).err().expect("a 100000² box was accepted").to_string();
    assert!(e.contains("more than 4×") && e.contains("astronaut.jpg"), "{e}");
    let pts = [[10.0, -1e9], [1e9, 1e9], [-1e9, 1e9]];
    let m = hyperlora::face::cutout::polygon_mask(64, 48, &pts);
    assert_eq!(m.width * m.height, 64 * 48);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// `bench limits` prints the chosen limits and the memory estimate the refusal uses, per size.
#[test]
fn bench_limits_prints_the_table() {
    let o = hyperlora(&["bench", "limits"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("| generation side | 8192 px |") && out.contains("| 1024² | 1 |"), "{out}");
    // the estimate grows with the size
    let gb = |row: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(row)).unwrap();
        line.split('|').nth(4).unwrap().trim().trim_end_matches(" GB").parse().unwrap()
    };
    assert!(gb("| 1024² | 1 |") < gb("| 2048² | 1 |") && gb("| 2048² | 1 |") < gb("| 8192² | 4 |"));
}
