//! How crm-fleet jobs map onto queue lanes and budgets — the one place that names them, so
//! producers (scheduler, API, replay) and the limits machinery agree.
//!
//! A job's lane is (priority, provider, connection, tenant): actions are `High`, syncs `Normal`.
//! The connection is the lane's partition because a lane's jobs must share budgets (see
//! `crm_queue::job`), and a connection's account rate and pauses are its own: a tenant with two
//! accounts at one CRM has a lane (and a fairness share) for each. Its budgets:
//!
//! | Budget | Meaning | Set by |
//! |---|---|---|
//! | `c:provider:<p>` | fleet-wide concurrency per provider | limits config |
//! | `c:tenant:<p>:<tenant>` | concurrency per tenant per provider | limits config (default `c:tenant:<p>:*`) |
//! | `c:conn:<connection>` | concurrency per connection | limits config (default `c:conn:*`) |
//! | `r:account:<p>:<account>` | rate (GCRA) of the provider account | seeded from documented quotas, adapted from responses |
//! | `x:account:<p>:<account>` | pause of the provider account (throttled until reset) | set on a throttle response |
//! | `x:conn:<connection>` | pause of a connection awaiting re-authorisation | set on an invalid grant |
//! | `x:provider:<p>` | circuit breaker of a provider | set by the breaker |
//!
//! Lanes weigh tenants by `w:tenant:<tenant>`.

use crm_queue::{JobId, Lane, NewJob, Priority, QueueError};
use uuid::Uuid;

use crate::job::{ActionJob, CrmJob, SyncJob, SyncMode};
use crate::providers::{ObjectKind, Provider};

/// Default attempts for a sync: a sync resumes from its cursor, so retries are cheap.
pub const SYNC_MAX_ATTEMPTS: u32 = 8;
/// Default attempts for an action.
pub const ACTION_MAX_ATTEMPTS: u32 = 10;

/// Who a job works for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Tenant.
    pub tenant: String,
    /// Provider.
    pub provider: Provider,
    /// Connection.
    pub connection: Uuid,
    /// Provider account (portal, org, company…).
    pub account: String,
}

/// Budget names.
pub mod budget {
    use super::*;

    /// Fleet-wide concurrency of a provider.
    pub fn provider(p: Provider) -> String {
        format!("c:provider:{p}")
    }
    /// Concurrency of a tenant on a provider.
    pub fn tenant(p: Provider, tenant: &str) -> String {
        format!("c:tenant:{p}:{tenant}")
    }
    /// Concurrency of a connection.
    pub fn connection(c: Uuid) -> String {
        format!("c:conn:{c}")
    }
    /// Request rate of a provider account.
    pub fn rate(p: Provider, account: &str) -> String {
        format!("r:account:{p}:{}", sanitize(account))
    }
    /// Pause of a provider account.
    pub fn account_pause(p: Provider, account: &str) -> String {
        format!("x:account:{p}:{}", sanitize(account))
    }
    /// Pause of a connection (re-authorisation).
    pub fn connection_pause(c: Uuid) -> String {
        format!("x:conn:{c}")
    }
    /// Circuit breaker of a provider.
    pub fn breaker(p: Provider) -> String {
        format!("x:provider:{p}")
    }
    /// Weight key of a tenant.
    pub fn weight(tenant: &str) -> String {
        format!("tenant:{tenant}")
    }

    /// Budget names carry no whitespace (the queue splits on it); account ids may be URLs.
    fn sanitize(s: &str) -> String {
        s.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect()
    }
}

/// The lane of a job for `target`.
pub fn lane(target: &Target, priority: Priority) -> Lane {
    Lane::new(target.provider.as_str(), &target.tenant, priority)
        .partition(target.connection.to_string())
        .budget(budget::breaker(target.provider))
        .budget(budget::connection_pause(target.connection))
        .budget(budget::account_pause(target.provider, &target.account))
        .budget(budget::provider(target.provider))
        .budget(budget::tenant(target.provider, &target.tenant))
        .budget(budget::connection(target.connection))
        .budget(budget::rate(target.provider, &target.account))
        .weight_key(budget::weight(&target.tenant))
}

