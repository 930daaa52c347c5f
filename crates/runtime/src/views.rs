//! The JSON bodies of keys, trail entries, usage rows, pages, past state,
//! removed users and verdicts: one definition shared by the CLI's `--json`
//! and exports and by the HTTP API (whose OpenAPI schemas derive from them
//! with the `openapi` feature). A black-box test compares the two on the
//! same data (`tests/bodies.rs`).

use keyledger_core::{
    Actor, Cause, DailyRow, EventKind, KeyId, KeyRecord, KeyStatus, Scope, ScopeSet, Timestamp,
    UsageSummary, UserId,
};
use keyledger_store::{ChainReport, Record};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::VerifyOutcome;

/// A key's metadata as JSON (its text is a JSON object; kept as a string
/// should it ever not parse).
pub fn meta_json(m: &keyledger_core::Meta) -> Value {
    serde_json::from_str(m.as_str()).unwrap_or_else(|_| Value::String(m.as_str().to_owned()))
}

/// Credits as JSON: `{remaining, refill: {amount, interval, day} | null}`.
pub fn credits_json(c: &keyledger_core::Credits) -> Value {
    json!({
        "remaining": c.remaining,
        "refill": c.refill.map(|r| json!({
            "amount": r.amount,
            "interval": r.interval.as_str(),
            "day": r.day,
        })),
    })
}

/// Rate limits as JSON: `[{name, limit, duration}]`, the duration in milliseconds.
pub fn limits_json(limits: &[keyledger_core::RateLimit]) -> Value {
    Value::Array(
        limits
            .iter()
            .map(|l| json!({ "name": l.name, "limit": l.limit, "duration": l.duration_ms }))
            .collect(),
    )
}

/// A `KeyUpdated`'s changes as JSON: `{field: {before, after}}`, one
/// member per changed field.
pub fn key_changes_json(changes: &[keyledger_core::KeyChange]) -> Value {
    use keyledger_core::KeyChange as C;
    let mut out = serde_json::Map::new();
    for c in changes {
        let (before, after) = match c {
            C::Name { before, after } => (json!(before), json!(after)),
            C::Description { before, after } => (json!(before), json!(after)),
            C::Meta { before, after } => (
                before.as_ref().map_or(Value::Null, meta_json),
                after.as_ref().map_or(Value::Null, meta_json),
            ),
            C::ExpiresAt { before, after } => (json!(before.map(time)), json!(after.map(time))),
            C::Scopes { before, after } => (json!(before.names()), json!(after.names())),
            C::Credits { before, after } => (
                before.as_ref().map_or(Value::Null, credits_json),
                after.as_ref().map_or(Value::Null, credits_json),
            ),
            C::Limits { before, after } => (limits_json(before), limits_json(after)),
        };
        out.insert(
            c.field().to_owned(),
            json!({ "before": before, "after": after }),
        );
    }
    Value::Object(out)
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// Reading back the fields that are one of a fixed set of names (held as
/// `&'static str`): a client of the API (the CLI with `--url`) decodes the
/// bodies into these same types, and an unknown name is an error.
/// A name out of a fixed set: `&'static str`, named so that serde's derive
/// does not take it for text borrowed from the input (it is decoded by
/// one of the `names` module's functions instead).
pub type Name = &'static str;

mod names {
    use keyledger_core::{EventType, KeyStatus, RevokeReason, Scope};
    use serde::{Deserialize, Deserializer, de::Error};

    fn one_of<E: Error>(s: &str, names: &[&'static str], what: &str) -> Result<&'static str, E> {
        names.iter().copied().find(|n| *n == s).ok_or_else(|| {
            E::custom(format!(
                "unknown {what} `{}`: one of {}",
                s.escape_debug(),
                names.join(", ")
            ))
        })
    }

    pub(super) fn actor<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let s = String::deserialize(d)?;
        one_of(&s, &["user", "api_key", "operator", "system"], "actor type")
    }

    pub(super) fn status<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let s = String::deserialize(d)?;
        KeyStatus::parse(&s)
            .map(KeyStatus::as_str)
            .ok_or_else(|| D::Error::custom(format!("unknown status `{}`", s.escape_debug())))
    }

    pub(super) fn event_type<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let s = String::deserialize(d)?;
        one_of(&s, &EventType::ALL.map(EventType::as_str), "event type")
    }

    pub(super) fn scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<&'static str>, D::Error> {
        let all = Scope::ALL.map(Scope::as_str);
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| one_of(s, &all, "scope"))
            .collect()
    }

    pub(super) fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let s = String::deserialize(d)?;
        keyledger_core::policy::RefillInterval::parse(&s)
            .map(keyledger_core::policy::RefillInterval::as_str)
            .ok_or_else(|| D::Error::custom(format!("unknown interval `{}`", s.escape_debug())))
    }

    pub(super) fn revoke_reason<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<&'static str>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                RevokeReason::parse(&s)
                    .map(RevokeReason::as_str)
                    .ok_or_else(|| {
                        D::Error::custom(format!("unknown reason `{}`", s.escape_debug()))
                    })
            })
            .transpose()
    }
}

