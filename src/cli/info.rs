use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A PNG made by `hyperlora generate`, or an identity / LoRA .safetensors file.
    pub file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let ext = a.file.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext == "png" {
        // the settings are text chunks: read without decoding the pixels
        let (w, h, text) = crate::files::png_meta::read_png_text(&a.file)?;
        println!("{}: {w}×{h} PNG", a.file.display());
        if text.is_empty() {
            println!("  no generation settings (not made by hyperlora, or its text chunks were stripped)");
        }
        for (k, v) in text {
            match (k.as_str(), serde_json::from_str::<serde_json::Value>(&v)) {
                ("hyperlora:grid", Ok(sheet)) => print_sheet(&sheet),
                _ => println!("  {k}: {v}"),
            }
        }
        return Ok(());
    }
    if matches!(ext.as_str(), "jpg" | "jpeg" | "webp") {
        let f = crate::files::open_regular(&a.file)?;
        let r = image::ImageReader::new(std::io::BufReader::new(f))
            .with_guessed_format()
            .map_err(|e| crate::Error::io(&a.file, e))?;
        let format = r.format().map(|f| format!("{f:?}")).unwrap_or_else(|| "unknown".into());
        let (w, h) =
            r.into_dimensions().map_err(|e| crate::Error::invalid(&a.file, format!("not a readable image ({e})")))?;
        println!("{}: {w}×{h} {format} image (a photo: no generation settings)", a.file.display());
        return Ok(());
    }
    let f = crate::weights::StFile::open(&a.file)?;
    let meta = f.metadata();
    if meta.get("format").map(String::as_str) == Some(crate::identity::IDENTITY_FORMAT) {
        let id = crate::Identity::load(&a.file)?;
        println!("{}: {}", a.file.display(), id.summary());
        for s in id.sources() {
            println!("  source {} {}", crate::files::provenance::short(&s.hash), s.label);
        }
        return Ok(());
    }
    let imp = crate::lora::file::import(&a.file)?;
    println!(
        "{}: LoRA ({} key spelling), {} layers, {} parameters, {} keys not understood",
        a.file.display(),
        match imp.spelling {
            Some(crate::lora::file::Spelling::Kohya) => "kohya",
            Some(crate::lora::file::Spelling::Diffusers) => "diffusers",
            Some(crate::lora::file::Spelling::Peft) => "PEFT",
            None => "no known",
        },
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

/// A contact sheet's cells, one line each: position, label, and the settings that tell cells apart.
fn print_sheet(sheet: &serde_json::Value) {
    let cells = sheet["cells"].as_array().cloned().unwrap_or_default();
    let cols = sheet["cols"].as_u64().unwrap_or(1).max(1) as usize;
    println!(
        "  contact sheet{}: {} cell(s) in {} column(s)",
        sheet["title"].as_str().filter(|t| !t.is_empty()).map(|t| format!(" \"{t}\"")).unwrap_or_default(),
        cells.len(),
        cols
    );
    for (i, c) in cells.iter().enumerate() {
        let s = &c["settings"];
        let mut parts = Vec::new();
        for k in ["seed", "steps", "loras", "face_score", "prompt"] {
            if let Some(v) = s[k].as_str().filter(|v| !v.is_empty()) {
                parts.push(format!("{k} {v}"));
            }
        }
        println!(
            "  [row {}, col {}] {}: {}",
            i / cols + 1,
            i % cols + 1,
            c["label"].as_str().unwrap_or("?"),
            parts.join(" · ")
        );
    }
}
