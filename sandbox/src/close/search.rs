//! The Advanced Filtering API (`POST /api/v1/data/search/`, `crm-providers.md` §5.3): a subset of
//! Close's query grammar over contacts and leads, sorting, `_fields`, and cursor pagination.
//!
//! Grammar: `and` / `or` (`queries`), `object_type` (`contact` or `lead`; required at the top level
//! or directly inside the top-level `and`), `id` (`value`), `text` (`value`, `mode` `full_words` or
//! `phrase`), `field_condition` (`field`: `regular_field {object_type, field_name}` or
//! `custom_field {custom_field_id}`; `condition`: `moment_range {on_or_after?, before?}` with
//! `fixed_utc` or `fixed_local_date` moments, `text`, `term {values}`, `exists`,
//! `number_range {gt,gte,lt,lte}`, `reference {object_ids}`, `boolean {value}`), and `has_related`
//! (`contact_email`, `contact_phone`, `contact_url` and `lead` from a contact; `contact` from a
//! lead). Every query takes `negate`. Anything else is a 400.
//!
//! Pagination is a point-in-time snapshot, like a search-engine scroll: the first request (no
//! `cursor`) evaluates the query, sorts, caps the sequence at `search_max_results` (10,000) and
//! renders every document once; each page returns the next `_limit` documents and a cursor naming
//! the snapshot and position. A cursor can be replayed (the same page again) until the snapshot has
//! been unused for `search_cursor_ttl_secs` (30 s of logical time); an expired or unknown cursor is
//! a 400 naming the `cursor` field. Records changed after the snapshot keep their snapshot version in
//! that sequence.
//!
//! Invariant: within one sequence documents come in sort order (ties by id) and each appears once.

use super::api::project;
use super::store::{AccountData, Kind, Record, parse_close_time};
use super::{Close, errors};
use crate::clock::Millis;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Page size when `_limit` is absent.
pub const DEFAULT_LIMIT: usize = 10;
/// Snapshots kept per organization (the least recently used goes first).
pub const MAX_SNAPSHOTS: usize = 64;

/// A pagination sequence.
#[derive(Clone, Debug)]
pub struct Snapshot {
    docs: Vec<Value>,
    last_used: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    FullWords,
    Phrase,
}

#[derive(Clone, Debug)]
enum FieldRef {
    Regular { object_type: String, name: String },
    Custom(String),
}

#[derive(Clone, Debug)]
enum Cond {
    Moment { from: Option<Millis>, before: Option<Millis> },
    Text(String, Mode),
    Term(Vec<Value>),
    Exists,
    Number { gt: Option<f64>, gte: Option<f64>, lt: Option<f64>, lte: Option<f64> },
    Reference(Vec<String>),
    Boolean(bool),
}

#[derive(Clone, Debug)]
enum Q {
    And(Vec<Q>),
    Or(Vec<Q>),
    ObjectType(Kind),
    Id(String),
    Text(String, Mode),
    Field(FieldRef, Cond),
    Related(String, Box<Q>),
    Not(Box<Q>),
}

#[derive(Clone, Debug)]
struct Node {
    q: Q,
    negate: bool,
}

type Parse<T> = Result<T, String>;

fn obj<'a>(v: &'a Value, what: &str) -> Parse<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| format!("{what} must be an object"))
}

fn only(m: &Map<String, Value>, keys: &[&str], what: &str) -> Parse<()> {
    match m.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown key {k:?} in {what}")),
        None => Ok(()),
    }
}

fn string(m: &Map<String, Value>, k: &str, what: &str) -> Parse<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("{what} needs a string {k:?}"))
}

fn mode(m: &Map<String, Value>) -> Parse<Mode> {
    match m.get("mode").and_then(Value::as_str) {
        None | Some("full_words") => Ok(Mode::FullWords),
        Some("phrase") => Ok(Mode::Phrase),
        Some(other) => Err(format!("unknown text mode {other:?}")),
    }
}

