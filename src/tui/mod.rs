//! The TUI (ratatui + crossterm): an input area, the output log, the values in scope, an image preview and a
//! status bar. Evaluation runs on a worker thread, so the UI stays live during a generation and Ctrl-C stops the
//! job without losing the session. It holds no model logic: it drives a `Script` over the `Session`.
pub mod app;
pub mod ui;

use crate::cli::session_args::{resolve_paths, session_with, ModelArgs};
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

/// Evaluate one input on the worker (`:load-session FILE` runs a saved session script).
fn eval(script: &mut Script, code: &str) -> (Result<String, String>, bool) {
    let (source, text) = match code.strip_prefix(":load-session ") {
        Some(f) => match std::fs::read_to_string(f.trim()) {
            Ok(t) => (f.trim().to_string(), t),
            Err(e) => return (Err(format!("{}: cannot read: {e}", f.trim())), false),
        },
        None => match code {
            ":models" => ("input".into(), "models()".into()),
            c if c.starts_with(":unload ") => ("input".into(), format!("unload({:?})", c[8..].trim())),
            c => ("input".into(), c.to_string()),
        },
    };
    match script.eval(&text) {
        Ok(v) if v.is_unit() => (Ok(String::new()), false),
        Ok(v) => (Ok(describe(&v)), false),
        Err(e) => (Err(e.located(&source)), e.cancelled),
    }
}

/// Commands the UI answers itself; `None` when the worker must run it.
fn ui_command(app: &mut App, code: &str) -> Option<()> {
    let mut parts = code.splitn(2, ' ');
    match (parts.next()?, parts.next().map(str::trim)) {
        (":help", _) => app.help = true,
        (":mem", _) => {
            let rss = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(str::to_string))
                .unwrap_or_else(|| "VmRSS: unknown".into());
            app.info(rss);
        }
        (":preview", Some("on")) => app.preview = true,
        (":preview", Some("off")) => app.preview = false,
        (":save-session", Some(f)) => {
            let text = format!("// hyperlora session: the inputs that ran without error, in order\n{}\n", app.succeeded.join("\n"));
            match crate::output::write_file(std::path::Path::new(f), text.as_bytes(), false) {
                Ok(()) => app.info(format!("saved {} inputs to {f} (replay with :load-session {f})", app.succeeded.len())),
                Err(e) => app.info(e.to_string()),
            }
        }
        (":save-session", None) | (":load-session", None) | (":unload", None) | (":preview", _) => app.info(format!("{code}: missing argument (see :help)")),
        (c, _) if c.starts_with(':') && ![":models", ":unload", ":load-session"].contains(&c) => app.info(format!("unknown command {c} (see :help)")),
        _ => return None,
    }
    Some(())
}

/// The preview's graphics protocol: `HYPERLORA_GRAPHICS` = kitty | sixel | iterm2 | halfblocks, or asked of the
/// terminal (inside tmux with passthrough when the outer terminal is known). Halfblocks when nothing better
/// answers.
fn graphics() -> Option<app::Graphics> {
    use ratatui_image::picker::{Picker, ProtocolType};
    let forced = std::env::var("HYPERLORA_GRAPHICS").ok();
    let mut picker = match forced.as_deref() {
        Some("halfblocks") => return None,
        Some(_) => Picker::from_fontsize((10, 20)),
        None => Picker::from_query_stdio().ok()?,
    };
    match forced.as_deref() {
        Some("kitty") => picker.set_protocol_type(ProtocolType::Kitty),
        Some("sixel") => picker.set_protocol_type(ProtocolType::Sixel),
        Some("iterm2") => picker.set_protocol_type(ProtocolType::Iterm2),
        _ => {}
    }
    (picker.protocol_type() != ProtocolType::Halfblocks).then(|| app::Graphics::new(picker))
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
    std::thread::spawn(move || {
        let otx = wtx.clone();
        let mut script = Script::new(sess, Arc::new(move |o: Out| drop(otx.send(Msg::Out(o)))), Limits::default());
        if let Some(d) = &demo {
            crate::cli::define_demo(&mut script, d);
        }
        let _ = wtx.send(Msg::Done { code: ":init".into(), result: Ok(String::new()), vars: values(&script), cancelled: false });
        while let Ok(code) = code_rx.recv() {
            let (result, cancelled) = eval(&mut script, &code);
            let _ = wtx.send(Msg::Done { code, result, vars: values(&script), cancelled });
        }
    });

    let (device, dtype) = crate::cli::session_args::device_dtype(models)?;
    let app_device = format!("{device} {dtype:?}").to_lowercase();
    let mut app = App::new(app_device);
    for h in hints {
        app.info(format!("hint: {h}"));
    }
    if models.demo {
        app.info("demo set (random weights): try  let me = identity(#{ path: demo_photo, box: demo_box });");
    }
    let mut terminal = ratatui::init();
    app.graphics = graphics();
    let result = (|| -> anyhow::Result<()> {
        loop {
            terminal.draw(|f| ui::draw(f, &app))?;
            if event::poll(Duration::from_millis(50))? {
                match event::read()? {
                    TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                        let names: Vec<String> =
                            crate::script::api::API.iter().map(|(n, ..)| n.to_string()).chain(app.values.iter().map(|v| v.name.clone())).collect();
                        match app.on_key(k, &names) {
                            Action::Quit => return Ok(()),
                            Action::Cancel => {
                                cancel.store(true, Ordering::Relaxed);
                                app.info("cancelling …");
                            }
                            Action::Submit(code) => {
                                if ui_command(&mut app, &code).is_none() {
                                    app.job = Some(Job { code: code.clone(), started: Instant::now(), step: 0, total: 0, elapsed: 0.0 });
                                    code_tx.send(code)?;
                                }
                            }
                            Action::None => {}
                        }
                    }
                    _ => {}
                }
            }
            while let Ok(m) = rx.try_recv() {
                app.on_msg(m);
            }
        }
    })();
    ratatui::restore();
    result
}
