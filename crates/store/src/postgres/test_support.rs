//! Test databases on a throwaway PostgreSQL server (`scripts/postgres`).

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::{Client, Config, NoTls};

use super::classify;
use crate::StoreError;

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
               IF to_regclass('keyledger.key_events') IS NOT NULL THEN \
                 TRUNCATE keyledger.key_events; \
               END IF; \
               IF to_regclass('keyledger.projections') IS NOT NULL THEN \
                 TRUNCATE keyledger.keys, keyledger.usage_daily; \
                 UPDATE keyledger.projections SET position = 0; \
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
}
