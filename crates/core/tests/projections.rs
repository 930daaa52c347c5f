//! Projections: the key state, the usage rollups and the audit filter,
//! folded from hand-written logs.

mod common;

use common::*;
use keyledger_core::limits::SUMMARY_DAYS_MAX;
use keyledger_core::state::ApplyError;
use keyledger_core::{
    Actor, AuditFilter, Cause, CreatedBy, DailyRow, Day, Event, EventKind, EventType, KeyCreated,
    KeyRecord, KeyRevoked, KeyStatus, Ledger, Outcome, Revocation, RevokeReason, Scope, ScopeSet,
    SecretHash, Timestamp, Usage, UseCounts,
};

fn counts(valid: u64, revoked: u64, expired: u64, insufficient_scope: u64) -> UseCounts {
    UseCounts {
        usage_exceeded: 0,
        rate_limited: 0,
        credits_spent: 0,
        valid,
        revoked,
        expired,
        insufficient_scope,
    }
}

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).unwrap()
}

fn day(date: &str) -> Day {
    Day::parse(date).unwrap()
}

// --------------------------------------------------------------- key state

/// Every key's owner and tenant ids point at one copy of the text (issue
/// 13, memory): each event carries its own copy, and the fold keeps the
/// one the ledger already holds.
#[test]
fn ids_are_shared_not_copied_per_key() {
    let ledger = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(acme(), t(2), 2, "alice"),
        create_ev(acme(), t(3), 3, "bob"),
    ]);
    let text = |s: &str| s.as_ptr();
    let key = |n| ledger.key(&acme(), kid(n)).unwrap();
    assert_eq!(text(key(1).owner.as_str()), text(key(2).owner.as_str()));
    assert_ne!(text(key(1).owner.as_str()), text(key(3).owner.as_str()));
    let tenant = ledger.tenant_id(&acme()).unwrap();
    for n in 1..=3 {
        let (t, k) = ledger.key_by_hash(&secret(n).hash()).unwrap();
        assert_eq!((text(t.as_str()), k.id), (text(tenant.as_str()), kid(n)));
    }
}

#[test]
fn key_record_after_create() {
    let kc = KeyCreated {
        name: "CI/CD Pipeline".into(),
        description: Some("nightly deploys".into()),
        expires_at: Some(t(1000)),
        scopes: ScopeSet::EMPTY.with(Scope::KeysRead),
        ..created(1, "alice")
    };
    let ledger = fold(&[ev(
        acme(),
        t(5),
        as_key(9, "alice"),
        EventKind::KeyCreated(kc),
    )]);
    let expected = KeyRecord {
        id: kid(1),
        owner: user("alice"),
        name: "CI/CD Pipeline".into(),
        description: Some("nightly deploys".into()),
        created_at: t(5),
        creator: CreatedBy::Other(Box::new(as_key(9, "alice"))),
        expires_at: Some(t(1000)),
        scopes: ScopeSet::EMPTY.with(Scope::KeysRead),
        secret_hash: secret(1).hash(),
        masked: secret(1).masked().as_str().into(),
        revoked: None,
        links: None,
        last_used_at: None,
        uses: UseCounts::default(),
        policy: None,
    };
    assert_eq!(ledger.key(&acme(), kid(1)), Some(&expected));
    assert_eq!(ledger.events(), 1);
    let state = ledger.tenant(&acme()).unwrap();
    assert_eq!((state.version, state.last_at), (1, t(5)));
    assert_eq!(
        state
            .keys_of(&user("alice"))
            .map(|k| k.id)
            .collect::<Vec<_>>(),
        [kid(1)]
    );
}

#[test]
fn key_record_after_use() {
    let mut late = used(1, t(100), counts(2, 0, 0, 1));
    late.last_valid_at = Some(t(100));
    let mut early = used(1, t(50), counts(1, 3, 0, 0));
    early.last_valid_at = Some(t(50));
    let rejected_only = used(1, t(200), counts(0, 0, 4, 0));
    let ledger = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        ev(acme(), t(101), Actor::System, EventKind::KeyUsed(late)),
        // A window that arrives late does not move last use back.
        ev(acme(), t(102), Actor::System, EventKind::KeyUsed(early)),
        // Rejected uses count but are not a "last used".
        ev(
            acme(),
            t(201),
            Actor::System,
            EventKind::KeyUsed(rejected_only),
        ),
    ]);
    let key = ledger.key(&acme(), kid(1)).unwrap();
    assert_eq!(key.uses, counts(3, 3, 4, 1));
    assert_eq!(key.uses.total(), 11);
    assert_eq!(key.last_used_at, Some(t(100)));
}

