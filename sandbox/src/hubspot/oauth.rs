//! HubSpot OAuth (`crm-providers.md` §1.1): the authorize page on the `app` host, the v1 and v3 token
//! endpoints, refresh-token revocation and token introspection on the `api` host.
//!
//! * `GET /oauth/authorize` approves at once (or denies when the `authorize_deny` setting is on) and
//!   redirects to `redirect_uri` with `code` and `state`. The account approved for is the `hub_id`
//!   query parameter (a sandbox extension standing in for the account picker), else the
//!   `authorize_hub_id` setting, else the first account.
//! * `POST /oauth/v1/token` and `/oauth/v3/token` take form-encoded bodies (v1 also query parameters):
//!   `authorization_code` (with optional PKCE `code_verifier`) and `refresh_token`. The response is
//!   `{token_type: "bearer", refresh_token, access_token, expires_in, hub_id, scopes, user_id}`. A
//!   refresh returns the same refresh token unless `rotate_refresh_tokens` is on, in which case the old
//!   one stops working at once.
//! * `DELETE /oauth/v1/refresh-tokens/{token}` revokes a refresh token only; access tokens minted from
//!   it keep working until they expire.
//!
//! Invariant: every token this module hands out is recorded in the shared [`crate::tokens::TokenStore`]
//! before the response is sent, so a client can use it the moment it arrives.

use super::HubSpot;
use super::api::Params;
use super::errors;
use crate::config::ProviderKind;
use crate::server::with_operation;
use crate::tokens::{AccessCheck, AuthCode, Grant, Mint, RefreshState};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

fn page(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><title>HubSpot sandbox authorization</title></head><body><h1>Authorization error</h1><p>{}</p></body></html>",
        message.replace('<', "&lt;")
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html;charset=utf-8"));
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

/// `GET /oauth/authorize` (the `app` host).
pub(crate) async fn authorize(State(hs): State<Arc<HubSpot>>, RawQuery(q): RawQuery) -> Response {
    let p = Params::parse(q.as_deref());
    let op = "oauth.authorize";
    let Some(client_id) = p.get("client_id") else {
        return with_operation(page(StatusCode::BAD_REQUEST, "Missing client_id."), op);
    };
    if client_id != hs.app.client_id {
        return with_operation(page(StatusCode::BAD_REQUEST, "Unknown client_id."), op);
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| r.starts_with("http")) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "Missing or invalid redirect_uri."), op);
    };
    let state = p.get("state");
    let requested = split_scopes(p.get("scope").unwrap_or(""));
    if requested.is_empty() {
        return with_operation(page(StatusCode::BAD_REQUEST, "Missing scope."), op);
    }
    if let Some(bad) = requested.iter().find(|s| !super::schema::ALL_SCOPES.contains(&s.as_str())) {
        return with_operation(page(StatusCode::BAD_REQUEST, &format!("Unknown scope {bad}.")), op);
    }
    let mut scopes = requested;
    for s in split_scopes(p.get("optional_scope").unwrap_or("")) {
        if super::schema::ALL_SCOPES.contains(&s.as_str()) && !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let settings = hs.current_settings();
    if settings.authorize_deny {
        let mut pairs =
            vec![("error", "access_denied"), ("error_description", "The user denied access to the app.")];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        return with_operation(redirect(&with_query(redirect_uri, &pairs)), op);
    }
    let hub = p
        .get("hub_id")
        .and_then(|h| h.parse().ok())
        .or(settings.authorize_hub_id)
        .or_else(|| hs.accounts().first().map(|a| a.hub_id));
    let Some(account) = hub.and_then(|h| hs.account_by_id(h)) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "No such HubSpot account to install into."), op);
    };
    let now = hs.state.clock.now_ms();
    let code = hs.mint_code();
    hs.state.tokens.insert_code(AuthCode {
        code: code.clone(),
        grant: Grant {
            provider: ProviderKind::HubSpot,
            account: account.hub_id.to_string(),
            client_id: client_id.to_owned(),
            scopes,
            user_id: Some(account.user_id.to_string()),
        },
        redirect_uri: Some(redirect_uri.to_owned()),
        code_challenge: p.get("code_challenge").map(str::to_owned),
        code_challenge_method: p.get("code_challenge_method").map(str::to_owned),
        expires_at: now + settings.auth_code_ttl_secs * 1000,
        used: false,
    });
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    with_operation(redirect(&with_query(redirect_uri, &pairs)), op)
}

