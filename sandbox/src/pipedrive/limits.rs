//! Pipedrive's rate limits for one company (`crm-providers.md` §3.2), built on [`crate::ratelimit`].
//!
//! * Daily token budget, per company, shared by API-token and OAuth traffic: `30,000 × plan
//!   multiplier × seats + top-ups` tokens, resetting at midnight in the "server" time zone. Each
//!   request costs its endpoint's tokens (v2: get 1, list 10, create/update 5, delete 3, search 20;
//!   v1: get 2, list 20, create/update 10, delete 6, search 40). Once the budget is depleted every
//!   request is refused until the reset; the request that depletes it is still served.
//! * Burst, per token (per user and auth kind): a rolling 2-second window with the plan's limit
//!   (API token 20/40/100/120, OAuth 80/160/400/480); search requests have their own 10 per 2 s.
//! * An optional abuse block: an API token that keeps sending after N refusals gets a Cloudflare
//!   403 HTML page for a while.
//!
//! Invariant: a refused request consumes nothing (no tokens, no window slot), so throttling starts
//! exactly at the configured numbers; headers describe the state after the request.

use crate::clock::Millis;
use crate::ratelimit::{Admit, DailyCounter, RollingWindow};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Base daily tokens per seat before the plan multiplier.
pub const BASE_DAILY_TOKENS: u64 = 30_000;
/// The burst window Pipedrive documents.
pub const BURST_WINDOW_MS: Millis = 2_000;
/// Search requests per window, any plan or auth.
pub const SEARCH_BURST: u64 = 10;
/// POST/PUT requests per UTC day an API token may make (the legacy counter behind
/// `x-daily-requests-left`; reported, not enforced).
pub const DAILY_WRITE_REQUESTS: u64 = 10_000;
/// Without requests for this long, the optional daily-token headers go missing
/// (`daily_token_headers: "after_inactivity"`).
pub const INACTIVITY_MS: Millis = 3_600_000;

/// A company's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Multiplier 1; burst 20 (API token) / 80 (OAuth) per 2 s.
    Lite,
    /// Multiplier 2; burst 40 / 160.
    Growth,
    /// Multiplier 5; burst 100 / 400.
    Premium,
    /// Multiplier 7; burst 120 / 480.
    Ultimate,
}

impl Plan {
    /// Daily budget multiplier.
    pub fn multiplier(self) -> u64 {
        match self {
            Plan::Lite => 1,
            Plan::Growth => 2,
            Plan::Premium => 5,
            Plan::Ultimate => 7,
        }
    }

    /// Burst per 2 s for API-token requests.
    pub fn api_token_burst(self) -> u64 {
        match self {
            Plan::Lite => 20,
            Plan::Growth => 40,
            Plan::Premium => 100,
            Plan::Ultimate => 120,
        }
    }

    /// Burst per 2 s for OAuth requests.
    pub fn oauth_burst(self) -> u64 {
        self.api_token_burst() * 4
    }
}

/// Who is calling, for limit scoping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A personal API token (`x-api-token`).
    ApiToken {
        /// The token's user.
        user_id: i64,
    },
    /// An OAuth access token.
    OAuth {
        /// The OAuth client.
        client_id: String,
        /// The user who installed the app.
        user_id: i64,
        /// Granted scopes.
        scopes: Vec<String>,
    },
}

impl Principal {
    fn key(&self) -> String {
        match self {
            Principal::ApiToken { user_id } => format!("api:{user_id}"),
            Principal::OAuth { client_id, user_id, .. } => format!("oauth:{client_id}:{user_id}"),
        }
    }
}

/// The numbers, as the control plane shows and patches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Plan.
    pub plan: Plan,
    /// Seats.
    pub seats: u64,
    /// Purchased top-up tokens per day.
    pub topup_tokens: u64,
    /// Daily token budget (computed from plan, seats and top-ups unless overridden).
    pub daily_budget: u64,
    /// Burst per window for API-token requests.
    pub api_token_burst: u64,
    /// Burst per window for OAuth requests.
    pub oauth_burst: u64,
    /// Search requests per window.
    pub search_burst: u64,
    /// Burst window length.
    pub window_ms: Millis,
}

impl Quota {
    /// The documented numbers for a plan and seat count.
    pub fn for_plan(plan: Plan, seats: u64) -> Self {
        Self {
            plan,
            seats,
            topup_tokens: 0,
            daily_budget: BASE_DAILY_TOKENS * plan.multiplier() * seats,
            api_token_burst: plan.api_token_burst(),
            oauth_burst: plan.oauth_burst(),
            search_burst: SEARCH_BURST,
            window_ms: BURST_WINDOW_MS,
        }
    }
}

