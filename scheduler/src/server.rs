//! The scheduler process as a library: the control-plane HTTP API of [`crate::api`] (which
//! mounts the scheduling routes of [`crate::schedule::api`]), the lease + tick engine of
//! [`crate::schedule`], the limits syncer (PostgreSQL → Redis), the fleet-wide gauges
//! ([`crm_jobs::fleet_gauges`]), the action re-push sweep ([`crm_jobs::actions::repush`]) and
//! dead-letter retention ([`crm_jobs::dlq_retention`]), started and stopped together.
//!
//! Shutdown: stop ticking → give the lease up (a standby takes over within its retry
//! interval) → finish in-flight HTTP requests → stop the limits syncer, the fleet gauges, the
//! re-push sweep and retention (each after its step in progress) → return.

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
    /// Lease and tick engine settings (the lease's database URL and API address are filled in
    /// by [`Scheduler::build`]).
    pub schedule: crate::schedule::ScheduleConfig,
    /// Dead letters older than this are purged (audited, counted); `None` keeps them forever.
    pub dlq_retention: Option<std::time::Duration>,
}

impl SchedulerConfig {
    /// A scheduler on loopback (API on any free port), the default queue name, no migrations,
    /// no schedule database of its own, dead letters kept: for tests and embedding.
    pub fn local(
        database_url: &str,
        redis_url: &str,
        redis_prefix: &str,
        keys: std::sync::Arc<crm_jobs::auth::Keyring>,
    ) -> Self {
        Self {
            database_url: database_url.to_owned(),
            redis_url: redis_url.to_owned(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            queue: crm_jobs::job::DEFAULT_QUEUE.to_owned(),
            redis_prefix: redis_prefix.to_owned(),
            migrate: false,
            keys,
            schedule: crate::schedule::ScheduleConfig::new(""),
            dlq_retention: None,
        }
    }
}

/// A built scheduler, ready to run.
pub struct Scheduler {
    listener: TcpListener,
    state: crate::api::ApiState,
    schedule: crate::schedule::ScheduleConfig,
    dlq_retention: Option<std::time::Duration>,
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
        for warning in queue.server_warnings().await {
            tracing::warn!(message = "Redis setting can lose jobs", detail = %warning);
        }
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
        let mut schedule = config.schedule;
        schedule.lease.database_url = config.database_url;
        schedule.lease.api_addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Ok(Self {
            listener,
            state: crate::api::ApiState {
                pool,
                queue,
                metrics,
                connect,
                sync_stale_after: schedule.stale_after,
            },
            schedule,
            dlq_retention: config.dlq_retention,
        })
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
        let mut limits = crm_jobs::limits::Syncer::start(
            self.state.pool.clone(),
            self.state.queue.clone(),
            crm_jobs::limits::DEFAULT_RELOAD,
        );
        let mut gauges = crm_jobs::fleet_gauges::FleetGauges::start(
            self.state.pool.clone(),
            self.state.queue.clone(),
            crm_jobs::fleet_gauges::DEFAULT_EVERY,
        );
        let mut retention = self.dlq_retention.map(|keep| {
            crm_jobs::dlq_retention::Retention::start(
                self.state.pool.clone(),
                keep,
                crm_jobs::dlq_retention::DEFAULT_EVERY,
            )
        });
        let mut repush = crm_jobs::actions::repush::Repush::start(
            self.state.pool.clone(),
            self.state.queue.clone(),
            crm_jobs::actions::repush::DEFAULT_STALE,
            crm_jobs::actions::repush::DEFAULT_EVERY,
        );
        let (app, _) = crate::api::router(self.state);
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
        limits.stop().await;
        gauges.stop().await;
        repush.stop().await;
        if let Some(r) = retention.as_mut() {
            r.stop().await;
        }
        served?;
        Ok(())
    }

    /// The API state (for tests that drive it in-process).
    pub fn state(&self) -> &crate::api::ApiState {
        &self.state
    }
}
