//! The events: the whole log. Plain Rust types; their stored form is a
//! separate, versioned schema in `keyledger-store`.

use std::fmt;

use crate::ids::{KeyId, TenantId, UserId};
use crate::policy::{Credits, Meta, RateLimit};
use crate::scope::ScopeSet;
use crate::secret::SecretHash;
use crate::time::Timestamp;

/// One fact, as appended to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The tenant whose chain the event belongs to.
    pub tenant: TenantId,
    /// When it was decided (never earlier than the tenant's previous event).
    pub at: Timestamp,
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The key the event is about, if any.
    pub fn key_id(&self) -> Option<KeyId> {
        match &self.kind {
            EventKind::KeyCreated(e) => Some(e.key_id),
            EventKind::KeyUsed(e) => Some(e.key_id),
            EventKind::KeyRevoked(e) => Some(e.key_id),
            EventKind::KeyRotated(e) => Some(e.key_id),
            EventKind::KeyLeaked(e) => Some(e.key_id),
            EventKind::KeyUpdated(e) => Some(e.key_id),
            EventKind::CreditsReserved(e) => Some(e.key_id),
            EventKind::CreditsReleased(e) => Some(e.key_id),
            EventKind::CreditsRefilled(e) => Some(e.key_id),
            EventKind::UserRemoved(_)
            | EventKind::AuditRead(_)
            | EventKind::LogRecovered(_)
            | EventKind::WebhookSubscribed(_)
            | EventKind::WebhookDeleted(_) => None,
        }
    }

    /// The type's name, as shown in the audit trail (`KeyCreated`, …).
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

/// Who did something.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A user of the product, acting directly (through the CLI or the product's console).
    User {
        /// The user.
        id: UserId,
    },
    /// An API key, acting as its owner. The name is recorded so the trail
    /// reads "API Key: CI/CD Pipeline" even after the key is gone.
    ApiKey {
        /// The key.
        key_id: KeyId,
        /// The key's name when it acted.
        name: String,
        /// The key's owner.
        owner: UserId,
    },
    /// The deployment's operator (admin routes, the offline CLI).
    Operator,
    /// keyledger itself: cascades and usage counting.
    System,
}

impl Actor {
    /// A short machine form: `user:<id>`, `key:<id>`, `operator`, `system`.
    /// The audit trail's `actor` filter matches it, the user id, or the key id.
    pub fn reference(&self) -> String {
        match self {
            Actor::User { id } => format!("user:{id}"),
            Actor::ApiKey { key_id, .. } => format!("key:{key_id}"),
            Actor::Operator => "operator".into(),
            Actor::System => "system".into(),
        }
    }

