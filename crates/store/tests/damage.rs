//! A damaged redb file: every byte of a small, checkpointed store flipped
//! in turn. redb trusts its own pages and panics on many damaged ones;
//! the log must turn that into an error naming the file, and must never
//! hand back a changed or shortened ledger as if it were whole.

use std::sync::{Arc, Once, RwLock};
use std::time::Instant;

use keyledger_core::TenantId;
use keyledger_store::chain::{self, ChainReport};
use keyledger_store::conformance::{sample_events, tenant};
use keyledger_store::{
    EventLog, Hash, RawRecord, Record, RedbLog, StoreError, TenantAppend, WalOptions,
};
use redb::StorageBackend;

/// One file in memory; clones share it, as a file's handles do.
#[derive(Clone, Debug, Default)]
struct Memory(Arc<RwLock<Vec<u8>>>);

impl Memory {
    fn holding(bytes: Vec<u8>) -> Self {
        Memory(Arc::new(RwLock::new(bytes)))
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl StorageBackend for Memory {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let data = self.0.read().unwrap_or_else(|e| e.into_inner());
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| data.get(start..start.checked_add(out.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut file = self.0.write().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(data.len())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        if file.len() < end {
            file.resize(end, 0);
        }
        if let Some(dst) = file.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        Ok(())
    }
}

/// Opens the redb file `bytes` with an empty write-ahead log.
fn open(bytes: Vec<u8>) -> Result<RedbLog, StoreError> {
    RedbLog::open_with_storage(Memory::holding(bytes), Memory::default(), WAL)
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const READ_MAX: usize = 1000;
/// A small write-ahead log: preallocating the default 1 MiB in memory would
/// take most of the time of every open.
const WAL: WalOptions = WalOptions {
    capacity: 16 << 10,
    frames_max: 16,
};

/// Everything a reader can see of the log, read every way there is.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The last position.
    head: u64,
    /// `read_after` from 0 to the end.
    all: Vec<Record>,
    tenants: Vec<TenantId>,
    /// Per tenant of [`TENANTS`].
    per_tenant: Vec<TenantSeen>,
}

/// One tenant's records as stored and as read, and its head.
#[derive(Debug, PartialEq)]
struct TenantSeen {
    records: Vec<RawRecord>,
    typed: Vec<Record>,
    head: Option<(u64, Hash)>,
}

/// Reads everything, recomputes every chain of [`TENANTS`] and checks the
/// per-key index against the records. `Ok(None)` when some chain does not
/// verify or the index differs (the damage was named);
/// `Err` when some read failed.
fn read_everything(log: &RedbLog) -> Result<Option<Seen>, StoreError> {
    let head = log.head()?;
    let mut all = Vec::new();
    // In pages, so a read that starts past the first page is checked too;
    // bounded, so a log that never ends fails instead of hanging.
    for _ in 0..READ_MAX {
        let after = all.last().map_or(0, |r: &Record| r.position);
        let page = log.read_after(after, 7)?;
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let tenants = log.tenants()?;
    let mut per_tenant = Vec::new();
    let mut verified = true;
    for t in TENANTS.map(tenant) {
        let records = log.read_tenant_raw(&t, 0, READ_MAX)?;
        let typed = log.read_tenant(&t, 0, READ_MAX)?;
        let head = log.tenant_head(&t)?;
        let report: ChainReport = chain::verify_tenant(log, &t)?;
        verified &= report.ok;
        per_tenant.push(TenantSeen {
            records,
            typed,
            head,
        });
    }
    // The per-key index, derived from the records, must equal them
    // (`replay`'s check): a damaged entry is named, never read as a
    // shorter history or smaller sums.
    if let Some(check) = log.check_key_index()? {
        verified &= check.difference.is_none();
    }
    Ok(verified.then_some(Seen {
        head,
        all,
        tenants,
        per_tenant,
    }))
}

/// The redb file of a small log: a few events in each of [`TENANTS`],
/// appended in several commits, checkpointed, closed.
fn small_store() -> Vec<u8> {
    let file = Memory::default();
    let log = RedbLog::open_with_storage(file.clone(), Memory::default(), WAL)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut versions = [0u64; 3];
    for round in 0..3u64 {
        for (i, name) in TENANTS.iter().enumerate() {
            let t = tenant(name);
            let count = 1 + (round as usize + i) % 2;
            log.append(vec![TenantAppend {
                events: sample_events(&t, versions[i] + 1, count),
                tenant: t,
                expected_version: versions[i],
            }])
            .unwrap_or_else(|e| panic!("append: {e}"));
            versions[i] += count as u64;
        }
    }
    log.checkpoint().unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    // Compacted, so the file is mostly pages in use (not the pages redb
    // copied on write and freed): every byte of it is flipped below.
    let compacted = Memory::holding(file.bytes());
    {
        let mut db = redb::Database::builder()
            .create_with_backend(compacted.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        while db.compact().unwrap_or_else(|e| panic!("{e}")) {}
    }
    compacted.bytes()
}

/// What the binary does (`src/main.rs`): a panic the store catches prints
/// nothing; any other stays loud and fails the test.
fn quiet_caught_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !keyledger_store::guard::caught(info) {
                default(info);
            }
        }));
    });
}

/// What one damaged file gave.
#[derive(Debug)]
enum Outcome {
    /// Refused at open.
    OpenRefused(StoreError),
    /// Opened, but a read failed.
    ReadFailed(StoreError),
    /// Read whole, but a chain did not verify.
    ChainNamed,
    /// Read back exactly as before.
    Unchanged,
    /// Read back whole, every chain verified, and yet not as before.
    Changed(Box<Seen>),
}

