//! Fleet-wide gauges, sampled on a timer by `crm-scheduler` (never per scrape):
//!
//! | Gauge | Labels | From |
//! |---|---|---|
//! | `crm_fleet_dead_letters` | `provider`, `error_class` | dead letters not yet replayed (PostgreSQL) |
//! | `crm_fleet_connections` | `provider`, `status` | connections by status (PostgreSQL) |
//! | `crm_fleet_limiter_slots_in_use` | `provider` | jobs holding the provider's concurrency slot (Redis, one `ZCARD` per provider) |
//! | `crm_fleet_limiter_paused` | `provider`, `scope` | pauses in force: `account` (throttled), `connection` (parked), `provider` (breaker open) |
//! | `crm_fleet_sync_conflicts_open` | `provider` | sync conflicts not yet resolved (PostgreSQL, a partial index) |
//! | `crm_fleet_circuit_open` | `provider` | 1 while the provider's breaker is open or half-open (its state in Redis) |
//! | `crm_fleet_queue_runnable` | `queue` | ready jobs a worker could take now (Redis, [`crm_queue::held`]): what KEDA scales on |
//! | `crm_fleet_queue_held` | `queue`, `reason` | ready jobs whose lane admission set aside: `blocked` (a full concurrency budget), `sleeping` (a pause, a rate budget) |
//!
//! Invariants: labels come from closed sets (the five providers, error classes, connection
//! statuses, three scopes, two reasons), never tenant or connection ids; a label set that
//! disappears is set to 0 rather than left at its last value; one sample costs a few small
//! queries, whatever the size of the fleet (the pause hash is read whole: pauses are few by
//! nature), except the held jobs: one `LLEN` per held lane, pipelined, at most about
//! [`HELD_MAX_LANES`] lanes (a provider outage holds every lane of the provider). A sample
//! that fails sets the runnable jobs to the whole ready depth (with Redis unreachable, when
//! that cannot be read either and no worker runs anything, they keep their last value).
//!
//! Every scheduler replica samples the same fleet-wide values: aggregate them with `max`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crm_queue::Queue;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::enqueue::budget;
use crate::periodic::Periodic;
use crate::providers::Provider;

/// How often the scheduler samples.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// Held lanes read per sample at most; beyond them jobs count as runnable (scaling then errs
/// towards more workers, as it did before the held jobs were counted).
pub const HELD_MAX_LANES: u64 = 200_000;

/// A labelled gauge family remembered between samples, so vanished label sets go to 0.
#[derive(Default)]
struct Family {
    seen: HashSet<Vec<(&'static str, String)>>,
}

impl Family {
    fn set(&mut self, name: &'static str, values: Vec<(Vec<(&'static str, String)>, f64)>) {
        let now: HashSet<Vec<(&'static str, String)>> = values.iter().map(|(l, _)| l.clone()).collect();
        for gone in self.seen.difference(&now) {
            metrics::gauge!(name, labels(gone)).set(0.0);
        }
        for (l, v) in &values {
            metrics::gauge!(name, labels(l)).set(*v);
        }
        self.seen = now;
    }
}

