//! 5-point alignment to the 112×112 ArcFace template (insightface `norm_crop`): a least-squares similarity
//! transform (rotation + uniform scale + translation, no reflection — what skimage's `SimilarityTransform`
//! estimates), then an affine warp with bilinear sampling and a zero border.
use crate::vision::processor::Rgb8;

/// insightface's ArcFace template for 112×112 crops.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// A 2×3 affine matrix mapping source (x, y) to destination.
pub type Affine = [[f64; 3]; 2];

/// Least-squares similarity from `src` to `dst` points. In 2-D this is the complex-number regression
/// z_dst ≈ a·z_src + b, the same minimiser Umeyama's method finds when reflections are excluded.
pub fn similarity(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Affine {
    let n = src.len().min(dst.len()) as f64;
    let mean = |p: &[[f64; 2]]| {
        let (sx, sy) = p.iter().fold((0.0, 0.0), |a, q| (a.0 + q[0], a.1 + q[1]));
        (sx / n, sy / n)
    };
    let (smx, smy) = mean(src);
    let (dmx, dmy) = mean(dst);
    let (mut p, mut q, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy, dx, dy) = (s[0] - smx, s[1] - smy, d[0] - dmx, d[1] - dmy);
        p += sx * dx + sy * dy;
        q += sx * dy - sy * dx;
        norm += sx * sx + sy * sy;
    }
    let (a, b) = (p / norm, q / norm);
    [[a, -b, dmx - (a * smx - b * smy)], [b, a, dmy - (b * smx + a * smy)]]
}

/// The inverse of an affine map.
pub fn invert(m: &Affine) -> Affine {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    [[a, b, -(a * m[0][2] + b * m[1][2])], [c, d, -(c * m[0][2] + d * m[1][2])]]
}

pub fn apply(m: &Affine, x: f64, y: f64) -> (f64, f64) {
    (m[0][0] * x + m[0][1] * y + m[0][2], m[1][0] * x + m[1][1] * y + m[1][2])
}

/// `cv2.warpAffine(img, m, (w, h), INTER_LINEAR, BORDER_CONSTANT 0)` in exact float arithmetic: output pixel
/// (x, y) samples the source at m⁻¹·(x, y, 1); taps outside the image count as 0. Returns RGB f32 (0–255), HWC.
pub fn warp_affine_f32(img: &Rgb8, m: &Affine, w: usize, h: usize) -> Vec<f32> {
    let inv = invert(m);
    let mut out = vec![0f32; w * h * 3];
    let px = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= img.width as i64 || y >= img.height as i64 {
            0.0
        } else {
            img.data[(y as usize * img.width + x as usize) * 3 + c] as f64
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = apply(&inv, x as f64, y as f64);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for c in 0..3 {
                let v = px(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1, y0, c) * fx * (1.0 - fy)
                    + px(x0, y0 + 1, c) * (1.0 - fx) * fy
                    + px(x0 + 1, y0 + 1, c) * fx * fy;
                out[(y * w + x) * 3 + c] = v as f32;
            }
        }
    }
    out
}

/// The warp rounded to 8 bits (OpenCV's uint8 result within ±1 level).
pub fn warp_affine(img: &Rgb8, m: &Affine, w: usize, h: usize) -> Rgb8 {
    let data = warp_affine_f32(img, m, w, h).into_iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    Rgb8 { width: w, height: h, data }
}

/// insightface `norm_crop`: the 112×112 ArcFace crop for 5 keypoints (eyes, nose, mouth corners).
pub fn norm_crop(img: &Rgb8, kps: &[[f64; 2]; 5]) -> (Rgb8, Affine) {
    norm_crop_size(img, kps, 112)
}

/// `norm_crop` for a recognizer of another input size, as insightface's `estimate_norm` scales the template:
/// multiples of 112 scale it; other sizes scale by size/128 and shift x by 8·size/128.
pub fn norm_crop_size(img: &Rgb8, kps: &[[f64; 2]; 5], size: usize) -> (Rgb8, Affine) {
    let (ratio, dx) = if size.is_multiple_of(112) {
        (size as f64 / 112.0, 0.0)
    } else {
        (size as f64 / 128.0, 8.0 * size as f64 / 128.0)
    };
    let dst = ARCFACE_TEMPLATE.map(|p| [p[0] * ratio + dx, p[1] * ratio]);
    let m = similarity(kps, &dst);
    (warp_affine(img, &m, size, size), m)
}
