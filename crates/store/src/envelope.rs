//! The stored form of events: a versioned schema, separate from the core
//! types (docs/style.md, *Serialization at the edges*).
//!
//! An encoded event is one version byte followed by the postcard encoding of
//! that version's schema. The tenant is not in the payload: it lives in the
//! record beside it and is covered by the chain hash.
//!
//! | version | schema | written by |
//! |---|---|---|
//! | 1 | [`v1::EventV1`] | 0.1.0 |
//! | 2 | [`v2::EventV2`]: `AuditRead` with a count, ranges and a window; `LogRecovered`; `KeyLeaked` | after 0.1.0 |
//! | 3 | [`v3::EventV3`]: version 2 (`KeyLeaked` included) plus `WebhookSubscribed` and `WebhookDeleted` | after 0.1.0 |
//! | 4 | [`v4::EventV4`]: version 3 with `KeyCreated` carrying a key's policy and `KeyUsed` six outcomes and the credits spent, plus `KeyUpdated`, `CreditsReserved`, `CreditsReleased`, `CreditsRefilled` | after 0.1.0 |
//!
//! Rules for changing the stored form:
//!
//! * Never edit a released schema module. A change is a new module (`v3`),
//!   a new [`VERSION_CURRENT`], and an upcast from every older version to the
//!   current core [`Event`] in [`decode`].
//! * The committed fixtures `tests/fixtures/v<N>-*.bin` must keep decoding
//!   to the events the fixture tests build in code (version-1 `AuditRead`s
//!   upcast to one read each).
//!
//! Decoding never panics: bad bytes, unknown enum tags, out-of-range times,
//! unknown scope bits, ids that no longer parse and an `AuditRead` no
//! decision records are all a [`DecodeError`].

use keyledger_core::{Event, TenantId};

/// The version [`encode`] writes.
pub const VERSION_CURRENT: u8 = 4;

/// Stored bytes are not an event this release can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all: not even a version byte.
    #[error("empty payload: no version byte")]
    Empty,
    /// A version this release does not know (written by a newer release, or
    /// damaged).
    #[error("unknown payload version {0} (this release reads 1 to {VERSION_CURRENT})")]
    UnknownVersion(u8),
    /// The bytes do not follow the version's schema.
    #[error("payload version {version} is malformed: {message}")]
    Malformed {
        /// The version byte.
        version: u8,
        /// What the decoder found.
        message: String,
    },
    /// The bytes follow the schema but a field holds a value no event can
    /// hold (an id that does not parse, a time out of range, an unknown
    /// scope bit).
    #[error("payload version {version} holds an invalid {field}: {message}")]
    Invalid {
        /// The version byte.
        version: u8,
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        message: String,
    },
}

/// Encodes an event in the current version. The tenant is not included.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(event, &mut out);
    out
}

/// Appends the encoding of `event` (current version) to `out`, so a caller
/// can reuse one buffer across many events.
pub fn encode_into(event: &Event, out: &mut Vec<u8>) {
    out.push(VERSION_CURRENT);
    let schema = v4::EventV4::from_core(event);
    let buf = std::mem::take(out);
    *out = match postcard::to_extend(&schema, buf) {
        Ok(buf) => buf,
        // postcard writing into a Vec fails only for sequences of unknown
        // length, which this schema does not have.
        Err(e) => unreachable!("postcard cannot fail writing the v4 schema into a Vec: {e}"),
    };
}

/// The bytes version `version` stores for `event`, if that version can hold
/// it: what chain verification compares a stored payload of that version
/// with, so one event has one stored form in each version.
pub fn encode_as(event: &Event, version: u8) -> Option<Vec<u8>> {
    match version {
        VERSION_CURRENT => Some(encode(event)),
        3 => {
            let schema = v3::EventV3::try_from_core(event)?;
            let mut out = vec![3];
            out.extend(postcard::to_stdvec(&schema).ok()?);
            Some(out)
        }
        2 => {
            let schema = v2::EventV2::try_from_core(event)?;
            let mut out = vec![2];
            out.extend(postcard::to_stdvec(&schema).ok()?);
            Some(out)
        }
        1 => {
            let schema = v1::EventV1::from_core(event)?;
            let mut out = vec![1];
            out.extend(postcard::to_stdvec(&schema).ok()?);
            Some(out)
        }
        _ => None,
    }
}

/// Decodes stored bytes of any known version into the current core event of
/// `tenant`, upcasting older versions.
pub fn decode(tenant: &TenantId, bytes: &[u8]) -> Result<Event, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    match version {
        // Version 1 upcasts straight to the core type (`v1::KindV1::into_core`).
        1 => v1::decode(tenant, body),
        2 => v2::decode(tenant, body),
        3 => v3::decode(tenant, body),
        4 => v4::decode(tenant, body),
        other => Err(DecodeError::UnknownVersion(other)),
    }
}

/// Reads exactly one `T` from a version's body (the bytes after the
/// version byte): bytes that do not follow the schema, or bytes left
/// after it, are [`DecodeError::Malformed`].
fn read_exact<'a, T: serde::Deserialize<'a>>(
    version: u8,
    body: &'a [u8],
) -> Result<T, DecodeError> {
    let (schema, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
            version,
            message: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed {
            version,
            message: format!("{} bytes after the event", rest.len()),
        });
    }
    Ok(schema)
}

/// An older version's error, reported for the `version` payload it was in.
fn reported_as(version: u8, e: DecodeError) -> DecodeError {
    match e {
        DecodeError::Invalid { field, message, .. } => DecodeError::Invalid {
            version,
            field,
            message,
        },
        DecodeError::Malformed { message, .. } => DecodeError::Malformed { version, message },
        other @ (DecodeError::Empty | DecodeError::UnknownVersion(_)) => other,
    }
}

/// Version 1 of the stored schema. Frozen: never reorder fields or enum
/// variants, never change a type. A change is a new version.
pub mod v1 {
    use std::str::FromStr;

    use keyledger_core::{
        Actor, AuditRead, AuditReadKind, Cause, Event, EventKind, KeyCreated, KeyId, KeyRevoked,
        KeyRotated, KeyUsed, RevokeReason, ScopeSet, SecretHash, SeqRange, TenantId, Timestamp,
        UseCounts, UserId, UserRemoved,
    };
    use serde::{Deserialize, Serialize};

    use super::DecodeError;

    const VERSION: u8 = 1;

