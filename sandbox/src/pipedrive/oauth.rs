//! Pipedrive OAuth on the `oauth` host (`crm-providers.md` §3.1).
//!
//! * `GET /oauth/authorize?client_id&redirect_uri&state` approves at once (or denies when
//!   `authorize_deny` is on) and redirects with `code` and `state`. Scopes come from the app's
//!   configuration, not the request (Pipedrive's model); the sandbox grants every scope. The company
//!   approved for is the `company_id` query parameter (a sandbox extension standing in for the
//!   company picker), else the `authorize_company_id` setting, else the first company.
//! * `POST /oauth/token` authenticates the client with HTTP Basic (`client_id:client_secret`) and
//!   takes a form body: `grant_type=authorization_code&code&redirect_uri` or
//!   `grant_type=refresh_token&refresh_token`. The answer is `{access_token, token_type: "Bearer",
//!   expires_in: 3599, refresh_token, scope, api_domain}`. Refresh tokens expire after
//!   `refresh_token_idle_days` unused; with `rotate_refresh_tokens` a refresh retires the old one.
//! * `POST /oauth/revoke` (`token`, `token_type_hint`, Basic) exists while `revoke_endpoint` is on;
//!   revoking a refresh token also revokes the access tokens minted from it.
//!
//! Invariant: every token handed out is in the shared token store before the response is sent.

use super::api::Params;
use super::{Pipedrive, errors};
use crate::config::ProviderKind;
use crate::server::with_operation;
use crate::tokens::{AuthCode, CodeError, Grant, Mint};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use std::sync::Arc;

fn page(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><title>Pipedrive sandbox authorization</title></head><body><h1>Authorization error</h1><p>{}</p></body></html>",
        message.replace('<', "&lt;")
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
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

/// `GET /oauth/authorize`.
pub(crate) async fn authorize(State(pd): State<Arc<Pipedrive>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let op = "oauth.authorize";
    if p.get("client_id") != Some(pd.app.client_id.as_str()) {
        return with_operation(page(StatusCode::BAD_REQUEST, "Unknown or missing client_id."), op);
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| r.starts_with("http")) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "Missing or invalid redirect_uri."), op);
    };
    let state = p.get("state");
    let settings = pd.current_settings();
    if settings.authorize_deny {
        let mut pairs = vec![("error", "user_denied")];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        return with_operation(redirect(&with_query(redirect_uri, &pairs)), op);
    }
    let company = p
        .get("company_id")
        .and_then(|c| c.parse().ok())
        .or(settings.authorize_company_id)
        .or_else(|| pd.accounts().first().map(|a| a.company_id));
    let Some(account) = company.and_then(|c| pd.account_by_id(c)) else {
        return with_operation(
            page(StatusCode::BAD_REQUEST, "No such Pipedrive company to install into."),
            op,
        );
    };
    let now = pd.state.clock.now_ms();
    let code = pd.mint_code();
    pd.state.tokens.insert_code(AuthCode {
        code: code.clone(),
        grant: Grant {
            provider: ProviderKind::Pipedrive,
            account: account.company_id.to_string(),
            client_id: pd.app.client_id.clone(),
            scopes: super::schema::ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            user_id: Some(account.user.id.to_string()),
        },
        redirect_uri: Some(redirect_uri.to_owned()),
        code_challenge: None,
        code_challenge_method: None,
        expires_at: now + settings.auth_code_ttl_secs * 1000,
        used: false,
    });
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    with_operation(redirect(&with_query(redirect_uri, &pairs)), op)
}

fn oauth_error(pd: &Pipedrive, status: StatusCode, error: &str, message: &str, op: &str) -> Response {
    let body = json!({"success": false, "error": error, "message": message});
    with_operation(errors::json(&pd.state, status, &body), op)
}

/// The client id from a valid `Authorization: Basic` header, if the secret matches.
fn basic_client(pd: &Pipedrive, headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    (id == pd.app.client_id && secret == pd.app.client_secret).then(|| id.to_owned())
}

