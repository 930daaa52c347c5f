//! The PostgreSQL backend: the conformance suite, migrations, the commit
//! order that makes tailing safe, notifications, node reports and
//! connection loss. Every test makes its own database on the server named
//! by `KEYLEDGER_TEST_POSTGRES_URL` (scripts/test starts one) and fails
//! when there is none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_store::conformance::{Harness, batch, run_all, sample_events, tenant};
use keyledger_store::postgres::{TestDatabase, append_in_transaction};
use keyledger_store::{EventLog, PgLog, StoreError};

/// One database for the whole suite: `fresh()` empties it (creating and
/// dropping a database per contract costs PostgreSQL a checkpoint each);
/// reopening connects a new `PgLog` to it.
struct Postgres {
    db: TestDatabase,
}

fn connect(db: &TestDatabase) -> PgLog {
    PgLog::connect(db.url()).unwrap_or_else(|e| panic!("connect: {e}"))
}

impl Harness for Postgres {
    fn fresh(&mut self) -> Box<dyn EventLog> {
        self.db
            .reset()
            .unwrap_or_else(|e| panic!("emptying the test database: {e}"));
        let log = connect(&self.db);
        assert_eq!(log.head().ok(), Some(0), "a fresh log is empty");
        Box::new(log)
    }

    fn reopen(&mut self, log: Box<dyn EventLog>) -> Box<dyn EventLog> {
        drop(log);
        Box::new(connect(&self.db))
    }
}

#[test]
fn postgres_log_passes_the_suite() {
    run_all(&mut Postgres {
        db: TestDatabase::create(),
    });
}

// ---------------------------------------------------------------------------
// Commit order: the out-of-order commit that a naive tailer skips.

/// A multi-threaded runtime for tests that drive raw connections.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// A raw connection of the test's own, driven on the current runtime.
async fn raw(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("raw connect: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn exec(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The tailer under test, the same for both designs: remembers the highest
/// position it has seen and asks for what lies past it.
struct MaxPositionTailer {
    last: u64,
    seen: Vec<u64>,
}

impl MaxPositionTailer {
    fn poll(&mut self, read_after: impl FnOnce(u64) -> Vec<u64>) {
        for p in read_after(self.last) {
            self.seen.push(p);
            self.last = self.last.max(p);
        }
    }
}

/// Two writers on two raw connections; the one that began first commits
/// last. With positions from a sequence (the naive design) the second
/// writer's number is taken while the first's is still invisible, so a
/// max-position tailer passes the first one by for ever: the control half
/// asserts exactly that skip. With PgLog's protocol (the append lock, then
/// max(position) + 1) the second writer cannot take a number before the
/// first commits, so the same tailer, reading PgLog, sees every record.
#[test]
fn out_of_order_commits_skip_a_naive_tailer_but_not_pglog() {
    let db = TestDatabase::create();
    let log = connect(&db);
    let rt = runtime();
    rt.block_on(async {
        let (w1, w2, reader) = (raw(&db).await, raw(&db).await, raw(&db).await);

        // The control: a sequence assigns positions at insert.
        exec(
            &w1,
            "CREATE TABLE naive (position bigserial PRIMARY KEY, body text NOT NULL)",
        )
        .await;
        let insert = "INSERT INTO naive (body) VALUES ($1) RETURNING position";
        exec(&w1, "BEGIN").await;
        let p1: i64 = w1
            .query_one(insert, &[&"first"])
            .await
            .unwrap_or_else(|e| panic!("insert: {e}"))
            .get(0);
        exec(&w2, "BEGIN").await;
        let p2: i64 = w2
            .query_one(insert, &[&"second"])
            .await
            .unwrap_or_else(|e| panic!("insert: {e}"))
            .get(0);
        assert_eq!(
            (p1, p2),
            (1, 2),
            "the sequence numbers the writers in order"
        );
        exec(&w2, "COMMIT").await;
        let read_naive = |after: u64| {
            let reader = &reader;
            async move {
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                reader
                    .query(
                        "SELECT position FROM naive WHERE position > $1 ORDER BY position",
                        &[&after],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("naive read: {e}"))
                    .iter()
                    .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
                    .collect::<Vec<u64>>()
            }
        };
        let mut naive = MaxPositionTailer {
            last: 0,
            seen: Vec::new(),
        };
        let page = read_naive(naive.last).await;
        naive.poll(|_| page);
        exec(&w1, "COMMIT").await;
        let page = read_naive(naive.last).await;
        naive.poll(|_| page);
        let stored = read_naive(0).await;
        assert_eq!(stored, [1, 2], "both naive writes committed");
        assert_eq!(
            naive.seen,
            [2],
            "control: the naive tailer must skip position 1, which committed after 2 \
             (if it did not, this test no longer shows anything)"
        );

        // PgLog's protocol, on the same two raw connections.
        let (a, b) = (tenant("a"), tenant("b"));
        exec(&w1, "BEGIN").await;
        let first = append_in_transaction(&w1, &[batch(&a, 0, sample_events(&a, 0, 2))])
            .await
            .unwrap_or_else(|e| panic!("first append: {e}"));
        assert_eq!(first.iter().map(|r| r.position).collect::<Vec<_>>(), [1, 2]);
        exec(&w2, "BEGIN").await;
        let w2 = Arc::new(w2);
        let second = {
            let w2 = w2.clone();
            let b = b.clone();
            tokio::spawn(async move {
                append_in_transaction(&w2, &[batch(&b, 0, sample_events(&b, 10, 1))]).await
            })
        };
        // The second writer waits on the append lock, holding no number.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = reader
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("pg_locks: {e}"))
                .get(0);
            if waiting == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the second writer never queued on the append lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "the second append must wait for the first to commit"
        );
        let mut tailer = MaxPositionTailer {
            last: 0,
            seen: Vec::new(),
        };
        // PgLog is synchronous and may be called from async code.
        let read_log = |after: u64| -> Vec<u64> {
            log.read_after(after, 100)
                .unwrap_or_else(|e| panic!("read_after: {e}"))
                .iter()
                .map(|r| r.position)
                .collect()
        };
        tailer.poll(read_log);
        assert!(tailer.seen.is_empty(), "nothing is committed yet");
        exec(&w1, "COMMIT").await;
        let second = second
            .await
            .unwrap_or_else(|e| panic!("second append task: {e}"))
            .unwrap_or_else(|e| panic!("second append: {e}"));
        assert_eq!(
            second.iter().map(|r| r.position).collect::<Vec<_>>(),
            [3],
            "the second writer is numbered after the first committed"
        );
        tailer.poll(read_log);
        assert_eq!(
            tailer.seen,
            [1, 2],
            "the first writer's records, once committed"
        );
        exec(&w2, "COMMIT").await;
        tailer.poll(read_log);
        assert_eq!(
            tailer.seen,
            [1, 2, 3],
            "the tailer saw every record, in order"
        );
        assert_eq!(log.head().ok(), Some(3));
    });
}