fn token_error(hs: &HubSpot, status: &str, message: &str, op: &str) -> Response {
    let body = json!({
        "status": status,
        "message": message,
        "correlationId": hs.state.ids.uuid(),
    });
    with_operation(errors::json_value(&hs.state, StatusCode::BAD_REQUEST, &body), op)
}

/// `POST /oauth/v1/token`: form body, query parameters also accepted.
pub(crate) async fn token_v1(State(hs): State<Arc<HubSpot>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let mut pairs = Params::parse(q.as_deref()).0;
    // Body values win over query values.
    let body_pairs = Params::parse(std::str::from_utf8(&body).ok()).0;
    pairs.retain(|(k, _)| !body_pairs.iter().any(|(bk, _)| bk == k));
    pairs.extend(body_pairs);
    token(&hs, Params(pairs))
}

/// `POST /oauth/v3/token`: form body only.
pub(crate) async fn token_v3(State(hs): State<Arc<HubSpot>>, body: Bytes) -> Response {
    token(&hs, Params::parse(std::str::from_utf8(&body).ok()))
}

fn token(hs: &HubSpot, p: Params) -> Response {
    let grant_type = p.get("grant_type").unwrap_or("");
    let op = format!("oauth.token.{}", if grant_type.is_empty() { "missing" } else { grant_type });
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return token_error(hs, "BAD_GRANT_TYPE", "missing or unknown grant type", &op);
    }
    let client_id = p.get("client_id").unwrap_or("");
    if client_id != hs.app.client_id {
        return token_error(hs, "BAD_CLIENT_ID", "missing or unknown client id", &op);
    }
    if p.get("client_secret") != Some(hs.app.client_secret.as_str()) {
        return token_error(hs, "BAD_CLIENT_SECRET", "missing or invalid client secret", &op);
    }
    let now = hs.state.clock.now_ms();
    let ttl = hs.access_ttl_ms();
    match grant_type {
        "authorization_code" => {
            let Some(redirect_uri) = p.get("redirect_uri") else {
                return token_error(hs, "BAD_REDIRECT_URI", "missing or invalid redirect uri", &op);
            };
            let code = p.get("code").unwrap_or("");
            let redeemed =
                hs.state.tokens.redeem_code(code, client_id, Some(redirect_uri), p.get("code_verifier"), now);
            let code = match redeemed {
                Ok(c) => c,
                Err(crate::tokens::CodeError::RedirectMismatch) => {
                    return token_error(
                        hs,
                        "BAD_REDIRECT_URI",
                        "redirect uri does not match the authorization request",
                        &op,
                    );
                }
                Err(crate::tokens::CodeError::BadVerifier) => {
                    return token_error(
                        hs,
                        "BAD_AUTH_CODE",
                        "code_verifier does not match the code_challenge",
                        &op,
                    );
                }
                Err(_) => return token_error(hs, "BAD_AUTH_CODE", "missing or unknown auth code", &op),
            };
            let Some(account) = code.grant.account.parse().ok().and_then(|h| hs.account_by_id(h)) else {
                return token_error(hs, "BAD_AUTH_CODE", "missing or unknown auth code", &op);
            };
            let access = hs.mint_access();
            let refresh = hs.mint_refresh();
            let scopes = code.grant.scopes.clone();
            hs.state.tokens.issue(
                code.grant,
                Mint {
                    access_token: access.clone(),
                    access_ttl_ms: Some(ttl),
                    refresh_token: Some(refresh.clone()),
                    refresh_ttl_ms: None,
                    refresh_idle_ttl_ms: None,
                },
                now,
            );
            let body = hs.token_json(&account, &access, Some(&refresh), &scopes, ttl);
            with_operation(errors::json_value(&hs.state, StatusCode::OK, &body), &op)
        }
        _ => {
            let Some(rt) = p.get("refresh_token").filter(|r| !r.is_empty()) else {
                return token_error(hs, "BAD_REFRESH_TOKEN", "missing or unknown refresh token", &op);
            };
            let rotate = hs.current_settings().rotate_refresh_tokens;
            let mint = Mint {
                access_token: hs.mint_access(),
                access_ttl_ms: Some(ttl),
                refresh_token: rotate.then(|| hs.mint_refresh()),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: None,
            };
            match hs.state.tokens.refresh(rt, Some(client_id), mint, now) {
                Ok(issued) => {
                    let grant = &issued.access.grant;
                    let Some(account) = grant.account.parse().ok().and_then(|h| hs.account_by_id(h)) else {
                        return token_error(hs, "BAD_REFRESH_TOKEN", "missing or unknown refresh token", &op);
                    };
                    let body = hs.token_json(
                        &account,
                        &issued.access.token,
                        issued.refresh_token.as_deref(),
                        &grant.scopes,
                        ttl,
                    );
                    with_operation(errors::json_value(&hs.state, StatusCode::OK, &body), &op)
                }
                Err(_) => token_error(hs, "BAD_REFRESH_TOKEN", "missing or unknown refresh token", &op),
            }
        }
    }
}

