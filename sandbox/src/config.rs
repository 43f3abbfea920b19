//! Start-up configuration: which providers run, on which ports, with which seed, clock and defaults.
//!
//! Everything has a default ([`SandboxConfig::default`]) and a builder-style `with_*` setter, so a test
//! writes `SandboxConfig::default().with_records(500).with_frozen_clock()`. Invariant: the configuration
//! is read once at start; later changes go through the control plane (settings, quotas, clock), never by
//! mutating this struct.

use crate::clock::{ClockMode, Millis};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// The five imitated CRMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// HubSpot CRM v3 (and the 2026-03 date-versioned paths).
    #[serde(rename = "hubspot")]
    HubSpot,
    /// Salesforce REST API and SOQL.
    Salesforce,
    /// Pipedrive API v1/v2.
    Pipedrive,
    /// Zoho CRM v7/v8.
    Zoho,
    /// Close CRM.
    Close,
}

impl ProviderKind {
    /// All five, in a fixed order.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::HubSpot,
        ProviderKind::Salesforce,
        ProviderKind::Pipedrive,
        ProviderKind::Zoho,
        ProviderKind::Close,
    ];

    /// The lowercase name used in URLs, JSON and the `--providers` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::HubSpot => "hubspot",
            ProviderKind::Salesforce => "salesforce",
            ProviderKind::Pipedrive => "pipedrive",
            ProviderKind::Zoho => "zoho",
            ProviderKind::Close => "close",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hubspot" => Ok(ProviderKind::HubSpot),
            "salesforce" => Ok(ProviderKind::Salesforce),
            "pipedrive" => Ok(ProviderKind::Pipedrive),
            "zoho" | "zohocrm" | "zoho_crm" => Ok(ProviderKind::Zoho),
            "close" => Ok(ProviderKind::Close),
            other => Err(format!(
                "unknown provider {other:?} (expected hubspot, salesforce, pipedrive, zoho or close)"
            )),
        }
    }
}

/// How provider listeners pick their ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortPlan {
    /// Every provider host on an ephemeral port (port 0). The default, and what tests use.
    Ephemeral,
    /// Provider hosts on fixed offsets from this base port: each provider owns the ten ports starting at
    /// `base + provider_offset` (HubSpot 10, Salesforce 20, Pipedrive 30, Zoho 40, Close 50) and host
    /// number `k` of that provider listens on `base + provider_offset + k`.
    Base(u16),
}

/// A Salesforce org's edition, which sets its documented API allocations (`crm-providers.md` §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceEdition {
    /// Developer Edition: 15,000 requests per rolling 24 h, 5 concurrent long-running requests.
    Developer,
    /// Professional Edition (with API access): 100,000 + 1,000 per user licence, 25 long-running.
    Professional,
    /// Enterprise Edition: 100,000 + 1,000 per user licence, 25 long-running.
    Enterprise,
    /// Unlimited Edition: 100,000 + 5,000 per user licence, 25 long-running.
    Unlimited,
    /// Performance Edition: 100,000 + 5,000 per user licence, 25 long-running.
    Performance,
}

impl SalesforceEdition {
    /// Total API requests per rolling 24 hours for an org with `licenses` user licences.
    pub fn daily_requests(self, licenses: u64) -> u64 {
        match self {
            SalesforceEdition::Developer => 15_000,
            SalesforceEdition::Professional | SalesforceEdition::Enterprise => 100_000 + 1_000 * licenses,
            SalesforceEdition::Unlimited | SalesforceEdition::Performance => 100_000 + 5_000 * licenses,
        }
    }

    /// Concurrent requests running 20 seconds or longer that the org admits.
    pub fn concurrent_long_requests(self) -> u64 {
        match self {
            SalesforceEdition::Developer => 5,
            _ => 25,
        }
    }
}

/// A connected app's refresh-token policy (`crm-providers.md` §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceRefreshPolicy {
    /// "Refresh token is valid until revoked" (the usual default).
    ValidUntilRevoked,
    /// "Expire refresh token after N": fails `ttl_secs` after it was issued.
    ExpireAfter,
    /// "Expire refresh token if not used for N": fails when idle for `ttl_secs`.
    ExpireIfIdle,
    /// "Immediately expire refresh token": a refresh token is issued but never works.
    ImmediatelyExpire,
}

/// Salesforce defaults (per-org quotas and runtime toggles can be changed later through the control
/// plane).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SalesforceConfig {
    /// Session timeout: an access token expires after this long without API activity. Salesforce's
    /// default is 2 hours; token responses never say so (no `expires_in`).
    pub session_timeout_secs: i64,
    /// The connected app's refresh-token policy.
    pub refresh_token_policy: SalesforceRefreshPolicy,
    /// The TTL the `expire_after` and `expire_if_idle` policies use, seconds.
    pub refresh_token_ttl_secs: i64,
    /// Refresh-token rotation: each refresh returns a new refresh token and retires the old one.
    /// Optional in Salesforce; off by default.
    pub rotate_refresh_tokens: bool,
    /// Edition of seeded orgs.
    pub edition: SalesforceEdition,
    /// User licences of seeded orgs (scales the 24-hour allocation).
    pub user_licenses: u64,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            session_timeout_secs: 7200,
            refresh_token_policy: SalesforceRefreshPolicy::ValidUntilRevoked,
            refresh_token_ttl_secs: 30 * 86_400,
            rotate_refresh_tokens: false,
            edition: SalesforceEdition::Enterprise,
            user_licenses: 10,
        }
    }
}

