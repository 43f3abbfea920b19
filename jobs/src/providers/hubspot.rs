//! HubSpot CRM v3 client.
//!
//! Sync strategy: the search endpoint filtered by the modification property (`lastmodifieddate`
//! on contacts, `hs_lastmodifieddate` elsewhere) ascending, 200 per page. Search stops at 10,000
//! results per query, so before the `after` offset reaches the cap the window restarts at the
//! last modification time seen: the new query asks for `mod > T` OR (`mod = T` and the id is not
//! among those already read at `T`), so no record is skipped or read twice even when many share
//! a timestamp. Then the `archived=true` listing yields deletions since the run's start bound.
//!
//! Idempotency: creates carry the action's marker in the unique-value property
//! `crm_fleet_action_id`; a duplicate create answers 409 and reconciliation searches by it.
//! Contacts are unique by email: a 409 names the existing id, which the executor adopts.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use super::http::{RawResponse, common_status, scrub_tokens};
use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, CrmClient, CrmRecord, DeletedRecord,
    ExternalRef, Http, LogCall, ObjectKind, Provider, ProviderError, ProviderResult, QuotaObservation, Reply,
    SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};

/// The unique-value property holding crm-fleet's action marker on created objects.
pub const MARKER_PROPERTY: &str = "crm_fleet_action_id";
/// Search page size (HubSpot's maximum).
const SEARCH_LIMIT: u64 = 200;
/// Search results per query before HubSpot answers 400.
const SEARCH_CAP: u64 = 10_000;
/// Archived listing page size (the list endpoint's maximum).
const LIST_LIMIT: u64 = 100;
/// Boundary ids kept to exclude on a window restart; beyond this the restart re-reads the
/// boundary (harmless: upserts are idempotent).
const MAX_BOUNDARY_IDS: usize = 100;

/// HubSpot client.
#[derive(Debug, Clone)]
pub struct HubspotClient {
    http: Http,
}

fn object_path(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "contacts",
        ObjectKind::Company => "companies",
        ObjectKind::Deal => "deals",
    }
}

fn modified_property(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "lastmodifieddate",
        _ => "hs_lastmodifieddate",
    }
}

fn properties(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Contact => &[
            "email",
            "firstname",
            "lastname",
            "phone",
            "company",
            "associatedcompanyid",
            "hubspot_owner_id",
            "lastmodifieddate",
        ],
        ObjectKind::Company => &["name", "domain", "phone", "hubspot_owner_id", "hs_lastmodifieddate"],
        ObjectKind::Deal => &[
            "dealname",
            "amount",
            "deal_currency_code",
            "dealstage",
            "closedate",
            "pipeline",
            "hubspot_owner_id",
            "hs_lastmodifieddate",
        ],
    }
}

fn action_path(kind: ActionObject) -> &'static str {
    match kind {
        ActionObject::Task => "tasks",
        ActionObject::Call => "calls",
        ActionObject::Note => "notes",
        ActionObject::Contact => "contacts",
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    s.parse::<i64>().ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn prop(p: &Value, name: &str) -> Option<String> {
    p.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Normalises a `SimplePublicObject`.
/// (Takes the object by value: it becomes the record's `raw` without a copy.)
fn record(kind: ObjectKind, obj: Value) -> Result<CrmRecord, ProviderError> {
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Protocol { status: 200, message: "object without id".into() })?;
    let p = obj.get("properties").unwrap_or(&Value::Null);
    let updated = parse_time(obj.get("updatedAt").unwrap_or(&Value::Null))
        .or_else(|| p.get(modified_property(kind)).and_then(parse_time))
        .unwrap_or_else(Utc::now);
    let mut r = CrmRecord::new(id, kind, updated);
    r.owner = prop(p, "hubspot_owner_id");
    r.phone = prop(p, "phone");
    match kind {
        ObjectKind::Contact => {
            r.email = prop(p, "email");
            r.first_name = prop(p, "firstname");
            r.last_name = prop(p, "lastname");
            r.name = match (&r.first_name, &r.last_name) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            };
            r.company = prop(p, "associatedcompanyid").or_else(|| prop(p, "company"));
        }
        ObjectKind::Company => r.name = prop(p, "name"),
        ObjectKind::Deal => {
            r.name = prop(p, "dealname");
            r.amount = prop(p, "amount").and_then(|a| a.parse().ok());
            r.currency = prop(p, "deal_currency_code");
            r.stage = prop(p, "dealstage");
            r.close_date = prop(p, "closedate").and_then(|d| {
                DateTime::parse_from_rfc3339(&d)
                    .map(|t| t.date_naive())
                    .ok()
                    .or_else(|| NaiveDate::parse_from_str(&d[..d.len().min(10)], "%Y-%m-%d").ok())
            });
        }
    }
    r.raw = obj;
    Ok(r)
}