/// Flips `offset` of `image` with `pattern`, opens the result and reads
/// everything.
fn damage(image: &[u8], offset: usize, pattern: u8, original: &Seen) -> Outcome {
    let mut bytes = image.to_vec();
    if let Some(b) = bytes.get_mut(offset) {
        *b ^= pattern;
    }
    let log = match open(bytes) {
        Ok(log) => log,
        Err(e) => return Outcome::OpenRefused(e),
    };
    match read_everything(&log) {
        Err(e) => Outcome::ReadFailed(e),
        Ok(None) => Outcome::ChainNamed,
        Ok(Some(seen)) if seen == *original => Outcome::Unchanged,
        Ok(Some(seen)) => Outcome::Changed(Box::new(seen)),
    }
}

/// redb's page size, which the file's length is a multiple of.
const PAGE_BYTES: usize = 4096;
/// Of a page in use, the first bytes also get a one-bit change (xor 0x01):
/// a page's header, where redb navigates by.
const ONE_BIT_BYTES: usize = 64;

/// How many damaged files had each outcome.
#[derive(Default, Debug, Clone, Copy)]
struct Outcomes {
    open_refused: usize,
    read_failed: usize,
    chain_named: usize,
    unchanged: usize,
    /// Errors that named the file as damaged ([`StoreError::Damaged`]).
    damaged: usize,
    /// Of those, panics inside redb the log caught.
    panics_caught: usize,
}

impl Outcomes {
    fn add(&mut self, other: Outcomes) {
        self.open_refused += other.open_refused;
        self.read_failed += other.read_failed;
        self.chain_named += other.chain_named;
        self.unchanged += other.unchanged;
        self.damaged += other.damaged;
        self.panics_caught += other.panics_caught;
    }

    fn count(&mut self, what: &str, outcome: Outcome, original: &Seen) {
        let error = match outcome {
            Outcome::OpenRefused(e) => {
                self.open_refused += 1;
                e
            }
            Outcome::ReadFailed(e) => {
                self.read_failed += 1;
                e
            }
            Outcome::ChainNamed => {
                self.chain_named += 1;
                return;
            }
            Outcome::Unchanged => {
                self.unchanged += 1;
                return;
            }
            Outcome::Changed(seen) => panic!(
                "{what}: the log reads back whole and every chain verifies, but it is not \
                 the ledger that was written:\nwas {original:#?}\nnow {seen:#?}"
            ),
        };
        if let StoreError::Damaged { file, message } = &error {
            self.damaged += 1;
            self.panics_caught += usize::from(message.contains("redb could not read it"));
            assert!(!message.is_empty(), "{what}: {error}");
            assert_eq!(
                file.to_string_lossy(),
                "(storage backend)",
                "{what}: {error}"
            );
        }
    }
}

/// Every byte of the file of a small log, flipped in turn (xor 0xff; and
/// xor 0x01, a one-bit change, for the first [`ONE_BIT_BYTES`] of each page
/// in use), opened and read every way: redb may panic inside, the log
/// never does; and the outcome is an error, a chain verification or an
/// index check that names the damage, or the very same ledger, byte for
/// byte, its per-key index equal to its records: never a
/// changed event, a missing one, or a missing tenant read back as if whole.
///
/// A page is in use when flipping its first byte (a tree page's type)
/// changes what is read; the first page (redb's header) is in use. The
/// damaged files are checked on every core.
#[test]
fn a_damaged_store_page_is_an_error_never_a_panic_or_a_smaller_ledger() {
    quiet_caught_panics();
    let started = Instant::now();
    let image = small_store();
    let original = {
        let log = open(image.clone()).unwrap_or_else(|e| panic!("{e}"));
        read_everything(&log)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the undamaged log does not verify"))
    };
    assert_eq!(original.all.len(), 13, "the store holds what was appended");
    assert_eq!(original.tenants, TENANTS.map(tenant).to_vec());
    assert_eq!(image.len() % PAGE_BYTES, 0, "whole pages");

    let in_use: Vec<usize> = (0..image.len() / PAGE_BYTES)
        .filter(|&page| {
            page == 0
                || !matches!(
                    damage(&image, page * PAGE_BYTES, 0xff, &original),
                    Outcome::Unchanged
                )
        })
        .collect();
    let mut jobs: Vec<(usize, u8)> = (0..image.len()).map(|offset| (offset, 0xff)).collect();
    for page in &in_use {
        let start = page * PAGE_BYTES;
        jobs.extend((start..start + ONE_BIT_BYTES).map(|offset| (offset, 0x01)));
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = jobs.len().div_ceil(threads);
    let mut outcomes = Outcomes::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                let (image, original) = (&image, &original);
                scope.spawn(move || {
                    let mut counted = Outcomes::default();
                    for &(offset, pattern) in part {
                        let outcome = damage(image, offset, pattern, original);
                        counted.count(
                            &format!("byte {offset} xor {pattern:#04x}"),
                            outcome,
                            original,
                        );
                    }
                    counted
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(counted) => outcomes.add(counted),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    println!(
        "a {} KiB file, pages in use {in_use:?}; {} damaged files in {:.1?}: {outcomes:?}",
        image.len() / 1024,
        jobs.len(),
        started.elapsed()
    );
    // The probe found the tree pages (one per table at least: four tables,
    // redb's table of tables).
    assert!(in_use.len() > 5, "pages in use {in_use:?}");
    assert!(
        outcomes.panics_caught > 0,
        "redb panicked on some damaged page, and the log caught it: {outcomes:?}"
    );
}
