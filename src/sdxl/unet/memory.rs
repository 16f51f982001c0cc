//! What one training step keeps for its backward pass: every activation the autograd graph holds, walked level by
//! level through the UNet's own structure. The counts per layer are the tensors this crate's forward creates on a
//! graph (layer norms and softmax as compositions, LoRA terms as functional products); `hyperlora bench train`
//! prints this estimate beside the measured peak.
use super::UNetConfig;

/// Tensors of tokens × channels one transformer block keeps: 3 layer norms (5 each), self-attention (q/k/v/out
/// with a LoRA term, head splits, residual: 23), cross-attention (12), the GEGLU feed-forward (18).
const BLOCK_TOKEN_CHANNELS: u128 = 68;
/// Score-sized tensors per attention: q·kᵀ, its scaling, the shifted and exponentiated scores, the softmax.
const SCORE_COPIES: u128 = 5;
/// The Transformer2D wrapper: group norm, permutes, proj_in/out, residual.
const WRAPPER_TOKEN_CHANNELS: u128 = 13;
/// A resnet per token: group norm + SiLU of its input channels, and convolutions, norm, SiLU, shortcut, sum of
/// its output channels.
const RESNET_IN: u128 = 9;
const RESNET_OUT: u128 = 14;
/// Tokens of the text context.
const CONTEXT: u128 = 77;
/// The backward pass holds gradients beside the kept activations: the measured peak is 7/4 of the activations
/// counted above (`hyperlora bench train`, SDXL base shapes at 256²: 4.49 GB measured against 2.61 GB counted
/// without checkpointing, 1.06 against 0.59 GB with; the demo's tiny UNet: 20 against 11 MB, 9 against 6 MB).
const PEAK_OVER_KEPT: (u128, u128) = (7, 4);

impl UNetConfig {
    /// Elements (each of the compute dtype) a training step on `batch` latents of `height`×`width` pixels holds at
    /// its peak: the activations kept for backward, plus, with gradient checkpointing, one block recomputed on a
    /// graph in backward (its activations and as much again in gradients) while only blocks' inputs are kept.
    pub fn training_elements(&self, batch: usize, height: usize, width: usize, checkpointing: bool) -> u128 {
        let levels = self.block_out_channels.len();
        let (mut h, mut w) = (height / 8, width / 8);
        let mut tokens = Vec::with_capacity(levels);
        for _ in 0..levels {
            tokens.push((h * w) as u128);
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
        let (mut kept, mut block_peak) = (0u128, 0u128);
        let mut transformer = |level: usize, kept: &mut u128| {
            let (n, c, heads) = (tokens[level], self.block_out_channels[level] as u128, self.heads(level) as u128);
            let block = BLOCK_TOKEN_CHANNELS * n * c + SCORE_COPIES * heads * (n * n + n * CONTEXT);
            let depth = self.transformer_layers_per_block.get(level) as u128;
            *kept += WRAPPER_TOKEN_CHANNELS * n * c;
            if checkpointing {
                *kept += depth * n * c;
                block_peak = block_peak.max(block);
            } else {
                *kept += depth * block;
            }
        };
        let resnet = |n: u128, cin: usize, cout: usize| n * (RESNET_IN * cin as u128 + RESNET_OUT * cout as u128);
        let cross = |i: usize, types: &[String]| types[i].starts_with("CrossAttn");
        let mut ch = self.block_out_channels[0];
        let mut skips = vec![ch];
        for i in 0..levels {
            let out = self.block_out_channels[i];
            for _ in 0..self.layers_per_block {
                kept += resnet(tokens[i], ch, out);
                ch = out;
                if cross(i, &self.down_block_types) {
                    transformer(i, &mut kept);
                }
                skips.push(ch);
            }
            if i + 1 < levels {
                kept += tokens[i + 1] * ch as u128;
                skips.push(ch);
            }
        }
        let last = levels - 1;
        kept += 2 * resnet(tokens[last], ch, ch);
        transformer(last, &mut kept);
        for (k, i) in (0..levels).rev().enumerate() {
            let out = self.block_out_channels[i];
            for _ in 0..=self.layers_per_block {
                let skip = skips.pop().unwrap_or(out);
                kept += tokens[i] * (ch + skip) as u128 + resnet(tokens[i], ch + skip, out);
                ch = out;
                if cross(k, &self.up_block_types) {
                    transformer(i, &mut kept);
                }
            }
            if i > 0 {
                kept += 2 * tokens[i - 1] * ch as u128;
            }
        }
        batch as u128 * (kept + 2 * block_peak) * PEAK_OVER_KEPT.0 / PEAK_OVER_KEPT.1
    }
}

#[cfg(test)]
mod tests {
    use crate::sdxl::model::sdxl_base_unet_config;

    #[test]
    fn checkpointing_keeps_less_and_more_so_at_large_sizes() {
        let c = sdxl_base_unet_config();
        let ratio = |s| c.training_elements(1, s, s, false) as f64 / c.training_elements(1, s, s, true) as f64;
        assert!(ratio(256) > 1.5, "256²: {}", ratio(256));
        assert!(ratio(1024) > ratio(256), "{} vs {}", ratio(1024), ratio(256));
        assert_eq!(c.training_elements(2, 512, 512, false), 2 * c.training_elements(1, 512, 512, false));
    }
}
