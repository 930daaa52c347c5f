//! Commands and the decision: `decide(state, command, now) -> events | error`.
//!
//! Every invariant of the ledger that can be checked before appending is
//! checked here, against the state folded from committed events:
//!
//! 1. a revoked key never becomes active again; revoking twice is a conflict;
//! 2. removing a user revokes each of their active keys, in the same append,
//!    one `KeyRevoked` (reason `user_removed`) per key;
//! 3. a removed user creates nothing; removing a user twice is a conflict;
//! 4. the secret is not an input: a command carries only its hash and mask;
//! 5. a leaked key's `KeyLeaked` is followed, in the same append, by its
//!    `KeyRevoked` (reason `compromised`); a key not active is left alone
//!    (`crate::leak`).

use crate::event::{
    Actor, AuditRead, Cause, CreditsRefilled, CreditsReleased, CreditsReserved, Event, EventKind,
    KeyChange, KeyCreated, KeyRevoked, KeyRotated, KeyUpdated, KeyUsed, LogRecovered, RevokeReason,
    UserRemoved,
};
use crate::ids::{KeyId, TenantId, UserId};
use crate::limits::{
    AUDIT_READ_RANGES_MAX, DESCRIPTION_CHARS_MAX, KEYS_PER_TENANT_MAX, NAME_CHARS_MAX,
    RECOVERY_REASON_CHARS_MAX, ROTATION_GRACE_SECONDS_MAX,
};
use crate::overlay::{StateView, TenantView};
use crate::policy::{Credits, Meta, PolicyError, RateLimit};
use crate::scope::{Scope, ScopeSet};
use crate::secret::SecretHash;
use crate::state::{KeyRecord, KeyStatus};
use crate::time::Timestamp;

/// Who asks, in which tenant, with which scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenant acted in.
    pub tenant: TenantId,
    /// Recorded on every event the command causes.
    pub actor: Actor,
    /// What the principal may do (and so may grant).
    pub scopes: ScopeSet,
}

impl Principal {
    /// The operator, acting in `tenant` with every scope.
    pub fn operator(tenant: TenantId) -> Self {
        Principal {
            tenant,
            actor: Actor::Operator,
            scopes: ScopeSet::ALL,
        }
    }

    /// A user acting directly, as the embedding product vouches for, with every scope.
    pub fn user(tenant: TenantId, id: UserId) -> Self {
        Principal {
            tenant,
            actor: Actor::User { id },
            scopes: ScopeSet::ALL,
        }
    }

    /// An API key acting as its owner, narrowed by its scopes.
    pub fn api_key(
        tenant: TenantId,
        key_id: KeyId,
        name: String,
        owner: UserId,
        scopes: ScopeSet,
    ) -> Self {
        Principal {
            tenant,
            actor: Actor::ApiKey {
                key_id,
                name,
                owner,
            },
            scopes,
        }
    }

    /// The user the principal acts as, if any (the operator acts as nobody).
    pub fn user_id(&self) -> Option<&UserId> {
        match &self.actor {
            Actor::User { id } => Some(id),
            Actor::ApiKey { owner, .. } => Some(owner),
            Actor::Operator | Actor::System => None,
        }
    }

    /// Fails unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), CommandError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(CommandError::Forbidden(format!(
                "this requires the `{scope}` scope"
            )))
        }
    }
}

