//! The TUI: layout with ratatui's TestBackend at 80×24 and 200×60 (and tiny sizes), key handling, and an
//! end-to-end run of the binary inside tmux on the demo set (type a script, see progress, a halfblock preview
//! and the saved path, cancel a long job with Ctrl-C and keep working).
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hyperlora::session::Image;
use hyperlora::tui::app::{Action, App, Job, LineKind, Msg, Value};
use hyperlora::tui::ui::draw;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn image(path: Option<&str>) -> Image {
    let (w, h) = (64, 48);
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i % 256) as u8, 128, 30]).collect();
    Image {
        rgb: Arc::new(rgb),
        width: w,
        height: h,
        seed: 7,
        prompt: "p".into(),
        settings: vec![],
        path: path.map(Into::into),
    }
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
}

fn busy_app() -> App {
    let mut app = App::new("cpu".into());
    app.on_msg(Msg::Out(hyperlora::script::Out::Text("hello from the script".into())));
    let img = image(Some("/out/astro.png"));
    app.on_msg(Msg::Done {
        code: "let img = generate(\"x\")".into(),
        result: Ok(String::new()),
        vars: vec![
            Value { name: "me".into(), kind: "Identity".into(), text: "identity abc — 1 photo".into(), image: None },
            Value { name: "img".into(), kind: "Image".into(), text: img.summary(), image: Some(img) },
        ],
        cancelled: false,
    });
    app.on_msg(Msg::Done {
        code: "nope".into(),
        result: Err("input:1:1: Variable not found: nope".into()),
        vars: app.values.clone(),
        cancelled: false,
    });
    app.job =
        Some(Job { code: "generate".into(), started: Instant::now(), step: 3, total: 20, elapsed: 1.5, train: None });
    app.models = vec!["sdxl".into(), "hyperlora".into()];
    app
}

#[test]
fn layout_at_80x24_and_200x60() {
    let app = busy_app();
    for (w, h) in [(80, 24), (200, 60)] {
        let s = screen(&app, w, h);
        for want in [
            "output",
            "values",
            "preview",
            "hl>",
            "hello from the script",
            "Variable not found",
            "step 3/20",
            "2.00 it/s",
            "models: sdxl, hyperlora",
            "saved: /out/astro.png",
            "me ",
            "img ",
        ] {
            assert!(s.contains(want), "{w}×{h}: `{want}` not on screen:\n{s}");
        }
        assert!(s.contains('▀'), "{w}×{h}: no halfblock preview:\n{s}");
        assert_eq!(s.lines().count(), h as usize);
    }
    // a running job's latents replace the preview until it ends
    let mut app = busy_app();
    app.on_msg(Msg::Event(hyperlora::session::Event::Preview { step: 5, total: 20, image: image(None) }));
    assert!(screen(&app, 80, 24).contains("latents, step 5/20"));
    app.on_msg(Msg::Done { code: "x".into(), result: Ok(String::new()), vars: app.values.clone(), cancelled: false });
    assert!(!screen(&app, 80, 24).contains("latents"));
    // the help overlay lists the API
    let mut app = busy_app();
    app.help = true;
    let s = screen(&app, 200, 60);
    assert!(s.contains("face_score") && s.contains(":save-session"), "{s}");
    // preview off still names the saved file
    let mut app = busy_app();
    app.preview = false;
    assert!(screen(&app, 80, 24).contains("preview off"));
}

#[test]
fn graphics_protocols_encode_the_preview() {
    use hyperlora::tui::app::Graphics;
    use ratatui_image::picker::{Picker, ProtocolType};
    for (proto, marker) in
        [(ProtocolType::Kitty, "\x1b_G"), (ProtocolType::Sixel, "\x1bP"), (ProtocolType::Iterm2, "\x1b]1337;File=")]
    {
        let mut app = busy_app();
        let mut picker = Picker::from_fontsize((10, 20));
        picker.set_protocol_type(proto);
        app.graphics = Some(Graphics::new(picker));
        let s = screen(&app, 120, 40);
        assert!(s.contains(marker), "{proto:?}: no {marker:?} in the frame");
        assert!(s.contains("saved: /out/astro.png"), "the path stays beside the image");
        assert!(!s.contains('▀'), "{proto:?}: halfblocks drawn as well");
        // the encoding is kept while the image stays the same
        let first = app.graphics.as_ref().unwrap().state.borrow().as_ref().map(|(k, _)| *k);
        let _ = screen(&app, 120, 40);
        assert_eq!(first, app.graphics.as_ref().unwrap().state.borrow().as_ref().map(|(k, _)| *k));
    }
}

