//! Scopes narrow what a key may do.

use std::fmt;
use std::str::FromStr;

/// One permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// List and read keys.
    KeysRead,
    /// Create, revoke and rotate keys.
    KeysWrite,
    /// Read, export and verify the audit trail.
    AuditRead,
    /// Read usage rollups.
    UsageRead,
    /// Remove users (and so revoke every key they own). Never granted by default.
    UsersRemove,
    /// Subscribe, list and delete webhooks. Never granted by default.
    WebhooksManage,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 6] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::AuditRead,
        Scope::UsageRead,
        Scope::UsersRemove,
        Scope::WebhooksManage,
    ];

    /// The wire name, such as `keys:read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::AuditRead => "audit:read",
            Scope::UsageRead => "usage:read",
            Scope::UsersRemove => "users:remove",
            Scope::WebhooksManage => "webhooks:manage",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Scope::KeysRead => 1,
            Scope::KeysWrite => 2,
            Scope::AuditRead => 4,
            Scope::UsageRead => 8,
            Scope::UsersRemove => 16,
            Scope::WebhooksManage => 32,
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown scope `{}`; scopes are {}",
                    s.escape_debug(),
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, as a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    /// No scope.
    pub const EMPTY: ScopeSet = ScopeSet(0);
    /// Every scope.
    pub const ALL: ScopeSet = ScopeSet(63);
    /// What a key gets when it is created without scopes: all but
    /// `users:remove` and `webhooks:manage`, which are granted only by name.
    pub const DEFAULT: ScopeSet = ScopeSet(63 & !16 & !32);

    /// From the stored bits; `None` if a bit names no scope.
    pub const fn from_bits(bits: u8) -> Option<ScopeSet> {
        if bits & !Self::ALL.0 == 0 {
            Some(ScopeSet(bits))
        } else {
            None
        }
    }

    /// The stored bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is in this set.
    pub const fn contains_all(self, other: ScopeSet) -> bool {
        other.0 & !self.0 == 0
    }

    /// The set with `scope` added.
    pub const fn with(self, scope: Scope) -> ScopeSet {
        ScopeSet(self.0 | scope.bit())
    }

    /// The set with `scope` taken out.
    pub const fn without(self, scope: Scope) -> ScopeSet {
        ScopeSet(self.0 & !scope.bit())
    }

    /// Scopes in both sets.
    pub const fn intersect(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 & other.0)
    }

    /// The scopes, in display order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The scopes' wire names.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(ScopeSet::EMPTY, ScopeSet::with)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lacks_users_remove_and_webhooks_manage_only() {
        assert!(!ScopeSet::DEFAULT.contains(Scope::UsersRemove));
        assert!(!ScopeSet::DEFAULT.contains(Scope::WebhooksManage));
        assert_eq!(
            ScopeSet::DEFAULT
                .with(Scope::UsersRemove)
                .with(Scope::WebhooksManage),
            ScopeSet::ALL
        );
        assert_eq!(ScopeSet::from_bits(64), None);
    }

    #[test]
    fn names_round_trip() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        assert!("keys:delete".parse::<Scope>().is_err());
    }
}
