//! The line REPL (rustyline): history, completion of API names and variables, multi-line input while brackets
//! are open, Ctrl-C cancels the running job, Ctrl-D exits.
use super::session_args::{install_ctrl_c, output, session, ModelArgs};
use crate::front::input::{candidates, command, is_function, open_brackets, rss, word_start, Command, COMMANDS};
use crate::script::{api, describe, Limits, Script};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper, Highlighter, Hinter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub models: ModelArgs,
    /// History file (default: $XDG_STATE_HOME/hyperlora/history).
    #[arg(long, env = "HYPERLORA_HISTORY", value_name = "FILE")]
    pub history: Option<PathBuf>,
}

#[derive(Helper, Highlighter, Hinter)]
struct ReplHelper {
    vars: Arc<Mutex<Vec<String>>>,
}

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = word_start(line, pos);
        let vars = self.vars.lock().map(|v| v.clone()).unwrap_or_default();
        let out = candidates(&line[start..pos], &vars)
            .into_iter()
            .map(|n| Pair {
                replacement: if is_function(&n) && !vars.contains(&n) { format!("{n}(") } else { n.clone() },
                display: n,
            })
            .collect();
        Ok((start, out))
    }
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if open_brackets(ctx.input()) > 0 { ValidationResult::Incomplete } else { ValidationResult::Valid(None) })
    }
}

fn history_path(a: &Args) -> PathBuf {
    a.history.clone().unwrap_or_else(crate::front::input::history_path)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (sess, demo) = session(&a.models)?;
    let mut script = Script::new(sess.clone(), output(a.models.preview), Limits::default());
    if let Some(d) = &demo {
        crate::front::args::define_demo(&mut script, d);
    }
    let vars = Arc::new(Mutex::new(Vec::new()));
    let mut rl: rustyline::Editor<ReplHelper, rustyline::history::DefaultHistory> = rustyline::Editor::new()?;
    // after the editor: on a terminal rustyline puts its own SIGINT handler in place for the editor's lifetime
    // (it reads Ctrl-C as a key while a line is edited, ISIG off), which swallowed every Ctrl-C and `kill -INT`
    // during a running job; ours, installed last, hears them (the terminal is in cooked mode while a job runs)
    install_ctrl_c(script.cancel_flag());
    rl.set_helper(Some(ReplHelper { vars: vars.clone() }));
    let hist = history_path(&a);
    if let Some(p) = hist.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    // the history is read only from a regular file of sane size (HYPERLORA_HISTORY=/dev/zero must not fill memory)
    match std::fs::metadata(&hist) {
        Ok(m) if m.is_file() && m.len() <= 16 << 20 => drop(rl.load_history(&hist)),
        Ok(m) if m.is_file() => eprintln!("{}: history larger than 16 MB, not read", hist.display()),
        Ok(_) => eprintln!("{}: not a regular file; history is not read or written", hist.display()),
        Err(_) => {}
    }
    let hist_ok = std::fs::metadata(&hist).map(|m| m.is_file()).unwrap_or(true);
    println!(
        "hyperlora {} — help() lists the API, :quit or Ctrl-D leaves, Ctrl-C stops a running job.",
        env!("CARGO_PKG_VERSION")
    );
    if demo.is_some() {
        println!("demo set loaded (random weights): try  let me = identity(demo_photo);");
    }
    // lines typed while a preview asked the terminal what it draws: they run next, an unfinished one is kept
    let mut queued: std::collections::VecDeque<String> = Default::default();
    let mut initial = String::new();
    // inputs that ran without error, in order (what :save-session writes)
    let mut succeeded: Vec<String> = Vec::new();
    loop {
        let typed = crate::term::show::take_typed();
        if !typed.is_empty() {
            let (lines, rest) = crate::term::show::lines_from_typed(&typed);
            if let Some(first) = lines.first() {
                queued.push_back(format!("{initial}{first}"));
                queued.extend(lines.into_iter().skip(1));
                initial = rest;
            } else {
                initial.push_str(&rest);
            }
        }
        let line = if let Some(l) = queued.pop_front() {
            println!("hl> {l}");
            l
        } else {
            match rl.readline_with_initial("hl> ", (&std::mem::take(&mut initial), "")) {
                Ok(l) => l,
                Err(ReadlineError::Interrupted) | Err(ReadlineError::Signal(_)) => continue,
                Err(ReadlineError::Eof) => break,
                // a line that is not UTF-8 is dropped with a message; the session and its values stay
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    eprintln!("input: the line is not valid UTF-8 and was not run ({e})");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let code = line.trim();
        if code.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(code);
        if hist_ok {
            let _ = rl.append_history(&hist);
        }
        let report = |r: Result<rhai::Dynamic, crate::script::ScriptError>, source: &str| match r {
            Ok(v) if v.is_unit() => true,
            Ok(v) => {
                println!("{}", describe(&v));
                true
            }
            Err(e) => {
                eprintln!("{}", e.located(source));
                false
            }
        };
        match command(code) {
            Ok(None) => {
                if report(script.eval(code), "input") {
                    succeeded.push(code.to_string());
                }
            }
            Ok(Some(Command::Quit)) => break,
            Ok(Some(Command::Help)) => println!("{}\ncommands: {COMMANDS}", api::help(None)),
            Ok(Some(Command::Models)) => _ = report(script.eval("models()"), "models"),
            Ok(Some(Command::Unload(n))) => _ = report(script.eval(&format!("unload({n:?})")), "unload"),
            Ok(Some(Command::Vars)) => {
                for (n, v) in script.variables() {
                    println!("{n} = {}", describe(&v));
                }
            }
            Ok(Some(Command::Mem)) => println!("resident memory {}", rss().unwrap_or_else(|| "unknown".into())),
            Ok(Some(Command::LoadSession(f))) => match crate::files::read_text(&f) {
                Ok(t) => _ = report(script.eval(&t), &f.display().to_string()),
                Err(e) => eprintln!("{}: cannot read: {e}", f.display()),
            },
            Ok(Some(Command::SaveSession(f))) => println!("{}", crate::front::input::save_session(&succeeded, &f)),
            Ok(Some(Command::Preview(on))) => {
                eprintln!(
                    ":preview {}: the TUI's preview pane; here images show with `show(img)`",
                    if on { "on" } else { "off" }
                )
            }
            Err(e) => eprintln!("{e}"),
        }
        if let Ok(mut v) = vars.lock() {
            *v = script.variables().into_iter().map(|(n, _)| n).collect();
        }
    }
    Ok(())
}
