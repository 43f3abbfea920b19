//! `POST /v1/actions` and `GET /v1/jobs/{id}`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use crm_jobs::actions::{self, Created, NewAction};
use crm_jobs::providers::Provider;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiState;
use super::error::{ApiError, ErrorBody, FieldProblem, json_rejection, no_nul, no_nul_in, path_id};

/// Longest idempotency key accepted.
const MAX_KEY: usize = 255;

/// An action request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task",
    "params": {"subject": "Call back", "due_at": "2026-02-01T09:00:00Z"}}))]
pub struct ActionRequest {
    /// The tenant the action is for.
    #[schema(min_length = 1, pattern = r"\S")]
    pub tenant_id: String,
    /// The CRM.
    #[schema(schema_with = super::provider_schema)]
    pub provider: String,
    /// The connection to use; optional when the tenant has one active connection to the provider.
    #[serde(default)]
    pub connection_id: Option<Uuid>,
    /// The action.
    #[schema(schema_with = action_schema)]
    pub action: String,
    /// The action's parameters (see the action's documentation).
    #[schema(value_type = Object)]
    pub params: Value,
}

fn action_schema() -> utoipa::openapi::schema::Object {
    super::string_enum("The action; its parameters are checked against it.", actions::ACTION_NAMES)
}

/// The answer to an accepted action.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The job (and action) id; poll `GET /v1/jobs/{job_id}`.
    pub job_id: Uuid,
    /// queued, running, succeeded, failed, or dead (its job was dead-lettered and waits for an
    /// operator's replay; sending the request again does not run it).
    pub state: String,
    /// True when this Idempotency-Key was seen before with the same request: nothing new was
    /// enqueued.
    pub duplicate: bool,
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Id.
    pub id: Uuid,
    /// `action` or `sync`.
    pub kind: String,
    /// queued, running, retrying, succeeded, failed or dead.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last error, if any.
    pub last_error: Option<JobErrorView>,
    /// The result: for actions, `external_id` and details; for syncs, the run's counts.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
}

/// An error as reported on a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobErrorView {
    /// Error class (closed set).
    pub class: String,
    /// Redacted message.
    pub message: String,
}

async fn resolve_connection(
    state: &ApiState,
    req: &ActionRequest,
    provider: Provider,
) -> Result<Uuid, ApiError> {
    let tenant: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(&req.tenant_id)
        .fetch_one(&state.pool)
        .await?;
    if !tenant {
        return Err(ApiError::not_found("tenant_id", format!("no tenant {:?}", req.tenant_id)));
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM connections WHERE tenant_id = $1 AND provider = $2 AND ($3::uuid IS NULL OR id = $3)",
    )
    .bind(&req.tenant_id)
    .bind(provider.as_str())
    .bind(req.connection_id)
    .fetch_all(&state.pool)
    .await?;
    match (rows.as_slice(), req.connection_id) {
        ([], Some(id)) => Err(ApiError::unprocessable(
            "unknown_connection",
            "connection_id",
            format!("tenant {:?} has no {provider} connection {id}", req.tenant_id),
        )),
        ([], None) => Err(ApiError::unprocessable(
            "no_connection",
            "provider",
            format!("tenant {:?} has no {provider} connection", req.tenant_id),
        )),
        ([(id, _)], _) => Ok(*id),
        (_, _) => Err(ApiError::unprocessable(
            "ambiguous_connection",
            "connection_id",
            format!(
                "tenant {:?} has several {provider} connections; name one with connection_id",
                req.tenant_id
            ),
        )),
    }
}

