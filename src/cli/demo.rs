use super::session_args::{install_ctrl_c, output, session, ModelArgs, Preview};
use crate::script::{Limits, Script};
use std::path::{Path, PathBuf};

/// The demo recipe (also shipped as scripts/demo.rhai).
const RECIPE: &str = include_str!("../../scripts/demo.rhai");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder for the image and LoRA file (existing files are kept; new names are numbered).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Image previews in the terminal: auto, always, never.
    #[arg(long, value_enum, default_value = "auto")]
    pub preview: Preview,
}

/// `NAME.EXT`, or `NAME-1.EXT`, `NAME-2.EXT`, … : the first that does not exist.
fn free_name(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|i| dir.join(if i == 0 { format!("{stem}.{ext}") } else { format!("{stem}-{i}.{ext}") }))
        .find(|p| !p.exists())
        .expect("unbounded")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let models = ModelArgs {
        sdxl: None,
        sdxl_config: None,
        hyperlora: None,
        clip: None,
        antelopev2: None,
        comfyui: None,
        demo: true,
        device: Some("cpu".into()),
        dtype: Some(crate::front::args::ComputeDtype::F32),
        preview: a.preview,
    };
    let (sess, demo) = session(&models)?;
    let mut script = Script::new(sess, output(a.preview), Limits::default());
    install_ctrl_c(script.cancel_flag());
    if let Some(d) = &demo {
        crate::front::args::define_demo(&mut script, d);
    }
    let png = free_name(&a.out, "demo", "png");
    let lora = free_name(&a.out, "demo.lora", "safetensors");
    script.set("png", rhai::Dynamic::from(png.display().to_string()));
    script.set("lora_file", rhai::Dynamic::from(lora.display().to_string()));
    println!("hyperlora demo: photo → identity → LoRA → image on tiny models with RANDOM, untrained weights.");
    println!("It runs every stage of the real path; the image is noise, not a portrait. Use your own files for real results.");
    let _ = script.eval(RECIPE).map_err(|e| anyhow::anyhow!(e.located("scripts/demo.rhai")))?;
    println!("done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
