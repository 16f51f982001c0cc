//! Finding models in a ComfyUI tree and in the Hugging Face hub cache, with hints for the usual mistakes.
use super::{sorted_dirs, ModelPaths};
use crate::weights::StFile;
use std::path::{Path, PathBuf};

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
        // a search finds no config folders: those come only from flags and the config file
        paths.or_from(&ModelPaths { sdxl_config: None, ..self.paths.clone() });
    }
}

pub(crate) const HYPER_FILES: [&str; 4] =
    ["hyper_lora_modules.json", "hyper_lora_modules.safetensors", "resampler.safetensors", "id_projector.safetensors"];
pub(crate) const ANTELOPE_FILES: [&str; 3] = ["scrfd_10g_bnkps.onnx", "2d106det.onnx", "glintr100.onnx"];

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
    let models = if root.join("models").is_dir() && !root.join("checkpoints").is_dir() {
        root.join("models")
    } else {
        root.to_path_buf()
    };
    if !models.is_dir() {
        d.hints.push(format!("{}: no such folder", models.display()));
        return d;
    }
    for f in sorted_dirs(&models.join("checkpoints")) {
        if f.extension().is_some_and(|e| e == "safetensors")
            && StFile::open(&f).map(|s| crate::sdxl::single_file::detect(&s).is_ok()).unwrap_or(false)
        {
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
        d.hints.push(format!(
            "{}: only buffalo_l is installed; HyperLoRA needs antelopev2",
            ante.parent().unwrap_or(&ante).display()
        ));
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
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
}

/// The snapshot folders of a hub repo (`models--org--name/snapshots/<rev>/`), the one `refs/main` names first.
fn snapshots(hub: &Path, repo: &str) -> Vec<PathBuf> {
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let main = crate::files::read_text(dir.join("refs").join("main")).ok().map(|s| s.trim().to_string());
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
