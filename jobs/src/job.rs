//! The jobs the queue carries for crm-fleet: one serde-tagged enum, so a worker decodes any job
//! from its payload and an unknown or malformed payload is dead-lettered by the queue with its
//! raw bytes instead of reaching a handler.

use serde::{Deserialize, Serialize};

/// The queue every crm-fleet job lives in by default. Actions and syncs share it (as lanes of
/// different priority) so they share fleet-wide budgets: in a Redis Cluster the budgets of a
/// queue live in its hash slot.
pub const DEFAULT_QUEUE: &str = "crm";

/// A crm-fleet job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CrmJob {
    /// A diagnostic job: smoke tests, benchmarks and `crmctl` checks of a live fleet.
    Probe(ProbeJob),
    /// Sync one object of one connection into PostgreSQL.
    Sync(SyncJob),
    /// Carry out one outbound CRM action.
    Action(ActionJob),
}

/// Every job type name [`CrmJob::job_type`] gives.
pub const JOB_TYPES: [&str; 3] = ["probe", "sync", "action"];

impl CrmJob {
    /// The job type name (labels metrics, selects the retry policy); one of [`JOB_TYPES`].
    pub fn job_type(&self) -> &'static str {
        match self {
            Self::Probe(_) => "probe",
            Self::Sync(_) => "sync",
            Self::Action(_) => "action",
        }
    }
}

/// A diagnostic job: optionally sleeps, optionally fails a number of times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProbeJob {
    /// Sleep this long (ms), checking for shutdown.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail with a transient error while the attempt number is at most this.
    #[serde(default)]
    pub fail_times: u32,
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// From the stored cursor (a full sync when there is none).
    #[default]
    Incremental,
    /// From scratch, whatever the cursor says.
    Full,
}

/// Sync (connection, object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJob {
    /// The connection.
    pub connection_id: uuid::Uuid,
    /// Which object.
    pub object: crate::providers::ObjectKind,
    /// Full or incremental.
    #[serde(default)]
    pub mode: SyncMode,
    /// What asked for it: `schedule`, `api`, `cli`, `replay`.
    #[serde(default)]
    pub trigger: String,
    /// The schedule tick that enqueued it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<chrono::DateTime<chrono::Utc>>,
}

/// Run one action (its parameters and idempotency record live in PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionJob {
    /// The action (also the job id).
    pub action_id: uuid::Uuid,
}
