//! Pipedrive API handlers on the company-domain (`api`) host (`crm-providers.md` §3.3–§3.5).
//!
//! * v2 `persons`, `organizations`, `deals` (+ `deals/archived`), `activities`: list (cursor
//!   pagination, `updated_since` ≥ / `updated_until` <, `sort_by`, `sort_direction`, `limit` ≤ 500,
//!   `ids` ≤ 100, filters, deals `status` incl. `deleted`), get, create (`POST`), update (`PATCH`),
//!   soft delete; `persons/search`; `pipelines`, `stages`.
//! * v1 (under `/v1` and `/api/v1`): `notes` (offset pagination), `activityTypes`, `users/me`,
//!   `recents`, `{entity}Fields`; the v1 core endpoints answer 410.
//!
//! Every handler goes [`Pipedrive::admit`] (401 / 403 HTML / 429 / 403 scope, with rate headers) →
//! parameter and body validation (400 `Validation failed: field: reason`) → one locked read or
//! write → [`super::Authed::finish`] (rate headers, operation name).
//!
//! Invariant: list pages are keyset scans over the ordered indexes from the cursor's `(sort value,
//! id)`, so a listing returns every record that exists throughout the scan exactly once (a record
//! changed mid-scan moves to the end of an `update_time` scan and is seen again, never lost).

use super::errors;
use super::schema::{self, Entity, FieldError};
use super::store::{AccountData, Bucket, Record, SortKey, WriteError};
use super::view;
use super::{Authed, Cost, Pipedrive};
use crate::clock::Millis;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::iter::Peekable;
use std::sync::Arc;

