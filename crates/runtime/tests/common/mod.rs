//! Shared by the reliability tests: seeds, a seeded entropy source, a
//! workload of concurrent clients that records what it requested and what
//! was acknowledged, and the checker every recovered log must pass.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use keyledger_core::{
    KeyId, Ledger, Principal, RevokeReason, Scope, TenantId, Timestamp, Usage, UserId,
};
use keyledger_runtime::{
    Config, Entropy, Error, Keyledger, ManualClock, NewKey, UsageWindow, VerifyOutcome,
};
use keyledger_store::EventLog;
use keyledger_store::chain::verify_tenant;

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000_000;
pub const TENANTS: [&str; 2] = ["acme", "globex"];
pub const USERS: [&str; 8] = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"];

/// The seed: `KEYLEDGER_SEED` when set, else the time. Printed, so a
/// failure replays with `KEYLEDGER_SEED=<seed>`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEYLEDGER_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{test}: KEYLEDGER_SEED={seed}");
    seed
}

/// SplitMix64: small, seedable, good enough for choosing operations.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
}

/// Key material and ids from a seed, so a run replays.
#[derive(Debug)]
pub struct SeededEntropy(Mutex<Rng>);

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy(Mutex::new(Rng(seed ^ 0x5eed)))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), String> {
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in buf.chunks_mut(8) {
            let word = rng.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

pub fn tenant(s: &str) -> TenantId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn user(s: &str) -> UserId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Opens a ledger with manual usage flushing on `log`.
pub fn open(
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
    seed: u64,
    batch_commands_max: usize,
) -> Result<Keyledger, Error> {
    open_with_snapshots(log, clock, seed, batch_commands_max, None)
}

/// [`open`] with snapshots of the projections (inside a tokio runtime).
pub fn open_with_snapshots(
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
    seed: u64,
    batch_commands_max: usize,
    snapshots: Option<keyledger_runtime::SnapshotConfig>,
) -> Result<Keyledger, Error> {
    let config = Config {
        usage_window: UsageWindow::Manual,
        batch_commands_max,
        snapshots,
        ..Config::default()
    };
    Keyledger::open_with(
        log,
        config,
        Arc::new(clock.clone()),
        Arc::new(SeededEntropy::new(seed)),
        &mut |_, _| {},
    )
}

/// Something the ledger acknowledged.
#[derive(Clone, Debug)]
pub enum Ack {
    Created {
        tenant: TenantId,
        id: KeyId,
    },
    Revoked {
        tenant: TenantId,
        id: KeyId,
    },
    Rotated {
        tenant: TenantId,
        old: KeyId,
        new: KeyId,
    },
    Removed {
        tenant: TenantId,
        user: UserId,
    },
    /// Every counted verification made before the flush began is written.
    Flushed {
        before: HashMap<KeyId, u64>,
    },
}

/// A key the workload knows the secret of.
#[derive(Clone, Debug)]
pub struct Known {
    pub tenant: TenantId,
    pub id: KeyId,
    pub owner: UserId,
    pub secret: String,
}

/// What the workload asked for and what it was told.
#[derive(Debug, Default)]
pub struct Record {
    pub names: HashSet<String>,
    pub revokes: HashSet<KeyId>,
    pub rotations: HashSet<KeyId>,
    pub removals: HashSet<(TenantId, UserId)>,
    /// Counted verifications made (outcome other than not-found/malformed).
    pub verifications: HashMap<KeyId, u64>,
    /// (stamp when acknowledged, what).
    pub acks: Vec<(u64, Ack)>,
    pub keys: Vec<Known>,
    /// Keys acknowledged revoked (directly, by rotation without grace, or
    /// by their owner's removal).
    pub dead: HashSet<KeyId>,
    pub removed: HashSet<(TenantId, UserId)>,
    pub names_made: u64,
    pub refused: u64,
    pub unavailable: u64,
    pub ops: u64,
}

/// The workload's shared record.
#[derive(Clone, Debug, Default)]
pub struct Model(pub Arc<Mutex<Record>>);

impl Model {
    pub fn lock(&self) -> MutexGuard<'_, Record> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How an operation ended, for the caller's bookkeeping.
fn settle<T>(model: &Model, r: &Result<T, Error>) {
    let mut m = model.lock();
    m.ops += 1;
    match r {
        Ok(_) => {}
        Err(Error::Unavailable(_)) => m.unavailable += 1,
        Err(Error::Command(_)) | Err(Error::NotFound(_)) => m.refused += 1,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// One random client operation. `stamp` is read after an acknowledgement
/// (for crash images: the syncs completed by then).
pub async fn step(
    ledger: &Keyledger,
    model: &Model,
    rng: &mut Rng,
    stamp: &(dyn Fn() -> u64 + Sync),
) {
    let roll = rng.below(100);
    let t = tenant(rng.pick(&TENANTS).copied().unwrap_or("acme"));
    let pick_key = |rng: &mut Rng| -> Option<Known> {
        let m = model.lock();
        let mine: Vec<&Known> = m.keys.iter().filter(|k| k.tenant == t).collect();
        rng.pick(&mine).map(|k| (*k).clone())
    };
    match roll {
        0..=34 => {
            let owner = user(rng.pick(&USERS).copied().unwrap_or("ada"));
            let name = {
                let mut m = model.lock();
                m.names_made += 1;
                let name = format!("k{}-{}", m.names_made, rng.below(1000));
                m.names.insert(name.clone());
                name
            };
            let expires_at =
                (rng.below(5) == 0).then(|| ledger.now().plus_seconds(1 + rng.below(30)));
            let r = ledger
                .create_key(
                    Principal::operator(t.clone()),
                    NewKey {
                        owner: Some(owner.clone()),
                        name,
                        expires_at,
                        ..NewKey::default()
                    },
                )
                .await;
            settle(model, &r);
            if let Ok(c) = r {
                let s = stamp();
                let mut m = model.lock();
                m.keys.push(Known {
                    tenant: t.clone(),
                    id: c.key.id,
                    owner,
                    secret: c.secret.expose().to_owned(),
                });
                m.acks.push((
                    s,
                    Ack::Created {
                        tenant: t,
                        id: c.key.id,
                    },
                ));
            }
        }
        35..=49 => {
            let Some(k) = pick_key(rng) else { return };
            model.lock().revokes.insert(k.id);
            let r = ledger
                .revoke_key(Principal::operator(t.clone()), k.id, RevokeReason::Manual)
                .await;
            settle(model, &r);
            if r.is_ok() {
                let s = stamp();
                let mut m = model.lock();
                m.dead.insert(k.id);
                m.acks.push((
                    s,
                    Ack::Revoked {
                        tenant: t,
                        id: k.id,
                    },
                ));
            }
        }
        50..=59 => {
            let Some(k) = pick_key(rng) else { return };
            model.lock().rotations.insert(k.id);
            let grace = if rng.below(2) == 0 { 0 } else { 60 };
            let r = ledger
                .rotate_key(Principal::operator(t.clone()), k.id, grace, None)
                .await;
            settle(model, &r);
            if let Ok(c) = r {
                let s = stamp();
                let mut m = model.lock();
                if grace == 0 {
                    m.dead.insert(k.id);
                }
                m.keys.push(Known {
                    tenant: t.clone(),
                    id: c.key.id,
                    owner: k.owner.clone(),
                    secret: c.secret.expose().to_owned(),
                });
                m.acks.push((
                    s,
                    Ack::Rotated {
                        tenant: t,
                        old: k.id,
                        new: c.key.id,
                    },
                ));
            }
        }
        60 => {
            let u = user(rng.pick(&USERS).copied().unwrap_or("ada"));
            model.lock().removals.insert((t.clone(), u.clone()));
            let r = ledger
                .remove_user(Principal::operator(t.clone()), u.clone())
                .await;
            settle(model, &r);
            if r.is_ok() {
                let s = stamp();
                let mut m = model.lock();
                let owned: Vec<KeyId> = m
                    .keys
                    .iter()
                    .filter(|k| k.tenant == t && k.owner == u)
                    .map(|k| k.id)
                    .collect();
                m.dead.extend(owned);
                m.removed.insert((t.clone(), u.clone()));
                m.acks.push((s, Ack::Removed { tenant: t, user: u }));
            }
        }
        63..=94 => {
            let Some(k) = pick_key(rng) else { return };
            let dead_before = model.lock().dead.contains(&k.id);
            let scope = (rng.below(4) == 0).then_some(Scope::KeysRead);
            let v = ledger.verify(&k.secret, scope);
            assert!(
                !(dead_before && v.outcome == VerifyOutcome::Valid),
                "key {} was acknowledged revoked, yet verified valid",
                k.id
            );
            assert_ne!(
                v.outcome,
                VerifyOutcome::NotFound,
                "an acknowledged key is unknown"
            );
            let mut m = model.lock();
            m.ops += 1;
            if v.outcome.counted().is_some() {
                *m.verifications.entry(k.id).or_default() += 1;
            }
        }
        _ => {
            let before = model.lock().verifications.clone();
            let r = ledger.flush_usage().await;
            settle(model, &r);
            if r.is_ok() {
                let s = stamp();
                model.lock().acks.push((s, Ack::Flushed { before }));
            }
        }
    }
}

/// Folds a log from scratch.
pub fn fold(log: &dyn EventLog) -> (Ledger, Usage) {
    let mut ledger = Ledger::new();
    let mut usage = Usage::new();
    let mut after = 0;
    loop {
        let page = log
            .read_after(after, 1000)
            .unwrap_or_else(|e| panic!("read: {e}"));
        let Some(last) = page.last().map(|r| r.position) else {
            return (ledger, usage);
        };
        for r in &page {
            ledger
                .apply(r.seq, &r.event)
                .unwrap_or_else(|e| panic!("fold: {e}"));
            usage.apply(&r.event);
        }
        after = last;
    }
}

/// What one check covered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checked {
    pub acks: u64,
    pub events: u64,
}

/// Checks a recovered log: every chain verifies; the runtime opens and
/// replays it; its projections equal a fresh fold; every acknowledgement
/// with `stamp < stamp_limit` is in it; nothing is in it that was not
/// requested; no key has more uses than verifications made; no key
/// acknowledged revoked verifies valid. Returns the opened ledger.
pub fn check_recovered(
    log: Arc<dyn EventLog>,
    record: &Record,
    stamp_limit: u64,
    clock: &ManualClock,
    seed: u64,
    what: &str,
) -> (Keyledger, Checked) {
    let ctx = |msg: String| format!("seed {seed}, {what}: {msg}");
    let tenants = log
        .tenants()
        .unwrap_or_else(|e| panic!("{}", ctx(format!("tenants: {e}"))));
    for t in &tenants {
        let report = verify_tenant(log.as_ref(), t)
            .unwrap_or_else(|e| panic!("{}", ctx(format!("verify {t}: {e}"))));
        assert!(
            report.ok,
            "{}",
            ctx(format!("chain of {t}: {:?}", report.first_bad))
        );
    }
    // Other key material than the run's, so new keys do not collide.
    let ledger = open(log.clone(), clock, seed ^ 0xc0ff_ee00 ^ stamp_limit, 64)
        .unwrap_or_else(|e| panic!("{}", ctx(format!("replay: {e}"))));
    let (state, usage) = ledger.projections();
    let (fresh, fresh_usage) = fold(log.as_ref());
    assert!(
        state == fresh,
        "{}",
        ctx("the projection differs from a fresh replay".into())
    );
    assert!(
        usage == fresh_usage,
        "{}",
        ctx("usage differs from a fresh replay".into())
    );
    let mut checked = Checked {
        events: ledger.head(),
        ..Checked::default()
    };
    // Acknowledged ⇒ present.
    for (stamp, ack) in &record.acks {
        if *stamp >= stamp_limit {
            continue;
        }
        checked.acks += 1;
        match ack {
            Ack::Created { tenant, id } => {
                assert!(
                    state.key(tenant, *id).is_some(),
                    "{}",
                    ctx(format!("acknowledged key {id} is missing"))
                );
            }
            Ack::Revoked { tenant, id } => {
                let revoked = state.key(tenant, *id).and_then(|k| k.revoked.as_ref());
                assert!(
                    revoked.is_some(),
                    "{}",
                    ctx(format!("acknowledged revoke of {id} is missing"))
                );
            }
            Ack::Rotated { tenant, old, new } => {
                assert!(
                    state.key(tenant, *new).is_some(),
                    "{}",
                    ctx(format!("rotated key {new} is missing"))
                );
                let to = state.key(tenant, *old).and_then(|k| k.rotated_to());
                assert_eq!(
                    to,
                    Some(*new),
                    "{}",
                    ctx(format!("rotation of {old} is missing"))
                );
            }
            Ack::Removed { tenant, user } => {
                let removed = state
                    .tenant(tenant)
                    .is_some_and(|s| s.removed_users.contains_key(user));
                assert!(removed, "{}", ctx(format!("removal of {user} is missing")));
            }
            Ack::Flushed { before } => {
                for (id, n) in before {
                    let Some(k) = record.keys.iter().find(|k| k.id == *id) else {
                        continue;
                    };
                    let uses = state.key(&k.tenant, *id).map_or(0, |k| k.uses.total());
                    assert!(
                        uses >= *n,
                        "{}",
                        ctx(format!("key {id}: {uses} uses written, {n} flushed"))
                    );
                }
            }
        }
    }
    // Nothing that was not requested.
    for (t, ts) in state.tenants() {
        for (id, k) in &ts.keys {
            assert!(
                record.names.contains(&*k.name),
                "{}",
                ctx(format!("key {id} named {} was never requested", k.name))
            );
            if let Some(from) = k.rotated_from() {
                assert!(
                    record.rotations.contains(&from),
                    "{}",
                    ctx(format!("rotation of {from} was never requested"))
                );
            }
            if k.revoked.is_some() {
                let asked = record.revokes.contains(id)
                    || record.rotations.contains(id)
                    || record.removals.contains(&(t.clone(), k.owner.clone()));
                assert!(
                    asked,
                    "{}",
                    ctx(format!("key {id} revoked without a request"))
                );
            }
            let made = record.verifications.get(id).copied().unwrap_or(0);
            assert!(
                k.uses.total() <= made,
                "{}",
                ctx(format!(
                    "key {id}: {} uses written, {made} verifications made",
                    k.uses.total()
                ))
            );
        }
        for u in ts.removed_users.keys() {
            assert!(
                record.removals.contains(&(t.clone(), u.clone())),
                "{}",
                ctx(format!("removal of {u} was never requested"))
            );
        }
    }
    // Revoked never valid again, after recovery too.
    for k in &record.keys {
        let acked_dead = record.acks.iter().any(|(s, a)| {
            *s < stamp_limit
                && match a {
                    Ack::Revoked { id, .. } => *id == k.id,
                    Ack::Removed { tenant, user } => *tenant == k.tenant && *user == k.owner,
                    _ => false,
                }
        });
        if acked_dead && state.key(&k.tenant, k.id).is_some() {
            let v = ledger.verify(&k.secret, None);
            assert_ne!(
                v.outcome,
                VerifyOutcome::Valid,
                "{}",
                ctx(format!(
                    "revoked key {} verifies valid after recovery: {:?}; acks: {:?}",
                    k.id,
                    state.key(&k.tenant, k.id),
                    record
                        .acks
                        .iter()
                        .filter(|(_, a)| match a {
                            Ack::Revoked { id, .. } => *id == k.id,
                            Ack::Removed { tenant, user } =>
                                *tenant == k.tenant && *user == k.owner,
                            _ => false,
                        })
                        .collect::<Vec<_>>()
                ))
            );
        }
    }
    (ledger, checked)
}

pub fn now(clock: &ManualClock) -> Timestamp {
    use keyledger_runtime::Clock;
    clock.now()
}

/// The point-in-time state equals a replay of the tenant's trail up to it,
/// at every sequence number of every tenant: whole (itself a replay) and
/// in pages of 2 (each key folded from its own events, read through the
/// per-key index).
pub fn check_state_at(ledger: &Keyledger, log: &dyn EventLog, what: &str) -> u64 {
    use keyledger_runtime::PointInTime;
    let mut checked = 0;
    for tenant in log
        .tenants()
        .unwrap_or_else(|e| panic!("{what}: tenants: {e}"))
    {
        let records = log
            .read_tenant(&tenant, 0, usize::MAX)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        let mut replay = Ledger::new();
        for seq in 0..=records.len() as u64 {
            if let Some(r) = seq.checked_sub(1).and_then(|i| records.get(i as usize)) {
                replay
                    .apply(r.seq, &r.event)
                    .unwrap_or_else(|e| panic!("{what}: fold: {e}"));
            }
            let got = ledger
                .state_at(&tenant, PointInTime::Seq(seq))
                .unwrap_or_else(|e| panic!("{what}: state_at {tenant} {seq}: {e}"));
            assert_eq!(got.seq, seq, "{what}: {tenant} at {seq}");
            let want: Vec<_> = replay
                .tenant(&tenant)
                .map(|s| s.keys.values().cloned().collect())
                .unwrap_or_default();
            let keys: Vec<_> = got.keys.iter().map(|(k, _)| k.clone()).collect();
            assert!(
                keys == want,
                "{what}: {tenant} at {seq}: the state from the key index differs from a replay"
            );
            let mut paged = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = ledger
                    .state_at_page(&tenant, PointInTime::Seq(seq), cursor.as_deref(), Some(2))
                    .unwrap_or_else(|e| panic!("{what}: state_at_page: {e}"));
                paged.extend(page.keys.into_iter().map(|(k, _)| k));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert!(
                paged == want,
                "{what}: {tenant} at {seq}: pages of 2 differ"
            );
            checked += 1;
        }
    }
    checked
}
