//! The antelopev2 I/O signatures through tract (pure Rust) against onnxruntime outputs (fixture README §6).
use crate::common::*;
use hyperlora::face::onnx::{ArcFace, Scrfd};
use hyperlora::face::scrfd::{decode, letterbox};
use hyperlora::pixels::Rgb8;
use hyperlora::weights::StFile;

fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        // NaN beats every number, so a NaN anywhere fails the comparison
        .fold((0, 0f32), |m, (i, d)| {
            if m.1.is_nan() {
                m
            } else if d.is_nan() || d > m.1 {
                (i, d)
            } else {
                m
            }
        });
    assert!(d <= tol, "{name}: max |Δ| {d:.3e} at {i} > {tol:.0e}");
}

#[test]
fn scrfd_tiny_matches_onnxruntime_and_insightface() {
    let det = Scrfd::load(&fixture("onnx-tiny/scrfd_tiny.onnx")).unwrap();
    let (rgb, w, h, _) = hyperlora::files::png_meta::read_png(&fixture("face/scrfd_input.png")).unwrap();
    let img = Rgb8::new(w, h, rgb).unwrap();
    let (boxed, scale) = letterbox(&img, 256);
    let r = StFile::open(fixture("onnx-tiny/scrfd_tiny_reference.safetensors")).unwrap();
    // our letterbox + blob is the reference input within OpenCV's ±1 level (1/128 after normalisation)
    close("input blob", &hyperlora::face::scrfd::blob(&boxed), &r.to_f32_vec("input").unwrap(), 1.0 / 128.0 + 1e-6);
    // the network on the reference input itself
    let heads = det.heads_from_blob(r.to_f32_vec("input").unwrap(), 256).unwrap();
    for (i, name) in ["score_8", "score_16", "score_32"].iter().enumerate() {
        close(name, &heads.scores[i], &r.to_f32_vec(&format!("output.{name}")).unwrap(), 1e-4);
    }
    for (i, name) in ["bbox_8", "bbox_16", "bbox_32"].iter().enumerate() {
        close(name, &heads.boxes[i], &r.to_f32_vec(&format!("output.{name}")).unwrap(), 1e-4);
    }
    for (i, name) in ["kps_8", "kps_16", "kps_32"].iter().enumerate() {
        close(name, &heads.kps[i], &r.to_f32_vec(&format!("output.{name}")).unwrap(), 1e-4);
    }
    let faces = decode(&heads, 256, scale, 0.5, 0.4).unwrap();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("onnx-tiny/scrfd_tiny_expected.json")).unwrap()).unwrap();
    let want = exp["detections_xyxy_score"].as_array().unwrap();
    let want_kps = exp["detections_kps"].as_array().unwrap();
    assert_eq!(faces.len(), want.len());
    for (i, (f, w)) in faces.iter().zip(want).enumerate() {
        for j in 0..4 {
            // the fixture README's tolerance: 1e-3 px
            assert!((f.bbox[j] - w[j].as_f64().unwrap() as f32).abs() <= 1e-3, "{:?} vs {w}", f.bbox);
        }
        // the scores too (they order the faces and decide the threshold), and the five keypoints
        let score = w[4].as_f64().unwrap() as f32;
        assert!((f.score - score).abs() < 1e-4, "face {i}: score {} vs {score}", f.score);
        for (k, p) in want_kps[i].as_array().unwrap().iter().enumerate() {
            for c in 0..2 {
                let v = p[c].as_f64().unwrap() as f32;
                assert!((f.kps[k][c] - v).abs() <= 1e-3, "face {i} keypoint {k}: {:?} vs {p}", f.kps[k]);
            }
        }
    }
}

#[test]
fn arcface_tiny_matches_onnxruntime() {
    let m = ArcFace::load(&fixture("onnx-tiny/arcface_tiny.onnx")).unwrap();
    assert_eq!((m.input_size, m.mean, m.std), (112, 127.5, 127.5), "insightface picks 127.5/127.5 for this graph");
    let r = StFile::open(fixture("onnx-tiny/arcface_tiny_reference.safetensors")).unwrap();
    let e = m.embed_blob(r.to_f32_vec("input").unwrap()).unwrap();
    close("embedding", &e, &r.to_f32_vec("embedding").unwrap(), 1e-4);
    // photo → norm_crop → blob → embedding: OpenCV's uint8 crop is matched within ±1 level
    let (rgb, w, h, _) = hyperlora::files::png_meta::read_png(&fixture("face/arcface_aligned_112.png")).unwrap();
    let n = m.normed_embedding(&Rgb8::new(w, h, rgb).unwrap()).unwrap();
    close("normed_embedding", &n, &r.to_f32_vec("normed_embedding").unwrap(), 1e-4);
    let e = ArcFace::load(&fixture("onnx-tiny/scrfd_tiny.onnx")).err().unwrap().to_string();
    assert!(e.contains("not an ArcFace recognizer"), "{e}");
}

/// The multi-size retry: the first size that finds a face wins, coordinates stay the photo's, a border is
/// added when no size finds one, and finding none at all names the photo and the sizes.
#[test]
fn detection_retries_sizes_then_pads() {
    use hyperlora::face::onnx::DET_SIZES;
    let det = Scrfd::load(&fixture("onnx-tiny/scrfd_tiny.onnx")).unwrap();
    let (rgb, w, h, _) = hyperlora::files::png_meta::read_png(&fixture("face/scrfd_input.png")).unwrap();
    let img = Rgb8::new(w, h, rgb).unwrap();
    let found = det.detect_any_size(&img, 0.5, "scrfd_input.png").unwrap();
    assert_eq!(found.padding, 0);
    let first = DET_SIZES.iter().position(|&s| s == found.det_size).unwrap();
    for &s in &DET_SIZES[..first] {
        assert!(det.detect(&img, s, 0.5).unwrap().is_empty(), "size {s} found faces but was skipped");
    }
    assert_eq!(found.faces, det.detect(&img, found.det_size, 0.5).unwrap());
    // a threshold nothing passes: every size, then the padded photo, then an error naming both
    let e = det.detect_any_size(&img, 1.1, "scrfd_input.png").err().unwrap().to_string();
    assert!(
        e.contains("scrfd_input.png") && e.contains("[640, 512, 384, 256]") && e.contains("240-pixel border"),
        "{e}"
    );
}