    /// Whether the audit filter `needle` names this actor.
    pub fn matches(&self, needle: &str) -> bool {
        match self {
            Actor::User { id } => needle == id.as_str() || needle == self.reference(),
            Actor::ApiKey { key_id, owner, .. } => {
                needle == key_id.to_string()
                    || needle == owner.as_str()
                    || needle == self.reference()
            }
            Actor::Operator | Actor::System => needle == self.reference(),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { id } => write!(f, "User: {id}"),
            Actor::ApiKey { name, .. } => write!(f, "API Key: {name}"),
            Actor::Operator => f.write_str("Operator"),
            Actor::System => f.write_str("System"),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A key exists.
    KeyCreated(KeyCreated),
    /// A key was presented: exact counts by outcome over one window.
    KeyUsed(KeyUsed),
    /// A key stopped working, for good.
    KeyRevoked(KeyRevoked),
    /// A key was replaced by a new one and expires at the end of a grace period.
    KeyRotated(KeyRotated),
    /// A user left the tenant; their active keys are revoked in the same append.
    UserRemoved(UserRemoved),
    /// Someone read or exported the tenant's audit trail (PCI DSS 10.2.1.3).
    AuditRead(AuditRead),
    /// The log no longer held what a signed checkpoint said, and the
    /// operator went on without a backup: a new checkpoint epoch starts.
    LogRecovered(LogRecovered),
    /// A key's secret was reported found where it does not belong; a
    /// `KeyRevoked` (reason `compromised`) follows in the same append.
    KeyLeaked(KeyLeaked),
    /// A tenant subscribed an endpoint to notices (no secret in it).
    WebhookSubscribed(crate::webhook::WebhookSubscribed),
    /// A webhook subscription was deleted.
    WebhookDeleted(crate::webhook::WebhookDeleted),
    /// A key's fields were changed: each change with its value before and after.
    KeyUpdated(KeyUpdated),
    /// A node set aside a block of a key's credits, to spend in memory.
    CreditsReserved(CreditsReserved),
    /// A node handed back credits it had set aside but not spent.
    CreditsReleased(CreditsReleased),
    /// A key's credits were set back to its refill amount.
    CreditsRefilled(CreditsRefilled),
}

impl EventKind {
    /// The type, in the trail's filter's terms.
    pub fn event_type(&self) -> crate::trail::EventType {
        use crate::trail::EventType as T;
        match self {
            EventKind::KeyCreated(_) => T::KeyCreated,
            EventKind::KeyUsed(_) => T::KeyUsed,
            EventKind::KeyRevoked(_) => T::KeyRevoked,
            EventKind::KeyRotated(_) => T::KeyRotated,
            EventKind::UserRemoved(_) => T::UserRemoved,
            EventKind::AuditRead(_) => T::AuditRead,
            EventKind::LogRecovered(_) => T::LogRecovered,
            EventKind::KeyLeaked(_) => T::KeyLeaked,
            EventKind::WebhookSubscribed(_) => T::WebhookSubscribed,
            EventKind::WebhookDeleted(_) => T::WebhookDeleted,
            EventKind::KeyUpdated(_) => T::KeyUpdated,
            EventKind::CreditsReserved(_) => T::CreditsReserved,
            EventKind::CreditsReleased(_) => T::CreditsReleased,
            EventKind::CreditsRefilled(_) => T::CreditsRefilled,
        }
    }

    /// The type's name ([`crate::trail::EventType::as_str`]).
    pub fn type_name(&self) -> &'static str {
        self.event_type().as_str()
    }
}

/// A key exists. Carries the SHA-256 of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCreated {
    /// The new key.
    pub key_id: KeyId,
    /// The user the key acts as.
    pub owner: UserId,
    /// Its name (trimmed, checked).
    pub name: String,
    /// An optional description.
    pub description: Option<String>,
    /// When it stops working on its own, if ever.
    pub expires_at: Option<Timestamp>,
    /// What it may do.
    pub scopes: ScopeSet,
    /// SHA-256 of the whole secret.
    pub secret_hash: SecretHash,
    /// First 8 characters, `…`, last 4: what lists show.
    pub masked: String,
    /// The key this one replaces, when made by a rotation.
    pub rotated_from: Option<KeyId>,
    /// Free-form metadata (a small JSON object), if any.
    pub meta: Option<Meta>,
    /// Its credits, if it has any (`None`: unlimited uses).
    pub credits: Option<Credits>,
    /// Its named rate limits (empty: none).
    pub limits: Vec<RateLimit>,
}

/// A key's fields were changed. Self-describing: each change carries the
/// value before and after, so a reviewer reads what changed without
/// replaying; the fold refuses a log whose `before` is not the key's state.
/// At most one change per field, in [`KeyChange::field`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUpdated {
    /// The key.
    pub key_id: KeyId,
    /// What changed (at least one field).
    pub changes: Vec<KeyChange>,
}

/// One field of a key, before and after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// The name.
    Name {
        /// Before.
        before: String,
        /// After.
        after: String,
    },
    /// The description (`None`: none).
    Description {
        /// Before.
        before: Option<String>,
        /// After.
        after: Option<String>,
    },
    /// The metadata (`None`: none).
    Meta {
        /// Before.
        before: Option<Meta>,
        /// After.
        after: Option<Meta>,
    },
    /// The expiry (`None`: never).
    ExpiresAt {
        /// Before.
        before: Option<Timestamp>,
        /// After.
        after: Option<Timestamp>,
    },
    /// The scopes.
    Scopes {
        /// Before.
        before: ScopeSet,
        /// After.
        after: ScopeSet,
    },
    /// The credits: `remaining` is the log's (what no node had reserved)
    /// before, and what the key starts the new credit epoch with after
    /// (`None`: unlimited). A change of credits starts a new epoch:
    /// reservations made before it lapse.
    Credits {
        /// Before.
        before: Option<Credits>,
        /// After.
        after: Option<Credits>,
    },
    /// The rate limits, replaced whole.
    Limits {
        /// Before.
        before: Vec<RateLimit>,
        /// After.
        after: Vec<RateLimit>,
    },
}

