//! The antelopev2 face stack as HyperLoRA drives it (spec §3.1–3.2), one photo at a time: detect (640, 512, 384,
//! 256, then with a border), pick a face, 106 landmarks, the ID cutout and crops, then the ArcFace embedding of
//! the face re-detected at 640 on the 3× crop.
use super::cutout::{id_condition, IdCondition};
use super::onnx::{ArcFace, Detection, Landmark106, Scrfd};
use super::scrfd::Face;
use crate::error::{Error, Result};
use crate::pixels::Rgb8;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DETECTOR: &str = "scrfd_10g_bnkps.onnx";
pub const LANDMARKS: &str = "2d106det.onnx";
pub const RECOGNIZER: &str = "glintr100.onnx";
/// insightface's `det_thresh` after `prepare(det_size=(640, 640))`.
pub const DET_THRESHOLD: f32 = 0.5;

/// The three antelopev2 models HyperLoRA runs (`1k3d68` and `genderage` are loaded by insightface but unused).
pub struct Antelope {
    pub dir: PathBuf,
    pub detector: Scrfd,
    pub landmarks: Landmark106,
    pub recognizer: ArcFace,
}

impl Antelope {
    /// Load from an `antelopev2` folder. A missing file is named, with a hint for the usual mistakes (a nested
    /// `antelopev2/antelopev2/`, the `buffalo_l` pack in its place).
    pub fn load(dir: &Path) -> Result<Self> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
            let nested = dir.join("antelopev2").join(name);
            let hint = if nested.is_file() {
                format!(
                    "; it is in {} — point at that nested folder (a common unzip mistake)",
                    nested.parent().unwrap_or(dir).display()
                )
            } else if dir.join("det_10g.onnx").is_file() || dir.join("w600k_r50.onnx").is_file() {
                "; this folder holds the buffalo_l pack, HyperLoRA needs antelopev2".to_string()
            } else if !dir.is_dir() {
                " (the folder does not exist)".to_string()
            } else {
                " (insightface's antelopev2 pack: scrfd_10g_bnkps.onnx, 2d106det.onnx, glintr100.onnx, …)".to_string()
            };
            Err(Error::Mismatch(format!("{}: {name} not found{hint}", dir.display())))
        };
        Ok(Antelope {
            detector: Scrfd::load(&file(DETECTOR)?)?,
            landmarks: Landmark106::load(&file(LANDMARKS)?)?,
            recognizer: ArcFace::load(&file(RECOGNIZER)?)?,
            dir: dir.to_path_buf(),
        })
    }
}

/// Which face of a photo to use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FacePick {
    /// The highest detector score (HyperLoRA's `faces[0]`).
    #[default]
    Best,
    /// The n-th face by score (0 = best).
    Index(usize),
    /// A face box (x1, y1, x2, y2) given by the user: the detector is not run on this photo; the 106 landmarks
    /// are read in this box and the ArcFace alignment uses the five points they give (eye centres, nose tip,
    /// mouth corners) instead of a re-detection.
    Box([f64; 4]),
}

/// The ID preprocessing options (spec §3.2; defaults as the official node).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceOptions {
    pub pick: FacePick,
    pub remove_background: bool,
    pub grayscale: bool,
}

impl Default for FaceOptions {
    fn default() -> Self {
        FaceOptions { pick: FacePick::Best, remove_background: true, grayscale: false }
    }
}

impl FaceOptions {
    /// What differs from the defaults, for a source label (`""` for the defaults): `face 1`, `box 10,20,90,120`,
    /// `grayscale`, `background kept`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.pick {
            FacePick::Best => {}
            FacePick::Index(i) => parts.push(format!("face {i}")),
            FacePick::Box(b) => parts.push(format!("box {},{},{},{}", b[0], b[1], b[2], b[3])),
        }
        if self.grayscale {
            parts.push("grayscale".into());
        }
        if !self.remove_background {
            parts.push("background kept".into());
        }
        parts.join("; ")
    }
}

/// Where the five ArcFace alignment points came from.
#[derive(Debug, Clone, PartialEq)]
pub enum KpsFrom {
    /// SCRFD on the 3× crop at det size 640 (the official path), with that face's score.
    Redetected { score: f32 },
    /// The 106 landmarks (a box was given).
    Landmarks,
}