#[test]
fn tiny_and_odd_sizes_do_not_panic() {
    let mut app = busy_app();
    app.input = "let a = [\n  1,\n  2,\n  3,\n  4,\n  5".into();
    app.cursor = app.input.len();
    for (w, h) in [(1, 1), (9, 4), (10, 5), (20, 6), (33, 9), (80, 7), (300, 12), (40, 100)] {
        let s = screen(&app, w, h);
        assert_eq!(s.lines().count(), h as usize, "{w}×{h}");
        assert!(s.lines().all(|l| l.chars().count() == w as usize), "{w}×{h}: a row of another width");
        // from a usable size up, the input (scrolled to its cursor) and the status bar show
        if w >= 33 && h >= 9 {
            assert!(s.contains("5") && s.contains("step 3/20"), "{w}×{h}:\n{s}");
        }
    }
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn typed(app: &mut App, s: &str) {
    for ch in s.chars() {
        app.on_key(key(KeyCode::Char(ch)), &[]);
    }
}

#[test]
fn keys_edit_submit_recall_and_cancel() {
    let mut app = App::new("cpu".into());
    typed(&mut app, "for t in [1, 2] {");
    assert_eq!(app.on_key(key(KeyCode::Enter), &[]), Action::None, "open brackets continue on a new line");
    typed(&mut app, " print(t) }");
    assert_eq!(app.on_key(key(KeyCode::Enter), &[]), Action::Submit("for t in [1, 2] {\n print(t) }".into()));
    assert!(app.input.is_empty());
    assert!(app.log.iter().any(|(k, l)| *k == LineKind::Input && l.contains("for t in")));
    // history
    typed(&mut app, "1 + 1");
    app.on_key(key(KeyCode::Enter), &[]);
    app.on_key(key(KeyCode::Up), &[]);
    assert_eq!(app.input, "1 + 1");
    app.on_key(key(KeyCode::Up), &[]);
    assert!(app.input.starts_with("for t"));
    app.on_key(key(KeyCode::Down), &[]);
    app.on_key(key(KeyCode::Down), &[]);
    assert!(app.input.is_empty());
    // editing keys
    typed(&mut app, "abcé");
    app.on_key(key(KeyCode::Backspace), &[]);
    app.on_key(key(KeyCode::Left), &[]);
    app.on_key(key(KeyCode::Delete), &[]);
    assert_eq!(app.input, "ab");
    // completion: one match completes, several list and complete their common prefix
    app.input.clear();
    app.cursor = 0;
    typed(&mut app, "simi");
    app.on_key(key(KeyCode::Tab), &["similarity".into(), "slider".into()]);
    assert_eq!(app.input, "similarity");
    app.input = "z".into();
    app.cursor = 1;
    app.on_key(key(KeyCode::Tab), &["zeta".into(), "zeta_2".into(), "zap".into()]);
    assert_eq!(app.completions.len(), 3);
    // API names complete too, with the variables in scope
    app.input = "sim".into();
    app.cursor = 3;
    app.on_key(key(KeyCode::Tab), &["simple".into()]);
    assert_eq!(app.completions, ["similarity", "similarity_by_module", "simple"]);
    // Ctrl-C: cancels a running job, else clears the line; Ctrl-D quits on an empty line
    app.job = Some(Job { code: "x".into(), started: Instant::now(), step: 0, total: 0, elapsed: 0.0, train: None });
    assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &[]), Action::Cancel);
    typed(&mut app, "2");
    assert_eq!(app.on_key(key(KeyCode::Enter), &[]), Action::None, "no second job while one runs");
    app.job = None;
    assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &[]), Action::None);
    assert!(app.input.is_empty());
    assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('d'), KeyModifiers::CONTROL), &[]), Action::Quit);
    // F1 opens help; Esc closes it
    app.on_key(key(KeyCode::F(1)), &[]);
    assert!(app.help);
    app.on_key(key(KeyCode::Esc), &[]);
    assert!(!app.help);
}

