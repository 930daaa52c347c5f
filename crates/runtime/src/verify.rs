//! The verification path: checksum → SHA-256 → concurrent map → status,
//! expiry and scope against the clock → one atomic increment. No disk, no
//! global lock, no allocation for a known key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use keyledger_core::{KeyId, Outcome, Scope, ScopeSet, TenantId, Timestamp, UseCounts, UserId};

use crate::policy::{Allowance, Enforcement, PolicyAnswer};

/// What a verification found. Serialized by its wire name, as `as_str`
/// spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VerifyOutcome {
    /// The key works, for the scope asked.
    Valid,
    /// Well formed, but no key has this secret.
    NotFound,
    /// Not shaped like a key, or its checksum fails: rejected without a lookup.
    Malformed,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Lacks the scope asked for.
    InsufficientScope,
    /// Over one of the key's rate limits (the answer says when to retry).
    RateLimited,
    /// The key has no credits left.
    UsageExceeded,
}

impl VerifyOutcome {
    /// Every outcome.
    pub const ALL: [VerifyOutcome; 8] = [
        VerifyOutcome::Valid,
        VerifyOutcome::NotFound,
        VerifyOutcome::Malformed,
        VerifyOutcome::Revoked,
        VerifyOutcome::Expired,
        VerifyOutcome::InsufficientScope,
        VerifyOutcome::RateLimited,
        VerifyOutcome::UsageExceeded,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            VerifyOutcome::Valid => "valid",
            VerifyOutcome::NotFound => "not_found",
            VerifyOutcome::Malformed => "malformed",
            VerifyOutcome::Revoked => "revoked",
            VerifyOutcome::Expired => "expired",
            VerifyOutcome::InsufficientScope => "insufficient_scope",
            VerifyOutcome::RateLimited => "rate_limited",
            VerifyOutcome::UsageExceeded => "usage_exceeded",
        }
    }

    /// The counted outcome, for a known key.
    pub const fn counted(self) -> Option<Outcome> {
        match self {
            VerifyOutcome::Valid => Some(Outcome::Valid),
            VerifyOutcome::Revoked => Some(Outcome::Revoked),
            VerifyOutcome::Expired => Some(Outcome::Expired),
            VerifyOutcome::InsufficientScope => Some(Outcome::InsufficientScope),
            VerifyOutcome::RateLimited => Some(Outcome::RateLimited),
            VerifyOutcome::UsageExceeded => Some(Outcome::UsageExceeded),
            VerifyOutcome::NotFound | VerifyOutcome::Malformed => None,
        }
    }

    /// Slot in per-outcome metrics arrays.
    pub const fn index(self) -> usize {
        match self {
            VerifyOutcome::Valid => 0,
            VerifyOutcome::NotFound => 1,
            VerifyOutcome::Malformed => 2,
            VerifyOutcome::Revoked => 3,
            VerifyOutcome::Expired => 4,
            VerifyOutcome::InsufficientScope => 5,
            VerifyOutcome::RateLimited => 6,
            VerifyOutcome::UsageExceeded => 7,
        }
    }
}

/// A key as the verification path sees it. Shared between the map and the
/// usage flusher; changed only by the writer after a commit (status) and by
/// verifications (counters).
#[derive(Debug)]
pub struct KeyEntry {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The key.
    pub key_id: KeyId,
    /// Its owner.
    pub owner: UserId,
    /// Its name (shared with the key's record in the ledger).
    pub name: Arc<str>,
    /// Its scopes.
    pub scopes: ScopeSet,
    expires_at: AtomicI64,
    revoked: AtomicBool,
    counts: [AtomicU64; Outcome::ALL.len()],
    last_valid: AtomicI64,
    first_use: AtomicI64,
    pub(crate) dirty: AtomicBool,
    /// Rate limits and credits, for a key that has them (`policy.rs`).
    policy: Option<Box<Enforcement>>,
}

const NO_EXPIRY: i64 = i64::MAX;
const NEVER: i64 = i64::MIN;

impl KeyEntry {
    pub(crate) fn new(
        tenant: TenantId,
        key_id: KeyId,
        owner: UserId,
        name: Arc<str>,
        scopes: ScopeSet,
        expires_at: Option<Timestamp>,
        revoked: bool,
    ) -> Self {
        KeyEntry {
            tenant,
            key_id,
            owner,
            name,
            scopes,
            expires_at: AtomicI64::new(expires_at.map_or(NO_EXPIRY, Timestamp::as_micros)),
            revoked: AtomicBool::new(revoked),
            counts: Default::default(),
            last_valid: AtomicI64::new(NEVER),
            first_use: AtomicI64::new(NEVER),
            dirty: AtomicBool::new(false),
            policy: None,
        }
    }

    /// The entry with rate limits and credits to enforce (none when the
    /// policy is empty: a plain key stays plain).
    pub(crate) fn with_policy(mut self, policy: Enforcement) -> Self {
        self.policy = (!policy.is_empty()).then(|| Box::new(policy));
        self
    }

    /// The rate limits and credits enforced, if the key has any.
    pub fn policy(&self) -> Option<&Enforcement> {
        self.policy.as_deref()
    }

    /// The key's credits on this node, if it has credits.
    pub fn credits(&self) -> Option<&Allowance> {
        self.policy()?.credits.as_deref()
    }

    /// The key's expiry, if any.
    pub fn expires_at(&self) -> Option<Timestamp> {
        let e = self.expires_at.load(Ordering::Acquire);
        (e != NO_EXPIRY).then(|| Timestamp::from_micros(e))
    }

