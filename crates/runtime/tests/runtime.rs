//! The runtime against real logs: durability, group commit, usage counting
//! and the replay invariant (a projection rebuilt from the log equals the
//! live one), on the in-memory and the redb backends.

use std::sync::Arc;

use keyledger_core::{
    Ledger, Principal, RevokeReason, Scope, ScopeSet, TenantId, Timestamp, Usage, UserId,
};
use keyledger_runtime::{
    Config, Keyledger, ManualClock, NewKey, OsEntropy, UsageWindow, VerifyOutcome,
};
use keyledger_store::{EventLog, MemoryLog, RedbLog};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn tenant(s: &str) -> TenantId {
    s.parse().unwrap()
}

fn user(s: &str) -> UserId {
    s.parse().unwrap()
}

fn open(log: Arc<dyn EventLog>, clock: &ManualClock) -> Keyledger {
    let config = Config {
        usage_window: UsageWindow::Manual,
        ..Config::default()
    };
    Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Folds a whole log from scratch, as a fresh process would.
fn fold(log: &dyn EventLog) -> (Ledger, Usage) {
    let mut ledger = Ledger::new();
    let mut usage = Usage::new();
    let mut after = 0;
    loop {
        let page = log.read_after(after, 1000).unwrap();
        if page.is_empty() {
            return (ledger, usage);
        }
        for r in &page {
            ledger.apply(r.seq, &r.event).unwrap();
            usage.apply(&r.event);
            after = r.position;
        }
    }
}

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..NewKey::default()
    }
}

#[test]
fn acknowledged_creates_survive_reopen_and_the_secret_is_not_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let rt = rt();
    let secrets: Vec<String> = rt.block_on(async {
        let ledger = open(Arc::new(RedbLog::open(&path).unwrap()), &clock);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let p = Principal::user(tenant("acme"), user(&format!("u{}", i % 4)));
                l.create_key(p, new_key(&format!("key {i}"))).await.unwrap()
            }));
        }
        let mut secrets = Vec::new();
        for t in tasks {
            secrets.push(t.await.unwrap().secret.expose().to_owned());
        }
        ledger.shutdown().await.unwrap();
        secrets
    });
    let bytes = std::fs::read(&path).unwrap();
    for s in &secrets {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret is in the data file"
        );
    }
    rt.block_on(async {
        let ledger = open(Arc::new(RedbLog::open(&path).unwrap()), &clock);
        assert_eq!(ledger.key_counts(&tenant("acme")), (64, 64));
        for s in &secrets {
            assert_eq!(ledger.verify(s, None).outcome, VerifyOutcome::Valid);
        }
        ledger.shutdown().await.unwrap();
    });
}

#[test]
fn revocation_is_enforced_when_revoke_returns_and_uses_are_counted_exactly() {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log = MemoryLog::new();
    rt().block_on(async {
        let ledger = open(Arc::new(log.clone()), &clock);
        let p = Principal::user(tenant("acme"), user("alice"));
        let scoped = NewKey {
            scopes: Some(ScopeSet::EMPTY.with(Scope::UsageRead)),
            ..new_key("scoped")
        };
        let a = ledger.create_key(p.clone(), scoped).await.unwrap();
        let s = a.secret.expose().to_owned();
        for _ in 0..5 {
            assert_eq!(
                ledger.verify(&s, Some(Scope::UsageRead)).outcome,
                VerifyOutcome::Valid
            );
        }
        assert_eq!(
            ledger.verify(&s, Some(Scope::KeysWrite)).outcome,
            VerifyOutcome::InsufficientScope
        );
        ledger
            .revoke_key(p.clone(), a.key.id, RevokeReason::Manual)
            .await
            .unwrap();
        assert_eq!(ledger.verify(&s, None).outcome, VerifyOutcome::Revoked);
        assert_eq!(
            ledger.verify("klk_nope", None).outcome,
            VerifyOutcome::Malformed
        );
        let mut typo = s.clone().into_bytes();
        typo[8] = if typo[8] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            ledger
                .verify(std::str::from_utf8(&typo).unwrap(), None)
                .outcome,
            VerifyOutcome::Malformed
        );
        // Not flushed on purpose: shutdown must write every counted use.
        ledger.shutdown().await.unwrap();
        let reopened = open(Arc::new(log.clone()), &clock);
        let k = reopened.key(&tenant("acme"), a.key.id).unwrap();
        assert_eq!(
            (k.uses.valid, k.uses.insufficient_scope, k.uses.revoked),
            (5, 1, 1)
        );
        assert_eq!(k.last_used_at, Some(Timestamp::from_micros(T0)));
        let today = Timestamp::from_micros(T0).day();
        let rows = reopened
            .usage_daily(&tenant("acme"), None, today, today)
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].counts.total(), 7);
        reopened.shutdown().await.unwrap();
    });
}

