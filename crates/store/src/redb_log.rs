//! The embedded default backend: one redb file (or any redb storage
//! backend, see [`RedbLog::open_with_backend`]).
//!
//! # On-disk layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64`: `"format"` → [`FILE_FORMAT`] |
//! | `events` | position `u64` | a stored record (below) |
//! | `tenant_index` | `(tenant &str, seq u64)` | position `u64` |
//! | `tenant_heads` | tenant `&str` | 40 bytes: last seq (u64 big-endian), last hash |
//! | `key_index` | `(tenant &str, key id u128, seq u64)` | position `u64` |
//! | `key_uses` | `(tenant &str, key id u128, seq u64)` | position and the key's uses summed ([`crate::key_uses`]) |
//!
//! `key_index` lists every record but `KeyUsed` under each key it names
//! ([`keyledger_core::touched_keys`]), `key_uses` every `KeyUsed` under its
//! key, written in the same transaction as the record (and when the
//! write-ahead log's frames are applied on open). A file made before they
//! existed, or with the first index (every record in `key_index`, `meta`:
//! `"key_index"` → 1), gets both built anew on open, in one pass over the
//! events (`"key_index_layout"` → [`KEY_INDEX_VERSION`] once built, and
//! `"key_index"` removed, so that the release before, which only checks
//! that key, builds its own index if it opens the file again, and this one
//! rebuilds after it).
//!
//! A stored record is one format byte ([`RECORD_FORMAT`]), then the postcard
//! encoding of `(position, tenant, seq, prev_hash, hash)`, then the event
//! payload ([`crate::envelope`]) up to the end. The position is stored in the
//! record as well as in the key so a read can check the two agree (the
//! position and the link are checked at append and again when read back).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable,
    StorageBackend, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use keyledger_core::{Event, KeyId, TenantId, touched_keys};

use crate::chain::{self, GENESIS, Hash};
use crate::guard;
use crate::key_uses::{self, KEY_USES};
use crate::read::{KeyPage, KeysPage, PositionPage, RecordRef, TenantPage, merge_entry};
use crate::wal::{Wal, WalOptions};
use crate::{
    EventLog, KeyIndexCheck, KeysUntil, READ_PREALLOC_RECORDS_MAX, RawRecord, Record, StoreError,
    TenantAppend, check_append, no_follow, plan,
};

/// What a log opened on a storage backend, not a file, is named.
const BACKEND_PATH: &str = "(storage backend)";

/// The version of the file layout, kept in the `meta` table.
pub const FILE_FORMAT: u64 = 1;
/// The first byte of every stored record.
pub const RECORD_FORMAT: u8 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TENANT_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("tenant_index");
const TENANT_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenant_heads");
const KEY_INDEX: TableDefinition<(&str, u128, u64), u64> = TableDefinition::new("key_index");
/// The `meta` key of the first per-key index (→ 1: every record in
/// `key_index`). The release that wrote it checks only that the key is
/// there, so this release removes it once it has built its own index:
/// an older binary opening the file then builds its own, and this one,
/// finding the key again, builds its own anew (neither trusts an index
/// the other wrote to).
const KEY_INDEX_BUILT: &str = "key_index";
/// The `meta` key of the per-key index this release writes
/// (→ [`KEY_INDEX_VERSION`]: `KeyUsed` records in `key_uses`).
const KEY_INDEX_LAYOUT: &str = "key_index_layout";
/// The per-key index this release writes.
const KEY_INDEX_VERSION: u64 = 2;

const HEAD_BYTES: usize = 8 + 32;
/// The `meta` key holding the write-ahead log's epoch ([`crate::wal`]).
const WAL_EPOCH: &str = "wal_epoch";

/// The fixed part of a stored record, before the payload.
#[derive(Serialize, Deserialize)]
struct StoredHeader<'a> {
    position: u64,
    tenant: &'a str,
    seq: u64,
    prev_hash: Hash,
    hash: Hash,
}

/// A stored record, borrowed from the bytes it was read from.
struct Stored<'a> {
    header: StoredHeader<'a>,
    payload: &'a [u8],
}

impl Stored<'_> {
    fn as_ref(&self) -> RecordRef<'_> {
        let h = &self.header;
        RecordRef {
            position: h.position,
            tenant: h.tenant,
            seq: h.seq,
            prev_hash: h.prev_hash,
            hash: h.hash,
            payload: self.payload,
        }
    }
}

fn encode_stored(header: &StoredHeader<'_>, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(RECORD_FORMAT);
    let buf = std::mem::take(out);
    *out = match postcard::to_extend(header, buf) {
        Ok(buf) => buf,
        // postcard writing into a Vec fails only for sequences of unknown
        // length, which the header does not have.
        Err(e) => unreachable!("postcard cannot fail writing a record header into a Vec: {e}"),
    };
    out.extend_from_slice(payload);
}

fn decode_stored(position: u64, bytes: &[u8]) -> Result<Stored<'_>, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt { position, message };
    match bytes.split_first() {
        None => Err(corrupt("the stored record is empty".into())),
        Some((&RECORD_FORMAT, rest)) => {
            let (header, payload) = postcard::take_from_bytes::<StoredHeader<'_>>(rest)
                .map_err(|e| corrupt(format!("the stored record's header is malformed: {e}")))?;
            // postcard reads overlong varints; one record has one stored
            // form (found by the `record_decode` fuzz target).
            if rest.len() - payload.len() != header_len(&header) {
                return Err(corrupt(
                    "the stored record's header is not in its canonical encoding".into(),
                ));
            }
            Ok(Stored { header, payload })
        }
        Some((other, _)) => Err(corrupt(format!(
            "unknown stored record format {other} (this release reads {RECORD_FORMAT})"
        ))),
    }
}

/// Bytes of a postcard varint holding `v`.
const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes of the canonical postcard encoding of `h`.
fn header_len(h: &StoredHeader<'_>) -> usize {
    varint_len(h.position)
        + varint_len(h.tenant.len() as u64)
        + h.tenant.len()
        + varint_len(h.seq)
        + 2 * 32
}

fn encode_head(seq: u64, hash: &Hash) -> [u8; HEAD_BYTES] {
    let mut out = [0u8; HEAD_BYTES];
    let (s, h) = out.split_at_mut(8);
    s.copy_from_slice(&seq.to_be_bytes());
    h.copy_from_slice(hash);
    out
}

fn decode_head(tenant: &str, bytes: &[u8]) -> Result<(u64, Hash), StoreError> {
    let corrupt = || StoreError::Corrupt {
        position: 0,
        message: format!(
            "tenant {}: the stored head is {} bytes, not {HEAD_BYTES}",
            tenant.escape_debug(),
            bytes.len()
        ),
    };
    let (seq, hash) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let hash: Hash = hash.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*seq), hash))
}

/// Wraps a redb failure with what was being done. Corruption redb found
/// is [`StoreError::Damaged`], with the file left empty for
/// [`RedbLog::guarded`] to fill in.
pub(crate) fn backend<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| match e.into() {
        redb::Error::Corrupted(m) => StoreError::Damaged {
            file: PathBuf::new(),
            message: format!("{what}: redb found it corrupt: {m}"),
        },
        e => StoreError::Backend(format!("{what}: {e}")),
    }
}

