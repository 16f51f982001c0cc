//! What `run`, `repl` and `demo` share: the model flags, the session with a terminal listener, and how script
//! output reaches the terminal.
pub use crate::front::args::{device_dtype, quiet_session, resolve_paths, session_with, ModelArgs, Preview};
use crate::script::Out;
use crate::session::{Event, Session};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The session for these flags (with the demo set filled in when asked), and the demo set if used.
pub fn session(a: &ModelArgs) -> anyhow::Result<(Arc<Mutex<Session>>, Option<crate::synthetic::demo::DemoSet>)> {
    let (paths, hints) = resolve_paths(a)?;
    for h in hints {
        eprintln!("hint: {h}");
    }
    session_with(a, paths, listener())
}

/// Progress on stderr: loads, encodes, a step bar while sampling or training (with the loss and lr), notes. Where
/// stderr is no terminal (a log file, CI, a Slurm job, a pipe) the bar is hidden, so a line is printed instead: the
/// first and last step of each run, and one every 10 s between.
pub(super) fn listener() -> crate::session::Listener {
    let bar: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);
    let logged: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let tty = std::io::stderr().is_terminal();
    // `first`: the first step of this run (a resumed training run starts past 1); rate and ETA count from it
    let line = move |what: &str, step: usize, first: usize, total: usize, detail: String, elapsed: f64| {
        let Ok(mut last) = logged.lock() else { return };
        let due = step == first || step == total || last.is_none_or(|t| t.elapsed().as_secs() >= 10);
        if !tty && due {
            *last = Some(std::time::Instant::now());
            let done = (step + 1).saturating_sub(first);
            let eta = match elapsed > 0.0 && done > 0 && step < total {
                true => format!(", eta {:.0} s", elapsed / done as f64 * (total - step) as f64),
                false => String::new(),
            };
            eprintln!("{what} step {step}/{total}: {detail}{}{eta}", rate(done, elapsed));
        }
    };
    let advance = move |step: usize, total: usize, msg: String| {
        let Ok(mut b) = bar.lock() else { return };
        let pb = b.get_or_insert_with(|| step_bar(total));
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(msg);
        if step >= total {
            pb.finish_and_clear();
            *b = None;
        }
    };
    Arc::new(move |e: &Event| match e {
        Event::Loading { component, path } => {
            eprintln!("loading {component} from {} …", path.display())
        }
        Event::Loaded { component, seconds } => eprintln!("loaded {component} in {seconds:.1} s"),
        Event::Encoded { photo, detail, .. } => eprintln!("{photo}: {detail}"),
        Event::Note(n) => eprintln!("{n}"),
        Event::Train { step, total, first, loss, lr, elapsed } => {
            line("train", *step, *first, *total, format!("loss {loss:.5} lr {lr:.2e} "), *elapsed);
            let done = (step + 1).saturating_sub(*first);
            advance(*step, *total, format!("loss {loss:.5} lr {lr:.2e} {}", rate(done, *elapsed)))
        }
        Event::Preview { .. } => {}
        Event::Step { step, total, elapsed } => {
            line("sampling", *step, 1, *total, String::new(), *elapsed);
            advance(*step, *total, rate(*step, *elapsed))
        }
    })
}

/// Steps per second since the work began (the session's own clock: a bar made at the first step would divide by
/// the microseconds since it was made).
fn rate(step: usize, elapsed: f64) -> String {
    match elapsed > 0.0 {
        true => format!("{:.2} it/s", step as f64 / elapsed),
        false => String::new(),
    }
}

/// The progress bar on stderr, one template for every command: step n/N, a message (a training step's loss and lr,
/// then it/s), ETA.
pub fn step_bar(total: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Script output on stdout; images shown in the terminal when enabled (viuer for kitty/iTerm2/sixel, halfblocks
/// otherwise; see `term::show`), with the saved path or size/seed under each.
pub fn output(preview: Preview) -> crate::script::Output {
    let tty = std::io::stdout().is_terminal() && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
    let show = preview == Preview::Always || (preview == Preview::Auto && tty);
    Arc::new(move |o: Out| match o {
        Out::Text(t) => println!("{t}"),
        Out::Image(img) => {
            if show {
                let width = crossterm::terminal::size()
                    .ok()
                    .map(|(c, _)| c as usize)
                    .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()))
                    .unwrap_or(80);
                let cols = width.clamp(16, 200) * 3 / 5;
                crate::term::show::show(&img.rgb, img.width, img.height, cols, 24);
            }
            println!("{}", img.summary());
        }
        Out::Plot(p) => println!("{}", p.text(60, 12)),
    })
}

/// Ctrl-C sets `flag` (the running job stops, the session stays); a second Ctrl-C while the flag is still set
/// exits.
pub fn install_ctrl_c(flag: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting");
            std::process::exit(130);
        }
        eprintln!("\ncancelling … (Ctrl-C again to quit)");
    });
}