/// Quota headers (absent on search responses).
fn quota(resp: &RawResponse) -> Option<QuotaObservation> {
    let q = QuotaObservation {
        limit: resp.header_u64("x-hubspot-ratelimit-max"),
        remaining: resp.header_u64("x-hubspot-ratelimit-remaining"),
        window: resp.header_u64("x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis),
        reset_after: None,
        daily_limit: resp.header_u64("x-hubspot-ratelimit-daily"),
        daily_remaining: resp.header_u64("x-hubspot-ratelimit-daily-remaining"),
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

/// Maps an error response.
fn error(resp: &RawResponse) -> ProviderError {
    if let Some(e) = common_status(resp) {
        return e;
    }
    let body = resp.value();
    let message = body.get("message").and_then(Value::as_str).map(scrub_tokens).unwrap_or_default();
    let category =
        body.get("category").or_else(|| body.get("errorType")).and_then(Value::as_str).map(str::to_owned);
    let status = resp.status.as_u16();
    match status {
        401 => ProviderError::Unauthorized { code: category, message },
        403 => ProviderError::Forbidden { code: category, message },
        404 => ProviderError::NotFound {
            message: if message.is_empty() { "resource not found".into() } else { message },
        },
        409 => {
            let existing_id = message
                .split("Existing ID:")
                .nth(1)
                .map(|s| s.trim().trim_end_matches('.').split_whitespace().next().unwrap_or("").to_owned())
                .filter(|s| !s.is_empty());
            ProviderError::Conflict { existing_id, message }
        }
        423 => ProviderError::Transient {
            status: Some(423),
            retry_after: Some(resp.retry_after().unwrap_or(Duration::from_secs(2))),
            message,
        },
        477 => ProviderError::Transient { status: Some(477), retry_after: resp.retry_after(), message },
        429 => {
            let policy = body.get("policyName").and_then(Value::as_str).unwrap_or("");
            let (scope, wait) = if policy == "DAILY" {
                (ThrottleScope::Daily, Some(resp.retry_after().unwrap_or_else(until_utc_midnight)))
            } else if message.contains("secondly limit") {
                (ThrottleScope::Search, Some(resp.retry_after().unwrap_or(Duration::from_secs(1))))
            } else {
                let window = resp
                    .header_u64("x-hubspot-ratelimit-interval-milliseconds")
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_secs(10));
                (ThrottleScope::Burst, Some(resp.retry_after().unwrap_or(window)))
            };
            ProviderError::Throttled {
                retry_after: wait,
                scope,
                status,
                code: Some(if policy.is_empty() { "RATE_LIMIT".into() } else { policy.into() }),
            }
        }
        _ => {
            let first = body.get("errors").and_then(|e| e.get(0));
            let field = first
                .and_then(|e| e.get("in").or_else(|| e.pointer("/context/propertyName/0")))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let code =
                first.and_then(|e| e.get("code")).and_then(Value::as_str).map(str::to_owned).or(category);
            ProviderError::Rejected {
                field,
                reason: if message.is_empty() { resp.snippet() } else { message },
                code,
                status,
            }
        }
    }
}

impl HubspotClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http }
    }

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
        let resp = self.http.send(Provider::Hubspot, op, req, idempotent).await?;
        let q = quota(&resp);
        if resp.status.is_success() { Ok((resp, q)) } else { Err(error(&resp)) }
    }

    async fn search(
        &self,
        auth: &Auth,
        path: &str,
        body: Value,
    ) -> Result<(Value, Option<QuotaObservation>), ProviderError> {
        let (resp, q) = self.call("search", auth, Method::POST, path, Some(body), true).await?;
        Ok((resp.value(), q))
    }

    async fn create(
        &self,
        op: &'static str,
        auth: &Auth,
        kind: ActionObject,
        properties: Value,
        associations: Vec<Value>,
    ) -> ProviderResult<ExternalRef> {
        let body = json!({ "properties": properties, "associations": associations });
        let path = format!("/crm/v3/objects/{}", action_path(kind));
        let (resp, q) = self.call(op, auth, Method::POST, &path, Some(body), false).await?;
        let id = resp.value().get("id").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
            ProviderError::Protocol {
                status: resp.status.as_u16(),
                message: "created object without id".into(),
            }
        })?;
        Ok(Reply::new(ExternalRef { id, created: true }, q))
    }

    async fn sync_records(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let mod_prop = modified_property(kind);
        let after: u64 = cursor.token.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        // The current window's lower bound: the restart boundary, else the run's `since`.
        let boundary_ms = cursor.extra.get("boundary_ms").and_then(Value::as_i64);
        let boundary_ids: Vec<String> = cursor
            .extra
            .get("boundary_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let filter_groups = match (boundary_ms, cursor.since) {
            (Some(b), _) if !boundary_ids.is_empty() => json!([
                { "filters": [{ "propertyName": mod_prop, "operator": "GT", "value": b.to_string() }] },
                { "filters": [
                    { "propertyName": mod_prop, "operator": "EQ", "value": b.to_string() },
                    { "propertyName": "hs_object_id", "operator": "NOT_IN", "values": boundary_ids },
                ] },
            ]),
            (Some(b), _) => {
                json!([{ "filters": [{ "propertyName": mod_prop, "operator": "GTE", "value": b.to_string() }] }])
            }
            (None, Some(since)) => json!([{ "filters": [{
                "propertyName": mod_prop, "operator": "GTE", "value": since.timestamp_millis().to_string()
            }] }]),
            (None, None) => json!([]),
        };
        let body = json!({
            "filterGroups": filter_groups,
            "sorts": [{ "propertyName": mod_prop, "direction": "ASCENDING" }],
            "properties": properties(kind),
            "limit": SEARCH_LIMIT,
            "after": after.to_string(),
        });
        let (v, q) =
            self.search(auth, &format!("/crm/v3/objects/{}/search", object_path(kind)), body).await?;
        let mut v = v;
        let results = match v.get_mut("results").map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let mut page_records = Vec::with_capacity(results.len());
        for obj in results {
            page_records.push(record(kind, obj)?);
        }
        let mut next = cursor.clone();
        for r in &page_records {
            next.observe_record(r.remote_updated_at, &r.external_id);
        }
        // The window restart below works from everything this page returned; the caller only
        // gets what the previous run had not already read at its upper bound.
        let stamps_for_window: Vec<(i64, String)> = page_records
            .iter()
            .map(|r| (r.remote_updated_at.timestamp_millis(), r.external_id.clone()))
            .collect();
        let records: Vec<CrmRecord> = page_records
            .into_iter()
            .filter(|r| !cursor.seen_at_since(r.remote_updated_at, &r.external_id))
            .collect();
        let next_after =
            v.pointer("/paging/next/after").and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok());
        match next_after {
            Some(n) if n + SEARCH_LIMIT <= SEARCH_CAP => {
                next.phase = "records".into();
                next.token = Some(n.to_string());
            }
            Some(_) => {
                // The next page would pass the 10,000 cap: restart the window at the last
                // modification time read, excluding the ids already read at exactly that time.
                let last = stamps_for_window.last().map(|(ms, _)| *ms);
                let Some(last_ms) = last else {
                    return Err(ProviderError::Protocol {
                        status: 200,
                        message: "paging without results".into(),
                    });
                };
                let mut ids: Vec<String> = stamps_for_window
                    .into_iter()
                    .rev()
                    .take_while(|(ms, _)| *ms == last_ms)
                    .map(|(_, id)| id)
                    .collect();
                if boundary_ms == Some(last_ms) {
                    ids.extend(boundary_ids);
                }
                if ids.len() > MAX_BOUNDARY_IDS {
                    ids.clear();
                }
                next.phase = "records".into();
                next.token = None;
                next.extra = json!({ "boundary_ms": last_ms, "boundary_ids": ids });
            }
            None => {
                next.phase = "archived".into();
                next.token = None;
                next.extra = Value::Null;
            }
        }
        Ok(Reply::new(SyncPage { records, deleted: Vec::new(), next, has_more: true }, q))
    }

    async fn sync_archived(
        &self,
        auth: &Auth,
        kind: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        let mut path = format!("/crm/v3/objects/{}?archived=true&limit={LIST_LIMIT}", object_path(kind));
        if let Some(after) = &cursor.token {
            path.push_str("&after=");
            path.push_str(&url::form_urlencoded::byte_serialize(after.as_bytes()).collect::<String>());
        }
        let (resp, q) = self.call("list_archived", auth, Method::GET, &path, None, true).await?;
        let v = resp.value();
        let deleted = v
            .get("results")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| {
                        let id = o.get("id")?.as_str()?.to_owned();
                        let at = o.get("archivedAt").and_then(parse_time);
                        // Only deletions inside this run's window (all of them on a full sync).
                        match (cursor.since, at) {
                            (Some(since), Some(at)) if at < since => None,
                            _ => Some(DeletedRecord { external_id: id, deleted_at: at }),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut next = cursor.clone();
        match v.pointer("/paging/next/after").and_then(Value::as_str) {
            Some(after) => {
                next.token = Some(after.to_owned());
                Ok(Reply::new(SyncPage { records: Vec::new(), deleted, next, has_more: true }, q))
            }
            None => Ok(Reply::new(
                SyncPage { records: Vec::new(), deleted, next: cursor.next_run(), has_more: false },
                q,
            )),
        }
    }
}

fn association(to: &str, type_id: u32) -> Value {
    json!({ "to": { "id": to }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id }] })
}

