//! A small client for crm-fleet's control-plane API, for Rust services that enqueue CRM
//! actions and follow their jobs.
//!
//! ```no_run
//! # async fn example() -> Result<(), crm_fleet_client::Error> {
//! use crm_fleet_client::{Action, Client};
//! let client = Client::new("https://crm-fleet.internal", "cf_1a2b3c4d_…")?;
//! let task = Action::new("acme", "hubspot", "create_task", serde_json::json!({"subject": "Call back"}));
//! let accepted = client.enqueue("order-1042-call-back", &task).await?;
//! let job = client.job(accepted.job_id).await?;
//! println!("{} is {}", job.id, job.state);
//! # Ok(()) }
//! ```
//!
//! Invariant: an enqueue is sent again only under the same `Idempotency-Key` (after a
//! connection failure, a timeout, 429, 502, 503 or 504, waiting as `Retry-After` says when the
//! server says it), so a retry can never make a second action: the server answers a repeat
//! with the first job (`duplicate: true`). An answer the server gives with its JSON error body
//! comes back as [`Error::Api`], naming the field at fault; the API key never appears in an
//! error or a `Debug` output.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use uuid::Uuid;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused or failed, with its error body: `error` is a stable code, `field`
    /// names the input at fault (`tenant_id`, `params.subject`, `Idempotency-Key`, …).
    #[error("{status} {error}{}: {message}", field.as_deref().map(|f| format!(" ({f})")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code (`invalid_action`, `idempotency_key_reused`, `unauthorized`, …).
        error: String,
        /// The field at fault, when one is.
        field: Option<String>,
        /// What was wrong.
        message: String,
    },
    /// The server could not be reached or did not answer in time (after the retries).
    #[error("crm-fleet unreachable: {0}")]
    Transport(String),
    /// An answer that is not what the API documents.
    #[error("unexpected answer from crm-fleet: {0}")]
    Protocol(String),
    /// The client was set up wrong (a base URL that is not one).
    #[error("client configuration: {0}")]
    Config(String),
    /// [`Client::wait_for`] gave up; the job as last seen.
    #[error("job {} still {} after the wait", .0.id, .0.state)]
    Timeout(Box<Job>),
}

impl Error {
    /// Whether sending the same request again may succeed (the client already did so as many
    /// times as it was allowed).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, .. } => matches!(*status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// A CRM action to enqueue (`POST /v1/actions`).
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The tenant it is for.
    pub tenant_id: String,
    /// The CRM: hubspot, salesforce, pipedrive, zoho or close.
    pub provider: String,
    /// The connection, when the tenant has several to the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<Uuid>,
    /// The action: create_task, update_deal, log_call, create_contact, update_contact,
    /// create_note, search_contact_by_email.
    pub action: String,
    /// Its parameters.
    pub params: Value,
    /// A W3C `traceparent` to continue (the job and its CRM calls join that trace).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl Action {
    /// An action for `tenant` at `provider`.
    pub fn new(
        tenant: impl Into<String>,
        provider: impl Into<String>,
        action: impl Into<String>,
        params: Value,
    ) -> Self {
        Self {
            tenant_id: tenant.into(),
            provider: provider.into(),
            connection_id: None,
            action: action.into(),
            params,
            traceparent: None,
        }
    }

    /// Names the connection to use.
    pub fn connection(mut self, id: Uuid) -> Self {
        self.connection_id = Some(id);
        self
    }

    /// Continues a trace.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}

/// The answer to an enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    /// The job (and action) id.
    pub job_id: Uuid,
    /// queued, running, succeeded or failed.
    pub state: String,
    /// True when the key was seen before with the same request: nothing new was enqueued.
    pub duplicate: bool,
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    /// Id.
    pub id: Uuid,
    /// `action` or `sync`.
    pub kind: String,
    /// queued, running, retrying, succeeded, failed or dead.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<JobError>,
    /// The result: for actions, `external_id` and details.
    pub result: Option<Value>,
    /// Created.
    pub created_at: Option<DateTime<Utc>>,
    /// Finished.
    pub completed_at: Option<DateTime<Utc>>,
}

impl Job {
    /// Whether the job will not change any more (succeeded, failed or dead).
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "dead")
    }

    /// The CRM's id of what the action created or changed, once it succeeded.
    pub fn external_id(&self) -> Option<&str> {
        self.result.as_ref()?.get("external_id")?.as_str()
    }
}

/// A job's last error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobError {
    /// Error class (closed set).
    pub class: String,
    /// Redacted message.
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
    message: String,
}

/// The control-plane API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: SecretString,
    attempts: usize,
    first_delay: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).field("attempts", &self.attempts).finish()
    }
}

