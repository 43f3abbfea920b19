//! The HubSpot imitation (`crm-providers.md` §1 and §7.2).
//!
//! Two hosts, two listeners: `api` stands for `api.hubapi.com` (objects, search, batch, pipelines,
//! owners, properties, OAuth token/revoke/introspection) and `app` for `app.hubspot.com` (the OAuth
//! authorize page). Submodules:
//!
//! * [`schema`]: object types, properties, association ids, pipelines, owners, scopes;
//! * [`store`]: per-account records, indexes, journal and seeding;
//! * `limits`: burst, daily and search limiters of one account;
//! * `errors`: HubSpot's error bodies;
//! * `oauth`, `api`, `search`, `view`: the HTTP handlers and response shapes.
//!
//! Every API request goes: authenticate (401 `INVALID_AUTHENTICATION` / `EXPIRED_AUTHENTICATION`) →
//! rate limits (429 `TEN_SECONDLY_ROLLING` / `DAILY`, or `SECONDLY` for search) → scope (403) →
//! handler, and every non-search response that got past authentication carries the
//! `X-HubSpot-RateLimit-*` headers.
//!
//! Invariant: an account's records are only touched under its `data` lock, and every write stamps the
//! logical clock and lands in the account's journal; the `Provider` control operations use the same
//! write paths as the API, so "as another user" changes are indistinguishable from API changes except
//! for their journal `source`.

// Handlers return early with a finished `Response` (about 128 bytes); boxing it would add noise on
// cold error paths only.
#![allow(clippy::result_large_err)]

mod api;
mod errors;
mod limits;
mod oauth;
pub mod schema;
mod search;
pub mod store;
mod view;

pub use limits::{LimitPatch, Policy, Principal, Quota};

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::clock::Millis;
use crate::config::{HubSpotTier, ProviderKind};
use crate::faults::FaultAction;
use crate::provider::{ControlError, Provider, ProviderInit, ProviderUrls};
use crate::seed::{self, SharedRng, rng_for};
use crate::server::mark_throttled;
use crate::state::SandboxState;
use crate::tokens::{AccessCheck, Grant, Mint};
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono_tz::Tz;
use limits::{AccountLimits, Refusal};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rand::seq::SliceRandom;
use schema::ObjectType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use store::AccountData;

/// HubSpot's base URLs, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSpotUrls {
    /// Stands for `https://api.hubapi.com`: prefix of every API path.
    pub api_base: String,
    /// Stands for `https://app.hubspot.com`.
    pub app_base: String,
    /// `GET` authorize page (`{app_base}/oauth/authorize`).
    pub authorize_url: String,
    /// Legacy v1 token endpoint (`{api_base}/oauth/v1/token`).
    pub token_url: String,
    /// Current v3 token endpoint (`{api_base}/oauth/v3/token`).
    pub token_url_v3: String,
}

impl HubSpotUrls {
    /// Reads them from the generic URL map.
    pub fn from_map(m: &ProviderUrls) -> Option<Self> {
        Some(Self {
            api_base: m.get("api_base")?.clone(),
            app_base: m.get("app_base")?.clone(),
            authorize_url: m.get("authorize_url")?.clone(),
            token_url: m.get("token_url")?.clone(),
            token_url_v3: m.get("token_url_v3")?.clone(),
        })
    }
}

/// Provider-wide settings (`GET`/`PATCH /_sandbox/hubspot/settings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `expires_in` of new access tokens, seconds (1800 documented).
    pub access_token_ttl_secs: i64,
    /// Refresh grant rotates the refresh token (UNCONFIRMED for HubSpot; off by default).
    pub rotate_refresh_tokens: bool,
    /// 429 responses carry `Retry-After` (UNCONFIRMED; off by default).
    pub retry_after: bool,
    /// Records changed less than this long ago are invisible to search.
    pub search_index_lag_ms: Millis,
    /// Key naming the error type in 429 bodies: `errorType` (documented, value `RATE_LIMIT`) or
    /// `category` (seen in third-party mocks, value `RATE_LIMITS`).
    pub rate_limit_error_key: String,
    /// The authorize page denies instead of approving (redirect with `error=access_denied`).
    pub authorize_deny: bool,
    /// Account the authorize page approves for when the request names none (first account if unset).
    pub authorize_hub_id: Option<u64>,
    /// Lifetime of authorization codes, seconds.
    pub auth_code_ttl_secs: i64,
}

