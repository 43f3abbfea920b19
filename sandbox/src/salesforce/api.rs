//! The REST API on the instance hosts (`crm-providers.md` §2.3–§2.5): the version list, resources,
//! `limits/`, sObject create/read/update/delete, External ID upsert, `deleted/` and `updated/`,
//! `composite/sobjects`, describe calls; queries live in `query`.
//!
//! Every handler follows the same shape: API version (404), [`Salesforce::admit`] (401 / 403),
//! optional hold, path and method (404 / 405), body parsing (400 `JSON_PARSER_ERROR`), field
//! validation (400 with the offending `fields`), then one locked read or write of the org's data
//! through a [`Tx`], and the response goes out through [`Authed::finish`] so it carries
//! `Sforce-Limit-Info` and its operation name.
//!
//! Invariant: a request either commits all of its writes (journal and counters included) or none of
//! them; an `allOrNone` composite call that fails leaves the org exactly as it was.

use super::errors::{self, SfError, percent_decode};
use super::oauth::Params;
use super::query::{self, RecordView};
use super::schema::{self, API_VERSIONS, FieldDef, SObject};
use super::store::{self, Tx};
use super::{Actor, Authed, HostState, Salesforce, WriteMode};
use crate::clock::Millis;
use crate::server::with_operation;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Most records a `composite/sobjects` call takes.
pub const COMPOSITE_LIMIT: usize = 200;
/// Most ids `deleted/` and `updated/` return before `EXCEEDED_ID_LIMIT`.
pub const REPLICATION_ID_LIMIT: usize = 600_000;
/// `deleted/` covers at most the last 15 days (the Recycle Bin).
pub const DELETED_WINDOW_MS: Millis = store::RECYCLE_BIN_MS;
/// `updated/` covers at most the last 30 days, and one call spans at most 30 days.
pub const UPDATED_WINDOW_MS: Millis = 30 * 86_400_000;
/// First API version whose upsert answers 200 with a body (and `created`) instead of 204.
pub const UPSERT_BODY_VERSION: u32 = 46;

fn minute(ms: Millis) -> Millis {
    ms - ms.rem_euclid(60_000)
}

/// `GET /services/data/`: every served version, without authentication or `Sforce-Limit-Info`.
pub(crate) async fn versions() -> Response {
    let list: Vec<Value> = API_VERSIONS
        .map(|v| json!({"label": schema::release_label(v), "url": format!("/services/data/v{v}.0"), "version": format!("{v}.0")}))
        .collect();
    with_operation(errors::json(StatusCode::OK, &Value::Array(list)), "versions")
}

/// 404 for paths the login host does not serve.
pub(crate) async fn fallback() -> Response {
    with_operation(errors::not_found().response(), "not_found")
}

/// 404 for paths the instance hosts do not serve.
pub(crate) async fn fallback_host() -> Response {
    with_operation(errors::not_found().response(), "not_found")
}

fn method_not_allowed(authed: &Authed, method: &Method, allowed: &str, op: &str) -> Response {
    authed.finish(
        errors::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            &format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
        ),
        op,
    )
}

/// `/services/data/vNN.0/…`: version, authentication, limits, hold, then the resource.
pub(crate) async fn data(
    State(h): State<HostState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sf = &h.sf;
    let path = uri.path();
    let rest = path.strip_prefix("/services/data/").unwrap_or("");
    let mut segs: Vec<String> = rest.split('/').map(percent_decode).collect();
    if segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    let Some(version) = segs.first().and_then(|v| schema::parse_version(v)) else {
        return with_operation(errors::not_found().response(), "not_found");
    };
    let authed = match sf.admit(&headers, h.host) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let hold = authed.account.limits.lock().take_hold(path);
    if let Some(ms) = hold {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let params = Params::parse(uri.query());
    let segs: Vec<&str> = segs[1..].iter().map(String::as_str).collect();
    let req = Req {
        sf,
        authed: &authed,
        version,
        method: &method,
        params: &params,
        headers: &headers,
        body: &body,
    };
    route(&req, &segs)
}

struct Req<'a> {
    sf: &'a Salesforce,
    authed: &'a Authed,
    version: u32,
    method: &'a Method,
    params: &'a Params,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

impl Req<'_> {
    fn finish(&self, resp: Response, op: &str) -> Response {
        self.authed.finish(resp, op)
    }

    fn fail(&self, e: &SfError, op: &str) -> Response {
        self.authed.finish(e.response(), op)
    }

    fn json(&self, status: StatusCode, v: &Value, op: &str) -> Response {
        self.authed.finish(errors::json(status, v), op)
    }

    fn only(&self, m: Method, op: &str) -> Option<Response> {
        (*self.method != m).then(|| method_not_allowed(self.authed, self.method, m.as_str(), op))
    }

    fn who(&self) -> Actor<'_> {
        Actor { user: &self.authed.user_id, version: self.version }
    }

    fn url(&self, obj: SObject, id: &str) -> String {
        format!("/services/data/v{}.0/sobjects/{}/{id}", self.version, obj.name())
    }
}

