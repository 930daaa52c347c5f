//! What a decision reads of the key state ([`StateView`]), and the
//! writer's view while it decides a batch ([`Overlay`]): the committed
//! state, read only, under what the batch's decided events change.
//!
//! The writer decides each command of a batch after the ones before it
//! (a second revoke in the same batch is a conflict), before any of them
//! is committed. It used to keep a second `Ledger` for that, which grew
//! into a whole copy of the key state once it had written for every
//! tenant, and copied a tenant's keys at its first write (issue 13). An
//! overlay holds only what the batch touched: the key records its events
//! change or create (each copied once from the committed state, then
//! folded by the same code as the ledger), the tenants' counters, the new
//! secret hashes and key ids. It is dropped once the batch is committed
//! and applied to the read model, or when the commit fails: the committed
//! state is never changed by a decision.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Event, EventKind};
use crate::ids::{KeyId, TenantId, UserId};
use crate::secret::SecretHash;
use crate::state::{
    ApplyError, KeyIndexes, KeyRecord, Ledger, TenantState, check_seq, fold, fold_elsewhere,
};
use crate::time::Timestamp;
use crate::webhook::{Webhook, WebhookId};

/// The key state as a decision reads it: implemented by the committed
/// [`Ledger`] and by an [`Overlay`] over it.
pub trait StateView {
    /// A tenant's state (empty for a tenant without events).
    fn tenant_view(&self, tenant: &TenantId) -> TenantView<'_>;
    /// Whether a key with this id exists in any tenant.
    fn key_exists(&self, id: KeyId) -> bool;
    /// The key with this secret hash, and its tenant.
    fn key_by_hash(&self, hash: &SecretHash) -> Option<(&TenantId, &KeyRecord)>;
}

impl StateView for Ledger {
    fn tenant_view(&self, tenant: &TenantId) -> TenantView<'_> {
        TenantView {
            base: self.tenant(tenant),
            delta: None,
        }
    }

    fn key_exists(&self, id: KeyId) -> bool {
        Ledger::key_exists(self, id)
    }

    fn key_by_hash(&self, hash: &SecretHash) -> Option<(&TenantId, &KeyRecord)> {
        Ledger::key_by_hash(self, hash)
    }
}

/// One tenant's state as a decision reads it: the committed state, and
/// over it what the batch changed.
#[derive(Clone, Copy, Debug)]
pub struct TenantView<'a> {
    base: Option<&'a TenantState>,
    delta: Option<&'a TenantDelta>,
}

/// A tenant without subscriptions.
static NO_WEBHOOKS: BTreeMap<WebhookId, Webhook> = BTreeMap::new();

impl<'a> TenantView<'a> {
    /// Whether the tenant has any event.
    pub fn exists(self) -> bool {
        self.base.is_some() || self.delta.is_some()
    }

    /// The scalars: the batch's when it wrote for the tenant.
    fn scalars(self) -> Option<&'a TenantState> {
        self.delta.map(|d| &d.state).or(self.base)
    }

    /// Sequence number of the tenant's last event (0: none yet).
    pub fn version(self) -> u64 {
        self.scalars().map_or(0, |s| s.version)
    }

    /// Time of the tenant's last event.
    pub fn last_at(self) -> Timestamp {
        self.scalars()
            .map_or_else(Timestamp::default, |s| s.last_at)
    }

    /// The checkpoint epoch ([`TenantState::epoch`]).
    pub fn epoch(self) -> u64 {
        self.scalars().map_or(1, TenantState::epoch)
    }

    /// A key of the tenant. Under an [`Overlay`], a key the batch only
    /// used has its counts and last use as committed: decisions read
    /// neither.
    pub fn key(self, id: KeyId) -> Option<&'a KeyRecord> {
        self.delta
            .and_then(|d| d.state.keys.get(&id))
            .or_else(|| self.base?.keys.get(&id))
    }

    /// How many keys the tenant holds, revoked ones included.
    pub fn key_count(self) -> usize {
        self.base.map_or(0, |b| b.keys.len()) + self.delta.map_or(0, |d| d.created)
    }

    /// Whether `user` was removed.
    pub fn is_removed(self, user: &UserId) -> bool {
        self.delta.is_some_and(|d| d.state.is_removed(user))
            || self.base.is_some_and(|b| b.is_removed(user))
    }

    /// The keys `user` owns, in creation order (the committed ones first).
    pub fn keys_of(self, user: &UserId) -> impl Iterator<Item = &'a KeyRecord> + use<'a> {
        let base = self.base.and_then(|b| b.by_owner.get(user));
        let new = self.delta.and_then(|d| d.state.by_owner.get(user));
        base.into_iter()
            .chain(new)
            .flatten()
            .filter_map(move |id| self.key(*id))
    }

    /// Webhook subscriptions, deleted ones included, by id.
    pub fn webhooks(self) -> &'a BTreeMap<WebhookId, Webhook> {
        match (self.delta, self.base) {
            (Some(d), _) if d.webhooks_copied => &d.state.webhooks,
            (_, Some(b)) => &b.webhooks,
            _ => &NO_WEBHOOKS,
        }
    }
}

