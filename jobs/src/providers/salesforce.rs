//! Salesforce REST client (`crm-providers.md` §2).
//!
//! Every call goes to `{auth.api_base}/services/data/v62.0/…`, where `api_base` is the
//! `instance_url` of the connection's latest token response (never a hard-coded host). Salesforce
//! gives tokens no expiry: a 401 `INVALID_SESSION_ID` maps to [`ProviderError::Unauthorized`] and the
//! token layer refreshes (and re-reads `instance_url`) on it. Every response's `Sforce-Limit-Info:
//! api-usage=used/limit` becomes the [`QuotaObservation`]'s daily limit and remaining.
//!
//! # Sync strategy
//!
//! A run has two phases, one request per page:
//!
//! 1. `records`: SOQL `SELECT … FROM {Contact|Account|Opportunity} WHERE SystemModstamp >= since
//!    ORDER BY SystemModstamp ASC, Id ASC` (no `WHERE` on a full sync) with `Sforce-Query-Options:
//!    batchSize=2000`, then `nextRecordsUrl` until `done`. Each page's cursor stores the locator URL
//!    *and* the `(SystemModstamp, Id)` of its last record, so a resumed run continues exactly after
//!    the stored page: through the locator, or, when the locator expired (15 idle minutes) or was
//!    released, through the keyset query `SystemModstamp > T OR (SystemModstamp = T AND Id > 'id')`
//!    (the one case where a page makes a second request). The run records the server's `Date` of its
//!    first response as its snapshot time.
//! 2. `deleted`: `GET sobjects/{X}/deleted/?start=&end=` from the previous run's `latestDateCovered`
//!    (or `since`) to the snapshot time; its `latestDateCovered` starts the next run's window, so
//!    windows chain without gaps. Salesforce refuses windows of a minute or less, so a run that comes
//!    sooner skips the call and the next run covers the span. A full sync asks for the 15 days (less
//!    ten minutes) before its latest page. Deletions are kept for **15 days** only: a connection idle for longer gets
//!    400 `INVALID_REPLICATION_DATE` ([`ProviderError::Rejected`]) and needs a full resync.
//!
//! `SystemModstamp` has whole-second precision, so the next run starts at `>=` the high-water
//! second. To return each change exactly once, the final cursor keeps the ids and content hashes of
//! the records read at that second (at most 500; beyond that they are re-read, which upserts absorb)
//! and the next run drops a record only when both id and content match: a record changed again within
//! that second still comes through.
//!
//! # Idempotency of creates
//!
//! The org carries the External ID field `CrmFleet_Action_Id__c` (unique, case-insensitive) on Task,
//! Contact and Note, and every create writes the action's marker into it:
//!
//! * **Tasks, calls** (`Task` with `CallType`, `CallDurationInSeconds`, `Status = Completed`) and
//!   **contacts** are upserts: `PATCH sobjects/{X}/CrmFleet_Action_Id__c/{marker}`. The first attempt
//!   answers 201 (`created: true`), a retry 200 (`created: false`, same id): a retry can never make a
//!   duplicate. `TaskSubtype` is not sent: it is create-only, so a retried upsert (an update) carrying
//!   it would be refused.
//! * **Notes** are the legacy `Note`, whose `ParentId` is create-only for the same reason, so a note is
//!   a plain `POST` carrying the marker; a retry hits the field's uniqueness (400 `DUPLICATE_VALUE …
//!   on record with id: X`) and the client answers the existing id (`created: false`).
//! * [`CrmClient::find_by_marker`] reads `sobjects/{X}/CrmFleet_Action_Id__c/{marker}` (300 → first).
//!
//! Residual risk: an org without the field (or where it is not unique) loses the guarantee:
//! creates fail with `INVALID_FIELD` (upsert: `NOT_FOUND`) rather than duplicate silently, except a
//! non-unique field, where a retried note could duplicate and reconciliation finds the first. Custom
//! fields on the legacy `Note` object are UNCONFIRMED in real orgs. A create without a marker is a
//! plain `POST` with no protection. Writes are sent as non-idempotent, so a lost answer is
//! [`ProviderError::OutcomeUnknown`]; updates (`PATCH` by id with absolute values) are idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{RawResponse, common_status, scrub_tokens};
use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, CrmClient, CrmRecord, DeletedRecord,
    ExternalRef, Http, LogCall, ObjectKind, Provider, ProviderError, ProviderResult, QuotaObservation, Reply,
    SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};

