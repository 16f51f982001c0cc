//! `hyper_lora_modules.json`: the ordered list of UNet attention modules the bases belong to (spec §2.5).
//! The order is the file's: module i owns safetensors prefix `{i}.` and resampler tokens 8i…8i+7.
use crate::error::{Error, Result};
use crate::lora::names;
use std::path::Path;

/// One attention module of the UNet, as listed in the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// kohya-style name, e.g. `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1`.
    pub name: String,
    pub hidden_size: usize,
    pub cross_attention_dim: Option<usize>,
    /// diffusers module path, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn1`.
    pub target: String,
}

/// The four projections of an attention module, in token order (spec §2.3 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Q,
    K,
    V,
    Out,
}

impl Proj {
    pub const ALL: [Proj; 4] = [Proj::Q, Proj::K, Proj::V, Proj::Out];
    /// Attribute name in `hyper_lora_modules.safetensors` (`{i}.to_out.id_down_basis`).
    pub fn attr(self) -> &'static str {
        match self {
            Proj::Q => "to_q",
            Proj::K => "to_k",
            Proj::V => "to_v",
            Proj::Out => "to_out",
        }
    }
    /// diffusers sub-path of the Linear (`to_out.0`).
    pub fn diffusers(self) -> &'static str {
        match self {
            Proj::Q => "to_q",
            Proj::K => "to_k",
            Proj::V => "to_v",
            Proj::Out => "to_out.0",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

impl ModuleSpec {
    pub fn new(name: &str, hidden_size: usize, cross_attention_dim: Option<usize>) -> Option<Self> {
        let target = names::target_from_kohya(name)?;
        Some(ModuleSpec { name: name.to_string(), hidden_size, cross_attention_dim, target })
    }
    /// (in_features, out_features) of a projection: k/v read the cross-attention context.
    pub fn dims(&self, p: Proj) -> (usize, usize) {
        let h = self.hidden_size;
        match p {
            Proj::K | Proj::V => (self.cross_attention_dim.unwrap_or(h), h),
            Proj::Q | Proj::Out => (h, h),
        }
    }
    /// diffusers path of the projection's Linear, e.g. `….attn2.to_out.0`.
    pub fn proj_target(&self, p: Proj) -> String {
        format!("{}.{}", self.target, p.diffusers())
    }
}

/// Parse the JSON, keeping the file's key order.
pub fn parse(path: &Path, text: &str) -> Result<Vec<ModuleSpec>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        Error::invalid(path, "expected a JSON object of module name → {hidden_size, cross_attention_dim}")
    })?;
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        let bad = |what: &str| Error::invalid(path, format!("module `{name}`: {what}"));
        let hidden =
            v.get("hidden_size").and_then(|h| h.as_u64()).ok_or_else(|| bad("missing integer `hidden_size`"))?;
        let cross = match v.get("cross_attention_dim") {
            None | Some(serde_json::Value::Null) => None,
            Some(c) => {
                Some(c.as_u64().ok_or_else(|| bad("`cross_attention_dim` must be an integer or null"))? as usize)
            }
        };
        let spec = ModuleSpec::new(name, hidden as usize, cross)
            .ok_or_else(|| bad("not a kohya UNet module name (expected e.g. lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1)"))?;
        out.push(spec);
    }
    if out.is_empty() {
        return Err(Error::invalid(path, "lists no modules"));
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<(Vec<ModuleSpec>, Vec<u8>)> {
    let bytes = crate::files::read_regular(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::invalid(path, "not UTF-8 text"))?;
    Ok((parse(path, text)?, bytes))
}

/// The module list of the released SDXL weights (spec §2.4/§2.5) in diffusers `attn_processors` order
/// (down → up → mid). Used to synthesize real-size models for tests and benchmarks; real files are always read
/// from their own JSON.
pub fn sdxl_release_modules() -> Vec<ModuleSpec> {
    let mut out = Vec::new();
    let mut push = |prefix: String, attentions: usize, depth: usize, h: usize| {
        for a in 0..attentions {
            for b in 0..depth {
                for (attn, cross) in [("attn1", None), ("attn2", Some(2048))] {
                    let name = format!("lora_unet_{prefix}_attentions_{a}_transformer_blocks_{b}_{attn}");
                    out.push(ModuleSpec::new(&name, h, cross).expect("valid name"));
                }
            }
        }
    };
    push("down_blocks_1".into(), 2, 2, 640);
    push("down_blocks_2".into(), 2, 10, 1280);
    push("up_blocks_0".into(), 3, 10, 1280);
    push("up_blocks_1".into(), 3, 2, 640);
    push("mid_block".into(), 1, 10, 1280);
    out
}

/// Write a module list as the release does (`json.dumps(indent=2)`).
pub fn to_json(modules: &[ModuleSpec]) -> String {
    let mut map = serde_json::Map::new();
    for m in modules {
        map.insert(
            m.name.clone(),
            serde_json::json!({ "hidden_size": m.hidden_size, "cross_attention_dim": m.cross_attention_dim }),
        );
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(map)).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn release_module_list_matches_published_json_size() {
        let m = sdxl_release_modules();
        assert_eq!(m.len(), 140);
        // The published hyper_lora_modules.json is 18,378 bytes (spec §2.5); same names, same formatting.
        assert_eq!(to_json(&m).len(), 18_378);
        let params: usize = m
            .iter()
            .map(|s| {
                Proj::ALL
                    .iter()
                    .map(|&p| {
                        let (i, o) = s.dims(p);
                        8 * (i + o)
                    })
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(params, 11_612_160);
    }
}