/// Opens (or reopens) the database: from a path, or from a storage backend.
type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// redb's page cache for the log file unless told otherwise: 64 MiB (redb's
/// own default is 1 GiB, which a large log fills; the log is read mostly at
/// start-up and by the audit reads, which stream it).
pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// An [`EventLog`] in one redb file and its write-ahead log.
///
/// Every [`append`](EventLog::append) is one redb write transaction. It is
/// made durable by writing its records as one frame to the write-ahead log
/// and syncing that (one small write and one `fdatasync`), then committed
/// to redb without a sync; every few thousand appends, or when the
/// write-ahead log is full, an append commits to redb durably instead (a
/// checkpoint) and the write-ahead log starts over. Opening the log applies
/// the frames written since the last checkpoint ([`crate::wal`]). Reads run
/// in read transactions, so they see only committed records and never
/// block the writer.
///
/// # After an I/O failure
///
/// Once a write or sync fails, redb refuses every later write of that
/// handle (`PreviousIo`) until the database is reopened, which repairs it.
/// So a failed append drops the handle and reopens the file at once, which
/// applies every whole frame of the write-ahead log and checkpoints them,
/// then looks whether the failed append reached the disk after all (a sync
/// can fail after the data was written): if the last record it was writing
/// is there with the hash it computed, the append succeeded and returns its
/// records; otherwise nothing was written and it returns the error. When
/// the reopen itself fails (the disk is still full, say) the log stays
/// closed, the error says the outcome is unknown, and every later call
/// tries to reopen it first, so the log recovers by itself once the disk
/// does.
pub struct RedbLog {
    db: RwLock<Option<Database>>,
    opener: Opener,
    path: PathBuf,
    /// Held by every write from before its transaction starts until after
    /// it commits, so frames are written in the order of the commits.
    wal: Mutex<Wal>,
}

impl std::fmt::Debug for RedbLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLog").field("path", &self.path).finish()
    }
}

/// Creates a new, empty log at `path` by making it under a temporary name
/// and renaming it into place (then syncing the directory).
fn create_atomically(path: &Path) -> Result<(), StoreError> {
    let io = |what: &'static str| {
        move |e: std::io::Error| StoreError::Backend(format!("{what} for {}: {e}", path.display()))
    };
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    let temp = PathBuf::from(name);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing a half-made log")(e)),
    }
    {
        let db = no_follow::open(&mut no_follow::read_write_private(), &temp)
            .map_err(DatabaseError::from)
            .and_then(redb::backends::FileBackend::new)
            .and_then(|file| Database::builder().create_with_backend(file))
            .map_err(|e| {
                StoreError::Backend(format!("creating the event log {}: {e}", temp.display()))
            })?;
        init(&db, path)?;
    }
    std::fs::rename(&temp, path).map_err(io("moving the new log into place"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the data directory"))?;
    }
    Ok(())
}

/// Creates the tables in a new file; checks the layout of an existing one.
fn init(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db
        .begin_write()
        .map_err(backend("starting the first write"))?;
    {
        let mut meta = txn.open_table(META).map_err(backend("opening meta"))?;
        let format = meta
            .get("format")
            .map_err(backend("reading the file format"))?
            .map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FILE_FORMAT)
                    .map_err(backend("writing the file format"))?;
            }
            Some(FILE_FORMAT) => {}
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "{} holds layout version {other}; this release reads {FILE_FORMAT}",
                    path.display()
                )));
            }
        }
        txn.open_table(EVENTS).map_err(backend("creating events"))?;
        txn.open_table(TENANT_INDEX)
            .map_err(backend("creating tenant_index"))?;
        txn.open_table(TENANT_HEADS)
            .map_err(backend("creating tenant_heads"))?;
        let first = meta
            .get(KEY_INDEX_BUILT)
            .map_err(backend("reading whether the first key index is there"))?
            .is_some();
        let built = meta
            .get(KEY_INDEX_LAYOUT)
            .map_err(backend("reading whether the key index is built"))?
            .map(|v| v.value());
        if first || built != Some(KEY_INDEX_VERSION) {
            build_key_index(&txn, true)?;
            meta.remove(KEY_INDEX_BUILT)
                .map_err(backend("removing the first key index's mark"))?;
            meta.insert(KEY_INDEX_LAYOUT, KEY_INDEX_VERSION)
                .map_err(backend("recording the key index built"))?;
        }
    }
    txn.commit().map_err(backend("committing the tables"))
}

/// Makes the per-key index anew from every record of the `events` table:
/// the one-time pass a file made before the index (or before `key_uses`)
/// needs (a new file has no events). A record that cannot be decoded
/// fails the open, named (as a replay of it would). `uses_apart: false`
/// builds the first index (every record in `key_index`), for tests of the
/// upgrade.
fn build_key_index(txn: &WriteTransaction, uses_apart: bool) -> Result<(), StoreError> {
    txn.delete_table(KEY_INDEX)
        .map_err(backend("deleting key_index"))?;
    txn.delete_table(KEY_USES)
        .map_err(backend("deleting key_uses"))?;
    let events = txn.open_table(EVENTS).map_err(backend("opening events"))?;
    let mut keys = txn
        .open_table(KEY_INDEX)
        .map_err(backend("creating key_index"))?;
    let mut uses = txn
        .open_table(KEY_USES)
        .map_err(backend("creating key_uses"))?;
    fill_key_index(&events, &mut keys, &mut uses, uses_apart)?;
    if !uses_apart {
        drop(uses);
        txn.delete_table(KEY_USES)
            .map_err(backend("deleting key_uses"))?;
    }
    Ok(())
}

/// Lists every record of `events` in the per-key index tables (empty
/// ones): what [`build_key_index`] and [`RedbLog::check_key_index`] share.
/// `uses_apart: false` lists every record in `keys`, as the first index did.
fn fill_key_index(
    events: &impl ReadableTable<u64, &'static [u8]>,
    keys: &mut redb::Table<'_, (&'static str, u128, u64), u64>,
    uses: &mut redb::Table<'_, (&'static str, u128, u64), &'static [u8]>,
    uses_apart: bool,
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for entry in events.iter().map_err(backend("reading events"))? {
        let (k, v) = entry.map_err(backend("reading an event"))?;
        let position = k.value();
        // A record that does not decode is refused, not left out: the
        // index (a key's history, its uses summed) would be short of it
        // without a word.
        let stored = decode_stored(position, v.value())?;
        let h = &stored.header;
        let event = decode_payload(h.tenant, stored.payload)
            .map_err(|message| StoreError::Corrupt { position, message })?;
        if uses_apart {
            index_event(keys, uses, h, &event, &mut buf)?;
        } else {
            for key in touched_keys(&event) {
                keys.insert((h.tenant, key.ulid().0, h.seq), position)
                    .map_err(backend("writing the key index"))?;
            }
        }
    }
    Ok(())
}

