//! Finding the files users already have and checking them: a TOML config file, ComfyUI `models/` trees and the
//! Hugging Face hub cache, with hints for the usual mistakes; `doctor` checks each component from its headers
//! (no weights are loaded).
use crate::error::{Error, Result};
use crate::session::ModelPaths;
use crate::weights::StFile;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `config.toml`: every key optional; relative paths are relative to the file's folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub sdxl: Option<PathBuf>,
    pub sdxl_config: Option<PathBuf>,
    pub hyperlora: Option<PathBuf>,
    pub clip: Option<PathBuf>,
    pub antelopev2: Option<PathBuf>,
    /// A ComfyUI `models/` folder (or the ComfyUI folder) to search for whatever is not named.
    pub comfyui: Option<PathBuf>,
    pub device: Option<String>,
    pub dtype: Option<String>,
}

/// `$HYPERLORA_CONFIG`, else `$XDG_CONFIG_HOME/hyperlora/config.toml` (`~/.config/…`).
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERLORA_CONFIG") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hyperlora")
        .join("config.toml")
}

/// The config file, if there is one. A file that does not parse is an error naming it and the problem.
pub fn load_config(path: &Path) -> Result<Option<FileConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut c: FileConfig = toml::from_str(&text).map_err(|e| Error::invalid(path, format!("not a valid config: {}", e.to_string().trim())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut c.sdxl, &mut c.sdxl_config, &mut c.hyperlora, &mut c.clip, &mut c.antelopev2, &mut c.comfyui].into_iter().flatten() {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(Some(c))
}

/// What a search found: the first candidate of each component in `paths`, every candidate, and hints.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub paths: ModelPaths,
    pub candidates: Vec<(&'static str, PathBuf)>,
    pub hints: Vec<String>,
}

impl Discovered {
    fn add(&mut self, component: &'static str, p: PathBuf) {
        let slot = match component {
            "sdxl" => &mut self.paths.sdxl,
            "hyperlora" => &mut self.paths.hyperlora,
            "clip" => &mut self.paths.clip,
            _ => &mut self.paths.antelopev2,
        };
        if slot.is_none() {
            *slot = Some(p.clone());
        }
        self.candidates.push((component, p));
    }

    /// Fill what `paths` lacks from what was found.
    pub fn fill(&self, paths: &mut ModelPaths) {
        let d = &self.paths;
        for (slot, found) in [(&mut paths.sdxl, &d.sdxl), (&mut paths.hyperlora, &d.hyperlora), (&mut paths.clip, &d.clip), (&mut paths.antelopev2, &d.antelopev2)] {
            if slot.is_none() {
                *slot = found.clone();
            }
        }
    }
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

const HYPER_FILES: [&str; 4] = ["hyper_lora_modules.json", "hyper_lora_modules.safetensors", "resampler.safetensors", "id_projector.safetensors"];
const ANTELOPE_FILES: [&str; 3] = ["scrfd_10g_bnkps.onnx", "2d106det.onnx", "glintr100.onnx"];

fn is_variant(d: &Path) -> bool {
    d.join("hyper_lora_modules.json").is_file()
}
fn is_clip(d: &Path) -> bool {
    d.join("config.json").is_file() && d.join("model.safetensors").is_file()
}
fn is_antelope(d: &Path) -> bool {
    ANTELOPE_FILES.iter().all(|f| d.join(f).is_file())
}

/// Search a ComfyUI `models/` folder (or the ComfyUI folder above it).
pub fn discover_comfyui(root: &Path) -> Discovered {
    let mut d = Discovered::default();
    let models = if root.join("models").is_dir() && !root.join("checkpoints").is_dir() { root.join("models") } else { root.to_path_buf() };
    if !models.is_dir() {
        d.hints.push(format!("{}: no such folder", models.display()));
        return d;
    }
    for f in sorted_dirs(&models.join("checkpoints")) {
        if f.extension().is_some_and(|e| e == "safetensors") && StFile::open(&f).map(|s| crate::sdxl::single_file::detect(&s).is_ok()).unwrap_or(false) {
            d.add("sdxl", f);
        }
    }
    let hl = models.join("hyper_lora").join("hyper_lora");
    if is_variant(&hl) {
        d.hints.push(format!("{}: the variant files lie directly here; ComfyUI-HyperLoRA expects them one level down, in a folder named after the variant (e.g. {}/sdxl_hyper_id_lora_v1_fidelity/)", hl.display(), hl.display()));
        d.add("hyperlora", hl.clone());
    }
    for v in sorted_dirs(&hl) {
        if is_variant(&v) {
            d.add("hyperlora", v);
        }
    }
    let clip = models.join("hyper_lora").join("clip_vit").join("clip_vit_large_14");
    if is_clip(&clip) {
        d.add("clip", clip);
    } else {
        for c in sorted_dirs(&models.join("hyper_lora").join("clip_vit")) {
            if is_clip(&c) {
                d.add("clip", c);
            }
        }
    }
    let ante = models.join("insightface").join("models").join("antelopev2");
    if is_antelope(&ante) {
        d.add("antelopev2", ante);
    } else if is_antelope(&ante.join("antelopev2")) {
        d.hints.push(format!("{}: the ONNX files are in a nested antelopev2/antelopev2 folder (a common unzip mistake); move them up one level", ante.display()));
        d.add("antelopev2", ante.join("antelopev2"));
    } else if ante.parent().is_some_and(|p| p.join("buffalo_l").is_dir()) {
        d.hints.push(format!("{}: only buffalo_l is installed; HyperLoRA needs antelopev2", ante.parent().unwrap_or(&ante).display()));
    }
    d
}

/// The hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
pub fn hub_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")).unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
}

/// The snapshot folders of a hub repo (`models--org--name/snapshots/<rev>/`), the one `refs/main` names first.
fn snapshots(hub: &Path, repo: &str) -> Vec<PathBuf> {
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let main = std::fs::read_to_string(dir.join("refs").join("main")).ok().map(|s| s.trim().to_string());
    let mut snaps = sorted_dirs(&dir.join("snapshots"));
    if let Some(m) = main {
        snaps.sort_by_key(|p| p.file_name().is_none_or(|n| n.to_string_lossy() != m));
    }
    snaps
}

/// Search the hub cache for the released repos: bytedance-research/HyperLoRA (variant folders inside),
/// openai/clip-vit-large-patch14, stabilityai/stable-diffusion-xl-base-1.0.
pub fn discover_hub(hub: &Path) -> Discovered {
    let mut d = Discovered::default();
    for s in snapshots(hub, "stabilityai/stable-diffusion-xl-base-1.0") {
        if s.join("model_index.json").is_file() {
            d.add("sdxl", s);
        }
    }
    for s in snapshots(hub, "bytedance-research/HyperLoRA") {
        for v in sorted_dirs(&s) {
            if is_variant(&v) {
                d.add("hyperlora", v);
            }
        }
    }
    for s in snapshots(hub, "openai/clip-vit-large-patch14") {
        if is_clip(&s) {
            d.add("clip", s);
        }
    }
    d
}

/// How one component checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    Bad,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub component: &'static str,
    pub status: Status,
    pub path: Option<PathBuf>,
    /// Size, dtype, shapes, or what is wrong.
    pub detail: String,
    pub licence: &'static str,
}

