use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The folder the sweep's shards wrote into (searched recursively; hidden files are left out).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where index.csv and the sheets go (default: DIR).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace an index.csv and sheets written by an earlier gather.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("reading {pos}/{len} images {wide_bar} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = crate::sweep::gather::gather(&a.dir, a.out.as_deref(), a.force, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let r = r?;
    let shards: std::collections::BTreeSet<String> = r
        .rows
        .iter()
        .filter_map(|row| row.settings.iter().find(|(k, _)| k == "shard").map(|(_, v)| v.clone()))
        .collect();
    println!(
        "{}: {} image(s){}",
        r.index.display(),
        r.rows.len(),
        if shards.is_empty() {
            String::new()
        } else {
            format!(" from shard(s) {}", shards.into_iter().collect::<Vec<_>>().join(", "))
        }
    );
    for (recipe, path, n) in &r.sheets {
        println!("{}: contact sheet of {recipe} ({n} image(s))", path.display());
    }
    if !r.skipped.is_empty() {
        println!("{} PNG file(s) left out:", r.skipped.len());
        for (f, why) in r.skipped.iter().take(10) {
            println!("  {f}: {why}");
        }
        if r.skipped.len() > 10 {
            println!("  … and {} more", r.skipped.len() - 10);
        }
    }
    Ok(())
}
