//! Sync freshness: which scheduled syncs have fallen behind their schedule.
//!
//! A scheduled (connection, object) sync is **stale** when one of its schedule's ticks fired
//! more than the grace period ago and no sync of that (connection, object) has succeeded
//! since. Ticks are counted from the later of the last success and the schedule's last
//! definition change, so a new, edited or re-enabled schedule is not behind before its first
//! tick plus the grace. Disabled schedules and disabled connections are left out (nobody
//! expects them to sync); connections that need re-authorisation are counted, since their
//! data is going stale, and the listing says so.
//!
//! Why beside the dead-letter, queue and lag alerts: each of those watches one way a sync can
//! fail to happen. Freshness watches the outcome tenants rely on, whatever the cause: a run
//! stuck behind a throttle for hours, a tick skipped again and again behind a run that never
//! ends, a connection waiting for consent, retries that keep failing below the dead-letter
//! threshold, a scheduler that fires nothing.
//!
//! Cost, as an invariant of the query: one streamed read of the enabled schedules' objects
//! whose last success (or definition change) is older than the grace; rows synced within the
//! grace cannot be stale and never leave PostgreSQL. Each row read costs one tick search,
//! with each distinct expression parsed once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_jobs::periodic::Periodic;
use crm_jobs::providers::{ObjectKind, Provider};
use croner::Cron;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::model::parse_time_zone;
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
    tenant_id: String,
    provider: String,
    status: String,
    object: String,
    last_success_at: Option<DateTime<Utc>>,
}

/// The scheduled syncs stale at `now` with `grace`, the longest behind first (without their
/// last runs: see [`with_last_runs`]).
pub async fn stale_syncs(
    pool: &PgPool,
    now: DateTime<Utc>,
    grace: Duration,
    filter: &Filter,
) -> Result<Vec<StaleSync>, sqlx::Error> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let horizon = now.checked_sub_signed(grace).unwrap_or(DateTime::<Utc>::MIN_UTC);
    // GREATEST ignores NULLs: a never-synced object counts from the schedule's last change.
    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT s.id, s.connection_id, s.cron, s.time_zone, s.jitter_ms, s.updated_at, \
                c.tenant_id, c.provider, c.status, o.object, st.last_success_at \
         FROM schedules s \
         JOIN connections c ON c.id = s.connection_id \
         CROSS JOIN LATERAL unnest(s.objects) AS o(object) \
         LEFT JOIN sync_state st ON st.connection_id = s.connection_id AND st.object = o.object \
         WHERE s.enabled AND c.status <> 'disabled' \
           AND GREATEST(s.updated_at, st.last_success_at) < $1 \
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
    while let Some(row) = rows.try_next().await? {
        let cron = crons.entry(row.cron.clone()).or_insert_with(|| parse_cron(&row.cron).ok().map(Arc::new));
        let (Some(cron), Ok(tz)) = (cron.clone(), parse_time_zone(&row.time_zone)) else {
            // The API and the CLI validate both; a row edited by hand is the engine's to report.
            continue;
        };
        let timing = Timing::new(cron, tz, row.jitter_ms.max(0) as u32, row.id);
        let baseline = row.last_success_at.map_or(row.updated_at, |s| s.max(row.updated_at));
        let Some(due_at) = timing.next_after(baseline).map(|t| timing.fire_at(t)) else { continue };
        if due_at > horizon {
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
    /// Whether it is stale: a tick fired longer ago than the grace and no success since.
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
    // Several schedules may cover one object: it is stale as of the earliest unanswered tick.
    let mut stale: HashMap<String, DateTime<Utc>> = HashMap::new();
    for s in stale_syncs(pool, now, grace, &filter).await? {
        stale.entry(s.object).and_modify(|d| *d = (*d).min(s.due_at)).or_insert(s.due_at);
    }
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

/// Stale syncs counted by (provider, object), over the closed label sets (zero where none),
/// so a count that drops to nothing reads 0 rather than its last value.
pub fn counts(stale: &[StaleSync]) -> Vec<(Provider, ObjectKind, u64)> {
    let mut out: Vec<(Provider, ObjectKind, u64)> =
        Provider::ALL.iter().flat_map(|p| ObjectKind::ALL.iter().map(move |o| (*p, *o, 0))).collect();
    for s in stale {
        if let Some(slot) =
            out.iter_mut().find(|(p, o, _)| p.as_str() == s.provider && o.as_str() == s.object)
        {
            slot.2 += 1;
        }
    }
    out
}

/// The running `crm_fleet_syncs_stale` sampler. Every replica samples the same fleet-wide
/// value from PostgreSQL: aggregate with `max`.
pub struct FreshnessGauge(Periodic);

impl FreshnessGauge {
    /// Counts now and then every `every`, until [`FreshnessGauge::stop`].
    pub fn start(pool: PgPool, grace: Duration, every: Duration) -> Self {
        metrics::describe_gauge!(
            "crm_fleet_syncs_stale",
            metrics::Unit::Count,
            "Scheduled syncs with a tick fired longer ago than the grace and no success since, by provider and object."
        );
        Self(Periodic::start(every, move || {
            let pool = pool.clone();
            async move {
                match stale_syncs(&pool, Utc::now(), grace, &Filter::default()).await {
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

    /// Stops sampling.
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}
