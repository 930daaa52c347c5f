//! Per-key per-day usage rows out of memory (issue 13): the usage
//! projection's per-key half lives in `<data>/usage.redb` ([`USAGE_FILE`]);
//! only the per-tenant rows (tenants × days) stay in the read model.
//!
//! * Rows: `(key id, day)` → the key's [`UseCounts`] that day (every count,
//!   credits spent included), as seven LEB128 numbers. Kept forever.
//! * Position: the log position the rows reflect and the chain hash of the
//!   record there, written in the same transaction as the rows it covers.
//! * Writes: the read model's apply step adds a batch's sums in one
//!   transaction, under the read model's lock, so a query sees every usage
//!   event the read model has applied (read-your-writes). Not durable
//!   ([`redb::Durability::None`]) except every [`DURABLE_EVERY_EVENTS`]
//!   events and at [`UsageStore::sync`] (before a snapshot is written, and
//!   at shutdown): a crash loses only undurable commits, and the next open
//!   catches up from the durable position by reading the log.
//! * Derived data, never trusted: at open, a file that redb refuses, whose
//!   position is past the log's end or whose chain hash is not the log's
//!   at that position, or that a read found damaged (a row that does not
//!   decode) is made anew and rebuilt from the log. A damaged row is never
//!   answered from: the query fails (an error, not fewer uses) until a
//!   restart rebuilds the file.
//! * With no data directory (or when the file cannot be opened), the same
//!   store is kept in memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keyledger_core::{DailyRow, Day, KeyId, UseCounts};
use keyledger_store::{EventLog, Record};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::Error;
use crate::tilestore::{OpenError, open_file};

/// The usage projection's file in the data directory.
pub const USAGE_FILE: &str = "usage.redb";
/// Events applied without a durable commit before one is made anyway
/// (what a crash makes the next open read again; space in a redb file is
/// reused only after a durable commit, and every transaction copies the
/// pages it changes: docs/performance.md, "Usage rows on disk").
const DURABLE_EVERY_EVENTS: u64 = 65_536;
/// redb's page cache for the file.
const FILE_CACHE_BYTES: usize = 8 << 20;

/// (key id, day) → counts.
const ROWS: TableDefinition<(u128, i32), &[u8]> = TableDefinition::new("usage_rows");
/// "at": the position the rows reflect (8 bytes, little-endian) and the
/// chain hash of the record there (32 bytes); "damaged": present once a
/// read found a row that does not decode.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The per-key usage rows: a redb file (or redb in memory).
pub(crate) struct UsageStore {
    db: Database,
    file: Option<PathBuf>,
    /// The log position the rows reflect.
    position: AtomicU64,
    /// Events applied since the last durable commit.
    undurable: AtomicU64,
    /// The position and chain hash of records applied without a use since
    /// the last write (no transaction for them: the rows on disk are
    /// those of this position too); written by the next write or sync.
    pending: std::sync::Mutex<Option<(u64, [u8; 32])>>,
    damaged: AtomicBool,
}

impl std::fmt::Debug for UsageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageStore")
            .field("file", &self.file)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

fn store_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("cannot {what} the usage projection: {e}"))
}

