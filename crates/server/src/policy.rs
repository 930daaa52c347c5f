//! Key policy on the wire: the `meta`, `credits` and `limits` fields of a
//! key's create body and of `PATCH /v1/keys/{id}`, and their reading into
//! the core's policy types (`keyledger_core::policy`).
//!
//! Shape errors (a wrong type, an unknown field, a value outside an enum)
//! are the extractor's 400 `invalid_body`, as for every body; values the
//! core's checks refuse (a refill day out of range, two limits of one
//! name, metadata over its size) are 422 `invalid_field`, naming the field
//! in the wire's terms (`credits.refill.day`, `limits[1].name`).
//!
//! A rate limit's `duration` is a whole number of milliseconds, in requests
//! and in answers alike (the CLI reads `1s`, `1m` and sends milliseconds).

use keyledger_core::Timestamp;
use keyledger_core::policy::{
    CREDITS_MAX, Credits, META_BYTES_MAX, META_DEPTH_MAX, Meta, PolicyError,
    RATE_LIMIT_DURATION_MS_MAX, RATE_LIMIT_DURATION_MS_MIN, RATE_LIMIT_LIMIT_MAX, RateLimit,
    Refill, RefillInterval,
};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::wire::{Rfc3339, ScopeName};

/// A key's credits, as a request sets them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsBody {
    /// Valid verifications left; each spends one (or the request's `cost`).
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub remaining: u64,
    /// When the credits are set back to an amount; none: never.
    #[serde(default)]
    pub refill: Option<RefillBody>,
}

/// A refill: at each refill instant (00:00 UTC) the credits are set to
/// `amount`, not added to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillBody {
    /// What the credits are set to: 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    pub amount: u64,
    /// `daily` or `monthly`.
    pub interval: IntervalName,
    /// Monthly only: the day of the month, 1 to 31 (a shorter month
    /// refills on its last day); the 1st when left out.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31)]
    pub day: Option<u8>,
}

/// How often credits are refilled.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntervalName {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month, on `day`, at 00:00 UTC.
    Monthly,
}

impl From<IntervalName> for RefillInterval {
    fn from(i: IntervalName) -> Self {
        match i {
            IntervalName::Daily => RefillInterval::Daily,
            IntervalName::Monthly => RefillInterval::Monthly,
        }
    }
}

/// A named rate limit: at most `limit` verifications per `duration`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// Unique on the key: 1 to 32 of `a-z 0-9 _ . -`.
    #[schema(example = "burst", pattern = r"^[a-z0-9_.-]{1,32}$")]
    pub name: String,
    /// Verifications a window admits: 1 to 10^9.
    #[schema(minimum = 1, maximum = 1_000_000_000_u64)]
    pub limit: u64,
    /// The window, in milliseconds: 100 (0.1 s) to 86400000 (a day).
    #[schema(example = 1000, minimum = 100, maximum = 86_400_000_u64)]
    pub duration: u64,
}

const _: () = assert!(CREDITS_MAX == 1_000_000_000_000);
const _: () = assert!(RATE_LIMIT_LIMIT_MAX == 1_000_000_000);
const _: () = assert!(RATE_LIMIT_DURATION_MS_MIN == 100);
const _: () = assert!(RATE_LIMIT_DURATION_MS_MAX == 86_400_000);

/// The policy fields of a create body, read and checked.
#[derive(Debug, Default)]
pub struct NewPolicy {
    /// `meta`.
    pub meta: Option<Meta>,
    /// `credits`.
    pub credits: Option<Credits>,
    /// `limits` (empty: none).
    pub limits: Vec<RateLimit>,
}

impl NewPolicy {
    /// Reads a create body's `meta`, `credits` and `limits`.
    pub fn read(
        meta: Option<Map<String, Value>>,
        credits: Option<CreditsBody>,
        limits: Option<Vec<LimitBody>>,
    ) -> Result<Self, ApiError> {
        Ok(NewPolicy {
            meta: meta.map(read_meta).transpose()?,
            credits: credits.map(read_credits).transpose()?,
            limits: read_limits(limits.unwrap_or_default())?,
        })
    }
}

fn refused(e: PolicyError) -> ApiError {
    ApiError::field(&e.field, e.message)
}