/// What a batch changed of one tenant.
#[derive(Clone, Debug)]
pub(crate) struct TenantDelta {
    /// The tenant's counters (version, last time, recoveries) as the batch
    /// left them; the keys the batch changed or created, whole; the owners
    /// of the created keys; the users removed (or, copied before a second
    /// removal is folded, removed before); the webhooks when
    /// `webhooks_copied`.
    state: TenantState,
    /// Whether `state.webhooks` holds every subscription (copied at the
    /// batch's first webhook event for the tenant).
    webhooks_copied: bool,
    /// Keys the batch created.
    created: usize,
}

/// The writer's view while it decides a batch; see the module's
/// documentation. Reads fall through to the committed `Ledger` for
/// whatever the batch did not change.
#[derive(Debug)]
pub struct Overlay<'a> {
    base: &'a Ledger,
    tenants: HashMap<TenantId, TenantDelta>,
    by_hash: HashMap<SecretHash, (TenantId, KeyId)>,
    key_tenants: HashMap<KeyId, TenantId>,
}

impl<'a> Overlay<'a> {
    /// Nothing changed yet over `base`.
    pub fn new(base: &'a Ledger) -> Self {
        Overlay {
            base,
            tenants: HashMap::new(),
            by_hash: HashMap::new(),
            key_tenants: HashMap::new(),
        }
    }

    /// Folds one decided event, which is the tenant's event number `seq`,
    /// as [`Ledger::apply`] would fold it into the committed state (the
    /// same checks, the same code); the committed state is not changed.
    /// An event that cannot be folded leaves the view as it was.
    pub fn apply(&mut self, seq: u64, event: &Event) -> Result<(), ApplyError> {
        let ledger: &'a Ledger = self.base;
        let base = ledger.tenant(&event.tenant);
        let expected = self.tenant_view(&event.tenant).version() + 1;
        check_seq(event, expected, seq)?;
        let Overlay {
            tenants,
            by_hash,
            key_tenants,
            ..
        } = self;
        let delta = match tenants.get_mut(&event.tenant) {
            Some(d) => d,
            None => tenants.entry(event.tenant.clone()).or_insert(TenantDelta {
                state: TenantState {
                    version: base.map_or(0, |b| b.version),
                    last_at: base.map_or_else(Timestamp::default, |b| b.last_at),
                    recoveries: base.map_or(0, |b| b.recoveries),
                    ..TenantState::default()
                },
                webhooks_copied: false,
                created: 0,
            }),
        };
        // A use changes only the key's counts and last use, which no
        // decision reads: a key the batch has not copied is not copied for
        // it (most of a batch's events are uses, issue 13). The tenant's
        // counters move on as the fold would move them; the counts reach
        // the committed state when the batch is applied there.
        if let EventKind::KeyUsed(e) = &event.kind
            && !delta.state.keys.contains_key(&e.key_id)
        {
            let known = base.is_some_and(|b| b.keys.contains_key(&e.key_id));
            return fold_elsewhere(&mut delta.state, known, seq, event);
        }
        // What the event reads or changes is copied over first, so that the
        // fold sees the whole of it (each at most once per batch).
        let state = &mut delta.state;
        let mut copy_key = |id: KeyId| {
            if !state.keys.contains_key(&id)
                && let Some(k) = base.and_then(|b| b.keys.get(&id))
            {
                state.keys.insert(id, k.clone());
            }
        };
        match &event.kind {
            EventKind::KeyCreated(e) => e.rotated_from.into_iter().for_each(&mut copy_key),
            EventKind::UserRemoved(e) => {
                if let Some(at) = base.and_then(|b| b.removed_users.get(&e.user_id)) {
                    state.removed_users.insert(e.user_id.clone(), *at);
                }
            }
            EventKind::WebhookSubscribed(_) | EventKind::WebhookDeleted(_) => {
                if !delta.webhooks_copied {
                    state.webhooks = base.map(|b| b.webhooks.clone()).unwrap_or_default();
                    delta.webhooks_copied = true;
                }
            }
            _ => event.key_id().into_iter().for_each(&mut copy_key),
        }
        let mut indexes = OverlayIndexes {
            base: ledger,
            by_hash,
            key_tenants,
        };
        fold(&mut delta.state, &mut indexes, seq, event)?;
        if matches!(event.kind, EventKind::KeyCreated(_)) {
            delta.created += 1;
        }
        Ok(())
    }
}