/// Something to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Create a key.
    CreateKey(CreateKey),
    /// Revoke a key.
    RevokeKey(RevokeKey),
    /// Replace a key with a new one.
    RotateKey(RotateKey),
    /// Remove a user and revoke their keys.
    RemoveUser(RemoveUser),
    /// Record reads of the audit trail (needs `audit:read`): one, or the
    /// reads of one actor and kind gathered over a window, with their count.
    RecordAuditRead {
        /// Who read, in which tenant.
        principal: Principal,
        /// What was read, how often, when.
        read: AuditRead,
    },
    /// Start a new checkpoint epoch for a log that no longer holds what
    /// its signed checkpoints said (the operator only). The caller states
    /// what the stored checkpoints and the log say; the decision checks
    /// it against the state.
    RecordRecovery {
        /// The operator (or a user named by the operator), in the tenant.
        principal: Principal,
        /// What was lost, and why the operator goes on.
        recovery: LogRecovered,
    },
    /// Revoke every known, active key among reported leaked secrets, in
    /// whichever tenants they are (`crate::leak`).
    ReportLeaked(crate::leak::ReportLeaked),
    /// Subscribe an endpoint to notices (needs `webhooks:manage`).
    SubscribeWebhook(crate::webhook::SubscribeWebhook),
    /// Delete a webhook subscription (needs `webhooks:manage`).
    DeleteWebhook(crate::webhook::DeleteWebhook),
    /// Record counted uses (from the usage counters, acting as the system).
    RecordUsage {
        /// The key's tenant.
        tenant: TenantId,
        /// The counts.
        usage: KeyUsed,
    },
    /// Change a key's fields (needs `keys:write`).
    UpdateKey(UpdateKey),
    /// Reserve a block of a key's credits for a node to spend in memory
    /// (acting as the system): grants `min(want, remaining)`.
    ReserveCredits {
        /// The key's tenant.
        tenant: TenantId,
        /// The key.
        key_id: KeyId,
        /// The credit epoch the node knows; refused if it is not the key's.
        epoch: u64,
        /// How many the node would like (at least 1).
        want: u64,
    },
    /// Hand back reserved credits not spent (acting as the system).
    ReleaseCredits {
        /// The key's tenant.
        tenant: TenantId,
        /// The key.
        key_id: KeyId,
        /// The credit epoch they were reserved in; refused if it is not the key's.
        epoch: u64,
        /// How many (at least 1, at most what is reserved).
        amount: u64,
    },
    /// Refill a key's credits for the refill instant `due_at` (acting as
    /// the system); refused unless that refill is due.
    RefillCredits {
        /// The key's tenant.
        tenant: TenantId,
        /// The key.
        key_id: KeyId,
        /// A refill instant of the key's refill, after its epoch started
        /// and not after now.
        due_at: Timestamp,
    },
}

impl Command {
    /// Who asks (the system, for usage records, is nobody; so are the
    /// operator and a partner reporting leaked keys, who act in no tenant).
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Command::CreateKey(c) => Some(&c.principal),
            Command::RevokeKey(c) => Some(&c.principal),
            Command::RotateKey(c) => Some(&c.principal),
            Command::RemoveUser(c) => Some(&c.principal),
            Command::RecordAuditRead { principal, .. } => Some(principal),
            Command::RecordRecovery { principal, .. } => Some(principal),
            Command::ReportLeaked(c) => match &c.reporter {
                crate::leak::Reporter::Key(p) => Some(p),
                crate::leak::Reporter::Operator | crate::leak::Reporter::Partner(_) => None,
            },
            Command::SubscribeWebhook(c) => Some(&c.principal),
            Command::DeleteWebhook(c) => Some(&c.principal),
            Command::UpdateKey(c) => Some(&c.principal),
            Command::RecordUsage { .. }
            | Command::ReserveCredits { .. }
            | Command::ReleaseCredits { .. }
            | Command::RefillCredits { .. } => None,
        }
    }

    /// The one tenant the command acts in; `None` for a leak report,
    /// whose events go to the tenants of the keys it names (one append
    /// across tenants).
    pub fn tenant(&self) -> Option<&TenantId> {
        Some(match self {
            Command::CreateKey(c) => &c.principal.tenant,
            Command::RevokeKey(c) => &c.principal.tenant,
            Command::RotateKey(c) => &c.principal.tenant,
            Command::RemoveUser(c) => &c.principal.tenant,
            Command::RecordAuditRead { principal, .. } => &principal.tenant,
            Command::RecordRecovery { principal, .. } => &principal.tenant,
            Command::ReportLeaked(_) => return None,
            Command::SubscribeWebhook(c) => &c.principal.tenant,
            Command::DeleteWebhook(c) => &c.principal.tenant,
            Command::RecordUsage { tenant, .. } => tenant,
            Command::UpdateKey(c) => &c.principal.tenant,
            Command::ReserveCredits { tenant, .. }
            | Command::ReleaseCredits { tenant, .. }
            | Command::RefillCredits { tenant, .. } => tenant,
        })
    }
}

/// Create a key. The caller mints the id and the secret, and passes only
/// the secret's hash and masked form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateKey {
    /// Who asks.
    pub principal: Principal,
    /// The owner; `None` means the principal's own user (the operator must name one).
    pub owner: Option<UserId>,
    /// The name, as given (it is trimmed and checked here).
    pub name: String,
    /// An optional description.
    pub description: Option<String>,
    /// An optional expiry, which must be in the future.
    pub expires_at: Option<Timestamp>,
    /// Scopes; `None` means the default (all but `users:remove`, narrowed to the principal's).
    pub scopes: Option<ScopeSet>,
    /// The new key's id.
    pub key_id: KeyId,
    /// SHA-256 of the new secret.
    pub secret_hash: SecretHash,
    /// The new secret, masked.
    pub masked: String,
    /// Metadata, if any.
    pub meta: Option<Meta>,
    /// Credits, if any (`None`: unlimited uses).
    pub credits: Option<Credits>,
    /// Named rate limits (empty: none).
    pub limits: Vec<RateLimit>,
}

