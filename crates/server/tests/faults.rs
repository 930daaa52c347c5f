//! A full disk and a read-only data directory, seen through the HTTP API:
//! the router on a runtime whose redb log sits on the fault-injecting
//! backend (`keyledger_store::faults`). Management calls are refused with
//! 503 `unavailable` in the error format, nothing refused is written or
//! shown, verification and reads keep answering, and everything works
//! again once space (or write access) returns, without a restart. The
//! runtime-level semantics (usage kept and written once, no acknowledged
//! event lost) are in `crates/runtime/tests/faults.rs`.
//!
//! A log file found damaged after start-up (a release build finds a damaged
//! page only when it reads it) is answered 503 `log_damaged`, the file's
//! name kept for the log, and nothing is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use keyledger_core::TenantId;
use keyledger_runtime::{Config, Keyledger, OsEntropy, SystemClock, UsageWindow};
use keyledger_server::{AppState, OperatorToken, app};
use keyledger_store::faults::FaultBackend;
use keyledger_store::{
    EventLog, Hash, MemoryLog, RawRecord, Record, RedbLog, StoreError, TenantAppend,
};
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

/// A runtime on `log` (uses written only when asked) and the router's state.
fn serve(log: Arc<dyn EventLog>) -> (Keyledger, AppState) {
    let ledger = Keyledger::open_with(
        log,
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
    (ledger, state)
}

/// An operator's create of a key `name` for `user` of tenant acme.
async fn mint(state: &AppState, name: &str, user: &str) -> (StatusCode, Value) {
    let body = json!({"user": user, "name": name});
    call(
        state,
        "POST",
        "/v1/admin/tenants/acme/keys",
        OPERATOR,
        Some(body),
    )
    .await
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
        let (ledger, state) = serve(Arc::new(log));
        let (status, first) = mint(&state, "before", "ada").await;
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
            &mint(&state, "refused", "bob").await,
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
        let (status, after) = mint(&state, "after", "bob").await;
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

/// An in-memory log that answers every call as the redb log does when it
/// finds a page of its file damaged ([`StoreError::Damaged`]), while
/// `damaged` is set.
struct DamagedLog {
    inner: MemoryLog,
    damaged: AtomicBool,
}

const DAMAGED_FILE: &str = "/srv/keyledger/ledger.redb";

impl DamagedLog {
    fn check(&self) -> Result<(), StoreError> {
        if self.damaged.load(Ordering::SeqCst) {
            return Err(StoreError::Damaged {
                file: DAMAGED_FILE.into(),
                message: "redb could not read it: internal error: entered unreachable code".into(),
            });
        }
        Ok(())
    }
}

impl EventLog for DamagedLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        self.check()?;
        self.inner.append(batches)
    }
    fn head(&self) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.head()
    }
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.check()?;
        self.inner.read_after(after, limit)
    }
    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.check()?;
        self.inner.read_tenant(tenant, after_seq, limit)
    }
    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.check()?;
        self.inner.read_tenant_raw(tenant, after_seq, limit)
    }
    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        self.check()?;
        self.inner.tenant_head(tenant)
    }
    fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.check()?;
        self.inner.tenants()
    }
}

#[track_caller]
fn log_damaged(what: &str, (status, body): &(StatusCode, Value)) {
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(body["error"]["code"], "log_damaged", "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("damaged") && message.contains("nothing was acknowledged"),
        "{what}: unclear message {message:?}"
    );
    // Where the file is, is for the operator's log, not for a client.
    assert!(!message.contains(DAMAGED_FILE), "{what}: {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_found_damaged_after_start_answers_503_log_damaged_and_writes_nothing() {
    let log = Arc::new(DamagedLog {
        inner: MemoryLog::new(),
        damaged: AtomicBool::new(false),
    });
    let (ledger, state) = serve(log.clone());
    let (status, first) = mint(&state, "before", "ada").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let key = first["key"].as_str().unwrap_or("").to_owned();
    let id = first["id"].as_str().unwrap_or("").to_owned();
    let head = ledger.head();

    log.damaged.store(true, Ordering::SeqCst);
    // A write, and a read of the log itself (a key's history).
    log_damaged("admin create", &mint(&state, "refused", "ada").await);
    log_damaged(
        "revoke",
        &call(&state, "POST", &format!("/v1/keys/{id}/revoke"), &key, None).await,
    );
    log_damaged(
        "history",
        &call(&state, "GET", &format!("/v1/keys/{id}/history"), &key, None).await,
    );
    // What is answered from memory still is.
    let (status, v) = call(&state, "POST", "/v1/verify", "", Some(json!({"key": key}))).await;
    assert_eq!((status, &v["outcome"]), (StatusCode::OK, &json!("valid")));
    assert_eq!(ledger.head(), head, "something was written");

    // The file restored: the same server answers again.
    log.damaged.store(false, Ordering::SeqCst);
    let (status, history) =
        call(&state, "GET", &format!("/v1/keys/{id}/history"), &key, None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let (status, list) = call(&state, "GET", "/v1/keys", &key, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["keys"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["keys"][0]["status"], "active", "{list}");
    ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
}
