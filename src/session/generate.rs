//! Text → image: prompt encodings cached by text, sampling with progress, cancellation and latent previews.
use super::*;

/// A generation request as the script API spells it.
#[derive(Debug, Clone)]
pub struct Generate {
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: SamplerKind,
    /// Image size; 0 takes the init image's size (img2img) or else the model's native size (`sample_size` × 8:
    /// 1024 for SDXL base, the demo set's own on the demo set).
    pub width: usize,
    pub height: usize,
    pub lora: Option<LoraMix>,
    /// Images from one UNet batch, seeded `seed`, `seed + 1`, …
    pub batch: usize,
    /// img2img: the starting image (of `width` × `height`) and the strength (fraction of the schedule run).
    pub init: Option<(Image, f64)>,
    /// Unit-Gaussian starting latents [batch, 4, h/8, w/8] instead of seeded noise.
    pub init_noise: Option<Tensor>,
}

impl Generate {
    pub fn new(prompt: impl Into<String>) -> Self {
        let r = GenerateRequest::new("");
        Generate {
            prompt: prompt.into(),
            negative: None,
            seed: 0,
            steps: r.steps,
            cfg: r.cfg,
            sampler: r.sampler,
            width: 0,
            height: 0,
            lora: None,
            batch: 1,
            init: None,
            init_noise: None,
        }
    }
}

