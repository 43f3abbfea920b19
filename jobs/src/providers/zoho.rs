//! Zoho CRM v7 client (`Authorization: Zoho-oauthtoken …` against the connection's `api_domain`).
//!
//! # Sync strategy
//!
//! `GET /crm/v7/{module}?fields=…&sort_by=Modified_Time&sort_order=asc&per_page=200` with
//! `If-Modified-Since`, then `GET /crm/v7/{module}/deleted?type=all` for the run's window. Zoho stamps
//! `Modified_Time` at second precision and `page` is an offset (records modified between pages shift
//! every later page), so the scan is a keyset walk over `(Modified_Time, id)`:
//!
//! 1. A window starts at second `W` (the run's `since`, or the last `Modified_Time` read). The request
//!    sends `If-Modified-Since: W − 1 s`, so it returns everything modified at `W` or later whether the
//!    server reads the header as "after" or "at or after".
//! 2. Records older than `W`, and records at exactly `W` whose ids were already delivered (the
//!    cursor's `seen` list), are dropped; everything else is delivered and raises `high_water`.
//! 3. When the page ends past `W`, the next page restarts the window at the page's last
//!    `Modified_Time` with `page=1` (records changed meanwhile move to a later second and come later;
//!    none is skipped and none is fetched twice). Only when a whole page shares second `W` does the
//!    walk go to `page=2…10` of the same window, then to `page_token` (`info.next_page_token`) past
//!    record 2,000, as Zoho requires.
//! 4. `304 Not Modified` and `204 No Content` are empty pages. After the last records page the run
//!    reads `/deleted` (newest first, `If-Modified-Since: since − 1 s`, deletions older than `since`
//!    dropped), then ends with `cursor.next_run()` carrying in `extra.seen` the ids already delivered
//!    at the new `since` second, so the next run neither loses a record modified later in that same
//!    second nor repeats the ones it has.
//!
//! Each page's `next` resumes exactly after that page (a run resumed after its page token expired
//! restarts the crowded second at `page=1`, re-delivering rather than skipping). Residual risks: inside one crowded second
//! (more than 200 records sharing a `Modified_Time`) pages are offsets, so a record of that second
//! changed between two of its pages can shift another one out of the page; deletions at the `since`
//! second may be reported twice (deletes are idempotent); a record modified twice within one second
//! after it was delivered keeps its `(id, Modified_Time)` and is not re-read until it changes again.
//!
//! # Idempotency of creates
//!
//! Tasks, calls, notes and contacts carry the action's `marker` in the org's unique custom field
//! `CrmFleet_Action_Id` and are written with `POST /{module}/upsert` and
//! `duplicate_check_fields: ["CrmFleet_Action_Id"]`: a retried create matches the record the first
//! attempt made and updates it (`action: "update"`, [`ExternalRef::created`] `false`) instead of
//! inserting a second one. A create whose answer was lost returns
//! [`ProviderError::OutcomeUnknown`]; [`CrmClient::find_by_marker`] then reconciles with a COQL query
//! on the marker (COQL has no search-index delay; `/search` may miss a record written seconds ago).
//! Residual risks: the field must exist and be unique in the tenant's org (without it upserts are
//! rejected, loudly); a retry re-applies our values over edits a user made in between; upsert on Notes
//! is not confirmed by Zoho's documentation. A contact whose email belongs to another contact is
//! `DUPLICATE_DATA` → [`ProviderError::Conflict`] with the existing id. Updates (`PUT` of absolute
//! values) are idempotent and sent as such: a lost answer is transient.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{RawResponse, common_status, scrub_tokens};
use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, CrmClient, CrmRecord, DeletedRecord,
    ExternalRef, Http, LogCall, ObjectKind, Provider, ProviderError, ProviderResult, QuotaObservation, Reply,
    SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};

/// The unique custom field holding crm-fleet's action marker (Contacts, Tasks, Calls, Notes).
pub const MARKER_FIELD: &str = "CrmFleet_Action_Id";
/// Records per list page (Zoho's maximum).
const PER_PAGE: u32 = 200;
/// `page` reaches the first 2,000 records only: pages 1 to 10 of 200.
const LAST_DISCRETE_PAGE: u32 = 10;
/// Ids kept in the cursor to skip at a window's first second; beyond this the second is re-read
/// (harmless: upserts are idempotent).
const MAX_SEEN: usize = 500;
/// Wait after a concurrency refusal when Zoho says nothing (there is no documented `Retry-After`).
const CONCURRENCY_BACKOFF: Duration = Duration::from_secs(2);
/// Wait after a credit refusal when no header says when credits free up.
const CREDITS_BACKOFF: Duration = Duration::from_secs(3600);

/// Zoho CRM client.
#[derive(Debug, Clone)]
pub struct ZohoClient {
    http: Http,
}

fn module(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "Contacts",
        ObjectKind::Company => "Accounts",
        ObjectKind::Deal => "Deals",
    }
}

fn fields(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => {
            "First_Name,Last_Name,Full_Name,Email,Phone,Mobile,Account_Name,Owner,Modified_Time"
        }
        ObjectKind::Company => "Account_Name,Phone,Website,Owner,Modified_Time",
        ObjectKind::Deal => {
            "Deal_Name,Amount,Stage,Closing_Date,Account_Name,Contact_Name,Pipeline,Owner,Modified_Time"
        }
    }
}

