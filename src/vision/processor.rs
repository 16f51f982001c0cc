//! `CLIPImageProcessor` as HyperLoRA runs it (PIL path): shortest edge → 224 with PIL BICUBIC (`Rgb8::resize_bicubic`,
//! Pillow-exact), centre crop 224×224, /255, OpenAI mean/std.
use crate::error::Result;
use crate::pixels::Rgb8;
use candle_core::{Device, Tensor};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

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