/// The first entry where table `def` of the stored index and of the one
/// built from the records differ, named, counting the equal entries into
/// `equal`.
fn first_difference<V: redb::Value + 'static>(
    def: TableDefinition<(&'static str, u128, u64), V>,
    stored: &redb::ReadTransaction,
    built: &redb::ReadTransaction,
    equal: &mut u64,
) -> Result<Option<String>, StoreError> {
    let what = redb::TableHandle::name(&def).to_owned();
    let stored = stored
        .open_table(def)
        .map_err(backend("opening the key index"))?;
    let built = built
        .open_table(def)
        .map_err(backend("opening the rebuilt key index"))?;
    let name = |(tenant, key, seq): (&str, u128, u64)| {
        format!(
            "tenant {tenant}, key {}, event {seq}",
            keyledger_core::KeyId::from_ulid(ulid::Ulid(key))
        )
    };
    let mut stored = stored.iter().map_err(backend("reading the key index"))?;
    let mut built = built
        .iter()
        .map_err(backend("reading the rebuilt key index"))?;
    loop {
        let a = stored
            .next()
            .transpose()
            .map_err(backend("reading the key index"))?;
        let b = built
            .next()
            .transpose()
            .map_err(backend("reading the rebuilt key index"))?;
        let (a, b) = match (a, b) {
            (None, None) => return Ok(None),
            (Some((k, _)), None) => {
                return Ok(Some(format!("{what}: {} is in no record", name(k.value()))));
            }
            (None, Some((k, _))) => {
                return Ok(Some(format!("{what}: {} is missing", name(k.value()))));
            }
            (Some(a), Some(b)) => (a, b),
        };
        let (ka, kb) = (a.0.value(), b.0.value());
        if ka < kb {
            return Ok(Some(format!("{what}: {} is in no record", name(ka))));
        }
        if kb < ka {
            return Ok(Some(format!("{what}: {} is missing", name(kb))));
        }
        if V::as_bytes(&a.1.value()).as_ref() != V::as_bytes(&b.1.value()).as_ref() {
            return Ok(Some(format!(
                "{what}: {} differs from what the records give",
                name(ka)
            )));
        }
        *equal += 1;
    }
}

/// Lists a record in the per-key index: a `KeyUsed` in `key_uses`, any
/// other under each key it names in `key_index`.
fn index_event(
    keys: &mut redb::Table<'_, (&'static str, u128, u64), u64>,
    uses: &mut redb::Table<'_, (&'static str, u128, u64), &'static [u8]>,
    h: &StoredHeader<'_>,
    event: &Event,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    if let Some(used) = keyledger_core::as_use(event) {
        return key_uses::insert(uses, h.tenant, h.seq, h.position, used, buf);
    }
    for key in touched_keys(event) {
        keys.insert((h.tenant, key.ulid().0, h.seq), h.position)
            .map_err(backend("writing the key index"))?;
    }
    Ok(())
}

/// The event a stored payload encodes.
fn decode_payload(tenant: &str, payload: &[u8]) -> Result<Event, String> {
    let tenant: TenantId = tenant.parse().map_err(|e| format!("{e}"))?;
    crate::envelope::decode(&tenant, payload).map_err(|e| e.to_string())
}

