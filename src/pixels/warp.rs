//! Affine maps and warps (`cv2.warpAffine` with bilinear sampling and a zero border).
use super::Rgb8;

/// A 2×3 affine matrix mapping source (x, y) to destination.
pub type Affine = [[f64; 3]; 2];

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
