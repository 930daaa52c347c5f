//! PostgreSQL against redb, in one run on one machine, each beside its own
//! baseline (these machines are shared and noisy: compare ratios, not
//! absolutes). A one-shot program, not a criterion run: propagation is a
//! distribution (p50/p99) over many rounds, and the fills take a while.
//!
//! * durable creates, one at a time and from 16 concurrent tasks: redb and
//!   PostgreSQL, against a raw `write` + `fdatasync` of 200 B and a raw
//!   one-row `INSERT` per transaction on the same PostgreSQL;
//! * replay of `KEYLEDGER_BENCH_EVENTS` events (default 200,000) into every
//!   projection, from redb and from PostgreSQL, against reading and
//!   decoding the same log;
//! * revocation propagation across three nodes: the time from a revoke's
//!   acknowledgement on node A to nodes B and C refusing the key (p50,
//!   p99, max), on PostgreSQL (one connection set per node, LISTEN/NOTIFY)
//!   and, for comparison, on one in-process log; and what a revoke that
//!   waits for every node (`wait=all-nodes`) costs.
//!
//! `-- follower` and `-- key-index-check` run one part alone (below).
//!
//! Needs `KEYLEDGER_TEST_POSTGRES_URL` (an admin URL; a database is made
//! and dropped). Run: `scripts/postgres run -- cargo bench --bench postgres`.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_core::{Principal, RevokeReason};
use keyledger_runtime::{Config, Follow, Keyledger, NewKey, UsageWindow, VerifyOutcome};
use keyledger_store::postgres::TestDatabase;
use keyledger_store::{EventLog, MemoryLog, PgLog, RedbLog};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn config(follow: Option<Follow>) -> Config {
    Config {
        usage_window: UsageWindow::Manual,
        follow,
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

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `op` `n` times (or until `cap` passes); the mean time per call.
fn per_op(n: usize, cap: Duration, mut op: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    while done < n && start.elapsed() < cap {
        op(done);
        done += 1;
    }
    start.elapsed() / done.max(1) as u32
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Durable creates: one at a time, then 16 tasks; mean time per create.
fn creates(rt: &tokio::runtime::Runtime, log: Arc<dyn EventLog>, n: usize) -> (Duration, Duration) {
    let ledger = Keyledger::open(log, config(None)).expect("open");
    let one = rt.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            ledger
                .create_key(principal(i), new_key(i))
                .await
                .expect("create");
        }
        start.elapsed() / n as u32
    });
    let tasks = 16;
    let concurrent = rt.block_on(async {
        let per_task = (4 * n).div_ceil(tasks);
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
        start.elapsed() / (per_task * tasks) as u32
    });
    rt.block_on(ledger.shutdown()).expect("shutdown");
    (one, concurrent)
}

/// Replay: (read and decode every record, open a ledger on it); the
/// better of three runs of each.
/// Reads the whole log in pages of 16,384; returns its last position.
fn read_whole(log: &dyn EventLog) -> u64 {
    let mut after = 0;
    loop {
        let page = log.read_after(after, 16_384).expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
    }
    after
}

fn replay(
    rt: &tokio::runtime::Runtime,
    open: &dyn Fn() -> Arc<dyn EventLog>,
) -> (Duration, Duration, u64) {
    let mut read = Duration::MAX;
    let mut full = Duration::MAX;
    let mut events = 0;
    for _ in 0..3 {
        {
            let log = open();
            let start = Instant::now();
            events = read_whole(log.as_ref());
            read = read.min(start.elapsed());
        }
        let log = open();
        let start = Instant::now();
        let ledger = Keyledger::open(log, config(None)).expect("open");
        full = full.min(start.elapsed());
        assert_eq!(ledger.head(), events);
        rt.block_on(ledger.shutdown()).expect("shutdown");
    }
    (read, full, events)
}