/// Enqueue a CRM action.
#[utoipa::path(
    post,
    path = "/v1/actions",
    tag = "actions",
    request_body = ActionRequest,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$",
        example = "order-1042-call-back",
        description = "Unique per tenant (visible ASCII, at most 255 characters); the same key with the same body returns the same job. Kept at least 24 h.")),
    responses(
        (status = 202, description = "Accepted (or an idempotent repeat)", body = Accepted,
            links(("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))))),
        (status = 400, description = "Missing or bad header or field", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid action or params, no such connection, or an Idempotency-Key reused with a different body", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable; retry with the same key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn post_action(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(json_rejection)?;
    let key = match headers.get("idempotency-key").map(|v| v.to_str().map(str::trim)) {
        None | Some(Ok("")) => {
            return Err(ApiError::bad(
                "missing_header",
                "Idempotency-Key",
                "the Idempotency-Key header is required",
            ));
        }
        Some(Err(_)) => {
            return Err(ApiError::bad("invalid_header", "Idempotency-Key", "must be visible ASCII"));
        }
        Some(Ok(key)) if key.len() > MAX_KEY => {
            return Err(ApiError::bad(
                "invalid_header",
                "Idempotency-Key",
                format!("at most {MAX_KEY} characters"),
            ));
        }
        Some(Ok(key)) => key,
    };
    if req.tenant_id.trim().is_empty() {
        return Err(ApiError::unprocessable("invalid_field", "tenant_id", "must not be empty"));
    }
    no_nul("tenant_id", &req.tenant_id)?;
    no_nul_in("params", &req.params)?;
    let provider: Provider = req
        .provider
        .parse()
        .map_err(|e: String| ApiError::unprocessable("unknown_provider", "provider", e))?;
    let action = actions::parse(&req.action, &req.params).map_err(|errors| {
        let first = &errors[0];
        ApiError::unprocessable("invalid_action", &first.field, first.message.clone()).with_details(
            errors
                .iter()
                .map(|e| FieldProblem { field: e.field.clone(), message: e.message.clone() })
                .collect(),
        )
    })?;
    let connection = resolve_connection(&state, &req, provider).await?;
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let new = NewAction {
        tenant: req.tenant_id.clone(),
        connection,
        provider: provider.as_str().to_owned(),
        action,
        idempotency_key: key.to_owned(),
        traceparent: traceparent.clone(),
    };
    let (row, duplicate) = match actions::store::create(&state.pool, &new).await? {
        Created::New(row) => (row, false),
        Created::Existing(row) => (row, true),
        Created::Conflict(_) => {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "Idempotency-Key",
                "this Idempotency-Key was already used for a different request",
            ));
        }
    };
    // A job of this action that died (dead-lettered, perhaps replayed since under a job id of
    // its own) is the dead-letter queue's to replay: pushing the action's job again would run it
    // beside the replay, or run an action operators were told is dead.
    let unreplayed = actions::store::dead_letters_of(&state.pool, row.id).await?;
    let view_state = match unreplayed {
        Some(true) if row.state != "succeeded" => "dead".to_owned(),
        _ => row.state.clone(),
    };
    if unreplayed.is_none() && (row.state == "queued" || row.state == "running") {
        // (Re)push: the job id is the action id, so a repeat is a no-op in the queue.
        let target = crm_jobs::enqueue::target(&state.pool, connection)
            .await?
            .ok_or_else(|| ApiError::internal("connection vanished"))?;
        let mut job = crm_jobs::enqueue::action_job(&target, row.id, crm_jobs::enqueue::ACTION_MAX_ATTEMPTS)
            .map_err(ApiError::internal)?;
        // The job continues this request's trace (itself a child of the caller's, if any).
        if let Some(tp) = crm_jobs::telemetry::current_traceparent().or_else(|| traceparent.clone()) {
            job = job.meta("traceparent", tp);
        }
        state.queue.push(job).await?;
    }
    let mut resp = (StatusCode::ACCEPTED, Json(Accepted { job_id: row.id, state: view_state, duplicate }))
        .into_response();
    if duplicate && let Ok(v) = "true".parse() {
        resp.headers_mut().insert("idempotent-replayed", v);
    }
    Ok(resp)
}

/// A sync run row, as `GET /v1/jobs/{id}` reads it.
#[derive(sqlx::FromRow)]
struct RunRow {
    status: String,
    pages: i32,
    created: i32,
    updated: i32,
    deleted: i32,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

/// A dead letter, as `GET /v1/jobs/{id}` reads it.
#[derive(sqlx::FromRow)]
struct DeadRow {
    error_class: String,
    last_error: String,
    attempts: i32,
    enqueued_at: DateTime<Utc>,
    dead_at: DateTime<Utc>,
    job_type: String,
}

/// A job's state, attempts, last error and result.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_job(
    State(state): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let id = path_id(id)?;
    if let Some(a) = actions::store::get(&state.pool, id).await? {
        let live = state.queue.job(crm_queue::JobId(id)).await.ok().flatten();
        // Dead while a dead letter of it waits; once replayed, the action row follows the replay.
        let dead = actions::store::dead_letters_of(&state.pool, id).await? == Some(true);
        let view_state = match (a.state.as_str(), &live, dead) {
            (_, _, true) if a.state != "succeeded" => "dead".to_owned(),
            ("queued" | "running", Some(info), _) if info.state == "delayed" => "retrying".to_owned(),
            (s, _, _) => s.to_owned(),
        };
        let attempts = live.as_ref().map(|i| i64::from(i.attempts)).unwrap_or(0).max(i64::from(a.attempts));
        return Ok(Json(JobView {
            id,
            kind: "action".into(),
            state: view_state,
            attempts,
            last_error: a
                .last_error_class
                .zip(a.last_error)
                .map(|(class, message)| JobErrorView { class, message }),
            result: a.result,
            created_at: Some(a.created_at),
            completed_at: a.completed_at,
        }));
    }
    if let Some(info) = state.queue.job(crm_queue::JobId(id)).await? {
        let last = info.history.last();
        return Ok(Json(JobView {
            id,
            kind: info.job_type.clone(),
            state: match info.state.as_str() {
                "leased" => "running",
                "delayed" if !info.history.is_empty() => "retrying",
                "dying" => "dead",
                _ => "queued",
            }
            .into(),
            attempts: i64::from(info.attempts),
            last_error: last
                .map(|h| JobErrorView { class: h.error_class.clone(), message: h.message.clone() }),
            result: None,
            created_at: None,
            completed_at: None,
        }));
    }
    let run: Option<RunRow> = sqlx::query_as(
        "SELECT status, pages, created, updated, deleted, started_at, finished_at, error FROM sync_runs WHERE job_id = $1 \
         ORDER BY started_at DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    if let Some(r) = run {
        return Ok(Json(JobView {
            id,
            kind: "sync".into(),
            state: r.status,
            attempts: 0,
            last_error: r.error.map(|message| JobErrorView { class: "sync".into(), message }),
            result: Some(serde_json::json!({
                "pages": r.pages, "created": r.created, "updated": r.updated, "deleted": r.deleted,
            })),
            created_at: Some(r.started_at),
            completed_at: r.finished_at,
        }));
    }
    let dead: Option<DeadRow> = sqlx::query_as(
        "SELECT error_class, last_error, attempts, enqueued_at, dead_at, job_type FROM dead_letters WHERE job_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    if let Some(d) = dead {
        return Ok(Json(JobView {
            id,
            kind: d.job_type,
            state: "dead".into(),
            attempts: i64::from(d.attempts),
            last_error: Some(JobErrorView { class: d.error_class, message: d.last_error }),
            result: None,
            created_at: Some(d.enqueued_at),
            completed_at: Some(d.dead_at),
        }));
    }
    Err(ApiError::not_found("id", format!("no job {id}")))
}
