//! Sizes nobody could allocate are refused before allocating, with an error that says what is needed (part of the
//! hardening issue): decompression bombs, generation sizes and batches.
use crate::common::*;
use std::process::Command;

/// A PNG whose header claims `w` × `h` pixels, with almost no data.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        // CRC-32 (IEEE) over type + data
        let mut crc = 0xffff_ffffu32;
        for b in &c {
            crc ^= *b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        out.extend_from_slice(&(!crc).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn a_photo_claiming_gigapixels_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.png");
    std::fs::write(&p, png_claiming(65_500, 65_500)).unwrap();
    let e = hyperlora::pixels::photo::load_photo(&p).unwrap_err().to_string();
    assert!(e.contains("bomb.png") && e.contains("65500×65500") && e.contains("8192"), "{e}");
    // 16384² was within the old limit, and its face chain (a whole-image box) aborted on a 1.1 GB allocation
    std::fs::write(&p, png_claiming(16_384, 16_384)).unwrap();
    let e = hyperlora::pixels::photo::load_photo(&p).unwrap_err().to_string();
    assert!(e.contains("16384×16384") && e.contains("8192"), "{e}");
    // an ordinary photo still loads
    assert!(hyperlora::pixels::photo::load_photo(&fixture("photo.png")).is_ok());
}

#[test]
fn impossible_generation_sizes_are_errors_and_the_session_goes_on() {
    let demo = demo_dir();
    let run = |code: &str| {
        Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .args(["repl", "--demo"])
            .env("HYPERLORA_DEMO_DIR", &demo)
            .env("HYPERLORA_HISTORY", demo.join("history-limits"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(code.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
    };
    // attention runs in blocks of query rows, so size alone no longer asks for seq² scores; a batch of 64 at the
    // largest side still needs more memory than any machine here has
    let o = run("generate(\"x\", #{ width: 8192, height: 8192, batch: 64, steps: 1 })\n40000 + 2\n");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(err.contains("GB") && err.contains("available") && err.contains("8192×8192"), "{err}");
    assert!(out.contains("40002"), "the REPL did not go on after the refusal:\n{out}\n{err}");
    let o = run("generate(\"x\", #{ width: 1000000, height: 64, steps: 1 })\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("8192 pixels a side"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // the one-shot command: an error and exit status 1, never an abort
    let out = tempfile::tempdir().unwrap();
    for (flag, value, want) in
        [("--batch", "100000", "batch must be 1 to 64"), ("--width", "18446744073709551608", "8192 pixels a side")]
    {
        let o = Command::new(env!("CARGO_BIN_EXE_hyperlora"))
            .args([
                "generate",
                "--model",
                fixture("sdxl-tiny").to_str().unwrap(),
                "--prompt",
                "x",
                "--steps",
                "1",
                flag,
                value,
            ])
            .arg("--out")
            .arg(out.path().join("x.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
}

#[test]
fn a_line_that_is_not_utf8_does_not_end_the_repl() {
    use std::io::Write;
    let demo = demo_dir();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["repl", "--demo"])
        .env("HYPERLORA_DEMO_DIR", &demo)
        .env("HYPERLORA_HISTORY", demo.join("history-utf8"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"let kept = 7;\n\xff\xfe bad\nkept + 40000\n").unwrap();
    let o = c.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(out.contains("40007"), "the REPL ended or lost its variables:\n{out}\n{err}");
    assert!(o.status.success());
}

#[test]
fn writes_never_replace_what_is_not_a_regular_file_and_folders_are_not_loras() {
    let dir = tempfile::tempdir().unwrap();
    // a folder where a file would go, even with overwrite
    let target = dir.path().join("out.png");
    std::fs::create_dir(&target).unwrap();
    let e = hyperlora::files::output::write_file(&target, b"x", true).unwrap_err().to_string();
    assert!(e.contains("not a regular file") && e.contains("out.png"), "{e}");
    assert!(target.is_dir());
    // a character device
    let e =
        hyperlora::files::output::write_file(std::path::Path::new("/dev/null"), b"x", true).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // a folder given as a LoRA, from the CLI
    let o = Command::new(env!("CARGO_BIN_EXE_hyperlora"))
        .args(["generate", "--model", fixture("sdxl-tiny").to_str().unwrap(), "--prompt", "x", "--steps", "1"])
        .arg("--lora")
        .arg(format!("{}:0.5", dir.path().display()))
        .arg("--out")
        .arg(dir.path().join("y.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is a folder; a LoRA is one .safetensors file"), "{err}");
}
