//! The `schedules` table: every SQL statement the API, `crmctl` and the tick engine run on it.
//!
//! Invariants: a schedule's definition changes only through [`create`] / [`update`] (or by
//! hand in SQL), and the table's trigger then bumps `updated_at` and `change_xid`, which is
//! what the engine's change feed ([`changes`]) reads; a schedule removed by [`delete`] is not
//! in that feed, and the engine finds it gone at its next tick; the engine itself writes nothing but
//! `last_tick_at`, which only moves forward ([`advance`]), so its writes never show up in
//! the change feed.

use chrono::{DateTime, Utc};
use crm_jobs::providers::{ObjectKind, Provider};
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use super::model::{MissedPolicy, NewSchedule, OverlapPolicy, Schedule, SchedulePatch, parse_time_zone};
use super::timing::Timing;

/// A store error: the database failed, or the request names something that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such schedule.
    #[error("no such schedule")]
    ScheduleNotFound,
    /// No such connection.
    #[error("no such connection")]
    ConnectionNotFound,
    /// The patch or the stored row does not validate.
    #[error(transparent)]
    Invalid(#[from] super::model::FieldError),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "id, connection_id, objects, cron, time_zone, enabled, overlap_policy, missed_policy, \
                       backfill_limit, jitter_ms, last_tick_at, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    connection_id: Uuid,
    objects: Vec<String>,
    cron: String,
    time_zone: String,
    enabled: bool,
    overlap_policy: String,
    missed_policy: String,
    backfill_limit: i32,
    jitter_ms: i32,
    last_tick_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_schedule(self, now: DateTime<Utc>) -> Schedule {
        let next_tick_at = if self.enabled {
            parse_time_zone(&self.time_zone).ok().and_then(|tz| {
                let timing = Timing::parse(&self.cron, tz, self.jitter_ms.max(0) as u32, self.id).ok()?;
                timing.next_after(self.last_tick_at.unwrap_or(self.created_at).max(now))
            })
        } else {
            None
        };
        Schedule {
            id: self.id,
            connection_id: self.connection_id,
            objects: self.objects.iter().filter_map(|o| o.parse().ok()).collect(),
            cron: self.cron,
            time_zone: self.time_zone,
            enabled: self.enabled,
            overlap_policy: self.overlap_policy.parse().unwrap_or_default(),
            missed_policy: self.missed_policy.parse().unwrap_or_default(),
            backfill_limit: self.backfill_limit.max(0) as u32,
            jitter_ms: self.jitter_ms.max(0) as u32,
            last_tick_at: self.last_tick_at,
            next_tick_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn object_names(objects: &[ObjectKind]) -> Vec<String> {
    objects.iter().map(|o| o.as_str().to_owned()).collect()
}

/// Whether a connection exists.
pub async fn connection_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM connections WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Creates a schedule.
pub async fn create(pool: &PgPool, s: &NewSchedule) -> Result<Schedule, StoreError> {
    if !connection_exists(pool, s.connection_id).await? {
        return Err(StoreError::ConnectionNotFound);
    }
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO schedules (connection_id, objects, cron, time_zone, enabled, overlap_policy, missed_policy, \
         backfill_limit, jitter_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(s.connection_id)
    .bind(object_names(&s.objects))
    .bind(&s.cron)
    .bind(&s.time_zone)
    .bind(s.enabled)
    .bind(s.overlap_policy.as_str())
    .bind(s.missed_policy.as_str())
    .bind(s.backfill_limit as i32)
    .bind(s.jitter_ms as i32)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        // The connection was deleted between the check and the insert.
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::ConnectionNotFound,
        _ => StoreError::Db(e),
    })?;
    Ok(row.into_schedule(Utc::now()))
}

/// One schedule.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Schedule, StoreError> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM schedules WHERE id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(|r| r.into_schedule(Utc::now())).ok_or(StoreError::ScheduleNotFound)
}

/// Deletes a schedule; returns it as it was.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<Schedule, StoreError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM schedules WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.into_schedule(Utc::now())).ok_or(StoreError::ScheduleNotFound)
}

/// Schedules by id, optionally of one connection: at most `limit`, after the id `after`.
pub async fn list(
    pool: &PgPool,
    connection: Option<Uuid>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Schedule>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedules WHERE ($1::uuid IS NULL OR connection_id = $1) \
         AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    )))
    .bind(connection)
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    let now = Utc::now();
    Ok(rows.into_iter().map(|r| r.into_schedule(now)).collect())
}

