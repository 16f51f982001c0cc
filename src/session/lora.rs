//! LoRA mixes → weights (synthesis cached per identity), the mix merged into the UNet, LoRA files in and out.
use super::*;

impl Session {
    pub(super) fn synthesized(&mut self, id: &Identity, branch: Branch) -> Result<Arc<LoraWeights>> {
        let key = format!("{}:{branch:?}", id.hash());
        if let Some(w) = self.synthesized.get(&key) {
            return Ok(w.clone());
        }
        let w = Arc::new(self.hyper()?.synthesize(id, branch)?);
        self.synthesized.insert(key, w.clone());
        Ok(w)
    }

    /// The mix as per-layer LoRA weights (ΔW = Σ wᵢ·scaleᵢ·Uᵢ·Dᵢ), synthesis cached per identity.
    pub fn lora_weights(&mut self, mix: &LoraMix) -> Result<LoraWeights> {
        // synthesize (or find) every identity's factors first, then combine borrowing them from the cache
        for t in mix.terms() {
            if let TermSource::Identity(id) = &t.source {
                if t.weight != 0.0 {
                    self.synthesized(id, Branch::Id)?;
                }
                if t.base_weight != 0.0 {
                    self.synthesized(id, Branch::Base)?;
                }
            }
        }
        let cache = &self.synthesized;
        mix.weights_with(&mut |id, branch| {
            let w = cache.get(&format!("{}:{branch:?}", id.hash())).ok_or_else(|| {
                Error::Mismatch(format!("identity {}: LoRA factors missing from the cache", id.short_hash()))
            })?;
            Ok(std::borrow::Cow::Borrowed(w.as_ref()))
        })
    }

    /// A LoRA file (kohya, diffusers or PEFT names) as a mix term at strength `weight`.
    pub fn lora_file(&mut self, path: &Path, weight: f64) -> Result<LoraMix> {
        if path.is_dir() {
            return Err(Error::invalid(path, "is a folder; a LoRA is one .safetensors file"));
        }
        let weight = super::finite(weight, "lora weight")?;
        let bytes = crate::files::read_regular(path)?;
        let imp = crate::lora::file::import(path)?;
        if imp.weights.layers.is_empty() {
            return Err(Error::invalid(path, "no UNet LoRA layers found (text-encoder-only or not a LoRA file)"));
        }
        if !imp.unmatched.is_empty() {
            self.emit(Event::Note(format!(
                "{}: {} keys not used, e.g. {}",
                path.display(),
                imp.unmatched.len(),
                imp.unmatched[0]
            )));
        }
        Ok(LoraMix::file(path.to_path_buf(), sha256_hex(&bytes), Arc::new(imp.weights), weight))
    }

    /// Merge `mix` into the UNet (or restore it for none). Projections whose terms did not change are left alone.
    pub fn apply(&mut self, mix: Option<&LoraMix>) -> Result<()> {
        let mix = mix.filter(|m| !m.is_empty());
        let same = match (&self.applied, mix) {
            (None, None) => true,
            (Some(a), Some(b)) => a.approx_eq(b, 0.0),
            _ => false,
        };
        if same && self.sdxl.is_some() {
            return Ok(());
        }
        let weights = match mix {
            Some(m) => Some(self.lora_weights(m)?),
            None => None,
        };
        let sdxl = self.sdxl()?;
        let report = match &weights {
            Some(w) => sdxl.unet.set_lora(w)?,
            None => sdxl.unet.clear_lora()?,
        };
        if !report.unmatched.is_empty() {
            let first = report.unmatched[0].clone();
            self.emit(Event::Note(format!(
                "LoRA: {} targets are not in this UNet, e.g. {first}",
                report.unmatched.len()
            )));
        }
        // nothing merged or restored (no LoRA in play, or the same one again): nothing to say
        if report.merged + report.restored > 0 {
            self.emit(Event::Note(format!(
                "LoRA: {} projections merged, {} restored, {} unchanged",
                report.merged, report.restored, report.unchanged
            )));
        }
        self.applied = mix.cloned();
        Ok(())
    }

    /// The mix merged into the UNet now, if any.
    pub fn applied(&self) -> Option<&LoraMix> {
        self.applied.as_ref()
    }

    /// Export a mix as one kohya LoRA file (terms stacked on the rank axis).
    pub fn export_lora(
        &mut self,
        mix: &LoraMix,
        path: &Path,
        dtype: DType,
        overwrite: bool,
    ) -> Result<crate::lora::file::ExportSummary> {
        if mix.is_empty() {
            return Err(Error::Mismatch("export_lora: the mix is empty".into()));
        }
        let weights = self.lora_weights(mix)?;
        let hyper = self.hyper()?;
        let title = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let meta = crate::lora::file::kohya_metadata(
            &title,
            weights.layers.iter().map(|l| l.rank()).max().unwrap_or(0),
            crate::hyper::ALPHA_RATIO,
            TRIGGER,
            "HyperLoRA LoRA mix (UNet attention only); start prompts with the trigger phrase",
            &[
                ("hyperlora.variant", format!("{} {}", hyper.variant().label, hyper.variant().hash)),
                ("hyperlora.mix", mix.summary()),
                (
                    "hyperlora.identities",
                    mix.terms()
                        .iter()
                        .filter_map(|t| if let TermSource::Identity(id) = &t.source { Some(id.hash()) } else { None })
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ],
        );
        crate::lora::file::export_kohya(&weights, crate::hyper::ALPHA_RATIO, path, dtype, meta, overwrite)
    }
}
