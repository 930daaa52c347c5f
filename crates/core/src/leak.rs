//! Leak response: secrets reported found where they do not belong.
//!
//! A report lists the SHA-256 of each reported secret (the caller checks
//! each one's shape and checksum first, and leaves out what is not a key:
//! the core never sees a secret, invariant 4 of `decide.rs`). Every listed
//! key that is active at that instant, in whichever tenant, is answered
//! with a `KeyLeaked` and its `KeyRevoked` (reason `compromised`), in one
//! decision, so in one atomic append across tenants:
//!
//! 5. a `KeyLeaked` is always followed, in the same append, by the
//!    `KeyRevoked` (reason `compromised`) of the same key, by the same
//!    actor, at the same instant; a key not active (revoked, expired,
//!    unknown) is left alone: reporting it again changes nothing.
//!
//! Who reported is recorded as the key's tenant may see it: the operator,
//! a key of the same tenant (then the actor is that key), a key of
//! another tenant (not named), or a partner by its configured name.

use std::collections::{BTreeMap, HashSet};

use crate::decide::{CommandError, FieldError, Principal};
use crate::event::{Actor, Event, EventKind, KeyLeaked, KeyRevoked, LeakReporter, RevokeReason};
use crate::ids::{KeyId, TenantId};
use crate::limits::{
    LEAK_PARTNER_CHARS_MAX, LEAK_SECRETS_MAX, LEAK_SOURCE_CHARS_MAX, LEAK_URL_CHARS_MAX,
};
use crate::overlay::StateView;
use crate::secret::SecretHash;
use crate::state::KeyStatus;
use crate::time::Timestamp;

/// Report secrets found where they do not belong: revoke each known,
/// active key among them, in every tenant, in one append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportLeaked {
    /// Who reports.
    pub reporter: Reporter,
    /// What was found: at most [`LEAK_SECRETS_MAX`].
    pub leaks: Vec<Leak>,
}

/// Who reports leaked secrets. Holding a secret is enough to have it
/// revoked, so any valid key may report, whatever its scopes and tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// The deployment's operator.
    Operator,
    /// An API key, acting as its owner in its tenant.
    Key(Principal),
    /// A secret-scanning partner whose request was signed with a
    /// configured public key, by the name the operator gave it.
    Partner(String),
}

/// One reported secret, by its hash, with where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// SHA-256 of the reported secret; `None` when the caller found the
    /// text not shaped like a key or its checksum wrong (its source and
    /// URL are checked all the same, so a refusal never depends on it).
    pub secret_hash: Option<SecretHash>,
    /// Where it was found, in the reporter's words, if said.
    pub source: Option<String>,
    /// The address where it was found, if given.
    pub url: Option<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> CommandError {
    CommandError::Invalid(FieldError {
        field,
        message: message.into(),
    })
}

/// Checks one optional text of a report: at most `max` characters, no
/// control characters. Blank is none.
fn check_text(
    field: &'static str,
    text: Option<&str>,
    max: usize,
) -> Result<Option<String>, CommandError> {
    let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let chars = t.chars().count();
    if chars > max {
        return Err(invalid(
            field,
            format!("at most {max} characters, not {chars}"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(invalid(field, "may not hold control characters"));
    }
    Ok(Some(t.to_owned()))
}

/// `now`, or the tenant's last event's time if later.
fn last_at<S: StateView + ?Sized>(state: &S, tenant: &TenantId, now: Timestamp) -> Timestamp {
    let t = state.tenant_view(tenant);
    if t.exists() {
        now.max(t.last_at())
    } else {
        now
    }
}

/// A key to revoke: its id, and where its secret was found.
type Found = (KeyId, Option<String>, Option<String>);

/// The decision (see the module's documentation). `Ok(vec![])` when no
/// listed key is active: nothing to append.
pub(crate) fn report_leaked<S: StateView + ?Sized>(
    state: &S,
    c: &ReportLeaked,
    now: Timestamp,
) -> Result<Vec<Event>, CommandError> {
    if c.leaks.len() > LEAK_SECRETS_MAX {
        return Err(invalid(
            "secrets",
            format!(
                "a report lists at most {LEAK_SECRETS_MAX} secrets, not {}",
                c.leaks.len()
            ),
        ));
    }
    match &c.reporter {
        Reporter::Partner(name) => {
            if name.is_empty()
                || name.chars().count() > LEAK_PARTNER_CHARS_MAX
                || name.chars().any(char::is_control)
            {
                return Err(invalid(
                    "partner",
                    format!("a partner's name is 1 to {LEAK_PARTNER_CHARS_MAX} characters"),
                ));
            }
        }
        Reporter::Key(p) => {
            if !matches!(p.actor, Actor::ApiKey { .. }) {
                return Err(CommandError::Forbidden(
                    "a report names the operator, a key or a partner".into(),
                ));
            }
            if let Some(user) = p.user_id()
                && state.tenant_view(&p.tenant).is_removed(user)
            {
                return Err(CommandError::UserRemoved(user.clone()));
            }
        }
        Reporter::Operator => {}
    }
    let mut checked = Vec::with_capacity(c.leaks.len());
    for leak in &c.leaks {
        let source = check_text("source", leak.source.as_deref(), LEAK_SOURCE_CHARS_MAX)?;
        let url = check_text("url", leak.url.as_deref(), LEAK_URL_CHARS_MAX)?;
        checked.push((leak.secret_hash, source, url));
    }
    // The keys to revoke, by tenant (in tenant order, so the decision does
    // not depend on a hash map's order), each in the report's order.
    let mut seen: HashSet<KeyId> = HashSet::new();
    let mut by_tenant: BTreeMap<&TenantId, Vec<Found>> = BTreeMap::new();
    for (hash, source, url) in checked {
        let Some((tenant, key)) = hash.and_then(|h| state.key_by_hash(&h)) else {
            continue;
        };
        let at = last_at(state, tenant, now);
        if key.status(at) != KeyStatus::Active || !seen.insert(key.id) {
            continue;
        }
        by_tenant
            .entry(tenant)
            .or_default()
            .push((key.id, source, url));
    }
    let mut events = Vec::with_capacity(seen.len() * 2);
    for (tenant, keys) in by_tenant {
        let at = last_at(state, tenant, now);
        let (actor, reporter) = match &c.reporter {
            Reporter::Operator => (Actor::Operator, LeakReporter::Operator),
            Reporter::Key(p) if &p.tenant == tenant => (p.actor.clone(), LeakReporter::Tenant),
            Reporter::Key(_) => (Actor::System, LeakReporter::OtherTenant),
            Reporter::Partner(name) => (Actor::System, LeakReporter::Partner(name.clone())),
        };
        for (key_id, source, url) in keys {
            events.push(Event {
                tenant: tenant.clone(),
                at,
                actor: actor.clone(),
                kind: EventKind::KeyLeaked(KeyLeaked {
                    key_id,
                    source,
                    url,
                    reporter: reporter.clone(),
                }),
            });
            events.push(Event {
                tenant: tenant.clone(),
                at,
                actor: actor.clone(),
                kind: EventKind::KeyRevoked(KeyRevoked {
                    key_id,
                    reason: RevokeReason::Compromised,
                    cause: None,
                }),
            });
        }
    }
    Ok(events)
}
