//! Sync conflicts, listed and resolved: remote changes a sync did not apply because they
//! collided with a local pending change on a critical field ([`super::store`] records them,
//! once while the newest open conflict of the field holds the same values, and closes them as
//! `confirmed` when a sync finds the CRM with our value).
//!
//! A conflict is open until decided:
//! * **`remote`**: the CRM's value is taken. While our change is still pending, the local
//!   column gets the newest remote value the syncs read, and the field is no longer pending.
//! * **`local`**: our value is kept, and stays pending: the CRM does not have it (write it with
//!   an `update_contact` action). A sync that then finds the CRM with it closes the matter; a
//!   full sync that reads the CRM's other value again asks again.
//!
//! Invariants: resolving one conflict resolves every open conflict of the same record and
//! field, all locked in id order first (concurrent resolutions queue, never deadlock, and only
//! one of them wins); the record's update is in the same transaction. A resolution holds the
//! records lock exclusive (see [`super::store`]), so no sync page of the record is written
//! meanwhile: a page that had read the mark cannot write it back after a `remote` resolution.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{critical_fields, lock_records, table};
use crate::providers::ObjectKind;

/// A recorded conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Conflict {
    /// Id.
    pub id: i64,
    /// Tenant.
    pub tenant_id: String,
    /// Provider.
    pub provider: String,
    /// `contact`, `company` or `deal`.
    pub object: String,
    /// The record's id at the CRM.
    pub external_id: String,
    /// The field (`email`, `first_name`, `last_name`, `name`).
    pub field: String,
    /// Our pending value.
    pub local_value: Option<String>,
    /// The CRM's value the sync read.
    pub remote_value: Option<String>,
    /// The sync run that found it.
    pub run_id: Option<Uuid>,
    /// When it was found.
    pub detected_at: DateTime<Utc>,
    /// When it was resolved (`None`: open).
    pub resolved_at: Option<DateTime<Utc>>,
    /// `remote` or `local`, once resolved.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, provider, object, external_id, field, local_value, remote_value, run_id, \
                       detected_at, resolved_at, resolution, resolved_by";

/// Which conflicts to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this provider's.
    pub provider: Option<String>,
    /// Only this object's.
    pub object: Option<ObjectKind>,
    /// Open only (`Some(true)`), resolved only (`Some(false)`) or both.
    pub open: Option<bool>,
}

impl ListFilter {
    /// The `open` filter for a state name: `open`, `resolved` or `all` (both).
    pub fn parse_state(state: &str) -> Result<Option<bool>, String> {
        match state {
            "open" => Ok(Some(true)),
            "resolved" => Ok(Some(false)),
            "all" => Ok(None),
            other => Err(format!("{other:?} is not a state (open, resolved or all)")),
        }
    }
}

/// Conflicts by id, at most `limit`, after the id `after`.
pub async fn list(
    pool: &PgPool,
    filter: &ListFilter,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Conflict>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sync_conflicts \
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR provider = $2) \
           AND ($3::text IS NULL OR object = $3) AND ($4::boolean IS NULL OR (resolved_at IS NULL) = $4) \
           AND id > $5 ORDER BY id LIMIT $6"
    )))
    .bind(filter.tenant.as_deref())
    .bind(filter.provider.as_deref())
    .bind(filter.object.map(ObjectKind::as_str))
    .bind(filter.open)
    .bind(after.unwrap_or(0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which value a resolution keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The CRM's.
    Remote,
    /// Ours.
    Local,
}

impl Keep {
    /// `remote` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Local => "local",
        }
    }
}

impl std::str::FromStr for Keep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "remote" => Ok(Self::Remote),
            "local" => Ok(Self::Local),
            other => Err(format!("{other:?} is neither \"remote\" nor \"local\"")),
        }
    }
}

