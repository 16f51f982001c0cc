//! The TUI (ratatui + crossterm): an input area, the output log, the values in scope, an image preview and a
//! status bar. Evaluation runs on a worker thread, so the UI stays live during a generation and Ctrl-C stops the
//! job without losing the session. It holds no model logic: it drives a `Script` over the `Session`.
pub mod app;
pub mod ui;

use crate::front::args::{define_demo, device_dtype, resolve_paths, session_with, ModelArgs};
use crate::script::{describe, Limits, Out, Script};
use crate::session::{Event, Image};
use app::{Action, App, Job, Msg, Value};
use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The values in scope as the sidebar shows them.
pub fn values(script: &Script) -> Vec<Value> {
    script
        .variables()
        .into_iter()
        .map(|(name, v)| Value {
            kind: v.type_name().rsplit("::").next().unwrap_or("").to_string(),
            text: describe(&v),
            image: v.clone().try_cast::<Image>(),
            name,
        })
        .collect()
}

/// Evaluate one input on the worker: script code, or a `:` command the worker answers (`:models`, `:unload`,
/// `:load-session`, `:vars`).
fn eval(script: &mut Script, code: &str) -> (Result<String, String>, bool) {
    use crate::front::input::{command, Command};
    let (source, text) = match command(code) {
        Ok(Some(Command::LoadSession(f))) => match crate::files::read_text(&f) {
            Ok(t) => (f.display().to_string(), t),
            Err(e) => return (Err(format!("{}: cannot read: {e}", f.display())), false),
        },
        Ok(Some(Command::Models)) => ("input".into(), "models()".into()),
        Ok(Some(Command::Unload(n))) => ("input".into(), format!("unload({n:?})")),
        Ok(Some(Command::Vars)) => {
            let vars: Vec<String> =
                script.variables().into_iter().map(|(n, v)| format!("{n} = {}", describe(&v))).collect();
            return (Ok(vars.join("\n")), false);
        }
        Ok(Some(c)) => return (Err(format!("{c:?} is answered by the UI")), false),
        Err(e) => return (Err(e), false),
        Ok(None) => ("input".into(), code.to_string()),
    };
    match script.eval(&text) {
        Ok(v) if v.is_unit() => (Ok(String::new()), false),
        Ok(v) => (Ok(describe(&v)), false),
        Err(e) => (Err(e.located(&source)), e.cancelled),
    }
}

/// Commands the UI answers itself; `None` when the worker must run it (script code or a worker command).
fn ui_command(app: &mut App, code: &str) -> Option<Action> {
    use crate::front::input::{command, Command};
    match command(code) {
        Ok(None) | Ok(Some(Command::Models | Command::Unload(_) | Command::LoadSession(_) | Command::Vars)) => {
            return None
        }
        Err(e) => app.info(e),
        Ok(Some(Command::Quit)) => return Some(Action::Quit),
        Ok(Some(Command::Help)) => app.help = true,
        Ok(Some(Command::Mem)) => {
            let line = format!(
                "resident memory {} · last frame drawn in {:.1} ms",
                rss().unwrap_or_else(|| "unknown".into()),
                app.frame.as_secs_f64() * 1e3
            );
            app.info(line);
        }
        Ok(Some(Command::Preview(on))) => app.preview = on,
        Ok(Some(Command::SaveSession(f))) => {
            let said = crate::front::input::save_session(&app.succeeded, &f);
            app.info(said)
        }
    }
    Some(Action::None)
}

pub use crate::front::input::rss;

/// The preview's graphics: `HYPERLORA_GRAPHICS` = kitty | sixel | iterm2 | halfblocks, or the terminal's
/// answers to one query on the controlling terminal (`term::detect`, read with poll on this thread, so no key
/// is lost; keys typed meanwhile come back in `Detected::typed`). Inside tmux the kitty query and the images go
/// through passthrough. Halfblocks when nothing better answers. Also the terminal's cell size in pixels, when known.
fn graphics(tty: Option<&std::fs::File>) -> (Option<app::Graphics>, crate::term::Detected, Option<(u16, u16)>) {
    use crate::term::{detect, forced, Detected, Protocol, QUERY_TIMEOUT};
    let d = match forced() {
        Err(e) => Detected {
            protocol: Protocol::Halfblocks,
            answers: Default::default(),
            typed: Vec::new(),
            elapsed: Duration::ZERO,
            why: e,
        },
        Ok(Some(p)) => Detected {
            protocol: p,
            answers: Default::default(),
            typed: Vec::new(),
            elapsed: Duration::ZERO,
            why: "HYPERLORA_GRAPHICS".into(),
        },
        Ok(None) => detect(tty, QUERY_TIMEOUT),
    };
    let mut d = d;
    // kitty draws the TUI's images through Unicode placeholders, which it has from 0.28 on: older kittys showed a
    // block of empty-box glyphs, so they get halfblocks (the line REPL's direct placement works on them)
    if let (crate::term::Protocol::Kitty, Some(v)) = (d.protocol, d.answers.kitty_version) {
        if v < (0, 28, 0) {
            d.protocol = crate::term::Protocol::Halfblocks;
            d.why = format!(
                "kitty {}.{}.{} has no Unicode placeholders (from 0.28), which the TUI's kitty images need",
                v.0, v.1, v.2
            );
        }
    }
    // the terminal's cell size (its CSI 16 t answer, else TIOCGWINSZ's pixels), asked once
    let cell = crate::term::cell_size(d.answers.cell);
    (picker_for(d.protocol, cell), d, cell)
}

