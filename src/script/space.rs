//! Identity space: coefficient values, their vector operations, PCA, nearest neighbours, walks, libraries.
use super::*;
use crate::identity::library::Library;
use crate::identity::space::{block_of, orthogonalize, similarity_by_module, Coeffs};

/// An identity or a coefficient value as coefficients (identities: their raw tokens).
fn coeffs_of(s: &Arc<Mutex<Session>>, d: &Dynamic, what: &str) -> RResult<Coeffs> {
    if let Some(c) = d.clone().try_cast::<Coeffs>() {
        return Ok(c);
    }
    if let Some(id) = d.clone().try_cast::<Identity>() {
        return from_lib(lock(s)?.coeffs(&id));
    }
    err(format!("{what}: expected an identity or coefficients, got {}", d.type_name()))
}

fn floats(a: &Array, what: &str) -> RResult<Vec<f64>> {
    a.iter().map(|v| num(v, what)).collect()
}

fn ids(a: &Array, what: &str) -> RResult<Vec<Identity>> {
    a.iter()
        .enumerate()
        .map(|(i, d)| {
            d.clone()
                .try_cast::<Identity>()
                .ok_or_else(|| format!("{what}: item {i} is {}, not an identity", d.type_name()).into())
        })
        .collect()
}

pub fn describe_library(l: &Library) -> String {
    match l.list() {
        Ok(v) => {
            format!("library {} ({} identit{})", l.dir().display(), v.len(), if v.len() == 1 { "y" } else { "ies" })
        }
        Err(e) => format!("library {} ({e})", l.dir().display()),
    }
}