fn action_module(kind: ActionObject) -> &'static str {
    match kind {
        ActionObject::Task => "Tasks",
        ActionObject::Call => "Calls",
        ActionObject::Note => "Notes",
        ActionObject::Contact => "Contacts",
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// Zoho's ISO 8601 with an offset, at second precision.
fn zoho_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn text(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn lookup_id(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(|l| l.get("id")).and_then(Value::as_str).map(str::to_owned)
}

fn protocol(status: u16, message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol { status, message: message.into() }
}

/// Normalises a record of `Contacts`, `Accounts` or `Deals`.
fn record(kind: ObjectKind, obj: &Value) -> Result<CrmRecord, ProviderError> {
    let id = obj.get("id").and_then(Value::as_str).ok_or_else(|| protocol(200, "record without id"))?;
    let updated = obj
        .get("Modified_Time")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .ok_or_else(|| protocol(200, format!("record {id} without a readable Modified_Time")))?;
    let mut r = CrmRecord::new(id, kind, updated);
    r.owner = lookup_id(obj, "Owner");
    r.phone = text(obj, "Phone").or_else(|| text(obj, "Mobile"));
    match kind {
        ObjectKind::Contact => {
            r.email = text(obj, "Email");
            r.first_name = text(obj, "First_Name");
            r.last_name = text(obj, "Last_Name");
            r.name = text(obj, "Full_Name").or_else(|| match (&r.first_name, &r.last_name) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            });
            r.company = lookup_id(obj, "Account_Name");
        }
        ObjectKind::Company => r.name = text(obj, "Account_Name"),
        ObjectKind::Deal => {
            r.name = text(obj, "Deal_Name");
            r.amount = obj.get("Amount").and_then(Value::as_f64);
            r.currency = text(obj, "Currency");
            r.stage = text(obj, "Stage");
            r.close_date =
                text(obj, "Closing_Date").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            r.company = lookup_id(obj, "Account_Name");
        }
    }
    r.raw = obj.clone();
    Ok(r)
}

/// The credit headers (`X-RATELIMIT-LIMIT` / `-REMAINING`: the rolling 24 h allocation).
fn quota(resp: &RawResponse) -> Option<QuotaObservation> {
    let q = QuotaObservation {
        daily_limit: resp.header_u64("x-ratelimit-limit"),
        daily_remaining: resp.header_u64("x-ratelimit-remaining"),
        ..QuotaObservation::default()
    };
    (!q.is_empty()).then_some(q)
}

fn throttled(resp: &RawResponse, body: &Value) -> ProviderError {
    let message = body.get("message").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    let code = body.get("code").and_then(Value::as_str).unwrap_or("TOO_MANY_REQUESTS").to_owned();
    let reset = resp.header_u64("x-ratelimit-reset").filter(|s| *s > 0).map(Duration::from_secs);
    let credits_gone = resp.header_u64("x-ratelimit-remaining") == Some(0) || message.contains("credit");
    let (scope, wait) = if credits_gone {
        (ThrottleScope::Daily, resp.retry_after().or(reset).unwrap_or(CREDITS_BACKOFF))
    } else {
        (ThrottleScope::Concurrency, resp.retry_after().unwrap_or(CONCURRENCY_BACKOFF))
    };
    ProviderError::Throttled {
        retry_after: Some(wait),
        scope,
        status: resp.status.as_u16(),
        code: Some(code),
    }
}

/// Maps one error object (top-level or a `data[]` entry).
fn entry_error(e: &Value, status: u16) -> ProviderError {
    let code = e.get("code").and_then(Value::as_str).unwrap_or("").to_owned();
    let message = e.get("message").and_then(Value::as_str).map(scrub_tokens).unwrap_or_default();
    let details = e.get("details").cloned().unwrap_or(Value::Null);
    match code.as_str() {
        "MULTIPLE_OR_MULTI_ERRORS" => match details.pointer("/errors/0") {
            Some(first) => entry_error(first, status),
            None => rejected(code, message, None, status),
        },
        "DUPLICATE_DATA" => ProviderError::Conflict {
            existing_id: details
                .pointer("/duplicate_record/id")
                .or_else(|| details.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            message: with_field(&message, &details),
        },
        // A record id that does not exist (or was deleted) is INVALID_DATA with `details.id`.
        "INVALID_DATA" if details.get("id").is_some() && details.get("api_name").is_none() => {
            ProviderError::NotFound { message }
        }
        "INVALID_DATA" if message.contains("id given seems to be invalid") => {
            ProviderError::NotFound { message }
        }
        "RECORD_LOCKED" => ProviderError::Transient { status: Some(status), retry_after: None, message },
        "INVALID_TOKEN" | "AUTHENTICATION_FAILURE" => {
            ProviderError::Unauthorized { code: Some(code), message }
        }
        "OAUTH_SCOPE_MISMATCH" | "NO_PERMISSION" => ProviderError::Forbidden { code: Some(code), message },
        "INVALID_URL_PATTERN" => ProviderError::NotFound { message },
        "INTERNAL_ERROR" | "INTERNAL_SERVER_ERROR" | "SERVICE_UNAVAILABLE" => {
            ProviderError::Transient { status: Some(status), retry_after: None, message }
        }
        _ => {
            let field = details
                .get("api_name")
                .or_else(|| details.get("param_name"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            rejected(code, message, field, status)
        }
    }
}

fn with_field(message: &str, details: &Value) -> String {
    match details.get("api_name").and_then(Value::as_str) {
        Some(f) => format!("{message} ({f})"),
        None => message.to_owned(),
    }
}

fn rejected(code: String, message: String, field: Option<String>, status: u16) -> ProviderError {
    ProviderError::Rejected {
        field,
        reason: if message.is_empty() { code.clone() } else { message },
        code: (!code.is_empty()).then_some(code),
        status,
    }
}

/// Maps an error response: 5xx are transient, per-record failures come from `data[]`, the rest from
/// the top-level `{"code","details","message","status"}`.
fn error(resp: &RawResponse) -> ProviderError {
    if let Some(e) = common_status(resp) {
        return e;
    }
    let status = resp.status.as_u16();
    let body = resp.value();
    if status == 429 {
        return throttled(resp, &body);
    }
    if let Some(first) = body
        .get("data")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|e| e.get("status").and_then(Value::as_str) == Some("error")))
    {
        return entry_error(first, status);
    }
    if body.get("code").is_none() {
        return match status {
            401 => ProviderError::Unauthorized { code: None, message: resp.snippet() },
            403 => ProviderError::Forbidden { code: None, message: resp.snippet() },
            404 => ProviderError::NotFound { message: resp.snippet() },
            _ => protocol(status, format!("unexpected HTTP {status}: {}", resp.snippet())),
        };
    }
    match (status, entry_error(&body, status)) {
        (401, e @ (ProviderError::Unauthorized { .. } | ProviderError::Forbidden { .. })) => e,
        (401, _) => ProviderError::Unauthorized {
            code: body.get("code").and_then(Value::as_str).map(str::to_owned),
            message: body.get("message").and_then(Value::as_str).unwrap_or("").to_owned(),
        },
        (404, _) => ProviderError::NotFound {
            message: body.get("message").and_then(Value::as_str).unwrap_or("not found").to_owned(),
        },
        (_, e) => e,
    }
}

/// The outcome of a one-record write: its id and whether it was inserted.
fn write_outcome(resp: &RawResponse) -> Result<(String, bool), ProviderError> {
    let status = resp.status.as_u16();
    let body = resp.value();
    let entry = body.pointer("/data/0").ok_or_else(|| protocol(status, "write answer without data[0]"))?;
    if entry.get("status").and_then(Value::as_str) != Some("success") {
        return Err(entry_error(entry, status));
    }
    let id = entry
        .pointer("/details/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| protocol(status, "write answer without details.id"))?;
    let inserted = match entry.get("action").and_then(Value::as_str) {
        Some(action) => action == "insert",
        None => entry.get("message").and_then(Value::as_str) == Some("record added"),
    };
    Ok((id, inserted))
}

/// Where a sync window stands, kept in [`SyncCursor::extra`].
#[derive(Debug, Clone, PartialEq)]
struct Window {
    /// The window's first second (epoch ms); `None` on a full sync's first window.
    start: Option<i64>,
    /// Ids already delivered whose `Modified_Time` is exactly `start`.
    seen: Vec<String>,
    /// `page` within the window (used only while a page-full of records shares one second).
    page: u32,
}

impl Window {
    fn of(cursor: &SyncCursor) -> Self {
        let e = &cursor.extra;
        Self {
            start: e.get("w").and_then(Value::as_i64).or(cursor.since.map(|s| s.timestamp_millis())),
            seen: e
                .get("seen")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            page: e.get("page").and_then(Value::as_u64).map(|p| p.max(1) as u32).unwrap_or(1),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(w) = self.start {
            m.insert("w".into(), json!(w));
        }
        if !self.seen.is_empty() && self.seen.len() <= MAX_SEEN {
            m.insert("seen".into(), json!(self.seen));
        }
        m.insert("page".into(), json!(self.page));
        Value::Object(m)
    }
}

fn ims_header(start_ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(start_ms - 1000).map(zoho_time)
}

/// Whether a 400 says the `page_token` expired or no longer fits the request.
fn token_expired(resp: &RawResponse) -> bool {
    matches!(
        resp.value().get("code").and_then(Value::as_str),
        Some("EXPIRED_VALUE" | "TOKEN_BOUND_DATA_MISMATCH")
    )
}

fn escape_coql(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

impl ZohoClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http }
    }

    /// Sends one request; returns the response whatever its status, with its quota.
    async fn send(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> Result<(RawResponse, Option<QuotaObservation>), ProviderError> {
        let resp = self.http.send(Provider::Zoho, op, req, idempotent).await?;
        let q = quota(&resp);
        Ok((resp, q))
    }

    /// Sends one request and maps any non-2xx status to an error.
    async fn call(
        &self,
        op: &'static str,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotent: bool,
    ) -> Result<(RawResponse, Option<QuotaObservation>), ProviderError> {
        let mut req = self.http.request(method, auth, path)?;
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (resp, q) = self.send(op, req, idempotent).await?;
        if resp.status.is_success() || resp.status.as_u16() == 304 {
            Ok((resp, q))
        } else {
            Err(error(&resp))
        }
    }

    /// A create of one record: upsert on the marker when there is one, else a plain insert.
    async fn create(
        &self,
        op: &'static str,
        auth: &Auth,
        kind: ActionObject,
        mut record: Map<String, Value>,
        marker: &str,
    ) -> ProviderResult<ExternalRef> {
        let module = action_module(kind);
        let (path, body) = if marker.is_empty() {
            (format!("/crm/v7/{module}"), json!({ "data": [record] }))
        } else {
            record.insert(MARKER_FIELD.into(), json!(marker));
            (
                format!("/crm/v7/{module}/upsert"),
                json!({ "data": [record], "duplicate_check_fields": [MARKER_FIELD] }),
            )
        };
        let (resp, q) = self.call(op, auth, Method::POST, &path, Some(body), false).await?;
        let (id, created) = write_outcome(&resp)?;
        Ok(Reply::new(ExternalRef { id, created }, q))
    }

    async fn update(
        &self,
        op: &'static str,
        auth: &Auth,
        module: &str,
        id: &str,
        record: Map<String, Value>,
    ) -> ProviderResult<ExternalRef> {
        let path = format!("/crm/v7/{module}/{id}");
        let (resp, q) =
            self.call(op, auth, Method::PUT, &path, Some(json!({ "data": [record] })), true).await?;
        let (id, _) = write_outcome(&resp)?;
        Ok(Reply::new(ExternalRef { id, created: false }, q))
    }

    async fn sync_records(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let win = Window::of(cursor);
        let mut path = format!(
            "/crm/v7/{}?fields={}&sort_by=Modified_Time&sort_order=asc&per_page={PER_PAGE}",
            module(kind),
            fields(kind)
        );
        match &cursor.token {
            Some(t) => {
                path.push_str("&page_token=");
                path.extend(url::form_urlencoded::byte_serialize(t.as_bytes()));
            }
            None => path.push_str(&format!("&page={}", win.page)),
        }
        let mut req = self.http.request(Method::GET, auth, &path)?;
        if let Some(h) = win.start.and_then(ims_header) {
            req = req.header("If-Modified-Since", h);
        }
        let (resp, q) = self.send("sync_list", req, true).await?;
        let status = resp.status.as_u16();
        let (rows, more, next_token) = match status {
            204 | 304 => (Vec::new(), false, None),
            200 => {
                let v = resp.value();
                let rows = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
                let more = v.pointer("/info/more_records").and_then(Value::as_bool).unwrap_or(false);
                let token = v.pointer("/info/next_page_token").and_then(Value::as_str).map(str::to_owned);
                (rows, more, token)
            }
            400 if cursor.token.is_some() && token_expired(&resp) => {
                // A run resumed after its page token expired: start the crowded second over from its
                // first page (its records may be delivered again, none is skipped).
                let mut next = cursor.clone();
                next.token = None;
                next.extra = Window { page: 1, ..win }.to_json();
                return Ok(Reply::new(
                    SyncPage { records: Vec::new(), deleted: Vec::new(), next, has_more: true },
                    q,
                ));
            }
            _ => return Err(error(&resp)),
        };
        let mut page_records = Vec::with_capacity(rows.len());
        for row in &rows {
            page_records.push(record(kind, row)?);
        }
        let start = win.start;
        let delivered: Vec<CrmRecord> = page_records
            .iter()
            .filter(|r| {
                let t = r.remote_updated_at.timestamp_millis();
                match start {
                    None => true,
                    Some(w) => t > w || (t == w && !win.seen.contains(&r.external_id)),
                }
            })
            .cloned()
            .collect();
        let mut next = cursor.clone();
        for r in &delivered {
            next.observe(r.remote_updated_at);
        }
        let last = page_records.last().map(|r| r.remote_updated_at.timestamp_millis());
        let moved =
            matches!((last, start), (Some(l), Some(w)) if l > w) || (last.is_some() && start.is_none());
        let mut after = if moved {
            let l = last.unwrap_or_default();
            Window {
                start: Some(l),
                seen: page_records
                    .iter()
                    .filter(|r| r.remote_updated_at.timestamp_millis() == l)
                    .map(|r| r.external_id.clone())
                    .collect(),
                page: 1,
            }
        } else {
            let mut seen = win.seen.clone();
            for r in page_records.iter().filter(|r| Some(r.remote_updated_at.timestamp_millis()) == start) {
                if !seen.contains(&r.external_id) {
                    seen.push(r.external_id.clone());
                }
            }
            Window { start, seen, page: win.page }
        };
        if more {
            next.phase = "records".into();
            if moved {
                next.token = None;
            } else if cursor.token.is_some() || win.page >= LAST_DISCRETE_PAGE {
                // A page-full of records shares one second and `page` cannot go past 2,000.
                next.token =
                    Some(next_token.ok_or_else(|| protocol(status, "more_records without next_page_token"))?);
            } else {
                after.page = win.page + 1;
                next.token = None;
            }
            next.extra = after.to_json();
        } else {
            // The records are done; the deletions of the run's window come next. The ids read at the
            // next run's first second travel along.
            let next_since = next.high_water.or(next.since).map(|t| t.timestamp_millis());
            let seen = if after.start == next_since { after.seen } else { Vec::new() };
            next.phase = "deleted".into();
            next.token = None;
            next.extra = Window { start: None, seen, page: 1 }.to_json();
        }
        Ok(Reply::new(SyncPage { records: delivered, deleted: Vec::new(), next, has_more: true }, q))
    }

    async fn sync_deleted(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let win = Window::of(cursor);
        let path = format!("/crm/v7/{}/deleted?type=all&per_page={PER_PAGE}&page={}", module(kind), win.page);
        let mut req = self.http.request(Method::GET, auth, &path)?;
        if let Some(h) = cursor.since.and_then(|s| ims_header(s.timestamp_millis())) {
            req = req.header("If-Modified-Since", h);
        }
        let (resp, q) = self.send("sync_deleted", req, true).await?;
        let (rows, more) = match resp.status.as_u16() {
            204 | 304 => (Vec::new(), false),
            200 => {
                let v = resp.value();
                (
                    v.get("data").and_then(Value::as_array).cloned().unwrap_or_default(),
                    v.pointer("/info/more_records").and_then(Value::as_bool).unwrap_or(false),
                )
            }
            _ => return Err(error(&resp)),
        };
        let deleted: Vec<DeletedRecord> = rows
            .iter()
            .filter_map(|row| {
                let id = row.get("id")?.as_str()?.to_owned();
                let at = row.get("deleted_time").and_then(Value::as_str).and_then(parse_time);
                match (cursor.since, at) {
                    (Some(since), Some(at)) if at < since => None,
                    _ => Some(DeletedRecord { external_id: id, deleted_at: at }),
                }
            })
            .collect();
        if more {
            let mut next = cursor.clone();
            next.extra = Window { start: None, seen: win.seen, page: win.page + 1 }.to_json();
            return Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: true }, q));
        }
        let mut next = cursor.next_run();
        if !win.seen.is_empty() && win.seen.len() <= MAX_SEEN {
            next.extra = json!({ "seen": win.seen });
        }
        Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: false }, q))
    }
}