fn route(r: &Req<'_>, segs: &[&str]) -> Response {
    match segs {
        [] => r.only(Method::GET, "resources").unwrap_or_else(|| resources(r)),
        ["limits"] => r.only(Method::GET, "limits").unwrap_or_else(|| limits(r)),
        [res @ ("query" | "queryAll")] => r.only(Method::GET, res).unwrap_or_else(|| {
            query::run(r.sf, r.authed, r.version, r.params, r.headers, *res == "queryAll")
        }),
        [res @ ("query" | "queryAll"), locator] => {
            r.only(Method::GET, res).unwrap_or_else(|| query::more(r.sf, r.authed, r.version, res, locator))
        }
        ["sobjects"] => r.only(Method::GET, "sobjects.describe_global").unwrap_or_else(|| describe_global(r)),
        ["sobjects", name, rest @ ..] => {
            let Some(obj) = SObject::parse(name) else {
                return r.fail(&errors::not_found(), "sobjects.unknown");
            };
            sobject(r, obj, rest)
        }
        ["composite", "sobjects"] => composite(r),
        _ => r.fail(&errors::not_found(), "not_found"),
    }
}

fn sobject(r: &Req<'_>, obj: SObject, rest: &[&str]) -> Response {
    let name = obj.name();
    match rest {
        [] => match *r.method {
            Method::GET => r.json(StatusCode::OK, &basic_info(r, obj), &format!("{name}.info")),
            Method::POST => create(r, obj),
            _ => method_not_allowed(r.authed, r.method, "GET,HEAD,POST", &format!("{name}.info")),
        },
        ["describe"] => r
            .only(Method::GET, &format!("{name}.describe"))
            .unwrap_or_else(|| r.json(StatusCode::OK, &describe(r, obj), &format!("{name}.describe"))),
        ["deleted"] => {
            r.only(Method::GET, &format!("{name}.deleted")).unwrap_or_else(|| replication(r, obj, true))
        }
        ["updated"] => {
            r.only(Method::GET, &format!("{name}.updated")).unwrap_or_else(|| replication(r, obj, false))
        }
        [id] => match *r.method {
            Method::GET => get_by_id(r, obj, id),
            Method::PATCH => update_by_id(r, obj, id),
            Method::DELETE => delete_by_id(r, obj, id),
            _ => method_not_allowed(r.authed, r.method, "GET,HEAD,PATCH,DELETE", &format!("{name}.record")),
        },
        [field, value] => match *r.method {
            Method::GET => get_by_external(r, obj, field, value),
            Method::PATCH => upsert(r, obj, field, value),
            Method::DELETE => delete_by_external(r, obj, field, value),
            _ => method_not_allowed(r.authed, r.method, "GET,HEAD,PATCH,DELETE", &format!("{name}.upsert")),
        },
        _ => r.fail(&errors::not_found(), "not_found"),
    }
}

fn resources(r: &Req<'_>) -> Response {
    let v = r.version;
    let base = format!("/services/data/v{v}.0");
    let body = json!({
        "limits": format!("{base}/limits"),
        "sobjects": format!("{base}/sobjects"),
        "query": format!("{base}/query"),
        "queryAll": format!("{base}/queryAll"),
        "composite": format!("{base}/composite"),
    });
    r.json(StatusCode::OK, &body, "resources")
}

