//! Key policy as data: credits (with an optional refill), named rate limits
//! and free-form metadata. Pure: validation and the refill calendar only;
//! enforcement lives in the runtime's verification path
//! (`crates/runtime/src/policy.rs`), and the events that change a policy in
//! [`crate::event`].

use chrono::{Datelike, NaiveDate, TimeZone, Utc};

use crate::time::Timestamp;

/// Most credits a key may hold, or a refill may grant.
pub const CREDITS_MAX: u64 = 1_000_000_000_000;
/// Most named rate limits on one key.
pub const RATE_LIMITS_PER_KEY_MAX: usize = 5;
/// Longest rate-limit name, in bytes (`[a-z0-9_.-]`).
pub const RATE_LIMIT_NAME_BYTES_MAX: usize = 32;
/// Shortest rate-limit window, in milliseconds.
pub const RATE_LIMIT_DURATION_MS_MIN: u64 = 100;
/// Longest rate-limit window, in milliseconds: one day.
pub const RATE_LIMIT_DURATION_MS_MAX: u64 = 86_400_000;
/// Most requests one rate limit may allow per window.
pub const RATE_LIMIT_LIMIT_MAX: u64 = 1_000_000_000;
/// Longest metadata, in bytes of compact JSON.
pub const META_BYTES_MAX: usize = 4096;
/// Deepest nesting of metadata (the object itself is depth 1).
pub const META_DEPTH_MAX: usize = 8;

/// A policy value failed its check: names the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The field, in the wire's terms (`credits.refill.day`, `limits[1].name`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A key's credits: how many valid verifications it has left, and how they
/// come back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Credits {
    /// Credits left (in the log: what no node has reserved yet).
    pub remaining: u64,
    /// When and to what they are set back, if ever.
    pub refill: Option<Refill>,
}

/// A refill: at each refill instant the key's credits are set to `amount`
/// (not added to), and credits any node had reserved but not spent lapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Refill {
    /// What the credits are set to.
    pub amount: u64,
    /// How often.
    pub interval: RefillInterval,
    /// For a monthly refill, the day of the month (1–31; a month shorter
    /// than that refills on its last day). `None` means the 1st. Always
    /// `None` for a daily refill.
    pub day: Option<u8>,
}

/// How often credits are refilled. Refills happen at 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefillInterval {
    /// Every day.
    Daily,
    /// Every month, on [`Refill::day`].
    Monthly,
}

impl RefillInterval {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefillInterval::Daily => "daily",
            RefillInterval::Monthly => "monthly",
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Daily, Self::Monthly]
            .into_iter()
            .find(|i| i.as_str() == s)
    }
}

impl Credits {
    /// Checks the numbers and the refill.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.remaining > CREDITS_MAX {
            return Err(PolicyError::new(
                "credits.remaining",
                format!("at most {CREDITS_MAX}"),
            ));
        }
        if let Some(r) = &self.refill {
            r.check()?;
        }
        Ok(())
    }
}

impl Refill {
    /// Checks the amount and the day.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.amount == 0 || self.amount > CREDITS_MAX {
            return Err(PolicyError::new(
                "credits.refill.amount",
                format!("must be 1 to {CREDITS_MAX}"),
            ));
        }
        match (self.interval, self.day) {
            (RefillInterval::Daily, Some(_)) => Err(PolicyError::new(
                "credits.refill.day",
                "only a monthly refill takes a day",
            )),
            (RefillInterval::Monthly, Some(d)) if !(1..=31).contains(&d) => {
                Err(PolicyError::new("credits.refill.day", "must be 1 to 31"))
            }
            _ => Ok(()),
        }
    }

    /// The latest refill instant at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Timestamp {
        let dt = t.to_datetime();
        let today = dt.date_naive();
        match self.interval {
            RefillInterval::Daily => midnight(today),
            RefillInterval::Monthly => {
                let this_month = self.instant_in(today.year(), today.month());
                if this_month <= t {
                    this_month
                } else {
                    let (y, m) = previous_month(today.year(), today.month());
                    self.instant_in(y, m)
                }
            }
        }
    }

    /// The first refill instant strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Timestamp {
        let dt = t.to_datetime();
        let today = dt.date_naive();
        match self.interval {
            RefillInterval::Daily => today
                .succ_opt()
                .map_or(Timestamp::from_micros(i64::MAX), midnight),
            RefillInterval::Monthly => {
                let this_month = self.instant_in(today.year(), today.month());
                if this_month > t {
                    this_month
                } else {
                    let (y, m) = next_month(today.year(), today.month());
                    self.instant_in(y, m)
                }
            }
        }
    }

    /// This refill's instant in a month (its day, clamped to the month's end).
    fn instant_in(&self, year: i32, month: u32) -> Timestamp {
        let want = u32::from(self.day.unwrap_or(1).clamp(1, 31));
        let day = want.min(days_in_month(year, month));
        NaiveDate::from_ymd_opt(year, month, day).map_or(Timestamp::from_micros(i64::MAX), midnight)
    }
}

fn midnight(d: NaiveDate) -> Timestamp {
    d.and_hms_opt(0, 0, 0).map_or(Timestamp::EPOCH, |n| {
        Timestamp::from_datetime(Utc.from_utc_datetime(&n))
    })
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

fn previous_month(y: i32, m: u32) -> (i32, u32) {
    if m == 1 { (y - 1, 12) } else { (y, m - 1) }
}

fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = next_month(y, m);
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

/// A named rate limit: at most `limit` verifications per `duration_ms`,
/// enforced in memory on each node (GCRA).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Its name, unique on the key (`[a-z0-9_.-]`, 1–32 bytes).
    pub name: String,
    /// How many verifications a window admits.
    pub limit: u64,
    /// The window, in milliseconds.
    pub duration_ms: u64,
}

