//! Hyper-parameters of a HyperLoRA variant. The release ships no config (spec §2.1): everything is derived from
//! tensor shapes, except heads × dim_head, which shapes cannot separate (default 12 × 64, or an optional
//! `config.json` beside the weights, as the tiny fixtures have).
use crate::error::{Error, Result};
use crate::weights::StFile;
use serde::Deserialize;
use std::path::Path;

/// The Perceiver resampler (spec §2.2/§2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResamplerConfig {
    /// Latent width D.
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
    /// Q = 8 · modules.
    pub num_queries: usize,
    /// Input width of `proj_in` / `proj_in_2` (W, the CLIP hidden size).
    pub embedding_dim: usize,
    /// K, the `proj_out` width.
    pub output_dim: usize,
    /// 2 for the ID resampler (ArcFace tokens + CLIP tokens), 1 for the Base resampler (CLIP only).
    pub n_conds: usize,
}

impl ResamplerConfig {
    pub fn inner_dim(&self) -> usize {
        self.heads * self.dim_head
    }
}

/// Everything needed to build a variant's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperConfig {
    /// E, the ArcFace embedding width.
    pub id_embed_dim: usize,
    /// T, tokens produced by the id projector.
    pub num_id_tokens: usize,
    /// W, the CLIP vision hidden size (width of ID tokens and CLIP tokens).
    pub embedding_dim: usize,
    pub resampler: ResamplerConfig,
    /// K.
    pub hyper_dim: usize,
    /// r of the ID LoRA.
    pub lora_rank: usize,
    /// r_b of the Base LoRA, when the variant has the Base branch.
    pub base_lora_rank: Option<usize>,
    pub num_modules: usize,
}

impl HyperConfig {
    /// The released configuration (spec §2.1) for `num_modules` modules.
    pub fn release(num_modules: usize) -> Self {
        HyperConfig {
            id_embed_dim: 512,
            num_id_tokens: 16,
            embedding_dim: 1024,
            resampler: ResamplerConfig {
                dim: 1024,
                depth: 4,
                heads: 12,
                dim_head: 64,
                ff_mult: 4,
                num_queries: 8 * num_modules,
                embedding_dim: 1024,
                output_dim: 128,
                n_conds: 2,
            },
            hyper_dim: 128,
            lora_rank: 8,
            base_lora_rank: None,
            num_modules,
        }
    }

    /// The demo set's small configuration (`--dims tiny`) for `num_modules` modules and CLIP width `embedding_dim`.
    pub fn tiny(num_modules: usize, embedding_dim: usize) -> Self {
        HyperConfig {
            id_embed_dim: 512,
            num_id_tokens: 4,
            embedding_dim,
            resampler: ResamplerConfig {
                dim: 64,
                depth: 2,
                heads: 2,
                dim_head: 32,
                ff_mult: 4,
                num_queries: 8 * num_modules,
                embedding_dim,
                output_dim: 16,
                n_conds: 2,
            },
            hyper_dim: 16,
            lora_rank: 4,
            base_lora_rank: None,
            num_modules,
        }
    }

    pub fn has_base(&self) -> bool {
        self.base_lora_rank.is_some()
    }

    /// The variant's `config.json` (what `VariantConfigJson` reads back and cross-checks).
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.resampler;
        let mut c = serde_json::json!({
            "encoder_types": ["clip", "arcface"],
            "id_embed_dim": self.id_embed_dim, "num_id_tokens": self.num_id_tokens, "embedding_dim": self.embedding_dim,
            "resampler": { "dim": r.dim, "dim_head": r.dim_head, "heads": r.heads, "depth": r.depth, "ff_mult": r.ff_mult },
            "hyper_dim": self.hyper_dim, "lora_rank": self.lora_rank, "has_base_lora": self.has_base(),
            "num_modules": self.num_modules, "num_queries": r.num_queries,
        });
        if let Some(b) = self.base_lora_rank {
            c["base_lora_rank"] = b.into();
        }
        c
    }
}

/// The optional `config.json` (not a release file). Only heads/dim_head and `has_base_lora` are taken from it;
/// every other field present is cross-checked against the shapes.
#[derive(Debug, Default, Deserialize)]
pub struct VariantConfigJson {
    pub id_embed_dim: Option<usize>,
    pub num_id_tokens: Option<usize>,
    pub embedding_dim: Option<usize>,
    pub resampler: Option<FileResampler>,
    pub hyper_dim: Option<usize>,
    pub lora_rank: Option<usize>,
    pub has_base_lora: Option<bool>,
    pub num_modules: Option<usize>,
    pub num_queries: Option<usize>,
    pub base_lora_rank: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FileResampler {
    pub dim: Option<usize>,
    pub dim_head: Option<usize>,
    pub heads: Option<usize>,
    pub depth: Option<usize>,
    pub ff_mult: Option<usize>,
}

impl VariantConfigJson {
    pub fn load(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::invalid(path, format!("not a valid config: {e}")))
    }
}

