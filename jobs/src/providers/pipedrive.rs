//! Pipedrive client (API v2, v1 where v2 has no endpoint).
//!
//! Every request goes to the connection's `api_domain` (`auth.api_base`, the company domain the
//! token response named), authenticated with `Authorization: Bearer` (OAuth) or `x-api-token`.
//!
//! **Sync strategy.** Each object is read in phases, each an ascending keyset scan that survives
//! concurrent changes (a record changed mid-scan moves to the end and is read again, never lost):
//!
//! * contacts → `GET /api/v2/persons`, companies → `GET /api/v2/organizations`, deals →
//!   `GET /api/v2/deals`, with `updated_since` (≥, the run's lower bound, second precision),
//!   `sort_by=update_time`, `sort_direction=asc`, `limit=500` and the opaque `cursor`;
//! * deals then `GET /api/v2/deals/archived` (the default listing excludes archived deals) and
//!   `GET /api/v2/deals?status=deleted` (deals deleted in the last 30 days);
//! * persons and organizations then (incremental runs only) `GET /v1/recents?items=person` (or
//!   `organization`), which lists deleted items with `active_flag: false`; it is paged by moving
//!   `since_timestamp` to the last timestamp read and skipping the items already read at it, so a
//!   change landing mid-scan cannot shift an unread item past the page boundary. Rows a listing
//!   returns with `is_deleted: true` are reported as deletions too, so the client also works if
//!   `updated_since` listings include soft-deleted rows.
//!
//! A page's `next` cursor names the phase and the provider's page token, so a crash between pages
//! resumes exactly after the last stored page. The next run starts at the highest `update_time`
//! of the first (records) phase: every change the run did not see happened after that phase
//! finished, so it is at or after that time. Records at exactly that second are re-read by the
//! next run (`updated_since` is inclusive); the final cursor remembers their ids and content
//! hashes so unchanged re-reads are dropped and changed ones kept. Deletions older than the
//! 30-day retention cannot be seen: a tenant idle longer than that needs a full resync.
//!
//! **Idempotency.** Pipedrive has no idempotency key and no unique fields. Creates write the
//! action's marker into the company's varchar custom field named [`MARKER_FIELD_NAME`] (its
//! 40-character key is looked up once per connection from `/v1/{personFields,activityFields,
//! noteFields}` and cached), and [`CrmClient::find_by_marker_within`] finds the object again:
//!
//! * `create_contact`: exact-match `persons/search` on custom fields;
//! * `create_task`, `log_call`: a scan of the activities (`sort_by=update_time`, newest first,
//!   pages of 500), matched on the field;
//! * `create_note`: the same over `/v1/notes` (`sort=update_time DESC`).
//!
//! Creates are sent as non-idempotent, so a lost answer is `OutcomeUnknown` and the executor must
//! reconcile before creating again. The scans are bounded by the action's age, not by a count:
//! they read until they pass the objects updated within that age (plus 10 minutes) of the
//! newest one — Pipedrive's "now" read from its own timestamps, since comparing our clock with
//! the provider's could stop a scan early and create the object twice — so an object cannot
//! hide behind newer ones and be taken for absent: past 5,000 such objects the scan answers
//! `OutcomeUnknown` ("not creating again": the executor dead-letters the job for an operator)
//! instead of "not found". An object updated while the scan runs moves to the front, already
//! read, so a scan of more than one page reads the front again, down to where it began, before
//! it says "not found" (at most two pages; more updated objects than that during one scan make
//! an age-bounded scan answer `OutcomeUnknown`). Offset pages of notes overlap by 50, so a note
//! deleted behind the scan does not make the one at a page boundary skipped. Person search is
//! eventually consistent (a person created a moment ago may not be found yet): a "not found"
//! for an attempt younger than [`SEARCH_INDEX_LAG`] is not conclusive, and the executor looks
//! again once it is older. Residual duplicate risk: an index lagging longer than that, and an
//! object updated during the front re-read itself. An activity is matched by the
//! marker alone, whatever its type now. Without an age, [`CrmClient::find_by_marker`] scans the
//! 5,000 most recently updated objects (with the same re-read) and answers "not found" past
//! them. Updates (`PATCH` with absolute values) are idempotent.
//!
//! The marker field is not part of [`Auth`], so the client looks it up by name the first time a
//! credential creates or reconciles (one extra `GET`; again after an OAuth refresh, since the cache
//! is keyed by a SHA-256 of the credential) unless [`PipedriveClient::remember_marker_field`] was
//! told the key. Pipedrive's real activities and notes have no custom fields (see the sandbox
//! docs): live, the marker needs another home there.
//!
//! Invariant: one HTTP request per call (plus the marker-field lookup above, and the pages of a
//! marker scan), never sleeping or retrying; tokens are never logged or kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};
use parking_lot::Mutex;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::http::{RawResponse, common_status, scrub_tokens};
use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, CrmRecord,
    DeletedRecord, ExternalRef, Http, LogCall, ObjectKind, Provider, ProviderError, ProviderResult,
    QuotaObservation, Reply, SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};

/// The name of the varchar custom field that holds crm-fleet's action marker (on persons,
/// activities and notes).
pub const MARKER_FIELD_NAME: &str = "crm-fleet action id";
/// Page size of v2 listings and `recents` (Pipedrive's maximum; cost is per call, not per row).
const LIST_LIMIT: usize = 500;
/// How long a person may stay missing from `persons/search` after a write. Pipedrive documents
/// the index as eventually consistent without a figure; generous, since waiting only delays a
/// retry.
pub const SEARCH_INDEX_LAG: Duration = Duration::from_secs(60);
/// Page size of a marker reconciliation's scan of recently updated activities or notes.
const MARKER_SCAN: usize = 500;
/// Pages a marker reconciliation without an age bound scans at most: the 5,000 most recently
/// updated objects. A retry comes a lease period or a backoff after the lost answer; at
/// hundreds of creates per second in one account, 500 was too few (seen as duplicates in the
/// chaos test).
const MARKER_SCAN_PAGES: usize = 10;
/// Pages an age-bounded reconciliation scans at most (5,000 objects updated within the
/// action's age) before it answers "outcome unknown" instead of "not found". As many as the
/// unbounded scan: the pages take no rate token of their own, and a scan throttled half-way
/// would start again from the top.
const MARKER_SCAN_PAGES_WITHIN: usize = 10;
/// Notes a marker scan's offset pages share with the page before (see `marker_page`); a note
/// scan reads one page more (11) to reach the same 5,000 notes.
const MARKER_SCAN_OVERLAP: usize = 50;
/// Pages a marker scan may read again from the top, for objects updated while it ran (those
/// move to the front, already read). More than that many updated during one scan (or sharing
/// the newest second, as after a bulk edit: the re-read stops at an older object): an
/// age-bounded scan answers "outcome unknown". With them a scan sends at most 13 requests
/// without rate tokens of their own.
const MARKER_RECHECK_PAGES: usize = 2;
/// Pipedrive's burst window, the wait when a 429 names none.
const BURST_WINDOW: Duration = Duration::from_secs(2);
/// How long to stay away after the Cloudflare abuse page ("stop hammering").
const ABUSE_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Records remembered at the next run's lower bound; beyond this they are simply re-read.
const MAX_BOUNDARY: usize = 1000;

