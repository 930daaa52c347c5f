//! The offline bundle verifier: checks an evidence bundle
//! ([`crate::bundle`]) with nothing but the public key, and optionally
//! against checkpoints the reviewer kept. Never panics on any input;
//! reports every problem it finds ([`BundleReport`]).
//!
//! The events' own format (how a stored payload decodes, how its chain
//! hash is computed, what its readable fields must say) is not this
//! crate's: the caller passes it as an [`EventFormat`]
//! (keyledger's is `keyledger_runtime::audit::verify_bundle`'s).

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::bundle::{BUNDLE_FORMAT, BundleEarlier, BundleHeader, HeaderError, read_jsonl};
use crate::checkpoint::{self, Checkpoint};
use crate::cosignature::Policy;
use crate::merkle::{self, Hash};
use crate::origin::epoch_of_origin;
use crate::proofs::parse_hashes;

/// The kind of a problem a bundle check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The bundle is not well formed.
    Malformed,
    /// An event differs from what was signed.
    Modified,
    /// An event of the range is not in the bundle.
    Missing,
    /// Events are out of order.
    Reordered,
    /// An event is in the bundle that the log does not hold there.
    Inserted,
    /// A checkpoint's signature does not verify with the given key.
    BadSignature,
    /// Two checkpoints cannot both be heads of one append-only log.
    InconsistentCheckpoints,
    /// A Merkle proof does not verify.
    ProofFailed,
    /// A checkpoint the reviewer holds cannot be checked with this bundle.
    Unverifiable,
    /// The witness policy is not met: no checkpoint covering the range is
    /// cosigned by enough of the trusted witnesses.
    Unwitnessed,
}

impl ProblemKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "malformed",
            ProblemKind::Modified => "modified",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::BadSignature => "bad_signature",
            ProblemKind::InconsistentCheckpoints => "inconsistent_checkpoints",
            ProblemKind::ProofFailed => "proof_failed",
            ProblemKind::Unverifiable => "unverifiable",
            ProblemKind::Unwitnessed => "unwitnessed",
        }
    }
}

/// One problem found in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Where and what, for a human.
    pub message: String,
}

/// The outcome of [`verify_bundle_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// The bundle's tenant.
    pub tenant: String,
    /// First sequence number of the range.
    pub from_seq: u64,
    /// Last sequence number of the range.
    pub to_seq: u64,
    /// The size of the bundle's checkpoint.
    pub tree_size: u64,
    /// Events read from the bundle.
    pub events: u64,
    /// Checkpoint signatures that verified.
    pub signatures_ok: u64,
    /// Inclusion proofs that verified.
    pub inclusion_proofs_ok: u64,
    /// Consistency proofs that verified.
    pub consistency_proofs_ok: u64,
    /// Everything that does not hold.
    pub problems: Vec<Problem>,
}

impl BundleReport {
    /// Whether everything holds.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, kind: ProblemKind, message: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            message: message.into(),
        });
    }

    /// One line: what was checked and whether it holds.
    pub fn summary(&self) -> String {
        format!(
            "{}: tenant {}, events {}..={} ({} read), tree size {}, {} signature(s), {} inclusion \
             and {} consistency proof(s) verified; {} problem(s)",
            if self.ok() { "VALID" } else { "INVALID" },
            self.tenant,
            self.from_seq,
            self.to_seq,
            self.events,
            self.tree_size,
            self.signatures_ok,
            self.inclusion_proofs_ok,
            self.consistency_proofs_ok,
            self.problems.len()
        )
    }
}

/// One event of a bundle as read back: what the checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLink {
    /// The bundle line it was read from (from 1).
    pub line: usize,
    /// Its tenant sequence number.
    pub seq: u64,
    /// The predecessor hash it names.
    pub prev: Hash,
    /// Its chain hash, recomputed from its stored bytes: its leaf entry.
    pub recomputed: Hash,
}

/// The events' format, which the verifier does not know: how a tenant id
/// is checked and how one event line is read.
pub trait EventFormat {
    /// A checked tenant id.
    type Tenant;
    /// The predecessor hash of a tenant's first event.
    const GENESIS: Hash;

    /// Checks the bundle's tenant id; the error is shown after `tenant: `.
    fn tenant(&self, tenant: &str) -> Result<Self::Tenant, String>;

    /// Reads the event on bundle line `line`: recomputes its chain hash
    /// from its stored bytes and compares its readable fields with them.
    /// Returns the event and, if it was modified, what is wrong; an error
    /// for a line that is not an event at all.
    fn read_event(
        &self,
        tenant: &Self::Tenant,
        line: usize,
        value: &Value,
    ) -> Result<(EventLink, Option<String>), String>;
}

