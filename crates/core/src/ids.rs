//! Identifiers: tenants, users and keys.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ulid::Ulid;

use crate::limits::{TENANT_ID_BYTES_MAX, USER_ID_CHARS_MAX};

/// An id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

/// The isolation boundary: an account or organization.
///
/// 1–64 bytes of `A-Z a-z 0-9 . _ -`, so it is safe in paths, URLs and logs.
///
/// Shared text (`Arc<str>`): the ledger's indexes and the verification map
/// hold one per key, and a clone is a pointer, not a copy (issue 13).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > TENANT_ID_BYTES_MAX {
            return Err(IdError(format!(
                "a tenant id is 1 to {TENANT_ID_BYTES_MAX} characters"
            )));
        }
        if !s.chars().all(ok_char) {
            return Err(IdError(
                "a tenant id may hold only letters, digits, `.`, `_` and `-`".into(),
            ));
        }
        Ok(TenantId(Arc::from(s)))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id from the product's own identity system.
///
/// 1–256 characters, no control characters, not only white space.
///
/// Shared text (`Arc<str>`), as [`TenantId`]: a key record holds its
/// owner's id as a pointer to the one its tenant already has.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Arc<str>);

impl UserId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let chars = s.chars().count();
        if s.trim().is_empty() || chars > USER_ID_CHARS_MAX {
            return Err(IdError(format!(
                "a user id is 1 to {USER_ID_CHARS_MAX} characters and not blank"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(IdError("a user id may not hold control characters".into()));
        }
        Ok(UserId(Arc::from(s)))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's id: a ULID, shown as `key_<ulid>`.
///
/// Held as its two 64-bit halves, high first (compared in that order: the
/// ULID's order), not as the ULID's `u128`: a `u128` is aligned to 16 bytes,
/// which padded every structure that holds a key id to a multiple of 16
/// (the verification map's entry from 152 bytes to 160, issue 13).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId {
    hi: u64,
    lo: u64,
}

/// As the ULID it holds (`KeyId(Ulid(…))`).
impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyId").field(&self.ulid()).finish()
    }
}

impl KeyId {
    /// The text form's prefix.
    pub const PREFIX: &'static str = "key_";

    /// From a ULID (made by the caller: the core draws no randomness).
    pub const fn from_ulid(u: Ulid) -> Self {
        Self::from_u128(u.0)
    }

    /// The ULID.
    pub const fn ulid(self) -> Ulid {
        Ulid(self.to_u128())
    }

    /// From the ULID's 128 bits.
    pub const fn from_u128(v: u128) -> Self {
        KeyId {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }

    /// The ULID's 128 bits.
    pub const fn to_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }
}

impl FromStr for KeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let body = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            IdError(format!(
                "a key id looks like `key_<ulid>`, not `{}`",
                s.escape_debug()
            ))
        })?;
        // A ULID's 26 characters hold 130 bits: a first character past `7`
        // would be shifted out by the decoder, so `key_8…` would name the
        // same key as `key_0…`. Refused, as the ULID spec says.
        if !body.starts_with(|c: char| ('0'..='7').contains(&c)) {
            return Err(IdError(format!("`{}` is not a key id", s.escape_debug())));
        }
        Ulid::from_string(body)
            .map(KeyId::from_ulid)
            .map_err(|_| IdError(format!("`{}` is not a key id", s.escape_debug())))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.ulid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert!("acme-corp_1.eu".parse::<TenantId>().is_ok());
        assert!("".parse::<TenantId>().is_err());
        assert!("a/b".parse::<TenantId>().is_err());
        assert!("x".repeat(65).parse::<TenantId>().is_err());
    }

    #[test]
    fn user_ids() {
        assert!("alice@example.com".parse::<UserId>().is_ok());
        assert!("  ".parse::<UserId>().is_err());
        assert!("a\u{7}b".parse::<UserId>().is_err());
    }

    #[test]
    fn a_key_id_orders_shows_and_aligns_as_its_ulid() {
        let ids = [
            0u128,
            1,
            u64::MAX as u128,
            1 << 64,
            (1 << 64) + 1,
            u128::MAX,
        ];
        for a in ids {
            let id = KeyId::from_u128(a);
            assert_eq!(id.to_u128(), a);
            assert_eq!(id.ulid(), Ulid(a));
            assert_eq!(KeyId::from_ulid(Ulid(a)), id);
            assert_eq!(format!("{id:?}"), format!("KeyId({:?})", Ulid(a)));
            assert_eq!(id.to_string(), format!("key_{}", Ulid(a)));
            for b in ids {
                assert_eq!(id.cmp(&KeyId::from_u128(b)), a.cmp(&b), "{a} against {b}");
            }
        }
        assert_eq!(std::mem::size_of::<KeyId>(), 16);
        assert_eq!(std::mem::align_of::<KeyId>(), 8);
    }

    #[test]
    fn key_id_round_trip() {
        let id = KeyId::from_u128(42);
        let text = id.to_string();
        assert!(text.starts_with("key_"));
        assert_eq!(text.parse::<KeyId>().unwrap(), id);
        assert!("key_nope".parse::<KeyId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<KeyId>().is_err());
        // Crockford base32 is read in either case; past 128 bits is refused,
        // not wrapped onto another id.
        let lower = "key_01arz3ndektsv4rrffq69g5fav".parse::<KeyId>();
        assert_eq!(lower, "key_01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<KeyId>());
        assert!(lower.is_ok());
        assert!("key_7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<KeyId>().is_ok());
        assert!("key_81ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<KeyId>().is_err());
        assert!("key_Z1ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<KeyId>().is_err());
    }
}
