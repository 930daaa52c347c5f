//! The HTTP API's request and response types. Every response body the
//! CLI's `--json` prints too (keys, pages, past state, usage rows, removed
//! users, verdicts, chain checks) is the runtime's
//! (`keyledger_runtime::views`), re-exported here; what is only the API's
//! lives here. Request bodies refuse unknown fields.

use std::borrow::Cow;

use keyledger_core::{Day, KeyStatus, RevokeReason, Timestamp};
use keyledger_runtime::{Order, SortField};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use keyledger_runtime::views::{
    AuditPageBody, ChainBody, CreatedKey, KeyIdText, KeyList, RemovedUser, ScopeList, ScopeName,
    StateBody, UsageDays, VerifyResponse,
};

/// An RFC 3339 time in a body or a query: refused as malformed (400) when
/// it does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub Timestamp);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text)
            .map(Rfc3339)
            .map_err(serde::de::Error::custom)
    }
}

/// A UTC day, `YYYY-MM-DD`, in a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayParam(pub Day);

impl<'de> Deserialize<'de> for DayParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Day::parse(&text)
            .map(DayParam)
            .map_err(serde::de::Error::custom)
    }
}

/// Body of `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Where the key lives: 1 to 100 characters after trimming, no control characters.
    #[schema(
        example = "CI/CD Pipeline",
        min_length = 1,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]{0,98}[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// What it is for: at most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// When it stops working on its own (RFC 3339, in the future).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime, example = "2099-01-01T00:00:00Z")]
    pub expires_at: Option<Rfc3339>,
    /// What it may do; none gives every scope but `users:remove`. A key
    /// cannot grant a scope it does not hold.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<ScopeName>>,
    /// Free-form metadata: a JSON object, kept as compact JSON (at most
    /// 4096 bytes, 8 levels deep). Never put a secret here: it is in the log
    /// for good.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"plan": "pro"}))]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// How many valid verifications the key has, and how they come back;
    /// none: unlimited.
    #[serde(default)]
    pub credits: Option<crate::policy::CreditsBody>,
    /// Named rate limits, checked at every verification (at most 5, names unique).
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Option<Vec<crate::policy::LimitBody>>,
}

/// Body of `POST /v1/admin/tenants/{tenant}/keys`: the operator mints a key
/// for a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateKeyRequest {
    /// The user who owns the key and whom it acts as: 1 to 256 characters, not
    /// blank, no control characters.
    #[schema(
        example = "alice",
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub user: String,
    /// Where the key lives: 1 to 100 characters after trimming, no control characters.
    #[schema(
        example = "bootstrap",
        min_length = 1,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]{0,98}[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// What it is for: at most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// When it stops working on its own (RFC 3339, in the future).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime, example = "2099-01-01T00:00:00Z")]
    pub expires_at: Option<Rfc3339>,
    /// What it may do; none gives every scope but `users:remove`. The
    /// operator may grant any scope.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<ScopeName>>,
    /// Free-form metadata: a JSON object, kept as compact JSON (at most
    /// 4096 bytes, 8 levels deep). Never put a secret here: it is in the log
    /// for good.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"plan": "pro"}))]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    /// How many valid verifications the key has, and how they come back;
    /// none: unlimited.
    #[serde(default)]
    pub credits: Option<crate::policy::CreditsBody>,
    /// Named rate limits, checked at every verification (at most 5, names unique).
    #[serde(default)]
    #[schema(max_items = 5)]
    pub limits: Option<Vec<crate::policy::LimitBody>>,
}

/// Why a key is revoked by hand.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReasonName {
    /// Retired.
    #[default]
    Manual,
    /// Leaked or suspected leaked.
    Compromised,
}

impl From<RevokeReasonName> for RevokeReason {
    fn from(r: RevokeReasonName) -> Self {
        match r {
            RevokeReasonName::Manual => RevokeReason::Manual,
            RevokeReasonName::Compromised => RevokeReason::Compromised,
        }
    }
}

/// Body of `POST /v1/keys/{id}/revoke` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// `manual` (the default) or `compromised`.
    #[serde(default)]
    pub reason: Option<RevokeReasonName>,
}

