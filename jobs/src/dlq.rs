//! Dead-letter operations for operators: find (filters + cursor pagination), inspect (payload
//! with secrets redacted, every attempt, every replay), replay (one, or all matching a filter,
//! with a dry run), purge, and the retention that bounds the table.
//!
//! Invariants:
//! * a dead letter is replayed at most once: its row is locked and marked in the transaction
//!   that enqueues the replay, and the replay job's id is derived from the dead letter's id, so
//!   concurrent replays (even overlapping bulk filters, which skip each other's locked rows)
//!   produce one job;
//! * a replay goes back into the job's original lane with its original idempotency key (an
//!   action keeps its action row, hence its key and its intent/result record), so it passes the
//!   fleet's limits and cannot duplicate a CRM write;
//! * every replay and every purge is audited.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use crm_queue::{JobId, NewJob, PushOutcome, Queue, QueueError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::job::{CrmJob, SyncMode};

/// Errors of dead-letter operations.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Database.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Queue.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// A bad filter or edit.
    #[error("{field}: {message}")]
    Invalid {
        /// Which input.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &str, message: impl Into<String>) -> DlqError {
    DlqError::Invalid { field: field.to_owned(), message: message.into() }
}

/// Parses `2026-01-05T10:00:00Z` or a duration back from now (`1h`, `30m`, `7d`).
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d =
        parse_duration(s).ok_or_else(|| format!("{s:?} is neither RFC 3339 nor a duration like 1h or 7d"))?;
    Ok(Utc::now() - d)
}

fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    match unit {
        "s" => Some(chrono::Duration::seconds(n)),
        "m" | "min" => Some(chrono::Duration::minutes(n)),
        "h" => Some(chrono::Duration::hours(n)),
        "d" => Some(chrono::Duration::days(n)),
        "w" => Some(chrono::Duration::weeks(n)),
        _ => None,
    }
}

/// Error classes an operator may name as a group.
pub fn expand_class(name: &str) -> Vec<String> {
    match name {
        "auth" => ["unauthorized", "forbidden", "invalid_grant", "needs_reauth"].map(str::to_owned).to_vec(),
        "throttle" => vec!["throttled".to_owned()],
        other => vec![other.to_owned()],
    }
}

/// Which dead letters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Providers.
    #[serde(default)]
    pub provider: Vec<String>,
    /// Tenants.
    #[serde(default)]
    pub tenant: Vec<String>,
    /// Job types (`action`, `sync`, …).
    #[serde(default)]
    pub job_type: Vec<String>,
    /// Error classes (`auth` expands to the authentication classes).
    #[serde(default)]
    pub error_class: Vec<String>,
    /// Dead-letter reasons (`max_attempts`, `permanent`, `poison`, `undecodable`).
    #[serde(default)]
    pub reason: Vec<String>,
    /// Died at or after.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Died before.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Only replayed (true) or not yet replayed (false) ones.
    #[serde(default)]
    pub replayed: Option<bool>,
}

impl Filter {
    fn push(&self, q: &mut QueryBuilder<Postgres>) {
        q.push(" WHERE true");
        let classes: Vec<String> = self.error_class.iter().flat_map(|c| expand_class(c)).collect();
        for (col, vals) in [
            ("provider", &self.provider),
            ("tenant", &self.tenant),
            ("job_type", &self.job_type),
            ("error_class", &classes),
            ("reason", &self.reason),
        ] {
            if !vals.is_empty() {
                q.push(format!(" AND {col} = ANY(")).push_bind(vals.clone()).push(")");
            }
        }
        if let Some(s) = self.since {
            q.push(" AND dead_at >= ").push_bind(s);
        }
        if let Some(u) = self.until {
            q.push(" AND dead_at < ").push_bind(u);
        }
        match self.replayed {
            Some(true) => {
                q.push(" AND replayed_at IS NOT NULL");
            }
            Some(false) => {
                q.push(" AND replayed_at IS NULL");
            }
            None => {}
        }
    }

