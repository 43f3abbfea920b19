//! The sync run loop. See the module docs of [`crate::sync`].
//!
//! 1. Claim the (connection, object) for this attempt ([`claim`]): resume its running run, or
//!    start a new one from the stored cursor (a full sync when there is none, or when a full
//!    sync was asked). Page commits check the claim, so an attempt whose lease was lost cannot
//!    write underneath the one that took the job over.
//! 2. Before each page after the first, take a token from the account's rate budget; a short
//!    wait is slept, a long one ends the attempt with a deferral (no worker held, no attempt).
//! 3. Fetch the page (with a valid token; one refresh on a 401).
//! 4. In one transaction: apply the page, store the next cursor, add to the run's counters,
//!    and on the last page close the run ([`super::writer`]). Meanwhile the next page is
//!    fetched (steps 2–3) and written in turn: up to two pages are written at once, on two
//!    connections, and they commit strictly in page order, so the stored cursor is always
//!    just after the last committed page. A failed write ends the attempt once the pages
//!    before it have committed; the pages after it roll back and are fetched again.
//! 5. Between pages, stop if the worker is shutting down (the job comes back and resumes).
//! 6. On the last page, if another run was requested meanwhile (`buffer_one`), start it.
//!
//! Provider errors map to decisions in [`outcome`]: a throttle pauses the provider account
//! fleet-wide until its reset and defers the job; a connection that needs re-authorisation is
//! parked (its lanes sleep; its jobs spend no attempts); transient failures retry with backoff
//! and resume from the cursor; rejections fail the run.

use std::time::Duration;

use crm_queue::{InJobToken, JobError};
use uuid::Uuid;

use super::store::PageCounts;
use super::writer::{WriteError, Writer};
use crate::auth::call::CallError;
use crate::enqueue::{Target, budget};
use crate::job::{SyncJob, SyncMode};
use crate::ops::JobContext;
use crate::providers::{ObjectKind, SyncCursor, SyncPage, ThrottleScope};

/// Waits for a rate token shorter than this are slept inside the job; longer ones defer it.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(1);
/// How long a connection awaiting re-authorisation stays parked before it is checked again
/// (re-authorising lifts the pause at once).
pub const REAUTH_PARK: Duration = Duration::from_secs(24 * 3600);

/// What a finished sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Pages committed by this attempt.
    pub pages: i64,
    /// Totals of this attempt.
    pub counts: PageCounts,
}

/// Where the attempt is in the job's life, for the failure bookkeeping.
#[derive(Debug, Clone, Copy)]
pub struct AttemptInfo {
    /// The job id.
    pub job_id: Option<Uuid>,
    /// This attempt's number.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
}

/// Why a sync stops before its next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The worker is shutting down: the pages in flight commit, and the job goes back to its
    /// lane to resume from the saved cursor.
    Shutdown,
    /// This run's lease was lost (the job was reclaimed after a stall), so another run has it
    /// or soon will: nothing more is written. The pages in flight are aborted (their
    /// transactions roll back), no outcome is recorded, and the run that took over resumes
    /// from the last committed cursor.
    LeaseLost,
}

/// Another attempt claimed this sync (see [`claim`]): this one's lease was lost, and its
/// heartbeat had not said so yet. Its page rolled back; the owner goes on from the cursor.
fn superseded() -> JobError {
    JobError::defer(
        Duration::ZERO,
        "superseded",
        "another attempt of this sync took it over (this one's lease was lost); stopped without writing further",
    )
}

fn lease_lost() -> JobError {
    JobError::defer(
        Duration::ZERO,
        "lease_lost",
        "lease lost (the job was reclaimed after a stall); stopped without writing further",
    )
}