/// A patch to a company's limits (`PATCH /_sandbox/pipedrive/accounts/{id}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPatch {
    /// Plan: resets bursts and the budget to the plan's numbers.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Seats (recomputes the budget).
    #[serde(default)]
    pub seats: Option<u64>,
    /// Top-up tokens (recomputes the budget).
    #[serde(default)]
    pub topup_tokens: Option<u64>,
    /// Daily token budget override.
    #[serde(default)]
    pub daily_budget: Option<u64>,
    /// Pre-consumes today's budget: sets today's used tokens.
    #[serde(default)]
    pub daily_used: Option<u64>,
    /// Sets both bursts.
    #[serde(default)]
    pub burst: Option<u64>,
    /// API-token burst.
    #[serde(default)]
    pub api_token_burst: Option<u64>,
    /// OAuth burst.
    #[serde(default)]
    pub oauth_burst: Option<u64>,
    /// Search burst.
    #[serde(default)]
    pub search_burst: Option<u64>,
    /// Window length.
    #[serde(default)]
    pub window_ms: Option<Millis>,
    /// IANA time zone of the daily reset ("server time").
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Forgets the requests counted in the current windows and any abuse block.
    #[serde(default)]
    pub reset_windows: bool,
}

/// How the optional `x-daily-ratelimit-token-*` headers behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DailyHeaders {
    /// On every authenticated response.
    Always,
    /// Never.
    Never,
    /// Missing on the first request after [`INACTIVITY_MS`] without requests (observed live).
    AfterInactivity,
}

/// Per-request switches from the provider settings.
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    /// Daily-token headers mode.
    pub daily_headers: DailyHeaders,
    /// Whether `x-ratelimit-*` headers are sent.
    pub burst_headers: bool,
    /// Refusals in a row after which an API token is blocked (None: never).
    pub abuse_after: Option<u32>,
    /// How long an abuse block lasts.
    pub abuse_block_ms: Millis,
}

/// Why a request was refused.
#[derive(Clone, Debug)]
pub enum Refusal {
    /// 429: the burst window or the daily budget.
    Limited {
        /// The daily budget (rather than the burst) is exhausted.
        daily: bool,
        /// When a retry would be admitted.
        retry_after_ms: Millis,
        /// Headers to send with the 429.
        headers: Vec<(&'static str, String)>,
    },
    /// 403 HTML: the token is blocked for abuse.
    Abuse {
        /// When the block ends.
        retry_after_ms: Millis,
    },
}

#[derive(Clone, Debug, Default)]
struct AbuseState {
    refusals_in_row: u32,
    blocked_until: Option<Millis>,
}

/// One company's limiter state.
#[derive(Clone, Debug)]
pub struct AccountLimits {
    /// The numbers.
    pub quota: Quota,
    /// Time zone of the daily reset.
    pub tz: Tz,
    daily: DailyCounter,
    windows: BTreeMap<String, RollingWindow>,
    search: BTreeMap<String, RollingWindow>,
    writes: BTreeMap<String, DailyCounter>,
    abuse: BTreeMap<String, AbuseState>,
    last_request_at: Option<Millis>,
}

impl AccountLimits {
    /// Limits for a plan, seat count and time zone.
    pub fn new(plan: Plan, seats: u64, tz: Tz) -> Self {
        let quota = Quota::for_plan(plan, seats);
        Self {
            daily: DailyCounter::new(quota.daily_budget, tz),
            tz,
            quota,
            windows: BTreeMap::new(),
            search: BTreeMap::new(),
            writes: BTreeMap::new(),
            abuse: BTreeMap::new(),
            last_request_at: None,
        }
    }

    fn window(&mut self, p: &Principal, search: bool) -> &mut RollingWindow {
        let limit = if search {
            self.quota.search_burst
        } else {
            match p {
                Principal::ApiToken { .. } => self.quota.api_token_burst,
                Principal::OAuth { .. } => self.quota.oauth_burst,
            }
        };
        let window_ms = self.quota.window_ms;
        let map = if search { &mut self.search } else { &mut self.windows };
        let w = map.entry(p.key()).or_insert_with(|| RollingWindow::new(limit, window_ms));
        w.limit = limit;
        w.window_ms = window_ms;
        w
    }