fn priority(p: Option<&str>) -> &'static str {
    match p.map(str::to_ascii_lowercase).as_deref() {
        Some("high") => "HIGH",
        Some("low") => "LOW",
        _ => "MEDIUM",
    }
}

#[async_trait::async_trait]
impl CrmClient for HubspotClient {
    fn provider(&self) -> Provider {
        Provider::Hubspot
    }

    async fn sync_page(
        &self,
        auth: &Auth,
        object: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage> {
        match cursor.phase.as_str() {
            "archived" => self.sync_archived(auth, object, cursor).await,
            _ => self.sync_records(auth, object, cursor).await,
        }
    }

    async fn get(&self, auth: &Auth, object: ObjectKind, id: &str) -> ProviderResult<Option<CrmRecord>> {
        let path = format!(
            "/crm/v3/objects/{}/{id}?properties={}",
            object_path(object),
            properties(object).join(",")
        );
        match self.call("get", auth, Method::GET, &path, None, true).await {
            Ok((resp, q)) => Ok(Reply::new(Some(record(object, resp.value())?), q)),
            Err(ProviderError::NotFound { .. }) => Ok(Reply::new(None, None)),
            Err(e) => Err(e),
        }
    }

    async fn create_task(&self, auth: &Auth, t: &CreateTask) -> ProviderResult<ExternalRef> {
        let due = t.due_at.unwrap_or_else(Utc::now);
        let mut props = json!({
            "hs_timestamp": due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "hs_task_subject": t.subject,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": priority(t.priority.as_deref()),
            "hs_task_type": "TODO",
            MARKER_PROPERTY: t.marker,
        });
        if let Some(b) = &t.body {
            props["hs_task_body"] = json!(b);
        }
        if let Some(o) = &t.owner_id {
            props["hubspot_owner_id"] = json!(o);
        }
        let mut assoc = Vec::new();
        if let Some(c) = &t.contact_id {
            assoc.push(association(c, 204));
        }
        if let Some(d) = &t.deal_id {
            assoc.push(association(d, 216));
        }
        if let Some(c) = &t.company_id {
            assoc.push(association(c, 192));
        }
        self.create("create_task", auth, ActionObject::Task, props, assoc).await
    }

    async fn update_deal(&self, auth: &Auth, u: &UpdateDeal) -> ProviderResult<ExternalRef> {
        let mut props = serde_json::Map::new();
        if let Some(s) = &u.stage {
            props.insert("dealstage".into(), json!(s));
        }
        if let Some(a) = u.amount {
            props.insert("amount".into(), json!(a.to_string()));
        }
        if let Some(d) = u.close_date {
            props.insert("closedate".into(), json!(format!("{d}T00:00:00Z")));
        }
        let path = format!("/crm/v3/objects/deals/{}", u.deal_id);
        let (_, q) = self
            .call("update_deal", auth, Method::PATCH, &path, Some(json!({ "properties": props })), true)
            .await?;
        Ok(Reply::new(ExternalRef { id: u.deal_id.clone(), created: false }, q))
    }

    async fn log_call(&self, auth: &Auth, c: &LogCall) -> ProviderResult<ExternalRef> {
        let mut props = json!({
            "hs_timestamp": c.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "hs_call_title": c.subject,
            "hs_call_direction": if c.direction.eq_ignore_ascii_case("inbound") { "INBOUND" } else { "OUTBOUND" },
            "hs_call_duration": (u64::from(c.duration_secs) * 1000).to_string(),
            "hs_call_status": "COMPLETED",
            MARKER_PROPERTY: c.marker,
        });
        if let Some(b) = &c.body {
            props["hs_call_body"] = json!(b);
        }
        let mut assoc = Vec::new();
        if let Some(x) = &c.contact_id {
            assoc.push(association(x, 194));
        }
        if let Some(x) = &c.deal_id {
            assoc.push(association(x, 206));
        }
        if let Some(x) = &c.company_id {
            assoc.push(association(x, 182));
        }
        self.create("log_call", auth, ActionObject::Call, props, assoc).await
    }

    async fn create_contact(&self, auth: &Auth, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let mut props = contact_properties(c);
        if !c.marker.is_empty() {
            props[MARKER_PROPERTY] = json!(c.marker);
        }
        let mut assoc = Vec::new();
        if let Some(x) = &c.company_id {
            assoc.push(association(x, 279));
        }
        self.create("create_contact", auth, ActionObject::Contact, props, assoc).await
    }

    async fn update_contact(&self, auth: &Auth, id: &str, c: &ContactInput) -> ProviderResult<ExternalRef> {
        let path = format!("/crm/v3/objects/contacts/{id}");
        let body = json!({ "properties": contact_properties(c) });
        let (_, q) = self.call("update_contact", auth, Method::PATCH, &path, Some(body), true).await?;
        Ok(Reply::new(ExternalRef { id: id.to_owned(), created: false }, q))
    }

    async fn create_note(&self, auth: &Auth, n: &CreateNote) -> ProviderResult<ExternalRef> {
        let props = json!({
            "hs_timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "hs_note_body": n.body,
            MARKER_PROPERTY: n.marker,
        });
        let mut assoc = Vec::new();
        if let Some(x) = &n.contact_id {
            assoc.push(association(x, 202));
        }
        if let Some(x) = &n.deal_id {
            assoc.push(association(x, 214));
        }
        if let Some(x) = &n.company_id {
            assoc.push(association(x, 190));
        }
        self.create("create_note", auth, ActionObject::Note, props, assoc).await
    }

    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>> {
        let body = json!({
            "filterGroups": [{ "filters": [{ "propertyName": "email", "operator": "EQ", "value": email }] }],
            "properties": properties(ObjectKind::Contact),
            "limit": 1,
        });
        let (v, q) = self.search(auth, "/crm/v3/objects/contacts/search", body).await?;
        let first = v.get("results").and_then(|r| r.get(0));
        Ok(Reply::new(first.map(|o| record(ObjectKind::Contact, o.clone())).transpose()?, q))
    }

    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        let body = json!({
            "filterGroups": [{ "filters": [{ "propertyName": MARKER_PROPERTY, "operator": "EQ", "value": marker }] }],
            "properties": [MARKER_PROPERTY],
            "limit": 1,
        });
        let (v, q) =
            self.search(auth, &format!("/crm/v3/objects/{}/search", action_path(kind)), body).await?;
        let id = v.pointer("/results/0/id").and_then(Value::as_str).map(str::to_owned);
        Ok(Reply::new(id.map(|id| ExternalRef { id, created: false }), q))
    }
}

