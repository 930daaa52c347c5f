//! The runtime on the fault-injecting redb backend: every crash image
//! recovers with every acknowledged event; a failed write or sync is never
//! acknowledged and the runtime keeps working; a full or read-only disk
//! refuses management calls clearly and recovers when space returns.

mod common;

use std::sync::Arc;

use common::{Model, Rng, check_recovered, open, seed, step, tenant, user};
use keyledger_core::{Principal, Reporter, Timestamp};
use keyledger_runtime::{Error, ManualClock, NewKey, ReportedSecret, VerifyOutcome};
use keyledger_store::faults::FaultBackend;
use keyledger_store::{EventLog, RedbLog};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio: {e}"))
}

fn redb(disk: &FaultBackend) -> Arc<dyn EventLog> {
    Arc::new(RedbLog::open_with_backend(disk.clone()).unwrap_or_else(|e| panic!("open: {e}")))
}

/// Runs `rounds` rounds of `clients` concurrent operations (so group
/// commit batches them), moving the clock between rounds, sometimes
/// backwards.
async fn workload(
    ledger: &keyledger_runtime::Keyledger,
    model: &Model,
    clock: &ManualClock,
    rng: &mut Rng,
    rounds: usize,
    clients: usize,
    stamp: Arc<dyn Fn() -> u64 + Send + Sync>,
) {
    for _ in 0..rounds {
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let ledger = ledger.clone();
            let model = model.clone();
            let stamp = stamp.clone();
            let mut rng = Rng(rng.next());
            tasks.push(tokio::spawn(async move {
                step(&ledger, &model, &mut rng, &*stamp).await;
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("client panicked: {e}"));
        }
        if rng.below(8) == 0 {
            clock.advance_micros(-(rng.below(5_000_000) as i64));
        } else {
            clock.advance_micros(rng.below(3_000_000) as i64);
        }
    }
}

#[test]
fn every_crash_image_recovers_every_acknowledged_event() {
    let seed = seed("every_crash_image_recovers_every_acknowledged_event");
    let rt = rt();
    let disk = FaultBackend::new();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let model = Model::default();
    let log = redb(&disk);
    let created = disk.syncs();
    rt.block_on(async {
        let ledger = open(log, &clock, seed, 64).unwrap_or_else(|e| panic!("{e}"));
        let d = disk.clone();
        let mut rng = Rng(seed);
        workload(
            &ledger,
            &model,
            &clock,
            &mut rng,
            40,
            4,
            Arc::new(move || d.syncs()),
        )
        .await;
        ledger
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("shutdown: {e}"));
    });
    let record = model.lock();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut images, mut acks, mut events) = (0u64, 0u64, 0u64);
    rt.block_on(async {
        let mut list = Vec::new();
        disk.for_each_crash_image(seed, |img| {
            if img.sync > created {
                list.push(img);
            }
        });
        for img in list {
            for (kind, bytes) in [("durable", &img.durable), ("torn", &img.torn)] {
                let path = dir.path().join(format!("{}-{kind}.redb", img.sync));
                bytes.write_to(&path).unwrap_or_else(|e| panic!("{e}"));
                let what = format!("crash during sync {} ({kind})", img.sync);
                let log: Arc<dyn EventLog> = Arc::new(
                    RedbLog::open(&path).unwrap_or_else(|e| panic!("seed {seed}, {what}: {e}")),
                );
                let (ledger, checked) =
                    check_recovered(log, &record, img.sync, &clock, seed, &what);
                // The recovered ledger takes new commands.
                if img.sync % 16 == 0 {
                    let p = Principal::operator(tenant("acme"));
                    let new = NewKey {
                        owner: Some(user("zed")),
                        name: "after-crash".into(),
                        ..NewKey::default()
                    };
                    let c = ledger.create_key(p, new).await;
                    assert!(
                        c.is_ok(),
                        "seed {seed}, {what}: append after recovery: {c:?}"
                    );
                }
                ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
                images += 1;
                acks += checked.acks;
                events += checked.events;
                std::fs::remove_file(&path).ok();
            }
        }
    });
    println!(
        "seed {seed}: {} operations, {} acknowledged; crash images recovered: {images}; \
         acknowledgements checked: {acks}; events replayed: {events}",
        record.ops,
        record.acks.len()
    );
    assert!(images >= 50, "too few crash images: {images}");
    assert!(acks > 0);
}

