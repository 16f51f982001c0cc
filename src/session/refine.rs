//! The face-detail pass of the official HyperLoRA workflows: find the face, crop it with padding, upscale the
//! crop, img2img it with the LoRA, scale it back and paste it through a feathered elliptical mask.
use super::*;

/// What `refine_face` does; defaults as the workflows' face-detail pass.
#[derive(Debug, Clone)]
pub struct RefineFace {
    pub lora: Option<LoraMix>,
    /// The prompt of the pass (default: the image's own).
    pub prompt: Option<String>,
    pub negative: Option<String>,
    /// img2img strength: the share of the schedule run on the crop.
    pub strength: f64,
    /// Added around the face box on every side, as a fraction of the box's larger side.
    pub padding: f64,
    /// The crop is upscaled to this many pixels on a side (rounded down to a multiple of 32, as SDXL's latent
    /// grid needs).
    pub size: usize,
    pub pick: crate::face::analyser::FacePick,
    /// Default: the image's seed.
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub cfg: Option<f64>,
    pub sampler: Option<crate::sdxl::scheduler::SamplerKind>,
}

impl Default for RefineFace {
    fn default() -> Self {
        RefineFace {
            lora: None,
            prompt: None,
            negative: None,
            strength: 0.4,
            padding: 0.3,
            size: 1024,
            pick: crate::face::analyser::FacePick::Best,
            seed: None,
            steps: None,
            cfg: None,
            sampler: None,
        }
    }
}

/// The square around `face` grown by `padding` on every side, moved (and if need be shrunk) to lie on the image:
/// `[x, y, side, side]` in whole pixels.
pub fn detail_square(face: [f64; 4], padding: f64, width: usize, height: usize) -> [usize; 3] {
    let (cx, cy) = ((face[0] + face[2]) / 2.0, (face[1] + face[3]) / 2.0);
    let side = ((face[2] - face[0]).max(face[3] - face[1]) * (1.0 + 2.0 * padding)).round() as usize;
    let side = side.clamp(8, width.min(height));
    let place = |c: f64, len: usize| (c - side as f64 / 2.0).round().clamp(0.0, (len - side) as f64) as usize;
    [place(cx, width), place(cy, height), side]
}

