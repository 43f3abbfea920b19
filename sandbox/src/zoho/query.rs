//! Zoho CRM's two query surfaces:
//!
//! * `GET /{module}/search` with one of `criteria`, `email`, `phone`, `word` (that priority order):
//!   `criteria` is `((Field:operator:value) and (…))` with at most 10 conditions and the operators
//!   `equals` (a case-insensitive *contains* on text fields, exact on picklists and other types, as
//!   Zoho documents), `not_equal`, `starts_with`, `in`, `greater_than`, `greater_equal`, `less_than`,
//!   `less_equal`, `between`; `\(`, `\)`, `\,` and `\\` escape. `email`, `phone` and `word` match
//!   substrings. At most 2,000 results (`page * per_page`), 204 when none, and records written less
//!   than `search_index_lag_ms` ago are not indexed yet.
//! * `POST /coql` with `{"select_query": "select A, B from Module where … order by … limit o, n"}`: a
//!   minimal COQL (`=`, `!=`, `<`, `<=`, `>`, `>=`, `[not] like`, `[not] in`, `is [not] null`,
//!   `between`, `and`, `or`, parentheses; `limit n`, `limit offset, n`, `limit n offset m`), no
//!   indexing delay, at most 2,000 rows per call.
//!
//! Invariant: both only read; results are ordered deterministically (search by the requested sort,
//! default id descending; COQL by `order by`, then id ascending).

use super::api::{Params, begin};
use super::errors::{self, json_response};
use super::schema::{self, Access, FieldType, FieldValue, Module};
use super::store::{AccountData, Record};
use super::view::{self, Selection};
use super::{Host, Need};
use crate::clock::Millis;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use std::cmp::Ordering;

/// Most search results reachable.
pub const SEARCH_LIMIT: usize = 2_000;
/// Most conditions in a search `criteria`.
pub const CRITERIA_MAX: usize = 10;
/// Most COQL rows per call.
pub const COQL_LIMIT_MAX: usize = 2_000;
/// COQL rows when the query has no `limit`.
pub const COQL_LIMIT_DEFAULT: usize = 200;

/// A comparable field value.
#[derive(Clone, Debug, PartialEq)]
enum Cmp {
    Text(String),
    Num(f64),
    Time(Millis),
    Date(String),
    Bool(bool),
    Id(String),
}

fn value_of(m: Module, rec: &Record, field: &str) -> Option<Cmp> {
    match field {
        "id" => return Some(Cmp::Id(rec.id.to_string())),
        "Created_Time" => return Some(Cmp::Time(rec.created_at)),
        "Modified_Time" => return Some(Cmp::Time(rec.modified_at)),
        "Created_By" => return Some(Cmp::Id(rec.created_by.to_string())),
        "Modified_By" => return Some(Cmp::Id(rec.modified_by.to_string())),
        "Full_Name" if m == Module::Contacts => return rec.full_name().map(Cmp::Text),
        _ => {}
    }
    let def = schema::field(m, field)?;
    let v = rec.fields.get(field)?;
    Some(match (def.ty, v) {
        (FieldType::Integer | FieldType::Double, FieldValue::Int(n)) => Cmp::Num(*n as f64),
        (_, FieldValue::Num(n)) => Cmp::Num(*n),
        (FieldType::Date, FieldValue::Text(s)) => Cmp::Date(s.clone()),
        (_, FieldValue::Time(t)) => Cmp::Time(*t),
        (_, FieldValue::Bool(b)) => Cmp::Bool(*b),
        (_, FieldValue::Ref(id)) | (_, FieldValue::Parent(_, id)) => Cmp::Id(id.to_string()),
        (_, FieldValue::Text(s)) => Cmp::Text(s.clone()),
        (_, FieldValue::Int(n)) => Cmp::Num(*n as f64),
    })
}

fn is_picklist(m: Module, field: &str) -> bool {
    schema::field(m, field).is_some_and(|d| matches!(d.ty, FieldType::Picklist(_) | FieldType::SeModule))
}

