//! `doctor`: every component checked from its headers, with what the loaders check.
use super::discovery::{ANTELOPE_FILES, HYPER_FILES};
use super::{sorted_dirs, ModelPaths};
use crate::error::{Error, Result};
use crate::weights::StFile;
use std::path::{Path, PathBuf};

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

/// `config`: the folder a single file takes its configs and tokenizers from (none: SDXL base's, embedded).
fn check_sdxl(p: &Path, config: Option<&Path>) -> Result<String> {
    let info = sdxl_info(p, config)?;
    // the loader itself, on headers alone: every component's strict key, shape and dtype check, tokenizers and
    // configs, with the loader's own message — never ok where loading would refuse
    let opts = crate::sdxl::model::SdxlOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        vae_dtype: candle_core::DType::F32,
    };
    crate::weights::headers_only(|| crate::sdxl::model::Sdxl::load(p, config, &opts))?;
    Ok(info)
}

fn sdxl_info(p: &Path, config: Option<&Path>) -> Result<String> {
    if p.is_dir() {
        let index = p.join("model_index.json");
        let mi: serde_json::Value =
            serde_json::from_str(&crate::files::read_text(&index).map_err(|e| Error::io(&index, e))?)
                .map_err(|e| Error::invalid(&index, e.to_string()))?;
        let class = mi.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if !class.starts_with("StableDiffusionXL") {
            return Err(Error::invalid(&index, format!("_class_name is `{class}`, not an SDXL pipeline")));
        }
        let unet = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]
            .iter()
            .map(|n| p.join("unet").join(n))
            .find(|f| f.is_file());
        let unet =
            unet.ok_or_else(|| Error::invalid(p.join("unet"), "no diffusion_pytorch_model(.fp16).safetensors"))?;
        // the configs through the loaders' own checks (a config that would fail or panic at load fails here)
        crate::sdxl::unet::UNetConfig::load(&p.join("unet/config.json"))?;
        crate::sdxl::vae::VaeConfig::load(&p.join("vae/config.json"))?;
        for te in ["text_encoder", "text_encoder_2"] {
            let c = p.join(te).join("config.json");
            if c.is_file() {
                crate::sdxl::text::ClipTextConfig::load(&c)?;
            }
        }
        let sched = p.join("scheduler/scheduler_config.json");
        if sched.is_file() {
            crate::sdxl::scheduler::SchedulerConfig::load(&sched)?;
        }
        let f = StFile::open(&unet)?;
        f.check_float_dtypes()?;
        Ok(format!(
            "diffusers folder, {}, UNet {} tensors, {}",
            human(size_of(p)),
            f.keys().len(),
            tensor_info(&f, "conv_in.weight")
        ))
    } else {
        let f = StFile::open(p)?;
        f.check_float_dtypes()?;
        crate::sdxl::single_file::detect(&f)?;
        let configs = match config {
            Some(c) => format!("configs from {}", c.display()),
            None => {
                crate::sdxl::single_file::check_base_shapes(&f)?;
                "SDXL base configs, built-in tokenizers".to_string()
            }
        };
        Ok(format!(
            "single file, {configs}, {}, {} tensors, {}",
            human(size_of(p)),
            f.keys().len(),
            tensor_info(&f, "model.diffusion_model.input_blocks.0.0.weight")
        ))
    }
}

fn check_hyper(p: &Path) -> Result<String> {
    for f in HYPER_FILES {
        if !p.join(f).is_file() {
            return Err(Error::invalid(
                p,
                format!("{f} is missing (a variant folder holds {})", HYPER_FILES.join(", ")),
            ));
        }
    }
    let (modules, _) = crate::hyper::modules::load(&p.join("hyper_lora_modules.json"))?;
    let n = modules.len();
    let bases = StFile::open(p.join("hyper_lora_modules.safetensors"))?;
    bases.check_float_dtypes()?;
    let id_bases = bases.keys().iter().filter(|k| k.contains(".id_")).count();
    if id_bases != 8 * n {
        return Err(Error::invalid(
            p.join("hyper_lora_modules.safetensors"),
            format!("{id_bases} id_*_basis tensors; {n} modules need {}", 8 * n),
        ));
    }
    let res = StFile::open(p.join("resampler.safetensors"))?;
    res.check_float_dtypes()?;
    let q = res.shape("latents").map(|s| s.to_vec()).unwrap_or_default();
    if q.get(1) != Some(&(8 * n)) {
        return Err(Error::invalid(
            p.join("resampler.safetensors"),
            format!("`latents` has shape {q:?}; {n} modules need {} queries", 8 * n),
        ));
    }
    StFile::open(p.join("id_projector.safetensors"))?.check_float_dtypes()?;
    let first = bases.keys().into_iter().next().unwrap_or_default();
    let base = if p.join("base_resampler.safetensors").is_file() {
        StFile::open(p.join("base_resampler.safetensors"))?.check_float_dtypes()?;
        ", Base branch"
    } else {
        ""
    };
    // the loader itself: strict keys and shapes of every file, config.json against the shapes, NaN in the bases
    // (the one check that reads the data), with the modules built on stand-ins
    crate::weights::headers_only(|| crate::hyper::HyperLora::load(p, &crate::hyper::LoadOptions::default()))?;
    Ok(format!("{} modules, {}, bases {}{base}", n, human(size_of(p)), tensor_info(&bases, &first)))
}

