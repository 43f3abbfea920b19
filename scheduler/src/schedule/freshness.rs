//! Sync freshness: which scheduled syncs have fallen behind their schedule.
//!
//! A scheduled (connection, object) sync is **stale** when one of its schedule's ticks fired
//! more than the grace period ago and no sync of that (connection, object) has succeeded
//! since (a success is the commit of a run's last page). Ticks are counted from the later of
//! the last success and the schedule's `ticking_since` (its creation, or its latest change of
//! timing or re-enabling), so a schedule that starts ticking anew is not behind before its
//! first tick plus the grace, while an edit of its policies does not hide a sync that has long
//! been failing. An object never synced counts from the schedule's last change (it may have
//! just been added). When several schedules cover one object, the oldest unanswered tick
//! speaks for it: one entry per (connection, object).
//!
//! Disabled schedules and disabled connections are left out (nobody expects them to sync).
//! Connections that need re-authorisation are listed, their data going stale, but not counted
//! by `crm_fleet_syncs_stale`: only the tenant can fix them, and `crm_fleet_connections`
//! already alerts on them, so counting them would keep the stale alert firing in any large
//! fleet.
//!
//! Why beside the dead-letter, queue and lag alerts: each of those watches one way a sync can
//! fail to happen. Freshness watches the outcome tenants rely on, whatever the cause: a run
//! stuck behind a throttle for hours, a tick skipped again and again behind a run that never
//! ends, a connection waiting for consent, retries that keep failing below the dead-letter
//! threshold, a scheduler that fires nothing.
//!
//! Cost, as an invariant of the query: one streamed read of the enabled schedules' objects
//! whose baseline is older than the grace; rows synced within the grace cannot be stale and
//! never leave PostgreSQL. Each row read costs one tick search, with each distinct expression
//! parsed once, and the loop yields to the runtime every 1,000 rows (the API and the tick
//! engine share it). Only the leader samples the gauge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_jobs::providers::{ObjectKind, Provider};
use croner::Cron;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use tokio::sync::watch;

use super::lease::Leadership;
use super::model::parse_time_zone;
use super::service::Service;
use super::timing::{Timing, parse_cron};

/// Default grace: how long after a tick fires its sync may still be missing.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30 * 60);
/// How often the scheduler counts stale syncs for `crm_fleet_syncs_stale`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// A scheduled sync that has fallen behind.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StaleSync {
    /// The schedule that should have synced it.
    pub schedule_id: Uuid,
    /// Connection.
    pub connection_id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Provider.
    pub provider: String,
    /// Object (`contact`, `company`, `deal`).
    pub object: String,
    /// The connection's status (`active`, `needs_reauth`).
    pub connection_status: String,
    /// When a sync of this (connection, object) last succeeded (`None`: never).
    pub last_success_at: Option<DateTime<Utc>>,
    /// When the first tick that no success has followed fired (jitter included).
    pub due_at: DateTime<Utc>,
    /// The latest run, if any (filled by [`with_last_runs`]).
    pub last_run: Option<LastRun>,
}

/// The latest sync run of a (connection, object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct LastRun {
    /// Run id.
    pub id: Uuid,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished (`None` while running).
    pub finished_at: Option<DateTime<Utc>>,
    /// Pages committed.
    pub pages: i32,
    /// Records processed.
    pub processed: i32,
    /// Why it failed.
    pub error: Option<String>,
}

/// A latest run and whose it is.
#[derive(sqlx::FromRow)]
struct RunOf {
    conn: Uuid,
    object: String,
    #[sqlx(flatten)]
    run: LastRun,
}

/// Which stale syncs to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this provider's.
    pub provider: Option<String>,
    /// Only this connection's.
    pub connection: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    connection_id: Uuid,
    cron: String,
    time_zone: String,
    jitter_ms: i32,
    updated_at: DateTime<Utc>,
    ticking_since: DateTime<Utc>,
    tenant_id: String,
    provider: String,
    status: String,
    object: String,
    last_success_at: Option<DateTime<Utc>>,
}

