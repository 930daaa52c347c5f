//! Every decision, data-driven: given these committed events, when this
//! command is decided at this instant, then exactly these events (one atomic
//! append) or exactly this error.
//!
//! Errors that carry only ids are compared whole. `Forbidden` and `Invalid`
//! carry text for a human: the harness checks their variant and, for
//! `Invalid`, the field, so rewording a message breaks no test here;
//! `error_messages_read_well` pins a few messages on purpose.

mod common;

use common::*;
use keyledger_core::limits::{
    AUDIT_READ_RANGES_MAX, DESCRIPTION_CHARS_MAX, NAME_CHARS_MAX, ROTATION_GRACE_SECONDS_MAX,
};
use keyledger_core::{
    Actor, AuditRead, AuditReadKind, Cause, Command, CommandError, CreateKey, Event, EventKind,
    KeyCreated, KeyLeaked, KeyRevoked, KeyRotated, KeyStatus, Leak, LeakReporter, Ledger, Outcome,
    Principal, RemoveUser, ReportLeaked, Reporter, RevokeKey, RevokeReason, RotateKey, Scope,
    ScopeSet, SeqRange, Timestamp, UseCounts, decide,
};

// ---------------------------------------------------------------- harness

/// Committed state: `events` folded with `Ledger::apply`, each tenant's
/// events numbered 1, 2, 3…
fn given(events: impl IntoIterator<Item = Event>) -> Given {
    let events: Vec<Event> = events.into_iter().collect();
    Given {
        ledger: fold(&events),
    }
}

struct Given {
    ledger: Ledger,
}

impl Given {
    fn when(self, command: impl Into<Cmd>, now: Timestamp) -> Then {
        let command = command.into().0;
        let result = decide(&self.ledger, &command, now);
        Then {
            ledger: self.ledger,
            command,
            result,
        }
    }
}

struct Then {
    ledger: Ledger,
    command: Command,
    result: Result<Vec<Event>, CommandError>,
}

impl Then {
    /// The decision is exactly `expected`. The events are then applied (they
    /// must fold) and the new state is returned for further checks.
    #[track_caller]
    fn then_events(self, expected: Vec<Event>) -> Ledger {
        let Then {
            mut ledger,
            command,
            result,
        } = self;
        match result {
            Ok(events) => {
                assert_eq!(events, expected, "events decided for {command:#?}");
                for e in &events {
                    apply_next(&mut ledger, e);
                }
                ledger
            }
            Err(err) => panic!("expected events, got {err:?} for {command:#?}"),
        }
    }

    /// The decided events, whatever they are (for building a later `given`).
    #[track_caller]
    fn events(self) -> Vec<Event> {
        self.result.expect("the command is accepted")
    }

    /// The decision is exactly the error `expected`.
    #[track_caller]
    fn then_error(self, expected: CommandError) {
        assert_eq!(
            self.result,
            Err(expected),
            "decision for {:#?}",
            self.command
        );
    }

    /// The decision is `Forbidden`, whatever its message.
    #[track_caller]
    fn then_forbidden(self) {
        assert!(
            matches!(self.result, Err(CommandError::Forbidden(_))),
            "expected Forbidden, got {:?} for {:#?}",
            self.result,
            self.command
        );
    }

    /// The decision is `Invalid` for `field`, whatever its message.
    #[track_caller]
    fn then_invalid(self, field: &str) {
        match &self.result {
            Err(CommandError::Invalid(e)) if e.field == field => {}
            other => panic!(
                "expected Invalid({field}), got {other:?} for {:#?}",
                self.command
            ),
        }
    }

    /// The decision is `Duplicate`, whatever its message.
    #[track_caller]
    fn then_duplicate(self) {
        assert!(
            matches!(self.result, Err(CommandError::Duplicate(_))),
            "expected Duplicate, got {:?} for {:#?}",
            self.result,
            self.command
        );
    }
}

/// Anything that is a command (so tests can pass the inner structs).
struct Cmd(Command);

impl From<Command> for Cmd {
    fn from(c: Command) -> Self {
        Cmd(c)
    }
}
impl From<CreateKey> for Cmd {
    fn from(c: CreateKey) -> Self {
        Cmd(Command::CreateKey(c))
    }
}
impl From<RevokeKey> for Cmd {
    fn from(c: RevokeKey) -> Self {
        Cmd(Command::RevokeKey(c))
    }
}
impl From<RotateKey> for Cmd {
    fn from(c: RotateKey) -> Self {
        Cmd(Command::RotateKey(c))
    }
}
impl From<RemoveUser> for Cmd {
    fn from(c: RemoveUser) -> Self {
        Cmd(Command::RemoveUser(c))
    }
}

// --------------------------------------------------------------- commands

/// `p` creates key `n` for itself: name `key n`, nothing else given.
fn create(p: Principal, n: u8) -> CreateKey {
    let s = secret(n);
    CreateKey {
        meta: None,
        credits: None,
        limits: Vec::new(),
        principal: p,
        owner: None,
        name: format!("key {n}"),
        description: None,
        expires_at: None,
        scopes: None,
        key_id: kid(n),
        secret_hash: s.hash(),
        masked: s.masked(),
    }
}

/// `p` revokes key `n` by hand.
fn revoke(p: Principal, n: u8) -> RevokeKey {
    RevokeKey {
        principal: p,
        key_id: kid(n),
        reason: RevokeReason::Manual,
    }
}

/// `p` replaces key `old` with key `new`; the old one works `grace` more seconds.
fn rotate(p: Principal, old: u8, new: u8, grace: u64) -> RotateKey {
    let s = secret(new);
    RotateKey {
        principal: p,
        key_id: kid(old),
        grace_seconds: grace,
        expires_at: None,
        new_key_id: kid(new),
        secret_hash: s.hash(),
        masked: s.masked(),
    }
}

/// `p` removes `id`.
fn remove(p: Principal, id: &str) -> RemoveUser {
    RemoveUser {
        principal: p,
        user_id: user(id),
    }
}

fn alice() -> Principal {
    user_principal(acme(), "alice")
}

fn operator() -> Principal {
    Principal::operator(acme())
}

/// `actor` created key `n` of `owner` in acme at `at`, as `KeyCreated` says.
fn created_by(at: Timestamp, actor: Actor, kc: KeyCreated) -> Event {
    ev(acme(), at, actor, EventKind::KeyCreated(kc))
}

fn revoked(
    at: Timestamp,
    actor: Actor,
    n: u8,
    reason: RevokeReason,
    cause: Option<Cause>,
) -> Event {
    ev(
        acme(),
        at,
        actor,
        EventKind::KeyRevoked(KeyRevoked {
            key_id: kid(n),
            reason,
            cause,
        }),
    )
}

// ----------------------------------------------------------------- create

#[test]
fn create_owner_defaults_to_the_acting_user() {
    given([])
        .when(create(alice(), 1), t(10))
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            created(1, "alice"),
        )]);
}

#[test]
fn create_by_an_api_key_is_owned_by_the_key_owner_and_records_the_key() {
    let p = key_principal(acme(), 9, "alice", ScopeSet::DEFAULT);
    given([])
        .when(create(p, 1), t(10))
        .then_events(vec![created_by(
            t(10),
            as_key(9, "alice"),
            created(1, "alice"),
        )]);
}

