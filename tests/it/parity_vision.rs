//! CLIP vision tower and the CLIP image processor (fixture README §2), and the photo → CLIP → HyperLoRA input path.
use crate::common::*;
use candle_core::{DType, Device};
use hyperlora::files::output::RawTensor;
use hyperlora::pixels::Rgb8;
use hyperlora::vision::clip::load_clip_vision;
use hyperlora::vision::processor::clip_pixel_values;

const PRE: &str = "clip-vision-tiny/preprocess_reference.safetensors";
const FWD: &str = "clip-vision-tiny/forward_reference.safetensors";

fn photo() -> Rgb8 {
    let (rgb, w, h, _) = hyperlora::files::png_meta::read_png(&fixture("photo.png")).unwrap();
    Rgb8::new(w, h, rgb).unwrap()
}

#[test]
fn preprocessing_reproduces_pil_exactly() {
    let p = photo();
    for (name, img) in [
        ("full", p.clone()),
        ("square_face", p.crop(150, 30, 300, 180).unwrap()),
        ("wide_face", p.crop(100, 0, 400, 200).unwrap()),
    ] {
        let got = clip_pixel_values(&img, 224).unwrap();
        // PIL's uint8 result is reproduced bit for bit; what is left is float rounding of the normalisation
        assert_max_abs(&format!("pixel_values.{name}"), &got, &load(PRE, &format!("pixel_values.{name}")), 2e-6);
    }
}

#[test]
fn vision_tower_matches_transformers() {
    let m = load_clip_vision(&fixture("clip-vision-tiny"), DType::F32, &Device::Cpu).unwrap();
    for name in ["square_face", "full"] {
        let px = load(FWD, &format!("{name}.pixel_values"));
        let out = m.forward_all(&px).unwrap();
        assert_eq!(out.hidden_states.len(), 5);
        if name == "square_face" {
            for (i, h) in out.hidden_states.iter().enumerate() {
                assert_max_abs(
                    &format!("{name}.hidden_states.{i}"),
                    h,
                    &load(FWD, &format!("{name}.hidden_states.{i}")),
                    1e-4,
                );
            }
        }
        assert_max_abs(
            &format!("{name}.last_hidden_state"),
            &out.hidden_states[4],
            &load(FWD, &format!("{name}.last_hidden_state")),
            1e-4,
        );
        assert_max_abs(
            &format!("{name}.pooled_output"),
            &out.pooled,
            &load(FWD, &format!("{name}.pooled_output")),
            1e-4,
        );
        assert_max_abs(
            &format!("{name}.image_embeds"),
            out.image_embeds.as_ref().unwrap(),
            &load(FWD, &format!("{name}.image_embeds")),
            1e-4,
        );
        // HyperLoRA's feature, computed without running the last layer
        assert_max_abs(
            &format!("{name}.hidden_states_penultimate"),
            &m.penultimate(&px).unwrap(),
            &load(FWD, &format!("{name}.hidden_states_penultimate")),
            1e-4,
        );
    }
}

/// photo.png → crop → processor → CLIP penultimate = the CLIP rows the HyperLoRA fixture was computed from.
#[test]
fn photo_to_hyperlora_clip_features() {
    let m = load_clip_vision(&fixture("clip-vision-tiny"), DType::F32, &Device::Cpu).unwrap();
    let p = photo();
    let want = load("hyperlora-tiny/inputs.safetensors", "clip_hidden_states_n3");
    for (row, img) in [(1, p.crop(150, 30, 300, 180).unwrap()), (2, p.clone())] {
        let got = m.penultimate(&clip_pixel_values(&img, 224).unwrap()).unwrap();
        assert_max_abs(&format!("clip_hidden_states_n3[{row}]"), &got, &want.narrow(0, row, 1).unwrap(), 1e-4);
    }
}

#[test]
fn full_clip_checkpoint_loads_and_wrong_config_is_named() {
    // a CLIPModel-style folder: nested vision_config, text tower and logit_scale in the same file
    let d = tempfile::tempdir().unwrap();
    let vc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip-vision-tiny/config.json")).unwrap()).unwrap();
    std::fs::write(
        d.path().join("config.json"),
        serde_json::json!({"model_type": "clip", "projection_dim": 16, "vision_config": vc, "text_config": {}})
            .to_string(),
    )
    .unwrap();
    rewrite(&fixture("clip-vision-tiny/model.safetensors"), &d.path().join("model.safetensors"), |t| {
        t.push(("text_model.embeddings.token_embedding.weight".into(), RawTensor::scalar_f32(0.0)));
        t.push(("logit_scale".into(), RawTensor::scalar_f32(1.0)));
    });
    let m = load_clip_vision(d.path(), DType::F32, &Device::Cpu).unwrap();
    let px = load(FWD, "full.pixel_values");
    assert_max_abs("nested config", &m.penultimate(&px).unwrap(), &load(FWD, "full.hidden_states_penultimate"), 1e-4);

    // issue #27: a ViT-B/32 config beside L/14 weights
    let mut bad = vc.clone();
    bad["patch_size"] = serde_json::json!(32);
    std::fs::write(d.path().join("config.json"), bad.to_string()).unwrap();
    let e = load_clip_vision(d.path(), DType::F32, &Device::Cpu).err().unwrap();
    match e {
        hyperlora::Error::Shape { key, expected, found, .. } => {
            assert_eq!(key, "vision_model.embeddings.patch_embedding.weight");
            assert_eq!((expected, found), (vec![32, 3, 32, 32], vec![32, 3, 14, 14]));
        }
        other => panic!("expected a shape error, got {other}"),
    }
}
