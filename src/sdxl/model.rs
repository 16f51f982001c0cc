//! A loaded SDXL checkpoint: both layouts (diffusers folder, single SGM file) behind one type.
use super::pipeline::Conditioning;
use super::scheduler::SchedulerConfig;
use super::single_file::{self, Component, UnetLayout};
use super::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use crate::error::{Error, Result};
use crate::weights::{build_strict, StFile, Transform};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// SDXL base 1.0's configurations, for single files loaded without a config folder.
/// SDXL base 1.0's `unet/config.json` (the shapes benchmarks and the PyTorch comparison scripts build).
pub const SDXL_UNET: &str = r#"{"in_channels":4,"out_channels":4,"block_out_channels":[320,640,1280],"down_block_types":["DownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D"],"up_block_types":["CrossAttnUpBlock2D","CrossAttnUpBlock2D","UpBlock2D"],"layers_per_block":2,"transformer_layers_per_block":[1,2,10],"attention_head_dim":[5,10,20],"num_attention_heads":null,"cross_attention_dim":2048,"norm_num_groups":32,"norm_eps":1e-5,"addition_embed_type":"text_time","addition_time_embed_dim":256,"projection_class_embeddings_input_dim":2816,"flip_sin_to_cos":true,"freq_shift":0,"use_linear_projection":true}"#;
const SDXL_VAE: &str = r#"{"in_channels":3,"out_channels":3,"latent_channels":4,"block_out_channels":[128,256,512,512],"layers_per_block":2,"norm_num_groups":32,"scaling_factor":0.13025}"#;
const SDXL_TE1: &str = r#"{"hidden_size":768,"intermediate_size":3072,"num_attention_heads":12,"num_hidden_layers":12,"max_position_embeddings":77,"vocab_size":49408,"hidden_act":"quick_gelu","layer_norm_eps":1e-5,"eos_token_id":2,"projection_dim":768}"#;
const SDXL_TE2: &str = r#"{"hidden_size":1280,"intermediate_size":5120,"num_attention_heads":20,"num_hidden_layers":32,"max_position_embeddings":77,"vocab_size":49408,"hidden_act":"gelu","layer_norm_eps":1e-5,"eos_token_id":2,"projection_dim":1280}"#;

/// SDXL base 1.0's VAE configuration.
pub fn sdxl_base_vae_config() -> VaeConfig {
    serde_json::from_str(SDXL_VAE).expect("built-in config")
}

/// An error naming the stage when `t` holds NaN or ±∞ (one pass over the values: negligible next to the stage).
fn all_finite(t: &Tensor, stage: &str, cause: &str) -> Result<()> {
    let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidValue(format!(
            "{stage} produced a non-finite value ({} at index {i} of {:?}); likely cause: {cause}",
            v[i],
            t.dims()
        )));
    }
    Ok(())
}

/// SDXL base 1.0's text encoder configurations (CLIP ViT-L, OpenCLIP bigG).
pub fn sdxl_base_text_configs() -> (ClipTextConfig, ClipTextConfig) {
    (serde_json::from_str(SDXL_TE1).expect("built-in config"), serde_json::from_str(SDXL_TE2).expect("built-in config"))
}

/// SDXL base 1.0's UNet configuration.
pub fn sdxl_base_unet_config() -> UNetConfig {
    serde_json::from_str(SDXL_UNET).expect("built-in config")
}

#[derive(Debug, Clone)]
pub struct SdxlOptions {
    pub device: Device,
    /// UNet and text encoders.
    pub dtype: DType,
    /// The VAE (f32 by default: SDXL's VAE overflows in f16).
    pub vae_dtype: DType,
}

impl Default for SdxlOptions {
    fn default() -> Self {
        SdxlOptions { device: Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32 }
    }
}

pub struct Sdxl {
    pub name: String,
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    /// `force_zeros_for_empty_prompt` from model_index.json (SDXL: true).
    pub force_zeros_for_empty_prompt: bool,
    pub options: SdxlOptions,
    /// Where each text encoder's weights come from, for errors that name the file.
    pub text_sources: [String; 2],
}

fn json_or<T: serde::de::DeserializeOwned>(
    path: &Path,
    fallback: &str,
    load: impl Fn(&Path) -> Result<T>,
) -> Result<T> {
    if path.exists() {
        load(path)
    } else {
        serde_json::from_str(fallback).map_err(|e| Error::Mismatch(format!("built-in config: {e}")))
    }
}

