//! Key policy in the core (issue 14): creating keys with metadata, credits
//! and rate limits; `KeyUpdated` and its rule (scopes only narrow, expiry
//! only comes sooner, unless the caller could grant the wider value); the
//! credit epochs (reservations, releases, refills) and their invariant;
//! replay over random command sequences.
//!
//! The property tests print their seed on failure; `PROPTEST_RNG_SEED=<seed>
//! cargo test -p keyledger-core --test policy` runs that run again, and
//! `PROPTEST_CASES=<n>` runs more cases.

mod common;

use std::collections::HashMap;

use common::*;
use keyledger_core::state::ApplyError;
use keyledger_core::{
    Actor, Command, CommandError, CreateKey, Credits, Event, EventKind, KeyChange, KeyId, Ledger,
    Meta, Principal, RateLimit, Refill, RefillInterval, RevokeKey, RevokeReason, RotateKey, Scope,
    ScopeSet, TenantId, Timestamp, UpdateKey, decide,
};
use proptest::prelude::*;

/// A ledger and its log, fed through `decide`.
struct World {
    ledger: Ledger,
    log: Vec<Event>,
}

impl World {
    fn new() -> Self {
        World {
            ledger: Ledger::new(),
            log: Vec::new(),
        }
    }

    fn run(&mut self, command: &Command, now: Timestamp) -> Result<Vec<Event>, CommandError> {
        let events = decide(&self.ledger, command, now)?;
        for e in &events {
            apply_next(&mut self.ledger, e);
        }
        self.log.extend(events.iter().cloned());
        Ok(events)
    }

    fn key(&self, n: u8) -> &keyledger_core::KeyRecord {
        self.ledger
            .key(&acme(), kid(n))
            .unwrap_or_else(|| panic!("key {n}"))
    }

    fn epoch(&self, n: u8) -> u64 {
        self.key(n).credit_state().map_or(0, |c| c.epoch)
    }
}

fn credits(remaining: u64, refill: Option<(u64, RefillInterval)>) -> Credits {
    Credits {
        remaining,
        refill: refill.map(|(amount, interval)| Refill {
            amount,
            interval,
            day: None,
        }),
    }
}

fn limit(name: &str, limit: u64, duration_ms: u64) -> RateLimit {
    RateLimit {
        name: name.into(),
        limit,
        duration_ms,
    }
}

fn meta(json: &str) -> Meta {
    Meta::new(json.into()).unwrap()
}

fn create(principal: Principal, n: u8) -> CreateKey {
    let s = secret(n);
    CreateKey {
        principal,
        owner: None,
        name: format!("key {n}"),
        description: None,
        expires_at: None,
        scopes: None,
        key_id: kid(n),
        secret_hash: s.hash(),
        masked: s.masked(),
        meta: None,
        credits: None,
        limits: Vec::new(),
    }
}

fn alice() -> Principal {
    user_principal(acme(), "alice")
}

