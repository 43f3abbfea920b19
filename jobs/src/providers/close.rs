//! Close client (`crm-providers.md` §5).
//!
//! Objects: `Contact` → contacts, `Company` → leads (Close's organisation-like object), `Deal` →
//! opportunities. Paths are under `/api/v1` of the connection's `api_base` (a base that already
//! ends in `/api/v1` is used as is). API keys authenticate as `Credential::BasicKey` (HTTP Basic,
//! key as user, empty password); OAuth tokens as `Credential::Bearer`.
//!
//! # Sync
//!
//! Every run is: changed records, then deletions.
//!
//! * **Contacts and leads** go through the Advanced Filtering API (`POST /data/search/`) with a
//!   `date_updated` `moment_range` (`on_or_after: since`), sorted ascending, paginated by the body
//!   `cursor`. A pagination sequence stops at 10,000 objects and its cursor expires 30 s after its
//!   last use, so the stored cursor also keeps the restart point: the highest `date_updated`
//!   delivered and the ids delivered at exactly that time. Before the next page would reach the
//!   10,000 cap (the sequence ends there without saying so), or when the server says the stored cursor is no longer valid (a crash longer than
//!   30 s), the window restarts at that time (`on_or_after` it) and the records already delivered
//!   at that time are dropped from the answer, so nothing is skipped or delivered twice. (The
//!   restart after an expired cursor is the one case where a call makes a second request.)
//! * **Opportunities** use `GET /opportunity/?date_updated__gte=B&_order_by=date_updated&_skip&_limit`.
//!   Offset paging loses records when a record already read is updated (everything behind it
//!   shifts left), so the bound `B` moves forward on **every** page to the last `date_updated`
//!   read, and `_skip` only steps over the records at exactly `B` already passed (less a small
//!   overlap whose ids are dropped again, which absorbs a boundary record moving away between
//!   pages). `_skip` therefore stays tiny and never reaches the per-resource cap unless more than
//!   that many opportunities share one timestamp.
//! * **Deletions** come from the event log (`GET /event/?object_type=…&action=deleted&
//!   date_updated__gte=since`), newest first, `_cursor`-paginated until the cursor runs out or an
//!   event is older than the window. The log keeps 30 days: a connection idle for longer must be
//!   re-synced in full (the sync engine decides that; this client cannot see the retention edge).
//!
//! The final cursor of a run is `next_run()` plus the ids delivered at its `since` (the high-water
//! time), so the next run's `on_or_after` bound does not deliver them again.
//!
//! # Idempotency
//!
//! Close has no idempotency key and no unique fields, so a create cannot be refused as a
//! duplicate; each create carries the action's marker so that an outcome-unknown attempt can be
//! reconciled with [`CrmClient::find_by_marker`] before trying again:
//!
//! * **Tasks, calls, notes**: a trailing `[crm-fleet:<marker>]` token in the task `text`, the
//!   call `note` and the note `note`. Reconciliation pages through the objects of that kind in
//!   the organization, newest created first (tasks by `-date_created`, activities in their
//!   default order), looking for the token, until a page shows an object created before the
//!   action (its age, measured back from the newest object's `date_created`: Close's own clock,
//!   never compared with ours, with a 10-minute margin) or the list ends: then the answer is
//!   "not created". Past [`MARKER_SCAN_PAGES_WITHIN`] pages it answers "outcome unknown" and the
//!   action is dead-lettered for an operator, never created again blindly. The token stays
//!   visible in the CRM.
//! * **Contacts**: the marker goes into the `crm_fleet_action_id` contact custom field (a hidden
//!   text field crm-fleet's onboarding creates), found by name through
//!   `GET /custom_field/contact/` once per credential and cached; reconciliation is an exact
//!   `term` search on that field. If the organization has no such field the contact is created
//!   without a marker, and reconciliation answers "outcome unknown" (it cannot tell), so an
//!   outcome-unknown contact create is dead-lettered rather than possibly created twice.
//!
//! Errors: 400 → `Rejected` (the first `field-errors` entry names the field), 401 → `Unauthorized`,
//! 402 (plan limit) and 403 → `Forbidden`, 404 → `NotFound`, 429 → `Throttled` (wait from the
//! `RateLimit` reset, else `retry-after`, else the legacy body's `rate_reset`), 503 → `Transient`,
//! 500/502/504 → `Transient` on reads and `OutcomeUnknown` on writes. Every response's `RateLimit`
//! header becomes a [`QuotaObservation`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use parking_lot::Mutex;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::http::{RawResponse, scrub_tokens};
use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, CrmRecord,
    DeletedRecord, ExternalRef, Http, LogCall, ObjectKind, Provider, ProviderError, ProviderResult,
    QuotaObservation, Reply, SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};

/// Name of the contact custom field holding crm-fleet's action marker.
pub const MARKER_FIELD_NAME: &str = "crm_fleet_action_id";
/// Advanced Filtering page size.
const SEARCH_LIMIT: u64 = 100;
/// Objects one Advanced Filtering pagination sequence returns at most (documented).
const SEARCH_CAP: u64 = 10_000;
/// Opportunity page size (the list endpoints' documented default).
const OPP_LIMIT: u64 = 100;
/// Records at the window bound re-read on every opportunity page (their ids are dropped again).
const OVERLAP: u64 = 20;
/// Event log page size (Close caps it at 50).
const EVENT_LIMIT: u64 = 50;
/// Ids kept for the high-water group; past this a restart may deliver some of them twice.
const MAX_KNOWN_IDS: usize = 500;
/// Objects a page of marker reconciliation of tasks, calls and notes reads.
const MARKER_SCAN: u64 = 100;
/// Pages an age-bounded reconciliation reads at most before answering "outcome unknown".
const MARKER_SCAN_PAGES_WITHIN: u64 = 50;
/// Added to an action's age when bounding a reconciliation scan: covers drift between the
/// clocks' rates and the time between our record of the action and Close's of the object.
const MARKER_AGE_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

