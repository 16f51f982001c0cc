//! Face geometry against insightface/OpenCV references (fixture README §3): alignment, letterbox, SCRFD decoding.
use crate::common::*;
use hyperlora::face::align::{norm_crop, similarity, ARCFACE_TEMPLATE};
use hyperlora::face::scrfd::{decode, letterbox, RawHeads};
use hyperlora::pixels::warp::warp_affine_f32;
use hyperlora::pixels::Rgb8;
use hyperlora::weights::StFile;

fn png(rel: &str) -> Rgb8 {
    let (rgb, w, h, _) = hyperlora::files::png_meta::read_png(&fixture(rel)).unwrap();
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
    // (f32::max would skip a NaN: this fold keeps it, so a NaN fails the comparison)
    let worst = float.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, d| {
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    });
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
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("face/scrfd_expected.json")).unwrap()).unwrap();
    let boxes = exp["detections_xyxy_score"].as_array().unwrap();
    let kps = exp["detections_kps"].as_array().unwrap();
    assert_eq!(faces.len(), boxes.len());
    for (i, (face, b)) in faces.iter().zip(boxes).enumerate() {
        for j in 0..4 {
            assert!(
                (face.bbox[j] - b[j].as_f64().unwrap() as f32).abs() < 1e-3,
                "face {i} box[{j}]: {:?} vs {b}",
                face.bbox
            );
        }
        assert!((face.score - b[4].as_f64().unwrap() as f32).abs() < 1e-6, "face {i} score");
        for p in 0..5 {
            for c in 0..2 {
                assert!(
                    (face.kps[p][c] - kps[i][p][c].as_f64().unwrap() as f32).abs() < 1e-3,
                    "face {i} kps[{p}][{c}]"
                );
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

fn landmarks() -> Vec<[f64; 2]> {
    let f = StFile::open(fixture("face/face_reference.safetensors")).unwrap();
    f.to_f32_vec("landmarks_106").unwrap();
    // f64 values from the JSON (the tensor is float64 too)
    face_json()["landmarks_106"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect()
}

fn level_diffs(a: &Rgb8, b: &Rgb8) -> (i32, f64) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let d: Vec<i32> = a.data.iter().zip(&b.data).map(|(x, y)| (*x as i32 - *y as i32).abs()).collect();
    (*d.iter().max().unwrap(), d.iter().sum::<i32>() as f64 / d.len() as f64)
}

/// Share of values more than 2 levels off (the fixture allows that only along the polygon edge).
fn over_2(a: &Rgb8, b: &Rgb8) -> f64 {
    a.data.iter().zip(&b.data).filter(|(x, y)| (**x as i32 - **y as i32).abs() > 2).count() as f64 / a.data.len() as f64
}

/// How many values of `a` are more than 2 levels from `b` at a pixel with no edge of the face within `r` pixels in
/// `b`: an edge pixel has both the grey background (the corner's colour) and the face in its neighbourhood.
fn off_edge(a: &Rgb8, b: &Rgb8, r: i64) -> usize {
    let (w, h) = (b.width as i64, b.height as i64);
    let grey = &b.data[0..3];
    let is_grey = |x: i64, y: i64| {
        let i = ((y * w + x) * 3) as usize;
        b.data[i..i + 3].iter().zip(grey).all(|(v, g)| (*v as i32 - *g as i32).abs() <= 2)
    };
    let mut count = 0;
    for y in 0..h {
        for x in 0..w {
            let i = ((y * w + x) * 3) as usize;
            if !(0..3).any(|c| (a.data[i + c] as i32 - b.data[i + c] as i32).abs() > 2) {
                continue;
            }
            let (mut bg, mut fg) = (false, false);
            for yy in (y - r).max(0)..=(y + r).min(h - 1) {
                for xx in (x - r).max(0)..=(x + r).min(w - 1) {
                    if is_grey(xx, yy) {
                        bg = true;
                    } else {
                        fg = true;
                    }
                }
            }
            if !(bg && fg) {
                count += 1;
            }
        }
    }
    count
}

#[test]
fn pillow_gaussian_blur_is_reproduced() {
    use hyperlora::pixels::blur::gaussian_blur;
    let (d, mean) =
        level_diffs(&gaussian_blur(&png("face/idcond_mask_512.png"), 15.0), &png("face/idcond_mask_512_blurred.png"));
    assert!(d <= 1, "GaussianBlur(15) differs from Pillow's by {d} levels (mean {mean})");
}

#[test]
fn id_condition_matches_the_official_node() {
    use hyperlora::face::cutout::id_condition;
    let j = face_json();
    let boxed = |k: &str| -> Vec<i64> { j[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect() };
    let c = id_condition(&png("photo.png"), &landmarks(), true, false).unwrap();
    assert_eq!(c.outline_box.to_vec(), boxed("outline_crop_box_rounded"));
    assert_eq!(vec![c.paste_position.0, c.paste_position.1], boxed("paste_position"));
    assert_eq!(c.clip_box.to_vec(), boxed("clip_box_rounded"));
    assert_eq!(c.arcface_box.to_vec(), boxed("arcface_redetect_box_rounded"));
    assert_eq!(c.arcface_crop, png("face/idcond_arcface_redetect_crop.png"));
    for (name, got, want) in [
        ("face on grey", &c.face, png("face/idcond_face_on_grey.png")),
        ("CLIP crop", &c.clip_crop, png("face/idcond_clip_crop.png")),
    ] {
        let (d, mean) = level_diffs(got, &want);
        let off = over_2(got, &want);
        let inner = off_edge(got, &want, 4);
        eprintln!("{name}: max {d}, mean {mean:.3}, {:.2}% beyond ±2, {inner} of them away from the edge", off * 100.0);
        // the fixture's tolerance: ±2 levels except along the face's edge (where the mask blends photo and grey)
        assert_eq!(inner, 0, "{name}: {inner} values beyond ±2 levels away from the face's edge (max {d})");
        assert!(
            off < 0.02 && mean < 0.5 && d <= 32,
            "{name}: {:.2}% beyond ±2 levels, max {d}, mean {mean:.3}",
            off * 100.0
        );
    }
    // the fixture's tolerance for the processor output: max-abs ≤ 0.05, mean-abs ≤ 0.005
    let px = hyperlora::vision::processor::clip_pixel_values(&c.clip_crop, 224).unwrap();
    let want = load("face/face_reference.safetensors", "idcond_clip_pixel_values");
    let diff = (px - &want).unwrap().abs().unwrap();
    let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
    let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max <= 0.05 && mean <= 0.005, "idcond_clip_pixel_values: max {max}, mean {mean}");
}

#[test]
fn outline_mask_matches_pillow_but_for_a_few_edge_pixels() {
    use hyperlora::face::cutout::{polygon_mask, OUTLINE};
    let want = png("face/idcond_mask_full.png");
    let lm = landmarks();
    let pts: Vec<[f64; 2]> = OUTLINE.iter().map(|&i| lm[i]).collect();
    let got = polygon_mask(want.width, want.height, &pts);
    let differing = got.data.iter().zip(&want.data).step_by(3).filter(|(a, b)| a != b).count();
    let area = want.data.iter().step_by(3).filter(|v| **v > 0).count();
    assert!(area > 5000 && differing <= 20, "{differing} of {area} mask pixels differ from Pillow's");
}

/// Base condition (spec §3.3; fixture README §1b): geometry exact, image within Pillow's rounding, and the CLIP
/// features of all three variants close to the stored ones (cosine > 0.999).
#[test]
fn base_condition_matches_the_official_node() {
    use hyperlora::face::cutout::{base_condition, parse_lrtb};
    use hyperlora::vision::processor::clip_pixel_values;
    let clip = hyperlora::vision::clip::load_clip_vision(
        &fixture("clip-vision-tiny"),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want_feats = load("hyperlora-tiny-base/base_inputs.safetensors", "base_clip_hidden_states_n3");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hyperlora-tiny-base/base_inputs.json")).unwrap())
            .unwrap();
    let photo = png("photo.png");
    for (i, v) in meta["variants"].as_array().unwrap().iter().enumerate() {
        let c = base_condition(
            &photo,
            &landmarks(),
            v["crop"].as_bool().unwrap(),
            parse_lrtb(v["crop_scale_LRTB"].as_str().unwrap()).unwrap(),
            v["safe_crop"].as_bool().unwrap(),
        )
        .unwrap();
        let size: Vec<usize> =
            v["output_size"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(vec![c.image.width, c.image.height], size, "variant {i}");
        let paste: Vec<i64> = v["paste_position"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(vec![c.paste_position.0, c.paste_position.1], paste, "variant {i}: paste position");
        if let Some(r) = v["crop_box_rounded"].as_array() {
            let r: Vec<i64> = r.iter().map(|x| x.as_i64().unwrap()).collect();
            assert_eq!(c.crop_box_rounded.unwrap().to_vec(), r, "variant {i}");
        }
        if i == 0 {
            let want = png("hyperlora-tiny-base/base_cond_default.png");
            let (d, mean) = level_diffs(&c.image, &want);
            let off = over_2(&c.image, &want);
            assert!(
                off < 0.02 && mean < 0.5 && d <= 32,
                "base_cond_default: {:.2}% beyond ±2 levels, max {d}, mean {mean:.3}",
                off * 100.0
            );
        }
        let got = clip.penultimate(&clip_pixel_values(&c.image, 224).unwrap()).unwrap().flatten_all().unwrap();
        let want = want_feats.get(i).unwrap().flatten_all().unwrap();
        let cos = (&got * &want).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            / (got.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap()
                * want.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap());
        assert!(cos > 0.999, "variant {i}: CLIP feature cosine {cos}");
    }
    assert!(parse_lrtb("1,1,1").is_err());
}
