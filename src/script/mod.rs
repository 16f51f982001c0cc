//! The Rhai scripting layer: identities, LoRA mixes and images as values, the API of `api.rs` over one shared
//! `Session`, sandbox limits, and error positions. The REPL, `hyperlora run` and the TUI all drive a `Script`.
pub mod api;
mod identity;
mod image;
mod imports;
mod lora;
mod session_fns;
mod space;
mod sweep;

use crate::session::{FaceOptions, FacePick, Generate, Image, PhotoSpec, SamplerKind, Session};
use crate::{Identity, LoraMix};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope, AST};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type RResult<T> = Result<T, Box<EvalAltResult>>;

/// What a script sends out: printed text, or an image to preview.
#[derive(Clone, Debug)]
pub enum Out {
    Text(String),
    Image(Image),
    Plot(crate::render::plot::Plot),
}

pub type Output = Arc<dyn Fn(Out) + Send + Sync>;

/// What a headless run adds: this process's shard of the sweep, whether finished outputs are skipped
/// (`--resume`), and the recipe's name (recorded in saved images, for `hyperlora gather`).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub shard: crate::sweep::Shard,
    pub resume: bool,
    pub recipe: Option<String>,
}

/// The run context and the broken outputs `pending` allowed to be written again.
#[derive(Debug, Default)]
struct RunState {
    ctx: RunContext,
    replace: std::collections::HashSet<std::path::PathBuf>,
}

type Run = Arc<Mutex<RunState>>;

/// The stack of a thread that runs scripts: a value nested as deep as the array size limit (100,000) allows is
/// formatted and dropped recursively by Rhai, about 1 KB of stack per level. Only the pages touched are committed.
pub const STACK_BYTES: usize = 512 << 20;

/// Sandbox limits (defaults suit recipes; a runaway loop stops at `max_operations`).
/// How deep arrays and maps may nest inside each other in a script's values.
pub const MAX_NESTING: usize = 1_000;

/// Whether `v` nests arrays or maps more than `limit` deep, looking at no more than a fixed budget of elements
/// (so the check costs O(1) per variable access): a chain deeper than the limit is always found, since following
/// it costs one element per level.
fn nesting_over(v: &Dynamic, limit: usize) -> bool {
    /// Some(true): deeper than the limit; Some(false): not; None: the budget ran out (not found within it).
    fn over(d: &Dynamic, depth: usize, limit: usize, budget: &mut usize) -> Option<bool> {
        if depth > limit {
            return Some(true);
        }
        let mut each = |x: &Dynamic| -> Option<bool> {
            *budget = budget.checked_sub(1)?;
            if x.is_array() || x.is_map() {
                over(x, depth + 1, limit, budget)
            } else {
                Some(false)
            }
        };
        if let Some(a) = d.read_lock::<rhai::Array>() {
            for x in a.iter() {
                if each(x)? {
                    return Some(true);
                }
            }
        } else if let Some(m) = d.read_lock::<rhai::Map>() {
            for x in m.values() {
                if each(x)? {
                    return Some(true);
                }
            }
        }
        Some(false)
    }
    let mut budget = limit + 64;
    over(v, 0, limit, &mut budget).unwrap_or(false)
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_operations: 20_000_000, max_call_levels: 64, max_string_size: 1 << 20, max_array_size: 100_000 }
    }
}

/// A script error with where it happened.
#[derive(Debug, Clone)]
pub struct ScriptError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Stopped by Ctrl-C (the session is intact).
    pub cancelled: bool,
}

impl ScriptError {
    /// `source:line:col: message` (or `source: message` without a position).
    pub fn located(&self, source: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{source}:{l}:{c}: {}", self.message),
            (Some(l), None) => format!("{source}:{l}: {}", self.message),
            _ => format!("{source}: {}", self.message),
        }
    }
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.located("script"))
    }
}

