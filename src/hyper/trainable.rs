//! The hypernetwork in training mode: the same modules (`IdProjector`, `Resampler`) built from variables instead
//! of constants, and LoRA synthesis as candle ops over the bases held as variables, so that a backward pass
//! reaches every weight of both branches and the coefficients. Variables are f32 master copies, keyed as in the
//! variant's files with the file as prefix: `id_projector.0.weight`, `resampler.layers.0.attn1.to_q.weight`,
//! `base_resampler.…`, `bases.0.to_q.id_down_basis` (the gradients of `hyperlora train step` carry the same names
//! behind `grad.`).
use super::id_projector::IdProjector;
use super::modules::{ModuleSpec, Proj};
use super::resampler::Resampler;
use super::synth::{key, Bases, Branch};
use super::{HyperLora, BASE_RESAMPLER_FILE, ID_PROJECTOR_FILE, RESAMPLER_FILE};
use crate::error::{Error, Result};
use crate::lora::LoraLayer;
use crate::weights::{Expected, StFile};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use std::collections::HashMap;

/// The file-name prefix of each group of variables.
pub const ID_PROJECTOR: &str = "id_projector";
pub const RESAMPLER: &str = "resampler";
pub const BASE_RESAMPLER: &str = "base_resampler";
pub const BASES: &str = "bases";

pub struct Trainable {
    /// Every variable, `group.key` → Var, in the files' key order.
    vars: Vec<(String, Var)>,
    id_projector: IdProjector,
    resampler: Resampler,
    base_resampler: Option<Resampler>,
    bases: HashMap<String, Tensor>,
    modules: Vec<ModuleSpec>,
    k: usize,
    rank: usize,
    base_rank: Option<usize>,
    device: Device,
}

/// Which weights get a variable (and so a gradient): the others are constants, which a backward pass skips.
pub type Selects<'a> = &'a dyn Fn(&str) -> bool;

/// The expected keys of one file in f32 on `device`: a variable (pushed to `out` as `group.key`) where `selects`
/// says so, a constant elsewhere.
fn tensors_of(
    file: &StFile,
    expected: &[Expected],
    group: &str,
    device: &Device,
    selects: Selects,
    out: &mut Vec<(String, Var)>,
) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    for e in expected {
        let t = file.tensor(&e.key, DType::F32, device)?;
        let name = format!("{group}.{}", e.key);
        if selects(&name) {
            let v = Var::from_tensor(&t)?;
            map.insert(e.key.clone(), v.as_tensor().clone());
            out.push((name, v));
        } else {
            map.insert(e.key.clone(), t);
        }
    }
    Ok(map)
}

/// `tensors_of` one file, checked strictly first, as a VarBuilder for its module.
fn vars_of(
    file: &StFile,
    expected: &[Expected],
    group: &str,
    device: &Device,
    selects: Selects,
    out: &mut Vec<(String, Var)>,
) -> Result<VarBuilder<'static>> {
    file.check_strict(expected, "")?;
    let map = tensors_of(file, expected, group, device, selects, out)?;
    Ok(VarBuilder::from_tensors(map, DType::F32, device))
}

impl HyperLora {
    /// Every weight of this variant as an f32 variable on `device`, in modules that compute with them.
    pub fn trainable(&self, device: &Device) -> Result<Trainable> {
        self.trainable_with(device, &|_| true)
    }

