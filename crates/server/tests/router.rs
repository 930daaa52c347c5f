//! The router driven in process with `tower::ServiceExt::oneshot`: no port,
//! an in-memory log and a manual clock, so expiry and grace periods are
//! exact. The black-box tests of the real binary are in the workspace's
//! `tests/http.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use keyledger_core::Timestamp;
use keyledger_runtime::{Config, Keyledger, ManualClock, OsEntropy, UsageWindow};
use keyledger_server::{AppState, OperatorToken, app, openapi};
use keyledger_store::MemoryLog;
use serde_json::{Value, json};
use tower::ServiceExt;

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const OPERATOR: &str = "operator-token-for-the-router-tests";

struct Harness {
    router: axum::Router,
    clock: ManualClock,
    ledger: Keyledger,
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let ledger = Keyledger::open_with(
            Arc::new(MemoryLog::new()),
            Config {
                usage_window: UsageWindow::Manual,
                ..Config::default()
            },
            Arc::new(clock.clone()),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
        .unwrap();
        let state = AppState::new(ledger.clone(), OperatorToken::new(OPERATOR).unwrap());
        Harness {
            router: app(state),
            clock,
            ledger,
        }
    }

    async fn raw(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
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
        let (status, headers, body) = self.raw(req).await;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let value = if ct.starts_with("application/json") {
            serde_json::from_slice(&body).unwrap()
        } else {
            Value::String(String::from_utf8_lossy(&body).into_owned())
        };
        (status, value)
    }

