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
const BATCH: i64 = 500;

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
    connection_id: Uuid,
    tenant_id: String,
    provider: String,
    account_id: String,
    traceparent: Option<String>,
}

/// One sweep: pushes the job of every open action unchanged for `stale` that has none and no
/// dead letter. Returns how many jobs were pushed (the others were in the queue already).
pub async fn sweep(pool: &PgPool, queue: &Queue, stale: Duration) -> Result<u64, RepushError> {
    let open: Vec<Open> = sqlx::query_as(
        "SELECT a.id, a.connection_id, c.tenant_id, c.provider, c.account_id, a.traceparent \
         FROM actions a JOIN connections c ON c.id = a.connection_id \
         WHERE a.state IN ('queued', 'running') AND a.updated_at < now() - make_interval(secs => $1) \
           AND NOT EXISTS (SELECT 1 FROM dead_letters d \
                           WHERE d.job_type = 'action' AND d.payload_json ->> 'action_id' = a.id::text) \
         ORDER BY a.updated_at LIMIT $2",
    )
    .bind(stale.as_secs_f64())
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut jobs = Vec::with_capacity(open.len());
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
    }
    let mut pushed = 0;
    for (outcome, a) in queue.push_bulk(jobs).await?.iter().zip(&open) {
        if let PushOutcome::Enqueued(_) = outcome {
            pushed += 1;
            tracing::warn!(message = "action had no job; pushed it again", action = %a.id,
                connection = %a.connection_id, tenant = %a.tenant_id);
        }
    }
    if pushed > 0 {
        metrics::counter!("crm_fleet_actions_repushed_total").increment(pushed);
    }
    Ok(pushed)
}

/// The running sweep.
pub struct Repush(Periodic);

impl Repush {
    /// Sweeps now and then every `every`, until [`Repush::stop`].
    pub fn start(pool: PgPool, queue: Queue, stale: Duration, every: Duration) -> Self {
        Self(Periodic::start(every, move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            async move {
                if let Err(error) = sweep(&pool, &queue, stale).await {
                    tracing::warn!(message = "action re-push sweep failed; retrying next period", %error);
                }
            }
        }))
    }

    /// Stops (after a sweep in progress).
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}
