//! Audit evidence in the runtime: trees follow the log (live and after
//! replay), proofs verify against signed checkpoints, reads are recorded,
//! idle tenants are checkpointed on the interval, and bundles verify.

use std::sync::Arc;
use std::time::Duration;

use keyledger_audit::checkpoint;
use keyledger_audit::merkle::{self, Hash};
use keyledger_core::{AuditReadKind, Principal, ScopeSet, TenantId, Timestamp};
use keyledger_runtime::audit::{BUNDLE_FORMAT, leaf_of, verify_bundle};
use keyledger_runtime::{AuditConfig, Config, Keyledger, ManualClock, NewKey, OsEntropy};
use keyledger_store::{EventLog, MemoryLog};

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(log: Arc<dyn EventLog>, clock: &ManualClock, dir: &std::path::Path) -> Keyledger {
    let mut audit = AuditConfig::in_dir(dir);
    // The background task stays out of the way; the test writes on demand.
    audit.checkpoint_debounce = Duration::from_secs(3600);
    Keyledger::open_with(
        log,
        Config {
            usage_window: keyledger_runtime::UsageWindow::Manual,
            audit: Some(audit),
            ..Config::default()
        },
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap()
}

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn trees_proofs_checkpoints_and_bundles() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let acme: TenantId = "acme".parse().unwrap();
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        for i in 0..9 {
            ledger
                .create_key(
                    Principal::user(acme.clone(), "alice".parse().unwrap()),
                    NewKey {
                        name: format!("key {i}"),
                        ..NewKey::default()
                    },
                )
                .await
                .unwrap();
        }
        assert_eq!(ledger.tree_size(&acme), 9);
        // Leaves are the chain hashes of the log, in order.
        let raw = log.read_tenant_raw(&acme, 0, 100).unwrap();
        let leaves: Vec<Hash> = raw.iter().map(|r| leaf_of(&r.hash)).collect();
        let key = ledger.audit_public_key().unwrap();
        let signed = ledger.checkpoint(&acme).unwrap();
        assert_eq!(
            checkpoint::open(&signed.note, &key),
            Ok(signed.checkpoint.clone())
        );
        assert_eq!(signed.checkpoint.root, merkle::root_of_leaves(&leaves));
        assert_eq!(signed.checkpoint.origin, "keyledger/acme");
        // Inclusion and consistency proofs verify against the roots.
        for seq in 1..=9 {
            let p = ledger.inclusion_proof(&acme, seq, 9).unwrap();
            let proof: Vec<Hash> = p.proof.iter().map(|x| h(x)).collect();
            merkle::verify_inclusion(
                seq - 1,
                9,
                &leaves[seq as usize - 1],
                &proof,
                &signed.checkpoint.root,
            )
            .unwrap();
        }
        for old in 0..=9 {
            let c = ledger.consistency_proof(&acme, old, 9).unwrap();
            let proof: Vec<Hash> = c.proof.iter().map(|x| h(x)).collect();
            merkle::verify_consistency(old, 9, &h(&c.from_root), &h(&c.to_root), &proof).unwrap();
        }
        assert!(ledger.inclusion_proof(&acme, 10, 9).is_err());
        assert!(ledger.consistency_proof(&acme, 5, 10).is_err());

        // Reading the trail needs `audit:read` and is itself an event.
        let reader = Principal::api_key(
            acme.clone(),
            keyledger_core::KeyId::from_u128(1),
            "ci".into(),
            "alice".parse().unwrap(),
            ScopeSet::DEFAULT,
        );
        let no_audit = Principal {
            scopes: ScopeSet::EMPTY,
            ..reader.clone()
        };
        assert!(
            ledger
                .record_audit_read(no_audit, 1, 9, AuditReadKind::List)
                .await
                .is_err()
        );
        assert_eq!(ledger.tree_size(&acme), 9);
        let bundle = ledger
            .export_bundle(Principal::operator(acme.clone()), 2, 8)
            .await
            .unwrap();
        assert_eq!(ledger.tree_size(&acme), 10, "the export was recorded");
        assert_eq!(bundle.header.format, BUNDLE_FORMAT);
        assert_eq!(bundle.events.len(), 7);
        let bytes = bundle.to_jsonl();
        let report = verify_bundle(&bytes, &key);
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.inclusion_proofs_ok, 7);

        // Checkpoints: written when grown, and after an idle hour again.
        assert_eq!(ledger.write_checkpoints().unwrap(), 1);
        assert_eq!(ledger.write_checkpoints().unwrap(), 0, "nothing new");
        clock.advance_micros(3_600_000_000);
        assert_eq!(ledger.write_checkpoints().unwrap(), 1, "hourly when idle");
        let stored = ledger.stored_checkpoints(&acme).unwrap();
        assert_eq!(stored.len(), 2);
        assert!(stored.iter().all(|c| c.size == 10));
        ledger.shutdown().await.unwrap();
    });
    // After a restart, the tree is rebuilt by replay and matches.
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        assert_eq!(ledger.tree_size(&acme), 10);
        let stored = ledger.stored_checkpoints(&acme).unwrap();
        let key = ledger.audit_public_key().unwrap();
        let last = checkpoint::open(&stored[1].note, &key).unwrap();
        assert_eq!(ledger.checkpoint(&acme).unwrap().checkpoint.root, last.root);
        assert_eq!(
            ledger.write_checkpoints().unwrap(),
            0,
            "already checkpointed"
        );
        ledger.shutdown().await.unwrap();
    });
}