/// The sandbox's OAuth app (one per sandbox, installable in every account).
#[derive(Clone, Debug, Serialize)]
pub struct OAuthApp {
    /// App id.
    pub app_id: u64,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

/// One HubSpot account ("portal").
#[derive(Debug)]
pub struct Account {
    /// Hub id (portal id).
    pub hub_id: u64,
    /// The installing user.
    pub user_id: u64,
    /// The installing user's email.
    pub user_email: String,
    /// The account's domain as token introspection reports it.
    pub hub_domain: String,
    /// Records.
    pub data: RwLock<AccountData>,
    /// Limiters.
    pub limits: Mutex<AccountLimits>,
    private_token: Mutex<String>,
    initial_tokens: Mutex<Value>,
    /// The last windowing search's total, against what it counted (see `search::run`).
    pub(crate) window_total: Mutex<Option<(String, usize)>>,
}

impl Account {
    /// The current private-app (static) token.
    pub fn private_app_token(&self) -> String {
        self.private_token.lock().clone()
    }
}

/// A request that passed authentication and the rate limits.
pub(crate) struct Authed {
    pub(crate) account: Arc<Account>,
    pub(crate) principal: Principal,
    headers: Vec<(&'static str, String)>,
}

impl Authed {
    fn has_scope(&self, scope: &str) -> bool {
        match &self.principal {
            Principal::PrivateApp => true,
            Principal::OAuth { scopes, .. } => scopes.iter().any(|s| s == scope),
        }
    }

    /// Adds the rate-limit headers and the operation name to a response.
    pub(crate) fn finish(&self, resp: Response, op: &str) -> Response {
        let mut resp = add_headers(resp, &self.headers);
        resp.extensions_mut().insert(crate::server::Operation(op.to_owned()));
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

/// The HubSpot imitation.
pub struct HubSpot {
    state: Arc<SandboxState>,
    api_base: String,
    app_base: String,
    settings: RwLock<Settings>,
    app: OAuthApp,
    accounts: RwLock<BTreeMap<u64, Arc<Account>>>,
    static_tokens: RwLock<HashMap<String, u64>>,
    token_rng: SharedRng,
    next_index: Mutex<u64>,
}

impl std::fmt::Debug for HubSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpot").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// Builds the provider and seeds the configured number of accounts.
pub fn build(init: ProviderInit) -> Arc<dyn Provider> {
    Arc::new(HubSpot::new(init))
}

/// Account creation options (`POST /_sandbox/hubspot/accounts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Records per object type (the sandbox default when absent).
    #[serde(default)]
    pub records: Option<usize>,
    /// Records per object type for some types (`{"contacts": 100000, "notes": 0}`), overriding
    /// `records` for the types named.
    #[serde(default)]
    pub objects: Option<BTreeMap<String, usize>>,
    /// Seed of the account's data (the sandbox seed when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A specific hub id (the next free one when absent).
    #[serde(default)]
    pub hub_id: Option<u64>,
    /// Plan.
    #[serde(default)]
    pub tier: Option<HubSpotTier>,
    /// IANA time zone of the daily reset.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Scopes of the pre-issued OAuth token pair (all when absent).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Limit overrides applied after creation.
    #[serde(default)]
    pub quota: Option<LimitPatch>,
}

/// First hub id handed out.
pub const FIRST_HUB_ID: u64 = 20_000_001;

impl HubSpot {
    fn new(init: ProviderInit) -> Self {
        let st = init.state.clone();
        let cfg = st.config.hubspot.clone();
        let mut app_rng = rng_for(st.config.seed, &["hubspot", "app"]);
        let app = OAuthApp {
            app_id: 3_000_000 + app_rng.random_range(0..999_999u64),
            client_id: seed::random_uuid(&mut app_rng),
            client_secret: seed::random_uuid(&mut app_rng),
        };
        let hs = HubSpot {
            api_base: init.host("api"),
            app_base: init.host("app"),
            settings: RwLock::new(Settings {
                access_token_ttl_secs: cfg.access_token_ttl_secs,
                rotate_refresh_tokens: cfg.rotate_refresh_tokens,
                retry_after: cfg.retry_after,
                search_index_lag_ms: cfg.search_index_lag_ms,
                rate_limit_error_key: "errorType".to_owned(),
                authorize_deny: false,
                authorize_hub_id: None,
                auth_code_ttl_secs: 600,
            }),
            app,
            accounts: RwLock::new(BTreeMap::new()),
            static_tokens: RwLock::new(HashMap::new()),
            token_rng: SharedRng::new(st.config.seed, &["hubspot", "tokens"]),
            next_index: Mutex::new(0),
            state: st.clone(),
        };
        for _ in 0..st.config.accounts {
            let spec = AccountSpec::default();
            if let Err(e) = hs.create_account_at(spec, st.config.clock_start_ms) {
                tracing::error!(error = %e, "seeding a HubSpot account failed");
            }
        }
        hs
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

    /// One account.
    pub fn account_by_id(&self, hub_id: u64) -> Option<Arc<Account>> {
        self.accounts.read().get(&hub_id).cloned()
    }

    /// Every account, by hub id.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.read().values().cloned().collect()
    }

