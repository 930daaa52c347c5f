//! The one contract every [`EventLog`] backend passes (docs/style.md,
//! *One storage trait, one conformance suite, every backend*).
//!
//! A backend's test implements [`Harness`] and calls [`run_all`]; each
//! contract test runs on a fresh log and panics with the test's name and
//! what went wrong. The [`sample_events`] helpers build valid events for
//! these and other crates' tests.

use std::time::{Duration, Instant};

use keyledger_core::{
    Actor, Cause, Credits, CreditsRefilled, CreditsReleased, CreditsReserved, Event, EventKind,
    KeyChange, KeyCreated, KeyId, KeyRevoked, KeyRotated, KeyUpdated, KeyUsed, Meta, RateLimit,
    Refill, RefillInterval, RevokeReason, ScopeSet, SecretHash, TenantId, Timestamp, UseCounts,
    UserId, UserRemoved,
};

use crate::chain::{self, GENESIS};
use crate::{EventLog, Record, StoreError, TenantAppend, envelope};

/// Makes logs for the suite.
pub trait Harness {
    /// A new, empty log.
    fn fresh(&mut self) -> Box<dyn EventLog>;
    /// Closes `log` and opens the same storage again (for memory: a clone).
    fn reopen(&mut self, log: Box<dyn EventLog>) -> Box<dyn EventLog>;
}

/// A contract test.
type Contract = fn(&mut dyn Harness);

const CONTRACTS: &[(&str, Contract)] = &[
    ("empty_log", empty_log),
    ("positions_and_seqs_are_ordered_across_tenants", ordering),
    ("appended_records_read_back_equal", read_back_equal),
    ("append_computes_the_chain", append_computes_the_chain),
    ("expected_version_conflict_writes_nothing", conflict),
    ("multi_tenant_batches_are_atomic", atomic_batches),
    ("several_batches_for_one_tenant", same_tenant_batches),
    ("malformed_appends_are_refused", bad_appends),
    ("reopen_keeps_everything", reopen),
    ("read_after_pages", read_after_pages),
    (
        "read_after_tails_concurrent_writers",
        tail_concurrent_writers,
    ),
    ("read_tenant_pages", read_tenant_pages),
    ("tenant_head", tenant_head),
    ("tenants_are_listed_sorted", tenants_sorted),
    ("chain_verifies_on_untouched_log", chain_verifies),
    ("read_key_lists_each_keys_records", read_key_records),
    ("tenant_keys_pages_in_key_order", tenant_keys_pages),
];

/// Runs every contract test, each on a fresh log from `h`. Panics naming
/// the first test that fails.
pub fn run_all(h: &mut dyn Harness) {
    for (name, test) in CONTRACTS {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(h)));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("EventLog conformance test `{name}` failed: {msg}");
        }
    }
}

/// The names of the contract tests, in the order [`run_all`] runs them.
pub fn contract_names() -> Vec<&'static str> {
    CONTRACTS.iter().map(|(n, _)| *n).collect()
}

// ---------------------------------------------------------------------------
// Sample events.

/// A tenant id from text; panics on an invalid one (test helper).
pub fn tenant(s: &str) -> TenantId {
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` is not a tenant id: {e}"))
}

/// A user id from text; panics on an invalid one (test helper).
pub fn user(s: &str) -> UserId {
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` is not a user id: {e}"))
}

/// A deterministic key id for sample number `n`.
pub fn key_id(n: u64) -> KeyId {
    KeyId::from_u128((u128::from(n) << 80) | 0x5eed_0000_0000_0000_0000_u128)
}

/// A deterministic time for sample number `n`: 2026-01-01 plus `n` seconds.
pub fn at(n: u64) -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000).plus_seconds(n)
}

/// A `KeyCreated` for key `n`, owned by `alice`, made by her.
pub fn key_created(tenant: &TenantId, n: u64) -> Event {
    let owner = user("alice");
    Event {
        tenant: tenant.clone(),
        at: at(n),
        actor: Actor::User { id: owner.clone() },
        kind: EventKind::KeyCreated(KeyCreated {
            meta: None,
            credits: None,
            limits: Vec::new(),
            key_id: key_id(n),
            owner,
            name: format!("key {n}"),
            description: n
                .is_multiple_of(2)
                .then(|| format!("sample key number {n}")),
            expires_at: n.is_multiple_of(3).then(|| at(n + 86_400)),
            scopes: ScopeSet::DEFAULT,
            secret_hash: SecretHash::of(&format!("secret-{n}")),
            masked: "klk_abcd…wxyz".into(),
            rotated_from: None,
        }),
    }
}

