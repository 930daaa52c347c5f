//! In-process benchmarks, each against a baseline measured in the same run
//! (these machines are shared and noisy: compare ratios, not absolutes).
//!
//! * `verify/keyledger` vs `verify/sha256`: verifying a valid key (counted
//!   as a use) against a bare SHA-256 of the same secret.
//! * `append/*` vs `append/raw_fdatasync`: durable management appends on
//!   redb, one at a time and from 16 concurrent tasks, against a raw
//!   `write` + `fdatasync` of the same size; then the same one at a time,
//!   interleaved with the raw syncs in blocks ("append paired" on stderr).
//! * `replay/keyledger` vs `replay/read_and_decode`: opening a ledger of
//!   `KEYLEDGER_BENCH_EVENTS` events (default 1,000,000) into every
//!   projection, against reading and decoding the same log.
//!
//! * `cold_start/*` vs `cold_start/read_file`: opening a ledger of
//!   `KEYLEDGER_BENCH_EVENTS` events from a snapshot 1% behind the head
//!   (snapshot + tail) and without one (the whole log), against reading
//!   the log file's bytes.
//!
//! Run: `cargo bench --bench ledger` (add `-- verify` etc. to pick one).

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyledger_core::Principal;
use keyledger_core::policy::{Credits, RateLimit};
use keyledger_runtime::{Config, Keyledger, NewKey, UsageWindow};
use keyledger_store::{EventLog, MemoryLog, RedbLog};
use sha2::{Digest, Sha256};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn config() -> Config {
    Config {
        usage_window: UsageWindow::Manual,
        ..Config::default()
    }
}

fn principal(i: usize) -> Principal {
    Principal::user(
        "acme".parse().expect("tenant"),
        format!("user{}", i % 16).parse().expect("user"),
    )
}

fn new_key(i: usize) -> NewKey {
    NewKey {
        name: format!("bench key {i}"),
        ..NewKey::default()
    }
}

fn verify(c: &mut Criterion) {
    let rt = rt();
    let ledger = rt.block_on(async {
        let ledger = Keyledger::open(Arc::new(MemoryLog::new()), config()).expect("open");
        let mut secrets = Vec::new();
        for i in 0..10_000 {
            secrets.push(
                ledger
                    .create_key(principal(i), new_key(i))
                    .await
                    .expect("create")
                    .secret,
            );
        }
        // A key with credits (never exhausted here: blocks are reserved
        // through the log as the bench spends them) and two rate limits
        // too large to refuse (issue 14, docs/policy.md).
        let metered = ledger
            .create_key(
                principal(0),
                NewKey {
                    credits: Some(Credits {
                        remaining: keyledger_core::policy::CREDITS_MAX,
                        refill: None,
                    }),
                    limits: vec![
                        RateLimit {
                            name: "burst".into(),
                            limit: 1_000_000_000,
                            duration_ms: 1000,
                        },
                        RateLimit {
                            name: "daily".into(),
                            limit: 1_000_000_000,
                            duration_ms: 86_400_000,
                        },
                    ],
                    ..new_key(10_000)
                },
            )
            .await
            .expect("create")
            .secret;
        secrets.push(metered);
        (ledger, secrets)
    });
    let (ledger, secrets) = ledger;
    let secret = secrets[4242].expose().to_owned();
    let metered = secrets[10_000].expose().to_owned();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sha256", |b| {
        b.iter(|| Sha256::digest(std::hint::black_box(secret.as_bytes())))
    });
    // The API an embedding layer answers from: the key borrowed while the
    // caller reads what it needs (tenant, id, scopes).
    g.bench_function("keyledger", |b| {
        b.iter(|| {
            ledger.verify_with(std::hint::black_box(&secret), None, |outcome, key| {
                (outcome, key.map(|k| k.key_id))
            })
        })
    });
    // The owned form: the caller keeps a reference to the key.
    g.bench_function("keyledger_owned", |b| {
        b.iter(|| ledger.verify(std::hint::black_box(&secret), None))
    });
    // The same call for a key with credits and two rate limits: the limits
    // checked, a credit spent from this node's allowance, the policy's
    // answer read (goal: within 1.5x of `keyledger`).
    g.bench_function("keyledger_policy", |b| {
        b.iter(|| {
            ledger.verify_with(std::hint::black_box(&metered), None, |outcome, key| {
                (outcome, key.map(|k| k.key_id))
            })
        })
    });
    g.bench_function("keyledger_policy_answer", |b| {
        b.iter(|| ledger.verify(std::hint::black_box(&metered), None).policy)
    });
    g.finish();
    verify_paired(&ledger, &secret, &metered);
    rt.block_on(ledger.shutdown()).expect("shutdown");
}