/// Largest image side and batch `generate` accepts (sizes past them could not be held in memory anyway).
pub const MAX_SIDE: usize = 8192;
pub const MAX_BATCH: usize = 64;

/// Memory the OS says is available (MemAvailable), where /proc tells it.
/// Bytes a generation needs beyond the weights, as `check_memory` estimates it: attention scores of both CFG
/// halves plus their softmax — one block of query rows at a time when large (`attention::ATTENTION_CHUNK`) — the
/// first UNet level's activations (about a dozen latent-size tensors of its channels alive at once, in the compute
/// dtype of `elem` bytes), and the VAE decode in f32 (a few full-resolution tensors of its first level's channels).
pub fn memory_needed(unet: &UNetConfig, vae_ch: usize, elem: usize, batch: usize, height: usize, width: usize) -> u128 {
    let scores =
        (unet.attention_scores(height, width) * 2 * batch as u128).min(super::unet::attention::ATTENTION_CHUNK as u128);
    let activations = 2
        * batch as u128
        * (height / 8 * (width / 8)) as u128
        * unet.block_out_channels.first().copied().unwrap_or(320) as u128
        * 12;
    let vae = (height * width) as u128 * vae_ch as u128 * 4 * 4;
    (scores * 2 + activations) * elem as u128 + vae
}

