//! LoRA files. Export writes kohya naming with diffusers block paths (spec §5.1) — what ComfyUI's
//! `LoraLoaderModelOnly` and diffusers' kohya converter read. Import reads kohya, diffusers and PEFT spellings
//! and reports every key it could not place.
use super::{cpu_f32, names, LoraLayer, LoraWeights};
use crate::error::{Error, Result};
use crate::files::output::{safetensors_bytes, write_file, RawTensor};
use crate::weights::StFile;
use candle_core::{DType, Device};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub tensors: usize,
    pub layers: usize,
    pub max_rank: usize,
    pub bytes: usize,
}

/// Write `weights` as a kohya LoRA. Terms sharing a target are stacked along the rank axis (scales folded into
/// `lora_up`), every `.alpha` is rank · `alpha_ratio` (HyperLoRA: 0.5), so loaders that apply
/// `alpha/rank · up · down` reproduce ΔW exactly.
pub fn export_kohya(
    weights: &LoraWeights,
    alpha_ratio: f64,
    path: &Path,
    dtype: DType,
    metadata: HashMap<String, String>,
    overwrite: bool,
) -> Result<ExportSummary> {
    let stacked = weights.stacked(alpha_ratio)?;
    let mut tensors = Vec::with_capacity(stacked.len() * 3);
    let mut max_rank = 0;
    for s in &stacked {
        let k = names::kohya_name(&s.target);
        let rank = s.down.dims()[0];
        max_rank = max_rank.max(rank);
        for (t, which) in [(&s.down, "lora_down"), (&s.up, "lora_up")] {
            // every value must survive the file's dtype: a NaN (from the bases) or a weight that overflows f16
            // would write a file that loads and ruins every image (converted once, checked, then stored)
            let stored = t.to_dtype(dtype)?;
            let v = stored.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                let hint = if t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite()) {
                    format!(
                        "the values overflow {dtype:?} (a LoRA weight too large?): export as f32, or lower the weight"
                    )
                } else {
                    "the LoRA itself holds NaN or ±inf: check the weights, and the variant's bases".to_string()
                };
                return Err(crate::error::Error::InvalidValue(format!(
                    "export: {k}.{which}.weight would hold {bad} in {dtype:?}; nothing was written — {hint}"
                )));
            }
            tensors.push((format!("{k}.{which}.weight"), RawTensor::from_tensor(&stored, dtype)?));
        }
        tensors.push((format!("{k}.alpha"), RawTensor::scalar_f32((rank as f64 * alpha_ratio) as f32)));
    }
    let bytes = safetensors_bytes(&tensors, metadata)?;
    write_file(path, &bytes, overwrite)?;
    Ok(ExportSummary { tensors: tensors.len(), layers: stacked.len(), max_rank, bytes: bytes.len() })
}

/// Which spelling a LoRA file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    Kohya,
    Diffusers,
    Peft,
}

#[derive(Debug)]
pub struct Imported {
    pub weights: LoraWeights,
    pub spelling: Option<Spelling>,
    /// Keys that name no UNet Linear we know (text-encoder LoRAs, LDM-style names, stray tensors).
    pub unmatched: Vec<String>,
}

