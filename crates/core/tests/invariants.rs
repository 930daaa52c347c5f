//! The ledger's invariants (`crates/core/src/decide.rs`), checked by replay
//! over random command sequences.
//!
//! Each case is a list of up to 60 operations over two tenants, five users
//! and every key created so far: creates (some reusing an id or a secret),
//! revokes, rotations with and without grace, user removals, usage records
//! and clock steps (backwards too). Each command goes through `decide`; the
//! events it returns are applied as one append. After every step:
//!
//! * a revoked key never becomes un-revoked;
//! * a removed user never gains a key, and owns no active key;
//! * every `UserRemoved` is followed, in the same decision, by one
//!   `KeyRevoked` (reason `user_removed`, actor System, cause = its seq) for
//!   exactly the owner's keys active at that instant, and by nothing else;
//! * every `KeyLeaked` is followed, in the same decision, by the
//!   `KeyRevoked` (reason `compromised`, same actor and time) of the same
//!   key; a leak report revokes exactly the reported keys active at that
//!   instant, in whichever tenant, and nothing else (a revoked key
//!   reported again changes nothing);
//! * per-tenant event times never decrease;
//! * tenant versions are contiguous (1, 2, 3… with no gap);
//! * folding the whole log from scratch gives the live ledger.
//!
//! Replaying a failure (docs/style.md, *Seeded randomness*):
//!
//! * A failure prints the run's seed and the shrunk, minimal list of
//!   operations. `PROPTEST_RNG_SEED=<seed> cargo test -p keyledger-core
//!   --test invariants` runs exactly that run again.
//! * The failing case's own seed is saved in
//!   `crates/core/tests/invariants.proptest-regressions`, and every later run
//!   replays the cases saved there first. Commit that file with the fix.
//! * `PROPTEST_CASES=<n>` runs more (or fewer) cases than the default 256;
//!   the other `PROPTEST_*` variables of proptest apply as usual.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use keyledger_core::limits::ROTATION_GRACE_SECONDS_MAX;
use keyledger_core::secret::BODY_BYTES;
use keyledger_core::{
    Actor, Cause, Command, CreateKey, Event, EventKind, KeyId, KeyPrefix, KeyStatus, Leak, Ledger,
    Overlay, Principal, RemoveUser, ReportLeaked, Reporter, RevokeKey, RevokeReason, RotateKey,
    ScopeSet, Secret, StateView, TenantId, Timestamp, UpdateKey, Usage, UseCounts, UserId, decide,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

/// Cases per run unless `PROPTEST_CASES` says otherwise.
const CASES_DEFAULT: u32 = 256;
/// Most operations in one case.
const OPS_PER_CASE_MAX: usize = 60;
const TENANTS: u8 = 2;
const USERS: u8 = 5;

// ------------------------------------------------------------- operations

/// Who issues a command.
#[derive(Clone, Debug)]
enum Who {
    /// User `n`, directly, with every scope.
    User(u8),
    /// The owner of the key the command names (user 0 when it names none).
    TargetOwner,
    /// The operator.
    Operator,
    /// A key of user `owner` (the target's owner when `None`) holding `scopes` (bits).
    Key { owner: Option<u8>, scopes: u8 },
}

/// One step of a case. Keys are named by index into every key created so
/// far (`u8::MAX`: a key that does not exist); `foreign` names the key from
/// the other tenant.
#[derive(Clone, Debug)]
enum Op {
    Create {
        tenant: u8,
        who: Who,
        owner: Option<u8>,
        expires_in: Option<i64>,
        scopes: Option<u8>,
        reuse_id: bool,
        reuse_secret: bool,
    },
    Revoke {
        who: Who,
        key: u8,
        foreign: bool,
        compromised: bool,
    },
    Rotate {
        who: Who,
        key: u8,
        foreign: bool,
        grace: u64,
        expires_in: Option<i64>,
    },
    Remove {
        tenant: u8,
        who: Who,
        user: u8,
    },
    Use {
        key: u8,
        foreign: bool,
        counts: [u8; 4],
        window_back: u16,
    },
    /// Reports secrets leaked: known keys (by index, `u8::MAX`: a secret
    /// that is no key), as the operator, a partner, or a key of tenant `n`.
    Leak {
        by: LeakBy,
        keys: Vec<u8>,
    },
    /// Renames a key (to one of [`RENAMES`]).
    Rename {
        who: Who,
        key: u8,
        foreign: bool,
        name: u8,
    },
    /// Moves the clock by this many seconds (backwards when negative).
    Clock(i64),
}

/// What keys are renamed to: longer and shorter than the names they are
/// created with, ASCII or not (the tenant's name buffer lower-cases them).
const RENAMES: [&str; 4] = ["renamed key", "x", "ΟΔΟΣ", "\u{212a}elvin"];

/// Who reports leaked secrets.
#[derive(Clone, Debug)]
enum LeakBy {
    Operator,
    Partner,
    Key(u8),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => (0..USERS).prop_map(Who::User),
        5 => Just(Who::TargetOwner),
        2 => Just(Who::Operator),
        // Mostly keys that may write, so that their decisions get far.
        3 => (
            prop::option::weighted(0.3, 0..USERS),
            prop_oneof![3 => (0u8..32).prop_map(|b| b | 2), 1 => 0u8..32],
        )
            .prop_map(|(owner, scopes)| Who::Key { owner, scopes }),
    ]
}