#[test]
fn create_naming_oneself_as_owner_is_allowed() {
    given([])
        .when(
            CreateKey {
                owner: Some(user("alice")),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            created(1, "alice"),
        )]);
}

#[test]
fn create_by_the_operator_must_name_a_user() {
    given([])
        .when(create(operator(), 1), t(10))
        .then_invalid("user");
}

#[test]
fn create_by_the_operator_for_a_named_user() {
    // The operator holds every scope, yet the default still leaves out users:remove.
    given([])
        .when(
            CreateKey {
                owner: Some(user("bob")),
                ..create(operator(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(t(10), Actor::Operator, created(1, "bob"))]);
}

#[test]
fn only_the_operator_creates_for_another_user() {
    given([])
        .when(
            CreateKey {
                owner: Some(user("bob")),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_forbidden();
    let p = key_principal(acme(), 9, "alice", ScopeSet::ALL);
    given([])
        .when(
            CreateKey {
                owner: Some(user("bob")),
                ..create(p, 1)
            },
            t(10),
        )
        .then_forbidden();
}

#[test]
fn create_trims_the_name() {
    given([])
        .when(
            CreateKey {
                name: " \t CI/CD Pipeline \n".into(),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                name: "CI/CD Pipeline".into(),
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn create_refuses_an_empty_or_blank_name() {
    for name in ["", "   ", "\t\n"] {
        given([])
            .when(
                CreateKey {
                    name: name.into(),
                    ..create(alice(), 1)
                },
                t(10),
            )
            .then_invalid("name");
    }
}

#[test]
fn create_name_is_at_most_100_characters_not_bytes() {
    // 'é' is two bytes: 100 of them are 200 bytes and still a valid name.
    let longest = "é".repeat(NAME_CHARS_MAX);
    given([])
        .when(
            CreateKey {
                name: format!("  {longest}  "),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                name: longest,
                ..created(1, "alice")
            },
        )]);
    given([])
        .when(
            CreateKey {
                name: "x".repeat(NAME_CHARS_MAX + 1),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_invalid("name");
}

#[test]
fn create_refuses_control_characters_in_the_name() {
    for name in [
        "a\u{7}b",
        "line\nbreak",
        "tab\there",
        "nul\0",
        "del\u{7f}",
        "c1\u{85}x",
    ] {
        given([])
            .when(
                CreateKey {
                    name: name.into(),
                    ..create(alice(), 1)
                },
                t(10),
            )
            .then_invalid("name");
    }
}

#[test]
fn create_description_limits() {
    let longest = "d".repeat(DESCRIPTION_CHARS_MAX);
    given([])
        .when(
            CreateKey {
                description: Some(format!(" {longest}\n")),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                description: Some(longest),
                ..created(1, "alice")
            },
        )]);
    given([])
        .when(
            CreateKey {
                description: Some("d".repeat(DESCRIPTION_CHARS_MAX + 1)),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_invalid("description");
    given([])
        .when(
            CreateKey {
                description: Some("bell\u{7}".into()),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_invalid("description");
}

#[test]
fn create_description_keeps_line_breaks_and_drops_blank() {
    given([])
        .when(
            CreateKey {
                description: Some("deploys\n\tnightly".into()),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                description: Some("deploys\n\tnightly".into()),
                ..created(1, "alice")
            },
        )]);
    given([])
        .when(
            CreateKey {
                description: Some("  \n ".into()),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            created(1, "alice"),
        )]);
}

#[test]
fn create_expiry_must_be_in_the_future() {
    for past in [t(9), t(10), Timestamp::EPOCH] {
        given([])
            .when(
                CreateKey {
                    expires_at: Some(past),
                    ..create(alice(), 1)
                },
                t(10),
            )
            .then_invalid("expires_at");
    }
    let soon = Timestamp::from_micros(t(10).as_micros() + 1);
    given([])
        .when(
            CreateKey {
                expires_at: Some(soon),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                expires_at: Some(soon),
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn create_expiry_is_checked_against_the_tenant_time_when_the_clock_stepped_back() {
    // The tenant's last event is at t(50); the clock now says t(10). An
    // expiry at t(30) is in the clock's future but in the log's past.
    given([create_ev(acme(), t(50), 1, "alice")])
        .when(
            CreateKey {
                expires_at: Some(t(30)),
                ..create(alice(), 2)
            },
            t(10),
        )
        .then_invalid("expires_at");
}

#[test]
fn create_default_scopes_leave_out_users_remove() {
    let p = key_principal(acme(), 9, "alice", ScopeSet::ALL);
    given([])
        .when(create(p, 1), t(10))
        .then_events(vec![created_by(
            t(10),
            as_key(9, "alice"),
            KeyCreated {
                scopes: ScopeSet::DEFAULT,
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn create_default_scopes_are_narrowed_to_the_principal() {
    let held = ScopeSet::EMPTY
        .with(Scope::KeysWrite)
        .with(Scope::AuditRead);
    let p = key_principal(acme(), 9, "alice", held);
    given([])
        .when(create(p, 1), t(10))
        .then_events(vec![created_by(
            t(10),
            as_key(9, "alice"),
            KeyCreated {
                scopes: held,
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn create_grants_users_remove_only_explicitly() {
    given([])
        .when(
            CreateKey {
                scopes: Some(ScopeSet::ALL),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_user("alice"),
            KeyCreated {
                scopes: ScopeSet::ALL,
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn create_grants_a_subset_of_the_principal_scopes() {
    let p = key_principal(acme(), 9, "alice", ScopeSet::DEFAULT);
    let asked = ScopeSet::EMPTY.with(Scope::KeysRead);
    given([])
        .when(
            CreateKey {
                scopes: Some(asked),
                ..create(p, 1)
            },
            t(10),
        )
        .then_events(vec![created_by(
            t(10),
            as_key(9, "alice"),
            KeyCreated {
                scopes: asked,
                ..created(1, "alice")
            },
        )]);
}

#[test]
fn a_key_cannot_grant_a_scope_it_lacks() {
    let p = key_principal(acme(), 9, "alice", ScopeSet::DEFAULT);
    given([])
        .when(
            CreateKey {
                scopes: Some(ScopeSet::ALL),
                ..create(p, 1)
            },
            t(10),
        )
        .then_forbidden();
    let p = key_principal(acme(), 9, "alice", ScopeSet::EMPTY.with(Scope::KeysWrite));
    let asked = ScopeSet::EMPTY
        .with(Scope::KeysWrite)
        .with(Scope::UsageRead);
    given([])
        .when(
            CreateKey {
                scopes: Some(asked),
                ..create(p, 1)
            },
            t(10),
        )
        .then_forbidden();
}

#[test]
fn create_refuses_an_empty_scope_set() {
    given([])
        .when(
            CreateKey {
                scopes: Some(ScopeSet::EMPTY),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_invalid("scopes");
}

#[test]
fn create_needs_keys_write() {
    let p = key_principal(
        acme(),
        9,
        "alice",
        ScopeSet::DEFAULT.without(Scope::KeysWrite),
    );
    given([]).when(create(p, 1), t(10)).then_forbidden();
}

#[test]
fn create_refuses_a_taken_id_or_hash() {
    let history = || [create_ev(acme(), t(1), 1, "alice")];
    // Same id, new secret.
    let s = secret(2);
    given(history())
        .when(
            CreateKey {
                secret_hash: s.hash(),
                masked: s.masked(),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_duplicate();
    // New id, same secret.
    given(history())
        .when(
            CreateKey {
                key_id: kid(2),
                ..create(alice(), 1)
            },
            t(10),
        )
        .then_duplicate();
    // A secret's hash is unique across tenants too: lookup is by hash alone.
    given(history())
        .when(
            CreateKey {
                key_id: kid(2),
                ..create(user_principal(globex(), "alice"), 1)
            },
            t(10),
        )
        .then_duplicate();
}

// ----------------------------------------------------------------- revoke

#[test]
fn revoke_records_the_actor_and_reason() {
    let history = || [create_ev(acme(), t(1), 1, "alice")];
    given(history())
        .when(revoke(alice(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            as_user("alice"),
            1,
            RevokeReason::Manual,
            None,
        )]);
    let p = key_principal(acme(), 9, "bob", ScopeSet::DEFAULT);
    given(history())
        .when(
            RevokeKey {
                reason: RevokeReason::Compromised,
                ..revoke(p, 1)
            },
            t(10),
        )
        .then_events(vec![revoked(
            t(10),
            as_key(9, "bob"),
            1,
            RevokeReason::Compromised,
            None,
        )]);
    given(history())
        .when(revoke(operator(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            Actor::Operator,
            1,
            RevokeReason::Manual,
            None,
        )]);
}

#[test]
fn revoke_twice_is_a_conflict() {
    given([
        create_ev(acme(), t(1), 1, "alice"),
        revoke_ev(acme(), t(2), as_user("alice"), 1),
    ])
    .when(revoke(alice(), 1), t(10))
    .then_error(CommandError::AlreadyRevoked(kid(1)));
}

#[test]
fn revoke_an_unknown_or_foreign_key_is_not_found() {
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(revoke(alice(), 2), t(10))
        .then_error(CommandError::KeyNotFound(kid(2)));
    // Key 1 exists, in acme: from globex it is exactly as unknown.
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(revoke(user_principal(globex(), "alice"), 1), t(10))
        .then_error(CommandError::KeyNotFound(kid(1)));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(revoke(Principal::operator(globex()), 1), t(10))
        .then_error(CommandError::KeyNotFound(kid(1)));
}

#[test]
fn revoke_reasons_of_the_system_are_refused_from_a_client() {
    for reason in [RevokeReason::Rotated, RevokeReason::UserRemoved] {
        given([create_ev(acme(), t(1), 1, "alice")])
            .when(
                RevokeKey {
                    reason,
                    ..revoke(alice(), 1)
                },
                t(10),
            )
            .then_invalid("reason");
    }
}

#[test]
fn revoke_needs_keys_write() {
    let p = key_principal(acme(), 9, "alice", ScopeSet::EMPTY.with(Scope::KeysRead));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(revoke(p, 1), t(10))
        .then_forbidden();
}

#[test]
fn revoke_an_expired_key_or_one_in_its_grace_period() {
    let expiring = ev(
        acme(),
        t(1),
        as_user("alice"),
        EventKind::KeyCreated(KeyCreated {
            expires_at: Some(t(5)),
            ..created(1, "alice")
        }),
    );
    given([expiring])
        .when(revoke(alice(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            as_user("alice"),
            1,
            RevokeReason::Manual,
            None,
        )]);
    let rotated = [
        create_ev(acme(), t(1), 1, "alice"),
        ev(
            acme(),
            t(2),
            as_user("alice"),
            EventKind::KeyCreated(KeyCreated {
                rotated_from: Some(kid(1)),
                ..created(2, "alice")
            }),
        ),
        rotated_ev(acme(), t(2), as_user("alice"), 1, 2, t(100)),
    ];
    given(rotated)
        .when(revoke(alice(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            as_user("alice"),
            1,
            RevokeReason::Manual,
            None,
        )]);
}

// ----------------------------------------------------------------- rotate

/// Key 2, made by rotating key 1 of alice.
fn rotated_key(kc: KeyCreated) -> KeyCreated {
    KeyCreated {
        key_id: kid(2),
        secret_hash: secret(2).hash(),
        masked: secret(2).masked(),
        rotated_from: Some(kid(1)),
        ..kc
    }
}

#[test]
fn rotate_without_grace_creates_then_revokes() {
    let original = KeyCreated {
        name: "CI/CD Pipeline".into(),
        description: Some("nightly".into()),
        scopes: ScopeSet::EMPTY.with(Scope::KeysRead),
        expires_at: Some(t(1000)),
        ..created(1, "alice")
    };
    let history = [created_by(t(1), as_user("alice"), original.clone())];
    let new_expiry = t(5000);
    given(history)
        .when(
            RotateKey {
                expires_at: Some(new_expiry),
                ..rotate(alice(), 1, 2, 0)
            },
            t(10),
        )
        .then_events(vec![
            // Same owner, name, description and scopes; the command's expiry.
            created_by(
                t(10),
                as_user("alice"),
                rotated_key(KeyCreated {
                    expires_at: Some(new_expiry),
                    ..original
                }),
            ),
            revoked(t(10), as_user("alice"), 1, RevokeReason::Rotated, None),
        ]);
}

#[test]
fn rotate_with_grace_creates_then_sets_the_old_expiry() {
    let ledger = given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(alice(), 1, 2, 60), t(10))
        .then_events(vec![
            created_by(t(10), as_user("alice"), rotated_key(created(1, "alice"))),
            ev(
                acme(),
                t(10),
                as_user("alice"),
                EventKind::KeyRotated(KeyRotated {
                    key_id: kid(1),
                    new_key_id: kid(2),
                    expires_at: t(70),
                }),
            ),
        ]);
    let old = ledger.key(&acme(), kid(1)).unwrap();
    assert_eq!(old.status(t(69)), KeyStatus::Active);
    assert_eq!(old.status(t(70)), KeyStatus::Expired);
}

#[test]
fn rotate_grace_never_extends_an_existing_expiry() {
    let expiring = |at| {
        created_by(
            t(1),
            as_user("alice"),
            KeyCreated {
                expires_at: Some(at),
                ..created(1, "alice")
            },
        )
    };
    let rotated = |expires_at| {
        ev(
            acme(),
            t(10),
            as_user("alice"),
            EventKind::KeyRotated(KeyRotated {
                key_id: kid(1),
                new_key_id: kid(2),
                expires_at,
            }),
        )
    };
    // The old key expires at t(30), before the grace would end (t(70)).
    given([expiring(t(30))])
        .when(rotate(alice(), 1, 2, 60), t(10))
        .then_events(vec![
            created_by(t(10), as_user("alice"), rotated_key(created(1, "alice"))),
            rotated(t(30)),
        ]);
    // The old key expires at t(500), after the grace ends.
    given([expiring(t(500))])
        .when(rotate(alice(), 1, 2, 60), t(10))
        .then_events(vec![
            created_by(t(10), as_user("alice"), rotated_key(created(1, "alice"))),
            rotated(t(70)),
        ]);
}

#[test]
fn rotate_an_expired_key_revokes_it_even_with_grace() {
    // Current behaviour: an expired key is replaced (renewed) and revoked at once.
    given([created_by(
        t(1),
        as_user("alice"),
        KeyCreated {
            expires_at: Some(t(5)),
            ..created(1, "alice")
        },
    )])
    .when(rotate(alice(), 1, 2, 60), t(10))
    .then_events(vec![
        created_by(t(10), as_user("alice"), rotated_key(created(1, "alice"))),
        revoked(t(10), as_user("alice"), 1, RevokeReason::Rotated, None),
    ]);
}

#[test]
fn rotate_a_revoked_key_is_a_conflict() {
    given([
        create_ev(acme(), t(1), 1, "alice"),
        revoke_ev(acme(), t(2), as_user("alice"), 1),
    ])
    .when(rotate(alice(), 1, 2, 0), t(10))
    .then_error(CommandError::AlreadyRevoked(kid(1)));
}

#[test]
fn rotate_an_unknown_or_foreign_key_is_not_found() {
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(alice(), 3, 2, 0), t(10))
        .then_error(CommandError::KeyNotFound(kid(3)));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(user_principal(globex(), "alice"), 1, 2, 0), t(10))
        .then_error(CommandError::KeyNotFound(kid(1)));
}

#[test]
fn a_restricted_key_cannot_rotate_a_key_with_more_scopes() {
    let powerful = created_by(
        t(1),
        as_user("alice"),
        KeyCreated {
            scopes: ScopeSet::ALL,
            ..created(1, "alice")
        },
    );
    let p = key_principal(acme(), 9, "alice", ScopeSet::DEFAULT);
    given([powerful])
        .when(rotate(p, 1, 2, 0), t(10))
        .then_forbidden();
}

#[test]
fn rotate_needs_keys_write() {
    let p = key_principal(
        acme(),
        9,
        "alice",
        ScopeSet::DEFAULT.without(Scope::KeysWrite),
    );
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(p, 1, 2, 0), t(10))
        .then_forbidden();
}

/// One rule for revoke and rotate (`may_act_on` in decide.rs): keys belong
/// to the tenant, so `keys:write` acts on any key of the tenant, whoever
/// owns it; a rotation, which hands out a new secret with the old key's
/// scopes, also needs every one of them.
#[test]
fn revoke_and_rotate_follow_one_rule_on_another_users_key() {
    let alices = || [create_ev(acme(), t(1), 1, "alice")];
    // bob's key holds alice's key's scopes: it may revoke it and rotate it;
    // the new key is still alice's, with the same scopes.
    let bob = key_principal(acme(), 9, "bob", ScopeSet::DEFAULT);
    given(alices())
        .when(revoke(bob.clone(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            as_key(9, "bob"),
            1,
            RevokeReason::Manual,
            None,
        )]);
    given(alices())
        .when(rotate(bob, 1, 2, 0), t(10))
        .then_events(vec![
            created_by(t(10), as_key(9, "bob"), rotated_key(created(1, "alice"))),
            revoked(t(10), as_key(9, "bob"), 1, RevokeReason::Rotated, None),
        ]);
    // A narrower key (without `usage:read`, which alice's key holds) may
    // revoke it, but not rotate it: that would hand it a secret more
    // powerful than itself.
    let narrow = key_principal(
        acme(),
        9,
        "bob",
        ScopeSet::DEFAULT.without(Scope::UsageRead),
    );
    given(alices())
        .when(revoke(narrow.clone(), 1), t(10))
        .then_events(vec![revoked(
            t(10),
            as_key(9, "bob"),
            1,
            RevokeReason::Manual,
            None,
        )]);
    given(alices())
        .when(rotate(narrow.clone(), 1, 2, 0), t(10))
        .then_forbidden();
    // Without `keys:write`, neither.
    let reader = key_principal(
        acme(),
        9,
        "bob",
        ScopeSet::DEFAULT.without(Scope::KeysWrite),
    );
    given(alices())
        .when(revoke(reader.clone(), 1), t(10))
        .then_forbidden();
    given(alices())
        .when(rotate(reader, 1, 2, 0), t(10))
        .then_forbidden();
    // The same narrow key rotates a key no more powerful than itself,
    // another user's as its own owner's.
    let narrow_key = || {
        [
            create_ev(acme(), t(1), 1, "alice"),
            ev(
                acme(),
                t(2),
                as_user("alice"),
                EventKind::KeyCreated(KeyCreated {
                    scopes: ScopeSet::DEFAULT.without(Scope::UsageRead),
                    ..created(3, "alice")
                }),
            ),
        ]
    };
    given(narrow_key())
        .when(revoke(narrow.clone(), 3), t(10))
        .then_events(vec![revoked(
            t(10),
            as_key(9, "bob"),
            3,
            RevokeReason::Manual,
            None,
        )]);
    given(narrow_key())
        .when(rotate(narrow, 3, 4, 0), t(10))
        .then_events(vec![
            created_by(
                t(10),
                as_key(9, "bob"),
                KeyCreated {
                    key_id: kid(4),
                    secret_hash: secret(4).hash(),
                    masked: secret(4).masked(),
                    rotated_from: Some(kid(3)),
                    scopes: ScopeSet::DEFAULT.without(Scope::UsageRead),
                    ..created(3, "alice")
                },
            ),
            revoked(t(10), as_key(9, "bob"), 3, RevokeReason::Rotated, None),
        ]);
    // The operator acts on any key.
    given(alices())
        .when(rotate(operator(), 1, 2, 0), t(10))
        .then_events(vec![
            created_by(t(10), Actor::Operator, rotated_key(created(1, "alice"))),
            revoked(t(10), Actor::Operator, 1, RevokeReason::Rotated, None),
        ]);
}

#[test]
fn rotate_grace_is_at_most_the_maximum() {
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(alice(), 1, 2, ROTATION_GRACE_SECONDS_MAX + 1), t(10))
        .then_invalid("grace_seconds");
    let end = t(10).plus_seconds(ROTATION_GRACE_SECONDS_MAX);
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(alice(), 1, 2, ROTATION_GRACE_SECONDS_MAX), t(10))
        .then_events(vec![
            created_by(t(10), as_user("alice"), rotated_key(created(1, "alice"))),
            rotated_ev(acme(), t(10), as_user("alice"), 1, 2, end),
        ]);
}

#[test]
fn rotate_new_expiry_must_be_in_the_future() {
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(
            RotateKey {
                expires_at: Some(t(10)),
                ..rotate(alice(), 1, 2, 0)
            },
            t(10),
        )
        .then_invalid("expires_at");
}

#[test]
fn rotate_refuses_a_taken_id_or_hash() {
    let history = || {
        [
            create_ev(acme(), t(1), 1, "alice"),
            create_ev(acme(), t(2), 3, "alice"),
        ]
    };
    given(history())
        .when(
            RotateKey {
                new_key_id: kid(3),
                ..rotate(alice(), 1, 2, 0)
            },
            t(10),
        )
        .then_duplicate();
    given(history())
        .when(rotate(alice(), 1, 3, 0), t(10))
        .then_duplicate();
    // Rotating a key into its own id.
    given(history())
        .when(rotate(alice(), 1, 1, 0), t(10))
        .then_duplicate();
}

// ------------------------------------------------------------ remove user

#[test]
fn remove_user_revokes_every_active_key_in_the_same_append() {
    // The textbook case: alice has three active keys and one revoked key; bob
    // has one; alice also has a key in globex. Globex's events interleave
    // with acme's, so the cause's seq must be counted per tenant.
    let history = [
        create_ev(acme(), t(1), 1, "alice"),          // acme 1
        create_ev(globex(), t(1), 9, "alice"),        // globex 1
        create_ev(acme(), t(2), 2, "alice"),          // acme 2
        create_ev(acme(), t(3), 3, "alice"),          // acme 3
        create_ev(globex(), t(3), 8, "carol"),        // globex 2
        create_ev(acme(), t(4), 4, "alice"),          // acme 4
        create_ev(acme(), t(5), 5, "bob"),            // acme 5
        revoke_ev(acme(), t(6), as_user("alice"), 4), // acme 6
    ];
    let cause = Some(Cause::UserRemoved {
        user_id: user("alice"),
        seq: 7,
    });
    let by_system = |n| {
        revoked(
            t(100),
            Actor::System,
            n,
            RevokeReason::UserRemoved,
            cause.clone(),
        )
    };
    let ledger = given(history)
        .when(remove(operator(), "alice"), t(100))
        .then_events(vec![
            removed_ev(acme(), t(100), Actor::Operator, "alice"),
            by_system(1),
            by_system(2),
            by_system(3),
        ]);

    let acme_state = ledger.tenant(&acme()).unwrap();
    assert_eq!(acme_state.version, 10);
    assert!(acme_state.is_removed(&user("alice")));
    for n in [1, 2, 3] {
        let rev = ledger
            .key(&acme(), kid(n))
            .unwrap()
            .revoked
            .clone()
            .unwrap();
        assert_eq!(
            (rev.at, rev.by, rev.reason, rev.cause),
            (
                t(100),
                Actor::System,
                RevokeReason::UserRemoved,
                cause.clone()
            )
        );
    }
    // The key revoked before keeps its own revocation.
    let four = ledger
        .key(&acme(), kid(4))
        .unwrap()
        .revoked
        .clone()
        .unwrap();
    assert_eq!((four.at, four.reason), (t(6), RevokeReason::Manual));
    // Bob's key, and alice's key in another tenant, are untouched.
    assert_eq!(
        ledger.key(&acme(), kid(5)).unwrap().status(t(100)),
        KeyStatus::Active
    );
    assert_eq!(
        ledger.key(&globex(), kid(9)).unwrap().status(t(100)),
        KeyStatus::Active
    );
    assert!(!ledger.tenant(&globex()).unwrap().is_removed(&user("alice")));
}

#[test]
fn remove_user_leaves_expired_keys_and_revokes_keys_in_grace() {
    let history = [
        created_by(
            t(1),
            as_user("alice"),
            KeyCreated {
                expires_at: Some(t(50)),
                ..created(1, "alice")
            },
        ),
        create_ev(acme(), t(2), 2, "alice"),
        ev(
            acme(),
            t(3),
            as_user("alice"),
            EventKind::KeyCreated(KeyCreated {
                rotated_from: Some(kid(2)),
                ..created(3, "alice")
            }),
        ),
        rotated_ev(acme(), t(3), as_user("alice"), 2, 3, t(500)),
    ];
    let cause = || {
        Some(Cause::UserRemoved {
            user_id: user("alice"),
            seq: 5,
        })
    };
    let p = key_principal(acme(), 7, "root", ScopeSet::ALL);
    given(history)
        .when(remove(p, "alice"), t(100))
        .then_events(vec![
            removed_ev(acme(), t(100), as_key(7, "root"), "alice"),
            revoked(t(100), Actor::System, 2, RevokeReason::UserRemoved, cause()),
            revoked(t(100), Actor::System, 3, RevokeReason::UserRemoved, cause()),
        ]);
}

#[test]
fn remove_a_user_without_keys() {
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(remove(alice(), "dave"), t(10))
        .then_events(vec![removed_ev(acme(), t(10), as_user("alice"), "dave")]);
    // A tenant with no events yet.
    given([])
        .when(remove(operator(), "dave"), t(10))
        .then_events(vec![removed_ev(acme(), t(10), Actor::Operator, "dave")]);
}

#[test]
fn remove_a_user_twice_is_a_conflict() {
    given([removed_ev(acme(), t(1), Actor::Operator, "alice")])
        .when(remove(operator(), "alice"), t(10))
        .then_error(CommandError::UserAlreadyRemoved(user("alice")));
}

#[test]
fn a_removed_user_gets_no_new_key() {
    let history = || {
        [
            created_by(
                t(1),
                as_user("alice"),
                KeyCreated {
                    expires_at: Some(t(5)),
                    ..created(1, "alice")
                },
            ),
            removed_ev(acme(), t(10), Actor::Operator, "alice"),
        ]
    };
    given(history())
        .when(create(alice(), 2), t(20))
        .then_error(CommandError::UserRemoved(user("alice")));
    given(history())
        .when(
            CreateKey {
                owner: Some(user("alice")),
                ..create(operator(), 2)
            },
            t(20),
        )
        .then_error(CommandError::UserRemoved(user("alice")));
    // Her expired key survived the cascade; rotating it would hand her a new one.
    given(history())
        .when(rotate(operator(), 1, 2, 0), t(20))
        .then_error(CommandError::UserRemoved(user("alice")));
    // The same user id in another tenant is another user.
    given(history())
        .when(create(user_principal(globex(), "alice"), 2), t(20))
        .then_events(vec![ev(
            globex(),
            t(20),
            as_user("alice"),
            EventKind::KeyCreated(created(2, "alice")),
        )]);
}

#[test]
fn remove_user_needs_users_remove() {
    let p = key_principal(acme(), 9, "root", ScopeSet::DEFAULT);
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(remove(p, "alice"), t(10))
        .then_forbidden();
}

// ------------------------------------------------------------------- time

#[test]
fn event_times_never_go_backwards() {
    let history = || {
        [
            create_ev(acme(), t(1), 1, "alice"),
            create_ev(acme(), t(50), 2, "alice"),
        ]
    };
    // The clock says t(10); the tenant's last event is at t(50).
    given(history())
        .when(create(alice(), 3), t(10))
        .then_events(vec![created_by(
            t(50),
            as_user("alice"),
            created(3, "alice"),
        )]);
    given(history())
        .when(revoke(alice(), 1), t(10))
        .then_events(vec![revoked(
            t(50),
            as_user("alice"),
            1,
            RevokeReason::Manual,
            None,
        )]);
    given(history())
        .when(rotate(alice(), 1, 3, 60), t(10))
        .then_events(vec![
            created_by(
                t(50),
                as_user("alice"),
                KeyCreated {
                    key_id: kid(3),
                    secret_hash: secret(3).hash(),
                    masked: secret(3).masked(),
                    rotated_from: Some(kid(1)),
                    ..created(1, "alice")
                },
            ),
            // The grace is counted from the event's time, not the clock's.
            rotated_ev(acme(), t(50), as_user("alice"), 1, 3, t(110)),
        ]);
    let cause = || {
        Some(Cause::UserRemoved {
            user_id: user("alice"),
            seq: 3,
        })
    };
    given(history())
        .when(remove(operator(), "alice"), t(10))
        .then_events(vec![
            removed_ev(acme(), t(50), Actor::Operator, "alice"),
            revoked(t(50), Actor::System, 1, RevokeReason::UserRemoved, cause()),
            revoked(t(50), Actor::System, 2, RevokeReason::UserRemoved, cause()),
        ]);
    let usage = used(1, t(5), UseCounts::one(Outcome::Valid));
    given(history())
        .when(
            Command::RecordUsage {
                tenant: acme(),
                usage: usage.clone(),
            },
            t(10),
        )
        .then_events(vec![ev(
            acme(),
            t(50),
            Actor::System,
            EventKind::KeyUsed(usage),
        )]);
}

#[test]
fn another_tenants_clock_does_not_hold_this_one_back() {
    given([
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(globex(), t(900), 2, "zed"),
    ])
    .when(create(alice(), 3), t(10))
    .then_events(vec![created_by(
        t(10),
        as_user("alice"),
        created(3, "alice"),
    )]);
}

// ------------------------------------------------------------------ usage

#[test]
fn record_usage_of_a_known_key_as_the_system() {
    let counts = UseCounts {
        usage_exceeded: 0,
        rate_limited: 0,
        credits_spent: 0,
        valid: 3,
        revoked: 0,
        expired: 0,
        insufficient_scope: 2,
    };
    let usage = used(1, t(4), counts);
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(
            Command::RecordUsage {
                tenant: acme(),
                usage: usage.clone(),
            },
            t(10),
        )
        .then_events(vec![ev(
            acme(),
            t(10),
            Actor::System,
            EventKind::KeyUsed(usage),
        )]);
    // Uses of a revoked key are counted too (outcome `revoked`).
    let usage = used(1, t(4), UseCounts::one(Outcome::Revoked));
    given([
        create_ev(acme(), t(1), 1, "alice"),
        revoke_ev(acme(), t(2), as_user("alice"), 1),
    ])
    .when(
        Command::RecordUsage {
            tenant: acme(),
            usage: usage.clone(),
        },
        t(10),
    )
    .then_events(vec![ev(
        acme(),
        t(10),
        Actor::System,
        EventKind::KeyUsed(usage),
    )]);
}

#[test]
fn record_usage_of_an_unknown_or_foreign_key_is_not_found() {
    let usage = used(2, t(4), UseCounts::one(Outcome::Valid));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(
            Command::RecordUsage {
                tenant: acme(),
                usage,
            },
            t(10),
        )
        .then_error(CommandError::KeyNotFound(kid(2)));
    let usage = used(1, t(4), UseCounts::one(Outcome::Valid));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(
            Command::RecordUsage {
                tenant: globex(),
                usage,
            },
            t(10),
        )
        .then_error(CommandError::KeyNotFound(kid(1)));
}

// --------------------------------------------------------------- messages

#[test]
fn error_messages_read_well() {
    let cases = [
        (
            given([]).when(create(operator(), 1), t(10)).result,
            "user: the operator must name the user who will own the key",
        ),
        (
            given([])
                .when(
                    CreateKey {
                        name: "x".repeat(101),
                        ..create(alice(), 1)
                    },
                    t(10),
                )
                .result,
            "name: a name is at most 100 characters, not 101",
        ),
        (
            given([])
                .when(
                    create(key_principal(acme(), 9, "a", ScopeSet::EMPTY), 1),
                    t(10),
                )
                .result,
            "this requires the `keys:write` scope",
        ),
        (
            given([
                create_ev(acme(), t(1), 1, "alice"),
                revoke_ev(acme(), t(2), as_user("alice"), 1),
            ])
            .when(revoke(alice(), 1), t(10))
            .result,
            "key key_01JR0000000000000000000001 is already revoked",
        ),
    ];
    for (result, message) in cases {
        assert_eq!(result.unwrap_err().to_string(), message);
    }
}

#[test]
fn create_refuses_a_key_id_taken_in_another_tenant() {
    // Key ids are unique across tenants, so usage keyed by id alone never
    // adds two keys' uses up.
    let s = secret(2);
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(
            CreateKey {
                secret_hash: s.hash(),
                masked: s.masked(),
                ..create(user_principal(globex(), "zed"), 1)
            },
            t(10),
        )
        .then_duplicate();
}

#[test]
fn a_removed_user_acting_directly_is_refused() {
    given([
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(acme(), t(2), 2, "bob"),
        ev(
            acme(),
            t(3),
            Actor::Operator,
            EventKind::UserRemoved(keyledger_core::UserRemoved {
                user_id: user("alice"),
            }),
        ),
    ])
    .when(
        RevokeKey {
            principal: user_principal(acme(), "alice"),
            key_id: kid(2),
            reason: RevokeReason::Manual,
        },
        t(10),
    )
    .then_error(CommandError::UserRemoved(user("alice")));
}

#[test]
fn rotating_a_key_in_its_grace_period_again_is_a_conflict() {
    let first = given([create_ev(acme(), t(1), 1, "alice")])
        .when(rotate(user_principal(acme(), "alice"), 1, 2, 600), t(2))
        .events();
    given(
        [create_ev(acme(), t(1), 1, "alice")]
            .into_iter()
            .chain(first),
    )
    .when(rotate(user_principal(acme(), "alice"), 1, 3, 600), t(3))
    .then_error(CommandError::AlreadyRotated(kid(1), kid(2)));
}

// ------------------------------------------------------------ audit reads

/// `p` records `read` (the runtime gathers the reads of one window).
fn record_read(p: Principal, read: AuditRead) -> Command {
    Command::RecordAuditRead { principal: p, read }
}

fn range(from: u64, to: u64) -> SeqRange {
    SeqRange { from, to }
}

/// `count` list reads covering `ranges`, the first at `start`, the last at `end`.
fn reads(count: u64, ranges: Vec<SeqRange>, start: Timestamp, end: Timestamp) -> AuditRead {
    AuditRead {
        what: AuditReadKind::List,
        count,
        ranges,
        window_start: start,
        window_end: end,
    }
}

fn auditor() -> Principal {
    key_principal(acme(), 9, "alice", ScopeSet::EMPTY.with(Scope::AuditRead))
}

#[test]
fn one_read_is_recorded_by_its_reader() {
    let read = AuditRead::one(AuditReadKind::Bundle, SeqRange::new(2, 8), t(10));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(record_read(auditor(), read.clone()), t(10))
        .then_events(vec![ev(
            acme(),
            t(10),
            as_key(9, "alice"),
            EventKind::AuditRead(read),
        )]);
}

#[test]
fn the_reads_of_a_window_are_one_event_with_their_exact_count() {
    let read = reads(5, vec![range(1, 50), range(70, 70)], t(10), t(11));
    given([create_ev(acme(), t(1), 1, "alice")])
        .when(record_read(auditor(), read.clone()), t(11))
        .then_events(vec![ev(
            acme(),
            t(11),
            as_key(9, "alice"),
            EventKind::AuditRead(read),
        )]);
}

#[test]
fn reads_that_covered_no_event_are_counted_with_no_range() {
    let read = reads(3, vec![], t(10), t(10));
    given([])
        .when(record_read(operator(), read.clone()), t(10))
        .then_events(vec![ev(
            acme(),
            t(10),
            Actor::Operator,
            EventKind::AuditRead(read),
        )]);
}

#[test]
fn a_read_is_recorded_no_earlier_than_the_tenant_last_event() {
    let read = reads(1, vec![range(1, 1)], t(10), t(10));
    given([create_ev(acme(), t(50), 1, "alice")])
        .when(record_read(auditor(), read.clone()), t(10))
        .then_events(vec![ev(
            acme(),
            t(50),
            as_key(9, "alice"),
            EventKind::AuditRead(read),
        )]);
}

#[test]
fn recording_a_read_needs_audit_read() {
    let p = key_principal(
        acme(),
        9,
        "alice",
        ScopeSet::DEFAULT.without(Scope::AuditRead),
    );
    given([])
        .when(record_read(p, reads(1, vec![], t(1), t(1))), t(1))
        .then_forbidden();
}

#[test]
fn a_removed_user_reads_nothing_more() {
    given([removed_ev(acme(), t(1), Actor::Operator, "alice")])
        .when(
            record_read(alice(), reads(1, vec![range(1, 1)], t(2), t(2))),
            t(2),
        )
        .then_error(CommandError::UserRemoved(user("alice")));
}

#[test]
fn an_audit_read_counts_at_least_one_read() {
    given([])
        .when(record_read(operator(), reads(0, vec![], t(1), t(1))), t(1))
        .then_invalid("count");
}

#[test]
fn an_audit_read_has_no_more_ranges_than_reads() {
    given([])
        .when(
            record_read(
                operator(),
                reads(1, vec![range(1, 2), range(5, 6)], t(1), t(1)),
            ),
            t(1),
        )
        .then_invalid("count");
}

#[test]
fn an_audit_read_range_runs_forward_from_one() {
    for bad in [range(5, 4), range(0, 3), range(0, 0)] {
        given([])
            .when(
                record_read(operator(), reads(1, vec![bad], t(1), t(1))),
                t(1),
            )
            .then_invalid("from");
    }
}

#[test]
fn an_audit_read_ranges_are_in_order_apart_and_few() {
    let unordered = [
        vec![range(5, 6), range(1, 2)],
        vec![range(1, 5), range(3, 8)],
        vec![range(1, 5), range(6, 8)],
        vec![range(1, 5), range(1, 5)],
    ];
    for ranges in unordered {
        given([])
            .when(record_read(operator(), reads(9, ranges, t(1), t(1))), t(1))
            .then_invalid("ranges");
    }
    let many: Vec<SeqRange> = (0..=AUDIT_READ_RANGES_MAX as u64)
        .map(|i| range(3 * i + 1, 3 * i + 1))
        .collect();
    given([])
        .when(record_read(operator(), reads(1000, many, t(1), t(1))), t(1))
        .then_invalid("ranges");
}

#[test]
fn an_audit_read_window_ends_after_it_starts() {
    given([])
        .when(record_read(operator(), reads(2, vec![], t(5), t(4))), t(5))
        .then_invalid("window_start");
}

// Gathering reads (the pure half of the runtime's coalescing).

#[test]
fn gathering_reads_counts_each_and_unites_their_ranges() {
    let mut read = AuditRead::one(AuditReadKind::List, SeqRange::new(51, 100), t(3));
    read.add(SeqRange::new(1, 50), t(1)); // touches: one range
    read.add(None, t(4)); // an empty page: counted, no range
    read.add(SeqRange::new(200, 210), t(2));
    read.add(SeqRange::new(205, 220), t(2)); // overlaps
    read.add(SeqRange::new(150, 150), t(2));
    assert_eq!(read.count, 6);
    assert_eq!(
        read.ranges,
        vec![range(1, 100), range(150, 150), range(200, 220)]
    );
    assert_eq!((read.window_start, read.window_end), (t(1), t(4)));
    assert_eq!(read.span(), (1, 220));
    assert_eq!(read.events(), 100 + 1 + 21);
    // What was gathered is what a decision accepts.
    given([])
        .when(record_read(operator(), read.clone()), t(4))
        .then_events(vec![ev(
            acme(),
            t(4),
            Actor::Operator,
            EventKind::AuditRead(read),
        )]);
}

#[test]
fn gathering_more_separate_ranges_than_the_limit_joins_the_closest() {
    let mut read = AuditRead::one(AuditReadKind::Proof, SeqRange::new(1, 1), t(1));
    // Every 10th event, and one pair only 2 apart: 1, 11, 21, …, plus 23.
    for i in 1..AUDIT_READ_RANGES_MAX as u64 {
        read.add(SeqRange::new(10 * i + 1, 10 * i + 1), t(1));
    }
    assert_eq!(read.ranges.len(), AUDIT_READ_RANGES_MAX);
    read.add(SeqRange::new(23, 23), t(1));
    assert_eq!(read.ranges.len(), AUDIT_READ_RANGES_MAX);
    assert_eq!(read.count, AUDIT_READ_RANGES_MAX as u64 + 1);
    // 21 and 23 are the closest: joined, the one event between them included.
    assert!(read.ranges.contains(&range(21, 23)));
    assert!(AuditRead::ranges_in_order(&read.ranges));
    given([]).when(record_read(operator(), read), t(1)).events();
}

proptest::proptest! {
    /// Whatever reads are gathered, the count is exact, every range read is
    /// covered, the ranges stay in order and within the limit, and the
    /// decision accepts the result.
    #[test]
    fn gathered_reads_are_exact_covering_and_accepted(
        read_ranges in proptest::collection::vec(
            proptest::option::of((1u64..400, 0u64..30)), 1..120),
    ) {
        let as_range = |r: &Option<(u64, u64)>| r.and_then(|(from, len)| SeqRange::new(from, from + len));
        let mut read = AuditRead::one(AuditReadKind::List, as_range(&read_ranges[0]), t(1));
        for r in &read_ranges[1..] {
            read.add(as_range(r), t(2));
        }
        proptest::prop_assert_eq!(read.count, read_ranges.len() as u64);
        proptest::prop_assert!(AuditRead::ranges_in_order(&read.ranges));
        proptest::prop_assert!(read.ranges.len() <= AUDIT_READ_RANGES_MAX);
        for r in read_ranges.iter().filter_map(as_range) {
            proptest::prop_assert!(
                read.ranges.iter().any(|c| c.from <= r.from && r.to <= c.to),
                "{:?} is not covered by {:?}", r, read.ranges
            );
        }
        proptest::prop_assert!(decide(&Ledger::default(), &record_read(operator(), read), t(2)).is_ok());
    }
}

// --------------------------------------------------------------- recovery

/// The operator's statement of a loss: two events of acme's five signed
/// ones are left; the old checkpoints still vouch for both.
fn recovery(epoch: u64, recovered: u64) -> keyledger_core::LogRecovered {
    keyledger_core::LogRecovered {
        epoch,
        old_origin: "keyledger/acme".into(),
        signed_size: 5,
        signed_root: [7; 32],
        recovered_size: recovered,
        agreed_size: recovered.min(5),
        reason: "  restored from the backup of 1 December; later events lost  ".into(),
    }
}

fn recover(p: Principal, r: keyledger_core::LogRecovered) -> Command {
    Command::RecordRecovery {
        principal: p,
        recovery: r,
    }
}

#[test]
fn the_operator_starts_a_new_checkpoint_epoch_that_states_what_was_lost() {
    let given_events = vec![
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(acme(), t(2), 2, "alice"),
    ];
    let operator = Principal::operator(acme());
    let ledger = given(given_events.clone())
        .when(recover(operator.clone(), recovery(2, 2)), t(3))
        .then_events(vec![ev(
            acme(),
            t(3),
            Actor::Operator,
            EventKind::LogRecovered(keyledger_core::LogRecovered {
                reason: "restored from the backup of 1 December; later events lost".into(),
                ..recovery(2, 2)
            }),
        )]);
    assert_eq!(ledger.tenant(&acme()).map(|t| t.epoch()), Some(2));
    // The next recovery starts epoch 3, and only that one.
    let mut after = given_events;
    after.push(
        given(after.clone())
            .when(recover(operator.clone(), recovery(2, 2)), t(3))
            .events()
            .remove(0),
    );
    given(after.clone())
        .when(recover(operator.clone(), recovery(2, 3)), t(4))
        .then_invalid("epoch");
    let mut third = recovery(3, 3);
    third.old_origin = "keyledger/acme/epoch-2".into();
    third.signed_size = 3;
    third.agreed_size = 2;
    given(after).when(recover(operator, third), t(4)).events();
}

#[test]
fn a_recovery_that_misstates_the_log_or_has_no_reason_is_refused() {
    let given_events = || {
        vec![
            create_ev(acme(), t(1), 1, "alice"),
            create_ev(acme(), t(2), 2, "alice"),
        ]
    };
    let operator = || Principal::operator(acme());
    // The log holds two events, not three.
    given(given_events())
        .when(recover(operator(), recovery(2, 3)), t(3))
        .then_invalid("recovered_size");
    // Nothing was lost: every signed event is still agreed.
    let mut nothing = recovery(2, 2);
    nothing.signed_size = 2;
    given(given_events())
        .when(recover(operator(), nothing), t(3))
        .then_invalid("signed_size");
    let mut blank = recovery(2, 2);
    blank.reason = "   ".into();
    given(given_events())
        .when(recover(operator(), blank), t(3))
        .then_invalid("reason");
    let mut long = recovery(2, 2);
    long.reason = "x".repeat(keyledger_core::limits::RECOVERY_REASON_CHARS_MAX + 1);
    given(given_events())
        .when(recover(operator(), long), t(3))
        .then_invalid("reason");
    // An API key, even with every scope, cannot.
    given(given_events())
        .when(
            recover(
                key_principal(acme(), 1, "alice", ScopeSet::ALL),
                recovery(2, 2),
            ),
            t(3),
        )
        .then_forbidden();
}

// ------------------------------------------------------------- leak reports

fn leaked(n: u8, source: Option<&str>, reporter: LeakReporter) -> EventKind {
    EventKind::KeyLeaked(KeyLeaked {
        key_id: kid(n),
        source: source.map(str::to_owned),
        url: None,
        reporter,
    })
}

fn compromised(n: u8) -> EventKind {
    EventKind::KeyRevoked(KeyRevoked {
        key_id: kid(n),
        reason: RevokeReason::Compromised,
        cause: None,
    })
}

fn report(reporter: Reporter, secrets: &[Option<u8>]) -> Command {
    Command::ReportLeaked(ReportLeaked {
        reporter,
        leaks: secrets
            .iter()
            .map(|n| Leak {
                // `None`: text that is not a well-formed key.
                secret_hash: n.map(|n| secret(n).hash()),
                source: Some(" commit ".into()),
                url: None,
            })
            .collect(),
    })
}

#[test]
fn a_leak_report_revokes_active_keys_of_every_tenant_in_one_decision() {
    let acme_key = key_principal(acme(), 1, "alice", ScopeSet::from_bits(1).unwrap());
    let ledger = given([
        create_ev(acme(), t(1), 1, "alice"),
        create_ev(acme(), t(2), 2, "alice"),
        create_ev(globex(), t(3), 3, "bob"),
        revoke_ev(acme(), t(4), as_user("alice"), 2),
        create_ev(globex(), t(5), 4, "bob"),
    ])
    .ledger;
    // Key 1 (acme, the reporter's own tenant), key 3 (globex) twice, key 2
    // (revoked already), key 9 (unknown) and junk: acme's events first
    // (tenants in order), each KeyLeaked right before its KeyRevoked.
    let ledger = Given { ledger }
        .when(
            report(
                Reporter::Key(acme_key.clone()),
                &[Some(3), Some(1), Some(2), Some(9), None, Some(3)],
            ),
            t(10),
        )
        .then_events(vec![
            ev(
                acme(),
                t(10),
                as_key(1, "alice"),
                leaked(1, Some("commit"), LeakReporter::Tenant),
            ),
            ev(acme(), t(10), as_key(1, "alice"), compromised(1)),
            ev(
                globex(),
                t(10),
                Actor::System,
                leaked(3, Some("commit"), LeakReporter::OtherTenant),
            ),
            ev(globex(), t(10), Actor::System, compromised(3)),
        ]);
    // Reported again: nothing to append.
    Given {
        ledger: ledger.clone(),
    }
    .when(report(Reporter::Operator, &[Some(1), Some(3)]), t(11))
    .then_events(vec![]);
    // A partner and the operator are recorded as such.
    Given {
        ledger: ledger.clone(),
    }
    .when(
        report(Reporter::Partner("github".into()), &[Some(4)]),
        t(12),
    )
    .then_events(vec![
        ev(
            globex(),
            t(12),
            Actor::System,
            leaked(4, Some("commit"), LeakReporter::Partner("github".into())),
        ),
        ev(globex(), t(12), Actor::System, compromised(4)),
    ]);
    Given { ledger }
        .when(report(Reporter::Operator, &[Some(4)]), t(12))
        .then_events(vec![
            ev(
                globex(),
                t(12),
                Actor::Operator,
                leaked(4, Some("commit"), LeakReporter::Operator),
            ),
            ev(globex(), t(12), Actor::Operator, compromised(4)),
        ]);
}

#[test]
fn a_leak_report_is_refused_whole_for_a_bad_text_or_too_many_secrets() {
    let ledger = || given([create_ev(acme(), t(1), 1, "alice")]);
    let with = |source: String, url: String, n: usize| {
        Command::ReportLeaked(ReportLeaked {
            reporter: Reporter::Operator,
            leaks: (0..n)
                .map(|_| Leak {
                    secret_hash: Some(secret(1).hash()),
                    source: Some(source.clone()),
                    url: Some(url.clone()),
                })
                .collect(),
        })
    };
    ledger()
        .when(with("x".repeat(101), String::new(), 1), t(2))
        .then_invalid("source");
    ledger()
        .when(with(String::new(), "u\u{7}".into(), 1), t(2))
        .then_invalid("url");
    ledger()
        .when(with(String::new(), String::new(), 1001), t(2))
        .then_invalid("secrets");
    ledger()
        .when(report(Reporter::Partner(String::new()), &[Some(1)]), t(2))
        .then_invalid("partner");
    // A removed user's key reports nothing.
    given([
        create_ev(acme(), t(1), 1, "alice"),
        removed_ev(acme(), t(2), Actor::Operator, "alice"),
    ])
    .when(
        report(
            Reporter::Key(key_principal(
                acme(),
                7,
                "alice",
                ScopeSet::from_bits(1).unwrap(),
            )),
            &[Some(1)],
        ),
        t(3),
    )
    .then_error(CommandError::UserRemoved(user("alice")));
}