    /// An event, minus its tenant. Times are microseconds since the Unix
    /// epoch; key ids are the ULID's 128 bits; user ids are text.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventV1<'a> {
        /// When it was decided.
        pub at: i64,
        /// Who did it.
        #[serde(borrow)]
        pub actor: ActorV1<'a>,
        /// What happened.
        #[serde(borrow)]
        pub kind: KindV1<'a>,
    }

    /// Who did something.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ActorV1<'a> {
        /// A user.
        User {
            /// The user id.
            id: &'a str,
        },
        /// An API key acting as its owner.
        ApiKey {
            /// The key id.
            key_id: u128,
            /// The key's name when it acted.
            name: &'a str,
            /// The key's owner.
            owner: &'a str,
        },
        /// The operator.
        Operator,
        /// keyledger itself.
        System,
    }

    /// What happened.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KindV1<'a> {
        /// A key exists.
        KeyCreated(#[serde(borrow)] KeyCreatedV1<'a>),
        /// A key was presented.
        KeyUsed(KeyUsedV1),
        /// A key was revoked.
        KeyRevoked(#[serde(borrow)] KeyRevokedV1<'a>),
        /// A key was rotated.
        KeyRotated(KeyRotatedV1),
        /// A user was removed.
        UserRemoved(#[serde(borrow)] UserRemovedV1<'a>),
        /// The audit trail was read. Added at the end of the enum before
        /// any release: postcard tags variants by index, so every record
        /// written before it decodes unchanged.
        AuditRead(AuditReadV1),
    }

    /// The audit trail was read.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AuditReadV1 {
        /// First tenant sequence number covered.
        pub from_seq: u64,
        /// Last tenant sequence number covered.
        pub to_seq: u64,
        /// What was read.
        pub what: AuditReadKindV1,
    }

    /// What kind of audit read.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum AuditReadKindV1 {
        /// A page of the trail.
        List,
        /// An export.
        Export,
        /// An evidence bundle.
        Bundle,
        /// A proof or a checkpoint.
        Proof,
    }

    /// A key exists.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyCreatedV1<'a> {
        /// The key id.
        pub key_id: u128,
        /// The owner's user id.
        pub owner: &'a str,
        /// The name.
        pub name: &'a str,
        /// The description.
        pub description: Option<&'a str>,
        /// The expiry, in microseconds.
        pub expires_at: Option<i64>,
        /// The scope bits.
        pub scopes: u8,
        /// SHA-256 of the secret.
        pub secret_hash: [u8; 32],
        /// The masked form.
        pub masked: &'a str,
        /// The key this one replaces.
        pub rotated_from: Option<u128>,
    }

    /// A key was presented.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyUsedV1 {
        /// The key id.
        pub key_id: u128,
        /// The window's first instant.
        pub window_start: i64,
        /// The window's end (exclusive).
        pub window_end: i64,
        /// The last valid use.
        pub last_valid_at: Option<i64>,
        /// Counts: valid, revoked, expired, insufficient scope.
        pub counts: [u64; 4],
    }

    /// A key was revoked.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyRevokedV1<'a> {
        /// The key id.
        pub key_id: u128,
        /// Why.
        pub reason: ReasonV1,
        /// The cascade's cause.
        #[serde(borrow)]
        pub cause: Option<CauseV1<'a>>,
    }

    /// Why a key was revoked.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ReasonV1 {
        /// Manual.
        Manual,
        /// Its owner was removed.
        UserRemoved,
        /// Rotated without grace.
        Rotated,
        /// Exposed.
        Compromised,
    }

    /// What caused a cascade.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum CauseV1<'a> {
        /// A `UserRemoved` event.
        UserRemoved {
            /// The removed user.
            user_id: &'a str,
            /// Its tenant sequence number.
            seq: u64,
        },
    }

    /// A key was rotated.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyRotatedV1 {
        /// The old key.
        pub key_id: u128,
        /// The new key.
        pub new_key_id: u128,
        /// The end of the grace period.
        pub expires_at: i64,
    }

    /// A user was removed.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserRemovedV1<'a> {
        /// The user.
        pub user_id: &'a str,
    }

    impl<'a> EventV1<'a> {
        /// The stored form of a core event (borrowing its text), if version
        /// 1 can hold it: an `AuditRead` of one read of at most one range
        /// at the event's own time (what version 1 wrote), nothing else of
        /// that kind.
        pub fn from_core(e: &'a Event) -> Option<Self> {
            Some(EventV1 {
                at: e.at.as_micros(),
                actor: ActorV1::from_core(&e.actor),
                kind: KindV1::from_core(&e.kind, e.at)?,
            })
        }

        /// The core event this stored form describes, for `tenant`.
        pub fn into_core(self, tenant: &TenantId) -> Result<Event, DecodeError> {
            let at = time("at", self.at)?;
            let kind = self.kind.into_core(at)?;
            Ok(Event {
                tenant: tenant.clone(),
                at,
                actor: self.actor.into_core()?,
                kind,
            })
        }
    }

    impl<'a> ActorV1<'a> {
        /// The stored form of an actor (borrowing its text).
        pub fn from_core(actor: &'a Actor) -> Self {
            match actor {
                Actor::User { id } => ActorV1::User { id: id.as_str() },
                Actor::ApiKey {
                    key_id,
                    name,
                    owner,
                } => ActorV1::ApiKey {
                    key_id: key_id.to_u128(),
                    name,
                    owner: owner.as_str(),
                },
                Actor::Operator => ActorV1::Operator,
                Actor::System => ActorV1::System,
            }
        }

        /// The actor this stored form describes.
        pub fn into_core(self) -> Result<Actor, DecodeError> {
            Ok(match self {
                ActorV1::User { id } => Actor::User {
                    id: user("actor.id", id)?,
                },
                ActorV1::ApiKey {
                    key_id,
                    name,
                    owner,
                } => Actor::ApiKey {
                    key_id: KeyId::from_u128(key_id),
                    name: name.to_owned(),
                    owner: user("actor.owner", owner)?,
                },
                ActorV1::Operator => Actor::Operator,
                ActorV1::System => Actor::System,
            })
        }
    }

    impl<'a> KindV1<'a> {
        /// The stored form of an event's kind, if version 1 can hold it
        /// (see [`EventV1::from_core`]); `at` is the event's time.
        pub fn from_core(kind: &'a EventKind, at: Timestamp) -> Option<Self> {
            Some(match kind {
                // A key policy came in version 4.
                EventKind::KeyCreated(c)
                    if c.meta.is_some() || c.credits.is_some() || !c.limits.is_empty() =>
                {
                    return None;
                }
                EventKind::KeyUsed(u)
                    if u.counts.usage_exceeded != 0
                        || u.counts.rate_limited != 0
                        || u.counts.credits_spent != 0 =>
                {
                    return None;
                }
                EventKind::KeyCreated(c) => KindV1::KeyCreated(KeyCreatedV1 {
                    key_id: c.key_id.to_u128(),
                    owner: c.owner.as_str(),
                    name: &c.name,
                    description: c.description.as_deref(),
                    expires_at: c.expires_at.map(Timestamp::as_micros),
                    scopes: c.scopes.bits(),
                    secret_hash: c.secret_hash.0,
                    masked: &c.masked,
                    rotated_from: c.rotated_from.map(KeyId::to_u128),
                }),
                EventKind::KeyUsed(u) => KindV1::KeyUsed(KeyUsedV1 {
                    key_id: u.key_id.to_u128(),
                    window_start: u.window_start.as_micros(),
                    window_end: u.window_end.as_micros(),
                    last_valid_at: u.last_valid_at.map(Timestamp::as_micros),
                    counts: [
                        u.counts.valid,
                        u.counts.revoked,
                        u.counts.expired,
                        u.counts.insufficient_scope,
                    ],
                }),
                EventKind::KeyRevoked(r) => KindV1::KeyRevoked(KeyRevokedV1 {
                    key_id: r.key_id.to_u128(),
                    reason: match r.reason {
                        RevokeReason::Manual => ReasonV1::Manual,
                        RevokeReason::UserRemoved => ReasonV1::UserRemoved,
                        RevokeReason::Rotated => ReasonV1::Rotated,
                        RevokeReason::Compromised => ReasonV1::Compromised,
                    },
                    cause: r.cause.as_ref().map(|c| match c {
                        Cause::UserRemoved { user_id, seq } => CauseV1::UserRemoved {
                            user_id: user_id.as_str(),
                            seq: *seq,
                        },
                    }),
                }),
                EventKind::KeyRotated(r) => KindV1::KeyRotated(KeyRotatedV1 {
                    key_id: r.key_id.to_u128(),
                    new_key_id: r.new_key_id.to_u128(),
                    expires_at: r.expires_at.as_micros(),
                }),
                EventKind::UserRemoved(u) => KindV1::UserRemoved(UserRemovedV1 {
                    user_id: u.user_id.as_str(),
                }),
                EventKind::AuditRead(r) => {
                    // Version 1 recorded one read, of one range (`0..=0`:
                    // none), at the event's time.
                    let (from_seq, to_seq) = match r.ranges.as_slice() {
                        [] => (0, 0),
                        [one] if (one.from, one.to) != (0, 0) => (one.from, one.to),
                        _ => return None,
                    };
                    if r.count != 1 || r.window_start != at || r.window_end != at {
                        return None;
                    }
                    KindV1::AuditRead(AuditReadV1 {
                        from_seq,
                        to_seq,
                        what: AuditReadKindV1::from_core(r.what),
                    })
                }
                // Added after version 1.
                EventKind::LogRecovered(_)
                | EventKind::KeyLeaked(_)
                | EventKind::WebhookSubscribed(_)
                | EventKind::WebhookDeleted(_)
                | EventKind::KeyUpdated(_)
                | EventKind::CreditsReserved(_)
                | EventKind::CreditsReleased(_)
                | EventKind::CreditsRefilled(_) => return None,
            })
        }

        /// The core kind this stored form describes; `at` is the event's
        /// time. A version-1 `AuditRead` is upcast to one read (`count` 1)
        /// of `from_seq..=to_seq` (no range for `0..=0`) at `at`.
        pub fn into_core(self, at: Timestamp) -> Result<EventKind, DecodeError> {
            Ok(match self {
                KindV1::KeyCreated(c) => EventKind::KeyCreated(KeyCreated {
                    key_id: KeyId::from_u128(c.key_id),
                    owner: user("owner", c.owner)?,
                    name: c.name.to_owned(),
                    description: c.description.map(str::to_owned),
                    expires_at: c.expires_at.map(|t| time("expires_at", t)).transpose()?,
                    scopes: ScopeSet::from_bits(c.scopes).ok_or_else(|| DecodeError::Invalid {
                        version: VERSION,
                        field: "scopes",
                        message: format!("bits {:#010b} name no scope", c.scopes),
                    })?,
                    secret_hash: SecretHash(c.secret_hash),
                    masked: c.masked.to_owned(),
                    rotated_from: c.rotated_from.map(KeyId::from_u128),
                    meta: None,
                    credits: None,
                    limits: Vec::new(),
                }),
                KindV1::KeyUsed(u) => EventKind::KeyUsed(KeyUsed {
                    key_id: KeyId::from_u128(u.key_id),
                    window_start: time("window_start", u.window_start)?,
                    window_end: time("window_end", u.window_end)?,
                    last_valid_at: u
                        .last_valid_at
                        .map(|t| time("last_valid_at", t))
                        .transpose()?,
                    counts: UseCounts::from_array([
                        u.counts[0],
                        u.counts[1],
                        u.counts[2],
                        u.counts[3],
                        0,
                        0,
                    ]),
                }),
                KindV1::KeyRevoked(r) => EventKind::KeyRevoked(KeyRevoked {
                    key_id: KeyId::from_u128(r.key_id),
                    reason: match r.reason {
                        ReasonV1::Manual => RevokeReason::Manual,
                        ReasonV1::UserRemoved => RevokeReason::UserRemoved,
                        ReasonV1::Rotated => RevokeReason::Rotated,
                        ReasonV1::Compromised => RevokeReason::Compromised,
                    },
                    cause: match r.cause {
                        None => None,
                        Some(CauseV1::UserRemoved { user_id, seq }) => Some(Cause::UserRemoved {
                            user_id: user("cause.user_id", user_id)?,
                            seq,
                        }),
                    },
                }),
                KindV1::KeyRotated(r) => EventKind::KeyRotated(KeyRotated {
                    key_id: KeyId::from_u128(r.key_id),
                    new_key_id: KeyId::from_u128(r.new_key_id),
                    expires_at: time("expires_at", r.expires_at)?,
                }),
                KindV1::UserRemoved(u) => EventKind::UserRemoved(UserRemoved {
                    user_id: user("user_id", u.user_id)?,
                }),
                KindV1::AuditRead(r) => {
                    if r.from_seq > r.to_seq {
                        return Err(DecodeError::Invalid {
                            version: VERSION,
                            field: "from_seq",
                            message: format!("{} is after to_seq {}", r.from_seq, r.to_seq),
                        });
                    }
                    let range = (r.to_seq != 0).then_some(SeqRange {
                        from: r.from_seq,
                        to: r.to_seq,
                    });
                    let mut read = AuditRead::one(r.what.into_core(), None, at);
                    read.ranges.extend(range);
                    EventKind::AuditRead(read)
                }
            })
        }
    }

    impl AuditReadKindV1 {
        /// The stored form of a kind of read.
        pub fn from_core(what: AuditReadKind) -> Self {
            match what {
                AuditReadKind::List => AuditReadKindV1::List,
                AuditReadKind::Export => AuditReadKindV1::Export,
                AuditReadKind::Bundle => AuditReadKindV1::Bundle,
                AuditReadKind::Proof => AuditReadKindV1::Proof,
            }
        }

        /// The kind of read this stored form describes.
        pub fn into_core(self) -> AuditReadKind {
            match self {
                AuditReadKindV1::List => AuditReadKind::List,
                AuditReadKindV1::Export => AuditReadKind::Export,
                AuditReadKindV1::Bundle => AuditReadKind::Bundle,
                AuditReadKindV1::Proof => AuditReadKind::Proof,
            }
        }
    }

    /// Decodes a version-1 body (the bytes after the version byte).
    pub fn decode(tenant: &TenantId, body: &[u8]) -> Result<Event, DecodeError> {
        let (schema, rest) =
            postcard::take_from_bytes::<EventV1<'_>>(body).map_err(|e| DecodeError::Malformed {
                version: VERSION,
                message: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed {
                version: VERSION,
                message: format!("{} bytes after the event", rest.len()),
            });
        }
        schema.into_core(tenant)
    }

    fn user(field: &'static str, s: &str) -> Result<UserId, DecodeError> {
        UserId::from_str(s).map_err(|e| DecodeError::Invalid {
            version: VERSION,
            field,
            message: e.to_string(),
        })
    }

    /// A stored time; one the core would clamp is refused, so what is
    /// decoded is exactly what was stored.
    fn time(field: &'static str, micros: i64) -> Result<Timestamp, DecodeError> {
        time_of(VERSION, field, micros)
    }

    /// [`time`] for any version's fields.
    pub(super) fn time_of(
        version: u8,
        field: &'static str,
        micros: i64,
    ) -> Result<Timestamp, DecodeError> {
        let t = Timestamp::from_micros(micros);
        if t.as_micros() == micros {
            Ok(t)
        } else {
            Err(DecodeError::Invalid {
                version,
                field,
                message: format!("{micros} µs is outside 1970..9999"),
            })
        }
    }
}

