//! The scheduling part of the control-plane HTTP API:
//!
//! | Route | Does |
//! |---|---|
//! | `GET /v1/schedules[?connection_id=&after=&limit=]` | list, by id, 100 per page by default (at most 1,000) |
//! | `POST /v1/schedules` | create (201) |
//! | `GET /v1/schedules/{id}` | one |
//! | `PATCH /v1/schedules/{id}` | change any field but `connection_id` |
//! | `DELETE /v1/schedules/{id}` | delete (204); it stops ticking, queued syncs still run |
//! | `POST /v1/connections/{id}/sync` | enqueue a sync now (202) |
//! | `GET /v1/connections/{id}/sync` | where its syncs stand: per object the last success, the latest run, stale or not |
//!
//! Invariant: every rejection is the API's one error body ([`crate::api::error`]) with a 4xx
//! status, and `field` names the input at fault (`cron`, `objects[1]`, `id`, `body`…): a
//! malformed id or query parameter is 400, a field the body gets wrong 422 (`invalid`), as on
//! every other route; database and Redis failures are 503 `{"error": "unavailable"}` with
//! `Retry-After`, without internals.
//! Authentication is not done here: [`crate::api::router`] mounts these handlers behind its
//! API-key layer (schedules: `admin` scope; sync now and sync status: `enqueue`) and documents them in
//! `/openapi.json` from the annotations below.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use crm_jobs::job::SyncMode;
use crm_jobs::providers::ObjectKind;
use serde_json::{Value, json};
use uuid::Uuid;

use super::freshness::{self, ConnectionSync};
use super::model::{
    FieldError, NewSchedule, Schedule, SchedulePatch, optional_objects_schema, parse_objects,
};
use super::store::{self, StoreError};
use super::trigger::{self, TriggerError};
use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody, path_id};

/// Default page size of `GET /v1/schedules`.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size.
pub const MAX_PAGE: u32 = 1_000;

/// A page of schedules.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SchedulePage {
    /// Schedules, by id.
    pub schedules: Vec<Schedule>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<Uuid>,
}

/// The body of `POST /v1/connections/{id}/sync` (parsed field by field for precise errors).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // documentation of the accepted body
pub struct SyncNowRequest {
    /// Objects to sync: contact, company, deal (default: all three).
    #[schema(schema_with = optional_objects_schema)]
    objects: Option<Vec<String>>,
    /// `incremental` (default) or `full`.
    #[schema(schema_with = mode_schema)]
    mode: Option<String>,
}

fn mode_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some("`incremental` (default) or `full`."))
        .enum_values(Some([json!("incremental"), json!("full"), Value::Null]))
        .build()
}

/// 422 naming the field a [`FieldError`] is about (the code stays `invalid`, as clients of
/// these routes know it).
fn invalid(e: FieldError) -> ApiError {
    ApiError::unprocessable("invalid", &e.field, e.message)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ScheduleNotFound => Self::not_found("id", "no such schedule"),
            // The body named it: a well-formed request about something that does not exist.
            StoreError::ConnectionNotFound => invalid(FieldError::new("connection_id", "no such connection")),
            StoreError::Invalid(f) => invalid(f),
            StoreError::Db(e) => Self::unavailable("the database", e),
        }
    }
}

fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|e| {
        let error = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "malformed" };
        ApiError::new(e.status(), error, Some("body"), e.body_text())
    })?;
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad("malformed", "body", format!("not JSON: {e}")))
}

/// A UUID query parameter: 400 `invalid_query` naming it, as every other route's.
fn uuid_param(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad("invalid_query", field, format!("{raw:?} is not a UUID")))
}

/// List schedules, by id.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", operation_id = "list_schedules",
    params(
        ("connection_id" = Option<Uuid>, Query, description = "Only this connection's"),
        ("after" = Option<Uuid>, Query, description = "Cursor: the previous page's next_after"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1..=1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page", body = SchedulePage, links(
            ("ShowSchedule" = (operation_id = "show_schedule", parameters(("id" = "$response.body#/schedules/0/id")))),
            ("UpdateSchedule" = (operation_id = "update_schedule", parameters(("id" = "$response.body#/schedules/0/id")))),
            ("SyncNow" = (operation_id = "sync_now", parameters(("id" = "$response.body#/schedules/0/connection_id")))))),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 400, description = "Unknown or malformed parameter (named in field)", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<SchedulePage>, ApiError> {
    if let Some(k) = q.keys().find(|k| !["connection_id", "after", "limit"].contains(&k.as_str())) {
        return Err(ApiError::bad("invalid_query", k, "unknown parameter (connection_id, after, limit)"));
    }
    let connection = q.get("connection_id").map(|v| uuid_param("connection_id", v)).transpose()?;
    let after = q.get("after").map(|v| uuid_param("after", v)).transpose()?;
    let limit =
        match q.get("limit") {
            None => DEFAULT_PAGE,
            Some(v) => v.parse::<u32>().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
                invalid(FieldError::new("limit", format!("must be between 1 and {MAX_PAGE}")))
            })?,
        };
    let schedules = store::list(&s.pool, connection, after, limit).await?;
    let next = if schedules.len() == limit as usize { schedules.last().map(|x| x.id) } else { None };
    Ok(Json(SchedulePage { schedules, next_after: next }))
}