/// Orders a stored value against a literal, when comparable.
fn order(v: &Cmp, lit: &str) -> Option<Ordering> {
    match v {
        Cmp::Num(n) => lit.trim().parse::<f64>().ok().and_then(|l| n.partial_cmp(&l)),
        Cmp::Time(t) => schema::parse_datetime(lit).map(|l| t.cmp(&l)),
        Cmp::Date(d) => {
            schema::parse_date(lit).map(|l| d.as_str().cmp(l.format("%Y-%m-%d").to_string().as_str()))
        }
        Cmp::Text(s) => Some(s.to_lowercase().cmp(&lit.to_lowercase())),
        Cmp::Id(s) => Some(s.cmp(&lit.trim().to_owned())),
        Cmp::Bool(b) => lit.trim().parse::<bool>().ok().map(|l| b.cmp(&l)),
    }
}

fn equal(v: &Cmp, lit: &str) -> bool {
    order(v, lit) == Some(Ordering::Equal)
}

// ----------------------------------------------------------------------------------------------
// Search
// ----------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Crit {
    All(Vec<Crit>),
    Any(Vec<Crit>),
    Cond { field: String, op: String, raw: String },
}

struct CritParser<'a> {
    s: &'a [u8],
    i: usize,
    conditions: usize,
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits on unescaped commas, then unescapes each part.
fn split_values(raw: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts.iter().map(|p| unescape(p.trim())).collect()
}

impl CritParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn expr(&mut self) -> Result<Crit, String> {
        let mut terms = vec![self.term()?];
        let mut op: Option<String> = None;
        loop {
            self.skip_ws();
            let rest = std::str::from_utf8(&self.s[self.i..]).unwrap_or("");
            let word =
                rest.split(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("").to_ascii_lowercase();
            if word != "and" && word != "or" {
                break;
            }
            if op.as_ref().is_some_and(|o| *o != word) {
                return Err("mixing and/or needs parentheses".into());
            }
            self.i += word.len();
            op = Some(word);
            terms.push(self.term()?);
        }
        Ok(match (op.as_deref(), terms.len()) {
            (_, 1) => terms.remove(0),
            (Some("or"), _) => Crit::Any(terms),
            _ => Crit::All(terms),
        })
    }

    fn term(&mut self) -> Result<Crit, String> {
        self.skip_ws();
        if self.s.get(self.i) != Some(&b'(') {
            return Err("expected (".into());
        }
        self.i += 1;
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'(') {
            let inner = self.expr()?;
            self.skip_ws();
            if self.s.get(self.i) != Some(&b')') {
                return Err("expected )".into());
            }
            self.i += 1;
            return Ok(inner);
        }
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != b')' {
            if self.s[self.i] == b'\\' {
                self.i += 1;
            }
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err("unbalanced parentheses".into());
        }
        let body = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?.to_owned();
        self.i += 1;
        let mut parts = body.splitn(3, ':');
        let (Some(field), Some(op), Some(raw)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a condition is (field:operator:value)".into());
        };
        self.conditions += 1;
        Ok(Crit::Cond {
            field: field.trim().to_owned(),
            op: op.trim().to_ascii_lowercase(),
            raw: raw.to_owned(),
        })
    }
}

fn parse_criteria(s: &str) -> Result<(Crit, usize), String> {
    let mut p = CritParser { s: s.as_bytes(), i: 0, conditions: 0 };
    let c = p.expr()?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("unexpected text after the criteria".into());
    }
    Ok((c, p.conditions))
}

const SEARCH_OPS: &[&str] = &[
    "equals",
    "not_equal",
    "starts_with",
    "in",
    "greater_than",
    "greater_equal",
    "less_than",
    "less_equal",
    "between",
];

fn check_crit(m: Module, c: &Crit) -> Result<(), (String, &'static str)> {
    match c {
        Crit::All(v) | Crit::Any(v) => v.iter().try_for_each(|c| check_crit(m, c)),
        Crit::Cond { field, op, .. } => {
            if !schema::is_readable(m, field) {
                return Err((field.clone(), "invalid field"));
            }
            if !SEARCH_OPS.contains(&op.as_str()) {
                return Err((field.clone(), "invalid operator"));
            }
            Ok(())
        }
    }
}