/// The Nth write or sync fails while concurrent creates are in one group
/// commit, made durable by the write-ahead log or by a checkpoint: every
/// create is either acknowledged and in the log, or refused as unavailable
/// and absent; the runtime keeps working without a restart.
#[test]
fn a_failed_write_or_sync_is_never_acknowledged_and_the_runtime_recovers() {
    let seed = seed("a_failed_write_or_sync_is_never_acknowledged_and_the_runtime_recovers");
    let rt = rt();
    let mut injected = 0u64;
    let mut refused = 0u64;
    let mut rng = Rng(seed);
    // `open_with_backend` checkpoints every 16 frames: after 15 more
    // creates the faulted commit is a checkpoint.
    for (extra, sync, n) in [0usize, 15]
        .into_iter()
        .flat_map(|e| [false, true].map(|s| (e, s)))
        .flat_map(|(e, s)| (1..=10u64).map(move |n| (e, s, n)))
    {
        let disk = FaultBackend::new().without_journal();
        let clock = ManualClock::new(Timestamp::from_micros(common::T0));
        let log = redb(&disk);
        rt.block_on(async {
            let ledger =
                open(log.clone(), &clock, rng.next(), 64).unwrap_or_else(|e| panic!("{e}"));
            let p = || Principal::operator(tenant("acme"));
            let key = |name: &str| NewKey {
                owner: Some(user("ada")),
                name: name.into(),
                ..NewKey::default()
            };
            let first = ledger
                .create_key(p(), key("first"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for i in 0..extra {
                ledger
                    .create_key(p(), key(&format!("e{i}")))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let before = disk.faults_injected();
            if sync {
                disk.fail_sync(n);
            } else {
                disk.fail_write(n);
            }
            let mut tasks = Vec::new();
            for i in 0..4 {
                let l = ledger.clone();
                let k = key(&format!("c{i}"));
                tasks.push(tokio::spawn(async move {
                    l.create_key(Principal::operator(tenant("acme")), k).await
                }));
            }
            let revoke = ledger
                .revoke_key(p(), first.key.id, keyledger_core::RevokeReason::Manual)
                .await;
            let mut outcomes = Vec::new();
            for t in tasks {
                outcomes.push(t.await.unwrap_or_else(|e| panic!("{e}")));
            }
            disk.clear_faults();
            if disk.faults_injected() > before {
                injected += 1;
            }
            let (state, _) = ledger.projections();
            for (i, o) in outcomes.iter().enumerate() {
                match o {
                    Ok(c) => assert!(state.key(&tenant("acme"), c.key.id).is_some()),
                    Err(Error::Unavailable(_)) => {
                        refused += 1;
                        let name = format!("c{i}");
                        let present = state
                            .tenant(&tenant("acme"))
                            .is_some_and(|t| t.keys.values().any(|k| *k.name == *name));
                        assert!(
                            !present,
                            "seed {seed}: refused create {name} is in the ledger"
                        );
                    }
                    Err(e) => panic!("seed {seed}: unexpected {e}"),
                }
            }
            // A refused revoke leaves the key working; an acknowledged one stops it.
            let v = ledger.verify(first.secret.expose(), None).outcome;
            match &revoke {
                Ok(_) => assert_eq!(v, VerifyOutcome::Revoked),
                Err(Error::Unavailable(_)) => {
                    refused += 1;
                    assert_eq!(v, VerifyOutcome::Valid);
                }
                Err(e) => panic!("seed {seed}: unexpected {e}"),
            }
            // The runtime works on: a create and (if needed) the revoke succeed.
            ledger
                .create_key(p(), key("after"))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: after the fault: {e}"));
            if revoke.is_err() {
                ledger
                    .revoke_key(p(), first.key.id, keyledger_core::RevokeReason::Manual)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: revoke after the fault: {e}"));
            }
            ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
            // The log agrees after a reopen.
            drop(ledger);
            let (live, _) = common::fold(log.as_ref());
            drop(log);
            let reopened = redb(&disk);
            let (again, _) = common::fold(reopened.as_ref());
            assert!(live == again, "seed {seed}: the reopened log differs");
        });
    }
    println!(
        "seed {seed}: fault points injected: {injected}; calls refused as unavailable: {refused}"
    );
    assert!(injected >= 8, "too few faults fired: {injected}");
    assert!(refused > 0);
}

/// A full disk or a read-only data directory: management calls fail with a
/// clear "unavailable" error, verification keeps answering, usage counts
/// are kept, nothing refused is written, and everything works again once
/// space (or write access) returns, without a restart.
#[test]
fn disk_full_and_read_only_fail_clearly_and_recover() {
    let seed = seed("disk_full_and_read_only_fail_clearly_and_recover");
    let rt = rt();
    for mode in ["disk full", "read-only"] {
        let disk = FaultBackend::new().without_journal();
        let clock = ManualClock::new(Timestamp::from_micros(common::T0));
        let log = redb(&disk);
        rt.block_on(async {
            let ledger = open(log.clone(), &clock, seed, 64).unwrap_or_else(|e| panic!("{e}"));
            let p = || Principal::operator(tenant("acme"));
            let key = |name: &str| NewKey {
                owner: Some(user("ada")),
                name: name.into(),
                ..NewKey::default()
            };
            let k = ledger
                .create_key(p(), key("before"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let head = ledger.head();
            if mode == "disk full" {
                disk.set_full(true);
            } else {
                disk.set_read_only(true);
            }
            for i in 0..5 {
                let e = ledger.create_key(p(), key(&format!("refused-{i}"))).await;
                let Err(Error::Unavailable(msg)) = e else {
                    panic!("{mode}: create was not refused as unavailable: {e:?}");
                };
                let lower = msg.to_string().to_lowercase();
                assert!(
                    lower.contains("no space left") || lower.contains("read-only"),
                    "{mode}: unclear error: {msg}"
                );
            }
            let e = ledger
                .revoke_key(p(), k.key.id, keyledger_core::RevokeReason::Manual)
                .await;
            assert!(matches!(e, Err(Error::Unavailable(_))), "{mode}: {e:?}");
            // Verification does not touch the disk: it answers, and counts.
            for _ in 0..7 {
                assert_eq!(
                    ledger.verify(k.secret.expose(), None).outcome,
                    VerifyOutcome::Valid
                );
            }
            // A flush during the outage is never answered as written: it
            // fails, or (usage whose commit is in doubt) waits until the
            // log can tell.
            let outage_flush = {
                let l = ledger.clone();
                tokio::spawn(async move { l.flush_usage().await })
            };
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let waited = !outage_flush.is_finished();
            assert_eq!(ledger.head(), head, "{mode}: something was applied");
            disk.set_full(false);
            disk.set_read_only(false);
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), outage_flush)
                .await
                .unwrap_or_else(|_| panic!("{mode}: a flush begun in the outage never ended"))
                .unwrap_or_else(|e| panic!("{e}"));
            if !waited {
                assert!(outcome.is_err(), "{mode}: usage flushed to a broken disk");
            }
            println!(
                "{mode}: a flush during the outage {}",
                if waited {
                    "waited for the disk"
                } else {
                    "failed"
                }
            );
            ledger
                .create_key(p(), key("after"))
                .await
                .unwrap_or_else(|e| panic!("{mode}: after recovery: {e}"));
            ledger
                .flush_usage()
                .await
                .unwrap_or_else(|e| panic!("{mode}: flush after recovery: {e}"));
            ledger
                .revoke_key(p(), k.key.id, keyledger_core::RevokeReason::Manual)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (state, _) = ledger.projections();
            let rec = state
                .key(&tenant("acme"), k.key.id)
                .unwrap_or_else(|| panic!("key"));
            assert_eq!(rec.uses.total(), 7, "{mode}: counts kept across the outage");
            let names: Vec<_> = state
                .tenant(&tenant("acme"))
                .map(|t| t.keys.values().map(|k| k.name.clone()).collect())
                .unwrap_or_default();
            assert!(
                !names.iter().any(|n| n.starts_with("refused")),
                "{mode}: a refused create was written"
            );
            ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
        println!("{mode}: refused 5 creates and 1 revoke; usage kept and written once; recovered");
    }
}

/// The clock going backwards: event times in a tenant never decrease, and
/// the skew is counted in the metrics.
#[test]
fn a_clock_going_backwards_never_moves_event_times_back_and_is_recorded() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(keyledger_store::MemoryLog::new());
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, 7, 64).unwrap_or_else(|e| panic!("{e}"));
        let p = || Principal::operator(tenant("acme"));
        let key = |name: &str| NewKey {
            owner: Some(user("ada")),
            name: name.into(),
            ..NewKey::default()
        };
        ledger
            .create_key(p(), key("a"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ledger
                .metrics()
                .clock_behind_decisions
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        clock.advance_micros(-90_000_000);
        ledger
            .create_key(p(), key("b"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        clock.advance_micros(30_000_000);
        ledger
            .create_key(p(), key("c"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Another tenant has no earlier event: no skew there.
        ledger
            .create_key(Principal::operator(tenant("globex")), key("d"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let m = ledger.metrics();
        assert_eq!(
            m.clock_behind_decisions
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            m.clock_behind_micros_max
                .load(std::sync::atomic::Ordering::Relaxed),
            90_000_000
        );
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let records = log
        .read_tenant(&tenant("acme"), 0, 100)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.len(), 3);
    for w in records.windows(2) {
        assert!(w[0].event.at <= w[1].event.at, "event times went backwards");
    }
    assert_eq!(
        records[1].event.at, records[0].event.at,
        "the behind clock took the last event's time"
    );
}

/// A log whose appends take a while: keeps a flush in flight.
struct SlowLog(keyledger_store::MemoryLog);

impl EventLog for SlowLog {
    fn append(
        &self,
        batches: Vec<keyledger_store::TenantAppend>,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        std::thread::sleep(std::time::Duration::from_millis(150));
        self.0.append(batches)
    }
    fn head(&self) -> Result<u64, keyledger_store::StoreError> {
        self.0.head()
    }
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        self.0.read_after(after, limit)
    }
    fn read_tenant(
        &self,
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::Record>, keyledger_store::StoreError> {
        self.0.read_tenant(tenant, after_seq, limit)
    }
    fn read_tenant_raw(
        &self,
        tenant: &keyledger_core::TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<keyledger_store::RawRecord>, keyledger_store::StoreError> {
        self.0.read_tenant_raw(tenant, after_seq, limit)
    }
    fn tenant_head(
        &self,
        tenant: &keyledger_core::TenantId,
    ) -> Result<Option<(u64, keyledger_store::Hash)>, keyledger_store::StoreError> {
        self.0.tenant_head(tenant)
    }
    fn tenants(&self) -> Result<Vec<keyledger_core::TenantId>, keyledger_store::StoreError> {
        self.0.tenants()
    }
}

/// Regression (found by the crash-image test): a flush that started while
/// another was writing found nothing to take and returned at once, before
/// the uses counted earlier were written. Flushes now run one at a time.
#[test]
fn a_flush_returns_only_once_every_use_counted_before_it_is_written() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(SlowLog(keyledger_store::MemoryLog::new()));
    rt.block_on(async {
        let ledger = open(log, &clock, 11, 64).unwrap_or_else(|e| panic!("{e}"));
        let k = ledger
            .create_key(
                Principal::operator(tenant("acme")),
                NewKey {
                    owner: Some(user("ada")),
                    name: "k".into(),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..3 {
            ledger.verify(k.secret.expose(), None);
        }
        let first = {
            let l = ledger.clone();
            tokio::spawn(async move { l.flush_usage().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        ledger.flush_usage().await.unwrap_or_else(|e| panic!("{e}"));
        let (state, _) = ledger.projections();
        let uses = state
            .key(&tenant("acme"), k.key.id)
            .map_or(0, |r| r.uses.total());
        assert_eq!(
            uses, 3,
            "the second flush returned before the uses were written"
        );
        first
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

/// Regression (found by the simulation, seed 1795427853588301748): removing
/// a user revokes only their *active* keys (`decide`'s rule), so a key that
/// had expired stayed unrevoked, and when the clock stepped back before its
/// expiry it verified valid again, for a removed user. Removal now refuses
/// every key of the user on the verification path.
#[test]
fn a_removed_users_expired_key_stays_refused_when_the_clock_steps_back() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(keyledger_store::MemoryLog::new());
    let check = |ledger: &keyledger_runtime::Keyledger, secret: &str| {
        let v = ledger.verify(secret, None).outcome;
        assert_ne!(
            v,
            VerifyOutcome::Valid,
            "a removed user's key verified valid"
        );
    };
    let secret = rt.block_on(async {
        let ledger = open(log.clone(), &clock, 5, 64).unwrap_or_else(|e| panic!("{e}"));
        let p = || Principal::operator(tenant("acme"));
        let k = ledger
            .create_key(
                p(),
                NewKey {
                    owner: Some(user("eve")),
                    name: "short".into(),
                    expires_at: Some(Timestamp::from_micros(common::T0).plus_seconds(10)),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        clock.advance_micros(20_000_000);
        assert_eq!(
            ledger.verify(k.secret.expose(), None).outcome,
            VerifyOutcome::Expired
        );
        let revoked = ledger
            .remove_user(p(), user("eve"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            revoked.is_empty(),
            "the expired key is not revoked by the cascade"
        );
        clock.advance_micros(-15_000_000);
        check(&ledger, k.secret.expose());
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        k.secret.expose().to_owned()
    });
    // After a restart (replay) too.
    rt.block_on(async {
        let ledger = open(log, &clock, 6, 64).unwrap_or_else(|e| panic!("{e}"));
        check(&ledger, &secret);
        ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

/// A graceful shutdown during a disk outage ends (bounded), reporting that
/// counted uses could not be written; it does not wait for the disk.
#[test]
fn shutdown_during_a_disk_outage_ends_and_says_uses_were_not_written() {
    let rt = rt();
    for mode in ["disk full", "read-only"] {
        let disk = FaultBackend::new().without_journal();
        let clock = ManualClock::new(Timestamp::from_micros(common::T0));
        let log = redb(&disk);
        rt.block_on(async {
            let ledger = open(log.clone(), &clock, 3, 64).unwrap_or_else(|e| panic!("{e}"));
            let k = ledger
                .create_key(
                    Principal::operator(tenant("acme")),
                    NewKey {
                        owner: Some(user("ada")),
                        name: "k".into(),
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..3 {
                ledger.verify(k.secret.expose(), None);
            }
            if mode == "disk full" {
                disk.set_full(true);
            } else {
                disk.set_read_only(true);
            }
            let stopped =
                tokio::time::timeout(std::time::Duration::from_secs(20), ledger.shutdown()).await;
            let Ok(result) = stopped else {
                panic!("{mode}: shutdown waited for the disk");
            };
            assert!(
                result.is_err(),
                "{mode}: shutdown reported every use written"
            );
        });
    }
}

/// A leak report that names keys of two tenants is one append: when its
/// write or sync fails, neither key is revoked nor any `KeyLeaked` written;
/// once it succeeds, both are, and a replay of the log agrees.
#[test]
fn a_leak_report_across_tenants_is_written_whole_or_not_at_all() {
    let rt = rt();
    let mut refusals = 0;
    for (sync, n) in [(false, 1), (false, 2), (true, 1), (true, 2), (true, 3)] {
        let disk = FaultBackend::new().without_journal();
        let clock = ManualClock::new(Timestamp::from_micros(common::T0));
        let log = redb(&disk);
        rt.block_on(async {
            let ledger = open(log.clone(), &clock, 7, 64).unwrap_or_else(|e| panic!("{e}"));
            let mut secrets = Vec::new();
            for t in ["acme", "globex"] {
                let created = ledger
                    .create_key(
                        Principal::operator(tenant(t)),
                        NewKey {
                            owner: Some(user("ada")),
                            name: format!("{t}'s key"),
                            ..NewKey::default()
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                secrets.push(created.secret.expose().to_owned());
            }
            let report = || {
                secrets
                    .iter()
                    .map(|s| ReportedSecret {
                        secret: s.clone(),
                        source: Some("commit".into()),
                        url: None,
                    })
                    .collect::<Vec<_>>()
            };
            let head = log.head().unwrap_or_else(|e| panic!("{e}"));
            if sync {
                disk.fail_sync(n);
            } else {
                disk.fail_write(n);
            }
            let first = ledger.report_leaked(Reporter::Operator, report()).await;
            disk.clear_faults();
            match first {
                Err(Error::Unavailable(_)) => {
                    refusals += 1;
                    for s in &secrets {
                        assert_eq!(ledger.verify(s, None).outcome, VerifyOutcome::Valid);
                    }
                    assert_eq!(log.head().unwrap_or_else(|e| panic!("{e}")), head);
                    let done = ledger
                        .report_leaked(Reporter::Operator, report())
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!((done.reported, done.found), (2, 2));
                }
                Ok(done) => assert_eq!((done.reported, done.found), (2, 2)),
                Err(e) => panic!("sync {sync}, n {n}: {e}"),
            }
            for s in &secrets {
                assert_eq!(ledger.verify(s, None).outcome, VerifyOutcome::Revoked);
            }
            // One append: four records in a row, each tenant's pair together.
            let records = log.read_after(head, 10).unwrap_or_else(|e| panic!("{e}"));
            let kinds: Vec<(&str, &str)> = records
                .iter()
                .map(|r| (r.event.tenant.as_str(), r.event.type_name()))
                .collect();
            assert_eq!(
                kinds,
                [
                    ("acme", "KeyLeaked"),
                    ("acme", "KeyRevoked"),
                    ("globex", "KeyLeaked"),
                    ("globex", "KeyRevoked"),
                ]
            );
            ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
        // A replay of the log builds the same key state.
        let reopened = redb(&disk);
        rt.block_on(async {
            let ledger = open(reopened, &clock, 8, 64).unwrap_or_else(|e| panic!("{e}"));
            let (state, _) = ledger.projections();
            for t in ["acme", "globex"] {
                let revoked = state
                    .tenant(&tenant(t))
                    .map(|s| s.keys.values().filter(|k| k.revoked.is_some()).count());
                assert_eq!(revoked, Some(1), "{t}");
            }
            ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
    }
    assert!(refusals >= 1, "no injected fault refused the report");
}