/// The REST API version the client speaks.
pub const API_VERSION: &str = "v62.0";
/// The External ID field holding crm-fleet's action marker (Task, Contact, Note).
pub const MARKER_FIELD: &str = "CrmFleet_Action_Id__c";
/// Query batch size (Salesforce's maximum).
const BATCH_SIZE: u32 = 2000;
/// Boundary records remembered for de-duplication; beyond this they are re-read.
const MAX_BOUNDARY: usize = 500;
/// `deleted/` refuses windows of a minute or less; wait for two.
const MIN_DELETED_WINDOW: chrono::Duration = chrono::Duration::minutes(2);
/// How far back (from the server time of its latest page) a full sync asks `deleted/`: the 15-day
/// retention less a margin for the time between that page and the `deleted/` call.
const FULL_SYNC_DELETED_LOOKBACK: chrono::Duration = chrono::Duration::minutes(15 * 24 * 60 - 10);
/// Wait after the rolling 24-hour allocation is exhausted (no `Retry-After`; the window rolls, so
/// re-check hourly).
const TOTAL_REQUESTS_BACKOFF: Duration = Duration::from_secs(3600);
/// Wait after the long-running-request cap (requests count once they have run 20 seconds).
const CONCURRENCY_BACKOFF: Duration = Duration::from_secs(20);
/// Longest `Note.Title`.
const NOTE_TITLE_MAX: usize = 80;

/// Salesforce client.
#[derive(Debug, Clone)]
pub struct SalesforceClient {
    http: Http,
}

fn sobject(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "Contact",
        ObjectKind::Company => "Account",
        ObjectKind::Deal => "Opportunity",
    }
}

fn action_sobject(kind: ActionObject) -> &'static str {
    match kind {
        ActionObject::Task | ActionObject::Call => "Task",
        ActionObject::Note => "Note",
        ActionObject::Contact => "Contact",
    }
}

fn fields(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Contact => &[
            "Id",
            "FirstName",
            "LastName",
            "Name",
            "Email",
            "Phone",
            "Title",
            "AccountId",
            "OwnerId",
            "LastModifiedDate",
            "SystemModstamp",
        ],
        ObjectKind::Company => {
            &["Id", "Name", "Phone", "Website", "Industry", "OwnerId", "LastModifiedDate", "SystemModstamp"]
        }
        ObjectKind::Deal => &[
            "Id",
            "Name",
            "StageName",
            "Amount",
            "CloseDate",
            "AccountId",
            "OwnerId",
            "LastModifiedDate",
            "SystemModstamp",
        ],
    }
}