const PHASE_RECORDS: &str = "records";
const PHASE_ARCHIVED: &str = "archived";
const PHASE_DELETED: &str = "deleted";

/// Pipedrive client. The marker-field cache is shared by clones.
#[derive(Clone)]
pub struct PipedriveClient {
    http: Http,
    marker_keys: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for PipedriveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipedriveClient")
            .field("cached_marker_fields", &self.marker_keys.lock().len())
            .finish()
    }
}

/// The entities actions touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entity {
    Persons,
    Organizations,
    Deals,
    Activities,
    Notes,
}

impl Entity {
    fn of(kind: ObjectKind) -> Self {
        match kind {
            ObjectKind::Contact => Entity::Persons,
            ObjectKind::Company => Entity::Organizations,
            ObjectKind::Deal => Entity::Deals,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Entity::Persons => "persons",
            Entity::Organizations => "organizations",
            Entity::Deals => "deals",
            Entity::Activities => "activities",
            Entity::Notes => "notes",
        }
    }

    fn fields_endpoint(self) -> &'static str {
        match self {
            Entity::Persons => "personFields",
            Entity::Organizations => "organizationFields",
            Entity::Deals => "dealFields",
            Entity::Activities => "activityFields",
            Entity::Notes => "noteFields",
        }
    }

    fn recents_item(self) -> &'static str {
        match self {
            Entity::Persons => "person",
            Entity::Organizations => "organization",
            Entity::Deals => "deal",
            Entity::Activities => "activity",
            Entity::Notes => "note",
        }
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A v2 filter time: RFC 3339, whole seconds (milliseconds are rejected by the API).
fn v2_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A v1 time: `YYYY-MM-DD HH:MM:SS` (UTC).
fn v1_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses v2 (RFC 3339) and v1 (`YYYY-MM-DD HH:MM:SS`, UTC) times.
fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc())
}

fn id_of(item: &Value) -> Option<String> {
    match item.get("id")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn num_text(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        // v1 embeds related records as objects with an `id` or `value`.
        Value::Object(o) => {
            o.get("id").or_else(|| o.get("value")).and_then(|x| num_text(&json!({"x": x}), "x"))
        }
        _ => None,
    }
}

/// The primary (else first) value of a v2 `emails`/`phones` list, or of a search item's string list.
fn primary(v: &Value, k: &str) -> Option<String> {
    let list = v.get(k)?.as_array()?;
    let pick = list
        .iter()
        .find(|x| x.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| list.first())?;
    match pick {
        Value::String(s) => Some(s.clone()),
        other => text(other, "value"),
    }
}

/// Normalises a v2 item (or a v1 item from `recents`).
fn record(kind: ObjectKind, item: &Value) -> Result<CrmRecord, ProviderError> {
    let id = id_of(item)
        .ok_or_else(|| ProviderError::Protocol { status: 200, message: "item without id".into() })?;
    let updated = item.get("update_time").and_then(parse_time).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let mut r = CrmRecord::new(id, kind, updated);
    r.owner = num_text(item, "owner_id");
    match kind {
        ObjectKind::Contact => {
            r.name = text(item, "name");
            r.first_name = text(item, "first_name");
            r.last_name = text(item, "last_name");
            r.email = primary(item, "emails");
            r.phone = primary(item, "phones");
            r.company = num_text(item, "org_id");
        }
        ObjectKind::Company => r.name = text(item, "name"),
        ObjectKind::Deal => {
            r.name = text(item, "title");
            r.amount = item.get("value").and_then(Value::as_f64);
            r.currency = text(item, "currency");
            r.stage = num_text(item, "stage_id");
            r.close_date = text(item, "expected_close_date")
                .and_then(|d| NaiveDate::parse_from_str(&d[..d.len().min(10)], "%Y-%m-%d").ok());
            r.company = num_text(item, "org_id");
        }
    }
    r.raw = item.clone();
    Ok(r)
}

/// A `persons/search` item (`{result_score, item: {id, name, emails: [..], ...}}`) as a contact.
/// Search items carry no modification time, so `remote_updated_at` is the epoch: the record is
/// partial and must not win over a synced copy.
fn search_record(hit: &Value) -> Result<CrmRecord, ProviderError> {
    let item = hit.get("item").unwrap_or(hit);
    let id = id_of(item)
        .ok_or_else(|| ProviderError::Protocol { status: 200, message: "search item without id".into() })?;
    let mut r = CrmRecord::new(id, ObjectKind::Contact, DateTime::<Utc>::UNIX_EPOCH);
    r.name = text(item, "name");
    if let Some(n) = &r.name {
        let mut parts = n.splitn(2, ' ');
        r.first_name = parts.next().map(str::to_owned);
        r.last_name = parts.next().map(str::to_owned);
    }
    r.email = primary(item, "emails");
    r.phone = primary(item, "phones");
    r.owner = item.get("owner").and_then(|o| num_text(o, "id"));
    r.company = item.get("organization").and_then(|o| num_text(o, "id"));
    r.raw = hit.clone();
    Ok(r)
}

/// Quota headers: the burst window (`x-ratelimit-*`) and, when present, the daily token budget.
fn quota(resp: &RawResponse) -> Option<QuotaObservation> {
    let limit = resp.header_u64("x-ratelimit-limit");
    let q = QuotaObservation {
        limit,
        remaining: resp.header_u64("x-ratelimit-remaining"),
        window: limit.map(|_| BURST_WINDOW),
        reset_after: resp.header_u64("x-ratelimit-reset").map(Duration::from_secs),
        daily_limit: resp.header_u64("x-daily-ratelimit-token-limit"),
        daily_remaining: resp.header_u64("x-daily-ratelimit-token-remaining"),
    };
    (!q.is_empty()).then_some(q)
}

fn until_utc_midnight() -> Duration {
    let now = Utc::now();
    let tomorrow = (now + chrono::Duration::days(1)).date_naive().and_hms_opt(0, 0, 0);
    tomorrow
        .map(|t| (t.and_utc() - now).to_std().unwrap_or(Duration::from_secs(3600)))
        .unwrap_or(Duration::from_secs(3600))
}

/// The field a validation message names: `"Validation failed: {field}: {reason}"`.
fn field_from_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Validation failed: ")?;
    let (field, _) = rest.split_once(':')?;
    let field = field.trim();
    (!field.is_empty() && !field.contains(' ')).then(|| field.to_owned())
}

