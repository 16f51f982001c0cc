//! Training from the session: the models it holds, with any merged LoRA taken out first (a training step sees the
//! checkpoint's own weights plus the LoRA terms it differentiates).
use super::*;
use crate::train::step;

impl Session {
    /// One full training step on the inputs of `path` (`input.*` as in the fixture `training_step.safetensors`):
    /// the loss, the noise prediction, the coefficients and every gradient, named as there.
    pub fn train_step(&mut self, path: &Path, checkpointing: step::Checkpointing) -> Result<Vec<(String, Tensor)>> {
        self.hyper()?;
        self.apply(None)?;
        let device = self.opts.device.clone();
        let inputs = step::read_inputs(path, &device)?;
        let (Some(sdxl), Some(hyper)) = (self.sdxl.as_mut(), self.hyper.as_ref()) else {
            return Err(Error::Mismatch("models not loaded".into()));
        };
        let (b, _, h, w) = inputs.batch.x0.dims4()?;
        let on = checkpointing.at(8 * h.max(w));
        step::check_memory(&sdxl.unet, b, 8 * h.max(w), on)?;
        sdxl.unet.set_gradient_checkpointing(on);
        let out = step::full_step(&mut sdxl.unet, hyper, &inputs);
        sdxl.unet.set_gradient_checkpointing(false);
        out
    }
}

/// A fine-tune request (identity space or LoRA space).
#[derive(Debug, Clone)]
pub struct Finetune {
    /// The training photos (face options are not used: each photo is centre-cropped, see `training_pairs`).
    pub photos: Vec<PathBuf>,
    /// Caption for photos without a same-name `.txt` (default: the trigger words + "a photo of a person").
    pub prompt: Option<String>,
    /// Training size in pixels (default: the model's native size, 1024 for SDXL).
    pub size: Option<usize>,
    pub options: crate::train::finetune::FinetuneOptions,
    /// Steps of the before/after sample images (0: make none).
    pub sample_steps: usize,
}

/// What a fine-tune reports.
pub struct FinetuneReport {
    pub eval_before: f64,
    pub eval_after: f64,
    pub log: Vec<crate::train::finetune::StepReport>,
    /// face_score of one image made before and one after (or why there is none).
    pub face_before: std::result::Result<f64, String>,
    pub face_after: std::result::Result<f64, String>,
}

/// Resize so the short side is `size`, then crop the centre `size`×`size` (diffusers' SDXL training scripts do the
/// same): the resized width and height and the crop's top-left corner (SDXL's crop coordinates).
pub fn centre_crop(width: usize, height: usize, size: usize) -> (usize, usize, usize, usize) {
    let s = size as f64 / width.min(height) as f64;
    let (rw, rh) = (((width as f64 * s).round() as usize).max(size), ((height as f64 * s).round() as usize).max(size));
    (rw, rh, (rh - size) / 2, (rw - size) / 2)
}