const CONTACT_FIELDS: &[&str] =
    &["id", "lead_id", "name", "title", "emails", "phones", "date_created", "date_updated"];
const LEAD_FIELDS: &[&str] = &[
    "id",
    "display_name",
    "name",
    "description",
    "url",
    "status_id",
    "status_label",
    "date_created",
    "date_updated",
];
const OPP_FIELDS: &[&str] = &[
    "id",
    "lead_id",
    "lead_name",
    "contact_id",
    "user_id",
    "status_id",
    "status_label",
    "status_type",
    "value",
    "value_currency",
    "value_period",
    "confidence",
    "note",
    "date_won",
    "date_created",
    "date_updated",
];

/// Close client.
#[derive(Clone)]
pub struct CloseClient {
    http: Http,
    /// Marker custom-field id per credential fingerprint (SHA-256 of base URL and secret).
    marker_fields: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl std::fmt::Debug for CloseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseClient").finish_non_exhaustive()
    }
}

fn object_path(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "contact",
        ObjectKind::Company => "lead",
        ObjectKind::Deal => "opportunity",
    }
}

fn fields(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Contact => CONTACT_FIELDS,
        ObjectKind::Company => LEAD_FIELDS,
        ObjectKind::Deal => OPP_FIELDS,
    }
}

/// The marker token written into task, call and note text.
pub fn marker_token(marker: &str) -> String {
    format!("[crm-fleet:{marker}]")
}

fn with_marker(text: &str, marker: &str) -> String {
    if marker.is_empty() { text.to_owned() } else { format!("{text} {}", marker_token(marker)) }
}

/// Close date-times: `2013-02-01T00:54:51.331000+00:00`, or naive UTC in the event log.
fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc())
}

/// Formats a time as Close does, with microseconds.
fn close_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn first_in(v: &Value, list: &str, key: &str) -> Option<String> {
    v.get(list)?.as_array()?.iter().find_map(|e| text(e, key))
}

/// Normalises a contact, lead or opportunity.
fn record(kind: ObjectKind, obj: &Value) -> Result<CrmRecord, ProviderError> {
    let id = text(obj, "id")
        .ok_or_else(|| ProviderError::Protocol { status: 200, message: "object without id".into() })?;
    let updated = obj.get("date_updated").and_then(parse_time).ok_or_else(|| ProviderError::Protocol {
        status: 200,
        message: format!("{} {id} without a readable date_updated", object_path(kind)),
    })?;
    let mut r = CrmRecord::new(id, kind, updated);
    match kind {
        ObjectKind::Contact => {
            r.name = text(obj, "name");
            if let Some(n) = &r.name {
                let mut parts = n.splitn(2, ' ');
                r.first_name = parts.next().map(str::to_owned).filter(|s| !s.is_empty());
                r.last_name = parts.next().map(str::to_owned).filter(|s| !s.is_empty());
            }
            r.email = first_in(obj, "emails", "email");
            r.phone = first_in(obj, "phones", "phone");
            r.company = text(obj, "lead_id");
        }
        ObjectKind::Company => {
            r.name = text(obj, "display_name").or_else(|| text(obj, "name"));
        }
        ObjectKind::Deal => {
            r.name = text(obj, "lead_name").or_else(|| text(obj, "note"));
            r.amount = obj.get("value").and_then(Value::as_f64).map(|cents| cents / 100.0);
            r.currency = text(obj, "value_currency");
            r.stage = text(obj, "status_id");
            r.close_date = text(obj, "date_won").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            r.owner = text(obj, "user_id");
            r.company = text(obj, "lead_id");
        }
    }
    r.raw = obj.clone();
    Ok(r)
}

/// Parses `RateLimit: limit=N, remaining=M, reset=S` (falling back to the deprecated
/// `x-rate-limit-*` headers).
fn quota(resp: &RawResponse) -> Option<QuotaObservation> {
    let mut q = QuotaObservation::default();
    if let Some(h) = resp.header("ratelimit") {
        for part in h.split([',', ';']) {
            let Some((k, v)) = part.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "limit" => q.limit = v.parse::<f64>().ok().map(|f| f.max(0.0) as u64),
                "remaining" => q.remaining = v.parse::<f64>().ok().map(|f| f.max(0.0) as u64),
                "reset" => {
                    q.reset_after = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| Duration::from_secs_f64(f.max(0.0)))
                }
                _ => {}
            }
        }
    } else {
        q.limit = resp.header_u64("x-rate-limit-limit");
        q.remaining = resp.header_u64("x-rate-limit-remaining");
        q.reset_after = resp
            .header("x-rate-limit-reset")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|f| Duration::from_secs_f64(f.max(0.0)));
    }
    (!q.is_empty()).then_some(q)
}

/// Whether a 400 says the Advanced Filtering cursor is no longer valid.
fn cursor_rejected(resp: &RawResponse) -> bool {
    resp.status.as_u16() == 400 && resp.value().pointer("/field-errors/cursor").is_some()
}

