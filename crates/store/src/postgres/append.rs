//! Appends: the advisory lock, the reads of the last position and the
//! tenant heads, the plan ([`crate::plan`]), the write statement and the
//! commit, and settling a commit that got no answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::pool::{StatementCache, connect, get, prepare};
use super::{
    APPEND_LOCK, NOTIFY_CHANNEL, Shared, classify, corrupt, describe, hash_of, is_connection_error,
    to_u64,
};
use keyledger_core::{Event, touched_keys};

use crate::chain::{GENESIS, Hash};
use crate::read::RecordRef;
use crate::{Record, StoreError, TenantAppend, check_append, plan};

const SQL_LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";
pub(super) const SQL_HEAD: &str = "SELECT coalesce(max(position), 0) FROM keyledger.events";
const SQL_HEADS: &str = "SELECT h.tenant, h.seq, h.hash, e.position, e.seq, e.hash \
     FROM keyledger.tenant_heads h \
     LEFT JOIN keyledger.events e ON e.tenant = h.tenant AND e.seq = h.seq \
     WHERE h.tenant = ANY($1)";
const SQL_WRITE: &str = "WITH ev AS ( \
       INSERT INTO keyledger.events (position, tenant, seq, prev_hash, hash, payload) \
       SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::bytea[], \
                            $6::bytea[]) \
     ), hd AS ( \
       INSERT INTO keyledger.tenant_heads (tenant, seq, hash) \
       SELECT * FROM unnest($7::text[], $8::bigint[], $9::bytea[]) \
       ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash \
     ), ki AS ( \
       INSERT INTO keyledger.key_events (tenant, key_id, seq, position) \
       SELECT * FROM unnest($12::text[], $13::bytea[], $14::bigint[], $15::bigint[]) \
       ON CONFLICT (tenant, key_id, seq) DO UPDATE SET position = excluded.position \
     ) \
     SELECT pg_notify($10, $11)";

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::BadAppend(format!("{what} {v} is past 2^63")))
}

/// The heads of `tenants`, each checked against its last stored record
/// (the append side of "assert in pairs").
fn checked_heads(rows: &[Row]) -> Result<HashMap<String, (u64, Hash)>, StoreError> {
    let mut heads = HashMap::with_capacity(rows.len());
    for r in rows {
        let tenant: String = r.get(0);
        let seq = to_u64(r.get::<_, i64>(1));
        let hash = hash_of(r.get::<_, &[u8]>(2), 0, "a tenant head's hash")?;
        let refuse = |position: u64, why: &str| {
            corrupt(
                position,
                format!(
                    "tenant {tenant}: {why}; refusing to extend a damaged chain (run a chain \
                     verify)"
                ),
            )
        };
        let Some(position) = r.get::<_, Option<i64>>(3).map(to_u64) else {
            return Err(refuse(0, "the head's event is missing"));
        };
        let event_hash = r.get::<_, Option<&[u8]>>(5).unwrap_or_default();
        if r.get::<_, Option<i64>>(4).map(to_u64) != Some(seq) || event_hash != hash.as_slice() {
            return Err(refuse(position, "the head does not match its event"));
        }
        heads.insert(tenant, (seq, hash));
    }
    Ok(heads)
}

/// The append as [`super::PgLog`] makes it, inside a transaction the caller has
/// opened on `client` (and commits or rolls back afterwards): takes
/// [`APPEND_LOCK`], reads the last position and the tenant heads, checks
/// each batch's expected version, computes the chain, writes the records
/// and the heads, and queues the notification (sent at commit). On any
/// error the caller must roll back; nothing it wrote survives that.
///
/// Public so tests (and tools that append as part of a larger transaction)
/// can drive the exact protocol on connections of their own.
pub async fn append_in_transaction(
    client: &Client,
    batches: &[TenantAppend],
) -> Result<Vec<Record>, StoreError> {
    check_append(batches)?;
    let encoded = plan::Encoded::new(batches);
    let mut cache = StatementCache::new();
    let (write, args) = plan_append(client, &mut cache, batches, &encoded, false).await?;
    let refs = args.refs();
    client
        .query_one(&write, &refs.params())
        .await
        .map_err(|e| write_error(&e))?;
    let events = batches.iter().flat_map(|b| b.events.iter().cloned());
    Ok(plan::records(args.links, events))
}