    /// The variant's weights in f32 on `device`, as variables where `selects(group.key)` says so and as constants
    /// elsewhere (a backward pass computes no gradient for those).
    pub fn trainable_with(&self, device: &Device, selects: Selects) -> Result<Trainable> {
        let mut vars = Vec::new();
        let build = |e: candle_core::Error, f: &StFile| Error::invalid(f.path(), format!("cannot build: {e}"));
        let f = StFile::open(self.dir.join(ID_PROJECTOR_FILE))?;
        let vb = vars_of(&f, &IdProjector::expected(&self.config), ID_PROJECTOR, device, selects, &mut vars)?;
        let id_projector = IdProjector::new(&self.config, vb).map_err(|e| build(e, &f))?;
        let f = StFile::open(self.dir.join(RESAMPLER_FILE))?;
        let vb = vars_of(&f, &Resampler::expected(&self.config.resampler), RESAMPLER, device, selects, &mut vars)?;
        let resampler = Resampler::new(&self.config.resampler, vb).map_err(|e| build(e, &f))?;
        let base_resampler = match &self.base_resampler_config {
            Some(c) => {
                let f = StFile::open(self.dir.join(BASE_RESAMPLER_FILE))?;
                let vb = vars_of(&f, &Resampler::expected(c), BASE_RESAMPLER, device, selects, &mut vars)?;
                Some(Resampler::new(c, vb).map_err(|e| build(e, &f))?)
            }
            None => None,
        };
        let (k, rank, base_rank) = (self.config.hyper_dim, self.config.lora_rank, self.config.base_lora_rank);
        let expected = Bases::expected(&self.modules, k, rank, base_rank);
        let bases = tensors_of(self.bases.file(), &expected, BASES, device, selects, &mut vars)?;
        Ok(Trainable {
            vars,
            id_projector,
            resampler,
            base_resampler,
            bases,
            modules: self.modules.clone(),
            k,
            rank,
            base_rank,
            device: device.clone(),
        })
    }
}

impl Trainable {
    /// Every variable with its name (`group.key`), in file order (only the selected ones: `trainable_with`).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }
    pub fn has_base(&self) -> bool {
        self.base_resampler.is_some()
    }

    /// Raw coefficient tokens [N, Q, K] of the ID branch from ArcFace embeddings [N, E] and CLIP features [N, *, W].
    pub fn raw_id(&self, arcface: &Tensor, clip: &Tensor) -> Result<Tensor> {
        let tokens = self.id_projector.forward(&arcface.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        let clip = clip.to_dtype(DType::F32)?.to_device(&self.device)?;
        Ok(self.resampler.forward(&tokens, Some(&clip))?)
    }

    /// Raw coefficient tokens [M, Q, K] of the Base branch from Base-condition CLIP features.
    pub fn raw_base(&self, clip_base: &Tensor) -> Result<Tensor> {
        let br =
            self.base_resampler.as_ref().ok_or_else(|| Error::Mismatch("this variant has no Base branch".into()))?;
        Ok(br.forward(&clip_base.to_dtype(DType::F32)?.to_device(&self.device)?, None)?)
    }

    /// LoRA factors (scale 1) from normalised coefficient tokens [Q, K] as candle ops over the bases:
    /// `down = (α·B_down)ᵀ`, `up = (β·B_up)ᵀ` — the same numbers as `Bases::synthesize`, differentiable in both.
    pub fn factors(&self, coeffs: &Tensor, branch: Branch) -> Result<Vec<LoraLayer>> {
        let rank = match branch {
            Branch::Id => self.rank,
            Branch::Base => self.base_rank.ok_or_else(|| Error::Mismatch("no Base bases".into()))?,
        };
        if coeffs.dims() != [8 * self.modules.len(), self.k] {
            return Err(Error::Mismatch(format!(
                "coefficients {:?}, expected [{}, {}]",
                coeffs.dims(),
                8 * self.modules.len(),
                self.k
            )));
        }
        let mut out = Vec::with_capacity(4 * self.modules.len());
        for (i, m) in self.modules.iter().enumerate() {
            for p in Proj::ALL {
                let (inp, o) = m.dims(p);
                let t = 8 * i + 2 * p.index();
                let basis = |dir: &str| -> Result<Tensor> {
                    let key = key(i, p, branch, dir);
                    let t = self.bases.get(&key).ok_or_else(|| Error::Mismatch(format!("no basis {key}")))?;
                    Ok(t.flatten_from(1)?)
                };
                let alpha = coeffs.narrow(0, t, 1)?;
                let beta = coeffs.narrow(0, t + 1, 1)?;
                let down = alpha.matmul(&basis("down")?)?.reshape((inp, rank))?.t()?;
                let up = beta.matmul(&basis("up")?)?.reshape((rank, o))?.t()?;
                out.push(LoraLayer { target: m.proj_target(p), down, up, scale: 1.0 });
            }
        }
        Ok(out)
    }
}