/// Polls `f` every 10 ms for up to 10 s (the background task runs on real
/// time; what it decides runs on the injected clock).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real background task, driven by an injected clock: a checkpoint
/// when the tree grows, none while idle within the hour, one per idle hour
/// (same size, later time: nothing happened in that window).
#[test]
fn the_background_task_checkpoints_growth_and_every_idle_hour() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let acme: TenantId = "acme".parse().unwrap();
    let hour = 3_600_000_000;
    let at = |micros: i64| Timestamp::from_micros(micros).to_rfc3339();
    rt.block_on(async {
        let mut audit = AuditConfig::in_dir(dir.path());
        audit.checkpoint_debounce = Duration::from_millis(20);
        let ledger = Keyledger::open_with(
            Arc::new(MemoryLog::new()),
            Config {
                usage_window: keyledger_runtime::UsageWindow::Manual,
                audit: Some(audit),
                ..Config::default()
            },
            Arc::new(clock.clone()),
            Arc::new(OsEntropy),
            &mut |_, _| {},
        )
        .unwrap();
        let create = |name: &str| {
            ledger.create_key(
                Principal::user(acme.clone(), "alice".parse().unwrap()),
                NewKey {
                    name: name.into(),
                    ..NewKey::default()
                },
            )
        };
        create("one").await.unwrap();
        create("two").await.unwrap();
        let stored = || ledger.stored_checkpoints(&acme).unwrap();
        eventually("a checkpoint of the grown tree", || {
            stored().last().is_some_and(|c| c.size == 2)
        });
        let n = stored().len();
        // Idle, and less than an hour on the clock: nothing new.
        tokio::time::sleep(Duration::from_millis(200)).await;
        clock.advance_micros(hour - 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored().len(), n, "no checkpoint within the hour");
        // The hour is up: the same size, signed again at the new time.
        clock.advance_micros(1);
        eventually("the idle hour's checkpoint", || stored().len() == n + 1);
        let idle = stored().last().unwrap().clone();
        assert_eq!(idle.size, 2);
        assert_eq!(idle.at, at(T0 + hour));
        let key = ledger.audit_public_key().unwrap();
        let note = checkpoint::open(&idle.note, &key).unwrap();
        assert_eq!(note.extension("time"), Some(at(T0 + hour).as_str()));
        clock.advance_micros(hour);
        eventually("the next idle hour's", || stored().len() == n + 2);
        assert_eq!(stored().last().unwrap().at, at(T0 + 2 * hour));
        // Growth again: checkpointed at once, not at the hour.
        create("three").await.unwrap();
        eventually("the grown tree's", || {
            stored().last().is_some_and(|c| c.size == 3)
        });
        ledger.shutdown().await.unwrap();
    });
}

/// The signing key is created on first start, owner-only, with its public
/// key beside it; a restart signs with the same key.
#[test]
fn the_signing_key_is_created_once_owner_only() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let first = rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        let key = ledger.audit_public_key().unwrap();
        ledger.shutdown().await.unwrap();
        key
    });
    let path = dir.path().join(keyledger_runtime::audit::SIGNING_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    let public =
        std::fs::read_to_string(dir.path().join(keyledger_runtime::audit::PUBLIC_KEY_FILE))
            .unwrap();
    assert_eq!(
        public.trim(),
        keyledger_runtime::audit::encode_public_key(&first)
    );
    let again = rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        let key = ledger.audit_public_key().unwrap();
        ledger.shutdown().await.unwrap();
        key
    });
    assert_eq!(first, again, "the same key after a restart");
    // A damaged key file is refused, not replaced.
    std::fs::write(&path, "not a key\n").unwrap();
    let opened = Keyledger::open_with(
        log,
        Config {
            audit: Some(AuditConfig::in_dir(dir.path())),
            ..Config::default()
        },
        Arc::new(clock.clone()),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    );
    assert!(opened.is_err());
}