    /// Rejects values outside the closed sets, naming the field.
    pub fn validate(&self) -> Result<(), DlqError> {
        for p in &self.provider {
            p.parse::<crate::providers::Provider>().map_err(|e| invalid("provider", e))?;
        }
        for t in &self.job_type {
            if !crate::job::JOB_TYPES.contains(&t.as_str()) {
                return Err(invalid(
                    "job_type",
                    format!("{t:?} is not {}", crate::job::JOB_TYPES.join(", ")),
                ));
            }
        }
        for r in &self.reason {
            if crm_queue::DeadReason::parse(r).is_none() {
                return Err(invalid(
                    "reason",
                    format!("{r:?} is not max_attempts, permanent, poison or undecodable"),
                ));
            }
        }
        if let (Some(s), Some(u)) = (self.since, self.until)
            && s >= u
        {
            return Err(invalid("until", "must be after since"));
        }
        Ok(())
    }
}

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Summary {
    /// Dead-letter id.
    pub id: Uuid,
    /// The dead job's id.
    pub job_id: Uuid,
    /// Job type.
    pub job_type: String,
    /// Provider.
    pub provider: String,
    /// Tenant.
    pub tenant: String,
    /// Why it died.
    pub reason: String,
    /// Last error class.
    pub error_class: String,
    /// Last error (redacted).
    pub last_error: String,
    /// Provider status of the last error.
    pub provider_status: Option<i32>,
    /// Provider code of the last error.
    pub provider_code: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// When it died.
    pub dead_at: DateTime<Utc>,
    /// When it was replayed.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The replay's job id.
    pub replay_job_id: Option<Uuid>,
}

const SUMMARY: &str = "SELECT id, job_id, job_type, provider, tenant, reason, error_class, last_error, provider_status, \
    provider_code, attempts, dead_at, replayed_at, replay_job_id FROM dead_letters";

/// An opaque page position: (dead_at, id) of the last row seen.
pub fn encode_cursor(s: &Summary) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        s.dead_at.timestamp_micros(),
        s.id
    ))
}

fn decode_cursor(c: &str) -> Result<(DateTime<Utc>, Uuid), DlqError> {
    let bad = || invalid("cursor", "not a cursor this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = text.split_once('|').ok_or_else(bad)?;
    let t = DateTime::from_timestamp_micros(t.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((t, id.parse().map_err(|_| bad())?))
}

/// A page of dead letters, newest first, and the cursor of the next page.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<(Vec<Summary>, Option<String>), DlqError> {
    filter.validate()?;
    let limit = limit.clamp(1, 1000);
    let mut q = QueryBuilder::new(SUMMARY);
    filter.push(&mut q);
    if let Some(c) = cursor {
        let (t, id) = decode_cursor(c)?;
        q.push(" AND (dead_at, id) < (").push_bind(t).push(", ").push_bind(id).push(")");
    }
    q.push(" ORDER BY dead_at DESC, id DESC LIMIT ").push_bind(limit + 1);
    let mut rows: Vec<Summary> = q.build_query_as().fetch_all(pool).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(encode_cursor)
    } else {
        None
    };
    Ok((rows, next))
}

/// How many dead letters match.
pub async fn count(pool: &PgPool, filter: &Filter) -> Result<i64, DlqError> {
    filter.validate()?;
    let mut q = QueryBuilder::new("SELECT count(*) FROM dead_letters");
    filter.push(&mut q);
    Ok(q.build_query_scalar().fetch_one(pool).await?)
}

/// Tenants with matching dead letters, with counts (most first).
pub async fn tenants(pool: &PgPool, filter: &Filter) -> Result<Vec<(String, String, i64)>, DlqError> {
    filter.validate()?;
    let mut q = QueryBuilder::new("SELECT tenant, provider, count(*) FROM dead_letters");
    filter.push(&mut q);
    q.push(" GROUP BY tenant, provider ORDER BY count(*) DESC, tenant");
    Ok(q.build_query_as().fetch_all(pool).await?)
}

/// One attempt of a dead job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// Order.
    pub seq: i32,
    /// Attempt number.
    pub attempt: i32,
    /// Start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// Worker.
    pub worker_id: String,
    /// Outcome.
    pub outcome: String,
    /// Error class.
    pub error_class: String,
    /// Redacted message.
    pub message: String,
    /// Provider status.
    pub provider_status: Option<i32>,
    /// Provider code.
    pub provider_code: Option<String>,
}

