//! Zoho CRM's response shapes and error bodies (`crm-providers.md` §4.5, the v8 OpenAPI examples).
//!
//! Request-level errors are a top-level `{"code","details","message","status":"error"}`; per-record
//! write errors are entries of `data[]` (see [`super::schema::RecordError::render`]). Every JSON
//! response is `application/json;charset=UTF-8`; 204 and 304 have no body.
//!
//! Invariant: these helpers never read the clock or randomness, so a replayed request sequence gives
//! identical bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Zoho's content type.
pub const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    resp
}

/// A top-level error body.
pub fn error_body(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

/// A top-level error response.
pub fn error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    json_response(status, &error_body(code, message, details))
}

/// 401 for an invalid, expired or revoked access token, or the wrong scheme.
pub fn invalid_token() -> Response {
    error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", "invalid oauth token", json!({}))
}

/// 401 when no credentials came at all.
pub fn authentication_failure() -> Response {
    error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILURE", "Authentication failed", json!({}))
}

/// 401 for a token without the scope the URL needs.
pub fn scope_mismatch() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "OAUTH_SCOPE_MISMATCH",
        "invalid oauth scope to access this URL",
        json!({}),
    )
}

/// 403 for a user without the module permission.
pub fn no_permission() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "NO_PERMISSION",
        "permission denied",
        json!({"permissions": ["Crm_Implied_View_Contacts"]}),
    )
}

/// 404 for a URL that matches no API.
pub fn invalid_url() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "INVALID_URL_PATTERN",
        "Please check if the URL trying to access is a correct one",
        json!({}),
    )
}

/// 400 for an unknown module in the path.
pub fn invalid_module() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_MODULE",
        "the module name given seems to be invalid",
        json!({"resource_path_index": 0}),
    )
}

/// 400 for a method the URL does not support.
pub fn invalid_method() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST_METHOD",
        "The http request method type is not a valid one",
        json!({"resource_path_index": 0}),
    )
}

/// 400 `REQUIRED_PARAM_MISSING` for a missing query parameter.
pub fn required_param(param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "REQUIRED_PARAM_MISSING",
        "required param is missing",
        json!({"param_name": param}),
    )
}

/// 400 `INVALID_DATA` about a query parameter.
pub fn invalid_param(param: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_DATA", message, json!({"param_name": param}))
}

/// 400 for an unknown record id in the path (`GET /{module}/{id}`).
pub fn invalid_id(id: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_DATA", "the id given seems to be invalid", json!({"id": id}))
}

/// 400 for a request body that is not the expected JSON.
pub fn invalid_body(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_DATA", message, json!({"expected_data_type": "jsonobject"}))
}

/// 400 `DISCRETE_PAGINATION_LIMIT_EXCEEDED`: `page` reaches past the first 2,000 records.
pub fn discrete_pagination_limit() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
        "You can only get the first 2000 records without using page_token param",
        json!({"limit": 2000}),
    )
}

/// 400 `PAGINATION_LIMIT_EXCEEDED`: past 100,000 records with page tokens.
pub fn pagination_limit() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "PAGINATION_LIMIT_EXCEEDED",
        "You can only get upto 100000 records using page_token param",
        json!({"param_name": "page_token"}),
    )
}

/// 400 `TOKEN_BOUND_DATA_MISMATCH`: a page token used with other parameters, or unknown.
pub fn token_mismatch() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "TOKEN_BOUND_DATA_MISMATCH",
        "The page_token given seems to be invalid or input param is added or altered or deleted",
        json!({"param_name": "page_token"}),
    )
}

/// 400 `EXPIRED_VALUE`: an expired page token.
pub fn token_expired() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "EXPIRED_VALUE",
        "Page token expired",
        json!({"api_name": "page_token", "json_path": "$.query.page_token"}),
    )
}

/// The `data[]` response of a write, with the status Zoho picks: `ok_status` when every record
/// succeeded, 207 when some did, 400 when none did.
pub fn write_response(entries: Vec<Value>, ok_status: StatusCode) -> Response {
    let ok = entries.iter().filter(|e| e.get("status") == Some(&json!("success"))).count();
    let status = if ok == entries.len() {
        ok_status
    } else if ok == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    };
    json_response(status, &json!({"data": entries}))
}

/// The 429 body. `code` is `TOO_MANY_REQUESTS` (the research default) or `RATE_LIMIT_EXCEEDED`
/// (the v8 OpenAPI search example); the message says which limit was hit.
pub fn throttle_body(code: &str, credits: bool) -> Value {
    let message = if credits {
        "You have exceeded the API credits allowed for your organization in the last 24 hours."
    } else {
        "You have exceeded the maximum number of concurrent API calls allowed for your organization."
    };
    error_body(code, message, json!({}))
}

/// 204 No Content.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// 304 Not Modified.
pub fn not_modified() -> Response {
    StatusCode::NOT_MODIFIED.into_response()
}
