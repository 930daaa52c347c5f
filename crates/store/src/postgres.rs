//! The shared backend: one PostgreSQL database that several keyledger nodes
//! append to and tail.
//!
//! # Layout
//!
//! The schema `keyledger` holds the same three structures as the redb file
//! (see `crates/store/migrations/*.sql`): `events` (one row per record,
//! keyed by position, unique by `(tenant, seq)`), `tenant_heads` (each
//! tenant's last sequence number and hash) and `nodes` (what each node has
//! applied, for revocations that wait for every node). The migrations are
//! applied when a [`PgLog`] connects, under an advisory lock, and recorded
//! with their checksums in `keyledger.schema_migrations`.
//!
//! # Appends are serialized
//!
//! Every append takes one transaction-level advisory lock first
//! ([`APPEND_LOCK`]), then, in a *later* statement (so its snapshot is taken
//! after the lock is held), reads the last position and the tenant heads,
//! computes the chain exactly as the redb backend does, inserts, and
//! commits. The lock is released only after the commit is visible, so
//! positions are assigned and become visible in the same order: a reader
//! always sees a prefix `1..=head` of the log, and tailing with the last
//! position seen cannot skip a record that commits late. Positions stay
//! contiguous (no sequence, so no gap after a rollback). Why this and not an
//! `xid8` snapshot horizon: `docs/adr/0004-postgres-serialized-appends.md`.
//!
//! # Threads and runtimes
//!
//! [`EventLog`] is synchronous; the driver (tokio-postgres) is not. A
//! `PgLog` owns a small tokio runtime of its own: every call is spawned onto
//! it and the caller waits on a plain channel. So a `PgLog` may be called
//! from any thread, an async task's included, without "a runtime within a
//! runtime", and dropping it never blocks.
//!
//! # TLS
//!
//! Connections are plaintext (`sslmode=prefer` falls back to it; a
//! connection string asking for `sslmode=require` is refused with a clear
//! error rather than retried): run nodes and the database on loopback or a
//! private network, or put a TLS tunnel in between.
//!
//! # Connection loss
//!
//! A lost connection (PostgreSQL restarting, the network failing) makes the
//! call fail with [`StoreError::Unavailable`], never a panic; the broken
//! connection is dropped and the next call connects again. A read that
//! fails on a pooled connection that turns out to be dead is retried once
//! on a fresh one. An append whose `COMMIT` got no answer is resolved before
//! returning when possible: the backend reconnects, takes the append lock
//! (which waits until the failed transaction has ended on the server) and
//! looks for the last record it planned, with the hash it computed. Found:
//! the append succeeded. Absent: nothing was written. Unreachable: the
//! error says the outcome is unknown, and reading the log back later tells.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Row, Statement};

use keyledger_core::TenantId;

use crate::chain::{GENESIS, Hash};
use crate::{
    EventLog, RawRecord, Record, StoreError, TenantAppend, check_append, check_tenant_page,
    decode_page, decode_record, plan,
};

/// The advisory lock class of keyledger's locks: "keyl" in ASCII.
pub const LOCK_CLASS: i32 = 0x6b65_796c;
/// The transaction-level advisory lock `(LOCK_CLASS, 1)` every append
/// holds from its first statement to its commit.
pub const APPEND_LOCK: (i32, i32) = (LOCK_CLASS, 1);
/// The session-level advisory lock `(LOCK_CLASS, 2)` held while migrating.
pub const MIGRATE_LOCK: (i32, i32) = (LOCK_CLASS, 2);
/// The channel every append notifies on commit, with the new head position
/// as payload.
pub const NOTIFY_CHANNEL: &str = "keyledger_log";

/// The schema migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../migrations/0001_event_log.sql"),
    ),
    (2, "nodes", include_str!("../migrations/0002_nodes.sql")),
];

const _: () = assert!(!MIGRATIONS.is_empty());

/// Connections a [`PgLog`] opens at most, besides its listener, unless
/// [`PgOptions::pool_connections_max`] says otherwise.
pub const POOL_CONNECTIONS_MAX_DEFAULT: usize = 8;

/// How a [`PgLog`] connects and how long it waits.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections in the pool at most (the listener's is extra).
    pub pool_connections_max: usize,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Longest one call may take, connecting included; past it the call
    /// fails with [`StoreError::Unavailable`]. Also the server-side
    /// `statement_timeout`.
    pub operation_timeout: Duration,
    /// Longest an append waits for another node's append to commit
    /// (PostgreSQL's `lock_timeout` on the append lock).
    pub append_lock_timeout: Duration,
    /// The server ends a session of this log that stays idle inside a
    /// transaction longer than this (`idle_in_transaction_session_timeout`),
    /// so a node that hangs mid-append cannot hold the append lock forever.
    pub idle_in_transaction_timeout: Duration,
    /// Longest [`PgLog::connect`] waits for the schema migrations, its own
    /// or another node's (which it waits for), to be applied. Migrations
    /// run without a statement timeout.
    pub migration_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_connections_max: POOL_CONNECTIONS_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            append_lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(10),
            migration_timeout: Duration::from_secs(3600),
        }
    }
}

/// An [`EventLog`] in a PostgreSQL database, shared by every node that
/// connects to it. See the [module docs](self).
pub struct PgLog {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    /// `Some` until dropped (then shut down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may hold a password.
        f.debug_struct("PgLog")
            .field("hosts", &self.shared.config.get_hosts().len())
            .field("dbname", &self.shared.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl Drop for PgLog {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Closes every connection (their tasks are dropped) and never
            // blocks, so a PgLog may be dropped inside an async context.
            rt.shutdown_background();
        }
    }
}

/// What the runtime's tasks share with the log.
struct Shared {
    config: Config,
    options: PgOptions,
    pool: Pool,
    wake: Wake,
}