fn dim(file: &StFile, key: &str, axis: usize, what: &str) -> Result<usize> {
    let shape = file.require_shape(key, what)?;
    shape.get(axis).copied().ok_or_else(|| {
        Error::invalid(
            file.path(),
            format!("tensor `{key}` has shape {shape:?}; expected at least {} dimensions ({what})", axis + 1),
        )
    })
}

/// Derive the configuration of the ID resampler or Base resampler from its file.
pub fn derive_resampler(file: &StFile, heads_dim_head: (usize, usize), num_queries: usize) -> Result<ResamplerConfig> {
    let dim_ = dim(file, "latents", 2, "resampler latents [1, Q, D]")?;
    let q = dim(file, "latents", 1, "resampler latents [1, Q, D]")?;
    if dim_ == 0 || q == 0 {
        return Err(Error::invalid(file.path(), format!("`latents` has a zero dimension ([1, {q}, {dim_}])")));
    }
    if q != num_queries {
        return Err(Error::invalid(
            file.path(),
            format!("`latents` has {q} queries but hyper_lora_modules.json lists {} modules (8 queries each = {num_queries})", num_queries / 8),
        ));
    }
    let embedding_dim = dim(file, "proj_in.weight", 1, "proj_in [D, W]")?;
    let output_dim = dim(file, "proj_out.weight", 0, "proj_out [K, D]")?;
    let mut depth = 0;
    while file.contains(&format!("layers.{depth}.attn1.to_q.weight")) {
        depth += 1;
    }
    if depth == 0 {
        return Err(Error::Missing {
            file: file.path().to_path_buf(),
            key: "layers.0.attn1.to_q.weight".into(),
            expected: vec![],
            hint: " (a resampler has at least one layer)".into(),
        });
    }
    let inner = dim(file, "layers.0.attn1.to_q.weight", 0, "attention inner width")?;
    let (heads, dim_head) = heads_dim_head;
    if heads == 0 || dim_head == 0 || heads.checked_mul(dim_head).is_none_or(|p| p > 1 << 20) {
        return Err(Error::invalid(
            file.path(),
            format!("resampler heads {heads} × dim_head {dim_head} is not a usable attention width (config.json)"),
        ));
    }
    if heads * dim_head != inner {
        return Err(Error::invalid(
            file.path(),
            format!(
                "attention inner width is {inner}, but heads × dim_head = {heads} × {dim_head} = {}; put a config.json with resampler.heads and resampler.dim_head beside the weights",
                heads * dim_head
            ),
        ));
    }
    let ff_hidden = dim(file, "layers.0.ff.net.0.proj.weight", 0, "feed-forward hidden width")?;
    if ff_hidden % dim_ != 0 {
        return Err(Error::invalid(
            file.path(),
            format!("feed-forward width {ff_hidden} is not a multiple of the latent width {dim_}"),
        ));
    }
    let n_conds = if file.contains("proj_in_2.weight") { 2 } else { 1 };
    Ok(ResamplerConfig {
        dim: dim_,
        depth,
        heads,
        dim_head,
        ff_mult: ff_hidden / dim_,
        num_queries,
        embedding_dim,
        output_dim,
        n_conds,
    })
}

/// Cross-check the optional config.json against what the shapes say.
pub fn check_file_config(path: &Path, fc: &VariantConfigJson, c: &HyperConfig) -> Result<()> {
    let r = fc.resampler.as_ref();
    let pairs: [(&str, Option<usize>, usize); 12] = [
        ("id_embed_dim", fc.id_embed_dim, c.id_embed_dim),
        ("num_id_tokens", fc.num_id_tokens, c.num_id_tokens),
        ("embedding_dim", fc.embedding_dim, c.embedding_dim),
        ("resampler.dim", r.and_then(|r| r.dim), c.resampler.dim),
        ("resampler.depth", r.and_then(|r| r.depth), c.resampler.depth),
        ("resampler.ff_mult", r.and_then(|r| r.ff_mult), c.resampler.ff_mult),
        ("hyper_dim", fc.hyper_dim, c.hyper_dim),
        ("lora_rank", fc.lora_rank, c.lora_rank),
        ("num_modules", fc.num_modules, c.num_modules),
        ("num_queries", fc.num_queries, c.resampler.num_queries),
        ("base_lora_rank", fc.base_lora_rank, c.base_lora_rank.unwrap_or(0)),
        ("resampler.heads×dim_head", r.and_then(|r| Some(r.heads? * r.dim_head?)), c.resampler.inner_dim()),
    ];
    for (field, stated, derived) in pairs {
        if let Some(s) = stated {
            if s != derived && !(field == "base_lora_rank" && c.base_lora_rank.is_none()) {
                return Err(Error::invalid(path, format!("`{field}` is {s}, but the weight files say {derived}")));
            }
        }
    }
    Ok(())
}
