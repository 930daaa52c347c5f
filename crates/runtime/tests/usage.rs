//! The usage projection (`<data>/usage.redb`, issue 13): per-key per-day
//! rows read from disk answer as a full replay of the log does, after a
//! restart from a snapshot, after a crash that lost its undurable commits,
//! and after the file was damaged or deleted (rebuilt from the log, never
//! answered from with uses missing); old days are kept; tenants see only
//! their own keys.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{tenant, user};
use keyledger_core::{DailyRow, Day, KeyId, Principal, Timestamp};
use keyledger_runtime::{
    Clock, Config, Keyledger, ManualClock, NewKey, SnapshotConfig, SnapshotStart, UsageWindow,
};
use keyledger_store::{EventLog, MemoryLog};
use redb::{ReadableDatabase, ReadableTable};

const ROWS: redb::TableDefinition<(u128, i32), &[u8]> = redb::TableDefinition::new("usage_rows");
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const DAY_MICROS: i64 = 86_400 * 1_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Snapshots in `data` (one at shutdown), or no data directory at all
/// (`None`: the full replay compared with).
fn open(log: &Arc<dyn EventLog>, clock: &ManualClock, data: Option<&Path>) -> Keyledger {
    let config = Config {
        usage_window: UsageWindow::Manual,
        snapshots: data.map(|data| SnapshotConfig {
            every_events: 1_000_000,
            every: Duration::from_secs(3600),
            start: SnapshotStart::Load,
            ..SnapshotConfig::in_dir(data)
        }),
        ..Config::default()
    };
    Keyledger::open_with(
        log.clone(),
        config,
        Arc::new(clock.clone()),
        Arc::new(common::SeededEntropy::new(7)),
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("open: {e}"))
}

/// Keys of two tenants, used on `days` days from T0 (day `d`: key `i`
/// used `i + d + 1` times, one of them refused for a scope).
struct World {
    keys: Vec<(String, KeyId, String)>,
    first: Day,
    last: Day,
}