/// The longest a `Retry-After` is obeyed; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Client {
    /// A client of the API at `base` (e.g. `http://crm-scheduler:8080`) with an API key
    /// (`cf_<prefix>_<secret>`; the `enqueue` scope is enough). Each request times out after
    /// 10 s, and a call is tried up to 5 times: waits of about 0.2, 0.4, 0.8 and 1.6 s between
    /// tries, or what the server's `Retry-After` says (at most 30 s each). It installs rustls'
    /// ring provider as the process default unless one is installed already; to choose
    /// another, install it first or use [`Client::with_http`].
    pub fn new(base: &str, api_key: &str) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Self::with_http(http, base, api_key)
    }

    /// The same on an HTTP client of your own (its timeouts, proxies, TLS roots).
    pub fn with_http(http: reqwest::Client, base: &str, api_key: &str) -> Result<Self, Error> {
        let mut base = Url::parse(base).map_err(|e| Error::Config(format!("base URL {base:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            http,
            base,
            key: SecretString::from(api_key.to_owned()),
            attempts: 5,
            first_delay: Duration::from_millis(200),
        })
    }

    /// How often an enqueue or a read is tried in all (at least once), and the first wait
    /// between tries (doubling, with jitter).
    pub fn with_retries(mut self, attempts: usize, first_delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_delay = first_delay;
        self
    }

    /// Enqueues an action under an idempotency key (unique per tenant, visible ASCII, at most
    /// 255 characters; kept by the server at least 24 h). The same key with the same action
    /// gives the same job (`duplicate: true`); with another action, [`Error::Api`] 422
    /// `idempotency_key_reused`.
    pub async fn enqueue(&self, idempotency_key: &str, action: &Action) -> Result<Accepted, Error> {
        let url = self.url("v1/actions")?;
        self.retrying(|| {
            let mut req = self
                .http
                .post(url.clone())
                .bearer_auth(self.key.expose_secret())
                .header("Idempotency-Key", idempotency_key)
                .json(action);
            if let Some(tp) = &action.traceparent {
                req = req.header("traceparent", tp);
            }
            req
        })
        .await
    }

    /// A job's state (an action's, or a sync's).
    pub async fn job(&self, id: Uuid) -> Result<Job, Error> {
        let url = self.url(&format!("v1/jobs/{id}"))?;
        self.retrying(|| self.http.get(url.clone()).bearer_auth(self.key.expose_secret())).await
    }

    /// Polls a job every `every` until it is finished, for at most `timeout`
    /// ([`Error::Timeout`] with the job as last seen).
    pub async fn wait_for(&self, id: Uuid, timeout: Duration, every: Duration) -> Result<Job, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.job(id).await?;
            if job.is_finished() {
                return Ok(job);
            }
            if tokio::time::Instant::now() + every > deadline {
                return Err(Error::Timeout(Box::new(job)));
            }
            tokio::time::sleep(every).await;
        }
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base.join(path).map_err(|e| Error::Config(e.to_string()))
    }

    /// Sends the request built by `request` until it gets a final answer: a transient failure
    /// is tried again, after `Retry-After` when the server gave one.
    async fn retrying<T: serde::de::DeserializeOwned>(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_times(self.attempts - 1)
            .with_jitter();
        let attempt = || async { answer(request().send().await).await };
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &Failure| e.error.is_transient())
            // Only while tries remain (`delay` is None once they are spent: answering Some
            // then would retry for as long as the server keeps saying 503).
            .adjust(|e: &Failure, delay| delay.map(|d| e.retry_after.map_or(d, |r| r.min(MAX_RETRY_AFTER))))
            .await
            .map_err(|f| f.error)
    }
}

/// An error with the server's `Retry-After`, if it sent one.
struct Failure {
    error: Error,
    retry_after: Option<Duration>,
}

async fn answer<T: serde::de::DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, Failure> {
    let resp = sent.map_err(|e| Failure {
        // A request that could not be built (a header with a control character) is ours to
        // fix: sending it again cannot help.
        error: if e.is_builder() {
            Error::Config(transport_text(&e))
        } else {
            Error::Transport(transport_text(&e))
        },
        retry_after: None,
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure { error: Error::Transport(transport_text(&e)), retry_after: None })?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| Failure { error: Error::Protocol(format!("{status}: {e}")), retry_after: None });
    }
    let error = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => Error::Api { status: status.as_u16(), error: b.error, field: b.field, message: b.message },
        Err(_) => Error::Api {
            status: status.as_u16(),
            error: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
            field: None,
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        },
    };
    let retry_after =
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() { retry_after } else { None };
    Err(Failure { error, retry_after })
}

/// A transport error with its causes (reqwest's own text names only the URL).
fn transport_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
