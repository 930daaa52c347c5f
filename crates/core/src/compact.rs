//! Compact parts of a [`crate::KeyRecord`] (issue 13, memory): what every
//! key holds inline is kept small, and what few keys have is boxed.

use std::fmt;
use std::ops::Deref;

use crate::event::Actor;
use crate::ids::{KeyId, UserId};

/// Bytes of a masked secret held inline: `8 characters…4` is 15 bytes
/// for the ASCII keys keyledger mints.
const INLINE: usize = 22;

/// A masked secret (`Secret::masked`): inline when it fits in 22 bytes,
/// as every minted key's does, so it costs no allocation; on the heap
/// otherwise (a long non-ASCII prefix). Reads as a `&str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Masked(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Masked {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                // Only whole `&str`s are copied in (`From<&str>`), so the
                // bytes are UTF-8; the fallback is never taken.
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }
}

impl From<&str> for Masked {
    fn from(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Masked(Repr::Inline { len, bytes })
            }
            _ => Masked(Repr::Heap(s.into())),
        }
    }
}

impl Deref for Masked {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Masked {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<String> for Masked {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// Who created a key, without repeating its owner: most keys are created
/// by their owner or by the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreatedBy {
    /// The key's owner, as a user (`Actor::User` with the owner's id).
    Owner,
    /// The operator.
    Operator,
    /// Anyone else.
    Other(Box<Actor>),
}

impl CreatedBy {
    /// The compact form of `actor` for a key owned by `owner`.
    pub fn of(actor: &Actor, owner: &UserId) -> Self {
        match actor {
            Actor::User { id } if id == owner => CreatedBy::Owner,
            Actor::Operator => CreatedBy::Operator,
            other => CreatedBy::Other(Box::new(other.clone())),
        }
    }

    /// The actor, for a key owned by `owner`.
    pub fn actor(&self, owner: &UserId) -> Actor {
        match self {
            CreatedBy::Owner => Actor::User { id: owner.clone() },
            CreatedBy::Operator => Actor::Operator,
            CreatedBy::Other(a) => (**a).clone(),
        }
    }
}

/// A key's rotation links, for a key with either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// The key this one replaced.
    pub from: Option<KeyId>,
    /// The key that replaced this one.
    pub to: Option<KeyId>,
}

impl Links {
    /// The boxed links, or `None` when there are none.
    pub fn boxed(self) -> Option<Box<Links>> {
        (self != Links::default()).then(|| Box::new(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_round_trips_inline_and_on_the_heap() {
        for s in [
            "",
            "kl_live_…abcd",
            "kl_abcde…wxyz",
            &"é".repeat(11),
            &"x".repeat(23),
        ] {
            let m = Masked::from(s);
            assert_eq!(m.as_str(), s);
            assert_eq!(m.to_string(), s);
            assert_eq!(format!("{m:?}"), format!("{s:?}"));
        }
        assert!(matches!(
            Masked::from("x".repeat(22).as_str()).0,
            Repr::Inline { .. }
        ));
        assert!(matches!(
            Masked::from("x".repeat(23).as_str()).0,
            Repr::Heap(_)
        ));
        assert_eq!(std::mem::size_of::<Masked>(), 24);
    }

    #[test]
    fn created_by_gives_back_the_actor() {
        let ada: UserId = "ada".parse().unwrap_or_else(|e| panic!("{e}"));
        let bob: UserId = "bob".parse().unwrap_or_else(|e| panic!("{e}"));
        let key = Actor::ApiKey {
            key_id: KeyId::from_u128(7),
            name: "ci".into(),
            owner: ada.clone(),
        };
        for actor in [
            Actor::User { id: ada.clone() },
            Actor::User { id: bob },
            Actor::Operator,
            Actor::System,
            key,
        ] {
            let c = CreatedBy::of(&actor, &ada);
            assert_eq!(c.actor(&ada), actor);
        }
        assert_eq!(
            CreatedBy::of(&Actor::User { id: ada.clone() }, &ada),
            CreatedBy::Owner
        );
    }
}
