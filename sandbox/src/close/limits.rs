//! Close's rate limits for one organization (`crm-providers.md` §5.2), built on
//! [`crate::ratelimit::TokenBucket`].
//!
//! Limits apply per **endpoint group** (method class plus resource path, e.g. `GET /api/v1/lead/`
//! and `POST /api/v1/activity/call/` are different groups), per **API key** (an OAuth grant counts
//! as one key), and per **organization** at `org_multiplier` (3) times the key limit. Each
//! (group, key) and (group, org) pair has its own bucket of `limit` tokens refilled at
//! `limit / window_secs` per second. Close does not publish the per-group numbers; the defaults
//! are per class (`read` 40/s, as in the 3P 429 fixture; `write` 20/s, the docs' example; `search`
//! 16/s and `me` 160/s, observed values; `event` 40/s).
//!
//! A class in `stricter` mode ("some endpoints may have stricter (unpredictable) limits") has an
//! extra bucket of that many requests per window whose 429s carry only `retry-after` and
//! `rate_reset`.
//!
//! Invariant: a refused request takes no token from any bucket, so throttling starts exactly at the
//! configured limit; the `RateLimit` header describes the bucket closest to empty after the request.

use crate::clock::Millis;
use crate::ratelimit::TokenBucket;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// The org limit is this many times the per-key limit (documented: "3 times higher").
pub const ORG_MULTIPLIER: u64 = 3;
/// Enforcement window, seconds (the legacy 429 body's `rate_window: 1`).
pub const WINDOW_SECS: f64 = 1.0;
/// Default per-key limits per class of endpoint group.
pub const DEFAULT_LIMITS: [(&str, u64); 5] =
    [("read", 40), ("write", 20), ("search", 16), ("event", 40), ("me", 160)];

/// The endpoint group and class of a request: `("GET /api/v1/lead/", "read")`.
pub fn group(method: &str, path: &str) -> (String, &'static str) {
    let rest = path.trim_start_matches("/api/v1/");
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let first = segs.next().unwrap_or("");
    let resource = match first {
        "activity" | "data" | "status" | "custom_field" => {
            format!("{first}/{}", segs.next().unwrap_or(""))
        }
        other => other.to_owned(),
    };
    let read = method.eq_ignore_ascii_case("GET");
    let class = match (first, read) {
        ("data", _) => "search",
        ("me", _) => "me",
        ("event", _) => "event",
        (_, true) => "read",
        (_, false) => "write",
    };
    let verb = if read { "GET" } else { "POST/PUT/DELETE" };
    (format!("{verb} /api/v1/{resource}/"), class)
}

/// The numbers of one organization.
#[derive(Clone, Debug, Serialize)]
pub struct Quota {
    /// Per-key limit per class.
    pub limits: BTreeMap<String, u64>,
    /// Window length, seconds.
    pub window_secs: f64,
    /// Org limit = key limit × this.
    pub org_multiplier: u64,
    /// Classes in stricter mode: requests per window before an unpredictable 429.
    pub stricter: BTreeMap<String, u64>,
    /// Most leads + contacts + opportunities the plan allows (402 past it), if limited.
    pub record_limit: Option<u64>,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            limits: DEFAULT_LIMITS.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            window_secs: WINDOW_SECS,
            org_multiplier: ORG_MULTIPLIER,
            stricter: BTreeMap::new(),
            record_limit: None,
        }
    }
}

/// A quota patch (`PATCH /_sandbox/close/accounts/{id}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPatch {
    /// Sets every class's per-key limit.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Per-class per-key limits (`read`, `write`, `search`, `event`, `me`).
    #[serde(default)]
    pub limits: Option<BTreeMap<String, u64>>,
    /// Window length, seconds.
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Org multiplier.
    #[serde(default)]
    pub org_multiplier: Option<u64>,
    /// Stricter mode per class (0 turns it off).
    #[serde(default)]
    pub stricter: Option<BTreeMap<String, u64>>,
    /// Plan record limit (`null` removes it).
    #[serde(default)]
    pub record_limit: Option<Value>,
    /// Refills every bucket.
    #[serde(default)]
    pub reset_buckets: bool,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// `key`, `org` or `stricter`.
    pub kind: &'static str,
    /// The limit hit.
    pub limit: u64,
    /// Its window, seconds.
    pub window_secs: f64,
    /// Seconds until a request would be admitted.
    pub reset_secs: f64,
    /// The `RateLimit` header to send (none for stricter refusals).
    pub header: Option<String>,
    /// The endpoint group.
    pub group: String,
}

