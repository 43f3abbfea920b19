//! The Pipedrive imitation (`crm-providers.md` §3 and §7.4).
//!
//! Two hosts, two listeners: `api` stands for the company domain that token responses name in
//! `api_domain` (`https://{company}.pipedrive.com`: `/api/v2/…` and `/v1/…`), and `oauth` for
//! `https://oauth.pipedrive.com` (authorize, token, revoke). Submodules:
//!
//! * [`schema`]: entities, scopes, pipelines, activity types, field tables and body validation;
//! * [`store`]: per-company tables with ordered indexes, soft deletion and purging, seeding;
//! * [`limits`]: the daily token budget, the 2-second bursts, the abuse block;
//! * `errors`: envelopes and error bodies; `view`: response shapes;
//! * `oauth`, `api`: the HTTP handlers.
//!
//! Every API request goes: authenticate (`x-api-token`, `Authorization: Bearer`, or the legacy
//! `?api_token=` when enabled; else the gateway 401) → abuse block (403 HTML) → daily budget and
//! burst (429) → OAuth scope (403) → handler; every response past authentication carries the
//! rate-limit headers.
//!
//! Invariant: a company's records are only touched under its `data` lock and every write stamps the
//! logical clock and lands in its journal; the control plane uses the same write paths as the API,
//! so "as another user" changes differ from API changes only in their journal `source`.

// Handlers return early with a finished `Response`; boxing it would add noise on cold paths only.
#![allow(clippy::result_large_err)]

mod api;
mod errors;
pub mod limits;
mod oauth;
pub mod schema;
pub mod store;
mod view;

pub use limits::{LimitPatch, Plan, Principal, Quota};

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::faults::FaultAction;
use crate::provider::{ControlError, Provider, ProviderInit, ProviderUrls};
use crate::seed::{self, SharedRng, rng_for};
use crate::server::{Operation, mark_throttled};
use crate::state::SandboxState;
use crate::tokens::{AccessCheck, Grant, Mint};
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono_tz::Tz;
use limits::{AccountLimits, DailyHeaders, LimitSettings, Refusal};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use rand::Rng;
use rand::seq::SliceRandom;
use schema::Entity;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use store::{AccountData, CustomField, User};

/// Pipedrive's base URLs, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipedriveUrls {
    /// Stands for the company domain `https://{company}.pipedrive.com` (the `api_domain` of token
    /// responses): prefix of `/api/v2/…` and `/v1/…`.
    pub api_base: String,
    /// Stands for `https://oauth.pipedrive.com`.
    pub oauth_base: String,
    /// `GET {oauth_base}/oauth/authorize`.
    pub authorize_url: String,
    /// `POST {oauth_base}/oauth/token`.
    pub token_url: String,
    /// `POST {oauth_base}/oauth/revoke`.
    pub revoke_url: String,
}

impl PipedriveUrls {
    /// Reads them from the generic URL map.
    pub fn from_map(m: &ProviderUrls) -> Option<Self> {
        Some(Self {
            api_base: m.get("api_base")?.clone(),
            oauth_base: m.get("oauth_base")?.clone(),
            authorize_url: m.get("authorize_url")?.clone(),
            token_url: m.get("token_url")?.clone(),
            revoke_url: m.get("revoke_url")?.clone(),
        })
    }
}

/// Provider-wide settings (`GET`/`PATCH /_sandbox/pipedrive/settings`). Most are toggles for
/// behaviour the research marks UNCONFIRMED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `expires_in` of new access tokens, seconds (3599 documented).
    pub access_token_ttl_secs: i64,
    /// Refresh tokens expire after this many days unused (60, third-party).
    pub refresh_token_idle_days: i64,
    /// The refresh grant returns a new refresh token and retires the old one (UNCONFIRMED; off).
    pub rotate_refresh_tokens: bool,
    /// `POST /oauth/revoke` exists (UNCONFIRMED; on).
    pub revoke_endpoint: bool,
    /// v1 endpoints accept the legacy `?api_token=` query parameter (off).
    pub legacy_api_token_query: bool,
    /// 429 responses carry `Retry-After` (UNCONFIRMED; off).
    pub retry_after: bool,
    /// Responses carry `x-ratelimit-limit/-remaining/-reset` (on; reported missing at times).
    pub burst_headers: bool,
    /// `x-daily-ratelimit-token-*` headers: `always`, `never` or `after_inactivity` (missing on the
    /// first request after an hour without requests).
    pub daily_token_headers: String,
    /// Block an API token with a 403 HTML page after this many 429s in a row (off when null).
    pub abuse_block_after: Option<u32>,
    /// How long an abuse block lasts, seconds.
    pub abuse_block_secs: i64,
    /// `updated_since`/`updated_until` with fractional seconds → 400 (third-party observation; on).
    pub reject_millisecond_timestamps: bool,
    /// v2 listings with `updated_since` also return soft-deleted rows (`is_deleted: true`)
    /// (UNCONFIRMED; off).
    pub updated_since_includes_deleted: bool,
    /// `/v1/recents` includes soft-deleted items with `active_flag: false` (UNCONFIRMED; on).
    pub recents_include_deleted: bool,
    /// `/v1/notes` honours `updated_since` (UNCONFIRMED; on).
    pub notes_updated_since: bool,
    /// Activities and notes carry the crm-fleet marker custom field (sandbox-provided; on).
    pub activity_note_custom_fields: bool,
    /// `GET` by id of a soft-deleted record answers it with `is_deleted: true` (on) instead of 404.
    pub get_deleted_returns_record: bool,
    /// v1 core endpoints (`/v1/persons`, `/v1/deals`, …) answer 410 Gone (on).
    pub v1_core_gone: bool,
    /// Records changed less than this long ago are invisible to search.
    pub search_index_lag_ms: Millis,
    /// Soft-deleted rows are purged this many days after deletion (30 documented).
    pub deleted_retention_days: i64,
    /// The authorize page denies instead of approving.
    pub authorize_deny: bool,
    /// Company the authorize page approves for when the request names none (first if unset).
    pub authorize_company_id: Option<u64>,
    /// Lifetime of authorization codes, seconds.
    pub auth_code_ttl_secs: i64,
}

