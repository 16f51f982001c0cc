//! The session itself: which models, unloading, help.
use super::*;

pub(super) fn register(engine: &mut Engine, session: &Arc<Mutex<Session>>) {
    // the session
    let s = session.clone();
    engine.register_fn("models", move || -> RResult<String> {
        let g = lock(&s)?;
        let mut out = String::new();
        for m in g.models() {
            let path = m.path.map(|p| p.display().to_string()).unwrap_or_else(|| "(not configured)".into());
            out.push_str(&format!("{:<11} {:<8} {path}\n", m.name, if m.loaded { "loaded" } else { "-" }));
        }
        let (photos, prompts, loras) = g.cache_counts();
        out.push_str(&format!(
            "caches: {photos} encoded photo(s), {prompts} prompt encoding(s), {loras} synthesized LoRA(s)"
        ));
        Ok(out)
    });
    let s = session.clone();
    engine.register_fn("unload", move |name: ImmutableString| -> RResult<String> {
        let freed = from_lib(lock(&s)?.unload(&name))?;
        Ok(if freed.is_empty() {
            format!("{name}: nothing was loaded")
        } else {
            format!("unloaded {}", freed.join(", "))
        })
    });
    engine.register_fn("help", || api::help(None));
    engine.register_fn("help", |n: ImmutableString| api::help(Some(&n)));
}
