//! A seeded, bounded randomised corruption of what users hand us — safetensors headers, model configs, identity
//! metadata, photos and scripts (a few hundred cases). Each case must end in a value or an error that names the
//! file (or, for scripts, a script error), never a panic; the script context is alive afterwards.
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

/// Run `f`; a panic is a failure, an error must mention `name`. Counts the errors in `errors`.
fn case(
    failures: &mut Vec<String>,
    errors: &mut usize,
    what: String,
    name: &str,
    f: impl FnOnce() -> Result<(), String>,
) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => failures.push(format!("{what}: PANIC")),
        Ok(Err(e)) => {
            *errors += 1;
            if !e.contains(name) {
                failures.push(format!("{what}: the error does not name {name}: {e}"));
            }
        }
        Ok(Ok(())) => {}
    }
}

fn odd_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    pick(
        rng,
        &[
            json!(0),
            json!(-1),
            json!(1),
            json!(3),
            json!(1e9),
            json!(1e300),
            json!(18446744073709551615u64),
            json!([]),
            json!([0]),
            json!([0, 0, 0]),
            json!([1e9]),
            json!("x"),
            json!(""),
            json!(null),
            json!(0.5),
            json!(-0.5),
            json!(true),
            json!({}),
        ],
    )
    .clone()
}