#[test]
fn key_record_after_revoke() {
    let cause = Cause::UserRemoved {
        user_id: user("alice"),
        seq: 2,
    };
    let ledger = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        removed_ev(acme(), t(9), Actor::Operator, "alice"),
        ev(
            acme(),
            t(9),
            Actor::System,
            EventKind::KeyRevoked(KeyRevoked {
                key_id: kid(1),
                reason: RevokeReason::UserRemoved,
                cause: Some(cause.clone()),
            }),
        ),
    ]);
    let key = ledger.key(&acme(), kid(1)).unwrap();
    assert_eq!(
        key.revoked.as_deref(),
        Some(&Revocation {
            at: t(9),
            by: Actor::System,
            reason: RevokeReason::UserRemoved,
            cause: Some(cause),
        })
    );
    let state = ledger.tenant(&acme()).unwrap();
    assert_eq!(state.removed_users.get(&user("alice")), Some(&t(9)));
}

fn rotation(grace_end: Option<Timestamp>) -> Vec<Event> {
    let new = ev(
        acme(),
        t(10),
        as_user("alice"),
        EventKind::KeyCreated(KeyCreated {
            rotated_from: Some(kid(1)),
            ..created(2, "alice")
        }),
    );
    let retire = match grace_end {
        Some(end) => rotated_ev(acme(), t(10), as_user("alice"), 1, 2, end),
        None => ev(
            acme(),
            t(10),
            as_user("alice"),
            EventKind::KeyRevoked(KeyRevoked {
                key_id: kid(1),
                reason: RevokeReason::Rotated,
                cause: None,
            }),
        ),
    };
    vec![create_ev(acme(), t(1), 1, "alice"), new, retire]
}

#[test]
fn key_records_after_rotate_with_grace() {
    let ledger = fold(&rotation(Some(t(70))));
    let old = ledger.key(&acme(), kid(1)).unwrap();
    let new = ledger.key(&acme(), kid(2)).unwrap();
    assert_eq!(
        (old.rotated_to(), old.expires_at, old.revoked.clone()),
        (Some(kid(2)), Some(t(70)), None)
    );
    assert_eq!(
        (new.rotated_from(), new.rotated_to(), new.expires_at),
        (Some(kid(1)), None, None)
    );
    assert_eq!(old.status(t(69)), KeyStatus::Active);
    assert_eq!(old.status(t(70)), KeyStatus::Expired);
}

#[test]
fn a_rotation_never_extends_an_expiry_when_folded() {
    let mut events = rotation(Some(t(70)));
    events[0] = ev(
        acme(),
        t(1),
        as_user("alice"),
        EventKind::KeyCreated(KeyCreated {
            expires_at: Some(t(30)),
            ..created(1, "alice")
        }),
    );
    assert_eq!(
        fold(&events).key(&acme(), kid(1)).unwrap().expires_at,
        Some(t(30))
    );
}

#[test]
fn key_records_after_rotate_without_grace() {
    let ledger = fold(&rotation(None));
    let old = ledger.key(&acme(), kid(1)).unwrap();
    assert_eq!(old.rotated_to(), Some(kid(2)));
    assert_eq!(old.expires_at, None);
    assert_eq!(
        old.revoked.as_ref().map(|r| r.reason),
        Some(RevokeReason::Rotated)
    );
    assert_eq!(old.status(t(10)), KeyStatus::Revoked);
    assert_eq!(
        ledger.key(&acme(), kid(2)).unwrap().status(t(10)),
        KeyStatus::Active
    );
}

