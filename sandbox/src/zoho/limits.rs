//! Zoho CRM's API limits for one org (`crm-providers.md` §4.2), on the logical clock.
//!
//! * Credits: a rolling 24-hour allocation per org, by edition: Free 5,000; Standard 50,000 + 250 per
//!   user (at most 100,000); Professional 50,000 + 500 per user (at most 3,000,000); Enterprise
//!   50,000 + 1,000 per user (at most 5,000,000); Ultimate 50,000 + 2,000 per user (unlimited), plus
//!   add-on credits. Most calls cost 1 credit; insert, update and upsert cost 1 per 10 records.
//! * Concurrency: simultaneous in-flight calls per org and OAuth app: Free 5, Standard 10,
//!   Professional 15, Enterprise 20, Ultimate 25; "heavy" calls (sorted or custom-view listings,
//!   search, COQL, writes of more than 10 records) also count against a sub-concurrency of 10.
//!
//! Invariant: a refused request consumes nothing (no credit, no slot), so throttling starts exactly at
//! the configured numbers; an admitted request holds its slot until its [`SlotGuard`] drops, also when
//! the client goes away mid-request.

use crate::clock::Millis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The credit window: rolling 24 hours.
pub const CREDIT_WINDOW_MS: Millis = 86_400_000;
/// Base credits of every paid edition.
pub const BASE_CREDITS: u64 = 50_000;
/// Sub-concurrency limit of heavy calls.
pub const SUB_CONCURRENCY: u64 = 10;
/// Records per credit on insert, update and upsert.
pub const RECORDS_PER_CREDIT: usize = 10;

/// A Zoho CRM edition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Edition {
    /// Free: 5,000 credits, concurrency 5.
    Free,
    /// Standard / Starter: 50,000 + 250 per user (max 100,000), concurrency 10.
    Standard,
    /// Professional: 50,000 + 500 per user (max 3,000,000), concurrency 15.
    Professional,
    /// Enterprise / Zoho One: 50,000 + 1,000 per user (max 5,000,000), concurrency 20.
    Enterprise,
    /// Ultimate / CRM Plus: 50,000 + 2,000 per user (unlimited), concurrency 25.
    Ultimate,
}

impl Edition {
    /// Credits per rolling 24 h for `users` users and `add_on` purchased credits (`None`: unlimited).
    pub fn credits(self, users: u64, add_on: u64) -> Option<u64> {
        let (per_user, max) = match self {
            Edition::Free => return Some(5_000),
            Edition::Standard => (250, Some(100_000)),
            Edition::Professional => (500, Some(3_000_000)),
            Edition::Enterprise => (1_000, Some(5_000_000)),
            Edition::Ultimate => (2_000, None),
        };
        let total = BASE_CREDITS + users * per_user + add_on;
        max.map(|m| total.min(m))
    }

    /// Concurrent calls per org and app.
    pub fn concurrency(self) -> u64 {
        match self {
            Edition::Free => 5,
            Edition::Standard => 10,
            Edition::Professional => 15,
            Edition::Enterprise => 20,
            Edition::Ultimate => 25,
        }
    }
}

/// The configurable numbers, as the control plane shows and patches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Edition.
    pub edition: Edition,
    /// Licensed users (scales the credits).
    pub users: u64,
    /// Purchased add-on credits.
    pub add_on_credits: u64,
    /// Credits per rolling 24 h (`null`: unlimited); the edition's formula unless overridden.
    pub credits: Option<u64>,
    /// Concurrent calls per org and OAuth app.
    pub concurrency: u64,
    /// Concurrent heavy calls per org and OAuth app.
    pub sub_concurrency: u64,
}

impl Quota {
    /// The documented numbers for an edition and user count.
    pub fn for_edition(edition: Edition, users: u64, add_on_credits: u64) -> Self {
        Self {
            edition,
            users,
            add_on_credits,
            credits: edition.credits(users, add_on_credits),
            concurrency: edition.concurrency(),
            sub_concurrency: SUB_CONCURRENCY,
        }
    }
}

/// A patch to an org's limits (`PATCH /_sandbox/zoho/accounts/{id}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPatch {
    /// Edition: resets credits and concurrency to the edition's numbers.
    #[serde(default)]
    pub edition: Option<Edition>,
    /// Licensed users (recomputes the credits).
    #[serde(default)]
    pub users: Option<u64>,
    /// Add-on credits (recomputes the credits).
    #[serde(default)]
    pub add_on_credits: Option<u64>,
    /// Credits per rolling 24 h (overrides the formula; `0` refuses everything).
    #[serde(default)]
    pub credits: Option<u64>,
    /// Unlimited credits.
    #[serde(default)]
    pub unlimited_credits: bool,
    /// Pre-consumes credits now (they leave the window 24 h later).
    #[serde(default)]
    pub credits_used: Option<u64>,
    /// Concurrency limit.
    #[serde(default)]
    pub concurrency: Option<u64>,
    /// Sub-concurrency limit of heavy calls.
    #[serde(default)]
    pub sub_concurrency: Option<u64>,
    /// Forgets every counted credit.
    #[serde(default)]
    pub reset_windows: bool,
    /// Holds every admitted API request (after it took its slot) until set back to `false`: makes
    /// concurrency observable without timing.
    #[serde(default)]
    pub hold: Option<bool>,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The rolling 24 h credits.
    Credits,
    /// The concurrency (or sub-concurrency) limit.
    Concurrency,
}

