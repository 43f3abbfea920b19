//! What tests read back: the request log and the per-account counters.
//!
//! The request gate ([`crate::server`]) writes one [`RequestEntry`] per request it sees (bounded ring
//! buffer; the oldest entries fall off) and updates the account's [`AccountStats`]: requests per
//! operation and status, throttled responses, requests in flight and the maximum ever in flight.
//! Providers add the objects they create ([`Counters::record_created`]) with the text a test searches for
//! (subject, body, name, email, custom markers), so "no duplicate creates" is one query.
//!
//! Invariant: in-flight counts are kept by a drop guard, so a request cancelled mid-way (client
//! timeout, dropped connection) still leaves the gauge; the maximum is only reset on request.

use crate::clock::{Millis, format_ms};
use crate::config::ProviderKind;
use crate::faults::glob_match;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// One logged request.
#[derive(Clone, Debug, Serialize)]
pub struct RequestEntry {
    /// Sequence number, increasing from 1.
    pub seq: u64,
    /// Logical time the request arrived, epoch ms.
    pub at_ms: Millis,
    /// The same, RFC 3339.
    pub at: String,
    /// Provider that served it.
    pub provider: ProviderKind,
    /// Which of the provider's hosts (`api`, `app`, ...).
    pub host: String,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Account the credentials resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Operation name the provider gave it (`contacts.create`, `oauth.token.refresh_token`, ...), or the
    /// route template.
    pub operation: String,
    /// Status sent (0 when the connection was dropped without a response).
    pub status: u16,
    /// Whether the connection was dropped instead of answered.
    pub dropped: bool,
    /// Whether the provider counted this as a throttle response.
    pub throttled: bool,
    /// Fault rules that fired on it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// Wall-clock handling time, milliseconds.
    pub duration_ms: u64,
}

/// Filters for reading the log (all optional; they combine with AND).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RequestFilter {
    /// Only this provider.
    pub provider: Option<ProviderKind>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this method.
    pub method: Option<String>,
    /// Only paths matching this glob.
    pub path: Option<String>,
    /// Only this operation name.
    pub operation: Option<String>,
    /// Only this status.
    pub status: Option<u16>,
    /// Only entries with a sequence number greater than this.
    pub since_seq: Option<u64>,
    /// At most this many (the most recent), default 1000.
    pub limit: Option<usize>,
}

/// The bounded request log.
#[derive(Debug)]
pub struct RequestLog {
    capacity: usize,
    inner: Mutex<(u64, VecDeque<RequestEntry>)>,
}

impl RequestLog {
    /// A log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new((0, VecDeque::new())) }
    }

    /// Appends an entry, assigning its sequence number.
    pub fn push(&self, mut e: RequestEntry) -> u64 {
        let mut g = self.inner.lock();
        g.0 += 1;
        e.seq = g.0;
        if g.1.len() >= self.capacity {
            g.1.pop_front();
        }
        g.1.push_back(e);
        g.0
    }

    /// Entries matching `f`, oldest first.
    pub fn query(&self, f: &RequestFilter) -> Vec<RequestEntry> {
        let g = self.inner.lock();
        let limit = f.limit.unwrap_or(1000);
        let mut out: Vec<RequestEntry> =
            g.1.iter()
                .rev()
                .filter(|e| {
                    f.provider.is_none_or(|p| p == e.provider)
                        && f.account.as_deref().is_none_or(|a| e.account.as_deref() == Some(a))
                        && f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&e.method))
                        && f.path.as_deref().is_none_or(|p| glob_match(p, &e.path))
                        && f.operation.as_deref().is_none_or(|o| o == e.operation)
                        && f.status.is_none_or(|s| s == e.status)
                        && f.since_seq.is_none_or(|s| e.seq > s)
                })
                .take(limit)
                .cloned()
                .collect();
        out.reverse();
        out
    }

    /// The last assigned sequence number.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().0
    }

    /// Drops every entry (sequence numbers keep increasing).
    pub fn clear(&self) {
        self.inner.lock().1.clear();
    }
}

/// An object a provider created, as recorded for "no duplicate creates" checks.
#[derive(Clone, Debug, Serialize)]
pub struct CreatedObject {
    /// Object type (`tasks`, `contacts`, ...).
    pub object: String,
    /// Provider id.
    pub id: String,
    /// Logical creation time.
    pub at: String,
    /// Through which door: `api`, `mutation`, `generator` or `control`.
    pub source: String,
    /// The searchable text (subject, body, name, email, custom markers), joined by newlines.
    pub text: String,
}

/// Live counters of one account.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccountStats {
    /// Requests seen.
    pub requests: u64,
    /// Requests per operation name.
    pub by_operation: BTreeMap<String, u64>,
    /// Responses per status (0 = dropped connection).
    pub by_status: BTreeMap<u16, u64>,
    /// Throttle responses (from limits or injected).
    pub throttled: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Most requests in flight at once since the last reset.
    pub max_in_flight: u64,
    /// Objects created through the provider API.
    pub created: Vec<CreatedObject>,
}

