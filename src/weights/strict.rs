//! Strict loading: a `VarBuilder` backend that records what a model asks for and reports missing, mis-shaped
//! and unused keys; `Transform` says how a stored tensor becomes the model's (squeezed, chunked, transposed).
use super::StFile;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;

/// A tensor the loader expects: its key, its shape and, for error messages, where that shape comes from.
#[derive(Debug, Clone)]
pub struct Expected {
    pub key: String,
    pub shape: Vec<usize>,
    pub why: Option<String>,
}

impl Expected {
    pub fn new(key: impl Into<String>, shape: &[usize]) -> Self {
        Expected { key: key.into(), shape: shape.to_vec(), why: None }
    }
    pub fn because(mut self, why: impl Into<String>) -> Self {
        self.why = Some(why.into());
        self
    }
}

/// How a file tensor becomes the model's tensor (single-file checkpoints store some differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Same,
    /// A 1×1 conv [O, I, 1, 1] used as a Linear [O, I].
    Squeeze1x1,
    /// Part `index` of `of` equal slices along axis 0 (OpenCLIP's fused q/k/v `in_proj`).
    Chunk {
        index: usize,
        of: usize,
    },
    /// A matrix stored transposed (OpenCLIP's `text_projection`, used as x @ P).
    Transpose,
}

impl Transform {
    /// The model-side shape of a file tensor of shape `s`.
    pub fn shape(&self, s: &[usize]) -> Vec<usize> {
        match self {
            Transform::Same => s.to_vec(),
            Transform::Squeeze1x1 if s.len() == 4 && s[2] == 1 && s[3] == 1 => s[..2].to_vec(),
            Transform::Squeeze1x1 => s.to_vec(),
            Transform::Chunk { of, .. } => {
                let mut v = s.to_vec();
                if let Some(first) = v.first_mut() {
                    *first /= of;
                }
                v
            }
            Transform::Transpose if s.len() == 2 => vec![s[1], s[0]],
            Transform::Transpose => s.to_vec(),
        }
    }
    pub fn apply(&self, t: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Transform::Same => Ok(t),
            Transform::Squeeze1x1 => {
                let d = t.dims().to_vec();
                if d.len() == 4 {
                    t.reshape((d[0], d[1]))
                } else {
                    Ok(t)
                }
            }
            Transform::Chunk { index, of } => {
                let n = t.dim(0)? / of;
                t.narrow(0, index * n, n)?.contiguous()
            }
            Transform::Transpose => t.t()?.contiguous(),
        }
    }
}