/// Parses a Salesforce date-time (`2025-01-31T17:00:00.000+0000`, or RFC 3339).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A SOQL date-time literal (unquoted, whole seconds, `Z`).
fn soql_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Escapes a value for a quoted SOQL string literal.
fn soql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment (everything but unreserved characters).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_param(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn text(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Normalises a record of `kind` (`attributes` plus fields, as query and retrieve return it).
fn record(kind: ObjectKind, v: &Value) -> Result<CrmRecord, ProviderError> {
    let id = text(v, "Id")
        .ok_or_else(|| ProviderError::Protocol { status: 200, message: "record without Id".into() })?;
    let updated = ["SystemModstamp", "LastModifiedDate"]
        .iter()
        .find_map(|f| v.get(*f).and_then(Value::as_str).and_then(parse_time))
        .ok_or_else(|| ProviderError::Protocol {
            status: 200,
            message: format!("record {id} without SystemModstamp"),
        })?;
    let mut r = CrmRecord::new(id, kind, updated);
    r.owner = text(v, "OwnerId");
    r.phone = text(v, "Phone");
    r.name = text(v, "Name");
    match kind {
        ObjectKind::Contact => {
            r.email = text(v, "Email");
            r.first_name = text(v, "FirstName");
            r.last_name = text(v, "LastName");
            r.company = text(v, "AccountId");
            if r.name.is_none() {
                r.name = match (&r.first_name, &r.last_name) {
                    (Some(f), Some(l)) => Some(format!("{f} {l}")),
                    (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                    (None, None) => None,
                };
            }
        }
        ObjectKind::Company => {}
        ObjectKind::Deal => {
            r.amount = v.get("Amount").and_then(Value::as_f64);
            r.stage = text(v, "StageName");
            r.close_date = text(v, "CloseDate").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            r.company = text(v, "AccountId");
        }
    }
    r.raw = v.clone();
    Ok(r)
}

/// `Sforce-Limit-Info: api-usage=used/limit[; api-bursts=…]` → the daily (rolling 24 h) numbers.
fn quota(resp: &RawResponse) -> Option<QuotaObservation> {
    let info = resp.header("sforce-limit-info")?;
    let usage = info.split([';', ',']).find_map(|p| p.trim().strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    let (used, limit): (u64, u64) = (used.trim().parse().ok()?, limit.trim().parse().ok()?);
    Some(QuotaObservation {
        daily_limit: Some(limit),
        daily_remaining: Some(limit.saturating_sub(used)),
        ..QuotaObservation::default()
    })
}

/// The record id a `DUPLICATE_VALUE` message names ("… duplicates value on record with id: X").
fn duplicate_id(message: &str) -> Option<String> {
    let id = message.rsplit("record with id:").next()?.trim();
    let id: String = id.chars().take_while(char::is_ascii_alphanumeric).collect();
    (id.len() == 15 || id.len() == 18).then_some(id)
}

/// Maps an error response (REST error arrays, OAuth-style objects, 300 choice lists).
fn error(resp: &RawResponse) -> ProviderError {
    if let Some(e) = common_status(resp) {
        return e;
    }
    let status = resp.status.as_u16();
    let body = resp.value();
    if status == 300 {
        let existing_id =
            body.get(0).and_then(Value::as_str).and_then(|u| u.rsplit('/').next()).map(str::to_owned);
        let n = body.as_array().map(Vec::len).unwrap_or(0);
        return ProviderError::Conflict {
            existing_id,
            message: format!("the external ID matches {n} records"),
        };
    }
    let first = if body.is_array() { body.get(0).cloned().unwrap_or(Value::Null) } else { body.clone() };
    let code =
        first.get("errorCode").or_else(|| first.get("error")).and_then(Value::as_str).map(str::to_owned);
    let message = first
        .get("message")
        .or_else(|| first.get("error_description"))
        .and_then(Value::as_str)
        .map(scrub_tokens)
        .unwrap_or_else(|| resp.snippet());
    let field = first.pointer("/fields/0").and_then(Value::as_str).map(str::to_owned);
    match (status, code.as_deref()) {
        (401, _) => ProviderError::Unauthorized { code, message },
        (403, Some("REQUEST_LIMIT_EXCEEDED")) => {
            let concurrency = message.to_ascii_lowercase().contains("concurrent");
            let (scope, wait) = if concurrency {
                (ThrottleScope::Concurrency, CONCURRENCY_BACKOFF)
            } else {
                (ThrottleScope::Daily, TOTAL_REQUESTS_BACKOFF)
            };
            ProviderError::Throttled {
                retry_after: Some(resp.retry_after().unwrap_or(wait)),
                scope,
                status,
                code,
            }
        }
        (403, _) => ProviderError::Forbidden { code, message },
        (404, _) => ProviderError::NotFound { message },
        (409 | 412, _) => ProviderError::Conflict { existing_id: None, message },
        (429, _) => ProviderError::Throttled {
            retry_after: Some(resp.retry_after().unwrap_or(Duration::from_secs(60))),
            scope: ThrottleScope::Burst,
            status,
            code,
        },
        (_, Some("UNABLE_TO_LOCK_ROW")) => {
            ProviderError::Transient { status: Some(status), retry_after: resp.retry_after(), message }
        }
        (_, Some("DUPLICATE_VALUE")) => {
            ProviderError::Conflict { existing_id: duplicate_id(&message), message }
        }
        (_, Some("DUPLICATES_DETECTED")) => {
            let existing_id = first
                .pointer("/duplicateResult/matchResults/0/matchRecords/0/record/Id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            ProviderError::Conflict { existing_id, message }
        }
        _ => ProviderError::Rejected { field, reason: message, code, status },
    }
}

/// A record's position in the sync order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    ts: DateTime<Utc>,
    id: String,
}

/// The records read at one `SystemModstamp` second: id → content hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Boundary {
    ts: Option<DateTime<Utc>>,
    seen: BTreeMap<String, String>,
    /// More than [`MAX_BOUNDARY`] records shared the second: none is remembered, all are re-read.
    overflow: bool,
}

impl Boundary {
    fn note(&mut self, ts: DateTime<Utc>, id: &str, hash: String) {
        if self.ts != Some(ts) {
            *self = Boundary { ts: Some(ts), ..Boundary::default() };
        }
        if self.overflow {
            return;
        }
        self.seen.insert(id.to_owned(), hash);
        if self.seen.len() > MAX_BOUNDARY {
            self.seen.clear();
            self.overflow = true;
        }
    }

    fn contains(&self, ts: DateTime<Utc>, id: &str, hash: &str) -> bool {
        self.ts == Some(ts) && self.seen.get(id).is_some_and(|h| h == hash)
    }
}

/// The client's part of [`SyncCursor::extra`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Extra {
    /// The server's `Date` at the run's first response (the query snapshot time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_now: Option<DateTime<Utc>>,
    /// The server's `Date` at the run's latest page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seen_now: Option<DateTime<Utc>>,
    /// The last record read in this run (where a resumed scan continues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Key>,
    /// Start of the next `deleted/` window (the previous window's `latestDateCovered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_from: Option<DateTime<Utc>>,
    /// Records the previous run read at this run's `since` second (dropped when unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boundary: Option<Boundary>,
    /// Records read at the highest second so far in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_boundary: Option<Boundary>,
}

impl Extra {
    fn of(c: &SyncCursor) -> Self {
        serde_json::from_value(c.extra.clone()).unwrap_or_default()
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

fn content_hash(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(serde_json::to_vec(v).unwrap_or_default());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn server_date(resp: &RawResponse) -> Option<DateTime<Utc>> {
    resp.header("date").and_then(|d| DateTime::parse_from_rfc2822(d).ok()).map(|t| t.with_timezone(&Utc))
}

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() - t.timestamp().rem_euclid(60), 0).unwrap_or(t)
}

fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Where a records query starts.
enum Lower {
    All,
    Since(DateTime<Utc>),
    After(Key),
}

fn sync_soql(kind: ObjectKind, lower: &Lower) -> String {
    let mut q = format!("SELECT {} FROM {}", fields(kind).join(", "), sobject(kind));
    match lower {
        Lower::All => {}
        Lower::Since(t) => q.push_str(&format!(" WHERE SystemModstamp >= {}", soql_time(floor_second(*t)))),
        Lower::After(k) => {
            let t = soql_time(k.ts);
            q.push_str(&format!(
                " WHERE (SystemModstamp > {t} OR (SystemModstamp = {t} AND Id > '{}'))",
                soql_string(&k.id)
            ));
        }
    }
    q.push_str(" ORDER BY SystemModstamp ASC, Id ASC");
    q
}

fn deleted_time(t: DateTime<Utc>) -> String {
    query_param(&t.to_rfc3339_opts(SecondsFormat::Secs, false))
}

fn is_invalid_locator(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Rejected { code: Some(c), .. } if c == "INVALID_QUERY_LOCATOR")
        || matches!(e, ProviderError::NotFound { .. })
}

fn created_ref(resp: &RawResponse) -> Result<ExternalRef, ProviderError> {
    let v = resp.value();
    let id = text(&v, "id").ok_or_else(|| ProviderError::Protocol {
        status: resp.status.as_u16(),
        message: "create answered without an id".into(),
    })?;
    let created = v.get("created").and_then(Value::as_bool).unwrap_or(resp.status.as_u16() == 201);
    Ok(ExternalRef { id, created })
}

impl SalesforceClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http }
    }

    /// One request to `path` (under `/services/data/v62.0`, or absolute from `/services/data/` for
    /// `nextRecordsUrl`); a non-2xx answer becomes its [`ProviderError`].
    async fn call(
        &self,
        op: &'static str,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<(RawResponse, Option<QuotaObservation>), ProviderError> {
        let full = if path.starts_with("/services/data/") {
            path.to_owned()
        } else {
            format!("/services/data/{API_VERSION}{path}")
        };
        let query = method == Method::GET;
        let mut req = self.http.request(method, auth, &full)?;
        if query {
            req = req.header("Sforce-Query-Options", format!("batchSize={BATCH_SIZE}"));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.http.send(Provider::Salesforce, op, req, idempotent).await?;
        let q = quota(&resp);
        if resp.status.is_success() { Ok((resp, q)) } else { Err(error(&resp)) }
    }

    async fn query(
        &self,
        op: &'static str,
        auth: &Auth,
        soql: &str,
    ) -> Result<(RawResponse, Option<QuotaObservation>), ProviderError> {
        self.call(op, auth, Method::GET, &format!("/query?q={}", query_param(soql)), None, true).await
    }

    async fn sync_records(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let mut extra = Extra::of(cursor);
        let lower = match (&extra.after, cursor.since) {
            (Some(k), _) => Lower::After(k.clone()),
            (None, Some(t)) => Lower::Since(t),
            (None, None) => Lower::All,
        };
        let fetched = match &cursor.token {
            Some(url) => match self.call("sync_more", auth, Method::GET, url, None, true).await {
                // The locator expired or was released: continue from the last record read.
                Err(e) if is_invalid_locator(&e) => {
                    self.query("sync_query", auth, &sync_soql(kind, &lower)).await
                }
                other => other,
            },
            None => self.query("sync_query", auth, &sync_soql(kind, &lower)).await,
        };
        let (resp, q) = fetched?;
        let date = server_date(&resp);
        if extra.run_now.is_none() {
            extra.run_now = date;
        }
        extra.seen_now = date.or(extra.seen_now);
        let body = resp.value();
        let rows = body.get("records").and_then(Value::as_array).cloned().unwrap_or_default();
        let done = body.get("done").and_then(Value::as_bool).unwrap_or(true);
        let next_url = body.get("nextRecordsUrl").and_then(Value::as_str).map(str::to_owned);
        let mut next = cursor.clone();
        let mut records = Vec::with_capacity(rows.len());
        let mut nb = extra.next_boundary.take().unwrap_or_default();
        for raw in &rows {
            let r = record(kind, raw)?;
            let hash = content_hash(raw);
            let ts = r.remote_updated_at;
            nb.note(ts, &r.external_id, hash.clone());
            extra.after = Some(Key { ts, id: r.external_id.clone() });
            let seen_last_run =
                extra.boundary.as_ref().is_some_and(|b| b.contains(ts, &r.external_id, &hash));
            if !seen_last_run {
                next.observe(ts);
                records.push(r);
            }
        }
        extra.next_boundary = Some(nb);
        match (done, next_url) {
            (false, Some(url)) => {
                next.phase = "records".into();
                next.token = Some(url);
            }
            _ => {
                next.phase = "deleted".into();
                next.token = None;
            }
        }
        next.extra = extra.to_value();
        Ok(Reply::new(SyncPage { records, deleted: Vec::new(), next, has_more: true }, q))
    }

    async fn sync_deleted(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let extra = Extra::of(cursor);
        let mut final_cursor = cursor.next_run();
        let start = extra.deleted_from.or(cursor.since.map(floor_minute));
        let window = match (start, extra.run_now) {
            (Some(s), Some(now)) if now - s > MIN_DELETED_WINDOW => Some((s, now)),
            (None, Some(now)) => {
                let latest = extra.seen_now.unwrap_or(now).max(now);
                Some((floor_minute(latest - FULL_SYNC_DELETED_LOOKBACK), now))
            }
            _ => None,
        };
        let mut deleted = Vec::new();
        let mut quota_seen = None;
        let mut deleted_from = start;
        if let Some((s, e)) = window {
            let path = format!(
                "/sobjects/{}/deleted/?start={}&end={}",
                sobject(kind),
                deleted_time(s),
                deleted_time(e)
            );
            let (resp, q) = self.call("sync_deleted", auth, Method::GET, &path, None, true).await?;
            quota_seen = q;
            let v = resp.value();
            for d in v.get("deletedRecords").and_then(Value::as_array).into_iter().flatten() {
                if let Some(id) = text(d, "id") {
                    let at = d.get("deletedDate").and_then(Value::as_str).and_then(parse_time);
                    deleted.push(DeletedRecord { external_id: id, deleted_at: at });
                }
            }
            deleted_from =
                v.get("latestDateCovered").and_then(Value::as_str).and_then(parse_time).or(Some(e));
        }
        let boundary = [extra.next_boundary, extra.boundary]
            .into_iter()
            .flatten()
            .find(|b| b.ts.is_some() && b.ts == final_cursor.since && !b.overflow);
        final_cursor.extra = Extra { deleted_from, boundary, ..Extra::default() }.to_value();
        Ok(Reply::new(
            SyncPage { records: Vec::new(), deleted, next: final_cursor, has_more: false },
            quota_seen,
        ))
    }

    /// `PATCH sobjects/{X}/CrmFleet_Action_Id__c/{marker}` (or a plain `POST` without a marker).
    async fn upsert(
        &self,
        op: &'static str,
        auth: &Auth,
        object: &str,
        marker: &str,
        body: Value,
    ) -> ProviderResult<ExternalRef> {
        let (resp, q) = if marker.is_empty() {
            self.call(op, auth, Method::POST, &format!("/sobjects/{object}"), Some(&body), false).await?
        } else {
            let path = format!("/sobjects/{object}/{MARKER_FIELD}/{}", path_segment(marker));
            self.call(op, auth, Method::PATCH, &path, Some(&body), false).await?
        };
        Ok(Reply::new(created_ref(&resp)?, q))
    }
}

