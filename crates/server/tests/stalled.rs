//! `POST /v1/verify` never waits for a disk write: with the event log's
//! appends stalled (a disk that stops answering), a create waits, and
//! verifications — each a counted use — keep being answered at once. When
//! the disk answers again, the create and every counted use are written.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keyledger_core::TenantId;
use keyledger_runtime::{Config, Keyledger, OsEntropy, SystemClock, UsageWindow};
use keyledger_server::{AppState, OperatorToken, app};
use keyledger_store::{EventLog, Hash, MemoryLog, RawRecord, Record, StoreError, TenantAppend};
use serde_json::{Value, json};
use tower::ServiceExt;

const OPERATOR: &str = "operator-token-for-the-stalled-disk-test";

/// An in-memory log whose appends block while the "disk" is stalled.
struct StallableLog {
    inner: MemoryLog,
    stalled: Mutex<bool>,
    resumed: Condvar,
}

impl StallableLog {
    fn set_stalled(&self, stalled: bool) {
        *self.stalled.lock().unwrap() = stalled;
        self.resumed.notify_all();
    }
}

impl EventLog for StallableLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        let mut stalled = self.stalled.lock().unwrap();
        while *stalled {
            stalled = self.resumed.wait(stalled).unwrap();
        }
        drop(stalled);
        self.inner.append(batches)
    }
    fn head(&self) -> Result<u64, StoreError> {
        self.inner.head()
    }
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.inner.read_after(after, limit)
    }
    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read_tenant(tenant, after_seq, limit)
    }
    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.inner.read_tenant_raw(tenant, after_seq, limit)
    }
    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        self.inner.tenant_head(tenant)
    }
    fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.inner.tenants()
    }
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_answers_while_the_disk_is_stalled() {
    let log = Arc::new(StallableLog {
        inner: MemoryLog::new(),
        stalled: Mutex::new(false),
        resumed: Condvar::new(),
    });
    let ledger = Keyledger::open_with(
        log.clone(),
        Config {
            // The flusher tries to write uses every 10 ms: it stalls too.
            usage_window: UsageWindow::from_millis(10),
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
    let (s, minted) = call(
        &router,
        "POST",
        "/v1/admin/tenants/acme/keys",
        Some(OPERATOR),
        json!({"user": "alice", "name": "api layer"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{minted}");
    let key = minted["key"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    let head = ledger.head();

    log.set_stalled(true);
    // A create waits for the disk...
    let create = {
        let (router, key) = (router.clone(), key.clone());
        tokio::spawn(async move {
            call(
                &router,
                "POST",
                "/v1/keys",
                Some(&key),
                json!({"name": "written later"}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !create.is_finished(),
        "a create was acknowledged without its commit"
    );
    // ...while every verification is answered, each within a second.
    for i in 0..500 {
        let (s, v) = tokio::time::timeout(
            Duration::from_secs(1),
            call(&router, "POST", "/v1/verify", None, json!({"key": key})),
        )
        .await
        .unwrap_or_else(|_| panic!("verification {i} waited for the stalled disk"));
        assert_eq!((s, v["outcome"].as_str()), (StatusCode::OK, Some("valid")));
    }
    assert_eq!(ledger.head(), head, "nothing was written while stalled");

    // The disk answers again: the create is acknowledged, and every use written.
    log.set_stalled(false);
    let (s, created) = tokio::time::timeout(Duration::from_secs(10), create)
        .await
        .expect("the create completes once the disk answers")
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "{created}");
    ledger.flush_usage().await.unwrap();
    let (s, shown) = call(
        &router,
        "GET",
        &format!("/v1/keys/{id}"),
        Some(&key),
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    // 500 verifications and the create's authentication.
    assert_eq!(shown["uses"]["total"], 501, "{shown}");
    ledger.shutdown().await.unwrap();
}
