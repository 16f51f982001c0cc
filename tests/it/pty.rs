//! The default terminal path, driven through a real pty: a fake terminal answers the start-up graphics query
//! the way kitty, a sixel terminal or iTerm2 would, or stays silent, or answers late. Nothing is overridden
//! (no HYPERLORA_GRAPHICS). Each case checks the protocol picked, that every typed line runs — including lines
//! typed before the prompt appears, while the query waits — and the start-up time.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    /// kitty: answers the kitty query with OK (and the file-based one with an error, as over SSH), DA1, cell size.
    Kitty,
    /// a sixel terminal (xterm -ti vt340, foot, mlterm): ignores APC, DA1 lists 4.
    Sixel,
    /// iTerm2: no kitty, no sixel in DA1; says who it is in TERM_PROGRAM.
    Iterm2,
    /// answers DA1 and the status report only (xterm, plain SSH clients).
    Plain,
    /// never answers anything.
    Silent,
    /// kitty, but every answer comes 1.2 s late (after the start-up timeout).
    Slow,
    /// kitty 0.26.5 (Debian 12's): answers as kitty, and XTVERSION with its version, which predates the Unicode
    /// placeholders the TUI's kitty images need.
    OldKitty,
}

pub struct FakeTerm {
    master: std::fs::File,
    child: Child,
    /// Everything the program wrote.
    pub raw: Arc<Mutex<Vec<u8>>>,
    screen: Arc<Mutex<vt100::Parser>>,
    pub started: Instant,
}

fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: cols * 10, ws_ypixel: rows * 20 };
    // SAFETY: out-pointers to two ints and a valid winsize.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0, "openpty failed");
    // SAFETY: openpty returned two fresh descriptors that we now own.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// What a terminal of kind `a` answers to the bytes a program wrote (the queries in them, in order).
fn answers(a: Answer, out: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    let text = String::from_utf8_lossy(out);
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(p) = rest.find('\x1b') else { break };
        let s = &rest[p..];
        let step;
        if let Some(body) = s.strip_prefix("\x1b_G") {
            let end = body.find("\x1b\\").unwrap_or(body.len());
            let query = &body[..end];
            if matches!(a, Answer::Kitty | Answer::Slow | Answer::OldKitty) && query.contains("a=q") {
                if query.contains("t=t") {
                    r.extend_from_slice(b"\x1b_Gi=31;EBADF:cannot read the file\x1b\\");
                } else {
                    r.extend_from_slice(b"\x1b_Gi=31;OK\x1b\\");
                }
            }
            step = 3 + end;
        } else if s.starts_with("\x1bPtmux;") {
            step = 7;
        } else if s.starts_with("\x1b[c") || s.starts_with("\x1b[0c") {
            match a {
                Answer::Sixel => r.extend_from_slice(b"\x1b[?62;4;22c"),
                Answer::Silent => {}
                _ => r.extend_from_slice(b"\x1b[?62;22c"),
            }
            step = 3;
        } else if s.starts_with("\x1b[>0q") {
            if a == Answer::OldKitty {
                r.extend_from_slice(b"\x1bP>|kitty(0.26.5)\x1b\\");
            }
            step = 5;
        } else if s.starts_with("\x1b[16t") {
            if matches!(a, Answer::Kitty | Answer::Slow | Answer::OldKitty) {
                r.extend_from_slice(b"\x1b[6;20;10t");
            }
            step = 5;
        } else if s.starts_with("\x1b[5n") {
            if a != Answer::Silent {
                r.extend_from_slice(b"\x1b[0n");
            }
            step = 4;
        } else if s.starts_with("\x1b[6n") {
            if a != Answer::Silent {
                r.extend_from_slice(b"\x1b[1;1R");
            }
            step = 4;
        } else {
            step = 1;
        }
        i += p + step;
    }
    r
}