/// The one refusal of every memory estimate (generation, training, benchmarks): `need` bytes against MemAvailable,
/// as "{what} needs about N GB{purpose}; M GB are available{remedy}". Where /proc does not tell, nothing is refused.
pub fn refuse_over_available(need: u128, what: &str, purpose: &str, remedy: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if need > avail => {
            let gb = |b: u128| b as f64 / 1e9;
            Err(Error::InvalidValue(format!(
                "{what} needs about {:.1} GB{purpose}; {:.1} GB are available{remedy}",
                gb(need),
                gb(avail)
            )))
        }
        _ => Ok(()),
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u128> {
    let t = crate::files::read_text("/proc/meminfo").ok()?;
    let kb: u128 = t.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Build a diffusers component strictly from `dir/config.json` and its weights file (`.fp16` accepted).
pub(crate) fn load_component<C, M>(
    dir: &Path,
    dtype: DType,
    device: &Device,
    config: impl Fn(&Path) -> Result<C>,
    build: impl FnOnce(&C, candle_nn::VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    let cfg = config(&dir.join("config.json"))?;
    let file = Arc::new(StFile::open(component_file(dir, "diffusion_pytorch_model")?)?);
    build_strict(file, dtype, device, |k| (k.to_string(), Transform::Same), |_| true, |vb| build(&cfg, vb))
}

/// The weights file of a diffusers component folder (full precision preferred, `.fp16` variant accepted).
pub(crate) fn component_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
        let p = dir.join(&name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::invalid(dir, format!("no {stem}.safetensors (or .fp16.safetensors) here")))
}

/// A folder's `sub/` tokenizer when it has one, else the embedded CLIP tokenizer.
fn tokenizer_or_embedded(dir: Option<&Path>, sub: &str, second: bool) -> Result<ClipTokenizer> {
    match dir.map(|d| d.join(sub)).filter(|d| d.is_dir()) {
        Some(d) => ClipTokenizer::load(&d),
        None => ClipTokenizer::embedded(second),
    }
}

impl Sdxl {
    /// Refuse a request whose memory estimate (`memory_needed`) does not fit in the memory available (CPU), before any
    /// allocation: the error says how much is needed and how much there is.
    fn check_memory(&self, req: &GenerateRequest) -> Result<()> {
        if !self.options.device.is_cpu() {
            return Ok(());
        }
        let elem = match self.options.dtype {
            DType::F16 | DType::BF16 => 2,
            _ => 4,
        };
        let vae_ch = self.vae.config().block_out_channels.first().copied().unwrap_or(128);
        let need = memory_needed(self.unet.config(), vae_ch, elem as usize, req.batch, req.height, req.width);
        refuse_over_available(
            need,
            &format!("a batch of {} at {}×{}", req.batch, req.width, req.height),
            " for the UNet's attention and activations and the VAE decode",
            ": use a smaller size or batch",
        )
    }

    /// `path`: a diffusers folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/, scheduler/) or a
    /// single-file checkpoint. For a single file, `config` names a diffusers-layout folder whose configs and
    /// tokenizers to use (weights there are not read); without it SDXL base's configs and the embedded CLIP
    /// tokenizers are used.
    pub fn load(path: &Path, config: Option<&Path>, opts: &SdxlOptions) -> Result<Self> {
        if opts.device.is_cpu() && (opts.dtype == DType::BF16 || opts.vae_dtype == DType::BF16) {
            return Err(Error::Mismatch(
                "bf16 needs a GPU (candle has no bf16 matmul on the CPU); use f32 or f16 on the CPU".into(),
            ));
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() {
            return Self::load_folder(path, name, opts);
        }
        if !path.exists() {
            return Err(Error::invalid(
                path,
                "no such file or folder (expected an SDXL diffusers folder or a single-file .safetensors checkpoint)",
            ));
        }
        // configs and tokenizers: from `config` where it has them, else SDXL base's configs and the embedded
        // CLIP tokenizers (a ComfyUI single file needs nothing else)
        // (a path that cannot exist stands for "no folder", so nothing is read relative to the working directory)
        let tok_dir =
            config.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/nonexistent/hyperlora-no-config"));
        let file = Arc::new(StFile::open(path)?);
        single_file::detect(&file)?;
        if config.is_none() {
            single_file::check_base_shapes(&file)?;
        }
        let c = |sub: &str, f: &str| tok_dir.join(sub).join(f);
        let unet_cfg = json_or(&c("unet", "config.json"), SDXL_UNET, UNetConfig::load)?;
        let vae_cfg = json_or(&c("vae", "config.json"), SDXL_VAE, VaeConfig::load)?;
        let te1_cfg = json_or(&c("text_encoder", "config.json"), SDXL_TE1, ClipTextConfig::load)?;
        let te2_cfg = json_or(&c("text_encoder_2", "config.json"), SDXL_TE2, ClipTextConfig::load)?;
        let layout = UnetLayout {
            layers_per_block: unet_cfg.layers_per_block,
            up_has_attention: unet_cfg.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
        };
        let levels = vae_cfg.block_out_channels.len();
        let build = |comp: Component, dtype: DType| {
            let rename = single_file::renamer(comp, layout.clone(), levels);
            (file.clone(), dtype, rename, move |k: &str| single_file::owned_by(comp, k))
        };
        let (f, d, r, o) = build(Component::Unet, opts.dtype);
        let unet = build_strict(f, d, &opts.device, r, o, |vb| UNet::new(&unet_cfg, vb))?;
        let (f, d, r, o) = build(Component::Vae, opts.vae_dtype);
        let vae = build_strict(f, d, &opts.device, r, o, |vb| Vae::new(&vae_cfg, vb))?;
        let (f, d, r, o) = build(Component::TextEncoder, opts.dtype);
        let text_encoder = build_strict(f, d, &opts.device, r, o, |vb| ClipTextModel::new(&te1_cfg, vb, false))?;
        let (f, d, r, o) = build(Component::TextEncoder2, opts.dtype);
        let text_encoder_2 = build_strict(f, d, &opts.device, r, o, |vb| ClipTextModel::new(&te2_cfg, vb, true))?;
        let scheduler = match tok_dir.join("scheduler/scheduler_config.json") {
            p if p.exists() => SchedulerConfig::load(&p)?,
            _ => SchedulerConfig::default(),
        };
        Ok(Sdxl {
            name,
            tokenizer: tokenizer_or_embedded(config, "tokenizer", false)?,
            tokenizer_2: tokenizer_or_embedded(config, "tokenizer_2", true)?,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            force_zeros_for_empty_prompt: true,
            options: opts.clone(),
            text_sources: [
                format!("{} (its text encoder, conditioner.embedders.0)", path.display()),
                format!("{} (its second text encoder, conditioner.embedders.1)", path.display()),
            ],
        })
    }

    fn load_folder(dir: &Path, name: String, opts: &SdxlOptions) -> Result<Self> {
        let index = dir.join("model_index.json");
        let mi: serde_json::Value = match crate::files::read_text(&index) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::invalid(&index, format!("not valid JSON: {e}")))?,
            Err(e) => return Err(Error::io(&index, e)),
        };
        let class = mi.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if class != "StableDiffusionXLPipeline" && class != "StableDiffusionXLImg2ImgPipeline" {
            return Err(Error::invalid(
                &index,
                format!("_class_name is `{class}`; an SDXL pipeline (StableDiffusionXLPipeline) is needed"),
            ));
        }
        let unet = super::unet::load_unet(&dir.join("unet"), opts.dtype, &opts.device)?;
        let vae = super::vae::load_vae(&dir.join("vae"), opts.vae_dtype, &opts.device)?;
        Ok(Sdxl {
            name,
            tokenizer: ClipTokenizer::load(&dir.join("tokenizer"))?,
            tokenizer_2: ClipTokenizer::load(&dir.join("tokenizer_2"))?,
            text_encoder: super::text::load_text_encoder(&dir.join("text_encoder"), false, opts.dtype, &opts.device)?,
            text_encoder_2: super::text::load_text_encoder(
                &dir.join("text_encoder_2"),
                true,
                opts.dtype,
                &opts.device,
            )?,
            unet,
            vae,
            scheduler: SchedulerConfig::load(&dir.join("scheduler/scheduler_config.json"))?,
            force_zeros_for_empty_prompt: mi
                .get("force_zeros_for_empty_prompt")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
            options: opts.clone(),
            text_sources: [
                dir.join("text_encoder").display().to_string(),
                dir.join("text_encoder_2").display().to_string(),
            ],
        })
    }

    /// Both encoders' penultimate states concatenated, and encoder 2's projected pooled state. Returns the part
    /// of the prompt that did not fit the 77-token window, if any.
    pub fn encode_prompt(&self, prompt: &str) -> Result<(Conditioning, Option<String>)> {
        let dev = &self.options.device;
        let t1 = self.tokenizer.encode(prompt)?;
        let t2 = self.tokenizer_2.encode(prompt)?;
        let ids = |t: &[u32]| Tensor::new(t, dev).and_then(|t| t.unsqueeze(0));
        let o1 = self.text_encoder.forward(&ids(&t1.ids)?)?;
        let o2 = self.text_encoder_2.forward(&ids(&t2.ids)?)?;
        let pooled = o2.text_embeds.ok_or_else(|| Error::Mismatch("text encoder 2 has no projection".into()))?;
        // each encoder checked on its own, so that the error names the weights that are wrong
        for (t, src) in [
            (&o1.penultimate, &self.text_sources[0]),
            (&o2.penultimate, &self.text_sources[1]),
            (&pooled, &self.text_sources[1]),
        ] {
            all_finite(
                t,
                &format!("the text encoder from {src}"),
                "non-finite weights in that file, or an f16 overflow (try --dtype bf16)",
            )?;
        }
        let embeds = Tensor::cat(&[&o1.penultimate, &o2.penultimate.to_dtype(o1.penultimate.dtype())?], 2)?;
        Ok((Conditioning { embeds, pooled }, t1.truncated.or(t2.truncated)))
    }

    /// The negative conditioning: zeros when there is no negative prompt (SDXL's rule), else its encoding.
    pub fn encode_negative(&self, negative: Option<&str>, like: &Conditioning) -> Result<Conditioning> {
        match negative {
            None if self.force_zeros_for_empty_prompt => Conditioning::zeros_like(like),
            n => Ok(self.encode_prompt(n.unwrap_or(""))?.0),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: super::scheduler::SamplerKind,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// Unit-Gaussian starting noise [batch, 4, h/8, w/8] instead of seeded noise (to reproduce another tool's run).
    pub init_noise: Option<Tensor>,
    /// img2img: an image in [-1, 1] [1, 3, H, W] and the strength (fraction of the schedule to run).
    pub init_image: Option<(Tensor, f64)>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            negative: None,
            seed: 0,
            steps: 20,
            cfg: 5.0,
            sampler: super::scheduler::SamplerKind::DpmPp2mKarras,
            width: 1024,
            height: 1024,
            batch: 1,
            init_noise: None,
            init_image: None,
        }
    }
}

pub struct Generated {
    /// [3, H, W] each, in about [-1, 1].
    pub images: Vec<Tensor>,
    pub latents: Tensor,
    /// Prompt text beyond the 77-token window (dropped, as diffusers does).
    pub truncated: Option<String>,
}

impl Sdxl {
    /// txt2img (or img2img with `init_image`). `progress` sees every step; `Break` cancels (returns `Ok(None)`).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(
            super::pipeline::StepProgress,
            Option<&super::pipeline::StepTrace>,
        ) -> std::ops::ControlFlow<()>,
    ) -> Result<Option<Generated>> {
        // (sizes are checked once, in generate_conditioned)
        let (cond, truncated) = self.encode_prompt(&req.prompt)?;
        let uncond = self.encode_negative(req.negative.as_deref(), &cond)?;
        self.generate_conditioned(req, &cond, &uncond, truncated, progress)
    }

    /// `generate` with the prompt and negative already encoded (`req.prompt`/`negative` are not read; a caller
    /// that caches encodings passes them here).
    pub fn generate_conditioned(
        &self,
        req: &GenerateRequest,
        cond: &Conditioning,
        uncond: &Conditioning,
        truncated: Option<String>,
        progress: &mut dyn FnMut(
            super::pipeline::StepProgress,
            Option<&super::pipeline::StepTrace>,
        ) -> std::ops::ControlFlow<()>,
    ) -> Result<Option<Generated>> {
        use super::pipeline::{batch_noise, sample, time_ids, SampleSpec};
        if !req.width.is_multiple_of(8) || !req.height.is_multiple_of(8) || req.width == 0 || req.height == 0 {
            return Err(Error::Mismatch(format!(
                "width and height must be positive multiples of 8, got {}×{}",
                req.width, req.height
            )));
        }
        if req.batch == 0 || req.batch > MAX_BATCH {
            return Err(Error::InvalidValue(format!("batch must be 1 to {MAX_BATCH}, got {}", req.batch)));
        }
        if req.width > MAX_SIDE || req.height > MAX_SIDE {
            return Err(Error::InvalidValue(format!(
                "{}×{} is larger than {MAX_SIDE} pixels a side (SDXL works at about 1024²)",
                req.width, req.height
            )));
        }
        self.check_memory(req)?;
        let dev = &self.options.device;
        let shape = [req.batch, self.vae.config().latent_channels, req.height / 8, req.width / 8];
        // item i of a batch is seeded with seed + i: it equals the image made alone with that seed
        let seeds: Vec<u64> = (0..req.batch as u64).map(|i| req.seed.wrapping_add(i)).collect();
        let noise = match &req.init_noise {
            Some(n) if n.dims() == shape => n.to_device(dev)?.to_dtype(self.options.dtype)?,
            Some(n) => {
                return Err(Error::Mismatch(format!(
                    "initial latents have shape {:?}; this request needs {shape:?}",
                    n.dims()
                )))
            }
            None => batch_noise(&seeds, &[1, shape[1], shape[2], shape[3]], dev)?.to_dtype(self.options.dtype)?,
        };
        let (init, strength) = match &req.init_image {
            Some((img, s)) => {
                let d = img.dims();
                if d.len() != 4 || d[1] != 3 || d[2] != req.height || d[3] != req.width {
                    return Err(Error::Mismatch(format!(
                        "init image is {}; this request is {}×{} (width×height)",
                        if d.len() == 4 { format!("{}×{}", d[3], d[2]) } else { format!("{d:?}") },
                        req.width,
                        req.height
                    )));
                }
                let z = self
                    .vae
                    .encode_latents(&img.to_device(dev)?.to_dtype(self.options.vae_dtype)?, None)?
                    .to_dtype(self.options.dtype)?;
                (Some(z.repeat((req.batch, 1, 1, 1))?), *s)
            }
            None => (None, 1.0),
        };
        let spec = SampleSpec {
            sampler: req.sampler,
            steps: req.steps,
            cfg: req.cfg,
            cond,
            uncond,
            time_ids: time_ids(req.height, req.width, dev)?,
            strength,
        };
        let Some(latents) = sample(&self.unet, &self.scheduler, &spec, &noise, init.as_ref(), &seeds, progress)? else {
            return Ok(None);
        };
        all_finite(
            &latents,
            "sampling",
            "non-finite UNet or LoRA weights, a LoRA at an extreme strength, or an f16 overflow (try --dtype bf16)",
        )?;
        let decoded = self.vae.decode(&latents.to_dtype(self.options.vae_dtype)?)?;
        all_finite(
            &decoded,
            "the VAE decode",
            "non-finite VAE weights, or SDXL's VAE in f16 (it overflows; the VAE runs in f32 unless told otherwise)",
        )?;
        let images = (0..req.batch).map(|i| decoded.get(i)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(Generated { images, latents, truncated }))
    }
}