impl KeyChange {
    /// The field's wire name (`name`, `description`, `meta`, `expires_at`,
    /// `scopes`, `credits`, `limits`); changes in an event come in this order.
    pub const fn field(&self) -> &'static str {
        match self {
            KeyChange::Name { .. } => "name",
            KeyChange::Description { .. } => "description",
            KeyChange::Meta { .. } => "meta",
            KeyChange::ExpiresAt { .. } => "expires_at",
            KeyChange::Scopes { .. } => "scopes",
            KeyChange::Credits { .. } => "credits",
            KeyChange::Limits { .. } => "limits",
        }
    }

    /// The field's place in [`KeyChange::field`] order.
    pub const fn order(&self) -> u8 {
        match self {
            KeyChange::Name { .. } => 0,
            KeyChange::Description { .. } => 1,
            KeyChange::Meta { .. } => 2,
            KeyChange::ExpiresAt { .. } => 3,
            KeyChange::Scopes { .. } => 4,
            KeyChange::Credits { .. } => 5,
            KeyChange::Limits { .. } => 6,
        }
    }

    /// Whether `before` and `after` are the same (no decision records that).
    pub fn is_noop(&self) -> bool {
        match self {
            KeyChange::Name { before, after } => before == after,
            KeyChange::Description { before, after } => before == after,
            KeyChange::Meta { before, after } => before == after,
            KeyChange::ExpiresAt { before, after } => before == after,
            KeyChange::Scopes { before, after } => before == after,
            KeyChange::Credits { before, after } => before == after,
            KeyChange::Limits { before, after } => before == after,
        }
    }
}

/// A node reserved `amount` of a key's credits in credit epoch `epoch`
/// (the log's remaining drops by `amount`; the node spends them in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditsReserved {
    /// The key.
    pub key_id: KeyId,
    /// The credit epoch the reservation is drawn from.
    pub epoch: u64,
    /// How many (at least 1, at most the log's remaining).
    pub amount: u64,
}

/// A node handed back `amount` credits it had reserved in `epoch` and not
/// spent (a graceful shutdown). Folded only while `epoch` is the key's
/// current one: after a refill or a change the old reservation has lapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditsReleased {
    /// The key.
    pub key_id: KeyId,
    /// The credit epoch the credits were reserved in.
    pub epoch: u64,
    /// How many (at least 1).
    pub amount: u64,
}

/// A key's credits were refilled: `remaining` is its refill amount, and a
/// new credit epoch starts (reservations made before lapse). `due_at` is
/// the refill instant this stands for, which may be earlier than the
/// event's time if the server was down then; missed refills collapse to
/// one event for the latest due instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditsRefilled {
    /// The key.
    pub key_id: KeyId,
    /// The refill instant.
    pub due_at: Timestamp,
    /// The credits after the refill.
    pub remaining: u64,
}

/// A key was presented: exact counts per outcome for one key over one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsed {
    /// The key.
    pub key_id: KeyId,
    /// The window's first instant.
    pub window_start: Timestamp,
    /// The window's end (exclusive).
    pub window_end: Timestamp,
    /// The last valid use in the window, if any.
    pub last_valid_at: Option<Timestamp>,
    /// Uses by outcome.
    pub counts: UseCounts,
}

/// A key stops working, for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRevoked {
    /// The key.
    pub key_id: KeyId,
    /// Why.
    pub reason: RevokeReason,
    /// For a cascade: the `UserRemoved` it came from.
    pub cause: Option<Cause>,
}

/// A key was replaced by a rotation and keeps working until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotated {
    /// The old key.
    pub key_id: KeyId,
    /// The key that replaces it.
    pub new_key_id: KeyId,
    /// The end of the grace period: the old key's new expiry.
    pub expires_at: Timestamp,
}