/// Key 1 of alice with 100 credits refilled daily to 50, and one limit.
fn world_with_metered_key() -> World {
    let mut w = World::new();
    let mut c = create(alice(), 1);
    c.credits = Some(credits(100, Some((50, RefillInterval::Daily))));
    c.limits = vec![limit("burst", 10, 1000)];
    c.meta = Some(meta(r#"{"plan":"pro"}"#));
    c.expires_at = Some(t(86_400 * 30));
    w.run(&Command::CreateKey(c), t(10)).unwrap();
    w
}

fn reserve(n: u8, epoch: u64, want: u64) -> Command {
    Command::ReserveCredits {
        tenant: acme(),
        key_id: kid(n),
        epoch,
        want,
    }
}

fn release(n: u8, epoch: u64, amount: u64) -> Command {
    Command::ReleaseCredits {
        tenant: acme(),
        key_id: kid(n),
        epoch,
        amount,
    }
}

fn refill(n: u8, due_at: Timestamp) -> Command {
    Command::RefillCredits {
        tenant: acme(),
        key_id: kid(n),
        due_at,
    }
}

#[test]
fn a_key_is_created_with_its_policy_and_a_bad_policy_is_refused() {
    let w = world_with_metered_key();
    let k = w.key(1);
    assert_eq!(k.meta(), Some(&meta(r#"{"plan":"pro"}"#)));
    assert_eq!(
        k.credits(),
        Some(credits(100, Some((50, RefillInterval::Daily))))
    );
    let c = k.credit_state().unwrap();
    assert_eq!((c.epoch, c.since, c.outstanding), (1, t(10), 0));
    assert_eq!(k.limits(), [limit("burst", 10, 1000)]);

    // A key without a policy keeps none (no allocation).
    let mut w2 = World::new();
    w2.run(&Command::CreateKey(create(alice(), 2)), t(1))
        .unwrap();
    assert!(w2.key(2).policy.is_none());

    let mut bad = create(alice(), 3);
    bad.limits = vec![limit("a", 1, 1000), limit("a", 2, 1000)];
    let err = decide(&w2.ledger, &Command::CreateKey(bad.clone()), t(2)).unwrap_err();
    assert!(
        matches!(&err, CommandError::Policy(p) if p.field == "limits[1].name"),
        "{err:?}"
    );
    bad.limits.clear();
    bad.credits = Some(Credits {
        remaining: 1,
        refill: Some(Refill {
            amount: 0,
            interval: RefillInterval::Daily,
            day: None,
        }),
    });
    let err = decide(&w2.ledger, &Command::CreateKey(bad), t(2)).unwrap_err();
    assert!(
        matches!(&err, CommandError::Policy(p) if p.field == "credits.refill.amount"),
        "{err:?}"
    );
}

#[test]
fn an_update_records_each_field_before_and_after() {
    let mut w = world_with_metered_key();
    let mut u = UpdateKey::new(alice(), kid(1));
    u.name = Some("  renamed ".into());
    u.description = Some(Some("now described".into()));
    u.meta = Some(None);
    u.expires_at = Some(Some(t(86_400)));
    u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead));
    u.credits = Some(Some(credits(7, None)));
    u.limits = Some(Vec::new());
    let events = w.run(&Command::UpdateKey(u), t(20)).unwrap();
    let [e] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.actor, as_user("alice"));
    let EventKind::KeyUpdated(up) = &e.kind else {
        panic!("{e:?}")
    };
    let fields: Vec<_> = up.changes.iter().map(KeyChange::field).collect();
    assert_eq!(
        fields,
        [
            "name",
            "description",
            "meta",
            "expires_at",
            "scopes",
            "credits",
            "limits"
        ]
    );
    assert_eq!(
        up.changes[0],
        KeyChange::Name {
            before: "key 1".into(),
            after: "renamed".into()
        }
    );
    assert_eq!(
        up.changes[5],
        KeyChange::Credits {
            before: Some(credits(100, Some((50, RefillInterval::Daily)))),
            after: Some(credits(7, None)),
        }
    );
    let k = w.key(1);
    assert_eq!(&*k.name, "renamed");
    assert_eq!(k.description.as_deref(), Some("now described"));
    assert_eq!(k.meta(), None);
    assert_eq!(k.expires_at, Some(t(86_400)));
    assert_eq!(k.scopes, ScopeSet::EMPTY.with(Scope::KeysRead));
    assert_eq!(k.credits(), Some(credits(7, None)));
    assert!(k.limits().is_empty());
    // The credit change started a new epoch: the update's own seq.
    assert_eq!(w.epoch(1), 2);
    // Replaying the log gives the same state.
    assert_eq!(fold(&w.log), w.ledger);
}

#[test]
fn an_update_that_changes_nothing_is_refused() {
    let mut w = world_with_metered_key();
    let empty = UpdateKey::new(alice(), kid(1));
    assert_eq!(
        w.run(&Command::UpdateKey(empty), t(20)),
        Err(CommandError::NoChange(kid(1)))
    );
    let mut same = UpdateKey::new(alice(), kid(1));
    same.name = Some("key 1".into());
    same.limits = Some(vec![limit("burst", 10, 1000)]);
    assert_eq!(
        w.run(&Command::UpdateKey(same), t(20)),
        Err(CommandError::NoChange(kid(1)))
    );
    assert_eq!(w.log.len(), 1);
}

#[test]
fn scopes_narrow_and_expiry_shortens_but_only_a_granter_widens_them() {
    let mut w = World::new();
    let mut c = create(alice(), 1);
    c.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead).with(Scope::KeysWrite));
    c.expires_at = Some(t(1000));
    w.run(&Command::CreateKey(c), t(1)).unwrap();
    // Key 9 of alice holds only keys:write.
    let narrow = key_principal(acme(), 9, "alice", ScopeSet::EMPTY.with(Scope::KeysWrite));

    let mut u = UpdateKey::new(narrow.clone(), kid(1));
    u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead));
    u.expires_at = Some(Some(t(500)));
    w.run(&Command::UpdateKey(u), t(2)).unwrap();
    assert_eq!(w.key(1).scopes, ScopeSet::EMPTY.with(Scope::KeysRead));
    assert_eq!(w.key(1).expires_at, Some(t(500)));

    // Widening back to keys:write is allowed: key 9 holds it.
    let mut u = UpdateKey::new(narrow.clone(), kid(1));
    u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead).with(Scope::KeysWrite));
    let err = w.run(&Command::UpdateKey(u.clone()), t(3)).unwrap_err();
    // …but not keys:read, which it does not hold.
    assert!(matches!(err, CommandError::Forbidden(_)), "{err:?}");
    u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysWrite));
    w.run(&Command::UpdateKey(u), t(3)).unwrap();

    // A later expiry, or none, needs every scope of the key: key 9 has
    // them now (keys:write), but not for a key holding keys:read.
    let mut later = UpdateKey::new(narrow.clone(), kid(1));
    later.expires_at = Some(None);
    w.run(&Command::UpdateKey(later), t(4)).unwrap();
    assert_eq!(w.key(1).expires_at, None);

    let mut u = UpdateKey::new(alice(), kid(1));
    u.scopes = Some(ScopeSet::EMPTY.with(Scope::KeysRead));
    u.expires_at = Some(Some(t(600)));
    w.run(&Command::UpdateKey(u), t(5)).unwrap();
    let mut later = UpdateKey::new(narrow, kid(1));
    later.expires_at = Some(Some(t(700)));
    let err = w.run(&Command::UpdateKey(later), t(6)).unwrap_err();
    assert!(matches!(err, CommandError::Forbidden(_)), "{err:?}");
    // An expiry in the past is refused, as on a create.
    let mut past = UpdateKey::new(alice(), kid(1));
    past.expires_at = Some(Some(t(5)));
    assert!(matches!(
        w.run(&Command::UpdateKey(past), t(6)),
        Err(CommandError::Invalid(f)) if f.field == "expires_at"
    ));
    // Empty scopes are refused.
    let mut none = UpdateKey::new(alice(), kid(1));
    none.scopes = Some(ScopeSet::EMPTY);
    assert!(matches!(
        w.run(&Command::UpdateKey(none), t(6)),
        Err(CommandError::Invalid(f)) if f.field == "scopes"
    ));
    assert_eq!(fold(&w.log), w.ledger);
}