impl Settings {
    fn limit_settings(&self) -> LimitSettings {
        LimitSettings {
            daily_headers: match self.daily_token_headers.as_str() {
                "never" => DailyHeaders::Never,
                "after_inactivity" => DailyHeaders::AfterInactivity,
                _ => DailyHeaders::Always,
            },
            burst_headers: self.burst_headers,
            abuse_after: self.abuse_block_after,
            abuse_block_ms: self.abuse_block_secs.saturating_mul(1000),
        }
    }

    fn retention_ms(&self) -> Millis {
        self.deleted_retention_days.saturating_mul(store::DAY_MS)
    }
}

/// The sandbox's OAuth app (one per sandbox, installable in every company).
#[derive(Clone, Debug, Serialize)]
pub struct OAuthApp {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

/// One Pipedrive company.
#[derive(Debug)]
pub struct Account {
    /// Company id.
    pub company_id: u64,
    /// Company name.
    pub company_name: String,
    /// Company subdomain (`{domain}.pipedrive.com`).
    pub company_domain: String,
    /// The admin user who connected the app (and owns the API token).
    pub user: User,
    /// Key of the crm-fleet marker custom field (persons, activities, notes).
    pub marker_field_key: String,
    /// Records.
    pub data: RwLock<AccountData>,
    /// Limiters.
    pub limits: Mutex<AccountLimits>,
    api_token: Mutex<String>,
    initial_tokens: Mutex<Value>,
}

impl Account {
    /// The current personal API token.
    pub fn api_token(&self) -> String {
        self.api_token.lock().clone()
    }
}

/// Request costs in daily-budget tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// v2 get one: 1.
    V2Get,
    /// v2 list: 10.
    V2List,
    /// v2 create or update: 5.
    V2Write,
    /// v2 delete: 3.
    V2Delete,
    /// v2 search: 20.
    V2Search,
    /// v1 get one: 2.
    V1Get,
    /// v1 list: 20.
    V1List,
    /// v1 create or update: 10.
    V1Write,
    /// v1 delete one: 6.
    V1Delete,
}

impl Cost {
    /// Tokens.
    pub fn tokens(self) -> u64 {
        match self {
            Cost::V2Get => 1,
            Cost::V2List => 10,
            Cost::V2Write => 5,
            Cost::V2Delete => 3,
            Cost::V2Search => 20,
            Cost::V1Get => 2,
            Cost::V1List => 20,
            Cost::V1Write => 10,
            Cost::V1Delete => 6,
        }
    }

    fn is_search(self) -> bool {
        self == Cost::V2Search
    }
}

/// A request that passed authentication and the limits.
pub(crate) struct Authed {
    pub(crate) account: Arc<Account>,
    pub(crate) principal: Principal,
    headers: Vec<(&'static str, String)>,
}

impl Authed {
    fn has_any_scope(&self, scopes: &[&str]) -> bool {
        match &self.principal {
            Principal::ApiToken { .. } => true,
            Principal::OAuth { scopes: granted, .. } => {
                scopes.is_empty() || scopes.iter().any(|s| granted.iter().any(|g| g == s))
            }
        }
    }

