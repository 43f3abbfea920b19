//! Job handlers: the functions the worker runs for each [`CrmJob`] variant.

use std::time::Duration;

use apalis_core::task::attempt::Attempt;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use crm_queue::JobError;

use crate::job::{CrmJob, ProbeJob};

/// What handlers share: pools, clients, configuration. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    /// PostgreSQL.
    pub pool: sqlx::PgPool,
    /// The queue (pauses, rate tokens).
    pub queue: crm_queue::Queue,
    /// Valid credentials.
    pub tokens: crate::auth::TokenManager,
    /// Provider clients.
    pub clients: crate::providers::Clients,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobContext")
    }
}

/// Runs one job.
pub async fn handle(
    job: CrmJob,
    attempt: Attempt,
    id: TaskId,
    handle: Option<crm_queue::JobHandle>,
    worker: WorkerContext,
    ctx: Data<JobContext>,
) -> Result<(), JobError> {
    use tracing::Instrument;
    let span =
        tracing::info_span!("job", job.id = %id, job.type = job.job_type(), job.attempt = attempt.current());
    crate::telemetry::set_remote_parent(
        &span,
        handle.as_ref().and_then(|h| h.0.meta.get("traceparent").map(String::as_str)),
    );
    let own_lane = handle.as_ref().is_none_or(|h| crate::enqueue::is_connection_lane(&h.0.lane));
    let result = run(job, attempt, id, worker, handle.clone(), ctx).instrument(span).await;
    if own_lane { result } else { result.map_err(crate::enqueue::for_shared_lane) }
}

async fn run(
    job: CrmJob,
    attempt: Attempt,
    id: TaskId,
    worker: WorkerContext,
    handle: Option<crm_queue::JobHandle>,
    ctx: Data<JobContext>,
) -> Result<(), JobError> {
    match job {
        CrmJob::Probe(p) => probe(p, attempt.current(), &worker).await,
        CrmJob::Sync(s) => {
            let info = crate::sync::engine::AttemptInfo {
                job_id: id.to_string().parse().ok(),
                attempt: attempt.current() as u32,
                max_attempts: crate::enqueue::SYNC_MAX_ATTEMPTS,
            };
            // A sync stops before its next page when the worker stops, and when its lease was
            // lost (the job reclaimed after a stall): the run that took it over resumes from
            // the committed cursor, and two runs would fetch and write the same pages.
            let lease_lost = || handle.as_ref().is_some_and(crm_queue::JobHandle::lease_lost);
            let stopping = || {
                if lease_lost() {
                    Some(crate::sync::Stop::LeaseLost)
                } else {
                    worker.is_shutting_down().then_some(crate::sync::Stop::Shutdown)
                }
            };
            crate::sync::run(&ctx, &s, info, stopping).await.map(|_| ())
        }
        CrmJob::Action(a) => {
            crate::actions::exec::run(
                &ctx,
                a.action_id,
                attempt.current() as u32,
                crate::enqueue::ACTION_MAX_ATTEMPTS,
            )
            .await
        }
    }
}

async fn probe(job: ProbeJob, attempt: usize, worker: &WorkerContext) -> Result<(), JobError> {
    let mut left = Duration::from_millis(job.sleep_ms);
    while !left.is_zero() {
        let step = left.min(Duration::from_millis(100));
        tokio::time::sleep(step).await;
        left -= step;
        if worker.is_shutting_down() {
            // Keep running: a probe models a job that finishes what it started.
        }
    }
    if attempt as u32 <= job.fail_times {
        return Err(JobError::transient("probe", format!("planned failure {attempt} of {}", job.fail_times)));
    }
    Ok(())
}
