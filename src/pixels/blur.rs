//! Gaussian blur and masked paste on `Rgb8`.
use super::Rgb8;

/// Pillow `ImageFilter.GaussianBlur(radius)` on each channel: 3 box passes along x, then 3 along y.
pub fn gaussian_blur(img: &Rgb8, radius: f32) -> Rgb8 {
    let r = gaussian_box_radius(radius, 3);
    let (w, h) = (img.width, img.height);
    let mut out = img.clone();
    for c in 0..3 {
        let mut plane: Vec<u8> = (0..w * h).map(|i| img.data[i * 3 + c]).collect();
        for _ in 0..3 {
            for y in 0..h {
                let b = box_line(&plane[y * w..(y + 1) * w], r);
                plane[y * w..(y + 1) * w].copy_from_slice(&b);
            }
        }
        for _ in 0..3 {
            for x in 0..w {
                let col: Vec<u8> = (0..h).map(|y| plane[y * w + x]).collect();
                for (y, v) in box_line(&col, r).into_iter().enumerate() {
                    plane[y * w + x] = v;
                }
            }
        }
        for i in 0..w * h {
            out.data[i * 3 + c] = plane[i];
        }
    }
    out
}

/// Pillow `dst.paste(src, (x, y), mask)`: out = (src·a + dst·(255 − a))/255 with Pillow's rounding; clipped.
pub fn paste_masked(dst: &mut Rgb8, src: &Rgb8, mask: &Rgb8, x: i64, y: i64) {
    let div255 = |a: u32| {
        let t = a + 128;
        ((t >> 8) + t) >> 8
    };
    for sy in 0..src.height {
        let dy = y + sy as i64;
        if dy < 0 || dy >= dst.height as i64 {
            continue;
        }
        for sx in 0..src.width {
            let dx = x + sx as i64;
            if dx < 0 || dx >= dst.width as i64 {
                continue;
            }
            let a = mask.data[(sy * mask.width + sx) * 3] as u32;
            for c in 0..3 {
                let o = (dy as usize * dst.width + dx as usize) * 3 + c;
                let s = src.data[(sy * src.width + sx) * 3 + c] as u32;
                dst.data[o] = div255(dst.data[o] as u32 * (255 - a) + s * a) as u8;
            }
        }
    }
}

/// Pillow's box radius for a Gaussian of σ = `radius` made of `passes` box blurs (computed in f32 as Pillow does).
fn gaussian_box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One "extended box" blur of a line: integer window of radius ⌊r⌋ plus the two next pixels weighted by the
/// fractional part, edges repeated, 24-bit fixed point with rounding.
fn box_line(line: &[u8], r: f32) -> Vec<u8> {
    let ri = r as i64;
    let ww = ((1u32 << 24) as f32 / (r * 2.0 + 1.0)) as u64;
    let fw = ((1u64 << 24) - (ri as u64 * 2 + 1) * ww) / 2;
    let last = line.len() as i64 - 1;
    let at = |i: i64| line[i.clamp(0, last) as usize] as u64;
    (0..=last)
        .map(|x| {
            let acc: u64 = (x - ri..=x + ri).map(at).sum();
            let bulk = acc * ww + (at(x - ri - 1) + at(x + ri + 1)) * fw;
            ((bulk + (1 << 23)) >> 24) as u8
        })
        .collect()
}
