//! 5-point alignment to the 112×112 ArcFace template (insightface `norm_crop`): a least-squares similarity
//! transform (rotation + uniform scale + translation, no reflection — what skimage's `SimilarityTransform`
//! estimates), then an affine warp with bilinear sampling and a zero border.
use crate::pixels::warp::{warp_affine, Affine};
use crate::pixels::Rgb8;

/// insightface's ArcFace template for 112×112 crops.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

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
