//! The per-key index in PostgreSQL (`migrations/0004_key_index.sql`): its
//! reads, and the one-time pass that fills it for the records appended
//! before it existed. (The append writes its entries: `append.rs`.)

use std::sync::Arc;

use keyledger_core::{KeyId, TenantId, touched_keys};

use super::pool::{connect, query};
use super::read::raw_from_row;
use super::{PgLog, Shared, classify, to_u64};
use crate::read::{KeyPage, KeysPage, merge_entry};
use crate::{Record, StoreError, envelope};

const SQL_READ_KEY: &str = "SELECT e.position, e.tenant, e.seq, e.prev_hash, e.hash, e.payload, \
     k.seq, k.position \
     FROM keyledger.key_events k LEFT JOIN keyledger.events e ON e.position = k.position \
     WHERE k.tenant = $1 AND k.key_id = $2 AND k.seq > $3 ORDER BY k.seq LIMIT $4";

const SQL_READ_KEYS_UNTIL: &str = "SELECT e.position, e.tenant, e.seq, e.prev_hash, e.hash, \
     e.payload, k.seq, k.position \
     FROM keyledger.key_events k LEFT JOIN keyledger.events e ON e.position = k.position \
     WHERE k.tenant = $1 AND k.key_id = ANY($2) AND k.seq <= $3 ORDER BY k.seq";

/// A loose index scan: one index probe per key, however many entries
/// each key has.
const SQL_TENANT_KEYS: &str = "WITH RECURSIVE k (key_id, seq) AS ( \
       (SELECT key_id, seq FROM keyledger.key_events WHERE tenant = $1 AND key_id > $2 \
        ORDER BY key_id, seq LIMIT 1) \
       UNION ALL \
       SELECT n.key_id, n.seq FROM k, LATERAL ( \
         SELECT key_id, seq FROM keyledger.key_events WHERE tenant = $1 AND key_id > k.key_id \
         ORDER BY key_id, seq LIMIT 1) n \
     ) SELECT key_id, seq FROM k LIMIT $3";

/// Records read per statement while filling the index.
const BACKFILL_PAGE: i64 = 10_000;

fn key_bytes(key: KeyId) -> Vec<u8> {
    key.ulid().0.to_be_bytes().to_vec()
}

/// A row of the key reads: the index entry's seq and position, and the
/// record stored there (`None` when the position holds nothing).
fn index_entry(
    row: &tokio_postgres::Row,
) -> Result<(u64, u64, Option<crate::RawRecord>), StoreError> {
    let seq = to_u64(row.get::<_, i64>(6));
    let position = to_u64(row.get::<_, i64>(7));
    let stored = match row.get::<_, Option<i64>>(0) {
        None => None,
        Some(_) => Some(raw_from_row(row)?),
    };
    Ok((seq, position, stored))
}

impl PgLog {
    pub(super) fn read_key_records(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let Some((after, lim)) = super::read::bounds(after_seq, limit) else {
            return Ok(Vec::new());
        };
        let (t, k) = (tenant.as_str().to_owned(), key_bytes(key));
        let rows = self.run("reading a key's events", move |s| async move {
            query(
                &s,
                "reading a key's events",
                SQL_READ_KEY,
                vec![Box::new(t), Box::new(k), Box::new(after), Box::new(lim)],
            )
            .await
        })?;
        let mut page = KeyPage::new(tenant, key, after_seq, rows.len());
        for row in &rows {
            let (seq, position, r) = index_entry(row)?;
            page.push(seq, position, r.as_ref().map(|r| r.as_ref()))?;
        }
        Ok(page.finish())
    }

    pub(super) fn read_keys_until_records(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let Some((until, _)) = super::read::bounds(until_seq, 1) else {
            return Ok(Vec::new());
        };
        if keys.is_empty() || until == 0 {
            return Ok(Vec::new());
        }
        let t = tenant.as_str().to_owned();
        let ids: Vec<Vec<u8>> = keys.iter().map(|k| key_bytes(*k)).collect();
        let rows = self.run("reading keys' events", move |s| async move {
            query(
                &s,
                "reading keys' events",
                SQL_READ_KEYS_UNTIL,
                vec![Box::new(t), Box::new(ids), Box::new(until)],
            )
            .await
        })?;
        let mut page = KeysPage::new(tenant, keys);
        let mut entries = std::collections::BTreeMap::new();
        for row in &rows {
            let (seq, position, r) = index_entry(row)?;
            // Two of the keys may list one record: it is read once.
            let seen = entries.contains_key(&seq);
            merge_entry(&mut entries, tenant, seq, position)?;
            if !seen {
                page.push(seq, position, r.as_ref().map(|r| r.as_ref()))?;
            }
        }
        Ok(page.finish())
    }

