//! Tokenizers and both text encoders against diffusers/transformers (fixture README §4, `text_encoders.safetensors`).
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use hyperlora::sdxl::text::{load_text_encoder, ClipTokenizer};
use hyperlora::weights::StFile;

const R: &str = "sdxl-tiny/reference/text_encoders.safetensors";

fn prompts() -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/reference/prompts.json")).unwrap()).unwrap();
    v["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn ids(tok: &ClipTokenizer) -> Vec<Vec<u32>> {
    prompts().iter().map(|p| tok.encode(p).unwrap().ids).collect()
}

fn reference_ids(key: &str) -> Vec<Vec<u32>> {
    let v = StFile::open(fixture(R)).unwrap().to_i64_vec(key).unwrap();
    v.chunks(77).map(|c| c.iter().map(|&x| x as u32).collect()).collect()
}

#[test]
fn token_ids_match_both_tokenizers() {
    for (dir, key) in [("sdxl-tiny/tokenizer", "input_ids_1"), ("sdxl-tiny/tokenizer_2", "input_ids_2")] {
        let tok = ClipTokenizer::load(&fixture(dir)).unwrap();
        assert_eq!(ids(&tok), reference_ids(key), "{dir} (tokenizer.json)");
        // the same tokenizer built from vocab.json + merges.txt, as SDXL repositories ship it
        let tmp = copy_dir(&fixture(dir));
        std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
        let tok = ClipTokenizer::load(tmp.path()).unwrap();
        assert_eq!(ids(&tok), reference_ids(key), "{dir} (vocab.json + merges.txt)");
    }
}

#[test]
fn embedded_tokenizers_match_the_reference() {
    // the vocabulary derived from the embedded merges is the fixture's vocab.json, token for token
    let derived: serde_json::Value =
        serde_json::from_str(&hyperlora::sdxl::text::clip_vocab_json(hyperlora::sdxl::text::CLIP_MERGES)).unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sdxl-tiny/tokenizer/vocab.json")).unwrap()).unwrap();
    assert_eq!(derived.as_object().unwrap().len(), 49408);
    assert_eq!(derived, shipped);
    assert_eq!(ids(&ClipTokenizer::embedded(false).unwrap()), reference_ids("input_ids_1"));
    assert_eq!(ids(&ClipTokenizer::embedded(true).unwrap()), reference_ids("input_ids_2"));
}

#[test]
fn long_prompts_are_truncated_and_reported() {
    let tok = ClipTokenizer::load(&fixture("sdxl-tiny/tokenizer")).unwrap();
    let p = prompts();
    let t = tok.encode(&p[4]).unwrap();
    assert_eq!((t.ids.len(), t.ids[76]), (77, 49407));
    let cut = t.truncated.expect("prompt 4 is over-long");
    assert!(cut.ends_with("word59 the end") && p[4].ends_with(&cut), "{cut}");
    assert!(tok.encode(&p[0]).unwrap().truncated.is_none());
}

fn ids_tensor(key: &str) -> Tensor {
    let v: Vec<u32> = reference_ids(key).concat();
    Tensor::from_vec(v, (5, 77), &Device::Cpu).unwrap()
}

#[test]
fn text_encoders_match() {
    let dev = Device::Cpu;
    let te1 = load_text_encoder(&fixture("sdxl-tiny/text_encoder"), false, DType::F32, &dev).unwrap();
    let o1 = te1.forward(&ids_tensor("input_ids_1")).unwrap();
    assert_max_abs("te1.hidden_states_penultimate", &o1.penultimate, &load(R, "te1.hidden_states_penultimate"), 1e-4);
    assert_max_abs("te1.last_hidden_state", &o1.last_hidden, &load(R, "te1.last_hidden_state"), 1e-4);
    assert_max_abs("te1.pooler_output", &o1.pooled, &load(R, "te1.pooler_output"), 1e-4);
    let te2 = load_text_encoder(&fixture("sdxl-tiny/text_encoder_2"), true, DType::F32, &dev).unwrap();
    let o2 = te2.forward(&ids_tensor("input_ids_2")).unwrap();
    assert_max_abs("te2.hidden_states_penultimate", &o2.penultimate, &load(R, "te2.hidden_states_penultimate"), 1e-4);
    assert_max_abs("te2.last_hidden_state", &o2.last_hidden, &load(R, "te2.last_hidden_state"), 1e-4);
    assert_max_abs("te2.text_embeds", o2.text_embeds.as_ref().unwrap(), &load(R, "te2.text_embeds"), 1e-4);
    let embeds = Tensor::cat(&[&o1.penultimate, &o2.penultimate], 2).unwrap();
    assert_max_abs("prompt_embeds", &embeds, &load(R, "prompt_embeds"), 1e-4);
}
