//! The TUI's state and how keys and worker messages change it. No terminal I/O here (rendering is `ui.rs`,
//! the loop is `mod.rs`), so it is tested directly.
use crate::script::Out;
use crate::session::{Event, Image};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::time::Instant;

/// What the worker thread reports.
#[derive(Debug, Clone)]
pub enum Msg {
    Out(Out),
    Event(Event),
    /// An evaluation finished: its source, the value (or error) as text, and the variables after it.
    Done {
        code: String,
        result: Result<String, String>,
        vars: Vec<Value>,
        cancelled: bool,
    },
    /// The models resident now (after a job: `unload` drops some, a load adds one).
    Models(Vec<String>),
}

/// A variable in scope, for the sidebar.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    pub kind: String,
    pub text: String,
    pub image: Option<Image>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Input,
    Output,
    Error,
    Info,
}

/// The running evaluation.
#[derive(Debug, Clone)]
pub struct Job {
    pub code: String,
    pub started: Instant,
    pub step: usize,
    pub total: usize,
    /// Seconds from sampling start to the last step.
    pub elapsed: f64,
    /// A training job's last loss and learning rate.
    pub train: Option<(f64, f64)>,
}

impl Job {
    pub fn progress(&self) -> String {
        if self.total == 0 {
            return format!("running {:.0} s", self.started.elapsed().as_secs_f64());
        }
        let rate = if self.elapsed > 0.0 { self.step as f64 / self.elapsed } else { 0.0 };
        let eta = if rate > 0.0 { (self.total - self.step.min(self.total)) as f64 / rate } else { 0.0 };
        let train = self.train.map(|(loss, lr)| format!(" loss {loss:.5} lr {lr:.2e}")).unwrap_or_default();
        format!("step {}/{}{train} {:.2} it/s eta {:.0} s", self.step, self.total, rate, eta)
    }
}

/// What a key asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Submit(String),
    Cancel,
    Quit,
}

/// A terminal graphics protocol (kitty, iTerm2/WezTerm, sixel) for the preview, when the terminal has one;
/// without it the preview is drawn with halfblocks. The encoded image is kept for the image it was made from.
pub struct Graphics {
    pub picker: ratatui_image::picker::Picker,
    pub state: std::cell::RefCell<Option<(usize, ratatui_image::protocol::StatefulProtocol)>>,
}

impl Graphics {
    pub fn new(picker: ratatui_image::picker::Picker) -> Self {
        Graphics { picker, state: std::cell::RefCell::new(None) }
    }

    /// The protocol's name for the status bar.
    pub fn name(&self) -> &'static str {
        use ratatui_image::picker::ProtocolType::*;
        match self.picker.protocol_type() {
            Halfblocks => "halfblocks",
            Sixel => "sixel",
            Kitty => "kitty",
            Iterm2 => "iterm2",
        }
    }
}

pub struct App {
    /// Resident memory as the status bar shows it (read on a timer, not per frame).
    pub memory: String,
    /// The last frame's draw time, for `:mem`.
    pub frame: std::time::Duration,
    /// None: halfblocks.
    pub graphics: Option<Graphics>,
    /// The terminal's cell in pixels (width, height), from its answer to `CSI 16 t` or TIOCGWINSZ, when either
    /// says: images keep their aspect ratio by it.
    pub cell: Option<(u16, u16)>,
    pub input: String,
    /// Byte offset of the cursor in `input`.
    pub cursor: usize,
    pub history: Vec<String>,
    history_pos: Option<usize>,
    pub log: Vec<(LineKind, String)>,
    /// Lines scrolled up from the bottom of the log.
    pub scroll: usize,
    pub values: Vec<Value>,
    pub selected: Option<usize>,
    /// The latest image shown or made.
    pub latest: Option<Image>,
    /// The latest plot (shown in the preview pane until an image is shown or a value selected).
    pub plot: Option<crate::render::plot::Plot>,
    /// The running job's latest latent preview (cleared when it ends).
    pub latents: Option<(usize, usize, Image)>,
    pub preview: bool,
    pub help: bool,
    pub job: Option<Job>,
    pub device: String,
    pub models: Vec<String>,
    /// Inputs that evaluated without error, in order (what `:save-session` writes).
    pub succeeded: Vec<String>,
    pub completions: Vec<String>,
    /// Inputs entered while a job ran: each runs, in order, when the one before it ends.
    pub queued: std::collections::VecDeque<String>,
}

impl App {
    /// The cell as halfblocks take it: the terminal's, else the 1:2 cell most fonts have.
    pub fn halfblock_cell(&self) -> (f64, f64) {
        self.cell.map(|(w, h)| (w as f64, h as f64)).unwrap_or((1.0, 2.0))
    }

