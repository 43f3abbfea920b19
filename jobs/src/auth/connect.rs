//! The connect flow, as axum handlers the control-plane API mounts:
//!
//! * a **connect link** ([`link`]: `POST /v1/oauth/{provider}/links` with an API key, or
//!   `crmctl connections link`) is `GET /v1/oauth/{provider}/authorize?tenant_id=…&expires=…&signature=…`,
//!   the signature an HMAC of (provider, tenant, expiry). The authorize route is public (a
//!   tenant's user opens it in a browser, which cannot send our API key), so the link is what
//!   says that a service allowed *this* tenant to be connected: without it anyone who knows a
//!   tenant id could attach a CRM account of their own to that tenant;
//! * `GET /v1/oauth/{provider}/authorize` checks the link, stores a single-use state row (PKCE
//!   verifier encrypted, short TTL) and redirects to the provider's consent page with a state
//!   parameter that names the row and carries an HMAC of it;
//! * `GET /v1/oauth/callback?code=…&state=…` verifies the HMAC, claims the row (refusing an
//!   expired or already-used state), exchanges the code with the verifier, and stores the
//!   connection (encrypted tokens), answering with its id.
//!
//! A tampered, unknown, expired or replayed state gets a 400 with a JSON body naming the
//! `state` field. Tokens never appear in responses or logs.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use super::oauth::{self, GrantError, OAuthApp};
use super::{AuthError, Store, TokenManager};
use crate::providers::{Provider, ProviderError};

/// How long an authorization may take (consent page to callback).
pub const DEFAULT_STATE_TTL: Duration = Duration::from_secs(600);

/// How long a connect link stays valid unless asked otherwise.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(900);

/// The longest a connect link may stay valid (a link e-mailed to a tenant's admin).
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the link MAC key is derived for.
const LINK_PURPOSE: &str = "connect-link";

/// The path our OAuth apps' redirect URIs end with; what precedes it is the API's public base.
const CALLBACK_PATH: &str = "/v1/oauth/callback";

/// A connect link: the URL a tenant's user opens to connect a CRM account to that tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectLink {
    /// The tenant it connects.
    pub tenant_id: String,
    /// The CRM.
    pub provider: String,
    /// The link: our authorize route with its signature. Absolute, on the public base of the
    /// provider app's redirect URI (what precedes `/v1/oauth/callback` there).
    pub url: String,
    /// When it stops working (any number of uses until then; each starts a fresh
    /// authorization).
    pub expires_at: DateTime<Utc>,
}

/// Why no link was made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No such tenant.
    #[error("no tenant {0:?}")]
    UnknownTenant(String),
    /// A validity outside (0, [`MAX_LINK_TTL`]].
    #[error("a link is valid for 1 second to 7 days; asked for {0:?}")]
    Ttl(Duration),
    /// No OAuth app is configured for the provider, or the store failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Makes a connect link for `tenant` at `provider`, valid for `ttl`.
pub async fn link(
    store: &Store,
    provider: Provider,
    tenant: &str,
    ttl: Duration,
) -> Result<ConnectLink, LinkError> {
    if ttl.is_zero() || ttl > MAX_LINK_TTL {
        return Err(LinkError::Ttl(ttl));
    }
    if !store.tenant_exists(tenant).await? {
        return Err(LinkError::UnknownTenant(tenant.to_owned()));
    }
    let app = store.app(provider).await?;
    let expires = Utc::now().timestamp() + i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let base = match app.redirect_uri.strip_suffix(CALLBACK_PATH) {
        Some(base) => base.to_owned(),
        None => {
            url::Url::parse(&app.redirect_uri).map(|u| u.origin().ascii_serialization()).map_err(|e| {
                AuthError::Config(format!("{provider}: the app's redirect URI is not a URL: {e}"))
            })?
        }
    };
    let mut url = url::Url::parse(&format!("{base}/v1/oauth/{provider}/authorize")).map_err(|e| {
        AuthError::Config(format!("{provider}: the app's redirect URI gives no base URL: {e}"))
    })?;
    url.query_pairs_mut()
        .append_pair("tenant_id", tenant)
        .append_pair("expires", &expires.to_string())
        .append_pair("signature", &link_signature(store, provider, tenant, expires));
    Ok(ConnectLink {
        tenant_id: tenant.to_owned(),
        provider: provider.as_str().to_owned(),
        url: url.into(),
        expires_at: DateTime::from_timestamp(expires, 0).unwrap_or_default(),
    })
}

/// The MAC of a link: (provider, tenant, expiry), under a key derived for links alone from
/// one of the token keys.
fn link_mac(key: &[u8; 32], provider: Provider, tenant: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_mac());
    for part in [provider.as_str(), tenant, &expires.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    mac
}

