//! HyperLoRA's ID condition (spec §3.2): the brow-to-chin landmark polygon as a soft mask, the face pasted on flat
//! grey (127), the 1.5× CLIP crop, and the 3× crop of the original photo for ArcFace re-detection. Pillow's
//! operations are reproduced: rounded crop boxes (halves to even), bicubic resizes, `GaussianBlur` as three
//! "extended box" passes per axis in 24-bit fixed point, mask compositing with Pillow's /255 rounding.
use crate::error::{Error, Result};
use crate::pixels::blur::{gaussian_blur, paste_masked};
use crate::pixels::Rgb8;

/// The outline landmarks: jaw contour through the chin, then both eyebrows. The spec calls them "41" but lists
/// these 43 indices; the fixture's outline centre and boxes are computed from all 43.
pub const OUTLINE: [usize; 43] = [
    1, 9, 10, 11, 12, 13, 14, 15, 16, 2, 3, 4, 5, 6, 7, 8, 0, 24, 23, 22, 21, 20, 19, 18, 32, 31, 30, 29, 28, 27, 26,
    25, 17, 101, 105, 104, 103, 102, 50, 51, 49, 48, 43,
];

/// Crop box (x0, y0, x1, y1) as Pillow rounds a float box.
pub fn round_box(b: [f64; 4]) -> [i64; 4] {
    b.map(|v| v.round_ties_even() as i64)
}

fn bbox(pts: &[[f64; 2]]) -> (f64, f64, f64, f64) {
    pts.iter().fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |(a, b, c, d), p| {
        (a.min(p[0]), b.min(p[1]), c.max(p[0]), d.max(p[1]))
    })
}

/// The outline points, their mean (cx, cy) and the crop half-size l = 0.8·max(w, h) of their bounding box.
fn outline(lm: &[[f64; 2]]) -> (Vec<[f64; 2]>, f64, f64, f64) {
    let pts: Vec<[f64; 2]> = OUTLINE.iter().map(|&i| lm[i]).collect();
    let n = pts.len() as f64;
    let (cx, cy) = (pts.iter().map(|p| p[0]).sum::<f64>() / n, pts.iter().map(|p| p[1]).sum::<f64>() / n);
    let (x0, y0, x1, y1) = bbox(&pts);
    (pts, cx, cy, 0.8 * (x1 - x0).max(y1 - y0))
}

/// `face_bbox` over all 106 landmarks: box centre shifted up by l/8, half-size l = 0.75·max(w, h).
fn face_frame(lm: &[[f64; 2]]) -> (f64, f64, f64) {
    let (x0, y0, x1, y1) = bbox(lm);
    let l = 0.75 * (x1 - x0).max(y1 - y0);
    ((x0 + x1) / 2.0, (y0 + y1) / 2.0 - 0.125 * l, l)
}

