//! `query`, `queryAll` and query locators (`crm-providers.md` §2.3), and the record shape every
//! read returns.
//!
//! A query runs once: its result set is materialised as shared pointers to the records as they were
//! at query time (a server-side cursor with a consistent snapshot, as Salesforce's database cursors
//! are), then served in batches. The first batch answers the query; when rows remain, the response
//! has `done: false` and `nextRecordsUrl: /services/data/vNN.0/query/{locator}-{offset}`. The batch
//! size comes from `Sforce-Query-Options: batchSize=N` (clamped to 200–2000, default 2000); with the
//! `variable_batch_sizes` setting a batch may be shorter (seeded, at least half). Cursors expire
//! after 15 minutes without use and a user keeps at most 10 (opening another releases the oldest);
//! an unknown, expired or released locator → 400 `INVALID_QUERY_LOCATOR`.
//!
//! Invariant: the batches of one cursor partition its snapshot: every row is served in exactly one
//! batch, in the query's order, whatever is written to the org meanwhile.

use super::oauth::Params;
use super::schema::{self, FieldDef, SObject};
use super::store::Record;
use super::{Authed, Salesforce, errors, soql};
use crate::clock::Millis;
use crate::seed::rng_for;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::sync::Arc;

/// Default and largest query batch.
pub const MAX_BATCH: usize = 2000;
/// Smallest batch `Sforce-Query-Options` can ask for.
pub const MIN_BATCH: usize = 200;

/// One open query cursor.
#[derive(Debug)]
pub(crate) struct Cursor {
    user: String,
    object: SObject,
    fields: Vec<&'static FieldDef>,
    rows: Vec<Arc<Record>>,
    batch: usize,
    last_used: Millis,
    seq: u64,
}

/// An org's open cursors.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    map: HashMap<String, Cursor>,
    next: u64,
}

/// One record as the REST API returns it: `attributes` first, then the requested fields in order
/// (unset ones as `null`).
pub(crate) struct RecordView<'a> {
    pub(crate) rec: &'a Record,
    pub(crate) fields: &'a [&'static FieldDef],
    pub(crate) version: u32,
}

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.fields.len() + 1))?;
        m.serialize_entry(
            "attributes",
            &Attributes {
                r#type: self.rec.object.name(),
                url: format!(
                    "/services/data/v{}.0/sobjects/{}/{}",
                    self.version,
                    self.rec.object.name(),
                    self.rec.id
                ),
            },
        )?;
        for f in self.fields {
            m.serialize_entry(f.name, &self.rec.get(f.name).map(|v| v.to_json()))?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Attributes {
    r#type: &'static str,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page<'a> {
    total_size: usize,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_records_url: Option<String>,
    records: Vec<RecordView<'a>>,
}

/// The batch size a request asks for with `Sforce-Query-Options: batchSize=N`.
pub(crate) fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split([',', ';']).find_map(|part| {
                let (k, n) = part.split_once('=')?;
                k.trim().eq_ignore_ascii_case("batchSize").then(|| n.trim().parse::<usize>().ok()).flatten()
            })
        })
        .map(|n| n.clamp(MIN_BATCH, MAX_BATCH))
        .unwrap_or(MAX_BATCH)
}

fn page_len(sf: &Salesforce, org: &str, locator: &str, offset: usize, batch: usize) -> usize {
    if !sf.settings.read().variable_batch_sizes {
        return batch;
    }
    let mut rng = rng_for(sf.state.config.seed, &["salesforce", org, "batch", locator, &offset.to_string()]);
    rng.random_range(batch / 2..=batch).max(1)
}

