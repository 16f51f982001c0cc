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
    if !m.is_file() {
        let what = if m.is_dir() { "a folder" } else { "not a regular file (a FIFO, device or socket)" };
        return Err(Error::invalid(path, format!("is {what}; expected a file")));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// Read a whole regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
    Ok(out)
}