fn moment(v: &Value, tz_offset_ms: Millis) -> Parse<Option<Millis>> {
    if v.is_null() {
        return Ok(None);
    }
    let m = obj(v, "moment")?;
    match m.get("type").and_then(Value::as_str) {
        Some("fixed_utc") => {
            only(m, &["type", "value"], "fixed_utc moment")?;
            let s = string(m, "value", "fixed_utc moment")?;
            parse_close_time(&s).map(Some).ok_or_else(|| format!("invalid fixed_utc value {s:?}"))
        }
        Some("fixed_local_date") => {
            only(m, &["type", "value", "which"], "fixed_local_date moment")?;
            let s = string(m, "value", "fixed_local_date moment")?;
            let day = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|_| format!("invalid date {s:?}"))?;
            let start =
                day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(0) - tz_offset_ms;
            match m.get("which").and_then(Value::as_str) {
                Some("start") => Ok(Some(start)),
                Some("end") => Ok(Some(start + 86_400_000)),
                _ => Err("fixed_local_date needs which: start or end".to_owned()),
            }
        }
        Some(other) => Err(format!("moment type {other:?} is not supported by the sandbox")),
        None => Err("moment needs a type".to_owned()),
    }
}

fn condition(v: &Value, tz: Millis) -> Parse<Cond> {
    let m = obj(v, "condition")?;
    let f = |k: &str| m.get(k).and_then(Value::as_f64);
    match m.get("type").and_then(Value::as_str) {
        Some("moment_range") => {
            only(m, &["type", "on_or_after", "before"], "moment_range")?;
            Ok(Cond::Moment {
                from: moment(m.get("on_or_after").unwrap_or(&Value::Null), tz)?,
                before: moment(m.get("before").unwrap_or(&Value::Null), tz)?,
            })
        }
        Some("text") => {
            only(m, &["type", "value", "mode"], "text condition")?;
            Ok(Cond::Text(string(m, "value", "text condition")?, mode(m)?))
        }
        Some("term") => {
            only(m, &["type", "values"], "term condition")?;
            match m.get("values") {
                Some(Value::Array(a)) => Ok(Cond::Term(a.clone())),
                _ => Err("term condition needs values".to_owned()),
            }
        }
        Some("exists") => {
            only(m, &["type"], "exists condition")?;
            Ok(Cond::Exists)
        }
        Some("number_range") => {
            only(m, &["type", "gt", "gte", "lt", "lte"], "number_range")?;
            Ok(Cond::Number { gt: f("gt"), gte: f("gte"), lt: f("lt"), lte: f("lte") })
        }
        Some("reference") => {
            only(m, &["type", "reference_type", "object_ids"], "reference condition")?;
            let ids = m
                .get("object_ids")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .ok_or_else(|| "reference condition needs object_ids".to_owned())?;
            Ok(Cond::Reference(ids))
        }
        Some("boolean") => {
            only(m, &["type", "value"], "boolean condition")?;
            m.get("value")
                .and_then(Value::as_bool)
                .map(Cond::Boolean)
                .ok_or_else(|| "boolean needs value".to_owned())
        }
        Some(other) => Err(format!("condition type {other:?} is not supported by the sandbox")),
        None => Err("condition needs a type".to_owned()),
    }
}

fn field_ref(v: &Value) -> Parse<FieldRef> {
    let m = obj(v, "field")?;
    match m.get("type").and_then(Value::as_str) {
        Some("regular_field") => {
            only(m, &["type", "object_type", "field_name"], "regular_field")?;
            Ok(FieldRef::Regular {
                object_type: string(m, "object_type", "regular_field")?,
                name: string(m, "field_name", "regular_field")?,
            })
        }
        Some("custom_field") => {
            only(m, &["type", "custom_field_id"], "custom_field")?;
            Ok(FieldRef::Custom(string(m, "custom_field_id", "custom_field")?))
        }
        _ => Err("field type must be regular_field or custom_field".to_owned()),
    }
}