/// Maps an error response. `search` says whether it answered a search call (its own limit).
fn error(resp: &RawResponse, search: bool) -> ProviderError {
    let status = resp.status.as_u16();
    let html = resp.header("content-type").is_some_and(|c| c.contains("text/html"));
    let body = resp.value();
    if status == 403 && (html || (!resp.body.is_empty() && body.is_null())) {
        // Cloudflare's block page for integrations that kept sending after 429s.
        return ProviderError::Throttled {
            retry_after: Some(resp.retry_after().unwrap_or(ABUSE_BACKOFF).max(ABUSE_BACKOFF)),
            scope: ThrottleScope::Burst,
            status,
            code: Some("abuse_block".into()),
        };
    }
    if let Some(e) = common_status(resp) {
        return e;
    }
    // The field is read from the message as Pipedrive wrote it (a custom field's key is 40 hex
    // characters, token-shaped); the message kept is scrubbed.
    let raw_message = body.get("error").and_then(Value::as_str).unwrap_or_default();
    let message = scrub_tokens(raw_message);
    let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
    let message = if message.is_empty() { resp.snippet() } else { message };
    match status {
        401 => ProviderError::Unauthorized { code: Some("unauthorized".into()), message },
        402 => ProviderError::Forbidden {
            code: Some(code.unwrap_or_else(|| "payment_required".into())),
            message,
        },
        403 => {
            let code =
                code.or_else(|| (message == "Scope and URL mismatch").then(|| "scope_mismatch".to_owned()));
            ProviderError::Forbidden { code, message }
        }
        404 => ProviderError::NotFound { message },
        409 => ProviderError::Conflict { existing_id: None, message },
        429 => {
            let daily = resp.header_u64("x-daily-ratelimit-token-remaining") == Some(0);
            if daily {
                ProviderError::Throttled {
                    retry_after: Some(resp.retry_after().unwrap_or_else(until_utc_midnight)),
                    scope: ThrottleScope::Daily,
                    status,
                    code: Some("daily_budget".into()),
                }
            } else {
                let wait = resp
                    .retry_after()
                    .or_else(|| resp.header_u64("x-ratelimit-reset").map(Duration::from_secs))
                    .unwrap_or(BURST_WINDOW);
                ProviderError::Throttled {
                    retry_after: Some(wait),
                    scope: if search { ThrottleScope::Search } else { ThrottleScope::Burst },
                    status,
                    code: Some("rate_limit".into()),
                }
            }
        }
        _ => {
            let field = body
                .get("field_code")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| field_from_message(raw_message));
            let code = code.or_else(|| (status == 410).then(|| "gone".to_owned()));
            ProviderError::Rejected { field, reason: message, code, status }
        }
    }
}

/// A stable fingerprint of an item: its id and a SHA-256 of its canonical JSON (keys sorted).
fn fingerprint(id: &str, item: &Value) -> Value {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(item).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    json!([id, hex])
}

/// Items the previous run read at its final lower bound, and those this run reads at the next one.
struct Boundary {
    /// Fingerprints read by the previous run at `cursor.since`.
    prev: Vec<Value>,
    /// The time of the set being built (the next run's lower bound so far).
    time: Option<DateTime<Utc>>,
    /// Fingerprints at `time`; `None` once it overflowed.
    set: Option<Vec<Value>>,
}