impl Session {
    /// The training pairs of `f`'s photos: each centred and cropped to the training size, VAE-encoded (latent mean
    /// × scaling factor), captioned (a same-name `.txt` beside the photo, else `f.prompt`, else the trigger words +
    /// "a photo of a person"), with SDXL time ids (original size, crop top-left, target size).
    pub fn training_pairs(&mut self, f: &Finetune) -> Result<(Vec<crate::train::finetune::Pair>, usize)> {
        if f.photos.is_empty() {
            return Err(Error::Mismatch("fine-tuning needs at least one photo".into()));
        }
        let size = self.training_size(f.size)?;
        step::check_memory(&self.sdxl()?.unet, 1, size, f.options.checkpointing.at(size))?;
        let default_caption = f.prompt.clone().unwrap_or_else(|| format!("{TRIGGER}, a photo of a person"));
        let mut pairs = Vec::new();
        for path in &f.photos {
            self.cancelled()?;
            let img = Image::load(path)?;
            if img.width.min(img.height) < size {
                return Err(Error::invalid(
                    path,
                    format!(
                        "is {}×{}, smaller than the training size {size}²: give a larger photo or a smaller size",
                        img.width, img.height
                    ),
                ));
            }
            let caption = match crate::files::read_text(path.with_extension("txt")) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => default_caption.clone(),
            };
            pairs.push(self.training_pair(&img, &path.display().to_string(), &caption, size)?);
        }
        Ok((pairs, size))
    }

    /// The training size asked for (default: the model's native size), checked.
    pub(super) fn training_size(&mut self, size: Option<usize>) -> Result<usize> {
        let size = match size {
            Some(s) => s,
            None => self.sdxl()?.unet.config().native_size(),
        };
        if size == 0 || !size.is_multiple_of(8) || size > crate::sdxl::model::MAX_SIDE {
            return Err(Error::InvalidValue(format!(
                "training size {size} must be a positive multiple of 8 up to 8192"
            )));
        }
        Ok(size)
    }

    /// One photo as a training pair: resized so its short side is `size` and centre-cropped (`centre_crop`),
    /// VAE-encoded (latent mean × scaling factor), its caption encoded, with SDXL time ids (original size, crop
    /// top-left, target size).
    pub(super) fn training_pair(
        &mut self,
        img: &Image,
        name: &str,
        caption: &str,
        size: usize,
    ) -> Result<crate::train::finetune::Pair> {
        let (rw, rh, top, left) = centre_crop(img.width, img.height, size);
        let r = img.resized(rw, rh)?;
        let mut rgb = Vec::with_capacity(size * size * 3);
        for y in top..top + size {
            rgb.extend_from_slice(&r.rgb[(y * rw + left) * 3..(y * rw + left + size) * 3]);
        }
        let pixels = crate::files::png_meta::rgb8_to_tensor(&rgb, size, size)?;
        let (cond, _, _) = self.encode_text(caption, None)?;
        let sdxl = self.sdxl()?;
        let dev = sdxl.options.device.clone();
        let latents = sdxl
            .vae
            .encode_latents(&pixels.to_device(&dev)?.to_dtype(sdxl.options.vae_dtype)?, None)?
            .to_dtype(sdxl.options.dtype)?;
        let ids = [img.height, img.width, top, left, size, size].map(|v| v as f32);
        Ok(crate::train::finetune::Pair {
            name: name.to_string(),
            latents,
            context: cond.embeds.clone(),
            text_embeds: cond.pooled.clone(),
            time_ids: Tensor::new(&[ids], &dev)?.to_dtype(sdxl.options.dtype)?,
        })
    }

    /// A step callback that reports progress and stops on Ctrl-C (between steps).
    fn train_progress(&self) -> impl FnMut(crate::train::finetune::StepReport) -> ControlFlow<()> {
        let (listener, cancel, t0) = (self.listener.clone(), self.cancel.clone(), Instant::now());
        move |r| {
            listener(&Event::Train {
                step: r.step,
                total: r.total,
                first: 1,
                loss: r.loss,
                lr: r.lr,
                elapsed: t0.elapsed().as_secs_f64(),
            });
            if cancel.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }

    /// The frame both fine-tunes share: merged LoRAs out, `start` evaluated, `train` run with progress (Ctrl-C
    /// breaks off between steps: `Error::Cancelled`, nothing changed) and a log, and the layers it returns
    /// evaluated on the same fixed set.
    fn training_run<T>(
        &mut self,
        f: &Finetune,
        pairs: &[crate::train::finetune::Pair],
        start: &LoraWeights,
        train: impl FnOnce(
            &mut crate::sdxl::unet::UNet,
            Option<&HyperLora>,
            &[f64],
            &mut dyn FnMut(crate::train::finetune::StepReport) -> ControlFlow<()>,
        ) -> Result<Option<(T, LoraWeights)>>,
    ) -> Result<(T, FinetuneReport)> {
        use crate::train::finetune::eval;
        self.apply(None)?;
        let mut progress = self.train_progress();
        let hyper = self.hyper.as_ref();
        let sdxl = self.sdxl.as_mut().ok_or_else(|| Error::Mismatch("SDXL not loaded".into()))?;
        let ac = sdxl.scheduler.alphas_cumprod();
        let unet = &mut sdxl.unet;
        let eval_before = eval(unet, &start.layers, pairs, &ac, f.options.loss)?;
        let mut log = Vec::new();
        let mut on_step = |r: crate::train::finetune::StepReport| {
            log.push(r);
            progress(r)
        };
        let size = 8 * pairs.first().map(|p| p.latents.dim(3)).transpose()?.unwrap_or(0);
        unet.set_gradient_checkpointing(f.options.checkpointing.at(size));
        let trained = train(unet, hyper, &ac, &mut on_step);
        unet.set_gradient_checkpointing(false);
        self.training_log = log.clone();
        let (value, after) = trained?.ok_or(Error::Cancelled)?;
        let sdxl = self.sdxl.as_mut().ok_or_else(|| Error::Mismatch("SDXL not loaded".into()))?;
        let unet = &mut sdxl.unet;
        let eval_after = eval(unet, &after.layers, pairs, &ac, f.options.loss)?;
        let none = || Err("not measured".to_string());
        Ok((value, FinetuneReport { eval_before, eval_after, log, face_before: none(), face_after: none() }))
    }

    /// Fine-tune `id` in identity space: its raw coefficient tokens move, the bases, the resampler and SDXL stay
    /// frozen; the result is an identity like any other, marked as fine-tuned. Ctrl-C stops between steps with
    /// nothing changed.
    pub fn finetune(&mut self, id: &Identity, f: &Finetune) -> Result<(Identity, FinetuneReport)> {
        self.cancel.store(false, Ordering::Relaxed);
        let _heard = crate::cancel::scope(self.cancel.clone());
        f.options.validate()?;
        self.check_identity(id)?;
        let (pairs, size) = self.training_pairs(f)?;
        let face_before = self.sample_score(id, f, size);
        let start = self.lora_weights(&LoraMix::lora(id, f.options.strength))?;
        let (trained, mut report) = self.training_run(f, &pairs, &start, |unet, hyper, ac, on_step| {
            let hyper = hyper.ok_or_else(|| Error::Mismatch("HyperLoRA not loaded".into()))?;
            let Some(m) =
                crate::train::finetune::identity_space(unet, hyper.bases(), id.raw(), &pairs, ac, &f.options, on_step)?
            else {
                return Ok(None);
            };
            let trained = Identity::new(
                m,
                id.photos(),
                id.base_raw().map(|b| (b.clone(), id.base_photos())),
                id.sources().to_vec(),
                id.variant().clone(),
            )?;
            let after = LoraMix::lora(&trained, f.options.strength).weights(hyper)?;
            Ok(Some((trained, after)))
        })?;
        let trained = trained.with_finetuned(crate::identity::Finetuned {
            from: id.hash(),
            steps: f.options.steps,
            lr: f.options.adamw.lr,
            photos: f.photos.iter().map(|p| p.display().to_string()).collect(),
            seed: f.options.seed,
            eval_before: report.eval_before,
            eval_after: report.eval_after,
        });
        report.face_before = face_before;
        report.face_after = self.sample_score(&trained, f, size);
        Ok((trained, report))
    }

    /// The steps of the last fine-tune in this session (as far as it got when cancelled): step, loss, lr and
    /// gradient norm.
    pub fn training_log(&self) -> &[crate::train::finetune::StepReport] {
        &self.training_log
    }

    /// The `step` and `loss` columns of a loss log file (`hyperlora train`'s `log.csv`, `finetune`'s `.loss.csv`).
    pub fn read_loss_log(&self, path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
        crate::train::log::read_loss_csv(path)
    }

    /// face_score of one image made with `id`'s LoRA (the first photo's caption, the run's seed), or why not.
    fn sample_score(&mut self, id: &Identity, f: &Finetune, size: usize) -> std::result::Result<f64, String> {
        if f.sample_steps == 0 {
            return Err("no sample made (0 sample steps)".into());
        }
        let mut g = Generate::new(f.prompt.clone().unwrap_or_else(|| "a photo of a person".into()));
        g.lora = Some(LoraMix::lora(id, f.options.strength));
        (g.width, g.height, g.steps, g.seed) = (size, size, f.sample_steps, f.options.seed);
        let img = self.generate(&g).map_err(|e| e.to_string())?;
        self.face_score(&img, id, FacePick::default()).map_err(|e| e.to_string())
    }
}

