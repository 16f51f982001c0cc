//! The HyperLoRA hypernetwork (spec §2): id projector + Perceiver resampler → coefficient tokens → LoRA from the
//! linear bases. `HyperLora::load` reads a release variant folder exactly as the official loader does (strict
//! key sets), deriving the configuration from tensor shapes.
pub mod config;
pub mod id_projector;
pub mod modules;
pub mod resampler;
pub mod synth;
pub mod trainable;

use crate::encode::features::FeatureSet;
use crate::error::{Error, Result};
use crate::files::provenance::hex;
use crate::weights::StFile;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use config::{HyperConfig, VariantConfigJson};
use id_projector::IdProjector;
use modules::ModuleSpec;
use resampler::{Resampler, ResamplerTrace};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use synth::Bases;
pub use synth::Branch;

/// The HyperLoRA variant an identity belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    /// Hex SHA-256 over the variant's files (see `HyperLora::load`).
    pub hash: String,
    /// Human name, usually the folder name (`sdxl_hyper_id_lora_v1_fidelity`).
    pub label: String,
}

/// The trigger phrase the released weights were trained with (spec §4.3).
pub const TRIGGER: &str = "fcsks fxhks fhyks";

/// The ratio alpha / rank that every HyperLoRA LoRA carries (alpha = rank · 0.5, spec §4.1).
pub const ALPHA_RATIO: f64 = 0.5;

pub const MODULES_JSON: &str = "hyper_lora_modules.json";
pub const BASES_FILE: &str = "hyper_lora_modules.safetensors";
pub const RESAMPLER_FILE: &str = "resampler.safetensors";
pub const ID_PROJECTOR_FILE: &str = "id_projector.safetensors";
pub const BASE_RESAMPLER_FILE: &str = "base_resampler.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// Images per resampler batch (bounds the attention buffers at real size).
const CHUNK: usize = 4;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the id projector and resamplers run. Bases always stay memory-mapped on the CPU.
    pub device: Device,
    /// Compute dtype of the id projector and resamplers (weights are converted on load).
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, dtype: DType::F32 }
    }
}

/// Intermediates of one ID forward, for parity tests.
pub struct IdTrace {
    pub id_tokens: Tensor,
    pub resampler: ResamplerTrace,
}

pub struct HyperLora {
    dir: PathBuf,
    config: HyperConfig,
    modules: Vec<ModuleSpec>,
    id_projector: IdProjector,
    resampler: Resampler,
    base_resampler: Option<Resampler>,
    base_resampler_config: Option<config::ResamplerConfig>,
    bases: Bases,
    variant: Variant,
    opts: LoadOptions,
}

fn strict_load<T>(
    file: &StFile,
    expected: &[crate::weights::Expected],
    hint: &str,
    opts: &LoadOptions,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    file.check_strict(expected, hint)?;
    let tensors = if crate::weights::is_headers_only() {
        // `doctor`: the same checks, the modules built on one-element stand-ins
        let mut m = std::collections::HashMap::new();
        for e in expected {
            m.insert(e.key.clone(), crate::weights::stand_in(&e.shape, opts.dtype, &opts.device)?);
        }
        m
    } else {
        file.load_all(expected.iter().map(|e| e.key.clone()), opts.dtype, &opts.device)?
    };
    let vb = VarBuilder::from_tensors(tensors, opts.dtype, &opts.device);
    build(vb).map_err(|e| Error::invalid(file.path(), format!("cannot build the module: {e}")))
}

