//! Audit evidence, black box: signed checkpoints, bundles (one JSON Lines
//! file), and the offline verifier against tampered bundles, rewritten data
//! directories and checkpoints a reviewer kept.

use std::path::{Path, PathBuf};

use keyledger_core::{Actor, AuditRead, AuditReadKind, Event, EventKind, TenantId};
use keyledger_store::{EventLog, RawRecord, RedbLog, chain, envelope};
use serde_json::Value;

use crate::util::{Data, bin};

/// A ledger with a few events in `acme` (and one in `globex`).
fn ledger() -> Data {
    let d = Data::new();
    d.ok(&[
        "keys", "create", "--tenant", "globex", "--user", "erin", "--name", "other",
    ]);
    for (user, name) in [("alice", "one"), ("alice", "two"), ("bob", "three")] {
        d.ok(&[
            "keys", "create", "--tenant", "acme", "--user", user, "--name", name,
        ]);
    }
    d.ok(&["users", "remove", "--tenant", "acme", "bob"]);
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "four",
    ]);
    d
}

fn bundle(d: &Data, name: &str) -> PathBuf {
    let path = d.path().join(name);
    d.ok(&[
        "audit",
        "bundle",
        "--tenant",
        "acme",
        "--output",
        path.to_str().unwrap(),
    ]);
    path
}

fn public_key(d: &Data) -> PathBuf {
    d.path().join("audit-signing.pub")
}

/// Saves `audit checkpoint --json` (what a reviewer keeps) to a file.
fn keep_checkpoint(d: &Data, name: &str) -> PathBuf {
    let cp = d.ok(&["audit", "checkpoint", "--tenant", "acme", "--json"]);
    let path = d.path().join(name);
    std::fs::write(&path, cp).unwrap();
    path
}

/// Runs `verify-bundle` with no data directory, from an empty working
/// directory: exit code and output (standard output and error).
fn verify(file: &Path, key: &Path, held: &[&Path]) -> (Option<i32>, String) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["audit", "verify-bundle"])
        .arg(file)
        .arg("--public-key")
        .arg(key);
    for h in held {
        cmd.arg("--checkpoint").arg(h);
    }
    let out = cmd
        .env_remove("KEYLEDGER_DATA")
        .current_dir(cwd.path())
        .output()
        .expect("the binary runs");
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "verify-bundle wrote nothing (no data directory)"
    );
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A bundle file: the header line, then one event per line.
#[derive(Clone)]
struct Bundle {
    header: Value,
    events: Vec<Value>,
}

fn read(path: &Path) -> Bundle {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().map(|l| serde_json::from_str(l).unwrap());
    Bundle {
        header: lines.next().unwrap(),
        events: lines.collect(),
    }
}

