//! `POST /crm/v3/objects/{object}/search` (`crm-providers.md` §1.2–§1.3).
//!
//! Filter groups are OR-ed, filters inside a group AND-ed, with the SDK's operator set. Limits: 5
//! groups, 6 filters per group, 18 filters in total, one sort, `limit` ≤ 200, `after` < 10,000 (paging
//! past 10,000 results is a 400), `query` ≤ 3,000 characters. Responses carry no rate-limit headers; the
//! search limiter (5 per second per account) answers 429 "You have reached your secondly limit.".
//! Records changed within the configured index lag are not visible yet.
//!
//! Invariant: results are ordered by the sort property (ascending unless `DESCENDING`) with ties broken
//! by id ascending, and `after` is an offset into that order, so paging a query whose matches do not
//! change returns each match exactly once.

use super::HubSpot;
use super::api::StrOrNum;
use super::errors::{self, parse_json};
use super::schema::{self, ObjectType, PropType};
use super::store::Record;
use super::view::{ObjView, PropSel};
use crate::clock::{Millis, parse_time};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::cmp::Ordering;
use std::sync::Arc;

/// Most results a search can page through.
pub const SEARCH_RESULT_CAP: usize = 10_000;
/// Most results per search page.
pub const SEARCH_LIMIT_MAX: i64 = 200;
/// Page size when `limit` is absent.
pub const SEARCH_LIMIT_DEFAULT: i64 = 10;
/// Most filter groups.
pub const MAX_GROUPS: usize = 5;
/// Most filters per group.
pub const MAX_FILTERS_PER_GROUP: usize = 6;
/// Most filters in total.
pub const MAX_FILTERS: usize = 18;
/// Longest `query` string.
pub const MAX_QUERY_CHARS: usize = 3_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchRequest {
    #[serde(default)]
    filter_groups: Vec<FilterGroup>,
    #[serde(default)]
    sorts: Vec<SortSpec>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    after: Option<StrOrNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterGroup {
    filters: Vec<Filter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Filter {
    property_name: String,
    operator: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    values: Option<Vec<Value>>,
    #[serde(default)]
    high_value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SortSpec {
    /// The SDK's string form: `"createdate"`, or `"-createdate"` for descending.
    Name(String),
    /// The documented object form.
    Object {
        #[serde(rename = "propertyName")]
        property_name: String,
        #[serde(default)]
        direction: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    HasProperty,
    NotHasProperty,
    ContainsToken,
    NotContainsToken,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "EQ" => Op::Eq,
            "NEQ" => Op::Neq,
            "LT" => Op::Lt,
            "LTE" => Op::Lte,
            "GT" => Op::Gt,
            "GTE" => Op::Gte,
            "BETWEEN" => Op::Between,
            "IN" => Op::In,
            "NOT_IN" => Op::NotIn,
            "HAS_PROPERTY" => Op::HasProperty,
            "NOT_HAS_PROPERTY" => Op::NotHasProperty,
            "CONTAINS_TOKEN" => Op::ContainsToken,
            "NOT_CONTAINS_TOKEN" => Op::NotContainsToken,
            _ => return None,
        })
    }
}

/// How values of a property compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Time,
    Number,
    Text,
}