/// Fill a polygon with 255 on a black single-channel image (returned as grey RGB) the way Pillow's
/// `ImageDraw.polygon` lands on this fixture: vertices truncated to integers, integer scanlines that include
/// both ends of every edge (an edge ending on a scanline counts twice there, except at the bottom), spans from
/// the rounded left to the rounded right intersection, horizontal edges drawn as lines. Matches Pillow to
/// within a few edge pixels (10 of 5,934 on the fixture photo).
pub fn polygon_mask(width: usize, height: usize, pts: &[[f64; 2]]) -> Rgb8 {
    let mut mask = vec![0u8; width * height];
    let p: Vec<[f64; 2]> = pts.iter().map(|q| [q[0].trunc(), q[1].trunc()]).collect();
    let n = p.len();
    let mut span = |x0: f64, x1: f64, y: i64| {
        if y < 0 || y >= height as i64 {
            return;
        }
        let (a, b) = ((x0.round() as i64).max(0), (x1.round() as i64).min(width as i64 - 1));
        for x in a..=b {
            mask[y as usize * width + x as usize] = 255;
        }
    };
    // (x at ymin, ymin, ymax, dx/dy) for every non-horizontal edge
    let mut edges = Vec::new();
    for i in 0..n {
        let (a, b) = (p[i], p[(i + 1) % n]);
        if a[1] == b[1] {
            span(a[0].min(b[0]), a[0].max(b[0]), a[1] as i64);
            continue;
        }
        let (lo, hi) = if a[1] < b[1] { (a, b) } else { (b, a) };
        edges.push((lo[0], lo[1], hi[1], (hi[0] - lo[0]) / (hi[1] - lo[1])));
    }
    let ymin = p.iter().map(|q| q[1]).fold(f64::MAX, f64::min) as i64;
    let ymax = p.iter().map(|q| q[1]).fold(f64::MIN, f64::max) as i64;
    // only rows on the image matter: a polygon reaching far outside it costs nothing extra (this loop once ran
    // over a billion rows for a box far off the photo)
    for y in ymin.max(0)..=ymax.min(height as i64 - 1) {
        let yf = y as f64;
        let mut xs: Vec<f64> = Vec::new();
        for &(x0, y0, y1, dx) in &edges {
            if yf >= y0 && yf <= y1 {
                xs.push(x0 + (yf - y0) * dx);
            }
            if yf == y1 && y < ymax {
                if let Some(&last) = xs.last() {
                    xs.push(last);
                }
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks(2) {
            if let [a, b] = pair {
                span(*a, *b, y);
            }
        }
    }
    Rgb8 { width, height, data: mask.into_iter().flat_map(|v| [v, v, v]).collect() }
}

/// Spec §3.2 A–C for one photo.
/// Landmarks that span more than 4× the photo (or are not finite) are not a face on it: refused before crops of
/// that size are allocated and filled.
fn check_span(img: &Rgb8, lm: &[[f64; 2]]) -> Result<()> {
    let limit = 4.0 * img.width.max(img.height) as f64;
    let (lo, hi) = lm.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p[0].min(p[1])), hi.max(p[0].max(p[1]))));
    if lm.iter().flatten().any(|v| !v.is_finite()) || hi - lo > limit || lo < -limit || hi > 2.0 * limit {
        return Err(Error::InvalidValue(format!(
            "the face's landmarks span [{lo:.0}, {hi:.0}] on a {}×{} photo: not a face on it (a wrong box?)",
            img.width, img.height
        )));
    }
    Ok(())
}

/// Everything the ID branch derives from one photo and its 106 landmarks.
pub struct IdCondition {
    /// The photo with everything but the face replaced by grey (or the photo itself without background removal).
    pub face: Rgb8,
    /// The 1.5× face crop that goes to the CLIP processor.
    pub clip_crop: Rgb8,
    /// The 3× crop of the original photo, re-detected for the ArcFace embedding.
    pub arcface_crop: Rgb8,
    pub outline_box: [i64; 4],
    pub paste_position: (i64, i64),
    pub clip_box: [i64; 4],
    pub arcface_box: [i64; 4],
}

pub fn id_condition(img: &Rgb8, lm: &[[f64; 2]], remove_background: bool, grayscale: bool) -> Result<IdCondition> {
    check_span(img, lm)?;
    if lm.len() != 106 {
        return Err(Error::Mismatch(format!("the ID condition needs the 106 landmarks, got {}", lm.len())));
    }
    let (pts, cx, cy, l) = outline(lm);
    let outline_box = round_box([cx - l, cy - l, cx + l, cy + l]);
    let paste_position = ((cx - l).trunc() as i64, (cy - l).trunc() as i64);
    let face = if remove_background {
        let mask = polygon_mask(img.width, img.height, &pts);
        let [a, b, c, d] = outline_box;
        let crop = img.crop(a, b, c, d)?;
        let m = mask.crop(a, b, c, d)?;
        let m = gaussian_blur(&m.resize_bicubic(512, 512)?, 15.0).resize_bicubic(crop.width, crop.height)?;
        let mut canvas = Rgb8 { width: img.width, height: img.height, data: vec![127; img.width * img.height * 3] };
        paste_masked(&mut canvas, &crop, &m, paste_position.0, paste_position.1);
        canvas
    } else {
        img.clone()
    };
    let (cx, cy, l) = face_frame(lm);
    let clip_box = round_box([cx - l, cy - l, cx + l, cy + l]);
    let mut clip_crop = face.crop(clip_box[0], clip_box[1], clip_box[2], clip_box[3])?;
    if grayscale {
        // PIL "L": L = R·299/1000 + G·587/1000 + B·114/1000 (rounded), back to RGB by repetition
        for p in clip_crop.data.chunks_mut(3) {
            let v = ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8;
            p.fill(v);
        }
    }
    let l2 = 2.0 * l;
    let arcface_box = round_box([cx - l2, cy - l2, cx + l2, cy + l2]);
    let arcface_crop = img.crop(arcface_box[0], arcface_box[1], arcface_box[2], arcface_box[3])?;
    Ok(IdCondition { face, clip_crop, arcface_crop, outline_box, paste_position, clip_box, arcface_box })
}

