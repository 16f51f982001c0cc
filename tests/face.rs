//! Face geometry against insightface/OpenCV references (fixture README §3): alignment, letterbox, SCRFD decoding.
mod common;
use common::*;
use hyperlora::face::align::{norm_crop, similarity, warp_affine_f32, ARCFACE_TEMPLATE};
use hyperlora::face::scrfd::{decode, letterbox, RawHeads};
use hyperlora::vision::processor::Rgb8;
use hyperlora::weights::StFile;

fn png(rel: &str) -> Rgb8 {
    let (rgb, w, h, _) = hyperlora::png_meta::read_png(&fixture(rel)).unwrap();
    Rgb8::new(w, h, rgb).unwrap()
}

fn face_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("face/face_reference.json")).unwrap()).unwrap()
}

fn kps5() -> [[f64; 2]; 5] {
    let j = face_json();
    let mut k = [[0.0; 2]; 5];
    for (i, p) in j["kps5"].as_array().unwrap().iter().enumerate() {
        k[i] = [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()];
    }
    k
}

#[test]
fn arcface_alignment_matches_insightface() {
    let f = StFile::open(fixture("face/face_reference.safetensors")).unwrap();
    let m = similarity(&kps5(), &ARCFACE_TEMPLATE);
    let want: Vec<f32> = f.to_f32_vec("arcface_M").unwrap();
    for (i, w) in want.iter().enumerate() {
        assert!((m[i / 3][i % 3] - *w as f64).abs() < 1e-4, "M[{i}] {} vs {w}", m[i / 3][i % 3]);
    }
    let photo = png("photo.png");
    let float = warp_affine_f32(&photo, &m, 112, 112);
    let want = f.to_f32_vec("arcface_aligned_float_bilinear").unwrap();
    let worst = float.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-3, "float bilinear differs by {worst}");
    let (crop, _) = norm_crop(&photo, &kps5());
    let ocv = png("face/arcface_aligned_112.png");
    let worst = crop.data.iter().zip(&ocv.data).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "uint8 crop differs from OpenCV's by {worst} levels");
}

#[test]
fn letterbox_matches_opencv() {
    let img = png("face/scrfd_input.png");
    assert_eq!((img.width, img.height), (480, 360));
    let (boxed, scale) = letterbox(&img, 640);
    assert!((scale - 4.0 / 3.0).abs() < 1e-6);
    let want = png("face/scrfd_letterboxed_640.png");
    let diffs: Vec<i32> = boxed.data.iter().zip(&want.data).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
    let worst = *diffs.iter().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    assert!(worst <= 1 && mean < 0.1, "letterbox differs from cv2.resize: max {worst}, mean {mean}");
}

#[test]
fn scrfd_decoding_matches_insightface() {
    let f = StFile::open(fixture("face/scrfd_raw_outputs.safetensors")).unwrap();
    let get = |k: &str| f.to_f32_vec(k).unwrap();
    let raw = RawHeads {
        scores: [get("score_8"), get("score_16"), get("score_32")],
        boxes: [get("bbox_8"), get("bbox_16"), get("bbox_32")],
        kps: [get("kps_8"), get("kps_16"), get("kps_32")],
    };
    let faces = decode(&raw, 640, 4.0 / 3.0, 0.5, 0.4).unwrap();
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("face/scrfd_expected.json")).unwrap()).unwrap();
    let boxes = exp["detections_xyxy_score"].as_array().unwrap();
    let kps = exp["detections_kps"].as_array().unwrap();
    assert_eq!(faces.len(), boxes.len());
    for (i, (face, b)) in faces.iter().zip(boxes).enumerate() {
        for j in 0..4 {
            assert!((face.bbox[j] - b[j].as_f64().unwrap() as f32).abs() < 1e-3, "face {i} box[{j}]: {:?} vs {b}", face.bbox);
        }
        assert!((face.score - b[4].as_f64().unwrap() as f32).abs() < 1e-6, "face {i} score");
        for p in 0..5 {
            for c in 0..2 {
                assert!((face.kps[p][c] - kps[i][p][c].as_f64().unwrap() as f32).abs() < 1e-3, "face {i} kps[{p}][{c}]");
            }
        }
    }
    // the wrong det size for these heads is an error, not a misread
    assert!(decode(&raw, 512, 1.0, 0.5, 0.4).is_err());
}

#[test]
fn landmark_crop_and_decoding_match_insightface() {
    use hyperlora::face::landmark::{crop, decode};
    let f = StFile::open(fixture("face/face_reference.safetensors")).unwrap();
    let b = f.to_f32_vec("landmark106_bbox").unwrap();
    let bbox = [b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64];
    let (input, m) = crop(&png("photo.png"), bbox);
    let want_m = f.to_f32_vec("landmark106_M").unwrap();
    for (i, w) in want_m.iter().enumerate() {
        assert!((m[i / 3][i % 3] - *w as f64).abs() < 1e-4, "M[{i}]");
    }
    let want = png("face/landmark106_input_192.png");
    let worst = input.data.iter().zip(&want.data).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "landmark crop differs from OpenCV's by {worst}");
    let pts = decode(&f.to_f32_vec("landmark106_raw_output").unwrap(), &m).unwrap();
    let dec = f.to_f32_vec("landmark106_decoded").unwrap();
    let truth = f.to_f32_vec("landmarks_106").unwrap();
    for (i, p) in pts.iter().enumerate() {
        for c in 0..2 {
            assert!((p[c] - dec[i * 2 + c] as f64).abs() < 1e-3, "landmark {i}: {p:?}");
            assert!((p[c] - truth[i * 2 + c] as f64).abs() < 1e-3, "landmark {i} vs the planted landmarks");
        }
    }
    assert!(decode(&[0.0; 10], &m).is_err());
}
