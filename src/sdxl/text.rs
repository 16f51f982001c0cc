//! SDXL's two text encoders as diffusers stores them: `text_encoder/` (CLIP ViT-L, `CLIPTextModel`) and
//! `text_encoder_2/` (OpenCLIP bigG, `CLIPTextModelWithProjection`), keys `text_model.*` (+ `text_projection`).
//! The UNet reads the penultimate hidden states of both, concatenated; the pooled conditioning is encoder 2's
//! projected EOS state. Tokenizers come from `tokenizer*/` (tokenizer.json, or vocab.json + merges.txt).
use crate::clip::ClipLayer;
use crate::error::{Error, Result};
use crate::weights::StFile;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear_no_bias, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    pub projection_dim: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    49407
}

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not a CLIP text config: {e}")))?;
        if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(Error::invalid(
                path,
                format!("hidden_act `{}` is not supported (quick_gelu or gelu)", c.hidden_act),
            ));
        }
        use crate::sdxl::unet::MAX_CONFIG_SIZE as BIG;
        crate::sdxl::unet::bounded(&[
            ("hidden_size", c.hidden_size, BIG),
            ("intermediate_size", c.intermediate_size, BIG),
            ("num_hidden_layers", c.num_hidden_layers, 256),
            ("max_position_embeddings", c.max_position_embeddings, 1 << 16),
            ("vocab_size", c.vocab_size, BIG),
            ("projection_dim", c.projection_dim.unwrap_or(0), BIG),
        ])
        .map_err(|why| Error::invalid(path, why))?;
        if c.max_position_embeddings < 77 || c.num_hidden_layers < 2 || c.vocab_size == 0 {
            return Err(Error::invalid(
                path,
                format!(
                    "max_position_embeddings {} (at least 77 tokens), num_hidden_layers {} (at least 2: SDXL reads the penultimate) or vocab_size {} does not fit",
                    c.max_position_embeddings, c.num_hidden_layers, c.vocab_size
                ),
            ));
        }
        if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps > 0.0 && c.layer_norm_eps < 1.0) {
            return Err(Error::invalid(
                path,
                format!("layer_norm_eps {} is not in (0, 1) (CLIP: 1e-5)", c.layer_norm_eps),
            ));
        }
        if c.eos_token_id as usize >= c.vocab_size {
            return Err(Error::invalid(
                path,
                format!("eos_token_id {} is outside the vocabulary of {} tokens", c.eos_token_id, c.vocab_size),
            ));
        }
        if c.num_attention_heads == 0 || c.hidden_size == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::invalid(
                path,
                format!(
                    "hidden_size {} is not a positive multiple of num_attention_heads {}",
                    c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        Ok(c)
    }
}

/// What SDXL takes from one text encoder.
pub struct TextOutput {
    /// Output of the second-to-last layer, no final LayerNorm: [B, 77, hidden].
    pub penultimate: Tensor,
    /// Final LayerNorm of the last layer: [B, 77, hidden].
    pub last_hidden: Tensor,
    /// Final-LN state at the first EOS: [B, hidden].
    pub pooled: Tensor,
    /// `text_projection(pooled)` for encoder 2: [B, projection_dim].
    pub text_embeds: Option<Tensor>,
}

pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// `vb` at the checkpoint root (`text_model.*`, `text_projection.weight`); `with_projection` for encoder 2.
    pub fn new(c: &ClipTextConfig, vb: VarBuilder, with_projection: bool) -> candle_core::Result<Self> {
        let tm = vb.pp("text_model");
        let e = tm.pp("embeddings");
        let text_projection = match (with_projection, c.projection_dim) {
            (true, Some(p)) => Some(linear_no_bias(c.hidden_size, p, vb.pp("text_projection"))?),
            (true, None) => candle_core::bail!("text encoder 2 needs projection_dim in its config"),
            _ => None,
        };
        Ok(Self {
            token_embedding: embedding(c.vocab_size, c.hidden_size, e.pp("token_embedding"))?,
            position_embedding: embedding(c.max_position_embeddings, c.hidden_size, e.pp("position_embedding"))?,
            layers: (0..c.num_hidden_layers)
                .map(|i| {
                    ClipLayer::new(
                        c.hidden_size,
                        c.num_attention_heads,
                        c.intermediate_size,
                        &c.hidden_act,
                        c.layer_norm_eps,
                        tm.pp("encoder").pp("layers").pp(i),
                    )
                })
                .collect::<candle_core::Result<_>>()?,
            final_layer_norm: layer_norm(c.hidden_size, c.layer_norm_eps, tm.pp("final_layer_norm"))?,
            text_projection,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `ids`: [B, L] u32 token ids.
    pub fn forward(&self, ids: &Tensor) -> Result<TextOutput> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let pos = Tensor::arange(0u32, l as u32, dev)?;
        let mut x = self.token_embedding.forward(ids)?.broadcast_add(&self.position_embedding.forward(&pos)?)?;
        let dtype = x.dtype();
        let mask: Vec<f32> = (0..l * l).map(|i| if i % l > i / l { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (l, l), dev)?.to_dtype(dtype)?;
        let mut penultimate = None;
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, Some(&mask))?;
            if i + 2 == n {
                penultimate = Some(x.clone());
            }
        }
        let last_hidden = self.final_layer_norm.forward(&x)?;
        // the first position holding the EOS id; configs with the legacy eos_token_id 2 (the real SDXL repos)
        // take the first position of the largest id instead, as transformers does
        let ids_v = ids.to_device(&Device::Cpu)?.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut rows = Vec::with_capacity(b);
        for (r, row) in ids_v.iter().enumerate() {
            let p = if self.config.eos_token_id == 2 {
                let m = row.iter().copied().max().unwrap_or(0);
                row.iter().position(|&t| t == m).unwrap_or(0)
            } else {
                row.iter().position(|&t| t == self.config.eos_token_id).unwrap_or(l - 1)
            };
            rows.push(last_hidden.get(r)?.get(p)?);
        }
        let pooled = Tensor::stack(&rows, 0)?;
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(&pooled)).transpose()?;
        Ok(TextOutput { penultimate: penultimate.unwrap_or_else(|| x.clone()), last_hidden, pooled, text_embeds })
    }
}

/// Load a text encoder folder (`config.json` + `model.safetensors`), strictly (buffers like `position_ids` aside).
pub fn load_text_encoder(dir: &Path, with_projection: bool, dtype: DType, device: &Device) -> Result<ClipTextModel> {
    let cfg = ClipTextConfig::load(&dir.join("config.json"))?;
    let file = std::sync::Arc::new(StFile::open(super::model::component_file(dir, "model")?)?);
    crate::weights::build_strict(
        file,
        dtype,
        device,
        |k| (k.to_string(), crate::weights::Transform::Same),
        |k| !k.ends_with("position_ids") && (with_projection || k != "text_projection.weight"),
        |vb| ClipTextModel::new(&cfg, vb, with_projection),
    )
}

/// A prompt as the encoder sees it.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// BOS, up to 75 prompt tokens, EOS, padding: exactly `max_len` ids.
    pub ids: Vec<u32>,
    /// The part of the prompt that did not fit, if any (diffusers drops it with a warning; we report it).
    pub truncated: Option<String>,
}

/// CLIP BPE tokenizer with SDXL's padding rules.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

/// tokenizer.json for CLIP built from vocab.json + merges.txt (the files SDXL repositories ship).
fn clip_tokenizer_json(vocab: &str, merges: &str, pad: &str) -> Result<String> {
    let vocab: serde_json::Value =
        serde_json::from_str(vocab).map_err(|e| Error::Mismatch(format!("vocab.json: {e}")))?;
    let merges: Vec<serde_json::Value> = merges
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap_or((l, ""));
            serde_json::json!([a, b])
        })
        .collect();
    let id = |t: &str| vocab.get(t).and_then(|v| v.as_u64());
    let mut added = vec![];
    for t in [pad, "<|startoftext|>", "<|endoftext|>"] {
        if let Some(i) = id(t) {
            if !added.iter().any(|a: &serde_json::Value| a["id"] == i) {
                added.push(serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }
        }
    }
    let j = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    Ok(j.to_string())
}

/// GPT-2's byte → printable character table (what CLIP's BPE vocabulary is spelled in).
pub fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

/// CLIP's BPE merges (OpenAI CLIP / open_clip `bpe_simple_vocab_16e6`, MIT licence; the same file SDXL
/// repositories and ComfyUI ship as `merges.txt`). Embedded so that a single-file checkpoint needs no tokenizer
/// folder.
pub const CLIP_MERGES: &str = include_str!("../../assets/clip/merges.txt");

