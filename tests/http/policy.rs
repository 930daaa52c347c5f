//! Key policy over HTTP and the CLI (docs/api.md, "Key policy and
//! changes"): a key created with metadata, credits and rate limits shows
//! them; `PATCH /v1/keys/{id}` changes each field, merge-patch style; every
//! refusal has its status and code and changes nothing; the trail shows
//! each change with its value before and after.

use serde_json::{Value, json};

use super::{Options, Resp, Server};
use crate::util::{Data, bin};

const ALL: [&str; 5] = [
    "keys:read",
    "keys:write",
    "audit:read",
    "usage:read",
    "users:remove",
];

fn text(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no `{k}` in {v}"))
        .to_owned()
}

/// A server, an admin key of acme holding every scope, and its secret.
fn setup() -> (Data, Server, String) {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let admin = s.mint(
        "acme",
        json!({"user": "alice", "name": "admin", "scopes": ALL}),
    );
    let key = text(&admin, "key");
    (d, s, key)
}

fn create(s: &Server, key: &str, body: Value) -> Value {
    let r = s.post("/v1/keys").bearer(key).json(&body).send();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn get(s: &Server, key: &str, id: &str) -> Value {
    let r = s.get(&format!("/v1/keys/{id}")).bearer(key).send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn patch(s: &Server, key: &str, id: &str, body: &Value) -> Resp {
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .bearer(key)
        .json(body)
        .send()
}

/// The tenant's `KeyUpdated` entries.
fn updates(s: &Server, key: &str) -> Vec<Value> {
    let r = s.get("/v1/audit?type=KeyUpdated").bearer(key).send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

#[test]
fn a_key_created_with_a_policy_shows_it_in_get_list_and_state() {
    let (_d, s, admin) = setup();
    let k = create(
        &s,
        &admin,
        json!({
            "name": "metered",
            "meta": {"plan": "pro", "seats": 3, "tags": ["a", "b"]},
            "credits": {"remaining": 1000, "refill": {"amount": 500, "interval": "monthly", "day": 31}},
            "limits": [
                {"name": "burst", "limit": 10, "duration": 1000},
                {"name": "hourly", "limit": 1000, "duration": 3_600_000},
            ],
        }),
    );
    let id = text(&k, "id");
    assert_eq!(
        k["meta"],
        json!({"plan": "pro", "seats": 3, "tags": ["a", "b"]})
    );
    assert_eq!(k["credits"]["remaining"], 1000, "{k}");
    assert_eq!(k["credits"]["refill"]["amount"], 500);
    assert_eq!(k["credits"]["refill"]["interval"], "monthly");
    assert_eq!(k["credits"]["refill"]["day"], 31);
    // The next refill is a midnight (UTC) in the future, on the 28th to 31st.
    let next = text(&k["credits"]["refill"], "next_at");
    let next_at = chrono::DateTime::parse_from_rfc3339(&next).unwrap();
    assert!(next_at > chrono::Utc::now(), "{next}");
    assert!(next.ends_with("T00:00:00Z"), "{next}");
    assert!(["28", "29", "30", "31"].contains(&&next[8..10]), "{next}");
    assert_eq!(
        k["limits"],
        json!([
            {"name": "burst", "limit": 10, "duration": 1000},
            {"name": "hourly", "limit": 1000, "duration": 3_600_000},
        ])
    );

    // GET, the list and past state show the same policy.
    let shown = get(&s, &admin, &id);
    for field in ["meta", "credits", "limits"] {
        assert_eq!(shown[field], k[field], "{field}");
    }
    let list = s.get("/v1/keys?q=metered").bearer(&admin).send().json();
    assert_eq!(list["keys"][0]["limits"], k["limits"], "{list}");
    assert_eq!(list["keys"][0]["meta"], k["meta"]);
    let state = s.get("/v1/state?at=2").bearer(&admin).send().json();
    let past = state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{state}"))
        .clone();
    assert_eq!(past["credits"]["remaining"], 1000, "{past}");

    // A key without a policy shows none.
    let plain = create(&s, &admin, json!({"name": "plain"}));
    assert_eq!(plain["meta"], Value::Null);
    assert_eq!(plain["credits"], Value::Null);
    assert_eq!(plain["limits"], json!([]));
}

#[test]
fn patch_changes_each_field_and_answers_the_key_as_get_shows_it() {
    let (_d, s, admin) = setup();
    let k = create(
        &s,
        &admin,
        json!({"name": "svc", "description": "old", "scopes": ["keys:read", "audit:read"],
               "expires_at": super::in_seconds(86_400)}),
    );
    let id = text(&k, "id");
    let sooner = super::in_seconds(3_600);
    let steps = [
        json!({"name": "  renamed  "}),
        json!({"description": "new words"}),
        json!({"description": null}),
        json!({"meta": {"team": "payments"}}),
        json!({"meta": null}),
        json!({"expires_at": sooner}),
        json!({"expires_at": null}),
        json!({"scopes": ["keys:read"]}),
        json!({"credits": {"remaining": 5, "refill": {"amount": 5, "interval": "daily"}}}),
        json!({"credits": null}),
        json!({"limits": [{"name": "burst", "limit": 3, "duration": 1000}]}),
        json!({"limits": []}),
        json!({"name": "svc-2", "meta": {"a": 1}, "limits": null, "credits": {"remaining": 7}}),
    ];
    for body in &steps {
        let r = patch(&s, &admin, &id, body);
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let answered = r.json();
        assert_eq!(answered, get(&s, &admin, &id), "{body}");
    }
    let k = get(&s, &admin, &id);
    assert_eq!(k["name"], "svc-2");
    assert_eq!(k["description"], Value::Null);
    assert_eq!(k["expires_at"], Value::Null);
    assert_eq!(k["scopes"], json!(["keys:read"]));
    assert_eq!(k["meta"], json!({"a": 1}));
    assert_eq!(k["credits"], json!({"remaining": 7, "refill": null}));
    assert_eq!(k["limits"], json!([]));
    // One `KeyUpdated` per successful change, none for anything else.
    assert_eq!(updates(&s, &admin).len(), steps.len());
}

/// Sends a PATCH that must be refused: its status, its code, a message
/// naming `names`, and afterwards the key and the trail as they were.
#[track_caller]
fn refused(
    s: &Server,
    by: &str,
    admin: &str,
    id: &str,
    body: &Value,
    want: (u16, &str),
    names: &str,
) {
    let before = s.get(&format!("/v1/keys/{id}")).bearer(admin).send().text();
    let trail = updates(s, admin).len();
    let r = patch(s, by, id, body);
    r.error(want.0, want.1);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(names),
        "{body}: `{names}` not in {message}"
    );
    let after = s.get(&format!("/v1/keys/{id}")).bearer(admin).send().text();
    assert_eq!(before, after, "{body} changed the key");
    assert_eq!(updates(s, admin).len(), trail, "{body} wrote an event");
}

#[test]
fn every_refusal_has_its_status_and_changes_nothing() {
    let (_d, s, admin) = setup();
    let k = create(
        &s,
        &admin,
        json!({"name": "target", "scopes": ["keys:read", "audit:read"],
               "expires_at": super::in_seconds(86_400)}),
    );
    let id = text(&k, "id");

    // The shape (400) and the rules (422), each naming the field.
    let bad: [(Value, (u16, &str), &str); 16] = [
        (json!({"nmae": "x"}), (400, "invalid_body"), "nmae"),
        (json!({"name": null}), (400, "invalid_body"), "name"),
        (json!({"scopes": null}), (400, "invalid_body"), "scopes"),
        (json!({"meta": [1, 2]}), (400, "invalid_body"), "meta"),
        (
            json!({"credits": {"remaining": -1}}),
            (400, "invalid_body"),
            "credits.remaining",
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "weekly"}}}),
            (400, "invalid_body"),
            "credits.refill.interval",
        ),
        (
            json!({"limits": [{"name": "a", "limit": 1}]}),
            (400, "invalid_body"),
            "duration",
        ),
        (json!({}), (422, "invalid_field"), "names no field"),
        (json!({"name": "   "}), (422, "invalid_field"), "name"),
        (
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            (422, "invalid_field"),
            "expires_at",
        ),
        (json!({"scopes": []}), (422, "invalid_field"), "scopes"),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "daily", "day": 2}}}),
            (422, "invalid_field"),
            "credits.refill.day",
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 0, "interval": "daily"}}}),
            (422, "invalid_field"),
            "credits.refill.amount",
        ),
        (
            json!({"limits": [{"name": "a", "limit": 1, "duration": 1000}, {"name": "a", "limit": 2, "duration": 1000}]}),
            (422, "invalid_field"),
            "limits[1].name",
        ),
        (
            json!({"limits": [{"name": "Bad Name", "limit": 1, "duration": 1000}]}),
            (422, "invalid_field"),
            "limits[0].name",
        ),
        (
            json!({"meta": {"blob": "x".repeat(5000)}}),
            (422, "invalid_field"),
            "meta",
        ),
    ];
    for (body, want, names) in &bad {
        refused(&s, &admin, &admin, &id, body, *want, names);
    }
    // Setting a field to what it is: no change.
    refused(
        &s,
        &admin,
        &admin,
        &id,
        &json!({"name": "target"}),
        (422, "no_change"),
        "changes nothing",
    );

    // Widening beyond what the caller could grant: 403, as create refuses a scope.
    let narrow = create(
        &s,
        &admin,
        json!({"name": "narrow", "scopes": ["keys:read", "keys:write"]}),
    );
    let narrow_key = text(&narrow, "key");
    refused(
        &s,
        &narrow_key,
        &admin,
        &id,
        &json!({"scopes": ["keys:read", "usage:read"]}),
        (403, "forbidden"),
        "scope",
    );
    refused(
        &s,
        &narrow_key,
        &admin,
        &id,
        &json!({"expires_at": null}),
        (403, "forbidden"),
        "expir",
    );
    refused(
        &s,
        &narrow_key,
        &admin,
        &id,
        &json!({"expires_at": super::in_seconds(2 * 86_400)}),
        (403, "forbidden"),
        "expir",
    );
    // Narrowing is anyone's with keys:write.
    assert_eq!(
        patch(&s, &narrow_key, &id, &json!({"scopes": ["keys:read"]})).status,
        200
    );
    // Without keys:write: 403 insufficient_scope.
    let reader = create(
        &s,
        &admin,
        json!({"name": "reader", "scopes": ["keys:read"]}),
    );
    refused(
        &s,
        &text(&reader, "key"),
        &admin,
        &id,
        &json!({"name": "x"}),
        (403, "insufficient_scope"),
        "keys:write",
    );

    // Another tenant's id is not found, exactly as GET says.
    let other = s.mint(
        "globex",
        json!({"user": "gina", "name": "theirs", "scopes": ALL}),
    );
    let theirs = text(&other, "id");
    let r = patch(&s, &admin, &theirs, &json!({"name": "mine now"}));
    r.error(404, "key_not_found");
    let g = s.get(&format!("/v1/keys/{theirs}")).bearer(&admin).send();
    assert_eq!(r.json(), g.json(), "answered as GET answers it");
    assert_eq!(get(&s, &text(&other, "key"), &theirs)["name"], "theirs");

    // A revoked key changes no more: 409.
    let r = s
        .post(&format!("/v1/keys/{id}/revoke"))
        .bearer(&admin)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    refused(
        &s,
        &admin,
        &admin,
        &id,
        &json!({"name": "after"}),
        (409, "already_revoked"),
        &id,
    );
}