fn from_eval(mut e: EvalAltResult) -> ScriptError {
    let cancelled = matches!(e, EvalAltResult::ErrorTerminated(..)) || e.to_string().contains("cancelled");
    // the innermost position is where the user's code failed
    let mut pos = e.position();
    let mut inner = &e;
    while let EvalAltResult::ErrorInFunctionCall(_, _, err, p) = inner {
        if !p.is_none() {
            pos = *p;
        }
        inner = err;
        if !inner.position().is_none() {
            pos = inner.position();
        }
    }
    let message = match &e {
        EvalAltResult::ErrorTerminated(..) => "cancelled (the session and its values are kept)".to_string(),
        EvalAltResult::ErrorTooManyOperations(_) => {
            "stopped: the script ran more operations than the sandbox allows (a runaway loop?)".to_string()
        }
        EvalAltResult::ErrorFunctionNotFound(sig, _) => not_found(sig),
        _ => {
            let _ = e.take_position();
            plain_types(&e.to_string())
        }
    };
    ScriptError { message, line: pos.line(), column: pos.position(), cancelled }
}

/// The script's names for the types Rhai reports by their Rust paths (`hyperlora::session::image::Image`, `i64`,
/// `rhai::Map`…), wherever they appear in a message.
pub fn plain_types(message: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == ':' || c == '&';
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(is_word) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        let path = word.contains("::");
        let last = word.rsplit("::").next().unwrap_or(word).trim_start_matches('&');
        out.push_str(match last {
            "Identity" if path => "identity",
            "LoraMix" if path => "lora mix",
            "Image" if path => "image",
            "Coeffs" if path => "coeffs",
            "Library" if path => "library",
            "Map" if path => "map",
            "Array" if path => "array",
            "Dynamic" if path => "value",
            "String" => "string",
            "ImmutableString" => "string",
            "str" if word.starts_with('&') => "string",
            "i64" => "int",
            "f64" => "float",
            _ if path && word.starts_with("hyperlora::") => last,
            _ => word,
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Rhai's "Function not found: generate (i64)" in the user's words: a function of the API called with other
/// arguments gets its usage line from `help`; an unknown name gets the closest registered one.
fn not_found(sig: &str) -> String {
    let (name, args) = match sig.split_once(" (") {
        Some((n, a)) => {
            // "&str | ImmutableString | String" is one type to the user
            let a = plain_types(a.trim_end_matches(')'));
            let one = |alts: &str| {
                let mut seen: Vec<&str> = Vec::new();
                for t in alts.split(" | ") {
                    if !seen.contains(&t) {
                        seen.push(t);
                    }
                }
                seen.join(" | ")
            };
            (n.trim(), format!("({})", a.split(", ").map(one).collect::<Vec<_>>().join(", ")))
        }
        None => (sig.trim(), String::new()),
    };
    let usage = api::API.iter().find(|(n, _, _)| *n == name);
    match usage {
        Some((_, usage, _)) => format!("{name}{args} does not fit: use {usage}  (help(\"{name}\") for more)"),
        None => {
            let best = api::API
                .iter()
                .map(|(n, _, _)| (edit_distance(name, n), *n))
                .filter(|(d, n)| *d <= (n.len() / 3).max(2))
                .min();
            match best {
                Some((_, n)) => format!("unknown function {name}{args}: did you mean `{n}`? (help() lists them all)"),
                None => format!("unknown function {name}{args} (help() lists the API)"),
            }
        }
    }
}

/// Levenshtein distance (by characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn err<T>(msg: impl Into<String>) -> RResult<T> {
    Err(msg.into().into())
}

/// A library result as a script result (the error's text becomes the script error).
fn from_lib<T>(r: crate::Result<T>) -> RResult<T> {
    r.map_err(|e| e.to_string().into())
}

fn num(d: &Dynamic, what: &str) -> RResult<f64> {
    if let Ok(f) = d.as_float() {
        return Ok(f);
    }
    if let Ok(i) = d.as_int() {
        return Ok(i as f64);
    }
    err(format!("{what}: expected a number, got {}", d.type_name()))
}

fn int(d: &Dynamic, what: &str) -> RResult<i64> {
    match d.as_int() {
        Ok(i) => Ok(i),
        Err(_) => match d.as_float() {
            Ok(f) if f.fract() == 0.0 => Ok(f as i64),
            _ => err(format!("{what}: expected a whole number, got {}", d.type_name())),
        },
    }
}

fn string(d: &Dynamic, what: &str) -> RResult<String> {
    d.clone()
        .into_immutable_string()
        .map(|s| s.to_string())
        .or_else(|_| err(format!("{what}: expected a string, got {}", d.type_name())))
}

fn flag(d: &Dynamic, what: &str) -> RResult<bool> {
    d.as_bool().or_else(|_| err(format!("{what}: expected true or false, got {}", d.type_name())))
}

fn check_keys(m: &Map, allowed: &[&str], what: &str) -> RResult<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return err(format!("{what}: unknown option `{k}` (expected one of: {})", allowed.join(", ")));
        }
    }
    Ok(())
}

