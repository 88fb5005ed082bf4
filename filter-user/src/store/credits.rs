//! Usage-limited keys as the store keeps them: a key's remaining credits, its refill (how many,
//! how often), the lease a daemon takes from them, and the clock refills are judged by.
//!
//! Refill follows Unkey's rule: at each period boundary (UTC: the hour, midnight, the first of
//! the month) `remaining` is *reset* to the refill amount, whatever was left; it does not add.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use time::{Date, Month, OffsetDateTime, Time};

/// How often a key's credits refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefillPeriod {
    /// At the start of every UTC hour.
    Hour,
    /// At every UTC midnight.
    Day,
    /// At midnight UTC on the first of every month.
    Month,
}

impl RefillPeriod {
    /// The stored / printed name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Parses a stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hour" => Self::Hour,
            "day" => Self::Day,
            "month" => Self::Month,
            _ => return None,
        })
    }

    /// The first period boundary strictly after `t` (unix seconds).
    #[must_use]
    pub fn next_boundary(self, t: i64) -> i64 {
        match self {
            Self::Hour => (t.div_euclid(3600) + 1) * 3600,
            Self::Day => (t.div_euclid(86_400) + 1) * 86_400,
            Self::Month => {
                let Ok(at) = OffsetDateTime::from_unix_timestamp(t) else {
                    return i64::MAX;
                };
                let (year, month) = match at.month() {
                    Month::December => (at.year() + 1, Month::January),
                    m => (at.year(), m.next()),
                };
                Date::from_calendar_date(year, month, 1)
                    .map(|d| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp())
                    .unwrap_or(i64::MAX)
            }
        }
    }
}

/// `N/hour`, `N/day` or `N/month`: reset to `amount` at each boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    /// What `remaining` is reset to.
    pub amount: u64,
    /// How often.
    pub period: RefillPeriod,
}

impl Refill {
    /// Parses `--refill 1000/day`.
    ///
    /// # Errors
    /// A message naming the expected form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a refill like 1000/day (periods: hour, day, month)");
        let (n, p) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            amount: n.trim().parse().map_err(|_| bad())?,
            period: RefillPeriod::parse(p.trim()).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.amount, self.period.as_str())
    }
}

/// A usage-limited key's credits as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    /// Credits the store still holds (a running daemon holds its lease on top of these).
    pub remaining: u64,
    /// The refill, if any.
    pub refill: Option<Refill>,
    /// When the next refill is due (unix seconds), with a refill.
    pub refill_due: Option<i64>,
}

impl Credits {
    /// A new key's credits at `now`: `remaining`, and the first refill at the next boundary.
    #[must_use]
    pub fn new(remaining: u64, refill: Option<Refill>, now: i64) -> Self {
        Self {
            remaining,
            refill,
            refill_due: refill.map(|r| r.period.next_boundary(now)),
        }
    }
}

/// `keys credits ID --set N | --add N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditChange {
    /// `remaining` becomes exactly this (a daemon's unspent lease is forfeited).
    Set(u64),
    /// `remaining` grows by this.
    Add(u64),
}

/// What a lease took from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Credits handed to the daemon (now gone from the store).
    pub granted: u64,
    /// What the store holds after the lease.
    pub left: u64,
    /// When the next refill is due, if the key refills.
    pub refill_due: Option<i64>,
}

/// Tests move the refill clock: the offset (seconds) added to the system clock. The daemon reads
/// it from the file `EDGEFILTER_TEST_CLOCK_FILE` names, when set, on each round of its lease task.
static CLOCK_OFFSET: AtomicI64 = AtomicI64::new(0);

/// The variable naming the test clock's offset file.
pub const TEST_CLOCK_FILE: &str = "EDGEFILTER_TEST_CLOCK_FILE";

/// Re-reads the test clock's offset, when [`TEST_CLOCK_FILE`] is set.
pub fn read_test_clock() {
    if let Some(path) = std::env::var_os(TEST_CLOCK_FILE)
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(offset) = text.trim().parse::<i64>()
    {
        CLOCK_OFFSET.store(offset, Ordering::Relaxed);
    }
}

/// Seconds the refill clock is ahead of the system clock (0 but in tests).
#[must_use]
pub fn clock_offset() -> i64 {
    CLOCK_OFFSET.load(Ordering::Relaxed)
}

/// The refill clock: the system clock plus the test offset.
#[must_use]
pub fn credit_now() -> i64 {
    super::unix_now().saturating_add(clock_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_utc_hours_days_and_months() {
        // 2026-12-02T17:20:00Z
        let t = 1_796_232_000;
        assert_eq!(RefillPeriod::Hour.next_boundary(t), 1_796_234_400);
        assert_eq!(RefillPeriod::Day.next_boundary(t), 1_796_256_000);
        // 2027-01-01T00:00:00Z
        assert_eq!(RefillPeriod::Month.next_boundary(t), 1_798_761_600);
        // Exactly on a boundary: the next one.
        assert_eq!(RefillPeriod::Hour.next_boundary(3600), 7200);
    }

    #[test]
    fn refill_parses_and_prints() {
        let r = Refill::parse("1000/day").unwrap();
        assert_eq!(r.amount, 1000);
        assert_eq!(r.period, RefillPeriod::Day);
        assert_eq!(r.to_string(), "1000/day");
        assert!(Refill::parse("10/week").is_err());
        assert!(Refill::parse("day").is_err());
        assert!(Refill::parse("-1/day").is_err());
    }
}
