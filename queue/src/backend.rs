//! The apalis-core [`Backend`] over our queue.
//!
//! Fetching is demand-driven: apalis polls `poll_next` only when the service (which includes
//! our concurrency limit) has a free slot, and each fetch asks for as many jobs as there are
//! free slots, so a worker never leases jobs it cannot start now (a leased-but-waiting job
//! would hold budgets and hide work from other workers). When the queue has nothing
//! admissible, the backend blocks on the queue's wake-up list (`BLPOP`, bounded by
//! `idle_poll`), so a newly pushed job starts within milliseconds and a lost wake-up costs at
//! most one poll interval.
//!
//! Invariants:
//! * `poll_next` never returns an error: apalis-core ends a worker on any backend error, so a
//!   Redis failure is logged, counted, and retried after a backoff instead.
//! * a payload that does not decode as `Args` is dead-lettered with its raw bytes, off the
//!   polling path; it never reaches a handler and never stops the worker.
//! * on close, jobs fetched but not started go back to the head of their lanes with the
//!   attempt refunded.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tower::layer::util::Stack;
use tower::limit::ConcurrencyLimitLayer;

use crate::completion::CompletionLayer;
use crate::conn::RedisConn;
use crate::consumer::Shared;
use crate::error::QueueError;
use crate::job::LeasedJob;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Waits shorter than this sleep on a local timer instead of blocking in Redis (whose blocking
/// timeouts are only as precise as its 100 ms `hz` tick).
const SHORT_WAIT: Duration = Duration::from_millis(150);

/// The job a task came from; inserted into every task's extensions. Handlers may extract it
/// with `Data`-less access through `task.ctx().data()`, and the completion layer needs it.
#[derive(Debug, Clone)]
pub struct JobHandle(pub Arc<LeasedJob>, pub(crate) CancellationToken);

impl JobHandle {
    /// Whether this run's lease was lost: the heartbeat found the job reclaimed (this worker
    /// stalled past the lease), so another run has it or soon will, and this run's outcome will
    /// be refused. A long handler should stop at its next safe point (a sync before its next
    /// page) instead of working beside the run that took over.
    pub fn lease_lost(&self) -> bool {
        self.1.is_cancelled()
    }
}

type Fetched = (Vec<LeasedJob>, Option<Duration>);

enum State {
    Idle,
    Fetching(BoxFut<Result<Fetched, QueueError>>),
    Waiting(BoxFut<Option<RedisConn>>),
    Closing(BoxFut<()>),
    Closed,
}

/// An apalis backend that yields `Task<Args>` from our Redis queue.
pub struct RedisBackend<Args> {
    shared: Arc<Shared>,
    state: State,
    buffer: VecDeque<Task<Args>>,
    blocking: Option<RedisConn>,
    failures: u32,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> std::fmt::Debug for RedisBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("worker_id", &self.shared.config.worker_id)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<Args> RedisBackend<Args> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            state: State::Idle,
            buffer: VecDeque::new(),
            blocking: None,
            failures: 0,
            _args: PhantomData,
        }
    }
}

