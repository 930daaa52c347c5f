//! The command line, black box: the real binary on a temporary data directory.

use keyledger_store::RedbLog;
use serde_json::Value;

use crate::util::{Data, contains, files};

fn text(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no `{k}` in {v}"))
        .to_owned()
}

#[test]
fn demo_gives_a_newcomer_keys_a_trail_and_usage() {
    let d = Data::new();
    let out = d.ok(&["demo"]);
    assert!(out.contains("3 tenants"), "{out}");

    let list = d.json(&["keys", "list", "--tenant", "acme"]);
    let keys = list["keys"].as_array().unwrap();
    assert!(keys.len() >= 10);
    assert!(list["active_count"].as_u64().unwrap() >= 5);
    for k in keys {
        let masked = text(k, "masked");
        assert_eq!(
            masked.chars().count(),
            13,
            "masked as first 8 … last 4: {masked}"
        );
        assert!(k.get("key").is_none(), "a list never holds a secret");
    }
    let statuses: Vec<_> = keys.iter().map(|k| text(k, "status")).collect();
    for s in ["active", "revoked", "expired"] {
        assert!(
            statuses.iter().any(|x| x == s),
            "the demo shows a {s} key: {statuses:?}"
        );
    }

    let trail = d.json(&["audit", "list", "--tenant", "acme", "--limit", "1000"]);
    let events = trail["events"].as_array().unwrap();
    let by = |ty: &str| events.iter().filter(|e| e["type"] == ty).count();
    assert!(
        by("KeyCreated") >= 10
            && by("KeyRevoked") >= 4
            && by("UserRemoved") == 1
            && by("KeyRotated") == 1
    );
    assert_eq!(by("KeyUsed"), 0, "usage only on request");
    assert!(
        events
            .iter()
            .any(|e| e["actor"]["display"] == "API Key: CI/CD Pipeline")
    );
    let cascade: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "KeyRevoked" && e["details"]["reason"] == "user_removed")
        .collect();
    assert_eq!(
        cascade.len(),
        3,
        "carol's three keys are revoked by the cascade"
    );

    let summary = d.json(&["usage", "summary", "--tenant", "acme"]);
    assert_eq!(summary["series"].as_array().unwrap().len(), 30);
    assert!(summary["totals"]["total"].as_u64().unwrap() > 10_000);
    let rate = summary["success_rate"].as_f64().unwrap();
    assert!(rate > 0.5 && rate <= 1.0);

    let verify = d.ok(&["audit", "verify"]);
    assert_eq!(verify.matches(": ok,").count(), 3, "{verify}");
    let replay = d.json(&["replay"]);
    assert_eq!(replay["broken_chains"], 0);
    assert_eq!(replay["tenants"], 3);

    // A second demo on a full directory is refused, not appended.
    assert!(!d.run(&["demo"]).status.success());
}

#[test]
fn key_lifecycle_and_the_secret_is_never_written_or_logged() {
    let d = Data::new();
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut secrets = Vec::new();
    let mut run = |args: &[&str], secret_output: bool| -> Value {
        let mut with = args.to_vec();
        with.push("--json");
        let out = d.run(&with);
        assert!(
            out.status.success() || args[0] == "verify",
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The create result is the one place a secret is shown; its logs
        // (stderr) are searched all the same.
        if !secret_output {
            outputs.push(out.stdout.clone());
        }
        outputs.push(out.stderr.clone());
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let a = run(
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--name",
            "CI/CD Pipeline",
            "--scope",
            "keys:read",
        ],
        true,
    );
    let b = run(
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            "bob",
            "--name",
            "Mobile App",
        ],
        true,
    );
    let c = run(
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--user",
            "bob",
            "--name",
            "Laptop",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
        true,
    );
    for k in [&a, &b, &c] {
        secrets.push(text(k, "key"));
    }
    let (sa, sb, sc) = (secrets[0].clone(), secrets[1].clone(), secrets[2].clone());
    assert!(sa.starts_with("klk_"));

    assert_eq!(run(&["verify", &sa], false)["outcome"], "valid");
    assert_eq!(
        run(&["verify", &sa, "--scope", "keys:write"], false)["outcome"],
        "insufficient_scope"
    );
    assert_eq!(
        run(&["verify", "klk_garbage"], false)["outcome"],
        "malformed"
    );

    let revoked = run(
        &[
            "keys",
            "revoke",
            "--tenant",
            "acme",
            &text(&a, "id"),
            "--reason",
            "compromised",
        ],
        false,
    );
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoke_reason"], "compromised");
    assert_eq!(run(&["verify", &sa], false)["outcome"], "revoked");
    let again = d.run(&["keys", "revoke", "--tenant", "acme", &text(&a, "id")]);
    assert!(!again.status.success(), "a second revoke is a conflict");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));

    let rotated = run(
        &[
            "keys",
            "rotate",
            "--tenant",
            "acme",
            &text(&c, "id"),
            "--grace-seconds",
            "3600",
        ],
        true,
    );
    secrets.push(text(&rotated, "key"));
    assert_eq!(rotated["name"], "Laptop");
    assert_eq!(rotated["rotated_from"], c["id"]);
    assert_eq!(
        run(&["verify", &sc], false)["outcome"],
        "valid",
        "the old key works during the grace period"
    );

    let removed = run(&["users", "remove", "--tenant", "acme", "bob"], false);
    let revoked_ids: Vec<_> = removed["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        revoked_ids.len(),
        3,
        "bob's mobile key, laptop key and its successor: {removed}"
    );
    assert_eq!(run(&["verify", &sb], false)["outcome"], "revoked");
    let refused = d.run(&[
        "keys", "create", "--tenant", "acme", "--user", "bob", "--name", "again",
    ]);
    assert!(!refused.status.success(), "a removed user cannot get a key");

    for args in [
        vec!["keys", "list", "--tenant", "acme"],
        vec!["keys", "show", "--tenant", "acme", &text(&b, "id")],
        vec!["audit", "list", "--tenant", "acme", "--include-usage"],
        vec!["usage", "daily", "--tenant", "acme"],
        vec!["replay"],
        vec!["audit", "verify"],
    ] {
        run(&args, false);
    }
    for format in ["jsonl", "csv"] {
        let out = d.run(&[
            "audit",
            "export",
            "--tenant",
            "acme",
            "--include-usage",
            "--format",
            format,
        ]);
        assert!(out.status.success());
        assert!(out.stdout.len() > 100);
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    let usage = d.run(&["usage", "export", "--tenant", "acme", "--format", "csv"]);
    assert!(String::from_utf8_lossy(&usage.stdout).starts_with("day,key_id,total"));
    outputs.push(usage.stdout);

    let stored = files(&d.path());
    assert!(!stored.is_empty());
    for secret in &secrets {
        for f in &stored {
            let bytes = std::fs::read(f).unwrap();
            assert!(!contains(&bytes, secret), "{} holds a secret", f.display());
            // Not even the body without its prefix.
            assert!(
                !contains(&bytes, &secret[4..]),
                "{} holds a secret's body",
                f.display()
            );
        }
        for o in &outputs {
            assert!(!contains(o, secret), "an output or log line holds a secret");
        }
    }
}