    /// Adds the rate-limit headers and the operation name to a response.
    pub(crate) fn finish(&self, resp: Response, op: &str) -> Response {
        let mut resp = add_headers(resp, &self.headers);
        resp.extensions_mut().insert(Operation(op.to_owned()));
        resp
    }
}

fn add_headers(mut resp: Response, headers: &[(&'static str, String)]) -> Response {
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().insert(HeaderName::from_static(k), v);
        }
    }
    resp
}

/// The Pipedrive imitation.
pub struct Pipedrive {
    state: Arc<SandboxState>,
    api_base: String,
    oauth_base: String,
    settings: RwLock<Settings>,
    app: OAuthApp,
    accounts: RwLock<BTreeMap<u64, Arc<Account>>>,
    api_tokens: RwLock<HashMap<String, u64>>,
    token_rng: SharedRng,
    next_index: Mutex<u64>,
}

impl std::fmt::Debug for Pipedrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipedrive").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// Builds the provider and seeds the configured number of companies.
pub fn build(init: ProviderInit) -> Arc<dyn Provider> {
    Arc::new(Pipedrive::new(init))
}

/// Account creation options (`POST /_sandbox/pipedrive/accounts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Records per entity (the sandbox default when absent).
    #[serde(default)]
    pub records: Option<usize>,
    /// Records per entity for some entities (`{"persons": 2000, "notes": 0}`).
    #[serde(default)]
    pub objects: Option<BTreeMap<String, usize>>,
    /// Seed of the company's data (the sandbox seed when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A specific company id (the next free one when absent).
    #[serde(default)]
    pub company_id: Option<u64>,
    /// Plan.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Seats.
    #[serde(default)]
    pub seats: Option<u64>,
    /// IANA time zone of the daily budget reset ("server time").
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Scopes of the pre-issued OAuth pair (all when absent).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Limit overrides applied after creation.
    #[serde(default)]
    pub quota: Option<LimitPatch>,
}

/// First company id handed out.
pub const FIRST_COMPANY_ID: u64 = 13_000_001;

/// Seconds of logical time between an abuse block's start and its end, by default.
pub const DEFAULT_ABUSE_BLOCK_SECS: i64 = 600;

impl Pipedrive {
    fn new(init: ProviderInit) -> Self {
        let st = init.state.clone();
        let cfg = st.config.pipedrive.clone();
        let mut app_rng = rng_for(st.config.seed, &["pipedrive", "app"]);
        let app = OAuthApp {
            client_id: seed::random_string(&mut app_rng, seed::HEX, 16),
            client_secret: seed::random_string(&mut app_rng, seed::HEX, 40),
        };
        let pd = Pipedrive {
            api_base: init.host("api"),
            oauth_base: init.host("oauth"),
            settings: RwLock::new(Settings {
                access_token_ttl_secs: cfg.access_token_ttl_secs,
                refresh_token_idle_days: cfg.refresh_token_idle_days,
                rotate_refresh_tokens: cfg.rotate_refresh_tokens,
                revoke_endpoint: true,
                legacy_api_token_query: false,
                retry_after: cfg.retry_after,
                burst_headers: true,
                daily_token_headers: "always".to_owned(),
                abuse_block_after: None,
                abuse_block_secs: DEFAULT_ABUSE_BLOCK_SECS,
                reject_millisecond_timestamps: true,
                updated_since_includes_deleted: false,
                recents_include_deleted: true,
                notes_updated_since: true,
                activity_note_custom_fields: true,
                get_deleted_returns_record: true,
                v1_core_gone: true,
                search_index_lag_ms: 0,
                deleted_retention_days: 30,
                authorize_deny: false,
                authorize_company_id: None,
                auth_code_ttl_secs: 600,
            }),
            app,
            accounts: RwLock::new(BTreeMap::new()),
            api_tokens: RwLock::new(HashMap::new()),
            token_rng: SharedRng::new(st.config.seed, &["pipedrive", "tokens"]),
            next_index: Mutex::new(0),
            state: st.clone(),
        };
        for _ in 0..st.config.accounts {
            if let Err(e) = pd.create_account_at(AccountSpec::default(), st.config.clock_start_ms) {
                tracing::error!(error = %e, "seeding a Pipedrive company failed");
            }
        }
        pd
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

    /// One company.
    pub fn account_by_id(&self, company_id: u64) -> Option<Arc<Account>> {
        self.accounts.read().get(&company_id).cloned()
    }

    /// Every company, by id.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.read().values().cloned().collect()
    }

    fn account_for(&self, id: &str) -> Result<Arc<Account>, ControlError> {
        id.parse::<u64>()
            .ok()
            .and_then(|c| self.account_by_id(c))
            .ok_or_else(|| ControlError::not_found(format!("no Pipedrive company {id}")))
    }

    fn mint_token(&self, a: &Account) -> String {
        format!("{}:{}:{}", a.company_id, a.user.id, self.token_rng.string(seed::HEX, 40))
    }

    fn mint_code(&self) -> String {
        format!("{}.{}", self.token_rng.string(seed::ALNUM, 12), self.token_rng.string(seed::HEX, 32))
    }

    fn access_ttl_ms(&self) -> Millis {
        self.settings.read().access_token_ttl_secs.saturating_mul(1000)
    }

    fn refresh_idle_ms(&self) -> Millis {
        self.settings.read().refresh_token_idle_days.saturating_mul(store::DAY_MS)
    }

