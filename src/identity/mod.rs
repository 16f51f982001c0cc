//! `Identity`: what HyperLoRA saw in a person's photos — the resampler's raw coefficient tokens [Q, K], averaged
//! over the photos (spec §2.3: fusion is a mean *before* normalisation), plus where they came from. Algebra runs
//! in this raw space; the normalised coefficients that drive the LoRA are derived on use.
pub mod gram;
mod hyper;
pub mod library;
pub mod mix;
pub mod space;

use crate::error::{Error, Result};
use crate::files::output::{safetensors_bytes, write_file, RawTensor};
use crate::weights::StFile;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// Per-token L2 normalisation with ε = 1e-8 inside the square root (spec §2.3): the form the LoRA synthesis
/// uses. Identities keep the raw mean; this is applied when coefficients are read.
pub fn normalize_tokens(m: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (m.sqr()?.sum_keepdim(candle_core::D::Minus1)? + 1e-8)?.sqrt()?;
    m.broadcast_div(&norm)
}

pub const IDENTITY_FORMAT: &str = "hyperlora.identity";
pub const IDENTITY_FORMAT_VERSION: &str = "1";

pub use crate::hyper::Variant;

pub use crate::files::provenance::{hex, sha256_hex, Source};

/// Where a fine-tuned identity came from: the identity it started at, and the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finetuned {
    /// Content hash of the starting identity.
    pub from: String,
    pub steps: usize,
    pub lr: f64,
    /// The training photos (names as given).
    pub photos: Vec<String>,
    pub seed: u64,
    /// Eval loss on the fixed (timestep, noise) set before and after.
    pub eval_before: f64,
    pub eval_after: f64,
}

impl Finetuned {
    /// "fine-tuned from HASH (N steps, lr X, K photos: …; eval loss A -> B)".
    pub fn describe(&self) -> String {
        format!(
            "fine-tuned from {} ({} steps, lr {}, {} photo{}: {}; eval loss {:.5} -> {:.5})",
            crate::files::provenance::short(&self.from),
            self.steps,
            self.lr,
            self.photos.len(),
            if self.photos.len() == 1 { "" } else { "s" },
            self.photos.join(", "),
            self.eval_before,
            self.eval_after
        )
    }
}

#[derive(Clone)]
pub struct Identity {
    raw: Tensor,
    base_raw: Option<Tensor>,
    photos: usize,
    base_photos: usize,
    sources: Vec<Source>,
    variant: Variant,
    /// Content hash, computed on first use (the coefficients never change after construction).
    hash: std::sync::OnceLock<String>,
    /// Set on an identity made by fine-tuning (kept in its file; identities derived from it by arithmetic are new).
    finetuned: Option<Finetuned>,
}