fn limits(r: &Req<'_>) -> Response {
    let now = r.sf.state.clock.now_ms();
    let (used, limit) = r.authed.account.limits.lock().usage(now);
    let max_rem = |max: u64| json!({"Max": max, "Remaining": max});
    let body = json!({
        "ConcurrentAsyncGetReportInstances": max_rem(200),
        "ConcurrentSyncReportRuns": max_rem(20),
        "DailyApiRequests": {"Max": limit, "Remaining": limit.saturating_sub(used)},
        "DailyAsyncApexExecutions": max_rem(250_000),
        "DailyBulkApiBatches": max_rem(15_000),
        "DailyBulkV2QueryFileStorageMB": max_rem(976_562),
        "DailyBulkV2QueryJobs": max_rem(10_000),
        "DataStorageMB": max_rem(1_024),
        "FileStorageMB": max_rem(20_480),
        "HourlyODataCallout": max_rem(10_000),
        "SingleEmail": max_rem(5_000),
    });
    r.json(StatusCode::OK, &body, "limits")
}

fn describe_global(r: &Req<'_>) -> Response {
    let v = r.version;
    let sobjects: Vec<Value> = SObject::ALL
        .iter()
        .map(|o| {
            json!({
                "name": o.name(),
                "label": o.name(),
                "labelPlural": o.label_plural(),
                "keyPrefix": o.key_prefix(),
                "custom": false,
                "queryable": true,
                "createable": o.writable(),
                "updateable": o.writable(),
                "deletable": o.writable(),
                "replicateable": true,
                "retrieveable": true,
                "searchable": true,
                "urls": {
                    "sobject": format!("/services/data/v{v}.0/sobjects/{}", o.name()),
                    "describe": format!("/services/data/v{v}.0/sobjects/{}/describe", o.name()),
                    "rowTemplate": format!("/services/data/v{v}.0/sobjects/{}/{{ID}}", o.name()),
                },
            })
        })
        .collect();
    r.json(
        StatusCode::OK,
        &json!({"encoding": "UTF-8", "maxBatchSize": COMPOSITE_LIMIT, "sobjects": sobjects}),
        "sobjects.describe_global",
    )
}

fn basic_info(r: &Req<'_>, obj: SObject) -> Value {
    let v = r.version;
    json!({
        "objectDescribe": {
            "name": obj.name(),
            "label": obj.name(),
            "labelPlural": obj.label_plural(),
            "keyPrefix": obj.key_prefix(),
            "queryable": true,
            "createable": obj.writable(),
            "updateable": obj.writable(),
            "deletable": obj.writable(),
            "urls": {
                "sobject": format!("/services/data/v{v}.0/sobjects/{}", obj.name()),
                "describe": format!("/services/data/v{v}.0/sobjects/{}/describe", obj.name()),
            },
        },
        "recentItems": [],
    })
}

fn describe(r: &Req<'_>, obj: SObject) -> Value {
    let subtype = r.sf.settings.read().task_subtype_createable;
    let fields: Vec<Value> = visible_fields(r.sf, obj)
        .into_iter()
        .map(|f| {
            let (length, picklist, refs) = match f.ty {
                schema::FieldType::String(n) | schema::FieldType::TextArea(n) => (n, Vec::new(), Vec::new()),
                schema::FieldType::Email | schema::FieldType::Url => (255, Vec::new(), Vec::new()),
                schema::FieldType::Phone => (40, Vec::new(), Vec::new()),
                schema::FieldType::Id | schema::FieldType::Reference(_) => {
                    (18, Vec::new(), reference_names(f))
                }
                schema::FieldType::Picklist(values) => (
                    255,
                    values
                        .iter()
                        .map(|p| json!({"active": true, "defaultValue": false, "label": p, "value": p}))
                        .collect(),
                    Vec::new(),
                ),
                _ => (0, Vec::new(), Vec::new()),
            };
            let createable = f.createable && (f.name != "TaskSubtype" || subtype);
            json!({
                "name": f.name,
                "label": f.label,
                "type": f.ty.soap_name(),
                "length": length,
                "createable": createable,
                "updateable": f.updateable,
                "nillable": !f.required && f.computed == schema::Computed::No,
                "externalId": f.external_id,
                "unique": f.unique && r.sf.settings.read().unique_external_ids,
                "idLookup": f.name == "Id" || f.external_id,
                "filterable": !matches!(f.ty, schema::FieldType::TextArea(_)),
                "custom": f.name.ends_with("__c"),
                "picklistValues": picklist,
                "referenceTo": refs,
            })
        })
        .collect();
    let info = basic_info(r, obj);
    let mut d = info["objectDescribe"].clone();
    d["fields"] = Value::Array(fields);
    d
}

fn reference_names(f: &FieldDef) -> Vec<Value> {
    match f.ty {
        schema::FieldType::Reference(types) => types.iter().map(|t| json!(t.name())).collect(),
        _ => Vec::new(),
    }
}