/// tmux must be there (CI installs it): this test drives the real binary in a real terminal.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let o = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux is needed for this test (apt-get install tmux)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "hl"])
    }
    fn wait_for(&self, what: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "`{what}` did not appear within {secs} s:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn line(&self, text: &str) {
        self.cmd(&["send-keys", "-t", "hl", "-l", text]);
        self.cmd(&["send-keys", "-t", "hl", "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.0).arg("kill-server").output();
    }
}

#[test]
fn end_to_end_in_tmux() {
    let demo = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = Tmux(format!("hyperlora-test-{}", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_hyperlora");
    // the default path, nothing overridden: the start-up query goes to tmux (detached: no outer terminal), which
    // answers DA1 and the status report itself; halfblocks result, and capture-pane shows them as text
    let cmd = format!("env -u HYPERLORA_GRAPHICS HYPERLORA_DEMO_DIR={} {bin} --demo", demo.path().display());
    t.cmd(&["new-session", "-d", "-s", "hl", "-x", "120", "-y", "40", &cmd]);
    // five lines typed one every 1.5 s from the moment it starts (the report: at most one of them ran)
    for i in 1..=5 {
        t.cmd(&["send-keys", "-t", "hl", "-l", &format!("{i} + 40")]);
        t.cmd(&["send-keys", "-t", "hl", "Enter"]);
        std::thread::sleep(std::time::Duration::from_millis(if i == 1 { 100 } else { 1500 }));
    }
    for i in 1..=5 {
        t.wait_for(&format!("│{}", 40 + i), 30);
    }
    t.wait_for("preview halfblocks", 5);
    t.line("let me = identity(#{ path: demo_photo, box: demo_box })");
    t.wait_for("me Identity", 30);
    let png = out.path().join("a.png");
    t.line(&format!(
        "let img = generate(\"portrait\", #{{ lora: lora(me, 0.85), seed: 7, steps: 4, width: 128, height: 128 }}); save(img, \"{}\"); show(img)",
        png.display()
    ));
    let s = t.wait_for("saved: ", 60);
    assert!(s.contains('▀'), "no halfblock preview:\n{s}");
    assert!(png.is_file());
    // a long job shows progress and stops on Ctrl-C; the session and its values stay
    t.line("let big = generate(\"x\", #{ steps: 999, width: 1024, height: 1024 })");
    t.wait_for("job: step", 60);
    t.cmd(&["send-keys", "-t", "hl", "C-c"]);
    t.wait_for("cancelled", 30);
    t.line("me.photos + 41");
    t.wait_for("│42", 30);
    t.cmd(&["send-keys", "-t", "hl", "C-d"]);
}

/// A training job's status line carries its loss and learning rate beside the step and rate.
#[test]
fn the_status_bar_shows_a_training_steps_loss_and_lr() {
    let mut app = busy_app();
    let e = hyperlora::session::Event::Train { step: 7, total: 50, first: 1, loss: 0.123456, lr: 0.01, elapsed: 3.5 };
    app.on_msg(Msg::Event(e));
    let s = screen(&app, 120, 40);
    assert!(s.contains("step 7/50 loss 0.12346 lr 1.00e-2 2.00 it/s"), "{s}");
}

#[test]
fn a_plot_is_drawn_as_a_chart_in_the_preview() {
    let mut app = busy_app();
    app.job = None;
    let p = hyperlora::render::plot::Plot::new(
        &[0.0, 0.5, 1.0],
        &[0.2, 0.9, 0.4],
        "score by strength",
        "strength",
        "score",
    )
    .unwrap();
    app.on_msg(Msg::Out(hyperlora::script::Out::Plot(p)));
    let s = screen(&app, 120, 40);
    assert!(s.contains("plot: score by strength (3 points)"), "{s}");
    assert!(s.contains("0.900") && s.contains("0.200") && s.contains("strength"), "axis labels missing:\n{s}");
    assert!(s.chars().any(|c| ('\u{2800}'..='\u{28ff}').contains(&c)), "no braille line drawn:\n{s}");
    // showing an image replaces the plot
    app.on_msg(Msg::Out(hyperlora::script::Out::Image(image(Some("/out/b.png")))));
    assert!(screen(&app, 120, 40).contains("saved: /out/b.png"));
}

/// The input box: a line longer than the box scrolls sideways so its end (where the cursor is) shows; Ctrl-U clears
/// it; a line entered while a job runs is queued and the box emptied, never left for the next keys.
#[test]
fn the_input_scrolls_clears_and_queues() {
    let mut app = App::new("cpu".into());
    let long: String = (0..115).map(|i| char::from(b'a' + (i % 26) as u8)).collect::<String>() + "END";
    for c in long.chars() {
        app.on_key(key(KeyCode::Char(c)), &[]);
    }
    let s = screen(&app, 80, 24);
    let input_row = s.lines().rev().nth(2).unwrap();
    assert!(input_row.contains("END"), "the end of the line is hidden:\n{s}");
    app.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL), &[]);
    assert!(app.input.is_empty() && app.cursor == 0);
    // while a job runs: queued, and the box is empty again
    app.job = Some(Job { code: "x".into(), started: Instant::now(), step: 0, total: 0, elapsed: 0.0, train: None });
    for c in "1 + 1".chars() {
        app.on_key(key(KeyCode::Char(c)), &[]);
    }
    assert_eq!(app.on_key(key(KeyCode::Enter), &[]), Action::None);
    assert!(app.input.is_empty(), "the line was left in the box");
    assert_eq!(app.queued.iter().collect::<Vec<_>>(), vec!["1 + 1"]);
    assert!(screen(&app, 80, 24).contains("queued (1 waiting)"));
}

/// The values pane says how many values lie below it; the status bar follows the resident models.
#[test]
fn values_pane_counts_what_it_hides_and_status_follows_unload() {
    let mut app = App::new("cpu".into());
    app.values = (0..30)
        .map(|i| Value { name: format!("v{i}"), kind: "i64".into(), text: i.to_string(), image: None })
        .collect();
    let s = screen(&app, 80, 24);
    assert!(s.contains("+") && s.contains("more"), "{s}");
    app.on_msg(Msg::Models(vec!["sdxl".into(), "hyperlora".into()]));
    assert!(screen(&app, 120, 30).contains("models: sdxl, hyperlora"));
    app.on_msg(Msg::Models(vec!["hyperlora".into()]));
    let s = screen(&app, 120, 30);
    assert!(s.contains("models: hyperlora") && !s.contains("sdxl, hyperlora"), "{s}");
}