#[test]
fn revoked_keys_change_no_more_and_rotated_keys_keep_their_grace_end() {
    let mut w = World::new();
    w.run(&Command::CreateKey(create(alice(), 1)), t(1))
        .unwrap();
    w.run(&Command::CreateKey(create(alice(), 2)), t(1))
        .unwrap();
    w.run(
        &Command::RevokeKey(RevokeKey {
            principal: alice(),
            key_id: kid(1),
            reason: RevokeReason::Manual,
        }),
        t(2),
    )
    .unwrap();
    let mut u = UpdateKey::new(alice(), kid(1));
    u.name = Some("x".into());
    assert_eq!(
        w.run(&Command::UpdateKey(u), t(3)),
        Err(CommandError::AlreadyRevoked(kid(1)))
    );
    let s = secret(3);
    w.run(
        &Command::RotateKey(RotateKey {
            principal: alice(),
            key_id: kid(2),
            grace_seconds: 60,
            expires_at: None,
            new_key_id: kid(3),
            secret_hash: s.hash(),
            masked: s.masked(),
        }),
        t(3),
    )
    .unwrap();
    let mut u = UpdateKey::new(alice(), kid(2));
    u.expires_at = Some(None);
    assert_eq!(
        w.run(&Command::UpdateKey(u), t(4)),
        Err(CommandError::AlreadyRotated(kid(2), kid(3)))
    );
    // Sooner is still fine.
    let mut u = UpdateKey::new(alice(), kid(2));
    u.expires_at = Some(Some(t(30)));
    w.run(&Command::UpdateKey(u), t(4)).unwrap();
}

