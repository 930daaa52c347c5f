//! The schema migrations (`crates/store/migrations/*.sql`) and how a
//! connecting log applies the ones the database lacks.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::pool::connect;
use super::{MIGRATE_LOCK, Shared, classify};
use crate::StoreError;

/// The schema migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../../migrations/0001_event_log.sql"),
    ),
    (2, "nodes", include_str!("../../migrations/0002_nodes.sql")),
    (
        3,
        "projections",
        include_str!("../../migrations/0003_projections.sql"),
    ),
    (
        4,
        "key_index",
        include_str!("../../migrations/0004_key_index.sql"),
    ),
    (
        5,
        "shared_snapshots",
        include_str!("../../migrations/0005_shared_snapshots.sql"),
    ),
];

const _: () = assert!(!MIGRATIONS.is_empty());

/// Applies the migrations the database lacks, under [`MIGRATE_LOCK`] so
/// nodes starting together apply each once. Refuses a database migrated by
/// a newer release, or whose applied migrations differ from these files.
pub(super) async fn migrate(shared: Arc<Shared>) -> Result<(), StoreError> {
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
            hex::encode(checksum)
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
