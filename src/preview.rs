//! Terminal previews: an image drawn with unicode upper-half blocks in 24-bit colour (two pixel rows per text
//! row), which works in any modern terminal, inside tmux and over plain SSH.
use std::fmt::Write;

/// Render `rgb` (width × height, 8-bit RGB) into at most `cols` × `rows` character cells, box-filtered.
pub fn halfblocks(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize) -> String {
    if width == 0 || height == 0 || cols == 0 || rows == 0 {
        return String::new();
    }
    // keep the aspect ratio: a cell is one pixel wide and two pixels tall
    let scale = (width as f64 / cols as f64).max(height as f64 / (2 * rows) as f64).max(1.0);
    let (w, h) = (((width as f64 / scale).round() as usize).max(1), ((height as f64 / scale).round() as usize).max(1));
    let sample = |x: usize, y: usize| -> [u8; 3] {
        let span = |i: usize, n: usize| {
            let a = ((i as f64 * scale) as usize).min(n - 1);
            (a, (((i + 1) as f64 * scale) as usize).clamp(a + 1, n))
        };
        let ((x0, x1), (y0, y1)) = (span(x, width), span(y, height));
        let mut acc = [0u32; 3];
        for yy in y0..y1 {
            for xx in x0..x1 {
                for c in 0..3 {
                    acc[c] += rgb[(yy * width + xx) * 3 + c] as u32;
                }
            }
        }
        let n = ((x1 - x0) * (y1 - y0)) as u32;
        acc.map(|v| (v / n) as u8)
    };
    let mut out = String::new();
    for row in 0..h.div_ceil(2) {
        for x in 0..w {
            let top = sample(x, row * 2);
            let bottom = if row * 2 + 1 < h { sample(x, row * 2 + 1) } else { [0, 0, 0] };
            let _ = write!(out, "\x1b[38;2;{};{};{}m\x1b[48;2;{};{};{}m▀", top[0], top[1], top[2], bottom[0], bottom[1], bottom[2]);
        }
        out.push_str("\x1b[0m\n");
    }
    out
}
