//! The Close imitation (`crm-providers.md` §5 and §7.6).
//!
//! Two hosts, two listeners: `api` stands for `api.close.com` (everything under `/api/v1`, plus the
//! OAuth token and revoke endpoints) and `app` for `app.close.com` (the OAuth authorize page).
//! Submodules:
//!
//! * [`store`]: per-organization records, indexes, journal, validation and seeding;
//! * `events`: the event log (newest first, cursors, 30-day retention, consolidation);
//! * `limits`: token buckets per endpoint group × API key and per organization;
//! * `errors`: Close's error bodies;
//! * `oauth`, `api`, `search`: the HTTP handlers (`search` is the Advanced Filtering API).
//!
//! Every API request goes: authenticate (HTTP Basic with an API key as the user, or an OAuth Bearer
//! token; 401 `{"error":"Unauthorized"}`) → rate limits (429 with `RateLimit`, `retry-after` and the
//! legacy body) → handler; every response that got past authentication carries the `RateLimit`
//! header.
//!
//! Invariant: an organization's records are only touched under its `data` lock, and every write
//! stamps the logical clock, lands in the journal and writes an event; the control-plane operations
//! use the same write paths as the API, so changes "as another user" differ only in their journal
//! `source` and acting user.

// Handlers return early with a finished `Response`; boxing it would add noise on cold paths only.
#![allow(clippy::result_large_err)]

mod api;
mod errors;
mod events;
mod limits;
mod oauth;
mod search;
pub mod store;

pub use limits::{LimitPatch, Quota, Refusal};

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::faults::FaultAction;
use crate::observe::created_object;
use crate::provider::{ControlError, Provider, ProviderInit, ProviderUrls};
use crate::seed::{self, SharedRng, rng_for};
use crate::server::{Operation, mark_throttled};
use crate::state::SandboxState;
use crate::tokens::{AccessCheck, Grant, Mint, RefreshState};
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use limits::AccountLimits;
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{AccountData, Actor, Kind, WriteError};

/// Scopes Close grants (`offline_access` is what yields a refresh token).
pub const SCOPE: &str = "all.full_access offline_access";
/// Most API keys one account may be created with.
pub const MAX_API_KEYS: usize = 10;

/// Close's base URLs, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseUrls {
    /// Stands for `https://api.close.com`: API paths start with `/api/v1/`.
    pub api_base: String,
    /// Stands for `https://app.close.com`.
    pub app_base: String,
    /// `GET` authorize page (`{app_base}/oauth2/authorize/`).
    pub authorize_url: String,
    /// Token endpoint (`{api_base}/oauth2/token/`).
    pub token_url: String,
    /// Revoke endpoint (`{api_base}/oauth2/revoke/`).
    pub revoke_url: String,
}

impl CloseUrls {
    /// Reads them from the generic URL map.
    pub fn from_map(m: &ProviderUrls) -> Option<Self> {
        Some(Self {
            api_base: m.get("api_base")?.clone(),
            app_base: m.get("app_base")?.clone(),
            authorize_url: m.get("authorize_url")?.clone(),
            token_url: m.get("token_url")?.clone(),
            revoke_url: m.get("revoke_url")?.clone(),
        })
    }
}

/// Provider-wide settings (`GET`/`PATCH /_sandbox/close/settings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `expires_in` of new access tokens, seconds (3600 documented).
    pub access_token_ttl_secs: i64,
    /// Absolute lifetime of refresh tokens (UNCONFIRMED; `null` = never expire).
    pub refresh_token_ttl_secs: Option<i64>,
    /// Reusing a rotated refresh token also revokes the token that replaced it (OAuth 2.1 reuse
    /// detection; UNCONFIRMED for Close, off by default).
    pub revoke_family_on_reuse: bool,
    /// Reject HTTP Basic credentials with a non-empty password (UNCONFIRMED; accepted by default).
    pub reject_basic_password: bool,
    /// 429 bodies carry the legacy `{"error": {...rate_reset...}}` JSON (deprecated; off sends an
    /// empty body).
    pub rate_limit_legacy_body: bool,
    /// Advanced Filtering cursors expire this long after their last use (documented: 30 s).
    pub search_cursor_ttl_secs: i64,
    /// Most objects one Advanced Filtering pagination sequence returns (documented: 10,000).
    pub search_max_results: usize,
    /// Largest `_limit` the Advanced Filtering API accepts (UNCONFIRMED: 200).
    pub search_limit_max: usize,
    /// Updates of one object within this many ms merge into one event (0 = never).
    pub event_consolidation_ms: Millis,
    /// Days events stay readable (documented: 30).
    pub event_retention_days: i64,
    /// Largest `_limit` per resource (`lead`, `contact`, `opportunity`, `task`, `activity`).
    pub max_limit: BTreeMap<String, usize>,
    /// Largest `_skip` per resource ("a maximum `_skip` limit which varies per resource").
    pub max_skip: BTreeMap<String, usize>,
    /// The authorize page denies (redirect with `error=access_denied`).
    pub authorize_deny: bool,
    /// Organization the authorize page approves for when the request names none (first if unset).
    pub authorize_organization_id: Option<String>,
    /// Lifetime of authorization codes, seconds.
    pub auth_code_ttl_secs: i64,
}