#[test]
fn the_trail_shows_each_change_before_and_after_in_json_and_csv() {
    let (_d, s, admin) = setup();
    let k = create(
        &s,
        &admin,
        json!({"name": "before", "limits": [{"name": "burst", "limit": 1, "duration": 1000}]}),
    );
    let id = text(&k, "id");
    let r = patch(
        &s,
        &admin,
        &id,
        &json!({"name": "after", "meta": {"x": 1}, "limits": []}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let [entry] = updates(&s, &admin).try_into().unwrap();
    assert_eq!(entry["key_id"], id.as_str(), "{entry}");
    assert_eq!(entry["actor"]["display"], "API Key: admin", "{entry}");
    let changes = &entry["details"]["changes"];
    assert_eq!(
        changes["name"],
        json!({"before": "before", "after": "after"}),
        "{entry}"
    );
    assert_eq!(
        changes["meta"],
        json!({"before": null, "after": {"x": 1}}),
        "{entry}"
    );
    assert_eq!(
        changes["limits"]["before"],
        json!([{"name": "burst", "limit": 1, "duration": 1000}])
    );
    assert_eq!(changes["limits"]["after"], json!([]));
    assert!(
        changes.get("description").is_none(),
        "only what changed: {entry}"
    );

    let csv = s
        .get("/v1/audit/export?format=csv&type=KeyUpdated")
        .bearer(&admin)
        .send()
        .text();
    assert!(
        csv.contains("KeyUpdated") && csv.contains("before") && csv.contains("after"),
        "{csv}"
    );
    // The key's history has it too.
    let history = s
        .get(&format!("/v1/keys/{id}/history"))
        .bearer(&admin)
        .send()
        .json();
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "KeyUpdated"),
        "{history}"
    );
}

