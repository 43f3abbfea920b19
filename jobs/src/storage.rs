//! PostgreSQL: connecting and migrating. The migrations in `migrations/` are embedded in the
//! binaries, applied by `crmctl migrate` and, unless disabled, by every binary at start (sqlx
//! takes an advisory lock, so replicas starting together migrate once).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The embedded migrations, tolerating migrations newer than this binary in the database.
///
/// Migrations are additive (new tables, nullable columns, indexes), so the previous version
/// runs against the new schema, and it must be able to start there: a rolling upgrade
/// restarts old pods after new ones migrated, each pod's init container runs `crmctl
/// migrate`, and a rollback starts only old pods. sqlx's default refuses a database holding a
/// migration the binary does not know (`VersionMissing`), which made every such start fail.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Connects a pool, retrying for up to `patience` so a process started before its database
/// waits for it instead of crash-looping.
pub async fn connect(url: &str, max_connections: u32, patience: Duration) -> Result<PgPool, sqlx::Error> {
    let start = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(error) if start.elapsed() < patience => {
                tracing::warn!(message = "postgres unreachable; retrying", %error, retry_in = ?delay);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Applies pending migrations; returns how many were applied. Migrations newer than this
/// binary, applied by a later version, are left alone (see [`migrator`]).
pub async fn migrate(pool: &PgPool) -> Result<usize, sqlx::migrate::MigrateError> {
    let before = applied(pool).await?;
    migrator().run(pool).await?;
    Ok(applied(pool).await?.saturating_sub(before).max(0) as usize)
}

/// Migrations applied successfully so far (0 before the first: no `_sqlx_migrations` yet).
async fn applied(pool: &PgPool) -> Result<i64, sqlx::migrate::MigrateError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(sqlx::migrate::MigrateError::from)?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(sqlx::migrate::MigrateError::from)
}
