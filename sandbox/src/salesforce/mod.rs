//! The Salesforce imitation (`crm-providers.md` §2 and §7.3).
//!
//! Three hosts, three listeners: `login` stands for `login.salesforce.com` (OAuth authorize, token,
//! revoke, identity URLs) and `instance` / `instance2` for two org instances (`https://{pod}.
//! my.salesforce.com`): token responses name the org's current instance in `instance_url`, and every
//! REST call goes there. An org lives on one instance at a time; the `migrate_instance_on_next_refresh`
//! setting moves it to the other one on its next refresh, after which the old instance answers 401.
//! Submodules:
//!
//! * [`schema`]: sObject types, fields, picklists, key prefixes, 18-character ids;
//! * [`store`]: per-org records, indexes, delete log, journal, transactions and seeding;
//! * `soql`: the SOQL subset (parse, type-check, execute);
//! * `limits`: the rolling 24-hour allocation and the long-running-request cap of one org;
//! * `errors`: Salesforce's error arrays and OAuth error objects;
//! * `oauth`, `query`, `api`: the HTTP handlers.
//!
//! Every REST request goes: API version (404) → authenticate the session (401 `INVALID_SESSION_ID`;
//! a valid call extends the session, which is an inactivity timer) → org limits (403
//! `REQUEST_LIMIT_EXCEEDED`) → optional hold → handler; everything that got past authentication
//! carries `Sforce-Limit-Info: api-usage=used/limit`. Every response carries a `Date` header from the
//! logical clock, as Salesforce's own `Date` is its server time.
//!
//! Invariant: an org's records are only touched under its `data` lock, through [`store::Tx`], and
//! every write stamps the logical clock and lands in the org's journal; the `Provider` control
//! operations use the same write paths as the API, so "as another user" changes are
//! indistinguishable from API changes except for their journal `source` and `LastModifiedById`.

// Handlers return early with a finished `Response`; boxing it would add noise on cold paths only.
#![allow(clippy::result_large_err)]

mod api;
mod errors;
mod limits;
mod oauth;
mod query;
pub mod schema;
mod soql;
pub mod store;

pub use errors::SfError;
pub use limits::{HoldSpec, LimitPatch, Quota, Refusal};

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::clock::Millis;
use crate::config::{ProviderKind, SalesforceEdition, SalesforceRefreshPolicy};
use crate::faults::FaultAction;
use crate::observe::created_object;
use crate::provider::{ControlError, Provider, ProviderInit, ProviderUrls};
use crate::seed::{self, SharedRng, rng_for};
use crate::server::{mark_throttled, with_operation};
use crate::state::SandboxState;
use crate::tokens::{AccessCheck, AccessToken, Grant, Mint};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use limits::OrgLimits;
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use rand::seq::SliceRandom;
use schema::{FieldDef, SObject, Val};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use store::{OrgData, Tx, WriteError, WriteOptions};

/// The API version the sandbox's own URLs (identity, resource lists) name by default.
pub const DEFAULT_API_VERSION: u32 = 62;
/// Scopes the connected app knows.
pub const SCOPES: &[&str] = &[
    "api",
    "refresh_token",
    "offline_access",
    "full",
    "id",
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "web",
    "chatter_api",
    "visualforce",
    "custom_permissions",
];
/// Scopes of pre-issued pairs and of authorize requests that name none.
pub const DEFAULT_SCOPE: &str = "api refresh_token";

/// Salesforce's base URLs, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesforceUrls {
    /// Stands for `https://login.salesforce.com`.
    pub login_base: String,
    /// The first org instance (where seeded orgs live).
    pub instance_base: String,
    /// The second org instance (where orgs move on an instance migration).
    pub instance_base_alt: String,
    /// `GET {login_base}/services/oauth2/authorize`.
    pub authorize_url: String,
    /// `POST {login_base}/services/oauth2/token`.
    pub token_url: String,
    /// `POST {login_base}/services/oauth2/revoke`.
    pub revoke_url: String,
}

impl SalesforceUrls {
    /// Reads them from the generic URL map.
    pub fn from_map(m: &ProviderUrls) -> Option<Self> {
        Some(Self {
            login_base: m.get("login_base")?.clone(),
            instance_base: m.get("instance_base")?.clone(),
            instance_base_alt: m.get("instance_base_alt")?.clone(),
            authorize_url: m.get("authorize_url")?.clone(),
            token_url: m.get("token_url")?.clone(),
            revoke_url: m.get("revoke_url")?.clone(),
        })
    }
}

