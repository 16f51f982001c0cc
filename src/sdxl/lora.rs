//! LoRA transactions on the UNet: a `LoraWeights` set is merged into the attention projections as
//! W = W₀ + Σ scale·up·down (f32 sum, cast once). The loaded W₀ is kept, so switching or removing a LoRA restores
//! bit-identical weights; targets whose terms did not change are not touched.
use super::single_file::{ldm_module_path, UnetLayout};
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
            h.update(crate::weights::as_bytes(&v));
        }
    }
    Ok(h.finalize().into())
}

impl UNet {
    /// The terms of `weights` grouped by this UNet's projection path, and the targets that name none.
    fn terms_by_target<'a>(&mut self, weights: &'a LoraWeights) -> (HashMap<String, Vec<&'a LoraLayer>>, Vec<String>) {
        // LoRA targets may use diffusers paths or LDM/SGM paths (kohya LoRAs trained on single files): one lookup
        // from both spellings of this UNet's own projection names.
        let layout = UnetLayout {
            layers_per_block: self.config().layers_per_block,
            up_has_attention: self.config().up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
        };
        let mut alias: HashMap<String, String> = HashMap::new();
        for p in self.projections_mut() {
            if let Some(ldm) = ldm_module_path(&p.target, &layout) {
                alias.insert(ldm, p.target.clone());
            }
            alias.insert(p.target.clone(), p.target.clone());
        }
        let mut by_target: HashMap<String, Vec<&LoraLayer>> = HashMap::new();
        let mut unknown: Vec<String> = Vec::new();
        for l in &weights.layers {
            match alias.get(&l.target) {
                Some(t) => by_target.entry(t.clone()).or_default().push(l),
                None if !unknown.contains(&l.target) => unknown.push(l.target.clone()),
                None => {}
            }
        }
        (by_target, unknown)
    }

    /// Make `weights` the UNet's LoRA (replacing whatever was merged before). An empty set removes all LoRAs.
    pub fn set_lora(&mut self, weights: &LoraWeights) -> Result<ApplyReport> {
        let (by_target, unknown) = self.terms_by_target(weights);
        let mut report = ApplyReport::default();
        for p in self.projections_mut() {
            match by_target.get(p.target.as_str()) {
                Some(terms) => {
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
        report.unmatched = unknown;
        Ok(report)
    }

    /// Training mode: carry `weights` as functions of their factors (`W·x + Σ scale·up·(down·x)`, never merged), so
    /// that a backward pass from the UNet's output reaches `down` and `up` — Vars, or tensors computed from Vars.
    /// Replaces the functional terms set before; an empty set removes them. Merged LoRAs stay as they are (clear
    /// them first to train against the checkpoint's own weights). The report counts projections given terms as
    /// `merged`, those whose terms were taken away as `restored`, and names targets this UNet lacks.
    pub fn set_functional_lora(&mut self, weights: &LoraWeights) -> Result<ApplyReport> {
        let (by_target, unknown) = self.terms_by_target(weights);
        let mut report = ApplyReport::default();
        for p in self.projections_mut() {
            match by_target.get(p.target.as_str()) {
                Some(terms) => {
                    for t in terms {
                        let (r, inp) = t.down.dims2()?;
                        let (out, r2) = t.up.dims2()?;
                        let (o, i) = p.original.dims2()?;
                        if r != r2 || inp != i || out != o {
                            return Err(crate::error::Error::Mismatch(format!(
                                "{}: LoRA factors up {:?} · down {:?} do not make its [{o}, {i}] weight",
                                p.target,
                                t.up.dims(),
                                t.down.dims()
                            )));
                        }
                    }
                    p.functional = terms.iter().map(|t| (t.down.clone(), t.up.clone(), t.scale)).collect();
                    report.merged += 1;
                }
                None => {
                    if !p.functional.is_empty() {
                        report.restored += 1;
                    }
                    p.functional.clear();
                }
            }
        }
        report.unmatched = unknown;
        Ok(report)
    }

    /// Remove every merged LoRA.
    pub fn clear_lora(&mut self) -> Result<ApplyReport> {
        self.set_lora(&LoraWeights::default())
    }
}