/// An actor: who did something.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActorView {
    /// `user`, `api_key`, `operator` or `system`.
    #[serde(rename = "type", deserialize_with = "names::actor")]
    pub kind: Name,
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsesView {
    /// Every use.
    pub total: u64,
    /// Valid uses.
    pub valid: u64,
    /// Rejected uses (revoked, expired, insufficient scope, usage
    /// exceeded, rate limited).
    pub rejected: u64,
    /// Uses after revocation.
    pub revoked: u64,
    /// Uses after expiry.
    pub expired: u64,
    /// Uses for a scope the key lacks.
    pub insufficient_scope: u64,
    /// Uses refused because no credits were left.
    pub usage_exceeded: u64,
    /// Uses refused by a rate limit.
    pub rate_limited: u64,
    /// Credits the valid uses spent (not an outcome).
    pub credits_spent: u64,
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
            usage_exceeded: c.usage_exceeded,
            rate_limited: c.rate_limited,
            credits_spent: c.credits_spent,
        }
    }
}

/// A key's credits, as the log has them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditsView {
    /// Credits left in the log: what no node has set aside yet (a node
    /// spends the blocks it reserved in memory).
    pub remaining: u64,
    /// When they are set back, if ever.
    pub refill: Option<RefillView>,
}

/// A refill: at each refill instant the credits are set to `amount`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefillView {
    /// What the credits are set to.
    pub amount: u64,
    /// `daily` or `monthly`.
    #[serde(deserialize_with = "names::interval")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "monthly"))]
    pub interval: Name,
    /// Monthly: the day of the month (a shorter month refills on its
    /// last day); absent for a daily refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u8>,
    /// The next refill instant (00:00 UTC), RFC 3339.
    pub next_at: String,
}

impl CreditsView {
    /// Credits, with the next refill after `last_refill` (the last refill
    /// instant applied to the key, or when it got its credits).
    pub fn new(c: &keyledger_core::policy::Credits, last_refill: Timestamp) -> Self {
        CreditsView {
            remaining: c.remaining,
            refill: c.refill.as_ref().map(|r| RefillView {
                amount: r.amount,
                interval: r.interval.as_str(),
                day: r.day,
                next_at: time(r.next_after(last_refill)),
            }),
        }
    }
}

/// A named rate limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitView {
    /// Its name, unique on the key.
    pub name: String,
    /// Verifications a window admits.
    pub limit: u64,
    /// The window, in milliseconds.
    pub duration: u64,
}

impl From<&keyledger_core::policy::RateLimit> for LimitView {
    fn from(l: &keyledger_core::policy::RateLimit) -> Self {
        LimitView {
            name: l.name.clone(),
            limit: l.limit,
            duration: l.duration_ms,
        }
    }
}

/// A key, as lists and detail views show it: never the secret or its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    #[serde(deserialize_with = "names::scopes")]
    pub scopes: Vec<Name>,
    /// `active`, `expired` or `revoked`.
    #[serde(deserialize_with = "names::status")]
    pub status: Name,
    /// The last valid use.
    pub last_used_at: Option<String>,
    /// Uses so far.
    pub uses: UsesView,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<ActorView>,
    /// Why: `manual`, `user_removed`, `rotated`, `compromised`.
    #[serde(default, deserialize_with = "names::revoke_reason")]
    pub revoke_reason: Option<Name>,
    /// The key it replaced.
    pub rotated_from: Option<String>,
    /// The key that replaced it.
    pub rotated_to: Option<String>,
    /// Its metadata: a JSON object, or null.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub meta: Option<Value>,
    /// Its credits (null: unlimited).
    #[serde(default)]
    pub credits: Option<CreditsView>,
    /// Its rate limits.
    #[serde(default)]
    pub limits: Vec<LimitView>,
}

