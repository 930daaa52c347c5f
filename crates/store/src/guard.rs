//! Turns a panic inside redb into an error.
//!
//! redb trusts the bytes of its own file: a damaged page can make it panic
//! (debug builds assert while walking every page at open; release builds
//! reach `unreachable!` in its B-tree code), at open or lazily while an
//! iterator walks the damaged page. [`RedbLog`](crate::RedbLog) runs every call into redb under
//! one guard, which catches such a panic and hands back its message, so a
//! damaged file is a [`StoreError::Damaged`](crate::StoreError::Damaged)
//! naming the file, never a crash (`crates/store/tests/damage.rs`).
//!
//! A caught panic still goes through the process's panic hook, whose
//! default prints "thread '…' panicked at …". A program that wants clean
//! output installs a hook that asks [`caught`] first and prints nothing
//! when it says the panic will be caught (the `keyledger` binary does, in
//! `src/main.rs`); every other panic stays as loud as before.
//!
//! This needs `panic = "unwind"` (the default; no profile of the workspace
//! sets `abort`).

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};

thread_local! {
    /// How many [`run`]s are under way on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic caught on this thread happened, as the hook saw
    /// it (the payload carries only the message).
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether a panic on this thread now would be caught by a guard and
/// returned as an error.
pub fn catching() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// For a panic hook: `true` when this panic will be caught by a guard and
/// returned as an error (the hook should then print nothing); remembers
/// where it happened, for that error's message. `false` for every other
/// panic.
pub fn caught(info: &PanicHookInfo<'_>) -> bool {
    if !catching() {
        return false;
    }
    // The last few components of the path say where (`redb-4.6.0/src/…`)
    // without the build machine's directories.
    let at = info.location().map(|l| {
        let file = l.file();
        let start = file.rmatch_indices('/').nth(3).map_or(0, |(i, _)| i + 1);
        format!("{}:{}", file.get(start..).unwrap_or(file), l.line())
    });
    LOCATION.with(|w| *w.borrow_mut() = at);
    true
}

/// Runs `f`; a panic inside it becomes `Err` with the panic's message (and
/// where it happened, when a hook calling [`caught`] saw it).
///
/// `f` must not leave shared state half-changed in a way its caller keeps
/// using: [`RedbLog`](crate::RedbLog) drops its database handle after a
/// caught panic and opens the file again on the next call.
pub(crate) fn run<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    /// Leaves the guard even if something below unwinds past it.
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    DEPTH.with(|d| d.set(d.get().saturating_add(1)));
    LOCATION.with(|w| w.borrow_mut().take());
    let depth = Depth;
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    drop(depth);
    result.map_err(|payload| {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_owned()
        };
        match LOCATION.with(|w| w.borrow_mut().take()) {
            Some(at) => format!("{message}, at {at}"),
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_with_its_message_and_the_guard_is_left() {
        assert!(!catching());
        let r: Result<(), String> = run(|| {
            assert!(catching());
            panic!("page 7 is not a page")
        });
        assert_eq!(r, Err("page 7 is not a page".to_owned()));
        assert!(!catching(), "the guard is left after a caught panic");
        let nested = run(|| run(|| 1).map(|v| v + 1));
        assert_eq!(nested, Ok(Ok(2)));
        assert!(!catching());
    }
}
