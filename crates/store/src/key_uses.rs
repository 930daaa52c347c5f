//! The redb log's index of `KeyUsed` records (issue 13, point in time):
//! `key_uses`, `(tenant, key id, seq)` → the record's position and the
//! key's uses summed up to and including it ([`UseTotals`]).
//!
//! `KeyUsed` records are listed here instead of in `key_index`, so a
//! point-in-time page reads a key's other records through `key_index` and
//! its uses as one entry, the key's last one at or before the point
//! ([`EventLog::read_keys_until_summed`](crate::EventLog::read_keys_until_summed)),
//! however many times it was used. A key's history merges both.
//!
//! An entry's value: the position (8 bytes, little-endian), the seven use
//! counts as [`crate::counts`] writes them, then 0
//! (no valid use yet) or 1 and the last valid use in microseconds (8 bytes,
//! little-endian). Written in the append's transaction: the sum is the
//! key's previous entry's plus the record's counts.

#[cfg(test)]
use keyledger_core::UseCounts;
use keyledger_core::{KeyUsed, Timestamp, UseTotals};
use redb::{ReadableTable, TableDefinition};

use crate::StoreError;

/// `(tenant, key id, seq)` → position and the key's uses summed.
pub(crate) const KEY_USES: TableDefinition<(&str, u128, u64), &[u8]> =
    TableDefinition::new("key_uses");

/// One entry's value: where its record is, and the key's uses up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UseEntry {
    pub(crate) position: u64,
    pub(crate) totals: UseTotals,
}

pub(crate) fn encode(entry: &UseEntry, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&entry.position.to_le_bytes());
    crate::counts::encode(&entry.totals.counts, out);
    match entry.totals.last_valid_at {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.as_micros().to_le_bytes());
        }
    }
}

/// The entry a value encodes, or `None` when it does not decode (damage).
pub(crate) fn decode(bytes: &[u8]) -> Option<UseEntry> {
    let (position, rest) = bytes.split_first_chunk::<8>()?;
    let (counts, rest) = crate::counts::decode(rest)?;
    let last_valid_at = match rest.split_first()? {
        (0, []) => None,
        (1, tail) => {
            let micros = i64::from_le_bytes(*<&[u8; 8]>::try_from(tail).ok()?);
            Some(Timestamp::from_micros(micros))
        }
        _ => return None,
    };
    Some(UseEntry {
        position: u64::from_le_bytes(*position),
        totals: UseTotals {
            counts,
            last_valid_at,
        },
    })
}

fn damaged(tenant: &str, key: u128, seq: u64) -> StoreError {
    StoreError::Corrupt {
        position: 0,
        message: format!(
            "tenant {tenant}: the use index entry of key {} for event {seq} does not decode",
            keyledger_core::KeyId::from_ulid(ulid::Ulid(key))
        ),
    }
}

/// The key's last entry at or before `seq`, decoded.
pub(crate) fn last_at_or_before(
    table: &impl ReadableTable<(&'static str, u128, u64), &'static [u8]>,
    tenant: &str,
    key: u128,
    seq: u64,
) -> Result<Option<UseEntry>, StoreError> {
    let mut range = table
        .range((tenant, key, 0)..=(tenant, key, seq))
        .map_err(crate::redb_log::backend("reading the use index"))?;
    match range.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (k, v) = entry.map_err(crate::redb_log::backend("reading the use index"))?;
            let (_, _, at) = k.value();
            decode(v.value())
                .map(Some)
                .ok_or_else(|| damaged(tenant, key, at))
        }
    }
}

/// Lists a `KeyUsed` record (event `seq` of `tenant` at `position`): its
/// entry sums the key's previous one and its counts. `buf` is reused.
pub(crate) fn insert(
    table: &mut redb::Table<'_, (&'static str, u128, u64), &'static [u8]>,
    tenant: &str,
    seq: u64,
    position: u64,
    used: &KeyUsed,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let key = used.key_id.ulid().0;
    let mut totals = last_at_or_before(&*table, tenant, key, seq)?
        .map(|e| e.totals)
        .unwrap_or_default();
    totals.add_used(used);
    encode(&UseEntry { position, totals }, buf);
    table
        .insert((tenant, key, seq), buf.as_slice())
        .map_err(crate::redb_log::backend("writing the use index"))?;
    Ok(())
}

/// A key's entries with `from <= seq <= to`, as (seq, position), in order.
pub(crate) fn positions(
    table: &impl ReadableTable<(&'static str, u128, u64), &'static [u8]>,
    tenant: &str,
    key: u128,
    from: u64,
    to: u64,
) -> Result<impl Iterator<Item = Result<(u64, u64), StoreError>>, StoreError> {
    let owned = tenant.to_owned();
    let range = table
        .range((tenant, key, from)..=(tenant, key, to))
        .map_err(crate::redb_log::backend("reading the use index"))?;
    Ok(range.map(move |entry| {
        let (k, v) = entry.map_err(crate::redb_log::backend("reading the use index"))?;
        let (_, _, seq) = k.value();
        let e = decode(v.value()).ok_or_else(|| damaged(&owned, key, seq))?;
        Ok((seq, e.position))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_does_not_decode() {
        let entries = [
            UseEntry {
                position: 1,
                totals: UseTotals::default(),
            },
            UseEntry {
                position: u64::MAX,
                totals: UseTotals {
                    counts: UseCounts {
                        valid: u64::MAX,
                        revoked: 0,
                        expired: 127,
                        insufficient_scope: 128,
                        usage_exceeded: 1 << 40,
                        rate_limited: 3,
                        credits_spent: u64::MAX - 1,
                    },
                    last_valid_at: Some(Timestamp::from_micros(1_765_000_000_000_000)),
                },
            },
        ];
        let mut buf = Vec::new();
        for e in entries {
            encode(&e, &mut buf);
            assert_eq!(decode(&buf), Some(e));
            for cut in 0..buf.len() {
                assert_eq!(decode(&buf[..cut]), None, "cut at {cut}");
            }
            let mut longer = buf.clone();
            longer.push(0);
            assert_eq!(decode(&longer), None, "a byte too many");
        }
        // An eleventh LEB128 byte, or a tenth above bit 63, overflows.
        let mut over = vec![0u8; 8];
        over.extend_from_slice(&[0xff; 9]);
        over.push(0x02);
        assert_eq!(decode(&over), None);
    }
}