    /// Admits a request costing `cost` tokens, returning the headers to send, or refuses it.
    pub fn admit(
        &mut self,
        p: &Principal,
        cost: u64,
        search: bool,
        write_method: bool,
        now: Millis,
        s: &LimitSettings,
    ) -> Result<Vec<(&'static str, String)>, Refusal> {
        let key = p.key();
        let api_token = matches!(p, Principal::ApiToken { .. });
        if let Some(until) = self.abuse.get(&key).and_then(|a| a.blocked_until) {
            if now < until {
                return Err(Refusal::Abuse { retry_after_ms: until - now });
            }
            self.abuse.remove(&key);
        }
        let idle = self.last_request_at.is_none_or(|t| now - t >= INACTIVITY_MS);
        self.last_request_at = Some(now);
        let daily_headers = match s.daily_headers {
            DailyHeaders::Always => true,
            DailyHeaders::Never => false,
            DailyHeaders::AfterInactivity => !idle,
        };
        let window_ms = self.quota.window_ms;
        let budget = self.quota.daily_budget;
        self.daily.limit = budget;
        let daily_left = self.daily.remaining(now);
        let mut headers = Vec::new();
        let refusal = if daily_left == 0 {
            let retry = self.daily.ms_until_reset(now);
            let w = self.window(p, search);
            let (limit, remaining) = (w.limit, w.remaining(now));
            if s.burst_headers {
                push_burst(&mut headers, limit, remaining, window_ms);
            }
            if daily_headers {
                headers.push(("x-daily-ratelimit-token-limit", budget.to_string()));
                headers.push(("x-daily-ratelimit-token-remaining", "0".to_owned()));
            }
            Some(Refusal::Limited { daily: true, retry_after_ms: retry, headers: headers.clone() })
        } else {
            let w = self.window(p, search);
            let limit = w.limit;
            match w.try_acquire(now) {
                Admit::Allowed { remaining } => {
                    if s.burst_headers {
                        push_burst(&mut headers, limit, remaining, window_ms);
                    }
                    let used = self.daily.used(now);
                    self.daily.set_used(now, used + cost.min(daily_left));
                    if daily_headers {
                        headers.push(("x-daily-ratelimit-token-limit", budget.to_string()));
                        headers.push((
                            "x-daily-ratelimit-token-remaining",
                            self.daily.remaining(now).to_string(),
                        ));
                    }
                    None
                }
                Admit::Refused { retry_after_ms } => {
                    if s.burst_headers {
                        headers.push(("x-ratelimit-limit", limit.to_string()));
                        headers.push(("x-ratelimit-remaining", "0".to_owned()));
                        headers.push(("x-ratelimit-reset", secs_ceil(retry_after_ms).to_string()));
                    }
                    if daily_headers {
                        headers.push(("x-daily-ratelimit-token-limit", budget.to_string()));
                        headers.push(("x-daily-ratelimit-token-remaining", daily_left.to_string()));
                    }
                    Some(Refusal::Limited { daily: false, retry_after_ms, headers: headers.clone() })
                }
            }
        };
        if let Some(r) = refusal {
            if api_token && let Some(n) = s.abuse_after {
                let a = self.abuse.entry(key).or_default();
                a.refusals_in_row += 1;
                if a.refusals_in_row >= n {
                    a.blocked_until = Some(now + s.abuse_block_ms);
                }
            }
            return Err(r);
        }
        if let Some(a) = self.abuse.get_mut(&key) {
            a.refusals_in_row = 0;
        }
        if api_token && write_method {
            let tz = chrono_tz::UTC;
            let c = self.writes.entry(key).or_insert_with(|| DailyCounter::new(DAILY_WRITE_REQUESTS, tz));
            let _ = c.try_acquire(now);
            headers.push(("x-daily-requests-left", c.remaining(now).to_string()));
        }
        Ok(headers)
    }

    /// Applies a control-plane patch.
    pub fn apply(&mut self, patch: &LimitPatch, now: Millis) -> Result<(), String> {
        if let Some(p) = patch.plan {
            let q = Quota::for_plan(p, self.quota.seats);
            self.quota.plan = p;
            self.quota.api_token_burst = q.api_token_burst;
            self.quota.oauth_burst = q.oauth_burst;
        }
        if let Some(s) = patch.seats {
            if s == 0 {
                return Err("seats must be at least 1".to_owned());
            }
            self.quota.seats = s;
        }
        if let Some(t) = patch.topup_tokens {
            self.quota.topup_tokens = t;
        }
        if patch.plan.is_some() || patch.seats.is_some() || patch.topup_tokens.is_some() {
            self.quota.daily_budget =
                BASE_DAILY_TOKENS * self.quota.plan.multiplier() * self.quota.seats + self.quota.topup_tokens;
        }
        if let Some(b) = patch.daily_budget {
            self.quota.daily_budget = b;
        }
        if let Some(tz) = &patch.time_zone {
            self.tz = tz.parse().map_err(|_| format!("unknown time zone {tz:?}"))?;
            let used = self.daily.used(now);
            self.daily = DailyCounter::new(self.quota.daily_budget, self.tz);
            self.daily.set_used(now, used);
        }
        self.daily.limit = self.quota.daily_budget;
        if let Some(u) = patch.daily_used {
            self.daily.set_used(now, u);
        }
        if let Some(b) = patch.burst {
            self.quota.api_token_burst = b;
            self.quota.oauth_burst = b;
        }
        if let Some(b) = patch.api_token_burst {
            self.quota.api_token_burst = b;
        }
        if let Some(b) = patch.oauth_burst {
            self.quota.oauth_burst = b;
        }
        if let Some(b) = patch.search_burst {
            self.quota.search_burst = b;
        }
        if let Some(w) = patch.window_ms {
            if w <= 0 {
                return Err("window_ms must be positive".to_owned());
            }
            self.quota.window_ms = w;
        }
        if patch.reset_windows {
            self.windows.clear();
            self.search.clear();
            self.abuse.clear();
        }
        Ok(())
    }

