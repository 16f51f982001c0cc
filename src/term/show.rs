//! Images in the line REPL and `run`: viuer draws them on kitty, iTerm2/WezTerm and sixel terminals; every
//! other terminal gets the shared halfblocks. The protocol is decided once per process, on the first image:
//! `HYPERLORA_GRAPHICS` when set, else the terminal's answers to one query (read with a timeout; keys typed
//! meanwhile are kept for the REPL's next line). viuer confirms kitty and sixel with the terminal itself, so
//! it is only handed a protocol that the terminal has just confirmed — a silent terminal never blocks it.
use super::{detect, forced, iterm2_from_env, query, Protocol};
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static TYPED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static CHOICE: OnceLock<(Protocol, Option<String>)> = OnceLock::new();
/// The cell size the terminal reported to `CSI 16 t` (when it answered), for protocols that scale to cells.
static CELL: OnceLock<Option<(u16, u16)>> = OnceLock::new();

/// The cells (columns, rows), at most `max_cols` × `max_rows`, to draw a `width` × `height` image in so that it
/// keeps its aspect ratio, for a protocol that draws a cell as `cell` = (width, height) pixels: the limiting side
/// is filled.
pub fn fit_cells(width: usize, height: usize, max_cols: usize, max_rows: usize, cell: (f64, f64)) -> (usize, usize) {
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    // columns per row that keep the aspect: (cols·cw) / (rows·ch) = w / h
    let per_row = (w / h) * (cell.1 / cell.0);
    // whole rows first, then the columns that match them (rounding both on their own skews the aspect by a cell)
    let rows = ((max_rows as f64).min(max_cols as f64 / per_row).floor() as usize).clamp(1, max_rows.max(1));
    let cols = (rows as f64 * per_row).round().clamp(1.0, max_cols.max(1) as f64);
    (cols as usize, rows)
}

/// Keys typed while the terminal was being asked (the REPL feeds them into its next line).
pub fn take_typed() -> Vec<u8> {
    TYPED.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default()
}

/// Typed bytes as the lines they complete and the unfinished rest (Backspace applied, Tab as a space, other keys
/// such as arrows dropped), from the same key parser the TUI replays.
pub fn lines_from_typed(bytes: &[u8]) -> (Vec<String>, String) {
    use crossterm::event::KeyCode;
    let (mut lines, mut cur) = (Vec::new(), String::new());
    for k in super::keys_from_bytes(bytes) {
        match k.code {
            KeyCode::Enter => lines.push(std::mem::take(&mut cur)),
            KeyCode::Backspace => {
                cur.pop();
            }
            KeyCode::Tab => cur.push(' '),
            KeyCode::Char(c) if k.modifiers.is_empty() => cur.push(c),
            _ => {}
        }
    }
    (lines, cur)
}

/// The protocol for this process, and a note to print once when a wish could not be honoured.
pub fn protocol() -> (Protocol, Option<String>) {
    CHOICE.get_or_init(choose).clone()
}

