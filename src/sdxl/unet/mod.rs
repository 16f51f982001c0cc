//! SDXL's `UNet2DConditionModel` with its complete conditioning: timestep embedding plus `add_embedding` of the
//! pooled text embedding and the six time ids (original size, crop top-left, target size) through the
//! sinusoidal `add_time_proj` — the part candle-transformers' UNet leaves out. `VarBuilder` paths spell the
//! diffusers keys (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`); the configuration is the
//! checkpoint's `unet/config.json`.
use crate::error::{Error, Result};
use crate::nn::{linear, Conv2d, Linear};
use crate::sdxl::profile;
use candle_core::{DType, Module, Tensor};
use candle_nn::{group_norm, GroupNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

pub mod attention;
mod checkpoint;
mod memory;
mod resnet;
pub use attention::Projection;
use attention::*;
pub(crate) use resnet::{conv, Resnet};

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
    /// Latent side the model was trained at (diffusers' `sample_size`; SDXL: 128).
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn eps5() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not a UNet config: {e}")))?;
        if c.addition_embed_type.as_deref() != Some("text_time")
            || c.addition_time_embed_dim.is_none()
            || c.projection_class_embeddings_input_dim.is_none()
        {
            return Err(Error::invalid(path, "not an SDXL UNet (addition_embed_type `text_time` with addition_time_embed_dim and projection_class_embeddings_input_dim expected) — an SD1.5/SD2 UNet?"));
        }
        if !c.use_linear_projection {
            return Err(Error::invalid(
                path,
                "use_linear_projection false is not supported (every SDXL UNet uses linear projections)",
            ));
        }
        let n = c.block_out_channels.len();
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(Error::invalid(
                path,
                format!(
                    "{n} block_out_channels but {} down / {} up block types",
                    c.down_block_types.len(),
                    c.up_block_types.len()
                ),
            ));
        }
        for t in c.down_block_types.iter().chain(&c.up_block_types) {
            if !matches!(t.as_str(), "DownBlock2D" | "CrossAttnDownBlock2D" | "UpBlock2D" | "CrossAttnUpBlock2D") {
                return Err(Error::invalid(path, format!("block type `{t}` is not supported")));
            }
        }
        c.validate().map_err(|why| Error::invalid(path, why))?;
        Ok(c)
    }

    /// The numbers the model is built from: no empty lists, no zero sizes, heads that divide the channels.
    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || n > 8 {
            return Err(format!("block_out_channels has {n} entries (1 to 8; SDXL: 3)"));
        }
        let per_block = |name: &str, p: &PerBlock| -> std::result::Result<(), String> {
            match p {
                PerBlock::One(0) => Err(format!("{name} is 0")),
                PerBlock::Each(v) if v.is_empty() => Err(format!("{name} is an empty list")),
                PerBlock::Each(v) if v.contains(&0) => Err(format!("{name} {v:?} contains 0")),
                _ => Ok(()),
            }
        };
        per_block("attention_head_dim", &self.attention_head_dim)?;
        per_block("transformer_layers_per_block", &self.transformer_layers_per_block)?;
        let big = MAX_CONFIG_SIZE;
        let most = |p: &PerBlock| match p {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.iter().copied().max().unwrap_or(0),
        };
        let time = self.addition_time_embed_dim.unwrap_or(0);
        let class = self.projection_class_embeddings_input_dim.unwrap_or(0);
        bounded(&[
            ("in_channels", self.in_channels, 64),
            ("out_channels", self.out_channels, 64),
            ("layers_per_block", self.layers_per_block, 64),
            ("cross_attention_dim", self.cross_attention_dim, big),
            ("norm_num_groups", self.norm_num_groups, big),
            ("block_out_channels", self.block_out_channels.iter().copied().max().unwrap_or(0), big),
            ("transformer_layers_per_block", most(&self.transformer_layers_per_block), 256),
            ("attention_head_dim", most(&self.attention_head_dim), big),
            ("num_attention_heads", self.num_attention_heads.as_ref().map(most).unwrap_or(0), big),
            ("addition_time_embed_dim", time, 1 << 14),
            ("projection_class_embeddings_input_dim", class, big),
        ])?;
        // the added embedding is the pooled text embedding plus six sinusoidal time ids of this width
        if time < 2 || !time.is_multiple_of(2) || class <= 6 * time {
            return Err(format!(
                "addition_time_embed_dim {time} and projection_class_embeddings_input_dim {class} do not fit: the input is the pooled text embedding plus 6 × an even time width (SDXL: 256 and 2816)"
            ));
        }
        if self.norm_eps >= 1.0 {
            return Err(format!("norm_eps {} is not below 1 (SDXL: 1e-5)", self.norm_eps));
        }
        if let Some(h) = &self.num_attention_heads {
            per_block("num_attention_heads", h)?;
        }
        no_zero(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("cross_attention_dim", self.cross_attention_dim),
            ("norm_num_groups", self.norm_num_groups),
        ])?;
        for (i, &ch) in self.block_out_channels.iter().enumerate() {
            if ch == 0 || ch % self.norm_num_groups != 0 {
                return Err(format!(
                    "block_out_channels[{i}] = {ch} is not a positive multiple of norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
            if self.down_block_types[i].starts_with("CrossAttn") && ch % self.heads(i) != 0 {
                return Err(format!(
                    "block_out_channels[{i}] = {ch} is not divisible by its {} attention heads",
                    self.heads(i)
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(format!("norm_eps {} is not a positive number", self.norm_eps));
        }
        Ok(())
    }

    /// The image side the model was trained at: `sample_size` × 8 (1024 for SDXL; 1024 when the config has none).
    pub fn native_size(&self) -> usize {
        self.sample_size.filter(|s| (1..=1024).contains(s)).map(|s| s * 8).unwrap_or(1024)
    }

    fn heads(&self, i: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(i)
    }
    /// The largest attention-score tensor of one UNet pass, in elements per image: heads × tokens² at the
    /// highest-resolution attention level (the scores are materialised, one image and head after another at most).
    pub fn attention_scores(&self, height: usize, width: usize) -> u128 {
        let (mut h, mut w) = (height / 8, width / 8);
        let mut worst = 0u128;
        for (i, t) in self.down_block_types.iter().enumerate() {
            if t.starts_with("CrossAttn") {
                let seq = (h * w) as u128;
                worst = worst.max(self.heads(i) as u128 * seq * seq);
            }
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
        worst
    }
    fn heads_last(&self) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).last()
    }
}

/// A config check the UNet and the VAE share: the first of the named sizes that is 0, as "NAME is 0".
pub(crate) fn no_zero(sizes: &[(&str, usize)]) -> std::result::Result<(), String> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("{name} is 0")),
        None => Ok(()),
    }
}

