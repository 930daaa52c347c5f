//! keyledger's pure core.
//!
//! Everything here is a function of its inputs: events, commands, decisions,
//! projections and the key format. Nothing in this crate reads the clock,
//! draws randomness, touches a file or knows about HTTP, SQL or redb. The
//! caller passes the time, the new ids and the key material in, so a replay
//! is exact and every test is deterministic.
//!
//! * [`decide()`] takes the current [`Ledger`] state and a [`Command`] and
//!   returns the events to append, or a [`CommandError`].
//! * [`Ledger::apply`] folds one committed event into the key state;
//!   [`Usage::apply`] folds it into the usage rollups.
//! * [`secret`] mints, parses, hashes and masks keys.

pub mod compact;
pub mod decide;
pub mod event;
pub mod history;
pub mod ids;
pub mod leak;
pub mod limits;
pub mod names;
pub mod overlay;
pub mod policy;
pub mod scope;
pub mod secret;
mod shards;
pub mod state;
pub mod time;
pub mod trail;
pub mod usage;
pub mod webhook;

pub use compact::{CreatedBy, Links, Masked};
pub use decide::{
    Command, CommandError, CreateKey, FieldError, Principal, RemoveUser, RevokeKey, RotateKey,
    UpdateKey, decide,
};
pub use event::{
    Actor, AuditRead, AuditReadKind, Cause, CreditsRefilled, CreditsReleased, CreditsReserved,
    Event, EventKind, KeyChange, KeyCreated, KeyLeaked, KeyRevoked, KeyRotated, KeyUpdated,
    KeyUsed, LeakReporter, LogRecovered, Outcome, RevokeReason, SeqRange, UseCounts, UserRemoved,
};
pub use history::{KeyFold, UseTotals, as_use, fold_key, touched_keys};
pub use ids::{IdError, KeyId, TenantId, UserId};
pub use leak::{Leak, ReportLeaked, Reporter};
pub use overlay::{Overlay, StateView, TenantView};
pub use policy::{Credits, Meta, PolicyError, RateLimit, Refill, RefillInterval};
pub use scope::{Scope, ScopeSet};
pub use secret::{KeyPrefix, Secret, SecretHash};
pub use state::{
    CreditState, KeyPolicy, KeyRecord, KeyStatus, Ledger, Listing, Revocation, TenantState,
};
pub use time::{Day, Timestamp};
pub use trail::{AuditFilter, EventType};
pub use usage::{DailyRow, TenantUsage, Usage, UsageSummary, key_day_sums};
pub use webhook::{
    DeleteWebhook, SubscribeWebhook, WEBHOOK_EVENT_TYPES, Webhook, WebhookDeleted, WebhookId,
    WebhookSubscribed,
};
