//! The attention side of the UNet: LoRA-patchable projections, attention, transformer blocks and the
//! `Transformer2DModel` wrapper (diffusers' `attention.py` / `transformers/transformer_2d.py`).
use super::UNetConfig;
use crate::error::{Error, Result};
use crate::nn::{layer_norm, LayerNorm};
use crate::nn::{linear, Linear};
use crate::sdxl::profile;
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{group_norm, GroupNorm, VarBuilder};

/// A Linear whose weight can be patched by a LoRA merge; `target` is its diffusers path. The loaded weight is
/// kept (shared, not copied) so that removing a LoRA restores it bit for bit — never by subtracting ΔW.
#[derive(Clone)]
pub struct Projection {
    pub target: String,
    pub(crate) original: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) linear: Linear,
    /// Content signature of the LoRA terms merged now (None: the original weight is in use).
    pub(crate) merged: Option<[u8; 32]>,
    /// Training mode: LoRA terms (down [r, in], up [out, r], scale) computed as functions of their factors,
    /// `W·x + Σ scale·up·(down·x)`, never merged, so that gradients reach the factors.
    pub(crate) functional: Vec<(Tensor, Tensor, f64)>,
}

impl Projection {
    pub(crate) fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self {
            target: vb.prefix(),
            linear: Linear::new(weight.clone(), bias.clone()),
            original: weight,
            bias,
            merged: None,
            functional: Vec::new(),
        })
    }
    /// The weight as loaded.
    pub fn original(&self) -> &Tensor {
        &self.original
    }
    /// The weight in use.
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
    /// Use `original + delta` (delta [out, in], any float dtype; summed in f32, cast once).
    pub(crate) fn merge(&mut self, delta: &Tensor, signature: [u8; 32]) -> Result<()> {
        if delta.dims() != self.original.dims() {
            return Err(Error::Mismatch(format!(
                "{}: LoRA ΔW is {:?} but the weight is {:?}",
                self.target,
                delta.dims(),
                self.original.dims()
            )));
        }
        let w = (self.original.to_dtype(DType::F32)?
            + delta.to_device(self.original.device())?.to_dtype(DType::F32)?)?
        .to_dtype(self.original.dtype())?;
        self.linear = Linear::new(w, self.bias.clone());
        self.merged = Some(signature);
        Ok(())
    }
    /// Back to the loaded weight (the same tensor, bit-identical).
    pub(crate) fn restore(&mut self) {
        self.linear = Linear::new(self.original.clone(), self.bias.clone());
        self.merged = None;
    }
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = self.linear.forward(x)?;
        for (down, up, scale) in &self.functional {
            let (down, up) = (down.to_dtype(x.dtype())?, up.to_dtype(x.dtype())?);
            let low = x.broadcast_matmul(&down.t()?)?;
            y = (y + (low.broadcast_matmul(&up.t()?)? * *scale)?)?;
        }
        Ok(y)
    }
}

#[derive(Clone)]
pub(crate) struct Attention {
    pub(crate) to_q: Projection,
    pub(crate) to_k: Projection,
    pub(crate) to_v: Projection,
    pub(crate) to_out: Projection,
    pub(crate) heads: usize,
}

/// The most attention scores (elements) materialised at once; larger attentions run in blocks of query rows.
pub const ATTENTION_CHUNK: usize = 1 << 26;

/// softmax(q·kᵀ·scale)·v for [B, H, N, d] queries and [B, H, M, d] keys/values. When B·H·N·M exceeds `chunk`
/// elements the queries are taken in blocks of rows (each row's softmax is its own, so the result is the same),
/// so large images need memory for one block of scores instead of all N·M.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, chunk: usize) -> candle_core::Result<Tensor> {
    let (b, h, n, _) = q.dims4()?;
    let m = k.dim(2)?;
    let kt = k.t()?.contiguous()?;
    let per_row = (b * h * m).max(1);
    let rows = (chunk / per_row).max(1);
    if rows >= n {
        let w = crate::nn::softmax_last_dim(&(q.matmul(&kt)? * scale)?)?;
        return w.matmul(v);
    }
    let mut out = Vec::with_capacity(n.div_ceil(rows));
    for start in (0..n).step_by(rows) {
        // a large attention runs for a while: Ctrl-C is heard between blocks
        if crate::cancel::requested() {
            return Err(candle_core::Error::Msg("cancelled".into()));
        }
        let qc = q.narrow(2, start, rows.min(n - start))?;
        let w = crate::nn::softmax_last_dim(&(qc.matmul(&kt)? * scale)?)?;
        out.push(w.matmul(v)?);
    }
    Tensor::cat(&out, 2)
}