/// Whether `lane_id` is a lane [`lane`] makes: partitioned by connection, so the budgets it
/// names are its jobs' own. Lanes pushed before lanes were per connection are not.
pub fn is_connection_lane(lane_id: &str) -> bool {
    crm_queue::job::parse_lane_id(lane_id).is_some_and(|l| l.partition.is_some())
}

/// Why a running job stops and goes back to its lane: a budget its lane names was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanePause {
    /// Its account or provider was paused since it was admitted (seen before a request).
    Paused,
    /// Its own request was throttled, and the account is now paused fleet-wide.
    Throttled,
}

impl LanePause {
    /// The failure class the job's history and metrics show.
    pub fn class(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Throttled => "throttled",
        }
    }
}

/// The job goes back to the head of its lane, attempt refunded: the lane names the paused
/// budget, so it sleeps until the pause ends or is lifted (`crmctl limits resume`).
pub fn back_to_lane(why: LanePause, message: impl Into<String>) -> crm_queue::JobError {
    crm_queue::JobError::defer(std::time::Duration::ZERO, why.class(), message)
}

/// How long a job waits when a pause stopped it while it sits in a lane of before lanes were
/// per connection. [`back_to_lane`] would send it straight back, but that lane carries the
/// budgets of whichever of the tenant's accounts pushed last, may not name the pause, and
/// would admit it again at once, in a loop; so it waits this long between checks instead.
pub const SHARED_LANE_PAUSE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// `error` as it must be for a job of a lane that is not [`is_connection_lane`]: a
/// [`back_to_lane`] becomes a wait of [`SHARED_LANE_PAUSE_RETRY`].
pub fn for_shared_lane(error: crm_queue::JobError) -> crm_queue::JobError {
    let sent_back = matches!(error.kind, crm_queue::FailureKind::Defer(d) if d.is_zero())
        && [LanePause::Paused, LanePause::Throttled].iter().any(|w| w.class() == error.class);
    if sent_back {
        crm_queue::JobError { kind: crm_queue::FailureKind::Defer(SHARED_LANE_PAUSE_RETRY), ..error }
    } else {
        error
    }
}

/// The unique key that keeps one sync of (connection, object) queued or running at a time.
pub fn sync_unique_key(connection: Uuid, object: ObjectKind) -> String {
    format!("sync:{connection}:{object}")
}

/// A sync job for `target` and `object`.
pub fn sync_job(
    target: &Target,
    object: ObjectKind,
    mode: SyncMode,
    trigger: &str,
) -> Result<NewJob, QueueError> {
    sync_job_at(target, object, mode, trigger, None)
}

fn sync_job_at(
    target: &Target,
    object: ObjectKind,
    mode: SyncMode,
    trigger: &str,
    tick: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<NewJob, QueueError> {
    let job = CrmJob::Sync(SyncJob {
        connection_id: target.connection,
        object,
        mode,
        trigger: trigger.to_owned(),
        tick,
    });
    Ok(NewJob::json(job.job_type(), lane(target, Priority::Normal), &job)?
        .max_attempts(SYNC_MAX_ATTEMPTS)
        .unique_key(sync_unique_key(target.connection, object)))
}

/// A scheduled tick's sync: as [`sync_job`], with an id naming the tick and a dedupe on the
/// series of (schedule, object) stamped with the tick, so that the same tick (or an earlier
/// one) is never enqueued twice, even by two schedulers across a failover. The series keeps one
/// Redis hash field per (schedule, object), not a key per tick: at 100,000 schedules ticking
/// every 5 minutes, 24 h keys per tick held ~29 million keys.
pub fn scheduled_sync_job(
    target: &Target,
    object: ObjectKind,
    schedule: Uuid,
    tick: chrono::DateTime<chrono::Utc>,
) -> Result<NewJob, QueueError> {
    let id = JobId(Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tick:{schedule}:{object}:{}", tick.timestamp()).as_bytes(),
    ));
    Ok(sync_job_at(target, object, SyncMode::Incremental, "schedule", Some(tick))?
        .with_id(id)
        .dedupe_up_to(tick_series(schedule, object), tick.timestamp_millis()))
}