fn expires_in() -> impl Strategy<Value = Option<i64>> {
    prop::option::weighted(0.4, -60i64..600)
}

fn key_ref() -> impl Strategy<Value = (u8, bool)> {
    (
        prop_oneof![15 => 0u8..64, 1 => Just(u8::MAX)],
        prop::bool::weighted(0.1),
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (
            0..TENANTS,
            who(),
            prop::option::weighted(0.2, 0..USERS),
            expires_in(),
            prop::option::weighted(0.3, 0u8..32),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(tenant, who, owner, expires_in, scopes, reuse_id, reuse_secret)| {
                Op::Create { tenant, who, owner, expires_in, scopes, reuse_id, reuse_secret }
            }),
        2 => (who(), key_ref(), any::<bool>()).prop_map(|(who, (key, foreign), compromised)| {
            Op::Revoke { who, key, foreign, compromised }
        }),
        3 => (
            who(),
            key_ref(),
            prop_oneof![
                2 => Just(0u64),
                4 => 1u64..600,
                1 => Just(ROTATION_GRACE_SECONDS_MAX + 1),
            ],
            expires_in(),
        )
            .prop_map(|(who, (key, foreign), grace, expires_in)| Op::Rotate {
                who,
                key,
                foreign,
                grace,
                expires_in,
            }),
        1 => (0..TENANTS, who(), 0..USERS).prop_map(|(tenant, who, user)| Op::Remove {
            tenant,
            who,
            user,
        }),
        2 => (key_ref(), any::<[u8; 4]>(), any::<u16>()).prop_map(
            |((key, foreign), counts, window_back)| Op::Use { key, foreign, counts, window_back }
        ),
        1 => (
            prop_oneof![
                Just(LeakBy::Operator),
                Just(LeakBy::Partner),
                (0..TENANTS).prop_map(LeakBy::Key),
            ],
            prop::collection::vec(prop_oneof![8 => 0u8..64, 1 => Just(u8::MAX)], 0..5),
        )
            .prop_map(|(by, keys)| Op::Leak { by, keys }),
        2 => prop_oneof![3 => 1i64..400, 1 => -300i64..0].prop_map(Op::Clock),
        1 => (who(), key_ref(), 0..RENAMES.len() as u8).prop_map(|(who, (key, foreign), name)| {
            Op::Rename { who, key, foreign, name }
        }),
    ]
}

// ------------------------------------------------------------------ world

fn tenant_n(n: u8) -> TenantId {
    format!("tenant-{n}").parse().unwrap()
}

fn user_n(n: u8) -> UserId {
    user(&format!("user-{n}"))
}

/// Key material for the `n`th secret minted in a case (never the OS's randomness).
fn minted(n: u64) -> Secret {
    let mut material = [0x5a; BODY_BYTES];
    material[..8].copy_from_slice(&n.to_le_bytes());
    Secret::from_material(&KeyPrefix::default(), &material)
}

/// A key that was created: where, which, whose.
#[derive(Clone, Debug)]
struct Known {
    tenant: TenantId,
    id: KeyId,
    owner: UserId,
}

/// The live state of one case, and the whole log written so far.
struct World {
    now: Timestamp,
    ledger: Ledger,
    usage: Usage,
    log: Vec<Event>,
    /// Events per tenant, counted from the log.
    counts: HashMap<TenantId, u64>,
    known: Vec<Known>,
    minted: u64,
    /// How many decisions ended how (`Ok` or the error's variant).
    outcomes: HashMap<String, u32>,
    /// Every command decided, with the clock it was decided at.
    commands: Vec<(Command, Timestamp)>,
}

impl World {
    fn new() -> Self {
        World {
            now: base(),
            ledger: Ledger::new(),
            usage: Usage::new(),
            log: Vec::new(),
            counts: HashMap::new(),
            known: Vec::new(),
            minted: 0,
            outcomes: HashMap::new(),
            commands: Vec::new(),
        }
    }

