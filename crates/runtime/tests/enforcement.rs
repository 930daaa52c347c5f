//! Key policy enforced by the real runtime on redb with a manual clock
//! (issue 14): random interleavings of verifications with random costs,
//! refills (the clock crossing midnight), crashes (the runtime abandoned
//! without releasing anything, the log reopened from what a crash at that
//! moment leaves) and clean restarts. After each case:
//!
//! * the costs of the valid verifications never exceed the credits granted
//!   (the initial credits plus each `CreditsRefilled`'s amount, read back
//!   from the log);
//! * within each process lifetime, a rate limit never admitted more than
//!   its bound: in any stretch `w`, `limit + w × limit / duration`
//!   (docs/policy.md; limiter state is memory only, so a restart starts a
//!   fresh bucket).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{T0, tenant, user};
use keyledger_core::{Credits, EventKind, Principal, RateLimit, Refill, RefillInterval, Timestamp};
use keyledger_runtime::{Clock, Keyledger, ManualClock, NewKey, VerifyOutcome};
use keyledger_store::{EventLog, RedbLog};
use proptest::prelude::*;

const DAY_US: i64 = 86_400_000_000;

/// A ledger with a manual usage window (so no refill task: the tests call
/// `refill_due`, as a server's task would).
fn open(log: Arc<dyn EventLog>, clock: &ManualClock) -> Keyledger {
    common::open(log, clock, 7, 4096).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn every_event(log: &dyn EventLog) -> Vec<keyledger_core::Event> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_after(after, 1000).unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = last.position;
        out.extend(page.into_iter().map(|r| r.event));
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Verifications at the current instant, with these costs, from
    /// concurrent tasks.
    Verify(Vec<u64>),
    /// The clock moves forward.
    Advance(i64),
    /// The clock moves to the next midnight (a daily refill falls due) and
    /// the refill task runs.
    Midnight,
    /// The process dies: nothing released, the log reopened from the
    /// durable bytes.
    Crash,
    /// A clean shutdown and reopen.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(0u64..6, 1..24).prop_map(Op::Verify),
        2 => (1i64..400_000).prop_map(Op::Advance),
        1 => Just(Op::Midnight),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
    ]
}

/// What a crash now leaves, at a new path: the log's files as they are
/// (every acknowledged commit was synced before it was acknowledged, and
/// the runtime is idle between steps).
fn crash_copy(from: &Path, dir: &Path, n: usize) -> PathBuf {
    let to = dir.join(format!("crashed-{n}.redb"));
    std::fs::copy(from, &to).unwrap();
    let wal = RedbLog::wal_path(from);
    if wal.exists() {
        std::fs::copy(&wal, RedbLog::wal_path(&to)).unwrap();
    }
    to
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn credits_are_never_overspent_and_limits_hold_their_bound(
        initial in 0u64..120,
        refill_amount in proptest::option::of(1u64..60),
        limit in 1u64..30,
        duration_ms in 100u64..2000,
        ops in proptest::collection::vec(op(), 1..30),
    ) {
        let rt = rt();
        let clock = ManualClock::new(Timestamp::from_micros(T0 + 3_600_000_000));
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().join("ledger.redb");
        let mut log: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap());
        let mut ledger = { let _g = rt.enter(); open(log.clone(), &clock) };
        let t = tenant("acme");
        let created = rt.block_on(ledger.create_key(
            Principal::user(t.clone(), user("ada")),
            NewKey {
                name: "metered".into(),
                credits: Some(Credits {
                    remaining: initial,
                    refill: refill_amount.map(|amount| Refill { amount, interval: RefillInterval::Daily, day: None }),
                }),
                limits: vec![RateLimit { name: "burst".into(), limit, duration_ms }],
                ..NewKey::default()
            },
        )).unwrap();
        let secret = created.secret.expose().to_owned();
        let mut spent = 0u64;
        let mut crashes = 0;
        // Admission instants (micros) of the current process lifetime.
        let mut lifetimes: Vec<Vec<i64>> = vec![Vec::new()];
        for op in ops {
            match op {
                Op::Verify(costs) => {
                    let answers = rt.block_on(async {
                        let tasks: Vec<_> = costs.iter().map(|&cost| {
                            let l = ledger.clone();
                            let s = secret.clone();
                            tokio::spawn(async move { (cost, l.verify_cost(&s, None, cost).await.outcome) })
                        }).collect();
                        let mut out = Vec::new();
                        for task in tasks {
                            out.push(task.await.unwrap());
                        }
                        out
                    });
                    let now = clock.now().as_micros();
                    for (cost, outcome) in answers {
                        match outcome {
                            VerifyOutcome::Valid => {
                                spent += cost;
                                lifetimes.last_mut().unwrap().push(now);
                            }
                            VerifyOutcome::UsageExceeded => lifetimes.last_mut().unwrap().push(now),
                            VerifyOutcome::RateLimited => {}
                            other => prop_assert!(false, "unexpected outcome {other:?}"),
                        }
                    }
                }
                Op::Advance(us) => clock.advance_micros(us),
                Op::Midnight => {
                    let now = clock.now().as_micros();
                    clock.set(Timestamp::from_micros((now.div_euclid(DAY_US) + 1) * DAY_US));
                    rt.block_on(ledger.refill_due()).unwrap();
                }
                Op::Crash => {
                    crashes += 1;
                    path = crash_copy(&path, dir.path(), crashes);
                    // The old runtime is abandoned: no release, no flush.
                    std::mem::forget(ledger);
                    log = Arc::new(RedbLog::open(&path).unwrap());
                    ledger = { let _g = rt.enter(); open(log.clone(), &clock) };
                    rt.block_on(ledger.refill_due()).unwrap();
                    lifetimes.push(Vec::new());
                }
                Op::Restart => {
                    rt.block_on(ledger.shutdown()).unwrap();
                    drop(ledger);
                    drop(log);
                    log = Arc::new(RedbLog::open(&path).unwrap());
                    ledger = { let _g = rt.enter(); open(log.clone(), &clock) };
                    rt.block_on(ledger.refill_due()).unwrap();
                    lifetimes.push(Vec::new());
                }
            }
        }
        rt.block_on(ledger.shutdown()).unwrap();
        let refilled: u64 = every_event(log.as_ref())
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::CreditsRefilled(r) => Some(r.remaining),
                _ => None,
            })
            .sum();
        prop_assert!(
            spent <= initial + refilled,
            "valid verifications spent {spent}; granted {initial} + refills {refilled}"
        );
        let duration_us = i128::from(duration_ms) * 1000;
        for admitted in &lifetimes {
            for (i, a) in admitted.iter().enumerate() {
                let n = admitted[i..].partition_point(|b| b - a <= 0) as i128;
                // Every admission at the same instant as `a`: at most the burst.
                prop_assert!(n <= i128::from(limit), "{n} admitted at one instant, limit {limit}");
                for (j, b) in admitted.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as i128;
                    let bound = i128::from(limit) + i128::from(b - a) * i128::from(limit) / duration_us;
                    prop_assert!(n <= bound, "{n} admitted in {} us; bound {bound}", b - a);
                }
            }
        }
    }
}