    pub(super) fn key_list(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let Some((_, lim)) = super::read::bounds(0, limit) else {
            return Ok(Vec::new());
        };
        let t = tenant.as_str().to_owned();
        let from = after.map(key_bytes).unwrap_or_default();
        let rows = self.run("listing a tenant's keys", move |s| async move {
            query(
                &s,
                "listing a tenant's keys",
                SQL_TENANT_KEYS,
                vec![Box::new(t), Box::new(from), Box::new(lim)],
            )
            .await
        })?;
        rows.iter()
            .map(|r| {
                let bytes: &[u8] = r.get(0);
                let id: [u8; 16] = bytes.try_into().map_err(|_| {
                    super::corrupt(
                        0,
                        format!("a key index entry's key id is {} bytes", bytes.len()),
                    )
                })?;
                let key = KeyId::from_ulid(ulid::Ulid(u128::from_be_bytes(id)));
                Ok((key, to_u64(r.get::<_, i64>(1))))
            })
            .collect()
    }
}

/// Fills the per-key index for the records appended before migration 4
/// (`keyledger.key_index_backfill.upto`), in one transaction that then
/// sets `upto` to 0: the first node to connect after the upgrade does it,
/// others wait on the row's lock and find nothing left to do. A record
/// that does not decode is left out (reads and chain verification name
/// it).
pub(super) async fn backfill(shared: Arc<Shared>) -> Result<(), StoreError> {
    let client = connect(&shared).await?;
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0; BEGIN")
        .await
        .map_err(fail("starting the key index's backfill"))?;
    let upto: i64 = client
        .query_opt(
            "SELECT upto FROM keyledger.key_index_backfill FOR UPDATE",
            &[],
        )
        .await
        .map_err(fail("reading the key index's backfill"))?
        .map_or(0, |r| r.get(0));
    index_events(&client, IndexInto::Backfill, 0, upto).await?;
    client
        .batch_execute("UPDATE keyledger.key_index_backfill SET upto = 0; COMMIT")
        .await
        .map_err(fail("finishing the key index's backfill"))?;
    Ok(())
}

/// The per-key index entries of a page of `keyledger.events` rows
/// (`position, tenant, seq, prev_hash, hash, payload`), as columns for
/// `unnest`: one per key each record names.
#[derive(Default)]
struct Entries {
    tenants: Vec<String>,
    keys: Vec<Vec<u8>>,
    seqs: Vec<i64>,
    positions: Vec<i64>,
}

impl Entries {
    /// `strict`: a record that does not decode is an error naming it (the
    /// check: an index short of it would pass as equal); otherwise it is
    /// left out (the backfill: reads and chain verification name it).
    fn of(rows: &[tokio_postgres::Row], strict: bool) -> Result<Self, StoreError> {
        let mut e = Entries::default();
        for row in rows {
            let r = raw_from_row(row)?;
            let event = match r.tenant.parse::<TenantId>() {
                Ok(tenant) => envelope::decode(&tenant, &r.payload).map_err(|e| e.to_string()),
                Err(e) => Err(format!("tenant {:?}: {e}", r.tenant)),
            };
            let event = match event {
                Ok(event) => event,
                Err(message) if strict => {
                    return Err(StoreError::Corrupt {
                        position: r.position,
                        message,
                    });
                }
                Err(_) => continue,
            };
            for key in touched_keys(&event) {
                e.tenants.push(r.tenant.clone());
                e.keys.push(key_bytes(key));
                e.seqs.push(r.seq as i64);
                e.positions.push(r.position as i64);
            }
        }
        Ok(e)
    }
}

/// Every difference between `keyledger.key_events` and the scratch index
/// built from the records (`key_events_check`), kept apart
/// (`key_events_diff`): an entry missing (`want` only), one in no record
/// (`got` only), or one whose position differs (both).
const SQL_DIFFERENCES: &str = "CREATE TEMP TABLE key_events_diff AS \
     SELECT coalesce(b.tenant, k.tenant) AS tenant, coalesce(b.key_id, k.key_id) AS key_id, \
       coalesce(b.seq, k.seq) AS seq, b.position AS want, k.position AS got \
     FROM key_events_check b FULL JOIN keyledger.key_events k \
       ON k.tenant = b.tenant AND k.key_id = b.key_id AND k.seq = b.seq \
     WHERE b.position IS DISTINCT FROM k.position";

/// Mends `keyledger.key_events` by the differences alone (under the
/// append lock): entries in no record removed (only if still as found),
/// missing or moved ones written. Entries of records appended since the
/// check's snapshot were written by their appends.
const SQL_MEND: &str = "DELETE FROM keyledger.key_events k USING key_events_diff d \
       WHERE d.want IS NULL AND k.tenant = d.tenant AND k.key_id = d.key_id \
       AND k.seq = d.seq AND k.position = d.got; \
     INSERT INTO keyledger.key_events (tenant, key_id, seq, position) \
       SELECT tenant, key_id, seq, want FROM key_events_diff WHERE want IS NOT NULL \
       ON CONFLICT (tenant, key_id, seq) DO UPDATE SET position = excluded.position; \
     COMMIT";

/// Where [`index_events`] writes the entries it reads.
#[derive(Clone, Copy)]
enum IndexInto {
    /// `keyledger.key_events`, leaving out records that do not decode.
    Backfill,
    /// The check's temporary `key_events_check`, refusing them.
    Check,
}