impl PgLog {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// `key=value` connection string), applies the migrations it lacks and
    /// starts listening for other nodes' appends.
    pub fn connect(url: &str) -> Result<PgLog, StoreError> {
        Self::connect_with(url, PgOptions::default())
    }

    /// [`PgLog::connect`] with explicit options.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<PgLog, StoreError> {
        let mut config = Config::from_str(url).map_err(|e| {
            // The parser's message names the bad part, never the password.
            StoreError::Backend(format!(
                "the PostgreSQL connection string is not valid: {e}"
            ))
        })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::Backend(
                "sslmode=require: this build of keyledger connects to PostgreSQL without TLS; \
                 use it on loopback or a private network (sslmode=disable or prefer), or \
                 through a TLS tunnel"
                    .into(),
            ));
        }
        if config.get_application_name().is_none() {
            config.application_name("keyledger");
        }
        config.connect_timeout(options.connect_timeout);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keyledger-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the PostgreSQL client: {e}")))?;
        let handle = runtime.handle().clone();
        let pool_max = options.pool_connections_max.max(1);
        let shared = Arc::new(Shared {
            config,
            options,
            pool: Pool::new(pool_max),
            wake: Wake::default(),
        });
        let log = PgLog {
            shared,
            handle,
            runtime: Some(runtime),
        };
        let migration_timeout = log.shared.options.migration_timeout;
        log.run_within(
            migration_timeout,
            "applying the schema migrations",
            "",
            migrate,
        )?;
        let shared = log.shared.clone();
        log.handle.spawn(listen_forever(shared));
        Ok(log)
    }

    /// Runs `f` on the log's runtime and waits for it, bounded by the
    /// operation timeout.
    fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.run_noting(what, "", f)
    }

    /// [`PgLog::run`], adding `on_timeout` to the error when the operation
    /// timeout cuts the call short.
    fn run_noting<T, F, Fut>(
        &self,
        what: &'static str,
        on_timeout: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.run_within(self.shared.options.operation_timeout, what, on_timeout, f)
    }

    /// [`PgLog::run_noting`] bounded by `timeout`.
    fn run_within<T, F, Fut>(
        &self,
        timeout: Duration,
        what: &'static str,
        on_timeout: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            // Dropping the call's future drops its connection, so the
            // server ends whatever transaction it left open.
            let out = match tokio::time::timeout(timeout, f(shared)).await {
                Ok(out) => out,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{what}: no answer from PostgreSQL within {} ms{on_timeout}",
                    timeout.as_millis()
                ))),
            };
            let _ = tx.send(out);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Backend(format!(
                "{what}: the PostgreSQL client task ended without an answer"
            )))
        })
    }

    /// Whether the listener is connected and listening (other nodes'
    /// appends then wake [`EventLog::wait_for_append`] at once).
    pub fn listening(&self) -> bool {
        self.shared.wake.listening()
    }

    /// The schema versions recorded as applied, in order.
    pub fn schema_versions(&self) -> Result<Vec<i32>, StoreError> {
        let rows = self.run("reading the schema version", |s| async move {
            query(
                &s,
                "reading the schema version",
                "SELECT version FROM keyledger.schema_migrations ORDER BY version",
                Vec::new(),
            )
            .await
        })?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect())
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// Whether `e` means the connection (or the server) is gone, rather than a
/// statement being refused.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return code.code().starts_with("08")
            || code.code().starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS;
    }
    // No server error. The socket failed (or connecting timed out), or
    // the conversation with the server broke down: the connection is
    // unusable. Anything else (a parameter or a column that does not
    // convert, a row count) is a fault of this code, not of the connection.
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    let text = e.to_string();
    io || [
        "timeout waiting for server",
        "unexpected message from server",
        "error parsing response from server",
        "error communicating with the server",
    ]
    .iter()
    .any(|m| text.starts_with(m))
}

/// Maps a driver error: a lost connection is [`StoreError::Unavailable`],
/// anything else [`StoreError::Backend`].
fn classify(what: &str, e: &tokio_postgres::Error) -> StoreError {
    let message = describe(what, e);
    if is_connection_error(e) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Backend(message)
    }
}

fn describe(what: &str, e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{what}: PostgreSQL says {} ({})",
            db.message(),
            db.code().code()
        ),
        None => format!("{what}: {e}"),
    }
}

fn corrupt(position: u64, message: String) -> StoreError {
    StoreError::Corrupt { position, message }
}

// ---------------------------------------------------------------------------
// The connection pool.

/// Prepared statements of one connection, by SQL text.
type StatementCache = HashMap<&'static str, Statement>;

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    statements: StatementCache,
}

impl Conn {
    async fn statement(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        prepare(&self.client, &mut self.statements, sql).await
    }
}

async fn prepare(
    client: &Client,
    cache: &mut StatementCache,
    sql: &'static str,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql).await?;
    cache.insert(sql, s.clone());
    Ok(s)
}

/// Idle connections, and a bound on how many exist.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A connection taken from the pool. It goes back only through
/// [`Pooled::release`], after a call that left it clean (outside any
/// transaction); dropped otherwise (a failure, a timeout mid-transaction).
struct Pooled {
    conn: Option<Conn>,
    /// Whether it came from the idle list (so it may have died meanwhile).
    reused: bool,
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pool {
    fn new(max: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }
}

impl Pooled {
    fn conn(&mut self) -> &mut Conn {
        match self.conn.as_mut() {
            Some(c) => c,
            // `conn` is taken only by `release`, which consumes `self`.
            None => unreachable!("a Pooled holds its connection until released"),
        }
    }

    fn client(&self) -> &Client {
        match self.conn.as_ref() {
            Some(c) => &c.client,
            None => unreachable!("a Pooled holds its connection until released"),
        }
    }

