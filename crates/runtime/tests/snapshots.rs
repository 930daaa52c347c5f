//! Snapshots of the projections: a restart starts from the newest valid
//! snapshot and replays only the tail, to the same state as a replay of
//! the whole log; a damaged, torn, foreign, older-version or ahead-of-the-log
//! snapshot is refused and the projections are rebuilt from the log. The
//! global tree comes back from a snapshot equal to a replay's, and the
//! global checkpoints signed before and after a restart never fork.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Model, Rng, TENANTS, fold, open, seed, step, tenant, user};
use keyledger_core::{Principal, Reporter, Timestamp};
use keyledger_runtime::audit::{AuditConfig, GLOBAL_CHECKPOINT_FILE};
use keyledger_runtime::webhooks::{NewWebhook, WebhookConfig};
use keyledger_runtime::{
    Config, Error, Keyledger, ManualClock, NewKey, ReportedSecret, SNAPSHOT_DIR, SnapshotConfig,
    SnapshotStart, UsageWindow,
};
use keyledger_store::{EventLog, MemoryLog, RedbLog};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn snapshots(data: &Path, every_events: u64, start: SnapshotStart) -> SnapshotConfig {
    SnapshotConfig {
        every_events,
        every: Duration::from_secs(3600),
        start,
        ..SnapshotConfig::in_dir(data)
    }
}

/// Opens with snapshots in `data` (none taken periodically unless
/// `every_events` is small).
fn open_snap(
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
    seed: u64,
    data: &Path,
    every_events: u64,
) -> Keyledger {
    open_with(
        log,
        clock,
        seed,
        snapshots(data, every_events, SnapshotStart::Load),
    )
}

fn open_with(
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
    seed: u64,
    snapshots: SnapshotConfig,
) -> Keyledger {
    let config = Config {
        usage_window: UsageWindow::Manual,
        snapshots: Some(snapshots),
        ..Config::default()
    };
    Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(common::SeededEntropy::new(seed)),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open: {e}"))
}

/// Opens with audit signing in `data` (checkpoints stored on demand only,
/// each checked at open against the trees), webhook subscriptions (nothing
/// delivered; a delivery store of its own per open, as an abandoned
/// runtime keeps its own open) and `snapshots`.
fn open_audited(
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
    seed: u64,
    data: &Path,
    snapshots: Option<SnapshotConfig>,
) -> Keyledger {
    static OPENS: AtomicU64 = AtomicU64::new(0);
    let mut audit = AuditConfig::in_dir(data);
    audit.checkpoint_debounce = Duration::from_secs(3600);
    let hooks = data.join(format!("hooks-{}", OPENS.fetch_add(1, Ordering::Relaxed)));
    let config = Config {
        usage_window: UsageWindow::Manual,
        snapshots,
        audit: Some(audit),
        webhooks: Some(WebhookConfig {
            deliver: false,
            ..WebhookConfig::in_dir(hooks)
        }),
        ..Config::default()
    };
    Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(common::SeededEntropy::new(seed)),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open: {e}"))
}

/// The sizes of the global checkpoints stored in `data`, oldest first.
fn stored_global(data: &Path) -> Vec<u64> {
    std::fs::read_to_string(data.join(GLOBAL_CHECKPOINT_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            v["size"].as_u64().unwrap_or_else(|| panic!("{l}: no size"))
        })
        .collect()
}