fn node(v: &Value, tz: Millis) -> Parse<Node> {
    let m = obj(v, "query")?;
    let negate = match m.get("negate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("negate must be a boolean".to_owned()),
    };
    let list = |m: &Map<String, Value>| -> Parse<Vec<Q>> {
        let items =
            m.get("queries").and_then(Value::as_array).ok_or_else(|| "and/or needs queries".to_owned())?;
        items.iter().map(|i| node(i, tz).map(wrap)).collect()
    };
    let q = match m.get("type").and_then(Value::as_str) {
        Some("and") => {
            only(m, &["type", "queries", "negate"], "and query")?;
            Q::And(list(m)?)
        }
        Some("or") => {
            only(m, &["type", "queries", "negate"], "or query")?;
            Q::Or(list(m)?)
        }
        Some("object_type") => {
            only(m, &["type", "object_type", "negate"], "object_type query")?;
            match m.get("object_type").and_then(Value::as_str) {
                Some("contact") => Q::ObjectType(Kind::Contact),
                Some("lead") => Q::ObjectType(Kind::Lead),
                other => return Err(format!("object_type must be contact or lead, got {other:?}")),
            }
        }
        Some("id") => {
            only(m, &["type", "value", "negate"], "id query")?;
            Q::Id(string(m, "value", "id query")?)
        }
        Some("text") => {
            only(m, &["type", "value", "mode", "negate"], "text query")?;
            Q::Text(string(m, "value", "text query")?, mode(m)?)
        }
        Some("field_condition") => {
            only(m, &["type", "field", "condition", "negate"], "field_condition")?;
            let field = field_ref(m.get("field").unwrap_or(&Value::Null))?;
            let cond = condition(m.get("condition").unwrap_or(&Value::Null), tz)?;
            Q::Field(field, cond)
        }
        Some("has_related") => {
            only(
                m,
                &["type", "this_object_type", "related_object_type", "related_query", "negate"],
                "has_related",
            )?;
            let rel = string(m, "related_object_type", "has_related")?;
            let inner = node(m.get("related_query").unwrap_or(&Value::Null), tz)?;
            Q::Related(rel, Box::new(wrap(inner)))
        }
        Some(other) => return Err(format!("query type {other:?} is not supported by the sandbox")),
        None => return Err("query needs a type".to_owned()),
    };
    Ok(Node { q, negate })
}

/// Applies a node's `negate` flag.
fn wrap(n: Node) -> Q {
    if n.negate { Q::Not(Box::new(n.q)) } else { n.q }
}

/// What a condition is evaluated against.
#[derive(Clone, Copy)]
enum Target<'a> {
    Rec(Kind, &'a Record),
    Entry(&'a str, &'a Map<String, Value>),
}

#[derive(Clone, Debug)]
enum FVal {
    Time(Millis),
    Text(String),
    Num(f64),
    Null,
}

fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
}

fn text_matches(hay: &str, needle: &str, mode: Mode) -> bool {
    let h = tokens(hay);
    let n = tokens(needle);
    if n.is_empty() {
        return false;
    }
    match mode {
        Mode::FullWords => n.iter().all(|t| h.contains(t)),
        Mode::Phrase => h.windows(n.len()).any(|w| w == n.as_slice()),
    }
}

fn list_len(r: &Record, k: &str) -> f64 {
    r.fields.get(k).and_then(Value::as_array).map(|a| a.len() as f64).unwrap_or(0.0)
}

