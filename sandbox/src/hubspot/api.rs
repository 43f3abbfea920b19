//! HubSpot object endpoints: list, get, create, update, archive, batch, plus pipelines, owners and
//! property definitions (`crm-providers.md` §1.3–§1.5).
//!
//! Every handler follows the same shape: [`HubSpot::admit`] (401 / 429 / headers), object type (400),
//! scope (403), body parsing (400 `Invalid input JSON`), property validation (400
//! `VALIDATION_ERROR`), then one locked read or write of the account's data, and the response goes out
//! through [`super::Authed::finish`] so it carries the rate-limit headers and its operation name.
//!
//! Invariant: list pages walk the live table in id order from the `after` cursor, so a full listing
//! returns every live record exactly once whatever happens between pages (records created during the
//! scan have higher ids and appear on later pages; archived ones simply stop appearing).

use super::errors::{self, parse_json};
use super::schema::{self, ObjectType};
use super::store::{AccountData, AssocInput, WriteError};
use super::view::{ObjView, PropSel};
use super::{Authed, HubSpot};
use crate::clock::format_ms;
use crate::observe::created_object;
use crate::provider::Provider;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

/// Most inputs a batch call accepts.
pub const BATCH_LIMIT: usize = 100;
/// Most results a list page returns.
pub const LIST_LIMIT_MAX: usize = 100;
/// Page size when `limit` is absent.
pub const LIST_LIMIT_DEFAULT: usize = 10;

/// Query parameters, with repeated keys and comma lists.
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

    pub(crate) fn list(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(a, _)| a == k)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn bool(&self, k: &str) -> Result<bool, String> {
        match self.get(k) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(format!("{k} must be true or false, got {v:?}")),
        }
    }
}

/// A JSON string or number (ids and `after` come as either).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StrOrNum {
    Str(String),
    Num(serde_json::Number),
}

impl StrOrNum {
    pub(crate) fn text(&self) -> String {
        match self {
            StrOrNum::Str(s) => s.clone(),
            StrOrNum::Num(n) => n.to_string(),
        }
    }
}

/// Authenticates, resolves the object type and checks the scope.
fn begin(
    hs: &HubSpot,
    headers: &HeaderMap,
    object: &str,
    write: bool,
    verb: &str,
) -> Result<(Authed, ObjectType, String), Response> {
    let authed = hs.admit(headers, None)?;
    let Some(obj) = ObjectType::parse(object) else {
        let op = format!("objects.{verb}");
        return Err(authed.finish(
            errors::validation(&hs.state, &format!("Unable to infer object type from: {object}")),
            &op,
        ));
    };
    let op = format!("{}.{verb}", obj.name());
    let scope = if write { obj.write_scope() } else { obj.read_scope() };
    if !authed.has_scope(scope) {
        return Err(authed.finish(errors::missing_scope(&hs.state, scope), &op));
    }
    Ok((authed, obj, op))
}

fn ok_json<T: Serialize>(hs: &HubSpot, status: StatusCode, body: &T) -> Response {
    errors::json_bytes(&hs.state, status, serde_json::to_vec(body).unwrap_or_default())
}

fn write_error(hs: &HubSpot, obj: ObjectType, e: &WriteError) -> Response {
    let st = &hs.state;
    match e {
        WriteError::NotFound(_) => errors::not_found(st),
        WriteError::Conflict { prop, value, existing } => {
            errors::conflict(st, obj.title(), prop, value, *existing)
        }
        WriteError::Invalid(errs) => errors::invalid_props(st, errs),
        WriteError::Association(msg) => errors::validation(st, msg),
    }
}