/// `DELETE /oauth/v1/refresh-tokens/{token}`: 204; access tokens stay valid.
pub(crate) async fn revoke_refresh(State(hs): State<Arc<HubSpot>>, Path(token): Path<String>) -> Response {
    let op = "oauth.refresh_token.revoke";
    let known =
        hs.state.tokens.refresh_info(&token).is_some_and(|r| r.grant.provider == ProviderKind::HubSpot);
    if !known {
        return token_error(&hs, "BAD_REFRESH_TOKEN", "missing or unknown refresh token", op);
    }
    hs.state.tokens.revoke_refresh(&token, false, hs.state.clock.now_ms());
    with_operation(StatusCode::NO_CONTENT.into_response(), op)
}

/// `GET /oauth/v1/refresh-tokens/{token}`.
pub(crate) async fn refresh_info(State(hs): State<Arc<HubSpot>>, Path(token): Path<String>) -> Response {
    let op = "oauth.refresh_token.info";
    let info = hs
        .state
        .tokens
        .refresh_info(&token)
        .filter(|r| r.grant.provider == ProviderKind::HubSpot && r.state == RefreshState::Active);
    let Some(r) = info else {
        let body = json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token", "correlationId": hs.state.ids.uuid()});
        return with_operation(errors::json_value(&hs.state, StatusCode::NOT_FOUND, &body), op);
    };
    let account = r.grant.account.parse().ok().and_then(|h| hs.account_by_id(h));
    let body = json!({
        "token": r.token,
        "user": account.as_ref().map(|a| a.user_email.clone()),
        "hub_domain": account.as_ref().map(|a| a.hub_domain.clone()),
        "scopes": r.grant.scopes,
        "hub_id": account.as_ref().map(|a| a.hub_id),
        "client_id": r.grant.client_id,
        "user_id": account.as_ref().map(|a| a.user_id),
        "token_type": "refresh",
    });
    with_operation(errors::json_value(&hs.state, StatusCode::OK, &body), op)
}

/// `GET /oauth/v1/access-tokens/{token}`.
pub(crate) async fn access_info(State(hs): State<Arc<HubSpot>>, Path(token): Path<String>) -> Response {
    let op = "oauth.access_token.info";
    let now = hs.state.clock.now_ms();
    let t = match hs.state.tokens.check_access(&token, now) {
        AccessCheck::Valid(t) if t.grant.provider == ProviderKind::HubSpot => t,
        _ => {
            let body = json!({"status": "BAD_ACCESS_TOKEN", "message": "missing, expired or unknown access token", "correlationId": hs.state.ids.uuid()});
            return with_operation(errors::json_value(&hs.state, StatusCode::NOT_FOUND, &body), op);
        }
    };
    let account = t.grant.account.parse().ok().and_then(|h| hs.account_by_id(h));
    let body = json!({
        "token": t.token,
        "user": account.as_ref().map(|a| a.user_email.clone()),
        "hub_domain": account.as_ref().map(|a| a.hub_domain.clone()),
        "scopes": t.grant.scopes,
        "hub_id": account.as_ref().map(|a| a.hub_id),
        "app_id": hs.app.app_id,
        "expires_in": t.expires_at.map(|e| (e - now) / 1000),
        "user_id": account.as_ref().map(|a| a.user_id),
        "token_type": "access",
    });
    with_operation(errors::json_value(&hs.state, StatusCode::OK, &body), op)
}
