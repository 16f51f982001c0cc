//! Sweeps over many machines, through the binary as users run it: a recipe as 3 shards (one from `--shard`, one
//! from a Slurm array's variables, one from a Kubernetes Indexed Job's) writes exactly the unsharded run's files,
//! `--resume` continues a cut-short task, `gather` indexes every shard's images.
use super::common::demo_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCHEDULER_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
    "JOB_COMPLETION_INDEX",
    "HYPERLORA_SHARDS",
    "HYPERLORA_HYPERLORA",
];

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sweep.rhai")
}

/// `hyperlora run scripts/sweep.rhai --demo` into `out`, small and fast, with `extra` flags and variables.
fn sweep(out: &Path, extra: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperlora"));
    c.arg("run").arg(recipe()).args(["--demo", "--preview", "never", "--set", "size=64", "--set", "steps=2"]);
    c.arg("--set").arg(format!("out={}", out.display())).args(extra);
    for v in SCHEDULER_VARS {
        c.env_remove(v);
    }
    c.env("HYPERLORA_DEMO_DIR", demo_dir());
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

fn ok(o: Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{what} failed:\n{text}");
    text
}

/// File name → (pixels, settings) of every PNG in `dir` (not recursive, index/sheets left out).
fn pngs(dir: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, Vec<(String, String)>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "png") && !p.file_name().unwrap().to_string_lossy().starts_with("sheet-")
        })
        .map(|p| {
            let (rgb, .., text) = hyperlora::files::png_meta::read_png(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), (rgb, text))
        })
        .collect()
}

fn setting<'a>(s: &'a [(String, String)], k: &str) -> &'a str {
    s.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no `{k}` in {s:?}"))
}

fn gather(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperlora")).arg("gather").arg(dir).args(extra).output().unwrap()
}

