//! A training dataset: a folder in the Hugging Face imagefolder convention (images plus a `metadata.jsonl` whose
//! lines are `{"file_name": …, "text": …, "box": [x1, y1, x2, y2]}`), or a plain folder of images with kohya-style
//! same-name `.txt` captions. Every line is checked here, before any model runs; errors name the file and the line.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const METADATA: &str = "metadata.jsonl";
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];
/// Lines in one metadata file (a dataset larger than this is sharded into folders).
const MAX_LINES: usize = 10_000_000;

/// One training image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    /// The caption: the metadata's `text`, else a same-name `.txt`, else none (the trainer's default caption).
    pub caption: Option<String>,
    /// A face box in image pixels; none: the detector runs.
    pub face_box: Option<[f64; 4]>,
    /// Where it was listed: `metadata.jsonl:LINE`, or the file itself for a folder without metadata.
    pub origin: String,
}

/// The dataset's items in their listed order.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub items: Vec<Item>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A same-name `.txt` caption beside `path`, when there is a non-empty one.
fn kohya_caption(path: &Path) -> Result<Option<String>> {
    let txt = path.with_extension("txt");
    if !txt.exists() {
        return Ok(None);
    }
    let t = crate::files::read_text(&txt).map_err(|e| Error::io(&txt, e))?;
    Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
}

impl Dataset {
    /// Read `dir`: its `metadata.jsonl` when there is one, else every image in it (sorted by name).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::invalid(dir, "is not a folder (expected images plus a metadata.jsonl)"));
        }
        let meta = dir.join(METADATA);
        let items = if meta.exists() { Self::from_metadata(dir, &meta)? } else { Self::from_folder(dir)? };
        if items.is_empty() {
            return Err(Error::invalid(
                dir,
                format!("holds no training images (give images plus a {METADATA}, or images with .txt captions)"),
            ));
        }
        Ok(Dataset { dir: dir.to_path_buf(), items })
    }

    fn from_folder(dir: &Path) -> Result<Vec<Item>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                Ok(Item { caption: kohya_caption(&path)?, face_box: None, origin: path.display().to_string(), path })
            })
            .collect()
    }

    fn from_metadata(dir: &Path, meta: &Path) -> Result<Vec<Item>> {
        let text = crate::files::read_text(meta).map_err(|e| Error::io(meta, e))?;
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate().take(MAX_LINES) {
            let n = i + 1;
            let at = |msg: String| Error::invalid(meta, format!("line {n}: {msg}"));
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| at(format!("not a JSON object ({e})")))?;
            let obj = v.as_object().ok_or_else(|| at("not a JSON object".into()))?;
            let name = match obj.get("file_name") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(_) => return Err(at("`file_name` must be a non-empty string".into())),
                None => {
                    return Err(at("no `file_name` (each line names its image: {\"file_name\": \"a.png\", …})".into()))
                }
            };
            let rel = Path::new(&name);
            if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(at(format!("`file_name` {name:?} must be a path inside the dataset folder")));
            }
            let path = dir.join(rel);
            if !path.is_file() {
                return Err(at(format!("`file_name` {name:?}: no such file in {}", dir.display())));
            }
            let caption = match obj.get("text") {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Some(serde_json::Value::String(_)) | Some(serde_json::Value::Null) | None => kohya_caption(&path)?,
                Some(_) => return Err(at("`text` must be a string".into())),
            };
            let face_box = match obj.get("box") {
                None | Some(serde_json::Value::Null) => None,
                Some(b) => {
                    let v: Vec<f64> =
                        b.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
                    match v.as_slice() {
                        [x1, y1, x2, y2] if v.iter().all(|x| x.is_finite()) && x2 > x1 && y2 > y1 => {
                            Some([*x1, *y1, *x2, *y2])
                        }
                        _ => {
                            return Err(at(format!("`box` must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {b}")))
                        }
                    }
                }
            };
            items.push(Item { path, caption, face_box, origin: format!("{}:{n}", meta.display()) });
        }
        Ok(items)
    }
}

/// The order rows are drawn in: a fresh permutation of the items each epoch, from the seed and the epoch alone,
/// so a position (epoch, index) is all a resume needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub seed: u64,
    pub epoch: u64,
    pub index: usize,
}

impl Order {
    pub fn new(seed: u64) -> Self {
        Order { seed, epoch: 0, index: 0 }
    }

    fn permutation(&self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        let mut rng = crate::rng::Rng::new(self.seed ^ 0x0DE5_0DE5 ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..n).rev() {
            p.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        p
    }

    /// The next row's item out of `n`.
    pub fn next(&mut self, n: usize) -> usize {
        if self.index >= n {
            self.epoch += 1;
            self.index = 0;
        }
        let i = self.permutation(n)[self.index];
        self.index += 1;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_and_resumes() {
        let mut o = Order::new(3);
        let first: Vec<usize> = (0..5).map(|_| o.next(5)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        let mut copy = o;
        let a: Vec<usize> = (0..7).map(|_| o.next(5)).collect();
        let b: Vec<usize> = (0..7).map(|_| copy.next(5)).collect();
        assert_eq!(a, b);
        assert_ne!(first, a[..5].to_vec(), "a new epoch draws a new order");
    }
}
