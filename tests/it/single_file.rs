//! Single-file SGM checkpoints: the key table both ways against the fixture, identical tensors after loading,
//! and clear errors for checkpoints that are not SDXL (fixture README §5).
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use hyperlora::files::output::RawTensor;
use hyperlora::sdxl::model::{Sdxl, SdxlOptions};
use hyperlora::sdxl::single_file::{owned_by, sgm_key, Component, UnetLayout};
use hyperlora::weights::StFile;
use std::collections::BTreeSet;

const SINGLE: &str = "sdxl-tiny-single-file/sdxl_tiny_sgm_fp16.safetensors";

fn layout() -> UnetLayout {
    UnetLayout { layers_per_block: 2, up_has_attention: vec![true, true, false] }
}

#[test]
fn key_table_covers_both_layouts_exactly() {
    let single = StFile::open(fixture(SINGLE)).unwrap();
    let parts = [
        (Component::Unet, "sdxl-tiny/unet/diffusion_pytorch_model.safetensors"),
        (Component::Vae, "sdxl-tiny/vae/diffusion_pytorch_model.safetensors"),
        (Component::TextEncoder, "sdxl-tiny/text_encoder/model.safetensors"),
        (Component::TextEncoder2, "sdxl-tiny/text_encoder_2/model.safetensors"),
    ];
    let mut total = 0;
    for (comp, folder_file) in parts {
        let folder = StFile::open(fixture(folder_file)).unwrap();
        let mut hit = BTreeSet::new();
        for k in folder.keys().into_iter().filter(|k| !k.ends_with("position_ids")) {
            let (sk, tf) =
                sgm_key(comp, &k, &layout(), 4).unwrap_or_else(|| panic!("{comp:?}: no single-file key for {k}"));
            let file_shape =
                single.shape(&sk).unwrap_or_else(|| panic!("{comp:?}: {k} → {sk} is not in the single file"));
            assert_eq!(tf.shape(file_shape), folder.shape(&k).unwrap(), "{k} → {sk}");
            // identical values after the fp16 cast and the transform
            let a = folder.tensor(&k, DType::F32, &Device::Cpu).unwrap();
            let b = tf.apply(single.tensor(&sk, DType::F32, &Device::Cpu).unwrap()).unwrap();
            assert_max_abs(&k, &b, &a, 0.0);
            hit.insert(sk);
            total += 1;
        }
        // the other direction: every single-file key of this component is reached
        let owned: BTreeSet<String> = single.keys().into_iter().filter(|k| owned_by(comp, k)).collect();
        let missed: Vec<_> = owned.difference(&hit).collect();
        assert!(missed.is_empty(), "{comp:?}: single-file keys no model key maps to: {missed:?}");
    }
    assert!(total > 900, "{total}");
    let leftover: Vec<String> = single
        .keys()
        .into_iter()
        .filter(|k| {
            ![Component::Unet, Component::Vae, Component::TextEncoder, Component::TextEncoder2]
                .iter()
                .any(|c| owned_by(*c, k))
        })
        .collect();
    assert!(leftover.iter().all(|k| k.ends_with("logit_scale") || k.ends_with("position_ids")), "{leftover:?}");
}

fn unet_out(m: &Sdxl) -> Tensor {
    let r = "sdxl-tiny/reference/unet_forward.safetensors";
    m.unet
        .forward(
            &load(r, "input.sample"),
            451.0,
            &load(r, "input.encoder_hidden_states"),
            &load(r, "input.text_embeds"),
            &load(r, "input.time_ids"),
        )
        .unwrap()
}

