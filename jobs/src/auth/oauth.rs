//! OAuth grants through the `oauth2` crate, over our reqwest client (an adapter implementing
//! `oauth2::AsyncHttpClient`, built with redirects disabled), and each provider's quirks: how
//! the client authenticates at the token endpoint, which response fields name the account and
//! the API host, and which errors mean "re-authorise" as opposed to "try later".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::providers::Provider;

/// Fields beyond RFC 6749 that providers put in token responses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderTokenFields {
    /// Salesforce: the org's API host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    /// Salesforce: identity URL `…/id/<org id>/<user id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Pipedrive and Zoho: the API host to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_domain: Option<String>,
    /// HubSpot: the portal id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<serde_json::Value>,
    /// Close: the organisation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

impl ExtraTokenFields for ProviderTokenFields {}

type TokenResp = StandardTokenResponse<ProviderTokenFields, BasicTokenType>;
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenResp,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// crm-fleet's registration with one provider (from the `oauth_apps` table).
#[derive(Clone)]
pub struct OAuthApp {
    /// Provider.
    pub provider: Provider,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Revocation endpoint.
    pub revoke_url: Option<String>,
    /// Our callback.
    pub redirect_uri: String,
    /// Scopes to ask for (space-separated).
    pub scopes: String,
    /// The fixed API host, for providers whose token responses do not name one.
    pub api_base: Option<String>,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

/// A successful grant, normalised.
pub struct Grant {
    /// New access token.
    pub access_token: SecretString,
    /// New refresh token, when the response carried one (rotation, or first grant).
    pub refresh_token: Option<SecretString>,
    /// Expiry, when the provider says (`None` for Salesforce).
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted scopes.
    pub scopes: String,
    /// The provider-specific fields.
    pub fields: ProviderTokenFields,
}

/// Why a grant failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// The code or refresh token was rejected: the user must re-authorise.
    #[error("grant rejected by the provider ({code})")]
    Rejected {
        /// OAuth error code (`invalid_grant`, `BAD_REFRESH_TOKEN`, …).
        code: String,
    },
    /// Try again later (5xx, network, token-creation limits).
    #[error("token endpoint unavailable: {0}")]
    Transient(String),
    /// Our configuration is wrong (bad URL).
    #[error("oauth configuration: {0}")]
    Config(String),
    /// The provider refused the OAuth app's own credentials ([`APP_REFUSED`]): every grant of
    /// the provider fails until `crmctl apps set` fixes them.
    #[error("{0}")]
    AppRefused(String),
}

/// The adapter: `oauth2` HTTP requests onto our reqwest client. It remembers the last status
/// so errors `oauth2` could not parse can still be classified.
struct Adapter {
    client: reqwest::Client,
    last_status: Arc<Mutex<Option<u16>>>,
}

/// Transport failure of the adapter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdapterError(String);

impl<'c> oauth2::AsyncHttpClient<'c> for Adapter {
    type Error = AdapterError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|e| AdapterError(e.to_string()))?;
            let resp = self.client.execute(request).await.map_err(|e| AdapterError(e.to_string()))?;
            *self.last_status.lock() = Some(resp.status().as_u16());
            let mut builder = http::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                builder = builder.header(k.as_str(), v.as_bytes());
            }
            let body = resp.bytes().await.map_err(|e| AdapterError(e.to_string()))?;
            builder.body(body.to_vec()).map_err(|e| AdapterError(e.to_string()))
        })
    }
}

/// How each provider wants the client to authenticate at its token endpoint.
fn auth_type(provider: Provider) -> AuthType {
    match provider {
        // Pipedrive documents HTTP Basic with client id and secret.
        Provider::Pipedrive => AuthType::BasicAuth,
        // HubSpot, Salesforce, Zoho and Close take them in the form body.
        _ => AuthType::RequestBody,
    }
}

fn client(app: &OAuthApp, token_url: &str) -> Result<OAuthClient, GrantError> {
    Ok(oauth2::Client::new(ClientId::new(app.client_id.clone()))
        .set_client_secret(ClientSecret::new(app.client_secret.expose_secret().to_owned()))
        .set_auth_uri(AuthUrl::new(app.authorize_url.clone()).map_err(|e| GrantError::Config(e.to_string()))?)
        .set_token_uri(TokenUrl::new(token_url.to_owned()).map_err(|e| GrantError::Config(e.to_string()))?)
        .set_redirect_uri(
            RedirectUrl::new(app.redirect_uri.clone()).map_err(|e| GrantError::Config(e.to_string()))?,
        )
        .set_auth_type(auth_type(app.provider)))
}

