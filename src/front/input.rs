//! Line input shared by the line REPL and the TUI: whether more lines are needed (open brackets), the word
//! being completed and its candidates.

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
                '/' if chars.peek() == Some(&'/') => while chars.next().is_some_and(|c| c != '\n') {},
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth
}

/// Byte offset where the identifier before `pos` starts.
pub fn word_start(line: &str, pos: usize) -> usize {
    line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0)
}

/// Completion candidates for `word`: the API's function names and the variables in scope, sorted, unique.
pub fn candidates(word: &str, variables: &[String]) -> Vec<String> {
    if word.is_empty() {
        return Vec::new();
    }
    let mut m: Vec<String> = crate::script::api::API
        .iter()
        .map(|(n, ..)| n.to_string())
        .chain(variables.iter().cloned())
        .filter(|n| n.starts_with(word))
        .collect();
    m.sort();
    m.dedup();
    m
}

/// Whether `name` is an API function (completed with an opening bracket in the REPL).
pub fn is_function(name: &str) -> bool {
    crate::script::api::API.iter().any(|(n, ..)| *n == name)
}

/// A `:` command, as the line REPL and the TUI both read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Quit,
    Help,
    Models,
    Vars,
    Mem,
    Unload(String),
    Preview(bool),
    SaveSession(std::path::PathBuf),
    LoadSession(std::path::PathBuf),
}

/// The commands and what they do, for help texts.
pub const COMMANDS: &str =
    ":models  :vars  :mem  :unload NAME  :preview on|off  :save-session FILE  :load-session FILE  :help  :quit";

/// `Ok(None)`: not a command (script code); `Err`: an unknown command or a missing argument, said plainly.
pub fn command(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if !line.starts_with(':') {
        return Ok(None);
    }
    let (name, arg) = match line.split_once(char::is_whitespace) {
        Some((n, a)) => (n, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    let need = |what: &str| arg.map(str::to_string).ok_or_else(|| format!("{name}: missing {what} (see :help)"));
    Ok(Some(match name {
        ":quit" | ":q" | ":exit" => Command::Quit,
        ":help" => Command::Help,
        ":models" => Command::Models,
        ":vars" => Command::Vars,
        ":mem" => Command::Mem,
        ":unload" => Command::Unload(need("a model name (sdxl, hyperlora, clip, antelopev2, encoders, all)")?),
        ":preview" => match arg {
            Some("on") => Command::Preview(true),
            Some("off") => Command::Preview(false),
            _ => return Err(":preview: expected on or off".into()),
        },
        ":save-session" => Command::SaveSession(need("a file name")?.into()),
        ":load-session" => Command::LoadSession(need("a file name")?.into()),
        other => return Err(format!("unknown command {other} (commands: {COMMANDS})")),
    }))
}

/// What `:save-session` writes: the inputs that ran without error, in order, each ended as a statement so that the
/// file replays in `:load-session` and `hyperlora run` (a typed `let a = 5` has no `;`, which a script needs between
/// statements; after a `//` comment the `;` goes on a line of its own).
pub fn session_script(inputs: &[String]) -> String {
    let mut out = String::from("// hyperlora session: the inputs that ran without error, in order\n");
    for input in inputs {
        let code = input.trim_end();
        out.push_str(code);
        let last = code.lines().last().unwrap_or_default();
        if !code.ends_with(';') {
            out.push_str(if last.contains("//") { "\n;" } else { ";" });
        }
        out.push('\n');
    }
    out
}

/// Write `session_script(inputs)` to `path` (never replacing a file), and say so in one line.
pub fn save_session(inputs: &[String], path: &std::path::Path) -> String {
    match crate::files::output::write_file(path, session_script(inputs).as_bytes(), false) {
        Ok(()) => format!(
            "saved {} inputs to {} (replay with :load-session {} or hyperlora run {})",
            inputs.len(),
            path.display(),
            path.display(),
            path.display()
        ),
        Err(e) => e.to_string(),
    }
}

/// The line REPL's history file: `$HYPERLORA_HISTORY`, else `$XDG_STATE_HOME/hyperlora/history`.
pub fn history_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HYPERLORA_HISTORY") {
        return p.into();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("hyperlora").join("history")
}

/// The TUI's history: one input per line beside the REPL's file (`history-tui`), newlines and backslashes escaped.
pub struct TuiHistory(std::path::PathBuf);

impl TuiHistory {
    /// The most inputs kept and the largest file read (a history is small; anything else is not ours).
    const KEEP: usize = 1000;
    const MAX_BYTES: u64 = 4 << 20;

    pub fn beside(repl: &std::path::Path) -> Self {
        let name = repl.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "history".into());
        TuiHistory(repl.with_file_name(format!("{name}-tui")))
    }
    /// The inputs saved so far, oldest first (none when the file is missing, not a regular file, or too large).
    pub fn load(&self) -> Vec<String> {
        let ok = std::fs::metadata(&self.0).is_ok_and(|m| m.is_file() && m.len() <= Self::MAX_BYTES);
        let text = if ok { std::fs::read_to_string(&self.0).unwrap_or_default() } else { String::new() };
        let all: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(unescape).collect();
        all[all.len().saturating_sub(Self::KEEP)..].to_vec()
    }
    /// Append one input (errors are ignored: a history that cannot be written never stops the session).
    pub fn append(&self, input: &str) {
        use std::io::Write;
        if let Some(d) = self.0.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if std::fs::metadata(&self.0).is_ok_and(|m| !m.is_file()) {
            return;
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.0) {
            let _ = writeln!(f, "{}", input.replace('\\', "\\\\").replace('\n', "\\n"));
        }
    }
}

fn unescape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// Resident memory (VmRSS) in GB, where /proc tells it.
pub fn rss() -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|kb| format!("{:.2} GB", kb / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_the_same_everywhere() {
        assert_eq!(command("1 + 1"), Ok(None));
        assert_eq!(command(":q"), Ok(Some(Command::Quit)));
        assert_eq!(command(":unload  sdxl "), Ok(Some(Command::Unload("sdxl".into()))));
        assert_eq!(command(":preview off"), Ok(Some(Command::Preview(false))));
        assert!(command(":unload").unwrap_err().contains("missing"));
        assert!(command(":frobnicate").unwrap_err().contains("unknown command :frobnicate"));
    }
}