/// The picker for protocol `p` on cells of `cell` pixels (`term::cell_size`).
fn picker_for(p: crate::term::Protocol, cell: Option<(u16, u16)>) -> Option<app::Graphics> {
    use crate::term::Protocol;
    use ratatui_image::picker::{Picker, ProtocolType};
    let t = match p {
        Protocol::Halfblocks => return None,
        Protocol::Kitty => ProtocolType::Kitty,
        Protocol::Sixel => ProtocolType::Sixel,
        Protocol::Iterm2 => ProtocolType::Iterm2,
    };
    // the terminal's cell size (its CSI 16 t answer, else TIOCGWINSZ's pixels), so that images keep their aspect
    // and fill the pane; 10×20 only where neither says
    let mut picker = Picker::from_fontsize(cell.unwrap_or((10, 20)));
    picker.set_protocol_type(t);
    Some(app::Graphics::new(picker))
}

/// Answers that arrive after the query gave up: crossterm drops DA1, status and cell-size answers itself, but
/// reads the kitty answer `ESC _ G…;OK ESC \` as Alt-_, characters and Alt-\. For a while after start-up those
/// are swallowed here instead of reaching the input; a late kitty OK switches the preview to kitty.
pub struct LateAnswers {
    until: Instant,
    body: Option<String>,
}

impl LateAnswers {
    pub fn new(window: Duration) -> Self {
        LateAnswers { until: Instant::now() + window, body: None }
    }

    /// `Some(kitty_ok)` when the key was part of a late answer (swallowed).
    pub fn filter(&mut self, k: &crossterm::event::KeyEvent) -> Option<bool> {
        use crossterm::event::{KeyCode, KeyModifiers};
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        match (&mut self.body, k.code) {
            (None, KeyCode::Char('_')) if alt && Instant::now() < self.until => {
                self.body = Some(String::new());
                Some(false)
            }
            (Some(b), KeyCode::Char('\\')) if alt => {
                let ok = b.starts_with('G') && b.contains(";OK");
                self.body = None;
                Some(ok)
            }
            (Some(b), KeyCode::Char(c)) if b.len() < 4096 => {
                b.push(c);
                Some(false)
            }
            (Some(_), _) => {
                self.body = None;
                None
            }
            _ => None,
        }
    }
}

/// Hand `code` to the worker as the running job.
fn start(app: &mut App, code: String, code_tx: &mpsc::Sender<String>) -> anyhow::Result<()> {
    app.job = Some(Job { code: code.clone(), started: Instant::now(), step: 0, total: 0, elapsed: 0.0, train: None });
    code_tx.send(code)?;
    Ok(())
}

