//! The terminal as the front ends share it: which graphics protocol it draws (asked once, without losing keys),
//! the one halfblock sampler, and images shown in the line REPL and `run` (through viuer).
pub mod halfblocks;
pub mod query;
pub mod show;

use std::time::Duration;

/// Bytes typed while the terminal was being asked, as key events: printable characters, Enter, Backspace, Tab,
/// Ctrl-C/Ctrl-D, arrows, Home/End; other escape sequences (CSI, SS3) are skipped whole. The TUI replays these;
/// the line REPL folds them into lines.
pub fn keys_from_bytes(bytes: &[u8]) -> Vec<crossterm::event::KeyEvent> {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        match c {
            '\r' | '\n' => out.push(key(KeyCode::Enter)),
            '\x7f' | '\x08' => out.push(key(KeyCode::Backspace)),
            '\t' => out.push(key(KeyCode::Tab)),
            '\x03' => out.push(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            '\x04' => out.push(KeyEvent::new(KeyCode::Char('d'), KeyModifiers::CONTROL)),
            '\x1b' => match (it.next(), it.peek().copied()) {
                (Some('[') | Some('O'), Some(f @ ('A' | 'B' | 'C' | 'D' | 'H' | 'F'))) => {
                    it.next();
                    out.push(key(match f {
                        'A' => KeyCode::Up,
                        'B' => KeyCode::Down,
                        'C' => KeyCode::Right,
                        'D' => KeyCode::Left,
                        'H' => KeyCode::Home,
                        _ => KeyCode::End,
                    }));
                }
                (Some('['), _) => {
                    // another CSI sequence: skip to its final byte
                    for n in it.by_ref() {
                        if ('\x40'..='\x7e').contains(&n) {
                            break;
                        }
                    }
                }
                (Some('O'), _) => {
                    // another SS3 sequence (F1–F4 …): three bytes
                    it.next();
                }
                (None, _) => out.push(key(KeyCode::Esc)),
                _ => {}
            },
            c if c.is_control() => {}
            c => out.push(key(KeyCode::Char(c))),
        }
    }
    out
}

/// The size in pixels at which the terminal draws a cell: its answer to `CSI 16 t` when it gave one, else the
/// window's pixel size over its cells from the `TIOCGWINSZ` ioctl (xterm fills that although it ignores the query),
/// else none.
pub fn cell_size(answer: Option<(u16, u16)>) -> Option<(u16, u16)> {
    if let Some((w, h)) = answer.filter(|(w, h)| *w > 0 && *h > 0) {
        return Some((w, h));
    }
    let ws = crossterm::terminal::window_size().ok()?;
    (ws.width > 0 && ws.height > 0 && ws.columns > 0 && ws.rows > 0)
        .then(|| ((ws.width / ws.columns).max(1), (ws.height / ws.rows).max(1)))
}

/// How images reach the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Kitty,
    Sixel,
    Iterm2,
    Halfblocks,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Kitty => "kitty",
            Protocol::Sixel => "sixel",
            Protocol::Iterm2 => "iterm2",
            Protocol::Halfblocks => "halfblocks",
        }
    }
}

/// `HYPERLORA_GRAPHICS` = kitty | sixel | iterm2 | halfblocks; another value is an error naming the choices.
pub fn forced() -> Result<Option<Protocol>, String> {
    match std::env::var("HYPERLORA_GRAPHICS").ok().as_deref().map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("kitty") => Ok(Some(Protocol::Kitty)),
        Some("sixel") => Ok(Some(Protocol::Sixel)),
        Some("iterm2") | Some("iterm") | Some("wezterm") => Ok(Some(Protocol::Iterm2)),
        Some("halfblocks") => Ok(Some(Protocol::Halfblocks)),
        Some(v) => Err(format!("HYPERLORA_GRAPHICS={v}: expected kitty, sixel, iterm2, halfblocks or auto")),
    }
}

/// Inside tmux (its variable, or a tmux/screen TERM that tmux sets).
pub fn in_tmux() -> bool {
    std::env::var_os("TMUX").is_some_and(|v| !v.is_empty())
        || std::env::var("TERM").is_ok_and(|t| t.starts_with("tmux"))
}

/// Terminals that draw iTerm2's inline images and say so in the environment (they do not answer a query).
pub fn iterm2_from_env() -> bool {
    let has = |var: &str, names: &[&str]| std::env::var(var).is_ok_and(|v| names.iter().any(|n| v.contains(n)));
    has("TERM_PROGRAM", &["iTerm", "WezTerm", "mintty", "rio", "WarpTerminal"])
        || has("LC_TERMINAL", &["iTerm", "WezTerm", "mintty", "rio"])
}

/// The outcome of asking the terminal.
#[derive(Debug, Clone)]
pub struct Detected {
    pub protocol: Protocol,
    pub answers: query::Answers,
    /// Keys typed while the query waited: they belong to the input.
    pub typed: Vec<u8>,
    pub elapsed: Duration,
    /// Why this protocol (for the log).
    pub why: String,
}

/// How long the start-up query waits for a terminal that does not answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(400);

/// Ask the terminal on `tty` (already in raw mode). `TERM=dumb` or no terminal: halfblocks, nothing asked.
pub fn detect(tty: Option<&std::fs::File>, timeout: Duration) -> Detected {
    let none = |why: &str| Detected {
        protocol: Protocol::Halfblocks,
        answers: Default::default(),
        typed: Vec::new(),
        elapsed: Duration::ZERO,
        why: why.into(),
    };
    if std::env::var("TERM").is_ok_and(|t| t == "dumb") {
        return none("TERM=dumb");
    }
    let Some(tty) = tty else { return none("no terminal to ask") };
    let tmux = in_tmux();
    if tmux {
        // let the kitty query (and images) through to the outer terminal; harmless when tmux refuses
        let _ = std::process::Command::new("tmux")
            .args(["set", "-p", "allow-passthrough", "on"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let mut out = tty;
    let reply = match query::query(query::raw_fd(tty), &mut out, tmux, timeout) {
        Ok(r) => r,
        Err(e) => return none(&format!("terminal query failed: {e}")),
    };
    let a = reply.answers;
    let (protocol, why) = if a.kitty {
        (Protocol::Kitty, "the terminal answered the kitty graphics query".to_string())
    } else if iterm2_from_env() {
        (Protocol::Iterm2, "TERM_PROGRAM/LC_TERMINAL name an iTerm2-protocol terminal".into())
    } else if a.sixel {
        (Protocol::Sixel, "DA1 lists sixel".into())
    } else if !a.complete {
        (Protocol::Halfblocks, format!("no answer within {} ms", timeout.as_millis()))
    } else {
        (Protocol::Halfblocks, "no graphics protocol in the answers".into())
    };
    Detected { protocol, answers: a, typed: reply.other, elapsed: reply.elapsed, why }
}