    /// The key `key` names, seen from its tenant (or from the other one).
    fn target(&self, key: u8, foreign: bool) -> (TenantId, KeyId, UserId) {
        match self.known.get(usize::from(key) % self.known.len().max(1)) {
            Some(k) if key != u8::MAX => {
                let tenant = if foreign {
                    other_tenant(&k.tenant)
                } else {
                    k.tenant.clone()
                };
                (tenant, k.id, k.owner.clone())
            }
            _ => (tenant_n(0), KeyId::from_u128(u128::MAX - 1), user_n(0)),
        }
    }

    fn principal(&self, who: &Who, tenant: TenantId, target_owner: &UserId) -> Principal {
        match who {
            Who::User(n) => Principal::user(tenant, user_n(*n)),
            Who::TargetOwner => Principal::user(tenant, target_owner.clone()),
            Who::Operator => Principal::operator(tenant),
            Who::Key { owner, scopes } => {
                let owner = owner.map_or_else(|| target_owner.clone(), user_n);
                let id = KeyId::from_u128((1 << 120) + u128::from(*scopes));
                let scopes = ScopeSet::from_bits(*scopes).unwrap();
                Principal::api_key(tenant, id, format!("robot {scopes}"), owner, scopes)
            }
        }
    }

    fn mint(&mut self) -> Secret {
        self.minted += 1;
        minted(self.minted)
    }

    fn fresh_id(&self) -> KeyId {
        KeyId::from_u128(0x0197_0000_0000_0000_0000_0000_0000_0000 + u128::from(self.minted))
    }

    fn in_seconds(&self, secs: i64) -> Timestamp {
        Timestamp::from_micros(self.now.as_micros() + secs * 1_000_000)
    }

    /// The command `op` stands for; `None` for a clock step.
    fn command(&mut self, op: &Op) -> Option<Command> {
        Some(match op {
            Op::Clock(secs) => {
                self.now = self.in_seconds(*secs);
                return None;
            }
            Op::Create {
                tenant,
                who,
                owner,
                expires_in,
                scopes,
                reuse_id,
                reuse_secret,
            } => {
                let secret = if *reuse_secret && self.minted > 0 {
                    minted(1)
                } else {
                    self.mint()
                };
                let key_id = match self.known.first() {
                    Some(k) if *reuse_id => k.id,
                    _ => self.fresh_id(),
                };
                Command::CreateKey(CreateKey {
                    meta: None,
                    credits: None,
                    limits: Vec::new(),
                    principal: self.principal(who, tenant_n(*tenant), &user_n(0)),
                    owner: owner.map(user_n),
                    name: format!(" key {} ", self.minted),
                    description: None,
                    expires_at: expires_in.map(|s| self.in_seconds(s)),
                    scopes: scopes.map(|b| ScopeSet::from_bits(b).unwrap()),
                    key_id,
                    secret_hash: secret.hash(),
                    masked: secret.masked(),
                })
            }
            Op::Revoke {
                who,
                key,
                foreign,
                compromised,
            } => {
                let (tenant, key_id, owner) = self.target(*key, *foreign);
                Command::RevokeKey(RevokeKey {
                    principal: self.principal(who, tenant, &owner),
                    key_id,
                    reason: if *compromised {
                        RevokeReason::Compromised
                    } else {
                        RevokeReason::Manual
                    },
                })
            }
            Op::Rotate {
                who,
                key,
                foreign,
                grace,
                expires_in,
            } => {
                let (tenant, key_id, owner) = self.target(*key, *foreign);
                let secret = self.mint();
                Command::RotateKey(RotateKey {
                    principal: self.principal(who, tenant, &owner),
                    key_id,
                    grace_seconds: *grace,
                    expires_at: expires_in.map(|s| self.in_seconds(s)),
                    new_key_id: self.fresh_id(),
                    secret_hash: secret.hash(),
                    masked: secret.masked(),
                })
            }
            Op::Leak { by, keys } => {
                let leaks = keys
                    .iter()
                    .map(|&k| {
                        let hash = match self.known.get(usize::from(k) % self.known.len().max(1)) {
                            Some(known) if k != u8::MAX => self
                                .ledger
                                .key(&known.tenant, known.id)
                                .map(|r| r.secret_hash),
                            _ => Some(minted(u64::MAX).hash()),
                        };
                        Leak {
                            secret_hash: hash,
                            source: Some("commit".into()),
                            url: None,
                        }
                    })
                    .collect();
                let reporter = match by {
                    LeakBy::Operator => Reporter::Operator,
                    LeakBy::Partner => Reporter::Partner("github".into()),
                    LeakBy::Key(t) => Reporter::Key(self.principal(
                        &Who::Key {
                            owner: Some(0),
                            scopes: 1,
                        },
                        tenant_n(*t),
                        &user_n(0),
                    )),
                };
                Command::ReportLeaked(ReportLeaked { reporter, leaks })
            }
            Op::Rename {
                who,
                key,
                foreign,
                name,
            } => {
                let (tenant, key_id, owner) = self.target(*key, *foreign);
                Command::UpdateKey(UpdateKey {
                    principal: self.principal(who, tenant, &owner),
                    key_id,
                    name: Some(RENAMES[usize::from(*name) % RENAMES.len()].to_owned()),
                    description: None,
                    meta: None,
                    expires_at: None,
                    scopes: None,
                    credits: None,
                    limits: None,
                })
            }
            Op::Remove { tenant, who, user } => Command::RemoveUser(RemoveUser {
                principal: self.principal(who, tenant_n(*tenant), &user_n(0)),
                user_id: user_n(*user),
            }),
            Op::Use {
                key,
                foreign,
                counts,
                window_back,
            } => {
                let (tenant, key_id, _) = self.target(*key, *foreign);
                let c = counts.map(u64::from);
                let counts = UseCounts::from_array([c[0], c[1], c[2], c[3], 0, 0]);
                let window_start = self.in_seconds(-i64::from(*window_back));
                let usage = keyledger_core::KeyUsed {
                    key_id,
                    window_start,
                    window_end: Timestamp::from_micros(window_start.as_micros() + 1_000_000),
                    last_valid_at: (counts.valid > 0).then_some(window_start),
                    counts,
                };
                Command::RecordUsage { tenant, usage }
            }
        })
    }

