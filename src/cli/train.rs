//! `hyperlora train`: one stage of the hypernetwork's curriculum (base, id-clip, id-arcface) on a dataset, with
//! checkpoints and resume; `hyperlora train step`: one training step with every gradient, for checking other code
//! against ours.
use crate::files::output::{refuse_existing, safetensors_bytes, write_file, RawTensor};
use crate::session::{Dims, TrainRun};
use crate::train::adamw::{AdamWConfig, Schedule};
use crate::train::curriculum::{InitOptions, Stage, Strengths};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, long_about = RUN_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Option<TrainCmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

const RUN_HELP: &str =
    "Train the HyperLoRA hypernetwork: one stage of the three-stage curriculum, with SDXL, CLIP and \
antelopev2 frozen.

  base        the Base branch (base_resampler.*, *.base_{down,up}_basis) on the face-blurred Base condition
  id-clip     the ID resampler and ID bases, except the ArcFace path (id_projector, proj_in, attn2, norm_attn2_*);
              the Base branch is applied frozen at --base-strength
  id-arcface  the whole ID branch, id_projector included; the Base branch stays frozen

Without --from, a fresh variant is made in OUT/init (modules from the SDXL UNet, width from CLIP, the rest from \
--dims). Checkpoints go to OUT/checkpoint-STEP in the release layout (load one with --hyperlora or --from), with \
train_state.safetensors beside it for --resume. The loss log is OUT/log.csv; samples of held-out photos go to \
OUT/samples/step-STEP. Ctrl-C writes a checkpoint and stops.

Example (the demo set):
  hyperlora train --demo --data photos/ --stage base --steps 40 --out runs/base
  hyperlora train --demo --data photos/ --stage id-clip --from runs/base/checkpoint-40 --steps 40 --out runs/id
  hyperlora train --demo --data photos/ --stage id-arcface --from runs/id/checkpoint-40 --steps 40 --out runs/arc";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub models: crate::front::args::ModelArgs,
    /// The dataset: images plus a metadata.jsonl ({"file_name", "text", "box": [x1,y1,x2,y2]} a line; text and box
    /// optional), or images with same-name .txt captions.
    #[arg(long, value_name = "DIR", required = true)]
    pub data: Option<PathBuf>,
    /// The curriculum stage: base, id-clip or id-arcface.
    #[arg(long, value_name = "base|id-clip|id-arcface", required = true)]
    pub stage: Option<String>,
    /// Train up to this step (a resume continues up to it).
    #[arg(long, required = true)]
    pub steps: Option<usize>,
    /// The run's folder (new, or with --resume an earlier run's).
    #[arg(long, value_name = "DIR", required = true)]
    pub out: Option<PathBuf>,
    /// Start from this variant folder (a release variant or a checkpoint); without it a fresh variant is made.
    #[arg(long, value_name = "VARIANT")]
    pub from: Option<PathBuf>,
    /// A fresh variant's dimensions: release, tiny (the demo's), or a JSON file of config.json's fields (the rest
    /// the release's). Default: the demo's with --demo, else the release's.
    #[arg(long, default_value = "auto", value_name = "release|tiny|FILE.json")]
    pub dims: String,
    /// Training size in pixels (default: the model's native size).
    #[arg(long)]
    pub size: Option<usize>,
    /// Rows per optimiser step (each row carries its own LoRA, so a batch of B is B UNet passes).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Batches whose gradients are accumulated into one optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// AdamW weight decay (decoupled, on the trained tensors only).
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Learning rate after warm-up: constant, or cosine to 0 at --steps.
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Clip the gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// The strength of the frozen Base branch in the ID stages (and of the Base branch in stage base).
    #[arg(long, default_value_t = 1.0)]
    pub base_strength: f64,
    /// Write a checkpoint every N steps (0: only at the end; Ctrl-C always writes one).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Make sample images of the held-out photos every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Held-out photos for the samples (default: the dataset's last usable image, then not trained on).
    #[arg(long, value_name = "PHOTO", num_args = 1..)]
    pub eval_photos: Vec<PathBuf>,
    /// Sampling steps of each sample image.
    #[arg(long, default_value_t = 20)]
    pub eval_steps: usize,
    /// Continue the run in --out from its latest checkpoint (bit for bit as if never stopped).
    #[arg(long)]
    pub resume: bool,
    /// Seed of the data order, timesteps, noise and a fresh variant's weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A fresh variant's σ for every Linear weight of the id projector and resamplers.
    #[arg(long, default_value_t = 0.02)]
    pub init_std: f64,
    /// A fresh variant's σ for the up bases (0: every LoRA starts at zero, so the UNet starts unchanged).
    #[arg(long, default_value_t = 0.0)]
    pub init_up_std: f64,
    /// Caption of images with none (default: the trigger words + "a photo of a person").
    #[arg(long)]
    pub caption: Option<String>,
    /// Where the frozen encodings are cached (default OUT/cache; share one between stages).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Gradient checkpointing per transformer block: auto (on from 512 px), on, off.
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub gradient_checkpointing: String,
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
        Some(TrainCmd::Step(s)) => step(s),
        None => curriculum(a.run),
    }
}

fn curriculum(a: RunArgs) -> anyhow::Result<()> {
    let need = |o: Option<PathBuf>, flag: &str| o.ok_or_else(|| anyhow::anyhow!("{flag} is required"));
    let run = TrainRun {
        data: need(a.data, "--data")?,
        stage: Stage::parse(a.stage.as_deref().unwrap_or(""))?,
        steps: a.steps.ok_or_else(|| anyhow::anyhow!("--steps is required"))?,
        out: need(a.out, "--out")?,
        from: a.from,
        dims: Dims::parse(&a.dims),
        demo: a.models.demo,
        init: InitOptions { seed: a.seed, linear_std: a.init_std, up_std: a.init_up_std },
        size: a.size,
        batch: a.batch,
        grad_accum: a.grad_accum,
        adamw: AdamWConfig { lr: a.lr, weight_decay: a.weight_decay, ..AdamWConfig::default() },
        warmup: a.warmup,
        schedule: Schedule::parse(&a.schedule)?,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        strengths: Strengths { id: 1.0, base: a.base_strength },
        save_every: a.save_every,
        eval_every: a.eval_every,
        eval_photos: a.eval_photos,
        eval_steps: a.eval_steps,
        resume: a.resume,
        seed: a.seed,
        caption: a.caption,
        cache: a.cache,
        checkpointing: crate::train::step::Checkpointing::parse(&a.gradient_checkpointing)?,
    };
    run.validate()?;
    let (session, _) = super::session_args::session(&a.models)?;
    super::session_args::install_ctrl_c(session.lock().map_err(|_| anyhow::anyhow!("session lock"))?.cancel_flag());
    let mut s = session.lock().map_err(|_| anyhow::anyhow!("session lock poisoned"))?;
    let t = std::time::Instant::now();
    let o = s.train_curriculum(&run)?;
    if !o.skipped.is_empty() {
        println!("{} image(s) skipped (no usable face):", o.skipped.len());
        for (at, why) in &o.skipped {
            println!("  {at}: {why}");
        }
    }
    println!(
        "stage {} at step {} in {:.1} s → {}",
        run.stage.name(),
        o.step,
        t.elapsed().as_secs_f64(),
        o.checkpoint.display()
    );
    println!("log {}", run.out.join("log.csv").display());
    println!("eval loss {:.6} -> {:.6}", o.eval_before, o.eval_after);
    if o.interrupted {
        eprintln!("interrupted at step {}: continue with --resume", o.step);
        std::process::exit(130);
    }
    Ok(())
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