/// Metadata: an object, re-serialized compactly, at most
/// [`META_BYTES_MAX`] bytes and [`META_DEPTH_MAX`] levels deep.
pub fn read_meta(object: Map<String, Value>) -> Result<Meta, ApiError> {
    let value = Value::Object(object);
    if depth(&value) > META_DEPTH_MAX {
        return Err(ApiError::field(
            "meta",
            format!("at most {META_DEPTH_MAX} levels of nesting (the object itself is one)"),
        ));
    }
    let text = serde_json::to_string(&value)
        .map_err(|e| ApiError::internal(format!("re-serializing meta: {e}")))?;
    if text.len() > META_BYTES_MAX {
        return Err(ApiError::field(
            "meta",
            format!(
                "{} bytes of compact JSON; at most {META_BYTES_MAX}",
                text.len()
            ),
        ));
    }
    Meta::new(text).map_err(refused)
}

/// How deep a JSON value nests: a scalar is 0, `{}` and `[]` are 1.
fn depth(v: &Value) -> usize {
    // Iterative: a client's nesting must not grow the stack (serde_json
    // already refuses more than 128 levels while parsing).
    let mut deepest = 0;
    let mut stack = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Object(o) => {
                deepest = deepest.max(d);
                stack.extend(o.values().map(|c| (c, d + 1)));
            }
            Value::Array(a) => {
                deepest = deepest.max(d);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Credits, checked.
pub fn read_credits(c: CreditsBody) -> Result<Credits, ApiError> {
    let credits = Credits {
        remaining: c.remaining,
        refill: c.refill.map(|r| Refill {
            amount: r.amount,
            interval: r.interval.into(),
            day: r.day,
        }),
    };
    credits.check().map_err(refused)?;
    Ok(credits)
}

/// Rate limits, checked as a key's whole list.
pub fn read_limits(limits: Vec<LimitBody>) -> Result<Vec<RateLimit>, ApiError> {
    let limits: Vec<RateLimit> = limits
        .into_iter()
        .map(|l| RateLimit {
            name: l.name,
            limit: l.limit,
            duration_ms: l.duration,
        })
        .collect();
    RateLimit::check_all(&limits).map_err(refused)?;
    Ok(limits)
}

/// A field of a merge patch: left out (`None`), `null` (`Some(None)`), or
/// a value (`Some(Some(v))`).
pub type Patch<T> = Option<Option<T>>;

/// Reads a present field, `null` included, as `Some` (with
/// `#[serde(default)]`, a field left out stays `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Body of `PATCH /v1/keys/{id}`: JSON merge-patch semantics (RFC 7396). A
/// field left out is unchanged; `null` clears it (where it can be
/// cleared); a value replaces it. At least one field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// A new name: 1 to 100 characters after trimming, no control characters. Not null.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1)]
    pub name: Option<String>,
    /// A new description (at most 500 characters); `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Patch<String>,
    /// New metadata, a JSON object (at most 4096 bytes of compact JSON, 8
    /// levels deep), replacing the old whole; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub meta: Patch<Map<String, Value>>,
    /// A new expiry (RFC 3339, in the future); `null`: never expires.
    /// Later than the current expiry (or none, when it has one) only if
    /// the caller could create a key that never expires.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2099-01-01T00:00:00Z")]
    pub expires_at: Patch<Rfc3339>,
    /// New scopes, replacing the old: only scopes the caller could grant.
    /// Not null, not empty.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<ScopeName>, min_items = 1)]
    pub scopes: Option<Vec<ScopeName>>,
    /// New credits, replacing the old (remaining and refill); `null`:
    /// unlimited.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsBody>)]
    pub credits: Patch<CreditsBody>,
    /// New rate limits, replacing the whole list; `[]` or `null`: none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<LimitBody>>, max_items = 5)]
    pub limits: Patch<Vec<LimitBody>>,
}

/// A change read from an [`UpdateKeyRequest`]: core types, checked as far
/// as the edge can check them (the decision checks the rest against the key).
#[derive(Debug, Default)]
pub struct KeyPatch {
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Patch<String>,
    /// `meta`.
    pub meta: Patch<Meta>,
    /// `expires_at`.
    pub expires_at: Patch<Timestamp>,
    /// `scopes`.
    pub scopes: Option<keyledger_core::ScopeSet>,
    /// `credits`.
    pub credits: Patch<Credits>,
    /// `limits`: `Some(vec![])` clears them.
    pub limits: Option<Vec<RateLimit>>,
}

impl KeyPatch {
    /// The core's command: this change of `key_id`, asked by `principal`.
    pub fn into_update(
        self,
        principal: keyledger_core::Principal,
        key_id: keyledger_core::KeyId,
    ) -> keyledger_core::UpdateKey {
        let mut u = keyledger_core::UpdateKey::new(principal, key_id);
        u.name = self.name;
        u.description = self.description;
        u.meta = self.meta;
        u.expires_at = self.expires_at;
        u.scopes = self.scopes;
        u.credits = self.credits;
        u.limits = self.limits;
        u
    }
}

impl UpdateKeyRequest {
    /// Whether the body names no field at all.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.meta.is_none()
            && self.expires_at.is_none()
            && self.scopes.is_none()
            && self.credits.is_none()
            && self.limits.is_none()
    }

    /// The change, read and checked; a body that names no field is 422.
    pub fn read(self) -> Result<KeyPatch, ApiError> {
        if self.is_empty() {
            return Err(ApiError::field(
                "body",
                "names no field to change: name, description, meta, expires_at, scopes, \
                 credits or limits",
            ));
        }
        Ok(KeyPatch {
            name: self.name,
            description: self.description,
            meta: self
                .meta
                .map(|m| m.map(read_meta).transpose())
                .transpose()?,
            expires_at: self.expires_at.map(|t| t.map(|t| t.0)),
            scopes: self
                .scopes
                .map(|s| s.into_iter().map(keyledger_core::Scope::from).collect()),
            credits: self
                .credits
                .map(|c| c.map(read_credits).transpose())
                .transpose()?,
            limits: self
                .limits
                .map(|l| read_limits(l.unwrap_or_default()))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> Result<KeyPatch, ApiError> {
        serde_json::from_str::<UpdateKeyRequest>(json)
            .map_err(|e| ApiError::field("test", e))?
            .read()
    }

    #[test]
    fn absent_null_and_values_are_told_apart() {
        let p =
            patch(r#"{"description": null, "limits": [], "meta": {"b": 1, "a": [true]}}"#).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.description, Some(None));
        assert_eq!(p.limits, Some(vec![]));
        assert_eq!(p.meta.unwrap().unwrap().as_str(), r#"{"a":[true],"b":1}"#);
        assert_eq!(p.credits, None);
        let p = patch(r#"{"limits": null, "credits": null}"#).unwrap();
        assert_eq!(p.limits, Some(vec![]));
        assert_eq!(p.credits, Some(None));
    }

    #[test]
    fn what_cannot_be_null_or_empty_is_refused() {
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"name": null}"#).is_err());
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"scopes": null}"#).is_err());
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"meta": [1]}"#).is_err());
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"other": 1}"#).is_err());
        let e = patch("{}").unwrap_err();
        assert_eq!(e.status(), 422);
    }

    #[test]
    fn refusals_name_the_field() {
        let message = |json: &str| {
            let e = patch(json).unwrap_err();
            assert_eq!(e.status(), 422, "{json}");
            e.to_string()
        };
        assert!(
            message(r#"{"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "daily", "day": 3}}}"#)
                .contains("credits.refill.day")
        );
        assert!(
            message(r#"{"limits": [{"name": "a", "limit": 1, "duration": 1000}, {"name": "a", "limit": 2, "duration": 1000}]}"#)
                .contains("limits[1].name")
        );
        assert!(
            message(r#"{"limits": [{"name": "a", "limit": 1, "duration": 10}]}"#)
                .contains("limits[0].duration")
        );
        let deep = format!("{{\"meta\": {}1{}}}", "{\"a\":".repeat(9), "}".repeat(9));
        assert!(message(&deep).contains("meta"));
        let big = format!(
            "{{\"meta\": {{\"a\": \"{}\"}}}}",
            "x".repeat(META_BYTES_MAX)
        );
        assert!(message(&big).contains("meta"));
        let ok = format!("{{\"meta\": {}1{}}}", "{\"a\":".repeat(7), "}".repeat(7));
        assert!(patch(&ok).is_ok());
    }
}
