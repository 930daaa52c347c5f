//! A fault-injecting storage backend for [`RedbLog`](crate::RedbLog): a
//! **test facility**, never used by keyledger itself.
//!
//! [`FaultBackend`] is a disk held in memory with two files on it, the redb
//! database and the log's write-ahead log ([`crate::wal`]), each a redb
//! [`StorageBackend`] ([`FaultBackend::database`], [`FaultBackend::wal`]).
//! The disk
//!
//! * fails the Nth write or the Nth sync from now, counted over both files
//!   ([`FaultBackend::fail_write`], [`FaultBackend::fail_sync`]), once;
//! * behaves like a full disk ([`FaultBackend::set_full`]: every write and
//!   every growth fails with `StorageFull`, as on a copy-on-write or sparse
//!   file where each write needs a free block) or a read-only data
//!   directory ([`FaultBackend::set_read_only`]: every write, growth and sync
//!   fails with `ReadOnlyFilesystem`), until told otherwise;
//! * rebuilds the files a crash at any sync point would leave
//!   ([`FaultBackend::crash_images`]).
//!
//! # The crash model
//!
//! Modelled on redb's own `tests/crash_consistency.rs`, which tracks live
//! versus durable bytes. Every write, length change and sync of either file
//! is journalled in order. A crash while the disk's sync `k` runs (counted
//! over both files) leaves, of each file, everything written before that
//! file's last completed sync (it was synced) and any subset of what was
//! written to it since (the page cache may have written some of it back, in
//! any order). So [`CrashImage::durable`] holds only the synced part of each
//! file, and [`CrashImage::torn`] adds a seeded random subset of each
//! file's unsynced writes. The journal costs the bytes written, not a copy
//! of the disk per sync, so a workload with hundreds of syncs stays small.
//!
//! A failed write or sync changes nothing (the journal and the live bytes
//! are left as they were) and is reported as an I/O error.

use std::io::{Error as IoError, ErrorKind};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// The files of a disk: the database, then the write-ahead log.
const FILES: usize = 2;
const DATABASE: usize = 0;
const WAL: usize = 1;

/// One journalled change to a file.
#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

#[derive(Debug, Default)]
struct State {
    /// Each file's bytes as the running log sees them.
    live: [Vec<u8>; FILES],
    /// Every change, in order, with the file it changed.
    journal: Vec<(usize, Op)>,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
    full: bool,
    read_only: bool,
    injected: u64,
    journalling: bool,
}

/// A disk in memory, holding a [`RedbLog`](crate::RedbLog)'s two files,
/// that injects faults and rebuilds crash images. Cloning shares the disk:
/// a clone is the same disk, which is how
/// [`RedbLog::open_with_backend`](crate::RedbLog::open_with_backend)
/// reopens it after a failure. As a [`StorageBackend`] itself it is the
/// database file.
#[derive(Clone, Debug)]
pub struct FaultBackend {
    state: Arc<Mutex<State>>,
    file: usize,
}

impl Default for FaultBackend {
    fn default() -> Self {
        FaultBackend::new()
    }
}

/// The files one crash would leave: the database and the write-ahead log.
#[derive(Clone, Debug, Default)]
pub struct DiskImage {
    /// The database file's bytes.
    pub database: Vec<u8>,
    /// The write-ahead log's bytes.
    pub wal: Vec<u8>,
}

impl DiskImage {
    /// Writes the image as a log at `path` ([`RedbLog::open`](crate::RedbLog::open)
    /// then opens it): the database at `path`, the write-ahead log beside it.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.database)?;
        std::fs::write(crate::RedbLog::wal_path(path), &self.wal)
    }

    fn file_mut(&mut self, file: usize) -> &mut Vec<u8> {
        if file == WAL {
            &mut self.wal
        } else {
            &mut self.database
        }
    }
}