/// An append planned under the lock ([`plan::plan`]): where every record
/// goes, and the write statement's arguments.
struct WriteArgs<'a> {
    links: Vec<plan::Link>,
    positions: Vec<i64>,
    tenants: Vec<&'a str>,
    seqs: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    head_tenants: Vec<&'a str>,
    head_seqs: Vec<i64>,
    head_hashes: Vec<Hash>,
    new_head: String,
    /// The per-key index entries: tenant, key id (16 bytes), seq, position.
    key_tenants: Vec<&'a str>,
    key_ids: Vec<[u8; 16]>,
    key_seqs: Vec<i64>,
    key_positions: Vec<i64>,
}

/// The byte-array arguments of a [`WriteArgs`], borrowed as the driver
/// wants them.
struct PlanRefs<'p> {
    plan: &'p WriteArgs<'p>,
    prevs: Vec<&'p [u8]>,
    hashes: Vec<&'p [u8]>,
    payloads: Vec<&'p [u8]>,
    head_hashes: Vec<&'p [u8]>,
    key_ids: Vec<&'p [u8]>,
}

impl<'a> WriteArgs<'a> {
    fn refs(&self) -> PlanRefs<'_> {
        PlanRefs {
            plan: self,
            prevs: self.links.iter().map(|l| l.2.as_slice()).collect(),
            hashes: self.links.iter().map(|l| l.3.as_slice()).collect(),
            payloads: self.payloads.clone(),
            head_hashes: self.head_hashes.iter().map(|h| h.as_slice()).collect(),
            key_ids: self.key_ids.iter().map(|k| k.as_slice()).collect(),
        }
    }
}

impl PlanRefs<'_> {
    /// The parameters of [`SQL_WRITE`], in order.
    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.plan.positions,
            &self.plan.tenants,
            &self.plan.seqs,
            &self.prevs,
            &self.hashes,
            &self.payloads,
            &self.plan.head_tenants,
            &self.plan.head_seqs,
            &self.head_hashes,
            &NOTIFY_CHANNEL,
            &self.plan.new_head,
            &self.plan.key_tenants,
            &self.key_ids,
            &self.plan.key_seqs,
            &self.plan.key_positions,
        ]
    }
}

/// The write statement failed: the transaction is aborted, nothing of it
/// will be committed.
fn write_error(e: &tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        corrupt(
            0,
            format!(
                "{}: a record is already stored past a tenant's head; refusing to extend a \
                 damaged chain (run a chain verify)",
                describe("writing the records", e)
            ),
        )
    } else {
        classify("writing the records", e)
    }
}

