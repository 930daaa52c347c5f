//! A key's history and the point-in-time state, answered from the store's
//! per-key index (issue 13): the history through a user's removal (its
//! cascade) and a rotation, `/v1/state` in pages with `limit` and
//! `cursor` equal to the whole answer, and another tenant's key id not
//! found.

use serde_json::{Value, json};

use super::{Options, Server};
use crate::util::Data;

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

fn types(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {page}"))
        .iter()
        .map(|e| text(e, "type"))
        .collect()
}

fn ids(keys: &Value) -> Vec<String> {
    keys.as_array()
        .unwrap_or_else(|| panic!("not a list: {keys}"))
        .iter()
        .map(|k| text(k, "id"))
        .collect()
}

#[test]
fn history_through_a_cascade_and_a_rotation_and_the_state_in_pages() {
    let d = Data::new();
    let s = Server::start(&d, Options::default());
    let admin = text(
        &s.mint(
            "acme",
            json!({"user": "alice", "name": "admin", "scopes": ALL}),
        ),
        "key",
    );
    let bobs = s.mint("acme", json!({"user": "bob", "name": "Bob's"}));
    let worker = s.mint("acme", json!({"user": "alice", "name": "Worker"}));
    for n in 0..6 {
        s.mint(
            "acme",
            json!({"user": "carol", "name": format!("spare {n}")}),
        );
    }
    let other = s.mint("globex", json!({"user": "gus", "name": "Globex's"}));

    // A rotation with grace: KeyRotated about the old key, KeyCreated of
    // the new one (which names the old one).
    let r = s
        .post(&format!("/v1/keys/{}/rotate", text(&worker, "id")))
        .bearer(&admin)
        .json(&json!({"grace_seconds": 3600}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let successor = r.json();
    // Bob's removal revokes his key in the same append (the cascade).
    let r = s.delete("/v1/users/bob").bearer(&admin).send();
    assert_eq!(r.status, 200, "{}", r.text());

    let history = |id: &str, q: &str| {
        let r = s
            .get(&format!("/v1/keys/{id}/history{q}"))
            .bearer(&admin)
            .send();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let bob_history = history(&text(&bobs, "id"), "");
    assert_eq!(types(&bob_history), ["KeyCreated", "KeyRevoked"]);
    let revoked = &bob_history["events"][1];
    assert_eq!(revoked["actor"]["type"], "system", "{revoked}");
    assert_eq!(bob_history["next_cursor"], Value::Null);
    // The old key's history is the events about it: not its successor's
    // creation, though the index lists that under it too.
    let worker_history = history(&text(&worker, "id"), "");
    assert_eq!(types(&worker_history), ["KeyCreated", "KeyRotated"]);
    let successor_history = history(&text(&successor, "id"), "");
    assert_eq!(types(&successor_history), ["KeyCreated"]);
    // Paged by one: the same events, each page with a cursor while the
    // tenant's trail goes on (as the trail's own pages).
    let first = history(&text(&worker, "id"), "?limit=1");
    assert_eq!(types(&first), ["KeyCreated"]);
    let cursor = text(&first, "next_cursor");
    let second = history(&text(&worker, "id"), &format!("?limit=1&cursor={cursor}"));
    assert_eq!(types(&second), ["KeyRotated"]);
    assert_eq!(
        second["events"][0]["position"],
        worker_history["events"][1]["position"]
    );
    // Another tenant's key id: not found, as before.
    let r = s
        .get(&format!("/v1/keys/{}/history", text(&other, "id")))
        .bearer(&admin)
        .send();
    assert_eq!(r.status, 404, "{}", r.text());

    // The state now, whole, and in pages of 3 that add up to it. (Reads
    // of the trail append `AuditRead`s: the pages ask for one position.)
    let now = s
        .get("/v1/state?at=2999-01-01T00:00:00Z")
        .bearer(&admin)
        .send();
    assert_eq!(now.status, 200, "{}", now.text());
    let head = now.json()["position"].as_u64().unwrap_or_default();
    let whole = s.get(&format!("/v1/state?at={head}")).bearer(&admin).send();
    assert_eq!(whole.status, 200, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["position"], head);
    assert!(
        whole.get("next_cursor").is_none(),
        "no cursor without a limit: {whole}"
    );
    let all = ids(&whole["keys"]);
    assert_eq!(
        all.len(),
        10,
        "admin, Bob's, Worker, six spares, the successor"
    );
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "in key-id order");
    assert!(!all.contains(&text(&other, "id")), "only the tenant's keys");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = match &cursor {
            None => format!("/v1/state?at={head}&limit=3"),
            Some(c) => format!("/v1/state?at={head}&limit=3&cursor={c}"),
        };
        let page = s.get(&q).bearer(&admin).send();
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        assert_eq!(page["position"], whole["position"]);
        assert!(page["keys"].as_array().is_some_and(|k| k.len() <= 3));
        paged.extend(page["keys"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        Value::Array(paged),
        whole["keys"],
        "the pages are the whole, key for key"
    );
    let bob_now = whole["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == bobs["id"]))
        .cloned()
        .unwrap_or_else(|| panic!("Bob's key in {whole}"));
    assert_eq!(bob_now["status"], "revoked");

    // At the position before the rotation (its first event creates the
    // successor): no successor, Worker not rotated.
    let before = successor_history["events"][0]["position"]
        .as_u64()
        .unwrap_or_default()
        - 1;
    let then = s
        .get(&format!("/v1/state?at={before}&limit=1000"))
        .bearer(&admin)
        .send();
    assert_eq!(then.status, 200, "{}", then.text());
    let then = then.json();
    assert_eq!(then["position"], before);
    assert!(!ids(&then["keys"]).contains(&text(&successor, "id")));
    let worker_then = then["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == worker["id"]))
        .cloned()
        .unwrap_or_else(|| panic!("Worker in {then}"));
    assert_eq!(worker_then["status"], "active");
    assert_eq!(worker_then["rotated_to"], Value::Null, "{worker_then}");

    // A bad cursor or limit is a 400 and nothing else.
    for q in [
        "/v1/state?at=1&limit=0",
        "/v1/state?at=1&limit=1001",
        "/v1/state?at=1&cursor=kzz",
        "/v1/state?at=1&cursor=k00000000000000000000000000000000ff",
    ] {
        let r = s.get(q).bearer(&admin).send();
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
}
