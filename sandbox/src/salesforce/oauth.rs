//! Salesforce OAuth on the `login` host (`crm-providers.md` §2.1): the web-server flow's authorize
//! page, the token endpoint (`authorization_code`, `refresh_token`), revocation and identity URLs.
//!
//! * `GET /services/oauth2/authorize` approves at once (or denies with the `authorize_deny` setting)
//!   and redirects to `redirect_uri` with `code` and `state`. The org approved for is the `org_id`
//!   query parameter (a sandbox extension standing in for the user logging in), else the
//!   `authorize_org_id` setting, else the first org.
//! * `POST /services/oauth2/token` takes a form body with the client secret in it. Responses carry
//!   `access_token`, `refresh_token` (on code exchange with the `refresh_token`/`offline_access` scope,
//!   and on refresh only when rotation is on), `signature` (HMAC-SHA256 of `id` + `issued_at` keyed
//!   with the client secret), `scope`, `instance_url`, `id`, `token_type: "Bearer"` and `issued_at`,
//!   and **no `expires_in`**: the session lasts until it is idle for the session timeout.
//! * The connected app's refresh-token policy is evaluated when a refresh token is used, so changing
//!   it applies to tokens already issued, as in Salesforce.
//! * `POST /services/oauth2/revoke` (`token=` in the body, or the query on GET): 200; revoking a
//!   refresh token also revokes the access tokens minted from it.
//!
//! Invariant: every token this module hands out is in the shared [`crate::tokens::TokenStore`]
//! before the response is sent, and every refused refresh is counted as a refresh failure.

use super::{DEFAULT_SCOPE, SCOPES, Salesforce, errors};
use crate::config::{ProviderKind, SalesforceRefreshPolicy};
use crate::server::with_operation;
use crate::tokens::{AccessCheck, AuthCode, CodeError, Grant, Mint, RefreshState};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// Form or query parameters.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Params(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
}

/// HMAC-SHA256 (RFC 2104) over SHA-256.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

/// The token response's `signature`: base64 of HMAC-SHA256(client secret, `id` + `issued_at`).
pub(crate) fn signature(client_secret: &str, id: &str, issued_at: &str) -> String {
    use base64::Engine;
    let mac = hmac_sha256(client_secret.as_bytes(), format!("{id}{issued_at}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac)
}

fn page(status: StatusCode, error: &str, description: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><title>Salesforce sandbox authorization</title></head><body><h1>OAuth Error</h1><p>error={}</p><p>error_description={}</p></body></html>",
        error.replace('<', "&lt;"),
        description.replace('<', "&lt;")
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html;charset=UTF-8"));
    r
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut u = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        u.push(sep);
        sep = '&';
        u.push_str(k);
        u.push('=');
        u.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
    }
    u
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split([' ', ',', '+']).map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

/// `GET /services/oauth2/authorize` (web-server flow).
pub(crate) async fn authorize(State(sf): State<Arc<Salesforce>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let op = "oauth.authorize";
    if p.get("client_id") != Some(sf.app.client_id.as_str()) {
        return with_operation(
            page(StatusCode::BAD_REQUEST, "invalid_client_id", "client identifier invalid"),
            op,
        );
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| r.starts_with("http")) else {
        return with_operation(
            page(StatusCode::BAD_REQUEST, "redirect_uri_mismatch", "redirect_uri must match configuration"),
            op,
        );
    };
    let state = p.get("state");
    let fail = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        with_operation(redirect(&with_query(redirect_uri, &pairs)), op)
    };
    if p.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response type not supported");
    }
    let scopes = split_scopes(p.get("scope").unwrap_or(DEFAULT_SCOPE));
    if scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return fail("invalid_scope", "the requested scope is not allowed");
    }
    let settings = sf.current_settings();
    if settings.authorize_deny {
        return fail("access_denied", "end-user denied authorization");
    }
    let org = p
        .get("org_id")
        .map(str::to_owned)
        .or(settings.authorize_org_id.clone())
        .or_else(|| sf.accounts().first().map(|a| a.org_id.clone()));
    let Some(account) = org.and_then(|o| sf.account_by_id(&o)) else {
        return with_operation(
            page(StatusCode::BAD_REQUEST, "invalid_request", "no such org to log in to"),
            op,
        );
    };
    let now = sf.state.clock.now_ms();
    let code = sf.mint_code();
    sf.state.tokens.insert_code(AuthCode {
        code: code.clone(),
        grant: Grant {
            provider: ProviderKind::Salesforce,
            account: account.org_id.clone(),
            client_id: sf.app.client_id.clone(),
            scopes,
            user_id: Some(account.user_id.clone()),
        },
        redirect_uri: Some(redirect_uri.to_owned()),
        code_challenge: p.get("code_challenge").map(str::to_owned),
        code_challenge_method: p.get("code_challenge_method").map(str::to_owned).or(Some("S256".to_owned())),
        expires_at: now + settings.auth_code_ttl_secs * 1000,
        used: false,
    });
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    with_operation(redirect(&with_query(redirect_uri, &pairs)), op)
}