fn regular(t: Target<'_>, object_type: &str, name: &str) -> Parse<FVal> {
    let text = |v: Option<&str>| v.map(|s| FVal::Text(s.to_owned())).unwrap_or(FVal::Null);
    match t {
        Target::Rec(kind, r) => {
            if object_type != kind.name() {
                return Err(format!("field of {object_type} used on a {} query", kind.name()));
            }
            Ok(match (kind, name) {
                (_, "id") => FVal::Text(r.id.clone()),
                (_, "date_created") => FVal::Time(r.created_at),
                (_, "date_updated") => FVal::Time(r.updated_at),
                (_, "created_by" | "updated_by") => text(r.str(name)),
                (Kind::Contact, "lead_id" | "name" | "title") => text(r.str(name)),
                (Kind::Contact, "display_name") => text(r.str("name")),
                (Kind::Contact, "emails_count") => FVal::Num(list_len(r, "emails")),
                (Kind::Contact, "phones_count") => FVal::Num(list_len(r, "phones")),
                (Kind::Contact, "urls_count") => FVal::Num(list_len(r, "urls")),
                (Kind::Lead, "name" | "lead_name" | "display_name") => text(r.str("name")),
                (Kind::Lead, "description" | "url" | "status_id") => text(r.str(name)),
                (Kind::Lead, "addresses_count") => FVal::Num(list_len(r, "addresses")),
                _ => return Err(format!("unknown field {name:?} of {object_type}")),
            })
        }
        Target::Entry(ty, m) => {
            if object_type != ty {
                return Err(format!("field of {object_type} used on {ty}"));
            }
            match m.get(name) {
                Some(Value::String(s)) => Ok(FVal::Text(s.clone())),
                None if ["email", "phone", "url", "type"].contains(&name) => Ok(FVal::Null),
                _ => Err(format!("unknown field {name:?} of {ty}")),
            }
        }
    }
}

fn check(v: &FVal, c: &Cond) -> bool {
    match (c, v) {
        (Cond::Exists, FVal::Null) => false,
        (Cond::Exists, FVal::Text(s)) => !s.is_empty(),
        (Cond::Exists, _) => true,
        (Cond::Moment { from, before }, FVal::Time(t)) => {
            from.is_none_or(|f| *t >= f) && before.is_none_or(|b| *t < b)
        }
        (Cond::Text(n, m), FVal::Text(h)) => text_matches(h, n, *m),
        (Cond::Term(values), FVal::Text(s)) => values.iter().any(|x| x.as_str() == Some(s.as_str())),
        (Cond::Term(values), FVal::Num(n)) => values.iter().any(|x| x.as_f64() == Some(*n)),
        (Cond::Number { gt, gte, lt, lte }, FVal::Num(n)) => {
            gt.is_none_or(|x| *n > x)
                && gte.is_none_or(|x| *n >= x)
                && lt.is_none_or(|x| *n < x)
                && lte.is_none_or(|x| *n <= x)
        }
        (Cond::Reference(ids), FVal::Text(s)) => ids.iter().any(|i| i == s),
        (Cond::Boolean(b), FVal::Text(s)) => s == &b.to_string(),
        _ => false,
    }
}

fn all_text(d: &AccountData, kind: Kind, r: &Record) -> String {
    let mut parts = vec![d.searchable_text(kind, &r.id)];
    if let Some(Value::Array(phones)) = r.fields.get("phones") {
        parts.extend(phones.iter().filter_map(|p| p.get("phone")?.as_str().map(str::to_owned)));
    }
    if let Some(u) = r.str("url") {
        parts.push(u.to_owned());
    }
    if kind == Kind::Lead {
        for c in d.children(&r.id, Kind::Contact) {
            parts.push(d.searchable_text(Kind::Contact, &c.id));
        }
    }
    parts.join("\n")
}

