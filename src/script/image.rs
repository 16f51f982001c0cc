//! Images: generation, previews, contact sheets and plots, PNG output, the face score.
use super::*;

pub(super) fn register(engine: &mut Engine, session: &Arc<Mutex<Session>>, output: &Output, run: &Run) {
    // images
    let s = session.clone();
    engine.register_fn("generate", move |prompt: ImmutableString, m: Map| -> RResult<Dynamic> {
        let req = generate_opts(&prompt, &m)?;
        if m.contains_key("batch") {
            // an array of images, one per seed
            Ok(Dynamic::from(
                from_lib(lock(&s)?.generate_batch(&req))?.into_iter().map(Dynamic::from).collect::<Array>(),
            ))
        } else {
            Ok(Dynamic::from(from_lib(lock(&s)?.generate(&req))?))
        }
    });
    let s = session.clone();
    engine.register_fn("generate", move |prompt: ImmutableString| -> RResult<Image> {
        from_lib(lock(&s)?.generate(&Generate::new(prompt.as_str())))
    });
    let s = session.clone();
    let refine = move |img: Image, m: Map| -> RResult<Image> {
        check_keys(
            &m,
            &[
                "lora", "prompt", "negative", "strength", "padding", "size", "face", "box", "seed", "steps", "cfg",
                "sampler",
            ],
            "refine_face",
        )?;
        let mut r = crate::session::RefineFace { pick: pick(&m)?, ..Default::default() };
        if let Some(l) = m.get("lora") {
            r.lora = Some(mix_of(l, "refine_face")?);
        }
        let text = |k: &str| m.get(k).map(|v| string(v, k)).transpose();
        r.prompt = text("prompt")?;
        r.negative = text("negative")?;
        if let Some(v) = m.get("strength") {
            r.strength = num(v, "strength")?;
        }
        if let Some(v) = m.get("padding") {
            r.padding = num(v, "padding")?;
        }
        if let Some(v) = m.get("size") {
            r.size = int(v, "size")?.max(0) as usize;
        }
        if let Some(v) = m.get("seed") {
            r.seed = Some(int(v, "seed")?.max(0) as u64);
        }
        if let Some(v) = m.get("steps") {
            r.steps = Some(int(v, "steps")?.max(1) as usize);
        }
        if let Some(v) = m.get("cfg") {
            r.cfg = Some(num(v, "cfg")?);
        }
        if let Some(v) = m.get("sampler") {
            r.sampler = Some(from_lib(SamplerKind::parse(&string(v, "sampler")?))?);
        }
        from_lib(lock(&s)?.refine_face(&img, &r))
    };
    let f = refine.clone();
    engine.register_fn("refine_face", move |img: Image| f(img, Map::new()));
    engine.register_fn("refine_face", move |img: Image, m: Map| refine(img, m));
    let o = output.clone();
    engine.register_fn("show", move |img: Image| o(Out::Image(img)));
    let s = session.clone();
    engine.register_fn("load_image", move |p: ImmutableString| -> RResult<Image> {
        from_lib(lock(&s)?.load_image(Path::new(p.as_str())))
    });
    let s = session.clone();
    let grid = move |images: Array, m: Map| -> RResult<Image> {
        check_keys(&m, &["cols", "labels", "title"], "grid")?;
        let images: Vec<Image> = images
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.clone()
                    .try_cast::<Image>()
                    .ok_or_else(|| format!("grid: item {i} is {}, not an image", d.type_name()).into())
            })
            .collect::<RResult<_>>()?;
        let cols = m.get("cols").map(|c| int(c, "cols")).transpose()?;
        if cols.is_some_and(|c| c < 1) {
            return err("grid: cols must be at least 1");
        }
        let labels: Option<Vec<String>> = m
            .get("labels")
            .map(|l| {
                l.clone()
                    .into_typed_array::<Dynamic>()
                    .or_else(|_| err("labels: expected an array of strings"))
                    .and_then(|a| a.iter().map(|x| Ok(x.to_string())).collect())
            })
            .transpose()?;
        let title = m.get("title").map(|t| string(t, "title")).transpose()?;
        from_lib(lock(&s)?.grid(&images, labels.as_deref(), cols.map(|c| c as usize), title.as_deref()))
    };
    let f = grid.clone();
    engine.register_fn("grid", move |images: Array| f(images, Map::new()));
    engine.register_fn("grid", move |images: Array, m: Map| grid(images, m));
    let o = output.clone();
    let plot = move |xs: Array, ys: Array, m: Map| -> RResult<()> {
        check_keys(&m, &["title", "x", "y"], "plot")?;
        let nums = |a: &Array, what: &str| a.iter().map(|v| num(v, what)).collect::<RResult<Vec<f64>>>();
        let text = |k: &str| m.get(k).map(|t| string(t, k)).transpose().map(|t| t.unwrap_or_default());
        let p = from_lib(crate::render::plot::Plot::new(
            &nums(&xs, "plot xs")?,
            &nums(&ys, "plot ys")?,
            &text("title")?,
            &text("x")?,
            &text("y")?,
        ))?;
        o(Out::Plot(p));
        Ok(())
    };
    let (s, o) = (session.clone(), output.clone());
    engine.register_fn("plot_loss", move || -> RResult<()> {
        let log = lock(&s)?.training_log().to_vec();
        if log.is_empty() {
            return err("plot_loss: no fine-tune has run in this session yet (finetune or finetune_lora first)");
        }
        let steps: Vec<f64> = log.iter().map(|r| r.step as f64).collect();
        let losses: Vec<f64> = log.iter().map(|r| r.loss).collect();
        let title = format!("training loss, {} of {} steps", log.len(), log[0].total);
        o(Out::Plot(from_lib(crate::render::plot::Plot::new(&steps, &losses, &title, "step", "loss"))?));
        Ok(())
    });
    let (s, o) = (session.clone(), output.clone());
    engine.register_fn("plot_loss", move |path: &str| -> RResult<()> {
        let (steps, losses) = from_lib(lock(&s)?.read_loss_log(Path::new(path)))?;
        let title = format!("training loss, {} steps ({path})", steps.len());
        o(Out::Plot(from_lib(crate::render::plot::Plot::new(&steps, &losses, &title, "step", "loss"))?));
        Ok(())
    });
    let f = plot.clone();
    engine.register_fn("plot", move |xs: Array, ys: Array| f(xs, ys, Map::new()));
    engine.register_fn("plot", move |xs: Array, ys: Array, m: Map| plot(xs, ys, m));
    let s = session.clone();
    let (r, o) = (run.clone(), output.clone());
    let save = move |img: &mut Image, p: &str, opts: Map| -> RResult<Image> {
        let mut ow = overwrite(&opts, "save")?;
        let path = Path::new(p);
        let (recipe, shard) = {
            let mut run = r.lock().or_else(|_| err("the run state is unusable after an earlier crash"))?;
            if run.replace.remove(path) {
                // `pending` found a broken file here under --resume: it is made again
                ow = true;
            } else if run.ctx.resume && !ow {
                if let crate::files::output::OutputState::Complete = crate::files::output::output_state(path) {
                    o(Out::Text(format!("resume: {p} is already done; kept")));
                    img.path = Some(path.to_path_buf());
                    return Ok(img.clone());
                }
            }
            (run.ctx.recipe.clone(), run.ctx.shard)
        };
        // a run's images say which recipe and shard made them (for `hyperlora gather`); the pixels do not change
        let mut tagged = img.clone();
        if let Some(name) = recipe {
            tagged.settings.retain(|(k, _)| k != "recipe" && k != "shard");
            tagged.settings.push(("recipe".into(), name));
            tagged.settings.push(("shard".into(), shard.to_string()));
        }
        from_lib(lock(&s)?.save_image(&mut tagged, path, ow))?;
        *img = tagged;
        Ok(img.clone())
    };
    let f = save.clone();
    engine.register_fn("save", move |img: &mut Image, p: ImmutableString| f(img, &p, Map::new()));
    engine.register_fn("save", move |img: &mut Image, p: ImmutableString, o: Map| save(img, &p, o));
    let s = session.clone();
    let score = move |img: &mut Image, id: Identity, m: Map| -> RResult<f64> {
        check_keys(&m, &["box", "face"], "face_score")?;
        let p = pick(&m)?;
        let v = from_lib(lock(&s)?.face_score(img, &id, p))?;
        // recorded in the image, so a later `save` writes it into the PNG (and `gather` lists it)
        img.settings.retain(|(k, _)| k != "face_score" && k != "face_score_identity");
        img.settings.push(("face_score".into(), format!("{v:.6}")));
        img.settings.push(("face_score_identity".into(), id.short_hash()));
        Ok(v)
    };
    let f = score.clone();
    engine.register_fn("face_score", move |img: &mut Image, id: Identity| f(img, id, Map::new()));
    engine.register_fn("face_score", move |img: &mut Image, id: Identity, m: Map| score(img, id, m));
}