/// Version 2 of the stored schema: version 1 with `AuditRead` recording the
/// reads of a window (a count, the union of the ranges read, the window).
/// Every other kind, and the actor, keep their version-1 types, variant
/// indices and bytes. Frozen: never reorder fields or enum variants, never
/// change a type. A change is a new version.
pub mod v2 {
    use keyledger_core::{
        AuditRead, Event, EventKind, KeyId, KeyLeaked, LeakReporter, LogRecovered, SeqRange,
        TenantId, Timestamp,
    };
    use serde::{Deserialize, Serialize};

    use super::DecodeError;
    use super::v1::{
        ActorV1, AuditReadKindV1, KeyCreatedV1, KeyRevokedV1, KeyRotatedV1, KeyUsedV1, KindV1,
        UserRemovedV1,
    };

    const VERSION: u8 = 2;

    /// An event, minus its tenant (as [`super::v1::EventV1`]).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventV2<'a> {
        /// When it was decided, in microseconds since the Unix epoch.
        pub at: i64,
        /// Who did it.
        #[serde(borrow)]
        pub actor: ActorV1<'a>,
        /// What happened.
        #[serde(borrow)]
        pub kind: KindV2<'a>,
    }

    /// What happened: [`KindV1`]'s variants, in its order, with
    /// `AuditRead` in its version-2 form.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KindV2<'a> {
        /// A key exists.
        KeyCreated(#[serde(borrow)] KeyCreatedV1<'a>),
        /// A key was presented.
        KeyUsed(KeyUsedV1),
        /// A key was revoked.
        KeyRevoked(#[serde(borrow)] KeyRevokedV1<'a>),
        /// A key was rotated.
        KeyRotated(KeyRotatedV1),
        /// A user was removed.
        UserRemoved(#[serde(borrow)] UserRemovedV1<'a>),
        /// The audit trail was read, once or many times.
        AuditRead(AuditReadV2),
        /// A new checkpoint epoch started after a loss (`keyledger recover`).
        LogRecovered(#[serde(borrow)] LogRecoveredV2<'a>),
        /// A key's secret was reported leaked. Added at the end before
        /// version 2 was released, as `LogRecovered` was: postcard tags
        /// variants by index, so every record written before decodes
        /// unchanged.
        KeyLeaked(#[serde(borrow)] KeyLeakedV2<'a>),
    }

    /// A key's secret was reported leaked.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyLeakedV2<'a> {
        /// The key id.
        pub key_id: u128,
        /// Where it was found, in the reporter's words.
        pub source: Option<&'a str>,
        /// The address where it was found.
        pub url: Option<&'a str>,
        /// Who reported it.
        #[serde(borrow)]
        pub reporter: LeakReporterV2<'a>,
    }

    /// Who reported a leaked key.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum LeakReporterV2<'a> {
        /// The operator.
        Operator,
        /// A key of the same tenant.
        Tenant,
        /// A key of another tenant.
        OtherTenant,
        /// A secret-scanning partner, by its configured name.
        Partner(&'a str),
    }

    impl<'a> KeyLeakedV2<'a> {
        /// The stored form of a core `KeyLeaked` (borrowing its text).
        pub fn from_core(e: &'a KeyLeaked) -> Self {
            KeyLeakedV2 {
                key_id: e.key_id.to_u128(),
                source: e.source.as_deref(),
                url: e.url.as_deref(),
                reporter: match &e.reporter {
                    LeakReporter::Operator => LeakReporterV2::Operator,
                    LeakReporter::Tenant => LeakReporterV2::Tenant,
                    LeakReporter::OtherTenant => LeakReporterV2::OtherTenant,
                    LeakReporter::Partner(name) => LeakReporterV2::Partner(name),
                },
            }
        }

        /// The core `KeyLeaked` this stored form describes.
        pub fn into_core(self) -> KeyLeaked {
            KeyLeaked {
                key_id: KeyId::from_u128(self.key_id),
                source: self.source.map(str::to_owned),
                url: self.url.map(str::to_owned),
                reporter: match self.reporter {
                    LeakReporterV2::Operator => LeakReporter::Operator,
                    LeakReporterV2::Tenant => LeakReporter::Tenant,
                    LeakReporterV2::OtherTenant => LeakReporter::OtherTenant,
                    LeakReporterV2::Partner(name) => LeakReporter::Partner(name.to_owned()),
                },
            }
        }
    }

    /// A tenant's log lost what a signed checkpoint covered; a new
    /// checkpoint epoch starts.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LogRecoveredV2<'a> {
        /// The new epoch (2 or more).
        pub epoch: u64,
        /// The origin of the epoch that ends.
        pub old_origin: &'a str,
        /// Its newest signed checkpoint's size.
        pub signed_size: u64,
        /// Its root.
        pub signed_root: [u8; 32],
        /// The tenant's events in the log when recovered.
        pub recovered_size: u64,
        /// How many of them the old checkpoints still vouch for.
        pub agreed_size: u64,
        /// The operator's reason.
        pub reason: &'a str,
    }

    /// The audit trail was read: the reads of one actor and kind in one window.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AuditReadV2 {
        /// What was read.
        pub what: AuditReadKindV1,
        /// How many reads (at least 1).
        pub count: u64,
        /// The union of the sequence numbers read, `(from, to)` inclusive,
        /// in order, disjoint and not touching.
        pub ranges: Vec<(u64, u64)>,
        /// The first read, in microseconds.
        pub window_start: i64,
        /// The last read, in microseconds.
        pub window_end: i64,
    }

    impl<'a> EventV2<'a> {
        /// The stored form of a core event (borrowing its text), if
        /// version 2 can hold it (the webhook kinds came in version 3, key
        /// policies in version 4).
        pub fn try_from_core(e: &'a Event) -> Option<Self> {
            let kind = match &e.kind {
                EventKind::AuditRead(r) => KindV2::AuditRead(AuditReadV2 {
                    what: AuditReadKindV1::from_core(r.what),
                    count: r.count,
                    ranges: r.ranges.iter().map(|r| (r.from, r.to)).collect(),
                    window_start: r.window_start.as_micros(),
                    window_end: r.window_end.as_micros(),
                }),
                EventKind::LogRecovered(r) => KindV2::LogRecovered(LogRecoveredV2 {
                    epoch: r.epoch,
                    old_origin: &r.old_origin,
                    signed_size: r.signed_size,
                    signed_root: r.signed_root,
                    recovered_size: r.recovered_size,
                    agreed_size: r.agreed_size,
                    reason: &r.reason,
                }),
                EventKind::KeyLeaked(l) => KindV2::KeyLeaked(KeyLeakedV2::from_core(l)),
                EventKind::WebhookSubscribed(_) | EventKind::WebhookDeleted(_) => return None,
                // Version 1 holds every other kind of version 2 (and
                // refuses the policy kinds and fields, which came in 4).
                other => KindV2::from_v1(KindV1::from_core(other, e.at)?, e.at.as_micros()),
            };
            Some(EventV2 {
                at: e.at.as_micros(),
                actor: ActorV1::from_core(&e.actor),
                kind,
            })
        }

        /// The core event this stored form describes, for `tenant`.
        pub fn into_core(self, tenant: &TenantId) -> Result<Event, DecodeError> {
            let at = time("at", self.at)?;
            let kind = match self.kind.into_v1() {
                Split::V1(k) => k.into_core(at).map_err(as_v2)?,
                Split::AuditRead(r) => EventKind::AuditRead(r.into_core()?),
                Split::LogRecovered(r) => EventKind::LogRecovered(r.into_core()?),
                Split::KeyLeaked(l) => EventKind::KeyLeaked(l.into_core()),
            };
            Ok(Event {
                tenant: tenant.clone(),
                at,
                actor: self.actor.into_core().map_err(as_v2)?,
                kind,
            })
        }
    }

    impl<'a> KindV2<'a> {
        /// Upcasts a version-1 kind: a version-1 `AuditRead` is one read of
        /// its range (none for `0..=0`) at the event's time `at`.
        pub fn from_v1(kind: KindV1<'a>, at: i64) -> Self {
            match kind {
                KindV1::KeyCreated(c) => KindV2::KeyCreated(c),
                KindV1::KeyUsed(u) => KindV2::KeyUsed(u),
                KindV1::KeyRevoked(r) => KindV2::KeyRevoked(r),
                KindV1::KeyRotated(r) => KindV2::KeyRotated(r),
                KindV1::UserRemoved(u) => KindV2::UserRemoved(u),
                KindV1::AuditRead(r) => KindV2::AuditRead(AuditReadV2 {
                    what: r.what,
                    count: 1,
                    ranges: if r.to_seq == 0 {
                        Vec::new()
                    } else {
                        vec![(r.from_seq, r.to_seq)]
                    },
                    window_start: at,
                    window_end: at,
                }),
            }
        }

        /// The version-1 kind with the same bytes, or the kind's own
        /// version-2 form when it has none in version 1.
        fn into_v1(self) -> Split<'a> {
            match self {
                KindV2::KeyCreated(c) => Split::V1(KindV1::KeyCreated(c)),
                KindV2::KeyUsed(u) => Split::V1(KindV1::KeyUsed(u)),
                KindV2::KeyRevoked(r) => Split::V1(KindV1::KeyRevoked(r)),
                KindV2::KeyRotated(r) => Split::V1(KindV1::KeyRotated(r)),
                KindV2::UserRemoved(u) => Split::V1(KindV1::UserRemoved(u)),
                KindV2::AuditRead(r) => Split::AuditRead(r),
                KindV2::LogRecovered(r) => Split::LogRecovered(r),
                KindV2::KeyLeaked(l) => Split::KeyLeaked(l),
            }
        }
    }

    /// A version-2 kind: one version 1 also has, or one of its own.
    enum Split<'a> {
        V1(KindV1<'a>),
        AuditRead(AuditReadV2),
        LogRecovered(LogRecoveredV2<'a>),
        KeyLeaked(KeyLeakedV2<'a>),
    }

    impl LogRecoveredV2<'_> {
        /// The core `LogRecovered`; refuses what no decision records: an
        /// epoch below 2, more events agreed than signed or recovered.
        pub fn into_core(self) -> Result<LogRecovered, DecodeError> {
            let invalid = |field, message: &str| DecodeError::Invalid {
                version: VERSION,
                field,
                message: message.into(),
            };
            if self.epoch < 2 {
                return Err(invalid("epoch", "a recovery starts epoch 2 or later"));
            }
            if self.agreed_size > self.signed_size.min(self.recovered_size) {
                return Err(invalid(
                    "agreed_size",
                    "more events agreed than were signed or recovered",
                ));
            }
            Ok(LogRecovered {
                epoch: self.epoch,
                old_origin: self.old_origin.to_owned(),
                signed_size: self.signed_size,
                signed_root: self.signed_root,
                recovered_size: self.recovered_size,
                agreed_size: self.agreed_size,
                reason: self.reason.to_owned(),
            })
        }
    }

    impl AuditReadV2 {
        /// The core `AuditRead`; refuses what no decision records: no read,
        /// ranges out of order, overlapping or touching, a window that ends
        /// before it starts.
        pub fn into_core(self) -> Result<AuditRead, DecodeError> {
            let invalid = |field, message: &str| DecodeError::Invalid {
                version: VERSION,
                field,
                message: message.into(),
            };
            if self.count == 0 {
                return Err(invalid("count", "an audit read records at least one read"));
            }
            let ranges: Vec<SeqRange> = self
                .ranges
                .iter()
                .map(|&(from, to)| SeqRange { from, to })
                .collect();
            if !AuditRead::ranges_in_order(&ranges) {
                return Err(invalid(
                    "ranges",
                    "the ranges are not in order, disjoint and apart",
                ));
            }
            let window_start = time("window_start", self.window_start)?;
            let window_end = time("window_end", self.window_end)?;
            if window_start > window_end {
                return Err(invalid("window_start", "the window starts after it ends"));
            }
            Ok(AuditRead {
                what: self.what.into_core(),
                count: self.count,
                ranges,
                window_start,
                window_end,
            })
        }
    }

    /// Decodes a version-2 body (the bytes after the version byte).
    pub fn decode(tenant: &TenantId, body: &[u8]) -> Result<Event, DecodeError> {
        let (schema, rest) =
            postcard::take_from_bytes::<EventV2<'_>>(body).map_err(|e| DecodeError::Malformed {
                version: VERSION,
                message: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed {
                version: VERSION,
                message: format!("{} bytes after the event", rest.len()),
            });
        }
        schema.into_core(tenant)
    }

    fn time(field: &'static str, micros: i64) -> Result<Timestamp, DecodeError> {
        super::v1::time_of(VERSION, field, micros)
    }

    /// A version-1 field's error, reported for the version-2 payload it was in.
    fn as_v2(e: DecodeError) -> DecodeError {
        match e {
            DecodeError::Invalid { field, message, .. } => DecodeError::Invalid {
                version: VERSION,
                field,
                message,
            },
            other @ (DecodeError::Empty
            | DecodeError::UnknownVersion(_)
            | DecodeError::Malformed { .. }) => other,
        }
    }
}