/// Change some of a key's fields. `None` leaves a field as it is; for an
/// optional field, `Some(None)` clears it. Scopes may only narrow and the
/// expiry only come sooner, unless the principal could grant the wider
/// value (see [`decide`]'s update rule in `update_key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateKey {
    /// Who asks.
    pub principal: Principal,
    /// The key.
    pub key_id: KeyId,
    /// A new name (trimmed and checked).
    pub name: Option<String>,
    /// A new description, or none (a blank one is none).
    pub description: Option<Option<String>>,
    /// New metadata, or none.
    pub meta: Option<Option<Meta>>,
    /// A new expiry, or never.
    pub expires_at: Option<Option<Timestamp>>,
    /// New scopes (at least one).
    pub scopes: Option<ScopeSet>,
    /// New credits (a new credit epoch), or unlimited.
    pub credits: Option<Option<Credits>>,
    /// New rate limits, replacing the old ones whole (empty: none).
    pub limits: Option<Vec<RateLimit>>,
}

impl UpdateKey {
    /// An update of `key_id` that changes nothing yet: set the fields to change.
    pub fn new(principal: Principal, key_id: KeyId) -> Self {
        UpdateKey {
            principal,
            key_id,
            name: None,
            description: None,
            meta: None,
            expires_at: None,
            scopes: None,
            credits: None,
            limits: None,
        }
    }
}

/// Revoke a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeKey {
    /// Who asks.
    pub principal: Principal,
    /// The key.
    pub key_id: KeyId,
    /// `manual` or `compromised`; the others are the system's.
    pub reason: RevokeReason,
}

/// Replace a key with a new one with the same owner, name, description and scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateKey {
    /// Who asks.
    pub principal: Principal,
    /// The key to replace.
    pub key_id: KeyId,
    /// How long the old key keeps working; 0 revokes it now.
    pub grace_seconds: u64,
    /// The new key's expiry, if any.
    pub expires_at: Option<Timestamp>,
    /// The new key's id.
    pub new_key_id: KeyId,
    /// SHA-256 of the new secret.
    pub secret_hash: SecretHash,
    /// The new secret, masked.
    pub masked: String,
}

/// Remove a user from a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveUser {
    /// Who asks.
    pub principal: Principal,
    /// The user to remove.
    pub user_id: UserId,
}

/// A field failed its check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as named on the wire.
    pub field: &'static str,
    /// What is wrong, for a human.
    pub message: String,
}

/// Why a command was refused. Nothing was appended.
///
/// Not `#[non_exhaustive]`: every crate that matches it is in this
/// workspace and maps each refusal on purpose (the server to a status and
/// code), so a new refusal must fail to compile there rather than fall
/// into a wildcard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The principal lacks a scope, or tried to grant one it does not hold.
    #[error("{0}")]
    Forbidden(String),
    /// No such key in this tenant (a key of another tenant is not found either).
    #[error("no key {0} in this tenant")]
    KeyNotFound(KeyId),
    /// The key is revoked already.
    #[error("key {0} is already revoked")]
    AlreadyRevoked(KeyId),
    /// The key was rotated already (it is in its grace period).
    #[error("key {0} was already rotated; its successor is {1}")]
    AlreadyRotated(KeyId, KeyId),
    /// The user is removed already.
    #[error("user {0} is already removed")]
    UserAlreadyRemoved(UserId),
    /// The user was removed and can own no new key.
    #[error("user {0} was removed from this tenant and cannot own keys")]
    UserRemoved(UserId),
    /// A field's value is not acceptable.
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(FieldError),
    /// A named limit was reached.
    #[error("{0}")]
    Limit(String),
    /// No live webhook subscription with this id in this tenant.
    #[error("no webhook {0} in this tenant")]
    WebhookNotFound(crate::webhook::WebhookId),
    /// The new key's id or secret hash is taken (a caller's bug, never chance).
    #[error("{0}")]
    Duplicate(String),
    /// A policy field (metadata, credits, rate limits) is not acceptable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// An update names no field, or sets each to what it already is.
    #[error("the update of key {0} changes nothing")]
    NoChange(KeyId),
    /// The key has no credits (it is not limited by them).
    #[error("key {0} has no credits")]
    NoCredits(KeyId),
    /// The key's credits are all spent or reserved: nothing to reserve.
    #[error("key {0} has no credits left to reserve")]
    CreditsExhausted(KeyId),
    /// The credit epoch named is not the key's (a refill or a change
    /// started a new one): what was reserved in it has lapsed.
    #[error("key {key_id} is in credit epoch {current}, not {asked}")]
    StaleEpoch {
        /// The key.
        key_id: KeyId,
        /// The epoch asked about.
        asked: u64,
        /// The key's epoch.
        current: u64,
    },
    /// No refill of the key is due at that instant.
    #[error("no refill of key {0} is due at {1}")]
    RefillNotDue(KeyId, Timestamp),
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> CommandError {
    CommandError::Invalid(FieldError {
        field,
        message: message.into(),
    })
}