    /// Runs one operation and checks every invariant after it.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let Some(command) = self.command(op) else {
            return Ok(());
        };
        self.commands.push((command.clone(), self.now));
        let before = self.ledger.clone();
        let decided = decide(&self.ledger, &command, self.now);
        prop_assert_eq!(
            &decide(&self.ledger, &command, self.now),
            &decided,
            "decide is a function"
        );
        let outcome = match &decided {
            Ok(_) => "Ok".to_owned(),
            Err(e) => format!("{e:?}")
                .split('(')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        if let Ok(events) = decided {
            prop_assert!(
                !events.is_empty() || matches!(command, Command::ReportLeaked(_)),
                "a decision that succeeds appends something (but a leak report of no active key)"
            );
            check_cascade(&before, &events)?;
            check_rotation(&before, &events)?;
            check_leak(&before, &command, &events, self.now)?;
            for event in events {
                let tenant = event.tenant.clone();
                if let Some(t) = command.tenant() {
                    prop_assert_eq!(&tenant, t, "a decision stays in its tenant");
                }
                self.append(&tenant, event)?;
            }
        }
        self.check_state(&before)
    }

    /// Appends one event of a decision, as the store would, and folds it.
    fn append(&mut self, tenant: &TenantId, event: Event) -> Result<(), TestCaseError> {
        prop_assert!(
            event.at >= self.now,
            "an event is never earlier than the clock"
        );
        let state = self.ledger.tenant(tenant);
        if let Some(state) = state {
            prop_assert!(
                event.at >= state.last_at,
                "event times never decrease in a tenant"
            );
        }
        if let EventKind::KeyCreated(kc) = &event.kind {
            prop_assert!(
                !state.is_some_and(|s| s.is_removed(&kc.owner)),
                "removed user {} gains key {}",
                kc.owner,
                kc.key_id
            );
            self.known.push(Known {
                tenant: tenant.clone(),
                id: kc.key_id,
                owner: kc.owner.clone(),
            });
        }
        let count = self.counts.entry(tenant.clone()).or_default();
        *count += 1;
        let seq = *count;
        if let Err(err) = self.ledger.apply(seq, &event) {
            return Err(TestCaseError::fail(format!(
                "a decided event does not fold: {err}"
            )));
        }
        self.usage.apply(&event);
        self.log.push(event);
        Ok(())
    }

    /// What must hold after every step, whatever it was.
    fn check_state(&self, before: &Ledger) -> Result<(), TestCaseError> {
        // A revoked key never becomes un-revoked, nor is revoked anew.
        for (tenant, state) in before.tenants() {
            for (id, key) in state.keys.iter().filter(|(_, k)| k.revoked.is_some()) {
                let now = self.ledger.key(tenant, *id).map(|k| &k.revoked);
                prop_assert_eq!(now, Some(&key.revoked), "{} {} was un-revoked", tenant, id);
            }
        }
        for (tenant, state) in self.ledger.tenants() {
            // Versions are contiguous: one per event of the tenant, no gap.
            prop_assert_eq!(Some(&state.version), self.counts.get(tenant));
            let at = self.now.max(state.last_at);
            for (user, removed_at) in &state.removed_users {
                for key in state.keys_of(user) {
                    prop_assert!(
                        key.created_at <= *removed_at,
                        "{} was created for removed {}",
                        key.id,
                        user
                    );
                    prop_assert_ne!(
                        key.status(at),
                        KeyStatus::Active,
                        "removed {} owns active {}",
                        user,
                        key.id
                    );
                }
            }
        }
        prop_assert_eq!(self.ledger.events(), self.log.len() as u64);
        // The live ledger is exactly the log folded from scratch.
        let replayed = fold(&self.log);
        prop_assert!(
            replayed == self.ledger,
            "the replayed ledger differs from the live one"
        );
        Ok(())
    }
}