/// A user left a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRemoved {
    /// The user.
    pub user_id: UserId,
}

/// The audit trail (or evidence about it) was read: who (the event's
/// actor) read what, how many times, which events, and when.
///
/// Reads by one actor of one kind are gathered over a short window and
/// recorded as one event with an exact count, so reading cannot grow the
/// log faster than one event per reader and kind per window; every read is
/// recorded before its data is handed out (see `docs/audit.md`, "Reads of
/// the trail"). A read recorded alone has `count` 1 and at most one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRead {
    /// What was read.
    pub what: AuditReadKind,
    /// How many reads this event records (at least 1).
    pub count: u64,
    /// The union of the tenant sequence numbers the reads covered: in
    /// order, disjoint and not touching, at most
    /// [`AUDIT_READ_RANGES_MAX`](crate::limits::AUDIT_READ_RANGES_MAX)
    /// (beyond it the closest neighbours are joined: the ranges then cover
    /// a few events more than were read, never fewer). Empty when every
    /// read covered no event (an empty page, an empty tenant's export).
    pub ranges: Vec<SeqRange>,
    /// The first read recorded here.
    pub window_start: Timestamp,
    /// The last read recorded here.
    pub window_end: Timestamp,
}

/// Tenant sequence numbers `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// The first (sequence numbers start at 1).
    pub from: u64,
    /// The last (`from <= to`).
    pub to: u64,
}

impl SeqRange {
    /// `from..=to`, if it is a range of sequence numbers (`1 <= from <= to`).
    pub const fn new(from: u64, to: u64) -> Option<Self> {
        if from >= 1 && from <= to {
            Some(SeqRange { from, to })
        } else {
            None
        }
    }

    /// How many sequence numbers it holds (saturating).
    pub const fn events(&self) -> u64 {
        (self.to - self.from).saturating_add(1)
    }
}

impl AuditRead {
    /// One read of `range` (`None`: a read that covered no event) at `at`.
    pub fn one(what: AuditReadKind, range: Option<SeqRange>, at: Timestamp) -> Self {
        AuditRead {
            what,
            count: 1,
            ranges: range.into_iter().collect(),
            window_start: at,
            window_end: at,
        }
    }

    /// Counts one more read, of `range` at `at`: the count grows by one,
    /// the range joins the union, the window widens to `at`.
    pub fn add(&mut self, range: Option<SeqRange>, at: Timestamp) {
        self.count = self.count.saturating_add(1);
        self.window_start = self.window_start.min(at);
        self.window_end = self.window_end.max(at);
        let Some(range) = range else { return };
        let at = self.ranges.partition_point(|r| r.from < range.from);
        self.ranges.insert(at, range);
        // Merge what overlaps or touches, in one pass (the ranges are in order).
        let mut merged: Vec<SeqRange> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.from <= last.to.saturating_add(1) => last.to = last.to.max(r.to),
                _ => merged.push(r),
            }
        }
        while merged.len() > crate::limits::AUDIT_READ_RANGES_MAX {
            // Join the two neighbours with the smallest gap between them.
            let i = (0..merged.len() - 1)
                .min_by_key(|&i| merged[i + 1].from - merged[i].to)
                .unwrap_or(0);
            merged[i].to = merged[i + 1].to;
            merged.remove(i + 1);
        }
        self.ranges = merged;
    }

    /// The lowest and the highest sequence number read (`(0, 0)` when the
    /// reads covered no event).
    pub fn span(&self) -> (u64, u64) {
        match (self.ranges.first(), self.ranges.last()) {
            (Some(first), Some(last)) => (first.from, last.to),
            _ => (0, 0),
        }
    }

    /// How many distinct events the ranges hold (saturating).
    pub fn events(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.events()))
    }

    /// Whether `ranges` are what [`AuditRead::add`] keeps: each
    /// `from <= to`, in order, disjoint and not touching.
    pub fn ranges_in_order(ranges: &[SeqRange]) -> bool {
        ranges.iter().all(|r| r.from <= r.to)
            && ranges
                .windows(2)
                .all(|w| w[0].to < w[1].from && w[1].from - w[0].to > 1)
    }
}

