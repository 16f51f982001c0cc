//! Bad inputs get errors that name the file, the key and both shapes — never a panic, never a silent fallback.
use crate::common::*;
use hyperlora::files::output::RawTensor;
use hyperlora::hyper::{HyperLora, LoadOptions};
use hyperlora::Error;

fn load(dir: &std::path::Path) -> Result<HyperLora, Error> {
    HyperLora::load(dir, &LoadOptions::default())
}

fn tiny_copy() -> tempfile::TempDir {
    copy_dir(&fixture("hyperlora-tiny"))
}

#[test]
fn truncated_bases_file_is_named() {
    let d = tiny_copy();
    let p = d.path().join("hyper_lora_modules.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    match load(d.path()) {
        Err(Error::Header { file, reason }) => {
            assert_eq!(file, p);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("expected a header error, got {:?}", other.err()),
    }
}

#[test]
fn garbage_header_is_reported_as_corrupt() {
    let d = tiny_copy();
    let p = d.path().join("resampler.safetensors");
    std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file").unwrap();
    let e = load(d.path()).err().expect("must fail");
    let msg = e.to_string();
    assert!(msg.contains("resampler.safetensors") && msg.contains("HeaderTooLarge"), "{msg}");
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let d = tiny_copy();
    let p = d.path().join("resampler.safetensors");
    rewrite(&fixture("hyperlora-tiny/resampler.safetensors"), &p, |t| {
        let e = t.iter_mut().find(|(k, _)| k == "layers.1.attn3.to_v.weight").unwrap();
        e.1.shape = vec![32, 128]; // same bytes, wrong shape ([64, 64] expected)
    });
    match load(d.path()) {
        Err(Error::Shape { file, key, expected, found, .. }) => {
            assert_eq!((file, key.as_str()), (p, "layers.1.attn3.to_v.weight"));
            assert_eq!((expected, found), (vec![64, 64], vec![32, 128]));
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
}

#[test]
fn missing_key_is_named_with_its_expected_shape() {
    let d = tiny_copy();
    rewrite(&fixture("hyperlora-tiny/id_projector.safetensors"), &d.path().join("id_projector.safetensors"), |t| {
        t.retain(|(k, _)| k != "2.bias");
    });
    match load(d.path()) {
        Err(Error::Missing { key, expected, .. }) => assert_eq!((key.as_str(), expected), ("2.bias", vec![32])),
        other => panic!("expected a missing-key error, got {:?}", other.err()),
    }
}

#[test]
fn extra_key_is_unexpected() {
    let d = tiny_copy();
    rewrite(&fixture("hyperlora-tiny/resampler.safetensors"), &d.path().join("resampler.safetensors"), |t| {
        t.push((
            "layers.0.attn1.to_q.bias".into(),
            RawTensor { dtype: safetensors::Dtype::F16, shape: vec![64], data: vec![0; 128] },
        ));
    });
    match load(d.path()) {
        Err(Error::Unexpected { count, first, .. }) => {
            assert_eq!((count, first.as_str()), (1, "layers.0.attn1.to_q.bias"))
        }
        other => panic!("expected an unexpected-key error, got {:?}", other.err()),
    }
}

#[test]
fn json_dims_that_disagree_with_the_bases() {
    let d = tiny_copy();
    let p = d.path().join("hyper_lora_modules.json");
    let text = std::fs::read_to_string(&p).unwrap();
    // module 1 (…blocks_0_attn2) says cross_attention_dim 40; claim 48
    let at = text.find("\"cross_attention_dim\": 40").unwrap();
    let text =
        format!("{}\"cross_attention_dim\": 48{}", &text[..at], &text[at + "\"cross_attention_dim\": 40".len()..]);
    std::fs::write(&p, text).unwrap();
    match load(d.path()) {
        Err(Error::Shape { key, expected, found, hint, .. }) => {
            assert_eq!(key, "1.to_k.id_down_basis");
            assert_eq!((expected, found), (vec![16, 48, 4], vec![16, 40, 4]));
            assert!(
                hint.contains("hyper_lora_modules.json entry 1") && hint.contains("cross_attention_dim 48"),
                "{hint}"
            );
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
}

#[test]
fn module_count_that_disagrees_with_the_latents() {
    let d = tiny_copy();
    let p = d.path().join("hyper_lora_modules.json");
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let last = v.keys().next_back().unwrap().clone();
    v.remove(&last);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let msg = load(d.path()).err().expect("must fail").to_string();
    assert!(msg.contains("272 queries") && msg.contains("33 modules"), "{msg}");
}

#[test]
fn base_bases_without_base_resampler() {
    let d = copy_dir(&fixture("hyperlora-tiny-base"));
    std::fs::remove_file(d.path().join("base_resampler.safetensors")).unwrap();
    // keep heads × dim_head, drop the explicit has_base_lora: the branch is then detected from the files
    let cfg = d.path().join("config.json");
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.remove("has_base_lora");
    v.remove("base_lora_rank");
    std::fs::write(&cfg, serde_json::to_string(&v).unwrap()).unwrap();
    match load(d.path()) {
        Err(Error::Unexpected { count, first, hint, .. }) => {
            assert_eq!(count, 272);
            assert!(first.contains("base_"), "{first}");
            assert!(hint.contains("base_resampler.safetensors"), "{hint}");
        }
        other => panic!("expected unexpected base keys, got {:?}", other.err()),
    }
}

#[test]
fn config_saying_base_without_its_file() {
    let d = copy_dir(&fixture("hyperlora-tiny-base"));
    std::fs::remove_file(d.path().join("base_resampler.safetensors")).unwrap();
    let msg = load(d.path()).err().expect("must fail").to_string();
    assert!(msg.contains("base_resampler.safetensors"), "{msg}");
}

#[test]
fn heads_that_do_not_fit_the_weights() {
    // without config.json the release's 12 × 64 is assumed; the tiny resampler's inner width is 64
    let d = tiny_copy();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let msg = load(d.path()).err().expect("must fail").to_string();
    assert!(msg.contains("inner width is 64") && msg.contains("12 × 64"), "{msg}");
}

#[test]
fn config_json_that_contradicts_the_shapes() {
    let d = tiny_copy();
    let p = d.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace("\"num_id_tokens\": 4", "\"num_id_tokens\": 20");
    std::fs::write(&p, text).unwrap();
    let msg = load(d.path()).err().expect("must fail").to_string();
    assert!(msg.contains("num_id_tokens") && msg.contains("20") && msg.contains("4"), "{msg}");
}

#[test]
fn integer_tensor_is_a_dtype_error() {
    let d = tiny_copy();
    rewrite(&fixture("hyperlora-tiny/id_projector.safetensors"), &d.path().join("id_projector.safetensors"), |t| {
        let e = t.iter_mut().find(|(k, _)| k == "2.bias").unwrap();
        e.1.dtype = safetensors::Dtype::I16;
    });
    match load(d.path()) {
        Err(Error::Dtype { key, found, .. }) => assert_eq!((key.as_str(), found.as_str()), ("2.bias", "I16")),
        other => panic!("expected a dtype error, got {:?}", other.err()),
    }
}

#[test]
fn missing_folder_and_missing_file() {
    let msg = load(std::path::Path::new("/nonexistent/variant")).err().unwrap().to_string();
    assert!(msg.contains("/nonexistent/variant") && msg.contains("not a folder"), "{msg}");
    let d = tiny_copy();
    std::fs::remove_file(d.path().join("id_projector.safetensors")).unwrap();
    let msg = load(d.path()).err().unwrap().to_string();
    assert!(msg.contains("id_projector.safetensors") && msg.contains("cannot read"), "{msg}");
}

#[test]
fn identity_from_another_variant_is_refused() {
    let tiny = load(&fixture("hyperlora-tiny")).unwrap();
    let base = load(&fixture("hyperlora-tiny-base")).unwrap();
    assert_ne!(tiny.variant().hash, base.variant().hash);
    let a = hyperlora::synthetic::hyper::random_features(1, 512, 257, 32, 1).unwrap();
    let id = tiny.identity(&a).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("id.safetensors");
    id.save(&p, false).unwrap();
    let loaded = hyperlora::Identity::load(&p).unwrap();
    let msg = base.check_identity(&loaded).expect_err("must refuse").to_string();
    assert!(
        msg.contains("hyperlora-tiny")
            && msg.contains("hyperlora-tiny-base")
            && msg.contains(&tiny.variant().hash[..12]),
        "{msg}"
    );
    assert!((hyperlora::LoraMix::lora(&loaded, 1.0)).weights(&base).is_err());
    // identities of different variants do not mix either
    let other = base.identity(&a).unwrap();
    assert!(id.mix(&other, 0.5).err().unwrap().to_string().contains("different HyperLoRA variants"));
}

#[test]
fn base_weight_without_base_branch_is_a_clear_error() {
    let tiny = load(&fixture("hyperlora-tiny")).unwrap();
    let id = tiny.identity(&hyperlora::synthetic::hyper::random_features(1, 512, 257, 32, 1).unwrap()).unwrap();
    let msg = (hyperlora::LoraMix::lora_with_base(&id, 1.0, 0.25)).weights(&tiny).err().unwrap().to_string();
    assert!(msg.contains("Base") && msg.contains("base_resampler.safetensors"), "{msg}");
    // with the Base branch but an identity made without Base images
    let base = load(&fixture("hyperlora-tiny-base")).unwrap();
    let id = base.identity(&hyperlora::synthetic::hyper::random_features(1, 512, 257, 32, 1).unwrap()).unwrap();
    let msg = (hyperlora::LoraMix::lora_with_base(&id, 1.0, 0.25)).weights(&base).err().unwrap().to_string();
    assert!(msg.contains("no Base coefficients"), "{msg}");
}

#[test]
fn a_file_that_is_not_an_identity() {
    let e = hyperlora::Identity::load(&fixture("hyperlora-tiny/inputs.safetensors")).err().unwrap().to_string();
    assert!(e.contains("inputs.safetensors") && e.contains("not a hyperlora identity file"), "{e}");
}