/// Provider-wide settings, i.e. the connected app's policies and the org-wide toggles for
/// UNCONFIRMED behaviour (`GET`/`PATCH /_sandbox/salesforce/settings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Session timeout (inactivity), seconds. Default 7200.
    pub session_timeout_secs: i64,
    /// The connected app's refresh-token policy, evaluated when a refresh token is used.
    pub refresh_token_policy: SalesforceRefreshPolicy,
    /// TTL of the `expire_after` / `expire_if_idle` policies, seconds.
    pub refresh_token_ttl_secs: i64,
    /// Refresh-token rotation.
    pub rotate_refresh_tokens: bool,
    /// The next successful refresh moves its org to the other instance (one-shot).
    pub migrate_instance_on_next_refresh: bool,
    /// The authorize page denies (redirect with `error=access_denied`).
    pub authorize_deny: bool,
    /// Org the authorize page approves for when the request names none (first org if unset).
    pub authorize_org_id: Option<String>,
    /// Lifetime of authorization codes, seconds.
    pub auth_code_ttl_secs: i64,
    /// Message of the 403 when the 24-hour allocation is used up (exact text UNCONFIRMED).
    pub total_requests_message: String,
    /// Message of the 403 when too many long-running requests are in flight.
    pub concurrent_requests_message: String,
    /// Query batches are sometimes shorter than the batch size (seeded, between half and all of it).
    pub variable_batch_sizes: bool,
    /// Query cursors expire after this long without use, seconds (documented: 15 minutes).
    pub query_cursor_ttl_secs: i64,
    /// Open query cursors per user; opening one more releases the oldest (documented: 10).
    pub max_query_cursors: usize,
    /// `latestDateCovered` lags the current minute by this long, seconds.
    pub latest_date_covered_lag_secs: i64,
    /// `Task.TaskSubtype` may be set on create (UNCONFIRMED; on by default).
    pub task_subtype_createable: bool,
    /// The org has `CrmFleet_Action_Id__c` on the legacy `Note` object (custom fields on Note are
    /// UNCONFIRMED; on by default).
    pub note_external_id: bool,
    /// External ID fields are also unique (a second record with a taken value → `DUPLICATE_VALUE`).
    pub unique_external_ids: bool,
    /// A duplicate rule blocks contacts with the email of a live contact (`DUPLICATES_DETECTED`).
    pub contact_duplicate_rule: bool,
}

/// The sandbox's connected app (one per sandbox, usable with every org).
#[derive(Clone, Debug, Serialize)]
pub struct ConnectedApp {
    /// Consumer key.
    pub client_id: String,
    /// Consumer secret.
    pub client_secret: String,
}

/// One org.
pub struct Account {
    /// 18-character org id (`00D…`).
    pub org_id: String,
    /// Position among the sandbox's orgs (ids derive from it).
    pub index: u64,
    /// The integration user tokens speak for.
    pub user_id: String,
    /// That user's username.
    pub username: String,
    /// When the org was created.
    pub created_at: Millis,
    /// Records.
    pub data: RwLock<OrgData>,
    /// Limits.
    pub limits: Mutex<OrgLimits>,
    cursors: Mutex<query::Cursors>,
    instance: AtomicUsize,
    initial_tokens: Mutex<Value>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("org_id", &self.org_id).finish_non_exhaustive()
    }
}

impl Account {
    /// Which instance the org lives on (0 = `instance`, 1 = `instance2`).
    pub fn instance(&self) -> usize {
        self.instance.load(Ordering::SeqCst)
    }
}

/// A request that passed authentication and the limits; releases its in-flight slot when dropped.
pub(crate) struct Authed {
    pub(crate) account: Arc<Account>,
    pub(crate) user_id: String,
    limit_info: String,
    ticket: u64,
}

impl Authed {
    /// Adds `Sforce-Limit-Info` and the operation name to a response.
    pub(crate) fn finish(&self, mut resp: Response, op: &str) -> Response {
        if let Ok(v) = HeaderValue::from_str(&self.limit_info) {
            resp.headers_mut().insert("sforce-limit-info", v);
        }
        with_operation(resp, op)
    }
}

impl Drop for Authed {
    fn drop(&mut self) {
        self.account.limits.lock().exit(self.ticket);
    }
}

/// Who writes, through which API version (for error bodies that carry URLs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Actor<'a> {
    /// The user the session speaks for (`CreatedById`, `LastModifiedById`).
    pub(crate) user: &'a str,
    /// The request's API version.
    pub(crate) version: u32,
}

/// How a body is being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Insert.
    Create,
    /// Update.
    Update,
}

/// The Salesforce imitation.
pub struct Salesforce {
    state: Arc<SandboxState>,
    login_base: String,
    instance_bases: [String; 2],
    settings: RwLock<Settings>,
    app: ConnectedApp,
    accounts: RwLock<BTreeMap<String, Arc<Account>>>,
    token_rng: SharedRng,
    next_index: Mutex<u64>,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce").field("login_base", &self.login_base).finish_non_exhaustive()
    }
}

/// Builds the provider and seeds the configured number of orgs.
pub fn build(init: ProviderInit) -> Arc<dyn Provider> {
    Arc::new(Salesforce::new(init))
}

/// Org creation options (`POST /_sandbox/salesforce/accounts`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// Records per writable type (the sandbox default when absent).
    #[serde(default)]
    pub records: Option<usize>,
    /// Records per type for some types (`{"Contact": 100000, "Note": 0}`), overriding `records`.
    #[serde(default)]
    pub objects: Option<BTreeMap<String, usize>>,
    /// Seed of the org's data (the sandbox seed when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Edition.
    #[serde(default)]
    pub edition: Option<SalesforceEdition>,
    /// User licences.
    #[serde(default)]
    pub user_licenses: Option<u64>,
    /// Scopes of the pre-issued token pair (`api refresh_token` when absent).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Limit overrides applied after creation.
    #[serde(default)]
    pub quota: Option<LimitPatch>,
}

/// Base of org id counters.
const ORG_ID_BASE: u64 = 4_000_000;

fn date_header(ms: Millis) -> Option<HeaderValue> {
    HeaderValue::from_str(&errors::http_date(ms)).ok()
}

