//! Scheduler tables and 20-step runs against diffusers (fixture README §4, `schedulers.safetensors`).
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use hyperlora::sdxl::scheduler::{Sampler, SamplerKind, SchedulerConfig};
use hyperlora::weights::StFile;

const R: &str = "sdxl-tiny/reference/schedulers.safetensors";

fn cfg() -> SchedulerConfig {
    SchedulerConfig::load(&fixture("sdxl-tiny/scheduler/scheduler_config.json")).unwrap()
}

fn assert_rel(name: &str, got: &[f64], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w = *w as f64;
        assert!((g - w).abs() <= tol * w.abs().max(1e-12), "{name}[{i}]: {g} vs {w}");
    }
}

#[test]
fn beta_tables_match() {
    let f = StFile::open(fixture(R)).unwrap();
    assert_rel("betas", &cfg().betas(), &f.to_f32_vec("betas").unwrap(), 1e-5);
    assert_rel("alphas_cumprod", &cfg().alphas_cumprod(), &f.to_f32_vec("alphas_cumprod").unwrap(), 1e-5);
}

#[test]
fn timestep_and_sigma_tables_match() {
    let f = StFile::open(fixture(R)).unwrap();
    for (kind, name) in [
        (SamplerKind::Euler, "euler"),
        (SamplerKind::EulerA, "euler_ancestral"),
        (SamplerKind::Ddim, "ddim"),
        (SamplerKind::DpmPp2mKarras, "dpmpp_2m_karras"),
    ] {
        let s = Sampler::new(kind, &cfg(), 20).unwrap();
        let want: Vec<f64> =
            f.to_i64_vec(&format!("{name}.timesteps")).unwrap().into_iter().map(|t| t as f64).collect();
        assert_eq!(s.timesteps(), want.as_slice(), "{name}.timesteps");
        if kind != SamplerKind::Ddim {
            assert_rel(&format!("{name}.sigmas"), s.sigmas(), &f.to_f32_vec(&format!("{name}.sigmas")).unwrap(), 1e-5);
        }
    }
    // init_noise_sigma from schedulers.json
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/reference/schedulers.json")).unwrap())
            .unwrap();
    for (kind, name) in
        [(SamplerKind::Euler, "euler"), (SamplerKind::Ddim, "ddim"), (SamplerKind::DpmPp2mKarras, "dpmpp_2m_karras")]
    {
        let want = json[name]["init_noise_sigma"].as_f64().unwrap();
        let got = Sampler::new(kind, &cfg(), 20).unwrap().init_noise_sigma();
        assert!((got - want).abs() < 1e-5 * want, "{name}: init_noise_sigma {got} vs {want}");
    }
    // the 3-step DPM++ table of the sampling fixture
    let s = Sampler::new(SamplerKind::DpmPp2mKarras, &cfg(), 3).unwrap();
    assert_eq!(s.timesteps(), &[999.0, 427.0, 0.0]);
}

/// The synthetic ε-model of the fixture: ε(x_in, t) = 0.5·tanh(x_in) + 0.1·cos(t/100).
fn eps(x_in: &Tensor, t: f64) -> Tensor {
    ((x_in.tanh().unwrap() * 0.5).unwrap() + 0.1 * (t / 100.0).cos()).unwrap()
}

#[test]
fn twenty_step_runs_match() {
    let f = StFile::open(fixture(R)).unwrap();
    let get = |k: &str| f.tensor(k, DType::F32, &Device::Cpu).unwrap();
    for (kind, name) in [
        (SamplerKind::Euler, "euler"),
        (SamplerKind::EulerA, "euler_ancestral"),
        (SamplerKind::Ddim, "ddim"),
        (SamplerKind::DpmPp2mKarras, "dpmpp_2m_karras"),
    ] {
        let mut s = Sampler::new(kind, &cfg(), 20).unwrap();
        let mut x = get(&format!("{name}.x_init"));
        let inputs = get(&format!("{name}.model_inputs"));
        let outputs = get(&format!("{name}.model_outputs"));
        let after = get(&format!("{name}.x_after_step"));
        for i in 0..20 {
            let t = s.timesteps()[i];
            let x_in = s.scale_model_input(&x, i).unwrap();
            assert_max_abs(&format!("{name} step {i} model input"), &x_in, &inputs.get(i).unwrap(), 1e-4);
            let e = eps(&x_in, t);
            assert_max_abs(&format!("{name} step {i} model output"), &e, &outputs.get(i).unwrap(), 1e-4);
            let noise = s.needs_noise().then(|| get(&format!("{name}.step_noise")).get(i).unwrap());
            x = s.step(&e, i, &x, noise.as_ref()).unwrap();
            assert_max_abs(&format!("{name} step {i} x"), &x, &after.get(i).unwrap(), 1e-4);
        }
    }
}

