//! A complete 3-step DPM++ 2M Karras text-to-image run with CFG 5 and the VAE decode, against
//! `StableDiffusionXLPipeline` (fixture README §4, `sampling_dpmpp2m_karras_3steps.safetensors`).
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::sdxl::pipeline::{denoise, time_ids, Conditioning, SampleSpec};
use hyperlora::sdxl::scheduler::{Sampler, SamplerKind, SchedulerConfig};
use hyperlora::sdxl::{unet::load_unet, vae::load_vae};
use std::ops::ControlFlow;

const R: &str = "sdxl-tiny/reference/sampling_dpmpp2m_karras_3steps.safetensors";

#[test]
fn three_step_cfg_run_matches() {
    let unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let vae = load_vae(&fixture("sdxl-tiny/vae"), DType::F32, &Device::Cpu).unwrap();
    let cfg = SchedulerConfig::load(&fixture("sdxl-tiny/scheduler/scheduler_config.json")).unwrap();
    let cond = Conditioning { embeds: load(R, "prompt_embeds"), pooled: load(R, "pooled_prompt_embeds") };
    let uncond =
        Conditioning { embeds: load(R, "negative_prompt_embeds"), pooled: load(R, "negative_pooled_prompt_embeds") };
    let tids = time_ids(128, 128, &Device::Cpu).unwrap();
    assert_max_abs("add_time_ids", &tids, &load(R, "add_time_ids"), 0.0);
    let spec = SampleSpec {
        sampler: SamplerKind::DpmPp2mKarras,
        steps: 3,
        cfg: 5.0,
        cond: &cond,
        uncond: &uncond,
        time_ids: tids,
        strength: 1.0,
    };
    let mut sampler = Sampler::new(SamplerKind::DpmPp2mKarras, &cfg, 3).unwrap();
    let x = (load(R, "noise") * sampler.init_noise_sigma()).unwrap();
    assert_max_abs("x_init", &x, &load(R, "x_init"), 1e-6);
    let mut steps = 0;
    let out = denoise(&unet, &mut sampler, x, &spec, 0, &mut |_| unreachable!("DPM++ draws no noise"), &mut |p, tr| {
        let tr = tr.unwrap();
        let i = p.step - 1;
        assert_max_abs(&format!("step{i}.eps_uncond"), &tr.eps_uncond, &load(R, &format!("step{i}.eps_uncond")), 1e-3);
        assert_max_abs(&format!("step{i}.eps_cond"), &tr.eps_cond, &load(R, &format!("step{i}.eps_cond")), 1e-3);
        assert_max_abs(&format!("step{i}.x_after"), &tr.x_after, &load(R, &format!("step{i}.x_after")), 1e-3);
        steps += 1;
        ControlFlow::Continue(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(steps, 3);
    assert_max_abs("final_latents", &out, &load(R, "final_latents"), 1e-3);
    assert_max_abs("decoded", &vae.decode(&out).unwrap(), &load(R, "decoded"), 1e-3);
}

#[test]
fn progress_can_cancel() {
    let unet = load_unet(&fixture("sdxl-tiny/unet"), DType::F32, &Device::Cpu).unwrap();
    let cfg = SchedulerConfig::default();
    let cond = Conditioning { embeds: load(R, "prompt_embeds"), pooled: load(R, "pooled_prompt_embeds") };
    let uncond = Conditioning::zeros_like(&cond).unwrap();
    let spec = SampleSpec {
        sampler: SamplerKind::Euler,
        steps: 10,
        cfg: 5.0,
        cond: &cond,
        uncond: &uncond,
        time_ids: time_ids(128, 128, &Device::Cpu).unwrap(),
        strength: 1.0,
    };
    let mut seen = 0;
    let r = hyperlora::sdxl::pipeline::sample(&unet, &cfg, &spec, &load(R, "noise"), None, &[1], &mut |p, _| {
        seen = p.step;
        if p.step == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(r.is_none());
    assert_eq!(seen, 2);
}

/// The same run through `Sdxl::generate` from the prompt text: both tokenizers and text encoders, the sampling
/// and the decode in one call, from the reference's noise (prompt 0, negative prompt 2 of `prompts.json`).
#[test]
fn generate_from_prompt_text_matches_the_pipeline() {
    use hyperlora::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
    let m = Sdxl::load(&fixture("sdxl-tiny"), None, &SdxlOptions::default()).unwrap();
    let prompts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/reference/prompts.json")).unwrap()).unwrap();
    let text = |i: usize| prompts["prompts"][i].as_str().unwrap().to_string();
    let req = GenerateRequest {
        negative: Some(text(2)),
        steps: 3,
        cfg: 5.0,
        sampler: SamplerKind::DpmPp2mKarras,
        width: 128,
        height: 128,
        init_noise: Some(load(R, "noise")),
        ..GenerateRequest::new(text(0))
    };
    let mut steps = 0;
    let out = m
        .generate(&req, &mut |p, tr| {
            let i = p.step - 1;
            let tr = tr.unwrap();
            assert_max_abs(&format!("step{i}.x_after"), &tr.x_after, &load(R, &format!("step{i}.x_after")), 1e-3);
            steps += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(steps, 3);
    assert_max_abs("final_latents", &out.latents, &load(R, "final_latents"), 1e-3);
    assert_max_abs("decoded", &out.images[0].unsqueeze(0).unwrap(), &load(R, "decoded"), 1e-3);
}

/// img2img against diffusers' own `StableDiffusionXLImg2ImgPipeline` (fixture README, the img2img section): the
/// stored noise and init pixels, 10 steps at strength 0.45 (4 run), CFG 5, both samplers. Final latents within
/// 1e-3, the decoded image within 1 level of the pipeline's PNG.
#[test]
fn img2img_matches_the_diffusers_pipeline() {
    use hyperlora::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
    const I: &str = "sdxl-tiny/reference/img2img/img2img.safetensors";
    let m = Sdxl::load(&fixture("sdxl-tiny"), None, &SdxlOptions::default()).unwrap();
    let prompts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/reference/prompts.json")).unwrap()).unwrap();
    let text = |i: usize| prompts["prompts"][i].as_str().unwrap().to_string();
    for (name, sampler) in [("euler", SamplerKind::Euler), ("dpmpp_2m_karras", SamplerKind::DpmPp2mKarras)] {
        let req = GenerateRequest {
            negative: Some(text(2)),
            steps: 10,
            cfg: 5.0,
            sampler,
            width: 128,
            height: 128,
            init_noise: Some(load(I, "input.noise")),
            init_image: Some((load(I, "input.init_pixels"), 0.45)),
            ..GenerateRequest::new(text(0))
        };
        let mut steps = 0;
        let out = m
            .generate(&req, &mut |_, _| {
                steps += 1;
                ControlFlow::Continue(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(steps, 4, "{name}: int(10 · 0.45) steps run");
        assert_max_abs(
            &format!("{name}.final_latents"),
            &out.latents,
            &load(I, &format!("{name}.final_latents")),
            1e-3,
        );
        assert_max_abs(
            &format!("{name}.decoded"),
            &out.images[0].unsqueeze(0).unwrap(),
            &load(I, &format!("{name}.decoded")),
            1e-3,
        );
        // the 8-bit image against the pipeline's own PNG: within one level everywhere
        let (want, w, h, _) =
            hyperlora::files::png_meta::read_png(&fixture(&format!("sdxl-tiny/reference/img2img/{name}.png"))).unwrap();
        assert_eq!((w, h), (128, 128));
        let ours = ((out.images[0].clone() / 2.0).unwrap() + 0.5).unwrap().clamp(0.0, 1.0).unwrap();
        let ours = (ours * 255.0).unwrap().round().unwrap().permute((1, 2, 0)).unwrap().flatten_all().unwrap();
        let ours = ours.to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), want.len());
        let worst = ours.iter().zip(&want).map(|(a, b)| (a - *b as f32).abs()).fold(0f32, f32::max);
        assert!(worst <= 1.0 && ours.iter().all(|v| v.is_finite()), "{name}: {worst} levels from the pipeline's PNG");
    }
}
