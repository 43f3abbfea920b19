//! The worker side of the queue: what one worker process shares between its apalis backend,
//! its completion layer and its maintenance actors.
//!
//! A [`Consumer`] owns, for one process:
//! 1. a unique worker id (hostname, pid and a random suffix: two processes never share one,
//!    and a restart is a new worker, so its predecessor's leases are reaped, not adopted);
//! 2. the in-flight registry (job id → lease) that heartbeats renew and shutdown releases;
//! 3. the acker, which batches acks of concurrently finishing jobs into one script call;
//! 4. the outcome logic: success → ack; failure → retry with backoff, retry at a provider's
//!    time, defer without spending an attempt, or dead-letter (two-phase, through PostgreSQL);
//! 5. the maintenance actors (the private `maintenance` module: heartbeat, reaper, promoter).
//!
//! Invariant: a job's outcome is recorded or its lease is left to expire; it is never dropped.
//! Redis errors while recording are retried with backoff until the shutdown deadline; past
//! it the lease expires and another worker runs the job again (it is worse to lose a job than
//! to run it twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::client::Queue;
use crate::dead_letter::PgDeadLetters;
use crate::error::{FailureKind, JobError, QueueError};
use crate::job::{AttemptRecord, DeadReason, DyingJob, JobId, Lease, LeasedJob};
use crate::maintenance::Maintenance;
use crate::retry::RetryPolicies;

/// Longest redacted message kept per attempt.
const MAX_MESSAGE: usize = 2_000;
/// Acks per batch.
const ACK_BATCH: usize = 500;

/// How one worker process consumes a queue.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// This process's worker id; see [`worker_id`].
    pub worker_id: String,
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Backoff per job type.
    pub retry: RetryPolicies,
}

impl ConsumerConfig {
    /// A config with a fresh worker id named after `role`.
    pub fn new(role: &str, concurrency: usize) -> Self {
        Self { worker_id: worker_id(role), concurrency: concurrency.max(1), retry: RetryPolicies::default() }
    }
}

/// A worker id unique to this process start: `<role>-<host>-<pid>-<random>`.
pub fn worker_id(role: &str) -> String {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".to_owned());
    let suffix: u32 = rand::random();
    format!("{role}-{host}-{}-{suffix:08x}", std::process::id())
}

/// What became of a finished attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Acked.
    Done,
    /// Scheduled for another attempt after this delay.
    Retried(Duration),
    /// Put back without spending an attempt.
    Deferred(Duration),
    /// Dead-lettered.
    DeadLettered(DeadReason),
    /// The lease had been lost (the job was reclaimed); nothing was recorded by this worker.
    LeaseLost,
    /// Redis stayed unreachable past the shutdown deadline; the lease will expire.
    Abandoned,
}

/// A lease to ack and where to answer: `Some(accepted)`, or `None` when the ack was given up
/// (Redis unreachable past [`ACK_FLUSH`] at shutdown).
type AckRequest = (Lease, oneshot::Sender<Option<bool>>);

pub(crate) struct Shared {
    pub(crate) queue: Queue,
    pub(crate) dead_letters: PgDeadLetters,
    pub(crate) config: ConsumerConfig,
    pub(crate) inflight: Mutex<HashMap<JobId, Held>>,
    acker: Mutex<Option<mpsc::UnboundedSender<AckRequest>>>,
    /// Cancelled when recording should stop retrying (the shutdown deadline passed).
    pub(crate) deadline: CancellationToken,
    pub(crate) closing: AtomicBool,
    /// Set while the reaper's dead-letter writes run (in a task of their own, so that a slow
    /// PostgreSQL never holds up reclaiming expired leases).
    pub(crate) burying: AtomicBool,
}

/// A running job's lease, and the signal that tells its run the lease was lost.
pub(crate) struct Held {
    pub(crate) lease: Lease,
    pub(crate) lost: CancellationToken,
}