    /// Puts the connection back for the next call.
    fn release(mut self) {
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
        {
            self.shared
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(c);
        }
    }
}

/// A connection: an idle one when there is one still open, else a new one.
async fn get(shared: &Arc<Shared>) -> Result<Pooled, StoreError> {
    let permit = shared
        .pool
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| StoreError::Backend("the connection pool is closed".into()))?;
    loop {
        let idle = shared
            .pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) if c.client.is_closed() => continue,
            Some(c) => {
                return Ok(Pooled {
                    conn: Some(c),
                    reused: true,
                    shared: shared.clone(),
                    _permit: permit,
                });
            }
            None => break,
        }
    }
    let client = connect(shared).await?;
    Ok(Pooled {
        conn: Some(Conn {
            client,
            statements: HashMap::new(),
        }),
        reused: false,
        shared: shared.clone(),
        _permit: permit,
    })
}

/// A new session, with the log's timeouts set.
async fn connect(shared: &Shared) -> Result<Client, StoreError> {
    let (client, connection) = shared
        .config
        .connect(NoTls)
        .await
        .map_err(|e| classify("connecting to PostgreSQL", &e))?;
    tokio::spawn(async move {
        // Ends when the connection does; the client then reports closed.
        let _ = connection.await;
    });
    let o = &shared.options;
    let setup = format!(
        "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}; \
         SET lock_timeout = {}",
        o.operation_timeout.as_millis(),
        o.idle_in_transaction_timeout.as_millis(),
        o.append_lock_timeout.as_millis(),
    );
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| classify("setting up a PostgreSQL session", &e))?;
    Ok(client)
}

/// An owned query parameter, so queries can be moved onto the runtime.
type Param = Box<dyn ToSql + Sync + Send>;

