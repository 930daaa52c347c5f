//! The trail as an export writes it, rendered straight into a reusable
//! buffer: byte for byte what serializing an [`AuditEntry`] writes (the
//! JSON line) and what [`AuditEntry::csv_row`] holds (the CSV fields),
//! without building the entry's strings and `Value`s for every record.
//!
//! [`AuditEntry`] stays the definition: its fields, their order, and a
//! `details` object whose members serde_json keeps sorted by name. This
//! module writes the same members in that order for the event kinds a
//! trail is made of (keys created, used, revoked, rotated; credits; users
//! removed), and hands the rare kinds to [`AuditEntry`]'s own `details`.
//! `crates/runtime/tests/export_render.rs` holds the two to the same bytes
//! for every kind, and to a fixture `AuditEntry` wrote.
//!
//! [`AuditEntry`]: crate::views::AuditEntry
//! [`AuditEntry::csv_row`]: crate::views::AuditEntry::csv_row

use keyledger_core::{Actor, Cause, EventKind, KeyId, Timestamp};
use keyledger_store::Record;

use crate::views::{details_value, meta_json};

/// Appends the record's trail entry as one JSON line (with its `\n`):
/// the bytes of `serde_json::to_writer(&AuditEntry::from(r))` and a newline.
pub fn json_line(r: &Record, out: &mut Vec<u8>) {
    let e = &r.event;
    out.extend_from_slice(b"{\"position\":");
    u64_(out, r.seq);
    out.extend_from_slice(b",\"seq\":");
    u64_(out, r.seq);
    out.extend_from_slice(b",\"at\":");
    time(out, e.at);
    out.extend_from_slice(b",\"tenant\":");
    str_(out, e.tenant.as_str());
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(e.type_name().as_bytes());
    out.extend_from_slice(b"\",\"actor\":{\"type\":\"");
    match &e.actor {
        Actor::User { id } => {
            out.extend_from_slice(b"user\",\"id\":");
            str_(out, id.as_str());
            out.extend_from_slice(b",\"display\":\"");
        }
        Actor::ApiKey { key_id, name, .. } => {
            out.extend_from_slice(b"api_key\",\"id\":\"");
            key_id_(out, *key_id);
            out.extend_from_slice(b"\",\"name\":");
            str_(out, name);
            out.extend_from_slice(b",\"display\":\"");
        }
        Actor::Operator => out.extend_from_slice(b"operator\",\"display\":\""),
        Actor::System => out.extend_from_slice(b"system\",\"display\":\""),
    }
    actor_display(out, &e.actor, true);
    out.extend_from_slice(b"\"},\"key_id\":");
    match e.key_id() {
        Some(k) => {
            out.push(b'"');
            key_id_(out, k);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"details\":");
    details_json(r, out);
    out.extend_from_slice(b",\"hash\":\"");
    hex32(out, &r.hash);
    out.extend_from_slice(b"\",\"prev_hash\":\"");
    hex32(out, &r.prev_hash);
    out.extend_from_slice(b"\"}\n");
}

/// The CSV fields of one record, rendered into one reusable buffer: what
/// [`AuditEntry::csv_row`](crate::views::AuditEntry::csv_row) holds, in
/// [`AuditEntry::CSV_HEADER`](crate::views::AuditEntry::CSV_HEADER) order.
#[derive(Debug, Default)]
pub struct CsvFields {
    buf: Vec<u8>,
}

impl CsvFields {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders `r`'s fields, replacing the previous record's; returns them
    /// (for `csv::Writer::write_record`).
    pub fn fill(&mut self, r: &Record) -> [&[u8]; 9] {
        let e = &r.event;
        let b = &mut self.buf;
        b.clear();
        let mut ends = [0; 9];
        u64_(b, r.seq);
        ends[0] = b.len();
        u64_(b, r.seq);
        ends[1] = b.len();
        time_text(b, e.at);
        ends[2] = b.len();
        b.extend_from_slice(e.tenant.as_str().as_bytes());
        ends[3] = b.len();
        b.extend_from_slice(e.type_name().as_bytes());
        ends[4] = b.len();
        actor_display(b, &e.actor, false);
        ends[5] = b.len();
        if let Some(k) = e.key_id() {
            key_id_(b, k);
        }
        ends[6] = b.len();
        details_json(r, b);
        ends[7] = b.len();
        hex32(b, &r.hash);
        ends[8] = b.len();
        let mut start = 0;
        ends.map(|end| {
            let field = &self.buf[start..end];
            start = end;
            field
        })
    }
}

/// Appends the entry's `details` object: what `AuditEntry::from(r).details`
/// serializes to (members sorted by name, as serde_json's map keeps them).
pub fn details_json(r: &Record, out: &mut Vec<u8>) {
    match &r.event.kind {
        EventKind::KeyCreated(c) => {
            out.push(b'{');
            if let Some(credits) = &c.credits {
                out.extend_from_slice(b"\"credits\":{\"refill\":");
                match &credits.refill {
                    None => out.extend_from_slice(b"null"),
                    Some(f) => {
                        out.extend_from_slice(b"{\"amount\":");
                        u64_(out, f.amount);
                        out.extend_from_slice(b",\"day\":");
                        match f.day {
                            Some(d) => u64_(out, u64::from(d)),
                            None => out.extend_from_slice(b"null"),
                        }
                        out.extend_from_slice(b",\"interval\":");
                        str_(out, f.interval.as_str());
                        out.push(b'}');
                    }
                }
                out.extend_from_slice(b",\"remaining\":");
                u64_(out, credits.remaining);
                out.extend_from_slice(b"},");
            }
            out.extend_from_slice(b"\"description\":");
            opt_str(out, c.description.as_deref());
            out.extend_from_slice(b",\"expires_at\":");
            opt_time(out, c.expires_at);
            if !c.limits.is_empty() {
                out.extend_from_slice(b",\"limits\":[");
                for (i, l) in c.limits.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"duration\":");
                    u64_(out, l.duration_ms);
                    out.extend_from_slice(b",\"limit\":");
                    u64_(out, l.limit);
                    out.extend_from_slice(b",\"name\":");
                    str_(out, &l.name);
                    out.push(b'}');
                }
                out.push(b']');
            }
            out.extend_from_slice(b",\"masked\":");
            str_(out, &c.masked);
            if let Some(m) = &c.meta {
                out.extend_from_slice(b",\"meta\":");
                value(out, &meta_json(m));
            }
            out.extend_from_slice(b",\"name\":");
            str_(out, &c.name);
            out.extend_from_slice(b",\"owner\":");
            str_(out, c.owner.as_str());
            out.extend_from_slice(b",\"rotated_from\":");
            opt_key_id(out, c.rotated_from);
            out.extend_from_slice(b",\"scopes\":[");
            for (i, s) in c.scopes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                str_(out, s.as_str());
            }
            out.extend_from_slice(b"]}");
        }
        EventKind::KeyUsed(u) => {
            let c = &u.counts;
            out.push(b'{');
            if c.credits_spent > 0 {
                out.extend_from_slice(b"\"credits_spent\":");
                u64_(out, c.credits_spent);
                out.push(b',');
            }
            out.extend_from_slice(b"\"expired\":");
            u64_(out, c.expired);
            out.extend_from_slice(b",\"insufficient_scope\":");
            u64_(out, c.insufficient_scope);
            out.extend_from_slice(b",\"last_valid_at\":");
            opt_time(out, u.last_valid_at);
            if c.rate_limited > 0 {
                out.extend_from_slice(b",\"rate_limited\":");
                u64_(out, c.rate_limited);
            }
            out.extend_from_slice(b",\"revoked\":");
            u64_(out, c.revoked);
            if c.usage_exceeded > 0 {
                out.extend_from_slice(b",\"usage_exceeded\":");
                u64_(out, c.usage_exceeded);
            }
            out.extend_from_slice(b",\"valid\":");
            u64_(out, c.valid);
            out.extend_from_slice(b",\"window_end\":");
            time(out, u.window_end);
            out.extend_from_slice(b",\"window_start\":");
            time(out, u.window_start);
            out.push(b'}');
        }
        EventKind::CreditsReserved(c) => amount_epoch(out, c.amount, c.epoch),
        EventKind::CreditsReleased(c) => amount_epoch(out, c.amount, c.epoch),
        EventKind::CreditsRefilled(c) => {
            out.extend_from_slice(b"{\"due_at\":");
            time(out, c.due_at);
            out.extend_from_slice(b",\"remaining\":");
            u64_(out, c.remaining);
            out.push(b'}');
        }
        EventKind::KeyRevoked(v) => {
            out.extend_from_slice(b"{\"cause\":");
            match &v.cause {
                None => out.extend_from_slice(b"null"),
                Some(Cause::UserRemoved { user_id, seq }) => {
                    out.extend_from_slice(b"{\"seq\":");
                    u64_(out, *seq);
                    out.extend_from_slice(b",\"user_removed\":");
                    str_(out, user_id.as_str());
                    out.push(b'}');
                }
            }
            out.extend_from_slice(b",\"reason\":");
            str_(out, v.reason.as_str());
            out.push(b'}');
        }
        EventKind::KeyRotated(v) => {
            out.extend_from_slice(b"{\"expires_at\":");
            time(out, v.expires_at);
            out.extend_from_slice(b",\"new_key_id\":\"");
            key_id_(out, v.new_key_id);
            out.extend_from_slice(b"\"}");
        }
        EventKind::UserRemoved(u) => {
            out.extend_from_slice(b"{\"user_id\":");
            str_(out, u.user_id.as_str());
            out.push(b'}');
        }
        // The rare kinds, as the entry renders them.
        EventKind::KeyUpdated(_)
        | EventKind::AuditRead(_)
        | EventKind::LogRecovered(_)
        | EventKind::KeyLeaked(_)
        | EventKind::WebhookSubscribed(_)
        | EventKind::WebhookDeleted(_) => value(out, &details_value(&r.event)),
    }
}

