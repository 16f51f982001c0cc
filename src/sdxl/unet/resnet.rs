//! `ResnetBlock2D` and the convolution helper (diffusers' `resnet.py`); the VAE uses them too.
use super::UNetConfig;
use crate::nn::{conv2d, linear, Conv2d, Linear};
use crate::sdxl::profile;
use candle_core::{Module, Tensor};
use candle_nn::{group_norm, Conv2dConfig, GroupNorm, VarBuilder};

/// diffusers `ResnetBlock2D` (time embedding, if any, added after conv1; 1×1 shortcut when channels change).
pub(crate) struct Resnet {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv2d,
    pub(crate) time_emb_proj: Option<Linear>,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) shortcut: Option<Conv2d>,
}

pub(crate) fn conv(i: usize, o: usize, k: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    conv2d(i, o, k, Conv2dConfig { padding: k / 2, stride, ..Default::default() }, vb)
}

impl Resnet {
    pub(crate) fn new(c: &UNetConfig, i: usize, o: usize, temb: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::with(c.norm_num_groups, c.norm_eps, i, o, Some(temb), vb)
    }
    pub(crate) fn with(
        groups: usize,
        eps: f64,
        i: usize,
        o: usize,
        temb: Option<usize>,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
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
        let dev = x.device();
        let h = profile::time(profile::GROUP_NORM, dev, || self.norm1.forward(x)?.silu())?;
        let mut h = profile::time(profile::CONV, dev, || self.conv1.forward(&h))?;
        if let (Some(p), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h.broadcast_add(&p.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = profile::time(profile::GROUP_NORM, dev, || self.norm2.forward(&h)?.silu())?;
        let h = profile::time(profile::CONV, dev, || self.conv2.forward(&h))?;
        match &self.shortcut {
            Some(s) => profile::time(profile::CONV, dev, || s.forward(x))? + h,
            None => x + h,
        }
    }
}
