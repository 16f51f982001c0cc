//! insightface's ONNX models run in pure Rust with tract (no onnxruntime library): the SCRFD detector at any det
//! size, and any insightface-style ArcFace recognizer (input size from the graph; normalisation decided as
//! insightface does: a graph whose first 8 nodes include Sub and Mul normalises itself, else (x − 127.5)/127.5).
use super::scrfd::{self, Face, RawHeads};
use crate::error::{Error, Result};
use crate::pixels::Rgb8;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(path, format!("{what}: {e}"))
}

/// `f` with a panic inside tract (a corrupt graph can reach an `unwrap` there) turned into an error naming `path`.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic in the ONNX runtime");
        Err(Error::invalid(path, format!("{what}: the ONNX file is corrupt or unsupported ({why})")))
    })
}

fn plan(path: &Path, shape: [usize; 4]) -> Result<Plan> {
    guarded(path, "cannot load the model", || {
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| err(path, "cannot read the ONNX model", e))?;
        model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(path, &format!("cannot prepare the model for input {shape:?}"), e))
    })
}

/// Run and return every output flattened, in graph order.
fn run(p: &Plan, path: &Path, input: Vec<f32>, shape: [usize; 4]) -> Result<Vec<Vec<f32>>> {
    let t = tract_ndarray::Array4::from_shape_vec(shape, input).map_err(|e| err(path, "input", e))?;
    let out = guarded(path, "inference failed", || {
        p.run(tvec!(Tensor::from(t).into())).map_err(|e| err(path, "inference failed", e))
    })?;
    out.iter()
        .map(|o| {
            Ok(o.to_plain_array_view::<f32>().map_err(|e| err(path, "output is not f32", e))?.iter().copied().collect())
        })
        .collect()
}

/// The SCRFD detector (`scrfd_10g_bnkps.onnx`): 9 outputs, score/bbox/kps for strides 8/16/32.
pub struct Scrfd {
    path: PathBuf,
    plans: Mutex<HashMap<usize, Plan>>,
}

impl Scrfd {
    pub fn load(path: &Path) -> Result<Self> {
        let s = Scrfd { path: path.to_path_buf(), plans: Mutex::new(HashMap::new()) };
        s.plan(640)?; // fail early on a bad file
        Ok(s)
    }

    fn plan(&self, det: usize) -> Result<Plan> {
        let mut plans = self.plans.lock().map_err(|_| Error::Mismatch("detector lock poisoned".into()))?;
        if let Some(p) = plans.get(&det) {
            return Ok(p.clone());
        }
        let p = plan(&self.path, [1, 3, det, det])?;
        plans.insert(det, p.clone());
        Ok(p)
    }

    /// The raw heads for an already letterboxed det×det image.
    pub fn heads(&self, boxed: &Rgb8) -> Result<RawHeads> {
        self.heads_from_blob(scrfd::blob(boxed), boxed.width)
    }

    /// The raw heads for a ready input blob [1, 3, det, det].
    pub fn heads_from_blob(&self, blob: Vec<f32>, det: usize) -> Result<RawHeads> {
        let out = run(&self.plan(det)?, &self.path, blob, [1, 3, det, det])?;
        if out.len() != 9 {
            return Err(Error::invalid(
                &self.path,
                format!("SCRFD with keypoints has 9 outputs, this model has {}", out.len()),
            ));
        }
        let mut it = out.into_iter();
        let mut next3 =
            || [it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default()];
        Ok(RawHeads { scores: next3(), boxes: next3(), kps: next3() })
    }

    /// Faces in `img` at one det size, best first.
    pub fn detect(&self, img: &Rgb8, det: usize, threshold: f32) -> Result<Vec<Face>> {
        let (boxed, scale) = scrfd::letterbox(img, det);
        scrfd::decode(&self.heads(&boxed)?, det, scale, threshold, 0.4)
    }
}

/// The det sizes HyperLoRA tries, largest first (spec §3.1).
pub const DET_SIZES: [usize; 4] = [640, 512, 384, 256];

/// Faces found at the first det size that finds any, and that size.
pub struct Detection {
    pub faces: Vec<Face>,
    pub det_size: usize,
    /// Black border added on each side before the face was found (0 when none was needed).
    pub padding: usize,
}