/// Everything the face stack found for one photo.
pub struct FaceAnalysis {
    /// The chosen face box in photo pixels.
    pub bbox: [f64; 4],
    /// Its detector score (None when a box was given).
    pub score: Option<f32>,
    /// Faces the detector found (0 when a box was given), and at which det size / border.
    pub faces_found: usize,
    pub det_size: Option<usize>,
    pub padding: usize,
    pub landmarks: Vec<[f64; 2]>,
    pub cond: IdCondition,
    /// The five alignment points in `cond.arcface_crop` coordinates, and their origin.
    pub kps: [[f64; 2]; 5],
    pub kps_from: KpsFrom,
    /// The aligned 112² (or the recognizer's size) crop and its L2-normalised embedding.
    pub aligned: Rgb8,
    pub embedding: Vec<f32>,
    /// Time per stage: detect, landmarks, cutout, arcface.
    pub timings: Vec<(&'static str, Duration)>,
}

impl FaceAnalysis {
    /// One line for the user: which face, found how.
    pub fn describe(&self) -> String {
        let b = self.bbox;
        let face = match (self.score, self.det_size) {
            (Some(s), Some(d)) => {
                let border =
                    if self.padding > 0 { format!(" with a {}-px border", self.padding) } else { String::new() };
                format!("{} face(s) at det size {d}{border}; using one with score {s:.3}", self.faces_found)
            }
            _ => "face box given".to_string(),
        };
        let kps = match &self.kps_from {
            KpsFrom::Redetected { score } => format!("ArcFace on the re-detected face (score {score:.3})"),
            KpsFrom::Landmarks => "ArcFace aligned on the landmarks' eyes/nose/mouth".to_string(),
        };
        format!("{face}, box [{:.0}, {:.0}, {:.0}, {:.0}]; {kps}", b[0], b[1], b[2], b[3])
    }
}

/// Five alignment points from the 106 landmarks: eye centres 38 and 88, nose tip 86, mouth corners 52 and 61.
/// A given face box (a photo's, or an image's for `face_score` and `refine_face`) must be finite and ordered,
/// overlap the image and be no larger than 4× its larger side; each failure says which.
fn check_box(img: &Rgb8, what: &str, b: [f64; 4]) -> Result<()> {
    let (w, h) = (img.width as f64, img.height as f64);
    let why = if !(b[2] > b[0] && b[3] > b[1]) || b.iter().any(|v| !v.is_finite()) {
        "it is not x1,y1,x2,y2 with finite x2 > x1 and y2 > y1"
    } else if b[2] <= 0.0 || b[3] <= 0.0 || b[0] >= w || b[1] >= h {
        "it lies outside the image"
    } else if (b[2] - b[0]).max(b[3] - b[1]) > 4.0 * w.max(h) {
        "it is more than 4× the size of the image"
    } else {
        return Ok(());
    };
    Err(Error::InvalidValue(format!(
        "{what}: box {b:?} is not a face box on this {}×{} image: {why}",
        img.width, img.height
    )))
}

pub fn kps_from_landmarks(lm: &[[f64; 2]]) -> [[f64; 2]; 5] {
    [lm[38], lm[88], lm[86], lm[52], lm[61]]
}

impl Antelope {
    /// Run the face stack on one photo; `what` names it in errors. No face, a face index out of range, or no face
    /// on the ArcFace re-detection is an error (HyperLoRA would drop the photo silently).
    pub fn analyse(&self, img: &Rgb8, what: &str, opts: &FaceOptions) -> Result<FaceAnalysis> {
        let mut timings = Vec::new();
        let t = Instant::now();
        let (bbox, score, faces_found, det_size, padding) = match opts.pick {
            FacePick::Box(b) => {
                check_box(img, what, b)?;
                (b, None, 0, None, 0)
            }
            FacePick::Best | FacePick::Index(_) => {
                let (f, d) = self.detect_nth(img, what, opts.pick)?;
                (f.bbox.map(|v| v as f64), Some(f.score), d.faces.len(), Some(d.det_size), d.padding)
            }
        };
        timings.push(("detect", t.elapsed()));
        let t = Instant::now();
        let landmarks = self.landmarks.landmarks(img, bbox)?;
        timings.push(("landmarks", t.elapsed()));
        let t = Instant::now();
        let cond = id_condition(img, &landmarks, opts.remove_background, opts.grayscale)?;
        timings.push(("cutout", t.elapsed()));
        let t = Instant::now();
        let (kps, kps_from) = match opts.pick {
            FacePick::Box(_) => {
                let [x0, y0, ..] = cond.arcface_box;
                (kps_from_landmarks(&landmarks).map(|p| [p[0] - x0 as f64, p[1] - y0 as f64]), KpsFrom::Landmarks)
            }
            _ => {
                let faces = self.detector.detect(&cond.arcface_crop, 640, DET_THRESHOLD)?;
                let f = faces.first().ok_or_else(|| {
                    Error::Mismatch(format!(
                        "{what}: no face found when re-detecting on the {}×{} ArcFace crop at det size 640 (HyperLoRA drops such photos; give the face box to align on the landmarks instead)",
                        cond.arcface_crop.width, cond.arcface_crop.height
                    ))
                })?;
                (f.kps.map(|p| [p[0] as f64, p[1] as f64]), KpsFrom::Redetected { score: f.score })
            }
        };
        let (aligned, _) = super::align::norm_crop_size(&cond.arcface_crop, &kps, self.recognizer.input_size);
        let embedding = self.recognizer.normed_embedding(&aligned)?;
        timings.push(("arcface", t.elapsed()));
        Ok(FaceAnalysis {
            bbox,
            score,
            faces_found,
            det_size,
            padding,
            landmarks,
            cond,
            kps,
            kps_from,
            aligned,
            embedding,
            timings,
        })
    }
}

impl Antelope {
    /// Detection at every size (then with a border) and the face `pick` chooses (`Best` = index 0, the highest
    /// score), with the detection it came from. A face index beyond those found is an error naming `what`.
    fn detect_nth(&self, img: &Rgb8, what: &str, pick: FacePick) -> Result<(Face, Detection)> {
        let d = self.detector.detect_any_size(img, DET_THRESHOLD, what)?;
        let i = if let FacePick::Index(i) = pick { i } else { 0 };
        let f = d.faces.get(i).cloned().ok_or_else(|| {
            Error::Mismatch(format!(
                "{what}: face {i} asked for, but {} face(s) were found (0 = highest score)",
                d.faces.len()
            ))
        })?;
        Ok((f, d))
    }

