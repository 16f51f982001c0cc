//! An identity library: a folder of saved identities indexed by name (`index.json`: photos, variant, hash, date,
//! file, storage dtype). Every write is atomic (a temporary file renamed into place): the identity file is
//! written before the index names it, and the index forgets a name before its file is deleted, so a crash at any
//! point leaves a valid index (at worst an orphan file, which the next save of that name replaces).
use crate::error::{Error, Result};
use crate::identity::{Identity, Variant};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const INDEX: &str = "index.json";
const FORMAT: &str = "hyperlora.library";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub file: String,
    pub hash: String,
    pub photos: usize,
    pub sources: Vec<String>,
    pub variant: Variant,
    /// Seconds since the Unix epoch.
    pub saved: u64,
    /// `f32` or `f16`.
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    format: String,
    version: u32,
    /// The variant every identity here belongs to (set by the first save).
    variant: Option<Variant>,
    entries: BTreeMap<String, Entry>,
}

/// A library folder.
#[derive(Debug, Clone)]
pub struct Library {
    dir: PathBuf,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidValue(format!(
            "library name `{name}`: expected 1–128 letters, digits, `_`, `-` or `.` (not starting with `.`)"
        )))
    }
}

impl Library {
    /// Open (or start) the library in `dir`; the folder is created on the first save.
    pub fn open(dir: &Path) -> Result<Library> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::invalid(dir, "not a folder (a library is a folder of identities with an index.json)"));
        }
        let lib = Library { dir: dir.to_path_buf() };
        lib.index()?;
        Ok(lib)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self) -> Result<Index> {
        let p = self.dir.join(INDEX);
        if !p.exists() {
            return Ok(Index { format: FORMAT.into(), version: 1, variant: None, entries: BTreeMap::new() });
        }
        // a regular file only (a FIFO would block): one open that refuses anything else
        let bytes = crate::files::read_regular(&p)?;
        let i: Index =
            serde_json::from_slice(&bytes).map_err(|e| Error::invalid(&p, format!("not a library index: {e}")))?;
        if i.format != FORMAT {
            return Err(Error::invalid(&p, format!("format `{}`, expected `{FORMAT}`", i.format)));
        }
        // a library touches only its own folder: every entry is a plain file name in it
        for (name, e) in &i.entries {
            if !is_plain_file_name(&e.file) {
                return Err(Error::invalid(
                    &p,
                    format!("entry `{name}` names the file {:?}, which is not a file name inside the library (a path with / or .., or absolute): refusing to use it", e.file),
                ));
            }
        }
        Ok(i)
    }

    fn write_index(&self, i: &Index) -> Result<()> {
        debug_assert!(i.entries.values().all(|e| is_plain_file_name(&e.file)));
        let text = serde_json::to_string_pretty(i).map_err(|e| Error::InvalidValue(format!("library index: {e}")))?;
        crate::files::output::write_file(&self.dir.join(INDEX), text.as_bytes(), true)
    }

    /// The variant of the identities here, if any was saved.
    pub fn variant(&self) -> Result<Option<Variant>> {
        Ok(self.index()?.variant)
    }

    /// Save `id` under `name` (stored as f32 or f16). An existing name is replaced only with `overwrite`; an
    /// identity of another variant than the library's is refused.
    pub fn save(&self, name: &str, id: &Identity, dtype: DType, overwrite: bool) -> Result<Entry> {
        check_name(name)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        // read, change and write the index under the library's lock: two processes saving at once both keep
        // their names (the second reads what the first wrote)
        let _lock = self.lock()?;
        let mut index = self.index()?;
        if let Some(v) = &index.variant {
            if v.hash != id.variant().hash {
                return Err(Error::Incompatible(format!(
                    "library {}: holds identities of variant {} ({}), this identity is of {} ({})",
                    self.dir.display(),
                    v.label,
                    crate::files::provenance::short(&v.hash),
                    id.variant().label,
                    crate::files::provenance::short(&id.variant().hash)
                )));
            }
        }
        if index.entries.contains_key(name) && !overwrite {
            return Err(Error::InvalidValue(format!(
                "library {}: `{name}` already exists; save with overwrite: true to replace it",
                self.dir.display()
            )));
        }
        let dtype_name = match dtype {
            DType::F16 => "f16",
            DType::F32 => "f32",
            d => return Err(Error::InvalidValue(format!("library: store identities as f32 or f16, not {d:?}"))),
        };
        let file = format!("{name}.id.safetensors");
        id.save_as(&self.dir.join(&file), true, dtype)?;
        let entry = Entry {
            file,
            hash: id.hash(),
            photos: id.photos(),
            sources: id.sources().iter().map(|s| s.label.clone()).collect(),
            variant: id.variant().clone(),
            saved: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            dtype: dtype_name.into(),
        };
        index.variant.get_or_insert_with(|| id.variant().clone());
        index.entries.insert(name.to_string(), entry.clone());
        self.write_index(&index)?;
        Ok(entry)
    }

    /// The identity saved as `name`.
    pub fn get(&self, name: &str) -> Result<Identity> {
        let index = self.index()?;
        let e = index.entries.get(name).ok_or_else(|| self.unknown(name, &index))?;
        Identity::load(&self.dir.join(&e.file))
    }

    /// Names and entries, sorted by name (from the index alone: no identity file is read).
    pub fn list(&self) -> Result<Vec<(String, Entry)>> {
        Ok(self.index()?.entries.into_iter().collect())
    }

    /// Forget `name` and delete its file.
    pub fn remove(&self, name: &str) -> Result<Entry> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let e = index.entries.remove(name).ok_or_else(|| self.unknown(name, &index))?;
        if index.entries.is_empty() {
            index.variant = None;
        }
        self.write_index(&index)?;
        let f = self.dir.join(&e.file);
        std::fs::remove_file(&f).map_err(|err| Error::io(&f, err))?;
        Ok(e)
    }

    /// The library's advisory lock (`flock` on `index.lock`), held until the guard is dropped.
    fn lock(&self) -> Result<IndexLock> {
        let p = self.dir.join("index.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; flock has no other precondition
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(&p, std::io::Error::last_os_error()));
            }
        }
        Ok(IndexLock(f))
    }

    fn unknown(&self, name: &str, index: &Index) -> Error {
        let names: Vec<&String> = index.entries.keys().take(8).collect();
        Error::InvalidValue(format!(
            "library {}: no identity `{name}` (it holds {}{names:?})",
            self.dir.display(),
            if index.entries.len() > 8 { "e.g. " } else { "" }
        ))
    }
}

/// Held while the index is read, changed and written; the lock goes with the file descriptor.
struct IndexLock(#[allow(dead_code)] std::fs::File);

/// One normal path component (`me.safetensors`): no separator, no `.`/`..`, not absolute, not empty.
fn is_plain_file_name(f: &str) -> bool {
    let mut parts = std::path::Path::new(f).components();
    matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) && !f.contains(['/', '\\'])
}
