//! The hypernetwork's curriculum trainer from the session: the dataset's frozen encodings (computed once, cached on
//! disk by content, read back row by row so a dataset larger than memory streams), a fresh or given variant, the
//! loop (rows → staged steps → AdamW), checkpoints with their train state, `log.csv`, sample images of held-out
//! photos, and Ctrl-C (a checkpoint, then stop).
use super::*;
use crate::hyper::config::HyperConfig;
use crate::train::adamw::{clip_grad_norm, lr_at, AdamW, AdamWConfig, Schedule};
use crate::train::curriculum::{
    checkpoint_dir, init_variant, latest_checkpoint, name_patterns, read_state, row_grads, write_checkpoint, Encodings,
    InitOptions, Row, Stage, Strengths, TrainState, STATE_FILE,
};
use crate::train::data::{Dataset, Item, Order};
use crate::train::step::Checkpointing;
use sha2::Digest;
use std::io::Write;

/// The dimensions of a fresh variant (`--dims`).
#[derive(Debug, Clone, PartialEq)]
pub enum Dims {
    /// The release's (spec §2.1), or the demo's own on the demo set.
    Auto,
    Release,
    Tiny,
    /// A JSON file with `config.json`'s fields; those it leaves out are the release's.
    File(PathBuf),
}

impl Dims {
    pub fn parse(s: &str) -> Self {
        match s {
            "auto" => Dims::Auto,
            "release" => Dims::Release,
            "tiny" => Dims::Tiny,
            f => Dims::File(PathBuf::from(f)),
        }
    }
}

/// A curriculum run (`hyperlora train`).
#[derive(Debug, Clone)]
pub struct TrainRun {
    pub data: PathBuf,
    pub stage: Stage,
    /// The step to train to (a resume continues up to it).
    pub steps: usize,
    pub out: PathBuf,
    /// The variant to start from; none: a fresh one (`dims`, `init`), written to `OUT/init`.
    pub from: Option<PathBuf>,
    pub dims: Dims,
    /// Whether the session runs on the demo set (`Dims::Auto` then means the demo's dimensions).
    pub demo: bool,
    pub init: InitOptions,
    pub size: Option<usize>,
    /// Rows per optimiser step, and micro-batches accumulated per step: each step averages the gradient of
    /// batch × grad_accum rows.
    pub batch: usize,
    pub grad_accum: usize,
    pub adamw: AdamWConfig,
    pub warmup: usize,
    pub schedule: Schedule,
    pub max_grad_norm: Option<f64>,
    pub strengths: Strengths,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Sample the held-out photos every N steps (0: never).
    pub eval_every: usize,
    /// The held-out photos; none: the dataset's last usable image is held out (when `eval_every` > 0).
    pub eval_photos: Vec<PathBuf>,
    pub eval_steps: usize,
    pub resume: bool,
    pub seed: u64,
    /// The caption of images with none (default: the trigger words + "a photo of a person").
    pub caption: Option<String>,
    /// Where the encodings are cached (default `OUT/cache`).
    pub cache: Option<PathBuf>,
    pub checkpointing: Checkpointing,
}

impl TrainRun {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > 10_000_000 {
            return Err(Error::InvalidValue(format!("steps must be 1 to 10000000, got {}", self.steps)));
        }
        if self.batch == 0 || self.batch > 4096 || self.grad_accum == 0 || self.grad_accum > 4096 {
            return Err(Error::InvalidValue(format!(
                "batch {} and gradient accumulation {} must be 1 to 4096",
                self.batch, self.grad_accum
            )));
        }
        self.adamw.validate()?;
        for (what, v) in [("Base strength", self.strengths.base), ("ID strength", self.strengths.id)] {
            if !v.is_finite() {
                return Err(Error::InvalidValue(format!("{what} {v} is not a number")));
            }
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidValue(format!("gradient clipping norm {c} must be positive")));
            }
        }
        if !(self.init.linear_std.is_finite() && self.init.linear_std >= 0.0 && self.init.up_std.is_finite())
            || self.init.up_std < 0.0
        {
            return Err(Error::InvalidValue("init standard deviations must be non-negative numbers".into()));
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    pub step: usize,
    /// Ctrl-C stopped it (after writing `checkpoint`).
    pub interrupted: bool,
    /// Images with no usable face: (where listed, why).
    pub skipped: Vec<(String, String)>,
    /// Mean loss over a fixed (timestep, noise) set of the training images, at the start and the end of this run.
    pub eval_before: f64,
    pub eval_after: f64,
}

