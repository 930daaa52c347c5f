//! The key-state projection: every key of every tenant, folded from the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compact::{CreatedBy, Links, Masked};
use crate::event::{Actor, Cause, Event, EventKind, KeyChange, RevokeReason, UseCounts};
use crate::ids::{KeyId, TenantId, UserId};
use crate::names::Names;
use crate::policy::{Credits, Meta, RateLimit, Refill};
use crate::scope::ScopeSet;
use crate::secret::SecretHash;
use crate::shards::ShardedMap;
use crate::time::Timestamp;

/// Current state of every key, by tenant, folded from the log.
///
/// Cloning is cheap: a clone shares each tenant's state and the shards of
/// the global indexes with the original, and either side copies a tenant's
/// state (or an index's shard) the first time it changes it (copy on
/// write; snapshots take such a clone). The indexes are sharded so that
/// no single insert rehashes them whole (`crates/core/src/shards.rs`). The
/// runtime keeps one ledger, its read model: the writer decides a batch
/// against it through an [`crate::overlay::Overlay`] of what the batch
/// changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    tenants: HashMap<TenantId, Arc<TenantState>>,
    /// Secret hash → key id; the tenant is the key id's in `key_tenants`
    /// (held once per key, not in both indexes: issue 13).
    by_hash: ShardedMap<SecretHash, KeyId>,
    /// Key ids are unique across tenants, so usage can be keyed by id alone.
    key_tenants: ShardedMap<KeyId, TenantId>,
    events: u64,
}

/// One tenant's keys and removed users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantState {
    /// Sequence number of the tenant's last applied event (0: none yet).
    pub version: u64,
    /// Time of the tenant's last event: the next one is never earlier.
    pub last_at: Timestamp,
    /// Every key, revoked ones included, in creation (ULID) order.
    pub keys: BTreeMap<KeyId, KeyRecord>,
    /// Keys by owner, for the cascade.
    pub by_owner: HashMap<UserId, Vec<KeyId>>,
    /// Removed users and when.
    pub removed_users: BTreeMap<UserId, Timestamp>,
    /// `LogRecovered` events applied: the checkpoint epoch is one more
    /// ([`TenantState::epoch`]).
    pub recoveries: u64,
    /// Webhook subscriptions, deleted ones included, by id.
    pub webhooks: BTreeMap<crate::webhook::WebhookId, crate::webhook::Webhook>,
    /// What the key list reads without a pass over every key, kept by the
    /// fold; a state built otherwise (a snapshot read back) calls
    /// [`TenantState::rebuild_listing`].
    pub listing: Listing,
}

/// A tenant's keys in the list's default order, and what its active count
/// needs, kept as the keys change (issue 13: a tenant of a million keys
/// lists its newest page without visiting every key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Every key's id, by creation time and then id.
    by_created: Vec<KeyId>,
    /// Keys revoked.
    revoked: usize,
    /// Keys not revoked that have an expiry, counted by that instant.
    expiring: BTreeMap<Timestamp, usize>,
    /// Every key's name lower-cased, in the order of `by_created`, in one
    /// buffer: what a name search scans and a name sort reads.
    names: Names,
    /// Every key's creation instant (µs), in the order of `by_created`:
    /// a key's place is found by bisection of this array, not by a
    /// look-up of a key at every step (a use finds its key's place).
    created: Vec<i64>,
    /// Every key's last valid use (µs; -1: never, the sort value of a key
    /// never used), in the order of `by_created`: what a sort by last use
    /// scans, 8 bytes a key, without visiting the keys.
    last_used: Vec<i64>,
}

impl Listing {
    /// A key named `name` created at `at`.
    fn created(&mut self, id: KeyId, at: Timestamp, name: &str, expires_at: Option<Timestamp>) {
        // A tenant's events never go back in time, so a new key is
        // almost always the last; ties on the instant sort by id.
        let i = self.place(at, id);
        self.by_created.insert(i, id);
        self.names.insert(i, name);
        self.created.insert(i, at.as_micros());
        self.last_used.insert(i, -1);
        self.expire_at(expires_at, 1);
    }

