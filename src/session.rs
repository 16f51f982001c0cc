//! The session: the resident models (loaded lazily, unloadable one by one), the caches (encoder outputs by photo
//! hash, text encodings by prompt, LoRA factors by identity hash) and the LoRA mix currently merged into the
//! UNet. It is the one API that the scripts, the TUI and the CLI call; it knows nothing of Rhai or terminals —
//! it reports through a listener.
use crate::encode::{encode_photo, Encoded};
use crate::error::{Error, Result};
use crate::face::analyser::{Antelope, FaceOptions, FacePick};
use crate::features::FeatureSet;
use crate::hyper::synth::Branch;
use crate::hyper::{HyperLora, LoadOptions, TRIGGER};
use crate::identity::{sha256_hex, Identity};
use crate::lora::LoraWeights;
use crate::mix::{LoraMix, TermSource};
use crate::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
use crate::sdxl::pipeline::Conditioning;
use crate::sdxl::scheduler::SamplerKind;
use crate::vision::clip::{load_clip_vision, ClipVision};
use crate::vision::processor::Rgb8;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the models are. A missing entry is an error only when that model is needed.
#[derive(Debug, Clone, Default)]
pub struct ModelPaths {
    /// SDXL diffusers folder or single-file checkpoint.
    pub sdxl: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers-layout folder with its tokenizers and configs.
    pub sdxl_config: Option<PathBuf>,
    /// HyperLoRA variant folder.
    pub hyperlora: Option<PathBuf>,
    /// CLIP ViT-L/14 vision folder.
    pub clip: Option<PathBuf>,
    /// insightface antelopev2 folder.
    pub antelopev2: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub paths: ModelPaths,
    pub device: Device,
    /// SDXL UNet/text-encoder dtype (the VAE, the hypernetwork and CLIP stay f32).
    pub dtype: DType,
}

/// What the session reports while it works.
#[derive(Debug, Clone)]
pub enum Event {
    Loading {
        component: &'static str,
        path: PathBuf,
    },
    Loaded {
        component: &'static str,
        seconds: f64,
    },
    Encoded {
        photo: String,
        detail: String,
        cached: bool,
    },
    /// One denoising step done (1-based) of `total`, `elapsed` seconds since sampling began.
    Step {
        step: usize,
        total: usize,
        elapsed: f64,
    },
    /// A cheap look at the latents mid-run (every `set_latent_preview` steps): latent channels 1–3 stretched to
    /// RGB at 1/8 of the image size — structure, not colours.
    Preview {
        step: usize,
        total: usize,
        image: Image,
    },
    Note(String),
}

pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// A generated image and the settings that made it.
#[derive(Clone, Debug)]
pub struct Image {
    pub rgb: Arc<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub prompt: String,
    /// Everything written into the PNG's text chunks.
    pub settings: Vec<(String, String)>,
    /// Where it was last saved.
    pub path: Option<PathBuf>,
}

impl Image {
    pub fn rgb8(&self) -> Rgb8 {
        Rgb8 { width: self.width, height: self.height, data: self.rgb.as_ref().clone() }
    }
    pub fn summary(&self) -> String {
        let path = self.path.as_ref().map(|p| format!(", saved as {}", p.display())).unwrap_or_default();
        format!("image {}×{}, seed {}{path}", self.width, self.height, self.seed)
    }
}

/// One photo to encode.
#[derive(Debug, Clone)]
pub struct PhotoSpec {
    pub path: PathBuf,
    pub options: FaceOptions,
}

impl PhotoSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PhotoSpec { path: path.into(), options: FaceOptions::default() }
    }
}

/// A generation request as the script API spells it.
#[derive(Debug, Clone)]
pub struct Generate {
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: SamplerKind,
    pub width: usize,
    pub height: usize,
    pub lora: Option<LoraMix>,
}

impl Generate {
    pub fn new(prompt: impl Into<String>) -> Self {
        let r = GenerateRequest::new("");
        Generate {
            prompt: prompt.into(),
            negative: None,
            seed: 0,
            steps: r.steps,
            cfg: r.cfg,
            sampler: r.sampler,
            width: r.width,
            height: r.height,
            lora: None,
        }
    }
}

