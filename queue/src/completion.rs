//! The completion layer: the outermost piece of every job's service stack (inside the
//! concurrency limit). It runs the job, catches a panic, and records the outcome through the
//! consumer before the worker slot is freed, so "slot free" always means "outcome recorded or
//! lease left to expire".

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures::FutureExt;
use tower::{Layer, Service};

use crate::backend::JobHandle;
use crate::consumer::{Shared, classify};
use crate::error::JobError;

/// Wraps a job service with outcome recording.
#[derive(Clone)]
pub struct CompletionLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CompletionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompletionLayer")
    }
}

impl CompletionLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for CompletionLayer {
    type Service = CompletionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CompletionService { inner, shared: self.shared.clone() }
    }
}

/// See [`CompletionLayer`].
#[derive(Clone)]
pub struct CompletionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for CompletionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompletionService")
    }
}

impl<S, Args, Res> Service<Task<Args>> for CompletionService<S>
where
    S: Service<Task<Args>, Response = Res>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError> + Send,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let handle = task.ctx().data().get::<JobHandle>().cloned();
        let shared = self.shared.clone();
        let fut = self.inner.call(task);
        Box::pin(async move {
            let started = Instant::now();
            let result = AssertUnwindSafe(fut).catch_unwind().await;
            let (outcome, ret): (Result<(), JobError>, Result<Res, BoxDynError>) = match result {
                Ok(Ok(res)) => (Ok(()), Ok(res)),
                Ok(Err(e)) => {
                    let e: BoxDynError = e.into();
                    (Err(classify(e.as_ref())), Err(e))
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".to_owned());
                    let err = JobError::transient("panic", format!("job panicked: {msg}"));
                    (Err(err.clone()), Err(Box::new(err) as BoxDynError))
                }
            };
            let Some(JobHandle(job, _)) = handle else {
                // Not from our backend (a test pushing tasks by hand): nothing to record.
                return ret;
            };
            metrics::histogram!("crm_fleet_job_duration_seconds", "job_type" => job.job_type.clone())
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = &outcome {
                tracing::info!(message = "job attempt failed", job_id = %job.lease.job, job_type = %job.job_type,
                    attempt = job.attempt, max_attempts = job.max_attempts, error_class = %e.class, error = %e.message);
            }
            shared.complete(&job, outcome).await;
            shared.unregister(&job.lease);
            ret
        })
    }
}
