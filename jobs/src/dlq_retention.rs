//! Dead-letter retention: the scheduler purges dead letters older than a configured age
//! (`CRM_FLEET_DLQ_RETENTION`, default 30 days) on a timer, so the table stays bounded.
//!
//! Nothing is dropped silently: every purge goes through [`crate::dlq::purge`], which writes
//! one `dead_letter_purges` audit row (actor `retention`, the cut-off, the count), adds the
//! count to `crm_fleet_dead_letters_purged_total` and logs it. Several scheduler replicas may
//! run retention at once: the deletes are idempotent and each replica audits only the rows it
//! deleted itself, so the audit rows still add up to what was removed.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::dlq::{self, DlqError, Filter};
use crate::periodic::Periodic;

/// How long dead letters are kept by default.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// How often retention runs.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);

/// The audit actor of retention purges.
pub const ACTOR: &str = "retention";

/// Purges, once, every dead letter that died more than `keep` ago; returns how many.
pub async fn purge_expired(pool: &PgPool, keep: Duration) -> Result<u64, DlqError> {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now().checked_sub_signed(keep).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    dlq::purge(pool, &Filter::default(), cutoff, ACTOR).await
}

/// The running retention service.
pub struct Retention(Periodic);

impl Retention {
    /// Purges now and then every `every`, until [`Retention::stop`].
    pub fn start(pool: PgPool, keep: Duration, every: Duration) -> Self {
        Self(Periodic::start(every, move || {
            let pool = pool.clone();
            async move {
                if let Err(error) = purge_expired(&pool, keep).await {
                    tracing::warn!(message = "dead-letter retention failed; retrying next period", %error);
                }
            }
        }))
    }

    /// Stops (after a purge in progress).
    pub async fn stop(&mut self) {
        self.0.stop().await;
    }
}