/// Create a schedule.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", operation_id = "create_schedule",
    request_body = NewSchedule,
    responses(
        (status = 201, description = "Created", body = Schedule, links(
            ("ShowSchedule" = (operation_id = "show_schedule", parameters(("id" = "$response.body#/id")))),
            ("UpdateSchedule" = (operation_id = "update_schedule", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Not JSON, or a malformed id or query parameter", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field (named in field), or no such connection", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = NewSchedule::from_json(&body_json(body)?).map_err(invalid)?;
    let created = store::create(&s.pool, &new).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", operation_id = "show_schedule",
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn show(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    Ok(Json(json!(store::get(&s.pool, id).await?)))
}

/// Change a schedule (any field but `connection_id`); applies from the next tick.
#[utoipa::path(patch, path = "/v1/schedules/{id}", tag = "schedules", operation_id = "update_schedule",
    request_body = SchedulePatch,
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The changed schedule", body = Schedule, links(
            ("ShowSchedule" = (operation_id = "show_schedule", parameters(("id" = "$request.path.id")))))),
        (status = 400, description = "Not JSON, or a malformed id or query parameter", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field (named in field)", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn update(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let patch = SchedulePatch::from_json(&body_json(body)?).map_err(invalid)?;
    Ok(Json(json!(store::update(&s.pool, id, &patch).await?)))
}

/// Delete a schedule: it stops ticking (a tick already being pushed may still enqueue);
/// syncs already queued or running finish. Disabling (`PATCH {"enabled": false}`) keeps it.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", operation_id = "delete_schedule",
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn delete(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    super::delete_schedule(&s.pool, &s.queue, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enqueue a sync of a connection now: one job per object; an object whose sync is already
/// queued or running is reported as a duplicate.
#[utoipa::path(post, path = "/v1/connections/{id}/sync", tag = "schedules", operation_id = "sync_now",
    request_body = Option<SyncNowRequest>,
    params(("id" = Uuid, Path, description = "Connection id")),
    responses(
        (status = 202, description = "Enqueued: {connection_id, mode, jobs: [{object, job_id, duplicate}]}", body = Object,
            links(("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/jobs/0/job_id")))))),
        (status = 400, description = "Not JSON, or a malformed id or query parameter", body = ErrorBody),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
        (status = 409, description = "Connection disabled, or provider not supported", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field (named in field)", body = ErrorBody),
        (status = 503, description = "Database or queue unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn sync_now(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let connection = path_id(id)?;
    let body = match body_json(body)? {
        Value::Null => Value::Object(Default::default()),
        body => body,
    };
    let map = body.as_object().ok_or_else(|| invalid(FieldError::new("body", "must be a JSON object")))?;
    if let Some(k) = map.keys().find(|k| !["objects", "mode"].contains(&k.as_str())) {
        return Err(invalid(FieldError::new(k.clone(), "unknown field (objects, mode)")));
    }
    let objects = match map.get("objects").filter(|v| !v.is_null()) {
        None => ObjectKind::ALL.to_vec(),
        Some(Value::Array(items)) => {
            let mut names = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                names.push(
                    v.as_str().ok_or_else(|| {
                        invalid(FieldError::new(format!("objects[{i}]"), "must be a string"))
                    })?,
                );
            }
            parse_objects("objects", &names).map_err(invalid)?
        }
        Some(_) => {
            return Err(invalid(FieldError::new("objects", "must be an array of contact, company, deal")));
        }
    };
    let mode = match map.get("mode").filter(|v| !v.is_null()) {
        None => SyncMode::Incremental,
        Some(Value::String(m)) if m == "incremental" => SyncMode::Incremental,
        Some(Value::String(m)) if m == "full" => SyncMode::Full,
        Some(_) => {
            return Err(invalid(FieldError::new("mode", "must be \"incremental\" or \"full\"")));
        }
    };
    let jobs = trigger::sync_now(&s.pool, &s.queue, connection, &objects, mode, "api").await.map_err(
        |e| match e {
            TriggerError::NotFound => ApiError::not_found("id", "no such connection"),
            TriggerError::Disabled => ApiError::new(
                StatusCode::CONFLICT,
                "connection_disabled",
                Some("id"),
                "the connection is disabled",
            ),
            TriggerError::UnknownProvider => ApiError::new(
                StatusCode::CONFLICT,
                "unsupported_provider",
                Some("id"),
                "the connection's provider is not supported by this build",
            ),
            TriggerError::Db(e) => ApiError::unavailable("the database", e),
            TriggerError::Queue(e) => e.into(),
        },
    )?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "connection_id": connection, "mode": mode, "jobs": jobs }))))
}

/// Where a connection's syncs stand, object by object: whether a schedule covers it, its last
/// success, its latest run (with the error of a failed one) and whether it is stale (a tick
/// fired more than the scheduler's `CRM_FLEET_SYNC_STALE_AFTER` ago with no success since).
#[utoipa::path(get, path = "/v1/connections/{id}/sync", tag = "schedules", operation_id = "sync_status",
    params(("id" = Uuid, Path, description = "Connection id")),
    responses(
        (status = 200, description = "Sync status", body = ConnectionSync),
        (status = 401, description = "No or bad API key", body = ErrorBody),
        (status = 403, description = "Key lacks the enqueue scope", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn sync_status(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<ConnectionSync>, ApiError> {
    let id = path_id(id)?;
    match freshness::connection_sync(&s.pool, id, chrono::Utc::now(), s.sync_stale_after).await {
        Ok(Some(status)) => Ok(Json(status)),
        Ok(None) => Err(ApiError::not_found("id", "no such connection")),
        Err(e) => Err(ApiError::unavailable("the database", e)),
    }
}
