//! Reading safetensors files: `StFile` (header validated, tensors converted to the dtype asked for), and strict
//! loading (`strict`) the way PyTorch's `load_state_dict` does it: every expected key present with its shape,
//! nothing unexpected, and errors that name the file, the key and both shapes.
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, Metadata, TensorInfo};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

mod strict;
pub use strict::{build_strict, headers_only, is_headers_only, stand_in, Expected, StrictBackend, Transform};

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One safetensors file, memory-mapped, with its header parsed and validated.
pub struct StFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    meta: Metadata,
}

impl StFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = crate::files::open_regular(&path)?;
        // SAFETY: the map is read-only and only read as bytes. It is not safe against another process truncating
        // or replacing the file while it is mapped: the next read of a vanished page raises SIGBUS. Files opened
        // this way are mapped only while loading (their tensors are copied into the model); what stays in use for
        // the session (the HyperLoRA bases) is read into memory with `StFile::read` instead.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::from_bytes(path, Bytes::Mapped(mmap))
    }

    /// Read the whole file into memory: for files used for the whole session (the HyperLoRA bases), which a
    /// memory map would leave exposed to SIGBUS if the file were replaced or truncated meanwhile.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let data = crate::files::read_regular(&path)?;
        Self::from_bytes(path, Bytes::Owned(data))
    }

    /// A file image held in memory (for synthesized models and tests); `path` is used in messages only.
    pub fn from_vec(path: impl Into<PathBuf>, data: Vec<u8>) -> Result<Self> {
        Self::from_bytes(path.into(), Bytes::Owned(data))
    }

    fn from_bytes(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let header_err =
            |e: safetensors::SafeTensorError| Error::Header { file: path.clone(), reason: describe(&e, bytes.len()) };
        // `deserialize` validates offsets against the buffer length (catches truncated downloads).
        safetensors::SafeTensors::deserialize(&bytes).map_err(header_err)?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(header_err)?;
        Ok(StFile { data_start: 8 + n, path, bytes, meta })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> BTreeSet<String> {
        self.meta.tensors().into_keys().collect()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.meta.info(key).is_some()
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        self.meta.metadata().clone().unwrap_or_default()
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.meta.info(key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.info(key).map(|i| i.shape.as_slice())
    }

    /// Shape of a key that must exist; the error names the file and the key.
    pub fn require_shape(&self, key: &str, what: &str) -> Result<&[usize]> {
        self.shape(key).ok_or_else(|| Error::Missing {
            file: self.path.clone(),
            key: key.to_string(),
            expected: vec![],
            hint: format!(" ({what})"),
        })
    }

    pub fn dtype(&self, key: &str) -> Option<StDtype> {
        self.info(key).map(|i| i.dtype)
    }

    /// Raw little-endian bytes of one tensor.
    pub fn raw(&self, key: &str) -> Option<&[u8]> {
        let info = self.info(key)?;
        let (a, b) = info.data_offsets;
        Some(&self.bytes[self.data_start + a..self.data_start + b])
    }

    /// Every tensor is of a float dtype the loaders read (header only; `doctor` runs it as loading does).
    pub fn check_float_dtypes(&self) -> Result<()> {
        for k in self.keys() {
            self.check_dtype(&k)?;
        }
        Ok(())
    }

    pub(crate) fn check_dtype(&self, key: &str) -> Result<StDtype> {
        let dt = self.dtype(key).ok_or_else(|| Error::Missing {
            file: self.path.clone(),
            key: key.into(),
            expected: vec![],
            hint: String::new(),
        })?;
        match dt {
            StDtype::F16 | StDtype::BF16 | StDtype::F32 | StDtype::F64 => Ok(dt),
            other => Err(Error::Dtype {
                file: self.path.clone(),
                key: key.into(),
                found: format!("{other:?}"),
                expected: "F16, BF16, F32 or F64".into(),
            }),
        }
    }

    /// Load one floating-point tensor (F16, BF16 or F32 on disk), converted to `dtype` on `device`.
    pub fn tensor(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let dt = self.check_dtype(key)?;
        let shape = self.shape(key).unwrap_or_default().to_vec();
        let raw = self.raw(key).unwrap_or_default();
        let t = match dt {
            StDtype::F16 => Tensor::from_vec(bytes_to::<half::f16>(raw), shape, &Device::Cpu)?,
            StDtype::BF16 => Tensor::from_vec(bytes_to::<half::bf16>(raw), shape, &Device::Cpu)?,
            StDtype::F64 => Tensor::from_vec(bytes_to::<f64>(raw), shape, &Device::Cpu)?,
            _ => Tensor::from_vec(bytes_to::<f32>(raw), shape, &Device::Cpu)?,
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// One tensor's values as f32 on the CPU, converted straight from the mapped bytes.
    pub fn to_f32_vec(&self, key: &str) -> Result<Vec<f32>> {
        let dt = self.check_dtype(key)?;
        let raw = self.raw(key).unwrap_or_default();
        let mut out = vec![0f32; raw.len() / float_size(dt)];
        convert_to_f32(dt, raw, &mut out);
        Ok(out)
    }

    /// Σᵣ c[r] · row r of the tensor read as [c.len(), cols], in one pass over its bytes in the file dtype: each row
    /// is converted to f32 a chunk at a time (half's F16C conversion for f16) and added into the result, so no f32
    /// copy of the tensor is made — LoRA synthesis reads its f16 bases once, at two bytes a value.
    pub fn weighted_rows(&self, key: &str, c: &[f32]) -> Result<Vec<f32>> {
        let dt = self.check_dtype(key)?;
        let raw = self.raw(key).unwrap_or_default();
        let size = float_size(dt);
        let n = raw.len() / size;
        if c.is_empty() || !n.is_multiple_of(c.len()) {
            return Err(Error::Mismatch(format!(
                "{}: {key} has {n} values, not a whole number of {} rows",
                self.path.display(),
                c.len()
            )));
        }
        let cols = n / c.len();
        let mut out = vec![0f32; cols];
        const CHUNK: usize = 1024;
        let mut buf = [0f32; CHUNK];
        for (r, &w) in c.iter().enumerate() {
            let row = &raw[r * cols * size..(r + 1) * cols * size];
            for (o, bytes) in out.chunks_mut(CHUNK).zip(row.chunks(CHUNK * size)) {
                let x = &mut buf[..o.len()];
                convert_to_f32(dt, bytes, x);
                o.iter_mut().zip(x.iter()).for_each(|(o, x)| *o += w * x);
            }
        }
        Ok(out)
    }

    /// The transpose of [`StFile::weighted_rows`]: ⟨row r, g⟩ for every row r of the tensor read as [rows, g.len()],
    /// in one pass over its bytes in the file dtype (f64 accumulation per row). A gradient with respect to the
    /// weights of `weighted_rows` is this, for the gradient `g` of its result.
    pub fn row_dots(&self, key: &str, g: &[f32]) -> Result<Vec<f32>> {
        let dt = self.check_dtype(key)?;
        let raw = self.raw(key).unwrap_or_default();
        let size = float_size(dt);
        let n = raw.len() / size;
        if g.is_empty() || !n.is_multiple_of(g.len()) {
            return Err(Error::Mismatch(format!(
                "{}: {key} has {n} values, not a whole number of rows of {}",
                self.path.display(),
                g.len()
            )));
        }
        let cols = g.len();
        const CHUNK: usize = 1024;
        let mut buf = [0f32; CHUNK];
        Ok((0..n / cols)
            .map(|r| {
                let row = &raw[r * cols * size..(r + 1) * cols * size];
                let mut acc = 0f64;
                for (gc, bytes) in g.chunks(CHUNK).zip(row.chunks(CHUNK * size)) {
                    let x = &mut buf[..gc.len()];
                    convert_to_f32(dt, bytes, x);
                    acc += gc.iter().zip(x.iter()).map(|(a, b)| a * b).sum::<f32>() as f64;
                }
                acc as f32
            })
            .collect())
    }

    /// An integer tensor (I64 or I32 on disk) as i64 values.
    pub fn to_i64_vec(&self, key: &str) -> Result<Vec<i64>> {
        let raw = self.raw(key).ok_or_else(|| Error::Missing {
            file: self.path.clone(),
            key: key.into(),
            expected: vec![],
            hint: String::new(),
        })?;
        match self.dtype(key) {
            Some(StDtype::I64) => {
                Ok(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
            }
            Some(StDtype::I32) => {
                Ok(raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect())
            }
            other => Err(Error::Dtype {
                file: self.path.clone(),
                key: key.into(),
                found: format!("{other:?}"),
                expected: "I64 or I32".into(),
            }),
        }
    }

    /// PyTorch-style strict check: every expected key present with its shape and a float dtype, no other keys.
    /// `unexpected_hint` is appended to the "unexpected tensors" error (e.g. a likely cause).
    pub fn check_strict(&self, expected: &[Expected], unexpected_hint: &str) -> Result<()> {
        for e in expected {
            match self.shape(&e.key) {
                None => {
                    return Err(Error::Missing {
                        file: self.path.clone(),
                        key: e.key.clone(),
                        expected: e.shape.clone(),
                        hint: e.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default(),
                    })
                }
                Some(found) if found != e.shape.as_slice() => {
                    return Err(Error::Shape {
                        file: self.path.clone(),
                        key: e.key.clone(),
                        expected: e.shape.clone(),
                        found: found.to_vec(),
                        hint: e.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default(),
                    })
                }
                Some(_) => {
                    self.check_dtype(&e.key)?;
                }
            }
        }
        let want: BTreeSet<&str> = expected.iter().map(|e| e.key.as_str()).collect();
        let extra: Vec<String> = self.keys().into_iter().filter(|k| !want.contains(k.as_str())).collect();
        if let Some(first) = extra.first() {
            return Err(Error::Unexpected {
                file: self.path.clone(),
                count: extra.len(),
                first: first.clone(),
                hint: unexpected_hint.to_string(),
            });
        }
        Ok(())
    }

    /// Load a set of tensors as one map (for a `VarBuilder`).
    pub fn load_all(
        &self,
        keys: impl IntoIterator<Item = String>,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        keys.into_iter().map(|k| Ok((k.clone(), self.tensor(&k, dtype, device)?))).collect()
    }

    /// The first float tensor holding a NaN or ±inf, by key (read from the raw bytes in parallel: a 3 GB f16 file
    /// takes a fraction of a second). Integer tensors are skipped.
    pub fn first_non_finite(&self) -> Option<String> {
        use rayon::prelude::*;
        let bad = |raw: &[u8], dt: StDtype| -> bool {
            match dt {
                // f16: exponent bits all ones; bf16: likewise in its 8 exponent bits
                StDtype::F16 => raw
                    .par_chunks(1 << 16)
                    .any(|c| c.chunks_exact(2).any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 == 0x7C00)),
                StDtype::BF16 => raw
                    .par_chunks(1 << 16)
                    .any(|c| c.chunks_exact(2).any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7F80 == 0x7F80)),
                StDtype::F32 => raw
                    .par_chunks(1 << 16)
                    .any(|c| c.chunks_exact(4).any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())),
                StDtype::F64 => {
                    raw.chunks_exact(8).any(|b| !f64::from_le_bytes(b.try_into().unwrap_or([0; 8])).is_finite())
                }
                _ => false,
            }
        };
        self.keys().into_iter().find(|k| match (self.raw(k), self.dtype(k)) {
            (Some(raw), Some(dt)) => bad(raw, dt),
            _ => false,
        })
    }

    /// The tensor data as `fingerprint` and `all_zero` read it: whole up to 64 MiB, else 1024 evenly spaced 4 KiB
    /// samples (cheap on multi-GB files).
    fn data_samples(&self) -> Vec<&[u8]> {
        let data = &self.bytes[self.data_start.min(self.bytes.len())..];
        const WHOLE: usize = 64 << 20;
        if data.len() <= WHOLE {
            return vec![data];
        }
        let (chunk, n) = (4096, 1024);
        let step = (data.len() - chunk) / (n - 1);
        (0..n).map(|i| &data[i * step..i * step + chunk]).collect()
    }

    /// True when the tensor data holds only zero bytes (all of it up to 64 MiB, else the samples of
    /// `data_samples`): a wiped or never-filled checkpoint, which would load and make constant images.
    pub fn all_zero(&self) -> bool {
        self.bytes.len() > self.data_start && self.data_samples().iter().all(|s| s.iter().all(|b| *b == 0))
    }

    /// A content fingerprint that is cheap on multi-GB files: the header, the length and (for large files) 1024
    /// evenly spaced 4 KiB samples of the data; small files are hashed whole.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let bytes: &[u8] = &self.bytes;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes[..self.data_start.min(bytes.len())]);
        for s in self.data_samples() {
            h.update(s);
        }
        h.finalize().into()
    }
}