/// The key with a policy against the plain key, interleaved: rounds of
/// 100,000 verifications of each, in alternating order, so a neighbour on
/// this shared machine slows both alike. Prints the median and range of
/// the rounds' ratios ("verify paired", on stderr): the figure
/// docs/performance.md reports (goal: at most 1.5).
fn verify_paired(ledger: &Keyledger, plain: &str, metered: &str) {
    const PER_ROUND: u32 = 100_000;
    let rounds = std::env::var("KEYLEDGER_BENCH_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(31);
    let time = |secret: &str| {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            std::hint::black_box(ledger.verify_with(
                std::hint::black_box(secret),
                None,
                |outcome, key| (outcome, key.map(|k| k.key_id)),
            ));
        }
        start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
    };
    let mut ratios = Vec::new();
    let (mut plain_ns, mut policy_ns) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = time(plain);
            (a, time(metered))
        } else {
            let b = time(metered);
            (time(plain), b)
        };
        plain_ns.push(a);
        policy_ns.push(b);
        ratios.push(b / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    eprintln!(
        "verify paired ({rounds} rounds of {PER_ROUND}): plain key {:.1} ns, key with credits and two limits {:.1} ns; \
         ratio median {:.2} (rounds {lo:.2}–{hi:.2})",
        median(&mut plain_ns),
        median(&mut policy_ns),
        median(&mut ratios),
    );
}

fn appends(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("append");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));

    // Baseline: the size of one stored KeyCreated record.
    let record = vec![0x5a_u8; 200];
    let mut file = std::fs::File::create(dir.path().join("raw")).expect("raw file");
    g.bench_function("raw_fdatasync", |b| {
        b.iter(|| {
            file.write_all(&record).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });

    // The same path with no disk: what the writer hand-off itself costs.
    let memory = Keyledger::open(Arc::new(MemoryLog::new()), config()).expect("open");
    g.bench_function("keyledger_memory_one_at_a_time", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters as usize {
                    memory
                        .create_key(principal(i), new_key(i))
                        .await
                        .expect("create");
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(memory.shutdown()).expect("shutdown");

    let ledger = Keyledger::open(
        Arc::new(RedbLog::open(&dir.path().join("ledger.redb")).expect("redb")),
        config(),
    );
    let ledger = rt.block_on(async { ledger }).expect("open");
    let (_, commits_before, append_secs_before) = ledger.metrics().commit_latency.snapshot();
    g.bench_function("keyledger_one_at_a_time", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters as usize {
                    ledger
                        .create_key(principal(i), new_key(i))
                        .await
                        .expect("create");
                }
                start.elapsed()
            })
        })
    });
    let (_, commits_after, append_secs_after) = ledger.metrics().commit_latency.snapshot();
    // Of each create, what the log's own append took (the rest is the
    // hand-off to the writer and back, the decision and the projections).
    eprintln!(
        "append: one at a time, the log's append took {:.1} µs per commit",
        (append_secs_after - append_secs_before) * 1e6
            / (commits_after - commits_before).max(1) as f64
    );
    for tasks in [4usize, 16] {
        g.bench_with_input(
            BenchmarkId::new("keyledger_concurrent", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let per_task = (iters as usize).div_ceil(tasks);
                        let start = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let l = ledger.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_task {
                                        l.create_key(principal(t), new_key(i))
                                            .await
                                            .expect("create");
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.expect("task");
                        }
                        // Normalise to the iterations asked for.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per_task * tasks) as f64)
                    })
                })
            },
        );
    }
    g.finish();
    let commits = ledger
        .metrics()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let commands = ledger
        .metrics()
        .commands_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "append: {commands} commands in {commits} commits ({:.1} per commit)",
        commands as f64 / commits.max(1) as f64
    );
    if selected("append/paired") {
        paired(&rt, &ledger, &mut file, &record, dir.path());
    }
    rt.block_on(ledger.shutdown()).expect("shutdown");
}

