//! Reads: the statements, and rows turned into records.

use keyledger_core::TenantId;
use tokio_postgres::Row;

use super::pool::query;
use super::{PgLog, hash_of, to_u64};
use crate::{RawRecord, StoreError};

pub(super) const SQL_READ_AFTER: &str = "SELECT position, tenant, seq, prev_hash, hash, payload \
     FROM keyledger.events WHERE position > $1 ORDER BY position LIMIT $2";
const SQL_READ_TENANT: &str = "SELECT position, tenant, seq, prev_hash, hash, payload \
     FROM keyledger.events WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3";

pub(super) fn raw_from_row(r: &Row) -> Result<RawRecord, StoreError> {
    let position = to_u64(r.get::<_, i64>(0));
    Ok(RawRecord {
        position,
        tenant: r.get(1),
        seq: to_u64(r.get::<_, i64>(2)),
        prev_hash: hash_of(
            r.get::<_, &[u8]>(3),
            position,
            "the stored predecessor hash",
        )?,
        hash: hash_of(r.get::<_, &[u8]>(4), position, "the stored hash")?,
        payload: r.get(5),
    })
}

/// `u64` bounds as PostgreSQL `bigint`s: `None` when nothing can lie past
/// `after`.
pub(super) fn bounds(after: u64, limit: usize) -> Option<(i64, i64)> {
    if limit == 0 {
        return None;
    }
    let after = i64::try_from(after).ok()?;
    Some((after, i64::try_from(limit).unwrap_or(i64::MAX)))
}

impl PgLog {
    pub(super) fn read_tenant_rows(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let Some((after, limit)) = bounds(after_seq, limit) else {
            return Ok(Vec::new());
        };
        let t = tenant.as_str().to_owned();
        self.run("reading a tenant's events", move |s| async move {
            query(
                &s,
                "reading a tenant's events",
                SQL_READ_TENANT,
                vec![Box::new(t), Box::new(after), Box::new(limit)],
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_clamp_to_bigint() {
        assert_eq!(bounds(0, 0), None);
        assert_eq!(bounds(u64::MAX, 10), None);
        assert_eq!(bounds(5, usize::MAX), Some((5, i64::MAX)));
    }
}
