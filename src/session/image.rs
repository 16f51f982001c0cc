//! Images as values: contact sheets, PNG output with settings, the face score.
use super::*;

/// A generated image and the settings that made it.
#[derive(Clone, Debug)]
pub struct Image {
    pub rgb: Arc<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub prompt: String,
    /// Everything written into the PNG's text chunks.
    pub settings: Vec<(String, String)>,
    /// Where it was last saved.
    pub path: Option<PathBuf>,
}

impl Image {
    /// Pixels as [1, 3, H, W] in [-1, 1] (the VAE's input).
    pub fn to_tensor(&self) -> Result<Tensor> {
        crate::files::png_meta::rgb8_to_tensor(&self.rgb, self.width, self.height)
    }

    /// This image at `width` × `height` (Catmull-Rom), or itself when it already has that size.
    pub fn resized(&self, width: usize, height: usize) -> Result<Image> {
        if (self.width, self.height) == (width, height) {
            return Ok(self.clone());
        }
        let src = ::image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.as_ref().clone())
            .ok_or_else(|| {
                Error::Mismatch(format!("image of {}×{} has {} bytes", self.width, self.height, self.rgb.len()))
            })?;
        let out =
            ::image::imageops::resize(&src, width as u32, height as u32, ::image::imageops::FilterType::CatmullRom);
        Ok(Image { rgb: Arc::new(out.into_raw()), width, height, ..self.clone() })
    }

    /// Where this image came from, for another image's settings: its file, else its seed and prompt.
    pub fn describe_source(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("image {}×{} seed {} ({})", self.width, self.height, self.seed, self.prompt),
        }
    }

    /// A PNG (or JPEG/WebP) file as an image value, with its PNG text as settings.
    pub fn load(path: &Path) -> Result<Image> {
        let rgb8 = crate::pixels::photo::load_photo(path)?;
        let settings = crate::files::png_meta::read_png_text(path).map(|(_, _, t)| t).unwrap_or_default();
        let prompt = settings.iter().find(|(k, _)| k == "prompt").map(|(_, v)| v.clone()).unwrap_or_default();
        let seed = settings.iter().find(|(k, _)| k == "seed").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        Ok(Image {
            rgb: Arc::new(rgb8.data),
            width: rgb8.width,
            height: rgb8.height,
            seed,
            prompt,
            settings,
            path: Some(path.to_path_buf()),
        })
    }

    pub fn rgb8(&self) -> Rgb8 {
        Rgb8 { width: self.width, height: self.height, data: self.rgb.as_ref().clone() }
    }
    pub fn summary(&self) -> String {
        let path = self.path.as_ref().map(|p| format!(", saved as {}", p.display())).unwrap_or_default();
        format!("image {}×{}, seed {}{path}", self.width, self.height, self.seed)
    }
}

impl Session {
    /// A labelled contact sheet of `images` (`labels` default to each image's prompt and seed); its PNG text
    /// keeps every cell's settings.
    pub fn grid(
        &self,
        images: &[Image],
        labels: Option<&[String]>,
        cols: Option<usize>,
        title: Option<&str>,
    ) -> Result<Image> {
        if let Some(l) = labels {
            if l.len() != images.len() {
                return Err(Error::Mismatch(format!("grid: {} labels for {} images", l.len(), images.len())));
            }
        }
        let cells: Vec<crate::render::grid::Cell> = images
            .iter()
            .enumerate()
            .map(|(i, img)| crate::render::grid::Cell {
                rgb: &img.rgb,
                width: img.width,
                height: img.height,
                label: labels.map(|l| l[i].clone()).unwrap_or_else(|| format!("seed {} · {}", img.seed, img.prompt)),
                settings: &img.settings,
            })
            .collect();
        let s = crate::render::grid::grid(&cells, cols, title)?;
        let prompt = title.map(str::to_string).unwrap_or_else(|| format!("grid of {} images", images.len()));
        Ok(Image {
            rgb: Arc::new(s.rgb),
            width: s.width,
            height: s.height,
            seed: 0,
            prompt,
            settings: s.settings,
            path: None,
        })
    }

    /// An image file as a value (a PNG keeps its settings).
    pub fn load_image(&self, path: &Path) -> Result<Image> {
        Image::load(path)
    }

    /// Write an image as PNG with its settings (never over an existing file unless `overwrite`).
    pub fn save_image(&self, img: &mut Image, path: &Path, overwrite: bool) -> Result<()> {
        let png = crate::files::png_meta::encode_png(&img.rgb, img.width, img.height, &img.settings)?;
        crate::files::output::write_file(path, &png, overwrite)?;
        img.path = Some(path.to_path_buf());
        Ok(())
    }

    /// ArcFace cosine between the face in `img` and the identity's photos (mean over the photos this session
    /// encoded). `pick` chooses the face in the image (a box skips detection).
    pub fn face_score(&mut self, img: &Image, id: &Identity, pick: FacePick) -> Result<f64> {
        let refs: Vec<Vec<f32>> = id
            .sources()
            .iter()
            .filter_map(|s| self.embeddings.get(&(s.hash.clone(), s.label.clone())).cloned())
            .collect();
        if refs.is_empty() {
            return Err(Error::Mismatch(format!(
                "face_score: identity {} was not made from photos encoded in this session (its ArcFace embeddings are not known)",
                id.short_hash()
            )));
        }
        let what = img
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("generated image (seed {})", img.seed));
        let (e, _) = self.face()?.embed_face(&img.rgb8(), &what, pick)?;
        let cos = |r: &[f32]| r.iter().zip(&e).map(|(a, b)| (*a * *b) as f64).sum::<f64>();
        Ok(refs.iter().map(|r| cos(r)).sum::<f64>() / refs.len() as f64)
    }
}
