//! Contact sheets: images in a grid with a label under each and an optional title, as one RGB picture.
use super::text;
use crate::error::{Error, Result};

/// One cell: pixels, size, label, and the settings of the image it shows (kept in the sheet's PNG text).
pub struct Cell<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub label: String,
    pub settings: &'a [(String, String)],
}

/// A finished sheet.
pub struct Sheet {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub cols: usize,
    pub rows: usize,
    /// `hyperlora:grid`: JSON with the title and, per cell, its label and settings.
    pub settings: Vec<(String, String)>,
}

const BG: [u8; 3] = [24, 24, 24];
const FG: [u8; 3] = [235, 235, 235];
const PAD: usize = 4;
/// The most lines a cell's label takes.
const LABEL_LINES: usize = 3;
/// Largest sheet (pixels) a grid may make.
pub const MAX_PIXELS: usize = 256 * 1024 * 1024 / 3;

/// Lay out `cells` in `cols` columns (default: a near-square layout). Cells of different sizes are centred in
/// a cell as large as the largest image.
pub fn grid(cells: &[Cell], cols: Option<usize>, title: Option<&str>) -> Result<Sheet> {
    if cells.is_empty() {
        return Err(Error::InvalidValue("grid: no images".into()));
    }
    let n = cells.len();
    let cols = cols.unwrap_or_else(|| (n as f64).sqrt().ceil() as usize).clamp(1, n);
    let rows = n.div_ceil(cols);
    let cw = cells.iter().map(|c| c.width).max().unwrap_or(1).max(1);
    let ch = cells.iter().map(|c| c.height).max().unwrap_or(1).max(1);
    let scale = if cw >= 384 { 2 } else { 1 };
    // labels wrap over up to LABEL_LINES lines under narrow cells (names differ at their ends: seeds, weights)
    let max = (cw / (8 * scale)).max(1);
    let label_lines =
        cells.iter().map(|c| c.label.chars().count().div_ceil(max)).max().unwrap_or(1).clamp(1, LABEL_LINES);
    let line = label_lines * (8 * scale + 1) + 2 * PAD;
    let title_h = if title.is_some_and(|t| !t.is_empty()) { 8 * scale * 2 + 2 * PAD } else { 0 };
    let width = cols * (cw + PAD) + PAD;
    let height = title_h + rows * (ch + line) + PAD;
    if width.checked_mul(height).is_none_or(|p| p > MAX_PIXELS) {
        return Err(Error::InvalidValue(format!(
            "grid: a {width}×{height} sheet is larger than the {MAX_PIXELS}-pixel limit; use fewer or smaller images"
        )));
    }
    let mut rgb = BG.iter().copied().cycle().take(width * height * 3).collect::<Vec<u8>>();
    if let Some(t) = title.filter(|t| !t.is_empty()) {
        let max = (width - 2 * PAD) / (16 * scale);
        text::draw(&mut rgb, width, height, PAD, PAD, &text::fit(t, max), scale * 2, FG);
    }
    let mut json_cells = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        if c.rgb.len() != c.width * c.height * 3 {
            return Err(Error::InvalidValue(format!(
                "grid: image {i} has {} bytes for {}×{} RGB",
                c.rgb.len(),
                c.width,
                c.height
            )));
        }
        let (gx, gy) = (PAD + (i % cols) * (cw + PAD), title_h + PAD + (i / cols) * (ch + line));
        let (ox, oy) = (gx + (cw - c.width) / 2, gy + (ch - c.height) / 2);
        for y in 0..c.height {
            let src = &c.rgb[y * c.width * 3..(y + 1) * c.width * 3];
            let at = ((oy + y) * width + ox) * 3;
            rgb[at..at + src.len()].copy_from_slice(src);
        }
        let fitted: Vec<char> = text::fit(&c.label, max * label_lines).chars().collect();
        for (l, part) in fitted.chunks(max).enumerate() {
            let y = gy + ch + PAD + l * (8 * scale + 1);
            text::draw(&mut rgb, width, height, gx, y, &part.iter().collect::<String>(), scale, FG);
        }
        let settings: serde_json::Map<String, serde_json::Value> =
            c.settings.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect();
        json_cells.push(serde_json::json!({ "label": c.label, "settings": settings }));
    }
    let meta = serde_json::json!({ "title": title.unwrap_or(""), "cols": cols, "rows": rows, "cells": json_cells });
    let mut settings = vec![("hyperlora:grid".to_string(), meta.to_string())];
    if let Some(t) = title {
        settings.push(("prompt".to_string(), t.to_string()));
    }
    settings.push(("hyperlora_version".to_string(), env!("CARGO_PKG_VERSION").to_string()));
    Ok(Sheet { rgb, width, height, cols, rows, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_land_where_the_layout_says_and_labels_are_drawn() {
        let red = [200u8, 0, 0].repeat(16 * 16);
        let blue = [0u8, 0, 200].repeat(16 * 8);
        let s1 = vec![("seed".to_string(), "1".to_string())];
        let cells = [
            Cell { rgb: &red, width: 16, height: 16, label: "a".into(), settings: &s1 },
            Cell { rgb: &blue, width: 16, height: 8, label: "b".into(), settings: &[] },
            Cell { rgb: &red, width: 16, height: 16, label: "c".into(), settings: &[] },
        ];
        let s = grid(&cells, Some(2), Some("t")).unwrap();
        assert_eq!((s.cols, s.rows), (2, 2));
        let px = |x: usize, y: usize| &s.rgb[(y * s.width + x) * 3..(y * s.width + x) * 3 + 3];
        let title_h = 16 + 2 * PAD;
        // first cell's centre is red, the second (shorter, centred) blue, the empty fourth is background
        assert_eq!(px(PAD + 8, title_h + PAD + 8), &[200, 0, 0]);
        assert_eq!(px(PAD + 20 + 8, title_h + PAD + 8), &[0, 0, 200]);
        assert_eq!(px(PAD + 20 + 8, title_h + PAD + 2), &BG);
        // a label pixel under the first cell is lit
        let band = title_h + PAD + 16 + PAD;
        assert!((band..band + 8).any(|y| (PAD..PAD + 8).any(|x| px(x, y) == FG)));
        let meta: serde_json::Value = serde_json::from_str(&s.settings[0].1).unwrap();
        assert_eq!(meta["cells"][0]["settings"]["seed"], "1");
        assert_eq!(meta["cells"][2]["label"], "c");
    }
}