#[test]
fn the_fold_refuses_an_update_whose_before_is_not_the_state() {
    let w = world_with_metered_key();
    let mut ledger = w.ledger.clone();
    let forged = ev(
        acme(),
        t(30),
        as_user("alice"),
        EventKind::KeyUpdated(keyledger_core::KeyUpdated {
            key_id: kid(1),
            changes: vec![KeyChange::Name {
                before: "not its name".into(),
                after: "x".into(),
            }],
        }),
    );
    assert!(matches!(
        ledger.apply(2, &forged),
        Err(ApplyError::Inconsistent { seq: 2, .. })
    ));
    assert_eq!(ledger, w.ledger, "a refused event changes nothing");
    // Nor a change to what it was, nor none at all.
    for changes in [
        vec![],
        vec![KeyChange::Name {
            before: "key 1".into(),
            after: "key 1".into(),
        }],
    ] {
        let e = Event {
            kind: EventKind::KeyUpdated(keyledger_core::KeyUpdated {
                key_id: kid(1),
                changes,
            }),
            ..forged.clone()
        };
        assert!(ledger.apply(2, &e).is_err());
    }
}

#[test]
fn reservations_draw_on_the_epoch_and_lapse_with_it() {
    let mut w = world_with_metered_key();
    let e1 = w.epoch(1);
    // Grants min(want, remaining).
    let got = w.run(&reserve(1, e1, 60), t(20)).unwrap();
    assert!(matches!(&got[0].kind, EventKind::CreditsReserved(r) if r.amount == 60));
    assert_eq!(got[0].actor, Actor::System);
    let got = w.run(&reserve(1, e1, 60), t(21)).unwrap();
    assert!(matches!(&got[0].kind, EventKind::CreditsReserved(r) if r.amount == 40));
    assert_eq!(
        w.run(&reserve(1, e1, 1), t(22)),
        Err(CommandError::CreditsExhausted(kid(1)))
    );
    // Release some back; then they can be reserved again.
    w.run(&release(1, e1, 15), t(23)).unwrap();
    assert_eq!(w.key(1).credit_state().unwrap().remaining, 15);
    assert!(matches!(
        w.run(&release(1, e1, 1000), t(23)),
        Err(CommandError::Invalid(f)) if f.field == "amount"
    ));
    // Not due before midnight.
    assert_eq!(
        w.run(&refill(1, t(0)), t(24)),
        Err(CommandError::RefillNotDue(kid(1), t(0)))
    );
    let midnight = t(86_400);
    assert_eq!(
        w.run(&refill(1, midnight), t(86_399)),
        Err(CommandError::RefillNotDue(kid(1), midnight))
    );
    // Due after; a server down for three days writes one refill.
    let late = t(86_400 * 3 + 5);
    let due = w.key(1).credit_state().unwrap().refill_due(late).unwrap();
    assert_eq!(due, t(86_400 * 3));
    w.run(&refill(1, due), late).unwrap();
    let c = w.key(1).credit_state().unwrap();
    assert_eq!((c.remaining, c.outstanding, c.since), (50, 0, due));
    assert!(c.epoch > e1);
    // The old epoch's reservations have lapsed.
    assert!(matches!(
        w.run(&reserve(1, e1, 1), late),
        Err(CommandError::StaleEpoch { asked, .. }) if asked == e1
    ));
    assert!(matches!(
        w.run(&release(1, e1, 1), late),
        Err(CommandError::StaleEpoch { .. })
    ));
    // Folded, a stale release is ignored, not refused (another node may
    // have written it before it learnt of the refill).
    let mut ledger = w.ledger.clone();
    let stale = ev(
        acme(),
        late,
        Actor::System,
        EventKind::CreditsReleased(keyledger_core::CreditsReleased {
            key_id: kid(1),
            epoch: e1,
            amount: 5,
        }),
    );
    ledger.apply(next_seq(&ledger, &acme()), &stale).unwrap();
    assert_eq!(
        ledger.key(&acme(), kid(1)).unwrap().credit_state(),
        w.key(1).credit_state()
    );
    // The same refill twice is not due twice.
    assert_eq!(
        w.run(&refill(1, due), late),
        Err(CommandError::RefillNotDue(kid(1), due))
    );
    assert_eq!(fold(&w.log), w.ledger);
}