fn priority(p: Option<&str>) -> &'static str {
    match p.map(str::to_ascii_lowercase).as_deref() {
        Some("high") => "High",
        Some("low") => "Low",
        _ => "Normal",
    }
}

fn put(m: &mut serde_json::Map<String, Value>, k: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

fn contact_body(c: &ContactInput) -> Value {
    let mut m = serde_json::Map::new();
    put(&mut m, "FirstName", &c.first_name);
    put(&mut m, "LastName", &c.last_name);
    put(&mut m, "Email", &c.email);
    put(&mut m, "Phone", &c.phone);
    put(&mut m, "Title", &c.title);
    put(&mut m, "AccountId", &c.company_id);
    Value::Object(m)
}

fn note_title(n: &CreateNote) -> String {
    let t = n.title.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| {
        n.body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("Note").to_owned()
    });
    t.chars().take(NOTE_TITLE_MAX).collect()
}

#[async_trait::async_trait]
impl CrmClient for SalesforceClient {
    fn provider(&self) -> Provider {
        Provider::Salesforce
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
        let path =
            format!("/sobjects/{}/{}?fields={}", sobject(object), path_segment(id), fields(object).join(","));
        match self.call("get", auth, Method::GET, &path, None, true).await {
            Ok((resp, q)) => Ok(Reply::new(Some(record(object, &resp.value())?), q)),
            Err(ProviderError::NotFound { .. }) => Ok(Reply::new(None, None)),
            Err(e) => Err(e),
        }
    }

