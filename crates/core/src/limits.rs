//! Named limits on everything that grows. Units and qualifiers come last so
//! related names sort together.

/// Longest key name, in characters, after trimming.
pub const NAME_CHARS_MAX: usize = 100;
/// Longest key description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 500;
/// Longest tenant id, in bytes (ASCII only).
pub const TENANT_ID_BYTES_MAX: usize = 64;
/// Longest user id, in characters.
pub const USER_ID_CHARS_MAX: usize = 256;
/// Most keys one tenant may hold, revoked ones included (they stay for audit).
pub const KEYS_PER_TENANT_MAX: usize = 1_000_000;
/// Longest rotation grace period: 30 days.
pub const ROTATION_GRACE_SECONDS_MAX: u64 = 30 * 24 * 3600;
/// Most separate ranges of sequence numbers one `AuditRead` event lists;
/// the reads gathered in one window that touch more are recorded with the
/// closest ranges joined (`AuditRead::add`), so an event stays small
/// whatever a reader does.
pub const AUDIT_READ_RANGES_MAX: usize = 32;
/// Longest usage summary window, in days.
pub const SUMMARY_DAYS_MAX: u32 = 366;

const _: () = assert!(NAME_CHARS_MAX < DESCRIPTION_CHARS_MAX);
const _: () = assert!(TENANT_ID_BYTES_MAX <= USER_ID_CHARS_MAX);

/// Most characters of a recovery's reason.
pub const RECOVERY_REASON_CHARS_MAX: usize = 1000;

/// Most secrets one leak report lists (`POST /v1/keys/leaked`); a longer
/// list is refused whole.
pub const LEAK_SECRETS_MAX: usize = 1000;
/// Longest `source` of a leak report, in characters.
pub const LEAK_SOURCE_CHARS_MAX: usize = 100;
/// Longest `url` of a leak report, in characters.
pub const LEAK_URL_CHARS_MAX: usize = 2048;
/// Longest secret-scanning partner name, in characters.
pub const LEAK_PARTNER_CHARS_MAX: usize = 32;
/// Most live webhook subscriptions a tenant may hold.
pub const WEBHOOKS_PER_TENANT_MAX: usize = 20;
/// Longest webhook URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;
/// Most event types one subscription names.
pub const WEBHOOK_EVENT_TYPES_MAX: usize = 16;