impl KeyView {
    /// A key with its status.
    pub fn new(k: &KeyRecord, status: KeyStatus) -> Self {
        KeyView {
            id: k.id.to_string(),
            name: k.name.to_string(),
            description: k.description.clone(),
            masked: k.masked.to_string(),
            created_by: k.owner.to_string(),
            created_via: (&k.created_by()).into(),
            created_at: time(k.created_at),
            expires_at: k.expires_at.map(time),
            scopes: k.scopes.names(),
            status: status.as_str(),
            last_used_at: k.last_used_at.map(time),
            uses: (&k.uses).into(),
            revoked_at: k.revoked.as_ref().map(|r| time(r.at)),
            revoked_by: k.revoked.as_ref().map(|r| (&r.by).into()),
            revoke_reason: k.revoked.as_ref().map(|r| r.reason.as_str()),
            rotated_from: k.rotated_from().map(|i| i.to_string()),
            rotated_to: k.rotated_to().map(|i| i.to_string()),
            meta: k.meta().map(meta_json),
            credits: k
                .credit_state()
                .map(|c| CreditsView::new(&c.credits(), c.since)),
            limits: k.limits().iter().map(LimitView::from).collect(),
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// The event's type: one of [`EventType::ALL`](keyledger_core::EventType::ALL), by name.
    #[serde(rename = "type", deserialize_with = "names::event_type")]
    #[cfg_attr(feature = "openapi", schema(schema_with = event_type_schema))]
    pub kind: Name,
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

/// The schema of an entry's `type`: every event type's name, from
/// [`EventType::ALL`], so a new type is in the document as soon as it exists.
#[cfg(feature = "openapi")]
fn event_type_schema() -> utoipa::openapi::Object {
    use keyledger_core::EventType;
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(EventType::ALL.map(EventType::as_str)))
        .description(Some("The event's type."))
        .build()
}

/// An event's fields, as its trail entry's `details`.
pub(crate) fn details_value(e: &keyledger_core::Event) -> Value {
    match &e.kind {
        EventKind::KeyCreated(c) => {
            let mut d = json!({
                "owner": c.owner.as_str(),
                "name": c.name,
                "description": c.description,
                "expires_at": c.expires_at.map(time),
                "scopes": c.scopes.names(),
                "masked": c.masked,
                "rotated_from": c.rotated_from.map(|i| i.to_string()),
            });
            // The policy only where there is one: a key without one reads
            // exactly as before key policies, so evidence bundles
            // exported by earlier releases still match their signed
            // bytes (`verify_bundle` compares these details).
            if let Some(m) = &c.meta {
                d["meta"] = meta_json(m);
            }
            if let Some(credits) = &c.credits {
                d["credits"] = credits_json(credits);
            }
            if !c.limits.is_empty() {
                d["limits"] = limits_json(&c.limits);
            }
            d
        }
        EventKind::KeyUsed(u) => {
            let mut d = json!({
                "window_start": time(u.window_start),
                "window_end": time(u.window_end),
                "last_valid_at": u.last_valid_at.map(time),
                "valid": u.counts.valid,
                "revoked": u.counts.revoked,
                "expired": u.counts.expired,
                "insufficient_scope": u.counts.insufficient_scope,
            });
            // The key-policy counts only when not 0, for the same reason
            // as the policy of `KeyCreated`.
            for (name, n) in [
                ("usage_exceeded", u.counts.usage_exceeded),
                ("rate_limited", u.counts.rate_limited),
                ("credits_spent", u.counts.credits_spent),
            ] {
                if n > 0 {
                    d[name] = json!(n);
                }
            }
            d
        }
        EventKind::KeyUpdated(u) => json!({ "changes": key_changes_json(&u.changes) }),
        EventKind::CreditsReserved(c) => json!({ "epoch": c.epoch, "amount": c.amount }),
        EventKind::CreditsReleased(c) => json!({ "epoch": c.epoch, "amount": c.amount }),
        EventKind::CreditsRefilled(c) => json!({
            "due_at": time(c.due_at),
            "remaining": c.remaining,
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
        EventKind::KeyLeaked(v) => json!({
            "source": v.source,
            "url": v.url,
            "reported_by": v.reporter.as_text(),
        }),
        EventKind::WebhookSubscribed(w) => json!({
            "webhook_id": w.webhook_id.to_string(),
            "url": w.url,
            "event_types": w.event_types,
            "description": w.description,
        }),
        EventKind::WebhookDeleted(w) => json!({ "webhook_id": w.webhook_id.to_string() }),
    }
}

impl From<&Record> for AuditEntry {
    fn from(r: &Record) -> Self {
        let e = &r.event;
        let details = details_value(e);
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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

    /// Column names of the CSV export of one key's rows.
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

    /// Column names of the CSV export: [`Self::CSV_HEADER`], without
    /// `key_id` for the tenant's rows (a column always empty would be read
    /// as numbers that are missing, floats, by tools like pandas).
    pub fn csv_header(per_key: bool) -> Vec<&'static str> {
        Self::CSV_HEADER
            .into_iter()
            .filter(|c| per_key || *c != "key_id")
            .collect()
    }

    /// The row as CSV, in [`Self::csv_header`] order (`key_id` only for a
    /// key's row).
    pub fn csv_row(&self) -> Vec<String> {
        let u = &self.uses;
        let mut row = vec![self.day.clone()];
        row.extend(self.key_id.clone());
        row.extend(
            [
                u.total,
                u.valid,
                u.rejected,
                u.revoked,
                u.expired,
                u.insufficient_scope,
            ]
            .map(|n| n.to_string()),
        );
        row
    }
}

/// A usage summary: totals, success rate and a per-day series.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

/// A scope's wire name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ScopeName {
    /// List and read keys.
    #[serde(rename = "keys:read")]
    KeysRead,
    /// Create, revoke and rotate keys.
    #[serde(rename = "keys:write")]
    KeysWrite,
    /// Read, export and verify the audit trail, key history and past state.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Read usage rollups.
    #[serde(rename = "usage:read")]
    UsageRead,
    /// Remove users (revoking their keys). Never granted by default.
    #[serde(rename = "users:remove")]
    UsersRemove,
    /// Subscribe, list and delete webhooks. Never granted by default.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
}

impl From<ScopeName> for Scope {
    fn from(s: ScopeName) -> Scope {
        match s {
            ScopeName::KeysRead => Scope::KeysRead,
            ScopeName::KeysWrite => Scope::KeysWrite,
            ScopeName::AuditRead => Scope::AuditRead,
            ScopeName::UsageRead => Scope::UsageRead,
            ScopeName::UsersRemove => Scope::UsersRemove,
            ScopeName::WebhooksManage => Scope::WebhooksManage,
        }
    }
}
/// A created key: the secret, shown this once, and the key.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// The secret. It is stored nowhere and cannot be shown again.
    pub key: String,
    /// The key, as lists show it.
    #[serde(flatten)]
    pub view: KeyView,
}
/// A page of keys.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// The keys, masked.
    pub keys: Vec<KeyView>,
    /// Active keys of the tenant, whatever the filter.
    pub active_count: usize,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A removed user and the keys revoked with them.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemovedUser {
    /// The user.
    pub user_id: String,
    /// Every key of theirs that was active, revoked in the same append.
    pub revoked: Vec<String>,
}
/// A key id serialized straight into the output (no intermediate string).
#[derive(Clone, Copy, Debug)]
pub struct KeyIdText(pub KeyId);

impl Serialize for KeyIdText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A scope set serialized as the list of its wire names (no allocation).
#[derive(Clone, Copy, Debug)]
pub struct ScopeList(pub ScopeSet);

impl Serialize for ScopeList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Scope::as_str))
    }
}

