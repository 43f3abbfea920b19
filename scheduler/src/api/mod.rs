//! The control-plane HTTP API served by `crm-scheduler`.
//!
//! Routes are registered through utoipa-axum's `OpenApiRouter`, so each handler's route and its
//! OpenAPI description are declared together and `/openapi.json` cannot drift from what is
//! served (a test also checks every served route is documented). Every error is a 4xx/5xx with
//! a JSON body naming the field at fault ([`error::ErrorBody`]). Authentication: bearer API keys
//! with scopes `enqueue` (actions, jobs, syncs on demand) and `admin` (everything, including
//! schedules, dead letters and sync conflicts) ([`keys`]); `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json` and the OAuth browser flow are public (its authorize route takes only the
//! signed, expiring connect links that `POST /v1/oauth/{provider}/links` makes: [`links`]).

pub mod actions;
pub mod conflicts;
pub mod dlq;
pub mod error;
pub mod keys;
pub mod links;

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::schedule;
use keys::Scope;

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// PostgreSQL.
    pub pool: sqlx::PgPool,
    /// The queue.
    pub queue: crm_queue::Queue,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// The OAuth connect flow.
    pub connect: Arc<crm_jobs::auth::connect::ConnectState>,
    /// Grace after a tick before a missing sync success counts as stale.
    pub sync_stale_after: std::time::Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "crm-fleet control plane", description = "Enqueue CRM actions, follow jobs, operate the fleet."),
    modifiers(&Security),
    tags(
        (name = "actions", description = "Outbound CRM actions"),
        (name = "jobs", description = "Job state"),
        (name = "dead-letters", description = "Find, inspect, replay and purge dead letters (admin)"),
        (name = "schedules", description = "Sync schedules (admin) and syncs on demand (enqueue)"),
        (name = "conflicts", description = "Remote changes that collided with local pending changes: list, resolve (admin)"),
        (name = "connections", description = "Connect links: the URL a tenant's user opens to connect a CRM account (enqueue)"),
        (name = "health", description = "Probes"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cf_<prefix>_<secret>")
                    .build(),
            ),
        );
    }
}

/// A string schema limited to `names` (closed sets checked by hand-written parsers, documented
/// for `schema_with`).
pub(crate) fn string_enum<'a>(
    description: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .build()
}

/// A provider name, as an enum in the document.
pub(crate) fn provider_schema() -> utoipa::openapi::schema::Object {
    string_enum(
        "A CRM: hubspot, salesforce, pipedrive, zoho or close.",
        crm_jobs::providers::Provider::ALL.iter().map(|p| p.as_str()),
    )
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: PostgreSQL and Redis answer.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = String),
    (status = 503, description = "A dependency is down", body = String)))]
async fn readyz(State(s): State<ApiState>) -> (StatusCode, String) {
    let redis = s.queue.ping().await;
    let pg = sqlx::query("SELECT 1").execute(&s.pool).await;
    match (redis, pg) {
        (Ok(()), Ok(_)) => (StatusCode::OK, "ready".into()),
        (r, p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "redis: {}; postgres: {}",
                if r.is_ok() { "ok" } else { "down" },
                if p.is_ok() { "ok" } else { "down" }
            ),
        ),
    }
}

/// Builds the API router and its OpenAPI document.
pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let enqueue = OpenApiRouter::new()
        .routes(routes!(actions::post_action))
        .routes(routes!(actions::get_job))
        .routes(routes!(schedule::api::sync_now, schedule::api::sync_status))
        .routes(routes!(links::create))
        .route_layer(from_fn_with_state((state.pool.clone(), Scope::Enqueue), keys::require));
    let admin = OpenApiRouter::new()
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::show, dlq::delete))
        .routes(routes!(dlq::replay))
        .routes(routes!(dlq::replay_bulk))
        .routes(routes!(schedule::api::list, schedule::api::create))
        .routes(routes!(schedule::api::show, schedule::api::update, schedule::api::delete))
        .routes(routes!(conflicts::list))
        .routes(routes!(conflicts::resolve))
        .route_layer(from_fn_with_state((state.pool.clone(), Scope::Admin), keys::require));
    let public = OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(enqueue)
        .merge(admin)
        .merge(public)
        .with_state(state.clone())
        .split_for_parts();
    let doc = served_document(&api);
    let metrics = state.metrics.clone();
    let router = router
        .route("/openapi.json", get(move || async move { Json(doc.clone()) }))
        .route("/metrics", get(move || async move { metrics.render() }))
        .merge(crm_jobs::auth::connect::router(state.connect.clone()))
        .fallback(|| async { error::ApiError::not_found("path", "no such route") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                Some("method"),
                "this route does not take this method (see Allow)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(trace_request));
    (router, api)
}

/// Request bodies parsed field by field (for precise errors) rather than by serde, so utoipa
/// cannot see that they refuse unknown fields; [`served_document`] closes their schemas.
const HAND_PARSED_BODIES: [&str; 3] = ["NewSchedule", "SchedulePatch", "SyncNowRequest"];

/// The document as served, with what utoipa 5.5 cannot write: the closed schemas of
/// [`HAND_PARSED_BODIES`], and response links' fields in camelCase (utoipa writes
/// `operation_id`; OpenAPI, and clients following links such as schemathesis, need
/// `operationId`).
fn served_document(api: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    let paths = doc.get_mut("paths").and_then(|p| p.as_object_mut());
    let responses = paths
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response.get_mut("links").and_then(|l| l.as_object_mut());
        for link in links.into_iter().flat_map(|l| l.values_mut()).filter_map(|l| l.as_object_mut()) {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(from) {
                    link.insert(to.to_owned(), value);
                }
            }
        }
    }
    for name in HAND_PARSED_BODIES {
        if let Some(schema) =
            doc.pointer_mut(&format!("/components/schemas/{name}")).and_then(|s| s.as_object_mut())
        {
            schema.insert("additionalProperties".to_owned(), false.into());
        }
    }
    doc
}

/// One span per request, continuing the caller's W3C trace (`traceparent`) when it sends one,
/// with the status recorded; a job enqueued inside carries this span's context onward.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("http.request", http.method = %req.method(), http.route = %route,
        http.status_code = tracing::field::Empty);
    let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    crm_jobs::telemetry::set_remote_parent(&span, parent.as_deref());
    // A closed set too: a client can send any token as a method.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.status_code", resp.status().as_u16());
    let status = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    // Labels: the route template (a closed set; `unmatched` for everything else), never the path.
    metrics::counter!("crm_fleet_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("crm_fleet_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(parent: &span, message = "request served", status = resp.status().as_u16());
    resp
}
