//! Single-file SGM checkpoints: the key table both ways against the fixture, identical tensors after loading,
//! and clear errors for checkpoints that are not SDXL (fixture README §5).
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use hyperlora::output::RawTensor;
use hyperlora::sdxl::model::{Sdxl, SdxlOptions};
use hyperlora::sdxl::single_file::{owned_by, sgm_key, Component, UnetLayout};
use hyperlora::weights::StFile;
use std::collections::BTreeSet;

const SINGLE: &str = "sdxl-tiny-single-file/sdxl_tiny_sgm_fp16.safetensors";

fn layout() -> UnetLayout {
    UnetLayout { layers_per_block: 2, up_has_attention: vec![true, true, false] }
}

#[test]
fn key_table_covers_both_layouts_exactly() {
    let single = StFile::open(fixture(SINGLE)).unwrap();
    let parts = [
        (Component::Unet, "sdxl-tiny/unet/diffusion_pytorch_model.safetensors"),
        (Component::Vae, "sdxl-tiny/vae/diffusion_pytorch_model.safetensors"),
        (Component::TextEncoder, "sdxl-tiny/text_encoder/model.safetensors"),
        (Component::TextEncoder2, "sdxl-tiny/text_encoder_2/model.safetensors"),
    ];
    let mut total = 0;
    for (comp, folder_file) in parts {
        let folder = StFile::open(fixture(folder_file)).unwrap();
        let mut hit = BTreeSet::new();
        for k in folder.keys().into_iter().filter(|k| !k.ends_with("position_ids")) {
            let (sk, tf) = sgm_key(comp, &k, &layout(), 4).unwrap_or_else(|| panic!("{comp:?}: no single-file key for {k}"));
            let file_shape = single.shape(&sk).unwrap_or_else(|| panic!("{comp:?}: {k} → {sk} is not in the single file"));
            assert_eq!(tf.shape(file_shape), folder.shape(&k).unwrap(), "{k} → {sk}");
            // identical values after the fp16 cast and the transform
            let a = folder.tensor(&k, DType::F32, &Device::Cpu).unwrap();
            let b = tf.apply(single.tensor(&sk, DType::F32, &Device::Cpu).unwrap()).unwrap();
            assert_max_abs(&k, &b, &a, 0.0);
            hit.insert(sk);
            total += 1;
        }
        // the other direction: every single-file key of this component is reached
        let owned: BTreeSet<String> = single.keys().into_iter().filter(|k| owned_by(comp, k)).collect();
        let missed: Vec<_> = owned.difference(&hit).collect();
        assert!(missed.is_empty(), "{comp:?}: single-file keys no model key maps to: {missed:?}");
    }
    assert!(total > 900, "{total}");
    let leftover: Vec<String> = single
        .keys()
        .into_iter()
        .filter(|k| ![Component::Unet, Component::Vae, Component::TextEncoder, Component::TextEncoder2].iter().any(|c| owned_by(*c, k)))
        .collect();
    assert!(leftover.iter().all(|k| k.ends_with("logit_scale") || k.ends_with("position_ids")), "{leftover:?}");
}

fn unet_out(m: &Sdxl) -> Tensor {
    let r = "sdxl-tiny/reference/unet_forward.safetensors";
    m.unet.forward(&load(r, "input.sample"), 451.0, &load(r, "input.encoder_hidden_states"), &load(r, "input.text_embeds"), &load(r, "input.time_ids")).unwrap()
}

#[test]
fn single_file_loads_like_the_folder() {
    let opts = SdxlOptions::default();
    let folder = Sdxl::load(&fixture("sdxl-tiny"), None, &opts).unwrap();
    let single = Sdxl::load(&fixture(SINGLE), Some(&fixture("sdxl-tiny")), &opts).unwrap();
    assert_max_abs("unet", &unet_out(&single), &unet_out(&folder), 0.0);
    let lat = load("sdxl-tiny/reference/vae.safetensors", "decode.latents_scaled");
    assert_max_abs("vae", &single.vae.decode(&lat).unwrap(), &folder.vae.decode(&lat).unwrap(), 0.0);
    let (a, _) = single.encode_prompt("fcsks fxhks fhyks, a photo of a person").unwrap();
    let (b, _) = folder.encode_prompt("fcsks fxhks fhyks, a photo of a person").unwrap();
    assert_max_abs("prompt embeds", &a.embeds, &b.embeds, 0.0);
    assert_max_abs("pooled", &a.pooled, &b.pooled, 0.0);
    // and the folder's encoding is the reference's
    let r = "sdxl-tiny/reference/text_encoders.safetensors";
    assert_max_abs("prompt_embeds[0]", &b.embeds, &load(r, "prompt_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
    assert_max_abs("text_embeds[0]", &b.pooled, &load(r, "te2.text_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
}

#[test]
fn non_sdxl_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sd15.safetensors");
    let t = || RawTensor::scalar_f32(0.0);
    let entries = vec![
        ("model.diffusion_model.input_blocks.0.0.weight".to_string(), t()),
        ("first_stage_model.decoder.conv_in.weight".to_string(), t()),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight".to_string(), t()),
    ];
    std::fs::write(&p, hyperlora::output::safetensors_bytes(&entries, Default::default()).unwrap()).unwrap();
    let e = Sdxl::load(&p, Some(&fixture("sdxl-tiny")), &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("sd15.safetensors") && e.contains("SD1.x"), "{e}");
    let e = Sdxl::load(&fixture("hyperlora-tiny/lora_n1.safetensors"), Some(&fixture("sdxl-tiny")), &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("a LoRA file"), "{e}");
    let e = Sdxl::load(&fixture(SINGLE), None, &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("tokenizer"), "{e}");
    // a truncated single file
    let bytes = std::fs::read(fixture(SINGLE)).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = Sdxl::load(&cut, Some(&fixture("sdxl-tiny")), &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("cut.safetensors") && e.contains("truncated"), "{e}");
}
