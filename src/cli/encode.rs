use crate::encode::write_debug;
use crate::face::analyser::{FaceOptions, FacePick};
use crate::front::device;
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Photos of one person (JPEG, PNG, WebP); each gives one row of features.
    #[arg(required = true, value_name = "PHOTO")]
    pub photos: Vec<PathBuf>,
    /// insightface antelopev2 folder (scrfd_10g_bnkps.onnx, 2d106det.onnx, glintr100.onnx).
    #[arg(long, env = "HYPERLORA_ANTELOPEV2", value_name = "DIR")]
    pub antelopev2: PathBuf,
    /// CLIP ViT-L/14 vision folder (config.json + model.safetensors).
    #[arg(long, env = "HYPERLORA_CLIP", value_name = "DIR")]
    pub clip: PathBuf,
    /// Features file to write (`arcface`, `clip`, `face_box`, `landmarks`, `kps`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Use the n-th face by detector score (0 = the highest, HyperLoRA's choice).
    #[arg(long, value_name = "N", conflicts_with = "face_box")]
    pub face: Option<usize>,
    /// Face box x1,y1,x2,y2 in photo pixels instead of detection: once for all photos or once per photo, in
    /// order. The ArcFace alignment then uses the landmarks' eyes, nose tip and mouth corners.
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2")]
    pub face_box: Vec<String>,
    /// Convert the CLIP crop to grey (the official node's `grayscale`).
    #[arg(long)]
    pub grayscale: bool,
    /// Keep the photo's background around the face (the official node's `remove_background=False`).
    #[arg(long)]
    pub keep_background: bool,
    /// Also encode each photo's Base condition (the face blurred out; spec §3.3) as `clip_base`, for a HyperLoRA
    /// variant with the Base branch. The released variants have none: `hyperlora identity` then refuses the file.
    #[arg(long)]
    pub base: bool,
    /// Also save each photo's cutout, CLIP crop, ArcFace crop and aligned face as PNGs here.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Option<PathBuf>,
    /// `cpu`, or `cuda` / `cuda:N` (CLIP runs there; the ONNX face models run on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

/// Parse "x1,y1,x2,y2".
pub fn parse_box(s: &str) -> anyhow::Result<[f64; 4]> {
    let v: Vec<f64> = s
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--box `{s}`: expected four numbers x1,y1,x2,y2"))?;
    <[f64; 4]>::try_from(v).map_err(|_| anyhow::anyhow!("--box `{s}`: expected four numbers x1,y1,x2,y2"))
}

/// One face choice per photo: `--box` given once for all photos or once per photo, else `--face N`, else the best.
pub fn face_picks(boxes: &[String], photos: usize, face: Option<usize>) -> anyhow::Result<Vec<FacePick>> {
    let boxes = boxes.iter().map(|s| parse_box(s)).collect::<anyhow::Result<Vec<_>>>()?;
    if boxes.len() > 1 && boxes.len() != photos {
        anyhow::bail!("{} boxes for {photos} photos: give --box once for all photos or once per photo", boxes.len());
    }
    Ok((0..photos)
        .map(|i| match (boxes.get(i).or(boxes.first()), face) {
            (Some(b), _) => FacePick::Box(*b),
            (None, Some(n)) => FacePick::Index(n),
            (None, None) => FacePick::Best,
        })
        .collect())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    // refuse before the (slow) encoding, not only when writing
    crate::files::output::refuse_existing(&a.out, a.force)?;
    let picks = face_picks(&a.face_box, a.photos.len(), a.face)?;
    let paths = crate::session::ModelPaths {
        clip: Some(a.clip.clone()),
        antelopev2: Some(a.antelopev2.clone()),
        ..Default::default()
    };
    let opts = crate::session::SessionOptions { paths, device: device(&a.device)?, dtype: candle_core::DType::F32 };
    let mut session = crate::session::Session::new(opts, std::sync::Arc::new(|_: &crate::session::Event| {}));
    let mut done = Vec::new();
    for (i, photo) in a.photos.iter().enumerate() {
        let opts = FaceOptions { pick: picks[i], remove_background: !a.keep_background, grayscale: a.grayscale };
        let e = session
            .encode_photo(&crate::session::PhotoSpec { path: photo.clone(), options: opts, base: a.base })
            .with_context(|| format!("encoding {}", photo.display()))?;
        let times: Vec<String> =
            e.timings().iter().map(|(k, d)| format!("{k} {:.0} ms", d.as_secs_f64() * 1e3)).collect();
        println!("{}: {} ({})", photo.display(), e.face.describe(), times.join(", "));
        if let Some(dir) = &a.debug_dir {
            let stem =
                format!("{i:02}_{}", photo.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            for p in write_debug(&e, dir, &stem, a.force)? {
                println!("  saved {}", p.display());
            }
        }
        done.push((e, opts));
    }
    let opts = done[0].1;
    let encoded: Vec<_> = done.into_iter().map(|(e, _)| e).collect();
    session.save_features(&encoded, &opts, &a.out, a.force)?;
    println!("{} photo(s) → {}", encoded.len(), a.out.display());
    Ok(())
}
