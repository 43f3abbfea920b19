//! What provider answers do to the fleet's budgets: a throttle pauses the provider account
//! for every worker until its reset; a connection that needs re-authorisation is parked; quota
//! headers feed the account's rate budget. One place maps a failed call to the job's decision.
//!
//! Invariant: a job that cannot run because of a budget (throttled account, parked connection)
//! is deferred — it holds no worker and spends no attempt — and the lane sleeps on the pause,
//! so no request reaches the provider until the pause ends.
//!
//! Three mechanisms adapt the rate of a provider account (`r:account:<p>:<account>`):
//! 1. **Seeds**: the documented quotas ([`defaults`]) at 98 % (a margin for clock skew between
//!    our limiter and the provider's window), stored in PostgreSQL and hot-reloaded ([`Syncer`]).
//! 2. **Observation**: a response's quota headers name the real limit and window; the account's
//!    rate is set to 98 % of it (plans differ from the seeds).
//! 3. **Throttles**: a 429 pauses the account until its reset and halves its rate (multiplicative
//!    decrease); each quiet interval without a throttle adds back 10 % of the learned rate
//!    (additive increase), up to it.
//!
//! A per-provider **circuit breaker** ([`breaker`]) pauses a provider's lanes when most requests
//! fail transiently, then lets a single probe through (half-open) before closing.

use std::collections::HashMap;
use std::time::Duration;

use crm_queue::{JobError, Limit, Queue};
use redis::AsyncCommands;

use crate::auth::AuthError;
use crate::auth::call::CallError;
use crate::enqueue::{Target, budget};
use crate::ops::JobContext;
use crate::providers::{ProviderError, QuotaObservation, ThrottleScope};

/// When a throttle names no wait, pause this long (HubSpot's burst window).
pub const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(10);
/// How long a connection awaiting re-authorisation is parked (re-authorising lifts it at once).
pub const REAUTH_PARK: Duration = Duration::from_secs(24 * 3600);

/// How long a provider whose token endpoint refuses the OAuth app's credentials is paused
/// (each job that meets the refusal again renews it); fixing the app takes effect within it.
pub const APP_REFUSED_PAUSE: Duration = Duration::from_secs(300);

/// Feeds a response's quota headers to the account's budgets: an exhausted window pauses the
/// account until it resets, before the provider has to say 429.
pub async fn observe(ctx: &JobContext, target: &Target, quota: Option<&QuotaObservation>) {
    breaker::record(&ctx.queue, target.provider, false).await;
    let Some(q) = quota else { return };
    adapt_from(&ctx.queue, &budget::rate(target.provider, &target.account), q).await;
    let pause = if q.daily_remaining == Some(0) {
        Some(q.reset_after.unwrap_or(Duration::from_secs(3600)))
    } else if q.remaining == Some(0) {
        Some(q.reset_after.or(q.window).unwrap_or(DEFAULT_THROTTLE_PAUSE))
    } else {
        None
    };
    if let Some(d) = pause {
        let b = budget::account_pause(target.provider, &target.account);
        if let Err(e) = ctx.queue.pause(&b, d).await {
            tracing::warn!(message = "could not pause an exhausted account", %e);
        }
        let scope = if q.daily_remaining == Some(0) { "daily" } else { "window" };
        metrics::counter!("crm_fleet_provider_quota_exhausted_total", "provider" => target.provider.as_str(), "scope" => scope)
            .increment(1);
        tracing::info!(message = "provider quota used up; account paused fleet-wide", provider = %target.provider,
            scope, pause_ms = d.as_millis() as u64);
    }
}

