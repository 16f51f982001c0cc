//! Identities from the hypernetwork: `HyperLora` gives coefficient tokens (`fused`, `bases`); this room makes them
//! an `Identity`, checks that an identity belongs to the loaded variant, and synthesizes an identity's LoRA — so
//! that `hyper/` never knows identities (the arrow runs identity → hyper).
use super::Identity;
use crate::encode::features::FeatureSet;
use crate::error::{Error, Result};
use crate::hyper::synth::Branch;
use crate::hyper::{HyperLora, BASE_RESAMPLER_FILE};
use crate::lora::LoraWeights;

impl HyperLora {
    /// Fuse every image of the feature set into one identity (mean of raw outputs over images).
    pub fn identity(&self, f: &FeatureSet) -> Result<Identity> {
        let (raw, base) = self.fused(f)?;
        Identity::new(raw, f.arcface.dim(0)?, base, f.sources.clone(), self.variant().clone())
    }

    /// An identity must come from this variant.
    pub fn check_identity(&self, id: &Identity) -> Result<()> {
        if id.variant().hash != self.variant().hash {
            return Err(Error::Incompatible(format!(
                "identity {} was made with HyperLoRA variant `{}` ({}), but the loaded variant is `{}` ({}); re-create it from its photos with this variant",
                id.short_hash(),
                id.variant().label,
                crate::files::provenance::short(&id.variant().hash),
                self.variant().label,
                crate::files::provenance::short(&self.variant().hash)
            )));
        }
        let q = self.config().resampler.num_queries;
        if id.dims() != (q, self.config().hyper_dim) {
            return Err(Error::Mismatch(format!(
                "identity has {:?} coefficients, this variant needs [{q}, {}]",
                id.dims(),
                self.config().hyper_dim
            )));
        }
        Ok(())
    }

    /// The identity's LoRA factors (scale 1) for one branch.
    pub fn synthesize(&self, id: &Identity, branch: Branch) -> Result<LoraWeights> {
        self.check_identity(id)?;
        let coeffs = match branch {
            Branch::Id => id.coefficients()?,
            Branch::Base => {
                if !self.has_base() {
                    return Err(Error::Mismatch(format!(
                        "a Base weight needs the Base branch, but {} has no {BASE_RESAMPLER_FILE}",
                        self.dir().display()
                    )));
                }
                id.base_coefficients()?.ok_or_else(|| {
                    Error::Mismatch(format!(
                        "identity {} has no Base coefficients (it was made without Base-condition images)",
                        id.short_hash()
                    ))
                })?
            }
        };
        Ok(LoraWeights { layers: self.bases().synthesize(&coeffs, branch)? })
    }
}