fn labels(l: &[(&'static str, String)]) -> Vec<metrics::Label> {
    l.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect()
}

#[derive(Default)]
struct Sampler {
    dead_letters: Family,
    connections: Family,
    paused: Family,
    /// Whether the last held-jobs sample stopped at its lane limit.
    held_partial: bool,
    /// Whether the last held-jobs sample failed.
    held_failing: bool,
}

impl Sampler {
    async fn sample(&mut self, pool: &PgPool, queue: &Queue) {
        match dead_letters(pool).await {
            Ok(v) => self.dead_letters.set("crm_fleet_dead_letters", v),
            Err(error) => tracing::debug!(message = "sampling dead letters failed", %error),
        }
        match connections(pool).await {
            Ok(v) => self.connections.set("crm_fleet_connections", v),
            Err(error) => tracing::debug!(message = "sampling connections failed", %error),
        }
        for p in Provider::ALL {
            if let Ok(n) = queue.slots_in_use(&budget::provider(p)).await {
                metrics::gauge!("crm_fleet_limiter_slots_in_use", "provider" => p.as_str()).set(n as f64);
            }
        }
        match paused(pool, queue).await {
            Ok(v) => self.paused.set("crm_fleet_limiter_paused", v),
            Err(error) => tracing::debug!(message = "sampling pauses failed", %error),
        }
        // From the breaker's shared state, not each worker's last event: a worker that opened
        // the breaker and made no request of the provider since would report 1 for ever, and
        // the breaker's own pause lapses between half-open probes (10 s samples would flap).
        for p in Provider::ALL {
            let open = crate::limits::breaker::tripped(queue, p).await;
            metrics::gauge!("crm_fleet_circuit_open", "provider" => p.as_str()).set(if open {
                1.0
            } else {
                0.0
            });
        }
        // Ready jobs that workers could take now, and those admission holds back (the
        // workers' `crm_fleet_queue_depth{state="ready"}` counts both): more workers do
        // nothing for held jobs, so autoscaling counts only the runnable ones.
        let q = queue.config().name.clone();
        match queue.held(HELD_MAX_LANES).await {
            Ok(held) => {
                set_held(&q, held.runnable(), held.blocked_jobs, held.sleeping_jobs);
                // Said once when it starts, not every 10 s for as long as an outage lasts.
                if !held.complete && !self.held_partial {
                    tracing::warn!(
                        message = "more held lanes than one sample reads; the rest count as runnable",
                        queue = %q,
                        lanes = HELD_MAX_LANES
                    );
                }
                self.held_partial = !held.complete;
                self.held_failing = false;
            }
            Err(error) => {
                // Not left at its last value (KEDA would scale on it): every ready job counts
                // as runnable, as the workers' depth does, until a sample succeeds.
                // Once per episode, like the other sampling failures (Redis down is said elsewhere).
                if !self.held_failing {
                    tracing::warn!(message = "sampling held jobs failed; counting every ready job as runnable",
                        queue = %q, %error);
                }
                self.held_failing = true;
                if let Ok(stats) = queue.stats().await {
                    set_held(&q, stats.ready, 0, 0);
                }
            }
        }
        match open_conflicts(pool).await {
            Ok(counts) => {
                for p in Provider::ALL {
                    let n = counts.get(p.as_str()).copied().unwrap_or(0);
                    metrics::gauge!("crm_fleet_sync_conflicts_open", "provider" => p.as_str()).set(n as f64);
                }
            }
            Err(error) => tracing::debug!(message = "sampling sync conflicts failed", %error),
        }
    }
}

type Samples = Vec<(Vec<(&'static str, String)>, f64)>;

/// Sets the runnable and held jobs of queue `q`.
fn set_held(q: &str, runnable: u64, blocked: u64, sleeping: u64) {
    metrics::gauge!("crm_fleet_queue_runnable", "queue" => q.to_owned()).set(runnable as f64);
    for (reason, n) in [("blocked", blocked), ("sleeping", sleeping)] {
        metrics::gauge!("crm_fleet_queue_held", "queue" => q.to_owned(), "reason" => reason).set(n as f64);
    }
}

async fn dead_letters(pool: &PgPool) -> Result<Samples, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider, error_class, count(*) FROM dead_letters WHERE replayed_at IS NULL \
         GROUP BY provider, error_class",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(provider, class, n)| {
            (vec![("provider", provider_label(&provider)), ("error_class", class)], n as f64)
        })
        .collect())
}