/// The Base-branch condition (spec §3.3): the face region blurred beyond recognition and pasted back in place,
/// then an optional crop around the face. `lrtb` = (left, right, top, bottom) multiples of the half-size.
pub struct BaseCondition {
    pub image: Rgb8,
    /// Where the blurred face was pasted: (int(cx − l), int(cy − l)), truncated toward zero.
    pub paste_position: (i64, i64),
    /// The float crop box after the optional clamp, and as Pillow rounds it.
    pub crop_box: Option<[f64; 4]>,
    pub crop_box_rounded: Option<[i64; 4]>,
}

pub fn base_condition(
    img: &Rgb8,
    lm: &[[f64; 2]],
    crop: bool,
    lrtb: [f64; 4],
    safe_crop: bool,
) -> Result<BaseCondition> {
    if lm.len() != 106 {
        return Err(Error::Mismatch(format!("the Base condition needs the 106 landmarks, got {}", lm.len())));
    }
    check_span(img, lm)?;
    let (pts, cx, cy, l) = outline(lm);
    let [a, b, c, d] = round_box([cx - l, cy - l, cx + l, cy + l]);
    // the mask polygon is scaled by 1.4 about the centre; the crop box is not
    let scaled: Vec<[f64; 2]> = pts.iter().map(|p| [(p[0] - cx) * 1.4 + cx, (p[1] - cy) * 1.4 + cy]).collect();
    let mask = polygon_mask(img.width, img.height, &scaled).crop(a, b, c, d)?;
    let face = img.crop(a, b, c, d)?;
    let blurred = gaussian_blur(&face.resize_bicubic(512, 512)?, 45.0).resize_bicubic(face.width, face.height)?;
    let mask = gaussian_blur(&mask.resize_bicubic(512, 512)?, 15.0).resize_bicubic(face.width, face.height)?;
    let mut image = img.clone();
    let paste_position = ((cx - l).trunc() as i64, (cy - l).trunc() as i64);
    paste_masked(&mut image, &blurred, &mask, paste_position.0, paste_position.1);
    if !crop {
        return Ok(BaseCondition { image, paste_position, crop_box: None, crop_box_rounded: None });
    }
    let (fx, fy, l) = face_frame(lm);
    let [left, right, top, bottom] = lrtb;
    let mut bx = [fx - left * l, fy - top * l, fx + right * l, fy + bottom * l];
    if safe_crop {
        bx = [bx[0].max(0.0), bx[1].max(0.0), bx[2].min(img.width as f64), bx[3].min(img.height as f64)];
    }
    let r = round_box(bx);
    let image = image.crop(r[0], r[1], r[2], r[3])?;
    Ok(BaseCondition { image, paste_position, crop_box: Some(bx), crop_box_rounded: Some(r) })
}

/// Parse ComfyUI's `crop_scale_LRTB` string ("1,1,1,1").
pub fn parse_lrtb(s: &str) -> Result<[f64; 4]> {
    let v: Vec<f64> = s
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Mismatch(format!("crop_scale_LRTB `{s}`: expected four numbers like 1,1,1,1")))?;
    <[f64; 4]>::try_from(v)
        .map_err(|_| Error::Mismatch(format!("crop_scale_LRTB `{s}`: expected four numbers like 1,1,1,1")))
}
