//! The hypernetwork's three-stage curriculum (spec §6): which weights each stage trains, one training row through
//! the staged step, a fresh variant's initialisation, and checkpoints in the release layout with the optimiser
//! state beside them. The loop that runs it (data, encoders, samples) is the session's.
use super::adamw::{AdamW, AdamWConfig, Moments};
use super::step::{staged_step, Batch, Branches, FullInputs};
use crate::error::{Error, Result};
use crate::files::output::{safetensors_bytes, stream_safetensors, write_file, RawTensor, StreamedTensor};
use crate::hyper::config::HyperConfig;
use crate::hyper::id_projector::IdProjector;
use crate::hyper::modules::{self, ModuleSpec};
use crate::hyper::resampler::Resampler;
use crate::hyper::synth::Bases;
use crate::hyper::trainable::{Trainable, BASES, BASE_RESAMPLER, ID_PROJECTOR, RESAMPLER};
use crate::hyper::{
    HyperLora, BASES_FILE, BASE_RESAMPLER_FILE, CONFIG_FILE, ID_PROJECTOR_FILE, MODULES_JSON, RESAMPLER_FILE,
};
use crate::sdxl::unet::UNet;
use crate::weights::{Expected, StFile};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The curriculum's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Base-LoRA warm-up: `base_resampler.*` and the Base bases, on the face-blurred Base condition.
    Base,
    /// ID-LoRA with CLIP features: the ID resampler and ID bases, except the ArcFace path.
    IdClip,
    /// ArcFace fine-tuning: the whole ID branch, `id_projector` included.
    IdArcface,
}

impl Stage {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "base" => Ok(Stage::Base),
            "id-clip" => Ok(Stage::IdClip),
            "id-arcface" => Ok(Stage::IdArcface),
            o => Err(Error::InvalidValue(format!("stage `{o}`: use base, id-clip or id-arcface"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Stage::Base => "base",
            Stage::IdClip => "id-clip",
            Stage::IdArcface => "id-arcface",
        }
    }

    /// Whether this stage trains the weight `group.key` (`Trainable`'s names).
    pub fn trains(self, name: &str) -> bool {
        let basis = |kind: &str| {
            name.strip_prefix(&format!("{BASES}.")).is_some_and(|k| {
                k.ends_with(&format!(".{kind}_down_basis")) || k.ends_with(&format!(".{kind}_up_basis"))
            })
        };
        match self {
            Stage::Base => name.starts_with(&format!("{BASE_RESAMPLER}.")) || basis("base"),
            Stage::IdClip => {
                basis("id") || name.strip_prefix(&format!("{RESAMPLER}.")).is_some_and(|k| !is_arcface_path(k))
            }
            Stage::IdArcface => {
                basis("id")
                    || name.starts_with(&format!("{RESAMPLER}."))
                    || name.starts_with(&format!("{ID_PROJECTOR}."))
            }
        }
    }

    /// The LoRA branches a row applies: the Base stage the Base branch alone; the ID stages the ID branch, with the
    /// Base branch frozen beside it when the variant has one.
    pub fn branches(self, has_base: bool) -> Branches {
        match self {
            Stage::Base => Branches { id: false, base: true },
            Stage::IdClip | Stage::IdArcface => Branches { id: true, base: has_base },
        }
    }
}

/// A key of the ID resampler on the ArcFace path: `proj_in`, every `attn2` and every `norm_attn2_*`.
fn is_arcface_path(key: &str) -> bool {
    key.starts_with("proj_in.") || key.contains(".attn2.") || key.contains(".norm_attn2_")
}

/// One training row: a photo's cached encodings, its timestep and noise.
pub struct Row<'a> {
    pub enc: &'a Encodings,
    pub timestep: usize,
    pub noise: Tensor,
}

/// A training image's frozen encoders' outputs (computed once, cached by content; see the session's trainer).
pub struct Encodings {
    /// [1, 4, h, w]: VAE latent mean × scaling factor at the training size.
    pub latents: Tensor,
    /// [1, 77, C] and [1, P]: the caption's encodings.
    pub context: Tensor,
    pub text_embeds: Tensor,
    /// [1, 6]: original size, crop top-left, target size.
    pub time_ids: Tensor,
    /// [1, E]: the ArcFace embedding.
    pub arcface: Tensor,
    /// [1, T, W]: the ID cutout's CLIP features.
    pub clip: Tensor,
    /// [1, T, W]: the Base condition's CLIP features (face blurred, spec §3.3).
    pub base_clip: Tensor,
}