impl Scrfd {
    /// Try 640, 512, 384, 256; if none finds a face (a face filling the frame is too large for the anchors),
    /// pad the photo with a black border of half its longer side and try again. Coordinates are the photo's.
    /// No face: an error naming the photo and every size tried.
    pub fn detect_any_size(&self, img: &Rgb8, threshold: f32, what: &str) -> Result<Detection> {
        for &det in &DET_SIZES {
            let faces = self.detect(img, det, threshold)?;
            if !faces.is_empty() {
                return Ok(Detection { faces, det_size: det, padding: 0 });
            }
        }
        let pad = img.width.max(img.height) / 2;
        let padded = img.crop(-(pad as i64), -(pad as i64), (img.width + pad) as i64, (img.height + pad) as i64)?;
        for &det in &DET_SIZES {
            let mut faces = self.detect(&padded, det, threshold)?;
            if !faces.is_empty() {
                let p = pad as f32;
                for f in &mut faces {
                    f.bbox = [f.bbox[0] - p, f.bbox[1] - p, f.bbox[2] - p, f.bbox[3] - p];
                    f.kps.iter_mut().for_each(|k| *k = [k[0] - p, k[1] - p]);
                }
                return Ok(Detection { faces, det_size: det, padding: pad });
            }
        }
        Err(Error::Mismatch(format!(
            "{what}: no face detected at det sizes {DET_SIZES:?}, nor with a {pad}-pixel border added (score threshold {threshold}); give the face box instead (`--box X1,Y1,X2,Y2` on the command line, `box: [x1, y1, x2, y2]` in a script)"
        )))
    }
}

/// The width of an ArcFace embedding (glintr100, w600k_r50; spec: id_embed_dim 512).
pub const RECOGNIZER_WIDTH: usize = 512;

/// An insightface ArcFace recognizer (glintr100, w600k_r50, …).
pub struct ArcFace {
    path: PathBuf,
    plan: Plan,
    pub input_size: usize,
    pub mean: f32,
    pub std: f32,
}

/// What insightface reads from a graph before running it: the input's [N, 3, H, W] dims and whether the first
/// 8 nodes normalise the input themselves (a `Sub`/`_minus` and a `Mul`/`_mul` node; for the landmark models
/// also a `bn_data` node among the first 3).
struct GraphInfo {
    dims: Vec<i64>,
    sub: bool,
    mul: bool,
    bn_data: bool,
}

fn graph_info(path: &Path) -> Result<GraphInfo> {
    // a regular file only: a FIFO in the model's place would block the reader forever
    drop(crate::files::open_regular(path)?);
    let proto =
        tract_onnx::onnx().proto_model_for_path(path).map_err(|e| err(path, "cannot read the ONNX model", e))?;
    let graph = proto.graph.as_ref().ok_or_else(|| Error::invalid(path, "ONNX file has no graph"))?;
    let names: Vec<&str> = graph.node.iter().take(8).map(|n| n.name.as_str()).collect();
    let dims: Vec<i64> = graph
        .input
        .first()
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| match &t.value {
            Some(tract_onnx::pb::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
            _ => None,
        })
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => *v,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(GraphInfo {
        dims,
        sub: names.iter().any(|n| n.starts_with("Sub") || n.starts_with("_minus")),
        mul: names.iter().any(|n| n.starts_with("Mul") || n.starts_with("_mul")),
        bn_data: names.iter().take(3).any(|n| *n == "bn_data"),
    })
}

/// The square input side of a [N, 3, S, S] graph.
fn square_input(path: &Path, dims: &[i64], what: &str) -> Result<usize> {
    match dims {
        [_, 3, h, w] if h == w && *h > 0 => Ok(*h as usize),
        _ => Err(Error::invalid(path, format!("not {what}: input shape {dims:?}, expected [N, 3, S, S]"))),
    }
}

impl ArcFace {
    pub fn load(path: &Path) -> Result<Self> {
        let g = graph_info(path)?;
        let (mean, std) = if g.sub && g.mul { (0.0, 1.0) } else { (127.5, 127.5) };
        let size = square_input(path, &g.dims, "an ArcFace recognizer")?;
        let plan = plan(path, [1, 3, size, size])?;
        // an ArcFace embedding has 512 numbers; a landmark (212) or detection model in its place must not pass
        let out = plan.model().output_fact(0).ok().and_then(|f| f.shape.as_concrete().map(|d| d.to_vec()));
        if let Some(d) = out.filter(|d| d.iter().product::<usize>() != RECOGNIZER_WIDTH) {
            return Err(Error::invalid(
                path,
                format!("outputs {d:?}, not the {RECOGNIZER_WIDTH} numbers of an ArcFace embedding (a landmark or detection model in the recognizer's place?)"),
            ));
        }
        Ok(ArcFace { plan, path: path.to_path_buf(), input_size: size, mean, std })
    }