/// Checks a bundle with nothing but the public key and the events' format
/// (the numbered steps below), and also against checkpoints the reviewer
/// kept from earlier (signed notes, e.g. from `GET /v1/audit/checkpoint`):
/// each must be signed by the key and be a prefix of the bundle's tree.
/// This is what catches an operator who rewrote the log and its stored
/// checkpoints after the reviewer's checkpoint left the server.
pub fn verify_bundle_with<F: EventFormat>(
    bytes: &[u8],
    key: &VerifyingKey,
    held: &[String],
    format: &F,
) -> BundleReport {
    verify_bundle_witnessed(bytes, key, held, None, format)
}

/// [`verify_bundle_with`], and with a witness `policy`: the bundle's
/// `witnessed` checkpoint must be signed by the key, consistent with the
/// bundle's checkpoint, cover the whole range (size ≥ `to_seq`) and be
/// cosigned by at least `policy.quorum` of its witnesses
/// (**unwitnessed** otherwise). Without a policy a `witnessed` checkpoint
/// is checked as an earlier one (signature and consistency).
pub fn verify_bundle_witnessed<F: EventFormat>(
    bytes: &[u8],
    key: &VerifyingKey,
    held: &[String],
    policy: Option<&Policy>,
    format: &F,
) -> BundleReport {
    let mut cursor = std::io::Cursor::new(bytes);
    match stream_pass(&mut cursor, key, held, policy, format) {
        Ok(Streamed::Done(report)) => report,
        // Reading a slice cannot fail; a bundle out of order is diagnosed whole.
        Ok(Streamed::OutOfOrder) | Err(_) => verify_in_memory(bytes, key, held, policy, format),
    }
}

/// [`verify_bundle_witnessed`] on a bundle file, in bounded memory: the
/// events are read one line at a time and never held together; what is
/// kept is O(log n) subtree roots for the range proof, the leaves of the
/// events the header has inclusion proofs for, and the problems found.
/// A bundle whose events are not exactly its range in order (missing,
/// reordered, inserted or unreadable lines: it fails anyway) is read again
/// whole to name every such problem.
pub fn verify_bundle_reader<R, F>(
    mut reader: R,
    key: &VerifyingKey,
    held: &[String],
    policy: Option<&Policy>,
    format: &F,
) -> std::io::Result<BundleReport>
where
    R: std::io::BufRead + std::io::Seek,
    F: EventFormat,
{
    match stream_pass(&mut reader, key, held, policy, format)? {
        Streamed::Done(report) => Ok(report),
        Streamed::OutOfOrder => {
            reader.seek(std::io::SeekFrom::Start(0))?;
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            Ok(verify_in_memory(&bytes, key, held, policy, format))
        }
    }
}

/// The whole bundle in memory: names every missing, reordered and
/// inserted event.
fn verify_in_memory<F: EventFormat>(
    bytes: &[u8],
    key: &VerifyingKey,
    held: &[String],
    policy: Option<&Policy>,
    format: &F,
) -> BundleReport {
    let mut report = BundleReport::default();
    let Some((bundle, lines)) = read_lines(bytes, &mut report) else {
        return report;
    };
    let Some(tenant) = check_header(&bundle, format, &mut report) else {
        return report;
    };
    // 1. The checkpoint: signed by the key, for this tenant.
    let head = check_checkpoint(&bundle, key, &mut report);
    report.tree_size = head.as_ref().map_or(0, |c| c.size);
    // 2. Every event: recomputed from its bytes, compared with its readable form.
    let read = read_events(format, &tenant, lines, &mut report);
    // 3. Order, gaps, extras.
    let mut events = check_order(&bundle, read, &mut report);
    if !check_complete(&bundle, &mut events, &mut report) {
        return report;
    }
    // 4. Links between consecutive events (in sequence order).
    check_links(&bundle, &events, &F::GENESIS, &mut report);
    let Some(head) = head else {
        return report;
    };
    // 5. The range proof: every leaf of the range against the signed root.
    let authenticated = check_range_proof(&bundle, &head, &events, &mut report);
    let signed = Signed {
        bundle: &bundle,
        head: &head,
        key,
        authenticated: authenticated.as_ref().map(Authenticated::Leaves),
    };
    check_proofs_and_checkpoints(&signed, |seq| events.leaf(seq), held, policy, &mut report);
    report
}