/// 64 tasks verify one key with 1,000 credits until it is exhausted:
/// exactly 1,000 are valid, and the log agrees (spent + unreserved).
#[test]
fn sixty_four_concurrent_callers_spend_exactly_the_credits() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let valid = rt.block_on(async {
        let ledger = open(Arc::new(RedbLog::open(&path).unwrap()), &clock);
        let created = ledger
            .create_key(
                Principal::user(tenant("acme"), user("ada")),
                NewKey {
                    name: "metered".into(),
                    credits: Some(Credits {
                        remaining: 1000,
                        refill: None,
                    }),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let secret = created.secret.expose().to_owned();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let l = ledger.clone();
                let s = secret.clone();
                tokio::spawn(async move {
                    let mut valid = 0u64;
                    loop {
                        match l.verify_cost(&s, None, 1).await.outcome {
                            VerifyOutcome::Valid => valid += 1,
                            VerifyOutcome::UsageExceeded => return valid,
                            other => panic!("{other:?}"),
                        }
                    }
                })
            })
            .collect();
        let mut valid = 0;
        for t in tasks {
            valid += t.await.unwrap();
        }
        // The synchronous path agrees: nothing left.
        assert_eq!(
            ledger.verify(&secret, None).outcome,
            VerifyOutcome::UsageExceeded
        );
        ledger.shutdown().await.unwrap();
        valid
    });
    assert_eq!(valid, 1000);
}

/// A shutdown hands back what this node reserved and did not spend; after
/// a restart the log holds exactly the credits not spent.
#[test]
fn shutdown_releases_the_unspent_allowance() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let t = tenant("acme");
    let (key_id, secret) = rt.block_on(async {
        let ledger = open(Arc::new(RedbLog::open(&path).unwrap()), &clock);
        let created = ledger
            .create_key(
                Principal::user(t.clone(), user("ada")),
                NewKey {
                    name: "metered".into(),
                    credits: Some(Credits {
                        remaining: 500,
                        refill: None,
                    }),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let secret = created.secret.expose().to_owned();
        for _ in 0..7 {
            assert!(ledger.verify(&secret, None).is_valid());
        }
        let v = ledger.verify_cost(&secret, None, 3).await;
        assert!(v.is_valid());
        // The log gave this node one block (the first is 16); 10 are spent.
        assert_eq!(v.policy.and_then(|p| p.credits_remaining), Some(490));
        ledger.shutdown().await.unwrap();
        (created.key.id, secret)
    });
    rt.block_on(async {
        let log = Arc::new(RedbLog::open(&path).unwrap());
        let released: u64 = every_event(log.as_ref())
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::CreditsReleased(r) => Some(r.amount),
                _ => None,
            })
            .sum();
        assert_eq!(released, 6);
        let ledger = open(log, &clock);
        let key = ledger.key(&t, key_id).unwrap();
        assert_eq!(key.credit_state().map(|c| c.remaining), Some(490));
        let v = ledger.verify_cost(&secret, None, 0).await;
        assert_eq!(v.outcome, VerifyOutcome::Valid);
        assert_eq!(v.policy.and_then(|p| p.credits_remaining), Some(490));
        ledger.shutdown().await.unwrap();
    });
}

