//! The offline bundle verifier with this crate alone: a toy event format
//! (an event's entry is `SHA-256(prev || seq || data)`) stands in for
//! keyledger's, which the runtime passes (`keyledger_runtime::verify_bundle`,
//! tested on real bundles in `crates/runtime/tests/audit.rs`).

use keyledger_audit::bundle::{BUNDLE_FORMAT, Bundle, BundleHeader, BundleInclusion};
use keyledger_audit::checkpoint::Checkpoint;
use keyledger_audit::merkle::{Hash, Tree, leaf_hash};
use keyledger_audit::origin::origin;
use keyledger_audit::proofs::{hex_hashes, parse_hash};
use keyledger_audit::verify::{EventFormat, EventLink, ProblemKind, verify_bundle_with};
use keyledger_audit::{SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Toy;

fn entry(prev: &Hash, seq: u64, data: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(data.as_bytes());
    h.finalize().into()
}

impl EventFormat for Toy {
    type Tenant = String;
    const GENESIS: Hash = [0; 32];

    fn tenant(&self, tenant: &str) -> Result<String, String> {
        if tenant.is_empty() || tenant.contains('/') {
            return Err("not a tenant".into());
        }
        Ok(tenant.to_owned())
    }

    fn read_event(
        &self,
        _tenant: &String,
        line: usize,
        value: &Value,
    ) -> Result<(EventLink, Option<String>), String> {
        let seq = value["seq"].as_u64().ok_or("no `seq`")?;
        let prev = value["prev"]
            .as_str()
            .and_then(parse_hash)
            .ok_or("no `prev`")?;
        let data = value["data"].as_str().ok_or("no `data`")?;
        let recomputed = entry(&prev, seq, data);
        let hash = value["hash"].as_str().and_then(parse_hash);
        let modified = (hash != Some(recomputed)).then(|| format!("event {seq} was modified"));
        Ok((
            EventLink {
                line,
                seq,
                prev,
                recomputed,
            },
            modified,
        ))
    }
}

/// A log of `n` toy events, its tree, and the key that signs it.
fn log(n: u64) -> (Vec<Value>, Tree, SigningKey) {
    let mut prev = Toy::GENESIS;
    let mut events = Vec::new();
    let mut tree = Tree::new();
    for seq in 1..=n {
        let data = format!("event {seq}");
        let hash = entry(&prev, seq, &data);
        events.push(json!({
            "seq": seq,
            "prev": hex::encode(prev),
            "data": data,
            "hash": hex::encode(hash),
        }));
        tree.push_leaf_hash(leaf_hash(&hash));
        prev = hash;
    }
    (events, tree, SigningKey::from_bytes(&[7; 32]))
}

fn signed(tree: &Tree, size: u64, key: &SigningKey) -> String {
    Checkpoint {
        origin: origin("acme"),
        size,
        root: tree.root(size).unwrap(),
        extensions: vec!["time 2026-12-07T00:00:00Z".into()],
    }
    .sign(key)
}

/// The bundle of events `from..=to` of a log of `n`.
fn bundle(n: u64, from: u64, to: u64) -> (Bundle, VerifyingKey, Tree, SigningKey) {
    let (events, tree, key) = log(n);
    let header = BundleHeader {
        format: BUNDLE_FORMAT.into(),
        tenant: "acme".into(),
        from_seq: from,
        to_seq: to,
        checkpoint: signed(&tree, n, &key),
        range_proof: hex_hashes(&tree.range_proof(from - 1, to, n).unwrap()),
        inclusion_proofs: (from..=to)
            .map(|seq| BundleInclusion {
                seq,
                proof: hex_hashes(&tree.inclusion_proof(seq - 1, n).unwrap()),
            })
            .collect(),
        earlier_checkpoints: Vec::new(),
        witnessed: None,
    };
    let events = events[(from - 1) as usize..to as usize].to_vec();
    let public = key.verifying_key();
    (Bundle { header, events }, public, tree, key)
}

#[test]
fn a_bundle_verifies_with_this_crate_alone() {
    let (bundle, public, tree, key) = bundle(7, 2, 5);
    let held = vec![signed(&tree, 3, &key), signed(&tree, 7, &key)];
    let report = verify_bundle_with(&bundle.to_jsonl(), &public, &held, &Toy);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        (report.events, report.tree_size, report.signatures_ok),
        (4, 7, 3)
    );
    assert_eq!(report.inclusion_proofs_ok, 4);
    assert_eq!(report.consistency_proofs_ok, 2, "both held checkpoints");
}

#[test]
fn every_problem_is_named_by_its_kind() {
    let (bundle, public, ..) = bundle(7, 2, 5);
    let kinds = |b: &Bundle| {
        verify_bundle_with(&b.to_jsonl(), &public, &[], &Toy)
            .problems
            .iter()
            .map(|p| p.kind)
            .collect::<Vec<_>>()
    };
    let mut changed = bundle.clone();
    changed.events[1]["data"] = json!("another event");
    assert!(kinds(&changed).contains(&ProblemKind::Modified));

    let mut dropped = bundle.clone();
    dropped.events.remove(2);
    assert!(kinds(&dropped).contains(&ProblemKind::Missing));

    let mut swapped = bundle.clone();
    swapped.events.swap(0, 1);
    assert_eq!(kinds(&swapped), [ProblemKind::Reordered]);

    let mut other = bundle.clone();
    other.header.tenant = "a/b".into();
    let report = verify_bundle_with(&other.to_jsonl(), &public, &[], &Toy);
    assert_eq!(report.problems[0].message, "tenant: not a tenant");

    let wrong_key = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let report = verify_bundle_with(&bundle.to_jsonl(), &wrong_key, &[], &Toy);
    assert_eq!(report.problems[0].kind, ProblemKind::BadSignature);

    let empty = verify_bundle_with(b"\n \n", &public, &[], &Toy);
    assert_eq!(empty.problems[0].message, "the bundle is empty");
}

/// A header whose range ends at the largest sequence number, with that
/// event once and twice: refused, never a panic, never a pass; and the
/// streaming reader gives the same report as a slice.
#[test]
fn a_range_ending_at_the_largest_sequence_number_is_refused_without_overflow() {
    let (bundle, public, _, _) = bundle(4, 1, 4);
    let mut header = bundle.header.clone();
    header.from_seq = u64::MAX;
    header.to_seq = u64::MAX;
    let event = json!({"seq": u64::MAX, "prev": hex::encode([0u8; 32]), "data": "x",
        "hash": hex::encode(entry(&[0; 32], u64::MAX, "x"))});
    for copies in [1, 2] {
        let mut text = serde_json::to_string(&header).unwrap();
        for _ in 0..copies {
            text.push('\n');
            text.push_str(&event.to_string());
        }
        let report = verify_bundle_with(text.as_bytes(), &public, &[], &Toy);
        assert!(!report.ok(), "{copies}: {report:?}");
        let streamed = keyledger_audit::verify_bundle_reader(
            std::io::Cursor::new(text.as_bytes()),
            &public,
            &[],
            None,
            &Toy,
        )
        .unwrap();
        assert_eq!(streamed, report);
    }
    // And every bundle of this file's tests reads the same through a reader.
    let text = bundle.to_jsonl();
    let streamed = keyledger_audit::verify_bundle_reader(
        std::io::Cursor::new(&text[..]),
        &public,
        &[],
        None,
        &Toy,
    )
    .unwrap();
    assert!(streamed.ok(), "{streamed:?}");
    assert_eq!(streamed, verify_bundle_with(&text, &public, &[], &Toy));
}