/// Steps 6 to 8, after the range proof: inclusion proofs (the leaves from
/// `leaf_of`), earlier checkpoints, the witnessed one under `policy`, and
/// the checkpoints the reviewer kept.
fn check_proofs_and_checkpoints(
    signed: &Signed<'_>,
    leaf_of: impl Fn(u64) -> Option<Hash>,
    held: &[String],
    policy: Option<&Policy>,
    report: &mut BundleReport,
) {
    let (bundle, head, key) = (signed.bundle, signed.head, signed.key);
    // 6. Inclusion proofs.
    check_inclusion_proofs(bundle, head, leaf_of, report);
    // 7. Earlier checkpoints: signed, and consistent with the head.
    for (i, earlier) in bundle.earlier_checkpoints.iter().enumerate() {
        check_earlier(i + 1, earlier, &bundle.tenant, head, key, report);
    }
    // 7b. The witnessed checkpoint, and the witness policy.
    check_witnessed(bundle, head, key, policy, report);
    // 8. Checkpoints the reviewer kept: signed, and a prefix of this tree.
    for (i, note) in held.iter().enumerate() {
        check_held(i + 1, note, signed, report);
    }
}

/// Step 5 failed: the range's leaves do not give the signed root.
fn range_proof_failed(bundle: &BundleHeader, head: &Checkpoint, report: &mut BundleReport) {
    report.problem(
        ProblemKind::ProofFailed,
        format!(
            "the events {}..={} do not hash to the signed root of {} events: events were changed, added or removed",
            bundle.from_seq, bundle.to_seq, head.size
        ),
    );
}

/// The header and every line that is JSON; a line that is not is reported
/// and the checks go on (its event is then missing).
fn read_lines(
    bytes: &[u8],
    report: &mut BundleReport,
) -> Option<(BundleHeader, Vec<(usize, Value)>)> {
    let lines = match read_jsonl(bytes) {
        Ok(lines) => lines,
        Err(HeaderError::Malformed(e)) => {
            report.problem(
                ProblemKind::Malformed,
                format!("line 1 is not a bundle header: {e}"),
            );
            return None;
        }
        Err(HeaderError::Empty) => {
            report.problem(ProblemKind::Malformed, "the bundle is empty");
            return None;
        }
    };
    let mut events = Vec::with_capacity(lines.events.len());
    for (line, parsed) in lines.events {
        report.events += 1;
        match parsed {
            Ok(v) => events.push((line, v)),
            Err(e) => report.problem(
                ProblemKind::Malformed,
                format!("line {line} is not a JSON event: {e}"),
            ),
        }
    }
    Some((lines.header, events))
}

/// The format, the tenant and the range: without them nothing else can be
/// checked.
fn check_header<F: EventFormat>(
    bundle: &BundleHeader,
    format: &F,
    report: &mut BundleReport,
) -> Option<F::Tenant> {
    report.tenant = bundle.tenant.clone();
    report.from_seq = bundle.from_seq;
    report.to_seq = bundle.to_seq;
    if bundle.format != BUNDLE_FORMAT {
        report.problem(
            ProblemKind::Malformed,
            format!("format `{}` is not `{BUNDLE_FORMAT}`", bundle.format),
        );
        return None;
    }
    let tenant = match format.tenant(&bundle.tenant) {
        Ok(t) => t,
        Err(e) => {
            report.problem(ProblemKind::Malformed, format!("tenant: {e}"));
            return None;
        }
    };
    if bundle.from_seq == 0 || bundle.from_seq > bundle.to_seq {
        report.problem(
            ProblemKind::Malformed,
            format!("the range {}..={} is empty", bundle.from_seq, bundle.to_seq),
        );
        return None;
    }
    Some(tenant)
}

/// Step 1: the bundle's checkpoint, if it is signed by the key, names one
/// of the tenant's origins and covers the range.
fn check_checkpoint(
    bundle: &BundleHeader,
    key: &VerifyingKey,
    report: &mut BundleReport,
) -> Option<Checkpoint> {
    let head = match checkpoint::open(&bundle.checkpoint, key) {
        Ok(c) => {
            report.signatures_ok += 1;
            c
        }
        Err(e) => {
            report.problem(
                ProblemKind::BadSignature,
                format!("the bundle's checkpoint is not signed by the given key: {e}"),
            );
            return None;
        }
    };
    if epoch_of_origin(&bundle.tenant, &head.origin).is_none() {
        report.problem(
            ProblemKind::Malformed,
            format!(
                "the checkpoint is for `{}`, not `<origin>/{}` (or one of its later epochs)",
                head.origin, bundle.tenant
            ),
        );
        None
    } else if head.size < bundle.to_seq {
        report.problem(
            ProblemKind::Malformed,
            format!(
                "the checkpoint's tree of {} events does not cover event {}",
                head.size, bundle.to_seq
            ),
        );
        None
    } else {
        Some(head)
    }
}