    async fn create_task(&self, auth: &Auth, t: &CreateTask) -> ProviderResult<ExternalRef> {
        let mut m = serde_json::Map::new();
        m.insert("Subject".into(), json!(t.subject));
        put(&mut m, "Description", &t.body);
        if let Some(d) = t.due_at {
            m.insert("ActivityDate".into(), json!(d.date_naive().to_string()));
        }
        m.insert("Status".into(), json!("Not Started"));
        m.insert("Priority".into(), json!(priority(t.priority.as_deref())));
        put(&mut m, "WhoId", &t.contact_id);
        put(&mut m, "WhatId", &t.deal_id.clone().or_else(|| t.company_id.clone()));
        put(&mut m, "OwnerId", &t.owner_id);
        self.upsert("create_task", auth, "Task", &t.marker, Value::Object(m)).await
    }

    async fn update_deal(&self, auth: &Auth, u: &UpdateDeal) -> ProviderResult<ExternalRef> {
        let mut m = serde_json::Map::new();
        put(&mut m, "StageName", &u.stage);
        if let Some(a) = u.amount {
            m.insert("Amount".into(), json!(a));
        }
        if let Some(d) = u.close_date {
            m.insert("CloseDate".into(), json!(d.to_string()));
        }
        let path = format!("/sobjects/Opportunity/{}", path_segment(&u.deal_id));
        let (_, q) =
            self.call("update_deal", auth, Method::PATCH, &path, Some(&Value::Object(m)), true).await?;
        Ok(Reply::new(ExternalRef { id: u.deal_id.clone(), created: false }, q))
    }