impl RedbLog {
    /// Opens the log in the file at `path`, creating it (and its tables)
    /// when it does not exist, with its write-ahead log beside it
    /// ([`Self::wal_path`]). Applies what the write-ahead log holds past
    /// the last checkpoint. Refuses a file of another layout version, and a
    /// log another process has open.
    ///
    /// A new file is made whole under a temporary name (`<path>.creating`)
    /// and renamed into place, so a crash while creating it leaves either
    /// no file or a complete, empty log: never a half-made file that would
    /// not open.
    pub fn open(path: &Path) -> Result<RedbLog, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES_DEFAULT)
    }

    /// [`RedbLog::open`] with redb's page cache capped at `cache_bytes`
    /// (`keyledger --log-cache-mib`; [`CACHE_BYTES_DEFAULT`] otherwise).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<RedbLog, StoreError> {
        if !path.exists() {
            create_atomically(path)?;
        }
        let wal = open_wal_file(&Self::wal_path(path))?;
        let p = path.to_owned();
        Self::open_with(
            path.to_owned(),
            Box::new(move || {
                let file = no_follow::open(&mut no_follow::read_write_private(), &p)?;
                Database::builder()
                    .set_cache_size(cache_bytes)
                    .create_with_backend(redb::backends::FileBackend::new(file)?)
            }),
            Box::new(wal),
            WalOptions::default(),
        )
    }

    /// The write-ahead log's file for the log at `path`: `<path>-wal`. It
    /// belongs to the log: a copy of the log is both files, or the redb
    /// file alone after a clean shutdown (which checkpoints).
    pub fn wal_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push("-wal");
        PathBuf::from(name)
    }

    /// Opens the log on the fault-injecting disk of the tests
    /// ([`FaultBackend`](crate::faults::FaultBackend)): its database file
    /// and its write-ahead log. The write-ahead log is small there (16 KiB,
    /// 16 frames), so a short workload crosses many checkpoints.
    #[cfg(feature = "test-support")]
    pub fn open_with_backend(disk: crate::faults::FaultBackend) -> Result<RedbLog, StoreError> {
        Self::open_with_storage(
            disk.database(),
            disk.wal(),
            WalOptions {
                capacity: 16 << 10,
                frames_max: 16,
            },
        )
    }

    /// Opens the log on redb [`StorageBackend`]s instead of files: one for
    /// the database, one for the write-ahead log. `database` is cloned for
    /// every (re)open, so its clones must share one storage, as a file's
    /// handles do.
    pub fn open_with_storage<B: StorageBackend + Clone>(
        database: B,
        wal: impl StorageBackend,
        options: WalOptions,
    ) -> Result<RedbLog, StoreError> {
        Self::open_with(
            PathBuf::from(BACKEND_PATH),
            Box::new(move || Database::builder().create_with_backend(database.clone())),
            Box::new(wal),
            options,
        )
    }

    fn open_with(
        path: PathBuf,
        opener: Opener,
        wal: Box<dyn StorageBackend>,
        options: WalOptions,
    ) -> Result<RedbLog, StoreError> {
        let log = RedbLog {
            db: RwLock::new(None),
            opener,
            path,
            wal: Mutex::new(Wal::new(wal, options)?),
        };
        log.guarded(|| log.reopen(&mut log.lock_wal()))?;
        Ok(log)
    }

    fn lock_wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the handle (releasing the file) and opens the file again,
    /// which runs redb's repair when the last writer failed; then applies
    /// the write-ahead log's frames and checkpoints.
    fn reopen(&self, wal: &mut Wal) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        *slot = None;
        let db = (self.opener)().map_err(|e| match e {
            // What redb says of a file that is not (or no longer) a database.
            DatabaseError::Storage(redb::StorageError::Corrupted(m)) => StoreError::Damaged {
                file: self.path.clone(),
                message: format!("redb found it corrupt: {m}"),
            },
            DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::Damaged {
                    file: self.path.clone(),
                    message: format!("redb: {io}"),
                }
            }
            e => StoreError::Backend(format!(
                "opening the event log {}: {e}",
                self.path.display()
            )),
        })?;
        init(&db, &self.path)?;
        let epoch = apply_wal(&db, wal)?;
        wal.restart(epoch);
        *slot = Some(db);
        Ok(())
    }

    /// Runs `f`, which calls into redb, so that damage redb meets in the
    /// file is a [`StoreError::Damaged`] naming the file, never a panic
    /// ([`guard`]): a panic inside `f` (at open, at a call, or while an
    /// iterator walks a damaged page) is caught. After one, or after redb
    /// reported the file corrupt, the database handle is dropped and never
    /// used again; the next call opens the file afresh. Every public entry
    /// point runs its whole body under it, so no handle, transaction or
    /// lock of `f` is alive when it drops the handle.
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut message = match guard::run(f) {
            Ok(Err(StoreError::Damaged { message, .. })) => message,
            Ok(done) => return done,
            Err(panic) => format!("redb could not read it: {panic}"),
        };
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(panic) = guard::run(move || drop(db)) {
            message.push_str(&format!("; closing it failed too: {panic}"));
        }
        Err(StoreError::Damaged {
            file: self.path.clone(),
            message,
        })
    }

    /// The open database, reopening it first when a failure closed it.
    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        {
            let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
            if guard.is_some() {
                return Ok(DbGuard(guard));
            }
        }
        self.db_locked(&mut self.lock_wal())
    }

    /// [`Self::db`] for a caller that holds the write-ahead log.
    fn db_locked(&self, wal: &mut Wal) -> Result<DbGuard<'_>, StoreError> {
        {
            let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
            if guard.is_some() {
                return Ok(DbGuard(guard));
            }
        }
        self.reopen(wal)?;
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            Ok(DbGuard(guard))
        } else {
            Err(StoreError::Backend(format!(
                "the event log {} was closed by a failure",
                self.path.display()
            )))
        }
    }

    /// After a failed append: reopens the file (redb refuses every write of
    /// a handle that saw an I/O error), which applies the write-ahead log,
    /// and looks whether the append reached the disk anyway. `Ok` when the
    /// last record planned (`position`, `hash`) is stored: the append
    /// succeeded. Otherwise the failure.
    fn recover_append(
        &self,
        wal: &mut Wal,
        failure: String,
        last: Option<(u64, Hash)>,
    ) -> Result<(), StoreError> {
        if let Err(e) = self.reopen(wal) {
            *self.db.write().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(StoreError::Backend(format!(
                "{failure}; reopening the log failed too ({e}): whether this append reached \
                 the disk is known only once the log reopens"
            )));
        }
        let Some((position, hash)) = last else {
            return Err(StoreError::Backend(failure));
        };
        match self.stored_record(position) {
            Ok(Some(r)) if r.hash == hash => Ok(()),
            Ok(_) => Err(StoreError::Backend(failure)),
            Err(e) => Err(StoreError::Backend(format!(
                "{failure}; reading the log back after reopening it failed ({e}): whether \
                 this append reached the disk is known only once the log reads back"
            ))),
        }
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StoreError> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(backend("starting a read"))?;
        txn.open_table(def).map_err(backend("opening a table"))
    }

    /// [`EventLog::check_key_index`]'s comparison: the index built from one
    /// read of the records into `built`, an empty scratch database (not
    /// synced: it is deleted after), then compared with the stored one as
    /// of that same read.
    fn compare_key_index(&self, built: &Database) -> Result<KeyIndexCheck, StoreError> {
        let read = self
            .db()?
            .begin_read()
            .map_err(backend("starting a read"))?;
        let txn = built.begin_write().map_err(backend("starting a write"))?;
        {
            let events = read.open_table(EVENTS).map_err(backend("opening events"))?;
            let mut keys = txn
                .open_table(KEY_INDEX)
                .map_err(backend("creating key_index"))?;
            let mut uses = txn
                .open_table(KEY_USES)
                .map_err(backend("creating key_uses"))?;
            fill_key_index(&events, &mut keys, &mut uses, true)?;
        }
        commit(txn, Durability::None)?;
        let rebuilt = built.begin_read().map_err(backend("starting a read"))?;
        let mut found = KeyIndexCheck::default();
        found.difference = first_difference(KEY_INDEX, &read, &rebuilt, &mut found.entries)?;
        if found.difference.is_none() {
            found.difference = first_difference(KEY_USES, &read, &rebuilt, &mut found.entries)?;
        }
        Ok(found)
    }

    /// Runs `f` on the tables in one write transaction and commits it
    /// durably as a checkpoint (the forensic hooks below), or through the
    /// write-ahead log when `f` left a frame that fits. Returns what `f`
    /// returned and whether the commit failed (then the handle must be
    /// reopened).
    fn write<T>(
        &self,
        wal: &mut Wal,
        through_wal: bool,
        f: impl FnOnce(&mut Tables<'_>, &mut Wal) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db_locked(wal)?;
        let txn = db.begin_write().map_err(backend("starting a write"))?;
        let (out, checkpoint) = {
            let mut tables = Tables::open(&txn)?;
            let out = f(&mut tables, wal)?;
            let checkpoint = !(through_wal && wal.has_room());
            if checkpoint {
                tables
                    .meta
                    .insert(WAL_EPOCH, wal.epoch + 1)
                    .map_err(backend("raising the write-ahead log's epoch"))?;
            }
            (out, checkpoint)
        };
        if checkpoint {
            commit(txn, Durability::Immediate)?;
            wal.restart(wal.epoch + 1);
        } else {
            // Durable once the frame is: then the commit itself needs no sync.
            if let Err(e) = wal.write_frame() {
                txn.abort().ok();
                return Err(e);
            }
            commit(txn, Durability::None)?;
        }
        Ok(out)
    }

    /// A durable redb commit of everything committed so far, starting the
    /// write-ahead log over (what a clean shutdown does).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.guarded(|| self.write(&mut self.lock_wal(), false, |_, _| Ok(())))
    }
}

impl Drop for RedbLog {
    /// Checkpoints, so a stopped log is whole in its redb file.
    fn drop(&mut self) {
        let wal = self.wal.get_mut().unwrap_or_else(|e| e.into_inner());
        let open = self
            .db
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if wal.frames > 0 && open {
            // Best effort: after a failure here the next open applies the
            // write-ahead log instead.
            let _ = self.checkpoint();
        }
        // Closing writes redb's allocator state, which may meet damage too.
        let db = self.db.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let _ = guard::run(move || drop(db));
    }
}

/// Commits with the durability asked for.
fn commit(mut txn: WriteTransaction, durability: Durability) -> Result<(), StoreError> {
    txn.set_durability(durability)
        .map_err(backend("choosing the commit's durability"))?;
    txn.commit().map_err(backend("committing"))
}

/// Opens (creating and syncing the directory if new) the write-ahead log
/// file at `path` and locks it for this process.
fn open_wal_file(path: &Path) -> Result<redb::backends::FileBackend, StoreError> {
    let io = |what: &'static str| {
        move |e: std::io::Error| StoreError::Backend(format!("{what} {}: {e}", path.display()))
    };
    let existed = path.exists();
    let file = no_follow::open(&mut no_follow::read_write_private(), path)
        .map_err(io("opening the write-ahead log"))?;
    file.try_lock().map_err(|e| {
        StoreError::Backend(format!(
            "the write-ahead log {} is in use by another process ({e})",
            path.display()
        ))
    })?;
    if !existed && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))?;
    }
    redb::backends::FileBackend::new(file).map_err(|e| {
        StoreError::Backend(format!(
            "opening the write-ahead log {}: {e}",
            path.display()
        ))
    })
}