/// The answer of `POST /v1/verify`: always 200, `valid: false` for a bad key.
/// The key's fields are null when no key has the secret.
// Borrows from the verification: nothing is copied to answer.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyResponse<'a> {
    /// Whether the key works for the scope asked.
    pub valid: bool,
    /// What was found.
    pub outcome: VerifyOutcome,
    /// The key's id.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub key_id: Option<KeyIdText>,
    /// The key's tenant.
    pub tenant_id: Option<&'a str>,
    /// The user the key acts as.
    pub owner: Option<&'a str>,
    /// The key's scopes.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<ScopeName>>))]
    pub scopes: Option<ScopeList>,
    /// The key's expiry.
    pub expires_at: Option<String>,
    /// Credits left, for a valid key with credits (also on
    /// `usage_exceeded` and `rate_limited`): what the log holds unreserved
    /// plus this node's unspent allowance, so approximate across nodes
    /// (docs/policy.md). Absent for a key without credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// The key's rate limits checked, in the key's order (a refused call
    /// stops at the limit that refused it). Absent for a key without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<RateLimitBody<'a>>>,
}

/// One rate limit in a verification's answer.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimitBody<'a> {
    /// The limit's name.
    pub name: &'a str,
    /// How many verifications its window admits.
    pub limit: u64,
    /// How many it admits right now.
    pub remaining: u64,
    /// Refused: the earliest instant a retry is admitted. Admitted: when
    /// the whole limit is available again.
    pub reset: String,
}

