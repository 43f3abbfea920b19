//! Close REST handlers under `/api/v1` (`crm-providers.md` §5.3–§5.5): leads, contacts,
//! opportunities, tasks, call and note activities, the event log, `me`, statuses, pipelines and
//! custom field definitions.
//!
//! Every handler follows the same shape: [`Close::admit`] (401 / 429 / `RateLimit`), resource (404),
//! query parameters (400 for unknown filters, `_limit` or `_skip` past the resource's maximum),
//! body parsing and validation (400 with `field-errors`), then one locked read or write of the
//! organization's data; the response goes out through [`super::Authed::finish`].
//!
//! Semantics: `PUT` is a patch; creates answer 200 with the object; deletes answer 200 `{}`; lists
//! answer `{"data": [...], "has_more": bool}` (opportunities add the aggregate fields); `_fields`
//! keeps only the named top-level fields.
//!
//! Invariant: offset listings walk an ordered index with a deterministic tie-break on id, so two
//! requests against unchanged data page through it exactly once.

use super::events::{EventFilter, PAGE_MAX, decode_cursor, encode_cursor};
use super::store::{AccountData, Actor, Kind, Record, WriteError, close_time, parse_close_time};
use super::{Authed, Close, errors};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::observe::created_object;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Page size when `_limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;

/// Query parameters, in order.
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

fn resource_kind(resource: &str) -> Option<Kind> {
    match resource {
        "lead" => Some(Kind::Lead),
        "contact" => Some(Kind::Contact),
        "opportunity" => Some(Kind::Opportunity),
        "task" => Some(Kind::Task),
        _ => None,
    }
}

fn activity_kind(kind: &str) -> Option<Kind> {
    match kind {
        "call" => Some(Kind::Call),
        "note" => Some(Kind::Note),
        _ => None,
    }
}

/// The resource name used for `max_limit` / `max_skip`.
fn paging_resource(kind: Kind) -> &'static str {
    match kind {
        Kind::Call | Kind::Note => "activity",
        k => k.name(),
    }
}

fn fields_param(p: &Params) -> Option<Vec<String>> {
    p.get("_fields")
        .map(|f| f.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

/// Keeps only the named top-level fields (Close's `_fields`).
pub(crate) fn project(m: Map<String, Value>, fields: Option<&[String]>) -> Value {
    match fields {
        None => Value::Object(m),
        Some(keep) => Value::Object(m.into_iter().filter(|(k, _)| keep.iter().any(|f| f == k)).collect()),
    }
}

fn actor(authed: &Authed, d: &mut AccountData, method: &str, path: &str) -> Actor {
    Actor {
        user_id: authed.user_id.clone(),
        source: "api".into(),
        request_id: d.fresh_request_id(),
        meta: Some((method.into(), path.into())),
    }
}

fn record_creations(c: &Close, authed: &Authed, d: &AccountData, changes: &[crate::changes::Change]) {
    for ch in changes.iter().filter(|x| x.op == crate::changes::ChangeOp::Create) {
        if let Some(kind) = Kind::parse(&ch.object) {
            c.state.counters.record_created(
                ProviderKind::Close,
                &authed.account.org_id,
                created_object(kind.name(), &ch.id, ch.at_ms, "api", d.searchable_text(kind, &ch.id)),
            );
        }
    }
}

fn write_error(kind: Kind, e: &WriteError) -> Response {
    match e {
        WriteError::NotFound(_) => errors::not_found(kind.title()),
        WriteError::Invalid(f) => errors::field_errors(f),
        WriteError::PlanLimit(m) => errors::plan_limit(m),
    }
}

/// The order of a listing.
#[derive(Clone, Debug)]
enum Order {
    Created(bool),
    Updated(bool),
    Field(String, bool),
}

/// One filter of a listing.
#[derive(Clone, Debug)]
enum Filter {
    Eq(String, Vec<String>),
    Time(String, &'static str, Millis),
}

fn field_text(r: &Record, d: &AccountData, kind: Kind, field: &str) -> Option<String> {
    match field {
        "id" => Some(r.id.clone()),
        "status_type" if kind == Kind::Opportunity => r
            .str("status_id")
            .and_then(|s| d.meta.opp_status(s))
            .and_then(|s| s.status_type)
            .map(str::to_owned),
        "status_label" => {
            let s = r.str("status_id")?;
            d.meta.opp_status(s).or_else(|| d.meta.lead_status(s)).map(|s| s.label.clone())
        }
        _ => match r.fields.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
    }
}

fn field_time(r: &Record, field: &str) -> Option<Millis> {
    match field {
        "date_created" => Some(r.created_at),
        "date_updated" => Some(r.updated_at),
        other => r.str(other).and_then(parse_close_time),
    }
}

impl Filter {
    fn matches(&self, r: &Record, d: &AccountData, kind: Kind) -> bool {
        match self {
            Filter::Eq(f, values) => field_text(r, d, kind, f).is_some_and(|v| values.contains(&v)),
            Filter::Time(f, op, t) => field_time(r, f).is_some_and(|v| match *op {
                "gt" => v > *t,
                "gte" => v >= *t,
                "lt" => v < *t,
                _ => v <= *t,
            }),
        }
    }
}

struct ListSpec {
    filters: Vec<Filter>,
    order: Order,
    limit: usize,
    skip: usize,
    fields: Option<Vec<String>>,
}

fn allowed(kind: Kind) -> (&'static [&'static str], &'static [&'static str], &'static [&'static str]) {
    // (equality filters, date filter fields, _order_by fields)
    match kind {
        Kind::Lead => (&[], &[], &[]),
        Kind::Contact => (&["lead_id"], &[], &[]),
        Kind::Opportunity => (
            &["lead_id", "user_id", "status_id", "status_type", "status_label", "value_period", "contact_id"],
            &["date_created", "date_updated", "date_won"],
            &["date_won", "date_updated", "date_created", "confidence", "value", "user_name"],
        ),
        Kind::Task => (
            &["id", "_type", "lead_id", "is_complete", "assigned_to", "contact_id"],
            &["date", "date_created", "date_updated"],
            &["date", "date_created"],
        ),
        Kind::Call | Kind::Note => {
            (&["lead_id", "user_id", "contact_id"], &["date_created", "activity_at"], &[])
        }
    }
}

fn parse_list(c: &Close, kind: Kind, p: &Params) -> Result<ListSpec, Response> {
    let settings = c.current_settings();
    let res = paging_resource(kind);
    let max_limit = settings.max_limit.get(res).copied().unwrap_or(DEFAULT_LIMIT);
    let max_skip = settings.max_skip.get(res).copied().unwrap_or(10_000);
    let (eq, dates, orders) = allowed(kind);
    let mut spec = ListSpec {
        filters: Vec::new(),
        order: if matches!(kind, Kind::Call | Kind::Note) {
            Order::Created(true)
        } else {
            Order::Created(false)
        },
        limit: DEFAULT_LIMIT.min(max_limit),
        skip: 0,
        fields: fields_param(p),
    };
    for (k, v) in &p.0 {
        match k.as_str() {
            "_fields" => {}
            "_limit" => match v.parse::<usize>() {
                Ok(n) if n <= max_limit => spec.limit = n,
                Ok(_) => {
                    return Err(errors::field_error(
                        "_limit",
                        &format!("Ensure this value is less than or equal to {max_limit}."),
                    ));
                }
                Err(_) => return Err(errors::field_error("_limit", "A valid integer is required.")),
            },
            "_skip" => match v.parse::<usize>() {
                Ok(n) if n <= max_skip => spec.skip = n,
                Ok(_) => {
                    return Err(errors::field_error(
                        "_skip",
                        &format!(
                            "The maximum _skip for this resource is {max_skip}. Narrow the query with date filters instead."
                        ),
                    ));
                }
                Err(_) => return Err(errors::field_error("_skip", "A valid integer is required.")),
            },
            "_order_by" => {
                let (desc, name) = match v.strip_prefix('-') {
                    Some(n) => (true, n),
                    None => (false, v.as_str()),
                };
                if !orders.contains(&name) {
                    return Err(errors::field_error("_order_by", &format!("Cannot order by {v}.")));
                }
                spec.order = match name {
                    "date_created" => Order::Created(desc),
                    "date_updated" => Order::Updated(desc),
                    other => Order::Field(other.to_owned(), desc),
                };
            }
            "view" if kind == Kind::Task => {
                let done = match v.as_str() {
                    "inbox" | "future" => "false",
                    "archive" => "true",
                    _ => return Err(errors::field_error("view", "Must be inbox, future or archive.")),
                };
                spec.filters.push(Filter::Eq("is_complete".into(), vec![done.into()]));
            }
            other => {
                if let Some((field, op)) = other.rsplit_once("__")
                    && dates.contains(&field)
                    && matches!(op, "gt" | "gte" | "lt" | "lte")
                {
                    let Some(t) = parse_close_time(v) else {
                        return Err(errors::field_error(other, "Enter a valid date/time."));
                    };
                    let op: &'static str = match op {
                        "gt" => "gt",
                        "gte" => "gte",
                        "lt" => "lt",
                        _ => "lte",
                    };
                    spec.filters.push(Filter::Time(field.to_owned(), op, t));
                    continue;
                }
                let (field, list) = match other.strip_suffix("__in") {
                    Some(f) => (f, true),
                    None => (other, false),
                };
                if !eq.contains(&field) {
                    return Err(errors::bad_request(&format!("Unknown filter parameter: {other}")));
                }
                let values = if list { v.split(',').map(str::to_owned).collect() } else { vec![v.clone()] };
                spec.filters.push(Filter::Eq(field.to_owned(), values));
            }
        }
    }
    Ok(spec)
}

/// Ids of live records matching `spec`, in order.
fn matching<'a>(d: &'a AccountData, kind: Kind, spec: &ListSpec) -> Vec<&'a Record> {
    let t = d.table(kind);
    let keep = |r: &&Record| spec.filters.iter().all(|f| f.matches(r, d, kind));
    let by = |set: &'a std::collections::BTreeSet<(Millis, String)>, desc: bool| -> Vec<&'a Record> {
        let iter: Box<dyn Iterator<Item = &(Millis, String)>> =
            if desc { Box::new(set.iter().rev()) } else { Box::new(set.iter()) };
        iter.filter_map(|(_, id)| t.live.get(id)).filter(keep).collect()
    };
    match &spec.order {
        Order::Created(desc) => by(&t.by_created, *desc),
        Order::Updated(desc) => {
            // Start at the lower bound of a date_updated__gte/__gt window instead of scanning it.
            let lower = spec.filters.iter().find_map(|f| match f {
                Filter::Time(name, "gte" | "gt", ms) if name == "date_updated" => Some(*ms),
                _ => None,
            });
            match (lower, desc) {
                (Some(l), false) => t
                    .by_updated
                    .range((l, String::new())..)
                    .filter_map(|(_, id)| t.live.get(id))
                    .filter(keep)
                    .collect(),
                _ => by(&t.by_updated, *desc),
            }
        }
        Order::Field(name, desc) => {
            let mut v: Vec<&Record> = t.live.values().filter(keep).collect();
            let key = |r: &Record| -> (f64, String) {
                let num = match name.as_str() {
                    "date_won" | "date" => r.str(name).and_then(parse_close_time).map(|t| t as f64),
                    "user_name" => None,
                    _ => r.fields.get(name.as_str()).and_then(Value::as_f64),
                };
                let text = if name == "user_name" {
                    r.str("user_id").and_then(|u| d.meta.user(u)).map(|u| u.name()).unwrap_or_default()
                } else {
                    String::new()
                };
                (num.unwrap_or(f64::MIN), text)
            };
            v.sort_by(|a, b| {
                let (ka, kb) = (key(a), key(b));
                let o = ka.0.total_cmp(&kb.0).then_with(|| ka.1.cmp(&kb.1));
                let o = if *desc { o.reverse() } else { o };
                o.then_with(|| a.id.cmp(&b.id))
            });
            v
        }
    }
}

fn aggregates(d: &AccountData, records: &[&Record]) -> Map<String, Value> {
    let mut by_period: BTreeMap<String, i64> = BTreeMap::new();
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        let period = r.str("value_period").unwrap_or("one_time");
        *by_period.entry(period.to_owned()).or_default() += 1;
        let v = r.fields.get("value").and_then(Value::as_i64).unwrap_or(0);
        let conf = r.fields.get("confidence").and_then(Value::as_i64).unwrap_or(0);
        let key = match period {
            "monthly" => "monthly",
            "annual" => "annual",
            _ => "one_time",
        };
        *totals.entry(key).or_default() += v;
        *expected.entry(key).or_default() += v * conf / 100;
    }
    let _ = d;
    let annualized = |m: &BTreeMap<&str, i64>| {
        m.get("one_time").copied().unwrap_or(0)
            + m.get("annual").copied().unwrap_or(0)
            + m.get("monthly").copied().unwrap_or(0) * 12
    };
    let mut m = Map::new();
    m.insert("total_results".into(), json!(records.len()));
    m.insert("count_by_value_period".into(), json!(by_period));
    for p in ["one_time", "monthly", "annual"] {
        m.insert(format!("total_value_{p}"), json!(totals.get(p).copied().unwrap_or(0)));
        m.insert(format!("expected_value_{p}"), json!(expected.get(p).copied().unwrap_or(0)));
    }
    m.insert("total_value_annualized".into(), json!(annualized(&totals)));
    m.insert("expected_value_annualized".into(), json!(annualized(&expected)));
    m
}

fn list_kind(c: &Close, kind: Kind, headers: &HeaderMap, uri: &Uri) -> Response {
    let authed = match c.admit(headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.list", kind.name());
    let p = Params::parse(uri.query());
    let spec = match parse_list(c, kind, &p) {
        Ok(s) => s,
        Err(r) => return authed.finish(r, &op),
    };
    let d = authed.account.data.read();
    let all = matching(&d, kind, &spec);
    let page: Vec<Value> = all
        .iter()
        .skip(spec.skip)
        .take(spec.limit)
        .map(|r| project(d.render(kind, r), spec.fields.as_deref()))
        .collect();
    let has_more = all.len() > spec.skip + page.len();
    let mut body = Map::new();
    if kind == Kind::Opportunity {
        body = aggregates(&d, &all);
    }
    body.insert("has_more".into(), json!(has_more));
    body.insert("data".into(), Value::Array(page));
    authed.finish(errors::ok(&Value::Object(body)), &op)
}

fn get_kind(c: &Close, kind: Kind, id: &str, headers: &HeaderMap, uri: &Uri) -> Response {
    let authed = match c.admit(headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.get", kind.name());
    let p = Params::parse(uri.query());
    let d = authed.account.data.read();
    let resp = match d.get(kind, id) {
        Some(r) => errors::ok(&project(d.render(kind, r), fields_param(&p).as_deref())),
        None => errors::not_found(kind.title()),
    };
    authed.finish(resp, &op)
}

fn create_kind(c: &Close, kind: Kind, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Response {
    let authed = match c.admit(headers, "POST", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.create", kind.name());
    let body = match errors::parse_object(body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, &op),
    };
    let now = c.state.clock.now_ms();
    let mut d = authed.account.data.write();
    let fields = match d.validate(kind, &body, None) {
        Ok(f) => f,
        Err(e) => return authed.finish(errors::field_errors(&e), &op),
    };
    let actor = actor(&authed, &mut d, "POST", uri.path());
    let resp = match d.create(kind, fields, now, &actor) {
        Ok((id, changes)) => {
            record_creations(c, &authed, &d, &changes);
            match d.get(kind, &id) {
                Some(r) => errors::ok(&Value::Object(d.render(kind, r))),
                None => errors::not_found(kind.title()),
            }
        }
        Err(e) => write_error(kind, &e),
    };
    authed.finish(resp, &op)
}

fn update_kind(c: &Close, kind: Kind, id: &str, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Response {
    let authed = match c.admit(headers, "PUT", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.update", kind.name());
    let body = match errors::parse_object(body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, &op),
    };
    let now = c.state.clock.now_ms();
    let mut d = authed.account.data.write();
    let Some(existing) = d.get(kind, id).cloned() else {
        return authed.finish(errors::not_found(kind.title()), &op);
    };
    let fields = match d.validate(kind, &body, Some(&existing)) {
        Ok(f) => f,
        Err(e) => return authed.finish(errors::field_errors(&e), &op),
    };
    let actor = actor(&authed, &mut d, "PUT", uri.path());
    let resp = match d.update(kind, id, fields, now, &actor) {
        Ok(_) => match d.get(kind, id) {
            Some(r) => errors::ok(&Value::Object(d.render(kind, r))),
            None => errors::not_found(kind.title()),
        },
        Err(e) => write_error(kind, &e),
    };
    authed.finish(resp, &op)
}

fn remove_kind(c: &Close, kind: Kind, id: &str, headers: &HeaderMap, uri: &Uri) -> Response {
    let authed = match c.admit(headers, "DELETE", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = format!("{}.delete", kind.name());
    let now = c.state.clock.now_ms();
    let mut d = authed.account.data.write();
    let actor = actor(&authed, &mut d, "DELETE", uri.path());
    let resp = match d.delete(kind, id, now, &actor) {
        Ok(_) => errors::ok(&json!({})),
        Err(e) => write_error(kind, &e),
    };
    authed.finish(resp, &op)
}

/// `GET /api/v1/{resource}/`.
pub(crate) async fn list(
    State(c): State<Arc<Close>>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match resource_kind(&resource) {
        Some(k) => list_kind(&c, k, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `POST /api/v1/{resource}/`.
pub(crate) async fn create(
    State(c): State<Arc<Close>>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    match resource_kind(&resource) {
        Some(k) => create_kind(&c, k, &headers, &uri, &body),
        None => fallback(State(c)).await,
    }
}

/// `GET /api/v1/{resource}/{id}/`.
pub(crate) async fn get_one(
    State(c): State<Arc<Close>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match resource_kind(&resource) {
        Some(k) => get_kind(&c, k, &id, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `PUT /api/v1/{resource}/{id}/` (a patch).
pub(crate) async fn update(
    State(c): State<Arc<Close>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    match resource_kind(&resource) {
        Some(k) => update_kind(&c, k, &id, &headers, &uri, &body),
        None => fallback(State(c)).await,
    }
}

/// `DELETE /api/v1/{resource}/{id}/`.
pub(crate) async fn remove(
    State(c): State<Arc<Close>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match resource_kind(&resource) {
        Some(k) => remove_kind(&c, k, &id, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `GET /api/v1/activity/{call|note}/`.
pub(crate) async fn list_activity(
    State(c): State<Arc<Close>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match activity_kind(&kind) {
        Some(k) => list_kind(&c, k, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `POST /api/v1/activity/{call|note}/`.
pub(crate) async fn create_activity(
    State(c): State<Arc<Close>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    match activity_kind(&kind) {
        Some(k) => create_kind(&c, k, &headers, &uri, &body),
        None => fallback(State(c)).await,
    }
}

/// `GET /api/v1/activity/{call|note}/{id}/`.
pub(crate) async fn get_activity(
    State(c): State<Arc<Close>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match activity_kind(&kind) {
        Some(k) => get_kind(&c, k, &id, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `PUT /api/v1/activity/{call|note}/{id}/`.
pub(crate) async fn update_activity(
    State(c): State<Arc<Close>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    match activity_kind(&kind) {
        Some(k) => update_kind(&c, k, &id, &headers, &uri, &body),
        None => fallback(State(c)).await,
    }
}

/// `DELETE /api/v1/activity/{call|note}/{id}/`.
pub(crate) async fn remove_activity(
    State(c): State<Arc<Close>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match activity_kind(&kind) {
        Some(k) => remove_kind(&c, k, &id, &headers, &uri),
        None => fallback(State(c)).await,
    }
}

/// `GET /api/v1/me/`.
pub(crate) async fn me(State(c): State<Arc<Close>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let d = authed.account.data.read();
    let user = d.meta.user(&authed.user_id).unwrap_or(&d.meta.users[0]);
    let body = json!({
        "id": user.id,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "organizations": [{"id": d.meta.org_id, "name": d.meta.org_name}],
        "date_created": close_time(c.state.config.clock_start_ms - 365 * 86_400_000),
    });
    authed.finish(errors::ok(&body), "me.get")
}

/// `GET /api/v1/status/{lead|opportunity}/`.
pub(crate) async fn statuses(
    State(c): State<Arc<Close>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let d = authed.account.data.read();
    let data: Vec<Value> = match kind.as_str() {
        "opportunity" => d
            .meta
            .opp_statuses
            .iter()
            .map(|s| json!({"id": s.id, "label": s.label, "type": s.status_type, "pipeline_id": d.meta.pipeline.0, "organization_id": d.meta.org_id}))
            .collect(),
        "lead" => d.meta.lead_statuses.iter().map(|s| json!({"id": s.id, "label": s.label, "organization_id": d.meta.org_id})).collect(),
        _ => return authed.finish(errors::no_route(), "status.list"),
    };
    authed.finish(errors::ok(&json!({"data": data, "has_more": false})), "status.list")
}

/// `GET /api/v1/pipeline/`.
pub(crate) async fn pipelines(State(c): State<Arc<Close>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let d = authed.account.data.read();
    let statuses: Vec<Value> = d
        .meta
        .opp_statuses
        .iter()
        .map(|s| json!({"id": s.id, "label": s.label, "type": s.status_type}))
        .collect();
    let body = json!({"data": [{"id": d.meta.pipeline.0, "name": d.meta.pipeline.1, "organization_id": d.meta.org_id, "statuses": statuses}], "has_more": false});
    authed.finish(errors::ok(&body), "pipeline.list")
}

/// `GET /api/v1/custom_field/{lead|contact|opportunity}/`.
pub(crate) async fn custom_fields(
    State(c): State<Arc<Close>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "custom_field.list";
    let Some(k) = resource_kind(&kind).filter(|k| Kind::SYNCED.contains(k)) else {
        return authed.finish(errors::no_route(), op);
    };
    let d = authed.account.data.read();
    let data: Vec<Value> = d
        .meta
        .custom_fields
        .iter()
        .filter(|cf| cf.kind == k)
        .map(|cf| {
            json!({"id": cf.id, "name": cf.name, "type": cf.field_type, "accepts_multiple_values": false,
                   "choices": cf.choices, "description": null, "organization_id": d.meta.org_id})
        })
        .collect();
    authed.finish(errors::ok(&json!({"data": data, "has_more": false})), op)
}

/// `GET /api/v1/event/`: newest first, `_cursor` / `_limit` (capped at 50), supported filter
/// combinations only, 30-day retention.
pub(crate) async fn events(State(c): State<Arc<Close>>, headers: HeaderMap, uri: Uri) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "event.list";
    let p = Params::parse(uri.query());
    let mut f = EventFilter::default();
    let mut cursor = None;
    let mut limit = PAGE_MAX;
    for (k, v) in &p.0 {
        match k.as_str() {
            "object_type" => f.object_type = Some(v.clone()),
            "object_id" => f.object_id = Some(v.clone()),
            "action" => f.action = Some(v.clone()),
            "lead_id" => f.lead_id = Some(v.clone()),
            "user_id" => f.user_id = Some(v.clone()),
            "request_id" => f.request_id = Some(v.clone()),
            "_cursor" => match decode_cursor(v) {
                Some(c) => cursor = Some(c),
                None => return authed.finish(errors::field_error("_cursor", "Invalid cursor."), op),
            },
            "_limit" => match v.parse::<usize>() {
                Ok(n) => limit = n.min(PAGE_MAX),
                Err(_) => {
                    return authed.finish(errors::field_error("_limit", "A valid integer is required."), op);
                }
            },
            "_skip" => {
                return authed.finish(
                    errors::field_error("_skip", "The event log does not support _skip; use _cursor."),
                    op,
                );
            }
            other => {
                let Some(op_name) = other.strip_prefix("date_updated__") else {
                    return authed
                        .finish(errors::bad_request(&format!("Unknown filter parameter: {other}")), op);
                };
                let Some(t) = parse_close_time(v) else {
                    return authed.finish(errors::field_error(other, "Enter a valid date/time."), op);
                };
                match op_name {
                    "gt" => f.after = Some((t, false)),
                    "gte" => f.after = Some((t, true)),
                    "lt" => f.before = Some((t, false)),
                    "lte" => f.before = Some((t, true)),
                    _ => {
                        return authed
                            .finish(errors::bad_request(&format!("Unknown filter parameter: {other}")), op);
                    }
                }
            }
        }
    }
    if !f.supported() {
        return authed.finish(
            errors::bad_request("Unsupported filter combination. See the Event Log documentation for the supported combinations."),
            op,
        );
    }
    let now = c.state.clock.now_ms();
    let mut d = authed.account.data.write();
    d.events.prune(now);
    let page = d.events.list(&f, cursor, limit);
    let body = json!({
        "data": page.data,
        "cursor_next": page.next.map(encode_cursor),
        "cursor_previous": page.previous.map(encode_cursor),
    });
    authed.finish(errors::ok(&body), op)
}

/// `GET /api/v1/event/{id}/`.
pub(crate) async fn event(
    State(c): State<Arc<Close>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let authed = match c.admit(&headers, "GET", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = c.state.clock.now_ms();
    let mut d = authed.account.data.write();
    d.events.prune(now);
    let resp = match d.events.by_id(&id) {
        Some(e) => errors::ok(&e),
        None => errors::not_found("Event"),
    };
    authed.finish(resp, "event.get")
}

/// Unknown routes: 404 `{"error": "Not found"}`.
pub(crate) async fn fallback(State(_c): State<Arc<Close>>) -> Response {
    errors::no_route()
}
