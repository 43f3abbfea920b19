//! The contract between the sandbox core and a provider imitation, and the registry of providers.
//!
//! A provider module (see `hubspot/`) supplies:
//!
//! 1. a [`Registration`] in [`REGISTRY`]: its [`ProviderKind`], the names of its hosts (one listener
//!    each, e.g. HubSpot `api` and `app`; Salesforce would have `login` and `instance`), a port offset
//!    for fixed-port runs, and a `build` function;
//! 2. a type implementing [`Provider`]: an axum [`Router`] per host, a cheap [`Provider::identify`] that
//!    maps request credentials to an account id (for the request gate's counters, log and fault
//!    matching), rendering of injected faults in the provider's own error shapes, and the control-plane
//!    operations (accounts, settings, mutations, record edits) with JSON in and out.
//!
//! The core binds the listeners first, so `build` receives every host's base URL (token responses can
//! name a different host, like Salesforce's `instance_url`), then wraps each router in the request gate.
//!
//! Invariant: providers never open sockets, read the wall clock or keep their own request log; they
//! take those from [`SandboxState`].

use crate::changes::{Change, ChangeLog, MutationRequest};
use crate::config::ProviderKind;
use crate::faults::FaultAction;
use crate::state::SandboxState;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Base URLs of one provider, keyed by a documented name (`api_base`, `authorize_url`, ...).
pub type ProviderUrls = BTreeMap<String, String>;

/// An error from a control-plane operation: an HTTP status and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
}

impl ControlError {
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    /// 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self { status: StatusCode::CONFLICT, message: message.into() }
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ControlError {}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(
                json!({"error": self.status.canonical_reason().unwrap_or("error"), "message": self.message}),
            ),
        )
            .into_response()
    }
}

/// What a provider's `build` function receives.
#[derive(Clone, Debug)]
pub struct ProviderInit {
    /// The shared services.
    pub state: Arc<SandboxState>,
    /// Base URL (`http://127.0.0.1:PORT`) of each host named in the registration.
    pub host_urls: BTreeMap<&'static str, String>,
}

impl ProviderInit {
    /// The base URL of one host (empty if the registration did not name it).
    pub fn host(&self, name: &str) -> String {
        self.host_urls.get(name).cloned().unwrap_or_default()
    }
}

/// A provider imitation.
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// The provider as `Any`, so callers can reach its concrete type (`SandboxHandle::hubspot`).
    /// Implementations are one line: `self`.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;

    /// Every base URL a client needs, with documented key names.
    fn urls(&self) -> ProviderUrls;

    /// The router of one host (called once per host in the registration, after `build`).
    fn router(self: Arc<Self>, host: &str) -> Router;

    /// The account a request's credentials belong to, whatever their state (cheap: header lookups only).
    fn identify(&self, headers: &HeaderMap, uri: &Uri) -> Option<String>;

    /// The response for an injected fault: a `Status` without a literal body, or a `Throttle`, in the
    /// provider's own error shape. `account` is what [`Provider::identify`] returned for the request.
    fn fault_response(&self, action: &FaultAction, account: Option<&str>) -> Response;

    /// Every account, with credentials.
    fn list_accounts(&self) -> Value;

    /// Creates an account from a provider-specific JSON spec (at least `records`), returning its ids and
    /// credentials.
    fn create_account(&self, spec: Value) -> Result<Value, ControlError>;

    /// One account, with credentials and settings.
    fn account(&self, id: &str) -> Result<Value, ControlError>;

    /// Changes an account's settings (quotas, time zone, plan, ...).
    fn update_account(&self, id: &str, patch: Value) -> Result<Value, ControlError>;

    /// Provider-wide settings (token lifetimes, rotation, toggles for UNCONFIRMED behaviour).
    fn settings(&self) -> Value;

    /// Changes provider-wide settings.
    fn update_settings(&self, patch: Value) -> Result<Value, ControlError>;

    /// Issues a fresh token pair for an account, as if its user had just connected.
    fn issue_tokens(&self, id: &str) -> Result<Value, ControlError>;

    /// Revokes every credential of an account (the user disconnected the app). The default revokes the
    /// account's OAuth tokens; providers with static tokens revoke those too.
    fn revoke_tokens(&self, state: &SandboxState, id: &str) -> Result<Value, ControlError> {
        let n = state.tokens.revoke_account(self.kind(), id, state.clock.now_ms());
        Ok(json!({"revoked": n}))
    }

    /// Applies deterministic changes "as another user" (`source` is `mutation` or `generator`).
    fn mutate(&self, id: &str, req: MutationRequest, source: &str) -> Result<ChangeLog, ControlError>;

    /// The account's change journal after sequence number `since`.
    fn changes(&self, id: &str, since: u64) -> Result<Vec<Change>, ControlError>;

    /// Reads one record as stored (including deleted ones).
    fn record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError>;

    /// Edits one record as another user.
    fn edit_record(
        &self,
        id: &str,
        object: &str,
        record_id: &str,
        patch: Value,
    ) -> Result<Value, ControlError>;

    /// Deletes one record as another user.
    fn delete_record(&self, id: &str, object: &str, record_id: &str) -> Result<Value, ControlError>;
}

/// How the core starts one provider.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// Which provider.
    pub kind: ProviderKind,
    /// Its hosts, one listener each, in port order.
    pub hosts: &'static [&'static str],
    /// Offset of its first port from the base port in [`crate::config::PortPlan::Base`] (host `k` listens
    /// on `base + port_offset + k`).
    pub port_offset: u16,
    /// Builds the provider (and seeds its default accounts).
    pub build: fn(ProviderInit) -> Arc<dyn Provider>,
}

/// Every implemented provider. Adding a provider means adding its module and one line here.
pub const REGISTRY: &[Registration] = &[
    Registration {
        kind: ProviderKind::HubSpot,
        hosts: &["api", "app"],
        port_offset: 10,
        build: crate::hubspot::build,
    },
    Registration {
        kind: ProviderKind::Salesforce,
        hosts: &["login", "instance", "instance2"],
        port_offset: 20,
        build: crate::salesforce::build,
    },
    // registry: pipedrive
    Registration {
        kind: ProviderKind::Pipedrive,
        hosts: &["api", "oauth"],
        port_offset: 30,
        build: crate::pipedrive::build,
    },
    Registration {
        kind: ProviderKind::Zoho,
        hosts: &["us_accounts", "us_api", "eu_accounts", "eu_api"],
        port_offset: 40,
        build: crate::zoho::build,
    },
    Registration {
        kind: ProviderKind::Close,
        hosts: &["api", "app"],
        port_offset: 50,
        build: crate::close::build,
    },
];

/// The registration of a provider, if it is implemented.
pub fn registration(kind: ProviderKind) -> Option<&'static Registration> {
    REGISTRY.iter().find(|r| r.kind == kind)
}

/// The providers that are implemented, in registry order.
pub fn implemented() -> Vec<ProviderKind> {
    REGISTRY.iter().map(|r| r.kind).collect()
}