impl VerifyResponse<'_> {
    /// The JSON body, written directly: this is the hot path, and writing
    /// these few fields by hand costs a fraction of the generic serializer.
    /// Byte for byte what `serde_json::to_vec` gives (a test checks it).
    #[inline]
    pub fn to_json(&self) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(if self.valid {
            b"{\"valid\":true,\"outcome\":\""
        } else {
            b"{\"valid\":false,\"outcome\":\""
        });
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key_id\":");
        match self.key_id {
            // `key_` and a ULID: nothing to escape.
            Some(KeyIdText(id)) => {
                let _ = write!(out, "\"{id}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"tenant_id\":");
        push_json_str(&mut out, self.tenant_id);
        out.extend_from_slice(b",\"owner\":");
        push_json_str(&mut out, self.owner);
        out.extend_from_slice(b",\"scopes\":");
        match self.scopes {
            Some(ScopeList(set)) => {
                out.push(b'[');
                for (i, scope) in set.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(scope.as_str().as_bytes());
                    out.push(b'"');
                }
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"expires_at\":");
        push_json_str(&mut out, self.expires_at.as_deref());
        if let Some(n) = self.credits_remaining {
            let _ = write!(out, ",\"credits_remaining\":{n}");
        }
        if let Some(limits) = &self.ratelimits {
            out.extend_from_slice(b",\"ratelimits\":[");
            for (i, l) in limits.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"name\":");
                push_json_str(&mut out, Some(l.name));
                let _ = write!(
                    out,
                    ",\"limit\":{},\"remaining\":{},\"reset\":",
                    l.limit, l.remaining
                );
                push_json_str(&mut out, Some(&l.reset));
                out.push(b'}');
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }
}

/// A JSON string (or `null`): verbatim when nothing needs escaping, else
/// through serde_json.
#[inline]
fn push_json_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.extend_from_slice(b"null"),
        Some(s) if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        Some(s) => {
            if serde_json::to_writer(&mut *out, s).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}
/// A page of the audit trail, or of one key's history.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPageBody {
    /// Matching events, in log order.
    pub events: Vec<AuditEntry>,
    /// Pass as `cursor` to continue; null when the trail is exhausted.
    pub next_cursor: Option<String>,
}

/// The result of recomputing a tenant's hash chain.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainBody {
    /// The tenant.
    pub tenant: String,
    /// Whether every event and the head matched.
    pub ok: bool,
    /// Events checked and found good.
    pub events: u64,
    /// The hash of the last good event (hex; zeros for none).
    pub head_hash: String,
    /// The position in the tenant's trail (its sequence number) of the
    /// first event that does not match.
    pub first_bad_position: Option<u64>,
    /// The same number: the tenant sequence number expected there.
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
}

/// Every key of the tenant as of a past instant.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateBody {
    /// The instant the statuses are judged at.
    pub at: String,
    /// The position in the tenant's trail (its sequence number) of the
    /// last event folded (0: none).
    pub position: u64,
    /// The keys that existed then, with their status then, in key-id
    /// order: every one, or with `limit` a page of them.
    pub keys: Vec<KeyView>,
    /// With `limit`: pass as `cursor` to get the next page; absent on the
    /// last page (and without `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Per-day usage rows.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageDays {
    /// Days with uses, oldest first.
    pub days: Vec<DailyView>,
}

impl CreatedKey {
    /// A created key, with its status at `now`.
    pub fn new(c: &crate::Created, now: Timestamp) -> Self {
        CreatedKey {
            key: c.secret.expose().to_owned(),
            view: KeyView::new(&c.key, c.key.status(now)),
        }
    }
}

