//! API errors: every failure is a status and a JSON body naming the field at fault, so a
//! calling service can fix its request without reading our logs.

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable error code.
    pub error: String,
    /// The request field at fault (`params.subject`, `Idempotency-Key`, `tenant_id`), if any.
    pub field: Option<String>,
    /// Human-readable explanation.
    pub message: String,
    /// Further problems, when several fields are wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
}

/// One field problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldProblem {
    /// Field.
    pub field: String,
    /// Problem.
    pub message: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with a field.
    pub fn new(status: StatusCode, error: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                field: field.map(str::to_owned),
                message: message.into(),
                details: Vec::new(),
            },
        }
    }

    /// 400 naming a field.
    pub fn bad(error: &str, field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, Some(field), message)
    }

    /// 404 naming a field.
    pub fn not_found(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", Some(field), message)
    }

    /// 422: the request is well-formed but cannot be carried out as asked.
    pub fn unprocessable(error: &str, field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, Some(field), message)
    }

    /// Attaches several field problems (the first becomes `field`).
    pub fn with_details(mut self, details: Vec<FieldProblem>) -> Self {
        if self.body.field.is_none() {
            self.body.field = details.first().map(|d| d.field.clone());
        }
        self.body.details = details;
        self
    }

    /// 500 without internals in the body (they go to the log).
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(message = "request failed", %error);
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", None, "internal error; see the server log")
    }

    /// 503: a dependency is down; retry.
    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(message = "dependency unavailable", what, %error);
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            format!("{what} is unavailable; retry"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Class 22 (data exception) is the input's fault, not an outage: retrying cannot help.
        // The handlers check what they can first (`no_nul`), so they name the field.
        if let sqlx::Error::Database(db) = &e
            && db.code().is_some_and(|c| c.starts_with("22"))
        {
            tracing::warn!(message = "request data refused by the database", error = %e);
            return Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                None,
                "a value of this request cannot be stored",
            );
        }
        Self::unavailable("the database", e)
    }
}

/// Rejects text PostgreSQL cannot store (a NUL character) with a 422 naming the field.
pub fn no_nul(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::unprocessable("invalid_text", field, "must not contain NUL characters"));
    }
    Ok(())
}

/// [`no_nul`] over every key and string of a JSON value (`field.key`, `field[0]`).
pub fn no_nul_in(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    match value {
        serde_json::Value::String(s) => no_nul(field, s),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, v)| no_nul_in(&format!("{field}[{i}]"), v))
        }
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let path = format!("{field}.{k}");
            no_nul(&path, k)?;
            no_nul_in(&path, v)
        }),
        _ => Ok(()),
    }
}

impl From<crm_queue::QueueError> for ApiError {
    fn from(e: crm_queue::QueueError) -> Self {
        Self::unavailable("the queue", e)
    }
}

/// Maps a JSON body rejection to a field-naming error (413 for a body over the limit).
pub fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let field = json_error_field(&text);
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", Some(&field), text)
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::bad("invalid_json", "body", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("Content-Type"),
            "send Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            Some("body"),
            format!("the body exceeds {} bytes", super::MAX_BODY),
        ),
        other => ApiError::bad("invalid_body", "body", other.body_text()),
    }
}

/// The field a JSON data error is about. The message starts with the path to the value at
/// fault when it is not the root (`filter.replayed: invalid type: string "yes", expected a
/// boolean`), and names a missing or unknown field in backticks (`missing field `reason``).
fn json_error_field(text: &str) -> String {
    let detail =
        text.strip_prefix("Failed to deserialize the JSON body into the target type: ").unwrap_or(text);
    let quoted = |s: &str, prefix: &str| {
        s.split_once(prefix).and_then(|(_, r)| r.split('`').next().map(str::to_owned))
    };
    match detail.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(' ') => {
            match rest.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                Some(missing) => format!("{path}.{missing}"),
                None => path.to_owned(),
            }
        }
        // At the root, or a path serde_path_to_error cannot print unambiguously (a key with a space).
        _ => quoted(detail, "missing field `")
            .or_else(|| quoted(detail, "unknown field `"))
            .unwrap_or_else(|| "body".to_owned()),
    }
}

/// Maps a query-string rejection to a 400 naming the parameter: serde's message starts with it
/// (`limit: invalid digit found in string`).
pub fn query_rejection(r: QueryRejection) -> ApiError {
    let text = r.body_text();
    let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    let field = detail.split(": ").next().filter(|p| !p.is_empty() && !p.contains(' ')).unwrap_or("query");
    ApiError::bad("invalid_query", field, text.clone())
}

/// The UUID in the path (`{id}`): a 400 naming `id` when it is not one (invalid UTF-8 included).
pub fn path_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::bad("invalid_id", "id", "not a UUID"))
}

#[cfg(test)]
mod tests {
    use super::json_error_field;

    #[test]
    fn a_json_data_error_names_the_field_not_the_value() {
        let prefix = "Failed to deserialize the JSON body into the target type: ";
        for (message, field) in [
            ("missing field `provider` at line 1 column 17", "provider"),
            ("tenant_id: invalid type: integer `5`, expected a string at line 1 column 14", "tenant_id"),
            ("zz: unknown field `zz`, expected one of `tenant_id` at line 1 column 61", "zz"),
            ("connection_id: UUID parsing failed: invalid character: found `n` at 0", "connection_id"),
            ("filter.replayed: invalid type: string \"yes\", expected a boolean", "filter.replayed"),
            ("filter: missing field `reason` at line 1 column 9", "filter.reason"),
            ("a b: unknown field `a b`, expected one of `reason` at line 1 column 9", "a b"),
            ("invalid type: integer `0`, expected struct ActionRequest at line 1 column 1", "body"),
        ] {
            assert_eq!(json_error_field(&format!("{prefix}{message}")), field, "{message}");
        }
    }
}