    pub fn new(device: String) -> Self {
        App {
            memory: "?".into(),
            frame: std::time::Duration::ZERO,
            graphics: None,
            cell: None,
            input: String::new(),
            cursor: 0,
            history: Vec::new(),
            history_pos: None,
            log: vec![(LineKind::Info, "hyperlora — Enter runs (open brackets continue), Tab completes, Ctrl-C stops a job, F1 help, Ctrl-D quits".into())],
            scroll: 0,
            values: Vec::new(),
            selected: None,
            latest: None,
            plot: None,
            latents: None,
            preview: true,
            help: false,
            job: None,
            device,
            models: Vec::new(),
            succeeded: Vec::new(),
            completions: Vec::new(),
            queued: Default::default(),
        }
    }

    pub fn info(&mut self, s: impl Into<String>) {
        self.push(LineKind::Info, s.into());
    }

    fn push(&mut self, kind: LineKind, s: String) {
        for line in s.lines() {
            self.log.push((kind.clone(), line.to_string()));
        }
        if self.log.len() > 5000 {
            self.log.drain(..self.log.len() - 5000);
        }
        self.scroll = 0;
    }

    /// The image the preview pane shows: the selected value's, else the latest.
    pub fn shown_image(&self) -> Option<&Image> {
        self.selected.and_then(|i| self.values.get(i)).and_then(|v| v.image.as_ref()).or(self.latest.as_ref())
    }