impl Boundary {
    fn load(cursor: &SyncCursor) -> Self {
        let e = &cursor.extra;
        let prev_time = e.get("prev_time").and_then(Value::as_i64);
        let prev = match (prev_time, cursor.since) {
            (Some(t), Some(s)) if t == s.timestamp() => {
                e.get("prev").and_then(Value::as_array).cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let time = e
            .get("time")
            .and_then(Value::as_i64)
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .or(cursor.since);
        let set = match e.get("set") {
            Some(Value::Array(a)) => Some(a.clone()),
            Some(Value::Null) if e.get("time").is_some() => None,
            _ if time == cursor.since => Some(prev.clone()),
            _ => Some(Vec::new()),
        };
        Self { prev, time, set }
    }

    fn is_duplicate(&self, fp: &Value) -> bool {
        self.prev.contains(fp)
    }

    /// Notes an item read at `t`. In the first phase a later time starts a new set; later phases
    /// only add to the current one.
    fn note(&mut self, t: DateTime<Utc>, fp: Value, first_phase: bool) {
        if first_phase && self.time.is_none_or(|b| t > b) {
            self.time = Some(t);
            self.set = Some(vec![fp]);
        } else if self.time == Some(t)
            && let Some(s) = &mut self.set
        {
            if !s.contains(&fp) {
                s.push(fp);
            }
            if s.len() > MAX_BOUNDARY {
                self.set = None;
            }
        }
    }

    fn store(&self, extra: &mut Value, prev_time: Option<DateTime<Utc>>) {
        let prev_time = prev_time.map(|t| t.timestamp());
        *extra = json!({
            "prev_time": prev_time,
            "prev": self.prev,
            "time": self.time.map(|t| t.timestamp()),
            "set": self.set,
        });
    }

    /// The extra of the next run's first cursor.
    fn finish(&self) -> Value {
        match (&self.time, &self.set) {
            (Some(t), Some(s)) => json!({"prev_time": t.timestamp(), "prev": s}),
            _ => Value::Null,
        }
    }
}

fn data_array(v: &Value) -> Vec<Value> {
    v.get("data").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn credential_fingerprint(auth: &Auth) -> String {
    use sha2::{Digest, Sha256};
    let (kind, secret) = match &auth.credential {
        Credential::Bearer(s) => ("bearer", s),
        Credential::ApiTokenHeader(s) => ("api-token", s),
        Credential::ZohoOauth(s) => ("zoho", s),
        Credential::BasicKey(s) => ("basic", s),
    };
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(secret.expose_secret().as_bytes());
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn int_id(field: &str, v: &str) -> Result<i64, ProviderError> {
    v.trim().parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| ProviderError::Rejected {
        field: Some(field.to_owned()),
        reason: format!("{field} must be a Pipedrive numeric id, got {v:?}"),
        code: Some("invalid_id".into()),
        status: 400,
    })
}

/// The records an activity is linked to.
struct Links<'a> {
    contact: Option<&'a String>,
    deal: Option<&'a String>,
    company: Option<&'a String>,
}

/// `HH:MM` of a duration, rounded up to the minute (Pipedrive's activity duration format).
fn hhmm(secs: u32) -> String {
    let minutes = secs.div_ceil(60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl PipedriveClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http, marker_keys: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Remembers the marker field key of a connection (when the connection stored it at setup),
    /// so creates and reconciliation skip the field lookup.
    pub fn remember_marker_field(&self, auth: &Auth, key: &str) {
        let base = auth.api_base.as_str().trim_end_matches('/').to_owned();
        let cred = credential_fingerprint(auth);
        let mut cache = self.marker_keys.lock();
        for e in [Entity::Persons, Entity::Activities, Entity::Notes] {
            cache.insert(format!("{base}|{cred}|{}", e.path()), key.to_owned());
        }
    }

    async fn call(
        &self,
        op: &'static str,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotent: bool,
    ) -> Result<(Value, Option<QuotaObservation>), ProviderError> {
        let search = op == "search" || op == "find_by_marker_search";
        let mut req = self.http.request(method, auth, path)?;
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.http.send(Provider::Pipedrive, op, req, idempotent).await?;
        let q = quota(&resp);
        if !resp.status.is_success() {
            return Err(error(&resp, search));
        }
        let v: Value = resp.json()?;
        if v.get("success").and_then(Value::as_bool) == Some(false) {
            return Err(ProviderError::Protocol {
                status: resp.status.as_u16(),
                message: format!("success: false in a {} answer", resp.status.as_u16()),
            });
        }
        Ok((v, q))
    }

    /// The marker custom field's key for `e`, from the cache or `/v1/{entity}Fields`.
    async fn marker_key(&self, auth: &Auth, e: Entity) -> Result<String, ProviderError> {
        let base = auth.api_base.as_str().trim_end_matches('/').to_owned();
        let cache_key = format!("{base}|{}|{}", credential_fingerprint(auth), e.path());
        if let Some(k) = self.marker_keys.lock().get(&cache_key) {
            return Ok(k.clone());
        }
        let path = format!("/v1/{}?start=0&limit={LIST_LIMIT}", e.fields_endpoint());
        let (v, _) = self.call("marker_field", auth, Method::GET, &path, None, true).await?;
        let key = data_array(&v)
            .iter()
            .find(|f| f.get("name").and_then(Value::as_str) == Some(MARKER_FIELD_NAME))
            .and_then(|f| text(f, "key"))
            .ok_or_else(|| ProviderError::Rejected {
                field: Some("custom_fields".into()),
                reason: format!(
                    "the company has no {:?} custom field on {}; create it (varchar) before running actions",
                    MARKER_FIELD_NAME,
                    e.path()
                ),
                code: Some("marker_field_missing".into()),
                status: 422,
            })?;
        self.marker_keys.lock().insert(cache_key, key.clone());
        Ok(key)
    }

    async fn create(
        &self,
        op: &'static str,
        auth: &Auth,
        path: &str,
        body: Value,
    ) -> ProviderResult<ExternalRef> {
        let (v, q) = self.call(op, auth, Method::POST, path, Some(body), false).await?;
        let id = v.get("data").and_then(id_of).ok_or_else(|| ProviderError::Protocol {
            status: 200,
            message: "created item without id".into(),
        })?;
        Ok(Reply::new(ExternalRef { id, created: true }, q))
    }

    async fn activity(
        &self,
        op: &'static str,
        auth: &Auth,
        mut body: Map<String, Value>,
        marker: &str,
        links: Links<'_>,
    ) -> ProviderResult<ExternalRef> {
        let Links { contact, deal, company } = links;
        if let Some(c) = contact {
            body.insert(
                "participants".into(),
                json!([{ "person_id": int_id("contact_id", c)?, "primary": true }]),
            );
        }
        if let Some(d) = deal {
            body.insert("deal_id".into(), json!(int_id("deal_id", d)?));
        }
        if let Some(o) = company {
            body.insert("org_id".into(), json!(int_id("company_id", o)?));
        }
        if !marker.is_empty() {
            let key = self.marker_key(auth, Entity::Activities).await?;
            body.insert("custom_fields".into(), json!({ key: marker }));
        }
        self.create(op, auth, "/api/v2/activities", Value::Object(body)).await
    }

    fn list_path(entity_path: &str, cursor: &SyncCursor, extra: &str) -> String {
        let mut p =
            format!("/api/v2/{entity_path}?sort_by=update_time&sort_direction=asc&limit={LIST_LIMIT}{extra}");
        if let Some(s) = cursor.since {
            p.push_str("&updated_since=");
            p.push_str(&enc(&v2_time(s)));
        }
        if let Some(t) = &cursor.token {
            p.push_str("&cursor=");
            p.push_str(&enc(t));
        }
        p
    }

    /// One page of a v2 listing phase.
    async fn sync_listing(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
        phase: &str,
    ) -> ProviderResult<SyncPage> {
        let e = Entity::of(kind);
        let (entity_path, extra) = match phase {
            PHASE_ARCHIVED => ("deals/archived", ""),
            PHASE_DELETED => ("deals", "&status=deleted"),
            _ => (e.path(), ""),
        };
        let first_phase = phase == PHASE_RECORDS;
        let (v, q) = self
            .call("sync_list", auth, Method::GET, &Self::list_path(entity_path, cursor, extra), None, true)
            .await?;
        let mut boundary = Boundary::load(cursor);
        let mut next = cursor.clone();
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        for item in data_array(&v) {
            let id = id_of(&item)
                .ok_or_else(|| ProviderError::Protocol { status: 200, message: "item without id".into() })?;
            let fp = fingerprint(&id, &item);
            if boundary.is_duplicate(&fp) {
                continue;
            }
            let at = item.get("update_time").and_then(parse_time);
            if let Some(t) = at {
                boundary.note(t, fp, first_phase);
                if first_phase {
                    // Only the first phase moves the next run's lower bound (see the module docs).
                    next.observe(t);
                }
            }
            let is_deleted = item.get("is_deleted").and_then(Value::as_bool) == Some(true);
            if is_deleted || phase == PHASE_DELETED {
                deleted.push(DeletedRecord { external_id: id, deleted_at: at });
            } else {
                records.push(record(kind, &item)?);
            }
        }
        match v.pointer("/additional_data/next_cursor").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            Some(c) => {
                next.phase = phase.to_owned();
                next.token = Some(c.to_owned());
                boundary.store(&mut next.extra, cursor.since);
                Ok(Reply::new(SyncPage { records, deleted, next, has_more: true }, q))
            }
            None => {
                let following = match (kind, phase) {
                    (ObjectKind::Deal, PHASE_RECORDS) => Some(PHASE_ARCHIVED),
                    (ObjectKind::Deal, PHASE_ARCHIVED) => Some(PHASE_DELETED),
                    (ObjectKind::Contact | ObjectKind::Company, PHASE_RECORDS) if cursor.since.is_some() => {
                        Some(PHASE_DELETED)
                    }
                    _ => None,
                };
                Ok(Reply::new(self.advance(next, boundary, cursor.since, following, records, deleted), q))
            }
        }
    }

    /// The page that ends a phase: either the first cursor of the following phase or the run's end.
    fn advance(
        &self,
        mut next: SyncCursor,
        boundary: Boundary,
        since: Option<DateTime<Utc>>,
        following: Option<&str>,
        records: Vec<CrmRecord>,
        deleted: Vec<DeletedRecord>,
    ) -> SyncPage {
        match following {
            Some(p) => {
                next.phase = p.to_owned();
                next.token = None;
                boundary.store(&mut next.extra, since);
                SyncPage { records, deleted, next, has_more: true }
            }
            None => {
                let mut done = next.next_run();
                done.extra = boundary.finish();
                SyncPage { records, deleted, next: done, has_more: false }
            }
        }
    }

    /// One page of the deletions of persons or organizations, from `/v1/recents`.
    async fn sync_recents(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let Some(since) = cursor.since else {
            let boundary = Boundary::load(cursor);
            return Ok(Reply::new(
                self.advance(cursor.clone(), boundary, None, None, Vec::new(), Vec::new()),
                None,
            ));
        };
        // The page token is `{"since": epoch seconds, "skip": n}`: restart at the last timestamp
        // read, skipping the items already read at it.
        let tok: Value =
            cursor.token.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
        let from = tok
            .get("since")
            .and_then(Value::as_i64)
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .unwrap_or(since);
        let skip = tok.get("skip").and_then(Value::as_u64).unwrap_or(0);
        let item_name = Entity::of(kind).recents_item();
        let path = format!(
            "/v1/recents?since_timestamp={}&items={item_name}&start={skip}&limit={LIST_LIMIT}",
            enc(&v1_time(from))
        );
        let (v, q) = self.call("sync_recents", auth, Method::GET, &path, None, true).await?;
        let items = data_array(&v);
        let mut boundary = Boundary::load(cursor);
        let mut deleted = Vec::new();
        let mut last: Option<DateTime<Utc>> = None;
        let mut at_last = 0u64;
        for entry in &items {
            let data = entry.get("data").cloned().unwrap_or(Value::Null);
            let t = data.get("update_time").and_then(parse_time);
            if let Some(t) = t {
                if Some(t) == last {
                    at_last += 1;
                } else {
                    last = Some(t);
                    at_last = 1;
                }
            }
            if entry.get("item").and_then(Value::as_str) != Some(item_name) {
                continue;
            }
            let inactive = data.get("active_flag").and_then(Value::as_bool) == Some(false)
                || data.get("is_deleted").and_then(Value::as_bool) == Some(true)
                || data.get("deleted").and_then(Value::as_bool) == Some(true);
            if !inactive {
                continue;
            }
            let Some(id) = id_of(entry).or_else(|| id_of(&data)) else { continue };
            let fp = fingerprint(&id, entry);
            if boundary.is_duplicate(&fp) {
                continue;
            }
            if let Some(t) = t {
                boundary.note(t, fp, false);
            }
            deleted.push(DeletedRecord { external_id: id, deleted_at: t });
        }
        let more = v.pointer("/additional_data/pagination/more_items_in_collection").and_then(Value::as_bool)
            == Some(true);
        let mut next = cursor.clone();
        if more && !items.is_empty() {
            let last = last.unwrap_or(from);
            // All items of the page at one second: keep counting from the same restart point.
            let skip = if last == from { skip + at_last } else { at_last };
            next.phase = PHASE_DELETED.to_owned();
            next.token = Some(json!({"since": last.timestamp(), "skip": skip}).to_string());
            boundary.store(&mut next.extra, cursor.since);
            return Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: true }, q));
        }
        Ok(Reply::new(self.advance(next, boundary, cursor.since, None, Vec::new(), deleted), q))
    }
}