/// Decides a command against the committed state at `now`.
///
/// Returns the events to append, all in one atomic append, or why not.
/// Event times never go backwards within a tenant: a clock that stepped
/// back is answered with the tenant's last time. Every command's events
/// are in its one tenant ([`Command::tenant`]) but a leak report's, which
/// are grouped by tenant, each tenant's together.
pub fn decide<S: StateView + ?Sized>(
    state: &S,
    command: &Command,
    now: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let Some(tenant) = command.tenant() else {
        return match command {
            Command::ReportLeaked(c) => crate::leak::report_leaked(state, c, now),
            _ => Err(CommandError::Forbidden(
                "a command that names no tenant is a leak report".into(),
            )),
        };
    };
    let tenant_state = state.tenant_view(tenant);
    let at = now.max(tenant_state.last_at());
    // A removed user acts no more, directly or otherwise.
    if let Some(p) = command.principal()
        && let Some(user) = p.user_id()
        && tenant_state.is_removed(user)
    {
        return Err(CommandError::UserRemoved(user.clone()));
    }
    match command {
        Command::CreateKey(c) => create_key(state, tenant_state, c, at),
        Command::RevokeKey(c) => revoke_key(tenant_state, c, at),
        Command::RotateKey(c) => rotate_key(state, tenant_state, c, at),
        Command::RemoveUser(c) => remove_user(tenant_state, c, at),
        Command::RecordAuditRead { principal, read } => {
            principal.require(Scope::AuditRead)?;
            check_audit_read(read)?;
            Ok(vec![Event {
                tenant: principal.tenant.clone(),
                at,
                actor: principal.actor.clone(),
                kind: EventKind::AuditRead(read.clone()),
            }])
        }
        Command::RecordRecovery {
            principal,
            recovery,
        } => record_recovery(tenant_state, principal, recovery, at),
        Command::ReportLeaked(c) => crate::leak::report_leaked(state, c, now),
        Command::SubscribeWebhook(c) => crate::webhook::subscribe(tenant_state, c, at),
        Command::DeleteWebhook(c) => crate::webhook::delete(tenant_state, c, at),
        Command::UpdateKey(c) => update_key(tenant_state, c, at),
        Command::ReserveCredits {
            tenant,
            key_id,
            epoch,
            want,
        } => {
            let c = live_credits(tenant_state, *key_id, *epoch)?;
            if *want == 0 {
                return Err(invalid("want", "reserve at least one credit"));
            }
            if c.remaining == 0 {
                return Err(CommandError::CreditsExhausted(*key_id));
            }
            Ok(vec![system(
                tenant,
                at,
                EventKind::CreditsReserved(CreditsReserved {
                    key_id: *key_id,
                    epoch: *epoch,
                    amount: (*want).min(c.remaining),
                }),
            )])
        }
        Command::ReleaseCredits {
            tenant,
            key_id,
            epoch,
            amount,
        } => {
            let c = credit_state(tenant_state, *key_id)?;
            check_epoch(c, *key_id, *epoch)?;
            if *amount == 0 || *amount > c.outstanding {
                return Err(invalid(
                    "amount",
                    format!("release 1 to {} credits (what is reserved)", c.outstanding),
                ));
            }
            Ok(vec![system(
                tenant,
                at,
                EventKind::CreditsReleased(CreditsReleased {
                    key_id: *key_id,
                    epoch: *epoch,
                    amount: *amount,
                }),
            )])
        }
        Command::RefillCredits {
            tenant,
            key_id,
            due_at,
        } => {
            let c = unrevoked_key(tenant_state, *key_id)?
                .credit_state()
                .ok_or(CommandError::NoCredits(*key_id))?;
            let not_due = || CommandError::RefillNotDue(*key_id, *due_at);
            let refill = c.refill.ok_or_else(not_due)?;
            if *due_at <= c.since || *due_at > at || refill.last_at_or_before(*due_at) != *due_at {
                return Err(not_due());
            }
            Ok(vec![system(
                tenant,
                at,
                EventKind::CreditsRefilled(CreditsRefilled {
                    key_id: *key_id,
                    due_at: *due_at,
                    remaining: refill.amount,
                }),
            )])
        }
        Command::RecordUsage { tenant, usage } => {
            if tenant_state.key(usage.key_id).is_none() {
                return Err(CommandError::KeyNotFound(usage.key_id));
            }
            Ok(vec![Event {
                tenant: tenant.clone(),
                at,
                actor: Actor::System,
                kind: EventKind::KeyUsed(usage.clone()),
            }])
        }
    }
}

