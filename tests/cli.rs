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
            && by("KeyUpdated") == 1
    );
    let changed = events.iter().find(|e| e["type"] == "KeyUpdated").unwrap();
    assert_eq!(
        changed["details"]["changes"]["meta"],
        serde_json::json!({"before": null, "after": {"team": "platform"}}),
        "{changed}"
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
    // The tenant's rows have no key_id column (issue 20, item 13).
    assert!(String::from_utf8_lossy(&usage.stdout).starts_with("day,total"));
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
            let log = raw_log(&d);
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

/// The data directory's log, opened behind the binary's back (it is not
/// running).
fn raw_log(d: &Data) -> RedbLog {
    RedbLog::open(
        &crate::util::files(&d.path())
            .into_iter()
            .find(|p| p.ends_with("ledger.redb"))
            .unwrap(),
    )
    .unwrap()
}

/// `replay` checks the per-key index (a key's history, its uses summed)
/// against the records: an entry removed behind the log's back makes it
/// exit 1 naming the entry, and it rebuilds the index from the records,
/// so the next replay finds it equal.
#[test]
fn replay_names_a_key_index_entry_changed_behind_the_logs_back_and_rebuilds_it() {
    let d = Data::new();
    let created = d.json(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "one",
    ]);
    let key: keyledger_core::KeyId = created["key"]["id"]
        .as_str()
        .or_else(|| created["id"].as_str())
        .unwrap_or_else(|| panic!("a key id in {created}"))
        .parse()
        .unwrap();
    let clean = d.json(&["replay"]);
    assert_eq!(clean["key_index"]["equal"], true, "{clean}");
    let entries = clean["key_index"]["entries"].as_u64().unwrap();
    assert!(entries >= 1, "{clean}");
    {
        let log = raw_log(&d);
        log.raw_put_key_index("acme", key, 1, None).unwrap();
    }
    let out = d.run(&["replay", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a differing index exits 1");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["key_index"]["equal"], false, "{report}");
    assert_eq!(
        report["key_index"]["difference"],
        format!("key_index: tenant acme, key {key}, event 1 is missing"),
        "{report}"
    );
    let text = d.ok(&["replay"]);
    assert!(
        text.contains(&format!(
            "per-key index: {entries} entries, equal to the records"
        )),
        "rebuilt by the replay before: {text}"
    );
}

/// Runs the binary with only the environment given (no KEYLEDGER_* from the
/// caller's shell, no config directory of the user's), optionally with
/// `stdin`.
fn kl(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(crate::util::bin());
    cmd.args(args).env_clear();
    // PATH, and the width tables fit, as `Data::run` has them.
    for var in ["PATH", "COLUMNS"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("KEYLEDGER_LOG", "warn").envs(env.iter().copied());
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the binary starts");
    let mut input = child.stdin.take().expect("piped standard input");
    if let Some(s) = stdin {
        input
            .write_all(s.as_bytes())
            .expect("standard input written");
    }
    drop(input);
    child.wait_with_output().expect("its output")
}

#[track_caller]
fn ok_out(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// A demo data directory with a key of tenant acme holding every scope
/// (owned by `tour`, created by the operator), and its secret.
fn demo_with_tour_key() -> (Data, String) {
    let d = Data::new();
    d.ok(&["demo"]);
    let created = d.json(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "tour",
        "--name",
        "tour",
        "--scope",
        "keys:read,keys:write,audit:read,usage:read,users:remove",
    ]);
    let key = text(&created, "key");
    (d, key)
}

/// Ids, secrets, masked keys and times replaced by placeholders (the same
/// tour run twice mints other ids at other times); with `actors` false, who
/// acted is left out too (tour's key acts as itself where the operator acts
/// as tour offline).
fn normalized(v: &Value, actors: bool) -> Value {
    match v {
        Value::String(s) if s.starts_with("key_") && s.len() == 30 => "KEY_ID".into(),
        Value::String(s) if s.starts_with("klk_") => "SECRET".into(),
        Value::String(s) if s.len() >= 20 && s.starts_with("20") && s.ends_with('Z') => {
            "TIME".into()
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| normalized(v, actors)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| actors || !matches!(k.as_str(), "created_via" | "revoked_by"))
                .map(|(k, v)| (k.clone(), normalized(v, actors)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The README's command-line tour, on a data directory and against a
/// server serving a copy of it, with the operator token (`operator`) or
/// an API key of acme's holding every scope: the same tables and the same
/// JSON. The server writes no counted use during the test (a window of an
/// hour), and records each read of the trail at once, as the offline
/// commands do; those records differ in time (and, with the key, in
/// actor), so trail lines of `AuditRead` events and the chain's head hash
/// that covers them are left out of the comparison.
fn readme_tour_both_ways(operator: bool) {
    let (offline, key) = demo_with_tour_key();
    let served = Data::new();
    crate::util::copy_dir(&offline.path(), &served.path());
    let live = crate::live::Live::start_with(
        &served.path(),
        3_600_000,
        "warn",
        &["--audit-read-window-ms", "0"],
    );
    let url = format!("http://{}", live.addr);
    let env: Vec<(&str, &str)> = if operator {
        vec![("KEYLEDGER_OPERATOR_TOKEN", crate::live::TOKEN)]
    } else {
        vec![("KEYLEDGER_API_KEY", key.as_str())]
    };
    let remote = |args: &[&str]| {
        let mut with = vec!["--url", url.as_str()];
        with.extend_from_slice(args);
        ok_out(
            &kl(&with, &env, None),
            &format!("{args:?} against the server"),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let days_ago = |n: i64| keyledger_core::Timestamp::from_micros(now - n * 86_400_000_000);
    let from_day = days_ago(7).day().to_string();
    let forty_days_ago = days_ago(40).to_rfc3339();
    let tour: Vec<Vec<&str>> = vec![
        // The first read of the trail on each side: no read recorded yet.
        vec!["audit", "list", "--tenant", "acme"],
        vec!["keys", "list", "--tenant", "acme"],
        vec![
            "keys", "list", "--tenant", "acme", "--status", "revoked", "--sort", "name", "--order",
            "asc",
        ],
        vec!["audit", "list", "--tenant", "acme", "--type", "KeyRevoked"],
        vec!["usage", "summary", "--tenant", "acme"],
        vec!["usage", "daily", "--tenant", "acme", "--from", &from_day],
        vec!["state", "--tenant", "acme", "--at", &forty_days_ago],
        vec!["state", "--tenant", "acme", "--at", "12"],
        vec!["state", "--tenant", "acme", "--at", "12", "--limit", "2"],
        vec!["audit", "public-key", "--tenant", "acme"],
        vec!["usage", "export", "--tenant", "acme"],
    ];
    for (i, args) in tour.iter().enumerate() {
        let here = offline.ok(args);
        let there = remote(args);
        assert_eq!(here, there, "{args:?}: the same table both ways");
        if i == 0 || args.contains(&"export") {
            // The first read is recorded on each side: its JSON would show
            // that read. An export is its format, whatever --json says.
            continue;
        }
        let mut json = args.clone();
        json.push("--json");
        let here: Value = serde_json::from_str(&offline.ok(&json)).unwrap();
        let there: Value = serde_json::from_str(&remote(&json)).unwrap();
        assert_eq!(here, there, "{args:?} --json: the same JSON both ways");
        assert!(here != Value::Null);
    }
    // The export: every line the same but the recorded reads.
    let no_reads = |csv: String| -> Vec<String> {
        csv.lines()
            .filter(|l| !l.contains(",AuditRead,"))
            .map(str::to_owned)
            .collect()
    };
    let args = ["audit", "export", "--tenant", "acme", "--format", "csv"];
    let (here, there) = (no_reads(offline.ok(&args)), no_reads(remote(&args)));
    assert!(here.len() > 15, "{here:?}");
    assert_eq!(here, there, "the exported trail");
    // The chain check: the same events, every one good.
    let args = ["audit", "verify", "--tenant", "acme", "--json"];
    let here: Value = serde_json::from_str(&offline.ok(&args)).unwrap();
    let there: Value = serde_json::from_str(&remote(&args)).unwrap();
    for v in [&here, &there] {
        assert_eq!(v[0]["ok"], true, "{v}");
        assert_eq!(v[0]["tenant"], "acme");
    }
    assert_eq!(here[0]["events"], there[0]["events"]);

    // Then the writes of the tour: the same answers but for ids, times
    // and secrets (and who acted, with the key). The operator runs the
    // README's commands as they are; the key acts as its owner, tour,
    // whom the operator acts as offline (`--as tour`).
    let owner: &[&str] = if operator {
        &["--tenant", "acme", "--user", "tour"]
    } else {
        &[]
    };
    let tenant: &[&str] = if operator { &["--tenant", "acme"] } else { &[] };
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter().chain(tail).map(|s| (*s).to_owned()).collect()
    };
    // Each side with its own ids (the two mint different ones).
    let both = |here_args: Vec<String>, there_args: Vec<String>| -> (Value, Value) {
        let mut a = here_args;
        if !operator && a[0] != "verify" {
            a.extend(["--tenant".into(), "acme".into()]);
            if a[1] != "show" {
                a.extend(["--as".into(), "tour".into()]);
            }
        }
        a.push("--json".into());
        let mut b = there_args;
        b.push("--json".into());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let here: Value = serde_json::from_str(&offline.ok(&a)).unwrap();
        let there: Value = serde_json::from_str(&remote(&b)).unwrap();
        assert_eq!(
            normalized(&here, operator),
            normalized(&there, operator),
            "{a:?} / {b:?}"
        );
        (here, there)
    };
    let create = with(&["keys", "create", "--name", "My laptop"], owner);
    let (a, b) = both(create.clone(), create);
    let (ia, ib) = (text(&a, "id"), text(&b, "id"));
    // (Before the verification: offline its use is written at once, the
    // server writes it at the end of its usage window.)
    both(
        with(&["keys", "show", &ia], tenant),
        with(&["keys", "show", &ib], tenant),
    );
    both(
        with(&["verify", &text(&a, "key")], &[]),
        with(&["verify", &text(&b, "key")], &[]),
    );
    let rotate = |id: &str| with(&["keys", "rotate", id, "--grace-seconds", "3600"], tenant);
    let (ra, rb) = both(rotate(&ia), rotate(&ib));
    let (ra, rb) = (text(&ra, "id"), text(&rb, "id"));
    both(
        with(&["keys", "revoke", &ra], tenant),
        with(&["keys", "revoke", &rb], tenant),
    );
    let remove = with(&["users", "remove", "bob"], tenant);
    both(remove.clone(), remove);
    // A refusal reads the same both ways, as JSON on standard error.
    let refused = |out: std::process::Output| -> Value {
        assert_eq!(out.status.code(), Some(2));
        serde_json::from_slice(&out.stderr).expect("a JSON error on standard error")
    };
    let here = refused(offline.run(&["keys", "revoke", "--tenant", "acme", &ra, "--json"]));
    let mut again = vec!["--url", url.as_str(), "keys", "revoke", &rb, "--json"];
    again.extend_from_slice(tenant);
    let there = refused(kl(&again, &env, None));
    assert_eq!(here["error"]["code"], "already_revoked", "{here}");
    assert_eq!(there["error"]["code"], "already_revoked", "{there}");
    assert_eq!(there["error"]["status"], 409, "{there}");
    live.stop();
}

#[test]
fn readme_cli_tour_prints_the_same_offline_and_against_a_server_with_a_key() {
    readme_tour_both_ways(false);
}

#[test]
fn readme_cli_tour_prints_the_same_offline_and_against_a_server_as_the_operator() {
    readme_tour_both_ways(true);
}

#[test]
fn the_cli_against_a_server_needs_a_credential_and_keeps_local_commands_local() {
    let (d, key) = demo_with_tour_key();
    let live = crate::live::Live::start(&d.path(), 1000);
    let url = format!("http://{}", live.addr);
    let no_credential = kl(&["--url", &url, "keys", "list"], &[], None);
    assert_eq!(no_credential.status.code(), Some(2));
    let err = String::from_utf8_lossy(&no_credential.stderr);
    assert!(
        err.contains("KEYLEDGER_API_KEY") && err.contains("login"),
        "{err}"
    );
    for local in [vec!["replay"], vec!["demo"]] {
        let mut args = vec!["--url", url.as_str()];
        args.extend(local.iter().copied());
        let out = kl(&args, &[("KEYLEDGER_API_KEY", key.as_str())], None);
        assert_eq!(out.status.code(), Some(2), "{local:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("runs on a data directory"), "{local:?}: {err}");
    }
    // A key acts in its own tenant only, and says so.
    let other = kl(
        &["--url", &url, "keys", "list", "--tenant", "globex"],
        &[("KEYLEDGER_API_KEY", key.as_str())],
        None,
    );
    assert_eq!(other.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("belongs to tenant acme"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // The server's refusal of a bad key is reported with its code.
    let bad = kl(
        &["--url", &url, "keys", "list", "--json"],
        &[("KEYLEDGER_API_KEY", "klk_not-a-key")],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));
    let e: Value = serde_json::from_slice(&bad.stderr).expect("a JSON error");
    assert_eq!(e["error"]["status"], 401, "{e}");
    // `verify` needs no credential: the key checked is the one presented.
    let verified = kl(&["--url", &url, "verify", &key, "--json"], &[], None);
    let v: Value = serde_json::from_str(&ok_out(&verified, "verify")).unwrap();
    assert_eq!(v["outcome"], "valid", "{v}");
    // The operator token from a file, acting in a tenant it names.
    let token_file = d.path().with_extension("token");
    std::fs::write(&token_file, format!("{}\n", crate::live::TOKEN)).unwrap();
    let me = kl(
        &[
            "--url",
            &url,
            "--operator-token-file",
            token_file.to_str().unwrap(),
            "whoami",
            "--tenant",
            "globex",
            "--json",
        ],
        &[],
        None,
    );
    let me: Value = serde_json::from_str(&ok_out(&me, "whoami as the operator")).unwrap();
    assert_eq!(me["operator"], true, "{me}");
    assert_eq!(me["tenant_id"], "globex", "{me}");
    // Nothing listening: a clear error, not a panic.
    let gone = kl(
        &["--url", "http://127.0.0.1:9", "keys", "list"],
        &[("KEYLEDGER_API_KEY", key.as_str())],
        None,
    );
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("http://127.0.0.1:9/v1/keys"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    live.stop();
}

#[cfg(unix)]
#[test]
fn login_stores_the_key_for_its_owner_only_and_whoami_and_logout_use_it() {
    use std::os::unix::fs::PermissionsExt;
    let (d, key) = demo_with_tour_key();
    let live = crate::live::Live::start(&d.path(), 1000);
    let url = format!("http://{}", live.addr);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    let env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];

    // Never from an argument.
    let refused = kl(&["login", "--url", &url, "--key", &key], &env, None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("shell history"));
    assert!(!config.join("keyledger/login.json").exists());
    // A wrong key is checked before anything is stored.
    let wrong = kl(&["login", "--url", &url], &env, Some("klk_wrong\n"));
    assert_eq!(wrong.status.code(), Some(2));
    assert!(!config.join("keyledger/login.json").exists());

    let out = kl(&["login", "--url", &url], &env, Some(&format!("{key}\n")));
    let said = ok_out(&out, "login");
    assert!(
        said.contains("tenant acme") && said.contains("tour"),
        "{said}"
    );
    assert!(!said.contains(&key) && !contains(&out.stderr, &key));
    let file = config.join("keyledger/login.json");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&config.join("keyledger")), 0o700);

    // Later commands need no flags.
    let me = ok_out(&kl(&["whoami", "--json"], &env, None), "whoami");
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["tenant_id"], "acme");
    assert_eq!(me["owner"], "tour");
    assert_eq!(me["name"], "tour");
    assert_eq!(me["scopes"].as_array().unwrap().len(), 5);
    let list = ok_out(&kl(&["keys", "list", "--json"], &env, None), "keys list");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert!(list["keys"].as_array().unwrap().len() >= 10);
    // A data directory named explicitly is used instead.
    let data = d.path();
    let offline = kl(&["--data", data.to_str().unwrap(), "whoami"], &env, None);
    assert_eq!(offline.status.code(), Some(2), "whoami needs a server");

    let out = ok_out(&kl(&["logout"], &env, None), "logout");
    assert!(out.contains("logged out"), "{out}");
    assert!(!file.exists());
    let after = kl(&["whoami"], &env, None);
    assert_eq!(after.status.code(), Some(2));
    live.stop();
}

/// Read-your-writes from the CLI (docs/api.md, "Reading your writes on any
/// node"): a write's `Keyledger-Position` is kept in the stored login and
/// sent back by the next commands; one the server refuses (a server since
/// reset) is dropped rather than failing every later command; one given in
/// KEYLEDGER_POSITION is sent as given.
#[test]
fn the_cli_passes_back_the_position_of_its_last_write() {
    let (d, key) = demo_with_tour_key();
    let live = crate::live::Live::start(&d.path(), 1000);
    let url = format!("http://{}", live.addr);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    let env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];
    ok_out(
        &kl(&["login", "--url", &url], &env, Some(&format!("{key}\n"))),
        "login",
    );
    let file = config.join("keyledger/login.json");
    let stored = || -> Value { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };
    assert_eq!(stored()["position"], 0, "no write yet");

    ok_out(
        &kl(&["keys", "create", "--name", "position probe"], &env, None),
        "keys create",
    );
    let after_create = stored()["position"].as_u64().unwrap();
    assert!(after_create > 0, "the create's position is kept");
    // A read with it: answered (the one node has applied it).
    let list = ok_out(&kl(&["keys", "list", "--json"], &env, None), "keys list");
    assert!(list.contains("position probe"), "{list}");
    assert_eq!(stored()["position"].as_u64(), Some(after_create));

    // Given for this command, it is sent as given: past the tenant's log,
    // the server refuses it.
    let past = (after_create + 1_000_000).to_string();
    let refused = kl(
        &["keys", "list"],
        &[env[0], ("KEYLEDGER_POSITION", past.as_str())],
        None,
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid_position"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let bad = kl(
        &["keys", "list"],
        &[env[0], ("KEYLEDGER_POSITION", "soon")],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));

    // Kept from a server since reset: dropped, and forgotten.
    let mut login = stored();
    login["position"] = (after_create + 1_000_000).into();
    std::fs::write(&file, serde_json::to_vec(&login).unwrap()).unwrap();
    let list = ok_out(&kl(&["keys", "list", "--json"], &env, None), "keys list");
    assert!(list.contains("position probe"), "{list}");
    assert_eq!(stored()["position"], 0, "the refused position is forgotten");
    live.stop();
}

#[test]
fn errors_are_json_under_json() {
    let d = Data::new();
    d.ok(&["demo"]);
    let out = d.run(&["keys", "show", "--tenant", "acme", "key_nope", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let e: Value = serde_json::from_slice(&out.stderr).expect("a JSON error on standard error");
    assert_eq!(e["error"]["code"], "invalid_argument", "{e}");
    assert!(text(&e["error"], "message").contains("key_nope"), "{e}");
    let missing = d.run(&[
        "keys",
        "show",
        "--tenant",
        "acme",
        "key_01M97R85QM6P3Q9TATV0SX99QJ",
        "--json",
    ]);
    let e: Value = serde_json::from_slice(&missing.stderr).expect("a JSON error");
    assert_eq!(e["error"]["code"], "key_not_found", "{e}");
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    let d = Data::new();
    d.ok(&["demo"]);
    let mut child = std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(d.path())
        .args(["audit", "list", "--tenant", "acme", "--limit", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As `| head -0` does: the reading end closed before anything is read.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Broken pipe"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

#[test]
fn a_missing_tenant_names_the_option_not_the_data_directory() {
    let d = Data::new();
    d.ok(&["demo"]);
    let out = d.run(&["keys", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tenant") && !err.contains("--data"), "{err}");
}

#[test]
fn state_at_takes_a_plain_day_as_usage_does() {
    let d = Data::new();
    d.ok(&["demo"]);
    let day = d.json(&["state", "--tenant", "acme", "--at", "2026-01-01"]);
    assert_eq!(day["at"], "2026-01-01T00:00:00Z");
    let same = d.json(&["state", "--tenant", "acme", "--at", "2026-01-01T00:00:00Z"]);
    assert_eq!(day, same);
    let bad = d.run(&["state", "--tenant", "acme", "--at", "tomorrow"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM-DD")
            || String::from_utf8_lossy(&bad.stderr).contains("a day")
    );
}

#[test]
fn audit_type_takes_a_comma_list_as_the_api_does() {
    let d = Data::new();
    d.ok(&["demo"]);
    let both = d.json(&[
        "audit",
        "list",
        "--tenant",
        "acme",
        "--type",
        "KeyRevoked,UserRemoved",
        "--limit",
        "1000",
    ]);
    let events = both["events"].as_array().unwrap();
    let of = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert!(of("KeyRevoked") >= 4 && of("UserRemoved") == 1, "{both}");
    assert_eq!(of("KeyRevoked") + of("UserRemoved"), events.len());
}

#[test]
fn completions_and_the_man_page_come_from_the_clap_definitions() {
    let d = Data::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = d.ok(&["completions", shell]);
        assert!(
            out.contains("keyledger") && out.contains("verify-bundle"),
            "{shell}"
        );
    }
    let man = d.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH keyledger"),
        "{man}"
    );
    assert!(man.contains("serve"));
    assert!(!d.path().exists(), "nothing written to the data directory");
}

#[test]
fn the_tenant_usage_csv_has_no_always_empty_key_id_column() {
    let d = Data::new();
    d.ok(&["demo"]);
    let tenant = d.ok(&["usage", "export", "--tenant", "acme"]);
    let mut lines = tenant.lines();
    assert_eq!(
        lines.next(),
        Some("day,total,valid,rejected,revoked,expired,insufficient_scope")
    );
    let row = lines.next().expect("a day of usage");
    assert_eq!(row.split(',').count(), 7, "{row}");
    assert!(!row.contains(",,"), "no empty field: {row}");
    let id = text(
        &d.json(&["keys", "list", "--tenant", "acme"])["keys"][0],
        "id",
    );
    let key = d.ok(&["usage", "export", "--tenant", "acme", "--key-id", &id]);
    assert!(key.starts_with("day,key_id,total,"), "{key}");
}

#[test]
fn a_stopped_server_says_every_counted_use_is_written() {
    let d = Data::new();
    let live = crate::live::Live::start_with(&d.path(), 1000, "warn", &[]);
    // Once it has answered, it is waiting for the signal.
    let health = crate::live::request(&live.addr, "GET", "/healthz", &[], None).unwrap();
    assert_eq!(health.status, 200);
    live.stop();
    // Live keeps the server's standard error beside the data directory.
    let logs: String = files(&d.path().with_extension("logs"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("every counted use is written"),
        "at the default log level too: {logs}"
    );
}

#[test]
fn a_first_start_that_failed_welcomes_on_the_retry() {
    let d = Data::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let failed = kl(
        &[
            "--data",
            d.path().to_str().unwrap(),
            "serve",
            "--addr",
            &addr,
        ],
        &[],
        None,
    );
    assert!(!failed.status.success(), "the port is in use");
    assert!(
        d.path().join("operator-token").exists(),
        "the token was made"
    );
    drop(taken);
    let mut child = std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(d.path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env_remove("KEYLEDGER_OPERATOR_TOKEN")
        .env("KEYLEDGER_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = lines.clone();
    let listening =
        crate::util::listening_addr(&mut child, std::time::Duration::from_secs(60), move |l| {
            let mut s = seen.lock().unwrap();
            s.push_str(l);
            s.push('\n');
        });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lines.lock().unwrap().contains("first time") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening.is_some(), "the retry starts");
    let out = lines.lock().unwrap().clone();
    assert!(
        out.contains("first time") && out.contains("operator-token"),
        "the retry says what to do: {out}"
    );
}

#[test]
fn an_unknown_event_type_is_refused_with_every_type_named() {
    let d = Data::new();
    d.ok(&["demo"]);
    let out = d.run(&[
        "audit",
        "list",
        "--tenant",
        "acme",
        "--type",
        "KeyRevoked,Nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for t in ["`Nope`", "KeyCreated", "AuditRead", "LogRecovered"] {
        assert!(err.contains(t), "{t}: {err}");
    }
}

#[test]
fn a_mistyped_tenant_is_told_it_has_no_events() {
    let d = Data::new();
    d.ok(&["demo"]);
    let out = d.run(&["keys", "list", "--tenant", "acmee"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenant `acmee` has no events") && err.contains("acme, "),
        "{err}"
    );
    let known = d.run(&["keys", "list", "--tenant", "acme"]);
    assert!(!String::from_utf8_lossy(&known.stderr).contains("no events"));
}

#[test]
fn tables_fit_the_terminal_without_splitting_ids() {
    let d = Data::new();
    d.ok(&["demo"]);
    let data = d.path();
    let data = data.to_str().unwrap();
    let keys = d.json(&["keys", "list", "--tenant", "acme"]);
    let ids: Vec<String> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| text(k, "id"))
        .collect();
    // (Not the reads of the trail: each list adds one.)
    const MANAGEMENT: &str = "KeyCreated,KeyRevoked,KeyRotated,UserRemoved";
    let events = d.json(&["audit", "list", "--tenant", "acme", "--type", MANAGEMENT])["events"]
        .as_array()
        .unwrap()
        .len();
    for width in ["80", "120", "60"] {
        let run = |args: &[&str]| {
            let mut with = vec!["--data", data];
            with.extend_from_slice(args);
            ok_out(&kl(&with, &[("COLUMNS", width)], None), width)
        };
        let w: usize = width.parse().unwrap();
        let table = run(&["keys", "list", "--tenant", "acme"]);
        for line in table.lines() {
            assert!(line.chars().count() <= w, "{width}: {line}");
        }
        for id in &ids {
            assert_eq!(
                table.lines().filter(|l| l.contains(id.as_str())).count(),
                1,
                "{width}: {id} whole, on one line:\n{table}"
            );
        }
        assert!(table.contains("ID") && table.contains("Status"), "{table}");
        let trail = run(&["audit", "list", "--tenant", "acme", "--type", MANAGEMENT]);
        for line in trail.lines() {
            assert!(line.chars().count() <= w, "{width}: {line}");
        }
        // One line a row: the header's three, the rows, the bottom border.
        assert_eq!(trail.lines().count(), 3 + events + 1, "{width}:\n{trail}");
        if width == "80" {
            assert!(table.contains("Production Web A…"), "{table}");
        }
    }
    // Piped (no COLUMNS), every column, every name whole.
    let whole = d.ok(&["keys", "list", "--tenant", "acme"]);
    assert!(whole.contains("Production Web App") && whole.contains("Last used"));
}

/// `docs/api.md`'s table of routes, as `METHOD /path` (every row of the
/// "Routes" section starts with one).
fn documented_routes() -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let section = doc
        .split("\n## Routes\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Routes section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (method, rest) = l.split_once(' ')?;
            let path = rest.split(['`', '?', ' ']).next()?;
            ["GET", "POST", "DELETE", "PUT", "PATCH"]
                .contains(&method)
                .then(|| format!("{method} {path}"))
        })
        .collect()
}

#[test]
fn docs_api_md_lists_every_route_of_the_openapi_document() {
    let doc: Value = serde_json::from_str(keyledger_server::openapi_json()).unwrap();
    let served: std::collections::BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "delete", "put", "patch"].contains(&m.as_str()))
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let documented = documented_routes();
    assert!(served.len() >= 25, "{served:?}");
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/api.md's Routes table and /openapi.json differ: not documented {missing:?}, \
         not served {extra:?}"
    );
}

#[test]
fn serve_help_offers_no_json() {
    let d = Data::new();
    let help = d.ok(&["serve", "--help"]);
    assert!(
        help.contains("--addr") && !help.contains("--json"),
        "{help}"
    );
    assert!(d.ok(&["keys", "list", "--help"]).contains("--json"));
    assert!(!d.path().exists(), "help starts nothing");
}

/// A bad operator token in the environment is refused before the data
/// directory is opened: nothing is created, and a large log is not
/// replayed first only to be refused.
#[test]
fn serve_refuses_a_bad_operator_token_before_opening_the_data_directory() {
    let d = Data::new();
    let out = std::process::Command::new(crate::util::bin())
        .arg("--data")
        .arg(d.path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("KEYLEDGER_LOG", "warn")
        .env("KEYLEDGER_OPERATOR_TOKEN", "too-short")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KEYLEDGER_OPERATOR_TOKEN: an operator token is 24 to 512 characters"),
        "{err}"
    );
    assert!(!d.path().exists(), "the data directory was created");
}

/// `state --limit` pages the keys in key-id order: the pages, followed by
/// their cursors, are the whole answer; the text names the next cursor.
#[test]
fn state_pages_add_up_to_the_whole_state() {
    let d = Data::new();
    d.ok(&["demo"]);
    let at = ["state", "--tenant", "acme", "--at", "2030-01-01"];
    let whole = d.json(&at);
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = at.to_vec();
        args.extend(["--limit", "2"]);
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let page = d.json(&args);
        assert_eq!(page["at"], whole["at"]);
        assert!(page["keys"].as_array().unwrap().len() <= 2, "{page}");
        paged.extend(page["keys"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(paged.len() > 2, "the demo tenant has more than one page");
    assert_eq!(&Value::Array(paged), &whole["keys"]);
    let mut args = at.to_vec();
    args.extend(["--limit", "2"]);
    let text = d.ok(&args);
    assert!(text.contains("more: --cursor "), "{text}");
    let bad = d.run(&[
        "state", "--tenant", "acme", "--at", "12", "--cursor", "nonsense",
    ]);
    assert!(!bad.status.success());
}