/// A bundle of 12 events (the 5th to the 16th of 20) and its key.
fn sample_bundle() -> &'static (Vec<u8>, keyledger_audit::VerifyingKey) {
    static SAMPLE: std::sync::OnceLock<(Vec<u8>, keyledger_audit::VerifyingKey)> =
        std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let acme: TenantId = "acme".parse().unwrap();
        rt.block_on(async {
            let ledger = open(Arc::new(MemoryLog::new()), &clock, dir.path());
            for i in 0..20 {
                ledger
                    .create_key(
                        Principal::user(acme.clone(), "alice".parse().unwrap()),
                        NewKey {
                            name: format!("key {i}"),
                            ..NewKey::default()
                        },
                    )
                    .await
                    .unwrap();
            }
            ledger.write_checkpoints().unwrap();
            let bytes = ledger.bundle(&acme, 5, 16).unwrap().to_jsonl();
            let key = ledger.audit_public_key().unwrap();
            ledger.shutdown().await.unwrap();
            (bytes, key)
        })
    })
}

/// What a valid bundle vouches for: the signed note text and every event,
/// field for field.
fn vouched(bytes: &[u8]) -> Option<(String, Vec<serde_json::Value>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: serde_json::Value = serde_json::from_str(lines.next()?).ok()?;
    let note = header["checkpoint"].as_str()?;
    let signed = note[..note.rfind("\n\n")?].to_owned();
    let mut events = Vec::new();
    for l in lines {
        events.push(serde_json::from_str::<serde_json::Value>(l).ok()?);
    }
    Some((signed, events))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Random damage to a bundle file (bytes overwritten, the file cut, a
    /// line repeated or dropped) never panics the verifier, and whenever it
    /// still says VALID, everything it vouches for is unchanged.
    /// proptest prints the failing case; `PROPTEST_RNG_SEED` replays one.
    #[test]
    fn damaged_bundles_never_panic_and_never_pass_changed(
        writes in proptest::collection::vec((proptest::prelude::any::<usize>(), 0x20u8..0x7f), 0..4),
        cut in proptest::prelude::any::<Option<usize>>(),
        line_op in proptest::prelude::any::<Option<(bool, usize)>>(),
    ) {
        let (good, key) = sample_bundle();
        let mut bytes = good.clone();
        for (at, b) in &writes {
            let i = at % bytes.len();
            bytes[i] = *b;
        }
        if let Some((repeat, at)) = line_op {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut lines: Vec<&str> = text.lines().collect();
            let i = at % lines.len();
            if repeat { lines.insert(i, lines[i]) } else { lines.remove(i); }
            bytes = (lines.join("\n") + "\n").into_bytes();
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let report = verify_bundle(&bytes, key);
        if report.ok() {
            proptest::prop_assert_eq!(vouched(&bytes), vouched(good), "{:?}", report);
        }
    }
}

// ------------------------------------------------- reads of the trail, coalesced

fn open_reads(log: Arc<dyn EventLog>, window: Duration) -> Keyledger {
    Keyledger::open_with(
        log,
        Config {
            usage_window: keyledger_runtime::UsageWindow::Manual,
            audit_read_window: window,
            ..Config::default()
        },
        Arc::new(keyledger_runtime::SystemClock),
        Arc::new(OsEntropy),
        &mut |_, _| {},
    )
    .unwrap()
}

/// A key of alice's with `audit:read` only, acting in acme.
fn auditor(n: u128) -> Principal {
    Principal::api_key(
        "acme".parse().unwrap(),
        keyledger_core::KeyId::from_u128(n),
        format!("auditor {n}"),
        "alice".parse().unwrap(),
        ScopeSet::EMPTY.with(keyledger_core::Scope::AuditRead),
    )
}

/// The `AuditRead` events of acme, in log order.
fn reads_in(log: &dyn EventLog) -> Vec<(keyledger_core::Actor, keyledger_core::AuditRead)> {
    log.read_tenant(&"acme".parse().unwrap(), 0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event.kind {
            keyledger_core::EventKind::AuditRead(read) => Some((r.event.actor, read)),
            _ => None,
        })
        .collect()
}

/// Reads by `actor` the log holds, counted.
fn reads_recorded(log: &dyn EventLog, actor: &keyledger_core::Actor) -> u64 {
    reads_in(log)
        .iter()
        .filter(|(a, _)| a == actor)
        .map(|(_, r)| r.count)
        .sum()
}

async fn fill(ledger: &Keyledger, keys: usize) {
    for i in 0..keys {
        ledger
            .create_key(
                Principal::user("acme".parse().unwrap(), "alice".parse().unwrap()),
                NewKey {
                    name: format!("key {i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
    }
}

/// `n` concurrent reads by `p`; each, once answered, checks that the log
/// already holds at least as many of `p`'s reads as have been answered.
fn spawn_reads(
    ledger: &Keyledger,
    log: &Arc<dyn EventLog>,
    p: &Principal,
    what: AuditReadKind,
    ranges: impl Fn(u64) -> (u64, u64),
    n: u64,
) -> Vec<tokio::task::JoinHandle<Result<(), keyledger_runtime::Error>>> {
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    (0..n)
        .map(|i| {
            let (ledger, log, p, answered) =
                (ledger.clone(), log.clone(), p.clone(), answered.clone());
            let (from, to) = ranges(i);
            tokio::spawn(async move {
                ledger.record_audit_read(p.clone(), from, to, what).await?;
                let answered = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let recorded = reads_recorded(log.as_ref(), &p.actor);
                assert!(
                    recorded >= answered,
                    "{answered} reads answered, {recorded} recorded"
                );
                Ok(())
            })
        })
        .collect()
}

async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Result<(), keyledger_runtime::Error>>>,
) -> Vec<Result<(), keyledger_runtime::Error>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn range(from: u64, to: u64) -> keyledger_core::SeqRange {
    keyledger_core::SeqRange { from, to }
}

#[test]
fn the_reads_of_a_window_are_one_event_per_reader_and_kind_with_exact_counts() {
    let rt = rt();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let acme: TenantId = "acme".parse().unwrap();
    rt.block_on(async {
        // Long enough that the 50 reads below, spawned at once, fall in one
        // window even on a loaded machine; the test asserts what was
        // written, never how long it took.
        let window = Duration::from_secs(5);
        let ledger = open_reads(log.clone(), window);
        fill(&ledger, 5).await;
        let (a, b) = (auditor(1), auditor(2));
        // A reader alone is written as one read of its own.
        ledger
            .record_audit_read(a.clone(), 1, 5, AuditReadKind::List)
            .await
            .unwrap();
        ledger
            .record_audit_read(b.clone(), 1, 5, AuditReadKind::List)
            .await
            .unwrap();
        assert_eq!(reads_in(log.as_ref()).len(), 2);

        // Within the window of those: 40 pages read by a, 7 by b, 3
        // exports by a, all at once.
        let pages = |i: u64| match i % 4 {
            0 => (1, 2),
            1 => (3, 4),
            2 => (9, 9),
            _ => (0, 0), // an empty page: counted, no range
        };
        let mut tasks = spawn_reads(&ledger, &log, &a, AuditReadKind::List, pages, 40);
        tasks.extend(spawn_reads(
            &ledger,
            &log,
            &b,
            AuditReadKind::List,
            |_| (2, 2),
            7,
        ));
        tasks.extend(spawn_reads(
            &ledger,
            &log,
            &a,
            AuditReadKind::Export,
            |_| (1, 7),
            3,
        ));
        let results = join_all(tasks).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let reads = reads_in(log.as_ref());
        assert_eq!(reads.len(), 5, "{reads:#?}");
        let event = |actor: &Principal, what| {
            let found: Vec<_> = reads[2..]
                .iter()
                .filter(|(x, r)| x == &actor.actor && r.what == what)
                .collect();
            assert_eq!(found.len(), 1, "{what:?} by {:?}: {reads:#?}", actor.actor);
            found[0].1.clone()
        };
        let a_pages = event(&a, AuditReadKind::List);
        assert_eq!(a_pages.count, 40);
        assert_eq!(a_pages.ranges, vec![range(1, 4), range(9, 9)]);
        assert!(a_pages.window_start <= a_pages.window_end);
        let b_pages = event(&b, AuditReadKind::List);
        assert_eq!((b_pages.count, b_pages.ranges), (7, vec![range(2, 2)]));
        let a_exports = event(&a, AuditReadKind::Export);
        assert_eq!((a_exports.count, a_exports.ranges), (3, vec![range(1, 7)]));

        // Replayed, the trail shows the same reads and counts.
        let filter = keyledger_core::AuditFilter {
            types: vec![keyledger_core::EventType::AuditRead],
            ..Default::default()
        };
        let trail = |l: &Keyledger| -> Vec<serde_json::Value> {
            l.audit(&acme, &filter, None, Some(1000))
                .unwrap()
                .records
                .iter()
                .map(|r| {
                    serde_json::to_value(keyledger_runtime::views::AuditEntry::from(r)).unwrap()
                })
                .collect()
        };
        let before = trail(&ledger);
        let counted: u64 = before
            .iter()
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 2 + 40 + 7 + 3);
        ledger.shutdown().await.unwrap();
        let again = open_reads(log.clone(), window);
        assert_eq!(trail(&again), before);
        again.shutdown().await.unwrap();
    });
}

#[test]
fn a_window_of_zero_writes_one_event_per_read() {
    let rt = rt();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let ledger = open_reads(log.clone(), Duration::ZERO);
        fill(&ledger, 3).await;
        let a = auditor(1);
        let tasks = spawn_reads(
            &ledger,
            &log,
            &a,
            AuditReadKind::Proof,
            |i| (i % 3 + 1, i % 3 + 1),
            20,
        );
        assert!(join_all(tasks).await.iter().all(Result::is_ok));
        let reads = reads_in(log.as_ref());
        assert_eq!(reads.len(), 20);
        for (_, r) in &reads {
            assert_eq!(r.count, 1);
            assert_eq!(r.ranges.len(), 1);
            assert_eq!(r.window_start, r.window_end);
        }
        ledger.shutdown().await.unwrap();
    });
}

#[test]
fn readers_waiting_for_a_window_share_its_failure_and_nothing_is_recorded() {
    let rt = rt();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let ledger = open_reads(log.clone(), Duration::from_secs(1));
        fill(&ledger, 2).await;
        let alice = Principal::user("acme".parse().unwrap(), "alice".parse().unwrap());
        ledger
            .record_audit_read(alice.clone(), 1, 2, AuditReadKind::List)
            .await
            .unwrap();
        let tasks = spawn_reads(&ledger, &log, &alice, AuditReadKind::List, |_| (1, 2), 5);
        // While they wait for the window, alice is removed: the window's
        // event is refused, and none of the five reads is answered.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ledger
            .remove_user(
                Principal::operator("acme".parse().unwrap()),
                "alice".parse().unwrap(),
            )
            .await
            .unwrap();
        let results = join_all(tasks).await;
        assert_eq!(results.len(), 5);
        for r in results {
            assert!(
                matches!(
                    r,
                    Err(keyledger_runtime::Error::Command(
                        keyledger_core::CommandError::UserRemoved(_)
                    ))
                ),
                "{r:?}"
            );
        }
        assert_eq!(reads_recorded(log.as_ref(), &alice.actor), 1);
        // And a removed user's read is refused at once, not after a window.
        let started = std::time::Instant::now();
        assert!(
            ledger
                .record_audit_read(alice, 1, 2, AuditReadKind::List)
                .await
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        ledger.shutdown().await.unwrap();
    });
}