    /// Where key `id`, created at `at`, is (or goes) in `by_created`: the
    /// end for a key newer than every other, else by bisection of
    /// `created` (the id is read only on a tie of instants).
    fn place(&self, at: Timestamp, id: KeyId) -> usize {
        let at = at.as_micros();
        let before = |i: usize| {
            self.created[i]
                .cmp(&at)
                .then_with(|| self.by_created[i].cmp(&id))
                .is_lt()
        };
        let n = self.created.len();
        if n == 0 || before(n - 1) {
            return n;
        }
        let (mut lo, mut hi) = (0, n - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Key `id`'s place in `by_created`, if it is there (a key not in the
    /// order, as in an overlay's partial state, is not).
    fn find(&self, at: Timestamp, id: KeyId) -> Option<usize> {
        let i = self.place(at, id);
        (self.by_created.get(i) == Some(&id)).then_some(i)
    }

    /// Key `id`, created at `at`, is now named `name`. (A key not in the
    /// order, as in an overlay's partial state, changes nothing.)
    fn renamed(&mut self, id: KeyId, at: Timestamp, name: &str) {
        if let Some(i) = self.find(at, id) {
            self.names.rename(i, name);
        }
    }

    /// Key `id`, created at `at`, was last used at `last` (a key not in
    /// the order changes nothing, as for [`Listing::renamed`]).
    fn used(&mut self, id: KeyId, at: Timestamp, last: Timestamp) {
        if let Some(i) = self.find(at, id)
            && let Some(slot) = self.last_used.get_mut(i)
        {
            *slot = last.as_micros();
        }
    }

    /// Counts `n` more (or, negative, fewer) unrevoked keys expiring at `at`.
    fn expire_at(&mut self, at: Option<Timestamp>, n: isize) {
        let Some(at) = at else { return };
        let count = self.expiring.entry(at).or_default();
        *count = count.saturating_add_signed(n);
        if *count == 0 {
            self.expiring.remove(&at);
        }
    }

    /// An unrevoked key's expiry moved from `before` to `after`.
    fn expiry_moved(&mut self, before: Option<Timestamp>, after: Option<Timestamp>) {
        if before != after {
            self.expire_at(before, -1);
            self.expire_at(after, 1);
        }
    }

    /// A key expiring at `expires_at` was revoked.
    fn revoked(&mut self, expires_at: Option<Timestamp>) {
        self.revoked += 1;
        self.expire_at(expires_at, -1);
    }
}

/// A key, as the list and the detail views show it (never the secret).
///
/// Held for every key, so kept compact (issue 13): ids are shared
/// pointers, the masked secret is inline, and what few keys have
/// (revocation, rotation links, a creator other than the owner or the
/// operator, a policy) is boxed. `size_of::<KeyRecord>()` is pinned by a
/// test below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Its id.
    pub id: KeyId,
    /// The user it acts as.
    pub owner: UserId,
    /// Its name (shared with the verification map's entry).
    pub name: Arc<str>,
    /// Its description.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it ([`KeyRecord::created_by`] gives the actor).
    pub creator: CreatedBy,
    /// When it stops working on its own (a rotation may bring this forward).
    pub expires_at: Option<Timestamp>,
    /// What it may do.
    pub scopes: ScopeSet,
    /// SHA-256 of the secret.
    pub secret_hash: SecretHash,
    /// First 8 characters, `…`, last 4.
    pub masked: Masked,
    /// Set once, never cleared.
    pub revoked: Option<Box<Revocation>>,
    /// The keys this one replaced and was replaced by, if either
    /// ([`KeyRecord::rotated_from`], [`KeyRecord::rotated_to`]).
    pub links: Option<Box<Links>>,
    /// The last valid use.
    pub last_used_at: Option<Timestamp>,
    /// Every counted use, by outcome.
    pub uses: UseCounts,
    /// Its policy (metadata, credits, rate limits); `None` for a key with
    /// none of them, which then costs one pointer more than before.
    pub policy: Option<Box<KeyPolicy>>,
}

/// A key's policy: what a key without one does not pay for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Its metadata.
    pub meta: Option<Meta>,
    /// Its credits, as the log knows them (`None`: unlimited).
    pub credits: Option<CreditState>,
    /// Its named rate limits.
    pub limits: Vec<RateLimit>,
}

/// A key's credits as folded from the log. Nodes reserve blocks of them
/// (`CreditsReserved`) and spend those in memory; so `remaining` is what no
/// node has reserved yet, not what is left to spend.
///
/// Within one credit epoch, `remaining + outstanding` is always the credits
/// the epoch started with: a reservation moves credits from `remaining` to
/// `outstanding`, a release moves them back, and no event adds credits to
/// an epoch. So reservations in an epoch never exceed what it started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditState {
    /// Credits no node has reserved.
    pub remaining: u64,
    /// The refill, if any.
    pub refill: Option<Refill>,
    /// The current credit epoch: the tenant sequence number of the event
    /// that started it (the `KeyCreated`, a `KeyUpdated` that changed the
    /// credits, or a `CreditsRefilled`), so epochs only grow.
    pub epoch: u64,
    /// The instant the epoch stands for: the event's time, or a refill's
    /// due instant. The next refill is the first refill instant after it.
    pub since: Timestamp,
    /// Credits reserved in this epoch and not released.
    pub outstanding: u64,
}

impl CreditState {
    /// Credits starting an epoch at `epoch` (a sequence number) and `since`.
    pub fn start(credits: &Credits, epoch: u64, since: Timestamp) -> Self {
        CreditState {
            remaining: credits.remaining,
            refill: credits.refill,
            epoch,
            since,
            outstanding: 0,
        }
    }

