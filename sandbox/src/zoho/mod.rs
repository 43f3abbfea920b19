//! The Zoho CRM imitation (`crm-providers.md` §4 and §7.5).
//!
//! Two data centres, four hosts, four listeners: `us_accounts` and `eu_accounts` stand for
//! `accounts.zoho.com` and `accounts.zoho.eu` (OAuth: authorize, token, revoke), `us_api` and `eu_api`
//! for `www.zohoapis.com` and `www.zohoapis.eu` (`/crm/v7` and its `/crm/v8` alias). An org lives in
//! one data centre: its tokens only work on that centre's API host and its codes and refresh tokens
//! only on that centre's accounts server. Submodules:
//!
//! * [`schema`]: modules, fields, picklists, input validation, scopes;
//! * [`store`]: per-org records, indexes, recycle bin, users, journal and seeding;
//! * [`limits`]: the rolling 24 h credit counter and the concurrency slots;
//! * `errors`, `view`: wire shapes;
//! * `oauth`, `api`, `query` (search and COQL): the HTTP handlers.
//!
//! Every API request goes: authenticate (401 `AUTHENTICATION_FAILURE` / `INVALID_TOKEN`, the latter
//! also for a `Bearer` scheme or a token of the other data centre) → scope (401
//! `OAUTH_SCOPE_MISMATCH`) → concurrency and credits (429) → optional hold (control plane) → handler;
//! every admitted response carries the `X-RATELIMIT-*` credit headers (a setting).
//!
//! Invariant: an org's records are only touched under its `data` lock; every write stamps the logical
//! clock (at second precision) and lands in the org's journal, and the control plane writes through
//! the same store functions as the API.

// Handlers return early with a finished `Response`; boxing it would add noise on cold error paths.
#![allow(clippy::result_large_err)]

mod api;
mod errors;
pub mod limits;
mod oauth;
mod query;
pub mod schema;
pub mod store;
mod view;

pub use limits::{Edition, LimitPatch, Quota};

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::clock::Millis;
use crate::config::ProviderKind;
use crate::faults::FaultAction;
use crate::provider::{ControlError, Provider, ProviderInit, ProviderUrls};
use crate::seed::{self, SharedRng, rng_for};
use crate::server::{Operation, mark_throttled};
use crate::state::SandboxState;
use crate::tokens::AccessCheck;
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use chrono_tz::Tz;
use limits::{AccountLimits, Limit, Refusal, Usage};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rand::seq::SliceRandom;
use schema::{Access, FieldValue, Module};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use store::{AccountData, By, Rules, User};

/// A Zoho data centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dc {
    /// United States: `accounts.zoho.com`, `www.zohoapis.com`.
    Us,
    /// Europe: `accounts.zoho.eu`, `www.zohoapis.eu`.
    Eu,
}

impl Dc {
    /// Both centres.
    pub const ALL: [Dc; 2] = [Dc::Us, Dc::Eu];

    /// `us` / `eu`, as the authorize redirect's `location` says.
    pub fn as_str(self) -> &'static str {
        match self {
            Dc::Us => "us",
            Dc::Eu => "eu",
        }
    }

    /// Parses `us` / `eu` (also `com`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "us" | "com" => Some(Dc::Us),
            "eu" => Some(Dc::Eu),
            _ => None,
        }
    }

    /// The registry host name of the accounts server.
    pub fn accounts_host(self) -> &'static str {
        match self {
            Dc::Us => "us_accounts",
            Dc::Eu => "eu_accounts",
        }
    }

    /// The registry host name of the API domain.
    pub fn api_host(self) -> &'static str {
        match self {
            Dc::Us => "us_api",
            Dc::Eu => "eu_api",
        }
    }

    fn default_time_zone(self) -> &'static str {
        match self {
            Dc::Us => "America/Los_Angeles",
            Dc::Eu => "Europe/Berlin",
        }
    }
}

/// Start-up defaults of the Zoho imitation (runtime changes go through the control plane).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZohoConfig {
    /// `expires_in` of access tokens, seconds. Zoho documents one hour.
    pub access_token_ttl_secs: i64,
    /// Edition of seeded orgs (sets credits and concurrency).
    pub edition: Edition,
    /// Licensed users of seeded orgs (scales the credits).
    pub users: u64,
    /// Data centres of seeded orgs, cycled: org `k` lives in `data_centers[k % len]`.
    pub data_centers: Vec<Dc>,
    /// `If-Modified-Since` also returns records modified exactly at the given second (UNCONFIRMED;
    /// off: strictly after).
    pub if_modified_since_inclusive: bool,
    /// Records written less than this long ago are invisible to `/search` (documented indexing delay).
    pub search_index_lag_ms: Millis,
}

impl Default for ZohoConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3600,
            edition: Edition::Enterprise,
            users: 10,
            data_centers: vec![Dc::Us, Dc::Eu],
            if_modified_since_inclusive: false,
            search_index_lag_ms: 0,
        }
    }
}

/// The base URLs of one data centre.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcUrls {
    /// Stands for `https://accounts.zoho.{com,eu}`.
    pub accounts_server: String,
    /// Stands for `https://www.zohoapis.{com,eu}` (the token response's `api_domain`).
    pub api_domain: String,
}