fn visible_fields(sf: &Salesforce, obj: SObject) -> Vec<&'static FieldDef> {
    obj.fields().iter().filter(|d| !sf.hidden(obj, d)).collect()
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, SfError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(SfError::new(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "No content to map due to end-of-input at [line:1, column:0]",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = if other.is_array() { "START_ARRAY" } else { "VALUE" };
            Err(SfError::new(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                format!("Cannot deserialize instance of sobject from {kind} token at [line:1, column:1]"),
            ))
        }
        Err(e) => Err(errors::json_parser(&e)),
    }
}

fn created_body(id: &str, created: Option<bool>) -> Value {
    let mut v = json!({"id": id, "success": true, "errors": []});
    if let Some(c) = created {
        v["created"] = json!(c);
    }
    v
}

fn create(r: &Req<'_>, obj: SObject) -> Response {
    let op = format!("{}.create", obj.name());
    if !obj.writable() {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE_FOR_OPERATION",
            format!("entity type {} does not support insert", obj.name()),
        );
        return r.fail(&e, &op);
    }
    let fields = match body_object(r.body).and_then(|m| r.sf.parse_fields(obj, &m, WriteMode::Create)) {
        Ok(f) => f,
        Err(e) => return r.fail(&e, &op),
    };
    let a = &r.authed.account;
    let mut data = a.data.write();
    let mut tx = Tx::new();
    match r.sf.create_in(&mut data, &mut tx, obj, fields, r.who()) {
        Ok(id) => {
            r.sf.commit(a, &mut data, tx, "api");
            r.json(StatusCode::CREATED, &created_body(&id, None), &op)
        }
        Err(e) => {
            tx.rollback(&mut data);
            r.fail(&e, &op)
        }
    }
}

/// Resolves a path id of `obj` (15 or 18 characters, the right key prefix).
fn path_id(obj: SObject, raw: &str) -> Result<String, SfError> {
    schema::normalize_id(raw)
        .filter(|id| SObject::from_id(id) == Some(obj))
        .ok_or_else(|| errors::no_external_id(raw))
}

/// The fields a read returns: `?fields=a,b` (validated) or every field.
fn read_fields(r: &Req<'_>, obj: SObject) -> Result<Vec<&'static FieldDef>, SfError> {
    match r.params.get("fields") {
        None | Some("") => Ok(visible_fields(r.sf, obj)),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                r.sf.field(obj, name).ok_or_else(|| {
                    SfError::new(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FIELD",
                        format!(
                            "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                            obj.name()
                        ),
                    )
                })
            })
            .collect(),
    }
}

fn record_response(r: &Req<'_>, rec: &store::Record, fields: &[&'static FieldDef], op: &str) -> Response {
    let view = RecordView { rec, fields, version: r.version };
    r.finish(errors::json_bytes(StatusCode::OK, serde_json::to_vec(&view).unwrap_or_default()), op)
}

fn get_by_id(r: &Req<'_>, obj: SObject, raw: &str) -> Response {
    let op = format!("{}.get", obj.name());
    let id = match path_id(obj, raw) {
        Ok(id) => id,
        Err(e) => return r.fail(&e, &op),
    };
    let fields = match read_fields(r, obj) {
        Ok(f) => f,
        Err(e) => return r.fail(&e, &op),
    };
    let data = r.authed.account.data.read();
    match data.table(obj).live(&id) {
        Some(rec) => record_response(r, rec, &fields, &op),
        None => r.fail(&errors::not_found(), &op),
    }
}

fn update_by_id(r: &Req<'_>, obj: SObject, raw: &str) -> Response {
    let op = format!("{}.update", obj.name());
    if !obj.writable() {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE_FOR_OPERATION",
            format!("entity type {} does not support update", obj.name()),
        );
        return r.fail(&e, &op);
    }
    let id = match path_id(obj, raw) {
        Ok(id) => id,
        Err(e) => return r.fail(&e, &op),
    };
    let fields = match body_object(r.body).and_then(|m| r.sf.parse_fields(obj, &m, WriteMode::Update)) {
        Ok(f) => f,
        Err(e) => return r.fail(&e, &op),
    };
    let a = &r.authed.account;
    let mut data = a.data.write();
    let mut tx = Tx::new();
    match r.sf.update_in(&mut data, &mut tx, obj, &id, &fields, r.who()) {
        Ok(()) => {
            r.sf.commit(a, &mut data, tx, "api");
            r.finish(StatusCode::NO_CONTENT.into_response(), &op)
        }
        Err(e) => {
            tx.rollback(&mut data);
            r.fail(&e, &op)
        }
    }
}