impl<Args: DeserializeOwned + Send + 'static> RedisBackend<Args> {
    fn accept(&mut self, job: LeasedJob) {
        let lost = self.shared.register(&job.lease);
        match serde_json::from_slice::<Args>(&job.payload) {
            Ok(args) => {
                let wait_s = (job.started_at_ms - job.enqueued_at_ms).max(0) as f64 / 1000.0;
                if job.attempt <= 1 {
                    metrics::histogram!("crm_fleet_job_wait_seconds", "job_type" => job.job_type.clone())
                        .record(wait_s);
                }
                let task = TaskBuilder::new(args)
                    .task_id(TaskId::from_string(job.lease.job.to_string()))
                    .attempt(job.attempt.saturating_sub(1) as usize)
                    .max_attempts(job.max_attempts as usize)
                    .lock_by(Some(self.shared.config.worker_id.clone()))
                    .data(JobHandle(Arc::new(job), lost))
                    .build();
                self.buffer.push_back(task);
            }
            Err(error) => {
                tracing::error!(message = "undecodable payload; dead-lettering it", job_id = %job.lease.job,
                    job_type = %job.job_type, %error);
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    shared.bury_undecodable(&job, error.to_string()).await;
                    shared.unregister(&job.lease);
                });
            }
        }
    }

    /// Waits for a push signal, at most until `wake` (the next time something on the clock
    /// becomes due) and at most `idle_poll`; or sleeps `backoff` after a failure.
    fn wait_future(
        &mut self,
        backoff: Option<Duration>,
        wake: Option<Duration>,
    ) -> BoxFut<Option<RedisConn>> {
        let queue = self.shared.queue.clone();
        let poll = queue.config().idle_poll;
        // A wake in the next few ms is served by polling again right away.
        let idle = wake.map_or(poll, |w| w.clamp(Duration::from_millis(2), poll));
        // Redis enforces a BLPOP timeout only at its `hz` granularity (100 ms by default), so a
        // short wait (the next rate token of a busy account) uses our own timer instead.
        let short = wake.is_some() && idle < SHORT_WAIT;
        let connect_timeout = queue.config().connect_timeout;
        let conn = self.blocking.take();
        Box::pin(async move {
            if let Some(delay) = backoff {
                tokio::time::sleep(delay).await;
                return conn;
            }
            if short {
                tokio::time::sleep(idle).await;
                return conn;
            }
            let mut conn = match conn {
                Some(c) => c,
                None => match RedisConn::connect_blocking(queue.target(), poll, connect_timeout).await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(message = "cannot open the wake-up connection", %error);
                        tokio::time::sleep(idle).await;
                        return None;
                    }
                },
            };
            match queue.wait_signal(&mut conn, idle).await {
                Ok(_) => Some(conn),
                Err(error) => {
                    tracing::debug!(message = "wake-up wait failed; polling instead", %error);
                    tokio::time::sleep(idle).await;
                    None
                }
            }
        })
    }

    fn close_future(&mut self) -> BoxFut<()> {
        let shared = self.shared.clone();
        let pending = match std::mem::replace(&mut self.state, State::Idle) {
            State::Fetching(f) => Some(f),
            _ => None,
        };
        let buffered: Vec<Arc<LeasedJob>> = self
            .buffer
            .drain(..)
            .filter_map(|t| t.ctx().data().get::<JobHandle>().map(|h| h.0.clone()))
            .collect();
        Box::pin(async move {
            let mut jobs: Vec<LeasedJob> = buffered.iter().map(|j| (**j).clone()).collect();
            if let Some(f) = pending
                && let Ok(fetched) = f.await
            {
                jobs.extend(fetched.0);
            }
            for job in jobs {
                let _ = shared.queue.retry(&job.lease, Duration::ZERO, None, true, true).await;
                shared.unregister(&job.lease);
            }
        })
    }
}

impl<Args: DeserializeOwned + Send + 'static> Backend for RedisBackend<Args> {
    type Task = Task<Args>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if let Some(task) = self.buffer.pop_front() {
                return Poll::Ready(Some(Ok(task)));
            }
            match &mut self.state {
                State::Idle => {
                    let held = self.shared.inflight.lock().len();
                    let free = self.shared.config.concurrency.saturating_sub(held).max(1);
                    let queue = self.shared.queue.clone();
                    let worker = self.shared.config.worker_id.clone();
                    self.state =
                        State::Fetching(Box::pin(async move { queue.fetch_with_wake(&worker, free).await }));
                }
                State::Fetching(f) => match f.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((jobs, wake))) => {
                        self.failures = 0;
                        let empty = jobs.is_empty();
                        for job in jobs {
                            self.accept(job);
                        }
                        self.state = if empty && self.buffer.is_empty() {
                            State::Waiting(self.wait_future(None, wake))
                        } else {
                            State::Idle
                        };
                    }
                    Poll::Ready(Err(error)) => {
                        self.failures = self.failures.saturating_add(1);
                        let backoff = Duration::from_millis(100 * 2u64.pow(self.failures.min(6)));
                        tracing::warn!(message = "fetch failed; retrying", %error, retry_in = ?backoff);
                        metrics::counter!("crm_fleet_queue_errors_total", "op" => "fetch").increment(1);
                        self.state = State::Waiting(self.wait_future(Some(backoff), None));
                    }
                },
                State::Waiting(f) => match f.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(conn) => {
                        self.blocking = conn;
                        self.state = State::Idle;
                    }
                },
                State::Closing(_) | State::Closed => return Poll::Ready(None),
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Closing(f) => match f.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.state = State::Closed,
                },
                _ => {
                    let f = self.close_future();
                    self.state = State::Closing(f);
                }
            }
        }
    }
}

impl<Args> BackendConfig for RedisBackend<Args> {
    type Args = Args;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Stack<CompletionLayer, ConcurrencyLimitLayer>;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Stack::new(
            CompletionLayer::new(self.shared.clone()),
            ConcurrencyLimitLayer::new(self.shared.config.concurrency),
        )
    }
}

/// A handler may take the [`JobHandle`] of its task as an argument (metadata such as the W3C
/// trace context travels there).
impl<Args: Sync> apalis_core::task::from_request::FromRequest<Task<Args>> for JobHandle {
    type Error = QueueError;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.ctx()
            .data()
            .get::<JobHandle>()
            .cloned()
            .ok_or_else(|| QueueError::Protocol("task was not fetched from crm-queue".into()))
    }
}