/// `cargo bench --bench postgres -- key-index-check`: `replay`'s check of
/// the per-key index ([`EventLog::check_key_index`]) on `n` events, on
/// PostgreSQL and on redb, each against reading the same log whole
/// (`read_after`, pages of 16,384), alternated, three rounds.
fn key_index_check(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::create();
    let redb_path = dir.path().join("ledger.redb");
    let redb = RedbLog::open(&redb_path).expect("redb");
    let pg = PgLog::connect(db.url()).expect("connect");
    common::fill_with(&redb, n, 1 << 100, 0xb7);
    common::fill_with(&pg, n, 1 << 100, 0xb7);
    let read = |log: &dyn EventLog| {
        let start = Instant::now();
        read_whole(log);
        start.elapsed()
    };
    let check = |log: &dyn EventLog| {
        let start = Instant::now();
        let found = log.check_key_index().expect("check").expect("checked");
        assert_eq!(found.difference, None, "a fresh index is equal");
        (start.elapsed(), found.entries)
    };
    for round in 0..3 {
        for (name, log) in [("postgres", &pg as &dyn EventLog), ("redb", &redb)] {
            let r = read(log);
            let (c, entries) = check(log);
            eprintln!(
                "round {round}: {name}: check {} ({entries} entries) against reading the log {}: {:.1}×",
                millis(c),
                millis(r),
                c.as_secs_f64() / r.as_secs_f64()
            );
        }
    }
    // A difference: the check, then the rebuild under the append lock.
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(
                "DELETE FROM keyledger.key_events WHERE (tenant, key_id, seq) = \
                   (SELECT tenant, key_id, seq FROM keyledger.key_events LIMIT 1)",
            )
            .await
            .expect("remove an entry");
    });
    let start = Instant::now();
    let found = pg.check_key_index().expect("check").expect("checked");
    assert!(found.difference.is_some(), "the removed entry is found");
    eprintln!(
        "postgres: check and mend after an entry was removed {} (appends held for the mend only)",
        millis(start.elapsed())
    );
    eprintln!(
        "({n} events; load {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// `cargo bench --bench postgres -- follower`: a new node's start on an
/// empty data directory after `n` events, from position 1 and from the
/// snapshot another node shared (issue 13), alternated, three rounds, in
/// one run; with the parts of the second: reading the chain hashes alone
/// (what the Merkle tiles are rebuilt from) against reading and decoding
/// every record.
fn follower(rt: &tokio::runtime::Runtime, n: usize) {
    use keyledger_runtime::SnapshotConfig;
    use std::sync::atomic::Ordering;
    let db = TestDatabase::create();
    let pg = || -> Arc<dyn EventLog> { Arc::new(PgLog::connect(db.url()).expect("connect")) };
    let started = Instant::now();
    common::fill_with(pg().as_ref(), n, 1 << 100, 0xf0);
    eprintln!("follower: filled {n} events in {:?}", started.elapsed());
    let started = Instant::now();
    let projected = PgLog::connect(db.url())
        .and_then(|l| l.project_all())
        .expect("project");
    eprintln!(
        "follower: the analysts' projection up to {projected} in {:?}",
        started.elapsed()
    );
    let sql = |statement: &'static str| {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client.batch_execute(statement).await.expect("sql");
        });
    };
    // A node on an empty data directory: open to ready, and where it
    // started from.
    let start = || -> (Duration, u64, u64, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            snapshots: Some(SnapshotConfig::in_dir(dir.path())),
            ..config(Some(Follow::new("bench")))
        };
        let log = pg();
        let _guard = rt.enter();
        let t = Instant::now();
        let node = Keyledger::open(log, config).expect("open");
        let took = t.elapsed();
        let m = &node.metrics().snapshots;
        let out = (
            took,
            m.start_snapshot_position.load(Ordering::Relaxed),
            m.start_replayed_events.load(Ordering::Relaxed),
            m.start_usage_position.load(Ordering::Relaxed),
        );
        // Its stop publishes a snapshot (the first round's is the one the
        // later rounds start from).
        rt.block_on(node.shutdown()).expect("shutdown");
        out
    };
    let (mut whole, mut shared) = (Vec::new(), Vec::new());
    for round in 0..3 {
        sql("DELETE FROM keyledger.snapshots");
        let w = start();
        assert_eq!((w.1, w.2), (0, projected), "from position 1");
        let s = start();
        assert_eq!(
            (s.1, s.2, s.3),
            (projected, 0, projected),
            "from the shared snapshot"
        );
        eprintln!(
            "follower round {round}: from position 1 {:?}, from the shared snapshot {:?} ({:.2}x), load {}",
            w.0,
            s.0,
            w.0.as_secs_f64() / s.0.as_secs_f64(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        whole.push(w.0);
        shared.push(s.0);
    }
    whole.sort();
    shared.sort();
    // The parts: reading the chain hashes against reading the records.
    let log = pg();
    let t = Instant::now();
    let mut after = 0;
    while let Some(last) = log.chain_links(after, 16_384).expect("links").last() {
        after = last.position;
    }
    let links = t.elapsed();
    let t = Instant::now();
    let mut after = 0;
    while let Some(last) = log.read_after(after, 16_384).expect("read").last() {
        after = last.position;
    }
    let records = t.elapsed();
    let bytes: Vec<u64> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .query(
                "SELECT bytes FROM keyledger.snapshots ORDER BY position DESC",
                &[],
            )
            .await
            .expect("sizes")
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect()
    });
    println!(
        "follower at {projected} events: a new node's start, median of 3: from position 1 {}, \
         from the shared snapshot {} ({:.2}x faster); reading the chain hashes {} against \
         reading and decoding the records {} ({:.2}x); shared snapshot {:?} bytes",
        millis(whole[1]),
        millis(shared[1]),
        whole[1].as_secs_f64() / shared[1].as_secs_f64(),
        millis(links),
        millis(records),
        records.as_secs_f64() / links.as_secs_f64(),
        bytes
    );
}

