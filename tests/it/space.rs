//! Identity space: coefficient values and their laws, PCA, walks, libraries, refusals — on the tiny HyperLoRA
//! fixture with random encoder features, through the session and through scripts.
use crate::common::*;
use hyperlora::identity::library::Library;
use hyperlora::identity::space::{orthogonalize, pca, Coeffs};
use hyperlora::script::{Limits, Out, Script};
use hyperlora::session::{ModelPaths, Session};
use hyperlora::synthetic::hyper::random_features;
use hyperlora::{Identity, LoraMix};
use std::sync::{Arc, Mutex};

fn session(variant: &str) -> Session {
    hyperlora::front::args::quiet_session(ModelPaths { hyperlora: Some(fixture(variant)), ..Default::default() })
}

fn ids(s: &mut Session, n: usize) -> Vec<Identity> {
    (0..n)
        .map(|i| s.identity_from_features(&random_features(1 + i % 2, 512, 257, 32, 40 + i as u64).unwrap()).unwrap())
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, d| {
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    });
    assert!(worst <= tol, "{what}: max |a − b| = {worst} > {tol}");
}

#[test]
fn project_and_reject_split_a_vector() {
    let mut s = session("hyperlora-tiny");
    let p = ids(&mut s, 3);
    let (x, d) = (s.coeffs(&p[0]).unwrap(), s.coeffs(&p[1]).unwrap().sub(&s.coeffs(&p[2]).unwrap()).unwrap());
    let (pr, rj) = (x.project(&d).unwrap(), x.reject(&d).unwrap());
    close(pr.add(&rj).unwrap().values(), x.values(), 1e-5, "project + reject = x");
    assert!(rj.dot(&d).unwrap().abs() <= 1e-6 * x.norm() * d.norm(), "reject(x, d)·d = {}", rj.dot(&d).unwrap());
    // cosine and norm agree with dot
    let c = x.cosine(&d).unwrap();
    assert!((c - x.dot(&d).unwrap() / (x.norm() * d.norm())).abs() < 1e-12);
    // orthogonalize gives unit, mutually orthogonal directions
    let o = orthogonalize(&[d.clone(), x.clone(), d.scale(2.0)]).unwrap();
    assert_eq!(o.len(), 2, "a repeated direction adds nothing");
    assert!(
        (o[0].norm() - 1.0).abs() < 1e-6 && (o[1].norm() - 1.0).abs() < 1e-6 && o[0].dot(&o[1]).unwrap().abs() < 1e-6
    );
}

#[test]
fn pca_with_k_n_reconstructs_every_identity() {
    let mut s = session("hyperlora-tiny");
    let p = ids(&mut s, 5);
    let r = s.pca(&p, 5).unwrap();
    assert_eq!(r.directions.len(), 4, "5 centred points span 4 directions");
    let total: f64 = r.explained.iter().sum();
    assert!((total - 1.0).abs() < 1e-6 && r.explained.windows(2).all(|w| w[0] >= w[1]), "{:?}", r.explained);
    for (j, id) in p.iter().enumerate() {
        let mut x = r.mean.clone();
        for (i, d) in r.directions.iter().enumerate() {
            x = x.axpy(r.scores[i][j], d).unwrap();
        }
        let want = s.coeffs(id).unwrap();
        close(x.values(), want.values(), 1e-4 * (want.norm() as f32).max(1.0), &format!("identity {j}"));
    }
    // one direction: the first of the full decomposition
    let one = pca(&p.iter().map(|i| s.coeffs(i).unwrap()).collect::<Vec<_>>(), 1).unwrap();
    assert_eq!(one.directions.len(), 1);
    assert!(one.directions[0].cosine(&r.directions[0]).unwrap().abs() > 0.9999);
}

