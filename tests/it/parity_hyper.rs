//! Parity with ../shared/fixtures/hyperlora-tiny and hyperlora-tiny-base (fixture README §1, §1b):
//! id tokens, resampler intermediates, raw outputs for N = 1 and N = 3, fused coefficients, every exported LoRA
//! tensor, the Base branch and the combined ID + Base ΔW.
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use hyperlora::encode::features::FeatureSet;
use hyperlora::hyper::synth::Branch;
use hyperlora::hyper::{HyperLora, LoadOptions};
use hyperlora::lora::file::export_kohya;
use hyperlora::weights::StFile;
use hyperlora::LoraMix;

const TOL: f32 = 1e-4; // README §1 "recommended tolerance"

fn tiny() -> HyperLora {
    HyperLora::load(fixture("hyperlora-tiny"), &LoadOptions::default()).unwrap()
}

#[test]
fn derived_config_matches_fixture_config() {
    let h = tiny();
    let c = h.config();
    assert_eq!((c.id_embed_dim, c.num_id_tokens, c.embedding_dim), (512, 4, 32));
    assert_eq!(
        (c.resampler.dim, c.resampler.heads, c.resampler.dim_head, c.resampler.depth, c.resampler.ff_mult),
        (64, 2, 32, 2, 4)
    );
    assert_eq!((c.hyper_dim, c.lora_rank, c.num_modules, c.resampler.num_queries), (16, 4, 34, 272));
    assert_eq!(c.base_lora_rank, None);
    // JSON order is kept: down_blocks.1 (0–3), down_blocks.2 (4–11), up_blocks.0 (12–23), up_blocks.1 (24–29), mid (30–33)
    assert_eq!(h.modules()[12].target, "up_blocks.0.attentions.0.transformer_blocks.0.attn1");
    assert_eq!(h.modules()[30].target, "mid_block.attentions.0.transformer_blocks.0.attn1");
}

fn check_forward(n: usize) {
    let h = tiny();
    let (a, c) = inputs(n);
    let tr = h.forward_id_traced(&a, &c).unwrap();
    let exp = format!("hyperlora-tiny/expected_n{n}.safetensors");
    assert_max_abs("id_tokens", &tr.id_tokens, &load(&exp, "id_tokens"), TOL);
    assert_max_abs("proj_in_x", &tr.resampler.proj_in_x, &load(&exp, "proj_in_x"), TOL);
    assert_max_abs("proj_in_2_y", tr.resampler.proj_in_2_y.as_ref().unwrap(), &load(&exp, "proj_in_2_y"), TOL);
    for (l, t) in tr.resampler.latents_after_layer.iter().enumerate() {
        assert_max_abs(&format!("latents_after_layer_{l}"), t, &load(&exp, &format!("latents_after_layer_{l}")), TOL);
    }
    assert_max_abs("resampler_raw", &tr.resampler.raw, &load(&exp, "resampler_raw"), TOL);
    // the production path (chunked, fused into an Identity) gives the same coefficients
    let id = h.identity(&features(n)).unwrap();
    assert_eq!(id.photos(), n);
    assert_max_abs("coeffs", &id.coefficients().unwrap().unsqueeze(0).unwrap(), &load(&exp, "coeffs"), TOL);
}

#[test]
fn forward_n1_matches_reference() {
    check_forward(1);
}

#[test]
fn forward_n3_matches_reference() {
    check_forward(3);
}

/// Export at weight 1 in f32 and compare every tensor, key set included, with the reference LoRA.
fn check_lora(n: usize) {
    let h = tiny();
    let id = h.identity(&features(n)).unwrap();
    let w = (LoraMix::lora(&id, 1.0)).weights(&h).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora.safetensors");
    let s = export_kohya(&w, hyperlora::hyper::ALPHA_RATIO, &out, DType::F32, Default::default(), false).unwrap();
    assert_eq!(s.tensors, 408);
    let got = StFile::open(&out).unwrap();
    let want = StFile::open(fixture(&format!("hyperlora-tiny/lora_n{n}.safetensors"))).unwrap();
    assert_eq!(got.keys(), want.keys(), "exported key set differs from the reference");
    for k in want.keys() {
        let g = got.tensor(&k, DType::F32, &Device::Cpu).unwrap();
        let r = want.tensor(&k, DType::F32, &Device::Cpu).unwrap();
        if k.ends_with(".alpha") {
            assert_eq!(got.dtype(&k), Some(safetensors::Dtype::F32), "{k}");
            assert_eq!(g.dims(), &[] as &[usize], "{k}");
            assert_eq!(g.to_scalar::<f32>().unwrap(), r.to_scalar::<f32>().unwrap(), "{k}");
        } else {
            assert_max_abs(&k, &g, &r, TOL);
        }
    }
}