/// Runs one read-only statement on a pooled connection. When a reused
/// connection turns out to be dead (the server restarted since it was
/// last used), the statement runs once more on a fresh one: nothing was
/// changed, so repeating it is safe.
async fn query(
    shared: &Arc<Shared>,
    what: &'static str,
    sql: &'static str,
    params: Vec<Param>,
) -> Result<Vec<Row>, StoreError> {
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut c = get(shared).await?;
        let reused = c.reused;
        let result = async {
            let statement = c.conn().statement(sql).await?;
            c.client().query(&statement, &params).await
        }
        .await;
        match result {
            Ok(rows) => {
                c.release();
                return Ok(rows);
            }
            Err(e) if attempt == 1 && reused && is_connection_error(&e) => {}
            Err(e) => {
                if !is_connection_error(&e) {
                    c.release();
                }
                return Err(classify(what, &e));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Migrations.

/// Applies the migrations the database lacks, under [`MIGRATE_LOCK`] so
/// nodes starting together apply each once. Refuses a database migrated by
/// a newer release, or whose applied migrations differ from these files.
async fn migrate(shared: Arc<Shared>) -> Result<(), StoreError> {
    let client = connect(&shared).await?;
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    // A migration may take long (an index on a big table), and so may
    // another node's that this one waits for: only migration_timeout
    // bounds them.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(fail("setting up the migration session"))?;
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&MIGRATE_LOCK.0, &MIGRATE_LOCK.1],
        )
        .await
        .map_err(fail("taking the migration lock"))?;
    // The lock is a session lock: it goes with the connection whatever
    // happens below. A database already migrated needs no CREATE
    // privilege: nodes may run as a role that can only read and write the
    // tables.
    let bookkept = client
        .query_one(
            "SELECT to_regclass('keyledger.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(fail("looking for the schema"))?
        .get::<_, bool>(0);
    if !bookkept {
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS keyledger; \
             CREATE TABLE IF NOT EXISTS keyledger.schema_migrations ( \
                 version integer PRIMARY KEY, \
                 name text NOT NULL, \
                 checksum bytea NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(fail("creating the schema"))?;
    }
    let applied: Vec<(i32, String, Vec<u8>)> = client
        .query(
            "SELECT version, name, checksum FROM keyledger.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(fail("reading the applied migrations"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some((v, name, _)) = applied.iter().find(|a| a.0 > known) {
        return Err(StoreError::Backend(format!(
            "the database's schema is at migration {v} ({name}), newer than this release \
             (which knows up to {known}): upgrade keyledger"
        )));
    }
    for &(version, name, sql) in MIGRATIONS {
        let checksum = Sha256::digest(sql.as_bytes()).to_vec();
        match applied.iter().find(|a| a.0 == version) {
            Some((_, _, stored)) if *stored == checksum => continue,
            Some((_, stored_name, _)) => {
                return Err(StoreError::Backend(format!(
                    "migration {version} ({stored_name}) was applied from a different file than \
                     this release's {name}: the schema may not be what this release expects"
                )));
            }
            None => {}
        }
        let script = format!(
            "BEGIN; {sql}\n; INSERT INTO keyledger.schema_migrations (version, name, checksum) \
             VALUES ({version}, '{name}', '\\x{}'); COMMIT",
            hex_lower(&checksum)
        );
        if let Err(e) = client.batch_execute(&script).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(classify("applying a schema migration", &e));
        }
    }
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&MIGRATE_LOCK.0, &MIGRATE_LOCK.1],
        )
        .await;
    Ok(())
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------------------
// Wake-ups.

/// The highest head any notification (or catch-up) announced, and the
/// threads waiting for it to pass theirs.
#[derive(Default)]
struct Wake {
    state: Mutex<WakeState>,
    changed: Condvar,
}

#[derive(Default)]
struct WakeState {
    head: u64,
    listening: bool,
}

impl Wake {
    fn lock(&self) -> std::sync::MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise(&self, head: u64) {
        let mut s = self.lock();
        if head > s.head {
            s.head = head;
            self.changed.notify_all();
        }
    }

    fn set_listening(&self, listening: bool) {
        self.lock().listening = listening;
    }

    fn listening(&self) -> bool {
        self.lock().listening
    }

    fn wait(&self, after: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.head <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Keeps a connection LISTENing on [`NOTIFY_CHANNEL`], reconnecting after
/// every failure (with a growing pause) for as long as the log lives.
async fn listen_forever(shared: Arc<Shared>) {
    const PAUSE_MIN: Duration = Duration::from_millis(50);
    const PAUSE_MAX: Duration = Duration::from_secs(2);
    let mut pause = PAUSE_MIN;
    loop {
        let started = Instant::now();
        let _ = listen_once(&shared).await;
        shared.wake.set_listening(false);
        if started.elapsed() > PAUSE_MAX {
            pause = PAUSE_MIN;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

async fn listen_once(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let (client, mut connection) = shared
        .config
        .connect(NoTls)
        .await
        .map_err(|e| classify("connecting the listener", &e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let listened = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Whatever was appended before the LISTEN took effect: announced by
        // reading the head once it has.
        client
            .query_one(
                "SELECT coalesce(max(position), 0) FROM keyledger.events",
                &[],
            )
            .await
    }
    .await;
    match listened {
        Ok(row) => {
            shared.wake.raise(to_u64(row.get::<_, i64>(0)));
            shared.wake.set_listening(true);
        }
        Err(e) => {
            driver.abort();
            return Err(classify("starting to listen", &e));
        }
    }
    while let Some(payload) = rx.recv().await {
        // Another process may notify on the channel too: a payload that
        // is not a position wakes nobody (tailing is by position anyway).
        if let Ok(head) = payload.parse::<u64>() {
            shared.wake.raise(head);
        }
    }
    drop(client);
    Ok(())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Appends.

const SQL_LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";
const SQL_HEAD: &str = "SELECT coalesce(max(position), 0) FROM keyledger.events";
const SQL_HEADS: &str = "SELECT h.tenant, h.seq, h.hash, e.position, e.seq, e.hash \
     FROM keyledger.tenant_heads h \
     LEFT JOIN keyledger.events e ON e.tenant = h.tenant AND e.seq = h.seq \
     WHERE h.tenant = ANY($1)";
const SQL_WRITE: &str = "WITH ev AS ( \
       INSERT INTO keyledger.events (position, tenant, seq, prev_hash, hash, payload) \
       SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::bytea[], \
                            $6::bytea[]) \
     ), hd AS ( \
       INSERT INTO keyledger.tenant_heads (tenant, seq, hash) \
       SELECT * FROM unnest($7::text[], $8::bigint[], $9::bytea[]) \
       ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash \
     ) \
     SELECT pg_notify($10, $11)";

fn hash_of(bytes: &[u8], position: u64, what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(position, format!("{what} is {} bytes, not 32", bytes.len())))
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::BadAppend(format!("{what} {v} is past 2^63")))
}

/// The heads of `tenants`, each checked against its last stored record
/// (the append side of "assert in pairs").
fn checked_heads(rows: &[Row]) -> Result<HashMap<String, (u64, Hash)>, StoreError> {
    let mut heads = HashMap::with_capacity(rows.len());
    for r in rows {
        let tenant: String = r.get(0);
        let seq = to_u64(r.get::<_, i64>(1));
        let hash = hash_of(r.get::<_, &[u8]>(2), 0, "a tenant head's hash")?;
        let refuse = |position: u64, why: &str| {
            corrupt(
                position,
                format!(
                    "tenant {tenant}: {why}; refusing to extend a damaged chain (run a chain \
                     verify)"
                ),
            )
        };
        let Some(position) = r.get::<_, Option<i64>>(3).map(to_u64) else {
            return Err(refuse(0, "the head's event is missing"));
        };
        let event_hash = r.get::<_, Option<&[u8]>>(5).unwrap_or_default();
        if r.get::<_, Option<i64>>(4).map(to_u64) != Some(seq) || event_hash != hash.as_slice() {
            return Err(refuse(position, "the head does not match its event"));
        }
        heads.insert(tenant, (seq, hash));
    }
    Ok(heads)
}

/// The append as [`PgLog`] makes it, inside a transaction the caller has
/// opened on `client` (and commits or rolls back afterwards): takes
/// [`APPEND_LOCK`], reads the last position and the tenant heads, checks
/// each batch's expected version, computes the chain, writes the records
/// and the heads, and queues the notification (sent at commit). On any
/// error the caller must roll back; nothing it wrote survives that.
///
/// Public so tests (and tools that append as part of a larger transaction)
/// can drive the exact protocol on connections of their own.
pub async fn append_in_transaction(
    client: &Client,
    batches: &[TenantAppend],
) -> Result<Vec<Record>, StoreError> {
    check_append(batches)?;
    let encoded = plan::Encoded::new(batches);
    let mut cache = StatementCache::new();
    let (write, args) = plan_append(client, &mut cache, batches, &encoded, false).await?;
    let refs = args.refs();
    client
        .query_one(&write, &refs.params())
        .await
        .map_err(|e| write_error(&e))?;
    let events = batches.iter().flat_map(|b| b.events.iter().cloned());
    Ok(plan::records(args.links, events))
}

/// An append planned under the lock ([`plan::plan`]): where every record
/// goes, and the write statement's arguments.
struct WriteArgs<'a> {
    links: Vec<plan::Link>,
    positions: Vec<i64>,
    tenants: Vec<&'a str>,
    seqs: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    head_tenants: Vec<&'a str>,
    head_seqs: Vec<i64>,
    head_hashes: Vec<Hash>,
    new_head: String,
}

/// The byte-array arguments of a [`WriteArgs`], borrowed as the driver
/// wants them.
struct PlanRefs<'p> {
    plan: &'p WriteArgs<'p>,
    prevs: Vec<&'p [u8]>,
    hashes: Vec<&'p [u8]>,
    payloads: Vec<&'p [u8]>,
    head_hashes: Vec<&'p [u8]>,
}

impl<'a> WriteArgs<'a> {
    fn refs(&self) -> PlanRefs<'_> {
        PlanRefs {
            plan: self,
            prevs: self.links.iter().map(|l| l.2.as_slice()).collect(),
            hashes: self.links.iter().map(|l| l.3.as_slice()).collect(),
            payloads: self.payloads.clone(),
            head_hashes: self.head_hashes.iter().map(|h| h.as_slice()).collect(),
        }
    }
}

impl PlanRefs<'_> {
    /// The parameters of [`SQL_WRITE`], in order.
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.plan.positions,
            &self.plan.tenants,
            &self.plan.seqs,
            &self.prevs,
            &self.hashes,
            &self.payloads,
            &self.plan.head_tenants,
            &self.plan.head_seqs,
            &self.head_hashes,
            &NOTIFY_CHANNEL,
            &self.plan.new_head,
        ]
    }
}