/// `keyledger` against the server with an API key.
fn cli(s: &Server, key: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["--url", &format!("http://{}", s.addr)])
        .args(args)
        .env_clear()
        .env("KEYLEDGER_API_KEY", key)
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[test]
fn the_cli_creates_and_updates_keys_with_a_policy_on_a_server_and_offline() {
    // Offline, on a data directory.
    let d = Data::new();
    let acme = ["--tenant", "acme"];
    let mut args = vec![
        "keys",
        "create",
        "--user",
        "alice",
        "--name",
        "cli",
        "--meta",
        r#"{"plan":"pro"}"#,
        "--credits",
        "100",
        "--refill",
        "1000/monthly@15",
        "--limit",
        "burst=10/1s",
        "--limit",
        "hourly=500/1h",
    ];
    args.extend(acme);
    let k = d.json(&args);
    assert_eq!(
        k["credits"]["refill"],
        json!({"amount": 1000, "interval": "monthly", "day": 15,
        "next_at": k["credits"]["refill"]["next_at"]}),
        "{k}"
    );
    assert_eq!(
        k["limits"][1],
        json!({"name": "hourly", "limit": 500, "duration": 3_600_000})
    );
    let id = text(&k, "id");
    let mut args = vec![
        "keys",
        "update",
        &id,
        "--name",
        "cli-2",
        "--clear-meta",
        "--no-credits",
        "--limit",
        "burst=5/100ms",
    ];
    args.extend(acme);
    let u = d.json(&args);
    assert_eq!(u["name"], "cli-2", "{u}");
    assert_eq!(u["meta"], Value::Null);
    assert_eq!(u["credits"], Value::Null);
    assert_eq!(
        u["limits"],
        json!([{"name": "burst", "limit": 5, "duration": 100}])
    );
    let shown = d.ok(&["keys", "show", &id, "--tenant", "acme"]);
    assert!(shown.contains("burst 5/100ms"), "{shown}");
    // The trail, as the CLI prints it: each field before and after.
    let trail = d.ok(&["audit", "list", "--tenant", "acme", "--type", "KeyUpdated"]);
    for change in [
        r#"name "cli" → "cli-2""#,
        r#"meta {"plan":"pro"} → none"#,
        "credits 100, refilled to 1000 monthly on day 15 → none",
        "limits burst=10/1s, hourly=500/1h → burst=5/100ms",
    ] {
        assert!(trail.contains(change), "`{change}` not in {trail}");
    }
    // Refusals are the API's words, naming the field.
    let mut args = vec![
        "keys", "update", &id, "--limit", "a=1/1s", "--limit", "a=2/1s",
    ];
    args.extend(acme);
    let out = d.run(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limits[1].name"),
        "{out:?}"
    );
    let out = d.run(&["keys", "update", &id, "--tenant", "acme"]);
    assert!(!out.status.success(), "an update naming nothing");

    // Against a server, with an API key: the same bodies.
    let (_d2, s, admin) = setup();
    let out = cli(
        &s,
        &admin,
        &[
            "--json",
            "keys",
            "create",
            "--name",
            "remote",
            "--credits",
            "3",
            "--limit",
            "burst=2/1s",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let k: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(k["credits"], json!({"remaining": 3, "refill": null}), "{k}");
    let id = text(&k, "id");
    let out = cli(
        &s,
        &admin,
        &[
            "--json",
            "keys",
            "update",
            &id,
            "--description",
            "d",
            "--no-limits",
            "--meta",
            r#"{"a":[1]}"#,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let u: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u, get(&s, &admin, &id));
    assert_eq!(u["limits"], json!([]));
    assert_eq!(u["meta"], json!({"a": [1]}));
    let out = cli(&s, &admin, &["keys", "update", &id, "--description", "d"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_change"),
        "{out:?}"
    );
}

/// `keyledger verify` prints what the API answers for a key with a
/// policy: credits left and each rate limit, offline and against a server,
/// and spends `--cost`.
#[test]
fn the_cli_verify_shows_credits_and_limits_offline_and_on_a_server() {
    let d = Data::new();
    let k = d.json(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--name",
        "metered",
        "--credits",
        "10",
        "--limit",
        "burst=3/1m",
    ]);
    let key = text(&k, "key");
    let v = d.json(&["verify", &key, "--cost", "4"]);
    assert_eq!(v["outcome"], "valid", "{v}");
    assert_eq!(v["credits_remaining"], 6, "{v}");
    assert_eq!(v["ratelimits"][0]["name"], "burst", "{v}");
    assert_eq!(v["ratelimits"][0]["remaining"], 2, "{v}");
    // Cost 0 checks without spending; the text names both.
    let shown = d.ok(&["verify", &key, "--cost", "0"]);
    assert!(shown.contains("credits remaining: 6"), "{shown}");
    assert!(
        shown.contains("rate limit burst: 2 of 3 left, reset "),
        "{shown}"
    );
    // More than is left: refused (exit 1), nothing spent.
    let out = d.run(&["--json", "verify", &key, "--cost", "7"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "usage_exceeded", "{v}");
    assert_eq!(v["credits_remaining"], 6, "{v}");
    let out = d.run(&["verify", &key, "--cost", "-1"]);
    assert!(!out.status.success(), "{out:?}");
    // A plain key prints as before.
    let plain = d.json(&[
        "keys", "create", "--tenant", "acme", "--user", "alice", "--name", "p",
    ]);
    let shown = d.ok(&["verify", &text(&plain, "key")]);
    assert_eq!(shown.trim().lines().count(), 1, "{shown}");

    // Against a server: the same answer.
    let (_d2, s, admin) = setup();
    let out = cli(
        &s,
        &admin,
        &[
            "--json",
            "keys",
            "create",
            "--name",
            "remote",
            "--credits",
            "3",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let k: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = cli(
        &s,
        &admin,
        &["--json", "verify", &text(&k, "key"), "--cost", "2"],
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["credits_remaining"], 1, "{v}");
    assert!(v.get("ratelimits").is_none(), "{v}");
    let out = cli(&s, &admin, &["verify", &text(&k, "key"), "--cost", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.starts_with("usage_exceeded: key_"), "{shown}");
    assert!(shown.contains("credits remaining: 1"), "{shown}");
}