#[async_trait::async_trait]
impl CrmClient for PipedriveClient {
    fn provider(&self) -> Provider {
        Provider::Pipedrive
    }

    async fn sync_page(
        &self,
        auth: &Auth,
        object: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        match (object, cursor.phase.as_str()) {
            (ObjectKind::Deal, PHASE_ARCHIVED) => {
                self.sync_listing(auth, object, cursor, PHASE_ARCHIVED).await
            }
            (ObjectKind::Deal, PHASE_DELETED) => self.sync_listing(auth, object, cursor, PHASE_DELETED).await,
            (_, PHASE_DELETED) => self.sync_recents(auth, object, cursor).await,
            _ => self.sync_listing(auth, object, cursor, PHASE_RECORDS).await,
        }
    }

    async fn get(&self, auth: &Auth, object: ObjectKind, id: &str) -> ProviderResult<Option<CrmRecord>> {
        let Ok(n) = id.trim().parse::<u64>() else { return Ok(Reply::new(None, None)) };
        let path = format!("/api/v2/{}/{n}", Entity::of(object).path());
        match self.call("get", auth, Method::GET, &path, None, true).await {
            Ok((v, q)) => {
                let item = v.get("data").cloned().unwrap_or(Value::Null);
                if item.is_null() || item.get("is_deleted").and_then(Value::as_bool) == Some(true) {
                    return Ok(Reply::new(None, q));
                }
                Ok(Reply::new(Some(record(object, &item)?), q))
            }
            Err(ProviderError::NotFound { .. }) => Ok(Reply::new(None, None)),
            Err(e) => Err(e),
        }
    }

    async fn create_task(&self, auth: &Auth, t: &CreateTask) -> ProviderResult<ExternalRef> {
        let mut body = Map::new();
        body.insert("subject".into(), json!(t.subject));
        body.insert("type".into(), json!("task"));
        body.insert("done".into(), json!(false));
        if let Some(b) = &t.body {
            body.insert("note".into(), json!(b));
        }
        if let Some(due) = t.due_at {
            body.insert("due_date".into(), json!(due.format("%Y-%m-%d").to_string()));
            if due.hour() != 0 || due.minute() != 0 {
                body.insert("due_time".into(), json!(due.format("%H:%M").to_string()));
            }
        }
        if let Some(o) = &t.owner_id {
            body.insert("owner_id".into(), json!(int_id("owner_id", o)?));
        }
        self.activity(
            "create_task",
            auth,
            body,
            &t.marker,
            Links {
                contact: t.contact_id.as_ref(),
                deal: t.deal_id.as_ref(),
                company: t.company_id.as_ref(),
            },
        )
        .await
    }

    async fn update_deal(&self, auth: &Auth, u: &UpdateDeal) -> ProviderResult<ExternalRef> {
        let id = int_id("deal_id", &u.deal_id)?;
        let mut body = Map::new();
        if let Some(s) = &u.stage {
            body.insert("stage_id".into(), json!(int_id("stage", s)?));
        }
        if let Some(a) = u.amount {
            body.insert("value".into(), json!(a));
        }
        if let Some(d) = u.close_date {
            body.insert("expected_close_date".into(), json!(d.format("%Y-%m-%d").to_string()));
        }
        let path = format!("/api/v2/deals/{id}");
        let (_, q) =
            self.call("update_deal", auth, Method::PATCH, &path, Some(Value::Object(body)), true).await?;
        Ok(Reply::new(ExternalRef { id: u.deal_id.clone(), created: false }, q))
    }

    async fn log_call(&self, auth: &Auth, c: &LogCall) -> ProviderResult<ExternalRef> {
        let mut body = Map::new();
        body.insert("subject".into(), json!(c.subject));
        body.insert("type".into(), json!("call"));
        body.insert("done".into(), json!(true));
        body.insert("due_date".into(), json!(c.occurred_at.format("%Y-%m-%d").to_string()));
        body.insert("due_time".into(), json!(c.occurred_at.format("%H:%M").to_string()));
        body.insert("duration".into(), json!(hhmm(c.duration_secs)));
        if let Some(b) = &c.body {
            body.insert("note".into(), json!(b));
        }
        self.activity(
            "log_call",
            auth,
            body,
            &c.marker,
            Links {
                contact: c.contact_id.as_ref(),
                deal: c.deal_id.as_ref(),
                company: c.company_id.as_ref(),
            },
        )
        .await
    }

    async fn create_contact(&self, auth: &Auth, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let mut body = contact_body(c)?;
        if !body.contains_key("name") {
            let fallback = c.email.clone().unwrap_or_else(|| "Unnamed contact".to_owned());
            body.insert("name".into(), json!(fallback));
        }
        if !c.marker.is_empty() {
            let key = self.marker_key(auth, Entity::Persons).await?;
            body.insert("custom_fields".into(), json!({ key: c.marker }));
        }
        self.create("create_contact", auth, "/api/v2/persons", Value::Object(body)).await
    }

    async fn update_contact(&self, auth: &Auth, id: &str, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let n = int_id("id", id)?;
        let body = contact_body(c)?;
        let path = format!("/api/v2/persons/{n}");
        let (_, q) =
            self.call("update_contact", auth, Method::PATCH, &path, Some(Value::Object(body)), true).await?;
        Ok(Reply::new(ExternalRef { id: id.to_owned(), created: false }, q))
    }