fn priority(p: Option<&str>) -> Option<&'static str> {
    match p.map(str::to_ascii_lowercase).as_deref() {
        Some("high") => Some("High"),
        Some("highest") | Some("urgent") => Some("Highest"),
        Some("low") => Some("Low"),
        Some("lowest") => Some("Lowest"),
        Some("normal") | Some("medium") => Some("Normal"),
        _ => None,
    }
}

/// `What_Id` and its `$se_module` for an activity: the deal if there is one, else the company.
fn what(deal: &Option<String>, company: &Option<String>, out: &mut Map<String, Value>) {
    let target = match (deal, company) {
        (Some(d), _) => Some((d, "Deals")),
        (None, Some(c)) => Some((c, "Accounts")),
        (None, None) => None,
    };
    if let Some((id, m)) = target {
        out.insert("What_Id".into(), json!({ "id": id }));
        out.insert("$se_module".into(), json!(m));
    }
}

fn contact_fields(c: &ContactInput) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("First_Name", &c.first_name),
        ("Last_Name", &c.last_name),
        ("Email", &c.email),
        ("Phone", &c.phone),
        ("Title", &c.title),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    if let Some(a) = &c.company_id {
        m.insert("Account_Name".into(), json!({ "id": a }));
    }
    m
}

#[async_trait::async_trait]
impl CrmClient for ZohoClient {
    fn provider(&self) -> Provider {
        Provider::Zoho
    }

