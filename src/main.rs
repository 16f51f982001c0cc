use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    match hyperlora::cli::run(hyperlora::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    // first line of each cause: candle errors can carry a backtrace after the message
    for cause in e.chain().map(|c| c.to_string().lines().next().unwrap_or_default().trim().to_string()) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}