/// Zoho's base URLs, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZohoUrls {
    /// The US centre, where every OAuth flow starts.
    pub us: DcUrls,
    /// The EU centre.
    pub eu: DcUrls,
    /// `{us accounts_server}/oauth/v2/auth`.
    pub authorize_url: String,
    /// `{us accounts_server}/oauth/v2/token` (exchange codes at the server the redirect names).
    pub token_url: String,
    /// `{us accounts_server}/oauth/v2/token/revoke`.
    pub revoke_url: String,
}

impl ZohoUrls {
    /// Reads them from the generic URL map.
    pub fn from_map(m: &ProviderUrls) -> Option<Self> {
        Some(Self {
            us: DcUrls {
                accounts_server: m.get("accounts_server")?.clone(),
                api_domain: m.get("api_domain")?.clone(),
            },
            eu: DcUrls {
                accounts_server: m.get("eu_accounts_server")?.clone(),
                api_domain: m.get("eu_api_domain")?.clone(),
            },
            authorize_url: m.get("authorize_url")?.clone(),
            token_url: m.get("token_url")?.clone(),
            revoke_url: m.get("revoke_url")?.clone(),
        })
    }

    /// The URLs of one centre.
    pub fn dc(&self, dc: Dc) -> &DcUrls {
        match dc {
            Dc::Us => &self.us,
            Dc::Eu => &self.eu,
        }
    }
}

/// Provider-wide settings (`GET`/`PATCH /_sandbox/zoho/settings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `expires_in` of new access tokens, seconds (3600 documented).
    pub access_token_ttl_secs: i64,
    /// Lifetime of authorization codes, seconds (2 minutes documented).
    pub auth_code_ttl_secs: i64,
    /// Access tokens one refresh token may mint per window (10 documented).
    pub tokens_per_refresh_window: u64,
    /// That window, seconds (10 minutes documented).
    pub refresh_window_secs: i64,
    /// Refresh tokens a user may hold; the oldest is deleted beyond (20 documented).
    pub max_refresh_tokens_per_user: usize,
    /// Live access tokens per refresh token; the oldest is invalidated beyond (30 documented).
    pub max_access_tokens_per_refresh: usize,
    /// Refresh tokens a user may obtain per minute (5 documented).
    pub refresh_tokens_per_minute: u64,
    /// HTTP status of token-endpoint error bodies such as `{"error":"invalid_code"}` (UNCONFIRMED;
    /// Zoho often answers 200 with an `error` key).
    pub token_error_status: u16,
    /// HTTP status of the "too many requests continuously" token refusal (UNCONFIRMED).
    pub access_denied_status: u16,
    /// Revoking a refresh token also revokes the access tokens minted from it.
    pub revoke_cascades: bool,
    /// The authorize page denies instead of approving.
    pub authorize_deny: bool,
    /// Org the authorize page approves for when the request names none (first org if unset).
    pub authorize_org_id: Option<String>,
    /// `If-Modified-Since` also returns records modified exactly at the given second.
    pub if_modified_since_inclusive: bool,
    /// Lifetime of list page tokens, seconds (`page_token_expiry`; UNCONFIRMED, one day).
    pub page_token_ttl_secs: i64,
    /// Records written less than this long ago are invisible to `/search`.
    pub search_index_lag_ms: Millis,
    /// `code` of 429 bodies: `TOO_MANY_REQUESTS` or `RATE_LIMIT_EXCEEDED` (UNCONFIRMED).
    pub throttle_code: String,
    /// Send `X-RATELIMIT-LIMIT/REMAINING/RESET` credit headers (UNCONFIRMED).
    pub rate_limit_headers: bool,
    /// Send `Retry-After` on 429 (undocumented; off).
    pub retry_after: bool,
    /// Reject unknown field API names in writes (strict; the real API may ignore them).
    pub reject_unknown_fields: bool,
    /// Contacts' `Email` refuses duplicates (`DUPLICATE_DATA`).
    pub unique_contact_email: bool,
    /// `/Notes/upsert` is supported (UNCONFIRMED).
    pub notes_upsert: bool,
    /// `GET /{module}/{id}` of an unknown or deleted id: `invalid_data` (400, the research) or
    /// `no_content` (204).
    pub get_unknown_id: String,
    /// Days a deleted record stays in the recycle bin before `/deleted` reports it `permanent`.
    pub recycle_retention_days: i64,
}

/// The sandbox's OAuth client ("server-based application" with multi-DC enabled).
#[derive(Clone, Debug, Serialize)]
pub struct OAuthApp {
    /// Client id (`1000.` + 30 characters).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

/// One Zoho CRM org.
#[derive(Debug)]
pub struct Account {
    /// Org id.
    pub org_id: String,
    /// Its data centre.
    pub dc: Dc,
    /// The org's time zone (date-times are rendered with its offset).
    pub tz: Tz,
    /// Records.
    pub data: RwLock<AccountData>,
    /// Limiters.
    pub limits: Mutex<AccountLimits>,
    /// Scopes of the pre-issued token pair.
    pub scopes: Vec<String>,
    hold: tokio::sync::watch::Sender<bool>,
    initial_tokens: Mutex<Value>,
}

impl Account {
    /// The admin user (who authorised the app).
    pub fn admin(&self) -> User {
        self.data.read().admin().clone()
    }
}

/// A request that passed authentication.
pub(crate) struct Authed {
    pub(crate) account: Arc<Account>,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) user: u64,
}

