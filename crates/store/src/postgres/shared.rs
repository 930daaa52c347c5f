//! What nodes share besides the log (issue 13): the snapshots of their
//! projections (`migrations/0005_shared_snapshots.sql`), the chain hashes
//! alone (what the Merkle trees are built from) and the analysts' per-key
//! usage projection read back as of its position. A node whose data
//! directory holds no snapshot it can use starts from these and the tail
//! of the log instead of position 1 (the runtime's `shared.rs`).

use std::sync::Arc;

use keyledger_core::{Day, KeyId, UseCounts};
use tokio_postgres::IsolationLevel;

use super::pool::{get, query};
use super::read::bounds;
use super::{PgLog, Shared, classify, corrupt, hash_of, to_u64};
use crate::{ChainLink, SharedSnapshot, StoreError, UsagePage, UsageRow};

/// A snapshot's bytes are stored in chunks of at most this many bytes.
const CHUNK_BYTES: usize = 8 << 20;
/// Usage rows read per page.
const USAGE_PAGE_ROWS: i32 = 16_384;

const SQL_INSERT: &str = "INSERT INTO keyledger.snapshots (position, heads, bytes, checksum, node) \
     VALUES ($1, ($2::text)::jsonb, $3, $4, $5) ON CONFLICT (position) DO NOTHING";
const SQL_INSERT_CHUNK: &str =
    "INSERT INTO keyledger.snapshot_chunks (position, chunk, bytes) VALUES ($1, $2, $3)";
const SQL_PRUNE: &str = "DELETE FROM keyledger.snapshots WHERE position NOT IN \
     (SELECT position FROM keyledger.snapshots ORDER BY position DESC LIMIT $1)";
const SQL_LIST: &str = "SELECT position FROM keyledger.snapshots ORDER BY position DESC";
const SQL_ONE: &str = "SELECT heads::text, bytes, checksum, node FROM keyledger.snapshots \
     WHERE position = $1";
const SQL_CHUNKS: &str = "SELECT chunk, bytes FROM keyledger.snapshot_chunks \
     WHERE position = $1 ORDER BY chunk";
const SQL_LINKS: &str = "SELECT position, tenant, seq, prev_hash, hash \
     FROM keyledger.events WHERE position > $1 ORDER BY position LIMIT $2";
const SQL_USAGE_POSITION: &str =
    "SELECT position FROM keyledger.projections WHERE name = 'analytics'";
const SQL_USAGE_ROWS: &str = "SELECT key_id, (day - date '1970-01-01')::integer, valid, revoked, \
     expired, insufficient_scope, usage_exceeded, rate_limited, credits_spent \
     FROM keyledger.usage_daily";

/// Publishes `s` (header and chunks in one transaction; a position already
/// published is left as it is) and keeps the newest `keep`.
async fn publish(shared: Arc<Shared>, s: SharedSnapshot, keep: i64) -> Result<bool, StoreError> {
    const WHAT: &str = "publishing a snapshot";
    let fail = |e: tokio_postgres::Error| classify(WHAT, &e);
    let position = i64::try_from(s.position)
        .map_err(|_| StoreError::Backend(format!("{WHAT}: position {}", s.position)))?;
    let len = i64::try_from(s.bytes.len()).unwrap_or(i64::MAX);
    let mut c = get(&shared).await?;
    let txn = c.conn().client.transaction().await.map_err(fail)?;
    let inserted = txn
        .execute(
            SQL_INSERT,
            &[&position, &s.heads, &len, &s.checksum.as_slice(), &s.node],
        )
        .await
        .map_err(fail)?;
    if inserted == 1 {
        for (i, chunk) in s.bytes.chunks(CHUNK_BYTES).enumerate() {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            txn.execute(SQL_INSERT_CHUNK, &[&position, &i, &chunk])
                .await
                .map_err(fail)?;
        }
        txn.execute(SQL_PRUNE, &[&keep]).await.map_err(fail)?;
    }
    txn.commit().await.map_err(fail)?;
    c.release();
    Ok(inserted == 1)
}

