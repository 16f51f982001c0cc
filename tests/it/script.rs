//! The Rhai layer on the demo set: values, operators, printing, error positions, the sandbox, no-overwrite
//! writes; and the `run`, `repl` and `demo` commands end to end, including the shipped recipes.
use hyperlora::script::{describe, Limits, Out, Script};
use hyperlora::session::{Event, ModelPaths, Session, SessionOptions};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

fn demo_dir() -> std::path::PathBuf {
    static DIR: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);
    let mut g = DIR.lock().unwrap();
    if g.is_none() {
        let t = tempfile::tempdir().unwrap();
        hyperlora::synthetic::demo::ensure(&t.path().join("demo")).unwrap();
        *g = Some(t);
    }
    g.as_ref().unwrap().path().join("demo")
}

fn script(limits: Limits) -> (Script, Arc<Mutex<Vec<String>>>) {
    let (d, _) = hyperlora::synthetic::demo::ensure(&demo_dir()).unwrap();
    let paths = ModelPaths {
        sdxl: Some(d.sdxl.clone()),
        sdxl_config: None,
        hyperlora: Some(d.hyperlora.clone()),
        clip: Some(d.clip.clone()),
        antelopev2: Some(d.antelopev2.clone()),
    };
    let session = Session::new(
        SessionOptions { paths, device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 },
        Arc::new(|_: &Event| {}),
    );
    let printed = Arc::new(Mutex::new(Vec::new()));
    let p = printed.clone();
    let out = Arc::new(move |o: Out| {
        p.lock().unwrap().push(match o {
            Out::Text(t) => t,
            Out::Image(i) => format!("SHOW {}", i.summary()),
            Out::Plot(p) => format!("PLOT {} ({} points)", p.title, p.points.len()),
        })
    });
    let mut s = Script::new(Arc::new(Mutex::new(session)), out, limits);
    s.set("photo", rhai::Dynamic::from(d.photo.display().to_string()));
    (s, printed)
}

#[test]
fn identities_and_mixes_are_values() {
    let (mut s, printed) = script(Limits::default());
    let _ = s.eval("let me = identity(#{ path: photo, box: [180, 52, 270, 180] });").unwrap();
    let _ = s.eval("let grey = identity(#{ path: photo, box: [180, 52, 270, 180], grayscale: true });").unwrap();
    // values print readably
    let v = s.eval("me").unwrap();
    let d = describe(&v);
    assert!(d.starts_with("identity ") && d.contains("1 photo") && d.contains("astronaut.jpg"), "{d}");
    // algebra: a mix at 0 is the first identity, similarity is symmetric and 1 with itself
    assert_eq!(s.eval("similarity(mix(me, grey, 0.0), me)").unwrap().as_float().unwrap(), 1.0);
    let ab = s.eval("similarity(me, grey)").unwrap().as_float().unwrap();
    let ba = s.eval("similarity(grey, me)").unwrap().as_float().unwrap();
    assert!((ab - ba).abs() < 1e-12 && ab < 1.0, "{ab} {ba}");
    assert!(
        (s.eval("similarity(mean([me, grey]), mix(me, grey, 0.5))").unwrap().as_float().unwrap() - 1.0).abs() < 1e-9
    );
    assert!(s.eval("similarity(me + grey - grey, me) > 0.999999").unwrap().as_bool().unwrap());
    // LoRA mixes: terms merge, scale and print their weights
    let m = describe(&s.eval("lora(me, 0.85) + slider(grey, me) * 0.5").unwrap());
    assert!(m.contains("+1.350") && m.contains("-0.500"), "{m}");
    assert_eq!(s.eval("(lora(me) - lora(me)).terms").unwrap().as_int().unwrap(), 0);
    // integers and floats both work as weights
    assert_eq!(describe(&s.eval("lora(me, 1) * 2").unwrap()), describe(&s.eval("2.0 * lora(me, 1.0)").unwrap()));
    // generate → show → save; variables persist across evaluations, and so do functions
    let _ = s.eval("fn small(p, l) { generate(p, #{ lora: l, seed: 1, steps: 2, width: 64, height: 64 }) }").unwrap();
    let _ = s.eval("let img = small(\"portrait\", lora(me, 0.85)); show(img);").unwrap();
    assert_eq!(s.eval("img.width").unwrap().as_int().unwrap(), 64);
    assert!(s.eval("img.prompt").unwrap().to_string().starts_with("fcsks fxhks fhyks, portrait"));
    assert!(printed.lock().unwrap().iter().any(|l| l.starts_with("SHOW image 64×64, seed 1")));
    let dir = tempfile::tempdir().unwrap();
    s.set("dir", rhai::Dynamic::from(dir.path().display().to_string()));
    let _ = s.eval("save(img, dir + \"/a.png\");").unwrap();
    assert!(s.eval("img.path").unwrap().to_string().ends_with("a.png"), "the image remembers where it was saved");
    // never overwrite without asking
    let e = s.eval("save(img, dir + \"/a.png\")").unwrap_err();
    assert!(e.message.contains("already exists"), "{}", e.message);
    let _ = s.eval("save(img, dir + \"/a.png\", #{ overwrite: true })").unwrap();
    let r = s.eval("export_lora(lora(me, 0.85), dir + \"/me.lora.safetensors\")").unwrap().to_string();
    assert!(r.contains("136 layers"), "{r}");
    let _ = s
        .eval(
            "save_identity(me, dir + \"/me.id.safetensors\"); let back = load_identity(dir + \"/me.id.safetensors\");",
        )
        .unwrap();
    assert!(s.eval("back.hash == me.hash").unwrap().as_bool().unwrap());
    // face_score: the photo against its own identity through the same face path
    let score = s.eval("face_score(small(\"x\", ()), me, #{ box: [16, 8, 48, 56] })").unwrap().as_float().unwrap();
    assert!(score.abs() <= 1.0 + 1e-6);
    // models and help
    assert!(s.eval("models()").unwrap().to_string().contains("loaded"));
    assert!(s.eval("help(\"mix\")").unwrap().to_string().contains("mix(a, b, t)"));
    assert!(s.eval("unload(\"encoders\")").unwrap().to_string().contains("clip"));
    // after unloading, new photos still encode (the encoders reload)
    let _ = s.eval("let again = identity(#{ path: photo, box: [181, 52, 270, 180] });").unwrap();
}

