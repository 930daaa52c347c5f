//! The runtime's errors: [`Error`], the superset every call returns, and
//! the typed reasons it carries (what was not found, which parameter was
//! refused, why the log could not be used, what was found damaged).
//!
//! A failure of the store is kept as its [`StoreError`] (in an [`Arc`], so
//! `Error` stays `Clone`: the writer answers every caller of a failed batch
//! with the same error) and returned by [`std::error::Error::source`]. The
//! message of each error already includes its source's, because the CLI
//! and the logs print one line; a reporter that walks the sources will see
//! the store's words twice.
//!
//! Not `#[non_exhaustive]`, like the core's `CommandError`: the server and
//! the CLI match them in this workspace, and a new failure must be mapped
//! there on purpose.

use std::fmt;
use std::sync::Arc;

use keyledger_audit::merkle::ProofError;
use keyledger_core::state::ApplyError;
use keyledger_core::{CommandError, KeyId, TenantId};
use keyledger_store::StoreError;
use keyledger_store::envelope::DecodeError;

use crate::datadir;

/// Why a runtime call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The command was refused; nothing was written.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Nothing of the kind in this tenant.
    #[error("{0}")]
    NotFound(Missing),
    /// A query's parameter is not acceptable (cursor, range, limit).
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// A recovery was refused: there is no loss to record, or not one a
    /// recovery may record ([`crate::Keyledger::recover`]). Nothing was written.
    #[error(transparent)]
    Recovery(#[from] RecoveryRefused),
    /// The log could not be written or read: nothing was acknowledged.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The log, or what was built from it, is damaged or inconsistent.
    #[error(transparent)]
    Corrupt(#[from] Damage),
    /// The runtime is shutting down.
    #[error("keyledger is shutting down")]
    ShuttingDown,
    /// The data directory is refused: another user could steer what is
    /// read from it or written to it ([`datadir`]).
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// A webhook URL is refused: not `https://` (or `http://` to
    /// loopback), or its host resolves to an address webhooks may not go
    /// to. Nothing was written.
    #[error("{0}")]
    WebhookTarget(String),
    /// A command was committed and is enforced by this node, but not every
    /// live node sharing the log confirmed it applied it in time. It is
    /// not undone: the other nodes apply it as soon as they catch up.
    ///
    /// The message is shown to the tenant that asked, so it names no global
    /// log position (they would tell it how busy other tenants are); the
    /// positions are logged for the operator.
    #[error(
        "committed and enforced by this node, but not confirmed by every live node within \
         {waited_ms} ms: {why}"
    )]
    NotConfirmed {
        /// How long it waited.
        waited_ms: u64,
        /// What was seen: a node has not applied it yet, or why the
        /// nodes' progress could not be read.
        why: String,
    },
}

impl Error {
    /// The log and what was built from it disagree (`what`, in words).
    pub(crate) fn inconsistent(what: impl Into<String>) -> Self {
        Error::Corrupt(Damage::Inconsistent(what.into()))
    }

    /// Something the runtime needs is not available (`what`, in words).
    pub(crate) fn unavailable(what: impl Into<String>) -> Self {
        Error::Unavailable(Unavailable::Other(what.into()))
    }

    /// An I/O failure outside the log: `what` failed with `source`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Unavailable(Unavailable::Io {
            what: what.into(),
            source: Arc::new(source),
        })
    }
}

/// What a call did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// No key with this id in the tenant.
    #[error("no key {0} in this tenant")]
    Key(KeyId),
    /// No live webhook subscription with this id in the tenant.
    #[error("no webhook {0} in this tenant")]
    Webhook(keyledger_core::WebhookId),
    /// No delivery with this id for the subscription.
    #[error("no delivery {0} for this webhook")]
    Delivery(String),
}

