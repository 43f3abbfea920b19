//! Dead-letter routes (admin scope): list with filters and cursor pagination, show, replay one,
//! replay by filter (with `dry_run`), delete. Same filter semantics as `crmctl dlq`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use crm_jobs::dlq::{self, DlqError, Filter, ReplayRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::error::{ApiError, ErrorBody, json_rejection, no_nul, path_id, query_rejection};
use super::keys::Caller;

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        match e {
            DlqError::Invalid { field, message } => {
                ApiError::unprocessable("invalid_filter", &field, message)
            }
            DlqError::Db(e) => e.into(),
            DlqError::Queue(e) => e.into(),
        }
    }
}

/// Parses a time filter, naming the field on error.
pub fn parse_when(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    dlq::parse_when(s).map_err(|m| ApiError::unprocessable("invalid_time", field, m))
}

fn split(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A parameter's value, if it is given and not blank (an empty `since=` filters nothing, like an
/// empty `provider=`).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Filter parameters (comma-separated lists allowed).
#[derive(Debug, Deserialize, IntoParams, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// Providers.
    pub provider: Option<String>,
    /// Tenants.
    pub tenant: Option<String>,
    /// Job types (action, sync, probe).
    pub job_type: Option<String>,
    /// Error classes; `auth` = unauthorized, forbidden, invalid_grant, needs_reauth.
    pub error_class: Option<String>,
    /// Reasons: max_attempts, permanent, poison, undecodable.
    pub reason: Option<String>,
    /// Died at or after (RFC 3339, or a duration back from now like `1h`).
    pub since: Option<String>,
    /// Died before (RFC 3339 or duration).
    pub until: Option<String>,
    /// Only replayed (true) or not yet replayed (false).
    pub replayed: Option<bool>,
}

impl FilterParams {
    fn filter(&self) -> Result<Filter, ApiError> {
        for (field, value) in [
            ("provider", &self.provider),
            ("tenant", &self.tenant),
            ("job_type", &self.job_type),
            ("error_class", &self.error_class),
            ("reason", &self.reason),
        ] {
            no_nul(field, value.as_deref().unwrap_or_default())?;
        }
        Ok(Filter {
            provider: split(&self.provider),
            tenant: split(&self.tenant),
            job_type: split(&self.job_type),
            error_class: split(&self.error_class),
            reason: split(&self.reason),
            since: given(&self.since).map(|s| parse_when("since", s)).transpose()?,
            until: given(&self.until).map(|s| parse_when("until", s)).transpose()?,
            replayed: self.replayed,
        })
    }
}