/// The write statement failed: the transaction is aborted, nothing of it
/// will be committed.
fn write_error(e: &tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        corrupt(
            0,
            format!(
                "{}: a record is already stored past a tenant's head; refusing to extend a \
                 damaged chain (run a chain verify)",
                describe("writing the records", e)
            ),
        )
    } else {
        classify("writing the records", e)
    }
}

/// Takes [`APPEND_LOCK`] and reads the last position and the tenant heads
/// (after `BEGIN` when `begin`), then checks the expected versions and
/// computes the chain. Returns the write statement and the plan.
///
/// `BEGIN`, the lock and the two reads go out together, in one round trip:
/// PostgreSQL still runs them one after the other, and in READ COMMITTED
/// each read takes its snapshot when it starts, so after the lock is
/// granted, seeing every append that committed before. (One statement that
/// took the lock and read `max(position)` would not: its snapshot would
/// predate the wait.)
async fn plan_append<'a>(
    client: &Client,
    cache: &mut StatementCache,
    batches: &'a [TenantAppend],
    encoded: &'a plan::Encoded,
    begin: bool,
) -> Result<(Statement, WriteArgs<'a>), StoreError> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
    let mut statements = Vec::with_capacity(4);
    for sql in [SQL_LOCK, SQL_HEAD, SQL_HEADS, SQL_WRITE] {
        statements.push(
            prepare(client, cache, sql)
                .await
                .map_err(fail("preparing the append"))?,
        );
    }
    let [lock, head_stmt, heads_stmt, write_stmt]: [Statement; 4] = statements
        .try_into()
        .unwrap_or_else(|_| unreachable!("four statements were prepared"));
    let mut names: Vec<&str> = batches.iter().map(|b| b.tenant.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let lock_params: [&(dyn ToSql + Sync); 2] = [&APPEND_LOCK.0, &APPEND_LOCK.1];
    let heads_params: [&(dyn ToSql + Sync); 1] = [&names];
    let (begun, locked, head, heads) = tokio::join!(
        async {
            match begin {
                true => client.batch_execute("BEGIN").await,
                false => Ok(()),
            }
        },
        client.execute(&lock, &lock_params),
        client.query_one(&head_stmt, &[]),
        client.query(&heads_stmt, &heads_params),
    );
    begun.map_err(fail("starting an append"))?;
    locked.map_err(|e| {
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            StoreError::Unavailable(describe("waiting for another node's append to commit", &e))
        } else {
            classify("taking the append lock", &e)
        }
    })?;
    let position = to_u64(head.map_err(fail("reading the last position"))?.get(0));
    let stored_heads = checked_heads(&heads.map_err(fail("reading the tenant heads"))?)?;

    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    let mut args = WriteArgs {
        links: Vec::new(),
        positions: Vec::with_capacity(total),
        tenants: Vec::with_capacity(total),
        seqs: Vec::with_capacity(total),
        payloads: Vec::with_capacity(total),
        head_tenants: Vec::with_capacity(batches.len()),
        head_seqs: Vec::with_capacity(batches.len()),
        head_hashes: Vec::with_capacity(batches.len()),
        new_head: String::new(),
    };
    let mut sink = Stage {
        stored_heads: &stored_heads,
        args: &mut args,
    };
    let planned = plan::plan(batches, encoded, position, &mut sink)?;
    args.new_head = planned.last_position().unwrap_or(position).to_string();
    for (tenant, seq, hash) in planned.heads {
        args.head_tenants.push(tenant);
        args.head_seqs.push(to_i64(seq, "sequence number")?);
        args.head_hashes.push(hash);
    }
    args.links = planned.links;
    Ok((write_stmt, args))
}

/// An append's rows, checked and staged as the write statement's
/// arguments.
struct Stage<'h, 'w, 'a> {
    stored_heads: &'h HashMap<String, (u64, Hash)>,
    args: &'w mut WriteArgs<'a>,
}

impl<'a> plan::AppendSink<'a> for Stage<'_, '_, 'a> {
    fn head(&mut self, tenant: &str) -> Result<(u64, Hash), StoreError> {
        Ok(self
            .stored_heads
            .get(tenant)
            .copied()
            .unwrap_or((0, GENESIS)))
    }

    fn record(&mut self, r: &plan::NewRecord<'a>) -> Result<(), StoreError> {
        self.args.positions.push(to_i64(r.position, "position")?);
        self.args.tenants.push(r.tenant);
        self.args.seqs.push(to_i64(r.seq, "sequence number")?);
        self.args.payloads.push(r.payload);
        Ok(())
    }
}