/// One worker process's consumer of a queue. Build the apalis backend with
/// [`Consumer::backend`], and call [`Consumer::shutdown`] after the apalis workers stopped.
#[derive(Clone)]
pub struct Consumer {
    pub(crate) shared: Arc<Shared>,
    maintenance: Arc<Mutex<Option<Maintenance>>>,
    acker_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("worker_id", &self.shared.config.worker_id).finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The decision for a failed attempt, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Ack,
    Retry { delay: Duration, refund: bool, error: JobError },
    Dead { reason: DeadReason, error: JobError },
}

/// Classifies a handler's error into a [`JobError`].
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> JobError {
    if let Some(e) = error.downcast_ref::<JobError>() {
        return e.clone();
    }
    if let Some(e) = error.downcast_ref::<apalis_core::error::AbortError>() {
        return JobError::permanent("aborted", e.to_string());
    }
    if let Some(e) = error.downcast_ref::<apalis_core::error::RetryAfterError>() {
        return JobError::retry_after(e.get_duration(), "retry_after", e.to_string());
    }
    // Errors wrapped by tower layers: look one level down.
    if let Some(source) = error.source()
        && source.downcast_ref::<JobError>().is_some()
    {
        return classify(source);
    }
    JobError::transient("error", error.to_string())
}

pub(crate) fn decide(job: &LeasedJob, error: JobError, retry: &RetryPolicies) -> Decision {
    let out_of_attempts = job.attempt >= job.max_attempts;
    match error.kind {
        FailureKind::Permanent => Decision::Dead { reason: DeadReason::Permanent, error },
        FailureKind::Defer(d) => Decision::Retry { delay: d, refund: true, error },
        FailureKind::RetryAfter(_) | FailureKind::Transient if out_of_attempts => {
            Decision::Dead { reason: DeadReason::MaxAttempts, error }
        }
        FailureKind::RetryAfter(d) => Decision::Retry { delay: d, refund: false, error },
        FailureKind::Transient => {
            let delay = retry.for_type(&job.job_type).delay(job.attempt);
            Decision::Retry { delay, refund: false, error }
        }
    }
}

/// How long [`Consumer::shutdown`] keeps retrying unflushed acks while Redis is unreachable,
/// and waits for the maintenance actors' rounds in progress.
pub const ACK_FLUSH: Duration = Duration::from_secs(10);

impl Consumer {
    /// Starts the consumer: the acker and the maintenance actors (heartbeat, reaper, promoter,
    /// dead-letter sweeper, gauges).
    pub fn start(queue: Queue, dead_letters: PgDeadLetters, config: ConsumerConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue,
            dead_letters,
            config,
            inflight: Mutex::new(HashMap::new()),
            acker: Mutex::new(Some(tx)),
            deadline: CancellationToken::new(),
            closing: AtomicBool::new(false),
            burying: AtomicBool::new(false),
        });
        let acker_task = tokio::spawn(run_acker(shared.clone(), rx));
        let maintenance = Maintenance::start(shared.clone());
        tracing::info!(message = "consumer started", worker_id = %shared.config.worker_id,
            queue = %shared.queue.config().name, concurrency = shared.config.concurrency);
        Self {
            shared,
            maintenance: Arc::new(Mutex::new(Some(maintenance))),
            acker_task: Arc::new(Mutex::new(Some(acker_task))),
        }
    }

    /// This process's worker id.
    pub fn worker_id(&self) -> &str {
        &self.shared.config.worker_id
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.shared.queue
    }

    /// Jobs this process holds right now.
    pub fn in_flight(&self) -> usize {
        self.shared.inflight.lock().len()
    }

    /// The apalis backend for jobs whose arguments decode from JSON as `Args`.
    pub fn backend<Args>(&self) -> crate::backend::RedisBackend<Args> {
        crate::backend::RedisBackend::new(self.shared.clone())
    }

    /// Finishes the shutdown after the apalis workers stopped (gracefully or at the grace
    /// deadline): releases every job still held (back to the head of its lane, attempt not
    /// counted, the interruption recorded), flushes acks, and stops the maintenance actors.
    /// Safe to call twice.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let leftover: Vec<Lease> = self.shared.inflight.lock().values().map(|h| h.lease.clone()).collect();
        if !leftover.is_empty() {
            tracing::warn!(message = "releasing jobs still running at shutdown", count = leftover.len());
        }
        let release = |lease: Lease| async move {
            let record = AttemptRecord {
                attempt: 0,
                started_at: 0,
                finished_at: now_ms(),
                worker: self.shared.config.worker_id.clone(),
                outcome: "released".into(),
                error_class: "shutdown".into(),
                message: "worker shut down before the job finished; returned to its lane".into(),
                provider_status: None,
                provider_code: None,
            };
            match self.shared.queue.retry(&lease, Duration::ZERO, Some(&record), true, true).await {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(message = "release failed; the lease will expire", job_id = %lease.job, %error)
                }
            }
            self.shared.inflight.lock().remove(&lease.job);
        };
        // At once: with Redis unreachable each may wait out the response timeout.
        futures::future::join_all(leftover.into_iter().map(release)).await;
        // Closing the ack channel ends the acker once it has flushed. Acks are retried while
        // Redis is away, but not past ACK_FLUSH: the process must exit, and an ack given up
        // loses nothing (the lease expires and the job runs again, at least once).
        self.shared.acker.lock().take();
        let acker = self.acker_task.lock().take();
        if let Some(mut acker) = acker
            && tokio::time::timeout(ACK_FLUSH, &mut acker).await.is_err()
        {
            tracing::error!(message = "acks not flushed at shutdown; giving them up, their leases will expire",
                waited = ?ACK_FLUSH);
            // Its pending replies are dropped with it: their jobs complete as `abandoned`.
            self.abandon_pending_writes();
            acker.abort();
        }
        let maintenance = self.maintenance.lock().take();
        if let Some(m) = maintenance {
            m.stop(ACK_FLUSH).await;
        }
        tracing::info!(message = "consumer stopped", worker_id = %self.shared.config.worker_id);
    }

    /// Stops retrying Redis writes of outcomes ([`Consumer::shutdown`] does, once acks have
    /// waited [`ACK_FLUSH`]).
    pub fn abandon_pending_writes(&self) {
        self.shared.deadline.cancel();
    }
}

