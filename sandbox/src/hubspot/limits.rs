//! HubSpot's rate limits for one account (`crm-providers.md` §1.2), built on [`crate::ratelimit`].
//!
//! * Burst: a rolling window (10 s by default) per app. A static private-app token is "the private
//!   app" and gets the tier's burst (100 / 190 / 250); an OAuth token counts per OAuth client and gets
//!   the public-app limit (110 per installing account). Search requests are not counted here.
//! * Daily: a per-account counter resetting at midnight in the account's time zone. Only private-app
//!   (static token) traffic is counted and capped; public OAuth apps have no daily cap.
//! * Search: 5 requests per rolling second per account, whatever the token.
//!
//! Invariant: a refused request counts nowhere; headers always describe the state after the request
//! (so the first refused request sees `Remaining: 0`).

use crate::clock::Millis;
use crate::config::HubSpotTier;
use crate::ratelimit::{Admit, DailyCounter, RollingWindow};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Burst of a public (marketplace) OAuth app per installing account.
pub const PUBLIC_APP_BURST: u64 = 110;
/// The burst window HubSpot documents.
pub const BURST_WINDOW_MS: Millis = 10_000;
/// CRM search: five requests per second per account.
pub const SEARCH_PER_SECOND: u64 = 5;

/// Who is calling, for limit scoping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A static private-app token (`pat-…`).
    PrivateApp,
    /// An OAuth access token.
    OAuth {
        /// The OAuth client.
        client_id: String,
        /// Granted scopes.
        scopes: Vec<String>,
    },
}

/// Which limit was hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The rolling burst window.
    TenSecondlyRolling,
    /// The daily cap.
    Daily,
    /// The search limiter.
    Secondly,
}

impl Policy {
    /// `policyName` in the 429 body.
    pub fn name(self) -> &'static str {
        match self {
            Policy::TenSecondlyRolling => "TEN_SECONDLY_ROLLING",
            Policy::Daily => "DAILY",
            Policy::Secondly => "SECONDLY",
        }
    }

    /// The 429 body's `message`.
    pub fn message(self) -> &'static str {
        match self {
            Policy::TenSecondlyRolling => "You have reached your ten_secondly_rolling limit.",
            Policy::Daily => "You have reached your daily limit.",
            Policy::Secondly => "You have reached your secondly limit.",
        }
    }

    /// Parses a `policy` given to a throttle fault.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TEN_SECONDLY_ROLLING" | "BURST" => Some(Policy::TenSecondlyRolling),
            "DAILY" => Some(Policy::Daily),
            "SECONDLY" | "SEARCH" => Some(Policy::Secondly),
            _ => None,
        }
    }
}

/// A refusal.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// Which limit.
    pub policy: Policy,
    /// When a retry would be admitted.
    pub retry_after_ms: Millis,
    /// Rate-limit headers to send with the 429.
    pub headers: Vec<(&'static str, String)>,
}

/// The configurable numbers, as the control plane shows and patches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Requests per window for the private app (static token).
    pub private_app_burst: u64,
    /// Requests per window per OAuth client.
    pub oauth_burst: u64,
    /// Window length, milliseconds.
    pub window_ms: Millis,
    /// Private-app requests per day.
    pub daily: u64,
    /// Search requests per second.
    pub search_per_second: u64,
}

impl Quota {
    /// The documented numbers for a tier.
    pub fn for_tier(tier: HubSpotTier) -> Self {
        Self {
            private_app_burst: tier.burst(),
            oauth_burst: PUBLIC_APP_BURST,
            window_ms: BURST_WINDOW_MS,
            daily: tier.daily(),
            search_per_second: SEARCH_PER_SECOND,
        }
    }
}

