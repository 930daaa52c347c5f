//! The connection pool: idle connections with their prepared statements,
//! a bound on how many exist, and the read-only query that retries once on
//! a fresh connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{Shared, classify, is_connection_error};
use crate::StoreError;

/// Prepared statements of one connection, by SQL text.
pub(super) type StatementCache = HashMap<&'static str, Statement>;

/// One connection and its prepared statements.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) statements: StatementCache,
}

impl Conn {
    pub(super) async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        prepare(&self.client, &mut self.statements, sql).await
    }
}

pub(super) async fn prepare(
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
pub(super) struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A connection taken from the pool. It goes back only through
/// [`Pooled::release`], after a call that left it clean (outside any
/// transaction); dropped otherwise (a failure, a timeout mid-transaction).
pub(super) struct Pooled {
    conn: Option<Conn>,
    /// Whether it came from the idle list (so it may have died meanwhile).
    pub(super) reused: bool,
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pool {
    pub(super) fn new(max: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }
}

impl Pooled {
    pub(super) fn conn(&mut self) -> &mut Conn {
        match self.conn.as_mut() {
            Some(c) => c,
            // `conn` is taken only by `release`, which consumes `self`.
            None => unreachable!("a Pooled holds its connection until released"),
        }
    }

    pub(super) fn client(&self) -> &Client {
        match self.conn.as_ref() {
            Some(c) => &c.client,
            None => unreachable!("a Pooled holds its connection until released"),
        }
    }

    /// Puts the connection back for the next call.
    pub(super) fn release(mut self) {
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
pub(super) async fn get(shared: &Arc<Shared>) -> Result<Pooled, StoreError> {
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
pub(super) async fn connect(shared: &Shared) -> Result<Client, StoreError> {
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
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// Runs one read-only statement on a pooled connection. When a reused
/// connection turns out to be dead (the server restarted since it was
/// last used), the statement runs once more on a fresh one: nothing was
/// changed, so repeating it is safe.
pub(super) async fn query(
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
