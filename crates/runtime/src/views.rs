//! The JSON shapes of keys, trail entries and usage rows: one definition
//! shared by the CLI's `--json` and exports and by the HTTP API.

use keyledger_core::{
    Actor, Cause, DailyRow, EventKind, KeyRecord, KeyStatus, Timestamp, UsageSummary,
};
use keyledger_store::Record;
use serde::Serialize;
use serde_json::{Value, json};

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// An actor: who did something.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActorView {
    /// `user`, `api_key`, `operator` or `system`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The user id or key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The key's name, for an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How the trail reads: `User: alice`, `API Key: CI/CD Pipeline`.
    pub display: String,
}

impl From<&Actor> for ActorView {
    fn from(a: &Actor) -> Self {
        let (kind, id, name) = match a {
            Actor::User { id } => ("user", Some(id.to_string()), None),
            Actor::ApiKey { key_id, name, .. } => {
                ("api_key", Some(key_id.to_string()), Some(name.clone()))
            }
            Actor::Operator => ("operator", None, None),
            Actor::System => ("system", None, None),
        };
        ActorView {
            kind,
            id,
            name,
            display: a.to_string(),
        }
    }
}

/// Use counts by outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsesView {
    /// Every use.
    pub total: u64,
    /// Valid uses.
    pub valid: u64,
    /// Rejected uses (revoked, expired, insufficient scope).
    pub rejected: u64,
    /// Uses after revocation.
    pub revoked: u64,
    /// Uses after expiry.
    pub expired: u64,
    /// Uses for a scope the key lacks.
    pub insufficient_scope: u64,
}

impl From<&keyledger_core::UseCounts> for UsesView {
    fn from(c: &keyledger_core::UseCounts) -> Self {
        UsesView {
            total: c.total(),
            valid: c.valid,
            rejected: c.rejected(),
            revoked: c.revoked,
            expired: c.expired,
            insufficient_scope: c.insufficient_scope,
        }
    }
}

/// A key, as lists and detail views show it: never the secret or its hash.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    /// `key_<ulid>`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// First 8 characters, `…`, last 4.
    pub masked: String,
    /// The user the key acts as, who created it (or for whom the operator did).
    pub created_by: String,
    /// Who performed the creation.
    pub created_via: ActorView,
    /// When it was created.
    pub created_at: String,
    /// When it stops working on its own.
    pub expires_at: Option<String>,
    /// What it may do.
    pub scopes: Vec<&'static str>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// The last valid use.
    pub last_used_at: Option<String>,
    /// Uses so far.
    pub uses: UsesView,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<ActorView>,
    /// Why: `manual`, `user_removed`, `rotated`, `compromised`.
    pub revoke_reason: Option<&'static str>,
    /// The key it replaced.
    pub rotated_from: Option<String>,
    /// The key that replaced it.
    pub rotated_to: Option<String>,
}

impl KeyView {
    /// A key with its status.
    pub fn new(k: &KeyRecord, status: KeyStatus) -> Self {
        KeyView {
            id: k.id.to_string(),
            name: k.name.clone(),
            description: k.description.clone(),
            masked: k.masked.clone(),
            created_by: k.owner.to_string(),
            created_via: (&k.created_by).into(),
            created_at: time(k.created_at),
            expires_at: k.expires_at.map(time),
            scopes: k.scopes.names(),
            status: status.as_str(),
            last_used_at: k.last_used_at.map(time),
            uses: (&k.uses).into(),
            revoked_at: k.revoked.as_ref().map(|r| time(r.at)),
            revoked_by: k.revoked.as_ref().map(|r| (&r.by).into()),
            revoke_reason: k.revoked.as_ref().map(|r| r.reason.as_str()),
            rotated_from: k.rotated_from.map(|i| i.to_string()),
            rotated_to: k.rotated_to.map(|i| i.to_string()),
        }
    }
}

/// One entry of the audit trail: an event with its place in the tenant's
/// trail.
///
/// Positions are the tenant's own: `position` is the event's sequence
/// number in the tenant's chain (1, 2, 3, …), never the global log
/// position, which interleaves every tenant and would tell one tenant how
/// busy the others are (`docs/api.md`, "Positions").
#[derive(Clone, Debug, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// The event's position in the tenant's trail: its sequence number in
    /// the tenant's chain, from 1 (equal to `seq`).
    pub position: u64,
    /// Number in the tenant's chain, from 1.
    pub seq: u64,
    /// When.
    pub at: String,
    /// The tenant.
    pub tenant: String,
    /// `KeyCreated`, `KeyUsed`, `KeyRevoked`, `KeyRotated`, `UserRemoved`, `AuditRead`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Who.
    pub actor: ActorView,
    /// The key concerned.
    pub key_id: Option<String>,
    /// The event's fields.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: Value,
    /// The event's chain hash (hex).
    pub hash: String,
    /// The predecessor's chain hash (hex).
    pub prev_hash: String,
}

