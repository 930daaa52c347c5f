//! Webhook subscriptions: their ids, events, decisions and fold.
//!
//! A subscription is a fact in the tenant's log (`WebhookSubscribed`,
//! `WebhookDeleted`), so "every matching event after the subscription" is
//! exact: a delivery follows the log and sees the subscription at its
//! position. What the URL may point at (HTTPS, no private ranges) needs
//! name resolution, so it is judged by the runtime before the command is
//! decided; here only what needs no I/O is checked. The signing secret is
//! not an input: nothing secret is in a command or an event
//! (docs/adr/0007-webhook-secrets.md).

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

use crate::decide::{CommandError, Principal, invalid};
use crate::event::{Event, EventKind};
use crate::ids::IdError;
use crate::limits::{
    DESCRIPTION_CHARS_MAX, WEBHOOK_EVENT_TYPES_MAX, WEBHOOK_URL_BYTES_MAX, WEBHOOKS_PER_TENANT_MAX,
};
use crate::overlay::TenantView;
use crate::scope::Scope;
use crate::state::TenantState;
use crate::time::Timestamp;

/// A subscription's id: a ULID, shown as `wh_<ulid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WebhookId(Ulid);

impl WebhookId {
    /// The text form's prefix.
    pub const PREFIX: &'static str = "wh_";

    /// From a ULID (made by the caller: the core draws no randomness).
    pub const fn from_ulid(u: Ulid) -> Self {
        WebhookId(u)
    }

    /// From the ULID's 128 bits.
    pub const fn from_u128(v: u128) -> Self {
        WebhookId(Ulid(v))
    }

    /// The ULID's 128 bits.
    pub const fn to_u128(self) -> u128 {
        self.0.0
    }
}

impl FromStr for WebhookId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || {
            IdError(format!(
                "`{}` is not a webhook id (`wh_<ulid>`)",
                s.escape_debug()
            ))
        };
        let body = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        // As for key ids: a first character past `7` would be shifted out.
        if !body.starts_with(|c: char| ('0'..='7').contains(&c)) {
            return Err(bad());
        }
        Ulid::from_string(body).map(WebhookId).map_err(|_| bad())
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0)
    }
}

/// The notices a subscription can ask for, by their Standard Webhooks
/// `type` names.
pub const WEBHOOK_EVENT_TYPES: [&str; 7] = [
    "key.created",
    "key.revoked",
    "key.rotated",
    "key.expiring",
    "key.leaked",
    "user.removed",
    "key.updated",
];

/// A tenant subscribed an endpoint to event types. Carries no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSubscribed {
    /// The subscription.
    pub webhook_id: WebhookId,
    /// Where deliveries go (`https://…`, or `http://` to loopback).
    pub url: String,
    /// The notices it asked for ([`WEBHOOK_EVENT_TYPES`]), sorted, no duplicates.
    pub event_types: Vec<String>,
    /// An optional description.
    pub description: Option<String>,
}

/// A subscription was deleted: nothing after it is delivered to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDeleted {
    /// The subscription.
    pub webhook_id: WebhookId,
}

/// A subscription as the tenant's state holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// Where deliveries go.
    pub url: String,
    /// The notices it asked for.
    pub event_types: Vec<String>,
    /// An optional description.
    pub description: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// The tenant sequence number of its `WebhookSubscribed`.
    pub created_seq: u64,
    /// When it was deleted, if it was.
    pub deleted_at: Option<Timestamp>,
    /// The tenant sequence number of its `WebhookDeleted`, if any.
    pub deleted_seq: Option<u64>,
}

impl Webhook {
    /// Whether it asks for notices of type `ty`.
    pub fn wants(&self, ty: &str) -> bool {
        self.deleted_at.is_none() && self.event_types.iter().any(|t| t == ty)
    }
}

/// Subscribe an endpoint. The caller mints the id and has already judged
/// where the URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeWebhook {
    /// Who asks (needs `webhooks:manage`).
    pub principal: Principal,
    /// The new subscription's id.
    pub webhook_id: WebhookId,
    /// The URL, as given.
    pub url: String,
    /// The notices, as given.
    pub event_types: Vec<String>,
    /// An optional description.
    pub description: Option<String>,
}