/// The scheduled syncs stale at `now` with `grace`, one per (connection, object), the longest
/// behind first (without their last runs: see [`with_last_runs`]).
pub async fn stale_syncs(
    pool: &PgPool,
    now: DateTime<Utc>,
    grace: Duration,
    filter: &Filter,
) -> Result<Vec<StaleSync>, sqlx::Error> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let horizon = now.checked_sub_signed(grace).unwrap_or(DateTime::<Utc>::MIN_UTC);
    // The baseline of the loop below, as SQL: a row whose baseline is within the grace cannot
    // be stale (its first tick after the baseline comes later still).
    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT s.id, s.connection_id, s.cron, s.time_zone, s.jitter_ms, s.updated_at, s.ticking_since, \
                c.tenant_id, c.provider, c.status, o.object, st.last_success_at \
         FROM schedules s \
         JOIN connections c ON c.id = s.connection_id \
         CROSS JOIN LATERAL unnest(s.objects) AS o(object) \
         LEFT JOIN sync_state st ON st.connection_id = s.connection_id AND st.object = o.object \
         WHERE s.enabled AND c.status <> 'disabled' \
           AND GREATEST(COALESCE(st.last_success_at, s.updated_at), s.ticking_since) < $1 \
           AND ($2::text IS NULL OR c.tenant_id = $2) AND ($3::text IS NULL OR c.provider = $3) \
           AND ($4::uuid IS NULL OR c.id = $4)",
    )
    .bind(horizon)
    .bind(filter.tenant.as_deref())
    .bind(filter.provider.as_deref())
    .bind(filter.connection)
    .fetch(pool);
    let mut crons: HashMap<String, Option<Arc<Cron>>> = HashMap::new();
    let mut out = Vec::new();
    let (mut read, mut unreadable) = (0usize, 0usize);
    while let Some(row) = rows.try_next().await? {
        read += 1;
        if read.is_multiple_of(1_000) {
            tokio::task::yield_now().await;
        }
        let cron = match crons.get(&row.cron) {
            Some(c) => c.clone(),
            None => {
                let c = parse_cron(&row.cron).ok().map(Arc::new);
                crons.insert(row.cron.clone(), c.clone());
                c
            }
        };
        let (Some(cron), Ok(tz)) = (cron, parse_time_zone(&row.time_zone)) else {
            // The API and the CLI validate both; a row edited by hand cannot be judged.
            unreadable += 1;
            continue;
        };
        let timing = Timing::new(cron, tz, row.jitter_ms.max(0) as u32, row.id);
        let baseline = row.last_success_at.unwrap_or(row.updated_at).max(row.ticking_since);
        let Some(due_at) = timing.next_after(baseline).map(|t| timing.fire_at(t)) else { continue };
        // Stale once the tick fired *more* than the grace ago.
        if due_at >= horizon {
            continue;
        }
        out.push(StaleSync {
            schedule_id: row.id,
            connection_id: row.connection_id,
            tenant_id: row.tenant_id,
            provider: row.provider,
            object: row.object,
            connection_status: row.status,
            last_success_at: row.last_success_at,
            due_at,
            last_run: None,
        });
    }
    if unreadable > 0 {
        tracing::warn!(
            message = "schedules with an unreadable cron or time zone cannot be judged stale",
            rows = unreadable
        );
    }
    // One entry per (connection, object): when several schedules cover it, the one with the
    // oldest unanswered tick speaks for it.
    out.sort_by(|a, b| (a.connection_id, &a.object, a.due_at).cmp(&(b.connection_id, &b.object, b.due_at)));
    out.dedup_by(|later, first| later.connection_id == first.connection_id && later.object == first.object);
    out.sort_by(|a, b| {
        (a.due_at, &a.tenant_id, a.connection_id, &a.object).cmp(&(
            b.due_at,
            &b.tenant_id,
            b.connection_id,
            &b.object,
        ))
    });
    Ok(out)
}

/// Fills in each stale sync's latest run (one query for all of them).
pub async fn with_last_runs(pool: &PgPool, stale: &mut [StaleSync]) -> Result<(), sqlx::Error> {
    let keys: Vec<(Uuid, &str)> = stale.iter().map(|s| (s.connection_id, s.object.as_str())).collect();
    let mut runs = latest_runs(pool, &keys).await?;
    for s in stale {
        s.last_run = runs.remove(&(s.connection_id, s.object.clone()));
    }
    Ok(())
}

/// The latest run of each (connection, object) that has one, in one query.
async fn latest_runs(
    pool: &PgPool,
    keys: &[(Uuid, &str)],
) -> Result<HashMap<(Uuid, String), LastRun>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (conns, objects): (Vec<Uuid>, Vec<&str>) = keys.iter().copied().unzip();
    let runs: Vec<RunOf> = sqlx::query_as(
        "SELECT k.conn, k.object, r.id, r.status, r.started_at, r.finished_at, r.pages, r.processed, r.error \
         FROM UNNEST($1::uuid[], $2::text[]) AS k(conn, object) \
         CROSS JOIN LATERAL (SELECT * FROM sync_runs r WHERE r.connection_id = k.conn AND r.object = k.object \
                             ORDER BY r.started_at DESC LIMIT 1) r",
    )
    .bind(&conns)
    .bind(&objects)
    .fetch_all(pool)
    .await?;
    Ok(runs.into_iter().map(|r| ((r.conn, r.object), r.run)).collect())
}