    /// The box of the face `pick` chooses in `img` (detection at every size, as for photos; a given box is
    /// checked to lie on the image). No face is an error naming `what`.
    pub fn find_face(&self, img: &Rgb8, what: &str, pick: FacePick) -> Result<[f64; 4]> {
        match pick {
            FacePick::Box(b) => check_box(img, what, b).map(|()| b),
            FacePick::Best | FacePick::Index(_) => Ok(self.detect_nth(img, what, pick)?.0.bbox.map(|v| v as f64)),
        }
    }

    /// The ArcFace embedding of one face in `img` as insightface's `FaceAnalysis.get` gives it (detect, the
    /// face's 5 keypoints, `norm_crop`, recognizer), or with a given box, aligned on the landmarks' points.
    /// Returns the embedding and the face box.
    pub fn embed_face(&self, img: &Rgb8, what: &str, pick: FacePick) -> Result<(Vec<f32>, [f64; 4])> {
        let (kps, bbox) = match pick {
            FacePick::Box(b) => {
                check_box(img, what, b)?;
                (kps_from_landmarks(&self.landmarks.landmarks(img, b)?), b)
            }
            FacePick::Best | FacePick::Index(_) => {
                let (f, _) = self.detect_nth(img, what, pick)?;
                (f.kps.map(|p| [p[0] as f64, p[1] as f64]), f.bbox.map(|v| v as f64))
            }
        };
        let (aligned, _) = super::align::norm_crop_size(img, &kps, self.recognizer.input_size);
        Ok((self.recognizer.normed_embedding(&aligned)?, bbox))
    }
}