/// Version 3 of the stored schema: version 2 with the webhook
/// subscription kinds appended. Every version-2 kind, and the actor, keep
/// their types, variant indices and bytes. Frozen: never reorder fields or
/// enum variants, never change a type. A change is a new version.
pub mod v3 {
    use std::str::FromStr;

    use keyledger_core::{
        Event, EventKind, TenantId, WEBHOOK_EVENT_TYPES, WebhookDeleted, WebhookId,
        WebhookSubscribed,
    };
    use serde::{Deserialize, Serialize};

    use super::DecodeError;
    use super::v1::{ActorV1, KeyCreatedV1, KeyRevokedV1, KeyRotatedV1, KeyUsedV1, UserRemovedV1};
    use super::v2::{AuditReadV2, EventV2, KeyLeakedV2, KindV2, LogRecoveredV2};

    const VERSION: u8 = 3;

    /// An event, minus its tenant (as [`super::v2::EventV2`]).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventV3<'a> {
        /// When it was decided, in microseconds since the Unix epoch.
        pub at: i64,
        /// Who did it.
        #[serde(borrow)]
        pub actor: ActorV1<'a>,
        /// What happened.
        #[serde(borrow)]
        pub kind: KindV3<'a>,
    }

    /// What happened: [`KindV2`]'s first seven variants, in its order, then
    /// the webhook kinds, then `KeyLeaked`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KindV3<'a> {
        /// A key exists.
        KeyCreated(#[serde(borrow)] KeyCreatedV1<'a>),
        /// A key was presented.
        KeyUsed(KeyUsedV1),
        /// A key was revoked.
        KeyRevoked(#[serde(borrow)] KeyRevokedV1<'a>),
        /// A key was rotated.
        KeyRotated(KeyRotatedV1),
        /// A user was removed.
        UserRemoved(#[serde(borrow)] UserRemovedV1<'a>),
        /// The audit trail was read, once or many times.
        AuditRead(AuditReadV2),
        /// A new checkpoint epoch started after a loss.
        LogRecovered(#[serde(borrow)] LogRecoveredV2<'a>),
        /// A webhook subscription was made.
        WebhookSubscribed(#[serde(borrow)] WebhookSubscribedV3<'a>),
        /// A webhook subscription was deleted.
        WebhookDeleted(WebhookDeletedV3),
        /// A key's secret was reported leaked (as in version 2, whose
        /// tag for it is 7; here it comes after the webhook kinds).
        KeyLeaked(#[serde(borrow)] KeyLeakedV2<'a>),
    }

    /// A webhook subscription (no secret: see docs/adr/0007-webhook-secrets.md).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WebhookSubscribedV3<'a> {
        /// The subscription's ULID bits.
        pub webhook_id: u128,
        /// Where deliveries go.
        pub url: &'a str,
        /// The notice types, sorted.
        #[serde(borrow)]
        pub event_types: Vec<&'a str>,
        /// An optional description.
        pub description: Option<&'a str>,
    }

    /// A webhook subscription was deleted.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WebhookDeletedV3 {
        /// The subscription's ULID bits.
        pub webhook_id: u128,
    }

    impl<'a> EventV3<'a> {
        /// The stored form of a core event (borrowing its text), if
        /// version 3 can hold it (key policies came in version 4).
        pub fn try_from_core(e: &'a Event) -> Option<Self> {
            let kind = match &e.kind {
                EventKind::WebhookSubscribed(w) => KindV3::WebhookSubscribed(WebhookSubscribedV3 {
                    webhook_id: w.webhook_id.to_u128(),
                    url: &w.url,
                    event_types: w.event_types.iter().map(String::as_str).collect(),
                    description: w.description.as_deref(),
                }),
                EventKind::WebhookDeleted(w) => KindV3::WebhookDeleted(WebhookDeletedV3 {
                    webhook_id: w.webhook_id.to_u128(),
                }),
                _ => KindV3::from_v2(EventV2::try_from_core(e)?.kind),
            };
            Some(EventV3 {
                at: e.at.as_micros(),
                actor: ActorV1::from_core(&e.actor),
                kind,
            })
        }

        /// The core event this stored form describes, for `tenant`.
        pub fn into_core(self, tenant: &TenantId) -> Result<Event, DecodeError> {
            let kind = match self.kind {
                KindV3::WebhookSubscribed(w) => EventKind::WebhookSubscribed(w.into_core()?),
                KindV3::WebhookDeleted(w) => EventKind::WebhookDeleted(WebhookDeleted {
                    webhook_id: WebhookId::from_u128(w.webhook_id),
                }),
                other => {
                    let v2 = EventV2 {
                        at: self.at,
                        actor: self.actor,
                        kind: other.into_v2(),
                    };
                    return v2.into_core(tenant).map_err(as_v3);
                }
            };
            Ok(Event {
                tenant: tenant.clone(),
                at: super::v1::time_of(VERSION, "at", self.at)?,
                actor: self.actor.into_core().map_err(as_v3)?,
                kind,
            })
        }
    }

    impl<'a> KindV3<'a> {
        /// A version-2 kind, with the same bytes.
        pub fn from_v2(kind: KindV2<'a>) -> Self {
            match kind {
                KindV2::KeyCreated(c) => KindV3::KeyCreated(c),
                KindV2::KeyUsed(u) => KindV3::KeyUsed(u),
                KindV2::KeyRevoked(r) => KindV3::KeyRevoked(r),
                KindV2::KeyRotated(r) => KindV3::KeyRotated(r),
                KindV2::UserRemoved(u) => KindV3::UserRemoved(u),
                KindV2::AuditRead(r) => KindV3::AuditRead(r),
                KindV2::LogRecovered(r) => KindV3::LogRecovered(r),
                KindV2::KeyLeaked(l) => KindV3::KeyLeaked(l),
            }
        }

        /// The version-2 kind; only for the kinds version 2 has.
        pub(super) fn into_v2(self) -> KindV2<'a> {
            match self {
                KindV3::KeyCreated(c) => KindV2::KeyCreated(c),
                KindV3::KeyUsed(u) => KindV2::KeyUsed(u),
                KindV3::KeyRevoked(r) => KindV2::KeyRevoked(r),
                KindV3::KeyRotated(r) => KindV2::KeyRotated(r),
                KindV3::UserRemoved(u) => KindV2::UserRemoved(u),
                KindV3::AuditRead(r) => KindV2::AuditRead(r),
                KindV3::LogRecovered(r) => KindV2::LogRecovered(r),
                KindV3::KeyLeaked(l) => KindV2::KeyLeaked(l),
                KindV3::WebhookSubscribed(_) | KindV3::WebhookDeleted(_) => {
                    unreachable!("the webhook kinds are decoded before")
                }
            }
        }
    }

    impl WebhookSubscribedV3<'_> {
        /// The core event; refuses what no decision records: an empty URL,
        /// no or unknown event types, types out of order or repeated.
        pub fn into_core(self) -> Result<WebhookSubscribed, DecodeError> {
            let invalid = |field, message: &str| DecodeError::Invalid {
                version: VERSION,
                field,
                message: message.into(),
            };
            if self.url.is_empty() {
                return Err(invalid("url", "empty"));
            }
            if self.event_types.is_empty()
                || self.event_types.windows(2).any(|w| w[0] >= w[1])
                || self
                    .event_types
                    .iter()
                    .any(|t| !WEBHOOK_EVENT_TYPES.contains(t))
            {
                return Err(invalid(
                    "event_types",
                    "not a sorted set of known event types",
                ));
            }
            // Parsed back to check the id's text form round-trips.
            let webhook_id = WebhookId::from_u128(self.webhook_id);
            if WebhookId::from_str(&webhook_id.to_string()).is_err() {
                return Err(invalid("webhook_id", "not a webhook id"));
            }
            Ok(WebhookSubscribed {
                webhook_id,
                url: self.url.to_owned(),
                event_types: self.event_types.iter().map(|t| (*t).to_owned()).collect(),
                description: self.description.map(str::to_owned),
            })
        }
    }

    /// Decodes a version-3 body (the bytes after the version byte).
    pub fn decode(tenant: &TenantId, body: &[u8]) -> Result<Event, DecodeError> {
        super::read_exact::<EventV3<'_>>(VERSION, body)?.into_core(tenant)
    }

    /// An older version's error, reported for the version-3 payload it was in.
    fn as_v3(e: DecodeError) -> DecodeError {
        super::reported_as(VERSION, e)
    }
}

