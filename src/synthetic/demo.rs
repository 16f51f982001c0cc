//! The embedded demo set: tiny models in the real file layouts (an SDXL diffusers folder, a HyperLoRA variant, a
//! CLIP vision folder, an antelopev2 folder), synthesized deterministically from code into a cache folder on
//! first use, plus a public-domain photo carried in the binary. The weights are random: the demo exercises the
//! whole path (photo → identity → LoRA → image), not image quality.
use super::onnx;
use crate::error::{Error, Result};
use crate::files::output::{safetensors_bytes, RawTensor};
use crate::hyper::config::HyperConfig;
use crate::hyper::modules::ModuleSpec;
use crate::rng::Rng;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bump when the synthesized files change: a new folder is made beside the old one.
const VERSION: &str = "demo-v3";

/// NASA's portrait of Eileen Collins (scikit-image's `astronaut`, public domain).
pub const PHOTO: &[u8] = include_bytes!("../../assets/astronaut.jpg");
pub const PHOTO_NAME: &str = "astronaut.jpg";
/// The face box in that photo (x1, y1, x2, y2), for the box path (the demo's detector finds the face by its colour).
pub const PHOTO_FACE_BOX: [f64; 4] = [180.0, 52.0, 270.0, 180.0];

/// Where the demo set lives: `$HYPERLORA_DEMO_DIR`, else the user cache folder.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HYPERLORA_DEMO_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("hyperlora").join(VERSION)
}

/// Paths of the demo set's parts.
#[derive(Debug, Clone)]
pub struct DemoSet {
    pub dir: PathBuf,
    pub sdxl: PathBuf,
    pub hyperlora: PathBuf,
    pub clip: PathBuf,
    pub antelopev2: PathBuf,
    pub photo: PathBuf,
}

impl DemoSet {
    /// The demo set in `dir` (written or not).
    pub fn in_dir(dir: &Path) -> Self {
        DemoSet {
            dir: dir.to_path_buf(),
            sdxl: dir.join("sdxl-tiny"),
            hyperlora: dir.join("hyperlora-tiny"),
            clip: dir.join("clip-vision-tiny"),
            antelopev2: dir.join("antelopev2"),
            photo: dir.join(PHOTO_NAME),
        }
    }
}

