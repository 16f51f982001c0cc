//! `import "file"` in recipes: Rhai's file resolver, guarded. An import cycle (`import "self"` in self.rhai, or
//! a → b → a) and nesting deeper than `MAX_DEPTH` are errors naming the chain, instead of a stack overflow; a path
//! that is not a regular file (a FIFO would block forever) is refused before it is opened.
use rhai::module_resolvers::FileModuleResolver;
use rhai::{Engine, EvalAltResult, GlobalRuntimeState, ModuleResolver, Position, Scope, Shared};
use std::path::PathBuf;
use std::sync::Mutex;

/// The deepest chain of imports a recipe may build.
pub const MAX_DEPTH: usize = 16;

pub struct GuardedImports {
    files: FileModuleResolver,
    /// The files being imported now, outermost first.
    chain: Mutex<Vec<PathBuf>>,
}

impl GuardedImports {
    pub fn new() -> Self {
        GuardedImports { files: FileModuleResolver::new(), chain: Mutex::new(Vec::new()) }
    }
}

impl Default for GuardedImports {
    fn default() -> Self {
        Self::new()
    }
}

fn refuse(msg: String, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos))
}

impl ModuleResolver for GuardedImports {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<rhai::Module>, Box<EvalAltResult>> {
        let global = &mut engine.new_global_runtime_state();
        global.source = source.map(Into::into);
        self.resolve_raw(engine, global, &mut Scope::new(), path, pos)
    }

    fn resolve_raw(
        &self,
        engine: &Engine,
        global: &mut GlobalRuntimeState,
        scope: &mut Scope,
        path: &str,
        pos: Position,
    ) -> Result<Shared<rhai::Module>, Box<EvalAltResult>> {
        let source = global.source().map(PathBuf::from);
        let file = self.files.get_file_path(path, source.as_deref());
        if std::fs::metadata(&file).is_ok_and(|m| !m.is_file()) {
            return Err(refuse(format!("import \"{path}\": {} is not a regular file", file.display()), pos));
        }
        let canonical = std::fs::canonicalize(&file).ok();
        let key = canonical.clone().unwrap_or_else(|| file.clone());
        {
            let mut chain = self.chain.lock().map_err(|_| refuse("import: state poisoned".into(), pos))?;
            let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let names = |c: &[PathBuf]| c.iter().map(name).collect::<Vec<_>>().join(" → ");
            // the same file again (by its canonical path, or its name where the resolver's path does not exist)
            if chain.iter().any(|p| p == &key || (canonical.is_none() && name(p) == name(&key))) {
                return Err(refuse(format!("import cycle: {} → {}", names(&chain), name(&key)), pos));
            }
            if chain.len() >= MAX_DEPTH {
                return Err(refuse(format!("imports nested deeper than {MAX_DEPTH}: {}", names(&chain)), pos));
            }
            chain.push(key.clone());
        }
        let out = self.files.resolve_raw(engine, global, scope, path, pos);
        if let Ok(mut chain) = self.chain.lock() {
            chain.retain(|p| p != &key);
        }
        out
    }
}
