//! The one halfblock sampler: an RGB image → per-cell (top, bottom) colours, two pixel rows per text row, box
//! filtered. The line REPL prints it as ANSI text, the TUI draws it into its buffer.
use std::fmt::Write;

/// Cells of a halfblock picture, row-major: `cells[row * cols + col] = (top, bottom)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cells {
    pub cols: usize,
    pub rows: usize,
    pub cells: Vec<([u8; 3], [u8; 3])>,
}

/// Sample `rgb` (width × height, 8-bit RGB) into at most `cols` × `rows` cells, keeping the aspect ratio (a cell
/// is one pixel wide and two tall), never enlarging.
pub fn sample(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize) -> Cells {
    if width == 0 || height == 0 || cols == 0 || rows == 0 || rgb.len() < width * height * 3 {
        return Cells { cols: 0, rows: 0, cells: Vec::new() };
    }
    let scale = (width as f64 / cols as f64).max(height as f64 / (2 * rows) as f64).max(1.0);
    let (w, h) = (
        ((width as f64 / scale).round() as usize).clamp(1, cols),
        ((height as f64 / scale).round() as usize).clamp(1, 2 * rows),
    );
    let px = |x: usize, y: usize| -> [u8; 3] {
        let span = |i: usize, n: usize| {
            let a = ((i as f64 * scale) as usize).min(n - 1);
            (a, (((i + 1) as f64 * scale) as usize).clamp(a + 1, n))
        };
        let ((x0, x1), (y0, y1)) = (span(x, width), span(y, height));
        let mut acc = [0u32; 3];
        for yy in y0..y1 {
            for xx in x0..x1 {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += rgb[(yy * width + xx) * 3 + c] as u32;
                }
            }
        }
        let n = ((x1 - x0) * (y1 - y0)) as u32;
        acc.map(|v| (v / n) as u8)
    };
    let rows_out = h.div_ceil(2);
    let mut cells = Vec::with_capacity(w * rows_out);
    for row in 0..rows_out {
        for x in 0..w {
            let bottom = if row * 2 + 1 < h { px(x, row * 2 + 1) } else { [0, 0, 0] };
            cells.push((px(x, row * 2), bottom));
        }
    }
    Cells { cols: w, rows: rows_out, cells }
}

/// The cells as 24-bit ANSI text, one line per row.
pub fn ansi(c: &Cells) -> String {
    let mut out = String::new();
    for row in c.cells.chunks(c.cols.max(1)) {
        for (t, b) in row {
            let _ = write!(out, "\x1b[38;2;{};{};{}m\x1b[48;2;{};{};{}m▀", t[0], t[1], t[2], b[0], b[1], b[2]);
        }
        out.push_str("\x1b[0m\n");
    }
    out
}

/// Sample and render as ANSI text in one call.
pub fn halfblocks(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize) -> String {
    ansi(&sample(rgb, width, height, cols, rows))
}