#[test]
fn status_active_expired_revoked() {
    let events = [
        create_ev(acme(), t(1), 1, "alice"),
        ev(
            acme(),
            t(1),
            as_user("alice"),
            EventKind::KeyCreated(KeyCreated {
                expires_at: Some(t(50)),
                ..created(2, "alice")
            }),
        ),
        ev(
            acme(),
            t(1),
            as_user("alice"),
            EventKind::KeyCreated(KeyCreated {
                expires_at: Some(t(50)),
                ..created(3, "alice")
            }),
        ),
        revoke_ev(acme(), t(2), as_user("alice"), 3),
    ];
    let ledger = fold(&events);
    let status = |n, secs| ledger.key(&acme(), kid(n)).unwrap().status(t(secs));
    assert_eq!(status(1, 1_000_000), KeyStatus::Active);
    assert_eq!(status(2, 49), KeyStatus::Active);
    // Expiry is the first instant the key no longer works.
    assert_eq!(status(2, 50), KeyStatus::Expired);
    // Revoked beats expired, before and after the expiry.
    assert_eq!(status(3, 10), KeyStatus::Revoked);
    assert_eq!(status(3, 60), KeyStatus::Revoked);
    let state = ledger.tenant(&acme()).unwrap();
    assert_eq!(state.active_count(t(10)), 2);
    assert_eq!(state.active_count(t(50)), 1);
    assert_eq!(ledger.tenant(&globex()), None);
}

#[test]
fn status_wire_names_round_trip() {
    for s in [KeyStatus::Active, KeyStatus::Expired, KeyStatus::Revoked] {
        assert_eq!(KeyStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(KeyStatus::parse("deleted"), None);
}

#[test]
fn lookups_by_hash_and_by_tenant() {
    let ledger = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(globex(), t(1), 2, "zed"),
        revoke_ev(acme(), t(2), as_user("alice"), 1),
    ]);
    let (tenant, key) = ledger.key_by_hash(&secret(2).hash()).unwrap();
    assert_eq!((tenant, key.id), (&globex(), kid(2)));
    // A revoked key is still found, so verification can answer `revoked`.
    let (tenant, key) = ledger.key_by_hash(&secret(1).hash()).unwrap();
    assert_eq!((tenant, key.status(t(3))), (&acme(), KeyStatus::Revoked));
    assert!(ledger.key_by_hash(&secret(3).hash()).is_none());
    assert!(ledger.key_by_hash(&SecretHash([0; 32])).is_none());
    // A key of another tenant is answered like an unknown key.
    assert!(ledger.key(&acme(), kid(2)).is_none());
    assert!(ledger.key(&globex(), kid(1)).is_none());
    assert_eq!(ledger.tenants().count(), 2);
}

// ------------------------------------------------------------ apply errors

/// Applies `event` as `seq` to a copy of `ledger`; it must fail and leave the copy unchanged.
#[track_caller]
#[test]
fn a_cloned_ledger_and_its_original_change_apart() {
    let original = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(globex(), t(1), 2, "bob"),
    ]);
    let snapshot = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(globex(), t(1), 2, "bob"),
    ]);
    let mut copy = original.clone();
    assert_eq!(copy, original);
    apply_next(&mut copy, &revoke_ev(acme(), t(2), as_user("alice"), 1));
    apply_next(&mut copy, &create_ev(acme(), t(3), 3, "alice"));
    // The original kept its keys, its indexes and its versions.
    assert_eq!(original, snapshot);
    assert!(original.key(&acme(), kid(1)).unwrap().revoked.is_none());
    assert!(!original.key_exists(kid(3)));
    assert!(original.key_by_hash(&secret(3).hash()).is_none());
    assert!(copy.key(&acme(), kid(1)).unwrap().revoked.is_some());
    assert!(copy.key_exists(kid(3)));
    assert_eq!(copy.tenant(&acme()).unwrap().version, 3);
    // The tenant neither touched is still equal; changing the original
    // leaves the copy as it was.
    assert_eq!(copy.tenant(&globex()), original.tenant(&globex()));
    let mut original = original;
    let before = copy.clone();
    apply_next(
        &mut original,
        &removed_ev(globex(), t(4), as_user("bob"), "bob"),
    );
    assert_eq!(copy, before);
    assert!(copy.tenant(&globex()).unwrap().removed_users.is_empty());
    assert!(original.tenant(&globex()).unwrap().is_removed(&user("bob")));
}

fn refused(ledger: &Ledger, seq: u64, event: &Event) -> ApplyError {
    let mut copy = ledger.clone();
    let err = copy
        .apply(seq, event)
        .expect_err("the event must be refused");
    assert_eq!(&copy, ledger, "a refused event changed the ledger");
    err
}