/// A patch to an account's limits (`PATCH /_sandbox/hubspot/accounts/{id}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPatch {
    /// Plan: resets the private-app burst and the daily cap to the tier's numbers.
    #[serde(default)]
    pub tier: Option<HubSpotTier>,
    /// IANA time zone of the daily reset.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Sets both the private-app and the OAuth burst (unless `oauth_burst` is also given).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Private-app burst only.
    #[serde(default)]
    pub private_app_burst: Option<u64>,
    /// OAuth burst only.
    #[serde(default)]
    pub oauth_burst: Option<u64>,
    /// Burst window length.
    #[serde(default)]
    pub window_ms: Option<Millis>,
    /// Daily cap.
    #[serde(default)]
    pub daily: Option<u64>,
    /// Pre-consumes today's budget: sets today's count.
    #[serde(default)]
    pub daily_used: Option<u64>,
    /// Search requests per second.
    #[serde(default)]
    pub search_per_second: Option<u64>,
    /// Forgets the requests counted in the current burst and search windows.
    #[serde(default)]
    pub reset_windows: bool,
}

/// One account's limiter state.
#[derive(Clone, Debug)]
pub struct AccountLimits {
    /// The plan.
    pub tier: HubSpotTier,
    /// Time zone of the daily reset.
    pub tz: Tz,
    /// The numbers.
    pub quota: Quota,
    windows: BTreeMap<String, RollingWindow>,
    daily: DailyCounter,
    search: RollingWindow,
}

impl AccountLimits {
    /// Limits for a tier and time zone.
    pub fn new(tier: HubSpotTier, tz: Tz) -> Self {
        let quota = Quota::for_tier(tier);
        Self {
            tier,
            tz,
            daily: DailyCounter::new(quota.daily, tz),
            search: RollingWindow::new(quota.search_per_second, 1_000),
            windows: BTreeMap::new(),
            quota,
        }
    }

    fn window_key(p: &Principal) -> String {
        match p {
            Principal::PrivateApp => "private-app".to_owned(),
            Principal::OAuth { client_id, .. } => format!("oauth:{client_id}"),
        }
    }

    fn window(&mut self, p: &Principal) -> &mut RollingWindow {
        let (limit, window_ms) = match p {
            Principal::PrivateApp => (self.quota.private_app_burst, self.quota.window_ms),
            Principal::OAuth { .. } => (self.quota.oauth_burst, self.quota.window_ms),
        };
        let w =
            self.windows.entry(Self::window_key(p)).or_insert_with(|| RollingWindow::new(limit, window_ms));
        w.limit = limit;
        w.window_ms = window_ms;
        w
    }

    /// Admits a non-search request, returning the rate-limit headers to send.
    pub fn admit(&mut self, p: &Principal, now: Millis) -> Result<Vec<(&'static str, String)>, Refusal> {
        let private = matches!(p, Principal::PrivateApp);
        let window_ms = self.quota.window_ms;
        if private && self.daily.remaining(now) == 0 {
            let retry = self.daily.ms_until_reset(now);
            let w = self.window(p);
            let headers = headers(w.limit, w.remaining(now), window_ms, Some((self.daily.limit, 0)));
            return Err(Refusal { policy: Policy::Daily, retry_after_ms: retry, headers });
        }
        let w = self.window(p);
        let limit = w.limit;
        match w.try_acquire(now) {
            Admit::Allowed { remaining } => {
                let daily = if private {
                    let _ = self.daily.try_acquire(now);
                    Some((self.daily.limit, self.daily.remaining(now)))
                } else {
                    None
                };
                Ok(headers(limit, remaining, window_ms, daily))
            }
            Admit::Refused { retry_after_ms } => {
                let daily = private.then(|| (self.daily.limit, self.daily.remaining(now)));
                Err(Refusal {
                    policy: Policy::TenSecondlyRolling,
                    retry_after_ms,
                    headers: headers(limit, 0, window_ms, daily),
                })
            }
        }
    }

    /// Admits a search request (no headers either way).
    pub fn admit_search(&mut self, now: Millis) -> Result<(), Refusal> {
        self.search.limit = self.quota.search_per_second;
        match self.search.try_acquire(now) {
            Admit::Allowed { .. } => Ok(()),
            Admit::Refused { retry_after_ms } => {
                Err(Refusal { policy: Policy::Secondly, retry_after_ms, headers: Vec::new() })
            }
        }
    }