async fn run_acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < ACK_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let leases: Vec<Lease> = batch.iter().map(|(l, _)| l.clone()).collect();
        let result = (|| shared.queue.ack(&leases))
            .retry(retry_forever())
            .when(|_| !shared.deadline.is_cancelled())
            .notify(|error: &QueueError, after| {
                tracing::warn!(message = "ack failed; retrying", %error, retry_in = ?after);
            })
            .await;
        match result {
            Ok(accepted) => {
                for ((_, reply), ok) in batch.into_iter().zip(accepted) {
                    let _ = reply.send(Some(ok));
                }
            }
            Err(error) => {
                tracing::error!(message = "acks abandoned at shutdown; leases will expire", %error, count = batch.len());
                for (_, reply) in batch {
                    let _ = reply.send(None);
                }
            }
        }
    }
}

pub(crate) fn retry_forever() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

impl Shared {
    /// Registers a run's lease for the heartbeat to renew; returns the token cancelled if the
    /// heartbeat finds the lease lost.
    ///
    /// A run of the same job still registered under another lease lost it (this process
    /// fetched the job again, so it was reclaimed): that run is told at once, since the
    /// heartbeat, renewing only the new lease, would never report the old one.
    pub(crate) fn register(&self, lease: &Lease) -> CancellationToken {
        let lost = CancellationToken::new();
        let held = Held { lease: lease.clone(), lost: lost.clone() };
        if let Some(old) = self.inflight.lock().insert(lease.job, held)
            && old.lease.id != lease.id
        {
            old.lost.cancel();
        }
        lost
    }

    /// Tells the run holding `lease` that it lost it (the heartbeat found the job reclaimed
    /// after a stall), so that it stops instead of working beside the run that took the job
    /// over. Only that lease's run: the job may be held again by this process under a new one.
    pub(crate) fn lost(&self, lease: &Lease) {
        if let Some(held) = self.inflight.lock().get(&lease.job).filter(|h| h.lease.id == lease.id) {
            held.lost.cancel();
        }
    }

