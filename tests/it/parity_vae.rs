//! The SDXL VAE against diffusers (fixture README §4, `vae.safetensors`).
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::sdxl::vae::load_vae;

const R: &str = "sdxl-tiny/reference/vae.safetensors";

#[test]
fn decode_and_encode_match() {
    let vae = load_vae(&fixture("sdxl-tiny/vae"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.config().scaling_factor, 0.13025);
    let img = vae.decode(&load(R, "decode.latents_scaled")).unwrap();
    assert_max_abs("decode.image", &img, &load(R, "decode.image"), 1e-4);
    let p = vae.encode(&load(R, "encode.image")).unwrap();
    assert_max_abs("encode.mean", &p.mean, &load(R, "encode.mean"), 1e-4);
    assert_max_abs("encode.logvar", &p.logvar, &load(R, "encode.logvar"), 1e-4);
    let z = vae.encode_latents(&load(R, "encode.image"), None).unwrap();
    assert_max_abs("encode.mean_times_scaling_factor", &z, &load(R, "encode.mean_times_scaling_factor"), 1e-4);
}
