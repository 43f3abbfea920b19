//! Close OAuth (`crm-providers.md` §5.1): the authorize page on the `app` host, the token and revoke
//! endpoints on the `api` host.
//!
//! * `GET /oauth2/authorize/?client_id&response_type=code[&redirect_uri][&state]` approves at once (or
//!   denies with `authorize_deny`) and redirects to the app's redirect URI with `code` (and `state`).
//!   The organization approved for is the `organization_id` query parameter (a sandbox extension
//!   standing in for the consent screen's organization picker), else the
//!   `authorize_organization_id` setting, else the first organization.
//! * `POST /oauth2/token/` takes a form body with the client credentials **in the body**
//!   (`client_id`, `client_secret`); HTTP Basic client authentication is refused. Grants:
//!   `authorization_code` (`code`) and `refresh_token` (`refresh_token`). The answer is
//!   `{token_type: "Bearer", access_token, expires_in, refresh_token, scope, organization_id,
//!   user_id}`. **Every refresh rotates**: the old refresh token is revoked as the new one is issued,
//!   so of two concurrent refreshes with one token exactly one succeeds; the loser gets 400
//!   `{"error": "invalid_grant"}` and is counted (`refresh_reuse_detected` on the account, plus the
//!   core's `token_refresh_failures`).
//! * `POST /oauth2/revoke/` (`client_id`, `client_secret`, `token`) revokes a refresh token and the
//!   access tokens minted from it; 200 with an empty body, also for unknown tokens (RFC 7009).
//!
//! Error bodies follow RFC 6749 (`invalid_client` 401, `invalid_grant` / `invalid_request` /
//! `unsupported_grant_type` 400); Close's exact bodies are UNCONFIRMED.
//!
//! Invariant: every token handed out is recorded in the shared [`crate::tokens::TokenStore`] before
//! the response is sent.

use super::{Close, errors};
use crate::config::ProviderKind;
use crate::server::with_operation;
use crate::tokens::{AuthCode, Grant, RefreshError};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

struct Params(Vec<(String, String)>);

impl Params {
    fn parse(q: Option<&str>) -> Self {
        Params(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
}

fn page(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><title>Close sandbox authorization</title></head><body><h1>Authorization error</h1><p>{}</p></body></html>",
        message.replace('<', "&lt;")
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

fn redirect(base: &str, pairs: &[(&str, &str)]) -> Response {
    let mut u = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        u.push(sep);
        sep = '&';
        u.push_str(k);
        u.push('=');
        u.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&u) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `GET /oauth2/authorize/` (the `app` host).
pub(crate) async fn authorize(State(c): State<Arc<Close>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let op = "oauth.authorize";
    if p.get("client_id") != Some(c.app.client_id.as_str()) {
        return with_operation(page(StatusCode::BAD_REQUEST, "Unknown or missing client_id."), op);
    }
    if p.get("response_type") != Some("code") {
        return with_operation(page(StatusCode::BAD_REQUEST, "response_type must be code."), op);
    }
    if let Some(r) = p.get("redirect_uri")
        && r != c.app.redirect_uri
    {
        return with_operation(
            page(StatusCode::BAD_REQUEST, "redirect_uri does not match the app's configuration."),
            op,
        );
    }
    let redirect_uri = c.app.redirect_uri.clone();
    let state = p.get("state");
    let settings = c.current_settings();
    if settings.authorize_deny {
        let mut pairs = vec![("error", "access_denied")];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        return with_operation(redirect(&redirect_uri, &pairs), op);
    }
    let org = p
        .get("organization_id")
        .map(str::to_owned)
        .or(settings.authorize_organization_id)
        .or_else(|| c.accounts().first().map(|a| a.org_id.clone()));
    let Some(account) = org.and_then(|o| c.account_by_id(&o)) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "No such organization."), op);
    };
    let code = c.mint_token();
    let now = c.state.clock.now_ms();
    c.state.tokens.insert_code(AuthCode {
        code: code.clone(),
        grant: c.grant_for(&account),
        redirect_uri: None,
        code_challenge: None,
        code_challenge_method: None,
        expires_at: now + settings.auth_code_ttl_secs * 1000,
        used: false,
    });
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    with_operation(redirect(&redirect_uri, &pairs), op)
}

