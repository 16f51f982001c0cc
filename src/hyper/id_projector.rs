//! `id_projector.safetensors`: `Sequential(Linear(E → T·W), Reshape(-1, T, W), LayerNorm(W))` (spec §2.2).
use super::config::HyperConfig;
use crate::nn::{layer_norm, LayerNorm};
use crate::weights::Expected;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

pub struct IdProjector {
    proj: Linear,
    norm: LayerNorm,
    tokens: usize,
    width: usize,
}

impl IdProjector {
    pub fn new(c: &HyperConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: linear(c.id_embed_dim, c.num_id_tokens * c.embedding_dim, vb.pp("0"))?, // 0.weight, 0.bias
            norm: layer_norm(c.embedding_dim, 1e-5, vb.pp("2"))?,                         // 2.weight, 2.bias
            tokens: c.num_id_tokens,
            width: c.embedding_dim,
        })
    }

    pub fn expected(c: &HyperConfig) -> Vec<Expected> {
        let tw = c.num_id_tokens * c.embedding_dim;
        vec![
            Expected::new("0.weight", &[tw, c.id_embed_dim]),
            Expected::new("0.bias", &[tw]),
            Expected::new("2.weight", &[c.embedding_dim]),
            Expected::new("2.bias", &[c.embedding_dim]),
        ]
    }

    /// ArcFace embeddings [N, E] → ID tokens [N, T, W].
    pub fn forward(&self, e: &Tensor) -> Result<Tensor> {
        let n = e.dim(0)?;
        self.norm.forward(&self.proj.forward(e)?.reshape((n, self.tokens, self.width))?)
    }
}