    /// Applies a control-plane patch.
    pub fn apply(&mut self, patch: &LimitPatch, now: Millis) -> Result<(), String> {
        if let Some(t) = patch.tier {
            self.tier = t;
            let q = Quota::for_tier(t);
            self.quota.private_app_burst = q.private_app_burst;
            self.quota.daily = q.daily;
        }
        if let Some(tz) = &patch.time_zone {
            self.tz = tz.parse().map_err(|_| format!("unknown time zone {tz:?}"))?;
            let used = self.daily.used(now);
            self.daily = DailyCounter::new(self.quota.daily, self.tz);
            self.daily.set_used(now, used);
        }
        if let Some(b) = patch.burst {
            self.quota.private_app_burst = b;
            self.quota.oauth_burst = b;
        }
        if let Some(b) = patch.private_app_burst {
            self.quota.private_app_burst = b;
        }
        if let Some(b) = patch.oauth_burst {
            self.quota.oauth_burst = b;
        }
        if let Some(w) = patch.window_ms {
            if w <= 0 {
                return Err("window_ms must be positive".to_owned());
            }
            self.quota.window_ms = w;
        }
        if let Some(d) = patch.daily {
            self.quota.daily = d;
        }
        self.daily.limit = self.quota.daily;
        if let Some(u) = patch.daily_used {
            self.daily.set_used(now, u);
        }
        if let Some(s) = patch.search_per_second {
            self.quota.search_per_second = s;
        }
        if patch.reset_windows {
            self.windows.values_mut().for_each(RollingWindow::clear);
            self.search.clear();
        }
        Ok(())
    }

    /// Today's private-app usage.
    pub fn daily_used(&mut self, now: Millis) -> u64 {
        self.daily.used(now)
    }

    /// Requests counted in each burst window now.
    pub fn window_usage(&mut self, now: Millis) -> BTreeMap<String, u64> {
        self.windows.iter_mut().map(|(k, w)| (k.clone(), w.used(now))).collect()
    }
}

fn headers(
    max: u64,
    remaining: u64,
    window_ms: Millis,
    daily: Option<(u64, u64)>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("x-hubspot-ratelimit-interval-milliseconds", window_ms.to_string()),
        ("x-hubspot-ratelimit-max", max.to_string()),
        ("x-hubspot-ratelimit-remaining", remaining.to_string()),
    ];
    if let Some((limit, rem)) = daily {
        h.push(("x-hubspot-ratelimit-daily", limit.to_string()));
        h.push(("x-hubspot-ratelimit-daily-remaining", rem.to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> Tz {
        "UTC".parse().expect("tz")
    }

    #[test]
    fn private_app_gets_daily_headers_oauth_does_not() {
        let mut l = AccountLimits::new(HubSpotTier::Starter, tz());
        let h = l.admit(&Principal::PrivateApp, 0).expect("admitted");
        assert!(h.iter().any(|(k, v)| *k == "x-hubspot-ratelimit-daily-remaining" && v == "249999"));
        assert!(h.iter().any(|(k, v)| *k == "x-hubspot-ratelimit-remaining" && v == "99"));
        let o = Principal::OAuth { client_id: "c".into(), scopes: vec![] };
        let h = l.admit(&o, 0).expect("admitted");
        assert!(!h.iter().any(|(k, _)| k.contains("daily")));
        assert!(h.iter().any(|(k, v)| *k == "x-hubspot-ratelimit-max" && v == "110"));
    }

    #[test]
    fn daily_cap_refuses_before_the_burst() {
        let mut l = AccountLimits::new(HubSpotTier::Starter, tz());
        l.apply(&LimitPatch { daily: Some(2), ..LimitPatch::default() }, 0).expect("patch");
        assert!(l.admit(&Principal::PrivateApp, 0).is_ok());
        assert!(l.admit(&Principal::PrivateApp, 0).is_ok());
        let r = l.admit(&Principal::PrivateApp, 0).expect_err("daily");
        assert_eq!(r.policy, Policy::Daily);
        assert_eq!(r.retry_after_ms, 86_400_000);
    }
}
