//! hyperlora as a library: photo → identity → LoRA file → image, through the `Session` (the same door the CLI,
//! the REPL and the TUI use). Runs on the embedded tiny demo set (random weights), or on your files:
//!
//!   cargo run --example library -- [OUT_DIR] [--sdxl F --hyperlora D --clip D --antelopev2 D --photo P]
use hyperlora::session::{Event, FaceOptions, FacePick, Generate, ModelPaths, PhotoSpec, Session, SessionOptions};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| PathBuf::from(&w[1]));
    let out = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hyperlora-example"));

    // the demo set stands in for every model not given
    let (demo, _) = hyperlora::synthetic::demo::ensure(&hyperlora::synthetic::demo::default_dir())?;
    let paths = ModelPaths {
        sdxl: flag("--sdxl").or(Some(demo.sdxl.clone())),
        sdxl_config: None,
        hyperlora: flag("--hyperlora").or(Some(demo.hyperlora.clone())),
        clip: flag("--clip").or(Some(demo.clip.clone())),
        antelopev2: flag("--antelopev2").or(Some(demo.antelopev2.clone())),
    };
    let (photo, pick) = match flag("--photo") {
        Some(p) => (p, FacePick::Best),
        // the demo's face models are random: give the face box instead of detecting it
        None => (demo.photo.clone(), FacePick::Box(hyperlora::synthetic::demo::PHOTO_FACE_BOX)),
    };
    let listener = Arc::new(|e: &Event| match e {
        Event::Loaded { component, seconds } => eprintln!("loaded {component} in {seconds:.1} s"),
        Event::Note(n) => eprintln!("{n}"),
        _ => {}
    });
    let opts = SessionOptions { paths, device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 };
    let mut session = Session::new(opts, listener);

    let me = session.identity(&[PhotoSpec::with_options(photo, FaceOptions { pick, ..Default::default() })])?;
    println!("identity {}", me.summary());
    let look = session.lora(&me, 0.85, 0.0)?;
    std::fs::create_dir_all(&out)?;
    let lora_file = out.join("me.lora.safetensors");
    let r = session.export_lora(&look, &lora_file, candle_core::DType::F16, true)?;
    println!("{} ({} tensors)", lora_file.display(), r.tensors);

    let mut g = Generate::new("portrait photo");
    (g.width, g.height, g.steps, g.seed) = (128, 128, 6, 7);
    g.lora = Some(look);
    let mut img = session.generate(&g)?;
    session.save_image(&mut img, &out.join("me.png"), true)?;
    println!("{}", img.summary());
    Ok(())
}
