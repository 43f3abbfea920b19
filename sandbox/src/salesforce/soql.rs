//! The SOQL subset the imitation understands (`crm-providers.md` §7.3), parsed, type-checked against
//! the schema and executed against a [`Table`].
//!
//! Grammar: `SELECT field[, field…] FROM sObject [WHERE condition] [ORDER BY field [ASC|DESC]
//! [NULLS FIRST|LAST][, …]] [LIMIT n] [OFFSET n]`, where a condition combines comparisons (`=`, `!=`,
//! `<>`, `<`, `<=`, `>`, `>=`), `IN (…)`, `NOT IN (…)` and `LIKE` with `AND`, `OR`, `NOT` and
//! parentheses. Literals: `'strings'` (backslash escapes), unquoted date-times
//! (`2025-01-01T00:00:00Z`, `…+01:00`, optional fractional seconds), dates (`2025-01-01`), numbers,
//! `true`, `false`, `null`. Keywords and field names are case-insensitive; string comparisons are
//! case-insensitive, id comparisons exact (15-character ids are accepted).
//!
//! Errors come back as Salesforce words them, with the query echoed and a caret under the offending
//! token: `MALFORMED_QUERY` (syntax), `INVALID_TYPE` (unknown object), `INVALID_FIELD` (unknown field,
//! literal of the wrong type, unfilterable field), `INVALID_QUERY_FILTER_OPERATOR` (bad id literal).
//!
//! Invariant: a compiled [`Query`] only names fields of its object, and every literal already has
//! the type its field needs, so execution cannot fail.

use super::schema::{self, FieldDef, FieldType, SObject, Val};
use super::store::{RECYCLE_BIN_MS, Record, Table};
use crate::clock::Millis;
use chrono::NaiveDate;
use std::cmp::Ordering;
use std::sync::Arc;

/// A SOQL error: Salesforce's error code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoqlError {
    /// `MALFORMED_QUERY`, `INVALID_TYPE`, `INVALID_FIELD`, `INVALID_QUERY_FILTER_OPERATOR`.
    pub code: &'static str,
    /// The message, with the query echoed and the position marked.
    pub message: String,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A typed literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    /// Text (or an id, already normalised to 18 characters for id fields).
    Str(String),
    /// A number.
    Num(f64),
    /// A date-time, epoch milliseconds.
    DateTime(Millis),
    /// A date.
    Date(NaiveDate),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
}

/// A compiled condition.
#[derive(Clone, Debug)]
pub enum Cond {
    /// All of them.
    And(Vec<Cond>),
    /// Any of them.
    Or(Vec<Cond>),
    /// The negation.
    Not(Box<Cond>),
    /// `field op literal`.
    Cmp {
        /// The field.
        field: &'static FieldDef,
        /// The operator.
        op: Op,
        /// The literal.
        lit: Lit,
    },
    /// `field [NOT] IN (literals)`.
    In {
        /// The field.
        field: &'static FieldDef,
        /// `NOT IN`.
        negated: bool,
        /// The literals.
        lits: Vec<Lit>,
    },
    /// `field LIKE 'pattern'` (`%` and `_` wildcards, case-insensitive).
    Like {
        /// The field.
        field: &'static FieldDef,
        /// The pattern, lower-cased.
        pattern: String,
    },
}

/// One `ORDER BY` key.
#[derive(Clone, Copy, Debug)]
pub struct OrderKey {
    /// The field.
    pub field: &'static FieldDef,
    /// Descending.
    pub desc: bool,
    /// Nulls sort last (default: first when ascending, last when descending).
    pub nulls_last: bool,
}

/// A compiled query.
#[derive(Clone, Debug)]
pub struct Query {
    /// The object queried.
    pub object: SObject,
    /// The selected fields, in order, canonical names.
    pub fields: Vec<&'static FieldDef>,
    /// The `WHERE` condition.
    pub filter: Option<Cond>,
    /// The `ORDER BY` keys.
    pub order: Vec<OrderKey>,
    /// `LIMIT`.
    pub limit: Option<usize>,
    /// `OFFSET`.
    pub offset: usize,
}

/// Largest `OFFSET` SOQL allows.
pub const MAX_OFFSET: usize = 2000;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Lit(String),
    Comma,
    LParen,
    RParen,
    Op(&'static str),
    Eof,
}

