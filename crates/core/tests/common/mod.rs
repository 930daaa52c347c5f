//! Fixtures shared by the core's integration tests: tenants, users, times,
//! keys made from fixed material (never the OS's randomness), and event
//! builders. Each test binary uses part of it.
#![allow(dead_code)]

use keyledger_core::secret::BODY_BYTES;
use keyledger_core::{
    Actor, Event, EventKind, KeyCreated, KeyId, KeyPrefix, KeyRevoked, KeyRotated, KeyUsed, Ledger,
    Principal, RevokeReason, ScopeSet, Secret, TenantId, Timestamp, UseCounts, UserId, UserRemoved,
};

/// The tenant most tests act in.
pub fn acme() -> TenantId {
    "acme".parse().unwrap()
}

/// Another tenant, to check isolation.
pub fn globex() -> TenantId {
    "globex".parse().unwrap()
}

/// A user id.
pub fn user(id: &str) -> UserId {
    id.parse().unwrap()
}

/// 2026-03-01T00:00:00Z: the tests' epoch.
pub fn base() -> Timestamp {
    Timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap()
}

/// `secs` seconds after [`base`] (before it when negative).
pub fn t(secs: i64) -> Timestamp {
    if secs >= 0 {
        base().plus_seconds(secs.unsigned_abs())
    } else {
        base().minus_seconds(secs.unsigned_abs())
    }
}

/// A key id.
pub fn kid(n: u8) -> KeyId {
    KeyId::from_u128(0x0196_0000_0000_0000_0000_0000_0000_0000 + u128::from(n))
}

/// The secret of key `n`: made from fixed material.
pub fn secret(n: u8) -> Secret {
    Secret::from_material(&KeyPrefix::default(), &[n; BODY_BYTES])
}

/// A user acting directly.
pub fn as_user(id: &str) -> Actor {
    Actor::User { id: user(id) }
}

/// Key `n`, owned by `owner`, acting as an API key.
pub fn as_key(n: u8, owner: &str) -> Actor {
    Actor::ApiKey {
        key_id: kid(n),
        name: format!("key {n}"),
        owner: user(owner),
    }
}

/// `id` acting directly in `tenant` with every scope.
pub fn user_principal(tenant: TenantId, id: &str) -> Principal {
    Principal::user(tenant, user(id))
}

/// Key `n` of `owner` acting in `tenant` with `scopes`.
pub fn key_principal(tenant: TenantId, n: u8, owner: &str, scopes: ScopeSet) -> Principal {
    Principal::api_key(tenant, kid(n), format!("key {n}"), user(owner), scopes)
}

/// An event.
pub fn ev(tenant: TenantId, at: Timestamp, actor: Actor, kind: EventKind) -> Event {
    Event {
        tenant,
        at,
        actor,
        kind,
    }
}

/// Key `n` of `owner`, named `key n`, default scopes, no expiry.
pub fn created(n: u8, owner: &str) -> KeyCreated {
    let s = secret(n);
    KeyCreated {
        meta: None,
        credits: None,
        limits: Vec::new(),
        key_id: kid(n),
        owner: user(owner),
        name: format!("key {n}"),
        description: None,
        expires_at: None,
        scopes: ScopeSet::DEFAULT,
        secret_hash: s.hash(),
        masked: s.masked(),
        rotated_from: None,
    }
}

/// `owner` creates key `n` in `tenant` at `at`.
pub fn create_ev(tenant: TenantId, at: Timestamp, n: u8, owner: &str) -> Event {
    ev(
        tenant,
        at,
        as_user(owner),
        EventKind::KeyCreated(created(n, owner)),
    )
}

/// `actor` revokes key `n` by hand.
pub fn revoke_ev(tenant: TenantId, at: Timestamp, actor: Actor, n: u8) -> Event {
    ev(
        tenant,
        at,
        actor,
        EventKind::KeyRevoked(KeyRevoked {
            key_id: kid(n),
            reason: RevokeReason::Manual,
            cause: None,
        }),
    )
}

/// Key `old` was replaced by `new` and expires at `expires_at`.
pub fn rotated_ev(
    tenant: TenantId,
    at: Timestamp,
    actor: Actor,
    old: u8,
    new: u8,
    expires_at: Timestamp,
) -> Event {
    ev(
        tenant,
        at,
        actor,
        EventKind::KeyRotated(KeyRotated {
            key_id: kid(old),
            new_key_id: kid(new),
            expires_at,
        }),
    )
}

/// `actor` removes `id`.
pub fn removed_ev(tenant: TenantId, at: Timestamp, actor: Actor, id: &str) -> Event {
    ev(
        tenant,
        at,
        actor,
        EventKind::UserRemoved(UserRemoved { user_id: user(id) }),
    )
}

/// Usage of key `n` over one second starting at `window_start`.
pub fn used(n: u8, window_start: Timestamp, counts: UseCounts) -> KeyUsed {
    KeyUsed {
        key_id: kid(n),
        window_start,
        window_end: Timestamp::from_micros(window_start.as_micros() + 1_000_000),
        last_valid_at: (counts.valid > 0).then_some(window_start),
        counts,
    }
}

/// The system records usage of key `n`.
pub fn used_ev(
    tenant: TenantId,
    at: Timestamp,
    n: u8,
    window_start: Timestamp,
    counts: UseCounts,
) -> Event {
    ev(
        tenant,
        at,
        Actor::System,
        EventKind::KeyUsed(used(n, window_start, counts)),
    )
}

/// Folds `events` into a fresh ledger, numbering each tenant's events 1, 2, 3…
pub fn fold(events: &[Event]) -> Ledger {
    let mut ledger = Ledger::new();
    for e in events {
        apply_next(&mut ledger, e);
    }
    ledger
}

/// Applies `event` as its tenant's next event; panics if it does not fold.
pub fn apply_next(ledger: &mut Ledger, event: &Event) {
    let seq = next_seq(ledger, &event.tenant);
    if let Err(err) = ledger.apply(seq, event) {
        panic!(
            "event {seq} of {} does not fold: {err}\n{event:#?}",
            event.tenant
        );
    }
}

/// The sequence number of `tenant`'s next event.
pub fn next_seq(ledger: &Ledger, tenant: &TenantId) -> u64 {
    ledger.tenant(tenant).map_or(0, |s| s.version) + 1
}