/// p50, p99 and max of some durations.
fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Propagation over `rounds` revocations on node A, seen by B and C; and
/// the latency of a plain revoke and of one that waits for every node.
struct Propagation {
    seen: Vec<Duration>,
    revoke: Vec<Duration>,
    revoke_everywhere: Vec<Duration>,
}

fn propagation(
    rt: &tokio::runtime::Runtime,
    logs: [Arc<dyn EventLog>; 3],
    rounds: usize,
) -> Propagation {
    let nodes: Vec<Keyledger> = logs
        .into_iter()
        .enumerate()
        .map(|(i, log)| {
            Keyledger::open(log, config(Some(Follow::new(format!("bench-{i}"))))).expect("open")
        })
        .collect();
    let mut out = Propagation {
        seen: Vec::new(),
        revoke: Vec::new(),
        revoke_everywhere: Vec::new(),
    };
    let spin_until = |node: &Keyledger, secret: &str, outcome: VerifyOutcome| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.verify(secret, None).outcome != outcome {
            assert!(Instant::now() < deadline, "no propagation within 10 s");
            // Not a busy spin: on two cores it would take a core from the
            // nodes it waits for. The resolution is about 0.1 ms.
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    // The first rounds warm up (connections, the listeners, caches) and
    // are not counted.
    const WARM_UP_ROUNDS: usize = 4;
    for round in 0..rounds + WARM_UP_ROUNDS {
        let counted = round >= WARM_UP_ROUNDS;
        let created = rt
            .block_on(nodes[0].create_key(principal(round), new_key(round)))
            .expect("create");
        let secret = created.secret.expose().to_owned();
        for n in &nodes[1..] {
            spin_until(n, &secret, VerifyOutcome::Valid);
        }
        let p = Principal::operator("acme".parse().expect("tenant"));
        let asked = Instant::now();
        if round % 2 == 0 {
            rt.block_on(nodes[0].revoke_key(p, created.key.id, RevokeReason::Manual))
                .expect("revoke");
            let acked = Instant::now();
            if counted {
                out.revoke.push(acked - asked);
            }
            // B and C are checked in turn; each sample is from the ack to
            // the moment that node refused the key.
            for n in &nodes[1..] {
                spin_until(n, &secret, VerifyOutcome::Revoked);
                if counted {
                    out.seen.push(acked.elapsed());
                }
            }
        } else {
            rt.block_on(nodes[0].revoke_key_everywhere(
                p,
                created.key.id,
                RevokeReason::Manual,
                Duration::from_secs(10),
            ))
            .expect("revoke everywhere");
            if counted {
                out.revoke_everywhere.push(asked.elapsed());
            }
            for n in &nodes[1..] {
                assert_eq!(n.verify(&secret, None).outcome, VerifyOutcome::Revoked);
            }
        }
    }
    for n in nodes {
        rt.block_on(n.shutdown()).expect("shutdown");
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for a list; this is not a criterion run.
        return;
    }
    let rt = rt();
    if std::env::args().any(|a| a == "follower") {
        follower(&rt, env_usize("KEYLEDGER_BENCH_EVENTS", 1_000_000));
        return;
    }
    if std::env::args().any(|a| a == "key-index-check") {
        key_index_check(env_usize("KEYLEDGER_BENCH_EVENTS", 200_000));
        return;
    }
    let n_creates = env_usize("KEYLEDGER_BENCH_CREATES", 1000);
    let n_events = env_usize("KEYLEDGER_BENCH_EVENTS", 200_000);
    let rounds = env_usize("KEYLEDGER_BENCH_ROUNDS", 300);
    let cap = Duration::from_secs(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDatabase::create();
    let pg = || -> Arc<dyn EventLog> { Arc::new(PgLog::connect(db.url()).expect("connect")) };

    // Baselines.
    let record = vec![0x5a_u8; 200];
    let mut file = std::fs::File::create(dir.path().join("raw")).expect("raw file");
    let fdatasync = per_op(n_creates, cap, |_| {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    });
    let raw_insert = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload bytea NOT NULL)",
            )
            .await
            .expect("create table");
        let start = Instant::now();
        let mut done = 0;
        while done < n_creates && start.elapsed() < cap {
            client
                .execute("INSERT INTO bench_raw (payload) VALUES ($1)", &[&record])
                .await
                .expect("insert");
            done += 1;
        }
        start.elapsed() / done.max(1) as u32
    });
    eprintln!("baselines: fdatasync {fdatasync:?}, one-row INSERT {raw_insert:?}");

    // Durable creates.
    let redb_path = dir.path().join("ledger.redb");
    let (redb_one, redb_16) = creates(
        &rt,
        Arc::new(RedbLog::open(&redb_path).expect("redb")),
        n_creates,
    );
    let (pg_one, pg_16) = creates(&rt, pg(), n_creates);
    eprintln!("creates: redb {redb_one:?} / {redb_16:?}, postgres {pg_one:?} / {pg_16:?}");

    // Replay.
    common::fill_with(
        &RedbLog::open(&redb_path).expect("redb"),
        n_events,
        1 << 100,
        0xb7,
    );
    common::fill_with(pg().as_ref(), n_events, 1 << 100, 0xb7);
    let (redb_read, redb_replay, redb_events) =
        replay(&rt, &|| Arc::new(RedbLog::open(&redb_path).expect("redb")));
    let (pg_read, pg_replay, pg_events) = replay(&rt, &pg);
    eprintln!("replay: redb {redb_replay:?} ({redb_events}), postgres {pg_replay:?} ({pg_events})");

    // Propagation: a fresh database, three nodes with their own connections.
    let db2 = TestDatabase::create();
    let pg2 = || -> Arc<dyn EventLog> { Arc::new(PgLog::connect(db2.url()).expect("connect")) };
    let on_pg = propagation(&rt, [pg2(), pg2(), pg2()], rounds);
    let memory = MemoryLog::new();
    let on_memory = propagation(
        &rt,
        [
            Arc::new(memory.clone()),
            Arc::new(memory.clone()),
            Arc::new(memory),
        ],
        rounds,
    );

    let rate = |d: Duration| format!("{:.0}/s", 1.0 / d.as_secs_f64());
    let eps = |events: u64, d: Duration| format!("{:.0} events/s", events as f64 / d.as_secs_f64());
    println!("| workload | redb | PostgreSQL | baseline |");
    println!("|---|---|---|---|");
    println!(
        "| durable create, one at a time | {} ({}) | {} ({}) | fdatasync 200 B: {}; PostgreSQL one-row INSERT per transaction: {} ({}) |",
        micros(redb_one),
        rate(redb_one),
        micros(pg_one),
        rate(pg_one),
        micros(fdatasync),
        micros(raw_insert),
        rate(raw_insert)
    );
    println!(
        "| durable create, 16 concurrent tasks (per create) | {} ({}) | {} ({}) | |",
        micros(redb_16),
        rate(redb_16),
        micros(pg_16),
        rate(pg_16)
    );
    println!(
        "| replay {} events into every projection | {} ({}) | {} ({}) | read + decode: redb {} ({}), PostgreSQL {} ({}) |",
        redb_events,
        millis(redb_replay),
        eps(redb_events, redb_replay),
        millis(pg_replay),
        eps(pg_events, pg_replay),
        millis(redb_read),
        eps(redb_events, redb_read),
        millis(pg_read),
        eps(pg_events, pg_read)
    );
    for (name, p) in [
        ("PostgreSQL (3 connection sets)", &on_pg),
        ("one in-process log", &on_memory),
    ] {
        let (s50, s99, smax) = quantiles(p.seen.clone());
        let over = p
            .seen
            .iter()
            .filter(|d| **d > Duration::from_millis(100))
            .count();
        let (r50, r99, _) = quantiles(p.revoke.clone());
        let (w50, w99, _) = quantiles(p.revoke_everywhere.clone());
        println!(
            "| revocation propagation A → B, C on {name}, {} samples ({over} over 100 ms): p50 / p99 / max | | {} / {} / {} | revoke answered: p50 {} p99 {}; with wait=all-nodes: p50 {} p99 {} |",
            p.seen.len(),
            millis(s50),
            millis(s99),
            millis(smax),
            millis(r50),
            millis(r99),
            millis(w50),
            millis(w99)
        );
    }
}
