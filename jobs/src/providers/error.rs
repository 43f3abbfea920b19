//! The provider error taxonomy. Every client maps its provider's statuses and bodies to one of
//! these variants; each variant carries what the caller needs to decide (wait how long, refresh,
//! dead-letter with which field, reconcile). [`ProviderError::to_job_error`] is the one place
//! that turns them into a queue decision.

use std::time::Duration;

use crm_queue::JobError;

/// Which limit a throttle hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleScope {
    /// A short rolling window (seconds): wait and go on.
    Burst,
    /// A daily or 24-hour allocation: park the account until it resets.
    Daily,
    /// Too many concurrent requests: back off briefly.
    Concurrency,
    /// The search endpoint's own limit.
    Search,
}

impl ThrottleScope {
    /// Closed-set label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::Daily => "daily",
            Self::Concurrency => "concurrency",
            Self::Search => "search",
        }
    }
}

/// What went wrong talking to a provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Rate or quota limit hit.
    #[error("throttled ({}) by the provider; retry after {retry_after:?}", scope.as_str())]
    Throttled {
        /// How long the provider asked us to wait, or our estimate.
        retry_after: Option<Duration>,
        /// Which limit.
        scope: ThrottleScope,
        /// HTTP status (429, or Salesforce's 403).
        status: u16,
        /// Provider code (`TEN_SECONDLY_ROLLING`, `REQUEST_LIMIT_EXCEEDED`, …).
        code: Option<String>,
    },
    /// The token is missing, expired or revoked: refresh (once), or re-authorise.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// Provider code.
        code: Option<String>,
        /// Redacted message.
        message: String,
    },
    /// The refresh token was rejected (`invalid_grant`): the connection needs re-authorisation.
    #[error("refresh token rejected ({code}); the connection needs re-authorisation")]
    InvalidGrant {
        /// OAuth error code.
        code: String,
    },
    /// Authenticated but not allowed (scope, permission, plan).
    #[error("forbidden: {message}")]
    Forbidden {
        /// Provider code.
        code: Option<String>,
        /// Redacted message.
        message: String,
    },
    /// The provider rejected the request's content; retrying will not help.
    #[error("rejected{}: {reason}", field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Rejected {
        /// The offending field, where the provider names it.
        field: Option<String>,
        /// Why.
        reason: String,
        /// Provider code.
        code: Option<String>,
        /// HTTP status.
        status: u16,
    },
    /// The object does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// Redacted message.
        message: String,
    },
    /// A duplicate: the provider already has such an object.
    #[error("conflict: {message}")]
    Conflict {
        /// The existing object's id, where the provider gives it.
        existing_id: Option<String>,
        /// Redacted message.
        message: String,
    },
    /// A failure worth retrying (5xx, connection refused, lock contention).
    #[error("transient provider failure{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        /// HTTP status, if a response came.
        status: Option<u16>,
        /// Provider-suggested wait, if any.
        retry_after: Option<Duration>,
        /// Redacted message.
        message: String,
    },
    /// A non-idempotent request was sent but no answer came (timeout, dropped connection): the
    /// write may or may not have happened. Reconcile before creating again.
    #[error("outcome unknown: {message}")]
    OutcomeUnknown {
        /// What happened.
        message: String,
    },
    /// The provider answered something we cannot read.
    #[error("unexpected provider response: {message}")]
    Protocol {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
    },
}

impl ProviderError {
    /// The closed-set class name used in metrics, dead letters and job errors.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::Unauthorized { .. } => "unauthorized",
            Self::InvalidGrant { .. } => "invalid_grant",
            Self::Forbidden { .. } => "forbidden",
            Self::Rejected { .. } => "rejected",
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Transient { .. } => "transient",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::Protocol { .. } => "protocol",
        }
    }

    /// HTTP status, where one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Throttled { status, .. }
            | Self::Rejected { status, .. }
            | Self::Protocol { status, .. } => Some(*status),
            Self::Transient { status, .. } => *status,
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::Conflict { .. } => Some(409),
            Self::InvalidGrant { .. } => Some(400),
            Self::OutcomeUnknown { .. } => None,
        }
    }

    /// Provider error code, where one came.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Throttled { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Rejected { code, .. } => code.clone(),
            Self::InvalidGrant { code } => Some(code.clone()),
            _ => None,
        }
    }

    /// The queue decision for this error when nothing better is known: throttles wait for
    /// their window (without spending an attempt), transient failures back off, everything the
    /// provider will refuse again is dead-lettered. Callers that can do better (refresh on
    /// 401, reconcile an outcome-unknown create, park on invalid grant) handle those first.
    pub fn to_job_error(&self) -> JobError {
        let msg = self.to_string();
        let err = match self {
            Self::Throttled { retry_after, .. } => {
                JobError::defer(retry_after.unwrap_or(Duration::from_secs(10)), self.class(), msg)
            }
            Self::Transient { retry_after: Some(d), .. } => JobError::retry_after(*d, self.class(), msg),
            Self::Transient { .. } | Self::OutcomeUnknown { .. } | Self::Protocol { .. } => {
                JobError::transient(self.class(), msg)
            }
            // A 401 that survived a refresh: likely revoked; one more try after backoff.
            Self::Unauthorized { .. } => JobError::transient(self.class(), msg),
            Self::InvalidGrant { .. }
            | Self::Forbidden { .. }
            | Self::Rejected { .. }
            | Self::NotFound { .. }
            | Self::Conflict { .. } => JobError::permanent(self.class(), msg),
        };
        err.with_provider(self.status(), self.code())
    }
}