pub fn run(models: &ModelArgs) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let (paths, hints) = resolve_paths(models)?;
    let ltx = tx.clone();
    let (sess, demo) = session_with(models, paths, Arc::new(move |e: &Event| drop(ltx.send(Msg::Event(e.clone())))))?;
    let cancel = {
        let mut s = sess.lock().map_err(|_| anyhow::anyhow!("session lock"))?;
        s.set_latent_preview(5);
        s.cancel_flag()
    };
    let (code_tx, code_rx) = mpsc::channel::<String>();
    let wtx = tx.clone();
    let resident = sess.clone();
    let worker = std::thread::Builder::new().stack_size(crate::script::STACK_BYTES).spawn(move || {
        let otx = wtx.clone();
        let mut script = Script::new(sess, Arc::new(move |o: Out| drop(otx.send(Msg::Out(o)))), Limits::default());
        if let Some(d) = &demo {
            define_demo(&mut script, d);
        }
        let _ = wtx.send(Msg::Done {
            code: ":init".into(),
            result: Ok(String::new()),
            vars: values(&script),
            cancelled: false,
        });
        while let Ok(code) = code_rx.recv() {
            // a panic (a bug) in one input becomes its error; the worker, the session and the variables go on
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eval(&mut script, &code)));
            let (result, cancelled) = done.unwrap_or_else(|_| {
                let e = "internal error (a bug in hyperlora, please report it); the session and its variables are kept";
                (Err(e.to_string()), false)
            });
            let vars = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| values(&script))).unwrap_or_default();
            let _ = wtx.send(Msg::Done { code, result, vars, cancelled });
            if let Ok(s) = resident.lock() {
                let loaded = s.models().into_iter().filter(|m| m.loaded).map(|m| m.name.to_string()).collect();
                let _ = wtx.send(Msg::Models(loaded));
            }
        }
    });
    worker.map_err(|e| anyhow::anyhow!("cannot start the script thread: {e}"))?;

    let (device, dtype) = device_dtype(models)?;
    let app_device = format!("{device} {dtype:?}").to_lowercase();
    let mut app = App::new(app_device);
    // history persists between TUI sessions (its own file beside the line REPL's)
    let history = crate::front::input::TuiHistory::beside(&crate::front::input::history_path());
    app.history = history.load();
    for h in hints {
        app.info(format!("hint: {h}"));
    }
    if models.demo {
        app.info("demo set (random weights): try  let me = identity(demo_photo);");
    }
    let mut terminal = ratatui::init();
    let tty = crate::term::query::open_tty();
    let (gfx, detected, cell) = graphics(tty.as_ref());
    drop(tty);
    app.graphics = gfx;
    app.cell = cell;
    app.info(format!(
        "preview: {} ({}{})",
        detected.protocol.name(),
        detected.why,
        if detected.elapsed.is_zero() {
            String::new()
        } else {
            format!(", asked in {} ms", detected.elapsed.as_millis())
        }
    ));
    let mut late = (!detected.answers.complete && detected.elapsed > Duration::ZERO)
        .then(|| LateAnswers::new(Duration::from_secs(30)));
    // keys typed while the terminal was asked: replayed in order; lines wait while a job runs
    let mut typed: std::collections::VecDeque<crossterm::event::KeyEvent> =
        crate::term::keys_from_bytes(&detected.typed).into();
    let mut memory_at = Instant::now() - Duration::from_secs(10);
    let result = (|| -> anyhow::Result<()> {
        loop {
            if memory_at.elapsed() >= Duration::from_secs(1) {
                app.memory = rss().unwrap_or_else(|| "?".into());
                memory_at = Instant::now();
            }
            let t0 = Instant::now();
            terminal.draw(|f| ui::draw(f, &app))?;
            app.frame = t0.elapsed();
            let key = if app.job.is_none() && !typed.is_empty() {
                typed.pop_front()
            } else if event::poll(Duration::from_millis(50))? {
                match event::read()? {
                    TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                        match late.as_mut().and_then(|l| l.filter(&k)) {
                            Some(true) => {
                                app.graphics = picker_for(crate::term::Protocol::Kitty, app.cell);
                                app.info("preview: kitty (the terminal answered the graphics query late)");
                                None
                            }
                            Some(false) => None,
                            None if !typed.is_empty() => {
                                // typed-ahead keys still waiting keep their place in the queue
                                typed.push_back(k);
                                None
                            }
                            None => Some(k),
                        }
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(k) = key {
                let names: Vec<String> = app.values.iter().map(|v| v.name.clone()).collect();
                match app.on_key(k, &names) {
                    Action::Quit => return Ok(()),
                    Action::Cancel => {
                        cancel.store(true, Ordering::Relaxed);
                        app.info("cancelling …");
                    }
                    Action::Submit(code) => {
                        history.append(&code);
                        let answered = ui_command(&mut app, &code);
                        if answered == Some(Action::Quit) {
                            return Ok(());
                        }
                        if answered.is_none() {
                            if app.job.is_some() {
                                app.info("a job is running: wait, or Ctrl-C to stop it");
                            } else {
                                start(&mut app, code, &code_tx)?;
                            }
                        }
                    }
                    Action::None => {}
                }
            }
            while let Ok(m) = rx.try_recv() {
                app.on_msg(m);
            }
            // inputs entered while a job ran, one after another
            if app.job.is_none() {
                if let Some(code) = app.queued.pop_front() {
                    history.append(&code);
                    start(&mut app, code, &code_tx)?;
                }
            }
        }
    })();
    ratatui::restore();
    result
}