async fn logical_date(State(sf): State<Arc<Salesforce>>, mut resp: Response) -> Response {
    if let Some(v) = date_header(sf.state.clock.now_ms()) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// State of an instance host's router: the provider and which instance it is.
#[derive(Clone)]
pub(crate) struct HostState {
    pub(crate) sf: Arc<Salesforce>,
    pub(crate) host: usize,
}

impl Salesforce {
    fn new(init: ProviderInit) -> Self {
        let st = init.state.clone();
        let cfg = st.config.salesforce.clone();
        let mut app_rng = rng_for(st.config.seed, &["salesforce", "app"]);
        let app = ConnectedApp {
            client_id: format!("3MVG9{}", seed::random_string(&mut app_rng, seed::ALNUM, 80)),
            client_secret: seed::random_string(&mut app_rng, b"0123456789ABCDEF", 64),
        };
        let sf = Salesforce {
            login_base: init.host("login"),
            instance_bases: [init.host("instance"), init.host("instance2")],
            settings: RwLock::new(Settings {
                session_timeout_secs: cfg.session_timeout_secs,
                refresh_token_policy: cfg.refresh_token_policy,
                refresh_token_ttl_secs: cfg.refresh_token_ttl_secs,
                rotate_refresh_tokens: cfg.rotate_refresh_tokens,
                migrate_instance_on_next_refresh: false,
                authorize_deny: false,
                authorize_org_id: None,
                auth_code_ttl_secs: 900,
                total_requests_message: "TotalRequests Limit exceeded.".to_owned(),
                concurrent_requests_message: "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
                    .to_owned(),
                variable_batch_sizes: false,
                query_cursor_ttl_secs: 900,
                max_query_cursors: 10,
                latest_date_covered_lag_secs: 0,
                task_subtype_createable: true,
                note_external_id: true,
                unique_external_ids: true,
                contact_duplicate_rule: false,
            }),
            app,
            accounts: RwLock::new(BTreeMap::new()),
            token_rng: SharedRng::new(st.config.seed, &["salesforce", "tokens"]),
            next_index: Mutex::new(0),
            state: st.clone(),
        };
        for _ in 0..st.config.accounts {
            if let Err(e) = sf.create_account_at(AccountSpec::default(), st.config.clock_start_ms) {
                tracing::error!(error = %e, "seeding a Salesforce org failed");
            }
        }
        sf
    }

    /// The shared services.
    pub fn state(&self) -> &Arc<SandboxState> {
        &self.state
    }

    /// The connected app's credentials.
    pub fn app(&self) -> &ConnectedApp {
        &self.app
    }

    /// Current settings.
    pub fn current_settings(&self) -> Settings {
        self.settings.read().clone()
    }

    /// Every org, by org id.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.read().values().cloned().collect()
    }

    /// One org.
    pub fn account_by_id(&self, org_id: &str) -> Option<Arc<Account>> {
        let id = schema::normalize_id(org_id)?;
        self.accounts.read().get(&id).cloned()
    }

    fn account_for(&self, id: &str) -> Result<Arc<Account>, ControlError> {
        self.account_by_id(id).ok_or_else(|| ControlError::not_found(format!("no Salesforce org {id}")))
    }

    /// The base URL of an org's current instance (its `instance_url`).
    pub fn instance_url(&self, a: &Account) -> String {
        self.instance_bases[a.instance().min(1)].clone()
    }

    fn mint_access(&self, org_id: &str) -> String {
        let org15 = org_id.get(..15).unwrap_or(org_id);
        format!(
            "{org15}!AQ{}",
            self.token_rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._", 96)
        )
    }

    fn mint_refresh(&self) -> String {
        format!(
            "5Aep861{}",
            self.token_rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._", 80)
        )
    }

    fn mint_code(&self) -> String {
        format!(
            "aPrx{}==",
            self.token_rng.string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._", 70)
        )
    }

    fn session_ttl_ms(&self) -> Millis {
        self.settings.read().session_timeout_secs.saturating_mul(1000)
    }

    /// The identity URL of an org's integration user (the token response's `id`).
    pub fn identity_url(&self, a: &Account) -> String {
        format!("{}/id/{}/{}", self.login_base, a.org_id, a.user_id)
    }

    /// The token endpoint's JSON: no `expires_in`; `refresh_token` only when one is handed out.
    fn token_json(
        &self,
        a: &Account,
        access: &str,
        refresh: Option<&str>,
        scopes: &[String],
        issued_at: Millis,
    ) -> Value {
        let id = self.identity_url(a);
        let issued = issued_at.to_string();
        let signature = oauth::signature(&self.app.client_secret, &id, &issued);
        let mut m = serde_json::Map::new();
        m.insert("access_token".into(), json!(access));
        if let Some(r) = refresh {
            m.insert("refresh_token".into(), json!(r));
        }
        m.insert("signature".into(), json!(signature));
        m.insert("scope".into(), json!(scopes.join(" ")));
        m.insert("instance_url".into(), json!(self.instance_url(a)));
        m.insert("id".into(), json!(id));
        m.insert("token_type".into(), json!("Bearer"));
        m.insert("issued_at".into(), json!(issued));
        Value::Object(m)
    }

    fn grants_refresh(scopes: &[String]) -> bool {
        scopes.iter().any(|s| s == "refresh_token" || s == "offline_access")
    }

    /// Issues an OAuth token pair for an org, as a completed authorization would.
    pub fn issue_pair(&self, a: &Account, scopes: Vec<String>) -> Value {
        let now = self.state.clock.now_ms();
        let grant = Grant {
            provider: ProviderKind::Salesforce,
            account: a.org_id.clone(),
            client_id: self.app.client_id.clone(),
            scopes: scopes.clone(),
            user_id: Some(a.user_id.clone()),
        };
        let access = self.mint_access(&a.org_id);
        let refresh = Self::grants_refresh(&scopes).then(|| self.mint_refresh());
        self.state.tokens.issue(
            grant,
            Mint {
                access_token: access.clone(),
                access_ttl_ms: Some(self.session_ttl_ms()),
                refresh_token: refresh.clone(),
                refresh_ttl_ms: None,
                refresh_idle_ttl_ms: None,
            },
            now,
        );
        self.token_json(a, &access, refresh.as_deref(), &scopes, now)
    }

    /// Creates an org (seeded with records), returning it.
    pub fn create_account(&self, spec: AccountSpec) -> Result<Arc<Account>, ControlError> {
        let now = self.state.clock.now_ms();
        self.create_account_at(spec, store::to_second(now))
    }

    fn create_account_at(&self, spec: AccountSpec, now: Millis) -> Result<Arc<Account>, ControlError> {
        let cfg = &self.state.config;
        let scopes: Vec<String> = match &spec.scopes {
            Some(s) => {
                if let Some(bad) = s.iter().find(|x| !SCOPES.contains(&x.as_str())) {
                    return Err(ControlError::bad_request(format!("unknown scope {bad:?}")));
                }
                s.clone()
            }
            None => DEFAULT_SCOPE.split(' ').map(str::to_owned).collect(),
        };
        let edition = spec.edition.unwrap_or(cfg.salesforce.edition);
        let licenses = spec.user_licenses.unwrap_or(cfg.salesforce.user_licenses);
        let mut limits = OrgLimits::new(edition, licenses);
        if let Some(q) = &spec.quota {
            limits.apply(q, now).map_err(ControlError::bad_request)?;
        }
        let records = spec.records.unwrap_or(cfg.records);
        let mut counts = [records; 7];
        counts[SObject::User.index()] = 0;
        for (name, n) in spec.objects.iter().flatten() {
            let obj = SObject::parse(name).filter(|o| o.writable()).ok_or_else(|| {
                ControlError::bad_request(format!("unknown or read-only sObject type {name:?}"))
            })?;
            counts[obj.index()] = *n;
        }
        let index = {
            let mut n = self.next_index.lock();
            let i = *n;
            *n += 1;
            i
        };
        let org_id = schema::make_id("00D", ORG_ID_BASE + index);
        let data = store::seed_org(spec.seed.unwrap_or(cfg.seed), index, &org_id, counts, now);
        let user_id = data.users.first().cloned().unwrap_or_default();
        let username =
            data.find(&user_id).and_then(|u| u.get("Username")).map(|v| v.text()).unwrap_or_default();
        let account = Arc::new(Account {
            org_id: org_id.clone(),
            index,
            user_id,
            username,
            created_at: now,
            data: RwLock::new(data),
            limits: Mutex::new(limits),
            cursors: Mutex::new(query::Cursors::default()),
            instance: AtomicUsize::new(0),
            initial_tokens: Mutex::new(Value::Null),
        });
        let tokens = self.issue_pair(&account, scopes);
        *account.initial_tokens.lock() = tokens;
        self.accounts.write().insert(org_id, account.clone());
        Ok(account)
    }

    fn account_json(&self, a: &Account, with_digest: bool) -> Value {
        let now = self.state.clock.now_ms();
        let (quota, edition, licenses, used, in_flight, long_running, hold) = {
            let mut l = a.limits.lock();
            let (used, _) = l.usage(now);
            (
                l.quota.clone(),
                l.edition,
                l.user_licenses,
                used,
                l.in_flight(),
                l.long_running(now),
                l.hold().cloned(),
            )
        };
        let (counts, deleted, last_seq) = {
            let d = a.data.read();
            (d.counts(), d.deleted_counts(), d.journal.last_seq())
        };
        let mut v = json!({
            "id": a.org_id,
            "org_id": a.org_id,
            "user_id": a.user_id,
            "username": a.username,
            "instance_url": self.instance_url(a),
            "edition": edition,
            "user_licenses": licenses,
            "quota": quota,
            "usage": {"api_requests_used": used, "in_flight": in_flight, "long_running": long_running},
            "slow_requests": hold,
            "counts": counts,
            "deleted_counts": deleted,
            "journal_last_seq": last_seq,
            "credentials": {
                "client_id": self.app.client_id,
                "client_secret": self.app.client_secret,
                "oauth": a.initial_tokens.lock().clone(),
                "instance_url": self.instance_url(a),
                "login_url": self.login_base,
                "token_url": format!("{}/services/oauth2/token", self.login_base),
                "api_version": format!("{DEFAULT_API_VERSION}.0"),
                "action_id_field": schema::ACTION_ID_FIELD,
            },
        });
        if with_digest {
            v["digest"] = Value::String(self.digest(a));
        }
        v
    }

    /// A SHA-256 over every record (live and deleted, all fields and timestamps) of an org: equal
    /// digests mean byte-identical data.
    pub fn digest(&self, a: &Account) -> String {
        use sha2::{Digest, Sha256};
        let d = a.data.read();
        let mut h = Sha256::new();
        for obj in SObject::ALL {
            for r in d.table(obj).records.values() {
                h.update(r.id.as_bytes());
                for t in [r.created_at, r.modified_at, r.modstamp, r.deleted_at.unwrap_or(-1)] {
                    h.update(t.to_le_bytes());
                }
                h.update(r.created_by.as_bytes());
                h.update(r.modified_by.as_bytes());
                for (k, v) in &r.fields {
                    h.update(k.as_bytes());
                    h.update([0]);
                    h.update(v.text().as_bytes());
                    h.update([0]);
                }
            }
        }
        let out = h.finalize();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bearer(headers: &HeaderMap) -> Option<&str> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// Resolves a request's session: a valid Salesforce access token of an org living on `host`.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        host: Option<usize>,
    ) -> Result<(Arc<Account>, AccessToken), Response> {
        let st = &self.state;
        let Some(token) = Self::bearer(headers) else {
            return Err(errors::session_invalid());
        };
        let now = st.clock.now_ms();
        let t = match st.tokens.check_access(token, now) {
            AccessCheck::Valid(t) if t.grant.provider == ProviderKind::Salesforce => t,
            _ => return Err(errors::session_invalid()),
        };
        let Some(account) = self.account_by_id(&t.grant.account) else {
            return Err(errors::session_invalid());
        };
        if host.is_some_and(|h| h != account.instance()) {
            return Err(errors::session_invalid());
        }
        st.tokens.touch_access(token, now, self.session_ttl_ms());
        Ok((account, t))
    }

    /// Authenticates (401), checks the session may use the REST API, then applies the org's limits
    /// (403 `REQUEST_LIMIT_EXCEEDED`).
    pub(crate) fn admit(&self, headers: &HeaderMap, host: usize) -> Result<Authed, Response> {
        let (account, token) = self.authenticate(headers, Some(host))?;
        if !token.grant.scopes.iter().any(|s| s == "api" || s == "full") {
            let mut r = errors::error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "This session is not valid for use with the REST API",
            );
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
            return Err(r);
        }
        let now = self.state.clock.now_ms();
        let admitted = account.limits.lock().admit(now);
        match admitted {
            Ok(a) => Ok(Authed {
                user_id: token.grant.user_id.clone().unwrap_or_else(|| account.user_id.clone()),
                limit_info: format!("api-usage={}/{}", a.used, a.limit),
                ticket: a.ticket,
                account,
            }),
            Err(refusal) => {
                let (used, limit) = account.limits.lock().usage(now);
                Err(self.throttle_response(refusal, Some((used, limit)), None))
            }
        }
    }

    /// A 403 `REQUEST_LIMIT_EXCEEDED` for `refusal`, with `Sforce-Limit-Info` when the usage is known.
    pub fn throttle_response(
        &self,
        refusal: Refusal,
        usage: Option<(u64, u64)>,
        retry_after_secs: Option<u64>,
    ) -> Response {
        let (message, op) = {
            let s = self.settings.read();
            match refusal {
                Refusal::TotalRequests => (s.total_requests_message.clone(), "throttled.TotalRequests"),
                Refusal::ConcurrentRequests => {
                    (s.concurrent_requests_message.clone(), "throttled.ConcurrentRequests")
                }
            }
        };
        let mut resp = errors::request_limit(&message);
        if let Some((used, limit)) = usage
            && let Ok(v) = HeaderValue::from_str(&format!("api-usage={used}/{limit}"))
        {
            resp.headers_mut().insert("sforce-limit-info", v);
        }
        if let Some(s) = retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        mark_throttled(with_operation(resp, op))
    }

    fn write_options(&self) -> WriteOptions {
        let s = self.settings.read();
        WriteOptions {
            unique_external_ids: s.unique_external_ids,
            contact_duplicate_rule: s.contact_duplicate_rule,
        }
    }

    /// Whether a field is switched off in this org (the Note External ID toggle).
    pub(crate) fn hidden(&self, obj: SObject, def: &FieldDef) -> bool {
        obj == SObject::Note && def.name == schema::ACTION_ID_FIELD && !self.settings.read().note_external_id
    }

    /// A field as this org has it.
    pub(crate) fn field(&self, obj: SObject, name: &str) -> Option<&'static FieldDef> {
        obj.field(name).filter(|d| !self.hidden(obj, d))
    }

    /// Converts a JSON body into field values for a create or update, in Salesforce's words when it
    /// cannot: `Id` in the body, unknown fields, fields not writable in this mode, bad values.
    pub(crate) fn parse_fields(
        &self,
        obj: SObject,
        body: &serde_json::Map<String, Value>,
        mode: WriteMode,
    ) -> Result<BTreeMap<&'static str, Option<Val>>, SfError> {
        let subtype_createable = self.settings.read().task_subtype_createable;
        let mut out = BTreeMap::new();
        let mut read_only = Vec::new();
        for (k, v) in body {
            if k == "attributes" {
                if let Some(t) = v.get("type").and_then(Value::as_str)
                    && !t.eq_ignore_ascii_case(obj.name())
                {
                    return Err(SfError::new(
                        StatusCode::BAD_REQUEST,
                        "INVALID_TYPE",
                        format!("Type mismatch: the attributes name {t}, the resource is {}", obj.name()),
                    ));
                }
                continue;
            }
            if k.eq_ignore_ascii_case("Id") {
                return Err(SfError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    "The Id field should not be specified in the sobject data.",
                ));
            }
            let Some(def) = self.field(obj, k) else {
                return Err(SfError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    format!("No such column '{k}' on sobject of type {}", obj.name()),
                ));
            };
            let writable = match mode {
                WriteMode::Create => def.createable && (def.name != "TaskSubtype" || subtype_createable),
                WriteMode::Update => def.updateable,
            };
            if !writable {
                read_only.push(def.name.to_owned());
                continue;
            }
            let val = schema::parse_value(def, v).map_err(|e| SfError {
                status: StatusCode::BAD_REQUEST,
                code: e.code,
                message: e.message,
                fields: e.fields,
                extra: None,
            })?;
            if mode == WriteMode::Create && val.is_none() {
                continue;
            }
            out.insert(def.name, val);
        }
        if !read_only.is_empty() {
            return Err(SfError::fields(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    read_only.join(", ")
                ),
                read_only,
            ));
        }
        Ok(out)
    }

    /// Maps a store error to Salesforce's body.
    pub(crate) fn write_error(&self, obj: SObject, e: &WriteError, version: u32) -> SfError {
        match e {
            WriteError::NotFound => errors::not_found(),
            WriteError::Deleted => errors::entity_deleted(),
            WriteError::RequiredMissing(fields) => SfError::fields(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", fields.join(", ")),
                fields.clone(),
            ),
            WriteError::WrongReferenceType { field, label, id } => SfError::fields(
                "FIELD_INTEGRITY_EXCEPTION",
                format!("{label}: id value of incorrect type: {id}"),
                vec![(*field).to_owned()],
            ),
            WriteError::ReferenceMissing { field } => SfError::fields(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                vec![(*field).to_owned()],
            ),
            WriteError::ReferenceDeleted { field } => {
                SfError::fields("ENTITY_IS_DELETED", "entity is deleted", vec![(*field).to_owned()])
            }
            WriteError::DuplicateValue { field, existing } => SfError::fields(
                "DUPLICATE_VALUE",
                format!("duplicate value found: {field} duplicates value on record with id: {existing}"),
                Vec::new(),
            ),
            WriteError::DuplicatesDetected { existing } => {
                let message =
                    "You're creating a duplicate record. We recommend you use an existing record instead.";
                let mut err = SfError::fields("DUPLICATES_DETECTED", message, Vec::new());
                err.extra = Some(json!({"duplicateResult": {
                    "allowSave": false,
                    "duplicateRule": "Standard_Contact_Duplicate_Rule",
                    "duplicateRuleEntityType": obj.name(),
                    "errorMessage": message,
                    "matchResults": [{
                        "entityType": obj.name(),
                        "errors": [],
                        "matchEngine": "ExactMatchEngine",
                        "matchRecords": [{
                            "additionalInformation": [],
                            "fieldDiffs": [],
                            "matchConfidence": 100.0,
                            "record": {
                                "attributes": {"type": obj.name(), "url": format!("/services/data/v{version}.0/sobjects/{}/{existing}", obj.name())},
                                "Id": existing,
                            },
                        }],
                        "rule": "Standard_Contact_Match_Rule_v1_1",
                        "size": 1,
                        "success": true,
                    }],
                }}));
                err
            }
        }
    }

    /// Validates and creates a record in `tx`, recording the creation for "no duplicates" checks
    /// when the transaction commits (the caller commits).
    pub(crate) fn create_in(
        &self,
        data: &mut OrgData,
        tx: &mut Tx,
        obj: SObject,
        fields: BTreeMap<&'static str, Option<Val>>,
        who: Actor<'_>,
    ) -> Result<String, SfError> {
        data.check_write(obj, &fields, None, &self.write_options())
            .map_err(|e| self.write_error(obj, &e, who.version))?;
        let values = fields.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        Ok(data.create(tx, obj, values, self.state.clock.now_ms(), who.user))
    }

    /// Validates and updates a live record in `tx`.
    pub(crate) fn update_in(
        &self,
        data: &mut OrgData,
        tx: &mut Tx,
        obj: SObject,
        id: &str,
        fields: &BTreeMap<&'static str, Option<Val>>,
        who: Actor<'_>,
    ) -> Result<(), SfError> {
        let existing = match data.table(obj).records.get(id) {
            None => return Err(errors::not_found()),
            Some(r) if !r.is_live() => return Err(errors::entity_deleted()),
            Some(r) => r.clone(),
        };
        data.check_write(obj, fields, Some(&existing), &self.write_options())
            .map_err(|e| self.write_error(obj, &e, who.version))?;
        data.update(tx, obj, id, fields, self.state.clock.now_ms(), who.user)
            .map_err(|e| self.write_error(obj, &e, who.version))
    }

    /// Commits `tx` and records every create it made in the org's counters.
    pub(crate) fn commit(&self, a: &Account, data: &mut OrgData, tx: Tx, source: &str) -> Vec<Change> {
        let changes = tx.commit(data, source);
        for c in &changes {
            if c.op != crate::changes::ChangeOp::Create {
                continue;
            }
            if let Some(r) = data.find(&c.id) {
                self.state.counters.record_created(
                    ProviderKind::Salesforce,
                    &a.org_id,
                    created_object(&c.object, &c.id, c.at_ms, source, store::searchable_text(r)),
                );
            }
        }
        changes
    }

    fn apply_mutations(
        &self,
        a: &Account,
        req: &MutationRequest,
        source: &str,
    ) -> Result<ChangeLog, ControlError> {
        let objects: Vec<SObject> = match &req.objects {
            None => SObject::WRITABLE.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    SObject::parse(n).filter(|o| o.writable()).ok_or_else(|| {
                        ControlError::bad_request(format!("unknown or read-only sObject type {n:?}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if objects.is_empty() {
            return Err(ControlError::bad_request("objects must not be empty"));
        }
        let mut data = a.data.write();
        let batch_seed = req.seed.unwrap_or(data.journal.last_seq());
        let mut rng =
            rng_for(self.state.config.seed, &["salesforce", &a.org_id, "mutations", &batch_seed.to_string()]);
        let mut ops: Vec<u8> = Vec::new();
        ops.extend(std::iter::repeat_n(0u8, req.creates as usize));
        ops.extend(std::iter::repeat_n(1u8, req.updates as usize));
        ops.extend(std::iter::repeat_n(2u8, req.deletes as usize));
        ops.shuffle(&mut rng);
        let user = data.users.get(1).cloned().unwrap_or_else(|| a.user_id.clone());
        let org_tag = format!("m{batch_seed}");
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(step) = req.step_ms.filter(|s| *s > 0) {
                self.state.clock.advance(step);
            }
            let now = self.state.clock.now_ms();
            let obj = objects[rng.random_range(0..objects.len())];
            let mut tx = Tx::new();
            let ok = match op {
                0 => {
                    let refs = store::Refs::of(&data);
                    let n = data.journal.last_seq() + 1;
                    let fields = store::fake_fields(obj, &mut rng, 1_000_000 + n, &org_tag, now, &refs);
                    let fields = fields.into_iter().map(|(k, v)| (k, Some(v))).collect();
                    match data.check_write(obj, &fields, None, &self.write_options()) {
                        Ok(()) => {
                            let values = fields.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
                            data.create(&mut tx, obj, values, now, &user);
                            true
                        }
                        Err(e) => {
                            tracing::debug!(?e, "mutation create skipped");
                            false
                        }
                    }
                }
                1 => match data.pick_live(obj, &mut rng) {
                    Some(id) => {
                        let fields = store::fake_update(obj, &mut rng, now);
                        data.update(&mut tx, obj, &id, &fields, now, &user).is_ok()
                    }
                    None => false,
                },
                _ => match data.pick_live(obj, &mut rng) {
                    Some(id) => data.delete(&mut tx, obj, &id, now).is_ok(),
                    None => false,
                },
            };
            if ok {
                changes.extend(self.commit(a, &mut data, tx, source));
            } else {
                tx.rollback(&mut data);
            }
        }
        Ok(ChangeLog::from_changes(changes))
    }

    fn parse_object(object: &str) -> Result<SObject, ControlError> {
        SObject::parse(object)
            .ok_or_else(|| ControlError::bad_request(format!("unknown sObject type {object:?}")))
    }

    fn parse_record_id(obj: SObject, record_id: &str) -> Result<String, ControlError> {
        schema::normalize_id(record_id)
            .filter(|id| SObject::from_id(id) == Some(obj))
            .ok_or_else(|| ControlError::bad_request(format!("{record_id:?} is not a {} id", obj.name())))
    }
}

/// A record as the control plane shows it: every field with a value, the system fields, and
/// `attributes`.
fn record_json(r: &store::Record) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "attributes".into(),
        json!({"type": r.object.name(), "url": format!("/services/data/v{DEFAULT_API_VERSION}.0/sobjects/{}/{}", r.object.name(), r.id)}),
    );
    for name in schema::SYSTEM_FIELD_NAMES {
        if let Some(v) = r.get(name) {
            m.insert(name.to_owned(), v.to_json());
        }
    }
    for (k, v) in &r.fields {
        m.insert((*k).to_owned(), v.to_json());
    }
    Value::Object(m)
}

