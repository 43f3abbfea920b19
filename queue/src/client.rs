//! [`Queue`]: the typed face of the Lua scripts. One method per job transition (push, fetch,
//! ack, retry, dead-letter, heartbeat, reap, promote) plus inspection and limits.
//!
//! Invariants: every transition of a leased job presents its lease and is refused when the
//! lease is stale (fencing); every method is safe to retry after a Redis error (a retried push
//! with the same id or unique key is reported as a duplicate, a retried ack of an acked job is
//! refused as stale, and so on); nothing here sleeps or retries on its own, the callers
//! (worker runtime, producers) own retry policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::config::QueueConfig;
use crate::conn::{RedisConn, RedisTarget};
use crate::error::QueueError;
use crate::job::{AttemptRecord, DeadReason, Dedupe, DyingJob, JobId, Lease, LeasedJob, NewJob, PushOutcome};
use crate::keys::Keys;
use crate::reply;
use crate::scripts::Scripts;

/// Jobs per push script call: keeps each call's argument list and run time small.
const PUSH_CHUNK: usize = 250;
/// Acks per script call.
const ACK_CHUNK: usize = 500;

/// A handle on one queue. Cheap to clone; all clones share one multiplexed connection.
#[derive(Clone, Debug)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: RedisConn,
    target: RedisTarget,
    keys: Keys,
    scripts: Scripts,
    config: QueueConfig,
    /// Per worker, the request token of its last fetch if that fetch failed: the next fetch
    /// sends it again, so a fetch whose reply was lost (it may have leased jobs) answers those
    /// leases instead of leaving them to lapse (see `fetch.lua`).
    unanswered_fetch: parking_lot::Mutex<HashMap<String, String>>,
}

/// What an in-job token request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InJobToken {
    /// A token was taken (or the budget has no limit): go.
    Taken,
    /// The rate budget has no token yet: wait this long (nothing taken).
    Wait(Duration),
    /// A pause is in force for this long (nothing taken): the job should go back to its lane,
    /// which sleeps on the pause and wakes when it ends or is lifted.
    Paused(Duration),
}

/// A budget's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many jobs hold the budget at once (fleet-wide).
    Concurrency(u32),
    /// At most `count` jobs start per `per`, with bursts of up to `burst` (GCRA).
    Rate {
        /// Jobs per period.
        count: u32,
        /// The period.
        per: Duration,
        /// Burst size.
        burst: u32,
    },
    /// A lane weight (for `w:` keys).
    Weight(u32),
}

impl Limit {
    fn encode(self) -> String {
        match self {
            Self::Concurrency(n) | Self::Weight(n) => n.to_string(),
            Self::Rate { count, per, burst } => format!("{count}/{}/{}", per.as_millis(), burst.max(1)),
        }
    }

    /// Whether this kind of limit belongs under `budget`: concurrency under `c:`, rate under
    /// `r:`, weight under `w:` (the scripts read a budget's limit by its name's kind).
    pub fn fits(&self, budget: &str) -> bool {
        let prefix = match self {
            Self::Concurrency(_) => "c:",
            Self::Rate { .. } => "r:",
            Self::Weight(_) => "w:",
        };
        budget.starts_with(prefix)
    }

    fn refuse_misfit(budget: &str, limit: &Self) -> Result<(), QueueError> {
        if limit.fits(budget) {
            return Ok(());
        }
        Err(QueueError::Config(vec![format!(
            "limit {limit:?} does not fit budget {budget:?}: concurrency goes under c:, rate under r:, weight under w:"
        )]))
    }

    /// Parses a stored limit given its budget name.
    pub fn decode(budget: &str, raw: &str) -> Option<Self> {
        if budget.starts_with("r:") {
            let mut it = raw.split('/');
            let count = it.next()?.parse().ok()?;
            let per = Duration::from_millis(it.next()?.parse().ok()?);
            let burst = it.next()?.parse().ok()?;
            Some(Self::Rate { count, per, burst })
        } else if budget.starts_with("w:") {
            raw.parse().ok().map(Self::Weight)
        } else {
            raw.parse().ok().map(Self::Concurrency)
        }
    }
}