fn describe(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge => format!("HeaderTooLarge: the header length field is implausible for a {len}-byte file — a corrupt or partial download?"),
        E::HeaderTooSmall => format!("HeaderTooSmall: only {len} bytes"),
        E::MetadataIncompleteBuffer => format!("the tensors' data does not fit in the file's {len} bytes — truncated download?"),
        other => format!("{other:?}"),
    }
}

/// Bytes per value of a float dtype that `check_dtype` lets through.
fn float_size(dt: StDtype) -> usize {
    match dt {
        StDtype::F16 | StDtype::BF16 => 2,
        StDtype::F64 => 8,
        _ => 4,
    }
}

/// Little-endian float bytes of `dt` into `out` (one value per slot): in place when the bytes are aligned for the
/// type (the usual case: safetensors pads its header), value by value when not.
fn convert_to_f32(dt: StDtype, bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match dt {
        StDtype::F16 => match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(out),
            Err(_) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        },
        StDtype::BF16 => match bytemuck::try_cast_slice::<u8, half::bf16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(out),
            Err(_) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        },
        StDtype::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
            }
        }
        _ => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(f) => out.copy_from_slice(f),
            Err(_) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
        },
    }
}

/// Reinterpret little-endian bytes as values (copying, so alignment does not matter).
pub fn bytes_to<T: bytemuck::Pod>(raw: &[u8]) -> Vec<T> {
    bytemuck::pod_collect_to_vec(&raw[..raw.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>()])
}