    async fn sync_page(
        &self,
        auth: &Auth,
        object: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        match cursor.phase.as_str() {
            "deleted" => self.sync_deleted(auth, object, cursor).await,
            _ => self.sync_records(auth, object, cursor).await,
        }
    }

    async fn get(&self, auth: &Auth, object: ObjectKind, id: &str) -> ProviderResult<Option<CrmRecord>> {
        let path = format!("/crm/v7/{}/{}?fields={}", module(object), id, fields(object));
        let req = self.http.request(Method::GET, auth, &path)?;
        let (resp, q) = self.send("get", req, true).await?;
        match resp.status.as_u16() {
            204 => Ok(Reply::new(None, q)),
            200 => {
                let v = resp.value();
                let obj = v.pointer("/data/0").ok_or_else(|| protocol(200, "get answer without data[0]"))?;
                Ok(Reply::new(Some(record(object, obj)?), q))
            }
            // A missing or deleted record is a 400 `INVALID_DATA` about the id, not a 404.
            400 => match error(&resp) {
                ProviderError::NotFound { .. } => Ok(Reply::new(None, q)),
                e => Err(e),
            },
            _ => Err(error(&resp)),
        }
    }

    async fn create_task(&self, auth: &Auth, t: &CreateTask) -> ProviderResult<ExternalRef> {
        let mut r = Map::new();
        r.insert("Subject".into(), json!(t.subject));
        r.insert("Status".into(), json!("Not Started"));
        if let Some(b) = &t.body {
            r.insert("Description".into(), json!(b));
        }
        if let Some(due) = t.due_at {
            r.insert("Due_Date".into(), json!(due.date_naive().format("%Y-%m-%d").to_string()));
        }
        if let Some(p) = priority(t.priority.as_deref()) {
            r.insert("Priority".into(), json!(p));
        }
        if let Some(c) = &t.contact_id {
            r.insert("Who_Id".into(), json!({ "id": c }));
        }
        what(&t.deal_id, &t.company_id, &mut r);
        if let Some(o) = &t.owner_id {
            r.insert("Owner".into(), json!({ "id": o }));
        }
        self.create("create_task", auth, ActionObject::Task, r, &t.marker).await
    }

