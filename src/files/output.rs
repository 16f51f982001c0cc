//! Writing user-visible files: atomically (temp file + rename/link in the same folder) and never over an existing
//! file unless the caller says so.
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Refuse an existing output before slow work starts (`write_file` checks again when writing).
pub fn refuse_existing(path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::Exists { path: path.to_path_buf() });
    }
    Ok(())
}

/// Write `bytes` to `path`. Without `overwrite`, an existing `path` is an error and is left untouched; even with
/// it, only a regular file is ever replaced (never a folder, a device, a FIFO or a socket).
pub fn write_file(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::Exists { path: path.to_path_buf() });
    }
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            return Err(Error::invalid(
                path,
                "exists and is not a regular file (a folder, device, FIFO or socket): not replaced",
            ));
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
    clean_stale_temps(&dir);
    let (tmp, mut f) = temp_file(&dir, path)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok::<(), std::io::Error>(())
    })();
    drop(f);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    let placed = if overwrite {
        std::fs::rename(&tmp, path)
    } else {
        // A hard link fails if `path` appeared meanwhile, so a concurrent writer's file is never replaced.
        let r = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        r
    };
    placed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists { path: path.to_path_buf() }
        } else {
            Error::write(path, e)
        }
    })
}

/// A new temporary file beside `path` (hidden, `.NAME.PID.N.tmp`), created exclusively: two writers (threads, or
/// processes on hosts sharing the folder) never write into the same temporary file.
fn temp_file(dir: &Path, path: &Path) -> Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    // keep the temporary name within the usual 255-byte limit
    let short: String = name.chars().take(120).collect();
    let mut last = None;
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{short}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::write(path, e)),
        }
    }
    Err(Error::write(path, last.unwrap_or_else(|| std::io::Error::other("no free temporary name"))))
}

/// Whether a file name is one of our temporary names: `.NAME.PID.N.tmp`.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else { return false };
    let mut parts = rest.rsplitn(3, '.');
    let digits = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_some_and(|n| !n.is_empty())
}

/// Temporary files older than this are left over from a killed writer (a write takes seconds); they are removed.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Remove our stale temporary files from `dir`, once per folder and process (a kill -9 during a write leaves one
/// behind). Only names of our own pattern, and only when older than [`STALE_TEMP`]: a temporary file of a live
/// writer — on this host or another sharing the folder — is never touched.
fn clean_stale_temps(dir: &Path) {
    use std::sync::Mutex;
    static DONE: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
    {
        let Ok(mut done) = DONE.lock() else { return };
        if done.iter().any(|d| d == dir) {
            return;
        }
        done.push(dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        if !is_temp_name(&name.to_string_lossy()) {
            continue;
        }
        let old =
            e.metadata().ok().filter(|m| m.is_file()).and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if old.is_some_and(|age| age > STALE_TEMP) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What is at an output path, for `--resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputState {
    Missing,
    /// A whole file: a PNG that decodes, a safetensors file whose header and data check out, any other non-empty
    /// regular file.
    Complete,
    /// Something is there but it is not a finished output (why).
    Incomplete(String),
}

/// Look at an output path: missing, complete, or there but broken (a truncated copy, a file of zero bytes, a
/// folder).
pub fn output_state(path: &Path) -> OutputState {
    let m = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return OutputState::Missing,
        Err(e) => return OutputState::Incomplete(format!("cannot be read: {e}")),
        Ok(m) => m,
    };
    if !m.is_file() {
        return OutputState::Incomplete("not a regular file".into());
    }
    if m.len() == 0 {
        return OutputState::Incomplete("empty".into());
    }
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let checked = match ext.as_str() {
        "png" => crate::files::png_meta::read_png(path).map(|_| ()),
        "safetensors" => crate::weights::StFile::open(path).map(|_| ()),
        _ => Ok(()),
    };
    match checked {
        Ok(()) => OutputState::Complete,
        Err(e) => OutputState::Incomplete(e.to_string()),
    }
}

/// A tensor ready to be written: dtype, shape, little-endian bytes.
pub struct RawTensor {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl RawTensor {
    /// From a candle tensor, stored as F32, F16 or BF16.
    pub fn from_tensor(t: &candle_core::Tensor, dtype: candle_core::DType) -> Result<Self> {
        use crate::weights::as_bytes;
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?.to_device(&candle_core::Device::Cpu)?;
        let (dtype, data) = match dtype {
            candle_core::DType::F16 => {
                let v = flat.to_dtype(dtype)?.to_vec1::<half::f16>()?;
                (safetensors::Dtype::F16, as_bytes(&v).to_vec())
            }
            candle_core::DType::BF16 => {
                let v = flat.to_dtype(dtype)?.to_vec1::<half::bf16>()?;
                (safetensors::Dtype::BF16, as_bytes(&v).to_vec())
            }
            _ => {
                let v = flat.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                (safetensors::Dtype::F32, as_bytes(&v).to_vec())
            }
        };
        Ok(RawTensor { dtype, shape, data })
    }

    /// f32 values with a shape.
    pub fn f32(shape: &[usize], v: &[f32]) -> Self {
        use crate::weights::as_bytes;
        RawTensor { dtype: safetensors::Dtype::F32, shape: shape.to_vec(), data: as_bytes(v).to_vec() }
    }

    pub fn scalar_f32(v: f32) -> Self {
        RawTensor { dtype: safetensors::Dtype::F32, shape: vec![], data: v.to_le_bytes().to_vec() }
    }
}

/// One tensor of a streamed safetensors file: name, dtype, shape (its bytes come from the writer's callback).
pub struct StreamedTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
}

/// Write a safetensors file tensor by tensor into `path` (a new file in a folder being assembled: no atomic
/// rename here), so that multi-GB files never sit in memory: the header from names, dtypes and shapes, then
/// `data(i, out)` writes tensor i's little-endian bytes, which must be exactly its size.
pub fn stream_safetensors(
    path: &Path,
    tensors: &[StreamedTensor],
    metadata: &HashMap<String, String>,
    mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings"));
    }
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": format!("{:?}", t.dtype), "shape": t.shape, "data_offsets": [offset, offset + n] }),
        );
        sizes.push(n);
        offset += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let io = |e| Error::write(path, e);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    let mut f = std::io::BufWriter::with_capacity(8 << 20, file);
    f.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&h).map_err(io)?;
    for (i, n) in sizes.into_iter().enumerate() {
        let mut counted = Counted { inner: &mut f, n: 0 };
        data(i, &mut counted)?;
        if counted.n != n {
            return Err(Error::Mismatch(format!(
                "{}: tensor `{}` wrote {} bytes, its shape needs {n}",
                path.display(),
                tensors[i].name,
                counted.n
            )));
        }
    }
    let file = f.into_inner().map_err(|e| Error::write(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

struct Counted<'a, W: Write> {
    inner: &'a mut W,
    n: usize,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Serialize named tensors plus string metadata into a safetensors image.
pub fn safetensors_bytes(tensors: &[(String, RawTensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let meta = if metadata.is_empty() { None } else { Some(metadata) };
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), meta)
        .map_err(|e| Error::Mismatch(format!("cannot serialize safetensors: {e:?}")))
}
