//! What `run`, `repl` and `demo` share: the model flags, the session with a terminal listener, and how script
//! output reaches the terminal.
use crate::script::Out;
use crate::session::{Event, ModelPaths, Session, SessionOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// SDXL diffusers folder or single-file checkpoint.
    #[arg(long, env = "HYPERLORA_SDXL", value_name = "DIR_OR_FILE")]
    pub sdxl: Option<PathBuf>,
    /// For a single-file --sdxl: a diffusers-layout folder with tokenizers and configs.
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
    pub dtype: Option<super::OutDtype>,
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

/// Model paths: flags and environment first, then the config file, then a ComfyUI tree (flag, env or config),
/// then the Hugging Face hub cache. Returns the paths and the hints the searches left.
pub fn resolve_paths(a: &ModelArgs) -> anyhow::Result<(ModelPaths, Vec<String>)> {
    let mut paths = ModelPaths {
        sdxl: a.sdxl.clone(),
        sdxl_config: a.sdxl_config.clone(),
        hyperlora: a.hyperlora.clone(),
        clip: a.clip.clone(),
        antelopev2: a.antelopev2.clone(),
    };
    let mut hints = Vec::new();
    if a.demo {
        // the demo set stands in for everything not named explicitly; no config file or searches
        return Ok((paths, hints));
    }
    let cfg = crate::models::load_config(&crate::models::config_path())?.unwrap_or_default();
    for (slot, v) in [
        (&mut paths.sdxl, &cfg.sdxl),
        (&mut paths.sdxl_config, &cfg.sdxl_config),
        (&mut paths.hyperlora, &cfg.hyperlora),
        (&mut paths.clip, &cfg.clip),
        (&mut paths.antelopev2, &cfg.antelopev2),
    ] {
        if slot.is_none() {
            *slot = v.clone();
        }
    }
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

/// The session for these flags (with the demo set filled in when asked), and the demo set if used.
pub fn session(a: &ModelArgs) -> anyhow::Result<(Arc<Mutex<Session>>, Option<crate::demo::DemoSet>)> {
    let (paths, hints) = resolve_paths(a)?;
    for h in hints {
        eprintln!("hint: {h}");
    }
    session_with(a, paths, listener())
}

/// The session for resolved paths, reporting to `listener`.
pub fn session_with(
    a: &ModelArgs,
    mut paths: ModelPaths,
    listener: crate::session::Listener,
) -> anyhow::Result<(Arc<Mutex<Session>>, Option<crate::demo::DemoSet>)> {
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
    let opts = SessionOptions { paths, device: super::generate::device(&device)?, dtype: dtype.dtype() };
    Ok((Arc::new(Mutex::new(Session::new(opts, listener))), demo))
}

/// Device and dtype: flag or environment, else the config file (not with --demo), else cpu / f32.
pub fn device_dtype(a: &ModelArgs) -> anyhow::Result<(String, super::OutDtype)> {
    let cfg = if a.demo { None } else { crate::models::load_config(&crate::models::config_path())? };
    let cfg = cfg.unwrap_or_default();
    let device = a.device.clone().or(cfg.device).unwrap_or_else(|| "cpu".into());
    let dtype = match (a.dtype, cfg.dtype.as_deref()) {
        (Some(d), _) => d,
        (None, Some(s)) => <super::OutDtype as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| anyhow::anyhow!("{}: dtype `{s}`: expected f32, f16 or bf16", crate::models::config_path().display()))?,
        (None, None) => super::OutDtype::F32,
    };
    Ok((device, dtype))
}

/// A session for a one-shot command: CPU, f32, given paths, reporting nothing (the command prints its result).
pub fn quiet_session(paths: ModelPaths) -> Session {
    Session::new(SessionOptions { paths, device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 }, Arc::new(|_: &Event| {}))
}

pub fn demo_set() -> anyhow::Result<crate::demo::DemoSet> {
    let dir = crate::demo::default_dir();
    if !dir.join("complete").is_file() {
        eprintln!("writing the tiny demo set (random weights) to {} …", dir.display());
    }
    let (set, _) = crate::demo::ensure(&dir)?;
    Ok(set)
}

/// Progress on stderr: loads, encodes, a step bar while sampling, notes.
fn listener() -> crate::session::Listener {
    let bar: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);
    Arc::new(move |e: &Event| match e {
        Event::Loading { component, path } => {
            eprintln!("loading {component} from {} …", path.display())
        }
        Event::Loaded { component, seconds } => eprintln!("loaded {component} in {seconds:.1} s"),
        Event::Encoded { photo, detail, .. } => eprintln!("{photo}: {detail}"),
        Event::Note(n) => eprintln!("{n}"),
        Event::Preview { .. } => {}
        Event::Step { step, total, .. } => {
            let Ok(mut b) = bar.lock() else { return };
            let pb = b.get_or_insert_with(|| {
                let pb = indicatif::ProgressBar::new(*total as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {per_sec} eta {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                pb
            });
            pb.set_length(*total as u64);
            pb.set_position(*step as u64);
            if step >= total {
                pb.finish_and_clear();
                *b = None;
            }
        }
    })
}

/// Script output on stdout; images as halfblock previews when enabled.
pub fn output(preview: Preview) -> crate::script::Output {
    let tty = std::io::stdout().is_terminal() && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
    let show = preview == Preview::Always || (preview == Preview::Auto && tty);
    Arc::new(move |o: Out| match o {
        Out::Text(t) => println!("{t}"),
        Out::Image(img) => {
            if show {
                let cols = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()).unwrap_or(80).clamp(16, 120) * 3 / 5;
                print!("{}", crate::preview::halfblocks(&img.rgb, img.width, img.height, cols, 24));
            }
            println!("{}", img.summary());
        }
    })
}

/// Ctrl-C sets `flag` (the running job stops, the session stays); a second Ctrl-C while the flag is still set
/// exits.
pub fn install_ctrl_c(flag: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting");
            std::process::exit(130);
        }
        eprintln!("\ncancelling … (Ctrl-C again to quit)");
    });
}