/// `count` valid events for `tenant`, cycling through every key and user
/// event kind (the key-policy ones and policies included) and actor; `first` offsets ids and times so calls give different events.
pub fn sample_events(tenant: &TenantId, first: u64, count: usize) -> Vec<Event> {
    (first..)
        .take(count)
        .map(|n| {
            let mut e = key_created(tenant, n);
            match n % 6 {
                // Every other key carries a policy (envelope v4).
                0 if n.is_multiple_of(12) => {
                    if let EventKind::KeyCreated(c) = &mut e.kind {
                        c.meta = Meta::new(format!("{{\"n\":{n}}}")).ok();
                        c.credits = Some(Credits {
                            remaining: n,
                            refill: Some(Refill {
                                amount: 100,
                                interval: RefillInterval::Monthly,
                                day: Some(28),
                            }),
                        });
                        c.limits = vec![RateLimit {
                            name: "burst".into(),
                            limit: 10,
                            duration_ms: 1000,
                        }];
                    }
                }
                0 => {}
                1 => {
                    e.actor = Actor::System;
                    e.kind = EventKind::KeyUsed(KeyUsed {
                        key_id: key_id(n - 1),
                        window_start: at(n),
                        window_end: at(n + 1),
                        last_valid_at: Some(at(n)),
                        counts: UseCounts {
                            credits_spent: n,
                            ..UseCounts::from_array([n, 1, 0, 2, n % 3, n % 5])
                        },
                    });
                }
                2 => {
                    e.actor = Actor::ApiKey {
                        key_id: key_id(n - 2),
                        name: "CI/CD Pipeline".into(),
                        owner: user("alice"),
                    };
                    e.kind = EventKind::KeyRevoked(KeyRevoked {
                        key_id: key_id(n - 2),
                        reason: RevokeReason::Manual,
                        cause: None,
                    });
                }
                3 => {
                    e.actor = Actor::Operator;
                    e.kind = EventKind::KeyRotated(KeyRotated {
                        key_id: key_id(n),
                        new_key_id: key_id(n + 1_000_000),
                        expires_at: at(n + 3600),
                    });
                }
                4 => {
                    e.actor = Actor::Operator;
                    e.kind = EventKind::UserRemoved(UserRemoved {
                        user_id: user(&format!("user {n}")),
                    });
                }
                // The key-policy kinds (envelope v4), in turn with a cascade.
                _ if (n / 6) % 5 == 1 => {
                    e.actor = Actor::User { id: user("alice") };
                    e.kind = EventKind::KeyUpdated(KeyUpdated {
                        key_id: key_id(n - 5),
                        changes: vec![
                            KeyChange::Name {
                                before: format!("key {}", n - 5),
                                after: format!("key {n} renamed"),
                            },
                            KeyChange::Credits {
                                before: None,
                                after: Some(Credits {
                                    remaining: n,
                                    refill: None,
                                }),
                            },
                        ],
                    });
                }
                _ if (n / 6) % 5 == 2 => {
                    e.actor = Actor::System;
                    e.kind = EventKind::CreditsReserved(CreditsReserved {
                        key_id: key_id(n - 5),
                        epoch: n - 5,
                        amount: 64,
                    });
                }
                _ if (n / 6) % 5 == 3 => {
                    e.actor = Actor::System;
                    e.kind = EventKind::CreditsReleased(CreditsReleased {
                        key_id: key_id(n - 5),
                        epoch: n - 5,
                        amount: 7,
                    });
                }
                _ if (n / 6) % 5 == 4 => {
                    e.actor = Actor::System;
                    e.kind = EventKind::CreditsRefilled(CreditsRefilled {
                        key_id: key_id(n - 5),
                        due_at: at(n),
                        remaining: 100,
                    });
                }
                _ => {
                    e.actor = Actor::System;
                    e.kind = EventKind::KeyRevoked(KeyRevoked {
                        key_id: key_id(n),
                        reason: RevokeReason::UserRemoved,
                        cause: Some(Cause::UserRemoved {
                            user_id: user(&format!("user {}", n - 1)),
                            seq: n,
                        }),
                    });
                }
            }
            e
        })
        .collect()
}