fn delete_by_id(r: &Req<'_>, obj: SObject, raw: &str) -> Response {
    let op = format!("{}.delete", obj.name());
    let id = match path_id(obj, raw) {
        Ok(id) => id,
        Err(e) => return r.fail(&e, &op),
    };
    delete_ids(r, obj, &[id], &op)
}

fn delete_ids(r: &Req<'_>, obj: SObject, ids: &[String], op: &str) -> Response {
    if !obj.writable() {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE_FOR_OPERATION",
            format!("entity type {} does not support delete", obj.name()),
        );
        return r.fail(&e, op);
    }
    let a = &r.authed.account;
    let mut data = a.data.write();
    let mut tx = Tx::new();
    for id in ids {
        if let Err(e) = data.delete(&mut tx, obj, id, r.sf.state.clock.now_ms()) {
            tx.rollback(&mut data);
            return r.fail(&r.sf.write_error(obj, &e, r.version), op);
        }
    }
    r.sf.commit(a, &mut data, tx, "api");
    r.finish(StatusCode::NO_CONTENT.into_response(), op)
}

/// The External ID field named in an upsert path (or `Id`).
fn external_field(r: &Req<'_>, obj: SObject, name: &str) -> Result<&'static FieldDef, SfError> {
    r.sf.field(obj, name)
        .filter(|d| d.external_id || d.name == "Id")
        .ok_or_else(|| errors::no_external_id(name))
}

/// Live records whose External ID `field` is `value` (for `Id`: the record with that id).
fn matches(data: &store::OrgData, obj: SObject, field: &FieldDef, value: &str) -> Vec<String> {
    if field.name == "Id" {
        return schema::normalize_id(value)
            .filter(|id| data.table(obj).live(id).is_some())
            .into_iter()
            .collect();
    }
    data.table(obj).by_external(field.name, value)
}

fn multiple_choices(r: &Req<'_>, obj: SObject, ids: &[String], op: &str) -> Response {
    let urls: Vec<Value> = ids.iter().map(|id| json!(r.url(obj, id))).collect();
    r.json(StatusCode::MULTIPLE_CHOICES, &Value::Array(urls), op)
}

fn get_by_external(r: &Req<'_>, obj: SObject, field: &str, value: &str) -> Response {
    let op = format!("{}.get_by_external_id", obj.name());
    let def = match external_field(r, obj, field) {
        Ok(d) => d,
        Err(e) => return r.fail(&e, &op),
    };
    let fields = match read_fields(r, obj) {
        Ok(f) => f,
        Err(e) => return r.fail(&e, &op),
    };
    let data = r.authed.account.data.read();
    let ids = matches(&data, obj, def, value);
    match ids.as_slice() {
        [] => r.fail(&errors::not_found(), &op),
        [id] => match data.table(obj).live(id) {
            Some(rec) => record_response(r, rec, &fields, &op),
            None => r.fail(&errors::not_found(), &op),
        },
        many => multiple_choices(r, obj, many, &op),
    }
}

fn upsert(r: &Req<'_>, obj: SObject, field: &str, value: &str) -> Response {
    let op = format!("{}.upsert", obj.name());
    if !obj.writable() {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE_FOR_OPERATION",
            format!("entity type {} does not support upsert", obj.name()),
        );
        return r.fail(&e, &op);
    }
    let def = match external_field(r, obj, field) {
        Ok(d) => d,
        Err(e) => return r.fail(&e, &op),
    };
    let mut body = match body_object(r.body) {
        Ok(m) => m,
        Err(e) => return r.fail(&e, &op),
    };
    if let Some(k) = body.keys().find(|k| k.eq_ignore_ascii_case(def.name)).cloned()
        && let Some(v) = body.remove(&k)
        && v.as_str().is_none_or(|s| !s.eq_ignore_ascii_case(value))
    {
        let e = SfError::fields(
            "INVALID_FIELD",
            format!("The value of the external ID field {} in the body does not match the URL", def.name),
            vec![def.name.to_owned()],
        );
        return r.fail(&e, &op);
    }
    let update_only = r.params.get("updateOnly").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let new_api = r.version >= UPSERT_BODY_VERSION;
    let a = &r.authed.account;
    let mut data = a.data.write();
    let ids = matches(&data, obj, def, value);
    let mut tx = Tx::new();
    let result = match ids.as_slice() {
        [] if update_only || def.name == "Id" => Err(errors::not_found()),
        [] => r.sf.parse_fields(obj, &body, WriteMode::Create).and_then(|mut fields| {
            let v = schema::parse_value(def, &json!(value))
                .map_err(|e| SfError::fields(e.code, e.message, e.fields))?;
            fields.insert(def.name, v);
            let id = r.sf.create_in(&mut data, &mut tx, obj, fields, r.who())?;
            Ok((StatusCode::CREATED, Some(created_body(&id, new_api.then_some(true)))))
        }),
        [id] => r.sf.parse_fields(obj, &body, WriteMode::Update).and_then(|fields| {
            r.sf.update_in(&mut data, &mut tx, obj, id, &fields, r.who())?;
            Ok(if new_api {
                (StatusCode::OK, Some(created_body(id, Some(false))))
            } else {
                (StatusCode::NO_CONTENT, None)
            })
        }),
        many => {
            tx.rollback(&mut data);
            return multiple_choices(r, obj, many, &op);
        }
    };
    match result {
        Ok((status, body)) => {
            r.sf.commit(a, &mut data, tx, "api");
            match body {
                Some(b) => r.json(status, &b, &op),
                None => r.finish(status.into_response(), &op),
            }
        }
        Err(e) => {
            tx.rollback(&mut data);
            r.fail(&e, &op)
        }
    }
}

