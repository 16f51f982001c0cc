//! Previews in a real terminal: xterm as a VT340 (sixel) under Xvfb, with xterm's defaults — the user's path, no
//! override. `.ci/run` installs Xvfb, xterm and ImageMagick's `import` as it installs tmux.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bounding box (width, height) of the colourful pixels (the drawn image; xterm's text is black on white).
fn drawn_box(png: &Path) -> (u32, u32) {
    let img = image::open(png).unwrap().to_rgb8();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        let (lo, hi) = (p.0.iter().min().unwrap(), p.0.iter().max().unwrap());
        if hi - lo > 40 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    assert!(x1 >= x0 && y1 >= y0, "no image was drawn");
    (x1 - x0 + 1, y1 - y0 + 1)
}

/// `show` in `run` on xterm -ti vt340 (sixel): a square image is drawn square (it was 1.25–1.75× too wide: viuer
/// draws a sixel cell as 6×12 pixels and stretched the image to the cells it was given).
#[test]
fn xterm_sixel_keeps_the_aspect_ratio() {
    for tool in ["Xvfb", "xterm", "import"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        assert!(found.status.success(), "{tool} is not installed (.ci/run installs xvfb, xterm and imagemagick)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let display = format!(":{}", 40 + std::process::id() % 200);
    let socket = format!("/tmp/.X11-unix/X{}", &display[1..]);
    let _x = Killed(
        Command::new("Xvfb")
            .args([display.as_str(), "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("Xvfb start", Duration::from_secs(10), || Path::new(&socket).exists());
    let script = tmp.path().join("show.rhai");
    std::fs::write(
        &script,
        "let img = generate(\"a photo\", #{ steps: 2, width: 128, height: 128, seed: 1 });\nshow(img);\n",
    )
    .unwrap();
    let done = tmp.path().join("done");
    // stdout is the terminal (the preview's default path: drawn because it is a terminal); stderr goes to a log
    let cmd = format!(
        "{} run --demo {} 2> {}; touch {}",
        env!("CARGO_BIN_EXE_hyperlora"),
        script.display(),
        tmp.path().join("log").display(),
        done.display()
    );
    let _term = Killed(
        Command::new("xterm")
            .args(["-ti", "vt340", "-geometry", "100x40+0+0", "-hold", "-e", "sh", "-c", &cmd])
            .env("DISPLAY", &display)
            .env("HYPERLORA_DEMO_DIR", crate::common::demo_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the recipe", Duration::from_secs(120), || done.exists());
    std::thread::sleep(Duration::from_millis(800));
    let shot = tmp.path().join("shot.png");
    let st = Command::new("import").args(["-display", &display, "-window", "root"]).arg(&shot).status().unwrap();
    assert!(st.success());
    let log = std::fs::read_to_string(tmp.path().join("log")).unwrap_or_default();
    let (w, h) = drawn_box(&shot);
    let aspect = w as f64 / h as f64;
    assert!(w > 100 && h > 100, "drawn {w}×{h} px\n{log}");
    assert!((aspect - 1.0).abs() < 0.05, "a square image drawn {w}×{h} px (aspect {aspect:.3})\n{log}");
}
