//! Finding the files users already have and checking them: a TOML config file, ComfyUI `models/` trees and the
//! Hugging Face hub cache, with hints for the usual mistakes; `doctor` checks each component from its headers
//! (no weights are loaded).
pub mod config;
pub mod discovery;
pub mod doctor;

pub use config::{config_path, load_config, FileConfig};
pub use discovery::{discover_comfyui, discover_hub, hub_dir, Discovered};
pub use doctor::{doctor, Check, Status};
use std::path::{Path, PathBuf};

/// Where the models are. A missing entry is an error only when that model is needed.
#[derive(Debug, Clone, Default)]
pub struct ModelPaths {
    /// SDXL diffusers folder or single-file checkpoint.
    pub sdxl: Option<PathBuf>,
    /// For a single-file checkpoint whose dimensions differ from SDXL base: a diffusers-layout folder with its
    /// configs (and optionally tokenizers).
    pub sdxl_config: Option<PathBuf>,
    /// HyperLoRA variant folder.
    pub hyperlora: Option<PathBuf>,
    /// CLIP ViT-L/14 vision folder.
    pub clip: Option<PathBuf>,
    /// insightface antelopev2 folder.
    pub antelopev2: Option<PathBuf>,
}

impl ModelPaths {
    /// Fill every entry still missing from `other` (earlier sources win).
    pub fn or_from(&mut self, other: &ModelPaths) {
        for (slot, v) in [
            (&mut self.sdxl, &other.sdxl),
            (&mut self.sdxl_config, &other.sdxl_config),
            (&mut self.hyperlora, &other.hyperlora),
            (&mut self.clip, &other.clip),
            (&mut self.antelopev2, &other.antelopev2),
        ] {
            if slot.is_none() {
                slot.clone_from(v);
            }
        }
    }
}

/// The entries of `dir`, sorted by name.
pub(crate) fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}