/// Maps an error response. `idempotent` decides 500/502/504: a read is safe to retry, a write may
/// have been applied before the gateway gave up.
fn error(resp: &RawResponse, idempotent: bool) -> ProviderError {
    let status = resp.status.as_u16();
    let body = resp.value();
    let message = match body.get("error") {
        Some(Value::String(s)) => scrub_tokens(s),
        Some(Value::Object(o)) => {
            o.get("message").and_then(Value::as_str).map(scrub_tokens).unwrap_or_default()
        }
        _ => String::new(),
    };
    let message = if message.is_empty() { resp.snippet() } else { message };
    match status {
        429 => {
            let from_header = quota(resp).and_then(|q| q.reset_after).filter(|d| !d.is_zero());
            let from_body = body
                .pointer("/error/rate_reset")
                .and_then(Value::as_f64)
                .map(|s| Duration::from_secs_f64(s.max(0.0)));
            let wait =
                from_header.or_else(|| resp.retry_after()).or(from_body).unwrap_or(Duration::from_secs(1));
            let code =
                body.pointer("/error/rate_limit_type").and_then(Value::as_str).map(str::to_owned).or_else(
                    || {
                        Some(if resp.header("ratelimit").is_none() {
                            "stricter".into()
                        } else {
                            "rate_limited".into()
                        })
                    },
                );
            ProviderError::Throttled { retry_after: Some(wait), scope: ThrottleScope::Burst, status, code }
        }
        401 => ProviderError::Unauthorized { code: Some("Unauthorized".into()), message },
        402 => ProviderError::Forbidden { code: Some("plan_limit".into()), message },
        403 => ProviderError::Forbidden { code: None, message },
        404 => ProviderError::NotFound { message },
        409 => ProviderError::Conflict { existing_id: None, message },
        503 => ProviderError::Transient {
            status: Some(503),
            retry_after: resp.retry_after(),
            message: format!("HTTP 503: {}", resp.snippet()),
        },
        500..=599 if idempotent => ProviderError::Transient {
            status: Some(status),
            retry_after: resp.retry_after(),
            message: format!("HTTP {status}: {}", resp.snippet()),
        },
        500..=599 => ProviderError::OutcomeUnknown {
            message: format!("HTTP {status} from a gateway after a write was sent; it may have been applied"),
        },
        400..=499 => {
            let (field, reason) =
                match body.get("field-errors").and_then(Value::as_object).and_then(|m| m.iter().next()) {
                    Some((f, v)) => (
                        Some(f.clone()),
                        scrub_tokens(&v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())),
                    ),
                    None => {
                        let first = body
                            .get("errors")
                            .and_then(Value::as_array)
                            .and_then(|a| a.first())
                            .and_then(Value::as_str);
                        (None, first.map(scrub_tokens).unwrap_or(message))
                    }
                };
            ProviderError::Rejected { field, reason, code: None, status }
        }
        _ => ProviderError::Protocol {
            status,
            message: format!("unexpected HTTP {status}: {}", resp.snippet()),
        },
    }
}

fn rejected(field: &str, reason: &str) -> ProviderError {
    ProviderError::Rejected {
        field: Some(field.to_owned()),
        reason: reason.to_owned(),
        code: None,
        status: 400,
    }
}

fn require_lead(company_id: &Option<String>, what: &str) -> Result<String, ProviderError> {
    company_id.clone().filter(|c| !c.is_empty()).ok_or_else(|| {
        rejected("lead_id", &format!("Close {what} belong to a lead: company_id (the lead id) is required"))
    })
}

/// Run state kept in `SyncCursor::extra`.
#[derive(Debug, Default, Clone)]
struct RunState {
    /// Current window's lower bound (`on_or_after` / `date_updated__gte`).
    window: Option<DateTime<Utc>>,
    /// Search: objects read in the current server sequence.
    seen: u64,
    /// Opportunities: records at `window` already passed in the server order.
    skip: u64,
    /// The time of the last delivered group: the run's high water, or at the start of a run the
    /// previous run's (which is this run's `since`).
    known_at: Option<DateTime<Utc>>,
    /// Ids delivered at exactly `known_at`.
    known: Vec<String>,
}

impl RunState {
    fn read(c: &SyncCursor) -> Self {
        let e = &c.extra;
        Self {
            window: e.get("window").and_then(parse_time).or(if c.at_start() { c.since } else { None }),
            seen: e.get("seen").and_then(Value::as_u64).unwrap_or(0),
            skip: e.get("skip").and_then(Value::as_u64).unwrap_or(0),
            known_at: e.get("known_at").and_then(parse_time),
            known: e
                .get("known")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
        }
    }

    fn write(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(w) = self.window {
            m.insert("window".into(), json!(close_time(w)));
        }
        if self.seen > 0 {
            m.insert("seen".into(), json!(self.seen));
        }
        if self.skip > 0 {
            m.insert("skip".into(), json!(self.skip));
        }
        if let Some(k) = self.known_at
            && !self.known.is_empty()
        {
            m.insert("known_at".into(), json!(close_time(k)));
            m.insert("known".into(), json!(self.known));
        }
        Value::Object(m)
    }

    /// The part of the state the next run needs: the ids delivered at its `since`.
    fn carry_over(&self) -> Value {
        RunState { known_at: self.known_at, known: self.known.clone(), ..RunState::default() }.write()
    }