/// Applies the write-ahead log's frames of the current epoch that the redb
/// file does not hold yet, and raises the epoch, in one durable commit.
/// Returns the new epoch. A record the file already holds (redb makes its
/// last commits durable when it is closed) must be there with the same
/// hash; a record past the end must follow on from the tenant's chain.
fn apply_wal(db: &Database, wal: &Wal) -> Result<u64, StoreError> {
    let txn = db
        .begin_write()
        .map_err(backend("starting the write-ahead log's replay"))?;
    let epoch = {
        let mut t = Tables::open(&txn)?;
        let epoch = t
            .meta
            .get(WAL_EPOCH)
            .map_err(backend("reading the write-ahead log's epoch"))?
            .map_or(0, |v| v.value());
        let mut last = t.last_position()?;
        let mut heads: Vec<(String, u64, Hash)> = Vec::new();
        for bytes in wal.scan(epoch)?.iter().flatten() {
            let stored = decode_stored(last + 1, bytes)?;
            let h = &stored.header;
            let corrupt = |why: &str| StoreError::Corrupt {
                position: h.position,
                message: format!("the write-ahead log's record {why}"),
            };
            if h.position <= last {
                let held = t
                    .events
                    .get(h.position)
                    .map_err(backend("reading an event"))?
                    .map(|v| decode_stored(h.position, v.value()).map(|s| s.header.hash))
                    .transpose()?;
                if held != Some(h.hash) {
                    return Err(corrupt("differs from the one the log holds"));
                }
                continue;
            }
            if h.position != last + 1 {
                return Err(corrupt(&format!("does not follow position {last}")));
            }
            let (seq, prev) = match heads.iter().find(|(t, ..)| t == h.tenant) {
                Some((_, seq, hash)) => (*seq, *hash),
                None => t.checked_head(h.tenant)?,
            };
            if h.seq != seq + 1
                || h.prev_hash != prev
                || h.hash != chain::link(&prev, h.tenant, h.seq, stored.payload)
            {
                return Err(corrupt("does not extend its tenant's chain"));
            }
            let event = decode_payload(h.tenant, stored.payload)
                .map_err(|e| corrupt(&format!("does not decode ({e})")))?;
            t.put(h, bytes, &event)?;
            match heads.iter_mut().find(|(t, ..)| t == h.tenant) {
                Some(head) => *head = (h.tenant.to_owned(), h.seq, h.hash),
                None => heads.push((h.tenant.to_owned(), h.seq, h.hash)),
            }
            last = h.position;
        }
        for (tenant, seq, hash) in &heads {
            t.heads
                .insert(tenant.as_str(), encode_head(*seq, hash).as_slice())
                .map_err(backend("writing a tenant head"))?;
        }
        let epoch = epoch + 1;
        t.meta
            .insert(WAL_EPOCH, epoch)
            .map_err(backend("raising the write-ahead log's epoch"))?;
        epoch
    };
    commit(txn, Durability::Immediate)?;
    Ok(epoch)
}

/// A read lock on the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match &*self.0 {
            Some(db) => db,
            // `RedbLog::db` hands out a guard only when the slot is full.
            None => unreachable!("a DbGuard is made only over an open database"),
        }
    }
}

struct Tables<'txn> {
    meta: redb::Table<'txn, &'static str, u64>,
    events: redb::Table<'txn, u64, &'static [u8]>,
    index: redb::Table<'txn, (&'static str, u64), u64>,
    heads: redb::Table<'txn, &'static str, &'static [u8]>,
    keys: redb::Table<'txn, (&'static str, u128, u64), u64>,
    uses: redb::Table<'txn, (&'static str, u128, u64), &'static [u8]>,
    /// A use index entry being encoded (reused).
    use_buf: Vec<u8>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META).map_err(backend("opening meta"))?,
            events: txn.open_table(EVENTS).map_err(backend("opening events"))?,
            index: txn
                .open_table(TENANT_INDEX)
                .map_err(backend("opening tenant_index"))?,
            heads: txn
                .open_table(TENANT_HEADS)
                .map_err(backend("opening tenant_heads"))?,
            keys: txn
                .open_table(KEY_INDEX)
                .map_err(backend("opening key_index"))?,
            uses: txn
                .open_table(KEY_USES)
                .map_err(backend("opening key_uses"))?,
            use_buf: Vec::new(),
        })
    }
}

impl Tables<'_> {
    fn last_position(&self) -> Result<u64, StoreError> {
        Ok(self
            .events
            .last()
            .map_err(backend("reading the last position"))?
            .map_or(0, |(k, _)| k.value()))
    }

    /// Stores one record (its stored bytes) at its position and indexes it,
    /// in the tenant index and the per-key index ([`index_event`]: under
    /// each key its event names), refusing to overwrite the first two. The
    /// tenant's head is the caller's.
    fn put(&mut self, h: &StoredHeader<'_>, bytes: &[u8], event: &Event) -> Result<(), StoreError> {
        let position = h.position;
        let taken = self
            .events
            .insert(position, bytes)
            .map_err(backend("writing an event"))?
            .is_some();
        if taken {
            return Err(StoreError::Corrupt {
                position,
                message: "the position after the last one is already taken".into(),
            });
        }
        let taken = self
            .index
            .insert((h.tenant, h.seq), position)
            .map_err(backend("writing the tenant index"))?
            .is_some();
        if taken {
            return Err(StoreError::Corrupt {
                position,
                message: format!(
                    "tenant {}: sequence number {} is already indexed past the head",
                    h.tenant, h.seq
                ),
            });
        }
        index_event(&mut self.keys, &mut self.uses, h, event, &mut self.use_buf)
    }

    /// The tenant's head, checked against its last stored record (the
    /// append side of "assert in pairs").
    fn checked_head(&self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        let head = match self
            .heads
            .get(tenant)
            .map_err(backend("reading a tenant head"))?
        {
            Some(v) => decode_head(tenant, v.value())?,
            None => return Ok((0, GENESIS)),
        };
        let refuse = |position: u64, why: &str| StoreError::Corrupt {
            position,
            message: format!(
                "tenant {tenant}: {why}; refusing to extend a damaged chain (run a chain verify)"
            ),
        };
        let position = self
            .index
            .get((tenant, head.0))
            .map_err(backend("reading the tenant index"))?
            .map(|v| v.value())
            .ok_or_else(|| refuse(0, "the head's event is not in the index"))?;
        let bytes = self
            .events
            .get(position)
            .map_err(backend("reading an event"))?
            .ok_or_else(|| refuse(position, "the head's event is missing"))?;
        let stored = decode_stored(position, bytes.value())?;
        let h = &stored.header;
        if h.position != position || h.tenant != tenant || h.seq != head.0 || h.hash != head.1 {
            return Err(refuse(position, "the head does not match its event"));
        }
        Ok(head)
    }
}

/// An append's records, written into the transaction's tables and the
/// write-ahead log frame as the plan makes them.
struct Put<'t, 'txn, 'w> {
    tables: &'t mut Tables<'txn>,
    wal: &'w mut Wal,
    /// The stored bytes of the record being written (reused).
    value: Vec<u8>,
}

