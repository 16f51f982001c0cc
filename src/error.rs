//! The library's error type: every variant carries the facts (file, key, shapes) a user needs to fix the input.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: cannot write: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid safetensors file ({reason})")]
    Header { file: PathBuf, reason: String },
    #[error("{file}: missing tensor `{key}` (expected shape {expected:?}){hint}")]
    Missing { file: PathBuf, key: String, expected: Vec<usize>, hint: String },
    #[error("{file}: tensor `{key}` has shape {found:?}, expected {expected:?}{hint}")]
    Shape { file: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize>, hint: String },
    #[error("{file}: {count} unexpected tensor(s), e.g. `{first}`{hint}")]
    Unexpected { file: PathBuf, count: usize, first: String, hint: String },
    #[error("{file}: tensor `{key}` has dtype {found}, expected {expected}")]
    Dtype { file: PathBuf, key: String, found: String, expected: String },
    /// A file that parses but whose content is wrong (bad JSON, dimensions that disagree, wrong format).
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    /// Dimensions or contents that disagree inside or between model files and requests (a shape, a size, a
    /// missing branch).
    #[error("{0}")]
    Mismatch(String),
    /// Two values that cannot be combined: identities or coefficients of different variants, raw with
    /// normalised coefficients, different token sets. Fix: use values made with the same model and form.
    #[error("{0}")]
    Incompatible(String),
    /// A value the user gave (an option, a number, a name, an index) is out of range or of the wrong kind. Fix: the
    /// message says what was expected.
    #[error("{0}")]
    InvalidValue(String),
    /// A model the command needs was not configured. Fix: give `flag` (or a config file, a ComfyUI tree, --demo).
    #[error("no {what} configured: give {flag} (or use --demo for the tiny demo set)")]
    NotConfigured { what: String, flag: String },
    /// A download failed (network, server, checksum).
    #[error("{0}")]
    Network(String),
    #[error(
        "{path}: already exists; refusing to overwrite it (commands take --force; in a script, give `overwrite: true`)"
    )]
    Exists { path: PathBuf },
    /// The user stopped a long job (Ctrl-C); the session and its values are intact.
    #[error("cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Invalid { file: file.into(), message: message.into() }
    }
    pub fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { file: file.into(), source }
    }

    /// A failure while writing (creating a folder, writing, placing the file): said as such, not as a read.
    pub fn write(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write { file: file.into(), source }
    }
}