/// Where one object of a connection stands.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ObjectSync {
    /// `contact`, `company` or `deal`.
    pub object: String,
    /// Whether an enabled schedule syncs it.
    pub scheduled: bool,
    /// When a sync of it last succeeded (`None`: never).
    pub last_success_at: Option<DateTime<Utc>>,
    /// Whether it is stale: a tick fired more than the grace ago and no success since.
    pub stale: bool,
    /// When stale: when the first tick that no success has followed fired.
    pub due_at: Option<DateTime<Utc>>,
    /// The latest run, if any.
    pub latest_run: Option<LastRun>,
}

/// Where a connection's syncs stand, object by object.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConnectionSync {
    /// Connection.
    pub connection_id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Provider.
    pub provider: String,
    /// `active`, `needs_reauth` or `disabled`.
    pub connection_status: String,
    /// The grace after a tick beyond which a missing success makes an object stale.
    pub stale_after_seconds: u64,
    /// Contact, company and deal, in that order.
    pub objects: Vec<ObjectSync>,
}

/// Where connection `id`'s syncs stand at `now`; `None` if there is no such connection.
pub async fn connection_sync(
    pool: &PgPool,
    id: Uuid,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Option<ConnectionSync>, sqlx::Error> {
    let Some((tenant_id, provider, connection_status)) = sqlx::query_as::<_, (String, String, String)>(
        "SELECT tenant_id, provider, status FROM connections WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let scheduled: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT o FROM schedules, unnest(objects) AS o WHERE connection_id = $1 AND enabled",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let successes: HashMap<String, Option<DateTime<Utc>>> =
        sqlx::query_as::<_, (String, Option<DateTime<Utc>>)>(
            "SELECT object, last_success_at FROM sync_state WHERE connection_id = $1",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let filter = Filter { connection: Some(id), ..Filter::default() };
    let stale: HashMap<String, DateTime<Utc>> =
        stale_syncs(pool, now, grace, &filter).await?.into_iter().map(|s| (s.object, s.due_at)).collect();
    let keys: Vec<(Uuid, &str)> = ObjectKind::ALL.iter().map(|o| (id, o.as_str())).collect();
    let mut runs = latest_runs(pool, &keys).await?;
    let objects = ObjectKind::ALL
        .iter()
        .map(|o| {
            let object = o.as_str().to_owned();
            ObjectSync {
                scheduled: scheduled.contains(&object),
                last_success_at: successes.get(&object).copied().flatten(),
                stale: stale.contains_key(&object),
                due_at: stale.get(&object).copied(),
                latest_run: runs.remove(&(id, object.clone())),
                object,
            }
        })
        .collect();
    Ok(Some(ConnectionSync {
        connection_id: id,
        tenant_id,
        provider,
        connection_status,
        stale_after_seconds: grace.as_secs(),
        objects,
    }))
}

/// Stale syncs of active connections counted by (provider, object), over the closed label
/// sets (zero where none), so a count that drops to nothing reads 0 rather than its last value.
pub fn counts(stale: &[StaleSync]) -> Vec<(Provider, ObjectKind, u64)> {
    let mut out: Vec<(Provider, ObjectKind, u64)> =
        Provider::ALL.iter().flat_map(|p| ObjectKind::ALL.iter().map(move |o| (*p, *o, 0))).collect();
    for s in stale.iter().filter(|s| s.connection_status == "active") {
        if let Some(slot) =
            out.iter_mut().find(|(p, o, _)| p.as_str() == s.provider && o.as_str() == s.object)
        {
            slot.2 += 1;
        }
    }
    out
}

/// The running `crm_fleet_syncs_stale` sampler. The leader counts, every `every` and as soon
/// as it becomes leader; the other replicas report 0 (the count is fleet-wide: aggregate with
/// `max`). Stopping waits for a count in progress.
#[derive(Debug)]
pub struct FreshnessGauge(Service);

impl FreshnessGauge {
    /// Starts sampling.
    pub fn start(
        pool: PgPool,
        grace: Duration,
        every: Duration,
        mut leadership: watch::Receiver<Leadership>,
    ) -> Self {
        Self(Service::spawn("freshness gauge", move |cancel| async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lease_gone = false;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                    changed = leadership.changed(), if !lease_gone => lease_gone = changed.is_err(),
                }
                let leads = leadership.borrow_and_update().is_some();
                let sampled = if leads {
                    stale_syncs(&pool, Utc::now(), grace, &Filter::default()).await
                } else {
                    Ok(Vec::new())
                };
                match sampled {
                    Ok(stale) => {
                        for (p, o, n) in counts(&stale) {
                            metrics::gauge!("crm_fleet_syncs_stale", "provider" => p.as_str(), "object" => o.as_str())
                                .set(n as f64);
                        }
                    }
                    Err(error) => tracing::warn!(message = "counting stale syncs failed", %error),
                }
            }
        }))
    }

    /// Stops sampling (after a count in progress); idempotent.
    pub async fn stop(&self) {
        self.0.stop().await;
    }
}