/// One organization's buckets.
#[derive(Clone, Debug, Default)]
pub struct AccountLimits {
    /// The numbers.
    pub quota: Quota,
    keys: HashMap<(String, String), TokenBucket>,
    orgs: HashMap<String, TokenBucket>,
    strict: HashMap<(String, String), TokenBucket>,
}

fn bucket<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, TokenBucket>,
    key: K,
    limit: u64,
    window: f64,
) -> &mut TokenBucket {
    let rate = limit as f64 / window.max(0.001);
    let b = map.entry(key).or_insert_with(|| TokenBucket::new(limit as f64, rate));
    if (b.capacity - limit as f64).abs() > f64::EPSILON || (b.refill_per_sec - rate).abs() > f64::EPSILON {
        *b = TokenBucket::new(limit as f64, rate);
    }
    b
}

/// What one request takes from a bucket: a hair under one token, so that refills accumulated in
/// floating point over several steps (0.995 + 0.005) admit exactly when a whole token is back.
const COST: f64 = 1.0 - 1e-9;

/// Formats the `RateLimit` header.
pub fn header(limit: u64, remaining: u64, reset_secs: f64) -> String {
    format!("limit={limit}, remaining={remaining}, reset={:.3}", reset_secs.max(0.0))
}

fn until_one(b: &mut TokenBucket, now: Millis) -> f64 {
    let have = b.available(now);
    if have >= COST || b.refill_per_sec <= 0.0 { 0.0 } else { (1.0 - have) / b.refill_per_sec }
}

impl AccountLimits {
    /// The per-key limit of a class.
    pub fn limit_of(&self, class: &str) -> u64 {
        self.quota.limits.get(class).copied().unwrap_or(40)
    }

    /// Admits one request of `group`/`class` by `key` at `now`, returning the `RateLimit` header.
    pub fn admit(&mut self, group: &str, class: &str, key: &str, now: Millis) -> Result<String, Refusal> {
        let limit = self.limit_of(class);
        let window = self.quota.window_secs;
        let org_limit = limit.saturating_mul(self.quota.org_multiplier);
        if let Some(strict) = self.quota.stricter.get(class).copied().filter(|n| *n > 0) {
            let b = bucket(&mut self.strict, (group.to_owned(), key.to_owned()), strict, window);
            if b.available(now) < COST {
                return Err(Refusal {
                    kind: "stricter",
                    limit: strict,
                    window_secs: window,
                    reset_secs: until_one(b, now),
                    header: None,
                    group: group.to_owned(),
                });
            }
        }
        let kb = bucket(&mut self.keys, (group.to_owned(), key.to_owned()), limit, window);
        if kb.available(now) < COST {
            let reset = until_one(kb, now);
            return Err(Refusal {
                kind: "key",
                limit,
                window_secs: window,
                reset_secs: reset,
                header: Some(header(limit, 0, reset)),
                group: group.to_owned(),
            });
        }
        let ob = bucket(&mut self.orgs, group.to_owned(), org_limit, window);
        if ob.available(now) < COST {
            let reset = until_one(ob, now);
            return Err(Refusal {
                kind: "org",
                limit: org_limit,
                window_secs: window,
                reset_secs: reset,
                header: Some(header(org_limit, 0, reset)),
                group: group.to_owned(),
            });
        }
        let _ = ob.try_take(now, COST);
        let org_left = ob.available(now);
        let org_reset = ob.seconds_until_full(now);
        let kb = bucket(&mut self.keys, (group.to_owned(), key.to_owned()), limit, window);
        let _ = kb.try_take(now, COST);
        let key_left = kb.available(now);
        let key_reset = kb.seconds_until_full(now);
        if self.quota.stricter.get(class).is_some_and(|n| *n > 0) {
            let strict = self.quota.stricter[class];
            let _ = bucket(&mut self.strict, (group.to_owned(), key.to_owned()), strict, window)
                .try_take(now, COST);
        }
        // Report the limit closest to being hit.
        let key_ratio = key_left / limit.max(1) as f64;
        let org_ratio = org_left / org_limit.max(1) as f64;
        Ok(if org_ratio < key_ratio {
            header(org_limit, (org_left + 1e-6).floor() as u64, org_reset)
        } else {
            header(limit, (key_left + 1e-6).floor() as u64, key_reset)
        })
    }