impl Tok {
    fn shown(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Lit(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Comma => ",".into(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Op(o) => (*o).into(),
            Tok::Eof => "<EOF>".into(),
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
}

impl<'a> Lexer<'a> {
    fn run(src: &'a str) -> Result<Vec<(Tok, usize)>, SoqlError> {
        let mut lx = Lexer { src, toks: Vec::new() };
        let chars: Vec<(usize, char)> = src.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (pos, c) = chars[i];
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            match c {
                ',' => {
                    lx.toks.push((Tok::Comma, pos));
                    i += 1;
                }
                '(' => {
                    lx.toks.push((Tok::LParen, pos));
                    i += 1;
                }
                ')' => {
                    lx.toks.push((Tok::RParen, pos));
                    i += 1;
                }
                '=' => {
                    lx.toks.push((Tok::Op("="), pos));
                    i += 1;
                }
                '!' | '<' | '>' => {
                    let next = chars.get(i + 1).map(|x| x.1);
                    let (op, len) = match (c, next) {
                        ('!', Some('=')) => ("!=", 2),
                        ('<', Some('>')) => ("<>", 2),
                        ('<', Some('=')) => ("<=", 2),
                        ('>', Some('=')) => (">=", 2),
                        ('<', _) => ("<", 1),
                        ('>', _) => (">", 1),
                        _ => return Err(malformed(src, pos, &c.to_string())),
                    };
                    lx.toks.push((Tok::Op(op), pos));
                    i += len;
                }
                '\'' => {
                    let mut s = String::new();
                    let mut j = i + 1;
                    loop {
                        let Some(&(_, ch)) = chars.get(j) else {
                            return Err(malformed(src, pos, "'"));
                        };
                        match ch {
                            '\\' => {
                                let Some(&(_, e)) = chars.get(j + 1) else {
                                    return Err(malformed(src, pos, "'"));
                                };
                                s.push(match e {
                                    'n' => '\n',
                                    't' => '\t',
                                    'r' => '\r',
                                    'b' => '\u{8}',
                                    'f' => '\u{c}',
                                    '\'' | '"' | '\\' | '%' | '_' => e,
                                    _ => {
                                        return Err(SoqlError {
                                            code: "MALFORMED_QUERY",
                                            message: positioned(
                                                src,
                                                chars[j].0,
                                                "Invalid string literal: illegal escape sequence",
                                            ),
                                        });
                                    }
                                });
                                j += 2;
                            }
                            '\'' => break,
                            other => {
                                s.push(other);
                                j += 1;
                            }
                        }
                    }
                    lx.toks.push((Tok::Str(s), pos));
                    i = j + 1;
                }
                c if c.is_ascii_digit()
                    || (c == '-' && chars.get(i + 1).is_some_and(|x| x.1.is_ascii_digit())) =>
                {
                    let mut j = i + 1;
                    while chars
                        .get(j)
                        .is_some_and(|x| x.1.is_ascii_alphanumeric() || matches!(x.1, ':' | '.' | '+' | '-'))
                    {
                        j += 1;
                    }
                    let end = chars.get(j).map(|x| x.0).unwrap_or(src.len());
                    lx.toks.push((Tok::Lit(src[pos..end].to_owned()), pos));
                    i = j;
                }
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let mut j = i + 1;
                    while chars
                        .get(j)
                        .is_some_and(|x| x.1.is_ascii_alphanumeric() || matches!(x.1, '_' | '.'))
                    {
                        j += 1;
                    }
                    let end = chars.get(j).map(|x| x.0).unwrap_or(src.len());
                    lx.toks.push((Tok::Ident(src[pos..end].to_owned()), pos));
                    i = j;
                }
                other => return Err(malformed(src, pos, &other.to_string())),
            }
        }
        lx.toks.push((Tok::Eof, lx.src.len()));
        Ok(lx.toks)
    }
}

/// The message body Salesforce gives SOQL errors: the query, a caret under the position, the row and
/// column, then the detail.
fn positioned(src: &str, pos: usize, detail: &str) -> String {
    let before = &src[..pos.min(src.len())];
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    let line_end = src[line_start..].find('\n').map(|i| line_start + i).unwrap_or(src.len());
    let line = &src[line_start..line_end];
    format!("\n{line}\n{}^\nERROR at Row:{row}:Column:{col}\n{detail}", " ".repeat(col - 1))
}

fn malformed(src: &str, pos: usize, token: &str) -> SoqlError {
    SoqlError {
        code: "MALFORMED_QUERY",
        message: positioned(src, pos, &format!("unexpected token: {token}")),
    }
}

/// Decides whether a field is switched off in the org (an org-level schema toggle).
pub type Hidden<'h> = &'h dyn Fn(SObject, &FieldDef) -> bool;

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    object: SObject,
    hidden: Hidden<'a>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        self.i += 1;
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn kw(&mut self, kw: &str) -> Result<(), SoqlError> {
        if self.is_kw(kw) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> SoqlError {
        malformed(self.src, self.pos(), &self.peek().shown())
    }

    fn field(&self, name: &str, pos: usize) -> Result<&'static FieldDef, SoqlError> {
        if name.contains('.') {
            let rel = name.split('.').next().unwrap_or(name);
            return Err(SoqlError {
                code: "INVALID_FIELD",
                message: positioned(
                    self.src,
                    pos,
                    &format!(
                        "Didn't understand relationship '{rel}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
                    ),
                ),
            });
        }
        self.object.field(name).filter(|d| !(self.hidden)(self.object, d)).ok_or_else(|| SoqlError {
            code: "INVALID_FIELD",
            message: positioned(
                self.src,
                pos,
                &format!(
                    "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                    self.object.name()
                ),
            ),
        })
    }

