//! What goes into the queue and what comes out of it.
//!
//! A job belongs to a [`Lane`]: (priority, provider, partition, tenant). Ready jobs wait in
//! their lane; fetch serves lanes in weighted round-robin and admits a job only if every budget
//! its lane names has room. The queue treats provider, partition and tenant as opaque labels: it
//! knows nothing of CRMs.
//!
//! Invariant: **all jobs of one lane need the same budgets.** Admission reads the budgets from
//! the lane, not from the job (that is what lets a blocked lane wait as one entry), and a push
//! rewrites them. So producers whose jobs of one (provider, tenant) need different budgets (a
//! tenant with two accounts at one CRM, each with its own rate and pauses) give them different
//! partitions; otherwise one account's jobs would be admitted against the other's budgets.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::QueueError;

/// A job's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Scheduling class of a lane. Actions (`High`) go before syncs (`Normal`), with aging so that
/// syncs cannot starve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first (outbound actions).
    High,
    /// Served when no high-priority lane is ready, or when it has aged (syncs).
    #[default]
    Normal,
}

impl Priority {
    fn class(self) -> &'static str {
        match self {
            Self::High => "0",
            Self::Normal => "1",
        }
    }
}

/// The lane a job waits in and the budgets it needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// Provider label (opaque to the queue; no `:`).
    pub provider: String,
    /// Tenant label (opaque to the queue).
    pub tenant: String,
    /// What separates lanes of one (provider, tenant) whose jobs need different budgets, such
    /// as a connection (opaque to the queue; no `:`, `/` or whitespace). Each lane is its own
    /// fairness share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Scheduling class.
    pub priority: Priority,
    /// Budgets a job of this lane must get before it runs. `c:<name>` is a concurrency budget
    /// (slots held for the job's whole run), `r:<name>` a rate budget (one token per job), any
    /// other name can only be paused. Limits are set with [`crate::Queue::set_limit`].
    pub budgets: Vec<String>,
    /// Key of this lane's fairness weight (looked up as `w:<key>`, default weight 1).
    pub weight_key: Option<String>,
}

impl Lane {
    /// A lane with no budgets and default weight.
    pub fn new(provider: impl Into<String>, tenant: impl Into<String>, priority: Priority) -> Self {
        Self {
            provider: provider.into(),
            tenant: tenant.into(),
            partition: None,
            priority,
            budgets: Vec::new(),
            weight_key: None,
        }
    }

    /// Sets the partition (see [`Lane::partition`]).
    pub fn partition(mut self, key: impl Into<String>) -> Self {
        self.partition = Some(key.into());
        self
    }

    /// Adds a budget.
    pub fn budget(mut self, name: impl Into<String>) -> Self {
        self.budgets.push(name.into());
        self
    }

    /// Sets the weight key.
    pub fn weight_key(mut self, key: impl Into<String>) -> Self {
        self.weight_key = Some(key.into());
        self
    }

    /// The lane's id in Redis: `<class>:<provider>:<tenant>`, or
    /// `<class>:<provider>/<partition>:<tenant>` with a partition. The tenant comes last because
    /// it alone may contain `:`.
    pub fn id(&self) -> String {
        match &self.partition {
            None => format!("{}:{}:{}", self.priority.class(), self.provider, self.tenant),
            Some(p) => format!("{}:{}/{}:{}", self.priority.class(), self.provider, p, self.tenant),
        }
    }

    pub(crate) fn class(&self) -> &'static str {
        self.priority.class()
    }

    pub(crate) fn validate(&self) -> Result<(), QueueError> {
        if self.provider.is_empty()
            || self.provider.contains([':', '/'])
            || self.provider.chars().any(char::is_whitespace)
        {
            return Err(QueueError::InvalidJob {
                field: "lane.provider",
                reason: format!("{:?} must be non-empty without ':', '/' or whitespace", self.provider),
            });
        }
        if let Some(p) = self
            .partition
            .as_ref()
            .filter(|p| p.is_empty() || p.contains([':', '/']) || p.chars().any(char::is_whitespace))
        {
            return Err(QueueError::InvalidJob {
                field: "lane.partition",
                reason: format!("{p:?} must be non-empty without ':', '/' or whitespace"),
            });
        }
        if self.tenant.is_empty() || self.tenant.chars().any(char::is_whitespace) {
            return Err(QueueError::InvalidJob {
                field: "lane.tenant",
                reason: format!("{:?} must be non-empty without whitespace", self.tenant),
            });
        }
        if let Some(b) = self.budgets.iter().find(|b| b.is_empty() || b.chars().any(char::is_whitespace)) {
            return Err(QueueError::InvalidJob {
                field: "lane.budgets",
                reason: format!("budget {b:?} must be non-empty without whitespace"),
            });
        }
        Ok(())
    }
}

