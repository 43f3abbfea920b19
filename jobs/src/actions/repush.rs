//! The re-push sweep: an action whose row says it is still to run (`queued` or `running`) but
//! that has no job in the queue is pushed again.
//!
//! How such an action comes about: `POST /v1/actions` commits the row and then pushes the job;
//! a Redis error, or the request's future dropped when its client went away, between the two
//! leaves the row with no job, and only a resend under the same idempotency key would push it.
//! Redis losing a job (a failover without fsync) does the same.
//!
//! Invariant: the sweep never makes a second job for an action. The job id is the action id,
//! and a push of an id that exists (queued, delayed, leased or dying) is a duplicate in the
//! queue; an action one of whose jobs was dead-lettered is left to the dead-letter queue
//! (replayed or not, as `POST /v1/actions` does), and an ended action is not read. Only rows
//! unchanged for [`DEFAULT_STALE`] are looked at, so a request in progress is not raced. Several
//! scheduler replicas may sweep at once: their pushes of one id are duplicates of each other.

use std::time::Duration;

use crm_queue::{PushOutcome, Queue};
use sqlx::PgPool;
use uuid::Uuid;

use crate::enqueue::{ACTION_MAX_ATTEMPTS, Target, action_job};
use crate::periodic::Periodic;

/// How long an open action's row must be unchanged before the sweep looks at it.
pub const DEFAULT_STALE: Duration = Duration::from_secs(300);

/// How often the sweep runs.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

/// At most this many actions a sweep.
pub const BATCH: i64 = 500;

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum RepushError {
    /// PostgreSQL.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Redis.
    #[error("queue: {0}")]
    Queue(#[from] crm_queue::QueueError),
}

#[derive(sqlx::FromRow)]
struct Open {
    id: Uuid,
    updated_at: chrono::DateTime<chrono::Utc>,
    connection_id: Uuid,
    tenant_id: String,
    provider: String,
    account_id: String,
    traceparent: Option<String>,
}

/// Where a sweep goes on from: the last action it looked at, in (`updated_at`, id) order.
pub type Cursor = Option<(chrono::DateTime<chrono::Utc>, Uuid)>;

/// One sweep of up to `limit` open actions after `after`: pushes the job of each one unchanged for
/// `stale` that has none and no dead letter. Returns how many jobs were pushed (the others were
/// in the queue already) and where the next sweep goes on (`None`: from the start again, this
/// one reached the end). Paging on, rather than reading the oldest 500 each time, keeps a
/// backlog of open actions (a parked connection's) from hiding the ones after it.
pub async fn sweep(
    pool: &PgPool,
    queue: &Queue,
    stale: Duration,
    after: Cursor,
    limit: i64,
) -> Result<(u64, Cursor), RepushError> {
    let open: Vec<Open> = sqlx::query_as(
        "SELECT a.id, a.updated_at, a.connection_id, c.tenant_id, c.provider, c.account_id, a.traceparent \
         FROM actions a JOIN connections c ON c.id = a.connection_id \
         WHERE a.state IN ('queued', 'running') AND a.updated_at < now() - make_interval(secs => $1) \
           AND ($3::timestamptz IS NULL OR (a.updated_at, a.id) > ($3, $4)) \
           AND NOT EXISTS (SELECT 1 FROM dead_letters d \
                           WHERE d.job_type = 'action' AND d.payload_json ->> 'action_id' = a.id::text) \
         ORDER BY a.updated_at, a.id LIMIT $2",
    )
    .bind(stale.as_secs_f64())
    .bind(limit)
    .bind(after.map(|a| a.0))
    .bind(after.map_or(Uuid::nil(), |a| a.1))
    .fetch_all(pool)
    .await?;
    let next = if open.len() as i64 == limit { open.last().map(|a| (a.updated_at, a.id)) } else { None };
    let mut jobs = Vec::with_capacity(open.len());
    let mut pushing = Vec::with_capacity(open.len());
    for a in &open {
        let Ok(provider) = a.provider.parse() else {
            tracing::warn!(message = "open action of an unknown provider; not re-pushed", action = %a.id, provider = %a.provider);
            continue;
        };
        let target = Target {
            tenant: a.tenant_id.clone(),
            provider,
            connection: a.connection_id,
            account: a.account_id.clone(),
        };
        let mut job = action_job(&target, a.id, ACTION_MAX_ATTEMPTS)?;
        if let Some(tp) = &a.traceparent {
            job = job.meta("traceparent", tp.clone());
        }
        jobs.push(job);
        pushing.push(a);
    }
    let mut pushed = 0;
    for (outcome, a) in queue.push_bulk(jobs).await?.iter().zip(pushing) {
        if let PushOutcome::Enqueued(_) = outcome {
            pushed += 1;
            tracing::warn!(message = "action had no job; pushed it again", action = %a.id,
                connection = %a.connection_id, tenant = %a.tenant_id);
        }
    }
    if pushed > 0 {
        metrics::counter!("crm_fleet_actions_repushed_total").increment(pushed);
    }
    Ok((pushed, next))
}

/// The running sweep.
pub struct Repush(Periodic);

impl Repush {
    /// Sweeps now and then every `every`, until [`Repush::stop`].
    pub fn start(pool: PgPool, queue: Queue, stale: Duration, every: Duration) -> Self {
        let cursor = std::sync::Arc::new(parking_lot::Mutex::new(None));
        Self(Periodic::start(every, move || {
            let (pool, queue, cursor) = (pool.clone(), queue.clone(), cursor.clone());
            async move {
                let after = *cursor.lock();
                match sweep(&pool, &queue, stale, after, BATCH).await {
                    Ok((_, next)) => *cursor.lock() = next,
                    Err(error) => {
                        tracing::warn!(message = "action re-push sweep failed; retrying next period", %error)
                    }
                }
            }
        }))
    }

    /// Stops (after a sweep in progress).
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}