    /// The policy as a `Credits` value: the log's remaining and the refill.
    pub fn credits(&self) -> Credits {
        Credits {
            remaining: self.remaining,
            refill: self.refill,
        }
    }

    /// The credits the current epoch started with.
    pub fn epoch_start(&self) -> u64 {
        self.remaining.saturating_add(self.outstanding)
    }

    /// The refill instant due at `now`, if one is: the latest refill
    /// instant at or before `now` and after [`CreditState::since`].
    pub fn refill_due(&self, now: Timestamp) -> Option<Timestamp> {
        let due = self.refill?.last_at_or_before(now);
        (due > self.since).then_some(due)
    }
}

impl KeyPolicy {
    /// The boxed policy, or `None` when it holds nothing.
    pub fn boxed(self) -> Option<Box<KeyPolicy>> {
        (self != KeyPolicy::default()).then(|| Box::new(self))
    }
}

/// How a key was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// When.
    pub at: Timestamp,
    /// By whom.
    pub by: Actor,
    /// Why.
    pub reason: RevokeReason,
    /// The cascade it came from, if any.
    pub cause: Option<Cause>,
}

/// A key's status at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Works.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked, for good.
    Revoked,
}

impl KeyStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Expired, Self::Revoked]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl KeyRecord {
    /// Status at `now`: revoked beats expired.
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        if self.revoked.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Who created it.
    pub fn created_by(&self) -> Actor {
        self.creator.actor(&self.owner)
    }

    /// The key this one replaced.
    pub fn rotated_from(&self) -> Option<KeyId> {
        self.links.as_ref()?.from
    }

    /// The key that replaced this one.
    pub fn rotated_to(&self) -> Option<KeyId> {
        self.links.as_ref()?.to
    }

    /// Sets the key that replaced this one.
    fn set_rotated_to(&mut self, to: KeyId) {
        let mut links = self.links.take().map(|b| *b).unwrap_or_default();
        links.to = Some(to);
        self.links = links.boxed();
    }

    /// Its metadata.
    pub fn meta(&self) -> Option<&Meta> {
        self.policy.as_ref()?.meta.as_ref()
    }

    /// Its credits, as the log knows them.
    pub fn credit_state(&self) -> Option<&CreditState> {
        self.policy.as_ref()?.credits.as_ref()
    }

    /// Its credits as a policy value (the log's remaining and the refill).
    pub fn credits(&self) -> Option<Credits> {
        self.credit_state().map(CreditState::credits)
    }

    /// Its rate limits.
    pub fn limits(&self) -> &[RateLimit] {
        self.policy.as_ref().map_or(&[], |p| &p.limits)
    }

    /// Changes the policy with `f`, keeping `None` for an empty one.
    fn edit_policy(&mut self, f: impl FnOnce(&mut KeyPolicy)) {
        let mut p = self.policy.take().map(|b| *b).unwrap_or_default();
        f(&mut p);
        self.policy = p.boxed();
    }
}

