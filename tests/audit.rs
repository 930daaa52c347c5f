//! Audit evidence, black box: signed checkpoints, bundles, and the offline
//! verifier against tampered bundles and a rewritten data directory.

use std::path::{Path, PathBuf};

use keyledger_store::RedbLog;
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

/// Runs `verify-bundle` (no `--data`): exit code and standard output.
fn verify(file: &Path, key: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .args(["audit", "verify-bundle"])
        .arg(file)
        .arg("--public-key")
        .arg(key)
        .env_remove("KEYLEDGER_DATA")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p
}

#[test]
fn a_fresh_bundle_verifies_offline_and_its_export_is_recorded() {
    let d = ledger();
    let file = bundle(&d, "b.json");
    let (code, out) = verify(&file, &public_key(&d));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("VALID"), "{out}");
    // The export itself is in the trail (PCI DSS 10.2.1.3).
    let trail = d.json(&["audit", "list", "--tenant", "acme"]);
    let last = trail["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "AuditRead", "{last}");
    assert_eq!(last["details"]["what"], "bundle");
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

#[test]
fn every_tampered_bundle_is_named_and_refused() {
    let d = ledger();
    let file = bundle(&d, "b.json");
    let key = public_key(&d);
    let good = read(&file);
    let dir = d.path();

    // A bundle and a checkpoint signed by another key.
    let stranger = ledger();
    let foreign = read(&bundle(&stranger, "b.json"));

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
    let forked = read(&bundle(&twin, "b.json"));

    type Tamper = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "changed event",
            Box::new(|b| b["events"][1]["details"]["name"] = "renamed".into()),
            "MODIFIED",
        ),
        (
            "changed stored bytes",
            Box::new(|b| {
                let p = b["events"][2]["payload"].as_str().unwrap().to_owned();
                let mut bytes: Vec<char> = p.chars().collect();
                bytes[4] = if bytes[4] == 'A' { 'B' } else { 'A' };
                b["events"][2]["payload"] = bytes.into_iter().collect::<String>().into();
            }),
            "MODIFIED",
        ),
        (
            "dropped event",
            Box::new(|b| {
                b["events"].as_array_mut().unwrap().remove(2);
            }),
            "MISSING",
        ),
        (
            "reordered events",
            Box::new(|b| b["events"].as_array_mut().unwrap().swap(1, 2)),
            "REORDERED",
        ),
        (
            "inserted event",
            Box::new(|b| {
                let copy = b["events"][1].clone();
                b["events"].as_array_mut().unwrap().insert(3, copy);
            }),
            "INSERTED",
        ),
        (
            "checkpoint signed by another key",
            Box::new(move |b| b["checkpoint"] = foreign["checkpoint"].clone()),
            "BAD SIGNATURE",
        ),
        (
            "checkpoints that disagree",
            Box::new(move |b| {
                b["earlier_checkpoints"][0]["checkpoint"] = forked["checkpoint"].clone();
            }),
            "INCONSISTENT CHECKPOINTS",
        ),
    ];
    for (what, tamper, label) in cases {
        let mut b = good.clone();
        tamper(&mut b);
        let path = write(dir.as_path(), "tampered.json", &b);
        let (code, out) = verify(&path, &key);
        assert_eq!(code, Some(1), "{what}: exit 1\n{out}");
        assert!(out.contains(label), "{what}: names {label}\n{out}");
        assert!(out.lines().last().unwrap().starts_with("INVALID"), "{out}");
    }
    // The stranger's own bundle is valid under its own key, not under ours.
    let (code, out) = verify(&d.path().join("b.json"), &public_key(&stranger));
    assert_eq!(code, Some(1), "{out}");
}

/// An operator who rewrites the data file and recomputes the whole hash
/// chain passes `audit verify`; the checkpoints signed before the rewrite
/// do not agree with the new tree, and the bundle says so. Three rewrites:
/// an event changed, two events reordered, the last event dropped.
#[test]
fn a_rewritten_data_directory_contradicts_its_earlier_checkpoints() {
    type Rewrite = fn(&mut Vec<keyledger_store::RawRecord>, &keyledger_core::TenantId);
    let cases: [(&str, Rewrite); 3] = [
        ("changed", |recs, tenant| {
            let mut event = keyledger_store::envelope::decode(tenant, &recs[1].payload).unwrap();
            if let keyledger_core::EventKind::KeyCreated(c) = &mut event.kind {
                c.name = "forged".into();
            }
            recs[1].payload = keyledger_store::envelope::encode(&event);
        }),
        ("reordered", |recs, _| {
            // Two independent creations swap places.
            let p = recs[0].payload.clone();
            recs[0].payload = recs[1].payload.clone();
            recs[1].payload = p;
        }),
        ("dropped", |recs, _| {
            recs.pop();
        }),
    ];
    for (what, rewrite) in cases {
        let d = ledger();
        let key = public_key(&d);
        {
            let log = RedbLog::open(&d.path().join("ledger.redb")).unwrap();
            let tenant: keyledger_core::TenantId = "acme".parse().unwrap();
            let before = keyledger_store::EventLog::read_tenant_raw(&log, &tenant, 0, 100).unwrap();
            let mut recs = before.clone();
            rewrite(&mut recs, &tenant);
            for gone in &before[recs.len()..] {
                log.raw_delete_record(gone.position).unwrap();
                log.raw_delete_index("acme", gone.seq).unwrap();
            }
            let mut prev = keyledger_store::chain::GENESIS;
            for r in &mut recs {
                r.prev_hash = prev;
                r.hash = keyledger_store::chain::link(&prev, "acme", r.seq, &r.payload);
                prev = r.hash;
                log.raw_put_record(r).unwrap();
            }
            let last = recs.last().unwrap();
            log.raw_put_head("acme", Some((last.seq, prev))).unwrap();
        }
        // The chain alone cannot tell.
        let chain = d.json(&["audit", "verify", "--tenant", "acme"]);
        assert_eq!(chain[0]["ok"], true, "{what}: {chain}");
        // The signed checkpoints can.
        let file = bundle(&d, "after.json");
        let (code, out) = verify(&file, &key);
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(out.contains("INCONSISTENT CHECKPOINTS"), "{what}: {out}");
    }
}