#[test]
fn identity_from_its_own_coeffs_gives_the_same_lora_bit_for_bit() {
    let mut s = session("hyperlora-tiny");
    let id = ids(&mut s, 1).remove(0);
    let own = s.coeffs(&id).unwrap();
    let back = s.identity_from(&own, &id, "round trip").unwrap();
    assert_eq!(back.variant(), id.variant());
    assert!(back.sources()[0].label.contains("round trip"));
    let (a, b) =
        (s.lora_weights(&LoraMix::lora(&id, 1.0)).unwrap(), s.lora_weights(&LoraMix::lora(&back, 1.0)).unwrap());
    assert_eq!(a.layers.len(), b.layers.len());
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert_eq!(x.target, y.target);
        for (p, q) in [(&x.down, &y.down), (&x.up, &y.up)] {
            let (p, q) = (
                p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                q.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()), "{}", x.target);
        }
    }
    // a walk step of 0 is the identity itself
    let dir = s.coeffs(&id).unwrap().scale(0.1);
    let w = s.walk(&id, &dir, &[0.0, 1.0]).unwrap();
    close(s.coeffs(&w[0]).unwrap().values(), s.coeffs(&id).unwrap().values(), 0.0, "walk 0");
    close(
        s.coeffs(&w[1]).unwrap().values(),
        &s.coeffs(&id).unwrap().values().iter().map(|v| v * 1.1).collect::<Vec<_>>(),
        1e-6,
        "walk 1",
    );
}

#[test]
fn views_by_module_projection_and_factor() {
    let mut s = session("hyperlora-tiny");
    let id = ids(&mut s, 1).remove(0);
    let c = s.coeffs(&id).unwrap();
    assert_eq!((c.rows(), c.k()), (272, 16));
    let m = c.module_index("lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2").unwrap();
    // the fixture's JSON order: down_blocks.1 (0–3), down_blocks.2 (4–11)
    assert!((4..12).contains(&m), "{m}");
    let v = c.module(m).unwrap().proj("to_v").unwrap();
    assert_eq!(v.tokens(), &[8 * m + 4, 8 * m + 5]);
    let up = v.factor(true).unwrap();
    assert_eq!(up.values(), &c.token(8 * m + 5).unwrap()[..]);
    // the normalised form is per-token unit length, and equals what the synthesis reads
    let n = c.normalized();
    let row = n.token(3).unwrap();
    assert!((row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() - 1.0).abs() < 1e-5);
    let want = id.coefficients().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close(n.values(), &want, 1e-6, "normalized = Identity::coefficients");
}

#[test]
fn refusals_name_what_was_expected() {
    let mut s = session("hyperlora-tiny");
    let p = ids(&mut s, 2);
    let c = s.coeffs(&p[0]).unwrap();
    let e = c.module_index("lora_unet_no_such_block").unwrap_err().to_string();
    assert!(e.contains("no module `lora_unet_no_such_block`") && e.contains("lora_unet_down_blocks_1"), "{e}");
    let e = c.module_index("99").unwrap_err().to_string();
    assert!(e.contains("34 modules"), "{e}");
    let e = c.proj("to_q").unwrap_err().to_string();
    assert!(e.contains(".module(name) first"), "{e}");
    let e = c.module(0).unwrap().proj("to_z").unwrap_err().to_string();
    assert!(e.contains("to_q") && e.contains("to_out"), "{e}");
    let e = c.module(0).unwrap().add(&c).unwrap_err().to_string();
    assert!(e.contains("shapes differ") && e.contains("all 272 tokens"), "{e}");
    let e = c.add(&c.normalized()).unwrap_err().to_string();
    assert!(e.contains("raw") && e.contains("normalised"), "{e}");
    let e = s.identity_from(&c.module(1).unwrap(), &p[0], "x").unwrap_err().to_string();
    assert!(e.contains("all 272 tokens"), "{e}");
    let e = Coeffs::from_rows(&[vec![0.0; 16]], &c).unwrap_err().to_string();
    assert!(e.contains("expected 272"), "{e}");
    // identities of another variant
    let mut other = session("hyperlora-tiny-base");
    let q = ids(&mut other, 1).remove(0);
    let e = s.coeffs(&q).unwrap_err().to_string();
    assert!(e.contains("hyperlora-tiny-base") && e.contains("hyperlora-tiny"), "{e}");
    let oc = other.coeffs(&q).unwrap();
    let e = c.dot(&oc).unwrap_err().to_string();
    assert!(e.contains("two variants"), "{e}");
}