#[test]
fn apply_refuses_a_sequence_gap_or_repeat() {
    let empty = Ledger::new();
    let e = create_ev(acme(), t(1), 1, "alice");
    assert_eq!(
        refused(&empty, 2, &e),
        ApplyError::Sequence {
            tenant: acme(),
            expected: 1,
            found: 2
        }
    );
    assert_eq!(
        refused(&empty, 0, &e),
        ApplyError::Sequence {
            tenant: acme(),
            expected: 1,
            found: 0
        }
    );
    let one = fold(std::slice::from_ref(&e));
    let next = create_ev(acme(), t(2), 2, "alice");
    assert_eq!(
        refused(&one, 3, &next),
        ApplyError::Sequence {
            tenant: acme(),
            expected: 2,
            found: 3
        }
    );
    assert_eq!(
        refused(&one, 1, &next),
        ApplyError::Sequence {
            tenant: acme(),
            expected: 2,
            found: 1
        }
    );
    // Sequences are per tenant: globex starts at 1 whatever acme is at.
    let mut both = one.clone();
    both.apply(1, &create_ev(globex(), t(1), 2, "zed")).unwrap();
    assert_eq!(both.tenant(&globex()).unwrap().version, 1);
}

#[test]
fn apply_refuses_a_double_create() {
    let one = fold(&[create_ev(acme(), t(1), 1, "alice")]);
    // Same id.
    let same_id = ev(
        acme(),
        t(2),
        as_user("alice"),
        EventKind::KeyCreated(KeyCreated {
            secret_hash: secret(2).hash(),
            ..created(1, "alice")
        }),
    );
    assert!(matches!(
        refused(&one, 2, &same_id),
        ApplyError::Inconsistent { seq: 2, .. }
    ));
    // Same secret hash, in this tenant or another (whose first event it would be).
    let same_hash = ev(
        acme(),
        t(2),
        as_user("alice"),
        EventKind::KeyCreated(KeyCreated {
            key_id: kid(2),
            ..created(1, "alice")
        }),
    );
    assert!(matches!(
        refused(&one, 2, &same_hash),
        ApplyError::Inconsistent { .. }
    ));
    let elsewhere = Event {
        tenant: globex(),
        ..same_hash
    };
    assert!(matches!(
        refused(&one, 1, &elsewhere),
        ApplyError::Inconsistent { seq: 1, .. }
    ));
}

#[test]
fn apply_refuses_a_double_revoke_and_unknown_keys() {
    let revoked = fold(&[
        create_ev(acme(), t(1), 1, "alice"),
        revoke_ev(acme(), t(2), as_user("alice"), 1),
    ]);
    let again = revoke_ev(acme(), t(3), as_user("alice"), 1);
    assert_eq!(
        refused(&revoked, 3, &again),
        ApplyError::Inconsistent {
            tenant: acme(),
            seq: 3,
            message: format!("{} is revoked twice", kid(1)),
        }
    );
    // Rotating away from a revoked key is not a second revocation, but
    // revoking it with reason `rotated` is.
    let rotated_again = ev(
        acme(),
        t(3),
        as_user("alice"),
        EventKind::KeyRevoked(KeyRevoked {
            key_id: kid(1),
            reason: RevokeReason::Rotated,
            cause: None,
        }),
    );
    assert!(matches!(
        refused(&revoked, 3, &rotated_again),
        ApplyError::Inconsistent { .. }
    ));
    // Events about a key the tenant does not have, including a tenant's first event.
    let empty = Ledger::new();
    refused(&empty, 1, &revoke_ev(acme(), t(3), as_user("alice"), 1));
    refused(&revoked, 3, &revoke_ev(acme(), t(3), as_user("alice"), 2));
    refused(
        &revoked,
        3,
        &used_ev(acme(), t(3), 2, t(3), UseCounts::one(Outcome::Valid)),
    );
    refused(
        &revoked,
        3,
        &rotated_ev(acme(), t(3), as_user("alice"), 2, 3, t(9)),
    );
    refused(&revoked, 1, &revoke_ev(globex(), t(3), as_user("alice"), 1));
}

#[test]
fn apply_refuses_a_double_user_removal_and_keeps_the_first_time() {
    let removed = fold(&[removed_ev(acme(), t(1), Actor::Operator, "alice")]);
    let again = removed_ev(acme(), t(9), Actor::Operator, "alice");
    assert!(matches!(
        refused(&removed, 2, &again),
        ApplyError::Inconsistent { seq: 2, .. }
    ));
    assert_eq!(
        removed
            .tenant(&acme())
            .unwrap()
            .removed_users
            .get(&user("alice")),
        Some(&t(1))
    );
}