/// One line per model component: where it comes from and whether it is resident.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub name: &'static str,
    pub path: Option<PathBuf>,
    pub loaded: bool,
}

/// The encoder outputs of one photo (with its options), cached by content.
struct PhotoFeatures {
    arcface: Vec<f32>,
    clip: Tensor,
    source: crate::identity::Source,
}

pub struct Session {
    opts: SessionOptions,
    hyper: Option<HyperLora>,
    sdxl: Option<Sdxl>,
    face: Option<Antelope>,
    clip: Option<ClipVision>,
    photos: HashMap<String, Arc<PhotoFeatures>>,
    /// ArcFace embeddings by photo content hash, for `face_score`.
    embeddings: HashMap<String, Vec<f32>>,
    text: HashMap<String, (Conditioning, Option<String>)>,
    synthesized: HashMap<String, Arc<LoraWeights>>,
    applied: Option<LoraMix>,
    listener: Listener,
    cancel: Arc<AtomicBool>,
    preview_every: usize,
}

/// Latent channels 0–2 of [1, C, h, w], each stretched to 0–255 over its own range.
fn latent_preview(x: &Tensor, step: usize) -> Result<Image> {
    let x = x.get(0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (c, h, w) = x.dims3()?;
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let mut rgb = vec![0u8; w * h * 3];
    for ch in 0..3.min(c) {
        let plane = &v[ch * h * w..(ch + 1) * h * w];
        let (lo, hi) = plane.iter().fold((f32::MAX, f32::MIN), |(a, b), &p| (a.min(p), b.max(p)));
        let span = (hi - lo).max(1e-6);
        for (i, p) in plane.iter().enumerate() {
            rgb[i * 3 + ch] = ((p - lo) / span * 255.0) as u8;
        }
    }
    Ok(Image { rgb: Arc::new(rgb), width: w, height: h, seed: 0, prompt: format!("latents at step {step}"), settings: Vec::new(), path: None })
}

fn need<'a>(p: &'a Option<PathBuf>, what: &str, flag: &str) -> Result<&'a Path> {
    p.as_deref().ok_or_else(|| Error::Mismatch(format!("no {what} configured: give {flag} (or use --demo for the tiny demo set)")))
}

impl Session {
    pub fn new(opts: SessionOptions, listener: Listener) -> Self {
        Session {
            opts,
            hyper: None,
            sdxl: None,
            face: None,
            clip: None,
            photos: HashMap::new(),
            embeddings: HashMap::new(),
            text: HashMap::new(),
            synthesized: HashMap::new(),
            applied: None,
            listener,
            cancel: Arc::new(AtomicBool::new(false)),
            preview_every: 0,
        }
    }