thread_local! {
    static HEADERS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` (a loader) with every strict build on this thread checking keys, shapes and dtypes from the headers
/// alone: the model is built on zero-stride tensors of the right shapes (one element each), so `doctor` runs the
/// loaders' own checks — and says what they say — without reading or holding the weights.
pub fn headers_only<T>(f: impl FnOnce() -> T) -> T {
    let before = HEADERS_ONLY.with(|h| h.replace(true));
    let out = f();
    HEADERS_ONLY.with(|h| h.set(before));
    out
}

/// Whether this thread runs a loader for `headers_only` (loaders that read outside `build_strict` ask).
pub fn is_headers_only() -> bool {
    HEADERS_ONLY.with(|h| h.get())
}

/// A stand-in of `shape` that holds one element (`headers_only`).
pub fn stand_in(shape: &[usize], dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

/// A `VarBuilder` backend over one file that records every key a model asks for, so that after building the model
/// a missing key, a wrong shape (with both shapes) or an unused key is reported like PyTorch's strict loading.
/// `rename` maps the model's (diffusers) key to the file's key, for checkpoints with another layout.
pub struct StrictBackend {
    file: std::sync::Arc<StFile>,
    rename: Box<dyn Fn(&str) -> (String, Transform) + Send + Sync>,
    seen: std::sync::Mutex<BTreeSet<String>>,
    first_error: std::sync::Mutex<Option<Error>>,
    headers_only: bool,
}

impl StrictBackend {
    fn fail(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        let mut slot = self.first_error.lock().expect("lock");
        if slot.is_none() {
            *slot = Some(e);
        }
        candle_core::Error::Msg(msg)
    }
}

impl candle_nn::var_builder::SimpleBackend for StrictBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (key, tf) = (self.rename)(name);
        self.seen.lock().expect("lock").insert(key.clone());
        let hint = if key != name { format!(" (model key `{name}`)") } else { String::new() };
        match self.file.shape(&key).map(|f| (f.to_vec(), tf.shape(f))) {
            None => {
                Err(self.fail(Error::Missing { file: self.file.path.clone(), key, expected: s.dims().to_vec(), hint }))
            }
            Some((found, model)) if model != s.dims() => Err(self.fail(Error::Shape {
                file: self.file.path.clone(),
                key,
                expected: s.dims().to_vec(),
                found,
                hint,
            })),
            Some(_) if self.headers_only => {
                self.file.check_dtype(&key).map_err(|e| self.fail(e))?;
                stand_in(s.dims(), dtype, dev)
            }
            Some(_) => {
                let t = self.file.tensor(&key, dtype, dev).map_err(|e| self.fail(e))?;
                tf.apply(t)
            }
        }
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (key, tf) = (self.rename)(name);
        self.seen.lock().expect("lock").insert(key.clone());
        if self.headers_only {
            let shape = self.file.shape(&key).map(|f| tf.shape(f));
            let shape = shape.ok_or_else(|| {
                self.fail(Error::Missing {
                    file: self.file.path.clone(),
                    key: key.clone(),
                    expected: vec![],
                    hint: String::new(),
                })
            })?;
            self.file.check_dtype(&key).map_err(|e| self.fail(e))?;
            return stand_in(&shape, dtype, dev);
        }
        let t = self.file.tensor(&key, dtype, dev).map_err(|e| self.fail(e))?;
        tf.apply(t)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.file.contains(&(self.rename)(name).0)
    }
}

/// Build a model strictly from `file`. `owned` selects the file keys this model must consume (a single-file
/// checkpoint holds several models); any of them left unused is an "unexpected tensor" error.
pub fn build_strict<T>(
    file: std::sync::Arc<StFile>,
    dtype: DType,
    device: &Device,
    rename: impl Fn(&str) -> (String, Transform) + Send + Sync + 'static,
    owned: impl Fn(&str) -> bool,
    build: impl FnOnce(candle_nn::VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let backend = std::sync::Arc::new(StrictBackend {
        file: file.clone(),
        rename: Box::new(rename),
        seen: Default::default(),
        first_error: Default::default(),
        headers_only: HEADERS_ONLY.with(|h| h.get()),
    });
    struct Shared(std::sync::Arc<StrictBackend>);
    impl candle_nn::var_builder::SimpleBackend for Shared {
        fn get(
            &self,
            s: candle_core::Shape,
            n: &str,
            h: candle_nn::Init,
            d: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    if file.all_zero() {
        return Err(Error::invalid(
            file.path(),
            "every weight in it is zero (a wiped or never-written file): it would load and make constant images",
        ));
    }
    let vb = candle_nn::VarBuilder::from_backend(Box::new(Shared(backend.clone())), dtype, device.clone());
    let model = match build(vb) {
        Ok(m) => m,
        Err(e) => {
            return Err(backend
                .first_error
                .lock()
                .expect("lock")
                .take()
                .unwrap_or_else(|| Error::invalid(file.path(), format!("cannot build the model: {e}"))))
        }
    };
    let seen = backend.seen.lock().expect("lock");
    let extra: Vec<String> = file.keys().into_iter().filter(|k| owned(k) && !seen.contains(k)).collect();
    if let Some(first) = extra.first() {
        return Err(Error::Unexpected {
            file: file.path().to_path_buf(),
            count: extra.len(),
            first: first.clone(),
            hint: String::new(),
        });
    }
    Ok(model)
}