impl Provider for Salesforce {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Salesforce
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn urls(&self) -> ProviderUrls {
        let mut m = BTreeMap::new();
        m.insert("login_base".to_owned(), self.login_base.clone());
        m.insert("instance_base".to_owned(), self.instance_bases[0].clone());
        m.insert("instance_base_alt".to_owned(), self.instance_bases[1].clone());
        m.insert("authorize_url".to_owned(), format!("{}/services/oauth2/authorize", self.login_base));
        m.insert("token_url".to_owned(), format!("{}/services/oauth2/token", self.login_base));
        m.insert("revoke_url".to_owned(), format!("{}/services/oauth2/revoke", self.login_base));
        m
    }

    fn router(self: Arc<Self>, host: &str) -> Router {
        let date = axum::middleware::map_response_with_state(self.clone(), logical_date);
        if host == "login" {
            return Router::new()
                .route("/services/oauth2/authorize", get(oauth::authorize))
                .route("/services/oauth2/token", any(oauth::token))
                .route("/services/oauth2/revoke", any(oauth::revoke))
                .route("/id/{org}/{user}", get(oauth::identity))
                .fallback(api::fallback)
                .with_state(self)
                .layer(date);
        }
        let hs = HostState { sf: self.clone(), host: usize::from(host == "instance2") };
        Router::new()
            .route("/services/data", get(api::versions))
            .route("/services/data/", get(api::versions))
            .route("/services/data/{*rest}", any(api::data))
            .fallback(api::fallback_host)
            .with_state(hs)
            .layer(date)
    }

