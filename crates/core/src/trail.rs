//! The audit trail is the log seen per tenant; this is its filter (which
//! events a trail read returns). For the evidence that proves the trail,
//! see the `keyledger-audit` crate.

use std::fmt;

use crate::event::Event;
use crate::ids::KeyId;
use crate::time::Timestamp;

/// An event type, as the audit filter names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `KeyCreated`.
    KeyCreated,
    /// `KeyUsed`.
    KeyUsed,
    /// `KeyRevoked`.
    KeyRevoked,
    /// `KeyRotated`.
    KeyRotated,
    /// `UserRemoved`.
    UserRemoved,
    /// `AuditRead`.
    AuditRead,
    /// `LogRecovered`.
    LogRecovered,
    /// `KeyLeaked`.
    KeyLeaked,
    /// `WebhookSubscribed`.
    WebhookSubscribed,
    /// `WebhookDeleted`.
    WebhookDeleted,
    /// `KeyUpdated`.
    KeyUpdated,
    /// `CreditsReserved`.
    CreditsReserved,
    /// `CreditsReleased`.
    CreditsReleased,
    /// `CreditsRefilled`.
    CreditsRefilled,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 14] = [
        EventType::KeyCreated,
        EventType::KeyUsed,
        EventType::KeyRevoked,
        EventType::KeyRotated,
        EventType::UserRemoved,
        EventType::AuditRead,
        EventType::LogRecovered,
        EventType::KeyLeaked,
        EventType::WebhookSubscribed,
        EventType::WebhookDeleted,
        EventType::KeyUpdated,
        EventType::CreditsReserved,
        EventType::CreditsReleased,
        EventType::CreditsRefilled,
    ];

    /// The name, as in the log (`KeyCreated`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::KeyCreated => "KeyCreated",
            EventType::KeyUsed => "KeyUsed",
            EventType::KeyRevoked => "KeyRevoked",
            EventType::KeyRotated => "KeyRotated",
            EventType::UserRemoved => "UserRemoved",
            EventType::AuditRead => "AuditRead",
            EventType::LogRecovered => "LogRecovered",
            EventType::KeyLeaked => "KeyLeaked",
            EventType::WebhookSubscribed => "WebhookSubscribed",
            EventType::WebhookDeleted => "WebhookDeleted",
            EventType::KeyUpdated => "KeyUpdated",
            EventType::CreditsReserved => "CreditsReserved",
            EventType::CreditsReleased => "CreditsReleased",
            EventType::CreditsRefilled => "CreditsRefilled",
        }
    }

    /// Reads a type name: `KeyCreated` or `key_created`.
    pub fn parse(s: &str) -> Option<Self> {
        let folded: String = s
            .chars()
            .filter(|c| *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().to_ascii_lowercase() == folded)
    }

    /// Whether the type is a usage record (`KeyUsed`, and the credit
    /// reservations nodes make and hand back as keys are used): the trail
    /// shows these only on request.
    pub const fn is_usage(self) -> bool {
        matches!(
            self,
            EventType::KeyUsed | EventType::CreditsReserved | EventType::CreditsReleased
        )
    }

    /// The type of an event.
    pub fn of(event: &Event) -> Self {
        event.kind.event_type()
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events of a tenant's trail to show. The default shows every
/// management event; usage records (`KeyUsed`, `CreditsReserved`,
/// `CreditsReleased`: [`EventType::is_usage`]) only on request:
/// `include_usage`, or the type named in `types`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events about this key.
    pub key_id: Option<KeyId>,
    /// Only events by this actor: a user id, a key id, `user:<id>`,
    /// `key:<id>`, `operator` or `system`.
    pub actor: Option<String>,
    /// Only these types (empty: all).
    pub types: Vec<EventType>,
    /// Only events at or after this instant.
    pub from: Option<Timestamp>,
    /// Only events before this instant.
    pub to: Option<Timestamp>,
    /// Include usage records (`KeyUsed`, `CreditsReserved`, `CreditsReleased`).
    pub include_usage: bool,
}

impl AuditFilter {
    /// Whether the event is in the trail this filter selects.
    pub fn matches(&self, event: &Event) -> bool {
        let ty = EventType::of(event);
        let type_ok = if self.types.is_empty() {
            self.include_usage || !ty.is_usage()
        } else {
            // Naming `KeyUsed` among the types is itself a request for it.
            self.types.contains(&ty)
        };
        type_ok
            && self.key_id.is_none_or(|k| event.key_id() == Some(k))
            && self.actor.as_deref().is_none_or(|a| event.actor.matches(a))
            && self.from.is_none_or(|f| event.at >= f)
            && self.to.is_none_or(|t| event.at < t)
    }
}