/// A batch of `events` for `tenant` at `expected_version`.
pub fn batch(tenant: &TenantId, expected_version: u64, events: Vec<Event>) -> TenantAppend {
    TenantAppend {
        tenant: tenant.clone(),
        expected_version,
        events,
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

fn all(log: &dyn EventLog) -> Vec<Record> {
    ok(log.read_after(0, usize::MAX), "read_after(0)")
}

/// Appends `n` sample events to `t` at its current version.
fn fill(log: &dyn EventLog, t: &TenantId, n: usize) -> Vec<Record> {
    let version = ok(log.tenant_head(t), "tenant_head").map_or(0, |h| h.0);
    ok(
        log.append(vec![batch(t, version, sample_events(t, version, n))]),
        "append",
    )
}

fn assert_nothing_written(log: &dyn EventLog, before: &[Record], what: &str) {
    assert_eq!(all(log), before, "{what}: the log changed");
}

// ---------------------------------------------------------------------------
// The contract.

fn empty_log(h: &mut dyn Harness) {
    let log = h.fresh();
    let a = tenant("a");
    assert_eq!(ok(log.head(), "head"), 0, "an empty log's head is 0");
    assert!(all(&*log).is_empty(), "an empty log reads nothing");
    assert!(ok(log.read_tenant(&a, 0, 10), "read_tenant").is_empty());
    assert!(ok(log.read_tenant_raw(&a, 0, 10), "read_tenant_raw").is_empty());
    assert_eq!(ok(log.tenant_head(&a), "tenant_head"), None);
    assert!(ok(log.tenants(), "tenants").is_empty());
}

fn ordering(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    let r1 = fill(&*log, &a, 2);
    let r2 = fill(&*log, &b, 3);
    let r3 = fill(&*log, &a, 1);
    let positions: Vec<u64> = [&r1, &r2, &r3]
        .into_iter()
        .flatten()
        .map(|r| r.position)
        .collect();
    assert_eq!(
        positions,
        [1, 2, 3, 4, 5, 6],
        "positions are 1-based and contiguous"
    );
    let seqs: Vec<(String, u64)> = all(&*log)
        .iter()
        .map(|r| (r.event.tenant.to_string(), r.seq))
        .collect();
    let expected: Vec<(String, u64)> = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3), ("a", 3)]
        .into_iter()
        .map(|(t, s)| (t.to_owned(), s))
        .collect();
    assert_eq!(
        seqs, expected,
        "read_after returns commit order with per-tenant seqs"
    );
    assert_eq!(ok(log.head(), "head"), 6);
}

fn read_back_equal(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    let written = ok(
        log.append(vec![
            batch(&a, 0, sample_events(&a, 0, 12)),
            batch(&b, 0, sample_events(&b, 100, 6)),
        ]),
        "append",
    );
    assert_eq!(written.len(), 18);
    assert_eq!(
        all(&*log),
        written,
        "read_after returns what append returned"
    );
    let a_records: Vec<Record> = written
        .iter()
        .filter(|r| r.event.tenant == a)
        .cloned()
        .collect();
    assert_eq!(ok(log.read_tenant(&a, 0, 100), "read_tenant"), a_records);
    let expected_events: Vec<Event> = sample_events(&a, 0, 12);
    let read_events: Vec<Event> = a_records.into_iter().map(|r| r.event).collect();
    assert_eq!(read_events, expected_events, "events round-trip unchanged");
}

fn append_computes_the_chain(h: &mut dyn Harness) {
    let log = h.fresh();
    let a = tenant("a");
    fill(&*log, &a, 3);
    let records = fill(&*log, &a, 4);
    let raw = ok(log.read_tenant_raw(&a, 0, 100), "read_tenant_raw");
    assert_eq!(raw.len(), 7);
    let mut prev = GENESIS;
    for (i, r) in raw.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "raw seq");
        assert_eq!(r.tenant, "a", "raw tenant");
        assert_eq!(
            r.prev_hash, prev,
            "record {} links to its predecessor",
            r.seq
        );
        let expected = chain::link(&prev, "a", r.seq, &r.payload);
        assert_eq!(
            r.hash, expected,
            "record {} hash is link(prev, tenant, seq, payload)",
            r.seq
        );
        prev = r.hash;
    }
    for (r, raw) in records.iter().zip(raw.iter().skip(3)) {
        assert_eq!(r.hash, raw.hash, "append returns the stored hash");
        assert_eq!(
            r.position, raw.position,
            "append returns the stored position"
        );
        assert_eq!(
            envelope::encode(&r.event),
            raw.payload,
            "the payload is the envelope encoding"
        );
    }
    assert_eq!(ok(log.tenant_head(&a), "tenant_head"), Some((7, prev)));
}