/// The decision for a failed call, after applying its side effects.
pub async fn on_error(ctx: &JobContext, target: &Target, error: &CallError) -> JobError {
    match error {
        CallError::Auth(e) if e.needs_reauth() => {
            let b = budget::connection_pause(target.connection);
            if let Err(err) = ctx.queue.pause(&b, REAUTH_PARK).await {
                tracing::warn!(message = "could not park a connection", %err);
            }
            tracing::warn!(message = "connection parked until re-authorised", connection = %target.connection,
                provider = %target.provider, tenant = %target.tenant);
            // Back to the head of its lane, which now sleeps on the pause: no attempt spent.
            JobError::defer(Duration::from_secs(1), "needs_reauth", e.to_string())
        }
        CallError::Auth(AuthError::Transient(m)) => JobError::transient("token_refresh", m.clone()),
        CallError::Auth(e @ AuthError::AppRefused(_)) => {
            // Every job of the provider would fail the same way until the app is fixed: pause the
            // provider (renewed by each job that meets the refusal) instead of spending attempts
            // or dead-lettering them all. `crmctl limits resume x:provider:<p>` lifts it at once.
            if let Err(err) = ctx.queue.pause(&budget::breaker(target.provider), APP_REFUSED_PAUSE).await {
                tracing::warn!(message = "could not pause a provider", %err);
            }
            tracing::error!(message = "provider paused: it refuses the OAuth app's credentials", provider = %target.provider,
                pause_ms = APP_REFUSED_PAUSE.as_millis() as u64);
            JobError::defer(Duration::from_secs(1), "app_refused", e.to_string())
        }
        CallError::Auth(AuthError::NotFound(id)) => {
            JobError::permanent("not_found", format!("connection {id} is gone"))
        }
        CallError::Auth(e @ AuthError::Key(crate::auth::KeyError::UnknownKey(_))) => {
            // Sealed with a key this process lacks: during a key rotation's roll, a replica not
            // yet rolled meets tokens a rolled one wrote. Another attempt (likely on a rolled
            // replica, or after the roll) can read them; dead-lettering cannot.
            JobError::transient(
                "token_key",
                format!("{e}; this process lacks the key (a rotation not yet rolled out everywhere?)"),
            )
        }
        CallError::Auth(e @ (AuthError::Config(_) | AuthError::Key(_))) => {
            JobError::permanent("config", e.to_string())
        }
        CallError::Auth(e) => JobError::transient("auth", e.to_string()),
        CallError::Provider(p) => on_provider_error(ctx, target, p).await,
    }
}

async fn on_provider_error(ctx: &JobContext, target: &Target, error: &ProviderError) -> JobError {
    let transient = matches!(error, ProviderError::Transient { .. } | ProviderError::OutcomeUnknown { .. });
    if transient && breaker::record(&ctx.queue, target.provider, true).await {
        // The provider is failing for everyone: wait for the breaker instead of spending attempts.
        return JobError::defer(Duration::from_secs(1), "provider_unavailable", error.to_string())
            .with_provider(error.status(), error.code());
    }
    if !transient {
        breaker::record(&ctx.queue, target.provider, false).await;
    }
    if let ProviderError::Throttled { retry_after, scope, .. } = error {
        if *scope == ThrottleScope::Burst {
            decrease(&ctx.queue, &budget::rate(target.provider, &target.account)).await;
        }
        let wait = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
        metrics::counter!("crm_fleet_provider_throttled_total", "provider" => target.provider.as_str(), "scope" => scope.as_str())
            .increment(1);
        if *scope != ThrottleScope::Search {
            let b = budget::account_pause(target.provider, &target.account);
            if let Err(e) = ctx.queue.pause(&b, wait).await {
                tracing::warn!(message = "could not pause a throttled account", %e);
            }
            tracing::info!(message = "provider account throttled; paused fleet-wide", provider = %target.provider,
                scope = scope.as_str(), pause_ms = wait.as_millis() as u64);
            return crate::enqueue::back_to_lane(crate::enqueue::LanePause::Throttled, error.to_string())
                .with_provider(error.status(), error.code());
        }
        return JobError::defer(wait, "throttled", error.to_string())
            .with_provider(error.status(), error.code());
    }
    error.to_job_error()
}

/// Fraction of a provider's quota the fleet uses: a margin for the skew between our limiter's
/// clock and the provider's window, so that throttles stay rare while utilisation stays high.
pub const QUOTA_SHARE: f64 = 0.98;
/// A throttle halves the account's rate.
pub const DECREASE: f64 = 0.5;
/// Each quiet interval adds back this share of the learned rate.
pub const INCREASE: f64 = 0.10;
/// How long without a throttle counts as a quiet interval.
pub const QUIET: Duration = Duration::from_secs(30);