fn token_error(error: &str, description: &str, op: &str) -> Response {
    with_operation(errors::oauth_error(StatusCode::BAD_REQUEST, error, description), op)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache,must-revalidate,max-age=0,no-store,private"),
    );
    r
}

/// `POST /services/oauth2/token`.
pub(crate) async fn token(State(sf): State<Arc<Salesforce>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return token_error("invalid_request", "must use HTTP POST", "oauth.token.invalid");
    }
    let p = Params::parse(std::str::from_utf8(&body).ok());
    let grant_type = p.get("grant_type").unwrap_or("");
    let op = format!("oauth.token.{}", if grant_type.is_empty() { "missing" } else { grant_type });
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return token_error("unsupported_grant_type", "grant type not supported", &op);
    }
    if p.get("client_id") != Some(sf.app.client_id.as_str()) {
        return token_error("invalid_client_id", "client identifier invalid", &op);
    }
    if p.get("client_secret") != Some(sf.app.client_secret.as_str()) {
        return token_error("invalid_client", "invalid client credentials", &op);
    }
    let now = sf.state.clock.now_ms();
    let ttl = sf.session_ttl_ms();
    let client_id = sf.app.client_id.clone();
    if grant_type == "authorization_code" {
        if p.get("redirect_uri").is_none() {
            return token_error("redirect_uri_mismatch", "redirect_uri must match configuration", &op);
        }
        let code = p.get("code").unwrap_or("");
        let redeemed =
            sf.state.tokens.redeem_code(code, &client_id, p.get("redirect_uri"), p.get("code_verifier"), now);
        let code = match redeemed {
            Ok(c) => c,
            Err(CodeError::RedirectMismatch) => {
                return token_error("redirect_uri_mismatch", "redirect_uri must match configuration", &op);
            }
            Err(CodeError::BadVerifier) => return token_error("invalid_grant", "invalid code verifier", &op),
            Err(CodeError::Expired) => {
                return token_error("invalid_grant", "expired authorization code", &op);
            }
            Err(_) => return token_error("invalid_grant", "invalid authorization code", &op),
        };
        let Some(account) = sf.account_by_id(&code.grant.account) else {
            return token_error("invalid_grant", "invalid authorization code", &op);
        };
        let access = sf.mint_access(&account.org_id);
        let refresh = Salesforce::grants_refresh(&code.grant.scopes).then(|| sf.mint_refresh());
        let scopes = code.grant.scopes.clone();
        sf.state.tokens.issue(
            code.grant,
            Mint {
                access_token: access.clone(),
                access_ttl_ms: Some(ttl),
                refresh_token: refresh.clone(),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: None,
            },
            now,
        );
        let body = sf.token_json(&account, &access, refresh.as_deref(), &scopes, now);
        return with_operation(no_store(errors::json(StatusCode::OK, &body)), &op);
    }
    let Some(rt) = p.get("refresh_token").filter(|r| !r.is_empty()) else {
        return token_error("invalid_grant", "expired access/refresh token", &op);
    };
    let settings = sf.current_settings();
    // The connected app's policy is checked at use, so a policy change applies to existing tokens.
    if let Some(info) =
        sf.state.tokens.refresh_info(rt).filter(|r| r.grant.provider == ProviderKind::Salesforce)
        && info.state == RefreshState::Active
    {
        let ttl_ms = settings.refresh_token_ttl_secs.saturating_mul(1000);
        let expired = match settings.refresh_token_policy {
            SalesforceRefreshPolicy::ValidUntilRevoked => false,
            SalesforceRefreshPolicy::ExpireAfter => now - info.issued_at >= ttl_ms,
            SalesforceRefreshPolicy::ExpireIfIdle => now - info.last_used_at >= ttl_ms,
            SalesforceRefreshPolicy::ImmediatelyExpire => true,
        };
        if expired {
            sf.state.tokens.count_refresh_failure(ProviderKind::Salesforce, &info.grant.account);
            return token_error("invalid_grant", "expired access/refresh token", &op);
        }
    }
    let Some(org) = sf.state.tokens.refresh_info(rt).map(|r| r.grant.account) else {
        return token_error("invalid_grant", "expired access/refresh token", &op);
    };
    let mint = Mint {
        access_token: sf.mint_access(&org),
        access_ttl_ms: Some(ttl),
        refresh_token: settings.rotate_refresh_tokens.then(|| sf.mint_refresh()),
        refresh_ttl_ms: None,
        refresh_idle_ttl_ms: None,
    };
    match sf.state.tokens.refresh(rt, Some(&client_id), mint, now) {
        Ok(issued) => {
            let Some(account) = sf.account_by_id(&issued.access.grant.account) else {
                return token_error("invalid_grant", "expired access/refresh token", &op);
            };
            if settings.migrate_instance_on_next_refresh {
                let next = 1 - account.instance().min(1);
                account.instance.store(next, std::sync::atomic::Ordering::SeqCst);
                sf.settings.write().migrate_instance_on_next_refresh = false;
            }
            let rotated = issued.refresh_token.as_deref().filter(|r| *r != rt);
            let body =
                sf.token_json(&account, &issued.access.token, rotated, &issued.access.grant.scopes, now);
            with_operation(no_store(errors::json(StatusCode::OK, &body)), &op)
        }
        Err(_) => token_error("invalid_grant", "expired access/refresh token", &op),
    }
}

