//! A fault-injecting storage backend for [`RedbLog`](crate::RedbLog): a
//! **test facility**, never used by keyledger itself.
//!
//! [`FaultBackend`] is a redb [`StorageBackend`] held in memory that
//!
//! * fails the Nth write or the Nth sync from now ([`FaultBackend::fail_write`],
//!   [`FaultBackend::fail_sync`]), once;
//! * behaves like a full disk ([`FaultBackend::set_full`]: every write and
//!   every growth fails with `StorageFull`, as on a copy-on-write or sparse
//!   file where each write needs a free block) or a read-only data
//!   directory ([`FaultBackend::set_read_only`]: every write, growth and sync
//!   fails with `ReadOnlyFilesystem`), until told otherwise;
//! * rebuilds the file image a crash at any sync point would leave
//!   ([`FaultBackend::crash_images`]).
//!
//! # The crash model
//!
//! Modelled on redb's own `tests/crash_consistency.rs`, which tracks live
//! versus durable bytes. Every write and length change is journalled in
//! *epochs*: epoch `k` holds what was written between sync `k` and sync
//! `k + 1`. A crash while sync `k + 1` runs leaves every epoch before `k`
//! on the disk (they were synced) and any subset of epoch `k` (the page
//! cache may have written some of it back, in any order). So
//! [`CrashImage::durable`] applies epochs `0..k`, and
//! [`CrashImage::torn`] applies them plus a seeded random subset of epoch
//! `k`'s writes. The journal costs the bytes written, not a file copy per
//! sync, so a workload with hundreds of syncs stays small.
//!
//! A failed write or sync changes nothing (the journal and the live bytes
//! are left as they were) and is reported as an I/O error.

use std::io::{Error as IoError, ErrorKind};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// One journalled change to the file.
#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    /// The bytes as the running database sees them.
    live: Vec<u8>,
    /// Closed epochs: epoch `k` is what was written between syncs `k` and `k + 1`.
    epochs: Vec<Vec<Op>>,
    /// The epoch being written (not synced yet).
    open: Vec<Op>,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
    full: bool,
    read_only: bool,
    injected: u64,
    journal: bool,
}

/// A redb storage backend in memory that injects faults and rebuilds crash
/// images. Cloning shares the storage: a clone is the same "disk", which is
/// how [`RedbLog::open_with_backend`](crate::RedbLog::open_with_backend)
/// reopens it after a failure.
#[derive(Clone, Debug)]
pub struct FaultBackend {
    state: Arc<Mutex<State>>,
}

impl Default for FaultBackend {
    fn default() -> Self {
        FaultBackend::new()
    }
}

/// The file a crash during one sync would leave.
#[derive(Clone, Debug)]
pub struct CrashImage {
    /// The sync during which the crash happens (1-based): every sync before
    /// it completed.
    pub sync: u64,
    /// Only what was synced: syncs `1..sync` completed.
    pub durable: Vec<u8>,
    /// What was synced plus a random subset of the writes made after the
    /// last completed sync (torn write-back).
    pub torn: Vec<u8>,
}

fn apply(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(data.len());
            if image.len() < end {
                image.resize(end, 0);
            }
            if let Some(dst) = image.get_mut(start..end) {
                dst.copy_from_slice(data);
            }
        }
        Op::SetLen(len) => image.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