/// Delete a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteWebhook {
    /// Who asks (needs `webhooks:manage`).
    pub principal: Principal,
    /// The subscription.
    pub webhook_id: WebhookId,
}

pub(crate) fn subscribe(
    tenant: TenantView<'_>,
    c: &SubscribeWebhook,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::WebhooksManage)?;
    let url = c.url.trim();
    if url.is_empty() || url.len() > WEBHOOK_URL_BYTES_MAX {
        return Err(invalid(
            "url",
            format!("1 to {WEBHOOK_URL_BYTES_MAX} bytes"),
        ));
    }
    if url.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
        return Err(invalid("url", "holds white space or a control character"));
    }
    if c.event_types.is_empty() {
        return Err(invalid("event_types", "name at least one event type"));
    }
    if c.event_types.len() > WEBHOOK_EVENT_TYPES_MAX {
        return Err(invalid(
            "event_types",
            format!("at most {WEBHOOK_EVENT_TYPES_MAX} event types"),
        ));
    }
    let mut types = Vec::with_capacity(c.event_types.len());
    for t in &c.event_types {
        if !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
            return Err(invalid(
                "event_types",
                format!(
                    "unknown event type `{}`; types are {}",
                    t.escape_debug(),
                    WEBHOOK_EVENT_TYPES.join(", ")
                ),
            ));
        }
        types.push(t.clone());
    }
    types.sort();
    types.dedup();
    let description = match c.description.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) if d.chars().count() > DESCRIPTION_CHARS_MAX => {
            return Err(invalid(
                "description",
                format!("at most {DESCRIPTION_CHARS_MAX} characters"),
            ));
        }
        Some(d)
            if d.chars()
                .any(|ch| ch.is_control() && ch != '\n' && ch != '\t') =>
        {
            return Err(invalid("description", "holds a control character"));
        }
        Some(d) => Some(d.to_owned()),
    };
    if tenant.webhooks().contains_key(&c.webhook_id) {
        return Err(CommandError::Duplicate(format!(
            "webhook id {} is taken",
            c.webhook_id
        )));
    }
    let live = tenant
        .webhooks()
        .values()
        .filter(|w| w.deleted_at.is_none())
        .count();
    if live >= WEBHOOKS_PER_TENANT_MAX {
        return Err(CommandError::Limit(format!(
            "a tenant has at most {WEBHOOKS_PER_TENANT_MAX} webhook subscriptions; delete one first"
        )));
    }
    Ok(vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::WebhookSubscribed(WebhookSubscribed {
            webhook_id: c.webhook_id,
            url: url.to_owned(),
            event_types: types,
            description,
        }),
    }])
}

pub(crate) fn delete(
    tenant: TenantView<'_>,
    c: &DeleteWebhook,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::WebhooksManage)?;
    match tenant.webhooks().get(&c.webhook_id) {
        Some(w) if w.deleted_at.is_none() => {}
        _ => return Err(CommandError::WebhookNotFound(c.webhook_id)),
    }
    Ok(vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::WebhookDeleted(WebhookDeleted {
            webhook_id: c.webhook_id,
        }),
    }])
}

