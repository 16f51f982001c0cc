//! Line charts of numbers: the data, and a compact text rendering for the line REPL and `run` (the TUI draws
//! the same data with ratatui's Chart).
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
}

impl Plot {
    /// Pairs `xs` with `ys`; every number must be finite.
    pub fn new(xs: &[f64], ys: &[f64], title: &str, x: &str, y: &str) -> Result<Plot> {
        if xs.len() != ys.len() {
            return Err(Error::InvalidValue(format!("plot: {} x values but {} y values", xs.len(), ys.len())));
        }
        if xs.is_empty() {
            return Err(Error::InvalidValue("plot: no points".into()));
        }
        if let Some(i) = xs.iter().zip(ys).position(|(a, b)| !a.is_finite() || !b.is_finite()) {
            return Err(Error::InvalidValue(format!(
                "plot: point {i} is ({}, {}): only finite numbers can be drawn",
                xs[i], ys[i]
            )));
        }
        Ok(Plot {
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            points: xs.iter().copied().zip(ys.iter().copied()).collect(),
        })
    }

    /// (min, max) of x and of y, widened where all values are equal.
    pub fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let span = |v: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
            if hi > lo {
                (lo, hi)
            } else {
                (lo - 0.5, hi + 0.5)
            }
        };
        (span(&mut self.points.iter().map(|p| p.0)), span(&mut self.points.iter().map(|p| p.1)))
    }

    /// A `cols` × `rows` text chart: points as `●`, joined by `·`, with the y range on the left and the x range
    /// underneath; every line is indented by two spaces (so it never reads as a table row of numbers).
    pub fn text(&self, cols: usize, rows: usize) -> String {
        let (cols, rows) = (cols.max(8), rows.max(3));
        let ((x0, x1), (y0, y1)) = self.bounds();
        let mut g = vec![vec![' '; cols]; rows];
        let cell = |x: f64, y: f64| {
            let c = ((x - x0) / (x1 - x0) * (cols - 1) as f64).round() as usize;
            let r = ((y1 - y) / (y1 - y0) * (rows - 1) as f64).round() as usize;
            (c.min(cols - 1), r.min(rows - 1))
        };
        for w in self.points.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            for k in 1..32 {
                let t = k as f64 / 32.0;
                let (c, r) = cell(ax + (bx - ax) * t, ay + (by - ay) * t);
                if g[r][c] == ' ' {
                    g[r][c] = '·';
                }
            }
        }
        for &(x, y) in &self.points {
            let (c, r) = cell(x, y);
            g[r][c] = '●';
        }
        let (top, bottom) = (fmt(y1), fmt(y0));
        let w = top.len().max(bottom.len());
        let mut out = String::new();
        if !self.title.is_empty() {
            out.push_str(&format!("  {}\n", self.title));
        }
        if !self.y_label.is_empty() {
            out.push_str(&format!("  {:>w$}  {}\n", "", self.y_label));
        }
        for (i, row) in g.iter().enumerate() {
            let label = if i == 0 {
                top.clone()
            } else if i == rows - 1 {
                bottom.clone()
            } else {
                String::new()
            };
            out.push_str(&format!("  {label:>w$} ┤{}\n", row.iter().collect::<String>()));
        }
        out.push_str(&format!("  {:>w$} └{}\n", "", "─".repeat(cols)));
        let (l, r) = (fmt(x0), fmt(x1));
        let gap = cols.saturating_sub(l.len() + r.len());
        out.push_str(&format!("  {:>w$}  {l}{}{r}", "", " ".repeat(gap)));
        if !self.x_label.is_empty() {
            out.push_str(&format!("  {}", self.x_label));
        }
        out
    }
}

fn fmt(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_placed_and_bad_input_refused() {
        let p = Plot::new(&[0.0, 1.0, 2.0], &[0.0, 1.0, 0.0], "t", "strength", "score").unwrap();
        let t = p.text(9, 5);
        let rows: Vec<&str> = t.lines().collect();
        // title, y label, 5 rows, axis, x range
        assert_eq!(rows.len(), 9, "{t}");
        assert!(rows[2].contains("┤    ●"), "the peak sits mid-way on the top row: {t}");
        assert!(rows[6].contains("┤●") && rows[6].ends_with('●'), "bottom row holds both ends: {t}");
        assert!(Plot::new(&[0.0], &[f64::NAN], "", "", "").is_err());
        assert!(Plot::new(&[0.0, 1.0], &[1.0], "", "", "").is_err());
    }
}