    fn account_for(&self, id: &str) -> Result<Arc<Account>, ControlError> {
        id.parse::<u64>()
            .ok()
            .and_then(|h| self.account_by_id(h))
            .ok_or_else(|| ControlError::not_found(format!("no HubSpot account {id}")))
    }

    fn mint_access(&self) -> String {
        let mut s = String::from("C");
        s.push_str(&self.token_rng.string(b"JKLMNOP", 1));
        s.push_str(&self.token_rng.string(seed::BASE64URL, 78));
        s
    }

    fn mint_refresh(&self) -> String {
        format!(
            "na1-{}-{}-{}-{}-{}",
            self.token_rng.string(seed::HEX, 4),
            self.token_rng.string(seed::HEX, 4),
            self.token_rng.string(seed::HEX, 4),
            self.token_rng.string(seed::HEX, 4),
            self.token_rng.string(seed::HEX, 12)
        )
    }

    fn mint_code(&self) -> String {
        self.token_rng.uuid()
    }

    fn access_ttl_ms(&self) -> Millis {
        self.settings.read().access_token_ttl_secs.saturating_mul(1000)
    }

    /// The JSON HubSpot returns from its token endpoint.
    fn token_json(
        &self,
        account: &Account,
        access: &str,
        refresh: Option<&str>,
        scopes: &[String],
        ttl_ms: Millis,
    ) -> Value {
        json!({
            "token_type": "bearer",
            "refresh_token": refresh,
            "access_token": access,
            "expires_in": ttl_ms / 1000,
            "hub_id": account.hub_id,
            "scopes": scopes,
            "user_id": account.user_id,
        })
    }

    /// Issues an OAuth token pair for an account, as a completed install would.
    pub fn issue_pair(&self, account: &Account, scopes: Vec<String>) -> Value {
        let ttl = self.access_ttl_ms();
        let grant = Grant {
            provider: ProviderKind::HubSpot,
            account: account.hub_id.to_string(),
            client_id: self.app.client_id.clone(),
            scopes: scopes.clone(),
            user_id: Some(account.user_id.to_string()),
        };
        let access = self.mint_access();
        let refresh = self.mint_refresh();
        self.state.tokens.issue(
            grant,
            Mint {
                access_token: access.clone(),
                access_ttl_ms: Some(ttl),
                refresh_token: Some(refresh.clone()),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: None,
            },
            self.state.clock.now_ms(),
        );
        self.token_json(account, &access, Some(&refresh), &scopes, ttl)
    }

    /// Creates an account (seeded with records), returning it.
    pub fn create_account(&self, spec: AccountSpec) -> Result<Arc<Account>, ControlError> {
        let now = self.state.clock.now_ms();
        self.create_account_at(spec, now - now.rem_euclid(1000))
    }

