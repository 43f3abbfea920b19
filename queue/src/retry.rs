//! Retry policy: exponential backoff with jitter, configurable per job type.
//!
//! The cap for attempt `n` (1-based) is `min(max, base * 2^(n-1))`. With full jitter (the
//! default, per AWS's "Exponential Backoff and Jitter") the delay is uniform in `[0, cap]`,
//! which spreads a thundering herd of retries best; with equal jitter it is uniform in
//! `[cap/2, cap]`, which keeps delays non-decreasing from one attempt to the next.
//! A provider's Retry-After bypasses this entirely: the job is scheduled exactly then.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;

/// First retry's cap. One second: long enough for a transient 5xx to clear, short enough
/// that a blip costs little latency.
pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
/// Largest delay. Ten minutes: a provider outage longer than that is better handled by the
/// circuit breaker pausing the lane than by ever-longer retries.
pub const DEFAULT_MAX: Duration = Duration::from_secs(600);

/// How the delay is drawn under the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, cap]`.
    #[default]
    Full,
    /// Uniform in `[cap/2, cap]`.
    Equal,
    /// Exactly `cap` (tests and debugging).
    None,
}

/// Backoff for one job type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Cap of the first retry.
    pub base: Duration,
    /// Largest cap.
    pub max: Duration,
    /// Jitter mode.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: DEFAULT_BASE, max: DEFAULT_MAX, jitter: Jitter::Full }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn cap(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exp;
        let cap_ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(cap_ms).min(self.max)
    }

    /// The delay after failed attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.cap(attempt);
        let cap_ms = cap.as_millis() as u64;
        let mut rng = rand::rng();
        match self.jitter {
            Jitter::Full => Duration::from_millis(rng.random_range(0..=cap_ms)),
            Jitter::Equal => Duration::from_millis(rng.random_range(cap_ms / 2..=cap_ms)),
            Jitter::None => cap,
        }
    }
}

/// Retry policies by job type, with a default.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicies {
    default: RetryPolicy,
    by_type: HashMap<String, RetryPolicy>,
}

impl RetryPolicies {
    /// Policies that all use `default`.
    pub fn new(default: RetryPolicy) -> Self {
        Self { default, by_type: HashMap::new() }
    }

    /// Sets the policy of one job type.
    pub fn with(mut self, job_type: impl Into<String>, policy: RetryPolicy) -> Self {
        self.by_type.insert(job_type.into(), policy);
        self
    }

    /// The policy for a job type.
    pub fn for_type(&self, job_type: &str) -> &RetryPolicy {
        self.by_type.get(job_type).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caps_double_until_the_max() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: Jitter::None,
        };
        let caps: Vec<u128> = (1..=6).map(|a| p.cap(a).as_millis()).collect();
        assert_eq!(caps, vec![100, 200, 400, 800, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn full_jitter_stays_under_the_cap(attempt in 1u32..40, base_ms in 1u64..10_000) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), max: DEFAULT_MAX, jitter: Jitter::Full };
            prop_assert!(p.delay(attempt) <= p.cap(attempt));
        }

        #[test]
        fn equal_jitter_never_shrinks_while_the_cap_doubles(attempt in 1u32..30, base_ms in 1u64..10_000) {
            let p = RetryPolicy { base: Duration::from_millis(base_ms), max: DEFAULT_MAX, jitter: Jitter::Equal };
            // Once the max clamps the cap, consecutive delays are independent draws.
            prop_assume!(p.cap(attempt + 1) == p.cap(attempt) * 2);
            let d1 = p.delay(attempt);
            let d2 = p.delay(attempt + 1);
            prop_assert!(d1 <= p.cap(attempt));
            prop_assert!(d2 >= d1, "{d2:?} < {d1:?}");
        }
    }
}
