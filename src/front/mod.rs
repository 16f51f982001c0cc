//! The front ends' common ground: model flags and path resolution (`args`), line input helpers shared by the
//! line REPL and the TUI (`input`), and the device flag.
pub mod args;
pub mod input;

use anyhow::Context;

pub fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let i: usize = s.strip_prefix("cuda:").map(str::parse).transpose().context("device index")?.unwrap_or(0);
            if !cfg!(feature = "cuda") {
                anyhow::bail!("--device {s}: this build has no CUDA support (build with --features cuda)");
            }
            candle_core::Device::new_cuda(i).with_context(|| format!("no usable CUDA device {i}"))
        }
        s => anyhow::bail!("--device {s}: expected cpu, cuda or cuda:N"),
    }
}
