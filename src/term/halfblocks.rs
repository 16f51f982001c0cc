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

/// Sample `rgb` (width × height, 8-bit RGB) into at most `cols` × `rows` cells that the terminal draws as `cell` =
/// (width, height) pixels, keeping the aspect ratio on the screen, never enlarging. A halfblock pixel is a cell's
/// width by half its height: `(1.0, 2.0)` is the square pixel that terminals without a size answer are assumed to
/// have; kitty's 9×20 cells make it 0.9 as wide as tall, so the columns take 0.9 as much of the image.
pub fn sample(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize, cell: (f64, f64)) -> Cells {
    if width == 0 || height == 0 || cols == 0 || rows == 0 || rgb.len() < width * height * 3 {
        return Cells { cols: 0, rows: 0, cells: Vec::new() };
    }
    // a halfblock pixel's width over its height; image pixels per column (sx) and per half row (sy = sx / aspect)
    let aspect = if cell.0 > 0.0 && cell.1 > 0.0 { 2.0 * cell.0 / cell.1 } else { 1.0 };
    let sx = (width as f64 / cols as f64).max(height as f64 * aspect / (2 * rows) as f64).max(1.0).max(aspect);
    let sy = sx / aspect;
    let (w, h) = (
        ((width as f64 / sx).round() as usize).clamp(1, cols),
        ((height as f64 / sy).round() as usize).clamp(1, 2 * rows),
    );
    let px = |x: usize, y: usize| -> [u8; 3] {
        let span = |i: usize, n: usize, scale: f64| {
            let a = ((i as f64 * scale) as usize).min(n - 1);
            (a, (((i + 1) as f64 * scale) as usize).clamp(a + 1, n))
        };
        let ((x0, x1), (y0, y1)) = (span(x, width, sx), span(y, height, sy));
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
pub fn halfblocks(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize, cell: (f64, f64)) -> String {
    ansi(&sample(rgb, width, height, cols, rows, cell))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the screen, a square image stays square in cells of any shape: the drawn width (columns × cell width)
    /// over the drawn height (half rows × half the cell height) is 1 within a cell's rounding.
    #[test]
    fn square_images_stay_square_on_the_screen() {
        let rgb = vec![200u8; 128 * 128 * 3];
        for cell in [(1.0, 2.0), (9.0, 20.0), (6.0, 13.0), (10.0, 20.0), (8.0, 12.0)] {
            for (cols, rows) in [(60, 20), (40, 30), (200, 12)] {
                let c = sample(&rgb, 128, 128, cols, rows, cell);
                let half_rows = c.cells.len() / c.cols * 2;
                let (w, h) = (c.cols as f64 * cell.0, half_rows as f64 * cell.1 / 2.0);
                let aspect = w / h;
                let slack = cell.0 / w + cell.1 / h;
                assert!(
                    (aspect - 1.0).abs() <= slack,
                    "{cell:?} in {cols}×{rows}: {}×{half_rows} px → {aspect}",
                    c.cols
                );
                assert!(c.cols <= cols && c.rows <= rows);
                // the limiting side is filled (a halfblock pixel never exceeds one image pixel: no enlarging)
                assert!(
                    c.cols == cols || c.rows == rows || c.cols == 128 || half_rows >= 127,
                    "{cell:?} {cols}×{rows}"
                );
            }
        }
        // kitty's 9×20 cell: 44 columns (396 px) for 40 half rows (400 px), where the 1:2 sampler gave 40 columns,
        // 360 px: 10 % narrow
        let c = sample(&rgb, 128, 128, 200, 20, (9.0, 20.0));
        assert_eq!((c.cols, c.rows), (44, 20));
        assert_eq!(sample(&rgb, 128, 128, 200, 20, (1.0, 2.0)).cols, 40);
    }
}