/// The largest width, channel count or vocabulary a config may ask for: every size goes through this before
/// anything is allocated (SDXL's largest is 2,816; a corrupt `1e12` would otherwise abort on a 2 TB allocation).
pub const MAX_CONFIG_SIZE: usize = 1 << 20;

/// The first of the named sizes above `MAX_CONFIG_SIZE` (or `max` where given), as an error.
pub(crate) fn bounded(sizes: &[(&str, usize, usize)]) -> std::result::Result<(), String> {
    match sizes.iter().find(|(_, v, max)| v > max) {
        Some((name, v, max)) => Err(format!("{name} = {v} is larger than {max} (a corrupt config?)")),
        None => Ok(()),
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
    let freqs: Vec<f32> =
        (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32).collect();
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
                resnets.push(Resnet::new(
                    c,
                    if j == 0 { in_ch } else { out_ch },
                    out_ch,
                    temb,
                    vbb.pp("resnets").pp(j),
                )?);
                if cross {
                    attentions.push(Transformer2D::new(
                        c,
                        out_ch,
                        c.heads(i),
                        c.transformer_layers_per_block.get(i),
                        vbb.pp("attentions").pp(j),
                    )?);
                }
            }
            let downsample = if i + 1 < n {
                Some(conv(out_ch, out_ch, 3, 2, vbb.pp("downsamplers").pp(0).pp("conv"))?)
            } else {
                None
            };
            down.push(DownBlock { resnets, attentions, downsample });
        }
        let last = ch[n - 1];
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            Resnet::new(c, last, last, temb, mid.pp("resnets").pp(0))?,
            Resnet::new(c, last, last, temb, mid.pp("resnets").pp(1))?,
        ];
        let mid_attn = Transformer2D::new(
            c,
            last,
            c.heads_last(),
            c.transformer_layers_per_block.last(),
            mid.pp("attentions").pp(0),
        )?;
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
            let upsample =
                if i + 1 < n { Some(conv(out, out, 3, 1, vbb.pp("upsamplers").pp(0).pp("conv"))?) } else { None };
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
    /// Where its weights live, and their dtype (the compute dtype).
    pub fn device(&self) -> &candle_core::Device {
        self.conv_in.weight().device()
    }
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// Training: recompute each transformer block in backward instead of keeping its activations for it
    /// (gradient checkpointing, `checkpoint`): about a second forward's time for far less memory at large sizes.
    /// Inference is unaffected (nothing is on a graph there).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        for t in self.transformers_mut() {
            t.checkpointing = on;
        }
    }

    fn transformers_mut(&mut self) -> impl Iterator<Item = &mut Transformer2D> {
        self.down
            .iter_mut()
            .flat_map(|b| b.attentions.iter_mut())
            .chain(std::iter::once(&mut self.mid_attn))
            .chain(self.up.iter_mut().flat_map(|b| b.attentions.iter_mut()))
    }

    /// Every attention projection (`…attnX.to_q` … `to_out.0`), for LoRA merges.
    pub fn projections_mut(&mut self) -> Vec<&mut Projection> {
        let mut out = Vec::new();
        for t in self.transformers_mut() {
            for blk in t.blocks.iter_mut() {
                out.extend(blk.attn1.projections_mut());
                out.extend(blk.attn2.projections_mut());
            }
        }
        out
    }

    /// ε prediction. `sample` [B, C, H, W]; `timestep` (same for the batch); `context` [B, 77, cross_dim];
    /// `text_embeds` [B, pooled]; `time_ids` [B, 6].
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let t = Tensor::from_vec(vec![timestep as f32; b], b, sample.device())?;
        self.forward_traced(sample, &t, context, text_embeds, time_ids, None)
    }

    /// ε prediction with one timestep per batch row (`timesteps` [B], any float dtype) — what training needs, where
    /// each row is noised to its own level.
    pub fn forward_timesteps(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<Tensor> {
        self.forward_traced(sample, timesteps, context, text_embeds, time_ids, None)
    }

    pub fn forward_traced(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
        mut trace: Option<&mut UNetTrace>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, _, h, w) = sample.dims4()?;
        if timesteps.dims() != [b] {
            return Err(Error::Mismatch(format!("{b} latents but timesteps of shape {:?}", timesteps.dims())));
        }
        let n = c.block_out_channels.len();
        let factor = 1usize << (n - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(Error::Mismatch(format!(
                "latent size {h}×{w} must be a multiple of {factor} (image size a multiple of {})",
                factor * 8
            )));
        }
        let dtype = sample.dtype();
        let dev = sample.device();
        let temb = sinusoidal(&timesteps.to_device(dev)?, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)?
            .to_dtype(dtype)?;
        let temb = self.time_linear_2.forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let ids = time_ids.to_dtype(DType::F32)?.flatten_all()?;
        let tid = sinusoidal(&ids, c.addition_time_embed_dim.unwrap_or(256), c.flip_sin_to_cos, c.freq_shift)?
            .reshape((b, ()))?
            .to_dtype(dtype)?;
        let add_in = Tensor::cat(&[text_embeds.to_dtype(dtype)?, tid], 1)?;
        let aug = self.add_linear_2.forward(&self.add_linear_1.forward(&add_in)?.silu()?)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.time_embedding = Some(temb.clone());
            tr.add_embedding = Some(aug.clone());
        }
        let emb = (temb + aug)?;
        let context = context.to_dtype(dtype)?;
        let mut x = profile::time(profile::CONV, dev, || self.conv_in.forward(sample))?;
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
                x = profile::time(profile::CONV, dev, || d.forward(&x))?;
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
                x = profile::time(profile::CONV, dev, || u.forward(&x.upsample_nearest2d(hh * 2, ww * 2)?))?;
            }
            record(format!("up_blocks.{i}"), &x);
        }
        let x = profile::time(profile::GROUP_NORM, dev, || self.conv_norm_out.forward(&x))?;
        record("conv_norm_out".into(), &x);
        let x = profile::time(profile::CONV, dev, || self.conv_out.forward(&x.silu()?))?;
        record("conv_out".into(), &x);
        Ok(x)
    }
}

/// Load `unet/` of a diffusers folder: `config.json` + `diffusion_pytorch_model(.fp16).safetensors`, strictly.
pub fn load_unet(dir: &Path, dtype: DType, device: &candle_core::Device) -> Result<UNet> {
    crate::sdxl::model::load_component(dir, dtype, device, UNetConfig::load, UNet::new)
}