/// What became of an append whose `COMMIT` got no answer.
async fn resolve_commit(
    shared: &Arc<Shared>,
    failure: String,
    last: (u64, Hash),
) -> Result<(), StoreError> {
    let looked = async {
        let client = connect(shared).await?;
        let fail = |what: &'static str| move |e: tokio_postgres::Error| classify(what, &e);
        // Waits until the failed transaction has ended on the server
        // (committed or not): until then it holds the append lock. A
        // session the server still thinks alive ends within
        // idle_in_transaction_session_timeout.
        let wait = shared.options.idle_in_transaction_timeout + Duration::from_secs(5);
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                wait.as_millis()
            ))
            .await
            .map_err(fail("looking for the append"))?;
        client
            .execute(SQL_LOCK, &[&APPEND_LOCK.0, &APPEND_LOCK.1])
            .await
            .map_err(fail("waiting for the failed append to end"))?;
        let row = client
            .query_opt(
                "SELECT hash FROM keyledger.events WHERE position = $1",
                &[&to_i64(last.0, "position")?],
            )
            .await
            .map_err(fail("looking for the append"))?;
        let _ = client.batch_execute("ROLLBACK").await;
        Ok::<_, StoreError>(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }
    .await;
    match looked {
        Ok(Some(hash)) if hash == last.1 => Ok(()),
        Ok(_) => Err(StoreError::Unavailable(format!(
            "{failure}; the append was not committed (nothing was written)"
        ))),
        Err(e) => Err(StoreError::Unavailable(format!(
            "{failure}; whether this append was committed is known only once the log can be \
             read again ({e})"
        ))),
    }
}

async fn append(
    shared: Arc<Shared>,
    batches: Vec<TenantAppend>,
) -> Result<Vec<Record>, StoreError> {
    let encoded = plan::Encoded::new(&batches);
    let mut attempt = 0;
    let (c, write, plan) = loop {
        attempt += 1;
        let mut c = get(&shared).await?;
        let reused = c.reused;
        let conn = c.conn();
        match plan_append(&conn.client, &mut conn.statements, &batches, &encoded, true).await {
            Ok((write, plan)) => break (c, write, plan),
            // A connection that died while idle in the pool: nothing was
            // committed, so a fresh connection may simply try again.
            Err(_) if attempt == 1 && reused && c.client().is_closed() => continue,
            Err(e) => {
                // Nothing was committed: roll back, and keep the connection
                // only when that works.
                if c.client().batch_execute("ROLLBACK").await.is_ok() {
                    c.release();
                }
                return Err(e);
            }
        }
    };
    // The write and the COMMIT go out together: the lock is held for one
    // round trip and the commit's flush.
    let refs = plan.refs();
    let params = refs.params();
    let (written, committed) = tokio::join!(
        c.client().query_one(&write, &params),
        c.client().batch_execute("COMMIT"),
    );
    match (written, committed) {
        (Ok(_), Ok(())) => c.release(),
        // The server refused the write: the transaction was aborted and
        // the COMMIT rolled it back.
        (Err(e), committed) if !is_connection_error(&e) => {
            if committed.is_ok() {
                c.release();
            }
            return Err(write_error(&e));
        }
        // The server refused the commit itself: rolled back.
        (Ok(_), Err(e)) if !is_connection_error(&e) => {
            return Err(classify("committing an append", &e));
        }
        // The connection failed with the COMMIT sent: the outcome is
        // unknown until looked up.
        (written, committed) => {
            drop(c);
            let failure = match (written, committed) {
                (Err(e), _) | (_, Err(e)) => describe("committing an append", &e),
                (Ok(_), Ok(())) => unreachable!("handled above"),
            };
            match plan.links.last() {
                Some(&(position, _, _, hash)) => {
                    resolve_commit(&shared, failure, (position, hash)).await?;
                }
                None => return Err(StoreError::Unavailable(failure)),
            }
        }
    }
    drop(refs);
    let WriteArgs { links, .. } = plan;
    if let Some(&(position, ..)) = links.last() {
        shared.wake.raise(position);
    }
    let events = batches.into_iter().flat_map(|b| b.events);
    Ok(plan::records(links, events))
}

// ---------------------------------------------------------------------------
// Node reports.

const SQL_REPORT: &str = "INSERT INTO keyledger.nodes (node, applied, seen_at) \
     VALUES ($1, $2, now()) \
     ON CONFLICT (node) DO UPDATE SET applied = excluded.applied, seen_at = now()";

