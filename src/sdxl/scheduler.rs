//! Noise schedules and samplers with diffusers' semantics, configured from the checkpoint's
//! `scheduler/scheduler_config.json` (SDXL: scaled_linear 0.00085–0.012, 1000 steps, leading spacing,
//! steps_offset 1, epsilon prediction). Scalars are computed in f64; latents stay in their dtype.
//!
//! Samplers: DPM++ 2M Karras (`DPMSolverMultistepScheduler`, dpmsolver++, order 2, midpoint, lower_order_final,
//! final sigma 0 — HyperLoRA's default), Euler and Euler ancestral (`Euler[Ancestral]DiscreteScheduler`), DDIM (η 0).
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub steps_offset: usize,
    pub timestep_spacing: String,
    pub prediction_type: String,
}

impl Default for SchedulerConfig {
    /// SDXL base's scheduler config.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            timestep_spacing: "leading".into(),
            prediction_type: "epsilon".into(),
        }
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        let c: SchedulerConfig =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not a scheduler config: {e}")))?;
        if c.beta_schedule != "scaled_linear" && c.beta_schedule != "linear" {
            return Err(Error::invalid(
                path,
                format!("beta_schedule `{}` is not supported (scaled_linear or linear)", c.beta_schedule),
            ));
        }
        if c.prediction_type != "epsilon" {
            return Err(Error::invalid(
                path,
                format!("prediction_type `{}` is not supported (SDXL predicts epsilon)", c.prediction_type),
            ));
        }
        if c.timestep_spacing != "leading" {
            return Err(Error::invalid(
                path,
                format!("timestep_spacing `{}` is not supported (SDXL uses leading)", c.timestep_spacing),
            ));
        }
        c.validate().map_err(|why| Error::invalid(path, why))?;
        Ok(c)
    }

    /// The numbers a schedule needs: at least 2 training steps, betas in (0, 1) with start ≤ end, an offset that
    /// stays inside the training steps.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_train_timesteps < 2 || self.num_train_timesteps > 100_000 {
            return Err(format!(
                "num_train_timesteps {} is out of range (2 to 100000; SDXL: 1000)",
                self.num_train_timesteps
            ));
        }
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(self.beta_start) || !ok(self.beta_end) || self.beta_start > self.beta_end {
            return Err(format!(
                "beta_start {} and beta_end {} must lie in (0, 1) with start ≤ end (SDXL: 0.00085, 0.012)",
                self.beta_start, self.beta_end
            ));
        }
        if self.steps_offset >= self.num_train_timesteps {
            return Err(format!(
                "steps_offset {} is not below num_train_timesteps {} (SDXL: 1)",
                self.steps_offset, self.num_train_timesteps
            ));
        }
        Ok(())
    }

    /// β as diffusers computes it in float32: torch.linspace(√start, √end, N)² (scaled_linear) or
    /// torch.linspace(start, end, N). The float32 rounding is kept on purpose: σ_min of the Karras schedule
    /// inherits it.
    pub fn betas(&self) -> Vec<f64> {
        self.betas_f32().into_iter().map(f64::from).collect()
    }

    fn betas_f32(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let scaled = self.beta_schedule == "scaled_linear";
        let (a, b) = if scaled {
            (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32)
        } else {
            (self.beta_start as f32, self.beta_end as f32)
        };
        // torch's CPU linspace: step in the output dtype, the second half counted back from the end
        let step = (b - a) / (n - 1) as f32;
        (0..n)
            .map(|i| {
                let v = if i < n / 2 { a + step * i as f32 } else { b - step * (n - 1 - i) as f32 };
                if scaled {
                    v * v
                } else {
                    v
                }
            })
            .collect()
    }

    /// ᾱ = cumprod(1 − β), accumulated in float32 like torch.cumprod.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1f32;
        self.betas_f32()
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc as f64
            })
            .collect()
    }

    /// σ = √((1 − ᾱ)/ᾱ), in float32 like diffusers.
    fn sigmas_f32(&self) -> Vec<f32> {
        self.alphas_cumprod()
            .into_iter()
            .map(|a| {
                let a = a as f32;
                ((1.0 - a) / a).sqrt()
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    #[value(name = "dpmpp_2m_karras")]
    DpmPp2mKarras,
    #[value(name = "euler")]
    Euler,
    #[value(name = "euler_a")]
    EulerA,
    #[value(name = "ddim")]
    Ddim,
}

impl SamplerKind {
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::DpmPp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler_a",
            SamplerKind::Ddim => "ddim",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            Error::Mismatch(format!("unknown sampler `{s}`; expected dpmpp_2m_karras, euler, euler_a or ddim"))
        })
    }
}