#[test]
fn errors_name_the_place_and_the_problem() {
    let (mut s, _) = script(Limits::default());
    let e = s.eval("let a = 1;\nlet b = identity(\"/no/such/photo.jpg\");").unwrap_err();
    assert_eq!(e.line, Some(2), "{e:?}");
    assert!(e.message.contains("/no/such/photo.jpg"), "{}", e.message);
    assert!(e.located("r.rhai").starts_with("r.rhai:2:"), "{}", e.located("r.rhai"));
    let e = s.eval("generate(\"x\", #{ stepz: 3 })").unwrap_err();
    assert!(e.message.contains("stepz") && e.message.contains("steps"), "{}", e.message);
    let e = s.eval("generate(\"x\", #{ width: 60, steps: 1 })").unwrap_err();
    assert!(e.message.contains("multiples of 8"), "{}", e.message);
    let e = s.eval("let x = ;").unwrap_err();
    assert_eq!(e.line, Some(1));
    // the scope survives errors
    let _ = s.eval("let kept = 41;").unwrap();
    assert!(s.eval("kept + undefined_thing").is_err());
    assert_eq!(s.eval("kept + 1").unwrap().as_int().unwrap(), 42);
}

#[test]
fn sandbox_stops_runaway_scripts_and_keeps_the_session() {
    let (mut s, _) = script(Limits { max_operations: 100_000, ..Limits::default() });
    let e = s.eval("let n = 0; loop { n += 1; }").unwrap_err();
    assert!(e.message.contains("operations"), "{}", e.message);
    let (mut s, _) = script(Limits { max_string_size: 1000, ..Limits::default() });
    assert!(s.eval("let t = \"x\"; for i in 0..20 { t += t; }").is_err());
    // Ctrl-C (the cancel flag) stops a loop; the next evaluation runs
    let (mut s, _) = script(Limits::default());
    let flag = s.cancel_flag();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let e = s.eval("let n = 0; loop { n += 1; }").unwrap_err();
    stopper.join().unwrap();
    assert!(e.cancelled && e.message.contains("cancelled"), "{e:?}");
    assert_eq!(s.eval("1 + 1").unwrap().as_int().unwrap(), 2);
}

