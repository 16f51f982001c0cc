//! The Perceiver resampler of HyperLoRA (spec §2.2, §2.3 step 3): learned latents attend to themselves, to the
//! ArcFace ID tokens (`attn2`) and, in the ID resampler, to the CLIP tokens (`attn3`), then a feed-forward;
//! `proj_out` gives the K-dim coefficient tokens. Keys follow `resampler.safetensors` /
//! `base_resampler.safetensors` (`layers.{l}.attn2.to_out.0.weight`, `layers.{l}.ff.net.0.proj.weight`, …).
use super::config::ResamplerConfig;
use crate::nn::{layer_norm, LayerNorm};
use crate::weights::Expected;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

const LN_EPS: f64 = 1e-5;

/// diffusers `Attention` as the resampler builds it: q/k/v/out without biases, no mask, no inner residual.
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl Attention {
    fn new(c: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let inner = c.inner_dim();
        Ok(Self {
            to_q: linear_no_bias(c.dim, inner, vb.pp("to_q"))?, // layers.{l}.attnX.to_q.weight
            to_k: linear_no_bias(c.dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(c.dim, inner, vb.pp("to_v"))?,
            to_out: linear_no_bias(inner, c.dim, vb.pp("to_out").pp("0"))?, // layers.{l}.attnX.to_out.0.weight
            heads: c.heads,
            dim_head: c.dim_head,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, self.heads, self.dim_head))?.transpose(1, 2)?.contiguous()
    }

    fn forward(&self, q_in: &Tensor, kv_in: &Tensor) -> Result<Tensor> {
        let (b, n, _) = q_in.dims3()?;
        let q = self.split_heads(&self.to_q.forward(q_in)?)?;
        let k = self.split_heads(&self.to_k.forward(kv_in)?)?;
        let v = self.split_heads(&self.to_v.forward(kv_in)?)?;
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        let w = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let w = crate::nn::softmax_last_dim(&w)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, self.heads * self.dim_head))?;
        self.to_out.forward(&o)
    }

    fn expected(c: &ResamplerConfig, p: &str) -> Vec<Expected> {
        let inner = c.inner_dim();
        ["to_q", "to_k", "to_v"]
            .iter()
            .map(|n| Expected::new(format!("{p}.{n}.weight"), &[inner, c.dim]))
            .chain([Expected::new(format!("{p}.to_out.0.weight"), &[c.dim, inner])])
            .collect()
    }
}

/// diffusers `FeedForward(activation_fn="gelu")`: Linear → exact erf GELU → Linear (`net.1` is Dropout).
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(c: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = c.dim * c.ff_mult;
        Ok(Self { proj: linear(c.dim, hidden, vb.pp("0").pp("proj"))?, out: linear(hidden, c.dim, vb.pp("2"))? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.proj.forward(x)?.gelu_erf()?)
    }
}

/// The optional second condition (`attn3` over the CLIP tokens) of the ID resampler.
struct ClipCondition {
    norm_l: LayerNorm,
    norm_y: LayerNorm,
    attn: Attention,
}

struct PerceiverLayer {
    norm_attn1: LayerNorm,
    attn1: Attention,
    norm_attn2_l: LayerNorm,
    norm_attn2_x: LayerNorm,
    attn2: Attention,
    cond2: Option<ClipCondition>,
    norm_ff: LayerNorm,
    ff: FeedForward,
}

impl PerceiverLayer {
    fn new(c: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let ln = |k: &str| layer_norm(c.dim, LN_EPS, vb.pp(k)); // layers.{l}.norm_attn1.weight
        let cond2 = if c.n_conds == 2 {
            Some(ClipCondition {
                norm_l: ln("norm_attn3_l")?,
                norm_y: ln("norm_attn3_y")?,
                attn: Attention::new(c, vb.pp("attn3"))?,
            })
        } else {
            None
        };
        Ok(Self {
            norm_attn1: ln("norm_attn1")?,
            attn1: Attention::new(c, vb.pp("attn1"))?,
            norm_attn2_l: ln("norm_attn2_l")?,
            norm_attn2_x: ln("norm_attn2_x")?,
            attn2: Attention::new(c, vb.pp("attn2"))?,
            cond2,
            norm_ff: ln("norm_ff")?,
            ff: FeedForward::new(c, vb.pp("ff").pp("net"))?,
        })
    }

    fn forward(&self, l: &Tensor, x: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let n = self.norm_attn1.forward(l)?;
        let l = (l + self.attn1.forward(&n, &n)?)?;
        let l = (&l + self.attn2.forward(&self.norm_attn2_l.forward(&l)?, &self.norm_attn2_x.forward(x)?)?)?;
        let l = match (&self.cond2, y) {
            (Some(c), Some(y)) => (&l + c.attn.forward(&c.norm_l.forward(&l)?, &c.norm_y.forward(y)?)?)?,
            (None, None) => l,
            _ => candle_core::bail!("resampler condition count does not match its inputs"),
        };
        &l + self.ff.forward(&self.norm_ff.forward(&l)?)?
    }
}

