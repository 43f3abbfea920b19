//! HubSpot's JSON error bodies (`crm-providers.md` §1.5) and the response helpers every handler uses.
//!
//! Bodies follow the SDK's `ModelError`/`StandardError`: `status: "error"`, `message`, `correlationId`,
//! `category`, and where relevant `errors[]`, `context`, `links`. Every HubSpot response is
//! `application/json;charset=utf-8` and carries `X-HubSpot-Correlation-Id`.
//!
//! Invariant: correlation ids come from the sandbox's seeded id stream, never from the system RNG, so
//! a replayed request sequence produces identical bodies.

use super::schema::PropError;
use crate::state::SandboxState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// HubSpot's content type.
pub const JSON_UTF8: &str = "application/json;charset=utf-8";

/// A JSON response with HubSpot's content type and a correlation id header.
pub fn json_bytes(state: &SandboxState, status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    if let Ok(v) = HeaderValue::from_str(&state.ids.uuid()) {
        h.insert("x-hubspot-correlation-id", v);
    }
    resp
}

/// A JSON value response.
pub fn json_value(state: &SandboxState, status: StatusCode, body: &Value) -> Response {
    json_bytes(state, status, serde_json::to_vec(body).unwrap_or_default())
}

/// A standard error body with a fresh correlation id.
pub fn error_body(state: &SandboxState, category: &str, message: &str) -> Value {
    json!({
        "status": "error",
        "message": message,
        "correlationId": state.ids.uuid(),
        "category": category,
    })
}

/// A standard error response.
pub fn error(state: &SandboxState, status: StatusCode, category: &str, message: &str) -> Response {
    json_value(state, status, &error_body(state, category, message))
}

/// 401 for a missing, unknown or revoked token.
pub fn invalid_auth(state: &SandboxState) -> Response {
    error(
        state,
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
    )
}

/// 401 for an expired OAuth token, in HubSpot's words.
pub fn expired_auth(state: &SandboxState, expired_secs_ago: i64) -> Response {
    error(
        state,
        StatusCode::UNAUTHORIZED,
        "EXPIRED_AUTHENTICATION",
        &format!("The OAuth token used to make this call expired {} second(s) ago.", expired_secs_ago.max(0)),
    )
}

/// 403 for a token without the scope a route needs.
pub fn missing_scope(state: &SandboxState, scope: &str) -> Response {
    let mut body = error_body(
        state,
        "MISSING_SCOPES",
        &format!(
            "This app hasn't been granted all required scopes to make this call. The access token used does not have the proper permissions! (requires any of [{scope}])"
        ),
    );
    body["errors"] = json!([{
        "message": "One or more of the following scopes are required.",
        "context": {"requiredGranularScopes": [scope]},
    }]);
    body["links"] = json!({"scopes": "https://developers.hubspot.com/scopes"});
    json_value(state, StatusCode::FORBIDDEN, &body)
}

/// 404 for a missing object.
pub fn not_found(state: &SandboxState) -> Response {
    error(state, StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", "resource not found")
}

/// 400 `VALIDATION_ERROR` with a plain message and one `errors[]` entry.
pub fn validation(state: &SandboxState, message: &str) -> Response {
    let mut body = error_body(state, "VALIDATION_ERROR", message);
    body["errors"] = json!([{"message": message}]);
    json_value(state, StatusCode::BAD_REQUEST, &body)
}

/// The `errors[]` entries for property failures.
pub fn prop_error_details(errors: &[PropError]) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|e| {
                json!({
                    "message": e.message,
                    "code": e.code,
                    "in": e.name,
                    "context": {"propertyName": [e.name]},
                })
            })
            .collect(),
    )
}

/// The `Property values were not valid: [...]` message HubSpot builds from property failures.
pub fn prop_error_message(errors: &[PropError]) -> String {
    let inner: Vec<Value> = errors
        .iter()
        .map(|e| {
            json!({
                "isValid": false,
                "message": e.message,
                "error": e.code,
                "name": e.name,
                "localizedErrorMessage": e.message,
            })
        })
        .collect();
    format!("Property values were not valid: {}", serde_json::to_string(&inner).unwrap_or_default())
}

/// 400 for invalid property values.
pub fn invalid_props(state: &SandboxState, errors: &[PropError]) -> Response {
    let mut body = error_body(state, "VALIDATION_ERROR", &prop_error_message(errors));
    body["errors"] = prop_error_details(errors);
    json_value(state, StatusCode::BAD_REQUEST, &body)
}

/// 400 for a body that is not valid JSON for the route, with the parser's line and column.
pub fn invalid_json(state: &SandboxState, e: &serde_json::Error) -> Response {
    validation(state, &format!("Invalid input JSON on line {}, column {}: {}", e.line(), e.column(), e))
}

/// 409 for a duplicate unique value. Contacts' email gets HubSpot's exact message.
pub fn conflict(state: &SandboxState, title: &str, prop: &str, value: &str, existing: u64) -> Response {
    let message = if prop == "email" {
        format!("{title} already exists. Existing ID: {existing}")
    } else {
        format!(
            "{title} already exists with value '{value}' for unique property {prop}. Existing ID: {existing}"
        )
    };
    error(state, StatusCode::CONFLICT, "CONFLICT", &message)
}

/// Parses a JSON body or answers with HubSpot's invalid-JSON error.
pub fn parse_json<T: serde::de::DeserializeOwned>(state: &SandboxState, body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| invalid_json(state, &e))
}
