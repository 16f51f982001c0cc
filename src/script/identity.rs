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
    engine.register_fn("finetune", move |id: Identity, o: Map| -> RResult<Identity> {
        let f = finetune_opts(&o)?;
        let (trained, _) = from_lib(lock(&s)?.finetune(&id, &f))?;
        Ok(trained)
    });
    let s = session.clone();
    engine.register_fn("finetune_lora", move |l: Dynamic, o: Map| -> RResult<LoraMix> {
        let f = finetune_opts(&o)?;
        let mix = match l.clone().try_cast::<Identity>() {
            Some(id) => LoraMix::lora(&id, f.options.strength),
            None => mix_of(&l, "finetune_lora")?,
        };
        let (trained, _) = from_lib(lock(&s)?.finetune_lora(&mix, &f))?;
        Ok(trained)
    });
    let s = session.clone();
    engine.register_fn("training_log", move || -> RResult<Map> {
        let s = lock(&s)?;
        let log = s.training_log();
        let column = |f: &dyn Fn(&crate::train::finetune::StepReport) -> Dynamic| -> Dynamic {
            Dynamic::from_array(log.iter().map(f).collect())
        };
        let mut m = Map::new();
        m.insert("step".into(), column(&|r| Dynamic::from_int(r.step as i64)));
        m.insert("loss".into(), column(&|r| Dynamic::from_float(r.loss)));
        m.insert("lr".into(), column(&|r| Dynamic::from_float(r.lr)));
        m.insert("grad_norm".into(), column(&|r| Dynamic::from_float(r.grad_norm)));
        Ok(m)
    });
    let s = session.clone();
    register_scale(engine, move |a: Identity, k: f64| -> RResult<Identity> { from_lib(lock(&s)?.scale(&a, k)) });
}

/// The options map of `finetune(id, #{ … })`.
fn finetune_opts(o: &Map) -> RResult<crate::session::Finetune> {
    use crate::train::adamw::{AdamWConfig, Schedule};
    use crate::train::finetune::FinetuneOptions;
    check_keys(
        o,
        &[
            "photos",
            "steps",
            "lr",
            "prompt",
            "size",
            "seed",
            "warmup",
            "schedule",
            "max_grad_norm",
            "min_snr_gamma",
            "strength",
            "sample_steps",
            "weight_decay",
            "gradient_checkpointing",
        ],
        "finetune",
    )?;
    let photos: Vec<std::path::PathBuf> = match o.get("photos") {
        None => return err("finetune: give `photos` (the photos to train on: a file name or an array of them)"),
        Some(p) if p.is_string() => vec![string(p, "photos")?.into()],
        Some(p) => p
            .clone()
            .into_typed_array::<Dynamic>()
            .or_else(|_| err("finetune: `photos` is a file name or an array of them"))?
            .iter()
            .map(|d| string(d, "photos").map(Into::into))
            .collect::<RResult<_>>()?,
    };
    let count = |k: &str, d: i64| -> RResult<usize> {
        match o.get(k).map(|v| int(v, k)).transpose()?.unwrap_or(d) {
            n if n >= 0 => Ok(n as usize),
            n => err(format!("finetune: {k} must be 0 or more, got {n}")),
        }
    };
    let real = |k: &str| -> RResult<Option<f64>> { o.get(k).map(|v| num(v, k)).transpose() };
    let d = FinetuneOptions::default();
    let options = FinetuneOptions {
        steps: count("steps", 50)?,
        adamw: AdamWConfig {
            lr: real("lr")?.unwrap_or(d.adamw.lr),
            weight_decay: real("weight_decay")?.unwrap_or(d.adamw.weight_decay),
            ..d.adamw
        },
        warmup: count("warmup", 0)?,
        schedule: match o.get("schedule") {
            Some(s) => from_lib(Schedule::parse(&string(s, "schedule")?))?,
            None => Schedule::Constant,
        },
        max_grad_norm: match real("max_grad_norm")? {
            Some(c) if c <= 0.0 => None,
            Some(c) => Some(c),
            None => d.max_grad_norm,
        },
        loss: crate::train::step::LossOptions { min_snr_gamma: real("min_snr_gamma")? },
        seed: count("seed", 0)? as u64,
        strength: real("strength")?.unwrap_or(1.0),
        checkpointing: match o.get("gradient_checkpointing") {
            Some(s) => from_lib(crate::train::step::Checkpointing::parse(&string(s, "gradient_checkpointing")?))?,
            None => d.checkpointing,
        },
    };
    Ok(crate::session::Finetune {
        photos,
        prompt: o.get("prompt").map(|p| string(p, "prompt")).transpose()?,
        size: o.get("size").map(|_| count("size", 0)).transpose()?,
        options,
        sample_steps: count("sample_steps", 0)?,
    })
}
