//! The session: the resident models (loaded lazily, unloadable one by one), the caches (encoder outputs by photo
//! hash, text encodings by prompt, LoRA factors by identity hash) and the LoRA mix currently merged into the
//! UNet. It is the one API that the scripts, the TUI and the CLI call; it knows nothing of Rhai or terminals —
//! it reports through a listener.
use crate::encode::features::FeatureSet;
use crate::encode::{encode_photo, Encoded};
use crate::error::{Error, Result};
use crate::face::analyser::Antelope;
use crate::hyper::synth::Branch;
use crate::hyper::{HyperLora, LoadOptions, TRIGGER};
use crate::identity::mix::{LoraMix, TermSource};
use crate::identity::{sha256_hex, Identity};
use crate::lora::LoraWeights;
use crate::pixels::Rgb8;
use crate::sdxl::model::{GenerateRequest, Sdxl, SdxlOptions};
use crate::sdxl::pipeline::Conditioning;
use crate::vision::clip::{load_clip_vision, ClipVision};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::models::ModelPaths;
pub use curriculum::{Dims, TrainOutcome, TrainRun};
pub use generate::Generate;
pub use image::Image;
use photos::PhotoFeatures;
pub use photos::PhotoSpec;
pub use refine::{detail_square, feather, RefineFace};
pub use train::{centre_crop, Finetune, FinetuneReport};

mod curriculum;
mod generate;
mod image;
mod lora;
mod models;
mod photos;
mod refine;
mod space;
mod train;
mod values;

pub use crate::face::analyser::{FaceOptions, FacePick};
pub use crate::sdxl::scheduler::SamplerKind;
pub use values::finite;

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
    /// One training step done (1-based) of `total`: its loss and learning rate. `first` is the first step of this
    /// run (a resumed run starts past 1), `elapsed` the seconds since it.
    Train {
        step: usize,
        total: usize,
        first: usize,
        loss: f64,
        lr: f64,
        elapsed: f64,
    },
    Note(String),
}

pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// One line per model component: where it comes from and whether it is resident.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub name: &'static str,
    pub path: Option<PathBuf>,
    pub loaded: bool,
}

pub struct Session {
    opts: SessionOptions,
    hyper: Option<HyperLora>,
    sdxl: Option<Sdxl>,
    face: Option<Antelope>,
    clip: Option<ClipVision>,
    photos: HashMap<String, Arc<PhotoFeatures>>,
    /// ArcFace embeddings by source (photo content hash and label, which names the face options), for
    /// `face_score`.
    embeddings: HashMap<(String, String), Vec<f32>>,
    text: HashMap<String, (Conditioning, Option<String>)>,
    synthesized: HashMap<String, Arc<LoraWeights>>,
    applied: Option<LoraMix>,
    listener: Listener,
    cancel: Arc<AtomicBool>,
    preview_every: usize,
    /// The steps of the last fine-tune (as far as it got), for `training_log` and `plot_loss`.
    training_log: Vec<crate::train::finetune::StepReport>,
}

/// The configured path of a model, or an error naming the flag that gives it.
fn configured<'a>(p: &'a Option<PathBuf>, what: &str, flag: &str) -> Result<&'a Path> {
    p.as_deref().ok_or_else(|| Error::NotConfigured { what: what.into(), flag: flag.into() })
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
            training_log: Vec::new(),
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
}