impl From<&Record> for AuditEntry {
    fn from(r: &Record) -> Self {
        let e = &r.event;
        let details = match &e.kind {
            EventKind::KeyCreated(c) => json!({
                "owner": c.owner.as_str(),
                "name": c.name,
                "description": c.description,
                "expires_at": c.expires_at.map(time),
                "scopes": c.scopes.names(),
                "masked": c.masked,
                "rotated_from": c.rotated_from.map(|i| i.to_string()),
            }),
            EventKind::KeyUsed(u) => json!({
                "window_start": time(u.window_start),
                "window_end": time(u.window_end),
                "last_valid_at": u.last_valid_at.map(time),
                "valid": u.counts.valid,
                "revoked": u.counts.revoked,
                "expired": u.counts.expired,
                "insufficient_scope": u.counts.insufficient_scope,
            }),
            EventKind::KeyRevoked(v) => json!({
                "reason": v.reason.as_str(),
                "cause": v.cause.as_ref().map(|c| match c {
                    Cause::UserRemoved { user_id, seq } => json!({"user_removed": user_id.as_str(), "seq": seq}),
                }),
            }),
            EventKind::KeyRotated(v) => json!({
                "new_key_id": v.new_key_id.to_string(),
                "expires_at": time(v.expires_at),
            }),
            EventKind::UserRemoved(u) => json!({ "user_id": u.user_id.as_str() }),
            EventKind::AuditRead(r) => {
                let (from_seq, to_seq) = r.span();
                json!({
                    "what": r.what.as_str(),
                    "count": r.count,
                    "from_seq": from_seq,
                    "to_seq": to_seq,
                    "ranges": r.ranges.iter().map(|r| [r.from, r.to]).collect::<Vec<_>>(),
                    "window_start": time(r.window_start),
                    "window_end": time(r.window_end),
                })
            }
            EventKind::LogRecovered(v) => json!({
                "epoch": v.epoch,
                "old_origin": v.old_origin,
                "signed_size": v.signed_size,
                "signed_root": hex::encode(v.signed_root),
                "recovered_size": v.recovered_size,
                "agreed_size": v.agreed_size,
                "reason": v.reason,
            }),
        };
        AuditEntry {
            position: r.seq,
            seq: r.seq,
            at: time(e.at),
            tenant: e.tenant.to_string(),
            kind: e.type_name(),
            actor: (&e.actor).into(),
            key_id: e.key_id().map(|k| k.to_string()),
            details,
            hash: hex::encode(r.hash),
            prev_hash: hex::encode(r.prev_hash),
        }
    }
}

impl AuditEntry {
    /// Column names of the CSV export.
    pub const CSV_HEADER: [&'static str; 9] = [
        "position", "seq", "at", "tenant", "type", "actor", "key_id", "details", "hash",
    ];

    /// The entry as one CSV row, in [`Self::CSV_HEADER`] order.
    pub fn csv_row(&self) -> [String; 9] {
        [
            self.position.to_string(),
            self.seq.to_string(),
            self.at.clone(),
            self.tenant.clone(),
            self.kind.to_owned(),
            self.actor.display.clone(),
            self.key_id.clone().unwrap_or_default(),
            self.details.to_string(),
            self.hash.clone(),
        ]
    }
}

/// One day of usage.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DailyView {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The key, for per-key rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Counts.
    #[serde(flatten)]
    pub uses: UsesView,
}

impl DailyView {
    /// A row, for a key or (with `None`) the tenant.
    pub fn new(row: &DailyRow, key_id: Option<String>) -> Self {
        DailyView {
            day: row.day.to_string(),
            key_id,
            uses: (&row.counts).into(),
        }
    }

    /// Column names of the CSV export.
    pub const CSV_HEADER: [&'static str; 8] = [
        "day",
        "key_id",
        "total",
        "valid",
        "rejected",
        "revoked",
        "expired",
        "insufficient_scope",
    ];

    /// The row as CSV, in [`Self::CSV_HEADER`] order.
    pub fn csv_row(&self) -> [String; 8] {
        let u = &self.uses;
        [
            self.day.clone(),
            self.key_id.clone().unwrap_or_default(),
            u.total.to_string(),
            u.valid.to_string(),
            u.rejected.to_string(),
            u.revoked.to_string(),
            u.expired.to_string(),
            u.insufficient_scope.to_string(),
        ]
    }
}

/// A usage summary: totals, success rate and a per-day series.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SummaryView {
    /// First day.
    pub from: String,
    /// Last day (today, UTC).
    pub to: String,
    /// Days covered.
    pub days: usize,
    /// Totals.
    pub totals: UsesView,
    /// Valid over all uses; null without uses.
    pub success_rate: Option<f64>,
    /// One row per day, oldest first, for a stacked bar chart.
    pub series: Vec<DailyView>,
}

impl From<&UsageSummary> for SummaryView {
    fn from(s: &UsageSummary) -> Self {
        SummaryView {
            from: s.from.to_string(),
            to: s.to.to_string(),
            days: s.series.len(),
            totals: (&s.totals).into(),
            success_rate: s.success_rate,
            series: s.series.iter().map(|r| DailyView::new(r, None)).collect(),
        }
    }
}