/// Depth and age of a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Jobs waiting in lanes.
    pub ready: u64,
    /// Jobs waiting for a time (delayed or backing off).
    pub delayed: u64,
    /// Jobs leased to workers.
    pub leased: u64,
    /// Jobs on their way to the dead-letter table.
    pub dying: u64,
    /// Age of the oldest ready job, ms (0 when none).
    pub oldest_ready_age_ms: u64,
    /// Lanes with ready jobs that may run now.
    pub active_lanes: u64,
    /// Budgets some lane is blocked on.
    pub blocked_budgets: u64,
    /// Lanes asleep (paused or out of rate tokens).
    pub sleeping_lanes: u64,
    /// Workers seen recently.
    pub workers: u64,
}

/// What a reap pass did.
#[derive(Debug, Clone, Default)]
pub struct ReapReport {
    /// Jobs put back to run again.
    pub requeued: u64,
    /// Jobs that started dying (poison or out of attempts); their records must be written.
    pub dying: Vec<JobId>,
}

/// A live job's state, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobInfo {
    /// `ready`, `delayed`, `leased` or `dying`.
    pub state: String,
    /// Job type.
    pub job_type: String,
    /// Lane id.
    pub lane: String,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Orphanings.
    pub orphans: u32,
    /// Attempt history.
    pub history: Vec<AttemptRecord>,
}

impl Queue {
    /// Connects (retrying until Redis answers) and validates the config.
    pub async fn connect(config: QueueConfig) -> Result<Self, QueueError> {
        config.validate().map_err(QueueError::Config)?;
        let target = RedisTarget::parse(&config.redis_url)?;
        let conn = RedisConn::connect(&target, config.response_timeout, config.connect_timeout).await?;
        Ok(Self::with_connection(config, target, conn))
    }

