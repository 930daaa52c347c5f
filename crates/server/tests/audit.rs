//! The audit evidence routes in process: signed checkpoint, proofs, a
//! bundle that verifies offline, the public key, the OpenAPI entries; bad
//! input (400 in the error format, nothing recorded), tenant isolation,
//! and every read of the trail recorded as an `AuditRead` event.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keyledger_runtime::{AuditConfig, Config, Keyledger, OsEntropy, SystemClock, UsageWindow};
use keyledger_server::{AppState, OperatorToken, app};
use keyledger_store::MemoryLog;
use serde_json::{Value, json};
use tower::ServiceExt;

const OPERATOR: &str = "operator-token-for-the-audit-route-tests";

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_routes_serve_verifiable_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Keyledger::open_with(
        Arc::new(MemoryLog::new()),
        Config {
            usage_window: UsageWindow::Manual,
            audit: Some(AuditConfig::in_dir(dir.path())),
            ..Config::default()
        },
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap();
    let router = app(AppState::new(
        ledger.clone(),
        OperatorToken::new(OPERATOR).unwrap(),
    ));
    let mut key = String::new();
    for user in ["alice", "bob", "carol"] {
        let (status, body) = call(
            &router,
            "POST",
            "/v1/admin/tenants/acme/keys",
            Some(OPERATOR),
            Some(json!({"user": user, "name": "k", "scopes": ["audit:read", "keys:read"]})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        key = json_of(&body)["key"].as_str().unwrap().to_owned();
    }
    let k = Some(key.as_str());

    let (status, _) = call(&router, "GET", "/v1/audit/checkpoint", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&router, "GET", "/v1/audit/checkpoint", k, None).await;
    assert_eq!(status, StatusCode::OK);
    let cp = json_of(&body);
    assert_eq!(cp["origin"], "keyledger/acme");
    assert_eq!(cp["size"], 3);

    let (status, body) = call(
        &router,
        "GET",
        "/v1/audit/proof/inclusion?position=2&size=3",
        k,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["proof"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        &router,
        "GET",
        "/v1/audit/proof/inclusion?position=99",
        k,
        None,
    )
    .await;
    assert_eq!(status.as_u16() / 100, 4);

    let (status, body) = call(
        &router,
        "GET",
        "/v1/audit/proof/consistency?from=1&to=3",
        k,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["from"], 1);

    let (status, body) = call(&router, "GET", "/v1/audit/bundle?from=1&to=3", k, None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // One JSON Lines file: the header, then the three events.
    let text = String::from_utf8(body.clone()).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert_eq!(
        json_of(text.lines().next().unwrap().as_bytes())["format"],
        "keyledger-audit-bundle/v1"
    );
    let report = keyledger_runtime::verify_bundle(&body, &ledger.audit_public_key().unwrap());
    assert!(report.ok(), "{:?}", report.problems);

    let (status, body) = call(&router, "GET", "/v1/audit/public-key", k, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json_of(&body)["public_key"],
        keyledger_runtime::audit::encode_public_key(&ledger.audit_public_key().unwrap())
    );

    let doc = keyledger_server::openapi_json();
    for path in [
        "/v1/audit/checkpoint",
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/consistency",
        "/v1/audit/bundle",
        "/v1/audit/public-key",
    ] {
        assert!(doc.contains(path), "{path} is in the OpenAPI document");
    }
    let doc: Value = serde_json::from_str(doc).unwrap();
    for (path, params) in [
        ("/v1/audit/proof/inclusion", &["position", "size"][..]),
        ("/v1/audit/proof/consistency", &["from", "to"][..]),
        ("/v1/audit/bundle", &["from", "to"][..]),
    ] {
        let op = &doc["paths"][path]["get"];
        // The query's parameters; the `Keyledger-Position` header every
        // key-authenticated route takes is in the router's tests.
        let names: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, params, "{path}");
        assert!(op["security"].to_string().contains("audit:read"), "{path}");
    }
    ledger.shutdown().await.unwrap();
}

async fn ledger_and_router(dir: &std::path::Path) -> (Keyledger, axum::Router) {
    let ledger = Keyledger::open_with(
        Arc::new(MemoryLog::new()),
        Config {
            usage_window: UsageWindow::Manual,
            audit: Some(AuditConfig::in_dir(dir)),
            ..Config::default()
        },
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap();
    let router = app(AppState::new(
        ledger.clone(),
        OperatorToken::new(OPERATOR).unwrap(),
    ));
    (ledger, router)
}

/// Mints a key for `user` in `tenant` (an admin call: one `KeyCreated`).
async fn mint(router: &axum::Router, tenant: &str, user: &str, scopes: &[&str]) -> String {
    let (status, body) = call(
        router,
        "POST",
        &format!("/v1/admin/tenants/{tenant}/keys"),
        Some(OPERATOR),
        Some(json!({"user": user, "name": "reviewer", "scopes": scopes})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    json_of(&body)["key"].as_str().unwrap().to_owned()
}

fn tenant(name: &str) -> keyledger_core::TenantId {
    name.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_in_the_error_format_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, router) = ledger_and_router(dir.path()).await;
    let mut key = String::new();
    for user in ["alice", "bob", "carol", "dave"] {
        key = mint(&router, "acme", user, &["audit:read"]).await;
    }
    let acme = tenant("acme");
    assert_eq!(ledger.tree_size(&acme), 4);
    for uri in [
        // size larger than the tree, position beyond the size, position 0
        "/v1/audit/proof/inclusion?position=2&size=5",
        "/v1/audit/proof/inclusion?position=5",
        "/v1/audit/proof/inclusion?position=3&size=2",
        "/v1/audit/proof/inclusion?position=0",
        // not numbers, missing, negative, too large for u64
        "/v1/audit/proof/inclusion?position=abc",
        "/v1/audit/proof/inclusion?position=1&size=x",
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/inclusion?position=-1",
        "/v1/audit/proof/inclusion?position=18446744073709551616",
        // from > to, to larger than the tree
        "/v1/audit/proof/consistency?from=3&to=2",
        "/v1/audit/proof/consistency?from=1&to=5",
        "/v1/audit/proof/consistency?from=5",
        "/v1/audit/proof/consistency?from=one&to=2",
        "/v1/audit/proof/consistency",
        "/v1/audit/bundle?from=3&to=2",
        "/v1/audit/bundle?from=0&to=2",
        "/v1/audit/bundle?from=1&to=5",
        "/v1/audit/bundle?from=5",
        "/v1/audit/bundle?from=1&to=2.5",
        "/v1/audit/bundle?to=9",
        // a receipt: position 0, beyond the tree, missing, not a number
        "/v1/audit/receipt?position=0",
        "/v1/audit/receipt?position=5",
        "/v1/audit/receipt",
        "/v1/audit/receipt?position=x",
        "/v1/audit/receipt?position=-1",
    ] {
        let (status, body) = call(&router, "GET", uri, Some(&key), None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        let e = json_of(&body);
        assert_eq!(e["error"]["code"], "invalid_query", "{uri}: {e}");
        assert!(
            !e["error"]["message"].as_str().unwrap().is_empty(),
            "{uri}: {e}"
        );
        assert_eq!(ledger.tree_size(&acme), 4, "{uri}: nothing was recorded");
    }
    // The trivial but valid requests work.
    for uri in [
        "/v1/audit/proof/consistency?from=0&to=4",
        "/v1/audit/proof/consistency?from=4&to=4",
        "/v1/audit/proof/inclusion?position=4&size=4",
    ] {
        let (status, body) = call(&router, "GET", uri, Some(&key), None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // A bundle without `from` or `to` is the whole log, as the CLI's.
    let size = ledger.tree_size(&acme);
    let (status, body) = call(&router, "GET", "/v1/audit/bundle", Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (&header["from_seq"], &header["to_seq"]),
        (&json!(1), &json!(size)),
        "{header}"
    );
    assert_eq!(
        text.lines().count() as u64,
        1 + size,
        "the header and every event"
    );
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_tenant_sees_nothing_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, router) = ledger_and_router(dir.path()).await;
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        mint(&router, "acme", user, &["audit:read"]).await;
    }
    let globex = mint(&router, "globex", "mallory", &["audit:read"]).await;
    let g = Some(globex.as_str());
    // Its own checkpoint: its own origin and size, never acme's.
    let (status, body) = call(&router, "GET", "/v1/audit/checkpoint", g, None).await;
    assert_eq!(status, StatusCode::OK);
    let cp = json_of(&body);
    assert_eq!(cp["origin"], "keyledger/globex");
    assert_eq!(cp["size"], 1);
    // acme's positions and sizes are answered exactly like positions that
    // exist nowhere.
    for (foreign, nowhere) in [
        (
            "/v1/audit/proof/inclusion?position=3",
            "/v1/audit/proof/inclusion?position=999",
        ),
        (
            "/v1/audit/proof/consistency?from=1&to=5",
            "/v1/audit/proof/consistency?from=1&to=999",
        ),
        (
            "/v1/audit/bundle?from=2&to=5",
            "/v1/audit/bundle?from=2&to=999",
        ),
    ] {
        let (s1, b1) = call(&router, "GET", foreign, g, None).await;
        let (s2, b2) = call(&router, "GET", nowhere, g, None).await;
        assert_eq!(s1, StatusCode::BAD_REQUEST, "{foreign}");
        assert_eq!(s1, s2);
        assert_eq!(json_of(&b1)["error"]["code"], json_of(&b2)["error"]["code"]);
        assert!(!String::from_utf8_lossy(&b1).contains("acme"), "{foreign}");
    }
    // Its bundle holds its own event only, and its trail no acme event.
    let (status, body) = call(&router, "GET", "/v1/audit/bundle?from=1", g, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(!text.contains("\"tenant\":\"acme\""), "{text}");
    let (status, body) = call(&router, "GET", "/v1/audit?limit=1000", g, None).await;
    assert_eq!(status, StatusCode::OK);
    let trail = json_of(&body);
    for e in trail["events"].as_array().unwrap() {
        assert_eq!(e["tenant"], "globex", "{e}");
    }
    // acme's tree is untouched by globex's reads.
    assert_eq!(ledger.tree_size(&tenant("acme")), 5);
    ledger.shutdown().await.unwrap();
}

/// Every route that hands out trail events or event-level evidence appends
/// an `AuditRead` (actor = the key, range, what) before answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_the_trail_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, router) = ledger_and_router(dir.path()).await;
    for user in ["alice", "bob"] {
        mint(&router, "acme", user, &["keys:read"]).await;
    }
    let key = mint(&router, "acme", "carol", &["audit:read", "keys:read"]).await;
    let k = Some(key.as_str());
    let (_, body) = call(&router, "GET", "/v1/whoami", k, None).await;
    let key_id = json_of(&body)["key_id"].as_str().unwrap().to_owned();
    let acme = tenant("acme");
    let routes: Vec<(String, &str, (u64, u64))> = vec![
        ("/v1/audit?limit=2".into(), "list", (1, 2)),
        (format!("/v1/keys/{key_id}/history"), "list", (3, 3)),
        ("/v1/audit/export?format=jsonl".into(), "export", (1, 5)),
        ("/v1/audit/export?format=csv".into(), "export", (1, 6)),
        ("/v1/audit/bundle?from=2&to=4".into(), "bundle", (2, 4)),
        (
            "/v1/audit/proof/inclusion?position=3".into(),
            "proof",
            (3, 3),
        ),
    ];
    for (uri, what, (from, to)) in routes {
        let before = ledger.tree_size(&acme);
        let (status, body) = call(&router, "GET", &uri, k, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(ledger.tree_size(&acme), before + 1, "{uri}: one event");
        let all = keyledger_core::AuditFilter::default();
        let page = ledger.audit(&acme, &all, None, Some(1000)).unwrap();
        let last = page.records.last().unwrap();
        let entry = keyledger_runtime::views::AuditEntry::from(last);
        let e = serde_json::to_value(&entry).unwrap();
        assert_eq!(e["type"], "AuditRead", "{uri}: {e}");
        assert_eq!(e["details"]["what"], what, "{uri}: {e}");
        assert_eq!(e["details"]["from_seq"], from, "{uri}: {e}");
        assert_eq!(e["details"]["to_seq"], to, "{uri}: {e}");
        assert_eq!(e["actor"]["type"], "api_key", "{uri}: {e}");
        assert_eq!(e["actor"]["id"], key_id.as_str(), "{uri}: {e}");
    }
    // Hashes and sizes only: not recorded (docs/audit.md says why).
    for uri in [
        "/v1/audit/checkpoint",
        "/v1/audit/proof/consistency?from=1&to=3",
        "/v1/audit/public-key",
    ] {
        let before = ledger.tree_size(&acme);
        let (status, _) = call(&router, "GET", uri, k, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(ledger.tree_size(&acme), before, "{uri}");
    }
    // Without `audit:read`, nothing is read and nothing recorded.
    let reader = mint(&router, "acme", "dave", &["keys:read"]).await;
    let before = ledger.tree_size(&acme);
    for uri in ["/v1/audit", "/v1/audit/bundle?from=1", "/v1/audit/export"] {
        let (status, _) = call(&router, "GET", uri, Some(&reader), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
    }
    assert_eq!(ledger.tree_size(&acme), before);
    ledger.shutdown().await.unwrap();
}

/// Without witnesses a receipt holds the newest stored checkpoint: a
/// revocation asked with `receipt=true` says where to fetch its receipt
/// (or holds it), and the receipt fetched verifies offline with
/// `crates/audit` alone, for exactly that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_s_receipt_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, router) = ledger_and_router(dir.path()).await;
    let key = mint(
        &router,
        "acme",
        "alice",
        &["audit:read", "keys:write", "keys:read"],
    )
    .await;
    let (_, body) = call(
        &router,
        "POST",
        "/v1/admin/tenants/acme/keys",
        Some(OPERATOR),
        Some(json!({"user": "bob", "name": "doomed"})),
    )
    .await;
    let doomed = json_of(&body)["id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        &router,
        "POST",
        &format!("/v1/keys/{doomed}/revoke?receipt=true"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let revoked = json_of(&body);
    assert_eq!(revoked["status"], "revoked");
    let position = revoked["receipt"]["position"].as_u64().unwrap();
    assert_eq!(position, 3, "{revoked}");
    let url = format!("/v1/audit/receipt?position={position}");
    assert_eq!(revoked["receipt"]["receipt_url"], url.as_str());
    if revoked["receipt"]["tlog_proof"].is_null() {
        assert!(revoked["receipt"]["retry_after_seconds"].as_u64().unwrap() >= 1);
    }
    ledger.write_checkpoints().unwrap();
    let (status, body) = call(&router, "GET", &url, Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    let public = ledger.audit_public_key().unwrap();
    let checked = keyledger_audit::verify_receipt(&text, &public, None).unwrap();
    assert_eq!(checked.position, 3);
    assert!(checked.checkpoint.size >= 3);
    // The event's chain hash as the trail shows it.
    let (_, body) = call(
        &router,
        "GET",
        "/v1/audit?type=KeyRevoked",
        Some(&key),
        None,
    )
    .await;
    let trail = json_of(&body);
    assert_eq!(
        trail["events"][0]["hash"].as_str().unwrap(),
        hex::encode(checked.chain_hash)
    );
    // Another key does not open it.
    let other = keyledger_audit::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert!(keyledger_audit::verify_receipt(&text, &other, None).is_err());

    // A rotation asked with `receipt=true`: the receipt of its last event.
    let carol = mint(&router, "acme", "carol", &["keys:read"]).await;
    let (_, body) = call(&router, "GET", "/v1/whoami", Some(&carol), None).await;
    let old = json_of(&body)["key_id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        &router,
        "POST",
        &format!("/v1/keys/{old}/rotate?receipt=true"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let rotated = json_of(&body);
    assert!(rotated["key"].as_str().is_some(), "{rotated}");
    let position = rotated["receipt"]["position"].as_u64().unwrap();
    assert_eq!(position, ledger.tree_size(&tenant("acme")), "{rotated}");
    ledger.write_checkpoints().unwrap();
    let url = rotated["receipt"]["receipt_url"].as_str().unwrap();
    let (status, body) = call(&router, "GET", url, Some(&key), None).await;
    assert_eq!(status, StatusCode::OK);
    let checked =
        keyledger_audit::verify_receipt(&String::from_utf8(body).unwrap(), &public, None).unwrap();
    assert_eq!(checked.position, position);
}