const ENCODING_KEYS: [&str; 7] = ["latents", "context", "text_embeds", "time_ids", "arcface", "clip", "base_clip"];

impl Encodings {
    fn tensors(&self) -> [&Tensor; 7] {
        [&self.latents, &self.context, &self.text_embeds, &self.time_ids, &self.arcface, &self.clip, &self.base_clip]
    }
    /// Write as one f32 safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let raw = ENCODING_KEYS
            .iter()
            .zip(self.tensors())
            .map(|(k, t)| Ok((k.to_string(), RawTensor::from_tensor(t, DType::F32)?)))
            .collect::<Result<Vec<_>>>()?;
        write_file(path, &safetensors_bytes(&raw, HashMap::new())?, true)
    }
    /// Read back, the UNet's inputs in `dtype` on `device` (the encoders' outputs in f32).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let f = StFile::read(path)?;
        let t = |k: &str, d: DType| f.tensor(k, d, device);
        Ok(Encodings {
            latents: t("latents", dtype)?,
            context: t("context", dtype)?,
            text_embeds: t("text_embeds", dtype)?,
            time_ids: t("time_ids", dtype)?,
            arcface: t("arcface", DType::F32)?,
            clip: t("clip", DType::F32)?,
            base_clip: t("base_clip", DType::F32)?,
        })
    }
}

/// The strengths a row applies the branches at.
#[derive(Debug, Clone, Copy)]
pub struct Strengths {
    pub id: f64,
    pub base: f64,
}

/// The loss of one row and the gradient of each of `tr`'s variables (its `vars()` order).
pub fn row_grads(
    unet: &mut UNet,
    tr: &Trainable,
    stage: Stage,
    row: &Row,
    alphas_cumprod: &[f64],
    strengths: Strengths,
) -> Result<(f64, Vec<Tensor>)> {
    let e = row.enc;
    let inputs = FullInputs {
        arcface: e.arcface.clone(),
        clip: e.clip.clone(),
        base_clip: Some(e.base_clip.clone()),
        batch: Batch {
            x0: e.latents.clone(),
            noise: row.noise.clone(),
            timesteps: vec![row.timestep],
            context: e.context.clone(),
            text_embeds: e.text_embeds.clone(),
            time_ids: e.time_ids.clone(),
        },
        alphas_cumprod: alphas_cumprod.to_vec(),
        strength_id: strengths.id,
        strength_base: strengths.base,
    };
    let s = staged_step(unet, tr, &inputs, stage.branches(tr.has_base()))?;
    Ok((s.loss, s.var_grads))
}

// ---------------------------------------------------------------------------------------------------------------
// a fresh variant

/// How a fresh variant starts (documented in the README's Training section; each is a flag of `train`).
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    pub seed: u64,
    /// σ of every Linear weight of the id projector and the resamplers (biases 0, LayerNorms 1 and 0).
    pub linear_std: f64,
    /// σ of the up bases (`*_up_basis`). 0: every LoRA starts at exactly zero, so the UNet starts unchanged.
    pub up_std: f64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { seed: 0, linear_std: 0.02, up_std: 0.0 }
    }
}