    /// Delivers the records not already delivered at the high-water time, raising the mark.
    fn deliver(&mut self, cursor: &mut SyncCursor, batch: Vec<CrmRecord>) -> Vec<CrmRecord> {
        let mut out = Vec::with_capacity(batch.len());
        for r in batch {
            let t = r.remote_updated_at;
            match self.known_at {
                Some(k) if t == k && self.known.contains(&r.external_id) => continue,
                Some(k) if t < k => {
                    // Older than the last group: windows start at or after it, so this does not
                    // happen; deliver it rather than guess.
                }
                Some(k) if t == k => {
                    if self.known.len() < MAX_KNOWN_IDS {
                        self.known.push(r.external_id.clone());
                    }
                }
                _ => {
                    self.known_at = Some(t);
                    self.known = vec![r.external_id.clone()];
                }
            }
            cursor.observe(t);
            out.push(r);
        }
        out
    }
}

impl CloseClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http, marker_fields: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn path(auth: &Auth, p: &str) -> String {
        if auth.api_base.path().trim_end_matches('/').ends_with("/api/v1") {
            p.to_owned()
        } else {
            format!("/api/v1{p}")
        }
    }

    /// Sends one request and returns the response whatever its status, with its quota.
    async fn send(
        &self,
        op: &'static str,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<(RawResponse, Option<QuotaObservation>), ProviderError> {
        let mut req = self.http.request(method, auth, &Self::path(auth, path))?;
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.http.send(Provider::Close, op, req, idempotent).await?;
        let q = quota(&resp);
        Ok((resp, q))
    }

    /// Sends one request; non-2xx answers become errors.
    async fn call(
        &self,
        op: &'static str,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<(Value, Option<QuotaObservation>), ProviderError> {
        let (resp, q) = self.send(op, auth, method, path, body, idempotent).await?;
        if resp.status.is_success() { Ok((resp.value(), q)) } else { Err(error(&resp, idempotent)) }
    }

    async fn create(
        &self,
        op: &'static str,
        auth: &Auth,
        path: &str,
        body: Value,
    ) -> ProviderResult<ExternalRef> {
        let (v, q) = self.call(op, auth, Method::POST, path, Some(&body), false).await?;
        let id = text(&v, "id").ok_or_else(|| ProviderError::Protocol {
            status: 200,
            message: "created object without id".into(),
        })?;
        Ok(Reply::new(ExternalRef { id, created: true }, q))
    }

    fn search_body(kind: ObjectKind, window: Option<DateTime<Utc>>, cursor: Option<&str>) -> Value {
        let ot = object_path(kind);
        let mut queries = vec![json!({"type": "object_type", "object_type": ot})];
        if let Some(w) = window {
            queries.push(json!({
                "type": "field_condition",
                "field": {"type": "regular_field", "object_type": ot, "field_name": "date_updated"},
                "condition": {"type": "moment_range", "on_or_after": {"type": "fixed_utc", "value": close_time(w)}},
            }));
        }
        json!({
            "query": {"type": "and", "queries": queries},
            "sort": [{"direction": "asc", "field": {"type": "regular_field", "object_type": ot, "field_name": "date_updated"}}],
            "_fields": {ot: fields(kind)},
            "_limit": SEARCH_LIMIT,
            "cursor": cursor,
        })
    }

    /// Contacts and leads: Advanced Filtering, ascending `date_updated`, body cursor.
    async fn sync_search(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let mut state = RunState::read(cursor);
        let mut next = cursor.clone();
        let body = Self::search_body(kind, state.window, cursor.token.as_deref());
        let (mut resp, mut q) =
            self.send("sync_search", auth, Method::POST, "/data/search/", Some(&body), true).await?;
        if cursor.token.is_some() && cursor_rejected(&resp) {
            // The stored cursor expired (or the sequence is gone): restart at the high-water time.
            state.window = state.known_at.or(state.window);
            state.seen = 0;
            let body = Self::search_body(kind, state.window, None);
            (resp, q) =
                self.send("sync_search", auth, Method::POST, "/data/search/", Some(&body), true).await?;
        }
        if !resp.status.is_success() {
            return Err(error(&resp, true));
        }
        let v = resp.value();
        let raw = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut batch = Vec::with_capacity(raw.len());
        for o in &raw {
            batch.push(record(kind, o)?);
        }
        let records = state.deliver(&mut next, batch);
        state.seen += raw.len() as u64;
        // A sequence ends silently at the cap, so it must never reach it: a null cursor then
        // always means the window is exhausted.
        let near_cap = state.seen + SEARCH_LIMIT >= SEARCH_CAP;
        match v.get("cursor").and_then(Value::as_str) {
            Some(c) if !near_cap => {
                next.phase = "records".into();
                next.token = Some(c.to_owned());
            }
            Some(_) => {
                // The next page would reach the sequence cap: restart the window at the high water.
                next.phase = "records".into();
                next.token = None;
                state.window = state.known_at.or(state.window);
                state.seen = 0;
            }
            None => {
                next.phase = "deleted".into();
                next.token = None;
                state.window = None;
                state.seen = 0;
            }
        }
        next.extra = state.write();
        Ok(Reply::new(SyncPage { records, deleted: Vec::new(), next, has_more: true }, q))
    }

    /// Opportunities: `date_updated__gte` window moved forward on every page.
    async fn sync_opportunities(&self, auth: &Auth, cursor: &SyncCursor) -> ProviderResult<SyncPage> {
        let mut state = RunState::read(cursor);
        let mut next = cursor.clone();
        let skip = state.skip.saturating_sub(OVERLAP);
        let mut path = format!(
            "/opportunity/?_order_by=date_updated&_limit={OPP_LIMIT}&_skip={skip}&_fields={}",
            OPP_FIELDS.join(",")
        );
        if let Some(w) = state.window {
            path.push_str("&date_updated__gte=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(close_time(w).as_bytes()).collect::<String>(),
            );
        }
        let (v, q) = self.call("sync_opportunities", auth, Method::GET, &path, None, true).await?;
        let raw = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut batch = Vec::with_capacity(raw.len());
        for o in &raw {
            batch.push(record(ObjectKind::Deal, o)?);
        }
        let last = batch.last().map(|r| r.remote_updated_at);
        let at_last =
            last.map(|l| batch.iter().filter(|r| r.remote_updated_at == l).count() as u64).unwrap_or(0);
        let records = state.deliver(&mut next, batch);
        if let Some(l) = last {
            if state.window == Some(l) {
                state.skip = skip + raw.len() as u64;
            } else {
                state.window = Some(l);
                state.skip = at_last;
            }
        }
        if v.get("has_more").and_then(Value::as_bool).unwrap_or(false) {
            next.phase = "records".into();
        } else {
            next.phase = "deleted".into();
            state.window = None;
            state.skip = 0;
        }
        next.token = None;
        next.extra = state.write();
        Ok(Reply::new(SyncPage { records, deleted: Vec::new(), next, has_more: true }, q))
    }

    /// Deletions from the event log, newest first, until the cursor runs out or the window ends.
    async fn sync_deleted(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let mut path =
            format!("/event/?object_type={}&action=deleted&_limit={EVENT_LIMIT}", object_path(kind));
        if let Some(since) = cursor.since {
            path.push_str("&date_updated__gte=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(close_time(since).as_bytes()).collect::<String>(),
            );
        }
        if let Some(t) = &cursor.token {
            path.push_str("&_cursor=");
            path.push_str(&url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>());
        }
        let (v, q) = self.call("sync_deleted", auth, Method::GET, &path, None, true).await?;
        let mut deleted = Vec::new();
        let mut passed_window = false;
        for e in v.get("data").and_then(Value::as_array).into_iter().flatten() {
            let at = e.get("date_updated").and_then(parse_time);
            if let (Some(since), Some(at)) = (cursor.since, at)
                && at < since
            {
                passed_window = true;
                break;
            }
            if let Some(id) = text(e, "object_id") {
                deleted.push(DeletedRecord { external_id: id, deleted_at: at });
            }
        }
        match v.get("cursor_next").and_then(Value::as_str).filter(|_| !passed_window) {
            Some(c) => {
                let mut next = cursor.clone();
                next.token = Some(c.to_owned());
                Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: true }, q))
            }
            None => {
                let mut next = cursor.next_run();
                next.extra = RunState::read(cursor).carry_over();
                Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: false }, q))
            }
        }
    }

    /// The id of the marker custom field for this credential (looked up once, then cached).
    async fn marker_field(&self, auth: &Auth) -> Result<Option<String>, ProviderError> {
        use sha2::{Digest, Sha256};
        let secret = match &auth.credential {
            Credential::Bearer(s)
            | Credential::BasicKey(s)
            | Credential::ZohoOauth(s)
            | Credential::ApiTokenHeader(s) => s,
        };
        let mut h = Sha256::new();
        h.update(auth.api_base.as_str().as_bytes());
        h.update([0]);
        h.update(secret.expose_secret().as_bytes());
        let key = hex::encode(h.finalize());
        if let Some(hit) = self.marker_fields.lock().get(&key) {
            return Ok(hit.clone());
        }
        let (v, _) =
            self.call("marker_field", auth, Method::GET, "/custom_field/contact/", None, true).await?;
        let id = v
            .get("data")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|f| f.get("name").and_then(Value::as_str) == Some(MARKER_FIELD_NAME)))
            .and_then(|f| text(f, "id"));
        self.marker_fields.lock().insert(key, id.clone());
        Ok(id)
    }

    /// A contact by the marker in its `crm_fleet_action_id` field (an exact `term` search); an
    /// organization without that field cannot tell, and says so.
    async fn find_contact_by_marker(&self, auth: &Auth, marker: &str) -> ProviderResult<Option<ExternalRef>> {
        let Some(field) = self.marker_field(auth).await? else {
            return Err(ProviderError::OutcomeUnknown {
                message: "the organization has no crm_fleet_action_id contact field, so a contact an \
                          earlier attempt may have created cannot be found by its marker"
                    .into(),
            });
        };
        let body = json!({
            "query": {"type": "and", "queries": [
                {"type": "object_type", "object_type": "contact"},
                {"type": "field_condition", "field": {"type": "custom_field", "custom_field_id": field},
                 "condition": {"type": "term", "values": [marker]}},
            ]},
            "_fields": {"contact": ["id"]},
            "_limit": 1,
        });
        let (v, q) =
            self.call("find_by_marker", auth, Method::POST, "/data/search/", Some(&body), true).await?;
        let id = v.pointer("/data/0/id").and_then(Value::as_str).map(str::to_owned);
        Ok(Reply::new(id.map(|id| ExternalRef { id, created: false }), q))
    }
}