    fn create_account_at(&self, spec: AccountSpec, now: Millis) -> Result<Arc<Account>, ControlError> {
        let cfg = &self.state.config;
        let tier = spec.tier.unwrap_or(cfg.hubspot.tier);
        let tz_name = spec.time_zone.clone().unwrap_or_else(|| cfg.hubspot.time_zone.clone());
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
        let mut limits = AccountLimits::new(tier, tz);
        if let Some(q) = &spec.quota {
            limits.apply(q, now).map_err(ControlError::bad_request)?;
        }
        let records = spec.records.unwrap_or(cfg.records);
        let mut counts = [records; 6];
        for (name, n) in spec.objects.iter().flatten() {
            let obj = ObjectType::parse(name)
                .ok_or_else(|| ControlError::bad_request(format!("unknown HubSpot object type {name:?}")))?;
            counts[obj.index()] = *n;
        }
        let hub_id = match spec.hub_id {
            Some(h) => h,
            None => {
                let mut n = self.next_index.lock();
                let accounts = self.accounts.read();
                loop {
                    *n += 1;
                    let candidate = FIRST_HUB_ID + *n - 1;
                    if !accounts.contains_key(&candidate) {
                        break candidate;
                    }
                }
            }
        };
        if self.accounts.read().contains_key(&hub_id) {
            return Err(ControlError::conflict(format!("hub id {hub_id} already exists")));
        }
        let data_seed = spec.seed.unwrap_or(cfg.seed);
        let data = store::seed_account(data_seed, hub_id, counts, now);
        let mut rng = rng_for(cfg.seed, &["hubspot", "account", &hub_id.to_string()]);
        let pat = format!("pat-na1-{}", seed::random_uuid(&mut rng));
        let user_id = 9_000_000 + rng.random_range(0..999_999u64);
        let account = Arc::new(Account {
            hub_id,
            user_id,
            user_email: format!("admin@hub-{hub_id}.sandbox.test"),
            hub_domain: format!("hub-{hub_id}.sandbox.test"),
            data: RwLock::new(data),
            limits: Mutex::new(limits),
            private_token: Mutex::new(pat.clone()),
            initial_tokens: Mutex::new(Value::Null),
            window_total: Mutex::new(None),
        });
        let tokens = self.issue_pair(&account, scopes);
        *account.initial_tokens.lock() = tokens;
        self.static_tokens.write().insert(pat, hub_id);
        self.accounts.write().insert(hub_id, account.clone());
        Ok(account)
    }

    fn account_json(&self, a: &Account, with_digest: bool) -> Value {
        let now = self.state.clock.now_ms();
        let (quota, tier, tz, daily_used, windows) = {
            let mut l = a.limits.lock();
            (l.quota.clone(), l.tier, l.tz.name().to_owned(), l.daily_used(now), l.window_usage(now))
        };
        let (counts, archived, last_seq) = {
            let d = a.data.read();
            let archived: BTreeMap<&str, usize> =
                ObjectType::ALL.iter().map(|o| (o.name(), d.table(*o).archived.len())).collect();
            (d.counts(), archived, d.journal.last_seq())
        };
        let mut v = json!({
            "id": a.hub_id.to_string(),
            "hub_id": a.hub_id,
            "user_id": a.user_id,
            "user": a.user_email,
            "hub_domain": a.hub_domain,
            "tier": tier,
            "time_zone": tz,
            "quota": quota,
            "usage": {"daily_used": daily_used, "burst_windows": windows},
            "counts": counts,
            "archived_counts": archived,
            "journal_last_seq": last_seq,
            "credentials": {
                "private_app_token": a.private_app_token(),
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret,
                "app_id": self.app.app_id,
                "oauth": a.initial_tokens.lock().clone(),
            },
        });
        if with_digest {
            v["digest"] = Value::String(self.digest(a));
        }
        v
    }

    /// A SHA-256 over every record (live and archived, all properties and timestamps) and association
    /// of an account: equal digests mean byte-identical data.
    pub fn digest(&self, a: &Account) -> String {
        use sha2::{Digest, Sha256};
        let d = a.data.read();
        let mut h = Sha256::new();
        for obj in ObjectType::ALL {
            let t = d.table(obj);
            for r in t.active.values().chain(t.archived.values()) {
                h.update(obj.name());
                h.update(r.id.to_le_bytes());
                h.update(r.created_at.to_le_bytes());
                h.update(r.updated_at.to_le_bytes());
                h.update(r.archived_at.unwrap_or(-1).to_le_bytes());
                for (k, v) in &r.props {
                    h.update(k.as_bytes());
                    h.update([0]);
                    h.update(v.as_bytes());
                    h.update([0]);
                }
            }
        }
        for ((o, id), links) in &d.assoc {
            for (to, to_id, t) in links {
                h.update(o.name());
                h.update(id.to_le_bytes());
                h.update(to.name());
                h.update(to_id.to_le_bytes());
                h.update(t.to_le_bytes());
            }
        }
        let out = h.finalize();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bearer(headers: &HeaderMap) -> Option<&str> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    }

