//! Positions shown to a tenant are its own: a tenant's answers hold no
//! number that tells how busy the other tenants are (docs/api.md,
//! "Positions").
//!
//! The same script for tenant `acme` runs twice, once alone and once with
//! tenant `globex` writing before it and between each of its steps; acme's
//! answers, with ids, secrets, hashes, signatures and times taken out, must
//! be the same in both runs, number for number.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Options, Server};
use crate::util::Data;

/// A window far longer than the test: uses are written only at a stop, so
/// acme's trail does not depend on when a flush happened to run.
const WINDOW_MS: u64 = 3_600_000;

const ALL_SCOPES: [&str; 5] = [
    "keys:read",
    "keys:write",
    "audit:read",
    "usage:read",
    "users:remove",
];

/// What acme is answered, step by step, with what differs between any two
/// runs (ids, secrets, hashes, signatures, times) replaced.
struct Answers {
    steps: Vec<(String, Value)>,
    ids: HashMap<String, usize>,
}

impl Answers {
    fn record(&mut self, step: &str, status: u16, body: Value) {
        let body = self.normalize(body, false);
        self.steps
            .push((step.to_owned(), json!({ "status": status, "body": body })));
    }

    /// A CSV body: the header and every cell, normalized like JSON.
    fn record_csv(&mut self, step: &str, status: u16, text: &str) {
        let mut rows = Vec::new();
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        for row in r.records() {
            let row = row.expect("CSV");
            let cells: Vec<Value> = row
                .iter()
                .map(|cell| match serde_json::from_str::<Value>(cell) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => Value::String(cell.to_owned()),
                })
                .collect();
            rows.push(Value::Array(cells));
        }
        self.record(step, status, Value::Array(rows));
    }

    /// A JSON Lines body.
    fn record_jsonl(&mut self, step: &str, status: u16, text: &str) {
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        self.record(step, status, Value::Array(lines));
    }

    fn normalize(&mut self, v: Value, opaque: bool) -> Value {
        match v {
            Value::String(s) if opaque => {
                Value::String(if s.is_empty() { s } else { "…".into() })
            }
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(a) => {
                Value::Array(a.into_iter().map(|v| self.normalize(v, opaque)).collect())
            }
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| {
                        // Secrets and what is derived from the ids, times
                        // and secrets (hashes, roots, proofs, signed notes,
                        // stored bytes): their shape is kept, their text not.
                        let opaque = opaque
                            || matches!(
                                k.as_str(),
                                "key"
                                    | "masked"
                                    | "hash"
                                    | "prev_hash"
                                    | "head_hash"
                                    | "root"
                                    | "from_root"
                                    | "to_root"
                                    | "leaf"
                                    | "proof"
                                    | "range_proof"
                                    | "note"
                                    | "checkpoint"
                                    | "earlier_checkpoints"
                                    | "payload"
                            );
                        // How many checkpoints were stored before a
                        // bundle depends on when the checkpointer ran.
                        if k == "earlier_checkpoints" {
                            return (k, Value::String("EARLIER_CHECKPOINTS".into()));
                        }
                        let v = self.normalize(v, opaque);
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// Key ids become `key#<n>`, numbered by first appearance in the run
    /// (so an id that names the same key in two answers still does);
    /// times and days become `TIME` and `DAY`; hex hashes `HASH`.
    fn text(&mut self, s: &str) -> String {
        if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
            return "TIME".into();
        }
        if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
            return "DAY".into();
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return "HASH".into();
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("key_") {
            out.push_str(&rest[..at]);
            let id_len = 4 + 26;
            let candidate = rest.get(at..at + id_len);
            match candidate.filter(|c| c[4..].bytes().all(|b| b.is_ascii_alphanumeric())) {
                Some(id) => {
                    let n = self.ids.len();
                    let n = *self.ids.entry(id.to_owned()).or_insert(n);
                    out.push_str(&format!("key#{n}"));
                    rest = &rest[at + id_len..];
                }
                None => {
                    out.push_str("key_");
                    rest = &rest[at + 4..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// globex's traffic: creates, revokes and verifications with its own key.
fn globex_writes(s: &Server, key: &str, round: usize) {
    for i in 0..6 {
        let r = s
            .post("/v1/keys")
            .bearer(key)
            .json(&json!({"name": format!("g{round}-{i}")}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
        let created = r.json();
        if i % 2 == 0 {
            let id = created["id"].as_str().unwrap();
            let r = s.post(&format!("/v1/keys/{id}/revoke")).bearer(key).send();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = s
            .post("/v1/verify")
            .json(&json!({"key": created["key"]}))
            .send();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// The script of acme: every tenant-facing route that holds a number,
/// with globex writing between the steps when `busy` is set.
fn run(busy: bool) -> Answers {
    let d = Data::new();
    let start = || {
        Server::start(
            &d,
            Options {
                usage_window_ms: WINDOW_MS,
                // One event per read: how reads coalesce depends on timing
                // (tested in http::a_flood_of_audit_reads_…), and the two
                // runs must write the same events.
                audit_read_window_ms: Some(0),
                ..Options::default()
            },
        )
    };
    let mut s = start();
    let mut a = Answers {
        steps: Vec::new(),
        ids: HashMap::new(),
    };
    let globex = busy.then(|| {
        let g = s.mint("globex", json!({"user": "gina", "name": "globex admin"}));
        g["key"].as_str().unwrap().to_owned()
    });
    let mut round = 0;
    let mut between = |s: &Server| {
        if let Some(g) = &globex {
            globex_writes(s, g, round);
            round += 1;
        }
    };
    between(&s);

    let admin = s.mint(
        "acme",
        json!({"user": "alice", "name": "acme admin", "scopes": ALL_SCOPES}),
    );
    a.record("mint admin", 201, admin.clone());
    let key = admin["key"].as_str().unwrap().to_owned();
    let dave = s.mint("acme", json!({"user": "dave", "name": "dave's"}));
    a.record("mint dave's", 201, dave);
    between(&s);

    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let r = s
            .post("/v1/keys")
            .bearer(&key)
            .json(&json!({"name": name}))
            .send();
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
        a.record(&format!("create {name}"), r.status, r.json());
        between(&s);
    }
    let r = s
        .post(&format!("/v1/keys/{}/revoke", ids[0]))
        .bearer(&key)
        .send();
    a.record("revoke one", r.status, r.json());
    between(&s);
    let r = s
        .post(&format!("/v1/keys/{}/revoke?wait=all-nodes", ids[1]))
        .bearer(&key)
        .send();
    a.record("revoke two, all nodes", r.status, r.json());
    let r = s
        .post(&format!("/v1/keys/{}/revoke", ids[1]))
        .bearer(&key)
        .send();
    a.record("revoke two again", r.status, r.json());
    between(&s);
    let r = s
        .post(&format!("/v1/keys/{}/rotate", ids[2]))
        .bearer(&key)
        .send();
    a.record("rotate three", r.status, r.json());
    between(&s);
    let r = s.delete("/v1/users/dave").bearer(&key).send();
    a.record("remove dave", r.status, r.json());
    between(&s);
    for _ in 0..3 {
        let r = s.post("/v1/verify").json(&json!({"key": key})).send();
        a.record("verify", r.status, r.json());
    }

    // A stop writes every counted use: acme's `KeyUsed` events land at the
    // same places of its trail in both runs.
    s.stop();
    s = start();
    between(&s);

    let get = |a: &mut Answers, s: &Server, path: &str| {
        let r = s.get(path).bearer(&key).send();
        a.record(path, r.status, r.json());
        r.json()
    };
    get(&mut a, &s, "/v1/whoami");
    get(&mut a, &s, "/v1/keys");
    get(&mut a, &s, &format!("/v1/keys/{}", ids[0]));
    between(&s);
    let trail = get(&mut a, &s, "/v1/audit?include_usage=true");
    let page = get(&mut a, &s, "/v1/audit?limit=2");
    get(
        &mut a,
        &s,
        &format!(
            "/v1/audit?limit=2&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ),
    );
    get(&mut a, &s, &format!("/v1/keys/{}/history", ids[0]));
    between(&s);
    for at in ["0", "2", "7", "1000000"] {
        get(&mut a, &s, &format!("/v1/state?at={at}"));
    }
    get(&mut a, &s, "/v1/state?at=2999-01-01T00:00:00Z");
    get(&mut a, &s, "/v1/audit/verify");
    between(&s);
    for path in [
        "/v1/audit/export?include_usage=true",
        "/v1/audit/export?format=jsonl",
    ] {
        let r = s.get(path).bearer(&key).send();
        a.record_jsonl(path, r.status, &r.text());
    }
    let r = s
        .get("/v1/audit/export?format=csv&include_usage=true")
        .bearer(&key)
        .send();
    a.record_csv("audit csv", r.status, &r.text());
    between(&s);
    get(&mut a, &s, "/v1/usage");
    get(&mut a, &s, "/v1/usage/summary");
    let r = s.get("/v1/usage/export").bearer(&key).send();
    a.record_csv("usage csv", r.status, &r.text());
    let r = s.get("/v1/usage/export?format=jsonl").bearer(&key).send();
    a.record_jsonl("usage jsonl", r.status, &r.text());
    get(&mut a, &s, "/v1/audit/checkpoint");
    get(&mut a, &s, "/v1/audit/proof/inclusion?position=3");
    get(&mut a, &s, "/v1/audit/proof/consistency?from=2");
    let r = s.get("/v1/audit/bundle?from=2&to=5").bearer(&key).send();
    a.record_jsonl("bundle", r.status, &r.text());
    between(&s);
    // The last word: the whole trail, with every read above recorded in it.
    let last = get(&mut a, &s, "/v1/audit?include_usage=true&limit=1000");

    // acme's positions are its own events, 1..n, whatever globex did.
    for page in [&trail, &last] {
        let events = page["events"].as_array().unwrap();
        for (i, e) in events.iter().enumerate() {
            let n = i as u64 + 1;
            assert_eq!(
                (e["position"].as_u64(), e["seq"].as_u64()),
                (Some(n), Some(n)),
                "{e}"
            );
        }
    }
    let head = s.head();
    let acme_events = last["events"].as_array().unwrap().len() as u64;
    if busy {
        // globex's traffic was real: most of the log is its.
        assert!(
            head > 3 * acme_events,
            "log head {head}, acme's events {acme_events}"
        );
    } else {
        // acme is the only tenant: the log is its trail (and the one read
        // after the last page).
        assert_eq!(head, acme_events + 1, "log head");
    }
    s.stop();
    a
}

#[test]
fn a_tenants_answers_hold_no_number_that_shows_another_tenants_activity() {
    let alone = run(false);
    let busy = run(true);
    assert_eq!(alone.steps.len(), busy.steps.len());
    for ((step, quiet), (_, loud)) in alone.steps.iter().zip(&busy.steps) {
        assert_eq!(
            quiet, loud,
            "acme's answer to `{step}` differs when globex writes meanwhile"
        );
    }
}
