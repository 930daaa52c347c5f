//! The CLI's `--json` and the HTTP API print the same bodies, defined once
//! in `keyledger_runtime::views`: the same data read both ways answers the
//! same JSON. Reads are compared value for value; bodies of writes (a
//! created key, a removed user), whose ids and secrets differ between the
//! two writes, are compared by shape.
//!
//! The CLI and the server cannot hold the data directory at once: the CLI
//! reads first, then the server, then the CLI again for the one read that
//! counts a use (`verify`).

use serde_json::{Value, json};

use super::{Options, Server, TOKEN};
use crate::util::Data;

/// A window far longer than the test: the reader key's uses over HTTP are
/// written only at the stop, after every read.
const WINDOW_MS: u64 = 3_600_000;

/// Each field's JSON type in place of its value, recursively: what two
/// bodies of the same kind share whatever their data.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

fn text(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no `{k}` in {v}"))
        .to_owned()
}

#[test]
fn the_cli_json_and_the_api_answer_the_same_bodies() {
    let d = Data::new();
    let acme = ["--tenant", "acme"];
    let create = |user: &str, name: &str, scopes: &[&str]| {
        let mut args = vec!["keys", "create", "--user", user, "--name", name];
        args.extend(acme);
        for s in scopes {
            args.extend(["--scope", s]);
        }
        d.json(&args)
    };

    // The data, written by the CLI.
    let reader = create(
        "auditor",
        "reader",
        &["keys:read", "audit:read", "usage:read"],
    );
    let a = create("alice", "svc-a", &["keys:read"]);
    let b = create("bob", "svc-b", &[]);
    create("carol", "other-carol", &[]);
    create("dave", "other-dave", &[]);
    let (a_id, a_key, b_id) = (text(&a, "id"), text(&a, "key"), text(&b, "id"));
    d.ok(&[
        "keys",
        "revoke",
        "--tenant",
        "acme",
        &b_id,
        "--reason",
        "compromised",
    ]);
    d.ok(&["verify", &a_key]);
    // Refused (exit 1), and counted.
    let out = d.run(&["verify", &a_key, "--scope", "users:remove"]);
    assert_eq!(out.status.code(), Some(1));
    let cli_removed = d.json(&["users", "remove", "--tenant", "acme", "carol"]);

    // Read by the CLI (as the operator).
    let cli_list = d.json(&["keys", "list", "--tenant", "acme", "--q", "svc"]);
    let cli_show = d.json(&["keys", "show", "--tenant", "acme", &a_id]);
    let cli_state = d.json(&["state", "--tenant", "acme", "--at", "6"]);
    let cli_daily = d.json(&["usage", "daily", "--tenant", "acme", "--key-id", &a_id]);
    let cli_summary = d.json(&["usage", "summary", "--tenant", "acme", "--days", "3"]);
    let types = ["KeyCreated", "KeyRevoked", "UserRemoved", "KeyUsed"];
    let mut audit_args = vec!["audit", "list", "--tenant", "acme", "--limit", "4"];
    for t in types {
        audit_args.extend(["--type", t]);
    }
    let cli_audit = d.json(&audit_args);
    // After the CLI's own read of the trail is recorded, as the server
    // will find the log.
    let cli_chain = d.json(&["audit", "verify", "--tenant", "acme"]);

    // Read over HTTP (with the reader key), then the writes.
    let s = Server::start(
        &d,
        Options {
            usage_window_ms: WINDOW_MS,
            ..Options::default()
        },
    );
    let reader_key = text(&reader, "key");
    let get = |path: &str| {
        let r = s.get(path).bearer(&reader_key).send();
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    };
    let api_chain = get("/v1/audit/verify");
    let api_list = get("/v1/keys?q=svc");
    let api_show = get(&format!("/v1/keys/{a_id}"));
    let api_state = get("/v1/state?at=6");
    let api_daily = get(&format!("/v1/usage?key_id={a_id}"));
    let api_summary = get("/v1/usage/summary?days=3");
    let api_audit = get(&format!("/v1/audit?limit=4&type={}", types.join(",")));
    let r = s.post("/v1/verify").json(&json!({ "key": a_key })).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let api_verify = r.json();
    let api_created = s.mint(
        "acme",
        json!({ "user": "erin", "name": "svc-e", "scopes": ["keys:read"] }),
    );
    let r = s
        .delete("/v1/admin/tenants/acme/users/dave")
        .bearer(TOKEN)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let api_removed = r.json();
    s.stop();
    let cli_verify = d.json(&["verify", &a_key]);

    // The same data answers the same JSON.
    assert_eq!(cli_list, api_list, "keys list");
    assert_eq!(cli_list["keys"].as_array().map(Vec::len), Some(2));
    assert_eq!(cli_show, api_show, "keys show");
    assert_eq!(cli_state, api_state, "state");
    assert_eq!(cli_daily, api_daily, "usage daily");
    assert!(!cli_daily["days"].as_array().unwrap().is_empty());
    assert_eq!(cli_summary, api_summary, "usage summary");
    assert_eq!(cli_audit, api_audit, "audit list");
    assert!(cli_audit["next_cursor"].is_string(), "{cli_audit}");
    assert_eq!(cli_verify, api_verify, "verify");
    assert_eq!(cli_verify["valid"], true);
    // `audit verify` prints one row per tenant, with the signed
    // checkpoints' check besides the chain's.
    let mut row = cli_chain[0].clone();
    assert!(row.as_object_mut().unwrap().remove("checkpoint").is_some());
    assert_eq!(row, api_chain, "audit verify");

    // Writes answer bodies of the same shape.
    assert_eq!(shape(&a), shape(&api_created), "a created key");
    assert_eq!(cli_removed["revoked"].as_array().map(Vec::len), Some(1));
    assert_eq!(shape(&cli_removed), shape(&api_removed), "a removed user");
}