    /// Tokens used today.
    pub fn daily_used(&mut self, now: Millis) -> u64 {
        self.daily.used(now)
    }

    /// Milliseconds until the daily budget resets.
    pub fn ms_until_reset(&self, now: Millis) -> Millis {
        self.daily.ms_until_reset(now)
    }

    /// Requests counted in each burst window now.
    pub fn window_usage(&mut self, now: Millis) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> =
            self.windows.iter_mut().map(|(k, w)| (k.clone(), w.used(now))).collect();
        for (k, w) in &mut self.search {
            out.insert(format!("search:{k}"), w.used(now));
        }
        out
    }
}

/// Whole seconds, rounded up (at least 1).
pub fn secs_ceil(ms: Millis) -> i64 {
    ((ms + 999) / 1000).max(1)
}

fn push_burst(h: &mut Vec<(&'static str, String)>, limit: u64, remaining: u64, window_ms: Millis) {
    h.push(("x-ratelimit-limit", limit.to_string()));
    h.push(("x-ratelimit-remaining", remaining.to_string()));
    h.push(("x-ratelimit-reset", secs_ceil(window_ms).to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            daily_headers: DailyHeaders::Always,
            burst_headers: true,
            abuse_after: Some(2),
            abuse_block_ms: 60_000,
        }
    }

    fn header<'a>(h: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn daily_budget_charges_costs_and_depletes() {
        let mut l = AccountLimits::new(Plan::Lite, 1, chrono_tz::UTC);
        l.apply(&LimitPatch { daily_budget: Some(25), ..LimitPatch::default() }, 0).expect("patch");
        let p = Principal::ApiToken { user_id: 1 };
        let h = l.admit(&p, 10, false, false, 0, &settings()).expect("first");
        assert_eq!(header(&h, "x-daily-ratelimit-token-remaining"), Some("15"));
        assert_eq!(header(&h, "x-ratelimit-limit"), Some("20"));
        assert_eq!(header(&h, "x-ratelimit-remaining"), Some("19"));
        l.admit(&p, 10, false, false, 0, &settings()).expect("second");
        let h = l.admit(&p, 10, false, false, 0, &settings()).expect("third depletes");
        assert_eq!(header(&h, "x-daily-ratelimit-token-remaining"), Some("0"));
        match l.admit(&p, 1, false, false, 0, &settings()) {
            Err(Refusal::Limited { daily: true, retry_after_ms, headers }) => {
                assert_eq!(retry_after_ms, 86_400_000);
                assert_eq!(header(&headers, "x-daily-ratelimit-token-remaining"), Some("0"));
            }
            other => panic!("expected a daily refusal, got {other:?}"),
        }
    }

    #[test]
    fn burst_refuses_at_the_limit_and_abuse_blocks_api_tokens() {
        let mut l = AccountLimits::new(Plan::Lite, 1, chrono_tz::UTC);
        l.apply(&LimitPatch { burst: Some(2), ..LimitPatch::default() }, 0).expect("patch");
        let p = Principal::ApiToken { user_id: 1 };
        assert!(l.admit(&p, 1, false, true, 0, &settings()).is_ok());
        let h = l.admit(&p, 1, false, true, 500, &settings()).expect("second");
        assert_eq!(header(&h, "x-daily-requests-left"), Some("9998"));
        match l.admit(&p, 1, false, false, 1_000, &settings()) {
            Err(Refusal::Limited { daily: false, retry_after_ms, headers }) => {
                assert_eq!(retry_after_ms, 1_000);
                assert_eq!(header(&headers, "x-ratelimit-reset"), Some("1"));
            }
            other => panic!("expected a burst refusal, got {other:?}"),
        }
        assert!(matches!(l.admit(&p, 1, false, false, 1_000, &settings()), Err(Refusal::Limited { .. })));
        assert!(matches!(l.admit(&p, 1, false, false, 5_000, &settings()), Err(Refusal::Abuse { .. })));
        assert!(l.admit(&p, 1, false, false, 61_000, &settings()).is_ok(), "the block ends");
        let o = Principal::OAuth { client_id: "c".into(), user_id: 1, scopes: vec![] };
        assert!(l.admit(&o, 1, false, false, 61_000, &settings()).is_ok(), "OAuth has its own window");
    }
}