/// A committed event could not be folded: the log is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The tenant's sequence numbers are not contiguous.
    #[error("tenant {tenant}: expected sequence number {expected}, found {found}")]
    Sequence {
        /// The tenant.
        tenant: TenantId,
        /// The number that should come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The event names a key the tenant does not have, or creates one twice.
    #[error("tenant {tenant}, sequence number {seq}: {message}")]
    Inconsistent {
        /// The tenant.
        tenant: TenantId,
        /// The event's sequence number.
        seq: u64,
        /// What is wrong.
        message: String,
    },
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tenant's state, if it has any event.
    pub fn tenant(&self, tenant: &TenantId) -> Option<&TenantState> {
        self.tenants.get(tenant).map(|t| &**t)
    }

    /// The tenant's id as the ledger holds it, which every key's entries
    /// share (a clone of it is a pointer to the same text).
    pub fn tenant_id(&self, tenant: &TenantId) -> Option<&TenantId> {
        self.tenants.get_key_value(tenant).map(|(t, _)| t)
    }

    /// Every tenant with at least one event.
    pub fn tenants(&self) -> impl Iterator<Item = (&TenantId, &TenantState)> {
        self.tenants.iter().map(|(id, t)| (id, &**t))
    }

    /// Every tenant with at least one event, its state shared with this
    /// ledger: a holder of one of these `Arc`s keeps that tenant as it is
    /// now, and the ledger copies it on its next change to the tenant (a
    /// snapshot encodes them one at a time, dropping each once encoded).
    pub fn shared_tenants(&self) -> impl Iterator<Item = (&TenantId, &Arc<TenantState>)> {
        self.tenants.iter()
    }

    /// A key of a tenant. A key of another tenant is `None`, like an unknown one.
    pub fn key(&self, tenant: &TenantId, id: KeyId) -> Option<&KeyRecord> {
        self.tenants.get(tenant)?.keys.get(&id)
    }

    /// The key with this secret hash, and its tenant.
    pub fn key_by_hash(&self, hash: &SecretHash) -> Option<(&TenantId, &KeyRecord)> {
        let (tenant, id) = self.key_id_by_hash(hash)?;
        Some((tenant, self.tenants.get(tenant)?.keys.get(&id)?))
    }

    /// The tenant and id of the key with this secret hash.
    pub(crate) fn key_id_by_hash(&self, hash: &SecretHash) -> Option<(&TenantId, KeyId)> {
        let id = *self.by_hash.get(hash)?;
        Some((self.key_tenants.get(&id)?, id))
    }

    /// Whether a key with this id exists in any tenant.
    pub fn key_exists(&self, id: KeyId) -> bool {
        self.key_tenants.contains_key(&id)
    }

    /// How many events were applied.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// A ledger made of tenants' states, as [`Ledger::tenants`] lists them,
    /// and the number of events they fold (a snapshot read back). The
    /// indexes by secret hash and by key id are rebuilt from the keys.
    /// Fails, changing nothing, when two keys share an id or a secret hash
    /// (no log folds to that).
    pub fn from_tenants(
        tenants: impl IntoIterator<Item = (TenantId, TenantState)>,
        events: u64,
    ) -> Result<Self, ApplyError> {
        let mut ledger = Ledger {
            events,
            ..Ledger::default()
        };
        for (tenant, state) in tenants {
            for key in state.keys.values() {
                let clash = |what: &str| ApplyError::Inconsistent {
                    tenant: tenant.clone(),
                    seq: state.version,
                    message: format!("key {} {what}", key.id),
                };
                if ledger.by_hash.insert(key.secret_hash, key.id).is_some() {
                    return Err(clash("shares its secret hash with another key"));
                }
                if ledger.key_tenants.insert(key.id, tenant.clone()).is_some() {
                    return Err(clash("is listed twice"));
                }
            }
            if ledger
                .tenants
                .insert(tenant.clone(), Arc::new(state))
                .is_some()
            {
                return Err(ApplyError::Inconsistent {
                    tenant,
                    seq: 0,
                    message: "the tenant is listed twice".to_owned(),
                });
            }
        }
        Ok(ledger)
    }

    /// Folds one committed event, which is the tenant's event number `seq`.
    ///
    /// The sequence number is checked here, as it was when appended: a
    /// replay of a log with a gap fails instead of building a wrong state.
    ///
    /// An event that cannot be folded leaves the ledger exactly as it was.
    pub fn apply(&mut self, seq: u64, event: &Event) -> Result<(), ApplyError> {
        // One lookup of the tenant per event; a new tenant's state is
        // inserted only once its first event folds.
        // A key's entries in the indexes point at the tenant's id the
        // ledger already holds, not at a copy decoded with each event.
        let tenant = match event.kind {
            EventKind::KeyCreated(_) => self.tenant_id(&event.tenant).cloned(),
            _ => None,
        };
        let mut indexes = SharedIndexes {
            inner: LedgerIndexes {
                by_hash: &mut self.by_hash,
                key_tenants: &mut self.key_tenants,
            },
            tenant,
        };
        if let Some(state) = self.tenants.get_mut(&event.tenant) {
            check_seq(event, state.version + 1, seq)?;
            fold(Arc::make_mut(state), &mut indexes, seq, event)?;
        } else {
            check_seq(event, 1, seq)?;
            let mut state = TenantState::default();
            fold(&mut state, &mut indexes, seq, event)?;
            self.tenants.insert(event.tenant.clone(), Arc::new(state));
        }
        self.events += 1;
        Ok(())
    }
}

/// The indexes of every key a fold adds to: the ledger's, or an overlay's
/// over them (`crate::overlay`).
pub(crate) trait KeyIndexes {
    /// Whether a key with this id or this secret hash exists.
    fn taken(&self, id: KeyId, hash: &SecretHash) -> bool;
    /// Indexes a new key.
    fn insert(&mut self, tenant: &TenantId, id: KeyId, hash: SecretHash);
}

/// The ledger's own indexes (also those of a fold of chosen keys,
/// `history.rs`).
pub(crate) struct LedgerIndexes<'a> {
    pub(crate) by_hash: &'a mut ShardedMap<SecretHash, KeyId>,
    pub(crate) key_tenants: &'a mut ShardedMap<KeyId, TenantId>,
}

impl KeyIndexes for LedgerIndexes<'_> {
    fn taken(&self, id: KeyId, hash: &SecretHash) -> bool {
        self.key_tenants.contains_key(&id) || self.by_hash.contains_key(hash)
    }

    fn insert(&mut self, tenant: &TenantId, id: KeyId, hash: SecretHash) {
        self.by_hash.insert(hash, id);
        self.key_tenants.insert(id, tenant.clone());
    }
}