/// The snapshot at `position`, its chunks joined (read in one transaction,
/// so a prune cannot cut it short).
async fn fetch(shared: Arc<Shared>, position: i64) -> Result<Option<SharedSnapshot>, StoreError> {
    const WHAT: &str = "reading a shared snapshot";
    let fail = |e: tokio_postgres::Error| classify(WHAT, &e);
    let mut c = get(&shared).await?;
    let txn = c
        .conn()
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(fail)?;
    let Some(head) = txn.query_opt(SQL_ONE, &[&position]).await.map_err(fail)? else {
        txn.commit().await.map_err(fail)?;
        c.release();
        return Ok(None);
    };
    let bad = |m: String| corrupt(to_u64(position), format!("the shared snapshot: {m}"));
    let len = usize::try_from(head.get::<_, i64>(1)).map_err(|_| bad("its length".into()))?;
    let chunks = txn.query(SQL_CHUNKS, &[&position]).await.map_err(fail)?;
    // Sized from what the chunks hold, never from the recorded length
    // alone (a damaged row must not make a node reserve a gigabyte).
    let held: usize = chunks.iter().map(|r| r.get::<_, &[u8]>(1).len()).sum();
    if held != len {
        return Err(bad(format!("{held} bytes, {len} recorded")));
    }
    let mut bytes = Vec::with_capacity(held);
    for (i, row) in chunks.iter().enumerate() {
        if usize::try_from(row.get::<_, i32>(0)).ok() != Some(i) {
            return Err(bad(format!("chunk {i} is missing")));
        }
        bytes.extend_from_slice(row.get::<_, &[u8]>(1));
    }
    drop(chunks);
    txn.commit().await.map_err(fail)?;
    c.release();
    let pos = to_u64(position);
    Ok(Some(SharedSnapshot {
        position: pos,
        heads: head.get(0),
        checksum: hash_of(
            head.get::<_, &[u8]>(2),
            pos,
            "the shared snapshot's checksum",
        )?,
        node: head.get(3),
        bytes,
    }))
}

/// One message from [`usage_rows`] to the caller.
enum UsageMsg {
    Position(u64),
    Rows(Vec<UsageRow>),
    /// The last row was sent and the transaction ended: without it, the
    /// read stopped short (a failed send, a row that would not read) and
    /// what came is not the projection.
    Done,
}

/// Reads the usage projection in one repeatable-read transaction (its
/// position and rows of one moment), sending pages to `tx`.
async fn usage_rows(
    shared: Arc<Shared>,
    tx: std::sync::mpsc::SyncSender<Result<UsageMsg, StoreError>>,
) -> Result<(), StoreError> {
    const WHAT: &str = "reading the usage projection";
    let fail = |e: tokio_postgres::Error| classify(WHAT, &e);
    let send = |tx: &std::sync::mpsc::SyncSender<Result<UsageMsg, StoreError>>, m| {
        let tx = tx.clone();
        // The caller may be slow: wait for room off the client's threads.
        tokio::task::spawn_blocking(move || tx.send(Ok(m)).is_ok())
    };
    let mut c = get(&shared).await?;
    let txn = c
        .conn()
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(fail)?;
    let position: i64 = match txn.query_opt(SQL_USAGE_POSITION, &[]).await.map_err(fail)? {
        Some(r) => r.get(0),
        None => 0,
    };
    if !send(&tx, UsageMsg::Position(to_u64(position)))
        .await
        .unwrap_or(false)
    {
        return Ok(());
    }
    let statement = txn.prepare(SQL_USAGE_ROWS).await.map_err(fail)?;
    let portal = txn.bind(&statement, &[]).await.map_err(fail)?;
    loop {
        let rows = txn
            .query_portal(&portal, USAGE_PAGE_ROWS)
            .await
            .map_err(fail)?;
        if rows.is_empty() {
            break;
        }
        let mut page = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: &str = r.get(0);
            let key: KeyId = id.parse().map_err(|e| {
                corrupt(
                    0,
                    format!("usage_daily: key id `{}`: {e}", id.escape_debug()),
                )
            })?;
            let n = |i: usize| -> Result<u64, StoreError> {
                u64::try_from(r.get::<_, i64>(i))
                    .map_err(|_| corrupt(0, format!("usage_daily: a negative count for {key}")))
            };
            let counts = UseCounts {
                valid: n(2)?,
                revoked: n(3)?,
                expired: n(4)?,
                insufficient_scope: n(5)?,
                usage_exceeded: n(6)?,
                rate_limited: n(7)?,
                credits_spent: n(8)?,
            };
            page.push((key, Day::from_days(r.get::<_, i32>(1)), counts));
        }
        if !send(&tx, UsageMsg::Rows(page)).await.unwrap_or(false) {
            return Ok(());
        }
    }
    txn.commit().await.map_err(fail)?;
    c.release();
    send(&tx, UsageMsg::Done).await.unwrap_or(false);
    Ok(())
}

impl PgLog {
    pub(super) fn publish_snapshot_impl(
        &self,
        s: SharedSnapshot,
        keep: usize,
    ) -> Result<bool, StoreError> {
        let keep = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
        self.run("publishing a snapshot", move |shared| {
            publish(shared, s, keep)
        })
    }