/// Page size when `limit` is absent (v1 and v2).
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` of list endpoints.
pub const MAX_LIMIT: usize = 500;
/// Largest `limit` of `persons/search`.
pub const MAX_SEARCH_LIMIT: usize = 100;
/// Most ids in one `ids=` list.
pub const MAX_IDS: usize = 100;

/// Query parameters.
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Params(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    fn int(&self, k: &str) -> Result<Option<i64>, FieldError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => {
                v.trim().parse::<i64>().map(Some).map_err(|_| FieldError::new(k, "must be an integer"))
            }
        }
    }

    fn boolean(&self, k: &str) -> Result<Option<bool>, FieldError> {
        match self.get(k).map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(FieldError::new(k, "must be true or false")),
        }
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, FieldError> {
        match self.int("limit")? {
            None => Ok(default),
            Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
            Some(_) => Err(FieldError::new("limit", format!("must be between 1 and {max}"))),
        }
    }
}

fn v1_paths(tail: &str) -> [String; 2] {
    [format!("/v1/{tail}"), format!("/api/v1/{tail}")]
}

/// Every route of the `api` host.
pub(crate) fn routes() -> Router<Arc<Pipedrive>> {
    let mut r = Router::new();
    for e in [Entity::Persons, Entity::Organizations, Entity::Deals, Entity::Activities] {
        let base = format!("/api/v2/{}", e.name());
        r = r
            .route(
                &base,
                get(move |s: State<Arc<Pipedrive>>, h: HeaderMap, u: Uri| list_v2(s, e, false, h, u)).post(
                    move |s: State<Arc<Pipedrive>>, h: HeaderMap, u: Uri, b: Bytes| create_v2(s, e, h, u, b),
                ),
            )
            .route(
                &format!("{base}/{{id}}"),
                get(move |s: State<Arc<Pipedrive>>, p: Path<String>, h: HeaderMap, u: Uri| {
                    get_v2(s, e, p, h, u)
                })
                .patch(move |s: State<Arc<Pipedrive>>, p: Path<String>, h: HeaderMap, u: Uri, b: Bytes| {
                    update_v2(s, e, p, h, u, b)
                })
                .delete(
                    move |s: State<Arc<Pipedrive>>, p: Path<String>, h: HeaderMap, u: Uri| {
                        delete_v2(s, e, p, h, u)
                    },
                ),
            );
    }
    r = r
        .route(
            "/api/v2/deals/archived",
            get(|s: State<Arc<Pipedrive>>, h: HeaderMap, u: Uri| list_v2(s, Entity::Deals, true, h, u)),
        )
        .route("/api/v2/persons/search", get(search_persons))
        .route("/api/v2/pipelines", get(pipelines))
        .route("/api/v2/stages", get(stages));
    for p in v1_paths("notes") {
        r = r.route(&p, get(list_notes).post(create_note));
    }
    for p in v1_paths("notes/{id}") {
        r = r.route(&p, get(get_note).put(update_note).delete(delete_note));
    }
    for p in v1_paths("activityTypes") {
        r = r.route(&p, get(activity_types));
    }
    for p in v1_paths("users/me") {
        r = r.route(&p, get(users_me));
    }
    for p in v1_paths("recents") {
        r = r.route(&p, get(recents));
    }
    for e in Entity::ALL {
        for p in v1_paths(e.fields_endpoint()) {
            r = r.route(&p, get(move |s: State<Arc<Pipedrive>>, h: HeaderMap, u: Uri| fields(s, e, h, u)));
        }
    }
    for e in [Entity::Persons, Entity::Organizations, Entity::Deals, Entity::Activities] {
        for p in v1_paths(e.name()).into_iter().chain(v1_paths(&format!("{}/{{*rest}}", e.name()))) {
            r = r.route(&p, axum::routing::any(move |s: State<Arc<Pipedrive>>| v1_core(s, e)));
        }
    }
    r.fallback(fallback)
}

/// Unknown paths: Pipedrive's 404.
pub(crate) async fn fallback(State(pd): State<Arc<Pipedrive>>) -> Response {
    errors::unknown_method(&pd.state)
}

async fn v1_core(State(pd): State<Arc<Pipedrive>>, e: Entity) -> Response {
    let resp = if pd.current_settings().v1_core_gone {
        errors::gone(&pd.state, &format!("/api/v2/{}", e.name()))
    } else {
        errors::unknown_method(&pd.state)
    };
    crate::server::with_operation(resp, format!("{}.v1_gone", e.name()))
}

/// Parses an RFC 3339 filter time, rejecting fractional seconds when the setting says so.
fn parse_filter_time(pd: &Pipedrive, name: &str, v: Option<&str>) -> Result<Option<Millis>, FieldError> {
    let Some(s) = v.filter(|s| !s.is_empty()) else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| FieldError::new(name, "must be an RFC 3339 date-time, e.g. 2025-01-01T10:20:00Z"))?;
    if pd.current_settings().reject_millisecond_timestamps && t.timestamp_subsec_nanos() != 0 {
        return Err(FieldError::new(name, "must not have fractional seconds"));
    }
    Ok(Some(t.timestamp_millis()))
}

/// The opaque list cursor: the sort and the last `(sort value, id)` served.
fn encode_cursor(sort: SortKey, desc: bool, key: i64, id: u64) -> String {
    let raw = json!({"s": sort.name(), "d": if desc { "desc" } else { "asc" }, "k": key, "i": id});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_cursor(s: &str, sort: SortKey, desc: bool) -> Result<(i64, u64), FieldError> {
    let bad = || FieldError::new("cursor", "is invalid or does not belong to this query");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let want_d = if desc { "desc" } else { "asc" };
    if v["s"].as_str() != Some(sort.name()) || v["d"].as_str() != Some(want_d) {
        return Err(bad());
    }
    match (v["k"].as_i64(), v["i"].as_u64()) {
        (Some(k), Some(i)) => Ok((k, i)),
        _ => Err(bad()),
    }
}

type KeyIter<'a> = Box<dyn Iterator<Item = (i64, u64)> + 'a>;

/// A lazy k-way merge of ordered `(sort value, id)` streams, each tagged.
struct Merge<'a> {
    streams: Vec<(usize, Peekable<KeyIter<'a>>)>,
    desc: bool,
}

impl Iterator for Merge<'_> {
    type Item = (usize, i64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, (i64, u64))> = None;
        for (i, (_, s)) in self.streams.iter_mut().enumerate() {
            if let Some(&k) = s.peek() {
                let better = match best {
                    None => true,
                    Some((_, b)) => {
                        if self.desc {
                            k > b
                        } else {
                            k < b
                        }
                    }
                };
                if better {
                    best = Some((i, k));
                }
            }
        }
        let (i, _) = best?;
        let tag = self.streams[i].0;
        let (k, id) = self.streams[i].1.next()?;
        Some((tag, k, id))
    }
}

fn range<'a>(
    set: Option<&'a BTreeSet<(i64, u64)>>,
    after: Option<(i64, u64)>,
    start: Option<(i64, u64)>,
    desc: bool,
) -> KeyIter<'a> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let Some(set) = set else { return Box::new(std::iter::empty()) };
    if desc {
        let upper = match (after, start) {
            (Some(a), _) => Excluded(a),
            (None, Some(s)) => Excluded(s),
            (None, None) => Unbounded,
        };
        Box::new(set.range((Unbounded, upper)).rev().copied())
    } else {
        let lower = match (after, start) {
            (Some(a), _) => Excluded(a),
            (None, Some(s)) => Included(s),
            (None, None) => Unbounded,
        };
        Box::new(set.range((lower, Unbounded)).copied())
    }
}

/// Filters of a v2 listing.
struct ListQuery {
    sort: SortKey,
    desc: bool,
    since: Option<Millis>,
    until: Option<Millis>,
    limit: usize,
    after: Option<(i64, u64)>,
    buckets: Vec<Bucket>,
    archived_only: bool,
    status: Option<String>,
    ids: Option<BTreeSet<u64>>,
    eq: Vec<(&'static str, Value)>,
}

impl ListQuery {
    fn matches(&self, r: &Record) -> bool {
        if self.since.is_some_and(|s| r.update_time < s) || self.until.is_some_and(|u| r.update_time >= u) {
            return false;
        }
        if self.archived_only && r.fields.get("is_archived").and_then(Value::as_bool) != Some(true) {
            return false;
        }
        if let Some(st) = &self.status
            && r.str("status") != Some(st.as_str())
        {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.contains(&r.id)
        {
            return false;
        }
        self.eq.iter().all(|(k, v)| r.fields.get(*k) == Some(v))
    }
}

fn parse_list_query(pd: &Pipedrive, e: Entity, archived: bool, p: &Params) -> Result<ListQuery, FieldError> {
    let sort = match p.get("sort_by") {
        None | Some("") => SortKey::Id,
        Some(s) => SortKey::parse(s, e)
            .ok_or_else(|| FieldError::new("sort_by", format!("{s} is not a supported sort field")))?,
    };
    let desc = match p.get("sort_direction") {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(FieldError::new("sort_direction", "must be asc or desc")),
    };
    let since = parse_filter_time(pd, "updated_since", p.get("updated_since"))?;
    let until = parse_filter_time(pd, "updated_until", p.get("updated_until"))?;
    let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match p.get("cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_cursor(c, sort, desc)?),
        None => None,
    };
    let ids = match p.get("ids").filter(|s| !s.is_empty()) {
        None => None,
        Some(list) => {
            let parsed: Result<BTreeSet<u64>, _> = list.split(',').map(|x| x.trim().parse::<u64>()).collect();
            let ids =
                parsed.map_err(|_| FieldError::new("ids", "must be a comma-separated list of integers"))?;
            if ids.len() > MAX_IDS {
                return Err(FieldError::new("ids", format!("at most {MAX_IDS} ids are allowed")));
            }
            Some(ids)
        }
    };
    let mut eq = Vec::new();
    let mut int_filter = |name: &'static str| -> Result<(), FieldError> {
        if let Some(v) = p.int(name)? {
            eq.push((name, json!(v)));
        }
        Ok(())
    };
    int_filter("owner_id")?;
    match e {
        Entity::Persons => {
            int_filter("org_id")?;
        }
        Entity::Deals => {
            int_filter("person_id")?;
            int_filter("org_id")?;
            int_filter("pipeline_id")?;
            int_filter("stage_id")?;
        }
        Entity::Activities => {
            int_filter("deal_id")?;
            int_filter("person_id")?;
            int_filter("org_id")?;
            if let Some(done) = p.boolean("done")? {
                eq.push(("done", json!(done)));
            }
        }
        _ => {}
    }
    let mut status = None;
    let mut buckets = vec![if archived { Bucket::Archived } else { Bucket::Live }];
    if e == Entity::Deals {
        match p.get("status").filter(|s| !s.is_empty()) {
            None | Some("all_not_deleted") => {}
            Some("deleted") => buckets = vec![Bucket::Deleted],
            Some(s @ ("open" | "won" | "lost")) => status = Some(s.to_owned()),
            Some(_) => {
                return Err(FieldError::new(
                    "status",
                    "must be one of open, won, lost, deleted, all_not_deleted",
                ));
            }
        }
    }
    if since.is_some()
        && pd.current_settings().updated_since_includes_deleted
        && !buckets.contains(&Bucket::Deleted)
    {
        buckets.push(Bucket::Deleted);
    }
    let archived_only = archived && buckets.contains(&Bucket::Deleted);
    Ok(ListQuery { sort, desc, since, until, limit, after, buckets, archived_only, status, ids, eq })
}

/// One page of a listing: matching rows after the cursor, and whether more follow.
fn page<'a>(d: &'a AccountData, e: Entity, q: &ListQuery) -> (Vec<&'a Record>, bool) {
    let t = d.table(e);
    // With an update_time sort the time bounds become range bounds.
    let start = match (q.sort, q.desc) {
        (SortKey::UpdateTime, false) => q.since.map(|s| (s, 0)),
        (SortKey::UpdateTime, true) => q.until.map(|u| (u, 0)),
        _ => None,
    };
    let streams = q
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| (i, range(t.ordered(q.sort, *b), q.after, start, q.desc).peekable()))
        .collect();
    let mut merged = Merge { streams, desc: q.desc };
    let mut out = Vec::with_capacity(q.limit.min(64));
    let mut more = false;
    for (_, k, id) in merged.by_ref() {
        if q.sort == SortKey::UpdateTime {
            if !q.desc && q.until.is_some_and(|u| k >= u) {
                break;
            }
            if q.desc && q.since.is_some_and(|s| k < s) {
                break;
            }
        }
        let Some(r) = t.rows.get(&id) else { continue };
        if !q.matches(r) {
            continue;
        }
        if out.len() == q.limit {
            more = true;
            break;
        }
        out.push(r);
    }
    (out, more)
}

fn sort_value(r: &Record, sort: SortKey) -> i64 {
    match sort {
        SortKey::Id => r.id as i64,
        SortKey::UpdateTime => r.update_time,
        SortKey::AddTime => r.add_time,
        SortKey::DueDate => r.str("due_date").and_then(crate::clock::parse_time).unwrap_or(i64::MIN),
    }
}

fn activity_custom(pd: &Pipedrive) -> bool {
    pd.current_settings().activity_note_custom_fields
}

async fn list_v2(
    State(pd): State<Arc<Pipedrive>>,
    e: Entity,
    archived: bool,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2List, e.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = if archived { "deals.list_archived".to_owned() } else { format!("{}.list", e.name()) };
    let st = &pd.state;
    let q = match parse_list_query(&pd, e, archived, &Params::parse(uri.query())) {
        Ok(q) => q,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let with_custom = e != Entity::Activities || activity_custom(&pd);
    let d = pd.read_data(&authed.account);
    let (rows, more) = page(&d, e, &q);
    let next = if more {
        rows.last().map(|r| json!(encode_cursor(q.sort, q.desc, sort_value(r, q.sort), r.id)))
    } else {
        None
    };
    let data: Vec<Value> = rows.iter().map(|r| view::v2_item(&d, e, r, with_custom)).collect();
    let resp = errors::ok(st, StatusCode::OK, Value::Array(data), Some(json!({"next_cursor": next})));
    authed.finish(resp, &op)
}

fn parse_path_id(id: &str) -> Result<u64, FieldError> {
    id.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| FieldError::new("id", "must be a positive integer"))
}

async fn get_v2(
    State(pd): State<Arc<Pipedrive>>,
    e: Entity,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2Get, e.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.get", e.name());
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let show_deleted = pd.current_settings().get_deleted_returns_record;
    let with_custom = e != Entity::Activities || activity_custom(&pd);
    let d = pd.read_data(&authed.account);
    let resp = match d.table(e).rows.get(&id).filter(|r| show_deleted || r.deleted_at.is_none()) {
        Some(r) => errors::ok(st, StatusCode::OK, view::v2_item(&d, e, r, with_custom), None),
        None => errors::not_found(st, e.title()),
    };
    authed.finish(resp, &op)
}

/// Validates a write body (types, then references) against the company's data.
fn validate_body(
    pd: &Pipedrive,
    authed: &Authed,
    d: &AccountData,
    e: Entity,
    body: &Map<String, Value>,
    create: bool,
) -> Result<schema::Validated, FieldError> {
    let custom_allowed = !matches!(e, Entity::Activities | Entity::Notes) || activity_custom(pd);
    if !custom_allowed && body.contains_key("custom_fields") {
        return Err(FieldError::new("custom_fields", "unknown field custom_fields"));
    }
    let marker = authed.account.marker_field_key.clone();
    let notes_extra = e == Entity::Notes && custom_allowed;
    let extra = move |k: &str| notes_extra && k == marker;
    let (fields, custom) = schema::validate(e, body, create, &extra)?;
    d.check_refs(e, &fields, &custom, create)?;
    Ok((fields, custom))
}

fn write_error(pd: &Pipedrive, e: &WriteError) -> Response {
    match e {
        WriteError::NotFound(ent, _) => errors::not_found(&pd.state, ent.title()),
        WriteError::Invalid(f) => errors::validation(&pd.state, f),
    }
}

async fn create_v2(
    State(pd): State<Arc<Pipedrive>>,
    e: Entity,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let authed = match pd.admit(&headers, &uri, true, Cost::V2Write, e.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.create", e.name());
    let st = &pd.state;
    let body = match errors::parse_object(st, &body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, &op),
    };
    let now = st.clock.now_ms();
    let with_custom = e != Entity::Activities || activity_custom(&pd);
    let mut d = pd.write_data(&authed.account);
    let (fields, custom) = match validate_body(&pd, &authed, &d, e, &body, true) {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let (id, _) = d.create(e, fields, custom, now, "api");
    pd.record_created(&authed.account, &d, e, id, "api");
    let resp = match d.table(e).rows.get(&id) {
        Some(r) => errors::ok(st, StatusCode::OK, view::v2_item(&d, e, r, with_custom), None),
        None => errors::not_found(st, e.title()),
    };
    authed.finish(resp, &op)
}

async fn update_v2(
    State(pd): State<Arc<Pipedrive>>,
    e: Entity,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let authed = match pd.admit(&headers, &uri, true, Cost::V2Write, e.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.update", e.name());
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let body = match errors::parse_object(st, &body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, &op),
    };
    let now = st.clock.now_ms();
    let with_custom = e != Entity::Activities || activity_custom(&pd);
    let mut d = pd.write_data(&authed.account);
    if d.table(e).live(id).is_none() {
        return authed.finish(errors::not_found(st, e.title()), &op);
    }
    let (fields, custom) = match validate_body(&pd, &authed, &d, e, &body, false) {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let resp = match d.update(e, id, fields, custom, now, "api") {
        Ok(_) => match d.table(e).rows.get(&id) {
            Some(r) => errors::ok(st, StatusCode::OK, view::v2_item(&d, e, r, with_custom), None),
            None => errors::not_found(st, e.title()),
        },
        Err(err) => write_error(&pd, &err),
    };
    authed.finish(resp, &op)
}

async fn delete_v2(
    State(pd): State<Arc<Pipedrive>>,
    e: Entity,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2Delete, e.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.delete", e.name());
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let now = st.clock.now_ms();
    let mut d = pd.write_data(&authed.account);
    let resp = match d.delete(e, id, now, "api") {
        Ok(_) => errors::ok(st, StatusCode::OK, json!({"id": id}), None),
        Err(err) => write_error(&pd, &err),
    };
    authed.finish(resp, &op)
}

/// `GET /api/v2/persons/search`.
async fn search_persons(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2Search, schema::SEARCH_SCOPES) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "persons.search";
    let st = &pd.state;
    let p = Params::parse(uri.query());
    let parsed = (|| -> Result<_, FieldError> {
        let exact = p.boolean("exact_match")?.unwrap_or(false);
        let term = p.get("term").map(str::trim).unwrap_or("").to_owned();
        let min = if exact { 1 } else { 2 };
        if term.chars().count() < min {
            return Err(FieldError::new("term", format!("must be at least {min} characters")));
        }
        let fields: Vec<String> = match p.get("fields").filter(|f| !f.is_empty()) {
            None => {
                vec!["custom_fields".into(), "email".into(), "notes".into(), "phone".into(), "name".into()]
            }
            Some(list) => {
                let v: Vec<String> = list.split(',').map(|x| x.trim().to_owned()).collect();
                if let Some(bad) = v
                    .iter()
                    .find(|f| !matches!(f.as_str(), "custom_fields" | "email" | "notes" | "phone" | "name"))
                {
                    return Err(FieldError::new("fields", format!("{bad} is not a searchable field")));
                }
                v
            }
        };
        let org = p.int("organization_id")?;
        let limit = p.limit(DEFAULT_LIMIT, MAX_SEARCH_LIMIT)?;
        let offset = match p.get("cursor").filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("search:").and_then(|n| n.parse::<usize>().ok()))
                .ok_or_else(|| FieldError::new("cursor", "is invalid"))?,
        };
        Ok((exact, term, fields, org, limit, offset))
    })();
    let (exact, term, fields, org, limit, offset) = match parsed {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let lag = pd.current_settings().search_index_lag_ms;
    let now = st.clock.now_ms();
    let d = pd.read_data(&authed.account);
    let needle = term.to_lowercase();
    let matches = |v: &str| -> Option<f64> {
        let h = v.trim().to_lowercase();
        if exact {
            (h == needle).then_some(1.0)
        } else if h.contains(&needle) {
            Some(((needle.len() as f64 / h.len().max(1) as f64) * 10_000.0).round() / 10_000.0)
        } else {
            None
        }
    };
    let searchable: Vec<String> = d
        .custom_fields_of(Entity::Persons)
        .filter(|c| matches!(c.field_type, "varchar" | "text" | "address" | "phone" | "double" | "monetary"))
        .map(|c| c.key.clone())
        .collect();
    let mut hits: Vec<(f64, u64, Vec<String>)> = Vec::new();
    if let Some(set) = d.table(Entity::Persons).ordered(SortKey::Id, Bucket::Live) {
        for (_, id) in set {
            let Some(r) = d.table(Entity::Persons).rows.get(id) else { continue };
            if lag > 0 && r.update_time > now - lag {
                continue;
            }
            if let Some(o) = org
                && r.int("org_id") != Some(o)
            {
                continue;
            }
            let mut best: Option<f64> = None;
            let mut matched_custom = Vec::new();
            let mut consider = |score: Option<f64>| {
                if let Some(s) = score {
                    best = Some(best.map_or(s, |b| b.max(s)));
                }
            };
            for f in &fields {
                match f.as_str() {
                    "name" => consider(r.str("name").and_then(matches)),
                    "email" | "phone" => {
                        let key = if f == "email" { "emails" } else { "phones" };
                        for item in r.fields.get(key).and_then(Value::as_array).into_iter().flatten() {
                            consider(item.get("value").and_then(Value::as_str).and_then(matches));
                        }
                    }
                    "custom_fields" => {
                        for k in &searchable {
                            if let Some(v) = r.custom.get(k).and_then(Value::as_str) {
                                let s = matches(v);
                                if s.is_some() {
                                    matched_custom.push(v.to_owned());
                                }
                                consider(s);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(score) = best {
                hits.push((score, *id, matched_custom));
            }
        }
    }
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let total = hits.len();
    let items: Vec<Value> = hits
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|(score, id, custom)| {
            d.table(Entity::Persons).rows.get(&id).map(|r| view::search_item(&d, r, score, custom))
        })
        .collect();
    let next = (offset + limit < total).then(|| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("search:{}", offset + limit))
    });
    let resp = errors::ok(st, StatusCode::OK, json!({"items": items}), Some(json!({"next_cursor": next})));
    authed.finish(resp, op)
}

async fn pipelines(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2List, Entity::Deals.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let data: Vec<Value> = schema::PIPELINES
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": p.id, "name": p.name, "order_nr": i + 1, "is_deleted": false, "is_deal_probability_enabled": true, "add_time": "2024-01-02T09:00:00Z", "update_time": "2024-01-02T09:00:00Z"}))
        .collect();
    let resp = errors::ok(&pd.state, StatusCode::OK, Value::Array(data), Some(json!({"next_cursor": null})));
    authed.finish(resp, "pipelines.list")
}

async fn stages(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V2List, Entity::Deals.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let want = Params::parse(uri.query()).int("pipeline_id").ok().flatten();
    let data: Vec<Value> = schema::PIPELINES
        .iter()
        .filter(|p| want.is_none_or(|w| w == p.id))
        .flat_map(|p| {
            p.stages.iter().enumerate().map(move |(i, s)| {
                json!({"id": s.0, "name": s.1, "order_nr": i + 1, "pipeline_id": p.id, "deal_probability": s.2, "is_deal_rot_enabled": false, "days_to_rotten": null, "is_deleted": false, "add_time": "2024-01-02T09:00:00Z", "update_time": "2024-01-02T09:00:00Z"})
            })
        })
        .collect();
    let resp = errors::ok(&pd.state, StatusCode::OK, Value::Array(data), Some(json!({"next_cursor": null})));
    authed.finish(resp, "stages.list")
}

fn pagination(start: usize, limit: usize, more: bool) -> Value {
    let mut p = json!({"start": start, "limit": limit, "more_items_in_collection": more});
    if more {
        p["next_start"] = json!(start + limit);
    }
    p
}

fn v1_start(p: &Params) -> Result<usize, FieldError> {
    match p.int("start")? {
        None => Ok(0),
        Some(n) if n >= 0 => Ok(n as usize),
        Some(_) => Err(FieldError::new("start", "must not be negative")),
    }
}

/// v1 list data: `null` when the page is empty, as v1 list endpoints answer.
fn v1_data(items: Vec<Value>) -> Value {
    if items.is_empty() { Value::Null } else { Value::Array(items) }
}

/// `GET /v1/notes`.
async fn list_notes(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1List, Entity::Notes.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "notes.list";
    let st = &pd.state;
    let p = Params::parse(uri.query());
    let settings = pd.current_settings();
    let parsed = (|| -> Result<_, FieldError> {
        let start = v1_start(&p)?;
        let limit = p.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let (sort, desc) = match p.get("sort").map(str::trim).filter(|s| !s.is_empty()) {
            None => (SortKey::Id, false),
            Some(s) => {
                let mut parts = s.split_whitespace();
                let field = parts.next().unwrap_or("id");
                let dir = parts.next().unwrap_or("ASC");
                let key = SortKey::parse(field, Entity::Notes)
                    .ok_or_else(|| FieldError::new("sort", format!("{field} is not a sortable field")))?;
                let desc = match dir.to_ascii_uppercase().as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(FieldError::new("sort", "direction must be ASC or DESC")),
                };
                (key, desc)
            }
        };
        let since = if settings.notes_updated_since {
            match p.get("updated_since").filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(view::parse_v1_time(s).ok_or_else(|| {
                    FieldError::new("updated_since", "must be in the format YYYY-MM-DD HH:MM:SS")
                })?),
            }
        } else {
            None
        };
        let mut eq = Vec::new();
        for k in ["user_id", "deal_id", "person_id", "org_id"] {
            if let Some(v) = p.int(k)? {
                eq.push((k, json!(v)));
            }
        }
        let day = |k: &str| -> Result<Option<Millis>, FieldError> {
            match p.get(k).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()))
                    .map_err(|_| FieldError::new(k, "must be in the format YYYY-MM-DD")),
            }
        };
        let start_date = day("start_date")?;
        let end_date = day("end_date")?.map(|t| t + super::store::DAY_MS);
        Ok((start, limit, sort, desc, since, eq, start_date, end_date))
    })();
    let (start, limit, sort, desc, since, eq, start_date, end_date) = match parsed {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let d = pd.read_data(&authed.account);
    let t = d.table(Entity::Notes);
    let mut items = Vec::new();
    let mut more = false;
    let mut skipped = 0usize;
    for (_, id) in range(t.ordered(sort, Bucket::Live), None, None, desc) {
        let Some(r) = t.rows.get(&id) else { continue };
        if since.is_some_and(|s| r.update_time < s)
            || start_date.is_some_and(|s| r.add_time < s)
            || end_date.is_some_and(|e| r.add_time >= e)
            || !eq.iter().all(|(k, v)| r.fields.get(*k) == Some(v))
        {
            continue;
        }
        if skipped < start {
            skipped += 1;
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(view::v1_note(&d, r));
    }
    let resp = errors::ok(
        st,
        StatusCode::OK,
        v1_data(items),
        Some(json!({"pagination": pagination(start, limit, more)})),
    );
    authed.finish(resp, op)
}

async fn get_note(
    State(pd): State<Arc<Pipedrive>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1Get, Entity::Notes.read_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "notes.get";
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let d = pd.read_data(&authed.account);
    let resp = match d.table(Entity::Notes).live(id) {
        Some(r) => errors::ok(st, StatusCode::OK, view::v1_note(&d, r), None),
        None => errors::not_found(st, "Note"),
    };
    authed.finish(resp, op)
}

async fn create_note(
    State(pd): State<Arc<Pipedrive>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let authed = match pd.admit(&headers, &uri, true, Cost::V1Write, Entity::Notes.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "notes.create";
    let st = &pd.state;
    let body = match errors::parse_object(st, &body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, op),
    };
    let now = st.clock.now_ms();
    let mut d = pd.write_data(&authed.account);
    let (fields, custom) = match validate_body(&pd, &authed, &d, Entity::Notes, &body, true) {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let (id, _) = d.create(Entity::Notes, fields, custom, now, "api");
    pd.record_created(&authed.account, &d, Entity::Notes, id, "api");
    let resp = match d.table(Entity::Notes).rows.get(&id) {
        Some(r) => errors::ok(st, StatusCode::CREATED, view::v1_note(&d, r), None),
        None => errors::not_found(st, "Note"),
    };
    authed.finish(resp, op)
}

async fn update_note(
    State(pd): State<Arc<Pipedrive>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let authed = match pd.admit(&headers, &uri, true, Cost::V1Write, Entity::Notes.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "notes.update";
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let body = match errors::parse_object(st, &body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, op),
    };
    let now = st.clock.now_ms();
    let mut d = pd.write_data(&authed.account);
    if d.table(Entity::Notes).live(id).is_none() {
        return authed.finish(errors::not_found(st, "Note"), op);
    }
    let (fields, custom) = match validate_body(&pd, &authed, &d, Entity::Notes, &body, false) {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let resp = match d.update(Entity::Notes, id, fields, custom, now, "api") {
        Ok(_) => match d.table(Entity::Notes).rows.get(&id) {
            Some(r) => errors::ok(st, StatusCode::OK, view::v1_note(&d, r), None),
            None => errors::not_found(st, "Note"),
        },
        Err(err) => write_error(&pd, &err),
    };
    authed.finish(resp, op)
}

async fn delete_note(
    State(pd): State<Arc<Pipedrive>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1Delete, Entity::Notes.write_scopes()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "notes.delete";
    let st = &pd.state;
    let id = match parse_path_id(&id) {
        Ok(i) => i,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let now = st.clock.now_ms();
    let mut d = pd.write_data(&authed.account);
    let resp = match d.delete(Entity::Notes, id, now, "api") {
        Ok(_) => errors::ok(st, StatusCode::OK, json!({"id": id}), None),
        Err(err) => write_error(&pd, &err),
    };
    authed.finish(resp, op)
}

/// `GET /v1/activityTypes`.
async fn activity_types(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1List, &[]) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let data: Vec<Value> = schema::ACTIVITY_TYPES
        .iter()
        .enumerate()
        .map(|(i, (id, name, key, icon))| {
            json!({"id": id, "order_nr": i + 1, "name": name, "key_string": key, "icon_key": icon, "active_flag": true, "color": null, "is_custom_flag": false, "add_time": "2024-01-02 09:00:00", "update_time": "2024-01-02 09:00:00"})
        })
        .collect();
    authed.finish(errors::ok(&pd.state, StatusCode::OK, Value::Array(data), None), "activityTypes.list")
}

/// `GET /v1/users/me`.
async fn users_me(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1Get, &[]) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let a = &authed.account;
    let tz = a.limits.lock().tz.name().to_owned();
    let data = json!({
        "id": a.user.id,
        "name": a.user.name,
        "email": a.user.email,
        "lang": 1,
        "locale": "en_US",
        "timezone_name": tz,
        "timezone_offset": "+00:00",
        "default_currency": "EUR",
        "icon_url": null,
        "active_flag": true,
        "is_admin": 1,
        "role_id": 1,
        "created": "2024-01-02 09:00:00",
        "has_created_company": true,
        "is_you": true,
        "company_id": a.company_id,
        "company_name": a.company_name,
        "company_domain": a.company_domain,
        "company_country": "EE",
        "company_industry": "Software",
        "language": {"language_code": "en", "country_code": "US"},
        "access": [{"app": "sales", "admin": true, "permission_set_id": "sandbox-admin"}],
    });
    authed.finish(errors::ok(&pd.state, StatusCode::OK, data, None), "users.me")
}

/// `GET /v1/recents`: every change since `since_timestamp` across the requested item types, oldest
/// first, offset paging.
async fn recents(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match pd.admit(&headers, &uri, false, Cost::V1List, &["recents:read"]) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "recents.list";
    let st = &pd.state;
    let p = Params::parse(uri.query());
    let parsed = (|| -> Result<_, FieldError> {
        let since = p.get("since_timestamp").and_then(view::parse_v1_time).ok_or_else(|| {
            FieldError::new("since_timestamp", "is required, in the format YYYY-MM-DD HH:MM:SS")
        })?;
        let items: Vec<Entity> = match p.get("items").filter(|s| !s.is_empty()) {
            None => Entity::ALL.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for name in list.split(',').map(str::trim) {
                    match name {
                        "deal" | "person" | "organization" | "activity" | "note" => {
                            if let Some(e) = Entity::parse(name)
                                && !out.contains(&e)
                            {
                                out.push(e);
                            }
                        }
                        "activityType" | "file" | "filter" | "pipeline" | "product" | "stage" | "user" => {}
                        other => {
                            return Err(FieldError::new(
                                "items",
                                format!("{other} is not a supported item type"),
                            ));
                        }
                    }
                }
                out
            }
        };
        Ok((since, items, v1_start(&p)?, p.limit(DEFAULT_LIMIT, MAX_LIMIT)?))
    })();
    let (since, items, start, limit) = match parsed {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), op),
    };
    let include_deleted = pd.current_settings().recents_include_deleted;
    let d = pd.read_data(&authed.account);
    let mut streams = Vec::new();
    for e in &items {
        let mut buckets = vec![Bucket::Live];
        if *e == Entity::Deals {
            buckets.push(Bucket::Archived);
        }
        if include_deleted {
            buckets.push(Bucket::Deleted);
        }
        for b in buckets {
            streams.push((
                e.index(),
                range(d.table(*e).ordered(SortKey::UpdateTime, b), None, Some((since, 0)), false).peekable(),
            ));
        }
    }
    let merged = Merge { streams, desc: false };
    let mut data = Vec::new();
    let mut more = false;
    let mut last = None;
    for (tag, _, id) in merged.skip(start) {
        let Some(e) = Entity::ALL.into_iter().find(|e| e.index() == tag) else { continue };
        let Some(r) = d.table(e).rows.get(&id) else { continue };
        if data.len() == limit {
            more = true;
            break;
        }
        last = Some(r.update_time);
        data.push(json!({"item": e.singular(), "id": r.id, "data": view::v1_item(&d, e, r)}));
    }
    let additional = json!({
        "since_timestamp": view::v1_time(since),
        "last_timestamp_on_page": last.map(view::v1_time),
        "pagination": pagination(start, limit, more),
    });
    authed.finish(errors::ok(st, StatusCode::OK, v1_data(data), Some(additional)), op)
}

/// `GET /v1/{entity}Fields`.
async fn fields(State(pd): State<Arc<Pipedrive>>, e: Entity, headers: HeaderMap, uri: Uri) -> Response {
    let scopes: &[&str] = if e == Entity::Notes { &[] } else { e.read_scopes() };
    let authed = match pd.admit(&headers, &uri, false, Cost::V1List, scopes) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.list", e.fields_endpoint());
    let st = &pd.state;
    let p = Params::parse(uri.query());
    let (start, limit) = match v1_start(&p).and_then(|s| p.limit(DEFAULT_LIMIT, MAX_LIMIT).map(|l| (s, l))) {
        Ok(x) => x,
        Err(err) => return authed.finish(errors::validation(st, &err), &op),
    };
    let custom_on = activity_custom(&pd);
    let d = pd.read_data(&authed.account);
    let mut all =
        view::fields_list(&d, e, crate::config::DEFAULT_CLOCK_START_MS - 365 * super::store::DAY_MS);
    if !custom_on && matches!(e, Entity::Activities | Entity::Notes) {
        all.retain(|f| f["edit_flag"] != json!(true));
    }
    let more = all.len() > start + limit;
    let page: Vec<Value> = all.into_iter().skip(start).take(limit).collect();
    let resp = errors::ok(
        st,
        StatusCode::OK,
        v1_data(page),
        Some(json!({"pagination": pagination(start, limit, more)})),
    );
    authed.finish(resp, &op)
}