fn contact_body(c: &ContactInput) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let name = match (&c.first_name, &c.last_name) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (None, None) => None,
    };
    if let Some(n) = name {
        m.insert("name".into(), json!(n));
    }
    if let Some(t) = &c.title {
        m.insert("title".into(), json!(t));
    }
    if let Some(e) = &c.email {
        m.insert("emails".into(), json!([{"email": e, "type": "office"}]));
    }
    if let Some(p) = &c.phone {
        m.insert("phones".into(), json!([{"phone": p, "type": "office"}]));
    }
    m
}

#[async_trait::async_trait]
impl CrmClient for CloseClient {
    fn provider(&self) -> Provider {
        Provider::Close
    }

    async fn sync_page(
        &self,
        auth: &Auth,
        object: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        match (cursor.phase.as_str(), object) {
            ("deleted", _) => self.sync_deleted(auth, object, cursor).await,
            (_, ObjectKind::Deal) => self.sync_opportunities(auth, cursor).await,
            _ => self.sync_search(auth, object, cursor).await,
        }
    }

    async fn get(&self, auth: &Auth, object: ObjectKind, id: &str) -> ProviderResult<Option<CrmRecord>> {
        let path = format!("/{}/{id}/?_fields={}", object_path(object), fields(object).join(","));
        match self.call("get", auth, Method::GET, &path, None, true).await {
            Ok((v, q)) => Ok(Reply::new(Some(record(object, &v)?), q)),
            Err(ProviderError::NotFound { .. }) => Ok(Reply::new(None, None)),
            Err(e) => Err(e),
        }
    }