/// Run `f` on images [s, s + len) in chunks of `CHUNK` and stack the f32 CPU results.
fn chunked(n: usize, mut f: impl FnMut(usize, usize) -> Result<Tensor>) -> Result<Tensor> {
    let mut outs = Vec::new();
    for s in (0..n).step_by(CHUNK) {
        outs.push(f(s, CHUNK.min(n - s))?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

impl HyperLora {
    /// Load a variant folder: `hyper_lora_modules.json`, `hyper_lora_modules.safetensors`, `resampler.safetensors`,
    /// `id_projector.safetensors`, and optionally `base_resampler.safetensors` and `config.json`.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::invalid(
                &dir,
                "not a folder (expected a HyperLoRA variant folder such as sdxl_hyper_id_lora_v1_fidelity/)",
            ));
        }
        let (modules, json_bytes) = modules::load(&dir.join(MODULES_JSON))?;
        let idp_file = StFile::open(dir.join(ID_PROJECTOR_FILE))?;
        let res_file = StFile::open(dir.join(RESAMPLER_FILE))?;
        // the bases are read for every synthesis for as long as the session lives: held in memory, not mapped, so a
        // file replaced or truncated meanwhile cannot kill the session with SIGBUS
        let bases_file = StFile::read(dir.join(BASES_FILE))?;
        // a NaN in a basis reaches every LoRA made from it: refused here, naming the tensor
        if let Some(key) = bases_file.first_non_finite() {
            return Err(Error::invalid(
                bases_file.path(),
                format!("`{key}` holds NaN or ±inf: every LoRA synthesized from it would too"),
            ));
        }
        let file_cfg = VariantConfigJson::load(&dir.join(CONFIG_FILE))?;
        let base_res_path = dir.join(BASE_RESAMPLER_FILE);
        let has_base = file_cfg.as_ref().and_then(|c| c.has_base_lora).unwrap_or_else(|| base_res_path.exists());
        let base_res_file = if has_base { Some(StFile::open(&base_res_path)?) } else { None };

        // --- configuration from shapes (spec §2.1), heads × dim_head from config.json or the release's 12 × 64
        let heads = file_cfg
            .as_ref()
            .and_then(|c| c.resampler.as_ref())
            .map(|r| (r.heads.unwrap_or(12), r.dim_head.unwrap_or(64)))
            .unwrap_or((12, 64));
        let width = idp_file.require_shape("2.weight", "id projector LayerNorm [W]")?.first().copied().unwrap_or(0);
        let idp_w = idp_file.require_shape("0.weight", "id projector Linear [T·W, E]")?.to_vec();
        if width == 0 || idp_w.len() != 2 || idp_w[0] % width != 0 {
            return Err(Error::invalid(
                idp_file.path(),
                format!("`0.weight` {idp_w:?} is not [T·W, E] for W = {width}"),
            ));
        }
        let q = 8 * modules.len();
        let res_cfg = config::derive_resampler(&res_file, heads, q)?;
        if res_cfg.n_conds != 2 {
            return Err(Error::Missing {
                file: res_file.path().to_path_buf(),
                key: "proj_in_2.weight".into(),
                expected: vec![res_cfg.dim, width],
                hint: " (the ID resampler takes ArcFace and CLIP tokens; only 'clip + arcface' works with the release)"
                    .into(),
            });
        }
        if res_cfg.embedding_dim != width {
            return Err(Error::invalid(
                res_file.path(),
                format!(
                    "`proj_in.weight` takes width {}, but the id projector makes tokens of width {width}",
                    res_cfg.embedding_dim
                ),
            ));
        }
        let rank =
            bases_file.require_shape("0.to_q.id_down_basis", "ID bases [K, in, r]")?.get(2).copied().unwrap_or(0);
        let base_rank = if has_base {
            Some(
                bases_file
                    .require_shape(
                        "0.to_q.base_down_basis",
                        "Base bases [K, in, r_b] (config/base_resampler say the variant has the Base branch)",
                    )?
                    .get(2)
                    .copied()
                    .unwrap_or(0),
            )
        } else {
            None
        };
        let config = HyperConfig {
            id_embed_dim: idp_w[1],
            num_id_tokens: idp_w[0] / width,
            embedding_dim: width,
            hyper_dim: res_cfg.output_dim,
            resampler: res_cfg.clone(),
            lora_rank: rank,
            base_lora_rank: base_rank,
            num_modules: modules.len(),
        };
        if let Some(fc) = &file_cfg {
            config::check_file_config(&dir.join(CONFIG_FILE), fc, &config)?;
        }

        // --- strict loads
        let id_projector =
            strict_load(&idp_file, &IdProjector::expected(&config), "", opts, |vb| IdProjector::new(&config, vb))?;
        let resampler =
            strict_load(&res_file, &Resampler::expected(&res_cfg), "", opts, |vb| Resampler::new(&res_cfg, vb))?;
        let base_hint = if has_base {
            ""
        } else {
            " — `base_*_basis` tensors belong to the Base branch: put base_resampler.safetensors beside them (or set has_base_lora in config.json)"
        };
        bases_file.check_strict(&Bases::expected(&modules, config.hyper_dim, rank, base_rank), base_hint)?;
        let mut base_resampler_config = None;
        let base_resampler = match &base_res_file {
            Some(f) => {
                let c = config::derive_resampler(f, heads, q)?;
                if c.n_conds != 1 || c.output_dim != config.hyper_dim || c.embedding_dim != width {
                    return Err(Error::invalid(
                        f.path(),
                        format!(
                            "a Base resampler takes CLIP tokens only and makes K = {} tokens of width W = {width}; found n_conds {}, K {}, W {}",
                            config.hyper_dim, c.n_conds, c.output_dim, c.embedding_dim
                        ),
                    ));
                }
                let r = strict_load(f, &Resampler::expected(&c), "", opts, |vb| Resampler::new(&c, vb))?;
                base_resampler_config = Some(c);
                Some(r)
            }
            None => None,
        };

        // --- variant identity: JSON + content fingerprints of every weight file
        let mut h = Sha256::new();
        h.update(&json_bytes);
        for f in [&idp_file, &res_file, &bases_file].into_iter().chain(base_res_file.as_ref()) {
            h.update(f.fingerprint());
        }
        let label = dir
            .canonicalize()
            .unwrap_or(dir.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let variant = Variant { hash: hex(&h.finalize()), label };
        let bases = Bases::new(bases_file, modules.clone(), config.hyper_dim, rank, base_rank);
        Ok(HyperLora {
            dir,
            config,
            modules,
            id_projector,
            resampler,
            base_resampler,
            base_resampler_config,
            bases,
            variant,
            opts: opts.clone(),
        })
    }

    pub fn config(&self) -> &HyperConfig {
        &self.config
    }
    pub fn modules(&self) -> &[ModuleSpec] {
        &self.modules
    }
    pub fn variant(&self) -> &Variant {
        &self.variant
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn has_base(&self) -> bool {
        self.base_resampler.is_some()
    }
    /// The Base resampler, when the variant has the Base branch.
    pub fn base_resampler(&self) -> Option<&Resampler> {
        self.base_resampler.as_ref()
    }
    pub fn bases(&self) -> &Bases {
        &self.bases
    }

    /// ArcFace embeddings [N, E] → ID tokens [N, T, W].
    pub fn id_tokens(&self, arcface: &Tensor) -> Result<Tensor> {
        let (_, e) = arcface.dims2()?;
        if e != self.config.id_embed_dim {
            return Err(Error::Mismatch(format!(
                "ArcFace embeddings have width {e}; this variant expects {}",
                self.config.id_embed_dim
            )));
        }
        Ok(self.id_projector.forward(&arcface.to_dtype(self.opts.dtype)?.to_device(&self.opts.device)?)?)
    }

    fn check_clip(&self, clip: &Tensor, what: &str) -> Result<()> {
        match clip.dims() {
            [_, _, w] if *w == self.config.embedding_dim => Ok(()),
            d => Err(Error::Mismatch(format!(
                "{what} has shape {d:?}; expected [N, tokens, {}] (CLIP hidden states)",
                self.config.embedding_dim
            ))),
        }
    }

    /// One ID forward with all intermediates (N images → raw [N, Q, K]).
    pub fn forward_id_traced(&self, arcface: &Tensor, clip: &Tensor) -> Result<IdTrace> {
        self.check_clip(clip, "CLIP features")?;
        if arcface.dim(0)? != clip.dim(0)? {
            return Err(Error::Mismatch(format!(
                "{} ArcFace embeddings but {} CLIP feature rows",
                arcface.dim(0)?,
                clip.dim(0)?
            )));
        }
        let id_tokens = self.id_tokens(arcface)?;
        let clip = clip.to_dtype(self.opts.dtype)?.to_device(&self.opts.device)?;
        let resampler = self.resampler.forward_traced(&id_tokens, Some(&clip), true)?;
        Ok(IdTrace { id_tokens, resampler })
    }

    /// Raw resampler outputs [N, Q, K] (f32, CPU) for N images, in chunks.
    pub fn raw_id(&self, arcface: &Tensor, clip: &Tensor) -> Result<Tensor> {
        self.check_clip(clip, "CLIP features")?;
        let n = arcface.dim(0)?;
        if n != clip.dim(0)? || n == 0 {
            return Err(Error::Mismatch(format!("{n} ArcFace embeddings but {} CLIP feature rows", clip.dim(0)?)));
        }
        chunked(n, |s, len| {
            let tokens = self.id_tokens(&arcface.narrow(0, s, len)?)?;
            let y = clip.narrow(0, s, len)?.to_dtype(self.opts.dtype)?.to_device(&self.opts.device)?;
            Ok(self.resampler.forward(&tokens, Some(&y))?)
        })
    }

    /// Raw Base-resampler outputs [M, Q, K] for M base-condition images' CLIP features.
    pub fn raw_base(&self, clip_base: &Tensor) -> Result<Tensor> {
        let br = self.base_resampler.as_ref().ok_or_else(|| {
            Error::Mismatch(format!(
                "{} has no Base branch (no {BASE_RESAMPLER_FILE}; the released variants have none), so Base features (clip_base, from `encode --base`) cannot be used: encode the photos without --base",
                self.dir.display()
            ))
        })?;
        self.check_clip(clip_base, "Base CLIP features")?;
        chunked(clip_base.dim(0)?, |s, len| {
            let x = clip_base.narrow(0, s, len)?.to_dtype(self.opts.dtype)?.to_device(&self.opts.device)?;
            Ok(br.forward(&x, None)?)
        })
    }

    /// The coefficient tokens of a feature set: the raw ID tokens fused over its photos (mean of the raw outputs),
    /// and the Base branch's with its photo count when the set has Base features. `identity/` makes an `Identity`
    /// of them.
    pub fn fused(&self, f: &FeatureSet) -> Result<(Tensor, Option<(Tensor, usize)>)> {
        let raw = resampler::fuse(&self.raw_id(&f.arcface, &f.clip)?)?;
        let base = match &f.clip_base {
            Some(cb) => Some((resampler::fuse(&self.raw_base(cb)?)?, cb.dim(0)?)),
            None => None,
        };
        Ok((raw, base))
    }
}