/// Tampers with the data file directly, as an attacker or a broken disk
/// would, and expects `audit verify` to exit 1 naming the first bad place.
#[test]
fn audit_verify_names_the_first_bad_position_of_a_tampered_log() {
    type Tamper = fn(&RedbLog, &[keyledger_store::RawRecord]);
    let cases: [(&str, Tamper, u64); 4] = [
        (
            "changed",
            |log, recs| {
                let mut r = recs[2].clone();
                let last = r.payload.len() - 1;
                r.payload[last] ^= 1;
                log.raw_put_record(&r).unwrap();
            },
            3,
        ),
        (
            "deleted",
            |log, recs| {
                log.raw_delete_record(recs[2].position).unwrap();
                log.raw_delete_index(&recs[2].tenant, recs[2].seq).unwrap();
            },
            3,
        ),
        (
            "swapped",
            |log, recs| {
                let (mut x, mut y) = (recs[2].clone(), recs[3].clone());
                std::mem::swap(&mut x.position, &mut y.position);
                log.raw_put_record(&x).unwrap();
                log.raw_put_record(&y).unwrap();
            },
            3,
        ),
        (
            "inserted",
            |log, recs| {
                // A copy of event 2 placed as a new event 3, the rest shifted.
                let last = recs.last().unwrap();
                for r in recs[2..].iter().rev() {
                    let mut moved = r.clone();
                    moved.position += 1;
                    moved.seq += 1;
                    log.raw_put_record(&moved).unwrap();
                    log.raw_put_index(&moved.tenant, moved.seq, moved.position)
                        .unwrap();
                }
                let mut forged = recs[1].clone();
                forged.position = recs[2].position;
                forged.seq = 3;
                log.raw_put_record(&forged).unwrap();
                log.raw_put_index(&forged.tenant, 3, forged.position)
                    .unwrap();
                log.raw_put_head(&last.tenant, Some((last.seq + 1, last.hash)))
                    .unwrap();
            },
            3,
        ),
    ];
    for (what, tamper, bad_seq) in cases {
        let d = Data::new();
        d.ok(&[
            "keys",
            "create",
            "--tenant",
            "globex",
            "--user",
            "erin",
            "--name",
            "other tenant",
        ]);
        for name in ["one", "two", "three", "four", "five"] {
            d.ok(&[
                "keys", "create", "--tenant", "acme", "--user", "alice", "--name", name,
            ]);
        }
        let clean = d.json(&["audit", "verify", "--tenant", "acme"]);
        assert_eq!(clean[0]["ok"], true, "{what}: an untouched log verifies");
        {
            let log = RedbLog::open(
                &crate::util::files(&d.path())
                    .into_iter()
                    .find(|p| p.ends_with("ledger.redb"))
                    .unwrap(),
            )
            .unwrap();
            let tenant: keyledger_core::TenantId = "acme".parse().unwrap();
            let recs = keyledger_store::EventLog::read_tenant_raw(&log, &tenant, 0, 100).unwrap();
            tamper(&log, &recs);
        }
        let out = d.run(&["audit", "verify", "--tenant", "acme", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{what}: exit status 1");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report[0]["ok"], false, "{what}");
        assert_eq!(report[0]["first_bad_seq"], bad_seq, "{what}: {report}");
        // The JSON is the tenant's view, as over HTTP: its own position,
        // though globex's event puts acme's event 3 at log position 4.
        assert_eq!(report[0]["first_bad_position"], bad_seq, "{what}: {report}");
        if what == "changed" {
            // The operator's text also says where in the whole log.
            let text = d.run(&["audit", "verify", "--tenant", "acme"]);
            let text = String::from_utf8_lossy(&text.stdout);
            assert!(
                text.contains("BROKEN at event 3 of the tenant (log position 4)"),
                "{text}"
            );
        }
        let other = d.run(&["audit", "verify", "--tenant", "globex"]);
        assert!(
            other.status.success(),
            "{what}: the other tenant's chain is untouched"
        );
    }
}