fn other_tenant(t: &TenantId) -> TenantId {
    if *t == tenant_n(0) {
        tenant_n(1)
    } else {
        tenant_n(0)
    }
}

/// A `UserRemoved` comes first in its decision and is followed by exactly
/// one cascade `KeyRevoked` per key of the user active at that instant.
fn check_cascade(before: &Ledger, events: &[Event]) -> Result<(), TestCaseError> {
    for (i, e) in events.iter().enumerate() {
        if let EventKind::KeyRevoked(kr) = &e.kind {
            prop_assert_eq!(
                kr.reason == RevokeReason::UserRemoved,
                matches!(events[0].kind, EventKind::UserRemoved(_)),
                "reason user_removed exactly in a cascade"
            );
        }
        let EventKind::UserRemoved(removed) = &e.kind else {
            continue;
        };
        prop_assert_eq!(i, 0, "UserRemoved leads its decision");
        let seq = next_seq(before, &e.tenant);
        let expected: BTreeSet<KeyId> = before
            .tenant(&e.tenant)
            .map(|s| {
                s.keys_of(&removed.user_id)
                    .filter(|k| k.status(e.at) == KeyStatus::Active)
                    .map(|k| k.id)
                    .collect()
            })
            .unwrap_or_default();
        let mut revoked = BTreeSet::new();
        for r in &events[1..] {
            let EventKind::KeyRevoked(kr) = &r.kind else {
                return Err(TestCaseError::fail(format!(
                    "a cascade holds {}",
                    r.type_name()
                )));
            };
            prop_assert_eq!(&r.actor, &Actor::System);
            prop_assert_eq!(r.at, e.at);
            prop_assert_eq!(kr.reason, RevokeReason::UserRemoved);
            prop_assert_eq!(
                &kr.cause,
                &Some(Cause::UserRemoved {
                    user_id: removed.user_id.clone(),
                    seq
                })
            );
            prop_assert!(
                revoked.insert(kr.key_id),
                "{} revoked twice in one cascade",
                kr.key_id
            );
        }
        prop_assert_eq!(
            revoked,
            expected,
            "the cascade revokes exactly the active keys"
        );
    }
    Ok(())
}

/// A rotation creates the new key, then retires the old one without ever
/// extending its life.
fn check_rotation(before: &Ledger, events: &[Event]) -> Result<(), TestCaseError> {
    let Some(EventKind::KeyCreated(kc)) = events.first().map(|e| &e.kind) else {
        return Ok(());
    };
    let Some(old_id) = kc.rotated_from else {
        prop_assert_eq!(events.len(), 1);
        return Ok(());
    };
    prop_assert_eq!(events.len(), 2);
    let old = before.key(&events[0].tenant, old_id).unwrap();
    prop_assert!(old.revoked.is_none());
    prop_assert_eq!(
        (&kc.owner, kc.name.as_str(), kc.scopes),
        (&old.owner, &*old.name, old.scopes)
    );
    match &events[1].kind {
        EventKind::KeyRevoked(kr) => {
            prop_assert_eq!((kr.key_id, kr.reason), (old_id, RevokeReason::Rotated));
        }
        EventKind::KeyRotated(kr) => {
            prop_assert_eq!((kr.key_id, kr.new_key_id), (old_id, kc.key_id));
            prop_assert!(
                kr.expires_at > events[1].at,
                "a grace period ends in the future"
            );
            prop_assert!(old.expires_at.is_none_or(|e| kr.expires_at <= e));
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "a rotation retires with {other:?}"
            )));
        }
    }
    Ok(())
}

/// One case: every operation in order, then the usage projection replayed.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut world = World::new();
    for (i, op) in ops.iter().enumerate() {
        world
            .step(op)
            .map_err(|e| TestCaseError::fail(format!("after operation {i} ({op:?}): {e}")))?;
        // What the fold keeps for the list (last uses included) is a
        // rebuild's after every operation, not only after the last.
        for (tenant, state) in world.ledger.tenants() {
            let mut rebuilt = state.clone();
            rebuilt.rebuild_listing();
            prop_assert_eq!(&rebuilt.listing, &state.listing, "{} after {}", tenant, i);
        }
    }
    let mut usage = Usage::new();
    for e in &world.log {
        usage.apply(e);
    }
    prop_assert!(
        usage == world.usage,
        "the replayed usage differs from the live one"
    );
    check_listing(&world)?;
    check_key_folds(&world)
}