/// A lane id split back into its labels (see [`Lane::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLabels<'a> {
    /// Scheduling class.
    pub priority: Priority,
    /// Provider label.
    pub provider: &'a str,
    /// Partition, if the lane has one.
    pub partition: Option<&'a str>,
    /// Tenant label.
    pub tenant: &'a str,
}

impl LaneLabels<'_> {
    /// A lane with these labels and the given budgets (none here: budgets are not in the id).
    pub fn to_lane(&self) -> Lane {
        let lane = Lane::new(self.provider, self.tenant, self.priority);
        match self.partition {
            Some(p) => lane.partition(p),
            None => lane,
        }
    }
}

/// Splits a lane id back into its labels; `None` when it is not one [`Lane::id`] makes.
pub fn parse_lane_id(id: &str) -> Option<LaneLabels<'_>> {
    let mut parts = id.splitn(3, ':');
    let priority = match parts.next()? {
        "0" => Priority::High,
        "1" => Priority::Normal,
        _ => return None,
    };
    let labels = parts.next()?;
    let tenant = parts.next()?;
    let (provider, partition) = match labels.split_once('/') {
        Some((provider, partition)) => (provider, Some(partition)),
        None => (labels, None),
    };
    Some(LaneLabels { priority, provider, partition, tenant })
}

/// Free-form string metadata carried with a job (trace context, idempotency key, …).
pub type JobMeta = BTreeMap<String, String>;

/// A job to push.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (fresh by default).
    pub id: JobId,
    /// Job type name; selects the retry policy and labels metrics.
    pub job_type: String,
    /// Lane and budgets.
    pub lane: Lane,
    /// Encoded arguments.
    pub payload: Vec<u8>,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// While a job with this key is queued or running, pushing another is a no-op that returns
    /// the existing job's id.
    pub unique_key: Option<String>,
    /// Run no earlier than this delay from now.
    pub delay: Duration,
    /// Metadata.
    pub meta: JobMeta,
    /// What makes a later push a duplicate of this one, whether or not the job is still in the
    /// queue (a scheduler tick must enqueue at most once).
    pub dedupe: Option<Dedupe>,
}

/// How a push is recognised as one decided before, whether or not its job is still queued.
/// Either way the push that takes the key is *decided*: refused by its unique key or not, a
/// later push with the key is a duplicate (of itself: its answer names its own id, or the id
/// that took a [`Dedupe::For`] key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedupe {
    /// The same key within `ttl` of the push that took it (`d:<key>`, one expiring Redis key
    /// per push).
    For {
        /// The key.
        key: String,
        /// How long it is remembered (at least 1 ms).
        ttl: Duration,
    },
    /// The same key with a stamp at or before the highest one pushed (`wm`, one hash field per
    /// key, kept until [`crate::Queue::forget_marks`]). For a series pushed in stamp order, such
    /// as a schedule's ticks: memory per series, not per push, and no window after which a
    /// replayed push gets through.
    UpTo {
        /// The series.
        key: String,
        /// This push's place in it (a tick's epoch milliseconds; under 10^15 in magnitude).
        stamp: i64,
    },
}

impl NewJob {
    /// A job with a fresh id, the default attempts, no delay and no unique key.
    pub fn new(job_type: impl Into<String>, lane: Lane, payload: Vec<u8>) -> Self {
        Self {
            id: JobId::new(),
            job_type: job_type.into(),
            lane,
            payload,
            max_attempts: crate::config::DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            delay: Duration::ZERO,
            meta: JobMeta::new(),
            dedupe: None,
        }
    }

    /// A job whose payload is `args` encoded as JSON.
    pub fn json<T: Serialize>(job_type: impl Into<String>, lane: Lane, args: &T) -> Result<Self, QueueError> {
        let payload = serde_json::to_vec(args)
            .map_err(|e| QueueError::InvalidJob { field: "payload", reason: e.to_string() })?;
        Ok(Self::new(job_type, lane, payload))
    }

    /// Sets the id.
    pub fn with_id(mut self, id: JobId) -> Self {
        self.id = id;
        self
    }

    /// Sets max attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets a dedupe key remembered for `ttl` after the push, whatever becomes of the job.
    pub fn dedupe_key(mut self, key: impl Into<String>, ttl: Duration) -> Self {
        self.dedupe = Some(Dedupe::For { key: key.into(), ttl });
        self
    }

    /// Makes this push a duplicate if a push of the series `key` with a stamp at or after
    /// `stamp` was decided before (see [`Dedupe::UpTo`]).
    pub fn dedupe_up_to(mut self, key: impl Into<String>, stamp: i64) -> Self {
        self.dedupe = Some(Dedupe::UpTo { key: key.into(), stamp });
        self
    }

