//! What a delivery says: the Standard Webhooks body `{type, timestamp,
//! data}` for an event of the log, or for a derived notice.

use keyledger_core::{Cause, Event, EventKind, KeyRecord, Timestamp};
use serde_json::{Value, json};

/// The notice type and its `data` for an event of the log, if the event is
/// one that subscriptions can ask for. Every event kind is named here, in
/// this one match: a new kind is mapped here and nowhere else.
pub(crate) fn notice(e: &Event) -> Option<(&'static str, Value)> {
    let tenant = e.tenant.as_str();
    match &e.kind {
        EventKind::KeyCreated(c) => Some((
            "key.created",
            json!({
                "tenant_id": tenant,
                "key_id": c.key_id.to_string(),
                "owner": c.owner.as_str(),
                "name": c.name,
                "masked": c.masked,
                "scopes": c.scopes.names(),
                "expires_at": c.expires_at.map(Timestamp::to_rfc3339),
                "rotated_from": c.rotated_from.map(|k| k.to_string()),
                "actor": e.actor.reference(),
            }),
        )),
        EventKind::KeyRevoked(r) => Some((
            "key.revoked",
            json!({
                "tenant_id": tenant,
                "key_id": r.key_id.to_string(),
                "reason": r.reason.as_str(),
                "cause": r.cause.as_ref().map(|c| match c {
                    Cause::UserRemoved { user_id, .. } => json!({"user_removed": user_id.as_str()}),
                }),
                "actor": e.actor.reference(),
            }),
        )),
        EventKind::KeyRotated(r) => Some((
            "key.rotated",
            json!({
                "tenant_id": tenant,
                "key_id": r.key_id.to_string(),
                "new_key_id": r.new_key_id.to_string(),
                "expires_at": r.expires_at.to_rfc3339(),
                "actor": e.actor.reference(),
            }),
        )),
        EventKind::UserRemoved(u) => Some((
            "user.removed",
            json!({
                "tenant_id": tenant,
                "user_id": u.user_id.as_str(),
                "actor": e.actor.reference(),
            }),
        )),
        EventKind::KeyLeaked(l) => Some((
            "key.leaked",
            json!({
                "tenant_id": tenant,
                "key_id": l.key_id.to_string(),
                "source": l.source,
                "url": l.url,
                "reporter": l.reporter.as_text(),
                "actor": e.actor.reference(),
            }),
        )),
        EventKind::KeyUpdated(u) => Some((
            "key.updated",
            json!({
                "tenant_id": tenant,
                "key_id": u.key_id.to_string(),
                "changes": crate::views::key_changes_json(&u.changes),
                "actor": e.actor.reference(),
            }),
        )),
        // Credit reservations, releases and refills are the system's
        // bookkeeping as keys are used, like `KeyUsed`: no notice.
        EventKind::KeyUsed(_)
        | EventKind::AuditRead(_)
        | EventKind::LogRecovered(_)
        | EventKind::WebhookSubscribed(_)
        | EventKind::WebhookDeleted(_)
        | EventKind::CreditsReserved(_)
        | EventKind::CreditsReleased(_)
        | EventKind::CreditsRefilled(_) => None,
    }
}

/// The derived `key.expiring` notice for a key that expires at `expires_at`.
pub(crate) fn expiring(tenant: &str, key: &KeyRecord, expires_at: Timestamp) -> Value {
    json!({
        "tenant_id": tenant,
        "key_id": key.id.to_string(),
        "owner": key.owner.as_str(),
        "name": &*key.name,
        "masked": key.masked.as_str(),
        "expires_at": expires_at.to_rfc3339(),
    })
}

/// The body: `{"type", "timestamp", "data"}`, as bytes (what is signed).
pub(crate) fn body(ty: &str, at: Timestamp, data: Value) -> Vec<u8> {
    let v = json!({ "type": ty, "timestamp": at.to_rfc3339(), "data": data });
    serde_json::to_vec(&v).unwrap_or_else(|e| unreachable!("a JSON value serializes: {e}"))
}