/// Step 2: every event line read by the format.
fn read_events<F: EventFormat>(
    format: &F,
    tenant: &F::Tenant,
    lines: Vec<(usize, Value)>,
    report: &mut BundleReport,
) -> Vec<EventLink> {
    let mut read = Vec::with_capacity(lines.len());
    for (line, value) in &lines {
        match format.read_event(tenant, *line, value) {
            Ok((ev, modified)) => {
                if let Some(m) = modified {
                    report.problem(ProblemKind::Modified, m);
                }
                read.push(ev);
            }
            Err(m) => report.problem(ProblemKind::Malformed, format!("line {line}: {m}")),
        }
    }
    read
}

/// The events read, indexed by sequence number.
struct Events {
    read: Vec<EventLink>,
    /// Sequence number → index in `read`, for the events of the range
    /// (the first of each sequence number).
    by_seq: HashMap<u64, usize>,
    /// Whether every event of the range is there.
    complete: bool,
}

impl Events {
    fn get(&self, seq: u64) -> Option<&EventLink> {
        self.by_seq.get(&seq).map(|&i| &self.read[i])
    }

    /// The Merkle leaf of event `seq`, if the bundle holds it.
    fn leaf(&self, seq: u64) -> Option<Hash> {
        self.get(seq).map(|e| merkle::leaf_hash(&e.recomputed))
    }
}

/// Step 3, first half: events outside the range, repeated or out of order.
fn check_order(bundle: &BundleHeader, read: Vec<EventLink>, report: &mut BundleReport) -> Events {
    let mut by_seq: HashMap<u64, usize> = HashMap::new();
    let mut last_seq = 0u64;
    for (i, ev) in read.iter().enumerate() {
        if ev.seq < bundle.from_seq || ev.seq > bundle.to_seq {
            report.problem(
                ProblemKind::Inserted,
                format!(
                    "line {}: an event with sequence number {}, outside the range {}..={}: inserted",
                    ev.line, ev.seq, bundle.from_seq, bundle.to_seq
                ),
            );
            continue;
        }
        if by_seq.insert(ev.seq, i).is_some() {
            report.problem(
                ProblemKind::Inserted,
                format!(
                    "line {}: a second event with sequence number {}: inserted",
                    ev.line, ev.seq
                ),
            );
            continue;
        }
        if ev.seq < last_seq {
            report.problem(
                ProblemKind::Reordered,
                format!(
                    "line {}: event {} comes after event {}: reordered",
                    ev.line, ev.seq, last_seq
                ),
            );
        }
        last_seq = last_seq.max(ev.seq);
    }
    Events {
        read,
        by_seq,
        complete: true,
    }
}

/// Step 3, second half: every event of the range missing. Returns `false`
/// when there were too many problems to go on listing.
fn check_complete(bundle: &BundleHeader, events: &mut Events, report: &mut BundleReport) -> bool {
    for seq in bundle.from_seq..=bundle.to_seq {
        if !events.by_seq.contains_key(&seq) {
            events.complete = false;
            report.problem(
                ProblemKind::Missing,
                format!("event with sequence number {seq} is missing"),
            );
            if report.problems.len() > 1000 {
                report.problem(ProblemKind::Missing, "too many problems; stopped listing");
                return false;
            }
        }
    }
    true
}

/// Step 4: each event links to the one before it, and event 1 to `genesis`.
fn check_links(bundle: &BundleHeader, events: &Events, genesis: &Hash, report: &mut BundleReport) {
    // (Saturating: a range may end at u64::MAX.)
    for seq in bundle.from_seq.saturating_add(1)..=bundle.to_seq {
        if let (Some(a), Some(b)) = (events.get(seq - 1), events.get(seq))
            && b.prev != a.recomputed
        {
            report.problem(
                ProblemKind::Modified,
                format!("event {seq} does not link to event {}: one of them was replaced or an event was inserted between them", seq - 1),
            );
        }
    }
    if bundle.from_seq == 1
        && let Some(first) = events.get(1)
        && first.prev != *genesis
    {
        report.problem(ProblemKind::Modified, "event 1 does not start the chain");
    }
}