/// Frees a concurrency slot when dropped.
pub(crate) struct SlotGuard {
    account: Arc<Account>,
    client: String,
    heavy: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.account.limits.lock().release(&self.client, self.heavy);
    }
}

/// A request that passed authentication, scope and limits.
pub(crate) struct Admitted {
    pub(crate) authed: Authed,
    headers: Vec<(&'static str, String)>,
    _slot: SlotGuard,
}

impl Admitted {
    /// The org.
    pub(crate) fn account(&self) -> &Arc<Account> {
        &self.authed.account
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

/// What a call needs, for admission.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Need {
    /// What the scope check asks for.
    pub(crate) scope: ScopeNeed,
    /// Counts against the sub-concurrency limit.
    pub(crate) heavy: bool,
    /// Credits.
    pub(crate) cost: u64,
}

/// The scope a call needs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScopeNeed {
    /// `ZohoCRM.modules.<module>.<access>` (or a wider form).
    Module(Module, Access),
    /// `ZohoCRM.coql.READ`.
    Coql,
    /// `ZohoCRM.org.READ` (organization data).
    Org,
}

/// Per-host router state.
#[derive(Clone)]
pub(crate) struct Host {
    pub(crate) zoho: Arc<Zoho>,
    pub(crate) dc: Dc,
}

/// The Zoho CRM imitation.
pub struct Zoho {
    state: Arc<SandboxState>,
    hosts: BTreeMap<Dc, DcUrls>,
    settings: RwLock<Settings>,
    app: OAuthApp,
    accounts: RwLock<BTreeMap<String, Arc<Account>>>,
    token_rng: SharedRng,
    next_index: Mutex<u64>,
    oauth: Mutex<oauth::OAuthBook>,
    page_tokens: Mutex<HashMap<String, api::PageToken>>,
    edition: Edition,
    users: u64,
    data_centers: Vec<Dc>,
}

impl std::fmt::Debug for Zoho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zoho").field("hosts", &self.hosts).finish_non_exhaustive()
    }
}

/// Builds the provider and seeds the configured number of orgs.
pub fn build(init: ProviderInit) -> Arc<dyn Provider> {
    Arc::new(Zoho::new(init))
}

/// Org creation options (`POST /_sandbox/zoho/accounts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Data centre (`us` or `eu`; the next in the configured cycle when absent).
    #[serde(default)]
    pub dc: Option<Dc>,
    /// Records per module (the sandbox default when absent).
    #[serde(default)]
    pub records: Option<usize>,
    /// Records for some modules (`{"Contacts": 2500, "Notes": 0}`), overriding `records`.
    #[serde(default)]
    pub modules: Option<BTreeMap<String, usize>>,
    /// Seed of the org's data (the sandbox seed when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A specific org id (the next free one when absent).
    #[serde(default)]
    pub org_id: Option<String>,
    /// Edition.
    #[serde(default)]
    pub edition: Option<Edition>,
    /// Licensed users.
    #[serde(default)]
    pub users: Option<u64>,
    /// IANA time zone of the org (the data centre's default when absent).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Scopes of the pre-issued token pair (the defaults when absent).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Limit overrides applied after creation.
    #[serde(default)]
    pub quota: Option<LimitPatch>,
}

/// First org id handed out.
pub const FIRST_ORG_ID: u64 = 700_000_001;

/// Names of the users of every org (the first is the admin).
const USER_NAMES: [&str; 3] = ["Patricia Boyle", "Kenji Tanaka", "Amara Okafor"];