/// The ledger's indexes, given the tenant's id as the ledger holds it (if
/// it holds one), which new entries then share.
struct SharedIndexes<'a> {
    inner: LedgerIndexes<'a>,
    tenant: Option<TenantId>,
}

impl KeyIndexes for SharedIndexes<'_> {
    fn taken(&self, id: KeyId, hash: &SecretHash) -> bool {
        self.inner.taken(id, hash)
    }

    fn insert(&mut self, tenant: &TenantId, id: KeyId, hash: SecretHash) {
        let tenant = self.tenant.as_ref().unwrap_or(tenant);
        self.inner.insert(tenant, id, hash);
    }
}

pub(crate) fn check_seq(event: &Event, expected: u64, seq: u64) -> Result<(), ApplyError> {
    if seq == expected {
        Ok(())
    } else {
        Err(ApplyError::Sequence {
            tenant: event.tenant.clone(),
            expected,
            found: seq,
        })
    }
}

/// A key's credit state for a credit event (`what` it is), or why not.
fn credits_of<'a>(
    state: &'a mut TenantState,
    key_id: KeyId,
    what: &str,
) -> Result<&'a mut CreditState, String> {
    state
        .keys
        .get_mut(&key_id)
        .ok_or_else(|| format!("credits of {key_id} are {what} but the key is unknown"))?
        .policy
        .as_mut()
        .and_then(|p| p.credits.as_mut())
        .ok_or_else(|| format!("credits of {key_id} are {what} but it has none"))
}

/// Checks a `KeyUpdated`'s changes against the key: at least one, fields
/// in order and once each, none a no-op, every `before` the key's state.
fn check_update(key: &KeyRecord, changes: &[KeyChange]) -> Result<(), String> {
    if changes.is_empty() {
        return Err("an update changes nothing".into());
    }
    if changes.windows(2).any(|w| w[0].order() >= w[1].order()) {
        return Err("an update's fields are out of order or repeated".into());
    }
    for change in changes {
        if change.is_noop() {
            return Err(format!("{} is changed to what it was", change.field()));
        }
        let same = match change {
            KeyChange::Name { before, .. } => **before == *key.name,
            KeyChange::Description { before, .. } => *before == key.description,
            KeyChange::Meta { before, .. } => before.as_ref() == key.meta(),
            KeyChange::ExpiresAt { before, .. } => *before == key.expires_at,
            KeyChange::Scopes { before, .. } => *before == key.scopes,
            KeyChange::Credits { before, .. } => *before == key.credits(),
            KeyChange::Limits { before, .. } => before.as_slice() == key.limits(),
        };
        if !same {
            return Err(format!(
                "{} before the update is not the key's",
                change.field()
            ));
        }
    }
    Ok(())
}

/// Applies one checked change; `seq` and `at` are the event's.
fn apply_change(key: &mut KeyRecord, change: &KeyChange, seq: u64, at: Timestamp) {
    match change {
        KeyChange::Name { after, .. } => key.name = Arc::from(after.as_str()),
        KeyChange::Description { after, .. } => key.description.clone_from(after),
        KeyChange::Meta { after, .. } => key.edit_policy(|p| p.meta.clone_from(after)),
        KeyChange::ExpiresAt { after, .. } => key.expires_at = *after,
        KeyChange::Scopes { after, .. } => key.scopes = *after,
        KeyChange::Credits { after, .. } => key.edit_policy(|p| {
            p.credits = after.as_ref().map(|c| CreditState::start(c, seq, at));
        }),
        KeyChange::Limits { after, .. } => key.edit_policy(|p| p.limits.clone_from(after)),
    }
}

fn used_unknown(key_id: KeyId) -> String {
    format!("{key_id} is used but unknown")
}

/// [`fold`] of a `KeyUsed` whose key is not in `state` (an overlay's,
/// over the committed state): `known` says whether the key exists there.
/// Only the tenant's counters move; the key's counts are folded where the
/// key is held, when the event is applied there.
pub(crate) fn fold_elsewhere(
    state: &mut TenantState,
    known: bool,
    seq: u64,
    event: &Event,
) -> Result<(), ApplyError> {
    if let EventKind::KeyUsed(e) = &event.kind
        && !known
    {
        return Err(ApplyError::Inconsistent {
            tenant: event.tenant.clone(),
            seq,
            message: used_unknown(e.key_id),
        });
    }
    state.version = seq;
    state.last_at = state.last_at.max(event.at);
    Ok(())
}