/// `POST /services/oauth2/revoke` (also `GET ?token=`): revokes an access or refresh token.
pub(crate) async fn revoke(
    State(sf): State<Arc<Salesforce>>,
    method: Method,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let op = "oauth.revoke";
    let p = if method == Method::GET {
        Params::parse(q.as_deref())
    } else {
        Params::parse(std::str::from_utf8(&body).ok())
    };
    let Some(token) = p.get("token").filter(|t| !t.is_empty()) else {
        return with_operation(
            errors::oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                "this token type is not supported",
            ),
            op,
        );
    };
    let now = sf.state.clock.now_ms();
    let tokens = &sf.state.tokens;
    let is_ours = |provider: ProviderKind| provider == ProviderKind::Salesforce;
    if let Some(r) = tokens.refresh_info(token).filter(|r| is_ours(r.grant.provider)) {
        if r.state != RefreshState::Active {
            return with_operation(
                errors::oauth_error(StatusCode::BAD_REQUEST, "invalid_token", "invalid token"),
                op,
            );
        }
        tokens.revoke_refresh(token, true, now);
        return with_operation(StatusCode::OK.into_response(), op);
    }
    match tokens.check_access(token, now) {
        AccessCheck::Valid(t) | AccessCheck::Expired { token: t, .. } if is_ours(t.grant.provider) => {
            tokens.revoke_access(token, now);
            with_operation(StatusCode::OK.into_response(), op)
        }
        _ => {
            with_operation(errors::oauth_error(StatusCode::BAD_REQUEST, "invalid_token", "invalid token"), op)
        }
    }
}

/// `GET /id/{org}/{user}`: the identity URL a token response names in `id`.
pub(crate) async fn identity(
    State(sf): State<Arc<Salesforce>>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let op = "oauth.identity";
    let (account, token) = match sf.authenticate(&headers, None) {
        Ok(x) => x,
        Err(_) => {
            return with_operation(
                errors::oauth_error(StatusCode::FORBIDDEN, "Bad_OAuth_Token", "Bad OAuth Token"),
                op,
            );
        }
    };
    let same_org = super::schema::normalize_id(&org).as_deref() == Some(account.org_id.as_str());
    let same_user = super::schema::normalize_id(&user).as_deref() == token.grant.user_id.as_deref();
    if !(same_org && same_user) {
        return with_operation(errors::oauth_error(StatusCode::FORBIDDEN, "Bad_Id", "Bad Id"), op);
    }
    let (name, email) = {
        let d = account.data.read();
        let u = d.find(&account.user_id);
        (
            u.and_then(|u| u.get("Name")).map(|v| v.text()).unwrap_or_default(),
            u.and_then(|u| u.get("Email")).map(|v| v.text()).unwrap_or_default(),
        )
    };
    let instance = sf.instance_url(&account);
    let data = |path: &str| format!("{instance}/services/data/v{{version}}/{path}");
    let body = json!({
        "id": sf.identity_url(&account),
        "asserted_user": true,
        "user_id": account.user_id,
        "organization_id": account.org_id,
        "username": account.username,
        "nick_name": account.username.split('@').next().unwrap_or(""),
        "display_name": name,
        "email": email,
        "active": true,
        "user_type": "STANDARD",
        "language": "en_US",
        "locale": "en_US",
        "utcOffset": 0,
        "urls": {
            "rest": data(""),
            "sobjects": data("sobjects/"),
            "query": data("query/"),
            "limits": data("limits/"),
            "profile": format!("{instance}/{}", account.user_id),
        },
    });
    with_operation(errors::json(StatusCode::OK, &body), op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
