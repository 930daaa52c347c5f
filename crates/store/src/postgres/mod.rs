//! The shared backend: one PostgreSQL database that several keyledger nodes
//! append to and tail.
//!
//! # Layout
//!
//! The schema `keyledger` holds the same three structures as the redb file
//! (see `crates/store/migrations/*.sql`): `events` (one row per record,
//! keyed by position, unique by `(tenant, seq)`), `tenant_heads` (each
//! tenant's last sequence number and hash) and `nodes` (what each node has
//! applied, for revocations that wait for every node). Besides them, the
//! analysts' projections (`keys`, `usage_daily`, `projections`, read through
//! the views of the schema `keyledger_read`: `projection.rs`). The migrations are
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

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::error::SqlState;

use keyledger_core::{KeyId, TenantId};

use crate::chain::Hash;
use crate::read::{PositionPage, TenantPage};
use crate::{
    ChainLink, EventLog, RawRecord, Record, SharedSnapshot, StoreError, TenantAppend, UsagePage,
    check_append,
};

mod append;
mod keys;
mod nodes;
mod notify;
mod pool;
mod projection;
mod read;
mod schema;
mod shared;
#[cfg(feature = "test-support")]
mod test_support;

pub use append::append_in_transaction;
pub use projection::{PROJECT_BATCH_MAX, PROJECT_LOCK, ProjectStep};
pub use schema::MIGRATIONS;
#[cfg(feature = "test-support")]
pub use test_support::{TEST_URL_ENV, TestDatabase};

use append::{SQL_HEAD, append};
use notify::{Wake, listen_forever};
use pool::{Pool, query};
use read::{SQL_READ_AFTER, bounds, raw_from_row};
use schema::migrate;

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
        log.run_within(
            migration_timeout,
            "filling the key index",
            "",
            keys::backfill,
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
        self.run_within(self.shared.options.operation_timeout, what, "", f)
    }

    /// [`PgLog::run`] bounded by `timeout`, adding `on_timeout` to the
    /// error when the timeout cuts the call short.
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

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn hash_of(bytes: &[u8], position: u64, what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(position, format!("{what} is {} bytes, not 32", bytes.len())))
}

impl EventLog for PgLog {
    fn append(&self, batches: Vec<TenantAppend>) -> Result<Vec<Record>, StoreError> {
        check_append(&batches)?;
        self.run_within(
            self.shared.options.operation_timeout,
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
        let mut page = PositionPage::new(after, rows.len());
        for row in &rows {
            let r = raw_from_row(row)?;
            page.push(r.position, r.as_ref())?;
        }
        Ok(page.finish())
    }

    fn read_tenant(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = self.read_tenant_rows(tenant, after_seq, limit)?;
        let mut page = TenantPage::new(tenant, after_seq, rows.len());
        for row in &rows {
            let r = raw_from_row(row)?;
            // No index: the row's own numbers are the entry's.
            page.push(r.seq, r.position, Some(r.as_ref()))?;
        }
        page.finish()
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

    fn read_key(
        &self,
        tenant: &TenantId,
        key: KeyId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.read_key_records(tenant, key, after_seq, limit)
    }

    fn read_keys_until(
        &self,
        tenant: &TenantId,
        keys: &[KeyId],
        until_seq: u64,
    ) -> Result<Vec<Record>, StoreError> {
        self.read_keys_until_records(tenant, keys, until_seq)
    }

    fn tenant_keys(
        &self,
        tenant: &TenantId,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, u64)>, StoreError> {
        self.key_list(tenant, after, limit)
    }

    fn check_key_index(&self) -> Result<Option<crate::KeyIndexCheck>, StoreError> {
        self.run_within(
            self.shared.options.migration_timeout,
            "checking the key index",
            "",
            keys::check,
        )
        .map(Some)
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
            nodes::report_applied(s, node, position)
        })
    }

    fn min_applied_live(&self, live_within: Duration) -> Result<Option<u64>, StoreError> {
        nodes::min_applied_live(self, live_within)
    }

    fn shares_snapshots(&self) -> bool {
        true
    }

    fn publish_snapshot(&self, snapshot: SharedSnapshot, keep: usize) -> Result<bool, StoreError> {
        self.publish_snapshot_impl(snapshot, keep)
    }

    fn shared_snapshots(&self) -> Result<Vec<u64>, StoreError> {
        self.shared_snapshots_impl()
    }

    fn shared_snapshot(&self, position: u64) -> Result<Option<SharedSnapshot>, StoreError> {
        self.shared_snapshot_impl(position)
    }

    fn chain_links(&self, after: u64, limit: usize) -> Result<Vec<ChainLink>, StoreError> {
        self.chain_links_impl(after, limit)
    }

    fn usage_projection(&self, page: &mut UsagePage<'_>) -> Result<Option<u64>, StoreError> {
        self.usage_projection_impl(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