impl<'a> plan::AppendSink<'a> for Put<'_, '_, '_> {
    fn head(&mut self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        self.tables.checked_head(tenant)
    }

    fn record(&mut self, r: &RecordRef<'a>, event: &'a Event) -> Result<(), StoreError> {
        let header = StoredHeader {
            position: r.position,
            tenant: r.tenant,
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
        };
        encode_stored(&header, r.payload, &mut self.value);
        self.tables.put(&header, &self.value, event)?;
        self.wal.push(&self.value);
        Ok(())
    }
}

impl EventLog for RedbLog {
    fn check_key_index(&self) -> Result<Option<KeyIndexCheck>, StoreError> {
        self.guarded(|| {
            let found = if self.path == Path::new(BACKEND_PATH) {
                // A log on a storage backend (tests): the scratch in memory.
                let built = Database::builder()
                    .create_with_backend(redb::backends::InMemoryBackend::new())
                    .map_err(backend("creating the scratch index"))?;
                self.compare_key_index(&built)?
            } else {
                let mut name = self.path.as_os_str().to_owned();
                name.push(".key-index-check");
                let scratch = PathBuf::from(name);
                let _ = std::fs::remove_file(&scratch);
                let found = Database::builder()
                    .set_cache_size(64 << 20)
                    .create(&scratch)
                    .map_err(|e| {
                        StoreError::Backend(format!("creating {}: {e}", scratch.display()))
                    })
                    .and_then(|built| self.compare_key_index(&built));
                let _ = std::fs::remove_file(&scratch);
                found?
            };
            if found.difference.is_some() {
                // A checkpoint, as `write` makes one: the write-ahead log
                // held throughout, its epoch raised with the commit.
                let mut wal = self.lock_wal();
                let next = wal.epoch + 1;
                let db = self.db_locked(&mut wal)?;
                let txn = db.begin_write().map_err(backend("starting a write"))?;
                build_key_index(&txn, true)?;
                {
                    let mut meta = txn.open_table(META).map_err(backend("opening meta"))?;
                    meta.insert(WAL_EPOCH, next)
                        .map_err(backend("raising the write-ahead log's epoch"))?;
                }
                commit(txn, Durability::Immediate)?;
                wal.restart(next);
            }
            Ok(Some(found))
        })
    }

    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        self.guarded(|| self.append_unguarded(batches))
    }

    fn head(&self) -> Result<u64, StoreError> {
        self.guarded(|| self.head_unguarded())
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.guarded(|| self.read_after_unguarded(after, limit))
    }

    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.guarded(|| self.read_tenant_unguarded(tenant, after_seq, limit))
    }

    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.guarded(|| self.read_tenant_raw_unguarded(tenant, after_seq, limit))
    }

    fn read_key(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.guarded(|| self.read_key_unguarded(tenant, key, after_seq, limit))
    }

    fn read_keys_until(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<Vec<Record>, StoreError> {
        self.guarded(|| {
            self.read_keys_until_unguarded(tenant, keys, until_seq, true)
                .map(|k| k.records)
        })
    }

    fn read_keys_until_summed(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<KeysUntil, StoreError> {
        self.guarded(|| self.read_keys_until_unguarded(tenant, keys, until_seq, false))
    }

    fn tenant_keys(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        self.guarded(|| self.tenant_keys_unguarded(tenant, after, limit))
    }

    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        self.guarded(|| self.tenant_head_unguarded(tenant))
    }

    fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.guarded(|| self.tenants_unguarded())
    }
}

/// The [`EventLog`] calls, each run by its namesake under
/// [`RedbLog::guarded`].
impl RedbLog {
    fn append_unguarded(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        check_append(&batches)?;
        // Encode outside the transaction, into one buffer.
        let encoded = plan::Encoded::new(&batches);
        let mut planned: Vec<plan::Link> = Vec::new();
        let mut wal = self.lock_wal();
        let written = self.write(&mut wal, true, |t, wal| {
            wal.begin_frame();
            let last = t.last_position()?;
            let mut sink = Put {
                tables: t,
                wal,
                value: Vec::with_capacity(256),
            };
            let plan = plan::plan(&batches, &encoded, last, &mut sink)?;
            for (tenant, seq, hash) in plan.heads {
                t.heads
                    .insert(tenant, encode_head(seq, &hash).as_slice())
                    .map_err(backend("writing a tenant head"))?;
            }
            planned = plan.links;
            Ok(())
        });
        match written {
            Ok(()) => {}
            Err(StoreError::Backend(failure)) => {
                let last = planned
                    .last()
                    .map(|&(position, _, _, hash)| (position, hash));
                self.recover_append(&mut wal, failure, last)?;
            }
            Err(e) => return Err(e),
        }
        drop(wal);
        let events = batches.into_iter().flat_map(|b| b.events);
        Ok(plan::records(planned, events))
    }

    fn head_unguarded(&self) -> Result<u64, StoreError> {
        let events = self.read_table(EVENTS)?;
        Ok(events
            .last()
            .map_err(backend("reading the last position"))?
            .map_or(0, |(k, _)| k.value()))
    }

    fn read_after_unguarded(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let events = self.read_table(EVENTS)?;
        let mut page = PositionPage::new(after, limit);
        for entry in events
            .range(first..)
            .map_err(backend("reading events"))?
            .take(limit)
        {
            let (k, v) = entry.map_err(backend("reading an event"))?;
            let position = k.value();
            page.push(position, decode_stored(position, v.value())?.as_ref())?;
        }
        Ok(page.finish())
    }

    fn read_tenant_unguarded(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let mut page = TenantPage::new(tenant, after_seq, limit);
        self.walk_tenant(tenant, after_seq, limit, |seq, position, stored| {
            page.push(seq, position, stored.as_ref().map(Stored::as_ref))
        })?;
        page.finish()
    }