impl Identity {
    /// `raw`: [Q, K] mean of the resampler's raw outputs over `photos` photos; `base_raw` likewise for the Base branch.
    pub fn new(
        raw: Tensor,
        photos: usize,
        base: Option<(Tensor, usize)>,
        sources: Vec<Source>,
        variant: Variant,
    ) -> Result<Self> {
        let raw = to_2d(raw)?;
        let (base_raw, base_photos) = match base {
            Some((b, n)) => {
                let b = to_2d(b)?;
                if b.dims() != raw.dims() {
                    return Err(Error::Mismatch(format!(
                        "Base coefficients {:?} do not match ID coefficients {:?}",
                        b.dims(),
                        raw.dims()
                    )));
                }
                (Some(b), n)
            }
            None => (None, 0),
        };
        for (t, what) in
            std::iter::once((&raw, "coefficients")).chain(base_raw.as_ref().map(|b| (b, "Base coefficients")))
        {
            if t.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Err(Error::InvalidValue(format!(
                    "identity {what} hold NaN or infinite values (a corrupt identity file, or non-finite features)"
                )));
            }
        }
        Ok(Identity {
            raw,
            base_raw,
            photos,
            base_photos,
            sources,
            variant,
            hash: std::sync::OnceLock::new(),
            finetuned: None,
        })
    }

    /// The same identity marked as the result of a fine-tune.
    pub fn with_finetuned(mut self, f: Finetuned) -> Self {
        self.finetuned = Some(f);
        self
    }

    /// How this identity was fine-tuned, if it was.
    pub fn finetuned(&self) -> Option<&Finetuned> {
        self.finetuned.as_ref()
    }

    /// Raw fused coefficient tokens [Q, K] (f32, CPU).
    pub fn raw(&self) -> &Tensor {
        &self.raw
    }
    pub fn base_raw(&self) -> Option<&Tensor> {
        self.base_raw.as_ref()
    }
    pub fn photos(&self) -> usize {
        self.photos
    }
    pub fn base_photos(&self) -> usize {
        self.base_photos
    }
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }
    pub fn variant(&self) -> &Variant {
        &self.variant
    }
    pub fn dims(&self) -> (usize, usize) {
        let d = self.raw.dims();
        (d[0], d[1])
    }

    /// Per-token L2-normalised coefficients [Q, K] (ε 1e-8 inside the square root).
    pub fn coefficients(&self) -> Result<Tensor> {
        Ok(normalize_tokens(&self.raw)?)
    }
    pub fn base_coefficients(&self) -> Result<Option<Tensor>> {
        Ok(self.base_raw.as_ref().map(normalize_tokens).transpose()?)
    }

    /// Content hash of the coefficients and the variant (hex, 64 chars).
    pub fn hash(&self) -> String {
        self.hash.get_or_init(|| self.compute_hash()).clone()
    }

    fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.variant.hash.as_bytes());
        for t in std::iter::once(&self.raw).chain(self.base_raw.as_ref()) {
            if let Ok(v) = t.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
                h.update(crate::weights::as_bytes(&v));
            }
        }
        hex(&h.finalize())
    }

    pub fn short_hash(&self) -> String {
        crate::files::provenance::short(&self.hash()).to_string()
    }

    fn check_compatible(&self, other: &Identity) -> Result<()> {
        if self.variant.hash != other.variant.hash {
            return Err(Error::Incompatible(format!(
                "cannot combine identities of different HyperLoRA variants: {} ({}) and {} ({})",
                self.variant.label,
                crate::files::provenance::short(&self.variant.hash),
                other.variant.label,
                crate::files::provenance::short(&other.variant.hash)
            )));
        }
        if self.raw.dims() != other.raw.dims() {
            return Err(Error::Incompatible(format!(
                "identity shapes differ: {:?} vs {:?}",
                self.raw.dims(),
                other.raw.dims()
            )));
        }
        Ok(())
    }

    /// Σ wᵢ · idᵢ / Σ wᵢ. With weights equal to the photo counts this equals fusing all photos together.
    pub fn weighted_mean(ids: &[&Identity], weights: &[f64]) -> Result<Identity> {
        let first = *ids.first().ok_or_else(|| Error::InvalidValue("mean of no identities".into()))?;
        if ids.len() != weights.len() {
            return Err(Error::InvalidValue(format!("{} identities but {} weights", ids.len(), weights.len())));
        }
        let total: f64 = weights.iter().sum();
        if total.abs() < 1e-12 || weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::InvalidValue(format!("weights {weights:?} must be finite and must not sum to zero")));
        }
        let normed: Vec<f64> = weights.iter().map(|w| w / total).collect();
        Self::combine(first, ids, &normed)
    }

    /// The mean over photos: `weighted_mean` with the photo counts as weights.
    pub fn mean(ids: &[&Identity]) -> Result<Identity> {
        let w: Vec<f64> = ids.iter().map(|i| i.photos.max(1) as f64).collect();
        Self::weighted_mean(ids, &w)
    }

    /// Linear combination Σ cᵢ · idᵢ (coefficients used as given).
    fn combine(first: &Identity, ids: &[&Identity], coeffs: &[f64]) -> Result<Identity> {
        for id in ids {
            first.check_compatible(id)?;
        }
        let lin = |get: &dyn Fn(&Identity) -> Option<Tensor>| -> Result<Option<Tensor>> {
            let mut acc: Option<Tensor> = None;
            for (id, c) in ids.iter().zip(coeffs) {
                let Some(t) = get(id) else { return Ok(None) };
                let term = (t * *c)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
            Ok(acc)
        };
        let raw = lin(&|i| Some(i.raw.clone()))?.expect("at least one identity");
        let base = lin(&|i| i.base_raw.clone())?;
        let mut sources: Vec<Source> = Vec::new();
        for id in ids {
            for s in &id.sources {
                if !sources.contains(s) {
                    sources.push(s.clone());
                }
            }
        }
        // saturating: photo counts come from files and may be anything
        let photos = ids.iter().fold(0usize, |a, i| a.saturating_add(i.photos));
        let base_photos = ids.iter().fold(0usize, |a, i| a.saturating_add(i.base_photos));
        Identity::new(raw, photos, base.map(|b| (b, base_photos)), sources, first.variant.clone())
    }

    /// `(1 − t)·a + t·b`; `t = 0` gives `a`.
    pub fn mix(&self, other: &Identity, t: f64) -> Result<Identity> {
        Self::combine(self, &[self, other], &[1.0 - t, t])
    }
    pub fn add(&self, other: &Identity) -> Result<Identity> {
        Self::combine(self, &[self, other], &[1.0, 1.0])
    }
    pub fn sub(&self, other: &Identity) -> Result<Identity> {
        Self::combine(self, &[self, other], &[1.0, -1.0])
    }
    pub fn scale(&self, s: f64) -> Result<Identity> {
        Self::combine(self, &[self], &[s])
    }

    /// Cosine similarity of the normalised coefficients, flattened: the mean over tokens of the per-token cosine.
    pub fn similarity(&self, other: &Identity) -> Result<f64> {
        self.check_compatible(other)?;
        let a = self.coefficients()?;
        let b = other.coefficients()?;
        let dot = (&a * &b)?.sum_all()?.to_scalar::<f32>()? as f64;
        let na = a.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let nb = b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok(dot / (na.sqrt() * nb.sqrt()).max(1e-30))
    }

    /// Save as a small safetensors file (`raw`, optional `base_raw`, metadata with format, variant, provenance).
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        self.save_as(path, overwrite, DType::F32)
    }

    /// The same, with the coefficients stored as `dtype` (f32, or f16 at half the size; loading gives f32).
    pub fn save_as(&self, path: &Path, overwrite: bool, dtype: DType) -> Result<()> {
        let mut tensors = vec![("raw".to_string(), RawTensor::from_tensor(&self.raw, dtype)?)];
        if let Some(b) = &self.base_raw {
            tensors.push(("base_raw".to_string(), RawTensor::from_tensor(b, dtype)?));
        }
        let mut meta = HashMap::from([
            ("format".to_string(), IDENTITY_FORMAT.to_string()),
            ("format_version".to_string(), IDENTITY_FORMAT_VERSION.to_string()),
            ("variant_hash".to_string(), self.variant.hash.clone()),
            ("variant_label".to_string(), self.variant.label.clone()),
            ("photos".to_string(), self.photos.to_string()),
            ("base_photos".to_string(), self.base_photos.to_string()),
            ("sources".to_string(), serde_json::to_string(&self.sources).expect("serializable")),
            ("hyperlora_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ]);
        if let Some(f) = &self.finetuned {
            meta.insert("finetuned".to_string(), serde_json::to_string(f).expect("serializable"));
        }
        write_file(path, &safetensors_bytes(&tensors, meta)?, overwrite)
    }

    /// Load a saved identity. Checking it against the loaded variant is `HyperLora::check_identity`'s job.
    pub fn load(path: &Path) -> Result<Identity> {
        let file = StFile::open(path)?;
        let meta = file.metadata();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| Error::invalid(path, format!("not a hyperlora identity file (metadata `{k}` missing)")))
        };
        if get("format")? != IDENTITY_FORMAT {
            return Err(Error::invalid(path, format!("not a hyperlora identity file (format `{}`)", get("format")?)));
        }
        let version = get("format_version")?;
        if version != IDENTITY_FORMAT_VERSION {
            return Err(Error::invalid(
                path,
                format!("identity format version {version}; this build reads version {IDENTITY_FORMAT_VERSION}"),
            ));
        }
        let num = |k: &str| -> Result<usize> {
            get(k)?.parse().map_err(|_| Error::invalid(path, format!("metadata `{k}` is not a number")))
        };
        let sources: Vec<Source> = serde_json::from_str(&get("sources")?)
            .map_err(|e| Error::invalid(path, format!("metadata `sources`: {e}")))?;
        let variant = Variant { hash: get("variant_hash")?, label: get("variant_label")? };
        // the variant is named by the SHA-256 of its files: anything else was not written by us
        if variant.hash.len() != 64 || !variant.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                path,
                format!("metadata `variant_hash` {:?} is not a SHA-256 (64 hex digits)", variant.hash),
            ));
        }
        let raw = file.tensor("raw", DType::F32, &Device::Cpu)?;
        if raw.rank() != 2 {
            return Err(Error::invalid(path, format!("`raw` has shape {:?}, expected [Q, K]", raw.dims())));
        }
        let base = if file.contains("base_raw") {
            Some((file.tensor("base_raw", DType::F32, &Device::Cpu)?, num("base_photos")?))
        } else {
            None
        };
        let id = Identity::new(raw, num("photos")?, base, sources, variant)
            .map_err(|e| Error::invalid(path, e.to_string()))?;
        Ok(match meta.get("finetuned") {
            Some(j) => id.with_finetuned(
                serde_json::from_str(j).map_err(|e| Error::invalid(path, format!("metadata `finetuned`: {e}")))?,
            ),
            None => id,
        })
    }

    /// One line: photos, hash, variant.
    pub fn summary(&self) -> String {
        let (q, k) = self.dims();
        let tuned = self.finetuned.as_ref().map(|f| format!(" — {}", f.describe())).unwrap_or_default();
        format!(
            "Identity({} photo{}, {}×{}{}, hash {}, variant {}){tuned}",
            self.photos,
            if self.photos == 1 { "" } else { "s" },
            q,
            k,
            if self.base_raw.is_some() { format!(", +Base from {} image(s)", self.base_photos) } else { String::new() },
            self.short_hash(),
            self.variant.label
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

fn to_2d(t: Tensor) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok(match t.rank() {
        2 => t,
        3 if t.dims()[0] == 1 => t.squeeze(0)?,
        _ => return Err(Error::Mismatch(format!("identity coefficients must be [Q, K], got {:?}", t.dims()))),
    })
}