fn amount_epoch(out: &mut Vec<u8>, amount: u64, epoch: u64) {
    out.extend_from_slice(b"{\"amount\":");
    u64_(out, amount);
    out.extend_from_slice(b",\"epoch\":");
    u64_(out, epoch);
    out.push(b'}');
}

/// A JSON value, as serde_json writes it (compact).
fn value(out: &mut Vec<u8>, v: &serde_json::Value) {
    // Display of a `Value` is serde_json's compact form; writing a `Value`
    // into memory cannot fail.
    use std::io::Write;
    let _ = write!(out, "{v}");
}

/// The actor as the trail reads it (`User: alice`, `API Key: CI/CD`), JSON
/// string-escaped when `escaped` (without the quotes).
fn actor_display(out: &mut Vec<u8>, a: &Actor, escaped: bool) {
    let (prefix, rest): (&[u8], &str) = match a {
        Actor::User { id } => (b"User: ", id.as_str()),
        Actor::ApiKey { name, .. } => (b"API Key: ", name),
        Actor::Operator => (b"Operator", ""),
        Actor::System => (b"System", ""),
    };
    out.extend_from_slice(prefix);
    if escaped {
        escape(out, rest);
    } else {
        out.extend_from_slice(rest.as_bytes());
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str_(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_time(out: &mut Vec<u8>, t: Option<Timestamp>) {
    match t {
        Some(t) => time(out, t),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_key_id(out: &mut Vec<u8>, k: Option<KeyId>) {
    match k {
        Some(k) => {
            out.push(b'"');
            key_id_(out, k);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as serde_json escapes it: `"` and `\`, and the
/// control characters below 0x20 (`\b \t \n \f \r` by name, the others as
/// `\u00xx`); everything else as it is.
fn str_(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape(out, s);
    out.push(b'"');
}

fn escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A number in decimal.
fn u64_(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `key_<ulid>`: the ULID in Crockford's base 32, 26 characters, as the
/// `ulid` crate writes it.
fn key_id_(out: &mut Vec<u8>, k: KeyId) {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut v = k.to_u128();
    let mut buf = [0u8; 26];
    for c in buf.iter_mut().rev() {
        *c = ALPHABET[(v & 0x1f) as usize];
        v >>= 5;
    }
    out.extend_from_slice(KeyId::PREFIX.as_bytes());
    out.extend_from_slice(&buf);
}

/// Lower-case hex of a hash.
fn hex32(out: &mut Vec<u8>, h: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for (i, b) in h.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out.extend_from_slice(&buf);
}

/// A time as a JSON string.
fn time(out: &mut Vec<u8>, t: Timestamp) {
    out.push(b'"');
    time_text(out, t);
    out.push(b'"');
}

/// [`Timestamp::to_rfc3339`]: `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]Z`, as many
/// fractional digits as needed in steps of three (chrono's `AutoSi`).
fn time_text(out: &mut Vec<u8>, t: Timestamp) {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    // Timestamps are kept within 1970..=9999, four-digit years.
    const MAX_MICROS: i64 = 253_402_300_799_999_999;
    let micros = t.as_micros();
    if !(0..=MAX_MICROS).contains(&micros) {
        out.extend_from_slice(t.to_rfc3339().as_bytes());
        return;
    }
    let (days, in_day) = (micros / MICROS_PER_DAY, micros % MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, n: i64, digits: usize| {
        let mut n = n;
        for i in (at..at + digits).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, secs / 3600, 2);
    put(14, secs / 60 % 60, 2);
    put(17, secs % 60, 2);
    put(20, frac, 6);
    let len = if frac == 0 {
        19
    } else if frac % 1000 == 0 {
        23
    } else {
        26
    };
    out.extend_from_slice(&buf[..len]);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), for days >= 0.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
