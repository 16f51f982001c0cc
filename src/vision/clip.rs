//! CLIP vision tower as transformers stores it (`vision_model.*`). HyperLoRA uses `hidden_states[-2]`: the output
//! of the second-to-last encoder layer, all 257 tokens, no post-LayerNorm (spec §1.3). Selected by layer number —
//! candle-transformers' hidden-state list is not transformers'.
use crate::clip::ClipLayer;
use crate::error::{Error, Result};
use crate::weights::{build_strict, StFile, Transform};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{
    conv2d_no_bias, embedding, layer_norm, linear_no_bias, Conv2d, Conv2dConfig, Embedding, LayerNorm, Linear,
    VarBuilder,
};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "act")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "channels")]
    pub num_channels: usize,
    pub projection_dim: Option<usize>,
}

fn act() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn channels() -> usize {
    3
}

impl ClipVisionConfig {
    /// A `clip_vision_model` config, or a full `clip` config's `vision_config` (openai/clip-vit-large-patch14).
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))?;
        let mut vc = v.get("vision_config").cloned().unwrap_or(v.clone());
        if let (Some(p), Some(obj)) = (v.get("projection_dim").cloned(), vc.as_object_mut()) {
            obj.entry("projection_dim").or_insert(p);
        }
        let c: Self =
            serde_json::from_value(vc).map_err(|e| Error::invalid(path, format!("not a CLIP vision config: {e}")))?;
        if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(Error::invalid(
                path,
                format!("hidden_act `{}` is not supported (quick_gelu, as CLIP ViT-L/14, or gelu)", c.hidden_act),
            ));
        }
        if c.patch_size == 0 || c.num_attention_heads == 0 || c.image_size == 0 || c.hidden_size == 0 {
            return Err(Error::invalid(
                path,
                format!(
                    "image_size {}, patch_size {}, hidden_size {} and num_attention_heads {} must all be positive",
                    c.image_size, c.patch_size, c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        if !c.image_size.is_multiple_of(c.patch_size) || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::invalid(
                path,
                format!(
                    "inconsistent CLIP vision config: image {} / patch {}, hidden {} / heads {}",
                    c.image_size, c.patch_size, c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        Ok(c)
    }
    pub fn num_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// Outputs of a full forward, for parity tests.
pub struct VisionOutput {
    /// `hidden_states[0..=L]`: 0 = embeddings after `pre_layrnorm`, i = output of layer i.
    pub hidden_states: Vec<Tensor>,
    pub pooled: Tensor,
    pub image_embeds: Option<Tensor>,
}

pub struct ClipVision {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Embedding,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Option<Linear>,
    config: ClipVisionConfig,
}

impl ClipVision {
    /// `vb` at the checkpoint root (`vision_model.*`, optional `visual_projection.weight`).
    pub fn new(c: &ClipVisionConfig, vb: VarBuilder, with_projection: bool) -> candle_core::Result<Self> {
        let vm = vb.pp("vision_model");
        let e = vm.pp("embeddings");
        let h = c.hidden_size;
        Ok(Self {
            class_embedding: e.get(h, "class_embedding")?,
            patch_embedding: conv2d_no_bias(
                c.num_channels,
                h,
                c.patch_size,
                Conv2dConfig { stride: c.patch_size, ..Default::default() },
                e.pp("patch_embedding"),
            )?,
            position_embedding: embedding(c.num_tokens(), h, e.pp("position_embedding"))?,
            pre_layrnorm: layer_norm(h, c.layer_norm_eps, vm.pp("pre_layrnorm"))?, // sic: the checkpoint's spelling
            layers: (0..c.num_hidden_layers)
                .map(|i| {
                    ClipLayer::new(
                        h,
                        c.num_attention_heads,
                        c.intermediate_size,
                        &c.hidden_act,
                        c.layer_norm_eps,
                        vm.pp("encoder").pp("layers").pp(i),
                    )
                })
                .collect::<candle_core::Result<_>>()?,
            post_layernorm: layer_norm(h, c.layer_norm_eps, vm.pp("post_layernorm"))?,
            visual_projection: match (with_projection, c.projection_dim) {
                (true, Some(p)) => Some(linear_no_bias(h, p, vb.pp("visual_projection"))?),
                _ => None,
            },
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The weights' dtype (inputs are cast to it).
    pub fn dtype(&self) -> candle_core::DType {
        self.class_embedding.dtype()
    }

    pub fn device(&self) -> &candle_core::Device {
        self.class_embedding.device()
    }

    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, hh, ww) = pixels.dims4()?;
        let s = self.config.image_size;
        if (hh, ww) != (s, s) {
            return Err(Error::Mismatch(format!("CLIP input is {hh}×{ww}; this model takes {s}×{s}")));
        }
        let p = self.patch_embedding.forward(pixels)?.flatten_from(2)?.transpose(1, 2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, ()))?
            .broadcast_as((b, 1, self.config.hidden_size))?
            .to_dtype(p.dtype())?;
        let pos = self.position_embedding.forward(&Tensor::arange(
            0u32,
            self.config.num_tokens() as u32,
            pixels.device(),
        )?)?;
        Ok(self.pre_layrnorm.forward(&Tensor::cat(&[&cls, &p], 1)?.broadcast_add(&pos)?)?)
    }

    /// HyperLoRA's feature: the output of encoder layer L−1 (`hidden_states[-2]`), [B, 257, hidden]. The last
    /// layer is not run.
    pub fn penultimate(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for l in &self.layers[..self.layers.len() - 1] {
            x = l.forward(&x, None)?;
        }
        Ok(x)
    }

    /// Every hidden state, the pooled output and (with the projection) the image embedding.
    pub fn forward_all(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let mut x = self.embed(pixels)?;
        let mut hs = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(&x, None)?;
            hs.push(x.clone());
        }
        let pooled = self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        let image_embeds = self.visual_projection.as_ref().map(|p| p.forward(&pooled)).transpose()?;
        Ok(VisionOutput { hidden_states: hs, pooled, image_embeds })
    }
}

/// Load a CLIP vision folder (`config.json` + `model.safetensors`). Keys outside `vision_model.*` (the text tower
/// of a full CLIPModel checkpoint, `visual_projection`, `logit_scale`) are ignored; within it the load is strict, so
/// a config that does not fit the weights names both shapes.
pub fn load_clip_vision(dir: &Path, dtype: DType, device: &Device) -> Result<ClipVision> {
    let cfg = ClipVisionConfig::load(&dir.join("config.json"))?;
    let file = std::sync::Arc::new(StFile::open(dir.join("model.safetensors"))?);
    let with_projection = file.contains("visual_projection.weight") && cfg.projection_dim.is_some();
    build_strict(
        file,
        dtype,
        device,
        |k| (k.to_string(), Transform::Same),
        move |k| {
            (k.starts_with("vision_model.") && !k.ends_with("position_ids"))
                || (with_projection && k == "visual_projection.weight")
        },
        |vb| ClipVision::new(&cfg, vb, with_projection),
    )
}