#[test]
fn library_round_trip_f32_exact_and_f16_close() {
    let mut s = session("hyperlora-tiny");
    let p = ids(&mut s, 2);
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::open(&dir.path().join("lib")).unwrap();
    lib.save("alice", &p[0], candle_core::DType::F32, false).unwrap();
    lib.save("bob", &p[1], candle_core::DType::F16, false).unwrap();
    let names: Vec<String> = lib.list().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["alice", "bob"]);
    let a = lib.get("alice").unwrap();
    assert_eq!(a.hash(), p[0].hash(), "f32 storage is exact");
    let b = lib.get("bob").unwrap();
    let (x, y) = (s.coeffs(&b).unwrap(), s.coeffs(&p[1]).unwrap());
    let rel = x.sub(&y).unwrap().norm() / y.norm();
    assert!(rel < 1e-3, "f16 storage: relative error {rel}");
    assert!(b.similarity(&p[1]).unwrap() > 0.99999);
    // refusals: existing name, bad name, another variant, unknown name
    assert!(lib.save("alice", &p[1], candle_core::DType::F32, false).unwrap_err().to_string().contains("overwrite"));
    assert!(lib
        .save("../x", &p[1], candle_core::DType::F32, false)
        .unwrap_err()
        .to_string()
        .contains("letters, digits"));
    let mut other = session("hyperlora-tiny-base");
    let q = ids(&mut other, 1).remove(0);
    let e = lib.save("carol", &q, candle_core::DType::F32, false).unwrap_err().to_string();
    assert!(e.contains("hyperlora-tiny-base") && e.contains("hyperlora-tiny ("), "{e}");
    assert!(lib.get("nobody").unwrap_err().to_string().contains("alice"));
    // remove: the index forgets it and the file goes
    let e = lib.remove("bob").unwrap();
    assert!(!dir.path().join("lib").join(e.file).exists());
    assert_eq!(lib.list().unwrap().len(), 1);
    // a corrupt index is named
    std::fs::write(dir.path().join("lib/index.json"), "{").unwrap();
    assert!(Library::open(&dir.path().join("lib")).unwrap_err().to_string().contains("index.json"));
}

#[test]
fn scripts_see_coefficients() {
    let s = Arc::new(Mutex::new(session("hyperlora-tiny")));
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    let mut sc = Script::new(
        s.clone(),
        Arc::new(move |x: Out| {
            if let Out::Text(t) = x {
                o.lock().unwrap().push(t)
            }
        }),
        Limits::default(),
    );
    let p = ids(&mut s.lock().unwrap(), 3);
    for (i, id) in p.iter().enumerate() {
        sc.set(&format!("p{i}"), rhai::Dynamic::from(id.clone()));
    }
    let v = sc.eval("let c = coeffs(p0); c.shape").unwrap();
    assert_eq!(format!("{v:?}"), "[272, 16]");
    assert_eq!(sc.eval("p0.coeffs[5].len()").unwrap().as_int().unwrap(), 16);
    assert_eq!(sc.eval("c.module(4).proj(\"to_k\").down.shape[0]").unwrap().as_int().unwrap(), 1);
    // `module` as the issue spells it (a reserved word in plain Rhai), by name too, and `of_module` the same
    let by_name = "c.module(\"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2\")";
    assert_eq!(sc.eval(&format!("{by_name}.shape[0]")).unwrap().as_int().unwrap(), 8);
    assert!(sc.eval(&format!("{by_name}.to_array() == c.of_module(1).to_array()")).unwrap().as_bool().unwrap());
    assert!(!sc.eval("c.module(1).to_array() == c.module(0).to_array()").unwrap().as_bool().unwrap());
    let d = hyperlora::script::describe(&sc.eval("c").unwrap());
    assert!(d.contains("raw (before per-token normalisation)"), "{d}");
    let d = hyperlora::script::describe(&sc.eval("c.normalized").unwrap());
    assert!(d.contains("normalised"), "{d}");
    // laws through the script API
    let r = sc
        .eval("let d = direction(p1, p2); let r = reject(p0, d); dot(r, d) / (norm(r) * norm(d))")
        .unwrap()
        .as_float()
        .unwrap();
    assert!(r.abs() < 1e-6, "{r}");
    let same = sc
        .eval("similarity(identity_from(coeffs_from(to_array(c), c), #{ like: p0 }), p0)")
        .unwrap()
        .as_float()
        .unwrap();
    assert!((same - 1.0).abs() < 1e-9, "{same}");
    let n = sc.eval("walk(p0, direction(p1, p2), [0.0, 0.5, 1.0]).len()").unwrap().as_int().unwrap();
    assert_eq!(n, 3);
    let rows = sc.eval("let t = similarity_by_module(p0, p1); t.len()").unwrap().as_int().unwrap();
    assert_eq!(rows, 34);
    let first = hyperlora::script::describe(&sc.eval("t[0]").unwrap());
    assert!(first.contains("down_blocks.1") && first.contains("cosine"), "{first}");
    let k = sc.eval("let p = pca([p0, p1, p2], 2); p.directions.len() + p.scores[0].len()").unwrap().as_int().unwrap();
    assert_eq!(k, 2 + 3);
    let near = sc.eval("nearest([p1, p0, p2], p0, 1)[0].name").unwrap().into_string().unwrap();
    assert_eq!(near, "1", "p0 is nearest to itself (index 1 in the pool)");
    let e = sc.eval("c.module(\"nope\")").unwrap_err().message;
    assert!(e.contains("no module `nope`"), "{e}");
    let e = sc.eval("coeffs(p0) + coeffs(p1).normalized").unwrap_err().message;
    assert!(e.contains("normalised"), "{e}");
}

