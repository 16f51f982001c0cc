//! What the benchmark rooms share: the printed table, the median of repeated runs, and running a comparison script
//! in Python (torch, diffusers) that ends with one JSON line.
use std::time::{Duration, Instant};

/// Run a comparison script (`cmd` is the Python with `-` and the script's arguments) with `script` on stdin, and
/// read the JSON line it ends with. On failure the script's output is shown first (errors print as one line).
pub(crate) fn run_script<T: serde::de::DeserializeOwned>(
    mut cmd: std::process::Command,
    script: &str,
    what: &str,
) -> anyhow::Result<T> {
    use std::io::Write;
    let python = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    let parsed = serde_json::from_str(last);
    if !out.status.success() || parsed.is_err() {
        eprintln!("{text}");
    }
    if !out.status.success() {
        anyhow::bail!("the {what} run failed ({}); its output is above", out.status);
    }
    parsed.map_err(|e| anyhow::anyhow!("the {what} run printed no result line ({e}); its output is above"))
}

pub(crate) struct Table(pub(crate) Vec<(String, Duration, String)>);

impl Table {
    pub(crate) fn row(&mut self, name: &str, d: Duration, note: String) {
        eprintln!("  {name}: {:.1} ms", d.as_secs_f64() * 1e3);
        self.0.push((name.to_string(), d, note));
    }
    pub(crate) fn print(&self) {
        println!("| step | time | note |\n|---|---:|---|");
        for (n, d, note) in &self.0 {
            println!("| {n} | {:.2} ms | {note} |", d.as_secs_f64() * 1e3);
        }
    }
}

pub(crate) fn median<T>(repeat: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], last.expect("ran once")))
}