fn oauth_error(status: StatusCode, error: &str, op: &str) -> Response {
    with_operation(errors::json_response(status, &json!({"error": error})), op)
}

fn client_ok(c: &Close, p: &Params) -> bool {
    p.get("client_id") == Some(c.app.client_id.as_str())
        && p.get("client_secret") == Some(c.app.client_secret.as_str())
}

/// `POST /oauth2/token/`: form body with client credentials in it.
pub(crate) async fn token(State(c): State<Arc<Close>>, body: Bytes) -> Response {
    let p = Params::parse(std::str::from_utf8(&body).ok());
    let grant_type = p.get("grant_type").unwrap_or("");
    let op = format!("oauth.token.{}", if grant_type.is_empty() { "missing" } else { grant_type });
    if !client_ok(&c, &p) {
        // Close wants the client credentials in the body; Basic client authentication is refused.
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &op);
    }
    let now = c.state.clock.now_ms();
    let ttl = c.access_ttl_ms();
    match grant_type {
        "authorization_code" => {
            let code = p.get("code").unwrap_or("");
            let Ok(code) = c.state.tokens.redeem_code(code, &c.app.client_id, None, None, now) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &op);
            };
            if code.grant.provider != ProviderKind::Close {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &op);
            }
            let Some(account) = c.account_by_id(&code.grant.account) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &op);
            };
            let mint = c.mint();
            let (access, refresh) = (mint.access_token.clone(), mint.refresh_token.clone());
            let user = code.grant.user_id.clone().unwrap_or_else(|| account.owner());
            c.state.tokens.issue(code.grant, mint, now);
            let body = c.token_json(&account.org_id, &user, &access, refresh.as_deref(), ttl);
            with_operation(errors::ok(&body), &op)
        }
        "refresh_token" => {
            let Some(rt) = p.get("refresh_token").filter(|r| !r.is_empty()) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &op);
            };
            match c.state.tokens.refresh(rt, Some(&c.app.client_id), c.mint(), now) {
                Ok(issued) => {
                    let g: &Grant = &issued.access.grant;
                    let user = g.user_id.clone().unwrap_or_default();
                    let body = c.token_json(
                        &g.account,
                        &user,
                        &issued.access.token,
                        issued.refresh_token.as_deref(),
                        ttl,
                    );
                    with_operation(errors::ok(&body), &op)
                }
                Err((why, grant)) => {
                    if why == RefreshError::Rotated
                        && let Some(g) = grant.filter(|g| g.provider == ProviderKind::Close)
                        && let Some(a) = c.account_by_id(&g.account)
                    {
                        a.refresh_reuse.fetch_add(1, Ordering::SeqCst);
                        if c.current_settings().revoke_family_on_reuse {
                            c.revoke_chain(rt, now);
                        }
                    }
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &op)
                }
            }
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &op),
    }
}

/// `POST /oauth2/revoke/`: revokes a refresh token and its access tokens.
pub(crate) async fn revoke(State(c): State<Arc<Close>>, body: Bytes) -> Response {
    let p = Params::parse(std::str::from_utf8(&body).ok());
    let op = "oauth.revoke";
    if !client_ok(&c, &p) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", op);
    }
    let Some(token) = p.get("token").filter(|t| !t.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", op);
    };
    let now = c.state.clock.now_ms();
    let is_close =
        c.state.tokens.refresh_info(token).is_some_and(|r| r.grant.provider == ProviderKind::Close);
    if is_close {
        c.state.tokens.revoke_refresh(token, true, now);
    } else if c.state.tokens.account_of(token).is_some_and(|(p, _)| p == ProviderKind::Close) {
        c.state.tokens.revoke_access(token, now);
    }
    with_operation(StatusCode::OK.into_response(), op)
}