/// Latent channels 0–2 of [1, C, h, w], each stretched to 0–255 over its own range.
pub(super) fn latent_preview(x: &Tensor, step: usize) -> Result<Image> {
    let x = x.get(0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (c, h, w) = x.dims3()?;
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let mut rgb = vec![0u8; w * h * 3];
    for ch in 0..3.min(c) {
        let plane = &v[ch * h * w..(ch + 1) * h * w];
        let (lo, hi) = plane.iter().fold((f32::MAX, f32::MIN), |(a, b), &p| (a.min(p), b.max(p)));
        let span = (hi - lo).max(1e-6);
        for (i, p) in plane.iter().enumerate() {
            rgb[i * 3 + ch] = ((p - lo) / span * 255.0) as u8;
        }
    }
    Ok(Image {
        rgb: Arc::new(rgb),
        width: w,
        height: h,
        seed: 0,
        prompt: format!("latents at step {step}"),
        settings: Vec::new(),
        path: None,
    })
}

impl Session {
    pub(super) fn encode_text(
        &mut self,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<(Conditioning, Conditioning, Option<String>)> {
        let key = format!("p:{prompt}");
        if !self.text.contains_key(&key) {
            let c = self.sdxl()?.encode_prompt(prompt)?;
            self.text.insert(key.clone(), c);
        }
        let (cond, truncated) = self.text[&key].clone();
        let nkey = format!("n:{negative:?}");
        if !self.text.contains_key(&nkey) {
            let n = self.sdxl()?.encode_negative(negative, &cond)?;
            self.text.insert(nkey.clone(), (n, None));
        }
        Ok((cond, self.text[&nkey].0.clone(), truncated))
    }

    /// Generate one image (the first, for a batch). With identity terms in the LoRA, the trigger words are put in
    /// front of the prompt when it lacks them.
    pub fn generate(&mut self, g: &Generate) -> Result<Image> {
        let mut images = self.generate_batch(g)?;
        Ok(images.swap_remove(0))
    }

    /// Generate `g.batch` images in one UNet batch; image i has seed `g.seed + i` and equals the one made alone
    /// with that seed.
    pub fn generate_batch(&mut self, g: &Generate) -> Result<Vec<Image>> {
        let mut sized;
        let g = if g.width == 0 || g.height == 0 {
            let native = self.sdxl()?.unet.config().native_size();
            let (w, h) = g.init.as_ref().map(|(img, _)| (img.width, img.height)).unwrap_or((native, native));
            sized = g.clone();
            sized.width = if g.width == 0 { w } else { g.width };
            sized.height = if g.height == 0 { h } else { g.height };
            &sized
        } else {
            g
        };
        self.cancel.store(false, Ordering::Relaxed);
        let _heard = crate::cancel::scope(self.cancel.clone());
        finite(g.cfg, "cfg")?;
        if let Some((_, s)) = &g.init {
            if !(*s > 0.0 && *s <= 1.0) {
                return Err(Error::InvalidValue(format!("img2img strength must be in (0, 1], got {s}")));
            }
        }
        self.apply(g.lora.as_ref())?;
        let has_identity = g.lora.as_ref().is_some_and(|m| {
            m.terms().iter().any(|t| matches!(t.source, TermSource::Identity(_) | TermSource::Trained { .. }))
        });
        let prompt = if has_identity && !g.prompt.contains(TRIGGER) {
            format!("{TRIGGER}, {}", g.prompt)
        } else {
            g.prompt.clone()
        };
        let (cond, uncond, truncated) = self.encode_text(&prompt, g.negative.as_deref())?;
        if let Some(t) = &truncated {
            self.emit(Event::Note(format!("prompt longer than 77 tokens; dropped: {t:?}")));
        }
        let req = GenerateRequest {
            prompt: prompt.clone(),
            negative: g.negative.clone(),
            seed: g.seed,
            steps: g.steps,
            cfg: g.cfg,
            sampler: g.sampler,
            width: g.width,
            height: g.height,
            batch: g.batch,
            init_noise: g.init_noise.clone(),
            init_image: match &g.init {
                Some((img, strength)) => Some((img.resized(g.width, g.height)?.to_tensor()?, *strength)),
                None => None,
            },
        };
        let (listener, cancel, every) = (self.listener.clone(), self.cancel.clone(), self.preview_every);
        let t0 = Instant::now();
        let sdxl = self.sdxl()?;
        let out = sdxl
            .generate_conditioned(&req, &cond, &uncond, truncated, &mut |p, trace| {
                listener(&Event::Step { step: p.step, total: p.total, elapsed: t0.elapsed().as_secs_f64() });
                if let (true, Some(t)) = (every > 0 && p.step % every == 0 && p.step < p.total, trace) {
                    if let Ok(image) = latent_preview(&t.x_after, p.step) {
                        listener(&Event::Preview { step: p.step, total: p.total, image });
                    }
                }
                if cancel.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| if cancel.load(Ordering::Relaxed) { Error::Cancelled } else { e })?;
        let out = out.ok_or(Error::Cancelled)?;
        let model = sdxl.name.clone();
        let loras = g.lora.as_ref().map(|m| m.settings_line()).unwrap_or_default();
        let mut images = Vec::with_capacity(out.images.len());
        for (i, t) in out.images.iter().enumerate() {
            let (rgb, w, h) = crate::files::png_meta::to_rgb8(t)?;
            let seed = g.seed.wrapping_add(i as u64);
            let mut settings = vec![
                ("prompt".to_string(), prompt.clone()),
                ("negative_prompt".to_string(), g.negative.clone().unwrap_or_default()),
                ("seed".to_string(), seed.to_string()),
                ("steps".to_string(), g.steps.to_string()),
                ("cfg".to_string(), g.cfg.to_string()),
                ("sampler".to_string(), g.sampler.name().to_string()),
                ("size".to_string(), format!("{w}x{h}")),
                ("model".to_string(), model.clone()),
                ("loras".to_string(), loras.clone()),
                ("hyperlora_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ];
            if g.batch > 1 {
                settings.push(("batch_index".to_string(), i.to_string()));
            }
            if let Some((img, strength)) = &g.init {
                settings.push(("init_image".to_string(), img.describe_source()));
                settings.push(("strength".to_string(), strength.to_string()));
            }
            if g.init_noise.is_some() {
                settings.push(("init_latents".to_string(), "given".to_string()));
            }
            images.push(Image {
                rgb: Arc::new(rgb),
                width: w,
                height: h,
                seed,
                prompt: prompt.clone(),
                settings,
                path: None,
            });
        }
        Ok(images)
    }
}