#[test]
fn apply_counts_and_times() {
    let ledger = fold(&[
        create_ev(acme(), t(5), 1, "alice"),
        create_ev(globex(), t(9), 2, "zed"),
        used_ev(acme(), t(7), 1, t(6), UseCounts::one(Outcome::Valid)),
    ]);
    assert_eq!(ledger.events(), 3);
    let acme_state = ledger.tenant(&acme()).unwrap();
    assert_eq!((acme_state.version, acme_state.last_at), (2, t(7)));
    let globex_state = ledger.tenant(&globex()).unwrap();
    assert_eq!((globex_state.version, globex_state.last_at), (1, t(9)));
}

// ------------------------------------------------------------------- usage

fn usage_of(events: &[Event]) -> Usage {
    let mut usage = Usage::new();
    for e in events {
        usage.apply(e);
    }
    usage
}

#[test]
fn usage_goes_to_the_utc_day_of_the_window_start() {
    let events = [
        // Management events change nothing.
        create_ev(acme(), t(0), 1, "alice"),
        // 23:59:59.9 belongs to that day, though the event is written the next.
        used_ev(
            acme(),
            at("2026-03-02T00:00:01Z"),
            1,
            at("2026-03-01T23:59:59.9Z"),
            counts(2, 1, 0, 0),
        ),
        used_ev(
            acme(),
            at("2026-03-02T00:00:01Z"),
            1,
            at("2026-03-02T00:00:00Z"),
            counts(5, 0, 0, 0),
        ),
        used_ev(
            acme(),
            at("2026-03-01T08:00:01Z"),
            1,
            at("2026-03-01T08:00:00Z"),
            counts(1, 0, 1, 1),
        ),
        // Offsets are read as UTC: this is still 2026-03-01.
        used_ev(
            acme(),
            t(0),
            1,
            at("2026-03-02T00:30:00+01:00"),
            counts(1, 0, 0, 0),
        ),
    ];
    let usage = usage_of(&events);
    assert_eq!(
        usage.daily_key(kid(1), day("2026-02-01"), day("2026-03-31")),
        [
            DailyRow {
                day: day("2026-03-01"),
                counts: counts(4, 1, 1, 1)
            },
            DailyRow {
                day: day("2026-03-02"),
                counts: counts(5, 0, 0, 0)
            },
        ]
    );
}

#[test]
fn usage_in_any_day_order_is_the_same_projection() {
    let d1 = at("2026-03-01T10:00:00Z");
    let d2 = at("2026-03-02T10:00:00Z");
    let d3 = at("2026-03-03T10:00:00Z");
    let windows = [
        (d2, counts(1, 0, 0, 0)),
        (d1, counts(0, 2, 0, 0)),
        (d3, counts(0, 0, 3, 0)),
        (d1, counts(0, 0, 0, 4)),
        (d2, counts(5, 0, 0, 0)),
    ];
    let events: Vec<Event> = windows
        .iter()
        .map(|(w, c)| used_ev(acme(), d3, 1, *w, *c))
        .collect();
    let mut reversed = events.clone();
    reversed.reverse();
    let usage = usage_of(&events);
    // Folded in another order, the rollups are equal, and compare equal.
    assert_eq!(usage, usage_of(&reversed));
    assert_ne!(usage, usage_of(&events[..4]));
    let rows = |from, to| usage.daily_key(kid(1), day(from), day(to));
    let row = |d, counts| DailyRow {
        day: day(d),
        counts,
    };
    assert_eq!(
        rows("2026-03-01", "2026-03-03"),
        [
            row("2026-03-01", counts(0, 2, 0, 4)),
            row("2026-03-02", counts(6, 0, 0, 0)),
            row("2026-03-03", counts(0, 0, 3, 0)),
        ]
    );
    // The latest day alone, the earlier days alone, and none.
    assert_eq!(rows("2026-03-03", "2026-03-09").len(), 1);
    assert_eq!(rows("2026-03-01", "2026-03-02").len(), 2);
    assert!(rows("2026-03-04", "2026-03-09").is_empty());
    assert!(rows("2026-03-03", "2026-03-01").is_empty());
    assert_eq!(
        usage.daily_tenant(&acme(), day("2026-03-01"), day("2026-03-03")),
        rows("2026-03-01", "2026-03-03")
    );
}

