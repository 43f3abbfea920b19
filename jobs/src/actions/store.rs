//! Actions in PostgreSQL. Creating one is idempotent per (tenant, idempotency key): the same
//! key with the same request returns the existing action; the same key with a different request
//! is a conflict the API answers with 422.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::model::Action;

/// An action as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct ActionRow {
    /// Id (also the job id).
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Connection.
    pub connection_id: Uuid,
    /// Provider.
    pub provider: String,
    /// Action name.
    pub action: String,
    /// Parameters.
    pub params: Value,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Hash of the request.
    #[serde(skip)]
    pub request_hash: String,
    /// queued, running, succeeded, failed.
    pub state: String,
    /// Attempts that reached the provider.
    pub attempts: i32,
    /// Last intent (before a provider call).
    pub intent_at: Option<DateTime<Utc>>,
    /// The provider object's id.
    pub external_id: Option<String>,
    /// The result.
    pub result: Option<Value>,
    /// Whether the result was found by reconciliation after an outcome-unknown attempt.
    pub reconciled: bool,
    /// Last error message (redacted).
    pub last_error: Option<String>,
    /// Last error class.
    pub last_error_class: Option<String>,
    /// W3C trace context of the request that created it.
    pub traceparent: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished.
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, connection_id, provider, action, params, idempotency_key, request_hash, state, \
    attempts, intent_at, external_id, result, reconciled, last_error, last_error_class, traceparent, created_at, completed_at";

/// A request to create an action.
#[derive(Debug, Clone)]
pub struct NewAction {
    /// Tenant.
    pub tenant: String,
    /// Connection.
    pub connection: Uuid,
    /// Provider.
    pub provider: String,
    /// The parsed action.
    pub action: Action,
    /// Caller's idempotency key.
    pub idempotency_key: String,
    /// W3C traceparent of the request.
    pub traceparent: Option<String>,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new action.
    New(ActionRow),
    /// The same request was made before with this key.
    Existing(ActionRow),
    /// This key was used before for a different request.
    Conflict(ActionRow),
}

fn request_hash(a: &NewAction) -> String {
    let canonical = serde_json::json!({ "connection": a.connection, "action": a.action });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Creates an action, or finds the one this idempotency key already made.
pub async fn create(pool: &PgPool, a: &NewAction) -> Result<Created, sqlx::Error> {
    let hash = request_hash(a);
    let id = Uuid::now_v7();
    let params = match serde_json::to_value(&a.action) {
        Ok(Value::Object(mut m)) => m.remove("params").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let inserted = sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO actions (id, tenant_id, connection_id, provider, action, params, idempotency_key, request_hash, traceparent) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&a.tenant)
    .bind(a.connection)
    .bind(&a.provider)
    .bind(a.action.name())
    .bind(&params)
    .bind(&a.idempotency_key)
    .bind(&hash)
    .bind(&a.traceparent)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok(Created::New(row));
    }
    let existing = sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM actions WHERE tenant_id = $1 AND idempotency_key = $2"
    )))
    .bind(&a.tenant)
    .bind(&a.idempotency_key)
    .fetch_one(pool)
    .await?;
    Ok(if existing.request_hash == hash { Created::Existing(existing) } else { Created::Conflict(existing) })
}

/// One action.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ActionRow>, sqlx::Error> {
    sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM actions WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One action as a run reads it: `FOR SHARE`, so a run waits for a transaction that is
/// changing the row, such as a dead-letter replay that set it back to `queued` and pushed its
/// job before committing. (A plain read would see the last committed `failed` and end the
/// replayed job without running it.)
pub(crate) async fn get_for_run(pool: &PgPool, id: Uuid) -> Result<Option<ActionRow>, sqlx::Error> {
    sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM actions WHERE id = $1 FOR SHARE"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Whether the action's jobs have dead letters: `None` if none, else whether one of them (the
/// action's own job's, or a replay's) waits unreplayed. Replays carry the action id in their
/// payload, so this follows the whole chain (index `dead_letters_action`).
pub async fn dead_letters_of(pool: &PgPool, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT bool_or(replayed_at IS NULL) FROM dead_letters \
         WHERE job_type = 'action' AND payload_json ->> 'action_id' = $1",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await
}

/// How much longer an earlier attempt's request may still be in flight: its intent was
/// recorded less than `bound` ago and nothing since (no failure recorded), so its worker may be
/// stalled or cut off from the queue rather than gone. `None` when no such attempt can be.
/// Measured on the database's clock, which stamped the intent.
pub(crate) async fn in_flight_for(
    pool: &PgPool,
    id: Uuid,
    bound: Duration,
) -> Result<Option<Duration>, sqlx::Error> {
    let left: Option<f64> = sqlx::query_scalar(
        "SELECT $2::float8 - EXTRACT(EPOCH FROM now() - intent_at)::float8 FROM actions \
         WHERE id = $1 AND intent_at IS NOT NULL AND updated_at = intent_at",
    )
    .bind(id)
    .bind(bound.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(left.filter(|s| *s > 0.0).map(Duration::from_secs_f64))
}

/// Records the intent of an attempt, before the provider call (committed on its own). False
/// when the action has ended meanwhile (another run of it succeeded, or it failed for good):
/// nothing is to be sent.
pub(crate) async fn intent(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE actions SET intent_at = now(), attempts = attempts + 1, state = 'running', updated_at = now() \
         WHERE id = $1 AND state NOT IN ('succeeded', 'failed')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records success.
pub(crate) async fn succeed(
    pool: &PgPool,
    id: Uuid,
    external_id: Option<&str>,
    result: &Value,
    reconciled: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE actions SET state = 'succeeded', external_id = $2, result = $3, reconciled = $4, completed_at = now(), \
           last_error = NULL, last_error_class = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(external_id)
    .bind(result)
    .bind(reconciled)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed attempt; `last` marks the action failed for good. `refused`: the provider
/// refused this attempt's request (or it was never sent), and this attempt had established
/// that no earlier one created anything, so the intent is cleared and the next attempt sends
/// without reconciling first. A success recorded meanwhile (by another run of the action) is
/// never overwritten.
pub(crate) async fn fail(
    pool: &PgPool,
    id: Uuid,
    class: &str,
    message: &str,
    last: bool,
    refused: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE actions SET last_error = $2, last_error_class = $3, \
           state = CASE WHEN $4 THEN 'failed' ELSE state END, \
           intent_at = CASE WHEN $5 THEN NULL ELSE intent_at END, \
           completed_at = CASE WHEN $4 THEN now() ELSE completed_at END, updated_at = now() \
         WHERE id = $1 AND state <> 'succeeded'",
    )
    .bind(id)
    // PostgreSQL text holds no NUL; a provider's message (parsed from JSON) may.
    .bind(message.replace('\0', "\u{FFFD}"))
    .bind(class)
    .bind(last)
    .bind(refused)
    .execute(pool)
    .await?;
    Ok(())
}
