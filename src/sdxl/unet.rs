//! SDXL's `UNet2DConditionModel` with its complete conditioning: timestep embedding plus `add_embedding` of the
//! pooled text embedding and the six time ids (original size, crop top-left, target size) through the
//! sinusoidal `add_time_proj` — the part candle-transformers' UNet leaves out. `VarBuilder` paths spell the
//! diffusers keys (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`); the configuration is the
//! checkpoint's `unet/config.json`.
use crate::error::{Error, Result};
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{conv2d, group_norm, layer_norm, linear, Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i.min(v.len() - 1)],
        }
    }
    fn last(&self) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => *v.last().unwrap_or(&1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    pub transformer_layers_per_block: PerBlock,
    /// diffusers' legacy naming: for SDXL this is the number of heads per block.
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    #[serde(default = "eps5")]
    pub norm_eps: f64,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
}

fn eps5() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not a UNet config: {e}")))?;
        if c.addition_embed_type.as_deref() != Some("text_time") || c.addition_time_embed_dim.is_none() || c.projection_class_embeddings_input_dim.is_none() {
            return Err(Error::invalid(path, "not an SDXL UNet (addition_embed_type `text_time` with addition_time_embed_dim and projection_class_embeddings_input_dim expected) — an SD1.5/SD2 UNet?"));
        }
        if !c.use_linear_projection {
            return Err(Error::invalid(path, "use_linear_projection false is not supported (every SDXL UNet uses linear projections)"));
        }
        let n = c.block_out_channels.len();
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(Error::invalid(path, format!("{n} block_out_channels but {} down / {} up block types", c.down_block_types.len(), c.up_block_types.len())));
        }
        for t in c.down_block_types.iter().chain(&c.up_block_types) {
            if !matches!(t.as_str(), "DownBlock2D" | "CrossAttnDownBlock2D" | "UpBlock2D" | "CrossAttnUpBlock2D") {
                return Err(Error::invalid(path, format!("block type `{t}` is not supported")));
            }
        }
        Ok(c)
    }

    fn heads(&self, i: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(i)
    }
    fn heads_last(&self) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).last()
    }
}

/// A Linear whose weight can be patched by a LoRA merge; `target` is its diffusers path. The loaded weight is
/// kept (shared, not copied) so that removing a LoRA restores it bit for bit — never by subtracting ΔW.
pub struct Projection {
    pub target: String,
    original: Tensor,
    bias: Option<Tensor>,
    linear: Linear,
    /// Content signature of the LoRA terms merged now (None: the original weight is in use).
    pub(crate) merged: Option<[u8; 32]>,
}

impl Projection {
    fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { target: vb.prefix(), linear: Linear::new(weight.clone(), bias.clone()), original: weight, bias, merged: None })
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
            return Err(Error::Mismatch(format!("{}: LoRA ΔW is {:?} but the weight is {:?}", self.target, delta.dims(), self.original.dims())));
        }
        let w = (self.original.to_dtype(DType::F32)? + delta.to_device(self.original.device())?.to_dtype(DType::F32)?)?.to_dtype(self.original.dtype())?;
        self.linear = Linear::new(w, self.bias.clone());
        self.merged = Some(signature);
        Ok(())
    }
    /// Back to the loaded weight (the same tensor, bit-identical).
    pub(crate) fn restore(&mut self) {
        self.linear = Linear::new(self.original.clone(), self.bias.clone());
        self.merged = None;
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.forward(x)
    }
}

struct Attention {
    to_q: Projection,
    to_k: Projection,
    to_v: Projection,
    to_out: Projection,
    heads: usize,
}

impl Attention {
    fn new(dim: usize, context_dim: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: Projection::new(dim, dim, false, vb.pp("to_q"))?,
            to_k: Projection::new(context_dim, dim, false, vb.pp("to_k"))?,
            to_v: Projection::new(context_dim, dim, false, vb.pp("to_v"))?,
            to_out: Projection::new(dim, dim, true, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }
    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let dh = c / self.heads;
        let split = |t: Tensor| {
            let l = t.dim(1)?;
            t.reshape((b, l, self.heads, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.to_q.forward(x)?)?;
        let k = split(self.to_k.forward(context)?)?;
        let v = split(self.to_v.forward(context)?)?;
        let w = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        self.to_out.forward(&w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?)
    }
    fn projections_mut(&mut self) -> [&mut Projection; 4] {
        [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out]
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward (exact erf GELU).
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(dim: usize, ctx: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
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
    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.norm1.forward(x)?;
        let x = (x + self.attn1.forward(&n, &n)?)?;
        let x = (&x + self.attn2.forward(&self.norm2.forward(&x)?, context)?)?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        let half = h.dim(D::Minus1)? / 2;
        let gated = (h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?)?;
        &x + self.ff_out.forward(&gated)?
    }
}

/// diffusers `Transformer2DModel` with linear projections.
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl Transformer2D {
    fn new(c: &UNetConfig, ch: usize, heads: usize, depth: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: group_norm(c.norm_num_groups, ch, 1e-6, vb.pp("norm"))?,
            proj_in: linear(ch, ch, vb.pp("proj_in"))?,
            blocks: (0..depth).map(|i| TransformerBlock::new(ch, c.cross_attention_dim, heads, vb.pp("transformer_blocks").pp(i))).collect::<candle_core::Result<_>>()?,
            proj_out: linear(ch, ch, vb.pp("proj_out"))?,
        })
    }
    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let mut t = self.norm.forward(x)?.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?;
        t = self.proj_in.forward(&t)?;
        for blk in &self.blocks {
            t = blk.forward(&t, context)?;
        }
        let t = self.proj_out.forward(&t)?.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
        x + t
    }
}

