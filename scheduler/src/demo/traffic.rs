//! Action traffic, as another service would send it: `POST /v1/actions` with an
//! `Idempotency-Key`, round-robin over the demo's connections and the action types, about
//! records the syncs have brought in (so the ids are real ones in each sandbox CRM).

use std::time::Duration;

use crm_jobs::providers::Provider;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::setup::DemoConnection;

/// Where actions go.
pub struct Traffic {
    /// API base URL.
    pub api: String,
    /// An `enqueue`-scope API key.
    pub key: String,
    /// Actions per second.
    pub rate: f64,
}

/// A synced contact of a connection: its id, and (Close) its lead.
async fn some_contact(pool: &sqlx::PgPool, c: &DemoConnection, n: u64) -> Option<(String, String)> {
    sqlx::query_as::<_, (String, Option<String>)>(
        "SELECT external_id, company FROM crm_contacts WHERE connection_id = $1 AND deleted_at IS NULL \
         ORDER BY external_id OFFSET $2 LIMIT 1",
    )
    .bind(c.conn.id)
    .bind((n % 20) as i64)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
    .map(|(id, company)| (id, company.unwrap_or_default()))
}

async fn some_deal(pool: &sqlx::PgPool, c: &DemoConnection, n: u64) -> Option<String> {
    sqlx::query_scalar(
        "SELECT external_id FROM crm_deals WHERE connection_id = $1 AND deleted_at IS NULL \
         ORDER BY external_id OFFSET $2 LIMIT 1",
    )
    .bind(c.conn.id)
    .bind((n % 20) as i64)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

/// An id of the same shape as `id` that no record has: its last three characters changed.
fn gone(id: &str) -> String {
    let keep = id.len().saturating_sub(3);
    if !id.is_ascii() {
        return format!("{id}zzz");
    }
    let tail: String = id[keep..].chars().map(|c| if c.is_ascii_digit() { '9' } else { 'z' }).collect();
    format!("{}{tail}", &id[..keep])
}

/// The `n`th action for `c`, or `None` while its first sync has not brought records in.
async fn action(pool: &sqlx::PgPool, c: &DemoConnection, n: u64) -> Option<(&'static str, Value)> {
    let (contact, lead) = some_contact(pool, c, n).await?;
    let tag = format!("demo #{n}");
    if n % 17 == 7 {
        // A deal someone deleted in the CRM meanwhile: the provider answers 404, a permanent
        // error, so the action dead-letters at once (no retries burned).
        let deal = gone(&some_deal(pool, c, n).await?);
        return Some(("update_deal", json!({ "deal_id": deal, "amount": 1 })));
    }
    let mut v = match n % 6 {
        0 => ("create_task", json!({ "subject": format!("Follow up ({tag})"), "contact_id": contact })),
        1 => (
            "log_call",
            json!({ "subject": format!("Discovery call ({tag})"), "occurred_at": chrono::Utc::now().to_rfc3339(),
                    "duration_secs": 300, "contact_id": contact }),
        ),
        2 => (
            "create_note",
            json!({ "body": format!("Customer asked for a quote ({tag})"), "contact_id": contact }),
        ),
        3 => {
            let deal = some_deal(pool, c, n).await?;
            (
                "update_deal",
                json!({ "deal_id": deal, "amount": 1000 + (n % 50) * 100, "close_date": "2026-12-31" }),
            )
        }
        4 => (
            "create_contact",
            json!({ "email": format!("lead-{n}-{}@demo.example.com", c.tenant), "first_name": "Demo", "last_name": format!("Lead {n}") }),
        ),
        _ => ("update_contact", json!({ "contact_id": contact, "phone": format!("+1555{:07}", n) })),
    };
    if c.provider == Provider::Close && v.0 != "update_deal" && v.0 != "update_contact" {
        // Close files activities and contacts under a lead: the contact's own.
        v.1["company_id"] = json!(lead);
    }
    Some(v)
}

impl Traffic {
    /// Enqueues until `stop`; returns how many were accepted.
    pub async fn run(
        self,
        http: reqwest::Client,
        pool: sqlx::PgPool,
        conns: Vec<DemoConnection>,
        stop: CancellationToken,
    ) -> u64 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate.max(0.1)));
        let (mut n, mut accepted, mut warned) = (0u64, 0u64, false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return accepted,
                _ = tick.tick() => {}
            }
            let c = &conns[(n as usize) % conns.len()];
            n += 1;
            let Some((name, params)) = action(&pool, c, n).await else { continue };
            let resp = http
                .post(format!("{}/v1/actions", self.api))
                .bearer_auth(&self.key)
                .header("Idempotency-Key", format!("demo-{}-{n}", c.tenant))
                .json(&json!({ "tenant_id": c.tenant, "provider": c.provider, "action": name, "params": params }))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => accepted += 1,
                Ok(r) if !warned => {
                    warned = true;
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    eprintln!("  an action was refused: {status} {body}");
                }
                Err(e) if !warned => {
                    warned = true;
                    eprintln!("  the API did not answer: {e}");
                }
                _ => {}
            }
        }
    }
}