/// `POST /oauth/token`.
pub(crate) async fn token(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, body: Bytes) -> Response {
    let p = Params::parse(std::str::from_utf8(&body).ok());
    let grant_type = p.get("grant_type").unwrap_or("");
    let op = format!("oauth.token.{}", if grant_type.is_empty() { "missing" } else { grant_type });
    let Some(client_id) = basic_client(&pd, &headers) else {
        return oauth_error(
            &pd,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client credentials",
            &op,
        );
    };
    let now = pd.state.clock.now_ms();
    let ttl = pd.access_ttl_ms();
    match grant_type {
        "authorization_code" => {
            let code = p.get("code").unwrap_or("");
            let redeemed = pd.state.tokens.redeem_code(code, &client_id, p.get("redirect_uri"), None, now);
            let code = match redeemed {
                Ok(c) => c,
                Err(CodeError::RedirectMismatch) => {
                    return oauth_error(
                        &pd,
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Invalid redirect_uri",
                        &op,
                    );
                }
                Err(_) => {
                    return oauth_error(
                        &pd,
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Invalid authorization code",
                        &op,
                    );
                }
            };
            let Some(account) = code.grant.account.parse().ok().and_then(|c| pd.account_by_id(c)) else {
                return oauth_error(
                    &pd,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid authorization code",
                    &op,
                );
            };
            let access = pd.mint_token(&account);
            let refresh = pd.mint_token(&account);
            let scopes = code.grant.scopes.clone();
            pd.state.tokens.issue(
                code.grant,
                Mint {
                    access_token: access.clone(),
                    access_ttl_ms: Some(ttl),
                    refresh_token: Some(refresh.clone()),
                    refresh_ttl_ms: None,
                    refresh_idle_ttl_ms: Some(pd.refresh_idle_ms()),
                },
                now,
            );
            let body = pd.token_json(&access, Some(&refresh), &scopes, ttl);
            with_operation(errors::json(&pd.state, StatusCode::OK, &body), &op)
        }
        "refresh_token" => {
            let Some(rt) = p.get("refresh_token").filter(|r| !r.is_empty()) else {
                return oauth_error(
                    &pd,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                    &op,
                );
            };
            let account = pd
                .state
                .tokens
                .refresh_info(rt)
                .and_then(|r| r.grant.account.parse().ok())
                .and_then(|c| pd.account_by_id(c));
            let Some(account) = account else {
                return oauth_error(
                    &pd,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token",
                    &op,
                );
            };
            let rotate = pd.current_settings().rotate_refresh_tokens;
            let mint = Mint {
                access_token: pd.mint_token(&account),
                access_ttl_ms: Some(ttl),
                refresh_token: rotate.then(|| pd.mint_token(&account)),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: Some(pd.refresh_idle_ms()),
            };
            match pd.state.tokens.refresh(rt, Some(&client_id), mint, now) {
                Ok(issued) => {
                    let body = pd.token_json(
                        &issued.access.token,
                        issued.refresh_token.as_deref(),
                        &issued.access.grant.scopes,
                        ttl,
                    );
                    with_operation(errors::json(&pd.state, StatusCode::OK, &body), &op)
                }
                Err(_) => {
                    oauth_error(&pd, StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token", &op)
                }
            }
        }
        _ => oauth_error(
            &pd,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
            &op,
        ),
    }
}

/// `POST /oauth/revoke` (while `revoke_endpoint` is on).
pub(crate) async fn revoke(State(pd): State<Arc<Pipedrive>>, headers: HeaderMap, body: Bytes) -> Response {
    let op = "oauth.revoke";
    if !pd.current_settings().revoke_endpoint {
        return with_operation(errors::unknown_method(&pd.state), op);
    }
    if basic_client(&pd, &headers).is_none() {
        return oauth_error(
            &pd,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client credentials",
            op,
        );
    }
    let p = Params::parse(std::str::from_utf8(&body).ok());
    let Some(token) = p.get("token").filter(|t| !t.is_empty()) else {
        return oauth_error(&pd, StatusCode::BAD_REQUEST, "invalid_request", "token is required", op);
    };
    let now = pd.state.clock.now_ms();
    // `token_type_hint` is only a hint: the token is looked up in both tables, and (RFC 7009) an
    // unknown token is not an error.
    let _ = p.get("token_type_hint");
    let _ = pd.state.tokens.revoke_refresh(token, true, now) || pd.state.tokens.revoke_access(token, now);
    with_operation(errors::json(&pd.state, StatusCode::OK, &json!({"success": true})), op)
}
