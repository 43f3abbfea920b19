//! Zoho Accounts (`crm-providers.md` §4.1) on each data centre's accounts host:
//!
//! * `GET /oauth/v2/auth` approves at once (or denies with the `authorize_deny` setting) and redirects
//!   to `redirect_uri` with `code`, `state`, `location` (`us`/`eu`) and `accounts-server` (the org's
//!   accounts server, where the code must be exchanged). A refresh token comes with the code only for
//!   `access_type=offline`, and only on the first offline grant of a user and client unless
//!   `prompt=consent`. The org approved for is the `org_id` query parameter (a sandbox extension
//!   standing in for the login), else the `authorize_org_id` setting, else the first org.
//! * `POST /oauth/v2/token` takes its parameters in the query string or a form body (body wins):
//!   `authorization_code` and `refresh_token`. Answers `{access_token, refresh_token?, api_domain,
//!   token_type: "Bearer", expires_in}`; errors are `{"error": "invalid_code"}`-style bodies with the
//!   `token_error_status` setting's status. Refresh tokens never expire and never rotate; one refresh
//!   token mints at most 10 access tokens per 10 minutes (then `{"error":"Access Denied",…}` until the
//!   window has room), keeps at most 30 live access tokens (the oldest is invalidated), and a user
//!   holds at most 20 refresh tokens (the oldest is deleted), obtaining at most 5 per minute.
//! * `POST /oauth/v2/token/revoke?token=…` revokes a refresh token (and, with `revoke_cascades`, its
//!   access tokens) or an access token: `{"status":"success"}`; unknown → 400.
//!
//! Invariant: codes and refresh tokens only work on the accounts server of their org's data centre,
//! and a refused refresh consumes nothing (no window slot, no token).

use super::{Account, Dc, Host, Zoho, api::Params};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::ratelimit::RollingWindow;
use crate::server::with_operation;
use crate::tokens::{AccessCheck, AuthCode, CodeError, Grant, Mint, RefreshState};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};

/// What an authorization code was issued with.
#[derive(Clone, Copy, Debug)]
struct CodeMeta {
    dc: Dc,
    offline: bool,
    consent: bool,
}

/// Zoho-specific OAuth bookkeeping on top of the shared token store.
#[derive(Debug, Default)]
pub(crate) struct OAuthBook {
    codes: HashMap<String, CodeMeta>,
    offline_granted: HashSet<(String, String)>,
    refresh_windows: HashMap<String, RollingWindow>,
    access_by_refresh: HashMap<String, VecDeque<String>>,
    refresh_by_user: HashMap<String, VecDeque<String>>,
    refresh_minted: HashMap<String, RollingWindow>,
}

/// The accounts host's router.
pub(crate) fn router(state: Host) -> Router {
    Router::new()
        .route("/oauth/v2/auth", get(authorize))
        .route("/oauth/v2/token", post(token))
        .route("/oauth/v2/token/revoke", post(revoke))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found").into_response() })
        .with_state(state)
}

/// Mints and records a token pair (or an access token only) for `account`, enforcing the per-user
/// refresh-token cap. Returns (access token, refresh token).
pub(crate) fn issue(
    z: &Zoho,
    account: &Account,
    client_id: String,
    scopes: Vec<String>,
    with_refresh: bool,
    now: Millis,
) -> (String, Option<String>) {
    let user = account.admin();
    let access = z.mint();
    let refresh = with_refresh.then(|| z.mint());
    let grant = Grant {
        provider: ProviderKind::Zoho,
        account: account.org_id.clone(),
        client_id,
        scopes,
        user_id: Some(user.id.to_string()),
    };
    z.state.tokens.issue(
        grant,
        Mint {
            access_token: access.clone(),
            access_ttl_ms: Some(z.access_ttl_ms()),
            refresh_token: refresh.clone(),
            refresh_ttl_ms: None,
            refresh_idle_ttl_ms: None,
        },
        now,
    );
    if let Some(rt) = &refresh {
        let (max_refresh, max_access, cascade) = {
            let s = z.settings.read();
            (s.max_refresh_tokens_per_user, s.max_access_tokens_per_refresh, s.revoke_cascades)
        };
        let mut book = z.oauth.lock();
        let key = format!("{}:{}", account.org_id, user.id);
        let list = book.refresh_by_user.entry(key).or_default();
        list.push_back(rt.clone());
        list.retain(|t| z.state.tokens.refresh_info(t).is_some_and(|r| r.state == RefreshState::Active));
        while list.len() > max_refresh {
            if let Some(oldest) = list.pop_front() {
                z.state.tokens.revoke_refresh(&oldest, cascade, now);
            }
        }
        track_access(z, &mut book, rt, &access, max_access, now);
    }
    (access, refresh)
}

