//! The durable end of a job that cannot succeed: a row in PostgreSQL `dead_letters` with its
//! raw payload and one `dead_letter_attempts` row per recorded attempt.
//!
//! Invariant: a job leaves Redis only after its dead-letter row is committed. The write is
//! idempotent on `job_id` (ON CONFLICT DO NOTHING), so the two-phase protocol (Redis `dying`
//! outbox → PostgreSQL → finalize) may repeat any step after a crash without duplicating or
//! losing a dead letter.
//!
//! PostgreSQL refuses a NUL character in `text` and `jsonb`, and a provider's error body or a
//! payload may hold one: every text and JSON value is written with NULs replaced by U+FFFD
//! (the raw `payload` bytes stay exact), or one such dead letter would fail its write forever
//! and never leave the `dying` outbox.

use std::borrow::Cow;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::QueueError;
use crate::job::{DyingJob, Priority, parse_lane_id};

/// Writes dead letters into PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgDeadLetters {
    pool: PgPool,
    queue: String,
}

/// `s` as PostgreSQL stores text: NUL replaced by U+FFFD.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) }
}

/// `v` as PostgreSQL stores `jsonb`: NUL replaced by U+FFFD in every string and key.
fn pg_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(a) => Value::Array(a.into_iter().map(pg_json).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (pg_text(&k).into_owned(), pg_json(v))).collect())
        }
        other => other,
    }
}

fn ts(ms: i64) -> Option<DateTime<Utc>> {
    if ms <= 0 { None } else { Utc.timestamp_millis_opt(ms).single() }
}

impl PgDeadLetters {
    /// A writer for queue `queue`.
    pub fn new(pool: PgPool, queue: impl Into<String>) -> Self {
        Self { pool, queue: queue.into() }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Records a dead job. Returns the dead letter's id, or `None` when it was already recorded.
    pub async fn record(&self, job: &DyingJob) -> Result<Option<Uuid>, QueueError> {
        let (priority, provider, tenant) = parse_lane_id(&job.lane)
            .map(|l| (l.priority, l.provider.to_owned(), l.tenant.to_owned()))
            .unwrap_or((Priority::Normal, String::new(), String::new()));
        let last = job.history.last();
        let payload_json: Option<serde_json::Value> = serde_json::from_slice(&job.payload).ok().map(pg_json);
        let meta = pg_json(serde_json::to_value(&job.meta).unwrap_or(serde_json::Value::Null));
        let text = |s: &str| pg_text(s).into_owned();
        let texts = |v: Vec<Option<String>>| -> Vec<Option<String>> {
            v.into_iter().map(|s| s.map(|s| text(&s))).collect()
        };
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO dead_letters (job_id, queue, job_type, lane, provider, tenant, priority, \
               payload, payload_json, meta, unique_key, reason, error_class, last_error, \
               provider_status, provider_code, attempts, max_attempts, orphans, enqueued_at, dead_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21) \
             ON CONFLICT (job_id) DO NOTHING RETURNING id",
        )
        .bind(job.id.0)
        .bind(&self.queue)
        .bind(text(&job.job_type))
        .bind(text(&job.lane))
        .bind(text(&provider))
        .bind(text(&tenant))
        .bind(match priority {
            Priority::High => "high",
            Priority::Normal => "normal",
        })
        .bind(&job.payload)
        .bind(payload_json)
        .bind(meta)
        .bind(job.unique_key.as_deref().map(text))
        .bind(job.reason.as_str())
        .bind(text(last.map(|a| a.error_class.as_str()).unwrap_or("unknown")))
        .bind(text(last.map(|a| a.message.as_str()).unwrap_or("")))
        .bind(last.and_then(|a| a.provider_status).map(i32::from))
        .bind(last.and_then(|a| a.provider_code.as_deref()).map(text))
        .bind(job.attempts as i32)
        .bind(job.max_attempts as i32)
        .bind(job.orphans as i32)
        .bind(ts(job.enqueued_at_ms).unwrap_or(now))
        .bind(ts(job.dead_at_ms).unwrap_or(now))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = id
            && !job.history.is_empty()
        {
            let h = &job.history;
            sqlx::query(
                "INSERT INTO dead_letter_attempts (dead_letter_id, seq, attempt, started_at, \
                   finished_at, worker_id, outcome, error_class, message, provider_status, provider_code) \
                 SELECT $1, * FROM UNNEST($2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[], \
                   $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::text[])",
            )
            .bind(id)
            .bind((1..=h.len() as i32).collect::<Vec<_>>())
            .bind(h.iter().map(|a| a.attempt as i32).collect::<Vec<_>>())
            .bind(h.iter().map(|a| ts(a.started_at)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| ts(a.finished_at)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| text(&a.worker)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| text(&a.outcome)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| text(&a.error_class)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| text(&a.message)).collect::<Vec<_>>())
            .bind(h.iter().map(|a| a.provider_status.map(i32::from)).collect::<Vec<_>>())
            .bind(texts(h.iter().map(|a| a.provider_code.clone()).collect()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }
}