/// diffusers `ResnetBlock2D` (time embedding, if any, added after conv1; 1×1 shortcut when channels change).
pub(crate) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

pub(crate) fn conv(i: usize, o: usize, k: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    conv2d(i, o, k, Conv2dConfig { padding: k / 2, stride, ..Default::default() }, vb)
}

impl Resnet {
    fn new(c: &UNetConfig, i: usize, o: usize, temb: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::with(c.norm_num_groups, c.norm_eps, i, o, Some(temb), vb)
    }
    pub(crate) fn with(groups: usize, eps: f64, i: usize, o: usize, temb: Option<usize>, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, i, eps, vb.pp("norm1"))?,
            conv1: conv(i, o, 3, 1, vb.pp("conv1"))?,
            time_emb_proj: temb.map(|t| linear(t, o, vb.pp("time_emb_proj"))).transpose()?,
            norm2: group_norm(groups, o, eps, vb.pp("norm2"))?,
            conv2: conv(o, o, 3, 1, vb.pp("conv2"))?,
            shortcut: if i != o { Some(conv(i, o, 1, 1, vb.pp("conv_shortcut"))?) } else { None },
        })
    }
    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        if let (Some(p), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h.broadcast_add(&p.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

struct DownBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    downsample: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    upsample: Option<Conv2d>,
}

/// Intermediate outputs for parity tests (`intermediate.*` of the fixture).
#[derive(Default)]
pub struct UNetTrace {
    pub time_embedding: Option<Tensor>,
    pub add_embedding: Option<Tensor>,
    pub blocks: Vec<(String, Tensor)>,
}

pub struct UNet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_linear_1: Linear,
    add_linear_2: Linear,
    down: Vec<DownBlock>,
    mid_resnets: [Resnet; 2],
    mid_attn: Transformer2D,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
}

/// diffusers `get_timestep_embedding` (scale 1, max period 10000).
fn sinusoidal(t: &Tensor, dim: usize, flip: bool, shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let (s, c) = (args.sin()?, args.cos()?);
    if flip {
        Tensor::cat(&[c, s], 1)
    } else {
        Tensor::cat(&[s, c], 1)
    }
}