/// Body of `POST /v1/keys/{id}/rotate` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps working, in seconds (default 0: revoked
    /// now; at most 30 days).
    #[serde(default)]
    #[schema(maximum = 2_592_000)]
    pub grace_seconds: Option<u64>,
    /// The new key's expiry (RFC 3339, in the future); none by default.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime, example = "2099-01-01T00:00:00Z")]
    pub expires_at: Option<Rfc3339>,
}

/// The presented key, or the operator token on a tenant route.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Its tenant (for the operator: the `Keyledger-Tenant` header's).
    pub tenant_id: String,
    /// The user it acts as (for the operator: `Keyledger-Act-As`, if sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its id (absent for the operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Its name (absent for the operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `true` for the operator token; absent for a key.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
    /// What it may do.
    #[schema(value_type = Vec<ScopeName>)]
    pub scopes: Vec<&'static str>,
    /// When it expires, if it does.
    pub expires_at: Option<String>,
}

/// Body of `POST /v1/verify`.
// The key is borrowed from the request body (no copy unless it holds JSON
// escapes): this is the hot path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest<'a> {
    /// The key as presented to the API layer: any text.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub key: Cow<'a, str>,
    /// The scope the API layer's request needs, if any.
    #[serde(default)]
    pub scope: Option<ScopeName>,
    /// Credits a valid verification spends from a key with credits
    /// (default 1; 0 checks that some are left and spends none). Keys
    /// without credits ignore it.
    #[serde(default)]
    pub cost: Option<u64>,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
    /// The last applied log position: only with the operator token (it
    /// counts every tenant's events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
}

/// A key's status filter.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusName {
    /// Works.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl From<StatusName> for KeyStatus {
    fn from(s: StatusName) -> Self {
        match s {
            StatusName::Active => KeyStatus::Active,
            StatusName::Expired => KeyStatus::Expired,
            StatusName::Revoked => KeyStatus::Revoked,
        }
    }
}

/// What a key list is sorted by.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortName {
    /// Name, case-insensitively.
    Name,
    /// Creation time (the default).
    CreatedAt,
    /// Last valid use.
    LastUsedAt,
}

impl From<SortName> for SortField {
    fn from(s: SortName) -> Self {
        match s {
            SortName::Name => SortField::Name,
            SortName::CreatedAt => SortField::CreatedAt,
            SortName::LastUsedAt => SortField::LastUsedAt,
        }
    }
}

/// Sort order.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderName {
    /// Smallest first.
    Asc,
    /// Largest first (the default).
    Desc,
}

impl From<OrderName> for Order {
    fn from(o: OrderName) -> Self {
        match o {
            OrderName::Asc => Order::Asc,
            OrderName::Desc => Order::Desc,
        }
    }
}

/// An export's format.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// JSON Lines (`application/x-ndjson`).
    Jsonl,
    /// CSV with a header row (`text/csv`).
    Csv,
}

/// Query of `GET /v1/keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Only keys with this status now.
    #[param(inline)]
    pub status: Option<StatusName>,
    /// Only keys owned or created by this user (or created by this key id, or `operator`).
    pub created_by: Option<String>,
    /// Only keys whose name contains this, case-insensitively.
    pub q: Option<String>,
    /// Sort field (default `created_at`).
    #[param(inline)]
    pub sort: Option<SortName>,
    /// Sort order (default `desc`).
    #[param(inline)]
    pub order: Option<OrderName>,
    /// Where the previous page ended: the `next_cursor` of a page of the
    /// same sort and order (lower-case hex: a long run of letters and digits
    /// holding an upper-case letter is refused as key-shaped, `key_in_url`).
    #[param(
        pattern = r"^6b311f(?:6e|63|75)(?:61|64)1f6b65795f3[0-7](?:3[0-9]|4[1-8abde]|5[0-46-9a]|6[1-8abde]|7[0-46-9a]){25}1f(?:74(?:[0-9a-f]{2})*|69(?:2[bd])?(?:3[0-9])+)$"
    )]
    pub cursor: Option<String>,
    /// Page size: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events about this key (`key_<ulid>`).
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub key_id: Option<String>,
    /// Only events by this actor: a user id, a key id, `user:<id>`, `key:<id>`, `operator` or `system`.
    pub actor: Option<String>,
    /// Only these event types, comma-separated, named as an entry's `type`
    /// (naming `KeyUsed` includes usage).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub types: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<Rfc3339>,
    /// Only events before this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<Rfc3339>,
    /// Include `KeyUsed` events (default false).
    pub include_usage: Option<bool>,
    /// Where the previous page ended: a page's `next_cursor` (`s<position>`).
    #[param(pattern = r"^s\+?[0-9]+$")]
    pub cursor: Option<String>,
    /// Page size: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/audit/export`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditExportQuery {
    /// `jsonl` (the default) or `csv`.
    #[param(inline)]
    pub format: Option<ExportFormat>,
    /// Only events about this key (`key_<ulid>`).
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub key_id: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only these event types, comma-separated.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub types: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<Rfc3339>,
    /// Only events before this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<Rfc3339>,
    /// Include `KeyUsed` events (default false).
    pub include_usage: Option<bool>,
}

