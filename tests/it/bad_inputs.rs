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