/// Why a conflict could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No conflict has this id.
    #[error("no such conflict")]
    NotFound,
    /// It was resolved before (as it stands now).
    #[error("the conflict was resolved already")]
    AlreadyResolved(Box<Conflict>),
    /// The stored conflict names an object or field this build does not know.
    #[error("the conflict names an unknown object or field: {0}")]
    Unknown(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A resolution's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Resolved {
    /// The conflict as resolved.
    pub conflict: Conflict,
    /// Open conflicts of the same record and field resolved with it (itself included).
    pub resolved: u64,
    /// The value the record now holds for the field.
    pub value: Option<String>,
}

/// Resolves conflict `id` (and its open siblings) keeping `keep`; `actor` is recorded.
pub async fn resolve(pool: &PgPool, id: i64, keep: Keep, actor: &str) -> Result<Resolved, ResolveError> {
    let mut tx = pool.begin().await?;
    let c = get(&mut tx, id).await?.ok_or(ResolveError::NotFound)?;
    if c.resolved_at.is_some() {
        return Err(ResolveError::AlreadyResolved(Box::new(c)));
    }
    let object: ObjectKind = c.object.parse().map_err(|_| ResolveError::Unknown(c.object.clone()))?;
    // The column name comes from this build's list, never from the row as such.
    let field = *critical_fields(object)
        .iter()
        .find(|f| **f == c.field)
        .ok_or_else(|| ResolveError::Unknown(c.field.clone()))?;
    // Before any row lock: pages hold it shared and then lock conflict rows.
    lock_records(&mut tx, &c.tenant_id, &c.provider, object).await?;
    // Every open conflict of the record and field, locked in id order: two resolutions of
    // siblings queue one behind the other instead of deadlocking.
    let open: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, remote_value FROM sync_conflicts WHERE tenant_id = $1 AND provider = $2 AND object = $3 \
         AND external_id = $4 AND field = $5 AND resolved_at IS NULL ORDER BY id FOR UPDATE",
    )
    .bind(&c.tenant_id)
    .bind(&c.provider)
    .bind(&c.object)
    .bind(&c.external_id)
    .bind(&c.field)
    .fetch_all(&mut *tx)
    .await?;
    if !open.iter().any(|(open_id, _)| *open_id == id) {
        // Resolved by someone else (or confirmed by a sync) since it was read.
        let now = get(&mut tx, id).await?.ok_or(ResolveError::NotFound)?;
        return Err(ResolveError::AlreadyResolved(Box::new(now)));
    }
    let t = table(object);
    if keep == Keep::Remote {
        // The newest value the syncs read; written only while our change is still pending
        // (once the CRM confirmed it, the record already holds the CRM's value).
        let newest = open.last().and_then(|(_, v)| v.clone());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {t} SET {field} = $4, local_pending = NULLIF(local_pending - $5, '{{}}'::jsonb) \
             WHERE tenant_id = $1 AND provider = $2 AND external_id = $3 AND local_pending ? $5"
        )))
        .bind(&c.tenant_id)
        .bind(&c.provider)
        .bind(&c.external_id)
        .bind(&newest)
        .bind(field)
        .execute(&mut *tx)
        .await?;
    }
    let value: Option<String> = sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(format!(
        "SELECT {field} FROM {t} WHERE tenant_id = $1 AND provider = $2 AND external_id = $3"
    )))
    .bind(&c.tenant_id)
    .bind(&c.provider)
    .bind(&c.external_id)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let ids: Vec<i64> = open.iter().map(|(open_id, _)| *open_id).collect();
    let resolved = sqlx::query(
        "UPDATE sync_conflicts SET resolved_at = now(), resolution = $2, resolved_by = $3 WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(keep.as_str())
    .bind(actor)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let conflict = get(&mut tx, id).await?.ok_or(ResolveError::NotFound)?;
    tx.commit().await?;
    Ok(Resolved { conflict, resolved, value })
}

async fn get(tx: &mut sqlx::PgConnection, id: i64) -> Result<Option<Conflict>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM sync_conflicts WHERE id = $1")))
        .bind(id)
        .fetch_optional(tx)
        .await
}
