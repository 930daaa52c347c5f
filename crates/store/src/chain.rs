//! The per-tenant hash chain.
//!
//! Every tenant's events form a SHA-256 chain: each record's hash commits to
//! its predecessor's hash, its tenant, its sequence number and its payload
//! ([`link`]). Backends compute the link at append; [`verify_tenant`]
//! recomputes the whole chain from what is stored and names the first record
//! that does not match, so a changed, removed, reordered or inserted event is
//! reported, never missed. Cutting off the tail is caught by comparing the
//! last record with the tenant's head, which backends keep apart from the
//! records.
//!
//! What a chain without an outside anchor cannot catch: someone who rewrites
//! every record after a change *and* the tenant head. Publishing
//! [`ChainReport::head_hash`] elsewhere (a ticket, a second system) closes
//! that gap.

use sha2::{Digest, Sha256};

use keyledger_core::TenantId;
use keyledger_core::limits::TENANT_ID_BYTES_MAX;

use crate::{EventLog, RawRecord, StoreError, envelope};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The predecessor hash of every tenant's first event.
pub const GENESIS: Hash = [0; 32];

/// The domain separator at the start of every hashed link.
pub const DOMAIN: &[u8] = b"keyledger.chain.v1\0";

/// Records [`verify_tenant`] reads per call to the log.
pub const VERIFY_PAGE_EVENTS_MAX: usize = 10_000;

// The tenant's length is hashed as a u16.
const _: () = assert!(TENANT_ID_BYTES_MAX <= u16::MAX as usize);

/// The chain hash of one record:
/// `SHA-256(DOMAIN || prev || seq (u64 BE) || len(tenant) (u16 BE) || tenant || payload)`.
///
/// A tenant longer than `u16::MAX` bytes (never a valid [`TenantId`]) has
/// its length hashed as `u16::MAX`.
pub fn link(prev: &Hash, tenant: &str, seq: u64, payload: &[u8]) -> Hash {
    let tenant_len = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(tenant_len.to_be_bytes());
    h.update(tenant.as_bytes());
    h.update(payload);
    h.finalize().into()
}

/// Decodes a stored payload as chain verification does: it must decode,
/// and be exactly the encoding its version writes for the event it decodes
/// to (`envelope::encode_as`). postcard accepts overlong
/// varints (found by the `envelope_decode` fuzz target), so without this
/// several byte strings would pass for one event; replay still reads them
/// (the event is the same), verification reports them.
pub fn canonical_event(
    tenant: &TenantId,
    payload: &[u8],
) -> Result<keyledger_core::Event, envelope::DecodeError> {
    let event = envelope::decode(tenant, payload)?;
    let version = payload.first().copied().unwrap_or_default();
    if envelope::encode_as(&event, version).as_deref() != Some(payload) {
        return Err(envelope::DecodeError::Malformed {
            version,
            message: "not the canonical encoding of its event (an overlong number)".into(),
        });
    }
    Ok(event)
}

/// The outcome of checking one tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// Whether every record and the head matched.
    pub ok: bool,
    /// Records checked and found good (those before the first bad one).
    pub events: u64,
    /// The hash of the last good record ([`GENESIS`] for none).
    pub head_hash: Hash,
    /// The first problem, if any.
    pub first_bad: Option<ChainProblem>,
}

/// The first place a chain does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainProblem {
    /// The global log position of the record that does not match; 0 when
    /// there is no record to name (the tail was cut off).
    pub position: u64,
    /// The tenant sequence number expected there.
    pub seq: u64,
    /// What is wrong, for a human. Names the tenant's sequence numbers,
    /// never a global log position, so it may be shown to the tenant.
    pub problem: String,
    /// What the log reported about a record it cannot read, for the
    /// operator: it may name global log positions.
    pub detail: Option<String>,
}

/// Recomputes a tenant's chain from the stored records and checks it
/// against the tenant's head. See [`verify_tenant_with_progress`].
pub fn verify_tenant(log: &dyn EventLog, tenant: &TenantId) -> Result<ChainReport, StoreError> {
    verify_tenant_with_progress(log, tenant, &mut |_| {})
}