    async fn create_note(&self, auth: &Auth, n: &CreateNote) -> ProviderResult<ExternalRef> {
        let mut body = Map::new();
        body.insert("content".into(), json!(n.body));
        if let Some(x) = &n.deal_id {
            body.insert("deal_id".into(), json!(int_id("deal_id", x)?));
        }
        if let Some(x) = &n.contact_id {
            body.insert("person_id".into(), json!(int_id("contact_id", x)?));
        }
        if let Some(x) = &n.company_id {
            body.insert("org_id".into(), json!(int_id("company_id", x)?));
        }
        if !n.marker.is_empty() {
            // v1 takes custom fields as top-level keys.
            let key = self.marker_key(auth, Entity::Notes).await?;
            body.insert(key, json!(n.marker));
        }
        self.create("create_note", auth, "/v1/notes", Value::Object(body)).await
    }

    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>> {
        let path = format!(
            "/api/v2/persons/search?term={}&fields=email&exact_match=true&limit=1",
            enc(email.trim())
        );
        let (v, q) = self.call("search", auth, Method::GET, &path, None, true).await?;
        let first = v.pointer("/data/items/0");
        Ok(Reply::new(first.map(search_record).transpose()?, q))
    }

    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        self.find_marker(auth, kind, marker, None).await
    }

    async fn find_by_marker_within(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
        age: Duration,
    ) -> ProviderResult<Option<ExternalRef>> {
        self.find_marker(auth, kind, marker, Some(age)).await
    }

    /// Persons are found through `persons/search`, whose index lags behind writes; activities
    /// and notes are scanned from lists, which do not.
    fn marker_lookup_lag(&self, kind: ActionObject) -> Duration {
        match kind {
            ActionObject::Contact => SEARCH_INDEX_LAG,
            _ => Duration::ZERO,
        }
    }
}

impl PipedriveClient {
    /// Finds the object carrying `marker`. Persons: an exact-match search. Activities and notes
    /// have no search on custom fields: a scan, newest update first. With an `age`, the scan
    /// reads until it passes the objects updated within `age` of the newest one — the
    /// provider's own "now", so our clock is never compared with Pipedrive's — and past
    /// [`MARKER_SCAN_PAGES_WITHIN`] pages answers "outcome unknown"; without, it reads the
    /// [`MARKER_SCAN_PAGES`] newest pages.
    async fn find_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
        age: Option<Duration>,
    ) -> ProviderResult<Option<ExternalRef>> {
        let found = |id: Option<String>, q| Reply::new(id.map(|id| ExternalRef { id, created: false }), q);
        let pages = if age.is_some() { MARKER_SCAN_PAGES_WITHIN } else { MARKER_SCAN_PAGES };
        let mut scan = AgeBound::new(age);
        let inconclusive = |what: &str| ProviderError::OutcomeUnknown {
            message: format!(
                "reconciliation scanned the {} most recently updated {what} without passing the action's age; not creating again",
                pages * MARKER_SCAN
            ),
        };
        match kind {
            ActionObject::Contact => {
                let path = format!(
                    "/api/v2/persons/search?term={}&fields=custom_fields&exact_match=true&limit=10",
                    enc(marker)
                );
                let (v, q) = self.call("find_by_marker_search", auth, Method::GET, &path, None, true).await?;
                // The search matched some searchable custom field: keep an item only if the values it
                // reports as matched include the marker itself.
                let id = v
                    .pointer("/data/items")
                    .and_then(Value::as_array)
                    .and_then(|items| {
                        items.iter().find(|h| {
                            h.pointer("/item/custom_fields").and_then(Value::as_array).is_none_or(|vals| {
                                vals.is_empty() || vals.iter().any(|x| x.as_str() == Some(marker))
                            })
                        })
                    })
                    .and_then(|h| h.get("item").and_then(id_of));
                Ok(found(id, q))
            }
            ActionObject::Task | ActionObject::Call | ActionObject::Note => {
                let (entity, what) = match kind {
                    ActionObject::Note => (Entity::Notes, "notes"),
                    _ => (Entity::Activities, "activities"),
                };
                let key = self.marker_key(auth, entity).await?;
                // The marker alone decides (it is the action's id): an activity whose type
                // someone changed since ("task" to "meeting") is still the one created.
                let marked = |item: &Value| {
                    let value = match entity {
                        Entity::Notes => item.get(&key),
                        _ => item.pointer(&format!("/custom_fields/{key}")),
                    };
                    value.and_then(Value::as_str) == Some(marker)
                };
                // The scan, newest update first, until it passes the action's age.
                // Overlapping note pages need one more page to reach as far.
                let budget = match entity {
                    Entity::Notes => {
                        ((pages - 1) * MARKER_SCAN).div_ceil(MARKER_SCAN - MARKER_SCAN_OVERLAP) + 1
                    }
                    _ => pages,
                };
                let first =
                    self.scan_pages(auth, entity, budget, &marked, |items| scan.passed(items)).await?;
                let (ended, quota) = match first {
                    ScanEnd::Found(id, quota) => return Ok(found(Some(id), quota)),
                    ScanEnd::Ended(quota) => (true, quota),
                    ScanEnd::OutOfPages(quota) => (false, quota),
                };
                // An object updated while the scan ran moved to the front, already read: read
                // the front again down to where the scan began (usually one page). Not needed
                // after a one-page scan (one answer) or an empty first page (nothing to move).
                let Some(top) = scan.top.filter(|_| scan.pages > 1) else {
                    return match (ended, age) {
                        (false, Some(_)) => Err(inconclusive(what)),
                        _ => Ok(found(None, quota)),
                    };
                };
                let again = self
                    .scan_pages(auth, entity, MARKER_RECHECK_PAGES, &marked, |items| {
                        times(items).any(|t| t < top)
                    })
                    .await?;
                match again {
                    ScanEnd::Found(id, quota) => Ok(found(Some(id), quota)),
                    ScanEnd::Ended(quota) if ended || age.is_none() => Ok(found(None, quota)),
                    ScanEnd::OutOfPages(quota) if age.is_none() => Ok(found(None, quota)),
                    _ => Err(inconclusive(what)),
                }
            }
        }
    }

    /// Reads a marker scan from the top, at most `pages` pages, until an item is `marked`, a
    /// page makes `stop` true, or the listing ends.
    async fn scan_pages(
        &self,
        auth: &Auth,
        entity: Entity,
        pages: usize,
        marked: &impl Fn(&Value) -> bool,
        mut stop: impl FnMut(&[Value]) -> bool,
    ) -> Result<ScanEnd, ProviderError> {
        let mut from = ScanFrom::Top;
        let mut quota = None;
        for _ in 0..pages {
            let page = self.marker_page(auth, entity, &from).await?;
            if let Some(id) = page.items.iter().find(|i| marked(i)).and_then(id_of) {
                return Ok(ScanEnd::Found(id, page.quota));
            }
            quota = page.quota;
            let stopped = stop(&page.items);
            match page.next {
                Some(next) if !stopped => from = next,
                _ => return Ok(ScanEnd::Ended(quota)),
            }
        }
        Ok(ScanEnd::OutOfPages(quota))
    }

    /// One page of a marker scan of activities (v2, keyset cursor) or notes (v1, offsets).
    /// Note pages overlap by [`MARKER_SCAN_OVERLAP`]: a note deleted behind the scan shifts the
    /// unread ones forward, and the overlap keeps the one at a page boundary from being skipped.
    async fn marker_page(
        &self,
        auth: &Auth,
        entity: Entity,
        from: &ScanFrom,
    ) -> Result<ScanPage, ProviderError> {
        match entity {
            Entity::Notes => {
                let start = match from {
                    ScanFrom::Offset(n) => *n,
                    _ => 0,
                };
                let path =
                    format!("/v1/notes?start={start}&limit={MARKER_SCAN}&sort={}", enc("update_time DESC"));
                let (v, quota) = self.call("find_by_marker", auth, Method::GET, &path, None, true).await?;
                let more = v
                    .pointer("/additional_data/pagination/more_items_in_collection")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let next = more.then_some(ScanFrom::Offset(start + MARKER_SCAN - MARKER_SCAN_OVERLAP));
                Ok(ScanPage { items: data_array(&v), next, quota })
            }
            _ => {
                let mut path =
                    format!("/api/v2/activities?sort_by=update_time&sort_direction=desc&limit={MARKER_SCAN}");
                if let ScanFrom::Cursor(c) = from {
                    path.push_str(&format!("&cursor={}", enc(c)));
                }
                let (v, quota) = self.call("find_by_marker", auth, Method::GET, &path, None, true).await?;
                let next = v
                    .pointer("/additional_data/next_cursor")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(|c| ScanFrom::Cursor(c.to_owned()));
                Ok(ScanPage { items: data_array(&v), next, quota })
            }
        }
    }
}