// ---------------------------------------------------------------------------
// Calling PgLog from async code.

/// The runtime calls the log from its own threads and the server from
/// async handlers: neither flavour of tokio runtime may make a call (or
/// the drop) panic with "a runtime within a runtime".
#[test]
fn pglog_works_inside_async_contexts() {
    let db = TestDatabase::create();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let a = tenant("a");
    let url = db.url().to_owned();
    let records = current.block_on(async {
        let log = PgLog::connect(&url).unwrap_or_else(|e| panic!("connect: {e}"));
        let records = log
            .append(vec![batch(&a, 0, sample_events(&a, 0, 2))])
            .unwrap_or_else(|e| panic!("append: {e}"));
        assert_eq!(log.head().ok(), Some(2));
        drop(log);
        records
    });
    let multi = runtime();
    let again = multi.block_on(async {
        let log = PgLog::connect(&url).unwrap_or_else(|e| panic!("connect: {e}"));
        let read = tokio::spawn(async move {
            let records = log.read_after(0, 10);
            drop(log);
            records
        })
        .await
        .unwrap_or_else(|e| panic!("task: {e}"));
        read.unwrap_or_else(|e| panic!("read_after: {e}"))
    });
    assert_eq!(again, records);
}

// ---------------------------------------------------------------------------
// Notifications and node reports.

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Another node's append wakes a waiting tailer by NOTIFY, long before its
/// timeout; an announcement that came before the wait is not lost.
#[test]
fn another_nodes_append_wakes_wait_for_append() {
    const WAIT: Duration = Duration::from_secs(60);
    let db = TestDatabase::create();
    let (node_a, node_b) = (connect(&db), connect(&db));
    wait_until("node A listens", || node_a.listening());
    let t = tenant("t");
    let head = node_a.head().unwrap_or_else(|e| panic!("head: {e}"));
    let woke = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            node_a
                .wait_for_append(head, WAIT)
                .unwrap_or_else(|e| panic!("wait: {e}"));
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        node_b
            .append(vec![batch(&t, 0, sample_events(&t, 0, 1))])
            .unwrap_or_else(|e| panic!("append: {e}"));
        waiter
            .join()
            .unwrap_or_else(|_| panic!("the waiter panicked"))
    });
    assert!(
        woke < WAIT / 2,
        "wait_for_append returned after {woke:?}: woken by the notification, not the timeout"
    );
    let page = node_a
        .read_after(head, 10)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(page.len(), 1, "the tailer finds the other node's record");
    // Already announced: returns at once, whatever the timeout.
    let started = Instant::now();
    node_a
        .wait_for_append(head, WAIT)
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(
        started.elapsed() < WAIT / 2,
        "an earlier announcement counts"
    );
    // Nothing new past the head: the wait lasts its timeout.
    let started = Instant::now();
    node_a
        .wait_for_append(head + 1, Duration::from_millis(50))
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn nodes_report_what_they_applied() {
    let db = TestDatabase::create();
    let log = connect(&db);
    let live = Duration::from_secs(600);
    assert_eq!(log.min_applied_live(live).ok(), Some(None), "no node yet");
    for (node, position) in [("node-1", 5), ("node-2", 3)] {
        log.report_applied(node, position)
            .unwrap_or_else(|e| panic!("report: {e}"));
    }
    assert_eq!(log.min_applied_live(live).ok(), Some(Some(3)));
    log.report_applied("node-2", 7)
        .unwrap_or_else(|e| panic!("report: {e}"));
    assert_eq!(log.min_applied_live(live).ok(), Some(Some(5)));
    // Another handle (another node) sees the same table.
    let other = connect(&db);
    assert_eq!(other.min_applied_live(live).ok(), Some(Some(5)));
    std::thread::sleep(Duration::from_millis(60));
    log.report_applied("node-3", 1)
        .unwrap_or_else(|e| panic!("report: {e}"));
    assert_eq!(
        log.min_applied_live(Duration::from_millis(40)).ok(),
        Some(Some(1)),
        "only the nodes seen within the window count"
    );
}

// ---------------------------------------------------------------------------
// Migrations.

#[test]
fn migrations_apply_once_even_when_nodes_start_together() {
    let db = TestDatabase::create();
    let logs: Vec<PgLog> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..4).map(|_| s.spawn(|| connect(&db))).collect();
        starting
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a connect panicked")))
            .collect()
    });
    for log in &logs {
        assert_eq!(log.schema_versions().ok(), Some(vec![1, 2, 3, 4, 5]));
    }
    drop(logs);
    let log = connect(&db);
    assert_eq!(
        log.schema_versions().ok(),
        Some(vec![1, 2, 3, 4, 5]),
        "reconnecting applies nothing again"
    );
}

/// A test database holding 12 events of tenant `a` and 6 of `b`.
fn two_tenants() -> (
    TestDatabase,
    keyledger_core::TenantId,
    keyledger_core::TenantId,
) {
    let db = TestDatabase::create();
    let (a, b) = (tenant("a"), tenant("b"));
    connect(&db)
        .append(vec![
            batch(&a, 0, sample_events(&a, 0, 12)),
            batch(&b, 0, sample_events(&b, 50, 6)),
        ])
        .unwrap_or_else(|e| panic!("append: {e}"));
    (db, a, b)
}

/// A database from before migration 4 (events, no key index): the first
/// node to connect fills the index for every event already there.
#[test]
fn the_key_index_is_filled_for_events_from_before_it() {
    let (db, a, b) = two_tenants();
    // What migration 4 finds in an older database: events and no entries.
    runtime().block_on(async {
        let c = raw(&db).await;
        exec(
            &c,
            "TRUNCATE keyledger.key_events; \
             UPDATE keyledger.key_index_backfill \
               SET upto = (SELECT max(position) FROM keyledger.events)",
        )
        .await;
    });
    let log = connect(&db);
    let (from_index, from_records) = (
        histories(&log, &[&a, &b], false),
        histories(&log, &[&a, &b], true),
    );
    assert!(from_records.len() >= 6, "{}", from_records.len());
    assert_eq!(
        from_index, from_records,
        "every key's history after the backfill"
    );
}