#[test]
fn verify_with_lends_the_key_and_counts_exactly_like_verify() {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log = MemoryLog::new();
    rt().block_on(async {
        let ledger = open(Arc::new(log.clone()), &clock);
        let p = Principal::user(tenant("acme"), user("alice"));
        let a = ledger.create_key(p.clone(), new_key("lent")).await.unwrap();
        let s = a.secret.expose().to_owned();
        for _ in 0..3 {
            let (outcome, id) = ledger.verify_with(&s, None, |o, k| (o, k.map(|k| k.key_id)));
            assert_eq!((outcome, id), (VerifyOutcome::Valid, Some(a.key.id)));
        }
        assert_eq!(ledger.verify(&s, None).outcome, VerifyOutcome::Valid);
        assert_eq!(
            ledger.verify_with("klk_nope", None, |o, k| (o, k.is_none())),
            (VerifyOutcome::Malformed, true)
        );
        ledger
            .revoke_key(p, a.key.id, RevokeReason::Manual)
            .await
            .unwrap();
        assert_eq!(
            ledger.verify_with(&s, None, |o, _| o),
            VerifyOutcome::Revoked
        );
        ledger.shutdown().await.unwrap();
        let reopened = open(Arc::new(log.clone()), &clock);
        let k = reopened.key(&tenant("acme"), a.key.id).unwrap();
        assert_eq!((k.uses.valid, k.uses.revoked), (4, 1));
        reopened.shutdown().await.unwrap();
    });
}

