//! Reading a photo (JPEG, PNG or WebP) as `Rgb8`, within limits checked before anything is allocated.
use super::Rgb8;
use crate::error::{Error, Result};

/// The largest photo side and decoder allocation accepted: a header that claims more (a decompression bomb, a
/// corrupt file) is refused before anything is allocated.
/// 8,192 px a side so that the face chain fits in a few GB: a 16,384² photo with a whole-image face box needed
/// 1.1 GB in one allocation for its masks and crops (the 8 GB probe's abort); phone and camera photos are smaller.
pub const MAX_PHOTO_SIDE: u32 = 8_192;
pub const MAX_PHOTO_BYTES: u64 = 1 << 28;

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
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        // the decoder would fill what the scan data lacks and say nothing
        super::jpeg::check_scans(&bytes).map_err(|e| {
            Error::invalid(
                path,
                format!(
                    "the JPEG's image data is shorter than its header says ({e}): a damaged file or a patched header"
                ),
            )
        })?;
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
