//! LoRA synthesis from coefficients (spec §2.3 steps 4–5): module i owns tokens 8i…8i+7; projection j
//! (q, k, v, out) owns tokens 8i+2j (α → down) and 8i+2j+1 (β → up);
//! `lora_down = (Σₖ αₖ·down_basis[k])ᵀ` [r, in], `lora_up = (Σₖ βₖ·up_basis[k])ᵀ` [out, r] —
//! computed as Σₖ over the K rows of each basis tensor, read once in the file's dtype (`StFile::weighted_rows`:
//! the bases stay f16 in memory and are converted a chunk at a time as they are added up).
use super::modules::{ModuleSpec, Proj};
use crate::error::{Error, Result};
use crate::lora::LoraLayer;
use crate::weights::{Expected, StFile};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Which set of bases: the identity LoRA (`id_*_basis`, rank r) or the Base LoRA (`base_*_basis`, rank r_b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Id,
    Base,
}

impl Branch {
    fn prefix(self) -> &'static str {
        match self {
            Branch::Id => "id",
            Branch::Base => "base",
        }
    }
}

pub struct Bases {
    file: StFile,
    modules: Vec<ModuleSpec>,
    k: usize,
    rank: usize,
    base_rank: Option<usize>,
}

/// `{i}.{to_q|to_k|to_v|to_out}.{id|base}_{down|up}_basis`: the key of one basis tensor.
pub(super) fn key(i: usize, p: Proj, b: Branch, dir: &str) -> String {
    format!("{i}.{}.{}_{dir}_basis", p.attr(), b.prefix())
}

impl Bases {
    /// The strict key set: for every module and projection `{i}.{p}.id_down_basis` [K, in, r] and
    /// `{i}.{p}.id_up_basis` [K, r, out] (+ `base_*` with rank r_b).
    pub fn expected(modules: &[ModuleSpec], k: usize, rank: usize, base_rank: Option<usize>) -> Vec<Expected> {
        let mut e = Vec::new();
        for (i, m) in modules.iter().enumerate() {
            let why = format!(
                "hyper_lora_modules.json entry {i} `{}`: hidden_size {}, cross_attention_dim {}",
                m.name,
                m.hidden_size,
                m.cross_attention_dim.map(|c| c.to_string()).unwrap_or_else(|| "null".into())
            );
            for p in Proj::ALL {
                let (inp, out) = m.dims(p);
                for (b, r) in [(Branch::Id, Some(rank)), (Branch::Base, base_rank)] {
                    if let Some(r) = r {
                        e.push(Expected::new(key(i, p, b, "down"), &[k, inp, r]).because(why.clone()));
                        e.push(Expected::new(key(i, p, b, "up"), &[k, r, out]).because(why.clone()));
                    }
                }
            }
        }
        e
    }

    /// `file` must already have passed the strict check against [`Bases::expected`].
    pub fn new(file: StFile, modules: Vec<ModuleSpec>, k: usize, rank: usize, base_rank: Option<usize>) -> Self {
        Bases { file, modules, k, rank, base_rank }
    }

    pub fn file(&self) -> &StFile {
        &self.file
    }

    /// Bytes the bases of one branch occupy (for bandwidth figures).
    pub fn branch_bytes(&self, b: Branch) -> usize {
        let mut n = 0;
        for i in 0..self.modules.len() {
            for p in Proj::ALL {
                for dir in ["down", "up"] {
                    n += self.file.raw(&key(i, p, b, dir)).map_or(0, |r| r.len());
                }
            }
        }
        n
    }

    /// Σₖ cₖ · basis[k] as [1, in·r] (or [1, r·out]), reading the basis once in its file dtype.
    fn combine(&self, key: &str, c: &[f32]) -> Result<Tensor> {
        let v = self.file.weighted_rows(key, c)?;
        let cols = v.len();
        Ok(Tensor::from_vec(v, (1, cols), &Device::Cpu)?)
    }

    /// (module, projection) of every LoRA layer, in synthesis order (module i owns tokens 8i…8i+7).
    fn layers(&self) -> Vec<(usize, Proj)> {
        (0..self.modules.len()).flat_map(|i| Proj::ALL.map(|p| (i, p))).collect()
    }

    fn rank_of(&self, branch: Branch) -> Result<usize> {
        match branch {
            Branch::Id => Ok(self.rank),
            Branch::Base => {
                self.base_rank.ok_or_else(|| Error::Mismatch("this HyperLoRA variant has no Base-LoRA bases".into()))
            }
        }
    }

    fn check_coeffs(&self, coeffs: &Tensor) -> Result<()> {
        let q = 8 * self.modules.len();
        if coeffs.dims() != [q, self.k] {
            return Err(Error::Mismatch(format!(
                "coefficients have shape {:?}, this variant needs [{q}, {}]",
                coeffs.dims(),
                self.k
            )));
        }
        Ok(())
    }

    /// One LoRA layer per projection (scale 1; the caller applies strength · alpha/rank).
    /// `coeffs`: normalised coefficient tokens [Q, K].
    pub fn synthesize(&self, coeffs: &Tensor, branch: Branch) -> Result<Vec<LoraLayer>> {
        let rank = self.rank_of(branch)?;
        self.check_coeffs(coeffs)?;
        let c = coeffs.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let jobs = self.layers();
        jobs.par_iter()
            .map(|&(i, p)| {
                let m = &self.modules[i];
                let (inp, out) = m.dims(p);
                let t = 8 * i + 2 * p.index();
                let alpha = &c[t * self.k..(t + 1) * self.k];
                let beta = &c[(t + 1) * self.k..(t + 2) * self.k];
                let down = self.combine(&key(i, p, branch, "down"), alpha)?.reshape((inp, rank))?.t()?.contiguous()?;
                let up = self.combine(&key(i, p, branch, "up"), beta)?.reshape((rank, out))?.t()?.contiguous()?;
                Ok(LoraLayer { target: m.proj_target(p), down, up, scale: 1.0 })
            })
            .collect()
    }

    /// The gradient with respect to the coefficient tokens [Q, K] of a loss whose gradients with respect to the
    /// synthesized factors are `grads` (one `(∂down [r, in], ∂up [out, r])` per layer, in `synthesize`'s order). As
    /// `down = (Σₖ αₖ·B_k)ᵀ`, `∂αₖ = ⟨B_k, ∂downᵀ⟩`: one pass over the bases in their file dtype, like synthesis.
    pub fn coefficient_grad(&self, grads: &[(Tensor, Tensor)], branch: Branch) -> Result<Tensor> {
        self.rank_of(branch)?;
        let jobs = self.layers();
        if grads.len() != jobs.len() {
            return Err(Error::Mismatch(format!("{} factor gradients for {} LoRA layers", grads.len(), jobs.len())));
        }
        let rows: Vec<[Vec<f32>; 2]> = jobs
            .par_iter()
            .zip(grads.par_iter())
            .map(|(&(i, p), (gd, gu))| {
                let flat = |g: &Tensor| -> Result<Vec<f32>> {
                    Ok(g.t()?.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?)
                };
                Ok([
                    self.file.row_dots(&key(i, p, branch, "down"), &flat(gd)?)?,
                    self.file.row_dots(&key(i, p, branch, "up"), &flat(gu)?)?,
                ])
            })
            .collect::<Result<_>>()?;
        let v: Vec<f32> = rows.into_iter().flat_map(|[a, b]| a.into_iter().chain(b)).collect();
        Ok(Tensor::from_vec(v, (8 * self.modules.len(), self.k), &Device::Cpu)?)
    }
}