/// A small deterministic generator (SplitMix64) for torn images.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FaultBackend {
    /// An empty disk that journals every change (for [`Self::crash_images`]).
    pub fn new() -> Self {
        FaultBackend {
            state: Arc::new(Mutex::new(State {
                journal: true,
                ..State::default()
            })),
        }
    }

    /// A disk holding `image` (a crash image, say), journalling from there:
    /// crash images of it start from `image`.
    pub fn from_image(image: &[u8]) -> Self {
        let b = FaultBackend::new();
        {
            let mut s = b.lock();
            s.live = image.to_vec();
            s.epochs.push(vec![Op::Write {
                offset: 0,
                data: image.to_vec(),
            }]);
        }
        b
    }

    /// Stops journalling (long simulations that need no crash image).
    pub fn without_journal(self) -> Self {
        {
            let mut s = self.lock();
            s.journal = false;
            s.epochs.clear();
            s.open.clear();
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Syncs so far (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Faults injected so far (each failed write, growth or sync counts once).
    pub fn faults_injected(&self) -> u64 {
        self.lock().injected
    }

    /// The `n`th write from now (1 = the next one) fails, once.
    pub fn fail_write(&self, n: u64) {
        let mut s = self.lock();
        s.fail_write_at = Some(s.writes + n.max(1));
    }

    /// The `n`th sync from now (1 = the next one) fails, once.
    pub fn fail_sync(&self, n: u64) {
        let mut s = self.lock();
        s.fail_sync_at = Some(s.syncs + n.max(1));
    }

    /// Cancels pending one-shot faults.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.fail_write_at = None;
        s.fail_sync_at = None;
    }

    /// A full disk: every write and every growth fails with `StorageFull`
    /// until `set_full(false)` (a copy-on-write or sparse file needs a free
    /// block for each write). Syncs of what was written still work.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// A read-only data directory: every write, length change and sync fails
    /// with `ReadOnlyFilesystem` until `set_read_only(false)`.
    pub fn set_read_only(&self, read_only: bool) {
        self.lock().read_only = read_only;
    }

    /// The live bytes (what a clean close would leave).
    pub fn live_image(&self) -> Vec<u8> {
        self.lock().live.clone()
    }

    /// One crash image per sync so far (the crash happens during that sync),
    /// plus one for a crash now (`sync` = syncs + 1), in order. `seed` picks
    /// the torn subsets. Built incrementally: the cost is one pass over the
    /// journal plus a copy per image.
    pub fn crash_images(&self, seed: u64) -> Vec<CrashImage> {
        let mut out = Vec::new();
        self.for_each_crash_image(seed, |img| out.push(img));
        out
    }

    /// Like [`Self::crash_images`], handing each image to `f` as it is built
    /// (so only one is held at a time).
    pub fn for_each_crash_image(&self, seed: u64, mut f: impl FnMut(CrashImage)) {
        let (epochs, open) = {
            let s = self.lock();
            (s.epochs.clone(), s.open.clone())
        };
        let mut rng = seed;
        let mut durable = Vec::new();
        let all = epochs.iter().chain(std::iter::once(&open));
        for (k, epoch) in all.enumerate() {
            let mut torn = durable.clone();
            for op in epoch {
                // Length changes are metadata: keep them half the time too.
                if splitmix(&mut rng) % 2 == 0 {
                    apply(&mut torn, op);
                }
            }
            f(CrashImage {
                sync: k as u64 + 1,
                durable: durable.clone(),
                torn,
            });
            for op in epoch {
                apply(&mut durable, op);
            }
        }
    }

    fn record(s: &mut State, op: Op) {
        if s.journal {
            s.open.push(op);
        }
    }
}

/// An injected error, worded as the OS words the real one.
fn injected(s: &mut State, kind: ErrorKind, what: &str) -> IoError {
    s.injected += 1;
    IoError::new(kind, format!("{what} (injected fault)"))
}

const FULL: &str = "No space left on device";
const READ_ONLY: &str = "Read-only file system";

impl StorageBackend for FaultBackend {
    fn len(&self) -> Result<u64, IoError> {
        Ok(self.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), IoError> {
        let s = self.lock();
        let start = usize::try_from(offset).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| s.live.get(start..end))
            .ok_or_else(|| IoError::from(ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        if s.read_only {
            return Err(injected(&mut s, ErrorKind::ReadOnlyFilesystem, READ_ONLY));
        }
        if s.full && len > s.live.len() as u64 {
            return Err(injected(&mut s, ErrorKind::StorageFull, FULL));
        }
        let n = usize::try_from(len).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
        s.live.resize(n, 0);
        FaultBackend::record(&mut s, Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), IoError> {
        let mut s = self.lock();
        s.syncs += 1;
        if s.read_only {
            return Err(injected(&mut s, ErrorKind::ReadOnlyFilesystem, READ_ONLY));
        }
        if s.fail_sync_at == Some(s.syncs) {
            s.fail_sync_at = None;
            return Err(injected(&mut s, ErrorKind::Other, "sync failed"));
        }
        if s.journal {
            let epoch = std::mem::take(&mut s.open);
            s.epochs.push(epoch);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let mut s = self.lock();
        s.writes += 1;
        if s.read_only {
            return Err(injected(&mut s, ErrorKind::ReadOnlyFilesystem, READ_ONLY));
        }
        if s.fail_write_at == Some(s.writes) {
            s.fail_write_at = None;
            return Err(injected(&mut s, ErrorKind::Other, "write failed"));
        }
        let start = usize::try_from(offset).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
        let end = start
            .checked_add(data.len())
            .ok_or_else(|| IoError::from(ErrorKind::InvalidInput))?;
        if s.full {
            return Err(injected(&mut s, ErrorKind::StorageFull, FULL));
        }
        if s.live.len() < end {
            s.live.resize(end, 0);
        }
        s.live[start..end].copy_from_slice(data);
        FaultBackend::record(
            &mut s,
            Op::Write {
                offset,
                data: data.to_vec(),
            },
        );
        Ok(())
    }
}