/// Raw tokens of an identity as f64 (the reference's own copy of the numbers).
fn raw64(id: &Identity) -> Vec<f64> {
    id.raw().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
}
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn close64(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference is zero");
    let worst = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, |m, d| {
        if d.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    });
    assert!(worst <= rel * scale, "{what}: max |Δ| {worst:e} > {rel:e} × {scale:e}");
}
/// Eigenvalues of a small symmetric matrix by cyclic Jacobi rotations (the reference's own, in f64).
fn eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _ in 0..100 {
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    ev.sort_by(|x, y| y.total_cmp(x));
    ev
}

/// Identity-space operations against a reference computed here in f64 from the identities' raw numbers: dot, norm,
/// cosine, direction (b − a, sign included), project and reject (each on its own), orthogonalize, nearest,
/// similarity_by_module and PCA's explained variance — PCA with the SIMD products and with the plain ones forced.
#[test]
fn identity_space_against_an_f64_reference() {
    use hyperlora::identity::space::similarity_by_module;
    let mut s = session("hyperlora-tiny");
    let p = ids(&mut s, 5);
    let r: Vec<Vec<f64>> = p.iter().map(raw64).collect();
    let c: Vec<Coeffs> = p.iter().map(|i| s.coeffs(i).unwrap()).collect();
    let (x, a, b) = (&r[0], &r[1], &r[2]);
    // dot, norm, cosine
    let d_ab = dot64(a, b);
    assert!((c[1].dot(&c[2]).unwrap() - d_ab).abs() <= 1e-5 * d_ab.abs().max(1.0), "dot");
    assert!((c[1].norm() - dot64(a, a).sqrt()).abs() <= 1e-6 * dot64(a, a).sqrt(), "norm");
    let cos = d_ab / (dot64(a, a) * dot64(b, b)).sqrt();
    assert!((c[1].cosine(&c[2]).unwrap() - cos).abs() <= 1e-6, "cosine");
    // direction(a, b) = b − a, through the script (the user's path)
    let sess = Arc::new(Mutex::new(s));
    let mut sc = Script::new(sess.clone(), Arc::new(|_: Out| {}), Limits::default());
    sc.set("a", rhai::Dynamic::from(p[1].clone()));
    sc.set("b", rhai::Dynamic::from(p[2].clone()));
    let dir = sc.eval("direction(a, b)").unwrap().try_cast::<Coeffs>().unwrap();
    let want_dir: Vec<f64> = a.iter().zip(b).map(|(u, v)| v - u).collect();
    close64(dir.values(), &want_dir, 1e-6, "direction(a, b) = b − a");
    // project and reject, each against its own reference
    let k = dot64(x, &want_dir) / dot64(&want_dir, &want_dir);
    let want_p: Vec<f64> = want_dir.iter().map(|v| k * v).collect();
    let want_r: Vec<f64> = x.iter().zip(&want_p).map(|(u, v)| u - v).collect();
    close64(c[0].project(&dir).unwrap().values(), &want_p, 1e-5, "project");
    close64(c[0].reject(&dir).unwrap().values(), &want_r, 1e-5, "reject");
    // orthogonalize: classical Gram–Schmidt in f64
    let o = orthogonalize(&[c[1].clone(), c[2].clone()]).unwrap();
    let n1 = dot64(a, a).sqrt();
    let e1: Vec<f64> = a.iter().map(|v| v / n1).collect();
    let t = dot64(b, &e1);
    let rest: Vec<f64> = b.iter().zip(&e1).map(|(v, e)| v - t * e).collect();
    let n2 = dot64(&rest, &rest).sqrt();
    let e2: Vec<f64> = rest.iter().map(|v| v / n2).collect();
    close64(o[0].values(), &e1, 1e-5, "orthogonalize[0]");
    close64(o[1].values(), &e2, 1e-4, "orthogonalize[1]");
    // nearest and similarity_by_module: cosines of per-token normalised coefficients
    let tokens = |v: &[f64]| -> Vec<Vec<f64>> {
        v.chunks(c[0].k()).map(|t| t.iter().map(|x| x / (dot64(t, t) + 1e-8).sqrt()).collect()).collect()
    };
    let sim = |u: &[f64], v: &[f64]| {
        let (tu, tv): (Vec<f64>, Vec<f64>) = (tokens(u).concat(), tokens(v).concat());
        dot64(&tu, &tv) / (dot64(&tu, &tu) * dot64(&tv, &tv)).sqrt()
    };
    let pool: Vec<(String, Identity)> = (1..5).map(|i| (format!("p{i}"), p[i].clone())).collect();
    let got = sess.lock().unwrap().nearest(&pool, &p[0], 4).unwrap();
    let mut want: Vec<(String, f64)> = (1..5).map(|i| (format!("p{i}"), sim(x, &r[i]))).collect();
    want.sort_by(|u, v| v.1.total_cmp(&u.1));
    for (g, w) in got.iter().zip(&want) {
        assert!(g.0 == w.0 && (g.1 - w.1).abs() <= 1e-5, "nearest: {got:?} vs {want:?}");
    }
    let by_module = similarity_by_module(&c[0], &c[1]).unwrap();
    let (tx, ta) = (tokens(x), tokens(a));
    for (m, _, got) in &by_module {
        let want = (0..8).map(|t| dot64(&tx[m * 8 + t], &ta[m * 8 + t])).sum::<f64>() / 8.0;
        assert!((got - want).abs() <= 1e-5, "module {m}: {got} vs {want}");
    }
    assert_eq!(by_module.len(), c[0].rows() / 8);
    // PCA's explained variance: eigenvalues of the centred Gram matrix, in f64
    let n = r.len();
    let dim = r[0].len();
    let mean: Vec<f64> = (0..dim).map(|j| r.iter().map(|v| v[j]).sum::<f64>() / n as f64).collect();
    let cen: Vec<Vec<f64>> = r.iter().map(|v| v.iter().zip(&mean).map(|(u, m)| u - m).collect()).collect();
    let gram: Vec<f64> = (0..n * n).map(|i| dot64(&cen[i / n], &cen[i % n])).collect();
    let ev = eigenvalues(gram, n);
    let total: f64 = ev.iter().sum();
    for scalar in [false, true] {
        hyperlora::identity::gram::force_scalar(scalar);
        let got = pca(&c, 4).unwrap();
        hyperlora::identity::gram::force_scalar(false);
        assert_eq!(got.explained.len(), 4);
        for (i, e) in got.explained.iter().enumerate() {
            assert!((e - ev[i] / total).abs() <= 1e-5, "scalar {scalar}: component {i}: {e} vs {}", ev[i] / total);
        }
    }
}

/// Two processes saving into one library at once: every name of both is in the index afterwards (the index is
/// read, changed and written under an advisory lock).
#[test]
fn two_processes_saving_into_one_library_keep_every_name() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let script = |tag: &str| {
        let p = tmp.path().join(format!("{tag}.rhai"));
        std::fs::write(
            &p,
            format!(
                "let me = identity(#{{ path: demo_photo, box: demo_box }});\nlet lib = library({:?});\nfor i in 0..20 {{ lib.save(`{tag}_${{i}}`, me); }}\n",
                lib.display().to_string()
            ),
        )
        .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .args(["run", "--demo", "--preview", "never"])
            .arg(&p)
            .env("HYPERLORA_DEMO_DIR", demo_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (script("a"), script("b"));
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let names: Vec<String> = Library::open(&lib).unwrap().list().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 40, "names lost from the index: {names:?}");
}
