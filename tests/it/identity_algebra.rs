//! Identity and LoraMix algebra on the tiny fixture model: the laws the scripting layer relies on, and exact
//! export/import of mixes.
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use hyperlora::encode::features::FeatureSet;
use hyperlora::files::output::{safetensors_bytes, RawTensor};
use hyperlora::hyper::{HyperLora, LoadOptions};
use hyperlora::lora::file::{export_kohya, import, Spelling};
use hyperlora::lora::{names, LoraWeights};
use hyperlora::weights::StFile;
use hyperlora::{Identity, LoraMix};
use std::sync::Arc;

fn tiny() -> HyperLora {
    HyperLora::load(fixture("hyperlora-tiny"), &LoadOptions::default()).unwrap()
}

/// Identity of fixture photo rows `rows` (of the N = 3 inputs), fused.
fn id_of(h: &HyperLora, rows: &[usize]) -> Identity {
    let a = load("hyperlora-tiny/inputs.safetensors", "arcface_n3");
    let c = load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n3");
    let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let f = FeatureSet::new(a.index_select(&idx, 0).unwrap(), c.index_select(&idx, 0).unwrap(), None, vec![]).unwrap();
    h.identity(&f).unwrap()
}

fn assert_same_deltas(h: &HyperLora, a: &LoraWeights, b: &LoraWeights, tol: f32) {
    for m in h.modules() {
        for p in hyperlora::hyper::modules::Proj::ALL {
            let t = m.proj_target(p);
            match (a.delta(&t).unwrap(), b.delta(&t).unwrap()) {
                (Some(x), Some(y)) => assert_max_abs(&t, &x, &y, tol),
                (None, None) => {}
                (x, y) => panic!("{t}: present in one and not the other ({} / {})", x.is_some(), y.is_some()),
            }
        }
    }
}

#[test]
fn weighted_mean_equals_fusing_the_photos() {
    let h = tiny();
    let fused = id_of(&h, &[0, 1, 2]);
    let singles: Vec<Identity> = (0..3).map(|r| id_of(&h, &[r])).collect();
    let mean = Identity::mean(&singles.iter().collect::<Vec<_>>()).unwrap();
    assert_max_abs("mean of singles", mean.raw(), fused.raw(), 1e-5);
    assert_eq!(mean.photos(), 3);
    // a 2-photo identity and a 1-photo identity: the default weights are the photo counts
    let two = id_of(&h, &[0, 1]);
    let mean = Identity::mean(&[&two, &singles[2]]).unwrap();
    assert_max_abs("mean(2 photos, 1 photo)", mean.raw(), fused.raw(), 1e-5);
    // explicit weights
    let w = Identity::weighted_mean(&[&two, &singles[2]], &[2.0, 1.0]).unwrap();
    assert_max_abs("weighted_mean", w.raw(), fused.raw(), 1e-5);
    // and the coefficients the reference computed for N = 3
    assert_max_abs(
        "coeffs",
        &mean.coefficients().unwrap().unsqueeze(0).unwrap(),
        &load("hyperlora-tiny/expected_n3.safetensors", "coeffs"),
        1e-4,
    );
}

#[test]
fn identity_laws() {
    let h = tiny();
    let (a, b) = (id_of(&h, &[0]), id_of(&h, &[1]));
    assert_max_abs("mix(a, b, 0) = a", a.mix(&b, 0.0).unwrap().raw(), a.raw(), 0.0);
    assert_max_abs("mix(a, b, 1) = b", a.mix(&b, 1.0).unwrap().raw(), b.raw(), 0.0);
    assert_max_abs("mean([a]) = a", Identity::mean(&[&a]).unwrap().raw(), a.raw(), 0.0);
    assert_eq!(Identity::mean(&[&a]).unwrap().hash(), a.hash());
    assert_max_abs("(a + b) − b = a", a.add(&b).unwrap().sub(&b).unwrap().raw(), a.raw(), 1e-5);
    assert_max_abs("a·2 − a = a", a.scale(2.0).unwrap().sub(&a).unwrap().raw(), a.raw(), 1e-5);
    let mid = a.mix(&b, 0.5).unwrap();
    assert_max_abs("mix(a,b,.5) = (a+b)·.5", mid.raw(), a.add(&b).unwrap().scale(0.5).unwrap().raw(), 1e-6);
    // similarity: 1 with itself, symmetric, < 1 for different photos, scale-invariant (normalised coefficients)
    assert!((a.similarity(&a).unwrap() - 1.0).abs() < 1e-6);
    let s = a.similarity(&b).unwrap();
    assert!((s - b.similarity(&a).unwrap()).abs() < 1e-9 && s < 0.999 && s > -1.0, "{s}");
    assert!((a.similarity(&a.scale(3.0).unwrap()).unwrap() - 1.0).abs() < 1e-6);
    assert_ne!(a.hash(), b.hash());
    assert!(Identity::weighted_mean(&[&a, &b], &[1.0, -1.0]).is_err(), "weights summing to zero must be refused");
    assert!(Identity::mean(&[]).is_err());
}

