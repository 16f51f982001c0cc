//! Asking the terminal which graphics it draws, without losing a keystroke.
//!
//! The queries (kitty graphics, XTVERSION, cell size, DA1 for sixel, then a status report that every terminal answers) are
//! written once; the answers are read on the calling thread with `poll`, until the status report arrives or
//! the timeout passes. No reader thread is left behind (the cause of lost keys with a parked reader), and every
//! byte read that is not part of an answer — keys typed while we waited — is handed back to the caller, which
//! puts it into its input.
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// What the terminal answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answers {
    /// The kitty graphics query was answered with OK.
    pub kitty: bool,
    /// DA1 lists attribute 4 (sixel).
    pub sixel: bool,
    /// DA1 was answered at all.
    pub da1: bool,
    /// Cell size in pixels (width, height), from `CSI 16 t`.
    pub cell: Option<(u16, u16)>,
    /// kitty's version (major, minor, patch), from its answer to XTVERSION (`CSI > 0 q` → `DCS >| kitty(0.26.5) ST`).
    pub kitty_version: Option<(u16, u16, u16)>,
    /// The final status report arrived: every earlier answer is in.
    pub complete: bool,
}

/// The result of one query.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub answers: Answers,
    /// Bytes that were not an answer (typed keys), in order.
    pub other: Vec<u8>,
    pub elapsed: Duration,
}

/// The query bytes. Inside tmux the kitty query is wrapped for passthrough (tmux itself answers DA1 and the
/// status report, so those stay unwrapped and the read always ends).
pub fn query_bytes(tmux: bool) -> Vec<u8> {
    let kitty = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\";
    let mut q = String::new();
    if tmux {
        q.push_str("\x1bPtmux;");
        q.push_str(&kitty.replace('\x1b', "\x1b\x1b"));
        q.push_str("\x1b\\");
    } else {
        q.push_str(kitty);
    }
    q.push_str("\x1b[>0q\x1b[16t\x1b[c\x1b[5n");
    q.into_bytes()
}

/// Splits a byte stream into terminal answers and everything else.
#[derive(Debug, Default)]
pub struct Scanner {
    pending: Vec<u8>,
    pub answers: Answers,
    pub other: Vec<u8>,
}

enum Piece {
    /// Bytes that are not an answer (or not yet known to be one: `Incomplete`).
    Other(usize),
    Answer(usize),
    Incomplete,
}

impl Scanner {
    pub fn push(&mut self, bytes: &[u8]) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(bytes);
        let mut at = 0;
        while at < pending.len() {
            match self.piece(&pending[at..]) {
                Piece::Other(n) => {
                    let end = at + n;
                    self.other.extend_from_slice(&pending[at..end]);
                    at = end;
                }
                Piece::Answer(n) => at += n,
                Piece::Incomplete => break,
            }
        }
        pending.drain(..at);
        self.pending = pending;
    }

    /// Give up on an unfinished sequence (the timeout passed): its bytes are input after all.
    pub fn flush(&mut self) {
        let p = std::mem::take(&mut self.pending);
        self.other.extend_from_slice(&p);
    }

    fn piece(&mut self, b: &[u8]) -> Piece {
        if b[0] != 0x1b {
            let n = b.iter().position(|&c| c == 0x1b).unwrap_or(b.len());
            return Piece::Other(n);
        }
        if b.len() < 2 {
            return Piece::Incomplete;
        }
        match b[1] {
            // APC: the kitty answer `ESC _ G i=31;OK ESC \`
            b'_' => {
                let Some(end) = b.windows(2).position(|w| w == b"\x1b\\") else {
                    return if b.len() > 4096 { Piece::Other(2) } else { Piece::Incomplete };
                };
                let body = &b[2..end];
                if body.starts_with(b"G") {
                    if body.windows(3).any(|w| w == b";OK") {
                        self.answers.kitty = true;
                    }
                    return Piece::Answer(end + 2);
                }
                Piece::Other(end + 2)
            }
            // DCS: the XTVERSION answer `ESC P >| name(version) ESC \`
            b'P' => {
                let Some(end) = b.windows(2).position(|w| w == b"\x1b\\") else {
                    return if b.len() > 256 { Piece::Other(2) } else { Piece::Incomplete };
                };
                let body = &b[2..end];
                match body.strip_prefix(b">|") {
                    Some(name) => {
                        self.answers.kitty_version = kitty_version(&String::from_utf8_lossy(name));
                        Piece::Answer(end + 2)
                    }
                    None => Piece::Other(end + 2),
                }
            }
            b'[' => {
                // CSI: parameters then one final byte in 0x40..=0x7e
                let Some(fin) = b[2..].iter().position(|&c| (0x40..=0x7e).contains(&c)) else {
                    return if b.len() > 64 { Piece::Other(2) } else { Piece::Incomplete };
                };
                let (params, last, n) = (&b[2..2 + fin], b[2 + fin], fin + 3);
                match (params.first(), last) {
                    (Some(b'?'), b'c') => {
                        self.answers.da1 = true;
                        self.answers.sixel = params[1..].split(|&c| c == b';').any(|p| p == b"4");
                        Piece::Answer(n)
                    }
                    (Some(b'6'), b't') => {
                        let v: Vec<u16> =
                            String::from_utf8_lossy(params).split(';').filter_map(|s| s.parse().ok()).collect();
                        if let [6, h, w] = v[..] {
                            if h > 0 && w > 0 {
                                self.answers.cell = Some((w, h));
                            }
                        }
                        Piece::Answer(n)
                    }
                    (Some(b'0' | b'3'), b'n') if params.len() == 1 => {
                        self.answers.complete = true;
                        Piece::Answer(n)
                    }
                    _ => Piece::Other(n),
                }
            }
            _ => Piece::Other(1),
        }
    }
}

