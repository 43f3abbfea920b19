//! Provider clients: one per CRM, behind the common [`CrmClient`] trait that syncs and actions
//! use.
//!
//! Invariants:
//! * clients never sleep or retry: they make one HTTP request per call (a sync page may need a
//!   few, e.g. records then deletions) and return a typed [`ProviderError`] that carries the
//!   decision; retry policy lives in the queue, token refresh in [`crate::auth`];
//! * every response yields a [`QuotaObservation`] parsed from the provider's headers, for the
//!   limiter;
//! * no type holding a token derives `Debug`, and requests are logged by method and path only,
//!   never with headers or bodies.

pub mod close;
pub mod error;
pub mod http;
pub mod hubspot;
pub mod pipedrive;
pub mod salesforce;
pub mod types;
pub mod zoho;

use std::sync::Arc;

pub use error::{ProviderError, ThrottleScope};
pub use http::{Http, QuotaObservation};
pub use types::*;

/// The five supported CRMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// HubSpot CRM v3.
    Hubspot,
    /// Salesforce REST API.
    Salesforce,
    /// Pipedrive API v2 (v1 where v2 has no endpoint).
    Pipedrive,
    /// Zoho CRM v7.
    Zoho,
    /// Close.
    Close,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 5] =
        [Self::Hubspot, Self::Salesforce, Self::Pipedrive, Self::Zoho, Self::Close];

    /// The stable name used in APIs, metrics labels and lanes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hubspot => "hubspot",
            Self::Salesforce => "salesforce",
            Self::Pipedrive => "pipedrive",
            Self::Zoho => "zoho",
            Self::Close => "close",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown provider {s:?} (expected one of hubspot, salesforce, pipedrive, zoho, close)")
        })
    }
}

/// A provider response value with the quota it revealed.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The value.
    pub value: T,
    /// Quota headers of the (last) response, if any.
    pub quota: Option<QuotaObservation>,
}

impl<T> Reply<T> {
    /// A reply.
    pub fn new(value: T, quota: Option<QuotaObservation>) -> Self {
        Self { value, quota }
    }

    /// Maps the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reply<U> {
        Reply { value: f(self.value), quota: self.quota }
    }
}

/// Result of a client call.
pub type ProviderResult<T> = Result<Reply<T>, ProviderError>;

/// What syncs and actions need from a CRM. One implementation per provider; all methods take
/// the connection's [`Auth`] (token and API base) so a client is shared by every connection.
#[async_trait::async_trait]
pub trait CrmClient: Send + Sync {
    /// Which provider this is.
    fn provider(&self) -> Provider;

    /// One page of an incremental (or full) sync of `object`, from `cursor`. The returned page
    /// carries the cursor to store with it; a page with `has_more == false` ends the run.
    async fn sync_page(
        &self,
        auth: &Auth,
        object: ObjectKind,
        cursor: &SyncCursor,
    ) -> ProviderResult<SyncPage>;

    /// One record by id (`None` when it does not exist or was deleted).
    async fn get(&self, auth: &Auth, object: ObjectKind, id: &str) -> ProviderResult<Option<CrmRecord>>;

    /// Creates a task.
    async fn create_task(&self, auth: &Auth, input: &CreateTask) -> ProviderResult<ExternalRef>;

    /// Updates a deal's stage, amount and/or close date.
    async fn update_deal(&self, auth: &Auth, input: &UpdateDeal) -> ProviderResult<ExternalRef>;

    /// Logs a call.
    async fn log_call(&self, auth: &Auth, input: &LogCall) -> ProviderResult<ExternalRef>;

    /// Creates a contact.
    async fn create_contact(&self, auth: &Auth, input: &ContactInput) -> ProviderResult<ExternalRef>;

    /// Updates a contact.
    async fn update_contact(
        &self,
        auth: &Auth,
        id: &str,
        input: &ContactInput,
    ) -> ProviderResult<ExternalRef>;

    /// Creates a note.
    async fn create_note(&self, auth: &Auth, input: &CreateNote) -> ProviderResult<ExternalRef>;

    /// Finds a contact by exact email.
    async fn search_contact_by_email(&self, auth: &Auth, email: &str) -> ProviderResult<Option<CrmRecord>>;

    /// Reconciliation after an outcome-unknown create: finds an object of `kind` that an
    /// earlier attempt created with this idempotency `marker` (see [`ActionObject`]).
    async fn find_by_marker(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
    ) -> ProviderResult<Option<ExternalRef>>;

    /// [`CrmClient::find_by_marker`] for an object that cannot have been created more than
    /// `age` ago (the action's age, on our clock, plus a margin). A client whose lookup is a
    /// scan of recently updated objects bounds it by that age instead of by a count, reading
    /// "now" from the provider's own timestamps (never comparing our clock with the
    /// provider's), and answers [`ProviderError::OutcomeUnknown`] rather than "not found" when
    /// it cannot finish the scan — a wrong "not found" would create the object twice. Others
    /// look up as usual.
    async fn find_by_marker_within(
        &self,
        auth: &Auth,
        kind: ActionObject,
        marker: &str,
        age: std::time::Duration,
    ) -> ProviderResult<Option<ExternalRef>> {
        let _ = age;
        self.find_by_marker(auth, kind, marker).await
    }

    /// How long after its creation an object of `kind` may still be missing from the lookup
    /// [`CrmClient::find_by_marker`] uses (a search index that lags). A "not found" for an
    /// attempt younger than this is not conclusive: the executor waits and looks again.
    fn marker_lookup_lag(&self, kind: ActionObject) -> std::time::Duration {
        let _ = kind;
        std::time::Duration::ZERO
    }
}

/// Every provider's client over one shared HTTP client.
#[derive(Clone)]
pub struct Clients {
    http: Http,
    hubspot: Arc<hubspot::HubspotClient>,
    salesforce: Arc<salesforce::SalesforceClient>,
    pipedrive: Arc<pipedrive::PipedriveClient>,
    zoho: Arc<zoho::ZohoClient>,
    close: Arc<close::CloseClient>,
}

impl Clients {
    /// Clients over `http`.
    pub fn new(http: Http) -> Self {
        Self {
            hubspot: Arc::new(hubspot::HubspotClient::new(http.clone())),
            salesforce: Arc::new(salesforce::SalesforceClient::new(http.clone())),
            pipedrive: Arc::new(pipedrive::PipedriveClient::new(http.clone())),
            zoho: Arc::new(zoho::ZohoClient::new(http.clone())),
            close: Arc::new(close::CloseClient::new(http.clone())),
            http,
        }
    }

    /// The shared HTTP client.
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The client for `provider`.
    pub fn get(&self, provider: Provider) -> &dyn CrmClient {
        match provider {
            Provider::Hubspot => self.hubspot.as_ref(),
            Provider::Salesforce => self.salesforce.as_ref(),
            Provider::Pipedrive => self.pipedrive.as_ref(),
            Provider::Zoho => self.zoho.as_ref(),
            Provider::Close => self.close.as_ref(),
        }
    }
}
