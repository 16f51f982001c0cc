//! Linear and Conv2d for frozen weights. In inference, and whenever the weight itself is trained, they are
//! candle-nn's. When the input is on an autograd graph and the weight is not, the product is computed off the graph
//! and enters it through a custom op whose backward is the input's gradient alone (`g·W` for a Linear, the
//! transposed convolution for a Conv2d): candle's own matmul and conv2d backward would also compute a gradient for
//! the frozen weight — as much work again — and keep it in the gradient store until the backward ends.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use std::sync::Mutex;

/// A tensor computed off the graph, handed once to a custom op's forward (which must return new storage: the
/// buffer is copied, and the original dropped at once, so the op holds no second copy).
pub struct Precomputed {
    value: Mutex<Option<Tensor>>,
    shape: Shape,
}

impl Precomputed {
    pub fn new(t: Tensor) -> Self {
        Precomputed { shape: t.shape().clone(), value: Mutex::new(Some(t)) }
    }
    fn take(&self) -> Result<Tensor> {
        let t = self.value.lock().map_err(|_| candle_core::Error::Msg("precomputed: lock poisoned".into()))?.take();
        let t = t.ok_or_else(|| candle_core::Error::Msg("precomputed value handed over twice".into()))?;
        // the whole buffer, in order: copy when the tensor is a view
        match t.is_contiguous() && t.layout().start_offset() == 0 {
            true => Ok(t),
            false => t.copy(),
        }
    }
    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let t = self.take()?;
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(s) => Ok((s.try_clone(l)?, self.shape.clone())),
            _ => candle_core::bail!("precomputed value is not on the CPU"),
        }
    }
    pub fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        let t = self.take()?;
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cuda(s) => Ok((s.try_clone(l)?, self.shape.clone())),
            _ => candle_core::bail!("precomputed value is not on the GPU"),
        }
    }
}

/// `y` (computed from `x` off the graph) on the graph as a function of `x`, with `grad_x(g)` as its backward.
struct InputOnly<F: Fn(&Tensor) -> Result<Tensor> + Send + Sync> {
    out: Precomputed,
    grad_x: F,
}

impl<F: Fn(&Tensor) -> Result<Tensor> + Send + Sync> CustomOp1 for InputOnly<F> {
    fn name(&self) -> &'static str {
        "frozen-weight"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.out.cuda()
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.grad_x)(grad)?))
    }
}

fn input_only(
    x: &Tensor,
    y: Tensor,
    grad_x: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    x.apply_op1(InputOnly { out: Precomputed::new(y), grad_x })
}

/// True when `x` wants a gradient and `w` does not: the frozen-weight path.
fn frozen_path(x: &Tensor, w: &Tensor) -> bool {
    x.track_op() && !w.track_op()
}

/// `x·Wᵀ + b` (diffusers/torch `nn.Linear`).
#[derive(Clone, Debug)]
pub struct Linear(candle_nn::Linear);

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear(candle_nn::Linear::new(weight, bias))
    }
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }
}

/// `{prefix}.weight` [out, in] and `{prefix}.bias` [out].
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear(candle_nn::linear(in_dim, out_dim, vb)?))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.0.weight();
        if !frozen_path(x, w) {
            return self.0.forward(x);
        }
        let y = candle_nn::Linear::new(w.clone(), None).forward(&x.detach())?;
        let w = w.clone();
        let y = input_only(x, y, move |g| g.broadcast_matmul(&w))?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// 2-D convolution (groups 1), as candle-nn's.
#[derive(Clone, Debug)]
pub struct Conv2d(candle_nn::Conv2d);

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }
}

pub fn conv2d(i: usize, o: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d(candle_nn::conv2d(i, o, k, cfg, vb)?))
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, cfg) = (self.0.weight(), *self.0.config());
        if !frozen_path(x, w) || cfg.groups != 1 {
            return self.0.forward(x);
        }
        let y = x.detach().conv2d(w, cfg.padding, cfg.stride, cfg.dilation, 1)?;
        let (w, in_h) = (w.clone(), x.dim(2)?);
        // as candle's own backward for the input: the transposed convolution, padded out to the input's height
        let y = input_only(x, y, move |g| {
            let full = (g.dim(2)? - 1) * cfg.stride + cfg.dilation * (w.dim(2)? - 1) + 1 - 2 * cfg.padding;
            g.conv_transpose2d(&w, cfg.padding, in_h - full, cfg.stride, cfg.dilation)
        })?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let mut v = vec![0f32; shape.iter().product()];
        rng.fill(&mut v, 0.0, 1.0);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let s = b.abs().unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = s.iter().fold(0f64, |m, x| m.max(*x));
        assert!(scale > 0.0);
        d.iter().fold(0f64, |m, x| if x.is_nan() { f64::NAN } else { m.max(*x) }) / scale
    }

    /// The frozen path gives candle's own output and input gradient (stride 1 and 2 convolutions, odd sizes), and
    /// keeps no gradient for the weight.
    #[test]
    fn frozen_layers_give_candles_values_and_input_gradients() {
        let (lw, lb) = (rand(&[5, 7], 1), rand(&[5], 2));
        let lin = Linear::new(lw.clone(), Some(lb.clone()));
        let convs = [
            (Conv2dConfig { padding: 1, stride: 1, ..Default::default() }, 3, 9),
            (Conv2dConfig { padding: 1, stride: 2, ..Default::default() }, 3, 9),
            (Conv2dConfig { padding: 1, stride: 2, ..Default::default() }, 3, 8),
            (Conv2dConfig { padding: 0, stride: 1, ..Default::default() }, 1, 5),
        ];
        let mut cases: Vec<(Box<dyn Fn(&Tensor) -> Result<Tensor>>, Box<dyn Fn(&Tensor) -> Result<Tensor>>, Tensor, Tensor)> =
            vec![(
                Box::new(move |x| lin.forward(x)),
                {
                    let l = candle_nn::Linear::new(lw.clone(), Some(lb));
                    Box::new(move |x| l.forward(x))
                },
                rand(&[2, 3, 7], 3),
                lw,
            )];
        for (i, (cfg, k, side)) in convs.into_iter().enumerate() {
            let w = rand(&[4, 3, k, k], 10 + i as u64);
            let b = rand(&[4], 20 + i as u64);
            let ours = Conv2d(candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg));
            let theirs = candle_nn::Conv2d::new(w.clone(), Some(b), cfg);
            cases.push((
                Box::new(move |x| ours.forward(x)),
                Box::new(move |x| theirs.forward(x)),
                rand(&[2, 3, side, side], 30 + i as u64),
                w,
            ));
        }
        for (ours, theirs, x, w) in cases {
            let xv = Var::from_tensor(&x).unwrap();
            let (a, b) = (ours(xv.as_tensor()).unwrap(), theirs(xv.as_tensor()).unwrap());
            assert!(rel(&a, &b) < 1e-12, "forward");
            let g = rand(a.dims(), 99);
            let ga = (&a * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&b * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(rel(ga.get(xv.as_tensor()).unwrap(), gb.get(xv.as_tensor()).unwrap()) < 1e-12, "input gradient");
            assert!(ga.get(&w).is_none(), "no gradient kept for the frozen weight");
            if w.rank() == 4 {
                assert!(gb.get(&w).is_some(), "candle's conv2d keeps one (what this avoids)");
            }
        }
    }
}