fn eval_crit(m: Module, rec: &Record, c: &Crit) -> bool {
    match c {
        Crit::All(v) => v.iter().all(|c| eval_crit(m, rec, c)),
        Crit::Any(v) => v.iter().any(|c| eval_crit(m, rec, c)),
        Crit::Cond { field, op, raw } => {
            let value = value_of(m, rec, field);
            let values = split_values(raw);
            let one = unescape(raw.trim());
            let contains = |v: &Cmp| match v {
                Cmp::Text(s) if !is_picklist(m, field) => s.to_lowercase().contains(&one.to_lowercase()),
                other => equal(other, &one),
            };
            match (op.as_str(), value) {
                ("equals", Some(v)) => contains(&v),
                ("not_equal", Some(v)) => !contains(&v),
                ("not_equal", None) => true,
                ("starts_with", Some(Cmp::Text(s))) => s.to_lowercase().starts_with(&one.to_lowercase()),
                ("in", Some(v)) => values.iter().any(|l| equal(&v, l)),
                ("greater_than", Some(v)) => order(&v, &one) == Some(Ordering::Greater),
                ("greater_equal", Some(v)) => {
                    matches!(order(&v, &one), Some(Ordering::Greater | Ordering::Equal))
                }
                ("less_than", Some(v)) => order(&v, &one) == Some(Ordering::Less),
                ("less_equal", Some(v)) => matches!(order(&v, &one), Some(Ordering::Less | Ordering::Equal)),
                ("between", Some(v)) if values.len() == 2 => {
                    matches!(order(&v, &values[0]), Some(Ordering::Greater | Ordering::Equal))
                        && matches!(order(&v, &values[1]), Some(Ordering::Less | Ordering::Equal))
                }
                _ => false,
            }
        }
    }
}

fn text_fields(m: Module, pred: impl Fn(FieldType) -> bool) -> Vec<&'static str> {
    schema::fields(m).iter().filter(|d| pred(d.ty)).map(|d| d.api_name).collect()
}

enum SearchBy {
    Criteria(Crit),
    Email(String),
    Phone(String),
    Word(String),
}

fn matches(m: Module, rec: &Record, by: &SearchBy) -> bool {
    let any_contains = |fields: &[&str], needle: &str| {
        fields.iter().any(|f| rec.text(f).is_some_and(|v| v.to_lowercase().contains(needle)))
    };
    match by {
        SearchBy::Criteria(c) => eval_crit(m, rec, c),
        SearchBy::Email(e) => any_contains(&text_fields(m, |t| t == FieldType::Email), &e.to_lowercase()),
        SearchBy::Phone(p) => {
            let digits: String = p.chars().filter(char::is_ascii_digit).collect();
            text_fields(m, |t| t == FieldType::Phone).iter().any(|f| {
                rec.text(f).is_some_and(|v| {
                    v.chars().filter(char::is_ascii_digit).collect::<String>().contains(&digits)
                })
            })
        }
        SearchBy::Word(w) => {
            let w = w.to_lowercase();
            rec.full_name().is_some_and(|n| n.to_lowercase().contains(&w))
                || any_contains(
                    &text_fields(m, |t| {
                        matches!(
                            t,
                            FieldType::Text(_)
                                | FieldType::TextArea(_)
                                | FieldType::Email
                                | FieldType::Phone
                                | FieldType::Website
                                | FieldType::Picklist(_)
                        )
                    }),
                    &w,
                )
        }
    }
}

fn search_sort_key(m: Module, r: &Record, sort_by: &str) -> Option<Cmp> {
    value_of(m, r, sort_by)
}

