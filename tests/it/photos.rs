//! Photo decoding edge cases on the real fixture photo: formats, pixel types, EXIF orientation, corrupt files.
use crate::common::*;
use hyperlora::pixels::photo::load_photo;
use hyperlora::pixels::Rgb8;

fn photo() -> Rgb8 {
    load_photo(&fixture("photo.png")).unwrap()
}

fn mean_diff(a: &Rgb8, b: &Rgb8) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data.iter().zip(&b.data).map(|(x, y)| (*x as i32 - *y as i32).abs() as f64).sum::<f64>() / a.data.len() as f64
}

fn rgb_image(p: &Rgb8) -> image::RgbImage {
    image::RgbImage::from_raw(p.width as u32, p.height as u32, p.data.clone()).unwrap()
}

#[test]
fn formats_and_pixel_types() {
    let p = photo();
    assert_eq!((p.width, p.height), (512, 512));
    let (raw, _, _, _) = hyperlora::files::png_meta::read_png(&fixture("photo.png")).unwrap();
    assert_eq!(p.data, raw, "PNG pixels as stored");
    let d = tempfile::tempdir().unwrap();
    let rgb = rgb_image(&p);
    // lossless WebP, RGBA PNG and 16-bit PNG come back exactly; JPEG closely; grey as R = G = B
    let webp = d.path().join("a.webp");
    image::DynamicImage::ImageRgb8(rgb.clone()).save(&webp).unwrap();
    assert_eq!(load_photo(&webp).unwrap(), p);
    let rgba = d.path().join("rgba.png");
    image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8().save(&rgba).unwrap();
    assert_eq!(load_photo(&rgba).unwrap(), p);
    let deep = d.path().join("16.png");
    image::DynamicImage::ImageRgb8(rgb.clone()).to_rgb16().save(&deep).unwrap();
    assert_eq!(load_photo(&deep).unwrap(), p);
    let jpg = d.path().join("a.jpg");
    image::DynamicImage::ImageRgb8(rgb.clone()).save(&jpg).unwrap();
    assert!(mean_diff(&load_photo(&jpg).unwrap(), &p) < 4.0);
    let grey = d.path().join("grey.png");
    image::DynamicImage::ImageRgb8(rgb).to_luma8().save(&grey).unwrap();
    let g = load_photo(&grey).unwrap();
    assert!(g.data.chunks(3).all(|px| px[0] == px[1] && px[1] == px[2]));
    // the extension does not matter, the bytes do
    let renamed = d.path().join("actually_png.jpg");
    std::fs::copy(fixture("photo.png"), &renamed).unwrap();
    assert_eq!(load_photo(&renamed).unwrap(), p);
}

/// A JPEG whose EXIF says "rotate 90° clockwise" (orientation 6) is turned upright.
#[test]
fn exif_orientation_is_applied() {
    let (w, h) = (64u32, 32u32);
    // red on the left half, blue on the right
    let img =
        image::RgbImage::from_fn(
            w,
            h,
            |x, _| if x < w / 2 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
        );
    let mut jpg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
        .unwrap();
    // APP1 Exif segment with one IFD entry: Orientation (0x0112) = 6
    let mut app1 = vec![0xFF, 0xE1, 0x00, 34];
    app1.extend_from_slice(
        b"Exif\0\0II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00",
    );
    let mut with_exif = jpg[..2].to_vec();
    with_exif.extend_from_slice(&app1);
    with_exif.extend_from_slice(&jpg[2..]);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rotated.jpg");
    std::fs::write(&p, &with_exif).unwrap();
    let got = load_photo(&p).unwrap();
    assert_eq!((got.width, got.height), (32, 64), "orientation 6 swaps width and height");
    // after a clockwise quarter turn the left (red) half is on top
    let px = |x: usize, y: usize| &got.data[(y * got.width + x) * 3..(y * got.width + x) * 3 + 3];
    assert!(px(16, 8)[0] > 150 && px(16, 8)[2] < 100, "top should be red: {:?}", px(16, 8));
    assert!(px(16, 56)[2] > 150 && px(16, 56)[0] < 100, "bottom should be blue: {:?}", px(16, 56));
}

#[test]
fn corrupt_and_missing_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("photo.png")).unwrap();
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_photo(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.png") && e.contains("not a readable photo"), "{e}");
    let junk = d.path().join("junk.jpg");
    std::fs::write(&junk, b"this is not an image at all").unwrap();
    let e = load_photo(&junk).err().unwrap().to_string();
    assert!(e.contains("junk.jpg") && e.contains("unknown format"), "{e}");
    let e = load_photo(&d.path().join("missing.jpg")).err().unwrap().to_string();
    assert!(e.contains("missing.jpg") && e.contains("cannot read"), "{e}");
}
