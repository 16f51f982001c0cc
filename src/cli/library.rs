//! `hyperlora library ls|show|rm DIR …`: an identity library from the shell.
use super::session_args::quiet_session;
use chrono_free::date;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// One line per identity: name, photos, hash, storage dtype, date saved.
    Ls { dir: std::path::PathBuf },
    /// Everything the index knows of one identity.
    Show { dir: std::path::PathBuf, name: String },
    /// Forget an identity and delete its file.
    Rm { dir: std::path::PathBuf, name: String },
}

mod chrono_free {
    /// `YYYY-MM-DD HH:MM` (UTC) from seconds since the epoch (civil-from-days, Howard Hinnant's algorithm).
    pub fn date(secs: u64) -> String {
        let days = (secs / 86400) as i64;
        let (h, m) = ((secs % 86400) / 3600, (secs % 3600) / 60);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let mo = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(mo <= 2);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut session = quiet_session(Default::default());
    // these commands read a library: one that does not exist is a mistyped path, not an empty library
    let (Cmd::Ls { dir } | Cmd::Show { dir, .. } | Cmd::Rm { dir, .. }) = &a.cmd;
    if !dir.is_dir() {
        anyhow::bail!("{}: no such library folder", dir.display());
    }
    match a.cmd {
        Cmd::Ls { dir } => {
            let lib = session.library(&dir)?;
            let list = lib.list()?;
            for (name, e) in &list {
                println!(
                    "{name:<24} {:>3} photo(s)  {}  {}  {}",
                    e.photos,
                    crate::files::provenance::short(&e.hash),
                    e.dtype,
                    date(e.saved)
                );
            }
            println!("{} identit{} in {}", list.len(), if list.len() == 1 { "y" } else { "ies" }, dir.display());
        }
        Cmd::Show { dir, name } => {
            let lib = session.library(&dir)?;
            let list = lib.list()?;
            let (_, e) = list
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| anyhow::anyhow!("{}: no identity `{name}`", dir.display()))?;
            println!("name     {name}\nfile     {}\nhash     {}\nphotos   {}\nvariant  {} ({})\nstored   {}\nsaved    {} UTC", dir.join(&e.file).display(), e.hash, e.photos, e.variant.label, e.variant.hash, e.dtype, date(e.saved));
            for s in &e.sources {
                println!("source   {s}");
            }
        }
        Cmd::Rm { dir, name } => {
            let lib = session.library(&dir)?;
            let e = lib.remove(&name)?;
            println!("removed {name} ({})", dir.join(&e.file).display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01 00:00");
        assert_eq!(super::date(1_796_000_000), "2026-11-30 00:53");
    }
}