/// `GET /{module}/search`.
pub(crate) async fn search(
    State(h): State<Host>,
    Path(module): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let (a, m) = match begin(&h, &headers, &module, Access::Read, true, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = format!("{}.search", m.api_name());
    let p = Params::parse(q.as_deref());
    let settings = h.zoho.current_settings();
    let now = h.zoho.state.clock.now_ms();
    let r = (|| -> Result<Response, Response> {
        let by = if let Some(c) = p.get("criteria") {
            let (crit, n) = parse_criteria(c).map_err(|reason| {
                errors::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    "invalid query formed",
                    json!({"reason": reason, "param_name": "criteria"}),
                )
            })?;
            if n > CRITERIA_MAX {
                return Err(errors::error(
                    StatusCode::BAD_REQUEST,
                    "LIMIT_EXCEEDED",
                    "limit exceeded",
                    json!({"limit": CRITERIA_MAX, "param_name": "criteria"}),
                ));
            }
            check_crit(m, &crit).map_err(|(field, reason)| {
                errors::error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    "invalid query formed",
                    json!({"reason": reason, "api_name": field}),
                )
            })?;
            SearchBy::Criteria(crit)
        } else if let Some(e) = p.get("email") {
            SearchBy::Email(e.trim().to_owned())
        } else if let Some(ph) = p.get("phone") {
            if ph.trim().len() < 3 {
                return Err(errors::invalid_param("phone", "invalid data"));
            }
            SearchBy::Phone(ph.to_owned())
        } else if let Some(w) = p.get("word") {
            if w.trim().chars().count() < 2 {
                return Err(errors::invalid_param("word", "invalid data"));
            }
            SearchBy::Word(w.trim().to_owned())
        } else {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "EXPECTED_PARAM_MISSING",
                "One of the expected parameter is missing",
                json!({"param_names": ["criteria", "email", "phone", "word"]}),
            ));
        };
        let per_page = match p.get("per_page").map(str::parse::<usize>) {
            None => 200,
            Some(Ok(n)) if (1..=200).contains(&n) => n,
            Some(_) => return Err(errors::invalid_param("per_page", "invalid data")),
        };
        let page = match p.get("page").map(str::parse::<usize>) {
            None => 1,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => return Err(errors::invalid_param("page", "invalid data")),
        };
        if page * per_page > SEARCH_LIMIT {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "LIMIT_REACHED",
                "search results exceeded the maximum limit",
                json!({"limit": SEARCH_LIMIT}),
            ));
        }
        let sort_by = p.get("sort_by").unwrap_or("id").to_owned();
        if !schema::is_readable(m, &sort_by) {
            return Err(errors::invalid_param("sort_by", "invalid data"));
        }
        let asc = match p.get("sort_order") {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(_) => return Err(errors::invalid_param("sort_order", "invalid data")),
        };
        let sel = match p.get("fields") {
            Some(raw) => {
                let names: Vec<String> =
                    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                if let Some(bad) = names.iter().find(|n| !schema::is_readable(m, n)) {
                    return Err(errors::error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_DATA",
                        "invalid data",
                        json!({"param_name": "fields", "api_name": bad}),
                    ));
                }
                Selection::Fields(names)
            }
            None => Selection::All,
        };
        let account = a.account();
        let d = account.data.read();
        let t = d.table(m);
        let lag = settings.search_index_lag_ms;
        let mut hits: Vec<&Record> = t
            .live
            .values()
            .filter(|r| lag <= 0 || now - r.modified_at >= lag)
            .filter(|r| matches(m, r, &by))
            .collect();
        hits.sort_by(|x, y| {
            let o = match (search_sort_key(m, x, &sort_by), search_sort_key(m, y, &sort_by)) {
                (Some(Cmp::Num(a)), Some(Cmp::Num(b))) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
                (Some(Cmp::Time(a)), Some(Cmp::Time(b))) => a.cmp(&b),
                (Some(Cmp::Id(_)), Some(Cmp::Id(_))) if sort_by == "id" => x.id.cmp(&y.id),
                (Some(a), Some(b)) => format!("{a:?}").cmp(&format!("{b:?}")),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            };
            let o = o.then(x.id.cmp(&y.id));
            if asc { o } else { o.reverse() }
        });
        let start = (page - 1) * per_page;
        let rows: Vec<Value> = hits
            .iter()
            .skip(start)
            .take(per_page)
            .map(|r| view::render(&d, account.tz, m, r, &sel))
            .collect();
        if rows.is_empty() {
            return Ok(errors::no_content());
        }
        let more = hits.len() > start + rows.len();
        let count = rows.len();
        Ok(json_response(
            StatusCode::OK,
            &json!({"data": rows, "info": {
                "per_page": per_page, "count": count, "page": page, "more_records": more,
                "sort_by": sort_by, "sort_order": if asc { "asc" } else { "desc" },
            }}),
        ))
    })();
    match r {
        Ok(r) | Err(r) => a.finish(r, &op),
    }
}