/// Takes [`APPEND_LOCK`] and reads the last position and the tenant heads
/// (after `BEGIN` when `begin`), then checks the expected versions and
/// computes the chain. Returns the write statement and the plan.
///
/// `BEGIN`, the lock and the two reads go out together, in one round trip:
/// PostgreSQL still runs them one after the other, and in READ COMMITTED
/// each read takes its snapshot when it starts, so after the lock is
/// granted, seeing every append that committed before. (One statement that
/// took the lock and read `max(position)` would not: its snapshot would
/// predate the wait.)
async fn plan_append<'a>(
    client: &Client,
    cache: &mut StatementCache,
    batches: &'a [TenantAppend],
    encoded: &'a plan::Encoded,
    begin: bool,
) -> Result<(Statement, WriteArgs<'a>), StoreError> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    let mut statements = Vec::with_capacity(4);
    for sql in [SQL_LOCK, SQL_HEAD, SQL_HEADS, SQL_WRITE] {
        statements.push(
            prepare(client, cache, sql)
                .await
                .map_err(fail("preparing the append"))?,
        );
    }
    let [lock, head_stmt, heads_stmt, write_stmt]: [Statement; 4] = statements
        .try_into()
        .unwrap_or_else(|_| unreachable!("four statements were prepared"));
    let mut names: Vec<&str> = batches.iter().map(|b| b.tenant.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let lock_params: [&(dyn ToSql + Sync); 2] = [&APPEND_LOCK.0, &APPEND_LOCK.1];
    let heads_params: [&(dyn ToSql + Sync); 1] = [&names];
    let (begun, locked, head, heads) = tokio::join!(
        async {
            match begin {
                true => client.batch_execute("BEGIN").await,
                false => Ok(()),
            }
        },
        client.execute(&lock, &lock_params),
        client.query_one(&head_stmt, &[]),
        client.query(&heads_stmt, &heads_params),
    );
    begun.map_err(fail("starting an append"))?;
    locked.map_err(|e| {
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            StoreError::Unavailable(describe("waiting for another node's append to commit", &e))
        } else {
            classify("taking the append lock", &e)
        }
    })?;
    let position = to_u64(head.map_err(fail("reading the last position"))?.get(0));
    let stored_heads = checked_heads(&heads.map_err(fail("reading the tenant heads"))?)?;

    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    let mut args = WriteArgs {
        links: Vec::new(),
        positions: Vec::with_capacity(total),
        tenants: Vec::with_capacity(total),
        seqs: Vec::with_capacity(total),
        payloads: Vec::with_capacity(total),
        head_tenants: Vec::with_capacity(batches.len()),
        head_seqs: Vec::with_capacity(batches.len()),
        head_hashes: Vec::with_capacity(batches.len()),
        new_head: String::new(),
        key_tenants: Vec::with_capacity(total),
        key_ids: Vec::with_capacity(total),
        key_seqs: Vec::with_capacity(total),
        key_positions: Vec::with_capacity(total),
    };
    let mut sink = Stage {
        stored_heads: &stored_heads,
        args: &mut args,
    };
    let planned = plan::plan(batches, encoded, position, &mut sink)?;
    args.new_head = planned.last_position().unwrap_or(position).to_string();
    for (tenant, seq, hash) in planned.heads {
        args.head_tenants.push(tenant);
        args.head_seqs.push(to_i64(seq, "sequence number")?);
        args.head_hashes.push(hash);
    }
    args.links = planned.links;
    Ok((write_stmt, args))
}

/// An append's rows, checked and staged as the write statement's
/// arguments.
struct Stage<'h, 'w, 'a> {
    stored_heads: &'h HashMap<String, (u64, Hash)>,
    args: &'w mut WriteArgs<'a>,
}

impl<'a> plan::AppendSink<'a> for Stage<'_, '_, 'a> {
    fn head(&mut self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        Ok(self
            .stored_heads
            .get(tenant)
            .copied()
            .unwrap_or((0, GENESIS)))
    }

    fn record(&mut self, r: &RecordRef<'a>, event: &'a Event) -> Result<(), StoreError> {
        for key in touched_keys(event) {
            self.args.key_tenants.push(r.tenant);
            self.args.key_ids.push(key.ulid().0.to_be_bytes());
            self.args.key_seqs.push(to_i64(r.seq, "sequence number")?);
            self.args
                .key_positions
                .push(to_i64(r.position, "position")?);
        }
        self.args.positions.push(to_i64(r.position, "position")?);
        self.args.tenants.push(r.tenant);
        self.args.seqs.push(to_i64(r.seq, "sequence number")?);
        self.args.payloads.push(r.payload);
        Ok(())
    }
}