fn grant(resp: TokenResp) -> Grant {
    let expires_at =
        resp.expires_in().and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() + d);
    Grant {
        access_token: SecretString::from(resp.access_token().secret().clone()),
        refresh_token: resp.refresh_token().map(|r| SecretString::from(r.secret().clone())),
        expires_at,
        scopes: resp
            .scopes()
            .map(|s| s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        fields: resp.extra_fields().clone(),
    }
}

/// Error codes by which a token endpoint refuses the OAuth app itself (its client id or
/// secret, or the grant types it may use), not the user's grant: RFC 6749's, and HubSpot's,
/// Salesforce's and Zoho's own spellings.
const APP_REFUSED: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_client_id",
    "invalid_client_secret",
    "BAD_CLIENT_ID",
    "BAD_CLIENT_SECRET",
    "BAD_GRANT_TYPE",
];

/// A refusal of the app's credentials is not the user's grant: re-authorising every connection
/// would not fix it (and `needs_reauth` would park them all), `crmctl apps set` does.
fn app_refused(code: &str, provider_said: &str) -> Option<GrantError> {
    APP_REFUSED.contains(&code).then(|| {
        GrantError::AppRefused(format!(
            "the provider refused the OAuth app's credentials ({code}{provider_said}); fix them with \
             `crmctl apps set`, connections are left as they are"
        ))
    })
}

/// Classifies a failed grant. Rejections are 4xx answers naming a bad code or token; Zoho's
/// "too many requests" (its token-creation limit) is transient, not a rejection; a refusal of
/// the app's own credentials is [`GrantError::AppRefused`].
fn classify<RE: std::error::Error + 'static>(
    err: RequestTokenError<RE, BasicErrorResponse>,
    status: Option<u16>,
) -> GrantError {
    match err {
        RequestTokenError::ServerResponse(e) => {
            let code = e.error().to_string();
            let desc = e.error_description().cloned().unwrap_or_default();
            if desc.to_ascii_lowercase().contains("too many requests")
                || status.is_some_and(|s| s == 429 || s >= 500)
            {
                GrantError::Transient(format!("{code}: {desc}"))
            } else if let Some(refused) =
                app_refused(&code, &if desc.is_empty() { String::new() } else { format!(": {desc}") })
            {
                refused
            } else {
                GrantError::Rejected { code }
            }
        }
        RequestTokenError::Parse(_, body) => {
            let text = String::from_utf8_lossy(&body).to_string();
            let lower = text.to_ascii_lowercase();
            if status.is_none_or(|s| s == 429 || s >= 500) || lower.contains("too many requests") {
                return GrantError::Transient(format!("HTTP {status:?}"));
            }
            // A 4xx (or Zoho's 200 with an "error" key) about the grant itself names its code.
            // One that names none (a proxy's or firewall's HTML page, a 404 from a mistyped
            // token URL) says nothing about the user's grant: marking the connection
            // `needs_reauth` would park it, and every other of the provider as it comes up
            // for refresh, for an infrastructure or configuration fault.
            let code = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| {
                v.get("error")
                    .or_else(|| v.get("status"))
                    .or_else(|| v.get("errorCode"))
                    .and_then(|c| c.as_str().map(str::to_owned))
            });
            match code {
                Some(code) => app_refused(&code, "").unwrap_or(GrantError::Rejected { code }),
                None => GrantError::Transient(not_oauth(status)),
            }
        }
        RequestTokenError::Request(e) => GrantError::Transient(e.to_string()),
        // An empty error body, or a success that is not JSON: no OAuth error either.
        RequestTokenError::Other(msg) => match status {
            Some(s) if (400..500).contains(&s) => GrantError::Transient(not_oauth(status)),
            _ => GrantError::Transient(msg),
        },
    }
}

fn not_oauth(status: Option<u16>) -> String {
    let s = status.map_or_else(|| "?".to_owned(), |s| s.to_string());
    format!(
        "the token endpoint answered HTTP {s} without an OAuth error code (a proxy or firewall page, \
         or a wrong token URL?); not taken as a revoked grant"
    )
}

