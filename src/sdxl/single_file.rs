//! Single-file SDXL checkpoints (civitai style, e.g. RealVisXL): SGM/LDM key layout. One table maps every
//! diffusers key our models ask for to the file's key and a transform; `tests/single_file.rs` checks it both ways
//! against the fixture.
use crate::error::{Error, Result};
use crate::weights::{StFile, Transform};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const TE1_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const TE2_PREFIX: &str = "conditioner.embedders.1.model.";

/// Which model a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
}

/// Layout facts the UNet mapping needs (from the UNet config).
#[derive(Debug, Clone)]
pub struct UnetLayout {
    pub layers_per_block: usize,
    /// Per up block: whether it has attentions (shifts the upsampler's index).
    pub up_has_attention: Vec<bool>,
}

/// File keys that belong to a component but no model reads.
pub fn ignorable(key: &str) -> bool {
    key.ends_with("position_ids")
        || key.ends_with("logit_scale")
        || key.starts_with("denoiser.")
        || key.starts_with("model_ema.")
}

/// Whether a file key belongs to `c`.
pub fn owned_by(c: Component, key: &str) -> bool {
    let p = match c {
        Component::Unet => UNET_PREFIX,
        Component::Vae => VAE_PREFIX,
        Component::TextEncoder => TE1_PREFIX,
        Component::TextEncoder2 => TE2_PREFIX,
    };
    key.starts_with(p) && !ignorable(key)
}