fn choose() -> (Protocol, Option<String>) {
    let wish = match forced() {
        Ok(w) => w,
        Err(e) => return (Protocol::Halfblocks, Some(e)),
    };
    if wish == Some(Protocol::Halfblocks) {
        return (Protocol::Halfblocks, None);
    }
    if !std::io::stdout().is_terminal() {
        return (
            Protocol::Halfblocks,
            wish.map(|w| format!("HYPERLORA_GRAPHICS={}: stdout is not a terminal, halfblocks instead", w.name())),
        );
    }
    let tty = query::open_tty();
    let raw = crossterm::terminal::enable_raw_mode().is_ok();
    let d = detect(tty.as_ref(), Duration::from_millis(1000));
    if raw {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    if let Ok(mut t) = TYPED.lock() {
        t.extend_from_slice(&d.typed);
    }
    let _ = CELL.set(d.answers.cell);
    match wish {
        None => (d.protocol, None),
        Some(p) => {
            let ok = match p {
                Protocol::Kitty => d.answers.kitty,
                Protocol::Sixel => d.answers.sixel,
                Protocol::Iterm2 => iterm2_from_env(),
                Protocol::Halfblocks => true,
            };
            if ok {
                (p, None)
            } else {
                let why = match p {
                    Protocol::Iterm2 => {
                        "viuer draws iTerm2 images only where TERM_PROGRAM or LC_TERMINAL names such a terminal"
                            .to_string()
                    }
                    _ => format!(
                        "the terminal did not confirm {} ({}), and viuer needs that confirmation",
                        p.name(),
                        d.why
                    ),
                };
                (Protocol::Halfblocks, Some(format!("HYPERLORA_GRAPHICS={}: {why}; halfblocks instead", p.name())))
            }
        }
    }
}

/// Draw an image (8-bit RGB) in at most `cols` × `rows` cells.
pub fn show(rgb: &[u8], width: usize, height: usize, cols: usize, rows: usize) {
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let (p, note) = protocol();
    if let Some(n) = note {
        if !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{n}");
        }
    }
    // the terminal's own cell size (its CSI 16 t answer, else TIOCGWINSZ), else the 1:2 cell most fonts have
    let term_cell =
        || super::cell_size(CELL.get().copied().flatten()).map(|(w, h)| (w as f64, h as f64)).unwrap_or((1.0, 2.0));
    let half = || print!("{}", super::halfblocks::halfblocks(rgb, width, height, cols, rows, term_cell()));
    if p == Protocol::Halfblocks {
        half();
        return;
    }
    let Some(img) = image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec()) else {
        half();
        return;
    };
    let _ = std::io::stdout().flush();
    // viuer draws a sixel cell as 6×12 pixels whatever the terminal's cells are, and stretches to the cells it is
    // given; kitty and iTerm2 scale the image to the cells, which are the terminal's own size: either way the cells
    // are chosen here so that the image keeps its aspect ratio
    let cell = match p {
        Protocol::Sixel => (6.0, 12.0),
        _ => term_cell(),
    };
    let (cols, rows) = fit_cells(width, height, cols.min(166), rows, cell);
    let cfg = viuer::Config {
        absolute_offset: false,
        width: Some(cols as u32),
        height: Some(rows as u32),
        use_kitty: p == Protocol::Kitty,
        use_iterm: p == Protocol::Iterm2,
        use_sixel: p == Protocol::Sixel,
        ..Default::default()
    };
    if let Err(e) = viuer::print(&image::DynamicImage::ImageRgb8(img), &cfg) {
        eprintln!("image preview ({}): {e}; halfblocks instead", p.name());
        half();
    }
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn cells_keep_the_aspect_ratio() {
        // a square image in at most 60×24 cells of 6×12 pixels: 48×24 cells, 288×288 pixels
        assert_eq!(super::fit_cells(128, 128, 60, 24, (6.0, 12.0)), (48, 24));
        // cells of 10×20 pixels, a wide image: the width limits
        assert_eq!(super::fit_cells(400, 100, 40, 24, (10.0, 20.0)), (40, 5));
        // xterm's 6×13 cells: a square image 24 rows high is 52 columns wide
        assert_eq!(super::fit_cells(128, 128, 80, 24, (6.0, 13.0)), (52, 24));
        // kitty's 9×20 cells in at most 42 columns: 18 whole rows and the 40 columns that match (not 42×19)
        assert_eq!(super::fit_cells(128, 128, 42, 24, (9.0, 20.0)), (40, 18));
    }

    #[test]
    fn typed_bytes_become_lines() {
        let (l, rest) = super::lines_from_typed(b"1 + 40\r2 +\x7f+ 40\n\x1b[A3 +");
        assert_eq!(l, vec!["1 + 40".to_string(), "2 + 40".to_string()]);
        assert_eq!(rest, "3 +");
    }
}