fn conflict(h: &mut dyn Harness) {
    let log = h.fresh();
    let a = tenant("a");
    fill(&*log, &a, 2);
    let before = all(&*log);
    for wrong in [0, 1, 3, 100] {
        match log.append(vec![batch(&a, wrong, sample_events(&a, 50, 2))]) {
            Err(StoreError::Conflict {
                tenant,
                expected,
                actual,
            }) => {
                assert_eq!(tenant, a);
                assert_eq!(expected, wrong);
                assert_eq!(actual, 2);
            }
            other => panic!("expected version {wrong} of 2: want Conflict, got {other:?}"),
        }
        assert_nothing_written(&*log, &before, "after a conflict");
        assert_eq!(ok(log.tenant_head(&a), "tenant_head").map(|h| h.0), Some(2));
    }
    // The right version still works afterwards.
    fill(&*log, &a, 1);
    assert_eq!(ok(log.head(), "head"), 3);
}

fn atomic_batches(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b, c) = (tenant("a"), tenant("b"), tenant("c"));
    fill(&*log, &b, 1);
    let before = all(&*log);
    let r = log.append(vec![
        batch(&a, 0, sample_events(&a, 0, 3)),
        batch(&b, 0, sample_events(&b, 10, 1)),
        batch(&c, 0, sample_events(&c, 20, 1)),
    ]);
    assert!(
        matches!(r, Err(StoreError::Conflict { ref tenant, .. }) if *tenant == b),
        "a conflict in batch 2 fails the append, got {r:?}"
    );
    assert_nothing_written(&*log, &before, "batch 1 of a failed append");
    assert_eq!(ok(log.tenant_head(&a), "tenant_head"), None);
    assert_eq!(ok(log.tenant_head(&c), "tenant_head"), None);
    assert_eq!(ok(log.tenants(), "tenants"), vec![b.clone()]);
    // And a good multi-tenant append commits all of it.
    let written = ok(
        log.append(vec![
            batch(&a, 0, sample_events(&a, 0, 3)),
            batch(&b, 1, sample_events(&b, 10, 1)),
        ]),
        "append",
    );
    let got: Vec<(u64, u64)> = written.iter().map(|r| (r.position, r.seq)).collect();
    assert_eq!(got, [(2, 1), (3, 2), (4, 3), (5, 2)]);
}

fn same_tenant_batches(h: &mut dyn Harness) {
    let log = h.fresh();
    let a = tenant("a");
    let written = ok(
        log.append(vec![
            batch(&a, 0, sample_events(&a, 0, 2)),
            batch(&a, 2, sample_events(&a, 2, 1)),
        ]),
        "append of two batches for one tenant",
    );
    let seqs: Vec<u64> = written.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        written[1].hash, written[2].prev_hash,
        "the batches chain on"
    );
    let before = all(&*log);
    let r = log.append(vec![
        batch(&a, 3, sample_events(&a, 3, 1)),
        batch(&a, 3, sample_events(&a, 4, 1)),
    ]);
    assert!(
        matches!(
            r,
            Err(StoreError::Conflict {
                expected: 3,
                actual: 4,
                ..
            })
        ),
        "the second batch's expected version must count the first's events, got {r:?}"
    );
    assert_nothing_written(&*log, &before, "a failed same-tenant append");
}

fn bad_appends(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    fill(&*log, &a, 1);
    let before = all(&*log);
    let mut foreign = sample_events(&a, 1, 2);
    foreign[1].tenant = b.clone();
    let cases: Vec<(&str, Vec<TenantAppend>)> = vec![
        ("no batch", vec![]),
        ("an empty batch", vec![batch(&a, 1, vec![])]),
        (
            "an empty batch after a good one",
            vec![batch(&b, 0, sample_events(&b, 0, 1)), batch(&a, 1, vec![])],
        ),
        ("an event of another tenant", vec![batch(&a, 1, foreign)]),
    ];
    for (what, batches) in cases {
        let r = log.append(batches);
        assert!(
            matches!(r, Err(StoreError::BadAppend(_))),
            "{what}: want BadAppend, got {r:?}"
        );
        assert_nothing_written(&*log, &before, what);
    }
}