fn hyperlora(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperlora"));
    c.args(args)
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .env_remove("HYPERLORA_HYPERLORA")
        .env("HYPERLORA_HISTORY", demo_dir().join("history"));
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn shipped_recipes_run_on_the_demo_set() {
    let out = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for (recipe, expect) in [
        ("average.rhai", "similarity(both, mean([a, b])) = 1"),
        ("interpolation_grid.rhai", "t = 1.0: similarity to a"),
        ("age_slider.rhai", "strength 1.0:"),
        ("strength_sweep.rhai", "strength  seed 1  seed 2  seed 3   mean"),
        ("identity_space.rhai", "PC1 explains"),
        ("orthogonal_slider.rhai", "cosine(orthogonal, me) = "),
        ("face_detail.rhai", "saved as"),
    ] {
        let dir = out.path().join(recipe);
        let r = hyperlora(
            &["run", scripts.join(recipe).to_str().unwrap(), "--demo", "--set", &format!("out={}", dir.display())],
            None,
        );
        assert!(r.status.success(), "{recipe}: {}", text(&r));
        assert!(text(&r).contains(expect), "{recipe}: {}", text(&r));
        assert!(std::fs::read_dir(&dir).unwrap().count() > 0, "{recipe} wrote nothing");
        // a second run refuses to overwrite what the first wrote, naming the file and the line
        let again = hyperlora(
            &["run", scripts.join(recipe).to_str().unwrap(), "--demo", "--set", &format!("out={}", dir.display())],
            None,
        );
        assert!(
            !again.status.success()
                && text(&again).contains("already exists")
                && text(&again).contains(&format!("{recipe}:")),
            "{recipe}: {}",
            text(&again)
        );
    }
    // each sweep recipe saved one labelled sheet that keeps every cell's settings
    for (recipe, cells) in [
        ("interpolation_grid.rhai", 5),
        ("age_slider.rhai", 5),
        ("strength_sweep.rhai", 12),
        ("identity_space.rhai", 5),
        ("orthogonal_slider.rhai", 10),
        ("face_detail.rhai", 4),
    ] {
        let sheet = out.path().join(recipe).join("sheet.png");
        let (_, w, h, text) = hyperlora::files::png_meta::read_png(&sheet).unwrap_or_else(|e| panic!("{recipe}: {e}"));
        let meta =
            text.iter().find(|(k, _)| k == "hyperlora:grid").unwrap_or_else(|| panic!("{recipe}: no grid metadata"));
        let meta: serde_json::Value = serde_json::from_str(&meta.1).unwrap();
        let cells_meta = meta["cells"].as_array().unwrap();
        assert_eq!(cells_meta.len(), cells, "{recipe}");
        assert!(cells_meta.iter().all(|c| c["settings"]["seed"].as_str().is_some() && c["label"].as_str().is_some_and(|l| !l.is_empty())), "{recipe}: {meta}");
        assert!(w > 64 && h > 64, "{recipe}: {w}x{h}");
    }
    // the orthogonal direction really is orthogonal to the identity, the plain one is not
    let r = hyperlora(
        &[
            "run",
            scripts.join("orthogonal_slider.rhai").to_str().unwrap(),
            "--demo",
            "--set",
            &format!("out={}", out.path().join("ortho2").display()),
        ],
        None,
    );
    let o = String::from_utf8_lossy(&r.stdout);
    let cos = |tag: &str| -> f64 {
        o.split(tag)
            .nth(1)
            .and_then(|t| t.split(|c: char| c == ',' || c.is_whitespace()).find(|w| !w.is_empty()))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{tag} in {o}"))
    };
    assert!(cos("cosine(orthogonal, me) = ").abs() < 1e-6 && cos("cosine(plain, me) = ").abs() > 1e-3, "{o}");
    // the sweep plots face_score against strength
    let r = hyperlora(
        &[
            "run",
            scripts.join("strength_sweep.rhai").to_str().unwrap(),
            "--demo",
            "--set",
            &format!("out={}", out.path().join("sweep3").display()),
        ],
        None,
    );
    let o = String::from_utf8_lossy(&r.stdout);
    assert!(o.contains("face_score against LoRA strength") && o.matches('●').count() == 4, "{o}");
    // the sweep's table has one row per strength with three scores and a mean
    let r = hyperlora(
        &[
            "run",
            scripts.join("strength_sweep.rhai").to_str().unwrap(),
            "--demo",
            "--set",
            &format!("out={}", out.path().join("sweep2").display()),
        ],
        None,
    );
    let rows: Vec<String> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.split_whitespace().count() == 5), "{rows:?}");
}