    /// The JSON Pipedrive's token endpoint returns.
    fn token_json(&self, access: &str, refresh: Option<&str>, scopes: &[String], ttl_ms: Millis) -> Value {
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl_ms / 1000,
            "refresh_token": refresh,
            "scope": scopes.join(","),
            "api_domain": self.api_base,
        })
    }

    fn grant(&self, a: &Account, scopes: Vec<String>) -> Grant {
        Grant {
            provider: ProviderKind::Pipedrive,
            account: a.company_id.to_string(),
            client_id: self.app.client_id.clone(),
            scopes,
            user_id: Some(a.user.id.to_string()),
        }
    }

    /// Issues an OAuth token pair for a company, as a completed install would.
    pub fn issue_pair(&self, a: &Account, scopes: Vec<String>) -> Value {
        let ttl = self.access_ttl_ms();
        let access = self.mint_token(a);
        let refresh = self.mint_token(a);
        self.state.tokens.issue(
            self.grant(a, scopes.clone()),
            Mint {
                access_token: access.clone(),
                access_ttl_ms: Some(ttl),
                refresh_token: Some(refresh.clone()),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: Some(self.refresh_idle_ms()),
            },
            self.state.clock.now_ms(),
        );
        self.token_json(&access, Some(&refresh), &scopes, ttl)
    }

    /// Creates a company (seeded with records), returning it.
    pub fn create_account(&self, spec: AccountSpec) -> Result<Arc<Account>, ControlError> {
        let now = self.state.clock.now_ms();
        self.create_account_at(spec, store::to_second(now))
    }

    fn create_account_at(&self, spec: AccountSpec, now: Millis) -> Result<Arc<Account>, ControlError> {
        let cfg = &self.state.config;
        let plan = spec.plan.unwrap_or(cfg.pipedrive.plan);
        let seats = spec.seats.unwrap_or(cfg.pipedrive.seats).max(1);
        let tz_name = spec.time_zone.clone().unwrap_or_else(|| cfg.pipedrive.time_zone.clone());
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| ControlError::bad_request(format!("unknown time zone {tz_name:?}")))?;
        let scopes: Vec<String> = match &spec.scopes {
            Some(s) => {
                if let Some(bad) = s.iter().find(|x| !schema::ALL_SCOPES.contains(&x.as_str())) {
                    return Err(ControlError::bad_request(format!("unknown scope {bad:?}")));
                }
                s.clone()
            }
            None => schema::ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut limits = AccountLimits::new(plan, seats, tz);
        if let Some(q) = &spec.quota {
            limits.apply(q, now).map_err(ControlError::bad_request)?;
        }
        let records = spec.records.unwrap_or(cfg.records);
        let mut counts = [records; 5];
        for (name, n) in spec.objects.iter().flatten() {
            let e = Entity::parse(name)
                .ok_or_else(|| ControlError::bad_request(format!("unknown Pipedrive entity {name:?}")))?;
            counts[e.index()] = *n;
        }
        let company_id = match spec.company_id {
            Some(c) => c,
            None => {
                let mut n = self.next_index.lock();
                let accounts = self.accounts.read();
                loop {
                    *n += 1;
                    let candidate = FIRST_COMPANY_ID + *n - 1;
                    if !accounts.contains_key(&candidate) {
                        break candidate;
                    }
                }
            }
        };
        if self.accounts.read().contains_key(&company_id) {
            return Err(ControlError::conflict(format!("company {company_id} already exists")));
        }
        let cid = company_id.to_string();
        let mut rng = rng_for(cfg.seed, &["pipedrive", "account", &cid]);
        let base_user = 20_000_000 + (company_id % 100_000) as i64 * 10;
        let users: Vec<User> = (0..3)
            .map(|k| {
                let first = seed::pick(&mut rng, seed::FIRST_NAMES);
                let last = seed::pick(&mut rng, seed::LAST_NAMES);
                User {
                    id: base_user + k,
                    name: format!("{first} {last}"),
                    email: format!(
                        "{}.{}@company-{cid}.sandbox.test",
                        first.to_lowercase(),
                        last.to_lowercase()
                    ),
                }
            })
            .collect();
        let api_token = seed::random_string(&mut rng, seed::HEX, 40);
        let marker_key = seed::random_string(&mut rng, seed::HEX, 40);
        let company_name = format!(
            "{} {}",
            seed::pick(&mut rng, seed::COMPANY_PREFIXES),
            seed::pick(&mut rng, seed::COMPANY_SUFFIXES)
        );
        let custom = vec![CustomField {
            key: marker_key.clone(),
            name: schema::MARKER_FIELD_NAME.to_owned(),
            field_type: "varchar",
            entities: vec![Entity::Persons, Entity::Activities, Entity::Notes],
        }];
        let data_seed = spec.seed.unwrap_or(cfg.seed);
        let data = store::seed_account(
            data_seed,
            company_id,
            counts,
            now,
            AccountData::new(users.clone(), "EUR", custom),
        );
        let account = Arc::new(Account {
            company_id,
            company_domain: format!("sandbox-{cid}"),
            company_name,
            user: users[0].clone(),
            marker_field_key: marker_key,
            data: RwLock::new(data),
            limits: Mutex::new(limits),
            api_token: Mutex::new(api_token.clone()),
            initial_tokens: Mutex::new(Value::Null),
        });
        let tokens = self.issue_pair(&account, scopes);
        *account.initial_tokens.lock() = tokens;
        self.api_tokens.write().insert(api_token, company_id);
        self.accounts.write().insert(company_id, account.clone());
        Ok(account)
    }

    fn account_json(&self, a: &Account, with_digest: bool) -> Value {
        let now = self.state.clock.now_ms();
        let (quota, tz, daily_used, windows) = {
            let mut l = a.limits.lock();
            (l.quota.clone(), l.tz.name().to_owned(), l.daily_used(now), l.window_usage(now))
        };
        let (counts, last_seq, users) = {
            let d = a.data.read();
            let users: Vec<Value> =
                d.users.iter().map(|u| json!({"id": u.id, "name": u.name, "email": u.email})).collect();
            (d.counts(), d.journal.last_seq(), users)
        };
        let mut v = json!({
            "id": a.company_id.to_string(),
            "company_id": a.company_id,
            "company_name": a.company_name,
            "company_domain": a.company_domain,
            "user_id": a.user.id,
            "users": users,
            "plan": quota.plan,
            "time_zone": tz,
            "quota": quota,
            "usage": {"daily_used": daily_used, "burst_windows": windows},
            "counts": counts,
            "journal_last_seq": last_seq,
            "credentials": {
                "api_token": a.api_token(),
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret,
                "api_domain": self.api_base,
                "marker_field_key": a.marker_field_key,
                "marker_field_name": schema::MARKER_FIELD_NAME,
                "oauth": a.initial_tokens.lock().clone(),
            },
        });
        if with_digest {
            v["digest"] = Value::String(self.digest(a));
        }
        v
    }

    /// A SHA-256 over every row (all fields, timestamps, deletion state) of a company: equal digests
    /// mean identical data.
    pub fn digest(&self, a: &Account) -> String {
        use sha2::{Digest, Sha256};
        let d = a.data.read();
        let mut h = Sha256::new();
        for e in Entity::ALL {
            for r in d.table(e).rows.values() {
                h.update(e.name());
                h.update(r.id.to_le_bytes());
                h.update(r.add_time.to_le_bytes());
                h.update(r.update_time.to_le_bytes());
                h.update(r.deleted_at.unwrap_or(-1).to_le_bytes());
                h.update(serde_json::to_vec(&r.fields).unwrap_or_default());
                h.update(serde_json::to_vec(&r.custom).unwrap_or_default());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bearer(headers: &HeaderMap) -> Option<&str> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    }

    fn query_api_token(uri: &Uri) -> Option<String> {
        let q = uri.query()?;
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "api_token").map(|(_, v)| v.into_owned())
    }

    fn is_v1(uri: &Uri) -> bool {
        uri.path().starts_with("/v1/") || uri.path().starts_with("/api/v1/")
    }

    /// Resolves the credentials of a request (gateway 401 on anything unusable).
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<(Arc<Account>, Principal), Response> {
        let st = &self.state;
        let api_token =
            headers.get("x-api-token").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned()).or_else(
                || {
                    (self.settings.read().legacy_api_token_query && Self::is_v1(uri))
                        .then(|| Self::query_api_token(uri))
                        .flatten()
                },
            );
        if let Some(t) = api_token {
            let company = self.api_tokens.read().get(&t).copied();
            return match company.and_then(|c| self.account_by_id(c)) {
                Some(a) => {
                    let user_id = a.user.id;
                    Ok((a, Principal::ApiToken { user_id }))
                }
                None => Err(errors::unauthorized(st)),
            };
        }
        let Some(token) = Self::bearer(headers) else {
            return Err(errors::unauthorized(st));
        };
        let t = match st.tokens.check_access(token, st.clock.now_ms()) {
            AccessCheck::Valid(t) if t.grant.provider == ProviderKind::Pipedrive => t,
            _ => return Err(errors::unauthorized(st)),
        };
        let Some(account) = t.grant.account.parse().ok().and_then(|c| self.account_by_id(c)) else {
            return Err(errors::unauthorized(st));
        };
        let user_id = t.grant.user_id.as_deref().and_then(|u| u.parse().ok()).unwrap_or(account.user.id);
        Ok((account, Principal::OAuth { client_id: t.grant.client_id, user_id, scopes: t.grant.scopes }))
    }

    /// Authenticates, applies the abuse block, the daily budget and the burst, then checks that the
    /// token holds one of `scopes` (any when empty).
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        write_method: bool,
        cost: Cost,
        scopes: &[&str],
    ) -> Result<Authed, Response> {
        let (account, principal) = self.authenticate(headers, uri)?;
        let now = self.state.clock.now_ms();
        let settings = self.settings.read().limit_settings();
        let admitted = account.limits.lock().admit(
            &principal,
            cost.tokens(),
            cost.is_search(),
            write_method,
            now,
            &settings,
        );
        let authed = match admitted {
            Ok(h) => Authed { account, principal, headers: h },
            Err(r) => return Err(self.refusal_response(&r)),
        };
        if !authed.has_any_scope(scopes) {
            return Err(authed.finish(errors::scope_mismatch(&self.state), "scope.denied"));
        }
        Ok(authed)
    }

    fn refusal_response(&self, r: &Refusal) -> Response {
        match r {
            Refusal::Abuse { .. } => {
                let mut resp = errors::abuse_page();
                resp.extensions_mut().insert(Operation("throttled.abuse".into()));
                mark_throttled(resp)
            }
            Refusal::Limited { daily, retry_after_ms, headers } => {
                let retry =
                    self.settings.read().retry_after.then(|| limits::secs_ceil(*retry_after_ms) as u64);
                let resp = self.throttle_response(if *daily { "daily" } else { "burst" }, retry);
                add_headers(resp, headers)
            }
        }
    }

    /// A 429 exactly as the sandbox documents it (same body for burst and daily), tagged and counted
    /// as a throttle.
    pub fn throttle_response(&self, policy: &str, retry_after_secs: Option<u64>) -> Response {
        let mut resp = errors::rate_limited(&self.state);
        if let Some(s) = retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp.extensions_mut().insert(Operation(format!("throttled.{policy}")));
        mark_throttled(resp)
    }

    /// The company's data for reading, purging expired soft-deleted rows first.
    pub(crate) fn read_data<'a>(&self, a: &'a Account) -> RwLockReadGuard<'a, AccountData> {
        let now = self.state.clock.now_ms();
        let retention = self.settings.read().retention_ms();
        {
            let d = a.data.read();
            if !d.purge_due(now, retention) {
                return d;
            }
        }
        a.data.write().purge(now, retention);
        a.data.read()
    }

    /// The company's data for writing, purging expired soft-deleted rows first.
    pub(crate) fn write_data<'a>(&self, a: &'a Account) -> parking_lot::RwLockWriteGuard<'a, AccountData> {
        let now = self.state.clock.now_ms();
        let retention = self.settings.read().retention_ms();
        let mut d = a.data.write();
        if d.purge_due(now, retention) {
            d.purge(now, retention);
        }
        d
    }

    /// Records a creation for the "no duplicate creates" counters.
    pub(crate) fn record_created(&self, a: &Account, d: &AccountData, e: Entity, id: u64, source: &str) {
        if let Some(r) = d.table(e).rows.get(&id) {
            self.state.counters.record_created(
                ProviderKind::Pipedrive,
                &a.company_id.to_string(),
                crate::observe::created_object(
                    e.name(),
                    &id.to_string(),
                    r.add_time,
                    source,
                    r.searchable_text(e),
                ),
            );
        }
    }

    fn apply_mutations(
        &self,
        a: &Account,
        req: &MutationRequest,
        source: &str,
    ) -> Result<ChangeLog, ControlError> {
        let objects: Vec<Entity> = match &req.objects {
            None => Entity::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Entity::parse(n)
                        .ok_or_else(|| ControlError::bad_request(format!("unknown Pipedrive entity {n:?}")))
                })
                .collect::<Result<_, _>>()?,
        };
        if objects.is_empty() {
            return Err(ControlError::bad_request("objects must not be empty"));
        }
        let mut data = self.write_data(a);
        let batch_seed = req.seed.unwrap_or(data.journal.last_seq());
        let cid = a.company_id.to_string();
        let mut rng =
            rng_for(self.state.config.seed, &["pipedrive", &cid, "mutations", &batch_seed.to_string()]);
        let mut ops: Vec<u8> = Vec::new();
        ops.extend(std::iter::repeat_n(0u8, req.creates as usize));
        ops.extend(std::iter::repeat_n(1u8, req.updates as usize));
        ops.extend(std::iter::repeat_n(2u8, req.deletes as usize));
        ops.shuffle(&mut rng);
        let users: Vec<i64> = data.users.iter().map(|u| u.id).collect();
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(step) = req.step_ms.filter(|s| *s > 0) {
                self.state.clock.advance(step);
            }
            let now = self.state.clock.now_ms();
            let e = objects[rng.random_range(0..objects.len())];
            match op {
                0 => {
                    let live = |d: &AccountData, e: Entity| -> Vec<u64> {
                        d.table(e).rows.values().filter(|r| r.deleted_at.is_none()).map(|r| r.id).collect()
                    };
                    let (orgs, persons, deals) = (
                        live(&data, Entity::Organizations),
                        live(&data, Entity::Persons),
                        live(&data, Entity::Deals),
                    );
                    let n = 1_000_000 + data.journal.last_seq() + 1;
                    let fields = store::fake_fields(
                        e,
                        &mut rng,
                        n,
                        a.company_id,
                        &users,
                        (&orgs, &persons, &deals),
                        now,
                    );
                    let (id, change) = data.create(e, fields, Map::new(), now, source);
                    self.record_created(a, &data, e, id, source);
                    changes.push(change);
                }
                1 => {
                    let Some(id) = data.pick_live(e, &mut rng) else { continue };
                    let patch = mutation_update(e, &mut rng, now);
                    if let Ok(change) = data.update(e, id, patch, Map::new(), now, source) {
                        changes.push(change);
                    }
                }
                _ => {
                    let Some(id) = data.pick_live(e, &mut rng) else { continue };
                    if let Ok(change) = data.delete(e, id, now, source) {
                        changes.push(change);
                    }
                }
            }
        }
        Ok(ChangeLog::from_changes(changes))
    }

    fn record_json(&self, d: &AccountData, e: Entity, id: u64) -> Option<Value> {
        let r = d.table(e).rows.get(&id)?;
        let mut v = view::item(d, e, r, true);
        v["deleted_at"] = r.deleted_at.map_or(Value::Null, |t| json!(view::iso(t)));
        v["custom_field_values"] = json!(r.custom);
        Some(v)
    }
}