/// Normal(0, σ²) samples (Box–Muller over the crate's generator).
fn normal(n: usize, std: f64, rng: &mut crate::rng::Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The starting value of one weight of a fresh variant (`file` is the group: id_projector, resampler, …).
fn init_tensor(group: &str, e: &Expected, o: &InitOptions) -> Vec<f32> {
    let n: usize = e.shape.iter().product();
    let key = e.key.as_str();
    let seed = key
        .bytes()
        .chain(group.bytes())
        .fold(o.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut rng = crate::rng::Rng::new(seed);
    let is_norm = key.contains("norm") || (group == ID_PROJECTOR && key.starts_with("2."));
    if group == BASES {
        if key.ends_with("_down_basis") {
            // [K, in, r]: with unit coefficients the down factor is N(0, 1/in), as kaiming for a Linear
            return normal(n, 1.0 / (e.shape[1] as f64).sqrt(), &mut rng);
        }
        return if o.up_std > 0.0 { normal(n, o.up_std, &mut rng) } else { vec![0.0; n] };
    }
    if is_norm {
        return vec![if key.ends_with(".weight") { 1.0 } else { 0.0 }; n];
    }
    if key.ends_with(".bias") {
        return vec![0.0; n];
    }
    if key == "latents" {
        return normal(n, 1.0 / (e.shape[2] as f64).sqrt(), &mut rng);
    }
    // the ArcFace path adds nothing until stage 3 trains it
    if group == RESAMPLER && key.contains(".attn2.to_out.") {
        return vec![0.0; n];
    }
    normal(n, o.linear_std, &mut rng)
}

/// The expected keys of each file of a variant of `cfg`, with their group names.
fn layout(cfg: &HyperConfig, modules_: &[ModuleSpec]) -> Vec<(&'static str, &'static str, Vec<Expected>)> {
    let mut files = vec![
        (ID_PROJECTOR_FILE, ID_PROJECTOR, IdProjector::expected(cfg)),
        (RESAMPLER_FILE, RESAMPLER, Resampler::expected(&cfg.resampler)),
        (BASES_FILE, BASES, Bases::expected(modules_, cfg.hyper_dim, cfg.lora_rank, cfg.base_lora_rank)),
    ];
    if cfg.has_base() {
        let base = crate::hyper::config::ResamplerConfig { n_conds: 1, ..cfg.resampler.clone() };
        files.push((BASE_RESAMPLER_FILE, BASE_RESAMPLER, Resampler::expected(&base)));
    }
    files
}

/// Write a fresh variant of `cfg` for `modules_` (f32, release layout plus `config.json`) into the new folder
/// `dir`, atomically (a temporary folder renamed into place).
pub fn init_variant(dir: &Path, cfg: &HyperConfig, modules_: &[ModuleSpec], o: &InitOptions) -> Result<()> {
    in_new_folder(dir, |tmp| {
        write_bytes(&tmp.join(MODULES_JSON), modules::to_json(modules_).as_bytes())?;
        write_bytes(&tmp.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg.to_json()).expect("json").as_bytes())?;
        for (file, group, expected) in layout(cfg, modules_) {
            let tensors: Vec<StreamedTensor> = expected
                .iter()
                .map(|e| StreamedTensor { name: e.key.clone(), dtype: safetensors::Dtype::F32, shape: e.shape.clone() })
                .collect();
            stream_safetensors(&tmp.join(file), &tensors, &HashMap::new(), |i, out| {
                let v = init_tensor(group, &expected[i], o);
                out.write_all(crate::weights::as_bytes(&v)).map_err(|e| Error::write(tmp.join(file), e))
            })?;
        }
        Ok(())
    })
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, false)
}

/// Make the folder `dir` (which must not exist) by filling a temporary sibling and renaming it into place, so a
/// crash or Ctrl-C never leaves a partial folder under the final name.
fn in_new_folder(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        return Err(Error::Exists { path: dir.to_path_buf() });
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::write(&tmp, e))?;
    let r = fill(&tmp).and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::write(dir, e)));
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

// ---------------------------------------------------------------------------------------------------------------
// checkpoints

/// Everything besides the weights that a resume needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    pub stage: Stage,
    /// Optimiser steps taken.
    pub step: usize,
    /// The row generator's state (timesteps and noise).
    pub rng: u64,
    pub order: super::data::Order,
    /// A fingerprint of the dataset's usable items and the training size (a resume on other data is refused).
    pub data: String,
}

pub const STATE_FILE: &str = "train_state.safetensors";

/// The checkpoint folder of step `step` under `out`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The latest complete checkpoint under `out` (the highest step whose folder holds a train state).
pub fn latest_checkpoint(out: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path().join(STATE_FILE).is_file().then(|| (step, e.path()))
        })
        .max_by_key(|(s, _)| *s)
}