/// Records a new access token of refresh token `rt`; beyond the cap the oldest live one is revoked.
fn track_access(z: &Zoho, book: &mut OAuthBook, rt: &str, access: &str, max: usize, now: Millis) {
    let list = book.access_by_refresh.entry(rt.to_owned()).or_default();
    list.push_back(access.to_owned());
    list.retain(|t| matches!(z.state.tokens.check_access(t, now), AccessCheck::Valid(_)));
    while list.len() > max {
        if let Some(oldest) = list.pop_front() {
            z.state.tokens.revoke_access(&oldest, now);
        }
    }
}

/// The token endpoint's success body.
pub(crate) fn token_json(z: &Zoho, dc: Dc, access: &str, refresh: Option<&str>) -> Value {
    let mut v = json!({
        "access_token": access,
        "api_domain": z.dc_urls(dc).api_domain,
        "token_type": "Bearer",
        "expires_in": z.access_ttl_ms() / 1000,
    });
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
    }
    v
}

fn page(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><title>Zoho Accounts</title></head><body><h1>{}</h1></body></html>",
        message.replace('<', "&lt;")
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

/// `GET /oauth/v2/auth`.
async fn authorize(State(h): State<Host>, RawQuery(q): RawQuery) -> Response {
    let z = &h.zoho;
    let p = Params::parse(q.as_deref());
    let op = "oauth.authorize";
    if p.get("client_id") != Some(z.app.client_id.as_str()) {
        return with_operation(page(StatusCode::BAD_REQUEST, "Invalid Client"), op);
    }
    if p.get("response_type") != Some("code") {
        return with_operation(page(StatusCode::BAD_REQUEST, "Invalid Response Type"), op);
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| r.starts_with("http")) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "Invalid Redirect Uri"), op);
    };
    let scopes: Vec<String> = p
        .get("scope")
        .unwrap_or("")
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() || scopes.iter().any(|s| !s.starts_with("Zoho")) {
        return with_operation(page(StatusCode::BAD_REQUEST, "Invalid OAuth Scope"), op);
    }
    let settings = z.current_settings();
    let state = p.get("state");
    if settings.authorize_deny {
        let mut pairs = vec![("error", "access_denied")];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        return with_operation(redirect(&with_query(redirect_uri, &pairs)), op);
    }
    let org = p
        .get("org_id")
        .map(str::to_owned)
        .or(settings.authorize_org_id.clone())
        .or_else(|| z.accounts().first().map(|a| a.org_id.clone()));
    let Some(account) = org.and_then(|o| z.account_by_id(&o)) else {
        return with_operation(page(StatusCode::BAD_REQUEST, "No such Zoho CRM organization"), op);
    };
    let now = z.state.clock.now_ms();
    let code = z.mint();
    let admin = account.admin();
    z.state.tokens.insert_code(AuthCode {
        code: code.clone(),
        grant: Grant {
            provider: ProviderKind::Zoho,
            account: account.org_id.clone(),
            client_id: z.app.client_id.clone(),
            scopes,
            user_id: Some(admin.id.to_string()),
        },
        redirect_uri: Some(redirect_uri.to_owned()),
        code_challenge: None,
        code_challenge_method: None,
        expires_at: now + settings.auth_code_ttl_secs * 1000,
        used: false,
    });
    let meta = CodeMeta {
        dc: account.dc,
        offline: p.get("access_type").is_some_and(|a| a.eq_ignore_ascii_case("offline")),
        consent: p.get("prompt").is_some_and(|a| a.eq_ignore_ascii_case("consent")),
    };
    z.oauth.lock().codes.insert(code.clone(), meta);
    let server = z.dc_urls(account.dc).accounts_server;
    let mut pairs = Vec::new();
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    pairs.push(("code", code.as_str()));
    pairs.push(("location", account.dc.as_str()));
    pairs.push(("accounts-server", server.as_str()));
    with_operation(redirect(&with_query(redirect_uri, &pairs)), op)
}