fn mutation_update(e: Entity, rng: &mut rand_chacha::ChaCha8Rng, now: Millis) -> Map<String, Value> {
    let m = match e {
        Entity::Persons => {
            json!({"phones": [{"value": format!("+1-555-{:04}", rng.random_range(0..10_000)), "primary": true, "label": "work"}]})
        }
        Entity::Organizations => {
            json!({"address": {"value": format!("{} Harbour Road, {}", rng.random_range(1..300), seed::pick(rng, seed::CITIES))}})
        }
        Entity::Deals => {
            if rng.random_bool(0.15) {
                json!({"is_archived": true})
            } else {
                let p = &schema::PIPELINES[usize::from(rng.random_bool(0.25))];
                json!({"stage_id": p.stages[rng.random_range(0..p.stages.len())].0, "value": rng.random_range(1..500u64) * 100})
            }
        }
        Entity::Activities => {
            json!({"done": rng.random_bool(0.5), "note": format!("Follow-up on {}.", seed::pick(rng, seed::NOTE_WORDS))})
        }
        Entity::Notes => {
            json!({"content": format!("<p>Updated: {} at {}</p>", seed::pick(rng, seed::NOTE_WORDS), view::iso(now))})
        }
    };
    match m {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn parse_entity(object: &str) -> Result<Entity, ControlError> {
    Entity::parse(object)
        .ok_or_else(|| ControlError::bad_request(format!("unknown Pipedrive entity {object:?}")))
}

fn parse_id(record_id: &str) -> Result<u64, ControlError> {
    record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))
}