impl Zoho {
    fn new(init: ProviderInit) -> Self {
        let st = init.state.clone();
        let cfg = st.config.zoho.clone();
        let mut app_rng = rng_for(st.config.seed, &["zoho", "app"]);
        let app = OAuthApp {
            client_id: format!(
                "1000.{}",
                seed::random_string(&mut app_rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 30)
            ),
            client_secret: seed::random_string(&mut app_rng, seed::HEX, 42),
        };
        let hosts = Dc::ALL
            .iter()
            .map(|dc| {
                (
                    *dc,
                    DcUrls {
                        accounts_server: init.host(dc.accounts_host()),
                        api_domain: init.host(dc.api_host()),
                    },
                )
            })
            .collect();
        let z = Zoho {
            hosts,
            settings: RwLock::new(Settings {
                access_token_ttl_secs: cfg.access_token_ttl_secs,
                auth_code_ttl_secs: 120,
                tokens_per_refresh_window: 10,
                refresh_window_secs: 600,
                max_refresh_tokens_per_user: 20,
                max_access_tokens_per_refresh: 30,
                refresh_tokens_per_minute: 5,
                token_error_status: 200,
                access_denied_status: 400,
                revoke_cascades: true,
                authorize_deny: false,
                authorize_org_id: None,
                if_modified_since_inclusive: cfg.if_modified_since_inclusive,
                page_token_ttl_secs: 86_400,
                search_index_lag_ms: cfg.search_index_lag_ms,
                throttle_code: "TOO_MANY_REQUESTS".to_owned(),
                rate_limit_headers: true,
                retry_after: false,
                reject_unknown_fields: true,
                unique_contact_email: true,
                notes_upsert: true,
                get_unknown_id: "invalid_data".to_owned(),
                recycle_retention_days: 60,
            }),
            app,
            accounts: RwLock::new(BTreeMap::new()),
            token_rng: SharedRng::new(st.config.seed, &["zoho", "tokens"]),
            next_index: Mutex::new(0),
            oauth: Mutex::new(oauth::OAuthBook::default()),
            page_tokens: Mutex::new(HashMap::new()),
            edition: cfg.edition,
            users: cfg.users,
            data_centers: if cfg.data_centers.is_empty() { vec![Dc::Us] } else { cfg.data_centers.clone() },
            state: st.clone(),
        };
        for _ in 0..st.config.accounts {
            if let Err(e) = z.create_account_at(AccountSpec::default(), st.config.clock_start_ms) {
                tracing::error!(error = %e, "seeding a Zoho org failed");
            }
        }
        z
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

    /// The URLs of one data centre.
    pub fn dc_urls(&self, dc: Dc) -> DcUrls {
        self.hosts
            .get(&dc)
            .cloned()
            .unwrap_or(DcUrls { accounts_server: String::new(), api_domain: String::new() })
    }

    /// One org.
    pub fn account_by_id(&self, org_id: &str) -> Option<Arc<Account>> {
        self.accounts.read().get(org_id).cloned()
    }

    /// Every org, by id.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.read().values().cloned().collect()
    }

    fn account_for(&self, id: &str) -> Result<Arc<Account>, ControlError> {
        self.account_by_id(id).ok_or_else(|| ControlError::not_found(format!("no Zoho org {id}")))
    }

    fn rules(&self) -> Rules {
        Rules { unique_contact_email: self.settings.read().unique_contact_email }
    }

    /// Mints an opaque `1000.<32 hex>.<32 hex>` token (access tokens, refresh tokens and codes look alike).
    fn mint(&self) -> String {
        format!("1000.{}.{}", self.token_rng.string(seed::HEX, 32), self.token_rng.string(seed::HEX, 32))
    }

    fn access_ttl_ms(&self) -> Millis {
        self.settings.read().access_token_ttl_secs.saturating_mul(1000)
    }

    /// Issues a token pair for an org, as a completed consent would; returns the token response.
    pub fn issue_pair(&self, account: &Account, scopes: Vec<String>) -> Value {
        let now = self.state.clock.now_ms();
        let issued = oauth::issue(self, account, self.app.client_id.clone(), scopes, true, now);
        oauth::token_json(self, account.dc, &issued.0, issued.1.as_deref())
    }

    /// Creates an org (seeded with records), returning it.
    pub fn create_account(&self, spec: AccountSpec) -> Result<Arc<Account>, ControlError> {
        let now = self.state.clock.now_ms();
        self.create_account_at(spec, now - now.rem_euclid(1000))
    }