/// One entry of a 207 `errors[]` array.
fn batch_error(obj: ObjectType, e: &WriteError, trace: Option<&str>, id: Option<&str>) -> Value {
    let (category, message, details) = match e {
        WriteError::NotFound(_) => (
            "OBJECT_NOT_FOUND",
            format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                obj.upper()
            ),
            Value::Array(Vec::new()),
        ),
        WriteError::Conflict { prop, value, existing } => {
            let msg = if *prop == "email" {
                format!("{} already exists. Existing ID: {existing}", obj.title())
            } else {
                format!(
                    "{} already exists with value '{value}' for unique property {prop}. Existing ID: {existing}",
                    obj.title()
                )
            };
            ("CONFLICT", msg, Value::Array(Vec::new()))
        }
        WriteError::Invalid(errs) => {
            ("VALIDATION_ERROR", errors::prop_error_message(errs), errors::prop_error_details(errs))
        }
        WriteError::Association(msg) => ("VALIDATION_ERROR", msg.clone(), Value::Array(Vec::new())),
    };
    let mut context = serde_json::Map::new();
    if let Some(t) = trace {
        context.insert("objectWriteTraceId".into(), json!([t]));
    }
    if let Some(i) = id {
        context.insert("ids".into(), json!([i]));
    }
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": details,
        "links": {},
    })
}

fn parse_assoc_types(list: &[String]) -> Result<Vec<ObjectType>, String> {
    let mut out = Vec::new();
    for n in list {
        let t = ObjectType::parse(n).ok_or_else(|| format!("Unable to infer object type from: {n}"))?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// `GET /crm/v3/objects/{object}`: one page of live (or, with `archived=true`, archived) records.
pub(crate) async fn list(
    State(hs): State<Arc<HubSpot>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, false, "list") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let st = &hs.state;
    let params = Params::parse(uri.query());
    let limit = match params.get("limit").map(str::parse::<i64>) {
        None => LIST_LIMIT_DEFAULT,
        Some(Ok(n)) if n >= 1 => (n as usize).min(LIST_LIMIT_MAX),
        Some(_) => {
            return authed.finish(errors::validation(st, "limit must be a positive integer"), &op);
        }
    };
    let after: u64 = match params.get("after") {
        None | Some("") => 0,
        Some(a) => match a.parse() {
            Ok(n) => n,
            Err(_) => {
                return authed.finish(errors::validation(st, &format!("Invalid after value: {a}")), &op);
            }
        },
    };
    let archived = match params.bool("archived") {
        Ok(b) => b,
        Err(m) => return authed.finish(errors::validation(st, &m), &op),
    };
    let assoc_types = match parse_assoc_types(&params.list("associations")) {
        Ok(t) => t,
        Err(m) => return authed.finish(errors::validation(st, &m), &op),
    };
    let sel = PropSel::for_request(obj, &params.list("properties"));
    let body = {
        let data = authed.account.data.read();
        let t = data.table(obj);
        let map = if archived { &t.archived } else { &t.active };
        let mut iter = map.range(after..);
        let mut results = Vec::with_capacity(limit);
        for (_, rec) in iter.by_ref().take(limit) {
            results.push(ObjView::new(obj, rec, &sel).with_assoc(&data, &assoc_types));
        }
        let next = iter.next().map(|(id, _)| *id);
        let paging = next.map(|n| {
            let rest: Vec<String> = params
                .0
                .iter()
                .filter(|(k, _)| k != "after")
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            let mut link = format!("{}{}?", hs.api_base, uri.path());
            for r in &rest {
                link.push_str(r);
                link.push('&');
            }
            link.push_str(&format!("after={n}"));
            json!({"next": {"after": n.to_string(), "link": link}})
        });
        serde_json::to_vec(&ListPage { results, paging }).unwrap_or_default()
    };
    authed.finish(errors::json_bytes(st, StatusCode::OK, body), &op)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Serialize)]
struct ListPage<'a> {
    results: Vec<ObjView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paging: Option<Value>,
}

/// Finds a record by path id, honouring `idProperty` and `archived`.
fn lookup(
    data: &AccountData,
    obj: ObjectType,
    id: &str,
    id_prop: Option<&str>,
    archived: bool,
) -> Option<u64> {
    match id_prop.filter(|p| *p != "hs_object_id") {
        None => {
            let n: u64 = id.parse().ok()?;
            let t = data.table(obj);
            let found = if archived { t.archived.contains_key(&n) } else { t.active.contains_key(&n) };
            found.then_some(n)
        }
        Some(prop) => {
            let t = data.table(obj);
            if archived {
                let key = id.trim().to_lowercase();
                t.archived
                    .values()
                    .find(|r| r.props.get(prop).is_some_and(|v| v.trim().to_lowercase() == key))
                    .map(|r| r.id)
            } else {
                t.find_unique(prop, id)
            }
        }
    }
}

