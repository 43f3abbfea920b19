//! A background task that runs a step now and then every period, until stopped: the shape
//! shared by the scheduler's housekeeping services (limits reload, fleet gauges, dead-letter
//! retention).
//!
//! Invariants: a step is never interrupted half-way by [`Periodic::stop`] (cancellation is
//! only observed between steps, so a purge or a reload is never left half-applied); a slow
//! step delays the next one rather than queueing a burst of catch-up steps; dropping the
//! handle cancels the task, `stop` also waits for it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running periodic task.
pub struct Periodic {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Runs `step` immediately and then every `every`.
    pub fn start<S, F>(every: Duration, mut step: S) -> Self
    where
        S: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => step().await,
                }
            }
        });
        Self { cancel, task: Some(task) }
    }

    /// Stops after the step in progress, if any; calling it twice is harmless.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_at_once_then_every_period_and_not_after_stop() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let mut p = Periodic::start(Duration::from_secs(10), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the first step runs at once");
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "then one per period");
        p.stop().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "none after stop");
        p.stop().await;
    }
}