/// Pipedrive defaults (per-company values can be changed later through the control plane).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipedriveConfig {
    /// `expires_in` of issued OAuth access tokens, in seconds. Pipedrive answers 3599.
    pub access_token_ttl_secs: i64,
    /// Refresh tokens expire after this many days unused (60, from a third-party quote of the docs).
    pub refresh_token_idle_days: i64,
    /// Whether the refresh grant returns a new refresh token and retires the old one (UNCONFIRMED;
    /// off by default).
    pub rotate_refresh_tokens: bool,
    /// Whether 429 responses carry `Retry-After` (UNCONFIRMED; off by default).
    pub retry_after: bool,
    /// Plan of seeded companies: sets the burst limits and the daily token budget multiplier.
    pub plan: crate::pipedrive::Plan,
    /// Seats of seeded companies (the daily budget is 30,000 × multiplier × seats).
    pub seats: u64,
    /// IANA time zone of the "server" midnight that resets the daily budget (not named by
    /// Pipedrive; `Europe/Tallinn` by default so clients cannot assume UTC).
    pub time_zone: String,
}

impl Default for PipedriveConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3599,
            refresh_token_idle_days: 60,
            rotate_refresh_tokens: false,
            retry_after: false,
            plan: crate::pipedrive::Plan::Growth,
            seats: 1,
            time_zone: "Europe/Tallinn".to_owned(),
        }
    }
}

/// Zoho CRM defaults (defined with the imitation in `crate::zoho`).
pub use crate::zoho::ZohoConfig;

/// Close defaults (runtime changes go through `PATCH /_sandbox/close/settings`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloseConfig {
    /// `expires_in` of issued OAuth access tokens, seconds. Close documents 3600 (one hour).
    pub access_token_ttl_secs: i64,
    /// Whether 429 bodies carry the legacy `{"error": {"rate_reset", ...}}` JSON (Close deprecated it
    /// in favour of the `RateLimit` header; off sends an empty body).
    pub rate_limit_legacy_body: bool,
    /// Advanced Filtering cursors expire this many seconds after their last use (documented: 30).
    pub search_cursor_ttl_secs: i64,
    /// Updates of one object within this many milliseconds merge into one event (0 = never).
    pub event_consolidation_ms: Millis,
}

impl Default for CloseConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 3600,
            rate_limit_legacy_body: true,
            search_cursor_ttl_secs: 30,
            event_consolidation_ms: 1_000,
        }
    }
}

/// HubSpot defaults (per-account values can be changed later through the control plane).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubSpotConfig {
    /// `expires_in` of issued OAuth access tokens, in seconds. HubSpot documents 1800 (30 minutes).
    pub access_token_ttl_secs: i64,
    /// Whether the refresh grant returns a new refresh token and retires the old one. HubSpot's
    /// behaviour is UNCONFIRMED; the default (false) returns the same refresh token.
    pub rotate_refresh_tokens: bool,
    /// Whether 429 responses carry `Retry-After` (UNCONFIRMED for HubSpot; off by default).
    pub retry_after: bool,
    /// Plan of seeded accounts: sets the per-app burst (100 / 190 / 250 per 10 s) and the daily cap.
    pub tier: HubSpotTier,
    /// IANA time zone of seeded accounts; the daily counter resets at midnight there.
    pub time_zone: String,
    /// Search index lag in milliseconds: a record changed less than this long ago is invisible to search.
    pub search_index_lag_ms: Millis,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 1800,
            rotate_refresh_tokens: false,
            retry_after: false,
            tier: HubSpotTier::Starter,
            time_zone: "America/New_York".to_owned(),
            search_index_lag_ms: 0,
        }
    }
}

/// A HubSpot account's plan, which sets its documented quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubSpotTier {
    /// Free and Starter: 100 requests / 10 s per private app, 250,000 per day per account.
    Starter,
    /// Professional: 190 / 10 s, 625,000 per day.
    Professional,
    /// Enterprise: 190 / 10 s, 1,000,000 per day.
    Enterprise,
    /// With the API Limit Increase add-on (on Enterprise): 250 / 10 s, 2,000,000 per day.
    ApiLimitIncrease,
}