    fn create_account_at(&self, spec: AccountSpec, now: Millis) -> Result<Arc<Account>, ControlError> {
        let cfg = &self.state.config;
        let index = {
            let mut n = self.next_index.lock();
            *n += 1;
            *n
        };
        let dc = spec.dc.unwrap_or(self.data_centers[((index - 1) as usize) % self.data_centers.len()]);
        let org_id = match &spec.org_id {
            Some(o) if !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()) => o.clone(),
            Some(o) => return Err(ControlError::bad_request(format!("org_id must be numeric, got {o:?}"))),
            None => {
                let accounts = self.accounts.read();
                let mut k = index;
                loop {
                    let candidate = (FIRST_ORG_ID + k - 1).to_string();
                    if !accounts.contains_key(&candidate) {
                        break candidate;
                    }
                    k += 1;
                }
            }
        };
        if self.accounts.read().contains_key(&org_id) {
            return Err(ControlError::conflict(format!("org {org_id} already exists")));
        }
        let tz_name = spec.time_zone.clone().unwrap_or_else(|| dc.default_time_zone().to_owned());
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| ControlError::bad_request(format!("unknown time zone {tz_name:?}")))?;
        let scopes: Vec<String> = match &spec.scopes {
            Some(s) => s.clone(),
            None => schema::DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        };
        let records = spec.records.unwrap_or(cfg.records);
        let mut counts = [records; 6];
        for (name, n) in spec.modules.iter().flatten() {
            let m = Module::parse(name)
                .ok_or_else(|| ControlError::bad_request(format!("unknown Zoho module {name:?}")))?;
            counts[m.index()] = *n;
        }
        let edition = spec.edition.unwrap_or(self.edition);
        let mut limits = AccountLimits::new(edition, spec.users.unwrap_or(self.users));
        if let Some(q) = &spec.quota {
            limits.apply(q, now).map_err(ControlError::bad_request)?;
        }
        let mut rng = rng_for(cfg.seed, &["zoho", "account", &org_id]);
        let id_prefix = rng.random_range(1_000_000..9_999_999u64);
        let users: Vec<User> = USER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| User {
                id: id_prefix * 1_000_000_000_000 + 225_013 + i as u64 * 1000,
                name: (*name).to_owned(),
                email: format!(
                    "{}@org{org_id}.sandbox.test",
                    name.split(' ').next().unwrap_or("user").to_lowercase()
                ),
                zuid: 70_000_000 + rng.random_range(0..9_999_999u64),
            })
            .collect();
        let mut data = AccountData::new(id_prefix, users);
        store::seed_account(spec.seed.unwrap_or(cfg.seed), &org_id, &mut data, counts, now);
        let (hold, _) = tokio::sync::watch::channel(false);
        let account = Arc::new(Account {
            org_id: org_id.clone(),
            dc,
            tz,
            data: RwLock::new(data),
            limits: Mutex::new(limits),
            scopes: scopes.clone(),
            hold,
            initial_tokens: Mutex::new(Value::Null),
        });
        let tokens = self.issue_pair(&account, scopes);
        *account.initial_tokens.lock() = tokens;
        self.accounts.write().insert(org_id, account.clone());
        Ok(account)
    }

    fn account_json(&self, a: &Account, with_digest: bool) -> Value {
        let now = self.state.clock.now_ms();
        let (quota, used, in_flight) = {
            let mut l = a.limits.lock();
            (l.quota.clone(), l.credits_used(now), l.in_flight().clone())
        };
        let (counts, deleted, last_seq, users) = {
            let d = a.data.read();
            let users: Vec<Value> = d
                .users
                .iter()
                .map(|u| json!({"id": u.id.to_string(), "name": u.name, "email": u.email, "zuid": u.zuid.to_string()}))
                .collect();
            (d.counts(), d.deleted_counts(), d.journal.last_seq(), users)
        };
        let urls = self.dc_urls(a.dc);
        let mut v = json!({
            "id": a.org_id,
            "org_id": a.org_id,
            "dc": a.dc,
            "time_zone": a.tz.name(),
            "accounts_server": urls.accounts_server,
            "api_domain": urls.api_domain,
            "users": users,
            "quota": quota,
            "usage": {"credits_used": used, "in_flight": in_flight, "hold": *a.hold.borrow()},
            "counts": counts,
            "deleted_counts": deleted,
            "journal_last_seq": last_seq,
            "credentials": {
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret,
                "accounts_server": urls.accounts_server,
                "api_domain": urls.api_domain,
                "token_url": format!("{}/oauth/v2/token", urls.accounts_server),
                "scopes": a.scopes,
                "marker_field": schema::MARKER_FIELD,
                "oauth": a.initial_tokens.lock().clone(),
            },
        });
        if with_digest {
            v["digest"] = Value::String(self.digest(a));
        }
        v
    }

    /// A SHA-256 over every record (live and deleted, all fields and stamps) of an org: equal digests
    /// mean identical data.
    pub fn digest(&self, a: &Account) -> String {
        use sha2::{Digest, Sha256};
        let d = a.data.read();
        let mut h = Sha256::new();
        let mut record = |m: Module, r: &store::Record, deleted: Option<Millis>| {
            h.update(m.api_name());
            h.update(r.id.to_le_bytes());
            h.update(r.created_at.to_le_bytes());
            h.update(r.modified_at.to_le_bytes());
            h.update(r.created_by.to_le_bytes());
            h.update(r.modified_by.to_le_bytes());
            h.update(deleted.unwrap_or(-1).to_le_bytes());
            for (k, v) in &r.fields {
                h.update(k.as_bytes());
                h.update([0]);
                h.update(format!("{v:?}").as_bytes());
                h.update([0]);
            }
        };
        for m in Module::ALL {
            let t = d.table(m);
            for r in t.live.values() {
                record(m, r, None);
            }
            for del in t.deleted.values() {
                record(m, &del.record, Some(del.deleted_at));
            }
        }
        let out = h.finalize();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn token_of(headers: &HeaderMap) -> Option<(&str, &str)> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.trim().split_once(' ')?;
        let token = token.trim();
        (!token.is_empty()).then_some((scheme, token))
    }

    /// Resolves the credentials of a request on data centre `dc`'s API host.
    pub(crate) fn authenticate(&self, dc: Dc, headers: &HeaderMap) -> Result<Authed, Response> {
        let Some((scheme, token)) = Self::token_of(headers) else {
            return Err(errors::authentication_failure());
        };
        if !scheme.eq_ignore_ascii_case("Zoho-oauthtoken") {
            return Err(errors::invalid_token());
        }
        let now = self.state.clock.now_ms();
        let t = match self.state.tokens.check_access(token, now) {
            AccessCheck::Valid(t) if t.grant.provider == ProviderKind::Zoho => t,
            _ => return Err(errors::invalid_token()),
        };
        let Some(account) = self.account_by_id(&t.grant.account).filter(|a| a.dc == dc) else {
            return Err(errors::invalid_token());
        };
        let user = t
            .grant
            .user_id
            .as_deref()
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| account.data.read().admin().id);
        Ok(Authed { account, client_id: t.grant.client_id, scopes: t.grant.scopes, user })
    }

    /// Authenticates, checks the scope, takes a concurrency slot and the credits, and waits while the
    /// org is held.
    pub(crate) async fn admit(&self, dc: Dc, headers: &HeaderMap, need: Need) -> Result<Admitted, Response> {
        let authed = self.authenticate(dc, headers)?;
        let allowed = match need.scope {
            ScopeNeed::Module(m, access) => schema::scope_allows(&authed.scopes, m, access),
            ScopeNeed::Coql => schema::scope_allows_coql(&authed.scopes),
            ScopeNeed::Org => schema::scope_allows_org(&authed.scopes),
        };
        if !allowed {
            return Err(errors::scope_mismatch());
        }
        let now = self.state.clock.now_ms();
        let admitted = authed.account.limits.lock().admit(&authed.client_id, need.heavy, need.cost, now);
        let usage = match admitted {
            Ok(u) => u,
            Err(refusal) => {
                let usage = authed.account.limits.lock().usage(now);
                return Err(self.refusal_response(&refusal, &usage));
            }
        };
        let slot = SlotGuard {
            account: authed.account.clone(),
            client: authed.client_id.clone(),
            heavy: need.heavy,
        };
        let mut hold = authed.account.hold.subscribe();
        while *hold.borrow_and_update() {
            if hold.changed().await.is_err() {
                break;
            }
        }
        Ok(Admitted { headers: self.usage_headers(&usage), authed, _slot: slot })
    }

    fn usage_headers(&self, u: &Usage) -> Vec<(&'static str, String)> {
        if !self.settings.read().rate_limit_headers {
            return Vec::new();
        }
        let mut h = Vec::new();
        if let (Some(limit), Some(remaining)) = (u.limit, u.remaining) {
            h.push(("x-ratelimit-limit", limit.to_string()));
            h.push(("x-ratelimit-remaining", remaining.to_string()));
        }
        h.push(("x-ratelimit-reset", u.reset_secs.to_string()));
        h
    }

    fn refusal_response(&self, r: &Refusal, usage: &Usage) -> Response {
        let credits = r.limit == Limit::Credits;
        let retry = self.settings.read().retry_after.then(|| (r.retry_after_ms.max(1) as u64).div_ceil(1000));
        let resp = self.throttle_response(credits, retry);
        add_headers(resp, &self.usage_headers(usage))
    }

    /// The 429 response (credits or concurrency), with `Retry-After` when given.
    pub fn throttle_response(&self, credits: bool, retry_after_secs: Option<u64>) -> Response {
        let code = self.settings.read().throttle_code.clone();
        let mut resp =
            errors::json_response(StatusCode::TOO_MANY_REQUESTS, &errors::throttle_body(&code, credits));
        if let Some(s) = retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        let op = if credits { "throttled.credits" } else { "throttled.concurrency" };
        resp.extensions_mut().insert(Operation(op.to_owned()));
        mark_throttled(resp)
    }

    fn apply_mutations(
        &self,
        a: &Account,
        req: &MutationRequest,
        source: &str,
    ) -> Result<ChangeLog, ControlError> {
        let modules: Vec<Module> = match &req.objects {
            None => Module::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Module::parse(n)
                        .ok_or_else(|| ControlError::bad_request(format!("unknown Zoho module {n:?}")))
                })
                .collect::<Result<_, _>>()?,
        };
        if modules.is_empty() {
            return Err(ControlError::bad_request("objects must not be empty"));
        }
        let rules = self.rules();
        let mut data = a.data.write();
        let batch_seed = req.seed.unwrap_or(data.journal.last_seq());
        let mut rng =
            rng_for(self.state.config.seed, &["zoho", &a.org_id, "mutations", &batch_seed.to_string()]);
        let actor = data.users.get(1).map(|u| u.id).unwrap_or_else(|| data.admin().id);
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
            let m = modules[rng.random_range(0..modules.len())];
            match op {
                0 => {
                    let n = 1_000_000 + data.journal.last_seq() + 1;
                    let targets = store::Targets {
                        accounts: data.pick_live(Module::Accounts, &mut rng).into_iter().collect(),
                        contacts: data.pick_live(Module::Contacts, &mut rng).into_iter().collect(),
                        deals: data.pick_live(Module::Deals, &mut rng).into_iter().collect(),
                    };
                    let mut fields = store::fake_fields(m, &mut rng, n, &a.org_id, actor, &targets, now);
                    if let Some(FieldValue::Text(e)) = fields.get_mut("Email") {
                        *e = format!("m{batch_seed}.{e}");
                    }
                    let text = store::searchable_text(m, &fields);
                    let values = to_values(m, fields);
                    match data.create(m, &values, By { actor, now, source }, rules) {
                        Ok((id, change)) => {
                            self.state.counters.record_created(
                                ProviderKind::Zoho,
                                &a.org_id,
                                crate::observe::created_object(
                                    m.api_name(),
                                    &id.to_string(),
                                    now,
                                    source,
                                    text,
                                ),
                            );
                            changes.push(change);
                        }
                        Err(e) => tracing::debug!(?e, "mutation create skipped"),
                    }
                }
                1 => {
                    let Some(id) = data.pick_live(m, &mut rng) else { continue };
                    let values = mutation_update(m, &mut rng, now);
                    match data.update(m, id, &values, By { actor, now, source }, rules) {
                        Ok(change) => changes.push(change),
                        Err(e) => tracing::debug!(?e, "mutation update skipped"),
                    }
                }
                _ => {
                    let Some(id) = data.pick_live(m, &mut rng) else { continue };
                    if let Ok(change) = data.delete(m, id, By { actor, now, source }) {
                        changes.push(change);
                    }
                }
            }
        }
        Ok(ChangeLog::from_changes(changes))
    }
}

