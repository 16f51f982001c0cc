//! Linear and Conv2d for frozen weights. Whenever the weight itself is trained they are candle-nn's. Otherwise:
//! - the product is computed off the graph, on the CPU in the layouts that run fastest there (`product`,
//!   `conv2d_forward`; candle's elsewhere), in inference and in training alike;
//! - when the input is on an autograd graph, the product enters it through a custom op whose backward is the input's
//!   gradient alone (`g·W` for a Linear, the transposed convolution for a Conv2d): candle's own matmul and conv2d
//!   backward would also compute a gradient for the frozen weight — as much work again — and keep it in the gradient
//!   store until the backward ends.
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

/// `y` on `x`'s graph (as it is when `x` is on none).
fn input_only(
    x: &Tensor,
    y: Tensor,
    grad_x: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    match x.track_op() {
        true => x.apply_op1(InputOnly { out: Precomputed::new(y), grad_x }),
        false => Ok(y),
    }
}

/// `f` of a CPU f32 tensor's elements in order, borrowed where it is contiguous (copied once where it is a view).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[l.start_offset()..l.start_offset() + t.elem_count()])),
        _ => candle_core::bail!("not an f32 CPU tensor"),
    }
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
        if w.track_op() {
            return self.0.forward(x);
        }
        let y = product(&x.detach(), w)?;
        let w = w.clone();
        let y = input_only(x, y, move |g| g.broadcast_matmul(&w))?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x·Wᵀ` for the frozen path. On a CPU with AVX-512 and at most 128 rows (the 1280- and 640-wide blocks' tokens at
/// 256², the text's 77), computed as `W·xᵀ` and transposed back: with the weight on the left as it lies and `xᵀ`
/// copied (a few rows), the gemm crate packs neither operand, where `x·Wᵀ` has it repack the whole weight on every
/// call — at 64 rows its AVX-512 kernels then ran at 60–120 GFLOP/s, against 130–190 this way (`bench train`, and a
/// probe of the gemm crate alone on these shapes). Elsewhere: candle-nn's.
fn product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
    match x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && rows <= 128 && avx512() {
        true => weight_left(x, w),
        false => candle_nn::Linear::new(w.clone(), None).forward(x),
    }
}

/// `x·Wᵀ` as `(W·xᵀ)ᵀ`, for a CPU f32 `x`.
fn weight_left(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = w.dim(0)?;
    let xt = transposed(&x.reshape((rows, k))?)?;
    transposed(&w.matmul(&xt)?)?.reshape(dims)
}

/// A CPU f32 matrix's transpose, contiguous: the `transpose` crate's cache-blocked copy, where candle copies a
/// transposed view an element at a time.
fn transposed(t: &Tensor) -> Result<Tensor> {
    let (r, c) = t.dims2()?;
    let mut out = vec![0f32; r * c];
    with_f32(t, |src| transpose::transpose(src, &mut out, c, r))?;
    Tensor::from_vec(out, (c, r), t.device())
}

/// Whether this CPU has AVX-512F, which the gemm crate's widest kernels need.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
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
        if w.track_op() || cfg.groups != 1 {
            return self.0.forward(x);
        }
        let y = conv2d_forward(&x.detach(), w, cfg)?;
        let (w, in_h) = (w.clone(), x.dim(2)?);
        let y = input_only(x, y, move |g| conv2d_input_grad(g, &w, cfg, in_h))?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// A convolution without bias. On the CPU, with stride 1 (every convolution of SDXL's UNet but its two
/// downsamplers): `im2col` into [C·k², H·W] — each row a shifted copy of an input plane, copied a row at a time — then
/// one product `W·cols` (the weight as it lies) that comes out in NCHW order. candle's own CPU convolution builds
/// [H·W, C·k²] an element at a time and transposes its product back, which took most of a convolution's time in a
/// training step (`bench train`). Elsewhere: candle's.
fn conv2d_forward(x: &Tensor, w: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
    let (o, i, kh, kw) = w.dims4()?;
    let (b, c, ih, iw) = x.dims4()?;
    let p = cfg.padding;
    let fast = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && cfg.stride == 1 && cfg.dilation == 1;
    if !fast || c != i || ih + 2 * p < kh || iw + 2 * p < kw {
        return x.conv2d(w, p, cfg.stride, cfg.dilation, 1);
    }
    let (oh, ow) = (ih + 2 * p + 1 - kh, iw + 2 * p + 1 - kw);
    let rows = i * kh * kw;
    let mut cols = vec![0f32; b * rows * oh * ow];
    with_f32(x, |xs| {
        use rayon::prelude::*;
        cols.par_chunks_exact_mut(oh * ow).enumerate().for_each(|(n, plane)| {
            let (bi, row) = (n / rows, n % rows);
            let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
            let src = &xs[(bi * i + ci) * ih * iw..(bi * i + ci + 1) * ih * iw];
            for (yo, y, xs) in tap_rows((oh, ow), (ih, iw), p, ky, kx) {
                let from = y * iw + xs.start + kx - p;
                plane[yo * ow + xs.start..yo * ow + xs.end].copy_from_slice(&src[from..from + xs.len()]);
            }
        });
    })?;
    let cols = Tensor::from_vec(cols, (b, rows, oh * ow), x.device())?;
    let y = w.reshape((o, rows))?.broadcast_left(b)?.matmul(&cols)?;
    y.reshape((b, o, oh, ow))
}

/// One im2col row's tap (`ky`, `kx`) of a stride-1 convolution padded by `p`: each output row `yo` that reads an
/// input row `y`, with the output columns that read the input (column `xo` reads `xo + kx − p`; the rest read padding).
fn tap_rows(
    (oh, ow): (usize, usize),
    (ih, iw): (usize, usize),
    p: usize,
    ky: usize,
    kx: usize,
) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> {
    let xs = p.saturating_sub(kx)..(iw + p).saturating_sub(kx).min(ow);
    (0..oh).filter_map(move |yo| {
        let y = (yo + ky).checked_sub(p).filter(|&y| y < ih && !xs.is_empty())?;
        Some((yo, y, xs.clone()))
    })
}

/// The gradient of a convolution's input. On the CPU, with stride 1 (every convolution of SDXL's UNet but its two
/// downsamplers): one matrix product `Wᵀ·g` (the weight's rows as they lie, no copy) giving each input tap's
/// contribution, then `col2im` adding the k² shifted planes into place — the forward's im2col and product run
/// backwards, at the forward's cost. candle's own `conv_transpose2d` takes a dot product per output pixel and
/// channel on the CPU, up to 5× the forward's time. Elsewhere (GPU, other strides): candle's transposed convolution,
/// padded out to the input's height as its own backward does.
fn conv2d_input_grad(g: &Tensor, w: &Tensor, cfg: Conv2dConfig, in_h: usize) -> Result<Tensor> {
    let (o, i, kh, kw) = w.dims4()?;
    let (b, _, oh, ow) = g.dims4()?;
    let p = cfg.padding;
    // stride 1: the input is the output grown by k − 1 − 2p
    let (ih, iw) = ((oh + kh - 1).saturating_sub(2 * p), (ow + kw - 1).saturating_sub(2 * p));
    if g.device().is_cpu() && g.dtype() == candle_core::DType::F32 && cfg.stride == 1 && cfg.dilation == 1 && ih == in_h
    {
        let wt = w.reshape((o, i * kh * kw))?.t()?;
        let cols = wt.broadcast_left(b)?.matmul(&g.reshape((b, o, oh * ow))?.contiguous()?)?;
        let mut out = vec![0f32; b * i * ih * iw];
        with_f32(&cols, |cols| {
            for (bi, per_b) in cols.chunks_exact(i * kh * kw * oh * ow).enumerate() {
                for (row, plane) in per_b.chunks_exact(oh * ow).enumerate() {
                    let (c, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                    let dst = &mut out[(bi * i + c) * ih * iw..(bi * i + c + 1) * ih * iw];
                    for (yo, y, xs) in tap_rows((oh, ow), (ih, iw), p, ky, kx) {
                        for xo in xs {
                            dst[y * iw + xo + kx - p] += plane[yo * ow + xo];
                        }
                    }
                }
            }
        })?;
        return Tensor::from_vec(out, (b, i, ih, iw), g.device());
    }
    let full = (oh - 1) * cfg.stride + cfg.dilation * (kh - 1) + 1 - 2 * p;
    g.conv_transpose2d(w, p, in_h - full, cfg.stride, cfg.dilation)
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
        let mut cases: Vec<(
            Box<dyn Fn(&Tensor) -> Result<Tensor>>,
            Box<dyn Fn(&Tensor) -> Result<Tensor>>,
            Tensor,
            Tensor,
        )> = vec![(
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

    /// The frozen product `x·Wᵀ` gives candle-nn's in f32 at 1, 64, 77 and 300 rows, both as `W·xᵀ` (on any CPU) and
    /// as `product` chooses on this one (`W·xᵀ` up to 128 rows with AVX-512, candle-nn's own otherwise).
    #[test]
    fn frozen_product_gives_candles() {
        for (n, dims) in [vec![1usize, 1, 48], vec![1, 64, 48], vec![77, 48], vec![2, 150, 48]].into_iter().enumerate()
        {
            let x = rand(&dims, 60 + n as u64).to_dtype(DType::F32).unwrap();
            let w = rand(&[33, 48], 70 + n as u64).to_dtype(DType::F32).unwrap();
            let theirs = candle_nn::Linear::new(w.clone(), None).forward(&x).unwrap();
            for ours in [weight_left(&x, &w).unwrap(), product(&x, &w).unwrap()] {
                assert_eq!(ours.dims(), theirs.dims());
                let (ours, theirs) = (ours.to_dtype(DType::F64).unwrap(), theirs.to_dtype(DType::F64).unwrap());
                assert!(rel(&ours, &theirs) < 1e-6, "{dims:?}: {}", rel(&ours, &theirs));
            }
        }
    }

    /// The CPU forward (im2col by rows, one product) and input gradient (one product, col2im) give candle's in f32:
    /// padding 0 and 1, 1×1 and 3×3 kernels, a batch of 2, a wide image; stride 2 is candle's own.
    #[test]
    fn cpu_convolution_forward_gives_candles() {
        let cases = [(1usize, 1usize, 3usize, 5usize, 9usize), (0, 1, 3, 6, 7), (0, 1, 1, 4, 4), (1, 2, 3, 5, 8)];
        for (n, (p, s, k, h, w_)) in cases.into_iter().enumerate() {
            let x = rand(&[2, 3, h, w_], 40 + n as u64).to_dtype(DType::F32).unwrap();
            let w = rand(&[4, 3, k, k], 50 + n as u64).to_dtype(DType::F32).unwrap();
            let cfg = Conv2dConfig { padding: p, stride: s, ..Default::default() };
            let ours = conv2d_forward(&x, &w, cfg).unwrap().to_dtype(DType::F64).unwrap();
            let theirs = x.conv2d(&w, p, s, 1, 1).unwrap().to_dtype(DType::F64).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(rel(&ours, &theirs) < 1e-6, "case {n}: {}", rel(&ours, &theirs));
            // the input gradient (col2im on the CPU at stride 1) against candle's autograd
            if s != 1 {
                continue;
            }
            let g = rand(theirs.dims(), 80 + n as u64).to_dtype(DType::F32).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let y = xv.as_tensor().conv2d(&w, p, s, 1, 1).unwrap();
            let store = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs = store.get(xv.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
            let ours = conv2d_input_grad(&g, &w, cfg, h).unwrap().to_dtype(DType::F64).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(rel(&ours, &theirs) < 1e-6, "case {n} input gradient: {}", rel(&ours, &theirs));
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Device;

    /// Not a test: which input gradient and which forward are faster on this CPU (run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn conv_input_grad_speed() {
        for (c, side) in [(320usize, 32usize), (640, 16), (1280, 8)] {
            let w = Tensor::randn(0f32, 0.02, (c, c, 3, 3), &Device::Cpu).unwrap();
            let g = Tensor::randn(0f32, 1.0, (1, c, side, side), &Device::Cpu).unwrap();
            let cfg = Conv2dConfig { padding: 1, stride: 1, ..Default::default() };
            let t = std::time::Instant::now();
            for _ in 0..3 {
                conv2d_input_grad(&g, &w, cfg, side).unwrap();
            }
            let ours = t.elapsed() / 3;
            let t = std::time::Instant::now();
            for _ in 0..3 {
                g.conv_transpose2d(&w, 1, 0, 1, 1).unwrap();
            }
            let theirs = t.elapsed() / 3;
            let t = std::time::Instant::now();
            for _ in 0..3 {
                g.conv2d(&w, 1, 1, 1, 1).unwrap();
            }
            let fwd = t.elapsed() / 3;
            let t = std::time::Instant::now();
            for _ in 0..3 {
                conv2d_forward(&g, &w, cfg).unwrap();
            }
            let our_fwd = t.elapsed() / 3;
            eprintln!(
                "{c}×{side}²: input gradient: ours (Wᵀ·g, col2im) {ours:?}, conv_transpose2d {theirs:?}; forward: ours \
                 {our_fwd:?}, candle's conv2d {fwd:?}"
            );
        }
    }

    /// Not a test: the frozen product at a training step's shapes, ours against candle-nn's (`--ignored --nocapture`).
    #[test]
    #[ignore]
    fn product_speed() {
        for (m, n, k) in [(64usize, 1280usize, 1280usize), (64, 10240, 1280), (64, 1280, 5120), (77, 1280, 2048)] {
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu).unwrap();
            let time = |f: &dyn Fn() -> Tensor| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    f();
                }
                2.0 * (m * n * k) as f64 / (t.elapsed().as_secs_f64() / 10.0) / 1e9
            };
            let ours = time(&|| product(&x, &w).unwrap());
            let theirs = time(&|| candle_nn::Linear::new(w.clone(), None).forward(&x).unwrap());
            eprintln!("{m}×{k} · ({n}×{k})ᵀ: ours {ours:.0} GFLOP/s, candle-nn's {theirs:.0}");
        }
    }
}