    async fn create_task(&self, auth: &Auth, t: &CreateTask) -> ProviderResult<ExternalRef> {
        let lead = require_lead(&t.company_id, "tasks")?;
        let mut text = t.subject.clone();
        if let Some(b) = t.body.as_deref().filter(|b| !b.is_empty()) {
            text.push_str("\n\n");
            text.push_str(b);
        }
        let mut body = json!({"_type": "lead", "lead_id": lead, "text": with_marker(&text, &t.marker)});
        if let Some(d) = t.due_at {
            body["date"] = json!(close_time(d));
        }
        if let Some(c) = &t.contact_id {
            body["contact_id"] = json!(c);
        }
        if let Some(o) = &t.owner_id {
            body["assigned_to"] = json!(o);
        }
        self.create("create_task", auth, "/task/", body).await
    }

    async fn update_deal(&self, auth: &Auth, u: &UpdateDeal) -> ProviderResult<ExternalRef> {
        let mut body = serde_json::Map::new();
        if let Some(s) = &u.stage {
            body.insert("status_id".into(), json!(s));
        }
        if let Some(a) = u.amount {
            if !a.is_finite() {
                return Err(rejected("value", "amount must be a finite number"));
            }
            body.insert("value".into(), json!((a * 100.0).round() as i64));
        }
        if let Some(d) = u.close_date {
            body.insert("date_won".into(), json!(d.to_string()));
        }
        let path = format!("/opportunity/{}/", u.deal_id);
        let (_, q) =
            self.call("update_deal", auth, Method::PUT, &path, Some(&Value::Object(body)), true).await?;
        Ok(Reply::new(ExternalRef { id: u.deal_id.clone(), created: false }, q))
    }

    async fn log_call(&self, auth: &Auth, c: &LogCall) -> ProviderResult<ExternalRef> {
        let lead = require_lead(&c.company_id, "calls")?;
        let mut note = c.subject.clone();
        if let Some(b) = c.body.as_deref().filter(|b| !b.is_empty()) {
            note.push_str("\n\n");
            note.push_str(b);
        }
        let direction = if c.direction.eq_ignore_ascii_case("inbound") { "inbound" } else { "outbound" };
        let mut body = json!({
            "lead_id": lead,
            "direction": direction,
            "status": "completed",
            "duration": c.duration_secs,
            "note": with_marker(&note, &c.marker),
            "activity_at": close_time(c.occurred_at),
        });
        if let Some(x) = &c.contact_id {
            body["contact_id"] = json!(x);
        }
        self.create("log_call", auth, "/activity/call/", body).await
    }

    async fn create_contact(&self, auth: &Auth, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let mut body = contact_body(c);
        if let Some(l) = c.company_id.as_deref().filter(|l| !l.is_empty()) {
            body.insert("lead_id".into(), json!(l));
        }
        if !c.marker.is_empty()
            && let Some(field) = self.marker_field(auth).await?
        {
            body.insert(format!("custom.{field}"), json!(c.marker));
        }
        self.create("create_contact", auth, "/contact/", Value::Object(body)).await
    }

    async fn update_contact(&self, auth: &Auth, id: &str, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let path = format!("/contact/{id}/");
        let (_, q) = self
            .call("update_contact", auth, Method::PUT, &path, Some(&Value::Object(contact_body(c))), true)
            .await?;
        Ok(Reply::new(ExternalRef { id: id.to_owned(), created: false }, q))
    }