/// A limit row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LimitRow {
    /// Budget name (may end in `:*`).
    pub budget: String,
    /// The limit.
    #[serde(skip)]
    pub limit: Limit,
    /// `default` or `operator`.
    pub source: String,
    /// Where the value comes from.
    pub note: String,
}

/// A rate at [`QUOTA_SHARE`] of a provider limit. The burst is the headroom left under the limit
/// (GCRA lets at most `count + burst - 1` through in any window of `per`, so this never exceeds
/// `limit`), which lets a token claimed slightly late still be used instead of lost.
fn rate(limit: u32, per: Duration) -> Limit {
    let c = ((f64::from(limit) * QUOTA_SHARE).floor() as u32).max(1);
    Limit::Rate { count: c, per, burst: (limit.saturating_sub(c)).max(1) }
}

/// The documented-quota seeds (see `/work/shared/research/crm-providers.md` sections x.2).
pub fn defaults() -> Vec<LimitRow> {
    let row = |budget: &str, limit: Limit, note: &str| LimitRow {
        budget: budget.to_owned(),
        limit,
        source: "default".into(),
        note: note.into(),
    };
    vec![
        row(
            "r:account:hubspot:*",
            rate(100, Duration::from_secs(10)),
            "HubSpot: 100 requests / 10 s per private app (Starter); headers refine it",
        ),
        row(
            "r:account:salesforce:*",
            rate(100_000, Duration::from_secs(86_400)),
            "Salesforce: 100,000 API requests / rolling 24 h per org (Enterprise base)",
        ),
        row(
            "c:tenant:salesforce:*",
            Limit::Concurrency(20),
            "Salesforce: 25 concurrent long requests per production org; keep 5 spare",
        ),
        row(
            "r:account:pipedrive:*",
            rate(20, Duration::from_secs(2)),
            "Pipedrive: 20 requests / 2 s per API token (Lite); headers refine it",
        ),
        row(
            "r:account:zoho:*",
            rate(50_000, Duration::from_secs(86_400)),
            "Zoho CRM: 50,000 credits / 24 h (Standard base)",
        ),
        row(
            "c:tenant:zoho:*",
            Limit::Concurrency(5),
            "Zoho CRM: 5 concurrent calls per org (Free edition, the lowest)",
        ),
        row(
            "r:account:close:*",
            rate(16, Duration::from_secs(1)),
            "Close: the strictest endpoint group per API key (search); headers refine it",
        ),
        row(
            "c:tenant:hubspot:*",
            Limit::Concurrency(10),
            "fairness: at most 10 jobs of one tenant per provider at once",
        ),
        row("c:tenant:pipedrive:*", Limit::Concurrency(10), "fairness"),
        row("c:tenant:close:*", Limit::Concurrency(10), "fairness"),
        row("c:conn:*", Limit::Concurrency(10), "fairness: at most 10 jobs per connection at once"),
    ]
}

fn to_row(
    budget: String,
    kind: &str,
    count: i32,
    period_ms: Option<i64>,
    burst: Option<i32>,
) -> Option<Limit> {
    let count = u32::try_from(count).ok()?;
    let limit = match kind {
        "concurrency" => Limit::Concurrency(count),
        "weight" => Limit::Weight(count),
        _ => Limit::Rate {
            count,
            per: Duration::from_millis(u64::try_from(period_ms?).ok()?),
            burst: burst.and_then(|b| u32::try_from(b).ok()).unwrap_or(1),
        },
    };
    // A row whose kind does not fit its budget's name (a rate under `c:`, say, inserted by
    // hand) is not applied; the queue would refuse it.
    if !limit.fits(&budget) {
        tracing::warn!(message = "limit ignored: its kind does not fit its budget's name", %budget, kind);
        return None;
    }
    Some(limit).filter(|_| !budget.is_empty())
}