impl RateLimit {
    /// Checks one limit; `at` is its place in the list, for the message.
    pub fn check(&self, at: usize) -> Result<(), PolicyError> {
        let field = |f: &str| format!("limits[{at}].{f}");
        let name_ok = !self.name.is_empty()
            && self.name.len() <= RATE_LIMIT_NAME_BYTES_MAX
            && self.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !name_ok {
            return Err(PolicyError::new(
                field("name"),
                format!("1 to {RATE_LIMIT_NAME_BYTES_MAX} of a-z, 0-9, `_`, `.`, `-`"),
            ));
        }
        if self.limit == 0 || self.limit > RATE_LIMIT_LIMIT_MAX {
            return Err(PolicyError::new(
                field("limit"),
                format!("must be 1 to {RATE_LIMIT_LIMIT_MAX}"),
            ));
        }
        if !(RATE_LIMIT_DURATION_MS_MIN..=RATE_LIMIT_DURATION_MS_MAX).contains(&self.duration_ms) {
            return Err(PolicyError::new(
                field("duration"),
                format!(
                    "must be {RATE_LIMIT_DURATION_MS_MIN} ms to {RATE_LIMIT_DURATION_MS_MAX} ms"
                ),
            ));
        }
        Ok(())
    }

    /// Checks a key's whole list: each limit, how many, and unique names.
    pub fn check_all(limits: &[RateLimit]) -> Result<(), PolicyError> {
        if limits.len() > RATE_LIMITS_PER_KEY_MAX {
            return Err(PolicyError::new(
                "limits",
                format!("at most {RATE_LIMITS_PER_KEY_MAX} per key"),
            ));
        }
        for (i, l) in limits.iter().enumerate() {
            l.check(i)?;
            if limits[..i].iter().any(|o| o.name == l.name) {
                return Err(PolicyError::new(
                    format!("limits[{i}].name"),
                    format!("`{}` is named twice", l.name),
                ));
            }
        }
        Ok(())
    }
}

/// A key's metadata: a JSON object, kept as its compact text (at most
/// [`META_BYTES_MAX`] bytes). The edge parses and re-serializes what a client
/// sends; the core keeps the text and checks its size and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Meta(String);

impl Meta {
    /// Metadata from the compact JSON text of an object.
    pub fn new(json: String) -> Result<Self, PolicyError> {
        if json.len() > META_BYTES_MAX {
            return Err(PolicyError::new(
                "meta",
                format!("at most {META_BYTES_MAX} bytes of JSON"),
            ));
        }
        if !(json.starts_with('{') && json.ends_with('}')) {
            return Err(PolicyError::new("meta", "must be a JSON object"));
        }
        Ok(Meta(json))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn daily_refills_fall_at_utc_midnight() {
        let r = Refill {
            amount: 10,
            interval: RefillInterval::Daily,
            day: None,
        };
        assert_eq!(
            r.next_after(at("2026-12-07T14:00:00Z")),
            at("2026-12-08T00:00:00Z")
        );
        assert_eq!(
            r.next_after(at("2026-12-08T00:00:00Z")),
            at("2026-12-09T00:00:00Z")
        );
        assert_eq!(
            r.last_at_or_before(at("2026-12-08T00:00:00Z")),
            at("2026-12-08T00:00:00Z")
        );
    }

    #[test]
    fn monthly_refills_clamp_to_the_months_end() {
        let r = Refill {
            amount: 10,
            interval: RefillInterval::Monthly,
            day: Some(31),
        };
        assert_eq!(
            r.next_after(at("2027-02-01T00:00:00Z")),
            at("2027-02-28T00:00:00Z")
        );
        assert_eq!(
            r.next_after(at("2027-02-28T00:00:00Z")),
            at("2027-03-31T00:00:00Z")
        );
        assert_eq!(
            r.last_at_or_before(at("2027-03-15T00:00:00Z")),
            at("2027-02-28T00:00:00Z")
        );
        let first = Refill { day: None, ..r };
        assert_eq!(
            first.next_after(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn checks_name_the_field() {
        let bad = Refill {
            amount: 1,
            interval: RefillInterval::Daily,
            day: Some(3),
        };
        assert_eq!(bad.check().unwrap_err().field, "credits.refill.day");
        let limits = vec![
            RateLimit {
                name: "burst".into(),
                limit: 10,
                duration_ms: 1000,
            },
            RateLimit {
                name: "burst".into(),
                limit: 100,
                duration_ms: 60_000,
            },
        ];
        assert_eq!(
            RateLimit::check_all(&limits).unwrap_err().field,
            "limits[1].name"
        );
        assert!(Meta::new("[1]".into()).is_err());
        assert!(Meta::new("{\"plan\":\"pro\"}".into()).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn every_instant_lies_between_two_refills(
            micros in 0i64..4_102_444_800_000_000,
            monthly: bool,
            day in 1u8..=31,
        ) {
            let r = Refill {
                amount: 1,
                interval: if monthly { RefillInterval::Monthly } else { RefillInterval::Daily },
                day: monthly.then_some(day),
            };
            let t = Timestamp::from_micros(micros);
            let last = r.last_at_or_before(t);
            let next = r.next_after(t);
            proptest::prop_assert!(last <= t && t < next);
            proptest::prop_assert_eq!(r.next_after(last), next);
        }
    }
}