/// Values as their bytes.
pub fn as_bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::output::{safetensors_bytes, RawTensor};

    /// `weighted_rows` equals the sum of the rows read as f32, for every float dtype on disk, and the value-by-value
    /// conversion of misaligned bytes equals the in-place one.
    #[test]
    fn weighted_rows_sums_rows_in_every_dtype() {
        let (k, cols) = (5, 2500); // cols over two conversion chunks
        let vals: Vec<f32> = (0..k * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 256.0).collect();
        let c = [0.5f32, -1.25, 2.0, 0.0, 3.5];
        let bytes = |dt: safetensors::Dtype| -> Vec<u8> {
            match dt {
                safetensors::Dtype::F16 => vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                safetensors::Dtype::BF16 => vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
                safetensors::Dtype::F64 => vals.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
                _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        };
        for dt in [safetensors::Dtype::F16, safetensors::Dtype::BF16, safetensors::Dtype::F32, safetensors::Dtype::F64]
        {
            let t = RawTensor { dtype: dt, shape: vec![k, cols], data: bytes(dt) };
            let f = StFile::from_vec("t.safetensors", safetensors_bytes(&[("b".into(), t)], HashMap::new()).unwrap())
                .unwrap();
            let rows = f.to_f32_vec("b").unwrap();
            let want: Vec<f32> = (0..cols).map(|j| (0..k).map(|r| c[r] * rows[r * cols + j]).sum()).collect();
            let got = f.weighted_rows("b", &c).unwrap();
            assert_eq!(got.len(), cols);
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{dt:?}[{j}]: {g} vs {w}");
            }
            // the same bytes one byte off their alignment
            let raw = bytes(dt);
            let mut shifted = vec![0u8; raw.len() + 1];
            shifted[1..].copy_from_slice(&raw);
            let n = 300;
            let size = raw.len() / vals.len();
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            convert_to_f32(dt, &raw[..n * size], &mut a);
            convert_to_f32(dt, &shifted[1..1 + n * size], &mut b);
            assert_eq!(a, b, "{dt:?}");
            assert_eq!(a, rows[..n], "{dt:?}");
        }
        let f = StFile::from_vec(
            "t.safetensors",
            safetensors_bytes(&[("b".into(), RawTensor::f32(&[7], &[1.0; 7]))], HashMap::new()).unwrap(),
        )
        .unwrap();
        assert!(f.weighted_rows("b", &c).unwrap_err().to_string().contains("not a whole number of 5 rows"));
    }
}