/// What kind of audit read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditReadKind {
    /// A page of the trail.
    List,
    /// A streamed export (JSON Lines or CSV).
    Export,
    /// An evidence bundle (events, checkpoint and proofs).
    Bundle,
    /// An inclusion proof of one event (checkpoints and consistency proofs
    /// hand out no event and are not recorded).
    Proof,
}

impl AuditReadKind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditReadKind::List => "list",
            AuditReadKind::Export => "export",
            AuditReadKind::Bundle => "bundle",
            AuditReadKind::Proof => "proof",
        }
    }
}

/// Why a key was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// Someone revoked it.
    Manual,
    /// Its owner was removed.
    UserRemoved,
    /// A rotation replaced it with no grace period.
    Rotated,
    /// It was exposed.
    Compromised,
}

impl RevokeReason {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Manual => "manual",
            RevokeReason::UserRemoved => "user_removed",
            RevokeReason::Rotated => "rotated",
            RevokeReason::Compromised => "compromised",
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Manual,
            Self::UserRemoved,
            Self::Rotated,
            Self::Compromised,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused a cascade revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The `UserRemoved` event at tenant sequence number `seq`, in the same append.
    UserRemoved {
        /// The removed user.
        user_id: UserId,
        /// The `UserRemoved` event's position in the tenant's chain.
        seq: u64,
    },
}

/// The outcome of one verification of a known key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Active, unexpired, in scope.
    Valid,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Missing the scope asked for.
    InsufficientScope,
    /// No credits left (or fewer than the verification's cost).
    UsageExceeded,
    /// Over one of its rate limits.
    RateLimited,
}

impl Outcome {
    /// Every counted outcome, in counter order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Valid,
        Outcome::Revoked,
        Outcome::Expired,
        Outcome::InsufficientScope,
        Outcome::UsageExceeded,
        Outcome::RateLimited,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::UsageExceeded => "usage_exceeded",
            Outcome::RateLimited => "rate_limited",
        }
    }

    /// The counter slot of this outcome.
    pub const fn index(self) -> usize {
        match self {
            Outcome::Valid => 0,
            Outcome::Revoked => 1,
            Outcome::Expired => 2,
            Outcome::InsufficientScope => 3,
            Outcome::UsageExceeded => 4,
            Outcome::RateLimited => 5,
        }
    }
}

/// Exact use counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UseCounts {
    /// Valid uses.
    pub valid: u64,
    /// Uses of the key after it was revoked.
    pub revoked: u64,
    /// Uses of the key after it expired.
    pub expired: u64,
    /// Uses for a scope the key lacks.
    pub insufficient_scope: u64,
    /// Uses refused because no credits were left.
    pub usage_exceeded: u64,
    /// Uses refused by a rate limit.
    pub rate_limited: u64,
    /// Credits spent: the sum of the costs of the valid uses (not an
    /// outcome; 0 for a key without credits).
    pub credits_spent: u64,
}

impl UseCounts {
    /// Counts from the six outcome counters, in [`Outcome::index`] order
    /// (no credits spent).
    pub const fn from_array(c: [u64; 6]) -> Self {
        UseCounts {
            valid: c[0],
            revoked: c[1],
            expired: c[2],
            insufficient_scope: c[3],
            usage_exceeded: c[4],
            rate_limited: c[5],
            credits_spent: 0,
        }
    }

    /// The six outcome counters, in [`Outcome::index`] order.
    pub const fn to_array(&self) -> [u64; 6] {
        let [valid, revoked, expired, scope, exceeded, limited, _] = self.to_fields();
        [valid, revoked, expired, scope, exceeded, limited]
    }

    /// The seven counts, credits spent last: the order the stores encode
    /// them in (`keyledger_store::counts`).
    pub const fn to_fields(&self) -> [u64; 7] {
        [
            self.valid,
            self.revoked,
            self.expired,
            self.insufficient_scope,
            self.usage_exceeded,
            self.rate_limited,
            self.credits_spent,
        ]
    }