fn eval(q: &Q, t: Target<'_>, d: &AccountData) -> Parse<bool> {
    Ok(match q {
        Q::Not(inner) => !eval(inner, t, d)?,
        Q::And(list) => {
            let mut ok = true;
            for x in list {
                if !eval(x, t, d)? {
                    ok = false;
                    break;
                }
            }
            ok
        }
        Q::Or(list) => {
            let mut any = false;
            for x in list {
                if eval(x, t, d)? {
                    any = true;
                    break;
                }
            }
            any
        }
        Q::ObjectType(k) => matches!(t, Target::Rec(kind, _) if kind == *k),
        Q::Id(id) => match t {
            Target::Rec(_, r) => r.id == *id,
            Target::Entry(..) => false,
        },
        Q::Text(value, mode) => match t {
            Target::Rec(kind, r) => text_matches(&all_text(d, kind, r), value, *mode),
            Target::Entry(_, m) => {
                m.values().filter_map(Value::as_str).any(|s| text_matches(s, value, *mode))
            }
        },
        Q::Field(FieldRef::Regular { object_type, name }, c) => check(&regular(t, object_type, name)?, c),
        Q::Field(FieldRef::Custom(id), c) => match t {
            Target::Rec(kind, r) => {
                if d.meta.custom_field(kind, id).is_none() {
                    return Err(format!("unknown custom field {id:?} of {}", kind.name()));
                }
                let v = match r.fields.get(&format!("custom.{id}")) {
                    Some(Value::String(s)) => FVal::Text(s.clone()),
                    Some(Value::Number(n)) => FVal::Num(n.as_f64().unwrap_or(0.0)),
                    _ => FVal::Null,
                };
                check(&v, c)
            }
            Target::Entry(..) => false,
        },
        Q::Related(rel, inner) => match (t, rel.as_str()) {
            (Target::Rec(Kind::Contact, r), ty @ ("contact_email" | "contact_phone" | "contact_url")) => {
                let list = match ty {
                    "contact_email" => "emails",
                    "contact_phone" => "phones",
                    _ => "urls",
                };
                let mut any = false;
                for e in r.fields.get(list).and_then(Value::as_array).into_iter().flatten() {
                    if let Some(m) = e.as_object()
                        && eval(inner, Target::Entry(ty, m), d)?
                    {
                        any = true;
                        break;
                    }
                }
                any
            }
            (Target::Rec(Kind::Contact, r), "lead") => match r.lead_id().and_then(|l| d.get(Kind::Lead, l)) {
                Some(l) => eval(inner, Target::Rec(Kind::Lead, l), d)?,
                None => false,
            },
            (Target::Rec(Kind::Lead, r), "contact") => {
                let mut any = false;
                for c in d.children(&r.id, Kind::Contact) {
                    if eval(inner, Target::Rec(Kind::Contact, c), d)? {
                        any = true;
                        break;
                    }
                }
                any
            }
            (_, other) => return Err(format!("has_related {other:?} is not supported here")),
        },
    })
}

/// The object type a query returns: an `object_type` query at the top or directly in the top `and`.
fn object_type_of(q: &Q) -> Option<Kind> {
    match q {
        Q::ObjectType(k) => Some(*k),
        Q::And(list) => list.iter().find_map(|x| match x {
            Q::ObjectType(k) => Some(*k),
            _ => None,
        }),
        _ => None,
    }
}

fn sort_key(r: &Record, name: &str) -> Parse<(Option<f64>, String)> {
    Ok(match name {
        "date_created" => (Some(r.created_at as f64), String::new()),
        "date_updated" => (Some(r.updated_at as f64), String::new()),
        "emails_count" => (Some(list_len(r, "emails")), String::new()),
        "phones_count" => (Some(list_len(r, "phones")), String::new()),
        "name" | "title" | "description" | "url" | "display_name" | "lead_name" => {
            let f = if matches!(name, "display_name" | "lead_name") { "name" } else { name };
            (None, r.str(f).unwrap_or("").to_lowercase())
        }
        other => return Err(format!("cannot sort by {other:?}")),
    })
}

struct Request {
    query: Q,
    kind: Kind,
    fields: Option<Vec<String>>,
    limit: usize,
    cursor: Option<String>,
    results_limit: Option<usize>,
    include_counts: bool,
    sort: Vec<(String, bool)>,
}