/// One sampling run's schedule and state.
pub struct Sampler {
    kind: SamplerKind,
    timesteps: Vec<f64>,
    /// σ per step plus a final entry (Euler, DPM++); empty for DDIM.
    sigmas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    step_ratio: usize,
    init_noise_sigma: f64,
    /// DPM++: the previous step's x₀ prediction.
    prev_x0: Option<Tensor>,
}

/// Linear interpolation of `ys` at fractional index `x` (np.interp over 0..len).
fn interp(x: f64, ys: &[f64]) -> f64 {
    let i = (x.floor() as usize).min(ys.len() - 1);
    let f = x - i as f64;
    if i + 1 < ys.len() {
        ys[i] * (1.0 - f) + ys[i + 1] * f
    } else {
        ys[i]
    }
}

/// diffusers' `_sigma_to_t`: fractional timestep of σ by interpolation in log σ.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas.iter().rposition(|&l| l <= ls).unwrap_or(0).min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

impl Sampler {
    pub fn new(kind: SamplerKind, cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let n = cfg.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(Error::Mismatch(format!(
                "steps must be between 1 and {n} (num_train_timesteps in the model's scheduler/scheduler_config.json), got {steps}"
            )));
        }
        let ac = cfg.alphas_cumprod();
        let sig32 = cfg.sigmas_f32();
        let all_sigmas: Vec<f64> = sig32.iter().map(|&s| s as f64).collect();
        let step_ratio = n / steps;
        // leading spacing
        let leading: Vec<f64> = (0..steps).rev().map(|i| (i * step_ratio + cfg.steps_offset) as f64).collect();
        let (timesteps, sigmas, init) = match kind {
            SamplerKind::Euler | SamplerKind::EulerA => {
                let mut s: Vec<f64> = leading.iter().map(|&t| interp(t, &all_sigmas)).collect();
                let max = s.iter().cloned().fold(0.0, f64::max);
                s.push(0.0);
                (leading, s, (max * max + 1.0).sqrt())
            }
            SamplerKind::Ddim => (leading, Vec::new(), 1.0),
            SamplerKind::DpmPp2mKarras => {
                let log_sigmas: Vec<f64> = sig32.iter().map(|s| s.ln() as f64).collect();
                let (smin, smax) = (all_sigmas[0], all_sigmas[n - 1]);
                let rho = 7.0;
                let (lo, hi) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
                let mut s: Vec<f64> = (0..steps)
                    .map(|i| {
                        let ramp = if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
                        (hi + ramp * (lo - hi)).powf(rho)
                    })
                    .collect();
                let ts = s.iter().map(|&sg| sigma_to_t(sg, &log_sigmas).round()).collect();
                s.push(0.0);
                (ts, s, 1.0)
            }
        };
        Ok(Sampler { kind, timesteps, sigmas, alphas_cumprod: ac, step_ratio, init_noise_sigma: init, prev_x0: None })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }
    /// The model timestep of each step.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
    /// Initial latents are unit Gaussian noise times this.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }
    /// Whether `step` needs fresh Gaussian noise (ancestral sampling).
    pub fn needs_noise(&self) -> bool {
        self.kind == SamplerKind::EulerA
    }

    /// The UNet's input at step `i`: x/√(σ²+1) for Euler samplers, x otherwise.
    pub fn scale_model_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.kind {
            SamplerKind::Euler | SamplerKind::EulerA => (x / (self.sigmas[i].powi(2) + 1.0).sqrt())?,
            _ => x.clone(),
        })
    }

    /// Noise clean latents `z` to the level of step `i` (img2img): z + σᵢ·n for σ-samplers,
    /// √ᾱₜ·z + √(1−ᾱₜ)·n for DDIM and DPM++ (which work on unscaled latents).
    pub fn add_noise(&self, z: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.kind {
            SamplerKind::Euler | SamplerKind::EulerA => (z + (noise * self.sigmas[i])?)?,
            SamplerKind::DpmPp2mKarras => {
                let s = self.sigmas[i];
                let a = 1.0 / (s * s + 1.0).sqrt();
                ((z * a)? + (noise * (s * a))?)?
            }
            SamplerKind::Ddim => {
                let a = self.alphas_cumprod[self.timesteps[i] as usize];
                ((z * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?
            }
        })
    }

    /// Advance `x` by one step given the model's ε prediction. `noise` (unit Gaussian, x's shape) is required
    /// for ancestral sampling.
    pub fn step(&mut self, eps: &Tensor, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        if i >= self.timesteps.len() {
            return Err(Error::Mismatch(format!("step {i} is past the {}-step schedule", self.timesteps.len())));
        }
        Ok(match self.kind {
            SamplerKind::Euler => {
                let dt = self.sigmas[i + 1] - self.sigmas[i];
                (x + (eps * dt)?)?
            }
            SamplerKind::EulerA => {
                let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
                let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                let down = (to * to - up * up).sqrt();
                let noise = noise.ok_or_else(|| Error::Mismatch("euler_a needs noise at every step".into()))?;
                ((x + (eps * (down - from))?)? + (noise * up)?)?
            }
            SamplerKind::Ddim => {
                let t = self.timesteps[i] as usize;
                let a_t = self.alphas_cumprod[t];
                let a_prev =
                    t.checked_sub(self.step_ratio).map(|p| self.alphas_cumprod[p]).unwrap_or(self.alphas_cumprod[0]);
                let x0 = ((x - (eps * (1.0 - a_t).sqrt())?)? / a_t.sqrt())?;
                ((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?
            }
            SamplerKind::DpmPp2mKarras => {
                let alpha_sigma = |s: f64| {
                    let a = 1.0 / (s * s + 1.0).sqrt();
                    (a, s * a)
                };
                let (a_s0, s_s0) = alpha_sigma(self.sigmas[i]);
                let x0 = ((x - (eps * s_s0)?)? / a_s0)?;
                let next = self.sigmas[i + 1];
                let out = if next == 0.0 {
                    // σ → 0: the solver lands on the x₀ prediction (h → ∞)
                    x0.clone()
                } else {
                    let (a_t, s_t) = alpha_sigma(next);
                    let lambda = |a: f64, s: f64| a.ln() - s.ln();
                    let h = lambda(a_t, s_t) - lambda(a_s0, s_s0);
                    let first = (x * (s_t / s_s0))?;
                    let c = -a_t * ((-h).exp() - 1.0);
                    match (&self.prev_x0, i) {
                        (Some(m1), i) if i > 0 => {
                            let (a_s1, s_s1) = alpha_sigma(self.sigmas[i - 1]);
                            let r0 = (lambda(a_s0, s_s0) - lambda(a_s1, s_s1)) / h;
                            let d1 = ((&x0 - m1)? * (1.0 / r0))?;
                            ((first + (&x0 * c)?)? + (d1 * (0.5 * c))?)?
                        }
                        _ => (first + (&x0 * c)?)?,
                    }
                };
                self.prev_x0 = Some(x0);
                out
            }
        })
    }
}