    /// The recognizer's input for an aligned crop: (RGB − mean)/std, CHW.
    pub fn blob(&self, crop: &Rgb8) -> Vec<f32> {
        scrfd::chw_normalized(crop, self.mean, self.std)
    }

    /// Raw embedding of a blob [1, 3, S, S].
    pub fn embed_blob(&self, blob: Vec<f32>) -> Result<Vec<f32>> {
        let s = self.input_size;
        let out = run(&self.plan, &self.path, blob, [1, 3, s, s])?;
        out.into_iter().next().ok_or_else(|| Error::invalid(&self.path, "model has no output"))
    }

    /// insightface's `normed_embedding` of an aligned crop.
    pub fn normed_embedding(&self, crop: &Rgb8) -> Result<Vec<f32>> {
        if crop.width != self.input_size || crop.height != self.input_size {
            return Err(Error::Mismatch(format!(
                "ArcFace crop is {}×{}; the model takes {}²",
                crop.width, crop.height, self.input_size
            )));
        }
        let e = self.embed_blob(self.blob(crop))?;
        let n = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        Ok(e.iter().map(|v| v / n.max(1e-12)).collect())
    }
}

/// The 106-point landmark model (`2d106det.onnx`, insightface `Landmark`): a 192² crop around the face box in,
/// [1, 212] out. Normalisation as insightface decides it (antelopev2's graph starts with `bn_data`, so it takes
/// raw 0–255 pixels).
pub struct Landmark106 {
    path: PathBuf,
    plan: Plan,
    pub mean: f32,
    pub std: f32,
}

impl Landmark106 {
    pub fn load(path: &Path) -> Result<Self> {
        let g = graph_info(path)?;
        let (mean, std) = if (g.sub && g.mul) || g.bn_data { (0.0, 1.0) } else { (127.5, 128.0) };
        let size = square_input(path, &g.dims, "a 106-point landmark model")?;
        if size != super::landmark::INPUT {
            return Err(Error::invalid(
                path,
                format!("a 2d106 landmark model takes 192×192 input; this one takes {size}×{size}"),
            ));
        }
        Ok(Landmark106 { plan: plan(path, [1, 3, size, size])?, path: path.to_path_buf(), mean, std })
    }

    /// The raw [212] output for a face box (x1, y1, x2, y2) in `img`, and the crop transform used.
    pub fn raw(&self, img: &Rgb8, bbox: [f64; 4]) -> Result<(Vec<f32>, crate::pixels::warp::Affine)> {
        let s = super::landmark::INPUT;
        let (crop, m) = super::landmark::crop(img, bbox);
        let out = run(&self.plan, &self.path, scrfd::chw_normalized(&crop, self.mean, self.std), [1, 3, s, s])?;
        let raw = out.into_iter().next().ok_or_else(|| Error::invalid(&self.path, "model has no output"))?;
        if raw.len() != 212 {
            return Err(Error::invalid(
                &self.path,
                format!("a 2d106 landmark model returns 212 values; this one returns {}", raw.len()),
            ));
        }
        Ok((raw, m))
    }

    /// 106 points in image coordinates for a face box. The model's raw outputs lie in [−1, 1] of its crop (1.5× the
    /// box); values that are not finite, or far outside the crop, come from a damaged or wrong model, whatever the
    /// box: the error names the model file.
    pub fn landmarks(&self, img: &Rgb8, bbox: [f64; 4]) -> Result<Vec<[f64; 2]>> {
        let (raw, m) = self.raw(img, bbox)?;
        if let Some(v) = raw.iter().find(|v| !v.is_finite() || v.abs() > 4.0) {
            return Err(Error::invalid(
                &self.path,
                format!(
                    "the landmark model returned {v} for a point (outputs lie within ±1 of its crop): the model file is damaged or not 2d106det"
                ),
            ));
        }
        super::landmark::decode(&raw, &m)
    }
}
