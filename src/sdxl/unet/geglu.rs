//! GEGLU's gate, `a · GELU(b)` with the exact (erf) GELU, for the feed-forward of every transformer block.
//!
//! candle's `gelu_erf` on the CPU calls libm's scalar `erff` once per value, on one thread: at 256² that was most of
//! the feed-forward's time (a third of a UNet step). On the CPU in f32 this is one fused pass instead, in parallel
//! over rows, with a rational erf that the compiler vectorises (within 1e-6 of libm's `erff` everywhere — a unit
//! test checks a dense grid). Other devices and dtypes keep candle's ops.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// `h[..., :half] · GELU_erf(h[..., half:])` for h [..., 2·half].
pub fn geglu(h: &Tensor) -> candle_core::Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 {
        return h.contiguous()?.apply_op1_no_bwd(&Geglu);
    }
    let half = h.dim(D::Minus1)? / 2;
    h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?
}

/// erf(x) as x·P(x²)/Q(x²) on x clamped to [−4, 4] (beyond, erf is ±1 in f32): odd numerator of degree 13, even
/// denominator of degree 8; branch-free, so a loop of it vectorises.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { candle_core::bail!("geglu: f32 input expected") };
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("geglu: contiguous input expected") };
        let v = &v[start..end];
        let mut dims = l.dims().to_vec();
        let two = dims.last().copied().unwrap_or(0);
        if two == 0 || two % 2 != 0 {
            candle_core::bail!("geglu: last dimension {two} is not even");
        }
        let half = two / 2;
        let mut out = vec![0f32; v.len() / 2];
        out.par_chunks_mut(half).zip(v.par_chunks(two)).with_min_len(8).for_each(|(o, row)| {
            let (a, b) = row.split_at(half);
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a * gelu(*b);
            }
        });
        *dims.last_mut().expect("not empty") = half;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_libm_erf_within_1e6() {
        let mut worst = (0f32, 0f32);
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4; // −10 … 10
            let d = (erf(x) - libm::erff(x)).abs();
            if d > worst.1 {
                worst = (x, d);
            }
        }
        assert!(worst.1 < 1e-6, "erf off by {} at {}", worst.1, worst.0);
        assert!((erf(f32::INFINITY) - 1.0).abs() <= 1.2e-7 && (erf(f32::NEG_INFINITY) + 1.0).abs() <= 1.2e-7);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn geglu_matches_candles_ops() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::Rng::new(4);
        let mut v = vec![0f32; 3 * 5 * 64];
        rng.fill(&mut v, -6.0, 6.0);
        let h = Tensor::from_vec(v, (3, 5, 64), &dev).unwrap();
        let plain =
            (h.narrow(D::Minus1, 0, 32).unwrap() * h.narrow(D::Minus1, 32, 32).unwrap().gelu_erf().unwrap()).unwrap();
        let fused = geglu(&h).unwrap();
        assert_eq!(fused.dims(), [3, 5, 32]);
        let d = (fused - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "max |Δ| {d}");
        // a non-contiguous input (a transposed view) gives the same as its contiguous copy
        let t = h.transpose(0, 1).unwrap();
        let a = geglu(&t).unwrap();
        let b = geglu(&t.contiguous().unwrap()).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
