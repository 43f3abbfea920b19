//! Zoho CRM record endpoints under `/crm/v7` and `/crm/v8` (`crm-providers.md` §4.3–§4.5): list (with
//! `fields`, `sort_by`/`sort_order`, `page`/`per_page`, `page_token`, `If-Modified-Since`), get by id,
//! create, update, upsert, delete, `/deleted` and the related `/{module}/{id}/Notes`; search and COQL
//! live in `query`.
//!
//! Every handler: [`Zoho::admit`] (401 / 429 / credit headers) → module (400 `INVALID_MODULE`) →
//! parameters and body (400) → one locked read or write of the org's data → the response goes out
//! through [`super::Admitted::finish`] so it carries the credit headers and its operation name.
//!
//! Invariants: `page` pagination is an offset into the current ordering (so it shifts when records
//! change between pages, as any offset does), while a `page_token` resumes strictly after the last
//! record it served (a keyset), so token pages never repeat or skip a record that did not move; a
//! `page` request may not reach past record 2,000 and token pages stop at 100,000.

use super::errors::{self, json_response};
use super::limits::write_cost;
use super::schema::{self, Access, FieldValue, Module, RecordError};
use super::store::{AccountData, By, Table, to_second};
use super::view::{self, Selection};
use super::{Admitted, Host, Need, Zoho};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::observe::created_object;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use std::ops::Bound;

/// Most records a write call accepts.
pub const WRITE_LIMIT: usize = 100;
/// Most records a list page returns.
pub const PER_PAGE_MAX: usize = 200;
/// `page` reaches only this many records; beyond, `page_token` is required.
pub const DISCRETE_LIMIT: usize = 2_000;
/// Token pages stop at this many records.
pub const TOKEN_LIMIT: usize = 100_000;
/// Page tokens kept before expired ones are swept.
const PAGE_TOKENS_KEPT: usize = 10_000;
/// Most fields a `fields` parameter may name.
pub const FIELDS_MAX: usize = 50;

/// Query parameters (form-decoded, in order, repeated keys kept).
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
}

/// A `page_token`'s server-side state.
#[derive(Clone, Debug)]
pub(crate) struct PageToken {
    org: String,
    binding: String,
    position: (i64, u64),
    served: usize,
    page: usize,
    expires_at: Millis,
}

/// The API host's router: `/crm/v7/...` and the `/crm/v8/...` alias.
pub(crate) fn router(state: Host) -> Router {
    let mut r = Router::new();
    for v in ["/crm/v7", "/crm/v8"] {
        r = r
            .route(&format!("{v}/org"), get(org).fallback(method_not_allowed))
            .route(&format!("{v}/coql"), post(super::query::coql).fallback(method_not_allowed))
            .route(
                &format!("{v}/{{module}}"),
                get(list).post(create).put(update_many).delete(delete_many).fallback(method_not_allowed),
            )
            .route(&format!("{v}/{{module}}/upsert"), post(upsert).fallback(method_not_allowed))
            .route(&format!("{v}/{{module}}/search"), get(super::query::search).fallback(method_not_allowed))
            .route(&format!("{v}/{{module}}/deleted"), get(deleted).fallback(method_not_allowed))
            .route(
                &format!("{v}/{{module}}/{{id}}"),
                get(get_one).put(update_one).delete(delete_one).fallback(method_not_allowed),
            )
            .route(
                &format!("{v}/{{module}}/{{id}}/Notes"),
                get(related_notes).post(create_related_notes).fallback(method_not_allowed),
            );
    }
    r.fallback(|| async { errors::invalid_url() }).with_state(state)
}

/// `GET /crm/v{7,8}/org`: the organization the token belongs to (scope `ZohoCRM.org.READ`), as
/// `{"org": [{…}]}`. The token response names no org, so this is how a client learns which org
/// it was connected to (its id keys the org's rate budget).
async fn org(State(h): State<Host>, headers: HeaderMap) -> Response {
    let need = Need { scope: super::ScopeNeed::Org, heavy: false, cost: 1 };
    let admitted = match h.zoho.admit(h.dc, &headers, need).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let account = &admitted.authed.account;
    let admin = account.admin();
    let body = serde_json::json!({ "org": [{
        "id": account.org_id,
        "zgid": account.org_id,
        "domain_name": format!("org{}", account.org_id),
        "company_name": format!("Sandbox org {}", account.org_id),
        "primary_email": admin.email,
        "time_zone": account.tz.name(),
        "type": "production",
    }] });
    admitted.finish(json_response(StatusCode::OK, &body), "org.get")
}

