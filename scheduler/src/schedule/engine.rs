//! The tick engine: while this process holds the lease, fire every schedule's ticks.
//!
//! What the actor does:
//! 1. waits for leadership; on each new leadership epoch it loads every enabled schedule
//!    from PostgreSQL into memory (timing and missed-tick policy) with a fresh timer each —
//!    state from an earlier epoch is never reused, another leader may have ticked since;
//! 2. every `reload_interval` reads the schedules whose definition changed (the
//!    `change_xid` feed, see [`super::store::changes`]), so a change applies within a second;
//! 3. when timers come due, reads the due schedules and their connections in **one** query
//!    (a schedule disabled or deleted, a connection disabled, objects or overlap policy
//!    changed: all apply at the tick) and, as its rows stream in, plans each due schedule
//!    ([`super::timing::Timing::plan`]: the on-time tick plus the missed ticks its policy
//!    keeps), builds one job per (tick, object) with `scheduled_sync_job` and pushes them with
//!    `push_bulk`, `push_batch` schedules at a time with `push_concurrency` batches in flight
//!    (the read and the planning overlap the pushes, and memory stays flat);
//! 4. reads each push outcome: *enqueued*; *duplicate* — the queue returned the tick's own
//!    deterministic id, the tick was enqueued before (a retried push, or a leader that died
//!    before recording it); *skipped* — the queue returned another job's id, a sync of the
//!    same (connection, object) is queued or running: under `buffer_one` it asks that sync to
//!    run once more (`request_rerun`);
//! 5. only then records `last_tick_at` per schedule and arms the next timer.
//!
//! Invariants: the engine ticks only while its leadership epoch is current — losing the
//! lease drops the tick in progress at its next await, and a dropped push is safe to repeat;
//! a tick is recorded as handled only after its push returned; a database or Redis error is
//! logged and retried with backoff, never fatal; nothing is pushed for a schedule that is
//! disabled or gone at the moment of its tick.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crm_jobs::providers::ObjectKind;
use crm_queue::{JobId, PushOutcome, Queue};
use croner::Cron;
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::lease::Leadership;
use super::model::{MissedPolicy, OverlapPolicy, parse_time_zone};
use super::service::Service;
use super::store::{self, TimingRow};
use super::timing::{Plan, Timing, parse_cron};

/// How often the leader reads schedule changes. The issue asks that a change apply within a
/// second; half of that leaves the other half for the read itself and the next timer.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_millis(500);
/// How late the latest due tick may be and still count as on time rather than missed. Timers
/// fire within milliseconds; one second absorbs a slow iteration (a reload, a large tick)
/// without applying the missed-tick policy, and is still shorter than a failover (a
/// standby's lock retry alone is up to 500 ms, plus loading the schedules).
pub const DEFAULT_LATE_TOLERANCE: Duration = Duration::from_secs(1);
/// When the tick's read counts as a slow statement. The read streams its rows into the pushes,
/// so it stays open as long as they run: 2–3 s at 100,000 schedules, where sqlx's default of
/// 1 s logged a warning with the SQL at every large tick. (Reading in batches of queries
/// instead kept each query short but made the tick 15–20 % slower: the reads then compete
/// with Redis for the CPU.) It has a pool of one connection of its own with this threshold.
pub const TICK_READ_SLOW: Duration = Duration::from_secs(60);
/// The pool the tick's read runs on: one connection with the main pool's settings and a
/// slow-statement threshold of [`TICK_READ_SLOW`]. Made once per process, not per leadership
/// epoch.
pub fn tick_read_pool(pool: &PgPool) -> PgPool {
    let options = sqlx::ConnectOptions::log_slow_statements(
        (*pool.connect_options()).clone(),
        log::LevelFilter::Warn,
        TICK_READ_SLOW,
    );
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options)
}