fn overwrite(opts: &Map, what: &str) -> RResult<bool> {
    check_keys(opts, &["overwrite", "dtype"], what)?;
    opts.get("overwrite").map(|d| flag(d, "overwrite")).transpose().map(|o| o.unwrap_or(false))
}

fn bbox(d: &Dynamic) -> RResult<[f64; 4]> {
    let a = d.clone().into_typed_array::<Dynamic>().or_else(|_| err("box: expected [x1, y1, x2, y2]"))?;
    if a.len() != 4 {
        return err(format!("box: expected [x1, y1, x2, y2], got {} numbers", a.len()));
    }
    Ok([num(&a[0], "box")?, num(&a[1], "box")?, num(&a[2], "box")?, num(&a[3], "box")?])
}

/// The face choice of an options map (`box` or `face`).
fn pick(m: &Map) -> RResult<FacePick> {
    match (m.get("box"), m.get("face")) {
        (Some(_), Some(_)) => err("give either `box` or `face`, not both"),
        (Some(b), None) => Ok(FacePick::Box(bbox(b)?)),
        (None, Some(f)) => match int(f, "face")? {
            n if n >= 0 => Ok(FacePick::Index(n as usize)),
            n => err(format!("face: expected 0 (the best face) or more, got {n}")),
        },
        (None, None) => Ok(FacePick::Best),
    }
}

fn photo_specs(d: &Dynamic) -> RResult<Vec<PhotoSpec>> {
    if d.is_string() {
        return Ok(vec![PhotoSpec::new(string(d, "identity")?)]);
    }
    if let Some(m) = d.clone().try_cast::<Map>() {
        check_keys(&m, &["path", "paths", "face", "box", "grayscale", "keep_background", "base"], "identity")?;
        let base = m.get("base").map(|v| flag(v, "base")).transpose()?.unwrap_or(false);
        let options = FaceOptions {
            pick: pick(&m)?,
            remove_background: !m
                .get("keep_background")
                .map(|v| flag(v, "keep_background"))
                .transpose()?
                .unwrap_or(false),
            grayscale: m.get("grayscale").map(|v| flag(v, "grayscale")).transpose()?.unwrap_or(false),
        };
        let paths: Vec<String> = match (m.get("path"), m.get("paths")) {
            (Some(p), None) => vec![string(p, "path")?],
            (None, Some(ps)) => ps
                .clone()
                .into_typed_array::<Dynamic>()
                .or_else(|_| err("paths: expected an array of file names"))?
                .iter()
                .map(|p| string(p, "paths"))
                .collect::<RResult<_>>()?,
            _ => return err("identity(#{...}): give `path` or `paths`"),
        };
        return Ok(paths.into_iter().map(|p| PhotoSpec { path: p.into(), options, base }).collect());
    }
    if let Some(a) = d.clone().try_cast::<Array>() {
        let mut out = Vec::new();
        for item in &a {
            out.extend(photo_specs(item)?);
        }
        return Ok(out);
    }
    err(format!("identity: expected a file name, an array of them or an options map, got {}", d.type_name()))
}

/// How values print.
pub fn describe_identity(id: &Identity) -> String {
    let names: Vec<String> = id
        .sources()
        .iter()
        .map(|s| {
            Path::new(&s.label).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| s.label.clone())
        })
        .collect();
    let shown = if names.len() > 4 {
        format!("{}, … ({} sources)", names[..4].join(", "), names.len())
    } else {
        names.join(", ")
    };
    let tuned = id.finetuned().map(|f| format!(", {}", f.describe())).unwrap_or_default();
    format!(
        "identity {} — {} photo{} [{shown}], variant {}{tuned}",
        id.short_hash(),
        id.photos(),
        if id.photos() == 1 { "" } else { "s" },
        id.variant().label
    )
}

pub fn describe_mix(m: &LoraMix) -> String {
    format!("lora mix: {}", m.summary())
}