/// Applies a patch (checked against the current row under its lock).
pub async fn update(pool: &PgPool, id: Uuid, patch: &SchedulePatch) -> Result<Schedule, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedules WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = row.ok_or(StoreError::ScheduleNotFound)?.into_schedule(Utc::now());
    let s = patch.apply(&current)?;
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE schedules SET objects = $2, cron = $3, time_zone = $4, enabled = $5, overlap_policy = $6, \
         missed_policy = $7, backfill_limit = $8, jitter_ms = $9 WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(object_names(&s.objects))
    .bind(&s.cron)
    .bind(&s.time_zone)
    .bind(s.enabled)
    .bind(s.overlap_policy.as_str())
    .bind(s.missed_policy.as_str())
    .bind(s.backfill_limit as i32)
    .bind(s.jitter_ms as i32)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.into_schedule(Utc::now()))
}

/// What the engine keeps in memory of a schedule: its timing and missed-tick policy.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimingRow {
    /// Id.
    pub id: Uuid,
    /// Cron expression.
    pub cron: String,
    /// Time zone.
    pub time_zone: String,
    /// Jitter bound.
    pub jitter_ms: i32,
    /// Enabled.
    pub enabled: bool,
    /// Missed-tick policy.
    pub missed_policy: String,
    /// Backfill limit.
    pub backfill_limit: i32,
    /// `COALESCE(last_tick_at, created_at)`: every tick up to here is handled.
    pub handled_through: DateTime<Utc>,
}

const TIMING_COLUMNS: &str = "id, cron, time_zone, jitter_ms, enabled, missed_policy, backfill_limit, \
                              COALESCE(last_tick_at, created_at) AS handled_through";

/// The oldest transaction still running, as seen now: every change made by a transaction
/// below it is committed and visible to any later statement.
pub async fn horizon(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetch_one(pool).await
}

/// Every enabled schedule, and the horizon to read [`changes`] from next.
pub async fn load_all(pool: &PgPool) -> Result<(Vec<TimingRow>, String), sqlx::Error> {
    let horizon = horizon(pool).await?;
    let rows =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TIMING_COLUMNS} FROM schedules WHERE enabled")))
            .fetch_all(pool)
            .await?;
    Ok((rows, horizon))
}

/// Schedules whose definition changed in a transaction at or above `since` (a horizon), and
/// the horizon to read from next. A row may come back more than once; none is ever missed,
/// whatever order transactions commit in.
pub async fn changes(pool: &PgPool, since: &str) -> Result<(Vec<TimingRow>, String), sqlx::Error> {
    let horizon = horizon(pool).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TIMING_COLUMNS} FROM schedules WHERE change_xid >= $1::text::xid8"
    )))
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok((rows, horizon))
}

/// What a due schedule syncs, read at its tick so that a disabled schedule, a changed object
/// list or policy, or a deleted or disabled connection takes effect at once.
#[derive(Debug, Clone)]
pub struct DueRow {
    /// Schedule.
    pub id: Uuid,
    /// Still enabled.
    pub enabled: bool,
    /// Objects to sync.
    pub objects: Vec<ObjectKind>,
    /// Overlap policy.
    pub overlap_policy: OverlapPolicy,
    /// The job target, `None` when the connection's provider is unknown.
    pub target: Option<crm_jobs::enqueue::Target>,
    /// Connection status (`active`, `needs_reauth`, `disabled`).
    pub connection_status: String,
}

/// Reads the due schedules (those that still exist) and their connections, in one query whose
/// rows are yielded as they arrive.
pub fn due<'a>(
    pool: &'a PgPool,
    ids: &'a [Uuid],
) -> impl futures::Stream<Item = Result<DueRow, sqlx::Error>> + Send + 'a {
    type Row = (Uuid, bool, Vec<String>, String, Uuid, String, String, String, String);
    sqlx::query_as::<_, Row>(
        "SELECT s.id, s.enabled, s.objects, s.overlap_policy, c.id, c.tenant_id, c.provider, c.account_id, c.status \
         FROM unnest($1::uuid[]) AS u(id) JOIN schedules s ON s.id = u.id JOIN connections c ON c.id = s.connection_id",
    )
    .bind(ids)
    .fetch(pool)
    .map_ok(|(id, enabled, objects, overlap, connection, tenant, provider, account, status)| DueRow {
        id,
        enabled,
        objects: objects.iter().filter_map(|o| o.parse().ok()).collect(),
        overlap_policy: overlap.parse().unwrap_or_default(),
        target: provider.parse::<Provider>().ok().map(|provider| crm_jobs::enqueue::Target {
            tenant,
            provider,
            connection,
            account,
        }),
        connection_status: status,
    })
}

/// Records that every tick up to `through` is handled, per schedule; never moves backwards.
pub async fn advance(pool: &PgPool, ids: &[Uuid], through: &[DateTime<Utc>]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE schedules AS s SET last_tick_at = u.t FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, t) \
         WHERE s.id = u.id AND (s.last_tick_at IS NULL OR s.last_tick_at < u.t)",
    )
    .bind(ids)
    .bind(through)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Parses a stored missed-tick policy (unknown names read as the default).
pub fn missed_policy(row: &TimingRow) -> MissedPolicy {
    row.missed_policy.parse().unwrap_or_default()
}