fn check_clip(p: &Path) -> Result<String> {
    let cfg = crate::vision::clip::ClipVisionConfig::load(&p.join("config.json"))?;
    crate::weights::headers_only(|| {
        crate::vision::clip::load_clip_vision(p, candle_core::DType::F32, &candle_core::Device::Cpu)
    })?;
    let f = StFile::open(p.join("model.safetensors"))?;
    f.check_float_dtypes()?;
    let key = "vision_model.embeddings.patch_embedding.weight";
    let shape = f
        .shape(key)
        .ok_or_else(|| {
            Error::invalid(p.join("model.safetensors"), format!("no `{key}`: not a CLIP vision checkpoint"))
        })?
        .to_vec();
    let want = vec![cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.patch_size];
    if shape != want {
        return Err(Error::invalid(
            p,
            format!("config.json describes hidden {} / patch {} ({want:?}) but the weights have {key} {shape:?} — a config from another CLIP model?", cfg.hidden_size, cfg.patch_size),
        ));
    }
    let l14 = cfg.hidden_size == 1024 && cfg.num_hidden_layers == 24 && cfg.patch_size == 14;
    Ok(format!(
        "{}, hidden {}, {} layers, patch {}{}",
        human(size_of(p)),
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.patch_size,
        if l14 { " (ViT-L/14)" } else { " (not ViT-L/14: the release expects L/14)" }
    ))
}

fn check_antelope(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for f in ANTELOPE_FILES {
        let file = p.join(f);
        let n = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if n == 0 {
            let hint = if p.join("antelopev2").join(f).is_file() {
                " (it is in the nested antelopev2/antelopev2 folder)"
            } else {
                ""
            };
            return Err(Error::invalid(p, format!("{f} is missing or empty{hint}")));
        }
        parts.push(format!("{f} {}", human(n)));
    }
    // the models as the session loads them: each must parse as ONNX and be the kind of model its name says
    crate::face::analyser::Antelope::load(p)?;
    Ok(parts.join(", "))
}

/// Check every component of `paths` from its headers. `needed` lists the components a command needs; the
/// others are reported but may be missing.
pub fn doctor(paths: &ModelPaths) -> Vec<Check> {
    let sdxl = |p: &Path| check_sdxl(p, paths.sdxl_config.as_deref());
    let comps: [(&'static str, &Option<PathBuf>, &'static str, &dyn Fn(&Path) -> Result<String>); 4] = [
        ("sdxl", &paths.sdxl, "the checkpoint's own (SDXL base: CreativeML Open RAIL++-M)", &sdxl),
        ("hyperlora", &paths.hyperlora, "HyperLoRA weights: CC BY-NC 4.0 (non-commercial)", &check_hyper),
        ("clip", &paths.clip, "CLIP ViT-L/14: MIT", &check_clip),
        ("antelopev2", &paths.antelopev2, "insightface antelopev2: non-commercial research only", &check_antelope),
    ];
    comps
        .into_iter()
        .map(|(component, path, licence, check)| match path {
            None => Check {
                component,
                status: Status::Missing,
                path: None,
                detail: "not configured and not found".into(),
                licence,
            },
            Some(p) if !p.exists() => Check {
                component,
                status: Status::Missing,
                path: Some(p.clone()),
                detail: "no such file or folder".into(),
                licence,
            },
            Some(p) => match check(p) {
                Ok(detail) => Check { component, status: Status::Ok, path: Some(p.clone()), detail, licence },
                Err(e) => {
                    Check { component, status: Status::Bad, path: Some(p.clone()), detail: e.to_string(), licence }
                }
            },
        })
        .collect()
}