    async fn update_deal(&self, auth: &Auth, u: &UpdateDeal) -> ProviderResult<ExternalRef> {
        let mut r = Map::new();
        if let Some(s) = &u.stage {
            r.insert("Stage".into(), json!(s));
        }
        if let Some(a) = u.amount {
            r.insert("Amount".into(), json!(a));
        }
        if let Some(d) = u.close_date {
            r.insert("Closing_Date".into(), json!(d.format("%Y-%m-%d").to_string()));
        }
        self.update("update_deal", auth, "Deals", &u.deal_id, r).await
    }

    async fn log_call(&self, auth: &Auth, c: &LogCall) -> ProviderResult<ExternalRef> {
        let mut r = Map::new();
        r.insert("Subject".into(), json!(c.subject));
        let inbound = c.direction.eq_ignore_ascii_case("inbound");
        r.insert("Call_Type".into(), json!(if inbound { "Inbound" } else { "Outbound" }));
        r.insert("Call_Start_Time".into(), json!(zoho_time(c.occurred_at)));
        r.insert(
            "Call_Duration".into(),
            json!(format!("{:02}:{:02}", c.duration_secs / 60, c.duration_secs % 60)),
        );
        if let Some(b) = &c.body {
            r.insert("Description".into(), json!(b));
        }
        if let Some(x) = &c.contact_id {
            r.insert("Who_Id".into(), json!({ "id": x }));
        }
        what(&c.deal_id, &c.company_id, &mut r);
        self.create("log_call", auth, ActionObject::Call, r, &c.marker).await
    }