    /// Whether the key is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub(crate) fn set_revoked(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub(crate) fn set_expires_at(&self, t: Option<Timestamp>) {
        self.expires_at
            .store(t.map_or(NO_EXPIRY, Timestamp::as_micros), Ordering::Release);
    }

    /// The outcome of presenting this key for `scope` at `now`.
    pub fn judge(&self, scope: Option<Scope>, now: Timestamp) -> VerifyOutcome {
        if self.is_revoked() {
            VerifyOutcome::Revoked
        } else if self.expires_at.load(Ordering::Acquire) <= now.as_micros() {
            VerifyOutcome::Expired
        } else if scope.is_some_and(|s| !self.scopes.contains(s)) {
            VerifyOutcome::InsufficientScope
        } else {
            VerifyOutcome::Valid
        }
    }

    /// Counts one use that spent `spent` credits. Returns true when the key
    /// was clean and the caller must put it on the dirty list (once per
    /// window).
    pub(crate) fn count(&self, outcome: Outcome, now: Timestamp, spent: u64) -> bool {
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if spent > 0
            && let Some(credits) = self.credits()
        {
            credits.note_spent(spent);
        }
        // The coarse clock moves once a millisecond: nearly every use sees
        // `last_valid` already there, and a load is cheaper than an atomic
        // read-modify-write. `fetch_max` still settles racing uses.
        if outcome == Outcome::Valid && self.last_valid.load(Ordering::Relaxed) < now.as_micros() {
            self.last_valid
                .fetch_max(now.as_micros(), Ordering::Relaxed);
        }
        let first = !self.dirty.swap(true, Ordering::AcqRel);
        if first {
            self.first_use.store(now.as_micros(), Ordering::Release);
        }
        first
    }

    /// Takes the counts gathered since the last take. The dirty flag is
    /// cleared first, so a use racing with the take is either in these
    /// counts or marks the key dirty again: never lost.
    /// The first use of the window being gathered, if known.
    pub(crate) fn first_use(&self) -> Option<Timestamp> {
        let t = self.first_use.load(Ordering::Acquire);
        (t != NEVER).then(|| Timestamp::from_micros(t))
    }

    pub(crate) fn take(&self) -> (UseCounts, Option<Timestamp>) {
        self.dirty.store(false, Ordering::Release);
        let mut c = [0u64; Outcome::ALL.len()];
        for (slot, counter) in c.iter_mut().zip(&self.counts) {
            *slot = counter.swap(0, Ordering::AcqRel);
        }
        let last = self.last_valid.swap(NEVER, Ordering::AcqRel);
        let mut counts = UseCounts::from_array(c);
        counts.credits_spent = self.credits().map_or(0, |c| c.take_spent());
        (
            counts,
            (last != NEVER).then(|| Timestamp::from_micros(last)),
        )
    }

    /// Puts counts back after a failed write, so they are written later.
    pub(crate) fn give_back(&self, counts: &UseCounts, last_valid: Option<Timestamp>) {
        let c = counts.to_array();
        for (n, counter) in c.iter().zip(&self.counts) {
            counter.fetch_add(*n, Ordering::Relaxed);
        }
        if let Some(credits) = self.credits() {
            credits.note_spent(counts.credits_spent);
        }
        if let Some(t) = last_valid {
            self.last_valid.fetch_max(t.as_micros(), Ordering::Relaxed);
        }
    }
}

/// Hashes a [`keyledger_core::SecretHash`] for the verification map by
/// taking 8 of its bytes: it is already a SHA-256, uniform and not chosen
/// by a client (a client chooses the secret, not its digest), so a second
/// keyed hash (SipHash) would only cost time on every verification.
#[derive(Clone, Copy, Debug, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of the 32-byte array carries nothing.
    }
}

/// The verification map's hasher.
pub type DigestHash = std::hash::BuildHasherDefault<DigestHasher>;

/// The result of a verification.
#[derive(Clone, Debug)]
pub struct Verification {
    /// What was found.
    pub outcome: VerifyOutcome,
    /// The key, when one has this secret.
    pub key: Option<Arc<KeyEntry>>,
    /// Credits and rate limits, for a valid key that has them.
    pub policy: Option<PolicyAnswer>,
}

impl Verification {
    pub(crate) fn of(
        outcome: VerifyOutcome,
        key: Option<&Arc<KeyEntry>>,
        policy: Option<&PolicyAnswer>,
    ) -> Self {
        Verification {
            outcome,
            key: key.cloned(),
            policy: policy.copied(),
        }
    }

    /// Whether the key works for the scope asked.
    pub fn is_valid(&self) -> bool {
        self.outcome == VerifyOutcome::Valid
    }
}

#[cfg(test)]
mod tests {
    /// Every key has an entry in the verification map: 160 bytes inline
    /// while a key id was a 16-byte-aligned `u128` (152 of fields, padded),
    /// 152 since (issue 13). With the `Arc`'s two counts that is 168 bytes
    /// asked of malloc, which glibc serves from a 176-byte chunk (192
    /// before). A field that grows it fails here, not at 10M keys.
    #[test]
    fn a_verification_entry_stays_compact() {
        assert!(
            std::mem::size_of::<super::KeyEntry>() <= 152,
            "KeyEntry is {} bytes",
            std::mem::size_of::<super::KeyEntry>()
        );
    }
}
