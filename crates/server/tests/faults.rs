//! A full disk and a read-only data directory, seen through the HTTP API:
//! the router on a runtime whose redb log sits on the fault-injecting
//! backend (`keyledger_store::faults`). Management calls are refused with
//! 503 `unavailable` in the error format, nothing refused is written or
//! shown, verification and reads keep answering, and everything works
//! again once space (or write access) returns, without a restart. The
//! runtime-level semantics (usage kept and written once, no acknowledged
//! event lost) are in `crates/runtime/tests/faults.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use keyledger_runtime::{Config, Keyledger, OsEntropy, SystemClock, UsageWindow};
use keyledger_server::{AppState, OperatorToken, app};
use keyledger_store::RedbLog;
use keyledger_store::faults::FaultBackend;
use serde_json::{Value, json};
use tower::ServiceExt;

const OPERATOR: &str = "operator-token-for-the-fault-tests";

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("Authorization", format!("Bearer {bearer}"));
    let body = match body {
        Some(b) => {
            req = req.header("Content-Type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app(state.clone())
        .oneshot(req.body(body).unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

#[track_caller]
fn unavailable(what: &str, (status, body): &(StatusCode, Value)) {
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("nothing was acknowledged"),
        "{what}: unclear message {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_and_read_only_answer_503_write_nothing_and_recover() {
    for mode in ["disk full", "read-only"] {
        let disk = FaultBackend::new().without_journal();
        let log = RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("{e}"));
        let ledger = Keyledger::open_with(
            Arc::new(log),
            Config {
                usage_window: UsageWindow::Manual,
                ..Config::default()
            },
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let state = AppState::new(
            ledger.clone(),
            OperatorToken::new(OPERATOR).unwrap_or_else(|e| panic!("{e}")),
        );
        let mint = |name: &str, user: &str| {
            let state = state.clone();
            let body = json!({"user": user, "name": name});
            async move {
                call(
                    &state,
                    "POST",
                    "/v1/admin/tenants/acme/keys",
                    OPERATOR,
                    Some(body),
                )
                .await
            }
        };
        let (status, first) = mint("before", "ada").await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let key = first["key"].as_str().unwrap_or("").to_owned();
        let id = first["id"].as_str().unwrap_or("").to_owned();
        let head = ledger.head();

        if mode == "disk full" {
            disk.set_full(true);
        } else {
            disk.set_read_only(true);
        }
        unavailable(
            &format!("{mode}: admin create"),
            &mint("refused", "bob").await,
        );
        unavailable(
            &format!("{mode}: create"),
            &call(
                &state,
                "POST",
                "/v1/keys",
                &key,
                Some(json!({"name": "refused too"})),
            )
            .await,
        );
        unavailable(
            &format!("{mode}: revoke"),
            &call(&state, "POST", &format!("/v1/keys/{id}/revoke"), &key, None).await,
        );
        unavailable(
            &format!("{mode}: remove user"),
            &call(
                &state,
                "DELETE",
                "/v1/admin/tenants/acme/users/ada",
                OPERATOR,
                None,
            )
            .await,
        );
        // Verification and reads do not need the disk.
        let (status, v) = call(&state, "POST", "/v1/verify", "", Some(json!({"key": key}))).await;
        assert_eq!((status, &v["outcome"]), (StatusCode::OK, &json!("valid")));
        let (status, list) = call(&state, "GET", "/v1/keys", &key, None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["keys"].as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list["keys"][0]["status"], "active", "{mode}: {list}");
        assert_eq!(ledger.head(), head, "{mode}: something was written");

        // Space (or write access) returns: everything works, no restart.
        disk.set_full(false);
        disk.set_read_only(false);
        let (status, after) = mint("after", "bob").await;
        assert_eq!(status, StatusCode::CREATED, "{mode}: {after}");
        let (status, revoked) =
            call(&state, "POST", &format!("/v1/keys/{id}/revoke"), &key, None).await;
        // The revoking key is the revoked one: its own revocation is allowed.
        assert_eq!(status, StatusCode::OK, "{mode}: {revoked}");
        let bob = after["key"].as_str().unwrap_or("");
        let (_, list) = call(&state, "GET", "/v1/keys", bob, None).await;
        let names: Vec<&str> = list["keys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k["name"].as_str()).collect())
            .unwrap_or_default();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            ["after", "before"],
            "{mode}: refused calls were written"
        );
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        println!("{mode}: 4 management calls answered 503 unavailable, nothing written; recovered");
    }
}