/// Checks the reads one `AuditRead` records: at least one read, no more
/// ranges than reads and than [`AUDIT_READ_RANGES_MAX`], ranges of
/// sequence numbers (from 1) in order, apart, and a window in order.
fn check_audit_read(read: &AuditRead) -> Result<(), CommandError> {
    if read.count == 0 {
        return Err(invalid("count", "an audit read records at least one read"));
    }
    if read.ranges.iter().any(|r| r.from > r.to) {
        return Err(invalid("from", "`from` is after `to`"));
    }
    if read.ranges.iter().any(|r| r.from == 0) {
        return Err(invalid("from", "sequence numbers start at 1"));
    }
    if !AuditRead::ranges_in_order(&read.ranges) {
        return Err(invalid(
            "ranges",
            "the ranges read must be in order, disjoint and not touching",
        ));
    }
    if read.ranges.len() > AUDIT_READ_RANGES_MAX {
        return Err(invalid(
            "ranges",
            format!("an audit read lists at most {AUDIT_READ_RANGES_MAX} ranges"),
        ));
    }
    if read.ranges.len() as u64 > read.count {
        return Err(invalid("count", "each read covers at most one range"));
    }
    if read.window_start > read.window_end {
        return Err(invalid("window_start", "the window starts after it ends"));
    }
    Ok(())
}

/// Trims and checks a key name: 1–100 characters, no control characters.
pub fn check_name(name: &str) -> Result<String, CommandError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(invalid("name", "a name is required"));
    }
    if chars > NAME_CHARS_MAX {
        return Err(invalid(
            "name",
            format!("a name is at most {NAME_CHARS_MAX} characters, not {chars}"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "a name may not hold control characters"));
    }
    Ok(name.to_owned())
}

/// Checks a description: at most 500 characters; line breaks and tabs are
/// the only control characters allowed. A blank one is no description.
pub fn check_description(d: Option<&str>) -> Result<Option<String>, CommandError> {
    let Some(d) = d.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let chars = d.chars().count();
    if chars > DESCRIPTION_CHARS_MAX {
        return Err(invalid(
            "description",
            format!("a description is at most {DESCRIPTION_CHARS_MAX} characters, not {chars}"),
        ));
    }
    if d.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(
            "description",
            "a description may not hold control characters",
        ));
    }
    Ok(Some(d.to_owned()))
}

fn check_expiry(expires_at: Option<Timestamp>, at: Timestamp) -> Result<(), CommandError> {
    match expires_at {
        Some(e) if e <= at => Err(invalid(
            "expires_at",
            format!("the expiry {e} is not in the future"),
        )),
        _ => Ok(()),
    }
}

fn check_new_key<S: StateView + ?Sized>(
    state: &S,
    tenant: TenantView<'_>,
    key_id: KeyId,
    hash: &SecretHash,
) -> Result<(), CommandError> {
    if tenant.key_count() >= KEYS_PER_TENANT_MAX {
        return Err(CommandError::Limit(format!(
            "a tenant holds at most {KEYS_PER_TENANT_MAX} keys, revoked ones included"
        )));
    }
    if tenant.key(key_id).is_some() || state.key_exists(key_id) {
        return Err(CommandError::Duplicate(format!("key id {key_id} is taken")));
    }
    if state.key_by_hash(hash).is_some() {
        return Err(CommandError::Duplicate("the secret's hash is taken".into()));
    }
    Ok(())
}