/// Stores the seeds (leaving operator rows alone) — idempotent, run at start.
pub async fn seed(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    for r in defaults() {
        let (kind, count, period, burst) = parts(r.limit);
        sqlx::query(
            "INSERT INTO limits (budget, kind, count, period_ms, burst, source, note) VALUES ($1,$2,$3,$4,$5,'default',$6) \
             ON CONFLICT (budget) DO UPDATE SET kind = $2, count = $3, period_ms = $4, burst = $5, note = $6, updated_at = now() \
             WHERE limits.source = 'default'",
        )
        .bind(&r.budget)
        .bind(kind)
        .bind(count)
        .bind(period)
        .bind(burst)
        .bind(&r.note)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn parts(l: Limit) -> (&'static str, i32, Option<i64>, Option<i32>) {
    match l {
        Limit::Concurrency(n) => ("concurrency", n as i32, None, None),
        Limit::Weight(n) => ("weight", n as i32, None, None),
        Limit::Rate { count, per, burst } => {
            ("rate", count as i32, Some(per.as_millis() as i64), Some(burst as i32))
        }
    }
}

/// Sets (or replaces) an operator limit.
pub async fn set(pool: &sqlx::PgPool, budget: &str, limit: Limit, note: &str) -> Result<(), sqlx::Error> {
    let (kind, count, period, burst) = parts(limit);
    sqlx::query(
        "INSERT INTO limits (budget, kind, count, period_ms, burst, source, note) VALUES ($1,$2,$3,$4,$5,'operator',$6) \
         ON CONFLICT (budget) DO UPDATE SET kind = $2, count = $3, period_ms = $4, burst = $5, source = 'operator', \
           note = $6, updated_at = now()",
    )
    .bind(budget)
    .bind(kind)
    .bind(count)
    .bind(period)
    .bind(burst)
    .bind(note)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes a limit.
pub async fn unset(pool: &sqlx::PgPool, budget: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM limits WHERE budget = $1").bind(budget).execute(pool).await?.rows_affected()
        > 0)
}

/// Every configured limit.
pub async fn load(pool: &sqlx::PgPool) -> Result<Vec<LimitRow>, sqlx::Error> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, String, i32, Option<i64>, Option<i32>, String, String)> = sqlx::query_as(
        "SELECT budget, kind, count, period_ms, burst, source, note FROM limits ORDER BY budget",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(b, k, c, p, bu, source, note)| {
            to_row(b.clone(), &k, c, p, bu).map(|limit| LimitRow { budget: b, limit, source, note })
        })
        .collect())
}

/// Copies the configured limits into the queue's budgets (keys it set before and that are no
/// longer configured are removed; learned per-account rates are left alone).
pub async fn apply(queue: &Queue, rows: &[LimitRow]) -> Result<usize, crm_queue::QueueError> {
    let mut conn = queue.connection();
    let managed_key = queue.keys().key("limits:managed");
    let before: Vec<String> = conn.smembers(&managed_key).await.map_err(crm_queue::QueueError::from)?;
    let now: HashMap<&str, Limit> = rows.iter().map(|r| (r.budget.as_str(), r.limit)).collect();
    for stale in before.iter().filter(|b| !now.contains_key(b.as_str())) {
        queue.remove_limit(stale).await?;
        let _: () = conn.srem(&managed_key, stale).await.map_err(crm_queue::QueueError::from)?;
    }
    let current = queue.limits().await?;
    let mut changed = 0;
    for (budget, limit) in &now {
        if current.get(*budget) != Some(limit) {
            queue.set_limit(budget, *limit).await?;
            changed += 1;
        }
        let _: () = conn.sadd(&managed_key, *budget).await.map_err(crm_queue::QueueError::from)?;
    }
    Ok(changed)
}

/// Hot reload: copies PostgreSQL limits into the queue every `interval` (changes apply within
/// it). One lifecycle: `start`, `stop` (twice is harmless).
pub struct Syncer(crate::periodic::Periodic);

/// How often limits are reloaded.
pub const DEFAULT_RELOAD: Duration = Duration::from_secs(1);

