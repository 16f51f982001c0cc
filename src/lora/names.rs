//! kohya-style LoRA names (`lora_unet_down_blocks_1_…_attn2_to_k`) ↔ diffusers module paths
//! (`down_blocks.1.….attn2.to_k`). Underscores occur inside diffusers names, so an underscored name is parsed
//! against the vocabulary of diffusers' UNet segment names rather than split on `_`.

/// Diffusers UNet path segments that contain or may follow underscores. Longest match wins.
const SEGMENTS: &[&str] = &[
    "down_blocks",
    "up_blocks",
    "mid_block",
    "attentions",
    "resnets",
    "transformer_blocks",
    "attn1",
    "attn2",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "ff",
    "net",
    "proj",
    "norm1",
    "norm2",
    "norm3",
    "norm",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "downsamplers",
    "upsamplers",
    "conv",
    "time_embedding",
    "linear_1",
    "linear_2",
    "add_embedding",
    "conv_in",
    "conv_out",
    "conv_norm_out",
    // LDM/SGM block names (kohya LoRAs trained on single-file checkpoints); the UNet maps them to diffusers paths
    "input_blocks",
    "middle_block",
    "output_blocks",
];

/// The prefix kohya uses for UNet modules.
pub const KOHYA_UNET_PREFIX: &str = "lora_unet_";

/// `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0` → `lora_unet_down_blocks_1_…_attn1_to_out_0`.
pub fn kohya_name(target: &str) -> String {
    format!("{KOHYA_UNET_PREFIX}{}", target.replace('.', "_"))
}

/// The inverse of [`kohya_name`]; `None` when the name is not a UNet name made of known segments.
pub fn target_from_kohya(name: &str) -> Option<String> {
    dotted(name.strip_prefix(KOHYA_UNET_PREFIX)?)
}

/// Parse an underscored diffusers path into its dotted form.
pub fn dotted(underscored: &str) -> Option<String> {
    let toks: Vec<&str> = underscored.split('_').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if !toks[i].is_empty() && toks[i].bytes().all(|b| b.is_ascii_digit()) {
            out.push(toks[i].to_string());
            i += 1;
            continue;
        }
        let mut best = None;
        for seg in SEGMENTS {
            let n = seg.split('_').count();
            if i + n <= toks.len() && toks[i..i + n].join("_") == *seg && best.is_none_or(|(m, _)| n > m) {
                best = Some((n, *seg));
            }
        }
        let (n, seg) = best?;
        out.push(seg.to_string());
        i += n;
    }
    (!out.is_empty()).then(|| out.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn attention_names_round_trip() {
        for t in [
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_out.0",
            "mid_block.attentions.0.transformer_blocks.3.attn2.to_k",
            "down_blocks.0.resnets.1.time_emb_proj",
        ] {
            assert_eq!(target_from_kohya(&kohya_name(t)).as_deref(), Some(t));
        }
        // LDM/SGM spellings parse to LDM paths; the UNet resolves them to its own projections
        assert_eq!(
            target_from_kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q").as_deref(),
            Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q")
        );
        assert_eq!(target_from_kohya("lora_unet_down_blocks_1_bogus_0"), None);
        assert_eq!(target_from_kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1"), None);
    }
}