/// A snapshot of an account's counters, merged with its token statistics, as tests read it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountCounters {
    /// Requests seen.
    pub requests: u64,
    /// Requests per operation name.
    pub by_operation: BTreeMap<String, u64>,
    /// Responses per status (0 = dropped connection).
    pub by_status: BTreeMap<u16, u64>,
    /// Throttle responses.
    pub throttled: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// Successful refresh grants.
    pub token_refreshes: u64,
    /// Failed refresh grants.
    pub token_refresh_failures: u64,
    /// Authorization codes exchanged.
    pub code_exchanges: u64,
    /// Objects created through the provider API (all sources), per object type.
    pub created: BTreeMap<String, u64>,
}

type Key = (ProviderKind, String);

/// Per-account counters, shared by every provider.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    inner: Arc<Mutex<BTreeMap<Key, AccountStats>>>,
}

/// Decrements an account's in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    counters: Counters,
    key: Key,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut g = self.counters.inner.lock();
        if let Some(s) = g.get_mut(&self.key) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl Counters {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a request of `account` in flight until the guard drops.
    pub fn enter(&self, provider: ProviderKind, account: &str) -> InFlightGuard {
        let key = (provider, account.to_owned());
        {
            let mut g = self.inner.lock();
            let s = g.entry(key.clone()).or_default();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        InFlightGuard { counters: self.clone(), key }
    }

    /// Counts one finished request.
    pub fn record_request(
        &self,
        provider: ProviderKind,
        account: &str,
        operation: &str,
        status: u16,
        throttled: bool,
    ) {
        let mut g = self.inner.lock();
        let s = g.entry((provider, account.to_owned())).or_default();
        s.requests += 1;
        *s.by_operation.entry(operation.to_owned()).or_default() += 1;
        *s.by_status.entry(status).or_default() += 1;
        if throttled {
            s.throttled += 1;
        }
    }

    /// Records an object creation.
    pub fn record_created(&self, provider: ProviderKind, account: &str, object: CreatedObject) {
        let mut g = self.inner.lock();
        g.entry((provider, account.to_owned())).or_default().created.push(object);
    }

    /// Created objects of an account, optionally only of one type and only those whose text contains
    /// `contains` (case-sensitive substring).
    pub fn created(
        &self,
        provider: ProviderKind,
        account: &str,
        object: Option<&str>,
        contains: Option<&str>,
    ) -> Vec<CreatedObject> {
        let g = self.inner.lock();
        g.get(&(provider, account.to_owned()))
            .map(|s| {
                s.created
                    .iter()
                    .filter(|c| object.is_none_or(|o| o == c.object))
                    .filter(|c| contains.is_none_or(|m| c.text.contains(m)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The live stats of one account.
    pub fn stats(&self, provider: ProviderKind, account: &str) -> AccountStats {
        self.inner.lock().get(&(provider, account.to_owned())).cloned().unwrap_or_default()
    }

    /// Every account with counters.
    pub fn accounts(&self) -> Vec<(ProviderKind, String)> {
        self.inner.lock().keys().cloned().collect()
    }

    /// Resets counters (of one provider, one account, or all). In-flight gauges keep their current value
    /// and the maximum restarts from it.
    pub fn reset(&self, provider: Option<ProviderKind>, account: Option<&str>) {
        let mut g = self.inner.lock();
        for ((p, a), s) in g.iter_mut() {
            if provider.is_none_or(|x| x == *p) && account.is_none_or(|x| x == a) {
                let in_flight = s.in_flight;
                *s = AccountStats { in_flight, max_in_flight: in_flight, ..AccountStats::default() };
            }
        }
    }
}

/// Builds a [`CreatedObject`] stamped at `at_ms`.
pub fn created_object(object: &str, id: &str, at_ms: Millis, source: &str, text: String) -> CreatedObject {
    CreatedObject {
        object: object.to_owned(),
        id: id.to_owned(),
        at: format_ms(at_ms),
        source: source.to_owned(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_tracks_current_and_max() {
        let c = Counters::new();
        let a = c.enter(ProviderKind::HubSpot, "1");
        let b = c.enter(ProviderKind::HubSpot, "1");
        assert_eq!(c.stats(ProviderKind::HubSpot, "1").in_flight, 2);
        drop(a);
        drop(b);
        let s = c.stats(ProviderKind::HubSpot, "1");
        assert_eq!((s.in_flight, s.max_in_flight), (0, 2));
        c.reset(None, None);
        assert_eq!(c.stats(ProviderKind::HubSpot, "1").max_in_flight, 0);
    }

    #[test]
    fn log_is_bounded_and_filterable() {
        let log = RequestLog::new(2);
        for i in 0..3 {
            log.push(RequestEntry {
                seq: 0,
                at_ms: i,
                at: String::new(),
                provider: ProviderKind::HubSpot,
                host: "api".into(),
                method: "GET".into(),
                path: format!("/p/{i}"),
                query: None,
                account: None,
                operation: "op".into(),
                status: 200,
                dropped: false,
                throttled: false,
                faults: vec![],
                duration_ms: 0,
            });
        }
        let all = log.query(&RequestFilter::default());
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        let f = RequestFilter { path: Some("/p/2".into()), ..RequestFilter::default() };
        assert_eq!(log.query(&f).len(), 1);
    }
}