/// Write a checkpoint into the new folder `dir`: the variant in the release layout (`hyper_lora_modules.json` as
/// `src` has it, `config.json`, and every weight file with each tensor `tr` trains in f32 and every other tensor
/// copied from `src`'s file byte for byte, dtype included), and the optimiser state.
pub fn write_checkpoint(dir: &Path, src: &HyperLora, tr: &Trainable, opt: &AdamW, state: &TrainState) -> Result<()> {
    let trained: HashMap<&str, &Var> = tr.vars().iter().map(|(n, v)| (n.as_str(), v)).collect();
    in_new_folder(dir, |tmp| {
        let json = crate::files::read_regular(&src.dir().join(MODULES_JSON))?;
        write_bytes(&tmp.join(MODULES_JSON), &json)?;
        let mut cfg = src.config().to_json();
        cfg["trained"] = serde_json::json!({ "stage": state.stage.name(), "step": state.step });
        write_bytes(&tmp.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg).expect("json").as_bytes())?;
        let mut files = vec![(ID_PROJECTOR_FILE, ID_PROJECTOR), (RESAMPLER_FILE, RESAMPLER), (BASES_FILE, BASES)];
        if src.has_base() {
            files.push((BASE_RESAMPLER_FILE, BASE_RESAMPLER));
        }
        for (file, group) in files {
            // streamed tensor by tensor: a release-size bases file never sits in memory
            let f = StFile::open(src.dir().join(file))?;
            let keys: Vec<String> = f.keys().into_iter().collect();
            let vars: Vec<Option<&Var>> =
                keys.iter().map(|k| trained.get(format!("{group}.{k}").as_str()).copied()).collect();
            let layout = keys
                .iter()
                .zip(&vars)
                .map(|(k, v)| StreamedTensor {
                    name: k.clone(),
                    dtype: if v.is_some() {
                        safetensors::Dtype::F32
                    } else {
                        f.dtype(k).unwrap_or(safetensors::Dtype::F32)
                    },
                    shape: f.shape(k).unwrap_or(&[]).to_vec(),
                })
                .collect::<Vec<_>>();
            stream_safetensors(&tmp.join(file), &layout, &f.metadata(), |i, out| {
                let bytes = match vars[i] {
                    Some(v) => RawTensor::from_tensor(v.as_tensor(), DType::F32)?.data,
                    None => f.raw(&keys[i]).unwrap_or(&[]).to_vec(),
                };
                out.write_all(&bytes).map_err(|e| Error::write(tmp.join(file), e))
            })?;
        }
        write_state(&tmp.join(STATE_FILE), tr, opt, state)
    })
}