/// Resources with offset paging, for `max_limit` / `max_skip`.
pub const PAGED_RESOURCES: [&str; 5] = ["lead", "contact", "opportunity", "task", "activity"];

impl Settings {
    fn from_config(c: &crate::config::CloseConfig) -> Self {
        let per = |n: usize| PAGED_RESOURCES.iter().map(|r| ((*r).to_owned(), n)).collect();
        Self {
            access_token_ttl_secs: c.access_token_ttl_secs,
            refresh_token_ttl_secs: None,
            revoke_family_on_reuse: false,
            reject_basic_password: false,
            rate_limit_legacy_body: c.rate_limit_legacy_body,
            search_cursor_ttl_secs: c.search_cursor_ttl_secs,
            search_max_results: 10_000,
            search_limit_max: 200,
            event_consolidation_ms: c.event_consolidation_ms,
            event_retention_days: events::RETENTION_DAYS,
            max_limit: per(100),
            max_skip: per(10_000),
            authorize_deny: false,
            authorize_organization_id: None,
            auth_code_ttl_secs: 600,
        }
    }
}

/// The sandbox's OAuth app (one per sandbox, installable in every organization).
#[derive(Clone, Debug, Serialize)]
pub struct OAuthApp {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// The redirect URI configured for the app.
    pub redirect_uri: String,
}

/// One Close organization.
#[derive(Debug)]
pub struct Account {
    /// `orga_…`.
    pub org_id: String,
    /// Records, events, journal.
    pub data: RwLock<AccountData>,
    /// Buckets.
    pub limits: Mutex<AccountLimits>,
    api_keys: Mutex<Vec<String>>,
    initial_tokens: Mutex<Value>,
    /// Refresh attempts with an already-rotated refresh token (the rotation race, observed).
    pub refresh_reuse: AtomicU64,
    pub(crate) snapshots: Mutex<HashMap<String, search::Snapshot>>,
}

impl Account {
    /// The account's API keys.
    pub fn api_keys(&self) -> Vec<String> {
        self.api_keys.lock().clone()
    }

    /// The user that authorized the app and owns the keys.
    pub fn owner(&self) -> String {
        self.data.read().meta.users[0].id.clone()
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API key (HTTP Basic).
    ApiKey(String),
    /// An OAuth access token of a grant.
    OAuth {
        /// The OAuth client.
        client_id: String,
        /// The authorizing user.
        user_id: String,
    },
}

/// A request that passed authentication and the rate limits.
pub(crate) struct Authed {
    pub(crate) account: Arc<Account>,
    pub(crate) user_id: String,
    rate_header: String,
}

impl Authed {
    /// Adds the `RateLimit` header and the operation name to a response.
    pub(crate) fn finish(&self, mut resp: Response, op: &str) -> Response {
        if let Ok(v) = HeaderValue::from_str(&self.rate_header) {
            resp.headers_mut().insert("ratelimit", v);
        }
        resp.extensions_mut().insert(Operation(op.to_owned()));
        resp
    }
}

/// The Close imitation.
pub struct Close {
    state: Arc<SandboxState>,
    api_base: String,
    app_base: String,
    settings: RwLock<Settings>,
    app: OAuthApp,
    accounts: RwLock<BTreeMap<String, Arc<Account>>>,
    keys: RwLock<HashMap<String, String>>,
    token_rng: SharedRng,
    next_index: Mutex<u64>,
}

impl std::fmt::Debug for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Close").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// Builds the provider and seeds the configured number of accounts.
pub fn build(init: ProviderInit) -> Arc<dyn Provider> {
    Arc::new(Close::new(init))
}

/// Account creation options (`POST /_sandbox/close/accounts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Records per kind (the sandbox default when absent).
    #[serde(default)]
    pub records: Option<usize>,
    /// Records for some kinds (`{"contact": 5000, "note": 0}`), overriding `records`.
    #[serde(default)]
    pub objects: Option<BTreeMap<String, usize>>,
    /// Seed of the account's data (the sandbox seed when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// API keys to issue (1 by default), to exercise the per-key versus per-org limits.
    #[serde(default)]
    pub api_keys: Option<usize>,
    /// Limit overrides applied after creation.
    #[serde(default)]
    pub quota: Option<LimitPatch>,
}