/// What became of an append whose `COMMIT` got no answer.
async fn resolve_commit(
    shared: &Arc<Shared>,
    failure: String,
    last: (u64, Hash),
) -> Result<(), StoreError> {
    let looked = async {
        let client = connect(shared).await?;
        let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
        // Waits until the failed transaction has ended on the server
        // (committed or not): until then it holds the append lock. A
        // session the server still thinks alive ends within
        // idle_in_transaction_session_timeout.
        let wait = shared.options.idle_in_transaction_timeout + Duration::from_secs(5);
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                wait.as_millis()
            ))
            .await
            .map_err(fail("looking for the append"))?;
        client
            .execute(SQL_LOCK, &[&APPEND_LOCK.0, &APPEND_LOCK.1])
            .await
            .map_err(fail("waiting for the failed append to end"))?;
        let row = client
            .query_opt(
                "SELECT hash FROM keyledger.events WHERE position = $1",
                &[&to_i64(last.0, "position")?],
            )
            .await
            .map_err(fail("looking for the append"))?;
        let _ = client.batch_execute("ROLLBACK").await;
        Ok::<_, StoreError>(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }
    .await;
    match looked {
        Ok(Some(hash)) if hash == last.1 => Ok(()),
        Ok(_) => Err(StoreError::Unavailable(format!(
            "{failure}; the append was not committed (nothing was written)"
        ))),
        Err(e) => Err(StoreError::Unavailable(format!(
            "{failure}; whether this append was committed is known only once the log can be \
             read again ({e})"
        ))),
    }
}

pub(super) async fn append(
    shared: Arc<Shared>,
    batches: Vec<TenantAppend>,
) -> Result<Vec<Record>, StoreError> {
    let encoded = plan::Encoded::new(&batches);
    let mut attempt = 0;
    let (c, write, plan) = loop {
        attempt += 1;
        let mut c = get(&shared).await?;
        let reused = c.reused;
        let conn = c.conn();
        match plan_append(&conn.client, &mut conn.statements, &batches, &encoded, true).await {
            Ok((write, plan)) => break (c, write, plan),
            // A connection that died while idle in the pool: nothing was
            // committed, so a fresh connection may simply try again.
            Err(_) if attempt == 1 && reused && c.client().is_closed() => continue,
            Err(e) => {
                // Nothing was committed: roll back, and keep the connection
                // only when that works.
                if c.client().batch_execute("ROLLBACK").await.is_ok() {
                    c.release();
                }
                return Err(e);
            }
        }
    };
    // The write and the COMMIT go out together: the lock is held for one
    // round trip and the commit's flush.
    let refs = plan.refs();
    let params = refs.params();
    let (written, committed) = tokio::join!(
        c.client().query_one(&write, &params),
        c.client().batch_execute("COMMIT"),
    );
    match (written, committed) {
        (Ok(_), Ok(())) => c.release(),
        // The server refused the write: the transaction was aborted and
        // the COMMIT rolled it back.
        (Err(e), committed) if !is_connection_error(&e) => {
            if committed.is_ok() {
                c.release();
            }
            return Err(write_error(&e));
        }
        // The server refused the commit itself: rolled back.
        (Ok(_), Err(e)) if !is_connection_error(&e) => {
            return Err(classify("committing an append", &e));
        }
        // The connection failed with the COMMIT sent: the outcome is
        // unknown until looked up.
        (written, committed) => {
            drop(c);
            let failure = match (written, committed) {
                (Err(e), _) | (_, Err(e)) => describe("committing an append", &e),
                (Ok(_), Ok(())) => unreachable!("handled above"),
            };
            match plan.links.last() {
                Some(&(position, _, _, hash)) => {
                    resolve_commit(&shared, failure, (position, hash)).await?;
                }
                None => return Err(StoreError::Unavailable(failure)),
            }
        }
    }
    drop(refs);
    let WriteArgs { links, .. } = plan;
    if let Some(&(position, ..)) = links.last() {
        shared.wake.raise(position);
    }
    let events = batches.into_iter().flat_map(|b| b.events);
    Ok(plan::records(links, events))
}
