//! Sync-conflict routes (admin scope): list with filters and id pagination, resolve one
//! (keeping the CRM's value or ours). Same semantics as `crmctl conflicts`; the rules are in
//! [`crm_jobs::sync::conflicts`].

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use crm_jobs::providers::{ObjectKind, Provider};
use crm_jobs::sync::conflicts::{self, Conflict, Keep, ListFilter, ResolveError, Resolved};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, json_rejection, query_rejection};
use super::keys::Caller;

/// Default page size.
const DEFAULT_PAGE: i64 = 100;
/// Largest page size.
const MAX_PAGE: i64 = 1_000;

/// List query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's.
    pub tenant_id: Option<String>,
    /// Only this provider's (hubspot, salesforce, pipedrive, zoho, close).
    #[param(schema_with = super::provider_schema)]
    pub provider: Option<String>,
    /// Only this object's (contact, company, deal).
    #[param(schema_with = object_schema)]
    pub object: Option<String>,
    /// `open` (default), `resolved` or `all`.
    #[param(schema_with = state_schema)]
    pub state: Option<String>,
    /// The previous page's `next_after`.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn object_schema() -> utoipa::openapi::schema::Object {
    super::string_enum("An object.", ObjectKind::ALL.iter().map(|o| o.as_str()))
}

fn state_schema() -> utoipa::openapi::schema::Object {
    super::string_enum("`open` (default), `resolved` or `all`.", ["open", "resolved", "all"])
}

/// A page of conflicts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictPage {
    /// Conflicts, oldest first.
    pub conflicts: Vec<Conflict>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<i64>,
}

/// List sync conflicts: remote changes a sync did not apply over a local pending change.
#[utoipa::path(get, path = "/v1/conflicts", tag = "conflicts", operation_id = "list_conflicts",
    params(ListQuery),
    responses((status = 200, body = ConflictPage, links(
                  ("ResolveConflict" = (operation_id = "resolve_conflict", parameters(("id" = "$response.body#/conflicts/0/id")))))),
              (status = 400, description = "Malformed parameter (named in field)", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 422, description = "Unknown provider, object or state; bad limit (named in field)", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ConflictPage>, ApiError> {
    let Query(q) = query.map_err(query_rejection)?;
    let tenant = q.tenant_id;
    let provider = q
        .provider
        .map(|p| {
            p.parse::<Provider>().map(|p| p.as_str().to_owned()).map_err(|_| {
                ApiError::unprocessable(
                    "invalid",
                    "provider",
                    "not a provider (hubspot, salesforce, pipedrive, zoho, close)",
                )
            })
        })
        .transpose()?;
    let object = q
        .object
        .map(|o| {
            o.parse::<ObjectKind>().map_err(|_| {
                ApiError::unprocessable("invalid", "object", "not an object (contact, company, deal)")
            })
        })
        .transpose()?;
    let open = ListFilter::parse_state(q.state.as_deref().unwrap_or("open"))
        .map_err(|e| ApiError::unprocessable("invalid", "state", e))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::unprocessable("invalid", "limit", "between 1 and 1000"));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::unprocessable("invalid", "after", "a conflict id (0 or more)"));
    }
    // PostgreSQL text cannot hold NUL, so no tenant id has one: nothing matches (once every
    // other parameter was checked).
    if tenant.as_deref().is_some_and(|t| t.contains('\0')) {
        return Ok(Json(ConflictPage { conflicts: Vec::new(), next_after: None }));
    }
    let filter = ListFilter { tenant, provider, object, open };
    let items = conflicts::list(&s.pool, &filter, q.after, limit)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?;
    let next_after = (items.len() as i64 == limit).then(|| items.last().map(|c| c.id)).flatten();
    Ok(Json(ConflictPage { conflicts: items, next_after }))
}

/// How to resolve a conflict.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// `remote`: take the CRM's value (the field is no longer pending). `local`: keep ours (it
    /// stays pending until the CRM has it; write it with an `update_contact` action).
    #[schema(schema_with = keep_schema)]
    pub keep: String,
}

fn keep_schema() -> utoipa::openapi::schema::Object {
    super::string_enum("`remote` or `local`.", ["remote", "local"])
}

/// Resolve a conflict, and every open conflict of the same record and field with it.
#[utoipa::path(post, path = "/v1/conflicts/{id}/resolve", tag = "conflicts", operation_id = "resolve_conflict",
    params(("id" = i64, Path, description = "Conflict id")),
    request_body = ResolveBody,
    responses((status = 200, description = "Resolved: the conflict, how many were resolved, the record's value", body = Resolved),
              (status = 400, description = "Not JSON, or a malformed id", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "No such conflict", body = ErrorBody),
              (status = 409, description = "Resolved already", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, description = "keep is not remote or local", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn resolve(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ResolveBody>, JsonRejection>,
) -> Result<Json<Resolved>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad("invalid_id", "id", "not a conflict id (an integer)"))?;
    let Json(b) = body.map_err(json_rejection)?;
    let keep: Keep = b.keep.parse().map_err(|e: String| ApiError::unprocessable("invalid", "keep", e))?;
    conflicts::resolve(&s.pool, id, keep, &caller.actor()).await.map(Json).map_err(|e| match e {
        ResolveError::NotFound => ApiError::not_found("id", format!("no conflict {id}")),
        ResolveError::AlreadyResolved(c) => ApiError::new(
            StatusCode::CONFLICT,
            "already_resolved",
            Some("id"),
            format!(
                "resolved already ({} by {})",
                c.resolution.as_deref().unwrap_or("?"),
                c.resolved_by.as_deref().unwrap_or("?")
            ),
        ),
        ResolveError::Unknown(what) => ApiError::internal(format!("conflict {id} names {what}")),
        ResolveError::Db(e) => e.into(),
    })
}