    async fn create_note(&self, auth: &Auth, n: &CreateNote) -> ProviderResult<ExternalRef> {
        let lead = require_lead(&n.company_id, "notes")?;
        let mut body = json!({"lead_id": lead, "note": with_marker(&n.body, &n.marker)});
        if let Some(t) = &n.title {
            body["title"] = json!(t);
        }
        if let Some(x) = &n.contact_id {
            body["contact_id"] = json!(x);
        }
        self.create("create_note", auth, "/activity/note/", body).await
    }

    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>> {
        let body = json!({
            "query": {"type": "and", "queries": [
                {"type": "object_type", "object_type": "contact"},
                {"type": "has_related", "this_object_type": "contact", "related_object_type": "contact_email",
                 "related_query": {"type": "field_condition",
                    "field": {"type": "regular_field", "object_type": "contact_email", "field_name": "email"},
                    "condition": {"type": "text", "mode": "phrase", "value": email}}},
            ]},
            "_fields": {"contact": CONTACT_FIELDS},
            "_limit": 25,
        });
        let (v, q) = self
            .call("search_contact_by_email", auth, Method::POST, "/data/search/", Some(&body), true)
            .await?;
        let wanted = email.trim().to_lowercase();
        // Text search matches words; keep only contacts with exactly this address.
        let hit = v.get("data").and_then(Value::as_array).and_then(|a| {
            a.iter().find(|c| {
                c.get("emails").and_then(Value::as_array).is_some_and(|es| {
                    es.iter().any(|e| {
                        e.get("email")
                            .and_then(Value::as_str)
                            .is_some_and(|x| x.trim().to_lowercase() == wanted)
                    })
                })
            })
        });
        Ok(Reply::new(hit.map(|c| record(ObjectKind::Contact, c)).transpose()?, q))
    }

    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        match kind {
            ActionObject::Contact => self.find_contact_by_marker(auth, marker).await,
            // Without an age: back to the end of the list, or "outcome unknown" past the cap.
            _ => self.find_by_marker_within(auth, kind, marker, std::time::Duration::MAX).await,
        }
    }

    async fn find_by_marker_within(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
        age: std::time::Duration,
    ) -> ProviderResult<Option<ExternalRef>> {
        let (list, field, what) = match kind {
            ActionObject::Task => {
                ("/task/?_order_by=-date_created&_fields=id,text,date_created", "text", "tasks")
            }
            ActionObject::Call => ("/activity/call/?_fields=id,note,date_created", "note", "calls"),
            ActionObject::Note => ("/activity/note/?_fields=id,note,date_created", "note", "notes"),
            ActionObject::Contact => return self.find_contact_by_marker(auth, marker).await,
        };
        let token = marker_token(marker);
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let mut top: Option<DateTime<Utc>> = None;
        for page in 0..MARKER_SCAN_PAGES_WITHIN {
            let path = format!("{list}&_limit={MARKER_SCAN}&_skip={}", page * MARKER_SCAN);
            let (v, q) = self.call("find_by_marker", auth, Method::GET, &path, None, true).await?;
            let items = v.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            if let Some(id) = items
                .iter()
                .find(|o| o.get(field).and_then(Value::as_str).is_some_and(|t| t.contains(&token)))
                .and_then(|o| text(o, "id"))
            {
                return Ok(Reply::new(Some(ExternalRef { id, created: false }), q));
            }
            let created: Vec<DateTime<Utc>> =
                items.iter().filter_map(|o| o.get("date_created").and_then(parse_time)).collect();
            top = top.or_else(|| created.iter().max().copied());
            let oldest_needed = top.map(|t| {
                t.checked_sub_signed(age)
                    .and_then(|t| t.checked_sub_signed(MARKER_AGE_MARGIN))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC)
            });
            let passed = oldest_needed.is_some_and(|o| created.iter().any(|c| *c < o));
            let ended = (items.len() as u64) < MARKER_SCAN || v.get("has_more") == Some(&Value::Bool(false));
            if passed || ended {
                return Ok(Reply::new(None, q));
            }
        }
        Err(ProviderError::OutcomeUnknown {
            message: format!(
                "reconciliation read the {} most recently created {what} without passing the action's age; not creating again",
                MARKER_SCAN_PAGES_WITHIN * MARKER_SCAN
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str, headers: &[(&str, &str)]) -> RawResponse {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                reqwest::header::HeaderValue::from_str(v).expect("value"),
            );
        }
        RawResponse {
            status: reqwest::StatusCode::from_u16(status).expect("status"),
            headers: h,
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn maps_documented_429_bodies_and_headers() {
        let legacy = resp(
            429,
            r#"{"error":{"message":"API call count exceeded for this period","rate_reset":0.870663,"rate_limit":40,"rate_window":1,"rate_limit_type":"key"}}"#,
            &[("ratelimit", "limit=40, remaining=0, reset=0.870663"), ("retry-after", "1")],
        );
        assert_eq!(
            error(&legacy, true),
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs_f64(0.870663)),
                scope: ThrottleScope::Burst,
                status: 429,
                code: Some("key".into())
            }
        );
        // Stricter endpoints: only retry-after (and maybe rate_reset).
        let strict = resp(
            429,
            r#"{"error":{"message":"API call count exceeded for this period","rate_reset":3.2}}"#,
            &[("retry-after", "4")],
        );
        assert_eq!(
            error(&strict, false),
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs(4)),
                scope: ThrottleScope::Burst,
                status: 429,
                code: Some("stricter".into())
            }
        );
        // The deprecated body may be empty.
        let empty = resp(429, "", &[("ratelimit", "limit=16, remaining=0, reset=2.5"), ("retry-after", "3")]);
        assert!(
            matches!(error(&empty, true), ProviderError::Throttled { retry_after: Some(d), .. } if d == Duration::from_millis(2500))
        );
    }

    #[test]
    fn maps_documented_error_bodies() {
        let unauthorized = resp(401, r#"{"error":"Unauthorized"}"#, &[]);
        assert_eq!(
            error(&unauthorized, true),
            ProviderError::Unauthorized { code: Some("Unauthorized".into()), message: "Unauthorized".into() }
        );
        let invalid = resp(
            400,
            r#"{"error":"lead_id: This field is required.","errors":[],"field-errors":{"lead_id":"This field is required."}}"#,
            &[],
        );
        assert_eq!(
            error(&invalid, false),
            ProviderError::Rejected {
                field: Some("lead_id".into()),
                reason: "This field is required.".into(),
                code: None,
                status: 400
            }
        );
        let general = resp(400, r#"{"error":"Bad","errors":["Invalid query."],"field-errors":{}}"#, &[]);
        assert!(
            matches!(error(&general, true), ProviderError::Rejected { field: None, ref reason, .. } if reason == "Invalid query.")
        );
        assert!(
            matches!(error(&resp(402, r#"{"error":"Plan limit"}"#, &[]), false), ProviderError::Forbidden { code: Some(ref c), .. } if c == "plan_limit")
        );
        assert!(matches!(
            error(&resp(404, r#"{"error":"Empty query: Lead matching query does not exist."}"#, &[]), true),
            ProviderError::NotFound { .. }
        ));
        assert!(matches!(
            error(&resp(503, "<html>", &[]), false),
            ProviderError::Transient { status: Some(503), .. }
        ));
        assert!(matches!(
            error(&resp(502, "<html>", &[]), true),
            ProviderError::Transient { status: Some(502), .. }
        ));
        assert!(matches!(error(&resp(504, "<html>", &[]), false), ProviderError::OutcomeUnknown { .. }));
        assert!(cursor_rejected(&resp(
            400,
            r#"{"error":"cursor: Invalid or expired cursor.","errors":[],"field-errors":{"cursor":"Invalid or expired cursor."}}"#,
            &[]
        )));
    }

    #[test]
    fn parses_the_ratelimit_header() {
        let r = resp(200, "{}", &[("ratelimit", "limit=100, remaining=50, reset=5")]);
        assert_eq!(
            quota(&r),
            Some(QuotaObservation {
                limit: Some(100),
                remaining: Some(50),
                reset_after: Some(Duration::from_secs(5)),
                ..Default::default()
            })
        );
        let legacy = resp(
            200,
            "{}",
            &[("x-rate-limit-limit", "40"), ("x-rate-limit-remaining", "3"), ("x-rate-limit-reset", "0.5")],
        );
        assert_eq!(quota(&legacy).and_then(|q| q.remaining), Some(3));
        assert_eq!(quota(&resp(200, "{}", &[])), None);
    }

    #[test]
    fn normalises_contacts_and_opportunities() {
        let c = json!({"id":"cont_1","lead_id":"lead_1","name":"Jane Doe","emails":[{"email":"jane@x.com","type":"office"}],
            "phones":[{"phone":"+1555","type":"office"}],"date_updated":"2026-01-05T09:00:00.123000+00:00"});
        let r = record(ObjectKind::Contact, &c).expect("record");
        assert_eq!((r.first_name.as_deref(), r.last_name.as_deref()), (Some("Jane"), Some("Doe")));
        assert_eq!(r.email.as_deref(), Some("jane@x.com"));
        assert_eq!(r.company.as_deref(), Some("lead_1"));
        assert_eq!(r.remote_updated_at.timestamp_subsec_micros(), 123_000);
        let o = json!({"id":"oppo_1","lead_id":"lead_1","lead_name":"Acme","value":300000,"value_currency":"USD",
            "status_id":"stat_1","date_won":"2026-02-01","date_updated":"2026-01-05T09:00:00.000000+00:00"});
        let r = record(ObjectKind::Deal, &o).expect("record");
        assert_eq!(r.amount, Some(3000.0), "value is in cents");
        assert_eq!(r.close_date, NaiveDate::from_ymd_opt(2026, 2, 1));
        assert_eq!(
            parse_time(&json!("2019-01-15T12:48:23.395000")).map(|t| t.timestamp_subsec_millis()),
            Some(395)
        );
        assert_eq!(with_marker("Call back", "m-1"), "Call back [crm-fleet:m-1]");
    }

    #[test]
    fn delivery_drops_records_already_delivered_at_the_high_water_time() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc);
        let rec = |id: &str, at: &str| CrmRecord::new(id, ObjectKind::Contact, t(at));
        let mut cursor = SyncCursor::full();
        let mut st = RunState::default();
        let got = st.deliver(
            &mut cursor,
            vec![
                rec("a", "2026-01-01T00:00:00Z"),
                rec("b", "2026-01-02T00:00:00Z"),
                rec("c", "2026-01-02T00:00:00Z"),
            ],
        );
        assert_eq!(got.len(), 3);
        assert_eq!(st.known, vec!["b".to_owned(), "c".to_owned()]);
        // A restart at the high-water time returns b and c again, plus d: only d is new.
        let again = st.deliver(
            &mut cursor,
            vec![
                rec("b", "2026-01-02T00:00:00Z"),
                rec("c", "2026-01-02T00:00:00Z"),
                rec("d", "2026-01-02T00:00:00Z"),
            ],
        );
        assert_eq!(again.iter().map(|r| r.external_id.as_str()).collect::<Vec<_>>(), vec!["d"]);
        // b changed later: delivered again at its new time.
        let later = st.deliver(&mut cursor, vec![rec("b", "2026-01-03T00:00:00Z")]);
        assert_eq!(later.len(), 1);
        assert_eq!(st.known, vec!["b".to_owned()]);
    }
}