/// Lists the events after `after` up to `upto` in the index `into`.
async fn index_events(
    client: &tokio_postgres::Client,
    into: IndexInto,
    mut after: i64,
    upto: i64,
) -> Result<(), StoreError> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    let (insert, strict) = match into {
        IndexInto::Backfill => (
            "INSERT INTO keyledger.key_events (tenant, key_id, seq, position) \
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT DO NOTHING",
            false,
        ),
        IndexInto::Check => (
            "INSERT INTO key_events_check (tenant, key_id, seq, position) \
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT DO NOTHING",
            true,
        ),
    };
    while after < upto {
        let rows = client
            .query(
                "SELECT position, tenant, seq, prev_hash, hash, payload FROM keyledger.events \
                 WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
                &[&after, &upto, &BACKFILL_PAGE],
            )
            .await
            .map_err(fail("reading events for the key index"))?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        let e = Entries::of(&rows, strict)?;
        client
            .execute(insert, &[&e.tenants, &e.keys, &e.seqs, &e.positions])
            .await
            .map_err(fail("writing the key index"))?;
    }
    Ok(())
}

/// [`crate::EventLog::check_key_index`] for PostgreSQL: builds the index
/// anew from the records into a temporary table, in one snapshot of the
/// database (a repeatable-read transaction, so appends by other nodes
/// meanwhile are in neither side), and compares the two with a join.
/// On a difference, mends `keyledger.key_events` by the differences
/// alone, under the append lock (`SQL_MEND`): the lock is held for as
/// many rows as differ, not for the whole table.
pub(super) async fn check(shared: Arc<Shared>) -> Result<crate::KeyIndexCheck, StoreError> {
    let client = connect(&shared).await?;
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    client
        .batch_execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             CREATE TEMP TABLE key_events_check ( \
               tenant text COLLATE \"C\" NOT NULL, key_id bytea NOT NULL, \
               seq bigint NOT NULL, position bigint NOT NULL, \
               PRIMARY KEY (tenant, key_id, seq))",
        )
        .await
        .map_err(fail("starting the key index check"))?;
    // Apart: in one string, the statements before it would already have
    // opened the transaction `BEGIN` sets the isolation of.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(fail("starting the key index check"))?;
    let upto: i64 = client
        .query_one(super::append::SQL_HEAD, &[])
        .await
        .map_err(fail("reading the log's head"))?
        .get(0);
    index_events(&client, IndexInto::Check, 0, upto).await?;
    // Autovacuum never analyzes a temporary table: without this the joins
    // below are planned on a guess of its size.
    client
        .batch_execute(&format!("ANALYZE key_events_check; {SQL_DIFFERENCES}"))
        .await
        .map_err(fail("comparing the key index"))?;
    let first = client
        .query_opt(
            "SELECT tenant, key_id, seq, want, got FROM key_events_diff \
             ORDER BY tenant, key_id, seq LIMIT 1",
            &[],
        )
        .await
        .map_err(fail("comparing the key index"))?;
    let entries: i64 = client
        .query_one(
            "SELECT count(*) FROM key_events_check b JOIN keyledger.key_events k \
               ON k.tenant = b.tenant AND k.key_id = b.key_id AND k.seq = b.seq \
               AND k.position = b.position",
            &[],
        )
        .await
        .map_err(fail("counting the key index"))?
        .get(0);
    client
        .batch_execute("COMMIT")
        .await
        .map_err(fail("ending the key index check"))?;
    let difference = first.map(|row| {
        let key = row
            .get::<_, &[u8]>(1)
            .try_into()
            .map(|b| KeyId::from_ulid(ulid::Ulid(u128::from_be_bytes(b))).to_string())
            .unwrap_or_else(|_| format!("{:02x?}", row.get::<_, &[u8]>(1)));
        let name = format!(
            "key_events: tenant {}, key {key}, event {}",
            row.get::<_, String>(0),
            row.get::<_, i64>(2)
        );
        match (row.get::<_, Option<i64>>(3), row.get::<_, Option<i64>>(4)) {
            (Some(_), None) => format!("{name} is missing"),
            (None, _) => format!("{name} is in no record"),
            (Some(want), Some(got)) => {
                format!("{name} points at position {got}; the records give {want}")
            }
        }
    });
    if difference.is_some() {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(fail("starting the key index's mend"))?;
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&super::APPEND_LOCK.0, &super::APPEND_LOCK.1],
            )
            .await
            .map_err(fail("taking the append lock"))?;
        client
            .batch_execute(SQL_MEND)
            .await
            .map_err(fail("mending the key index"))?;
    }
    client
        .batch_execute("DROP TABLE key_events_diff; DROP TABLE key_events_check")
        .await
        .map_err(fail("dropping the key index check"))?;
    Ok(crate::KeyIndexCheck {
        entries: u64::try_from(entries).unwrap_or(0),
        difference,
    })
}
