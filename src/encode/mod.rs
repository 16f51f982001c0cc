//! Photo → encoder features (spec §3.2): the face stack gives the ID cutout, the landmarks and the ArcFace
//! embedding; the CLIP vision tower encodes the cutout's crop. The result is a features file row, the hand-off
//! to the hypernetwork.
pub mod features;

use crate::encode::features::FeatureSet;
use crate::error::{Error, Result};
use crate::face::analyser::{Antelope, FaceAnalysis, FaceOptions};
use crate::files::output::{write_file, RawTensor};
use crate::files::provenance::{sha256_hex, Source};
use crate::pixels::photo::load_photo;
use crate::pixels::Rgb8;
use crate::vision::clip::ClipVision;
use crate::vision::processor::clip_pixel_values;
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::time::{Duration, Instant};

/// One photo's features and how they were found.
pub struct Encoded {
    pub source: Source,
    pub face: FaceAnalysis,
    /// CLIP `hidden_states[-2]` of the crop, [1, 257, D] f32 on the CPU.
    pub clip: Tensor,
    pub clip_time: Duration,
    /// With `base`: CLIP `hidden_states[-2]` of the photo's Base condition (spec §3.3), [1, 257, D].
    pub base_clip: Option<Tensor>,
}

impl Encoded {
    /// Time per stage, the face stack's then CLIP's.
    pub fn timings(&self) -> Vec<(&'static str, Duration)> {
        let mut t = self.face.timings.clone();
        t.push(("clip", self.clip_time));
        t
    }
}

/// CLIP `hidden_states[-2]` of one image, [1, 257, D] f32 on the CPU.
fn clip_hidden(clip: &ClipVision, img: &Rgb8) -> Result<Tensor> {
    let pixels = clip_pixel_values(img, clip.config().image_size)?;
    let hidden = clip.penultimate(&pixels.to_device(clip.device())?.to_dtype(clip.dtype())?)?;
    Ok(hidden.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}

/// The Base condition of a photo (spec §3.3 with the official node's defaults: crop, LRTB 1,1,1,1, safe crop —
/// the face blurred out so that only the rest of the picture is seen) through CLIP: [1, 257, D].
pub fn base_features(clip: &ClipVision, img: &Rgb8, landmarks: &[[f64; 2]]) -> Result<Tensor> {
    let cond = crate::face::cutout::base_condition(img, landmarks, true, [1.0; 4], true)?;
    clip_hidden(clip, &cond.image)
}

/// Encode a decoded photo; `source` names it (content hash + label). With `base`, the photo's Base condition
/// is encoded too.
pub fn encode_image(
    face: &Antelope,
    clip: &ClipVision,
    img: &Rgb8,
    source: Source,
    opts: &FaceOptions,
    base: bool,
) -> Result<Encoded> {
    let analysis = face.analyse(img, &source.label, opts)?;
    let t = Instant::now();
    let hidden = clip_hidden(clip, &analysis.cond.clip_crop)?;
    let base_clip = if base { Some(base_features(clip, img, &analysis.landmarks)?) } else { None };
    Ok(Encoded { source, face: analysis, clip: hidden, clip_time: t.elapsed(), base_clip })
}

/// Read and encode one photo file (its content hash becomes its provenance); with `base`, its Base condition too.
pub fn encode_photo(
    face: &Antelope,
    clip: &ClipVision,
    path: &Path,
    opts: &FaceOptions,
    base: bool,
) -> Result<Encoded> {
    let bytes = crate::files::read_regular(path)?;
    let img = load_photo(path)?;
    // the label names the options too: two encodings of one photo (another crop, grayscale) are two sources
    let how = opts.describe();
    let label = if how.is_empty() { path.display().to_string() } else { format!("{} ({how})", path.display()) };
    let source = Source { hash: sha256_hex(&bytes), label };
    encode_image(face, clip, &img, source, opts, base)
}

/// The photos' features as one set.
pub fn feature_set(photos: &[Encoded]) -> Result<FeatureSet> {
    if photos.is_empty() {
        return Err(Error::Mismatch("no photos were encoded".into()));
    }
    let e = photos[0].face.embedding.len();
    let arcface: Vec<f32> = photos.iter().flat_map(|p| p.face.embedding.iter().copied()).collect();
    let arcface = Tensor::from_vec(arcface, (photos.len(), e), &Device::Cpu)?;
    let clip = Tensor::cat(&photos.iter().map(|p| &p.clip).collect::<Vec<_>>(), 0)?;
    let clip_base = crate::encode::features::stack_base_rows(photos.iter().filter_map(|p| p.base_clip.as_ref()))?;
    FeatureSet::new(arcface, clip, clip_base, photos.iter().map(|p| p.source.clone()).collect())
}

/// Write a features file: `arcface` [N, E], `clip` [N, 257, D], plus `face_box` [N, 4], `landmarks`
/// [N, 106, 2] and `kps` [N, 5, 2] (in the ArcFace crop) in photo pixels, and the options in the metadata.
pub fn save_features(photos: &[Encoded], opts: &FaceOptions, path: &Path, overwrite: bool) -> Result<()> {
    let set = feature_set(photos)?;
    let n = photos.len();
    let flat = |f: &dyn Fn(&FaceAnalysis) -> Vec<f32>| photos.iter().flat_map(|p| f(&p.face)).collect::<Vec<f32>>();
    let extra = vec![
        ("face_box".to_string(), RawTensor::f32(&[n, 4], &flat(&|a| a.bbox.iter().map(|v| *v as f32).collect()))),
        (
            "landmarks".to_string(),
            RawTensor::f32(
                &[n, 106, 2],
                &flat(&|a| a.landmarks.iter().flat_map(|p| [p[0] as f32, p[1] as f32]).collect()),
            ),
        ),
        (
            "kps".to_string(),
            RawTensor::f32(&[n, 5, 2], &flat(&|a| a.kps.iter().flat_map(|p| [p[0] as f32, p[1] as f32]).collect())),
        ),
    ];
    let meta = [
        ("remove_background".to_string(), opts.remove_background.to_string()),
        ("grayscale".to_string(), opts.grayscale.to_string()),
        ("faces".to_string(), photos.iter().map(|p| p.face.describe()).collect::<Vec<_>>().join("\n")),
    ]
    .into();
    set.save_with(path, overwrite, extra, meta)
}

/// Save the intermediate images of one photo as PNGs named `<stem>.<what>.png` in `dir`: the cutout on grey,
/// the CLIP crop, the 3× ArcFace crop and the aligned recognizer input.
pub fn write_debug(e: &Encoded, dir: &Path, stem: &str, overwrite: bool) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    let c = &e.face.cond;
    let mut written = Vec::new();
    for (what, img) in [
        ("cutout", &c.face),
        ("clip_crop", &c.clip_crop),
        ("arcface_crop", &c.arcface_crop),
        ("aligned", &e.face.aligned),
    ] {
        let path = dir.join(format!("{stem}.{what}.png"));
        let png = crate::files::png_meta::encode_png(
            &img.data,
            img.width,
            img.height,
            &[("source".into(), e.source.label.clone())],
        )?;
        write_file(&path, &png, overwrite)?;
        written.push(path);
    }
    Ok(written)
}
