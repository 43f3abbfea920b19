//! The scheduler's HTTP listener. For now it serves `/metrics`, `/healthz` and `/readyz`; the
//! control-plane API mounts here as it is built.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

/// Scheduler settings.
#[derive(Clone)]
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
    /// Token keys (the connect flow stores tokens).
    pub keys: std::sync::Arc<crm_jobs::auth::Keyring>,
}

/// A built scheduler, ready to run.
pub struct Scheduler {
    listener: TcpListener,
    state: crate::api::ApiState,
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
        let store = crm_jobs::auth::Store::new(pool.clone(), config.keys.clone());
        let http = crm_jobs::providers::Http::new().context("building the HTTP client")?;
        let connect = std::sync::Arc::new(crm_jobs::auth::connect::ConnectState {
            tokens: crm_jobs::auth::TokenManager::new(store.clone(), http.client().clone()),
            store,
            http: http.client().clone(),
            state_ttl: crm_jobs::auth::connect::DEFAULT_STATE_TTL,
        });
        Ok(Self { listener, state: crate::api::ApiState { pool, queue, metrics, connect } })
    }

    /// The bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let mut limits = crm_jobs::limits::Syncer::start(
            self.state.pool.clone(),
            self.state.queue.clone(),
            crm_jobs::limits::DEFAULT_RELOAD,
        );
        let (app, _) = crate::api::router(self.state);
        let served =
            axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await.context("serving the API");
        limits.stop().await;
        served?;
        Ok(())
    }

    /// The API state (for tests that drive it in-process).
    pub fn state(&self) -> &crate::api::ApiState {
        &self.state
    }
}
