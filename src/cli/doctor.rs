use super::session_args::{resolve_paths, ModelArgs};
use crate::models::{doctor, Status};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub models: ModelArgs,
}

/// One line per component; non-zero exit when something is missing or bad.
pub fn run(a: Args) -> anyhow::Result<()> {
    let (paths, hints) = resolve_paths(&a.models)?;
    let checks = doctor(&paths);
    for c in &checks {
        let mark = match c.status {
            Status::Ok => "ok     ",
            Status::Missing => "MISSING",
            Status::Bad => "BAD    ",
        };
        let path = c.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
        println!("{mark} {:<11} {path}\n        {}\n        licence: {}", c.component, c.detail, c.licence);
    }
    let (device, dtype) = super::session_args::device_dtype(&a.models)?;
    println!(
        "device  {device}, {dtype:?} (flags and HYPERLORA_DEVICE/HYPERLORA_DTYPE, else {})",
        crate::models::config_path().display()
    );
    for h in &hints {
        println!("hint: {h}");
    }
    let bad: Vec<&str> = checks.iter().filter(|c| c.status != Status::Ok).map(|c| c.component).collect();
    if !bad.is_empty() {
        anyhow::bail!(
            "{} not usable: {} (give --sdxl/--hyperlora/--clip/--antelopev2, --comfyui DIR, or {})",
            bad.len(),
            bad.join(", "),
            crate::models::config_path().display()
        );
    }
    Ok(())
}