impl Provider for Pipedrive {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pipedrive
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn urls(&self) -> ProviderUrls {
        let mut m = BTreeMap::new();
        m.insert("api_base".to_owned(), self.api_base.clone());
        m.insert("oauth_base".to_owned(), self.oauth_base.clone());
        m.insert("authorize_url".to_owned(), format!("{}/oauth/authorize", self.oauth_base));
        m.insert("token_url".to_owned(), format!("{}/oauth/token", self.oauth_base));
        m.insert("revoke_url".to_owned(), format!("{}/oauth/revoke", self.oauth_base));
        m
    }

    fn router(self: Arc<Self>, host: &str) -> Router {
        if host == "oauth" {
            return Router::new()
                .route("/oauth/authorize", get(oauth::authorize))
                .route("/oauth/token", post(oauth::token))
                .route("/oauth/revoke", post(oauth::revoke))
                .fallback(api::fallback)
                .with_state(self);
        }
        api::routes().with_state(self)
    }

    fn identify(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        if let Some(t) = headers.get("x-api-token").and_then(|v| v.to_str().ok()) {
            return self.api_tokens.read().get(t.trim()).map(u64::to_string);
        }
        if let Some(token) = Self::bearer(headers) {
            return match self.state.tokens.account_of(token) {
                Some((ProviderKind::Pipedrive, a)) => Some(a),
                _ => None,
            };
        }
        Self::query_api_token(uri).and_then(|t| self.api_tokens.read().get(&t).map(u64::to_string))
    }

