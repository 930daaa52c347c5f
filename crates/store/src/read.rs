//! The read, checked and decoded once for every backend.
//!
//! A backend finds the stored records (the memory log's vectors, redb's
//! tables, PostgreSQL's rows) and hands each one, borrowed, to a
//! [`PositionPage`] (a read by global position) or a [`TenantPage`] (a read
//! of one tenant by sequence number). What is checked between what was
//! asked for and what is stored, the chain hash recomputed
//! ([`crate::decode_record`]) and the decode live here, and only here, as
//! the append's logic lives in [`crate::plan`]: the backends do only I/O.

use keyledger_core::TenantId;

use crate::chain::Hash;
use crate::{READ_PREALLOC_RECORDS_MAX, RawRecord, Record, StoreError, check_tenant_page};

/// One record as stored, borrowed from wherever the backend keeps it: what
/// an append asks a backend to store ([`crate::plan::AppendSink`]) and what
/// a read hands back to be checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordRef<'a> {
    /// Global position, as the record says.
    pub(crate) position: u64,
    /// The tenant, as the record says.
    pub(crate) tenant: &'a str,
    /// The tenant sequence number, as the record says.
    pub(crate) seq: u64,
    /// The predecessor's hash.
    pub(crate) prev_hash: Hash,
    /// This record's chain hash.
    pub(crate) hash: Hash,
    /// The encoded event.
    pub(crate) payload: &'a [u8],
}

impl RawRecord {
    /// This record, borrowed.
    pub(crate) fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            position: self.position,
            tenant: &self.tenant,
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash: self.hash,
            payload: &self.payload,
        }
    }
}

fn corrupt(position: u64, message: String) -> StoreError {
    StoreError::Corrupt { position, message }
}

/// A page read by global position after `after`: the positions must follow
/// on without a gap, each record must say the position it is stored under,
/// and each run of records of one tenant parses the tenant's name once.
pub(crate) struct PositionPage {
    expected: u64,
    tenant: Option<TenantId>,
    out: Vec<Record>,
}

impl PositionPage {
    /// An empty page after `after`, with room for up to `capacity` records
    /// (at most [`READ_PREALLOC_RECORDS_MAX`] up front).
    pub(crate) fn new(after: u64, capacity: usize) -> Self {
        PositionPage {
            expected: after.saturating_add(1),
            tenant: None,
            out: Vec::with_capacity(capacity.min(READ_PREALLOC_RECORDS_MAX)),
        }
    }

    /// The next record read: `key` is the position it was found under.
    pub(crate) fn push(&mut self, key: u64, r: RecordRef<'_>) -> Result<(), StoreError> {
        let expected = self.expected;
        if key != expected {
            return Err(corrupt(
                expected,
                format!("position {expected} is missing ({key} follows)"),
            ));
        }
        if r.position != key {
            return Err(corrupt(
                key,
                format!("the record stored here says position {}", r.position),
            ));
        }
        let t = match self.tenant.take() {
            Some(t) if t.as_str() == r.tenant => t,
            _ => r.tenant.parse().map_err(|e| {
                corrupt(
                    key,
                    format!("stored tenant `{}`: {e}", r.tenant.escape_debug()),
                )
            })?,
        };
        let record = crate::decode_record(key, r.seq, r.prev_hash, r.hash, &t, r.payload)?;
        self.out.push(record);
        self.tenant = Some(t);
        self.expected = expected.saturating_add(1);
        Ok(())
    }

    /// The records read.
    pub(crate) fn finish(self) -> Vec<Record> {
        self.out
    }
}

/// A page of one tenant's records after `after_seq`, in the order of the
/// tenant's index: each entry must name a stored record of this tenant
/// with the entry's position and sequence number, and the page must run on
/// without gaps, each record linked to the one before it
/// ([`check_tenant_page`]).
pub(crate) struct TenantPage<'t> {
    tenant: &'t TenantId,
    after_seq: u64,
    out: Vec<Record>,
}

impl<'t> TenantPage<'t> {
    /// An empty page of `tenant` after `after_seq`, with room for up to
    /// `capacity` records (at most [`READ_PREALLOC_RECORDS_MAX`] up front).
    pub(crate) fn new(tenant: &'t TenantId, after_seq: u64, capacity: usize) -> Self {
        TenantPage {
            tenant,
            after_seq,
            out: Vec::with_capacity(capacity.min(READ_PREALLOC_RECORDS_MAX)),
        }
    }