/// Intermediate values of one forward, for parity tests and inspection.
pub struct ResamplerTrace {
    pub proj_in_x: Tensor,
    pub proj_in_2_y: Option<Tensor>,
    pub latents_after_layer: Vec<Tensor>,
    pub raw: Tensor,
}

pub struct Resampler {
    latents: Tensor,
    proj_in: Linear,
    proj_in_2: Option<Linear>,
    layers: Vec<PerceiverLayer>,
    proj_out: Linear,
}

impl Resampler {
    pub fn new(c: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..c.depth).map(|l| PerceiverLayer::new(c, vb.pp("layers").pp(l))).collect::<Result<_>>()?;
        Ok(Self {
            latents: vb.get((1, c.num_queries, c.dim), "latents")?,
            proj_in: linear(c.embedding_dim, c.dim, vb.pp("proj_in"))?,
            proj_in_2: if c.n_conds == 2 { Some(linear(c.embedding_dim, c.dim, vb.pp("proj_in_2"))?) } else { None },
            layers,
            proj_out: linear(c.dim, c.output_dim, vb.pp("proj_out"))?,
        })
    }

    /// Every tensor `Resampler::new` reads, with its shape: the strict key set of the file.
    pub fn expected(c: &ResamplerConfig) -> Vec<Expected> {
        let d = c.dim;
        let mut e = vec![
            Expected::new("latents", &[1, c.num_queries, d]),
            Expected::new("proj_in.weight", &[d, c.embedding_dim]),
            Expected::new("proj_in.bias", &[d]),
            Expected::new("proj_out.weight", &[c.output_dim, d]),
            Expected::new("proj_out.bias", &[c.output_dim]),
        ];
        if c.n_conds == 2 {
            e.push(Expected::new("proj_in_2.weight", &[d, c.embedding_dim]));
            e.push(Expected::new("proj_in_2.bias", &[d]));
        }
        for l in 0..c.depth {
            let mut norms = vec!["norm_attn1", "norm_attn2_l", "norm_attn2_x", "norm_ff"];
            let mut attns = vec!["attn1", "attn2"];
            if c.n_conds == 2 {
                norms.extend(["norm_attn3_l", "norm_attn3_y"]);
                attns.push("attn3");
            }
            for n in norms {
                e.push(Expected::new(format!("layers.{l}.{n}.weight"), &[d]));
                e.push(Expected::new(format!("layers.{l}.{n}.bias"), &[d]));
            }
            for a in attns {
                e.extend(Attention::expected(c, &format!("layers.{l}.{a}")));
            }
            let h = d * c.ff_mult;
            e.push(Expected::new(format!("layers.{l}.ff.net.0.proj.weight"), &[h, d]));
            e.push(Expected::new(format!("layers.{l}.ff.net.0.proj.bias"), &[h]));
            e.push(Expected::new(format!("layers.{l}.ff.net.2.weight"), &[d, h]));
            e.push(Expected::new(format!("layers.{l}.ff.net.2.bias"), &[d]));
        }
        e
    }

    /// `x`: the first condition's tokens [N, *, W] (ID tokens, or CLIP tokens for the Base resampler);
    /// `y`: the CLIP tokens [N, *, W] of the ID resampler. Returns the raw coefficient tokens [N, Q, K].
    pub fn forward(&self, x: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_traced(x, y, false)?.raw)
    }

    pub fn forward_traced(&self, x: &Tensor, y: Option<&Tensor>, keep: bool) -> Result<ResamplerTrace> {
        let n = x.dim(0)?;
        let x = self.proj_in.forward(x)?;
        let y = match (&self.proj_in_2, y) {
            (Some(p), Some(y)) => Some(p.forward(y)?),
            (None, None) => None,
            (Some(_), None) => candle_core::bail!("this resampler takes two conditions (ID tokens and CLIP tokens)"),
            (None, Some(_)) => candle_core::bail!("this resampler takes one condition (CLIP tokens)"),
        };
        let (_, q, d) = self.latents.dims3()?;
        let mut l = self.latents.broadcast_as((n, q, d))?.contiguous()?;
        let mut after = Vec::new();
        for layer in &self.layers {
            l = layer.forward(&l, &x, y.as_ref())?;
            if keep {
                after.push(l.clone());
            }
        }
        let raw = self.proj_out.forward(&l)?;
        Ok(ResamplerTrace { proj_in_x: x, proj_in_2_y: y, latents_after_layer: after, raw })
    }
}

/// Mean over images (spec §2.3); the per-token L2 normalisation that follows belongs to the identity
/// (`identity::normalize_tokens`), which keeps the raw mean.
pub fn fuse(raw: &Tensor) -> Result<Tensor> {
    raw.mean_keepdim(0)
}