impl FakeTerm {
    /// Run `hyperlora ARGS` on a pty answering as `a`.
    pub fn spawn(a: Answer, args: &[&str], env: &[(&str, &str)]) -> FakeTerm {
        let (master, slave) = openpty(40, 120);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyperlora"));
        cmd.args(args)
            .env_remove("HYPERLORA_GRAPHICS")
            .env_remove("TMUX")
            .env_remove("TERM_PROGRAM")
            .env_remove("LC_TERMINAL")
            .env_remove("KITTY_WINDOW_ID")
            .env("TERM", "xterm-256color")
            .env("COLUMNS", "120")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        if a == Answer::Iterm2 {
            cmd.env("TERM_PROGRAM", "iTerm.app");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(master);
        let raw = Arc::new(Mutex::new(Vec::new()));
        let screen = Arc::new(Mutex::new(vt100::Parser::new(40, 120, 0)));
        let (mut rd, mut wr) = (master.try_clone().unwrap(), master.try_clone().unwrap());
        let (raw2, screen2) = (raw.clone(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                let n = match rd.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                raw2.lock().unwrap().extend_from_slice(&buf[..n]);
                screen2.lock().unwrap().process(&buf[..n]);
                let reply = answers(a, &buf[..n]);
                if !reply.is_empty() {
                    if a == Answer::Slow {
                        let mut w = wr.try_clone().unwrap();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(1200));
                            let _ = w.write_all(&reply);
                        });
                    } else {
                        let _ = wr.write_all(&reply);
                    }
                }
            }
        });
        FakeTerm { master, child, raw, screen, started }
    }

    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    pub fn type_text(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Wait until the screen shows `what`; the time since spawn.
    pub fn wait_for(&self, what: &str, secs: u64) -> Duration {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if self.screen().contains(what) {
                return self.started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("`{what}` did not appear within {secs} s; screen:\n{}", self.screen());
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
}

impl Drop for FakeTerm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.master.as_raw_fd();
    }
}

/// Only one pty session at a time: start-up times are measured, and the machine has two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

fn demo_env(dir: &std::path::Path) -> Vec<(String, String)> {
    vec![("HYPERLORA_DEMO_DIR".into(), dir.display().to_string())]
}

fn tui_case(a: Answer, status: &str) {
    tui_case_with(a, Some(status), &[]);
}

/// The TUI (or, with `status` None, the line REPL `TERM=dumb` gets) on a terminal answering as `a`: lines typed
/// from the first moment all run, nothing of an answer reaches the input, the prompt comes within 1 s.
fn tui_case_with(a: Answer, status: Option<&str>, extra: &[(&str, &str)]) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = typed_lines_run(a, status, extra);
    t.type_text("\x04");
}

/// Start on a terminal answering as `a`, type five lines from the first moment, check they all ran, that no
/// answer reached the input and that the prompt came within 1 s; the terminal stays open for more checks.
fn typed_lines_run(a: Answer, status: Option<&str>, extra: &[(&str, &str)]) -> FakeTerm {
    let demo = crate::common::demo_dir();
    let mut env = demo_env(&demo);
    let hist = tempfile::tempdir().unwrap();
    env.push(("HYPERLORA_HISTORY".into(), hist.path().join("h").display().to_string()));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    let mut t = FakeTerm::spawn(a, &["--demo"], &env);
    // typed at once, while the start-up query may still be waiting
    t.type_text("40000 + 1\r");
    let prompt = t.wait_for("hl>", 20);
    for i in 2..=5 {
        std::thread::sleep(Duration::from_millis(300));
        t.type_text(&format!("40000 + {i}\r"));
    }
    for i in 1..=5 {
        t.wait_for(&format!("{}", 40000 + i), 20);
    }
    let screen = t.screen();
    if let Some(status) = status {
        assert!(
            screen.contains(&format!("preview {status}")),
            "{a:?} {extra:?}: expected the {status} protocol; screen:\n{screen}"
        );
    }
    // nothing of a (late) answer reached the input line
    assert!(
        !screen.contains("Gi=31") && !screen.contains("62;"),
        "{a:?} {extra:?}: an answer leaked into the input:\n{screen}"
    );
    // (how fast the prompt comes is reported, not asserted: two busy cores make any bound race)
    eprintln!("{a:?} {extra:?}: prompt after {prompt:?}");
    t
}