/// A comparable value.
#[derive(Clone, Debug, PartialEq)]
enum Key {
    Time(Millis),
    Number(f64),
    Text(String),
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Time(a), Key::Time(b)) => a.cmp(b),
            (Key::Number(a), Key::Number(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (Key::Text(a), Key::Text(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }
}

struct CFilter {
    prop: &'static str,
    kind: Kind,
    op: Op,
    value: Option<Key>,
    high: Option<Key>,
    values: Vec<Key>,
    token: Option<String>,
}

fn kind_of(obj: ObjectType, prop: &str) -> Kind {
    if prop == "hs_object_id" {
        return Kind::Number;
    }
    match schema::property(obj, prop).map(|d| d.ty) {
        Some(PropType::DateTime) => Kind::Time,
        Some(PropType::Number | PropType::Integer) => Kind::Number,
        _ => Kind::Text,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn to_key(kind: Kind, raw: &str) -> Option<Key> {
    match kind {
        Kind::Time => parse_time(raw).map(Key::Time),
        Kind::Number => raw.trim().parse::<f64>().ok().map(Key::Number),
        Kind::Text => Some(Key::Text(raw.to_lowercase())),
    }
}

fn record_key(obj: ObjectType, r: &Record, prop: &str, kind: Kind) -> Option<Key> {
    match kind {
        Kind::Time => r.time_ms(obj, prop).map(Key::Time),
        Kind::Number => {
            if prop == "hs_object_id" {
                return Some(Key::Number(r.id as f64));
            }
            r.get(obj, prop).and_then(|v| v.trim().parse::<f64>().ok()).map(Key::Number)
        }
        Kind::Text => r.get(obj, prop).map(|v| Key::Text(v.to_lowercase())),
    }
}

fn tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '@' || c == '.' || c == '_' || c == '-'))
        .filter(|t| !t.is_empty())
}

fn token_match(hay: &str, needle: &str) -> bool {
    let hay = hay.to_lowercase();
    if needle.contains('*') {
        crate::faults::glob_match(needle, &hay) || tokens(&hay).any(|t| crate::faults::glob_match(needle, t))
    } else {
        hay == needle || tokens(&hay).any(|t| t == needle)
    }
}

impl CFilter {
    fn matches(&self, obj: ObjectType, r: &Record) -> bool {
        if matches!(self.op, Op::ContainsToken | Op::NotContainsToken) {
            let found = match (r.get(obj, self.prop), &self.token) {
                (Some(v), Some(t)) => token_match(&v, t),
                _ => false,
            };
            return if self.op == Op::ContainsToken { found } else { !found };
        }
        let has = r.get(obj, self.prop).is_some();
        self.holds(record_key(obj, r, self.prop, self.kind), has)
    }

    /// The filter decided from a record's id and modification time alone, when it looks at
    /// nothing else (the windowing filters of an incremental sync); `None` otherwise.
    fn matches_stamp(&self, obj: ObjectType, updated_at: Millis, id: u64) -> Option<bool> {
        if matches!(self.op, Op::ContainsToken | Op::NotContainsToken) {
            return None;
        }
        let actual = if self.prop == "hs_object_id" {
            Key::Number(id as f64)
        } else if self.prop == obj.modified_prop() {
            Key::Time(updated_at)
        } else {
            return None;
        };
        Some(self.holds(Some(actual), true))
    }

    /// Whether the operator holds for the record's value (`actual`: its key, if it has one
    /// that parses; `has`: whether it has the property at all).
    fn holds(&self, actual: Option<Key>, has: bool) -> bool {
        match self.op {
            Op::HasProperty => has,
            Op::NotHasProperty => !has,
            Op::ContainsToken | Op::NotContainsToken => false,
            Op::In => actual.is_some_and(|a| self.values.iter().any(|v| a.cmp(v) == Ordering::Equal)),
            Op::NotIn => !actual.is_some_and(|a| self.values.iter().any(|v| a.cmp(v) == Ordering::Equal)),
            Op::Neq => match (actual, &self.value) {
                (Some(a), Some(v)) => a.cmp(v) != Ordering::Equal,
                _ => true,
            },
            _ => {
                let (Some(a), Some(v)) = (actual, &self.value) else {
                    return false;
                };
                let c = a.cmp(v);
                match self.op {
                    Op::Eq => c == Ordering::Equal,
                    Op::Lt => c == Ordering::Less,
                    Op::Lte => c != Ordering::Greater,
                    Op::Gt => c == Ordering::Greater,
                    Op::Gte => c != Ordering::Less,
                    Op::Between => {
                        c != Ordering::Less
                            && self.high.as_ref().is_some_and(|h| a.cmp(h) != Ordering::Greater)
                    }
                    _ => false,
                }
            }
        }
    }

    /// A lower bound on the modification time this filter implies, if any.
    fn modified_lower_bound(&self, obj: ObjectType) -> Option<Millis> {
        if self.prop != obj.modified_prop() {
            return None;
        }
        match (self.op, &self.value) {
            (Op::Eq | Op::Gte | Op::Between, Some(Key::Time(t))) => Some(*t),
            (Op::Gt, Some(Key::Time(t))) => Some(t.saturating_add(1)),
            _ => None,
        }
    }
}

fn compile(obj: ObjectType, f: &Filter) -> Result<CFilter, String> {
    let op = Op::parse(&f.operator).ok_or_else(|| {
        format!(
            "Invalid operator {}; expected one of EQ, NEQ, LT, LTE, GT, GTE, BETWEEN, IN, NOT_IN, HAS_PROPERTY, NOT_HAS_PROPERTY, CONTAINS_TOKEN, NOT_CONTAINS_TOKEN",
            f.operator
        )
    })?;
    let prop = if f.property_name == "hs_object_id" {
        "hs_object_id"
    } else {
        schema::property(obj, &f.property_name).map(|d| d.name).ok_or_else(|| {
            format!("There was a problem with the request: property {} does not exist", f.property_name)
        })?
    };
    let kind = kind_of(obj, prop);
    let key = |v: &Value, what: &str| -> Result<Key, String> {
        let raw =
            scalar(v).ok_or_else(|| format!("{what} of filter on {prop} must be a string or number"))?;
        to_key(kind, &raw).ok_or_else(|| format!("{raw} is not a valid value for {prop}"))
    };
    let mut c = CFilter { prop, kind, op, value: None, high: None, values: Vec::new(), token: None };
    match op {
        Op::HasProperty | Op::NotHasProperty => {}
        Op::In | Op::NotIn => {
            let vals = f.values.as_ref().ok_or_else(|| format!("{} needs values", f.operator))?;
            c.values = vals.iter().map(|v| key(v, "values")).collect::<Result<_, _>>()?;
        }
        Op::ContainsToken | Op::NotContainsToken => {
            let v =
                f.value.as_ref().and_then(scalar).ok_or_else(|| format!("{} needs a value", f.operator))?;
            c.token = Some(v.to_lowercase());
        }
        Op::Between => {
            c.value = Some(key(f.value.as_ref().ok_or("BETWEEN needs value")?, "value")?);
            c.high = Some(key(f.high_value.as_ref().ok_or("BETWEEN needs highValue")?, "highValue")?);
        }
        _ => {
            c.value =
                Some(key(f.value.as_ref().ok_or_else(|| format!("{} needs a value", f.operator))?, "value")?);
        }
    }
    Ok(c)
}

fn query_match(obj: ObjectType, r: &Record, q: &str) -> bool {
    let keys: &[&str] = match obj {
        ObjectType::Contacts => &["email", "firstname", "lastname", "phone", "company"],
        ObjectType::Companies => &["name", "domain", "phone"],
        ObjectType::Deals => &["dealname"],
        ObjectType::Tasks => &["hs_task_subject", "hs_task_body"],
        ObjectType::Calls => &["hs_call_title", "hs_call_body"],
        ObjectType::Notes => &["hs_note_body"],
    };
    keys.iter().any(|k| r.props.get(k).is_some_and(|v| v.to_lowercase().contains(q)))
}

#[derive(Serialize)]
struct SearchPage<'a> {
    total: usize,
    results: Vec<ObjView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paging: Option<Value>,
}