    fn fault_response(&self, action: &FaultAction, account: Option<&str>) -> Response {
        let st = &self.state;
        let budget = account
            .and_then(|a| a.parse().ok())
            .and_then(|c| self.account_by_id(c))
            .map(|a| a.limits.lock().quota.daily_budget);
        let daily_429 = |retry: Option<u64>| {
            let mut h = vec![("x-ratelimit-remaining", "1".to_owned())];
            if let Some(b) = budget {
                h.push(("x-daily-ratelimit-token-limit", b.to_string()));
            }
            h.push(("x-daily-ratelimit-token-remaining", "0".to_owned()));
            add_headers(self.throttle_response("daily", retry), &h)
        };
        let burst_429 = |retry: Option<u64>| {
            let h = vec![
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", retry.unwrap_or(2).to_string()),
            ];
            add_headers(self.throttle_response("burst", retry), &h)
        };
        match action {
            FaultAction::Throttle { policy, retry_after_secs } => {
                match policy.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("daily") => daily_429(*retry_after_secs),
                    Some("abuse") | Some("cloudflare") => {
                        self.refusal_response(&Refusal::Abuse { retry_after_ms: 0 })
                    }
                    _ => burst_429(*retry_after_secs),
                }
            }
            FaultAction::Status { status, kind, retry_after_secs, .. } => {
                let kind = kind.as_deref().unwrap_or("");
                match *status {
                    401 => errors::unauthorized(st),
                    402 => errors::error(st, StatusCode::PAYMENT_REQUIRED, "Company account is not open"),
                    403 if kind == "abuse" || kind == "html" => errors::abuse_page(),
                    403 if !kind.is_empty() && kind != "scope" => {
                        errors::forbidden(st, "You have reached the limit of this feature in your plan", kind)
                    }
                    403 => errors::scope_mismatch(st),
                    404 => errors::not_found(st, "Item"),
                    409 => errors::error(
                        st,
                        StatusCode::CONFLICT,
                        "Conflict: the item was changed by another request",
                    ),
                    410 => errors::gone(st, "the /api/v2 endpoint"),
                    422 => errors::error(st, StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Entity"),
                    429 if kind == "daily" => daily_429(*retry_after_secs),
                    429 => burst_429(*retry_after_secs),
                    s @ (502 | 504) if kind != "json" => {
                        errors::gateway_page(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY))
                    }
                    s => {
                        let code = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        errors::error(st, code, code.canonical_reason().unwrap_or("Internal Server Error"))
                    }
                }
            }
            _ => errors::error(st, StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        }
    }