// ----------------------------------------------------------------------------------------------
// COQL
// ----------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Op(String),
    LParen,
    RParen,
    Comma,
    Star,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Word(s) | Tok::Str(s) | Tok::Num(s) | Tok::Op(s) => s.clone(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
            Tok::Star => "*".into(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

fn tokenize(q: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("'".into()),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        s.push(*other);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$' | '.')) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            match two.as_str() {
                ">=" | "<=" | "!=" | "<>" => {
                    out.push(Tok::Op(if two == "<>" { "!=".into() } else { two }));
                    i += 2;
                    continue;
                }
                _ => {}
            }
            out.push(match c {
                '=' | '<' | '>' => Tok::Op(c.to_string()),
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                other => return Err(other.to_string()),
            });
            i += 1;
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Cmp { col: String, op: String, value: Option<String> },
    Like { col: String, pattern: String, negate: bool },
    In { col: String, values: Vec<String>, negate: bool },
    Null { col: String, negate: bool },
    Between { col: String, lo: String, hi: String, negate: bool },
}

#[derive(Debug)]
struct Query {
    columns: Vec<String>,
    module: String,
    filter: Option<Cond>,
    order: Vec<(String, bool)>,
    offset: usize,
    limit: usize,
}

/// A COQL error: `SYNTAX_ERROR` near a token.
enum QErr {
    Syntax(String),
}

struct QParser {
    toks: Vec<Tok>,
    i: usize,
}

impl QParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn next(&mut self) -> Result<Tok, QErr> {
        let t = self.toks.get(self.i).cloned().ok_or_else(|| QErr::Syntax("end of query".into()))?;
        self.i += 1;
        Ok(t)
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), QErr> {
        let t = self.next()?;
        if t.is_kw(kw) { Ok(()) } else { Err(QErr::Syntax(t.text())) }
    }

    fn ident(&mut self) -> Result<String, QErr> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            other => Err(QErr::Syntax(other.text())),
        }
    }

    fn value(&mut self) -> Result<Option<String>, QErr> {
        match self.next()? {
            Tok::Str(s) | Tok::Num(s) => Ok(Some(s)),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Ok(None),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                Ok(Some(w.to_ascii_lowercase()))
            }
            other => Err(QErr::Syntax(other.text())),
        }
    }

    fn query(&mut self) -> Result<Query, QErr> {
        self.expect_kw("select")?;
        let mut columns = Vec::new();
        loop {
            match self.next()? {
                Tok::Word(w) if !w.eq_ignore_ascii_case("from") => columns.push(w),
                other => return Err(QErr::Syntax(other.text())),
            }
            if self.peek() == Some(&Tok::Comma) {
                self.i += 1;
            } else {
                break;
            }
        }
        self.expect_kw("from")?;
        let module = self.ident()?;
        let mut q =
            Query { columns, module, filter: None, order: Vec::new(), offset: 0, limit: COQL_LIMIT_DEFAULT };
        if self.peek().is_some_and(|t| t.is_kw("where")) {
            self.i += 1;
            q.filter = Some(self.or_expr()?);
        }
        if self.peek().is_some_and(|t| t.is_kw("order")) {
            self.i += 1;
            self.expect_kw("by")?;
            loop {
                let col = self.ident()?;
                let mut asc = true;
                if self.peek().is_some_and(|t| t.is_kw("asc")) {
                    self.i += 1;
                } else if self.peek().is_some_and(|t| t.is_kw("desc")) {
                    self.i += 1;
                    asc = false;
                }
                q.order.push((col, asc));
                if self.peek() == Some(&Tok::Comma) {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        if self.peek().is_some_and(|t| t.is_kw("limit")) {
            self.i += 1;
            let first = self.number()?;
            if self.peek() == Some(&Tok::Comma) {
                self.i += 1;
                q.offset = first;
                q.limit = self.number()?;
            } else {
                q.limit = first;
                if self.peek().is_some_and(|t| t.is_kw("offset")) {
                    self.i += 1;
                    q.offset = self.number()?;
                }
            }
        }
        if let Some(t) = self.peek() {
            return Err(QErr::Syntax(t.text()));
        }
        Ok(q)
    }

    fn number(&mut self) -> Result<usize, QErr> {
        match self.next()? {
            Tok::Num(n) => n.parse().map_err(|_| QErr::Syntax(n)),
            other => Err(QErr::Syntax(other.text())),
        }
    }

    fn or_expr(&mut self) -> Result<Cond, QErr> {
        let mut terms = vec![self.and_expr()?];
        while self.peek().is_some_and(|t| t.is_kw("or")) {
            self.i += 1;
            terms.push(self.and_expr()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Cond::Or(terms) })
    }

    fn and_expr(&mut self) -> Result<Cond, QErr> {
        let mut terms = vec![self.atom()?];
        while self.peek().is_some_and(|t| t.is_kw("and")) {
            self.i += 1;
            terms.push(self.atom()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Cond::And(terms) })
    }

    fn atom(&mut self) -> Result<Cond, QErr> {
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let inner = self.or_expr()?;
            match self.next()? {
                Tok::RParen => return Ok(inner),
                other => return Err(QErr::Syntax(other.text())),
            }
        }
        let col = self.ident()?;
        let mut negate = false;
        if self.peek().is_some_and(|t| t.is_kw("not")) {
            self.i += 1;
            negate = true;
        }
        match self.next()? {
            Tok::Op(op) if !negate => Ok(Cond::Cmp { col, op, value: self.value()? }),
            t if t.is_kw("like") => match self.value()? {
                Some(pattern) => Ok(Cond::Like { col, pattern, negate }),
                None => Err(QErr::Syntax("null".into())),
            },
            t if t.is_kw("in") => {
                match self.next()? {
                    Tok::LParen => {}
                    other => return Err(QErr::Syntax(other.text())),
                }
                let mut values = Vec::new();
                loop {
                    values.push(self.value()?.unwrap_or_default());
                    match self.next()? {
                        Tok::Comma => {}
                        Tok::RParen => break,
                        other => return Err(QErr::Syntax(other.text())),
                    }
                }
                Ok(Cond::In { col, values, negate })
            }
            t if t.is_kw("between") => {
                let lo = self.value()?.unwrap_or_default();
                self.expect_kw("and")?;
                let hi = self.value()?.unwrap_or_default();
                Ok(Cond::Between { col, lo, hi, negate })
            }
            t if t.is_kw("is") && !negate => {
                let mut neg = false;
                if self.peek().is_some_and(|t| t.is_kw("not")) {
                    self.i += 1;
                    neg = true;
                }
                self.expect_kw("null")?;
                Ok(Cond::Null { col, negate: neg })
            }
            other => Err(QErr::Syntax(other.text())),
        }
    }
}

fn cond_columns<'a>(c: &'a Cond, out: &mut Vec<&'a str>) {
    match c {
        Cond::And(v) | Cond::Or(v) => v.iter().for_each(|c| cond_columns(c, out)),
        Cond::Cmp { col, .. }
        | Cond::Like { col, .. }
        | Cond::In { col, .. }
        | Cond::Null { col, .. }
        | Cond::Between { col, .. } => out.push(col),
    }
}

