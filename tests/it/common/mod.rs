//! Shared test helpers: fixture paths and tolerance comparisons that say where they broke.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use hyperlora::files::output::RawTensor;
use hyperlora::weights::StFile;
use std::path::{Path, PathBuf};

/// The binary with `args`, its output captured (no `$HYPERLORA_HYPERLORA` from the environment of whoever runs the
/// tests).
pub fn hyperlora(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(args)
        .env_remove("HYPERLORA_HYPERLORA")
        .output()
        .unwrap()
}

/// `../shared/fixtures` beside the checkout (or `$HYPERLORA_FIXTURES`). Missing fixtures fail loudly.
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("HYPERLORA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(p.join("README.md").is_file(), "fixtures not found at {} (set HYPERLORA_FIXTURES)", p.display());
    p
}

pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

pub fn load(rel: &str, key: &str) -> Tensor {
    let f = StFile::open(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    f.tensor(key, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{rel}:{key}: {e}"))
}

pub fn max_abs(got: &Tensor, want: &Tensor) -> (f32, usize) {
    let d = (got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
    let v = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().copied().enumerate().fold((0f32, 0usize), |m, (i, x)| if x > m.0 || x.is_nan() { (x, i) } else { m })
}

pub fn assert_max_abs(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape {:?} vs reference {:?}", got.dims(), want.dims());
    let (worst, i) = max_abs(got, want);
    assert!(worst <= tol, "{name}: max |Δ| {worst:.3e} at flat index {i} > tol {tol:.0e}");
}

/// Copy a fixture folder into a fresh temp dir.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    tmp
}

/// Copy a folder with its subfolders.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The tiny HyperLoRA's reference encoder outputs for `n` images (README §1: random unit ArcFace vectors, real
/// CLIP states): (arcface [n, 512], clip [n, 257, 32]).
pub fn inputs(n: usize) -> (Tensor, Tensor) {
    (
        load("hyperlora-tiny/inputs.safetensors", &format!("arcface_n{n}")),
        load("hyperlora-tiny/inputs.safetensors", &format!("clip_hidden_states_n{n}")),
    )
}

/// Those inputs as a feature set (no Base rows, no sources).
pub fn features(n: usize) -> hyperlora::encode::features::FeatureSet {
    let (a, c) = inputs(n);
    hyperlora::encode::features::FeatureSet::new(a, c, None, vec![]).unwrap()
}

/// Read every tensor of a safetensors file as raw entries, let `f` edit the list, write it to `dst`.
pub fn rewrite(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<(String, RawTensor)>)) {
    let file = StFile::open(src).unwrap();
    let mut entries: Vec<(String, RawTensor)> = file
        .keys()
        .into_iter()
        .map(|k| {
            let dtype = file.dtype(&k).unwrap();
            let shape = file.shape(&k).unwrap().to_vec();
            let data = file.raw(&k).unwrap().to_vec();
            (k, RawTensor { dtype, shape, data })
        })
        .collect();
    f(&mut entries);
    let bytes = hyperlora::files::output::safetensors_bytes(&entries, Default::default()).unwrap();
    std::fs::write(dst, bytes).unwrap();
}

/// One demo set for the tests that run the binary on it, written once per test run (in-process, so the children
/// never race to write it).
pub fn demo_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        hyperlora::synthetic::demo::ensure(&dir).unwrap();
        dir
    })
    .clone()
}

/// A folder of generated test files kept once per machine (`$HYPERLORA_TEST_CACHE`, else
/// `~/.cache/hyperlora/test-cache`), named by a key that covers everything its content depends on; written
/// into a temporary folder and renamed into place, so a killed run never leaves a partial folder under the key.
pub fn cached_dir(key: &str, make: impl FnOnce(&Path)) -> PathBuf {
    use sha2::Digest;
    let root = std::env::var_os("HYPERLORA_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/hyperlora/test-cache")
    });
    let name = hyperlora::files::provenance::hex(&sha2::Sha256::digest(key.as_bytes())[..8]);
    let dir = root.join(&name);
    if dir.join("complete").is_file() {
        return dir;
    }
    let tmp = root.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    make(&tmp);
    std::fs::write(tmp.join("complete"), key).unwrap();
    if std::fs::rename(&tmp, &dir).is_err() {
        // another run placed it first (or a stale incomplete folder is in the way)
        if !dir.join("complete").is_file() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        } else {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

/// An identity's sources as a script prints them (exercises the display of odd metadata).
pub fn describe_sources(id: &hyperlora::Identity) -> String {
    hyperlora::script::describe_identity(id)
}

/// Ctrl-C as a user gives it: wait until `child` (stderr piped) prints a line starting with `ready`, send it a
/// real SIGINT, and return its exit status and everything it printed to stderr after that line.
pub fn interrupt_after(mut child: std::process::Child, ready: &str) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let mut seen = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen += &l;
        seen.push('\n');
        if l.starts_with(ready) {
            break;
        }
    }
    assert!(seen.lines().any(|l| l.starts_with(ready)), "`{ready}` never printed:\n{seen}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    (child.wait().unwrap(), rest.join("\n"))
}

/// A photo with no face: the fixture photo's bottom-left 200² corner (flag and suit; the demo's colour detector
/// finds nothing there), written into `dir` as `name`.
pub fn faceless_photo(dir: &Path, name: &str) -> PathBuf {
    let img = image::open(fixture("photo.png")).unwrap().to_rgb8();
    let p = dir.join(name);
    image::imageops::crop_imm(&img, 0, 312, 200, 200).to_image().save(&p).unwrap();
    p
}
