//! Salesforce's API limits for one org (`crm-providers.md` §2.2), on the logical clock.
//!
//! * Total API requests per rolling 24 hours, per org: every REST call under
//!   `/services/data/vNN.0/` counts once (a composite call counts once); the number depends on the
//!   edition and user licences. Exhausted → 403 `REQUEST_LIMIT_EXCEEDED` ("TotalRequests Limit
//!   exceeded."). `Sforce-Limit-Info: api-usage=used/limit` reports it.
//! * Concurrent long-running requests: a request that has been running for 20 seconds (logical
//!   time) or longer is "long-running"; while the org has as many of those in flight as its edition
//!   allows (Developer 5, others 25), new requests are refused with 403 `REQUEST_LIMIT_EXCEEDED`
//!   ("ConcurrentRequests (Concurrent API Requests) Limit exceeded."). Requests become slow through
//!   the org's `slow_requests` hold (the sandbox's stand-in for a slow query).
//!
//! Invariant: a refused request counts nowhere (neither the 24-hour allocation nor the in-flight
//! set), so throttling starts exactly at the configured numbers.

use crate::clock::Millis;
use crate::config::SalesforceEdition;
use crate::faults::glob_match;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The rolling window of the total-requests allocation.
pub const DAY_MS: Millis = 86_400_000;
/// How long a request must run to count as long-running (documented: 20 seconds).
pub const LONG_REQUEST_MS: Millis = 20_000;

/// A hold the imitation applies to matching API requests before serving them, so they run long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSpec {
    /// How long to hold each matching request, wall-clock milliseconds.
    pub ms: u64,
    /// Only paths matching this glob (all API paths when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Hold at most this many requests (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
}

/// The configurable numbers, as the control plane shows and patches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Total API requests per rolling 24 hours.
    pub daily: u64,
    /// Concurrent long-running requests admitted.
    pub concurrent_long_requests: u64,
    /// Running time after which a request counts as long-running, milliseconds.
    pub long_request_ms: Millis,
}

impl Quota {
    /// The documented numbers for an edition.
    pub fn for_edition(edition: SalesforceEdition, licenses: u64) -> Self {
        Self {
            daily: edition.daily_requests(licenses),
            concurrent_long_requests: edition.concurrent_long_requests(),
            long_request_ms: LONG_REQUEST_MS,
        }
    }
}

/// A patch to an org's limits (`PATCH /_sandbox/salesforce/accounts/{id}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPatch {
    /// Edition: resets the allocation and the concurrency cap to its numbers.
    #[serde(default)]
    pub edition: Option<SalesforceEdition>,
    /// User licences (with `edition`, or the current one).
    #[serde(default)]
    pub user_licenses: Option<u64>,
    /// Total API requests per rolling 24 hours.
    #[serde(default)]
    pub daily: Option<u64>,
    /// Pre-consumes the allocation: the window then holds exactly this many requests, stamped now.
    #[serde(default)]
    pub daily_used: Option<u64>,
    /// Concurrent long-running requests admitted.
    #[serde(default)]
    pub concurrent_long_requests: Option<u64>,
    /// Running time after which a request counts as long-running, milliseconds.
    #[serde(default)]
    pub long_request_ms: Option<Millis>,
    /// Holds matching API requests (see [`HoldSpec`]); `null` or absent leaves it, use
    /// `clear_slow_requests` to remove it.
    #[serde(default)]
    pub slow_requests: Option<HoldSpec>,
    /// Removes the hold.
    #[serde(default)]
    pub clear_slow_requests: bool,
    /// Forgets every counted request.
    #[serde(default)]
    pub reset_usage: bool,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The rolling 24-hour allocation is used up.
    TotalRequests,
    /// Too many long-running requests in flight.
    ConcurrentRequests,
}

/// An admitted request: its in-flight ticket and the allocation after counting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// In-flight ticket (release it with [`OrgLimits::exit`]).
    pub ticket: u64,
    /// Requests counted in the window, this one included.
    pub used: u64,
    /// The allocation.
    pub limit: u64,
}

/// One org's limiter state.
#[derive(Clone, Debug)]
pub struct OrgLimits {
    /// The edition.
    pub edition: SalesforceEdition,
    /// User licences.
    pub user_licenses: u64,
    /// The numbers.
    pub quota: Quota,
    hits: VecDeque<(Millis, u64)>,
    used: u64,
    in_flight: BTreeMap<u64, Millis>,
    next_ticket: u64,
    hold: Option<(HoldSpec, u64)>,
}

impl OrgLimits {
    /// Limits for an edition.
    pub fn new(edition: SalesforceEdition, user_licenses: u64) -> Self {
        Self {
            edition,
            user_licenses,
            quota: Quota::for_edition(edition, user_licenses),
            hits: VecDeque::new(),
            used: 0,
            in_flight: BTreeMap::new(),
            next_ticket: 0,
            hold: None,
        }
    }

    fn prune(&mut self, now: Millis) {
        while let Some(&(t, n)) = self.hits.front() {
            if now - t >= DAY_MS {
                self.hits.pop_front();
                self.used -= n;
            } else {
                break;
            }
        }
    }

    /// Requests counted in the 24 hours ending now, and the allocation.
    pub fn usage(&mut self, now: Millis) -> (u64, u64) {
        self.prune(now);
        (self.used, self.quota.daily)
    }

