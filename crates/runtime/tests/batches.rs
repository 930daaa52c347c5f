//! The writer's batches (writer.rs): commands in one batch see each
//! other's effects, and a batch whose commit fails leaves no trace in the
//! read model. The batch is made for sure: a log whose append can be held
//! keeps the writer waiting while the commands are queued behind it.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use common::{T0, open, tenant, user};
use keyledger_core::secret::BODY_BYTES;
use keyledger_core::{
    Command, CreateKey, KeyId, KeyPrefix, Principal, RemoveUser, RevokeKey, RevokeReason,
    RotateKey, Secret, Timestamp,
};
use keyledger_runtime::{Error, Keyledger, ManualClock, NewKey, VerifyOutcome};
use keyledger_store::{EventLog, Hash, MemoryLog, RawRecord, Record, StoreError, TenantAppend};

/// A log in memory whose next append can be held until released, and
/// whose next (unheld) append can be made to fail, writing nothing.
struct GateLog {
    inner: MemoryLog,
    hold: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
    fail_next: AtomicBool,
}

impl GateLog {
    /// Holds the next append: the first receiver says it started, the
    /// sender lets it go on.
    fn hold(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, started_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some((started, release_rx));
        (started_rx, release)
    }
}

impl EventLog for GateLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        let held = self.hold.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((started, release)) = held {
            let _ = started.send(());
            let _ = release.recv();
        } else if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Backend("injected: the disk failed".into()));
        }
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
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.inner.read_tenant(tenant, after_seq, limit)
    }
    fn read_tenant_raw(
        &self,
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.inner.read_tenant_raw(tenant, after_seq, limit)
    }
    fn tenant_head(
        &self,
        tenant: &keyledger_core::TenantId,
    ) -> Result<Option<(u64, Hash)>, StoreError> {
        self.inner.tenant_head(tenant)
    }
    fn tenants(&self) -> Result<Vec<keyledger_core::TenantId>, StoreError> {
        self.inner.tenants()
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Vec<Record>, Error>> + Send>>;

/// Runs `commands` as one batch of the writer: holds the log's next
/// append (a key created in another tenant), queues every command in
/// order while the writer waits in it, then lets it go. Returns each
/// command's answer, in order.
async fn one_batch(
    ledger: &Keyledger,
    log: &GateLog,
    commands: Vec<Command>,
) -> Vec<Result<Vec<Record>, Error>> {
    let (started, release) = log.hold();
    let blocker = {
        let l = ledger.clone();
        tokio::spawn(async move {
            l.create_key(
                Principal::operator(tenant("other")),
                NewKey {
                    owner: Some(user("zed")),
                    name: "holds the writer".into(),
                    ..NewKey::default()
                },
            )
            .await
        })
    };
    started
        .await
        .unwrap_or_else(|e| panic!("the held append: {e}"));
    let mut pending: Vec<Pending> = commands
        .into_iter()
        .map(|c| {
            let l = ledger.clone();
            Box::pin(async move { l.execute(c).await }) as Pending
        })
        .collect();
    // One poll each, in order: each command is in the writer's queue (the
    // writer is held, so none can be answered yet).
    std::future::poll_fn(|cx| {
        for p in &mut pending {
            assert!(p.as_mut().poll(cx).is_pending(), "answered while held");
        }
        Poll::Ready(())
    })
    .await;
    release.send(()).unwrap_or_else(|e| panic!("release: {e}"));
    blocker
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("the held create: {e}"));
    let mut answers = Vec::new();
    for p in pending {
        answers.push(p.await);
    }
    answers
}

fn secret(n: u8) -> Secret {
    Secret::from_material(&KeyPrefix::default(), &[n; BODY_BYTES])
}

fn create(id: KeyId, owner: &str, s: &Secret) -> Command {
    Command::CreateKey(CreateKey {
        principal: Principal::operator(tenant("acme")),
        owner: Some(user(owner)),
        name: "batched".into(),
        description: None,
        expires_at: None,
        scopes: None,
        key_id: id,
        secret_hash: s.hash(),
        masked: s.masked(),
        meta: None,
        credits: None,
        limits: Vec::new(),
    })
}

fn revoke(id: KeyId) -> Command {
    Command::RevokeKey(RevokeKey {
        principal: Principal::operator(tenant("acme")),
        key_id: id,
        reason: RevokeReason::Manual,
    })
}

