//! What provider answers do to the fleet's budgets: a throttle pauses the provider account
//! for every worker until its reset; a connection that needs re-authorisation is parked; quota
//! headers feed the account's rate budget. One place maps a failed call to the job's decision.
//!
//! Invariant: a job that cannot run because of a budget (throttled account, parked connection)
//! is deferred — it holds no worker and spends no attempt — and the lane sleeps on the pause,
//! so no request reaches the provider until the pause ends.

use std::time::Duration;

use crm_queue::JobError;

use crate::auth::AuthError;
use crate::auth::call::CallError;
use crate::enqueue::{Target, budget};
use crate::ops::JobContext;
use crate::providers::{ProviderError, QuotaObservation, ThrottleScope};

/// When a throttle names no wait, pause this long (HubSpot's burst window).
pub const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(10);
/// How long a connection awaiting re-authorisation is parked (re-authorising lifts it at once).
pub const REAUTH_PARK: Duration = Duration::from_secs(24 * 3600);

/// Feeds a response's quota headers to the account's budgets: an exhausted window pauses the
/// account until it resets, before the provider has to say 429.
pub async fn observe(ctx: &JobContext, target: &Target, quota: Option<&QuotaObservation>) {
    let Some(q) = quota else { return };
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
        CallError::Auth(AuthError::NotFound(id)) => {
            JobError::permanent("not_found", format!("connection {id} is gone"))
        }
        CallError::Auth(e @ (AuthError::Config(_) | AuthError::Key(_))) => {
            JobError::permanent("config", e.to_string())
        }
        CallError::Auth(e) => JobError::transient("auth", e.to_string()),
        CallError::Provider(p) => on_provider_error(ctx, target, p).await,
    }
}

async fn on_provider_error(ctx: &JobContext, target: &Target, error: &ProviderError) -> JobError {
    if let ProviderError::Throttled { retry_after, scope, .. } = error {
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
            return JobError::defer(Duration::ZERO, "throttled", error.to_string())
                .with_provider(error.status(), error.code());
        }
        return JobError::defer(wait, "throttled", error.to_string())
            .with_provider(error.status(), error.code());
    }
    error.to_job_error()
}