/// A page request.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Where the previous page ended: a page's `next_cursor` (`s<position>`).
    #[param(pattern = r"^s\+?[0-9]+$")]
    pub cursor: Option<String>,
    /// Page size: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/state`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// An RFC 3339 instant, or a position in the tenant's trail: its
    /// sequence number, a whole number (`0`: before its first event).
    #[param(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*(?:\+?[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2}))[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub at: String,
    /// Where the previous page ended: a page's `next_cursor`.
    #[param(pattern = r"^k[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Keys per page: 1 to 1000, each folded from its own events (the
    /// per-key index). Without it, every key of the tenant, by a replay of
    /// its trail up to the point in time: a cost that grows with the trail.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First day, `YYYY-MM-DD` (default: 29 days before today, UTC).
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<DayParam>,
    /// Last day, `YYYY-MM-DD` (default: today, UTC).
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<DayParam>,
    /// One key's rows instead of the tenant's (`key_<ulid>`).
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub key_id: Option<String>,
}

/// Query of `GET /v1/usage/summary`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Days, ending today (UTC): 1 to 366 (default 30).
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
}

/// Query of `GET /v1/usage/export`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageExportQuery {
    /// `csv` (the default) or `jsonl`.
    #[param(inline)]
    pub format: Option<ExportFormat>,
    /// First day, `YYYY-MM-DD` (default: 1970-01-01).
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<DayParam>,
    /// Last day, `YYYY-MM-DD` (default: today, UTC).
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<DayParam>,
    /// One key's rows instead of the tenant's (`key_<ulid>`).
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub key_id: Option<String>,
}

/// Query of `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// `true`: the answer also holds `receipt`, the receipt of the
    /// rotation's last event (C2SP tlog-proof, as `GET /v1/audit/receipt`
    /// serves it) when a checkpoint already covers it, else its position,
    /// where to fetch it and when. Never waits for a witness.
    pub receipt: Option<bool>,
}

/// Query of `POST /v1/keys/{id}/revoke`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// `all-nodes`: answer only once every live node sharing the log
    /// (PostgreSQL) refuses the key; 504 `not_confirmed` when they do not
    /// within `wait_ms` (the key is revoked all the same). `this-node`
    /// (the default): answer once this node refuses it; the others follow
    /// within the bound in docs/operations.md.
    #[param(inline)]
    pub wait: Option<WaitFor>,
    /// With `wait=all-nodes`: how long to wait, in milliseconds, 1 to
    /// 20000 (default 10000: longer than a stopped node takes to stop
    /// counting as live).
    #[param(minimum = 1, maximum = 20000)]
    pub wait_ms: Option<u64>,
    /// `true`: the answer also holds `receipt`, the revocation's receipt
    /// (a C2SP tlog-proof, as `GET /v1/audit/receipt` serves it) when a
    /// checkpoint already covers it, else its position, where to fetch it
    /// and when (`retry_after_seconds`). Never waits for a witness.
    pub receipt: Option<bool>,
}

/// Which nodes a revocation waits for (`this-node` when not given).
///
/// `all-nodes` is listed first: generated requests (schemathesis) take an
/// enum's first value, and `wait_ms` is accepted only with `all-nodes`, a
/// rule between two parameters that OpenAPI cannot state.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WaitFor {
    /// Every live node sharing the log.
    AllNodes,
    /// This node only.
    #[default]
    ThisNode,
}