/// Where the next page of a marker scan starts.
enum ScanFrom {
    Top,
    Cursor(String),
    Offset(usize),
}

/// How a marker scan ended: the marked object's id, the listing or the scan's bound reached,
/// or its pages used up first (each with the last page's quota observation).
enum ScanEnd {
    Found(String, Option<QuotaObservation>),
    Ended(Option<QuotaObservation>),
    OutOfPages(Option<QuotaObservation>),
}

/// One page of a marker scan.
struct ScanPage {
    items: Vec<Value>,
    next: Option<ScanFrom>,
    quota: Option<QuotaObservation>,
}

fn times(page: &[Value]) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    page.iter().filter_map(|item| item.get("update_time").and_then(parse_time))
}

fn newest(page: &[Value]) -> Option<DateTime<Utc>> {
    times(page).max()
}

/// How far back an age-bounded marker scan must read, on the provider's clock. The scan reads
/// newest update first, so the first page's newest `update_time` is the provider's "now" or
/// earlier; an object created `age` ago or less was updated at or after that time less `age`
/// (and less [`AgeBound::MARGIN`]). A page that shows an object older than that ends the scan:
/// every object after it is older still. Reading "now" from the first page rather than a
/// clock errs only towards reading more. That first newest time also tells the front re-read
/// where the scan began.
struct AgeBound {
    age: Option<chrono::Duration>,
    /// The newest `update_time` of the scan's first page (with items): where the scan began.
    top: Option<DateTime<Utc>>,
    /// Pages looked at.
    pages: usize,
}

impl AgeBound {
    /// Covers the one-second resolution of `update_time` and any drift between the clocks'
    /// rates; generous, since reading further back only costs pages.
    const MARGIN: chrono::Duration = chrono::Duration::minutes(10);

    fn new(age: Option<Duration>) -> Self {
        let age = age.map(|a| chrono::Duration::from_std(a).unwrap_or(chrono::Duration::MAX));
        Self { age, top: None, pages: 0 }
    }

    /// Whether `page` (the next page of the scan) reaches past the objects that need reading.
    fn passed(&mut self, page: &[Value]) -> bool {
        self.pages += 1;
        self.top = self.top.or_else(|| newest(page));
        let (Some(age), Some(top)) = (self.age, self.top) else { return false };
        // An age reaching before the calendar's start: read everything.
        let oldest_needed = top
            .checked_sub_signed(age)
            .and_then(|t| t.checked_sub_signed(Self::MARGIN))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        times(page).any(|t| t < oldest_needed)
    }
}