fn token_error(z: &Zoho, error: &str, op: &str) -> Response {
    let status = StatusCode::from_u16(z.settings.read().token_error_status).unwrap_or(StatusCode::OK);
    with_operation(super::errors::json_response(status, &json!({"error": error})), op)
}

fn access_denied(z: &Zoho, op: &str) -> Response {
    let status =
        StatusCode::from_u16(z.settings.read().access_denied_status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "error": "Access Denied",
        "error_description": "You have made too many requests continuously. Please try again after some time.",
        "status": "failure",
    });
    with_operation(super::errors::json_response(status, &body), op)
}

fn merged_params(q: Option<&str>, body: &Bytes) -> Params {
    let mut pairs = Params::parse(q).0;
    let body_pairs = Params::parse(std::str::from_utf8(body).ok()).0;
    pairs.retain(|(k, _)| !body_pairs.iter().any(|(bk, _)| bk == k));
    pairs.extend(body_pairs);
    Params(pairs)
}

/// `POST /oauth/v2/token`.
async fn token(State(h): State<Host>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let z = &h.zoho;
    let p = merged_params(q.as_deref(), &body);
    let grant_type = p.get("grant_type").unwrap_or("");
    let op = format!("oauth.token.{}", if grant_type.is_empty() { "missing" } else { grant_type });
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return token_error(z, "unsupported_grant_type", &op);
    }
    let client_id = p.get("client_id").unwrap_or("");
    if client_id != z.app.client_id {
        return token_error(z, "invalid_client", &op);
    }
    if p.get("client_secret") != Some(z.app.client_secret.as_str()) {
        return token_error(z, "invalid_client_secret", &op);
    }
    let now = z.state.clock.now_ms();
    if grant_type == "authorization_code" {
        exchange_code(z, h.dc, &p, now, &op)
    } else {
        refresh(z, h.dc, &p, now, &op)
    }
}

fn exchange_code(z: &Zoho, dc: Dc, p: &Params, now: Millis, op: &str) -> Response {
    let code = p.get("code").unwrap_or("");
    let meta = z.oauth.lock().codes.get(code).copied();
    let Some(meta) = meta.filter(|m| m.dc == dc) else {
        return token_error(z, "invalid_code", op);
    };
    let redeemed = z.state.tokens.redeem_code(code, &z.app.client_id, p.get("redirect_uri"), None, now);
    let code = match redeemed {
        Ok(c) => c,
        Err(CodeError::RedirectMismatch) => return token_error(z, "invalid_redirect_uri", op),
        Err(_) => return token_error(z, "invalid_code", op),
    };
    let Some(account) = z.account_by_id(&code.grant.account) else {
        return token_error(z, "invalid_code", op);
    };
    let key = (account.org_id.clone(), code.grant.client_id.clone());
    let with_refresh = meta.offline && (meta.consent || !z.oauth.lock().offline_granted.contains(&key));
    if with_refresh {
        let mut book = z.oauth.lock();
        let user_key = format!("{}:{}", account.org_id, code.grant.user_id.clone().unwrap_or_default());
        let per_minute = z.settings.read().refresh_tokens_per_minute;
        let w = book.refresh_minted.entry(user_key).or_insert_with(|| RollingWindow::new(per_minute, 60_000));
        w.limit = per_minute;
        if w.try_acquire(now).is_refused() {
            drop(book);
            return access_denied(z, op);
        }
        book.offline_granted.insert(key);
    }
    let (access, refresh) = issue(z, &account, code.grant.client_id, code.grant.scopes, with_refresh, now);
    let body = token_json(z, account.dc, &access, refresh.as_deref());
    with_operation(super::errors::json_response(StatusCode::OK, &body), op)
}