/// Like [`verify_tenant`], calling `progress` with the number of records
/// checked so far after every page.
///
/// For each record, in tenant order: the stored tenant is `tenant`; the
/// sequence number is the next one (1, 2, 3, …); the predecessor hash is the
/// previous record's hash; the hash is [`link`] recomputed; the payload
/// decodes. Then the tenant head must name the last record. Stops at the
/// first problem. A record the log cannot even read back is reported as a
/// problem too; only a backend failure is an `Err`.
pub fn verify_tenant_with_progress(
    log: &dyn EventLog,
    tenant: &TenantId,
    progress: &mut dyn FnMut(u64),
) -> Result<ChainReport, StoreError> {
    verify_tenant_seeing(log, tenant, progress, &mut |_| {})
}

/// Like [`verify_tenant_with_progress`], handing `seen` every page of
/// stored records the walk reads, in order, each record once (the page
/// the first problem is found in whole), so a caller that needs the
/// records too (`keyledger audit verify` rebuilds the tenant's tree from
/// them) does not read them a second time.
pub fn verify_tenant_seeing(
    log: &dyn EventLog,
    tenant: &TenantId,
    progress: &mut dyn FnMut(u64),
    seen: &mut dyn FnMut(&[RawRecord]),
) -> Result<ChainReport, StoreError> {
    let mut state = Walk {
        expected_seq: 1,
        prev: GENESIS,
        checked: 0,
        last_position: 0,
    };
    // The log is live: events may be appended while the walk runs. The
    // head is read after the walk, so a head ahead of the walk is first
    // taken as events to check too; only a head ahead of what the log
    // holds means events were removed.
    let head = loop {
        if let Some(problem) = walk_pages(log, tenant, &mut state, progress, seen)? {
            return Ok(state.report(Some(problem)));
        }
        let head = log.tenant_head(tenant)?;
        let behind = head.is_some_and(|(seq, _)| seq > state.checked);
        if behind
            && matches!(log.read_tenant_raw(tenant, state.checked, 1), Ok(more) if !more.is_empty())
        {
            continue;
        }
        break head;
    };
    let problem = state.head_problem(head);
    Ok(state.report(problem))
}

/// Walks the tenant's records from `state.checked` on, a page at a time,
/// until the log holds no more; hands each page read to `seen` and calls
/// `progress` after every page. The first problem found, if any.
fn walk_pages(
    log: &dyn EventLog,
    tenant: &TenantId,
    state: &mut Walk,
    progress: &mut dyn FnMut(u64),
    seen: &mut dyn FnMut(&[RawRecord]),
) -> Result<Option<ChainProblem>, StoreError> {
    loop {
        let page = match log.read_tenant_raw(tenant, state.checked, VERIFY_PAGE_EVENTS_MAX) {
            Ok(page) => page,
            Err(StoreError::Corrupt { .. }) => {
                // Some record of the page cannot be read: walk the page one
                // record at a time so the records before it are checked first
                // and the problem is named at its place.
                let before = state.checked;
                match walk_singly(log, tenant, state, seen)? {
                    Some(problem) => {
                        progress(state.checked);
                        return Ok(Some(problem));
                    }
                    None if state.checked == before => break,
                    None => continue,
                }
            }
            Err(e) => return Err(e),
        };
        if page.is_empty() {
            break;
        }
        seen(&page);
        for raw in &page {
            if let Some(problem) = state.check(tenant, raw) {
                progress(state.checked);
                return Ok(Some(problem));
            }
        }
        progress(state.checked);
        if page.len() < VERIFY_PAGE_EVENTS_MAX {
            break;
        }
    }
    Ok(None)
}

impl Walk {
    /// What is wrong with the tenant's head, `head`, once every record is
    /// checked: it must name the last record checked, and its hash.
    fn head_problem(&self, head: Option<(u64, Hash)>) -> Option<ChainProblem> {
        match head {
            None if self.checked == 0 => None,
            None => Some(ChainProblem {
                position: 0,
                seq: self.checked,
                problem: format!(
                    "the tenant has {} events but no head: the head record was removed",
                    self.checked
                ),
                detail: None,
            }),
            Some((seq, hash)) if seq == self.checked && hash == self.prev => None,
            Some((seq, _)) if seq > self.checked => Some(ChainProblem {
                position: 0,
                seq: self.checked + 1,
                problem: format!(
                    "the head names sequence number {seq} but the last event is {}: events were \
                     removed from the end",
                    self.checked
                ),
                detail: None,
            }),
            Some((seq, _)) if seq < self.checked => Some(ChainProblem {
                position: 0,
                seq: seq.saturating_add(1),
                problem: format!(
                    "the head names sequence number {seq} but events run to {}: events were \
                     appended behind the log's back",
                    self.checked
                ),
                detail: None,
            }),
            Some(_) => Some(ChainProblem {
                position: self.last_position,
                seq: self.checked,
                problem: "the head's hash does not match the last event: the head or the last \
                          event was changed"
                    .into(),
                detail: None,
            }),
        }
    }
}

