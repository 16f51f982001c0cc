//! LoRA *weights*: per-layer low-rank terms (down, up, scale) addressed by diffusers module path. This is what
//! the SDXL engine applies; it knows nothing of identities. HyperLoRA's synthesized LoRAs and LoRA files both
//! become these.
pub mod file;
pub mod names;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// One low-rank term: ΔW = scale · up · down for the Linear at `target`.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// diffusers module path of the Linear, without `.weight` (e.g. `mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0`).
    pub target: String,
    /// [r, in], f32 on the CPU.
    pub down: Tensor,
    /// [out, r], f32 on the CPU.
    pub up: Tensor,
    pub scale: f64,
}

impl LoraLayer {
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }
    /// scale · up · down as [out, in] f32.
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.up.matmul(&self.down)? * self.scale)?)
    }
}

/// A set of low-rank terms; several terms may address the same target, and their ΔW add up.
#[derive(Debug, Clone, Default)]
pub struct LoraWeights {
    pub layers: Vec<LoraLayer>,
}

/// All terms of one target stacked along the rank axis, the scales folded into `up` so that
/// ΔW = ratio · up · down exactly, for a file whose alpha is `ratio · rank`.
pub struct Stacked {
    pub target: String,
    pub down: Tensor,
    pub up: Tensor,
}

impl LoraWeights {
    /// Targets in first-appearance order.
    pub fn targets(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.layers.iter().map(|l| l.target.as_str()).filter(|t| seen.insert(*t)).collect()
    }

    /// Σ scale · up · down over the terms that address `target` (None when none does).
    pub fn delta(&self, target: &str) -> Result<Option<Tensor>> {
        let mut acc: Option<Tensor> = None;
        for l in self.layers.iter().filter(|l| l.target == target) {
            let d = l.delta()?;
            acc = Some(match acc {
                None => d,
                Some(a) => (a + d)?,
            });
        }
        Ok(acc)
    }

    pub fn scaled(&self, s: f64) -> Self {
        LoraWeights { layers: self.layers.iter().map(|l| LoraLayer { scale: l.scale * s, ..l.clone() }).collect() }
    }

    pub fn extend(&mut self, other: LoraWeights) {
        self.layers.extend(other.layers);
    }

    /// Number of LoRA parameters (down + up) over all terms.
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.down.elem_count() + l.up.elem_count()).sum()
    }

    /// Stack each target's terms along the rank axis for a file with alpha/rank = `ratio`.
    pub fn stacked(&self, ratio: f64) -> Result<Vec<Stacked>> {
        let mut out = Vec::new();
        for t in self.targets() {
            let terms: Vec<&LoraLayer> = self.layers.iter().filter(|l| l.target == t).collect();
            let first = terms[0];
            for l in &terms[1..] {
                if l.down.dims()[1] != first.down.dims()[1] || l.up.dims()[0] != first.up.dims()[0] {
                    return Err(Error::Mismatch(format!(
                        "LoRA terms for `{t}` disagree on the layer's shape: {:?}·{:?} vs {:?}·{:?}",
                        first.up.dims(),
                        first.down.dims(),
                        l.up.dims(),
                        l.down.dims()
                    )));
                }
            }
            let ups = terms.iter().map(|l| Ok((&l.up * (l.scale / ratio))?)).collect::<Result<Vec<_>>>()?;
            let downs: Vec<Tensor> = terms.iter().map(|l| l.down.clone()).collect();
            out.push(Stacked { target: t.to_string(), down: Tensor::cat(&downs, 0)?, up: Tensor::cat(&ups, 1)? });
        }
        Ok(out)
    }
}

/// f32 CPU copy of a tensor (the storage form of LoRA factors).
pub(crate) fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}