/// First delay before retrying after a database or Redis error.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between retries: a recovered dependency is used within this.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);
/// Concurrent `request_rerun` calls after a tick (one row update each).
pub const DEFAULT_RERUN_CONCURRENCY: usize = 8;
/// Due schedules per `push_bulk` call within a tick (a schedule brings one job per object and
/// fired tick). Measured with 100,000 due schedules (see docs/benchmarks.md): one call for all
/// of them peaked at 460 MB of RSS (every job, its encoded arguments and the packed commands
/// alive at once), batches of 10,000 at 240 MB, batches of 2,000 at 145 MB (110–115 MB once
/// the due rows were streamed instead of read whole) — at the same speed, since the push is
/// bound by the Redis server's script time, and two batches in flight keep it busy.
pub const DEFAULT_PUSH_BATCH: usize = 2_000;
/// Batches in flight at once: one being built while another is pushed.
pub const DEFAULT_PUSH_CONCURRENCY: usize = 2;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Change-feed interval.
    pub reload_interval: Duration,
    /// Lateness still on time.
    pub late_tolerance: Duration,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Concurrent rerun requests.
    pub rerun_concurrency: usize,
    /// Jobs per push call.
    pub push_batch: usize,
    /// Push calls in flight.
    pub push_concurrency: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            late_tolerance: DEFAULT_LATE_TOLERANCE,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            rerun_concurrency: DEFAULT_RERUN_CONCURRENCY,
            push_batch: DEFAULT_PUSH_BATCH,
            push_concurrency: DEFAULT_PUSH_CONCURRENCY,
        }
    }
}

/// Why a tick or a load did not complete (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Redis failed.
    #[error("queue: {0}")]
    Queue(#[from] crm_queue::QueueError),
}

/// What one pass over the due schedules did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Schedules that were due.
    pub schedules: usize,
    /// Jobs pushed (one per fired tick and object).
    pub jobs: usize,
    /// Jobs stored.
    pub enqueued: u64,
    /// Ticks found already enqueued.
    pub duplicate: u64,
    /// (tick, object) pairs not enqueued by policy: overlap, missed-tick, disabled connection.
    pub skipped: u64,
    /// Rerun requests made (`buffer_one`).
    pub reruns: u64,
    /// Missed ticks fired by the missed-tick policy (per schedule, not per object).
    pub catch_up: u64,
    /// Planning time, summed over the chunks: each chunk is planned as its rows arrive, so
    /// this overlaps the pushes and is part of `enqueue`, not added to it.
    pub plan: Duration,
    /// From the start of the tick-time read until its last rows were taken for pushing. The
    /// read overlaps the pushes and is held back by them, so this is close to `enqueue`; a
    /// large gap between them is the time the last pushes took.
    pub read: Duration,
    /// Reading, planning and pushing the due rows' jobs, wall time: the tick's latency.
    pub enqueue: Duration,
    /// Recording `last_tick_at`.
    pub record: Duration,
}

struct Entry {
    timing: Timing,
    missed: MissedPolicy,
    backfill_limit: u32,
    /// Every tick up to here is handled.
    handled: DateTime<Utc>,
    /// The first tick after `handled`, when known (`None`: compute it, or it never fires).
    next: Option<DateTime<Utc>>,
    /// The key of this entry's timer, if armed.
    timer: Option<DateTime<Utc>>,
}

/// The engine's state while leading. Public so that benchmarks and tests can drive single
/// ticks without a lease; the actor is [`Engine`].
pub struct Ticker {
    config: EngineConfig,
    pool: PgPool,
    /// For the tick's read alone (see [`TICK_READ_SLOW`]).
    read_pool: PgPool,
    queue: Queue,
    entries: HashMap<Uuid, Entry>,
    timers: BTreeSet<(DateTime<Utc>, Uuid)>,
    horizon: String,
    crons: HashMap<String, Arc<Cron>>,
}

impl Ticker {
    /// An empty ticker; `read_pool` is for the tick's read ([`tick_read_pool`]).
    pub fn new(config: EngineConfig, pool: PgPool, read_pool: PgPool, queue: Queue) -> Self {
        Self {
            config,
            pool,
            read_pool,
            queue,
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            horizon: String::new(),
            crons: HashMap::new(),
        }
    }

