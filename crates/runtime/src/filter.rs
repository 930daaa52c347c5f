//! The audit filter as the CLI's arguments and the API's query give it:
//! parsed here, once, into the core's [`AuditFilter`]. Each front end
//! reads its own syntax first (repeated `--type`, or a comma list in
//! `type=`; RFC 3339 times) and words the errors its own way.

use keyledger_core::{AuditFilter, EventType, IdError, Timestamp};

/// An audit filter as text, with its times already read.
#[derive(Clone, Debug, Default)]
pub struct AuditFilterText<'a> {
    /// Only events about this key (`key_<ulid>`).
    pub key_id: Option<&'a str>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only these event types, by name (`KeyCreated` or `key_created`).
    pub types: Vec<&'a str>,
    /// Only events at or after this instant.
    pub from: Option<Timestamp>,
    /// Only events before this instant.
    pub to: Option<Timestamp>,
    /// Include `KeyUsed` events.
    pub include_usage: bool,
}

/// Why an audit filter is refused; checked in this order.
#[derive(Debug, thiserror::Error)]
pub enum AuditFilterError {
    /// The key id is malformed.
    #[error("{0}")]
    KeyId(#[source] IdError),
    /// No event type has this name.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
}

impl AuditFilterText<'_> {
    /// The names of a comma-separated list (the API's `type=`), trimmed,
    /// empty ones skipped.
    pub fn comma_list(list: &str) -> Vec<&str> {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The filter, or the first thing wrong with it.
    pub fn parse(self) -> Result<AuditFilter, AuditFilterError> {
        let key_id = self
            .key_id
            .map(str::parse)
            .transpose()
            .map_err(AuditFilterError::KeyId)?;
        let types = self
            .types
            .iter()
            .map(|t| EventType::parse(t).ok_or_else(|| AuditFilterError::UnknownType((*t).into())))
            .collect::<Result<_, _>>()?;
        Ok(AuditFilter {
            key_id,
            actor: self.actor,
            types,
            from: self.from,
            to: self.to,
            include_usage: self.include_usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_in_either_case_and_the_first_bad_one_is_named() {
        let f = AuditFilterText {
            types: AuditFilterText::comma_list(" KeyCreated, ,key_used,"),
            include_usage: true,
            ..AuditFilterText::default()
        }
        .parse()
        .unwrap();
        assert_eq!(f.types, [EventType::KeyCreated, EventType::KeyUsed]);
        assert!(f.include_usage);
        let e = AuditFilterText {
            types: vec!["KeyCreated", "Nope", "Worse"],
            ..AuditFilterText::default()
        }
        .parse()
        .unwrap_err();
        assert_eq!(e.to_string(), "unknown event type `Nope`");
        // The key id is checked before the types.
        let e = AuditFilterText {
            key_id: Some("key_nope"),
            types: vec!["Nope"],
            ..AuditFilterText::default()
        }
        .parse()
        .unwrap_err();
        assert!(matches!(e, AuditFilterError::KeyId(_)), "{e:?}");
    }
}
