//! Fault injection: rules that make matching requests slow, fail, throttle, hang or lose their
//! connection.
//!
//! A rule matches on provider, account, HTTP method and a path glob (`*` matches any characters), and
//! can be limited to the next N matches (`times`), skip the first K (`after`), fire with a probability
//! (an error rate, drawn from the seeded stream) and apply only inside a window of logical time (an
//! outage). Rules are evaluated in insertion order by the request gate in [`crate::server`]: every
//! matching `latency` rule adds its delay, and the first matching terminal rule (status, throttle, hang,
//! drop, drop-after-commit) decides the outcome.
//!
//! Invariant: a rule's `times` budget is spent only when the rule actually fires, under one lock, so
//! "the next 3 requests get 503" means exactly three, even with concurrent requests.

use crate::clock::{Millis, parse_duration_ms, parse_time};
use crate::config::ProviderKind;
use crate::seed::SharedRng;
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// What a rule does to a matching request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultAction {
    /// Delay the request by `ms` milliseconds, then serve it normally.
    Latency {
        /// Delay in milliseconds (wall clock).
        ms: u64,
    },
    /// Answer with `status` instead of serving the request. Without `body`, the provider renders its
    /// documented body for that status (and `kind`, a provider-specific variant such as HubSpot's
    /// `"expired"` 401 or `"DAILY"` 429).
    Status {
        /// HTTP status.
        status: u16,
        /// Provider-specific variant of the error body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        /// A literal JSON body to send instead of the provider's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<serde_json::Value>,
        /// Extra response headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// `Retry-After` seconds to send (and to mention in bodies that carry it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Answer with the provider's throttle response (HubSpot 429 `TEN_SECONDLY_ROLLING` by default;
    /// `policy` picks another variant such as `DAILY` or `SECONDLY`), with `Retry-After` if given.
    Throttle {
        /// Provider-specific throttle variant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        /// `Retry-After` seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Hold the request for `ms` milliseconds (default ten minutes), then close the connection without
    /// answering: a client without a timeout hangs.
    Hang {
        /// How long to hold the connection.
        #[serde(default = "default_hang_ms")]
        ms: u64,
    },
    /// Close the connection without serving the request (nothing is written).
    Drop,
    /// Serve the request (the write happens and is counted) but close the connection instead of
    /// sending the response: the client sees a transport error.
    DropAfterCommit,
}

fn default_hang_ms() -> u64 {
    600_000
}

impl FaultAction {
    /// Whether the action ends the request (everything but latency).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, FaultAction::Latency { .. })
    }

    /// A short label for logs.
    pub fn label(&self) -> String {
        match self {
            FaultAction::Latency { ms } => format!("latency:{ms}ms"),
            FaultAction::Status { status, .. } => format!("status:{status}"),
            FaultAction::Throttle { policy, .. } => {
                format!("throttle:{}", policy.as_deref().unwrap_or("default"))
            }
            FaultAction::Hang { ms } => format!("hang:{ms}ms"),
            FaultAction::Drop => "drop".to_owned(),
            FaultAction::DropAfterCommit => "drop_after_commit".to_owned(),
        }
    }
}

/// A fault rule as posted to `/_sandbox/faults`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Only requests to this provider (all providers when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    /// Only requests authenticated as this account (all, including unauthenticated, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Only this HTTP method (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only paths matching this glob (`*` matches any characters; the query string is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What to do.
    pub action: FaultAction,
    /// Fire at most this many times, then retire (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Let the first `after` matching requests through untouched.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after: u64,
    /// Fire with this probability (an error rate); always when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Active from this logical time (epoch ms or RFC 3339).
    #[serde(default, deserialize_with = "de_time", skip_serializing_if = "Option::is_none")]
    pub from: Option<Millis>,
    /// Active until this logical time, exclusive (epoch ms or RFC 3339).
    #[serde(default, deserialize_with = "de_time", skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
    /// Active for this long from when the rule is added (`"30s"`, `"5m"` or milliseconds); sets `until`.
    #[serde(default, deserialize_with = "de_duration", skip_serializing_if = "Option::is_none")]
    pub duration: Option<Millis>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(i64),
    Str(String),
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => {
            parse_time(&s).map(Some).ok_or_else(|| serde::de::Error::custom(format!("not a time: {s:?}")))
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => parse_duration_ms(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not a duration: {s:?}"))),
    }
}

/// An installed rule with its bookkeeping.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRule {
    /// Rule id (for deletion).
    pub id: u64,
    /// The rule.
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Requests that matched the filters (whether or not the rule fired).
    pub matched: u64,
    /// Times the rule fired.
    pub fired: u64,
}

/// What the gate must do with one request.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Total delay from latency rules, milliseconds.
    pub latency_ms: u64,
    /// The terminal action, if a rule fired.
    pub terminal: Option<FaultAction>,
    /// Labels of every rule that fired, for the request log.
    pub labels: Vec<String>,
}

/// The request attributes a rule can match.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// Provider serving the request.
    pub provider: ProviderKind,
    /// Account the credentials resolve to, if any.
    pub account: Option<&'a str>,
    /// HTTP method.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Logical now.
    pub now: Millis,
}

/// The installed rules.
#[derive(Debug)]
pub struct FaultRegistry {
    rules: Mutex<(u64, Vec<FaultRule>)>,
    rng: SharedRng,
}

