//! Layers for the model rooms (`sdxl/`, `hyper/`) whose candle versions do not fit training:
//! - candle-nn's fused `LayerNorm` and `softmax_last_dim` are custom ops without `bwd`. Each of ours runs the fused
//!   op when nothing asks for a gradient and a differentiable composition of primitive ops when its input or
//!   weights are on an autograd graph — the same code serves inference and training.
//! - `frozen`: Linear and Conv2d whose backward gives only the input's gradient when the weight is frozen (candle's
//!   also computes, and keeps until the end of the backward, a gradient for every frozen weight: 10 GB for SDXL's
//!   UNet in f32).
//!
//! Every other op on the training path (matmul, group norm as composed by candle-nn, GELU-erf, SiLU, nearest
//! upsampling, narrow/cat/reshape) has a backward in candle itself.
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

mod frozen;
pub use frozen::{conv2d, linear, Conv2d, Linear, Precomputed};

/// True when `t` is a variable or was computed from one: a backward pass will want its gradient.
pub fn tracked(t: &Tensor) -> bool {
    t.track_op()
}

/// `softmax` over the last dimension: candle's fused kernel, or exp(x − max) / Σ when `x` is tracked (the max is
/// detached: softmax does not depend on it, so its gradient is exactly zero).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !tracked(x) {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// LayerNorm over the last dimension with weight and bias (diffusers/transformers `nn.LayerNorm`).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    fused: candle_nn::LayerNorm,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm { fused: candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps), weight, bias, eps }
    }
}

/// `{prefix}.weight` and `{prefix}.bias`, both `[size]`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(size, "weight")?, vb.get(size, "bias")?, eps))
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !(tracked(x) || tracked(&self.weight) || tracked(&self.bias)) {
            return self.fused.forward(x);
        }
        let dtype = x.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = x.to_dtype(internal)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let mut v = vec![0f32; shape.iter().product()];
        rng.fill(&mut v, 0.0, 1.5);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        d.iter().fold(0f64, |m, x| if x.is_nan() { f64::NAN } else { m.max(*x) })
    }

    /// The composition equals the fused op, and its gradient equals a central finite difference (all in f64).
    #[test]
    fn compositions_equal_the_fused_ops_and_differentiate() {
        let x = rand(&[2, 3, 7], 1).to_dtype(DType::F64).unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let composed = softmax_last_dim(var.as_tensor()).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-12);
        // candle's fused LayerNorm is f32/f16 only: compare in f32
        let ln32 = LayerNorm::new(rand(&[7], 2), rand(&[7], 3), 1e-5);
        let x32 = rand(&[2, 3, 7], 1);
        let fused = ln32.forward(&x32).unwrap().to_dtype(DType::F64).unwrap();
        let composed = ln32.forward(Var::from_tensor(&x32).unwrap().as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let f64_of = |t: Tensor| t.to_dtype(DType::F64).unwrap();
        let ln = LayerNorm::new(f64_of(rand(&[7], 2)), f64_of(rand(&[7], 3)), 1e-5);

        // d/dx of Σ w ⊙ f(x) against (f(x + h) − f(x − h)) / 2h for single elements, both layers
        let w = f64_of(rand(&[2, 3, 7], 4));
        let softmax: &dyn Fn(&Tensor) -> Result<Tensor> = &softmax_last_dim;
        let norm: &dyn Fn(&Tensor) -> Result<Tensor> = &|t: &Tensor| ln.forward(t);
        for f in [softmax, norm] {
            let g = (f(var.as_tensor()).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g = g.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(g.iter().any(|v| v.abs() > 1e-3), "gradient is all zero");
            for idx in [0usize, 9, 20, 41] {
                let mut bump = vec![0f64; 42];
                bump[idx] = 1e-5;
                let bump = Tensor::from_vec(bump, (2, 3, 7), &Device::Cpu).unwrap();
                // (evaluated on a variable: the composition, which runs in f64)
                let at = |t: Tensor| {
                    let v = Var::from_tensor(&t).unwrap();
                    (f(v.as_tensor()).unwrap() * &w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                };
                let num = (at((&x + &bump).unwrap()) - at((&x - &bump).unwrap())) / 2e-5;
                assert!((num - g[idx]).abs() < 1e-6 * (1.0 + num.abs()), "element {idx}: {num} vs {}", g[idx]);
            }
        }
    }
}