/// The REPL's rendering of a result value.
pub fn describe(d: &Dynamic) -> String {
    if let Some(id) = d.clone().try_cast::<Identity>() {
        describe_identity(&id)
    } else if let Some(m) = d.clone().try_cast::<LoraMix>() {
        describe_mix(&m)
    } else if let Some(i) = d.clone().try_cast::<Image>() {
        i.summary()
    } else if let Some(c) = d.clone().try_cast::<crate::identity::space::Coeffs>() {
        c.summary()
    } else if let Some(l) = d.clone().try_cast::<crate::identity::library::Library>() {
        space::describe_library(&l)
    } else if d.is_string() {
        d.to_string()
    } else if d.is_array() {
        let items = d.clone().into_array().unwrap_or_default();
        let shown: Vec<String> = items.iter().take(20).map(describe).collect();
        let more = if items.len() > 20 { format!(", … ({} in all)", items.len()) } else { String::new() };
        format!("[{}{more}]", shown.join(", "))
    } else if d.is_map() {
        let m = d.clone().try_cast::<rhai::Map>().unwrap_or_default();
        let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {}", describe(v))).collect();
        format!("#{{{}}}", shown.join(", "))
    } else {
        plain_types(&format!("{d:?}"))
    }
}

/// A scripting context: an engine with the API over a shared session, and the variables defined so far.
pub struct Script {
    engine: Engine,
    scope: Scope<'static>,
    functions: AST,
    cancel: Arc<AtomicBool>,
    run: Run,
}

impl Script {
    pub fn new(session: Arc<Mutex<Session>>, output: Output, limits: Limits) -> Self {
        let cancel = session.lock().map(|s| s.cancel_flag()).unwrap_or_default();
        let mut engine = Engine::new();
        // `module` is a reserved word in Rhai (kept for a future feature; no syntax uses it): read it as a name, so
        // `c.module(3)` works as documented (`internals` feature; the hook is marked volatile, not deprecated)
        #[allow(deprecated)]
        engine.on_parse_token(|token, _, _| match token {
            rhai::Token::Reserved(s) if s.as_str() == "module" => rhai::Token::Identifier(s),
            token => token,
        });
        engine.set_module_resolver(imports::GuardedImports::new());
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_levels);
        engine.set_max_expr_depths(128, 64);
        engine.set_max_string_size(limits.max_string_size);
        engine.set_max_array_size(limits.max_array_size);
        engine.set_max_map_size(limits.max_array_size);
        // Rhai checks a map's size when a value is made, not when `m[k] = v` inserts a key, and its size check walks
        // the whole value each time, so `a = [a]` in a loop is quadratic. Each access to a variable therefore looks
        // at its length (O(1)) and at its nesting within a budget of elements (O(1) per access): a map or array grown
        // past the limit, or nested deeper than MAX_NESTING, is an error at its next use
        let max = limits.max_array_size;
        #[allow(deprecated)] // "not deprecated, but considered volatile" (Rhai's words)
        engine.on_var(move |name, _, ctx| {
            let Some(v) = ctx.scope().get(name) else { return Ok(None) };
            let len = if v.is_map() {
                v.read_lock::<rhai::Map>().map(|m| m.len())
            } else if v.is_array() {
                v.read_lock::<rhai::Array>().map(|a| a.len())
            } else {
                None
            };
            match len {
                Some(n) if max > 0 && n > max => Err(format!(
                    "`{name}` holds {n} entries, over the limit of {max} (a map grown by `m[k] = v`?)"
                )
                .into()),
                Some(_) if nesting_over(v, MAX_NESTING) => Err(format!(
                    "`{name}` is nested more than {MAX_NESTING} levels deep (arrays or maps inside each other): the limit for values"
                )
                .into()),
                _ => Ok(None),
            }
        });
        let c = cancel.clone();
        engine.on_progress(move |_| if c.load(Ordering::Relaxed) { Some(Dynamic::from("cancelled")) } else { None });
        let o = output.clone();
        engine.on_print(move |s| o(Out::Text(s.to_string())));
        let o = output.clone();
        engine.on_debug(move |s, _, pos| o(Out::Text(format!("[{pos}] {s}"))));
        let run = Run::default();
        register(&mut engine, session, output, &run);
        Script { engine, scope: Scope::new(), functions: AST::empty(), cancel, run }
    }

    /// Evaluate code in the persistent scope: variables and functions stay defined for later calls.
    pub fn eval(&mut self, code: &str) -> Result<Dynamic, ScriptError> {
        self.cancel.store(false, Ordering::Relaxed);
        let ast = self.engine.compile_with_scope(&self.scope, code).map_err(|e| {
            let pos = e.position();
            ScriptError {
                message: e.err_type().to_string(),
                line: pos.line(),
                column: pos.position(),
                cancelled: false,
            }
        })?;
        let merged = self.functions.merge(&ast);
        // a panic anywhere below (a bug) becomes an error: the REPL or TUI keeps running with its variables
        let (engine, scope) = (&self.engine, &mut self.scope);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.eval_ast_with_scope::<Dynamic>(scope, &merged).map_err(|e| from_eval(*e))
        }))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(ScriptError {
                message: format!(
                    "internal error (a bug in hyperlora, please report it): {what}; the session and its variables are kept"
                ),
                line: None,
                column: None,
                cancelled: false,
            })
        });
        self.functions = merged.clone_functions_only();
        r
    }

    /// Set a variable (e.g. from `--set name=value`).
    pub fn set(&mut self, name: &str, value: Dynamic) {
        self.scope.set_or_push(name.to_string(), value);
    }

    /// Names of the variables in scope, in definition order.
    pub fn variables(&self) -> Vec<(String, Dynamic)> {
        let mut v: Vec<(String, Dynamic)> = Vec::new();
        for (name, _, value) in self.scope.iter() {
            v.retain(|(n, _)| n != name);
            v.push((name.to_string(), value));
        }
        v
    }

    /// Set the shard, `--resume` and the recipe's name for `shard()`, `shard_info()`, `pending()` and `save`.
    pub fn set_run(&mut self, ctx: RunContext) {
        if let Ok(mut r) = self.run.lock() {
            r.ctx = ctx;
        }
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

/// `--set name=value`: a number, true/false, or else a string.
pub fn parse_value(s: &str) -> Dynamic {
    if let Ok(i) = s.parse::<i64>() {
        Dynamic::from(i)
    } else if let Ok(f) = s.parse::<f64>() {
        Dynamic::from(f)
    } else if let Ok(b) = s.parse::<bool>() {
        Dynamic::from(b)
    } else {
        Dynamic::from(s.to_string())
    }
}

/// The session, also after a panic while it was held (caught by `Script::eval`): its models and caches stay usable.
fn lock(s: &Arc<Mutex<Session>>) -> RResult<std::sync::MutexGuard<'_, Session>> {
    Ok(s.lock().unwrap_or_else(|poisoned| {
        s.clear_poison();
        poisoned.into_inner()
    }))
}