/// What the fold keeps for the key list (each tenant's keys by creation,
/// their names lower-cased, their creation instants and last uses, its
/// revoked keys, its unrevoked keys by expiry) is what the keys say:
/// the same as rebuilt from them, and the active count the same as
/// counted key by key, at instants around every expiry.
fn check_listing(world: &World) -> Result<(), TestCaseError> {
    for (tenant, state) in world.ledger.tenants() {
        let mut rebuilt = state.clone();
        rebuilt.rebuild_listing();
        prop_assert_eq!(&rebuilt.listing, &state.listing, "{}", tenant);
        let mut order: Vec<_> = state.keys.values().map(|k| (k.created_at, k.id)).collect();
        order.sort();
        prop_assert!(
            order
                .iter()
                .map(|(_, id)| *id)
                .eq(state.by_created().iter().copied()),
            "{} keys out of creation order",
            tenant
        );
        let last_uses = state
            .by_created()
            .iter()
            .map(|id| state.keys[id].last_used_at.map_or(-1, Timestamp::as_micros));
        prop_assert!(
            last_uses.eq(state.last_uses().iter().copied()),
            "{} last uses are not its keys'",
            tenant
        );
        let mut instants = vec![world.now, Timestamp::EPOCH];
        for k in state.keys.values() {
            if let Some(e) = k.expires_at {
                instants.extend([
                    Timestamp::from_micros(e.as_micros() - 1),
                    e,
                    Timestamp::from_micros(e.as_micros() + 1),
                ]);
            }
        }
        for now in instants {
            let counted = state
                .keys
                .values()
                .filter(|k| k.status(now) == keyledger_core::KeyStatus::Active)
                .count();
            prop_assert_eq!(state.active_count(now), counted, "{} at {:?}", tenant, now);
        }
    }
    Ok(())
}

/// Each key folded from its own events (those the per-key index lists it
/// under: `touched_keys`) is the key the tenant's replay holds, after
/// every event of the log: the point-in-time state at any sequence number.
fn check_key_folds(world: &World) -> Result<(), TestCaseError> {
    let mut ledger = Ledger::new();
    let mut seqs: HashMap<TenantId, u64> = HashMap::new();
    let mut indexed: Vec<(TenantId, u64, &Event)> = Vec::new();
    for event in &world.log {
        let seq = seqs.entry(event.tenant.clone()).or_default();
        *seq += 1;
        let seq = *seq;
        prop_assert!(ledger.apply(seq, event).is_ok());
        indexed.push((event.tenant.clone(), seq, event));
        for known in world.known.iter().filter(|k| k.tenant == event.tenant) {
            let own = indexed.iter().filter(|(t, _, e)| {
                *t == known.tenant && keyledger_core::touched_keys(e).any(|k| k == known.id)
            });
            let folded = keyledger_core::fold_key(known.id, own.map(|(_, s, e)| (*s, *e)))
                .map_err(|e| TestCaseError::fail(format!("a key's own events do not fold: {e}")))?;
            prop_assert_eq!(
                folded.as_ref(),
                ledger.key(&known.tenant, known.id),
                "{} folded from its own events differs from the replay at {} event {}",
                known.id,
                known.tenant,
                seq
            );
            // The same without its uses: the other events folded, then
            // the uses summed (what a point-in-time page reads).
            let mut fold = keyledger_core::KeyFold::new([known.id]);
            let mut totals = keyledger_core::UseTotals::default();
            let own = indexed.iter().filter(|(t, _, e)| {
                *t == known.tenant && keyledger_core::touched_keys(e).any(|k| k == known.id)
            });
            for (_, s, e) in own {
                match keyledger_core::as_use(e) {
                    Some(u) => totals.add_used(u),
                    None => fold.apply(*s, e).map_err(|e| {
                        TestCaseError::fail(format!("a key's other events do not fold: {e}"))
                    })?,
                }
            }
            fold.add_uses(&known.tenant, known.id, &totals)
                .map_err(|e| TestCaseError::fail(format!("a key's uses do not add: {e}")))?;
            let without_uses = fold.finish().remove(&known.id);
            prop_assert_eq!(
                without_uses.as_ref(),
                ledger.key(&known.tenant, known.id),
                "{} folded without its uses, then its uses summed, differs from the replay at \
                 {} event {}",
                known.id,
                known.tenant,
                seq
            );
        }
    }
    Ok(())
}