/// Upserts a node's report in a transaction committed without waiting for
/// its WAL flush (`synchronous_commit = off`): a report lost in a crash of
/// the server only makes revocations wait for the node's next one, and
/// nodes report often, so they should not cost a disk flush each. BEGIN,
/// the upsert and COMMIT go out together (one round trip).
async fn report_applied(
    shared: Arc<Shared>,
    node: String,
    position: i64,
) -> Result<(), StoreError> {
    const WHAT: &str = "reporting the applied position";
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut c = get(&shared).await?;
        let reused = c.reused;
        let result = async {
            let upsert = c.conn().statement(SQL_REPORT).await?;
            let client = c.client();
            let params: [&(dyn ToSql + Sync); 2] = [&node, &position];
            let (begin, written, commit) = tokio::join!(
                client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
                client.execute(&upsert, &params),
                client.batch_execute("COMMIT"),
            );
            begin?;
            written?;
            commit
        }
        .await;
        match result {
            Ok(()) => {
                c.release();
                return Ok(());
            }
            Err(e) if attempt == 1 && reused && is_connection_error(&e) => {}
            Err(e) => return Err(classify(WHAT, &e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Reads.

const SQL_READ_AFTER: &str = "SELECT position, tenant, seq, prev_hash, hash, payload \
     FROM keyledger.events WHERE position > $1 ORDER BY position LIMIT $2";
const SQL_READ_TENANT: &str = "SELECT position, tenant, seq, prev_hash, hash, payload \
     FROM keyledger.events WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3";

fn raw_from_row(r: &Row) -> Result<RawRecord, StoreError> {
    let position = to_u64(r.get::<_, i64>(0));
    Ok(RawRecord {
        position,
        tenant: r.get(1),
        seq: to_u64(r.get::<_, i64>(2)),
        prev_hash: hash_of(
            r.get::<_, &[u8]>(3),
            position,
            "the stored predecessor hash",
        )?,
        hash: hash_of(r.get::<_, &[u8]>(4), position, "the stored hash")?,
        payload: r.get(5),
    })
}

/// `u64` bounds as PostgreSQL `bigint`s: `None` when nothing can lie past
/// `after`.
fn bounds(after: u64, limit: usize) -> Option<(i64, i64)> {
    if limit == 0 {
        return None;
    }
    let after = i64::try_from(after).ok()?;
    Some((after, i64::try_from(limit).unwrap_or(i64::MAX)))
}

impl PgLog {
    fn read_tenant_rows(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let Some((after, limit)) = bounds(after_seq, limit) else {
            return Ok(Vec::new());
        };
        let t = tenant.as_str().to_owned();
        self.run("reading a tenant's events", move |s| async move {
            query(
                &s,
                "reading a tenant's events",
                SQL_READ_TENANT,
                vec![Box::new(t), Box::new(after), Box::new(limit)],
            )
            .await
        })
    }
}

impl EventLog for PgLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        check_append(&batches)?;
        self.run_noting(
            "appending",
            "; whether the append was committed is known only once the log can be read again",
            move |s| append(s, batches),
        )
    }

    fn head(&self) -> Result<u64, StoreError> {
        let rows = self.run("reading the head", |s| async move {
            query(&s, "reading the head", SQL_HEAD, Vec::new()).await
        })?;
        Ok(rows.first().map_or(0, |r| to_u64(r.get::<_, i64>(0))))
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let Some((after_i, limit_i)) = bounds(after, limit) else {
            return Ok(Vec::new());
        };
        let rows = self.run("reading events", move |s| async move {
            query(
                &s,
                "reading events",
                SQL_READ_AFTER,
                vec![Box::new(after_i), Box::new(limit_i)],
            )
            .await
        })?;
        decode_page(after, rows.iter().map(raw_from_row), rows.len())
    }

    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = self.read_tenant_rows(tenant, after_seq, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = raw_from_row(row)?;
            if r.tenant != tenant.as_str() {
                return Err(corrupt(
                    r.position,
                    format!(
                        "tenant {tenant} event {}: the record belongs to tenant `{}`",
                        r.seq,
                        r.tenant.escape_debug()
                    ),
                ));
            }
            out.push(decode_record(
                r.position,
                r.seq,
                r.prev_hash,
                r.hash,
                tenant,
                &r.payload,
            )?);
        }
        check_tenant_page(tenant, after_seq, &out)?;
        Ok(out)
    }

    fn read_tenant_raw(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.read_tenant_rows(tenant, after_seq, limit)?
            .iter()
            .map(raw_from_row)
            .collect()
    }

    fn tenant_head(&self, tenant: &TenantId) -> Result<Option<(u64, Hash)>, StoreError> {
        let t = tenant.as_str().to_owned();
        let rows = self.run("reading a tenant head", move |s| async move {
            query(
                &s,
                "reading a tenant head",
                "SELECT seq, hash FROM keyledger.tenant_heads WHERE tenant = $1",
                vec![Box::new(t)],
            )
            .await
        })?;
        match rows.first() {
            None => Ok(None),
            Some(r) => Ok(Some((
                to_u64(r.get::<_, i64>(0)),
                hash_of(r.get::<_, &[u8]>(1), 0, "a tenant head's hash")?,
            ))),
        }
    }

    fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let rows = self.run("listing the tenants", |s| async move {
            query(
                &s,
                "listing the tenants",
                "SELECT tenant FROM keyledger.tenant_heads ORDER BY tenant",
                Vec::new(),
            )
            .await
        })?;
        rows.iter()
            .map(|r| {
                let t: &str = r.get(0);
                t.parse()
                    .map_err(|e| corrupt(0, format!("tenant head `{}`: {e}", t.escape_debug())))
            })
            .collect()
    }

    /// Returns as soon as a notification (or this handle's own append)
    /// announces a head past `after`, or when `timeout` passes. While the
    /// listener is reconnecting nothing wakes it early; the listener
    /// announces the head it finds once it is back.
    fn wait_for_append(&self, after: u64, timeout: Duration) -> Result<(), StoreError> {
        self.shared.wake.wait(after, timeout);
        Ok(())
    }

    fn report_applied(&self, node: &str, position: u64) -> Result<(), StoreError> {
        let node = node.to_owned();
        let position = i64::try_from(position)
            .map_err(|_| StoreError::Backend(format!("position {position} is past 2^63")))?;
        self.run("reporting the applied position", move |s| {
            report_applied(s, node, position)
        })
    }

    fn min_applied_live(&self, live_within: Duration) -> Result<Option<u64>, StoreError> {
        let micros = i64::try_from(live_within.as_micros()).unwrap_or(i64::MAX);
        let rows = self.run(
            "reading the nodes' applied positions",
            move |s| async move {
                query(
                    &s,
                    "reading the nodes' applied positions",
                    "SELECT min(applied) FROM keyledger.nodes \
                 WHERE seen_at >= now() - $1::bigint * interval '1 microsecond'",
                    vec![Box::new(micros)],
                )
                .await
            },
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(to_u64))
    }
}

// ---------------------------------------------------------------------------
// Test databases.