/// A query's parameter that is not acceptable: what was wrong, and with
/// which parameter ([`BadRequest::parameter`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// `limit` is 0.
    #[error("limit must be at least 1")]
    LimitZero,
    /// `limit` is over the page limit.
    #[error("limit is at most {max}")]
    LimitOver {
        /// The largest page.
        max: usize,
    },
    /// `cursor` was not given out by a key list.
    #[error("the cursor is not one this list gave out")]
    ListCursor,
    /// `cursor` was given out by a key list of another sort or order.
    #[error("the cursor belongs to a list with another sort or order")]
    ListCursorOfOtherOrder,
    /// `cursor` was not given out by the audit trail.
    #[error("the cursor is not one this trail gave out")]
    TrailCursor,
    /// `from` is a later day than `to`.
    #[error("`from` is after `to`")]
    DaysReversed,
    /// `days` is 0 or over the most a summary covers.
    #[error("days is 1 to {max}")]
    SummaryDays {
        /// The most days a summary covers.
        max: u32,
    },
    /// An inclusion proof's `seq` is not in the tree of `size`.
    #[error("position {seq} is not in a tree of size {size} (the tenant has {events} events)")]
    NotInTree {
        /// The event asked for.
        seq: u64,
        /// The tree size asked for (the current size when 0 was asked).
        size: u64,
        /// The tenant's events.
        events: u64,
    },
    /// A consistency proof's sizes `from` and `to` are not within the tree.
    #[error("sizes {from} to {to} are not within 0..={events}")]
    SizesOutOfRange {
        /// The older size.
        from: u64,
        /// The newer size (the current size when 0 was asked).
        to: u64,
        /// The tenant's events.
        events: u64,
    },
    /// The tree cannot make the proof of these sizes.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A bundle's range is not within the tenant's events.
    #[error("the range {from_seq}..={to_seq} is not within the tenant's events 1..={events}")]
    BundleRange {
        /// The first event asked for.
        from_seq: u64,
        /// The last event asked for.
        to_seq: u64,
        /// The tenant's events.
        events: u64,
    },
    /// A bundle's range holds more events than a bundle may.
    #[error("a bundle holds at most {max} events")]
    BundleTooLong {
        /// The most events in a bundle.
        max: u64,
    },
}

impl BadRequest {
    /// The parameter at fault, by the name the HTTP API's query gives it.
    pub fn parameter(&self) -> &'static str {
        match self {
            BadRequest::LimitZero | BadRequest::LimitOver { .. } => "limit",
            BadRequest::ListCursor
            | BadRequest::ListCursorOfOtherOrder
            | BadRequest::TrailCursor => "cursor",
            BadRequest::DaysReversed => "from",
            BadRequest::SummaryDays { .. } => "days",
            BadRequest::NotInTree { .. } => "seq",
            BadRequest::SizesOutOfRange { .. } | BadRequest::Proof(_) => "size",
            BadRequest::BundleRange { .. } | BadRequest::BundleTooLong { .. } => "from_seq",
        }
    }
}

/// Why [`crate::Keyledger::recover`] refused: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryRefused {
    /// The tenant's log holds every checkpoint signed over it.
    #[error("tenant {0}'s log holds its signed checkpoints: there is nothing to recover")]
    NothingLost(TenantId),
    /// The stored checkpoint at fault is not one this log signed.
    #[error(
        "{0}; this is not a signed checkpoint of this log, so there is no loss to record: move \
         the file aside (keep it: it is evidence) and start again"
    )]
    NotSigned(Box<crate::integrity::Problem>),
    /// The checkpoint at fault belongs to an earlier epoch.
    #[error(
        "{0}; a recovery cannot start an epoch that was already signed in: restore the data \
         directory from a backup (docs/operations.md, \"Restoring after damage\")"
    )]
    EpochSigned(Box<crate::integrity::Problem>),
}

/// Why the log (or a file kept beside it) could not be used: nothing was
/// acknowledged.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// The store failed or cannot be reached ([`StoreError::Unavailable`],
    /// [`StoreError::Backend`]), or refused an append the writer made
    /// ([`StoreError::Conflict`], [`StoreError::BadAppend`]).
    Store(Arc<StoreError>),
    /// A file beside the log (the signing key, a checkpoint file), or a
    /// thread, could not be made, read or written.
    Io {
        /// What failed (names the file).
        what: String,
        /// The OS's error.
        source: Arc<std::io::Error>,
    },
    /// Anything else: the OS's random source failed, a checkpoint file
    /// could not be read, the writer could not confirm a write.
    Other(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the event log is unavailable: ")?;
        match self {
            Unavailable::Store(e) => write!(f, "{e}"),
            Unavailable::Io { what, source } => write!(f, "{what}: {source}"),
            Unavailable::Other(what) => f.write_str(what),
        }
    }
}

/// The sources are the store's and the OS's errors themselves (not the
/// [`Arc`]s that share them), so a caller can downcast them.
impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Unavailable::Store(e) => Some(e.as_ref()),
            Unavailable::Io { source, .. } => Some(source.as_ref()),
            Unavailable::Other(_) => None,
        }
    }
}

/// What was found damaged or inconsistent.
#[derive(Debug, Clone)]
pub enum Damage {
    /// The store found its file damaged ([`StoreError::Damaged`]: a page
    /// it cannot read); the message is the store's, which names the file
    /// and says to restore it.
    File(Arc<StoreError>),
    /// The store found a record damaged ([`StoreError::Corrupt`]).
    Record(Arc<StoreError>),
    /// A stored event does not decode.
    Decode {
        /// The tenant.
        tenant: TenantId,
        /// The event's number in the tenant's chain.
        seq: u64,
        /// Why.
        source: DecodeError,
    },
    /// A committed event does not fold into the key state.
    Apply(ApplyError),
    /// The log, the state, the trees or the checkpoints disagree (what, in
    /// words).
    Inconsistent(String),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Already "the event log file … is damaged (…); restore it …".
            Damage::File(e) => write!(f, "{e}"),
            Damage::Record(e) => write!(f, "the event log is damaged: {e}"),
            Damage::Decode {
                tenant,
                seq,
                source,
            } => write!(
                f,
                "the event log is damaged: tenant {tenant} event {seq}: {source}"
            ),
            Damage::Apply(e) => write!(f, "the event log is damaged: {e}"),
            Damage::Inconsistent(what) => write!(f, "the event log is damaged: {what}"),
        }
    }
}

