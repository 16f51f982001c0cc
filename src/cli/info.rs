use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A PNG made by `hyperlora generate`, or an identity / LoRA .safetensors file.
    pub file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let ext = a.file.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext == "png" {
        let (_, w, h, text) = crate::png_meta::read_png(&a.file)?;
        println!("{}: {w}×{h} PNG", a.file.display());
        for (k, v) in text {
            println!("  {k}: {v}");
        }
        return Ok(());
    }
    let f = crate::weights::StFile::open(&a.file)?;
    let meta = f.metadata();
    if meta.get("format").map(String::as_str) == Some(crate::identity::IDENTITY_FORMAT) {
        let id = crate::Identity::load(&a.file)?;
        println!("{}: {}", a.file.display(), id.summary());
        for s in id.sources() {
            println!("  source {} {}", crate::provenance::short(&s.hash), s.label);
        }
        return Ok(());
    }
    let imp = crate::lora::file::import(&a.file)?;
    println!(
        "{}: LoRA ({:?} spelling), {} layers, {} parameters, {} keys not understood",
        a.file.display(),
        imp.spelling,
        imp.weights.layers.len(),
        imp.weights.num_params(),
        imp.unmatched.len()
    );
    let mut keys: Vec<_> = meta.into_iter().collect();
    keys.sort();
    for (k, v) in keys {
        println!("  {k}: {v}");
    }
    Ok(())
}