fn like(value: &str, pattern: &str) -> bool {
    fn go(v: &[char], p: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('%') => (0..=v.len()).any(|k| go(&v[k..], &p[1..])),
            Some('_') => !v.is_empty() && go(&v[1..], &p[1..]),
            Some(c) => v.first().is_some_and(|x| x == c) && go(&v[1..], &p[1..]),
        }
    }
    let v: Vec<char> = value.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    go(&v, &p)
}

fn eval(m: Module, r: &Record, c: &Cond) -> bool {
    match c {
        Cond::And(v) => v.iter().all(|c| eval(m, r, c)),
        Cond::Or(v) => v.iter().any(|c| eval(m, r, c)),
        Cond::Cmp { col, op, value } => {
            let v = value_of(m, r, col);
            match (v, value) {
                (None, None) => op == "=",
                (Some(_), None) => op == "!=",
                (None, Some(_)) => op == "!=",
                (Some(v), Some(lit)) => {
                    let o = order(&v, lit);
                    match op.as_str() {
                        "=" => o == Some(Ordering::Equal),
                        "!=" => o != Some(Ordering::Equal),
                        ">" => o == Some(Ordering::Greater),
                        ">=" => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
                        "<" => o == Some(Ordering::Less),
                        "<=" => matches!(o, Some(Ordering::Less | Ordering::Equal)),
                        _ => false,
                    }
                }
            }
        }
        Cond::Like { col, pattern, negate } => {
            let hit = match value_of(m, r, col) {
                Some(Cmp::Text(s)) | Some(Cmp::Id(s)) | Some(Cmp::Date(s)) => like(&s, pattern),
                _ => false,
            };
            hit != *negate
        }
        Cond::In { col, values, negate } => {
            let hit = value_of(m, r, col).is_some_and(|v| values.iter().any(|l| equal(&v, l)));
            hit != *negate
        }
        Cond::Null { col, negate } => value_of(m, r, col).is_none() != *negate,
        Cond::Between { col, lo, hi, negate } => {
            let hit = value_of(m, r, col).is_some_and(|v| {
                matches!(order(&v, lo), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(order(&v, hi), Some(Ordering::Less | Ordering::Equal))
            });
            hit != *negate
        }
    }
}

fn compare_records(m: Module, x: &Record, y: &Record, order_by: &[(String, bool)]) -> Ordering {
    for (col, asc) in order_by {
        let o = match (value_of(m, x, col), value_of(m, y, col)) {
            (Some(Cmp::Num(a)), Some(Cmp::Num(b))) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Some(Cmp::Time(a)), Some(Cmp::Time(b))) => a.cmp(&b),
            (Some(Cmp::Id(_)), Some(Cmp::Id(_))) if col == "id" => x.id.cmp(&y.id),
            (Some(Cmp::Text(a)), Some(Cmp::Text(b))) => a.to_lowercase().cmp(&b.to_lowercase()),
            (Some(a), Some(b)) => format!("{a:?}").cmp(&format!("{b:?}")),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        let o = if *asc { o } else { o.reverse() };
        if o != Ordering::Equal {
            return o;
        }
    }
    x.id.cmp(&y.id)
}

fn run_query(d: &AccountData, tz: chrono_tz::Tz, q: &Query, m: Module) -> (Vec<Value>, bool) {
    let t = d.table(m);
    let mut hits: Vec<&Record> =
        t.live.values().filter(|r| q.filter.as_ref().is_none_or(|c| eval(m, r, c))).collect();
    hits.sort_by(|x, y| compare_records(m, x, y, &q.order));
    let sel = Selection::Fields(q.columns.iter().filter(|c| *c != "id").cloned().collect());
    let rows: Vec<Value> =
        hits.iter().skip(q.offset).take(q.limit).map(|r| view::render(d, tz, m, r, &sel)).collect();
    let more = hits.len() > q.offset + rows.len();
    (rows, more)
}

/// `POST /coql`.
pub(crate) async fn coql(State(h): State<Host>, headers: HeaderMap, body: Bytes) -> Response {
    let a = match h
        .zoho
        .admit(h.dc, &headers, Need { scope: super::ScopeNeed::Coql, heavy: true, cost: 1 })
        .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let op = "coql.query";
    let syntax = |near: String| {
        errors::error(
            StatusCode::BAD_REQUEST,
            "SYNTAX_ERROR",
            "error occured while parsing the query",
            json!({"near": near}),
        )
    };
    let r = (|| -> Result<Response, Response> {
        let v: Value =
            serde_json::from_slice(&body).map_err(|_| errors::invalid_body("body is not a valid JSON"))?;
        let Some(text) = v.get("select_query").and_then(Value::as_str) else {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "MANDATORY_NOT_FOUND",
                "required field not found",
                json!({"api_name": "select_query"}),
            ));
        };
        let toks = tokenize(text).map_err(syntax)?;
        let q = QParser { toks, i: 0 }.query().map_err(|QErr::Syntax(near)| syntax(near))?;
        let Some(m) = Module::parse(&q.module) else {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                "invalid module",
                json!({"module": q.module}),
            ));
        };
        if !schema::scope_allows(&a.authed.scopes, m, Access::Read) {
            return Err(errors::scope_mismatch());
        }
        let mut cols: Vec<&str> = q.columns.iter().map(String::as_str).collect();
        if let Some(f) = &q.filter {
            cond_columns(f, &mut cols);
        }
        cols.extend(q.order.iter().map(|(c, _)| c.as_str()));
        if let Some(bad) = cols.iter().find(|c| !schema::is_readable(m, c)) {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                "unsupported column",
                json!({"column_name": bad}),
            ));
        }
        if q.columns.len() > 50 {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "LIMIT_EXCEEDED",
                "limit exceeded",
                json!({"limit": 50}),
            ));
        }
        if q.limit == 0 || q.limit > COQL_LIMIT_MAX {
            return Err(errors::error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                "invalid limit",
                json!({"limit": q.limit.to_string()}),
            ));
        }
        let account = a.account();
        let d = account.data.read();
        let (rows, more) = run_query(&d, account.tz, &q, m);
        if rows.is_empty() {
            return Ok(errors::no_content());
        }
        let count = rows.len();
        Ok(json_response(
            StatusCode::OK,
            &json!({"data": rows, "info": {"count": count, "more_records": more}}),
        ))
    })();
    match r {
        Ok(r) | Err(r) => a.finish(r, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_parse_with_escapes_and_groups() {
        let (c, n) =
            parse_criteria("((Last_Name:equals:Burns\\,B) and (First_Name:starts_with:M))").expect("parses");
        assert_eq!(n, 2);
        match c {
            Crit::All(v) => match &v[0] {
                Crit::Cond { field, op, raw } => {
                    assert_eq!((field.as_str(), op.as_str()), ("Last_Name", "equals"));
                    assert_eq!(unescape(raw), "Burns,B");
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_criteria("(A:equals:1) and (B:equals:2) or (C:equals:3)").is_err());
        assert!(parse_criteria("(Modified_Time:greater_than:2025-01-01T00:00:00+00:00)").is_ok());
    }

    #[test]
    fn coql_parses_the_documented_shapes() {
        let q = QParser {
            toks: tokenize(
                "select Last_Name, Email from Contacts where (Email = 'a\\'b@x.com' or Email is null) and Modified_Time >= '2025-01-01T00:00:00+00:00' order by Modified_Time asc limit 10, 200",
            )
            .expect("tokens"),
            i: 0,
        }
        .query()
        .ok()
        .expect("parses");
        assert_eq!(q.columns, vec!["Last_Name", "Email"]);
        assert_eq!((q.offset, q.limit), (10, 200));
        assert!(matches!(q.filter, Some(Cond::And(_))));
        assert!(like("CrmFleet-42", "crmfleet%"));
        assert!(!like("abc", "a_"));
    }
}