fn reopen(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    fill(&*log, &a, 5);
    fill(&*log, &b, 2);
    fill(&*log, &a, 1);
    let before = all(&*log);
    let heads = (
        ok(log.tenant_head(&a), "tenant_head"),
        ok(log.tenant_head(&b), "tenant_head"),
    );
    let log = h.reopen(log);
    assert_eq!(all(&*log), before, "every record survives a reopen");
    assert_eq!(ok(log.head(), "head"), 8);
    assert_eq!(
        (
            ok(log.tenant_head(&a), "tenant_head"),
            ok(log.tenant_head(&b), "tenant_head"),
        ),
        heads,
        "tenant heads survive a reopen"
    );
    assert_eq!(ok(log.tenants(), "tenants"), vec![a.clone(), b.clone()]);
    for t in [&a, &b] {
        let report = ok(chain::verify_tenant(&*log, t), "verify");
        assert!(
            report.ok,
            "the chain of {t} verifies after reopen: {report:?}"
        );
    }
    let more = fill(&*log, &a, 2);
    assert_eq!(more[0].position, 9, "positions continue after a reopen");
    assert_eq!(more[0].seq, 7, "seqs continue after a reopen");
    assert_eq!(more[0].prev_hash, heads.0.map_or(GENESIS, |h| h.1));
}

fn read_after_pages(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    for i in 0..5 {
        fill(&*log, if i % 2 == 0 { &a } else { &b }, 3);
    }
    let everything = all(&*log);
    assert_eq!(everything.len(), 15);
    for page_size in [1, 2, 4, 15, 16] {
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = ok(log.read_after(after, page_size), "read_after");
            assert!(
                page.len() <= page_size,
                "a page holds at most `limit` records"
            );
            let Some(last) = page.last() else { break };
            after = last.position;
            got.extend(page);
        }
        assert_eq!(
            got, everything,
            "pages of {page_size} cover the log exactly"
        );
    }
    let mid = ok(log.read_after(7, 3), "read_after(7)");
    let positions: Vec<u64> = mid.iter().map(|r| r.position).collect();
    assert_eq!(positions, [8, 9, 10]);
    assert!(ok(log.read_after(15, 10), "read_after(head)").is_empty());
    assert!(ok(log.read_after(1000, 10), "read_after(past head)").is_empty());
    assert!(ok(log.read_after(u64::MAX, 10), "read_after(max)").is_empty());
    assert!(ok(log.read_after(0, 0), "read_after(limit 0)").is_empty());
}

fn tail_concurrent_writers(h: &mut dyn Harness) {
    const WRITERS: u64 = 4;
    const APPENDS_PER_WRITER: u64 = 25;
    let log = h.fresh();
    let log: &dyn EventLog = &*log;
    let shared = tenant("shared");
    // Events per writer: each append holds 1 to 3 own events, and every
    // fifth also one for the shared tenant (with conflict retries).
    let total: u64 = WRITERS
        * (0..APPENDS_PER_WRITER)
            .map(|i| i % 3 + 1 + u64::from(i % 5 == 0))
            .sum::<u64>();
    let seen = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seen: Vec<Record> = Vec::new();
            let mut after = 0;
            while (seen.len() as u64) < total {
                assert!(
                    Instant::now() < deadline,
                    "tailing saw {} of {total} records before the deadline",
                    seen.len()
                );
                let page = ok(log.read_after(after, 7), "tail read_after");
                if page.is_empty() {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for r in page {
                    assert_eq!(
                        r.position,
                        after + 1,
                        "tailing sees every position once, in order"
                    );
                    after = r.position;
                    seen.push(r);
                }
            }
            seen
        });
        for w in 0..WRITERS {
            let shared = shared.clone();
            s.spawn(move || {
                let own = tenant(&format!("writer-{w}"));
                let mut version = 0;
                for i in 0..APPENDS_PER_WRITER {
                    let n = (i % 3 + 1) as usize;
                    let events = sample_events(&own, w * 1000 + version, n);
                    let mut done = false;
                    while !done {
                        let mut batches = vec![batch(&own, version, events.clone())];
                        if i % 5 == 0 {
                            let v = ok(log.tenant_head(&shared), "tenant_head").map_or(0, |h| h.0);
                            batches.push(batch(&shared, v, sample_events(&shared, v, 1)));
                        }
                        match log.append(batches) {
                            Ok(_) => done = true,
                            Err(StoreError::Conflict { tenant, .. }) if tenant == shared => {}
                            Err(e) => panic!("writer {w}: append failed: {e}"),
                        }
                    }
                    version += n as u64;
                }
            });
        }
        reader
            .join()
            .unwrap_or_else(|_| panic!("the tailing reader panicked"))
    });
    assert_eq!(seen.len() as u64, total);
    assert_eq!(seen, all(log), "the tail saw exactly the log");
    for t in ok(log.tenants(), "tenants") {
        let report = ok(chain::verify_tenant(log, &t), "verify");
        assert!(
            report.ok,
            "tenant {t} verifies after concurrent writes: {report:?}"
        );
    }
}

