//! The append, planned once for every backend.
//!
//! An append checks each batch's tenant against its `expected_version`,
//! numbers the records (global position, tenant sequence number), links
//! each one into its tenant's hash chain ([`crate::chain::link`]) and works
//! out the new tenant heads. That logic lives here, and only here; a
//! backend supplies the I/O through [`AppendSink`]: reading a tenant's
//! checked head and writing (or staging) one record. The backend then
//! writes the heads [`Plan::heads`] names and commits in its own way (the
//! memory log's vectors, redb's transaction and write-ahead log frame,
//! PostgreSQL's statement under its advisory lock).

use keyledger_core::Event;

use crate::chain::{self, Hash};
use crate::read::RecordRef;
use crate::{Record, StoreError, TenantAppend, envelope};

/// Where an append put one record: (position, seq, prev_hash, hash).
pub(crate) type Link = (u64, u64, Hash, Hash);

/// Every event of an append, encoded ([`envelope`]) into one buffer,
/// outside any lock or transaction.
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Encoded {
    /// Encodes the events of `batches`, in order.
    pub(crate) fn new(batches: &[TenantAppend]) -> Encoded {
        let total: usize = batches.iter().map(|b| b.events.len()).sum();
        let mut bytes = Vec::with_capacity(total * 128);
        let mut ends = Vec::with_capacity(total);
        for event in batches.iter().flat_map(|b| &b.events) {
            envelope::encode_into(event, &mut bytes);
            ends.push(bytes.len());
        }
        Encoded { bytes, ends }
    }
}

/// The I/O an append plan needs from a backend.
pub(crate) trait AppendSink<'a> {
    /// The tenant's stored head (0 and [`chain::GENESIS`] without events),
    /// checked against its last stored record (the append side of "assert
    /// in pairs"). Asked once per tenant, before its first batch.
    fn head(&mut self, tenant: &str) -> Result<(u64, Hash), StoreError>;

    /// Stores or stages one record (and `event`, what it encodes, for the
    /// per-key index: [`keyledger_core::touched_keys`]), in order; an error
    /// stops the plan.
    fn record(&mut self, record: &RecordRef<'a>, event: &'a Event) -> Result<(), StoreError>;
}

/// A planned append: where each record went, and the tenants' new heads.
pub(crate) struct Plan<'a> {
    /// One link per event, in order.
    pub(crate) links: Vec<Link>,
    /// Each tenant's new (last seq, last hash), in first-seen order.
    pub(crate) heads: Vec<(&'a str, u64, Hash)>,
}

impl Plan<'_> {
    /// The position of the last record (the new log head).
    pub(crate) fn last_position(&self) -> Option<u64> {
        self.links.last().map(|l| l.0)
    }
}

/// Plans an append after `last_position`: for each batch, the tenant's head
/// (from `sink` on its first batch, from the plan on later ones) must be its
/// `expected_version`, else [`StoreError::Conflict`]; then each event gets
/// the next position and sequence number and its chain hash, and goes to
/// `sink`. The batches are checked already ([`crate::check_append`]).
pub(crate) fn plan<'a>(
    batches: &'a [TenantAppend],
    encoded: &'a Encoded,
    last_position: u64,
    sink: &mut impl AppendSink<'a>,
) -> Result<Plan<'a>, StoreError> {
    let mut position = last_position;
    let mut links: Vec<Link> = Vec::with_capacity(encoded.ends.len());
    let mut heads: Vec<(&str, u64, Hash)> = Vec::with_capacity(batches.len());
    let mut start = 0;
    let mut ends = encoded.ends.iter();
    for batch in batches {
        let tenant = batch.tenant.as_str();
        let (mut seq, mut prev) = match heads.iter().find(|(t, ..)| *t == tenant) {
            Some(&(_, seq, hash)) => (seq, hash),
            None => sink.head(tenant)?,
        };
        if seq != batch.expected_version {
            return Err(StoreError::Conflict {
                tenant: batch.tenant.clone(),
                expected: batch.expected_version,
                actual: seq,
            });
        }
        for event in &batch.events {
            let end = ends.next().copied().unwrap_or(start);
            let payload = encoded.bytes.get(start..end).unwrap_or_default();
            start = end;
            seq += 1;
            position += 1;
            let hash = chain::link(&prev, tenant, seq, payload);
            sink.record(
                &RecordRef {
                    position,
                    tenant,
                    seq,
                    prev_hash: prev,
                    hash,
                    payload,
                },
                event,
            )?;
            links.push((position, seq, prev, hash));
            prev = hash;
        }
        match heads.iter_mut().find(|(t, ..)| *t == tenant) {
            Some(h) => *h = (tenant, seq, prev),
            None => heads.push((tenant, seq, prev)),
        }
    }
    Ok(Plan { links, heads })
}

/// The records an append returns: its links zipped with its events.
pub(crate) fn records(links: Vec<Link>, events: impl Iterator<Item = Event>) -> Vec<Record> {
    links
        .into_iter()
        .zip(events)
        .map(|((position, seq, prev_hash, hash), event)| Record {
            position,
            seq,
            prev_hash,
            hash,
            event,
        })
        .collect()
}
