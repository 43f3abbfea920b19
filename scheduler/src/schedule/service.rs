//! The lifecycle every scheduler actor shares: started once, stopped by [`Service::stop`],
//! which cancels the actor, waits for it to finish, and may be called any number of times.

use std::future::Future;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running actor.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Service {
    /// Spawns `run` with a token that is cancelled on stop.
    pub fn spawn<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(cancel.clone()));
        Self { name, cancel, task: Mutex::new(Some(task)) }
    }

    /// Stops the actor and waits for it; later calls return at once.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let task = self.task.lock().await.take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(message = "scheduler actor ended abnormally", actor = self.name, %error);
        }
    }

    /// Whether stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A dropped handle must not leave an actor ticking.
        self.cancel.cancel();
    }
}