impl FaultRegistry {
    /// An empty registry whose error rates draw from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rules: Mutex::new((0, Vec::new())), rng: SharedRng::new(seed, &["faults"]) }
    }

    /// Installs a rule at logical time `now`; returns it with its id.
    pub fn add(&self, mut spec: FaultSpec, now: Millis) -> Result<FaultRule, String> {
        if let Some(p) = spec.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!("probability must be within [0, 1], got {p}"));
        }
        if let Some(d) = spec.duration {
            let start = spec.from.unwrap_or(now);
            spec.until = Some(start + d);
        }
        let mut g = self.rules.lock();
        g.0 += 1;
        let rule = FaultRule { id: g.0, spec, matched: 0, fired: 0 };
        g.1.push(rule.clone());
        Ok(rule)
    }

    /// Removes one rule; returns whether it existed.
    pub fn remove(&self, id: u64) -> bool {
        let mut g = self.rules.lock();
        let before = g.1.len();
        g.1.retain(|r| r.id != id);
        g.1.len() != before
    }

    /// Removes every rule (of one provider, when given).
    pub fn clear(&self, provider: Option<ProviderKind>) {
        let mut g = self.rules.lock();
        g.1.retain(|r| provider.is_some_and(|p| r.spec.provider.is_some_and(|rp| rp != p)));
    }

    /// The installed rules.
    pub fn list(&self) -> Vec<FaultRule> {
        self.rules.lock().1.clone()
    }

    /// Decides what happens to one request, spending rule budgets.
    pub fn evaluate(&self, req: RequestFacts<'_>) -> FaultPlan {
        let mut plan = FaultPlan::default();
        let mut g = self.rules.lock();
        if g.1.is_empty() {
            return plan;
        }
        for rule in g.1.iter_mut() {
            let s = &rule.spec;
            if s.provider.is_some_and(|p| p != req.provider)
                || s.account.as_deref().is_some_and(|a| Some(a) != req.account)
                || s.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case(req.method))
                || s.path.as_deref().is_some_and(|p| !glob_match(p, req.path))
                || s.from.is_some_and(|f| req.now < f)
                || s.until.is_some_and(|u| req.now >= u)
                || s.times.is_some_and(|t| rule.fired >= t)
            {
                continue;
            }
            if plan.terminal.is_some() && s.action.is_terminal() {
                continue;
            }
            rule.matched += 1;
            if rule.matched <= s.after {
                continue;
            }
            if let Some(p) = s.probability
                && self.rng.unit() >= p
            {
                continue;
            }
            rule.fired += 1;
            plan.labels.push(format!("#{} {}", rule.id, s.action.label()));
            match &s.action {
                FaultAction::Latency { ms } => plan.latency_ms += ms,
                other => plan.terminal = Some(other.clone()),
            }
        }
        plan
    }
}

/// Matches `text` against `pattern`, where `*` matches any run of characters (including `/`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(path: &'a str, now: Millis) -> RequestFacts<'a> {
        RequestFacts { provider: ProviderKind::HubSpot, account: Some("1"), method: "GET", path, now }
    }

    fn status(code: u16) -> FaultAction {
        FaultAction::Status {
            status: code,
            kind: None,
            body: None,
            headers: BTreeMap::new(),
            retry_after_secs: None,
        }
    }

    fn spec(action: FaultAction) -> FaultSpec {
        FaultSpec {
            provider: None,
            account: None,
            method: None,
            path: None,
            action,
            times: None,
            after: 0,
            probability: None,
            from: None,
            until: None,
            duration: None,
        }
    }

    #[test]
    fn glob() {
        assert!(glob_match("/crm/v3/objects/*/search", "/crm/v3/objects/contacts/search"));
        assert!(glob_match("*", "/anything"));
        assert!(!glob_match("/crm/v3/objects/*/search", "/crm/v3/objects/contacts"));
        assert!(glob_match("/oauth/*", "/oauth/v1/token"));
    }

    #[test]
    fn times_and_after_are_exact() {
        let r = FaultRegistry::new(1);
        r.add(FaultSpec { times: Some(2), after: 1, ..spec(status(503)) }, 0).expect("valid");
        let outcomes: Vec<bool> = (0..5).map(|_| r.evaluate(facts("/x", 0)).terminal.is_some()).collect();
        assert_eq!(outcomes, vec![false, true, true, false, false]);
    }

    #[test]
    fn outage_window_uses_logical_time() {
        let r = FaultRegistry::new(1);
        r.add(FaultSpec { duration: Some(10_000), ..spec(status(502)) }, 1_000).expect("valid");
        assert!(r.evaluate(facts("/x", 1_000)).terminal.is_some());
        assert!(r.evaluate(facts("/x", 10_999)).terminal.is_some());
        assert!(r.evaluate(facts("/x", 11_000)).terminal.is_none());
    }

    #[test]
    fn latency_composes_with_a_terminal_rule() {
        let r = FaultRegistry::new(1);
        r.add(spec(FaultAction::Latency { ms: 5 }), 0).expect("valid");
        r.add(spec(FaultAction::Latency { ms: 7 }), 0).expect("valid");
        r.add(spec(FaultAction::Drop), 0).expect("valid");
        let plan = r.evaluate(facts("/x", 0));
        assert_eq!(plan.latency_ms, 12);
        assert_eq!(plan.terminal, Some(FaultAction::Drop));
    }

    #[test]
    fn error_rate_is_roughly_the_probability_and_reproducible() {
        let run = || {
            let r = FaultRegistry::new(9);
            r.add(FaultSpec { probability: Some(0.25), ..spec(status(500)) }, 0).expect("valid");
            (0..1000).map(|_| r.evaluate(facts("/x", 0)).terminal.is_some()).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let hits = a.iter().filter(|b| **b).count();
        assert!((180..320).contains(&hits), "hits {hits}");
    }
}