/// The files a crash during one sync would leave.
#[derive(Clone, Debug)]
pub struct CrashImage {
    /// The sync during which the crash happens (1-based, counted over both
    /// files): every sync before it completed.
    pub sync: u64,
    /// Only what was synced.
    pub durable: DiskImage,
    /// What was synced plus a random subset of the writes made to each
    /// file after its last completed sync (torn write-back).
    pub torn: DiskImage,
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
        Op::Sync => {}
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
                journalling: true,
                ..State::default()
            })),
            file: DATABASE,
        }
    }

    /// Stops journalling (long simulations that need no crash image).
    pub fn without_journal(self) -> Self {
        {
            let mut s = self.lock();
            s.journalling = false;
            s.journal.clear();
        }
        self
    }

    /// The database file of this disk.
    pub fn database(&self) -> FaultBackend {
        FaultBackend {
            state: self.state.clone(),
            file: DATABASE,
        }
    }

    /// The write-ahead log file of this disk.
    pub fn wal(&self) -> FaultBackend {
        FaultBackend {
            state: self.state.clone(),
            file: WAL,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes so far, to either file (failed ones included).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Syncs so far, of either file (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Faults injected so far (each failed write, growth or sync counts once).
    pub fn faults_injected(&self) -> u64 {
        self.lock().injected
    }

    /// The `n`th write from now to either file (1 = the next one) fails, once.
    pub fn fail_write(&self, n: u64) {
        let mut s = self.lock();
        s.fail_write_at = Some(s.writes + n.max(1));
    }

    /// The `n`th sync from now of either file (1 = the next one) fails, once.
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

    /// The live files (what a clean close would leave).
    pub fn live_image(&self) -> DiskImage {
        let s = self.lock();
        DiskImage {
            database: s.live[DATABASE].clone(),
            wal: s.live[WAL].clone(),
        }
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
        let journal = self.lock().journal.clone();
        let mut rng = seed;
        let mut durable = DiskImage::default();
        // Each file's writes since its last completed sync.
        let mut unsynced: [Vec<&Op>; FILES] = Default::default();
        let mut image = |durable: &DiskImage, unsynced: &[Vec<&Op>; FILES], sync: u64| {
            let mut torn = durable.clone();
            for (file, ops) in unsynced.iter().enumerate() {
                for op in ops {
                    // Length changes are metadata: keep them half the time too.
                    if splitmix(&mut rng).is_multiple_of(2) {
                        apply(torn.file_mut(file), op);
                    }
                }
            }
            f(CrashImage {
                sync,
                durable: durable.clone(),
                torn,
            });
        };
        let mut sync = 0;
        for (file, op) in &journal {
            let Some(pending) = unsynced.get_mut(*file) else {
                continue;
            };
            match op {
                Op::Sync => {
                    sync += 1;
                    image(&durable, &unsynced, sync);
                    let target = durable.file_mut(*file);
                    for op in unsynced
                        .get_mut(*file)
                        .map(std::mem::take)
                        .unwrap_or_default()
                    {
                        apply(target, op);
                    }
                }
                op => pending.push(op),
            }
        }
        image(&durable, &unsynced, sync + 1);
    }

    fn record(s: &mut State, file: usize, op: Op) {
        if s.journalling {
            s.journal.push((file, op));
        }
    }

    fn live<'s>(&self, s: &'s mut State) -> &'s mut Vec<u8> {
        let file = self.file.min(FILES - 1);
        &mut s.live[file]
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
        let mut s = self.lock();
        Ok(self.live(&mut s).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), IoError> {
        let mut s = self.lock();
        let live = self.live(&mut s);
        let start = usize::try_from(offset).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| live.get(start..end))
            .ok_or_else(|| IoError::from(ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), IoError> {
        let mut s = self.lock();
        if s.read_only {
            return Err(injected(&mut s, ErrorKind::ReadOnlyFilesystem, READ_ONLY));
        }
        if s.full && len > self.live(&mut s).len() as u64 {
            return Err(injected(&mut s, ErrorKind::StorageFull, FULL));
        }
        let n = usize::try_from(len).map_err(|_| IoError::from(ErrorKind::InvalidInput))?;
        self.live(&mut s).resize(n, 0);
        FaultBackend::record(&mut s, self.file, Op::SetLen(len));
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
        FaultBackend::record(&mut s, self.file, Op::Sync);
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
        let live = self.live(&mut s);
        if live.len() < end {
            live.resize(end, 0);
        }
        if let Some(dst) = live.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        FaultBackend::record(
            &mut s,
            self.file,
            Op::Write {
                offset,
                data: data.to_vec(),
            },
        );
        Ok(())
    }
}
