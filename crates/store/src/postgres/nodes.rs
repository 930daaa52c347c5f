//! Node positions: what each node has applied ([`crate::EventLog::report_applied`],
//! [`crate::EventLog::min_applied_live`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::pool::{get, query};
use super::{PgLog, Shared, classify, is_connection_error, to_u64};
use crate::StoreError;

const SQL_REPORT: &str = "INSERT INTO keyledger.nodes (node, applied, seen_at) \
     VALUES ($1, $2, now()) \
     ON CONFLICT (node) DO UPDATE SET applied = excluded.applied, seen_at = now()";

/// Upserts a node's report in a transaction committed without waiting for
/// its WAL flush (`synchronous_commit = off`): a report lost in a crash of
/// the server only makes revocations wait for the node's next one, and
/// nodes report often, so they should not cost a disk flush each. BEGIN,
/// the upsert and COMMIT go out together (one round trip).
pub(super) async fn report_applied(
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

/// [`crate::EventLog::min_applied_live`]: the lowest position among the nodes seen
/// within `live_within`.
pub(super) fn min_applied_live(
    log: &PgLog,
    live_within: Duration,
) -> Result<Option<u64>, StoreError> {
    let micros = i64::try_from(live_within.as_micros()).unwrap_or(i64::MAX);
    let rows = log.run(
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
