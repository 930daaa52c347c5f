//! Time as the core sees it: microseconds since the Unix epoch, UTC, always
//! passed in by the caller.

use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// An instant, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// The earliest instant keyledger accepts: the Unix epoch.
const MIN_MICROS: i64 = 0;
/// The latest instant keyledger accepts: 9999-12-31T23:59:59.999999Z.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// A time could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From microseconds since the epoch, clamped to the accepted range.
    pub const fn from_micros(micros: i64) -> Self {
        if micros < MIN_MICROS {
            Timestamp(MIN_MICROS)
        } else if micros > MAX_MICROS {
            Timestamp(MAX_MICROS)
        } else {
            Timestamp(micros)
        }
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// From a chrono time.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self::from_micros(t.timestamp_micros())
    }

    /// As a chrono time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    /// Reads an RFC 3339 time (any offset; stored as UTC).
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        let t = DateTime::parse_from_rfc3339(s.trim())
            .map_err(|e| TimeError(format!("`{s}` is not an RFC 3339 time: {e}")))?;
        let micros = t.timestamp_micros();
        if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
            return Err(TimeError(format!("`{s}` is outside 1970..9999")));
        }
        Ok(Timestamp(micros))
    }

    /// RFC 3339 in UTC with a `Z`, with as many fractional digits as needed.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// The UTC day this instant falls on.
    pub fn day(self) -> Day {
        Day((self.0.div_euclid(MICROS_PER_DAY)) as i32)
    }

    /// This instant plus whole seconds, saturating at the end of the range.
    pub fn plus_seconds(self, seconds: u64) -> Self {
        let micros = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Self::from_micros(self.0.saturating_add(micros))
    }

    /// This instant minus whole seconds, saturating at the epoch.
    pub fn minus_seconds(self, seconds: u64) -> Self {
        let micros = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Self::from_micros(self.0.saturating_sub(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i32);

impl Day {
    /// From days since the epoch.
    pub const fn from_days(days: i32) -> Self {
        Day(days)
    }

    /// Days since the epoch.
    pub const fn as_days(self) -> i32 {
        self.0
    }

    /// The day after this one.
    pub const fn next(self) -> Day {
        Day(self.0 + 1)
    }

    /// This day minus `n` days.
    pub const fn minus(self, n: i32) -> Day {
        Day(self.0 - n)
    }

    /// The first instant of this day.
    pub fn start(self) -> Timestamp {
        Timestamp::from_micros(i64::from(self.0) * MICROS_PER_DAY)
    }

    /// Reads `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Self, TimeError> {
        let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map_err(|e| TimeError(format!("`{s}` is not a date (YYYY-MM-DD): {e}")))?;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let days = (d - epoch).num_days();
        if !(0..=2_932_896).contains(&days) {
            return Err(TimeError(format!("`{s}` is outside 1970..9999")));
        }
        Ok(Day(days as i32))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let d = epoch + chrono::Days::new(self.0.max(0) as u64);
        write!(f, "{}", d.format("%Y-%m-%d"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_and_day() {
        let t = Timestamp::parse_rfc3339("2026-11-23T10:15:30.5+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T09:15:30.500Z");
        assert_eq!(t.day().to_string(), "2026-11-23");
        assert_eq!(Day::parse("2026-11-23").unwrap(), t.day());
        assert_eq!(t.day().start().to_rfc3339(), "2026-11-23T00:00:00Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(Day::parse("2026-13-01").is_err());
    }
}
