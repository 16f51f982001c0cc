//! LoRA mixes: identity and file terms, sliders, their algebra, and export as a LoRA file.
use super::*;

pub(super) fn register(engine: &mut Engine, session: &Arc<Mutex<Session>>) {
    // LoRA mixes
    let s = session.clone();
    engine.register_fn("lora", move |id: Identity| -> RResult<LoraMix> { from_lib(lock(&s)?.lora(&id, 1.0, 0.0)) });
    let s = session.clone();
    engine.register_fn("lora", move |id: Identity, w: Dynamic| -> RResult<LoraMix> {
        let (weight, base) = if let Some(m) = w.clone().try_cast::<Map>() {
            check_keys(&m, &["weight", "base_weight"], "lora")?;
            (
                m.get("weight").map(|v| num(v, "weight")).transpose()?.unwrap_or(1.0),
                m.get("base_weight").map(|v| num(v, "base_weight")).transpose()?.unwrap_or(0.0),
            )
        } else {
            (num(&w, "lora weight")?, 0.0)
        };
        from_lib(lock(&s)?.lora(&id, weight, base))
    });
    let s = session.clone();
    engine.register_fn("lora", move |p: ImmutableString, w: Dynamic| -> RResult<LoraMix> {
        from_lib(lock(&s)?.lora_file(Path::new(p.as_str()), num(&w, "lora weight")?))
    });
    let s = session.clone();
    engine.register_fn("lora", move |p: ImmutableString| -> RResult<LoraMix> {
        from_lib(lock(&s)?.lora_file(Path::new(p.as_str()), 1.0))
    });
    let s = session.clone();
    engine.register_fn("slider", move |a: Identity, b: Identity| -> RResult<LoraMix> {
        from_lib(lock(&s)?.slider(&a, &b))
    });
    let s = session.clone();
    engine.register_fn("+", move |a: LoraMix, b: LoraMix| -> RResult<LoraMix> { Ok(lock(&s)?.mix_add(&a, &b)) });
    let s = session.clone();
    engine.register_fn("-", move |a: LoraMix, b: LoraMix| -> RResult<LoraMix> { Ok(lock(&s)?.mix_sub(&a, &b)) });
    let s = session.clone();
    register_scale(engine, move |a: LoraMix, k: f64| -> RResult<LoraMix> { from_lib(lock(&s)?.mix_scale(&a, k)) });

    let s = session.clone();
    let export = move |mix: LoraMix, p: &str, o: Map| -> RResult<String> {
        let ow = overwrite(&o, "export_lora")?;
        let dtype = match o.get("dtype").map(|d| string(d, "dtype")).transpose()?.as_deref() {
            None | Some("f16") => candle_core::DType::F16,
            Some("f32") => candle_core::DType::F32,
            Some("bf16") => candle_core::DType::BF16,
            Some(x) => return err(format!("dtype `{x}`: expected f16, f32 or bf16")),
        };
        let r = from_lib(lock(&s)?.export_lora(&mix, Path::new(p), dtype, ow))?;
        Ok(format!(
            "{p} ({} tensors, {} layers, rank {}, {:.1} MB)",
            r.tensors,
            r.layers,
            r.max_rank,
            r.bytes as f64 / 1e6
        ))
    };
    let f = export.clone();
    engine.register_fn("export_lora", move |m: LoraMix, p: ImmutableString| f(m, &p, Map::new()));
    let f = export.clone();
    engine.register_fn("export_lora", move |m: LoraMix, p: ImmutableString, o: Map| f(m, &p, o));
    let f = export;
    engine
        .register_fn("export_lora", move |id: Identity, p: ImmutableString| f(LoraMix::lora(&id, 1.0), &p, Map::new()));
}
