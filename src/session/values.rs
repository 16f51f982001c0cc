//! Values as scripts, the TUI and the CLI use them: identity files, identity algebra, LoRA mix terms. Numbers
//! that enter here are checked (finite, in range) so that no NaN or infinity reaches a file or an image.
use super::*;

/// A number a user gave: finite and at most 1e6 in size.
pub fn finite(v: f64, what: &str) -> Result<f64> {
    if !v.is_finite() || v.abs() > 1e6 {
        return Err(Error::InvalidValue(format!("{what} is {v}: expected a finite number of at most 1e6 in size")));
    }
    Ok(v)
}

impl Session {
    /// Read an identity file; it must belong to the loaded HyperLoRA variant.
    pub fn load_identity(&mut self, path: &Path) -> Result<Identity> {
        let id = Identity::load(path)?;
        self.check_identity(&id)?;
        Ok(id)
    }

    /// Write an identity (never over an existing file unless `overwrite`).
    pub fn save_identity(&self, id: &Identity, path: &Path, overwrite: bool) -> Result<()> {
        id.save(path, overwrite)
    }

    /// The (weighted) mean of identities, as if their photos had been encoded together.
    pub fn mean(&self, ids: &[Identity], weights: Option<&[f64]>) -> Result<Identity> {
        let refs: Vec<&Identity> = ids.iter().collect();
        match weights {
            None => Identity::mean(&refs),
            Some(w) => {
                for (i, v) in w.iter().enumerate() {
                    finite(*v, &format!("mean weight {i}"))?;
                }
                Identity::weighted_mean(&refs, w)
            }
        }
    }

    /// (1 − t)·a + t·b.
    pub fn mix(&self, a: &Identity, b: &Identity, t: f64) -> Result<Identity> {
        a.mix(b, finite(t, "mix t")?)
    }

    pub fn similarity(&self, a: &Identity, b: &Identity) -> Result<f64> {
        a.similarity(b)
    }

    pub fn add(&self, a: &Identity, b: &Identity) -> Result<Identity> {
        a.add(b)
    }

    pub fn sub(&self, a: &Identity, b: &Identity) -> Result<Identity> {
        a.sub(b)
    }

    pub fn scale(&self, a: &Identity, k: f64) -> Result<Identity> {
        a.scale(finite(k, "identity scale")?)
    }

    /// An identity's LoRA at `weight`, with its Base LoRA at `base_weight` (a separate term).
    pub fn lora(&self, id: &Identity, weight: f64, base_weight: f64) -> Result<LoraMix> {
        Ok(LoraMix::lora_with_base(id, finite(weight, "lora weight")?, finite(base_weight, "base_weight")?))
    }

    /// lora(b) − lora(a): the direction from a to b.
    pub fn slider(&self, a: &Identity, b: &Identity) -> Result<LoraMix> {
        Ok(LoraMix::slider(a, b))
    }

    pub fn mix_add(&self, a: &LoraMix, b: &LoraMix) -> LoraMix {
        a.add(b)
    }

    pub fn mix_sub(&self, a: &LoraMix, b: &LoraMix) -> LoraMix {
        a.sub(b)
    }

    pub fn mix_scale(&self, a: &LoraMix, k: f64) -> Result<LoraMix> {
        Ok(a.scale(finite(k, "lora mix scale")?))
    }
}