fn link_signature(store: &Store, provider: Provider, tenant: &str, expires: i64) -> String {
    let key = store.keys().derive(LINK_PURPOSE);
    let tag = link_mac(&key, provider, tenant, expires).finalize().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..16])
}

/// Checks a link's signature (in constant time) and expiry.
fn check_link(store: &Store, provider: Provider, tenant: &str, q: &AuthorizeQuery) -> Result<(), ApiError> {
    let forbidden = |error, field, message: String| ApiError {
        status: StatusCode::FORBIDDEN,
        error,
        field: Some(field),
        message,
    };
    let (Some(expires), Some(signature)) = (q.expires.as_deref(), q.signature.as_deref()) else {
        return Err(forbidden(
            "link_required",
            "signature",
            "open a connect link (POST /v1/oauth/{provider}/links or `crmctl connections link`), not this route alone".into(),
        ));
    };
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    // A whole 16-byte tag, compared in constant time (a shorter one would check fewer bytes).
    // Any configured token key: a link made before a rotation works until it expires.
    let valid = expires.parse::<i64>().ok().filter(|e| {
        tag.len() == 16
            && store
                .keys()
                .derive_all(LINK_PURPOSE)
                .iter()
                .any(|key| link_mac(key, provider, tenant, *e).verify_truncated_left(&tag).is_ok())
    });
    let Some(expires) = valid else {
        return Err(forbidden(
            "invalid_link",
            "signature",
            "this connect link is not one we issued for this tenant and CRM (altered?); ask for a new one"
                .into(),
        ));
    };
    if expires < Utc::now().timestamp() {
        return Err(forbidden(
            "link_expired",
            "expires",
            "this connect link has expired; ask for a new one".into(),
        ));
    }
    Ok(())
}

/// What the handlers need.
#[derive(Clone)]
pub struct ConnectState {
    /// Connections and apps.
    pub store: Store,
    /// For token exchanges, and to forget cached credentials after re-authorisation.
    pub tokens: TokenManager,
    /// HTTP client for the token endpoint (redirects disabled).
    pub http: reqwest::Client,
    /// State lifetime.
    pub state_ttl: Duration,
}

/// The routes, to merge into the API router.
pub fn router(state: Arc<ConnectState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/oauth/{provider}/authorize", get(authorize))
        .route("/v1/oauth/callback", get(callback))
        .with_state(state)
}

/// A 4xx/5xx with a JSON body naming the field.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    field: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn bad(error: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error, field: Some(field), message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "field": self.field, "message": self.message })))
            .into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::Config(_) => StatusCode::NOT_FOUND,
            AuthError::Transient(_) | AuthError::AppRefused(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(message = "connect flow failed", error = %e);
        // These routes are public (a browser follows them): an internal failure (a database
        // error, a key problem) is told in the log, not to whoever holds the link.
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "the connection could not be saved because of an internal error; it is in the service's log, try again later"
                .to_owned()
        } else {
            e.to_string()
        };
        Self { status, error: "connect_failed", field: None, message }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        AuthError::from(e).into()
    }
}

fn mac_key(store: &Store) -> [u8; 32] {
    store.keys().derive("oauth-state")
}

fn sign(store: &Store, id: Uuid) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&mac_key(store)).unwrap_or_else(|_| unreachable_mac());
    mac.update(id.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut raw = id.as_bytes().to_vec();
    raw.extend_from_slice(&tag[..16]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn unreachable_mac() -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this is never reached.
    <Hmac<Sha256> as Mac>::new_from_slice(b"k").unwrap_or_else(|_| std::process::abort())
}

fn verify(store: &Store, state: &str) -> Option<Uuid> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(state).ok()?;
    if raw.len() != 32 {
        return None;
    }
    let id = Uuid::from_slice(&raw[..16]).ok()?;
    // Any configured key: an authorisation started on a replica not yet rolled onto a new
    // token key (or before the roll) may come back to one that is.
    store
        .keys()
        .derive_all("oauth-state")
        .iter()
        .any(|key| {
            <Hmac<Sha256> as Mac>::new_from_slice(key).is_ok_and(|mut mac| {
                mac.update(id.as_bytes());
                mac.verify_truncated_left(&raw[16..]).is_ok()
            })
        })
        .then_some(id)
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    tenant_id: Option<String>,
    expires: Option<String>,
    signature: Option<String>,
}

