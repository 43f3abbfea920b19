//! The scheduler's HTTP listener. For now it serves `/metrics`, `/healthz` and `/readyz`; the
//! control-plane API mounts here as it is built.

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
        Ok(Self { listener, state: State { metrics, pool, queue } })
    }

    /// The bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let app = Router::new()
            .route("/metrics", get(|AxumState(s): AxumState<State>| async move { s.metrics.render() }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.state);
        axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await.context("serving the API")?;
        Ok(())
    }
}

async fn readyz(AxumState(s): AxumState<State>) -> (StatusCode, &'static str) {
    let redis = s.queue.ping().await.is_ok();
    let pg = sqlx::query("SELECT 1").execute(&s.pool).await.is_ok();
    if redis && pg { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}
