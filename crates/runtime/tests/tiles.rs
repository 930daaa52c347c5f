//! The Merkle node store (`<data>/merkle.redb`, issue 13): a restart from
//! a snapshot reads old tree nodes from it and answers every proof and
//! tile as a full replay does; a damaged tile is refused (an error, never
//! a wrong proof or a smaller tree), and the next start rebuilds the store
//! from the log.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{tenant, user};
use keyledger_core::{Principal, Timestamp};
use keyledger_runtime::audit::{AuditConfig, TilePath};
use keyledger_runtime::{
    Config, Keyledger, ManualClock, NewKey, SnapshotConfig, SnapshotStart, UsageWindow,
};
use keyledger_store::{EventLog, MemoryLog};
use redb::ReadableTable;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Audited, snapshots in `data` (one at shutdown), or no data directory
/// at all (`None`: the full replay compared with).
fn open(log: &Arc<dyn EventLog>, clock: &ManualClock, data: Option<&Path>) -> Keyledger {
    let config = match data {
        Some(data) => {
            let mut audit = AuditConfig::in_dir(data);
            audit.checkpoint_debounce = Duration::from_secs(3600);
            Config {
                usage_window: UsageWindow::Manual,
                audit: Some(audit),
                snapshots: Some(SnapshotConfig {
                    every_events: 1_000_000,
                    every: Duration::from_secs(3600),
                    start: SnapshotStart::Load,
                    ..SnapshotConfig::in_dir(data)
                }),
                ..Config::default()
            }
        }
        None => Config {
            usage_window: UsageWindow::Manual,
            ..Config::default()
        },
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

/// What the trees answer: proofs of old and new events of `acme`, a
/// consistency proof, and the first full tiles of the global tree.
type Answers = Vec<Result<String, String>>;

fn answers(l: &Keyledger) -> Answers {
    let acme = tenant("acme");
    let mut out = Vec::new();
    for seq in [1, 2, 200, 256, 257, 598, 599] {
        out.push(
            l.inclusion_proof(&acme, seq, 0)
                .map(|p| format!("{seq}: {} {:?} {}", p.leaf, p.proof, p.root))
                .map_err(|e| e.to_string()),
        );
    }
    for (from, to) in [(1, 0), (300, 0), (300, 513)] {
        out.push(
            l.consistency_proof(&acme, from, to)
                .map(|p| format!("{from}..{to}: {:?} {}", p.proof, p.to_root))
                .map_err(|e| e.to_string()),
        );
    }
    for path in ["tile/0/000", "tile/0/001", "tile/entries/000"] {
        let tile = TilePath::parse(path).unwrap_or_else(|| panic!("{path}"));
        out.push(
            l.global_tile(&tile)
                .map(|b| format!("{path}: {}", b.map_or(0, |b| b.len())))
                .map_err(|e| e.to_string()),
        );
    }
    out
}

fn started_from_snapshot(l: &Keyledger) -> u64 {
    l.metrics()
        .snapshots
        .start_snapshot_position
        .load(Ordering::Relaxed)
}

/// Changes byte `at` of the stored tile `(tree, level, index)`.
fn damage_tile(data: &Path, tree: &str, level: u32, index: u64, at: usize) {
    let table: redb::TableDefinition<(&str, u32, u64), &[u8]> = redb::TableDefinition::new("tiles");
    let db = redb::Database::create(data.join("merkle.redb")).unwrap_or_else(|e| panic!("{e}"));
    let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
    {
        let mut t = txn.open_table(table).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = t
            .get((tree, level, index))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{tree} tile {level}/{index} is stored"))
            .value()
            .to_vec();
        bytes[at] ^= 0x40;
        t.insert((tree, level, index), bytes.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    txn.commit().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn old_nodes_come_from_the_node_store_and_a_damaged_tile_is_refused_then_rebuilt() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path();
    let clock = ManualClock::new(Timestamp::from_micros(common::T0));
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let ada = Principal::user(tenant("acme"), user("ada"));
    // 599 events of acme (two full tiles and a partial one), 100 of
    // globex between them and one of initech; a snapshot at shutdown.
    let first = rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        for i in 0..700 {
            let p = if i == 0 {
                // A tenant whose last event is global entry 0, read from
                // the node store when a snapshot is checked.
                Principal::user(tenant("initech"), user("ivy"))
            } else if i % 7 == 3 {
                Principal::user(tenant("globex"), user("gus"))
            } else {
                ada.clone()
            };
            l.create_key(
                p,
                NewKey {
                    name: format!("k{i}"),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        }
        let a = answers(&l);
        // A snapshot at shutdown (a dropped runtime would keep its files
        // open until its threads end).
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        a
    });
    let head = log.head().unwrap_or_else(|e| panic!("{e}"));
    let replayed = rt.block_on(async {
        let l = open(&log, &clock, None);
        let a = answers(&l);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        a
    });
    assert!(replayed.iter().all(Result::is_ok), "{replayed:?}");
    assert_eq!(first, replayed, "the live trees answer as a full replay");
    assert!(data.join("merkle.redb").exists());

    // From the snapshot: the old nodes are read from the node store.
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), head);
        assert_eq!(answers(&l), replayed);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });

    // One of acme's level-0 tiles damaged: whatever needs it is refused,
    // the rest still answered, and nothing answered differs.
    damage_tile(data, "t/acme", 0, 0, 100);
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), head);
        let damaged = answers(&l);
        let mut refused = 0;
        for (got, want) in damaged.iter().zip(&replayed) {
            match got {
                Ok(_) => assert_eq!(got, want),
                Err(e) => {
                    refused += 1;
                    assert!(e.contains("damaged"), "{e}");
                }
            }
        }
        assert!(refused >= 2, "{damaged:?}");
        // The event the tile holds is refused, not proven in another tree.
        assert!(l.inclusion_proof(&tenant("acme"), 2, 0).is_err());
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });

    // The next start rebuilds the store from the log (the snapshot is not
    // used: the new store does not cover it), and answers as before.
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), 0);
        assert_eq!(answers(&l), replayed);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    // And a snapshot written after the rebuild is used again.
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), head);
        assert_eq!(answers(&l), replayed);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });

    // Damage that the open itself reads (the global entry of initech's
    // last event, checked against the snapshot): the snapshot is refused,
    // and the open starts again with the store made anew, rebuilt from
    // the whole log; the next start uses a snapshot again.
    damage_tile(data, "g", u32::MAX, 0, 5);
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), 0);
        assert_eq!(answers(&l), replayed);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    rt.block_on(async {
        let l = open(&log, &clock, Some(data));
        assert_eq!(started_from_snapshot(&l), head);
        assert_eq!(answers(&l), replayed);
        l.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
}