/// One replay of a dead letter.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Replay {
    /// The new job.
    pub replay_job_id: Uuid,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Edited fields.
    pub changes: Value,
    /// enqueued | merged.
    pub outcome: String,
    /// When.
    pub replayed_at: DateTime<Utc>,
}

/// A dead letter in full.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: Summary,
    /// Lane.
    pub lane: String,
    /// Payload as JSON with secret-looking fields redacted, or `{"base64": …}` when undecodable.
    pub payload: Value,
    /// Job metadata.
    pub meta: Value,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Max attempts.
    pub max_attempts: i32,
    /// Times orphaned.
    pub orphans: i32,
    /// First enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// Every attempt.
    pub attempts_history: Vec<Attempt>,
    /// Every replay.
    pub replays: Vec<Replay>,
}

/// Replaces values of keys that look like secrets, recursively.
pub fn redact(v: &Value) -> Value {
    const SECRET: [&str; 8] =
        ["token", "secret", "password", "authorization", "api_key", "apikey", "cookie", "credential"];
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET.iter().any(|s| lower.contains(s)) {
                        (k.clone(), Value::String("[redacted]".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// One dead letter with its history.
pub async fn show(pool: &PgPool, id: Uuid) -> Result<Option<Detail>, DlqError> {
    let Some(summary) = sqlx::query_as::<_, Summary>(sqlx::AssertSqlSafe(format!("{SUMMARY} WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    #[allow(clippy::type_complexity)]
    let (lane, payload, payload_json, meta, unique_key, max_attempts, orphans, enqueued_at): (
        String,
        Vec<u8>,
        Option<Value>,
        Value,
        Option<String>,
        i32,
        i32,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT lane, payload, payload_json, meta, unique_key, max_attempts, orphans, enqueued_at FROM dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let attempts_history = sqlx::query_as::<_, Attempt>(
        "SELECT seq, attempt, started_at, finished_at, worker_id, outcome, error_class, message, provider_status, provider_code \
         FROM dead_letter_attempts WHERE dead_letter_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let replays = sqlx::query_as::<_, Replay>(
        "SELECT replay_job_id, actor, reason, changes, outcome, replayed_at FROM dead_letter_replays \
         WHERE dead_letter_id = $1 ORDER BY replayed_at",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let payload = match payload_json {
        Some(v) => redact(&v),
        None => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(payload) }),
    };
    Ok(Some(Detail {
        summary,
        lane,
        payload,
        meta: redact(&meta),
        unique_key,
        max_attempts,
        orphans,
        enqueued_at,
        attempts_history,
        replays,
    }))
}

/// Who replays, why, and what to change.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// API key name or OS user.
    pub actor: String,
    /// Why (required by the CLI and API).
    pub reason: String,
    /// Field edits: for actions, `params.<name>` (or `<name>`); for syncs, `mode`.
    pub changes: BTreeMap<String, String>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// A job was enqueued.
    Enqueued {
        /// The new job.
        job_id: Uuid,
    },
    /// An equivalent job was already queued or running (a sync of the same object); the dead
    /// letter is marked replayed into it.
    Merged {
        /// The existing job.
        job_id: Uuid,
    },
    /// It had been replayed before; nothing new was enqueued.
    AlreadyReplayed {
        /// The earlier replay's job.
        job_id: Uuid,
    },
    /// It cannot be replayed as it is.
    Unreplayable {
        /// Why.
        reason: String,
    },
}

/// The deterministic id of a dead letter's replay job.
pub fn replay_job_id(dead_letter: Uuid) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("crm-fleet replay {dead_letter}").as_bytes())
}

#[derive(sqlx::FromRow)]
struct ReplayRow {
    id: Uuid,
    job_id: Uuid,
    lane: String,
    payload: Vec<u8>,
    max_attempts: i32,
    replayed_at: Option<DateTime<Utc>>,
    replay_job_id: Option<Uuid>,
}

fn parse_value(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
}

/// Builds the replay job (and applies edits to an action's stored params). `Err(reason)` when
/// the dead letter cannot be replayed.
async fn build(
    tx: &mut sqlx::PgConnection,
    row: &ReplayRow,
    changes: &BTreeMap<String, String>,
) -> Result<Result<NewJob, String>, DlqError> {
    let new_id = JobId(replay_job_id(row.id));
    let job: CrmJob = match serde_json::from_slice(&row.payload) {
        Ok(j) => j,
        Err(e) => return Ok(Err(format!("payload cannot be decoded ({e}); submit a corrected job instead"))),
    };
    let max = row.max_attempts.max(1) as u32;
    match job {
        CrmJob::Action(a) => {
            let action: Option<(String, Value, String, Uuid)> = sqlx::query_as(
                "SELECT action, params, state, connection_id FROM actions WHERE id = $1 FOR UPDATE",
            )
            .bind(a.action_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((name, mut params, state, connection)) = action else {
                return Ok(Err(format!("action {} no longer exists", a.action_id)));
            };
            if state == "succeeded" {
                return Ok(Err(format!("action {} has since succeeded", a.action_id)));
            }
            for (k, v) in changes {
                let key = k.strip_prefix("params.").unwrap_or(k);
                if let Value::Object(m) = &mut params {
                    m.insert(key.to_owned(), parse_value(v));
                }
            }
            if !changes.is_empty() {
                crate::actions::parse(&name, &params).map_err(|e| {
                    invalid(
                        "set",
                        e.iter()
                            .map(|f| format!("{}: {}", f.field, f.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
            }
            sqlx::query(
                "UPDATE actions SET params = $2, state = 'queued', last_error = NULL, last_error_class = NULL, \
                   completed_at = NULL, updated_at = now() WHERE id = $1",
            )
            .bind(a.action_id)
            .bind(&params)
            .execute(&mut *tx)
            .await?;
            let Some(target) = target_tx(tx, connection).await? else {
                return Ok(Err(format!("connection {connection} no longer exists")));
            };
            Ok(Ok(crate::enqueue::action_job(&target, a.action_id, max)?.with_id(new_id)))
        }
        CrmJob::Sync(s) => {
            let mut mode = s.mode;
            for (k, v) in changes {
                match (k.as_str(), v.as_str()) {
                    ("mode", "full") => mode = SyncMode::Full,
                    ("mode", "incremental") => mode = SyncMode::Incremental,
                    (k, _) => {
                        return Err(invalid(
                            "set",
                            format!("{k:?} cannot be edited on a sync (only mode=full|incremental)"),
                        ));
                    }
                }
            }
            let Some(target) = target_tx(tx, s.connection_id).await? else {
                return Ok(Err(format!("connection {} no longer exists", s.connection_id)));
            };
            Ok(Ok(crate::enqueue::sync_job(&target, s.object, mode, "replay")?.with_id(new_id)))
        }
        CrmJob::Probe(_) => {
            if !changes.is_empty() {
                return Err(invalid("set", "probe jobs have nothing to edit"));
            }
            let Some(labels) = crm_queue::job::parse_lane_id(&row.lane) else {
                return Ok(Err(format!("lane {:?} is unreadable", row.lane)));
            };
            Ok(Ok(NewJob::new("probe", labels.to_lane(), row.payload.clone())
                .with_id(new_id)
                .max_attempts(max)))
        }
    }
}

async fn target_tx(
    tx: &mut sqlx::PgConnection,
    connection: Uuid,
) -> Result<Option<crate::enqueue::Target>, sqlx::Error> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT tenant_id, provider, account_id FROM connections WHERE id = $1")
            .bind(connection)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row.and_then(|(tenant, provider, account)| {
        Some(crate::enqueue::Target { tenant, provider: provider.parse().ok()?, connection, account })
    }))
}

async fn mark(
    tx: &mut sqlx::PgConnection,
    rows: &[(&ReplayRow, Uuid, &str)],
    req: &ReplayRequest,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0.id).collect();
    let jobs: Vec<Uuid> = rows.iter().map(|r| r.0.job_id).collect();
    let replays: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let outcomes: Vec<&str> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "UPDATE dead_letters d SET replayed_at = now(), replay_job_id = u.rj FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, rj) \
         WHERE d.id = u.id",
    )
    .bind(&ids)
    .bind(&replays)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO dead_letter_replays (dead_letter_id, job_id, replay_job_id, actor, reason, changes, outcome) \
         SELECT u.id, u.job, u.rj, $4, $5, $6, u.outcome FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $7::text[]) AS u(id, job, rj, outcome)",
    )
    .bind(&ids)
    .bind(&jobs)
    .bind(&replays)
    .bind(&req.actor)
    .bind(&req.reason)
    .bind(serde_json::to_value(&req.changes).unwrap_or_default())
    .bind(&outcomes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Replays one dead letter.
pub async fn replay_one(
    pool: &PgPool,
    queue: &Queue,
    id: Uuid,
    req: &ReplayRequest,
) -> Result<ReplayOutcome, DlqError> {
    let mut tx = pool.begin().await?;
    let row = replay_row(&mut tx, id, " FOR UPDATE").await?;
    if row.replayed_at.is_some() {
        return Ok(ReplayOutcome::AlreadyReplayed { job_id: row.replay_job_id.unwrap_or_default() });
    }
    let job = match build(&mut tx, &row, &req.changes).await? {
        Ok(job) => job,
        Err(reason) => return Ok(ReplayOutcome::Unreplayable { reason }),
    };
    let outcome = match queue.push(job).await? {
        PushOutcome::Enqueued(j) => ReplayOutcome::Enqueued { job_id: j.0 },
        PushOutcome::Duplicate(j) => ReplayOutcome::Merged { job_id: j.0 },
    };
    let (job_id, label) = match &outcome {
        ReplayOutcome::Merged { job_id } => (*job_id, "merged"),
        ReplayOutcome::Enqueued { job_id } | ReplayOutcome::AlreadyReplayed { job_id } => {
            (*job_id, "enqueued")
        }
        ReplayOutcome::Unreplayable { .. } => (Uuid::nil(), "enqueued"),
    };
    mark(&mut tx, &[(&row, job_id, label)], req).await?;
    tx.commit().await?;
    tracing::info!(message = "dead letter replayed", dead_letter = %id, job = %job_id, actor = %req.actor);
    Ok(outcome)
}

/// The dead letter `id` as a replay reads it (`lock`: a row lock clause, or nothing); an unknown
/// id is [`DlqError::Invalid`] naming `id`.
async fn replay_row(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    lock: &'static str,
) -> Result<ReplayRow, DlqError> {
    let row: Option<ReplayRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, job_id, lane, payload, max_attempts, replayed_at, replay_job_id FROM dead_letters WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(tx)
    .await?;
    row.ok_or_else(|| invalid("id", format!("no dead letter {id}")))
}

/// What replaying one dead letter would do: a dry run, which changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Preview {
    /// It would be replayed (with the edits asked for, which are valid).
    Replayable,
    /// It was replayed before; replaying it again would do nothing.
    AlreadyReplayed {
        /// The earlier replay's job.
        job_id: Uuid,
    },
    /// It cannot be replayed as it is.
    Unreplayable {
        /// Why.
        reason: String,
    },
}

/// What [`replay_one`] would do with `changes`, checked as it would check them (the action
/// still exists and has not succeeded since, the edits are valid, the connection exists), in
/// a transaction that is rolled back. An unknown id is [`DlqError::Invalid`] naming `id`.
pub async fn preview_one(
    pool: &PgPool,
    id: Uuid,
    changes: &BTreeMap<String, String>,
) -> Result<Preview, DlqError> {
    let mut tx = pool.begin().await?;
    let row = replay_row(&mut tx, id, "").await?;
    let preview = if row.replayed_at.is_some() {
        Preview::AlreadyReplayed { job_id: row.replay_job_id.unwrap_or_default() }
    } else {
        match build(&mut tx, &row, changes).await? {
            Ok(_) => Preview::Replayable,
            Err(reason) => Preview::Unreplayable { reason },
        }
    };
    tx.rollback().await?;
    Ok(preview)
}

/// What a bulk replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BulkReplay {
    /// Dead letters matching the filter (not yet replayed) when it started.
    pub matched: i64,
    /// Jobs enqueued.
    pub enqueued: i64,
    /// Merged into equivalent queued jobs.
    pub merged: i64,
    /// Left alone (cannot be replayed), with the first few reasons.
    pub skipped: i64,
    /// Sample of skip reasons.
    pub skip_reasons: Vec<String>,
}

/// Replays every not-yet-replayed dead letter matching `filter`, in batches; with `dry_run`
/// only counts. Safe to run concurrently with itself on overlapping filters.
pub async fn replay_matching(
    pool: &PgPool,
    queue: &Queue,
    filter: &Filter,
    req: &ReplayRequest,
    dry_run: bool,
) -> Result<BulkReplay, DlqError> {
    let mut f = filter.clone();
    f.replayed = Some(false);
    let mut out = BulkReplay { matched: count(pool, &f).await?, ..BulkReplay::default() };
    if dry_run {
        return Ok(out);
    }
    let mut skipped: Vec<Uuid> = Vec::new();
    loop {
        let mut tx = pool.begin().await?;
        let mut q = QueryBuilder::new(
            "SELECT id, job_id, lane, payload, max_attempts, replayed_at, replay_job_id FROM dead_letters",
        );
        f.push(&mut q);
        q.push(" AND NOT (id = ANY(").push_bind(skipped.clone()).push("))");
        q.push(" ORDER BY dead_at, id LIMIT 500 FOR UPDATE SKIP LOCKED");
        let rows: Vec<ReplayRow> = q.build_query_as().fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let mut jobs = Vec::new();
        let mut for_rows = Vec::new();
        for row in &rows {
            match build(&mut tx, row, &req.changes).await? {
                Ok(job) => {
                    jobs.push(job);
                    for_rows.push(row);
                }
                Err(reason) => {
                    skipped.push(row.id);
                    out.skipped += 1;
                    if out.skip_reasons.len() < 5 {
                        out.skip_reasons.push(format!("{}: {reason}", row.id));
                    }
                }
            }
        }
        let outcomes = queue.push_bulk(jobs).await?;
        let marks: Vec<(&ReplayRow, Uuid, &str)> = for_rows
            .iter()
            .zip(&outcomes)
            .map(|(row, o)| match o {
                PushOutcome::Enqueued(j) => (*row, j.0, "enqueued"),
                PushOutcome::Duplicate(j) => (*row, j.0, "merged"),
            })
            .collect();
        out.enqueued += outcomes.iter().filter(|o| !o.is_duplicate()).count() as i64;
        out.merged += outcomes.iter().filter(|o| o.is_duplicate()).count() as i64;
        if !marks.is_empty() {
            mark(&mut tx, &marks, req).await?;
        }
        tx.commit().await?;
    }
    tracing::info!(message = "bulk replay", actor = %req.actor, enqueued = out.enqueued, merged = out.merged, skipped = out.skipped);
    Ok(out)
}

/// Deletes one dead letter (audited as a purge of one).
pub async fn delete(pool: &PgPool, id: Uuid, actor: &str) -> Result<bool, DlqError> {
    let mut tx = pool.begin().await?;
    let dead_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("DELETE FROM dead_letters WHERE id = $1 RETURNING dead_at")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(at) = dead_at {
        sqlx::query("INSERT INTO dead_letter_purges (older_than, count, actor) VALUES ($1, 1, $2)")
            .bind(at)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(dead_at.is_some())
}

/// Deletes dead letters that died before `older_than` (matching `filter`); returns how many.
pub async fn purge(
    pool: &PgPool,
    filter: &Filter,
    older_than: DateTime<Utc>,
    actor: &str,
) -> Result<u64, DlqError> {
    let mut f = filter.clone();
    f.until = Some(f.until.map_or(older_than, |u| u.min(older_than)));
    f.validate()?;
    let mut total = 0u64;
    loop {
        let mut q = QueryBuilder::new("DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters");
        f.push(&mut q);
        q.push(" LIMIT 5000)");
        let n = q.build().execute(pool).await?.rows_affected();
        total += n;
        if n < 5000 {
            break;
        }
    }
    if total > 0 {
        sqlx::query("INSERT INTO dead_letter_purges (older_than, count, actor) VALUES ($1, $2, $3)")
            .bind(older_than)
            .bind(total as i64)
            .bind(actor)
            .execute(pool)
            .await?;
        metrics::counter!("crm_fleet_dead_letters_purged_total").increment(total);
        tracing::info!(message = "dead letters purged", count = total, older_than = %older_than, actor);
    }
    Ok(total)
}