/// Every key's history in `tenants`, in key order: read through the
/// index, or (`from_records`) picked from each tenant's whole trail.
fn histories(
    log: &PgLog,
    tenants: &[&keyledger_core::TenantId],
    from_records: bool,
) -> Vec<Vec<keyledger_store::Record>> {
    let mut out = Vec::new();
    for t in tenants {
        let records = log
            .read_tenant(t, 0, usize::MAX)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut keys: Vec<keyledger_core::KeyId> = records
            .iter()
            .flat_map(|r| keyledger_core::touched_keys(&r.event))
            .collect();
        keys.sort();
        keys.dedup();
        assert!(keys.len() >= 3, "{t}: {keys:?}");
        for key in keys {
            out.push(if from_records {
                records
                    .iter()
                    .filter(|r| keyledger_core::touched_keys(&r.event).any(|k| k == key))
                    .cloned()
                    .collect()
            } else {
                log.read_key(t, key, 0, usize::MAX)
                    .unwrap_or_else(|e| panic!("{e}"))
            });
        }
    }
    out
}

/// `check_key_index` on PostgreSQL: an entry removed, one pointing at
/// another position, one naming no record are each named exactly and the
/// index rebuilt from the records, so the histories read through it are
/// the records' again; appends go on after the rebuild.
#[test]
fn the_key_index_is_checked_against_the_records_and_rebuilt_when_it_differs() {
    let (db, a, b) = two_tenants();
    let log = connect(&db);
    let clean = log
        .check_key_index()
        .unwrap_or_else(|e| panic!("check: {e}"))
        .unwrap_or_else(|| panic!("PostgreSQL's index is checked"));
    assert_eq!(clean.difference, None);
    assert!(clean.entries >= 18, "{clean:?}");
    let want = histories(&log, &[&a, &b], true);
    assert_eq!(histories(&log, &[&a, &b], false), want);
    let key_of = |bytes: &[u8]| {
        let b: [u8; 16] = bytes.try_into().unwrap_or_else(|_| panic!("16 bytes"));
        keyledger_core::KeyId::from_ulid(ulid::Ulid(u128::from_be_bytes(b)))
    };
    let damages = [
        (
            "DELETE FROM keyledger.key_events WHERE (tenant, key_id, seq) = \
               (SELECT tenant, key_id, seq FROM keyledger.key_events WHERE tenant = 'a' \
                ORDER BY key_id DESC, seq LIMIT 1) \
             RETURNING tenant, key_id, seq, position",
            "is missing",
        ),
        (
            "UPDATE keyledger.key_events SET position = position + 1 WHERE (tenant, key_id, seq) = \
               (SELECT tenant, key_id, seq FROM keyledger.key_events WHERE tenant = 'b' \
                ORDER BY key_id, seq LIMIT 1) \
             RETURNING tenant, key_id, seq, position",
            "points at position",
        ),
        (
            "INSERT INTO keyledger.key_events (tenant, key_id, seq, position) \
               SELECT tenant, key_id, seq + 1000, position FROM keyledger.key_events \
               WHERE tenant = 'a' ORDER BY key_id, seq LIMIT 1 \
             RETURNING tenant, key_id, seq, position",
            "is in no record",
        ),
    ];
    for (damage, what) in damages {
        let row = runtime().block_on(async {
            let c = raw(&db).await;
            c.query_one(damage, &[])
                .await
                .unwrap_or_else(|e| panic!("{damage}: {e}"))
        });
        let (t, key, seq, position) = (
            row.get::<_, String>(0),
            key_of(row.get::<_, &[u8]>(1)),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
        );
        let name = format!("key_events: tenant {t}, key {key}, event {seq}");
        let expected = match what {
            "points at position" => format!(
                "{name} points at position {position}; the records give {}",
                position - 1
            ),
            _ => format!("{name} {what}"),
        };
        let found = log
            .check_key_index()
            .unwrap_or_else(|e| panic!("check: {e}"))
            .unwrap_or_else(|| panic!("checked"));
        assert_eq!(found.difference.as_deref(), Some(expected.as_str()));
        let again = log
            .check_key_index()
            .unwrap_or_else(|e| panic!("check: {e}"))
            .unwrap_or_else(|| panic!("checked"));
        assert_eq!(again, clean, "rebuilt from the records after: {expected}");
        assert_eq!(
            histories(&log, &[&a, &b], false),
            want,
            "read through the index after: {expected}"
        );
    }
    // Appends after a rebuild are indexed as before.
    log.append(vec![batch(&a, 12, sample_events(&a, 100, 3))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    let after = log
        .check_key_index()
        .unwrap_or_else(|e| panic!("check: {e}"))
        .unwrap_or_else(|| panic!("checked"));
    assert_eq!(after.difference, None);
    assert!(after.entries > clean.entries, "{after:?} against {clean:?}");
}

#[test]
fn migrations_refuse_a_changed_or_newer_schema() {
    let db = TestDatabase::create();
    drop(connect(&db));
    let rt = runtime();
    rt.block_on(async {
        let c = raw(&db).await;
        exec(
            &c,
            "UPDATE keyledger.schema_migrations SET checksum = '\\x00' WHERE version = 1",
        )
        .await;
    });
    match PgLog::connect(db.url()) {
        Err(StoreError::Backend(m)) => assert!(m.contains("different file"), "{m}"),
        other => panic!("a changed migration must be refused, got {other:?}"),
    }
    rt.block_on(async {
        let c = raw(&db).await;
        exec(&c, "DROP SCHEMA keyledger CASCADE").await;
    });
    drop(connect(&db));
    rt.block_on(async {
        let c = raw(&db).await;
        exec(
            &c,
            "INSERT INTO keyledger.schema_migrations (version, name, checksum) \
             VALUES (999, 'from the future', '\\x00')",
        )
        .await;
    });
    match PgLog::connect(db.url()) {
        Err(StoreError::Backend(m)) => assert!(m.contains("newer than this release"), "{m}"),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Connection loss, through a TCP proxy that can refuse connections and cut
// one at the moment an append commits.

/// What the proxy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Relays everything.
    Pass,
    /// Closes every new connection at once (the server is down).
    Refuse,
    /// Relays the next `COMMIT` to the server, then closes the client's
    /// side before the answer: the client cannot know the outcome (it
    /// committed).
    AfterCommit,
    /// Drops the next `COMMIT` and closes both sides: the server rolls the
    /// transaction back; the client cannot know that either.
    InsteadOfCommit,
}

struct Proxy {
    port: u16,
    user: String,
    dbname: String,
    cut: Arc<std::sync::Mutex<Cut>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(db: &TestDatabase) -> Proxy {
        use std::str::FromStr;
        let config =
            tokio_postgres::Config::from_str(db.url()).unwrap_or_else(|e| panic!("test url: {e}"));
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("the proxy needs a TCP host, got {other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = format!("{host}:{port}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("proxy nonblocking: {e}"));
        let local = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let cut = Arc::new(std::sync::Mutex::new(Cut::Pass));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if *cut.lock().unwrap_or_else(|e| e.into_inner()) == Cut::Refuse {
                                drop(client);
                                continue;
                            }
                            let (cut, upstream) = (cut.clone(), upstream.clone());
                            std::thread::spawn(move || relay(client, &upstream, &cut));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Proxy {
            port: local.port(),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            dbname: db.name().to_owned(),
            cut,
            stop,
        }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port, self.user, self.dbname
        )
    }

    fn set(&self, cut: Cut) {
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = cut;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Relays one connection, reading the client's side message by message
/// (PostgreSQL's frontend protocol) to find the `COMMIT`.
fn relay(client: std::net::TcpStream, upstream: &str, cut: &std::sync::Mutex<Cut>) {
    use std::io::{Read, Write};
    let _ = client.set_nonblocking(false);
    let Ok(server) = std::net::TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    let (mut from_client, mut to_server) = (client, server);
    let read_exact = |s: &mut std::net::TcpStream, n: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).ok().map(|()| buf)
    };
    // Untyped messages first: an optional SSL/GSS request, then the
    // startup message.
    loop {
        let Some(len) = read_exact(&mut from_client, 4) else {
            return;
        };
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(body) = read_exact(&mut from_client, n.saturating_sub(4)) else {
            return;
        };
        if to_server
            .write_all(&len)
            .and_then(|()| to_server.write_all(&body))
            .is_err()
        {
            return;
        }
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if !matches!(code, Some(80_877_103 | 80_877_104)) {
            break;
        }
    }
    while let Some(head) = read_exact(&mut from_client, 5) {
        let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let Some(body) = read_exact(&mut from_client, n.saturating_sub(4)) else {
            break;
        };
        let is_commit = head[0] == b'Q' && body == b"COMMIT\0";
        let mode = *cut.lock().unwrap_or_else(|e| e.into_inner());
        if is_commit && mode == Cut::InsteadOfCommit {
            *cut.lock().unwrap_or_else(|e| e.into_inner()) = Cut::Pass;
            break;
        }
        if to_server
            .write_all(&head)
            .and_then(|()| to_server.write_all(&body))
            .is_err()
        {
            break;
        }
        if is_commit && mode == Cut::AfterCommit {
            *cut.lock().unwrap_or_else(|e| e.into_inner()) = Cut::Pass;
            // The client loses its side now; the server's answer goes
            // nowhere. The server's side closes a little later, after the
            // commit has surely been read.
            let _ = from_client.shutdown(std::net::Shutdown::Both);
            std::thread::sleep(Duration::from_millis(500));
            break;
        }
    }
    let _ = from_client.shutdown(std::net::Shutdown::Both);
    let _ = to_server.shutdown(std::net::Shutdown::Both);
}

fn positions(log: &PgLog) -> Vec<u64> {
    log.read_after(0, 1000)
        .unwrap_or_else(|e| panic!("read_after: {e}"))
        .iter()
        .map(|r| r.position)
        .collect()
}

/// Sessions killed while idle (as a restart does): the next calls connect
/// again by themselves and succeed.
#[test]
fn killed_sessions_are_replaced_without_a_restart() {
    let db = TestDatabase::create();
    let log = connect(&db);
    let a = tenant("a");
    log.append(vec![batch(&a, 0, sample_events(&a, 0, 1))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    wait_until("the listener is up", || log.listening());
    let killed = db
        .terminate_connections()
        .unwrap_or_else(|e| panic!("terminate: {e}"));
    assert!(
        killed >= 2,
        "the pool's and the listener's sessions were ended"
    );
    assert_eq!(log.head().ok(), Some(1), "a read reconnects");
    log.append(vec![batch(&a, 1, sample_events(&a, 1, 1))])
        .unwrap_or_else(|e| panic!("an append reconnects: {e}"));
    assert_eq!(positions(&log), [1, 2]);
    wait_until("the listener is back", || log.listening());
}

/// The database unreachable: every call fails with `Unavailable` (no
/// panic, nothing written) and works again once it is back.
#[test]
fn an_unreachable_database_is_unavailable_then_recovers() {
    let db = TestDatabase::create();
    let proxy = Proxy::start(&db);
    let log = PgLog::connect(&proxy.url()).unwrap_or_else(|e| panic!("connect: {e}"));
    let a = tenant("a");
    log.append(vec![batch(&a, 0, sample_events(&a, 0, 1))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    proxy.set(Cut::Refuse);
    db.terminate_connections()
        .unwrap_or_else(|e| panic!("terminate: {e}"));
    wait_until("the listener notices", || !log.listening());
    match PgLog::connect(&proxy.url()) {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("connecting with the database down: want Unavailable, got {other:?}"),
    }
    match log.head() {
        Err(StoreError::Unavailable(m)) => assert!(!m.is_empty()),
        other => panic!("head with the database down: want Unavailable, got {other:?}"),
    }
    match log.append(vec![batch(&a, 1, sample_events(&a, 1, 1))]) {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("append with the database down: want Unavailable, got {other:?}"),
    }
    assert!(matches!(
        log.read_after(0, 10),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        log.tenant_head(&a),
        Err(StoreError::Unavailable(_))
    ));
    proxy.set(Cut::Pass);
    assert_eq!(positions(&log), [1], "the failed append wrote nothing");
    log.append(vec![batch(&a, 1, sample_events(&a, 1, 1))])
        .unwrap_or_else(|e| panic!("append after recovery: {e}"));
    assert_eq!(positions(&log), [1, 2]);
    wait_until("the listener reconnects", || log.listening());
}

/// The connection lost during `COMMIT`: the append finds out what
/// happened before it answers. Committed: it returns the records (once).
/// Not committed: `Unavailable`, saying nothing was written.
#[test]
fn an_append_cut_during_commit_is_resolved() {
    let db = TestDatabase::create();
    let proxy = Proxy::start(&db);
    let log = PgLog::connect(&proxy.url()).unwrap_or_else(|e| panic!("connect: {e}"));
    let a = tenant("a");
    log.append(vec![batch(&a, 0, sample_events(&a, 0, 1))])
        .unwrap_or_else(|e| panic!("append: {e}"));

    proxy.set(Cut::AfterCommit);
    let records = log
        .append(vec![batch(&a, 1, sample_events(&a, 1, 2))])
        .unwrap_or_else(|e| panic!("a commit that reached the server is an append: {e}"));
    assert_eq!(
        records.iter().map(|r| r.position).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(
        *proxy.cut.lock().unwrap_or_else(|e| e.into_inner()),
        Cut::Pass,
        "the cut happened"
    );
    assert_eq!(positions(&log), [1, 2, 3], "written once");

    proxy.set(Cut::InsteadOfCommit);
    match log.append(vec![batch(&a, 3, sample_events(&a, 3, 1))]) {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("not committed"), "the error says so: {m}");
        }
        other => panic!("a commit that never arrived: want Unavailable, got {other:?}"),
    }
    assert_eq!(positions(&log), [1, 2, 3], "nothing was written");
    let records = log
        .append(vec![batch(&a, 3, sample_events(&a, 3, 1))])
        .unwrap_or_else(|e| panic!("the retry: {e}"));
    assert_eq!(records[0].position, 4);
    let report =
        keyledger_store::chain::verify_tenant(&log, &a).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.ok, "{report:?}");
}

// ---------------------------------------------------------------------------
// Someone with write access to the database edits the log.

/// Rows changed, removed or cut off behind keyledger's back, with SQL:
/// chain verification names the first bad record, reads report damage
/// instead of returning it, and appends refuse to extend a damaged chain.
#[test]
fn tampering_in_the_database_is_found() {
    let db = TestDatabase::create();
    let log = connect(&db);
    let (a, b) = (tenant("a"), tenant("b"));
    log.append(vec![
        batch(&a, 0, sample_events(&a, 0, 5)),
        batch(&b, 0, sample_events(&b, 0, 3)),
    ])
    .unwrap_or_else(|e| panic!("append: {e}"));
    let verify = |t| {
        keyledger_store::chain::verify_tenant(&log, t).unwrap_or_else(|e| panic!("verify: {e}"))
    };
    assert!(verify(&a).ok && verify(&b).ok);
    let rt = runtime();
    let sql = |statement: &'static str| {
        rt.block_on(async {
            let c = raw(&db).await;
            exec(&c, statement).await;
        });
    };

    // A changed payload byte (position 3 is a's third event).
    sql("UPDATE keyledger.events SET payload = payload || '\\x00'::bytea WHERE position = 3");
    let report = verify(&a);
    let bad = report
        .first_bad
        .unwrap_or_else(|| panic!("a changed event verifies"));
    assert_eq!((bad.position, bad.seq, report.events), (3, 3, 2), "{bad:?}");
    assert!(verify(&b).ok, "another tenant's chain is untouched");

    // A removed event: tailing reports the gap instead of passing over it.
    sql("DELETE FROM keyledger.events WHERE position = 7");
    match log.read_after(4, 100) {
        Err(StoreError::Corrupt { position: 7, .. }) => {}
        other => panic!("a gap in the positions: want Corrupt at 7, got {other:?}"),
    }
    let bad = verify(&b)
        .first_bad
        .unwrap_or_else(|| panic!("a removed event verifies"));
    assert_eq!(bad.seq, 2, "{bad:?}");
    assert!(
        matches!(log.read_tenant(&b, 0, 10), Err(StoreError::Corrupt { .. })),
        "a tenant's page with a hole is damage"
    );

    // The tail cut off: the head no longer matches, and the chain cannot
    // be extended.
    sql("DELETE FROM keyledger.events WHERE position = 8");
    match log.append(vec![batch(&b, 3, sample_events(&b, 3, 1))]) {
        Err(StoreError::Corrupt { message, .. }) => {
            assert!(message.contains("refusing to extend"), "{message}");
        }
        other => panic!("appending to a damaged chain: want Corrupt, got {other:?}"),
    }
}

/// Another session holding the append lock (a node stuck mid-append): an
/// append waits at most `append_lock_timeout`, and a call at most
/// `operation_timeout`, then fails as `Unavailable` having written
/// nothing; once the lock is free, appends work again.
#[test]
fn a_held_append_lock_times_out_cleanly() {
    use keyledger_store::PgOptions;
    use keyledger_store::postgres::APPEND_LOCK;
    let db = TestDatabase::create();
    let short_lock = PgOptions {
        append_lock_timeout: Duration::from_millis(200),
        ..PgOptions::default()
    };
    let short_call = PgOptions {
        operation_timeout: Duration::from_millis(300),
        append_lock_timeout: Duration::from_secs(20),
        ..PgOptions::default()
    };
    let log = PgLog::connect_with(db.url(), short_lock).unwrap_or_else(|e| panic!("connect: {e}"));
    let impatient =
        PgLog::connect_with(db.url(), short_call).unwrap_or_else(|e| panic!("connect: {e}"));
    let a = tenant("a");
    log.append(vec![batch(&a, 0, sample_events(&a, 0, 1))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    let rt = runtime();
    let holder = rt.block_on(async {
        let c = raw(&db).await;
        exec(&c, "BEGIN").await;
        c.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&APPEND_LOCK.0, &APPEND_LOCK.1],
        )
        .await
        .unwrap_or_else(|e| panic!("take the lock: {e}"));
        c
    });
    match log.append(vec![batch(&a, 1, sample_events(&a, 1, 1))]) {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("another node's append"), "{m}");
        }
        other => panic!("a held lock: want Unavailable, got {other:?}"),
    }
    match impatient.append(vec![batch(&a, 1, sample_events(&a, 1, 1))]) {
        Err(StoreError::Unavailable(m)) => {
            assert!(
                m.contains("known only once the log can be read again"),
                "{m}"
            );
        }
        other => panic!("a call past its timeout: want Unavailable, got {other:?}"),
    }
    // Reads do not wait for the lock.
    assert_eq!(log.head().ok(), Some(1), "nothing was written");
    rt.block_on(async { exec(&holder, "COMMIT").await });
    log.append(vec![batch(&a, 1, sample_events(&a, 1, 1))])
        .unwrap_or_else(|e| panic!("append once the lock is free: {e}"));
    impatient
        .append(vec![batch(&a, 2, sample_events(&a, 2, 1))])
        .unwrap_or_else(|e| panic!("the impatient handle recovers: {e}"));
    assert_eq!(positions(&log), [1, 2, 3]);
}

/// Nodes may run as a role that can only read and write the log's tables
/// once an owner has migrated the database; without the tables, such a
/// role gets a clear error.
#[test]
fn a_role_without_create_rights_runs_a_migrated_log() {
    use std::str::FromStr;
    let db = TestDatabase::create();
    let blank = TestDatabase::create();
    let role = format!("{}_node", db.name());
    let config =
        tokio_postgres::Config::from_str(db.url()).unwrap_or_else(|e| panic!("test url: {e}"));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("this test needs a TCP host, got {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let url_as = |dbname: &str| format!("host={host} port={port} user={role} dbname={dbname}");
    drop(connect(&db));
    let rt = runtime();
    rt.block_on(async {
        let c = raw(&db).await;
        exec(
            &c,
            &format!(
                "CREATE ROLE {role} LOGIN; \
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
                 REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM PUBLIC; \
                 REVOKE CREATE, TEMPORARY ON DATABASE {blank} FROM PUBLIC; \
                 GRANT USAGE ON SCHEMA keyledger TO {role}; \
                 GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA keyledger TO {role}",
                db = db.name(),
                blank = blank.name(),
            ),
        )
        .await;
    });
    let outcome = std::panic::catch_unwind(|| {
        let log = PgLog::connect(&url_as(db.name()))
            .unwrap_or_else(|e| panic!("a restricted role on a migrated database: {e}"));
        let a = tenant("a");
        log.append(vec![batch(&a, 0, sample_events(&a, 0, 2))])
            .unwrap_or_else(|e| panic!("append as the restricted role: {e}"));
        log.report_applied("n", 2)
            .unwrap_or_else(|e| panic!("report as the restricted role: {e}"));
        assert_eq!(positions(&log), [1, 2]);
        drop(log);
        match PgLog::connect(&url_as(blank.name())) {
            Err(StoreError::Backend(m)) => {
                assert!(m.contains("permission denied"), "{m}");
            }
            other => panic!("a restricted role on a blank database: want an error, got {other:?}"),
        }
    });
    drop((db, blank));
    rt.block_on(async {
        let admin = std::env::var(keyledger_store::postgres::TEST_URL_ENV)
            .unwrap_or_else(|e| panic!("admin url: {e}"));
        let (c, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("admin connect: {e}"));
        tokio::spawn(connection);
        exec(&c, &format!("DROP ROLE IF EXISTS {role}")).await;
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------
// A real restart of the server, in the middle of appends.

/// A PostgreSQL cluster of this test's own (scripts/postgres), stopped and
/// deleted on drop.
struct OwnCluster {
    url: String,
    dir: String,
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let out = std::process::Command::new(script())
            .arg("start")
            .env_remove("KEYLEDGER_TEST_POSTGRES_DIR")
            .output()
            .unwrap_or_else(|e| panic!("running scripts/postgres start: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/postgres start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("scripts/postgres start printed no {name}: {stdout}"))
                .to_owned()
        };
        OwnCluster {
            url: value("KEYLEDGER_TEST_POSTGRES_URL"),
            dir: value("KEYLEDGER_TEST_POSTGRES_DIR"),
        }
    }

    fn restart(&self) {
        let out = std::process::Command::new(script())
            .args(["restart", &self.dir])
            .output()
            .unwrap_or_else(|e| panic!("running scripts/postgres restart: {e}"));
        assert!(
            out.status.success(),
            "scripts/postgres restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .args(["stop", &self.dir])
            .output();
    }
}

/// Appends run on while the server restarts (fast shutdown: sessions
/// ended, open transactions rolled back). Every failure is `Unavailable`,
/// never a panic or damage; every acknowledged record is in the log, where
/// and as it was acknowledged; the log stays contiguous and its chain
/// verifies; appends resume on the same `PgLog`.
#[test]
fn appends_survive_a_database_restart() {
    const APPENDS: usize = 300;
    let cluster = OwnCluster::start();
    let db = TestDatabase::create_on(&cluster.url).unwrap_or_else(|e| panic!("create: {e}"));
    let log = PgLog::connect_with(
        db.url(),
        keyledger_store::PgOptions {
            operation_timeout: Duration::from_secs(15),
            ..keyledger_store::PgOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("connect: {e}"));
    let t = tenant("t");
    let acked_before_restart = std::sync::atomic::AtomicUsize::new(0);
    let (acked, failures) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.len() < APPENDS {
                assert!(Instant::now() < deadline, "appends did not resume");
                // The version as the log has it now (an append reported as
                // failed may have been written after all).
                let version = match log.tenant_head(&t) {
                    Ok(h) => h.map_or(0, |h| h.0),
                    Err(StoreError::Unavailable(m)) => {
                        failures.push(m);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => panic!("tenant_head during a restart: {e}"),
                };
                n += 1;
                match log.append(vec![batch(&t, version, sample_events(&t, n, 1))]) {
                    Ok(records) => {
                        acked.extend(records);
                        acked_before_restart
                            .store(acked.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(StoreError::Unavailable(m)) => failures.push(m),
                    Err(e) => {
                        panic!("an append during a restart failed other than Unavailable: {e}")
                    }
                }
            }
            (acked, failures)
        });
        wait_until("some appends are acknowledged", || {
            acked_before_restart.load(std::sync::atomic::Ordering::Relaxed) >= 50
        });
        cluster.restart();
        writer
            .join()
            .unwrap_or_else(|_| panic!("the writer panicked"))
    });
    let stored = log
        .read_after(0, 10 * APPENDS)
        .unwrap_or_else(|e| panic!("read_after: {e}"));
    for r in &acked {
        let at = stored
            .get(
                usize::try_from(r.position)
                    .unwrap_or(usize::MAX)
                    .wrapping_sub(1),
            )
            .unwrap_or_else(|| panic!("acknowledged position {} is missing", r.position));
        assert_eq!(at, r, "the acknowledged record is stored as acknowledged");
    }
    assert!(
        stored.len() >= acked.len(),
        "{} stored, {} acknowledged",
        stored.len(),
        acked.len()
    );
    let report =
        keyledger_store::chain::verify_tenant(&log, &t).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.ok, "{report:?}");
    assert!(
        !failures.is_empty(),
        "no call failed: the restart did not happen in the middle of the traffic"
    );
    eprintln!(
        "restart: {} acknowledged, {} stored, {} calls failed as Unavailable",
        acked.len(),
        stored.len(),
        failures.len()
    );
    for m in failures.iter().take(3) {
        eprintln!("restart: a call failed: {m}");
    }
}

// ---------------------------------------------------------------------------
// The analysts' projections (migrations/0003_projections.sql).

/// Events that make sense together: keys 0–3 created, key 0 used twice on
/// one day and once the next, key 1 revoked, key 2 rotated to key 100.
fn projection_story(t: &keyledger_core::TenantId) -> Vec<keyledger_core::Event> {
    use keyledger_core::{
        Actor, Event, EventKind, KeyRevoked, KeyRotated, KeyUsed, RevokeReason, UseCounts,
    };
    use keyledger_store::conformance::{at, key_created, key_id};
    let mut events: Vec<Event> = (0..4).map(|n| key_created(t, n)).collect();
    let used = |start: u64, counts: [u64; 6]| Event {
        tenant: t.clone(),
        at: at(start + 1),
        actor: Actor::System,
        kind: EventKind::KeyUsed(KeyUsed {
            key_id: key_id(0),
            window_start: at(start),
            window_end: at(start + 1),
            last_valid_at: (counts[0] > 0).then(|| at(start)),
            counts: UseCounts::from_array(counts),
        }),
    };
    events.push(used(10, [5, 0, 0, 1, 0, 0]));
    events.push(used(20, [2, 1, 0, 0, 0, 0]));
    events.push(used(86_400 + 30, [7, 0, 0, 0, 0, 0]));
    let mut revoke = key_created(t, 1);
    revoke.at = at(86_400 + 40);
    revoke.actor = Actor::Operator;
    revoke.kind = EventKind::KeyRevoked(KeyRevoked {
        key_id: key_id(1),
        reason: RevokeReason::Manual,
        cause: None,
    });
    events.push(revoke);
    let mut rotate = key_created(t, 2);
    rotate.at = at(86_400 + 50);
    rotate.kind = EventKind::KeyRotated(KeyRotated {
        key_id: key_id(2),
        new_key_id: key_id(100),
        expires_at: at(86_400 + 50 + 3600),
    });
    events.push(rotate);
    let mut successor = key_created(t, 100);
    successor.at = at(86_400 + 50);
    if let EventKind::KeyCreated(c) = &mut successor.kind {
        c.rotated_from = Some(key_id(2));
    }
    events.push(successor);
    events.extend(policy_story(t));
    events
}

/// Key 3 (created fourth: sequence number 4) gets a policy by a change,
/// then a node reserves 30 credits, spends 12 of them, hands 18 back,
/// and is refused twice by a limit.
fn policy_story(t: &keyledger_core::TenantId) -> Vec<keyledger_core::Event> {
    use keyledger_core::event::{CreditsReleased, CreditsReserved, KeyChange, KeyUpdated};
    use keyledger_core::policy::{Credits, Meta, RateLimit, Refill, RefillInterval};
    use keyledger_core::{Actor, Event, EventKind, KeyUsed, UseCounts};
    use keyledger_store::conformance::{at, key_created, key_id};
    let event = |n: u64, actor: Actor, kind: EventKind| Event {
        tenant: t.clone(),
        at: at(2 * 86_400 + n),
        actor,
        kind,
    };
    let name = match &key_created(t, 3).kind {
        EventKind::KeyCreated(c) => c.name.clone(),
        _ => unreachable!("key_created makes a KeyCreated"),
    };
    let credits = Credits {
        remaining: 100,
        refill: Some(Refill {
            amount: 50,
            interval: RefillInterval::Monthly,
            day: Some(15),
        }),
    };
    vec![
        event(
            1,
            Actor::Operator,
            EventKind::KeyUpdated(KeyUpdated {
                key_id: key_id(3),
                changes: vec![
                    KeyChange::Name {
                        before: name,
                        after: "metered".into(),
                    },
                    KeyChange::Meta {
                        before: None,
                        after: Some(Meta::new(r#"{"plan":"pro"}"#.into()).unwrap()),
                    },
                    KeyChange::Credits {
                        before: None,
                        after: Some(credits),
                    },
                    KeyChange::Limits {
                        before: Vec::new(),
                        after: vec![RateLimit {
                            name: "burst".into(),
                            limit: 10,
                            duration_ms: 1000,
                        }],
                    },
                ],
            }),
        ),
        // The change is the tenant's 11th event: it starts epoch 11.
        event(
            2,
            Actor::System,
            EventKind::CreditsReserved(CreditsReserved {
                key_id: key_id(3),
                epoch: 11,
                amount: 30,
            }),
        ),
        event(
            3,
            Actor::System,
            EventKind::KeyUsed(KeyUsed {
                key_id: key_id(3),
                window_start: at(2 * 86_400 + 2),
                window_end: at(2 * 86_400 + 3),
                last_valid_at: Some(at(2 * 86_400 + 2)),
                counts: UseCounts {
                    credits_spent: 12,
                    ..UseCounts::from_array([12, 0, 0, 0, 0, 2])
                },
            }),
        ),
        event(
            4,
            Actor::System,
            EventKind::CreditsReleased(CreditsReleased {
                key_id: key_id(3),
                epoch: 11,
                amount: 18,
            }),
        ),
        // A release from an epoch that is not the key's: lapsed.
        event(
            5,
            Actor::System,
            EventKind::CreditsReleased(CreditsReleased {
                key_id: key_id(3),
                epoch: 4,
                amount: 5,
            }),
        ),
    ]
}

#[test]
fn postgres_projections_follow_the_log_exactly() {
    use keyledger_store::conformance::key_id;
    let db = TestDatabase::create();
    let log = connect(&db);
    let t = tenant("acme");
    let story = projection_story(&t);
    let n = story.len() as u64;
    log.append(vec![batch(&t, 0, story)])
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        log.projected_position().ok(),
        Some(0),
        "nothing projected yet"
    );
    assert_eq!(log.project_all().ok(), Some(n));
    assert_eq!(
        log.project_all().ok(),
        Some(n),
        "a second pass changes nothing"
    );

    let rt = runtime();
    rt.block_on(async {
        let c = raw(&db).await;
        let usage = c
            .query(
                "SELECT key_id, day::text, valid, revoked, insufficient_scope, total \
                 FROM keyledger_read.usage_daily WHERE key_id = $1 ORDER BY day",
                &[&key_id(0).to_string()],
            )
            .await
            .unwrap_or_else(|e| panic!("usage view: {e}"));
        let rows: Vec<(String, String, i64, i64, i64, i64)> = usage
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        let k0 = key_id(0).to_string();
        assert_eq!(
            rows,
            [
                (k0.clone(), "2026-01-01".into(), 7, 1, 1, 9),
                (k0.clone(), "2026-01-02".into(), 7, 0, 0, 7),
            ]
        );
        let keys = c
            .query(
                "SELECT key_id, status, rotated_to, rotated_from, revoke_reason, revoked_by, \
                 last_used_at IS NOT NULL FROM keyledger_read.keys ORDER BY key_id",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("keys view: {e}"));
        assert_eq!(keys.len(), 5, "four keys and a successor");
        let row = |id: u64| {
            let id = key_id(id).to_string();
            keys.iter()
                .find(|r| r.get::<_, String>(0) == id)
                .unwrap_or_else(|| panic!("no row for {id}"))
        };
        assert_eq!(row(1).get::<_, String>(1), "revoked");
        assert_eq!(
            row(1).get::<_, Option<String>>(4).as_deref(),
            Some("manual")
        );
        assert_eq!(
            row(1).get::<_, Option<String>>(5).as_deref(),
            Some("Operator")
        );
        assert_eq!(
            row(2).get::<_, Option<String>>(2),
            Some(key_id(100).to_string())
        );
        assert_eq!(
            row(100).get::<_, Option<String>>(3),
            Some(key_id(2).to_string())
        );
        assert!(row(0).get::<_, bool>(6), "key 0 was used");
        assert!(!row(1).get::<_, bool>(6), "key 1 never was");
        let metered = c
            .query_one(
                "SELECT k.name, k.meta->>'plan', k.credits_remaining, k.refill_amount, \
                 k.refill_interval, k.refill_day, k.limits->0->>'name', \
                 u.credits_spent, u.rate_limited, u.total \
                 FROM keyledger_read.keys k JOIN keyledger_read.usage_daily u USING (key_id) \
                 WHERE key_id = $1",
                &[&key_id(3).to_string()],
            )
            .await
            .unwrap_or_else(|e| panic!("key 3: {e}"));
        assert_eq!(metered.get::<_, String>(0), "metered");
        assert_eq!(metered.get::<_, Option<String>>(1).as_deref(), Some("pro"));
        assert_eq!(
            metered.get::<_, Option<i64>>(2),
            Some(88),
            "100, less 30 reserved, plus 18 released; the lapsed release adds nothing"
        );
        assert_eq!(metered.get::<_, Option<i64>>(3), Some(50));
        assert_eq!(
            metered.get::<_, Option<String>>(4).as_deref(),
            Some("monthly")
        );
        assert_eq!(metered.get::<_, Option<i16>>(5), Some(15));
        assert_eq!(
            metered.get::<_, Option<String>>(6).as_deref(),
            Some("burst")
        );
        assert_eq!(
            (
                metered.get::<_, i64>(7),
                metered.get::<_, i64>(8),
                metered.get::<_, i64>(9)
            ),
            (12, 2, 14)
        );
        let fresh = c
            .query_one(
                "SELECT projected_position, log_head FROM keyledger_read.freshness",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("freshness view: {e}"));
        assert_eq!(
            (fresh.get::<_, i64>(0), fresh.get::<_, i64>(1)),
            (n as i64, n as i64)
        );
    });
}

/// Two nodes project while a third appends usage: every window is counted
/// exactly once (the rows and the position move in one transaction, under
/// a lock nobody waits for).
#[test]
fn postgres_projections_count_each_event_once_with_two_nodes() {
    use keyledger_core::{Actor, Event, EventKind, KeyUsed, UseCounts};
    use keyledger_store::conformance::{at, key_created, key_id};
    let db = TestDatabase::create();
    let writer = connect(&db);
    let t = tenant("acme");
    writer
        .append(vec![batch(&t, 0, vec![key_created(&t, 0)])])
        .unwrap_or_else(|e| panic!("append: {e}"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (a, b) = (connect(&db), connect(&db));
    let mut total = 0i64;
    std::thread::scope(|s| {
        for node in [&a, &b] {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    node.project_step(7).unwrap_or_else(|e| panic!("step: {e}"));
                }
            });
        }
        let mut version = 1;
        for round in 0..60u64 {
            let events: Vec<Event> = (0..5u64)
                .map(|i| {
                    let n = round * 5 + i;
                    Event {
                        tenant: t.clone(),
                        at: at(10 + n),
                        actor: Actor::System,
                        kind: EventKind::KeyUsed(KeyUsed {
                            key_id: key_id(0),
                            window_start: at(10 + n),
                            window_end: at(11 + n),
                            last_valid_at: Some(at(10 + n)),
                            counts: UseCounts::from_array([n + 1, 0, 0, 0, 0, 0]),
                        }),
                    }
                })
                .collect();
            total += events
                .iter()
                .map(|e| match &e.kind {
                    EventKind::KeyUsed(u) => u.counts.valid as i64,
                    _ => 0,
                })
                .sum::<i64>();
            writer
                .append(vec![batch(&t, version, events)])
                .unwrap_or_else(|e| panic!("append: {e}"));
            version += 5;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(a.project_all().ok(), Some(301));
    let rt = runtime();
    rt.block_on(async {
        let c = raw(&db).await;
        let sum: i64 = c
            .query_one(
                "SELECT sum(valid)::bigint FROM keyledger_read.usage_daily",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("usage sum: {e}"))
            .get(0);
        assert_eq!(sum, total, "every window once, none twice");
    });
}

#[test]
fn postgres_projections_ahead_of_the_log_are_rebuilt() {
    let db = TestDatabase::create();
    let log = connect(&db);
    let t = tenant("acme");
    log.append(vec![batch(&t, 0, projection_story(&t))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert!(log.project_all().is_ok_and(|p| p > 0));
    // The log emptied behind the projections' back (a restore of the
    // events alone), then two new events.
    let rt = runtime();
    rt.block_on(async {
        let c = raw(&db).await;
        exec(&c, "TRUNCATE keyledger.events, keyledger.tenant_heads").await;
    });
    let log = connect(&db);
    log.append(vec![batch(&t, 0, sample_events(&t, 0, 1))])
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(log.project_all().ok(), Some(1));
    rt.block_on(async {
        let c = raw(&db).await;
        let keys: i64 = c
            .query_one("SELECT count(*) FROM keyledger_read.keys", &[])
            .await
            .unwrap_or_else(|e| panic!("count: {e}"))
            .get(0);
        assert_eq!(keys, 1, "only what the log now holds");
    });
}