#[test]
fn lora_mix_laws() {
    let h = tiny();
    let (a, b) = (id_of(&h, &[0]), id_of(&h, &[1]));
    // slider(a, b) = −slider(b, a), as a mix and as weights
    let s_ab = LoraMix::slider(&a, &b);
    let s_ba = LoraMix::slider(&b, &a);
    assert!(s_ab.approx_eq(&s_ba.scale(-1.0), 0.0));
    assert!(!s_ab.approx_eq(&s_ba, 0.0));
    assert_same_deltas(&h, &s_ab.weights(&h).unwrap(), &s_ba.weights(&h).unwrap().scaled(-1.0), 1e-7);
    // slider(a, b) = lora(b, 1) − lora(a, 1), and its ΔW is the difference of the two LoRAs
    let d = (LoraMix::lora(&b, 1.0)).weights(&h).unwrap();
    let mut diff = d.clone();
    diff.extend((LoraMix::lora(&a, 1.0)).weights(&h).unwrap().scaled(-1.0));
    assert_same_deltas(&h, &s_ab.weights(&h).unwrap(), &diff, 1e-6);
    // same sources merge: lora(a, .5) + lora(a, .5) is one term of weight 1
    let twice = LoraMix::lora(&a, 0.5).add(&LoraMix::lora(&a, 0.5));
    assert_eq!(twice.terms().len(), 1);
    assert!(twice.approx_eq(&LoraMix::lora(&a, 1.0), 1e-12));
    // x − x is empty; scaling distributes
    assert!(s_ab.sub(&s_ab).is_empty());
    let look = LoraMix::lora(&a.mix(&b, 0.3).unwrap(), 0.85).add(&s_ab.scale(0.7));
    assert_eq!(look.terms().len(), 3);
    assert!(look.scale(2.0).approx_eq(&look.add(&look), 1e-12));
    // strength is linear in ΔW: ΔW(lora(a, 0.8)) = 0.8 · 0.5 · U·D
    let w1 = (LoraMix::lora(&a, 1.0)).weights(&h).unwrap();
    assert_same_deltas(&h, &(LoraMix::lora(&a, 0.8)).weights(&h).unwrap(), &w1.scaled(0.8), 1e-7);
    let l = &w1.layers[0];
    assert_eq!(l.scale, 0.5, "alpha / rank of a HyperLoRA term");
}

#[test]
fn save_and_load_keep_identity_and_never_overwrite() {
    let h = tiny();
    let a = h.identity(&FeatureSet::load(&write_features(&h)).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.id.safetensors");
    a.save(&p, false).unwrap();
    let back = Identity::load(&p).unwrap();
    assert_eq!(back.hash(), a.hash());
    assert_eq!(back.photos(), 3);
    assert_eq!(back.sources(), a.sources());
    assert_eq!(back.sources().len(), 3);
    assert_eq!(back.variant(), h.variant());
    h.check_identity(&back).unwrap();
    let before = std::fs::read(&p).unwrap();
    let other = id_of(&h, &[2]);
    assert!(matches!(other.save(&p, false), Err(hyperlora::Error::Exists { .. })));
    assert_eq!(std::fs::read(&p).unwrap(), before, "existing file was modified");
    other.save(&p, true).unwrap();
    assert_eq!(Identity::load(&p).unwrap().hash(), other.hash());
}

/// The fixture inputs in the features-file format (what `hyperlora identity --features` reads).
fn write_features(_h: &HyperLora) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let p = dir.join("features.safetensors");
    let f = FeatureSet::new(
        load("hyperlora-tiny/inputs.safetensors", "arcface_n3"),
        load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n3"),
        None,
        vec![],
    )
    .unwrap();
    f.save(&p, false).unwrap();
    p
}