/// Step 5: the range proof. When it holds, the leaves and the proof are
/// authenticated by the signed root and returned (kept for the held
/// checkpoints, step 8).
fn check_range_proof(
    bundle: &BundleHeader,
    head: &Checkpoint,
    events: &Events,
    report: &mut BundleReport,
) -> Option<(Vec<Hash>, Vec<Hash>)> {
    if !events.complete {
        return None;
    }
    let leaves: Vec<Hash> = (bundle.from_seq..=bundle.to_seq)
        .filter_map(|seq| events.leaf(seq))
        .collect();
    let Some(proof) = parse_hashes(&bundle.range_proof) else {
        report.problem(ProblemKind::Malformed, "the range proof is not hex hashes");
        return None;
    };
    match merkle::root_from_range(bundle.from_seq - 1, head.size, &leaves, &proof) {
        Ok(root) if root == head.root => Some((leaves, proof)),
        _ => {
            range_proof_failed(bundle, head, report);
            None
        }
    }
}

/// Step 6: each inclusion proof, for an event the bundle holds.
fn check_inclusion_proofs(
    bundle: &BundleHeader,
    head: &Checkpoint,
    leaf_of: impl Fn(u64) -> Option<Hash>,
    report: &mut BundleReport,
) {
    for p in &bundle.inclusion_proofs {
        let Some(leaf) = leaf_of(p.seq) else {
            report.problem(
                ProblemKind::ProofFailed,
                format!(
                    "inclusion proof for event {} which the bundle does not hold",
                    p.seq
                ),
            );
            continue;
        };
        let ok = parse_hashes(&p.proof).is_some_and(|proof| {
            merkle::verify_inclusion(p.seq - 1, head.size, &leaf, &proof, &head.root).is_ok()
        });
        if ok {
            report.inclusion_proofs_ok += 1;
        } else {
            report.problem(
                ProblemKind::ProofFailed,
                format!(
                    "event {} is not included in the signed tree of {} events: it was changed",
                    p.seq, head.size
                ),
            );
        }
    }
}

/// Step 7: earlier checkpoint `n` of the bundle: signed, of the same
/// origin, and consistent with the head.
fn check_earlier(
    n: usize,
    e: &BundleEarlier,
    tenant: &str,
    head: &Checkpoint,
    key: &VerifyingKey,
    report: &mut BundleReport,
) {
    let earlier = match checkpoint::open(&e.checkpoint, key) {
        Ok(c) => {
            report.signatures_ok += 1;
            c
        }
        Err(err) => {
            report.problem(
                ProblemKind::BadSignature,
                format!("earlier checkpoint {n}: {err}"),
            );
            return;
        }
    };
    if !same_log(tenant, &earlier.origin, &head.origin) {
        report.problem(
            ProblemKind::Malformed,
            format!("earlier checkpoint {n} is for `{}`", earlier.origin),
        );
        return;
    }
    if earlier.size > head.size {
        report.problem(
            ProblemKind::InconsistentCheckpoints,
            format!(
                "an earlier checkpoint ({}) holds {} events, the bundle's checkpoint only {}: \
                 events were removed from the log",
                earlier.extension("time").unwrap_or("no time"),
                earlier.size,
                head.size
            ),
        );
        return;
    }
    let ok = parse_hashes(&e.consistency_proof).is_some_and(|proof| {
        merkle::verify_consistency(earlier.size, head.size, &earlier.root, &head.root, &proof)
            .is_ok()
    });
    if ok {
        report.consistency_proofs_ok += 1;
    } else {
        report.problem(
            ProblemKind::InconsistentCheckpoints,
            format!(
                "the checkpoint of {} events ({}) and the checkpoint of {} events ({}) are inconsistent: the log was rewritten between them",
                earlier.size,
                earlier.extension("time").unwrap_or("no time"),
                head.size,
                head.extension("time").unwrap_or("no time"),
            ),
        );
    }
}

/// What step 8 checks a held checkpoint against.
struct Signed<'a> {
    bundle: &'a BundleHeader,
    /// The bundle's checkpoint, checked in step 1.
    head: &'a Checkpoint,
    key: &'a VerifyingKey,
    /// The range's leaves (or the prefix roots they give), if step 5
    /// verified them.
    authenticated: Option<Authenticated<'a>>,
}

/// What step 5 authenticated, for the held checkpoints in the range.
#[derive(Clone, Copy)]
enum Authenticated<'a> {
    /// The range's leaves and its range proof.
    Leaves(&'a (Vec<Hash>, Vec<Hash>)),
    /// The roots of the prefixes of the held checkpoints' sizes, computed
    /// as the leaves streamed by.
    Prefixes(&'a HashMap<u64, Result<Hash, merkle::ProofError>>),
}

impl Authenticated<'_> {
    /// The root of the first `size` leaves of the tree, from the range
    /// starting at leaf `begin`.
    fn prefix_root(&self, begin: u64, size: u64) -> Result<Hash, merkle::ProofError> {
        match self {
            Authenticated::Leaves((leaves, proof)) => {
                merkle::prefix_root_from_range(begin, size, leaves, proof)
            }
            Authenticated::Prefixes(roots) => roots
                .get(&size)
                .cloned()
                .unwrap_or(Err(merkle::ProofError::WrongLength)),
        }
    }
}

