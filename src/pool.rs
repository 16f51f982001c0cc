//! The compute pool: a training step runs on a worker of a rayon pool instead of the caller's thread.
//!
//! candle's matmuls (the `gemm` crate) and convolutions fan out over rayon. Called from a thread outside the pool,
//! the caller sleeps during each fan-out, and between fan-outs — the serial ops: copies, reductions, small kernels —
//! the pool's workers spin waiting for more, so on a 2-core machine two spinning workers share the cores with the
//! caller's serial work. Called from a worker, the caller takes part in each fan-out and at most one other worker
//! spins. (candle's elementwise kernels use a pool of their own, whose spinning `main` shortens.)
//!
//! The pool has as many threads as candle uses for its kernels, and a large stack: candle's backward walks the
//! graph recursively, which the main thread's 8 MB held and a worker's default 2 MB might not.
use std::sync::OnceLock;

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("hyperlora-compute-{i}"))
            .stack_size(256 << 20)
            .build()
            .ok()
    })
    .as_ref()
}

/// Run `f` on a worker of the compute pool (the caller's thread waits), with the caller's Ctrl-C flag
/// (`crate::cancel`) lent to it; inline when the pool could not be built or the caller is already on it.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let Some(pool) = pool() else { return f() };
    if pool.current_thread_index().is_some() {
        return f();
    }
    let flag = crate::cancel::current();
    pool.install(move || {
        let _lent = flag.map(crate::cancel::scope);
        f()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn work_runs_on_a_worker_with_the_callers_cancel_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let _s = crate::cancel::scope(flag.clone());
        let caller = std::thread::current().id();
        let (on, asked) = super::install(|| (std::thread::current().id(), crate::cancel::requested()));
        assert_ne!(on, caller, "ran on the caller's thread");
        assert!(!asked);
        flag.store(true, Ordering::Relaxed);
        assert!(super::install(crate::cancel::requested), "the flag did not reach the worker");
        // nested: inline, no deadlock
        assert_eq!(super::install(|| super::install(|| 7)), 7);
    }
}