#[test]
fn usage_folded_at_once_equals_usage_folded_one_by_one() {
    let d1 = at("2026-03-01T10:00:00Z");
    let d2 = at("2026-03-02T10:00:00Z");
    let big = counts(u64::MAX - 1, 0, 0, 0);
    let events = [
        create_ev(acme(), t(0), 1, "alice"),
        used_ev(acme(), d2, 1, d1, counts(1, 2, 3, 4)),
        used_ev(acme(), d2, 2, d1, big),
        used_ev(acme(), d2, 1, d1, big),
        used_ev(globex(), d2, 3, d1, counts(1, 0, 0, 0)),
        used_ev(acme(), d2, 1, d2, counts(0, 1, 0, 0)),
        create_ev(acme(), t(0), 4, "alice"),
        used_ev(acme(), d2, 2, d1, counts(9, 0, 0, 0)),
        used_ev(globex(), d2, 3, d2, counts(1, 0, 0, 0)),
    ];
    let mut at_once = Usage::new();
    at_once.apply_all(&events);
    assert_eq!(at_once, usage_of(&events));
    // Saturated, not wrapped, whatever the grouping.
    assert_eq!(
        at_once.daily_tenant(&acme(), day("2026-03-01"), day("2026-03-01"))[0]
            .counts
            .valid,
        u64::MAX
    );
    let mut in_two = Usage::new();
    in_two.apply_all(&events[..3]);
    in_two.apply_all(&events[3..]);
    assert_eq!(in_two, at_once);
}

#[test]
fn usage_per_key_and_per_tenant() {
    let d1 = at("2026-03-01T10:00:00Z");
    let d2 = at("2026-03-02T10:00:00Z");
    let usage = usage_of(&[
        used_ev(acme(), d1, 1, d1, counts(1, 0, 0, 0)),
        used_ev(acme(), d1, 2, d1, counts(2, 1, 0, 0)),
        used_ev(acme(), d2, 2, d2, counts(0, 0, 3, 0)),
        used_ev(globex(), d1, 3, d1, counts(100, 0, 0, 0)),
    ]);
    let (from, to) = (day("2026-03-01"), day("2026-03-02"));
    assert_eq!(
        usage.daily_key(kid(1), from, to),
        [DailyRow {
            day: from,
            counts: counts(1, 0, 0, 0)
        }]
    );
    assert_eq!(
        usage.daily_key(kid(2), from, to),
        [
            DailyRow {
                day: from,
                counts: counts(2, 1, 0, 0)
            },
            DailyRow {
                day: to,
                counts: counts(0, 0, 3, 0)
            }
        ]
    );
    assert_eq!(
        usage.daily_tenant(&acme(), from, to),
        [
            DailyRow {
                day: from,
                counts: counts(3, 1, 0, 0)
            },
            DailyRow {
                day: to,
                counts: counts(0, 0, 3, 0)
            }
        ]
    );
    assert_eq!(
        usage.daily_tenant(&globex(), from, to),
        [DailyRow {
            day: from,
            counts: counts(100, 0, 0, 0)
        }]
    );
    assert_eq!(
        usage.daily_tenant(&"initech".parse().unwrap(), from, to),
        []
    );
}

#[test]
fn usage_daily_ranges_are_inclusive() {
    let usage = usage_of(
        &(1..=5)
            .map(|d| {
                let start = at(&format!("2026-03-0{d}T12:00:00Z"));
                used_ev(acme(), start, 1, start, counts(d, 0, 0, 0))
            })
            .collect::<Vec<_>>(),
    );
    let days = |rows: Vec<DailyRow>| rows.iter().map(|r| r.counts.valid).collect::<Vec<_>>();
    assert_eq!(
        days(usage.daily_tenant(&acme(), day("2026-03-02"), day("2026-03-04"))),
        [2, 3, 4]
    );
    assert_eq!(
        days(usage.daily_key(kid(1), day("2026-03-02"), day("2026-03-04"))),
        [2, 3, 4]
    );
    assert_eq!(
        days(usage.daily_key(kid(1), day("2026-03-05"), day("2026-03-05"))),
        [5]
    );
    // An upside-down range is empty.
    assert_eq!(
        days(usage.daily_tenant(&acme(), day("2026-03-04"), day("2026-03-02"))),
        [0u64; 0]
    );
    assert_eq!(
        days(usage.daily_key(kid(1), day("2026-03-04"), day("2026-03-02"))),
        [0u64; 0]
    );
}