/// Whether `name` passes the name filters given to the bench binary
/// (`cargo bench --bench ledger -- replay`), as criterion's own groups do:
/// the paired section is not a criterion benchmark.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Raw syncs, bare log appends and runtime creates interleaved in blocks
/// (each round in a rotated order), so a disk whose speed drifts during the
/// run moves all three alike; criterion's groups run minutes apart. Prints
/// the median and range of the per-round ratios, which docs/performance.md
/// reports. `KEYLEDGER_BENCH_PAIRED_ROUNDS` (default 15) rounds of 200.
fn paired(
    rt: &tokio::runtime::Runtime,
    ledger: &Keyledger,
    file: &mut std::fs::File,
    record: &[u8],
    dir: &std::path::Path,
) {
    use keyledger_store::TenantAppend;
    use keyledger_store::conformance::{sample_events, tenant};
    const BLOCK: u32 = 200;
    let rounds: usize = std::env::var("KEYLEDGER_BENCH_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let log = RedbLog::open(&dir.join("paired.redb")).expect("redb");
    let t = tenant("paired");
    let mut version = 0;
    let mut n = 0usize;
    let mut raw = Vec::new();
    let (mut store, mut create) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut took = [Duration::ZERO; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            let start = Instant::now();
            for _ in 0..BLOCK {
                n += 1;
                match which {
                    0 => {
                        file.write_all(record).expect("write");
                        file.sync_data().expect("fdatasync");
                    }
                    1 => {
                        let events = sample_events(&t, n as u64, 1);
                        log.append(vec![TenantAppend {
                            tenant: t.clone(),
                            expected_version: version,
                            events,
                        }])
                        .expect("append");
                        version += 1;
                    }
                    _ => {
                        rt.block_on(ledger.create_key(principal(n), new_key(n)))
                            .expect("create");
                    }
                }
            }
            took[which] = start.elapsed() / BLOCK;
        }
        raw.push(took[0].as_secs_f64() * 1e6);
        store.push(took[1].as_secs_f64() / took[0].as_secs_f64());
        create.push(took[2].as_secs_f64() / took[0].as_secs_f64());
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        let lo = v.first().copied().unwrap_or(f64::NAN);
        let hi = v.last().copied().unwrap_or(f64::NAN);
        (median, lo, hi)
    };
    let (raw_m, raw_lo, raw_hi) = summary(&mut raw);
    let (s_m, s_lo, s_hi) = summary(&mut store);
    let (c_m, c_lo, c_hi) = summary(&mut create);
    eprintln!(
        "append paired, {rounds} rounds of {BLOCK}: raw write+fdatasync median {raw_m:.1} µs \
         ({raw_lo:.1}–{raw_hi:.1}); EventLog::append {s_m:.2}× ({s_lo:.2}–{s_hi:.2}); \
         create through the runtime {c_m:.2}× ({c_lo:.2}–{c_hi:.2})"
    );
}

