//! Previews in real terminals under Xvfb — xterm as a VT340 (sixel) with xterm's defaults, and Debian's kitty — typed
//! into with xdotool, in the line REPL and in the TUI: the user's path, no override. `.ci/run` installs Xvfb, xterm,
//! kitty, ImageMagick's `import` and xdotool as it installs tmux.
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

/// An Xvfb display of its own (killed when the guard drops).
fn xvfb() -> (Killed, String) {
    for tool in ["Xvfb", "xterm", "import", "xdotool"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        assert!(found.status.success(), "{tool} is not installed (.ci/run installs xvfb, xterm, imagemagick, xdotool)");
    }
    // Xvfb picks a free display itself and writes its number once it takes connections (-displayfd): a number
    // chosen here could still be held by a server of an earlier run that is going away, and a terminal started on
    // it died with "Failed to open display"
    let mut x = Killed(
        Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(x.0.stdout.take().unwrap()), &mut line).unwrap();
    let n: u32 = line.trim().parse().unwrap_or_else(|_| panic!("Xvfb gave no display number: {line:?}"));
    let display = format!(":{n}");
    (x, display)
}

fn screenshot(display: &str, to: &Path) {
    let st = Command::new("import").args(["-display", display, "-window", "root"]).arg(to).status().unwrap();
    assert!(st.success(), "import failed");
}

/// xterm's 16 colours, in which the TUI draws its text, borders and status bar (bitmap fonts: no blended pixels).
const XTERM_PALETTE: [[u8; 3]; 16] = [
    [0, 0, 0],
    [205, 0, 0],
    [0, 205, 0],
    [205, 205, 0],
    [0, 0, 238],
    [205, 0, 205],
    [0, 205, 205],
    [229, 229, 229],
    [127, 127, 127],
    [255, 0, 0],
    [0, 255, 0],
    [255, 255, 0],
    [92, 92, 255],
    [255, 0, 255],
    [0, 255, 255],
    [255, 255, 255],
];

/// The bounding box (width, height) of the colourful pixels that are not xterm's own colours: the drawn image.
fn drawn_box(png: &Path) -> (u32, u32) {
    try_drawn_box(png).expect("no image was drawn")
}