fn write(dir: &Path, name: &str, b: &Bundle) -> PathBuf {
    let mut text = serde_json::to_string(&b.header).unwrap();
    text.push('\n');
    for e in &b.events {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_fresh_bundle_verifies_offline_and_its_export_is_recorded() {
    let d = ledger();
    let file = bundle(&d, "b.jsonl");
    let (code, out) = verify(&file, &public_key(&d), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("VALID"), "{out}");
    // One JSON Lines file: a header with the signed checkpoint and the
    // proofs, then the events as `audit export` writes them, plus `payload`.
    let b = read(&file);
    assert_eq!(b.header["format"], "keyledger-audit-bundle/v1");
    assert!(
        b.header["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("keyledger/acme\n")
    );
    assert_eq!(b.events.len(), 6, "the five commands' six events");
    let export = d.ok(&["audit", "export", "--tenant", "acme", "--format", "jsonl"]);
    // The lines of the export without `position`, which repeats `seq` (the
    // tenant's position) and which a bundle therefore leaves out.
    let exported: Vec<Value> = export
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let position = v.as_object_mut().unwrap().remove("position");
            assert_eq!(position.as_ref(), Some(&v["seq"]), "{l}");
            v
        })
        .collect();
    for e in &b.events {
        let mut e = e.clone();
        assert!(e.as_object_mut().unwrap().remove("payload").is_some());
        assert!(exported.contains(&e), "{e} is as exported");
    }
    // The export itself is in the trail (PCI DSS 10.2.1.3): who, which range.
    let trail = d.json(&["audit", "list", "--tenant", "acme", "--type", "AuditRead"]);
    let reads = trail["events"].as_array().unwrap();
    assert_eq!(reads[0]["details"]["what"], "bundle", "{trail}");
    assert_eq!(reads[0]["details"]["from_seq"], 1);
    assert_eq!(reads[0]["details"]["to_seq"], 6);
    assert_eq!(reads[0]["actor"]["type"], "operator", "{trail}");
    assert_eq!(reads[1]["details"]["what"], "export", "{trail}");
    assert_eq!(reads[1]["details"]["to_seq"], 7);
    // Checkpoints were stored, signed, with an owner-only key beside them.
    let stored = std::fs::read_to_string(d.path().join("checkpoints/acme.jsonl")).unwrap();
    assert!(stored.lines().count() >= 2, "{stored}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("audit-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let cp = d.ok(&["audit", "checkpoint", "--tenant", "acme"]);
    assert!(cp.starts_with("keyledger/acme\n"), "{cp}");
    assert!(cp.contains("\n\n\u{2014} keyledger/acme "), "{cp}");
}

/// `audit list` and `audit export` on the CLI record the read too, and a
/// bad filter records nothing.
#[test]
fn cli_reads_of_the_trail_are_recorded() {
    let d = ledger();
    let reads = |d: &Data| {
        let t = d.json(&["audit", "list", "--tenant", "acme", "--type", "AuditRead"]);
        t["events"].as_array().unwrap().clone()
    };
    // The listing above is recorded after it was read: it sees no read yet.
    assert_eq!(reads(&d).len(), 0);
    let after_one = reads(&d);
    assert_eq!(after_one.len(), 1);
    assert_eq!(after_one[0]["details"]["what"], "list");
    // A page with no event records the range 0..=0.
    assert_eq!(after_one[0]["details"]["from_seq"], 0);
    d.ok(&["audit", "export", "--tenant", "acme"]);
    let out = d.run(&["audit", "export", "--tenant", "acme", "--type", "Nope"]);
    assert!(!out.status.success());
    let all = reads(&d);
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| e["details"]["what"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["list", "list", "export"], "{all:?}");
    assert_eq!(all[2]["details"]["from_seq"], 1);
}

#[test]
fn every_tampered_bundle_is_named_and_refused() {
    let d = ledger();
    let file = bundle(&d, "b.jsonl");
    let key = public_key(&d);
    let good = read(&file);
    let dir = d.path();

    // A bundle and a checkpoint signed by another key.
    let stranger = ledger();
    let foreign = read(&bundle(&stranger, "b.jsonl"));
    let foreign_held = keep_checkpoint(&stranger, "held.json");

    // A checkpoint signed by the same key over another history.
    let twin = Data::new();
    std::fs::create_dir_all(twin.path()).unwrap();
    std::fs::copy(
        dir.join("audit-signing.key"),
        twin.path().join("audit-signing.key"),
    )
    .unwrap();
    for name in ["x", "y", "z", "w"] {
        twin.ok(&[
            "keys", "create", "--tenant", "acme", "--user", "mallory", "--name", name,
        ]);
    }
    let forked = read(&bundle(&twin, "b.jsonl"));
    let forked_held = keep_checkpoint(&twin, "held.json");

    type Tamper = Box<dyn Fn(&mut Bundle)>;
    let none: Option<&Path> = None;
    let cases: Vec<(&str, Tamper, Option<&Path>, &str)> = vec![
        (
            "changed event",
            Box::new(|b| b.events[1]["details"]["name"] = "renamed".into()),
            none,
            "MODIFIED: event 2 (line 3) was modified: details differ",
        ),
        (
            "changed stored bytes",
            Box::new(|b| {
                let p = b.events[2]["payload"].as_str().unwrap().to_owned();
                let mut bytes: Vec<char> = p.chars().collect();
                bytes[4] = if bytes[4] == 'A' { 'B' } else { 'A' };
                b.events[2]["payload"] = bytes.into_iter().collect::<String>().into();
            }),
            none,
            "MODIFIED: event 3 (line 4) was modified",
        ),
        (
            "changed time",
            Box::new(|b| b.events[0]["at"] = "2020-01-01T00:00:00.000000Z".into()),
            none,
            "MODIFIED: event 1 (line 2) was modified: at differ",
        ),
        (
            "a field added",
            Box::new(|b| b.events[4]["position"] = 1.into()),
            none,
            "MODIFIED: event 5 (line 6) was modified: extra fields differ",
        ),
        (
            "dropped event",
            Box::new(|b| {
                b.events.remove(2);
            }),
            none,
            "MISSING: event with sequence number 3 is missing",
        ),
        (
            "reordered events",
            Box::new(|b| b.events.swap(1, 2)),
            none,
            "REORDERED: line 4: event 2 comes after event 3",
        ),
        (
            "inserted copy",
            Box::new(|b| {
                let copy = b.events[1].clone();
                b.events.insert(3, copy);
            }),
            none,
            "INSERTED: line 5: a second event with sequence number 2",
        ),
        (
            "inserted event from another log",
            Box::new(move |b| {
                let mut e = foreign.events[0].clone();
                e["seq"] = 7.into();
                b.events.push(e);
            }),
            none,
            "INSERTED: line 8: an event with sequence number 7, outside the range 1..=6",
        ),
        (
            "a line that is not JSON",
            Box::new(|b| b.events[3] = Value::String("x".into())),
            none,
            "MALFORMED: line 5",
        ),
        (
            "checkpoint signed by another key",
            Box::new({
                let foreign = read(&stranger.path().join("b.jsonl"));
                move |b| b.header["checkpoint"] = foreign.header["checkpoint"].clone()
            }),
            none,
            "BAD SIGNATURE: the bundle's checkpoint is not signed by the given key",
        ),
        (
            "earlier checkpoint signed by another key",
            Box::new({
                let foreign = read(&stranger.path().join("b.jsonl"));
                move |b| {
                    b.header["earlier_checkpoints"][0]["checkpoint"] =
                        foreign.header["checkpoint"].clone()
                }
            }),
            none,
            "BAD SIGNATURE: earlier checkpoint 1",
        ),
        (
            "checkpoints that disagree",
            Box::new(move |b| {
                b.header["earlier_checkpoints"][0]["checkpoint"] =
                    forked.header["checkpoint"].clone();
            }),
            none,
            "INCONSISTENT CHECKPOINTS",
        ),
        (
            "a held checkpoint that disagrees",
            Box::new(|_| {}),
            Some(forked_held.as_path()),
            "INCONSISTENT CHECKPOINTS: held checkpoint 1",
        ),
        (
            "a held checkpoint signed by another key",
            Box::new(|_| {}),
            Some(foreign_held.as_path()),
            "BAD SIGNATURE: held checkpoint 1",
        ),
    ];
    for (what, tamper, held, label) in cases {
        let mut b = good.clone();
        tamper(&mut b);
        let mut path = write(dir.as_path(), "tampered.jsonl", &b);
        if what == "a line that is not JSON" {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replacen("\n\"x\"\n", "\n{\"seq\": 4, oops\n", 1);
            path = dir.join("broken.jsonl");
            std::fs::write(&path, text).unwrap();
        }
        let held: Vec<&Path> = held.into_iter().collect();
        let (code, out) = verify(&path, &key, &held);
        assert_eq!(code, Some(1), "{what}: exit 1\n{out}");
        assert!(out.contains(label), "{what}: names `{label}`\n{out}");
        assert!(
            out.lines().last().unwrap().starts_with("INVALID"),
            "{what}: {out}"
        );
    }
    // The stranger's own bundle is valid under its own key, not under ours.
    let (code, out) = verify(&stranger.path().join("b.jsonl"), &key, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("BAD SIGNATURE"), "{out}");
    // A checkpoint kept earlier of the same log is consistent.
    let held = keep_checkpoint(&d, "mine.json");
    let later = bundle(&d, "later.jsonl");
    let (code, out) = verify(&later, &key, &[&held]);
    assert_eq!(code, Some(0), "{out}");
}

/// Rewrites acme's events in the data file as an operator with write access
/// would, recomputing the whole hash chain, the tenant index and the head,
/// so `audit verify` (the chain alone) finds nothing wrong.
fn rewrite(d: &Data, change: impl Fn(&mut Vec<Vec<u8>>, &TenantId)) {
    let log = RedbLog::open(&d.path().join("ledger.redb")).unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let before: Vec<RawRecord> = log.read_tenant_raw(&tenant, 0, 1000).unwrap();
    let mut payloads: Vec<Vec<u8>> = before.iter().map(|r| r.payload.clone()).collect();
    change(&mut payloads, &tenant);
    // Positions: the old ones in order, then new ones past the end.
    let mut positions: Vec<u64> = before.iter().map(|r| r.position).collect();
    let end = log.head().unwrap();
    positions.extend((1..=payloads.len() as u64).map(|i| end + i));
    for gone in &before[payloads.len().min(before.len())..] {
        log.raw_delete_record(gone.position).unwrap();
        log.raw_delete_index("acme", gone.seq).unwrap();
    }
    let mut prev = chain::GENESIS;
    for (i, payload) in payloads.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let hash = chain::link(&prev, "acme", seq, &payload);
        let r = RawRecord {
            position: positions[i],
            tenant: "acme".into(),
            seq,
            prev_hash: prev,
            hash,
            payload,
        };
        log.raw_put_record(&r).unwrap();
        log.raw_put_index("acme", seq, r.position).unwrap();
        prev = hash;
    }
    let last = log.read_tenant_raw(&tenant, 0, 1000).unwrap().len() as u64;
    log.raw_put_head("acme", Some((last, prev))).unwrap();
}

type Rewrite = fn(&mut Vec<Vec<u8>>, &TenantId);

/// The four rewrites: an event changed, two reordered, one dropped, one inserted.
const REWRITES: [(&str, Rewrite); 4] = [
    ("changed", |p, tenant| {
        let mut event = envelope::decode(tenant, &p[1]).unwrap();
        if let EventKind::KeyCreated(c) = &mut event.kind {
            c.name = "forged".into();
        }
        p[1] = envelope::encode(&event);
    }),
    ("reordered", |p, _| p.swap(0, 1)),
    ("dropped", |p, _| {
        p.pop();
    }),
    ("inserted", |p, tenant| {
        let at = envelope::decode(tenant, &p[1]).unwrap().at;
        let fake = Event {
            tenant: tenant.clone(),
            at,
            actor: Actor::Operator,
            kind: EventKind::AuditRead(AuditRead::one(AuditReadKind::List, None, at)),
        };
        p.insert(2, envelope::encode(&fake));
    }),
];

/// An operator who rewrites the data file and recomputes the whole hash
/// chain: the chain alone cannot tell, but the signed checkpoints stored
/// beside the log can. `audit verify` exits 1 naming the tenant and the
/// checkpoint, and nothing opens the rewritten log to serve or sign it
/// (no bundle is made over it).
#[test]
fn a_rewritten_data_directory_contradicts_its_earlier_checkpoints() {
    for (what, change) in REWRITES {
        let d = ledger();
        rewrite(&d, change);
        let out = d.run(&["audit", "verify", "--tenant", "acme", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report[0]["problem"],
            Value::Null,
            "{what}: the chain links: {report}"
        );
        assert_eq!(report[0]["ok"], false, "{what}: {report}");
        assert_eq!(report[0]["checkpoint"]["ok"], false, "{what}: {report}");
        let file = d.path().join("after.jsonl");
        let refused = d.run(&[
            "audit",
            "bundle",
            "--tenant",
            "acme",
            "--output",
            file.to_str().unwrap(),
        ]);
        assert!(!refused.status.success(), "{what}: a bundle was made");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("tenant acme") && stderr.contains("checkpoint"),
            "{what}: {stderr}"
        );
        assert!(!file.exists(), "{what}");
    }
}

/// The strong case: the operator also deletes the stored checkpoints and
/// lets the server sign fresh ones over the rewritten log, so the bundle
/// alone verifies (what a bundle cannot prove, docs/audit.md). The
/// checkpoint a reviewer kept from before the rewrite catches every rewrite.
#[test]
fn a_kept_checkpoint_catches_a_rewrite_with_re_signed_checkpoints() {
    for (what, change) in REWRITES {
        let d = ledger();
        let key = public_key(&d);
        let held = keep_checkpoint(&d, "kept.json");
        rewrite(&d, change);
        std::fs::remove_dir_all(d.path().join("checkpoints")).unwrap();
        // The global tree's checkpoints would refuse the rewritten log too.
        std::fs::remove_file(d.path().join("global-checkpoints.jsonl")).unwrap();
        d.ok(&[
            "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "five",
        ]);
        let file = bundle(&d, "after.jsonl");
        let (code, out) = verify(&file, &key, &[]);
        assert_eq!(
            code,
            Some(0),
            "{what}: the bundle alone cannot tell (documented)\n{out}"
        );
        let (code, out) = verify(&file, &key, &[&held]);
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(
            out.contains("INCONSISTENT CHECKPOINTS: held checkpoint 1"),
            "{what}: {out}"
        );
    }
}

/// A stored checkpoint replaced by one signed with another key is carried
/// into the bundle and named.
#[test]
fn a_stored_checkpoint_signed_by_another_key_is_named() {
    let d = ledger();
    let stranger = ledger();
    let path = d.path().join("checkpoints/acme.jsonl");
    let mine = std::fs::read_to_string(&path).unwrap();
    let theirs = std::fs::read_to_string(stranger.path().join("checkpoints/acme.jsonl")).unwrap();
    // The first stored checkpoint (size 1) is always in a bundle.
    let mut lines: Vec<&str> = mine.lines().collect();
    lines[0] = theirs.lines().next().unwrap();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let file = bundle(&d, "b.jsonl");
    let (code, out) = verify(&file, &public_key(&d), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("BAD SIGNATURE: earlier checkpoint 1"), "{out}");
}

/// Issue 20, item 9: a --public-key that is neither a readable file nor a
/// key says both; a kept checkpoint signed after the bundle's is newer,
/// not a sign that events were removed.
#[test]
fn verify_bundle_names_a_missing_key_file_and_a_kept_checkpoint_that_is_only_newer() {
    let d = ledger();
    let file = bundle(&d, "b.jsonl");
    let (code, out) = verify(&file, Path::new("nosuchfile"), &[]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("nosuchfile") && out.contains("not a readable file"),
        "{out}"
    );
    d.ok(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "later",
    ]);
    let kept = keep_checkpoint(&d, "kept.json");
    let (code, out) = verify(&file, &public_key(&d), &[&kept]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("is newer than the bundle's checkpoint"),
        "{out}"
    );
    assert!(!out.contains("removed"), "{out}");
}
