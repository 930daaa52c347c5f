//! keyledger's event log.
//!
//! * [`EventLog`]: the one storage trait. Every backend passes the same
//!   `conformance` suite.
//! * [`MemoryLog`]: in memory, for tests. [`RedbLog`]: the embedded default,
//!   one file in a data directory. [`PgLog`]: one PostgreSQL database shared
//!   by several nodes ([`postgres`]).
//! * [`envelope`]: the stored, versioned form of events (postcard inside a
//!   version byte), with upcasting from every older version.
//! * [`chain`]: the per-tenant SHA-256 hash chain, computed at append and
//!   verified on demand.
//! * [`wal`]: the write-ahead log that makes a redb append durable with one
//!   small write and one sync.
//! * `faults` (with the `test-support` feature): a test facility, a disk in
//!   memory holding a redb log's two files, that fails the Nth write or
//!   sync, fills up, turns read-only, and rebuilds the files a crash at any
//!   sync would leave.
//!
//! The `test-support` feature builds what only tests use: `conformance`,
//! `faults`, the test databases of [`postgres`] and the `raw_*` hooks of
//! [`RedbLog`]. Crates enable it in their `[dev-dependencies]`, so the
//! `keyledger` binary is built without it.

pub mod chain;
#[cfg(feature = "test-support")]
pub mod conformance;
pub mod counts;
pub mod envelope;
#[cfg(feature = "test-support")]
pub mod faults;
pub mod guard;
mod key_uses;
mod memory;
pub mod no_follow;
mod plan;
pub mod postgres;
mod read;
mod redb_log;
pub mod wal;

pub use chain::{ChainProblem, ChainReport, Hash};
pub use memory::MemoryLog;
pub use postgres::{PgLog, PgOptions};
pub use redb_log::{
    CACHE_BYTES_DEFAULT as LOG_CACHE_BYTES_DEFAULT, RedbLog, decode_record_bytes,
    encode_record_bytes,
};
pub use wal::WalOptions;

use keyledger_core::{Day, Event, KeyId, TenantId, UseCounts, UseTotals};

/// What [`EventLog::check_key_index`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndexCheck {
    /// Entries found equal to those the records give.
    pub entries: u64,
    /// The first entry that differs from what the records give, named
    /// (the index was then rebuilt from the records); `None`: equal.
    pub difference: Option<String>,
}

/// Some keys' records up to a sequence number without their uses, and
/// their uses summed ([`EventLog::read_keys_until_summed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysUntil {
    /// Every record naming one of the keys, `KeyUsed` ones left out, in
    /// sequence order, each once.
    pub records: Vec<Record>,
    /// Each key's `KeyUsed` events summed, by key id (keys with none left
    /// out).
    pub uses: Vec<(KeyId, UseTotals)>,
}

/// A committed event with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Global position: 1-based, contiguous, the order of commits.
    pub position: u64,
    /// The event's number in its tenant's chain: 1-based, contiguous.
    pub seq: u64,
    /// The chain hash of the tenant's previous event (zeros for the first).
    pub prev_hash: Hash,
    /// This event's chain hash.
    pub hash: Hash,
    /// The event (its `tenant` is the chain it belongs to).
    pub event: Event,
}

/// A snapshot of a node's projections (the runtime's snapshot file, as
/// bytes), published in a log several nodes share so that a node without
/// one of its own starts from it ([`EventLog::publish_snapshot`]). Derived
/// data: whoever reads one checks it before use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedSnapshot {
    /// The log position it covers.
    pub position: u64,
    /// Every tenant's chain head at the position, a JSON object
    /// (`{"<tenant>": [<seq>, "<hash, hex>"]}`), for people reading it.
    pub heads: String,
    /// The snapshot file's bytes.
    pub bytes: Vec<u8>,
    /// The SHA-256 of `bytes`.
    pub checksum: Hash,
    /// The node that published it.
    pub node: String,
}

/// A record's place in its tenant's chain, without its event: what the
/// Merkle trees are built from (their leaves are the chain hashes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    /// Global position.
    pub position: u64,
    /// The tenant whose chain it is in.
    pub tenant: TenantId,
    /// The event's number in its tenant's chain.
    pub seq: u64,
    /// The chain hash of the tenant's previous event.
    pub prev_hash: Hash,
    /// This event's chain hash.
    pub hash: Hash,
}

/// One key's uses on one day in a shared usage projection.
pub type UsageRow = (KeyId, Day, UseCounts);

/// What [`EventLog::usage_projection`] hands each page of rows to, with
/// the log position they reflect.
pub type UsagePage<'a> = dyn FnMut(u64, &[UsageRow]) -> Result<(), String> + 'a;