fn parse_request(body: &Map<String, Value>, tz: Millis, max_limit: usize) -> Result<Request, Response> {
    let allowed = ["query", "_fields", "_limit", "cursor", "results_limit", "include_counts", "sort"];
    if let Some(k) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(errors::bad_request(&format!("Unknown parameter {k:?}.")));
    }
    let query = match body.get("query") {
        Some(q) => node(q, tz).map(wrap).map_err(|e| errors::field_error("query", &e))?,
        None => return Err(errors::field_error("query", "This field is required.")),
    };
    let Some(kind) = object_type_of(&query) else {
        return Err(errors::field_error(
            "query",
            "The query must include an object_type query (contact or lead).",
        ));
    };
    let limit = match body.get("_limit") {
        None | Some(Value::Null) => DEFAULT_LIMIT.min(max_limit),
        Some(v) => match v.as_u64() {
            Some(n) if (n as usize) <= max_limit => n as usize,
            Some(_) => {
                return Err(errors::field_error(
                    "_limit",
                    &format!("Ensure this value is less than or equal to {max_limit}."),
                ));
            }
            None => return Err(errors::field_error("_limit", "A valid integer is required.")),
        },
    };
    let cursor = match body.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(errors::field_error("cursor", "Must be a string or null.")),
    };
    let results_limit = match body.get("results_limit") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64().ok_or_else(|| errors::field_error("results_limit", "A valid integer is required."))?
                as usize,
        ),
    };
    let include_counts = body.get("include_counts").and_then(Value::as_bool).unwrap_or(false);
    let fields = match body.get("_fields") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| *k != "contact" && *k != "lead") {
                return Err(errors::field_error("_fields", &format!("Unknown object type {k:?}.")));
            }
            m.get(kind.name())
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        }
        Some(_) => return Err(errors::field_error("_fields", "Must be an object keyed by object type.")),
    };
    let mut sort = Vec::new();
    for s in body.get("sort").and_then(Value::as_array).into_iter().flatten() {
        let desc = match s.get("direction").and_then(Value::as_str) {
            Some("asc") => false,
            Some("desc") => true,
            _ => return Err(errors::field_error("sort", "direction must be asc or desc.")),
        };
        let field = s.get("field").cloned().unwrap_or(Value::Null);
        match field_ref(&field) {
            Ok(FieldRef::Regular { object_type, name }) if object_type == kind.name() => {
                sort.push((name, desc))
            }
            Ok(_) => {
                return Err(errors::field_error("sort", "Only fields of the returned object can be sorted."));
            }
            Err(e) => return Err(errors::field_error("sort", &e)),
        }
    }
    Ok(Request { query, kind, fields, limit, cursor, results_limit, include_counts, sort })
}

fn encode(snapshot: &str, pos: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{snapshot}:{pos}"))
}

fn decode(cursor: &str) -> Option<(String, usize)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, pos) = text.rsplit_once(':')?;
    Some((id.to_owned(), pos.parse().ok()?))
}

