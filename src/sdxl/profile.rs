//! Where a UNet step's time goes (`hyperlora bench sdxl --profile`): while switched on for the calling thread,
//! each timed region synchronises the device before and after and adds its wall time to its kind. The kinds do
//! not nest (a resnet's GroupNorm counts as GroupNorm, its convolutions as convolution), so they add up to the
//! step, less what no region covers. Synchronising costs time of its own, so a profiled step is slower than an
//! unprofiled one; the profile says where, the plain run says how fast. Switched off (the default) a region is
//! one thread-local read.
use candle_core::{Device, Result};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// The kinds of region the UNet times.
pub const GROUP_NORM: &str = "GroupNorm (+ SiLU)";
pub const CONV: &str = "convolutions";
pub const LAYER_NORM: &str = "LayerNorm";
pub const SELF_ATTENTION: &str = "self-attention (q, k, v, out + attention)";
pub const CROSS_ATTENTION: &str = "cross-attention (q, k, v, out + attention)";
pub const FEED_FORWARD: &str = "feed-forward (GEGLU)";
pub const PROJ_IN_OUT: &str = "Transformer2D proj_in/proj_out + reshapes";

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static TIMES: RefCell<Vec<(&'static str, Duration, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Switch timing on or off for this thread; switching on clears what was collected.
pub fn enable(on: bool) {
    ON.set(on);
    if on {
        TIMES.with_borrow_mut(|t| t.clear());
    }
}

/// Run `f` as a region of kind `what`.
#[inline]
pub fn time<T>(what: &'static str, dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !ON.get() {
        return f();
    }
    dev.synchronize()?;
    let t = Instant::now();
    let r = f()?;
    dev.synchronize()?;
    let d = t.elapsed();
    TIMES.with_borrow_mut(|times| match times.iter_mut().find(|(w, ..)| *w == what) {
        Some((_, total, n)) => {
            *total += d;
            *n += 1;
        }
        None => times.push((what, d, 1)),
    });
    Ok(r)
}

/// What was collected since `enable(true)`: kind, total time, calls; in the order first seen.
pub fn take() -> Vec<(&'static str, Duration, u64)> {
    TIMES.with_borrow_mut(std::mem::take)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_add_up_by_kind_only_when_on() {
        let dev = Device::Cpu;
        time("off", &dev, || Ok(())).unwrap();
        enable(true);
        for _ in 0..3 {
            time("a", &dev, || {
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            })
            .unwrap();
        }
        time("b", &dev, || Ok(())).unwrap();
        let t = take();
        enable(false);
        assert_eq!(t.iter().map(|(w, _, n)| (*w, *n)).collect::<Vec<_>>(), [("a", 3), ("b", 1)]);
        assert!(t[0].1 >= Duration::from_millis(6), "{:?}", t[0].1);
        time("later", &dev, || Ok(())).unwrap();
        assert!(take().is_empty());
    }
}
