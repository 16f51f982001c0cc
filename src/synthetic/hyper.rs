//! Deterministic random-weight HyperLoRA variants in the real file layout, for real-size tests, benchmarks and
//! the demo. The same key tables that drive strict loading drive the synthesis, so the files always load.
use crate::error::{Error, Result};
use crate::files::output::{stream_safetensors, StreamedTensor};
use crate::hyper::config::HyperConfig;
use crate::hyper::id_projector::IdProjector;
use crate::hyper::modules::{self, ModuleSpec};
use crate::hyper::resampler::Resampler;
use crate::hyper::synth::Bases;
use crate::hyper::{BASES_FILE, BASE_RESAMPLER_FILE, CONFIG_FILE, ID_PROJECTOR_FILE, MODULES_JSON, RESAMPLER_FILE};
use crate::rng::Rng;
use crate::weights::Expected;
use std::path::Path;

fn key_seed(seed: u64, key: &str) -> u64 {
    key.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// (center, amplitude) of the uniform distribution used for a tensor, chosen so that activations stay O(1).
fn init_for(key: &str, shape: &[usize]) -> (f32, f32) {
    let is_norm_weight = key.ends_with(".weight") && (key.contains("norm") || key == "2.weight");
    if is_norm_weight {
        (1.0, 0.05)
    } else if key.ends_with("bias") {
        (0.0, 0.02)
    } else if key == "latents" {
        (0.0, 1.0)
    } else if key.ends_with("_basis") {
        (0.0, 0.05)
    } else {
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        (0.0, 1.0 / fan_in.sqrt())
    }
}

/// Write one safetensors file of F16 tensors, streaming (multi-GB files never sit in memory twice).
pub fn write_f16_file(path: &Path, tensors: &[Expected], seed: u64) -> Result<()> {
    let mut sorted: Vec<&Expected> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let layout: Vec<StreamedTensor> = sorted
        .iter()
        .map(|t| StreamedTensor { name: t.key.clone(), dtype: safetensors::Dtype::F16, shape: t.shape.clone() })
        .collect();
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    let (mut buf32, mut buf16) = (Vec::new(), Vec::new());
    stream_safetensors(path, &layout, &Default::default(), |i, out| {
        let t = sorted[i];
        let n: usize = t.shape.iter().product();
        let (c, a) = init_for(&t.key, &t.shape);
        let mut rng = Rng::new(key_seed(seed, &t.key));
        const CHUNK: usize = 1 << 20;
        let mut left = n;
        while left > 0 {
            let m = left.min(CHUNK);
            buf32.resize(m, 0f32);
            buf16.resize(m, half::f16::ZERO);
            rng.fill(&mut buf32, c, a);
            half::slice::HalfFloatSliceExt::convert_from_f32_slice(buf16.as_mut_slice(), &buf32);
            out.write_all(crate::weights::as_bytes(&buf16)).map_err(|e| Error::io(path, e))?;
            left -= m;
        }
        Ok(())
    })
}

/// Write a complete variant folder for `cfg` and `modules`. `with_config` writes a `config.json` (the release has
/// none; then heads × dim_head must be 12 × 64).
pub fn write_variant(
    dir: &Path,
    cfg: &HyperConfig,
    modules_: &[ModuleSpec],
    seed: u64,
    with_config: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = modules::to_json(modules_);
    std::fs::write(dir.join(MODULES_JSON), json).map_err(|e| Error::io(dir.join(MODULES_JSON), e))?;
    write_f16_file(&dir.join(ID_PROJECTOR_FILE), &IdProjector::expected(cfg), seed)?;
    write_f16_file(&dir.join(RESAMPLER_FILE), &Resampler::expected(&cfg.resampler), seed.wrapping_add(1))?;
    write_f16_file(
        &dir.join(BASES_FILE),
        &Bases::expected(modules_, cfg.hyper_dim, cfg.lora_rank, cfg.base_lora_rank),
        seed.wrapping_add(2),
    )?;
    if cfg.has_base() {
        let base = crate::hyper::config::ResamplerConfig { n_conds: 1, ..cfg.resampler.clone() };
        write_f16_file(&dir.join(BASE_RESAMPLER_FILE), &Resampler::expected(&base), seed.wrapping_add(3))?;
    }
    if with_config {
        let c = cfg.to_json();
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(&c).expect("json"))
            .map_err(|e| Error::io(dir.join(CONFIG_FILE), e))?;
    }
    Ok(())
}

/// Random unit ArcFace embeddings [n, e] and CLIP-like hidden states [n, tokens, w] (f32).
pub fn random_features(
    n: usize,
    e: usize,
    tokens: usize,
    w: usize,
    seed: u64,
) -> Result<crate::encode::features::FeatureSet> {
    use candle_core::{Device, Tensor};
    let mut rng = Rng::new(seed);
    let mut a = vec![0f32; n * e];
    rng.fill(&mut a, 0.0, 1.0);
    for row in a.chunks_mut(e) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let mut c = vec![0f32; n * tokens * w];
    rng.fill(&mut c, 0.0, 1.5);
    let sources = (0..n)
        .map(|i| crate::identity::Source {
            hash: format!("{:016x}", key_seed(seed, &i.to_string())),
            label: format!("random#{i}"),
        })
        .collect();
    crate::encode::features::FeatureSet::new(
        Tensor::from_vec(a, (n, e), &Device::Cpu)?,
        Tensor::from_vec(c, (n, tokens, w), &Device::Cpu)?,
        None,
        sources,
    )
}
