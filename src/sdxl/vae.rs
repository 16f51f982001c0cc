//! diffusers `AutoencoderKL` (SDXL VAE): decoder for sampling, encoder for img2img. Latents are scaled by the
//! config's `scaling_factor` (0.13025 for SDXL, not SD1.5's 0.18215). Run it in f32: SDXL's VAE overflows in f16.
use super::unet::{conv, no_zero, Resnet};
use crate::error::{Error, Result};
use crate::nn::{linear, Conv2d, Linear};
use candle_core::{DType, Module, Tensor};
use candle_nn::{group_norm, GroupNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
}

fn yes() -> bool {
    true
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not a VAE config: {e}")))?;
        c.validate().map_err(|why| Error::invalid(path, why))?;
        Ok(c)
    }

    /// No empty lists, no zero sizes, channels that the group norms divide, a usable scaling factor.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() || self.block_out_channels.len() > 8 {
            return Err(format!("block_out_channels has {} entries (1 to 8; SDXL: 4)", self.block_out_channels.len()));
        }
        no_zero(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ])?;
        if let Some((i, ch)) =
            self.block_out_channels.iter().enumerate().find(|(_, c)| **c == 0 || **c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels[{i}] = {ch} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        use crate::sdxl::unet::MAX_CONFIG_SIZE as BIG;
        crate::sdxl::unet::bounded(&[
            ("in_channels", self.in_channels, 64),
            ("out_channels", self.out_channels, 64),
            ("latent_channels", self.latent_channels, 1024),
            ("layers_per_block", self.layers_per_block, 64),
            ("norm_num_groups", self.norm_num_groups, BIG),
            ("block_out_channels", self.block_out_channels.iter().copied().max().unwrap_or(0), BIG),
        ])?;
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0 && self.scaling_factor <= 100.0) {
            return Err(format!(
                "scaling_factor {} is not a positive number up to 100 (SDXL: 0.13025)",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err("shift_factor is not a finite number".into());
        }
        Ok(())
    }
}

const EPS: f64 = 1e-6;

/// Single-head self-attention over pixels with a residual (the VAE mid block's `attentions.0`).
struct SpatialAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl SpatialAttention {
    fn new(c: &VaeConfig, ch: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: group_norm(c.norm_num_groups, ch, EPS, vb.pp("group_norm"))?,
            q: linear(ch, ch, vb.pp("to_q"))?,
            k: linear(ch, ch, vb.pp("to_k"))?,
            v: linear(ch, ch, vb.pp("to_v"))?,
            out: linear(ch, ch, vb.pp("to_out").pp("0"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&t)?, self.k.forward(&t)?, self.v.forward(&t)?);
        // one head over all pixels: chunked by query rows like the UNet's attention when the scores are large
        let a = super::unet::attention::attend(
            &q.unsqueeze(1)?,
            &k.unsqueeze(1)?,
            &v.unsqueeze(1)?,
            1.0 / (c as f64).sqrt(),
            super::unet::attention::ATTENTION_CHUNK,
        )?
        .squeeze(1)?;
        let o = self.out.forward(&a)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + o
    }
}

struct Mid {
    r0: Resnet,
    attn: SpatialAttention,
    r1: Resnet,
}

impl Mid {
    fn new(c: &VaeConfig, ch: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            r0: Resnet::with(c.norm_num_groups, EPS, ch, ch, None, vb.pp("resnets").pp(0))?,
            attn: SpatialAttention::new(c, ch, vb.pp("attentions").pp(0))?,
            r1: Resnet::with(c.norm_num_groups, EPS, ch, ch, None, vb.pp("resnets").pp(1))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.r1.forward(&self.attn.forward(&self.r0.forward(x, None)?)?, None)
    }
}

struct Stage {
    resnets: Vec<Resnet>,
    resample: Option<Conv2d>,
}

pub struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    up: Vec<Stage>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Stage>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
}

