//! Rate-limit primitives that providers configure with their documented numbers.
//!
//! * [`RollingWindow`]: at most `limit` requests in any `window_ms` (HubSpot's ten-secondly burst and
//!   search limiter, Pipedrive's 2-second burst, Salesforce's rolling 24 h).
//! * [`DailyCounter`]: at most `limit` per calendar day in a time zone, resetting at local midnight
//!   (HubSpot's daily cap, Pipedrive's token budget).
//! * [`TokenBucket`]: a refilling bucket (Close's per-endpoint-group limits).
//! * [`Concurrency`]: an in-flight counter with a cap and the maximum observed (Zoho, Salesforce
//!   long-running requests).
//!
//! They all read time from the caller (logical milliseconds), never from the wall clock, and they are
//! plain data: the provider holds them behind its own lock. Invariant: a refused request consumes
//! nothing, so throttling starts exactly at the configured limit and `remaining` never goes below 0.

use crate::clock::{Millis, to_datetime};
use chrono::{Days, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::Serialize;
use std::collections::VecDeque;

/// Outcome of asking a limiter for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Admit {
    /// Admitted; this many requests remain in the current window or day.
    Allowed {
        /// Requests left after this one.
        remaining: u64,
    },
    /// Refused; room frees up after this many milliseconds.
    Refused {
        /// Milliseconds until the next request would be admitted.
        retry_after_ms: Millis,
    },
}

/// At most `limit` requests in any window of `window_ms` ending now.
#[derive(Clone, Debug)]
pub struct RollingWindow {
    /// Requests allowed per window.
    pub limit: u64,
    /// Window length.
    pub window_ms: Millis,
    hits: VecDeque<Millis>,
}

impl RollingWindow {
    /// A window admitting `limit` requests per `window_ms`.
    pub fn new(limit: u64, window_ms: Millis) -> Self {
        Self { limit, window_ms, hits: VecDeque::new() }
    }

    fn prune(&mut self, now: Millis) {
        while let Some(&t) = self.hits.front() {
            if now - t >= self.window_ms {
                self.hits.pop_front();
            } else {
                break;
            }
        }
    }

    /// Requests counted in the window ending at `now`.
    pub fn used(&mut self, now: Millis) -> u64 {
        self.prune(now);
        self.hits.len() as u64
    }

    /// Requests still admissible at `now`.
    pub fn remaining(&mut self, now: Millis) -> u64 {
        self.limit.saturating_sub(self.used(now))
    }

    /// Checks without consuming.
    pub fn check(&mut self, now: Millis) -> Admit {
        self.prune(now);
        if (self.hits.len() as u64) < self.limit {
            Admit::Allowed { remaining: self.limit - self.hits.len() as u64 - 1 }
        } else {
            let retry = if self.limit == 0 {
                self.window_ms
            } else {
                // The request that frees a slot is the one `limit` places from the end.
                let idx = self.hits.len() - self.limit as usize;
                self.hits.get(idx).map(|t| t + self.window_ms - now).unwrap_or(self.window_ms)
            };
            Admit::Refused { retry_after_ms: retry.max(1) }
        }
    }

    /// Admits and counts one request, or refuses it without counting.
    pub fn try_acquire(&mut self, now: Millis) -> Admit {
        let a = self.check(now);
        if matches!(a, Admit::Allowed { .. }) {
            self.hits.push_back(now);
        }
        a
    }

    /// Counts one request whatever the limit (for counters that are not enforced).
    pub fn record(&mut self, now: Millis) {
        self.prune(now);
        self.hits.push_back(now);
    }

    /// Forgets every counted request.
    pub fn clear(&mut self) {
        self.hits.clear();
    }
}

/// At most `limit` requests per local calendar day in `tz`.
#[derive(Clone, Debug)]
pub struct DailyCounter {
    /// Requests allowed per day.
    pub limit: u64,
    /// The time zone whose midnight resets the counter.
    pub tz: Tz,
    day: Option<chrono::NaiveDate>,
    used: u64,
}

impl DailyCounter {
    /// A counter admitting `limit` requests per day in `tz`.
    pub fn new(limit: u64, tz: Tz) -> Self {
        Self { limit, tz, day: None, used: 0 }
    }

    fn roll(&mut self, now: Millis) {
        let today = to_datetime(now).with_timezone(&self.tz).date_naive();
        if self.day != Some(today) {
            self.day = Some(today);
            self.used = 0;
        }
    }

    /// Requests counted today.
    pub fn used(&mut self, now: Millis) -> u64 {
        self.roll(now);
        self.used
    }

    /// Requests left today.
    pub fn remaining(&mut self, now: Millis) -> u64 {
        self.limit.saturating_sub(self.used(now))
    }

    /// Sets today's count (to pre-consume the budget in tests).
    pub fn set_used(&mut self, now: Millis, used: u64) {
        self.roll(now);
        self.used = used;
    }

    /// Milliseconds from `now` to the next local midnight.
    pub fn ms_until_reset(&self, now: Millis) -> Millis {
        let local = to_datetime(now).with_timezone(&self.tz);
        let next_day = local.date_naive().checked_add_days(Days::new(1));
        let midnight = next_day
            .map(|d| d.and_time(NaiveTime::MIN))
            .and_then(|naive| self.tz.from_local_datetime(&naive).earliest());
        match midnight {
            Some(m) => (m.timestamp_millis() - now).max(1),
            None => 86_400_000,
        }
    }

