//! The scheduler process as a library: the HTTP listener (`/metrics`, `/healthz`, `/readyz`
//! and the scheduling API of [`crate::schedule::api`]) and the lease + tick engine of
//! [`crate::schedule`], started and stopped together.
//!
//! Shutdown: stop ticking → give the lease up (a standby takes over within its retry
//! interval) → finish in-flight HTTP requests → return.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL(s).
    pub redis_url: String,
    /// API listener.
    pub api_addr: SocketAddr,
    /// Queue name.
    pub queue: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Apply migrations at start.
    pub migrate: bool,
    /// Lease and tick engine settings (the lease's database URL and API address are filled in
    /// by [`Scheduler::build`]).
    pub schedule: crate::schedule::ScheduleConfig,
}

#[derive(Clone)]
struct State {
    metrics: PrometheusHandle,
    pool: sqlx::PgPool,
    queue: crm_queue::Queue,
}

/// A built scheduler, ready to run.
pub struct Scheduler {
    listener: TcpListener,
    state: State,
    schedule: crate::schedule::ScheduleConfig,
}

impl Scheduler {
    /// Connects and binds.
    pub async fn build(config: SchedulerConfig) -> anyhow::Result<Self> {
        let metrics = crm_jobs::telemetry::init_metrics();
        let pool = crm_jobs::storage::connect(&config.database_url, 10, std::time::Duration::from_secs(60))
            .await
            .context("connecting to PostgreSQL")?;
        if config.migrate {
            crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
        }
        let queue = crm_queue::Queue::connect(
            crm_queue::QueueConfig::new(&config.redis_url, &config.queue).with_prefix(&config.redis_prefix),
        )
        .await
        .context("connecting to Redis")?;
        let listener = TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("binding the API listener on {}", config.api_addr))?;
        let mut schedule = config.schedule;
        schedule.lease.database_url = config.database_url;
        schedule.lease.api_addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Ok(Self { listener, state: State { metrics, pool, queue }, schedule })
    }

    /// The bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Ticks (while leading) and serves until `shutdown` resolves, then stops in order.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let scheduling = std::sync::Arc::new(crate::schedule::Scheduling::start(
            self.schedule,
            self.state.pool.clone(),
            self.state.queue.clone(),
        ));
        let api = crate::schedule::api::router(crate::schedule::api::ApiState {
            pool: self.state.pool.clone(),
            queue: self.state.queue.clone(),
        });
        let app = Router::new()
            .route("/metrics", get(|AxumState(s): AxumState<State>| async move { s.metrics.render() }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.state)
            .merge(api);
        let stopping = scheduling.clone();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.stop().await;
            })
            .await
            .context("serving the API");
        // Also when serving failed.
        scheduling.stop().await;
        served?;
        Ok(())
    }
}

async fn readyz(AxumState(s): AxumState<State>) -> (StatusCode, &'static str) {
    let redis = s.queue.ping().await.is_ok();
    let pg = sqlx::query("SELECT 1").execute(&s.pool).await.is_ok();
    if redis && pg { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}