    async fn create_contact(&self, auth: &Auth, c: &ContactInput) -> ProviderResult<ExternalRef> {
        self.create("create_contact", auth, ActionObject::Contact, contact_fields(c), &c.marker).await
    }

    async fn update_contact(&self, auth: &Auth, id: &str, c: &ContactInput) -> ProviderResult<ExternalRef> {
        self.update("update_contact", auth, "Contacts", id, contact_fields(c)).await
    }

    async fn create_note(&self, auth: &Auth, n: &CreateNote) -> ProviderResult<ExternalRef> {
        let mut r = Map::new();
        if let Some(t) = &n.title {
            r.insert("Note_Title".into(), json!(t));
        }
        r.insert("Note_Content".into(), json!(n.body));
        let parent = match (&n.contact_id, &n.deal_id, &n.company_id) {
            (Some(c), _, _) => Some((c, "Contacts")),
            (None, Some(d), _) => Some((d, "Deals")),
            (None, None, Some(a)) => Some((a, "Accounts")),
            (None, None, None) => None,
        };
        if let Some((id, m)) = parent {
            r.insert("Parent_Id".into(), json!({ "module": { "api_name": m }, "id": id }));
        }
        self.create("create_note", auth, ActionObject::Note, r, &n.marker).await
    }

    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>> {
        let enc: String = url::form_urlencoded::byte_serialize(email.as_bytes()).collect();
        let path = format!("/crm/v7/Contacts/search?email={enc}&fields={}", fields(ObjectKind::Contact));
        let (resp, q) = self.call("search_contact", auth, Method::GET, &path, None, true).await?;
        if resp.status.as_u16() == 204 {
            return Ok(Reply::new(None, q));
        }
        // Zoho's email search matches substrings: keep only the exact (case-insensitive) address.
        let v = resp.value();
        let hit = v
            .get("data")
            .and_then(Value::as_array)
            .and_then(|rows| {
                rows.iter().find(|r| {
                    r.get("Email").and_then(Value::as_str).is_some_and(|e| e.eq_ignore_ascii_case(email))
                })
            })
            .map(|r| record(ObjectKind::Contact, r))
            .transpose()?;
        Ok(Reply::new(hit, q))
    }

    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        let query = format!(
            "select id, {MARKER_FIELD} from {} where {MARKER_FIELD} = '{}' limit 1",
            action_module(kind),
            escape_coql(marker)
        );
        let body = json!({ "select_query": query });
        let (resp, q) =
            self.call("find_by_marker", auth, Method::POST, "/crm/v7/coql", Some(body), true).await?;
        if resp.status.as_u16() == 204 {
            return Ok(Reply::new(None, q));
        }
        let v = resp.value();
        let id = v.get("data").and_then(Value::as_array).and_then(|rows| {
            rows.iter()
                .find(|r| r.get(MARKER_FIELD).and_then(Value::as_str) == Some(marker))
                .and_then(|r| r.get("id").and_then(Value::as_str))
                .map(str::to_owned)
        });
        Ok(Reply::new(id.map(|id| ExternalRef { id, created: false }), q))
    }
}

