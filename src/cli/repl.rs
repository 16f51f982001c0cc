//! The line REPL (rustyline): history, completion of API names and variables, multi-line input while brackets
//! are open, Ctrl-C cancels the running job, Ctrl-D exits.
use super::session_args::{install_ctrl_c, output, session, ModelArgs};
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
        let start = line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let vars = self.vars.lock().map(|v| v.clone()).unwrap_or_default();
        let mut out: Vec<Pair> = api::API
            .iter()
            .map(|(n, ..)| (n.to_string(), format!("{n}(")))
            .chain(vars.into_iter().map(|v| (v.clone(), v)))
            .filter(|(n, _)| n.starts_with(word))
            .map(|(display, replacement)| Pair { display, replacement })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out.dedup_by(|a, b| a.display == b.display);
        Ok((start, out))
    }
}

/// Open brackets outside strings and comments: more lines are needed.
pub fn open_brackets(src: &str) -> i64 {
    let (mut depth, mut chars) = (0i64, src.chars().peekable());
    let mut in_str: Option<char> = None;
    while let Some(c) = chars.next() {
        match in_str {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    in_str = None;
                }
            }
            None => match c {
                '"' | '`' | '\'' => in_str = Some(c),
                '/' if chars.peek() == Some(&'/') => {
                    while chars.next().is_some_and(|c| c != '\n') {}
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if open_brackets(ctx.input()) > 0 { ValidationResult::Incomplete } else { ValidationResult::Valid(None) })
    }
}

fn history_path(a: &Args) -> PathBuf {
    a.history.clone().unwrap_or_else(|| {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("hyperlora").join("history")
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (sess, demo) = session(&a.models)?;
    let mut script = Script::new(sess.clone(), output(a.models.preview), Limits::default());
    install_ctrl_c(script.cancel_flag());
    if let Some(d) = &demo {
        super::run::define_demo(&mut script, d);
    }
    let vars = Arc::new(Mutex::new(Vec::new()));
    let mut rl: rustyline::Editor<ReplHelper, rustyline::history::DefaultHistory> = rustyline::Editor::new()?;
    rl.set_helper(Some(ReplHelper { vars: vars.clone() }));
    let hist = history_path(&a);
    if let Some(p) = hist.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    let _ = rl.load_history(&hist);
    println!("hyperlora {} — help() lists the API, :quit or Ctrl-D leaves, Ctrl-C stops a running job.", env!("CARGO_PKG_VERSION"));
    if demo.is_some() {
        println!("demo set loaded (random weights): try  let me = identity(#{{ path: demo_photo, box: demo_box }});");
    }
    loop {
        let line = match rl.readline("hl> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let code = line.trim();
        if code.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(code);
        let _ = rl.append_history(&hist);
        match code {
            ":quit" | ":q" | ":exit" => break,
            ":help" => println!("{}", api::help(None)),
            ":models" => match script.eval("models()") {
                Ok(v) => println!("{v}"),
                Err(e) => eprintln!("{}", e.located("models")),
            },
            ":vars" => {
                for (n, v) in script.variables() {
                    println!("{n} = {}", describe(&v));
                }
            }
            _ => match script.eval(code) {
                Ok(v) if v.is_unit() => {}
                Ok(v) => println!("{}", describe(&v)),
                Err(e) => eprintln!("{}", e.located("input")),
            },
        }
        if let Ok(mut v) = vars.lock() {
            *v = script.variables().into_iter().map(|(n, _)| n).collect();
        }
    }
    Ok(())
}
