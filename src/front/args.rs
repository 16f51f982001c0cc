//! What every front end (the CLI commands, the line REPL, the TUI) shares: the model flags, where the models are
//! (flags > environment > config file > ComfyUI tree > hub cache), the device and dtype, and the session built
//! from them.
use crate::session::{Event, ModelPaths, Session, SessionOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The dtype SDXL computes in (the VAE stays f32).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDtype {
    F32,
    F16,
    Bf16,
}

impl ComputeDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ComputeDtype::F32 => candle_core::DType::F32,
            ComputeDtype::F16 => candle_core::DType::F16,
            ComputeDtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// SDXL diffusers folder or single-file checkpoint.
    #[arg(long, env = "HYPERLORA_SDXL", value_name = "DIR_OR_FILE")]
    pub sdxl: Option<PathBuf>,
    /// For a single-file --sdxl whose dimensions differ from SDXL base: a diffusers-layout folder with its configs
    /// (tokenizers are built in; a tokenizer*/ folder there overrides them).
    #[arg(long, env = "HYPERLORA_SDXL_CONFIG", value_name = "DIR")]
    pub sdxl_config: Option<PathBuf>,
    /// HyperLoRA variant folder.
    #[arg(long, env = "HYPERLORA_HYPERLORA", value_name = "DIR")]
    pub hyperlora: Option<PathBuf>,
    /// CLIP ViT-L/14 vision folder.
    #[arg(long, env = "HYPERLORA_CLIP", value_name = "DIR")]
    pub clip: Option<PathBuf>,
    /// insightface antelopev2 folder.
    #[arg(long, env = "HYPERLORA_ANTELOPEV2", value_name = "DIR")]
    pub antelopev2: Option<PathBuf>,
    /// A ComfyUI `models/` folder (or the ComfyUI folder) to search for models not given otherwise.
    #[arg(long, env = "HYPERLORA_COMFYUI", value_name = "DIR")]
    pub comfyui: Option<PathBuf>,
    /// Use the embedded tiny demo set (random weights) for every model not given by a flag or variable (the
    /// config file and searches are skipped); defines `demo_photo` and
    /// `demo_box` in scripts.
    #[arg(long)]
    pub demo: bool,
    /// `cpu`, or `cuda` / `cuda:N` in builds with the cuda feature (default: the config file's, else cpu).
    #[arg(long, env = "HYPERLORA_DEVICE")]
    pub device: Option<String>,
    /// SDXL UNet/text-encoder dtype; the VAE stays f32 (default: the config file's, else f32).
    #[arg(long, value_enum, env = "HYPERLORA_DTYPE")]
    pub dtype: Option<ComputeDtype>,
    /// Image previews in the terminal: auto (when stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value = "auto")]
    pub preview: Preview,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preview {
    Auto,
    Always,
    Never,
}

impl ModelArgs {
    /// The model paths the flags (and their environment variables) name.
    pub fn paths(&self) -> ModelPaths {
        ModelPaths {
            sdxl: self.sdxl.clone(),
            sdxl_config: self.sdxl_config.clone(),
            hyperlora: self.hyperlora.clone(),
            clip: self.clip.clone(),
            antelopev2: self.antelopev2.clone(),
        }
    }
}

/// Model paths: flags and environment first, then the config file, then a ComfyUI tree (flag, env or config),
/// then the Hugging Face hub cache. Returns the paths and the hints the searches left.
pub fn resolve_paths(a: &ModelArgs) -> anyhow::Result<(ModelPaths, Vec<String>)> {
    // a configs folder that is not there is a mistyped path, never silently skipped
    if let Some(c) = a.sdxl_config.as_ref().filter(|c| !c.is_dir()) {
        anyhow::bail!(
            "{}: --sdxl-config is not a folder (a diffusers-layout folder with the configs is expected)",
            c.display()
        );
    }
    let mut paths = a.paths();
    let mut hints = Vec::new();
    if a.demo {
        // the demo set stands in for everything not named explicitly; no config file or searches
        let d = demo_set()?;
        paths.sdxl.get_or_insert(d.sdxl.clone());
        paths.hyperlora.get_or_insert(d.hyperlora.clone());
        paths.clip.get_or_insert(d.clip.clone());
        paths.antelopev2.get_or_insert(d.antelopev2.clone());
        return Ok((paths, hints));
    }
    let cfg = crate::models::load_config(&crate::models::config_path())?.unwrap_or_default();
    paths.or_from(&cfg.paths());
    if let Some(root) = a.comfyui.clone().or(cfg.comfyui.clone()) {
        let d = crate::models::discover_comfyui(&root);
        d.fill(&mut paths);
        hints.extend(d.hints);
    }
    let d = crate::models::discover_hub(&crate::models::hub_dir());
    d.fill(&mut paths);
    hints.extend(d.hints);
    // a single-file checkpoint carries no tokenizers: borrow them from an SDXL base folder in the hub cache
    if paths.sdxl.as_ref().is_some_and(|p| p.is_file()) && paths.sdxl_config.is_none() {
        paths.sdxl_config = d.candidates.iter().find(|(c, p)| *c == "sdxl" && p.is_dir()).map(|(_, p)| p.clone());
    }
    Ok((paths, hints))
}

/// A configs folder given for a single-file checkpoint must exist: a mistyped path is an error, never skipped.
pub fn configs_folder(dir: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    match dir.filter(|c| !c.is_dir()) {
        Some(c) => anyhow::bail!(
            "{}: {flag} is not a folder (a diffusers-layout folder with the configs is expected)",
            c.display()
        ),
        None => Ok(()),
    }
}

/// The session for resolved paths, reporting to `listener`.
pub fn session_with(
    a: &ModelArgs,
    mut paths: ModelPaths,
    listener: crate::session::Listener,
) -> anyhow::Result<(Arc<Mutex<Session>>, Option<crate::synthetic::demo::DemoSet>)> {
    let demo = if a.demo {
        let d = demo_set()?;
        paths.sdxl.get_or_insert(d.sdxl.clone());
        paths.hyperlora.get_or_insert(d.hyperlora.clone());
        paths.clip.get_or_insert(d.clip.clone());
        paths.antelopev2.get_or_insert(d.antelopev2.clone());
        Some(d)
    } else {
        None
    };
    let (device, dtype) = device_dtype(a)?;
    let opts = SessionOptions { paths, device: crate::front::device(&device)?, dtype: dtype.dtype() };
    Ok((Arc::new(Mutex::new(Session::new(opts, listener))), demo))
}

/// Device and dtype: flag or environment, else the config file (not with --demo), else cpu / f32.
pub fn device_dtype(a: &ModelArgs) -> anyhow::Result<(String, ComputeDtype)> {
    let cfg = if a.demo { None } else { crate::models::load_config(&crate::models::config_path())? };
    let cfg = cfg.unwrap_or_default();
    let device = a.device.clone().or(cfg.device).unwrap_or_else(|| "cpu".into());
    let dtype = match (a.dtype, cfg.dtype.as_deref()) {
        (Some(d), _) => d,
        (None, Some(s)) => <ComputeDtype as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            anyhow::anyhow!("{}: dtype `{s}`: expected f32, f16 or bf16", crate::models::config_path().display())
        })?,
        (None, None) => ComputeDtype::F32,
    };
    Ok((device, dtype))
}

