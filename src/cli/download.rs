use crate::files::download::{download, endpoint, plans};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The HyperLoRA variant: fidelity (the workflows' choice) or edit.
    #[arg(long, default_value = "fidelity")]
    pub variant: String,
    /// Also fetch an SDXL diffusers repo (fp16 weights), e.g. stabilityai/stable-diffusion-xl-base-1.0.
    #[arg(long, value_name = "REPO")]
    pub sdxl: Option<String>,
    /// Skip CLIP ViT-L/14.
    #[arg(long)]
    pub no_clip: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let plans = plans(&a.variant, !a.no_clip, a.sdxl.as_deref())?;
    let hub = crate::models::hub_dir();
    let ep = endpoint();
    eprintln!("downloading from {ep} into {} (an interrupted run resumes)", hub.display());
    eprintln!("licences: HyperLoRA weights CC BY-NC 4.0 (non-commercial); CLIP ViT-L/14 MIT; SDXL per its repo");
    for (what, dir) in download(&plans, &hub, &ep, true)? {
        println!("{what:<10} {}", dir.display());
    }
    println!("antelopev2 is not on the hub under an official name: get insightface's antelopev2 pack (non-commercial research licence) and point --antelopev2 at it");
    Ok(())
}
