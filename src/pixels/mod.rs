//! Pixels: the 8-bit RGB image every room passes around, and what is done to it whoever asks — crop and Pillow-exact
//! bicubic resize (here), decoding a photo (`photo`, with `jpeg`'s check that the scans hold what the header claims), affine warps (`warp`), blur and masked paste (`blur`). Below
//! `face/` and `vision/`, which both use it; it uses neither.
use crate::error::{Error, Result};

pub mod blur;
pub mod jpeg;
pub mod photo;
pub mod warp;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Pillow's `ImagingResample`, exactly: separable convolution (horizontal pass first), support 2·scale when
/// downscaling, 22-bit fixed-point coefficients and a uint8 intermediate image.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel (first input index, fixed-point taps).
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C (int) truncation
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let fixed =
                k.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i64 } else { (0.5 + v * one) as i64 }).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(Error::Mismatch(format!(
                "{width}×{height} RGB needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Rgb8 { width, height, data })
    }

    /// PIL `Image.crop((l, t, r, b))`: regions outside the image are black.
    pub fn crop(&self, l: i64, t: i64, r: i64, b: i64) -> Result<Rgb8> {
        if r <= l || b <= t {
            return Err(Error::Mismatch(format!("empty crop box ({l}, {t}, {r}, {b})")));
        }
        let (w, h) = ((r - l) as usize, (b - t) as usize);
        let mut out = vec![0u8; w * h * 3];
        for y in 0..h {
            let sy = t + y as i64;
            if sy < 0 || sy >= self.height as i64 {
                continue;
            }
            for x in 0..w {
                let sx = l + x as i64;
                if sx < 0 || sx >= self.width as i64 {
                    continue;
                }
                let s = (sy as usize * self.width + sx as usize) * 3;
                out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&self.data[s..s + 3]);
            }
        }
        Rgb8::new(w, h, out)
    }

    /// PIL `Image.resize((w, h), BICUBIC)`, bit-exact.
    pub fn resize_bicubic(&self, w: usize, h: usize) -> Result<Rgb8> {
        if w == 0 || h == 0 {
            return Err(Error::Mismatch(format!("cannot resize to {w}×{h}")));
        }
        let mut img = self.clone();
        if w != img.width {
            let cs = coeffs(img.width, w);
            let mut out = vec![0u8; w * img.height * 3];
            for y in 0..img.height {
                let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
                for (xx, (xmin, k)) in cs.iter().enumerate() {
                    for c in 0..3 {
                        let mut ss = 1i64 << (PRECISION_BITS - 1);
                        for (i, kv) in k.iter().enumerate() {
                            ss += row[(xmin + i) * 3 + c] as i64 * kv;
                        }
                        out[(y * w + xx) * 3 + c] = clip8(ss);
                    }
                }
            }
            img = Rgb8 { width: w, height: img.height, data: out };
        }
        if h != img.height {
            let cs = coeffs(img.height, h);
            let mut out = vec![0u8; w * h * 3];
            for (yy, (ymin, k)) in cs.iter().enumerate() {
                for x in 0..w {
                    for c in 0..3 {
                        let mut ss = 1i64 << (PRECISION_BITS - 1);
                        for (i, kv) in k.iter().enumerate() {
                            ss += img.data[((ymin + i) * w + x) * 3 + c] as i64 * kv;
                        }
                        out[(yy * w + x) * 3 + c] = clip8(ss);
                    }
                }
            }
            img = Rgb8 { width: w, height: h, data: out };
        }
        Ok(img)
    }
}
