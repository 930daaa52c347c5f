//! The HTTP API's request and response types. Keys, trail entries and
//! usage rows are the runtime's views (`keyledger_runtime::views`), shared
//! with the CLI; what is only the API's lives here. Request bodies refuse
//! unknown fields.

use std::borrow::Cow;

use keyledger_core::{Day, KeyId, KeyStatus, RevokeReason, Scope, ScopeSet, Timestamp};
use keyledger_runtime::views::{AuditEntry, DailyView, KeyView};
use keyledger_runtime::{Order, SortField, VerifyOutcome};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

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

/// A scope's wire name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
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
}

impl From<ScopeName> for Scope {
    fn from(s: ScopeName) -> Scope {
        match s {
            ScopeName::KeysRead => Scope::KeysRead,
            ScopeName::KeysWrite => Scope::KeysWrite,
            ScopeName::AuditRead => Scope::AuditRead,
            ScopeName::UsageRead => Scope::UsageRead,
            ScopeName::UsersRemove => Scope::UsersRemove,
        }
    }
}

/// Body of `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Where the key lives: 1 to 100 characters after trimming, no control characters.
    #[schema(example = "CI/CD Pipeline", min_length = 1, max_length = 100)]
    pub name: String,
    /// What it is for: at most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// When it stops working on its own (RFC 3339, in the future).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Rfc3339>,
    /// What it may do; none gives every scope but `users:remove`. A key
    /// cannot grant a scope it does not hold.
    #[serde(default)]
    pub scopes: Option<Vec<ScopeName>>,
}

/// Body of `POST /v1/admin/tenants/{tenant}/keys`: the operator mints a key
/// for a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateKeyRequest {
    /// The user who owns the key and whom it acts as.
    #[schema(example = "alice", min_length = 1, max_length = 256)]
    pub user: String,
    /// Where the key lives: 1 to 100 characters after trimming, no control characters.
    #[schema(example = "bootstrap", min_length = 1, max_length = 100)]
    pub name: String,
    /// What it is for: at most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// When it stops working on its own (RFC 3339, in the future).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Rfc3339>,
    /// What it may do; none gives every scope but `users:remove`. The
    /// operator may grant any scope.
    #[serde(default)]
    pub scopes: Option<Vec<ScopeName>>,
}

/// A created key: the secret, shown this once, and the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The secret. It is stored nowhere and cannot be shown again.
    pub key: String,
    /// The key, as lists show it.
    #[serde(flatten)]
    pub view: KeyView,
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
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Rfc3339>,
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys, masked.
    pub keys: Vec<KeyView>,
    /// Active keys of the tenant, whatever the filter.
    pub active_count: usize,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A removed user and the keys revoked with them.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedUser {
    /// The user.
    pub user_id: String,
    /// Every key of theirs that was active, revoked in the same append.
    pub revoked: Vec<String>,
}

/// The presented key.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Its tenant.
    pub tenant_id: String,
    /// The user it acts as.
    pub owner: String,
    /// Its id.
    pub key_id: String,
    /// Its name.
    pub name: String,
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
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse<'a> {
    /// Whether the key works for the scope asked.
    pub valid: bool,
    /// What was found.
    pub outcome: VerifyOutcome,
    /// The key's id.
    #[schema(value_type = Option<String>)]
    pub key_id: Option<KeyIdText>,
    /// The key's tenant.
    pub tenant_id: Option<&'a str>,
    /// The user the key acts as.
    pub owner: Option<&'a str>,
    /// The key's scopes.
    #[schema(value_type = Option<Vec<ScopeName>>)]
    pub scopes: Option<ScopeList>,
    /// The key's expiry.
    pub expires_at: Option<String>,
}

impl VerifyResponse<'_> {
    /// The JSON body, written directly: this is the hot path, and writing
    /// these few fields by hand costs a fraction of the generic serializer.
    /// Byte for byte what `serde_json::to_vec` gives (a test checks it).
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
        out.push(b'}');
        out
    }
}

/// A JSON string (or `null`): verbatim when nothing needs escaping, else
/// through serde_json.
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
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageBody {
    /// Matching events, in log order.
    pub events: Vec<AuditEntry>,
    /// Pass as `cursor` to continue; null when the trail is exhausted.
    pub next_cursor: Option<String>,
}

/// The result of recomputing a tenant's hash chain.
#[derive(Debug, Serialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct StateBody {
    /// The instant the statuses are judged at.
    pub at: String,
    /// The position in the tenant's trail (its sequence number) of the
    /// last event folded (0: none).
    pub position: u64,
    /// Every key that existed then, with its status then.
    pub keys: Vec<KeyView>,
}

/// Per-day usage rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDays {
    /// Days with uses, oldest first.
    pub days: Vec<DailyView>,
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
    /// Where the previous page ended.
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
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub key_id: Option<String>,
    /// Only events by this actor: a user id, a key id, `user:<id>`, `key:<id>`, `operator` or `system`.
    pub actor: Option<String>,
    /// Only these event types, comma-separated: `KeyCreated`, `KeyUsed`,
    /// `KeyRevoked`, `KeyRotated`, `UserRemoved` (naming `KeyUsed` includes usage).
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
    /// Where the previous page ended.
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
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
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
    /// Where the previous page ended.
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
    pub at: String,
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
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
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
    #[param(pattern = r"^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub key_id: Option<String>,
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
}

/// Which nodes a revocation waits for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WaitFor {
    /// This node only.
    #[default]
    ThisNode,
    /// Every live node sharing the log.
    AllNodes,
}

#[cfg(test)]
mod tests {
    use super::*;

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
            },
            VerifyResponse {
                valid: true,
                outcome: VerifyOutcome::Valid,
                key_id: Some(KeyIdText(id)),
                tenant_id: Some("acme"),
                owner: Some("alice@example.com"),
                scopes: Some(ScopeList(ScopeSet::DEFAULT)),
                expires_at: Some("2027-01-01T00:00:00Z".into()),
            },
            VerifyResponse {
                valid: false,
                outcome: VerifyOutcome::InsufficientScope,
                key_id: Some(KeyIdText(id)),
                tenant_id: Some("t"),
                owner: Some("a \"quoted\" \\ user \u{e9}\u{1F600}"),
                scopes: Some(ScopeList(ScopeSet::EMPTY.with(Scope::KeysRead))),
                expires_at: None,
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
