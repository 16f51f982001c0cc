//! The config file: `$HYPERLORA_CONFIG` or `$XDG_CONFIG_HOME/hyperlora/config.toml`.
use crate::error::{Error, Result};
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
    let text = match crate::files::read_text(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut c: FileConfig = toml::from_str(&text)
        .map_err(|e| Error::invalid(path, format!("not a valid config: {}", e.to_string().trim())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut c.sdxl, &mut c.sdxl_config, &mut c.hyperlora, &mut c.clip, &mut c.antelopev2, &mut c.comfyui]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(Some(c))
}

impl FileConfig {
    /// The model paths this file names.
    pub fn paths(&self) -> crate::models::ModelPaths {
        crate::models::ModelPaths {
            sdxl: self.sdxl.clone(),
            sdxl_config: self.sdxl_config.clone(),
            hyperlora: self.hyperlora.clone(),
            clip: self.clip.clone(),
            antelopev2: self.antelopev2.clone(),
        }
    }
}
