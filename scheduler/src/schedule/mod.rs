//! Scheduling: per-connection sync schedules in PostgreSQL turned into sync jobs in Redis,
//! safely with several `crm-scheduler` replicas.
//!
//! | Module | Owns |
//! |---|---|
//! | [`model`] | What a schedule is; parsing and validating input, errors naming the field |
//! | [`timing`] | Tick arithmetic: next tick in a time zone (DST), jitter, due and missed ticks |
//! | [`store`] | Every SQL statement on `schedules`, including the engine's change feed |
//! | [`lease`] | The leader lease (advisory lock on a dedicated connection) |
//! | [`engine`] | The tick engine: in-memory timers, one read and one push per tick |
//! | [`trigger`] | Manual syncs (API and `crmctl sync now`) |
//! | [`freshness`] | Which scheduled syncs have fallen behind (`crm_fleet_syncs_stale`, `crmctl sync stale`) |
//! | [`api`] | The HTTP handlers |
//!
//! Invariants, as absences:
//! * no tick is enqueued twice: a tick's job id and dedupe stamp derive from (schedule, object,
//!   tick instant), never from who pushes it or when, so a replayed tick — after a retry, a
//!   lost lease or a failover — comes back from the queue as a duplicate (the queue refuses
//!   stamps at or below the series' highest: a later tick's incremental sync covers an
//!   earlier one);
//! * no replica ticks without the lease, and none keeps ticking after it can no longer prove
//!   it holds it;
//! * no sync is enqueued while one of the same (connection, object) is queued or running:
//!   every sync job carries the unique key `sync:<connection>:<object>`;
//! * no tick is recorded as handled (`last_tick_at`) before its push returned, so a crash
//!   loses no tick: the next leader finds it due and the missed-tick policy decides;
//! * no database or Redis error ends the scheduler: it is logged and retried.

pub mod api;
pub mod engine;
pub mod freshness;
pub mod lease;
pub mod model;
pub mod service;
pub mod store;
pub mod timing;
pub mod trigger;

pub use engine::{Engine, EngineConfig, TickReport, Ticker, tick_read_pool};
pub use lease::{Lease, LeaseConfig};

/// Settings of the lease and the engine.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Leader lease.
    pub lease: LeaseConfig,
    /// Tick engine.
    pub engine: EngineConfig,
    /// How long after a tick fires its sync may still be missing before it counts as stale
    /// (`crm_fleet_syncs_stale`).
    pub stale_after: std::time::Duration,
}

impl ScheduleConfig {
    /// Defaults for a database.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            lease: LeaseConfig::new(database_url),
            engine: EngineConfig::default(),
            stale_after: freshness::DEFAULT_GRACE,
        }
    }
}

/// The lease, the engine and the freshness gauge running together.
#[derive(Debug)]
pub struct Scheduling {
    lease: Lease,
    engine: Engine,
    freshness: freshness::FreshnessGauge,
}

impl Scheduling {
    /// Starts competing for the lease, and ticking and counting stale syncs whenever it is
    /// held.
    pub fn start(config: ScheduleConfig, pool: sqlx::PgPool, queue: crm_queue::Queue) -> Self {
        describe_metrics();
        let lease = Lease::start(config.lease);
        let freshness = freshness::FreshnessGauge::start(
            pool.clone(),
            config.stale_after,
            freshness::SAMPLE_EVERY,
            lease.subscribe(),
        );
        let engine = Engine::start(config.engine, pool, queue, lease.subscribe());
        Self { lease, engine, freshness }
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        self.lease.is_leader()
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Stops ticking, then gives the lease up so a standby takes over at once; idempotent.
    pub async fn stop(&self) {
        self.engine.stop().await;
        self.lease.stop().await;
        self.freshness.stop().await;
    }
}

/// Deletes a schedule, then forgets the dedupe series of its ticks in the queue (one per
/// object: [`crm_jobs::enqueue::tick_series`]), which no push will use again. The engine
/// drops the schedule at its next tick, finding it gone; syncs already queued still run.
///
/// A failure to reach Redis after the delete is logged, not returned: the schedule is gone
/// either way, and a series left behind costs about 114 bytes. (So does one a tick in progress
/// writes back just after the forget.)
pub async fn delete_schedule(
    pool: &sqlx::PgPool,
    queue: &crm_queue::Queue,
    id: uuid::Uuid,
) -> Result<model::Schedule, store::StoreError> {
    let deleted = store::delete(pool, id).await?;
    let series: Vec<String> =
        crm_jobs::providers::ObjectKind::ALL.iter().map(|o| crm_jobs::enqueue::tick_series(id, *o)).collect();
    if let Err(error) = queue.forget_marks(&series).await {
        tracing::warn!(message = "schedule deleted; could not forget its tick series", schedule = %id, %error);
    }
    Ok(deleted)
}

fn describe_metrics() {
    metrics::describe_counter!(
        "crm_fleet_scheduler_ticks_total",
        "Scheduled (tick, object) pairs by outcome: enqueued, duplicate (already enqueued), skipped (by policy)."
    );
    metrics::describe_histogram!(
        "crm_fleet_scheduler_lag_seconds",
        metrics::Unit::Seconds,
        "Delay between a tick's firing time and its push returning."
    );
    metrics::describe_gauge!(
        "crm_fleet_scheduler_is_leader",
        "1 while this replica holds the scheduler lease."
    );
    // Served from the start, not from the first tick, so dashboards and the telemetry spec
    // see every series.
    for outcome in ["enqueued", "duplicate", "skipped"] {
        metrics::counter!("crm_fleet_scheduler_ticks_total", "outcome" => outcome).increment(0);
    }
}