impl UsageStore {
    fn with_db(db: Database, file: Option<PathBuf>) -> Result<UsageStore, String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let (position, damaged) = match txn.open_table(META) {
            Err(redb::TableError::TableDoesNotExist(_)) => (0, false),
            Err(e) => return Err(e.to_string()),
            Ok(meta) => {
                let at = meta.get("at").map_err(|e| e.to_string())?;
                let position = match at {
                    None => 0,
                    Some(v) => {
                        decode_at(v.value())
                            .ok_or("its position does not decode")?
                            .0
                    }
                };
                (
                    position,
                    meta.get("damaged").map_err(|e| e.to_string())?.is_some(),
                )
            }
        };
        drop(txn);
        if damaged {
            return Err("a read found it damaged".to_owned());
        }
        Ok(UsageStore {
            db,
            file,
            position: AtomicU64::new(position),
            undurable: AtomicU64::new(0),
            pending: std::sync::Mutex::new(None),
            damaged: AtomicBool::new(false),
        })
    }

    /// A store in memory (no data directory).
    pub(crate) fn in_memory() -> UsageStore {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .ok()
            .and_then(|db| UsageStore::with_db(db, None).ok());
        match db {
            Some(store) => store,
            // redb in memory does not fail to open.
            None => unreachable_store(),
        }
    }

    /// The store in `dir` ([`USAGE_FILE`]), checked against `log`: a file
    /// that does not open, was found damaged, or does not match the log is
    /// removed and made anew (empty: the replay rebuilds it). If none can
    /// be made there, the store is kept in memory.
    pub(crate) fn open(dir: &Path, log: &dyn EventLog) -> Result<UsageStore, Error> {
        let path = dir.join(USAGE_FILE);
        let problem = match open_file(&path, FILE_CACHE_BYTES) {
            Ok(db) => match UsageStore::with_db(db, Some(path.clone())) {
                Ok(store) => match store.matches(log)? {
                    Ok(()) => return Ok(store),
                    Err(why) => why,
                },
                Err(why) => why,
            },
            Err(OpenError::Database(
                e @ (redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))
                | redb::DatabaseError::UpgradeRequired(_)),
            )) => e.to_string(),
            // Not the file's fault (open in another process, no access).
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot open the usage projection; keeping the per-key usage rows in memory");
                return Ok(UsageStore::in_memory());
            }
        };
        tracing::warn!(file = %path.display(), problem = %problem,
            "the usage projection cannot be used; rebuilding it from the log");
        let _ = std::fs::remove_file(&path);
        match open_file(&path, FILE_CACHE_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|db| UsageStore::with_db(db, Some(path.clone())))
        {
            Ok(store) => Ok(store),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot make the usage projection; keeping the per-key usage rows in memory");
                Ok(UsageStore::in_memory())
            }
        }
    }

    /// Whether the rows' position and chain hash are the log's. `Err`
    /// only when the log cannot be read.
    fn matches(&self, log: &dyn EventLog) -> Result<Result<(), String>, Error> {
        let txn = self.db.begin_read().map_err(|e| store_error("read", e))?;
        let at = match txn.open_table(META) {
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Ok(Err(e.to_string())),
            Ok(meta) => match meta.get("at") {
                Ok(v) => v.map(|v| v.value().to_vec()),
                Err(e) => return Ok(Err(e.to_string())),
            },
        };
        let Some(at) = at else { return Ok(Ok(())) };
        let Some((position, hash)) = decode_at(&at) else {
            return Ok(Err("its position does not decode".to_owned()));
        };
        if position == 0 {
            return Ok(Ok(()));
        }
        let head = log.head()?;
        if position > head {
            return Ok(Err(format!(
                "it reflects the log up to position {position}, the log ends at {head}"
            )));
        }
        let record = log.read_after(position - 1, 1)?.into_iter().next();
        Ok(match record {
            Some(r) if r.position == position && r.hash == hash => Ok(()),
            _ => Err(format!(
                "the log's record at position {position} is not the one it reflects"
            )),
        })
    }

    /// The log position the rows reflect.
    pub(crate) fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Adds the usage of `records` past [`UsageStore::position`] (the
    /// records are in log order, contiguous) and records the position of
    /// the last, in one transaction.
    pub(crate) fn apply(&self, records: &[Record]) -> Result<(), Error> {
        let position = self.position();
        let start = records.partition_point(|r| r.position <= position);
        let fresh = &records[start..];
        let Some(last) = fresh.last() else {
            return Ok(());
        };
        if fresh[0].position != position + 1 {
            return Err(Error::inconsistent(format!(
                "the usage projection is at log position {position}, the next record is at {}",
                fresh[0].position
            )));
        }
        let sums = keyledger_core::key_day_sums(fresh.iter().map(|r| &r.event));
        let n = fresh.len() as u64;
        if sums.is_empty() {
            // No use among them: no transaction (creates and the like
            // are not slowed); the position is written with the next.
            *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((last.position, last.hash));
            self.undurable.fetch_add(n, Ordering::AcqRel);
            self.position.store(last.position, Ordering::Release);
            return Ok(());
        }
        let durable = self.undurable.fetch_add(n, Ordering::AcqRel) + n >= DURABLE_EVERY_EVENTS;
        // Held until the rows are written: a concurrent `sync` never
        // writes an older pending position over theirs.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let e = |x: &dyn std::fmt::Display| Fault::Store(store_error("write", x));
        let written = (|| -> Result<(), Fault> {
            let mut txn = self.db.begin_write().map_err(|x| e(&x))?;
            if !durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(|x| e(&x))?;
            }
            {
                let mut rows = txn.open_table(ROWS).map_err(|x| e(&x))?;
                for ((key, day), counts) in &sums {
                    let k = (key.to_u128(), day.as_days());
                    let mut total = match rows.get(k).map_err(|x| e(&x))? {
                        None => UseCounts::default(),
                        Some(v) => decode_counts(v.value()).ok_or(Fault::Damaged)?,
                    };
                    total.add(counts);
                    rows.insert(k, encode_counts(&total).as_slice())
                        .map_err(|x| e(&x))?;
                }
                let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
                meta.insert("at", encode_at(last.position, &last.hash).as_slice())
                    .map_err(|x| e(&x))?;
            }
            txn.commit().map_err(|x| e(&x))
        })();
        match written {
            Ok(()) => *pending = None,
            // The write transaction is gone: the mark can be written.
            Err(Fault::Damaged) => {
                drop(pending);
                return Err(self.damaged("a stored row does not decode"));
            }
            Err(Fault::Store(x)) => return Err(x),
        }
        self.position.store(last.position, Ordering::Release);
        if durable {
            self.undurable.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// Fills an empty store (at position 0) from the usage projection the
    /// log keeps beside it ([`EventLog::usage_projection`]: PostgreSQL's
    /// `keyledger.usage_daily`), in one durable transaction, at the
    /// position it reflects and the chain hash of the log's record there.
    /// Returns that position; `None` (nothing written) when the store is
    /// not empty, or the log keeps no projection, or one at position 0.
    /// The caller replays the log after it, and [`UsageStore::apply`]
    /// skips what the rows already hold.
    pub(crate) fn fill(&self, log: &dyn EventLog) -> Result<Option<u64>, Error> {
        if self.position() != 0 {
            return Ok(None);
        }
        let e = |x: &dyn std::fmt::Display| store_error("write", x);
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        let mut rows_written = 0u64;
        let projected = log.usage_projection(&mut |_, rows| {
            if rows.is_empty() {
                return Ok(());
            }
            let mut table = txn.open_table(ROWS).map_err(|x| x.to_string())?;
            for (key, day, counts) in rows {
                table
                    .insert(
                        (key.to_u128(), day.as_days()),
                        encode_counts(counts).as_slice(),
                    )
                    .map_err(|x| x.to_string())?;
            }
            rows_written += rows.len() as u64;
            Ok(())
        })?;
        let Some(position) = projected.filter(|p| *p > 0) else {
            // Dropped: nothing is written.
            return Ok(None);
        };
        let Some(at) = log
            .read_after(position - 1, 1)?
            .into_iter()
            .next()
            .filter(|r| r.position == position)
        else {
            return Ok(None);
        };
        {
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            meta.insert("at", encode_at(position, &at.hash).as_slice())
                .map_err(|x| e(&x))?;
        }
        txn.commit().map_err(|x| e(&x))?;
        self.position.store(position, Ordering::Release);
        tracing::debug!(
            position,
            rows = rows_written,
            "filled the usage projection from the shared one"
        );
        Ok(Some(position))
    }

    /// Makes every row written so far durable.
    pub(crate) fn sync(&self) -> Result<(), Error> {
        if self.undurable.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let e = |x: &dyn std::fmt::Display| store_error("write", x);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        if let Some((position, hash)) = *pending {
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            meta.insert("at", encode_at(position, &hash).as_slice())
                .map_err(|x| e(&x))?;
        }
        // A durable commit makes the commits before it durable.
        txn.commit().map_err(|x| e(&x))?;
        *pending = None;
        self.undurable.store(0, Ordering::Release);
        Ok(())
    }

    /// A key's days with uses in `from..=to`, oldest first.
    pub(crate) fn daily_key(&self, key: KeyId, from: Day, to: Day) -> Result<Vec<DailyRow>, Error> {
        if from > to {
            return Ok(Vec::new());
        }
        self.rows(
            (key.to_u128(), from.as_days())..=(key.to_u128(), to.as_days()),
            |_, row| Some(row),
        )
        .map(|rows| rows.into_iter().map(|(_, r)| r).collect())
    }

    /// Every key's days with uses, oldest first, in key order.
    pub(crate) fn all_rows(&self) -> Result<Vec<(KeyId, Vec<DailyRow>)>, Error> {
        let rows = self.rows(.., |_, row| Some(row))?;
        let mut out: Vec<(KeyId, Vec<DailyRow>)> = Vec::new();
        for (key, row) in rows {
            match out.last_mut() {
                Some((k, days)) if *k == key => days.push(row),
                _ => out.push((key, vec![row])),
            }
        }
        Ok(out)
    }

    fn rows<R: std::ops::RangeBounds<(u128, i32)>>(
        &self,
        range: R,
        keep: impl Fn(KeyId, DailyRow) -> Option<DailyRow>,
    ) -> Result<Vec<(KeyId, DailyRow)>, Error> {
        if self.damaged.load(Ordering::Acquire) {
            return Err(self.damaged("found before"));
        }
        let e = |x: &dyn std::fmt::Display| store_error("read", x);
        let txn = self.db.begin_read().map_err(|x| e(&x))?;
        let table = match txn.open_table(ROWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(x) => return Err(e(&x)),
        };
        let mut out = Vec::new();
        for item in table.range(range).map_err(|x| e(&x))? {
            let (k, v) = item.map_err(|x| e(&x))?;
            let (key, day) = k.value();
            let counts = decode_counts(v.value())
                .ok_or_else(|| self.damaged("a stored row does not decode"))?;
            let key = KeyId::from_u128(key);
            let row = DailyRow {
                day: Day::from_days(day),
                counts,
            };
            if let Some(row) = keep(key, row) {
                out.push((key, row));
            }
        }
        Ok(out)
    }

    /// A row read back does not decode: nothing is answered from the
    /// store, and the next open rebuilds it from the log.
    fn damaged(&self, what: &str) -> Error {
        if !self.damaged.swap(true, Ordering::AcqRel) {
            tracing::error!(file = ?self.file, problem = what,
                "the usage projection is damaged; per-key usage is refused until a restart rebuilds it from the log");
            self.mark_damaged();
        }
        Error::unavailable(format!(
            "the usage projection is damaged ({what}); a restart rebuilds it from the log"
        ))
    }

    /// Marks the file so that the next open rebuilds it (a write failed,
    /// or `replay` found it unequal to the log).
    pub(crate) fn mark_damaged(&self) {
        self.damaged.store(true, Ordering::Release);
        let marked = (|| -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert("damaged", [1u8].as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = marked {
            tracing::warn!(error = %e, "cannot mark the usage projection damaged");
        }
    }
}

impl crate::Shared {
    /// At open, after a snapshot was installed: the usage projection, if
    /// behind the read model (a crash lost its undurable commits, or it
    /// was rebuilt), reads the log up to the read model's head. Replay
    /// then applies the rest to both. A write that fails leaves it marked
    /// damaged (refused, rebuilt at the next start), not the open failed.
    pub(crate) fn usage_catch_up(&self) -> Result<(), Error> {
        const PAGE: u64 = 16_384;
        let until = self.read_model().head;
        let mut after = self.usage_rows.position();
        while after < until {
            let page = self
                .log
                .read_after(after, (until - after).min(PAGE) as usize)?;
            let Some(last) = page.last().map(|r| r.position) else {
                break;
            };
            if let Err(e) = self.usage_rows.apply(&page) {
                tracing::error!(error = %e, "cannot catch the usage projection up; per-key usage is refused until a restart rebuilds it from the log");
                self.usage_rows.mark_damaged();
                break;
            }
            after = last;
        }
        Ok(())
    }

    /// `keyledger replay` ([`crate::SnapshotStart::Check`]): the usage
    /// projection's per-key rows compared with a fold of the whole log; a
    /// difference is reported with the snapshot's, and the file is marked
    /// to be rebuilt at the next start.
    pub(crate) fn check_usage_rows(&self) -> Result<(), Error> {
        const PAGE: usize = 16_384;
        let Some(s) = &self.snapshots else {
            return Ok(());
        };
        if s.config.start != crate::SnapshotStart::Check {
            return Ok(());
        }
        let until = self.read_model().head;
        let mut fold = keyledger_core::Usage::new();
        let mut after = 0;
        while after < until {
            let page = self.log.read_after(after, PAGE)?;
            let page: Vec<&Record> = page.iter().take_while(|r| r.position <= until).collect();
            let Some(last) = page.last().map(|r| r.position) else {
                break;
            };
            fold.apply_all(page.iter().map(|r| &r.event));
            after = last;
        }
        let mut folded: Vec<(KeyId, Vec<DailyRow>)> = fold.key_rows().collect();
        folded.sort_by_key(|(k, _)| *k);
        let difference = match self.usage_rows.all_rows() {
            Ok(stored) if stored == folded => None,
            Ok(_) => Some(format!(
                "the usage projection ({USAGE_FILE}) differs from a fold of the log"
            )),
            Err(e) => Some(format!("the usage projection cannot be read: {e}")),
        };
        if let Some(d) = difference {
            self.usage_rows.mark_damaged();
            let mut check = s.check.lock().unwrap_or_else(|e| e.into_inner());
            check
                .get_or_insert_with(Default::default)
                .differences
                .push(d);
        }
        Ok(())
    }
}

/// Why a write failed.
enum Fault {
    Store(Error),
    /// A stored row does not decode.
    Damaged,
}

#[allow(clippy::panic)]
fn unreachable_store() -> UsageStore {
    panic!("redb cannot open a database in memory")
}

fn encode_at(position: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&position.to_le_bytes());
    out[8..].copy_from_slice(hash);
    out
}

fn decode_at(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    let (p, h) = (bytes.get(..8)?, bytes.get(8..)?);
    Some((u64::from_le_bytes(p.try_into().ok()?), h.try_into().ok()?))
}

/// The counts as `keyledger_store::counts` writes them (a row is ~7-12
/// bytes).
fn encode_counts(c: &UseCounts) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    keyledger_store::counts::encode(c, &mut out);
    out
}

/// The counts [`encode_counts`] wrote; `None` unless the bytes are
/// exactly those (damage).
fn decode_counts(bytes: &[u8]) -> Option<UseCounts> {
    match keyledger_store::counts::decode(bytes)? {
        (counts, []) => Some(counts),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_the_counts_and_nothing_more() {
        // The codec itself is tested in `keyledger_store::counts`.
        let c = UseCounts {
            valid: 3,
            usage_exceeded: u64::MAX,
            ..UseCounts::default()
        };
        let bytes = encode_counts(&c);
        assert_eq!(decode_counts(&bytes), Some(c));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_counts(&longer), None, "a byte too many");
        assert_eq!(decode_counts(&bytes[..bytes.len() - 1]), None, "cut short");
    }
}