/// The posterior of an encoded image.
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Vae {
    pub fn new(c: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        // encoder
        let e = vb.pp("encoder");
        let mut down = Vec::new();
        let mut out = ch[0];
        for i in 0..n {
            let inp = out;
            out = ch[i];
            let b = e.pp("down_blocks").pp(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| Resnet::with(g, EPS, if j == 0 { inp } else { out }, out, None, b.pp("resnets").pp(j)))
                .collect::<candle_core::Result<_>>()?;
            let resample = if i + 1 < n {
                Some(crate::nn::conv2d(
                    out,
                    out,
                    3,
                    candle_nn::Conv2dConfig { stride: 2, padding: 0, ..Default::default() },
                    b.pp("downsamplers").pp(0).pp("conv"),
                )?)
            } else {
                None
            };
            down.push(Stage { resnets, resample });
        }
        let encoder = Encoder {
            conv_in: conv(c.in_channels, ch[0], 3, 1, e.pp("conv_in"))?,
            down,
            mid: Mid::new(c, ch[n - 1], e.pp("mid_block"))?,
            norm_out: group_norm(g, ch[n - 1], EPS, e.pp("conv_norm_out"))?,
            conv_out: conv(ch[n - 1], 2 * c.latent_channels, 3, 1, e.pp("conv_out"))?,
        };
        // decoder
        let d = vb.pp("decoder");
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut prev = rev[0];
        for (i, &o) in rev.iter().enumerate() {
            let b = d.pp("up_blocks").pp(i);
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| Resnet::with(g, EPS, if j == 0 { prev } else { o }, o, None, b.pp("resnets").pp(j)))
                .collect::<candle_core::Result<_>>()?;
            let resample = if i + 1 < n { Some(conv(o, o, 3, 1, b.pp("upsamplers").pp(0).pp("conv"))?) } else { None };
            up.push(Stage { resnets, resample });
            prev = o;
        }
        let decoder = Decoder {
            conv_in: conv(c.latent_channels, rev[0], 3, 1, d.pp("conv_in"))?,
            mid: Mid::new(c, rev[0], d.pp("mid_block"))?,
            up,
            norm_out: group_norm(g, ch[0], EPS, d.pp("conv_norm_out"))?,
            conv_out: conv(ch[0], c.out_channels, 3, 1, d.pp("conv_out"))?,
        };
        let l2 = 2 * c.latent_channels;
        Ok(Self {
            encoder,
            decoder,
            quant_conv: if c.use_quant_conv { Some(conv(l2, l2, 1, 1, vb.pp("quant_conv"))?) } else { None },
            post_quant_conv: if c.use_post_quant_conv {
                Some(conv(c.latent_channels, c.latent_channels, 1, 1, vb.pp("post_quant_conv"))?)
            } else {
                None
            },
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Sampled latents → image in [-1, 1] (approximately), [B, 3, 8h, 8w]. Divides by the scaling factor itself.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut z = (latents / self.config.scaling_factor)?;
        if let Some(s) = self.config.shift_factor {
            z = (z + s)?;
        }
        if let Some(p) = &self.post_quant_conv {
            z = p.forward(&z)?;
        }
        let d = &self.decoder;
        let mut x = d.mid.forward(&d.conv_in.forward(&z)?)?;
        for st in &d.up {
            for r in &st.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(u) = &st.resample {
                let (_, _, h, w) = x.dims4()?;
                x = u.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        Ok(d.conv_out.forward(&d.norm_out.forward(&x)?.silu()?)?)
    }

    /// Image in [-1, 1] [B, 3, H, W] → posterior (mean and log-variance, unscaled latents).
    pub fn encode(&self, image: &Tensor) -> Result<Posterior> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(image)?;
        for st in &e.down {
            for r in &st.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(d) = &st.resample {
                x = d.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        let mut m = e.conv_out.forward(&e.norm_out.forward(&e.mid.forward(&x)?)?.silu()?)?;
        if let Some(q) = &self.quant_conv {
            m = q.forward(&m)?;
        }
        let l = self.config.latent_channels;
        Ok(Posterior { mean: m.narrow(1, 0, l)?, logvar: m.narrow(1, l, l)?.clamp(-30f32, 20f32)? })
    }

    /// Latents for sampling from an image: posterior mean (or a sample with `noise`) times the scaling factor.
    pub fn encode_latents(&self, image: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let p = self.encode(image)?;
        let z = match noise {
            Some(n) => (&p.mean + ((&p.logvar * 0.5)?.exp()? * n)?)?,
            None => p.mean,
        };
        let z = match self.config.shift_factor {
            Some(s) => (z - s)?,
            None => z,
        };
        Ok((z * self.config.scaling_factor)?)
    }
}

/// Load `vae/` of a diffusers folder strictly (`.fp16` weights accepted).
pub fn load_vae(dir: &Path, dtype: DType, device: &candle_core::Device) -> Result<Vae> {
    crate::sdxl::model::load_component(dir, dtype, device, VaeConfig::load, Vae::new)
}