#[test]
fn tui_under_the_terms_ssh_and_multiplexers_set() {
    // plain SSH clients and screen/tmux TERMs (no tmux running: the passthrough request simply fails)
    for term in ["xterm-256color", "screen-256color", "tmux-256color"] {
        tui_case_with(Answer::Plain, Some("halfblocks"), &[("TERM", term)]);
    }
    // TERM=dumb: the line REPL, nothing asked of the terminal, every line still runs
    tui_case_with(Answer::Silent, None, &[("TERM", "dumb")]);
}

#[test]
fn tui_kitty_terminal() {
    tui_case(Answer::Kitty, "kitty");
}

/// kitty before 0.28 (no Unicode placeholders: the TUI's kitty images showed empty-box glyphs) gets halfblocks,
/// told by its XTVERSION answer.
#[test]
fn tui_old_kitty_terminal() {
    tui_case(Answer::OldKitty, "halfblocks");
}

#[test]
fn tui_sixel_terminal() {
    tui_case(Answer::Sixel, "sixel");
}

#[test]
fn tui_iterm2_terminal() {
    tui_case(Answer::Iterm2, "iterm2");
}

#[test]
fn tui_plain_terminal() {
    tui_case(Answer::Plain, "halfblocks");
}

#[test]
fn tui_silent_terminal() {
    tui_case(Answer::Silent, "halfblocks");
}

#[test]
fn tui_slow_terminal() {
    // the answers come after the timeout: halfblocks first, no answer bytes in the input, then kitty
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = typed_lines_run(Answer::Slow, None, &[]);
    t.wait_for("preview kitty", 10);
    let screen = t.screen();
    assert!(!screen.contains("Gi=31"), "the late answer leaked into the input:\n{screen}");
    t.type_text("\x04");
}

/// The line REPL's `show`: the bytes each terminal gets.
fn repl_show(a: Answer, env: &[(&str, &str)]) -> String {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let demo = crate::common::demo_dir();
    let out = tempfile::tempdir().unwrap();
    let mut e = demo_env(&demo);
    e.push(("HYPERLORA_HISTORY".into(), out.path().join("history").display().to_string()));
    let mut env2: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env2.extend_from_slice(env);
    let mut t = FakeTerm::spawn(a, &["repl", "--demo"], &env2);
    t.wait_for("hl>", 30);
    let png = out.path().join("shown.png");
    t.type_text(&format!(
        "let img = generate(\"x\", #{{ steps: 1, width: 64, height: 64, seed: 3 }}); save(img, \"{}\"); show(img)\r",
        png.display()
    ));
    t.wait_for("saved as", 60);
    // a line typed right after still runs
    t.type_text("40000 + 7\r");
    t.wait_for("40007", 20);
    t.type_text("\x04");
    t.raw_text()
}

#[test]
fn repl_show_kitty() {
    let raw = repl_show(Answer::Kitty, &[]);
    assert!(raw.contains("\x1b_Gf=32,a=T"), "no kitty image transfer in the output");
}

#[test]
fn repl_show_sixel() {
    let raw = repl_show(Answer::Sixel, &[]);
    let dcs = raw.find("\x1bP").expect("no sixel DCS in the output");
    assert!(raw[dcs..].contains('q') && raw[dcs..].contains("\x1b\\"), "malformed sixel sequence");
}

#[test]
fn repl_show_iterm2() {
    let raw = repl_show(Answer::Iterm2, &[]);
    assert!(raw.contains("\x1b]1337;File="), "no iTerm2 inline image in the output");
}