/// Refills that fell due while the server was down are written at start-up
/// as one event, for the latest due instant; a second pass writes nothing.
#[test]
fn refills_missed_while_down_are_one_event_at_start_up() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(T0 + 3_600_000_000));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let secret = rt.block_on(async {
        let ledger = open(Arc::new(RedbLog::open(&path).unwrap()), &clock);
        let created = ledger
            .create_key(
                Principal::user(tenant("acme"), user("ada")),
                NewKey {
                    name: "daily".into(),
                    credits: Some(Credits {
                        remaining: 2,
                        refill: Some(Refill {
                            amount: 5,
                            interval: RefillInterval::Daily,
                            day: None,
                        }),
                    }),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let secret = created.secret.expose().to_owned();
        assert!(ledger.verify(&secret, None).is_valid());
        assert!(ledger.verify(&secret, None).is_valid());
        assert_eq!(
            ledger.verify(&secret, None).outcome,
            VerifyOutcome::UsageExceeded
        );
        ledger.shutdown().await.unwrap();
        secret
    });
    // Three midnights pass while the server is down.
    clock.set(Timestamp::from_micros(T0 + 3 * DAY_US + 7_200_000_000));
    rt.block_on(async {
        let log: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap());
        let ledger = open(log.clone(), &clock);
        let refills = |log: &dyn EventLog| -> Vec<Timestamp> {
            every_event(log)
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::CreditsRefilled(r) => Some(r.due_at),
                    _ => None,
                })
                .collect()
        };
        // A manual usage window runs no refill task: this is the pass a
        // server runs at start-up.
        assert_eq!(ledger.refill_due().await.unwrap(), 1);
        assert_eq!(ledger.refill_due().await.unwrap(), 0);
        let refills = refills(log.as_ref());
        assert_eq!(refills, [Timestamp::from_micros(T0 + 3 * DAY_US)]);
        for _ in 0..5 {
            assert!(ledger.verify(&secret, None).is_valid());
        }
        assert_eq!(
            ledger.verify(&secret, None).outcome,
            VerifyOutcome::UsageExceeded
        );
        ledger.shutdown().await.unwrap();
    });
}

/// A rate-limited call spends no credits, and the usage rollups count the
/// new outcomes and the credits spent.
#[test]
fn a_rate_limited_call_spends_nothing_and_usage_counts_it() {
    let rt = rt();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    rt.block_on(async {
        let ledger = open(Arc::new(keyledger_store::MemoryLog::new()), &clock);
        let t = tenant("acme");
        let created = ledger
            .create_key(
                Principal::user(t.clone(), user("ada")),
                NewKey {
                    name: "both".into(),
                    credits: Some(Credits {
                        remaining: 100,
                        refill: None,
                    }),
                    limits: vec![RateLimit {
                        name: "burst".into(),
                        limit: 2,
                        duration_ms: 1000,
                    }],
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let secret = created.secret.expose().to_owned();
        let first = ledger.verify_cost(&secret, None, 5).await;
        assert!(first.is_valid());
        let p = first.policy.unwrap();
        assert_eq!(p.credits_remaining, Some(95));
        assert_eq!(p.limits()[0].remaining, 1);
        assert!(ledger.verify_cost(&secret, None, 5).await.is_valid());
        let refused = ledger.verify_cost(&secret, None, 5).await;
        assert_eq!(refused.outcome, VerifyOutcome::RateLimited);
        let p = refused.policy.unwrap();
        assert_eq!(p.credits_remaining, Some(90));
        assert_eq!(p.retry_at(), Some(Timestamp::from_micros(T0 + 500_000)));
        clock.advance_micros(500_000);
        assert!(ledger.verify_cost(&secret, None, 5).await.is_valid());
        ledger.flush_usage().await.unwrap();
        let (_, usage) = ledger.projections();
        let today = Timestamp::from_micros(T0).day();
        let rows = usage.daily_key(created.key.id, today, today);
        assert_eq!(rows.len(), 1);
        let totals = rows[0].counts;
        assert_eq!(totals.valid, 3);
        assert_eq!(totals.rate_limited, 1);
        assert_eq!(totals.credits_spent, 15);
        ledger.shutdown().await.unwrap();
    });
}