fn create_key<S: StateView + ?Sized>(
    state: &S,
    tenant: TenantView<'_>,
    c: &CreateKey,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::KeysWrite)?;
    let owner = match (&c.owner, p.user_id()) {
        (Some(owner), _) => {
            if p.actor != Actor::Operator && Some(owner) != p.user_id() {
                return Err(CommandError::Forbidden(
                    "only the operator may create a key for another user".into(),
                ));
            }
            owner.clone()
        }
        (None, Some(me)) => me.clone(),
        (None, None) => {
            return Err(invalid(
                "user",
                "the operator must name the user who will own the key",
            ));
        }
    };
    if tenant.is_removed(&owner) {
        return Err(CommandError::UserRemoved(owner));
    }
    let name = check_name(&c.name)?;
    let description = check_description(c.description.as_deref())?;
    check_expiry(c.expires_at, at)?;
    let scopes = match c.scopes {
        Some(s) if !p.scopes.contains_all(s) => {
            return Err(CommandError::Forbidden(format!(
                "a key cannot grant scopes it does not hold (asked for `{s}`, holds `{}`)",
                p.scopes
            )));
        }
        Some(s) if s == ScopeSet::EMPTY => {
            return Err(invalid(
                "scopes",
                "give at least one scope, or none for the default",
            ));
        }
        Some(s) => s,
        None => ScopeSet::DEFAULT.intersect(p.scopes),
    };
    check_policy(c.credits.as_ref(), Some(&c.limits))?;
    check_new_key(state, tenant, c.key_id, &c.secret_hash)?;
    Ok(vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::KeyCreated(KeyCreated {
            key_id: c.key_id,
            owner,
            name,
            description,
            expires_at: c.expires_at,
            scopes,
            secret_hash: c.secret_hash,
            masked: c.masked.clone(),
            rotated_from: None,
            meta: c.meta.clone(),
            credits: c.credits.clone(),
            limits: c.limits.clone(),
        }),
    }])
}

/// The one rule for acting on an existing key, revoking and rotating alike
/// (docs/api.md, "Who may call what"): keys belong to the tenant, so a
/// principal with `keys:write` may act on any key of its tenant, whoever
/// owns it. A rotation also hands the caller a new secret with the old
/// key's scopes (and owner), so, as for a create, it needs every one of
/// those scopes: no one gains a scope by rotating. The operator holds every
/// scope.
fn may_act_on(p: &Principal, key: &KeyRecord, hands_out_secret: bool) -> Result<(), CommandError> {
    p.require(Scope::KeysWrite)?;
    if hands_out_secret && !p.scopes.contains_all(key.scopes) {
        return Err(CommandError::Forbidden(format!(
            "rotating this key hands out a new secret with `{}`, which this principal does not hold",
            key.scopes
        )));
    }
    Ok(())
}

fn revoke_key(
    tenant: TenantView<'_>,
    c: &RevokeKey,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::KeysWrite)?;
    if !matches!(c.reason, RevokeReason::Manual | RevokeReason::Compromised) {
        return Err(invalid(
            "reason",
            "a revocation's reason is `manual` or `compromised`",
        ));
    }
    let key = tenant
        .key(c.key_id)
        .ok_or(CommandError::KeyNotFound(c.key_id))?;
    if key.revoked.is_some() {
        return Err(CommandError::AlreadyRevoked(c.key_id));
    }
    may_act_on(p, key, false)?;
    Ok(vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::KeyRevoked(KeyRevoked {
            key_id: c.key_id,
            reason: c.reason,
            cause: None,
        }),
    }])
}

fn rotate_key<S: StateView + ?Sized>(
    state: &S,
    tenant: TenantView<'_>,
    c: &RotateKey,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::KeysWrite)?;
    let old = unrevoked_key(tenant, c.key_id)?;
    if let Some(successor) = old.rotated_to() {
        return Err(CommandError::AlreadyRotated(c.key_id, successor));
    }
    may_act_on(p, old, true)?;
    if c.grace_seconds > ROTATION_GRACE_SECONDS_MAX {
        return Err(invalid(
            "grace_seconds",
            format!("a grace period is at most {ROTATION_GRACE_SECONDS_MAX} seconds"),
        ));
    }
    if tenant.is_removed(&old.owner) {
        return Err(CommandError::UserRemoved(old.owner.clone()));
    }
    check_expiry(c.expires_at, at)?;
    check_new_key(state, tenant, c.new_key_id, &c.secret_hash)?;
    let created = Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::KeyCreated(KeyCreated {
            key_id: c.new_key_id,
            owner: old.owner.clone(),
            name: old.name.to_string(),
            description: old.description.clone(),
            expires_at: c.expires_at,
            scopes: old.scopes,
            secret_hash: c.secret_hash,
            masked: c.masked.clone(),
            rotated_from: Some(c.key_id),
            // The policy goes with the key; the credits no node has
            // reserved move to the successor: the old key's `KeyRotated`
            // leaves it none (see the fold), and a revoked key reserves no
            // more.
            meta: old.meta().cloned(),
            credits: old.credits(),
            limits: old.limits().to_vec(),
        }),
    };
    let grace_end = at.plus_seconds(c.grace_seconds);
    let retire = if c.grace_seconds == 0 || old.status(at) == KeyStatus::Expired {
        EventKind::KeyRevoked(KeyRevoked {
            key_id: c.key_id,
            reason: RevokeReason::Rotated,
            cause: None,
        })
    } else {
        EventKind::KeyRotated(KeyRotated {
            key_id: c.key_id,
            new_key_id: c.new_key_id,
            expires_at: old.expires_at.map_or(grace_end, |e| e.min(grace_end)),
        })
    };
    let retire = Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: retire,
    };
    Ok(vec![created, retire])
}

