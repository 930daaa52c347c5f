//! A key's own events: which keys an event touches ([`touched_keys`], what
//! the store's per-key index lists an event under), and keys' states folded
//! from their own events alone ([`KeyFold`]), without the rest of the
//! tenant's trail: what a key's history and a point-in-time state are
//! answered from.
//!
//! The fold is the ledger's own ([`crate::state`]), run on a tenant state
//! that holds only the keys asked for, so a key folded from its events is
//! the key the whole tenant's replay holds (the `invariants` proptest checks
//! it at every sequence number of random logs).
//!
//! A key's `KeyUsed` events need not be read to fold it: a use only adds to
//! the key's counts and moves its last valid use forward, and no other
//! event reads either, so the fold of a key's other events plus its uses
//! summed ([`UseTotals`], [`KeyFold::add_uses`]) is the fold of all of
//! them. The store keeps those sums per key as of each of its uses, so a
//! point-in-time page does not grow with the keys' use counts.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Event, EventKind, KeyUsed, UseCounts};
use crate::ids::{KeyId, TenantId};
use crate::shards::ShardedMap;
use crate::state::{ApplyError, KeyRecord, LedgerIndexes, TenantState, fold};
use crate::time::Timestamp;

/// A key's `KeyUsed` events summed: what the fold makes of them (the
/// counts added, saturating, and the latest valid use), without the
/// events. Adding is associative and commutative, so sums of runs of uses
/// add up to the sum of all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UseTotals {
    /// Every use counted, by outcome (as [`KeyRecord::uses`]).
    pub counts: UseCounts,
    /// The latest valid use (as [`KeyRecord::last_used_at`]).
    pub last_valid_at: Option<Timestamp>,
}

impl UseTotals {
    /// Adds one `KeyUsed`.
    pub fn add_used(&mut self, used: &KeyUsed) {
        self.add(&UseTotals {
            counts: used.counts,
            last_valid_at: used.last_valid_at,
        });
    }

    /// Adds another sum.
    pub fn add(&mut self, other: &UseTotals) {
        self.counts.add(&other.counts);
        self.last_valid_at = self.last_valid_at.max(other.last_valid_at);
    }
}

/// The `KeyUsed` an event is, if it is one: the one kind a fold can take
/// summed ([`UseTotals`]) instead of event by event.
pub fn as_use(event: &Event) -> Option<&KeyUsed> {
    match &event.kind {
        EventKind::KeyUsed(u) => Some(u),
        _ => None,
    }
}

/// Every key an event names, the one it is about first ([`Event::key_id`]),
/// each once: a `KeyCreated` made by a rotation also names the key it
/// replaces (whose `rotated_to` it sets), a `KeyRotated` also names the new
/// key. A `UserRemoved` names none: its cascade is the `KeyRevoked` events
/// after it, each naming its key.
pub fn touched_keys(event: &Event) -> impl Iterator<Item = KeyId> {
    let first = event.key_id();
    let second = match &event.kind {
        EventKind::KeyCreated(e) => e.rotated_from,
        EventKind::KeyRotated(e) => Some(e.new_key_id),
        _ => None,
    }
    .filter(|k| Some(*k) != first);
    first.into_iter().chain(second)
}

/// Whether the event changes the state of a key in `keys`: an event about
/// one of them, or the creation of a successor of one of them. (A
/// `KeyRotated` names its new key but changes only the old one.)
fn changes_any(event: &Event, keys: &BTreeSet<KeyId>) -> bool {
    event.key_id().is_some_and(|k| keys.contains(&k))
        || matches!(&event.kind, EventKind::KeyCreated(e)
            if e.rotated_from.is_some_and(|k| keys.contains(&k)))
}

/// Some keys of one tenant, folded from their own events: feed it, in
/// sequence order, every event the per-key index lists under any of the
/// keys (duplicates and events of other keys are skipped), then
/// [`KeyFold::finish`].
#[derive(Debug)]
pub struct KeyFold {
    keys: BTreeSet<KeyId>,
    tenant: Option<TenantId>,
    last_seq: u64,
    state: TenantState,
    by_hash: ShardedMap<crate::secret::SecretHash, KeyId>,
    key_tenants: ShardedMap<KeyId, TenantId>,
}

impl KeyFold {
    /// A fold of `keys`, before any event.
    pub fn new(keys: impl IntoIterator<Item = KeyId>) -> Self {
        KeyFold {
            keys: keys.into_iter().collect(),
            tenant: None,
            last_seq: 0,
            state: TenantState::default(),
            by_hash: ShardedMap::default(),
            key_tenants: ShardedMap::default(),
        }
    }

    /// Folds the tenant's event number `seq`. Events come in increasing
    /// sequence order, all of one tenant; an event seen already (listed
    /// under two of the keys) is skipped, an earlier one is an error.
    pub fn apply(&mut self, seq: u64, event: &Event) -> Result<(), ApplyError> {
        let inconsistent = |message: String| ApplyError::Inconsistent {
            tenant: event.tenant.clone(),
            seq,
            message,
        };
        match &self.tenant {
            Some(t) if *t != event.tenant => {
                return Err(inconsistent(format!(
                    "an event of tenant {} among the keys of tenant {t}",
                    event.tenant
                )));
            }
            Some(_) => {}
            None => self.tenant = Some(event.tenant.clone()),
        }
        if seq == self.last_seq && seq != 0 {
            return Ok(());
        }
        if seq < self.last_seq || seq == 0 {
            return Err(inconsistent(format!(
                "event {seq} comes after event {}",
                self.last_seq
            )));
        }
        if changes_any(event, &self.keys) {
            let mut indexes = LedgerIndexes {
                by_hash: &mut self.by_hash,
                key_tenants: &mut self.key_tenants,
            };
            fold(&mut self.state, &mut indexes, seq, event)?;
        }
        self.last_seq = seq;
        Ok(())
    }

    /// Adds `key`'s uses summed up to the point folded, in place of its
    /// `KeyUsed` events: call it after [`KeyFold::apply`] has had every
    /// other event (uses change nothing any other event reads, so where
    /// they fall among them does not matter). A key not asked for is
    /// ignored; uses of a key the events did not create are an error, as
    /// the replay's first such use would be (named as of `tenant`).
    pub fn add_uses(
        &mut self,
        tenant: &TenantId,
        key: KeyId,
        totals: &UseTotals,
    ) -> Result<(), ApplyError> {
        if !self.keys.contains(&key) || *totals == UseTotals::default() {
            return Ok(());
        }
        match self.state.keys.get_mut(&key) {
            Some(record) => {
                record.uses.add(&totals.counts);
                if totals.last_valid_at > record.last_used_at {
                    record.last_used_at = totals.last_valid_at;
                }
                Ok(())
            }
            None => Err(ApplyError::Inconsistent {
                tenant: tenant.clone(),
                seq: self.last_seq,
                message: format!("{key} is used but unknown"),
            }),
        }
    }

    /// The keys asked for that exist after the events folded, by id.
    pub fn finish(mut self) -> BTreeMap<KeyId, KeyRecord> {
        let keys = self.keys;
        self.state.keys.retain(|id, _| keys.contains(id));
        self.state.keys
    }
}

/// One key folded from its own events ([`KeyFold`]): `None` when they do
/// not create it.
pub fn fold_key<'e>(
    key: KeyId,
    events: impl IntoIterator<Item = (u64, &'e Event)>,
) -> Result<Option<KeyRecord>, ApplyError> {
    let mut f = KeyFold::new([key]);
    for (seq, event) in events {
        f.apply(seq, event)?;
    }
    Ok(f.finish().remove(&key))
}