/// A `lora` option: a mix, an identity (at strength 1), or `()` for none.
fn mix_of(l: &Dynamic, what: &str) -> RResult<LoraMix> {
    if let Some(mix) = l.clone().try_cast::<LoraMix>() {
        Ok(mix)
    } else if let Some(id) = l.clone().try_cast::<Identity>() {
        Ok(LoraMix::lora(&id, 1.0))
    } else if l.is_unit() {
        Ok(LoraMix::empty())
    } else {
        err(format!("{what}: `lora` must be a LoRA mix (lora(id, w)) or an identity, got {}", l.type_name()))
    }
}

fn generate_opts(prompt: &str, m: &Map) -> RResult<Generate> {
    check_keys(
        m,
        &[
            "lora",
            "negative",
            "seed",
            "steps",
            "cfg",
            "sampler",
            "width",
            "height",
            "base_weight",
            "batch",
            "init",
            "strength",
        ],
        "generate",
    )?;
    let mut g = Generate::new(prompt);
    if let Some(init) = m.get("init") {
        let img = if let Some(i) = init.clone().try_cast::<Image>() {
            i
        } else if init.is_string() {
            from_lib(Image::load(Path::new(&string(init, "init")?)))?
        } else {
            return err(format!("init: expected an image or a file name, got {}", init.type_name()));
        };
        let strength = m.get("strength").map(|v| num(v, "strength")).transpose()?.unwrap_or(0.6);
        if !(strength > 0.0 && strength <= 1.0) {
            return err(format!("strength: expected a number in (0, 1], got {strength}"));
        }
        // the output takes the starting image's size unless width/height say otherwise
        g.width = img.width;
        g.height = img.height;
        g.init = Some((img, strength));
    } else if m.contains_key("strength") {
        return err("strength: only with `init` (img2img)");
    }
    if let Some(b) = m.get("batch") {
        g.batch = match int(b, "batch")? {
            n @ 1..=64 => n as usize,
            n => return err(format!("batch: expected 1 to 64 images, got {n}")),
        };
    }
    if let Some(l) = m.get("lora") {
        g.lora = Some(mix_of(l, "generate")?);
    }
    if let Some(b) = m.get("base_weight") {
        let b = num(b, "base_weight")?;
        let mix = g.lora.take().unwrap_or_default();
        g.lora = Some(mix.with_base_weight(b));
    }
    if let Some(n) = m.get("negative") {
        g.negative = Some(string(n, "negative")?);
    }
    if let Some(v) = m.get("seed") {
        let v = int(v, "seed")?;
        if v < 0 {
            return err("seed: expected a non-negative whole number");
        }
        g.seed = v as u64;
    }
    let positive = |v: &Dynamic, what: &str| -> RResult<usize> {
        match int(v, what)? {
            n if n > 0 => Ok(n as usize),
            n => err(format!("{what}: expected a positive whole number, got {n}")),
        }
    };
    if let Some(v) = m.get("steps") {
        g.steps = positive(v, "steps")?;
    }
    if let Some(v) = m.get("width") {
        g.width = positive(v, "width")?;
    }
    if let Some(v) = m.get("height") {
        g.height = positive(v, "height")?;
    }
    if let Some(v) = m.get("cfg") {
        g.cfg = num(v, "cfg")?;
    }
    if let Some(v) = m.get("sampler") {
        g.sampler = from_lib(SamplerKind::parse(&string(v, "sampler")?))?;
    }
    Ok(g)
}