fn delete_by_external(r: &Req<'_>, obj: SObject, field: &str, value: &str) -> Response {
    let op = format!("{}.delete_by_external_id", obj.name());
    let def = match external_field(r, obj, field) {
        Ok(d) => d,
        Err(e) => return r.fail(&e, &op),
    };
    let ids = {
        let data = r.authed.account.data.read();
        matches(&data, obj, def, value)
    };
    match ids.as_slice() {
        [] => r.fail(&errors::not_found(), &op),
        [_] => delete_ids(r, obj, &ids, &op),
        many => multiple_choices(r, obj, many, &op),
    }
}

fn replication_error(message: &str) -> SfError {
    SfError::new(StatusCode::BAD_REQUEST, "INVALID_REPLICATION_DATE", message)
}

/// `GET sobjects/{X}/deleted/?start=&end=` and `…/updated/?start=&end=`.
fn replication(r: &Req<'_>, obj: SObject, deleted: bool) -> Response {
    let op = format!("{}.{}", obj.name(), if deleted { "deleted" } else { "updated" });
    let now = r.sf.state.clock.now_ms();
    let mut bounds = [0; 2];
    for (i, name) in ["start", "end"].into_iter().enumerate() {
        let Some(raw) = r.params.get(name) else {
            let e = SfError::new(
                StatusCode::BAD_REQUEST,
                "MISSING_ARGUMENT",
                format!("{name}: parameter is required"),
            );
            return r.fail(&e, &op);
        };
        match schema::parse_datetime(raw) {
            Some(ms) => bounds[i] = ms,
            None => return r.fail(&replication_error(&format!("{name}: invalid date/time: {raw}")), &op),
        }
    }
    let [start, end] = bounds;
    // "The API ignores the seconds portion of the specified dateTime value."
    let (s, e) = (minute(start), minute(end));
    if end - start <= 60_000 || e <= s {
        return r.fail(
            &replication_error("startDate must chronologically precede endDate by more than one minute"),
            &op,
        );
    }
    if e - s > UPDATED_WINDOW_MS {
        return r
            .fail(&replication_error("the span between startDate and endDate cannot exceed 30 days"), &op);
    }
    let window = if deleted { DELETED_WINDOW_MS } else { UPDATED_WINDOW_MS };
    if s < now - window {
        let days = window / 86_400_000;
        return r.fail(&replication_error(&format!("startDate cannot be more than {days} days ago")), &op);
    }
    let lag = r.sf.settings.read().latest_date_covered_lag_secs.max(0) * 1000;
    let latest = e.min(minute(now - lag)).max(s);
    let data = r.authed.account.data.read();
    let t = data.table(obj);
    if deleted {
        let records: Vec<Value> = t
            .deleted
            .range((s, String::new())..(latest, String::new()))
            .map(|(at, id)| json!({"id": id, "deletedDate": schema::format_datetime(*at)}))
            .collect();
        if records.len() > REPLICATION_ID_LIMIT {
            return r.fail(
                &SfError::new(
                    StatusCode::BAD_REQUEST,
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit more than 600000 records in this operation",
                ),
                &op,
            );
        }
        let purged =
            t.deleted.range(..(now - DELETED_WINDOW_MS + 1, String::new())).next_back().map(|(at, _)| *at);
        let earliest = minute(purged.unwrap_or(r.authed.account.created_at).max(r.authed.account.created_at));
        let body = json!({
            "deletedRecords": records,
            "earliestDateAvailable": schema::format_datetime(earliest),
            "latestDateCovered": schema::format_datetime(latest),
        });
        r.json(StatusCode::OK, &body, &op)
    } else {
        let ids: Vec<&String> =
            t.by_modstamp.range((s, String::new())..(latest, String::new())).map(|(_, id)| id).collect();
        if ids.len() > REPLICATION_ID_LIMIT {
            return r.fail(
                &SfError::new(
                    StatusCode::BAD_REQUEST,
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit more than 600000 records in this operation",
                ),
                &op,
            );
        }
        let body = json!({"ids": ids, "latestDateCovered": schema::format_datetime(latest)});
        r.json(StatusCode::OK, &body, &op)
    }
}