    /// The counts [`UseCounts::to_fields`] gave.
    pub const fn from_fields(f: [u64; 7]) -> Self {
        UseCounts {
            valid: f[0],
            revoked: f[1],
            expired: f[2],
            insufficient_scope: f[3],
            usage_exceeded: f[4],
            rate_limited: f[5],
            credits_spent: f[6],
        }
    }

    /// Every use.
    pub const fn total(&self) -> u64 {
        self.valid + self.rejected()
    }

    /// Every use but the valid ones.
    pub const fn rejected(&self) -> u64 {
        self.revoked
            + self.expired
            + self.insufficient_scope
            + self.usage_exceeded
            + self.rate_limited
    }

    /// Whether nothing was counted.
    pub const fn is_zero(&self) -> bool {
        self.total() == 0 && self.credits_spent == 0
    }

    /// Adds another count in place (saturating: a count never wraps).
    pub fn add(&mut self, other: &UseCounts) {
        self.valid = self.valid.saturating_add(other.valid);
        self.revoked = self.revoked.saturating_add(other.revoked);
        self.expired = self.expired.saturating_add(other.expired);
        self.insufficient_scope = self
            .insufficient_scope
            .saturating_add(other.insufficient_scope);
        self.usage_exceeded = self.usage_exceeded.saturating_add(other.usage_exceeded);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.credits_spent = self.credits_spent.saturating_add(other.credits_spent);
    }

    /// One use with `outcome`.
    pub fn one(outcome: Outcome) -> Self {
        let mut c = [0; 6];
        c[outcome.index()] = 1;
        Self::from_array(c)
    }
}

/// A tenant's log was found not to hold what its newest signed checkpoint
/// said (events lost or changed: a restore from an old backup, damage),
/// and the operator chose to go on without a backup that covers it. The
/// first event of a new checkpoint epoch: checkpoints from here on are
/// signed under a new origin, never under the old one again, and this
/// event states, for every reviewer, what was lost and who decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecovered {
    /// The new epoch: 2 after the first recovery, and so on.
    pub epoch: u64,
    /// The origin the old epoch's checkpoints were signed under.
    pub old_origin: String,
    /// The size of the newest checkpoint signed under the old origin.
    pub signed_size: u64,
    /// Its root.
    pub signed_root: [u8; 32],
    /// The tenant's events the log held when it was recovered (this event
    /// is the next one).
    pub recovered_size: u64,
    /// How many of them the old epoch's checkpoints still vouch for (the
    /// largest stored checkpoint whose root the log still has).
    pub agreed_size: u64,
    /// Why, in the operator's words.
    pub reason: String,
}

/// A key's secret was reported found where it does not belong (a public
/// repository, a paste, a log). Decided only for a key active at that
/// instant, and always followed, in the same append, by its `KeyRevoked`
/// with reason `compromised` (`crates/core/src/leak.rs`). Carries what an
/// announcement needs: the key (the event's tenant and time beside it),
/// where it was found, and who reported it; never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLeaked {
    /// The key.
    pub key_id: KeyId,
    /// Where it was found, in the reporter's words (GitHub's `source`:
    /// `content`, `commit`, …), if said.
    pub source: Option<String>,
    /// The address where it was found, if given.
    pub url: Option<String>,
    /// Who reported it.
    pub reporter: LeakReporter,
}

/// Who reported a leaked key, as the key's tenant is told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeakReporter {
    /// The deployment's operator (the event's actor is the operator).
    Operator,
    /// A key of the same tenant (the event's actor is that key).
    Tenant,
    /// A key of another tenant: which one is not told (the actor is the system).
    OtherTenant,
    /// A secret-scanning partner, by the name the operator configured
    /// (the actor is the system).
    Partner(String),
}

impl LeakReporter {
    /// The wire form: `operator`, `tenant`, `other_tenant`, `partner:<name>`.
    pub fn as_text(&self) -> String {
        match self {
            LeakReporter::Operator => "operator".into(),
            LeakReporter::Tenant => "tenant".into(),
            LeakReporter::OtherTenant => "other_tenant".into(),
            LeakReporter::Partner(name) => format!("partner:{name}"),
        }
    }
}