#[test]
fn exported_mix_reimports_exactly() {
    let h = tiny();
    let (a, b, c) = (id_of(&h, &[0]), id_of(&h, &[1]), id_of(&h, &[2]));
    let look = LoraMix::lora(&a.mix(&b, 0.3).unwrap(), 0.85).add(&LoraMix::slider(&b, &c).scale(0.7));
    let w = look.weights(&h).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("look.safetensors");
    let s = export_kohya(&w, hyperlora::hyper::ALPHA_RATIO, &p, DType::F32, Default::default(), false).unwrap();
    assert_eq!((s.tensors, s.max_rank), (408, 12), "three rank-4 terms stacked along the rank axis");
    let f = StFile::open(&p).unwrap();
    assert_eq!(
        f.to_f32_vec("lora_unet_mid_block_attentions_0_transformer_blocks_1_attn2_to_v.alpha").unwrap(),
        vec![6.0]
    );
    let back = import(&p).unwrap();
    assert_eq!(back.spelling, Some(Spelling::Kohya));
    assert!(back.unmatched.is_empty(), "{:?}", back.unmatched);
    assert_same_deltas(&h, &back.weights, &w, 1e-6);
    // an imported file is a LoraMix term like any other
    let file_term = LoraMix::file(p.clone(), "look".into(), Arc::new(back.weights), 0.5);
    assert_same_deltas(&h, &file_term.weights(&h).unwrap(), &w.scaled(0.5), 1e-6);
    // never overwrite
    assert!(matches!(
        export_kohya(&w, hyperlora::hyper::ALPHA_RATIO, &p, DType::F32, Default::default(), false),
        Err(hyperlora::Error::Exists { .. })
    ));
}

#[test]
fn peft_and_diffusers_spellings_import_to_the_same_targets() {
    let h = tiny();
    let kohya = import(&fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    assert_eq!(kohya.weights.layers.len(), 136);
    assert!(kohya.unmatched.is_empty());
    let src = StFile::open(fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    let mut peft = Vec::new();
    let mut diffusers = Vec::new();
    for k in src.keys() {
        let raw = || RawTensor {
            dtype: src.dtype(&k).unwrap(),
            shape: src.shape(&k).unwrap().to_vec(),
            data: src.raw(&k).unwrap().to_vec(),
        };
        let (stem, suffix) = k.split_once('.').unwrap();
        let target = names::target_from_kohya(stem).unwrap();
        match suffix {
            "lora_down.weight" => {
                peft.push((format!("base_model.model.{target}.lora_A.weight"), raw()));
                diffusers.push((format!("unet.{target}.lora.down.weight"), raw()));
            }
            "lora_up.weight" => {
                peft.push((format!("base_model.model.{target}.lora_B.weight"), raw()));
                diffusers.push((format!("unet.{target}.lora.up.weight"), raw()));
            }
            _ => {}
        }
    }
    peft.push(("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(), RawTensor::scalar_f32(0.0)));
    let tmp = tempfile::tempdir().unwrap();
    for (name, entries, spelling) in [("peft", peft, Spelling::Peft), ("diffusers", diffusers, Spelling::Diffusers)] {
        let p = tmp.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, safetensors_bytes(&entries, Default::default()).unwrap()).unwrap();
        let got = import(&p).unwrap();
        assert_eq!(got.spelling, Some(spelling), "{name}");
        // no alpha in these spellings: scale 1, i.e. twice the kohya file's alpha/rank = 0.5
        assert_same_deltas(&h, &got.weights, &kohya.weights.scaled(2.0), 1e-7);
        if name == "peft" {
            assert_eq!(
                got.unmatched,
                vec!["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_string()]
            );
        }
    }
}

#[test]
fn kohya_names_round_trip_over_every_tiny_unet_tensor() {
    let unet = StFile::open(fixture("sdxl-tiny/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let mut n = 0;
    for k in unet.keys() {
        let module = k.rsplit_once('.').unwrap().0;
        assert_eq!(names::target_from_kohya(&names::kohya_name(module)).as_deref(), Some(module), "{k}");
        n += 1;
    }
    assert_eq!(n, 620);
    // and every HyperLoRA target is a real Linear of the tiny UNet, with the JSON's dims
    let h = tiny();
    for m in h.modules() {
        for p in hyperlora::hyper::modules::Proj::ALL {
            let key = format!("{}.weight", m.proj_target(p));
            let (i, o) = m.dims(p);
            assert_eq!(unet.shape(&key), Some(&[o, i][..]), "{key}");
        }
    }
}

#[test]
fn features_file_is_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f.safetensors");
    let a = (load("hyperlora-tiny/inputs.safetensors", "arcface_n1") * 3.0).unwrap();
    let c = load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n1");
    let e = vec![
        ("arcface".to_string(), RawTensor::from_tensor(&a, DType::F32).unwrap()),
        ("clip".to_string(), RawTensor::from_tensor(&c, DType::F32).unwrap()),
    ];
    std::fs::write(&p, safetensors_bytes(&e, Default::default()).unwrap()).unwrap();
    let msg = FeatureSet::load(&p).err().unwrap().to_string();
    assert!(msg.contains("row 0") && msg.contains("L2 norm 3.0"), "{msg}");
    let e = vec![("arcface".to_string(), RawTensor::from_tensor(&(a / 3.0).unwrap(), DType::F32).unwrap())];
    std::fs::write(&p, safetensors_bytes(&e, Default::default()).unwrap()).unwrap();
    let msg = FeatureSet::load(&p).err().unwrap().to_string();
    assert!(msg.contains("missing tensor `clip`"), "{msg}");
}