/// [`Ledger::apply`] once the sequence number is checked, on the tenant's
/// state. Every error is returned before anything is changed.
pub(crate) fn fold(
    state: &mut TenantState,
    indexes: &mut impl KeyIndexes,
    seq: u64,
    event: &Event,
) -> Result<(), ApplyError> {
    let inconsistent = |message: String| ApplyError::Inconsistent {
        tenant: event.tenant.clone(),
        seq,
        message,
    };
    match &event.kind {
        EventKind::KeyCreated(e) => {
            if indexes.taken(e.key_id, &e.secret_hash) {
                return Err(inconsistent(format!("{} is created twice", e.key_id)));
            }
            // The owner's id as the tenant already holds it, if it does:
            // each record points at one copy.
            let owner = state
                .by_owner
                .get_key_value(&e.owner)
                .map_or(&e.owner, |(o, _)| o)
                .clone();
            state.keys.insert(
                e.key_id,
                KeyRecord {
                    id: e.key_id,
                    creator: CreatedBy::of(&event.actor, &e.owner),
                    owner,
                    name: Arc::from(e.name.as_str()),
                    description: e.description.clone(),
                    created_at: event.at,
                    expires_at: e.expires_at,
                    scopes: e.scopes,
                    secret_hash: e.secret_hash,
                    masked: Masked::from(e.masked.as_str()),
                    revoked: None,
                    links: Links {
                        from: e.rotated_from,
                        to: None,
                    }
                    .boxed(),
                    last_used_at: None,
                    uses: UseCounts::default(),
                    policy: KeyPolicy {
                        meta: e.meta.clone(),
                        credits: e
                            .credits
                            .as_ref()
                            .map(|c| CreditState::start(c, seq, event.at)),
                        limits: e.limits.clone(),
                    }
                    .boxed(),
                },
            );
            // Looked up first: the owner's id is cloned only for their
            // first key.
            match state.by_owner.get_mut(&e.owner) {
                Some(ids) => ids.push(e.key_id),
                None => {
                    state.by_owner.insert(e.owner.clone(), vec![e.key_id]);
                }
            }
            indexes.insert(&event.tenant, e.key_id, e.secret_hash);
            state
                .listing
                .created(e.key_id, event.at, &e.name, e.expires_at);
            if let Some(old) = e.rotated_from.and_then(|old| state.keys.get_mut(&old)) {
                old.set_rotated_to(e.key_id);
            }
        }
        EventKind::KeyUsed(e) => {
            let key = state
                .keys
                .get_mut(&e.key_id)
                .ok_or_else(|| inconsistent(used_unknown(e.key_id)))?;
            key.uses.add(&e.counts);
            if let Some(last) = e.last_valid_at
                && Some(last) > key.last_used_at
            {
                key.last_used_at = Some(last);
                state.listing.used(e.key_id, key.created_at, last);
            }
        }
        EventKind::KeyRevoked(e) => {
            let key = state
                .keys
                .get_mut(&e.key_id)
                .ok_or_else(|| inconsistent(format!("{} is revoked but unknown", e.key_id)))?;
            if key.revoked.is_some() {
                return Err(inconsistent(format!("{} is revoked twice", e.key_id)));
            }
            state.listing.revoked(key.expires_at);
            key.revoked = Some(Box::new(Revocation {
                at: event.at,
                by: event.actor.clone(),
                reason: e.reason,
                cause: e.cause.clone(),
            }));
        }
        EventKind::KeyRotated(e) => {
            let key = state
                .keys
                .get_mut(&e.key_id)
                .ok_or_else(|| inconsistent(format!("{} is rotated but unknown", e.key_id)))?;
            let before = key.expires_at;
            key.expires_at = Some(key.expires_at.map_or(e.expires_at, |x| x.min(e.expires_at)));
            if key.revoked.is_none() {
                state.listing.expiry_moved(before, key.expires_at);
            }
            key.set_rotated_to(e.new_key_id);
            // The successor was created with the credits no node had
            // reserved (decide.rs, rotation): they move, they are not copied.
            if let Some(c) = key.policy.as_mut().and_then(|p| p.credits.as_mut()) {
                c.remaining = 0;
            }
        }
        EventKind::KeyUpdated(e) => {
            let key = state
                .keys
                .get_mut(&e.key_id)
                .ok_or_else(|| inconsistent(format!("{} is updated but unknown", e.key_id)))?;
            check_update(key, &e.changes)
                .map_err(|m| inconsistent(format!("{}: {m}", e.key_id)))?;
            let before = key.expires_at;
            for change in &e.changes {
                apply_change(key, change, seq, event.at);
            }
            if key.revoked.is_none() {
                state.listing.expiry_moved(before, key.expires_at);
            }
            if e.changes
                .iter()
                .any(|c| matches!(c, KeyChange::Name { .. }))
            {
                state.listing.renamed(e.key_id, key.created_at, &key.name);
            }
        }
        EventKind::CreditsReserved(e) => {
            let c = credits_of(state, e.key_id, "reserved").map_err(&inconsistent)?;
            if e.epoch != c.epoch {
                return Err(inconsistent(format!(
                    "{}: credits reserved in epoch {}, but the key is in epoch {}",
                    e.key_id, e.epoch, c.epoch
                )));
            }
            if e.amount == 0 || e.amount > c.remaining {
                return Err(inconsistent(format!(
                    "{}: {} credits reserved, {} unreserved",
                    e.key_id, e.amount, c.remaining
                )));
            }
            c.remaining -= e.amount;
            c.outstanding += e.amount;
        }
        EventKind::CreditsReleased(e) => {
            let c = credits_of(state, e.key_id, "released").map_err(&inconsistent)?;
            if e.epoch > c.epoch {
                return Err(inconsistent(format!(
                    "{}: credits released from epoch {}, after the key's epoch {}",
                    e.key_id, e.epoch, c.epoch
                )));
            }
            // A release from an older epoch has lapsed: nothing comes back.
            if e.epoch == c.epoch {
                if e.amount == 0 || e.amount > c.outstanding {
                    return Err(inconsistent(format!(
                        "{}: {} credits released, {} reserved",
                        e.key_id, e.amount, c.outstanding
                    )));
                }
                c.outstanding -= e.amount;
                c.remaining += e.amount;
            }
        }
        EventKind::CreditsRefilled(e) => {
            let c = credits_of(state, e.key_id, "refilled").map_err(&inconsistent)?;
            let Some(refill) = c.refill else {
                return Err(inconsistent(format!(
                    "{} is refilled without a refill",
                    e.key_id
                )));
            };
            if e.due_at <= c.since
                || refill.last_at_or_before(e.due_at) != e.due_at
                || e.due_at > event.at
                || e.remaining != refill.amount
            {
                return Err(inconsistent(format!(
                    "{}: a refill due at {} for {} is not one its refill makes",
                    e.key_id, e.due_at, e.remaining
                )));
            }
            c.remaining = e.remaining;
            c.outstanding = 0;
            c.epoch = seq;
            c.since = e.due_at;
        }
        EventKind::UserRemoved(e) => {
            if state.removed_users.contains_key(&e.user_id) {
                return Err(inconsistent(format!("user {} is removed twice", e.user_id)));
            }
            state.removed_users.insert(e.user_id.clone(), event.at);
        }
        // A report changes no key (the `KeyRevoked` after it does), but
        // names one that exists and is not revoked.
        EventKind::KeyLeaked(e) => {
            let key = state
                .keys
                .get(&e.key_id)
                .ok_or_else(|| inconsistent(format!("{} is leaked but unknown", e.key_id)))?;
            if key.revoked.is_some() {
                return Err(inconsistent(format!(
                    "{} is reported leaked after it was revoked",
                    e.key_id
                )));
            }
        }
        // A read of the trail changes no key: only the chain moves on.
        EventKind::AuditRead(_) => {}
        EventKind::LogRecovered(e) => {
            if e.epoch != state.epoch() + 1 {
                return Err(inconsistent(format!(
                    "a recovery starts epoch {} after epoch {}",
                    e.epoch,
                    state.epoch()
                )));
            }
            state.recoveries += 1;
        }
        EventKind::WebhookSubscribed(_) | EventKind::WebhookDeleted(_) => {
            crate::webhook::fold(state, seq, event).map_err(inconsistent)?;
        }
    }
    state.version = seq;
    state.last_at = state.last_at.max(event.at);
    Ok(())
}