#[test]
fn shutdown_writes_the_reads_waiting_for_a_window_at_once() {
    let rt = rt();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let ledger = open_reads(log.clone(), Duration::from_secs(60));
        fill(&ledger, 2).await;
        let a = auditor(1);
        ledger
            .record_audit_read(a.clone(), 1, 2, AuditReadKind::Bundle)
            .await
            .unwrap();
        let tasks = spawn_reads(&ledger, &log, &a, AuditReadKind::Bundle, |_| (1, 1), 6);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        ledger.shutdown().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(join_all(tasks).await.iter().all(Result::is_ok));
        let counts: Vec<u64> = reads_in(log.as_ref())
            .iter()
            .map(|(_, r)| r.count)
            .collect();
        assert_eq!(counts, [1, 6]);
    });
}

/// A log as 0.1.0 left it: its `AuditRead` stored in version 1's form.
#[test]
fn a_version_1_audit_read_replays_as_one_read_and_its_old_bundle_line_verifies() {
    use keyledger_store::{RawRecord, chain, envelope};
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let memory = Arc::new(MemoryLog::new());
    let log: Arc<dyn EventLog> = memory.clone();
    let acme: TenantId = "acme".parse().unwrap();
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        fill(&ledger, 3).await;
        // With window 0 semantics in version 1: one read, at its own time.
        ledger
            .record_audit_read(Principal::operator(acme.clone()), 1, 3, AuditReadKind::List)
            .await
            .unwrap();
        ledger.shutdown().await.unwrap();
    });
    // Store the read (event 4) as version 1 wrote it.
    let mut records = memory.raw_records();
    let stored = &records[3];
    let event = envelope::decode(&acme, &stored.payload).unwrap();
    let v1 = envelope::encode_as(&event, 1).expect("a single read fits version 1");
    assert_eq!(v1[0], 1);
    let r: RawRecord = RawRecord {
        hash: chain::link(&stored.prev_hash, "acme", 4, &v1),
        payload: v1,
        ..stored.clone()
    };
    records[3] = r.clone();
    memory.tamper(|all| *all = records);
    memory.tamper_heads(|heads| {
        heads.insert("acme".into(), (4, r.hash));
    });
    assert!(chain::verify_tenant(log.as_ref(), &acme).unwrap().ok);
    // A data directory of its own: the checkpoints signed above covered
    // the version-2 bytes this test replaced.
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let ledger = open(log.clone(), &clock, dir.path());
        let reads = reads_in(log.as_ref());
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].1.count, 1);
        assert_eq!(reads[0].1.ranges, vec![range(1, 3)]);
        // A bundle holding it verifies, with the line this release writes
        // and with the line 0.1.0 wrote (`{from_seq, to_seq, what}`).
        let key = ledger.audit_public_key().unwrap();
        let bundle = ledger.bundle(&acme, 1, 4).unwrap();
        let bytes = bundle.to_jsonl();
        let report = verify_bundle(&bytes, &key);
        assert!(report.ok(), "{:?}", report.problems);
        let text = String::from_utf8(bytes).unwrap();
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[4]["details"]["count"], 1);
        let with_details = |lines: &mut Vec<serde_json::Value>, details: serde_json::Value| {
            lines[4]["details"] = details;
            lines
                .iter()
                .map(|l| l.to_string() + "\n")
                .collect::<String>()
                .into_bytes()
        };
        let old = with_details(
            &mut lines,
            serde_json::json!({"from_seq": 1, "to_seq": 3, "what": "list"}),
        );
        let report = verify_bundle(&old, &key);
        assert!(report.ok(), "{:?}", report.problems);
        let wrong = with_details(
            &mut lines,
            serde_json::json!({"from_seq": 1, "to_seq": 2, "what": "list"}),
        );
        let report = verify_bundle(&wrong, &key);
        assert!(!report.ok());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("event 4")),
            "{:?}",
            report.problems
        );
        ledger.shutdown().await.unwrap();
    });
}