#[test]
fn usage_summary_over_30_days() {
    let today = day("2026-03-30");
    let usage = usage_of(&[
        // The first day of the window, and the day before it (left out).
        used_ev(
            acme(),
            t(0),
            1,
            at("2026-03-01T00:00:00Z"),
            counts(3, 1, 0, 0),
        ),
        used_ev(
            acme(),
            t(0),
            1,
            at("2026-02-28T23:59:59.999999Z"),
            counts(50, 0, 0, 0),
        ),
        // Today.
        used_ev(
            acme(),
            t(0),
            1,
            at("2026-03-30T23:00:00Z"),
            counts(4, 0, 1, 1),
        ),
        // Another tenant.
        used_ev(
            globex(),
            t(0),
            2,
            at("2026-03-15T00:00:00Z"),
            counts(9, 9, 9, 9),
        ),
    ]);
    let summary = usage.summary(&acme(), today, 30);
    assert_eq!((summary.from, summary.to), (day("2026-03-01"), today));
    assert_eq!(summary.totals, counts(7, 1, 1, 1));
    assert_eq!(summary.success_rate, Some(0.7));
    assert_eq!(summary.series.len(), 30);
    // Oldest first, every day present, the empty ones zero.
    for (i, row) in summary.series.iter().enumerate() {
        assert_eq!(row.day, day("2026-03-01").minus(-(i as i32)));
    }
    assert_eq!(summary.series[0].counts, counts(3, 1, 0, 0));
    assert_eq!(summary.series[29].counts, counts(4, 0, 1, 1));
    assert!(summary.series[1..29].iter().all(|r| r.counts.is_zero()));
}

#[test]
fn usage_summary_without_uses_has_no_success_rate() {
    let summary = Usage::new().summary(&acme(), day("2026-03-30"), 30);
    assert_eq!(summary.totals, UseCounts::default());
    assert_eq!(summary.success_rate, None);
    assert_eq!(summary.series.len(), 30);
    // Only rejected uses: a rate of zero, not none.
    let start = at("2026-03-30T01:00:00Z");
    let usage = usage_of(&[used_ev(acme(), start, 1, start, counts(0, 2, 0, 0))]);
    assert_eq!(
        usage.summary(&acme(), day("2026-03-30"), 30).success_rate,
        Some(0.0)
    );
}

#[test]
fn usage_summary_days_are_clamped() {
    let today = day("2026-03-30");
    let one = Usage::new().summary(&acme(), today, 0);
    assert_eq!((one.from, one.to, one.series.len()), (today, today, 1));
    // A huge window is clamped to the limit instead of allocating for it.
    let most = Usage::new().summary(&acme(), today, u32::MAX);
    assert_eq!(most.series.len(), SUMMARY_DAYS_MAX as usize);
    assert_eq!(most.from, today.minus(SUMMARY_DAYS_MAX as i32 - 1));
}

// ------------------------------------------------------------------- audit

/// A small trail: alice creates key 1 with her key 9, the operator creates
/// key 2 for bob, key 1 is used, the operator removes alice, and the
/// system revokes key 1.
fn trail() -> Vec<Event> {
    vec![
        ev(
            acme(),
            t(10),
            as_key(9, "alice"),
            EventKind::KeyCreated(created(1, "alice")),
        ),
        ev(
            acme(),
            t(20),
            Actor::Operator,
            EventKind::KeyCreated(created(2, "bob")),
        ),
        used_ev(acme(), t(30), 1, t(29), UseCounts::one(Outcome::Valid)),
        ev(
            acme(),
            t(35),
            as_user("carol"),
            EventKind::KeyCreated(created(3, "carol")),
        ),
        removed_ev(acme(), t(40), Actor::Operator, "alice"),
        ev(
            acme(),
            t(40),
            Actor::System,
            EventKind::KeyRevoked(KeyRevoked {
                key_id: kid(1),
                reason: RevokeReason::UserRemoved,
                cause: Some(Cause::UserRemoved {
                    user_id: user("alice"),
                    seq: 5,
                }),
            }),
        ),
    ]
}