#[test]
fn credit_commands_refuse_keys_without_credits_and_revoked_keys() {
    let mut w = World::new();
    w.run(&Command::CreateKey(create(alice(), 1)), t(1))
        .unwrap();
    assert_eq!(
        w.run(&reserve(1, 1, 1), t(2)),
        Err(CommandError::NoCredits(kid(1)))
    );
    assert_eq!(
        w.run(&reserve(2, 1, 1), t(2)),
        Err(CommandError::KeyNotFound(kid(2)))
    );
    let mut w = world_with_metered_key();
    assert!(matches!(
        w.run(&reserve(1, 1, 0), t(20)),
        Err(CommandError::Invalid(f)) if f.field == "want"
    ));
    w.run(
        &Command::RevokeKey(RevokeKey {
            principal: alice(),
            key_id: kid(1),
            reason: RevokeReason::Manual,
        }),
        t(21),
    )
    .unwrap();
    assert_eq!(
        w.run(&reserve(1, 1, 1), t(22)),
        Err(CommandError::AlreadyRevoked(kid(1)))
    );
    assert_eq!(
        w.run(&refill(1, t(86_400)), t(86_401)),
        Err(CommandError::AlreadyRevoked(kid(1)))
    );
}

#[test]
fn a_rotation_moves_the_policy_and_the_unreserved_credits() {
    let mut w = world_with_metered_key();
    w.run(&reserve(1, 1, 30), t(20)).unwrap();
    let s = secret(2);
    w.run(
        &Command::RotateKey(RotateKey {
            principal: alice(),
            key_id: kid(1),
            grace_seconds: 3600,
            expires_at: None,
            new_key_id: kid(2),
            secret_hash: s.hash(),
            masked: s.masked(),
        }),
        t(30),
    )
    .unwrap();
    let (old, new) = (w.key(1), w.key(2));
    assert_eq!(new.meta(), old.meta());
    assert_eq!(new.limits(), old.limits());
    assert_eq!(
        new.credits(),
        Some(credits(70, Some((50, RefillInterval::Daily))))
    );
    // The old key keeps only what a node had reserved: never more in all.
    let oc = old.credit_state().unwrap();
    assert_eq!((oc.remaining, oc.outstanding), (0, 30));
    assert_eq!(fold(&w.log), w.ledger);
}

#[test]
fn point_in_time_state_shows_the_fields_as_they_were() {
    let mut w = world_with_metered_key();
    let mut u = UpdateKey::new(alice(), kid(1));
    u.name = Some("later name".into());
    u.limits = Some(Vec::new());
    w.run(&Command::UpdateKey(u), t(20)).unwrap();
    let before = fold(&w.log[..1]);
    let k = before.key(&acme(), kid(1)).unwrap();
    assert_eq!(&*k.name, "key 1");
    assert_eq!(k.limits(), [limit("burst", 10, 1000)]);
    assert_eq!(&*w.key(1).name, "later name");
}

// ------------------------------------------------------- property tests

#[derive(Clone, Debug)]
enum Op {
    Create {
        key: u8,
        credits: Option<(u64, Option<u64>)>,
        scopes: u8,
        expires_in: Option<u16>,
    },
    Update {
        key: u8,
        by: u8,
        scopes: Option<u8>,
        expires_in: Option<Option<u16>>,
        credits: Option<Option<u64>>,
        name: Option<u8>,
    },
    Reserve {
        key: u8,
        stale: bool,
        want: u64,
    },
    Release {
        key: u8,
        stale: bool,
        amount: u64,
    },
    Refill {
        key: u8,
    },
    Rotate {
        key: u8,
    },
    Revoke {
        key: u8,
    },
    Wait {
        hours: u16,
    },
}