fn write_state(path: &Path, tr: &Trainable, opt: &AdamW, s: &TrainState) -> Result<()> {
    let mut raw = Vec::new();
    for ((name, _), m) in tr.vars().iter().zip(&opt.moments) {
        raw.push((format!("adamw.m.{name}"), RawTensor::from_tensor(&m.m, DType::F32)?));
        raw.push((format!("adamw.v.{name}"), RawTensor::from_tensor(&m.v, DType::F32)?));
    }
    let c = opt.config;
    let meta: HashMap<String, String> = [
        ("format", "hyperlora-train-state-1".to_string()),
        ("stage", s.stage.name().into()),
        ("step", s.step.to_string()),
        ("adamw_step", opt.step.to_string()),
        ("rng", s.rng.to_string()),
        ("order_seed", s.order.seed.to_string()),
        ("order_epoch", s.order.epoch.to_string()),
        ("order_index", s.order.index.to_string()),
        ("data", s.data.clone()),
        ("lr", c.lr.to_string()),
        ("beta1", c.beta1.to_string()),
        ("beta2", c.beta2.to_string()),
        ("eps", c.eps.to_string()),
        ("weight_decay", c.weight_decay.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_bytes(path, &safetensors_bytes(&raw, meta)?)
}

/// Read a checkpoint's train state for `stage`: the state, and an optimiser over `tr`'s variables with its
/// moments. A state of another stage is refused, naming both.
pub fn read_state(path: &Path, tr: &Trainable, config: AdamWConfig, stage: Stage) -> Result<(TrainState, AdamW)> {
    let f = StFile::read(path)?;
    let meta = f.metadata();
    let get = |k: &str| -> Result<String> {
        meta.get(k).cloned().ok_or_else(|| Error::invalid(path, format!("no `{k}` in the train state's metadata")))
    };
    let num = |k: &str| -> Result<u64> {
        get(k)?.parse::<u64>().map_err(|_| Error::invalid(path, format!("`{k}` is not a whole number")))
    };
    if get("format")? != "hyperlora-train-state-1" {
        return Err(Error::invalid(path, "not a hyperlora train state (format hyperlora-train-state-1)"));
    }
    let state = TrainState {
        stage: Stage::parse(&get("stage")?)?,
        step: num("step")? as usize,
        rng: num("rng")?,
        order: super::data::Order {
            seed: num("order_seed")?,
            epoch: num("order_epoch")?,
            index: num("order_index")? as usize,
        },
        data: get("data")?,
    };
    if state.stage != stage {
        return Err(Error::invalid(
            path,
            format!(
                "is the state of a stage {} run, not {}: resume with --stage {}",
                state.stage.name(),
                stage.name(),
                state.stage.name()
            ),
        ));
    }
    let params: Vec<&Var> = tr.vars().iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(config, &params)?;
    opt.step = num("adamw_step")? as usize;
    for ((name, v), m) in tr.vars().iter().zip(opt.moments.iter_mut()) {
        let load = |k: String| -> Result<Tensor> {
            if !f.contains(&k) {
                return Err(Error::invalid(path, format!("no `{k}`: the state belongs to another stage or variant")));
            }
            let t = f.tensor(&k, DType::F32, v.device())?;
            if t.dims() != v.dims() {
                return Err(Error::invalid(path, format!("`{k}` is {:?}, the weight {:?}", t.dims(), v.dims())));
            }
            Ok(t)
        };
        *m = Moments { m: load(format!("adamw.m.{name}"))?, v: load(format!("adamw.v.{name}"))? };
    }
    Ok((state, opt))
}

/// The trainable names, compressed for a start-up listing: indices (of modules and layers) become `*`, with a
/// count per pattern, in first-seen order.
pub fn name_patterns(names: &[&str]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for n in names {
        let raw: Vec<&str> = n.split('.').collect();
        let parts: Vec<&str> = raw
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let index = i >= 1 && (raw[i - 1] == "layers" || (i == 1 && raw[0] == BASES));
                if index && s.parse::<usize>().is_ok() {
                    "*"
                } else {
                    s
                }
            })
            .collect();
        let pat = parts.join(".");
        match out.iter_mut().find(|(q, _)| *q == pat) {
            Some((_, c)) => *c += 1,
            None => out.push((pat, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_select_their_weights() {
        let b = Stage::Base;
        assert!(b.trains("base_resampler.latents") && b.trains("bases.3.to_k.base_up_basis"));
        assert!(!b.trains("bases.3.to_k.id_up_basis") && !b.trains("resampler.latents"));
        let c = Stage::IdClip;
        assert!(c.trains("resampler.layers.1.attn3.to_q.weight") && c.trains("bases.0.to_out.id_down_basis"));
        assert!(c.trains("resampler.proj_in_2.weight") && c.trains("resampler.latents"));
        for k in
            ["resampler.proj_in.weight", "resampler.layers.0.attn2.to_k.weight", "resampler.layers.2.norm_attn2_x.bias"]
        {
            assert!(!c.trains(k), "{k}");
            assert!(Stage::IdArcface.trains(k), "{k}");
        }
        assert!(!c.trains("id_projector.0.weight") && Stage::IdArcface.trains("id_projector.0.weight"));
        assert!(!Stage::IdArcface.trains("base_resampler.latents"));
        assert!(!Stage::IdArcface.trains("bases.0.to_q.base_down_basis"));
    }

    #[test]
    fn patterns_count_repeats() {
        let p = name_patterns(&[
            "bases.0.to_q.id_down_basis",
            "bases.1.to_q.id_down_basis",
            "resampler.layers.0.attn1.to_out.0.weight",
            "resampler.layers.1.attn1.to_out.0.weight",
        ]);
        assert_eq!(
            p,
            vec![
                ("bases.*.to_q.id_down_basis".to_string(), 2),
                ("resampler.layers.*.attn1.to_out.0.weight".to_string(), 2)
            ]
        );
    }
}