/// The search handler.
pub(crate) async fn search(
    State(hs): State<Arc<HubSpot>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(obj) = ObjectType::parse(&object) else {
        return match hs.admit_search(&headers, "crm.objects.contacts.read") {
            Ok(a) => a.finish(
                errors::validation(&hs.state, &format!("Unable to infer object type from: {object}")),
                "objects.search",
            ),
            Err(r) => r,
        };
    };
    let op = format!("{}.search", obj.name());
    let authed = match hs.admit_search(&headers, obj.read_scope()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = &hs.state;
    let req: SearchRequest = match parse_json(st, &body) {
        Ok(r) => r,
        Err(r) => return authed.finish(r, &op),
    };
    // What the results depend on besides the page position, to remember a window's total by.
    let filters = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("filterGroups").map(Value::to_string))
        .unwrap_or_default();
    let resp = run(&hs, &authed, obj, req, &filters);
    authed.finish(resp, &op)
}

fn run(hs: &HubSpot, authed: &super::Authed, obj: ObjectType, req: SearchRequest, filters: &str) -> Response {
    let st = &hs.state;
    let fail = |m: &str| errors::validation(st, m);
    if req.filter_groups.len() > MAX_GROUPS {
        return fail(&format!("Too many filter groups: at most {MAX_GROUPS} are allowed"));
    }
    let total_filters: usize = req.filter_groups.iter().map(|g| g.filters.len()).sum();
    if req.filter_groups.iter().any(|g| g.filters.len() > MAX_FILTERS_PER_GROUP) {
        return fail(&format!("Too many filters in a group: at most {MAX_FILTERS_PER_GROUP} are allowed"));
    }
    if total_filters > MAX_FILTERS {
        return fail(&format!("Too many filters: at most {MAX_FILTERS} are allowed across all groups"));
    }
    if req.sorts.len() > 1 {
        return fail("Only one sort is allowed");
    }
    if req.query.as_ref().is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS) {
        return fail(&format!("query must be at most {MAX_QUERY_CHARS} characters"));
    }
    let limit = req.limit.unwrap_or(SEARCH_LIMIT_DEFAULT);
    if !(0..=SEARCH_LIMIT_MAX).contains(&limit) {
        return fail(&format!("limit must be between 0 and {SEARCH_LIMIT_MAX}; got {limit}"));
    }
    let after: usize = match &req.after {
        None => 0,
        Some(a) => match a.text().trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => return fail(&format!("Invalid after value: {}", a.text())),
        },
    };
    if after >= SEARCH_RESULT_CAP {
        return fail(&format!(
            "The search API cannot page past {SEARCH_RESULT_CAP} results (after={after}). Narrow the query, for example by moving a lower bound on {}.",
            obj.modified_prop()
        ));
    }
    let mut groups = Vec::with_capacity(req.filter_groups.len());
    for g in &req.filter_groups {
        match g.filters.iter().map(|f| compile(obj, f)).collect::<Result<Vec<_>, _>>() {
            Ok(c) => groups.push(c),
            Err(m) => return fail(&m),
        }
    }
    let (sort_prop, descending) = match req.sorts.first() {
        None => ("hs_object_id", false),
        Some(SortSpec::Name(n)) => match n.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (n.as_str(), false),
        },
        Some(SortSpec::Object { property_name, direction }) => {
            let desc = match direction.as_deref() {
                None | Some("ASCENDING") => false,
                Some("DESCENDING") => true,
                Some(d) => return fail(&format!("Invalid sort direction {d}; use ASCENDING or DESCENDING")),
            };
            (property_name.as_str(), desc)
        }
    };
    let sort_prop: &'static str = if sort_prop == "hs_object_id" {
        "hs_object_id"
    } else {
        match schema::property(obj, sort_prop) {
            Some(d) => d.name,
            None => return fail(&format!("Cannot sort by unknown property {sort_prop}")),
        }
    };
    let sort_kind = kind_of(obj, sort_prop);
    let query = req.query.as_ref().map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
    let sel = PropSel::for_request(obj, &req.properties);

    let now = st.clock.now_ms();
    let lag = hs.settings.read().search_index_lag_ms;
    let visible_until = now - lag.max(0);
    let data = authed.account.data.read();
    let table = data.table(obj);
    let lower = if groups.is_empty() {
        None
    } else {
        groups
            .iter()
            .map(|g| g.iter().filter_map(|f| f.modified_lower_bound(obj)).max())
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
    };
    // Both candidate orders already are a sort order: `active` is by id, and `by_modified` is
    // by (modification time, id), which is the order of an ascending sort on the modification
    // property (ties broken by id, as below).
    let already_sorted = !descending
        && match lower {
            None => sort_prop == "hs_object_id",
            Some(_) => sort_prop == obj.modified_prop(),
        };
    // An incremental sync's windowing search (filters on the modification time and the id
    // only, sorted by modification time) is answered from `by_modified` alone: counting the
    // window's total touches no record, so a page costs O(window) cheap steps and not
    // O(window) record lookups and sorting (which made a 100,000-record sync quadratic).
    // (A full sync's first window has no filter at all: the whole index, in order.)
    let by_time_from = (!descending && sort_prop == obj.modified_prop() && query.is_none())
        .then(|| lower.or(groups.is_empty().then_some(Millis::MIN)))
        .flatten();
    if let Some(lo) = by_time_from {
        let decide = |ts: Millis, id: u64| -> Option<bool> {
            if groups.is_empty() {
                return Some(true);
            }
            let mut any = false;
            for g in &groups {
                let mut all = true;
                for f in g {
                    all &= f.matches_stamp(obj, ts, id)?;
                }
                any |= all;
            }
            Some(any)
        };
        // Probe once: every filter must be decidable from the stamp.
        if groups.iter().flatten().all(|f| f.matches_stamp(obj, lo, 0).is_some()) {
            // A sync asks for the same window page after page: its total is counted once
            // and remembered against the index's generation (any change to the table
            // invalidates it), so the following pages stop scanning at their last result.
            // The visibility horizon moves with the clock, but only the newest record it lets
            // in changes the count: key on that record, so the memo holds under a live clock.
            let horizon = table.by_modified.range(..=(visible_until, u64::MAX)).next_back();
            let memo_key = format!("{}|{}|{horizon:?}|{filters}", obj.name(), table.generation);
            let known =
                authed.account.window_total.lock().as_ref().and_then(|(k, n)| (*k == memo_key).then_some(*n));
            let page_end = (after + limit as usize).min(SEARCH_RESULT_CAP);
            let mut seen = 0usize;
            let mut page: Vec<&Record> = Vec::with_capacity(limit as usize);
            for &(ts, id) in table.by_modified.range((lo, 0)..) {
                if ts > visible_until || (known.is_some() && seen >= page_end) {
                    break; // by_modified is ordered by time: nothing later is visible either
                }
                if decide(ts, id) == Some(true) {
                    if seen >= after && seen < page_end {
                        page.extend(table.active.get(&id));
                    }
                    seen += 1;
                }
            }
            let total = match known {
                Some(n) => n,
                None => {
                    *authed.account.window_total.lock() = Some((memo_key, seen));
                    seen
                }
            };
            return search_page(st, obj, &sel, total, after, limit, page);
        }
    }
    let accept = |r: &Record| -> bool {
        r.updated_at <= visible_until
            && (groups.is_empty() || groups.iter().any(|g| g.iter().all(|f| f.matches(obj, r))))
            && query.as_deref().is_none_or(|q| query_match(obj, r, q))
    };
    let mut matched: Vec<&Record> = match lower {
        Some(lo) => table
            .by_modified
            .range((lo, 0)..)
            .filter_map(|(_, id)| table.active.get(id))
            .filter(|r| accept(r))
            .collect(),
        None => table.active.values().filter(|r| accept(r)).collect(),
    };
    if !already_sorted {
        let mut keyed: Vec<(Option<Key>, &Record)> =
            matched.into_iter().map(|r| (record_key(obj, r, sort_prop, sort_kind), r)).collect();
        keyed.sort_by(|(ka, ra), (kb, rb)| {
            let primary = match (ka, kb) {
                (Some(a), Some(b)) => {
                    let c = a.cmp(b);
                    if descending { c.reverse() } else { c }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            primary.then(ra.id.cmp(&rb.id))
        });
        matched = keyed.into_iter().map(|(_, r)| r).collect();
    }
    let total = matched.len();
    let end = (after + limit as usize).min(total).min(SEARCH_RESULT_CAP);
    let page = matched.get(after.min(total)..end).unwrap_or(&[]).to_vec();
    search_page(st, obj, &sel, total, after, limit, page)
}

/// The response for `page`, the results from position `after` of `total` matches.
fn search_page(
    st: &crate::state::SandboxState,
    obj: ObjectType,
    sel: &PropSel,
    total: usize,
    after: usize,
    limit: i64,
    page: Vec<&Record>,
) -> Response {
    let end = (after + page.len()).min(total);
    let results: Vec<ObjView<'_>> = page.into_iter().map(|r| ObjView::new(obj, r, sel)).collect();
    // Like HubSpot, a page ending at the 10,000-result cap still offers `after`; asking for it
    // is the error above.
    let paging = (end < total && limit > 0).then(|| json!({"next": {"after": end.to_string()}}));
    let body = SearchPage { total, results, paging };
    errors::json_bytes(st, StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}