/// Version 4 of the stored schema: key policy (issue 14). Version 3's kinds
/// keep their tags, types and bytes, except `KeyCreated` (tag 0), which
/// carries the key's metadata, credits and rate limits after version 1's
/// fields, and `KeyUsed` (tag 1), which counts six outcomes and the
/// credits spent. New kinds are appended: 10 `KeyUpdated`, 11
/// `CreditsReserved`, 12 `CreditsReleased`, 13 `CreditsRefilled`. Frozen:
/// never reorder fields or enum variants, never change a type. A change is
/// a new version.
pub mod v4 {
    use keyledger_core::{
        Credits, CreditsRefilled, CreditsReleased, CreditsReserved, Event, EventKind, KeyChange,
        KeyCreated, KeyId, KeyUpdated, KeyUsed, Meta, RateLimit, Refill, RefillInterval, ScopeSet,
        TenantId, Timestamp, UseCounts,
    };
    use serde::{Deserialize, Serialize};

    use super::DecodeError;
    use super::v1::{ActorV1, KeyCreatedV1, KeyRevokedV1, KeyRotatedV1, KindV1, UserRemovedV1};
    use super::v2::{AuditReadV2, KeyLeakedV2, LogRecoveredV2};
    use super::v3::{EventV3, KindV3, WebhookDeletedV3, WebhookSubscribedV3};