/// Step 8: held checkpoint `n`: signed, of the head's origin, and a prefix
/// of the head's tree, as far as this bundle can tell.
fn check_held(n: usize, note: &str, signed: &Signed<'_>, report: &mut BundleReport) {
    let head = signed.head;
    let kept = match checkpoint::open(note, signed.key) {
        Ok(c) => {
            report.signatures_ok += 1;
            c
        }
        Err(err) => {
            report.problem(
                ProblemKind::BadSignature,
                format!("held checkpoint {n}: {err}"),
            );
            return;
        }
    };
    if !same_log(&signed.bundle.tenant, &kept.origin, &head.origin) {
        report.problem(
            ProblemKind::Malformed,
            format!(
                "held checkpoint {n} is for `{}`, not `{}`",
                kept.origin, head.origin
            ),
        );
        return;
    }
    let when = kept.extension("time").unwrap_or("no time");
    if kept.size > head.size && signed_later(&kept, head) {
        // Kept after this bundle was made: the bundle is only older.
        report.problem(
            ProblemKind::Unverifiable,
            format!(
                "held checkpoint {n} ({} events, {when}) is newer than the bundle's checkpoint \
                 ({} events, {}): export a newer bundle to check it",
                kept.size,
                head.size,
                head.extension("time").unwrap_or("no time"),
            ),
        );
        return;
    }
    match held_verdict(&kept, signed) {
        Some(Ok(())) => report.consistency_proofs_ok += 1,
        Some(Err(why)) => report.problem(
            ProblemKind::InconsistentCheckpoints,
            format!(
                "held checkpoint {n} ({} events, {when}) and the bundle's checkpoint ({} events, {}) disagree: {why}",
                kept.size,
                head.size,
                head.extension("time").unwrap_or("no time"),
            ),
        ),
        None => report.problem(
            ProblemKind::Unverifiable,
            format!(
                "held checkpoint {n} ({} events, {when}) cannot be checked against this bundle: {}",
                kept.size,
                if in_range(&kept, signed.bundle) {
                    "its events do not verify (see above)".to_owned()
                } else {
                    format!("export a bundle whose range holds event {}", kept.size)
                }
            ),
        ),
    }
}

/// Whether `kept` was signed after `head` (both carry the signer's `time`
/// extension, an RFC 3339 UTC time); false when either has none.
/// Whether two origins name one log of `tenant`: equal, or the same epoch
/// of the tenant under two base origins (the node's `--audit-origin`
/// changed, e.g. from the legacy `keyledger`; the tree is the same).
fn same_log(tenant: &str, a: &str, b: &str) -> bool {
    a == b || epoch_of_origin(tenant, a).is_some_and(|e| epoch_of_origin(tenant, b) == Some(e))
}

fn signed_later(kept: &Checkpoint, head: &Checkpoint) -> bool {
    // `2026-12-07T07:59:46.514424Z`: the seconds, then the fraction padded.
    fn key(c: &Checkpoint) -> Option<(String, String)> {
        let t = c.extension("time")?.strip_suffix('Z')?;
        let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
        (secs.len() == 19 && frac.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (secs.to_owned(), format!("{frac:0<9}")))
    }
    matches!((key(kept), key(head)), (Some(k), Some(h)) if k > h)
}

/// Whether the bundle's range holds the last event of `kept`'s tree.
fn in_range(kept: &Checkpoint, bundle: &BundleHeader) -> bool {
    kept.size > bundle.from_seq - 1 && kept.size <= bundle.to_seq
}