    fn cond(&mut self) -> Result<Cond, SoqlError> {
        let mut parts = vec![self.and()?];
        while self.is_kw("OR") {
            self.i += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Cond::Or(parts) })
    }

    fn and(&mut self) -> Result<Cond, SoqlError> {
        let mut parts = vec![self.unary()?];
        while self.is_kw("AND") {
            self.i += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Cond::And(parts) })
    }

    fn unary(&mut self) -> Result<Cond, SoqlError> {
        if self.is_kw("NOT") {
            self.i += 1;
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if *self.peek() == Tok::LParen {
            self.i += 1;
            let c = self.cond()?;
            if *self.peek() != Tok::RParen {
                return Err(self.unexpected());
            }
            self.i += 1;
            return Ok(c);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Cond, SoqlError> {
        let (tok, fpos) = self.next();
        let Tok::Ident(name) = tok else {
            return Err(malformed(self.src, fpos, &tok.shown()));
        };
        let field = self.field(&name, fpos)?;
        if matches!(field.ty, FieldType::TextArea(_)) {
            return Err(SoqlError {
                code: "INVALID_FIELD",
                message: positioned(
                    self.src,
                    fpos,
                    &format!("field '{}' can not be filtered in a query call", field.name),
                ),
            });
        }
        if self.is_kw("LIKE") {
            self.i += 1;
            let (t, p) = self.next();
            let Tok::Str(pattern) = t else {
                return Err(malformed(self.src, p, &t.shown()));
            };
            if !field.ty.is_text() {
                return Err(SoqlError {
                    code: "INVALID_FIELD",
                    message: positioned(
                        self.src,
                        fpos,
                        &format!("invalid operator on {} field: {}", field.ty.soap_name(), field.name),
                    ),
                });
            }
            return Ok(Cond::Like { field, pattern: pattern.to_lowercase() });
        }
        let negated = if self.is_kw("NOT") {
            self.i += 1;
            if !self.is_kw("IN") {
                return Err(self.unexpected());
            }
            true
        } else {
            false
        };
        if self.is_kw("IN") {
            self.i += 1;
            if *self.peek() != Tok::LParen {
                return Err(self.unexpected());
            }
            self.i += 1;
            let mut lits = Vec::new();
            loop {
                lits.push(self.literal(field)?);
                match self.next() {
                    (Tok::Comma, _) => continue,
                    (Tok::RParen, _) => break,
                    (t, p) => return Err(malformed(self.src, p, &t.shown())),
                }
            }
            return Ok(Cond::In { field, negated, lits });
        }
        let (t, p) = self.next();
        let op = match t {
            Tok::Op("=") => Op::Eq,
            Tok::Op("!=") | Tok::Op("<>") => Op::Ne,
            Tok::Op("<") => Op::Lt,
            Tok::Op("<=") => Op::Le,
            Tok::Op(">") => Op::Gt,
            Tok::Op(">=") => Op::Ge,
            other => return Err(malformed(self.src, p, &other.shown())),
        };
        let lit = self.literal(field)?;
        if lit == Lit::Null && !matches!(op, Op::Eq | Op::Ne) {
            return Err(SoqlError {
                code: "MALFORMED_QUERY",
                message: positioned(self.src, p, "invalid operator for null"),
            });
        }
        Ok(Cond::Cmp { field, op, lit })
    }

    /// Reads a literal and checks it fits `field`'s type, in Salesforce's words when it does not.
    fn literal(&mut self, field: &'static FieldDef) -> Result<Lit, SoqlError> {
        let (tok, pos) = self.next();
        let wrong = || {
            let ty = field.ty;
            let (kind, quote) = if ty.is_text() || ty.is_id() {
                ("string", "should be enclosed in quotes")
            } else {
                (ty.soap_name(), "should not be enclosed in quotes")
            };
            SoqlError {
                code: "INVALID_FIELD",
                message: positioned(
                    self.src,
                    pos,
                    &format!(
                        "value of filter criterion for field '{}' must be of type {kind} and {quote}",
                        field.name
                    ),
                ),
            }
        };
        let lit = match &tok {
            Tok::Ident(s) if s.eq_ignore_ascii_case("null") => return Ok(Lit::Null),
            Tok::Ident(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
                if field.ty != FieldType::Boolean {
                    return Err(wrong());
                }
                Lit::Bool(s.eq_ignore_ascii_case("true"))
            }
            Tok::Str(s) => {
                if !(field.ty.is_text() || field.ty.is_id()) {
                    return Err(wrong());
                }
                if field.ty.is_id() {
                    match schema::normalize_id(s) {
                        Some(id) => Lit::Str(id),
                        None => {
                            return Err(SoqlError {
                                code: "INVALID_QUERY_FILTER_OPERATOR",
                                message: positioned(self.src, pos, &format!("invalid ID field: {s}")),
                            });
                        }
                    }
                } else {
                    Lit::Str(s.clone())
                }
            }
            Tok::Lit(s) => match field.ty {
                FieldType::DateTime => match parse_datetime_literal(s) {
                    Some(ms) => Lit::DateTime(ms),
                    None => return Err(wrong()),
                },
                FieldType::Date => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    Ok(d) if s.len() == 10 => Lit::Date(d),
                    _ => return Err(wrong()),
                },
                t if t.is_number() => match s.parse::<f64>() {
                    Ok(n) => Lit::Num(n),
                    Err(_) => return Err(wrong()),
                },
                _ => return Err(wrong()),
            },
            other => return Err(malformed(self.src, pos, &other.shown())),
        };
        Ok(lit)
    }
}

/// An unquoted SOQL date-time literal: `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`.
fn parse_datetime_literal(s: &str) -> Option<Millis> {
    if s.len() < 20 || s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}

/// Parses and type-checks a SOQL query against the full schema.
#[cfg(test)]
pub fn parse(src: &str) -> Result<Query, SoqlError> {
    parse_with(src, &|_, _| false)
}

/// Parses and type-checks a SOQL query; fields for which `hidden` answers true do not exist.
pub fn parse_with<'a>(src: &'a str, hidden: Hidden<'a>) -> Result<Query, SoqlError> {
    let toks = Lexer::run(src)?;
    let mut p = Parser { src, toks, i: 0, object: SObject::Account, hidden };
    p.kw("SELECT")?;
    let mut names: Vec<(String, usize)> = Vec::new();
    loop {
        let (t, pos) = p.next();
        match t {
            Tok::Ident(name) if !name.eq_ignore_ascii_case("FROM") => names.push((name, pos)),
            other => return Err(malformed(src, pos, &other.shown())),
        }
        if *p.peek() == Tok::LParen {
            return Err(SoqlError {
                code: "MALFORMED_QUERY",
                message: positioned(
                    src,
                    p.pos(),
                    "aggregate and function calls are not supported by this sandbox",
                ),
            });
        }
        if *p.peek() == Tok::Comma {
            p.i += 1;
            continue;
        }
        break;
    }
    p.kw("FROM")?;
    let (t, opos) = p.next();
    let Tok::Ident(obj_name) = t else {
        return Err(malformed(src, opos, &t.shown()));
    };
    p.object = SObject::parse(&obj_name).ok_or_else(|| SoqlError {
        code: "INVALID_TYPE",
        message: positioned(
            src,
            opos,
            &format!(
                "sObject type '{obj_name}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
            ),
        ),
    })?;
    let mut fields: Vec<&'static FieldDef> = Vec::new();
    for (name, pos) in &names {
        let f = p.field(name, *pos)?;
        if fields.iter().any(|x| x.name == f.name) {
            return Err(SoqlError {
                code: "MALFORMED_QUERY",
                message: positioned(src, *pos, &format!("duplicate field selected: {}", f.name)),
            });
        }
        fields.push(f);
    }
    let filter = if p.is_kw("WHERE") {
        p.i += 1;
        Some(p.cond()?)
    } else {
        None
    };
    let mut order = Vec::new();
    if p.is_kw("ORDER") {
        p.i += 1;
        p.kw("BY")?;
        loop {
            let (t, pos) = p.next();
            let Tok::Ident(name) = t else {
                return Err(malformed(src, pos, &t.shown()));
            };
            let field = p.field(&name, pos)?;
            let mut desc = false;
            if p.is_kw("ASC") {
                p.i += 1;
            } else if p.is_kw("DESC") {
                p.i += 1;
                desc = true;
            }
            let mut nulls_last = desc;
            if p.is_kw("NULLS") {
                p.i += 1;
                if p.is_kw("FIRST") {
                    nulls_last = false;
                } else if p.is_kw("LAST") {
                    nulls_last = true;
                } else {
                    return Err(p.unexpected());
                }
                p.i += 1;
            }
            order.push(OrderKey { field, desc, nulls_last });
            if *p.peek() == Tok::Comma {
                p.i += 1;
                continue;
            }
            break;
        }
    }
    let mut limit = None;
    if p.is_kw("LIMIT") {
        p.i += 1;
        limit = Some(p.count()?);
    }
    let mut offset = 0;
    if p.is_kw("OFFSET") {
        p.i += 1;
        let pos = p.pos();
        offset = p.count()?;
        if offset > MAX_OFFSET {
            return Err(SoqlError {
                code: "NUMBER_OUTSIDE_VALID_RANGE",
                message: positioned(src, pos, &format!("Maximum SOQL offset allowed is {MAX_OFFSET}")),
            });
        }
    }
    if *p.peek() != Tok::Eof {
        return Err(p.unexpected());
    }
    Ok(Query { object: p.object, fields, filter, order, limit, offset })
}

