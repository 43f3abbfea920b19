//! API errors: every failure is a status and a JSON body naming the field at fault, so a
//! calling service can fix its request without reading our logs.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

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
        Self::unavailable("the database", e)
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
            // serde's message names the field: "missing field `action`", "invalid type … at line 1 column 9".
            let text = e.body_text();
            let field = text
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .or_else(|| text.split(": ").next().filter(|p| !p.contains(' ')).map(str::to_owned))
                .unwrap_or_else(|| "body".to_owned());
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
