//! The leader lease: at most one `crm-scheduler` replica ticks at a time.
//!
//! What the actor does:
//! 1. opens a **dedicated** PostgreSQL connection (not from the pool: the lock belongs to the
//!    session, and a pooled connection could be recycled under it);
//! 2. as a standby, tries `pg_try_advisory_lock(key)` every `acquire_interval`;
//! 3. on success it is the leader: it records itself in `scheduler_leader`, raises
//!    `crm_fleet_scheduler_is_leader` to 1 and publishes a new leadership epoch;
//! 4. every `renew_interval` it proves the session alive (an update of its
//!    `scheduler_leader` row, bounded by `check_timeout`); a failure or a timeout means the
//!    lease may be gone: it publishes "not leader" *first*, then drops the connection (which
//!    ends the session and frees the lock if the server still held it), and starts over;
//! 5. on stop it unlocks and closes, so a standby takes over within one `acquire_interval`.
//!
//! Invariants: a process that is not sure it holds the lock never reports itself leader;
//! the lock is never held by a session this process is not watching. Two leaders can overlap
//! only in the moment between a server dropping a session and the old leader's next renewal
//! failing; the per-tick job key makes that harmless (a tick is enqueued at most once).
//! A SIGKILLed leader's socket closes with the process, PostgreSQL ends its session and the
//! lock is free at once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::service::Service;

/// The advisory lock key: the bytes `crmsched` read as a big-endian integer, so that it
/// cannot collide with sqlx's migration lock or with small hand-picked keys. Advisory locks
/// are per database, so each deployment (database) has its own leader.
pub const DEFAULT_LEASE_KEY: i64 = i64::from_be_bytes(*b"crmsched");
/// How often a standby tries the lock: the failover budget is a few seconds, and
/// a try is one cheap round trip.
pub const DEFAULT_ACQUIRE_INTERVAL: Duration = Duration::from_millis(500);
/// How often the leader proves its session alive. Losing the session stops ticking within
/// this (plus `check_timeout` when PostgreSQL hangs instead of failing).
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(500);
/// How long a lock or renewal query may take before the lease is presumed lost.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// PostgreSQL URL (the lease opens its own connection).
    pub database_url: String,
    /// Advisory lock key.
    pub key: i64,
    /// Standby retry interval.
    pub acquire_interval: Duration,
    /// Leader liveness check interval.
    pub renew_interval: Duration,
    /// Timeout of each lock or liveness query.
    pub check_timeout: Duration,
    /// The API address this replica serves, recorded for operators.
    pub api_addr: String,
}

impl LeaseConfig {
    /// Defaults for `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            key: DEFAULT_LEASE_KEY,
            acquire_interval: DEFAULT_ACQUIRE_INTERVAL,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            api_addr: String::new(),
        }
    }
}

/// Who leads, as this process sees it: `Some(epoch)` while it holds the lease (a new epoch
/// each time it acquires it), `None` otherwise.
pub type Leadership = Option<u64>;

/// A running lease actor.
#[derive(Debug)]
pub struct Lease {
    service: Service,
    state: watch::Receiver<Leadership>,
    instance: String,
}

impl Lease {
    /// Starts competing for the lease.
    pub fn start(config: LeaseConfig) -> Self {
        let instance = format!(
            "{}:{}:{}",
            hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (tx, state) = watch::channel(None);
        let id = instance.clone();
        let service = Service::spawn("lease", move |cancel| run(config, id, tx, cancel));
        Self { service, state, instance }
    }

    /// Leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// This process's instance id (`host:pid:random`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Gives the lease up (unlocking it for a standby) and stops; idempotent.
    pub async fn stop(&self) {
        self.service.stop().await;
    }
}

async fn connect(config: &LeaseConfig) -> Result<PgConnection, sqlx::Error> {
    let options = PgConnectOptions::from_str(&config.database_url)?
        .application_name(&format!("crm-scheduler lease {}", std::process::id()));
    options.connect().await
}

async fn run(
    config: LeaseConfig,
    instance: String,
    tx: watch::Sender<Leadership>,
    cancel: CancellationToken,
) {
    metrics::gauge!("crm_fleet_scheduler_is_leader").set(0.0);
    let mut epoch = 0u64;
    while !cancel.is_cancelled() {
        let mut conn = match tokio::time::timeout(config.check_timeout, connect(&config)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                tracing::warn!(message = "lease: cannot connect to PostgreSQL; retrying", %error);
                pause(&cancel, config.acquire_interval).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(message = "lease: connecting to PostgreSQL timed out; retrying");
                pause(&cancel, config.acquire_interval).await;
                continue;
            }
        };
        // Standby.
        let acquired = loop {
            if cancel.is_cancelled() {
                break false;
            }
            let try_lock = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(config.key);
            match tokio::time::timeout(config.check_timeout, try_lock.fetch_one(&mut conn)).await {
                Ok(Ok(true)) => break true,
                Ok(Ok(false)) => pause(&cancel, config.acquire_interval).await,
                Ok(Err(error)) => {
                    tracing::warn!(message = "lease: lock attempt failed; reconnecting", %error);
                    break false;
                }
                Err(_) => {
                    tracing::warn!(message = "lease: lock attempt timed out; reconnecting");
                    break false;
                }
            }
        };
        if !acquired {
            close(conn).await;
            if !cancel.is_cancelled() {
                pause(&cancel, config.acquire_interval).await;
            }
            continue;
        }
        // Leader.
        if let Err(error) = record(&mut conn, &instance, &config.api_addr).await {
            // Informational only; the lock is what counts.
            tracing::warn!(message = "lease: cannot record the leader row", %error);
        }
        epoch += 1;
        tx.send_replace(Some(epoch));
        metrics::gauge!("crm_fleet_scheduler_is_leader").set(1.0);
        tracing::info!(message = "became the scheduler leader", instance = %instance, epoch);
        let lost = loop {
            tokio::select! {
                _ = cancel.cancelled() => break false,
                _ = tokio::time::sleep(config.renew_interval) => {}
            }
            let renew =
                sqlx::query("UPDATE scheduler_leader SET renewed_at = now() WHERE id = 1 AND holder = $1")
                    .bind(&instance)
                    .execute(&mut conn);
            match tokio::time::timeout(config.check_timeout, renew).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(message = "lease: session check failed; leadership lost", %error);
                    break true;
                }
                Err(_) => {
                    tracing::warn!(message = "lease: session check timed out; leadership lost");
                    break true;
                }
            }
        };
        // Stop ticking before anything else.
        tx.send_replace(None);
        metrics::gauge!("crm_fleet_scheduler_is_leader").set(0.0);
        if lost {
            drop(conn);
            pause(&cancel, config.acquire_interval).await;
        } else {
            let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(config.key).execute(&mut conn);
            let _ = tokio::time::timeout(config.check_timeout, unlock).await;
            close(conn).await;
            tracing::info!(message = "gave up the scheduler lease", instance = %instance);
        }
    }
    tx.send_replace(None);
}

async fn record(conn: &mut PgConnection, instance: &str, api_addr: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scheduler_leader (id, holder, pid, api_addr, acquired_at, renewed_at) \
         VALUES (1, $1, $2, $3, now(), now()) ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, \
         pid = EXCLUDED.pid, api_addr = EXCLUDED.api_addr, acquired_at = now(), renewed_at = now()",
    )
    .bind(instance)
    .bind(std::process::id() as i32)
    .bind(api_addr)
    .execute(conn)
    .await?;
    Ok(())
}

async fn close(conn: PgConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
