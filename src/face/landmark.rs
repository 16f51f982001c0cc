//! The 106-point landmark model's crop and decoding (insightface `Landmark.get`, `2d106det.onnx`): a square crop
//! centred on the box, scale 192/(1.5·max(w, h)), no rotation; raw [1, 212] → (106, 2) → (v + 1)·96 → inverse
//! affine back to image coordinates. The model input is the crop as float 0–255, no normalisation.
use crate::error::{Error, Result};
use crate::pixels::warp::{apply, invert, warp_affine, Affine};
use crate::pixels::Rgb8;

pub const INPUT: usize = 192;

/// The crop transform for a face box (x1, y1, x2, y2).
pub fn crop_transform(bbox: [f64; 4]) -> Affine {
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let (cx, cy) = ((bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0);
    let s = INPUT as f64 / (w.max(h) * 1.5);
    [[s, 0.0, INPUT as f64 / 2.0 - s * cx], [0.0, s, INPUT as f64 / 2.0 - s * cy]]
}

/// The model's input image and the transform that made it.
pub fn crop(img: &Rgb8, bbox: [f64; 4]) -> (Rgb8, Affine) {
    let m = crop_transform(bbox);
    (warp_affine(img, &m, INPUT, INPUT), m)
}

/// Raw model output (212 values) → 106 points in image coordinates.
pub fn decode(raw: &[f32], m: &Affine) -> Result<Vec<[f64; 2]>> {
    if raw.len() != 212 {
        return Err(Error::Mismatch(format!("the 106-landmark model returns 212 values, got {}", raw.len())));
    }
    let inv = invert(m);
    // as insightface computes it: `(pred + 1) * (input_size // 2)` in float32, the inverse transform in float64,
    // the points stored as float32 again (the analyser returns float32 landmarks); the Base condition's crop box
    // sits on .5 boundaries for the fixture face, so these roundings decide whole pixels there
    let half = (INPUT / 2) as f32;
    Ok(raw
        .chunks(2)
        .map(|p| {
            let (x, y) = apply(&inv, ((p[0] + 1.0) * half) as f64, ((p[1] + 1.0) * half) as f64);
            [x as f32 as f64, y as f32 as f64]
        })
        .collect())
}
