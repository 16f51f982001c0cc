//! The `hyperlora` binary: identity → export-lora on the tiny fixture, one-line errors, no overwrites.
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::features::FeatureSet;
use hyperlora::weights::StFile;
use std::path::Path;
use std::process::{Command, Output};

fn hyperlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperlora")).args(args).env_remove("HYPERLORA_HYPERLORA").output().unwrap()
}

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
