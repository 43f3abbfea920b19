//! Connect links (enqueue scope): `POST /v1/oauth/{provider}/links` answers the URL a tenant's
//! user opens to connect a CRM account to that tenant. The authorize route it points at is
//! public and accepts only such signed, expiring links (see [`crm_jobs::auth::connect`]).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use crm_jobs::auth::AuthError;
use crm_jobs::auth::connect::{self, ConnectLink, DEFAULT_LINK_TTL, LinkError};
use crm_jobs::providers::Provider;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, json_rejection, no_nul};

/// What to link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The tenant the CRM account will be connected to.
    pub tenant_id: String,
    /// Seconds the link stays valid (default 900, at most 604800: 7 days).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 604800)]
    pub expires_in: Option<serde_json::Number>,
}

/// The path: which CRM.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LinkPath {
    /// hubspot, salesforce, pipedrive, zoho or close.
    #[param(schema_with = super::provider_schema)]
    pub provider: String,
}

/// Make a connect link for a tenant and CRM.
#[utoipa::path(post, path = "/v1/oauth/{provider}/links", tag = "connections", operation_id = "create_connect_link",
    params(LinkPath),
    request_body = LinkRequest,
    responses((status = 201, description = "The link, and when it expires", body = ConnectLink),
              (status = 400, description = "Unknown provider, or not JSON", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "No such tenant, or no OAuth app for the provider", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, description = "expires_in out of range", body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn create(
    State(s): State<ApiState>,
    path: Result<Path<LinkPath>, PathRejection>,
    body: Result<Json<LinkRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ConnectLink>), ApiError> {
    let provider: Provider = path.ok().and_then(|Path(p)| p.provider.parse().ok()).ok_or_else(|| {
        ApiError::bad("unknown_provider", "provider", "hubspot, salesforce, pipedrive, zoho or close")
    })?;
    let Json(b) = body.map_err(json_rejection)?;
    no_nul("tenant_id", &b.tenant_id)?;
    // A JSON integer may be written 900.0; anything else, or out of range (`link` checks the
    // range), is refused with the field named.
    let bad_ttl =
        || ApiError::unprocessable("invalid", "expires_in", "whole seconds, from 1 to 604800 (7 days)");
    let seconds = match &b.expires_in {
        None => Some(DEFAULT_LINK_TTL.as_secs()),
        Some(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        }
    };
    let ttl = seconds.map(Duration::from_secs).ok_or_else(bad_ttl)?;
    match connect::link(&s.connect.store, provider, &b.tenant_id, ttl).await {
        Ok(link) => Ok((StatusCode::CREATED, Json(link))),
        Err(LinkError::UnknownTenant(t)) => Err(ApiError::not_found("tenant_id", format!("no tenant {t:?}"))),
        Err(LinkError::Ttl(_)) => Err(bad_ttl()),
        Err(LinkError::Auth(AuthError::Config(m))) => Err(ApiError::not_found(
            "provider",
            format!("{m} (register it with `crmctl apps set {provider} …`)"),
        )),
        Err(LinkError::Auth(e)) => Err(ApiError::unavailable("the database", e)),
    }
}
