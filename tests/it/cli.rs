//! The `hyperlora` binary: identity → export-lora on the tiny fixture, one-line errors, no overwrites.
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::encode::features::FeatureSet;
use hyperlora::weights::StFile;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One features file per photo row, so the CLI must fuse across files.
fn features(dir: &Path) -> Vec<std::path::PathBuf> {
    let a = load("hyperlora-tiny/inputs.safetensors", "arcface_n3");
    let c = load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n3");
    [(0, 2), (2, 1)]
        .iter()
        .map(|&(start, len)| {
            let p = dir.join(format!("f{start}.safetensors"));
            FeatureSet::new(a.narrow(0, start, len).unwrap(), c.narrow(0, start, len).unwrap(), None, vec![])
                .unwrap()
                .save(&p, false)
                .unwrap();
            p
        })
        .collect()
}

#[test]
fn identity_then_export_matches_the_reference_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let f = features(tmp.path());
    let hl = fixture("hyperlora-tiny");
    let id = tmp.path().join("me.id.safetensors");
    let o = hyperlora(&[
        "identity",
        "--hyperlora",
        s(&hl),
        "--features",
        s(&f[0]),
        "--features",
        s(&f[1]),
        "--out",
        s(&id),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 photos"));
    let lora = tmp.path().join("me.lora.safetensors");
    let o = hyperlora(&[
        "export-lora",
        "--hyperlora",
        s(&hl),
        s(&id),
        "--weight",
        "1",
        "--dtype",
        "f32",
        "--out",
        s(&lora),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = StFile::open(&lora).unwrap();
    let want = StFile::open(fixture("hyperlora-tiny/lora_n3.safetensors")).unwrap();
    assert_eq!(got.keys(), want.keys());
    for k in want.keys() {
        let g = got.tensor(&k, DType::F32, &Device::Cpu).unwrap();
        assert_max_abs(&k, &g, &want.tensor(&k, DType::F32, &Device::Cpu).unwrap(), 1e-4);
    }
    let meta = got.metadata();
    assert_eq!(meta.get("modelspec.trigger_phrase").map(String::as_str), Some("fcsks fxhks fhyks"));
    assert_eq!(meta.get("ss_network_dim").map(String::as_str), Some("4"));
    assert_eq!(meta.get("ss_network_alpha").map(String::as_str), Some("2"));
    assert_eq!(meta.get("ss_network_module").map(String::as_str), Some("networks.lora"));
    // the file names the identity it was made from
    assert_eq!(meta.get("hyperlora.identities"), Some(&hyperlora::Identity::load(&id).unwrap().hash()));

    // default dtype is f16; negative weights are accepted
    let l16 = tmp.path().join("neg.safetensors");
    let o = hyperlora(&["export-lora", "--hyperlora", s(&hl), s(&id), "--weight", "-0.7", "--out", s(&l16)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        StFile::open(&l16)
            .unwrap()
            .dtype("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"),
        Some(safetensors::Dtype::F16)
    );

    // existing outputs are refused and left untouched, unless --force
    let before = std::fs::read(&lora).unwrap();
    let o = hyperlora(&["export-lora", "--hyperlora", s(&hl), s(&id), "--weight", "0.5", "--out", s(&lora)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&lora).unwrap(), before);
    let o = hyperlora(&["export-lora", "--hyperlora", s(&hl), s(&id), "--weight", "0.5", "--out", s(&lora), "--force"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(&lora).unwrap(), before);
    let o = hyperlora(&["identity", "--hyperlora", s(&hl), "--features", s(&f[0]), "--out", s(&id)]);
    assert!(!o.status.success());
}

#[test]
fn bad_inputs_exit_nonzero_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = features(tmp.path());
    let id = tmp.path().join("id.safetensors");
    // a truncated weights file
    let broken = copy_dir(&fixture("hyperlora-tiny"));
    let p = broken.path().join("resampler.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..1000]).unwrap();
    let o = hyperlora(&["identity", "--hyperlora", s(broken.path()), "--features", s(&f[0]), "--out", s(&id)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("resampler.safetensors"), "{err}");
    assert!(!id.exists(), "nothing is written on failure");

    // an identity from another variant
    let o =
        hyperlora(&["identity", "--hyperlora", s(&fixture("hyperlora-tiny")), "--features", s(&f[0]), "--out", s(&id)]);
    assert!(o.status.success());
    let out = tmp.path().join("x.safetensors");
    let o = hyperlora(&["export-lora", "--hyperlora", s(&fixture("hyperlora-tiny-base")), s(&id), "--out", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("variant") && err.contains("hyperlora-tiny-base"), "{err}");
    assert!(!out.exists());

    // a features file that is not one
    let o = hyperlora(&[
        "identity",
        "--hyperlora",
        s(&fixture("hyperlora-tiny")),
        "--features",
        s(&fixture("hyperlora-tiny/lora_n1.safetensors")),
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing tensor `arcface`"));
}

/// An executable `python` in `dir` that writes its arguments, then what it reads on stdin, to `dir/seen`, and then
/// runs `then` (shell lines: what it prints, how it exits).
fn stand_in_python(dir: &Path, then: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (py, seen) = (dir.join("python"), dir.join("seen"));
    let script = format!("#!/bin/sh\necho \"$@\" > '{}'\ncat >> '{}'\n{then}\n", s(&seen), s(&seen));
    std::fs::write(&py, script).unwrap();
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    (py, seen)
}

/// `bench sdxl --profile --diffusers PY` on the tiny model: a row per block kind whose times add up to no more than
/// the profiled step, and the ratio against what the Python printed. The Python here is a stand-in that records
/// what it was handed (the comparison script on stdin, our settings as arguments) and prints a result line.
#[test]
fn bench_sdxl_profiles_and_compares_with_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let result =
        r#"{"tool": "diffusers", "diffusers": "0.0-test", "torch": "0-test", "device": "cpu (test)", "total_s": 0.5}"#;
    let (py, seen) = stand_in_python(dir.path(), &format!("echo 'a log line'\necho '{result}'"));
    let model = fixture("sdxl-tiny");
    let args = ["bench", "sdxl", "--model", s(&model), "--size", "64", "--steps", "2", "--repeat", "1", "--profile"];
    let o = hyperlora(&[&args[..], &["--diffusers", s(&py)]].concat());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{out}", String::from_utf8_lossy(&o.stderr));
    // the stand-in got our settings and the script
    let seen = std::fs::read_to_string(&seen).unwrap();
    let first = seen.lines().next().unwrap();
    let unet_config = model.join("unet").join("config.json");
    for want in ["- --device cpu --dtype fp32 --size 64 --steps 2 --cfg 5 --threads ", s(&unet_config)] {
        assert!(first.contains(want), "{want:?} not in {first:?}");
    }
    assert!(seen.contains("DPMSolverMultistepScheduler(") && seen.contains("use_karras_sigmas=True"), "{seen}");
    // ms in a table row that starts with `row`
    let ms = |row: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?} in\n{out}"));
        line.split('|').nth(2).unwrap().trim().trim_end_matches(" ms").parse().unwrap()
    };
    let ours = ms("| 2 steps, 64², CFG 5 (UNet batch 2) |");
    assert!(ms("| diffusers 0.0-test (torch 0-test), same shapes and settings |") == 500.0, "{out}");
    let ratio_line = out.lines().find(|l| l.starts_with("| ratio hyperlora ÷ diffusers per step |")).unwrap();
    let ratio: f64 = ratio_line.split('|').nth(3).unwrap().trim().split('×').next().unwrap().parse().unwrap();
    assert!((ratio - ours / 500.0).abs() < 0.006, "ratio {ratio} vs {ours} ms / 500 ms");
    // the profile: every kind the tiny UNet has, called, adding up to at most the profiled step
    let whole = ms("| profiled step (synchronised around every block) |");
    let kinds: Vec<&str> = out.lines().filter(|l| l.starts_with("|   ") && l.contains(" calls)")).collect();
    assert_eq!(kinds.len(), 7, "{out}");
    let sum: f64 =
        kinds.iter().map(|l| l.split('|').nth(2).unwrap().trim().trim_end_matches(" ms").parse::<f64>().unwrap()).sum();
    assert!(sum > 0.0 && sum <= whole + 0.05, "kinds add up to {sum} ms of a {whole} ms step\n{out}");
    for k in ["convolutions", "self-attention", "cross-attention", "feed-forward (GEGLU)", "GroupNorm (+ SiLU)"] {
        assert!(kinds.iter().any(|l| l.contains(k)), "no {k} row in\n{out}");
    }
    // a failing Python is an error that shows its output
    let (py, _) = stand_in_python(dir.path(), "echo 'No module named diffusers'\nexit 1");
    let o = hyperlora(&[&args[..], &["--diffusers", s(&py)]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("No module named diffusers"), "{err}");
}

/// `bench hyper --torch PY` hands the comparison script the same variant folder and our thread count, and prints
/// torch's two times with our synthesis time divided by each (a stand-in Python records and answers).
#[test]
fn bench_hyper_compares_synthesis_with_torch() {
    let dir = tempfile::tempdir().unwrap();
    let result =
        r#"{"torch": "0-test", "threads": 2, "tensors": 272, "bases_gb": 0.001, "f16_s": 2.0, "f32_upcast_s": 0.25}"#;
    let (py, seen) = stand_in_python(dir.path(), &format!("echo '{result}'"));
    let variant = fixture("hyperlora-tiny");
    let o = hyperlora(&["bench", "hyper", "--hyperlora", s(&variant), "--repeat", "1", "--torch", s(&py)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{out}", String::from_utf8_lossy(&o.stderr));
    let seen = std::fs::read_to_string(&seen).unwrap();
    let first = seen.lines().next().unwrap();
    assert!(first.starts_with(&format!("- {} --threads ", s(&variant))) && first.ends_with(" --repeat 1"), "{first}");
    assert!(seen.contains("einsum(\"k,kab->ab\"") && seen.contains("t.float()"), "{seen}");
    let row = |start: &str| -> Vec<String> {
        let line = out.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no row {start:?} in\n{out}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    let ours: f64 = row("| LoRA synthesis from coefficients |")[2].trim_end_matches(" ms").parse().unwrap();
    let f32row = row("| torch einsum on the bases upcast to f32 beforehand");
    assert_eq!(f32row[2], "250.00 ms");
    let ratio: f64 = f32row[3].trim_start_matches("ours ÷ this: ").split('×').next().unwrap().parse().unwrap();
    assert!((ratio - ours / 250.0).abs() < 0.006, "{ratio} vs {ours} / 250");
    assert_eq!(row("| torch 0-test einsum on the f16 bases (2 threads) |")[2], "2000.00 ms");
}