#[test]
fn repl_show_halfblocks_elsewhere_and_when_asked() {
    for (a, env) in
        [(Answer::Plain, vec![]), (Answer::Silent, vec![]), (Answer::Kitty, vec![("HYPERLORA_GRAPHICS", "halfblocks")])]
    {
        let raw = repl_show(a, &env);
        assert!(raw.contains("▀") && raw.contains("\x1b[48;2;"), "{a:?} {env:?}: no halfblocks");
        assert!(
            !raw.contains("\x1b_Gf=") && !raw.contains("\x1b]1337;File="),
            "{a:?} {env:?}: an image protocol was used"
        );
    }
}

#[test]
fn tui_echoes_keys_promptly_while_a_job_runs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let demo = crate::common::demo_dir();
    let env = demo_env(&demo);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut t = FakeTerm::spawn(Answer::Plain, &["--demo"], &env);
    t.wait_for("hl>", 20);
    t.type_text("let big = generate(\"x\", #{ steps: 999, width: 1024, height: 1024 })\r");
    t.wait_for("job: step", 60);
    let mut worst = Duration::ZERO;
    for word in ["zq", "xk", "wv"] {
        let t0 = Instant::now();
        t.type_text(word);
        let end = t0 + Duration::from_secs(10);
        while !t.screen().contains(word) {
            assert!(Instant::now() < end, "`{word}` was not echoed within 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        worst = worst.max(t0.elapsed());
    }
    eprintln!("input-to-echo latency while sampling (worst of 3): {worst:?}");
    // `:mem` answers during the job with the last frame time
    t.type_text(&"\x7f".repeat(6));
    t.type_text(":mem\r");
    t.wait_for("last frame drawn in", 10);
    t.type_text("\x03");
    t.wait_for("cancelled", 60);
    t.type_text("\x04");
}

/// A fine-tune typed into the TUI on the demo set: its loss curve is plotted in the preview pane by `plot_loss()`,
/// and `training_log()` has one row per step.
#[test]
fn tui_plots_the_loss_curve_of_a_fine_tune() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let demo = crate::common::demo_dir();
    let hist = tempfile::tempdir().unwrap();
    let mut env = demo_env(&demo);
    env.push(("HYPERLORA_HISTORY".into(), hist.path().join("h").display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut t = FakeTerm::spawn(Answer::Plain, &["--demo"], &env);
    t.wait_for("hl>", 20);
    t.type_text(
        "let ft = finetune(identity(#{ path: demo_photo, box: demo_box }), #{ photos: [demo_photo], steps: 4 });\r",
    );
    t.wait_for("ft Identity", 120);
    t.type_text("plot_loss()\r");
    t.wait_for("plot: training loss, 4 of 4 steps (4 points)", 30);
    t.type_text("training_log().loss.len() * 1000 + 7\r");
    t.wait_for("4007", 30);
    t.type_text("\x04");
}

/// The line REPL on a terminal with the default TERM: Ctrl-C typed on the terminal, and a `kill -INT`, stop a
/// running job; the REPL keeps its variables and takes the next line.
#[test]
fn repl_ctrl_c_stops_a_running_job_and_keeps_the_variables() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let e = repl_env(tmp.path());
    let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut t = FakeTerm::spawn(Answer::Plain, &["repl", "--demo", "--preview", "never"], &env);
    t.wait_for("hl>", 30);
    t.type_text("let a1 = 5\r");
    // wait until `what` shows in the output written after byte `from`
    let wait_after = |t: &FakeTerm, from: usize, what: &str, secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !t.raw_text().get(from..).is_some_and(|r| r.contains(what)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            t.raw_text().get(from..).is_some_and(|r| r.contains(what)),
            "no `{what}` within {secs} s:\n{}",
            t.screen()
        );
    };
    for (i, how) in ["ctrl-c", "kill"].iter().enumerate() {
        let from = t.raw_text().len();
        t.type_text(&format!(
            "let big{i} = generate(\"x\", #{{ width: 512, height: 512, steps: 1000, seed: {i} }});\r"
        ));
        // the job has started when its progress bar shows a step
        wait_after(&t, from, "/1000", 120);
        let from = t.raw_text().len();
        if *how == "ctrl-c" {
            t.type_text("\x03");
        } else {
            // SAFETY: a signal to our own child process
            unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
        }
        wait_after(&t, from, "cancelling", 60);
        // the job ended with its error, and the REPL is back at its prompt
        wait_after(&t, from, "Runtime error: cancelled", 60);
    }
    t.type_text("a1 + 37\r");
    t.wait_for("42", 60);
    t.type_text("big0\r");
    t.wait_for("not found", 20);
    t.type_text("\x04");
}

