//! The transformer layer shared by CLIP's text and vision towers (transformers' `CLIPEncoderLayer`):
//! pre-LN self-attention (q/k/v/out with biases) and a pre-LN MLP with quick_gelu or exact GELU.
use candle_core::{Module, Result, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(h: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads,
        })
    }
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let dh = h / self.heads;
        let split = |t: Tensor| t.reshape((b, n, self.heads, dh))?.transpose(1, 2)?.contiguous();
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let mut w = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
        if let Some(m) = mask {
            w = w.broadcast_add(m)?;
        }
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        self.out.forward(&w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?)
    }
}

pub(crate) struct ClipLayer {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl ClipLayer {
    /// `vb` at `…encoder.layers.{i}`; `act` is the config's `hidden_act` (`quick_gelu` or `gelu`).
    pub(crate) fn new(
        hidden: usize,
        heads: usize,
        intermediate: usize,
        act: &str,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            ln1: layer_norm(hidden, eps, vb.pp("layer_norm1"))?,
            attn: SelfAttention::new(hidden, heads, vb.pp("self_attn"))?,
            ln2: layer_norm(hidden, eps, vb.pp("layer_norm2"))?,
            fc1: linear(hidden, intermediate, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(intermediate, hidden, vb.pp("mlp").pp("fc2"))?,
            quick_gelu: act == "quick_gelu",
        })
    }
    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?;
        // transformers' "gelu" is the exact erf form; quick_gelu is x·σ(1.702x)
        let h = if self.quick_gelu { (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)? } else { h.gelu_erf()? };
        &x + self.fc2.forward(&h)?
    }
}