/// Checks credits and rate limits, when given.
fn check_policy(
    credits: Option<&Credits>,
    limits: Option<&[RateLimit]>,
) -> Result<(), CommandError> {
    if let Some(c) = credits {
        c.check()?;
    }
    if let Some(l) = limits {
        RateLimit::check_all(l)?;
    }
    Ok(())
}

/// An event the system decides (credit reservations and refills).
fn system(tenant: &TenantId, at: Timestamp, kind: EventKind) -> Event {
    Event {
        tenant: tenant.clone(),
        at,
        actor: Actor::System,
        kind,
    }
}

/// A key of the tenant that is not revoked.
fn unrevoked_key(tenant: TenantView<'_>, key_id: KeyId) -> Result<&KeyRecord, CommandError> {
    let key = tenant
        .key(key_id)
        .ok_or(CommandError::KeyNotFound(key_id))?;
    if key.revoked.is_some() {
        return Err(CommandError::AlreadyRevoked(key_id));
    }
    Ok(key)
}

/// A key's credit state, for a credit command.
fn credit_state(
    tenant: TenantView<'_>,
    key_id: KeyId,
) -> Result<&crate::state::CreditState, CommandError> {
    tenant
        .key(key_id)
        .ok_or(CommandError::KeyNotFound(key_id))?
        .credit_state()
        .ok_or(CommandError::NoCredits(key_id))
}

fn check_epoch(
    c: &crate::state::CreditState,
    key_id: KeyId,
    epoch: u64,
) -> Result<(), CommandError> {
    if c.epoch == epoch {
        Ok(())
    } else {
        Err(CommandError::StaleEpoch {
            key_id,
            asked: epoch,
            current: c.epoch,
        })
    }
}

/// The credits of a key that is not revoked, in `epoch`.
fn live_credits(
    tenant: TenantView<'_>,
    key_id: KeyId,
    epoch: u64,
) -> Result<&crate::state::CreditState, CommandError> {
    unrevoked_key(tenant, key_id)?;
    let c = credit_state(tenant, key_id)?;
    check_epoch(c, key_id, epoch)?;
    Ok(c)
}

/// The update rule. A principal with `keys:write` may change any key of its
/// tenant (as it may revoke it), but may not widen what the key can do
/// beyond what it could grant on a create: new scopes must be a subset of
/// the old ones, or all held by the principal (create's rule: a key cannot
/// grant scopes it does not hold); a later expiry, or none where there was
/// one, gives the key's secret a longer life, which only a principal holding
/// every scope of the (updated) key may give: it could have created that
/// key with that expiry, as a rotation must hold the scopes of the secret it
/// hands out. A rotated key's expiry is its grace period's end and is never
/// pushed later. A revoked key changes no more.
fn update_key(
    tenant: TenantView<'_>,
    c: &UpdateKey,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::KeysWrite)?;
    let key = unrevoked_key(tenant, c.key_id)?;
    may_act_on(p, key, false)?;
    // A removed user's keys stay refused (an expired one was not revoked
    // by the cascade): none is changed, as none is rotated.
    if tenant.is_removed(&key.owner) {
        return Err(CommandError::UserRemoved(key.owner.clone()));
    }
    let mut changes = Vec::new();
    if let Some(name) = &c.name {
        changes.push(KeyChange::Name {
            before: key.name.to_string(),
            after: check_name(name)?,
        });
    }
    if let Some(d) = &c.description {
        changes.push(KeyChange::Description {
            before: key.description.clone(),
            after: check_description(d.as_deref())?,
        });
    }
    if let Some(m) = &c.meta {
        changes.push(KeyChange::Meta {
            before: key.meta().cloned(),
            after: m.clone(),
        });
    }
    let scopes = match c.scopes {
        Some(s) if s == ScopeSet::EMPTY => {
            return Err(invalid("scopes", "a key keeps at least one scope"));
        }
        Some(s) if !key.scopes.contains_all(s) && !p.scopes.contains_all(s) => {
            return Err(CommandError::Forbidden(format!(
                "a key's scopes may only narrow unless the caller holds them all \
                 (asked for `{s}`, holds `{}`)",
                p.scopes
            )));
        }
        Some(s) => s,
        None => key.scopes,
    };
    if let Some(e) = c.expires_at {
        check_expiry(e, at)?;
        let later = match (key.expires_at, e) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(old), Some(new)) => new > old,
        };
        if later {
            if let Some(successor) = key.rotated_to() {
                return Err(CommandError::AlreadyRotated(c.key_id, successor));
            }
            if !p.scopes.contains_all(scopes) {
                return Err(CommandError::Forbidden(format!(
                    "a key's expiry may only come sooner unless the caller holds all its \
                     scopes (`{scopes}`; holds `{}`)",
                    p.scopes
                )));
            }
        }
        changes.push(KeyChange::ExpiresAt {
            before: key.expires_at,
            after: e,
        });
    }
    if c.scopes.is_some() {
        changes.push(KeyChange::Scopes {
            before: key.scopes,
            after: scopes,
        });
    }
    if let Some(credits) = &c.credits {
        check_policy(credits.as_ref(), None)?;
        changes.push(KeyChange::Credits {
            before: key.credits(),
            after: credits.clone(),
        });
    }
    if let Some(limits) = &c.limits {
        check_policy(None, Some(limits))?;
        changes.push(KeyChange::Limits {
            before: key.limits().to_vec(),
            after: limits.clone(),
        });
    }
    changes.retain(|ch| !ch.is_noop());
    if changes.is_empty() {
        return Err(CommandError::NoChange(c.key_id));
    }
    Ok(vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::KeyUpdated(KeyUpdated {
            key_id: c.key_id,
            changes,
        }),
    }])
}