fn contact_properties(c: &ContactInput) -> Value {
    let mut props = serde_json::Map::new();
    for (k, v) in [
        ("email", &c.email),
        ("firstname", &c.first_name),
        ("lastname", &c.last_name),
        ("phone", &c.phone),
        ("jobtitle", &c.title),
    ] {
        if let Some(v) = v {
            props.insert(k.into(), json!(v));
        }
    }
    Value::Object(props)
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

    /// A provider's message is kept in logs and dead letters: anything token-shaped in it goes.
    #[test]
    fn a_token_in_an_error_message_is_redacted() {
        let leaky = resp(
            400,
            json!({"status":"error","message":"bad request for token pat-na1-3f2a9c1b-77aa-4bcd-9e01-5566778899aa12","category":"VALIDATION_ERROR"}),
            &[],
        );
        let e = error(&leaky).to_string();
        assert!(!e.contains("5566778899aa12"), "{e}");
        assert!(e.contains("[redacted]"), "{e}");
    }

    #[test]
    fn maps_documented_error_bodies() {
        let daily = resp(
            429,
            json!({"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","policyName":"DAILY"}),
            &[],
        );
        assert!(matches!(error(&daily), ProviderError::Throttled { scope: ThrottleScope::Daily, .. }));
        let burst = resp(
            429,
            json!({"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}),
            &[("x-hubspot-ratelimit-interval-milliseconds", "10000")],
        );
        assert_eq!(
            error(&burst),
            ProviderError::Throttled {
                retry_after: Some(Duration::from_secs(10)),
                scope: ThrottleScope::Burst,
                status: 429,
                code: Some("TEN_SECONDLY_ROLLING".into())
            }
        );
        let dup = resp(
            409,
            json!({"status":"error","message":"Contact already exists. Existing ID: 512","category":"CONFLICT"}),
            &[],
        );
        assert_eq!(
            error(&dup),
            ProviderError::Conflict {
                existing_id: Some("512".into()),
                message: "Contact already exists. Existing ID: 512".into()
            }
        );
        let expired = resp(
            401,
            json!({"status":"error","message":"The OAuth token used to make this call expired 7 second(s) ago.","category":"EXPIRED_AUTHENTICATION"}),
            &[],
        );
        assert!(matches!(error(&expired), ProviderError::Unauthorized { .. }));
        let invalid = resp(
            400,
            json!({"status":"error","message":"Property values were not valid","category":"VALIDATION_ERROR","errors":[{"message":"bad","in":"email","code":"INVALID_EMAIL"}]}),
            &[],
        );
        assert_eq!(
            error(&invalid),
            ProviderError::Rejected {
                field: Some("email".into()),
                reason: "Property values were not valid".into(),
                code: Some("INVALID_EMAIL".into()),
                status: 400
            }
        );
        assert!(matches!(
            error(&resp(503, json!({}), &[])),
            ProviderError::Transient { status: Some(503), .. }
        ));
    }

    #[test]
    fn normalises_a_contact() {
        let obj = json!({"id":"51","properties":{"email":"a@x.com","firstname":"Ann","lastname":"Lee","lastmodifieddate":"2025-01-02T03:04:05.000Z"},
            "createdAt":"2025-01-01T00:00:00.000Z","updatedAt":"2025-01-02T03:04:05.000Z","archived":false});
        let r = record(ObjectKind::Contact, obj).expect("record");
        assert_eq!(r.external_id, "51");
        assert_eq!(r.email.as_deref(), Some("a@x.com"));
        assert_eq!(r.name.as_deref(), Some("Ann Lee"));
        assert_eq!(r.remote_updated_at.timestamp(), 1_735_787_045);
    }
}