const KEYS: u8 = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (
            0..KEYS,
            proptest::option::of((0u64..50, proptest::option::of(1u64..40))),
            1u8..32,
            proptest::option::of(1u16..200),
        )
            .prop_map(|(key, credits, scopes, expires_in)| Op::Create {
                key,
                credits,
                scopes,
                expires_in
            }),
        1 => (
            0..KEYS,
            0u8..3,
            proptest::option::of(0u8..32),
            proptest::option::of(proptest::option::of(1u16..400)),
            proptest::option::of(proptest::option::of(0u64..60)),
            proptest::option::of(0u8..3),
        )
            .prop_map(|(key, by, scopes, expires_in, credits, name)| Op::Update {
                key,
                by,
                scopes,
                expires_in,
                credits,
                name
            }),
        3 => (0..KEYS, proptest::bool::weighted(0.1), 1u64..30)
            .prop_map(|(key, stale, want)| Op::Reserve { key, stale, want }),
        2 => (0..KEYS, proptest::bool::weighted(0.1), 1u64..30)
            .prop_map(|(key, stale, amount)| Op::Release { key, stale, amount }),
        1 => (0..KEYS).prop_map(|key| Op::Refill { key }),
        1 => (0..KEYS).prop_map(|key| Op::Rotate { key }),
        1 => (0..KEYS).prop_map(|key| Op::Revoke { key }),
        1 => (1u16..40).prop_map(|hours| Op::Wait { hours }),
    ]
}

/// The principals updates act as: alice herself, a key of alice's with
/// `keys:write` only, and one with `keys:write` and `keys:read`.
fn updater(by: u8) -> Principal {
    let write = ScopeSet::EMPTY.with(Scope::KeysWrite);
    match by {
        0 => alice(),
        1 => key_principal(acme(), 200, "alice", write),
        _ => key_principal(acme(), 201, "alice", write.with(Scope::KeysRead)),
    }
}

struct Sim {
    world: World,
    now: Timestamp,
    /// Every key id made so far, by slot (rotation makes new ids).
    ids: HashMap<u8, KeyId>,
    next_id: u8,
    /// Per key and epoch: the credits it started with, and net reserved.
    epochs: HashMap<(KeyId, u64), (u64, u64)>,
    /// The slot and new id of the rotation being decided.
    pending_rotation: Option<(u8, KeyId)>,
}

impl Sim {
    fn new() -> Self {
        Sim {
            world: World::new(),
            now: t(0),
            ids: HashMap::new(),
            next_id: 1,
            epochs: HashMap::new(),
            pending_rotation: None,
        }
    }

    fn id(&self, slot: u8) -> KeyId {
        self.ids.get(&slot).copied().unwrap_or(kid(250))
    }

    fn mint(&mut self) -> (KeyId, keyledger_core::Secret) {
        let n = self.next_id;
        self.next_id += 1;
        (kid(n), secret(n))
    }

    fn command(&mut self, op: &Op) -> Option<Command> {
        let tenant: TenantId = acme();
        Some(match op {
            Op::Create {
                key,
                credits: c,
                scopes,
                expires_in,
            } => {
                if self.ids.contains_key(key) || self.next_id > 120 {
                    return None;
                }
                let (id, s) = self.mint();
                self.ids.insert(*key, id);
                Command::CreateKey(CreateKey {
                    key_id: id,
                    secret_hash: s.hash(),
                    masked: s.masked(),
                    scopes: ScopeSet::from_bits(*scopes).filter(|s| *s != ScopeSet::EMPTY),
                    expires_at: expires_in.map(|h| self.now.plus_seconds(u64::from(h) * 3600)),
                    credits: c.map(|(remaining, amount)| {
                        credits(remaining, amount.map(|a| (a, RefillInterval::Daily)))
                    }),
                    ..create(alice(), 0)
                })
            }
            Op::Update {
                key,
                by,
                scopes,
                expires_in,
                credits: c,
                name,
            } => {
                let mut u = UpdateKey::new(updater(*by), self.id(*key));
                u.scopes = scopes.and_then(ScopeSet::from_bits);
                u.expires_at =
                    expires_in.map(|e| e.map(|h| self.now.plus_seconds(u64::from(h) * 3600)));
                u.credits = c.map(|c| c.map(|r| credits(r, Some((20, RefillInterval::Daily)))));
                u.name = name.map(|n| format!("name {n}"));
                Command::UpdateKey(u)
            }
            Op::Reserve { key, stale, want } => {
                let id = self.id(*key);
                let epoch = self.epoch_of(id) - u64::from(*stale);
                Command::ReserveCredits {
                    tenant,
                    key_id: id,
                    epoch,
                    want: *want,
                }
            }
            Op::Release { key, stale, amount } => {
                let id = self.id(*key);
                let epoch = self.epoch_of(id) - u64::from(*stale);
                Command::ReleaseCredits {
                    tenant,
                    key_id: id,
                    epoch,
                    amount: *amount,
                }
            }
            Op::Refill { key } => {
                let id = self.id(*key);
                let due = self
                    .world
                    .ledger
                    .key(&acme(), id)
                    .and_then(|k| k.credit_state())
                    .and_then(|c| c.refill_due(self.now))
                    .unwrap_or(self.now);
                Command::RefillCredits {
                    tenant,
                    key_id: id,
                    due_at: due,
                }
            }
            Op::Rotate { key } => {
                if self.next_id > 120 {
                    return None;
                }
                let old = self.id(*key);
                let (id, s) = self.mint();
                let cmd = Command::RotateKey(RotateKey {
                    principal: alice(),
                    key_id: old,
                    grace_seconds: 3600,
                    expires_at: None,
                    new_key_id: id,
                    secret_hash: s.hash(),
                    masked: s.masked(),
                });
                self.pending_rotation = Some((*key, id));
                cmd
            }
            Op::Revoke { key } => Command::RevokeKey(RevokeKey {
                principal: alice(),
                key_id: self.id(*key),
                reason: RevokeReason::Manual,
            }),
            Op::Wait { hours } => {
                self.now = self.now.plus_seconds(u64::from(*hours) * 3600);
                return None;
            }
        })
    }