/// The demo set in `dir`, written first if it is not complete there (a `complete` marker is written last, so an
/// interrupted write is redone). Returns whether it was written now.
pub fn ensure(dir: &Path) -> Result<(DemoSet, bool)> {
    let set = DemoSet::in_dir(dir);
    if dir.join("complete").is_file() {
        return Ok((set, false));
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_all(&DemoSet::in_dir(&tmp))?;
    std::fs::write(tmp.join("complete"), VERSION).map_err(|e| Error::io(&tmp, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok((set, true)),
        // another process finished first: use its copy
        Err(_) if dir.join("complete").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok((set, false))
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Records every tensor a model asks for and hands out deterministic values that follow the init hint
/// (constants as asked, uniform noise of the hinted scale otherwise), so writing the record gives a
/// checkpoint with exactly the model's key names and shapes.
struct Recorder {
    seed: u64,
    tensors: Mutex<Vec<(String, Vec<usize>, Vec<f32>)>>,
}

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let n = s.elem_count();
        let h = name.bytes().fold(self.seed ^ 0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        let mut rng = Rng::new(h);
        let fan_in =
            if dims.len() >= 2 { dims[1..].iter().product::<usize>() } else { dims.first().copied().unwrap_or(1) }
                as f32;
        let mut v = vec![0f32; n];
        match init {
            // a plain `vb.get` (hint: zero) of a matrix is a layer weight that wants a random start too
            Init::Const(c) if c == 0.0 && dims.len() >= 2 => rng.fill(&mut v, 0.0, (3.0 / fan_in).sqrt()),
            Init::Const(c) => v.fill(c as f32),
            Init::Uniform { lo, up } => rng.fill(&mut v, ((lo + up) / 2.0) as f32, ((up - lo) / 2.0) as f32),
            Init::Randn { mean, stdev } => rng.fill(&mut v, mean as f32, stdev as f32 * 3f32.sqrt()),
            Init::Kaiming { .. } => rng.fill(&mut v, 0.0, (3.0 / fan_in).sqrt()),
        }
        self.tensors.lock().expect("recorder").push((name.to_string(), dims.clone(), v.clone()));
        Tensor::from_vec(v, dims, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the demo recorder needs a shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Build a model on recorded random weights and write them as `path` (f32 safetensors).
fn record<T>(path: &Path, seed: u64, build: impl FnOnce(VarBuilder) -> candle_core::Result<T>) -> Result<()> {
    let rec = std::sync::Arc::new(Recorder { seed, tensors: Mutex::new(Vec::new()) });
    struct Shared(std::sync::Arc<Recorder>);
    impl candle_nn::var_builder::SimpleBackend for Shared {
        fn get(&self, s: Shape, n: &str, i: Init, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get(s, n, i, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(rec.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let mut t = rec.tensors.lock().map_err(|_| Error::Mismatch("recorder poisoned".into()))?;
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t.dedup_by(|a, b| a.0 == b.0);
    let raw: Vec<(String, RawTensor)> = t.iter().map(|(n, s, v)| (n.clone(), RawTensor::f32(s, v))).collect();
    write(path, safetensors_bytes(&raw, [("format".to_string(), "pt".to_string())].into())?)
}

const UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 8, "attention_head_dim": [1, 2, 2], "block_out_channels": [16, 24, 32], "center_input_sample": false,
  "cross_attention_dim": 40, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "flip_sin_to_cos": true,
  "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
  "norm_num_groups": 8, "out_channels": 4, "projection_class_embeddings_input_dim": 68, "sample_size": 16,
  "transformer_layers_per_block": [1, 1, 2], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "use_linear_projection": true
}"#;
const VAE: &str = r#"{
  "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [16, 16, 32, 32],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "force_upcast": true,
  "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 8, "out_channels": 3, "sample_size": 128,
  "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;
const SCHEDULER: &str = r#"{
  "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
  "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "leading",
  "trained_betas": null, "use_karras_sigmas": false
}"#;
const MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": true,
  "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]
}"#;

fn text_config(hidden: usize, act: &str, projection: bool) -> String {
    let arch = if projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" };
    format!(
        r#"{{"architectures": ["{arch}"], "bos_token_id": {BOS}, "eos_token_id": {EOS}, "hidden_act": "{act}", "hidden_size": {hidden},
  "intermediate_size": {}, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
  "num_attention_heads": 2, "num_hidden_layers": 3, "pad_token_id": 1, "projection_dim": 20, "vocab_size": {VOCAB}}}"#,
        hidden * 2
    )
}

/// A byte-level CLIP vocabulary without merges: every byte alone and word-final, then the two specials.
const VOCAB: usize = 514;
const BOS: usize = 512;
const EOS: usize = 513;

fn write_tokenizer(dir: &Path, pad: &str) -> Result<()> {
    let table = crate::sdxl::text::bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (i, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
        vocab.insert(format!("{c}</w>"), (256 + i).into());
    }
    vocab.insert("<|startoftext|>".into(), BOS.into());
    vocab.insert("<|endoftext|>".into(), EOS.into());
    write(&dir.join("vocab.json"), serde_json::to_string(&vocab).expect("json"))?;
    write(&dir.join("merges.txt"), "#version: 0.2\n")?;
    let special = serde_json::json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"});
    write(&dir.join("special_tokens_map.json"), special.to_string())
}

/// HyperLoRA's module list for a UNet config: every transformer block's attn1/attn2, down → up → mid.
pub fn modules_for_unet(c: &crate::sdxl::unet::UNetConfig) -> Vec<ModuleSpec> {
    let mut out = Vec::new();
    let depth = |i: usize| c.transformer_layers_per_block.get(i);
    let mut push = |prefix: String, attentions: usize, depth: usize, h: usize| {
        for a in 0..attentions {
            for b in 0..depth {
                for (attn, cross) in [("attn1", None), ("attn2", Some(c.cross_attention_dim))] {
                    out.extend(ModuleSpec::new(
                        &format!("lora_unet_{prefix}_attentions_{a}_transformer_blocks_{b}_{attn}"),
                        h,
                        cross,
                    ));
                }
            }
        }
    };
    for (i, t) in c.down_block_types.iter().enumerate() {
        if t.starts_with("CrossAttn") {
            push(format!("down_blocks_{i}"), c.layers_per_block, depth(i), c.block_out_channels[i]);
        }
    }
    let n = c.block_out_channels.len();
    for (i, t) in c.up_block_types.iter().enumerate() {
        if t.starts_with("CrossAttn") {
            push(format!("up_blocks_{i}"), c.layers_per_block + 1, depth(n - 1 - i), c.block_out_channels[n - 1 - i]);
        }
    }
    push("mid_block".into(), 1, depth(n - 1), c.block_out_channels[n - 1]);
    out
}

fn write_all(set: &DemoSet) -> Result<()> {
    use crate::sdxl::{
        text::ClipTextConfig, text::ClipTextModel, unet::UNet, unet::UNetConfig, vae::Vae, vae::VaeConfig,
    };
    // SDXL, diffusers layout
    let s = &set.sdxl;
    write(&s.join("model_index.json"), MODEL_INDEX)?;
    write(&s.join("unet/config.json"), UNET)?;
    write(&s.join("vae/config.json"), VAE)?;
    write(&s.join("scheduler/scheduler_config.json"), SCHEDULER)?;
    write(&s.join("text_encoder/config.json"), text_config(16, "quick_gelu", false))?;
    write(&s.join("text_encoder_2/config.json"), text_config(24, "gelu", true))?;
    write_tokenizer(&s.join("tokenizer"), "<|endoftext|>")?;
    write_tokenizer(&s.join("tokenizer_2"), "!")?;
    let unet_cfg = UNetConfig::load(&s.join("unet/config.json"))?;
    record(&s.join("unet/diffusion_pytorch_model.safetensors"), 1, |vb| UNet::new(&unet_cfg, vb))?;
    let vae_cfg = VaeConfig::load(&s.join("vae/config.json"))?;
    record(&s.join("vae/diffusion_pytorch_model.safetensors"), 2, |vb| Vae::new(&vae_cfg, vb))?;
    let te1 = ClipTextConfig::load(&s.join("text_encoder/config.json"))?;
    record(&s.join("text_encoder/model.safetensors"), 3, |vb| ClipTextModel::new(&te1, vb, false))?;
    let te2 = ClipTextConfig::load(&s.join("text_encoder_2/config.json"))?;
    record(&s.join("text_encoder_2/model.safetensors"), 4, |vb| ClipTextModel::new(&te2, vb, true))?;
    // CLIP vision, transformers layout
    let clip_cfg = r#"{"architectures": ["CLIPVisionModelWithProjection"], "hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 224,
  "intermediate_size": 64, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 4, "num_channels": 3,
  "num_hidden_layers": 4, "patch_size": 14, "projection_dim": 16}"#;
    write(&set.clip.join("config.json"), clip_cfg)?;
    let vc = crate::vision::clip::ClipVisionConfig::load(&set.clip.join("config.json"))?;
    record(&set.clip.join("model.safetensors"), 5, |vb| crate::vision::clip::ClipVision::new(&vc, vb, true))?;
    // HyperLoRA variant for that UNet
    let modules = modules_for_unet(&unet_cfg);
    let cfg = HyperConfig::tiny(modules.len(), 32);
    super::hyper::write_variant(&set.hyperlora, &cfg, &modules, 6, true)?;
    // antelopev2: a detector that finds the astronaut's face by its skin colour (crafted), a landmark model that draws a generic face in the box,
    // a random recognizer
    let a = &set.antelopev2;
    write(&a.join("scrfd_10g_bnkps.onnx"), onnx::skin_scrfd())?;
    write(&a.join("2d106det.onnx"), onnx::landmark_106(&onnx::mean_face_106(), &[0.0; 212])?)?;
    write(&a.join("glintr100.onnx"), onnx::arcface(8))?;
    write(&set.photo, PHOTO)?;
    write(&set.dir.join("README.txt"), "hyperlora demo set: tiny models with RANDOM weights in the real file layouts, synthesized by `hyperlora demo`.\nThey exercise the code paths; their outputs are noise. Safe to delete.\n")
}
