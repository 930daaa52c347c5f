//! Key policy against the real binary over HTTP (issue 14): credits spent
//! by many concurrent clients add up exactly, and a management call by a
//! key over its rate limit is 429 with `Retry-After`. The two-node figures
//! are in `nodes.rs` (they need PostgreSQL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::live::{Live, TOKEN, request};
use crate::util::Data;

/// Mints a key in `acme` for `ada` with `policy` (create-body fields).
fn mint(live: &Live, policy: Value) -> (String, String) {
    let mut body = json!({"user": "ada", "name": "metered", "scopes": ["keys:read"]});
    for (k, v) in policy.as_object().unwrap() {
        body[k] = v.clone();
    }
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        &live.addr,
        "POST",
        "/v1/admin/tenants/acme/keys",
        &[("Authorization", &auth)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

fn verify(addr: &str, key: &str) -> Value {
    let r = request(
        addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({ "key": key })),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// 64 clients verify one key with 1,000 credits until each is told
/// `usage_exceeded`: exactly 1,000 answers are `valid`, and the usage
/// rollup counts 1,000 credits spent.
#[test]
fn sixty_four_clients_get_exactly_a_thousand_valid_answers() {
    let data = Data::new();
    let live = Live::start(&data.path(), 50);
    let (key_id, key) = mint(&live, json!({"credits": {"remaining": 1000}}));
    let valid = Arc::new(AtomicU64::new(0));
    let exceeded = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..64 {
            let (valid, exceeded, addr, key) = (&valid, &exceeded, &live.addr, &key);
            s.spawn(move || {
                loop {
                    let v = verify(addr, key);
                    match v["outcome"].as_str().unwrap() {
                        "valid" => {
                            valid.fetch_add(1, Ordering::Relaxed);
                        }
                        "usage_exceeded" => {
                            assert_eq!(v["valid"], false);
                            assert_eq!(v["credits_remaining"], 0);
                            exceeded.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        other => panic!("unexpected outcome {other}: {v}"),
                    }
                }
            });
        }
    });
    assert_eq!(valid.load(Ordering::Relaxed), 1000);
    assert_eq!(exceeded.load(Ordering::Relaxed), 64);
    // The rollups count what was spent, once the window has written it.
    let auth = format!("Bearer {TOKEN}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = request(
            &live.addr,
            "GET",
            &format!("/v1/usage?key_id={key_id}"),
            &[("Authorization", &auth), ("Keyledger-Tenant", "acme")],
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let sum = |field: &str| -> u64 {
            body["days"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d[field].as_u64().unwrap_or(0))
                .sum()
        };
        let (spent, exceeded) = (sum("credits_spent"), sum("usage_exceeded"));
        assert!(spent <= 1000, "{spent} credits spent: {body}");
        if spent == 1000 && exceeded == 64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollup never showed 1,000 credits spent and 64 refusals: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    live.stop();
}

/// The verify answer of a key with credits and limits carries them; a
/// plain key's answer is as before (no new fields).
#[test]
fn the_verify_answer_carries_credits_and_limits() {
    let data = Data::new();
    let live = Live::start(&data.path(), 50);
    let (_, key) = mint(
        &live,
        json!({"credits": {"remaining": 10}, "limits": [
            {"name": "burst", "limit": 3, "duration": 60000},
            {"name": "daily", "limit": 100, "duration": 86400000},
        ]}),
    );
    let r = request(
        &live.addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({"key": key, "cost": 4})),
    )
    .unwrap();
    let v = r.json();
    assert_eq!(v["outcome"], "valid", "{v}");
    assert_eq!(v["credits_remaining"], 6, "{v}");
    assert_eq!(v["ratelimits"][0]["name"], "burst");
    assert_eq!(v["ratelimits"][0]["limit"], 3);
    assert_eq!(v["ratelimits"][0]["remaining"], 2);
    assert_eq!(v["ratelimits"][1]["remaining"], 99);
    assert!(v["ratelimits"][0]["reset"].as_str().unwrap().ends_with('Z'));
    // Cost 0 checks without spending; a cost over what is left is refused
    // and spends nothing.
    let r = request(
        &live.addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({"key": key, "cost": 0})),
    )
    .unwrap();
    assert_eq!(r.json()["credits_remaining"], 6);
    let r = request(
        &live.addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({"key": key, "cost": 7})),
    )
    .unwrap();
    let v = r.json();
    assert_eq!(v["outcome"], "usage_exceeded", "{v}");
    assert_eq!(v["credits_remaining"], 6);
    assert_eq!(v["ratelimits"][0]["remaining"], 0);
    // The burst of 3 is used up: refused before credits are looked at.
    let v = verify(&live.addr, &key);
    assert_eq!(v["outcome"], "rate_limited", "{v}");
    assert_eq!(v["valid"], false);
    assert_eq!(v["credits_remaining"], 6);
    assert_eq!(v["ratelimits"].as_array().unwrap().len(), 1, "{v}");
    // A bad cost is the client's error.
    let r = request(
        &live.addr,
        "POST",
        "/v1/verify",
        &[],
        Some(&json!({"key": key, "cost": -1})),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // A plain key answers exactly the fields it always did.
    let (_, plain) = mint(&live, json!({}));
    let v = verify(&live.addr, &plain);
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "expires_at",
            "key_id",
            "outcome",
            "owner",
            "scopes",
            "tenant_id",
            "valid"
        ]
    );
    live.stop();
}

/// A management call by a key over one of its rate limits: 429
/// `rate_limited` with `Retry-After`, in the error format of every route.
#[test]
fn a_rate_limited_key_gets_429_with_retry_after_on_management_calls() {
    let data = Data::new();
    let live = Live::start(&data.path(), 50);
    let (_, key) = mint(
        &live,
        json!({"limits": [{"name": "burst", "limit": 2, "duration": 30000}]}),
    );
    let auth = format!("Bearer {key}");
    for _ in 0..2 {
        let r = request(
            &live.addr,
            "GET",
            "/v1/keys",
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let raw = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&live.addr).unwrap();
        write!(
            s,
            "GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    let lower = raw.to_ascii_lowercase();
    let retry: u64 = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no Retry-After: {raw}"));
    // One of two cells comes back every 15 s.
    assert!((1..=15).contains(&retry), "Retry-After {retry}");
    assert!(raw.contains("\"code\":\"rate_limited\""), "{raw}");
    live.stop();
}