async fn authorize(
    State(s): State<Arc<ConnectState>>,
    Path(provider): Path<String>,
    Query(q): Query<AuthorizeQuery>,
) -> Result<Response, ApiError> {
    let provider: Provider =
        provider.parse().map_err(|e: String| ApiError::bad("unknown_provider", "provider", e))?;
    let tenant = q.tenant_id.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::bad("missing_parameter", "tenant_id", "tenant_id is required: the tenant to connect")
    })?;
    check_link(&s.store, provider, &tenant, &q)?;
    if !s.store.tenant_exists(&tenant).await? {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "unknown_tenant",
            field: Some("tenant_id"),
            message: format!("no tenant {tenant:?}"),
        });
    }
    let app = s.store.app(provider).await?;
    let id = Uuid::new_v4();
    let state = sign(&s.store, id);
    let (url, verifier) = oauth::authorize_url(&app, &state).map_err(|e| AuthError::Config(e.to_string()))?;
    let sealed = s.store.keys().seal(verifier.secret().as_bytes(), &format!("state:{id}:verifier"));
    sqlx::query(
        "INSERT INTO oauth_states (id, tenant_id, provider, pkce_verifier, key_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(id)
    .bind(&tenant)
    .bind(provider.as_str())
    .bind(sealed)
    .bind(s.store.keys().current_id())
    .bind(s.state_ttl.as_secs_f64())
    .execute(s.store.pool())
    .await?;
    tracing::info!(message = "authorization started", tenant = %tenant, provider = %provider);
    Ok(Redirect::to(url.as_str()).into_response())
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    #[serde(rename = "accounts-server")]
    accounts_server: Option<String>,
}

async fn callback(
    State(s): State<Arc<ConnectState>>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let state = q.state.ok_or_else(|| ApiError::bad("missing_parameter", "state", "state is required"))?;
    let id = verify(&s.store, &state).ok_or_else(|| {
        ApiError::bad("invalid_state", "state", "state is not one we issued (tampered or malformed)")
    })?;
    // Claim the state: single use, unexpired.
    let mut tx = s.store.pool().begin().await?;
    #[allow(clippy::type_complexity)]
    let row: Option<(String, String, Vec<u8>, String, bool, bool)> = sqlx::query_as(
        "SELECT tenant_id, provider, pkce_verifier, key_id, expires_at < now(), used_at IS NOT NULL \
         FROM oauth_states WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tenant, provider, sealed, key_id, expired, used)) = row else {
        return Err(ApiError::bad("invalid_state", "state", "state is unknown"));
    };
    if used {
        return Err(ApiError::bad(
            "state_replayed",
            "state",
            "this state was already used; start the authorization again",
        ));
    }
    if expired {
        return Err(ApiError::bad(
            "state_expired",
            "state",
            "this authorization took too long; start it again",
        ));
    }
    sqlx::query("UPDATE oauth_states SET used_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    if let Some(err) = q.error {
        return Err(ApiError::bad("authorization_denied", "code", format!("the provider reported {err:?}")));
    }
    let code = q.code.ok_or_else(|| ApiError::bad("missing_parameter", "code", "code is required"))?;
    let provider: Provider = provider.parse().map_err(AuthError::Config)?;
    let verifier =
        s.store.keys().open(&key_id, &sealed, &format!("state:{id}:verifier")).map_err(AuthError::from)?;
    let app = s.store.app(provider).await?;
    let token_url = match q.accounts_server.as_deref() {
        Some(server) => Some(allowed_token_url(&s.store, &app, server).await?),
        None => None,
    };
    let grant = oauth::exchange_code(
        &s.http,
        &app,
        token_url.as_deref().unwrap_or(&app.token_url),
        &code,
        oauth2::PkceCodeVerifier::new(verifier.expose_secret().to_owned()),
    )
    .await
    .map_err(|e| match e {
        GrantError::Rejected { code } => {
            ApiError::bad("code_rejected", "code", format!("the provider rejected the code ({code})"))
        }
        GrantError::Transient(m) => AuthError::Transient(m).into(),
        GrantError::Config(m) => AuthError::Config(m).into(),
        GrantError::AppRefused(m) => AuthError::AppRefused(m).into(),
    })?;
    let account = match provider {
        Provider::Zoho => match zoho_org(&s.http, &app, &grant).await {
            Ok(org) => Some(org),
            Err(e) => {
                // Nothing is saved, so give the refresh token back: Zoho keeps at most 20 per
                // user and deletes the oldest to make room — a user retrying a misconfigured
                // app would otherwise lose the tokens of their working connections.
                let token_url = token_url.as_deref().unwrap_or(&app.token_url);
                give_back(&s.http, &app, token_url, &grant).await;
                return Err(e);
            }
        },
        _ => None,
    };
    let conn =
        s.store.save_grant_for(&tenant, &app, &grant, token_url.as_deref(), account.as_deref()).await?;
    s.tokens.invalidate(conn.id);
    tracing::info!(message = "connection authorised", connection = %conn.id, tenant = %tenant, provider = %provider,
        account = %conn.account_id);
    Ok((
        StatusCode::OK,
        Json(json!({
            "connection_id": conn.id, "tenant_id": conn.tenant_id, "provider": conn.provider,
            "account_id": conn.account_id, "status": conn.status,
        })),
    )
        .into_response())
}