/// `kitty(0.26.5)` → (0, 26, 5); another terminal's name → None.
fn kitty_version(name: &str) -> Option<(u16, u16, u16)> {
    let v = name.trim().strip_prefix("kitty(")?.split(')').next()?;
    let mut n = v.split('.').map(|p| p.parse::<u16>().ok());
    Some((n.next()??, n.next().flatten().unwrap_or(0), n.next().flatten().unwrap_or(0)))
}

/// Write the query to `out` and read the answers from `input` (both the terminal, in raw mode) until the status
/// report or `timeout`.
pub fn query(input: RawFd, out: &mut impl std::io::Write, tmux: bool, timeout: Duration) -> std::io::Result<Reply> {
    let start = Instant::now();
    out.write_all(&query_bytes(tmux))?;
    out.flush()?;
    let mut sc = Scanner::default();
    let mut buf = [0u8; 1024];
    // in tmux the status report comes from tmux at once, the passthrough kitty answer from the outer terminal
    // a moment later: allow it a short grace
    let grace = Duration::from_millis(150);
    let mut done_at: Option<Instant> = None;
    loop {
        if sc.answers.complete && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        let limit = match done_at {
            Some(_) if !tmux || sc.answers.kitty => break,
            Some(t) => t.duration_since(start) + grace,
            None => timeout,
        };
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd { fd: input, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 && pfd.revents & libc::POLLIN == 0 {
            break;
        }
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(input, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        sc.push(&buf[..n as usize]);
    }
    sc.flush();
    Ok(Reply { answers: sc.answers, other: sc.other, elapsed: start.elapsed() })
}

/// Bytes already waiting on `input` (a 0 ms poll), without blocking.
pub fn drain(input: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let mut pfd = libc::pollfd { fd: input, events: libc::POLLIN, revents: 0 };
        // SAFETY: as above.
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 || pfd.revents & libc::POLLIN == 0 {
            return out;
        }
        // SAFETY: as above.
        let n = unsafe { libc::read(input, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// The controlling terminal, for the query: `/dev/tty`, so it works whatever stdin and stdout are.
pub fn open_tty() -> Option<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok()
}

pub fn raw_fd(f: &std::fs::File) -> RawFd {
    f.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_typed_keys_are_told_apart() {
        let mut s = Scanner::default();
        // typed keys around and between the answers, split at awkward places
        let stream: &[u8] = b"1 + 4\x1b_Gi=31;OK\x1b\\0\r\x1b[6;20;10t\x1b[A\x1b[?62;4;22c2 \x1b[0nx";
        for chunk in stream.chunks(3) {
            s.push(chunk);
        }
        s.flush();
        assert_eq!(
            s.answers,
            Answers { kitty: true, sixel: true, da1: true, cell: Some((10, 20)), complete: true, kitty_version: None }
        );
        assert_eq!(s.other, b"1 + 40\r\x1b[A2 x");
        let mut s = Scanner::default();
        s.push(b"\x1b[?1;2c\x1b_Gi=31;ENOTSUPPORTED\x1b\\\x1b[0n");
        assert_eq!(s.answers, Answers { da1: true, complete: true, ..Default::default() });
        assert!(s.other.is_empty());
    }

    #[test]
    fn xtversion_names_kittys_version() {
        let mut s = Scanner::default();
        s.push(b"a\x1bP>|kitty(0.26.5)\x1b\\b\x1b_Gi=31;OK\x1b\\\x1b[0n");
        assert_eq!(s.answers.kitty_version, Some((0, 26, 5)));
        assert_eq!(s.other, b"ab");
        let mut s = Scanner::default();
        s.push(b"\x1bP>|XTerm(379)\x1b\\\x1b[0n");
        assert_eq!(s.answers.kitty_version, None);
        assert!(s.other.is_empty() && s.answers.complete);
    }

    #[test]
    fn tmux_wraps_only_the_kitty_query() {
        let q = String::from_utf8(query_bytes(true)).unwrap();
        assert!(q.starts_with("\x1bPtmux;\x1b\x1b_G"));
        assert!(q.ends_with("\x1b[c\x1b[5n"));
    }
}