    /// Loads every enabled schedule, replacing what was in memory; returns how many.
    pub async fn load(&mut self) -> Result<usize, TickError> {
        let (rows, horizon) = store::load_all(&self.pool).await?;
        self.entries.clear();
        self.timers.clear();
        self.crons.clear();
        for row in rows {
            self.upsert(row);
        }
        self.horizon = horizon;
        Ok(self.entries.len())
    }

    /// Applies definition changes since the last read; returns how many rows were read.
    pub async fn reload(&mut self) -> Result<usize, TickError> {
        let (rows, horizon) = store::changes(&self.pool, &self.horizon).await?;
        let n = rows.len();
        for row in rows {
            self.upsert(row);
        }
        self.horizon = horizon;
        Ok(n)
    }

    /// Schedules in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the next timer fires.
    pub fn next_fire(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn cron(&mut self, expr: &str) -> Result<Arc<Cron>, String> {
        if let Some(c) = self.crons.get(expr) {
            return Ok(c.clone());
        }
        let c = Arc::new(parse_cron(expr)?);
        self.crons.insert(expr.to_owned(), c.clone());
        Ok(c)
    }

    fn remove(&mut self, id: Uuid) {
        if let Some(e) = self.entries.remove(&id)
            && let Some(t) = e.timer
        {
            self.timers.remove(&(t, id));
        }
    }

    fn upsert(&mut self, row: TimingRow) {
        let previous = self.entries.get(&row.id).map(|e| e.handled);
        self.remove(row.id);
        if !row.enabled {
            return;
        }
        let timing = match (self.cron(&row.cron), parse_time_zone(&row.time_zone)) {
            (Ok(cron), Ok(tz)) => Timing::new(cron, tz, row.jitter_ms.max(0) as u32, row.id),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(message = "schedule does not parse; ignored", schedule = %row.id, error = %e);
                return;
            }
        };
        let entry = Entry {
            missed: store::missed_policy(&row),
            backfill_limit: row.backfill_limit.max(1) as u32,
            handled: previous.map_or(row.handled_through, |p| p.max(row.handled_through)),
            timing,
            next: None,
            timer: None,
        };
        self.entries.insert(row.id, entry);
        self.arm(row.id);
    }