/// Whether a held checkpoint (signed, of the head's origin) is a prefix of
/// the head's tree: `Ok`, `Err` with why not, or `None` when this bundle
/// cannot tell.
fn held_verdict(kept: &Checkpoint, signed: &Signed<'_>) -> Option<Result<(), &'static str>> {
    let (bundle, head) = (signed.bundle, signed.head);
    if kept.size > head.size {
        return Some(Err(
            "it holds more events: events were removed from the log",
        ));
    }
    if kept.size == head.size || kept.size == 0 {
        let expected = if kept.size == 0 {
            merkle::empty_root()
        } else {
            head.root
        };
        return Some(if kept.root == expected {
            Ok(())
        } else {
            Err("the same number of events hash to different roots: the log was rewritten")
        });
    }
    if in_range(kept, bundle) {
        return signed.authenticated.map(|a| {
            match a.prefix_root(bundle.from_seq - 1, kept.size) {
                Ok(root) if root == kept.root => Ok(()),
                _ => Err("the bundle's events do not hash to the held root: events the held checkpoint covers were changed, removed, reordered or inserted"),
            }
        });
    }
    let by_bundle_proof = bundle.earlier_checkpoints.iter().find_map(|e| {
        let c = checkpoint::open(&e.checkpoint, signed.key).ok()?;
        (same_log(&signed.bundle.tenant, &c.origin, &head.origin) && c.size == kept.size)
            .then_some(c.root)
    });
    // The earlier checkpoint of that size was checked against the head in
    // step 7; the held one must be the same tree.
    by_bundle_proof.map(|root| {
        if root == kept.root {
            Ok(())
        } else {
            Err("the bundle's own checkpoint of that size has another root: the log was rewritten")
        }
    })
}

/// The bundle's witnessed checkpoint: like an earlier one (signed,
/// consistent with the head), and under a policy, cosigned by enough
/// trusted witnesses and covering the range.
fn check_witnessed(
    bundle: &BundleHeader,
    head: &Checkpoint,
    key: &VerifyingKey,
    policy: Option<&Policy>,
    report: &mut BundleReport,
) {
    let Some(w) = &bundle.witnessed else {
        if let Some(p) = policy {
            report.problem(
                ProblemKind::Unwitnessed,
                format!(
                    "the bundle carries no witnessed checkpoint; the policy asks for {} of {} \
                     witnesses",
                    p.quorum,
                    p.witnesses.len()
                ),
            );
        }
        return;
    };
    let before = report.problems.len();
    check_earlier(0, w, &bundle.tenant, head, key, report);
    for p in &mut report.problems[before..] {
        p.message = p
            .message
            .replace("earlier checkpoint 0", "the witnessed checkpoint")
            .replace("an earlier checkpoint", "the witnessed checkpoint");
    }
    let Some(policy) = policy else {
        return;
    };
    if report.problems.len() > before {
        report.problem(
            ProblemKind::Unwitnessed,
            "the witnessed checkpoint does not hold, so no witness vouches for the range",
        );
        return;
    }
    let size = checkpoint::parse_unverified(&w.checkpoint).map_or(0, |c| c.size);
    match policy.check(&w.checkpoint) {
        Err(e) => report.problem(ProblemKind::Unwitnessed, format!("the witnessed checkpoint: {e}")),
        Ok(_) if size < bundle.to_seq => report.problem(
            ProblemKind::Unwitnessed,
            format!(
                "the witnessed checkpoint holds {size} events: events {}..={} are not witnessed yet",
                size.saturating_add(1).max(bundle.from_seq),
                bundle.to_seq
            ),
        ),
        Ok(_) => {}
    }
}

/// How a streaming pass ended.
enum Streamed {
    /// Every check made.
    Done(BundleReport),
    /// The events are not exactly the range in order: read it whole.
    OutOfOrder,
}

/// Reads the next line that is not blank (a `\r` before the `\n`
/// dropped) into `buf`; returns its number, counting from 1 over every
/// line, or `None` at the end.
fn next_line(
    r: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
    line: &mut usize,
) -> std::io::Result<Option<usize>> {
    loop {
        buf.clear();
        if r.read_until(b'\n', buf)? == 0 {
            return Ok(None);
        }
        *line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(*line));
        }
    }
}