/// A record exactly as stored, not decoded and not checked: what chain
/// verification reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Global position.
    pub position: u64,
    /// The tenant, as stored.
    pub tenant: String,
    /// The tenant sequence number, as stored.
    pub seq: u64,
    /// The predecessor's hash, as stored.
    pub prev_hash: Hash,
    /// The hash, as stored.
    pub hash: Hash,
    /// The encoded event ([`envelope`]), as stored.
    pub payload: Vec<u8>,
}

/// Events to append to one tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantAppend {
    /// The tenant; every event's `tenant` must equal it.
    pub tenant: TenantId,
    /// The tenant's last sequence number the events were decided against.
    pub expected_version: u64,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A tenant is not at the expected version: someone else appended
    /// first. Nothing was written.
    #[error("tenant {tenant} is at version {actual}, not {expected}")]
    Conflict {
        /// The tenant.
        tenant: TenantId,
        /// The version the append expected.
        expected: u64,
        /// The version found.
        actual: u64,
    },
    /// The append is malformed (empty, or an event of another tenant).
    #[error("bad append: {0}")]
    BadAppend(String),
    /// A stored record cannot be read back: the log is damaged.
    #[error("record at position {position} is damaged: {message}")]
    Corrupt {
        /// Where.
        position: u64,
        /// What is wrong.
        message: String,
    },
    /// The file the log is stored in is damaged where no record position
    /// applies (its pages, its tables): redb found it corrupt, or panicked
    /// reading it ([`guard`]). Nothing is acknowledged; the file must be
    /// restored from a backup.
    #[error(
        "the event log file {} is damaged ({message}); restore it from a backup \
         (docs/operations.md)",
        .file.display()
    )]
    Damaged {
        /// The file.
        file: std::path::PathBuf,
        /// What was found, in redb's words.
        message: String,
    },
    /// The backend failed (I/O, database). Nothing is acknowledged.
    #[error("storage failed: {0}")]
    Backend(String),
    /// The backend cannot be reached (a shared database restarting, the
    /// connection lost). Nothing is acknowledged; for an append the message
    /// says whether it was written, or that this is known only once the log
    /// can be read again. Calls after it reconnect by themselves.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The one storage trait. Appends are atomic and durable when `append`
/// returns; reads see only committed records.
pub trait EventLog: Send + Sync {
    /// Appends every batch in one atomic, durable commit, after checking
    /// each tenant is at its `expected_version`. On any error nothing is
    /// written. Returns the records written, in order.
    ///
    /// Several batches for the same tenant are allowed: each one's
    /// `expected_version` accounts for the ones before it.
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError>;

    /// The last global position (0 when empty).
    fn head(&self) -> Result<u64, StoreError>;

    /// Up to `limit` records with `position > after`, in order. Tailing
    /// with the last position seen never skips a committed record.
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError>;

    /// Up to `limit` of a tenant's records with `seq > after_seq`, in order.
    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// Up to `limit` of a tenant's records with `seq > after_seq`, as stored.
    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError>;

