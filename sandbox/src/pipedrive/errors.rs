//! Pipedrive's response envelopes and error bodies (`crm-providers.md` §3.5).
//!
//! * Success: `{"success": true, "data": …, "additional_data": …}`.
//! * Errors: `{"success": false, "error": "…", "error_info": "…", "data": null,
//!   "additional_data": null}`, with `code` / `field_code` where relevant.
//! * 401 from the API gateway: `{"success":false,"error":"unauthorized access","errorCode":401,
//!   "error_info":"Please check developers.pipedrive.com"}` with `x-401-by-gw: true`.
//! * 403 scope mismatch: `{"success":false,"error":"Scope and URL mismatch","errorCode":403,…}`.
//! * 429: `{"success":false,"error":"Request over limit","errorCode":429,"error_info":…}`, the same
//!   body for burst and daily exhaustion.
//! * Abuse block: 403 `text/html`, a Cloudflare-style page.
//!
//! Invariant: every response carries `x-correlation-id` from the sandbox's seeded id stream, so a
//! replayed request sequence produces identical bodies and headers.

use super::schema::FieldError;
use crate::state::SandboxState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Pipedrive's `error_info` text.
pub const ERROR_INFO: &str =
    "Please check developers.pipedrive.com for more information about Pipedrive API.";
/// The shorter `error_info` of gateway errors (401, 403, 429).
pub const GATEWAY_INFO: &str = "Please check developers.pipedrive.com";

/// A JSON response with Pipedrive's content type and a correlation id.
pub fn json(state: &SandboxState, status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&state.ids.uuid()) {
        h.insert("x-correlation-id", v);
    }
    resp
}

/// `{"success": true, "data": data}` plus `additional_data` when given.
pub fn ok(state: &SandboxState, status: StatusCode, data: Value, additional: Option<Value>) -> Response {
    let mut body = json!({"success": true, "data": data});
    if let Some(a) = additional {
        body["additional_data"] = a;
    }
    json(state, status, &body)
}

/// The error envelope.
pub fn envelope(message: &str) -> Value {
    json!({"success": false, "error": message, "error_info": ERROR_INFO, "data": null, "additional_data": null})
}

/// An error response with the envelope.
pub fn error(state: &SandboxState, status: StatusCode, message: &str) -> Response {
    json(state, status, &envelope(message))
}

/// 400 for a parameter or body problem.
pub fn bad_request(state: &SandboxState, message: &str) -> Response {
    error(state, StatusCode::BAD_REQUEST, message)
}

/// 400 for a field that failed validation: `"Validation failed: {field}: {reason}"`, with
/// `code: "ERR_SCHEMA_VALIDATION_FAILED"` and, for custom fields, `field_code`.
pub fn validation(state: &SandboxState, e: &FieldError) -> Response {
    let mut body = envelope(&format!("Validation failed: {}: {}", e.field, e.message));
    body["code"] = json!("ERR_SCHEMA_VALIDATION_FAILED");
    if e.custom {
        body["field_code"] = json!(e.field);
    }
    json(state, StatusCode::BAD_REQUEST, &body)
}

/// 404 `"{Entity} not found"`.
pub fn not_found(state: &SandboxState, what: &str) -> Response {
    error(state, StatusCode::NOT_FOUND, &format!("{what} not found"))
}

/// 404 for a path the API does not have.
pub fn unknown_method(state: &SandboxState) -> Response {
    error(state, StatusCode::NOT_FOUND, "Unknown method .")
}

/// 410 for the v1 core endpoints that are out of support.
pub fn gone(state: &SandboxState, replacement: &str) -> Response {
    error(
        state,
        StatusCode::GONE,
        &format!("This endpoint is no longer supported. Use {replacement} instead."),
    )
}

/// The gateway's 401 (invalid, expired, revoked or missing token), with `x-401-by-gw: true`.
pub fn unauthorized(state: &SandboxState) -> Response {
    let mut r = json(
        state,
        StatusCode::UNAUTHORIZED,
        &json!({"success": false, "error": "unauthorized access", "errorCode": 401, "error_info": GATEWAY_INFO}),
    );
    r.headers_mut().insert("x-401-by-gw", HeaderValue::from_static("true"));
    r
}

/// 403 for an OAuth token without the scope a route needs.
pub fn scope_mismatch(state: &SandboxState) -> Response {
    json(
        state,
        StatusCode::FORBIDDEN,
        &json!({"success": false, "error": "Scope and URL mismatch", "errorCode": 403, "error_info": GATEWAY_INFO}),
    )
}

/// 403 for an account-level restriction (feature capping, plan).
pub fn forbidden(state: &SandboxState, message: &str, code: &str) -> Response {
    let mut body = envelope(message);
    body["code"] = json!(code);
    json(state, StatusCode::FORBIDDEN, &body)
}

/// 429 (burst and daily share the body; only `x-daily-ratelimit-token-remaining: 0` tells them apart).
pub fn rate_limited(state: &SandboxState) -> Response {
    json(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"success": false, "error": "Request over limit", "errorCode": 429, "error_info": GATEWAY_INFO}),
    )
}

/// The Cloudflare page an abusive API token gets (403, `text/html`).
pub fn abuse_page() -> Response {
    let html = "<!DOCTYPE html>\n<html lang=\"en-US\"><head><title>Attention Required! | Cloudflare</title></head>\
<body><div id=\"cf-wrapper\"><h1>Sorry, you have been blocked</h1>\
<h2>You are unable to access pipedrive.com</h2>\
<p>This website is using a security service to protect itself from online attacks.</p>\
<p>Cloudflare Ray ID: <strong>sandbox</strong></p></div></body></html>";
    let mut r = (StatusCode::FORBIDDEN, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=UTF-8"));
    r.headers_mut().insert(header::SERVER, HeaderValue::from_static("cloudflare"));
    r
}

/// A Cloudflare-style gateway page for injected 502/504.
pub fn gateway_page(status: StatusCode) -> Response {
    let s = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Gateway Error");
    let html = format!(
        "<html><head><title>{s} {reason}</title></head><body><center><h1>{s} {reason}</h1></center><hr><center>cloudflare</center></body></html>"
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r.headers_mut().insert(header::SERVER, HeaderValue::from_static("cloudflare"));
    r
}

/// Parses a JSON object body, or answers 400.
pub fn parse_object(state: &SandboxState, body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request(state, "Request body must be a JSON object")),
        Err(e) => Err(bad_request(state, &format!("Invalid JSON body: {e}"))),
    }
}