    fn identify(&self, headers: &HeaderMap, _uri: &Uri) -> Option<String> {
        let token = Self::bearer(headers)?;
        match self.state.tokens.account_of(token) {
            Some((ProviderKind::Salesforce, a)) => Some(a),
            _ => None,
        }
    }

    fn fault_response(&self, action: &FaultAction, account: Option<&str>) -> Response {
        let now = self.state.clock.now_ms();
        let usage = account.and_then(|a| self.account_by_id(a)).map(|a| a.limits.lock().usage(now));
        let mut resp = match action {
            FaultAction::Throttle { policy, retry_after_secs } => {
                let refusal = match policy.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("concurrency" | "concurrent" | "concurrentrequests") => Refusal::ConcurrentRequests,
                    _ => Refusal::TotalRequests,
                };
                self.throttle_response(refusal, usage, *retry_after_secs)
            }
            FaultAction::Status { status, kind, .. } => {
                let kind = kind.as_deref().unwrap_or("");
                let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                match *status {
                    401 => errors::session_invalid(),
                    403 if kind.eq_ignore_ascii_case("concurrency") => {
                        self.throttle_response(Refusal::ConcurrentRequests, usage, None)
                    }
                    403 if kind.is_empty()
                        || kind == "REQUEST_LIMIT_EXCEEDED"
                        || kind.eq_ignore_ascii_case("daily") =>
                    {
                        self.throttle_response(Refusal::TotalRequests, usage, None)
                    }
                    404 => errors::not_found().response(),
                    // The core REST API throttles with 403; 429 is what the Connect (Chatter) REST API
                    // sends, so a fault can exercise that path too.
                    429 => mark_throttled(errors::error(
                        code,
                        "REQUEST_LIMIT_EXCEEDED",
                        "Request limit exceeded",
                    )),
                    400 if kind == "UNABLE_TO_LOCK_ROW" => errors::error(
                        code,
                        "UNABLE_TO_LOCK_ROW",
                        "unable to obtain exclusive access to this record or 1 records",
                    ),
                    500 if kind.is_empty() => errors::error(
                        code,
                        "UNKNOWN_EXCEPTION",
                        "An unexpected error occurred. Please include this ErrorId if you contact support: 1085460952-125347 (-1370341617)",
                    ),
                    503 if kind.is_empty() => {
                        errors::error(code, "SERVER_UNAVAILABLE", "Server temporarily unavailable")
                    }
                    s if kind == "html" => (
                        code,
                        [(header::CONTENT_TYPE, "text/html")],
                        format!(
                            "<html><head><title>{s}</title></head><body><h1>{s} {}</h1></body></html>",
                            code.canonical_reason().unwrap_or("")
                        ),
                    )
                        .into_response(),
                    _ => {
                        let ec = match kind {
                            "" => match *status {
                                400 => "BAD_REQUEST",
                                403 => "INSUFFICIENT_ACCESS_OR_READONLY",
                                409 => "CONFLICT",
                                412 => "PRECONDITION_FAILED",
                                _ => "UNKNOWN_EXCEPTION",
                            },
                            k => k,
                        };
                        errors::error(code, ec, code.canonical_reason().unwrap_or("error"))
                    }
                }
            }
            _ => errors::error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN_EXCEPTION", "internal error"),
        };
        if let Some(v) = date_header(now) {
            resp.headers_mut().insert(header::DATE, v);
        }
        resp
    }

    fn list_accounts(&self) -> Value {
        let accounts: Vec<Value> = self.accounts().iter().map(|a| self.account_json(a, false)).collect();
        json!({"accounts": accounts})
    }

    fn create_account(&self, spec: Value) -> Result<Value, ControlError> {
        let spec: AccountSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::bad_request(format!("invalid account spec: {e}")))?;
        let a = Salesforce::create_account(self, spec)?;
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
                return Err(ControlError::bad_request(format!("unknown Salesforce setting {k:?}")));
            }
            current[&k] = v;
        }
        let next: Settings = serde_json::from_value(current)
            .map_err(|e| ControlError::bad_request(format!("invalid settings: {e}")))?;
        if next.session_timeout_secs <= 0 || next.query_cursor_ttl_secs <= 0 || next.max_query_cursors == 0 {
            return Err(ControlError::bad_request(
                "session_timeout_secs, query_cursor_ttl_secs and max_query_cursors must be positive",
            ));
        }
        *self.settings.write() = next;
        Ok(self.settings())
    }

    fn issue_tokens(&self, id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        Ok(self.issue_pair(&a, DEFAULT_SCOPE.split(' ').map(str::to_owned).collect()))
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
        let obj = Self::parse_object(object)?;
        let rid = Self::parse_record_id(obj, record_id)?;
        let d = a.data.read();
        d.table(obj)
            .records
            .get(&rid)
            .map(|r| record_json(r))
            .ok_or_else(|| ControlError::not_found(format!("no {} {record_id}", obj.name())))
    }

    fn edit_record(
        &self,
        id: &str,
        object: &str,
        record_id: &str,
        patch: Value,
    ) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let obj = Self::parse_object(object)?;
        if !obj.writable() {
            return Err(ControlError::bad_request(format!("{} is read-only", obj.name())));
        }
        let rid = Self::parse_record_id(obj, record_id)?;
        let fields = match patch.get("fields").or_else(|| patch.get("properties")) {
            Some(Value::Object(m)) => m.clone(),
            _ => match patch {
                Value::Object(m) => m,
                _ => return Err(ControlError::bad_request("patch must be {\"fields\": {...}}")),
            },
        };
        let values = self
            .parse_fields(obj, &fields, WriteMode::Update)
            .map_err(|e| ControlError::bad_request(format!("{}: {}", e.code, e.message)))?;
        let mut d = a.data.write();
        let user = d.users.get(1).cloned().unwrap_or_else(|| a.user_id.clone());
        let mut tx = Tx::new();
        match self.update_in(
            &mut d,
            &mut tx,
            obj,
            &rid,
            &values,
            Actor { user: &user, version: DEFAULT_API_VERSION },
        ) {
            Ok(()) => {
                self.commit(&a, &mut d, tx, "control");
            }
            Err(e) => {
                tx.rollback(&mut d);
                return Err(if e.status == StatusCode::NOT_FOUND {
                    ControlError::not_found(format!("no live {} {record_id}", obj.name()))
                } else {
                    ControlError::bad_request(format!("{}: {}", e.code, e.message))
                });
            }
        }
        d.table(obj)
            .records
            .get(&rid)
            .map(|r| record_json(r))
            .ok_or_else(|| ControlError::not_found("record vanished"))
    }

    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError> {
        let a = self.account_for(id)?;
        let obj = Self::parse_object(object)?;
        let rid = Self::parse_record_id(obj, record_id)?;
        let mut d = a.data.write();
        let mut tx = Tx::new();
        if d.delete(&mut tx, obj, &rid, self.state.clock.now_ms()).is_err() {
            tx.rollback(&mut d);
            return Err(ControlError::not_found(format!("no live {} {record_id}", obj.name())));
        }
        let changes = self.commit(&a, &mut d, tx, "control");
        Ok(serde_json::to_value(changes.first()).unwrap_or(Value::Null))
    }
}