#[test]
fn a_second_revoke_in_the_same_batch_is_a_conflict() {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    rt().block_on(async {
        let ledger = open(Arc::new(MemoryLog::new()), &clock);
        let p = Principal::user(tenant("acme"), user("alice"));
        let k = ledger
            .create_key(p.clone(), new_key("k"))
            .await
            .unwrap()
            .key
            .id;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (l, p) = (ledger.clone(), p.clone());
                tokio::spawn(async move { l.revoke_key(p, k, RevokeReason::Manual).await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(
            ok, 1,
            "exactly one of eight concurrent revocations succeeds"
        );
        ledger.shutdown().await.unwrap();
    });
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        tenant: usize,
        user: usize,
        scopes: Option<u8>,
        expires_in: Option<u16>,
    },
    Revoke {
        key: usize,
    },
    Rotate {
        key: usize,
        grace: u16,
    },
    Remove {
        tenant: usize,
        user: usize,
    },
    Verify {
        key: usize,
        times: u8,
        scope: Option<u8>,
    },
    Flush,
    Clock {
        seconds: i32,
    },
    /// A key with metadata, credits refilled daily and a rate limit.
    CreateMetered {
        tenant: usize,
        credits: u16,
    },
    Update {
        key: usize,
        name: u8,
        narrow: bool,
    },
    Reserve {
        key: usize,
        want: u16,
    },
    Release {
        key: usize,
        amount: u8,
    },
    Refill {
        key: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4usize, proptest::option::of(1u8..32), proptest::option::of(1u16..600))
            .prop_map(|(tenant, user, scopes, expires_in)| Op::Create { tenant, user, scopes, expires_in }),
        2 => (0..64usize).prop_map(|key| Op::Revoke { key }),
        1 => (0..64usize, 0u16..120).prop_map(|(key, grace)| Op::Rotate { key, grace }),
        1 => (0..3usize, 0..4usize).prop_map(|(tenant, user)| Op::Remove { tenant, user }),
        4 => (0..64usize, 1u8..5, proptest::option::of(0u8..5)).prop_map(|(key, times, scope)| Op::Verify { key, times, scope }),
        1 => Just(Op::Flush),
        1 => (-30i32..3600).prop_map(|seconds| Op::Clock { seconds }),
        1 => Just(Op::Clock { seconds: 86_400 }),
        2 => (0..3usize, 0u16..300).prop_map(|(tenant, credits)| Op::CreateMetered { tenant, credits }),
        2 => (0..64usize, 0u8..4, any::<bool>()).prop_map(|(key, name, narrow)| Op::Update { key, name, narrow }),
        3 => (0..64usize, 1u16..100).prop_map(|(key, want)| Op::Reserve { key, want }),
        1 => (0..64usize, 1u8..50).prop_map(|(key, amount)| Op::Release { key, amount }),
        1 => (0..64usize).prop_map(|key| Op::Refill { key }),
    ]
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Runs the ops, several at a time so that group commits mix commands.
async fn drive(ledger: &Keyledger, clock: &ManualClock, ops: &[Op]) {
    let mut keys: Vec<(TenantId, keyledger_core::KeyId, String)> = Vec::new();
    for chunk in ops.chunks(4) {
        let mut tasks = Vec::new();
        for op in chunk {
            let l = ledger.clone();
            match op.clone() {
                Op::Create {
                    tenant: t,
                    user: u,
                    scopes,
                    expires_in,
                } => {
                    let p = Principal::user(tenant(TENANTS[t]), user(USERS[u]));
                    let new = NewKey {
                        scopes: scopes.and_then(ScopeSet::from_bits),
                        expires_at: expires_in.map(|s| clock_now(clock).plus_seconds(u64::from(s))),
                        ..new_key("k")
                    };
                    tasks.push(tokio::spawn(async move {
                        l.create_key(p, new)
                            .await
                            .ok()
                            .map(|c| (c.key.id, c.secret))
                    }));
                }
                Op::Revoke { key } => {
                    if let Some((t, id, _)) = keys.get(key).cloned() {
                        let p = Principal::operator(t);
                        tasks.push(tokio::spawn(async move {
                            let _ = l.revoke_key(p, id, RevokeReason::Compromised).await;
                            None
                        }));
                    }
                }
                Op::Rotate { key, grace } => {
                    if let Some((t, id, _)) = keys.get(key).cloned() {
                        let p = Principal::operator(t);
                        tasks.push(tokio::spawn(async move {
                            l.rotate_key(p, id, u64::from(grace), None)
                                .await
                                .ok()
                                .map(|c| (c.key.id, c.secret))
                        }));
                    }
                }
                Op::Remove { tenant: t, user: u } => {
                    let p = Principal::operator(tenant(TENANTS[t]));
                    tasks.push(tokio::spawn(async move {
                        let _ = l.remove_user(p, user(USERS[u])).await;
                        None
                    }));
                }
                Op::Verify { key, times, scope } => {
                    if let Some((_, _, s)) = keys.get(key) {
                        let scope = scope.map(|i| Scope::ALL[i as usize]);
                        for _ in 0..times {
                            ledger.verify(s, scope);
                        }
                    }
                }
                Op::Flush => {
                    ledger.flush_usage().await.unwrap();
                }
                Op::Clock { seconds } => clock.advance_micros(i64::from(seconds) * 1_000_000),
                Op::CreateMetered { tenant: t, credits } => {
                    let p = Principal::user(tenant(TENANTS[t]), user(USERS[0]));
                    let new = NewKey {
                        meta: Some(keyledger_core::Meta::new(r#"{"tier":1}"#.into()).unwrap()),
                        credits: Some(keyledger_core::Credits {
                            remaining: u64::from(credits),
                            refill: Some(keyledger_core::Refill {
                                amount: 50,
                                interval: keyledger_core::RefillInterval::Daily,
                                day: None,
                            }),
                        }),
                        limits: vec![keyledger_core::RateLimit {
                            name: "second".into(),
                            limit: 10,
                            duration_ms: 1000,
                        }],
                        ..new_key("metered")
                    };
                    tasks.push(tokio::spawn(async move {
                        l.create_key(p, new)
                            .await
                            .ok()
                            .map(|c| (c.key.id, c.secret))
                    }));
                }
                Op::Update { key, name, narrow } => {
                    if let Some((t, id, _)) = keys.get(key % keys.len().max(1)).cloned() {
                        let mut u = keyledger_core::UpdateKey::new(Principal::operator(t), id);
                        u.name = Some(format!("renamed {name}"));
                        if narrow {
                            u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead));
                        }
                        tasks.push(tokio::spawn(async move {
                            let _ = l.update_key(u).await;
                            None
                        }));
                    }
                }
                Op::Reserve { key, want } => {
                    if let Some((t, id, _)) = keys.get(key % keys.len().max(1)).cloned() {
                        let epoch = l
                            .key(&t, id)
                            .ok()
                            .and_then(|k| k.credit_state().map(|c| c.epoch));
                        tasks.push(tokio::spawn(async move {
                            let _ = l
                                .reserve_credits(&t, id, epoch.unwrap_or(1), u64::from(want))
                                .await;
                            None
                        }));
                    }
                }
                Op::Release { key, amount } => {
                    if let Some((t, id, _)) = keys.get(key % keys.len().max(1)).cloned() {
                        let epoch = l
                            .key(&t, id)
                            .ok()
                            .and_then(|k| k.credit_state().map(|c| c.epoch));
                        tasks.push(tokio::spawn(async move {
                            let _ = l
                                .release_credits(&t, id, epoch.unwrap_or(1), u64::from(amount))
                                .await;
                            None
                        }));
                    }
                }
                Op::Refill { key } => {
                    if let Some((t, id, _)) = keys.get(key % keys.len().max(1)).cloned() {
                        tasks.push(tokio::spawn(async move {
                            let _ = l.refill_credits(&t, id).await;
                            None
                        }));
                    }
                }
            }
        }
        for t in tasks {
            if let Some((id, secret)) = t.await.unwrap() {
                let tenant = ledger
                    .verify(secret.expose(), None)
                    .key
                    .map(|k| k.tenant.clone());
                if let Some(tenant) = tenant {
                    keys.push((tenant, id, secret.expose().to_owned()));
                }
            }
        }
    }
}

fn clock_now(c: &ManualClock) -> Timestamp {
    keyledger_runtime::Clock::now(c)
}

fn check_replay(make: &dyn Fn() -> Arc<dyn EventLog>, ops: &[Op]) {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    rt().block_on(async {
        let ledger = open(make(), &clock);
        drive(&ledger, &clock, ops).await;
        ledger.shutdown().await.unwrap();
        let live = ledger.projections();
        drop(ledger); // releases the file, as a stopped process would
        let log = make();
        assert_eq!(
            fold(log.as_ref()),
            live,
            "a fold of the reopened log differs from the live projections"
        );
        let reopened = open(log, &clock);
        assert_eq!(
            reopened.projections(),
            live,
            "a reopened ledger differs from the live one"
        );
        for t in TENANTS {
            let report = reopened.verify_chain(&tenant(t), &mut |_| {}).unwrap();
            assert!(
                report.ok,
                "chain of {t} does not verify: {:?}",
                report.first_bad
            );
        }
        reopened.shutdown().await.unwrap();
    });
}

proptest! {
    // Seeded and replayable: a failure prints its minimal case and proptest
    // stores its seed under `proptest-regressions/`, replayed first on every
    // run. PROPTEST_CASES raises the case count.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn replayed_projections_equal_live_ones_in_memory(ops in proptest::collection::vec(op(), 1..80)) {
        let log = MemoryLog::new();
        check_replay(&|| Arc::new(log.clone()), &ops);
    }

    #[test]
    fn replayed_projections_equal_live_ones_on_redb(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        check_replay(&|| Arc::new(RedbLog::open(&path).unwrap()), &ops);
    }
}

/// The same property on PostgreSQL: one database for the whole run (made
/// on the server named by `KEYLEDGER_TEST_POSTGRES_URL`, failing without
/// one), emptied before every case; fewer cases, as every command costs
/// round trips to the server.
#[test]
fn replayed_projections_equal_live_ones_on_postgres() {
    let db = keyledger_store::postgres::TestDatabase::create();
    let config = ProptestConfig {
        cases: 12,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let outcome = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        db.reset()
            .map_err(|e| TestCaseError::fail(format!("emptying the database: {e}")))?;
        let url = db.url();
        check_replay(
            &|| Arc::new(keyledger_store::PgLog::connect(url).unwrap()),
            &ops,
        );
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
