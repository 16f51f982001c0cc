//! `hyperlora download` against a small HTTP server on 127.0.0.1 started by the test, serving a mirror of the
//! tiny fixture files with the hub's headers (etag, x-repo-commit, ranges). No test touches the internet.
use crate::common::*;
use hyperlora::files::download::{download, plans, verify};
use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Hub {
    url: String,
    /// "path range" of every request.
    log: Arc<Mutex<Vec<String>>>,
}

/// Serve `files` (path under the host → bytes). The first full transfer of `interrupt` stops halfway.
fn serve(files: HashMap<String, Vec<u8>>, interrupt: Option<String>) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    let interrupted = Arc::new(Mutex::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            l2.lock().unwrap().push(format!("{path} {}", range.clone().unwrap_or_default()));
            let key = path.trim_start_matches('/').replacen("/resolve/main/", "/", 1);
            let Some(body) = files.get(&key) else {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            // LFS files: their SHA-256; small git files: a 40-hex id of their content (the hub sends the git hash)
            let sha = hex(&sha2::Sha256::digest(body));
            let etag = if key.ends_with(".safetensors") { sha } else { sha[..40].to_string() };
            let len = body.len();
            let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (
                    a.parse::<usize>().unwrap_or(0),
                    if b.is_empty() { len - 1 } else { b.parse::<usize>().unwrap().min(len - 1) },
                ),
                None => (0, len - 1),
            };
            let part = &body[start..=end];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{len}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = s.write_all(head.as_bytes());
            let cut = interrupt.as_deref() == Some(key.as_str())
                && start == 0
                && part.len() > 1
                && !std::mem::replace(&mut *interrupted.lock().unwrap(), true);
            let _ = s.write_all(if cut { &part[..part.len() / 2] } else { part });
            let _ = s.flush();
            drop(r);
            let mut rest = Vec::new();
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.read_to_end(&mut rest);
        }
    });
    Hub { url, log }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The released layout, made of the tiny fixture files.
fn mirror() -> HashMap<String, Vec<u8>> {
    let mut m = HashMap::new();
    for f in [
        "hyper_lora_modules.json",
        "hyper_lora_modules.safetensors",
        "resampler.safetensors",
        "id_projector.safetensors",
    ] {
        m.insert(
            format!("bytedance-research/HyperLoRA/sdxl_hyper_id_lora_v1_fidelity/{f}"),
            std::fs::read(fixture(&format!("hyperlora-tiny/{f}"))).unwrap(),
        );
    }
    for f in ["config.json", "model.safetensors"] {
        m.insert(
            format!("openai/clip-vit-large-patch14/{f}"),
            std::fs::read(fixture(&format!("clip-vision-tiny/{f}"))).unwrap(),
        );
    }
    m.insert(
        "openai/clip-vit-large-patch14/preprocessor_config.json".into(),
        br#"{"crop_size": 224, "do_center_crop": true, "resample": 3}"#.to_vec(),
    );
    m
}

#[test]
fn downloads_resume_and_land_in_the_hub_cache() {
    let big = "bytedance-research/HyperLoRA/sdxl_hyper_id_lora_v1_fidelity/hyper_lora_modules.safetensors";
    let hub = serve(mirror(), Some(big.to_string()));
    let cache = tempfile::tempdir().unwrap();
    let got = download(&plans("fidelity", true, None).unwrap(), cache.path(), &hub.url, false).unwrap();
    let dirs: HashMap<&str, std::path::PathBuf> = got.into_iter().collect();
    let variant = &dirs["hyperlora"];
    assert!(variant.ends_with(format!("snapshots/{COMMIT}/sdxl_hyper_id_lora_v1_fidelity")), "{variant:?}");
    for (k, v) in mirror() {
        let (repo, file) = if k.starts_with("bytedance") {
            ("models--bytedance-research--HyperLoRA", k.splitn(3, '/').nth(2).unwrap().to_string())
        } else {
            ("models--openai--clip-vit-large-patch14", k.splitn(3, '/').nth(2).unwrap().to_string())
        };
        let p = cache.path().join(repo).join("snapshots").join(COMMIT).join(&file);
        assert_eq!(std::fs::read(&p).unwrap(), v, "{k}");
    }
    // the interrupted transfer continued from where it stopped
    let log = hub.log.lock().unwrap().clone();
    let resumed = log
        .iter()
        .filter(|l| l.contains("hyper_lora_modules.safetensors"))
        .any(|l| l.split_whitespace().nth(1).is_some_and(|r| r.ends_with('-') && !r.starts_with("0-")));
    assert!(resumed, "no resumed range request: {log:?}");
    // discovery and doctor accept what landed
    let d = hyperlora::models::discover_hub(cache.path());
    assert_eq!(d.paths.hyperlora.as_ref(), Some(variant));
    let checks = hyperlora::models::doctor(&d.paths);
    let of = |n: &str| checks.iter().find(|c| c.component == n).unwrap();
    assert_eq!(of("clip").status, hyperlora::models::Status::Ok, "{:?}", of("clip"));
    // doctor says what the loader says: the tiny fixture's bases under the release's names, without the
    // config.json the release has none of, cannot tell its heads × dim_head (not 12 × 64) — both refuse, naming it
    let load = hyperlora::hyper::HyperLora::load(variant, &Default::default()).err().map(|e| e.to_string());
    let h = of("hyperlora");
    match load {
        None => assert_eq!(h.status, hyperlora::models::Status::Ok, "{h:?}"),
        Some(e) => {
            assert!(h.status == hyperlora::models::Status::Bad && h.detail.contains(&e), "loader: {e}; doctor: {h:?}");
            assert!(e.contains("dim_head"), "{e}");
        }
    }
    // a second run finds everything in the cache: no transfers
    let before = hub.log.lock().unwrap().len();
    download(&plans("fidelity", true, None).unwrap(), cache.path(), &hub.url, false).unwrap();
    assert_eq!(hub.log.lock().unwrap().len(), before, "files were fetched again");
    // a corrupted blob is caught by its checksum
    let blob = std::fs::canonicalize(variant.join("resampler.safetensors")).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let e = verify(&variant.join("resampler.safetensors")).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch") && e.contains("resampler.safetensors"), "{e}");
}

#[test]
fn download_command_honours_hf_home_and_hf_endpoint() {
    let hub = serve(mirror(), None);
    let home = tempfile::tempdir().unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["download", "--variant", "fidelity"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{out}{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.contains("sdxl_hyper_id_lora_v1_fidelity") && out.contains("antelopev2"), "{out}");
    assert!(home.path().join("hub/models--bytedance-research--HyperLoRA/refs/main").is_file());
    // a variant the release does not have
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["download", "--variant", "turbo"])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("fidelity"));
    // a file the server does not have is named
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["download", "--variant", "edit", "--no-clip"])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        !r.status.success()
            && String::from_utf8_lossy(&r.stderr).contains("sdxl_hyper_id_lora_v1_edit/hyper_lora_modules.json"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