/// A session for a one-shot command: CPU, f32, given paths, reporting nothing (the command prints its result).
pub fn quiet_session(paths: ModelPaths) -> Session {
    Session::new(
        SessionOptions { paths, device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 },
        Arc::new(|_: &Event| {}),
    )
}

pub fn demo_set() -> anyhow::Result<crate::synthetic::demo::DemoSet> {
    let dir = crate::synthetic::demo::default_dir();
    if !dir.join("complete").is_file() {
        eprintln!("writing the tiny demo set (random weights) to {} …", dir.display());
    }
    let (set, _) = crate::synthetic::demo::ensure(&dir)?;
    Ok(set)
}

/// Set the demo set's variables in a script: `demo_photo`, `demo_box`, `size` (128) and `steps` (6).
pub fn define_demo(script: &mut crate::script::Script, d: &crate::synthetic::demo::DemoSet) {
    let b = crate::synthetic::demo::PHOTO_FACE_BOX;
    script.set("demo_photo", rhai::Dynamic::from(d.photo.display().to_string()));
    script.set("demo_box", rhai::Dynamic::from(b.iter().map(|v| rhai::Dynamic::from(*v)).collect::<rhai::Array>()));
    script.set("size", rhai::Dynamic::from(128_i64));
    script.set("steps", rhai::Dynamic::from(6_i64));
}
