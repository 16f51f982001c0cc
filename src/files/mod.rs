//! Files in and out: atomic no-clobber writes and safetensors bytes (`output`), PNGs with their settings
//! (`png_meta`), content hashes and provenance records (`provenance`), hub downloads (`download`).
pub mod download;
pub mod output;
pub mod png_meta;
pub mod provenance;

use crate::error::{Error, Result};
use std::path::Path;

/// Open a file for reading, refusing anything but a regular file first: a FIFO would block the session until
/// something writes to it, a device could be endless, a folder is a mistake worth naming.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(what) = not_regular(&m) {
        return Err(Error::invalid(path, format!("is {what}; expected a file")));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// What a path is when it is not a regular file, as the refusals of `open_regular` and `read_text` say it.
fn not_regular(m: &std::fs::Metadata) -> Option<&'static str> {
    match (m.is_file(), m.is_dir()) {
        (true, _) => None,
        (false, true) => Some("a folder"),
        (false, false) => Some("not a regular file (a FIFO, device or socket)"),
    }
}

/// The largest text file read whole (configs, tokenizer files, recipes, indexes): anything larger is not ours.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// `std::fs::read_to_string` for the files the program reads as text, refusing before anything is read what is not a
/// regular file (a FIFO would block forever, `/dev/zero` would never end) or is larger than `MAX_TEXT_BYTES`. The
/// error kinds stay `std::io`'s, so a missing file is still `NotFound`.
pub fn read_text(path: impl AsRef<Path>) -> std::io::Result<String> {
    let path = path.as_ref();
    let m = std::fs::metadata(path)?;
    if let Some(what) = not_regular(&m) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {what}")));
    }
    if m.len() > MAX_TEXT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is {} MB, more than any text file this program reads", m.len() >> 20),
        ));
    }
    std::fs::read_to_string(path)
}

/// Read a whole regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
    Ok(out)
}