    /// Admits and counts one request, or refuses it without counting.
    pub fn try_acquire(&mut self, now: Millis) -> Admit {
        self.roll(now);
        if self.used < self.limit {
            self.used += 1;
            Admit::Allowed { remaining: self.limit - self.used }
        } else {
            Admit::Refused { retry_after_ms: self.ms_until_reset(now) }
        }
    }
}

/// A bucket of `capacity` tokens refilled at `refill_per_sec`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Most tokens the bucket holds.
    pub capacity: f64,
    /// Tokens added per second.
    pub refill_per_sec: f64,
    tokens: f64,
    last: Option<Millis>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        Self { capacity, refill_per_sec, tokens: capacity, last: None }
    }

    fn refill(&mut self, now: Millis) {
        if let Some(last) = self.last {
            let dt = (now - last).max(0) as f64 / 1000.0;
            self.tokens = (self.tokens + dt * self.refill_per_sec).min(self.capacity);
        }
        self.last = Some(now);
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Millis) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Seconds until the bucket is full again.
    pub fn seconds_until_full(&mut self, now: Millis) -> f64 {
        self.refill(now);
        if self.refill_per_sec <= 0.0 {
            return f64::INFINITY;
        }
        (self.capacity - self.tokens) / self.refill_per_sec
    }

    /// Takes `cost` tokens, or refuses without taking any.
    pub fn try_take(&mut self, now: Millis, cost: f64) -> Admit {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            Admit::Allowed { remaining: self.tokens.floor() as u64 }
        } else {
            let missing = cost - self.tokens;
            let ms = if self.refill_per_sec > 0.0 {
                (missing / self.refill_per_sec * 1000.0).ceil() as Millis
            } else {
                Millis::MAX / 4
            };
            Admit::Refused { retry_after_ms: ms.max(1) }
        }
    }
}

/// An in-flight counter with an optional cap and the maximum observed.
#[derive(Clone, Debug, Default)]
pub struct Concurrency {
    /// Most concurrent requests admitted; `None` admits everything (and only observes).
    pub limit: Option<u64>,
    current: u64,
    max_seen: u64,
}

impl Concurrency {
    /// A counter with a cap.
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, current: 0, max_seen: 0 }
    }

    /// Admits one more request (returns false, counting nothing, if at the cap).
    pub fn enter(&mut self) -> bool {
        if self.limit.is_some_and(|l| self.current >= l) {
            return false;
        }
        self.current += 1;
        self.max_seen = self.max_seen.max(self.current);
        true
    }

    /// Marks one request finished.
    pub fn exit(&mut self) {
        self.current = self.current.saturating_sub(1);
    }

    /// Requests in flight now.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The most requests ever in flight at once (since the last reset).
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }

    /// Resets the maximum to the current value.
    pub fn reset_max(&mut self) {
        self.max_seen = self.current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_refuses_exactly_at_the_limit_and_frees_after_the_window() {
        let mut w = RollingWindow::new(3, 10_000);
        assert_eq!(w.try_acquire(0), Admit::Allowed { remaining: 2 });
        assert_eq!(w.try_acquire(1_000), Admit::Allowed { remaining: 1 });
        assert_eq!(w.try_acquire(2_000), Admit::Allowed { remaining: 0 });
        assert_eq!(w.try_acquire(2_000), Admit::Refused { retry_after_ms: 8_000 });
        assert_eq!(w.used(2_000), 3, "a refused request is not counted");
        assert_eq!(w.try_acquire(10_000), Admit::Allowed { remaining: 0 });
        assert!(matches!(w.try_acquire(10_500), Admit::Refused { .. }));
    }

    #[test]
    fn daily_counter_resets_at_local_midnight() {
        let tz: Tz = "America/New_York".parse().expect("tz");
        // 2026-01-05T04:59:00Z is 23:59 in New York.
        let before = crate::clock::parse_time("2026-01-05T04:59:00Z").expect("time");
        let mut d = DailyCounter::new(2, tz);
        assert!(matches!(d.try_acquire(before), Admit::Allowed { remaining: 1 }));
        assert!(matches!(d.try_acquire(before), Admit::Allowed { remaining: 0 }));
        match d.try_acquire(before) {
            Admit::Refused { retry_after_ms } => assert_eq!(retry_after_ms, 60_000),
            other => panic!("expected refusal, got {other:?}"),
        }
        assert!(matches!(d.try_acquire(before + 60_000), Admit::Allowed { remaining: 1 }));
    }

    #[test]
    fn token_bucket_refills() {
        let mut b = TokenBucket::new(2.0, 1.0);
        assert!(matches!(b.try_take(0, 1.0), Admit::Allowed { .. }));
        assert!(matches!(b.try_take(0, 1.0), Admit::Allowed { .. }));
        assert_eq!(b.try_take(0, 1.0), Admit::Refused { retry_after_ms: 1_000 });
        assert!(matches!(b.try_take(1_000, 1.0), Admit::Allowed { .. }));
    }

    #[test]
    fn concurrency_tracks_the_maximum() {
        let mut c = Concurrency::new(Some(2));
        assert!(c.enter());
        assert!(c.enter());
        assert!(!c.enter());
        c.exit();
        assert_eq!(c.current(), 1);
        assert_eq!(c.max_seen(), 2);
    }
}
