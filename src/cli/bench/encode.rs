//! `hyperlora bench encode`: time per photo of each encoder stage (real files when given, else real-size random
//! stand-ins: CLIP ViT-L/14 shapes, an IResNet-100 recognizer, detector/landmark nets of about antelopev2's compute).
//! Direct model calls on purpose: the stages are timed one by one, without the session's caches.
use super::sdxl::RandomWeights;
use super::table::{median, Table};
use super::Args;
use crate::face::align::norm_crop_size;
use crate::face::analyser::Antelope;
use crate::face::cutout::id_condition;
use crate::face::landmark;
use crate::pixels::photo::load_photo;
use crate::pixels::Rgb8;
use crate::synthetic::onnx as synthetic;
use crate::vision::clip::{load_clip_vision, ClipVision, ClipVisionConfig};
use crate::vision::processor::clip_pixel_values;
use candle_core::DType;
use std::time::Instant;

/// openai/clip-vit-large-patch14's vision config.
fn clip_l14() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_attention_heads: 16,
        num_hidden_layers: 24,
        image_size: 224,
        patch_size: 14,
        hidden_act: "quick_gelu".into(),
        layer_norm_eps: 1e-5,
        num_channels: 3,
        projection_dim: Some(768),
    }
}

/// A 1024×768 test card: smooth colour ramps (the stand-in models do not look for faces anyway).
fn test_card() -> Rgb8 {
    let (w, h) = (1024, 768);
    let data = (0..w * h).flat_map(|i| {
        let (x, y) = (i % w, i / w);
        [(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]
    });
    Rgb8 { width: w, height: h, data: data.collect() }
}

pub fn encode(a: Args) -> anyhow::Result<()> {
    let mut table = Table(Vec::new());
    let dev = crate::front::device(&a.device)?;
    let tmp = std::env::temp_dir().join(format!("hyperlora-bench-encode-{}", std::process::id()));
    let stand_ins = a.antelopev2.is_none();
    let dir = match &a.antelopev2 {
        Some(d) => d.clone(),
        None => {
            std::fs::create_dir_all(&tmp)?;
            let t = Instant::now();
            let mut notes = Vec::new();
            for (file, m) in [
                ("scrfd_10g_bnkps.onnx", synthetic::scrfd_standin(1)),
                ("2d106det.onnx", synthetic::landmark_standin(2)),
                ("glintr100.onnx", synthetic::iresnet100(3)),
            ] {
                notes.push(format!("{file}: {} {:.2} GMACs", m.what, m.macs as f64 / 1e9));
                std::fs::write(tmp.join(file), &m.onnx)?;
            }
            table.row("write random stand-in ONNX models", t.elapsed(), format!("setup; {}", notes.join("; ")));
            tmp.clone()
        }
    };
    let result = (|| -> anyhow::Result<()> {
        let t = Instant::now();
        let face = Antelope::load(&dir)?;
        table.row("load + optimise the 3 ONNX models (tract)", t.elapsed(), dir.display().to_string());
        let t = Instant::now();
        let clip: ClipVision = match &a.clip {
            Some(d) => load_clip_vision(d, DType::F32, &dev)?,
            None => ClipVision::new(
                &clip_l14(),
                candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone()),
                false,
            )?,
        };
        table.row(
            "load CLIP vision",
            t.elapsed(),
            a.clip.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "random ViT-L/14 weights, f32".into()),
        );
        let img = match &a.photo {
            Some(p) => {
                let (d, img) = median(a.repeat, || Ok(load_photo(p)?))?;
                table.row("decode photo", d, format!("{} ({}×{})", p.display(), img.width, img.height));
                img
            }
            None => test_card(),
        };
        let what = format!("{}×{} photo", img.width, img.height);
        let (d, faces) = median(a.repeat, || Ok(face.detector.detect(&img, 640, 0.5)?))?;
        table.row("detect (SCRFD at 640²)", d, format!("{what}; {} face(s)", faces.len()));
        let bbox = match faces.first() {
            Some(f) if !stand_ins => f.bbox.map(|v| v as f64),
            _ => {
                let (w, h) = (img.width as f64, img.height as f64);
                [w * 0.4, h * 0.3, w * 0.6, h * 0.6]
            }
        };
        let (d, lm) = median(a.repeat, || Ok(face.landmarks.landmarks(&img, bbox)?))?;
        table.row("landmarks (2d106 crop + model)", d, "192² input".into());
        // stand-in landmarks are noise: lay the cutout on a generic face in the same box instead
        let lm = if stand_ins {
            landmark::decode(&synthetic::mean_face_106(), &landmark::crop_transform(bbox))?
        } else {
            lm
        };
        let (d, cond) = median(a.repeat, || Ok(id_condition(&img, &lm, true, false)?))?;
        table.row(
            "ID cutout (polygon mask, 512² blur, grey paste, crops)",
            d,
            format!("CLIP crop {}², 3× crop {}²", cond.clip_crop.width, cond.arcface_crop.width),
        );
        let (d, re) = median(a.repeat, || Ok(face.detector.detect(&cond.arcface_crop, 640, 0.5)?))?;
        table.row("re-detect on the 3× crop (SCRFD at 640²)", d, format!("{} face(s)", re.len()));
        let size = face.recognizer.input_size;
        let kps = match re.first() {
            Some(f) if !stand_ins => f.kps.map(|p| [p[0] as f64, p[1] as f64]),
            _ => crate::face::analyser::kps_from_landmarks(&lm)
                .map(|p| [p[0] - cond.arcface_box[0] as f64, p[1] - cond.arcface_box[1] as f64]),
        };
        let (d, _) = median(a.repeat, || {
            let (crop, _) = norm_crop_size(&cond.arcface_crop, &kps, size);
            Ok(face.recognizer.normed_embedding(&crop)?)
        })?;
        table.row("ArcFace (align + recognizer)", d, format!("{size}² input"));
        let (d, px) = median(a.repeat, || Ok(clip_pixel_values(&cond.clip_crop, clip.config().image_size)?))?;
        table.row("CLIP processor (Pillow bicubic)", d, "224²".into());
        let (d, _) = median(a.repeat, || {
            let h = clip.penultimate(&px.to_device(&dev)?)?;
            dev.synchronize()?;
            Ok(h)
        })?;
        table.row("CLIP vision forward (hidden_states[-2])", d, format!("{:?}", dev));
        Ok(())
    })();
    if stand_ins {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    let per_photo: std::time::Duration =
        table.0.iter().filter(|(n, ..)| !n.starts_with("load") && !n.starts_with("write")).map(|(_, d, _)| *d).sum();
    table.row(
        "per photo, all stages",
        per_photo,
        if stand_ins { "stand-in face models".into() } else { "real face models".into() },
    );
    println!(
        "hyperlora {} encoder bench — {} threads, {}",
        env!("CARGO_PKG_VERSION"),
        rayon::current_num_threads(),
        if cfg!(feature = "cuda") { "cuda build" } else { "cpu build" }
    );
    table.print();
    Ok(())
}