/// The environment variable naming the PostgreSQL server the tests use: a
/// connection URL of a role that may create and drop databases.
/// `scripts/test` sets it, starting a throwaway server with
/// `scripts/postgres` when it is not set.
pub const TEST_URL_ENV: &str = "KEYLEDGER_TEST_POSTGRES_URL";

/// A new, uniquely named database for one test on the server named by
/// [`TEST_URL_ENV`], dropped (with its connections) when this value is.
/// Tests can then run in parallel, and reconnecting to [`url`](Self::url)
/// is reopening the log.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a database on the server named by [`TEST_URL_ENV`].
    ///
    /// # Panics
    ///
    /// When the variable is not set or the database cannot be made: a test
    /// that needs PostgreSQL fails without one, it does not skip.
    pub fn create() -> TestDatabase {
        let admin_url = std::env::var(TEST_URL_ENV).unwrap_or_else(|_| {
            panic!(
                "{TEST_URL_ENV} is not set: this test needs a PostgreSQL server it may create \
                 databases on. Run the tests with scripts/test (it starts a throwaway server \
                 with scripts/postgres), or start one with `eval \"$(scripts/postgres start)\"` \
                 and run them again"
            )
        });
        Self::create_on(&admin_url).unwrap_or_else(|e| {
            panic!("creating a test database on the server named by {TEST_URL_ENV}: {e}")
        })
    }

    /// Creates a database on the server at `admin_url`.
    pub fn create_on(admin_url: &str) -> Result<TestDatabase, StoreError> {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
        let name = format!(
            "keyledger_test_{}_{nanos}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        admin(admin_url, format!("CREATE DATABASE {name}"))?;
        Ok(TestDatabase {
            admin_url: admin_url.to_owned(),
            url: with_dbname(admin_url, &name),
            name,
        })
    }

    /// The database's connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Empties the log kept in this database (every table of the
    /// `keyledger` schema, when it exists), so one database serves several
    /// fresh logs in turn: dropping a database costs PostgreSQL a
    /// checkpoint, emptying one does not. Close the logs using it first.
    pub fn reset(&self) -> Result<(), StoreError> {
        admin(
            &self.url,
            "DO $$ BEGIN \
               IF to_regclass('keyledger.events') IS NOT NULL THEN \
                 TRUNCATE keyledger.events, keyledger.tenant_heads; \
               END IF; \
               IF to_regclass('keyledger.nodes') IS NOT NULL THEN \
                 TRUNCATE keyledger.nodes; \
               END IF; \
             END $$"
                .to_owned(),
        )
    }

    /// Ends every session connected to this database, as a database
    /// restart would (for tests of connection loss). Returns how many.
    pub fn terminate_connections(&self) -> Result<u64, StoreError> {
        let name = self.name.clone();
        let config = parse_config(&self.admin_url)?;
        on_own_thread(async move {
            let client = admin_client(&config).await?;
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .map_err(|e| classify("ending the test database's sessions", &e))?;
            Ok(rows.len() as u64)
        })?
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = admin(
            &self.admin_url,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn parse_config(url: &str) -> Result<Config, StoreError> {
    Config::from_str(url).map_err(|e| {
        StoreError::Backend(format!(
            "the PostgreSQL connection string is not valid: {e}"
        ))
    })
}

async fn admin_client(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| classify("connecting to PostgreSQL", &e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs one statement on a connection of its own.
fn admin(url: &str, sql: String) -> Result<(), StoreError> {
    let config = parse_config(url)?;
    on_own_thread(async move {
        let client = admin_client(&config).await?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| classify("managing a test database", &e))
    })?
}

/// Runs `fut` to completion on a thread and runtime of its own, so it can
/// be called from anywhere, async contexts included.
fn on_own_thread<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
    })
    .join()
    .map_err(|_| StoreError::Backend("a PostgreSQL helper thread panicked".into()))?
    .map_err(|e| StoreError::Backend(format!("starting a PostgreSQL helper runtime: {e}")))
}

/// `url` with its database name replaced by `name` (a `postgres://` URL or
/// a `key=value` string).
fn with_dbname(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return format!("{url} dbname={name}");
    };
    let query_start = url[scheme_end..]
        .find('?')
        .map_or(url.len(), |i| scheme_end + i);
    let authority_end = url[scheme_end..query_start]
        .find('/')
        .map_or(query_start, |i| scheme_end + i);
    format!("{}/{name}{}", &url[..authority_end], &url[query_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_dbname_replaces_only_the_database() {
        assert_eq!(
            with_dbname("postgres://u@127.0.0.1:5432/postgres", "t1"),
            "postgres://u@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_dbname("postgresql://u:p@h:1/db?sslmode=disable", "t1"),
            "postgresql://u:p@h:1/t1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(with_dbname("postgres://h?x=1", "t1"), "postgres://h/t1?x=1");
        assert_eq!(
            with_dbname("host=h user=u dbname=x", "t1"),
            "host=h user=u dbname=x dbname=t1"
        );
    }

    #[test]
    fn tls_required_is_refused_up_front() {
        match PgLog::connect("postgres://u@127.0.0.1:1/db?sslmode=require") {
            Err(StoreError::Backend(m)) => assert!(m.contains("without TLS"), "{m}"),
            other => panic!("want a clear refusal, got {other:?}"),
        }
        match PgLog::connect("postgres://u@127.0.0.1:1/db?port=x") {
            Err(StoreError::Backend(m)) => assert!(m.contains("not valid"), "{m}"),
            other => panic!("want a clear refusal, got {other:?}"),
        }
    }

    #[test]
    fn bounds_clamp_to_bigint() {
        assert_eq!(bounds(0, 0), None);
        assert_eq!(bounds(u64::MAX, 10), None);
        assert_eq!(bounds(5, usize::MAX), Some((5, i64::MAX)));
    }
}