    fn epoch_of(&self, id: KeyId) -> u64 {
        self.world
            .ledger
            .key(&acme(), id)
            .and_then(|k| k.credit_state())
            .map_or(1, |c| c.epoch.max(1))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    /// Over random creates, updates, reservations, releases, refills,
    /// rotations, revocations and waits:
    ///
    /// * per key and credit epoch, credits reserved net of releases never
    ///   exceed what the epoch started with, and `remaining + outstanding`
    ///   is always that start;
    /// * a principal that cannot grant a scope never widens a key to it, and
    ///   never pushes an expiry later (or removes it) without holding every
    ///   scope of the key;
    /// * folding the whole log from scratch gives the live ledger.
    #[test]
    fn credits_never_overdraw_and_updates_never_widen(ops in proptest::collection::vec(op(), 1..60)) {
        let mut sim = Sim::new();
        for op in &ops {
            let Some(command) = sim.command(op) else { continue };
            let before = sim.world.ledger.clone();
            let result = sim.world.run(&command, sim.now);
            if let Some((slot, id)) = sim.pending_rotation.take()
                && result.is_ok()
            {
                sim.ids.insert(slot, id);
            }
            let Ok(events) = result else { continue };
            for e in &events {
                let Some(key_id) = e.key_id() else { continue };
                let after = sim.world.ledger.key(&acme(), key_id);
                match &e.kind {
                    EventKind::KeyCreated(c) => {
                        if let Some(cs) = after.and_then(|k| k.credit_state())
                            && cs.epoch != 0
                        {
                            let start = c.credits.as_ref().map_or(0, |c| c.remaining);
                            sim.epochs.insert((key_id, cs.epoch), (start, 0));
                        }
                    }
                    EventKind::CreditsReserved(r) => {
                        let entry = sim.epochs.get_mut(&(key_id, r.epoch)).expect("a known epoch");
                        entry.1 += r.amount;
                        prop_assert!(entry.1 <= entry.0, "epoch {} overdrawn: {entry:?}", r.epoch);
                    }
                    EventKind::CreditsReleased(r) => {
                        if let Some(entry) = sim.epochs.get_mut(&(key_id, r.epoch)) {
                            prop_assert!(r.amount <= entry.1);
                            entry.1 -= r.amount;
                        }
                    }
                    EventKind::CreditsRefilled(r) => {
                        let cs = after.and_then(|k| k.credit_state()).expect("credits");
                        sim.epochs.insert((key_id, cs.epoch), (r.remaining, 0));
                    }
                    EventKind::KeyUpdated(u) => {
                        let principal = command.principal().expect("an update has a principal");
                        let old = before.key(&acme(), key_id).expect("the key existed");
                        for ch in &u.changes {
                            match ch {
                                KeyChange::Scopes { before: b, after: a } => {
                                    prop_assert!(
                                        b.contains_all(*a) || principal.scopes.contains_all(*a),
                                        "{b} widened to {a} by a holder of {}", principal.scopes
                                    );
                                }
                                KeyChange::ExpiresAt { before: b, after: a } => {
                                    let later = match (b, a) {
                                        (None, _) => false,
                                        (Some(_), None) => true,
                                        (Some(b), Some(a)) => a > b,
                                    };
                                    let k = after.expect("the key exists");
                                    prop_assert!(
                                        !later || principal.scopes.contains_all(k.scopes),
                                        "expiry pushed later by a holder of {}", principal.scopes
                                    );
                                    prop_assert!(old.rotated_to().is_none() || !later);
                                }
                                KeyChange::Credits { after: Some(c), .. } => {
                                    let cs = after.and_then(|k| k.credit_state()).expect("credits");
                                    sim.epochs.insert((key_id, cs.epoch), (c.remaining, 0));
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            // The state's own bookkeeping agrees with the model.
            for k in sim.world.ledger.tenant(&acme()).into_iter().flat_map(|t| t.keys.values()) {
                if let Some(c) = k.credit_state()
                    && let Some(&(start, net)) = sim.epochs.get(&(k.id, c.epoch))
                {
                    prop_assert_eq!(c.outstanding, net);
                    // A rotation moves the unreserved credits away.
                    if k.rotated_to().is_none() {
                        prop_assert_eq!(c.epoch_start(), start);
                    }
                }
            }
        }
        prop_assert_eq!(fold(&sim.world.log), sim.world.ledger.clone());
    }
}

/// The random operations above reach every policy event and the credit
/// refusals (so the property is not vacuous).
#[test]
fn operations_reach_every_policy_event() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(14),
        ..Config::default()
    });
    let ops = proptest::collection::vec(op(), 60);
    let mut types = std::collections::BTreeSet::new();
    let mut errors = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let ops = ops.new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::new();
        for op in &ops {
            let Some(command) = sim.command(op) else {
                continue;
            };
            match sim.world.run(&command, sim.now) {
                Ok(_) => {
                    if let Some((slot, id)) = sim.pending_rotation.take() {
                        sim.ids.insert(slot, id);
                    }
                }
                Err(e) => {
                    sim.pending_rotation = None;
                    let name = format!("{e:?}");
                    errors.insert(name[..name.find(['(', ' ']).unwrap_or(name.len())].to_owned());
                }
            }
        }
        types.extend(sim.world.log.iter().map(|e| e.type_name()));
    }
    for t in [
        "KeyCreated",
        "KeyUpdated",
        "CreditsReserved",
        "CreditsReleased",
        "CreditsRefilled",
        "KeyRotated",
        "KeyRevoked",
    ] {
        assert!(types.contains(t), "{t} never reached: {types:?}");
    }
    for e in [
        "CreditsExhausted",
        "StaleEpoch",
        "RefillNotDue",
        "NoCredits",
        "NoChange",
        "Forbidden",
    ] {
        assert!(errors.contains(e), "{e} never reached: {errors:?}");
    }
}

/// A removed user's keys are refused for good: an expired one, which the
/// cascade did not revoke, is not changed (its expiry not pushed back).
#[test]
fn a_removed_users_expired_key_is_not_changed() {
    let mut w = World::new();
    let mut c = create(alice(), 1);
    c.expires_at = Some(t(100));
    w.run(&Command::CreateKey(c), t(1)).unwrap();
    w.run(
        &Command::RemoveUser(keyledger_core::RemoveUser {
            principal: user_principal(acme(), "bob"),
            user_id: user("alice"),
        }),
        t(200),
    )
    .unwrap();
    assert!(w.key(1).revoked.is_none(), "expired keys are not revoked");
    let mut u = UpdateKey::new(user_principal(acme(), "bob"), kid(1));
    u.expires_at = Some(None);
    assert_eq!(
        w.run(&Command::UpdateKey(u), t(201)),
        Err(CommandError::UserRemoved(user("alice")))
    );
}

/// A key without a policy pays one pointer for it (issue 13's memory
/// budget): the policy is boxed, and `None` is the null pointer.
#[test]
fn a_key_without_a_policy_pays_one_pointer() {
    use keyledger_core::KeyPolicy;
    assert_eq!(
        std::mem::size_of::<Option<Box<KeyPolicy>>>(),
        std::mem::size_of::<usize>()
    );
    assert_eq!(KeyPolicy::default().boxed(), None);
}
