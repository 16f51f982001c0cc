//! PNG output with the generation settings in text chunks (UTF-8 `iTXt`), readable back by `hyperlora info`.
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// [3, H, W] in [-1, 1] → RGB8, as diffusers post-processes: round((clamp(x, −1, 1) + 1) · 127.5).
pub fn to_rgb8(img: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    let (c, h, w) = img.dims3()?;
    if c != 3 {
        return Err(Error::Mismatch(format!("an RGB image needs 3 channels, got {c}")));
    }
    let v = ((img.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((v.into_iter().map(|x| x.round().clamp(0.0, 255.0) as u8).collect(), w, h))
}

/// Encode RGB8 pixels with text chunks.
pub fn encode_png(rgb: &[u8], width: usize, height: usize, text: &[(String, String)]) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::Mismatch(format!("PNG encoding failed: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.clone(), v.clone()).map_err(err)?;
        }
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(rgb).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(out)
}

/// Write a generated image; never over an existing file unless `overwrite`.
pub fn write_png(path: &Path, img: &Tensor, text: &[(String, String)], overwrite: bool) -> Result<()> {
    let (rgb, w, h) = to_rgb8(img)?;
    crate::files::output::write_file(path, &encode_png(&rgb, w, h, text)?, overwrite)
}

/// The largest PNG side decoded (a header can claim 2³¹ pixels; a few kilobytes must not ask for gigabytes).
pub const MAX_PNG_SIDE: usize = 16384;

/// The most text one chunk may bring in, decompressed, and all chunks together: settings are a few kilobytes, and a
/// compressed text chunk (a zTXt "bomb") must not turn a small file into hundreds of megabytes that `save` copies.
pub const MAX_TEXT_CHUNK: usize = 1 << 20;
pub const MAX_TEXT_TOTAL: usize = 8 << 20;

fn text_chunks(info: &png::Info) -> Vec<(String, String)> {
    let dropped = || format!("(dropped: more than {} KiB of text in this chunk)", MAX_TEXT_CHUNK >> 10);
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), if t.text.len() > MAX_TEXT_CHUNK { dropped() } else { t.text.clone() }))
        .collect();
    for z in &info.compressed_latin1_text {
        let mut z = z.clone();
        let t = match z.decompress_text_with_limit(MAX_TEXT_CHUNK).and_then(|_| z.get_text()) {
            Ok(t) => t,
            Err(_) => dropped(),
        };
        text.push((z.keyword.clone(), t));
    }
    for i in &info.utf8_text {
        let mut i = i.clone();
        let t = match i.decompress_text_with_limit(MAX_TEXT_CHUNK).and_then(|_| i.get_text()) {
            Ok(t) => t,
            Err(_) => dropped(),
        };
        text.push((i.keyword.clone(), t));
    }
    // and a bound on all of them together
    let mut total = 0;
    text.retain(|(k, v)| {
        total += k.len() + v.len();
        total <= MAX_TEXT_TOTAL
    });
    text
}

fn png_reader(path: &Path) -> Result<png::Reader<std::io::BufReader<std::fs::File>>> {
    let file = crate::files::open_regular(path)?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let reader = dec.read_info().map_err(|e| Error::invalid(path, format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w > MAX_PNG_SIDE || h > MAX_PNG_SIDE {
        return Err(Error::invalid(
            path,
            format!("PNG of {w}×{h} pixels: larger than the {MAX_PNG_SIDE}-pixel side this tool decodes"),
        ));
    }
    Ok(reader)
}

/// A PNG's size and the text chunks before its image data (where generated PNGs keep their settings), without
/// decoding the pixels.
pub fn read_png_text(path: &Path) -> Result<(usize, usize, Vec<(String, String)>)> {
    let reader = png_reader(path)?;
    let info = reader.info();
    Ok((info.width as usize, info.height as usize, text_chunks(info)))
}

/// A PNG's pixels (RGB8) and all its text chunks (tEXt, zTXt, iTXt) in file order.
pub fn read_png(path: &Path) -> Result<(Vec<u8>, usize, usize, Vec<(String, String)>)> {
    let bad = |e: png::DecodingError| Error::invalid(path, format!("not a readable PNG: {e}"));
    let mut reader = png_reader(path)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::invalid(path, "PNG too large to decode"))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(frame.buffer_size());
    let text = text_chunks(reader.info());
    let rgb = match frame.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf.chunks(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(Error::invalid(path, "indexed PNG after expansion")),
    };
    Ok((rgb, frame.width as usize, frame.height as usize, text))
}

/// A PNG as a [1, 3, H, W] tensor in [-1, 1] (img2img input); it must be `width`×`height`.
pub fn load_image(path: &Path, width: usize, height: usize) -> Result<Tensor> {
    let (rgb, w, h, _) = read_png(path)?;
    if (w, h) != (width, height) {
        return Err(Error::invalid(
            path,
            format!("image is {w}×{h}; this run is {width}×{height} (resize it or change --width/--height)"),
        ));
    }
    rgb8_to_tensor(&rgb, w, h)
}

/// RGB8 pixels (h × w × 3) as a [1, 3, H, W] tensor in [-1, 1], the VAE's input: x / 127.5 − 1.
pub fn rgb8_to_tensor(rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
    let v: Vec<f32> = rgb.iter().map(|p| *p as f32 / 127.5 - 1.0).collect();
    Ok(Tensor::from_vec(v, (height, width, 3), &candle_core::Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}