    /// Applies a control-plane patch.
    pub fn apply(&mut self, p: &LimitPatch) -> Result<(), String> {
        let classes: Vec<String> = DEFAULT_LIMITS.iter().map(|(k, _)| (*k).to_owned()).collect();
        if let Some(l) = p.limit {
            for c in &classes {
                self.quota.limits.insert(c.clone(), l);
            }
        }
        for (k, v) in p.limits.iter().flatten() {
            if !classes.contains(k) {
                return Err(format!("unknown limit class {k:?} (read, write, search, event, me)"));
            }
            self.quota.limits.insert(k.clone(), *v);
        }
        if let Some(w) = p.window_secs {
            if w.is_nan() || w <= 0.0 {
                return Err("window_secs must be positive".to_owned());
            }
            self.quota.window_secs = w;
        }
        if let Some(m) = p.org_multiplier {
            self.quota.org_multiplier = m.max(1);
        }
        for (k, v) in p.stricter.iter().flatten() {
            if !classes.contains(k) {
                return Err(format!("unknown limit class {k:?}"));
            }
            if *v == 0 {
                self.quota.stricter.remove(k);
            } else {
                self.quota.stricter.insert(k.clone(), *v);
            }
        }
        match &p.record_limit {
            None => {}
            Some(Value::Null) => self.quota.record_limit = None,
            Some(v) => {
                self.quota.record_limit =
                    Some(v.as_u64().ok_or_else(|| "record_limit must be a number or null".to_owned())?);
            }
        }
        if p.reset_buckets {
            self.keys.clear();
            self.orgs.clear();
            self.strict.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_by_method_class_and_resource() {
        assert_eq!(group("GET", "/api/v1/lead/lead_x/"), ("GET /api/v1/lead/".to_owned(), "read"));
        assert_eq!(group("PUT", "/api/v1/lead/lead_x/").1, "write");
        assert_eq!(group("POST", "/api/v1/activity/call/").0, "POST/PUT/DELETE /api/v1/activity/call/");
        assert_eq!(group("POST", "/api/v1/data/search/").1, "search");
        assert_eq!(group("GET", "/api/v1/me/").1, "me");
    }

    #[test]
    fn key_limit_then_org_limit_at_three_times() {
        let mut l = AccountLimits::default();
        l.apply(&LimitPatch { limit: Some(2), ..LimitPatch::default() }).expect("patch");
        let g = "GET /api/v1/lead/";
        assert_eq!(l.admit(g, "read", "k1", 0).expect("1"), "limit=2, remaining=1, reset=0.500");
        assert!(l.admit(g, "read", "k1", 0).is_ok());
        let r = l.admit(g, "read", "k1", 0).expect_err("key limit");
        assert_eq!((r.kind, r.limit), ("key", 2));
        assert!((r.reset_secs - 0.5).abs() < 1e-6);
        for k in ["k2", "k2", "k3", "k3"] {
            assert!(l.admit(g, "read", k, 0).is_ok());
        }
        let r = l.admit(g, "read", "k4", 0).expect_err("org limit");
        assert_eq!((r.kind, r.limit), ("org", 6));
        // Another group has its own buckets.
        assert!(l.admit("GET /api/v1/contact/", "read", "k1", 0).is_ok());
        // Half a second later one token is back.
        assert!(l.admit(g, "read", "k1", 500).is_ok());
    }
}