/// What each answer was: `Ok` with the kinds of its events, the refusal,
/// or "failed" for any other error.
fn outcome(a: &Result<Vec<Record>, Error>) -> String {
    match a {
        Ok(records) => format!(
            "ok {:?}",
            records
                .iter()
                .map(|r| r.event.kind.type_name())
                .collect::<Vec<_>>()
        ),
        Err(Error::Command(e)) => format!("{e:?}").split('(').next().unwrap_or("").to_owned(),
        Err(_) => "failed".to_owned(),
    }
}

#[test]
fn a_batch_sees_its_own_effects_and_a_failed_commit_leaves_no_trace() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio: {e}"));
    let log = Arc::new(GateLog {
        inner: MemoryLog::new(),
        hold: Mutex::new(None),
        fail_next: AtomicBool::new(false),
    });
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, 3, 64).unwrap_or_else(|e| panic!("{e}"));
        let acme = || Principal::operator(tenant("acme"));
        let old = ledger
            .create_key(
                acme(),
                NewKey {
                    owner: Some(user("ada")),
                    name: "old".into(),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let bobs = ledger
            .create_key(
                acme(),
                NewKey {
                    owner: Some(user("bob")),
                    name: "bob's".into(),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let k = KeyId::from_u128(0x0197_0000_0000_0000_0000_0000_0000_0001);
        let successor = KeyId::from_u128(0x0197_0000_0000_0000_0000_0000_0000_0002);
        let batch = || {
            vec![
                create(k, "ada", &secret(1)),
                revoke(k),
                // The revoke before it in the batch counts.
                revoke(k),
                // So does the create.
                create(k, "ada", &secret(3)),
                Command::RotateKey(RotateKey {
                    principal: acme(),
                    key_id: old.key.id,
                    grace_seconds: 0,
                    expires_at: None,
                    new_key_id: successor,
                    secret_hash: secret(2).hash(),
                    masked: secret(2).masked(),
                }),
                revoke(old.key.id),
                Command::RemoveUser(RemoveUser {
                    principal: acme(),
                    user_id: user("bob"),
                }),
                create(
                    KeyId::from_u128(0x0197_0000_0000_0000_0000_0000_0000_0003),
                    "bob",
                    &secret(4),
                ),
            ]
        };
        let (before, _) = ledger.projections();

        // The commit fails: the refusals are the batch's own, the rest fail.
        log.fail_next.store(true, Ordering::SeqCst);
        let answers = one_batch(&ledger, &log, batch()).await;
        let outcomes: Vec<String> = answers.iter().map(outcome).collect();
        assert_eq!(
            outcomes,
            [
                "failed",
                "failed",
                "AlreadyRevoked",
                "Duplicate",
                "failed",
                "AlreadyRevoked",
                "failed",
                "UserRemoved",
            ]
        );
        let (after, _) = ledger.projections();
        assert!(
            after.tenant(&tenant("acme")) == before.tenant(&tenant("acme")),
            "the failed batch left a trace in the read model"
        );
        assert!(!after.key_exists(k) && !after.key_exists(successor));
        assert_eq!(
            ledger.verify(secret(1).expose(), None).outcome,
            VerifyOutcome::NotFound
        );
        assert_eq!(
            ledger.verify(old.secret.expose(), None).outcome,
            VerifyOutcome::Valid
        );
        assert_eq!(
            ledger.verify(bobs.secret.expose(), None).outcome,
            VerifyOutcome::Valid
        );

        // The same batch again, committed: the same refusals, the rest done.
        let answers = one_batch(&ledger, &log, batch()).await;
        let outcomes: Vec<String> = answers.iter().map(outcome).collect();
        assert_eq!(
            outcomes,
            [
                "ok [\"KeyCreated\"]",
                "ok [\"KeyRevoked\"]",
                "AlreadyRevoked",
                "Duplicate",
                "ok [\"KeyCreated\", \"KeyRevoked\"]",
                "AlreadyRevoked",
                "ok [\"UserRemoved\", \"KeyRevoked\"]",
                "UserRemoved",
            ]
        );
        assert_eq!(
            ledger.verify(secret(1).expose(), None).outcome,
            VerifyOutcome::Revoked
        );
        assert_eq!(
            ledger.verify(secret(2).expose(), None).outcome,
            VerifyOutcome::Valid
        );
        assert_eq!(
            ledger.verify(old.secret.expose(), None).outcome,
            VerifyOutcome::Revoked
        );
        assert_eq!(
            ledger.verify(bobs.secret.expose(), None).outcome,
            VerifyOutcome::Revoked
        );
        // The read model is the log folded.
        let (live, _) = ledger.projections();
        let (folded, _) = common::fold(log.as_ref());
        assert!(live == folded, "the read model is not the log");
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}