/// A usable image: its item, its cached encodings, its ArcFace embedding (for face scores) and caption.
struct Usable {
    item: Item,
    cache: PathBuf,
    key: String,
    arcface: Vec<f32>,
    caption: String,
}

/// Images the eval loss is measured on (the first of the training set).
const EVAL_IMAGES: usize = 8;
const LOG_HEADER: &str = "step,loss,lr,seconds\n";

impl Session {
    /// Run (or resume) one stage of the curriculum. Progress goes to the listener; Ctrl-C writes a checkpoint and
    /// stops (`interrupted`).
    pub fn train_curriculum(&mut self, r: &TrainRun) -> Result<TrainOutcome> {
        self.cancel.store(false, Ordering::Relaxed);
        let _heard = crate::cancel::scope(self.cancel.clone());
        r.validate()?;
        let data = Dataset::open(&r.data)?;
        let resume_from = if r.resume {
            Some(latest_checkpoint(&r.out).ok_or_else(|| {
                Error::invalid(&r.out, "holds no checkpoint with a train state to resume (run without --resume first)")
            })?)
        } else {
            if r.out.exists() && std::fs::read_dir(&r.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
                return Err(Error::invalid(
                    &r.out,
                    "exists and is not empty: give --resume to continue its run, or another --out",
                ));
            }
            None
        };
        let size = self.training_size(r.size)?;
        let on = r.checkpointing.at(size);
        crate::train::step::check_memory(&self.sdxl()?.unet, 1, size, on)?;
        self.apply(None)?;
        // --- the variant
        let variant_dir = match (&resume_from, &r.from) {
            (Some((_, dir)), _) => dir.clone(),
            (None, Some(from)) => from.clone(),
            (None, None) => self.fresh_variant(r)?,
        };
        let hyper = self.timed("hyperlora", &variant_dir, || HyperLora::load(&variant_dir, &LoadOptions::default()))?;
        if r.stage == Stage::Base && !hyper.has_base() {
            return Err(Error::Incompatible(format!(
                "stage base trains the Base branch, but {} has none (no {}; the released variants have none): start \
                 from a fresh variant (leave --from out) or one trained with it",
                variant_dir.display(),
                crate::hyper::BASE_RESAMPLER_FILE
            )));
        }
        let dev = self.opts.device.clone();
        let stage = r.stage;
        let tr = hyper.trainable_with(&dev, &|n| stage.trains(n))?;
        let names: Vec<&str> = tr.vars().iter().map(|(n, _)| n.as_str()).collect();
        let params_n: usize = tr.vars().iter().map(|(_, v)| v.elem_count()).sum();
        let mut listing = format!(
            "stage {}: {} trainable tensors, {} parameters (every other tensor is written back unchanged):",
            stage.name(),
            names.len(),
            params_n
        );
        for (p, c) in name_patterns(&names) {
            listing += &format!("\n  {p}{}", if c > 1 { format!(" ×{c}") } else { String::new() });
        }
        self.emit(Event::Note(listing));
        // --- the frozen encodings, once per image
        let cache_dir = r.cache.clone().unwrap_or_else(|| r.out.join("cache"));
        let default_caption = r.caption.clone().unwrap_or_else(|| format!("{TRIGGER}, a photo of a person"));
        let mut skipped = Vec::new();
        let mut usable = Vec::new();
        for item in &data.items {
            self.cancelled()?;
            match self.encode_item(item, &default_caption, size, &cache_dir)? {
                Ok(u) => usable.push(u),
                Err(why) => skipped.push((item.origin.clone(), why)),
            }
        }
        for (at, why) in &skipped {
            self.emit(Event::Note(format!("skipped {at}: {why}")));
        }
        let mut eval_set = Vec::new();
        if r.eval_every > 0 {
            if r.eval_photos.is_empty() {
                if usable.len() < 2 {
                    return Err(Error::invalid(
                        &data.dir,
                        "holds one usable image: samples need a held-out photo (give --eval-photos, or more images)",
                    ));
                }
                eval_set.push(usable.pop().expect("two or more"));
            }
            for p in &r.eval_photos {
                let item = Item { path: p.clone(), caption: None, face_box: None, origin: p.display().to_string() };
                let u = self
                    .encode_item(&item, &default_caption, size, &cache_dir)?
                    .map_err(|why| Error::invalid(p, format!("cannot be a held-out photo: {why}")))?;
                eval_set.push(u);
            }
        }
        if usable.is_empty() {
            return Err(Error::invalid(
                &data.dir,
                format!("has no usable training image ({} skipped: no usable face)", skipped.len()),
            ));
        }
        let mut h = sha2::Sha256::new();
        for u in &usable {
            h.update(u.key.as_bytes());
        }
        let data_print = crate::files::provenance::hex(&h.finalize());
        let params: Vec<&candle_core::Var> = tr.vars().iter().map(|(_, v)| v).collect();
        let (mut state, mut opt) = match &resume_from {
            Some((_, dir)) => {
                let (s, o) = read_state(&dir.join(STATE_FILE), &tr, r.adamw, stage)?;
                if s.data != data_print {
                    return Err(Error::invalid(
                        dir,
                        "was trained on other data or at another size (the dataset's usable images changed): resume with the same --data and --size",
                    ));
                }
                (s, o)
            }
            None => (
                TrainState {
                    stage,
                    step: 0,
                    rng: r.seed ^ 0x7EA1_0000,
                    order: Order::new(r.seed),
                    data: data_print.clone(),
                },
                AdamW::new(r.adamw, &params)?,
            ),
        };
        if state.step >= r.steps {
            return Err(Error::InvalidValue(format!(
                "the checkpoint is at step {}: give --steps above it to train on",
                state.step
            )));
        }
        // --- log.csv: kept up to the resumed step
        let log_path = r.out.join("log.csv");
        let mut log_text = String::from(LOG_HEADER);
        if resume_from.is_some() {
            if let Ok(old) = crate::files::read_text(&log_path) {
                for line in old.lines().skip(1) {
                    let step = line.split(',').next().and_then(|s| s.parse::<usize>().ok());
                    if step.is_some_and(|s| s <= state.step) {
                        log_text += line;
                        log_text.push('\n');
                    }
                }
            }
        }
        crate::files::output::write_file(&log_path, log_text.as_bytes(), true)?;
        let mut log =
            std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| Error::write(&log_path, e))?;
        // --- the loop
        let ac = self.sdxl()?.scheduler.alphas_cumprod();
        let eval_items: Vec<&Usable> = usable.iter().take(EVAL_IMAGES).collect();
        let eval_before = self.curriculum_eval(&tr, stage, &eval_items, &ac, r.strengths)?;
        self.emit(Event::Note(format!("eval loss at step {}: {eval_before:.6}", state.step)));
        let first = state.step;
        let t0 = Instant::now();
        let mut rng = crate::rng::Rng::new(state.rng);
        let mut last_saved = None;
        let mut interrupted = false;
        let rows = r.batch * r.grad_accum;
        let dtype = self.opts.dtype;
        while state.step < r.steps {
            let lr = lr_at(r.adamw.lr, r.schedule, r.warmup, state.step, r.steps);
            let mut loss = 0.0;
            let mut acc: Vec<Tensor> = Vec::new();
            for _ in 0..rows {
                let u = &usable[state.order.next(usable.len())];
                let enc = Encodings::load(&u.cache, &dev, dtype)?;
                let timestep = (rng.next_u64() % ac.len() as u64) as usize;
                let noise = crate::sdxl::pipeline::seeded_noise(rng.next_u64(), enc.latents.dims(), &dev)?
                    .to_dtype(enc.latents.dtype())?;
                let row = Row { enc: &enc, timestep, noise };
                let unet = &mut self.sdxl.as_mut().ok_or_else(|| Error::Mismatch("SDXL not loaded".into()))?.unet;
                unet.set_gradient_checkpointing(on);
                let out = row_grads(unet, &tr, stage, &row, &ac, r.strengths);
                unet.set_gradient_checkpointing(false);
                let (l, g) = out?;
                loss += l / rows as f64;
                let g = g.into_iter().map(|g| g / rows as f64).collect::<candle_core::Result<Vec<_>>>()?;
                acc = if acc.is_empty() {
                    g
                } else {
                    acc.iter().zip(g).map(|(a, g)| a + g).collect::<candle_core::Result<_>>()?
                };
            }
            clip_grad_norm(&mut acc, r.max_grad_norm)?;
            opt.step(&params, &acc, lr)?;
            state.step += 1;
            state.rng = rng.state();
            let elapsed = t0.elapsed().as_secs_f64();
            writeln!(log, "{},{},{},{:.3}", state.step, loss, lr, elapsed).map_err(|e| Error::write(&log_path, e))?;
            self.emit(Event::Train { step: state.step, total: r.steps, first: first + 1, loss, lr, elapsed });
            let stop = self.cancel.load(Ordering::Relaxed);
            let due = |every: usize| every > 0 && state.step.is_multiple_of(every);
            if due(r.save_every) || state.step == r.steps || stop {
                let dir = checkpoint_dir(&r.out, state.step);
                write_checkpoint(&dir, &hyper, &tr, &opt, &state)?;
                self.emit(Event::Note(format!("checkpoint {}", dir.display())));
                last_saved = Some(dir);
            }
            if stop {
                interrupted = true;
                break;
            }
            if due(r.eval_every) {
                self.curriculum_samples(r, &tr, &eval_set, state.step, size)?;
                self.cancel.store(false, Ordering::Relaxed);
            }
        }
        let eval_after = self.curriculum_eval(&tr, stage, &eval_items, &ac, r.strengths)?;
        let checkpoint = last_saved.ok_or_else(|| Error::Mismatch("no checkpoint was written".into()))?;
        Ok(TrainOutcome { checkpoint, step: state.step, interrupted, skipped, eval_before, eval_after })
    }

    /// A fresh variant for `r` in `OUT/init`: its modules from the loaded UNet, its CLIP width from the loaded CLIP,
    /// the rest from `r.dims`; the Base branch at half the ID rank (spec §2.1).
    fn fresh_variant(&mut self, r: &TrainRun) -> Result<PathBuf> {
        let modules = crate::synthetic::demo::modules_for_unet(self.sdxl()?.unet.config());
        self.encoders()?;
        let width = self.clip.as_ref().expect("loaded").config().hidden_size;
        let base = HyperConfig::release(modules.len());
        let mut cfg = match &r.dims {
            Dims::Auto if r.demo => HyperConfig::tiny(modules.len(), width),
            Dims::Tiny => HyperConfig::tiny(modules.len(), width),
            Dims::Auto | Dims::Release => base,
            Dims::File(f) => {
                let c = crate::hyper::config::VariantConfigJson::load(f)?
                    .ok_or_else(|| Error::invalid(f, "no such file (--dims release, tiny or a JSON file)"))?;
                let rs = c.resampler.unwrap_or_default();
                let mut cfg = base;
                let r0 = cfg.resampler.clone();
                cfg.resampler = crate::hyper::config::ResamplerConfig {
                    dim: rs.dim.unwrap_or(r0.dim),
                    depth: rs.depth.unwrap_or(r0.depth),
                    heads: rs.heads.unwrap_or(r0.heads),
                    dim_head: rs.dim_head.unwrap_or(r0.dim_head),
                    ff_mult: rs.ff_mult.unwrap_or(r0.ff_mult),
                    output_dim: c.hyper_dim.unwrap_or(r0.output_dim),
                    ..r0
                };
                cfg.num_id_tokens = c.num_id_tokens.unwrap_or(cfg.num_id_tokens);
                cfg.hyper_dim = cfg.resampler.output_dim;
                cfg.lora_rank = c.lora_rank.unwrap_or(cfg.lora_rank);
                cfg.base_lora_rank = c.base_lora_rank;
                let bad = [cfg.resampler.dim, cfg.resampler.depth, cfg.resampler.heads, cfg.resampler.dim_head]
                    .into_iter()
                    .chain([cfg.resampler.ff_mult, cfg.num_id_tokens, cfg.hyper_dim, cfg.lora_rank])
                    .any(|v| v == 0 || v > 1 << 16);
                if bad {
                    return Err(Error::invalid(f, "every dimension must be 1 to 65536"));
                }
                cfg
            }
        };
        cfg.embedding_dim = width;
        cfg.resampler.embedding_dim = width;
        if cfg.base_lora_rank.is_none() {
            cfg.base_lora_rank = Some((cfg.lora_rank / 2).max(1));
        }
        let dir = r.out.join("init");
        init_variant(&dir, &cfg, &modules, &InitOptions { seed: r.seed, ..r.init })?;
        self.emit(Event::Note(format!("fresh variant ({} modules) in {}", modules.len(), dir.display())));
        Ok(dir)
    }

    /// One image's encodings from the cache, or computed and cached; `Err(why)` for an image with no usable face.
    /// A corrupt image or a box off the image is an error naming the file and the line.
    fn encode_item(
        &mut self,
        item: &Item,
        default_caption: &str,
        size: usize,
        cache_dir: &Path,
    ) -> Result<std::result::Result<Usable, String>> {
        let at = |msg: String| Error::invalid(&item.path, format!("{msg} (listed at {})", item.origin));
        let bytes = crate::files::read_regular(&item.path)?;
        let caption = item.caption.clone().unwrap_or_else(|| default_caption.to_string());
        let mut h = sha2::Sha256::new();
        h.update(&bytes);
        let p = &self.opts.paths;
        h.update(format!(
            "{:?}|{:?}|{size}|{caption}|{:?}|{:?}|{:?}",
            item.face_box, p.sdxl, p.clip, p.antelopev2, self.opts.dtype
        ));
        let key = crate::files::provenance::hex(&h.finalize());
        let cache = cache_dir.join(format!("{key}.safetensors"));
        let arcface_of = |enc: &Encodings| -> Result<Vec<f32>> { Ok(enc.arcface.flatten_all()?.to_vec1::<f32>()?) };
        if cache.is_file() {
            if let Ok(enc) = Encodings::load(&cache, &Device::Cpu, DType::F32) {
                let arcface = arcface_of(&enc)?;
                return Ok(Ok(Usable { item: item.clone(), cache, key, arcface, caption }));
            }
        }
        let img =
            Image::load(&item.path).map_err(|e| Error::InvalidValue(format!("{e} (listed at {})", item.origin)))?;
        if let Some(b) = item.face_box {
            if b[0] < 0.0 || b[1] < 0.0 || b[2] > img.width as f64 || b[3] > img.height as f64 {
                return Err(at(format!(
                    "box {b:?} is off the {}×{} image (x1, y1 ≥ 0, x2 ≤ width, y2 ≤ height)",
                    img.width, img.height
                )));
            }
        }
        let pick = item.face_box.map(FacePick::Box).unwrap_or_default();
        let spec =
            PhotoSpec { path: item.path.clone(), options: FaceOptions { pick, ..Default::default() }, base: true };
        let e = match self.encode_photo(&spec) {
            Ok(e) => e,
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let pair = self.training_pair(&img, &item.origin, &caption, size)?;
        let base_clip = e.base_clip.ok_or_else(|| Error::Mismatch("no Base condition was encoded".into()))?;
        let enc = Encodings {
            latents: pair.latents,
            context: pair.context,
            text_embeds: pair.text_embeds,
            time_ids: pair.time_ids,
            arcface: Tensor::from_vec(e.face.embedding.clone(), (1, e.face.embedding.len()), &Device::Cpu)?,
            clip: e.clip,
            base_clip,
        };
        enc.save(&cache)?;
        Ok(Ok(Usable { item: item.clone(), cache, key, arcface: e.face.embedding, caption }))
    }

    /// The LoRA `tr` makes for one image's encodings: the branches the stage applies, at their strengths.
    fn curriculum_lora(
        tr: &crate::hyper::trainable::Trainable,
        stage: Stage,
        enc: &Encodings,
        s: Strengths,
    ) -> Result<LoraWeights> {
        let which = stage.branches(tr.has_base());
        let mut layers = Vec::new();
        let mut add = |raw: Tensor, branch: Branch, strength: f64| -> Result<()> {
            let c = crate::identity::normalize_tokens(&raw.detach().mean_keepdim(0)?)?.squeeze(0)?;
            for l in tr.factors(&c, branch)? {
                layers.push(crate::lora::LoraLayer {
                    down: l.down.detach(),
                    up: l.up.detach(),
                    scale: strength * crate::hyper::ALPHA_RATIO,
                    ..l
                });
            }
            Ok(())
        };
        if which.id {
            add(tr.raw_id(&enc.arcface, &enc.clip)?, Branch::Id, s.id)?;
        }
        if which.base && tr.has_base() {
            add(tr.raw_base(&enc.base_clip)?, Branch::Base, s.base)?;
        }
        Ok(LoraWeights { layers })
    }

    /// Mean loss over the fixed (timestep, noise) set of `items`, each with its own LoRA.
    fn curriculum_eval(
        &mut self,
        tr: &crate::hyper::trainable::Trainable,
        stage: Stage,
        items: &[&Usable],
        ac: &[f64],
        s: Strengths,
    ) -> Result<f64> {
        let (dev, dtype) = (self.opts.device.clone(), self.opts.dtype);
        let mut total = 0.0;
        for u in items {
            let enc = Encodings::load(&u.cache, &dev, dtype)?;
            let lora = Self::curriculum_lora(tr, stage, &enc, s)?;
            let pair = crate::train::finetune::Pair {
                name: u.item.origin.clone(),
                latents: enc.latents,
                context: enc.context,
                text_embeds: enc.text_embeds,
                time_ids: enc.time_ids,
            };
            let unet = &mut self.sdxl.as_mut().ok_or_else(|| Error::Mismatch("SDXL not loaded".into()))?.unet;
            total += crate::train::finetune::eval(unet, &lora.layers, &[pair], ac, Default::default())?;
        }
        Ok(total / items.len().max(1) as f64)
    }

    /// Sample images of the held-out photos with the LoRAs `tr` makes of them, saved with their settings in
    /// `OUT/samples/step-N/` (so `hyperlora gather` makes a sheet of them), with their face_score against the photo
    /// in `scores.csv` there.
    fn curriculum_samples(
        &mut self,
        r: &TrainRun,
        tr: &crate::hyper::trainable::Trainable,
        eval_set: &[Usable],
        step: usize,
        size: usize,
    ) -> Result<()> {
        let dir = r.out.join("samples").join(format!("step-{step}"));
        let mut scores = String::from("photo,sample,face_score\n");
        for (i, u) in eval_set.iter().enumerate() {
            let enc = Encodings::load(&u.cache, &self.opts.device.clone(), self.opts.dtype)?;
            let lora = Self::curriculum_lora(tr, r.stage, &enc, r.strengths)?;
            let name = format!("{} step {step} · {}", r.stage.name(), u.item.path.display());
            let mix = LoraMix::trained(name, format!("train-{step}-{i}"), Arc::new(lora), 1.0);
            let mut g = Generate::new(u.caption.clone());
            g.lora = Some(mix);
            (g.width, g.height, g.steps, g.seed) = (size, size, r.eval_steps.max(1), r.seed);
            let mut img = self.generate(&g)?;
            self.apply(None)?;
            let stem = u.item.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let path = dir.join(format!("{i:03}-{stem}.png"));
            let what = path.display().to_string();
            let score = match self.face().and_then(|f| f.embed_face(&img.rgb8(), &what, FacePick::Best)) {
                Ok((e, _)) => Ok(e.iter().zip(&u.arcface).map(|(a, b)| (*a * *b) as f64).sum::<f64>()),
                Err(e) => Err(e.to_string()),
            };
            let (note, cell) = match &score {
                Ok(v) => (format!("{v:.4}"), format!("{v:.6}")),
                Err(e) => (format!("n/a ({e})"), format!("\"n/a ({})\"", e.replace('"', "'"))),
            };
            // `hyperlora gather` groups by recipe: one sheet per checkpoint
            img.settings.push(("recipe".into(), format!("{}-step-{step}", r.stage.name())));
            img.settings.push(("held_out_photo".into(), u.item.path.display().to_string()));
            if let Ok(v) = &score {
                img.settings.push(("face_score".into(), format!("{v:.6}")));
            }
            self.save_image(&mut img, &path, false)?;
            self.emit(Event::Note(format!("sample {what}: face_score {note}")));
            scores += &format!("{},{what},{cell}\n", u.item.path.display());
        }
        if !eval_set.is_empty() {
            crate::files::output::write_file(&dir.join("scores.csv"), scores.as_bytes(), false)?;
        }
        Ok(())
    }
}