#[test]
fn lora_n1_matches_reference() {
    check_lora(1);
}

#[test]
fn lora_n3_matches_reference() {
    check_lora(3);
}

#[test]
fn f16_export_is_the_f32_lora_rounded() {
    let h = tiny();
    let id = h.identity(&features(1)).unwrap();
    let w = (LoraMix::lora(&id, 1.0)).weights(&h).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora16.safetensors");
    export_kohya(&w, hyperlora::hyper::ALPHA_RATIO, &out, DType::F16, Default::default(), false).unwrap();
    let got = StFile::open(&out).unwrap();
    let want = StFile::open(fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    for k in want.keys().into_iter().filter(|k| !k.ends_with(".alpha")) {
        assert_eq!(got.dtype(&k), Some(safetensors::Dtype::F16), "{k}");
        let g = got.tensor(&k, DType::F32, &Device::Cpu).unwrap();
        let r = want.tensor(&k, DType::F32, &Device::Cpu).unwrap();
        // f16 keeps 11 significant bits: |Δ| ≤ 2⁻¹¹·|x| + the f32 tolerance
        let bound = ((r.abs().unwrap() * (1.0 / 2048.0)).unwrap() + TOL as f64).unwrap();
        let over = (g - &r)
            .unwrap()
            .abs()
            .unwrap()
            .gt(&bound)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(over, 0.0, "{k}: f16 export deviates beyond rounding");
    }
}

// ---------------------------------------------------------------- Base branch (README §1b)

fn tiny_base() -> HyperLora {
    HyperLora::load(fixture("hyperlora-tiny-base"), &LoadOptions::default()).unwrap()
}

fn base_clip(n: usize) -> Tensor {
    load("hyperlora-tiny-base/base_inputs.safetensors", "base_clip_hidden_states_n3").narrow(0, 0, n).unwrap()
}

#[test]
fn base_resampler_matches_reference() {
    let h = tiny_base();
    assert_eq!(h.config().base_lora_rank, Some(2));
    let exp = "hyperlora-tiny-base/expected_base.safetensors";
    let raw = h.raw_base(&base_clip(3)).unwrap();
    assert_max_abs("resampler_raw_n3", &raw, &load(exp, "resampler_raw_n3"), TOL);
    let tr = h.base_resampler().unwrap().forward_traced(&base_clip(1), None, false).unwrap();
    assert_max_abs("proj_in_x_n1", &tr.proj_in_x, &load(exp, "proj_in_x_n1"), TOL);
    for n in [1, 3] {
        let (a, c) = inputs(1);
        let id = h.identity(&FeatureSet::new(a, c, Some(base_clip(n)), vec![]).unwrap()).unwrap();
        assert_eq!(id.base_photos(), n);
        let coeffs = id.base_coefficients().unwrap().unwrap().unsqueeze(0).unwrap();
        assert_max_abs(&format!("coeffs_n{n}"), &coeffs, &load(exp, &format!("coeffs_n{n}")), TOL);
    }
}

fn base_identity(h: &HyperLora) -> hyperlora::Identity {
    let (a, c) = inputs(1);
    h.identity(&FeatureSet::new(a, c, Some(base_clip(1)), vec![]).unwrap()).unwrap()
}

#[test]
fn base_lora_matches_reference() {
    let h = tiny_base();
    let id = base_identity(&h);
    let w = h.synthesize(&id, Branch::Base).unwrap();
    let want = StFile::open(fixture("hyperlora-tiny-base/lora_base_n1.safetensors")).unwrap();
    for l in &w.layers {
        let k = hyperlora::lora::names::kohya_name(&l.target);
        assert_max_abs(
            &format!("{k}.lora_down.weight"),
            &l.down,
            &want.tensor(&format!("{k}.lora_down.weight"), DType::F32, &Device::Cpu).unwrap(),
            TOL,
        );
        assert_max_abs(
            &format!("{k}.lora_up.weight"),
            &l.up,
            &want.tensor(&format!("{k}.lora_up.weight"), DType::F32, &Device::Cpu).unwrap(),
            TOL,
        );
    }
    assert_eq!(w.layers.len() * 3, want.keys().len());
    // and the ID branch of this folder is the tiny ID model
    let idw = h.synthesize(&id, Branch::Id).unwrap();
    let ref_id = StFile::open(fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    let l = &idw.layers[5];
    let k = hyperlora::lora::names::kohya_name(&l.target);
    assert_max_abs(
        "id branch",
        &l.up,
        &ref_id.tensor(&format!("{k}.lora_up.weight"), DType::F32, &Device::Cpu).unwrap(),
        TOL,
    );
}

#[test]
fn combined_id_and_base_delta_matches_reference() {
    let h = tiny_base();
    let id = base_identity(&h);
    let r = "hyperlora-tiny-base/combined_n1.safetensors";
    let s_id = load(r, "strength_id").to_scalar::<f32>().unwrap() as f64;
    let s_base = load(r, "strength_base").to_scalar::<f32>().unwrap() as f64;
    let w = (LoraMix::lora_with_base(&id, s_id, s_base)).weights(&h).unwrap();
    let fro = load(r, "combined_fro_norm");
    let sum = load(r, "combined_sum");
    let ref_file = StFile::open(fixture(r)).unwrap();
    let mut deltas_checked = 0;
    for (i, m) in h.modules().iter().enumerate() {
        for (j, p) in hyperlora::hyper::modules::Proj::ALL.iter().enumerate() {
            let target = m.proj_target(*p);
            let d = w.delta(&target).unwrap().unwrap();
            let f = d.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
            let s = d.sum_all().unwrap();
            assert_max_abs(&format!("fro {target}"), &f, &fro.get(i).unwrap().get(j).unwrap(), 1e-5);
            assert_max_abs(&format!("sum {target}"), &s, &sum.get(i).unwrap().get(j).unwrap(), 1e-4);
            let key = format!("delta.{target}.weight");
            if ref_file.contains(&key) {
                assert_max_abs(&key, &d, &load(r, &key), 1e-5);
                deltas_checked += 1;
            }
        }
    }
    assert_eq!(deltas_checked, 16);
}

/// The loader accepts fp16 (as released), bf16 and fp32 files. An f32 copy of the fp16 weights is the same model;
/// a bf16 copy rounds the weights, so it is compared by cosine similarity (README §1: > 0.999).
#[test]
fn f32_and_bf16_copies_of_the_weights_load() {
    use hyperlora::files::output::RawTensor;
    let reference = tiny().identity(&features(3)).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let d = copy_dir(&fixture("hyperlora-tiny"));
        for f in ["id_projector.safetensors", "resampler.safetensors", "hyper_lora_modules.safetensors"] {
            let src = StFile::open(fixture(&format!("hyperlora-tiny/{f}"))).unwrap();
            rewrite(&fixture(&format!("hyperlora-tiny/{f}")), &d.path().join(f), |t| {
                for (k, e) in t.iter_mut() {
                    *e = RawTensor::from_tensor(&src.tensor(k, DType::F32, &Device::Cpu).unwrap(), dtype).unwrap();
                }
            });
        }
        let h = HyperLora::load(d.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            StFile::open(d.path().join("resampler.safetensors")).unwrap().dtype("latents"),
            Some(if dtype == DType::F32 { safetensors::Dtype::F32 } else { safetensors::Dtype::BF16 })
        );
        let id = h.identity(&features(3)).unwrap();
        let (a, b) = (id.coefficients().unwrap(), reference.coefficients().unwrap());
        if dtype == DType::F32 {
            assert_max_abs("f32 copy", &a, &b, 1e-6);
        } else {
            let cos = ((&a * &b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
                / (a.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap()
                    * b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap());
            assert!(cos > 0.999, "bf16 copy: cosine {cos}");
        }
    }
}