/// The dedupe series of a schedule's ticks for one object.
pub fn tick_series(schedule: Uuid, object: ObjectKind) -> String {
    format!("tick:{schedule}:{object}")
}

/// An action job (the action's parameters live in PostgreSQL, keyed by `action`).
pub fn action_job(target: &Target, action: Uuid, max_attempts: u32) -> Result<NewJob, QueueError> {
    let job = CrmJob::Action(ActionJob { action_id: action });
    Ok(NewJob::json(job.job_type(), lane(target, Priority::High), &job)?
        .with_id(JobId(action))
        .max_attempts(max_attempts))
}

/// Loads the [`Target`] of a connection.
pub async fn target(pool: &sqlx::PgPool, connection: Uuid) -> Result<Option<Target>, sqlx::Error> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT tenant_id, provider, account_id FROM connections WHERE id = $1")
            .bind(connection)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(tenant, provider, account)| {
        Some(Target { tenant, provider: provider.parse().ok()?, connection, account })
    }))
}

/// Asks for one more run of (connection, object) after the one queued or running (overlap
/// policy `buffer_one`); the running sync enqueues it when it finishes.
pub async fn request_rerun(
    pool: &sqlx::PgPool,
    connection: Uuid,
    object: ObjectKind,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sync_state (connection_id, object, cursor, rerun_requested) VALUES ($1, $2, '{}'::jsonb, true) \
         ON CONFLICT (connection_id, object) DO UPDATE SET rerun_requested = true, updated_at = now()",
    )
    .bind(connection)
    .bind(object.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crm_queue::{FailureKind, JobError};

    use super::*;

    fn target() -> Target {
        Target {
            tenant: "acme:eu".into(),
            provider: Provider::Hubspot,
            connection: Uuid::nil(),
            account: "42".into(),
        }
    }

    #[test]
    fn lanes_are_per_connection_and_older_shared_lanes_are_told_apart() {
        let id = lane(&target(), Priority::High).id();
        assert_eq!(id, format!("0:hubspot/{}:acme:eu", Uuid::nil()));
        assert!(is_connection_lane(&id));
        assert!(!is_connection_lane("0:hubspot:acme:eu"), "a lane of before");
        assert!(!is_connection_lane("garbage"));
    }

    #[test]
    fn a_job_of_a_shared_lane_stopped_by_a_pause_waits_instead_of_coming_straight_back() {
        let back = |class: &str, after: Duration| for_shared_lane(JobError::defer(after, class, "m")).kind;
        for why in [LanePause::Paused, LanePause::Throttled] {
            assert_eq!(
                for_shared_lane(back_to_lane(why, "m")).kind,
                FailureKind::Defer(SHARED_LANE_PAUSE_RETRY)
            );
        }
        assert_eq!(back("paused", Duration::ZERO), FailureKind::Defer(SHARED_LANE_PAUSE_RETRY));
        assert_eq!(
            back("shutdown", Duration::ZERO),
            FailureKind::Defer(Duration::ZERO),
            "no pause: straight back"
        );
        // A wait the job chose itself (a search throttle, a rate wait) is kept.
        assert_eq!(back("throttled", Duration::from_secs(2)), FailureKind::Defer(Duration::from_secs(2)));
        assert_eq!(back("rate_limited", Duration::ZERO), FailureKind::Defer(Duration::ZERO));
    }
}