    async fn log_call(&self, auth: &Auth, c: &LogCall) -> ProviderResult<ExternalRef> {
        let mut m = serde_json::Map::new();
        m.insert("Subject".into(), json!(c.subject));
        put(&mut m, "Description", &c.body);
        m.insert("ActivityDate".into(), json!(c.occurred_at.date_naive().to_string()));
        m.insert("Status".into(), json!("Completed"));
        m.insert(
            "CallType".into(),
            json!(if c.direction.eq_ignore_ascii_case("inbound") { "Inbound" } else { "Outbound" }),
        );
        m.insert("CallDurationInSeconds".into(), json!(c.duration_secs));
        put(&mut m, "WhoId", &c.contact_id);
        put(&mut m, "WhatId", &c.deal_id.clone().or_else(|| c.company_id.clone()));
        self.upsert("log_call", auth, "Task", &c.marker, Value::Object(m)).await
    }

    async fn create_contact(&self, auth: &Auth, c: &ContactInput) -> ProviderResult<ExternalRef> {
        self.upsert("create_contact", auth, "Contact", &c.marker, contact_body(c)).await
    }

    async fn update_contact(&self, auth: &Auth, id: &str, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let path = format!("/sobjects/Contact/{}", path_segment(id));
        let (_, q) =
            self.call("update_contact", auth, Method::PATCH, &path, Some(&contact_body(c)), true).await?;
        Ok(Reply::new(ExternalRef { id: id.to_owned(), created: false }, q))
    }

