//! Precomputed encoder outputs: the hand-off between the encoders (`face/`, `vision/`) and the hypernetwork.
//! A features file is a safetensors file with `arcface` [N, 512] (L2-normalised ArcFace embeddings), `clip`
//! [N, 257, D] (CLIP vision `hidden_states[-2]`, spec §1.3) and optionally `clip_base` [M, 257, D] for the Base
//! branch. Other tensors (boxes, landmarks) may ride along and are ignored here.
use crate::error::{Error, Result};
use crate::files::provenance::{sha256_hex, Source};
use crate::weights::{as_bytes, StFile};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Images' features, fused together when an identity is made.
#[derive(Clone)]
pub struct FeatureSet {
    /// [N, E] f32.
    pub arcface: Tensor,
    /// [N, S, W] f32.
    pub clip: Tensor,
    /// [M, S, W] f32.
    pub clip_base: Option<Tensor>,
    /// One per ID image.
    pub sources: Vec<Source>,
}

/// How far from 1 an embedding's L2 norm may be.
const NORM_TOL: f32 = 1e-3;

/// The Base-condition CLIP rows the images that have one bring, stacked ([M, S, W]); None when none has one. The
/// Base branch fuses its own images, so M may be smaller than the number of ID images.
pub fn stack_base_rows<'a>(rows: impl IntoIterator<Item = &'a Tensor>) -> Result<Option<Tensor>> {
    let rows: Vec<&Tensor> = rows.into_iter().collect();
    Ok(if rows.is_empty() { None } else { Some(Tensor::cat(&rows, 0)?) })
}

impl FeatureSet {
    pub fn new(arcface: Tensor, clip: Tensor, clip_base: Option<Tensor>, sources: Vec<Source>) -> Result<Self> {
        let arcface = arcface.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let clip = clip.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        for (t, what) in [(&arcface, "ArcFace embeddings"), (&clip, "CLIP features")]
            .into_iter()
            .chain(clip_base.as_ref().map(|c| (c, "Base CLIP features")))
        {
            if t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Err(Error::InvalidValue(format!("the {what} hold NaN or infinite values")));
            }
        }
        Ok(FeatureSet { arcface, clip, clip_base, sources })
    }

    /// Read one features file; each row's content hash becomes its provenance.
    pub fn load(path: &Path) -> Result<Self> {
        let file = StFile::open(path)?;
        let get = |k: &str, rank: usize, what: &str| -> Result<Tensor> {
            let shape = file.shape(k).ok_or_else(|| Error::Missing {
                file: path.to_path_buf(),
                key: k.into(),
                expected: vec![],
                hint: format!(" ({what})"),
            })?;
            if shape.len() != rank {
                return Err(Error::invalid(path, format!("`{k}` has shape {shape:?}; expected {what}")));
            }
            file.tensor(k, DType::F32, &Device::Cpu)
        };
        let arcface = get("arcface", 2, "[N, 512] L2-normalised ArcFace embeddings")?;
        let clip = get("clip", 3, "[N, 257, D] CLIP vision hidden_states[-2]")?;
        let clip_base = if file.contains("clip_base") {
            Some(get("clip_base", 3, "[M, 257, D] CLIP hidden states of Base-condition images")?)
        } else {
            None
        };
        let n = arcface.dim(0)?;
        if clip.dim(0)? != n || n == 0 {
            return Err(Error::invalid(
                path,
                format!("`arcface` has {n} rows but `clip` has {}; one row per photo in both", clip.dim(0)?),
            ));
        }
        let norms = arcface.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
        if let Some((i, v)) = norms.iter().enumerate().find(|(_, v)| (**v - 1.0).abs() > NORM_TOL || !v.is_finite()) {
            return Err(Error::invalid(
                path,
                format!("`arcface` row {i} has L2 norm {v:.4}; expected L2-normalised embeddings (norm 1)"),
            ));
        }
        let label = path.display().to_string();
        // `hyperlora encode` records the photos (content hash + name); older or hand-made files get row hashes
        let recorded: Option<Vec<Source>> = file
            .metadata()
            .get("sources")
            .and_then(|s| serde_json::from_str(s).ok())
            .filter(|v: &Vec<Source>| v.len() == n);
        if let Some(sources) = recorded {
            return FeatureSet::new(arcface, clip, clip_base, sources).map_err(|e| Error::invalid(path, e.to_string()));
        }
        let sources = (0..n)
            .map(|i| {
                let a = arcface.get(i)?.to_vec1::<f32>()?;
                let c = clip.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                let mut bytes = as_bytes(&a).to_vec();
                bytes.extend_from_slice(as_bytes(&c));
                Ok(Source { hash: sha256_hex(&bytes), label: format!("{label}#{i}") })
            })
            .collect::<Result<Vec<_>>>()?;
        FeatureSet::new(arcface, clip, clip_base, sources).map_err(|e| Error::invalid(path, e.to_string()))
    }

    /// Several files' images as one set (all are fused into one identity).
    pub fn concat(sets: &[FeatureSet]) -> Result<Self> {
        let first = sets.first().ok_or_else(|| Error::Mismatch("no features given".into()))?;
        for s in sets {
            if s.clip.dims()[1..] != first.clip.dims()[1..] || s.arcface.dims()[1] != first.arcface.dims()[1] {
                return Err(Error::Mismatch(format!(
                    "features disagree in shape: arcface {:?} / clip {:?} vs arcface {:?} / clip {:?}",
                    first.arcface.dims(),
                    first.clip.dims(),
                    s.arcface.dims(),
                    s.clip.dims()
                )));
            }
        }
        let cat = |f: &dyn Fn(&FeatureSet) -> Tensor| Tensor::cat(&sets.iter().map(f).collect::<Vec<_>>(), 0);
        let clip_base = stack_base_rows(sets.iter().filter_map(|s| s.clip_base.as_ref()))?;
        Ok(FeatureSet {
            arcface: cat(&|s| s.arcface.clone())?,
            clip: cat(&|s| s.clip.clone())?,
            clip_base,
            sources: sets.iter().flat_map(|s| s.sources.clone()).collect(),
        })
    }

    /// Write a features file.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        self.save_with(path, overwrite, Vec::new(), Default::default())
    }

    /// Write a features file with more tensors (face boxes, landmarks) and metadata beside the features; the
    /// sources are recorded in the metadata.
    pub fn save_with(
        &self,
        path: &Path,
        overwrite: bool,
        extra: Vec<(String, crate::files::output::RawTensor)>,
        mut meta: std::collections::HashMap<String, String>,
    ) -> Result<()> {
        use crate::files::output::{safetensors_bytes, write_file, RawTensor};
        let mut t = vec![
            ("arcface".to_string(), RawTensor::from_tensor(&self.arcface, DType::F32)?),
            ("clip".to_string(), RawTensor::from_tensor(&self.clip, DType::F32)?),
        ];
        if let Some(b) = &self.clip_base {
            t.push(("clip_base".to_string(), RawTensor::from_tensor(b, DType::F32)?));
        }
        t.extend(extra);
        meta.insert("format".to_string(), "hyperlora.features".to_string());
        meta.insert(
            "sources".to_string(),
            serde_json::to_string(&self.sources).map_err(|e| Error::Mismatch(e.to_string()))?,
        );
        write_file(path, &safetensors_bytes(&t, meta)?, overwrite)
    }
}