/// The run's configuration: proptest's defaults and `PROPTEST_*` variables,
/// 256 cases unless `PROPTEST_CASES` is set, a seed that is always known,
/// and regressions saved beside this file.
fn config() -> Config {
    let base = Config::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        CASES_DEFAULT
    };
    let seed = match base.rng_seed {
        RngSeed::Fixed(seed) => seed,
        // A fresh seed per run, as proptest would pick, but one we can print.
        RngSeed::Random => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..base
    }
}

/// Runs `test` on the cases of `strategy` under [`config`]; a failure
/// panics with the minimal case and the seed that replays the run.
fn check<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = config();
    let RngSeed::Fixed(seed) = config.rng_seed else {
        unreachable!()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => panic!(
            "{why}\nminimal failing case: {case:#?}\n\
             replay this run with PROPTEST_RNG_SEED={seed} cargo test -p keyledger-core --test invariants"
        ),
        Err(err) => panic!("{err}\nseed: PROPTEST_RNG_SEED={seed}"),
    }
}

#[test]
fn invariants_hold_for_random_command_sequences() {
    check(prop::collection::vec(op(), 1..=OPS_PER_CASE_MAX), |ops| {
        run(&ops)
    });
}

/// The generator reaches every kind of decision and every refusal: a run
/// where, say, no removal ever succeeds would check little.
#[test]
fn operations_reach_every_event_type_and_error() {
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(7),
        ..config()
    });
    let ops = prop::collection::vec(op(), OPS_PER_CASE_MAX);
    let mut types = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    for _ in 0..64 {
        let ops = ops.new_tree(&mut runner).unwrap().current();
        let mut world = World::new();
        for op in &ops {
            world.step(op).unwrap();
        }
        types.extend(world.log.iter().map(|e| e.type_name()));
        outcomes.extend(world.outcomes.into_keys());
    }
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            "KeyCreated",
            "KeyLeaked",
            "KeyRevoked",
            "KeyRotated",
            "KeyUpdated",
            "KeyUsed",
            "UserRemoved"
        ]
    );
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        [
            "AlreadyRevoked",
            "AlreadyRotated",
            "Duplicate",
            "Forbidden",
            "Invalid",
            "KeyNotFound",
            "NoChange",
            "Ok",
            "UserAlreadyRemoved",
            "UserRemoved",
        ]
    );
}

/// A leak report revokes exactly the reported keys that were active, each
/// with a `KeyLeaked` right before its `KeyRevoked` (reason
/// `compromised`), by the same actor at the same instant; nothing else.
fn check_leak(
    before: &Ledger,
    command: &Command,
    events: &[Event],
    now: Timestamp,
) -> Result<(), TestCaseError> {
    let Command::ReportLeaked(report) = command else {
        for e in events {
            prop_assert!(
                !matches!(e.kind, EventKind::KeyLeaked(_)),
                "only a leak report records a leak"
            );
        }
        return Ok(());
    };
    let mut expected = BTreeSet::new();
    for leak in &report.leaks {
        if let Some((tenant, key)) = leak.secret_hash.and_then(|h| before.key_by_hash(&h)) {
            let at = before.tenant(tenant).map_or(now, |t| now.max(t.last_at));
            if key.status(at) == KeyStatus::Active {
                expected.insert(key.id);
            }
        }
    }
    prop_assert_eq!(
        events.len(),
        expected.len() * 2,
        "two events per active key"
    );
    let mut revoked = BTreeSet::new();
    for pair in events.chunks(2) {
        let [leaked, revoke] = pair else {
            return Err(TestCaseError::fail("a leak without its revocation"));
        };
        let EventKind::KeyLeaked(l) = &leaked.kind else {
            return Err(TestCaseError::fail(
                "a leak report's event is not KeyLeaked",
            ));
        };
        prop_assert_eq!(
            &revoke.kind,
            &EventKind::KeyRevoked(keyledger_core::KeyRevoked {
                key_id: l.key_id,
                reason: RevokeReason::Compromised,
                cause: None,
            }),
            "a KeyLeaked is followed by its KeyRevoked (compromised)"
        );
        prop_assert_eq!(&leaked.actor, &revoke.actor);
        prop_assert_eq!(leaked.at, revoke.at);
        prop_assert_eq!(&leaked.tenant, &revoke.tenant);
        prop_assert!(revoked.insert(l.key_id), "{} revoked twice", l.key_id);
    }
    prop_assert_eq!(revoked, expected, "exactly the active reported keys");
    Ok(())
}

// ------------------------------------------------ batches through an overlay

/// Most batches in one case's list of batch sizes (used in turn).
const BATCHES_MAX: usize = 8;