pub(super) fn register(engine: &mut Engine, session: &Arc<Mutex<Session>>) {
    engine.register_type_with_name::<Coeffs>("coeffs");
    engine.register_type_with_name::<Library>("library");
    engine.register_fn("to_string", |c: &mut Coeffs| c.summary());
    engine.register_fn("to_debug", |c: &mut Coeffs| c.summary());
    engine.register_fn("to_string", |l: &mut Library| describe_library(l));
    engine.register_fn("to_debug", |l: &mut Library| describe_library(l));

    // coefficient values
    let s = session.clone();
    engine.register_fn("coeffs", move |id: Identity| -> RResult<Coeffs> { from_lib(lock(&s)?.coeffs(&id)) });
    let s = session.clone();
    engine.register_get("coeffs", move |id: &mut Identity| -> RResult<Coeffs> { from_lib(lock(&s)?.coeffs(id)) });
    engine.register_get("normalized", |c: &mut Coeffs| c.normalized());
    engine.register_get("shape", |c: &mut Coeffs| vec![Dynamic::from(c.rows() as i64), Dynamic::from(c.k() as i64)]);
    engine.register_get("down", |c: &mut Coeffs| -> RResult<Coeffs> { from_lib(c.factor(false)) });
    engine.register_get("up", |c: &mut Coeffs| -> RResult<Coeffs> { from_lib(c.factor(true)) });
    engine.register_indexer_get(|c: &mut Coeffs, i: i64| -> RResult<Array> {
        let i = usize::try_from(i).map_err(|_| format!("token {i}: expected 0..{}", c.rows()))?;
        Ok(from_lib(c.token(i))?.into_iter().map(|v| Dynamic::from(v as f64)).collect())
    });
    // `module` (as the issue names it) and `of_module` (its first name, from when `module` was a reserved word)
    for name in ["module", "of_module"] {
        engine.register_fn(name, |c: &mut Coeffs, name: ImmutableString| -> RResult<Coeffs> {
            from_lib(c.module_index(&name).and_then(|m| c.module(m)))
        });
        engine.register_fn(name, |c: &mut Coeffs, m: i64| -> RResult<Coeffs> {
            from_lib(c.module_index(&m.to_string()).and_then(|m| c.module(m)))
        });
    }
    engine.register_fn("proj", |c: &mut Coeffs, p: ImmutableString| -> RResult<Coeffs> { from_lib(c.proj(&p)) });
    engine.register_fn("to_array", |c: Coeffs| -> Array {
        c.values()
            .chunks(c.k())
            .map(|r| Dynamic::from(r.iter().map(|v| Dynamic::from(*v as f64)).collect::<Array>()))
            .collect()
    });
    engine.register_fn("coeffs_from", |a: Array, like: Coeffs| -> RResult<Coeffs> {
        let rows = a
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.clone()
                    .into_typed_array::<Dynamic>()
                    .map_err(|_| format!("coeffs_from: row {i} is not an array of numbers").into())
                    .and_then(|r| floats(&r, "coeffs_from"))
            })
            .collect::<RResult<Vec<_>>>()?;
        from_lib(Coeffs::from_rows(&rows, &like))
    });
    let s = session.clone();
    engine.register_fn("identity_from", move |c: Coeffs, m: Map| -> RResult<Identity> {
        check_keys(&m, &["like"], "identity_from")?;
        let like = m
            .get("like")
            .and_then(|d| d.clone().try_cast::<Identity>())
            .ok_or("identity_from: give #{ like: an identity } (its variant and photo count are kept)")?;
        from_lib(lock(&s)?.identity_from(
            &c,
            &like,
            &format!("identity_from(coefficients, like {})", like.short_hash()),
        ))
    });
    engine.register_fn("+", |a: Coeffs, b: Coeffs| -> RResult<Coeffs> { from_lib(a.add(&b)) });
    engine.register_fn("-", |a: Coeffs, b: Coeffs| -> RResult<Coeffs> { from_lib(a.sub(&b)) });
    register_scale(engine, |a: Coeffs, k: f64| -> RResult<Coeffs> {
        Ok(a.scale(from_lib(crate::session::finite(k, "scale"))?))
    });

    // operations on identities or coefficients (identities: raw tokens)
    let two = |name: &'static str, f: fn(&Coeffs, &Coeffs) -> crate::Result<Dynamic>| {
        let s = session.clone();
        move |a: Dynamic, b: Dynamic| -> RResult<Dynamic> {
            from_lib(f(&coeffs_of(&s, &a, name)?, &coeffs_of(&s, &b, name)?))
        }
    };
    engine.register_fn("dot", two("dot", |a, b| a.dot(b).map(Dynamic::from)));
    engine.register_fn("cosine", two("cosine", |a, b| a.cosine(b).map(Dynamic::from)));
    engine.register_fn("direction", two("direction", |a, b| b.sub(a).map(Dynamic::from)));
    engine.register_fn("project", two("project", |x, d| x.project(d).map(Dynamic::from)));
    engine.register_fn("reject", two("reject", |x, d| x.reject(d).map(Dynamic::from)));
    let s = session.clone();
    engine.register_fn("norm", move |a: Dynamic| -> RResult<f64> { Ok(coeffs_of(&s, &a, "norm")?.norm()) });
    let s = session.clone();
    engine.register_fn("orthogonalize", move |a: Array| -> RResult<Array> {
        let dirs = a.iter().map(|d| coeffs_of(&s, d, "orthogonalize")).collect::<RResult<Vec<_>>>()?;
        Ok(from_lib(orthogonalize(&dirs))?.into_iter().map(Dynamic::from).collect())
    });
    let s = session.clone();
    engine.register_fn("similarity_by_module", move |a: Identity, b: Identity| -> RResult<Array> {
        let (ca, cb) = {
            let mut g = lock(&s)?;
            (from_lib(g.coeffs(&a))?, from_lib(g.coeffs(&b))?)
        };
        Ok(from_lib(similarity_by_module(&ca, &cb))?
            .into_iter()
            .map(|(i, name, cos)| {
                let mut m = Map::new();
                m.insert("index".into(), Dynamic::from(i as i64));
                m.insert("block".into(), Dynamic::from(block_of(&name)));
                m.insert("module".into(), Dynamic::from(name));
                m.insert("cosine".into(), Dynamic::from(cos));
                Dynamic::from(m)
            })
            .collect())
    });

    // sets of identities
    let s = session.clone();
    engine.register_fn("pca", move |a: Array, k: i64| -> RResult<Map> {
        let ids = ids(&a, "pca")?;
        let k = usize::try_from(k).ok().filter(|k| *k >= 1).ok_or("pca: k must be at least 1")?;
        let p = from_lib(lock(&s)?.pca(&ids, k))?;
        let mut m = Map::new();
        m.insert("directions".into(), Dynamic::from(p.directions.into_iter().map(Dynamic::from).collect::<Array>()));
        m.insert("explained".into(), Dynamic::from(p.explained.into_iter().map(Dynamic::from).collect::<Array>()));
        m.insert(
            "scores".into(),
            Dynamic::from(
                p.scores
                    .into_iter()
                    .map(|r| Dynamic::from(r.into_iter().map(Dynamic::from).collect::<Array>()))
                    .collect::<Array>(),
            ),
        );
        m.insert("mean".into(), Dynamic::from(p.mean));
        Ok(m)
    });
    let s = session.clone();
    let nearest = move |pool: Dynamic, id: Identity, k: i64| -> RResult<Array> {
        let candidates: Vec<(String, Identity)> = if let Some(l) = pool.clone().try_cast::<Library>() {
            let names = from_lib(l.list())?;
            let mut g = lock(&s)?;
            names.into_iter().map(|(n, _)| Ok((n.clone(), from_lib(g.library_get(&l, &n))?))).collect::<RResult<_>>()?
        } else if let Some(a) = pool.clone().try_cast::<Array>() {
            ids(&a, "nearest")?.into_iter().enumerate().map(|(i, id)| (i.to_string(), id)).collect()
        } else {
            return err(format!("nearest: expected an array of identities or a library, got {}", pool.type_name()));
        };
        let k = usize::try_from(k).unwrap_or(0);
        Ok(from_lib(lock(&s)?.nearest(&candidates, &id, k))?
            .into_iter()
            .map(|(n, c)| {
                let mut m = Map::new();
                m.insert("name".into(), Dynamic::from(n));
                m.insert("cosine".into(), Dynamic::from(c));
                Dynamic::from(m)
            })
            .collect())
    };
    engine.register_fn("nearest", nearest);
    let s = session.clone();
    let walk = move |id: Identity, dir: Dynamic, steps: Vec<f64>| -> RResult<Array> {
        let d = coeffs_of(&s, &dir, "walk")?;
        Ok(from_lib(lock(&s)?.walk(&id, &d, &steps))?.into_iter().map(Dynamic::from).collect())
    };
    let f = walk.clone();
    engine.register_fn("walk", move |id: Identity, dir: Dynamic| f(id, dir, vec![-1.0, -0.5, 0.0, 0.5, 1.0]));
    engine.register_fn("walk", move |id: Identity, dir: Dynamic, steps: Array| {
        walk(id, dir, floats(&steps, "walk steps")?)
    });

    // libraries
    let s = session.clone();
    engine.register_fn("library", move |dir: ImmutableString| -> RResult<Library> {
        from_lib(lock(&s)?.library(Path::new(dir.as_str())))
    });
    let s = session.clone();
    let save = move |l: &mut Library, name: &str, id: Identity, o: Map| -> RResult<String> {
        check_keys(&o, &["overwrite", "dtype"], "library save")?;
        let ow = o.get("overwrite").map(|d| flag(d, "overwrite")).transpose()?.unwrap_or(false);
        let dtype = match o.get("dtype").map(|d| string(d, "dtype")).transpose()?.as_deref() {
            None | Some("f32") => candle_core::DType::F32,
            Some("f16") => candle_core::DType::F16,
            Some(x) => return err(format!("dtype `{x}`: expected f32 or f16")),
        };
        from_lib(lock(&s)?.check_identity(&id))?;
        let e = from_lib(l.save(name, &id, dtype, ow))?;
        Ok(format!(
            "{name} → {} ({}, {})",
            l.dir().join(&e.file).display(),
            e.dtype,
            crate::files::provenance::short(&e.hash)
        ))
    };
    let f = save.clone();
    engine.register_fn("save", move |l: &mut Library, name: ImmutableString, id: Identity| f(l, &name, id, Map::new()));
    engine
        .register_fn("save", move |l: &mut Library, name: ImmutableString, id: Identity, o: Map| save(l, &name, id, o));
    let s = session.clone();
    engine.register_fn("get", move |l: &mut Library, name: ImmutableString| -> RResult<Identity> {
        from_lib(lock(&s)?.library_get(l, &name))
    });
    engine.register_fn("list", |l: &mut Library| -> RResult<Array> {
        Ok(from_lib(l.list())?
            .into_iter()
            .map(|(n, e)| {
                let mut m = Map::new();
                m.insert("name".into(), Dynamic::from(n));
                m.insert("photos".into(), Dynamic::from(e.photos as i64));
                m.insert("hash".into(), Dynamic::from(e.hash));
                m.insert("variant".into(), Dynamic::from(e.variant.label));
                m.insert("saved".into(), Dynamic::from(e.saved as i64));
                m.insert("dtype".into(), Dynamic::from(e.dtype));
                Dynamic::from(m)
            })
            .collect())
    });
    engine.register_fn("remove", |l: &mut Library, name: ImmutableString| -> RResult<String> {
        let e = from_lib(l.remove(&name))?;
        Ok(format!("removed {name} ({})", e.file))
    });
}