#[test]
fn single_file_loads_like_the_folder() {
    let opts = SdxlOptions::default();
    let folder = Sdxl::load(&fixture("sdxl-tiny"), None, &opts).unwrap();
    let single = Sdxl::load(&fixture(SINGLE), Some(&fixture("sdxl-tiny")), &opts).unwrap();
    assert_max_abs("unet", &unet_out(&single), &unet_out(&folder), 0.0);
    let lat = load("sdxl-tiny/reference/vae.safetensors", "decode.latents_scaled");
    assert_max_abs("vae", &single.vae.decode(&lat).unwrap(), &folder.vae.decode(&lat).unwrap(), 0.0);
    let (a, _) = single.encode_prompt("fcsks fxhks fhyks, a photo of a person").unwrap();
    let (b, _) = folder.encode_prompt("fcsks fxhks fhyks, a photo of a person").unwrap();
    assert_max_abs("prompt embeds", &a.embeds, &b.embeds, 0.0);
    assert_max_abs("pooled", &a.pooled, &b.pooled, 0.0);
    // and the folder's encoding is the reference's
    let r = "sdxl-tiny/reference/text_encoders.safetensors";
    assert_max_abs("prompt_embeds[0]", &b.embeds, &load(r, "prompt_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
    assert_max_abs("text_embeds[0]", &b.pooled, &load(r, "te2.text_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
}

#[test]
fn non_sdxl_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sd15.safetensors");
    let t = || RawTensor::scalar_f32(0.0);
    let entries = vec![
        ("model.diffusion_model.input_blocks.0.0.weight".to_string(), t()),
        ("first_stage_model.decoder.conv_in.weight".to_string(), t()),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight".to_string(), t()),
    ];
    std::fs::write(&p, hyperlora::files::output::safetensors_bytes(&entries, Default::default()).unwrap()).unwrap();
    let e = Sdxl::load(&p, Some(&fixture("sdxl-tiny")), &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("sd15.safetensors") && e.contains("SD1.x"), "{e}");
    let e = Sdxl::load(
        &fixture("hyperlora-tiny/lora_n1.safetensors"),
        Some(&fixture("sdxl-tiny")),
        &SdxlOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("a LoRA file"), "{e}");
    // without configs, a file whose dimensions are not SDXL base's is refused with the flag that fixes it
    let e = Sdxl::load(&fixture(SINGLE), None, &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("SDXL base") && e.contains("--sdxl-config") && e.contains("input_blocks.0.0.weight"), "{e}");
    // a truncated single file
    let bytes = std::fs::read(fixture(SINGLE)).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = Sdxl::load(&cut, Some(&fixture("sdxl-tiny")), &SdxlOptions::default()).err().unwrap().to_string();
    assert!(e.contains("cut.safetensors") && e.contains("truncated"), "{e}");
}

/// A folder with only the tiny model's `config.json` files: no tokenizers, no weights.
fn configs_only() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for sub in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        std::fs::copy(fixture(&format!("sdxl-tiny/{sub}/config.json")), d.path().join(sub).join("config.json"))
            .unwrap();
    }
    d
}

#[test]
fn single_file_needs_no_tokenizer_folder() {
    // the tokenizers are built in: a single file with a configs-only folder encodes prompts exactly as the
    // diffusers folder (with its tokenizer folders) does, and generates
    let cfg = configs_only();
    let opts = SdxlOptions::default();
    let single = Sdxl::load(&fixture(SINGLE), Some(cfg.path()), &opts).unwrap();
    let folder = Sdxl::load(&fixture("sdxl-tiny"), None, &opts).unwrap();
    for p in ["fcsks fxhks fhyks, a photo of a person", "A young Woman, wearing   wedding dress, at church!!", ""] {
        let (a, _) = single.encode_prompt(p).unwrap();
        let (b, _) = folder.encode_prompt(p).unwrap();
        assert_max_abs(p, &a.embeds, &b.embeds, 0.0);
        assert_max_abs(p, &a.pooled, &b.pooled, 0.0);
    }
}

#[test]
fn comfyui_tree_with_only_a_single_file_generates_and_doctor_agrees() {
    let tree = tempfile::tempdir().unwrap();
    let ck = tree.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(fixture(SINGLE), ck.join("tiny_sgm.safetensors")).unwrap();
    let script = tree.path().join("gen.rhai");
    let png = tree.path().join("out.png");
    std::fs::write(
        &script,
        format!(
            "let img = generate(\"a photo\", #{{ steps: 2, width: 64, height: 64 }}); save(img, \"{}\");",
            png.display()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"));
        c.args(extra)
            .env("HYPERLORA_CONFIG", tree.path().join("none.toml"))
            .env("HF_HOME", tree.path().join("hf"))
            .env_remove("HF_HUB_CACHE");
        for v in [
            "HYPERLORA_SDXL",
            "HYPERLORA_SDXL_CONFIG",
            "HYPERLORA_HYPERLORA",
            "HYPERLORA_CLIP",
            "HYPERLORA_ANTELOPEV2",
            "HYPERLORA_COMFYUI",
        ] {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let comfy = tree.path().to_str().unwrap();
    // the tiny file is not SDXL-base-shaped: doctor and generate refuse it alike, naming the same flag
    let d = run(&["doctor", "--comfyui", comfy]);
    let d = format!("{}{}", String::from_utf8_lossy(&d.stdout), String::from_utf8_lossy(&d.stderr));
    let line = d.lines().find(|l| l.contains("sdxl")).unwrap_or_else(|| panic!("{d}"));
    assert!(line.contains("BAD") && d.contains("--sdxl-config"), "{d}");
    let r = run(&["run", script.to_str().unwrap(), "--comfyui", comfy]);
    assert!(
        !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--sdxl-config"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // with its configs (and no tokenizer folder anywhere) doctor says ok and generation works
    let cfg = configs_only();
    let d = run(&["doctor", "--comfyui", comfy, "--sdxl-config", cfg.path().to_str().unwrap()]);
    let d = String::from_utf8_lossy(&d.stdout).to_string();
    assert!(d.lines().any(|l| l.contains("sdxl") && l.contains("ok")), "{d}");
    let r = run(&["run", script.to_str().unwrap(), "--comfyui", comfy, "--sdxl-config", cfg.path().to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(png.is_file());
}
