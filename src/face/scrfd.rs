//! SCRFD post-processing as insightface runs it (spec §1.4; fixture README §3): letterbox into the det-size
//! square at the top-left, strides 8/16/32 with 2 anchors per centre (no +0.5 offset), distance → box and 5
//! keypoints, score ≥ threshold, greedy NMS at IoU 0.4 with the +1 area convention, faces by score.
use crate::error::{Error, Result};
use crate::pixels::Rgb8;

pub const STRIDES: [usize; 3] = [8, 16, 32];
pub const ANCHORS: usize = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// x1, y1, x2, y2 in the original image's pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Image-left eye, image-right eye, nose tip, left and right mouth corner.
    pub kps: [[f32; 2]; 5],
}

/// `cv2.resize(INTER_LINEAR)`: half-pixel centres, edge pixels repeated, rounded to 8 bits.
pub fn resize_bilinear(img: &Rgb8, w: usize, h: usize) -> Rgb8 {
    let (sx, sy) = (img.width as f64 / w as f64, img.height as f64 / h as f64);
    let mut out = vec![0u8; w * h * 3];
    let tap = |i: f64, n: usize| -> (usize, usize, f64) {
        let i = i.max(0.0);
        let i0 = (i.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, if i0 == n - 1 { 0.0 } else { i - i0 as f64 })
    };
    for y in 0..h {
        let (y0, y1, fy) = tap((y as f64 + 0.5) * sy - 0.5, img.height);
        for x in 0..w {
            let (x0, x1, fx) = tap((x as f64 + 0.5) * sx - 0.5, img.width);
            for c in 0..3 {
                let p = |xx: usize, yy: usize| img.data[(yy * img.width + xx) * 3 + c] as f64;
                let v = p(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + p(x1, y0) * fx * (1.0 - fy)
                    + p(x0, y1) * (1.0 - fx) * fy
                    + p(x1, y1) * fx * fy;
                out[(y * w + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Rgb8 { width: w, height: h, data: out }
}

/// Letterbox into a `det`×`det` square at the top-left (zeros elsewhere). Returns the square and `det_scale`
/// (new size / original size).
pub fn letterbox(img: &Rgb8, det: usize) -> (Rgb8, f32) {
    let ratio = img.height as f64 / img.width as f64;
    let (nw, nh) =
        if ratio > 1.0 { ((det as f64 / ratio) as usize, det) } else { (det, (det as f64 * ratio) as usize) };
    let scale = nh as f32 / img.height as f32;
    let small = resize_bilinear(img, nw.max(1), nh.max(1));
    let mut data = vec![0u8; det * det * 3];
    for y in 0..small.height {
        data[y * det * 3..y * det * 3 + small.width * 3]
            .copy_from_slice(&small.data[y * small.width * 3..(y + 1) * small.width * 3]);
    }
    (Rgb8 { width: det, height: det, data }, scale)
}

/// (RGB − mean)/std as a CHW float buffer: the input of insightface's ONNX models.
pub fn chw_normalized(img: &Rgb8, mean: f32, std: f32) -> Vec<f32> {
    let n = img.width * img.height;
    let mut v = vec![0f32; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            v[c * n + i] = (img.data[i * 3 + c] as f32 - mean) / std;
        }
    }
    v
}

/// Model input: (RGB − 127.5)/128, CHW, [1, 3, det, det].
pub fn blob(img: &Rgb8) -> Vec<f32> {
    chw_normalized(img, 127.5, 128.0)
}

/// The 9 raw heads for one image, per stride: scores [n], boxes [n·4], keypoints [n·10], n = (det/s)²·2.
pub struct RawHeads {
    pub scores: [Vec<f32>; 3],
    pub boxes: [Vec<f32>; 3],
    pub kps: [Vec<f32>; 3],
}

fn iou_plus1(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// Decode, threshold, map back by `det_scale`, sort by score and suppress overlaps.
pub fn decode(raw: &RawHeads, det: usize, det_scale: f32, threshold: f32, nms: f32) -> Result<Vec<Face>> {
    let mut faces = Vec::new();
    for (si, &s) in STRIDES.iter().enumerate() {
        let side = det / s;
        let n = side * side * ANCHORS;
        if raw.scores[si].len() != n || raw.boxes[si].len() != n * 4 || raw.kps[si].len() != n * 10 {
            return Err(Error::Mismatch(format!(
                "SCRFD stride {s}: expected {n} anchors for det size {det}, got {} scores / {} box values / {} keypoint values",
                raw.scores[si].len(),
                raw.boxes[si].len(),
                raw.kps[si].len()
            )));
        }
        let sf = s as f32;
        for i in 0..n {
            let score = raw.scores[si][i];
            if score < threshold {
                continue;
            }
            let cell = i / ANCHORS;
            let (cx, cy) = ((cell % side) as f32 * sf, (cell / side) as f32 * sf);
            let d = &raw.boxes[si][i * 4..i * 4 + 4];
            let bbox = [
                (cx - d[0] * sf) / det_scale,
                (cy - d[1] * sf) / det_scale,
                (cx + d[2] * sf) / det_scale,
                (cy + d[3] * sf) / det_scale,
            ];
            let k = &raw.kps[si][i * 10..i * 10 + 10];
            let mut kps = [[0f32; 2]; 5];
            for (j, p) in kps.iter_mut().enumerate() {
                *p = [(cx + k[2 * j] * sf) / det_scale, (cy + k[2 * j + 1] * sf) / det_scale];
            }
            faces.push(Face { bbox, score, kps });
        }
    }
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::new();
    for f in faces {
        if kept.iter().all(|k| iou_plus1(&k.bbox, &f.bbox) <= nms) {
            kept.push(f);
        }
    }
    Ok(kept)
}
