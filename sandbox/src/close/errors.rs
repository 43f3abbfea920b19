//! Close's response bodies for errors (`crm-providers.md` §5.5) and the JSON helpers every handler
//! uses.
//!
//! * 400: `{"error": "...", "errors": [...], "field-errors": {...}}` (the official client reads
//!   `errors` and `field-errors`);
//! * 401: `{"error": "Unauthorized"}` (also for expired and revoked tokens: Close's expired-token
//!   body is UNCONFIRMED);
//! * 402: `{"error": "..."}` (plan limit reached);
//! * 404: `{"error": "Empty query: <Object> matching query does not exist."}` (UNCONFIRMED);
//! * 429: see [`super::Close::throttle_response`].
//!
//! Invariant: every body here is `application/json`; only injected gateway errors are HTML.

use super::store::FieldErrors;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 200 with a JSON body.
pub fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

/// 400 with field errors.
pub fn field_errors(errors: &FieldErrors) -> Response {
    let summary = errors.iter().next().map(|(f, m)| format!("{f}: {m}")).unwrap_or_default();
    json_response(StatusCode::BAD_REQUEST, &json!({"error": summary, "errors": [], "field-errors": errors}))
}

/// 400 with one field error.
pub fn field_error(field: &str, message: &str) -> Response {
    let mut e = FieldErrors::new();
    e.insert(field.to_owned(), message.to_owned());
    field_errors(&e)
}

/// 400 with a request-level error.
pub fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": message, "errors": [message], "field-errors": {}}),
    )
}

/// 401.
pub fn unauthorized() -> Response {
    json_response(StatusCode::UNAUTHORIZED, &json!({"error": "Unauthorized"}))
}

/// 402 plan limit.
pub fn plan_limit(message: &str) -> Response {
    json_response(StatusCode::PAYMENT_REQUIRED, &json!({"error": message}))
}

/// 403.
pub fn forbidden() -> Response {
    json_response(
        StatusCode::FORBIDDEN,
        &json!({"error": "You don't have permission to perform this action."}),
    )
}

/// 404 for a missing object.
pub fn not_found(title: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("Empty query: {title} matching query does not exist.")}),
    )
}

/// 404 for an unknown URL.
pub fn no_route() -> Response {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "Not found"}))
}

/// Parses a JSON object body or answers 400.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("Request body must be a JSON object.")),
        Err(e) => Err(bad_request(&format!("Invalid JSON: {e}"))),
    }
}

/// An HTML gateway error page (what an edge proxy sends for 502/503/504).
pub fn gateway_page(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let reason = code.canonical_reason().unwrap_or("Gateway Error");
    let mut r = (
        code,
        format!("<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1></center></body></html>"),
    )
        .into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}