/// A callback's `accounts-server` is used only when the app lists it.
async fn allowed_token_url(store: &Store, app: &oauth::OAuthApp, server: &str) -> Result<String, ApiError> {
    let allowed: Vec<String> =
        sqlx::query_scalar("SELECT unnest(extra_token_urls) FROM oauth_apps WHERE provider = $1")
            .bind(app.provider.as_str())
            .fetch_all(store.pool())
            .await?;
    let path = url::Url::parse(&app.token_url).map(|u| u.path().to_owned()).unwrap_or_default();
    let candidate = format!("{}{}", server.trim_end_matches('/'), path);
    if candidate == app.token_url || allowed.iter().any(|a| a == &candidate) {
        Ok(candidate)
    } else {
        Err(ApiError::bad(
            "invalid_accounts_server",
            "accounts-server",
            format!("{server:?} is not a known accounts server"),
        ))
    }
}

/// Revokes a grant's refresh token at the accounts server that issued it (Zoho's revoke
/// endpoint sits beside its token endpoint, per data centre). Best effort: a failure is logged.
async fn give_back(http: &reqwest::Client, app: &OAuthApp, token_url: &str, grant: &oauth::Grant) {
    let Some(refresh) = &grant.refresh_token else { return };
    let revoke_url = format!("{}/revoke", token_url.trim_end_matches('/'));
    match oauth::revoke_refresh(http, app, &revoke_url, refresh).await {
        Ok(()) => tracing::info!(message = "unused refresh token revoked", provider = %app.provider),
        Err(error) => {
            tracing::warn!(message = "could not revoke an unused refresh token; it stays valid at the provider",
            provider = %app.provider, %error)
        }
    }
}

/// The Zoho org a grant belongs to: its token response names only the data centre's API host,
/// shared by every org there, and keying connections (and rate budgets) by that would put every
/// Zoho tenant of a data centre on one budget.
async fn zoho_org(http: &reqwest::Client, app: &OAuthApp, grant: &oauth::Grant) -> Result<String, ApiError> {
    let base = oauth::api_base(app, &grant.fields)
        .ok_or_else(|| AuthError::Config("zoho: the token response named no API host".into()))?;
    crate::providers::zoho::org_id(http, &base, &grant.access_token).await.map_err(|e| match e {
        ProviderError::Unauthorized { .. } | ProviderError::Forbidden { .. } => {
            tracing::warn!(message = "connect flow failed: zoho org lookup refused", error = %e);
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                error: "org_lookup_refused",
                field: None,
                message: format!(
                    "Zoho refused to name the organization ({e}); the Zoho OAuth app's scopes must include ZohoCRM.org.READ"
                ),
            }
        }
        e @ (ProviderError::Throttled { .. } | ProviderError::Transient { .. } | ProviderError::OutcomeUnknown { .. }) => {
            AuthError::Transient(format!("zoho: reading the organization failed: {e}")).into()
        }
        other => {
            tracing::warn!(message = "connect flow failed: zoho org lookup failed", error = %other);
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                error: "org_lookup_failed",
                field: None,
                message: format!("Zoho did not name the organization ({other}); authorising again will not help until this is fixed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{AuthorizeQuery, Provider, Store, check_link, link_signature};
    use crate::auth::Keyring;

    fn store(current: &str, previous: &[String]) -> Store {
        let pool = sqlx::PgPool::connect_lazy("postgres://127.0.0.1:1/unused").expect("lazy pool");
        Store::new(pool, Arc::new(Keyring::from_base64(current, previous).expect("keys")))
    }

    #[tokio::test]
    async fn a_link_made_before_a_key_rotation_works_while_the_old_key_is_configured() {
        let (old, new) = (Keyring::generate_base64(), Keyring::generate_base64());
        let expires = chrono::Utc::now().timestamp() + 600;
        let query = AuthorizeQuery {
            tenant_id: Some("acme".into()),
            expires: Some(expires.to_string()),
            signature: Some(link_signature(&store(&old, &[]), Provider::Hubspot, "acme", expires)),
        };
        assert!(check_link(&store(&old, &[]), Provider::Hubspot, "acme", &query).is_ok());
        assert!(
            check_link(&store(&new, std::slice::from_ref(&old)), Provider::Hubspot, "acme", &query).is_ok()
        );
        let refused = check_link(&store(&new, &[]), Provider::Hubspot, "acme", &query).expect_err("refused");
        assert_eq!(refused.error, "invalid_link", "once the old key is gone");
        let other = check_link(&store(&old, &[]), Provider::Hubspot, "globex", &query).expect_err("refused");
        assert_eq!(other.error, "invalid_link", "another tenant");
    }
}