fn resnet_ldm(rest: &str) -> Option<String> {
    let (name, tail) = rest.split_once('.')?;
    let n = match name {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{n}.{tail}"))
}

/// `down_blocks.1.resnets.0.conv1.weight` → `input_blocks.4.0.in_layers.2.weight`, etc.
fn unet_key(k: &str, l: &UnetLayout) -> Option<String> {
    let per = l.layers_per_block + 1;
    let simple = [
        ("conv_in.", "input_blocks.0.0."),
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ];
    for (d, s) in simple {
        if let Some(t) = k.strip_prefix(d) {
            return Some(format!("{s}{t}"));
        }
    }
    let parts: Vec<&str> = k.splitn(5, '.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    match parts.as_slice() {
        ["down_blocks", i, "resnets", j, rest] => {
            Some(format!("input_blocks.{}.0.{}", num(i)? * per + num(j)? + 1, resnet_ldm(rest)?))
        }
        ["down_blocks", i, "attentions", j, rest] => {
            Some(format!("input_blocks.{}.1.{rest}", num(i)? * per + num(j)? + 1))
        }
        ["down_blocks", i, "downsamplers", "0", rest] => {
            Some(format!("input_blocks.{}.0.{}", (num(i)? + 1) * per, rest.replacen("conv.", "op.", 1)))
        }
        ["up_blocks", i, "resnets", j, rest] => {
            Some(format!("output_blocks.{}.0.{}", num(i)? * per + num(j)?, resnet_ldm(rest)?))
        }
        ["up_blocks", i, "attentions", j, rest] => Some(format!("output_blocks.{}.1.{rest}", num(i)? * per + num(j)?)),
        ["up_blocks", i, "upsamplers", "0", rest] => {
            let i = num(i)?;
            let slot = if *l.up_has_attention.get(i)? { 2 } else { 1 };
            Some(format!("output_blocks.{}.{slot}.{rest}", i * per + l.layers_per_block))
        }
        ["mid_block", "resnets", j, a, b] => {
            Some(format!("middle_block.{}.{}", if num(j)? == 0 { 0 } else { 2 }, resnet_ldm(&format!("{a}.{b}"))?))
        }
        ["mid_block", "attentions", "0", a, b] => Some(format!("middle_block.1.{a}.{b}")),
        _ => None,
    }
}

/// The LDM/SGM path of a diffusers UNet module path (`down_blocks.1.attentions.0.…attn1.to_q` →
/// `input_blocks.4.1.…attn1.to_q`), for LoRAs named after single-file checkpoints.
pub fn ldm_module_path(target: &str, layout: &UnetLayout) -> Option<String> {
    unet_key(&format!("{target}.weight"), layout).and_then(|k| k.strip_suffix(".weight").map(str::to_string))
}

fn vae_resnet(rest: &str) -> String {
    rest.replacen("conv_shortcut.", "nin_shortcut.", 1)
}

/// VAE keys; attention projections are 1×1 convs in the file.
fn vae_key(k: &str, levels: usize) -> Option<(String, Transform)> {
    let (side, rest) = k.split_once('.')?;
    if !matches!(side, "encoder" | "decoder") {
        return matches!(side, "quant_conv" | "post_quant_conv").then(|| (k.to_string(), Transform::Same));
    }
    let parts: Vec<&str> = rest.splitn(5, '.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    let mapped = match parts.as_slice() {
        ["conv_in", ..] | ["conv_out", ..] => rest.to_string(),
        ["conv_norm_out", t] => format!("norm_out.{t}"),
        ["down_blocks", i, "resnets", j, r] => format!("down.{i}.block.{j}.{}", vae_resnet(r)),
        ["down_blocks", i, "downsamplers", "0", r] => format!("down.{i}.downsample.{r}"),
        ["up_blocks", i, "resnets", j, r] => {
            format!("up.{}.block.{j}.{}", levels.checked_sub(1 + num(i)?)?, vae_resnet(r))
        }
        ["up_blocks", i, "upsamplers", "0", r] => format!("up.{}.upsample.{r}", levels.checked_sub(1 + num(i)?)?),
        ["mid_block", "resnets", j, a, b] => format!("mid.block_{}.{}", num(j)? + 1, vae_resnet(&format!("{a}.{b}"))),
        ["mid_block", "attentions", "0", a, b] => {
            let (n, tf) = match (*a, *b) {
                ("group_norm", t) => (format!("norm.{t}"), Transform::Same),
                ("to_q", t) => (format!("q.{t}"), Transform::Squeeze1x1),
                ("to_k", t) => (format!("k.{t}"), Transform::Squeeze1x1),
                ("to_v", t) => (format!("v.{t}"), Transform::Squeeze1x1),
                ("to_out", t) => (format!("proj_out.{}", t.strip_prefix("0.")?), Transform::Squeeze1x1),
                _ => return None,
            };
            return Some((format!("{side}.mid.attn_1.{n}"), tf));
        }
        _ => return None,
    };
    Some((format!("{side}.{mapped}"), Transform::Same))
}

/// OpenCLIP bigG text tower keys (HF names → OpenCLIP names).
fn te2_key(k: &str) -> Option<(String, Transform)> {
    let s = Transform::Same;
    match k {
        "text_model.embeddings.token_embedding.weight" => return Some(("token_embedding.weight".into(), s)),
        "text_model.embeddings.position_embedding.weight" => return Some(("positional_embedding".into(), s)),
        "text_projection.weight" => return Some(("text_projection".into(), Transform::Transpose)),
        _ => {}
    }
    if let Some(t) = k.strip_prefix("text_model.final_layer_norm.") {
        return Some((format!("ln_final.{t}"), s));
    }
    let rest = k.strip_prefix("text_model.encoder.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let p = format!("transformer.resblocks.{i}.");
    let (name, tail) = rest.rsplit_once('.')?; // tail: weight | bias
    Some(match name {
        "layer_norm1" => (format!("{p}ln_1.{tail}"), s),
        "layer_norm2" => (format!("{p}ln_2.{tail}"), s),
        "self_attn.q_proj" => (format!("{p}attn.in_proj_{tail}"), Transform::Chunk { index: 0, of: 3 }),
        "self_attn.k_proj" => (format!("{p}attn.in_proj_{tail}"), Transform::Chunk { index: 1, of: 3 }),
        "self_attn.v_proj" => (format!("{p}attn.in_proj_{tail}"), Transform::Chunk { index: 2, of: 3 }),
        "self_attn.out_proj" => (format!("{p}attn.out_proj.{tail}"), s),
        "mlp.fc1" => (format!("{p}mlp.c_fc.{tail}"), s),
        "mlp.fc2" => (format!("{p}mlp.c_proj.{tail}"), s),
        _ => return None,
    })
}

/// The single-file key (with transform) for a diffusers key of `c`. `None`: the key has no counterpart.
pub fn sgm_key(c: Component, k: &str, unet: &UnetLayout, vae_levels: usize) -> Option<(String, Transform)> {
    match c {
        Component::Unet => unet_key(k, unet).map(|s| (format!("{UNET_PREFIX}{s}"), Transform::Same)),
        Component::Vae => vae_key(k, vae_levels).map(|(s, t)| (format!("{VAE_PREFIX}{s}"), t)),
        Component::TextEncoder => Some((format!("{TE1_PREFIX}{k}"), Transform::Same)),
        Component::TextEncoder2 => te2_key(k).map(|(s, t)| (format!("{TE2_PREFIX}{s}"), t)),
    }
}

/// The mapping as a rename function for `weights::build_strict` (unmapped keys keep a marker that cannot exist).
pub fn renamer(
    c: Component,
    unet: UnetLayout,
    vae_levels: usize,
) -> impl Fn(&str) -> (String, Transform) + Send + Sync + 'static {
    move |k| {
        sgm_key(c, k, &unet, vae_levels).unwrap_or_else(|| (format!("<no single-file key for {k}>"), Transform::Same))
    }
}

/// Check that a single file is an SDXL base checkpoint; otherwise say what it looks like.
pub fn detect(file: &StFile) -> Result<()> {
    let keys = file.keys();
    let has = |p: &str| keys.iter().any(|k| k.starts_with(p));
    if has(UNET_PREFIX) && has(VAE_PREFIX) && has(TE1_PREFIX) && has(TE2_PREFIX) {
        return Ok(());
    }
    let looks = if has("cond_stage_model.transformer.") {
        "an SD1.x checkpoint (cond_stage_model.transformer.* text encoder)"
    } else if has("cond_stage_model.model.") {
        "an SD2.x checkpoint (OpenCLIP cond_stage_model.model.*)"
    } else if has(TE2_PREFIX.trim_end_matches("model.")) && !has(TE1_PREFIX) && has("conditioner.embedders.0.model.") {
        "an SDXL refiner (OpenCLIP only, no CLIP-L text encoder)"
    } else if has("lora_unet_") || keys.iter().any(|k| k.ends_with(".lora_down.weight")) {
        "a LoRA file, not a checkpoint"
    } else if has("down_blocks.") || has("unet.") {
        "a diffusers component file; point at the diffusers folder instead"
    } else if has(UNET_PREFIX) {
        "a checkpoint without both SDXL text encoders"
    } else {
        "no known checkpoint layout"
    };
    Err(Error::invalid(file.path(), format!("not a single-file SDXL checkpoint: it looks like {looks}")))
}

/// Signature shapes of SDXL base (what the built-in configs build). A single file used without a config folder
/// must have them; the loader and `doctor` both ask this, so doctor never passes a file the loader refuses.
const BASE_SHAPES: [(&str, &[usize]); 5] = [
    ("model.diffusion_model.input_blocks.0.0.weight", &[320, 4, 3, 3]),
    ("model.diffusion_model.label_emb.0.0.weight", &[1280, 2816]),
    ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", &[49408, 768]),
    ("conditioner.embedders.1.model.token_embedding.weight", &[49408, 1280]),
    ("first_stage_model.encoder.conv_in.weight", &[128, 3, 3, 3]),
];

/// Check that a single file has SDXL base's shapes (so the built-in configs fit it).
pub fn check_base_shapes(file: &StFile) -> Result<()> {
    for (key, want) in BASE_SHAPES {
        match file.shape(key) {
            Some(s) if s == want => {}
            got => {
                return Err(Error::invalid(
                    file.path(),
                    format!(
                        "`{key}` is {} where SDXL base has {want:?}: this checkpoint's dimensions differ from SDXL base, so give its configs with --sdxl-config DIR (a diffusers-layout folder with unet/, vae/, text_encoder*/ config.json; tokenizers are built in)",
                        got.map(|s| format!("{s:?}")).unwrap_or_else(|| "missing".into())
                    ),
                ))
            }
        }
    }
    Ok(())
}
