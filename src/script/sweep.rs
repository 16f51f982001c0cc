//! Sweeps over many machines: this process's share of the items, and resuming a run that was cut short.
use super::*;
use crate::files::output::OutputState;

pub(super) fn register(engine: &mut Engine, output: &Output, run: &Run) {
    let state = |r: &Run| -> RResult<RunContext> {
        r.lock().map(|r| r.ctx.clone()).or_else(|_| err("the run state is unusable after an earlier crash"))
    };
    let r = run.clone();
    engine.register_fn("shard", move |items: Array| -> RResult<Array> { Ok(state(&r)?.shard.take(&items)) });
    let r = run.clone();
    engine.register_fn("shard_info", move || -> RResult<Map> {
        let s = state(&r)?.shard;
        let mut m = Map::new();
        m.insert("index".into(), Dynamic::from(s.index as i64));
        m.insert("count".into(), Dynamic::from(s.count as i64));
        Ok(m)
    });
    let (r, o) = (run.clone(), output.clone());
    engine.register_fn("pending", move |p: ImmutableString| -> RResult<bool> {
        let path = Path::new(p.as_str());
        let mut run = r.lock().or_else(|_| err("the run state is unusable after an earlier crash"))?;
        match crate::files::output::output_state(path) {
            OutputState::Missing => Ok(true),
            _ if !run.ctx.resume => err(format!(
                "{p} exists (made by an earlier run?); nothing is overwritten: `hyperlora run --resume` skips finished items (in the REPL or TUI, move the file away or pick another name)"
            )),
            OutputState::Complete => {
                o(Out::Text(format!("resume: {p} is done; skipped")));
                Ok(false)
            }
            OutputState::Incomplete(why) => {
                if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
                    return err(format!("{p}: {why}; not replaced"));
                }
                o(Out::Text(format!("resume: {p} is incomplete ({why}); made again")));
                run.replace.insert(path.to_path_buf());
                Ok(true)
            }
        }
    });
}
