//! LoRA transactions on the UNet: a `LoraWeights` set is merged into the attention projections as
//! W = W₀ + Σ scale·up·down (f32 sum, cast once). The loaded W₀ is kept, so switching or removing a LoRA restores
//! bit-identical weights; targets whose terms did not change are not touched.
use super::unet::UNet;
use crate::error::Result;
use crate::lora::{LoraLayer, LoraWeights};
use candle_core::DType;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// What a transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Projections whose merged weight was (re)computed.
    pub merged: usize,
    /// Projections put back to their loaded weight.
    pub restored: usize,
    /// Projections left as they were (same terms as before, or no LoRA before and after).
    pub unchanged: usize,
    /// LoRA targets that name no attention projection of this UNet.
    pub unmatched: Vec<String>,
}

fn signature(terms: &[&LoraLayer]) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    for t in terms {
        h.update(t.scale.to_le_bytes());
        for x in [&t.down, &t.up] {
            h.update(format!("{:?}", x.dims()).as_bytes());
            let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            h.update(crate::weights::bytemuck_lite::as_bytes(&v));
        }
    }
    Ok(h.finalize().into())
}

impl UNet {
    /// Make `weights` the UNet's LoRA (replacing whatever was merged before). An empty set removes all LoRAs.
    pub fn set_lora(&mut self, weights: &LoraWeights) -> Result<ApplyReport> {
        let mut by_target: HashMap<&str, Vec<&LoraLayer>> = HashMap::new();
        for l in &weights.layers {
            by_target.entry(l.target.as_str()).or_default().push(l);
        }
        let mut report = ApplyReport::default();
        let mut matched = std::collections::HashSet::new();
        for p in self.projections_mut() {
            match by_target.get(p.target.as_str()) {
                Some(terms) => {
                    matched.insert(p.target.clone());
                    let sig = signature(terms)?;
                    if p.merged == Some(sig) {
                        report.unchanged += 1;
                        continue;
                    }
                    let mut delta = terms[0].delta()?;
                    for t in &terms[1..] {
                        delta = (delta + t.delta()?)?;
                    }
                    p.merge(&delta, sig)?;
                    report.merged += 1;
                }
                None if p.merged.is_some() => {
                    p.restore();
                    report.restored += 1;
                }
                None => report.unchanged += 1,
            }
        }
        report.unmatched = weights.targets().into_iter().filter(|t| !matched.contains(*t)).map(str::to_string).collect();
        Ok(report)
    }

    /// Remove every merged LoRA.
    pub fn clear_lora(&mut self) -> Result<ApplyReport> {
        self.set_lora(&LoraWeights::default())
    }
}
