//! `hyperlora gather DIR`: after a sweep (from any number of shards), one `index.csv` of every generated image's
//! settings and one contact sheet per recipe, both read from the PNGs' own metadata.
use crate::error::{Error, Result};
use crate::render::grid::{self, Cell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The columns of `index.csv`, in order.
pub const COLUMNS: [&str; 8] = ["file", "recipe", "shard", "prompt", "seed", "strength", "identity", "face_score"];

/// Cells of a contact sheet are at most this many pixels on a side (smaller when there are many images).
const THUMB: usize = 256;

/// One generated image found under the folder.
#[derive(Debug, Clone)]
pub struct Row {
    /// Relative to the gathered folder, with `/` separators.
    pub file: String,
    pub recipe: String,
    pub settings: Vec<(String, String)>,
}

impl Row {
    fn get(&self, k: &str) -> &str {
        self.settings.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    /// LoRA strengths and identity hashes of the identity terms of the image's `loras` line
    /// (`identity:HASH:WEIGHT[:base W]`), joined with `;` when the mix had several.
    fn identity_terms(&self) -> (String, String) {
        let (mut w, mut h) = (Vec::new(), Vec::new());
        for term in self.get("loras").split(' ').filter(|t| t.starts_with("identity:")) {
            let mut parts = term.split(':').skip(1);
            h.push(parts.next().unwrap_or("").to_string());
            w.push(parts.next().unwrap_or("").to_string());
        }
        (w.join(";"), h.join(";"))
    }

    /// The row's values in [`COLUMNS`] order.
    pub fn values(&self) -> Vec<String> {
        let (strength, identity) = self.identity_terms();
        vec![
            self.file.clone(),
            self.recipe.clone(),
            self.get("shard").to_string(),
            self.get("prompt").to_string(),
            self.get("seed").to_string(),
            strength,
            identity,
            self.get("face_score").to_string(),
        ]
    }
}

/// What `gather` found and wrote.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// PNGs that are not generated images (contact sheets, plots, other files), with why.
    pub skipped: Vec<(String, String)>,
    pub index: PathBuf,
    /// One per recipe: (recipe, file, images).
    pub sheets: Vec<(String, PathBuf, usize)>,
}

/// Every `*.png` under `dir` (hidden files and folders — such as temporary files — left out), sorted.
fn pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let t = e.file_type().map_err(|x| Error::io(e.path(), x))?;
            let p = e.path();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn relative(dir: &Path, p: &Path) -> String {
    let r = p.strip_prefix(dir).unwrap_or(p);
    r.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// A file-name-safe form of a recipe name.
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        "unnamed".into()
    } else {
        s
    }
}

/// Scale to fit `side` × `side`, keeping the aspect.
fn thumbnail(rgb: Vec<u8>, w: usize, h: usize, side: usize) -> Result<(Vec<u8>, usize, usize)> {
    if w <= side && h <= side {
        return Ok((rgb, w, h));
    }
    let k = side as f64 / w.max(h) as f64;
    let (tw, th) = (((w as f64 * k).round() as usize).max(1), ((h as f64 * k).round() as usize).max(1));
    let src = ::image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| Error::Mismatch(format!("image of {w}×{h} with the wrong number of bytes")))?;
    let out = ::image::imageops::resize(&src, tw as u32, th as u32, ::image::imageops::FilterType::Triangle);
    Ok((out.into_raw(), tw, th))
}