/// One composite record's outcome.
enum Outcome {
    Ok(String),
    Failed(Option<String>, SfError),
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Ok(id) => json!({"id": id, "success": true, "errors": []}),
        Outcome::Failed(id, e) => {
            let mut v = json!({"success": false, "errors": [e.save_error()]});
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            v
        }
    }
}

fn rolled_back() -> SfError {
    SfError::new(
        StatusCode::BAD_REQUEST,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    )
}

/// `composite/sobjects`: POST creates, PATCH updates (records carry `Id`), DELETE `?ids=`; at most 200
/// records; `allOrNone` rolls every write back when one fails.
fn composite(r: &Req<'_>) -> Response {
    let (op, update) = match *r.method {
        Method::POST => ("composite.create", false),
        Method::PATCH => ("composite.update", true),
        Method::DELETE => return composite_delete(r),
        _ => return method_not_allowed(r.authed, r.method, "POST,PATCH,DELETE", "composite"),
    };
    let body = match body_object(r.body) {
        Ok(b) => b,
        Err(e) => return r.fail(&e, op),
    };
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "allOrNone" | "records")) {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            format!("Unrecognized field \"{k}\" at [line:1, column:2]"),
        );
        return r.fail(&e, op);
    }
    let all_or_none = match body.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            let e = SfError::new(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                format!("Cannot deserialize instance of boolean from {other}"),
            );
            return r.fail(&e, op);
        }
    };
    let Some(Value::Array(records)) = body.get("records") else {
        let e =
            SfError::new(StatusCode::BAD_REQUEST, "INVALID_FIELD", "records: the records array is required");
        return r.fail(&e, op);
    };
    if records.len() > COMPOSITE_LIMIT {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            format!("record limit reached. cannot submit more than {COMPOSITE_LIMIT} records into this call"),
        );
        return r.fail(&e, op);
    }
    let a = &r.authed.account;
    let mut data = a.data.write();
    let mut shared = Tx::new();
    let mut outcomes = Vec::with_capacity(records.len());
    for rec in records {
        let mut own = Tx::new();
        let tx = if all_or_none { &mut shared } else { &mut own };
        let outcome = composite_one(r, &mut data, tx, rec, update);
        if !all_or_none {
            match &outcome {
                Outcome::Ok(_) => {
                    r.sf.commit(a, &mut data, own, "api");
                }
                Outcome::Failed(..) => own.rollback(&mut data),
            }
        } else {
            own.rollback(&mut data);
        }
        outcomes.push(outcome);
    }
    if all_or_none {
        if outcomes.iter().any(|o| matches!(o, Outcome::Failed(..))) {
            shared.rollback(&mut data);
            for o in &mut outcomes {
                if let Outcome::Ok(id) = o {
                    *o = Outcome::Failed(update.then(|| id.clone()), rolled_back());
                }
            }
        } else {
            r.sf.commit(a, &mut data, shared, "api");
        }
    } else {
        shared.rollback(&mut data);
    }
    let results: Vec<Value> = outcomes.iter().map(outcome_json).collect();
    drop(data);
    r.json(StatusCode::OK, &Value::Array(results), op)
}