fn remove_user(
    tenant: TenantView<'_>,
    c: &RemoveUser,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    let p = &c.principal;
    p.require(Scope::UsersRemove)?;
    if tenant.is_removed(&c.user_id) {
        return Err(CommandError::UserAlreadyRemoved(c.user_id.clone()));
    }
    let removed_seq = tenant.version() + 1;
    let mut events = vec![Event {
        tenant: p.tenant.clone(),
        at,
        actor: p.actor.clone(),
        kind: EventKind::UserRemoved(UserRemoved {
            user_id: c.user_id.clone(),
        }),
    }];
    events.extend(
        tenant
            .keys_of(&c.user_id)
            .filter(|k| k.status(at) == KeyStatus::Active)
            .map(|k| Event {
                tenant: p.tenant.clone(),
                at,
                actor: Actor::System,
                kind: EventKind::KeyRevoked(KeyRevoked {
                    key_id: k.id,
                    reason: RevokeReason::UserRemoved,
                    cause: Some(Cause::UserRemoved {
                        user_id: c.user_id.clone(),
                        seq: removed_seq,
                    }),
                }),
            }),
    );
    Ok(events)
}

fn record_recovery(
    tenant_state: TenantView<'_>,
    principal: &Principal,
    recovery: &LogRecovered,
    at: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    // The operator, or a user the operator names (`--as`); never a key.
    if !matches!(principal.actor, Actor::Operator | Actor::User { .. }) {
        return Err(CommandError::Forbidden(
            "only the operator can start a new checkpoint epoch".into(),
        ));
    }
    let reason = recovery.reason.trim();
    if reason.is_empty() {
        return Err(invalid(
            "reason",
            "say why the log is recovered without a backup",
        ));
    }
    if reason.chars().count() > RECOVERY_REASON_CHARS_MAX {
        return Err(invalid(
            "reason",
            format!("at most {RECOVERY_REASON_CHARS_MAX} characters"),
        ));
    }
    if reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid("reason", "holds a control character"));
    }
    if recovery.epoch != tenant_state.epoch() + 1 {
        return Err(invalid(
            "epoch",
            format!(
                "the tenant is in checkpoint epoch {}; the next is {}",
                tenant_state.epoch(),
                tenant_state.epoch() + 1
            ),
        ));
    }
    if recovery.recovered_size != tenant_state.version() {
        return Err(invalid(
            "recovered_size",
            format!(
                "the log holds {} events of the tenant, not {}",
                tenant_state.version(),
                recovery.recovered_size
            ),
        ));
    }
    if recovery.agreed_size > recovery.signed_size.min(recovery.recovered_size) {
        return Err(invalid(
            "agreed_size",
            "more events agreed than were signed or recovered",
        ));
    }
    if recovery.agreed_size == recovery.signed_size {
        return Err(invalid(
            "signed_size",
            "the log still holds every signed event: nothing to recover",
        ));
    }
    Ok(vec![Event {
        tenant: principal.tenant.clone(),
        at,
        actor: principal.actor.clone(),
        kind: EventKind::LogRecovered(LogRecovered {
            reason: reason.to_owned(),
            ..recovery.clone()
        }),
    }])
}