/// CLIP's 49408-token vocabulary as `vocab.json` text, derived from the merges the way CLIP defines it: the 256
/// byte symbols (GPT-2's byte → unicode table order), the same with `</w>`, one token per merge, then
/// `<|startoftext|>` and `<|endoftext|>`.
pub fn clip_vocab_json(merges: &str) -> String {
    // the 256 byte symbols in GPT-2's order: printable bytes first, then the rest
    let table = bytes_to_unicode();
    let mut order: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    order.extend((0..256u32).filter(|b| !order.contains(b)).collect::<Vec<_>>());
    let base: Vec<String> = order.iter().map(|&b| table[b as usize].to_string()).collect();
    let mut tokens: Vec<String> = base.clone();
    tokens.extend(base.iter().map(|t| format!("{t}</w>")));
    tokens.extend(
        merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .take(49152 - 256 - 2)
            .map(|l| l.replacen(' ', "", 1)),
    );
    tokens.push("<|startoftext|>".into());
    tokens.push("<|endoftext|>".into());
    let map: serde_json::Map<String, serde_json::Value> =
        tokens.into_iter().enumerate().map(|(i, t)| (t, serde_json::Value::from(i))).collect();
    serde_json::Value::Object(map).to_string()
}

impl ClipTokenizer {
    /// Load from a `tokenizer*/` folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
    /// The pad token comes from `special_tokens_map.json` (SDXL: `<|endoftext|>` for tokenizer, `!` for tokenizer_2).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| crate::files::read_text(dir.join(f)).map_err(|e| Error::io(dir.join(f), e));
        let pad_name = match read("special_tokens_map.json") {
            Ok(t) => serde_json::from_str::<serde_json::Value>(&t)
                .ok()
                .and_then(|v| {
                    v.get("pad_token").and_then(|p| {
                        p.as_str().map(str::to_string).or_else(|| p.get("content")?.as_str().map(str::to_string))
                    })
                })
                .unwrap_or_else(|| "<|endoftext|>".into()),
            Err(_) => "<|endoftext|>".into(),
        };
        let json_path = dir.join("tokenizer.json");
        let inner = if json_path.exists() {
            tokenizers::Tokenizer::from_file(&json_path)
                .map_err(|e| Error::invalid(&json_path, format!("cannot load tokenizer: {e}")))?
        } else {
            let json = clip_tokenizer_json(&read("vocab.json")?, &read("merges.txt")?, &pad_name)?;
            json.parse::<tokenizers::Tokenizer>().map_err(|e| {
                Error::invalid(dir, format!("cannot build a CLIP tokenizer from vocab.json + merges.txt: {e}"))
            })?
        };
        Self::with_pad(inner, &pad_name, dir)
    }

    /// SDXL's tokenizers from the embedded CLIP vocabulary: `tokenizer` pads with `<|endoftext|>`, `tokenizer_2`
    /// with `!` (as the SDXL repositories' `special_tokens_map.json` say).
    pub fn embedded(second: bool) -> Result<Self> {
        let pad = if second { "!" } else { "<|endoftext|>" };
        let json = clip_tokenizer_json(&clip_vocab_json(CLIP_MERGES), CLIP_MERGES, pad)?;
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Mismatch(format!("embedded CLIP tokenizer: {e}")))?;
        Self::with_pad(inner, pad, Path::new("<embedded CLIP vocabulary>"))
    }

    fn with_pad(inner: tokenizers::Tokenizer, pad_name: &str, source: &Path) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::invalid(source, format!("the vocabulary has no `{t}` token")))
        };
        Ok(ClipTokenizer {
            bos: id("<|startoftext|>")?,
            eos: id("<|endoftext|>")?,
            pad: id(pad_name)?,
            inner,
            max_len: 77,
        })
    }

    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let enc = self
            .inner
            .encode(prompt, false)
            .map_err(|e| Error::Mismatch(format!("cannot tokenize {prompt:?}: {e}")))?;
        let room = self.max_len - 2;
        let content = enc.get_ids();
        let truncated = (content.len() > room).then(|| {
            let start = enc.get_offsets()[room].0;
            prompt.get(start..).unwrap_or("").trim().to_string()
        });
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(content.iter().take(room));
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Tokens { ids, truncated })
    }
}