impl Syncer {
    /// Seeds the defaults and starts reloading.
    pub fn start(pool: sqlx::PgPool, queue: Queue, interval: Duration) -> Self {
        let seeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        Self(crate::periodic::Periodic::start(interval, move || {
            let (pool, queue, seeded) = (pool.clone(), queue.clone(), seeded.clone());
            async move {
                // Seeded once; retried on the next step if PostgreSQL was not there yet.
                if !seeded.load(std::sync::atomic::Ordering::Relaxed) {
                    match seed(&pool).await {
                        Ok(()) => seeded.store(true, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => tracing::warn!(message = "seeding default limits failed", %e),
                    }
                }
                match load(&pool).await {
                    Ok(rows) => match apply(&queue, &rows).await {
                        Ok(n) if n > 0 => tracing::info!(message = "limits reloaded", changed = n),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(message = "applying limits failed", %e),
                    },
                    Err(e) => tracing::warn!(message = "loading limits failed", %e),
                }
                match lift_reauthorised_parks(&pool, &queue).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(message = "re-authorised connections unparked", count = n),
                    Err(e) => tracing::warn!(message = "unparking re-authorised connections failed", %e),
                }
            }
        }))
    }

    /// Stops reloading.
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}

/// Why housekeeping of the limits failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// PostgreSQL.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Redis.
    #[error("queue: {0}")]
    Queue(#[from] crm_queue::QueueError),
}

/// Lifts the park of every parked connection that is `active` again, whichever way it was
/// re-authorised (the OAuth callback, `crmctl connections add-key` or `set-status`, SQL), so
/// its waiting jobs run within a reload interval instead of at the park's end. A connection
/// still `needs_reauth` or `disabled` stays parked. Returns how many were lifted.
pub async fn lift_reauthorised_parks(pool: &sqlx::PgPool, queue: &Queue) -> Result<usize, LimitsError> {
    let parked: Vec<uuid::Uuid> = queue
        .pauses()
        .await?
        .keys()
        .filter_map(|name| name.strip_prefix("x:conn:").and_then(|id| id.parse().ok()))
        .collect();
    if parked.is_empty() {
        return Ok(0);
    }
    let active: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM connections WHERE id = ANY($1) AND status = 'active'")
            .bind(&parked)
            .fetch_all(pool)
            .await?;
    for id in &active {
        queue.pause(&budget::connection_pause(*id), Duration::ZERO).await?;
    }
    Ok(active.len())
}

/// The learned rate of one account: what the provider's headers say (or the seed), and when
/// it last throttled us.
async fn learned(queue: &Queue, budget: &str) -> (Option<Limit>, Option<i64>) {
    let mut conn = queue.connection();
    let key = queue.keys().key(&format!("adapt:{budget}"));
    let v: HashMap<String, String> = conn.hgetall(&key).await.unwrap_or_default();
    let limit = v.get("limit").and_then(|s| Limit::decode(budget, s));
    let throttled = v.get("throttled_at").and_then(|s| s.parse().ok());
    (limit, throttled)
}

async fn remember(queue: &Queue, budget: &str, field: &str, value: String) {
    let mut conn = queue.connection();
    let key = queue.keys().key(&format!("adapt:{budget}"));
    let _: Result<(), _> = conn.hset(&key, field, value).await;
    let _: Result<(), _> = conn.expire(&key, 7 * 86_400).await;
}

fn encode(l: Limit) -> String {
    match l {
        Limit::Rate { count, per, burst } => format!("{count}/{}/{burst}", per.as_millis()),
        Limit::Concurrency(n) | Limit::Weight(n) => n.to_string(),
    }
}