impl Session {
    /// Fine-tune in LoRA space: the factors of `mix` (an identity's LoRA, or any mix) move directly, rank unchanged.
    /// The result is a LoRA value (one trained term at strength 1) usable in `generate`, in mixes and in
    /// `export_lora`. Ctrl-C stops between steps with nothing changed.
    pub fn finetune_lora(&mut self, mix: &LoraMix, f: &Finetune) -> Result<(LoraMix, FinetuneReport)> {
        self.cancel.store(false, Ordering::Relaxed);
        let _heard = crate::cancel::scope(self.cancel.clone());
        f.options.validate()?;
        let start = self.lora_weights(mix)?;
        if start.layers.is_empty() {
            return Err(Error::Mismatch("finetune_lora: the LoRA has no layers (a weight of 0?)".into()));
        }
        let (pairs, _) = self.training_pairs(f)?;
        let (trained, mut report) = self.training_run(f, &pairs, &start, |unet, _, ac, on_step| {
            let trained = crate::train::finetune::lora_space(unet, &start, &pairs, ac, &f.options, on_step)?;
            Ok(trained.map(|t| (t.clone(), t)))
        })?;
        let (eval_before, eval_after) = (report.eval_before, report.eval_after);
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for l in &trained.layers {
            h.update(l.target.as_bytes());
            h.update(l.scale.to_le_bytes());
            for t in [&l.down, &l.up] {
                h.update(crate::weights::as_bytes(&t.flatten_all()?.to_vec1::<f32>()?));
            }
        }
        let hash = crate::files::provenance::hex(&h.finalize());
        let name = format!(
            "LoRA fine-tuned from {} ({} steps, lr {}, eval loss {eval_before:.5} -> {eval_after:.5})",
            mix.summary(),
            f.options.steps,
            f.options.adamw.lr
        );
        let out = LoraMix::trained(name, hash, Arc::new(trained), 1.0);
        let none = || Err("face_score is reported for identity-space fine-tunes".to_string());
        (report.face_before, report.face_after) = (none(), none());
        Ok((out, report))
    }
}