/// Errors in the user's words: a misspelt function gets the closest name, a known one called wrongly gets its usage
/// line, no Rust type path reaches the user (in errors or echoed values), a missing recipe variable names both ways
/// to give it, a refused overwrite names what exists (`overwrite: true`), no face suggests `box:`.
#[test]
fn errors_speak_the_users_words() {
    let (mut s, _) = script(Limits::default());
    let e = s.eval("identty(\"a.jpg\")").unwrap_err().message;
    assert!(e.contains("did you mean `identity`?") && e.contains("identty(string)"), "{e}");
    let e = s.eval("generate(5)").unwrap_err().message;
    assert!(e.contains("generate(int)") && e.contains("use generate(prompt") && !e.contains("i64"), "{e}");
    let e = s.eval("zzzzqqqq(1)").unwrap_err().message;
    assert!(e.starts_with("unknown function zzzzqqqq(int)") && !e.contains("did you mean"), "{e}");
    // a value of ours in an error and in echoed arrays: the script's names, never Rust paths
    let me = "let me = identity(#{ path: photo, box: [180, 52, 270, 180] });";
    let _ = s.eval(me).unwrap();
    let e = s.eval("me + 1").unwrap_err().message;
    assert!(!e.contains("hyperlora::") && e.contains("identity"), "{e}");
    let shown = hyperlora::script::describe(&s.eval("[me, me]").unwrap());
    assert!(shown.starts_with("[identity ") && !shown.contains("hyperlora::"), "{shown}");
    let e = s.eval("lora(me, 1.0) * me").unwrap_err().message;
    assert!(!e.contains("hyperlora::") && !e.contains("LoraMix"), "{e}");
    // no face: the way out is named
    let tmp = tempfile::tempdir().unwrap();
    let none = crate::common::faceless_photo(tmp.path(), "corner.png");
    let e = s.eval(&format!("identity({:?})", none.display().to_string())).unwrap_err().message;
    assert!(e.contains("no face detected") && e.contains("box: [x1, y1, x2, y2]"), "{e}");
    // a refused overwrite names the script's way
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("me.safetensors");
    std::fs::write(&f, "x").unwrap();
    let e = s.eval(&format!("save_identity(me, {:?})", f.display().to_string())).unwrap_err().message;
    assert!(e.contains("overwrite: true"), "{e}");
    // run: a missing variable names --demo and --set
    let r = dir.path().join("r.rhai");
    std::fs::write(&r, "print(demo_photo);").unwrap();
    let o = hyperlora(&["run", r.to_str().unwrap()], None);
    assert!(
        !o.status.success() && text(&o).contains("--demo") && text(&o).contains("--set demo_photo="),
        "{}",
        text(&o)
    );
}

#[test]
fn run_reports_file_line_col_and_set_values() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.rhai");
    std::fs::write(&f, "print(`n is ${n}, name is ${name}, flag ${flag}`);\nlet x = 1;\nlet y = x + nope;\n").unwrap();
    let r =
        hyperlora(&["run", f.to_str().unwrap(), "--set", "n=3", "--set", "name=me.jpg", "--set", "flag=true"], None);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("n is 3, name is me.jpg, flag true"), "{}", text(&r));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(&format!("{}:3:", f.display())) && err.contains("nope"), "{err}");
    let r = hyperlora(&["run", f.to_str().unwrap(), "--set", "9bad=1"], None);
    assert!(!r.status.success() && text(&r).contains("not a valid variable name"));
    // a recipe that needs a model nobody configured says which flag gives it
    std::fs::write(&f, "generate(\"x\")").unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["run", f.to_str().unwrap()])
        .env_remove("HYPERLORA_SDXL")
        .output()
        .unwrap();
    assert!(!r.status.success() && text(&r).contains("--sdxl"), "{}", text(&r));
}

#[test]
fn repl_keeps_variables_and_survives_errors() {
    let r = hyperlora(&["repl", "--demo"], Some("let x = 20 + 1;\nx * 2\nnope + 1\nx + 1\n:quit\n"));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", text(&r));
    assert!(out.contains("42") && out.contains("22"), "{}", text(&r));
    assert!(String::from_utf8_lossy(&r.stderr).contains("nope"), "{}", text(&r));
}