    async fn create_note(&self, auth: &Auth, n: &CreateNote) -> ProviderResult<ExternalRef> {
        let mut m = serde_json::Map::new();
        put(
            &mut m,
            "ParentId",
            &n.contact_id.clone().or_else(|| n.deal_id.clone()).or_else(|| n.company_id.clone()),
        );
        m.insert("Title".into(), json!(note_title(n)));
        m.insert("Body".into(), json!(n.body));
        if !n.marker.is_empty() {
            m.insert(MARKER_FIELD.into(), json!(n.marker));
        }
        match self
            .call("create_note", auth, Method::POST, "/sobjects/Note", Some(&Value::Object(m)), false)
            .await
        {
            Ok((resp, q)) => Ok(Reply::new(created_ref(&resp)?, q)),
            // A retry: the marker's uniqueness names the note the first attempt created.
            Err(ProviderError::Conflict { existing_id: Some(id), message })
                if !n.marker.is_empty() && message.contains(MARKER_FIELD) =>
            {
                Ok(Reply::new(ExternalRef { id, created: false }, None))
            }
            Err(e) => Err(e),
        }
    }

    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>> {
        let soql = format!(
            "SELECT {} FROM Contact WHERE Email = '{}' ORDER BY CreatedDate ASC, Id ASC LIMIT 1",
            fields(ObjectKind::Contact).join(", "),
            soql_string(email)
        );
        let (resp, q) = self.query("search_contact_by_email", auth, &soql).await?;
        let v = resp.value();
        let first = v.pointer("/records/0");
        Ok(Reply::new(first.map(|r| record(ObjectKind::Contact, r)).transpose()?, q))
    }

    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        let path =
            format!("/sobjects/{}/{MARKER_FIELD}/{}?fields=Id", action_sobject(kind), path_segment(marker));
        match self.call("find_by_marker", auth, Method::GET, &path, None, true).await {
            Ok((resp, q)) => {
                Ok(Reply::new(text(&resp.value(), "Id").map(|id| ExternalRef { id, created: false }), q))
            }
            Err(ProviderError::NotFound { .. }) => Ok(Reply::new(None, None)),
            // Several records carry the marker (the field is not unique): the first is the original.
            Err(ProviderError::Conflict { existing_id: Some(id), .. }) => {
                Ok(Reply::new(Some(ExternalRef { id, created: false }), None))
            }
            Err(e) => Err(e),
        }
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
    fn maps_documented_error_bodies() {
        let expired = resp(
            401,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
            &[],
        );
        assert_eq!(
            error(&expired),
            ProviderError::Unauthorized {
                code: Some("INVALID_SESSION_ID".into()),
                message: "Session expired or invalid".into()
            }
        );
        let total = resp(
            403,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
            &[],
        );
        assert_eq!(
            error(&total),
            ProviderError::Throttled {
                retry_after: Some(TOTAL_REQUESTS_BACKOFF),
                scope: ThrottleScope::Daily,
                status: 403,
                code: Some("REQUEST_LIMIT_EXCEEDED".into())
            }
        );
        let concurrent = resp(
            403,
            json!([{"message": "ConcurrentRequests (Concurrent API Requests) Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
            &[],
        );
        assert!(matches!(
            error(&concurrent),
            ProviderError::Throttled { scope: ThrottleScope::Concurrency, .. }
        ));
        let missing = resp(
            400,
            json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]),
            &[],
        );
        assert_eq!(
            error(&missing),
            ProviderError::Rejected {
                field: Some("LastName".into()),
                reason: "Required fields are missing: [LastName]".into(),
                code: Some("REQUIRED_FIELD_MISSING".into()),
                status: 400
            }
        );
        let malformed =
            resp(400, json!([{"message": "unexpected token: <EOF>", "errorCode": "MALFORMED_QUERY"}]), &[]);
        assert!(
            matches!(error(&malformed), ProviderError::Rejected { code: Some(c), field: None, .. } if c == "MALFORMED_QUERY")
        );
        let not_found = resp(
            404,
            json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
            &[],
        );
        assert!(matches!(error(&not_found), ProviderError::NotFound { .. }));
        let dup = resp(
            400,
            json!([{"message": "duplicate value found: CrmFleet_Action_Id__c duplicates value on record with id: 00T5g000004XyZaEAK", "errorCode": "DUPLICATE_VALUE", "fields": []}]),
            &[],
        );
        assert!(
            matches!(error(&dup), ProviderError::Conflict { existing_id: Some(id), .. } if id == "00T5g000004XyZaEAK")
        );
        let rule = resp(
            400,
            json!([{"errorCode": "DUPLICATES_DETECTED", "message": "You're creating a duplicate record.",
                    "duplicateResult": {"matchResults": [{"matchRecords": [{"record": {"Id": "0035g00000AbCdEAAV"}}]}]}}]),
            &[],
        );
        assert!(
            matches!(error(&rule), ProviderError::Conflict { existing_id: Some(id), .. } if id == "0035g00000AbCdEAAV")
        );
        let choices = resp(
            300,
            json!(["/services/data/v62.0/sobjects/Task/00T1", "/services/data/v62.0/sobjects/Task/00T2"]),
            &[],
        );
        assert!(
            matches!(error(&choices), ProviderError::Conflict { existing_id: Some(id), .. } if id == "00T1")
        );
        let lock = resp(
            400,
            json!([{"message": "unable to obtain exclusive access to this record", "errorCode": "UNABLE_TO_LOCK_ROW"}]),
            &[],
        );
        assert!(matches!(error(&lock), ProviderError::Transient { status: Some(400), .. }));
        let denied = resp(
            403,
            json!([{"message": "insufficient access rights on object id", "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY"}]),
            &[],
        );
        assert!(matches!(error(&denied), ProviderError::Forbidden { .. }));
        let outage = resp(
            503,
            json!([{"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}]),
            &[("retry-after", "30")],
        );
        assert_eq!(
            error(&outage),
            ProviderError::Transient {
                status: Some(503),
                retry_after: Some(Duration::from_secs(30)),
                message: "HTTP 503: [{\"errorCode\":\"SERVER_UNAVAILABLE\",\"message\":\"Server temporarily unavailable\"}]".into()
            }
        );
        let replication = resp(
            400,
            json!([{"message": "startDate cannot be more than 15 days ago", "errorCode": "INVALID_REPLICATION_DATE"}]),
            &[],
        );
        assert!(
            matches!(error(&replication), ProviderError::Rejected { code: Some(c), .. } if c == "INVALID_REPLICATION_DATE")
        );
    }

    #[test]
    fn parses_the_limit_info_header() {
        let r = resp(200, json!({}), &[("sforce-limit-info", "api-usage=10018/100000; api-bursts=1/750")]);
        assert_eq!(
            quota(&r),
            Some(QuotaObservation {
                daily_limit: Some(100_000),
                daily_remaining: Some(89_982),
                ..QuotaObservation::default()
            })
        );
        assert_eq!(quota(&resp(200, json!({}), &[])), None);
        assert_eq!(quota(&resp(200, json!({}), &[("sforce-limit-info", "garbage")])), None);
    }

    #[test]
    fn normalises_records_and_times() {
        let v = json!({"attributes": {"type": "Opportunity", "url": "/services/data/v62.0/sobjects/Opportunity/0065g"},
            "Id": "0065g00000AbCdEAAV", "Name": "Big deal", "StageName": "Closed Won", "Amount": 5000.0,
            "CloseDate": "2025-02-01", "AccountId": "0015g00000AbCdEAAV", "SystemModstamp": "2025-01-02T03:04:05.000+0000"});
        let r = record(ObjectKind::Deal, &v).expect("record");
        assert_eq!(r.amount, Some(5000.0));
        assert_eq!(r.stage.as_deref(), Some("Closed Won"));
        assert_eq!(r.close_date, NaiveDate::from_ymd_opt(2025, 2, 1));
        assert_eq!(r.company.as_deref(), Some("0015g00000AbCdEAAV"));
        assert_eq!(r.remote_updated_at.timestamp(), 1_735_787_045);
        assert!(
            record(ObjectKind::Deal, &json!({"Id": "x"})).is_err(),
            "a record without a modstamp is a protocol error"
        );
    }

    #[test]
    fn builds_sync_queries_and_escapes_literals() {
        let t = DateTime::parse_from_rfc3339("2025-01-01T00:00:00.750Z").expect("t").with_timezone(&Utc);
        let q = sync_soql(ObjectKind::Company, &Lower::Since(t));
        assert!(q.ends_with("FROM Account WHERE SystemModstamp >= 2025-01-01T00:00:00Z ORDER BY SystemModstamp ASC, Id ASC"), "{q}");
        let q = sync_soql(ObjectKind::Contact, &Lower::After(Key { ts: floor_second(t), id: "003x".into() }));
        assert!(q.contains("WHERE (SystemModstamp > 2025-01-01T00:00:00Z OR (SystemModstamp = 2025-01-01T00:00:00Z AND Id > '003x'))"), "{q}");
        assert_eq!(soql_string("o'neil\\x"), "o\\'neil\\\\x");
        assert_eq!(path_segment("act 1/2"), "act%201%2F2");
        assert_eq!(deleted_time(t), "2025-01-01T00%3A00%3A00%2B00%3A00");
    }

    #[test]
    fn boundary_remembers_one_second_and_drops_only_unchanged_records() {
        let t1 = DateTime::from_timestamp(100, 0).expect("t");
        let t2 = DateTime::from_timestamp(101, 0).expect("t");
        let mut b = Boundary::default();
        b.note(t1, "a", "h1".into());
        b.note(t2, "b", "h2".into());
        b.note(t2, "c", "h3".into());
        assert!(!b.contains(t1, "a", "h1"), "an older second is forgotten");
        assert!(b.contains(t2, "b", "h2"));
        assert!(!b.contains(t2, "b", "changed"), "a record changed within the second comes through");
        for i in 0..=MAX_BOUNDARY {
            b.note(t2, &format!("x{i}"), "h".into());
        }
        assert!(b.overflow && b.seen.is_empty());
        assert_eq!(
            duplicate_id("duplicate value found: F__c duplicates value on record with id: 00T5g000004XyZa"),
            Some("00T5g000004XyZa".into())
        );
    }
}
