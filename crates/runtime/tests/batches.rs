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

/// A tokio runtime and a [`GateLog`] in memory, neither holding nor failing.
fn runtime_and_log() -> (tokio::runtime::Runtime, Arc<GateLog>) {
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
    (rt, log)
}

/// Holds the writer in an append (a key created in another tenant) and
/// returns once it is held: the create's task, and the sender that lets
/// the append go on.
async fn hold_writer(
    ledger: &Keyledger,
    log: &GateLog,
) -> (
    tokio::task::JoinHandle<Result<keyledger_runtime::Created, Error>>,
    std::sync::mpsc::Sender<()>,
) {
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
    (blocker, release)
}

/// Runs `commands` as one batch of the writer: holds the log's next
/// append ([`hold_writer`]), queues every command in
/// order while the writer waits in it, then lets it go. Returns each
/// command's answer, in order.
async fn one_batch(
    ledger: &Keyledger,
    log: &GateLog,
    commands: Vec<Command>,
) -> Vec<Result<Vec<Record>, Error>> {
    let (blocker, release) = hold_writer(ledger, log).await;
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
    let (rt, log) = runtime_and_log();
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

/// A large usage flush does not fill the writer's queue ahead of other
/// commands: with the writer held, the flush sends
/// `Config::usage_in_flight_max` usage commands and waits; a create sent
/// then is committed after those few, not after all of the flush's
/// (issue 13: at 10M keys a create waited 6.1 s behind a flush). Every
/// use is still written, once.
#[test]
fn a_create_waits_behind_at_most_the_flush_s_usage_in_flight() {
    const KEYS: usize = 40;
    const IN_FLIGHT: usize = 8;
    let (rt, log) = runtime_and_log();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    rt.block_on(async {
        let ledger = Keyledger::open_with(
            log.clone(),
            keyledger_runtime::Config {
                usage_window: keyledger_runtime::UsageWindow::Manual,
                usage_in_flight_max: IN_FLIGHT,
                ..keyledger_runtime::Config::default()
            },
            Arc::new(clock.clone()),
            Arc::new(common::SeededEntropy::new(5)),
            &mut |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let acme = || Principal::operator(tenant("acme"));
        let mut secrets = Vec::new();
        for i in 0..KEYS {
            let created = ledger
                .create_key(
                    acme(),
                    NewKey {
                        owner: Some(user("ada")),
                        name: format!("used {i}"),
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            secrets.push(created.secret);
        }
        for s in &secrets {
            assert_eq!(
                ledger.verify(s.expose(), None).outcome,
                VerifyOutcome::Valid
            );
        }
        // Hold the writer in an append, then flush.
        let (blocker, release) = hold_writer(&ledger, &log).await;
        let flush = {
            let l = ledger.clone();
            tokio::spawn(async move { l.flush_usage().await })
        };
        let wait_for_depth = |n: usize| {
            let l = ledger.clone();
            async move {
                let began = std::time::Instant::now();
                while l.queue_depth() < n {
                    assert!(
                        began.elapsed() < std::time::Duration::from_secs(30),
                        "the queue never held {n} commands (it holds {})",
                        l.queue_depth()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        };
        wait_for_depth(IN_FLIGHT).await;
        // Give the flush every chance to send more than it may.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            ledger.queue_depth(),
            IN_FLIGHT,
            "the flush keeps at most {IN_FLIGHT} usage commands waiting for the writer"
        );
        let behind = {
            let l = ledger.clone();
            tokio::spawn(async move {
                l.create_key(
                    acme(),
                    NewKey {
                        owner: Some(user("bob")),
                        name: "sent during the flush".into(),
                        ..NewKey::default()
                    },
                )
                .await
            })
        };
        wait_for_depth(IN_FLIGHT + 1).await;
        release.send(()).unwrap_or_else(|e| panic!("release: {e}"));
        blocker
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the held create: {e}"));
        let created = behind
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the create sent during the flush: {e}"));
        let written = flush
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the flush: {e}"));
        assert_eq!(written, KEYS, "one usage event per key");
        let records = log
            .read_tenant(&tenant("acme"), 0, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        let used = |r: &Record| keyledger_core::as_use(&r.event).is_some();
        let before = records
            .iter()
            .filter(|r| used(r) && r.position < created.position)
            .count();
        let after = records
            .iter()
            .filter(|r| used(r) && r.position > created.position)
            .count();
        assert!(
            before <= IN_FLIGHT,
            "the create waited behind {before} usage events, more than the {IN_FLIGHT} in flight"
        );
        assert_eq!(before + after, KEYS, "every key's use is in the log once");
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}
