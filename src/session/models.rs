//! The resident models: loaded on first use (with load events), unloaded on request.
use super::*;

impl Session {
    pub fn hyper(&mut self) -> Result<&HyperLora> {
        if self.hyper.is_none() {
            let dir = configured(&self.opts.paths.hyperlora, "HyperLoRA variant folder", "--hyperlora")?.to_path_buf();
            let h = self.timed("hyperlora", &dir, || HyperLora::load(&dir, &LoadOptions::default()))?;
            self.hyper = Some(h);
        }
        Ok(self.hyper.as_ref().expect("loaded"))
    }

    pub fn sdxl(&mut self) -> Result<&mut Sdxl> {
        if self.sdxl.is_none() {
            let path = configured(&self.opts.paths.sdxl, "SDXL checkpoint", "--sdxl")?.to_path_buf();
            let cfg = self.opts.paths.sdxl_config.clone();
            let o = SdxlOptions { device: self.opts.device.clone(), dtype: self.opts.dtype, vae_dtype: DType::F32 };
            let m = self.timed("sdxl", &path, || Sdxl::load(&path, cfg.as_deref(), &o))?;
            self.sdxl = Some(m);
            self.applied = None;
            self.text.clear();
        }
        Ok(self.sdxl.as_mut().expect("loaded"))
    }

    pub(super) fn encoders(&mut self) -> Result<()> {
        self.face()?;
        if self.clip.is_none() {
            let dir = configured(&self.opts.paths.clip, "CLIP vision folder", "--clip")?.to_path_buf();
            let dev = self.opts.device.clone();
            self.clip = Some(self.timed("clip", &dir, || load_clip_vision(&dir, DType::F32, &dev))?);
        }
        Ok(())
    }

    pub(super) fn face(&mut self) -> Result<&Antelope> {
        if self.face.is_none() {
            let dir = configured(&self.opts.paths.antelopev2, "antelopev2 folder", "--antelopev2")?.to_path_buf();
            self.face = Some(self.timed("antelopev2", &dir, || Antelope::load(&dir))?);
        }
        Ok(self.face.as_ref().expect("loaded"))
    }

    /// Free a component: `sdxl`, `hyperlora`, `clip`, `antelopev2`, `encoders` (clip + antelopev2) or `all`.
    /// Values already made (identities, images) stay valid; the model reloads when next needed.
    pub fn unload(&mut self, name: &str) -> Result<Vec<&'static str>> {
        let mut freed = Vec::new();
        let all = name == "all";
        if all || name == "sdxl" {
            if self.sdxl.take().is_some() {
                freed.push("sdxl");
            }
            self.applied = None;
            self.text.clear();
        }
        if all || name == "hyperlora" || name == "hyper" {
            if self.hyper.take().is_some() {
                freed.push("hyperlora");
            }
            self.synthesized.clear();
        }
        if (all || name == "clip" || name == "encoders") && self.clip.take().is_some() {
            freed.push("clip");
        }
        if (all || name == "antelopev2" || name == "face" || name == "encoders") && self.face.take().is_some() {
            freed.push("antelopev2");
        }
        if !["all", "sdxl", "hyperlora", "hyper", "clip", "encoders", "antelopev2", "face"].contains(&name) {
            return Err(Error::Mismatch(format!(
                "unload(\"{name}\"): expected sdxl, hyperlora, clip, antelopev2, encoders or all"
            )));
        }
        Ok(freed)
    }

    pub fn models(&self) -> Vec<ModelStatus> {
        let p = &self.opts.paths;
        vec![
            ModelStatus { name: "sdxl", path: p.sdxl.clone(), loaded: self.sdxl.is_some() },
            ModelStatus { name: "hyperlora", path: p.hyperlora.clone(), loaded: self.hyper.is_some() },
            ModelStatus { name: "clip", path: p.clip.clone(), loaded: self.clip.is_some() },
            ModelStatus { name: "antelopev2", path: p.antelopev2.clone(), loaded: self.face.is_some() },
        ]
    }

    /// Cache sizes: encoded photos, prompt encodings, synthesized LoRAs.
    pub fn cache_counts(&self) -> (usize, usize, usize) {
        (self.photos.len(), self.text.len(), self.synthesized.len())
    }
}