/// Runs a sync job. `stopping` says whether it must stop before its next page, and why.
pub async fn run(
    ctx: &JobContext,
    job: &SyncJob,
    info: AttemptInfo,
    stopping: impl Fn() -> Option<Stop>,
) -> Result<RunSummary, JobError> {
    let target =
        crate::enqueue::target(&ctx.pool, job.connection_id).await.map_err(db)?.ok_or_else(|| {
            JobError::permanent("not_found", format!("connection {} no longer exists", job.connection_id))
        })?;
    let object = job.object;
    let client = ctx.clients.get(target.provider);
    let rate = budget::rate(target.provider, &target.account);
    let mut summary = RunSummary::default();
    // Asked once per page, before any request is started: a stopping worker sends none. The
    // first time before the claim, too: an attempt that already knows its lease lost does not
    // claim, which would stop the attempt that took the job over.
    let mut stop = stopping();
    if stop == Some(Stop::LeaseLost) {
        return Err(lease_lost());
    }
    // This attempt's claim on the (connection, object): every page it commits checks it.
    let owner = Uuid::now_v7();
    let (mut run_id, mut cursor) = claim(ctx, &target, job, info, job.mode, owner, false).await?;
    let mut first_request = true;
    let mut writer = Writer::new(ctx.pool.clone(), target.clone(), object, owner);
    loop {
        if stop == Some(Stop::LeaseLost) {
            // Returning drops the writer, which aborts the pages in flight.
            return Err(lease_lost());
        }
        if stop == Some(Stop::Shutdown) {
            let drained = writer.drain().await;
            settle(&target, &mut summary, &mut writer, drained)?;
            return Err(JobError::defer(
                Duration::ZERO,
                "shutdown",
                "worker stopping; resumes from the saved cursor",
            ));
        }
        // The pages before this one are still being written meanwhile (see `writer`): the
        // provider's latency and the database's overlap. `cursor` is the position after the
        // last page fetched; the stored one follows it as pages commit.
        let fetched = fetch(ctx, &target, client, object, &cursor, &rate, !first_request).await;
        first_request = false;
        let page = match fetched {
            Ok(page) => page,
            Err(e) if stopping() == Some(Stop::LeaseLost) => {
                // Not this run's to decide: the run that took over records the outcome (and
                // meets the same answer if it persists). Said here, so it is not lost.
                let error = match &e {
                    FetchError::Decided(j) => j.to_string(),
                    FetchError::Call(c) => c.to_string(),
                };
                tracing::info!(message = "request failed after the lease was lost; not recorded",
                    connection = %target.connection, object = %object, %error);
                return Err(lease_lost());
            }
            Err(e) => {
                // The pages in flight commit (or fail) before the decision is taken; a failed
                // write does not skip the request's side effects (a throttle's pause, say).
                let drained = writer.drain().await;
                if let Err(w) = settle(&target, &mut summary, &mut writer, drained) {
                    if let FetchError::Call(call) = &e {
                        crate::limits::on_error(ctx, &target, call).await;
                    }
                    return Err(w);
                }
                return Err(e.into_decision(ctx, &target, run_id, owner, info).await);
            }
        };
        let done = !page.has_more;
        cursor = page.next.clone();
        let submitted = writer.submit(run_id, page, done).await;
        settle(&target, &mut summary, &mut writer, submitted)?;
        stop = stopping();
        if done {
            let drained = writer.drain().await;
            let rerun = settle(&target, &mut summary, &mut writer, drained)?;
            tracing::info!(message = "sync run finished", run = %run_id, connection = %target.connection,
                provider = %target.provider, object = %object, pages = summary.pages);
            if !rerun {
                return Ok(summary);
            }
            // buffer_one: another run was asked for while this one ran; start it now.
            if stop == Some(Stop::LeaseLost) {
                return Err(lease_lost());
            }
            (run_id, cursor) = claim(ctx, &target, job, info, SyncMode::Incremental, owner, true).await?;
            first_request = false;
        }
    }
}

/// Adds the pages committed so far to the attempt's summary and metrics (also when a later
/// one failed), then turns a failed write into the job's decision (retried from the stored
/// cursor). Returns whether a committed last page found another run requested.
fn settle(
    target: &Target,
    summary: &mut RunSummary,
    writer: &mut Writer,
    result: Result<(), WriteError>,
) -> Result<bool, JobError> {
    let mut rerun = false;
    for page in writer.take_committed() {
        record_metrics(target, &page.counts);
        summary.pages += 1;
        add(&mut summary.counts, &page.counts);
        rerun |= page.done && page.rerun;
    }
    match result {
        Ok(()) => Ok(rerun),
        Err(WriteError::Superseded) => {
            tracing::info!(message = "sync taken over by another attempt; page rolled back",
                connection = %target.connection, object = %writer.object());
            Err(superseded())
        }
        Err(e) => Err(JobError::transient("database", format!("database: {e}"))),
    }
}

/// Why a page could not be fetched: the limiter's own decision (a long wait defers the job),
/// or the provider call's error, which [`outcome`] turns into one.
enum FetchError {
    Decided(JobError),
    Call(CallError),
}

impl FetchError {
    async fn into_decision(
        self,
        ctx: &JobContext,
        target: &Target,
        run: Uuid,
        owner: Uuid,
        info: AttemptInfo,
    ) -> JobError {
        match self {
            FetchError::Decided(e) => e,
            FetchError::Call(e) => outcome(ctx, target, run, owner, info, e).await,
        }
    }
}