/// The checks of [`verify_in_memory`], one event line at a time, for a
/// bundle whose events are its range in order.
fn stream_pass<F: EventFormat>(
    r: &mut impl std::io::BufRead,
    key: &VerifyingKey,
    held: &[String],
    policy: Option<&Policy>,
    format: &F,
) -> std::io::Result<Streamed> {
    let mut report = BundleReport::default();
    let (mut buf, mut line) = (Vec::new(), 0usize);
    let bundle: BundleHeader = match next_line(r, &mut buf, &mut line)? {
        None => {
            report.problem(ProblemKind::Malformed, "the bundle is empty");
            return Ok(Streamed::Done(report));
        }
        Some(_) => match serde_json::from_slice(&buf) {
            Ok(h) => h,
            Err(e) => {
                report.problem(
                    ProblemKind::Malformed,
                    format!("line 1 is not a bundle header: {e}"),
                );
                return Ok(Streamed::Done(report));
            }
        },
    };
    let Some(tenant) = check_header(&bundle, format, &mut report) else {
        return Ok(Streamed::Done(report));
    };
    // 1. The checkpoint.
    let head = check_checkpoint(&bundle, key, &mut report);
    report.tree_size = head.as_ref().map_or(0, |c| c.size);
    let begin = bundle.from_seq - 1;
    let proof = parse_hashes(&bundle.range_proof);
    // What is built as the leaves stream by: the range's root, the
    // prefixes of held checkpoints in the range, the leaves with
    // inclusion proofs.
    let mut range = head
        .as_ref()
        .and_then(|h| merkle::RangeRoot::new(begin, bundle.to_seq, h.size).ok());
    let mut prefixes: Vec<(u64, merkle::RangeRoot)> = Vec::new();
    for note in held {
        if let Ok(c) = checkpoint::parse_unverified(note)
            && c.size > begin
            && c.size <= bundle.to_seq
            && !prefixes.iter().any(|(s, _)| *s == c.size)
            && let Ok(rr) = merkle::RangeRoot::new(begin, c.size, c.size)
        {
            prefixes.push((c.size, rr));
        }
    }
    let wanted: std::collections::HashSet<u64> =
        bundle.inclusion_proofs.iter().map(|p| p.seq).collect();
    let mut leaves: HashMap<u64, Hash> = HashMap::new();
    // 2–4. Every event read, in order, linked to the one before.
    let mut links = Vec::new();
    let mut prev: Option<Hash> = None;
    // u128: a range ending at u64::MAX is read without overflow.
    let mut next = u128::from(bundle.from_seq);
    while let Some(n) = next_line(r, &mut buf, &mut line)? {
        report.events += 1;
        let Ok(value) = serde_json::from_slice::<Value>(&buf) else {
            return Ok(Streamed::OutOfOrder);
        };
        let Ok((ev, modified)) = format.read_event(&tenant, n, &value) else {
            return Ok(Streamed::OutOfOrder);
        };
        if u128::from(ev.seq) != next || next > u128::from(bundle.to_seq) {
            return Ok(Streamed::OutOfOrder);
        }
        if let Some(m) = modified {
            report.problem(ProblemKind::Modified, m);
        }
        if let Some(p) = prev
            && ev.prev != p
        {
            links.push(format!(
                "event {} does not link to event {}: one of them was replaced or an event was inserted between them",
                ev.seq,
                ev.seq - 1
            ));
        }
        let genesis_broken = ev.seq == 1 && ev.prev != F::GENESIS;
        let leaf = merkle::leaf_hash(&ev.recomputed);
        if let Some(rr) = &mut range {
            rr.push(leaf);
        }
        for (size, rr) in &mut prefixes {
            if ev.seq <= *size {
                rr.push(leaf);
            }
        }
        if wanted.contains(&ev.seq) {
            leaves.insert(ev.seq, leaf);
        }
        prev = Some(ev.recomputed);
        next += 1;
        if genesis_broken {
            // Reported after every link, as the in-memory pass does.
            links.push(String::new());
        }
    }
    if next != u128::from(bundle.to_seq) + 1 {
        return Ok(Streamed::OutOfOrder);
    }
    for l in links.iter().filter(|l| !l.is_empty()) {
        report.problem(ProblemKind::Modified, l.clone());
    }
    if links.iter().any(String::is_empty) {
        report.problem(ProblemKind::Modified, "event 1 does not start the chain");
    }
    let Some(head) = head else {
        return Ok(Streamed::Done(report));
    };
    // 5. The range proof.
    let authenticated = match &proof {
        None => {
            report.problem(ProblemKind::Malformed, "the range proof is not hex hashes");
            false
        }
        Some(proof) => match range.as_ref().map(|rr| rr.finish(proof)) {
            Some(Ok(root)) if root == head.root => true,
            _ => {
                range_proof_failed(&bundle, &head, &mut report);
                false
            }
        },
    };
    let prefix_roots: HashMap<u64, Result<Hash, merkle::ProofError>> = prefixes
        .iter()
        .map(|(size, rr)| {
            let left = begin.count_ones() as usize;
            let root = match &proof {
                Some(p) if p.len() >= left => rr.finish(&p[..left]),
                _ => Err(merkle::ProofError::WrongLength),
            };
            (*size, root)
        })
        .collect();
    let signed = Signed {
        bundle: &bundle,
        head: &head,
        key,
        authenticated: authenticated.then_some(Authenticated::Prefixes(&prefix_roots)),
    };
    check_proofs_and_checkpoints(
        &signed,
        |seq| leaves.get(&seq).copied(),
        held,
        policy,
        &mut report,
    );
    Ok(Streamed::Done(report))
}
