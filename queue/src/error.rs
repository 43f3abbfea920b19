//! The queue's error types: [`QueueError`] for failures of the queue itself (Redis,
//! PostgreSQL, configuration), and [`JobError`] for what a job handler reports, which carries
//! the decision about the job (retry with backoff, retry at a time, dead-letter, or wait without
//! spending an attempt).

use std::time::Duration;

/// A failure of the queue machinery. Callers on hot paths retry these after a backoff; they
/// never mean a job was lost.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused or could not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL refused or could not answer.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A script returned something it never returns: a bug or a foreign key in our namespace.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Bad configuration; every problem found.
    #[error("invalid queue configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A job could not be encoded for pushing.
    #[error("job {field} is invalid: {reason}")]
    InvalidJob {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// What a failed attempt means for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again after exponential backoff, unless out of attempts.
    Transient,
    /// Try again at exactly this delay from now (a provider's Retry-After), unless out of
    /// attempts.
    RetryAfter(Duration),
    /// Never retry: dead-letter now.
    Permanent,
    /// Put the job back after this delay without counting the attempt: the job could not run
    /// for a reason that is not its fault (a budget it needs is exhausted, its connection is
    /// parked awaiting re-authorisation).
    Defer(Duration),
}

/// The error a job handler returns. It classifies the failure for retry decisions, metrics and
/// the dead-letter record. `class` comes from a closed set chosen by the caller (for example
/// `throttled`, `unauthorized`, `rejected`, `transient`); `message` must already be redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct JobError {
    /// The decision.
    pub kind: FailureKind,
    /// A short machine-readable class.
    pub class: String,
    /// A human-readable, redacted message.
    pub message: String,
    /// The provider's HTTP status, where a provider answered.
    pub provider_status: Option<u16>,
    /// The provider's error code, where it gave one.
    pub provider_code: Option<String>,
}

impl JobError {
    fn new(kind: FailureKind, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            class: class.into(),
            message: message.into(),
            provider_status: None,
            provider_code: None,
        }
    }

    /// A failure worth retrying with backoff.
    pub fn transient(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureKind::Transient, class, message)
    }

    /// A failure to retry after exactly `after`.
    pub fn retry_after(after: Duration, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureKind::RetryAfter(after), class, message)
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureKind::Permanent, class, message)
    }

    /// Not a failure of the job: wait `after` and try again without spending an attempt.
    pub fn defer(after: Duration, class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureKind::Defer(after), class, message)
    }

    /// Attaches the provider's status and code.
    pub fn with_provider(mut self, status: Option<u16>, code: Option<String>) -> Self {
        self.provider_status = status;
        self.provider_code = code;
        self
    }
}
