//! `hyperlora download`: the released files from the Hugging Face hub into the hub cache (hf-hub: progress,
//! resume of interrupted transfers, `HF_ENDPOINT` and `HF_HOME` honoured), each large file checked against its
//! SHA-256 (the hub's LFS etag) after the transfer.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Files to fetch from one repo.
#[derive(Debug, Clone)]
pub struct Plan {
    pub repo: String,
    pub files: Vec<String>,
    pub what: &'static str,
}

pub const HYPERLORA_REPO: &str = "bytedance-research/HyperLoRA";
pub const CLIP_REPO: &str = "openai/clip-vit-large-patch14";

/// The HyperLoRA variant folder (fidelity or edit), CLIP ViT-L/14, and optionally an SDXL diffusers repo (fp16).
pub fn plans(variant: &str, clip: bool, sdxl: Option<&str>) -> Result<Vec<Plan>> {
    if !["fidelity", "edit"].contains(&variant) {
        return Err(Error::Network(format!("--variant {variant}: the release has `fidelity` and `edit`")));
    }
    let folder = format!("sdxl_hyper_id_lora_v1_{variant}");
    let mut out = vec![Plan {
        repo: HYPERLORA_REPO.into(),
        files: [
            "hyper_lora_modules.json",
            "hyper_lora_modules.safetensors",
            "resampler.safetensors",
            "id_projector.safetensors",
        ]
        .iter()
        .map(|f| format!("{folder}/{f}"))
        .collect(),
        what: "hyperlora",
    }];
    if clip {
        out.push(Plan {
            repo: CLIP_REPO.into(),
            files: vec!["config.json".into(), "model.safetensors".into(), "preprocessor_config.json".into()],
            what: "clip",
        });
    }
    if let Some(repo) = sdxl {
        let mut files: Vec<String> = vec!["model_index.json".into(), "scheduler/scheduler_config.json".into()];
        for c in ["unet", "vae"] {
            files.push(format!("{c}/config.json"));
            files.push(format!("{c}/diffusion_pytorch_model.fp16.safetensors"));
        }
        for c in ["text_encoder", "text_encoder_2"] {
            files.push(format!("{c}/config.json"));
            files.push(format!("{c}/model.fp16.safetensors"));
        }
        for t in ["tokenizer", "tokenizer_2"] {
            for f in ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"] {
                files.push(format!("{t}/{f}"));
            }
        }
        out.push(Plan { repo: repo.into(), files, what: "sdxl" });
    }
    Ok(out)
}

/// A cached file against its blob name: LFS blobs are named by their SHA-256.
pub fn verify(path: &Path) -> Result<()> {
    use sha2::Digest;
    let blob = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let name = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(()); // a small git-tracked file: named by its git hash, nothing more to check here
    }
    let mut f = std::fs::File::open(&blob).map_err(|e| Error::io(&blob, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(&blob, e))?;
    let got = crate::files::provenance::hex(&h.finalize());
    if got != name.to_lowercase() {
        return Err(Error::invalid(
            path,
            format!(
                "checksum mismatch: SHA-256 {got}, the hub says {name}; delete {} and download again",
                blob.display()
            ),
        ));
    }
    Ok(())
}

/// Fetch every plan into the hub cache (`cache`: the hub folder, e.g. `$HF_HOME/hub`; `endpoint`: the hub URL).
/// Files already complete in the cache are not fetched again; a partial transfer resumes. Returns, per plan, the
/// folder to use (the variant folder, the CLIP folder, the SDXL folder).
pub fn download(plans: &[Plan], cache: &Path, endpoint: &str, progress: bool) -> Result<Vec<(&'static str, PathBuf)>> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_endpoint(endpoint.trim_end_matches('/').to_string())
        .with_progress(progress)
        .with_retries(5)
        .build()
        .map_err(|e| Error::Network(format!("cannot set up the hub client: {e}")))?;
    let mut out = Vec::new();
    for p in plans {
        let repo = api.model(p.repo.clone());
        let mut snapshot = None;
        for f in &p.files {
            let path = repo.get(f).map_err(|e| Error::Network(format!("{}/{f}: download failed: {e}", p.repo)))?;
            verify(&path)?;
            // snapshots/<commit>/<f>: strip f's components to get the snapshot folder
            snapshot = path.ancestors().nth(Path::new(f).components().count()).map(Path::to_path_buf);
        }
        if let Some(root) = snapshot {
            // the variant folder for HyperLoRA, the snapshot itself otherwise
            let dir = match p.files.first().and_then(|f| f.split_once('/')) {
                Some((folder, _)) if p.what == "hyperlora" => root.join(folder),
                _ => root,
            };
            out.push((p.what, dir));
        }
    }
    Ok(out)
}

/// `$HF_ENDPOINT` or the public hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}