    fn list_accounts(&self) -> Value {
        let accounts: Vec<Value> = self.accounts().iter().map(|a| self.account_json(a, false)).collect();
        json!({"accounts": accounts})
    }

    fn create_account(&self, spec: Value) -> Result<Value, ControlError> {
        let spec: AccountSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::bad_request(format!("invalid account spec: {e}")))?;
        let a = Pipedrive::create_account(self, spec)?;
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
        a.limits.lock().apply(&patch, self.state.clock.now_ms()).map_err(ControlError::bad_request)?;
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
                return Err(ControlError::bad_request(format!("unknown Pipedrive setting {k:?}")));
            }
            current[&k] = v;
        }
        let next: Settings = serde_json::from_value(current)
            .map_err(|e| ControlError::bad_request(format!("invalid settings: {e}")))?;
        if !matches!(next.daily_token_headers.as_str(), "always" | "never" | "after_inactivity") {
            return Err(ControlError::bad_request(
                "daily_token_headers must be always, never or after_inactivity",
            ));
        }
        if next.deleted_retention_days < 1 {
            return Err(ControlError::bad_request("deleted_retention_days must be at least 1"));
        }
        *self.settings.write() = next;
        Ok(self.settings())
    }

    fn issue_tokens(&self, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let scopes = schema::ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
        Ok(self.issue_pair(&a, scopes))
    }

    fn revoke_tokens(&self, state: &SandboxState, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let n = state.tokens.revoke_account(ProviderKind::Pipedrive, id, state.clock.now_ms());
        let mut rng = rng_for(state.config.seed, &["pipedrive", "api-token-rotation", id, &n.to_string()]);
        let new_token = seed::random_string(&mut rng, seed::HEX, 40);
        let old = std::mem::replace(&mut *a.api_token.lock(), new_token.clone());
        let mut map = self.api_tokens.write();
        map.remove(&old);
        map.insert(new_token.clone(), a.company_id);
        Ok(json!({"revoked": n + 1, "api_token": new_token}))
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
        let (e, rid) = (parse_entity(object)?, parse_id(record_id)?);
        let d = self.read_data(&a);
        self.record_json(&d, e, rid)
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
        let (e, rid) = (parse_entity(object)?, parse_id(record_id)?);
        let body = match patch.get("properties") {
            Some(Value::Object(m)) => m.clone(),
            _ => match patch {
                Value::Object(m) => m,
                _ => return Err(ControlError::bad_request("patch must be a JSON object of fields")),
            },
        };
        let marker = a.marker_field_key.clone();
        let extra = move |k: &str| e == Entity::Notes && k == marker;
        let (fields, custom) = schema::validate(e, &body, false, &extra)
            .map_err(|err| ControlError::bad_request(format!("{}: {}", err.field, err.message)))?;
        let now = self.state.clock.now_ms();
        let mut d = self.write_data(&a);
        d.check_refs(e, &fields, &custom, false)
            .map_err(|err| ControlError::bad_request(format!("{}: {}", err.field, err.message)))?;
        d.update(e, rid, fields, custom, now, "control")
            .map_err(|_| ControlError::not_found(format!("no live {object} {record_id}")))?;
        self.record_json(&d, e, rid).ok_or_else(|| ControlError::not_found("record vanished"))
    }

    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let (e, rid) = (parse_entity(object)?, parse_id(record_id)?);
        let now = self.state.clock.now_ms();
        let mut d = self.write_data(&a);
        let change = d
            .delete(e, rid, now, "control")
            .map_err(|_| ControlError::not_found(format!("no live {object} {record_id}")))?;
        Ok(serde_json::to_value(change).unwrap_or(Value::Null))
    }
}