#[derive(Default)]
struct Parts {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// Split a tensor key into (target module path, role, spelling).
fn classify(key: &str) -> Option<(String, &'static str, Spelling)> {
    const SUFFIXES: &[(&str, &str, Spelling)] = &[
        (".lora_down.weight", "down", Spelling::Kohya),
        (".lora_up.weight", "up", Spelling::Kohya),
        (".alpha", "alpha", Spelling::Kohya),
        (".lora_A.weight", "down", Spelling::Peft),
        (".lora_B.weight", "up", Spelling::Peft),
        (".lora.down.weight", "down", Spelling::Diffusers),
        (".lora.up.weight", "up", Spelling::Diffusers),
    ];
    let well_formed = |path: &str| names::dotted(&path.replace('.', "_")).as_deref() == Some(path);
    // diffusers attention-processor spelling: `….attn1.processor.to_out_lora.down.weight`
    if let Some((module, rest)) = key.rsplit_once(".processor.") {
        let module = module.strip_prefix("unet.").unwrap_or(module);
        let (proj, role) = rest.split_once("_lora.")?;
        let role = match role {
            "down.weight" => "down",
            "up.weight" => "up",
            _ => return None,
        };
        let target = format!("{module}.{}", if proj == "to_out" { "to_out.0" } else { proj });
        return well_formed(&target).then_some((target, role, Spelling::Diffusers));
    }
    let (stem, role, mut spelling) =
        SUFFIXES.iter().find_map(|(s, r, sp)| key.strip_suffix(s).map(|st| (st, *r, *sp)))?;
    if let Some(t) = names::target_from_kohya(stem) {
        return Some((t, role, Spelling::Kohya));
    }
    let mut path = stem;
    for p in ["unet.", "base_model.model.", "model."] {
        if let Some(s) = path.strip_prefix(p) {
            path = s;
            if p == "unet." && spelling == Spelling::Peft {
                spelling = Spelling::Diffusers;
            }
        }
    }
    // Accept only well-formed UNet paths (the same vocabulary as kohya names).
    well_formed(path).then(|| (path.to_string(), role, spelling))
}

/// Read a LoRA file in kohya, diffusers or PEFT spelling. Scale = alpha / rank (alpha defaults to the rank).
pub fn import(path: &Path) -> Result<Imported> {
    let file = StFile::open(path)?;
    let mut groups: BTreeMap<String, Parts> = BTreeMap::new();
    let mut unmatched = Vec::new();
    let mut spelling = None;
    for key in file.keys() {
        match classify(&key) {
            Some((target, role, sp)) => {
                spelling.get_or_insert(sp);
                let g = groups.entry(target).or_default();
                match role {
                    "down" => g.down = Some(key),
                    "up" => g.up = Some(key),
                    _ => g.alpha = Some(key),
                }
            }
            None => unmatched.push(key),
        }
    }
    let mut layers = Vec::new();
    for (target, g) in groups {
        let (Some(dk), Some(uk)) = (&g.down, &g.up) else {
            unmatched.extend([g.down, g.up, g.alpha].into_iter().flatten());
            continue;
        };
        let down = cpu_f32(&file.tensor(dk, DType::F32, &Device::Cpu)?)?;
        let up = cpu_f32(&file.tensor(uk, DType::F32, &Device::Cpu)?)?;
        let (down, up) = match (down.rank(), up.rank()) {
            (2, 2) => (down, up),
            // 1×1 conv LoRAs store [r, in, 1, 1] / [out, r, 1, 1]
            (4, 4) if down.dims()[2..] == [1, 1] && up.dims()[2..] == [1, 1] => {
                (down.flatten_from(1)?, up.flatten_from(1)?)
            }
            _ => {
                return Err(Error::invalid(
                    path,
                    format!("`{dk}` {:?} / `{uk}` {:?}: expected 2-D LoRA factors", down.dims(), up.dims()),
                ))
            }
        };
        let r = down.dims()[0];
        if up.dims()[1] != r {
            return Err(Error::invalid(path, format!("`{uk}` has shape {:?}, but `{dk}` has rank {r}", up.dims())));
        }
        let alpha = match &g.alpha {
            Some(ak) => file.to_f32_vec(ak)?.first().copied().map(f64::from).unwrap_or(r as f64),
            None => r as f64,
        };
        layers.push(LoraLayer { target, down, up, scale: alpha / r as f64 });
    }
    if layers.is_empty() {
        return Err(Error::invalid(
            path,
            format!(
                "no UNet LoRA layers found ({} keys, e.g. `{}`)",
                unmatched.len(),
                unmatched.first().map(String::as_str).unwrap_or("")
            ),
        ));
    }
    Ok(Imported { weights: LoraWeights { layers }, spelling, unmatched })
}

/// kohya `ss_*` and `modelspec.*` metadata for an exported SDXL UNet LoRA, plus our own provenance.
pub fn kohya_metadata(
    title: &str,
    max_rank: usize,
    alpha_ratio: f64,
    trigger: &str,
    description: &str,
    extra: &[(&str, String)],
) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = [
        ("ss_network_module", "networks.lora".to_string()),
        ("ss_network_dim", max_rank.to_string()),
        ("ss_network_alpha", format!("{}", max_rank as f64 * alpha_ratio)),
        ("ss_base_model_version", "sdxl_base_v1-0".to_string()),
        ("ss_output_name", title.to_string()),
        ("modelspec.sai_model_spec", "1.0.0".to_string()),
        ("modelspec.architecture", "stable-diffusion-xl-v1-base/lora".to_string()),
        ("modelspec.implementation", "https://github.com/Stability-AI/generative-models".to_string()),
        ("modelspec.title", title.to_string()),
        ("modelspec.trigger_phrase", trigger.to_string()),
        ("modelspec.description", description.to_string()),
        ("hyperlora.version", env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn spellings_reach_the_same_target() {
        let t = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0";
        for key in [
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_down.weight",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight",
            "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.lora.down.weight",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight",
        ] {
            let (target, role, _) = classify(key).unwrap_or_else(|| panic!("{key} not classified"));
            assert_eq!((target.as_str(), role), (t, "down"), "{key}");
        }
        assert!(classify("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight").is_none());
        assert!(classify("something.else").is_none());
    }
}