/// Index the generated images under `dir` and write `index.csv` and one `sheet-RECIPE.png` per recipe into
/// `out` (default: `dir`). Existing outputs are an error unless `overwrite`. `progress(done, total)` is called
/// per image read.
pub fn gather(
    dir: &Path,
    out: Option<&Path>,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    if !dir.is_dir() {
        return Err(Error::invalid(dir, "not a folder"));
    }
    let out = out.unwrap_or(dir);
    let index = out.join("index.csv");
    crate::files::output::refuse_existing(&index, overwrite)?;
    let files = pngs(dir)?;
    let mut report = Report { index: index.clone(), ..Default::default() };
    // recipe → (row, file) in file order; the first pass reads only the text chunks, the pixels are decoded one
    // image at a time when its thumbnail is made (twelve 16384² PNGs must not be held at once)
    let mut groups: BTreeMap<String, Vec<(usize, std::path::PathBuf)>> = BTreeMap::new();
    for (i, p) in files.iter().enumerate() {
        progress(i, files.len());
        let file = relative(dir, p);
        let (_, _, settings) = match crate::files::png_meta::read_png_text(p) {
            Ok(x) => x,
            Err(e) => {
                report.skipped.push((file, e.to_string()));
                continue;
            }
        };
        let has = |k: &str| settings.iter().any(|(n, _)| n == k);
        if has("hyperlora:grid") || !has("seed") || !has("prompt") {
            report.skipped.push((file, "not a generated image (a contact sheet, plot or other PNG)".into()));
            continue;
        }
        let recipe = settings.iter().find(|(k, _)| k == "recipe").map(|(_, v)| v.clone()).unwrap_or_default();
        let recipe = if recipe.is_empty() { "unnamed".to_string() } else { recipe };
        report.rows.push(Row { file, recipe: recipe.clone(), settings });
        groups.entry(recipe).or_default().push((report.rows.len() - 1, p.clone()));
    }
    progress(files.len(), files.len());
    if report.rows.is_empty() {
        return Err(Error::invalid(
            dir,
            format!("no generated images found ({} PNG file(s) looked at, none with generation settings)", files.len()),
        ));
    }
    // one sheet per recipe, never two recipes on one name (`x/y` and `x_y` both slug to `x_y`: those get a hash)
    let mut slugs: BTreeMap<String, usize> = BTreeMap::new();
    for recipe in groups.keys() {
        *slugs.entry(slug(recipe)).or_default() += 1;
    }
    let sheet_path = |recipe: &str| {
        let s = slug(recipe);
        match slugs.get(&s) {
            Some(n) if *n > 1 => {
                let h = crate::files::provenance::sha256_hex(recipe.as_bytes());
                out.join(format!("sheet-{s}-{}.png", &h[..8]))
            }
            _ => out.join(format!("sheet-{s}.png")),
        }
    };
    for recipe in groups.keys() {
        crate::files::output::refuse_existing(&sheet_path(recipe), overwrite)?;
    }

    let mut csv = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::Mismatch(format!("cannot write index.csv: {e}"));
    csv.write_record(COLUMNS).map_err(csv_err)?;
    for rows in groups.values() {
        for (r, ..) in rows {
            csv.write_record(report.rows[*r].values()).map_err(csv_err)?;
        }
    }
    let bytes = csv.into_inner().map_err(|e| Error::Mismatch(format!("cannot write index.csv: {e}")))?;
    crate::files::output::write_file(&index, &bytes, overwrite)?;

    for (recipe, rows) in groups {
        // cells small enough for the sheet to stay under the grid's pixel limit
        let n = rows.len();
        let fit = ((grid::MAX_PIXELS as f64 / n as f64).sqrt() * 0.8) as usize;
        let side = THUMB.min(fit).max(16);
        let mut thumbs = Vec::with_capacity(n);
        for (r, p) in rows {
            match crate::files::png_meta::read_png(&p) {
                Ok((rgb, w, h, _)) => {
                    let (t, tw, th) = thumbnail(rgb, w, h, side)?;
                    thumbs.push((r, t, tw, th));
                }
                // its settings were readable, its pixels are not: a blank cell, and said so
                Err(e) => {
                    report.skipped.push((report.rows[r].file.clone(), format!("pixels unreadable, a blank cell: {e}")));
                    thumbs.push((r, vec![40; 16 * 16 * 3], 16, 16));
                }
            }
        }
        let cells: Vec<Cell> = thumbs
            .iter()
            .map(|(r, t, w, h)| {
                let row = &report.rows[*r];
                let name = Path::new(&row.file).file_stem().map(|s| s.to_string_lossy().into_owned());
                Cell { rgb: t, width: *w, height: *h, label: name.unwrap_or_default(), settings: &row.settings }
            })
            .collect();
        let sheet = grid::grid(&cells, None, Some(&format!("{recipe}: {n} image(s)")))?;
        let path = sheet_path(&recipe);
        let png = crate::files::png_meta::encode_png(&sheet.rgb, sheet.width, sheet.height, &sheet.settings)?;
        crate::files::output::write_file(&path, &png, overwrite)?;
        report.sheets.push((recipe, path, n));
    }
    Ok(report)
}