async fn method_not_allowed() -> Response {
    errors::invalid_method()
}

/// Authenticates and admits a call on a module named in the path; an unknown module is a 400 after
/// authentication (and costs nothing).
pub(crate) async fn begin(
    h: &Host,
    headers: &HeaderMap,
    module: &str,
    access: Access,
    heavy: bool,
    cost: u64,
) -> Result<(Admitted, Module), Response> {
    let Some(m) = Module::parse(module) else {
        h.zoho.authenticate(h.dc, headers)?;
        return Err(errors::invalid_module());
    };
    let admitted =
        h.zoho.admit(h.dc, headers, Need { scope: super::ScopeNeed::Module(m, access), heavy, cost }).await?;
    Ok((admitted, m))
}

/// How a listing is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortBy {
    Id,
    Created,
    Modified,
}

impl SortBy {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "id" => Some(SortBy::Id),
            "Created_Time" => Some(SortBy::Created),
            "Modified_Time" => Some(SortBy::Modified),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Id => "id",
            SortBy::Created => "Created_Time",
            SortBy::Modified => "Modified_Time",
        }
    }
}

/// Lower bound of `Modified_Time` for an `If-Modified-Since` value (strictly after, or from the same
/// second when inclusive).
fn ims_lower(ims: Millis, inclusive: bool) -> Millis {
    if inclusive { to_second(ims) } else { ims + 1 }
}

/// One page of ids in listing order: `skip` from the start (or after the keyset `after`), at most
/// `take`. Returns the sort keys `(key, id)` and whether more follow.
pub(crate) fn scan(
    t: &Table,
    sort: SortBy,
    asc: bool,
    after: Option<(i64, u64)>,
    min_modified: Option<Millis>,
    skip: usize,
    take: usize,
) -> (Vec<(i64, u64)>, bool) {
    let floor = match (sort, min_modified) {
        (SortBy::Modified, Some(lower)) => Some((lower, 0u64)),
        _ => None,
    };
    let to_key = |(id, _): (&u64, &super::store::Record)| (*id as i64, *id);
    let iter: Box<dyn Iterator<Item = (i64, u64)> + '_> = match (sort, asc) {
        (SortBy::Id, true) => {
            let start = after.map(|a| Bound::Excluded(a.1)).unwrap_or(Bound::Unbounded);
            Box::new(t.live.range((start, Bound::Unbounded)).map(to_key))
        }
        (SortBy::Id, false) => {
            let end = after.map(|a| Bound::Excluded(a.1)).unwrap_or(Bound::Unbounded);
            Box::new(t.live.range((Bound::Unbounded, end)).rev().map(to_key))
        }
        (s, true) => {
            let set = if s == SortBy::Modified { &t.by_modified } else { &t.by_created };
            let start = match (after, floor) {
                (Some(a), Some(f)) if a >= f => Bound::Excluded(a),
                (_, Some(f)) => Bound::Included(f),
                (Some(a), None) => Bound::Excluded(a),
                (None, None) => Bound::Unbounded,
            };
            Box::new(set.range((start, Bound::Unbounded)).copied())
        }
        (s, false) => {
            let set = if s == SortBy::Modified { &t.by_modified } else { &t.by_created };
            let end = after.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
            Box::new(
                set.range((Bound::Unbounded, end))
                    .rev()
                    .copied()
                    .take_while(move |k| floor.is_none_or(|f| *k >= f)),
            )
        }
    };
    let keep = |key: &(i64, u64)| -> bool {
        match (min_modified, sort) {
            (None, _) | (_, SortBy::Modified) => true,
            (Some(lower), _) => t.live.get(&key.1).is_some_and(|r| r.modified_at >= lower),
        }
    };
    let mut out: Vec<(i64, u64)> = iter.filter(keep).skip(skip).take(take + 1).collect();
    let more = out.len() > take;
    out.truncate(take);
    (out, more)
}

