//! The UNet with SDXL's full conditioning against diffusers (fixture README §4, `unet_forward*.safetensors`).
mod common;
use candle_core::{DType, Device};
use common::*;
use hyperlora::sdxl::unet::{load_unet, UNetTrace};
use hyperlora::weights::StFile;

const R: &str = "sdxl-tiny/reference/unet_forward.safetensors";

#[test]
fn unet_forward_matches_with_intermediates() {
    let unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let t = StFile::open(fixture(R)).unwrap().to_i64_vec("input.timestep").unwrap()[0] as f64;
    let mut trace = UNetTrace::default();
    let out = unet
        .forward_traced(&load(R, "input.sample"), t, &load(R, "input.encoder_hidden_states"), &load(R, "input.text_embeds"), &load(R, "input.time_ids"), Some(&mut trace))
        .unwrap();
    assert_max_abs("time_embedding", trace.time_embedding.as_ref().unwrap(), &load(R, "intermediate.time_embedding"), 1e-4);
    assert_max_abs("add_embedding", trace.add_embedding.as_ref().unwrap(), &load(R, "intermediate.add_embedding"), 1e-4);
    assert_eq!(trace.blocks.len(), 10);
    for (name, got) in &trace.blocks {
        assert_max_abs(name, got, &load(R, &format!("intermediate.{name}")), 1e-4);
    }
    assert_max_abs("noise_pred", &out, &load(R, "output.noise_pred"), 1e-4);
}