    /// Report a latent preview every `n` steps during generation (0: never).
    pub fn set_latent_preview(&mut self, n: usize) {
        self.preview_every = n;
    }

    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// Set to stop the running job (checked between steps and photos); cleared when a job starts.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn cancelled(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    fn emit(&self, e: Event) {
        (self.listener)(&e)
    }

    fn timed<T>(&self, component: &'static str, path: &Path, load: impl FnOnce() -> Result<T>) -> Result<T> {
        self.emit(Event::Loading { component, path: path.to_path_buf() });
        let t = Instant::now();
        let v = load()?;
        self.emit(Event::Loaded { component, seconds: t.elapsed().as_secs_f64() });
        Ok(v)
    }

    pub fn hyper(&mut self) -> Result<&HyperLora> {
        if self.hyper.is_none() {
            let dir = need(&self.opts.paths.hyperlora, "HyperLoRA variant folder", "--hyperlora")?.to_path_buf();
            let h = self.timed("hyperlora", &dir, || HyperLora::load(&dir, &LoadOptions::default()))?;
            self.hyper = Some(h);
        }
        Ok(self.hyper.as_ref().expect("loaded"))
    }

    pub fn sdxl(&mut self) -> Result<&mut Sdxl> {
        if self.sdxl.is_none() {
            let path = need(&self.opts.paths.sdxl, "SDXL checkpoint", "--sdxl")?.to_path_buf();
            let cfg = self.opts.paths.sdxl_config.clone();
            let o = SdxlOptions { device: self.opts.device.clone(), dtype: self.opts.dtype, vae_dtype: DType::F32 };
            let m = self.timed("sdxl", &path, || Sdxl::load(&path, cfg.as_deref(), &o))?;
            self.sdxl = Some(m);
            self.applied = None;
            self.text.clear();
        }
        Ok(self.sdxl.as_mut().expect("loaded"))
    }

    fn encoders(&mut self) -> Result<()> {
        self.face()?;
        if self.clip.is_none() {
            let dir = need(&self.opts.paths.clip, "CLIP vision folder", "--clip")?.to_path_buf();
            let dev = self.opts.device.clone();
            self.clip = Some(self.timed("clip", &dir, || load_clip_vision(&dir, DType::F32, &dev))?);
        }
        Ok(())
    }

    fn face(&mut self) -> Result<&Antelope> {
        if self.face.is_none() {
            let dir = need(&self.opts.paths.antelopev2, "antelopev2 folder", "--antelopev2")?.to_path_buf();
            self.face = Some(self.timed("antelopev2", &dir, || Antelope::load(&dir))?);
        }
        Ok(self.face.as_ref().expect("loaded"))
    }

    /// Free a component: `sdxl`, `hyperlora`, `clip`, `antelopev2`, `encoders` (clip + antelopev2) or `all`.
    /// Values already made (identities, images) stay valid; the model reloads when next needed.
    pub fn unload(&mut self, name: &str) -> Result<Vec<&'static str>> {
        let mut freed = Vec::new();
        let all = name == "all";
        if all || name == "sdxl" {
            if self.sdxl.take().is_some() {
                freed.push("sdxl");
            }
            self.applied = None;
            self.text.clear();
        }
        if all || name == "hyperlora" || name == "hyper" {
            if self.hyper.take().is_some() {
                freed.push("hyperlora");
            }
            self.synthesized.clear();
        }
        if all || name == "clip" || name == "encoders" {
            if self.clip.take().is_some() {
                freed.push("clip");
            }
        }
        if all || name == "antelopev2" || name == "face" || name == "encoders" {
            if self.face.take().is_some() {
                freed.push("antelopev2");
            }
        }
        if !["all", "sdxl", "hyperlora", "hyper", "clip", "encoders", "antelopev2", "face"].contains(&name) {
            return Err(Error::Mismatch(format!("unload(\"{name}\"): expected sdxl, hyperlora, clip, antelopev2, encoders or all")));
        }
        Ok(freed)
    }

    pub fn models(&self) -> Vec<ModelStatus> {
        let p = &self.opts.paths;
        vec![
            ModelStatus { name: "sdxl", path: p.sdxl.clone(), loaded: self.sdxl.is_some() },
            ModelStatus { name: "hyperlora", path: p.hyperlora.clone(), loaded: self.hyper.is_some() },
            ModelStatus { name: "clip", path: p.clip.clone(), loaded: self.clip.is_some() },
            ModelStatus { name: "antelopev2", path: p.antelopev2.clone(), loaded: self.face.is_some() },
        ]
    }

    /// Cache sizes: encoded photos, prompt encodings, synthesized LoRAs.
    pub fn cache_counts(&self) -> (usize, usize, usize) {
        (self.photos.len(), self.text.len(), self.synthesized.len())
    }

    /// The mix merged into the UNet now, if any.
    pub fn applied(&self) -> Option<&LoraMix> {
        self.applied.as_ref()
    }

    fn encode_one(&mut self, spec: &PhotoSpec) -> Result<Arc<PhotoFeatures>> {
        let bytes = std::fs::read(&spec.path).map_err(|e| Error::io(&spec.path, e))?;
        let key = format!("{}:{:?}", sha256_hex(&bytes), spec.options);
        if let Some(f) = self.photos.get(&key) {
            self.emit(Event::Encoded { photo: spec.path.display().to_string(), detail: "from the cache".into(), cached: true });
            return Ok(f.clone());
        }
        let e = self.encode_photo(spec)?;
        self.emit(Event::Encoded { photo: spec.path.display().to_string(), detail: e.face.describe(), cached: false });
        Ok(self.photos[&key].clone())
    }

    /// Encode one photo with everything the face stack found (for `hyperlora encode` and debugging); the result
    /// also lands in the feature cache.
    pub fn encode_photo(&mut self, spec: &PhotoSpec) -> Result<Encoded> {
        self.encoders()?;
        let (face, clip) = (self.face.as_ref().expect("loaded"), self.clip.as_ref().expect("loaded"));
        let e = encode_photo(face, clip, &spec.path, &spec.options)?;
        let key = format!("{}:{:?}", e.source.hash, spec.options);
        self.embeddings.insert(e.source.hash.clone(), e.face.embedding.clone());
        self.photos.insert(key, Arc::new(PhotoFeatures { arcface: e.face.embedding.clone(), clip: e.clip.clone(), source: e.source.clone() }));
        Ok(e)
    }

    /// An identity from precomputed encoder outputs (a features file).
    pub fn identity_from_features(&mut self, set: &FeatureSet) -> Result<Identity> {
        self.hyper()?.identity(set)
    }

    /// Encode photos of one person and fuse them into an identity (several photos are averaged the HyperLoRA
    /// way: raw resampler outputs meaned before normalisation).
    pub fn identity(&mut self, photos: &[PhotoSpec]) -> Result<Identity> {
        self.cancel.store(false, Ordering::Relaxed);
        if photos.is_empty() {
            return Err(Error::Mismatch("identity([]): give at least one photo".into()));
        }
        let mut feats = Vec::new();
        for p in photos {
            self.cancelled()?;
            feats.push(self.encode_one(p)?);
        }
        let e = feats[0].arcface.len();
        let arcface = Tensor::from_vec(feats.iter().flat_map(|f| f.arcface.iter().copied()).collect::<Vec<_>>(), (feats.len(), e), &Device::Cpu)?;
        let clip = Tensor::cat(&feats.iter().map(|f| &f.clip).collect::<Vec<_>>(), 0)?;
        let set = FeatureSet::new(arcface, clip, None, feats.iter().map(|f| f.source.clone()).collect())?;
        self.hyper()?.identity(&set)
    }

    /// Check that an identity (e.g. loaded from a file) belongs to the loaded variant.
    pub fn check_identity(&mut self, id: &Identity) -> Result<()> {
        self.hyper()?.check_identity(id)
    }

    fn synthesized(&mut self, id: &Identity, branch: Branch) -> Result<Arc<LoraWeights>> {
        let key = format!("{}:{branch:?}", id.hash());
        if let Some(w) = self.synthesized.get(&key) {
            return Ok(w.clone());
        }
        let w = Arc::new(self.hyper()?.synthesize(id, branch)?);
        self.synthesized.insert(key, w.clone());
        Ok(w)
    }

    /// The mix as per-layer LoRA weights (ΔW = Σ wᵢ·scaleᵢ·Uᵢ·Dᵢ), synthesis cached per identity.
    pub fn lora_weights(&mut self, mix: &LoraMix) -> Result<LoraWeights> {
        // synthesize (or find) every identity's factors first, then combine borrowing them from the cache
        for t in mix.terms() {
            if let TermSource::Identity(id) = &t.source {
                if t.weight != 0.0 {
                    self.synthesized(id, Branch::Id)?;
                }
                if t.base_weight != 0.0 {
                    self.synthesized(id, Branch::Base)?;
                }
            }
        }
        let cache = &self.synthesized;
        crate::hyper::combine(mix, &mut |id, branch| {
            let w = cache
                .get(&format!("{}:{branch:?}", id.hash()))
                .ok_or_else(|| Error::Mismatch(format!("identity {}: LoRA factors missing from the cache", id.short_hash())))?;
            Ok(std::borrow::Cow::Borrowed(w.as_ref()))
        })
    }

    /// A LoRA file (kohya, diffusers or PEFT names) as a mix term at strength `weight`.
    pub fn lora_file(&mut self, path: &Path, weight: f64) -> Result<LoraMix> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let imp = crate::lora::file::import(path)?;
        if imp.weights.layers.is_empty() {
            return Err(Error::invalid(path, "no UNet LoRA layers found (text-encoder-only or not a LoRA file)"));
        }
        if !imp.unmatched.is_empty() {
            self.emit(Event::Note(format!("{}: {} keys not used, e.g. {}", path.display(), imp.unmatched.len(), imp.unmatched[0])));
        }
        Ok(LoraMix::file(path.to_path_buf(), sha256_hex(&bytes), Arc::new(imp.weights), weight))
    }

    /// Merge `mix` into the UNet (or restore it for none). Projections whose terms did not change are left alone.
    pub fn apply(&mut self, mix: Option<&LoraMix>) -> Result<()> {
        let mix = mix.filter(|m| !m.is_empty());
        let same = match (&self.applied, mix) {
            (None, None) => true,
            (Some(a), Some(b)) => a.approx_eq(b, 0.0),
            _ => false,
        };
        if same && self.sdxl.is_some() {
            return Ok(());
        }
        let weights = match mix {
            Some(m) => Some(self.lora_weights(m)?),
            None => None,
        };
        let sdxl = self.sdxl()?;
        let report = match &weights {
            Some(w) => sdxl.unet.set_lora(w)?,
            None => sdxl.unet.clear_lora()?,
        };
        if !report.unmatched.is_empty() {
            let first = report.unmatched[0].clone();
            self.emit(Event::Note(format!("LoRA: {} targets are not in this UNet, e.g. {first}", report.unmatched.len())));
        }
        self.emit(Event::Note(format!("LoRA: {} projections merged, {} restored, {} unchanged", report.merged, report.restored, report.unchanged)));
        self.applied = mix.cloned();
        Ok(())
    }

    fn encode_text(&mut self, prompt: &str, negative: Option<&str>) -> Result<(Conditioning, Conditioning, Option<String>)> {
        let key = format!("p:{prompt}");
        if !self.text.contains_key(&key) {
            let c = self.sdxl()?.encode_prompt(prompt)?;
            self.text.insert(key.clone(), c);
        }
        let (cond, truncated) = self.text[&key].clone();
        let nkey = format!("n:{negative:?}");
        if !self.text.contains_key(&nkey) {
            let n = self.sdxl()?.encode_negative(negative, &cond)?;
            self.text.insert(nkey.clone(), (n, None));
        }
        Ok((cond, self.text[&nkey].0.clone(), truncated))
    }

    /// Generate one image. With identity terms in the LoRA, the trigger words are put in front of the prompt
    /// when it lacks them.
    pub fn generate(&mut self, g: &Generate) -> Result<Image> {
        self.cancel.store(false, Ordering::Relaxed);
        self.apply(g.lora.as_ref())?;
        let has_identity = g.lora.as_ref().is_some_and(|m| m.terms().iter().any(|t| matches!(t.source, TermSource::Identity(_))));
        let prompt = if has_identity && !g.prompt.contains(TRIGGER) { format!("{TRIGGER}, {}", g.prompt) } else { g.prompt.clone() };
        let (cond, uncond, truncated) = self.encode_text(&prompt, g.negative.as_deref())?;
        if let Some(t) = &truncated {
            self.emit(Event::Note(format!("prompt longer than 77 tokens; dropped: {t:?}")));
        }
        let req = GenerateRequest {
            prompt: prompt.clone(),
            negative: g.negative.clone(),
            seed: g.seed,
            steps: g.steps,
            cfg: g.cfg,
            sampler: g.sampler,
            width: g.width,
            height: g.height,
            batch: 1,
            init_noise: None,
            init_image: None,
        };
        let (listener, cancel, every) = (self.listener.clone(), self.cancel.clone(), self.preview_every);
        let t0 = Instant::now();
        let sdxl = self.sdxl()?;
        let out = sdxl.generate_conditioned(&req, &cond, &uncond, truncated, &mut |p, trace| {
            listener(&Event::Step { step: p.step, total: p.total, elapsed: t0.elapsed().as_secs_f64() });
            if let (true, Some(t)) = (every > 0 && p.step % every == 0 && p.step < p.total, trace) {
                if let Ok(image) = latent_preview(&t.x_after, p.step) {
                    listener(&Event::Preview { step: p.step, total: p.total, image });
                }
            }
            if cancel.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let out = out.ok_or(Error::Cancelled)?;
        let (rgb, w, h) = crate::png_meta::to_rgb8(&out.images[0])?;
        let model = sdxl.name.clone();
        let loras = g.lora.as_ref().map(|m| m.summary()).unwrap_or_default();
        let settings = vec![
            ("prompt".to_string(), prompt.clone()),
            ("negative_prompt".to_string(), g.negative.clone().unwrap_or_default()),
            ("seed".to_string(), g.seed.to_string()),
            ("steps".to_string(), g.steps.to_string()),
            ("cfg".to_string(), g.cfg.to_string()),
            ("sampler".to_string(), g.sampler.name().to_string()),
            ("size".to_string(), format!("{w}x{h}")),
            ("model".to_string(), model),
            ("loras".to_string(), loras),
            ("hyperlora_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ];
        Ok(Image { rgb: Arc::new(rgb), width: w, height: h, seed: g.seed, prompt, settings, path: None })
    }

    /// Write an image as PNG with its settings (never over an existing file unless `overwrite`).
    pub fn save_image(&self, img: &mut Image, path: &Path, overwrite: bool) -> Result<()> {
        let png = crate::png_meta::encode_png(&img.rgb, img.width, img.height, &img.settings)?;
        crate::output::write_file(path, &png, overwrite)?;
        img.path = Some(path.to_path_buf());
        Ok(())
    }

    /// Export a mix as one kohya LoRA file (terms stacked on the rank axis).
    pub fn export_lora(&mut self, mix: &LoraMix, path: &Path, dtype: DType, overwrite: bool) -> Result<crate::lora::file::ExportSummary> {
        if mix.is_empty() {
            return Err(Error::Mismatch("export_lora: the mix is empty".into()));
        }
        let weights = self.lora_weights(mix)?;
        let hyper = self.hyper()?;
        let title = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let meta = crate::lora::file::kohya_metadata(
            &title,
            weights.layers.iter().map(|l| l.rank()).max().unwrap_or(0),
            "HyperLoRA LoRA mix (UNet attention only); start prompts with the trigger phrase",
            &[
                ("hyperlora.variant", format!("{} {}", hyper.variant().label, hyper.variant().hash)),
                ("hyperlora.mix", mix.summary()),
                (
                    "hyperlora.identities",
                    mix.terms().iter().filter_map(|t| if let TermSource::Identity(id) = &t.source { Some(id.hash()) } else { None }).collect::<Vec<_>>().join(" "),
                ),
            ],
        );
        crate::lora::file::export_kohya(&weights, path, dtype, meta, overwrite)
    }

    /// ArcFace cosine between the face in `img` and the identity's photos (mean over the photos this session
    /// encoded). `pick` chooses the face in the image (a box skips detection).
    pub fn face_score(&mut self, img: &Image, id: &Identity, pick: FacePick) -> Result<f64> {
        let refs: Vec<Vec<f32>> = id.sources().iter().filter_map(|s| self.embeddings.get(&s.hash).cloned()).collect();
        if refs.is_empty() {
            return Err(Error::Mismatch(format!(
                "face_score: identity {} was not made from photos encoded in this session (its ArcFace embeddings are not known)",
                id.short_hash()
            )));
        }
        let what = img.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("generated image (seed {})", img.seed));
        let (e, _) = self.face()?.embed_face(&img.rgb8(), &what, pick)?;
        let cos = |r: &[f32]| r.iter().zip(&e).map(|(a, b)| (*a * *b) as f64).sum::<f64>();
        Ok(refs.iter().map(|r| cos(r)).sum::<f64>() / refs.len() as f64)
    }
}