    /// Long-running requests in flight at `now`.
    pub fn long_running(&self, now: Millis) -> u64 {
        self.in_flight.values().filter(|start| now - **start >= self.quota.long_request_ms).count() as u64
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.len() as u64
    }

    /// Admits one request (allocation first, then the long-running cap), counting it.
    pub fn admit(&mut self, now: Millis) -> Result<Admitted, Refusal> {
        self.prune(now);
        if self.used >= self.quota.daily {
            return Err(Refusal::TotalRequests);
        }
        if self.long_running(now) >= self.quota.concurrent_long_requests {
            return Err(Refusal::ConcurrentRequests);
        }
        match self.hits.back_mut() {
            Some((t, n)) if *t == now => *n += 1,
            _ => self.hits.push_back((now, 1)),
        }
        self.used += 1;
        self.next_ticket += 1;
        self.in_flight.insert(self.next_ticket, now);
        Ok(Admitted { ticket: self.next_ticket, used: self.used, limit: self.quota.daily })
    }

    /// Marks an admitted request finished.
    pub fn exit(&mut self, ticket: u64) {
        self.in_flight.remove(&ticket);
    }

    /// How long to hold a request to `path`, if the org's hold matches (spending one of its `times`).
    pub fn take_hold(&mut self, path: &str) -> Option<u64> {
        let (spec, fired) = self.hold.as_mut()?;
        if spec.path.as_deref().is_some_and(|p| !glob_match(p, path))
            || spec.times.is_some_and(|t| *fired >= t)
        {
            return None;
        }
        *fired += 1;
        Some(spec.ms)
    }

    /// The hold, if any.
    pub fn hold(&self) -> Option<&HoldSpec> {
        self.hold.as_ref().map(|(h, _)| h)
    }

    /// Applies a control-plane patch.
    pub fn apply(&mut self, patch: &LimitPatch, now: Millis) -> Result<(), String> {
        if patch.edition.is_some() || patch.user_licenses.is_some() {
            self.edition = patch.edition.unwrap_or(self.edition);
            self.user_licenses = patch.user_licenses.unwrap_or(self.user_licenses);
            let q = Quota::for_edition(self.edition, self.user_licenses);
            self.quota.daily = q.daily;
            self.quota.concurrent_long_requests = q.concurrent_long_requests;
        }
        if let Some(d) = patch.daily {
            self.quota.daily = d;
        }
        if let Some(c) = patch.concurrent_long_requests {
            self.quota.concurrent_long_requests = c;
        }
        if let Some(ms) = patch.long_request_ms {
            if ms < 0 {
                return Err("long_request_ms must not be negative".to_owned());
            }
            self.quota.long_request_ms = ms;
        }
        if patch.reset_usage {
            self.hits.clear();
            self.used = 0;
        }
        if let Some(u) = patch.daily_used {
            self.hits.clear();
            self.hits.push_back((now, u));
            self.used = u;
        }
        if patch.clear_slow_requests {
            self.hold = None;
        }
        if let Some(h) = &patch.slow_requests {
            self.hold = Some((h.clone(), 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocation_refuses_exactly_at_the_limit_and_rolls_over_24_hours() {
        let mut l = OrgLimits::new(SalesforceEdition::Enterprise, 15);
        assert_eq!(l.quota.daily, 115_000, "the documented worked example");
        l.apply(&LimitPatch { daily: Some(3), ..LimitPatch::default() }, 0).expect("patch");
        for i in 1..=3 {
            let a = l.admit(i * 1000).expect("admitted");
            l.exit(a.ticket);
            assert_eq!((a.used, a.limit), (i as u64, 3));
        }
        assert_eq!(l.admit(5_000), Err(Refusal::TotalRequests));
        assert_eq!(l.usage(5_000), (3, 3), "a refused request is not counted");
        assert_eq!(l.admit(DAY_MS + 999), Err(Refusal::TotalRequests));
        assert!(l.admit(DAY_MS + 1_000).is_ok(), "the first request aged out");
    }

    #[test]
    fn long_running_requests_block_new_ones_at_the_cap() {
        let mut l = OrgLimits::new(SalesforceEdition::Developer, 0);
        assert_eq!(l.quota.concurrent_long_requests, 5);
        l.apply(&LimitPatch { concurrent_long_requests: Some(2), ..LimitPatch::default() }, 0)
            .expect("patch");
        let a = l.admit(0).expect("a");
        let b = l.admit(0).expect("b");
        assert!(l.admit(19_999).is_ok(), "not long-running yet");
        assert_eq!(l.long_running(20_000), 2);
        assert_eq!(l.admit(20_000), Err(Refusal::ConcurrentRequests));
        l.exit(a.ticket);
        assert!(l.admit(20_000).is_ok());
        l.exit(b.ticket);
    }

    #[test]
    fn holds_match_paths_and_spend_their_budget() {
        let mut l = OrgLimits::new(SalesforceEdition::Enterprise, 10);
        let hold = HoldSpec { ms: 50, path: Some("*/query".into()), times: Some(1) };
        l.apply(&LimitPatch { slow_requests: Some(hold), ..LimitPatch::default() }, 0).expect("patch");
        assert_eq!(l.take_hold("/services/data/v62.0/limits"), None);
        assert_eq!(l.take_hold("/services/data/v62.0/query"), Some(50));
        assert_eq!(l.take_hold("/services/data/v62.0/query"), None);
    }
}