    /// Builds a queue over an existing connection.
    pub fn with_connection(config: QueueConfig, target: RedisTarget, conn: RedisConn) -> Self {
        let keys = Keys::new(&config.prefix, &config.name);
        Self {
            inner: Arc::new(Inner {
                conn,
                target,
                keys,
                scripts: Scripts::new(),
                config,
                unanswered_fetch: parking_lot::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Where Redis is.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// A clone of the shared connection, for callers that issue plain commands.
    pub fn connection(&self) -> RedisConn {
        self.inner.conn.clone()
    }

    async fn run(&self, script: &redis::Script, args: Vec<Vec<u8>>) -> Result<Value, QueueError> {
        let mut inv = script.key(self.inner.keys.route());
        inv.arg(self.inner.keys.base());
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.inner.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Pushes one job.
    pub async fn push(&self, job: NewJob) -> Result<PushOutcome, QueueError> {
        let mut out = self.push_bulk(vec![job]).await?;
        out.pop().ok_or_else(|| QueueError::Protocol("push returned nothing".into()))
    }

    /// Pushes many jobs, in chunks sent concurrently over the multiplexed connection
    /// (pipelined). Outcomes come back in input order.
    pub async fn push_bulk(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>, QueueError> {
        for job in &jobs {
            job.validate()?;
        }
        let calls = jobs.chunks(PUSH_CHUNK).map(|chunk| {
            let mut args: Vec<Vec<u8>> = Vec::with_capacity(1 + chunk.len() * 13);
            args.push(chunk.len().to_string().into_bytes());
            for job in chunk {
                args.push(job.id.to_string().into_bytes());
                args.push(job.job_type.clone().into_bytes());
                args.push(job.lane.id().into_bytes());
                args.push(job.lane.budgets.join(" ").into_bytes());
                args.push(job.lane.weight_key.clone().unwrap_or_default().into_bytes());
                args.push(job.lane.class().as_bytes().to_vec());
                args.push(job.payload.clone());
                args.push(job.max_attempts.to_string().into_bytes());
                args.push(job.unique_key.clone().unwrap_or_default().into_bytes());
                args.push(job.delay.as_millis().to_string().into_bytes());
                args.push(if job.meta.is_empty() {
                    Vec::new()
                } else {
                    serde_json::to_vec(&job.meta).unwrap_or_default()
                });
                // The dedupe: a key and its TTL in ms, or a series and `@<stamp>` (push.lua).
                let (key, rule) = match &job.dedupe {
                    None => (String::new(), "0".to_owned()),
                    Some(Dedupe::For { key, ttl }) => (key.clone(), ttl.as_millis().to_string()),
                    Some(Dedupe::UpTo { key, stamp }) => (key.clone(), format!("@{stamp}")),
                };
                args.push(key.into_bytes());
                args.push(rule.into_bytes());
            }
            self.run(&self.inner.scripts.push, args)
        });
        let replies = futures::future::try_join_all(calls).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for reply in replies {
            for v in reply::array(reply)? {
                let s = reply::string(&v);
                out.push(match s.strip_prefix("dup:") {
                    Some(existing) => PushOutcome::Duplicate(existing.parse().map_err(|_| {
                        QueueError::Protocol(format!("duplicate of unreadable id {existing:?}"))
                    })?),
                    None => PushOutcome::Enqueued(reply::job_id(&v)?),
                });
            }
        }
        metrics::counter!("crm_fleet_jobs_enqueued_total")
            .increment(out.iter().filter(|o| !o.is_duplicate()).count() as u64);
        Ok(out)
    }

    /// Leases up to `max` admissible jobs to `worker`.
    pub async fn fetch(&self, worker: &str, max: usize) -> Result<Vec<LeasedJob>, QueueError> {
        Ok(self.fetch_with_wake(worker, max).await?.0)
    }

    /// As [`Queue::fetch`], also telling how long until a sleeping lane (paused, or waiting for a
    /// rate token) or a delayed job becomes due (`None` when nothing waits on the clock).
    pub async fn fetch_with_wake(
        &self,
        worker: &str,
        max: usize,
    ) -> Result<(Vec<LeasedJob>, Option<Duration>), QueueError> {
        let c = &self.inner.config;
        let max_scan = max * 4 + 64;
        // A fetch that failed may have run all the same (its reply lost with a dropped
        // connection, or late): its token goes with the next fetch of this worker, which then
        // gets those leases back. (Jobs only start from fetches, so the worker's room has not
        // shrunk meanwhile.)
        let token =
            self.inner.unanswered_fetch.lock().remove(worker).unwrap_or_else(|| Uuid::new_v4().to_string());
        let reply = self
            .run(
                &self.inner.scripts.fetch,
                vec![
                    worker.as_bytes().to_vec(),
                    c.lease_ttl.as_millis().to_string().into_bytes(),
                    max.to_string().into_bytes(),
                    c.sync_aging.as_millis().to_string().into_bytes(),
                    max_scan.to_string().into_bytes(),
                    token.clone().into_bytes(),
                ],
            )
            .await
            .inspect_err(|_| {
                self.inner.unanswered_fetch.lock().insert(worker.to_owned(), token);
            })?;
        let lease_ms = c.lease_ttl.as_millis() as i64;
        let parts = reply::array(reply)?;
        let mut parts = parts.into_iter();
        let rows = parts.next().unwrap_or(Value::Nil);
        let next_wake = parts.next().map(|v| reply::int(&v)).unwrap_or(-1);
        let now = parts.next().map(|v| reply::int(&v)).unwrap_or(0);
        let wake = (next_wake >= 0).then(|| Duration::from_millis((next_wake - now).max(0) as u64));
        let jobs = reply::array(rows)?
            .into_iter()
            .map(|row| {
                let f = reply::array(row)?;
                if f.len() < 11 {
                    return Err(QueueError::Protocol(format!("short fetch row ({} fields)", f.len())));
                }
                let expiry = reply::int(&f[10]);
                Ok(LeasedJob {
                    lease: Lease { job: reply::job_id(&f[0])?, id: reply::string(&f[1]) },
                    payload: reply::bytes(&f[2]),
                    job_type: reply::string(&f[3]),
                    attempt: reply::int(&f[4]).max(0) as u32,
                    max_attempts: reply::int(&f[5]).max(0) as u32,
                    enqueued_at_ms: reply::int(&f[6]),
                    lane: reply::string(&f[7]),
                    meta: reply::meta(&f[8]),
                    orphans: reply::int(&f[9]).max(0) as u32,
                    lease_expiry_ms: expiry,
                    started_at_ms: expiry - lease_ms,
                })
            })
            .collect::<Result<Vec<_>, QueueError>>()?;
        Ok((jobs, wake))
    }

    /// Acks completed jobs; returns, per lease, whether it was accepted (false: stale lease, the
    /// job had been reclaimed).
    pub async fn ack(&self, leases: &[Lease]) -> Result<Vec<bool>, QueueError> {
        let mut out = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(ACK_CHUNK) {
            let mut args = Vec::with_capacity(1 + chunk.len() * 2);
            args.push(chunk.len().to_string().into_bytes());
            for l in chunk {
                args.push(l.job.to_string().into_bytes());
                args.push(l.id.clone().into_bytes());
            }
            let reply = self.run(&self.inner.scripts.ack, args).await?;
            out.extend(reply::array(reply)?.iter().map(|v| reply::int(v) == 1));
        }
        Ok(out)
    }

    /// Returns a leased job for another attempt after `delay`. With `refund` the attempt does
    /// not count (the job was deferred or interrupted, not failed); with `front` it goes to the
    /// head of its lane. Returns false when the lease is stale.
    pub async fn retry(
        &self,
        lease: &Lease,
        delay: Duration,
        record: Option<&AttemptRecord>,
        refund: bool,
        front: bool,
    ) -> Result<bool, QueueError> {
        let entry = match record {
            Some(r) => serde_json::to_vec(r).unwrap_or_default(),
            None => Vec::new(),
        };
        let reply = self
            .run(
                &self.inner.scripts.retry,
                vec![
                    lease.job.to_string().into_bytes(),
                    lease.id.clone().into_bytes(),
                    delay.as_millis().to_string().into_bytes(),
                    entry,
                    if refund { b"1".to_vec() } else { b"0".to_vec() },
                    if front { b"1".to_vec() } else { b"0".to_vec() },
                ],
            )
            .await?;
        Ok(reply::int(&reply) == 1)
    }

    /// Starts dead-lettering a leased job: it leaves the live sets and waits in the `dying`
    /// outbox until [`Queue::finalize`] after its PostgreSQL record is written. Returns the
    /// record to write, or `None` when the lease is stale.
    pub async fn dead_letter(
        &self,
        lease: &Lease,
        record: &AttemptRecord,
        reason: DeadReason,
    ) -> Result<Option<DyingJob>, QueueError> {
        let reply = self
            .run(
                &self.inner.scripts.dead,
                vec![
                    lease.job.to_string().into_bytes(),
                    lease.id.clone().into_bytes(),
                    serde_json::to_vec(record).unwrap_or_default(),
                    reason.as_str().as_bytes().to_vec(),
                ],
            )
            .await?;
        let fields = reply::array(reply)?;
        if fields.is_empty() {
            return Ok(None);
        }
        reply::dying_job(Value::Array(fields)).map(Some)
    }

    /// Removes dead-lettered jobs (after their records are durable).
    pub async fn finalize(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let args = ids.iter().map(|id| id.to_string().into_bytes()).collect();
        let reply = self.run(&self.inner.scripts.finalize, args).await?;
        Ok(reply::int(&reply).max(0) as u64)
    }

    /// Records of dying jobs older than `grace` whose writer presumably died.
    pub async fn collect_dying(&self, grace: Duration, limit: usize) -> Result<Vec<DyingJob>, QueueError> {
        let reply = self
            .run(
                &self.inner.scripts.collect_dying,
                vec![grace.as_millis().to_string().into_bytes(), limit.to_string().into_bytes()],
            )
            .await?;
        reply::array(reply)?.into_iter().map(reply::dying_job).collect()
    }

    /// Records of the given jobs.
    pub async fn records(&self, ids: &[JobId]) -> Result<Vec<DyingJob>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let args = ids.iter().map(|id| id.to_string().into_bytes()).collect();
        let reply = self.run(&self.inner.scripts.records, args).await?;
        reply::array(reply)?.into_iter().map(reply::dying_job).collect()
    }

    /// Renews `worker`'s leases; returns the jobs whose lease was lost.
    pub async fn heartbeat(&self, worker: &str, leases: &[Lease]) -> Result<Vec<JobId>, QueueError> {
        let mut lost = Vec::new();
        let ttl = self.inner.config.lease_ttl.as_millis().to_string();
        // An empty heartbeat still registers the worker as alive.
        let chunks: Vec<&[Lease]> =
            if leases.is_empty() { vec![&[]] } else { leases.chunks(ACK_CHUNK).collect() };
        for chunk in chunks {
            let mut args = Vec::with_capacity(3 + chunk.len() * 2);
            args.push(worker.as_bytes().to_vec());
            args.push(ttl.clone().into_bytes());
            args.push(chunk.len().to_string().into_bytes());
            for l in chunk {
                args.push(l.job.to_string().into_bytes());
                args.push(l.id.clone().into_bytes());
            }
            let reply = self.run(&self.inner.scripts.heartbeat, args).await?;
            for v in reply::array(reply)? {
                lost.push(reply::job_id(&v)?);
            }
        }
        Ok(lost)
    }

    /// Reclaims up to `limit` jobs whose lease expired.
    pub async fn reap(&self, reaper: &str, limit: usize) -> Result<ReapReport, QueueError> {
        let c = &self.inner.config;
        let horizon = (c.lease_ttl * 10).as_millis().to_string();
        let reply = self
            .run(
                &self.inner.scripts.reap,
                vec![
                    reaper.as_bytes().to_vec(),
                    c.poison_limit.to_string().into_bytes(),
                    limit.to_string().into_bytes(),
                    horizon.into_bytes(),
                ],
            )
            .await?;
        let items = reply::array(reply)?;
        let mut report = ReapReport::default();
        if let Some(first) = items.first() {
            report.requeued = reply::int(first).max(0) as u64;
        }
        for v in items.iter().skip(1) {
            report.dying.push(reply::job_id(v)?);
        }
        Ok(report)
    }

    /// Promotes up to `limit` due delayed jobs and wakes lanes whose sleep ended. Returns
    /// (jobs promoted, lanes woken, whether more may be due).
    pub async fn promote(&self, limit: usize) -> Result<(u64, u64, bool), QueueError> {
        let reply = self.run(&self.inner.scripts.promote, vec![limit.to_string().into_bytes()]).await?;
        let f = reply::array(reply)?;
        let get = |i: usize| f.get(i).map(reply::int).unwrap_or(0).max(0) as u64;
        Ok((get(0), get(1), get(2) == 1))
    }

    /// Depth and age.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let reply = self.run(&self.inner.scripts.stats, Vec::new()).await?;
        let f = reply::array(reply)?;
        let get = |i: usize| f.get(i).map(reply::int).unwrap_or(0);
        let oldest = get(4);
        let now = get(9);
        Ok(QueueStats {
            ready: get(0).max(0) as u64,
            delayed: get(1).max(0) as u64,
            leased: get(2).max(0) as u64,
            dying: get(3).max(0) as u64,
            oldest_ready_age_ms: if oldest < 0 { 0 } else { (now - oldest).max(0) as u64 },
            active_lanes: get(5).max(0) as u64,
            blocked_budgets: get(6).max(0) as u64,
            sleeping_lanes: get(7).max(0) as u64,
            workers: get(8).max(0) as u64,
        })
    }

    /// A live job's state, or `None` when it is not in Redis (never pushed, finished, or
    /// dead-lettered).
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>, QueueError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.job(&id.to_string());
        let fields: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&key).arg(&["s", "t", "l", "a", "m", "o"]).query_async(&mut conn).await?;
        let Some(state) = fields.first().cloned().flatten() else {
            return Ok(None);
        };
        let history: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.inner.keys.history(&id.to_string()))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let num =
            |i: usize| fields.get(i).cloned().flatten().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        let text = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
        Ok(Some(JobInfo {
            state: match state.as_str() {
                "r" => "ready",
                "d" => "delayed",
                "l" => "leased",
                "z" => "dying",
                _ => "unknown",
            }
            .to_owned(),
            job_type: text(1),
            lane: text(2),
            attempts: num(3),
            max_attempts: num(4),
            orphans: num(5),
            history: history.iter().filter_map(|h| serde_json::from_slice(h).ok()).collect(),
        }))
    }

    /// Sets a budget's limit (`c:` concurrency, `r:` rate, `w:` weight). Names may end in
    /// `:*` to set a default for every budget under that prefix.
    pub async fn set_limit(&self, budget: &str, limit: Limit) -> Result<(), QueueError> {
        Limit::refuse_misfit(budget, &limit)?;
        let mut conn = self.inner.conn.clone();
        let _: () = redis::cmd("HSET")
            .arg(self.inner.keys.key("limits"))
            .arg(budget)
            .arg(limit.encode())
            .query_async(&mut conn)
            .await?;
        // A raised limit may unblock lanes; the next promote pass wakes them.
        Ok(())
    }

    /// Replaces every limit at once (hot reload from PostgreSQL).
    pub async fn replace_limits(&self, limits: &HashMap<String, Limit>) -> Result<(), QueueError> {
        for (budget, limit) in limits {
            Limit::refuse_misfit(budget, limit)?;
        }
        let key = self.inner.keys.key("limits");
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        for (budget, limit) in limits {
            pipe.hset(&key, budget, limit.encode()).ignore();
        }
        let mut conn = self.inner.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Removes a budget's limit.
    pub async fn remove_limit(&self, budget: &str) -> Result<(), QueueError> {
        let mut conn = self.inner.conn.clone();
        let _: () =
            redis::cmd("HDEL").arg(self.inner.keys.key("limits")).arg(budget).query_async(&mut conn).await?;
        Ok(())
    }

    /// The highest stamp decided for each of `series` ([`Dedupe::UpTo`]), `None` if none was.
    pub async fn marks(&self, series: &[String]) -> Result<Vec<Option<i64>>, QueueError> {
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.inner.conn.clone();
        Ok(redis::cmd("HMGET").arg(self.inner.keys.key("wm")).arg(series).query_async(&mut conn).await?)
    }

    /// Forgets series ([`Dedupe::UpTo`]) that will not be pushed again (a deleted schedule's),
    /// so their marks do not outlive them. Returns how many were known.
    pub async fn forget_marks(&self, series: &[String]) -> Result<u64, QueueError> {
        if series.is_empty() {
            return Ok(0);
        }
        let mut conn = self.inner.conn.clone();
        Ok(redis::cmd("HDEL").arg(self.inner.keys.key("wm")).arg(series).query_async(&mut conn).await?)
    }

    /// Every configured limit.
    pub async fn limits(&self) -> Result<HashMap<String, Limit>, QueueError> {
        let mut conn = self.inner.conn.clone();
        let raw: HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.inner.keys.key("limits")).query_async(&mut conn).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| Limit::decode(&k, &v).map(|l| (k, l))).collect())
    }

    /// Jobs currently holding a concurrency budget.
    pub async fn slots_in_use(&self, budget: &str) -> Result<u64, QueueError> {
        let mut conn = self.inner.conn.clone();
        let n: u64 = redis::cmd("ZCARD")
            .arg(self.inner.keys.key(&format!("slots:{budget}")))
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// Concurrency budgets currently held, with their holders (single Redis server; on a
    /// cluster the queue's slot is scanned on the node that owns it).
    pub async fn slots(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let mut conn = self.inner.conn.clone();
        let prefix = self.inner.keys.key("slots:");
        let pattern = format!("{}*", escape_glob(&prefix));
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for k in keys {
                let n: u64 = redis::cmd("ZCARD").arg(&k).query_async(&mut conn).await?;
                if n > 0 {
                    out.push((k.trim_start_matches(&prefix).to_owned(), n));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        Ok(out)
    }

    /// Pauses a budget fleet-wide for `duration` (zero lifts the pause). Lanes needing it sleep
    /// until then without holding workers or spending attempts. Returns the pause end (ms since
    /// the epoch, Redis clock), or 0 when lifted.
    pub async fn pause(&self, budget: &str, duration: Duration) -> Result<i64, QueueError> {
        let reply = self
            .run(
                &self.inner.scripts.pause,
                vec![budget.as_bytes().to_vec(), duration.as_millis().to_string().into_bytes()],
            )
            .await?;
        Ok(reply::int(&reply))
    }

    /// Takes one token of a rate budget (or checks a pause) for a request inside a running job.
    /// `None`: go ahead; `Some(wait)`: nothing taken, try again after `wait`.
    pub async fn take_token(&self, budget: &str) -> Result<Option<Duration>, QueueError> {
        Ok(match self.take_token_unless_paused(budget, &[]).await? {
            InJobToken::Taken => None,
            InJobToken::Wait(d) | InJobToken::Paused(d) => Some(d),
        })
    }

    /// As [`Queue::take_token`], but first checks that none of `pauses` is in force (a pause set
    /// after the job was admitted, e.g. the account's throttle pause): while one is, nothing is
    /// taken and the answer is [`InJobToken::Paused`]. A pause budget as `budget`, with no limit
    /// of its own, makes this a pure check.
    pub async fn take_token_unless_paused(
        &self,
        budget: &str,
        pauses: &[&str],
    ) -> Result<InJobToken, QueueError> {
        let mut args = Vec::with_capacity(1 + pauses.len());
        args.push(budget.as_bytes().to_vec());
        args.extend(pauses.iter().map(|p| p.as_bytes().to_vec()));
        let reply = self.run(&self.inner.scripts.take, args).await?;
        let ms = reply::int(&reply);
        Ok(match ms {
            0 => InJobToken::Taken,
            ms if ms > 0 => InJobToken::Wait(Duration::from_millis(ms as u64)),
            ms => InJobToken::Paused(Duration::from_millis(ms.unsigned_abs())),
        })
    }

    /// Current pauses: budget → end (ms since the epoch).
    pub async fn pauses(&self) -> Result<HashMap<String, i64>, QueueError> {
        let mut conn = self.inner.conn.clone();
        let raw: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(self.inner.keys.key("paused")).query_async(&mut conn).await?;
        Ok(raw)
    }

    /// Workers seen recently: id → last heartbeat (ms since the epoch).
    pub async fn workers(&self) -> Result<Vec<(String, i64)>, QueueError> {
        let mut conn = self.inner.conn.clone();
        let raw: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(self.inner.keys.key("workers"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(raw)
    }

    /// Blocks up to `timeout` on the wake-up list of this queue using `conn` (a dedicated
    /// blocking connection). Returns whether a signal arrived.
    pub async fn wait_signal(&self, conn: &mut RedisConn, timeout: Duration) -> Result<bool, QueueError> {
        let secs = timeout.as_secs_f64().max(0.01);
        let reply: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.inner.keys.signal())
            .arg(format!("{secs:.3}"))
            .query_async(conn)
            .await?;
        Ok(reply.is_some())
    }

    /// Deletes every key of this queue (tests and `crmctl` purge of a scratch queue only).
    /// Scans with the queue's own pattern; never touches other queues.
    pub async fn destroy(&self) -> Result<u64, QueueError> {
        if matches!(self.inner.target, RedisTarget::Cluster(_)) {
            return Err(QueueError::Config(vec![
                "destroy is only supported on a single Redis server".into(),
            ]));
        }
        let pattern = format!("{}*", escape_glob(self.inner.keys.base()));
        let mut deleted = 0u64;
        let mut conn = self.inner.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
    }

    /// Round-trips a PING (readiness checks).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.inner.conn.clone();
        let _: Value = conn.req_packed_command(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Redis server settings that can lose jobs, one sentence each, for the processes to log at
    /// start (empty when there are none, or when the server refuses `CONFIG GET`, as some
    /// managed services do: then nothing can be said).
    pub async fn server_warnings(&self) -> Vec<String> {
        let mut conn = self.inner.conn.clone();
        let mut config = HashMap::new();
        // One setting a call: `CONFIG GET` takes several only from Redis 7.
        for name in ["maxmemory-policy", "appendonly"] {
            let got: Result<HashMap<String, String>, _> =
                redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await;
            match got {
                Ok(got) => config.extend(got),
                Err(error) => tracing::info!(
                    message = "Redis refused CONFIG GET; its durability settings are not checked",
                    setting = name,
                    %error
                ),
            }
        }
        server_warnings(&config)
    }
}

/// The warnings of [`Queue::server_warnings`] for a server's `CONFIG GET` answer.
fn server_warnings(config: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(policy) = config.get("maxmemory-policy").filter(|p| p.as_str() != "noeviction") {
        out.push(format!(
            "Redis maxmemory-policy is {policy}: when Redis reaches maxmemory it deletes keys, queued jobs \
             and their leases among them; set maxmemory-policy noeviction (pushes then fail loudly instead)"
        ));
    }
    if config.get("appendonly").is_some_and(|a| a == "no") {
        out.push(
            "Redis appendonly is no: a Redis restart loses every job pushed since its last snapshot; \
             set appendonly yes (appendfsync everysec loses at most about a second)"
                .to_owned(),
        );
    }
    out
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_non_evicting_server_gets_no_warning() {
        let config = |policy: &str, aof: &str| {
            HashMap::from([
                ("maxmemory-policy".to_owned(), policy.to_owned()),
                ("appendonly".to_owned(), aof.to_owned()),
            ])
        };
        assert!(server_warnings(&config("noeviction", "yes")).is_empty());
        assert_eq!(server_warnings(&config("volatile-lru", "yes")).len(), 1);
        assert_eq!(server_warnings(&config("noeviction", "no")).len(), 1);
        assert!(server_warnings(&HashMap::new()).is_empty(), "unknown settings: nothing to say");
    }
}