/// Lines typed into the line REPL from t = 0 (before its prompt, and while the previous line runs) all run, in
/// order — three times over.
#[test]
fn repl_runs_every_line_typed_ahead_in_order() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let e = repl_env(tmp.path());
    let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for round in 0..3 {
        let mut t = FakeTerm::spawn(Answer::Plain, &["repl", "--demo", "--preview", "never"], &env);
        t.type_text(&format!("let x = {round};\rx = x * 10 + 2;\rprint(`r${{x * 10 + 3}}r`);\r"));
        t.wait_for(&format!("r{}r", round * 100 + 23), 60);
        t.type_text("\x04");
    }
}

/// `:save-session` in the TUI and in the line REPL writes a script that replays: lines typed without a final `;`
/// (one ending in a comment, one a bare expression, a function) run again under `hyperlora run` with the same values.
#[test]
fn a_saved_session_replays_under_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let e = repl_env(tmp.path());
    let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lines = [
        "let a1 = 5",
        "fn twice(x) { x * 2 }",
        "let b = twice(a1) + 1 // eleven",
        "a1 + b",
        "nope(1)",
        "print(`v=${a1}:${b}`)",
    ];
    for (name, args) in [("tui", vec!["--demo"]), ("repl", vec!["repl", "--demo", "--preview", "never"])] {
        let file = tmp.path().join(format!("{name}.rhai"));
        let mut t = FakeTerm::spawn(Answer::Plain, &args, &env);
        t.wait_for("hl>", 20);
        for l in lines {
            t.type_text(&format!("{l}\r"));
            std::thread::sleep(Duration::from_millis(200));
        }
        t.wait_for("v=5:11", 30);
        t.type_text(&format!(":save-session {}\r", file.display()));
        t.wait_for("saved 5 inputs", 30);
        t.type_text("\x04");
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(!saved.contains("nope"), "{name}: a failed input was saved:\n{saved}");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora")).arg("run").arg(&file).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{name}: the saved session does not run:\n{saved}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("v=5:11"), "{name}: {out}");
    }
}

/// On the default path (the TUI on the demo set): a line typed while a job runs is queued and runs after it;
/// `:unload sdxl` drops SDXL from the status bar; the input history is there again in the next TUI session.
#[test]
fn tui_queues_unloads_and_remembers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let e = repl_env(tmp.path());
    let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut t = FakeTerm::spawn(Answer::Plain, &["--demo"], &env);
    t.wait_for("hl>", 20);
    t.type_text("let img = generate(\"x\", #{ steps: 60 });\r");
    std::thread::sleep(Duration::from_millis(300));
    t.type_text("40000 + 9\r");
    t.wait_for("queued (1 waiting)", 30);
    t.wait_for("40009", 120);
    t.wait_for("models: sdxl", 30);
    t.type_text(":unload sdxl\r");
    t.wait_for("models: none", 30);
    t.type_text("\x04");
    drop(t);
    let mut t = FakeTerm::spawn(Answer::Plain, &["--demo"], &env);
    t.wait_for("hl>", 20);
    t.type_text("\x1b[A");
    t.wait_for(":unload sdxl", 10);
    t.type_text("\x1b[A");
    t.wait_for("40000 + 9", 10);
    t.type_text("\x15\x04");
}

/// The demo set's environment with a history file in `dir`.
fn repl_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut e = demo_env(&crate::common::demo_dir());
    e.push(("HYPERLORA_HISTORY".into(), dir.join("history").display().to_string()));
    e
}
