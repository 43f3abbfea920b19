//! Background actors every worker process runs for its queue. Each is one loop with one job,
//! started by [`Maintenance::start`] and stopped together by [`Maintenance::stop`] (stopping
//! twice is harmless). None of them exits on a Redis or PostgreSQL error: it logs, counts,
//! and tries again at its next tick.
//!
//! 1. **heartbeat** renews this worker's leases (and the concurrency slots they hold) every
//!    `heartbeat_interval`, and registers the worker as alive;
//! 2. **reaper** reclaims jobs whose lease expired (any live worker does it, so a dead
//!    worker's jobs come back within `lease_ttl + reap_interval`), and buries poison pills in
//!    a task of its own (a slow or unreachable PostgreSQL never holds up reclaiming);
//! 3. **promoter** moves due delayed jobs to their lanes in bounded chunks, wakes lanes whose
//!    pause or rate window ended, and re-offers spare capacity to blocked lanes;
//! 4. **sweeper** finishes dead-letterings whose writer died between Redis and PostgreSQL;
//! 5. **gauges** samples queue depth and age into Prometheus gauges.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::Shared;
use crate::job::Lease;

/// Jobs reclaimed per reap call.
const REAP_BATCH: usize = 100;
/// How often queue gauges are sampled: one cheap script call, far below scrape cost.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The running actors.
pub(crate) struct Maintenance {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

async fn every<F, Fut>(token: CancellationToken, period: Duration, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => tick().await,
        }
    }
}

impl Maintenance {
    pub(crate) fn start(shared: Arc<Shared>) -> Self {
        let token = CancellationToken::new();
        let cfg = shared.queue.config().clone();
        let mut tasks = Vec::new();

        let s = shared.clone();
        tasks.push(tokio::spawn(every(token.clone(), cfg.heartbeat_interval, move || {
            let s = s.clone();
            async move { heartbeat(&s).await }
        })));

        let s = shared.clone();
        tasks.push(tokio::spawn(every(token.clone(), cfg.reap_interval, move || {
            let s = s.clone();
            async move { reap(&s).await }
        })));

        let s = shared.clone();
        tasks.push(tokio::spawn(every(token.clone(), cfg.promote_interval, move || {
            let s = s.clone();
            async move { promote(&s).await }
        })));

        let s = shared.clone();
        let sweep_every = (cfg.dying_grace / 2).max(Duration::from_millis(500));
        tasks.push(tokio::spawn(every(token.clone(), sweep_every, move || {
            let s = s.clone();
            async move { sweep(&s).await }
        })));

        let s = shared;
        tasks.push(tokio::spawn(every(token.clone(), GAUGE_INTERVAL, move || {
            let s = s.clone();
            async move { gauges(&s).await }
        })));

        Self { token, tasks }
    }

    /// Stops the actors: each finishes the round it is in, for at most `patience` in all (a
    /// sweep writing dead letters to an unreachable PostgreSQL would otherwise hold the exit);
    /// what is still running then is aborted. Nothing is lost by that: every round is repeatable.
    pub(crate) async fn stop(self, patience: Duration) {
        self.token.cancel();
        let deadline = tokio::time::Instant::now() + patience;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!(message = "a maintenance actor did not stop in time; aborted", waited = ?patience);
                t.abort();
            }
        }
    }
}

async fn heartbeat(s: &Shared) {
    let leases: Vec<Lease> = s.inflight.lock().values().map(|h| h.lease.clone()).collect();
    match s.queue.heartbeat(&s.config.worker_id, &leases).await {
        Ok(lost) => {
            for job in lost {
                metrics::counter!("crm_fleet_leases_lost_total").increment(1);
                tracing::warn!(message = "lease lost while running (reclaimed after a stall); the run is told to stop and its outcome will be refused",
                    job_id = %job);
                if let Some(lease) = leases.iter().find(|l| l.job == job) {
                    s.lost(lease);
                }
            }
        }
        Err(error) => {
            metrics::counter!("crm_fleet_queue_errors_total", "op" => "heartbeat").increment(1);
            tracing::warn!(message = "heartbeat failed", %error);
        }
    }
}

async fn reap(s: &Arc<Shared>) {
    loop {
        match s.queue.reap(&s.config.worker_id, REAP_BATCH).await {
            Ok(report) => {
                if report.requeued > 0 {
                    metrics::counter!("crm_fleet_jobs_orphaned_total").increment(report.requeued);
                    tracing::warn!(message = "reclaimed jobs from expired leases", count = report.requeued);
                }
                let n = report.requeued as usize + report.dying.len();
                if !report.dying.is_empty() {
                    metrics::counter!("crm_fleet_jobs_orphaned_total").increment(report.dying.len() as u64);
                    match s.queue.records(&report.dying).await {
                        // Written in a task of its own: reaping goes on whatever PostgreSQL does.
                        // One such task at a time; while one runs, the records wait in the
                        // `dying` outbox for it or for the sweeper.
                        Ok(records) if !s.burying.swap(true, Ordering::AcqRel) => {
                            let guard = Burying(s.clone());
                            tokio::spawn(async move { guard.0.bury(records).await });
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(message = "reading poisoned jobs failed; the sweeper will retry", %error)
                        }
                    }
                }
                if n < REAP_BATCH {
                    return;
                }
            }
            Err(error) => {
                metrics::counter!("crm_fleet_queue_errors_total", "op" => "reap").increment(1);
                tracing::warn!(message = "reap failed", %error);
                return;
            }
        }
    }
}

/// Clears `burying` when the reaper's dead-letter task ends, however it ends.
struct Burying(Arc<Shared>);

impl Drop for Burying {
    fn drop(&mut self) {
        self.0.burying.store(false, Ordering::Release);
    }
}

async fn promote(s: &Shared) {
    let chunk = s.queue.config().promote_chunk;
    loop {
        match s.queue.promote(chunk).await {
            Ok((_, _, true)) => continue,
            Ok(_) => return,
            Err(error) => {
                metrics::counter!("crm_fleet_queue_errors_total", "op" => "promote").increment(1);
                tracing::warn!(message = "promote failed", %error);
                return;
            }
        }
    }
}

async fn sweep(s: &Shared) {
    match s.queue.collect_dying(s.queue.config().dying_grace, 100).await {
        Ok(records) if !records.is_empty() => {
            tracing::info!(message = "finishing interrupted dead-letterings", count = records.len());
            s.bury(records).await;
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(message = "dying sweep failed", %error),
    }
}

async fn gauges(s: &Shared) {
    if let Ok(stats) = s.queue.stats().await {
        let q = s.queue.config().name.clone();
        for (state, v) in [
            ("ready", stats.ready),
            ("delayed", stats.delayed),
            ("leased", stats.leased),
            ("dying", stats.dying),
        ] {
            metrics::gauge!("crm_fleet_queue_depth", "queue" => q.clone(), "state" => state).set(v as f64);
        }
        metrics::gauge!("crm_fleet_queue_oldest_age_seconds", "queue" => q)
            .set(stats.oldest_ready_age_ms as f64 / 1000.0);
    }
}