/// The id of the org an access token belongs to: `GET {api_domain}/crm/v8/org` (scope
/// `ZohoCRM.org.READ`). Zoho's token response names only its data centre's API host, which every
/// org there shares, so the connect flow asks this to key the connection, and with it the org's
/// rate budget, by org.
pub async fn org_id(
    http: &reqwest::Client,
    api_base: &str,
    access_token: &secrecy::SecretString,
) -> Result<String, ProviderError> {
    use secrecy::ExposeSecret as _;
    let url = format!("{}/crm/v8/org", api_base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .header(reqwest::header::AUTHORIZATION, format!("Zoho-oauthtoken {}", access_token.expose_secret()))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| ProviderError::Transient {
            status: None,
            retry_after: None,
            message: format!("GET /crm/v8/org: {}", e.without_url()),
        })?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
    let message = format!("GET /crm/v8/org answered {status} {}", code.as_deref().unwrap_or(""));
    match status {
        200 => body
            .pointer("/org/0/id")
            .and_then(|v| v.as_str().map(str::to_owned).or_else(|| v.as_u64().map(|n| n.to_string())))
            .ok_or_else(|| ProviderError::Protocol {
                status,
                message: "organization data without an id".into(),
            }),
        401 => Err(ProviderError::Unauthorized { code, message }),
        403 => Err(ProviderError::Forbidden { code, message }),
        s if s >= 500 || s == 429 => {
            Err(ProviderError::Transient { status: Some(s), retry_after: None, message })
        }
        _ => Err(ProviderError::Rejected { field: None, reason: message, code, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: Value, headers: &[(&str, &str)]) -> RawResponse {
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
            body: serde_json::to_vec(&body).expect("json").into(),
        }
    }

    #[test]
    fn maps_documented_top_level_errors() {
        let invalid = resp(
            401,
            json!({"code":"INVALID_TOKEN","details":{},"message":"invalid oauth token","status":"error"}),
            &[],
        );
        assert_eq!(
            error(&invalid),
            ProviderError::Unauthorized {
                code: Some("INVALID_TOKEN".into()),
                message: "invalid oauth token".into()
            }
        );
        let scope = resp(
            401,
            json!({"code":"OAUTH_SCOPE_MISMATCH","details":{},"message":"Unauthorized","status":"error"}),
            &[],
        );
        assert!(
            matches!(error(&scope), ProviderError::Forbidden { code: Some(c), .. } if c == "OAUTH_SCOPE_MISMATCH")
        );
        let url = resp(
            404,
            json!({"code":"INVALID_URL_PATTERN","details":{},"message":"Please check if the URL trying to access is a correct one","status":"error"}),
            &[],
        );
        assert!(matches!(error(&url), ProviderError::NotFound { .. }));
        let missing = resp(
            400,
            json!({"code":"REQUIRED_PARAM_MISSING","details":{"param_name":"fields"},"message":"required param is missing","status":"error"}),
            &[],
        );
        assert_eq!(
            error(&missing),
            ProviderError::Rejected {
                field: Some("fields".into()),
                reason: "required param is missing".into(),
                code: Some("REQUIRED_PARAM_MISSING".into()),
                status: 400
            }
        );
        let unknown_id = resp(
            400,
            json!({"code":"INVALID_DATA","details":{"id":"41"},"message":"the id given seems to be invalid","status":"error"}),
            &[],
        );
        assert!(matches!(error(&unknown_id), ProviderError::NotFound { .. }));
        assert!(matches!(
            error(&resp(
                500,
                json!({"code":"INTERNAL_ERROR","details":{},"message":"x","status":"error"}),
                &[]
            )),
            ProviderError::Transient { status: Some(500), .. }
        ));
        let locked = resp(
            400,
            json!({"code":"RECORD_LOCKED","details":{},"message":"cannot update record that is locked","status":"error"}),
            &[],
        );
        assert!(matches!(error(&locked), ProviderError::Transient { status: Some(400), .. }));
    }

    #[test]
    fn maps_per_record_errors_inside_data() {
        let mandatory = resp(
            400,
            json!({"data":[{"code":"MANDATORY_NOT_FOUND","details":{"api_name":"Last_Name","json_path":"$.data[0].Last_Name"},"message":"required field not found","status":"error"}]}),
            &[],
        );
        assert_eq!(
            error(&mandatory),
            ProviderError::Rejected {
                field: Some("Last_Name".into()),
                reason: "required field not found".into(),
                code: Some("MANDATORY_NOT_FOUND".into()),
                status: 400
            }
        );
        let dup = resp(
            400,
            json!({"data":[{"code":"DUPLICATE_DATA","details":{"api_name":"Email","json_path":"$.data[0].Email",
            "duplicate_record":{"Owner":{"name":"P","id":"1","zuid":"2"},"module":{"api_name":"Contacts","id":"3"},"id":"4150868000000376008"},
            "id":"4150868000000376008","more_records":false},"message":"duplicate data","status":"error"}]}),
            &[],
        );
        assert_eq!(
            error(&dup),
            ProviderError::Conflict {
                existing_id: Some("4150868000000376008".into()),
                message: "duplicate data (Email)".into()
            }
        );
        let bad_type = resp(
            400,
            json!({"data":[{"code":"INVALID_DATA","details":{"expected_data_type":"integer","api_name":"Employees","json_path":"$.data[0].Employees"},"message":"invalid data","status":"error"}]}),
            &[],
        );
        assert!(
            matches!(error(&bad_type), ProviderError::Rejected { field: Some(f), .. } if f == "Employees")
        );
        let unknown_id = resp(
            400,
            json!({"data":[{"code":"INVALID_DATA","details":{"id":"4150868000009999999"},"message":"the id given seems to be invalid","status":"error"}]}),
            &[],
        );
        assert!(matches!(error(&unknown_id), ProviderError::NotFound { .. }));
        let multi = resp(
            400,
            json!({"data":[{"code":"MULTIPLE_OR_MULTI_ERRORS","details":{"errors":[{"code":"DUPLICATE_DATA","details":{"api_name":"Email","duplicate_record":{"id":"9"}},"message":"duplicate data","status":"error"}]},"message":"Multiple errors in the request","status":"error"}]}),
            &[],
        );
        assert!(matches!(error(&multi), ProviderError::Conflict { existing_id: Some(id), .. } if id == "9"));
        // A 207 with the one record failing is read the same way.
        let upsert = resp(
            200,
            json!({"data":[{"code":"SUCCESS","duplicate_field":"CrmFleet_Action_Id","action":"update","details":{"id":"77"},"message":"record updated","status":"success"}]}),
            &[],
        );
        assert_eq!(write_outcome(&upsert), Ok(("77".to_owned(), false)));
        let insert = resp(
            201,
            json!({"data":[{"code":"SUCCESS","details":{"id":"78"},"message":"record added","status":"success"}]}),
            &[],
        );
        assert_eq!(write_outcome(&insert), Ok(("78".to_owned(), true)));
    }

    #[test]
    fn throttles_tell_credits_from_concurrency() {
        let credits = resp(
            429,
            json!({"code":"TOO_MANY_REQUESTS","details":{},"message":"You have exceeded the API credits allowed for your organization in the last 24 hours.","status":"error"}),
            &[("x-ratelimit-limit", "5000"), ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "3600")],
        );
        assert_eq!(
            error(&credits),
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs(3600)),
                scope: ThrottleScope::Daily,
                status: 429,
                code: Some("TOO_MANY_REQUESTS".into())
            }
        );
        let concurrency = resp(
            429,
            json!({"code":"TOO_MANY_REQUESTS","details":{},"message":"You have exceeded the maximum number of concurrent API calls allowed for your organization.","status":"error"}),
            &[("x-ratelimit-remaining", "120"), ("retry-after", "3")],
        );
        assert!(matches!(
            error(&concurrency),
            ProviderError::Throttled { scope: ThrottleScope::Concurrency, retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        // The OpenAPI example's other code, with no headers at all.
        let bare = resp(
            429,
            json!({"code":"RATE_LIMIT_EXCEEDED","details":{},"message":"Too many requests. Please try again later.","status":"error"}),
            &[],
        );
        assert!(matches!(
            error(&bare),
            ProviderError::Throttled { scope: ThrottleScope::Concurrency, retry_after: Some(d), code: Some(c), .. }
                if d == CONCURRENCY_BACKOFF && c == "RATE_LIMIT_EXCEEDED"
        ));
        let q = quota(&resp(
            200,
            json!({}),
            &[("x-ratelimit-limit", "60000"), ("x-ratelimit-remaining", "59990")],
        ));
        assert_eq!(q.and_then(|q| q.daily_remaining), Some(59_990));
    }

    #[test]
    fn normalises_records_with_offsets() {
        let obj = json!({"id":"41","First_Name":"Ann","Last_Name":"Lee","Full_Name":"Ann Lee","Email":"a@x.com",
            "Account_Name":{"name":"Acme","id":"9"},"Owner":{"name":"P","id":"7","email":"p@x.com"},
            "Modified_Time":"2025-01-02T08:34:05+05:30"});
        let r = record(ObjectKind::Contact, &obj).expect("record");
        assert_eq!(r.name.as_deref(), Some("Ann Lee"));
        assert_eq!(r.company.as_deref(), Some("9"));
        assert_eq!(r.owner.as_deref(), Some("7"));
        assert_eq!(r.remote_updated_at.timestamp(), 1_735_787_045);
        let deal = json!({"id":"5","Deal_Name":"D","Amount":5000.0,"Stage":"Closed Won","Closing_Date":"2026-02-01","Modified_Time":"2026-01-05T01:00:00-08:00"});
        let d = record(ObjectKind::Deal, &deal).expect("deal");
        assert_eq!((d.amount, d.stage.as_deref()), (Some(5000.0), Some("Closed Won")));
        assert_eq!(d.close_date, NaiveDate::from_ymd_opt(2026, 2, 1));
        assert!(
            record(ObjectKind::Deal, &json!({"id":"5"})).is_err(),
            "no Modified_Time is a protocol error"
        );
    }

    #[test]
    fn windows_round_trip_and_if_modified_since_starts_a_second_early() {
        let mut c = SyncCursor::since(
            DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z").expect("t").with_timezone(&Utc),
        );
        let w = Window::of(&c);
        assert_eq!(w, Window { start: Some(1_767_603_600_000), seen: vec![], page: 1 });
        assert_eq!(ims_header(1_767_603_600_000).as_deref(), Some("2026-01-05T08:59:59+00:00"));
        c.extra = Window { start: Some(5_000), seen: vec!["a".into()], page: 3 }.to_json();
        assert_eq!(Window::of(&c), Window { start: Some(5_000), seen: vec!["a".into()], page: 3 });
        assert_eq!(escape_coql("it's"), "it\\'s");
    }
}