    /// Sets the delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), QueueError> {
        self.lane.validate()?;
        if self.job_type.is_empty() {
            return Err(QueueError::InvalidJob { field: "job_type", reason: "must be non-empty".into() });
        }
        if self.max_attempts == 0 {
            return Err(QueueError::InvalidJob {
                field: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        // Redis keeps expiries in whole milliseconds; a TTL under one would be sent as 0,
        // which `SET … PX` refuses half-way through a bulk push.
        match &self.dedupe {
            Some(Dedupe::For { key, ttl })
                if key.is_empty()
                    || *ttl < Duration::from_millis(1)
                    || ttl.as_millis() >= 1_000_000_000_000_000 =>
            {
                return Err(QueueError::InvalidJob {
                    field: "dedupe",
                    reason: "key must be non-empty and ttl at least 1 ms (and under 10^15 ms)".into(),
                });
            }
            // Stamps travel as at most 15 digits: exact in the script's Lua numbers.
            Some(Dedupe::UpTo { key, stamp })
                if key.is_empty() || stamp.unsigned_abs() >= 1_000_000_000_000_000 =>
            {
                return Err(QueueError::InvalidJob {
                    field: "dedupe",
                    reason: "key must be non-empty and the stamp under 10^15 in magnitude".into(),
                });
            }
            _ => {}
        }
        if self.unique_key.as_deref() == Some("") {
            return Err(QueueError::InvalidJob {
                field: "unique_key",
                reason: "must be non-empty when set".into(),
            });
        }
        Ok(())
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The job was stored.
    Enqueued(JobId),
    /// A job with the same unique key (or id) is queued or running; nothing was stored.
    Duplicate(JobId),
}

impl PushOutcome {
    /// The id of the job that will run.
    pub fn id(&self) -> JobId {
        match self {
            Self::Enqueued(id) | Self::Duplicate(id) => *id,
        }
    }

    /// Whether the push was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate(_))
    }
}

/// The proof that a worker holds a job: presented on ack, retry and dead-letter, and refused
/// once the job has been reclaimed (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// The lease id, unique per fetch.
    pub id: String,
}

/// A job handed out by fetch.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    /// Lease (job id + lease id).
    pub lease: Lease,
    /// Encoded arguments.
    pub payload: Vec<u8>,
    /// Job type.
    pub job_type: String,
    /// This attempt's number (1 for the first run).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When the job was first enqueued (ms since the epoch, Redis clock).
    pub enqueued_at_ms: i64,
    /// Lane id.
    pub lane: String,
    /// Metadata.
    pub meta: JobMeta,
    /// Times the job was orphaned so far.
    pub orphans: u32,
    /// When the lease expires unless renewed (ms, Redis clock).
    pub lease_expiry_ms: i64,
    /// When the lease was granted (ms, Redis clock); the attempt's start.
    pub started_at_ms: i64,
}

/// One attempt in a job's history, as stored in Redis and in the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number.
    pub attempt: u32,
    /// Start (ms since the epoch).
    pub started_at: i64,
    /// End (ms since the epoch).
    pub finished_at: i64,
    /// Worker id.
    pub worker: String,
    /// `retry`, `dead`, `orphaned`, `deferred`, `released`.
    pub outcome: String,
    /// Error class from a closed set.
    pub error_class: String,
    /// Redacted message.
    pub message: String,
    /// Provider HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
    /// Provider error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
}

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Out of attempts.
    MaxAttempts,
    /// A non-retryable failure.
    Permanent,
    /// Orphaned too often: it kills its worker.
    Poison,
    /// Its payload could not be decoded.
    Undecodable,
}

impl DeadReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::Permanent => "permanent",
            Self::Poison => "poison",
            Self::Undecodable => "undecodable",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "max_attempts" => Self::MaxAttempts,
            "permanent" => Self::Permanent,
            "poison" => Self::Poison,
            "undecodable" => Self::Undecodable,
            _ => return None,
        })
    }
}

/// A job on its way to the dead-letter table: everything Redis knew about it.
#[derive(Debug, Clone)]
pub struct DyingJob {
    /// Id.
    pub id: JobId,
    /// Raw payload bytes (possibly undecodable).
    pub payload: Vec<u8>,
    /// Job type.
    pub job_type: String,
    /// Lane id.
    pub lane: String,
    /// Attempts made.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Orphanings.
    pub orphans: u32,
    /// First enqueued (ms).
    pub enqueued_at_ms: i64,
    /// Unique key, if any.
    pub unique_key: Option<String>,
    /// Metadata.
    pub meta: JobMeta,
    /// Why it died.
    pub reason: DeadReason,
    /// When it died (ms).
    pub dead_at_ms: i64,
    /// Every recorded attempt.
    pub history: Vec<AttemptRecord>,
}