async fn make_keys(l: &Keyledger) -> Vec<(String, KeyId, String)> {
    let mut keys = Vec::new();
    for (i, t) in ["acme", "globex", "acme", "acme"].iter().enumerate() {
        let created = l
            .create_key(
                Principal::user(tenant(t), user("ada")),
                NewKey {
                    name: format!("k{i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        keys.push((
            (*t).to_owned(),
            created.key.id,
            created.secret.expose().to_owned(),
        ));
    }
    keys
}

async fn use_keys(l: &Keyledger, keys: &[(String, KeyId, String)], round: usize) {
    for (i, (_, _, secret)) in keys.iter().enumerate() {
        for _ in 0..=(i + round) {
            assert!(l.verify(secret, None).is_valid());
        }
        let scope = "webhooks:manage"
            .parse()
            .unwrap_or_else(|e| panic!("{e:?}"));
        let _ = l.verify(secret, Some(scope));
    }
    l.flush_usage()
        .await
        .unwrap_or_else(|e| panic!("flush: {e}"));
}

/// Every key's rows and each tenant's, over `first..=last`.
type Answers = Vec<Result<Vec<DailyRow>, String>>;

fn answers(l: &Keyledger, w: &World) -> Answers {
    let mut out = Vec::new();
    for (t, id, _) in &w.keys {
        out.push(
            l.usage_daily(&tenant(t), Some(*id), w.first, w.last)
                .map_err(|e| e.to_string()),
        );
    }
    for t in ["acme", "globex"] {
        out.push(
            l.usage_daily(&tenant(t), None, w.first, w.last)
                .map_err(|e| e.to_string()),
        );
    }
    out
}

/// The answers of a full replay of `log` (no data directory).
fn replayed(
    rt: &tokio::runtime::Runtime,
    log: &Arc<dyn EventLog>,
    clock: &ManualClock,
    w: &World,
) -> Answers {
    rt.block_on(async {
        let l = open(log, clock, None);
        let a = answers(&l, w);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        a
    })
}

/// The position `usage.redb` in `data` says its rows reflect.
fn stored_position(data: &Path) -> u64 {
    let db = redb::Database::create(data.join("usage.redb")).unwrap_or_else(|e| panic!("{e}"));
    let txn = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
    let meta = txn.open_table(META).unwrap_or_else(|e| panic!("{e}"));
    let at = meta
        .get("at")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a position is stored"));
    let bytes: [u8; 8] = at.value()[..8].try_into().unwrap_or_else(|e| panic!("{e}"));
    u64::from_le_bytes(bytes)
}

/// Changes `usage.redb` in `data` with `f`, in one durable transaction.
fn edit(data: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(data.join("usage.redb")).unwrap_or_else(|e| panic!("{e}"));
    let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
    f(&txn);
    txn.commit().unwrap_or_else(|e| panic!("{e}"));
}

/// Changes the stored position and chain hash with `f`.
fn edit_at(txn: &redb::WriteTransaction, f: impl FnOnce(&mut Vec<u8>)) {
    let mut meta = txn.open_table(META).unwrap_or_else(|e| panic!("{e}"));
    let mut at = meta
        .get("at")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("stored"))
        .value()
        .to_vec();
    f(&mut at);
    meta.insert("at", at.as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Three days of usage of four keys, with a snapshot at shutdown.
fn world(
    rt: &tokio::runtime::Runtime,
    log: &Arc<dyn EventLog>,
    clock: &ManualClock,
    data: &Path,
) -> World {
    rt.block_on(async {
        let l = open(log, clock, Some(data));
        let keys = make_keys(&l).await;
        for round in 0..3 {
            use_keys(&l, &keys, round).await;
            clock.advance_micros(DAY_MICROS);
        }
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        World {
            keys,
            first: Timestamp::from_micros(common::T0).day(),
            last: clock.now().day(),
        }
    })
}

/// A data directory with [`world`] in it, its log and clock.
struct Setup {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    clock: ManualClock,
    log: Arc<dyn EventLog>,
    w: World,
}

fn setup() -> Setup {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let w = world(&rt, &log, &clock, dir.path());
    Setup {
        rt,
        dir,
        clock,
        log,
        w,
    }
}

#[test]
fn per_key_rows_come_from_the_projection_and_survive_a_restart_from_a_snapshot() {
    let Setup {
        rt,
        dir,
        clock,
        log,
        w,
    } = setup();
    let data = dir.path();
    let want = replayed(&rt, &log, &clock, &w);
    // Key 0 on three days: 1, 2 and 3 valid uses, one refused each day.
    let Ok(rows) = &want[0] else {
        panic!("{want:?}")
    };
    let valid: Vec<u64> = rows.iter().map(|r| r.counts.valid).collect();
    assert_eq!(valid, [1, 2, 3]);
    assert!(rows.iter().all(|r| r.counts.insufficient_scope == 1));
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored_position(data), head, "durable at shutdown");
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(
            l.metrics()
                .snapshots
                .start_snapshot_position
                .load(std::sync::atomic::Ordering::Relaxed),
            head,
            "started from the snapshot"
        );
        assert_eq!(answers(&l, &w), want);
        // And the summary of the tenant, from the rows kept in memory.
        let summary = l
            .usage_summary(&tenant("acme"), 30)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary.totals.valid,
            (1 + 2 + 3) + (3 + 4 + 5) + (4 + 5 + 6)
        );
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn the_projection_catches_up_after_a_crash_without_a_durable_commit() {
    let Setup {
        rt,
        dir,
        clock,
        log,
        mut w,
    } = setup();
    let data = dir.path();
    let crashed = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let durable = log.head().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        // More uses, applied without a durable commit; then the data
        // directory as a crash leaves it (the process gone, its files as
        // they are on disk).
        use_keys(&l, &w.keys, 7).await;
        for entry in std::fs::read_dir(data).unwrap_or_else(|e| panic!("{e}")) {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(entry.path(), crashed.path().join(entry.file_name()))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let snapshots = data.join("snapshots");
        std::fs::create_dir(crashed.path().join("snapshots")).unwrap_or_else(|e| panic!("{e}"));
        for entry in std::fs::read_dir(&snapshots).unwrap_or_else(|e| panic!("{e}")) {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            std::fs::copy(
                entry.path(),
                crashed.path().join("snapshots").join(entry.file_name()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    w.last = clock.now().day();
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    assert!(head > durable);
    assert_eq!(
        stored_position(crashed.path()),
        durable,
        "the crash lost the undurable commits"
    );
    let want = replayed(&rt, &log, &clock, &w);
    rt.block_on(async {
        let l = open(&log, &clock, Some(crashed.path()));
        assert_eq!(answers(&l, &w), want);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    assert_eq!(stored_position(crashed.path()), head);
}

#[test]
fn a_damaged_deleted_or_mismatched_projection_is_rebuilt_from_the_log() {
    let Setup {
        rt,
        dir,
        clock,
        log,
        w,
    } = setup();
    let data = dir.path();
    let want = replayed(&rt, &log, &clock, &w);
    let reopened = |what: &str| {
        rt.block_on(async {
            let l = open(&log, &clock, Some(data));
            assert_eq!(answers(&l, &w), want, "{what}");
            l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
    };

    // A row that does not decode: the key's usage is refused (an error,
    // never fewer uses), and the next start rebuilds the file.
    let (_, damaged_key, _) = &w.keys[2];
    edit(data, |txn| {
        let mut rows = txn.open_table(ROWS).unwrap_or_else(|e| panic!("{e}"));
        rows.insert(
            (damaged_key.to_u128(), w.first.as_days()),
            [0xffu8; 3].as_slice(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    });
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        let got = answers(&l, &w);
        assert!(
            matches!(&got[2], Err(e) if e.contains("damaged")),
            "{:?}",
            got[2]
        );
        // The tenants' rows are in memory, untouched.
        assert_eq!(got[4..], want[4..]);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    reopened("rebuilt after a damaged row");

    // The position moved past the log's end (a file restored from a newer
    // backup than the log), one row gone: not trusted.
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    edit(data, |txn| {
        edit_at(txn, |at| {
            at[..8].copy_from_slice(&(head + 10).to_le_bytes())
        });
        let mut rows = txn.open_table(ROWS).unwrap_or_else(|e| panic!("{e}"));
        rows.remove((w.keys[1].1.to_u128(), w.first.as_days()))
            .unwrap_or_else(|e| panic!("{e}"));
    });
    reopened("rebuilt when ahead of the log");

    // The chain hash at its position not the log's.
    edit(data, |txn| {
        edit_at(txn, |at| at[20] ^= 1);
        let mut rows = txn.open_table(ROWS).unwrap_or_else(|e| panic!("{e}"));
        rows.remove((w.keys[0].1.to_u128(), w.first.as_days()))
            .unwrap_or_else(|e| panic!("{e}"));
    });
    reopened("rebuilt when its chain hash is not the log's");

    // Not a redb file at all, then no file: rebuilt (the snapshot is
    // still used: the rows behind it are read from the log).
    std::fs::write(data.join("usage.redb"), b"not a database").unwrap_or_else(|e| panic!("{e}"));
    reopened("rebuilt from garbage");
    std::fs::remove_file(data.join("usage.redb")).unwrap_or_else(|e| panic!("{e}"));
    reopened("rebuilt when deleted");
    assert_eq!(stored_position(data), head);
}

#[test]
fn old_days_are_kept_and_tenants_see_only_their_own_keys() {
    let Setup {
        rt,
        dir,
        clock,
        log,
        w,
    } = setup();
    let data = dir.path();
    // Two years later, from the snapshot: the first days still answered.
    clock.advance_micros(730 * DAY_MICROS);
    let want = replayed(&rt, &log, &clock, &w);
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        use_keys(&l, &w.keys, 0).await;
        let got = answers(&l, &w);
        assert_eq!(got, want);
        let Ok(rows) = &got[0] else { panic!("{got:?}") };
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].day, w.first);
        // Today's row too, after them.
        let today = clock.now().day();
        let (t, id, _) = &w.keys[0];
        let all = l
            .usage_daily(&tenant(t), Some(*id), Day::from_days(0), today)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].day, today);

        // globex's key is not acme's to read, and acme's are not globex's.
        let (gt, gid, _) = &w.keys[1];
        assert_eq!(gt, "globex");
        let refused = l.usage_daily(&tenant("acme"), Some(*gid), w.first, today);
        assert!(refused.is_err(), "{refused:?}");
        let refused = l.usage_daily(&tenant("globex"), Some(*id), w.first, today);
        assert!(refused.is_err(), "{refused:?}");
        // An unknown tenant sees nothing.
        let none = l
            .usage_daily(&tenant("initech"), None, w.first, today)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(none.is_empty());
        // Each tenant's days count only its own keys: globex has one key
        // (index 1): 2, 3 and 4 valid uses and one refused a day.
        let globex = l
            .usage_daily(&tenant("globex"), None, w.first, w.last)
            .unwrap_or_else(|e| panic!("{e}"));
        let valid: Vec<u64> = globex.iter().map(|r| r.counts.valid).collect();
        assert_eq!(valid, [2, 3, 4]);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn replay_compares_the_projection_with_a_fold_of_the_log() {
    let Setup {
        rt,
        dir,
        clock,
        log,
        w,
    } = setup();
    let data = dir.path();
    let want = replayed(&rt, &log, &clock, &w);
    let check = |expect_equal: bool| {
        rt.block_on(async {
            let l = Keyledger::open_with(
                log.clone(),
                Config {
                    usage_window: UsageWindow::Manual,
                    snapshots: Some(SnapshotConfig {
                        start: SnapshotStart::Check,
                        ..SnapshotConfig::in_dir(data)
                    }),
                    ..Config::default()
                },
                Arc::new(clock.clone()),
                Arc::new(common::SeededEntropy::new(7)),
                &mut |_, _| {},
            )
            .unwrap_or_else(|e| panic!("open: {e}"));
            let c = l.snapshot_check().unwrap_or_else(|| panic!("a check"));
            assert!(c.compared.is_some(), "{c:?}");
            let usage = c.differences.iter().any(|d| d.contains("usage projection"));
            assert_eq!(usage, !expect_equal, "{c:?}");
            l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
    };
    check(true);
    // A row that decodes, with uses the log does not have: a valid but
    // wrong file, which only a comparison with the log finds.
    edit(data, |txn| {
        let mut rows = txn.open_table(ROWS).unwrap_or_else(|e| panic!("{e}"));
        rows.insert(
            (w.keys[3].1.to_u128(), w.first.as_days()),
            [99u8, 0, 0, 0, 0, 0, 0].as_slice(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    });
    check(false);
    // Marked by the check: the next start rebuilds it.
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(answers(&l, &w), want);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    check(true);
}