#[test]
fn randomised_corruption_never_panics() {
    let mut rng = Rng::new(2026);
    let mut failures = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    // per kind: (cases, errors) — each kind must both break things and leave some inputs usable or erroring
    let mut errors = 0;
    let mut kinds: Vec<(&str, usize, usize)> = Vec::new();
    let mark = |kinds: &mut Vec<(&'static str, usize, usize)>, kind: &'static str, n: usize, errors: usize| {
        let (n0, e0) = kinds.iter().fold((0, 0), |a, k| (a.0 + k.1, a.1 + k.2));
        kinds.push((kind, n - n0, errors - e0));
    };

    // 1. safetensors: bytes of the header flipped, its length field replaced, the file cut
    let src = std::fs::read(fixture("hyperlora-tiny/id_projector.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    for i in 0..80 {
        let mut b = src.clone();
        match i % 3 {
            0 => {
                for _ in 0..1 + rng.next_u64() % 4 {
                    let at = (rng.next_u64() % header as u64) as usize;
                    b[at] = rng.next_u64() as u8;
                }
            }
            1 => b[..8].copy_from_slice(&(rng.next_u64() % (4 * header as u64)).to_le_bytes()),
            _ => b.truncate((rng.next_u64() % src.len() as u64) as usize),
        }
        let p = tmp.path().join(format!("st{i}.safetensors"));
        std::fs::write(&p, &b).unwrap();
        n += 1;
        case(&mut failures, &mut errors, format!("safetensors case {i}"), &format!("st{i}.safetensors"), || {
            let f = hyperlora::weights::StFile::open(&p).map_err(|e| e.to_string())?;
            for k in f.keys() {
                f.tensor(&k, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }

    mark(&mut kinds, "safetensors", n, errors);
    // 2. model configs: one field set to an odd value, then the model built from it (the tiny weights)
    for (folder, count) in [("sdxl-tiny/unet", 50), ("sdxl-tiny/vae", 30), ("clip-vision-tiny", 30)] {
        let dir = tmp.path().join(folder.replace('/', "_"));
        copy_tree(&fixture(folder), &dir);
        let base: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        for _ in 0..count {
            let mut v = base.clone();
            let k = pick(&mut rng, &keys).clone();
            v[&k] = odd_value(&mut rng);
            std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
            n += 1;
            let d = dir.clone();
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            case(&mut failures, &mut errors, format!("{folder} config {k} = {}", v[&k]), &name, move || {
                let r = match folder {
                    "sdxl-tiny/unet" => hyperlora::sdxl::unet::load_unet(&d, DType::F32, &Device::Cpu).map(|_| ()),
                    "sdxl-tiny/vae" => hyperlora::sdxl::vae::load_vae(&d, DType::F32, &Device::Cpu).map(|_| ()),
                    _ => hyperlora::vision::clip::load_clip_vision(&d, DType::F32, &Device::Cpu).map(|_| ()),
                };
                r.map_err(|e| e.to_string())
            });
        }
    }
    let sched = tmp.path().join("scheduler_config.json");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/scheduler/scheduler_config.json")).unwrap())
            .unwrap();
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    for i in 0..40 {
        let mut v = base.clone();
        let k = pick(&mut rng, &keys).clone();
        v[&k] = odd_value(&mut rng);
        std::fs::write(&sched, v.to_string()).unwrap();
        n += 1;
        case(
            &mut failures,
            &mut errors,
            format!("scheduler case {i}: {k} = {}", v[&k]),
            "scheduler_config.json",
            || {
                use hyperlora::sdxl::scheduler::{Sampler, SamplerKind, SchedulerConfig};
                let c = SchedulerConfig::load(&sched).map_err(|e| e.to_string())?;
                for kind in [SamplerKind::Euler, SamplerKind::EulerA, SamplerKind::Ddim, SamplerKind::DpmPp2mKarras] {
                    let s = Sampler::new(kind, &c, 20).map_err(|e| e.to_string())?;
                    assert!(s.timesteps().iter().all(|t| t.is_finite()));
                }
                Ok(())
            },
        );
    }

    mark(&mut kinds, "configs", n, errors);
    // 3. identity files: one metadata value replaced by an odd string
    let h = hyperlora::HyperLora::load(fixture("hyperlora-tiny"), &Default::default()).unwrap();
    let set = features(1);
    let good = tmp.path().join("good.id.safetensors");
    h.identity(&set).unwrap().save(&good, false).unwrap();
    let f = hyperlora::weights::StFile::open(&good).unwrap();
    let meta = f.metadata();
    let meta_keys: Vec<String> = meta.keys().cloned().collect();
    let raw = f.tensor("raw", DType::F32, &Device::Cpu).unwrap();
    let odd_strings = ["", "é", "ünïcödé-hash-ü", "18446744073709551616", "-1", "NaN", "[", "{}", "\0", "1e999"];
    for i in 0..40 {
        let mut m = meta.clone();
        let k = pick(&mut rng, &meta_keys).clone();
        m.insert(k.clone(), pick(&mut rng, &odd_strings).to_string());
        let p = tmp.path().join(format!("id{i}.safetensors"));
        let t = vec![("raw".to_string(), hyperlora::files::output::RawTensor::from_tensor(&raw, DType::F32).unwrap())];
        std::fs::write(&p, hyperlora::files::output::safetensors_bytes(&t, m).unwrap()).unwrap();
        n += 1;
        case(&mut failures, &mut errors, format!("identity case {i}: {k}"), &format!("id{i}.safetensors"), || {
            let id = hyperlora::Identity::load(&p).map_err(|e| e.to_string())?;
            let _ = (id.summary(), id.short_hash(), crate::common::describe_sources(&id));
            h.check_identity(&id).map_err(|e| e.to_string())
        });
    }

    mark(&mut kinds, "identities", n, errors);
    // 4. photos: a PNG and a JPEG cut short or with bytes flipped
    let mut png = Vec::new();
    {
        let rgb: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect();
        png.extend(hyperlora::files::png_meta::encode_png(&rgb, 64, 48, &[("k".into(), "v".into())]).unwrap());
    }
    let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/astronaut.jpg")).unwrap();
    for i in 0..60 {
        let (src, ext) = if i % 2 == 0 { (&png, "png") } else { (&jpeg, "jpg") };
        let mut b = src.clone();
        if rng.uniform() < 0.5 {
            b.truncate((rng.next_u64() % b.len() as u64) as usize);
        } else {
            for _ in 0..1 + rng.next_u64() % 8 {
                let at = (rng.next_u64() % b.len().min(4096) as u64) as usize;
                b[at] = rng.next_u64() as u8;
            }
        }
        let p = tmp.path().join(format!("photo{i}.{ext}"));
        std::fs::write(&p, &b).unwrap();
        n += 1;
        case(&mut failures, &mut errors, format!("photo case {i}"), &format!("photo{i}.{ext}"), || {
            hyperlora::pixels::photo::load_photo(&p).map(|_| ()).map_err(|e| e.to_string())?;
            if ext == "png" {
                hyperlora::files::png_meta::read_png_text(&p).map(|_| ()).map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }

    mark(&mut kinds, "photos", n, errors);
    // 5. scripts: token soup from the API's own words; afterwards the context still evaluates
    let words = [
        "identity(",
        "lora(",
        "mix(",
        "generate(",
        "grid(",
        "pca(",
        "coeffs(",
        "walk(",
        "shard(",
        "pending(",
        "save(",
        "refine_face(",
        "plot(",
        ")",
        "(",
        "[",
        "]",
        "#{",
        "}",
        ",",
        ";",
        "0.0/0.0",
        "1e308*10.0",
        "-5",
        "\"x\"",
        "\"\"",
        "let a =",
        "a",
        "a.coeffs",
        "a[99999999]",
        "+",
        "*",
        "-",
        "fn f(x) { f(x) }",
        "f(1)",
        "loop {",
        "break;",
        "box:",
        "face:",
        "0",
        "1",
        "[1,2,3]",
        "#{ path: \"nope.png\" }",
        "\"é\u{0}\"",
    ];
    let session = hyperlora::session::Session::new(
        hyperlora::session::SessionOptions { paths: Default::default(), device: Device::Cpu, dtype: DType::F32 },
        std::sync::Arc::new(|_: &hyperlora::session::Event| {}),
    );
    let limits = hyperlora::script::Limits { max_operations: 200_000, ..Default::default() };
    let mut script = hyperlora::script::Script::new(
        std::sync::Arc::new(std::sync::Mutex::new(session)),
        std::sync::Arc::new(|_| {}),
        limits,
    );
    for i in 0..60 {
        let len = 1 + rng.next_u64() % 12;
        let code: Vec<&str> = (0..len).map(|_| *pick(&mut rng, &words)).collect();
        let code = code.join(" ");
        n += 1;
        if catch_unwind(AssertUnwindSafe(|| {
            let _ = script.eval(&code);
        }))
        .is_err()
        {
            failures.push(format!("script case {i}: PANIC on {code:?}"));
        }
    }
    assert_eq!(script.eval("1 + 1").unwrap().as_int().unwrap(), 2, "the script context is alive");

    assert!(n >= 300, "{n} cases");
    eprintln!("bad inputs (kind, cases, errors): {kinds:?}");
    for (kind, cases, errs) in &kinds {
        assert!(*errs > 0, "{kind}: none of {cases} corrupted inputs was refused — the corruption did not bite");
    }
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// Second-round hardening causes, each on the path a user takes: a landmark model in the recognizer's place is
/// refused at load (output width), a history that is a device is not read, a library index whose entry points
/// outside the library is refused (and nothing outside is deleted), an f16 export that would overflow is refused
/// with nothing written, a missing --sdxl-config folder is an error, absurd --batch and bench sizes are refused
/// before anything is built, and pca with k > n is an error.
#[test]
fn second_round_causes_stay_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"));
        c.args(args).env("HYPERLORA_DEMO_DIR", crate::common::demo_dir());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    // a landmark model (212 outputs) named glintr100.onnx
    let raw = hyperlora::synthetic::onnx::mean_face_106();
    let lm = tmp.path().join("glintr100.onnx");
    std::fs::write(&lm, hyperlora::synthetic::onnx::landmark_106(&raw, &[0.0; 212]).unwrap()).unwrap();
    let e = hyperlora::face::onnx::ArcFace::load(&lm).err().expect("a landmark model loaded as a recognizer");
    assert!(e.to_string().contains("glintr100.onnx") && e.to_string().contains("512"), "{e}");
    // HYPERLORA_HISTORY=/dev/zero: the REPL starts, reads nothing, runs the line
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["repl", "--demo"])
        .env("HYPERLORA_DEMO_DIR", crate::common::demo_dir())
        .env("HYPERLORA_HISTORY", "/dev/zero")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"40000 + 3\n:quit\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("40003"), "{}", err(&o));
    assert!(err(&o).contains("/dev/zero") && err(&o).contains("not a regular file"), "{}", err(&o));
    // a library whose index points outside it
    let lib = tmp.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let index = serde_json::json!({
        "format": "hyperlora.library", "version": 1, "variant": null,
        "entries": { "x": { "file": "../victim.txt", "hash": "0", "photos": 1, "sources": [],
            "variant": { "hash": "0", "label": "v" }, "saved": 0, "dtype": "f32" } }
    });
    std::fs::write(lib.join("index.json"), index.to_string()).unwrap();
    let o = cli(&["library", "rm", lib.to_str().unwrap(), "x"], &[]);
    assert!(!o.status.success() && err(&o).contains("index.json") && err(&o).contains("../victim.txt"), "{}", err(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me", "a file outside the library was touched");
    // an export whose f16 values overflow: refused, nothing written
    let (mut s, id) = {
        let mut s = hyperlora::front::args::quiet_session(hyperlora::session::ModelPaths {
            hyperlora: Some(fixture("hyperlora-tiny")),
            ..Default::default()
        });
        let id = s
            .identity_from_features(&hyperlora::synthetic::hyper::random_features(1, 512, 257, 32, 3).unwrap())
            .unwrap();
        (s, id)
    };
    let out = tmp.path().join("huge.safetensors");
    let e = s.export_lora(&hyperlora::LoraMix::lora(&id, 1e6), &out, DType::F16, false).unwrap_err().to_string();
    assert!(e.contains("F16") && e.contains("f32") && !out.exists(), "{e}");
    s.export_lora(&hyperlora::LoraMix::lora(&id, 1e6), &out, DType::F32, false).unwrap();
    // flags: a configs folder that is not there, an absurd batch, an impossible bench size
    let o = cli(&["doctor", "--sdxl-config", tmp.path().join("nope").to_str().unwrap()], &[]);
    assert!(!o.status.success() && err(&o).contains("nope") && err(&o).contains("not a folder"), "{}", err(&o));
    let o = cli(
        &["generate", "--demo", "--prompt", "x", "--batch", "18446744073709551615", "--out", "/tmp/never.png"],
        &[],
    );
    assert!(!o.status.success() && err(&o).contains("--batch"), "{}", err(&o));
    for size in ["0", "7", "1000000"] {
        let o = cli(&["bench", "sdxl", "--size", size, "--steps", "1"], &[]);
        assert!(!o.status.success() && err(&o).contains("--size"), "--size {size}: {}", err(&o));
    }
    // imports: a file that imports itself, a cycle through two files, a FIFO — errors, not a stack overflow or a hang
    let d = tmp.path().join("imports");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("self.rhai"), "import \"self\";\n").unwrap();
    std::fs::write(d.join("a.rhai"), "import \"b\";\n").unwrap();
    std::fs::write(d.join("b.rhai"), "import \"a\";\n").unwrap();
    assert!(std::process::Command::new("mkfifo").arg(d.join("fifo.rhai")).status().unwrap().success());
    std::fs::write(d.join("f.rhai"), "import \"fifo\";\n").unwrap();
    // the documented map limit (100,000 entries) holds for `m[k] = v` too
    std::fs::write(d.join("map.rhai"), "let m = #{}; for i in 0..100001 { m[`k${i}`] = i; }\nprint(m.len());\n")
        .unwrap();
    for (file, want) in [
        ("self.rhai", "import cycle"),
        ("a.rhai", "import cycle"),
        ("f.rhai", "not a regular file"),
        ("map.rhai", "over the limit of 100000"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .arg("run")
            .arg(file)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(!o.status.success() && err(&o).contains(want), "{file}: {}", err(&o));
    }
    // nesting is bounded (1,000 levels), so `a = [a]` 100,000 times is an error at level 1,001, not minutes of
    // Rhai's whole-value size checks; a value 900 deep prints (the command's thread has the stack for it)
    std::fs::write(d.join("nest.rhai"), "let a = []; for i in 0..100000 { a = [a]; }\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .arg("run")
        .arg("nest.rhai")
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(!o.status.success() && err(&o).contains("nested more than 1000 levels"), "{}", err(&o));
    std::fs::write(d.join("deep.rhai"), "let a = []; for i in 0..900 { a = [a]; } print(a); print(\"done\");\n")
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .arg("run")
        .arg("deep.rhai")
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with("done\n"), "{}", err(&o));
    // config values that would drive an allocation or break the maths: refused at load, naming the file
    let cfgs = tmp.path().join("cfgs");
    std::fs::create_dir(&cfgs).unwrap();
    let edit = |sub: &str, key: &str, v: serde_json::Value| {
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("sdxl-tiny/{sub}/config.json"))).unwrap())
                .unwrap();
        j[key] = v;
        let p = cfgs.join(format!("{sub}-{key}.json"));
        std::fs::write(&p, j.to_string()).unwrap();
        p
    };
    for (key, v) in [
        ("addition_time_embed_dim", serde_json::json!(1e12 as u64)),
        ("addition_time_embed_dim", serde_json::json!(0)),
        ("cross_attention_dim", serde_json::json!(1u64 << 40)),
        ("norm_eps", serde_json::json!(1.5)),
    ] {
        let p = edit("unet", key, v);
        let e = hyperlora::sdxl::unet::UNetConfig::load(&p).err().unwrap_or_else(|| panic!("unet {key} accepted"));
        assert!(e.to_string().contains(p.file_name().unwrap().to_str().unwrap()) && e.to_string().contains(key), "{e}");
    }
    let p = edit("vae", "scaling_factor", serde_json::json!(1e12));
    let e = hyperlora::sdxl::vae::VaeConfig::load(&p).expect_err("scaling_factor 1e12 accepted").to_string();
    assert!(e.contains("scaling_factor"), "{e}");
    for (key, v) in [("eos_token_id", serde_json::json!(1_000_000)), ("layer_norm_eps", serde_json::json!(1.0))] {
        let p = edit("text_encoder", key, v);
        let e = hyperlora::sdxl::text::ClipTextConfig::load(&p).err().unwrap_or_else(|| panic!("{key} accepted"));
        assert!(e.to_string().contains(key), "{e}");
    }
    // a FIFO in place of a file the program reads: an error naming it, never a hang
    let finish = |mut c: std::process::Child| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if c.try_wait().unwrap().is_some() {
                return c.wait_with_output().unwrap();
            }
            if std::time::Instant::now() > end {
                let _ = c.kill();
                panic!("blocked on a FIFO for 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let sdxl = tmp.path().join("sdxl-fifo");
    copy_tree(&fixture("sdxl-tiny"), &sdxl);
    for f in ["unet/config.json", "model_index.json", "tokenizer/vocab.json"] {
        let p = sdxl.join(f);
        let _ = std::fs::remove_file(&p);
        assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
    }
    let o = finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .args(["generate", "--model", sdxl.to_str().unwrap(), "--prompt", "x", "--steps", "1", "--out"])
            .arg(tmp.path().join("fifo.png"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(!o.status.success() && err(&o).contains("not a regular file"), "{}", err(&o));
    let cfg = tmp.path().join("config-fifo.toml");
    assert!(std::process::Command::new("mkfifo").arg(&cfg).status().unwrap().success());
    let o = finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .arg("doctor")
            .env("HYPERLORA_CONFIG", &cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(!o.status.success() && err(&o).contains("config-fifo.toml"), "{}", err(&o));
    // a VAE whose weights are all zero: refused at load, naming the file (it would make flat grey images)
    let vae = tmp.path().join("zero-vae");
    copy_tree(&fixture("sdxl-tiny/vae"), &vae);
    let w = hyperlora::weights::StFile::open(vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    let zeroed: Vec<(String, hyperlora::files::output::RawTensor)> = w
        .keys()
        .into_iter()
        .map(|k| {
            let t = w.tensor(&k, DType::F32, &Device::Cpu).unwrap().zeros_like().unwrap();
            (k, hyperlora::files::output::RawTensor::from_tensor(&t, DType::F32).unwrap())
        })
        .collect();
    drop(w);
    std::fs::write(
        vae.join("diffusion_pytorch_model.safetensors"),
        hyperlora::files::output::safetensors_bytes(&zeroed, Default::default()).unwrap(),
    )
    .unwrap();
    let e = hyperlora::sdxl::vae::load_vae(&vae, DType::F32, &Device::Cpu)
        .err()
        .expect("an all-zero VAE loaded")
        .to_string();
    assert!(e.contains("diffusion_pytorch_model.safetensors") && e.contains("zero"), "{e}");
    // a JPEG whose header claims 4096² over the demo photo's 512² of scan data (within the size limit): refused,
    // where the decoder would fill the missing blocks and hand back a flat image
    let mut jpeg = hyperlora::synthetic::demo::PHOTO.to_vec();
    let sof = (0..jpeg.len() - 1).find(|&i| jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0x10, 0, 0x10, 0]);
    let patched = tmp.path().join("claims-4096.jpg");
    std::fs::write(&patched, &jpeg).unwrap();
    let e = hyperlora::pixels::photo::load_photo(&patched).expect_err("a patched JPEG header accepted").to_string();
    assert!(e.contains("claims-4096.jpg") && e.contains("shorter than its header"), "{e}");
    // a landmark model whose weights hold NaN: the error names the model, not the box
    let demo = hyperlora::synthetic::demo::DemoSet::in_dir(&crate::common::demo_dir());
    let ant = tmp.path().join("antelopev2-nan");
    crate::common::copy_tree(&demo.antelopev2, &ant);
    let raw = hyperlora::synthetic::onnx::mean_face_106();
    let gains = vec![f32::NAN; 212];
    std::fs::write(ant.join("2d106det.onnx"), hyperlora::synthetic::onnx::landmark_106(&raw, &gains).unwrap()).unwrap();
    let face = hyperlora::face::analyser::Antelope::load(&ant).unwrap();
    let img = hyperlora::pixels::photo::load_photo(&demo.photo).unwrap();
    let opts = hyperlora::face::analyser::FaceOptions {
        pick: hyperlora::face::analyser::FacePick::Box(hyperlora::synthetic::demo::PHOTO_FACE_BOX),
        ..Default::default()
    };
    let e = face.analyse(&img, "astronaut.jpg", &opts).err().expect("NaN landmarks accepted").to_string();
    assert!(e.contains("2d106det.onnx") && e.contains("damaged") && !e.contains("wrong box"), "{e}");
    // NaN in the second text encoder's weights: the error names that encoder's folder
    let sd = tmp.path().join("sdxl-nan");
    crate::common::copy_tree(&demo.sdxl, &sd);
    let te2 = sd.join("text_encoder_2/model.safetensors");
    crate::common::rewrite(&demo.sdxl.join("text_encoder_2/model.safetensors"), &te2, |entries| {
        let (_, t) = entries.iter_mut().find(|(k, _)| k.contains("final_layer_norm.weight")).unwrap();
        t.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let o = cli(
        &["generate", "--model", sd.to_str().unwrap(), "--prompt", "x", "--steps", "1", "--out", "/tmp/never.png"],
        &[],
    );
    assert!(!o.status.success() && err(&o).contains("text_encoder_2") && err(&o).contains("non-finite"), "{}", err(&o));
    // a zTXt "bomb" (20 MB of text in a few KB): the text is dropped, not copied into what is saved
    let bomb = tmp.path().join("bomb.png");
    {
        let f = std::fs::File::create(&bomb).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 8, 8);
        enc.set_color(png::ColorType::Rgb);
        enc.add_ztxt_chunk("prompt".into(), "a".repeat(20 << 20)).unwrap();
        enc.write_header().unwrap().write_image_data(&[90u8; 8 * 8 * 3]).unwrap();
    }
    assert!(std::fs::metadata(&bomb).unwrap().len() < 200_000);
    let (_, _, _, text) = hyperlora::files::png_meta::read_png(&bomb).unwrap();
    let total: usize = text.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(total < 4096 && text.iter().any(|(_, v)| v.contains("dropped")), "{total} bytes of text kept");
    // HYPERLORA_SHARDS and --shards that disagree are named (clap would let the flag win silently)
    let o = cli(
        &["run", "--shards", "5", "--preview", "never", d.join("deep.rhai").to_str().unwrap()],
        &[("HYPERLORA_SHARDS", "4")],
    );
    assert!(
        !o.status.success() && err(&o).contains("HYPERLORA_SHARDS=4") && err(&o).contains("--shards 5"),
        "{}",
        err(&o)
    );
    // one NaN in the bases: the variant is refused at load, naming the tensor (before any LoRA is made from it)
    let variant = tmp.path().join("nan-variant");
    copy_tree(&fixture("hyperlora-tiny"), &variant);
    let bases = variant.join("hyper_lora_modules.safetensors");
    let f = hyperlora::weights::StFile::read(&bases).unwrap();
    let keys: Vec<String> = f.keys().into_iter().collect();
    let poisoned = keys[0].clone();
    let tensors: Vec<(String, hyperlora::files::output::RawTensor)> = keys
        .iter()
        .map(|k| {
            let dt = if f.dtype(k) == Some(safetensors::Dtype::F16) { DType::F16 } else { DType::F32 };
            let mut v = f.to_f32_vec(k).unwrap();
            if *k == poisoned {
                v[0] = f32::NAN;
            }
            let t = candle_core::Tensor::from_vec(v, f.shape(k).unwrap(), &Device::Cpu).unwrap();
            (k.clone(), hyperlora::files::output::RawTensor::from_tensor(&t, dt).unwrap())
        })
        .collect();
    drop(f);
    std::fs::write(&bases, hyperlora::files::output::safetensors_bytes(&tensors, Default::default()).unwrap()).unwrap();
    let e = hyperlora::HyperLora::load(&variant, &Default::default()).err().expect("NaN bases loaded").to_string();
    assert!(e.contains("hyper_lora_modules.safetensors") && e.contains(&poisoned) && e.contains("NaN"), "{e}");
    // a bool tensor among the bases: doctor says BAD with the loader's words (file and tensor), as loading does
    let variant = tmp.path().join("bool-variant");
    copy_tree(&fixture("hyperlora-tiny"), &variant);
    let bases = variant.join("hyper_lora_modules.safetensors");
    let f = hyperlora::weights::StFile::read(&bases).unwrap();
    let keys: Vec<String> = f.keys().into_iter().collect();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let shape = f.shape(k).unwrap().to_vec();
            match i {
                0 => (k.clone(), safetensors::Dtype::BOOL, shape.clone(), vec![0u8; shape.iter().product()]),
                _ => (k.clone(), f.dtype(k).unwrap(), shape, f.raw(k).unwrap().to_vec()),
            }
        })
        .collect();
    drop(f);
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, dt, shape, data)| {
            (k.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::write(&bases, safetensors::serialize(views, None).unwrap()).unwrap();
    let load =
        hyperlora::HyperLora::load(&variant, &Default::default()).err().expect("a BOOL basis loaded").to_string();
    let c =
        hyperlora::models::doctor(&hyperlora::session::ModelPaths { hyperlora: Some(variant), ..Default::default() });
    let h = c.iter().find(|c| c.component == "hyperlora").unwrap();
    assert!(h.status == hyperlora::models::Status::Bad, "doctor says ok where loading refuses: {load}");
    assert!(
        h.detail.contains(&keys[0]) && h.detail.contains("BOOL") && load.contains(&keys[0]),
        "{} / {load}",
        h.detail
    );
    // pca: more directions than identities
    let ids: Vec<hyperlora::Identity> = (0..3)
        .map(|i| {
            s.identity_from_features(&hyperlora::synthetic::hyper::random_features(1, 512, 257, 32, 20 + i).unwrap())
                .unwrap()
        })
        .collect();
    let e = s.pca(&ids, 9).err().expect("k > n accepted").to_string();
    assert!(e.contains("k = 9") && e.contains("3 identities"), "{e}");
}

/// `doctor` runs the loaders' own strict checks on headers alone: wherever loading the SDXL folder refuses a file
/// (a UNet without `conv_in.weight`, a text encoder with a mis-shaped or extra tensor, an empty VAE file), doctor
/// says BAD with the same message, and it says ok where loading succeeds.
#[test]
fn doctor_refuses_what_the_sdxl_loader_refuses() {
    use hyperlora::sdxl::model::{Sdxl, SdxlOptions};
    let opts = SdxlOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        vae_dtype: candle_core::DType::F32,
    };
    type Edit = Box<dyn Fn(&std::path::Path)>;
    type Entries = Vec<(String, hyperlora::files::output::RawTensor)>;
    // the copy's `file`, rewritten from the fixture's with `edit` applied to its tensors
    let edited = |file: &'static str, edit: Box<dyn Fn(&mut Entries)>| -> Edit {
        Box::new(move |d: &std::path::Path| {
            crate::common::rewrite(&crate::common::fixture("sdxl-tiny").join(file), &d.join(file), |e| edit(e))
        })
    };
    let cases: Vec<(&str, Edit)> = vec![
        ("intact", Box::new(|_: &std::path::Path| {})),
        (
            "no conv_in",
            edited(
                "unet/diffusion_pytorch_model.safetensors",
                Box::new(|e: &mut Entries| e.retain(|(k, _)| k != "conv_in.weight")),
            ),
        ),
        (
            "mis-shaped text encoder",
            edited(
                "text_encoder/model.safetensors",
                Box::new(|e: &mut Entries| {
                    let (_, t) = e.iter_mut().find(|(k, _)| k.ends_with("final_layer_norm.weight")).unwrap();
                    let n = t.shape[0] - 1;
                    t.shape = vec![n];
                    t.data.truncate(n * 4);
                }),
            ),
        ),
        (
            "extra tensor",
            edited(
                "text_encoder_2/model.safetensors",
                Box::new(|e: &mut Entries| {
                    let stray = hyperlora::files::output::RawTensor::f32(&[2], &[1.0, 2.0]);
                    e.push(("text_model.stray.weight".into(), stray));
                }),
            ),
        ),
        (
            "empty VAE",
            Box::new(|d: &std::path::Path| {
                std::fs::write(d.join("vae/diffusion_pytorch_model.safetensors"), b"").unwrap();
            }),
        ),
    ];
    let cases: Vec<(&str, &dyn Fn(&std::path::Path))> = cases.iter().map(|(n, e)| (*n, e.as_ref())).collect();
    doctor_agrees_with_the_loader(
        &crate::common::fixture("sdxl-tiny"),
        &cases,
        "sdxl",
        |dir| hyperlora::session::ModelPaths { sdxl: Some(dir), ..Default::default() },
        |dir| Sdxl::load(dir, None, &opts).err().map(|e| e.to_string()),
    );
}

/// For each (name, edit) of a copy of `src`: where `load` refuses the edited copy, `doctor` on it (its `component`
/// line) says BAD with the loader's message; where it loads — the "intact" case alone — doctor says ok.
fn doctor_agrees_with_the_loader(
    src: &std::path::Path,
    cases: &[(&str, &dyn Fn(&std::path::Path))],
    component: &str,
    paths: impl Fn(std::path::PathBuf) -> hyperlora::session::ModelPaths,
    load: impl Fn(&std::path::Path) -> Option<String>,
) {
    let t = tempfile::tempdir().unwrap();
    for (name, edit) in cases {
        let dir = t.path().join(name.replace(' ', "-"));
        crate::common::copy_tree(src, &dir);
        edit(&dir);
        let load = load(&dir);
        let c = hyperlora::models::doctor(&paths(dir.clone()));
        let s = c.iter().find(|c| c.component == component).unwrap();
        match load {
            None => assert!(
                *name == "intact" && s.status == hyperlora::models::Status::Ok,
                "{name}: loads, doctor says {s:?}"
            ),
            Some(e) => {
                assert!(*name != "intact", "the intact copy did not load: {e}");
                assert!(
                    s.status == hyperlora::models::Status::Bad && s.detail.contains(&e),
                    "{name}: the loader says {e}; doctor {s:?}"
                );
            }
        }
    }
}

/// The same for a HyperLoRA variant: a resampler without one of its tensors, or a NaN in the bases, is BAD in
/// `doctor` with the loader's message (doctor said ok to both before it ran the loader).
#[test]
fn doctor_refuses_what_the_hyperlora_loader_refuses() {
    use hyperlora::hyper::{HyperLora, LoadOptions};
    let src = crate::common::fixture("hyperlora-tiny");
    let drop_norm = |d: &std::path::Path| {
        crate::common::rewrite(&src.join("resampler.safetensors"), &d.join("resampler.safetensors"), |e| {
            e.retain(|(k, _)| k != "layers.0.norm_ff.bias")
        })
    };
    let nan_basis = |d: &std::path::Path| {
        crate::common::rewrite(
            &src.join("hyper_lora_modules.safetensors"),
            &d.join("hyper_lora_modules.safetensors"),
            |e| {
                let (_, t) = e.iter_mut().find(|(k, _)| k.ends_with("to_v.id_up_basis")).unwrap();
                match t.dtype {
                    safetensors::Dtype::F16 => t.data[..2].copy_from_slice(&half::f16::NAN.to_le_bytes()),
                    _ => t.data[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
                }
            },
        )
    };
    let cases: [(&str, &dyn Fn(&std::path::Path)); 3] =
        [("intact", &|_| {}), ("no norm_ff.bias", &drop_norm), ("NaN basis", &nan_basis)];
    doctor_agrees_with_the_loader(
        &src,
        &cases,
        "hyperlora",
        |dir| hyperlora::session::ModelPaths { hyperlora: Some(dir), ..Default::default() },
        |dir| HyperLora::load(dir, &LoadOptions::default()).err().map(|e| e.to_string()),
    );
}
