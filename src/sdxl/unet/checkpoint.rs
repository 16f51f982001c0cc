//! Gradient checkpointing per transformer block: in training, a block's forward runs without building a graph
//! (its activations — attention scores, the feed-forward's 8·C hidden — are freed at once) and its output enters
//! the outer graph through a custom op whose backward runs the block again, on a graph this time, and takes the
//! vector-Jacobian product `∂⟨out, g⟩/∂(x, factors)` with candle's own backward. The outer graph then holds only
//! the block's input, its output and its LoRA factors, at the cost of a second forward of each block.
//!
//! The factors (the functional LoRA terms' down/up, variables of the training step) are passed to the op as one
//! flat tensor, `cat` of them all flattened, so their gradients flow back to each factor through `cat`'s own
//! backward: nothing is accumulated beside candle's `GradStore`.
use super::attention::TransformerBlock;
use crate::nn::Precomputed;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor, Var};

/// `block.forward(x, context)`, checkpointed when `x` or the block's LoRA factors are on an autograd graph
/// (plain forward otherwise: inference pays nothing).
pub(crate) fn forward(block: &TransformerBlock, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
    let factors = block.factors();
    let tracked = x.track_op() || factors.iter().any(|f| f.track_op());
    if !tracked {
        return block.forward(x, context);
    }
    let context = context.detach();
    let out = Precomputed::new(block.detached().forward(&x.detach(), &context)?);
    let flat = match factors.is_empty() {
        true => Tensor::zeros(1, x.dtype(), x.device())?,
        false => Tensor::cat(&factors.iter().map(|f| f.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?, 0)?,
    };
    x.apply_op2(&flat, Checkpointed { block: block.clone(), context, out })
}

/// The op: forward hands back the output computed without a graph; backward recomputes the block with one.
struct Checkpointed {
    block: TransformerBlock,
    context: Tensor,
    out: Precomputed,
}

impl CustomOp2 for Checkpointed {
    fn name(&self) -> &'static str {
        "checkpointed-transformer-block"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        flat: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xv = match x.track_op() {
            true => Some(Var::from_tensor(&x.detach())?),
            false => None,
        };
        let input = xv.as_ref().map(|v| v.as_tensor().clone()).unwrap_or_else(|| x.detach());
        let out = self.block.forward(&input, &self.context)?;
        let store = (out * grad.detach())?.sum_all()?.backward()?;
        let gx = xv.as_ref().and_then(|v| store.get(v.as_tensor()).cloned());
        let factors = self.block.factors();
        let gflat = match factors.is_empty() || !flat.track_op() {
            true => None,
            false => {
                let parts = factors
                    .iter()
                    .map(|f| match store.get(f) {
                        Some(g) => g.flatten_all(),
                        None => f.zeros_like()?.flatten_all(),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Tensor::cat(&parts, 0)?)
            }
        };
        Ok((gx, gflat))
    }
}