#[test]
fn three_shards_write_the_unsharded_files_and_gather_indexes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, sharded) = (tmp.path().join("whole"), tmp.path().join("sharded"));
    let text = ok(sweep(&whole, &[], &[]).output().unwrap(), "unsharded run");
    assert!(text.contains("shard 0/1: 12 of 12 images"), "{text}");

    // three workers at once into one folder, each told its share the way its scheduler does
    let children = vec![
        ("--shard", sweep(&sharded, &["--shard", "0/3"], &[]).output()),
        (
            "Slurm",
            sweep(
                &sharded,
                &[],
                &[("SLURM_ARRAY_TASK_ID", "11"), ("SLURM_ARRAY_TASK_MIN", "10"), ("SLURM_ARRAY_TASK_COUNT", "3")],
            )
            .output(),
        ),
        ("Kubernetes", sweep(&sharded, &[], &[("JOB_COMPLETION_INDEX", "2"), ("HYPERLORA_SHARDS", "3")]).output()),
    ];
    for (i, (what, o)) in children.into_iter().enumerate() {
        let text = ok(o.unwrap(), what);
        assert!(text.contains(&format!("shard {i}/3: 4 of 12 images")), "{what}: {text}");
    }

    let (a, b) = (pngs(&whole), pngs(&sharded));
    assert_eq!(a.len(), 12);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same file names");
    let mut shards = std::collections::BTreeSet::new();
    for (name, (rgb, settings)) in &a {
        let (rgb_b, settings_b) = &b[name];
        assert!(rgb == rgb_b, "{name}: pixels differ between the unsharded and the sharded run");
        assert_eq!(setting(settings, "shard"), "0/1");
        assert_eq!(setting(settings_b, "recipe"), "sweep");
        shards.insert(setting(settings_b, "shard").to_string());
        // everything else the PNG records is the same
        let strip = |s: &[(String, String)]| s.iter().filter(|(k, _)| k != "shard").cloned().collect::<Vec<_>>();
        assert_eq!(strip(settings), strip(settings_b), "{name}");
    }
    assert_eq!(shards.into_iter().collect::<Vec<_>>(), ["0/3", "1/3", "2/3"]);

    // gather: one row per image with the item's settings, one contact sheet for the recipe
    let text = ok(gather(&sharded, &[]), "gather");
    assert!(text.contains("12 image(s) from shard(s) 0/3, 1/3, 2/3"), "{text}");
    let mut csv = csv::Reader::from_path(sharded.join("index.csv")).unwrap();
    assert_eq!(
        csv.headers().unwrap().iter().collect::<Vec<_>>(),
        ["file", "recipe", "shard", "prompt", "seed", "strength", "identity", "face_score"]
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 12);
    let mut files: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    files.sort();
    assert_eq!(files, a.keys().map(String::as_str).collect::<Vec<_>>(), "every image once");
    let mut identities = std::collections::BTreeSet::new();
    for r in &rows {
        // the file name was made from the item: its strength and seed must be what the PNG says
        let (_, settings) = &b[&r[0]];
        assert_eq!(&r[1], "sweep");
        assert_eq!(&r[2], setting(settings, "shard"));
        assert_eq!(&r[4], setting(settings, "seed"));
        let (w, seed) = r[0].trim_end_matches(".png").rsplit_once("_w").unwrap().1.split_once("_seed").unwrap();
        assert_eq!(w.parse::<f64>().unwrap(), r[5].parse::<f64>().unwrap(), "{:?}", r);
        assert_eq!(seed, &r[4]);
        assert!(r[3].contains("portrait photo"));
        assert_eq!(r[6].len(), 12, "identity hash: {:?}", r);
        assert_eq!(&r[6], setting(settings, "face_score_identity"));
        let score: f64 = r[7].parse().unwrap_or_else(|_| panic!("face_score {:?}", &r[7]));
        assert!(score.is_finite() && score.abs() <= 1.0 + 1e-6, "{score}");
        identities.insert(r[6].to_string());
    }
    assert_eq!(identities.len(), 2, "two people: {identities:?}");
    let (sheet, w, h, text) = hyperlora::files::png_meta::read_png(&sharded.join("sheet-sweep.png")).unwrap();
    assert_eq!(sheet.len(), w * h * 3);
    let meta: serde_json::Value = serde_json::from_str(setting(&text, "hyperlora:grid")).unwrap();
    assert_eq!(meta["cells"].as_array().unwrap().len(), 12);
    assert!(w >= 4 * 64 && h >= 3 * 64, "a 4×3 sheet of 64² images: {w}×{h}");
    // the labels drawn under the cells tell them apart (up to three lines of the cell's width, ends kept)
    let drawn: std::collections::BTreeSet<String> = meta["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| hyperlora::render::text::fit(c["label"].as_str().unwrap(), 3 * 64 / 8))
        .collect();
    assert_eq!(drawn.len(), 12, "cells share a drawn label: {drawn:?}");
    assert!(drawn.iter().all(|l| l.is_ascii()), "a label uses a glyph the 8×8 font lacks: {drawn:?}");
    // info reads the sheet's cells one per line
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .arg("info")
        .arg(sharded.join("sheet-sweep.png"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("contact sheet") && info.contains("12 cell(s)"), "{info}");
    assert_eq!(info.lines().filter(|l| l.contains("[row ")).count(), 12, "{info}");
    assert!(!info.contains("\"cells\""), "raw JSON printed: {info}");

    // the index is never overwritten without --force, and a second gather skips the sheet it made
    let before = std::fs::read(sharded.join("index.csv")).unwrap();
    let o = gather(&sharded, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("index.csv"));
    assert_eq!(std::fs::read(sharded.join("index.csv")).unwrap(), before);
    let text = ok(gather(&sharded, &["--force"]), "gather --force");
    assert!(text.contains("12 image(s)") && text.contains("1 PNG file(s) left out"), "{text}");
    assert_eq!(std::fs::read(sharded.join("index.csv")).unwrap(), before, "the same index again");
}

#[test]
fn resume_continues_a_task_that_was_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    ok(sweep(&out, &["--shard", "1/3"], &[]).output().unwrap(), "first run");
    let first = pngs(&out);
    assert_eq!(first.len(), 4);
    let names: Vec<String> = first.keys().cloned().collect();
    // a requeued task finds: one image missing, one truncated (a copy cut short), two done, a stale temporary file
    std::fs::remove_file(out.join(&names[0])).unwrap();
    let bytes = std::fs::read(out.join(&names[1])).unwrap();
    std::fs::write(out.join(&names[1]), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(out.join(format!(".{}.999.0.tmp", names[0])), b"half").unwrap();
    let done_before: Vec<_> =
        names[2..].iter().map(|n| std::fs::metadata(out.join(n)).unwrap().modified().unwrap()).collect();

    // without --resume: an error that says what to do, and nothing touched
    let o = sweep(&out, &["--shard", "1/3"], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume") && err.contains("exists"), "{err}");
    assert!(!out.join(&names[0]).exists());

    let text = ok(sweep(&out, &["--shard", "1/3", "--resume"], &[]).output().unwrap(), "resumed run");
    assert_eq!(text.matches("is done; skipped").count(), 2, "{text}");
    assert!(text.contains(&format!("{}: ", names[1])) || text.contains("is incomplete"), "{text}");
    assert_eq!(text.matches("is incomplete").count(), 1, "{text}");
    let again = pngs(&out);
    assert_eq!(again.keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>());
    for (n, (rgb, _)) in &first {
        assert!(&again[n].0 == rgb, "{n}: pixels differ after resuming");
    }
    for (n, t) in names[2..].iter().zip(done_before) {
        assert_eq!(std::fs::metadata(out.join(n)).unwrap().modified().unwrap(), t, "{n} was rewritten");
    }
}

#[test]
fn conflicting_shard_sources_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let o = sweep(tmp.path(), &["--shard", "0/1"], &[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--shard 0/1") && err.contains("SLURM_ARRAY_TASK_ID=2"), "{err}");
    let o = sweep(tmp.path(), &[], &[("JOB_COMPLETION_INDEX", "1")]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("HYPERLORA_SHARDS"), "{err}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "nothing written");
}

/// Recipes whose names slug alike (`x/y` and `x_y`) get a sheet each, neither replacing the other.
#[test]
fn recipes_that_slug_alike_get_their_own_sheets() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, recipe) in ["x/y", "x_y"].iter().enumerate() {
        let settings = vec![
            ("prompt".to_string(), "p".to_string()),
            ("seed".to_string(), i.to_string()),
            ("recipe".to_string(), recipe.to_string()),
        ];
        let rgb = vec![(i * 100) as u8; 32 * 32 * 3];
        std::fs::write(
            tmp.path().join(format!("img{i}.png")),
            hyperlora::files::png_meta::encode_png(&rgb, 32, 32, &settings).unwrap(),
        )
        .unwrap();
    }
    let o = gather(tmp.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sheets: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sheet-"))
        .collect();
    assert_eq!(sheets.len(), 2, "{sheets:?}");
    for s in &sheets {
        let (_, _, _, text) = hyperlora::files::png_meta::read_png(&tmp.path().join(s)).unwrap();
        let meta = text.iter().find(|(k, _)| k == "hyperlora:grid").unwrap();
        assert!(meta.1.contains("\"cells\""), "{s}");
    }
}
