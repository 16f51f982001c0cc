//! Photos → encoder outputs (cached by content) → identities.
use super::*;

/// One photo to encode.
#[derive(Debug, Clone)]
pub struct PhotoSpec {
    pub path: PathBuf,
    pub options: FaceOptions,
    /// Also encode the photo's Base condition (spec §3.3) for the Base branch (variants with Base weights only).
    pub base: bool,
}

impl PhotoSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PhotoSpec { path: path.into(), options: FaceOptions::default(), base: false }
    }

    pub fn with_options(path: impl Into<PathBuf>, options: FaceOptions) -> Self {
        PhotoSpec { path: path.into(), options, base: false }
    }
}

/// The encoder outputs of one photo (with its options), cached by content.
pub(super) struct PhotoFeatures {
    pub(super) arcface: Vec<f32>,
    pub(super) clip: Tensor,
    pub(super) base_clip: Option<Tensor>,
    pub(super) source: crate::identity::Source,
}

impl Session {
    pub(super) fn encode_one(&mut self, spec: &PhotoSpec) -> Result<Arc<PhotoFeatures>> {
        let bytes = crate::files::read_regular(&spec.path)?;
        let key = format!("{}:{:?}:{}", sha256_hex(&bytes), spec.options, spec.base);
        if let Some(f) = self.photos.get(&key) {
            self.emit(Event::Encoded {
                photo: spec.path.display().to_string(),
                detail: "from the cache".into(),
                cached: true,
            });
            return Ok(f.clone());
        }
        let e = self.encode_photo(spec)?;
        self.emit(Event::Encoded { photo: spec.path.display().to_string(), detail: e.face.describe(), cached: false });
        Ok(self.photos[&key].clone())
    }

    /// Encode one photo with everything the face stack found (for `hyperlora encode` and debugging); the result
    /// also lands in the feature cache.
    pub fn encode_photo(&mut self, spec: &PhotoSpec) -> Result<Encoded> {
        let _heard = crate::cancel::scope(self.cancel.clone());
        self.encoders()?;
        let (face, clip) = (self.face.as_ref().expect("loaded"), self.clip.as_ref().expect("loaded"));
        let e = encode_photo(face, clip, &spec.path, &spec.options, spec.base)?;
        let key = format!("{}:{:?}:{}", e.source.hash, spec.options, spec.base);
        self.embeddings.insert((e.source.hash.clone(), e.source.label.clone()), e.face.embedding.clone());
        self.photos.insert(
            key,
            Arc::new(PhotoFeatures {
                arcface: e.face.embedding.clone(),
                clip: e.clip.clone(),
                base_clip: e.base_clip.clone(),
                source: e.source.clone(),
            }),
        );
        Ok(e)
    }

    /// An identity from precomputed encoder outputs (a features file).
    pub fn identity_from_features(&mut self, set: &FeatureSet) -> Result<Identity> {
        self.hyper()?.identity(set)
    }

    /// Encode photos of one person and fuse them into an identity (several photos are averaged the HyperLoRA
    /// way: raw resampler outputs meaned before normalisation).
    pub fn identity(&mut self, photos: &[PhotoSpec]) -> Result<Identity> {
        self.cancel.store(false, Ordering::Relaxed);
        if photos.is_empty() {
            return Err(Error::Mismatch("identity([]): give at least one photo".into()));
        }
        if photos.iter().any(|p| p.base) && !self.hyper()?.has_base() {
            let h = self.hyper()?;
            return Err(Error::Incompatible(format!(
                "`base: true` needs a HyperLoRA variant with the Base branch, but `{}` has none (no {}). The released \
                 variants have no Base weights (the 0.25× Base LoRA was distilled into their ID LoRA): leave `base` \
                 out",
                h.variant().label,
                crate::hyper::BASE_RESAMPLER_FILE
            )));
        }
        let mut feats = Vec::new();
        for p in photos {
            self.cancelled()?;
            feats.push(self.encode_one(p)?);
        }
        let e = feats[0].arcface.len();
        let arcface = Tensor::from_vec(
            feats.iter().flat_map(|f| f.arcface.iter().copied()).collect::<Vec<_>>(),
            (feats.len(), e),
            &Device::Cpu,
        )?;
        let clip = Tensor::cat(&feats.iter().map(|f| &f.clip).collect::<Vec<_>>(), 0)?;
        let clip_base = crate::encode::features::stack_base_rows(feats.iter().filter_map(|f| f.base_clip.as_ref()))?;
        let set = FeatureSet::new(arcface, clip, clip_base, feats.iter().map(|f| f.source.clone()).collect())?;
        self.hyper()?.identity(&set)
    }

    /// Check that an identity (e.g. loaded from a file) belongs to the loaded variant.
    pub fn check_identity(&mut self, id: &Identity) -> Result<()> {
        self.hyper()?.check_identity(id)
    }

    /// Write encoded photos as a features file (the `encode` command's output).
    pub fn save_features(&self, photos: &[Encoded], opts: &FaceOptions, path: &Path, overwrite: bool) -> Result<()> {
        crate::encode::save_features(photos, opts, path, overwrite)
    }
}
