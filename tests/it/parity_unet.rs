//! The UNet with SDXL's full conditioning against diffusers (fixture README §4, `unet_forward*.safetensors`).
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::sdxl::unet::{load_unet, UNetTrace};
use hyperlora::weights::StFile;

const R: &str = "sdxl-tiny/reference/unet_forward.safetensors";

#[test]
fn unet_forward_matches_with_intermediates() {
    let unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let t = StFile::open(fixture(R)).unwrap().to_i64_vec("input.timestep").unwrap()[0] as f32;
    let t = candle_core::Tensor::new(&[t, t], &Device::Cpu).unwrap();
    let mut trace = UNetTrace::default();
    let out = unet
        .forward_traced(
            &load(R, "input.sample"),
            &t,
            &load(R, "input.encoder_hidden_states"),
            &load(R, "input.text_embeds"),
            &load(R, "input.time_ids"),
            Some(&mut trace),
        )
        .unwrap();
    assert_max_abs(
        "time_embedding",
        trace.time_embedding.as_ref().unwrap(),
        &load(R, "intermediate.time_embedding"),
        1e-4,
    );
    assert_max_abs(
        "add_embedding",
        trace.add_embedding.as_ref().unwrap(),
        &load(R, "intermediate.add_embedding"),
        1e-4,
    );
    assert_eq!(trace.blocks.len(), 10);
    for (name, got) in &trace.blocks {
        assert_max_abs(name, got, &load(R, &format!("intermediate.{name}")), 1e-4);
    }
    assert_max_abs("noise_pred", &out, &load(R, "output.noise_pred"), 1e-4);
}

fn inputs() -> [candle_core::Tensor; 4] {
    [
        load(R, "input.sample"),
        load(R, "input.encoder_hidden_states"),
        load(R, "input.text_embeds"),
        load(R, "input.time_ids"),
    ]
}

fn run(unet: &hyperlora::sdxl::unet::UNet) -> candle_core::Tensor {
    let [s, c, te, ti] = inputs();
    unet.forward(&s, 451.0, &c, &te, &ti).unwrap()
}