impl HubSpotTier {
    /// Requests per 10-second window for a privately distributed (static token) app.
    pub fn burst(self) -> u64 {
        match self {
            HubSpotTier::Starter => 100,
            HubSpotTier::Professional | HubSpotTier::Enterprise => 190,
            HubSpotTier::ApiLimitIncrease => 250,
        }
    }

    /// Requests per day per account.
    pub fn daily(self) -> u64 {
        match self {
            HubSpotTier::Starter => 250_000,
            HubSpotTier::Professional => 625_000,
            HubSpotTier::Enterprise => 1_000_000,
            HubSpotTier::ApiLimitIncrease => 2_000_000,
        }
    }
}

/// Everything [`crate::Sandbox::start`] needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Seed of every random choice. Same seed, same data, byte for byte.
    pub seed: u64,
    /// Records per object type in each seeded account.
    pub records: usize,
    /// Accounts seeded per provider at start.
    pub accounts: usize,
    /// Providers to start. Providers that are not implemented yet make `start` fail.
    pub providers: Vec<ProviderKind>,
    /// Address of the control plane (`/_sandbox/...`). Port 0 picks a free port.
    pub control_addr: SocketAddr,
    /// How provider listeners choose ports.
    pub ports: PortPlan,
    /// Logical time at start, epoch milliseconds.
    pub clock_start_ms: Millis,
    /// Frozen or running clock at start.
    pub clock_mode: ClockMode,
    /// Most request-log entries kept (the oldest are dropped first).
    pub request_log_capacity: usize,
    /// HubSpot defaults.
    pub hubspot: HubSpotConfig,
    /// Salesforce defaults.
    pub salesforce: SalesforceConfig,
    // config field: pipedrive
    /// Pipedrive defaults.
    #[serde(default)]
    pub pipedrive: PipedriveConfig,
    /// Zoho CRM defaults.
    pub zoho: ZohoConfig,
    /// Close defaults.
    #[serde(default)]
    pub close: CloseConfig,
}

/// 2026-01-05T09:00:00Z, the default logical start: a Monday morning, so seeded "last 90 days" data
/// crosses a year boundary and several month ends.
pub const DEFAULT_CLOCK_START_MS: Millis = 1_767_603_600_000;

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            records: 25,
            accounts: 1,
            providers: crate::provider::implemented(),
            control_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ports: PortPlan::Ephemeral,
            clock_start_ms: DEFAULT_CLOCK_START_MS,
            clock_mode: ClockMode::Running,
            request_log_capacity: 100_000,
            hubspot: HubSpotConfig::default(),
            salesforce: SalesforceConfig::default(),
            // config default: pipedrive
            pipedrive: PipedriveConfig::default(),
            close: CloseConfig::default(),
            zoho: ZohoConfig::default(),
        }
    }
}

impl SandboxConfig {
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the records per object type in each seeded account.
    pub fn with_records(mut self, records: usize) -> Self {
        self.records = records;
        self
    }

    /// Sets how many accounts are seeded per provider.
    pub fn with_accounts(mut self, accounts: usize) -> Self {
        self.accounts = accounts;
        self
    }

    /// Sets the providers to start.
    pub fn with_providers(mut self, providers: impl IntoIterator<Item = ProviderKind>) -> Self {
        self.providers = providers.into_iter().collect();
        self
    }

    /// Sets the control-plane address.
    pub fn with_control_addr(mut self, addr: SocketAddr) -> Self {
        self.control_addr = addr;
        self
    }

    /// Sets the provider port plan.
    pub fn with_ports(mut self, ports: PortPlan) -> Self {
        self.ports = ports;
        self
    }

    /// Starts the logical clock at `start_ms`.
    pub fn with_clock_start(mut self, start_ms: Millis) -> Self {
        self.clock_start_ms = start_ms;
        self
    }

    /// Starts with a frozen clock (what most tests want: windows move only when the test says so).
    pub fn with_frozen_clock(mut self) -> Self {
        self.clock_mode = ClockMode::Frozen;
        self
    }

    /// Sets the request-log capacity.
    pub fn with_request_log_capacity(mut self, n: usize) -> Self {
        self.request_log_capacity = n;
        self
    }

    /// Replaces the HubSpot defaults.
    pub fn with_hubspot(mut self, hubspot: HubSpotConfig) -> Self {
        self.hubspot = hubspot;
        self
    }

    /// Replaces the Salesforce defaults.
    pub fn with_salesforce(mut self, salesforce: SalesforceConfig) -> Self {
        self.salesforce = salesforce;
        self
    }

    /// Replaces the Pipedrive defaults.
    pub fn with_pipedrive(mut self, pipedrive: PipedriveConfig) -> Self {
        self.pipedrive = pipedrive;
        self
    }

    /// Replaces the Zoho CRM defaults.
    pub fn with_zoho(mut self, zoho: ZohoConfig) -> Self {
        self.zoho = zoho;
        self
    }

    /// Replaces the Close defaults.
    pub fn with_close(mut self, close: CloseConfig) -> Self {
        self.close = close;
        self
    }
}