/// `x * k` and `k * x`, with k a float or an integer, through `f`.
fn register_scale<T: Clone + Send + Sync + 'static>(
    engine: &mut Engine,
    f: impl Fn(T, f64) -> RResult<T> + Clone + Send + Sync + 'static,
) {
    let g = f.clone();
    engine.register_fn("*", move |a: T, k: f64| g(a, k));
    let g = f.clone();
    engine.register_fn("*", move |a: T, k: i64| g(a, k as f64));
    let g = f.clone();
    engine.register_fn("*", move |k: f64, a: T| g(a, k));
    engine.register_fn("*", move |k: i64, a: T| f(a, k as f64));
}

fn register(engine: &mut Engine, session: Arc<Mutex<Session>>, output: Output, run: &Run) {
    engine.register_type_with_name::<Identity>("identity");
    engine.register_type_with_name::<LoraMix>("lora mix");
    engine.register_type_with_name::<Image>("image");
    engine.register_fn("to_string", |id: &mut Identity| describe_identity(id));
    engine.register_fn("to_debug", |id: &mut Identity| describe_identity(id));
    engine.register_fn("to_string", |m: &mut LoraMix| describe_mix(m));
    engine.register_fn("to_debug", |m: &mut LoraMix| describe_mix(m));
    engine.register_fn("to_string", |i: &mut Image| i.summary());
    engine.register_fn("to_debug", |i: &mut Image| i.summary());
    engine.register_get("photos", |id: &mut Identity| id.photos() as i64);
    engine.register_get("hash", |id: &mut Identity| id.hash());
    engine.register_get("sources", |id: &mut Identity| {
        id.sources().iter().map(|s| Dynamic::from(s.label.clone())).collect::<Array>()
    });
    engine.register_get("terms", |m: &mut LoraMix| m.terms().len() as i64);
    engine.register_get("width", |i: &mut Image| i.width as i64);
    engine.register_get("height", |i: &mut Image| i.height as i64);
    engine.register_get("seed", |i: &mut Image| i.seed as i64);
    engine.register_get("prompt", |i: &mut Image| i.prompt.clone());
    engine.register_get("path", |i: &mut Image| {
        i.path.as_ref().map(|p| Dynamic::from(p.display().to_string())).unwrap_or(Dynamic::UNIT)
    });
    identity::register(engine, &session);
    lora::register(engine, &session);
    image::register(engine, &session, &output, run);
    sweep::register(engine, &output, run);
    session_fns::register(engine, &session);
    space::register(engine, &session);
}
