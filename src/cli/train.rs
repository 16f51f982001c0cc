//! `hyperlora train step`: one training step with every gradient, for checking other code against ours.
use crate::files::output::{refuse_existing, safetensors_bytes, write_file, RawTensor};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: TrainCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum TrainCmd {
    /// One training step: the ε-prediction loss through the UNet carrying the variant's ID and Base LoRAs, and the
    /// gradient of that loss with respect to every LoRA factor, the coefficients and every hypernetwork weight.
    #[command(long_about = STEP_HELP)]
    Step(StepArgs),
}

const STEP_HELP: &str = "One training step: the ε-prediction loss through the frozen SDXL UNet carrying the variant's ID and Base LoRAs \
(computed from their factors, never merged), and its gradient with respect to every LoRA factor, the coefficients and every \
hypernetwork weight.

Use it to check your own PyTorch training code against ours: write the same inputs your code uses into a safetensors file under \
the names below, run this, and compare each gradient group relative to its largest value.

Inputs (--inputs, float32 unless said): input.arcface [N,512], input.clip_hidden_states [N,257,W], \
input.base_clip_hidden_states [M,257,W] (optional), input.x0 and input.noise [B,4,h,w], input.timesteps [B] (int64), \
input.encoder_hidden_states [B,77,C], input.text_embeds [B,P], input.time_ids [B,6], input.alphas_cumprod [T], \
input.strength_id and input.strength_base (0-dim; default 1).

Maths: coefficients = mean over photos of the resampler outputs m, normalised per token (m / sqrt(Σ m² + 1e-8)); LoRA \
factors from the bases; noisy = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise per row; each attention projection computes \
W·x + Σ_branch strength·0.5·up·(down·x); loss = mean((ε̂ − noise)²).

Output (--out): output.loss, output.noise_pred, input.noisy_latents, coeffs.{id,base}, grad.raw_mean.{id,base}, \
grad.coeffs.{id,base}, grad.lora.{id,base}.<kohya name>.lora_{down,up}.weight, and grad.<file>.<key> for every weight of \
the variant (id_projector, resampler, base_resampler, bases). The layout is that of the project's fixture \
training/training_step.safetensors, which this command reproduces.";

#[derive(clap::Args, Debug)]
pub struct StepArgs {
    #[command(flatten)]
    pub models: crate::front::args::ModelArgs,
    /// The step's inputs (`input.*` tensors, see above).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Where to write the loss, the prediction and the gradients (never replaced without --force).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Gradient checkpointing per transformer block: auto (on from 512 px), on, off. The gradients are the same.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub gradient_checkpointing: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        TrainCmd::Step(s) => step(s),
    }
}

fn step(a: StepArgs) -> anyhow::Result<()> {
    refuse_existing(&a.out, a.force)?;
    let checkpointing = crate::train::step::Checkpointing::parse(&a.gradient_checkpointing)?;
    let (session, _) = super::session_args::session(&a.models)?;
    let mut s = session.lock().map_err(|_| anyhow::anyhow!("session lock poisoned"))?;
    let t = std::time::Instant::now();
    let out = s.train_step(&a.inputs, checkpointing)?;
    let loss = out.iter().find(|(k, _)| k == "output.loss").map(|(_, t)| t.to_scalar::<f32>()).transpose()?;
    let raw = out
        .iter()
        .map(|(k, t)| Ok((k.clone(), RawTensor::from_tensor(t, candle_core::DType::F32)?)))
        .collect::<crate::Result<Vec<_>>>()?;
    let grads = out.iter().filter(|(k, _)| k.starts_with("grad.")).count();
    write_file(&a.out, &safetensors_bytes(&raw, Default::default())?, a.force)?;
    println!(
        "loss {:.6} · {} gradient tensors · {:.1} s → {}",
        loss.unwrap_or(f32::NAN),
        grads,
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