fn read_tenant_pages(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    for _ in 0..3 {
        fill(&*log, &a, 3);
        fill(&*log, &b, 2);
    }
    let a_all = ok(log.read_tenant(&a, 0, usize::MAX), "read_tenant");
    assert_eq!(a_all.len(), 9);
    assert!(
        a_all.iter().all(|r| r.event.tenant == a),
        "only the tenant's records"
    );
    let seqs: Vec<u64> = a_all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    for page_size in [1, 2, 4, 9, 10] {
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = ok(log.read_tenant(&a, after, page_size), "read_tenant");
            assert!(page.len() <= page_size);
            let Some(last) = page.last() else { break };
            after = last.seq;
            got.extend(page);
        }
        assert_eq!(got, a_all, "pages of {page_size} cover the tenant exactly");
        let mut raw = Vec::new();
        let mut after = 0;
        loop {
            let page = ok(log.read_tenant_raw(&a, after, page_size), "read_tenant_raw");
            let Some(last) = page.last() else { break };
            after = last.seq;
            raw.extend(page);
        }
        let raw_ids: Vec<(u64, u64)> = raw.iter().map(|r| (r.position, r.seq)).collect();
        let ids: Vec<(u64, u64)> = a_all.iter().map(|r| (r.position, r.seq)).collect();
        assert_eq!(
            raw_ids, ids,
            "raw pages of {page_size} cover the tenant exactly"
        );
    }
    let mid = ok(log.read_tenant(&a, 4, 2), "read_tenant(4)");
    assert_eq!(mid.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
    assert!(ok(log.read_tenant(&a, 9, 10), "read_tenant(head)").is_empty());
    assert!(ok(log.read_tenant(&a, u64::MAX, 10), "read_tenant(max)").is_empty());
    assert!(ok(log.read_tenant(&a, 0, 0), "read_tenant(limit 0)").is_empty());
    assert!(
        ok(
            log.read_tenant(&tenant("nobody"), 0, 10),
            "read_tenant(unknown)"
        )
        .is_empty()
    );
}

fn tenant_head(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    assert_eq!(ok(log.tenant_head(&a), "tenant_head"), None);
    let r = fill(&*log, &a, 3);
    fill(&*log, &b, 1);
    let last = r.last().map(|r| (r.seq, r.hash));
    assert_eq!(ok(log.tenant_head(&a), "tenant_head"), last);
    assert_eq!(ok(log.tenant_head(&tenant("a-")), "tenant_head"), None);
}

fn tenants_sorted(h: &mut dyn Harness) {
    let log = h.fresh();
    for t in ["zeta", "alpha", "Mid", "alpha.2", "beta"] {
        fill(&*log, &tenant(t), 1);
    }
    fill(&*log, &tenant("alpha"), 1);
    let got: Vec<String> = ok(log.tenants(), "tenants")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["Mid", "alpha", "alpha.2", "beta", "zeta"]);
}