impl From<&crate::KeyPage> for KeyList {
    fn from(page: &crate::KeyPage) -> Self {
        KeyList {
            keys: page.keys.iter().map(|(k, s)| KeyView::new(k, *s)).collect(),
            active_count: page.active_count,
            next_cursor: page.next_cursor.clone(),
        }
    }
}

impl RemovedUser {
    /// The user and the keys revoked with them.
    pub fn new(user: &UserId, revoked: &[KeyId]) -> Self {
        RemovedUser {
            user_id: user.as_str().to_owned(),
            revoked: revoked.iter().map(ToString::to_string).collect(),
        }
    }
}

impl<'a> VerifyResponse<'a> {
    /// The verdict on a presented key, borrowing from the key found.
    #[inline]
    pub fn new(outcome: VerifyOutcome, key: Option<&'a crate::KeyEntry>) -> Self {
        VerifyResponse {
            valid: outcome == VerifyOutcome::Valid,
            outcome,
            key_id: key.map(|k| KeyIdText(k.key_id)),
            tenant_id: key.map(|k| k.tenant.as_str()),
            owner: key.map(|k| k.owner.as_str()),
            scopes: key.map(|k| ScopeList(k.scopes)),
            expires_at: key.and_then(|k| k.expires_at()).map(time),
            credits_remaining: None,
            ratelimits: None,
        }
    }

    /// [`VerifyResponse::new`] with the policy's part of the answer
    /// (credits left, rate limits checked), for a key that has a policy.
    pub fn with_policy(
        outcome: VerifyOutcome,
        key: Option<&'a crate::KeyEntry>,
        policy: Option<&crate::PolicyAnswer>,
    ) -> Self {
        let mut r = Self::new(outcome, key);
        if let (Some(answer), Some(enforced)) = (policy, key.and_then(|k| k.policy())) {
            r.credits_remaining = answer.credits_remaining;
            if !enforced.limiters.is_empty() {
                r.ratelimits = Some(
                    enforced
                        .limiters
                        .iter()
                        .zip(answer.limits())
                        .map(|(l, state)| RateLimitBody {
                            name: &l.limit.name,
                            limit: l.limit.limit,
                            remaining: state.remaining,
                            reset: time(state.reset),
                        })
                        .collect(),
                );
            }
        }
        r
    }
}

impl From<&crate::AuditPage> for AuditPageBody {
    fn from(page: &crate::AuditPage) -> Self {
        AuditPageBody {
            events: page.records.iter().map(Into::into).collect(),
            next_cursor: page.next_cursor.clone(),
        }
    }
}

impl ChainBody {
    /// A tenant's chain check. Positions are the tenant's own, never the
    /// global ones (nor the log's `detail`, which may name global
    /// positions).
    pub fn new(tenant: &str, r: &ChainReport) -> Self {
        ChainBody {
            tenant: tenant.to_owned(),
            ok: r.ok,
            events: r.events,
            head_hash: hex::encode(r.head_hash),
            first_bad_position: r.first_bad.as_ref().map(|b| b.seq),
            first_bad_seq: r.first_bad.as_ref().map(|b| b.seq),
            problem: r.first_bad.as_ref().map(|b| b.problem.clone()),
        }
    }
}

impl From<&crate::StateAt> for StateBody {
    fn from(s: &crate::StateAt) -> Self {
        StateBody {
            at: time(s.at),
            position: s.seq,
            keys: s.keys.iter().map(|(k, st)| KeyView::new(k, *st)).collect(),
            next_cursor: s.next_cursor.clone(),
        }
    }
}