    const VERSION: u8 = 4;

    /// An event, minus its tenant (as [`super::v3::EventV3`]).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventV4<'a> {
        /// When it was decided, in microseconds since the Unix epoch.
        pub at: i64,
        /// Who did it.
        #[serde(borrow)]
        pub actor: ActorV1<'a>,
        /// What happened.
        #[serde(borrow)]
        pub kind: KindV4<'a>,
    }

    /// What happened: [`KindV3`]'s variants in its order (`KeyCreated` and
    /// `KeyUsed` in their version-4 form), then the key-policy kinds.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KindV4<'a> {
        /// A key exists (0).
        KeyCreated(#[serde(borrow)] KeyCreatedV4<'a>),
        /// A key was presented (1).
        KeyUsed(KeyUsedV4),
        /// A key was revoked (2).
        KeyRevoked(#[serde(borrow)] KeyRevokedV1<'a>),
        /// A key was rotated (3).
        KeyRotated(KeyRotatedV1),
        /// A user was removed (4).
        UserRemoved(#[serde(borrow)] UserRemovedV1<'a>),
        /// The audit trail was read (5).
        AuditRead(AuditReadV2),
        /// A new checkpoint epoch started after a loss (6).
        LogRecovered(#[serde(borrow)] LogRecoveredV2<'a>),
        /// A webhook subscription was made (7).
        WebhookSubscribed(#[serde(borrow)] WebhookSubscribedV3<'a>),
        /// A webhook subscription was deleted (8).
        WebhookDeleted(WebhookDeletedV3),
        /// A key's secret was reported leaked (9).
        KeyLeaked(#[serde(borrow)] KeyLeakedV2<'a>),
        /// A key's fields were changed (10).
        KeyUpdated(#[serde(borrow)] KeyUpdatedV4<'a>),
        /// Credits were reserved (11).
        CreditsReserved(CreditsMovedV4),
        /// Reserved credits were handed back (12).
        CreditsReleased(CreditsMovedV4),
        /// Credits were refilled (13).
        CreditsRefilled(CreditsRefilledV4),
    }

    /// A key exists: version 1's fields, then its policy.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyCreatedV4<'a> {
        /// Version 1's fields, in their order.
        #[serde(borrow)]
        pub base: KeyCreatedV1<'a>,
        /// Metadata: compact JSON text of an object.
        pub meta: Option<&'a str>,
        /// Credits.
        pub credits: Option<CreditsV4>,
        /// Rate limits.
        #[serde(borrow)]
        pub limits: Vec<RateLimitV4<'a>>,
    }

    /// A key was presented.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyUsedV4 {
        /// The key id.
        pub key_id: u128,
        /// The window's first instant.
        pub window_start: i64,
        /// The window's end (exclusive).
        pub window_end: i64,
        /// The last valid use.
        pub last_valid_at: Option<i64>,
        /// Counts: valid, revoked, expired, insufficient scope, usage
        /// exceeded, rate limited.
        pub counts: [u64; 6],
        /// Credits spent by the valid uses.
        pub credits_spent: u64,
    }

    /// Credits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CreditsV4 {
        /// Credits left.
        pub remaining: u64,
        /// The refill.
        pub refill: Option<RefillV4>,
    }

    /// A refill.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RefillV4 {
        /// What the credits are set to.
        pub amount: u64,
        /// How often.
        pub interval: IntervalV4,
        /// A monthly refill's day.
        pub day: Option<u8>,
    }

    /// How often credits are refilled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum IntervalV4 {
        /// Every day.
        Daily,
        /// Every month.
        Monthly,
    }

    /// A named rate limit.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RateLimitV4<'a> {
        /// Its name.
        pub name: &'a str,
        /// Verifications per window.
        pub limit: u64,
        /// The window, in milliseconds.
        pub duration_ms: u64,
    }

    /// A key's fields were changed.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyUpdatedV4<'a> {
        /// The key id.
        pub key_id: u128,
        /// The changes, in field order.
        #[serde(borrow)]
        pub changes: Vec<KeyChangeV4<'a>>,
    }

    /// One field before and after.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum KeyChangeV4<'a> {
        /// The name.
        Name(&'a str, &'a str),
        /// The description.
        Description(Option<&'a str>, Option<&'a str>),
        /// The metadata.
        Meta(Option<&'a str>, Option<&'a str>),
        /// The expiry, in microseconds.
        ExpiresAt(Option<i64>, Option<i64>),
        /// The scope bits.
        Scopes(u8, u8),
        /// The credits.
        Credits(Option<CreditsV4>, Option<CreditsV4>),
        /// The rate limits.
        Limits(
            #[serde(borrow)] Vec<RateLimitV4<'a>>,
            #[serde(borrow)] Vec<RateLimitV4<'a>>,
        ),
    }

    /// Credits reserved or released.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CreditsMovedV4 {
        /// The key id.
        pub key_id: u128,
        /// The credit epoch.
        pub epoch: u64,
        /// How many.
        pub amount: u64,
    }

    /// Credits refilled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CreditsRefilledV4 {
        /// The key id.
        pub key_id: u128,
        /// The refill instant, in microseconds.
        pub due_at: i64,
        /// The credits after it.
        pub remaining: u64,
    }

    impl<'a> EventV4<'a> {
        /// The stored form of a core event (borrowing its text).
        pub fn from_core(e: &'a Event) -> Self {
            let at = e.at.as_micros();
            let kind = match &e.kind {
                EventKind::KeyCreated(c) => KindV4::KeyCreated(KeyCreatedV4 {
                    base: created_v1(c),
                    meta: c.meta.as_ref().map(Meta::as_str),
                    credits: c.credits.as_ref().map(CreditsV4::from_core),
                    limits: c.limits.iter().map(RateLimitV4::from_core).collect(),
                }),
                EventKind::KeyUsed(u) => KindV4::KeyUsed(KeyUsedV4 {
                    key_id: u.key_id.to_u128(),
                    window_start: u.window_start.as_micros(),
                    window_end: u.window_end.as_micros(),
                    last_valid_at: u.last_valid_at.map(Timestamp::as_micros),
                    counts: u.counts.to_array(),
                    credits_spent: u.counts.credits_spent,
                }),
                EventKind::KeyUpdated(u) => KindV4::KeyUpdated(KeyUpdatedV4 {
                    key_id: u.key_id.to_u128(),
                    changes: u.changes.iter().map(KeyChangeV4::from_core).collect(),
                }),
                EventKind::CreditsReserved(r) => KindV4::CreditsReserved(CreditsMovedV4 {
                    key_id: r.key_id.to_u128(),
                    epoch: r.epoch,
                    amount: r.amount,
                }),
                EventKind::CreditsReleased(r) => KindV4::CreditsReleased(CreditsMovedV4 {
                    key_id: r.key_id.to_u128(),
                    epoch: r.epoch,
                    amount: r.amount,
                }),
                EventKind::CreditsRefilled(r) => KindV4::CreditsRefilled(CreditsRefilledV4 {
                    key_id: r.key_id.to_u128(),
                    due_at: r.due_at.as_micros(),
                    remaining: r.remaining,
                }),
                _ => match EventV3::try_from_core(e) {
                    Some(v3) => KindV4::from_v3(v3.kind),
                    None => unreachable!("version 3 holds every kind but the policy kinds"),
                },
            };
            EventV4 {
                at,
                actor: ActorV1::from_core(&e.actor),
                kind,
            }
        }

        /// The core event this stored form describes, for `tenant`.
        pub fn into_core(self, tenant: &TenantId) -> Result<Event, DecodeError> {
            let at = super::v1::time_of(VERSION, "at", self.at)?;
            let kind = match self.kind {
                KindV4::KeyCreated(c) => {
                    let EventKind::KeyCreated(base) =
                        KindV1::KeyCreated(c.base).into_core(at).map_err(as_v4)?
                    else {
                        unreachable!("a version-1 KeyCreated decodes to a KeyCreated")
                    };
                    EventKind::KeyCreated(KeyCreated {
                        meta: c.meta.map(meta).transpose()?,
                        credits: c.credits.map(CreditsV4::into_core).transpose()?,
                        limits: limits(c.limits)?,
                        ..base
                    })
                }
                KindV4::KeyUsed(u) => {
                    let mut counts = UseCounts::from_array(u.counts);
                    counts.credits_spent = u.credits_spent;
                    EventKind::KeyUsed(KeyUsed {
                        key_id: KeyId::from_u128(u.key_id),
                        window_start: time("window_start", u.window_start)?,
                        window_end: time("window_end", u.window_end)?,
                        last_valid_at: u
                            .last_valid_at
                            .map(|t| time("last_valid_at", t))
                            .transpose()?,
                        counts,
                    })
                }
                KindV4::KeyUpdated(u) => EventKind::KeyUpdated(KeyUpdated {
                    key_id: KeyId::from_u128(u.key_id),
                    changes: u
                        .changes
                        .into_iter()
                        .map(KeyChangeV4::into_core)
                        .collect::<Result<_, _>>()?,
                }),
                KindV4::CreditsReserved(r) => EventKind::CreditsReserved(CreditsReserved {
                    key_id: KeyId::from_u128(r.key_id),
                    epoch: r.epoch,
                    amount: r.amount,
                }),
                KindV4::CreditsReleased(r) => EventKind::CreditsReleased(CreditsReleased {
                    key_id: KeyId::from_u128(r.key_id),
                    epoch: r.epoch,
                    amount: r.amount,
                }),
                KindV4::CreditsRefilled(r) => EventKind::CreditsRefilled(CreditsRefilled {
                    key_id: KeyId::from_u128(r.key_id),
                    due_at: time("due_at", r.due_at)?,
                    remaining: r.remaining,
                }),
                other => {
                    let v3 = EventV3 {
                        at: self.at,
                        actor: self.actor,
                        kind: other.into_v3(),
                    };
                    return v3.into_core(tenant).map_err(as_v4);
                }
            };
            Ok(Event {
                tenant: tenant.clone(),
                at,
                actor: self.actor.into_core().map_err(as_v4)?,
                kind,
            })
        }
    }

    /// Version 1's `KeyCreated` fields of a core `KeyCreated`.
    fn created_v1(c: &KeyCreated) -> KeyCreatedV1<'_> {
        KeyCreatedV1 {
            key_id: c.key_id.to_u128(),
            owner: c.owner.as_str(),
            name: &c.name,
            description: c.description.as_deref(),
            expires_at: c.expires_at.map(Timestamp::as_micros),
            scopes: c.scopes.bits(),
            secret_hash: c.secret_hash.0,
            masked: &c.masked,
            rotated_from: c.rotated_from.map(KeyId::to_u128),
        }
    }

    impl<'a> KindV4<'a> {
        /// A version-3 kind, with the same bytes but for `KeyCreated` and
        /// `KeyUsed`, which gain their empty policy and zero counts.
        pub fn from_v3(kind: KindV3<'a>) -> Self {
            match kind {
                KindV3::KeyCreated(c) => KindV4::KeyCreated(KeyCreatedV4 {
                    base: c,
                    meta: None,
                    credits: None,
                    limits: Vec::new(),
                }),
                KindV3::KeyUsed(u) => KindV4::KeyUsed(KeyUsedV4 {
                    key_id: u.key_id,
                    window_start: u.window_start,
                    window_end: u.window_end,
                    last_valid_at: u.last_valid_at,
                    counts: [u.counts[0], u.counts[1], u.counts[2], u.counts[3], 0, 0],
                    credits_spent: 0,
                }),
                KindV3::KeyRevoked(r) => KindV4::KeyRevoked(r),
                KindV3::KeyRotated(r) => KindV4::KeyRotated(r),
                KindV3::UserRemoved(u) => KindV4::UserRemoved(u),
                KindV3::AuditRead(r) => KindV4::AuditRead(r),
                KindV3::LogRecovered(r) => KindV4::LogRecovered(r),
                KindV3::WebhookSubscribed(w) => KindV4::WebhookSubscribed(w),
                KindV3::WebhookDeleted(w) => KindV4::WebhookDeleted(w),
                KindV3::KeyLeaked(l) => KindV4::KeyLeaked(l),
            }
        }

        /// The version-3 kind; only for the kinds whose form version 3 shares.
        fn into_v3(self) -> KindV3<'a> {
            match self {
                KindV4::KeyRevoked(r) => KindV3::KeyRevoked(r),
                KindV4::KeyRotated(r) => KindV3::KeyRotated(r),
                KindV4::UserRemoved(u) => KindV3::UserRemoved(u),
                KindV4::AuditRead(r) => KindV3::AuditRead(r),
                KindV4::LogRecovered(r) => KindV3::LogRecovered(r),
                KindV4::WebhookSubscribed(w) => KindV3::WebhookSubscribed(w),
                KindV4::WebhookDeleted(w) => KindV3::WebhookDeleted(w),
                KindV4::KeyLeaked(l) => KindV3::KeyLeaked(l),
                KindV4::KeyCreated(_)
                | KindV4::KeyUsed(_)
                | KindV4::KeyUpdated(_)
                | KindV4::CreditsReserved(_)
                | KindV4::CreditsReleased(_)
                | KindV4::CreditsRefilled(_) => {
                    unreachable!("the version-4 forms are decoded before")
                }
            }
        }
    }

    impl CreditsV4 {
        /// The stored form of credits.
        pub fn from_core(c: &Credits) -> Self {
            CreditsV4 {
                remaining: c.remaining,
                refill: c.refill.map(|r| RefillV4 {
                    amount: r.amount,
                    interval: match r.interval {
                        RefillInterval::Daily => IntervalV4::Daily,
                        RefillInterval::Monthly => IntervalV4::Monthly,
                    },
                    day: r.day,
                }),
            }
        }

        /// The credits; refuses what no decision records (out-of-range
        /// numbers, a day on a daily refill).
        pub fn into_core(self) -> Result<Credits, DecodeError> {
            let c = Credits {
                remaining: self.remaining,
                refill: self.refill.map(|r| Refill {
                    amount: r.amount,
                    interval: match r.interval {
                        IntervalV4::Daily => RefillInterval::Daily,
                        IntervalV4::Monthly => RefillInterval::Monthly,
                    },
                    day: r.day,
                }),
            };
            c.check().map_err(|e| invalid("credits", e.to_string()))?;
            Ok(c)
        }
    }

    impl<'a> RateLimitV4<'a> {
        /// The stored form of a rate limit.
        pub fn from_core(l: &'a RateLimit) -> Self {
            RateLimitV4 {
                name: &l.name,
                limit: l.limit,
                duration_ms: l.duration_ms,
            }
        }
    }

    /// A key's rate limits; refuses a list no decision records.
    fn limits(stored: Vec<RateLimitV4<'_>>) -> Result<Vec<RateLimit>, DecodeError> {
        let limits: Vec<RateLimit> = stored
            .into_iter()
            .map(|l| RateLimit {
                name: l.name.to_owned(),
                limit: l.limit,
                duration_ms: l.duration_ms,
            })
            .collect();
        RateLimit::check_all(&limits).map_err(|e| invalid("limits", e.to_string()))?;
        Ok(limits)
    }

    fn meta(text: &str) -> Result<Meta, DecodeError> {
        Meta::new(text.to_owned()).map_err(|e| invalid("meta", e.to_string()))
    }

    fn scopes(bits: u8) -> Result<ScopeSet, DecodeError> {
        ScopeSet::from_bits(bits)
            .ok_or_else(|| invalid("scopes", format!("bits {bits:#010b} name no scope")))
    }

    fn optional_time(
        field: &'static str,
        t: Option<i64>,
    ) -> Result<Option<Timestamp>, DecodeError> {
        t.map(|t| time(field, t)).transpose()
    }

    impl<'a> KeyChangeV4<'a> {
        /// The stored form of a change.
        pub fn from_core(c: &'a KeyChange) -> Self {
            let credits = |c: &Option<Credits>| c.as_ref().map(CreditsV4::from_core);
            let limits = |l: &'a [RateLimit]| l.iter().map(RateLimitV4::from_core).collect();
            match c {
                KeyChange::Name { before, after } => KeyChangeV4::Name(before, after),
                KeyChange::Description { before, after } => {
                    KeyChangeV4::Description(before.as_deref(), after.as_deref())
                }
                KeyChange::Meta { before, after } => KeyChangeV4::Meta(
                    before.as_ref().map(Meta::as_str),
                    after.as_ref().map(Meta::as_str),
                ),
                KeyChange::ExpiresAt { before, after } => KeyChangeV4::ExpiresAt(
                    before.map(Timestamp::as_micros),
                    after.map(Timestamp::as_micros),
                ),
                KeyChange::Scopes { before, after } => {
                    KeyChangeV4::Scopes(before.bits(), after.bits())
                }
                KeyChange::Credits { before, after } => {
                    KeyChangeV4::Credits(credits(before), credits(after))
                }
                KeyChange::Limits { before, after } => {
                    KeyChangeV4::Limits(limits(before), limits(after))
                }
            }
        }

        /// The change this stored form describes; refuses values no
        /// decision records (the fold checks `before` against the state).
        pub fn into_core(self) -> Result<KeyChange, DecodeError> {
            let credits = |c: Option<CreditsV4>| c.map(CreditsV4::into_core).transpose();
            Ok(match self {
                KeyChangeV4::Name(before, after) => KeyChange::Name {
                    before: before.to_owned(),
                    after: after.to_owned(),
                },
                KeyChangeV4::Description(before, after) => KeyChange::Description {
                    before: before.map(str::to_owned),
                    after: after.map(str::to_owned),
                },
                KeyChangeV4::Meta(before, after) => KeyChange::Meta {
                    before: before.map(meta).transpose()?,
                    after: after.map(meta).transpose()?,
                },
                KeyChangeV4::ExpiresAt(before, after) => KeyChange::ExpiresAt {
                    before: optional_time("expires_at", before)?,
                    after: optional_time("expires_at", after)?,
                },
                KeyChangeV4::Scopes(before, after) => KeyChange::Scopes {
                    before: scopes(before)?,
                    after: scopes(after)?,
                },
                KeyChangeV4::Credits(before, after) => KeyChange::Credits {
                    before: credits(before)?,
                    after: credits(after)?,
                },
                KeyChangeV4::Limits(before, after) => KeyChange::Limits {
                    before: limits(before)?,
                    after: limits(after)?,
                },
            })
        }
    }

    /// Decodes a version-4 body (the bytes after the version byte).
    pub fn decode(tenant: &TenantId, body: &[u8]) -> Result<Event, DecodeError> {
        super::read_exact::<EventV4<'_>>(VERSION, body)?.into_core(tenant)
    }

    fn time(field: &'static str, micros: i64) -> Result<Timestamp, DecodeError> {
        super::v1::time_of(VERSION, field, micros)
    }

    fn invalid(field: &'static str, message: String) -> DecodeError {
        DecodeError::Invalid {
            version: VERSION,
            field,
            message,
        }
    }

    /// An older version's error, reported for the version-4 payload it was in.
    fn as_v4(e: DecodeError) -> DecodeError {
        super::reported_as(VERSION, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_unknown_versions_are_errors() {
        let t: TenantId = "acme".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode(&t, &[]), Err(DecodeError::Empty));
        assert_eq!(decode(&t, &[0]), Err(DecodeError::UnknownVersion(0)));
        assert_eq!(decode(&t, &[5, 0]), Err(DecodeError::UnknownVersion(5)));
        assert!(matches!(
            decode(&t, &[1]),
            Err(DecodeError::Malformed { version: 1, .. })
        ));
    }
}
