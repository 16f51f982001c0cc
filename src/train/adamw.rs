//! AdamW exactly as `torch.optim.AdamW` defines it (decoupled weight decay applied first, bias corrections folded
//! into the step size and the denominator as torch does), the learning-rate schedule (linear warm-up, then constant
//! or cosine) and global gradient-norm clipping. Elementwise candle ops in f32: deterministic on one device.
use crate::error::{Error, Result};
use candle_core::{DType, Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults, but lr 1e-2 (torch: 1e-3).
    fn default() -> Self {
        AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v < hi;
        if !(ok(self.lr, 0.0, f64::MAX) && self.lr > 0.0) {
            return Err(Error::InvalidValue(format!("learning rate {} is not a positive number", self.lr)));
        }
        if !ok(self.beta1, 0.0, 1.0) || !ok(self.beta2, 0.0, 1.0) {
            return Err(Error::InvalidValue(format!("betas ({}, {}) must lie in [0, 1)", self.beta1, self.beta2)));
        }
        if !(ok(self.eps, 0.0, f64::MAX) && self.eps > 0.0 && ok(self.weight_decay, 0.0, f64::MAX)) {
            return Err(Error::InvalidValue(format!(
                "eps {} must be positive and weight decay {} not negative",
                self.eps, self.weight_decay
            )));
        }
        Ok(())
    }
}

/// First and second moments of one parameter.
#[derive(Clone)]
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (torch's `state['step']`).
    pub step: usize,
    pub moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[&Var]) -> Result<Self> {
        config.validate()?;
        let moments = params
            .iter()
            .map(|p| {
                let z = p.as_tensor().to_dtype(DType::F32)?.zeros_like()?;
                Ok(Moments { m: z.clone(), v: z })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { config, step: 0, moments })
    }

    /// One step at learning rate `lr` with `grads[i]` for `params[i]` (the same order as `new`).
    pub fn step(&mut self, params: &[&Var], grads: &[Tensor], lr: f64) -> Result<()> {
        if params.len() != self.moments.len() || grads.len() != params.len() {
            return Err(Error::Mismatch(format!(
                "{} parameters and {} gradients for an optimiser of {}",
                params.len(),
                grads.len(),
                self.moments.len()
            )));
        }
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for ((p, g), mo) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            let g = g.to_dtype(DType::F32)?;
            let x = p.as_tensor().to_dtype(DType::F32)?;
            let x = (x * (1.0 - lr * c.weight_decay))?;
            mo.m = ((&mo.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            mo.v = ((&mo.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((mo.v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let x = (x - (mo.m.div(&denom)? * (lr / bc1))?)?;
            p.set(&x.to_dtype(p.dtype())?)?;
        }
        Ok(())
    }
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Cosine,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            o => Err(Error::InvalidValue(format!("schedule `{o}`: use constant or cosine"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }
}

/// The learning rate of step `step` (0-based) of `total`: linear warm-up over `warmup` steps from lr/warmup, then
/// constant, or cosine from lr down to 0 at the last step.
pub fn lr_at(base: f64, schedule: Schedule, warmup: usize, step: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).min(1.0);
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Scale `grads` so that their global L2 norm is at most `max_norm` (torch's `clip_grad_norm_`, coefficient
/// max_norm / (norm + 1e-6)); returns the norm before clipping. A non-finite norm is an error naming it.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        return Err(Error::InvalidValue(format!(
            "the gradient norm is {norm}: the loss diverged (lower the learning rate)"
        )));
    }
    if let Some(max) = max_norm {
        if norm > max {
            let k = max / (norm + 1e-6);
            for g in grads.iter_mut() {
                *g = (&*g * k)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(1.0, Schedule::Constant, 4, 0, 10), 0.25);
        assert_eq!(lr_at(1.0, Schedule::Constant, 4, 3, 10), 1.0);
        assert_eq!(lr_at(1.0, Schedule::Constant, 0, 9, 10), 1.0);
        assert!((lr_at(2.0, Schedule::Cosine, 0, 0, 10) - 2.0).abs() < 1e-12);
        assert!(lr_at(2.0, Schedule::Cosine, 0, 10, 10).abs() < 1e-12);
        assert!((lr_at(2.0, Schedule::Cosine, 2, 6, 10) - 1.0).abs() < 1e-12);
    }

    /// Two steps against a scalar transcription of torch's update written out here.
    #[test]
    fn two_steps_equal_torchs_formula() {
        let dev = candle_core::Device::Cpu;
        let p0 = [0.5f32, -1.0, 2.0, 0.0];
        let gs = [[0.1f32, -0.2, 0.0, 3.0], [-0.3, 0.2, 1e-9, 1.0]];
        let var = Var::new(&p0, &dev).unwrap();
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.05, ..Default::default() };
        let mut opt = AdamW::new(cfg, &[&var]).unwrap();
        for g in &gs {
            opt.step(&[&var], &[Tensor::new(g, &dev).unwrap()], cfg.lr).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..4 {
            let (mut p, mut m, mut v) = (p0[i] as f64, 0f64, 0f64);
            for (t, g) in gs.iter().enumerate() {
                let g = g[i] as f64;
                p *= 1.0 - 0.1 * 0.05;
                m = 0.9 * m + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                let (b1, b2) = (1.0 - 0.9f64.powi(t as i32 + 1), 1.0 - 0.999f64.powi(t as i32 + 1));
                p -= 0.1 / b1 * m / (v.sqrt() / b2.sqrt() + 1e-8);
            }
            assert!((got[i] as f64 - p).abs() < 1e-5, "element {i}: {} vs {p}", got[i]);
        }
    }

    #[test]
    fn clipping() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![Tensor::new(&[3f32, 0.0], &dev).unwrap(), Tensor::new(&[4f32], &dev).unwrap()];
        assert_eq!(clip_grad_norm(&mut g, Some(1.0)).unwrap(), 5.0);
        let n = clip_grad_norm(&mut g, None).unwrap();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
        let mut bad = vec![Tensor::new(&[f32::NAN], &dev).unwrap()];
        assert!(clip_grad_norm(&mut bad, Some(1.0)).is_err());
    }
}
