//! The analysts' projections in PostgreSQL (`migrations/0003_projections.sql`):
//! `keyledger.keys` (each key's current state) and `keyledger.usage_daily`
//! (verifications per key per UTC day), kept from the log by the nodes and
//! read through the views in the schema `keyledger_read`.
//!
//! # Exactly as of a position
//!
//! `keyledger.projections.position` says which prefix of the log the rows
//! reflect. One step ([`project_step`]) runs in one transaction: it takes
//! the transaction-level advisory lock [`PROJECT_LOCK`] *without waiting*
//! (another node projecting means there is nothing to do), reads the
//! position, the events after it (a prefix of the log: appends become
//! visible in position order, see the module docs of `postgres`), applies
//! them in order and moves the position, then commits. Rows and position
//! change together or not at all, so a crash, a lost connection or two nodes
//! racing can neither skip an event nor count one twice. The lock is not the
//! append lock: projecting never delays an append.
//!
//! Usage counts are added (`usage_daily` rows are sums of `KeyUsed`
//! windows, by the day the window starts, as the in-memory rollups count
//! them); key rows are inserted by `KeyCreated` and updated by the events
//! that change a key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use keyledger_core::event::KeyChange;
use keyledger_core::policy::{Credits, RateLimit};
use keyledger_core::{Event, EventKind, Timestamp};
use tokio_postgres::types::ToSql;

use super::pool::{Param, get};
use super::read::{SQL_READ_AFTER, raw_from_row};
use super::{LOCK_CLASS, PgLog, Shared, classify, to_u64};
use crate::StoreError;
use crate::read::PositionPage;

/// The transaction-level advisory lock `(LOCK_CLASS, 3)` a projection step
/// holds; tried, never waited for.
pub const PROJECT_LOCK: (i32, i32) = (LOCK_CLASS, 3);

/// Events one projection step applies at most.
pub const PROJECT_BATCH_MAX: usize = 2000;

const SQL_TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1, $2)";
const SQL_POSITION: &str =
    "SELECT position FROM keyledger.projections WHERE name = 'analytics' FOR UPDATE";
const SQL_MOVE: &str =
    "UPDATE keyledger.projections SET position = $1, updated_at = now() WHERE name = 'analytics'";

const SQL_KEY_CREATED: &str = "INSERT INTO keyledger.keys (key_id, tenant, owner, name, \
     description, created_at, created_by, expires_at, scopes, masked, rotated_from, position, \
     meta, limits, credits_remaining, credits_epoch, refill_amount, refill_interval, refill_day) \
     VALUES ($1, $2, $3, $4, $5, keyledger.from_micros($6), $7, keyledger.from_micros($8), $9, \
     $10, $11, $12, ($13::text)::jsonb, ($14::text)::jsonb, $15, $16, $17, $18, $19)";
const SQL_KEY_USED: &str = "UPDATE keyledger.keys SET \
     last_used_at = greatest(last_used_at, keyledger.from_micros($2)), position = $3 \
     WHERE key_id = $1";
const SQL_USAGE: &str = "INSERT INTO keyledger.usage_daily AS u (tenant, key_id, day, valid, \
     revoked, expired, insufficient_scope, usage_exceeded, rate_limited, credits_spent) \
     VALUES ($1, $2, date '1970-01-01' + $3::integer, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (tenant, key_id, day) DO UPDATE SET valid = u.valid + excluded.valid, \
     revoked = u.revoked + excluded.revoked, expired = u.expired + excluded.expired, \
     insufficient_scope = u.insufficient_scope + excluded.insufficient_scope, \
     usage_exceeded = u.usage_exceeded + excluded.usage_exceeded, \
     rate_limited = u.rate_limited + excluded.rate_limited, \
     credits_spent = u.credits_spent + excluded.credits_spent";
const SQL_KEY_REVOKED: &str = "UPDATE keyledger.keys SET revoked_at = keyledger.from_micros($2), \
     revoked_by = $3, revoke_reason = $4, position = $5 WHERE key_id = $1";