fn try_drawn_box(png: &Path) -> Option<(u32, u32)> {
    let img = image::open(png).unwrap().to_rgb8();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        let (lo, hi) = (p.0.iter().min().unwrap(), p.0.iter().max().unwrap());
        if hi - lo > 40 && !XTERM_PALETTE.contains(&p.0) {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    (x1 >= x0 && y1 >= y0).then(|| (x1 - x0 + 1, y1 - y0 + 1))
}

/// `hyperlora ARGS` on the demo set in a terminal under Xvfb (`terminal`: its command line up to the program to
/// run), and `line` typed into its real window with xdotool, as a user types — once `ready` holds for a screenshot
/// (a fixed wait lost the keys on a loaded machine, before the window was mapped; `what` names the wait). A terminal
/// that exits first fails the test with its own output. Returns the guards and the display.
fn typed_into(
    tmp: &Path,
    terminal: &[&str],
    env: &[(&str, &str)],
    hyperlora: &[&str],
    what: &str,
    mut ready: impl FnMut(&image::RgbImage) -> bool,
    line: &str,
) -> (Killed, Killed, String) {
    let (x, display) = xvfb();
    let (program, args) = terminal.split_first().expect("a terminal");
    let log = tmp.join("terminal.log");
    let mut term = Killed(
        Command::new(program)
            .args(args)
            .arg(env!("CARGO_BIN_EXE_hyperlora"))
            .args(hyperlora)
            .envs(env.iter().copied())
            .env("DISPLAY", &display)
            .env("HYPERLORA_DEMO_DIR", crate::common::demo_dir())
            .env("HYPERLORA_HISTORY", tmp.join("history"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let shot = tmp.join("ready.png");
    wait_for(what, Duration::from_secs(90), || {
        if let Ok(Some(st)) = term.0.try_wait() {
            panic!("{program} exited ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        screenshot(&display, &shot);
        image::open(&shot).map(|i| ready(&i.to_rgb8())).unwrap_or(false)
    });
    let xdo = |args: &[&str]| {
        let st = Command::new("xdotool").args(args).env("DISPLAY", &display).status().unwrap();
        assert!(st.success(), "xdotool {args:?}");
    };
    // no window manager: the pointer over the window gives it the keyboard
    xdo(&["mousemove", "200", "200"]);
    xdo(&["type", "--delay", "15", line]);
    xdo(&["key", "Return"]);
    (x, term, display)
}

/// The drawn image's box once one larger than 40×40 px is on the screen, screenshot again after `settle`.
fn drawn_once_settled(display: &str, shot: &Path, settle: Duration, name: &str) -> (u32, u32) {
    let t = Instant::now();
    loop {
        screenshot(display, shot);
        if try_drawn_box(shot).is_some_and(|(w, h)| w > 40 && h > 40) {
            std::thread::sleep(settle);
            screenshot(display, shot);
            return drawn_box(shot);
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no image appeared in {name}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const SHOW_128: &str = "show(generate(\"a photo\", #{ steps: 2, width: 128, height: 128, seed: 1 }))";

/// `show` of a square 128² image typed into the line REPL (`hyperlora repl --demo`) in a terminal started by
/// `terminal` under Xvfb: the preview's default path. Checks that the drawn image is square within 5%; `name` goes
/// into the messages.
fn repl_show_is_square(name: &str, terminal: &[&str], env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    // typed once the window shows something (the REPL keeps lines typed before its prompt; X does not keep keys
    // sent before the window is mapped)
    let shows = |i: &image::RgbImage| i.pixels().filter(|p| p.0 != [0, 0, 0]).count() > 50;
    let (_x, _term, display) =
        typed_into(tmp.path(), terminal, env, &["repl", "--demo"], &format!("{name}'s window"), shows, SHOW_128);
    let (w, h) = drawn_once_settled(&display, &tmp.path().join("shot.png"), Duration::from_millis(1500), name);
    let aspect = w as f64 / h as f64;
    assert!(w > 100 && h > 100, "drawn {w}×{h} px in {name}");
    assert!((aspect - 1.0).abs() < 0.05, "a square image drawn {w}×{h} px in {name} (aspect {aspect:.3})");
}

/// `show` typed into the line REPL on xterm -ti vt340 (sixel): a square image is drawn square (it was 1.25–1.75× too
/// wide: viuer draws a sixel cell as 6×12 pixels and stretched the image to the cells it was given).
#[test]
fn xterm_sixel_keeps_the_aspect_ratio() {
    repl_show_is_square("xterm", &["xterm", "-ti", "vt340", "-geometry", "100x40+0+0", "-e"], &[]);
}

/// The TUI (`hyperlora --demo`) in a terminal under Xvfb, `line` typed once its status bar (`status_bar`, the
/// terminal's blue) is on the screen.
fn tui_typed(
    tmp: &Path,
    terminal: &[&str],
    env: &[(&str, &str)],
    status_bar: [u8; 3],
    line: &str,
) -> (Killed, Killed, String) {
    let up = |i: &image::RgbImage| i.pixels().any(|p| p.0 == status_bar);
    typed_into(tmp, terminal, env, &["--demo"], "the TUI's status bar", up, line)
}

/// The TUI on xterm -ti vt340: `show(img)` typed into the real window (xdotool) draws the square image square and
/// large in the preview pane (it was 78×91 px in a pane of about 345×290: ratatui-image assumed 10×20-pixel cells
/// where xterm, which does not answer `CSI 16 t`, has 6×13 ones — now taken from TIOCGWINSZ).
#[test]
fn xterm_tui_preview_keeps_the_aspect_ratio_and_fills_the_pane() {
    let tmp = tempfile::tempdir().unwrap();
    let (_x, _term, display) =
        tui_typed(tmp.path(), &["xterm", "-ti", "vt340", "-geometry", "120x40+0+0", "-e"], &[], [0, 0, 238], SHOW_128);
    let (w, h) = drawn_once_settled(&display, &tmp.path().join("tui.png"), Duration::from_millis(500), "the TUI");
    let aspect = w as f64 / h as f64;
    assert!((aspect - 1.0).abs() < 0.05, "a square image drawn {w}×{h} px in the TUI (aspect {aspect:.3})");
    assert!(w.min(h) > 150, "the image is {w}×{h} px: it should fill most of the preview pane");
}

/// `show` typed into the line REPL on Debian's kitty (0.26.5) under Xvfb, default path: a square image is drawn
/// square (it was 600×456 px: the cells given to kitty, which scales the image to them, assumed a 1:2 cell; now the
/// cells follow the terminal's cell size, from its CSI 16 t answer or TIOCGWINSZ).
#[test]
fn kitty_show_keeps_the_aspect_ratio() {
    let found = Command::new("sh").args(["-c", "command -v kitty"]).output().unwrap();
    assert!(found.status.success(), "kitty is not installed (.ci/run installs it)");
    // software GL under Xvfb
    repl_show_is_square("kitty", &["kitty", "--config", "NONE"], &[("LIBGL_ALWAYS_SOFTWARE", "1")]);
}

/// The TUI in Debian's kitty (0.26.5) under Xvfb, default path: kitty answers the graphics query, but its TUI
/// images need Unicode placeholders (kitty 0.28), which showed as a block of empty-box glyphs; the XTVERSION
/// answer sends it to halfblocks, which now sample by kitty's 9×20 cells (a 1:2 cell drew squares 10 % narrow).
/// A solid-colour square is shown, so each drawn pixel is known: the block of that colour must be square within
/// 5 %, solid (no glyph drawn over it), and fill the preview pane's limiting side, found by its border lines.
#[test]
fn kitty_tui_preview_keeps_the_aspect_ratio_with_no_placeholder_glyphs() {
    let found = Command::new("sh").args(["-c", "command -v kitty"]).output().unwrap();
    assert!(found.status.success(), "kitty is not installed (.ci/run installs it)");
    let tmp = tempfile::tempdir().unwrap();
    const ORANGE: [u8; 3] = [250, 120, 30];
    let square = tmp.path().join("square.png");
    image::RgbImage::from_pixel(128, 128, image::Rgb(ORANGE)).save(&square).unwrap();
    let (_x, _term, display) = tui_typed(
        tmp.path(),
        &["kitty", "--config", "NONE", "-o", "remember_window_size=no", "-o", "initial_window_width=1000"],
        &[("LIBGL_ALWAYS_SOFTWARE", "1")],
        // kitty's color4, the status bar's blue
        [13, 115, 204],
        &format!("show(load_image(\"{}\"))", square.display()),
    );
    let shot = tmp.path().join("tui.png");
    let is_orange = |p: &image::Rgb<u8>| p.0.iter().zip(ORANGE).all(|(a, b)| a.abs_diff(b) <= 2);
    let t = Instant::now();
    let img = loop {
        screenshot(&display, &shot);
        let img = image::open(&shot).unwrap().to_rgb8();
        if img.pixels().filter(|p| is_orange(p)).count() > 400 {
            std::thread::sleep(Duration::from_millis(500));
            screenshot(&display, &shot);
            break image::open(&shot).unwrap().to_rgb8();
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no image appeared in the TUI (screenshot {})", shot.display());
        std::thread::sleep(Duration::from_millis(500));
    };
    let (mut x0, mut y0, mut x1, mut y1, mut n) = (u32::MAX, u32::MAX, 0, 0, 0u64);
    for (x, y, p) in img.enumerate_pixels() {
        if is_orange(p) {
            (x0, y0, x1, y1, n) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y), n + 1);
        }
    }
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    let keep = tmp.keep();
    let at = format!("(screenshot kept at {})", keep.join("tui.png").display());
    let aspect = w as f64 / h as f64;
    assert!((aspect - 1.0).abs() < 0.05, "a square image drawn {w}×{h} px in kitty's TUI (aspect {aspect:.3}) {at}");
    let solid = n as f64 / (w as f64 * h as f64);
    assert!(solid > 0.995, "only {:.1} % of the image's box is the image: glyphs over it? {at}", solid * 100.0);
    // the pane: its border lines left, right and above (the nearest light-grey pixels, kitty's foreground, from the
    // image's centre); below, the first row with anything drawn (the "saved:" line under the image)
    let grey = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        p.iter().all(|&c| c > 150) && p.iter().max().unwrap() - p.iter().min().unwrap() < 20
    };
    let (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2);
    let left = (0..x0).rev().find(|&x| grey(x, cy)).unwrap_or(0);
    let right = (x1 + 1..img.width()).find(|&x| grey(x, cy)).unwrap_or(img.width());
    let top = (0..y0).rev().find(|&y| grey(cx, y)).unwrap_or(0);
    let bottom = (y1 + 1..img.height())
        .find(|&y| (left + 2..right - 1).any(|x| img.get_pixel(x, y).0.iter().any(|&c| c > 60)))
        .unwrap_or(img.height());
    let (pw, ph) = ((right - left) as f64, (bottom - top) as f64);
    let fill = (w as f64 / pw).max(h as f64 / ph);
    assert!(fill > 0.8, "the image is {w}×{h} px in a pane of about {pw}×{ph}: it should fill its limiting side {at}");
    std::fs::remove_dir_all(keep).unwrap();
}