fn chain_verifies(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    for i in 0..6 {
        fill(&*log, if i % 3 == 0 { &b } else { &a }, 5);
    }
    for (t, n) in [(&a, 20), (&b, 10)] {
        let mut calls = Vec::new();
        let report = ok(
            chain::verify_tenant_with_progress(&*log, t, &mut |done| calls.push(done)),
            "verify",
        );
        assert!(report.ok, "an untouched chain verifies: {report:?}");
        assert_eq!(report.first_bad, None);
        assert_eq!(report.events, n);
        assert_eq!(
            Some((n, report.head_hash)),
            ok(log.tenant_head(t), "tenant_head"),
            "the report's head hash is the tenant head"
        );
        assert_eq!(calls.last().copied(), Some(n), "progress reaches the total");
    }
    let nobody = ok(chain::verify_tenant(&*log, &tenant("nobody")), "verify");
    assert!(nobody.ok);
    assert_eq!((nobody.events, nobody.head_hash), (0, GENESIS));
}

/// What the per-key index must hold: for each key, the tenant's records
/// naming it ([`keyledger_core::touched_keys`]), from the whole trail.
fn expected_by_key(
    log: &dyn EventLog,
    t: &TenantId,
) -> std::collections::BTreeMap<KeyId, Vec<Record>> {
    let mut by_key: std::collections::BTreeMap<KeyId, Vec<Record>> = Default::default();
    for r in ok(log.read_tenant(t, 0, usize::MAX), "read_tenant") {
        for k in keyledger_core::touched_keys(&r.event) {
            by_key.entry(k).or_default().push(r.clone());
        }
    }
    by_key
}