/// `hyperlora-tiny/lora_n1.safetensors` merged at strength 0.8, both from the file and from our own synthesis.
#[test]
fn unet_with_hyperlora_merged_matches() {
    use hyperlora::hyper::{HyperLora, LoadOptions};
    let want = load("sdxl-tiny/reference/unet_forward_lora.safetensors", "output.noise_pred");
    let mut unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let plain = run(&unet);
    let file = hyperlora::lora::file::import(&fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    let r = unet.set_lora(&file.weights.scaled(0.8)).unwrap();
    assert_eq!((r.merged, r.unmatched.len()), (136, 0));
    assert_max_abs("noise_pred with LoRA file at 0.8", &run(&unet), &want, 1e-4);

    let h = HyperLora::load(fixture("hyperlora-tiny"), &LoadOptions::default()).unwrap();
    let f = hyperlora::encode::features::FeatureSet::new(
        load("hyperlora-tiny/inputs.safetensors", "arcface_n1"),
        load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n1"),
        None,
        vec![],
    )
    .unwrap();
    let id = h.identity(&f).unwrap();
    let w = (hyperlora::LoraMix::lora(&id, 0.8)).weights(&h).unwrap();
    let r = unet.set_lora(&w).unwrap();
    assert_eq!(r.merged + r.unchanged, 136);
    assert_max_abs("noise_pred with synthesized LoRA at 0.8", &run(&unet), &want, 1e-4);
    // the same mix again touches nothing
    let r = unet.set_lora(&w).unwrap();
    assert_eq!((r.merged, r.restored, r.unchanged), (0, 0, 136));
    // removing restores the loaded weights exactly
    let r = unet.clear_lora().unwrap();
    assert_eq!(r.restored, 136);
    assert_max_abs("noise_pred after clear", &run(&unet), &plain, 0.0);
}

/// Applying, switching and removing 1,000 random mixes leaves the UNet bit-identical to the freshly loaded one.
#[test]
fn a_thousand_random_mixes_leave_the_unet_bit_identical() {
    use hyperlora::hyper::{HyperLora, LoadOptions};
    use hyperlora::synthetic::hyper as synthetic;
    let h = HyperLora::load(fixture("hyperlora-tiny"), &LoadOptions::default()).unwrap();
    let ids: Vec<_> =
        (0..6).map(|s| h.identity(&synthetic::random_features(1, 512, 257, 32, 100 + s).unwrap()).unwrap()).collect();
    let fresh = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let mut unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let mut rng = hyperlora::rng::Rng::new(42);
    for i in 0..1000 {
        let mut mix = hyperlora::LoraMix::empty();
        for id in &ids {
            if rng.uniform() > 0.3 {
                mix = mix.add(&hyperlora::LoraMix::lora(id, 1.5 * rng.uniform() as f64));
            }
        }
        let w = mix.weights(&h).unwrap();
        let r = unet.set_lora(&w).unwrap();
        assert!(r.unmatched.is_empty());
        if i % 3 == 0 {
            unet.clear_lora().unwrap();
        }
    }
    unet.clear_lora().unwrap();
    let mut a = unet;
    let mut b = fresh;
    for (p, q) in a.projections_mut().into_iter().zip(b.projections_mut()) {
        assert_eq!(p.target, q.target);
        let d = (p.weight() - q.weight()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{} differs after 1,000 mixes", p.target);
    }
    assert_max_abs("noise_pred", &run(&a), &run(&b), 0.0);
}

/// kohya LoRAs named after single-file (LDM/SGM) checkpoints reach the same projections.
#[test]
fn sgm_named_kohya_lora_reaches_the_same_targets() {
    use hyperlora::files::output::RawTensor;
    use hyperlora::sdxl::single_file::{ldm_module_path, UnetLayout};
    let layout = UnetLayout { layers_per_block: 2, up_has_attention: vec![true, true, false] };
    let src = StFile::open(fixture("hyperlora-tiny/lora_n1.safetensors")).unwrap();
    let mut entries = Vec::new();
    for k in src.keys() {
        let (stem, suffix) = k.split_once('.').unwrap();
        let target = hyperlora::lora::names::target_from_kohya(stem).unwrap();
        let ldm = ldm_module_path(&target, &layout).unwrap();
        assert!(
            ldm.starts_with("input_blocks.") || ldm.starts_with("output_blocks.") || ldm.starts_with("middle_block."),
            "{ldm}"
        );
        let raw = RawTensor {
            dtype: src.dtype(&k).unwrap(),
            shape: src.shape(&k).unwrap().to_vec(),
            data: src.raw(&k).unwrap().to_vec(),
        };
        entries.push((format!("{}.{suffix}", hyperlora::lora::names::kohya_name(&ldm)), raw));
    }
    assert!(entries.iter().any(|(k, _)| k.starts_with("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.")));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sgm.safetensors");
    std::fs::write(&p, hyperlora::files::output::safetensors_bytes(&entries, Default::default()).unwrap()).unwrap();
    let imp = hyperlora::lora::file::import(&p).unwrap();
    assert!(imp.unmatched.is_empty(), "{:?}", imp.unmatched);
    let mut unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let r = unet.set_lora(&imp.weights.scaled(0.8)).unwrap();
    assert_eq!((r.merged, r.unmatched.len()), (136, 0), "{:?}", r.unmatched);
    assert_max_abs(
        "noise_pred, SGM-named LoRA",
        &run(&unet),
        &load("sdxl-tiny/reference/unet_forward_lora.safetensors", "output.noise_pred"),
        1e-4,
    );
    // names that fit no projection are reported, not dropped silently
    let mut w = imp.weights.clone();
    w.layers[0].target = "down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q".into();
    let r = unet.set_lora(&w).unwrap();
    assert_eq!(r.unmatched, vec!["down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q".to_string()]);
}
