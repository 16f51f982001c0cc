use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // candle's elementwise kernels fan out to a pool whose workers spin 25,000 rounds after each kernel before they
    // sleep; between kernels (a matmul on the rayon threads, a serial copy) that spinning takes a core from the work:
    // 14.5 % of a 256² training step's samples on 2 cores. A short spin, unless the user set one (before any thread
    // starts, so candle reads it when it builds the pool).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    // candle asks for its thread count on every CPU matmul, and unless RAYON_NUM_THREADS is set it counts the
    // physical cores by reading /proc/cpuinfo each time: 12 % of the demo model's training step went to that. The
    // same count, read once and set here, unless the user set one.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
    let cli = hyperlora::cli::Cli::parse();
    // scripts may build and print deeply nested values (Rhai formats and drops them recursively): the command runs
    // on a thread with a stack large enough for the deepest value the sandbox's size limits allow
    let worker =
        std::thread::Builder::new().stack_size(hyperlora::script::STACK_BYTES).spawn(move || hyperlora::cli::run(cli));
    let result = match worker {
        Ok(w) => {
            w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("internal error (a bug in hyperlora, please report it)")))
        }
        Err(e) => Err(anyhow::anyhow!("cannot start the command's thread: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    // first line of each cause: candle errors can carry a backtrace after the message
    for cause in e.chain().map(|c| c.to_string().lines().next().unwrap_or_default().trim().to_string()) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}