/// The v2 person body of a contact input (name from the parts given, primary email and phone,
/// organization). `title` has no Pipedrive field without contact sync, so it is not sent.
fn contact_body(c: &ContactInput) -> Result<Map<String, Value>, ProviderError> {
    let mut body = Map::new();
    let name: Vec<&str> = [c.first_name.as_deref(), c.last_name.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !name.is_empty() {
        body.insert("name".into(), json!(name.join(" ")));
    }
    if let Some(e) = c.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
        body.insert("emails".into(), json!([{ "value": e, "primary": true, "label": "work" }]));
    }
    if let Some(p) = c.phone.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        body.insert("phones".into(), json!([{ "value": p, "primary": true, "label": "work" }]));
    }
    if let Some(o) = &c.company_id {
        body.insert("org_id".into(), json!(int_id("company_id", o)?));
    }
    Ok(body)
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

    const OVER_LIMIT: &str = r#"{"success":false,"error":"Request over limit","errorCode":429,"error_info":"Please check developers.pipedrive.com"}"#;

    #[test]
    fn maps_throttles_burst_daily_search_and_abuse() {
        let burst = resp(
            429,
            OVER_LIMIT,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "2"),
                ("x-daily-ratelimit-token-remaining", "900"),
            ],
        );
        assert_eq!(
            error(&burst, false),
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs(2)),
                scope: ThrottleScope::Burst,
                status: 429,
                code: Some("rate_limit".into())
            }
        );
        let with_retry_after = resp(429, OVER_LIMIT, &[("retry-after", "7"), ("x-ratelimit-reset", "2")]);
        assert!(matches!(
            error(&with_retry_after, false),
            ProviderError::Throttled { retry_after: Some(d), scope: ThrottleScope::Burst, .. } if d == Duration::from_secs(7)
        ));
        let daily = resp(429, OVER_LIMIT, &[("x-daily-ratelimit-token-remaining", "0")]);
        match error(&daily, false) {
            ProviderError::Throttled { scope: ThrottleScope::Daily, retry_after: Some(d), code, .. } => {
                assert!(d <= Duration::from_secs(86_400));
                assert_eq!(code.as_deref(), Some("daily_budget"));
            }
            other => panic!("expected a daily throttle, got {other:?}"),
        }
        let search = resp(429, OVER_LIMIT, &[]);
        assert!(matches!(
            error(&search, true),
            ProviderError::Throttled { scope: ThrottleScope::Search, retry_after: Some(d), .. } if d == BURST_WINDOW
        ));
        let abuse = resp(
            403,
            "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head></html>",
            &[("content-type", "text/html; charset=UTF-8")],
        );
        assert!(matches!(
            error(&abuse, false),
            ProviderError::Throttled { scope: ThrottleScope::Burst, retry_after: Some(d), status: 403, .. } if d >= ABUSE_BACKOFF
        ));
    }

    #[test]
    fn maps_documented_error_bodies() {
        let gw = resp(
            401,
            r#"{"success":false,"error":"unauthorized access","errorCode":401,"error_info":"Please check developers.pipedrive.com"}"#,
            &[("x-401-by-gw", "true")],
        );
        assert_eq!(
            error(&gw, false),
            ProviderError::Unauthorized {
                code: Some("unauthorized".into()),
                message: "unauthorized access".into()
            }
        );
        let scope = resp(
            403,
            r#"{"success":false,"error":"Scope and URL mismatch","errorCode":403,"error_info":"Please check developers.pipedrive.com"}"#,
            &[],
        );
        assert_eq!(
            error(&scope, false),
            ProviderError::Forbidden {
                code: Some("scope_mismatch".into()),
                message: "Scope and URL mismatch".into()
            }
        );
        let capped = resp(
            403,
            r#"{"success":false,"error":"Limit reached","code":"feature_capping_deals_limit"}"#,
            &[],
        );
        assert!(
            matches!(error(&capped, false), ProviderError::Forbidden { code: Some(c), .. } if c == "feature_capping_deals_limit")
        );
        let nf = resp(
            404,
            r#"{"success":false,"error":"Deal not found","error_info":"Please check developers.pipedrive.com for more information about Pipedrive API.","data":null,"additional_data":null}"#,
            &[],
        );
        assert_eq!(error(&nf, false), ProviderError::NotFound { message: "Deal not found".into() });
        let invalid = resp(
            400,
            r#"{"success":false,"error":"Validation failed: emails: item 0: \"x\" is not a valid email address","error_info":"…","data":null,"additional_data":null,"code":"ERR_SCHEMA_VALIDATION_FAILED"}"#,
            &[],
        );
        assert!(matches!(
            error(&invalid, false),
            ProviderError::Rejected { field: Some(f), status: 400, code: Some(c), .. } if f == "emails" && c == "ERR_SCHEMA_VALIDATION_FAILED"
        ));
        let custom =
            resp(400, r#"{"success":false,"error":"Validation failed: abc: bad","field_code":"abc"}"#, &[]);
        assert!(
            matches!(error(&custom, false), ProviderError::Rejected { field: Some(f), .. } if f == "abc")
        );
        let gone = resp(410, r#"{"success":false,"error":"This endpoint is no longer supported."}"#, &[]);
        assert!(
            matches!(error(&gone, false), ProviderError::Rejected { status: 410, code: Some(c), .. } if c == "gone")
        );
        let unprocessable = resp(422, r#"{"success":false,"error":"Unprocessable Entity"}"#, &[]);
        assert!(matches!(error(&unprocessable, false), ProviderError::Rejected { status: 422, .. }));
        let conflict = resp(409, r#"{"success":false,"error":"Conflict"}"#, &[]);
        assert!(matches!(error(&conflict, false), ProviderError::Conflict { existing_id: None, .. }));
        let payment = resp(402, r#"{"success":false,"error":"Company account is not open"}"#, &[]);
        assert!(matches!(error(&payment, false), ProviderError::Forbidden { .. }));
        let outage = resp(503, r#"{"success":false,"error":"Service Unavailable"}"#, &[]);
        assert!(matches!(error(&outage, false), ProviderError::Transient { status: Some(503), .. }));
        let gateway =
            resp(502, "<html><body>502 Bad Gateway</body></html>", &[("content-type", "text/html")]);
        assert!(matches!(error(&gateway, false), ProviderError::Transient { status: Some(502), .. }));
    }

    #[test]
    fn parses_quota_headers() {
        let r = resp(
            200,
            "{}",
            &[
                ("x-ratelimit-limit", "40"),
                ("x-ratelimit-remaining", "39"),
                ("x-ratelimit-reset", "2"),
                ("x-daily-ratelimit-token-limit", "60000"),
                ("x-daily-ratelimit-token-remaining", "59990"),
            ],
        );
        assert_eq!(
            quota(&r),
            Some(QuotaObservation {
                limit: Some(40),
                remaining: Some(39),
                window: Some(BURST_WINDOW),
                reset_after: Some(Duration::from_secs(2)),
                daily_limit: Some(60_000),
                daily_remaining: Some(59_990),
            })
        );
        assert_eq!(quota(&resp(200, "{}", &[])), None, "headers may be missing altogether");
    }

    #[test]
    fn normalises_persons_deals_and_search_items() {
        let p = json!({"id": 7, "name": "Jane Doe", "first_name": "Jane", "last_name": "Doe", "owner_id": 11, "org_id": 3,
            "emails": [{"value": "j@x.com", "primary": false, "label": "home"}, {"value": "jane@x.com", "primary": true, "label": "work"}],
            "phones": [], "update_time": "2026-01-05T09:00:01Z", "is_deleted": false});
        let r = record(ObjectKind::Contact, &p).expect("record");
        assert_eq!(
            (r.external_id.as_str(), r.email.as_deref(), r.company.as_deref()),
            ("7", Some("jane@x.com"), Some("3"))
        );
        assert_eq!(r.remote_updated_at.timestamp(), 1_767_603_601);
        assert_eq!(r.owner.as_deref(), Some("11"));
        let d = json!({"id": 9, "title": "Big", "value": 1500.5, "currency": "EUR", "stage_id": 4, "expected_close_date": "2026-02-01", "update_time": "2026-01-05T09:00:00Z"});
        let r = record(ObjectKind::Deal, &d).expect("record");
        assert_eq!((r.amount, r.stage.as_deref()), (Some(1500.5), Some("4")));
        assert_eq!(r.close_date, NaiveDate::from_ymd_opt(2026, 2, 1));
        let s = json!({"result_score": 1.0, "item": {"id": 5, "type": "person", "name": "Ann Lee", "emails": ["ann@x.org"], "phones": [], "owner": {"id": 11}, "organization": {"id": 2, "name": "Acme"}}});
        let r = search_record(&s).expect("record");
        assert_eq!(
            (r.email.as_deref(), r.first_name.as_deref(), r.company.as_deref()),
            (Some("ann@x.org"), Some("Ann"), Some("2"))
        );
        assert_eq!(parse_time(&json!("2026-01-05 09:00:00")).map(|t| t.timestamp()), Some(1_767_603_600));
    }

    #[test]
    fn helpers() {
        assert_eq!(hhmm(0), "00:00");
        assert_eq!(hhmm(61), "00:02");
        assert_eq!(hhmm(3_600), "01:00");
        assert_eq!(
            field_from_message("Validation failed: stage_id: stage 99 does not exist").as_deref(),
            Some("stage_id")
        );
        assert_eq!(field_from_message("Request over limit"), None);
        assert!(
            matches!(int_id("stage", "Qualified"), Err(ProviderError::Rejected { field: Some(f), .. }) if f == "stage")
        );
        assert_eq!(
            v2_time(Utc.timestamp_millis_opt(1_767_603_600_999).single().expect("time")),
            "2026-01-05T09:00:00Z"
        );
    }

    #[test]
    fn boundary_drops_unchanged_rereads_and_keeps_changed_ones() {
        let t = Utc.timestamp_opt(1_767_603_600, 0).single().expect("time");
        let a = json!({"id": 1, "update_time": "2026-01-05T09:00:00Z", "name": "A"});
        let cursor = SyncCursor {
            since: Some(t),
            extra: json!({"prev_time": t.timestamp(), "prev": [fingerprint("1", &a)]}),
            ..SyncCursor::default()
        };
        let b = Boundary::load(&cursor);
        assert!(b.is_duplicate(&fingerprint("1", &a)));
        let changed = json!({"id": 1, "update_time": "2026-01-05T09:00:00Z", "name": "A2"});
        assert!(!b.is_duplicate(&fingerprint("1", &changed)));
        // A boundary from another lower bound is ignored.
        let stale = SyncCursor { since: Some(t + chrono::Duration::seconds(1)), ..cursor.clone() };
        assert!(!Boundary::load(&stale).is_duplicate(&fingerprint("1", &a)));
    }
}