fn composite_one(r: &Req<'_>, data: &mut store::OrgData, tx: &mut Tx, rec: &Value, update: bool) -> Outcome {
    let Value::Object(m) = rec else {
        return Outcome::Failed(
            None,
            SfError::new(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", "each record must be a JSON object"),
        );
    };
    let Some(obj) =
        m.get("attributes").and_then(|a| a.get("type")).and_then(Value::as_str).and_then(SObject::parse)
    else {
        return Outcome::Failed(
            None,
            SfError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE",
                "Must specify a valid sObject type in attributes",
            ),
        );
    };
    if !obj.writable() {
        return Outcome::Failed(
            None,
            SfError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type {} does not support this operation", obj.name()),
            ),
        );
    }
    let mut fields_json = m.clone();
    let id = if update {
        let raw = fields_json.remove("Id").or_else(|| fields_json.remove("id"));
        match raw.as_ref().and_then(Value::as_str) {
            None => {
                return Outcome::Failed(
                    None,
                    SfError::new(
                        StatusCode::BAD_REQUEST,
                        "MISSING_ARGUMENT",
                        "Id not specified in an update call",
                    ),
                );
            }
            Some(raw) => match path_id(obj, raw) {
                Ok(id) => Some(id),
                Err(_) => {
                    return Outcome::Failed(
                        Some(raw.to_owned()),
                        SfError::fields(
                            "MALFORMED_ID",
                            format!("Record ID: id value of incorrect type: {raw}"),
                            vec!["Id".into()],
                        ),
                    );
                }
            },
        }
    } else {
        None
    };
    let mode = if update { WriteMode::Update } else { WriteMode::Create };
    let fields = match r.sf.parse_fields(obj, &fields_json, mode) {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(id, e),
    };
    match id {
        Some(id) => match r.sf.update_in(data, tx, obj, &id, &fields, r.who()) {
            Ok(()) => Outcome::Ok(id),
            Err(e) => Outcome::Failed(Some(id), e),
        },
        None => match r.sf.create_in(data, tx, obj, fields, r.who()) {
            Ok(id) => Outcome::Ok(id),
            Err(e) => Outcome::Failed(None, e),
        },
    }
}

fn composite_delete(r: &Req<'_>) -> Response {
    let op = "composite.delete";
    let ids: Vec<String> = r
        .params
        .get("ids")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return r.fail(
            &SfError::new(StatusCode::BAD_REQUEST, "MISSING_ARGUMENT", "ids: parameter is required"),
            op,
        );
    }
    if ids.len() > COMPOSITE_LIMIT {
        let e = SfError::new(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            format!("record limit reached. cannot submit more than {COMPOSITE_LIMIT} records into this call"),
        );
        return r.fail(&e, op);
    }
    let all_or_none = r.params.get("allOrNone").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let now = r.sf.state.clock.now_ms();
    let a = &r.authed.account;
    let mut data = a.data.write();
    let mut shared = Tx::new();
    let mut outcomes = Vec::new();
    for raw in &ids {
        let mut own = Tx::new();
        let outcome = match schema::normalize_id(raw).and_then(|id| SObject::from_id(&id).map(|o| (o, id))) {
            Some((obj, id)) if obj.writable() => {
                let tx = if all_or_none { &mut shared } else { &mut own };
                match data.delete(tx, obj, &id, now) {
                    Ok(()) => Outcome::Ok(id),
                    Err(e) => Outcome::Failed(Some(id), r.sf.write_error(obj, &e, r.version)),
                }
            }
            _ => Outcome::Failed(
                Some(raw.clone()),
                SfError::fields("MALFORMED_ID", format!("malformed id {raw}"), Vec::new()),
            ),
        };
        if !all_or_none && matches!(outcome, Outcome::Ok(_)) {
            r.sf.commit(a, &mut data, own, "api");
        } else {
            own.rollback(&mut data);
        }
        outcomes.push(outcome);
    }
    if all_or_none {
        if outcomes.iter().any(|o| matches!(o, Outcome::Failed(..))) {
            shared.rollback(&mut data);
            for o in &mut outcomes {
                if let Outcome::Ok(id) = o {
                    *o = Outcome::Failed(Some(id.clone()), rolled_back());
                }
            }
        } else {
            r.sf.commit(a, &mut data, shared, "api");
        }
    } else {
        shared.rollback(&mut data);
    }
    drop(data);
    r.json(StatusCode::OK, &Value::Array(outcomes.iter().map(outcome_json).collect()), op)
}