fn snapshot_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join(SNAPSHOT_DIR))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn bins(data: &Path) -> Vec<PathBuf> {
    snapshot_files(data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect()
}

fn started_from(ledger: &Keyledger) -> (u64, u64) {
    let s = &ledger.metrics().snapshots;
    (
        s.start_snapshot_position.load(Ordering::Relaxed),
        s.start_replayed_events.load(Ordering::Relaxed),
    )
}

/// The ledger's projections and trees equal a replay of the whole log.
async fn same_as_full_replay(
    ledger: &Keyledger,
    log: &Arc<dyn EventLog>,
    clock: &ManualClock,
    what: &str,
) {
    let (state, usage) = ledger.projections();
    let (fresh, fresh_usage) = fold(log.as_ref());
    assert!(
        state == fresh,
        "{what}: the key state differs from a replay"
    );
    assert!(
        usage == fresh_usage,
        "{what}: the usage differs from a replay"
    );
    let full = open(log.clone(), clock, 7, 64).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(ledger.head(), full.head(), "{what}");
    assert_eq!(
        ledger.global_size(),
        full.global_size(),
        "{what}: global tree"
    );
    assert_eq!(ledger.global_size(), ledger.head(), "{what}: global tree");
    assert_eq!(
        ledger.global_origin(),
        full.global_origin(),
        "{what}: global epoch"
    );
    if ledger.audit_public_key().is_some() {
        // The global root, signed by each (a replay with a key of its own).
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let signing = open_audited(log.clone(), clock, 8, dir.path(), None);
        let root = |l: &Keyledger| {
            l.global_checkpoint()
                .map(|c| (c.checkpoint.size, c.checkpoint.root))
                .unwrap_or_else(|e| panic!("{what}: global checkpoint: {e}"))
        };
        assert_eq!(root(ledger), root(&signing), "{what}: global root");
        signing
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    for t in log.tenants().unwrap_or_else(|e| panic!("{e}")) {
        let size = full.tree_size(&t);
        assert_eq!(ledger.tree_size(&t), size, "{what}: tree of {t}");
        let root = |l: &Keyledger| l.consistency_proof(&t, 0, 0).map(|p| p.to_root);
        assert_eq!(root(ledger).ok(), root(&full).ok(), "{what}: root of {t}");
        if size > 1 {
            let proof = |l: &Keyledger| l.inclusion_proof(&t, 1, 0).map(|p| p.proof);
            assert_eq!(
                proof(ledger).ok(),
                proof(&full).ok(),
                "{what}: proof in {t}"
            );
        }
    }
    full.shutdown()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// A few keys, a revocation, uses: `n` creates in one tenant.
async fn some_events(ledger: &Keyledger, n: usize) -> Vec<String> {
    let p = Principal::user(tenant("acme"), user("ada"));
    let mut secrets = Vec::new();
    for i in 0..n {
        let c = ledger
            .create_key(
                p.clone(),
                NewKey {
                    name: format!("key {i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let secret = c.secret.expose().to_owned();
        assert!(ledger.verify(&secret, None).is_valid());
        if i % 3 == 2 {
            ledger
                .revoke_key(p.clone(), c.key.id, keyledger_core::RevokeReason::Manual)
                .await
                .unwrap_or_else(|e| panic!("revoke: {e}"));
        }
        secrets.push(secret);
    }
    ledger.flush_usage().await.unwrap_or_else(|e| panic!("{e}"));
    secrets
}

#[test]
fn a_restart_starts_from_the_snapshot_and_replays_only_the_tail() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let first = open_snap(log.clone(), &clock, 1, data, 1_000_000);
        assert_eq!(started_from(&first), (0, 0));
        some_events(&first, 6).await;
        first.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let at = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert!(at > 6);
    assert_eq!(bins(data).len(), 1, "one snapshot at shutdown");
    // Events the snapshot does not cover (written without snapshots).
    rt.block_on(async {
        let other = open(log.clone(), &clock, 2, 64).unwrap_or_else(|e| panic!("{e}"));
        some_events(&other, 2).await;
        other.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let again = open_snap(log.clone(), &clock, 3, data, 1_000_000);
        assert_eq!(
            started_from(&again),
            (at, head - at),
            "only the tail is replayed"
        );
        same_as_full_replay(&again, &log, &clock, "snapshot + tail").await;
        // Keys from the snapshot verify as they did: revoked stay refused.
        let secrets = some_events(&again, 3).await;
        assert!(!again.verify(&secrets[2], None).is_valid());
        again.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    // The newest two are kept.
    let kept = bins(data);
    assert_eq!(kept.len(), 2, "{kept:?}");
    rt.block_on(async {
        let last = open_snap(log.clone(), &clock, 4, data, 1_000_000);
        let head = log.head().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(started_from(&last), (head, 0));
        same_as_full_replay(&last, &log, &clock, "snapshot at the head").await;
        last.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

fn named(name: &str) -> NewKey {
    NewKey {
        name: name.to_owned(),
        ..NewKey::default()
    }
}

/// A restart from a snapshot keeps the global tree: equal to a replay's,
/// it passes the open's check against a global checkpoint stored past the
/// snapshot (over the tail), and what it signs next extends every global
/// checkpoint signed before (no fork), across a second restart too.
#[test]
fn a_restart_from_a_snapshot_keeps_the_global_tree_and_its_checkpoints_never_fork() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let snap = || Some(snapshots(data, 1_000_000, SnapshotStart::Load));
    let globex = Principal::user(tenant("globex"), user("gus"));
    rt.block_on(async {
        let first = open_audited(log.clone(), &clock, 1, data, snap());
        some_events(&first, 5).await;
        first
            .create_key(globex.clone(), named("g"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(first.write_checkpoints().unwrap_or_else(|e| panic!("{e}")) > 0);
        first.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let at = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bins(data).len(), 1);
    assert_eq!(stored_global(data).last(), Some(&at));
    // A tail the snapshot does not cover, under a global checkpoint.
    rt.block_on(async {
        let other = open_audited(log.clone(), &clock, 2, data, None);
        some_events(&other, 2).await;
        other
            .create_key(globex.clone(), named("g"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        other.write_checkpoints().unwrap_or_else(|e| panic!("{e}"));
        other.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert!(head > at);
    assert_eq!(stored_global(data).last(), Some(&head));
    rt.block_on(async {
        // Opened: the global checkpoint of `head` events is a prefix of the
        // global tree that the snapshot and the tail made.
        let again = open_audited(log.clone(), &clock, 3, data, snap());
        assert_eq!(started_from(&again), (at, head - at));
        same_as_full_replay(&again, &log, &clock, "snapshot + tail").await;
        let signed = again.global_checkpoint().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(signed.checkpoint.size, head, "the stored one, not a fork");
        some_events(&again, 2).await;
        again
            .create_key(globex.clone(), named("g"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Signing refuses anything that does not extend what was signed.
        again
            .write_checkpoints()
            .unwrap_or_else(|e| panic!("signs on, no fork: {e}"));
        again.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let end = log.head().unwrap_or_else(|e| panic!("{e}"));
    let sizes = stored_global(data);
    assert_eq!(sizes.last(), Some(&end));
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    rt.block_on(async {
        let last = open_audited(log.clone(), &clock, 4, data, snap());
        assert_eq!(started_from(&last), (end, 0));
        same_as_full_replay(&last, &log, &clock, "snapshot at the head").await;
        assert_eq!(
            last.global_checkpoint()
                .map(|c| c.checkpoint.size)
                .unwrap_or_else(|e| panic!("{e}")),
            end
        );
        last.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

/// Random workloads with restarts, some graceful (a snapshot at shutdown)
/// and some abrupt (the process gone: whatever periodic snapshot was
/// written is the newest); after each, snapshot + tail equals a replay of
/// the whole log, and the ledger keeps working on it.
#[test]
fn snapshot_plus_tail_equals_a_full_replay_over_random_workloads() {
    let rt = rt();
    let base = seed("snapshot_plus_tail_equals_a_full_replay_over_random_workloads");
    // Starts from a snapshot with a tail to replay (a periodic snapshot
    // behind the head): the case this test is for.
    let mut with_tail = 0;
    // What the extra operations did, over all cases.
    let mut done = Extra::default();
    for case in 0..6u64 {
        let mut rng = Rng(base ^ case.wrapping_mul(0x9e37_79b9));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path();
        let clock = ManualClock::new(Timestamp::from_micros(common::T0));
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let model = Model::default();
        let every = 1 + rng.below(25);
        let _inside = rt.enter();
        let audited = |seed: u64| {
            let config = snapshots(data, every, SnapshotStart::Load);
            open_audited(log.clone(), &clock, seed, data, Some(config))
        };
        let mut ledger = audited(rng.next());
        let mut abandoned = Vec::new();
        for round in 0..8 {
            let what = format!("seed {base}, case {case}, round {round}, every {every}");
            rt.block_on(async {
                for _ in 0..(5 + rng.below(30)) {
                    step(&ledger, &model, &mut rng, &|| 0).await;
                    if rng.below(4) == 0 {
                        extra_step(&ledger, &model, &mut rng, &mut done).await;
                    }
                    clock.advance_micros(rng.below(40_000_000_000) as i64);
                }
            });
            if rng.below(2) == 0 {
                rt.block_on(async {
                    ledger
                        .shutdown()
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                });
            } else {
                // Abrupt: the old runtime is left as it is; the newest
                // snapshot is whatever it wrote by itself.
                abandoned.push(ledger.clone());
            }
            // The open checks the stored checkpoints, the global ones
            // included, against the trees it started with.
            ledger = audited(rng.next());
            let (from, replayed) = started_from(&ledger);
            assert_eq!(from + replayed, ledger.head(), "{what}");
            if from > 0 && replayed > 0 {
                with_tail += 1;
            }
            if from > 0 {
                let (state, _) = ledger.projections();
                done.snapshot_starts_with_webhooks +=
                    u64::from(state.tenants().any(|(_, t)| !t.webhooks.is_empty()));
            }
            rt.block_on(same_as_full_replay(&ledger, &log, &clock, &what));
        }
        rt.block_on(async {
            ledger.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
        drop(abandoned);
    }
    assert!(
        with_tail > 0,
        "seed {base}: no start from a snapshot with a tail"
    );
    assert!(
        done.subscribed > 0
            && done.deleted > 0
            && done.leaked > 0
            && done.checkpoints > 0
            && done.snapshot_starts_with_webhooks > 0,
        "seed {base}: the workload missed a kind: {done:?}"
    );
}

/// What [`extra_step`] did.
#[derive(Debug, Default)]
struct Extra {
    subscribed: u64,
    deleted: u64,
    /// Leak reports that revoked a key.
    leaked: u64,
    /// Rounds of stored checkpoints (tenants' and global).
    checkpoints: u64,
    snapshot_starts_with_webhooks: u64,
}

/// A webhook subscription or deletion, a leak report of a known key, or
/// the checkpoints stored (the global one among them).
async fn extra_step(ledger: &Keyledger, model: &Model, rng: &mut Rng, done: &mut Extra) {
    let t = tenant(rng.pick(&TENANTS).copied().unwrap_or("acme"));
    let refused = |e: &Error| matches!(e, Error::Command(_) | Error::NotFound(_));
    match rng.below(4) {
        0 => {
            let r = ledger
                .subscribe_webhook(
                    Principal::operator(t),
                    NewWebhook {
                        url: format!("http://127.0.0.1:9/hook-{}", rng.below(1000)),
                        event_types: vec!["key.created".to_owned(), "key.leaked".to_owned()],
                        description: (rng.below(2) == 0).then(|| "seeded".to_owned()),
                    },
                )
                .await;
            match r {
                Ok(_) => done.subscribed += 1,
                Err(e) => assert!(refused(&e), "subscribe: {e}"),
            }
        }
        1 => {
            let live = ledger.webhooks(&t);
            let Some(w) = rng.pick(&live) else { return };
            ledger
                .delete_webhook(Principal::operator(t), w.id)
                .await
                .unwrap_or_else(|e| panic!("delete {}: {e}", w.id));
            done.deleted += 1;
        }
        2 => {
            let known = model.lock().keys.clone();
            let Some(k) = rng.pick(&known) else { return };
            let report = ledger
                .report_leaked(
                    Reporter::Operator,
                    vec![ReportedSecret {
                        secret: k.secret.clone(),
                        source: Some("seeded test".to_owned()),
                        url: None,
                    }],
                )
                .await
                .unwrap_or_else(|e| panic!("report {}: {e}", k.id));
            if report.found > 0 {
                done.leaked += 1;
                model.lock().dead.insert(k.id);
            }
        }
        _ => {
            ledger
                .write_checkpoints()
                .unwrap_or_else(|e| panic!("checkpoints: {e}"));
            done.checkpoints += 1;
        }
    }
}

/// Writes some events and a snapshot at shutdown; returns the log, the
/// snapshot file and its position.
fn one_snapshot(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    clock: &ManualClock,
) -> (Arc<dyn EventLog>, PathBuf, u64) {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    rt.block_on(async {
        let l = open_snap(log.clone(), clock, 1, data, 1_000_000);
        some_events(&l, 5).await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let files = bins(data);
    assert_eq!(files.len(), 1);
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    (log, files[0].clone(), head)
}

/// Opens after `damage` was done to the snapshot: it is refused (renamed
/// `.refused`), the whole log is replayed, the state is the same.
fn refused_and_rebuilt(damage: impl FnOnce(&Path)) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let (log, file, head) = one_snapshot(&rt, data, &clock);
    damage(&file);
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 2, data, 1_000_000);
        assert_eq!(started_from(&l), (0, head), "rebuilt from the whole log");
        assert_eq!(l.metrics().snapshots.refused.load(Ordering::Relaxed), 1);
        same_as_full_replay(&l, &log, &clock, "after a refused snapshot").await;
        let mut aside = file.clone().into_os_string();
        aside.push(".refused");
        assert!(Path::new(&aside).exists(), "{:?}", snapshot_files(data));
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_damaged_snapshot_is_refused_and_the_projections_rebuilt() {
    for at in [0.1, 0.5, 0.99] {
        refused_and_rebuilt(|file| {
            let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
            let i = ((bytes.len() as f64) * at) as usize;
            bytes[i] ^= 0x40;
            std::fs::write(file, bytes).unwrap_or_else(|e| panic!("{e}"));
        });
    }
}

#[test]
fn a_torn_snapshot_is_refused_and_the_projections_rebuilt() {
    refused_and_rebuilt(|file| {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_snapshot_of_another_format_version_is_refused_and_the_projections_rebuilt() {
    refused_and_rebuilt(|file| {
        let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        // The version follows the 8-byte magic; an older one is 0.
        bytes[8..10].copy_from_slice(&0u16.to_le_bytes());
        std::fs::write(file, bytes).unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_snapshot_of_the_format_before_key_policies_is_refused_and_the_projections_rebuilt() {
    assert_eq!(keyledger_runtime::SNAPSHOT_FORMAT_VERSION, 5);
    refused_and_rebuilt(|file| {
        let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        // Format 2 had no key policy: a file of it is never read as 3.
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(file, bytes).unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_snapshot_of_the_format_before_the_node_store_is_refused_and_the_projections_rebuilt() {
    refused_and_rebuilt(|file| {
        let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        // Format 3 held every tree node: never read as frontiers.
        bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
        std::fs::write(file, bytes).unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_snapshot_of_the_format_before_the_usage_projection_is_refused_and_the_projections_rebuilt() {
    refused_and_rebuilt(|file| {
        let mut bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        // Format 4 held every key's usage rows: never read as 5.
        bytes[8..10].copy_from_slice(&4u16.to_le_bytes());
        std::fs::write(file, bytes).unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_foreign_file_in_place_of_a_snapshot_is_refused() {
    refused_and_rebuilt(|file| {
        std::fs::write(file, b"not a snapshot at all").unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_crash_while_writing_leaves_a_temporary_file_that_the_next_start_removes() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let (log, file, head) = one_snapshot(&rt, data, &clock);
    // What a crash in the middle of the next write leaves: its temporary
    // file, half written.
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    let tmp = data
        .join(SNAPSHOT_DIR)
        .join(format!("snapshot-{:020}.bin.tmp", head + 10));
    std::fs::write(&tmp, &bytes[..bytes.len() / 3]).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 2, data, 1_000_000);
        assert_eq!(started_from(&l), (head, 0), "the whole snapshot is used");
        assert!(!tmp.exists(), "the temporary file is removed");
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_torn_newest_snapshot_falls_back_to_the_one_before() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let (log, first, at) = one_snapshot(&rt, data, &clock);
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 2, data, 1_000_000);
        some_events(&l, 2).await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let files = bins(data);
    assert_eq!(files.len(), 2);
    let newest = files
        .iter()
        .find(|f| **f != first)
        .cloned()
        .unwrap_or_default();
    let bytes = std::fs::read(&newest).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&newest, &bytes[..bytes.len() - 40]).unwrap_or_else(|e| panic!("{e}"));
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 3, data, 1_000_000);
        assert_eq!(started_from(&l), (at, head - at));
        same_as_full_replay(&l, &log, &clock, "the older snapshot + tail").await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

/// The log restored from an older backup: the snapshot covers positions
/// the log does not hold, so it is refused, and the restored log opens.
#[test]
fn a_snapshot_ahead_of_the_log_is_refused() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let file = data.join("ledger.redb");
    let backup = data.join("backup.redb");
    let redb = |path: &Path| -> Arc<dyn EventLog> {
        Arc::new(RedbLog::open(path).unwrap_or_else(|e| panic!("{e}")))
    };
    rt.block_on(async {
        let l = open_snap(redb(&file), &clock, 1, data, 1_000_000);
        some_events(&l, 3).await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let wal = |p: &Path| p.with_extension("redb-wal");
    std::fs::copy(&file, &backup).unwrap_or_else(|e| panic!("{e}"));
    if wal(&file).exists() {
        std::fs::copy(wal(&file), wal(&backup)).unwrap_or_else(|e| panic!("{e}"));
    }
    rt.block_on(async {
        let l = open_snap(redb(&file), &clock, 2, data, 1_000_000);
        some_events(&l, 3).await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    std::fs::rename(&backup, &file).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(wal(&file));
    if wal(&backup).exists() {
        std::fs::rename(wal(&backup), wal(&file)).unwrap_or_else(|e| panic!("{e}"));
    }
    // Both snapshots: the newer is ahead of the restored log; the older
    // one is at its head exactly, and is used.
    let log = redb(&file);
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 3, data, 1_000_000);
        assert_eq!(started_from(&l), (head, 0));
        assert_eq!(l.metrics().snapshots.refused.load(Ordering::Relaxed), 1);
        same_as_full_replay(&l, &log, &clock, "restored log").await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    drop(log);
    // The same backup, then other events than the lost ones: the newer
    // snapshot's position exists again, but the chain head there is not
    // its own.
    for f in snapshot_files(data) {
        if let Some(name) = f.to_str().and_then(|n| n.strip_suffix(".refused")) {
            std::fs::rename(&f, name).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    assert_eq!(bins(data).len(), 2);
    let log = redb(&file);
    let backup_head = head;
    rt.block_on(async {
        let l = open(log.clone(), &clock, 9, 64).unwrap_or_else(|e| panic!("{e}"));
        let p = Principal::user(tenant("acme"), user("bob"));
        for i in 0..12 {
            l.create_key(
                p.clone(),
                NewKey {
                    name: format!("other {i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let l = open_snap(log.clone(), &clock, 4, data, 1_000_000);
        assert_eq!(l.metrics().snapshots.refused.load(Ordering::Relaxed), 1);
        assert_eq!(started_from(&l), (backup_head, head - backup_head));
        same_as_full_replay(&l, &log, &clock, "diverged log").await;
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

/// `keyledger replay`'s check: the newest snapshot compared with the replay
/// at its position; nothing written.
#[test]
fn the_check_mode_compares_the_snapshot_with_a_full_replay_and_writes_nothing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let (log, file, at) = one_snapshot(&rt, data, &clock);
    rt.block_on(async {
        let other = open(log.clone(), &clock, 2, 64).unwrap_or_else(|e| panic!("{e}"));
        some_events(&other, 2).await;
        other.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    rt.block_on(async {
        let l = open_with(
            log.clone(),
            &clock,
            3,
            snapshots(data, 1, SnapshotStart::Check),
        );
        let check = l.snapshot_check().unwrap_or_else(|| panic!("a check"));
        assert_eq!(check.compared, Some((file.clone(), at)));
        assert!(check.differences.is_empty(), "{:?}", check.differences);
        assert!(check.refused.is_empty());
        assert_eq!(started_from(&l), (0, log.head().unwrap_or(0)));
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    assert_eq!(bins(data), vec![file], "nothing written");
}