impl Attention {
    pub(crate) fn new(dim: usize, context_dim: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: Projection::new(dim, dim, false, vb.pp("to_q"))?,
            to_k: Projection::new(context_dim, dim, false, vb.pp("to_k"))?,
            to_v: Projection::new(context_dim, dim, false, vb.pp("to_v"))?,
            to_out: Projection::new(dim, dim, true, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let dh = c / self.heads;
        let split = |t: Tensor| {
            let l = t.dim(1)?;
            t.reshape((b, l, self.heads, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.to_q.forward(x)?)?;
        let k = split(self.to_k.forward(context)?)?;
        let v = split(self.to_v.forward(context)?)?;
        let o = attend(&q, &k, &v, 1.0 / (dh as f64).sqrt(), ATTENTION_CHUNK)?;
        self.to_out.forward(&o.transpose(1, 2)?.reshape((b, n, c))?)
    }
    pub(crate) fn projections_mut(&mut self) -> [&mut Projection; 4] {
        [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out]
    }
    fn projections(&self) -> [&Projection; 4] {
        [&self.to_q, &self.to_k, &self.to_v, &self.to_out]
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward (exact erf GELU).
#[derive(Clone)]
pub(crate) struct TransformerBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn1: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) attn2: Attention,
    pub(crate) norm3: LayerNorm,
    pub(crate) ff_proj: Linear,
    pub(crate) ff_out: Linear,
}

impl TransformerBlock {
    pub(crate) fn new(dim: usize, ctx: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(dim, dim, heads, vb.pp("attn1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(dim, ctx, heads, vb.pp("attn2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: linear(dim, inner * 2, vb.pp("ff").pp("net").pp("0").pp("proj"))?,
            ff_out: linear(inner, dim, vb.pp("ff").pp("net").pp("2"))?,
        })
    }
    /// The factors of every functional LoRA term of its projections (down, up, term by term, attn1 then attn2).
    pub(crate) fn factors(&self) -> Vec<Tensor> {
        let projections = self.attn1.projections().into_iter().chain(self.attn2.projections());
        projections.flat_map(|p| p.functional.iter().flat_map(|(d, u, _)| [d.clone(), u.clone()])).collect()
    }
    /// The same block with its functional terms' factors detached (a forward that builds no graph through them).
    pub(crate) fn detached(&self) -> Self {
        let mut b = self.clone();
        for p in b.attn1.projections_mut().into_iter().chain(b.attn2.projections_mut()) {
            for (d, u, _) in p.functional.iter_mut() {
                *d = d.detach();
                *u = u.detach();
            }
        }
        b
    }
    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let dev = x.device();
        let n = profile::time(profile::LAYER_NORM, dev, || self.norm1.forward(x))?;
        let x = (x + profile::time(profile::SELF_ATTENTION, dev, || self.attn1.forward(&n, &n))?)?;
        let n = profile::time(profile::LAYER_NORM, dev, || self.norm2.forward(&x))?;
        let x = (&x + profile::time(profile::CROSS_ATTENTION, dev, || self.attn2.forward(&n, context))?)?;
        let n = profile::time(profile::LAYER_NORM, dev, || self.norm3.forward(&x))?;
        let f = profile::time(profile::FEED_FORWARD, dev, || {
            let h = self.ff_proj.forward(&n)?;
            let half = h.dim(D::Minus1)? / 2;
            let gated = (h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?)?;
            self.ff_out.forward(&gated)
        })?;
        &x + f
    }
}

/// diffusers `Transformer2DModel` with linear projections.
pub(crate) struct Transformer2D {
    pub(crate) norm: GroupNorm,
    pub(crate) proj_in: Linear,
    pub(crate) blocks: Vec<TransformerBlock>,
    pub(crate) proj_out: Linear,
    /// Training: recompute each block in backward instead of keeping its activations (`checkpoint`).
    pub(crate) checkpointing: bool,
}

impl Transformer2D {
    pub(crate) fn new(
        c: &UNetConfig,
        ch: usize,
        heads: usize,
        depth: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            norm: group_norm(c.norm_num_groups, ch, 1e-6, vb.pp("norm"))?,
            proj_in: linear(ch, ch, vb.pp("proj_in"))?,
            blocks: (0..depth)
                .map(|i| TransformerBlock::new(ch, c.cross_attention_dim, heads, vb.pp("transformer_blocks").pp(i)))
                .collect::<candle_core::Result<_>>()?,
            proj_out: linear(ch, ch, vb.pp("proj_out"))?,
            checkpointing: false,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dev = x.device();
        let t = profile::time(profile::GROUP_NORM, dev, || self.norm.forward(x))?;
        let mut t = profile::time(profile::PROJ_IN_OUT, dev, || {
            self.proj_in.forward(&t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)
        })?;
        for blk in &self.blocks {
            t = match self.checkpointing {
                true => super::checkpoint::forward(blk, &t, context)?,
                false => blk.forward(&t, context)?,
            };
        }
        let t = profile::time(profile::PROJ_IN_OUT, dev, || {
            self.proj_out.forward(&t)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))
        })?;
        x + t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_attention_equals_the_whole() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::Rng::new(3);
        let mut t = |shape: &[usize]| {
            let mut v = vec![0f32; shape.iter().product()];
            rng.fill(&mut v, 0.0, 2.0);
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let (q, k, v) = (t(&[2, 3, 37, 8]), t(&[2, 3, 29, 8]), t(&[2, 3, 29, 8]));
        let whole = attend(&q, &k, &v, 0.35, usize::MAX).unwrap();
        for chunk in [1, 2 * 3 * 29, 2 * 3 * 29 * 5, 2 * 3 * 29 * 36] {
            let c = attend(&q, &k, &v, 0.35, chunk).unwrap();
            // NaN-aware: candle's max_all skips NaN
            let d = (&c - &whole).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = d.iter().fold(0f32, |m, x| if x.is_nan() || m.is_nan() { f32::NAN } else { m.max(*x) });
            assert!(d < 1e-6, "chunk {chunk}: max |Δ| {d}");
        }
        // Ctrl-C is heard between blocks
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let _s = crate::cancel::scope(flag);
        let e = attend(&q, &k, &v, 0.35, 2 * 3 * 29).unwrap_err().to_string();
        assert!(e.contains("cancelled"), "{e}");
    }
}