#[test]
fn a_reader_that_hangs_up_while_waiting_is_counted_and_leaves_no_one_waiting() {
    let rt = rt();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let ledger = open_reads(log.clone(), Duration::from_millis(500));
        fill(&ledger, 2).await;
        let a = auditor(1);
        ledger
            .record_audit_read(a.clone(), 1, 2, AuditReadKind::List)
            .await
            .unwrap();
        // Three of the readers waiting for the window hang up; the other
        // four are answered, and the event counts all seven.
        let mut tasks = spawn_reads(&ledger, &log, &a, AuditReadKind::List, |_| (1, 2), 7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in tasks.drain(..3) {
            t.abort();
        }
        assert!(join_all(tasks).await.iter().all(Result::is_ok));
        let counts: Vec<u64> = reads_in(log.as_ref())
            .iter()
            .map(|(_, r)| r.count)
            .collect();
        assert_eq!(counts, [1, 7]);
        ledger.shutdown().await.unwrap();
    });
}

/// An evidence bundle exported by an earlier release (before key policies:
/// the fuzz fixture, 23 Nov 2026) still verifies: the trail renders an
/// event without a policy exactly as it did then, and the verifier compares
/// each event's details with its signed bytes.
#[test]
fn a_bundle_from_an_earlier_release_still_verifies() {
    const BUNDLE: &[u8] = include_bytes!("../../../fuzz/fixtures/bundle.jsonl");
    const KEY_HEX: &str = include_str!("../../../fuzz/fixtures/bundle.key");
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&KEY_HEX.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let key = keyledger_audit::VerifyingKey::from_bytes(&bytes.try_into().unwrap()).unwrap();
    let report = verify_bundle(BUNDLE, &key);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.inclusion_proofs_ok, 5);
}