/// The blend weight at (x, y) of a `side`² square: 1 inside 75 % of the inscribed ellipse's radius, 0 outside
/// the ellipse, smooth between.
pub fn feather(x: usize, y: usize, side: usize) -> f64 {
    let r = side as f64 / 2.0;
    let (dx, dy) = ((x as f64 + 0.5 - r) / r, (y as f64 + 0.5 - r) / r);
    let d = (dx * dx + dy * dy).sqrt();
    let t = ((1.0 - d) / 0.25).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

impl Session {
    /// The face-detail pass: a new image whose settings record the first pass and this one (`face_detail_*`).
    pub fn refine_face(&mut self, img: &Image, r: &RefineFace) -> Result<Image> {
        if !(r.strength > 0.0 && r.strength <= 1.0) {
            return Err(Error::InvalidValue(format!("refine_face: strength must be in (0, 1], got {}", r.strength)));
        }
        if !(0.0..=2.0).contains(&r.padding) {
            return Err(Error::InvalidValue(format!("refine_face: padding must be in [0, 2], got {}", r.padding)));
        }
        let size = r.size / 32 * 32;
        if !(64..=crate::sdxl::model::MAX_SIDE).contains(&size) {
            return Err(Error::InvalidValue(format!(
                "refine_face: size must be 64 to {} pixels, got {}",
                crate::sdxl::model::MAX_SIDE,
                r.size
            )));
        }
        let what = img.describe_source();
        let face = self.face()?.find_face(&img.rgb8(), &what, r.pick)?;
        let [x0, y0, side] = detail_square(face, r.padding, img.width, img.height);
        // the crop, upscaled
        let (a, b) = (x0 as i64, y0 as i64);
        let crop = img.rgb8().crop(a, b, a + side as i64, b + side as i64)?;
        let crop = Image {
            rgb: Arc::new(crop.data),
            width: side,
            height: side,
            seed: img.seed,
            prompt: img.prompt.clone(),
            settings: Vec::new(),
            path: None,
        };
        let setting = |k: &str| img.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut g = Generate::new(r.prompt.clone().unwrap_or_else(|| img.prompt.clone()));
        g.negative = r.negative.clone().or_else(|| setting("negative_prompt").filter(|n| !n.is_empty()));
        g.seed = r.seed.unwrap_or(img.seed);
        g.steps = r.steps.or_else(|| setting("steps").and_then(|s| s.parse().ok())).unwrap_or(g.steps);
        g.cfg = r.cfg.or_else(|| setting("cfg").and_then(|s| s.parse().ok())).unwrap_or(g.cfg);
        if let Some(s) = r.sampler.or_else(|| setting("sampler").and_then(|s| SamplerKind::parse(&s).ok())) {
            g.sampler = s;
        }
        g.width = size;
        g.height = size;
        g.lora = r.lora.clone();
        g.init = Some((crop.resized(size, size)?, r.strength));
        let refined = self.generate(&g)?.resized(side, side)?;
        // paste back through the feathered ellipse
        let mut rgb = img.rgb.as_ref().clone();
        for y in 0..side {
            for x in 0..side {
                let a = feather(x, y, side);
                if a == 0.0 {
                    continue;
                }
                let (at, src) = (((y0 + y) * img.width + x0 + x) * 3, (y * side + x) * 3);
                for c in 0..3 {
                    let v = rgb[at + c] as f64 * (1.0 - a) + refined.rgb[src + c] as f64 * a;
                    rgb[at + c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        let mut settings = img.settings.clone();
        settings.retain(|(k, _)| !k.starts_with("face_detail"));
        let get = |k: &str| refined.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        settings.extend([
            (
                "face_detail".to_string(),
                format!(
                    "crop {x0},{y0},{},{} (x1,y1,x2,y2) around the face at {:.0},{:.0},{:.0},{:.0}",
                    x0 + side,
                    y0 + side,
                    face[0],
                    face[1],
                    face[2],
                    face[3]
                ),
            ),
            ("face_detail_prompt".to_string(), get("prompt")),
            ("face_detail_negative_prompt".to_string(), get("negative_prompt")),
            ("face_detail_seed".to_string(), g.seed.to_string()),
            ("face_detail_steps".to_string(), g.steps.to_string()),
            ("face_detail_cfg".to_string(), g.cfg.to_string()),
            ("face_detail_sampler".to_string(), g.sampler.name().to_string()),
            ("face_detail_strength".to_string(), r.strength.to_string()),
            ("face_detail_padding".to_string(), r.padding.to_string()),
            ("face_detail_size".to_string(), format!("{size}x{size}")),
            ("face_detail_loras".to_string(), get("loras")),
        ]);
        Ok(Image { rgb: Arc::new(rgb), settings, path: None, ..img.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_stays_on_the_image() {
        // a face near the top-left corner: the padded square is moved inside
        assert_eq!(detail_square([0.0, 0.0, 20.0, 30.0], 0.5, 200, 100), [0, 0, 60]);
        // centred and padded
        assert_eq!(detail_square([90.0, 40.0, 110.0, 60.0], 0.3, 200, 100), [84, 34, 32]);
        // larger than the image: shrunk to its shorter side
        assert_eq!(detail_square([10.0, 10.0, 190.0, 90.0], 0.3, 200, 100), [50, 0, 100]);
    }

    #[test]
    fn feather_is_one_inside_zero_outside_and_monotone() {
        let s = 100;
        assert_eq!(feather(50, 50, s), 1.0);
        assert_eq!(feather(0, 0, s), 0.0);
        assert!(feather(99, 50, s) < 0.01, "the ellipse edge");
        assert_eq!(feather(99, 10, s), 0.0);
        let row: Vec<f64> = (50..100).map(|x| feather(x, 50, s)).collect();
        assert!(row.windows(2).all(|w| w[0] >= w[1]), "{row:?}");
        assert!(row.iter().any(|a| *a > 0.0 && *a < 1.0), "a soft edge");
    }
}