impl TenantState {
    /// The checkpoint epoch: 1 until a `LogRecovered`, then that event's.
    pub fn epoch(&self) -> u64 {
        self.recoveries + 1
    }

    /// Keys active at `now`: every key, less the revoked ones and those
    /// expired by `now` (counted by expiry instant, not key by key).
    pub fn active_count(&self, now: Timestamp) -> usize {
        let expired: usize = self.listing.expiring.range(..=now).map(|(_, n)| n).sum();
        self.keys
            .len()
            .saturating_sub(self.listing.revoked)
            .saturating_sub(expired)
    }

    /// Every key's id by creation time, then id: the key list's default
    /// order (oldest first).
    pub fn by_created(&self) -> &[KeyId] {
        &self.listing.by_created
    }

    /// Every key's name lower-cased, in the order of
    /// [`TenantState::by_created`] (place `i` is key `by_created()[i]`'s).
    pub fn names(&self) -> &Names {
        &self.listing.names
    }

    /// Every key's last valid use in microseconds (-1: never used, as the
    /// key list sorts it), in the order of [`TenantState::by_created`]
    /// (place `i` is key `by_created()[i]`'s).
    pub fn last_uses(&self) -> &[i64] {
        &self.listing.last_used
    }

    /// Where a key created at `at` with id `id` is, or would go, in
    /// [`TenantState::by_created`]: the first place not before it (by
    /// bisection of the creation instants, the id read only on a tie).
    pub fn created_place(&self, at: Timestamp, id: KeyId) -> usize {
        self.listing.place(at, id)
    }