/// List query: the filters plus paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Providers (comma-separated).
    pub provider: Option<String>,
    /// Tenants.
    pub tenant: Option<String>,
    /// Job types.
    pub job_type: Option<String>,
    /// Error classes (`auth` is a group).
    pub error_class: Option<String>,
    /// Reasons.
    pub reason: Option<String>,
    /// Died at or after (RFC 3339 or `1h`).
    pub since: Option<String>,
    /// Died before.
    pub until: Option<String>,
    /// Replayed or not.
    pub replayed: Option<bool>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    fn filter_params(&self) -> FilterParams {
        FilterParams {
            provider: self.provider.clone(),
            tenant: self.tenant.clone(),
            job_type: self.job_type.clone(),
            error_class: self.error_class.clone(),
            reason: self.reason.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            replayed: self.replayed,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Dead letters, newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<dlq::Summary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List dead letters.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead-letters", operation_id = "list_dead_letters",
    params(ListQuery),
    responses((status = 200, body = Page, links(
                  ("ShowDeadLetter" = (operation_id = "show_dead_letter", parameters(("id" = "$response.body#/items/0/id")))),
                  ("ReplayDeadLetter" = (operation_id = "replay_dead_letter", parameters(("id" = "$response.body#/items/0/id")))),
                  ("DeleteDeadLetter" = (operation_id = "delete_dead_letter", parameters(("id" = "$response.body#/items/0/id")))),
                  ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/items/0/job_id")))))),
              (status = 400, description = "Malformed parameter (named in field)", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 422, description = "Bad filter value, limit or cursor (named in field)", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(q) = q.map_err(query_rejection)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("invalid_field", "limit", "must be between 1 and 1000"));
    }
    let filter = q.filter_params().filter()?;
    let (items, next_cursor) = dlq::list(&s.pool, &filter, limit, given(&q.cursor)).await?;
    Ok(Json(Page { items, next_cursor }))
}

/// One dead letter with its payload (secrets redacted), every attempt and every replay.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead-letters", operation_id = "show_dead_letter",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Object, links(
                  ("ReplayDeadLetter" = (operation_id = "replay_dead_letter", parameters(("id" = "$request.path.id")))),
                  ("DeleteDeadLetter" = (operation_id = "delete_dead_letter", parameters(("id" = "$request.path.id")))))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn show(
    State(s): State<ApiState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let d = dlq::show(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("id", format!("no dead letter {id}")))?;
    Ok(Json(serde_json::to_value(d).map_err(ApiError::internal)?))
}

/// A replay request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Why (audited).
    #[schema(pattern = r"\S")]
    pub reason: String,
    /// Field edits: for actions `params.<name>`, for syncs `mode`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

fn request(caller: &Caller, reason: &str, set: BTreeMap<String, String>) -> Result<ReplayRequest, ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "missing_reason",
            "reason",
            "say why you replay (it is audited)",
        ));
    }
    no_nul("reason", reason)?;
    for (k, v) in &set {
        no_nul("set", k)?;
        no_nul(&format!("set.{k}"), v)?;
    }
    Ok(ReplayRequest { actor: caller.actor(), reason: reason.to_owned(), changes: set })
}

/// Replay one dead letter (at most once; a second call returns the first replay's job).
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead-letters", operation_id = "replay_dead_letter",
    params(("id" = Uuid, Path)),
    request_body = ReplayBody,
    responses((status = 200, description = "{outcome: enqueued | merged | already_replayed, job_id} or {outcome: unreplayable, reason}",
                  body = Object,
                  links(("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")))))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody),
              (status = 422, description = "Missing reason, or an edit this dead letter cannot take (named in field)", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn replay(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<dlq::ReplayOutcome>, ApiError> {
    let id = path_id(id)?;
    let Json(b) = body.map_err(json_rejection)?;
    let req = request(&caller, &b.reason, b.set)?;
    match dlq::replay_one(&s.pool, &s.queue, id, &req).await {
        Err(DlqError::Invalid { field, message }) if field == "id" => Err(ApiError::not_found("id", message)),
        other => Ok(Json(other?)),
    }
}

/// A bulk replay request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// Which dead letters (not yet replayed ones are taken).
    #[serde(default)]
    pub filter: FilterParams,
    /// Why (audited).
    #[schema(pattern = r"\S")]
    pub reason: String,
    /// Field edits applied to every replayed job.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Only count.
    #[serde(default)]
    pub dry_run: bool,
}

/// Replay every not-yet-replayed dead letter matching a filter (or count them with `dry_run`).
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead-letters", operation_id = "replay_dead_letters",
    request_body = BulkBody,
    responses((status = 200, description = "{matched, enqueued, merged, skipped, skip_reasons}", body = Object),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, description = "Missing reason, bad filter value or edit (named in field)", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn replay_bulk(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<BulkBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<dlq::BulkReplay>, ApiError> {
    let Json(b) = body.map_err(json_rejection)?;
    let req = request(&caller, &b.reason, b.set)?;
    let filter = b.filter.filter()?;
    Ok(Json(dlq::replay_matching(&s.pool, &s.queue, &filter, &req, b.dry_run).await?))
}

/// Delete one dead letter (audited).
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "dead-letters", operation_id = "delete_dead_letter",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn delete(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    if dlq::delete(&s.pool, id, &caller.actor()).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("id", format!("no dead letter {id}")))
    }
}