/// Where to send a user to authorise, with a PKCE verifier to keep for the callback.
pub fn authorize_url(app: &OAuthApp, state: &str) -> Result<(url::Url, PkceCodeVerifier), GrantError> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let c = client(app, &app.token_url)?;
    let mut req = c.authorize_url(|| CsrfToken::new(state.to_owned())).set_pkce_challenge(challenge);
    for s in app.scopes.split_whitespace() {
        req = req.add_scope(Scope::new(s.to_owned()));
    }
    if app.provider == Provider::Zoho {
        req = req.add_extra_param("access_type", "offline").add_extra_param("prompt", "consent");
    }
    let (url, _) = req.url();
    Ok((url, verifier))
}

/// Exchanges an authorization code.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp,
    token_url: &str,
    code: &str,
    verifier: PkceCodeVerifier,
) -> Result<Grant, GrantError> {
    let adapter = Adapter { client: http.clone(), last_status: Arc::default() };
    let c = client(app, token_url)?;
    c.exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(verifier)
        .request_async(&adapter)
        .await
        .map(grant)
        .map_err(|e| classify(e, *adapter.last_status.lock()))
}

/// Uses a refresh token. Never called twice with the same token by crm-fleet: callers hold
/// the connection's row lock (see [`crate::auth::tokens`]).
pub async fn refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    token_url: &str,
    refresh_token: &SecretString,
) -> Result<Grant, GrantError> {
    let adapter = Adapter { client: http.clone(), last_status: Arc::default() };
    let c = client(app, token_url)?;
    let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let started = std::time::Instant::now();
    let result = c
        .exchange_refresh_token(&token)
        .request_async(&adapter)
        .await
        .map(grant)
        .map_err(|e| classify(e, *adapter.last_status.lock()));
    metrics::histogram!("crm_fleet_token_refresh_duration_seconds", "provider" => app.provider.as_str())
        .record(started.elapsed().as_secs_f64());
    result
}

/// Revokes a refresh token the way RFC 7009 describes (a form with `token` and
/// `token_type_hint`, the client authenticated as at the token endpoint), which Zoho,
/// Salesforce, Pipedrive and Close accept. Used to give back a token we obtained but will not
/// keep. Sent with our HTTP client rather than `oauth2`'s revocation request, which refuses
/// any URL that is not `https` (the sandbox's are plain loopback HTTP).
pub async fn revoke_refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    revoke_url: &str,
    refresh_token: &SecretString,
) -> Result<(), GrantError> {
    let mut form = vec![("token", refresh_token.expose_secret()), ("token_type_hint", "refresh_token")];
    let mut req = http.post(revoke_url);
    match auth_type(app.provider) {
        AuthType::BasicAuth => req = req.basic_auth(&app.client_id, Some(app.client_secret.expose_secret())),
        _ => {
            form.push(("client_id", app.client_id.as_str()));
            form.push(("client_secret", app.client_secret.expose_secret()));
        }
    }
    let resp =
        req.form(&form).send().await.map_err(|e| GrantError::Transient(e.without_url().to_string()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else if status.is_client_error() && status.as_u16() != 429 {
        Err(GrantError::Rejected { code: format!("http_{}", status.as_u16()) })
    } else {
        Err(GrantError::Transient(format!("HTTP {status}")))
    }
}

/// The account id a grant names, per provider.
pub fn account_id(provider: Provider, f: &ProviderTokenFields) -> Option<String> {
    match provider {
        Provider::Hubspot => {
            f.hub_id.as_ref().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
        }
        // The identity URL ends in /<org id>/<user id>.
        Provider::Salesforce => f.id.as_ref().and_then(|id| id.rsplit('/').nth(1).map(str::to_owned)),
        Provider::Close => f.organization_id.clone(),
        // Pipedrive's company and Zoho's org are identified by their API domain.
        Provider::Pipedrive | Provider::Zoho => f.api_domain.clone(),
    }
}

/// The API host a grant names (Salesforce `instance_url`, Pipedrive/Zoho `api_domain`), else
/// the app's fixed host.
pub fn api_base(app: &OAuthApp, f: &ProviderTokenFields) -> Option<String> {
    f.instance_url.clone().or_else(|| f.api_domain.clone()).or_else(|| app.api_base.clone())
}

/// How long an access token is assumed valid when the provider gives no expiry (Salesforce):
/// never proactively refreshed; a 401 triggers the refresh.
pub const NO_EXPIRY: Option<Duration> = None;