    /// Resolves the credentials of a request.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<(Arc<Account>, Principal), Response> {
        let st = &self.state;
        let Some(token) = Self::bearer(headers) else {
            return Err(errors::invalid_auth(st));
        };
        if token.starts_with("pat-") {
            let hub = self.static_tokens.read().get(token).copied();
            return match hub.and_then(|h| self.account_by_id(h)) {
                Some(a) => Ok((a, Principal::PrivateApp)),
                None => Err(errors::invalid_auth(st)),
            };
        }
        let now = st.clock.now_ms();
        let t = match st.tokens.check_access(token, now) {
            AccessCheck::Valid(t) if t.grant.provider == ProviderKind::HubSpot => t,
            AccessCheck::Expired { token: t, expired_ms_ago }
                if t.grant.provider == ProviderKind::HubSpot =>
            {
                return Err(errors::expired_auth(st, expired_ms_ago / 1000));
            }
            _ => return Err(errors::invalid_auth(st)),
        };
        let Some(account) = t.grant.account.parse().ok().and_then(|h| self.account_by_id(h)) else {
            return Err(errors::invalid_auth(st));
        };
        Ok((account, Principal::OAuth { client_id: t.grant.client_id, scopes: t.grant.scopes }))
    }

    /// Authenticates, applies the burst/daily limits and checks `scope`.
    pub(crate) fn admit(&self, headers: &HeaderMap, scope: Option<&str>) -> Result<Authed, Response> {
        let (account, principal) = self.authenticate(headers)?;
        let now = self.state.clock.now_ms();
        let admitted = account.limits.lock().admit(&principal, now);
        let authed = match admitted {
            Ok(h) => Authed { account, principal, headers: h },
            Err(refusal) => return Err(self.refusal_response(&refusal)),
        };
        if let Some(s) = scope
            && !authed.has_scope(s)
        {
            return Err(authed.finish(errors::missing_scope(&self.state, s), "scope.denied"));
        }
        Ok(authed)
    }

    /// Authenticates, applies the search limiter and checks `scope` (no rate-limit headers).
    pub(crate) fn admit_search(&self, headers: &HeaderMap, scope: &str) -> Result<Authed, Response> {
        let (account, principal) = self.authenticate(headers)?;
        let now = self.state.clock.now_ms();
        let admitted = account.limits.lock().admit_search(now);
        if let Err(refusal) = admitted {
            return Err(self.refusal_response(&refusal));
        }
        let authed = Authed { account, principal, headers: Vec::new() };
        if !authed.has_scope(scope) {
            return Err(authed.finish(errors::missing_scope(&self.state, scope), "scope.denied"));
        }
        Ok(authed)
    }

    fn refusal_response(&self, r: &Refusal) -> Response {
        let retry = self.settings.read().retry_after.then(|| (r.retry_after_ms + 999) / 1000);
        let resp = self.throttle_response(r.policy, retry.map(|s| s.max(1) as u64));
        add_headers(resp, &r.headers)
    }

    /// A 429 body exactly as HubSpot documents it.
    pub fn throttle_response(&self, policy: Policy, retry_after_secs: Option<u64>) -> Response {
        let st = &self.state;
        let key = self.settings.read().rate_limit_error_key.clone();
        let mut body = serde_json::Map::new();
        body.insert("status".into(), json!("error"));
        body.insert("message".into(), json!(policy.message()));
        if key == "category" {
            body.insert("category".into(), json!("RATE_LIMITS"));
        } else {
            body.insert("errorType".into(), json!("RATE_LIMIT"));
        }
        body.insert("correlationId".into(), json!(st.ids.uuid()));
        body.insert("policyName".into(), json!(policy.name()));
        body.insert("requestId".into(), json!(st.ids.uuid()));
        let mut resp = errors::json_value(st, StatusCode::TOO_MANY_REQUESTS, &Value::Object(body));
        if let Some(s) = retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp.extensions_mut().insert(crate::server::Operation(format!("throttled.{}", policy.name())));
        mark_throttled(resp)
    }

