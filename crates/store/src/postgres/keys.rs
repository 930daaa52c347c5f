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
    let mut after = 0i64;
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
        let (mut tenants, mut keys, mut seqs, mut positions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let r = raw_from_row(row)?;
            let Ok(tenant) = r.tenant.parse::<TenantId>() else {
                continue;
            };
            let Ok(event) = envelope::decode(&tenant, &r.payload) else {
                continue;
            };
            for key in touched_keys(&event) {
                tenants.push(r.tenant.clone());
                keys.push(key_bytes(key));
                seqs.push(r.seq as i64);
                positions.push(r.position as i64);
            }
        }
        client
            .execute(
                "INSERT INTO keyledger.key_events (tenant, key_id, seq, position) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT DO NOTHING",
                &[&tenants, &keys, &seqs, &positions],
            )
            .await
            .map_err(fail("writing the key index"))?;
    }
    client
        .batch_execute("UPDATE keyledger.key_index_backfill SET upto = 0; COMMIT")
        .await
        .map_err(fail("finishing the key index's backfill"))?;
    Ok(())
}