/// A refusal.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// Which limit.
    pub limit: Limit,
    /// When a retry could be admitted (credits: when enough credits leave the window).
    pub retry_after_ms: Millis,
}

/// Credits counted in a rolling window.
#[derive(Clone, Debug, Default)]
pub struct CreditWindow {
    entries: VecDeque<(Millis, u64)>,
    used: u64,
}

impl CreditWindow {
    fn prune(&mut self, now: Millis) {
        while let Some(&(t, c)) = self.entries.front() {
            if now - t >= CREDIT_WINDOW_MS {
                self.entries.pop_front();
                self.used -= c;
            } else {
                break;
            }
        }
    }

    /// Credits counted in the window ending at `now`.
    pub fn used(&mut self, now: Millis) -> u64 {
        self.prune(now);
        self.used
    }

    /// Milliseconds until `need` more credits fit under `limit` (0 if they fit now).
    pub fn wait_for(&mut self, now: Millis, limit: u64, need: u64) -> Millis {
        self.prune(now);
        if self.used + need <= limit {
            return 0;
        }
        let mut to_free = self.used + need - limit;
        for (t, c) in &self.entries {
            if *c >= to_free {
                return (t + CREDIT_WINDOW_MS - now).max(1);
            }
            to_free -= c;
        }
        CREDIT_WINDOW_MS
    }

    /// Milliseconds until the oldest counted credit leaves the window (0 when none is counted).
    pub fn until_oldest_expires(&mut self, now: Millis) -> Millis {
        self.prune(now);
        self.entries.front().map(|(t, _)| (t + CREDIT_WINDOW_MS - now).max(0)).unwrap_or(0)
    }

    /// Counts `cost` credits at `now`.
    pub fn add(&mut self, now: Millis, cost: u64) {
        if cost == 0 {
            return;
        }
        match self.entries.back_mut() {
            Some((t, c)) if *t == now => *c += cost,
            _ => self.entries.push_back((now, cost)),
        }
        self.used += cost;
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }
}

/// In-flight calls of one OAuth app in one org.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InFlight {
    /// All calls in flight.
    pub all: u64,
    /// Heavy calls in flight.
    pub heavy: u64,
    /// The most calls ever in flight at once.
    pub max_all: u64,
}

/// What the rate-limit headers report after an admitted call.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Credits per window (`None`: unlimited).
    pub limit: Option<u64>,
    /// Credits left.
    pub remaining: Option<u64>,
    /// Seconds until the oldest counted credit leaves the window.
    pub reset_secs: u64,
}

/// One org's limiter state.
#[derive(Clone, Debug)]
pub struct AccountLimits {
    /// The numbers.
    pub quota: Quota,
    credits: CreditWindow,
    in_flight: BTreeMap<String, InFlight>,
}

impl AccountLimits {
    /// Limits for an edition.
    pub fn new(edition: Edition, users: u64) -> Self {
        Self {
            quota: Quota::for_edition(edition, users, 0),
            credits: CreditWindow::default(),
            in_flight: BTreeMap::new(),
        }
    }

    /// Admits a call of `client` costing `cost` credits, taking a concurrency slot.
    pub fn admit(&mut self, client: &str, heavy: bool, cost: u64, now: Millis) -> Result<Usage, Refusal> {
        let (limit, sub) = (self.quota.concurrency, self.quota.sub_concurrency);
        let slot = self.in_flight.entry(client.to_owned()).or_default();
        if slot.all >= limit || (heavy && slot.heavy >= sub) {
            return Err(Refusal { limit: Limit::Concurrency, retry_after_ms: 1_000 });
        }
        if let Some(max) = self.quota.credits {
            let wait = self.credits.wait_for(now, max, cost);
            if wait > 0 {
                return Err(Refusal { limit: Limit::Credits, retry_after_ms: wait });
            }
        }
        let slot = self.in_flight.entry(client.to_owned()).or_default();
        slot.all += 1;
        slot.max_all = slot.max_all.max(slot.all);
        if heavy {
            slot.heavy += 1;
        }
        self.credits.add(now, cost);
        Ok(self.usage(now))
    }