    fn apply_mutations(
        &self,
        a: &Account,
        req: &MutationRequest,
        source: &str,
    ) -> Result<ChangeLog, ControlError> {
        let objects: Vec<ObjectType> = match &req.objects {
            None => ObjectType::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    ObjectType::parse(n).ok_or_else(|| {
                        ControlError::bad_request(format!("unknown HubSpot object type {n:?}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if objects.is_empty() {
            return Err(ControlError::bad_request("objects must not be empty"));
        }
        let mut data = a.data.write();
        let batch_seed = req.seed.unwrap_or(data.journal.last_seq());
        let mut rng = rng_for(
            self.state.config.seed,
            &["hubspot", &a.hub_id.to_string(), "mutations", &batch_seed.to_string()],
        );
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
            let obj = objects[rng.random_range(0..objects.len())];
            match op {
                0 => {
                    let n = data.journal.last_seq() + 1;
                    let mut props = store::fake_props(obj, &mut rng, 1_000_000 + n, a.hub_id, now);
                    if obj == ObjectType::Contacts
                        && let Some(e) = props.get_mut("email")
                    {
                        *e = format!("m{batch_seed}.{}", e);
                    }
                    let values = to_values(obj, &props);
                    let text = store::searchable_text(obj, &props);
                    match data.create(obj, values, &[], now, source) {
                        Ok((id, change)) => {
                            self.state.counters.record_created(
                                ProviderKind::HubSpot,
                                &a.hub_id.to_string(),
                                crate::observe::created_object(
                                    obj.name(),
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
                    let Some(id) = data.pick_live(obj, &mut rng) else { continue };
                    let current =
                        data.table(obj).active.get(&id).map(|r| r.props.clone()).unwrap_or_default();
                    let props = mutation_update(obj, &current, &mut rng, now);
                    let values = to_values(obj, &props);
                    if let Ok(change) = data.update(obj, id, values, now, source) {
                        changes.push(change);
                    }
                }
                _ => {
                    let Some(id) = data.pick_live(obj, &mut rng) else { continue };
                    if let Ok(change) = data.archive(obj, id, now, source) {
                        changes.push(change);
                    }
                }
            }
        }
        Ok(ChangeLog::from_changes(changes))
    }
}

fn to_values(
    obj: ObjectType,
    props: &BTreeMap<&'static str, String>,
) -> Vec<(&'static schema::PropDef, String)> {
    props.iter().filter_map(|(k, v)| schema::property(obj, k).map(|d| (d, v.clone()))).collect()
}

fn mutation_update(
    obj: ObjectType,
    current: &BTreeMap<&'static str, String>,
    rng: &mut rand_chacha::ChaCha8Rng,
    now: Millis,
) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    match obj {
        ObjectType::Contacts => {
            m.insert("phone", format!("+1-555-{:04}", rng.random_range(0..10_000)));
            m.insert("lifecyclestage", seed::pick(rng, schema::LIFECYCLE_STAGES).to_owned());
        }
        ObjectType::Companies => {
            m.insert("numberofemployees", rng.random_range(2..5_000u32).to_string());
        }
        ObjectType::Deals => {
            let pipeline = current.get("pipeline").map(String::as_str).unwrap_or("default");
            if let Some(p) = schema::pipeline(pipeline) {
                m.insert("dealstage", p.stages[rng.random_range(0..p.stages.len())].0.to_owned());
            }
            m.insert("amount", (rng.random_range(1..500u64) * 100).to_string());
        }
        ObjectType::Tasks => {
            m.insert("hs_task_status", seed::pick(rng, schema::TASK_STATUSES).to_owned());
            m.insert("hs_task_priority", seed::pick(rng, schema::TASK_PRIORITIES).to_owned());
        }
        ObjectType::Calls => {
            m.insert("hs_call_body", format!("Follow-up on {}.", seed::pick(rng, seed::NOTE_WORDS)));
        }
        ObjectType::Notes => {
            m.insert(
                "hs_note_body",
                format!(
                    "<p>Updated: {} at {}</p>",
                    seed::pick(rng, seed::NOTE_WORDS),
                    crate::clock::format_ms(now)
                ),
            );
        }
    }
    m
}

/// A record as the control plane shows it (every stored property, timestamps, associations).
fn record_json(d: &AccountData, obj: ObjectType, id: u64) -> Option<Value> {
    let r = d.any_record(obj, id)?;
    let mut props = serde_json::Map::new();
    for name in [obj.created_prop(), "hs_object_id", obj.modified_prop()] {
        if let Some(v) = r.get(obj, name) {
            props.insert(name.to_owned(), Value::String(v.into_owned()));
        }
    }
    for (k, v) in &r.props {
        props.insert((*k).to_owned(), Value::String(v.clone()));
    }
    let assoc: Vec<Value> = d
        .assoc
        .get(&(obj, id))
        .map(|s| {
            s.iter()
                .map(|(o, i, t)| json!({"object": o.name(), "id": i.to_string(), "associationTypeId": t}))
                .collect()
        })
        .unwrap_or_default();
    Some(json!({
        "id": r.id.to_string(),
        "properties": props,
        "createdAt": r.created_iso,
        "updatedAt": r.updated_iso,
        "archived": r.archived_at.is_some(),
        "archivedAt": r.archived_at.map(crate::clock::format_ms),
        "associations": assoc,
    }))
}

impl Provider for HubSpot {
    fn kind(&self) -> ProviderKind {
        ProviderKind::HubSpot
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn urls(&self) -> ProviderUrls {
        let mut m = BTreeMap::new();
        m.insert("api_base".to_owned(), self.api_base.clone());
        m.insert("app_base".to_owned(), self.app_base.clone());
        m.insert("authorize_url".to_owned(), format!("{}/oauth/authorize", self.app_base));
        m.insert("token_url".to_owned(), format!("{}/oauth/v1/token", self.api_base));
        m.insert("token_url_v3".to_owned(), format!("{}/oauth/v3/token", self.api_base));
        m
    }

    fn router(self: Arc<Self>, host: &str) -> Router {
        if host == "app" {
            return Router::new()
                .route("/oauth/authorize", get(oauth::authorize))
                .fallback(api::fallback)
                .with_state(self);
        }
        let mut r = Router::new()
            .route("/oauth/v1/token", post(oauth::token_v1))
            .route("/oauth/v3/token", post(oauth::token_v3))
            .route("/oauth/v1/refresh-tokens/{token}", get(oauth::refresh_info).delete(oauth::revoke_refresh))
            .route("/oauth/v1/access-tokens/{token}", get(oauth::access_info))
            .route("/crm/v3/pipelines/{object}", get(api::pipelines))
            .route("/crm/v3/pipelines/{object}/{pipeline_id}", get(api::pipeline))
            .route("/crm/v3/pipelines/{object}/{pipeline_id}/stages", get(api::pipeline_stages))
            .route("/crm/v3/owners", get(api::owners))
            .route("/crm/v3/owners/", get(api::owners))
            .route("/crm/v3/properties/{object}", get(api::properties));
        for prefix in ["/crm/v3/objects", "/crm/objects/2026-03"] {
            r = r
                .route(&format!("{prefix}/{{object}}"), get(api::list).post(api::create))
                .route(&format!("{prefix}/{{object}}/search"), post(search::search))
                .route(&format!("{prefix}/{{object}}/batch/{{op}}"), post(api::batch))
                .route(
                    &format!("{prefix}/{{object}}/{{id}}"),
                    get(api::get_one).patch(api::update).delete(api::archive),
                );
        }
        r.fallback(api::fallback).with_state(self)
    }

    fn identify(&self, headers: &HeaderMap, _uri: &Uri) -> Option<String> {
        let token = Self::bearer(headers)?;
        if token.starts_with("pat-") {
            return self.static_tokens.read().get(token).map(u64::to_string);
        }
        match self.state.tokens.account_of(token) {
            Some((ProviderKind::HubSpot, a)) => Some(a),
            _ => None,
        }
    }

    fn fault_response(&self, action: &FaultAction, _account: Option<&str>) -> Response {
        let st = &self.state;
        match action {
            FaultAction::Throttle { policy, retry_after_secs } => {
                let p = policy.as_deref().and_then(Policy::parse).unwrap_or(Policy::TenSecondlyRolling);
                self.throttle_response(p, *retry_after_secs)
            }
            FaultAction::Status { status, kind, retry_after_secs, .. } => {
                let kind = kind.as_deref().unwrap_or("");
                match *status {
                    401 if kind == "expired" => errors::expired_auth(st, 1),
                    401 => errors::invalid_auth(st),
                    403 => errors::missing_scope(st, "crm.objects.contacts.read"),
                    404 => errors::not_found(st),
                    423 => errors::error(
                        st,
                        StatusCode::LOCKED,
                        "LOCKED",
                        "This record is locked by another request. Locks last for 2 seconds; retry after a delay of at least 2 seconds.",
                    ),
                    429 => {
                        let p = Policy::parse(kind).unwrap_or(Policy::TenSecondlyRolling);
                        self.throttle_response(p, *retry_after_secs)
                    }
                    477 => {
                        let mut r = errors::error(
                            st,
                            StatusCode::from_u16(477).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                            "MIGRATION_IN_PROGRESS",
                            "This account is being migrated between data centers. Retry after the time in the Retry-After header.",
                        );
                        let secs = retry_after_secs.unwrap_or(3600);
                        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                            r.headers_mut().insert(header::RETRY_AFTER, v);
                        }
                        r
                    }
                    s @ (502 | 504) if kind != "json" => {
                        let code = StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY);
                        let reason = code.canonical_reason().unwrap_or("Gateway Error");
                        (
                            code,
                            [(header::CONTENT_TYPE, "text/html")],
                            format!("<html><head><title>{s} {reason}</title></head><body><center><h1>{s} {reason}</h1></center></body></html>"),
                        )
                            .into_response()
                    }
                    s => {
                        let code = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        let category = if s >= 500 { "INTERNAL_ERROR" } else { "VALIDATION_ERROR" };
                        errors::error(st, code, category, code.canonical_reason().unwrap_or("error"))
                    }
                }
            }
            _ => errors::error(st, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error"),
        }
    }

    fn list_accounts(&self) -> Value {
        let accounts: Vec<Value> = self.accounts().iter().map(|a| self.account_json(a, false)).collect();
        json!({"accounts": accounts})
    }

    fn create_account(&self, spec: Value) -> Result<Value, ControlError> {
        let spec: AccountSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::bad_request(format!("invalid account spec: {e}")))?;
        let a = HubSpot::create_account(self, spec)?;
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
                return Err(ControlError::bad_request(format!("unknown HubSpot setting {k:?}")));
            }
            current[&k] = v;
        }
        let next: Settings = serde_json::from_value(current)
            .map_err(|e| ControlError::bad_request(format!("invalid settings: {e}")))?;
        if next.rate_limit_error_key != "errorType" && next.rate_limit_error_key != "category" {
            return Err(ControlError::bad_request("rate_limit_error_key must be errorType or category"));
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
        let n = state.tokens.revoke_account(ProviderKind::HubSpot, id, state.clock.now_ms());
        let mut rng = rng_for(state.config.seed, &["hubspot", "pat-rotation", id, &n.to_string()]);
        let new_pat = format!("pat-na1-{}", seed::random_uuid(&mut rng));
        let old = std::mem::replace(&mut *a.private_token.lock(), new_pat.clone());
        let mut st = self.static_tokens.write();
        st.remove(&old);
        st.insert(new_pat.clone(), a.hub_id);
        Ok(json!({"revoked": n + 1, "private_app_token": new_pat}))
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
        let obj = ObjectType::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown HubSpot object type {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        let d = a.data.read();
        record_json(&d, obj, rid).ok_or_else(|| ControlError::not_found(format!("no {object} {record_id}")))
    }

    fn edit_record(
        &self,
        id: &str,
        object: &str,
        record_id: &str,
        patch: Value,
    ) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let obj = ObjectType::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown HubSpot object type {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        let props = match patch.get("properties") {
            Some(Value::Object(m)) => m.clone(),
            _ => match patch {
                Value::Object(m) => m,
                _ => return Err(ControlError::bad_request("patch must be {\"properties\": {...}}")),
            },
        };
        let values = schema::normalize(obj, &props)
            .map_err(|e| ControlError::bad_request(errors::prop_error_message(&e)))?;
        let now = self.state.clock.now_ms();
        let mut d = a.data.write();
        d.update(obj, rid, values, now, "control").map_err(|e| match e {
            store::WriteError::NotFound(_) => {
                ControlError::not_found(format!("no live {object} {record_id}"))
            }
            other => ControlError::bad_request(format!("{other:?}")),
        })?;
        record_json(&d, obj, rid).ok_or_else(|| ControlError::not_found("record vanished"))
    }

    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let obj = ObjectType::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown HubSpot object type {object:?}")))?;
        let rid: u64 =
            record_id.parse().map_err(|_| ControlError::bad_request("record id must be numeric"))?;
        let now = self.state.clock.now_ms();
        let mut d = a.data.write();
        let change = d
            .archive(obj, rid, now, "control")
            .map_err(|_| ControlError::not_found(format!("no live {object} {record_id}")))?;
        Ok(serde_json::to_value(change).unwrap_or(Value::Null))
    }
}