fn check_id_property(hs: &HubSpot, obj: ObjectType, p: Option<&str>) -> Result<(), Response> {
    match p {
        Some(name) if !schema::is_id_property(obj, name) => Err(errors::validation(
            &hs.state,
            &format!("{name} is not a unique property of {} and cannot be used as idProperty", obj.name()),
        )),
        _ => Ok(()),
    }
}

/// `GET /crm/v3/objects/{object}/{id}` (optionally `?idProperty=email`).
pub(crate) async fn get_one(
    State(hs): State<Arc<HubSpot>>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, false, "get") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let st = &hs.state;
    let params = Params::parse(q.as_deref());
    let id_prop = params.get("idProperty");
    if let Err(r) = check_id_property(&hs, obj, id_prop) {
        return authed.finish(r, &op);
    }
    let archived = match params.bool("archived") {
        Ok(b) => b,
        Err(m) => return authed.finish(errors::validation(st, &m), &op),
    };
    let assoc_types = match parse_assoc_types(&params.list("associations")) {
        Ok(t) => t,
        Err(m) => return authed.finish(errors::validation(st, &m), &op),
    };
    let sel = PropSel::for_request(obj, &params.list("properties"));
    let data = authed.account.data.read();
    let resp = match lookup(&data, obj, &id, id_prop, archived).and_then(|n| data.any_record(obj, n)) {
        Some(rec) => {
            ok_json(&hs, StatusCode::OK, &ObjView::new(obj, rec, &sel).with_assoc(&data, &assoc_types))
        }
        None => errors::not_found(st),
    };
    authed.finish(resp, &op)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssocTo {
    id: StrOrNum,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AssocSpec {
    association_category: String,
    association_type_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssocJson {
    to: AssocTo,
    types: Vec<AssocSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateInput {
    properties: serde_json::Map<String, Value>,
    #[serde(default)]
    associations: Vec<AssocJson>,
    #[serde(default)]
    object_write_trace_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateInput {
    properties: serde_json::Map<String, Value>,
}

fn convert_assocs(obj: ObjectType, list: &[AssocJson]) -> Result<Vec<AssocInput>, WriteError> {
    let mut out = Vec::new();
    for a in list {
        let to_id: u64 = a.to.id.text().parse().map_err(|_| {
            WriteError::Association(format!("association target id {} is not a valid id", a.to.id.text()))
        })?;
        if a.types.is_empty() {
            return Err(WriteError::Association("association types must not be empty".to_owned()));
        }
        for t in &a.types {
            if !matches!(
                t.association_category.as_str(),
                "HUBSPOT_DEFINED" | "USER_DEFINED" | "INTEGRATOR_DEFINED"
            ) {
                return Err(WriteError::Association(format!(
                    "associationCategory {} is not one of HUBSPOT_DEFINED, USER_DEFINED, INTEGRATOR_DEFINED",
                    t.association_category
                )));
            }
            let type_id = u16::try_from(t.association_type_id).ok();
            let Some(def) = type_id.and_then(schema::assoc_type) else {
                return Err(WriteError::Association(format!(
                    "association type id {} doesn't exist for {} (category {})",
                    t.association_type_id,
                    obj.name(),
                    t.association_category
                )));
            };
            if t.association_category != "HUBSPOT_DEFINED" {
                return Err(WriteError::Association(format!(
                    "association type id {} is HUBSPOT_DEFINED, not {}",
                    def.id, t.association_category
                )));
            }
            out.push((def.to, to_id, def.id));
        }
    }
    Ok(out)
}

/// Normalised property values and associations of one create input.
type Validated = (Vec<(&'static schema::PropDef, String)>, Vec<AssocInput>);

fn validate_create(obj: ObjectType, input: &CreateInput) -> Result<Validated, WriteError> {
    let values = schema::normalize(obj, &input.properties).map_err(WriteError::Invalid)?;
    let assocs = convert_assocs(obj, &input.associations)?;
    Ok((values, assocs))
}

fn record_creation(hs: &HubSpot, authed: &Authed, data: &AccountData, obj: ObjectType, id: u64) {
    if let Some(r) = data.table(obj).active.get(&id) {
        hs.state.counters.record_created(
            hs.kind(),
            &authed.account.hub_id.to_string(),
            created_object(
                obj.name(),
                &id.to_string(),
                r.created_at,
                "api",
                super::store::searchable_text(obj, &r.props),
            ),
        );
    }
}

/// `POST /crm/v3/objects/{object}`: 201 with the created object.
pub(crate) async fn create(
    State(hs): State<Arc<HubSpot>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, true, "create") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let input: CreateInput = match parse_json(&hs.state, &body) {
        Ok(i) => i,
        Err(r) => return authed.finish(r, &op),
    };
    let (values, assocs) = match validate_create(obj, &input) {
        Ok(v) => v,
        Err(e) => return authed.finish(write_error(&hs, obj, &e), &op),
    };
    let now = hs.state.clock.now_ms();
    let mut data = authed.account.data.write();
    let resp = match data.create(obj, values, &assocs, now, "api") {
        Ok((id, _)) => {
            record_creation(&hs, &authed, &data, obj, id);
            match data.table(obj).active.get(&id) {
                Some(rec) => ok_json(&hs, StatusCode::CREATED, &ObjView::new(obj, rec, &PropSel::AllSet)),
                None => errors::not_found(&hs.state),
            }
        }
        Err(e) => write_error(&hs, obj, &e),
    };
    authed.finish(resp, &op)
}

/// `PATCH /crm/v3/objects/{object}/{id}`: 200 with the updated object.
pub(crate) async fn update(
    State(hs): State<Arc<HubSpot>>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, true, "update") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let params = Params::parse(q.as_deref());
    let id_prop = params.get("idProperty");
    if let Err(r) = check_id_property(&hs, obj, id_prop) {
        return authed.finish(r, &op);
    }
    let input: UpdateInput = match parse_json(&hs.state, &body) {
        Ok(i) => i,
        Err(r) => return authed.finish(r, &op),
    };
    let values = match schema::normalize(obj, &input.properties) {
        Ok(v) => v,
        Err(e) => return authed.finish(errors::invalid_props(&hs.state, &e), &op),
    };
    let now = hs.state.clock.now_ms();
    let mut data = authed.account.data.write();
    let Some(rid) = lookup(&data, obj, &id, id_prop, false) else {
        return authed.finish(errors::not_found(&hs.state), &op);
    };
    let resp = match data.update(obj, rid, values, now, "api") {
        Ok(_) => match data.table(obj).active.get(&rid) {
            Some(rec) => ok_json(&hs, StatusCode::OK, &ObjView::new(obj, rec, &PropSel::AllSet)),
            None => errors::not_found(&hs.state),
        },
        Err(e) => write_error(&hs, obj, &e),
    };
    authed.finish(resp, &op)
}

/// `DELETE /crm/v3/objects/{object}/{id}`: archives; 204 whether or not the record existed.
pub(crate) async fn archive(
    State(hs): State<Arc<HubSpot>>,
    Path((object, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, true, "archive") {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Ok(n) = id.parse::<u64>() {
        let now = hs.state.clock.now_ms();
        let _ = authed.account.data.write().archive(obj, n, now, "api");
    }
    authed.finish(StatusCode::NO_CONTENT.into_response(), &op)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdInput {
    id: StrOrNum,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BatchRead {
    inputs: Vec<IdInput>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    properties_with_history: Vec<String>,
    #[serde(default)]
    id_property: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCreate {
    inputs: Vec<CreateInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateItem {
    id: StrOrNum,
    properties: serde_json::Map<String, Value>,
    #[serde(default)]
    id_property: Option<String>,
    #[serde(default)]
    object_write_trace_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchUpdate {
    inputs: Vec<UpdateItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchArchive {
    inputs: Vec<IdInput>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchResponse<'a> {
    status: &'static str,
    results: Vec<ObjView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_errors: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<Value>,
    started_at: String,
    completed_at: String,
}

/// `POST /crm/v3/objects/{object}/batch/{read|create|update|upsert|archive}`.
pub(crate) async fn batch(
    State(hs): State<Arc<HubSpot>>,
    Path((object, action)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let write = action != "read";
    let verb = format!("batch.{action}");
    let (authed, obj, op) = match begin(&hs, &headers, &object, write, &verb) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let resp = match action.as_str() {
        "read" => batch_read(&hs, &authed, obj, q.as_deref(), &body),
        "create" => batch_create(&hs, &authed, obj, &body),
        "update" => batch_update(&hs, &authed, obj, &body, false),
        "upsert" => batch_update(&hs, &authed, obj, &body, true),
        "archive" => batch_archive(&hs, &authed, obj, &body),
        _ => errors::not_found(&hs.state),
    };
    authed.finish(resp, &op)
}

fn too_many(hs: &HubSpot, n: usize) -> Option<Response> {
    (n > BATCH_LIMIT).then(|| {
        errors::validation(&hs.state, &format!("Batch requests are limited to {BATCH_LIMIT} inputs; got {n}"))
    })
}

fn batch_read(hs: &HubSpot, authed: &Authed, obj: ObjectType, q: Option<&str>, body: &[u8]) -> Response {
    let st = &hs.state;
    let req: BatchRead = match parse_json(st, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = too_many(hs, req.inputs.len()) {
        return r;
    }
    let params = Params::parse(q);
    let archived = match params.bool("archived") {
        Ok(b) => b,
        Err(m) => return errors::validation(st, &m),
    };
    if let Err(r) = check_id_property(hs, obj, req.id_property.as_deref()) {
        return r;
    }
    let _ = &req.properties_with_history;
    let sel = PropSel::for_request(obj, &req.properties);
    let started = format_ms(st.clock.now_ms());
    let data = authed.account.data.read();
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &req.inputs {
        let id = input.id.text();
        match lookup(&data, obj, &id, req.id_property.as_deref(), archived)
            .and_then(|n| data.any_record(obj, n))
        {
            Some(rec) => results.push(ObjView::new(obj, rec, &sel)),
            None => missing.push(id),
        }
    }
    let mut errs = Vec::new();
    if !missing.is_empty() {
        errs.push(json!({
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                obj.upper()
            ),
            "context": {"ids": missing},
            "errors": [],
            "links": {},
        }));
    }
    batch_body(hs, results, errs, StatusCode::OK, started)
}

fn batch_body(
    hs: &HubSpot,
    results: Vec<ObjView<'_>>,
    errs: Vec<Value>,
    ok_status: StatusCode,
    started: String,
) -> Response {
    let status = if errs.is_empty() { ok_status } else { StatusCode::MULTI_STATUS };
    let body = BatchResponse {
        status: "COMPLETE",
        results,
        num_errors: (!errs.is_empty()).then_some(errs.len()),
        errors: errs,
        started_at: started,
        completed_at: format_ms(hs.state.clock.now_ms()),
    };
    ok_json(hs, status, &body)
}

fn batch_create(hs: &HubSpot, authed: &Authed, obj: ObjectType, body: &[u8]) -> Response {
    let st = &hs.state;
    let req: BatchCreate = match parse_json(st, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = too_many(hs, req.inputs.len()) {
        return r;
    }
    let started = format_ms(st.clock.now_ms());
    // Multi-status is opt-in: only when every input carries an objectWriteTraceId do partial failures
    // come back as 207; otherwise the batch is all-or-nothing.
    let multi_status = !req.inputs.is_empty() && req.inputs.iter().all(|i| i.object_write_trace_id.is_some());
    let now = st.clock.now_ms();
    let mut data = authed.account.data.write();
    if !multi_status {
        let mut validated = Vec::with_capacity(req.inputs.len());
        for input in &req.inputs {
            match validate_create(obj, input) {
                Ok(v) => validated.push(v),
                Err(e) => return write_error(hs, obj, &e),
            }
        }
        // Check everything first (against stored data and among the inputs) so a failure part-way
        // creates nothing.
        let mut seen: std::collections::HashSet<(&str, String)> = std::collections::HashSet::new();
        for (values, assocs) in &validated {
            if let Err(e) = data.check_create(obj, values, assocs) {
                return write_error(hs, obj, &e);
            }
            for (def, v) in values.iter().filter(|(d, v)| d.unique && !v.is_empty()) {
                if !seen.insert((def.name, v.trim().to_lowercase())) {
                    return errors::validation(
                        st,
                        &format!(
                            "Duplicate value '{v}' for unique property {} among the batch inputs",
                            def.name
                        ),
                    );
                }
            }
        }
        let mut ids = Vec::new();
        for (values, assocs) in validated {
            match data.create(obj, values, &assocs, now, "api") {
                Ok((id, _)) => ids.push(id),
                Err(e) => return write_error(hs, obj, &e),
            }
        }
        for id in &ids {
            record_creation(hs, authed, &data, obj, *id);
        }
        let sel = PropSel::AllSet;
        let results: Vec<ObjView<'_>> = ids
            .iter()
            .filter_map(|id| data.table(obj).active.get(id))
            .map(|r| ObjView::new(obj, r, &sel))
            .collect();
        return batch_body(hs, results, Vec::new(), StatusCode::CREATED, started);
    }
    let mut created: Vec<(u64, String)> = Vec::new();
    let mut errs = Vec::new();
    for input in &req.inputs {
        let trace = input.object_write_trace_id.clone().unwrap_or_default();
        let outcome = validate_create(obj, input)
            .and_then(|(values, assocs)| data.create(obj, values, &assocs, now, "api"));
        match outcome {
            Ok((id, _)) => created.push((id, trace)),
            Err(e) => errs.push(batch_error(obj, &e, Some(&trace), None)),
        }
    }
    for (id, _) in &created {
        record_creation(hs, authed, &data, obj, *id);
    }
    let sel = PropSel::AllSet;
    let results: Vec<ObjView<'_>> = created
        .iter()
        .filter_map(|(id, trace)| {
            data.table(obj)
                .active
                .get(id)
                .map(|r| ObjView { trace_id: Some(trace.as_str()), ..ObjView::new(obj, r, &sel) })
        })
        .collect();
    batch_body(hs, results, errs, StatusCode::CREATED, started)
}

fn batch_update(hs: &HubSpot, authed: &Authed, obj: ObjectType, body: &[u8], upsert: bool) -> Response {
    let st = &hs.state;
    let req: BatchUpdate = match parse_json(st, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = too_many(hs, req.inputs.len()) {
        return r;
    }
    for input in &req.inputs {
        if let Err(r) = check_id_property(hs, obj, input.id_property.as_deref()) {
            return r;
        }
        if upsert && input.id_property.as_deref().is_none_or(|p| p == "hs_object_id") {
            return errors::validation(
                st,
                "batch upsert inputs need idProperty naming a unique property (for example email)",
            );
        }
    }
    let started = format_ms(st.clock.now_ms());
    let now = st.clock.now_ms();
    let mut data = authed.account.data.write();
    let mut done: Vec<(u64, Option<String>, Option<bool>)> = Vec::new();
    let mut errs = Vec::new();
    for input in &req.inputs {
        let id = input.id.text();
        let trace = input.object_write_trace_id.as_deref();
        let values = match schema::normalize(obj, &input.properties) {
            Ok(v) => v,
            Err(e) => {
                errs.push(batch_error(obj, &WriteError::Invalid(e), trace, Some(&id)));
                continue;
            }
        };
        let existing = lookup(&data, obj, &id, input.id_property.as_deref(), false);
        let outcome = match (existing, upsert) {
            (Some(rid), _) => data.update(obj, rid, values, now, "api").map(|_| (rid, false)),
            (None, false) => Err(WriteError::NotFound(0)),
            (None, true) => {
                let prop = input.id_property.as_deref().unwrap_or_default();
                let mut values = values;
                if let Some(def) = schema::property(obj, prop)
                    && !values.iter().any(|(d, _)| d.name == def.name)
                {
                    match schema::normalize(
                        obj,
                        &serde_json::Map::from_iter([(prop.to_owned(), Value::String(id.clone()))]),
                    ) {
                        Ok(mut v) => values.append(&mut v),
                        Err(e) => {
                            errs.push(batch_error(obj, &WriteError::Invalid(e), trace, Some(&id)));
                            continue;
                        }
                    }
                }
                data.create(obj, values, &[], now, "api").map(|(rid, _)| (rid, true))
            }
        };
        match outcome {
            Ok((rid, is_new)) => {
                if is_new {
                    record_creation(hs, authed, &data, obj, rid);
                }
                done.push((rid, trace.map(str::to_owned), upsert.then_some(is_new)));
            }
            Err(e) => errs.push(batch_error(obj, &e, trace, Some(&id))),
        }
    }
    let sel = PropSel::AllSet;
    let results: Vec<ObjView<'_>> = done
        .iter()
        .filter_map(|(rid, trace, is_new)| {
            data.table(obj).active.get(rid).map(|r| ObjView {
                trace_id: trace.as_deref(),
                is_new: *is_new,
                ..ObjView::new(obj, r, &sel)
            })
        })
        .collect();
    batch_body(hs, results, errs, StatusCode::OK, started)
}

fn batch_archive(hs: &HubSpot, authed: &Authed, obj: ObjectType, body: &[u8]) -> Response {
    let st = &hs.state;
    let req: BatchArchive = match parse_json(st, body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(r) = too_many(hs, req.inputs.len()) {
        return r;
    }
    let now = st.clock.now_ms();
    let mut data = authed.account.data.write();
    for input in &req.inputs {
        if let Ok(n) = input.id.text().parse::<u64>() {
            let _ = data.archive(obj, n, now, "api");
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A fixed "created at" for static configuration objects (pipelines, owners).
const CONFIG_CREATED: &str = "2024-01-02T09:00:00.000Z";

fn pipeline_json(p: &schema::Pipeline, order: usize) -> Value {
    let stages: Vec<Value> = p.stages.iter().enumerate().map(|(i, s)| stage_json(s, i)).collect();
    json!({
        "id": p.id,
        "label": p.label,
        "displayOrder": order,
        "archived": false,
        "createdAt": CONFIG_CREATED,
        "updatedAt": CONFIG_CREATED,
        "stages": stages,
    })
}

fn stage_json(s: &(&str, &str, &str, bool), i: usize) -> Value {
    json!({
        "id": s.0,
        "label": s.1,
        "displayOrder": i,
        "metadata": {"isClosed": s.3.to_string(), "probability": s.2},
        "archived": false,
        "createdAt": CONFIG_CREATED,
        "updatedAt": CONFIG_CREATED,
        "writePermissions": "CRUD_ALL",
    })
}

fn pipelines_begin(hs: &HubSpot, headers: &HeaderMap, object: &str) -> Result<(Authed, String), Response> {
    let authed = hs.admit(headers, None)?;
    let op = "pipelines.get".to_owned();
    if ObjectType::parse(object) != Some(ObjectType::Deals) {
        return Err(authed.finish(
            errors::validation(
                &hs.state,
                &format!("Pipelines are not supported for object type {object} in this sandbox"),
            ),
            &op,
        ));
    }
    if !authed.has_scope(ObjectType::Deals.read_scope()) {
        return Err(authed.finish(errors::missing_scope(&hs.state, ObjectType::Deals.read_scope()), &op));
    }
    Ok((authed, op))
}

/// `GET /crm/v3/pipelines/deals`.
pub(crate) async fn pipelines(
    State(hs): State<Arc<HubSpot>>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (authed, op) = match pipelines_begin(&hs, &headers, &object) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let results: Vec<Value> =
        schema::PIPELINES.iter().enumerate().map(|(i, p)| pipeline_json(p, i)).collect();
    authed.finish(errors::json_value(&hs.state, StatusCode::OK, &json!({"results": results})), &op)
}

/// `GET /crm/v3/pipelines/deals/{pipelineId}`.
pub(crate) async fn pipeline(
    State(hs): State<Arc<HubSpot>>,
    Path((object, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (authed, op) = match pipelines_begin(&hs, &headers, &object) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let resp = match schema::PIPELINES.iter().enumerate().find(|(_, p)| p.id == pid) {
        Some((i, p)) => errors::json_value(&hs.state, StatusCode::OK, &pipeline_json(p, i)),
        None => errors::not_found(&hs.state),
    };
    authed.finish(resp, &op)
}

/// `GET /crm/v3/pipelines/deals/{pipelineId}/stages`.
pub(crate) async fn pipeline_stages(
    State(hs): State<Arc<HubSpot>>,
    Path((object, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (authed, op) = match pipelines_begin(&hs, &headers, &object) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let resp = match schema::pipeline(&pid) {
        Some(p) => {
            let stages: Vec<Value> = p.stages.iter().enumerate().map(|(i, s)| stage_json(s, i)).collect();
            errors::json_value(&hs.state, StatusCode::OK, &json!({"results": stages}))
        }
        None => errors::not_found(&hs.state),
    };
    authed.finish(resp, &op)
}

/// `GET /crm/v3/owners`.
pub(crate) async fn owners(State(hs): State<Arc<HubSpot>>, headers: HeaderMap) -> Response {
    let authed = match hs.admit(&headers, Some("crm.objects.owners.read")) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let results: Vec<Value> = schema::OWNERS
        .iter()
        .map(|(id, email, first, last, user)| {
            json!({
                "id": id, "email": email, "type": "PERSON", "firstName": first, "lastName": last,
                "userId": user, "userIdIncludingInactive": user,
                "createdAt": CONFIG_CREATED, "updatedAt": CONFIG_CREATED, "archived": false,
            })
        })
        .collect();
    authed.finish(errors::json_value(&hs.state, StatusCode::OK, &json!({"results": results})), "owners.list")
}

/// `GET /crm/v3/properties/{object}`.
pub(crate) async fn properties(
    State(hs): State<Arc<HubSpot>>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (authed, obj, op) = match begin(&hs, &headers, &object, false, "properties") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let results: Vec<Value> = schema::properties(obj)
        .iter()
        .map(|d| {
            let options: Vec<Value> = match d.ty {
                schema::PropType::Enumeration(opts) => opts
                    .iter()
                    .enumerate()
                    .map(|(i, o)| json!({"label": o, "value": o, "displayOrder": i, "hidden": false}))
                    .collect(),
                _ => Vec::new(),
            };
            json!({
                "name": d.name,
                "label": d.label,
                "type": d.ty.type_name(),
                "fieldType": match d.ty.type_name() { "enumeration" => "select", "datetime" => "date", "number" => "number", _ => "text" },
                "groupName": format!("{}information", obj.title().to_lowercase()),
                "description": "",
                "options": options,
                "hasUniqueValue": d.unique,
                "hidden": false,
                "calculated": false,
                "externalOptions": false,
                "formField": !d.read_only,
                "modificationMetadata": {"archivable": d.name == schema::ACTION_ID_PROP, "readOnlyDefinition": d.name != schema::ACTION_ID_PROP, "readOnlyValue": d.read_only},
                "createdAt": CONFIG_CREATED,
                "updatedAt": CONFIG_CREATED,
                "archived": false,
            })
        })
        .collect();
    authed.finish(errors::json_value(&hs.state, StatusCode::OK, &json!({"results": results})), &op)
}

/// Unknown paths: HubSpot's 404 body.
pub(crate) async fn fallback(State(hs): State<Arc<HubSpot>>) -> Response {
    errors::not_found(&hs.state)
}