    pub(super) fn shared_snapshots_impl(&self) -> Result<Vec<u64>, StoreError> {
        let rows = self.run("listing the shared snapshots", |s| async move {
            query(&s, "listing the shared snapshots", SQL_LIST, Vec::new()).await
        })?;
        Ok(rows.iter().map(|r| to_u64(r.get::<_, i64>(0))).collect())
    }

    pub(super) fn shared_snapshot_impl(
        &self,
        position: u64,
    ) -> Result<Option<SharedSnapshot>, StoreError> {
        let Ok(position) = i64::try_from(position) else {
            return Ok(None);
        };
        self.run("reading a shared snapshot", move |s| fetch(s, position))
    }

    pub(super) fn chain_links_impl(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChainLink>, StoreError> {
        let Some((after, limit)) = bounds(after, limit) else {
            return Ok(Vec::new());
        };
        let rows = self.run("reading the chain hashes", move |s| async move {
            query(
                &s,
                "reading the chain hashes",
                SQL_LINKS,
                vec![Box::new(after), Box::new(limit)],
            )
            .await
        })?;
        rows.iter()
            .map(|r| {
                let position = to_u64(r.get::<_, i64>(0));
                let t: &str = r.get(1);
                Ok(ChainLink {
                    position,
                    tenant: t.parse().map_err(|e| {
                        corrupt(position, format!("tenant `{}`: {e}", t.escape_debug()))
                    })?,
                    seq: to_u64(r.get::<_, i64>(2)),
                    prev_hash: hash_of(
                        r.get::<_, &[u8]>(3),
                        position,
                        "the stored predecessor hash",
                    )?,
                    hash: hash_of(r.get::<_, &[u8]>(4), position, "the stored hash")?,
                })
            })
            .collect()
    }

    pub(super) fn usage_projection_impl(
        &self,
        page: &mut UsagePage<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let shared = self.shared.clone();
        let timeout = self.shared.options.operation_timeout;
        let errors = tx.clone();
        self.handle.spawn(async move {
            if let Err(e) = usage_rows(shared, tx).await {
                let _ = tokio::task::spawn_blocking(move || errors.send(Err(e))).await;
            }
        });
        take_usage(&rx, timeout, page)
    }
}

/// Hands the usage projection's pages from `rx` to `page` until the
/// reader says it sent the last row: the position, if the projection has
/// one. A reader gone before that is an error, never a short projection
/// taken for the whole.
fn take_usage(
    rx: &std::sync::mpsc::Receiver<Result<UsageMsg, StoreError>>,
    timeout: std::time::Duration,
    page: &mut UsagePage<'_>,
) -> Result<Option<u64>, StoreError> {
    let mut position = None;
    loop {
        match rx.recv_timeout(timeout) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StoreError::Unavailable(
                    "reading the usage projection: the read ended before its last row".into(),
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(StoreError::Unavailable(format!(
                    "reading the usage projection: no answer from PostgreSQL within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(UsageMsg::Position(p))) => {
                position = Some(p);
                page(p, &[]).map_err(StoreError::Backend)?;
            }
            Ok(Ok(UsageMsg::Rows(rows))) => {
                let p = position.unwrap_or(0);
                page(p, &rows).map_err(StoreError::Backend)?;
            }
            Ok(Ok(UsageMsg::Done)) => return Ok(position),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(msgs: Vec<Result<UsageMsg, StoreError>>) -> (Result<Option<u64>, StoreError>, usize) {
        let (tx, rx) = std::sync::mpsc::sync_channel(msgs.len().max(1));
        for m in msgs {
            tx.send(m).expect("room");
        }
        drop(tx);
        let mut rows = 0;
        let mut page = |_: u64, r: &[UsageRow]| -> Result<(), String> {
            rows += r.len();
            Ok(())
        };
        let got = take_usage(&rx, std::time::Duration::from_secs(5), &mut page);
        (got, rows)
    }

    fn row() -> UsageRow {
        (
            KeyId::from_u128(7),
            Day::from_days(20_000),
            UseCounts::default(),
        )
    }

    #[test]
    fn a_usage_read_is_whole_only_once_its_reader_says_so() {
        let (got, rows) = taken(vec![
            Ok(UsageMsg::Position(9)),
            Ok(UsageMsg::Rows(vec![row(), row()])),
            Ok(UsageMsg::Done),
        ]);
        assert_eq!(got.expect("a whole read"), Some(9));
        assert_eq!(rows, 2);
        // The reader stopped after a page (a panic, a failed send): an
        // error, not a projection of two rows at position 9.
        let (got, _) = taken(vec![
            Ok(UsageMsg::Position(9)),
            Ok(UsageMsg::Rows(vec![row(), row()])),
        ]);
        let e = got.expect_err("a short read is refused");
        assert!(e.to_string().contains("before its last row"), "{e}");
    }
}