fn to_values(m: Module, fields: BTreeMap<&'static str, FieldValue>) -> schema::Values {
    fields.into_iter().filter_map(|(k, v)| schema::field(m, k).map(|d| (d, Some(v)))).collect()
}

fn mutation_update(m: Module, rng: &mut rand_chacha::ChaCha8Rng, now: Millis) -> schema::Values {
    let mut f: BTreeMap<&'static str, FieldValue> = BTreeMap::new();
    match m {
        Module::Contacts => {
            f.insert("Phone", FieldValue::Text(format!("+1-555-{:04}", rng.random_range(0..10_000))));
            f.insert(
                "Title",
                FieldValue::Text(seed::pick(rng, &["CEO", "CTO", "VP Sales", "Engineer"]).to_owned()),
            );
        }
        Module::Accounts => {
            f.insert("Employees", FieldValue::Int(rng.random_range(2..5_000)));
        }
        Module::Deals => {
            let (stage, _) = schema::STAGES[rng.random_range(0..schema::STAGES.len())];
            f.insert("Stage", FieldValue::Text(stage.to_owned()));
            f.insert("Amount", FieldValue::Num((rng.random_range(1..500u32) * 100) as f64));
        }
        Module::Tasks => {
            f.insert("Status", FieldValue::Text(seed::pick(rng, schema::TASK_STATUSES).to_owned()));
        }
        Module::Calls => {
            f.insert(
                "Description",
                FieldValue::Text(format!("Follow-up on {}.", seed::pick(rng, seed::NOTE_WORDS))),
            );
        }
        Module::Notes => {
            f.insert(
                "Note_Content",
                FieldValue::Text(format!(
                    "Updated: {} at {}",
                    seed::pick(rng, seed::NOTE_WORDS),
                    crate::clock::format_ms(now)
                )),
            );
        }
    }
    to_values(m, f)
}