/// The chain walk so far: everything up to `checked` is good.
struct Walk {
    expected_seq: u64,
    prev: Hash,
    checked: u64,
    last_position: u64,
}

impl Walk {
    fn report(&self, first_bad: Option<ChainProblem>) -> ChainReport {
        ChainReport {
            ok: first_bad.is_none(),
            events: self.checked,
            head_hash: self.prev,
            first_bad,
        }
    }

    /// Checks the next record; on success it becomes the last good one.
    fn check(&mut self, tenant: &TenantId, raw: &RawRecord) -> Option<ChainProblem> {
        let bad = |problem: String| {
            Some(ChainProblem {
                position: raw.position,
                seq: self.expected_seq,
                problem,
                detail: None,
            })
        };
        if raw.tenant != tenant.as_str() {
            return bad(format!(
                "the event belongs to tenant `{}`, not `{tenant}`: an event of another tenant was \
                 put in this chain",
                raw.tenant.escape_debug()
            ));
        }
        if raw.seq != self.expected_seq {
            let what = if raw.seq > self.expected_seq {
                "an event is missing or events were reordered"
            } else {
                "an event is inserted, repeated or events were reordered"
            };
            return bad(format!(
                "sequence number {} expected, {} found: {what}",
                self.expected_seq, raw.seq
            ));
        }
        if raw.prev_hash != self.prev {
            return bad(
                "link to predecessor broken: events were reordered, removed or inserted".into(),
            );
        }
        if link(&raw.prev_hash, &raw.tenant, raw.seq, &raw.payload) != raw.hash {
            return bad("hash does not match: the event was changed".into());
        }
        if let Err(e) = canonical_event(tenant, &raw.payload) {
            return bad(format!(
                "the hash matches but the event cannot be decoded ({e}): it was written by a \
                 newer release or by a faulty writer"
            ));
        }
        self.prev = raw.hash;
        self.last_position = raw.position;
        self.checked += 1;
        self.expected_seq += 1;
        None
    }
}