    /// The next index entry: event `seq` of the tenant at `position`, and
    /// the record stored there (`None` when the position holds nothing). A
    /// backend without an index passes the record's own numbers.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        position: u64,
        stored: Option<RecordRef<'_>>,
    ) -> Result<(), StoreError> {
        let tenant = self.tenant;
        let Some(r) = stored else {
            return Err(corrupt(
                position,
                format!(
                    "tenant {tenant}: the index names position {position} for event {seq}, \
                     which holds nothing"
                ),
            ));
        };
        let mismatch = if r.position != position {
            Some(format!("the record says position {}", r.position))
        } else if r.tenant != tenant.as_str() {
            Some(format!(
                "the record belongs to tenant `{}`",
                r.tenant.escape_debug()
            ))
        } else if r.seq != seq {
            Some(format!("the record says sequence number {}", r.seq))
        } else {
            None
        };
        if let Some(m) = mismatch {
            return Err(corrupt(
                position,
                format!("tenant {tenant} event {seq}: {m}"),
            ));
        }
        let record = crate::decode_record(position, seq, r.prev_hash, r.hash, tenant, r.payload)?;
        self.out.push(record);
        Ok(())
    }

    /// The records read, once the page is checked whole.
    pub(crate) fn finish(self) -> Result<Vec<Record>, StoreError> {
        check_tenant_page(self.tenant, self.after_seq, &self.out)?;
        Ok(self.out)
    }
}

/// A page of the records naming one key of a tenant after `after_seq`, in
/// the order of the per-key index: each entry must name a stored record of
/// this tenant with the entry's position and sequence number, whose chain
/// hash holds and whose event names the key; the sequence numbers must
/// rise. (Unlike a tenant page they have gaps, so no link is checked
/// between them: the chain is verified by [`crate::chain`].)
pub(crate) struct KeyPage<'t> {
    tenant: TenantPage<'t>,
    key: keyledger_core::KeyId,
    last_seq: u64,
}

impl<'t> KeyPage<'t> {
    /// An empty page of `key` in `tenant` after `after_seq`, with room for
    /// up to `capacity` records (at most [`READ_PREALLOC_RECORDS_MAX`]).
    pub(crate) fn new(
        tenant: &'t TenantId,
        key: keyledger_core::KeyId,
        after_seq: u64,
        capacity: usize,
    ) -> Self {
        KeyPage {
            tenant: TenantPage::new(tenant, after_seq, capacity),
            key,
            last_seq: after_seq,
        }
    }

    /// The next index entry: event `seq` of the tenant at `position`, and
    /// the record stored there (`None` when the position holds nothing).
    pub(crate) fn push(
        &mut self,
        seq: u64,
        position: u64,
        stored: Option<RecordRef<'_>>,
    ) -> Result<(), StoreError> {
        let (tenant, key) = (self.tenant.tenant, self.key);
        if seq <= self.last_seq {
            return Err(corrupt(
                position,
                format!(
                    "tenant {tenant}: the index of key {key} lists event {seq} after event {}",
                    self.last_seq
                ),
            ));
        }
        self.tenant.push(seq, position, stored)?;
        let named = self
            .tenant
            .out
            .last()
            .is_some_and(|r| keyledger_core::touched_keys(&r.event).any(|k| k == key));
        if !named {
            return Err(corrupt(
                position,
                format!(
                    "tenant {tenant} event {seq}: listed under key {key}, which it does not name"
                ),
            ));
        }
        self.last_seq = seq;
        Ok(())
    }

    /// The records read.
    pub(crate) fn finish(self) -> Vec<Record> {
        self.tenant.out
    }
}

/// The records naming any of some keys of a tenant up to a sequence
/// number ([`crate::EventLog::read_keys_until`]): the backend gathers the
/// index entries of every key (`entries`, by seq), then hands each entry's
/// stored record to [`KeysPage::push`] in seq order. Each must be the
/// record the entry names (as in a [`TenantPage`]) and name one of the
/// keys.
pub(crate) struct KeysPage<'t> {
    tenant: TenantPage<'t>,
    keys: &'t [keyledger_core::KeyId],
}

/// Index entries of several keys, merged: seq → position. Two keys'
/// entries for one seq must agree on the position.
pub(crate) fn merge_entry(
    entries: &mut std::collections::BTreeMap<u64, u64>,
    tenant: &TenantId,
    seq: u64,
    position: u64,
) -> Result<(), StoreError> {
    match entries.insert(seq, position) {
        Some(other) if other != position => Err(corrupt(
            position,
            format!(
                "tenant {tenant}: the key index names positions {other} and {position} for \
                 event {seq}"
            ),
        )),
        _ => Ok(()),
    }
}

impl<'t> KeysPage<'t> {
    /// An empty page of `keys` of `tenant`.
    pub(crate) fn new(tenant: &'t TenantId, keys: &'t [keyledger_core::KeyId]) -> Self {
        KeysPage {
            tenant: TenantPage::new(tenant, 0, keys.len().saturating_mul(64)),
            keys,
        }
    }

    /// The record stored for the entry (seq, position), in seq order.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        position: u64,
        stored: Option<RecordRef<'_>>,
    ) -> Result<(), StoreError> {
        let tenant = self.tenant.tenant;
        self.tenant.push(seq, position, stored)?;
        let named = self.tenant.out.last().is_some_and(|r| {
            keyledger_core::touched_keys(&r.event).any(|k| self.keys.contains(&k))
        });
        if !named {
            return Err(corrupt(
                position,
                format!("tenant {tenant} event {seq}: listed under a key it does not name"),
            ));
        }
        Ok(())
    }

    /// The records read.
    pub(crate) fn finish(self) -> Vec<Record> {
        self.tenant.out
    }
}