/// Fetches one page from `cursor` (taking a rate token first unless `take_token` is false: the
/// first request of an attempt was admitted with the job) and feeds its quota observation to
/// the limiter.
async fn fetch(
    ctx: &JobContext,
    target: &Target,
    client: &dyn crate::providers::CrmClient,
    object: ObjectKind,
    cursor: &SyncCursor,
    rate: &str,
    take_token: bool,
) -> Result<SyncPage, FetchError> {
    if take_token {
        wait_for_token(ctx, target, rate).await.map_err(FetchError::Decided)?;
    }
    let reply = crate::auth::call(&ctx.tokens, target.connection, |auth| async move {
        client.sync_page(&auth, object, cursor).await
    })
    .await
    .map_err(FetchError::Call)?;
    crate::limits::observe(ctx, target, reply.quota.as_ref()).await;
    Ok(reply.value)
}

fn add(total: &mut PageCounts, page: &PageCounts) {
    total.processed += page.processed;
    total.created += page.created;
    total.updated += page.updated;
    total.unchanged += page.unchanged;
    total.deleted += page.deleted;
    total.conflicts += page.conflicts;
}

fn record_metrics(target: &Target, c: &PageCounts) {
    let p = target.provider.as_str();
    for (op, n) in
        [("created", c.created), ("updated", c.updated), ("deleted", c.deleted), ("unchanged", c.unchanged)]
    {
        if n > 0 {
            metrics::counter!("crm_fleet_sync_records_total", "provider" => p, "op" => op)
                .increment(n as u64);
        }
    }
}

fn db(e: sqlx::Error) -> JobError {
    JobError::transient("database", format!("database: {e}"))
}

/// A (connection, object)'s stored position and the run it names, as [`claim`] reads them.
#[derive(sqlx::FromRow)]
struct StoredState {
    cursor: serde_json::Value,
    run_id: Option<Uuid>,
    /// The run's status.
    status: Option<String>,
    /// The job the run was started by.
    job_id: Option<Uuid>,
}