impl std::error::Error for Damage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Damage::File(e) | Damage::Record(e) => Some(e.as_ref()),
            Damage::Decode { source, .. } => Some(source),
            Damage::Apply(e) => Some(e),
            Damage::Inconsistent(_) => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Damaged { .. } => Error::Corrupt(Damage::File(Arc::new(e))),
            StoreError::Corrupt { .. } => Error::Corrupt(Damage::Record(Arc::new(e))),
            StoreError::Conflict { .. }
            | StoreError::BadAppend(_)
            | StoreError::Backend(_)
            | StoreError::Unavailable(_) => Error::Unavailable(Unavailable::Store(Arc::new(e))),
        }
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        Error::Corrupt(Damage::Apply(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_store_failure_keeps_its_source_and_says_damaged_once() {
        let damaged = Error::from(StoreError::Damaged {
            file: "/data/ledger.redb".into(),
            message: "redb found it corrupt".into(),
        });
        let text = damaged.to_string();
        assert!(
            text.starts_with("the event log file /data/ledger.redb is damaged"),
            "{text}"
        );
        assert_eq!(text.matches("damaged").count(), 1, "{text}");
        let source = damaged.source().expect("the store's error is the source");
        assert!(matches!(
            source.downcast_ref::<StoreError>(),
            Some(StoreError::Damaged { .. })
        ));

        let record = Error::from(StoreError::Corrupt {
            position: 7,
            message: "bad hash".into(),
        });
        assert_eq!(
            record.to_string(),
            "the event log is damaged: record at position 7 is damaged: bad hash"
        );
        assert!(matches!(record, Error::Corrupt(Damage::Record(_))));

        let lost = Error::from(StoreError::Unavailable("connection lost".into()));
        assert_eq!(
            lost.to_string(),
            "the event log is unavailable: storage unavailable: connection lost"
        );
        let Error::Unavailable(Unavailable::Store(store)) = &lost else {
            panic!("{lost:?}");
        };
        assert!(matches!(store.as_ref(), StoreError::Unavailable(_)));
        assert!(lost.source().is_some_and(|s| s.is::<StoreError>()));
    }

    #[test]
    fn every_bad_request_names_its_parameter_and_keeps_its_message() {
        let all = [
            (BadRequest::LimitZero, "limit", "limit must be at least 1"),
            (
                BadRequest::LimitOver { max: 1000 },
                "limit",
                "limit is at most 1000",
            ),
            (
                BadRequest::ListCursor,
                "cursor",
                "the cursor is not one this list gave out",
            ),
            (
                BadRequest::ListCursorOfOtherOrder,
                "cursor",
                "the cursor belongs to a list with another sort or order",
            ),
            (
                BadRequest::TrailCursor,
                "cursor",
                "the cursor is not one this trail gave out",
            ),
            (BadRequest::DaysReversed, "from", "`from` is after `to`"),
            (
                BadRequest::SummaryDays { max: 90 },
                "days",
                "days is 1 to 90",
            ),
            (
                BadRequest::NotInTree {
                    seq: 5,
                    size: 3,
                    events: 3,
                },
                "seq",
                "position 5 is not in a tree of size 3 (the tenant has 3 events)",
            ),
            (
                BadRequest::SizesOutOfRange {
                    from: 4,
                    to: 3,
                    events: 3,
                },
                "size",
                "sizes 4 to 3 are not within 0..=3",
            ),
            (
                BadRequest::Proof(ProofError::WrongLength),
                "size",
                "the proof has the wrong number of hashes",
            ),
            (
                BadRequest::BundleRange {
                    from_seq: 0,
                    to_seq: 3,
                    events: 2,
                },
                "from_seq",
                "the range 0..=3 is not within the tenant's events 1..=2",
            ),
            (
                BadRequest::BundleTooLong { max: 10 },
                "from_seq",
                "a bundle holds at most 10 events",
            ),
        ];
        for (b, parameter, message) in all {
            assert_eq!(b.parameter(), parameter, "{b:?}");
            assert_eq!(b.to_string(), message, "{b:?}");
            assert_eq!(Error::from(b).to_string(), message);
        }
    }
}
