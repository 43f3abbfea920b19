//! Salesforce's error bodies (`crm-providers.md` §2.5) and the response helpers every handler uses.
//!
//! REST errors are always a JSON **array** of `{message, errorCode, fields?}`; OAuth endpoints answer
//! `{error, error_description}` objects instead. Every JSON response is
//! `application/json;charset=UTF-8`.
//!
//! Invariant: nothing here reads the system clock or random state; the `Date` header is added from
//! the logical clock by the provider's response layer.

use crate::clock::{Millis, to_datetime};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Salesforce's JSON content type.
pub const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// The message of a 401 for an expired, revoked or unknown session.
pub const SESSION_INVALID: &str = "Session expired or invalid";
/// The message of a 404 for a missing resource or record.
pub const NOT_FOUND_MESSAGE: &str = "The requested resource does not exist";

/// A JSON response from bytes.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    resp
}

/// A JSON response from a value.
pub fn json(status: StatusCode, body: &Value) -> Response {
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A REST error with fields named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SfError {
    /// HTTP status.
    pub status: StatusCode,
    /// `errorCode`.
    pub code: &'static str,
    /// `message`.
    pub message: String,
    /// `fields` (omitted from the body when empty and not a field error).
    pub fields: Vec<String>,
    /// Extra keys merged into the entry (`duplicateResult` of `DUPLICATES_DETECTED`).
    pub extra: Option<Value>,
}

impl SfError {
    /// An error without fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: Vec::new(), extra: None }
    }

    /// A 400 naming fields.
    pub fn fields(code: &'static str, message: impl Into<String>, fields: Vec<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into(), fields, extra: None }
    }

    /// The body entry: `{message, errorCode, fields?}`.
    pub fn entry(&self) -> Value {
        let mut v = json!({"message": self.message, "errorCode": self.code});
        if !self.fields.is_empty() {
            v["fields"] = json!(self.fields);
        }
        self.merge_extra(v)
    }

    /// The composite-API form: `{statusCode, message, fields}`.
    pub fn save_error(&self) -> Value {
        self.merge_extra(json!({"statusCode": self.code, "message": self.message, "fields": self.fields}))
    }

    fn merge_extra(&self, mut v: Value) -> Value {
        if let (Some(Value::Object(extra)), Value::Object(m)) = (&self.extra, &mut v) {
            for (k, x) in extra {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// The response: a one-element array, keys in Salesforce's order (`message`, `errorCode`,
    /// `fields`).
    pub fn response(&self) -> Response {
        let entry = Entry {
            message: &self.message,
            error_code: self.code,
            fields: &self.fields,
            extra: self.extra.as_ref().and_then(Value::as_object),
        };
        json_bytes(self.status, serde_json::to_vec(&[entry]).unwrap_or_default())
    }
}

/// One REST error entry as serialized: `message`, `errorCode`, then `fields` and extras.
#[derive(serde::Serialize)]
struct Entry<'a> {
    message: &'a str,
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    fields: &'a [String],
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Map<String, Value>>,
}

/// A one-element error array.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let entry = Entry { message, error_code: code, fields: &[], extra: None };
    json_bytes(status, serde_json::to_vec(&[entry]).unwrap_or_default())
}

/// 401 `INVALID_SESSION_ID` "Session expired or invalid", with `WWW-Authenticate: Token`.
pub fn session_invalid() -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", SESSION_INVALID);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
    r
}

/// 404 `NOT_FOUND` "The requested resource does not exist".
pub fn not_found() -> SfError {
    SfError::new(StatusCode::NOT_FOUND, "NOT_FOUND", NOT_FOUND_MESSAGE)
}

/// 404 for a value that is neither an id of the type nor an External ID.
pub fn no_external_id(value: &str) -> SfError {
    SfError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("Provided external ID field does not exist or is not accessible: {value}"),
    )
}

/// 404 `ENTITY_IS_DELETED` for writes to a record in the Recycle Bin.
pub fn entity_deleted() -> SfError {
    SfError::new(StatusCode::NOT_FOUND, "ENTITY_IS_DELETED", "entity is deleted")
}

/// 400 `JSON_PARSER_ERROR` for a body that is not the JSON the route needs.
pub fn json_parser(e: &serde_json::Error) -> SfError {
    SfError::new(
        StatusCode::BAD_REQUEST,
        "JSON_PARSER_ERROR",
        format!("{} at [line:{}, column:{}]", e, e.line(), e.column()),
    )
}

/// 403 `REQUEST_LIMIT_EXCEEDED` with the given message ("TotalRequests Limit exceeded." or the
/// concurrency variant).
pub fn request_limit(message: &str) -> Response {
    error(StatusCode::FORBIDDEN, "REQUEST_LIMIT_EXCEEDED", message)
}

/// An OAuth endpoint error: `{"error": …, "error_description": …}`.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(status, &json!({"error": error, "error_description": description}))
}

/// An HTTP date (`Mon, 05 Jan 2026 09:00:00 GMT`) for a logical time.
pub fn http_date(ms: Millis) -> String {
    to_datetime(ms).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Percent-decodes a path segment (no `+` → space: that is query-string encoding).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_arrays_and_dates_are_http_dates() {
        let e = SfError::fields(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [LastName]",
            vec!["LastName".into()],
        );
        assert_eq!(
            e.entry(),
            json!({"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]})
        );
        assert_eq!(not_found().entry(), json!({"message": NOT_FOUND_MESSAGE, "errorCode": "NOT_FOUND"}));
        assert_eq!(http_date(1_767_603_600_000), "Mon, 05 Jan 2026 09:00:00 GMT");
        assert_eq!(percent_decode("a%2Fb%20c+d"), "a/b c+d");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