    /// Forgets `lease` once its run is over. Only that lease: when the lease was lost (the
    /// handler outlived it) and this process fetched the job again, the entry is the new run's,
    /// and removing it would stop its heartbeat and get it reaped while it runs.
    pub(crate) fn unregister(&self, lease: &Lease) {
        let mut inflight = self.inflight.lock();
        if inflight.get(&lease.job).is_some_and(|held| held.lease.id == lease.id) {
            inflight.remove(&lease.job);
        }
    }

    fn attempt_record(&self, job: &LeasedJob, outcome: &str, error: &JobError) -> AttemptRecord {
        AttemptRecord {
            attempt: job.attempt,
            started_at: job.started_at_ms,
            finished_at: now_ms(),
            worker: self.config.worker_id.clone(),
            outcome: outcome.to_owned(),
            error_class: error.class.clone(),
            message: truncate(error.message.clone()),
            provider_status: error.provider_status,
            provider_code: error.provider_code.clone(),
        }
    }

    /// Records the outcome of an attempt. Never fails: see the module invariant.
    pub(crate) async fn complete(&self, job: &LeasedJob, result: Result<(), JobError>) -> Completion {
        let decision = match result {
            Ok(()) => Decision::Ack,
            Err(error) => decide(job, error, &self.config.retry),
        };
        let labels = [("job_type", job.job_type.clone())];
        let completion = match decision {
            Decision::Ack => {
                let sender = self.acker.lock().clone();
                let accepted = match sender {
                    Some(tx) => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send((job.lease.clone(), reply_tx)).is_ok() {
                            // No answer at all: the acker was aborted at shutdown.
                            reply_rx.await.unwrap_or(None)
                        } else {
                            self.ack_direct(&job.lease).await
                        }
                    }
                    None => self.ack_direct(&job.lease).await,
                };
                match accepted {
                    Some(true) => Completion::Done,
                    Some(false) => Completion::LeaseLost,
                    None => Completion::Abandoned,
                }
            }
            Decision::Retry { delay, refund, error } => {
                let outcome = if refund { "deferred" } else { "retry" };
                let record = self.attempt_record(job, outcome, &error);
                let front = refund && delay.is_zero();
                let res = (|| self.queue.retry(&job.lease, delay, Some(&record), refund, front))
                    .retry(retry_forever())
                    .when(|_| !self.deadline.is_cancelled())
                    .await;
                match res {
                    Ok(true) if refund => Completion::Deferred(delay),
                    Ok(true) => Completion::Retried(delay),
                    Ok(false) => Completion::LeaseLost,
                    Err(_) => Completion::Abandoned,
                }
            }
            Decision::Dead { reason, error } => {
                let record = self.attempt_record(job, "dead", &error);
                let res = (|| self.queue.dead_letter(&job.lease, &record, reason))
                    .retry(retry_forever())
                    .when(|_| !self.deadline.is_cancelled())
                    .await;
                match res {
                    Ok(Some(dying)) => {
                        self.bury(vec![dying]).await;
                        Completion::DeadLettered(reason)
                    }
                    Ok(None) => Completion::LeaseLost,
                    Err(_) => Completion::Abandoned,
                }
            }
        };
        let outcome = match &completion {
            Completion::Done => "success",
            Completion::Retried(_) => "retry",
            Completion::Deferred(_) => "deferred",
            Completion::DeadLettered(_) => "dead",
            Completion::LeaseLost => "lease_lost",
            Completion::Abandoned => "abandoned",
        };
        metrics::counter!("crm_fleet_jobs_completed_total", "outcome" => outcome, "job_type" => labels[0].1.clone())
            .increment(1);
        match completion {
            Completion::LeaseLost => {
                tracing::warn!(message = "outcome refused: lease lost (job was reclaimed)", job_id = %job.lease.job, attempt = job.attempt)
            }
            Completion::Abandoned => {
                tracing::warn!(message = "outcome not recorded: Redis unreachable at shutdown; the lease will expire and the job run again",
                    job_id = %job.lease.job, attempt = job.attempt)
            }
            _ => {}
        }
        completion
    }

    /// `Some(accepted)`, or `None` when given up at shutdown.
    async fn ack_direct(&self, lease: &Lease) -> Option<bool> {
        (|| self.queue.ack(std::slice::from_ref(lease)))
            .retry(retry_forever())
            .when(|_| !self.deadline.is_cancelled())
            .await
            .ok()
            .map(|v| v.first().copied().unwrap_or(false))
    }

    /// Dead-letters a job whose payload cannot be decoded, with its raw bytes.
    pub(crate) async fn bury_undecodable(&self, job: &LeasedJob, error: String) {
        let err = JobError::permanent("undecodable", format!("payload could not be decoded: {error}"));
        let record = self.attempt_record(job, "dead", &err);
        let res = (|| self.queue.dead_letter(&job.lease, &record, DeadReason::Undecodable))
            .retry(retry_forever())
            .when(|_| !self.deadline.is_cancelled())
            .await;
        if let Ok(Some(dying)) = res {
            self.bury(vec![dying]).await;
        }
        metrics::counter!("crm_fleet_jobs_completed_total", "outcome" => "dead", "job_type" => job.job_type.clone())
            .increment(1);
    }

    /// Writes dead letters to PostgreSQL, then removes them from Redis. A failed write leaves
    /// its record in the `dying` outbox for the sweeper. When PostgreSQL cannot be reached at
    /// all, the rest are left there too: each write would wait out the pool's acquire timeout
    /// in turn. (A write refused for its own record goes on to the next.)
    pub(crate) async fn bury(&self, jobs: Vec<DyingJob>) {
        let mut done = Vec::with_capacity(jobs.len());
        for job in &jobs {
            match self.dead_letters.record(job).await {
                Ok(_) => {
                    tracing::warn!(message = "job dead-lettered", job_id = %job.id, job_type = %job.job_type,
                        lane = %job.lane, reason = job.reason.as_str(), attempts = job.attempts);
                    done.push(job.id);
                }
                Err(error) => {
                    let unreachable = matches!(
                        &error,
                        QueueError::Postgres(
                            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
                        )
                    );
                    tracing::error!(message = "dead-letter write failed; kept in the dying outbox for the sweeper",
                        job_id = %job.id, postgres_unreachable = unreachable, %error);
                    if unreachable {
                        break;
                    }
                }
            }
        }
        if let Err(error) = self.queue.finalize(&done).await {
            tracing::warn!(message = "finalize failed; the sweeper will finish it", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobMeta;

    fn job(attempt: u32, max: u32) -> LeasedJob {
        LeasedJob {
            lease: Lease { job: JobId::new(), id: "1".into() },
            payload: vec![],
            job_type: "t".into(),
            attempt,
            max_attempts: max,
            enqueued_at_ms: 0,
            lane: "1:p:t".into(),
            meta: JobMeta::new(),
            orphans: 0,
            lease_expiry_ms: 0,
            started_at_ms: 0,
        }
    }

    /// A queue on a key prefix of its own (the shared Redis) with `lease_ttl`, and a consumer
    /// of it (PostgreSQL is never reached by these tests).
    async fn consumer_on_own_prefix(lease_ttl: Duration) -> (Queue, Consumer) {
        // The whole id: its first characters are a timestamp (v7), shared by tests started in
        // the same millisecond.
        let prefix = format!("crmtest-{}", JobId::new());
        let config = crate::QueueConfig::new("redis://127.0.0.1:6379", "q")
            .with_prefix(prefix)
            .with_lease_ttl(lease_ttl);
        let queue = Queue::connect(config).await.expect("redis reachable");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://postgres@127.0.0.1:5432/test")
            .expect("lazy pool");
        let consumer =
            Consumer::start(queue.clone(), PgDeadLetters::new(pool, "q"), ConsumerConfig::new("t", 2));
        (queue, consumer)
    }

    /// A run whose lease was lost, finishing after this process fetched the job again, must
    /// not unregister the new run's lease (the heartbeat renews only registered leases).
    #[tokio::test]
    async fn a_stale_runs_end_leaves_the_jobs_new_lease_registered() {
        let (queue, consumer) = consumer_on_own_prefix(crate::config::DEFAULT_LEASE_TTL).await;
        let job = JobId::new();
        let (first, second) = (Lease { job, id: "1".into() }, Lease { job, id: "2".into() });
        consumer.shared.register(&first);
        consumer.shared.register(&second);
        consumer.shared.unregister(&first);
        let held = consumer.shared.inflight.lock().get(&job).map(|h| h.lease.id.clone());
        assert_eq!(held.as_deref(), Some("2"), "the new run's lease is still renewed");
        consumer.shared.unregister(&second);
        assert_eq!(consumer.in_flight(), 0);
        consumer.shutdown().await;
        queue.destroy().await.expect("destroy");
    }

    /// The heartbeat tells a run that its lease is lost (here another holder took the job),
    /// and only that run: a later lease of the same job keeps running.
    #[tokio::test]
    async fn a_lost_lease_is_signalled_to_its_run_only() {
        let (queue, consumer) = consumer_on_own_prefix(Duration::from_millis(400)).await;
        let lane = crate::Lane::new("p", "t", crate::Priority::Normal);
        let id = queue.push(crate::NewJob::new("noop", lane, b"{}".to_vec())).await.expect("push").id();
        let leased = queue.fetch("t", 1).await.expect("fetch").pop().expect("the job");
        let lost = consumer.shared.register(&leased.lease);
        // Renewed while the lease is the job's.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!lost.is_cancelled(), "a held lease is not reported lost");
        // Another holder now (what a reclaim and a second fetch leave).
        let mut conn = queue.connection();
        let _: () = redis::cmd("HSET")
            .arg(queue.keys().job(&id.to_string()))
            .arg("k")
            .arg("someone-else")
            .query_async(&mut conn)
            .await
            .expect("hset");
        tokio::time::timeout(Duration::from_secs(2), lost.cancelled())
            .await
            .expect("told within a few heartbeats");

        // The same job fetched again by this process while its old run still goes: the old run
        // is told at once (the heartbeat renews only the new lease and would never report it),
        // and the new run is not told about the old one's loss.
        let stale = Lease { job: id, id: "old".into() };
        let fresh = Lease { job: id, id: "new".into() };
        let stale_lost = consumer.shared.register(&stale);
        let fresh_lost = consumer.shared.register(&fresh);
        assert!(stale_lost.is_cancelled(), "the old run learns its lease is gone");
        consumer.shared.lost(&stale);
        assert!(!fresh_lost.is_cancelled());
        consumer.shared.lost(&fresh);
        assert!(fresh_lost.is_cancelled());
        consumer.shared.unregister(&fresh);
        consumer.shutdown().await;
        queue.destroy().await.expect("destroy");
    }

    #[test]
    fn decisions_follow_the_error_kind_and_attempts() {
        let p = RetryPolicies::default();
        assert!(matches!(
            decide(&job(1, 3), JobError::transient("x", "y"), &p),
            Decision::Retry { refund: false, .. }
        ));
        assert!(matches!(
            decide(&job(3, 3), JobError::transient("x", "y"), &p),
            Decision::Dead { reason: DeadReason::MaxAttempts, .. }
        ));
        assert!(matches!(
            decide(&job(1, 3), JobError::permanent("x", "y"), &p),
            Decision::Dead { reason: DeadReason::Permanent, .. }
        ));
        let d = Duration::from_secs(30);
        assert_eq!(
            decide(&job(1, 3), JobError::retry_after(d, "x", "y"), &p),
            Decision::Retry { delay: d, refund: false, error: JobError::retry_after(d, "x", "y") }
        );
        // Deferring never dead-letters, even on the last attempt.
        assert!(matches!(
            decide(&job(3, 3), JobError::defer(d, "x", "y"), &p),
            Decision::Retry { refund: true, .. }
        ));
    }

    #[test]
    fn classify_understands_apalis_errors() {
        let abort = apalis_core::error::AbortError::new("bad input");
        assert_eq!(classify(&abort).kind, FailureKind::Permanent);
        let later = apalis_core::error::RetryAfterError::new("later", Duration::from_secs(5));
        assert_eq!(classify(&later).kind, FailureKind::RetryAfter(Duration::from_secs(5)));
        let io = std::io::Error::other("boom");
        assert_eq!(classify(&io).kind, FailureKind::Transient);
    }

    #[test]
    fn worker_ids_are_unique_per_start() {
        assert_ne!(worker_id("w"), worker_id("w"));
    }
}
