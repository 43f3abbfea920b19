//! # crm-worker
//!
//! The worker process as a library, so tests run the real wiring: [`App::build`] connects to
//! PostgreSQL and Redis, applies migrations, binds the metrics listener; [`App::run_until`]
//! consumes the queue until a shutdown signal.
//!
//! ## Shutdown sequence
//! 1. The signal arrives: stop fetching (the apalis monitor stops every worker).
//! 2. In-flight jobs run on, up to the grace period; their leases keep being renewed.
//! 3. Past the grace, whatever still runs is released: back to the head of its lane with the
//!    attempt refunded and the interruption recorded in its history (if Redis is unreachable
//!    then, the lease simply expires and another worker runs the job).
//! 4. Pending acks are flushed, maintenance actors stop, token refreshes in progress commit
//!    (at most 35 s), the metrics listener closes.
//! 5. The process exits 0.

pub mod config;
mod server;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use crm_jobs::job::CrmJob;
use crm_jobs::ops::{JobContext, handle};
use crm_queue::{Consumer, ConsumerConfig, PgDeadLetters, Queue, QueueConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{WorkerArgs, WorkerConfig};

/// A built worker process, ready to run.
pub struct App {
    config: WorkerConfig,
    consumer: Consumer,
    pool: sqlx::PgPool,
    listener: TcpListener,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl App {
    /// Connects everything the worker needs and binds its listener.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let metrics = crm_jobs::telemetry::init_metrics();
        let pool = crm_jobs::storage::connect(&config.database_url, 10, std::time::Duration::from_secs(60))
            .await
            .context("connecting to PostgreSQL")?;
        if config.migrate {
            let n = crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
            tracing::info!(message = "migrations applied", count = n);
        }
        let queue_config = QueueConfig::new(&config.redis_url, &config.queue)
            .with_prefix(&config.redis_prefix)
            .with_lease_ttl(config.lease_ttl);
        let queue = Queue::connect(queue_config).await.context("connecting to Redis")?;
        for warning in queue.server_warnings().await {
            tracing::warn!(message = "Redis setting can lose jobs", detail = %warning);
        }
        let consumer = Consumer::start(
            queue.clone(),
            PgDeadLetters::new(pool.clone(), config.queue.clone()),
            ConsumerConfig::new("worker", config.concurrency),
        );
        let listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics listener on {}", config.metrics_addr))?;
        Ok(Self { config, consumer, pool, listener, metrics })
    }

    /// Where /metrics, /healthz and /readyz are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.metrics_addr)
    }

    /// This process's worker id.
    pub fn worker_id(&self) -> &str {
        self.consumer.worker_id()
    }

    /// Runs until `shutdown` resolves, then shuts down as the crate docs describe.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { config, consumer, pool, listener, metrics } = self;
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(server::serve(
            listener,
            server::State { metrics, pool: pool.clone(), queue: consumer.queue().clone() },
            server_stop.clone(),
        ));
        let store = crm_jobs::auth::Store::new(pool.clone(), config.keys.clone());
        let http = crm_jobs::providers::Http::new().context("building the HTTP client")?;
        let ctx = JobContext {
            pool,
            queue: consumer.queue().clone(),
            tokens: crm_jobs::auth::TokenManager::new(store, http.client().clone()),
            clients: crm_jobs::providers::Clients::new(http),
        };
        let tokens = ctx.tokens.clone();
        let c = consumer.clone();
        let monitor = Monitor::new()
            .register(move |_restarts| {
                WorkerBuilder::new(c.worker_id())
                    .backend(c.backend::<CrmJob>())
                    .data(ctx.clone())
                    .build(handle)
            })
            .shutdown_timeout(config.shutdown_grace);
        tracing::info!(message = "consuming", worker_id = %consumer.worker_id(), queue = %config.queue,
            concurrency = config.concurrency, grace = ?config.shutdown_grace);
        let signal = async move {
            shutdown.await;
            tracing::info!(message = "shutdown requested: no new jobs; in-flight jobs may finish");
            Ok(())
        };
        if let Err(error) = monitor.run_with_signal(signal).await {
            tracing::error!(message = "worker monitor ended with errors", %error);
        }
        consumer.shutdown().await;
        // A token refresh a cut-off job started runs on in a task of its own: let it commit.
        tokens
            .finish_refreshes(crm_jobs::providers::http::DEFAULT_TIMEOUT + std::time::Duration::from_secs(5))
            .await;
        server_stop.cancel();
        let _ = server.await;
        tracing::info!(message = "worker stopped");
        Ok(())
    }
}