/// Folds a subscription event; `Err` (with nothing changed) for one no
/// decision makes: a taken id, a delete of an unknown or deleted one.
pub(crate) fn fold(state: &mut TenantState, seq: u64, event: &Event) -> Result<(), String> {
    match &event.kind {
        EventKind::WebhookSubscribed(e) => {
            if state.webhooks.contains_key(&e.webhook_id) {
                return Err(format!("webhook {} is subscribed twice", e.webhook_id));
            }
            state.webhooks.insert(
                e.webhook_id,
                Webhook {
                    id: e.webhook_id,
                    url: e.url.clone(),
                    event_types: e.event_types.clone(),
                    description: e.description.clone(),
                    created_at: event.at,
                    created_seq: seq,
                    deleted_at: None,
                    deleted_seq: None,
                },
            );
        }
        EventKind::WebhookDeleted(e) => match state.webhooks.get_mut(&e.webhook_id) {
            Some(w) if w.deleted_at.is_none() => {
                w.deleted_at = Some(event.at);
                w.deleted_seq = Some(seq);
            }
            _ => return Err(format!("webhook {} is deleted but not live", e.webhook_id)),
        },
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Command, decide};
    use crate::scope::ScopeSet;
    use crate::state::Ledger;

    fn principal(scopes: ScopeSet) -> Principal {
        let mut p = Principal::operator("acme".parse().unwrap_or_else(|e| panic!("{e}")));
        p.scopes = scopes;
        p
    }

    fn subscribe_cmd(p: Principal, id: u128, types: &[&str]) -> Command {
        Command::SubscribeWebhook(SubscribeWebhook {
            principal: p,
            webhook_id: WebhookId::from_u128(id),
            url: " https://hooks.example.com/x ".into(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            description: Some("  ".into()),
        })
    }

    fn apply_all(ledger: &mut Ledger, events: &[Event]) {
        for e in events {
            let seq = ledger.tenant(&e.tenant).map_or(0, |t| t.version) + 1;
            ledger.apply(seq, e).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn subscribing_needs_the_scope_and_known_types() {
        let ledger = Ledger::new();
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let without = principal(ScopeSet::DEFAULT);
        assert!(matches!(
            decide(&ledger, &subscribe_cmd(without, 1, &["key.revoked"]), now),
            Err(CommandError::Forbidden(_))
        ));
        let p = principal(ScopeSet::ALL);
        for bad in [&[][..], &["key.nope"][..]] {
            assert!(matches!(
                decide(&ledger, &subscribe_cmd(p.clone(), 1, bad), now),
                Err(CommandError::Invalid(_))
            ));
        }
        let events = decide(
            &ledger,
            &subscribe_cmd(p, 1, &["user.removed", "key.revoked", "key.revoked"]),
            now,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let EventKind::WebhookSubscribed(w) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(w.url, "https://hooks.example.com/x");
        assert_eq!(w.event_types, ["key.revoked", "user.removed"]);
        assert_eq!(w.description, None);
    }

    #[test]
    fn delete_once_and_a_limit_on_live_subscriptions() {
        let mut ledger = Ledger::new();
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let p = principal(ScopeSet::ALL);
        for i in 0..WEBHOOKS_PER_TENANT_MAX as u128 {
            let e = decide(
                &ledger,
                &subscribe_cmd(p.clone(), i + 1, &["key.created"]),
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            apply_all(&mut ledger, &e);
        }
        let over = subscribe_cmd(p.clone(), 999, &["key.created"]);
        assert!(matches!(
            decide(&ledger, &over, now),
            Err(CommandError::Limit(_))
        ));
        let del = Command::DeleteWebhook(DeleteWebhook {
            principal: p.clone(),
            webhook_id: WebhookId::from_u128(1),
        });
        let e = decide(&ledger, &del, now).unwrap_or_else(|e| panic!("{e}"));
        apply_all(&mut ledger, &e);
        assert!(matches!(
            decide(&ledger, &del, now),
            Err(CommandError::WebhookNotFound(_))
        ));
        // A slot is free again; a taken id stays taken.
        assert!(decide(&ledger, &over, now).is_ok());
        let taken = subscribe_cmd(p, 2, &["key.created"]);
        assert!(matches!(
            decide(&ledger, &taken, now),
            Err(CommandError::Duplicate(_))
        ));
        let t = ledger
            .tenant(&"acme".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|| panic!("the tenant"));
        let w = &t.webhooks[&WebhookId::from_u128(1)];
        assert_eq!((w.created_seq, w.deleted_seq), (1, Some(21)));
    }

    #[test]
    fn ids_round_trip() {
        let id = WebhookId::from_u128(7);
        assert_eq!(id.to_string().parse::<WebhookId>(), Ok(id));
        assert!(
            "key_01ARZ3NDEKTSV4RRFFQ69G5FAV"
                .parse::<WebhookId>()
                .is_err()
        );
        assert!(
            "wh_81ARZ3NDEKTSV4RRFFQ69G5FAV"
                .parse::<WebhookId>()
                .is_err()
        );
    }
}
