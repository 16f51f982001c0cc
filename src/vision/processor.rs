//! `CLIPImageProcessor` as HyperLoRA runs it (PIL path): shortest edge → 224 with PIL BICUBIC, centre crop
//! 224×224, /255, OpenAI mean/std. The resize reproduces Pillow's `ImagingResample` exactly: separable
//! convolution (horizontal pass first), support 2·scale when downscaling, 22-bit fixed-point coefficients and a
//! uint8 intermediate image.
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

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

/// The CLIP image processor: [1, 3, size, size] f32.
pub fn clip_pixel_values(img: &Rgb8, size: usize) -> Result<Tensor> {
    let (w, h) = (img.width, img.height);
    let (nw, nh) = if w <= h { (size, size * h / w) } else { (size * w / h, size) };
    let resized = img.resize_bicubic(nw, nh)?;
    let (top, left) = ((nh - size) / 2, (nw - size) / 2);
    let mut v = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let p = resized.data[((top + y) * nw + left + x) * 3 + c] as f32 / 255.0;
                v[(c * size + y) * size + x] = (p - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    Ok(Tensor::from_vec(v, (1, 3, size, size), &Device::Cpu)?)
}

/// The largest photo side and decoder allocation accepted: a header that claims more (a decompression bomb, a
/// corrupt file) is refused before anything is allocated.
pub const MAX_PHOTO_SIDE: u32 = 16_384;
pub const MAX_PHOTO_BYTES: u64 = 1 << 30;

/// Read a photo (JPEG, PNG or WebP; the format is sniffed from the bytes) as 8-bit RGB: EXIF orientation applied,
/// grey and 16-bit converted, alpha dropped (as PIL's `convert("RGB")`). A file that cannot be decoded, or whose
/// header claims more than `MAX_PHOTO_SIDE` pixels a side, is an error naming it.
/// Whether a JPEG's data runs to its end-of-image marker: the segments before the first scan are skipped by their
/// lengths (an EXIF thumbnail has an end marker of its own), then the scans are read to the EOI. Data after the
/// EOI (a motion photo's video, say) is allowed.
pub fn jpeg_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return true; // not a JPEG start: the decoder says what is wrong
    }
    let mut i = 2;
    let mut in_scan = false;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            if in_scan {
                i += 1;
                continue;
            }
            return true; // malformed segment structure: left to the decoder
        }
        let m = b[i + 1];
        match m {
            0xFF => i += 1,                          // fill byte
            0x00 | 0xD0..=0xD7 if in_scan => i += 2, // stuffed 0xFF or a restart marker inside a scan
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= b.len() {
                    return false;
                }
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                i += 2 + len;
                in_scan = m == 0xDA;
            }
        }
    }
    false
}

pub fn load_photo(path: &std::path::Path) -> Result<Rgb8> {
    use image::ImageDecoder;
    let bytes = crate::files::read_regular(path)?;
    let bad = |e: image::ImageError| Error::invalid(path, format!("not a readable photo ({e})"));
    let reader =
        image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::invalid(path, "not a readable photo (unknown format; JPEG, PNG and WebP are supported)"));
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_complete(&bytes) {
        // the decoder would fill the missing rows with grey and say nothing
        return Err(Error::invalid(
            path,
            "the JPEG ends before its image data does (no end-of-image marker): a truncated download or copy?",
        ));
    }
    // the header's size first (no pixels are read), then the decoder with the same limits as a backstop
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .into_dimensions()
        .map_err(bad)?;
    if w > MAX_PHOTO_SIDE || h > MAX_PHOTO_SIDE || (w as u64) * (h as u64) * 4 > MAX_PHOTO_BYTES {
        return Err(Error::invalid(
            path,
            format!(
                "the header claims {w}×{h} pixels; photos up to {MAX_PHOTO_SIDE} pixels a side and {} MB decoded are read",
                MAX_PHOTO_BYTES >> 20
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_PHOTO_SIDE);
    limits.max_image_height = Some(MAX_PHOTO_SIDE);
    limits.max_alloc = Some(MAX_PHOTO_BYTES);
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    Rgb8::new(rgb.width() as usize, rgb.height() as usize, rgb.into_raw())
}
