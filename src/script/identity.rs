//! Identities: from photos and files, averaged and mixed, compared, and their algebra.
use super::*;

pub(super) fn register(engine: &mut Engine, session: &Arc<Mutex<Session>>) {
    // identities
    let s = session.clone();
    let make_identity = move |d: Dynamic| -> RResult<Identity> {
        let specs = photo_specs(&d)?;
        from_lib(lock(&s)?.identity(&specs))
    };
    let f = make_identity.clone();
    engine.register_fn("identity", move |p: ImmutableString| f(Dynamic::from(p)));
    let f = make_identity.clone();
    engine.register_fn("identity", move |a: Array| f(Dynamic::from(a)));
    let f = make_identity;
    engine.register_fn("identity", move |m: Map| f(Dynamic::from(m)));
    let s = session.clone();
    engine.register_fn("load_identity", move |p: ImmutableString| -> RResult<Identity> {
        from_lib(lock(&s)?.load_identity(Path::new(p.as_str())))
    });
    let s = session.clone();
    let save_id = move |id: Identity, p: &str, o: Map| -> RResult<String> {
        let ow = overwrite(&o, "save_identity")?;
        from_lib(lock(&s)?.save_identity(&id, Path::new(p), ow))?;
        Ok(p.to_string())
    };
    let f = save_id.clone();
    engine.register_fn("save_identity", move |id: Identity, p: ImmutableString| f(id, &p, Map::new()));
    engine.register_fn("save_identity", move |id: Identity, p: ImmutableString, o: Map| save_id(id, &p, o));
    let ids_of = |a: &Array| -> RResult<Vec<Identity>> {
        a.iter()
            .map(|d| {
                d.clone()
                    .try_cast::<Identity>()
                    .ok_or_else(|| format!("mean: expected identities, got {}", d.type_name()).into())
            })
            .collect()
    };
    let s = session.clone();
    engine.register_fn("mean", move |a: Array| -> RResult<Identity> { from_lib(lock(&s)?.mean(&ids_of(&a)?, None)) });
    let s = session.clone();
    engine.register_fn("mean", move |a: Array, w: Array| -> RResult<Identity> {
        let w: Vec<f64> = w.iter().map(|d| num(d, "mean weights")).collect::<RResult<_>>()?;
        from_lib(lock(&s)?.mean(&ids_of(&a)?, Some(&w)))
    });
    let s = session.clone();
    engine.register_fn("mix", move |a: Identity, b: Identity, t: Dynamic| -> RResult<Identity> {
        from_lib(lock(&s)?.mix(&a, &b, num(&t, "mix")?))
    });
    let s = session.clone();
    engine.register_fn("similarity", move |a: Identity, b: Identity| -> RResult<f64> {
        from_lib(lock(&s)?.similarity(&a, &b))
    });
    let s = session.clone();
    engine.register_fn("+", move |a: Identity, b: Identity| -> RResult<Identity> { from_lib(lock(&s)?.add(&a, &b)) });
    let s = session.clone();
    engine.register_fn("-", move |a: Identity, b: Identity| -> RResult<Identity> { from_lib(lock(&s)?.sub(&a, &b)) });
    let s = session.clone();
    register_scale(engine, move |a: Identity, k: f64| -> RResult<Identity> { from_lib(lock(&s)?.scale(&a, k)) });
}