fn parse_fields(m: Module, raw: &str) -> Result<Vec<String>, Response> {
    let names: Vec<String> =
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if names.is_empty() {
        return Err(errors::required_param("fields"));
    }
    if names.len() > FIELDS_MAX {
        return Err(errors::error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "limit exceeded",
            json!({"limit": FIELDS_MAX, "param_name": "fields"}),
        ));
    }
    if let Some(bad) = names.iter().find(|n| !schema::is_readable(m, n)) {
        return Err(errors::error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({"param_name": "fields", "api_name": bad}),
        ));
    }
    Ok(names)
}

fn parse_per_page(p: &Params) -> Result<usize, Response> {
    match p.get("per_page") {
        None => Ok(PER_PAGE_MAX),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=PER_PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(errors::invalid_param("per_page", "invalid data")),
        },
    }
}

fn parse_page(p: &Params) -> Result<usize, Response> {
    match p.get("page") {
        None => Ok(1),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(errors::invalid_param("page", "invalid data")),
        },
    }
}

/// Parses `If-Modified-Since` (ISO 8601 with offset).
pub(crate) fn parse_ims(headers: &HeaderMap) -> Result<Option<Millis>, Response> {
    let Some(v) = headers.get("if-modified-since") else { return Ok(None) };
    v.to_str().ok().and_then(schema::parse_datetime).map(Some).ok_or_else(|| {
        errors::error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({"header_name": "If-Modified-Since"}),
        )
    })
}

fn ok(resp: Response, a: &Admitted, op: &str) -> Response {
    a.finish(resp, op)
}