#[test]
fn bad_sampler_settings_are_errors() {
    assert!(Sampler::new(SamplerKind::Euler, &cfg(), 0).is_err());
    assert!(SamplerKind::parse("k_lms").unwrap_err().to_string().contains("dpmpp_2m_karras"));
    let mut s = Sampler::new(SamplerKind::EulerA, &cfg(), 2).unwrap();
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(s.step(&x, 0, &x, None).unwrap_err().to_string().contains("noise"));
}

/// img2img's start as diffusers' `get_timesteps` for the four samplers: `int(steps · strength)` steps run, the last
/// ones of the same schedule txt2img uses; the latents are noised to the first of them with the sampler's
/// `add_noise` (z + σ·n for Euler, √ᾱ·z + √(1 − ᾱ)·n for DDIM, the same in σ terms for DPM++). Strength 1.0 runs every step but, as in
/// diffusers, still starts from the image: z + σ₀·n, not txt2img's n·init_noise_sigma.
#[test]
fn img2img_start_step_and_noise_follow_diffusers() {
    use hyperlora::sdxl::pipeline::img2img_start;
    for (steps, strength, run) in
        [(10, 0.3, 3), (10, 0.45, 4), (10, 0.5, 5), (20, 0.999, 19), (20, 1.0, 20), (8, 0.25, 2), (30, 0.6, 18)]
    {
        assert_eq!(img2img_start(steps, strength).unwrap(), steps - run, "{steps} steps at strength {strength}");
    }
    let e = img2img_start(10, 0.05).unwrap_err().to_string();
    assert!(e.contains("0 steps") && e.contains("strength 0.05"), "{e}");
    let z = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap();
    let n = Tensor::new(&[[1.0f32, 0.5], [-0.5, -2.0]], &Device::Cpu).unwrap();
    let acp = cfg().alphas_cumprod();
    for kind in [SamplerKind::Euler, SamplerKind::EulerA, SamplerKind::Ddim, SamplerKind::DpmPp2mKarras] {
        let s = Sampler::new(kind, &cfg(), 10).unwrap();
        assert_eq!(s.timesteps().len(), 10, "{kind:?}");
        for strength in [0.3, 0.5, 1.0] {
            let start = img2img_start(10, strength).unwrap();
            let got = s.add_noise(&z, &n, start).unwrap().to_dtype(DType::F64).unwrap();
            let sigma = s.sigmas().get(start).copied().unwrap_or(f64::NAN); // DDIM has no σ table
            let (a, b) = match kind {
                SamplerKind::Ddim => {
                    let ab = acp[s.timesteps()[start] as usize];
                    (ab.sqrt(), (1.0 - ab).sqrt())
                }
                // DPM++ works on unscaled (variance-preserving) latents: α = 1/√(σ²+1), σ·α
                SamplerKind::DpmPp2mKarras => {
                    (1.0 / (sigma * sigma + 1.0).sqrt(), sigma / (sigma * sigma + 1.0).sqrt())
                }
                _ => (1.0, sigma),
            };
            let want = ((z.to_dtype(DType::F64).unwrap() * a).unwrap()
                + (n.to_dtype(DType::F64).unwrap() * b).unwrap())
            .unwrap();
            assert_max_abs(&format!("{kind:?} add_noise at strength {strength}"), &got, &want, 1e-5);
        }
        // strength 1.0 starts at the first timestep of txt2img's schedule, but from the image plus noise
        let start = img2img_start(10, 1.0).unwrap();
        assert_eq!(start, 0);
        let txt2img = (n.to_dtype(DType::F64).unwrap() * s.init_noise_sigma()).unwrap();
        let img2img = s.add_noise(&z, &n, 0).unwrap().to_dtype(DType::F64).unwrap();
        assert!(max_abs(&img2img, &txt2img).0 > 0.05, "{kind:?}: the image is still in the start latents");
    }
}