fn read_key_records(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    // One append of both tenants, then several of one each: every kind
    // of event (rotations name two keys) in both.
    ok(
        log.append(vec![
            batch(&a, 0, sample_events(&a, 0, 7)),
            batch(&b, 0, sample_events(&b, 100, 5)),
        ]),
        "append",
    );
    for _ in 0..4 {
        fill(&*log, &a, 13);
        fill(&*log, &b, 6);
    }
    // Keys used many times, several uses of a key in one append: the
    // sums of uses are sums of several.
    let uses: Vec<Event> = all(&*log)
        .into_iter()
        .filter(|r| r.event.tenant == a && keyledger_core::as_use(&r.event).is_some())
        .map(|r| r.event)
        .collect();
    assert!(uses.len() >= 3, "the sample uses keys of tenant a");
    for round in 0..3u64 {
        let events: Vec<Event> = uses
            .iter()
            .chain(&uses)
            .enumerate()
            .map(|(i, e)| {
                let mut e = e.clone();
                e.at = at(100_000 + round * 1_000 + i as u64);
                if let EventKind::KeyUsed(u) = &mut e.kind {
                    u.counts.valid += round + i as u64;
                    u.last_valid_at = (i % 3 != 0).then_some(e.at);
                }
                e
            })
            .collect();
        let version = ok(log.tenant_head(&a), "tenant_head").map_or(0, |h| h.0);
        ok(log.append(vec![batch(&a, version, events)]), "append uses");
        fill(&*log, &a, 5);
    }
    let check = |log: &dyn EventLog, when: &str| {
        for (t, other) in [(&a, &b), (&b, &a)] {
            let by_key = expected_by_key(log, t);
            let others = expected_by_key(log, other);
            assert!(by_key.len() > 10, "{when}: the sample names many keys");
            assert!(
                by_key.values().any(|rs| rs.len() >= 3),
                "{when}: some key has several records"
            );
            for (key, want) in &by_key {
                let got = ok(log.read_key(t, *key, 0, usize::MAX), "read_key");
                assert_eq!(
                    &got, want,
                    "{when}: tenant {t} key {key}: its records, in order"
                );
                for page_size in [1, 2, 5] {
                    let mut paged = Vec::new();
                    let mut after = 0;
                    loop {
                        let page = ok(log.read_key(t, *key, after, page_size), "read_key");
                        assert!(page.len() <= page_size);
                        let Some(last) = page.last() else { break };
                        after = last.seq;
                        paged.extend(page);
                    }
                    assert_eq!(&paged, want, "{when}: pages of {page_size} of {key}");
                }
                let after_first = want.first().map_or(0, |r| r.seq);
                let tail = ok(log.read_key(t, *key, after_first, usize::MAX), "read_key");
                assert_eq!(tail.as_slice(), want.get(1..).unwrap_or_default());
                assert!(ok(log.read_key(t, *key, u64::MAX, 10), "read_key(max)").is_empty());
                assert!(ok(log.read_key(t, *key, 0, 0), "read_key(limit 0)").is_empty());
                // (The sample reuses key ids across tenants: each reads its own.)
                assert_eq!(
                    ok(log.read_key(other, *key, 0, usize::MAX), "read_key(other)"),
                    others.get(key).cloned().unwrap_or_default(),
                    "{when}: the other tenant reads only its own records of {key}"
                );
            }
            assert!(
                ok(
                    log.read_key(t, key_id(999_999_999), 0, 10),
                    "read_key(unknown)"
                )
                .is_empty()
            );
            // Several keys up to a sequence number: each record naming any
            // of them, once, in order.
            let all_keys: Vec<KeyId> = by_key.keys().copied().collect();
            let head = ok(log.tenant_head(t), "tenant_head").map_or(0, |h| h.0);
            let mut any_uses = false;
            for (i, until) in [0, 1, head / 3, head / 2, head, head + 5]
                .into_iter()
                .enumerate()
            {
                let keys: Vec<KeyId> = all_keys
                    .iter()
                    .copied()
                    .skip(i % 3)
                    .step_by(1 + i % 3)
                    .chain([key_id(999_999_999)])
                    .collect();
                let mut want: Vec<Record> = by_key
                    .iter()
                    .filter(|(k, _)| keys.contains(k))
                    .flat_map(|(_, rs)| rs.iter().filter(|r| r.seq <= until).cloned())
                    .collect();
                want.sort_by_key(|r| r.seq);
                want.dedup_by_key(|r| r.seq);
                let got = ok(log.read_keys_until(t, &keys, until), "read_keys_until");
                assert_eq!(
                    got,
                    want,
                    "{when}: tenant {t}, {} keys up to {until}",
                    keys.len()
                );
                // The same without the uses, and the uses summed per key.
                let mut want_summed = crate::KeysUntil::default();
                let mut uses =
                    std::collections::BTreeMap::<KeyId, keyledger_core::UseTotals>::new();
                for r in want {
                    match keyledger_core::as_use(&r.event) {
                        Some(u) => uses.entry(u.key_id).or_default().add_used(u),
                        None => want_summed.records.push(r),
                    }
                }
                want_summed.uses = uses.into_iter().collect();
                any_uses |= !want_summed.uses.is_empty();
                let got = ok(
                    log.read_keys_until_summed(t, &keys, until),
                    "read_keys_until_summed",
                );
                assert_eq!(
                    got,
                    want_summed,
                    "{when}: tenant {t}, {} keys up to {until}, uses summed",
                    keys.len()
                );
            }
            assert!(
                any_uses,
                "{when}: tenant {t}: the sample sums some key's uses"
            );
            assert!(ok(log.read_keys_until(t, &[], head), "read_keys_until(none)").is_empty());
            assert_eq!(
                ok(
                    log.read_keys_until_summed(t, &[], head),
                    "read_keys_until_summed(none)"
                ),
                crate::KeysUntil::default()
            );
        }
    };
    check(&*log, "after the appends");
    let log = h.reopen(log);
    check(&*log, "after a reopen");
}

fn tenant_keys_pages(h: &mut dyn Harness) {
    let log = h.fresh();
    let (a, b) = (tenant("a"), tenant("b"));
    for _ in 0..3 {
        fill(&*log, &a, 11);
        fill(&*log, &b, 4);
    }
    for t in [&a, &b] {
        let want: Vec<(KeyId, u64)> = expected_by_key(&*log, t)
            .into_iter()
            .map(|(k, rs)| (k, rs.first().map_or(0, |r| r.seq)))
            .collect();
        assert_eq!(
            ok(log.tenant_keys(t, None, usize::MAX), "tenant_keys"),
            want,
            "every key named, in key order, with its first record's seq"
        );
        for page_size in [1, 3, 100] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = ok(log.tenant_keys(t, after, page_size), "tenant_keys");
                assert!(page.len() <= page_size);
                let Some(last) = page.last() else { break };
                after = Some(last.0);
                got.extend(page);
            }
            assert_eq!(got, want, "pages of {page_size} cover the keys exactly");
        }
        assert!(ok(log.tenant_keys(t, None, 0), "tenant_keys(limit 0)").is_empty());
    }
    assert!(ok(log.tenant_keys(&tenant("nobody"), None, 10), "tenant_keys").is_empty());
}