fn size_of(p: &Path) -> u64 {
    if p.is_dir() {
        sorted_dirs(p).iter().map(|c| size_of(c)).sum()
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn tensor_info(f: &StFile, key: &str) -> String {
    match (f.shape(key), f.dtype(key)) {
        (Some(s), Some(d)) => format!("{key} {s:?} {d:?}"),
        _ => format!("{key} missing"),
    }
}

fn check_sdxl(p: &Path) -> Result<String> {
    if p.is_dir() {
        let index = p.join("model_index.json");
        let mi: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?).map_err(|e| Error::invalid(&index, e.to_string()))?;
        let class = mi.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if !class.starts_with("StableDiffusionXL") {
            return Err(Error::invalid(&index, format!("_class_name is `{class}`, not an SDXL pipeline")));
        }
        let unet = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"].iter().map(|n| p.join("unet").join(n)).find(|f| f.is_file());
        let unet = unet.ok_or_else(|| Error::invalid(p.join("unet"), "no diffusion_pytorch_model(.fp16).safetensors"))?;
        let f = StFile::open(&unet)?;
        Ok(format!("diffusers folder, {}, UNet {} tensors, {}", human(size_of(p)), f.keys().len(), tensor_info(&f, "conv_in.weight")))
    } else {
        let f = StFile::open(p)?;
        crate::sdxl::single_file::detect(&f)?;
        Ok(format!("single file, {}, {} tensors, {}", human(size_of(p)), f.keys().len(), tensor_info(&f, "model.diffusion_model.input_blocks.0.0.weight")))
    }
}

fn check_hyper(p: &Path) -> Result<String> {
    for f in HYPER_FILES {
        if !p.join(f).is_file() {
            return Err(Error::invalid(p, format!("{f} is missing (a variant folder holds {})", HYPER_FILES.join(", "))));
        }
    }
    let (modules, _) = crate::hyper::modules::load(&p.join("hyper_lora_modules.json"))?;
    let n = modules.len();
    let bases = StFile::open(p.join("hyper_lora_modules.safetensors"))?;
    let id_bases = bases.keys().iter().filter(|k| k.contains(".id_")).count();
    if id_bases != 8 * n {
        return Err(Error::invalid(p.join("hyper_lora_modules.safetensors"), format!("{id_bases} id_*_basis tensors; {n} modules need {}", 8 * n)));
    }
    let res = StFile::open(p.join("resampler.safetensors"))?;
    let q = res.shape("latents").map(|s| s.to_vec()).unwrap_or_default();
    if q.get(1) != Some(&(8 * n)) {
        return Err(Error::invalid(p.join("resampler.safetensors"), format!("`latents` has shape {q:?}; {n} modules need {} queries", 8 * n)));
    }
    StFile::open(p.join("id_projector.safetensors"))?;
    let first = bases.keys().into_iter().next().unwrap_or_default();
    let base = if p.join("base_resampler.safetensors").is_file() { ", Base branch" } else { "" };
    Ok(format!("{} modules, {}, bases {}{base}", n, human(size_of(p)), tensor_info(&bases, &first)))
}

fn check_clip(p: &Path) -> Result<String> {
    let cfg = crate::vision::clip::ClipVisionConfig::load(&p.join("config.json"))?;
    let f = StFile::open(p.join("model.safetensors"))?;
    let key = "vision_model.embeddings.patch_embedding.weight";
    let shape = f.shape(key).ok_or_else(|| Error::invalid(p.join("model.safetensors"), format!("no `{key}`: not a CLIP vision checkpoint")))?.to_vec();
    let want = vec![cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.patch_size];
    if shape != want {
        return Err(Error::invalid(
            p,
            format!("config.json describes hidden {} / patch {} ({want:?}) but the weights have {key} {shape:?} — a config from another CLIP model?", cfg.hidden_size, cfg.patch_size),
        ));
    }
    let l14 = cfg.hidden_size == 1024 && cfg.num_hidden_layers == 24 && cfg.patch_size == 14;
    Ok(format!("{}, hidden {}, {} layers, patch {}{}", human(size_of(p)), cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, if l14 { " (ViT-L/14)" } else { " (not ViT-L/14: the release expects L/14)" }))
}

fn check_antelope(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for f in ANTELOPE_FILES {
        let file = p.join(f);
        let n = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if n == 0 {
            let hint = if p.join("antelopev2").join(f).is_file() { " (it is in the nested antelopev2/antelopev2 folder)" } else { "" };
            return Err(Error::invalid(p, format!("{f} is missing or empty{hint}")));
        }
        parts.push(format!("{f} {}", human(n)));
    }
    Ok(parts.join(", "))
}

/// Check every component of `paths` from its headers. `needed` lists the components a command needs; the
/// others are reported but may be missing.
pub fn doctor(paths: &ModelPaths) -> Vec<Check> {
    let comps: [(&'static str, &Option<PathBuf>, &'static str, fn(&Path) -> Result<String>); 4] = [
        ("sdxl", &paths.sdxl, "the checkpoint's own (SDXL base: CreativeML Open RAIL++-M)", check_sdxl),
        ("hyperlora", &paths.hyperlora, "HyperLoRA weights: CC BY-NC 4.0 (non-commercial)", check_hyper),
        ("clip", &paths.clip, "CLIP ViT-L/14: MIT", check_clip),
        ("antelopev2", &paths.antelopev2, "insightface antelopev2: non-commercial research only", check_antelope),
    ];
    comps
        .into_iter()
        .map(|(component, path, licence, check)| match path {
            None => Check { component, status: Status::Missing, path: None, detail: "not configured and not found".into(), licence },
            Some(p) if !p.exists() => Check { component, status: Status::Missing, path: Some(p.clone()), detail: "no such file or folder".into(), licence },
            Some(p) => match check(p) {
                Ok(detail) => Check { component, status: Status::Ok, path: Some(p.clone()), detail, licence },
                Err(e) => Check { component, status: Status::Bad, path: Some(p.clone()), detail: e.to_string(), licence },
            },
        })
        .collect()
}
