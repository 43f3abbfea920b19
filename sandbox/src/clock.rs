//! The logical clock every provider reads instead of the wall clock.
//!
//! It owns "now" for the whole sandbox: record modification stamps, token expiry, rate-limit windows,
//! daily resets and retention windows all call [`Clock::now_ms`]. Tests freeze it, set it and advance it
//! (in process or through `/_sandbox/clock`) to cross a 10-second window or midnight without sleeping.
//!
//! Invariant: while the clock is [`ClockMode::Frozen`], `now_ms` returns the same value until someone
//! calls `set` or `advance`; while it is [`ClockMode::Running`], it moves at wall-clock speed from its
//! last anchor. `advance` never moves time backwards; `set` may (tests that do so own the consequences).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Milliseconds since the Unix epoch, the unit of every logical timestamp in the sandbox.
pub type Millis = i64;

/// Whether the logical clock moves by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// Time stands still until it is set or advanced.
    Frozen,
    /// Time moves at wall-clock speed from the last anchor.
    Running,
}

/// The shared logical clock.
#[derive(Debug)]
pub struct Clock {
    inner: Mutex<Anchor>,
}

#[derive(Debug)]
struct Anchor {
    mode: ClockMode,
    at_ms: Millis,
    wall: Instant,
}

/// A serializable reading of the clock, as the control plane reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    /// Logical now, in epoch milliseconds.
    pub now_ms: Millis,
    /// Logical now, RFC 3339 with milliseconds.
    pub now: String,
    /// Frozen or running.
    pub mode: ClockMode,
}

impl Clock {
    /// A clock reading `start_ms` now, in the given mode.
    pub fn new(start_ms: Millis, mode: ClockMode) -> Self {
        Self { inner: Mutex::new(Anchor { mode, at_ms: start_ms, wall: Instant::now() }) }
    }

    /// Logical now in epoch milliseconds.
    pub fn now_ms(&self) -> Millis {
        let a = self.inner.lock();
        Self::read(&a)
    }

    fn read(a: &Anchor) -> Millis {
        match a.mode {
            ClockMode::Frozen => a.at_ms,
            ClockMode::Running => {
                let elapsed = i64::try_from(a.wall.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
                a.at_ms.saturating_add(elapsed)
            }
        }
    }

    /// Logical now as a UTC date-time.
    pub fn now(&self) -> DateTime<Utc> {
        to_datetime(self.now_ms())
    }

    /// The current mode.
    pub fn mode(&self) -> ClockMode {
        self.inner.lock().mode
    }

    /// Sets logical now to `at_ms` (keeping the mode).
    pub fn set(&self, at_ms: Millis) {
        let mut a = self.inner.lock();
        a.at_ms = at_ms;
        a.wall = Instant::now();
    }

    /// Moves logical now forward by `by_ms` (negative values are treated as zero).
    pub fn advance(&self, by_ms: Millis) {
        let mut a = self.inner.lock();
        let now = Self::read(&a);
        a.at_ms = now.saturating_add(by_ms.max(0));
        a.wall = Instant::now();
    }

    /// Stops the clock at the current logical time.
    pub fn freeze(&self) {
        let mut a = self.inner.lock();
        a.at_ms = Self::read(&a);
        a.mode = ClockMode::Frozen;
    }

    /// Lets the clock run at wall-clock speed from the current logical time.
    pub fn resume(&self) {
        let mut a = self.inner.lock();
        a.at_ms = Self::read(&a);
        a.wall = Instant::now();
        a.mode = ClockMode::Running;
    }

    /// A serializable reading.
    pub fn reading(&self) -> ClockReading {
        let (now_ms, mode) = {
            let a = self.inner.lock();
            (Self::read(&a), a.mode)
        };
        ClockReading { now_ms, now: format_ms(now_ms), mode }
    }
}

/// Converts epoch milliseconds to a UTC date-time (clamped to the representable range).
pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Formats epoch milliseconds as RFC 3339 UTC with exactly three fractional digits
/// (`2025-01-31T17:00:00.000Z`), the shape HubSpot uses for `createdAt` and date-time properties.
pub fn format_ms(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a point in time given as epoch milliseconds (`"1735689600000"`), RFC 3339
/// (`"2025-01-01T00:00:00Z"`, any offset) or a plain date (`"2025-01-01"`, midnight UTC).
pub fn parse_time(s: &str) -> Option<Millis> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) || (s.starts_with('-') && s.len() > 1) {
        return s.parse::<i64>().ok();
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|dt| dt.and_utc().timestamp_millis());
    }
    None
}

/// Parses a duration such as `"10s"`, `"1500ms"`, `"30m"`, `"2h"`, `"1d"` or a bare number of
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<Millis> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_stands_still_and_advances_on_demand() {
        let c = Clock::new(1_000, ClockMode::Frozen);
        assert_eq!(c.now_ms(), 1_000);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.now_ms(), 1_000);
        c.advance(10_000);
        assert_eq!(c.now_ms(), 11_000);
        c.advance(-5);
        assert_eq!(c.now_ms(), 11_000);
        c.set(500);
        assert_eq!(c.now_ms(), 500);
    }

    #[test]
    fn running_clock_moves_and_freezes() {
        let c = Clock::new(0, ClockMode::Running);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.freeze();
        let t = c.now_ms();
        assert!(t >= 20, "running clock should have moved, got {t}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.now_ms(), t);
        c.resume();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(c.now_ms() > t);
    }

    #[test]
    fn parses_and_formats_times() {
        assert_eq!(format_ms(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
        assert_eq!(parse_time("1735689600000"), Some(1_735_689_600_000));
        assert_eq!(parse_time("2025-01-01T00:00:00Z"), Some(1_735_689_600_000));
        assert_eq!(parse_time("2025-01-01T02:00:00+02:00"), Some(1_735_689_600_000));
        assert_eq!(parse_time("2025-01-01"), Some(1_735_689_600_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("1500"), Some(1_500));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("x"), None);
    }
}