/// Learns an account's real quota from a response's headers and the quiet intervals since its
/// last throttle.
async fn adapt_from(queue: &Queue, budget: &str, q: &QuotaObservation) {
    let (Some(limit), Some(window)) = (q.limit, q.window) else { return };
    let Ok(limit) = u32::try_from(limit) else { return };
    if limit == 0 || window.is_zero() {
        return;
    }
    let target = rate(limit, window);
    let (known, throttled_at) = learned(queue, budget).await;
    if known != Some(target) {
        remember(queue, budget, "limit", encode(target)).await;
    }
    let current = queue.limits().await.ok().and_then(|m| m.get(budget).copied());
    let Limit::Rate { count: target_count, per, burst } = target else { return };
    let next = match (current, throttled_at) {
        // Recovering from a throttle: add back a share per quiet interval.
        (Some(Limit::Rate { count, .. }), Some(at)) if count < target_count => {
            let quiet = (chrono::Utc::now().timestamp_millis() - at) as u128 / QUIET.as_millis().max(1);
            let steps = quiet.min(20) as u32;
            let up = ((f64::from(target_count) * INCREASE).ceil() as u32).max(1) * steps;
            Limit::Rate { count: (count + up).min(target_count), per, burst }
        }
        _ => target,
    };
    if current != Some(next)
        && let Err(e) = queue.set_limit(budget, next).await
    {
        tracing::debug!(message = "could not adapt a rate", %e);
    }
}

/// Halves an account's rate after a throttle (down to one request per window).
async fn decrease(queue: &Queue, budget: &str) {
    let current = queue.limits().await.ok().and_then(|m| {
        m.get(budget).copied().or_else(|| {
            // The seed that applies to this account, from its wildcard.
            let wildcard = format!("{}:*", budget.rsplit_once(':').map(|(p, _)| p).unwrap_or(budget));
            m.get(&wildcard).copied()
        })
    });
    if let Some(Limit::Rate { count, per, burst }) = current {
        let next =
            Limit::Rate { count: ((f64::from(count) * DECREASE) as u32).max(1), per, burst: burst.min(2) };
        let _ = queue.set_limit(budget, next).await;
        remember(queue, budget, "throttled_at", chrono::Utc::now().timestamp_millis().to_string()).await;
        tracing::info!(message = "throttled: account rate halved", budget, from = count);
    }
}

pub mod breaker {
    //! A circuit breaker per provider, fleet-wide in Redis. Requests are counted in 10-second
    //! buckets; when, over the last 30 seconds, at least [`MIN_REQUESTS`] requests were made and
    //! more than [`FAILURE_SHARE`] failed transiently (5xx, timeouts), the provider's lanes are
    //! paused for [`OPEN_FOR`] (open). When the pause ends the breaker is half-open: the next
    //! transient failure opens it again for twice as long, the next success closes it.
    //! While a breaker is open or half-open, transient failures defer their jobs (no attempt
    //! spent), so a provider outage fills no dead-letter queue.

    use std::time::Duration;

    use redis::AsyncCommands;

    use crate::enqueue::budget;
    use crate::providers::Provider;

    /// Requests needed in the window before the breaker may open.
    pub const MIN_REQUESTS: u64 = 20;
    /// Failure share that opens the breaker.
    pub const FAILURE_SHARE: f64 = 0.5;
    /// First open period.
    pub const OPEN_FOR: Duration = Duration::from_secs(15);
    /// Longest open period.
    pub const MAX_OPEN: Duration = Duration::from_secs(120);

    fn key(q: &crm_queue::Queue, p: Provider, what: &str) -> String {
        q.keys().key(&format!("breaker:{p}:{what}"))
    }

    fn bucket() -> i64 {
        chrono::Utc::now().timestamp() / 10
    }

    /// The request and failure counters of bucket `b`.
    fn counters(q: &crm_queue::Queue, p: Provider, b: i64) -> [String; 2] {
        [key(q, p, &format!("n:{b}")), key(q, p, &format!("f:{b}"))]
    }