fn render(
    total: usize,
    next: Option<String>,
    rows: &[Arc<Record>],
    fields: &[&'static FieldDef],
    version: u32,
) -> Response {
    let records = rows.iter().map(|r| RecordView { rec: r, fields, version }).collect();
    let page = Page { total_size: total, done: next.is_none(), next_records_url: next, records };
    errors::json_bytes(StatusCode::OK, serde_json::to_vec(&page).unwrap_or_default())
}

/// `GET /services/data/vNN.0/query?q=…` and `queryAll?q=…`.
pub(crate) fn run(
    sf: &Salesforce,
    authed: &Authed,
    version: u32,
    params: &Params,
    headers: &HeaderMap,
    all_rows: bool,
) -> Response {
    let resource = if all_rows { "queryAll" } else { "query" };
    let Some(q) = params.get("q").filter(|q| !q.trim().is_empty()) else {
        return authed.finish(
            errors::error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "A query string has to be specified"),
            resource,
        );
    };
    let compiled = soql::parse_with(q, &|obj, def| sf.hidden(obj, def));
    let query = match compiled {
        Ok(query) => query,
        Err(e) => return authed.finish(errors::error(StatusCode::BAD_REQUEST, e.code, &e.message), resource),
    };
    let now = sf.state.clock.now_ms();
    let a = &authed.account;
    let rows = {
        let data = a.data.read();
        soql::execute(&query, data.table(query.object), all_rows, now)
    };
    let batch = batch_size(headers);
    let total = rows.len();
    let op = format!("{resource}.{}", query.object.name());
    let mut cursors = a.cursors.lock();
    cursors.next += 1;
    let seq = cursors.next;
    let locator = schema::make_id("01g", (a.index + 1) * 10_000_000_000 + seq);
    let first = page_len(sf, &a.org_id, &locator, 0, batch);
    if total <= first {
        return authed.finish(render(total, None, &rows, &query.fields, version), &op);
    }
    let next = Some(format!("/services/data/v{version}.0/{resource}/{locator}-{first}"));
    let resp = render(total, next, &rows[..first], &query.fields, version);
    let max = sf.settings.read().max_query_cursors;
    let mine: Vec<(u64, String)> = cursors
        .map
        .iter()
        .filter(|(_, c)| c.user == authed.user_id)
        .map(|(k, c)| (c.seq, k.clone()))
        .collect();
    if mine.len() >= max {
        let mut mine = mine;
        mine.sort();
        for (_, k) in mine.iter().take(mine.len() + 1 - max) {
            cursors.map.remove(k);
        }
    }
    cursors.map.insert(
        locator,
        Cursor {
            user: authed.user_id.clone(),
            object: query.object,
            fields: query.fields,
            rows,
            batch,
            last_used: now,
            seq,
        },
    );
    authed.finish(resp, &op)
}

/// `GET /services/data/vNN.0/query/{locator}-{offset}`: the next batch of an open cursor.
pub(crate) fn more(
    sf: &Salesforce,
    authed: &Authed,
    version: u32,
    resource: &str,
    locator: &str,
) -> Response {
    let op = format!("{resource}.more");
    let invalid = || {
        authed.finish(
            errors::error(StatusCode::BAD_REQUEST, "INVALID_QUERY_LOCATOR", "invalid query locator"),
            &op,
        )
    };
    let Some((id, offset)) = locator.rsplit_once('-') else { return invalid() };
    let Ok(offset) = offset.parse::<usize>() else { return invalid() };
    let now = sf.state.clock.now_ms();
    let ttl_ms = sf.settings.read().query_cursor_ttl_secs.saturating_mul(1000);
    let a = &authed.account;
    let mut cursors = a.cursors.lock();
    cursors.map.retain(|_, c| now - c.last_used < ttl_ms);
    let Some(c) = cursors.map.get_mut(id) else { return invalid() };
    if c.user != authed.user_id || offset > c.rows.len() {
        return invalid();
    }
    c.last_used = now;
    let len = page_len(sf, &a.org_id, id, offset, c.batch);
    let end = (offset + len).min(c.rows.len());
    let next = (end < c.rows.len()).then(|| format!("/services/data/v{version}.0/{resource}/{id}-{end}"));
    let resp = render(c.rows.len(), next, &c.rows[offset..end], &c.fields, version);
    let op = format!("{resource}.more.{}", c.object.name());
    drop(cursors);
    authed.finish(resp, &op)
}