    /// Frees a slot taken by [`AccountLimits::admit`].
    pub fn release(&mut self, client: &str, heavy: bool) {
        if let Some(slot) = self.in_flight.get_mut(client) {
            slot.all = slot.all.saturating_sub(1);
            if heavy {
                slot.heavy = slot.heavy.saturating_sub(1);
            }
        }
    }

    /// The current credit usage, for headers.
    pub fn usage(&mut self, now: Millis) -> Usage {
        let used = self.credits.used(now);
        Usage {
            limit: self.quota.credits,
            remaining: self.quota.credits.map(|l| l.saturating_sub(used)),
            reset_secs: (self.credits.until_oldest_expires(now) as u64).div_ceil(1000),
        }
    }

    /// Credits counted now.
    pub fn credits_used(&mut self, now: Millis) -> u64 {
        self.credits.used(now)
    }

    /// In-flight calls per OAuth app.
    pub fn in_flight(&self) -> &BTreeMap<String, InFlight> {
        &self.in_flight
    }

    /// Applies a control-plane patch.
    pub fn apply(&mut self, patch: &LimitPatch, now: Millis) -> Result<(), String> {
        let q = &mut self.quota;
        if let Some(e) = patch.edition {
            q.edition = e;
            q.concurrency = e.concurrency();
        }
        if let Some(u) = patch.users {
            q.users = u;
        }
        if let Some(a) = patch.add_on_credits {
            q.add_on_credits = a;
        }
        if patch.edition.is_some() || patch.users.is_some() || patch.add_on_credits.is_some() {
            q.credits = q.edition.credits(q.users, q.add_on_credits);
        }
        if patch.unlimited_credits {
            q.credits = None;
        }
        if let Some(c) = patch.credits {
            q.credits = Some(c);
        }
        if let Some(c) = patch.concurrency {
            q.concurrency = c;
        }
        if let Some(c) = patch.sub_concurrency {
            q.sub_concurrency = c;
        }
        if patch.reset_windows {
            self.credits.clear();
        }
        if let Some(u) = patch.credits_used {
            self.credits.add(now, u);
        }
        Ok(())
    }
}

/// Credits a write of `records` records costs (1 per 10, at least 1).
pub fn write_cost(records: usize) -> u64 {
    records.max(1).div_ceil(RECORDS_PER_CREDIT) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edition_formulas_follow_the_documented_table() {
        assert_eq!(Edition::Free.credits(10, 0), Some(5_000));
        assert_eq!(Edition::Standard.credits(10, 0), Some(52_500));
        assert_eq!(Edition::Standard.credits(1_000, 0), Some(100_000));
        assert_eq!(Edition::Enterprise.credits(10, 5), Some(60_005));
        assert_eq!(Edition::Ultimate.credits(10, 0), None);
        assert_eq!(write_cost(1), 1);
        assert_eq!(write_cost(10), 1);
        assert_eq!(write_cost(11), 2);
        assert_eq!(write_cost(100), 10);
    }

    #[test]
    fn credits_refuse_exactly_at_the_limit_and_roll() {
        let mut l = AccountLimits::new(Edition::Enterprise, 10);
        l.apply(&LimitPatch { credits: Some(3), ..LimitPatch::default() }, 0).expect("patch");
        for i in 0..3 {
            let u = l.admit("c", false, 1, i * 1000).expect("admitted");
            l.release("c", false);
            assert_eq!(u.remaining, Some(2 - i as u64));
        }
        let r = l.admit("c", false, 1, 5_000).expect_err("exhausted");
        assert_eq!(r.limit, Limit::Credits);
        assert_eq!(r.retry_after_ms, CREDIT_WINDOW_MS - 5_000);
        assert_eq!(l.credits_used(5_000), 3, "a refused call costs nothing");
        assert!(l.admit("c", false, 1, CREDIT_WINDOW_MS).is_ok());
    }

    #[test]
    fn concurrency_counts_slots_per_app_and_heavy_calls_separately() {
        let mut l = AccountLimits::new(Edition::Free, 1);
        l.apply(&LimitPatch { concurrency: Some(2), sub_concurrency: Some(1), ..LimitPatch::default() }, 0)
            .expect("patch");
        assert!(l.admit("a", true, 1, 0).is_ok());
        assert_eq!(l.admit("a", true, 1, 0).expect_err("sub").limit, Limit::Concurrency);
        assert!(l.admit("a", false, 1, 0).is_ok());
        assert_eq!(l.admit("a", false, 1, 0).expect_err("full").limit, Limit::Concurrency);
        assert!(l.admit("b", false, 1, 0).is_ok(), "another app has its own slots");
        l.release("a", true);
        assert!(l.admit("a", false, 1, 0).is_ok());
    }
}