    /// Records one request's outcome; returns whether the breaker is (now) open or half-open.
    pub async fn record(q: &crm_queue::Queue, p: Provider, failed: bool) -> bool {
        let mut c = q.connection();
        let b = bucket();
        let [total, fails] = counters(q, p, b);
        let state_key = key(q, p, "state");
        let mut pipe = redis::pipe();
        pipe.incr(&total, 1).ignore().expire(&total, 60).ignore();
        if failed {
            pipe.incr(&fails, 1).ignore().expire(&fails, 60).ignore();
        }
        pipe.hgetall(&state_key);
        let state: std::collections::HashMap<String, String> =
            match pipe.query_async::<(std::collections::HashMap<String, String>,)>(&mut c).await {
                Ok((s,)) => s,
                Err(_) => return false,
            };
        let now = chrono::Utc::now().timestamp_millis();
        let open_until: i64 = state.get("until").and_then(|v| v.parse().ok()).unwrap_or(0);
        let tripped = state.get("state").map(String::as_str) == Some("open");
        if tripped && now >= open_until {
            // Half-open: this request was the probe.
            if failed {
                let next = state
                    .get("open_ms")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(OPEN_FOR.as_millis() as u64)
                    * 2;
                open(q, p, Duration::from_millis(next).min(MAX_OPEN)).await;
                return true;
            }
            let _: Result<(), _> = c.del(&state_key).await;
            tracing::info!(message = "circuit breaker closed", provider = %p);
            return false;
        }
        if tripped {
            return true;
        }
        if !failed {
            return false;
        }
        let mut n = 0u64;
        let mut f = 0u64;
        for i in 0..3 {
            let [total, fails] = counters(q, p, b - i);
            let (a, b2): (Option<u64>, Option<u64>) =
                redis::pipe().get(total).get(fails).query_async(&mut c).await.unwrap_or((None, None));
            n += a.unwrap_or(0);
            f += b2.unwrap_or(0);
        }
        if n >= MIN_REQUESTS && (f as f64) / (n as f64) > FAILURE_SHARE {
            open(q, p, OPEN_FOR).await;
            return true;
        }
        false
    }

    async fn open(q: &crm_queue::Queue, p: Provider, d: Duration) {
        let mut c = q.connection();
        let until = chrono::Utc::now().timestamp_millis() + d.as_millis() as i64;
        let _: Result<(), _> = c
            .hset_multiple(
                key(q, p, "state"),
                &[
                    ("state", "open".to_owned()),
                    ("until", until.to_string()),
                    ("open_ms", d.as_millis().to_string()),
                ],
            )
            .await;
        let _: Result<(), _> = c.expire(key(q, p, "state"), 3600).await;
        let _ = q.pause(&budget::breaker(p), d).await;
        tracing::warn!(message = "circuit breaker open: provider paused", provider = %p, for_ms = d.as_millis() as u64);
    }

    /// Closes the breaker now, as an operator's `crmctl limits resume x:provider:<p>` asks:
    /// its pause is lifted and its state and recent counts are forgotten, so it is closed (not
    /// half-open, where one failure re-opens it for twice as long) and opens again only on
    /// fresh failures.
    pub async fn close(q: &crm_queue::Queue, p: Provider) -> Result<(), crm_queue::QueueError> {
        let mut c = q.connection();
        let b = bucket();
        let mut keys = vec![key(q, p, "state")];
        // The buckets follow each caller's clock: the next one too, for workers a little ahead.
        for i in -1..3 {
            keys.extend(counters(q, p, b - i));
        }
        let _: () = c.del(keys).await?;
        q.pause(&budget::breaker(p), Duration::ZERO).await?;
        tracing::info!(message = "circuit breaker closed by an operator", provider = %p);
        Ok(())
    }

    /// Whether the breaker is open or half-open.
    pub async fn tripped(q: &crm_queue::Queue, p: Provider) -> bool {
        let mut c = q.connection();
        let s: Option<String> = c.hget(key(q, p, "state"), "state").await.unwrap_or(None);
        s.as_deref() == Some("open")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_keep_a_margin_under_the_documented_quota() {
        let hubspot = defaults().into_iter().find(|r| r.budget == "r:account:hubspot:*").expect("seed");
        assert_eq!(hubspot.limit, Limit::Rate { count: 98, per: Duration::from_secs(10), burst: 2 });
        for r in defaults() {
            assert!(r.budget.ends_with(":*"), "seeds are wildcards: {}", r.budget);
            assert!(!r.note.is_empty(), "every seed says where it comes from: {}", r.budget);
        }
    }
}