    /// Records whose index entry names an empty position are left out (the
    /// chain walk then reports the gap); a record whose bytes cannot be
    /// framed is a [`StoreError::Corrupt`] naming its position.
    fn read_tenant_raw_unguarded(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(READ_PREALLOC_RECORDS_MAX));
        self.walk_tenant(tenant, after_seq, limit, |_, position, stored| {
            if let Some(s) = stored {
                out.push(RawRecord {
                    position,
                    tenant: s.header.tenant.to_owned(),
                    seq: s.header.seq,
                    prev_hash: s.header.prev_hash,
                    hash: s.header.hash,
                    payload: s.payload.to_vec(),
                });
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn read_key_unguarded(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self
            .db()?
            .begin_read()
            .map_err(backend("starting a read"))?;
        let keys = txn
            .open_table(KEY_INDEX)
            .map_err(backend("opening key_index"))?;
        let uses = txn
            .open_table(KEY_USES)
            .map_err(backend("opening key_uses"))?;
        let events = txn.open_table(EVENTS).map_err(backend("opening events"))?;
        let (t, k) = (tenant.as_str(), key.ulid().0);
        let mut page = KeyPage::new(tenant, key, after_seq, limit);
        // The key's other records and its uses, merged by seq.
        let mut others = keys
            .range((t, k, first)..=(t, k, u64::MAX))
            .map_err(backend("reading the key index"))?
            .map(|entry| {
                let (ik, v) = entry.map_err(backend("reading the key index"))?;
                Ok((ik.value().2, v.value()))
            })
            .peekable();
        let mut used = key_uses::positions(&uses, t, k, first, u64::MAX)?.peekable();
        for _ in 0..limit {
            let take_use = match (others.peek(), used.peek()) {
                (None, None) => break,
                (Some(Ok((a, _))), Some(Ok((b, _)))) => b < a,
                (Some(Ok(_)), None) => false,
                (None, Some(_)) | (Some(Ok(_)), Some(Err(_))) => true,
                (Some(Err(_)), _) => false,
            };
            let next = if take_use { used.next() } else { others.next() };
            let Some(next) = next else { break };
            let (seq, position) = next?;
            at_position(&events, position, |stored| {
                page.push(seq, position, stored.as_ref().map(Stored::as_ref))
            })?;
        }
        Ok(page.finish())
    }

    /// One read transaction: each key's index range up to `until_seq`,
    /// merged by seq, then each record once. `with_uses: false` leaves the
    /// `KeyUsed` records out and hands each key's last use entry at or
    /// before `until_seq` instead (its uses summed), one seek per key.
    fn read_keys_until_unguarded(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
        with_uses: bool,
    ) -> Result<KeysUntil, StoreError> {
        let mut summed = std::collections::BTreeMap::new();
        if until_seq == 0 || keys.is_empty() {
            return Ok(KeysUntil::default());
        }
        let txn = self
            .db()?
            .begin_read()
            .map_err(backend("starting a read"))?;
        let index = txn
            .open_table(KEY_INDEX)
            .map_err(backend("opening key_index"))?;
        let uses = txn
            .open_table(KEY_USES)
            .map_err(backend("opening key_uses"))?;
        let events = txn.open_table(EVENTS).map_err(backend("opening events"))?;
        let t = tenant.as_str();
        let mut entries = std::collections::BTreeMap::new();
        for key in keys {
            let k = key.ulid().0;
            for entry in index
                .range((t, k, 1)..=(t, k, until_seq))
                .map_err(backend("reading the key index"))?
            {
                let (ik, v) = entry.map_err(backend("reading the key index"))?;
                merge_entry(&mut entries, tenant, ik.value().2, v.value())?;
            }
            if with_uses {
                for entry in key_uses::positions(&uses, t, k, 1, until_seq)? {
                    let (seq, position) = entry?;
                    merge_entry(&mut entries, tenant, seq, position)?;
                }
            } else if let Some(last) = key_uses::last_at_or_before(&uses, t, k, until_seq)? {
                summed.insert(*key, last.totals);
            }
        }
        let mut page = KeysPage::new(tenant, keys);
        for (seq, position) in entries {
            at_position(&events, position, |stored| {
                page.push(seq, position, stored.as_ref().map(Stored::as_ref))
            })?;
        }
        Ok(KeysUntil {
            records: page.finish(),
            uses: summed.into_iter().collect(),
        })
    }

    /// One seek in the key index per key.
    fn tenant_keys_unguarded(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let keys = self.read_table(KEY_INDEX)?;
        let t = tenant.as_str();
        let mut out = Vec::with_capacity(limit.min(READ_PREALLOC_RECORDS_MAX));
        let mut from = match after {
            None => Some(0),
            Some(a) => a.ulid().0.checked_add(1),
        };
        while out.len() < limit {
            let Some(k) = from else { break };
            let mut range = keys
                .range((t, k, 0)..=(t, u128::MAX, u64::MAX))
                .map_err(backend("reading the key index"))?;
            let Some(entry) = range.next() else { break };
            let (ik, _) = entry.map_err(backend("reading the key index"))?;
            let (_, key, seq) = ik.value();
            out.push((KeyId::from_ulid(ulid::Ulid(key)), seq));
            from = key.checked_add(1);
        }
        Ok(out)
    }

    fn tenant_head_unguarded(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        let heads = self.read_table(TENANT_HEADS)?;
        let value = heads
            .get(tenant.as_str())
            .map_err(backend("reading a tenant head"))?;
        value
            .map(|v| decode_head(tenant.as_str(), v.value()))
            .transpose()
    }

    fn tenants_unguarded(&self) -> Result<Vec<TenantId>, StoreError> {
        let heads = self.read_table(TENANT_HEADS)?;
        let mut out = Vec::new();
        for entry in heads.iter().map_err(backend("reading tenant heads"))? {
            let (k, _) = entry.map_err(backend("reading a tenant head"))?;
            let t = k.value();
            out.push(t.parse().map_err(|e| StoreError::Corrupt {
                position: 0,
                message: format!("tenant head `{}`: {e}", t.escape_debug()),
            })?);
        }
        Ok(out)
    }
}

impl RedbLog {
    /// Walks the tenant index from `after_seq`, handing each entry's seq,
    /// position and stored record (`None` when the position holds nothing)
    /// to `f`, for up to `limit` entries.
    fn walk_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
        mut f: impl FnMut(u64, u64, Option<Stored<'_>>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(());
        };
        if limit == 0 {
            return Ok(());
        }
        let txn = self
            .db()?
            .begin_read()
            .map_err(backend("starting a read"))?;
        let index = txn
            .open_table(TENANT_INDEX)
            .map_err(backend("opening tenant_index"))?;
        let events = txn.open_table(EVENTS).map_err(backend("opening events"))?;
        let t = tenant.as_str();
        let range = index
            .range((t, first)..=(t, u64::MAX))
            .map_err(backend("reading the tenant index"))?;
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(backend("reading the tenant index"))?;
            let (_, seq) = k.value();
            let position = v.value();
            at_position(&events, position, |stored| f(seq, position, stored))?;
        }
        Ok(())
    }
}

/// The record stored at `position` as an index entry names it, framed
/// (`None` when the position holds nothing), handed to `f`: the one step
/// of every read through an index (a tenant's, a key's).
fn at_position<R>(
    events: &redb::ReadOnlyTable<u64, &'static [u8]>,
    position: u64,
    f: impl FnOnce(Option<Stored<'_>>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    match events.get(position).map_err(backend("reading an event"))? {
        None => f(None),
        Some(b) => f(Some(decode_stored(position, b.value())?)),
    }
}

/// Decodes the bytes stored for one record (format byte, header, payload)
/// without decoding the payload: what a read does first. `position` is the
/// key the bytes were stored under, named in errors. Never panics: the
/// fuzz target `record_decode` holds it to that.
pub fn decode_record_bytes(position: u64, bytes: &[u8]) -> Result<RawRecord, StoreError> {
    let s = decode_stored(position, bytes)?;
    Ok(RawRecord {
        position: s.header.position,
        tenant: s.header.tenant.to_owned(),
        seq: s.header.seq,
        prev_hash: s.header.prev_hash,
        hash: s.header.hash,
        payload: s.payload.to_vec(),
    })
}

/// Encodes a record as [`EventLog::append`] stores it (the inverse of
/// [`decode_record_bytes`]).
pub fn encode_record_bytes(record: &RawRecord) -> Vec<u8> {
    let header = StoredHeader {
        position: record.position,
        tenant: &record.tenant,
        seq: record.seq,
        prev_hash: record.prev_hash,
        hash: record.hash,
    };
    let mut out = Vec::new();
    encode_stored(&header, &record.payload, &mut out);
    out
}

impl RedbLog {
    /// The record stored at `position`, as stored (`Ok(None)` when empty):
    /// what [`RedbLog::recover_append`] looks for.
    fn stored_record(&self, position: u64) -> Result<Option<RawRecord>, StoreError> {
        self.guarded(|| {
            let events = self.read_table(EVENTS)?;
            let Some(v) = events.get(position).map_err(backend("reading an event"))? else {
                return Ok(None);
            };
            let s = decode_stored(position, v.value())?;
            Ok(Some(RawRecord {
                position,
                tenant: s.header.tenant.to_owned(),
                seq: s.header.seq,
                prev_hash: s.header.prev_hash,
                hash: s.header.hash,
                payload: s.payload.to_vec(),
            }))
        })
    }
}

/// Forensic and test hooks: read and write the stored tables directly,
/// bypassing every check, as someone with write access to the file could.
/// Tests in other crates use them to damage a real data file (change one
/// event's bytes, delete one, swap two, insert one) and check that chain
/// verification names the damage. Each call is its own durable commit.
/// Never used by keyledger itself; built with the `test-support` feature
/// only.
#[cfg(feature = "test-support")]
impl RedbLog {
    /// The record stored at `position`, as stored (`Ok(None)` when empty).
    pub fn raw_record(&self, position: u64) -> Result<Option<RawRecord>, StoreError> {
        self.stored_record(position)
    }

