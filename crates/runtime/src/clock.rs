//! Time and randomness live at the edges: the runtime draws them here and
//! passes them into the pure core.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyledger_core::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;

    /// Now, possibly a little stale, for the verification path where a
    /// clock read would be a quarter of the cost. Defaults to [`Clock::now`].
    fn now_coarse(&self) -> Timestamp {
        self.now()
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// How often the coarse system clock is refreshed.
pub const COARSE_TICK: Duration = Duration::from_millis(1);

fn system_now() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Timestamp::from_micros(micros)
}

/// The OS clock, read every [`COARSE_TICK`] by one process-wide thread.
fn coarse() -> &'static AtomicI64 {
    static COARSE: OnceLock<&'static AtomicI64> = OnceLock::new();
    COARSE.get_or_init(|| {
        let cell: &'static AtomicI64 = Box::leak(Box::new(AtomicI64::new(system_now().as_micros())));
        let spawned = std::thread::Builder::new()
            .name("keyledger-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(COARSE_TICK);
                    cell.store(system_now().as_micros(), Ordering::Relaxed);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no coarse clock thread; the coarse clock stays at its first reading");
        }
        cell
    })
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        system_now()
    }

    /// At most about a millisecond stale (more only if the machine starves
    /// the ticker thread); never earlier than the process start.
    fn now_coarse(&self) -> Timestamp {
        Timestamp::from_micros(coarse().load(Ordering::Relaxed))
    }
}

/// A clock that moves only when told: for tests, simulations and `demo`.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `t`.
    pub fn new(t: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(t.as_micros())))
    }

    /// Shows `t` from now on (it may go backwards: the core copes).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_micros(), Ordering::SeqCst);
    }

    /// Moves forward by `micros`.
    pub fn advance_micros(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// A source of secret material and id randomness.
pub trait Entropy: Send + Sync + 'static {
    /// Fills `buf` with random bytes, or fails (never falls back to weak randomness).
    fn fill(&self, buf: &mut [u8]) -> Result<(), String>;
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), String> {
        getrandom::fill(buf).map_err(|e| format!("the OS random source failed: {e}"))
    }
}
