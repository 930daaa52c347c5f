//! Evidence bundles (`keyledger_audit::bundle`): built here from a
//! tenant's tree, its stored checkpoints and the log, and checked offline
//! with keyledger's own event format ([`verify_bundle`]).

use std::collections::BTreeSet;

use keyledger_audit::VerifyingKey;
use keyledger_audit::bundle::{
    BUNDLE_EVENTS_MAX, BUNDLE_FORMAT, BUNDLE_INCLUSION_PROOFS_MAX, Bundle, BundleEarlier,
    BundleHeader, BundleInclusion,
};
use keyledger_audit::proofs::{hex_hashes, parse_hash};
use keyledger_audit::verify::{BundleReport, EventFormat, EventLink};
use keyledger_core::{AuditReadKind, Principal, TenantId};
use keyledger_store::{RawRecord, Record, chain, envelope};
use serde_json::Value;

use crate::checkpoints::StoredCheckpoint;
use crate::signing_key::b64;
use crate::trees::proof_error;
use crate::views::AuditEntry;
use crate::witness::bundle_witnessed;
use crate::{BadRequest, Damage, Error, Keyledger};

impl Keyledger {
    /// Records the read, then builds the bundle of `from_seq..=to_seq`.
    pub async fn export_bundle(
        &self,
        principal: Principal,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Bundle, Error> {
        let tenant = principal.tenant.clone();
        self.check_bundle_range(&tenant, from_seq, to_seq)?;
        self.record_audit_read(principal, from_seq, to_seq, AuditReadKind::Bundle)
            .await?;
        self.bundle(&tenant, from_seq, to_seq)
    }

    /// Records the read, then writes the bundle of `from_seq..=to_seq` to
    /// `w` as JSON Lines, event by event (any range in bounded memory);
    /// returns its header and how many events were written.
    pub async fn export_bundle_to(
        &self,
        principal: Principal,
        from_seq: u64,
        to_seq: u64,
        w: impl std::io::Write,
    ) -> Result<(BundleHeader, u64), Error> {
        let tenant = principal.tenant.clone();
        self.check_bundle_range(&tenant, from_seq, to_seq)?;
        self.record_audit_read(principal, from_seq, to_seq, AuditReadKind::Bundle)
            .await?;
        let header = self.bundle_header_now(&tenant, from_seq, to_seq)?;
        let events = self.write_bundle(&tenant, &header, w)?;
        Ok((header, events))
    }

    /// Writes a bundle: `header` on the first line, then the events of its
    /// range read from the log a page at a time; returns how many.
    pub fn write_bundle(
        &self,
        tenant: &TenantId,
        header: &BundleHeader,
        mut w: impl std::io::Write,
    ) -> Result<u64, Error> {
        let io = |e: std::io::Error| Error::io("writing a bundle", e);
        serde_json::to_writer(&mut w, header).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
        let mut n = 0;
        self.for_each_bundle_event(tenant, header.from_seq, header.to_seq, |e| {
            serde_json::to_writer(&mut w, &e).map_err(|e| io(e.into()))?;
            w.write_all(b"\n").map_err(io)?;
            n += 1;
            Ok::<(), Error>(())
        })?;
        w.flush().map_err(io)?;
        Ok(n)
    }

    /// The header of a bundle of `from_seq..=to_seq` built now: its
    /// checkpoint signed now, its proofs (not recorded as a read).
    pub fn bundle_header_now(
        &self,
        tenant: &TenantId,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<BundleHeader, Error> {
        self.check_bundle_range(tenant, from_seq, to_seq)?;
        let stored = self.stored_checkpoints(tenant)?;
        let witnessed = self.witnessed_checkpoint(tenant)?;
        // One consistent view of the tree for every proof. Nothing inside
        // takes the trees' lock again (the epoch, the signature): std's
        // RwLock is not reentrant, and a second read waits behind a writer
        // that waits for the first, so the writer and this reader would
        // wait for each other for ever.
        let (size, root, mut header) = self.shared.audit.with_tree(tenant, |t| {
            self.bundle_header(t, from_seq, to_seq, &stored, witnessed.as_ref())
        })?;
        header.tenant = tenant.to_string();
        header.checkpoint = self.shared.audit.sign(tenant, size, root, self.now())?.note;
        Ok(header)
    }

    /// Checks that `from_seq..=to_seq` is a range a bundle can hold.
    pub fn check_bundle_range(
        &self,
        tenant: &TenantId,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<(), Error> {
        let size = self.tree_size(tenant);
        if from_seq == 0 || from_seq > to_seq || to_seq > size {
            return Err(BadRequest::BundleRange {
                from_seq,
                to_seq,
                events: size,
            }
            .into());
        }
        if to_seq - from_seq >= BUNDLE_EVENTS_MAX {
            return Err(BadRequest::BundleTooLong {
                max: BUNDLE_EVENTS_MAX,
            }
            .into());
        }
        Ok(())
    }

    /// The evidence bundle of events `from_seq..=to_seq` (not recorded as
    /// a read: see [`Keyledger::export_bundle`]).
    pub fn bundle(&self, tenant: &TenantId, from_seq: u64, to_seq: u64) -> Result<Bundle, Error> {
        let header = self.bundle_header_now(tenant, from_seq, to_seq)?;
        let mut events = Vec::with_capacity((to_seq - from_seq + 1) as usize);
        self.for_each_bundle_event(tenant, from_seq, to_seq, |e| {
            events.push(e);
            Ok::<(), Error>(())
        })?;
        Ok(Bundle { header, events })
    }

    /// A bundle's header but its tenant and checkpoint (the caller signs
    /// the size and root returned, outside the trees' lock): the range
    /// proof of `from_seq..=to_seq` in the tree `t`, its inclusion proofs,
    /// earlier checkpoints picked from `stored` and the `witnessed` one,
    /// with their consistency proofs.
    fn bundle_header(
        &self,
        t: &crate::tilestore::TiledTree,
        from_seq: u64,
        to_seq: u64,
        stored: &[StoredCheckpoint],
        witnessed: Option<&crate::WitnessedCheckpoint>,
    ) -> Result<(u64, keyledger_audit::Hash, BundleHeader), Error> {
        let size = t.len();
        let root = t.root(size).map_err(proof_error)?;
        let range = t
            .range_proof(from_seq - 1, to_seq, size)
            .map_err(proof_error)?;
        let seqs: Vec<u64> = if to_seq - from_seq < BUNDLE_INCLUSION_PROOFS_MAX {
            (from_seq..=to_seq).collect()
        } else {
            vec![from_seq, to_seq]
        };
        let mut inclusion = Vec::with_capacity(seqs.len());
        for seq in seqs {
            inclusion.push(BundleInclusion {
                seq,
                proof: hex_hashes(&t.inclusion_proof(seq - 1, size).map_err(proof_error)?),
            });
        }
        let mut earlier = Vec::new();
        for i in pick_earlier(stored, to_seq) {
            let c = &stored[i];
            let proof = if c.size <= size {
                t.consistency_proof(c.size, size).map_err(proof_error)?
            } else {
                Vec::new()
            };
            earlier.push(BundleEarlier {
                checkpoint: c.note.clone(),
                consistency_proof: hex_hashes(&proof),
            });
        }
        let witnessed = bundle_witnessed(witnessed, t, size)?;
        let header = BundleHeader {
            format: BUNDLE_FORMAT.into(),
            tenant: String::new(),
            from_seq,
            to_seq,
            checkpoint: String::new(),
            range_proof: hex_hashes(&range),
            inclusion_proofs: inclusion,
            earlier_checkpoints: earlier,
            witnessed,
        };
        Ok((size, root, header))
    }

    /// Each event of `from_seq..=to_seq` as a bundle holds it, read from
    /// the log a page at a time and handed to `f` in order.
    pub fn for_each_bundle_event<E: From<Error>>(
        &self,
        tenant: &TenantId,
        from_seq: u64,
        to_seq: u64,
        mut f: impl FnMut(Value) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut after = from_seq - 1;
        while after < to_seq {
            let want = usize::try_from(to_seq - after)
                .unwrap_or(usize::MAX)
                .min(4096);
            let page = self
                .shared
                .log
                .read_tenant_raw(tenant, after, want)
                .map_err(Error::from)?;
            if page.is_empty() {
                return Err(Error::inconsistent(format!(
                    "tenant {tenant}: event {} is in the tree but not in the log",
                    after + 1
                ))
                .into());
            }
            for raw in page {
                if raw.seq > to_seq {
                    break;
                }
                after = raw.seq;
                f(bundle_event(tenant, raw).map_err(E::from)?)?;
            }
        }
        Ok(())
    }
}

/// The stored checkpoints a bundle of events up to `to_seq` holds (their
/// indexes in `stored`, oldest first): the first that covers the range
/// (the range was committed by then), the latest one, and a log-spaced
/// sample of the history. A stored checkpoint larger than the tree (the
/// log was cut short) goes in too, with no proof: the verifier reports it.
fn pick_earlier(stored: &[StoredCheckpoint], to_seq: u64) -> BTreeSet<usize> {
    let mut picked: BTreeSet<usize> = BTreeSet::new();
    if let Some(i) = stored.iter().position(|c| c.size >= to_seq) {
        picked.insert(i);
    }
    if let Some(i) = stored.iter().rposition(|c| c.size > 0) {
        picked.insert(i);
    }
    // The sample: the first stored checkpoint at or above each power of
    // two (at most 64), so a rewrite after any of them shows even when
    // later checkpoints were signed over the rewritten log.
    let mut next = 1u64;
    for (i, c) in stored.iter().enumerate() {
        if c.size >= next {
            picked.insert(i);
            next = c
                .size
                .checked_add(1)
                .and_then(u64::checked_next_power_of_two)
                .unwrap_or(u64::MAX);
        }
    }
    picked
}

/// One event as a bundle holds it: its trail entry, without `position`,
/// with `payload`, the stored bytes (base64).
fn bundle_event(tenant: &TenantId, raw: RawRecord) -> Result<Value, Error> {
    let event = envelope::decode(tenant, &raw.payload).map_err(|source| Damage::Decode {
        tenant: tenant.clone(),
        seq: raw.seq,
        source,
    })?;
    let record = Record {
        position: raw.position,
        seq: raw.seq,
        prev_hash: raw.prev_hash,
        hash: raw.hash,
        event,
    };
    let mut value = serde_json::to_value(AuditEntry::from(&record))
        .map_err(|e| Error::inconsistent(e.to_string()))?;
    if let Value::Object(map) = &mut value {
        // `position` repeats `seq`, which the chain commits to: a bundle
        // names each event by `seq` alone.
        map.remove("position");
        map.insert("payload".into(), Value::String(b64(&raw.payload)));
    }
    Ok(value)
}

/// keyledger's events as a bundle holds them: trail entries with their
/// stored payload, chained by `keyledger_store::chain`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LedgerEvents;

impl EventFormat for LedgerEvents {
    type Tenant = TenantId;
    const GENESIS: keyledger_audit::Hash = chain::GENESIS;

    fn tenant(&self, tenant: &str) -> Result<TenantId, String> {
        tenant
            .parse()
            .map_err(|e: keyledger_core::IdError| e.to_string())
    }

    fn read_event(
        &self,
        tenant: &TenantId,
        line: usize,
        value: &Value,
    ) -> Result<(EventLink, Option<String>), String> {
        read_event(tenant, line, value)
    }
}

/// Checks a bundle with nothing but the public key: every signature, the
/// range, inclusion and consistency proofs, and every event recomputed from
/// its stored bytes. Never panics on any input; reports every problem.
pub fn verify_bundle(bytes: &[u8], key: &VerifyingKey) -> BundleReport {
    verify_bundle_with(bytes, key, &[])
}

/// [`verify_bundle`], and also checks the bundle against checkpoints the
/// reviewer kept from earlier (signed notes, e.g. from
/// `GET /v1/audit/checkpoint`): each must be signed by the key and be a
/// prefix of the bundle's tree (`keyledger_audit::verify_bundle_with`).
pub fn verify_bundle_with(bytes: &[u8], key: &VerifyingKey, held: &[String]) -> BundleReport {
    keyledger_audit::verify_bundle_with(bytes, key, held, &LedgerEvents)
}

/// The line 0.1.0 wrote for a version-1 `AuditRead` payload, whose
/// `details` were `{from_seq, to_seq, what}`: `expected` (the line this
/// release writes) with those details. `None` for any other event.
fn legacy_view(payload: &[u8], event: &keyledger_core::Event, expected: &Value) -> Option<Value> {
    let keyledger_core::EventKind::AuditRead(r) = &event.kind else {
        return None;
    };
    if payload.first() != Some(&1) {
        return None;
    }
    let (from_seq, to_seq) = r.span();
    let mut legacy = expected.clone();
    legacy.as_object_mut()?.insert(
        "details".into(),
        serde_json::json!({ "from_seq": from_seq, "to_seq": to_seq, "what": r.what.as_str() }),
    );
    Some(legacy)
}

/// Reads one bundle event: recomputes its chain hash from the stored bytes
/// and compares its readable fields with the decoded bytes. Returns the
/// event and, if it was modified, what is wrong.
fn read_event(
    tenant: &TenantId,
    line: usize,
    value: &Value,
) -> Result<(EventLink, Option<String>), String> {
    use base64::Engine as _;
    let obj = value.as_object().ok_or("not an object")?;
    let num = |k: &str| {
        obj.get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("no `{k}`"))
    };
    let hash_of = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .and_then(parse_hash)
            .ok_or(format!("no `{k}` hash"))
    };
    let seq = num("seq")?;
    let prev = hash_of("prev_hash")?;
    let hash = hash_of("hash")?;
    let payload = obj
        .get("payload")
        .and_then(Value::as_str)
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .ok_or("no base64 `payload`")?;
    let event = EventLink {
        line,
        seq,
        prev,
        recomputed: chain::link(&prev, tenant.as_str(), seq, &payload),
    };
    let rehashed = (event.recomputed != hash).then(|| {
        format!(
            "event {seq} (line {line}) was modified: its stored bytes do not hash to its recorded hash"
        )
    });
    // The first thing wrong is reported: the hash, else the readable form.
    let unreadable = readable_mismatch(tenant, value, &event, hash, &payload)?;
    Ok((event, rehashed.or(unreadable)))
}

/// What is wrong with an event's readable fields, if anything: its stored
/// bytes do not decode, or fields differ from the trail entry they decode
/// to (`hash` is the hash the line records).
fn readable_mismatch(
    tenant: &TenantId,
    value: &Value,
    event: &EventLink,
    hash: keyledger_audit::Hash,
    payload: &[u8],
) -> Result<Option<String>, String> {
    let (seq, line) = (event.seq, event.line);
    let decoded = match envelope::decode(tenant, payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            return Ok(Some(format!(
                "event {seq} (line {line}) was modified: its stored bytes do not decode ({e})"
            )));
        }
    };
    let record = Record {
        position: 0, // not in a bundle (removed below)
        seq,
        prev_hash: event.prev,
        hash,
        event: decoded,
    };
    let mut expected =
        serde_json::to_value(AuditEntry::from(&record)).map_err(|e| e.to_string())?;
    if let Value::Object(m) = &mut expected {
        m.remove("position");
        m.insert(
            "payload".into(),
            value.get("payload").cloned().unwrap_or(Value::Null),
        );
    }
    // A bundle written by 0.1.0 shows a version-1 `AuditRead` as
    // that release did: `{from_seq, to_seq, what}` (docs/events.md).
    let legacy = legacy_view(payload, &record.event, &expected);
    if &expected == value || legacy.as_ref() == Some(value) {
        return Ok(None);
    }
    let fields: Vec<&str> = expected
        .as_object()
        .map(|e| {
            e.iter()
                .filter(|(k, v)| value.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(format!(
        "event {seq} (line {line}) was modified: {} from its signed bytes",
        match fields.as_slice() {
            [] => "extra fields differ".to_owned(),
            [one] => format!("{one} differs"),
            many => format!("{} differ", many.join(", ")),
        }
    )))
}