fn replay(c: &mut Criterion) {
    let n: usize = std::env::var("KEYLEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    common::fill(&RedbLog::open(&path).expect("redb"), n);
    let rt = rt();
    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n as u64));
    // Both sides open the file fresh each iteration (a cold redb cache, a
    // warm OS page cache) and time only what comes after the open.
    g.bench_function("read_and_decode", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let log = RedbLog::open(&path).expect("redb");
                let start = Instant::now();
                let mut after = 0;
                let mut count = 0;
                loop {
                    let page = log.read_after(after, 16_384).expect("read");
                    let Some(last) = page.last() else { break };
                    after = last.position;
                    count += page.len();
                }
                timed += start.elapsed();
                assert_eq!(count, n);
            }
            timed
        })
    });
    // Replay is the time from opening the log to a ready ledger with every
    // projection and the verification map built; shutting down and freeing
    // the projections afterwards is not timed.
    g.bench_function("keyledger", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let log = Arc::new(RedbLog::open(&path).expect("redb"));
                let start = Instant::now();
                let ledger = Keyledger::open(log, config()).expect("open");
                timed += start.elapsed();
                assert_eq!(ledger.head(), n as u64);
                rt.block_on(ledger.shutdown()).expect("shutdown");
            }
            timed
        })
    });
    g.finish();
}

/// A cold start: the time from opening the log file to a ready ledger,
/// from a snapshot (1% of the events after it, replayed) and from the log
/// alone, against reading the log file's bytes (a warm page cache for all
/// three: the figure is the work, not the disk).
fn cold_start(c: &mut Criterion) {
    let n: usize = std::env::var("KEYLEDGER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tail = n / 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let snapshots = keyledger_runtime::SnapshotConfig::in_dir(dir.path());
    let with_snapshots = || Config {
        snapshots: Some(snapshots.clone()),
        ..config()
    };
    let rt = rt();
    {
        let log = RedbLog::open(&path).expect("redb");
        common::fill(&log, n - tail);
        let _inside = rt.enter();
        let ledger = Keyledger::open(Arc::new(log), with_snapshots()).expect("open");
        // Writes the snapshot at the head.
        rt.block_on(ledger.shutdown()).expect("shutdown");
    }
    common::fill_with(&RedbLog::open(&path).expect("redb"), tail, 1 << 40, 1);
    let file_bytes = || {
        ["ledger.redb", "ledger.redb-wal"]
            .iter()
            .map(|f| std::fs::read(dir.path().join(f)).map_or(0, |b| b.len()))
            .sum::<usize>()
    };
    eprintln!(
        "cold_start: {n} events, log files {} bytes, snapshot {} bytes",
        file_bytes(),
        std::fs::read_dir(&snapshots.dir)
            .expect("snapshots")
            .flatten()
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum::<u64>()
    );
    let mut g = c.benchmark_group("cold_start");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("read_file", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                assert!(file_bytes() > 0);
            }
            start.elapsed()
        })
    });
    let (rt, path, snapshots) = (&rt, &path, &snapshots);
    let open = |config: Config, from: u64| {
        move |b: &mut criterion::Bencher| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let _inside = rt.enter();
                    let start = Instant::now();
                    let log = Arc::new(RedbLog::open(path).expect("redb"));
                    let ledger = Keyledger::open(log, config.clone()).expect("open");
                    timed += start.elapsed();
                    assert_eq!(ledger.head(), n as u64);
                    let started = &ledger.metrics().snapshots.start_snapshot_position;
                    assert_eq!(started.load(std::sync::atomic::Ordering::Relaxed), from);
                    rt.block_on(ledger.shutdown()).expect("shutdown");
                    // The one written at shutdown, at the head: the next
                    // iteration starts from the same snapshot again.
                    let _ =
                        std::fs::remove_file(snapshots.dir.join(format!("snapshot-{n:020}.bin")));
                }
                timed
            })
        }
    };
    // No periodic snapshot during the measurement.
    let reading = keyledger_runtime::SnapshotConfig {
        every_events: u64::MAX,
        every: Duration::from_secs(1 << 30),
        ..snapshots.clone()
    };
    let from_snapshot = Config {
        snapshots: Some(reading),
        ..config()
    };
    g.bench_function("from_snapshot", open(from_snapshot, (n - tail) as u64));
    g.bench_function("whole_log", open(config(), 0));
    g.finish();
}

criterion_group!(benches, verify, appends, replay, cold_start);
criterion_main!(benches);