/// Parses the Basic credentials of a request: `(user, password)`.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((text.as_str(), ""));
    Some((user.to_owned(), pass.to_owned()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl Close {
    fn new(init: ProviderInit) -> Self {
        let st = init.state.clone();
        let mut app_rng = rng_for(st.config.seed, &["close", "app"]);
        let app = OAuthApp {
            client_id: format!("oa2client_{}", seed::random_string(&mut app_rng, seed::ALNUM, 22)),
            client_secret: seed::random_string(&mut app_rng, seed::ALNUM, 48),
            redirect_uri: "https://crm-fleet.example/oauth/close/callback".to_owned(),
        };
        let close = Close {
            api_base: init.host("api"),
            app_base: init.host("app"),
            settings: RwLock::new(Settings::from_config(&st.config.close)),
            app,
            accounts: RwLock::new(BTreeMap::new()),
            keys: RwLock::new(HashMap::new()),
            token_rng: SharedRng::new(st.config.seed, &["close", "tokens"]),
            next_index: Mutex::new(0),
            state: st.clone(),
        };
        for _ in 0..st.config.accounts {
            if let Err(e) = close.create_account_at(AccountSpec::default(), st.config.clock_start_ms) {
                tracing::error!(error = %e, "seeding a Close account failed");
            }
        }
        close
    }

    /// The shared services.
    pub fn state(&self) -> &Arc<SandboxState> {
        &self.state
    }

    /// The OAuth app's credentials.
    pub fn app(&self) -> &OAuthApp {
        &self.app
    }

    /// Current settings.
    pub fn current_settings(&self) -> Settings {
        self.settings.read().clone()
    }

    /// One account by organization id.
    pub fn account_by_id(&self, org_id: &str) -> Option<Arc<Account>> {
        self.accounts.read().get(org_id).cloned()
    }

    /// Every account, in organization-id order.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.read().values().cloned().collect()
    }

    fn account_for(&self, id: &str) -> Result<Arc<Account>, ControlError> {
        self.account_by_id(id).ok_or_else(|| ControlError::not_found(format!("no Close organization {id}")))
    }

    fn mint_token(&self) -> String {
        self.token_rng.string(seed::ALNUM, 40)
    }

    fn access_ttl_ms(&self) -> Millis {
        self.settings.read().access_token_ttl_secs.saturating_mul(1000)
    }

    /// The token endpoint's JSON.
    fn token_json(
        &self,
        org_id: &str,
        user_id: &str,
        access: &str,
        refresh: Option<&str>,
        ttl_ms: Millis,
    ) -> Value {
        json!({
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": ttl_ms / 1000,
            "refresh_token": refresh,
            "scope": SCOPE,
            "organization_id": org_id,
            "user_id": user_id,
        })
    }

    fn grant_for(&self, account: &Account) -> Grant {
        Grant {
            provider: ProviderKind::Close,
            account: account.org_id.clone(),
            client_id: self.app.client_id.clone(),
            scopes: SCOPE.split(' ').map(str::to_owned).collect(),
            user_id: Some(account.owner()),
        }
    }

    fn mint(&self) -> Mint {
        Mint {
            access_token: self.mint_token(),
            access_ttl_ms: Some(self.access_ttl_ms()),
            refresh_token: Some(self.mint_token()),
            refresh_ttl_ms: self.settings.read().refresh_token_ttl_secs.map(|s| s * 1000),
            refresh_idle_ttl_ms: None,
        }
    }

    /// Issues an OAuth token pair for an account, as a completed authorization would.
    pub fn issue_pair(&self, account: &Account) -> Value {
        let ttl = self.access_ttl_ms();
        let mint = self.mint();
        let (access, refresh) = (mint.access_token.clone(), mint.refresh_token.clone());
        self.state.tokens.issue(self.grant_for(account), mint, self.state.clock.now_ms());
        self.token_json(&account.org_id, &account.owner(), &access, refresh.as_deref(), ttl)
    }

    /// Creates an account (seeded with records), returning it.
    pub fn create_account(&self, spec: AccountSpec) -> Result<Arc<Account>, ControlError> {
        let now = self.state.clock.now_ms();
        self.create_account_at(spec, now - now.rem_euclid(1000))
    }

    fn create_account_at(&self, spec: AccountSpec, now: Millis) -> Result<Arc<Account>, ControlError> {
        let cfg = &self.state.config;
        let records = spec.records.unwrap_or(cfg.records);
        let mut counts = [records; 6];
        for (name, n) in spec.objects.iter().flatten() {
            let kind = Kind::parse(name)
                .ok_or_else(|| ControlError::bad_request(format!("unknown Close object {name:?}")))?;
            counts[kind.index()] = *n;
        }
        let n_keys = spec.api_keys.unwrap_or(1);
        if n_keys == 0 || n_keys > MAX_API_KEYS {
            return Err(ControlError::bad_request(format!("api_keys must be within 1..={MAX_API_KEYS}")));
        }
        let mut limits = AccountLimits::default();
        if let Some(q) = &spec.quota {
            limits.apply(q).map_err(ControlError::bad_request)?;
        }
        let index = {
            let mut n = self.next_index.lock();
            *n += 1;
            *n
        };
        let meta = store::seed_meta(cfg.seed, index);
        let org_id = meta.org_id.clone();
        let mut data = store::seed_account(spec.seed.unwrap_or(cfg.seed), meta, counts, now);
        data.record_limit = limits.quota.record_limit;
        {
            let s = self.settings.read();
            data.events.consolidation_ms = s.event_consolidation_ms;
            data.events.retention_ms = s.event_retention_days * 86_400_000;
        }
        let mut rng = rng_for(cfg.seed, &["close", "keys", &org_id]);
        let keys: Vec<String> = (0..n_keys)
            .map(|_| {
                format!(
                    "api_{}.{}",
                    seed::random_string(&mut rng, seed::ALNUM, 22),
                    seed::random_string(&mut rng, seed::ALNUM, 22)
                )
            })
            .collect();
        let account = Arc::new(Account {
            org_id: org_id.clone(),
            data: RwLock::new(data),
            limits: Mutex::new(limits),
            api_keys: Mutex::new(keys.clone()),
            initial_tokens: Mutex::new(Value::Null),
            refresh_reuse: AtomicU64::new(0),
            snapshots: Mutex::new(HashMap::new()),
        });
        *account.initial_tokens.lock() = self.issue_pair(&account);
        {
            let mut k = self.keys.write();
            for key in keys {
                k.insert(key, org_id.clone());
            }
        }
        self.accounts.write().insert(org_id, account.clone());
        Ok(account)
    }

    fn account_json(&self, a: &Account, with_digest: bool) -> Value {
        let quota = serde_json::to_value(&a.limits.lock().quota).unwrap_or(Value::Null);
        let d = a.data.read();
        let meta = &d.meta;
        let marker = meta.marker_field().map(|c| c.id.clone());
        let mut v = json!({
            "id": a.org_id,
            "organization_id": a.org_id,
            "name": meta.org_name,
            "user_id": meta.users[0].id,
            "users": meta.users.iter().map(|u| json!({"id": u.id, "name": u.name(), "email": u.email})).collect::<Vec<_>>(),
            "quota": quota,
            "counts": d.counts(),
            "deleted_counts": d.deleted_counts(),
            "events": d.events.len(),
            "journal_last_seq": d.journal.last_seq(),
            "refresh_reuse_detected": a.refresh_reuse.load(Ordering::SeqCst),
            "statuses": {
                "opportunity": meta.opp_statuses.iter().map(|s| json!({"id": s.id, "label": s.label, "type": s.status_type})).collect::<Vec<_>>(),
                "lead": meta.lead_statuses.iter().map(|s| json!({"id": s.id, "label": s.label})).collect::<Vec<_>>(),
            },
            "credentials": {
                "api_key": a.api_keys().first().cloned(),
                "api_keys": a.api_keys(),
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret,
                "redirect_uri": self.app.redirect_uri,
                "oauth": a.initial_tokens.lock().clone(),
                "marker_custom_field_id": marker,
                "marker_field": marker.map(|m| format!("custom.{m}")),
            },
        });
        drop(d);
        if with_digest {
            v["digest"] = Value::String(self.digest(a));
        }
        v
    }

    /// A SHA-256 over every record (live and deleted, all fields and timestamps) of an account:
    /// equal digests mean byte-identical data.
    pub fn digest(&self, a: &Account) -> String {
        use sha2::{Digest, Sha256};
        let d = a.data.read();
        let mut h = Sha256::new();
        for kind in Kind::ALL {
            let t = d.table(kind);
            for r in t.live.values().chain(t.deleted.values()) {
                h.update(kind.name());
                h.update(r.id.as_bytes());
                h.update(r.created_at.to_le_bytes());
                h.update(r.updated_at.to_le_bytes());
                h.update(r.deleted_at.unwrap_or(-1).to_le_bytes());
                h.update(serde_json::to_vec(&r.fields).unwrap_or_default());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Resolves a request's credentials.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Arc<Account>, Principal, String), Response> {
        if let Some((user, pass)) = basic(headers) {
            if !pass.is_empty() && self.settings.read().reject_basic_password {
                return Err(errors::unauthorized());
            }
            let org = self.keys.read().get(&user).cloned();
            return match org.and_then(|o| self.account_by_id(&o)) {
                Some(a) => {
                    let owner = a.owner();
                    Ok((a, Principal::ApiKey(user), owner))
                }
                None => Err(errors::unauthorized()),
            };
        }
        let Some(token) = bearer(headers) else {
            return Err(errors::unauthorized());
        };
        let t = match self.state.tokens.check_access(token, self.state.clock.now_ms()) {
            AccessCheck::Valid(t) if t.grant.provider == ProviderKind::Close => t,
            _ => return Err(errors::unauthorized()),
        };
        let Some(account) = self.account_by_id(&t.grant.account) else {
            return Err(errors::unauthorized());
        };
        let user = t.grant.user_id.clone().unwrap_or_else(|| account.owner());
        Ok((account, Principal::OAuth { client_id: t.grant.client_id, user_id: user.clone() }, user))
    }

    /// Authenticates and applies the rate limits of the request's endpoint group.
    pub(crate) fn admit(&self, headers: &HeaderMap, method: &str, path: &str) -> Result<Authed, Response> {
        let (account, principal, user_id) = self.authenticate(headers)?;
        let key = match &principal {
            Principal::ApiKey(k) => format!("key:{k}"),
            Principal::OAuth { client_id, user_id } => format!("oauth:{client_id}:{user_id}"),
        };
        let (group, class) = limits::group(method, path);
        let now = self.state.clock.now_ms();
        let admitted = account.limits.lock().admit(&group, class, &key, now);
        match admitted {
            Ok(h) => Ok(Authed { account, user_id, rate_header: h }),
            Err(r) => Err(self.throttle_response(&r)),
        }
    }

    /// A 429 as Close sends it: `RateLimit` (except for stricter limits), `retry-after` (the reset
    /// rounded up) and the legacy body (or an empty body when `rate_limit_legacy_body` is off).
    pub fn throttle_response(&self, r: &Refusal) -> Response {
        let retry_after = (r.reset_secs.ceil() as u64).max(1);
        let rate_reset = (r.reset_secs * 1_000_000.0).round() / 1_000_000.0;
        let body = if !self.settings.read().rate_limit_legacy_body {
            Vec::new()
        } else if r.kind == "stricter" {
            serde_json::to_vec(&json!({"error": {"message": "API call count exceeded for this period", "rate_reset": rate_reset}}))
                .unwrap_or_default()
        } else {
            serde_json::to_vec(&json!({"error": {
                "message": "API call count exceeded for this period",
                "rate_reset": rate_reset,
                "rate_limit": r.limit,
                "rate_window": r.window_secs,
                "rate_limit_type": r.kind,
            }}))
            .unwrap_or_default()
        };
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
            h.insert(header::RETRY_AFTER, v);
        }
        if let Some(rl) = &r.header
            && let Ok(v) = HeaderValue::from_str(rl)
        {
            h.insert("ratelimit", v);
        }
        resp.extensions_mut().insert(Operation(format!("throttled.{}", r.kind)));
        mark_throttled(resp)
    }

    fn actor(&self, d: &mut AccountData, source: &str) -> Actor {
        Actor {
            user_id: d.meta.users.get(1).unwrap_or(&d.meta.users[0]).id.clone(),
            source: source.to_owned(),
            request_id: d.fresh_request_id(),
            meta: None,
        }
    }

    fn record_creations(&self, account: &Account, d: &AccountData, changes: &[Change], source: &str) {
        for c in changes.iter().filter(|c| c.op == crate::changes::ChangeOp::Create) {
            if let Some(kind) = Kind::parse(&c.object) {
                self.state.counters.record_created(
                    ProviderKind::Close,
                    &account.org_id,
                    created_object(kind.name(), &c.id, c.at_ms, source, d.searchable_text(kind, &c.id)),
                );
            }
        }
    }

    fn apply_mutations(
        &self,
        a: &Account,
        req: &MutationRequest,
        source: &str,
    ) -> Result<ChangeLog, ControlError> {
        let kinds: Vec<Kind> = match &req.objects {
            None => Kind::SYNCED.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Kind::parse(n)
                        .ok_or_else(|| ControlError::bad_request(format!("unknown Close object {n:?}")))
                })
                .collect::<Result<_, _>>()?,
        };
        if kinds.is_empty() {
            return Err(ControlError::bad_request("objects must not be empty"));
        }
        let mut data = a.data.write();
        let batch_seed = req.seed.unwrap_or(data.journal.last_seq());
        let mut rng =
            rng_for(self.state.config.seed, &["close", &a.org_id, "mutations", &batch_seed.to_string()]);
        let mut ops: Vec<u8> = Vec::new();
        ops.extend(std::iter::repeat_n(0u8, req.creates as usize));
        ops.extend(std::iter::repeat_n(1u8, req.updates as usize));
        ops.extend(std::iter::repeat_n(2u8, req.deletes as usize));
        ops.shuffle(&mut rng);
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(step) = req.step_ms.filter(|s| *s > 0) {
                self.state.clock.advance(step);
            }
            let now = self.state.clock.now_ms();
            let kind = kinds[rng.random_range(0..kinds.len())];
            let actor = self.actor(&mut data, source);
            match op {
                0 => {
                    let lead = if kind.is_child() {
                        match data.pick_live(Kind::Lead, &mut rng) {
                            Some(l) => Some(l),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    let contact = lead.as_deref().and_then(|l| {
                        let cs = data.children(l, Kind::Contact);
                        (!cs.is_empty() && kind != Kind::Contact)
                            .then(|| cs[rng.random_range(0..cs.len())].id.clone())
                    });
                    let n = data.journal.last_seq() + 1;
                    let mut fields = store::fake_fields(
                        &data.meta,
                        kind,
                        &mut rng,
                        1_000_000 + n,
                        lead.as_deref(),
                        contact.as_deref(),
                        now,
                    );
                    if kind == Kind::Lead {
                        fields.remove("created_by");
                        fields.remove("updated_by");
                    }
                    match data.create(kind, fields, now, &actor) {
                        Ok((_, c)) => {
                            self.record_creations(a, &data, &c, source);
                            changes.extend(c);
                        }
                        Err(e) => tracing::debug!(?e, "mutation create skipped"),
                    }
                }
                1 => {
                    let Some(id) = data.pick_live(kind, &mut rng) else { continue };
                    let fields = store::mutation_update(&data.meta, kind, &mut rng, now);
                    if let Ok(c) = data.update(kind, &id, fields, now, &actor) {
                        changes.push(c);
                    }
                }
                _ => {
                    let Some(id) = data.pick_live(kind, &mut rng) else { continue };
                    if let Ok(c) = data.delete(kind, &id, now, &actor) {
                        changes.extend(c);
                    }
                }
            }
        }
        Ok(ChangeLog::from_changes(changes))
    }

    fn parse_kind(object: &str) -> Result<Kind, ControlError> {
        Kind::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown Close object {object:?}")))
    }

    fn control_record(d: &AccountData, kind: Kind, id: &str) -> Option<Value> {
        let r = d.any(kind, id)?;
        let mut m = d.render(kind, r);
        m.insert("deleted".into(), json!(r.deleted_at.is_some()));
        m.insert("date_deleted".into(), json!(r.deleted_at.map(store::close_time)));
        Some(Value::Object(m))
    }

    fn revoke_chain(&self, from: &str, now: Millis) {
        let mut next = self.state.tokens.refresh_info(from).and_then(|r| r.replaced_by);
        while let Some(t) = next {
            let info = self.state.tokens.refresh_info(&t);
            self.state.tokens.revoke_refresh(&t, true, now);
            next = info.filter(|i| i.state == RefreshState::Rotated).and_then(|i| i.replaced_by);
        }
    }
}

impl Provider for Close {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Close
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn urls(&self) -> ProviderUrls {
        let mut m = BTreeMap::new();
        m.insert("api_base".to_owned(), self.api_base.clone());
        m.insert("app_base".to_owned(), self.app_base.clone());
        m.insert("authorize_url".to_owned(), format!("{}/oauth2/authorize/", self.app_base));
        m.insert("token_url".to_owned(), format!("{}/oauth2/token/", self.api_base));
        m.insert("revoke_url".to_owned(), format!("{}/oauth2/revoke/", self.api_base));
        m
    }

    fn router(self: Arc<Self>, host: &str) -> Router {
        if host == "app" {
            return Router::new()
                .route("/oauth2/authorize/", get(oauth::authorize))
                .fallback(api::fallback)
                .with_state(self);
        }
        Router::new()
            .route("/oauth2/token/", post(oauth::token))
            .route("/oauth2/revoke/", post(oauth::revoke))
            .route("/api/v1/me/", get(api::me))
            .route("/api/v1/data/search/", post(search::search))
            .route("/api/v1/event/", get(api::events))
            .route("/api/v1/event/{id}/", get(api::event))
            .route("/api/v1/status/{kind}/", get(api::statuses))
            .route("/api/v1/pipeline/", get(api::pipelines))
            .route("/api/v1/custom_field/{kind}/", get(api::custom_fields))
            .route("/api/v1/{resource}/", get(api::list).post(api::create))
            .route("/api/v1/{resource}/{id}/", get(api::get_one).put(api::update).delete(api::remove))
            .route("/api/v1/activity/{kind}/", get(api::list_activity).post(api::create_activity))
            .route(
                "/api/v1/activity/{kind}/{id}/",
                get(api::get_activity).put(api::update_activity).delete(api::remove_activity),
            )
            .fallback(api::fallback)
            .with_state(self)
    }

    fn identify(&self, headers: &HeaderMap, _uri: &Uri) -> Option<String> {
        if let Some((user, _)) = basic(headers) {
            return self.keys.read().get(&user).cloned();
        }
        match self.state.tokens.account_of(bearer(headers)?) {
            Some((ProviderKind::Close, a)) => Some(a),
            _ => None,
        }
    }

    fn fault_response(&self, action: &FaultAction, account: Option<&str>) -> Response {
        let quota = account
            .and_then(|a| self.account_by_id(a))
            .map(|a| a.limits.lock().quota.clone())
            .unwrap_or_default();
        let refusal = |kind: &str, retry: Option<u64>| {
            let limit = quota.limits.get("read").copied().unwrap_or(40);
            let (kind, limit) = match kind {
                "org" => ("org", limit * quota.org_multiplier),
                "stricter" => ("stricter", limit),
                _ => ("key", limit),
            };
            let reset = retry.map(|s| s as f64).unwrap_or(quota.window_secs);
            Refusal {
                kind,
                limit,
                window_secs: quota.window_secs,
                reset_secs: reset,
                header: (kind != "stricter").then(|| limits::header(limit, 0, reset)),
                group: "injected".to_owned(),
            }
        };
        match action {
            FaultAction::Throttle { policy, retry_after_secs } => {
                self.throttle_response(&refusal(policy.as_deref().unwrap_or("key"), *retry_after_secs))
            }
            FaultAction::Status { status, kind, retry_after_secs, .. } => {
                let kind = kind.as_deref().unwrap_or("");
                match *status {
                    400 => errors::bad_request("Invalid request."),
                    401 => errors::unauthorized(),
                    402 => errors::plan_limit("Your organization has reached a limit of its current plan."),
                    403 => errors::forbidden(),
                    404 => errors::not_found("Object"),
                    429 => self.throttle_response(&refusal(kind, *retry_after_secs)),
                    s @ (502..=504) if kind != "json" => errors::gateway_page(s),
                    s => {
                        let code = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        errors::json_response(
                            code,
                            &json!({"error": code.canonical_reason().unwrap_or("error")}),
                        )
                    }
                }
            }
            _ => errors::json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "Internal Server Error"}),
            ),
        }
    }

    fn list_accounts(&self) -> Value {
        json!({"accounts": self.accounts().iter().map(|a| self.account_json(a, false)).collect::<Vec<_>>()})
    }

    fn create_account(&self, spec: Value) -> Result<Value, ControlError> {
        let spec: AccountSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::bad_request(format!("invalid account spec: {e}")))?;
        let a = Close::create_account(self, spec)?;
        Ok(self.account_json(&a, false))
    }

    fn account(&self, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        Ok(self.account_json(&a, true))
    }

    fn update_account(&self, id: &str, patch: Value) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let patch: LimitPatch = serde_json::from_value(patch)
            .map_err(|e| ControlError::bad_request(format!("invalid account patch: {e}")))?;
        let record_limit = {
            let mut l = a.limits.lock();
            l.apply(&patch).map_err(ControlError::bad_request)?;
            l.quota.record_limit
        };
        a.data.write().record_limit = record_limit;
        Ok(self.account_json(&a, false))
    }

    fn settings(&self) -> Value {
        let mut v = serde_json::to_value(self.current_settings()).unwrap_or(Value::Null);
        v["app"] = serde_json::to_value(&self.app).unwrap_or(Value::Null);
        v
    }

    fn update_settings(&self, patch: Value) -> Result<Value, ControlError> {
        let Value::Object(patch) = patch else {
            return Err(ControlError::bad_request("settings patch must be a JSON object"));
        };
        let mut current = serde_json::to_value(self.current_settings())
            .map_err(|e| ControlError::bad_request(e.to_string()))?;
        for (k, v) in patch {
            if current.get(&k).is_none() {
                return Err(ControlError::bad_request(format!("unknown Close setting {k:?}")));
            }
            if let (Some(Value::Object(cur)), Value::Object(upd)) = (current.get_mut(&k), &v) {
                for (rk, rv) in upd {
                    if !cur.contains_key(rk) {
                        return Err(ControlError::bad_request(format!("unknown resource {rk:?} in {k}")));
                    }
                    cur.insert(rk.clone(), rv.clone());
                }
                continue;
            }
            current[&k] = v;
        }
        let next: Settings = serde_json::from_value(current)
            .map_err(|e| ControlError::bad_request(format!("invalid settings: {e}")))?;
        for a in self.accounts() {
            let mut d = a.data.write();
            d.events.consolidation_ms = next.event_consolidation_ms;
            d.events.retention_ms = next.event_retention_days * 86_400_000;
        }
        *self.settings.write() = next;
        Ok(self.settings())
    }

    fn issue_tokens(&self, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        Ok(self.issue_pair(&a))
    }

    fn revoke_tokens(&self, state: &SandboxState, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let n = state.tokens.revoke_account(ProviderKind::Close, id, state.clock.now_ms());
        let mut rng = rng_for(state.config.seed, &["close", "key-rotation", id, &n.to_string()]);
        let mut keys = a.api_keys.lock();
        let fresh: Vec<String> = keys
            .iter()
            .map(|_| {
                format!(
                    "api_{}.{}",
                    seed::random_string(&mut rng, seed::ALNUM, 22),
                    seed::random_string(&mut rng, seed::ALNUM, 22)
                )
            })
            .collect();
        let mut map = self.keys.write();
        for old in keys.iter() {
            map.remove(old);
        }
        for k in &fresh {
            map.insert(k.clone(), a.org_id.clone());
        }
        let revoked = n + keys.len();
        *keys = fresh.clone();
        Ok(json!({"revoked": revoked, "api_key": fresh.first(), "api_keys": fresh}))
    }

    fn mutate(&self, id: &str, req: MutationRequest, source: &str) -> Result<ChangeLog, ControlError> {
        let a = self.account_for(id)?;
        self.apply_mutations(&a, &req, source)
    }

    fn changes(&self, id: &str, since: u64) -> Result<Vec<Change>, ControlError> {
        let a = self.account_for(id)?;
        let d = a.data.read();
        Ok(d.journal.since(since))
    }

    fn record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let kind = Self::parse_kind(object)?;
        let d = a.data.read();
        Self::control_record(&d, kind, record_id)
            .ok_or_else(|| ControlError::not_found(format!("no {object} {record_id}")))
    }

    fn edit_record(
        &self,
        id: &str,
        object: &str,
        record_id: &str,
        patch: Value,
    ) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let kind = Self::parse_kind(object)?;
        let body: Map<String, Value> = match patch {
            Value::Object(mut m) => match m.remove("properties") {
                Some(Value::Object(p)) => p,
                Some(_) => return Err(ControlError::bad_request("properties must be an object")),
                None => m,
            },
            _ => return Err(ControlError::bad_request("patch must be a JSON object")),
        };
        let now = self.state.clock.now_ms();
        let mut d = a.data.write();
        let existing = d
            .get(kind, record_id)
            .cloned()
            .ok_or_else(|| ControlError::not_found(format!("no live {object} {record_id}")))?;
        let fields = d
            .validate(kind, &body, Some(&existing))
            .map_err(|e| ControlError::bad_request(format!("{e:?}")))?;
        let actor = self.actor(&mut d, "control");
        d.update(kind, record_id, fields, now, &actor)
            .map_err(|e| ControlError::bad_request(format!("{e:?}")))?;
        Self::control_record(&d, kind, record_id).ok_or_else(|| ControlError::not_found("record vanished"))
    }

    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let kind = Self::parse_kind(object)?;
        let now = self.state.clock.now_ms();
        let mut d = a.data.write();
        let actor = self.actor(&mut d, "control");
        let changes = d.delete(kind, record_id, now, &actor).map_err(|e| match e {
            WriteError::NotFound(_) => ControlError::not_found(format!("no live {object} {record_id}")),
            other => ControlError::bad_request(format!("{other:?}")),
        })?;
        Ok(json!({"changes": changes}))
    }
}