fn tz_offset_ms(headers: &HeaderMap) -> Millis {
    headers
        .get("x-tz-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|h| (h * 3_600_000.0) as Millis)
        .unwrap_or(0)
}

/// `POST /api/v1/data/search/`.
pub(crate) async fn search(
    State(c): State<Arc<Close>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let authed = match c.admit(&headers, "POST", uri.path()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "data.search";
    let settings = c.current_settings();
    let body = match errors::parse_object(&body) {
        Ok(b) => b,
        Err(r) => return authed.finish(r, op),
    };
    let req = match parse_request(&body, tz_offset_ms(&headers), settings.search_limit_max) {
        Ok(r) => r,
        Err(resp) => return authed.finish(resp, op),
    };
    let now = c.state.clock.now_ms();
    let ttl = settings.search_cursor_ttl_secs.saturating_mul(1000);
    let mut snaps = authed.account.snapshots.lock();
    if ttl > 0 {
        snaps.retain(|_, s| now - s.last_used <= ttl);
    }
    let (snap_id, pos, total) = match &req.cursor {
        Some(cur) => {
            let Some((id, pos)) = decode(cur).filter(|(id, _)| snaps.contains_key(id)) else {
                return authed.finish(errors::field_error("cursor", "Invalid or expired cursor."), op);
            };
            (id, pos, None)
        }
        None => {
            let d = authed.account.data.read();
            let mut matches: Vec<&Record> = Vec::new();
            for r in d.table(req.kind).live.values() {
                match eval(&req.query, Target::Rec(req.kind, r), &d) {
                    Ok(true) => matches.push(r),
                    Ok(false) => {}
                    Err(e) => return authed.finish(errors::field_error("query", &e), op),
                }
            }
            let total = matches.len();
            if req.sort.is_empty() {
                matches.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
            } else {
                let mut keyed = Vec::with_capacity(matches.len());
                for r in matches {
                    let mut keys = Vec::new();
                    for (name, _) in &req.sort {
                        match sort_key(r, name) {
                            Ok(k) => keys.push(k),
                            Err(e) => return authed.finish(errors::field_error("sort", &e), op),
                        }
                    }
                    keyed.push((keys, r));
                }
                keyed.sort_by(|(ka, a), (kb, b)| {
                    for (i, (_, desc)) in req.sort.iter().enumerate() {
                        let o = match (ka[i].0, kb[i].0) {
                            (Some(x), Some(y)) => x.total_cmp(&y),
                            _ => ka[i].1.cmp(&kb[i].1),
                        };
                        let o = if *desc { o.reverse() } else { o };
                        if o != std::cmp::Ordering::Equal {
                            return o;
                        }
                    }
                    a.id.cmp(&b.id)
                });
                matches = keyed.into_iter().map(|(_, r)| r).collect();
            }
            let cap = settings.search_max_results.min(req.results_limit.unwrap_or(usize::MAX));
            let docs: Vec<Value> = matches
                .iter()
                .take(cap)
                .map(|r| {
                    let mut m = match &req.fields {
                        Some(f) => match project(d.render(req.kind, r), Some(f)) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        },
                        None => {
                            let mut m = Map::new();
                            m.insert("id".into(), json!(r.id));
                            m
                        }
                    };
                    m.insert("__object_type".into(), json!(req.kind.name()));
                    Value::Object(m)
                })
                .collect();
            drop(d);
            if snaps.len() >= MAX_SNAPSHOTS
                && let Some(oldest) = snaps.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
            {
                snaps.remove(&oldest);
            }
            let id = c.token_rng.string(crate::seed::ALNUM, 24);
            snaps.insert(id.clone(), Snapshot { docs, last_used: now });
            (id, 0, Some(total))
        }
    };
    let Some(snap) = snaps.get_mut(&snap_id) else {
        return authed.finish(errors::field_error("cursor", "Invalid or expired cursor."), op);
    };
    snap.last_used = now;
    let len = snap.docs.len();
    let start = pos.min(len);
    let end = (start + req.limit).min(len);
    let page: Vec<Value> = snap.docs[start..end].to_vec();
    let next = (end < len).then(|| encode(&snap_id, end));
    let mut out = json!({"data": page, "cursor": next});
    if req.include_counts {
        out["count"] = json!({"total": total.unwrap_or(len), "limited": len});
    }
    authed.finish(errors::ok(&out), op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_modes() {
        assert!(text_matches("jane.doe@x.com", "jane.doe@x.com", Mode::FullWords));
        assert!(text_matches("Jane Doe CEO", "ceo jane", Mode::FullWords));
        assert!(!text_matches("Jane Doe CEO", "ceo jane", Mode::Phrase));
        assert!(text_matches("Jane Doe CEO", "doe ceo", Mode::Phrase));
    }

    #[test]
    fn parses_the_documented_incremental_query() {
        let q = json!({"type":"and","queries":[
            {"type":"object_type","object_type":"contact"},
            {"type":"field_condition","field":{"type":"regular_field","object_type":"contact","field_name":"date_updated"},
             "condition":{"type":"moment_range","on_or_after":{"type":"fixed_utc","value":"2025-01-01T00:00:00+00:00"}}}]});
        let n = node(&q, 0).expect("parses");
        assert_eq!(object_type_of(&wrap(n)), Some(Kind::Contact));
        let bad =
            json!({"type":"and","queries":[{"type":"object_type","object_type":"contact"},{"type":"bogus"}]});
        assert!(node(&bad, 0).is_err());
        assert_eq!(decode(&encode("abc", 7)), Some(("abc".to_owned(), 7)));
    }
}