/// Open sync conflicts by provider (only providers that have some: the caller fills in zeros).
async fn open_conflicts(pool: &PgPool) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider, count(*) FROM sync_conflicts WHERE resolved_at IS NULL GROUP BY provider",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn connections(pool: &PgPool) -> Result<Samples, sqlx::Error> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT provider, status, count(*) FROM connections GROUP BY provider, status")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(provider, status, n)| {
            (vec![("provider", provider_label(&provider)), ("status", status)], n as f64)
        })
        .collect())
}

/// Pauses in force, counted by provider and scope. A connection pause names only the
/// connection, so its provider is looked up.
async fn paused(pool: &PgPool, queue: &Queue) -> Result<Samples, PausedError> {
    let now = chrono::Utc::now().timestamp_millis();
    let pauses = queue.pauses().await?;
    let mut counts: HashMap<(String, &'static str), u64> = HashMap::new();
    let mut conns = Vec::new();
    for (name, until) in pauses {
        if until <= now {
            continue;
        }
        match Pause::parse(&name) {
            Some(Pause::Account(p)) => *counts.entry((p, "account")).or_default() += 1,
            Some(Pause::Provider(p)) => *counts.entry((p, "provider")).or_default() += 1,
            Some(Pause::Connection(id)) => conns.push(id),
            None => {}
        }
    }
    if !conns.is_empty() {
        let providers: Vec<String> =
            sqlx::query_scalar("SELECT provider FROM connections WHERE id = ANY($1)")
                .bind(&conns)
                .fetch_all(pool)
                .await?;
        for p in providers {
            *counts.entry((provider_label(&p), "connection")).or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|((p, scope), n)| (vec![("provider", p), ("scope", scope.to_owned())], n as f64))
        .collect())
}

#[derive(Debug, thiserror::Error)]
enum PausedError {
    #[error(transparent)]
    Queue(#[from] crm_queue::QueueError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A pause budget name, as [`budget`] writes them.
#[derive(Debug, PartialEq, Eq)]
enum Pause {
    Account(String),
    Provider(String),
    Connection(Uuid),
}

impl Pause {
    fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("x:")?;
        if let Some(r) = rest.strip_prefix("account:") {
            let provider = r.split(':').next()?;
            return Some(Self::Account(provider_label(provider)));
        }
        if let Some(p) = rest.strip_prefix("provider:") {
            return Some(Self::Provider(provider_label(p)));
        }
        rest.strip_prefix("conn:").and_then(|id| id.parse().ok()).map(Self::Connection)
    }
}

/// A provider name as a label: one of the five, or `other` (never free text).
fn provider_label(p: &str) -> String {
    p.parse::<Provider>().map(|p| p.as_str().to_owned()).unwrap_or_else(|_| "other".to_owned())
}

/// The running sampler.
pub struct FleetGauges(Periodic);

impl FleetGauges {
    /// Samples now and then every `every`, until [`FleetGauges::stop`].
    pub fn start(pool: PgPool, queue: Queue, every: Duration) -> Self {
        let sampler = Arc::new(Mutex::new(Sampler::default()));
        Self(Periodic::start(every, move || {
            let (sampler, pool, queue) = (sampler.clone(), pool.clone(), queue.clone());
            async move { sampler.lock().await.sample(&pool, &queue).await }
        }))
    }

    /// Stops sampling.
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_names_map_to_closed_labels() {
        let id = Uuid::new_v4();
        assert_eq!(Pause::parse("x:account:hubspot:123"), Some(Pause::Account("hubspot".into())));
        assert_eq!(Pause::parse("x:account:zoho:https://x/y"), Some(Pause::Account("zoho".into())));
        assert_eq!(Pause::parse("x:provider:close"), Some(Pause::Provider("close".into())));
        assert_eq!(Pause::parse(&format!("x:conn:{id}")), Some(Pause::Connection(id)));
        assert_eq!(Pause::parse("x:account:myspace:1"), Some(Pause::Account("other".into())));
        assert_eq!(Pause::parse("c:provider:hubspot"), None);
        assert_eq!(Pause::parse("x:conn:not-a-uuid"), None);
    }
}