const SQL_KEY_ROTATED: &str = "UPDATE keyledger.keys SET rotated_to = $2, \
     expires_at = keyledger.from_micros($3), position = $4, \
     credits_remaining = CASE WHEN credits_remaining IS NULL THEN NULL ELSE 0 END \
     WHERE key_id = $1";
const SQL_SET_NAME: &str = "UPDATE keyledger.keys SET name = $2, position = $3 WHERE key_id = $1";
const SQL_SET_DESCRIPTION: &str =
    "UPDATE keyledger.keys SET description = $2, position = $3 WHERE key_id = $1";
const SQL_SET_META: &str =
    "UPDATE keyledger.keys SET meta = ($2::text)::jsonb, position = $3 WHERE key_id = $1";
const SQL_SET_EXPIRY: &str = "UPDATE keyledger.keys SET \
     expires_at = keyledger.from_micros($2), position = $3 WHERE key_id = $1";
const SQL_SET_SCOPES: &str =
    "UPDATE keyledger.keys SET scopes = $2, position = $3 WHERE key_id = $1";
const SQL_SET_LIMITS: &str =
    "UPDATE keyledger.keys SET limits = ($2::text)::jsonb, position = $3 WHERE key_id = $1";
const SQL_SET_CREDITS: &str = "UPDATE keyledger.keys SET credits_remaining = $2, \
     credits_epoch = $3, refill_amount = $4, refill_interval = $5, refill_day = $6, \
     position = $7 WHERE key_id = $1";
const SQL_RESERVED: &str = "UPDATE keyledger.keys SET \
     credits_remaining = credits_remaining - $2, position = $3 WHERE key_id = $1";
const SQL_RELEASED: &str = "UPDATE keyledger.keys SET \
     credits_remaining = credits_remaining + $2, position = $4 \
     WHERE key_id = $1 AND credits_epoch = $3";
const SQL_REFILLED: &str = "UPDATE keyledger.keys SET credits_remaining = $2, \
     credits_epoch = $3, position = $4 WHERE key_id = $1";

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectStep {
    /// Applied the events after `from`, up to `to`.
    Applied {
        /// The position before.
        from: u64,
        /// The position after.
        to: u64,
    },
    /// Nothing past the projected position.
    UpToDate(u64),
    /// The position was past the log's head: the rows were emptied and the
    /// position set to 0, to be projected again from the start.
    Rebuilt {
        /// The position before.
        from: u64,
    },
    /// Another node holds the projection lock.
    Busy,
}

