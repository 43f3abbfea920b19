//! Manual syncs (`POST /v1/connections/{id}/sync`, `crmctl sync now`): one job per object,
//! under the same overlap rule as scheduled ticks — while a sync of the same (connection,
//! object) is queued or running, the trigger returns that sync's id as a duplicate instead of
//! enqueueing another.

use crm_jobs::job::SyncMode;
use crm_jobs::providers::ObjectKind;
use crm_queue::{JobId, PushOutcome, Queue};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One object's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Triggered {
    /// The object.
    pub object: ObjectKind,
    /// The job that will sync it: the new one, or the one already queued or running.
    pub job_id: JobId,
    /// Whether a sync was already queued or running (nothing new was enqueued).
    pub duplicate: bool,
}

/// Why a trigger failed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No such connection.
    #[error("no such connection")]
    NotFound,
    /// The connection is disabled.
    #[error("the connection is disabled")]
    Disabled,
    /// The connection's provider is unknown to this build.
    #[error("the connection's provider is not supported")]
    UnknownProvider,
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Redis failed.
    #[error("queue: {0}")]
    Queue(#[from] crm_queue::QueueError),
}

/// Enqueues a sync of each of `objects` for `connection`; `trigger` says who asked (`api`,
/// `cli`).
pub async fn sync_now(
    pool: &PgPool,
    queue: &Queue,
    connection: Uuid,
    objects: &[ObjectKind],
    mode: SyncMode,
    trigger: &str,
) -> Result<Vec<Triggered>, TriggerError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
        .bind(connection)
        .fetch_optional(pool)
        .await?;
    match status.as_deref() {
        None => return Err(TriggerError::NotFound),
        Some("disabled") => return Err(TriggerError::Disabled),
        Some(_) => {}
    }
    let target = crm_jobs::enqueue::target(pool, connection).await?.ok_or(TriggerError::UnknownProvider)?;
    let jobs = objects
        .iter()
        .map(|o| crm_jobs::enqueue::sync_job(&target, *o, mode, trigger))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = queue.push_bulk(jobs).await?;
    Ok(objects
        .iter()
        .zip(outcomes)
        .map(|(object, outcome)| Triggered {
            object: *object,
            job_id: outcome.id(),
            duplicate: matches!(outcome, PushOutcome::Duplicate(_)),
        })
        .collect())
}