    /// Rebuilds [`TenantState::listing`] from the keys: for a state not
    /// made by the fold (a snapshot read back).
    pub fn rebuild_listing(&mut self) {
        let mut listing = Listing::default();
        // One pass over the keys: each name and last use comes with its
        // key, not from a second look-up per key.
        let mut order: Vec<(Timestamp, KeyId, &str, i64)> = self
            .keys
            .values()
            .map(|k| {
                let used = k.last_used_at.map_or(-1, Timestamp::as_micros);
                (k.created_at, k.id, &*k.name, used)
            })
            .collect();
        order.sort_unstable_by_key(|&(at, id, _, _)| (at, id));
        listing.names = Names::build(order.iter().map(|&(_, _, name, _)| name));
        listing.by_created = order.iter().map(|&(_, id, _, _)| id).collect();
        listing.created = order.iter().map(|&(at, ..)| at.as_micros()).collect();
        listing.last_used = order.iter().map(|&(.., used)| used).collect();
        for k in self.keys.values() {
            if k.revoked.is_some() {
                listing.revoked += 1;
            } else {
                listing.expire_at(k.expires_at, 1);
            }
        }
        self.listing = listing;
    }

    /// Whether `user` was removed.
    pub fn is_removed(&self, user: &UserId) -> bool {
        self.removed_users.contains_key(user)
    }

    /// The keys `user` owns.
    pub fn keys_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a KeyRecord> + 'a {
        self.by_owner
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.keys.get(id))
    }
}
#[cfg(test)]
mod tests {
    /// Every key holds a record: 496 bytes inline before issue 13's compact
    /// records, 272 since. A field that grows it fails here, not at 10M keys.
    #[test]
    fn a_key_record_stays_compact() {
        assert!(
            std::mem::size_of::<super::KeyRecord>() <= 272,
            "KeyRecord is {} bytes",
            std::mem::size_of::<super::KeyRecord>()
        );
    }

    /// Every key has an entry in each of the ledger's two indexes: the hash
    /// index holds the key id alone (48 bytes an entry, 64 when it held the
    /// tenant too), and the tenant is the id's entry (32 bytes).
    #[test]
    fn a_key_costs_two_small_index_entries() {
        use super::{KeyId, SecretHash, TenantId};
        assert_eq!(std::mem::size_of::<(SecretHash, KeyId)>(), 48);
        assert_eq!(std::mem::size_of::<(KeyId, TenantId)>(), 32);
    }

    /// The hash index finds a key through the id index's tenant, and a
    /// snapshot read back (`from_tenants`) finds it the same way.
    #[test]
    fn a_key_is_found_by_its_hash_in_its_tenant() {
        use crate::decide::{Command, CreateKey, Principal, decide};
        use crate::secret::{BODY_BYTES, KeyPrefix, Secret};
        use crate::time::Timestamp;
        let mut ledger = super::Ledger::new();
        let mut hashes = Vec::new();
        for (n, tenant) in ["acme", "globex", "acme"].into_iter().enumerate() {
            let tenant: super::TenantId = tenant.parse().unwrap();
            let secret = Secret::from_material(&KeyPrefix::default(), &[n as u8 + 1; BODY_BYTES]);
            let events = decide(
                &ledger,
                &Command::CreateKey(CreateKey {
                    meta: None,
                    credits: None,
                    limits: Vec::new(),
                    principal: Principal::user(tenant.clone(), "alice".parse().unwrap()),
                    owner: None,
                    name: format!("key {n}"),
                    description: None,
                    expires_at: None,
                    scopes: None,
                    key_id: super::KeyId::from_u128(n as u128 + 1),
                    secret_hash: secret.hash(),
                    masked: secret.masked(),
                }),
                Timestamp::from_micros(1_000_000 * (n as i64 + 1)),
            )
            .unwrap();
            for e in &events {
                let seq = ledger.tenant(&tenant).map_or(0, |t| t.version) + 1;
                ledger.apply(seq, e).unwrap();
            }
            hashes.push((
                tenant,
                super::KeyId::from_u128(n as u128 + 1),
                secret.hash(),
            ));
        }
        let again = super::Ledger::from_tenants(
            ledger.tenants().map(|(t, s)| (t.clone(), s.clone())),
            ledger.events(),
        )
        .unwrap();
        assert_eq!(again, ledger);
        for l in [&ledger, &again] {
            for (tenant, id, hash) in &hashes {
                let (t, key) = l.key_by_hash(hash).expect("found by its hash");
                assert_eq!((t, key.id), (tenant, *id));
                assert!(l.key_exists(*id));
            }
            assert!(l.key_by_hash(&super::SecretHash([9; 32])).is_none());
            assert!(!l.key_exists(super::KeyId::from_u128(99)));
        }
    }
}