/// One statement of a step, with its parameters.
type Statement = (&'static str, Vec<Param>);

fn micros(t: Timestamp) -> i64 {
    t.as_micros()
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A key's rate limits as the JSON array the `limits` column holds (names
/// are `[a-z0-9_.-]`: nothing to escape).
fn limits_json(limits: &[RateLimit]) -> String {
    let items: Vec<String> = limits
        .iter()
        .map(|l| {
            format!(
                "{{\"name\":\"{}\",\"limit\":{},\"duration_ms\":{}}}",
                l.name, l.limit, l.duration_ms
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The credit columns' parameters: remaining, epoch, refill amount,
/// interval and day (all `NULL` for a key without credits).
fn credit_params(credits: Option<&Credits>, epoch: i64) -> [Param; 5] {
    let refill = credits.and_then(|c| c.refill);
    [
        Box::new(credits.map(|c| count(c.remaining))),
        Box::new(credits.map(|_| epoch)),
        Box::new(refill.map(|r| count(r.amount))),
        Box::new(refill.map(|r| r.interval.as_str().to_owned())),
        Box::new(refill.and_then(|r| r.day).map(i16::from)),
    ]
}

/// The statements of one field change of a `KeyUpdated`.
fn change_statement(key: String, seq: i64, position: i64, change: &KeyChange) -> Statement {
    match change {
        KeyChange::Name { after, .. } => (
            SQL_SET_NAME,
            vec![Box::new(key), Box::new(after.clone()), Box::new(position)],
        ),
        KeyChange::Description { after, .. } => (
            SQL_SET_DESCRIPTION,
            vec![Box::new(key), Box::new(after.clone()), Box::new(position)],
        ),
        KeyChange::Meta { after, .. } => (
            SQL_SET_META,
            vec![
                Box::new(key),
                Box::new(after.as_ref().map(|m| m.as_str().to_owned())),
                Box::new(position),
            ],
        ),
        KeyChange::ExpiresAt { after, .. } => (
            SQL_SET_EXPIRY,
            vec![
                Box::new(key),
                Box::new(after.map(micros)),
                Box::new(position),
            ],
        ),
        KeyChange::Scopes { after, .. } => (
            SQL_SET_SCOPES,
            vec![
                Box::new(key),
                Box::new(after.to_string()),
                Box::new(position),
            ],
        ),
        KeyChange::Limits { after, .. } => (
            SQL_SET_LIMITS,
            vec![
                Box::new(key),
                Box::new(limits_json(after)),
                Box::new(position),
            ],
        ),
        KeyChange::Credits { after, .. } => {
            let mut params: Vec<Param> = vec![Box::new(key)];
            params.extend(credit_params(after.as_ref(), seq));
            params.push(Box::new(position));
            (SQL_SET_CREDITS, params)
        }
    }
}

/// The statements that bring the rows from before `event` (at `position`,
/// the tenant's sequence number `seq`) to after it.
fn statements_for(position: i64, seq: i64, event: &Event, out: &mut Vec<Statement>) {
    let tenant = event.tenant.as_str().to_owned();
    match &event.kind {
        EventKind::KeyCreated(c) => {
            let mut params: Vec<Param> = vec![
                Box::new(c.key_id.to_string()),
                Box::new(tenant),
                Box::new(c.owner.as_str().to_owned()),
                Box::new(c.name.clone()),
                Box::new(c.description.clone()),
                Box::new(micros(event.at)),
                Box::new(event.actor.to_string()),
                Box::new(c.expires_at.map(micros)),
                Box::new(c.scopes.to_string()),
                Box::new(c.masked.clone()),
                Box::new(c.rotated_from.map(|k| k.to_string())),
                Box::new(position),
                Box::new(c.meta.as_ref().map(|m| m.as_str().to_owned())),
                Box::new(limits_json(&c.limits)),
            ];
            params.extend(credit_params(c.credits.as_ref(), seq));
            out.push((SQL_KEY_CREATED, params));
        }
        EventKind::KeyUsed(u) => {
            let c = &u.counts;
            out.push((
                SQL_USAGE,
                vec![
                    Box::new(tenant),
                    Box::new(u.key_id.to_string()),
                    Box::new(u.window_start.day().as_days()),
                    Box::new(count(c.valid)),
                    Box::new(count(c.revoked)),
                    Box::new(count(c.expired)),
                    Box::new(count(c.insufficient_scope)),
                    Box::new(count(c.usage_exceeded)),
                    Box::new(count(c.rate_limited)),
                    Box::new(count(c.credits_spent)),
                ],
            ));
            if let Some(last) = u.last_valid_at {
                out.push((
                    SQL_KEY_USED,
                    vec![
                        Box::new(u.key_id.to_string()),
                        Box::new(micros(last)),
                        Box::new(position),
                    ],
                ));
            }
        }
        EventKind::KeyRevoked(r) => out.push((
            SQL_KEY_REVOKED,
            vec![
                Box::new(r.key_id.to_string()),
                Box::new(micros(event.at)),
                Box::new(event.actor.to_string()),
                Box::new(r.reason.as_str().to_owned()),
                Box::new(position),
            ],
        )),
        EventKind::KeyRotated(r) => out.push((
            SQL_KEY_ROTATED,
            vec![
                Box::new(r.key_id.to_string()),
                Box::new(r.new_key_id.to_string()),
                Box::new(micros(r.expires_at)),
                Box::new(position),
            ],
        )),
        EventKind::KeyUpdated(u) => {
            for change in &u.changes {
                out.push(change_statement(
                    u.key_id.to_string(),
                    seq,
                    position,
                    change,
                ));
            }
        }
        EventKind::CreditsReserved(r) => out.push((
            SQL_RESERVED,
            vec![
                Box::new(r.key_id.to_string()),
                Box::new(count(r.amount)),
                Box::new(position),
            ],
        )),
        // A release from an older epoch has lapsed, as in the fold.
        EventKind::CreditsReleased(r) => out.push((
            SQL_RELEASED,
            vec![
                Box::new(r.key_id.to_string()),
                Box::new(count(r.amount)),
                Box::new(count(r.epoch)),
                Box::new(position),
            ],
        )),
        EventKind::CreditsRefilled(r) => out.push((
            SQL_REFILLED,
            vec![
                Box::new(r.key_id.to_string()),
                Box::new(count(r.remaining)),
                Box::new(seq),
                Box::new(position),
            ],
        )),
        // A removal's revocations are events of their own; a leak is
        // followed by its revocation; the rest change no key or usage row.
        EventKind::UserRemoved(_)
        | EventKind::KeyLeaked(_)
        | EventKind::AuditRead(_)
        | EventKind::LogRecovered(_)
        | EventKind::WebhookSubscribed(_)
        | EventKind::WebhookDeleted(_) => {}
    }
}

/// One projection step (see the module docs).
pub(super) async fn project_step(
    shared: Arc<Shared>,
    batch: usize,
) -> Result<ProjectStep, StoreError> {
    const WHAT: &str = "projecting the log for analysts";
    let fail = |e: tokio_postgres::Error| classify(WHAT, &e);
    let mut c = get(&shared).await?;
    let conn = c.conn();
    let lock = conn.statement(SQL_TRY_LOCK).await.map_err(fail)?;
    let position = conn.statement(SQL_POSITION).await.map_err(fail)?;
    let read = conn.statement(SQL_READ_AFTER).await.map_err(fail)?;
    let moved = conn.statement(SQL_MOVE).await.map_err(fail)?;
    let client = c.client();
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let step = async {
        let locked: bool = client
            .query_one(&lock, &[&PROJECT_LOCK.0, &PROJECT_LOCK.1])
            .await
            .map_err(fail)?
            .get(0);
        if !locked {
            return Ok(ProjectStep::Busy);
        }
        let from: i64 = client.query_one(&position, &[]).await.map_err(fail)?.get(0);
        let limit = i64::try_from(batch.clamp(1, PROJECT_BATCH_MAX)).unwrap_or(1);
        let rows = client.query(&read, &[&from, &limit]).await.map_err(fail)?;
        let from_u = to_u64(from);
        let mut page = PositionPage::new(from_u, rows.len());
        for row in &rows {
            let r = raw_from_row(row)?;
            page.push(r.position, r.as_ref())?;
        }
        let records = page.finish();
        let Some(last) = records.last().map(|r| r.position) else {
            let head: i64 = client
                .query_one(super::append::SQL_HEAD, &[])
                .await
                .map_err(fail)?
                .get(0);
            if head < from {
                // The log is shorter than what the rows reflect (a log
                // emptied or restored without its projections): they are
                // derived data, so start them again from the log.
                tracing::warn!(
                    projected = from,
                    head,
                    "the analysts' projections are ahead of the log; rebuilding them"
                );
                client
                    .batch_execute("TRUNCATE keyledger.keys, keyledger.usage_daily")
                    .await
                    .map_err(fail)?;
                client.execute(&moved, &[&0i64]).await.map_err(fail)?;
                return Ok(ProjectStep::Rebuilt { from: from_u });
            }
            return Ok(ProjectStep::UpToDate(from_u));
        };
        let mut statements = Vec::new();
        for r in &records {
            let at = i64::try_from(r.position).unwrap_or(i64::MAX);
            let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
            statements_for(at, seq, &r.event, &mut statements);
        }
        apply(
            client,
            c_statements(&statements, client).await?,
            &statements,
        )
        .await?;
        let to = i64::try_from(last).unwrap_or(i64::MAX);
        client.execute(&moved, &[&to]).await.map_err(fail)?;
        Ok(ProjectStep::Applied {
            from: from_u,
            to: last,
        })
    }
    .await;
    let end = if matches!(
        step,
        Ok(ProjectStep::Applied { .. } | ProjectStep::Rebuilt { .. })
    ) {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    match client.batch_execute(end).await {
        Ok(()) => {
            c.release();
            step
        }
        // The transaction's outcome is whatever the server did; the rows
        // and the position moved together either way. The connection is
        // dropped, not reused.
        Err(e) => step.and(Err(fail(e))),
    }
}

/// Prepares each distinct statement once.
async fn c_statements(
    statements: &[Statement],
    client: &tokio_postgres::Client,
) -> Result<Vec<tokio_postgres::Statement>, StoreError> {
    let mut prepared: Vec<(&'static str, tokio_postgres::Statement)> = Vec::new();
    let mut out = Vec::with_capacity(statements.len());
    for (sql, _) in statements {
        let s = match prepared.iter().find(|(q, _)| std::ptr::eq(*q, *sql)) {
            Some((_, s)) => s.clone(),
            None => {
                let s = client
                    .prepare(sql)
                    .await
                    .map_err(|e| classify("preparing a projection statement", &e))?;
                prepared.push((sql, s.clone()));
                s
            }
        };
        out.push(s);
    }
    Ok(out)
}

/// Runs the statements in order, pipelined on the one connection (the
/// server still runs them one after the other, in the order sent).
async fn apply(
    client: &tokio_postgres::Client,
    prepared: Vec<tokio_postgres::Statement>,
    statements: &[Statement],
) -> Result<(), StoreError> {
    let runs = prepared.iter().zip(statements).map(|(s, (_, params))| {
        let params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        async move { client.execute(s, &params).await }
    });
    try_join_all(runs)
        .await
        .map_err(|e| classify("applying events to the projections", &e))?;
    Ok(())
}

impl PgLog {
    /// One projection step of at most `batch` events (see the module docs).
    pub fn project_step(&self, batch: usize) -> Result<ProjectStep, StoreError> {
        self.run("projecting the log for analysts", move |s| {
            project_step(s, batch)
        })
    }

    /// Projects until the projections reach the log's head as it was when
    /// called, or another node is projecting. Returns the position reached.
    pub fn project_all(&self) -> Result<u64, StoreError> {
        loop {
            match self.project_step(PROJECT_BATCH_MAX)? {
                ProjectStep::Applied { .. } | ProjectStep::Rebuilt { .. } => {}
                ProjectStep::UpToDate(at) => return Ok(at),
                ProjectStep::Busy => return self.projected_position(),
            }
        }
    }

    /// The position the projections reflect.
    pub fn projected_position(&self) -> Result<u64, StoreError> {
        let rows = self.run("reading the projected position", |s| async move {
            super::pool::query(
                &s,
                "reading the projected position",
                "SELECT position FROM keyledger.projections WHERE name = 'analytics'",
                Vec::new(),
            )
            .await
        })?;
        Ok(rows.first().map_or(0, |r| to_u64(r.get::<_, i64>(0))))
    }

    /// Starts keeping the projections on this log's runtime: a step after
    /// every append this node hears of (its own or another node's), and at
    /// least every `every`. Failures are logged and retried; they never
    /// touch the log itself.
    pub fn start_projecting(&self, every: Duration) {
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let mut seen = 0u64;
            loop {
                match project_step(shared.clone(), PROJECT_BATCH_MAX).await {
                    Ok(ProjectStep::Applied { to, .. }) => {
                        seen = to;
                        continue;
                    }
                    Ok(ProjectStep::Rebuilt { .. }) => continue,
                    Ok(ProjectStep::UpToDate(at)) => seen = at,
                    Ok(ProjectStep::Busy) => {}
                    Err(e) => tracing::warn!(error = %e, "projections for analysts: step failed"),
                }
                let waiting = shared.clone();
                let _ = tokio::task::spawn_blocking(move || waiting.wake.wait(seen, every)).await;
            }
        });
    }
}