impl UNet {
    pub fn new(c: &UNetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &c.block_out_channels;
        let temb = ch[0] * 4;
        let n = ch.len();
        let add_in = c.projection_class_embeddings_input_dim.unwrap_or(0);
        let mut down = Vec::new();
        let mut out_ch = ch[0];
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch[i];
            let vbb = vb.pp("down_blocks").pp(i);
            let cross = kind == "CrossAttnDownBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                resnets.push(Resnet::new(c, if j == 0 { in_ch } else { out_ch }, out_ch, temb, vbb.pp("resnets").pp(j))?);
                if cross {
                    attentions.push(Transformer2D::new(c, out_ch, c.heads(i), c.transformer_layers_per_block.get(i), vbb.pp("attentions").pp(j))?);
                }
            }
            let downsample = if i + 1 < n { Some(conv(out_ch, out_ch, 3, 2, vbb.pp("downsamplers").pp(0).pp("conv"))?) } else { None };
            down.push(DownBlock { resnets, attentions, downsample });
        }
        let last = ch[n - 1];
        let mid = vb.pp("mid_block");
        let mid_resnets = [Resnet::new(c, last, last, temb, mid.pp("resnets").pp(0))?, Resnet::new(c, last, last, temb, mid.pp("resnets").pp(1))?];
        let mid_attn = Transformer2D::new(c, last, c.heads_last(), c.transformer_layers_per_block.last(), mid.pp("attentions").pp(0))?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut prev = rev[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp("up_blocks").pp(i);
            let cross = kind == "CrossAttnUpBlock2D";
            let depth = c.transformer_layers_per_block.get(n - 1 - i);
            let heads = c.heads(n - 1 - i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            let layers = c.layers_per_block + 1;
            for j in 0..layers {
                let skip = if j == layers - 1 { input } else { out };
                let rin = if j == 0 { prev } else { out };
                resnets.push(Resnet::new(c, rin + skip, out, temb, vbb.pp("resnets").pp(j))?);
                if cross {
                    attentions.push(Transformer2D::new(c, out, heads, depth, vbb.pp("attentions").pp(j))?);
                }
            }
            let upsample = if i + 1 < n { Some(conv(out, out, 3, 1, vbb.pp("upsamplers").pp(0).pp("conv"))?) } else { None };
            up.push(UpBlock { resnets, attentions, upsample });
            prev = out;
        }
        Ok(Self {
            conv_in: conv(c.in_channels, ch[0], 3, 1, vb.pp("conv_in"))?,
            time_linear_1: linear(ch[0], temb, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding").pp("linear_2"))?,
            add_linear_1: linear(add_in, temb, vb.pp("add_embedding").pp("linear_1"))?,
            add_linear_2: linear(temb, temb, vb.pp("add_embedding").pp("linear_2"))?,
            down,
            mid_resnets,
            mid_attn,
            up,
            conv_norm_out: group_norm(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv(ch[0], c.out_channels, 3, 1, vb.pp("conv_out"))?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every attention projection (`…attnX.to_q` … `to_out.0`), for LoRA merges.
    pub fn projections_mut(&mut self) -> Vec<&mut Projection> {
        let mut out = Vec::new();
        let attns = self
            .down
            .iter_mut()
            .flat_map(|b| b.attentions.iter_mut())
            .chain(std::iter::once(&mut self.mid_attn))
            .chain(self.up.iter_mut().flat_map(|b| b.attentions.iter_mut()));
        for t in attns {
            for blk in t.blocks.iter_mut() {
                out.extend(blk.attn1.projections_mut());
                out.extend(blk.attn2.projections_mut());
            }
        }
        out
    }

    /// ε prediction. `sample` [B, C, H, W]; `timestep` (same for the batch); `context` [B, 77, cross_dim];
    /// `text_embeds` [B, pooled]; `time_ids` [B, 6].
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor, text_embeds: &Tensor, time_ids: &Tensor) -> Result<Tensor> {
        self.forward_traced(sample, timestep, context, text_embeds, time_ids, None)
    }

    pub fn forward_traced(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
        mut trace: Option<&mut UNetTrace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, _, h, w) = sample.dims4()?;
        let n = c.block_out_channels.len();
        let factor = 1usize << (n - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(Error::Mismatch(format!("latent size {h}×{w} must be a multiple of {factor} (image size a multiple of {})", factor * 8)));
        }
        let dtype = sample.dtype();
        let dev = sample.device();
        let t = Tensor::from_vec(vec![timestep as f32; b], b, dev)?;
        let temb = sinusoidal(&t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)?.to_dtype(dtype)?;
        let temb = self.time_linear_2.forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let ids = time_ids.to_dtype(DType::F32)?.flatten_all()?;
        let tid = sinusoidal(&ids, c.addition_time_embed_dim.unwrap_or(256), c.flip_sin_to_cos, c.freq_shift)?.reshape((b, ()))?.to_dtype(dtype)?;
        let add_in = Tensor::cat(&[text_embeds.to_dtype(dtype)?, tid], 1)?;
        let aug = self.add_linear_2.forward(&self.add_linear_1.forward(&add_in)?.silu()?)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.time_embedding = Some(temb.clone());
            tr.add_embedding = Some(aug.clone());
        }
        let emb = (temb + aug)?;
        let context = context.to_dtype(dtype)?;
        let mut x = self.conv_in.forward(sample)?;
        let mut record = |name: String, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.blocks.push((name, t.clone()));
            }
        };
        record("conv_in".into(), &x);
        let mut skips = vec![x.clone()];
        for (i, blk) in self.down.iter().enumerate() {
            for (j, r) in blk.resnets.iter().enumerate() {
                x = r.forward(&x, Some(&emb))?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, &context)?;
                }
                skips.push(x.clone());
            }
            if let Some(d) = &blk.downsample {
                x = d.forward(&x)?;
                skips.push(x.clone());
            }
            record(format!("down_blocks.{i}"), &x);
        }
        x = self.mid_resnets[0].forward(&x, Some(&emb))?;
        x = self.mid_attn.forward(&x, &context)?;
        x = self.mid_resnets[1].forward(&x, Some(&emb))?;
        record("mid_block".into(), &x);
        for (i, blk) in self.up.iter().enumerate() {
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Mismatch("UNet skip connections out of balance".into()))?;
                x = r.forward(&Tensor::cat(&[&x, &skip], 1)?, Some(&emb))?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, &context)?;
                }
            }
            if let Some(u) = &blk.upsample {
                let (_, _, hh, ww) = x.dims4()?;
                x = u.forward(&x.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
            record(format!("up_blocks.{i}"), &x);
        }
        let x = self.conv_norm_out.forward(&x)?;
        record("conv_norm_out".into(), &x);
        let x = self.conv_out.forward(&x.silu()?)?;
        record("conv_out".into(), &x);
        Ok(x)
    }
}

/// Load `unet/` of a diffusers folder: `config.json` + `diffusion_pytorch_model.safetensors`, strictly.
pub fn load_unet(dir: &Path, dtype: DType, device: &candle_core::Device) -> Result<UNet> {
    let cfg = UNetConfig::load(&dir.join("config.json"))?;
    let file = std::sync::Arc::new(crate::weights::StFile::open(dir.join("diffusion_pytorch_model.safetensors"))?);
    crate::weights::build_strict(file, dtype, device, |k| (k.to_string(), crate::weights::Transform::Same), |_| true, |vb| UNet::new(&cfg, vb))
}