    /// Up to `limit` of the records of a tenant that name `key`
    /// ([`keyledger_core::touched_keys`]) with `seq > after_seq`, in order:
    /// read through the per-key index, so the cost is the key's events,
    /// not the tenant's. Each record is checked as [`EventLog::read_tenant`]
    /// checks it (position, tenant, sequence number, chain hash), and must
    /// name the key.
    ///
    /// The default walks the tenant's whole trail (for wrappers in tests);
    /// every backend overrides it with its index.
    fn read_key(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        let mut after = after_seq;
        while out.len() < limit {
            let page = self.read_tenant(tenant, after, 4096)?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            after = last;
            out.extend(
                page.into_iter()
                    .filter(|r| keyledger_core::touched_keys(&r.event).any(|k| k == key)),
            );
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Every record of a tenant that names any of `keys` with
    /// `seq <= until_seq`, in sequence order, each once: what folding a
    /// page of keys up to a point in time needs, read through the per-key
    /// index in one go (one read transaction, each key's range bounded).
    /// Records are checked as [`EventLog::read_key`] checks them (each
    /// must name one of the keys). The default reads each key with
    /// [`EventLog::read_key`].
    fn read_keys_until(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let mut by_seq = std::collections::BTreeMap::new();
        for &key in keys {
            let mut after = 0;
            'key: loop {
                let page = self.read_key(tenant, key, after, 4096)?;
                let Some(last) = page.last().map(|r| r.seq) else {
                    break;
                };
                after = last;
                for r in page {
                    if r.seq > until_seq {
                        break 'key;
                    }
                    by_seq.entry(r.seq).or_insert(r);
                }
            }
        }
        Ok(by_seq.into_values().collect())
    }

    /// What folding a page of keys up to a point in time needs, without
    /// reading their uses: every record of a tenant that names any of
    /// `keys` with `seq <= until_seq` except the `KeyUsed` ones, as
    /// [`EventLog::read_keys_until`] reads them, and each of the keys'
    /// `KeyUsed` events up to `until_seq` summed (keys without a use left
    /// out), so the cost does not grow with the keys' use counts
    /// ([`keyledger_core::KeyFold::add_uses`]). The default reads every
    /// record with [`EventLog::read_keys_until`] and sums the uses itself.
    fn read_keys_until_summed(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<KeysUntil, StoreError> {
        let mut out = KeysUntil::default();
        let mut uses = std::collections::BTreeMap::<KeyId, UseTotals>::new();
        for r in self.read_keys_until(tenant, keys, until_seq)? {
            match keyledger_core::as_use(&r.event) {
                Some(u) if keys.contains(&u.key_id) => {
                    uses.entry(u.key_id).or_default().add_used(u);
                }
                Some(_) => {}
                None => out.records.push(r),
            }
        }
        out.uses = uses.into_iter().collect();
        Ok(out)
    }

    /// Checks the per-key index ([`EventLog::read_keys_until_summed`],
    /// [`EventLog::tenant_keys`], a key's history) against the records:
    /// builds it anew from them, apart, and compares the two entry by entry,
    /// so damage to the index cannot pass as a shorter history or smaller
    /// use sums (`keyledger replay` runs it). An index that differs is
    /// replaced by the one built from the records, and the difference
    /// reported. `Ok(None)`: not checked (the default: the memory log's
    /// index lives and dies with its records).
    fn check_key_index(&self) -> Result<Option<KeyIndexCheck>, StoreError> {
        Ok(None)
    }

    /// Up to `limit` of the keys a tenant's records name, in key-id order,
    /// after `after` (from the first when `None`), each with the sequence
    /// number of the first record naming it (a key's `KeyCreated`). From
    /// the per-key index; the default walks the tenant's trail.
    fn tenant_keys(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let mut first = std::collections::BTreeMap::new();
        let mut seq = 0;
        loop {
            let page = self.read_tenant(tenant, seq, 4096)?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            seq = last;
            for r in &page {
                for k in keyledger_core::touched_keys(&r.event) {
                    first.entry(k).or_insert(r.seq);
                }
            }
        }
        Ok(first
            .into_iter()
            .filter(|(k, _)| after.is_none_or(|a| *k > a))
            .take(limit)
            .collect())
    }

    /// A tenant's last sequence number and hash, or `None` without events.
    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError>;

    /// Every tenant with at least one event, sorted.
    fn tenants(&self) -> Result<Vec<TenantId>, StoreError>;

    /// Waits until records past `after` may exist (another writer committed)
    /// or `timeout` passes, whichever is first. A hint only: callers always
    /// read by position afterwards, so a missed or spurious wake-up costs
    /// latency, never correctness. A backend only this process writes has
    /// nothing to wait for and just sleeps; a shared one wakes on the other
    /// writers' signal (PostgreSQL: LISTEN/NOTIFY).
    fn wait_for_append(&self, after: u64, timeout: std::time::Duration) -> Result<(), StoreError> {
        let _ = after;
        std::thread::sleep(timeout);
        Ok(())
    }

    /// Publishes that the node `node` has applied every record up to
    /// `position` to its projections. Nodes sharing a log use it to wait
    /// until every live node enforces a revocation. A log with one node
    /// keeps nothing.
    fn report_applied(&self, node: &str, position: u64) -> Result<(), StoreError> {
        let _ = (node, position);
        Ok(())
    }

    /// The lowest position applied among the nodes that reported within
    /// `live_within`, or `None` when no node did (a log with one node).
    fn min_applied_live(
        &self,
        live_within: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        let _ = live_within;
        Ok(None)
    }

    /// Whether the log keeps snapshots for the nodes sharing it
    /// ([`EventLog::publish_snapshot`]; the default: no, a log with one
    /// node).
    fn shares_snapshots(&self) -> bool {
        false
    }

    /// Publishes a snapshot of a node's projections for the other nodes
    /// sharing the log, keeping the newest `keep`. `Ok(false)`: not
    /// written (the log keeps none, or has one at that position already).
    fn publish_snapshot(&self, snapshot: SharedSnapshot, keep: usize) -> Result<bool, StoreError> {
        let _ = (snapshot, keep);
        Ok(false)
    }

    /// The positions of the snapshots published with
    /// [`EventLog::publish_snapshot`], newest first.
    fn shared_snapshots(&self) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }

    /// The snapshot published at `position`, if it is still kept.
    fn shared_snapshot(&self, position: u64) -> Result<Option<SharedSnapshot>, StoreError> {
        let _ = position;
        Ok(None)
    }

    /// Up to `limit` records' places in their chains with
    /// `position > after`, in order: the Merkle trees' input without the
    /// events. The default reads and decodes the records; a backend that
    /// stores the hashes apart reads only them.
    fn chain_links(&self, after: u64, limit: usize) -> Result<Vec<ChainLink>, StoreError> {
        Ok(self
            .read_after(after, limit)?
            .into_iter()
            .map(|r| ChainLink {
                position: r.position,
                tenant: r.event.tenant,
                seq: r.seq,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
            .collect())
    }

    /// A per-key per-day usage projection the log keeps beside it (the
    /// analysts' `keyledger.usage_daily` in PostgreSQL): hands its rows to
    /// `page`, a page at a time, all as of one log position, which it
    /// returns. `Ok(None)`: the log keeps none (the default). An error
    /// from `page` stops the read and is returned as
    /// [`StoreError::Backend`].
    fn usage_projection(&self, page: &mut UsagePage<'_>) -> Result<Option<u64>, StoreError> {
        let _ = page;
        Ok(None)
    }
}

/// Most records a read allocates room for up front, whatever `limit` says.
const READ_PREALLOC_RECORDS_MAX: usize = 4096;

/// Checks an append's shape, before any backend looks at it: at least one
/// batch, no empty batch, every event in its batch's tenant.
pub(crate) fn check_append(batches: &[TenantAppend]) -> Result<(), StoreError> {
    if batches.is_empty() {
        return Err(StoreError::BadAppend("no batch to append".into()));
    }
    for (i, batch) in batches.iter().enumerate() {
        if batch.events.is_empty() {
            return Err(StoreError::BadAppend(format!(
                "batch {i} (tenant {}) holds no event",
                batch.tenant
            )));
        }
        if let Some((j, e)) = batch
            .events
            .iter()
            .enumerate()
            .find(|(_, e)| e.tenant != batch.tenant)
        {
            return Err(StoreError::BadAppend(format!(
                "event {j} of batch {i} belongs to tenant {}, not {}",
                e.tenant, batch.tenant
            )));
        }
    }
    Ok(())
}

/// The read side of "assert in pairs": a page of a tenant's records must
/// start right after `after_seq`, run without gaps, and link each record to
/// the one before it. (Whole hashes are recomputed by [`chain`] only.)
pub(crate) fn check_tenant_page(
    tenant: &TenantId,
    after_seq: u64,
    records: &[Record],
) -> Result<(), StoreError> {
    let mut expected = after_seq.saturating_add(1);
    let mut prev: Option<&Hash> = None;
    for r in records {
        if r.seq != expected {
            return Err(StoreError::Corrupt {
                position: r.position,
                message: format!(
                    "tenant {tenant}: sequence number {expected} expected, {} found",
                    r.seq
                ),
            });
        }
        if prev.is_some_and(|p| *p != r.prev_hash) || (r.seq == 1 && r.prev_hash != chain::GENESIS)
        {
            return Err(StoreError::Corrupt {
                position: r.position,
                message: format!(
                    "tenant {tenant}: event {} does not link to its predecessor",
                    r.seq
                ),
            });
        }
        prev = Some(&r.hash);
        expected = expected.saturating_add(1);
    }
    Ok(())
}

/// Decodes a stored payload into a record, naming the position on failure.
///
/// The record's chain hash is recomputed from its stored bytes first, so a
/// changed payload, sequence number, predecessor hash or tenant is an
/// error on every read, replay included: damage never decodes into a
/// different, plausible event. (That each record links to the one before
/// it is checked by the reader of a whole tenant: [`check_tenant_page`],
/// and the runtime as it applies records.) One SHA-256 of about 200 bytes
/// per record; replay does it on its reading thread.
pub(crate) fn decode_record(
    position: u64,
    seq: u64,
    prev_hash: Hash,
    hash: Hash,
    tenant: &TenantId,
    payload: &[u8],
) -> Result<Record, StoreError> {
    if chain::link(&prev_hash, tenant.as_str(), seq, payload) != hash {
        return Err(StoreError::Corrupt {
            position,
            message: format!(
                "tenant {tenant} event {seq}: its stored bytes do not hash to its chain hash \
                 (the record was changed or damaged)"
            ),
        });
    }
    let event = envelope::decode(tenant, payload).map_err(|e| StoreError::Corrupt {
        position,
        message: format!("tenant {tenant} event {seq}: {e}"),
    })?;
    Ok(Record {
        position,
        seq,
        prev_hash,
        hash,
        event,
    })
}
