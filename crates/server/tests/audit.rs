//! The audit evidence routes in process: signed checkpoint, proofs, a
//! bundle that verifies offline, the public key, and the OpenAPI entries.

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
    ledger.shutdown().await.unwrap();
}