/// A record as the control plane shows it (every field, stamps, deletion).
fn record_json(a: &Account, m: Module, id: u64) -> Option<Value> {
    let d = a.data.read();
    let t = d.table(m);
    let (rec, deleted) = match t.live.get(&id) {
        Some(r) => (r, None),
        None => {
            let del = t.deleted.get(&id)?;
            (&del.record, Some(del))
        }
    };
    let mut v = view::render(&d, a.tz, m, rec, &view::Selection::All);
    v["$deleted"] = json!(deleted.is_some());
    v["$deleted_time"] = json!(deleted.map(|del| view::format_time(del.deleted_at, a.tz)));
    Some(v)
}

impl Provider for Zoho {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Zoho
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn urls(&self) -> ProviderUrls {
        let us = self.dc_urls(Dc::Us);
        let eu = self.dc_urls(Dc::Eu);
        let mut m = BTreeMap::new();
        m.insert("authorize_url".to_owned(), format!("{}/oauth/v2/auth", us.accounts_server));
        m.insert("token_url".to_owned(), format!("{}/oauth/v2/token", us.accounts_server));
        m.insert("revoke_url".to_owned(), format!("{}/oauth/v2/token/revoke", us.accounts_server));
        m.insert("accounts_server".to_owned(), us.accounts_server);
        m.insert("api_domain".to_owned(), us.api_domain);
        m.insert("eu_accounts_server".to_owned(), eu.accounts_server);
        m.insert("eu_api_domain".to_owned(), eu.api_domain);
        m
    }

    fn router(self: Arc<Self>, host: &str) -> Router {
        let dc = if host.starts_with("eu") { Dc::Eu } else { Dc::Us };
        let state = Host { zoho: self, dc };
        if host.ends_with("accounts") { oauth::router(state) } else { api::router(state) }
    }