/// Positions (1-based) of the trail's events `filter` selects.
fn selected(filter: &AuditFilter) -> Vec<usize> {
    trail()
        .iter()
        .enumerate()
        .filter(|(_, e)| filter.matches(e))
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn audit_shows_management_events_and_usage_on_request() {
    assert_eq!(selected(&AuditFilter::default()), [1, 2, 4, 5, 6]);
    assert_eq!(
        selected(&AuditFilter {
            include_usage: true,
            ..AuditFilter::default()
        }),
        [1, 2, 3, 4, 5, 6]
    );
}

#[test]
fn audit_by_key() {
    let by_key = |include_usage| AuditFilter {
        key_id: Some(kid(1)),
        include_usage,
        ..AuditFilter::default()
    };
    assert_eq!(selected(&by_key(false)), [1, 6]);
    assert_eq!(selected(&by_key(true)), [1, 3, 6]);
    let unknown = AuditFilter {
        key_id: Some(kid(99)),
        ..AuditFilter::default()
    };
    assert_eq!(selected(&unknown), [0usize; 0]);
}

#[test]
fn audit_by_actor() {
    let by = |actor: &str| {
        selected(&AuditFilter {
            actor: Some(actor.into()),
            include_usage: true,
            ..AuditFilter::default()
        })
    };
    // A user id names the user and the keys acting as that user.
    assert_eq!(by("alice"), [1]);
    assert_eq!(by("carol"), [4]);
    assert_eq!(by("user:carol"), [4]);
    // `user:<id>` names the user acting directly, not a key acting as them.
    assert_eq!(by("user:alice"), [0usize; 0]);
    assert_eq!(by(&kid(9).to_string()), [1]);
    assert_eq!(by(&format!("key:{}", kid(9))), [1]);
    assert_eq!(by("operator"), [2, 5]);
    // The system counts usage and runs cascades.
    assert_eq!(by("system"), [3, 6]);
    assert_eq!(by("bob"), [0usize; 0]);
    assert_eq!(by("Operator"), [0usize; 0]);
}

#[test]
fn audit_by_type() {
    let of = |types: Vec<EventType>, include_usage| {
        selected(&AuditFilter {
            types,
            include_usage,
            ..AuditFilter::default()
        })
    };
    assert_eq!(of(vec![EventType::KeyCreated], false), [1, 2, 4]);
    assert_eq!(
        of(vec![EventType::KeyRevoked, EventType::UserRemoved], false),
        [5, 6]
    );
    assert_eq!(of(vec![EventType::KeyRotated], false), [0usize; 0]);
    // Naming KeyUsed is a request for it, alone or with other types.
    assert_eq!(of(vec![EventType::KeyUsed], false), [3]);
    assert_eq!(
        of(vec![EventType::KeyUsed, EventType::UserRemoved], false),
        [3, 5]
    );
    assert_eq!(of(vec![EventType::KeyCreated], true), [1, 2, 4]);
    assert_eq!(EventType::parse("key_revoked"), Some(EventType::KeyRevoked));
    assert_eq!(EventType::parse("KeyUsed"), Some(EventType::KeyUsed));
    assert_eq!(EventType::parse("KeyDeleted"), None);
}

#[test]
fn audit_by_time_from_inclusive_to_exclusive() {
    let between = |from: Option<i64>, to: Option<i64>| {
        selected(&AuditFilter {
            from: from.map(t),
            to: to.map(t),
            ..AuditFilter::default()
        })
    };
    assert_eq!(between(Some(20), Some(40)), [2, 4]);
    assert_eq!(between(Some(20), Some(41)), [2, 4, 5, 6]);
    assert_eq!(between(Some(21), None), [4, 5, 6]);
    assert_eq!(between(None, Some(20)), [1]);
    assert_eq!(between(Some(40), Some(40)), [0usize; 0]);
}

#[test]
fn audit_filters_combine() {
    let filter = AuditFilter {
        key_id: Some(kid(1)),
        actor: Some("system".into()),
        from: Some(t(25)),
        include_usage: true,
        ..AuditFilter::default()
    };
    assert_eq!(selected(&filter), [3, 6]);
    let filter = AuditFilter {
        types: vec![EventType::KeyRevoked],
        ..filter
    };
    assert_eq!(selected(&filter), [6]);
}

#[test]
fn actors_display_for_the_trail() {
    assert_eq!(as_key(9, "alice").to_string(), "API Key: key 9");
    assert_eq!(as_user("alice").to_string(), "User: alice");
    assert_eq!(Actor::Operator.to_string(), "Operator");
    assert_eq!(Actor::System.to_string(), "System");
    assert_eq!(as_user("alice").reference(), "user:alice");
    assert_eq!(as_key(9, "alice").reference(), format!("key:{}", kid(9)));
}