#[test]
fn demo_command_runs_the_whole_path_quickly() {
    let out = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let r = hyperlora(&["demo", "--out", out.path().to_str().unwrap(), "--preview", "always"], None);
    assert!(r.status.success(), "{}", text(&r));
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(s.contains("RANDOM, untrained weights"), "{s}");
    assert!(s.contains('▀'), "a halfblock preview is drawn");
    assert!(out.path().join("demo.png").is_file() && out.path().join("demo.lora.safetensors").is_file());
    // run again: new names, nothing overwritten
    let r = hyperlora(&["demo", "--out", out.path().to_str().unwrap(), "--preview", "never"], None);
    assert!(r.status.success(), "{}", text(&r));
    assert!(out.path().join("demo-1.png").is_file());
    assert!(!String::from_utf8_lossy(&r.stdout).contains('▀'));
    assert!(t.elapsed().as_secs() < 60, "demo took {:?}", t.elapsed());
    let (_, w, h, meta) = hyperlora::files::png_meta::read_png(&out.path().join("demo.png")).unwrap();
    assert_eq!((w, h), (128, 128));
    assert!(meta.iter().any(|(k, v)| k == "seed" && v == "7"));
}

#[test]
fn bracket_counting_for_multi_line_input() {
    use hyperlora::front::input::open_brackets;
    assert_eq!(open_brackets("for t in [0, 1] {"), 1);
    assert_eq!(open_brackets("let s = \"{ not a bracket\";"), 0);
    assert_eq!(open_brackets("f(#{ a: [1, 2] })"), 0);
    assert_eq!(open_brackets("// comment {\nlet x = (1"), 1);
}

#[test]
fn face_score_ranks_the_own_identity_first() {
    // the identity's own photo against it and against an identity of another crop: the order must hold
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("score.rhai");
    std::fs::write(
        &f,
        "let me = identity(#{ path: demo_photo, box: demo_box });\n\
         let b = demo_box;\n\
         let other = identity(#{ path: demo_photo, box: [b[0] + 40, b[1] + 60, b[2] + 40, b[3] + 60] });\n\
         let photo = load_image(demo_photo);\n\
         let own = face_score(photo, me, #{ box: demo_box });\n\
         let theirs = face_score(photo, other, #{ box: demo_box });\n\
         print(`own ${own} other ${theirs}`);\n",
    )
    .unwrap();
    let r = hyperlora(&["run", f.to_str().unwrap(), "--demo"], None);
    let o = text(&r);
    assert!(r.status.success(), "{o}");
    let nums: Vec<f64> = o
        .lines()
        .find(|l| l.starts_with("own "))
        .unwrap_or_else(|| panic!("{o}"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (own, other) = (nums[0], nums[1]);
    assert!((own - 1.0).abs() < 1e-4, "own photo scores {own} against its identity");
    assert!(other < own - 1e-3, "another crop's identity scores {other}, not below {own}");
}

/// `hyperlora run` hears Ctrl-C (a real SIGINT): the running generation stops, the run says so and exits non-zero.
/// It waits for the first sampling step's line (printed where stderr is no terminal), so the signal meets a job.
#[test]
fn run_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("long.rhai");
    std::fs::write(&f, "let x = generate(\"x\", #{ steps: 999, width: 256, height: 256 });\nprint(\"finished\");\n")
        .unwrap();
    let out = dir.path().join("stdout.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["run", "--demo", "--preview", "never"])
        .arg(&f)
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .stderr(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let (status, rest) = crate::common::interrupt_after(child, "sampling step 1/999");
    assert!(!status.success(), "exit 0 after Ctrl-C:\n{rest}");
    assert!(rest.contains("cancelled"), "{rest}");
    assert!(!std::fs::read_to_string(&out).unwrap().contains("finished"), "the script went on after Ctrl-C");
}

/// `plot_loss(path)` plots a loss log (train's log.csv, finetune's .loss.csv) as the REPL and the TUI show plots;
/// a file that is not one says which column is missing.
#[test]
fn plot_loss_reads_a_loss_log() {
    let (mut s, printed) = script(Limits::default());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.csv");
    std::fs::write(&log, "step,loss,lr,seconds\n1,1.5,0.001,0.2\n2,1.25,0.001,0.4\n3,1.0,0.001,0.6\n").unwrap();
    let _ = s.eval(&format!("plot_loss({:?})", log.display().to_string())).unwrap();
    let out = printed.lock().unwrap().join("\n");
    assert!(out.contains("PLOT training loss, 3 steps") && out.contains("(3 points)"), "{out}");
    std::fs::write(&log, "step,lr\n1,0.1\n").unwrap();
    let e = s.eval(&format!("plot_loss({:?})", log.display().to_string())).unwrap_err().message;
    assert!(e.contains("log.csv") && e.contains("`loss`"), "{e}");
}