    /// The bytes stored at `position` (format byte, header, payload).
    pub fn raw_bytes(&self, position: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.guarded(|| {
            let events = self.read_table(EVENTS)?;
            Ok(events
                .get(position)
                .map_err(backend("reading an event"))?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Stores `record` at `record.position` (overwriting or inserting),
    /// encoded as [`EventLog::append`] would, with no check. The tenant
    /// index and heads are not touched.
    pub fn raw_put_record(&self, record: &RawRecord) -> Result<(), StoreError> {
        let header = StoredHeader {
            position: record.position,
            tenant: &record.tenant,
            seq: record.seq,
            prev_hash: record.prev_hash,
            hash: record.hash,
        };
        let mut value = Vec::new();
        encode_stored(&header, &record.payload, &mut value);
        self.raw_put_bytes(record.position, &value)
    }

    /// Stores arbitrary bytes at `position`.
    pub fn raw_put_bytes(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                t.events
                    .insert(position, bytes)
                    .map_err(backend("writing an event"))?;
                Ok(())
            })
        })
    }

    /// Deletes the record at `position`; returns whether there was one.
    pub fn raw_delete_record(&self, position: u64) -> Result<bool, StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                Ok(t.events
                    .remove(position)
                    .map_err(backend("deleting an event"))?
                    .is_some())
            })
        })
    }

    /// The position the tenant index names for `(tenant, seq)`.
    pub fn raw_index(&self, tenant: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        self.guarded(|| {
            let index = self.read_table(TENANT_INDEX)?;
            Ok(index
                .get((tenant, seq))
                .map_err(backend("reading the tenant index"))?
                .map(|v| v.value()))
        })
    }

    /// Makes the tenant index name `position` for `(tenant, seq)`.
    pub fn raw_put_index(&self, tenant: &str, seq: u64, position: u64) -> Result<(), StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                t.index
                    .insert((tenant, seq), position)
                    .map_err(backend("writing the tenant index"))?;
                Ok(())
            })
        })
    }

    /// Deletes the tenant index entry `(tenant, seq)`; returns whether there
    /// was one.
    pub fn raw_delete_index(&self, tenant: &str, seq: u64) -> Result<bool, StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                Ok(t.index
                    .remove((tenant, seq))
                    .map_err(backend("deleting a tenant index entry"))?
                    .is_some())
            })
        })
    }

    /// The value of the use index entry of `key`'s event `seq` in
    /// `tenant` (position, then the key's uses summed).
    pub fn raw_key_use(
        &self,
        tenant: &str,
        key: KeyId,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.guarded(|| {
            let uses = self.read_table(KEY_USES)?;
            Ok(uses
                .get((tenant, key.ulid().0, seq))
                .map_err(backend("reading the use index"))?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Writes a use index entry behind the log's back.
    pub fn raw_put_key_use(
        &self,
        tenant: &str,
        key: KeyId,
        seq: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                t.uses
                    .insert((tenant, key.ulid().0, seq), value)
                    .map_err(backend("writing a use index entry"))?;
                Ok(())
            })
        })
    }

    /// Writes a `key_index` entry (`key`'s event `seq` at `position`), or
    /// deletes it with `None`, behind the log's back.
    pub fn raw_put_key_index(
        &self,
        tenant: &str,
        key: KeyId,
        seq: u64,
        position: Option<u64>,
    ) -> Result<(), StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                let at = (tenant, key.ulid().0, seq);
                match position {
                    Some(p) => t.keys.insert(at, p).map(drop),
                    None => t.keys.remove(at).map(drop),
                }
                .map_err(backend("writing a key index entry"))
            })
        })
    }

    /// Makes the file what a release before the per-key index left: no
    /// `key_index` table and no mark that it is built (the next open
    /// builds it).
    pub fn raw_forget_key_index(&self) -> Result<(), StoreError> {
        self.guarded(|| {
            let db = self.db_locked(&mut self.lock_wal())?;
            let txn = db.begin_write().map_err(backend("starting a write"))?;
            txn.delete_table(KEY_INDEX)
                .map_err(backend("deleting key_index"))?;
            txn.delete_table(KEY_USES)
                .map_err(backend("deleting key_uses"))?;
            {
                let mut meta = txn.open_table(META).map_err(backend("opening meta"))?;
                meta.remove(KEY_INDEX_BUILT)
                    .map_err(backend("forgetting the key index"))?;
                meta.remove(KEY_INDEX_LAYOUT)
                    .map_err(backend("forgetting the key index"))?;
            }
            commit(txn, Durability::Immediate)
        })
    }

    /// Makes the file what the release with the first per-key index left:
    /// every record, `KeyUsed` ones included, in `key_index`, no
    /// `key_uses`, and the mark 1 (the next open builds the index anew).
    /// This release's own mark is left as it is, as that release leaves it
    /// when it opens a file this one wrote (a downgrade, then an upgrade).
    pub fn raw_first_key_index(&self) -> Result<(), StoreError> {
        self.guarded(|| {
            let db = self.db_locked(&mut self.lock_wal())?;
            let txn = db.begin_write().map_err(backend("starting a write"))?;
            build_key_index(&txn, false)?;
            {
                let mut meta = txn.open_table(META).map_err(backend("opening meta"))?;
                meta.insert(KEY_INDEX_BUILT, 1)
                    .map_err(backend("marking the first key index"))?;
            }
            commit(txn, Durability::Immediate)
        })
    }

    /// Sets the tenant's head (last seq and hash), or deletes it with `None`.
    pub fn raw_put_head(&self, tenant: &str, head: Option<(u64, Hash)>) -> Result<(), StoreError> {
        self.guarded(|| {
            self.write(&mut self.lock_wal(), false, |t, _| {
                match head {
                    Some((seq, hash)) => {
                        t.heads
                            .insert(tenant, encode_head(seq, &hash).as_slice())
                            .map_err(backend("writing a tenant head"))?;
                    }
                    None => {
                        t.heads
                            .remove(tenant)
                            .map_err(backend("deleting a tenant head"))?;
                    }
                }
                Ok(())
            })
        })
    }
}