impl UsageDays {
    /// The rows of the tenant, or (with `key`) of one key.
    pub fn new(rows: &[DailyRow], key: Option<KeyId>) -> Self {
        UsageDays {
            days: rows
                .iter()
                .map(|r| DailyView::new(r, key.map(|k| k.to_string())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_back_to_the_same_views_and_refuse_unknown_names() {
        let actor = ActorView {
            kind: "api_key",
            id: Some("key_01M97R85QM6P3Q9TATV0SX99QJ".into()),
            name: Some("CI".into()),
            display: "API Key: CI".into(),
        };
        let uses = UsesView {
            total: 3,
            valid: 2,
            rejected: 1,
            revoked: 1,
            expired: 0,
            insufficient_scope: 0,
            usage_exceeded: 0,
            rate_limited: 0,
            credits_spent: 0,
        };
        let key = KeyView {
            id: "key_01M97R85QM6P3Q9TATV0SX99QJ".into(),
            name: "CI".into(),
            description: None,
            masked: "klk_abcd…wxyz".into(),
            created_by: "alice".into(),
            created_via: actor.clone(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            scopes: vec!["keys:read", "audit:read"],
            status: "revoked",
            last_used_at: None,
            uses,
            revoked_at: Some("2026-01-02T00:00:00Z".into()),
            revoked_by: Some(actor.clone()),
            revoke_reason: Some("compromised"),
            rotated_from: None,
            rotated_to: None,
            meta: Some(json!({"plan": "pro"})),
            credits: Some(CreditsView {
                remaining: 5,
                refill: Some(RefillView {
                    amount: 10,
                    interval: "monthly",
                    day: Some(31),
                    next_at: "2026-01-31T00:00:00Z".into(),
                }),
            }),
            limits: vec![LimitView {
                name: "burst".into(),
                limit: 10,
                duration: 1000,
            }],
        };
        let text = serde_json::to_string(&key).unwrap();
        let back: KeyView = serde_json::from_str(&text).unwrap();
        assert_eq!(back, key);
        let entry = AuditEntry {
            position: 1,
            seq: 1,
            at: "2026-01-01T00:00:00Z".into(),
            tenant: "acme".into(),
            kind: "AuditRead",
            actor,
            key_id: None,
            details: json!({"what": "list"}),
            hash: "00".into(),
            prev_hash: "00".into(),
        };
        let back: AuditEntry =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(back, entry);
        let mut v = serde_json::to_value(&key).unwrap();
        v["credits"]["refill"]["interval"] = json!("weekly");
        assert!(
            serde_json::from_value::<KeyView>(v).is_err(),
            "an unknown refill interval is refused"
        );
        for (field, bad) in [
            ("status", json!("gone")),
            ("scopes", json!(["keys:read", "root"])),
            ("revoke_reason", json!("bored")),
        ] {
            let mut v = serde_json::to_value(&key).unwrap();
            v[field] = bad;
            assert!(
                serde_json::from_value::<KeyView>(v).is_err(),
                "{field}: an unknown name is refused"
            );
        }
    }

    #[test]
    fn the_hand_written_verify_json_is_serdes() {
        let id = KeyId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let cases = [
            VerifyResponse {
                valid: false,
                outcome: VerifyOutcome::Malformed,
                key_id: None,
                tenant_id: None,
                owner: None,
                scopes: None,
                expires_at: None,
                credits_remaining: None,
                ratelimits: None,
            },
            VerifyResponse {
                valid: true,
                outcome: VerifyOutcome::Valid,
                key_id: Some(KeyIdText(id)),
                tenant_id: Some("acme"),
                owner: Some("alice@example.com"),
                scopes: Some(ScopeList(ScopeSet::DEFAULT)),
                expires_at: Some("2027-01-01T00:00:00Z".into()),
                credits_remaining: Some(0),
                ratelimits: Some(Vec::new()),
            },
            VerifyResponse {
                valid: false,
                outcome: VerifyOutcome::InsufficientScope,
                key_id: Some(KeyIdText(id)),
                tenant_id: Some("t"),
                owner: Some("a \"quoted\" \\ user \u{e9}\u{1F600}"),
                scopes: Some(ScopeList(ScopeSet::EMPTY.with(Scope::KeysRead))),
                expires_at: None,
                credits_remaining: None,
                ratelimits: None,
            },
            VerifyResponse {
                valid: false,
                outcome: VerifyOutcome::RateLimited,
                key_id: Some(KeyIdText(id)),
                tenant_id: Some("t"),
                owner: Some("u"),
                scopes: Some(ScopeList(ScopeSet::DEFAULT)),
                expires_at: None,
                credits_remaining: Some(998),
                ratelimits: Some(vec![
                    RateLimitBody {
                        name: "burst",
                        limit: 10,
                        remaining: 3,
                        reset: "2027-01-01T00:00:00.5Z".into(),
                    },
                    RateLimitBody {
                        name: "per.day_1",
                        limit: 1_000_000,
                        remaining: 0,
                        reset: "2027-01-02T00:00:00Z".into(),
                    },
                ]),
            },
        ];
        for c in &cases {
            assert_eq!(
                String::from_utf8(c.to_json()).unwrap(),
                serde_json::to_string(c).unwrap()
            );
        }
    }
}