    pub fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Out(Out::Text(t)) => self.push(LineKind::Output, t),
            Msg::Out(Out::Image(img)) => {
                self.push(LineKind::Output, img.summary());
                self.latest = Some(img);
                self.plot = None;
                self.selected = None;
            }
            Msg::Out(Out::Plot(p)) => {
                self.push(
                    LineKind::Output,
                    format!(
                        "plot: {} ({} points)",
                        if p.title.is_empty() { "untitled" } else { &p.title },
                        p.points.len()
                    ),
                );
                self.plot = Some(p);
                self.selected = None;
            }
            Msg::Event(e) => match e {
                Event::Step { step, total, elapsed } => {
                    if let Some(j) = &mut self.job {
                        (j.step, j.total, j.elapsed, j.train) = (step, total, elapsed, None);
                    }
                }
                Event::Train { step, total, loss, lr, elapsed, .. } => {
                    if let Some(j) = &mut self.job {
                        (j.step, j.total, j.elapsed, j.train) = (step, total, elapsed, Some((loss, lr)));
                    }
                    if step == total || step % 10 == 0 {
                        self.info(format!("train step {step}/{total}: loss {loss:.5}, lr {lr:.2e}"));
                    }
                }
                Event::Loading { component, path } => {
                    self.info(format!("loading {component} from {} …", path.display()))
                }
                Event::Loaded { component, seconds } => {
                    self.info(format!("loaded {component} in {seconds:.1} s"));
                    if !self.models.iter().any(|m| m == component) {
                        self.models.push(component.to_string());
                    }
                }
                Event::Encoded { photo, detail, .. } => self.info(format!("{photo}: {detail}")),
                Event::Note(n) => self.info(n),
                Event::Preview { step, total, image } => self.latents = Some((step, total, image)),
            },
            Msg::Models(m) => self.models = m,
            Msg::Done { code, result, vars, cancelled } => {
                self.job = None;
                self.latents = None;
                match result {
                    Ok(v) => {
                        if !v.is_empty() {
                            self.push(LineKind::Output, v);
                        }
                        if !code.trim_start().starts_with(':') {
                            self.succeeded.push(code);
                        }
                    }
                    Err(e) => self.push(if cancelled { LineKind::Info } else { LineKind::Error }, e),
                }
                // an image the last input made becomes the latest; a saved one updates its path
                let same = |a: &Image, b: &Image| std::sync::Arc::ptr_eq(&a.rgb, &b.rgb);
                let fresh = vars
                    .iter()
                    .rev()
                    .filter_map(|v| v.image.as_ref())
                    .find(|img| !self.values.iter().any(|o| o.image.as_ref().is_some_and(|oi| same(oi, img))))
                    .cloned();
                if let Some(img) = fresh {
                    self.latest = Some(img);
                } else if let Some(l) = &self.latest {
                    if let Some(updated) = vars.iter().filter_map(|v| v.image.as_ref()).find(|img| same(img, l)) {
                        self.latest = Some(updated.clone());
                    }
                }
                self.values = vars;
                if self.selected.is_some_and(|i| i >= self.values.len()) {
                    self.selected = None;
                }
            }
        }
    }

    fn insert(&mut self, s: &str) {
        self.input.insert_str(self.cursor, s);
        self.cursor += s.len();
    }

    fn prev_boundary(&self) -> usize {
        self.input[..self.cursor].char_indices().next_back().map(|(i, _)| i).unwrap_or(0)
    }

    fn next_boundary(&self) -> usize {
        self.input[self.cursor..].chars().next().map(|c| self.cursor + c.len_utf8()).unwrap_or(self.cursor)
    }

    /// Complete the word before the cursor from `names`; several matches are listed.
    pub fn complete(&mut self, names: &[String]) {
        let start = crate::front::input::word_start(&self.input, self.cursor);
        let word = self.input[start..self.cursor].to_string();
        let m = crate::front::input::candidates(&word, names);
        match m.len() {
            0 => {}
            1 => self.insert(&m[0][word.len()..]),
            _ => {
                let common = m.iter().skip(1).fold(m[0].clone(), |acc, s| {
                    acc.chars().zip(s.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a).collect()
                });
                if common.len() > word.len() {
                    self.insert(&common[word.len()..]);
                }
                self.completions = m;
            }
        }
    }

    /// Apply a key. `names` are the completion candidates (API names and variables).
    pub fn on_key(&mut self, k: KeyEvent, names: &[String]) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if self.help {
            if matches!(k.code, KeyCode::Esc | KeyCode::F(1) | KeyCode::Char('q') | KeyCode::Char('?')) {
                self.help = false;
            }
            return Action::None;
        }
        self.completions.clear();
        match k.code {
            KeyCode::Char('c') if ctrl => {
                if self.job.is_some() {
                    return Action::Cancel;
                }
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::Char('d') if ctrl && self.input.is_empty() => return Action::Quit,
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::F(1) => self.help = true,
            KeyCode::Char('?') if self.input.is_empty() => self.help = true,
            KeyCode::Enter if k.modifiers.contains(KeyModifiers::ALT) || k.modifiers.contains(KeyModifiers::SHIFT) => {
                self.insert("\n")
            }
            KeyCode::Enter => {
                if crate::front::input::open_brackets(&self.input) > 0 {
                    self.insert("\n");
                    return Action::None;
                }
                let code = self.input.trim().to_string();
                if code.is_empty() {
                    return Action::None;
                }
                self.input.clear();
                self.cursor = 0;
                self.history_pos = None;
                if self.history.last() != Some(&code) {
                    self.history.push(code.clone());
                }
                // the UI's own `:` commands (`:mem`, `:help`, …) answer while a job runs; script code waits its turn
                if (self.job.is_some() || !self.queued.is_empty()) && !code.starts_with(':') {
                    self.push(LineKind::Input, format!("› {code}"));
                    self.info(format!(
                        "queued ({} waiting): it runs when the job before it ends",
                        self.queued.len() + 1
                    ));
                    self.queued.push_back(code);
                    return Action::None;
                }
                self.push(LineKind::Input, format!("› {code}"));
                return Action::Submit(code);
            }
            KeyCode::Tab => self.complete(names),
            KeyCode::Backspace if self.cursor > 0 => {
                let p = self.prev_boundary();
                self.input.replace_range(p..self.cursor, "");
                self.cursor = p;
            }
            KeyCode::Delete if self.cursor < self.input.len() => {
                let n = self.next_boundary();
                self.input.replace_range(self.cursor..n, "");
            }
            KeyCode::Left => self.cursor = self.prev_boundary(),
            KeyCode::Right => self.cursor = self.next_boundary(),
            KeyCode::Home => self.cursor = self.input[..self.cursor].rfind('\n').map(|i| i + 1).unwrap_or(0),
            KeyCode::End => {
                self.cursor = self.input[self.cursor..].find('\n').map(|i| self.cursor + i).unwrap_or(self.input.len())
            }
            KeyCode::Up if k.modifiers.contains(KeyModifiers::ALT) => self.select(-1),
            KeyCode::Down if k.modifiers.contains(KeyModifiers::ALT) => self.select(1),
            KeyCode::Up if !self.input[..self.cursor].contains('\n') => {
                let pos = match self.history_pos {
                    None if !self.history.is_empty() => self.history.len() - 1,
                    Some(p) if p > 0 => p - 1,
                    p => p.unwrap_or(0),
                };
                if let Some(h) = self.history.get(pos) {
                    self.input = h.clone();
                    self.cursor = self.input.len();
                    self.history_pos = Some(pos);
                }
            }
            KeyCode::Down if !self.input[self.cursor..].contains('\n') => match self.history_pos {
                Some(p) if p + 1 < self.history.len() => {
                    self.input = self.history[p + 1].clone();
                    self.cursor = self.input.len();
                    self.history_pos = Some(p + 1);
                }
                Some(_) => {
                    self.input.clear();
                    self.cursor = 0;
                    self.history_pos = None;
                }
                None => {}
            },
            KeyCode::PageUp => self.scroll = (self.scroll + 10).min(self.log.len()),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Char(c) if !ctrl => self.insert(c.encode_utf8(&mut [0; 4])),
            _ => {}
        }
        Action::None
    }

    fn select(&mut self, d: i64) {
        if self.values.is_empty() {
            return;
        }
        let n = self.values.len() as i64;
        let cur = self.selected.map(|i| i as i64).unwrap_or(if d > 0 { -1 } else { n });
        self.selected = Some((cur + d).rem_euclid(n) as usize);
    }
}