    /// Mints a key through the operator route.
    async fn mint(&self, tenant: &str, user: &str, scopes: Option<&[&str]>) -> (String, String) {
        let mut body = json!({"user": user, "name": format!("{user}'s key")});
        if let Some(s) = scopes {
            body["scopes"] = json!(s);
        }
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/v1/admin/tenants/{tenant}/keys"),
                Some(OPERATOR),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (
            v["key"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn every_verify_outcome_with_an_exact_clock() {
    let h = Harness::new();
    let (key, id) = h
        .mint("acme", "alice", Some(&["keys:read", "keys:write"]))
        .await;
    let verify = |k: String, scope: Option<&str>| {
        let mut body = json!({"key": k});
        if let Some(s) = scope {
            body["scope"] = json!(s);
        }
        h.call(Method::POST, "/v1/verify", None, Some(body))
    };
    let (s, v) = verify(key.clone(), Some("keys:read")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["valid"].as_bool(), v["outcome"].as_str()),
        (Some(true), Some("valid"))
    );
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(
        verify(key.clone(), Some("users:remove")).await.1["outcome"],
        "insufficient_scope"
    );
    assert_eq!(
        verify("klk_nope".into(), None).await.1["outcome"],
        "malformed"
    );
    let mut typo = key.clone();
    typo.replace_range(5..6, if &key[5..6] == "A" { "B" } else { "A" });
    assert_eq!(verify(typo, None).await.1["outcome"], "malformed");

    // Expiry, to the microsecond.
    let expires = Timestamp::from_micros(T0 + 60_000_000).to_rfc3339();
    let (s, created) = h
        .call(
            Method::POST,
            "/v1/keys",
            Some(&key),
            Some(json!({"name": "short-lived", "expires_at": expires})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let short = created["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(short.clone(), None).await.1["outcome"], "valid");
    h.clock.advance_micros(60_000_000);
    assert_eq!(verify(short.clone(), None).await.1["outcome"], "expired");
    let (s, body) = h.call(Method::GET, "/v1/whoami", Some(&short), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "key_expired");

    let (s, _) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(verify(key.clone(), None).await.1["outcome"], "revoked");
    let (s, body) = h.call(Method::GET, "/v1/keys", Some(&key), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "key_revoked");
    h.ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn rotation_grace_ends_exactly() {
    let h = Harness::new();
    let (key, id) = h.mint("acme", "alice", None).await;
    let (s, rotated) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(&key),
            Some(json!({"grace_seconds": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["rotated_from"], id.as_str());
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call(Method::GET, "/v1/whoami", Some(&key), None).await.0,
        StatusCode::OK
    );
    h.clock.advance_micros(30_000_000);
    let (s, body) = h.call(Method::GET, "/v1/whoami", Some(&key), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "key_expired");
    assert_eq!(
        h.call(Method::GET, "/v1/whoami", Some(&new), None).await.0,
        StatusCode::OK
    );
    // The old key was already replaced: a second rotation is a conflict.
    let (s, b) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(&new),
            None,
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "already_rotated");
    h.ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn axum_rejections_speak_the_error_format() {
    let h = Harness::new();
    let (key, _) = h.mint("acme", "alice", None).await;
    let bearer = format!("Bearer {key}");
    let post = |body: &'static [u8], ct: Option<&'static str>| {
        let mut r = Request::post("/v1/keys").header(header::AUTHORIZATION, bearer.clone());
        if let Some(ct) = ct {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        r.body(Body::from(body)).unwrap()
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post(b"{\"name\":", Some("application/json")),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(b"{\"name\": 5}", Some("application/json")),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(b"{}", Some("application/json")),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(b"{\"name\":\"a\",\"x\":1}", Some("application/json")),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(b"{\"name\":\"a\"}", None),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(b"{\"name\":\"a\"}", Some("text/plain")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(b"{\"name\":\"   \"}", Some("application/json")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post(b"{\"name\":\"a\\u0007b\"}", Some("application/json")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post(
                b"{\"name\":\"a\",\"expires_at\":\"2020-01-01T00:00:00Z\"}",
                Some("application/json"),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            post(
                b"{\"name\":\"a\",\"expires_at\":\"tomorrow\"}",
                Some("application/json"),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(
                b"{\"name\":\"a\",\"scopes\":[\"keys:delete\"]}",
                Some("application/json"),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(b"{\"name\":\"a\",\"scopes\":[]}", Some("application/json")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            Request::post("/v1/keys")
                .header(header::AUTHORIZATION, bearer.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!(
                    "{{\"name\":\"{}\"}}",
                    "x".repeat(keyledger_server::limits::BODY_BYTES_MAX)
                )))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            Request::get("/v1/nope").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::delete("/v1/keys").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Request::get("/v1/keys?limit=0")
                .header(header::AUTHORIZATION, bearer.clone())
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Request::get("/v1/keys?cursor=zz")
                .header(header::AUTHORIZATION, bearer.clone())
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Request::get("/v1/keys/not-a-key")
                .header(header::AUTHORIZATION, bearer.clone())
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            Request::get("/v1/keys")
                .header(header::AUTHORIZATION, "Basic Zm9vOmJhcg==")
                .body(Body::empty())
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        ),
        (
            Request::get("/v1/keys")
                .header("x-api-key", "klk_garbage")
                .body(Body::empty())
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "malformed_key",
        ),
    ];
    let head = h.ledger.head();
    for (req, expected, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, headers, body) = h.raw(req).await;
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{what}"
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_error(status, &body, expected, code);
        if expected == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key(header::ALLOW), "{what}");
        }
    }
    assert_eq!(h.ledger.head(), head, "a refused request wrote nothing");
    h.ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn scopes_and_the_operator_token_stay_in_their_lanes() {
    let h = Harness::new();
    let (reader, _) = h.mint("acme", "alice", Some(&["keys:read"])).await;
    let (writer, _) = h.mint("acme", "alice", Some(&["keys:write"])).await;
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/keys",
            Some(&reader),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "insufficient_scope");
    // A key cannot grant a scope it does not hold.
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/keys",
            Some(&writer),
            Some(json!({"name": "x", "scopes": ["keys:read"]})),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let (s, b) = h
        .call(Method::DELETE, "/v1/users/bob", Some(&writer), None)
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "insufficient_scope");
    // The operator token on a tenant route needs `Keyledger-Tenant`, and a
    // key is no operator token.
    let (s, b) = h.call(Method::GET, "/v1/keys", Some(OPERATOR), None).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "tenant_required");
    assert!(b.to_string().contains("Keyledger-Tenant"), "{b}");
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/admin/tenants/acme/keys",
            Some(&writer),
            Some(json!({"user": "x", "name": "y"})),
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "invalid_operator_token");
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/admin/tenants/no%20pe/keys",
            Some(OPERATOR),
            Some(json!({"user": "x", "name": "y"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_path");
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/admin/tenants/acme/keys",
            Some(OPERATOR),
            Some(json!({"user": " ", "name": "y"})),
        )
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    h.ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_foreign_id_reads_exactly_like_an_unknown_one() {
    let h = Harness::new();
    let (a, a_id) = h.mint("acme", "alice", None).await;
    let (b, _) = h.mint("globex", "bob", None).await;
    let unknown = "key_01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for (method, path) in [
        (Method::GET, "/v1/keys/{}"),
        (Method::GET, "/v1/keys/{}/history"),
        (Method::POST, "/v1/keys/{}/revoke"),
        (Method::POST, "/v1/keys/{}/rotate"),
        (Method::GET, "/v1/usage?key_id={}"),
    ] {
        let (s1, foreign) = h
            .call(method.clone(), &path.replace("{}", &a_id), Some(&b), None)
            .await;
        let (s2, missing) = h
            .call(method.clone(), &path.replace("{}", unknown), Some(&b), None)
            .await;
        assert_error(s1, &foreign, StatusCode::NOT_FOUND, "key_not_found");
        assert_error(s2, &missing, StatusCode::NOT_FOUND, "key_not_found");
        let normalize = |v: &Value| {
            v["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&a_id, "ID")
                .replace(unknown, "ID")
        };
        assert_eq!(normalize(&foreign), normalize(&missing), "{method} {path}");
    }
    // The owner still sees it, active.
    let (s, k) = h
        .call(Method::GET, &format!("/v1/keys/{a_id}"), Some(&a), None)
        .await;
    assert_eq!((s, k["status"].as_str()), (StatusCode::OK, Some("active")));
    h.ledger.shutdown().await.unwrap();
}

/// Revoke and rotate follow one rule (docs/api.md): `keys:write` acts on
/// any key of its tenant, whoever owns it; a rotation, which hands out a
/// new secret with the old key's scopes, also needs every one of them.
#[tokio::test]
async fn revoke_and_rotate_follow_one_rule_on_another_users_key() {
    let h = Harness::new();
    let default = ["keys:read", "keys:write", "audit:read", "usage:read"];
    let (_, alices) = h.mint("acme", "alice", Some(&default)).await;
    let (_, alices_other) = h.mint("acme", "alice", Some(&default)).await;
    let (bob, _) = h.mint("acme", "bob", Some(&default)).await;
    let (narrow, _) = h
        .mint("acme", "bob", Some(&["keys:read", "keys:write"]))
        .await;
    let (reader, _) = h
        .mint(
            "acme",
            "bob",
            Some(&["keys:read", "audit:read", "usage:read"]),
        )
        .await;
    // A key without `keys:write` may do neither to alice's key.
    for action in ["revoke", "rotate"] {
        let (s, v) = h
            .call(
                Method::POST,
                &format!("/v1/keys/{alices}/{action}"),
                Some(&reader),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{action}: {v}");
        assert_eq!(v["error"]["code"], "insufficient_scope", "{v}");
    }
    // A narrower key may not rotate it (the new secret would hold scopes
    // the caller lacks)...
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{alices}/rotate"),
            Some(&narrow),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    // bob's key holds alice's key's scopes: it may do both; the new key
    // is still alice's.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{alices}/rotate"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["created_by"], "alice", "the owner: {v}");
    assert_eq!(v["rotated_from"], json!(alices), "{v}");
    // ...but may revoke it, as bob's wider key may.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/v1/keys/{alices_other}/revoke"),
            Some(&narrow),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "revoked", "{v}");
    assert_eq!(v["created_by"], "alice", "{v}");
}

/// The log position counts every tenant's events: `/healthz` shows it to
/// the operator token only, and `/metrics` (all of it global) answers the
/// operator token only.
#[tokio::test]
async fn the_global_log_position_and_metrics_are_the_operators_only() {
    let h = Harness::new();
    let (key, _) = h.mint("acme", "alice", None).await;
    for auth in [
        None,
        Some(key.as_str()),
        Some("not-the-operator-token-at-all"),
    ] {
        let (s, v) = h.call(Method::GET, "/healthz", auth, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"status": "ok"}), "{auth:?}");
        let (s, v) = h.call(Method::GET, "/metrics", auth, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert!(
            v["error"]["code"]
                .as_str()
                .unwrap()
                .ends_with("credentials")
                || v["error"]["code"] == "invalid_operator_token",
            "{v}"
        );
        assert!(!v.to_string().contains("keyledger_log_head"));
    }
    let (s, v) = h.call(Method::GET, "/healthz", Some(OPERATOR), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["head"], json!(h.ledger.head()), "{v}");
    assert!(h.ledger.head() > 0);
    let (s, text) = h.call(Method::GET, "/metrics", Some(OPERATOR), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.as_str().unwrap().contains("keyledger_log_head "));
}

#[tokio::test]
async fn metrics_label_the_matched_route() {
    let h = Harness::new();
    let (key, id) = h.mint("acme", "alice", None).await;
    h.call(Method::GET, &format!("/v1/keys/{id}"), Some(&key), None)
        .await;
    h.call(Method::GET, "/nowhere", None, None).await;
    // Known keys' outcomes reach the metrics when their uses are written.
    h.ledger.flush_usage().await.unwrap();
    let (s, text) = h.call(Method::GET, "/metrics", Some(OPERATOR), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(
            r#"keyledger_http_requests_total{method="GET",route="/v1/keys/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(!text.contains(&id), "raw paths never become labels");
    assert!(
        text.contains(r#"keyledger_verifications_total{outcome="valid"} 1"#),
        "{text}"
    );
    // Every series `crates/server/src/metrics.rs` documents, with values
    // that match what happened.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
            .parse()
            .unwrap()
    };
    let route = r#"method="GET",route="/v1/keys/{id}""#;
    assert_eq!(
        value(&format!(
            "keyledger_http_request_duration_seconds_count{{{route}}}"
        )),
        1.0,
        "a latency histogram per route"
    );
    assert!(
        value(&format!(
            "keyledger_http_request_duration_seconds_sum{{{route}}}"
        )) > 0.0
    );
    assert_eq!(
        value(&format!(
            "keyledger_http_request_duration_seconds_bucket{{{route},le=\"+Inf\"}}"
        )),
        1.0
    );
    assert!(
        text.contains("# TYPE keyledger_http_request_duration_seconds histogram"),
        "{text}"
    );
    for outcome in [
        "valid",
        "not_found",
        "malformed",
        "revoked",
        "expired",
        "insufficient_scope",
    ] {
        assert!(
            text.contains(&format!(
                "keyledger_verifications_total{{outcome=\"{outcome}\"}} "
            )),
            "{outcome}"
        );
    }
    assert_eq!(value("keyledger_usage_queue_depth"), 0.0);
    // The mint and the flushed use: two events, each in a durable commit.
    assert_eq!(value("keyledger_events_appended_total"), 2.0);
    assert_eq!(value("keyledger_log_head"), 2.0);
    assert_eq!(value("keyledger_commit_duration_seconds_count"), 2.0);
    assert_eq!(value("keyledger_commits_total"), 2.0);
    assert_eq!(
        value("keyledger_commit_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    h.ledger.shutdown().await.unwrap();
}

#[test]
fn the_openapi_document_covers_every_route_error_and_scheme() {
    let doc = serde_json::to_value(openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(format!("{} {path}", method.to_uppercase()));
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                for status in ["400", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
                if path.contains("{id}") {
                    assert!(
                        responses.contains_key("404"),
                        "{method} {path} lacks 404 (an unknown or foreign id)"
                    );
                }
                let secured = op.get("security").is_some();
                assert_eq!(secured, path != "/v1/verify", "{method} {path}");
                if secured {
                    assert!(responses.contains_key("401"), "{method} {path} lacks 401");
                }
                if let Some(body) = op.get("requestBody") {
                    let content = body["content"].as_object().unwrap();
                    assert!(
                        content
                            .get("application/json")
                            .is_some_and(|c| c["schema"].is_object()),
                        "{method} {path}: a JSON body with a schema"
                    );
                    for status in ["413", "415", "422"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path} lacks {status}"
                        );
                    }
                }
                for (status, r) in responses.iter().filter(|(s, _)| s.starts_with('2')) {
                    assert!(
                        r["content"].as_object().is_some_and(|c| !c.is_empty()),
                        "{method} {path} {status}: a documented success body"
                    );
                }
                for (status, r) in responses
                    .iter()
                    .filter(|(s, _)| s.starts_with('4') || s.starts_with('5'))
                {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    ops.sort();
    // Every route that takes a body documents it.
    for op in [
        ("/v1/keys", "post"),
        ("/v1/keys/{id}", "patch"),
        ("/v1/keys/{id}/revoke", "post"),
        ("/v1/keys/{id}/rotate", "post"),
        ("/v1/keys/leaked", "post"),
        ("/v1/verify", "post"),
        ("/v1/admin/tenants/{tenant}/keys", "post"),
        ("/v1/webhooks", "post"),
    ] {
        assert!(
            doc["paths"][op.0][op.1]["requestBody"].is_object(),
            "{op:?} documents its body"
        );
    }
    let expected = [
        "DELETE /v1/admin/tenants/{tenant}/users/{user}",
        "DELETE /v1/users/{user_id}",
        "DELETE /v1/webhooks/{id}",
        "GET /healthz",
        "GET /log/checkpoint",
        "GET /log/tile/{path}",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/audit",
        "GET /v1/audit/bundle",
        "GET /v1/audit/checkpoint",
        "GET /v1/audit/checkpoint/witnessed",
        "GET /v1/audit/checkpoints",
        "GET /v1/audit/export",
        "GET /v1/audit/proof/consistency",
        "GET /v1/audit/proof/inclusion",
        "GET /v1/audit/public-key",
        "GET /v1/audit/receipt",
        "GET /v1/audit/verify",
        "GET /v1/keys",
        "GET /v1/keys/{id}",
        "GET /v1/keys/{id}/history",
        "GET /v1/state",
        "GET /v1/usage",
        "GET /v1/usage/export",
        "GET /v1/usage/summary",
        "GET /v1/webhooks",
        "GET /v1/webhooks/{id}",
        "GET /v1/webhooks/{id}/deliveries",
        "GET /v1/whoami",
        "PATCH /v1/keys/{id}",
        "POST /v1/admin/tenants/{tenant}/keys",
        "POST /v1/keys",
        "POST /v1/keys/leaked",
        "POST /v1/keys/{id}/revoke",
        "POST /v1/keys/{id}/rotate",
        "POST /v1/verify",
        "POST /v1/webhooks",
        "POST /v1/webhooks/{id}/deliveries/{delivery}/retry",
    ];
    assert_eq!(ops, expected);
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert!(schemes.contains_key("operator"));
    assert_eq!(
        schemes["partner_signature"]["name"],
        "Github-Public-Key-Signature"
    );
}

#[tokio::test]
async fn pages_default_to_50_and_stop_at_1000() {
    let h = Harness::new();
    let (key, _) = h
        .mint(
            "acme",
            "alice",
            Some(&["keys:read", "keys:write", "audit:read"]),
        )
        .await;
    for i in 0..60 {
        let (s, b) = h
            .call(
                Method::POST,
                "/v1/keys",
                Some(&key),
                Some(json!({"name": format!("key {i:02}"), "scopes": ["keys:read"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    // The trail's reads are recorded in it: page through its creations only.
    for path in ["/v1/keys?", "/v1/audit?type=KeyCreated&"] {
        let items = if path == "/v1/keys?" {
            "keys"
        } else {
            "events"
        };
        let (s, first) = h.call(Method::GET, path, Some(&key), None).await;
        assert_eq!(s, StatusCode::OK, "{first}");
        assert_eq!(
            first[items].as_array().unwrap().len(),
            50,
            "{path}: default page"
        );
        let cursor = first["next_cursor"].as_str().expect("a next page");
        let (_, rest) = h
            .call(
                Method::GET,
                &format!("{path}cursor={cursor}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(
            rest[items].as_array().unwrap().len(),
            11,
            "{path}: the rest"
        );
        assert_eq!(rest["next_cursor"], Value::Null);
        let (s, all) = h
            .call(Method::GET, &format!("{path}limit=1000"), Some(&key), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            all[items].as_array().unwrap().len(),
            61,
            "{path}: the maximum"
        );
        for over in ["1001", "0", "-1"] {
            let (s, b) = h
                .call(
                    Method::GET,
                    &format!("{path}limit={over}"),
                    Some(&key),
                    None,
                )
                .await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
        }
    }
    h.ledger.shutdown().await.unwrap();
}

/// Event types are named from one list (`EventType::ALL`): the document's
/// enum of an entry's `type` and the refusal of an unknown one name them
/// all.
#[tokio::test]
async fn every_event_type_is_named_in_the_document_and_the_refusal() {
    let names: Vec<&str> = keyledger_core::EventType::ALL
        .map(keyledger_core::EventType::as_str)
        .to_vec();
    let doc = serde_json::to_value(openapi()).unwrap();
    assert_eq!(
        doc["components"]["schemas"]["AuditEntry"]["properties"]["type"]["enum"],
        json!(names)
    );
    let h = Harness::new();
    let (key, _) = h.mint("acme", "alice", Some(&["audit:read"])).await;
    let (status, body) = h
        .call(Method::GET, "/v1/audit?type=KeyDeleted", Some(&key), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_query");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.ends_with(&format!("types are {}", names.join(", "))),
        "{message}"
    );
}

/// `Keyledger-Position` (docs/api.md, "Reading your writes on any node"):
/// every write answers the tenant's own sequence number; a key-authenticated
/// request passing it back is answered once it is applied (on one node, at
/// once), a bad value or one no write gave out is 400 in words; the
/// OpenAPI document says so.
#[tokio::test]
async fn writes_answer_their_position_and_reads_take_it_back() {
    let h = Harness::new();
    let (admin, _) = h.mint("acme", "root", None).await;
    let send = |method: Method, uri: &str, position: Option<&str>, body: Option<Value>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {admin}"));
        if let Some(p) = position {
            req = req.header("keyledger-position", p);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        h.raw(req.unwrap())
    };
    let position = |headers: &axum::http::HeaderMap| -> u64 {
        headers
            .get("keyledger-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a position")
    };
    let (status, headers, body) =
        send(Method::POST, "/v1/keys", None, Some(json!({"name": "k"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    // The tenant's own numbers: its mint was 1, this create 2.
    assert_eq!(position(&headers), 2);
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another tenant's write does not move it.
    h.mint("globex", "gus", None).await;
    let (status, headers, _) =
        send(Method::POST, &format!("/v1/keys/{id}/revoke"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(position(&headers), 3);
    assert_eq!(h.ledger.tenant_position(&"acme".parse().unwrap()), 3);
    // A read is not a write: no position.
    let (status, headers, _) = send(Method::GET, "/v1/keys", Some("3"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("keyledger-position").is_none());
    for p in ["0", "1", "3"] {
        let (status, _, _) = send(Method::GET, &format!("/v1/keys/{id}"), Some(p), None).await;
        assert_eq!(status, StatusCode::OK, "{p}");
    }
    for bad in [
        "4",
        "-1",
        "+3",
        "3 ",
        "3,3",
        "abc",
        "",
        "18446744073709551616",
    ] {
        let (status, _, body) = send(Method::GET, "/v1/keys", Some(bad), None).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_position");
        assert!(body.to_string().contains("Keyledger-Position"), "{body}");
    }
    // Nothing was written by the refused reads.
    assert_eq!(h.ledger.tenant_position(&"acme".parse().unwrap()), 3);

    let doc = serde_json::to_value(openapi()).unwrap();
    let param = |op: &Value| {
        op["parameters"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "Keyledger-Position" && p["in"] == "header")
        })
    };
    assert!(param(&doc["paths"]["/v1/keys"]["get"]));
    assert!(param(&doc["paths"]["/v1/audit"]["get"]));
    assert!(!param(&doc["paths"]["/v1/verify"]["post"]));
    assert!(!param(&doc["paths"]["/healthz"]["get"]));
    for (path, method, status) in [
        ("/v1/keys", "post", "201"),
        ("/v1/keys/{id}/revoke", "post", "200"),
        ("/v1/keys/{id}/rotate", "post", "201"),
        ("/v1/users/{user_id}", "delete", "200"),
        ("/v1/admin/tenants/{tenant}/keys", "post", "201"),
    ] {
        let headers = &doc["paths"][path][method]["responses"][status]["headers"];
        assert!(
            headers.get("Keyledger-Position").is_some(),
            "{method} {path}: {headers}"
        );
    }
}

/// The pattern (or `minimum`) the document gives `name` of `method path`,
/// wherever in the parameter's schema it is (an optional one is a union
/// with null).
fn param_schema(doc: &Value, method: &str, path: &str, name: &str) -> Value {
    let params = doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has parameters"));
    let p = params
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has a parameter {name}"));
    p["schema"].clone()
}

fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => o
            .get(key)
            .or_else(|| o.values().find_map(|v| find_key(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// Whether a string schema admits `sample`: its pattern, and its
/// `minLength` and `maxLength` (in characters) if it has them.
fn admits(schema: &Value, sample: &str) -> bool {
    let pattern = find_key(schema, "pattern")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("a pattern in {schema}"));
    let re = regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
    let chars = sample.chars().count() as u64;
    let bound = |k: &str| find_key(schema, k).and_then(Value::as_u64);
    re.is_match(sample)
        && bound("minLength").is_none_or(|min| chars >= min)
        && bound("maxLength").is_none_or(|max| chars <= max)
}

/// Percent-encodes all but the unreserved characters of a URL.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Issue 20: the OpenAPI document is as strict as the server. For a few
/// values of each constrained parameter and field (ids, cursors, `at`,
/// names, user ids, tenant ids, the evidence positions), the document's
/// pattern or minimum accepts exactly what the server does: a refusal is
/// 400 or 422, anything else (200, 201, 404) got past the validation.
///
/// What the patterns leave to the server, so no sample here relies on it:
/// calendar validity and the 1970..9999 range of a time, a number past
/// 2^64, a cursor's text that is not UTF-8 or whose sort differs from the
/// request's, and key-shaped text anywhere (`key_in_url`, `key_in_body`).
#[tokio::test]
async fn the_documents_patterns_accept_what_the_server_accepts() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let h = Harness::new();
    let (key, id) = h
        .mint(
            "acme",
            "root",
            Some(&["keys:read", "keys:write", "audit:read", "users:remove"]),
        )
        .await;
    let refused = |s: StatusCode| matches!(s.as_u16(), 400 | 422);
    let check = |what: &str, schema: &Value, sample: &str, status: StatusCode, body: &Value| {
        assert_eq!(
            admits(schema, sample),
            !refused(status),
            "{what} {sample:?}: the server answered {status} {body}; the schema is {schema}"
        );
    };

    // Key ids, in the path and in a query: Crockford base32 in either
    // case, at most 128 bits.
    let ulid = id.strip_prefix("key_").unwrap();
    let key_ids = [
        id.clone(),
        format!("key_{}", ulid.to_lowercase()),
        "key_00000000000000000000000000".to_owned(),
        "key_7ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
        "key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
        "key_0000000000000000000000000I".to_owned(),
        "key_000".to_owned(),
        ulid.to_owned(),
        "kee_00000000000000000000000000".to_owned(),
    ];
    let path_schema = param_schema(&doc, "get", "/v1/keys/{id}", "id");
    let query_schema = param_schema(&doc, "get", "/v1/audit", "key_id");
    for sample in &key_ids {
        let (s, b) = h
            .call(Method::GET, &format!("/v1/keys/{sample}"), Some(&key), None)
            .await;
        check("GET /v1/keys/{id}", &path_schema, sample, s, &b);
        let (s, b) = h
            .call(
                Method::GET,
                &format!("/v1/audit?key_id={sample}"),
                Some(&key),
                None,
            )
            .await;
        check("GET /v1/audit?key_id", &query_schema, sample, s, &b);
    }

    // Names: 1 to 100 characters once trimmed, no control characters in
    // what is kept.
    let name_schema =
        doc["components"]["schemas"]["CreateKeyRequest"]["properties"]["name"].clone();
    let padded = format!("  {}\t", "n".repeat(100));
    for sample in [
        "CI/CD Pipeline",
        "x",
        "\tname\n",
        padded.as_str(),
        &"n".repeat(100),
        &"n".repeat(101),
        "",
        "   ",
        "\u{3000}",
        "a\u{7}b",
        "a\tb",
        "tab\u{85}",
        "caf\u{e9} \u{2603}",
    ] {
        let (s, b) = h
            .call(
                Method::POST,
                "/v1/keys",
                Some(&key),
                Some(json!({"name": sample})),
            )
            .await;
        check("POST /v1/keys name", &name_schema, sample, s, &b);
    }

    // Scopes, when given: at least one.
    for schema in ["CreateKeyRequest", "AdminCreateKeyRequest"] {
        let scopes = &doc["components"]["schemas"][schema]["properties"]["scopes"];
        assert_eq!(find_key(scopes, "minItems"), Some(&json!(1)), "{schema}");
    }
    let body = json!({"name": "k", "scopes": []});
    let (s, b) = h
        .call(Method::POST, "/v1/keys", Some(&key), Some(body))
        .await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let body = json!({"name": "k", "scopes": ["keys:read"]});
    let (s, b) = h
        .call(Method::POST, "/v1/keys", Some(&key), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // User ids: 1 to 256 characters, not blank, no control characters;
    // tenant ids: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    let user_schema =
        doc["components"]["schemas"]["AdminCreateKeyRequest"]["properties"]["user"].clone();
    let remove_schema = param_schema(&doc, "delete", "/v1/users/{user_id}", "user_id");
    let users = [
        "alice@example.com".to_owned(),
        " bob ".to_owned(),
        "u".repeat(256),
        "\u{e9}".repeat(256),
        "u".repeat(257),
        " ".to_owned(),
        "\u{a0}\u{2028}".to_owned(),
        "a\nb".to_owned(),
        "a\u{9f}".to_owned(),
    ];
    for sample in &users {
        let body = json!({"user": sample, "name": "k"});
        let (s, b) = h
            .call(
                Method::POST,
                "/v1/admin/tenants/acme/keys",
                Some(OPERATOR),
                Some(body),
            )
            .await;
        check(
            "POST /v1/admin/tenants/acme/keys user",
            &user_schema,
            sample,
            s,
            &b,
        );
        let uri = format!("/v1/users/{}", encoded(sample));
        let (s, b) = h.call(Method::DELETE, &uri, Some(&key), None).await;
        check("DELETE /v1/users/{user_id}", &remove_schema, sample, s, &b);
    }
    let tenant_schema = param_schema(&doc, "post", "/v1/admin/tenants/{tenant}/keys", "tenant");
    for sample in [
        "acme",
        "a.b_c-D9",
        &"t".repeat(64),
        &"t".repeat(65),
        "a b",
        "\u{e9}",
        "a+b",
    ] {
        let uri = format!("/v1/admin/tenants/{}/keys", encoded(sample));
        let body = json!({"user": "u", "name": "k"});
        let (s, b) = h.call(Method::POST, &uri, Some(OPERATOR), Some(body)).await;
        check(
            "POST /v1/admin/tenants/{tenant}",
            &tenant_schema,
            sample,
            s,
            &b,
        );
    }

    // Cursors: a list's, for the same sort and order (hex, lower-case); the
    // trail's, `s<position>`.
    let (_, page) = h
        .call(Method::GET, "/v1/keys?limit=1", Some(&key), None)
        .await;
    let list_cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page) = h
        .call(
            Method::GET,
            "/v1/keys?limit=1&sort=name&order=asc",
            Some(&key),
            None,
        )
        .await;
    let name_cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let made = |mode: &str, value: &str| {
        hex::encode(format!(
            "k1\u{1f}{mode}\u{1f}key_00000000000000000000000000\u{1f}{value}"
        ))
    };
    let list_schema = param_schema(&doc, "get", "/v1/keys", "cursor");
    for (query, sample) in [
        ("", list_cursor.clone()),
        ("&sort=name&order=asc", name_cursor.clone()),
        ("&sort=name&order=asc", made("na", "t")),
        ("&sort=name&order=asc", made("na", "tcaf\u{e9}")),
        ("&sort=last_used_at&order=desc", made("ud", "i-1")),
        ("&sort=created_at&order=asc", made("ca", "i+17")),
        ("", list_cursor.to_uppercase()),
        ("", String::new()),
        ("", "zz".to_owned()),
        ("", made("cd", "x1")),
        ("", made("cd", "i")),
        ("", made("cd", "i1.5")),
        (
            "",
            hex::encode("k2\u{1f}cd\u{1f}key_00000000000000000000000000\u{1f}i1"),
        ),
        ("", made("cd", "i1").replace("6b65795f30", "6b65795f38")),
    ] {
        let uri = format!("/v1/keys?cursor={}{query}", encoded(&sample));
        let (s, b) = h.call(Method::GET, &uri, Some(&key), None).await;
        check("GET /v1/keys?cursor", &list_schema, &sample, s, &b);
    }
    let (_, page) = h
        .call(Method::GET, "/v1/audit?limit=1", Some(&key), None)
        .await;
    let trail_cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let audit_schema = param_schema(&doc, "get", "/v1/audit", "cursor");
    let history_schema = param_schema(&doc, "get", "/v1/keys/{id}/history", "cursor");
    for sample in [
        trail_cursor.as_str(),
        "s0",
        "s+3",
        "s007",
        "",
        "s",
        "s-1",
        "S1",
        "s 1",
        "x1",
    ] {
        let uri = format!("/v1/audit?cursor={}", encoded(sample));
        let (s, b) = h.call(Method::GET, &uri, Some(&key), None).await;
        check("GET /v1/audit?cursor", &audit_schema, sample, s, &b);
        let uri = format!("/v1/keys/{id}/history?cursor={}", encoded(sample));
        let (s, b) = h.call(Method::GET, &uri, Some(&key), None).await;
        check(
            "GET /v1/keys/{id}/history?cursor",
            &history_schema,
            sample,
            s,
            &b,
        );
    }

    // `state?at`: a whole number (spaces around it) or an RFC 3339 time.
    let at_schema = param_schema(&doc, "get", "/v1/state", "at");
    for sample in [
        "0",
        " 7 ",
        "+3",
        "2026-01-01T00:00:00Z",
        "2026-01-01t00:00:00z",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00:00.123456+02:00",
        " 2026-01-01T00:00:00Z\n",
        "",
        "-1",
        "1.5",
        "0x10",
        "2026-01-01",
        "2026-01-01T00:00Z",
        "2026-01-01T00:00:00",
        "yesterday",
    ] {
        let uri = format!("/v1/state?at={}", encoded(sample));
        let (s, b) = h.call(Method::GET, &uri, Some(&key), None).await;
        check("GET /v1/state?at", &at_schema, sample, s, &b);
    }

    // The evidence routes' positions start at 1.
    for (path, name) in [
        ("/v1/audit/proof/inclusion", "position"),
        ("/v1/audit/bundle", "from"),
        ("/v1/audit/bundle", "to"),
    ] {
        let schema = param_schema(&doc, "get", path, name);
        assert_eq!(
            find_key(&schema, "minimum"),
            Some(&json!(1)),
            "{path} {name}"
        );
        let (s, b) = h
            .call(Method::GET, &format!("{path}?{name}=0"), Some(&key), None)
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_query");
        let (s, b) = h
            .call(Method::GET, &format!("{path}?{name}=1"), Some(&key), None)
            .await;
        // (The bundle reads stored bytes, which the in-memory log does not
        // keep: past the validation all the same.)
        assert!(!refused(s), "{path}?{name}=1: {s} {b}");
    }
    h.ledger.shutdown().await.unwrap();
}