fn refresh(z: &Zoho, dc: Dc, p: &Params, now: Millis, op: &str) -> Response {
    let Some(rt) = p.get("refresh_token").filter(|r| !r.is_empty()) else {
        return token_error(z, "invalid_code", op);
    };
    let info = z.state.tokens.refresh_info(rt).filter(|r| r.grant.provider == ProviderKind::Zoho);
    let Some(info) = info else {
        return token_error(z, "invalid_code", op);
    };
    let Some(account) = z.account_by_id(&info.grant.account) else {
        return token_error(z, "invalid_code", op);
    };
    if account.dc != dc {
        z.state.tokens.count_refresh_failure(ProviderKind::Zoho, &account.org_id);
        return token_error(z, "invalid_code", op);
    }
    let (limit, window_ms, max_access) = {
        let s = z.settings.read();
        (s.tokens_per_refresh_window, s.refresh_window_secs * 1000, s.max_access_tokens_per_refresh)
    };
    if info.state == RefreshState::Active {
        let mut book = z.oauth.lock();
        let w =
            book.refresh_windows.entry(rt.to_owned()).or_insert_with(|| RollingWindow::new(limit, window_ms));
        w.limit = limit;
        w.window_ms = window_ms;
        if w.check(now).is_refused() {
            drop(book);
            z.state.tokens.count_refresh_failure(ProviderKind::Zoho, &account.org_id);
            return access_denied(z, op);
        }
    }
    let mint = Mint {
        access_token: z.mint(),
        access_ttl_ms: Some(z.access_ttl_ms()),
        refresh_token: None,
        refresh_ttl_ms: None,
        refresh_idle_ttl_ms: None,
    };
    match z.state.tokens.refresh(rt, Some(&z.app.client_id), mint, now) {
        Ok(issued) => {
            let mut book = z.oauth.lock();
            if let Some(w) = book.refresh_windows.get_mut(rt) {
                w.record(now);
            }
            track_access(z, &mut book, rt, &issued.access.token, max_access, now);
            drop(book);
            let body = token_json(z, account.dc, &issued.access.token, None);
            with_operation(super::errors::json_response(StatusCode::OK, &body), op)
        }
        Err(_) => token_error(z, "invalid_code", op),
    }
}

/// `POST /oauth/v2/token/revoke?token=…`.
async fn revoke(State(h): State<Host>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let z = &h.zoho;
    let p = merged_params(q.as_deref(), &body);
    let op = "oauth.revoke";
    let token = p.get("token").unwrap_or("");
    let now = z.state.clock.now_ms();
    let in_dc = |org: &str| z.account_by_id(org).is_some_and(|a| a.dc == h.dc);
    let failure = || {
        with_operation(
            super::errors::json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_token", "status": "failure"}),
            ),
            op,
        )
    };
    if let Some(r) = z.state.tokens.refresh_info(token).filter(|r| r.grant.provider == ProviderKind::Zoho) {
        if !in_dc(&r.grant.account) || r.state != RefreshState::Active {
            return failure();
        }
        let cascade = z.settings.read().revoke_cascades;
        z.state.tokens.revoke_refresh(token, cascade, now);
        return with_operation(
            super::errors::json_response(StatusCode::OK, &json!({"status": "success"})),
            op,
        );
    }
    if let Some(a) = z.state.tokens.access_info(token).filter(|a| a.grant.provider == ProviderKind::Zoho) {
        if !in_dc(&a.grant.account) {
            return failure();
        }
        z.state.tokens.revoke_access(token, now);
        return with_operation(
            super::errors::json_response(StatusCode::OK, &json!({"status": "success"})),
            op,
        );
    }
    failure()
}

/// Whether an admission outcome is a refusal.
trait Refused {
    fn is_refused(&self) -> bool;
}

impl Refused for crate::ratelimit::Admit {
    fn is_refused(&self) -> bool {
        matches!(self, crate::ratelimit::Admit::Refused { .. })
    }
}
