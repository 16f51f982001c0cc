//! Ctrl-C inside long computations: the session lends its cancel flag to the thread doing its work for the
//! duration of a call ([`scope`]), and loops deep below it (attention blocks, say) ask [`requested`] without the
//! flag being threaded through every model's signature. Per thread, so two sessions on two threads (tests, the
//! TUI worker) never see each other's Ctrl-C.
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// While alive, [`requested`] on this thread reads `flag`; the previous flag comes back on drop.
pub struct Scope(Option<Arc<AtomicBool>>);

pub fn scope(flag: Arc<AtomicBool>) -> Scope {
    Scope(FLAG.with(|f| f.replace(Some(flag))))
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0.take();
        FLAG.with(|f| *f.borrow_mut() = previous);
    }
}

/// The flag this thread reads now, to lend to another thread that does part of its work.
pub fn current() -> Option<Arc<AtomicBool>> {
    FLAG.with(|f| f.borrow().clone())
}

/// Whether the work on this thread should stop (Ctrl-C); false outside any scope.
pub fn requested() -> bool {
    FLAG.with(|f| f.borrow().as_ref().is_some_and(|a| a.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_stay_on_their_thread() {
        assert!(!requested());
        let a = Arc::new(AtomicBool::new(true));
        {
            let _s = scope(a.clone());
            assert!(requested());
            std::thread::spawn(|| assert!(!requested(), "another thread")).join().unwrap();
            {
                let _t = scope(Arc::new(AtomicBool::new(false)));
                assert!(!requested());
            }
            assert!(requested(), "the outer scope is back");
        }
        assert!(!requested());
    }
}