    fn arm(&mut self, id: Uuid) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        if let Some(t) = e.timer.take() {
            self.timers.remove(&(t, id));
        }
        let next = match e.next {
            Some(n) if n > e.handled => Some(n),
            _ => e.timing.next_after(e.handled),
        };
        e.next = next;
        if let Some(next) = next {
            let at = e.timing.fire_at(next);
            e.timer = Some(at);
            self.timers.insert((at, id));
        }
    }

    /// Fires every schedule due at `now`: one database read, one bulk push (in bounded
    /// batches), one update.
    pub async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<TickReport, TickError> {
        let due: Vec<Uuid> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect();
        let mut report = TickReport { schedules: due.len(), ..TickReport::default() };
        if due.is_empty() {
            return Ok(report);
        }
        let tolerance =
            chrono::Duration::from_std(self.config.late_tolerance).unwrap_or(chrono::Duration::zero());
        // Each schedule is planned when its row arrives, not all before the read: at 100,000
        // schedules planning takes a tenth of the tick, and done per chunk it overlaps the
        // pushes already in flight instead of delaying the first one.
        let entries = &self.entries;
        let plan_of = move |id: &Uuid| {
            let e = entries.get(id)?;
            Some(e.timing.plan_from(e.handled, e.next, now, e.missed.keep(e.backfill_limit), tolerance))
        };
        let plan_of = &plan_of;

        // One query reads the due rows; as they stream in, every `push_batch` of them is
        // planned and pushed, `push_concurrency` batches in flight: the read overlaps the
        // pushes, and memory stays flat however many schedules are due.
        let enqueue_started = Instant::now();
        let queue = &self.queue;
        let mut last_row = enqueue_started;
        let mut chunks = store::due(&self.read_pool, &due)
            .try_chunks(self.config.push_batch.max(1))
            .map(|rows| {
                last_row = Instant::now();
                async move {
                    let rows = rows.map_err(|e| e.1)?;
                    push_rows(queue, rows, plan_of).await
                }
            })
            .buffered(self.config.push_concurrency.max(1));
        let mut advance: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = Vec::with_capacity(due.len());
        let mut seen: HashSet<Uuid> = HashSet::with_capacity(due.len());
        let mut disabled: Vec<Uuid> = Vec::new();
        let mut pushed: Vec<Pushed> = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            report.plan += chunk.plan;
            report.skipped += chunk.skipped;
            report.catch_up += chunk.catch_up;
            advance.extend(chunk.advance);
            seen.extend(chunk.seen);
            disabled.extend(chunk.disabled);
            pushed.extend(chunk.pushed);
        }
        drop(chunks);
        report.read = last_row - enqueue_started;
        report.enqueue = enqueue_started.elapsed();
        report.jobs = pushed.len();
        let pushed_at = Utc::now();

        let mut reruns: Vec<(Uuid, ObjectKind)> = Vec::new();
        let mut fired: HashSet<(Uuid, DateTime<Utc>)> = HashSet::new();
        for p in &pushed {
            match p.outcome {
                PushOutcome::Enqueued(_) => report.enqueued += 1,
                PushOutcome::Duplicate(existing) if existing == p.id => report.duplicate += 1,
                PushOutcome::Duplicate(_) => {
                    report.skipped += 1;
                    if p.overlap == OverlapPolicy::BufferOne {
                        reruns.push((p.connection, p.object));
                    }
                }
            }
            if fired.insert((p.schedule, p.tick))
                && let Some(e) = self.entries.get(&p.schedule)
            {
                let lag = (pushed_at - e.timing.fire_at(p.tick)).to_std().unwrap_or_default();
                metrics::histogram!("crm_fleet_scheduler_lag_seconds").record(lag.as_secs_f64());
            }
        }
        reruns.sort();
        reruns.dedup();
        report.reruns = reruns.len() as u64;
        let pool = &self.pool;
        futures::stream::iter(reruns)
            .for_each_concurrent(self.config.rerun_concurrency.max(1), |(connection, object)| async move {
                if let Err(error) = crm_jobs::enqueue::request_rerun(pool, connection, object).await {
                    // The sync in progress will not run again by itself; the next tick will.
                    tracing::warn!(message = "cannot request a rerun", %connection, %object, %error);
                }
            })
            .await;

        let record_started = Instant::now();
        let ids: Vec<Uuid> = advance.iter().map(|a| a.0).collect();
        let through: Vec<DateTime<Utc>> = advance.iter().map(|a| a.1).collect();
        let mut delay = self.config.retry_min;
        for attempt in 1..=3 {
            match store::advance(&self.pool, &ids, &through).await {
                Ok(_) => break,
                Err(error) if attempt < 3 => {
                    tracing::warn!(message = "cannot record last_tick_at; retrying", %error);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.retry_max);
                }
                // Memory is ahead; a later leader re-pushes these ticks as duplicates.
                Err(error) => tracing::warn!(message = "cannot record last_tick_at; continuing", %error),
            }
        }
        report.record = record_started.elapsed();

        for (id, through, next) in advance {
            if let Some(e) = self.entries.get_mut(&id)
                && through > e.handled
            {
                e.handled = through;
                e.next = next;
            }
            self.arm(id);
        }
        for id in disabled {
            self.remove(id);
        }
        // A due schedule that was neither advanced nor removed (its plan found nothing due,
        // which the timers rule out) is looked at again in a second instead of spinning.
        let retry_at = now + chrono::Duration::seconds(1);
        for id in &due {
            if let Some(e) = self.entries.get_mut(id)
                && e.timer.is_some_and(|t| t <= now)
            {
                if let Some(t) = e.timer.replace(retry_at) {
                    self.timers.remove(&(t, *id));
                }
                self.timers.insert((retry_at, *id));
            }
        }
        for id in due.iter().filter(|id| !seen.contains(id)) {
            // Deleted (with its connection, or by hand).
            self.remove(*id);
        }
        for (outcome, n) in
            [("enqueued", report.enqueued), ("duplicate", report.duplicate), ("skipped", report.skipped)]
        {
            if n > 0 {
                metrics::counter!("crm_fleet_scheduler_ticks_total", "outcome" => outcome).increment(n);
            }
        }
        Ok(report)
    }

    /// Leads until dropped: load, then fire timers and read changes forever, retrying errors.
    pub async fn lead(&mut self) {
        let mut backoff = Backoff::new(self.config.retry_min, self.config.retry_max);
        loop {
            match self.load().await {
                Ok(n) => {
                    tracing::info!(message = "schedules loaded", schedules = n);
                    break;
                }
                Err(error) => {
                    tracing::warn!(message = "cannot load schedules; retrying", %error);
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        backoff.reset();
        let mut next_reload = Instant::now() + self.config.reload_interval;
        loop {
            let until_reload = next_reload.saturating_duration_since(Instant::now());
            let until_timer = self
                .next_fire()
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(until_reload);
            tokio::time::sleep(until_timer.min(until_reload)).await;
            if Instant::now() >= next_reload {
                if let Err(error) = self.reload().await {
                    tracing::warn!(message = "cannot read schedule changes; retrying", %error);
                }
                next_reload = Instant::now() + self.config.reload_interval;
            }
            let now = Utc::now();
            if self.next_fire().is_some_and(|t| t <= now) {
                match self.fire_due(now).await {
                    Ok(r) => {
                        backoff.reset();
                        // Jitter splits a minute's ticks into many small ones: log those at
                        // debug, and at info the large ones and those with news.
                        let notable = r.jobs >= 1_000 || r.duplicate > 0 || r.catch_up > 0 || r.skipped > 0;
                        macro_rules! tick_event {
                            ($level:expr) => {
                                tracing::event!(
                                    $level,
                                    message = "tick",
                                    schedules = r.schedules,
                                    jobs = r.jobs,
                                    enqueued = r.enqueued,
                                    duplicate = r.duplicate,
                                    skipped = r.skipped,
                                    reruns = r.reruns,
                                    catch_up = r.catch_up,
                                    plan_ms = r.plan.as_millis() as u64,
                                    read_ms = r.read.as_millis() as u64,
                                    enqueue_ms = r.enqueue.as_millis() as u64,
                                    record_ms = r.record.as_millis() as u64,
                                )
                            };
                        }
                        if notable {
                            tick_event!(tracing::Level::INFO);
                        } else {
                            tick_event!(tracing::Level::DEBUG);
                        }
                    }
                    Err(error) => {
                        let delay = backoff.next();
                        tracing::warn!(message = "tick failed; retrying", %error, retry_in = ?delay);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}

struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The running tick engine.
#[derive(Debug)]
pub struct Engine {
    service: Service,
}

impl Engine {
    /// Starts the engine; it ticks whenever `leadership` says this process leads.
    pub fn start(
        config: EngineConfig,
        pool: PgPool,
        queue: Queue,
        leadership: watch::Receiver<Leadership>,
    ) -> Self {
        Self {
            service: Service::spawn("tick engine", move |cancel| {
                run(config, pool, queue, leadership, cancel)
            }),
        }
    }

    /// Stops ticking (a tick in progress is dropped; repeating it is safe); idempotent.
    pub async fn stop(&self) {
        self.service.stop().await;
    }
}

async fn run(
    config: EngineConfig,
    pool: PgPool,
    queue: Queue,
    mut leadership: watch::Receiver<Leadership>,
    cancel: CancellationToken,
) {
    let read_pool = tick_read_pool(&pool);
    loop {
        let epoch = loop {
            if let Some(epoch) = *leadership.borrow_and_update() {
                break epoch;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
        };
        let mut ticker = Ticker::new(config.clone(), pool.clone(), read_pool.clone(), queue.clone());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lost(&mut leadership, epoch) => {
                tracing::warn!(message = "stopped ticking: no longer the leader", epoch);
            }
            _ = ticker.lead() => {}
        }
    }
}

/// Resolves when leadership epoch `epoch` ends.
async fn lost(leadership: &mut watch::Receiver<Leadership>, epoch: u64) {
    loop {
        if *leadership.borrow_and_update() != Some(epoch) {
            return;
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}

/// One job to push: a (schedule, tick, object) of a due row.
struct Spec<'a> {
    row: &'a store::DueRow,
    target: &'a crm_jobs::enqueue::Target,
    tick: DateTime<Utc>,
    object: ObjectKind,
}

/// A pushed job and what the queue answered.
struct Pushed {
    schedule: Uuid,
    connection: Uuid,
    overlap: OverlapPolicy,
    tick: DateTime<Utc>,
    object: ObjectKind,
    /// The tick's deterministic job id.
    id: JobId,
    outcome: PushOutcome,
}

/// What one chunk of due schedules came to.
#[derive(Default)]
struct Chunk {
    /// Time spent planning this chunk's schedules.
    plan: Duration,
    skipped: u64,
    catch_up: u64,
    /// (schedule, handled through, next tick) to record.
    advance: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)>,
    /// Schedules that still exist.
    seen: Vec<Uuid>,
    /// Schedules found disabled.
    disabled: Vec<Uuid>,
    pushed: Vec<Pushed>,
}

/// Builds and pushes one job per (tick, object) of the due rows `rows` whose schedule is
/// still enabled and whose connection is usable.
async fn push_rows(
    queue: &Queue,
    rows: Vec<store::DueRow>,
    plan_of: &(dyn Fn(&Uuid) -> Option<Plan> + Sync),
) -> Result<Chunk, TickError> {
    let mut chunk = Chunk::default();
    let mut specs: Vec<Spec> = Vec::new();
    let planning = Instant::now();
    let plans: Vec<Option<Plan>> = rows.iter().map(|row| plan_of(&row.id)).collect();
    chunk.plan = planning.elapsed();
    for (row, plan) in rows.iter().zip(&plans) {
        chunk.seen.push(row.id);
        if !row.enabled {
            chunk.disabled.push(row.id);
            continue;
        }
        let Some(plan) = plan else { continue };
        let Some(through) = plan.handled_through else { continue };
        chunk.advance.push((row.id, through, plan.next));
        let objects = row.objects.len() as u64;
        chunk.skipped += plan.dropped * objects;
        chunk.catch_up += plan.fire.len() as u64 - u64::from(plan.on_time);
        let target = match (&row.target, row.connection_status.as_str()) {
            (Some(t), "active" | "needs_reauth") if lane_label_ok(&t.tenant) => t,
            (target, status) => {
                tracing::debug!(message = "tick skipped", schedule = %row.id, connection_status = status,
                    reason = if target.is_none() { "unknown provider" } else { "connection not active or bad tenant id" });
                chunk.skipped += plan.fire.len() as u64 * objects;
                continue;
            }
        };
        for &tick in &plan.fire {
            for &object in &row.objects {
                specs.push(Spec { row, target, tick, object });
            }
        }
    }
    let mut jobs = Vec::with_capacity(specs.len());
    for s in &specs {
        jobs.push(crm_jobs::enqueue::scheduled_sync_job(s.target, s.object, s.row.id, s.tick)?);
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let outcomes = queue.push_bulk(jobs).await?;
    chunk.pushed = specs
        .iter()
        .zip(ids)
        .zip(outcomes)
        .map(|((s, id), outcome)| Pushed {
            schedule: s.row.id,
            connection: s.target.connection,
            overlap: s.row.overlap_policy,
            tick: s.tick,
            object: s.object,
            id,
            outcome,
        })
        .collect();
    Ok(chunk)
}

/// Whether a tenant id can label a queue lane (the queue refuses a whole push over one job
/// whose lane is invalid, so such a schedule is skipped instead of blocking every tick).
fn lane_label_ok(tenant: &str) -> bool {
    !tenant.is_empty() && !tenant.chars().any(char::is_whitespace)
}