    fn identify(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        if let Some((_, token)) = Self::token_of(headers) {
            return match self.state.tokens.account_of(token) {
                Some((ProviderKind::Zoho, a)) => Some(a),
                _ => None,
            };
        }
        // Token-endpoint calls with the refresh token in the query string.
        let q = uri.query()?;
        let rt =
            url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "refresh_token")?.1.into_owned();
        self.state
            .tokens
            .refresh_info(&rt)
            .filter(|r| r.grant.provider == ProviderKind::Zoho)
            .map(|r| r.grant.account)
    }

    fn fault_response(&self, action: &FaultAction, _account: Option<&str>) -> Response {
        match action {
            FaultAction::Throttle { policy, retry_after_secs } => {
                let credits = policy.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("credits"));
                self.throttle_response(credits, *retry_after_secs)
            }
            FaultAction::Status { status, kind, retry_after_secs, .. } => {
                let kind = kind.as_deref().unwrap_or("");
                match *status {
                    401 if kind == "scope" => errors::scope_mismatch(),
                    401 if kind == "auth" => errors::authentication_failure(),
                    401 => errors::invalid_token(),
                    403 => errors::no_permission(),
                    404 => errors::invalid_url(),
                    400 if kind == "locked" => errors::error(
                        StatusCode::BAD_REQUEST,
                        "RECORD_LOCKED",
                        "cannot update record that is locked",
                        json!({}),
                    ),
                    429 => self.throttle_response(kind.eq_ignore_ascii_case("credits"), *retry_after_secs),
                    500 => errors::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "INTERNAL_ERROR",
                        "Internal Server Error",
                        json!({}),
                    ),
                    s @ (502..=504) => errors::error(
                        StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        "SERVICE_UNAVAILABLE",
                        "Service temporarily unavailable",
                        json!({}),
                    ),
                    s => {
                        let code = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let zcode = if s >= 500 { "INTERNAL_ERROR" } else { "INVALID_DATA" };
                        errors::error(code, zcode, code.canonical_reason().unwrap_or("error"), json!({}))
                    }
                }
            }
            _ => errors::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "Internal Server Error",
                json!({}),
            ),
        }
    }

    fn list_accounts(&self) -> Value {
        let accounts: Vec<Value> = self.accounts().iter().map(|a| self.account_json(a, false)).collect();
        json!({"accounts": accounts})
    }

    fn create_account(&self, spec: Value) -> Result<Value, ControlError> {
        let spec: AccountSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::bad_request(format!("invalid account spec: {e}")))?;
        let a = Zoho::create_account(self, spec)?;
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
        if let Some(h) = patch.hold {
            a.hold.send_replace(h);
        }
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
                return Err(ControlError::bad_request(format!("unknown Zoho setting {k:?}")));
            }
            current[&k] = v;
        }
        let next: Settings = serde_json::from_value(current)
            .map_err(|e| ControlError::bad_request(format!("invalid settings: {e}")))?;
        if !matches!(next.throttle_code.as_str(), "TOO_MANY_REQUESTS" | "RATE_LIMIT_EXCEEDED") {
            return Err(ControlError::bad_request(
                "throttle_code must be TOO_MANY_REQUESTS or RATE_LIMIT_EXCEEDED",
            ));
        }
        if !matches!(next.get_unknown_id.as_str(), "invalid_data" | "no_content") {
            return Err(ControlError::bad_request("get_unknown_id must be invalid_data or no_content"));
        }
        if StatusCode::from_u16(next.token_error_status).is_err()
            || StatusCode::from_u16(next.access_denied_status).is_err()
        {
            return Err(ControlError::bad_request("token error statuses must be HTTP statuses"));
        }
        *self.settings.write() = next;
        Ok(self.settings())
    }

    fn issue_tokens(&self, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        Ok(self.issue_pair(&a, a.scopes.clone()))
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
        let m = Module::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown Zoho module {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        record_json(&a, m, rid).ok_or_else(|| ControlError::not_found(format!("no {object} {record_id}")))
    }

    fn edit_record(
        &self,
        id: &str,
        object: &str,
        record_id: &str,
        patch: Value,
    ) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let m = Module::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown Zoho module {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        let fields = match patch.get("fields").or_else(|| patch.get("properties")) {
            Some(Value::Object(o)) => o.clone(),
            _ => match patch {
                Value::Object(o) => o,
                _ => return Err(ControlError::bad_request("patch must be {\"fields\": {...}}")),
            },
        };
        let values = schema::normalize_record(m, &fields, true)
            .map_err(|e| ControlError::bad_request(format!("{}: {}", e.code, e.message)))?;
        let now = self.state.clock.now_ms();
        let rules = self.rules();
        {
            let mut d = a.data.write();
            let actor = d.users.get(1).map(|u| u.id).unwrap_or_else(|| d.admin().id);
            d.update(m, rid, &values, By { actor, now, source: "control" }, rules).map_err(|e| {
                if e.code == "INVALID_DATA" && e.api_name.is_none() {
                    ControlError::not_found(format!("no live {object} {record_id}"))
                } else {
                    ControlError::bad_request(format!("{}: {} ({:?})", e.code, e.message, e.api_name))
                }
            })?;
        }
        record_json(&a, m, rid).ok_or_else(|| ControlError::not_found("record vanished"))
    }

    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let m = Module::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown Zoho module {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        let now = self.state.clock.now_ms();
        let mut d = a.data.write();
        let actor = d.users.get(1).map(|u| u.id).unwrap_or_else(|| d.admin().id);
        let change = d
            .delete(m, rid, By { actor, now, source: "control" })
            .map_err(|_| ControlError::not_found(format!("no live {object} {record_id}")))?;
        Ok(serde_json::to_value(change).unwrap_or(Value::Null))
    }
}
