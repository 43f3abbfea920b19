//! Decoding of script replies. Scripts return flat arrays of strings and integers; these helpers
//! turn them into typed values and report anything unexpected as [`QueueError::Protocol`]
//! rather than panicking.

use redis::Value;

use crate::error::QueueError;
use crate::job::{AttemptRecord, DeadReason, DyingJob, JobId, JobMeta};

pub(crate) fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

pub(crate) fn string(v: &Value) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

pub(crate) fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Double(d) => *d as i64,
        other => {
            let s = string(other);
            s.parse::<i64>().or_else(|_| s.parse::<f64>().map(|f| f as i64)).unwrap_or(0)
        }
    }
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Protocol(format!("expected an array, got {other:?}"))),
    }
}

pub(crate) fn job_id(v: &Value) -> Result<JobId, QueueError> {
    let s = string(v);
    s.parse().map_err(|_| QueueError::Protocol(format!("not a job id: {s:?}")))
}

pub(crate) fn meta(v: &Value) -> JobMeta {
    let raw = bytes(v);
    if raw.is_empty() {
        return JobMeta::new();
    }
    serde_json::from_slice(&raw).unwrap_or_default()
}

/// A job record as produced by `job_record` in `common.lua`:
/// id, payload, type, lane, attempts, max attempts, orphans, enqueued, unique, meta, reason,
/// dead at, then history entries.
pub(crate) fn dying_job(v: Value) -> Result<DyingJob, QueueError> {
    let f = array(v)?;
    if f.len() < 12 {
        return Err(QueueError::Protocol(format!("short job record ({} fields)", f.len())));
    }
    let history = f[12..]
        .iter()
        .map(|h| {
            serde_json::from_slice::<AttemptRecord>(&bytes(h)).unwrap_or_else(|e| AttemptRecord {
                attempt: 0,
                started_at: 0,
                finished_at: 0,
                worker: String::new(),
                outcome: "unreadable".into(),
                error_class: "history_unreadable".into(),
                message: format!("history entry could not be read: {e}"),
                provider_status: None,
                provider_code: None,
            })
        })
        .collect();
    let unique = string(&f[8]);
    Ok(DyingJob {
        id: job_id(&f[0])?,
        payload: bytes(&f[1]),
        job_type: string(&f[2]),
        lane: string(&f[3]),
        attempts: int(&f[4]).max(0) as u32,
        max_attempts: int(&f[5]).max(0) as u32,
        orphans: int(&f[6]).max(0) as u32,
        enqueued_at_ms: int(&f[7]),
        unique_key: (!unique.is_empty()).then_some(unique),
        meta: meta(&f[9]),
        reason: DeadReason::parse(&string(&f[10])).unwrap_or(DeadReason::Permanent),
        dead_at_ms: int(&f[11]),
        history,
    })
}