/// `GET /{module}`: one page of records.
async fn list(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::parse(q.as_deref());
    let heavy = p.get("sort_by").is_some() || p.get("cvid").is_some();
    let (a, m) = match begin(&h, &headers, &module, Access::Read, heavy, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.list", m.api_name());
    match list_page(&h.zoho, &a, m, &p, &headers) {
        Ok(r) | Err(r) => ok(r, &a, &op),
    }
}

fn list_page(
    z: &Zoho,
    a: &Admitted,
    m: Module,
    p: &Params,
    headers: &HeaderMap,
) -> Result<Response, Response> {
    let Some(raw_fields) = p.get("fields") else {
        return Err(errors::required_param("fields"));
    };
    let fields = parse_fields(m, raw_fields)?;
    let per_page = parse_per_page(p)?;
    let sort = match p.get("sort_by") {
        None => SortBy::Id,
        Some(s) => SortBy::parse(s).ok_or_else(|| {
            errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"param_name": "sort_by", "supported_values": ["id", "Created_Time", "Modified_Time"]}),
            )
        })?,
    };
    let asc = match p.get("sort_order") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(errors::invalid_param("sort_order", "invalid data")),
    };
    let ims = parse_ims(headers)?;
    let settings = z.current_settings();
    let now = z.state.clock.now_ms();
    let account = a.account();
    let binding = format!(
        "{}|{raw_fields}|{}|{asc}|{per_page}|{}",
        m.api_name(),
        sort.name(),
        ims.map(|t| t.to_string()).unwrap_or_default()
    );
    let token = p.get("page_token");
    if token.is_some() && p.get("page").is_some() {
        return Err(errors::error(
            StatusCode::BAD_REQUEST,
            "AMBIGUITY_DURING_PROCESSING",
            "ambiguity while processing the request",
            json!({"ambiguity_due_to": [{"param_name": "page"}, {"param_name": "page_token"}]}),
        ));
    }
    let (page, after, served) = match token {
        Some(t) => {
            let state = z.page_tokens.lock().get(t).cloned();
            let Some(state) = state.filter(|s| s.org == account.org_id) else {
                return Err(errors::token_mismatch());
            };
            if now >= state.expires_at {
                return Err(errors::token_expired());
            }
            if state.binding != binding {
                return Err(errors::token_mismatch());
            }
            if state.served >= TOKEN_LIMIT {
                return Err(errors::pagination_limit());
            }
            (state.page, Some(state.position), state.served)
        }
        None => {
            let page = parse_page(p)?;
            if page * per_page > DISCRETE_LIMIT {
                return Err(errors::discrete_pagination_limit());
            }
            (page, None, (page - 1) * per_page)
        }
    };
    let lower = ims.map(|t| ims_lower(t, settings.if_modified_since_inclusive));
    let d = account.data.read();
    let t = d.table(m);
    let skip = if after.is_some() { 0 } else { (page - 1) * per_page };
    let take = per_page.min(TOKEN_LIMIT - served);
    let (keys, more) = scan(t, sort, asc, after, lower, skip, take);
    if keys.is_empty() {
        let nothing_changed = ims.is_some() && page == 1 && token.is_none() && !t.live.is_empty();
        return Ok(if nothing_changed { errors::not_modified() } else { errors::no_content() });
    }
    let sel = Selection::Fields(fields);
    let data: Vec<Value> = keys
        .iter()
        .filter_map(|(_, id)| t.live.get(id))
        .map(|r| view::render(&d, account.tz, m, r, &sel))
        .collect();
    let count = data.len();
    let (next_token, expiry) = if more {
        let token_str = z.token_rng.string(crate::seed::HEX, 64);
        let expires_at = now + settings.page_token_ttl_secs * 1000;
        let state = PageToken {
            org: account.org_id.clone(),
            binding,
            position: keys[keys.len() - 1],
            served: served + count,
            page: page + 1,
            expires_at,
        };
        let mut tokens = z.page_tokens.lock();
        if tokens.len() >= PAGE_TOKENS_KEPT {
            tokens.retain(|_, t| t.expires_at > now);
        }
        tokens.insert(token_str.clone(), state);
        (Value::String(token_str), json!(view::format_time(expires_at, account.tz)))
    } else {
        (Value::Null, Value::Null)
    };
    let body = json!({
        "data": data,
        "info": {
            "per_page": per_page,
            "count": count,
            "page": page,
            "sort_by": sort.name(),
            "sort_order": if asc { "asc" } else { "desc" },
            "more_records": more,
            "next_page_token": next_token,
            "previous_page_token": null,
            "page_token_expiry": expiry,
        },
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /{module}/{id}`.
async fn get_one(
    State(h): State<Host>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Read, false, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.get", m.api_name());
    let p = Params::parse(q.as_deref());
    let sel = match p.get("fields") {
        Some(raw) => match parse_fields(m, raw) {
            Ok(f) => Selection::Fields(f),
            Err(r) => return ok(r, &a, &op),
        },
        None => Selection::All,
    };
    let account = a.account();
    let d = account.data.read();
    let rec = id.parse::<u64>().ok().and_then(|n| d.get(m, n));
    let resp = match rec {
        Some(r) => {
            json_response(StatusCode::OK, &json!({"data": [view::render(&d, account.tz, m, r, &sel)]}))
        }
        None if h.zoho.current_settings().get_unknown_id == "no_content" => errors::no_content(),
        None => errors::invalid_id(&id),
    };
    ok(resp, &a, &op)
}

/// A parsed write body.
struct WriteBody {
    data: Vec<Value>,
    duplicate_check_fields: Option<Vec<String>>,
}

/// Top-level keys a write body may carry besides `data`.
const WRITE_KEYS: &[&str] = &[
    "data",
    "trigger",
    "duplicate_check_fields",
    "apply_feature_execution",
    "skip_feature_execution",
    "lar_id",
    "wf_trigger",
    "process",
];

fn parse_write_body(body: &[u8]) -> Result<WriteBody, Response> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| errors::invalid_body("body is not a valid JSON"))?;
    let Value::Object(o) = v else { return Err(errors::invalid_body("body must be a JSON object")) };
    if let Some(bad) = o.keys().find(|k| !WRITE_KEYS.contains(&k.as_str())) {
        return Err(errors::error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({"api_name": bad, "json_path": format!("$.{bad}")}),
        ));
    }
    let data = match o.get("data") {
        None => {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "MANDATORY_NOT_FOUND",
                "required field not found",
                json!({"api_name": "data", "json_path": "$.data"}),
            ));
        }
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(_) => {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": "data", "json_path": "$.data", "expected_data_type": "jsonarray"}),
            ));
        }
    };
    if data.len() > WRITE_LIMIT {
        return Err(errors::error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "limit exceeded",
            json!({"api_name": "data", "json_path": "$.data", "limit": WRITE_LIMIT}),
        ));
    }
    let duplicate_check_fields = match o.get("duplicate_check_fields") {
        None => None,
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, f) in a.iter().enumerate() {
                let Some(s) = f.as_str() else {
                    return Err(errors::error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid data",
                        json!({"api_name": "duplicate_check_fields", "json_path": format!("$.duplicate_check_fields[{i}]")}),
                    ));
                };
                out.push(s.to_owned());
            }
            Some(out)
        }
        Some(_) => {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": "duplicate_check_fields", "json_path": "$.duplicate_check_fields", "expected_data_type": "jsonarray"}),
            ));
        }
    };
    Ok(WriteBody { data, duplicate_check_fields })
}

/// The number of records a write body carries (for the credit cost), before validation.
fn record_count(body: &[u8]) -> usize {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("data").and_then(Value::as_array).map(Vec::len))
        .unwrap_or(1)
}

fn success(message: &str, details: Value) -> Value {
    json!({"code": "SUCCESS", "details": details, "message": message, "status": "success"})
}

fn record_object(entry: &Value) -> Result<&Map<String, Value>, RecordError> {
    entry.as_object().ok_or_else(|| RecordError {
        code: "INVALID_DATA",
        message: "invalid data".to_owned(),
        api_name: None,
        extra: Map::from_iter([("expected_data_type".to_owned(), json!("jsonobject"))]),
    })
}

fn note_created(z: &Zoho, org: &str, m: Module, d: &AccountData, id: u64, now: Millis) {
    if let Some(r) = d.get(m, id) {
        let text = super::store::searchable_text(m, &r.fields);
        z.state.counters.record_created(
            ProviderKind::Zoho,
            org,
            created_object(m.api_name(), &id.to_string(), now, "api", text),
        );
    }
}

/// `POST /{module}`: insert records (201, or 207 / 400 with per-record errors).
async fn create(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = record_count(&body);
    let (a, m) = match begin(&h, &headers, &module, Access::Create, n > 10, write_cost(n)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.create", m.api_name());
    let wb = match parse_write_body(&body) {
        Ok(b) => b,
        Err(r) => return ok(r, &a, &op),
    };
    ok(insert_records(&h.zoho, &a, m, &wb.data, None), &a, &op)
}

/// Inserts records; `parent` forces every note's `Parent_Id` (the related-notes URL).
fn insert_records(
    z: &Zoho,
    a: &Admitted,
    m: Module,
    data: &[Value],
    parent: Option<(Module, u64)>,
) -> Response {
    let (strict, rules) = (z.current_settings().reject_unknown_fields, z.rules());
    let now = z.state.clock.now_ms();
    let account = a.account();
    let mut d = account.data.write();
    let mut entries = Vec::with_capacity(data.len());
    for (i, entry) in data.iter().enumerate() {
        let result = record_object(entry)
            .and_then(|o| {
                let mut o = o.clone();
                if let Some((pm, pid)) = parent {
                    o.insert(
                        "Parent_Id".into(),
                        json!({"module": {"api_name": pm.api_name()}, "id": pid.to_string()}),
                    );
                }
                schema::normalize_record(m, &o, strict)
            })
            .and_then(|values| d.create(m, &values, By { actor: a.authed.user, now, source: "api" }, rules));
        match result {
            Ok((id, _)) => {
                note_created(z, &account.org_id, m, &d, id, now);
                let details =
                    d.get(m, id).map(|r| view::write_details(&d, account.tz, r)).unwrap_or(Value::Null);
                entries.push(success("record added", details));
            }
            Err(e) => entries.push(e.render(i)),
        }
    }
    errors::write_response(entries, StatusCode::CREATED)
}

/// `PUT /{module}/{id}`.
async fn update_one(
    State(h): State<Host>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Update, false, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.update", m.api_name());
    let wb = match parse_write_body(&body) {
        Ok(b) => b,
        Err(r) => return ok(r, &a, &op),
    };
    if wb.data.len() != 1 {
        let r = errors::error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "limit exceeded",
            json!({"api_name": "data", "json_path": "$.data", "limit": 1}),
        );
        return ok(r, &a, &op);
    }
    let Ok(rid) = id.parse::<u64>() else {
        let r = errors::error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid record id",
            json!({"resource_path_index": 1}),
        );
        return ok(r, &a, &op);
    };
    ok(update_records(&h.zoho, &a, m, &wb.data, Some(rid)), &a, &op)
}

/// `PUT /{module}`: every record carries its `id`.
async fn update_many(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = record_count(&body);
    let (a, m) = match begin(&h, &headers, &module, Access::Update, n > 10, write_cost(n)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.update", m.api_name());
    let wb = match parse_write_body(&body) {
        Ok(b) => b,
        Err(r) => return ok(r, &a, &op),
    };
    ok(update_records(&h.zoho, &a, m, &wb.data, None), &a, &op)
}

fn update_records(z: &Zoho, a: &Admitted, m: Module, data: &[Value], path_id: Option<u64>) -> Response {
    let (strict, rules) = (z.current_settings().reject_unknown_fields, z.rules());
    let now = z.state.clock.now_ms();
    let account = a.account();
    let mut d = account.data.write();
    let mut entries = Vec::with_capacity(data.len());
    for (i, entry) in data.iter().enumerate() {
        let result = record_object(entry).and_then(|o| {
            let id = match path_id {
                Some(id) => id,
                None => match o.get("id") {
                    None => return Err(RecordError::mandatory("id")),
                    Some(v) => schema::id_of(v).ok_or_else(|| RecordError::invalid_id(&v.to_string()))?,
                },
            };
            let values = schema::normalize_record(m, o, strict)?;
            d.update(m, id, &values, By { actor: a.authed.user, now, source: "api" }, rules).map(|_| id)
        });
        match result {
            Ok(id) => {
                let details =
                    d.get(m, id).map(|r| view::write_details(&d, account.tz, r)).unwrap_or(Value::Null);
                entries.push(success("record updated", details));
            }
            Err(e) => entries.push(e.render(i)),
        }
    }
    errors::write_response(entries, StatusCode::OK)
}

/// The fields an upsert may match on in module `m`.
fn can_check_duplicates(m: Module, field: &str) -> bool {
    m.system_duplicate_field() == Some(field) || schema::field(m, field).is_some_and(|d| d.unique)
}

/// `POST /{module}/upsert`: update the record matching a duplicate check field, else insert.
async fn upsert(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = record_count(&body);
    let (a, m) = match begin(&h, &headers, &module, Access::Create, n > 10, write_cost(n)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.upsert", m.api_name());
    let z = &h.zoho;
    let settings = z.current_settings();
    if m == Module::Notes && !settings.notes_upsert {
        let r = errors::error(
            StatusCode::BAD_REQUEST,
            "NOT_SUPPORTED",
            "the upsert operation is not supported for this module",
            json!({"module": "Notes"}),
        );
        return ok(r, &a, &op);
    }
    let wb = match parse_write_body(&body) {
        Ok(b) => b,
        Err(r) => return ok(r, &a, &op),
    };
    let check: Vec<String> = match &wb.duplicate_check_fields {
        Some(list) => {
            if let Some((i, _)) = list.iter().enumerate().find(|(_, f)| !can_check_duplicates(m, f)) {
                let r = errors::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "invalid data",
                    json!({"api_name": "duplicate_check_fields", "json_path": format!("$.duplicate_check_fields[{i}]")}),
                );
                return ok(r, &a, &op);
            }
            list.clone()
        }
        None => m
            .system_duplicate_field()
            .into_iter()
            .chain(schema::fields(m).iter().filter(|d| d.unique).map(|d| d.api_name))
            .map(str::to_owned)
            .collect(),
    };
    let rules = z.rules();
    let now = z.state.clock.now_ms();
    let account = a.account();
    let mut d = account.data.write();
    let mut entries = Vec::with_capacity(wb.data.len());
    for (i, entry) in wb.data.iter().enumerate() {
        let result = record_object(entry)
            .and_then(|o| schema::normalize_record(m, o, settings.reject_unknown_fields))
            .and_then(|values| {
                let matched = check.iter().find_map(|f| {
                    let v = values
                        .iter()
                        .find(|(def, _)| def.api_name == f.as_str())
                        .and_then(|(_, v)| v.clone())?;
                    d.find_by_value(m, f, &v).map(|id| (f.clone(), id))
                });
                match matched {
                    Some((field, id)) => d
                        .update(m, id, &values, By { actor: a.authed.user, now, source: "api" }, rules)
                        .map(|_| (id, Some(field), false)),
                    None => d
                        .create(m, &values, By { actor: a.authed.user, now, source: "api" }, rules)
                        .map(|(id, _)| (id, None, true)),
                }
            });
        match result {
            Ok((id, field, inserted)) => {
                if inserted {
                    note_created(z, &account.org_id, m, &d, id, now);
                }
                let details =
                    d.get(m, id).map(|r| view::write_details(&d, account.tz, r)).unwrap_or(Value::Null);
                let mut e = success(if inserted { "record added" } else { "record updated" }, details);
                e["action"] = json!(if inserted { "insert" } else { "update" });
                e["duplicate_field"] = json!(field);
                entries.push(e);
            }
            Err(e) => entries.push(e.render(i)),
        }
    }
    drop(d);
    ok(errors::write_response(entries, StatusCode::OK), &a, &op)
}

fn delete_records(z: &Zoho, a: &Admitted, m: Module, ids: &[String]) -> Response {
    let now = z.state.clock.now_ms();
    let account = a.account();
    let mut d = account.data.write();
    let mut entries = Vec::with_capacity(ids.len());
    for (i, raw) in ids.iter().enumerate() {
        let result = raw
            .parse::<u64>()
            .map_err(|_| RecordError::invalid_id(raw))
            .and_then(|id| d.delete(m, id, By { actor: a.authed.user, now, source: "api" }).map(|_| id));
        match result {
            Ok(id) => entries.push(success("record deleted", json!({"id": id.to_string()}))),
            Err(e) => entries.push(e.render(i)),
        }
    }
    errors::write_response(entries, StatusCode::OK)
}

/// `DELETE /{module}/{id}`.
async fn delete_one(
    State(h): State<Host>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Delete, false, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.delete", m.api_name());
    ok(delete_records(&h.zoho, &a, m, &[id]), &a, &op)
}

/// `DELETE /{module}?ids=a,b,c` (at most 100).
async fn delete_many(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::parse(q.as_deref());
    let ids: Vec<String> = p
        .get("ids")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let cost = ids.len().max(1).div_ceil(100) as u64;
    let (a, m) = match begin(&h, &headers, &module, Access::Delete, false, cost).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.delete", m.api_name());
    if ids.is_empty() {
        return ok(errors::required_param("ids"), &a, &op);
    }
    if ids.len() > WRITE_LIMIT {
        let r = errors::error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "limit exceeded",
            json!({"param_name": "ids", "limit": WRITE_LIMIT}),
        );
        return ok(r, &a, &op);
    }
    ok(delete_records(&h.zoho, &a, m, &ids), &a, &op)
}

/// `GET /{module}/deleted?type=all|recycle|permanent`: newest deletions first.
async fn deleted(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Read, false, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.deleted", m.api_name());
    let p = Params::parse(q.as_deref());
    let r = (|| -> Result<Response, Response> {
        let kind = p.get("type").unwrap_or("all");
        if !matches!(kind, "all" | "recycle" | "permanent") {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "PATTERN_NOT_MATCHED",
                "Please check whether the input values are correct",
                json!({"param_name": "type"}),
            ));
        }
        let per_page = parse_per_page(&p)?;
        let page = parse_page(&p)?;
        let ims = parse_ims(&headers)?;
        let settings = h.zoho.current_settings();
        let lower = ims.map(|t| ims_lower(t, settings.if_modified_since_inclusive));
        let now = h.zoho.state.clock.now_ms();
        let retention = settings.recycle_retention_days * 86_400_000;
        let account = a.account();
        let d = account.data.read();
        let t = d.table(m);
        let matching = t
            .deleted_by_time
            .iter()
            .rev()
            .take_while(|(at, _)| lower.is_none_or(|l| *at >= l))
            .filter_map(|(_, id)| t.deleted.get(id))
            .filter(|del| {
                let permanent = now - del.deleted_at >= retention;
                match kind {
                    "recycle" => !permanent,
                    "permanent" => permanent,
                    _ => true,
                }
            });
        let mut rows: Vec<Value> = Vec::with_capacity(per_page);
        let mut more = false;
        for del in matching.skip((page - 1) * per_page) {
            if rows.len() == per_page {
                more = true;
                break;
            }
            let permanent = now - del.deleted_at >= retention;
            let brief = |id: u64| {
                d.user(id).map(|u| json!({"name": u.name, "id": u.id.to_string()})).unwrap_or(Value::Null)
            };
            rows.push(json!({
                "deleted_by": if permanent { Value::Null } else { brief(del.deleted_by) },
                "id": del.record.id.to_string(),
                "display_name": if permanent { None } else { del.display_name.clone() },
                "type": if permanent { "permanent" } else { "recycle" },
                "created_by": if permanent { Value::Null } else { brief(del.record.created_by) },
                "deleted_time": view::format_time(del.deleted_at, account.tz),
            }));
        }
        if rows.is_empty() {
            let nothing = ims.is_some() && page == 1 && !t.deleted.is_empty();
            return Ok(if nothing { errors::not_modified() } else { errors::no_content() });
        }
        let count = rows.len();
        Ok(json_response(
            StatusCode::OK,
            &json!({"data": rows, "info": {"per_page": per_page, "count": count, "page": page, "more_records": more}}),
        ))
    })();
    match r {
        Ok(r) | Err(r) => ok(r, &a, &op),
    }
}

fn parent_of(d: &AccountData, m: Module, id: &str) -> Result<u64, Response> {
    if m == Module::Notes {
        return Err(errors::invalid_module());
    }
    id.parse::<u64>().ok().filter(|n| d.get(m, *n).is_some()).ok_or_else(|| errors::invalid_id(id))
}

/// `GET /{module}/{id}/Notes`: the record's notes, oldest first.
async fn related_notes(
    State(h): State<Host>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Read, false, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.notes.list", m.api_name());
    let p = Params::parse(q.as_deref());
    let r = (|| -> Result<Response, Response> {
        let sel = match p.get("fields") {
            Some(raw) => Selection::Fields(parse_fields(Module::Notes, raw)?),
            None => Selection::All,
        };
        let per_page = parse_per_page(&p)?;
        let page = parse_page(&p)?;
        let account = a.account();
        let d = account.data.read();
        let pid = parent_of(&d, m, &id)?;
        let notes = d.table(Module::Notes);
        let mut matching = notes
            .by_created
            .iter()
            .filter_map(|(_, nid)| notes.live.get(nid))
            .filter(|n| n.fields.get("Parent_Id") == Some(&FieldValue::Parent(m, pid)))
            .skip((page - 1) * per_page);
        let rows: Vec<Value> = matching
            .by_ref()
            .take(per_page)
            .map(|n| view::render(&d, account.tz, Module::Notes, n, &sel))
            .collect();
        let more = matching.next().is_some();
        if rows.is_empty() {
            return Ok(errors::no_content());
        }
        let count = rows.len();
        Ok(json_response(
            StatusCode::OK,
            &json!({"data": rows, "info": {
                "page": page, "per_page": per_page, "count": count, "more_records": more,
                "next_page_token": null, "previous_page_token": null, "page_token_expiry": null,
                "sort_by": "Created_Time", "sort_order": "asc",
            }}),
        ))
    })();
    match r {
        Ok(r) | Err(r) => ok(r, &a, &op),
    }
}

/// `POST /{module}/{id}/Notes`: notes whose parent is the record in the path.
async fn create_related_notes(
    State(h): State<Host>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = record_count(&body);
    let Some(m) = Module::parse(&module) else {
        return match h.zoho.authenticate(h.dc, &headers) {
            Ok(_) => errors::invalid_module(),
            Err(r) => r,
        };
    };
    let need = Need {
        scope: super::ScopeNeed::Module(Module::Notes, Access::Create),
        heavy: n > 10,
        cost: write_cost(n),
    };
    let a = match h.zoho.admit(h.dc, &headers, need).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.notes.create", m.api_name());
    let pid = {
        let d = a.account().data.read();
        parent_of(&d, m, &id)
    };
    let pid = match pid {
        Ok(p) => p,
        Err(r) => return ok(r, &a, &op),
    };
    let wb = match parse_write_body(&body) {
        Ok(b) => b,
        Err(r) => return ok(r, &a, &op),
    };
    ok(insert_records(&h.zoho, &a, Module::Notes, &wb.data, Some((m, pid))), &a, &op)
}

impl AccountData {
    /// The live record holding `value` in `field` (a unique field's index, or a scan for system
    /// duplicate fields such as `Account_Name`), lowest id first.
    pub fn find_by_value(&self, m: Module, field: &str, value: &FieldValue) -> Option<u64> {
        let t = self.table(m);
        if schema::field(m, field).is_some_and(|d| d.unique) {
            return t.find_unique(field, value).into_iter().next();
        }
        let key = value.as_text().trim().to_lowercase();
        t.live
            .values()
            .find(|r| r.fields.get(field).is_some_and(|v| v.as_text().trim().to_lowercase() == key))
            .map(|r| r.id)
    }
}