/// Reads and checks records one at a time until a page would hold a record
/// the log cannot read. Returns the problem, or `None` when the walk got
/// past the damage (the next page can be read normally again).
fn walk_singly(
    log: &dyn EventLog,
    tenant: &TenantId,
    state: &mut Walk,
    seen: &mut dyn FnMut(&[RawRecord]),
) -> Result<Option<ChainProblem>, StoreError> {
    for _ in 0..VERIFY_PAGE_EVENTS_MAX {
        match log.read_tenant_raw(tenant, state.checked, 1) {
            Ok(page) => match page.first() {
                None => return Ok(None),
                Some(raw) => {
                    seen(&page);
                    if let Some(problem) = state.check(tenant, raw) {
                        return Ok(Some(problem));
                    }
                }
            },
            Err(StoreError::Corrupt { position, message }) => {
                return Ok(Some(ChainProblem {
                    position,
                    seq: state.expected_seq,
                    problem: "the stored record cannot be read: it was changed".into(),
                    detail: Some(message),
                }));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_depends_on_every_input() {
        let base = link(&GENESIS, "acme", 1, b"x");
        assert_ne!(base, link(&[1; 32], "acme", 1, b"x"));
        assert_ne!(base, link(&GENESIS, "acmf", 1, b"x"));
        assert_ne!(base, link(&GENESIS, "acme", 2, b"x"));
        assert_ne!(base, link(&GENESIS, "acme", 1, b"y"));
        // The tenant's length is framed: moving a byte between tenant and
        // payload changes the hash.
        assert_ne!(link(&GENESIS, "ab", 1, b"c"), link(&GENESIS, "a", 1, b"bc"));
    }

    /// A live log: the writer appends one more event between the walk's
    /// last read and its reading of the head (the first `tenant_head`).
    struct AppendsDuringTheWalk {
        inner: crate::MemoryLog,
        pending: std::sync::Mutex<Option<crate::TenantAppend>>,
    }

    impl EventLog for AppendsDuringTheWalk {
        fn append(
            &self,
            batches: Vec<crate::TenantAppend>,
        ) -> Result<Vec<crate::Record>, StoreError> {
            self.inner.append(batches)
        }
        fn head(&self) -> Result<u64, StoreError> {
            self.inner.head()
        }
        fn read_after(&self, after: u64, limit: usize) -> Result<Vec<crate::Record>, StoreError> {
            self.inner.read_after(after, limit)
        }
        fn read_tenant(
            &self,
            tenant: &TenantId,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<crate::Record>, StoreError> {
            self.inner.read_tenant(tenant, after_seq, limit)
        }
        fn read_tenant_raw(
            &self,
            tenant: &TenantId,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<RawRecord>, StoreError> {
            self.inner.read_tenant_raw(tenant, after_seq, limit)
        }
        fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
            if let Some(batch) = self.pending.lock().unwrap().take() {
                self.inner.append(vec![batch])?;
            }
            self.inner.tenant_head(tenant)
        }
        fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
            self.inner.tenants()
        }
    }

    impl AppendsDuringTheWalk {
        /// Three events of `t`, and a fourth to come during the walk.
        fn new(t: &TenantId) -> Self {
            use crate::conformance::{batch, sample_events};
            let log = AppendsDuringTheWalk {
                inner: crate::MemoryLog::new(),
                pending: std::sync::Mutex::new(Some(batch(t, 3, sample_events(t, 4, 1)))),
            };
            log.inner
                .append(vec![batch(t, 0, sample_events(t, 1, 3))])
                .unwrap();
            log
        }
    }

    #[test]
    fn an_append_during_the_walk_is_checked_not_taken_for_a_removal() {
        use crate::conformance::tenant;
        let t = tenant("acme");
        let log = AppendsDuringTheWalk::new(&t);
        let report = verify_tenant(&log, &t).unwrap();
        assert!(report.ok, "{:?}", report.first_bad);
        assert_eq!(
            report.events, 4,
            "the event appended meanwhile is checked too"
        );
        assert_eq!(Some((4, report.head_hash)), log.tenant_head(&t).unwrap());
    }

    /// What the walk hands on, each record once and in order, whatever
    /// the walk finds: an event appended meanwhile, a changed event.
    #[test]
    fn the_walk_hands_on_each_record_it_reads_once() {
        use crate::conformance::{batch, sample_events, tenant};
        let t = tenant("acme");
        let seen_by = |log: &dyn EventLog| {
            let mut seen = Vec::new();
            let report = verify_tenant_seeing(log, &t, &mut |_| {}, &mut |page: &[RawRecord]| {
                seen.extend(page.iter().map(|r| r.seq));
            })
            .unwrap();
            (report, seen)
        };
        let log = AppendsDuringTheWalk::new(&t);
        let (report, seen) = seen_by(&log);
        assert!(report.ok, "{:?}", report.first_bad);
        assert_eq!(seen, [1, 2, 3, 4], "the event appended meanwhile once");

        let changed = crate::MemoryLog::new();
        changed
            .append(vec![batch(&t, 0, sample_events(&t, 1, 5))])
            .unwrap();
        changed.tamper(|records| records[1].payload.push(0));
        let (report, seen) = seen_by(&changed);
        assert_eq!(report.first_bad.map(|p| p.seq), Some(2));
        assert_eq!(seen, [1, 2, 3, 4, 5], "the page of the problem, whole");
    }

    #[test]
    fn link_is_the_documented_sha256() {
        let mut input = Vec::new();
        input.extend_from_slice(b"keyledger.chain.v1\0");
        input.extend_from_slice(&[7; 32]);
        input.extend_from_slice(&5u64.to_be_bytes());
        input.extend_from_slice(&4u16.to_be_bytes());
        input.extend_from_slice(b"acme");
        input.extend_from_slice(b"payload");
        let expected: Hash = Sha256::digest(&input).into();
        assert_eq!(link(&[7; 32], "acme", 5, b"payload"), expected);
    }
}