impl Parser<'_> {
    fn count(&mut self) -> Result<usize, SoqlError> {
        let (t, pos) = self.next();
        match &t {
            Tok::Lit(s) => s.parse::<usize>().map_err(|_| malformed(self.src, pos, s)),
            other => Err(malformed(self.src, pos, &other.shown())),
        }
    }
}

fn cmp_val_lit(field: &FieldDef, v: &Val, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Val::Str(a), Lit::Str(b)) => {
            if field.ty.is_id() {
                Some(a.as_str().cmp(b.as_str()))
            } else {
                Some(a.to_lowercase().cmp(&b.to_lowercase()))
            }
        }
        (Val::Num(a), Lit::Num(b)) => a.partial_cmp(b),
        (Val::Int(a), Lit::Num(b)) => (*a as f64).partial_cmp(b),
        (Val::DateTime(a), Lit::DateTime(b)) => Some(a.cmp(b)),
        (Val::Date(a), Lit::Date(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Lit::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether a record satisfies a condition.
pub fn eval(c: &Cond, r: &Record) -> bool {
    match c {
        Cond::And(cs) => cs.iter().all(|c| eval(c, r)),
        Cond::Or(cs) => cs.iter().any(|c| eval(c, r)),
        Cond::Not(c) => !eval(c, r),
        Cond::Cmp { field, op, lit } => {
            let v = value_for(field, r);
            match (lit, v) {
                (Lit::Null, v) => match op {
                    Op::Eq => v.is_none(),
                    _ => v.is_some(),
                },
                (_, None) => *op == Op::Ne,
                (lit, Some(v)) => match cmp_val_lit(field, &v, lit) {
                    None => *op == Op::Ne,
                    Some(o) => match op {
                        Op::Eq => o == Ordering::Equal,
                        Op::Ne => o != Ordering::Equal,
                        Op::Lt => o == Ordering::Less,
                        Op::Le => o != Ordering::Greater,
                        Op::Gt => o == Ordering::Greater,
                        Op::Ge => o != Ordering::Less,
                    },
                },
            }
        }
        Cond::In { field, negated, lits } => {
            let v = value_for(field, r);
            let found = lits.iter().any(|l| match (&v, l) {
                (None, Lit::Null) => true,
                (Some(v), l) => cmp_val_lit(field, v, l) == Some(Ordering::Equal),
                _ => false,
            });
            found != *negated
        }
        Cond::Like { field, pattern } => match value_for(field, r) {
            Some(Val::Str(s)) => like(pattern, &s),
            _ => false,
        },
    }
}

fn value_for(field: &FieldDef, r: &Record) -> Option<Val> {
    match r.get(field.name) {
        None if field.ty == FieldType::Boolean => Some(Val::Bool(false)),
        v => v,
    }
}

/// The lowest `SystemModstamp` a matching record can have, when the condition bounds it (used to
/// scan the modification index instead of the whole table).
pub fn modstamp_floor(c: &Cond) -> Option<Millis> {
    match c {
        Cond::Cmp { field, op: Op::Gt | Op::Ge | Op::Eq, lit: Lit::DateTime(t) }
            if field.name == "SystemModstamp" =>
        {
            Some(*t)
        }
        Cond::And(cs) => cs.iter().filter_map(modstamp_floor).max(),
        Cond::Or(cs) => cs.iter().map(modstamp_floor).collect::<Option<Vec<_>>>()?.into_iter().min(),
        _ => None,
    }
}

fn compare(order: &[OrderKey], a: &Record, b: &Record) -> Ordering {
    for k in order {
        let (va, vb) = (value_for(k.field, a), value_for(k.field, b));
        let o = match (&va, &vb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if k.nulls_last {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(_), None) => {
                if k.nulls_last {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(x), Some(y)) => {
                let o = match (x, y) {
                    (Val::Str(x), Val::Str(y)) if k.field.ty.is_id() => x.cmp(y),
                    (Val::Str(x), Val::Str(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
                    (Val::Num(x), Val::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
                    (Val::Int(x), Val::Int(y)) => x.cmp(y),
                    (Val::DateTime(x), Val::DateTime(y)) => x.cmp(y),
                    (Val::Date(x), Val::Date(y)) => x.cmp(y),
                    (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
                    _ => Ordering::Equal,
                };
                if k.desc { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Runs a compiled query against a table: live records (`query`), or live and Recycle Bin records not
/// yet purged (`queryAll`, `all_rows`). Returns the result set as shared pointers, so a cursor can
/// keep it as a snapshot.
pub fn execute(q: &Query, t: &Table, all_rows: bool, now: Millis) -> Vec<Arc<Record>> {
    let floor = q.filter.as_ref().and_then(modstamp_floor);
    let keep = |r: &Record| q.filter.as_ref().is_none_or(|c| eval(c, r));
    let mut rows: Vec<Arc<Record>> = Vec::new();
    let presorted = match floor {
        Some(f) => {
            for (_, id) in t.by_modstamp.range((f, String::new())..) {
                if let Some(r) = t.records.get(id)
                    && keep(r)
                {
                    rows.push(r.clone());
                }
            }
            true
        }
        None => {
            for r in t.records.values() {
                if r.is_live() && keep(r) {
                    rows.push(r.clone());
                }
            }
            false
        }
    };
    let mut merged_deleted = false;
    if all_rows {
        for (at, id) in &t.deleted {
            if now - at >= RECYCLE_BIN_MS {
                continue;
            }
            if let Some(r) = t.records.get(id)
                && floor.is_none_or(|f| r.modstamp >= f)
                && keep(r)
            {
                rows.push(r.clone());
                merged_deleted = true;
            }
        }
    }
    let by_modstamp_then_id = q.order.len() == 2
        && q.order[0].field.name == "SystemModstamp"
        && !q.order[0].desc
        && q.order[1].field.name == "Id"
        && !q.order[1].desc;
    if !q.order.is_empty() {
        let already = presorted
            && !merged_deleted
            && (by_modstamp_then_id
                || (q.order.len() == 1 && q.order[0].field.name == "SystemModstamp" && !q.order[0].desc));
        if !already {
            rows.sort_by(|a, b| compare(&q.order, a, b));
        }
    } else if presorted || merged_deleted {
        // Without ORDER BY the order is unspecified; the sandbox returns id order.
        rows.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let start = q.offset.min(rows.len());
    let mut rows = rows.split_off(start);
    if let Some(l) = q.limit {
        rows.truncate(l);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> SoqlError {
        parse(q).expect_err("must fail")
    }

    #[test]
    fn parses_the_sync_query() {
        let q = parse("SELECT Id, email, SystemModstamp FROM contact WHERE SystemModstamp >= 2025-01-01T00:00:00Z ORDER BY SystemModstamp ASC, Id ASC LIMIT 10")
            .expect("parses");
        assert_eq!(q.object, SObject::Contact);
        assert_eq!(
            q.fields.iter().map(|f| f.name).collect::<Vec<_>>(),
            vec!["Id", "Email", "SystemModstamp"]
        );
        assert_eq!(q.limit, Some(10));
        assert_eq!(q.filter.as_ref().and_then(modstamp_floor), Some(1_735_689_600_000));
        let keyset = parse("SELECT Id FROM Contact WHERE (SystemModstamp > 2025-01-01T00:00:00Z OR (SystemModstamp = 2025-01-01T00:00:00Z AND Id > '0035g0000000001AAA'))")
            .expect("parses");
        assert_eq!(keyset.filter.as_ref().and_then(modstamp_floor), Some(1_735_689_600_000));
    }

    #[test]
    fn errors_carry_salesforce_codes_and_positions() {
        let e = err("SELECT Id FROM Contact WHERE");
        assert_eq!(e.code, "MALFORMED_QUERY");
        assert_eq!(
            e.message,
            "\nSELECT Id FROM Contact WHERE\n                            ^\nERROR at Row:1:Column:29\nunexpected token: <EOF>"
        );
        let e = err("SELECT Id, Foo FROM Contact");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(
            e.message.contains("ERROR at Row:1:Column:12\nNo such column 'Foo' on entity 'Contact'"),
            "{}",
            e.message
        );
        assert_eq!(err("SELECT Id FROM Widget").code, "INVALID_TYPE");
        let e = err("SELECT Id FROM Contact WHERE SystemModstamp > '2025-01-01T00:00:00Z'");
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(
            e.message.ends_with("must be of type dateTime and should not be enclosed in quotes"),
            "{}",
            e.message
        );
        assert_eq!(err("SELECT Id FROM Contact WHERE Email = 5").code, "INVALID_FIELD");
        assert_eq!(err("SELECT Id FROM Contact WHERE Description = 'x'").code, "INVALID_FIELD");
        assert_eq!(err("SELECT Id FROM Contact WHERE Id = 'nope'").code, "INVALID_QUERY_FILTER_OPERATOR");
        assert_eq!(err("SELECT Id, id FROM Contact").code, "MALFORMED_QUERY");
        assert_eq!(err("SELECT Id FROM Contact LIMIT x").code, "MALFORMED_QUERY");
        assert_eq!(err("SELECT Account.Name FROM Contact").code, "INVALID_FIELD");
    }

    #[test]
    fn strings_unescape_and_like_matches() {
        let q = parse("SELECT Id FROM Contact WHERE Email = 'o\\'neil@x.com' OR LastName LIKE 'sm_th%'")
            .expect("parses");
        let Some(Cond::Or(parts)) = &q.filter else { panic!("or expected") };
        assert!(matches!(&parts[0], Cond::Cmp { lit: Lit::Str(s), .. } if s == "o'neil@x.com"));
        assert!(like("sm_th%", "Smith-Jones"));
        assert!(!like("sm_th", "Smithers"));
    }
}