impl StateView for Overlay<'_> {
    fn tenant_view(&self, tenant: &TenantId) -> TenantView<'_> {
        TenantView {
            base: self.base.tenant(tenant),
            delta: self.tenants.get(tenant),
        }
    }

    fn key_exists(&self, id: KeyId) -> bool {
        self.key_tenants.contains_key(&id) || self.base.key_exists(id)
    }

    fn key_by_hash(&self, hash: &SecretHash) -> Option<(&TenantId, &KeyRecord)> {
        let (tenant, id) = match self.by_hash.get(hash) {
            Some((tenant, id)) => (tenant, *id),
            None => self.base.key_id_by_hash(hash)?,
        };
        Some((tenant, self.tenant_view(tenant).key(id)?))
    }
}

/// The overlay's indexes, over the committed ones.
struct OverlayIndexes<'o> {
    base: &'o Ledger,
    by_hash: &'o mut HashMap<SecretHash, (TenantId, KeyId)>,
    key_tenants: &'o mut HashMap<KeyId, TenantId>,
}

impl KeyIndexes for OverlayIndexes<'_> {
    fn taken(&self, id: KeyId, hash: &SecretHash) -> bool {
        self.key_tenants.contains_key(&id)
            || self.by_hash.contains_key(hash)
            || self.base.key_exists(id)
            || self.base.key_id_by_hash(hash).is_some()
    }

    fn insert(&mut self, tenant: &TenantId, id: KeyId, hash: SecretHash) {
        self.by_hash.insert(hash, (tenant.clone(), id));
        self.key_tenants.insert(id, tenant.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Command, CreateKey, Principal, UpdateKey, decide};
    use crate::event::LogRecovered;
    use crate::policy::Credits;
    use crate::secret::{BODY_BYTES, KeyPrefix, Secret};
    use crate::webhook::{DeleteWebhook, SubscribeWebhook};

    fn tenant() -> TenantId {
        "acme".parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn p() -> Principal {
        Principal::operator(tenant())
    }

    fn create(n: u8, credits: Option<u64>) -> Command {
        let s = Secret::from_material(&KeyPrefix::default(), &[n; BODY_BYTES]);
        Command::CreateKey(CreateKey {
            principal: p(),
            owner: Some("ada".parse().unwrap_or_else(|e| panic!("{e}"))),
            name: format!("key {n}"),
            description: None,
            expires_at: None,
            scopes: None,
            key_id: KeyId::from_u128(u128::from(n)),
            secret_hash: s.hash(),
            masked: s.masked(),
            meta: None,
            credits: credits.map(|remaining| Credits {
                remaining,
                refill: None,
            }),
            limits: Vec::new(),
        })
    }

    fn subscribe(id: u128) -> Command {
        Command::SubscribeWebhook(SubscribeWebhook {
            principal: p(),
            webhook_id: WebhookId::from_u128(id),
            url: "https://hooks.example.com/x".into(),
            event_types: vec!["key.revoked".into()],
            description: None,
        })
    }

    fn delete(id: u128) -> Command {
        Command::DeleteWebhook(DeleteWebhook {
            principal: p(),
            webhook_id: WebhookId::from_u128(id),
        })
    }

    fn rename(n: u8, name: &str) -> Command {
        let mut u = UpdateKey::new(p(), KeyId::from_u128(u128::from(n)));
        u.name = Some(name.into());
        Command::UpdateKey(u)
    }

    fn reserve(n: u8, want: u64) -> Command {
        Command::ReserveCredits {
            tenant: tenant(),
            key_id: KeyId::from_u128(u128::from(n)),
            epoch: 1,
            want,
        }
    }

    fn recover(epoch: u64, size: u64) -> Command {
        Command::RecordRecovery {
            principal: p(),
            recovery: LogRecovered {
                epoch,
                old_origin: "keyledger/acme".into(),
                signed_size: size + 5,
                signed_root: [0; 32],
                recovered_size: size,
                agreed_size: 0,
                reason: "lost the disk".into(),
            },
        }
    }

    /// Decides `commands` one by one against a ledger, applying each; the
    /// answers, and the ledger after.
    fn one_by_one(
        ledger: &mut Ledger,
        commands: &[Command],
        now: Timestamp,
    ) -> Vec<Result<Vec<Event>, crate::CommandError>> {
        let mut out = Vec::new();
        for c in commands {
            let d = decide(&*ledger, c, now);
            for e in d.iter().flatten() {
                let seq = ledger.tenant(&e.tenant).map_or(0, |t| t.version) + 1;
                ledger.apply(seq, e).unwrap_or_else(|e| panic!("{e}"));
            }
            out.push(d);
        }
        out
    }

    /// Decides `commands` in one batch through an overlay over `committed`:
    /// the overlay, the events with their sequence numbers, the answers.
    #[allow(clippy::type_complexity)]
    fn through_overlay<'a>(
        committed: &'a Ledger,
        commands: &[Command],
        now: Timestamp,
    ) -> (
        Overlay<'a>,
        Vec<(u64, Event)>,
        Vec<Result<Vec<Event>, crate::CommandError>>,
    ) {
        let mut overlay = Overlay::new(committed);
        let mut events = Vec::new();
        let mut answers = Vec::new();
        for c in commands {
            let d = decide(&overlay, c, now);
            for e in d.iter().flatten() {
                let seq = overlay.tenant_view(&e.tenant).version() + 1;
                overlay.apply(seq, e).unwrap_or_else(|e| panic!("{e}"));
                events.push((seq, e.clone()));
            }
            answers.push(d);
        }
        (overlay, events, answers)
    }

    /// Webhooks, updates, credits and recoveries (which the invariants
    /// proptest does not generate) decided in one batch through an overlay
    /// answer as one by one, and the committed ledger is untouched until
    /// the batch is applied.
    #[test]
    fn a_batch_sees_webhooks_updates_credits_and_recoveries() {
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let mut committed = Ledger::new();
        one_by_one(
            &mut committed,
            &[create(1, Some(10)), subscribe(1), subscribe(2)],
            now,
        );
        let batch = [
            subscribe(3),
            subscribe(3),
            delete(1),
            delete(1),
            delete(3),
            subscribe(3),
            rename(1, "first"),
            rename(1, "first"),
            rename(1, "second"),
            reserve(1, 7),
            reserve(1, 7),
            reserve(1, 7),
            create(2, None),
            rename(2, "two"),
            reserve(2, 1),
            recover(1, 3),
            recover(2, 12),
            recover(3, 13),
        ];
        let mut expected_ledger = committed.clone();
        let expected = one_by_one(&mut expected_ledger, &batch, now);
        let before = committed.clone();
        let (overlay, events, answers) = through_overlay(&committed, &batch, now);
        assert_eq!(answers, expected);
        let kinds: Vec<bool> = answers.iter().map(Result::is_ok).collect();
        assert_eq!(
            kinds,
            [
                true, false, true, false, true, false, true, false, true, true, true, false, true,
                true, false, false, true, true
            ]
        );
        let view = overlay.tenant_view(&tenant());
        let after = expected_ledger
            .tenant(&tenant())
            .unwrap_or_else(|| panic!("acme"));
        assert_eq!(view.webhooks(), &after.webhooks);
        assert_eq!(view.epoch(), 3);
        assert_eq!(
            view.key(KeyId::from_u128(1)),
            after.keys.get(&KeyId::from_u128(1))
        );
        drop(overlay);
        assert_eq!(committed, before, "deciding changed the committed state");
        for (seq, e) in &events {
            committed.apply(*seq, e).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(committed, expected_ledger);
    }

    fn used(n: u8, valid: u64, at: Timestamp) -> Command {
        Command::RecordUsage {
            tenant: tenant(),
            usage: crate::event::KeyUsed {
                key_id: KeyId::from_u128(u128::from(n)),
                window_start: at,
                window_end: at,
                last_valid_at: Some(at),
                counts: crate::event::UseCounts {
                    valid,
                    ..Default::default()
                },
            },
        }
    }

    /// Uses of committed keys move the tenant's counters without copying
    /// the keys into the overlay; uses of a key the batch holds (created
    /// or changed in it) are folded into it. Applied, the batch gives the
    /// ledger one by one gives.
    #[test]
    fn a_use_does_not_copy_its_key() {
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let mut committed = Ledger::new();
        one_by_one(&mut committed, &[create(1, None), create(2, None)], now);
        let batch = [
            used(1, 3, now),
            used(2, 1, now),
            used(1, 2, now),
            create(3, None),
            used(3, 4, now),
            rename(2, "two"),
            used(2, 5, now),
            used(9, 1, now),
        ];
        let mut expected_ledger = committed.clone();
        let expected = one_by_one(&mut expected_ledger, &batch, now);
        let (overlay, events, answers) = through_overlay(&committed, &batch, now);
        assert_eq!(answers, expected);
        assert!(answers[7].is_err(), "an unknown key's use is refused");
        let delta = &overlay.tenants[&tenant()];
        let copied: Vec<KeyId> = delta.state.keys.keys().copied().collect();
        assert_eq!(copied, [KeyId::from_u128(2), KeyId::from_u128(3)]);
        let view = overlay.tenant_view(&tenant());
        assert_eq!(view.version(), 9);
        // Key 1, only used: its committed counts; key 3, created in the
        // batch, and key 2, renamed in it: theirs, with the uses after.
        let uses = |n: u128| view.key(KeyId::from_u128(n)).map(|k| k.uses.valid);
        assert_eq!((uses(1), uses(2), uses(3)), (Some(0), Some(5), Some(4)));
        drop(overlay);
        for (seq, e) in &events {
            committed.apply(*seq, e).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(committed, expected_ledger);
    }

    /// A use of a key the tenant does not have does not fold, and leaves
    /// the overlay as it was.
    #[test]
    fn a_use_of_an_unknown_key_does_not_fold() {
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let mut committed = Ledger::new();
        one_by_one(&mut committed, &[create(1, None)], now);
        let mut overlay = Overlay::new(&committed);
        let Ok(events) = decide(&overlay, &used(1, 1, now), now) else {
            panic!("a use")
        };
        let mut unknown = events[0].clone();
        if let EventKind::KeyUsed(u) = &mut unknown.kind {
            u.key_id = KeyId::from_u128(9);
        }
        let err = overlay.apply(2, &unknown);
        assert!(
            matches!(err, Err(ApplyError::Inconsistent { .. })),
            "{err:?}"
        );
        assert_eq!(overlay.tenant_view(&tenant()).version(), 1);
        overlay
            .apply(2, &events[0])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(overlay.tenant_view(&tenant()).version(), 2);
    }

    /// An event the overlay cannot fold leaves it as it was, as
    /// `Ledger::apply` does.
    #[test]
    fn an_event_that_does_not_fold_changes_nothing() {
        let now = Timestamp::from_micros(1_764_000_000_000_000);
        let mut committed = Ledger::new();
        one_by_one(&mut committed, &[create(1, None)], now);
        let mut overlay = Overlay::new(&committed);
        let Ok(created) = decide(&overlay, &create(2, None), now) else {
            panic!("create")
        };
        // Out of sequence.
        assert!(overlay.apply(5, &created[0]).is_err());
        // A key created twice: its id is committed (no decision makes this).
        let mut twice = created[0].clone();
        if let EventKind::KeyCreated(k) = &mut twice.kind {
            k.key_id = KeyId::from_u128(1);
        }
        assert!(overlay.apply(2, &twice).is_err());
        let view = overlay.tenant_view(&tenant());
        assert_eq!((view.version(), view.key_count()), (1, 1));
        assert!(!overlay.key_exists(KeyId::from_u128(2)));
        // The good event still folds.
        overlay
            .apply(2, &created[0])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(overlay.key_exists(KeyId::from_u128(2)));
        assert_eq!(overlay.tenant_view(&tenant()).key_count(), 2);
    }
}