/// Claims the (connection, object) for this attempt (`owner`) and starts or resumes its run,
/// returning the run and the cursor to fetch from.
///
/// One transaction, holding the `sync_state` row lock that every page commit also takes
/// ([`super::writer`]): a page of an earlier attempt either committed before the claim (and the
/// cursor read here is after it) or finds the claim taken and rolls back. So the cursor never
/// goes back, and no page is committed twice.
///
/// The run in progress is resumed, unless a full sync is asked for by another job (a later
/// attempt of the same full sync resumes it). With `rerun` (`buffer_one`: the run asked for
/// while this attempt's run went on), a run in progress can only be one another attempt
/// started after this one's last page (which closed its run): this attempt was superseded.
async fn claim(
    ctx: &JobContext,
    target: &Target,
    job: &SyncJob,
    info: AttemptInfo,
    mode: SyncMode,
    owner: Uuid,
    rerun: bool,
) -> Result<(Uuid, SyncCursor), JobError> {
    let mut tx = ctx.pool.begin().await.map_err(db)?;
    let state: Option<StoredState> = sqlx::query_as(
        "SELECT s.cursor, s.run_id, r.status, r.job_id FROM sync_state s LEFT JOIN sync_runs r ON r.id = s.run_id \
         WHERE s.connection_id = $1 AND s.object = $2 FOR UPDATE OF s",
    )
    .bind(target.connection)
    .bind(job.object.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let running = match &state {
        Some(StoredState { run_id: Some(run), status: Some(status), job_id, .. }) if status == "running" => {
            Some((*run, *job_id))
        }
        _ => None,
    };
    if rerun && running.is_some() {
        return Err(superseded());
    }
    let resume = running
        .filter(|(_, run_job)| mode != SyncMode::Full || (info.job_id.is_some() && *run_job == info.job_id));
    let claimed = if let Some((run, _)) = resume {
        let cursor: SyncCursor = match state.map(|s| serde_json::from_value(s.cursor)) {
            Some(Ok(cursor)) => cursor,
            // Not ours to guess where the run stood: it goes on from the start, and says so.
            Some(Err(error)) => {
                tracing::warn!(message = "stored sync cursor unreadable; the run resumes from the start",
                    run = %run, connection = %target.connection, object = %job.object, %error);
                SyncCursor::default()
            }
            None => SyncCursor::default(),
        };
        sqlx::query(
            "UPDATE sync_state SET owner = $3, updated_at = now() WHERE connection_id = $1 AND object = $2",
        )
        .bind(target.connection)
        .bind(job.object.as_str())
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tracing::info!(message = "resuming sync run", run = %run, connection = %target.connection, object = %job.object);
        (run, cursor)
    } else {
        let stored: Option<SyncCursor> =
            state.and_then(|s| serde_json::from_value(s.cursor).ok()).filter(|c: &SyncCursor| {
                // An empty row (created by a rerun request before any sync) carries no position.
                c.since.is_some() || !c.at_start()
            });
        let (cursor, mode) = match (mode, stored) {
            // A completed run stored the next run's cursor; a failed one its last position: both go on.
            (SyncMode::Incremental, Some(c)) => (c, SyncMode::Incremental),
            _ => (SyncCursor::full(), SyncMode::Full),
        };
        let run = Uuid::now_v7();
        if let Some((replaced, _)) = running {
            // A full sync asked for by another job: the run in progress ends here, unfinished.
            sqlx::query(
                "UPDATE sync_runs SET status = 'failed', finished_at = now(), error = $2 \
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(replaced)
            .bind(format!("replaced by full sync run {run}"))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        sqlx::query(
            "INSERT INTO sync_runs (id, connection_id, tenant_id, provider, object, mode, trigger, job_id, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running')",
        )
        .bind(run)
        .bind(target.connection)
        .bind(&target.tenant)
        .bind(target.provider.as_str())
        .bind(job.object.as_str())
        .bind(if mode == SyncMode::Full { "full" } else { "incremental" })
        .bind(&job.trigger)
        .bind(info.job_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO sync_state (connection_id, object, cursor, run_id, owner) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection_id, object) DO UPDATE SET cursor = $3, run_id = $4, owner = $5, updated_at = now()",
        )
        .bind(target.connection)
        .bind(job.object.as_str())
        .bind(serde_json::to_value(&cursor).unwrap_or_default())
        .bind(run)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        (run, cursor)
    };
    tx.commit().await.map_err(db)?;
    Ok(claimed)
}

/// Takes a rate token for the next request, sleeping briefly or deferring the job. A pause of
/// the account (a throttle seen by any worker since this job was admitted) or of the provider
/// (its circuit breaker) stops the request without taking a token: the job goes back to the
/// head of its lane, which sleeps on the pause and wakes when it ends or an operator lifts it.
async fn wait_for_token(ctx: &JobContext, target: &Target, rate: &str) -> Result<(), JobError> {
    let account = budget::account_pause(target.provider, &target.account);
    let breaker = budget::breaker(target.provider);
    loop {
        match ctx.queue.take_token_unless_paused(rate, &[&account, &breaker]).await {
            Ok(InJobToken::Taken) => return Ok(()),
            Ok(InJobToken::Wait(wait)) if wait <= MAX_INLINE_WAIT => {
                metrics::histogram!("crm_fleet_limiter_wait_seconds").record(wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Ok(InJobToken::Wait(wait)) => {
                return Err(JobError::defer(
                    wait,
                    "rate_limited",
                    "account rate budget exhausted; resumes from the cursor",
                ));
            }
            Ok(InJobToken::Paused(_)) => {
                return Err(crate::enqueue::back_to_lane(
                    crate::enqueue::LanePause::Paused,
                    "provider account or provider paused since this job was admitted; resumes from the cursor",
                ));
            }
            Err(e) => return Err(JobError::transient("queue", e.to_string())),
        }
    }
}

/// Turns a failed page into the job's decision, with its side effects (pauses, run status).
pub(crate) async fn outcome(
    ctx: &JobContext,
    target: &Target,
    run: Uuid,
    owner: Uuid,
    info: AttemptInfo,
    error: CallError,
) -> JobError {
    let decision = crate::limits::on_error(ctx, target, &error).await;
    let last_attempt = info.attempt >= info.max_attempts;
    let fails_run = matches!(decision.kind, crm_queue::FailureKind::Permanent)
        || (last_attempt
            && matches!(
                decision.kind,
                crm_queue::FailureKind::Transient | crm_queue::FailureKind::RetryAfter(_)
            ));
    if fails_run {
        // Only while this attempt holds the claim: one that superseded it decides for itself.
        let failed = sqlx::query(
            "WITH released AS (UPDATE sync_state SET run_id = NULL WHERE run_id = $1 AND owner = $3 RETURNING 1) \
             UPDATE sync_runs SET status = 'failed', finished_at = now(), failed = failed + 1, error = $2 \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM released)",
        )
        .bind(run)
        .bind(&decision.message)
        .bind(owner)
        .execute(&ctx.pool)
        .await;
        if let Err(error) = failed {
            // The run stays `running`; the job's own outcome (dead letter) still records it.
            tracing::warn!(message = "cannot mark the sync run failed", run = %run,
                connection = %target.connection, %error);
        }
    }
    decision
}

/// Throttle scopes that pause the whole account (as opposed to a short search window).
pub fn pauses_account(scope: ThrottleScope) -> bool {
    !matches!(scope, ThrottleScope::Search)
}