/// A case's commands (made by a one-by-one run of `ops`) decided again in
/// batches of the sizes in `batches` (in turn), as the writer decides them:
/// each batch against the committed ledger through an [`Overlay`], each
/// command after the ones before it in the batch; a batch marked failed is
/// dropped (its commit failed), the others' events are applied. Beside it,
/// the same commands one by one against a `Ledger`, failed batches
/// skipped. Every decision (events or refusal) must be the same, the
/// overlay must read as the ledger after the batch, and the committed
/// ledgers must be equal after every batch.
fn run_batched(ops: &[Op], batches: &[(usize, bool)]) -> Result<(), TestCaseError> {
    let mut world = World::new();
    for op in ops {
        world.step(op)?;
    }
    let mut one = Ledger::new();
    let mut batched = Ledger::new();
    let mut rest = &world.commands[..];
    let mut sizes = batches.iter().cycle();
    while let Some(&(size, fails)) = sizes.next().filter(|_| !rest.is_empty()) {
        let (batch, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        let mut next = one.clone();
        let mut expected = Vec::new();
        for (command, now) in batch {
            let decided = decide(&next, command, *now);
            if let Ok(events) = &decided {
                for e in events {
                    let seq = next.tenant(&e.tenant).map_or(0, |t| t.version) + 1;
                    next.apply(seq, e)
                        .map_err(|e| TestCaseError::fail(format!("one by one: {e}")))?;
                }
            }
            expected.push(decided);
        }
        let mut overlay = Overlay::new(&batched);
        let mut appends = Vec::new();
        let mut decided_all = Vec::new();
        for (command, now) in batch {
            let decided = decide(&overlay, command, *now);
            if let Ok(events) = &decided {
                for e in events {
                    let seq = overlay.tenant_view(&e.tenant).version() + 1;
                    overlay
                        .apply(seq, e)
                        .map_err(|e| TestCaseError::fail(format!("overlay: {e}")))?;
                    appends.push((seq, e.clone()));
                }
            }
            decided_all.push(decided);
        }
        prop_assert_eq!(&decided_all, &expected, "a batch decides as one by one");
        check_overlay(&overlay, &next)?;
        drop(overlay);
        if fails {
            // The commit failed: nothing of the batch is anywhere.
            prop_assert!(batched == one, "a failed batch left a trace");
            continue;
        }
        for (seq, e) in &appends {
            batched
                .apply(*seq, e)
                .map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
        }
        one = next;
        prop_assert!(batched == one, "the committed ledgers differ");
    }
    Ok(())
}

/// The overlay reads as `after`, the ledger with the batch applied: every
/// tenant's counters, keys, owners' keys, removed users and webhooks, and
/// the indexes by id and by secret hash.
fn check_overlay(overlay: &Overlay<'_>, after: &Ledger) -> Result<(), TestCaseError> {
    for (tenant, state) in after.tenants() {
        let view = overlay.tenant_view(tenant);
        prop_assert!(view.exists());
        prop_assert_eq!(view.version(), state.version);
        prop_assert_eq!(view.last_at(), state.last_at);
        prop_assert_eq!(view.epoch(), state.epoch());
        prop_assert_eq!(view.key_count(), state.keys.len());
        prop_assert_eq!(view.webhooks(), &state.webhooks);
        // A key the batch only used keeps its committed counts and last
        // use in the view (no decision reads them; the overlay does not
        // copy a key for a use): the rest of it is the key's.
        let decided_on = |k: &keyledger_core::KeyRecord| {
            let mut k = k.clone();
            k.uses = keyledger_core::UseCounts::default();
            k.last_used_at = None;
            k
        };
        for (id, key) in &state.keys {
            prop_assert_eq!(view.key(*id).map(decided_on), Some(decided_on(key)));
            prop_assert!(overlay.key_exists(*id));
            let by_hash = overlay.key_by_hash(&key.secret_hash);
            prop_assert_eq!(
                by_hash.map(|(t, k)| (t, decided_on(k))),
                Some((tenant, decided_on(key)))
            );
        }
        for user in state.by_owner.keys() {
            let ids = |it: &mut dyn Iterator<Item = &keyledger_core::KeyRecord>| {
                it.map(|k| k.id).collect::<Vec<_>>()
            };
            prop_assert_eq!(ids(&mut view.keys_of(user)), ids(&mut state.keys_of(user)));
        }
        for user in (0..USERS).map(user_n) {
            prop_assert_eq!(view.is_removed(&user), state.is_removed(&user));
        }
    }
    Ok(())
}

#[test]
fn batches_through_an_overlay_decide_as_one_by_one() {
    let case = (
        prop::collection::vec(op(), 1..=OPS_PER_CASE_MAX),
        prop::collection::vec((1usize..16, prop::bool::weighted(0.2)), 1..=BATCHES_MAX),
    );
    check(case, |(ops, batches)| run_batched(&ops, &batches));
}
