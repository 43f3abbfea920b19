//! The demo's world: a fresh database and Redis prefix, the sandbox's seeded accounts
//! connected to the demo tenants (every tenant on all five CRMs), a schedule per connection,
//! change generators so incremental syncs find work, and the faults that make retries,
//! throttling and dead letters visible.

use std::time::Duration;

use anyhow::Context;
use crm_jobs::auth::{Connection, Store};
use crm_jobs::providers::Provider;
use serde_json::{Value, json};

use crate::schedule::model::NewSchedule;

/// The demo's tenants; tenant *i* is connected to sandbox account *i* of every provider.
pub const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// (Re)creates the demo database `name` on the server of `admin_url`; returns its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("--database {name:?}: use letters, digits and underscores only");
    }
    let admin = crm_jobs::storage::connect(admin_url, 1, Duration::from_secs(5)).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .with_context(|| format!("dropping the previous demo database {name}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .with_context(|| format!("creating the demo database {name}"))?;
    admin.close().await;
    let mut url = url::Url::parse(admin_url).context("the PostgreSQL URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Deletes the demo queue's Redis keys from an earlier run (every key of a queue lives under
/// its tag, so this is all the demo wrote).
pub async fn clear_queue(redis_url: &str, prefix: &str) -> anyhow::Result<u64> {
    let queue = crm_queue::Queue::connect(
        crm_queue::QueueConfig::new(redis_url, crm_jobs::job::DEFAULT_QUEUE).with_prefix(prefix),
    )
    .await?;
    Ok(queue.destroy().await?)
}

/// A connection of a demo tenant, with the sandbox account behind it.
#[derive(Clone)]
pub struct DemoConnection {
    /// The tenant.
    pub tenant: String,
    /// The provider.
    pub provider: Provider,
    /// The stored connection.
    pub conn: Connection,
    /// The sandbox account id.
    pub account: String,
}

/// The sandbox control plane.
pub struct Sandbox {
    /// `SandboxUrls` JSON as the sandbox printed it.
    pub urls: Value,
    /// Control-plane base URL.
    pub control: String,
    http: reqwest::Client,
}

impl Sandbox {
    /// From the JSON line `crm-sandbox` prints.
    pub fn new(urls: Value, http: reqwest::Client) -> anyhow::Result<Self> {
        let control =
            urls["control"].as_str().context("the sandbox's URLs have no control plane")?.to_owned();
        Ok(Self { urls, control, http })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}/_sandbox/{path}", self.control));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("sandbox {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("sandbox {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Connects tenant *i* to account *i* of every provider.
    pub async fn connect_tenants(&self, store: &Store) -> anyhow::Result<Vec<DemoConnection>> {
        let mut out = Vec::new();
        for provider in Provider::ALL {
            let accounts = self.call(reqwest::Method::GET, &format!("{provider}/accounts"), None).await?;
            let accounts = accounts["accounts"].as_array().cloned().unwrap_or_default();
            for (tenant, account) in TENANTS.iter().zip(&accounts) {
                let conn = crm_jobs::sandbox_link::connect(store, tenant, provider, &self.urls, account)
                    .await
                    .with_context(|| format!("connecting {tenant} to {provider}"))?;
                let id =
                    account["id"].as_str().map(str::to_owned).unwrap_or_else(|| account["id"].to_string());
                out.push(DemoConnection { tenant: (*tenant).to_owned(), provider, conn, account: id });
            }
        }
        Ok(out)
    }

    /// Starts each account's background change generator (`per_second` changes).
    pub async fn generate_changes(&self, conns: &[DemoConnection], per_second: f64) -> anyhow::Result<()> {
        for c in conns {
            let path = format!("{}/accounts/{}/generator", c.provider, c.account);
            let body = json!({ "per_second": per_second, "creates": 1, "updates": 2, "deletes": 0 });
            self.call(reqwest::Method::POST, &path, Some(body)).await?;
        }
        Ok(())
    }

    /// Faults that make the fleet's failure handling visible: HubSpot answers some writes
    /// with 503 (retried with backoff), Pipedrive throttles some requests (the account pauses
    /// fleet-wide until Retry-After).
    pub async fn install_faults(&self) -> anyhow::Result<()> {
        let rules = [
            json!({ "provider": "hubspot", "method": "POST", "probability": 0.15,
                    "action": { "type": "status", "status": 503 } }),
            json!({ "provider": "pipedrive", "probability": 0.04,
                    "action": { "type": "throttle", "retry_after_secs": 2 } }),
        ];
        for r in rules {
            self.call(reqwest::Method::POST, "faults", Some(r)).await?;
        }
        Ok(())
    }

    /// The user disconnected the app: every credential of the account stops working.
    pub async fn revoke(&self, c: &DemoConnection) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, &format!("{}/accounts/{}/revoke", c.provider, c.account), None)
            .await
            .map(|_| ())
    }
}

/// A schedule per connection firing every `every_secs` seconds, all three objects.
pub async fn schedule_syncs(
    pool: &sqlx::PgPool,
    conns: &[DemoConnection],
    every_secs: u32,
) -> anyhow::Result<()> {
    for c in conns {
        let s = NewSchedule::from_json(
            &json!({ "connection_id": c.conn.id, "cron": format!("*/{every_secs} * * * * *") }),
        )
        .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
        crate::schedule::store::create(pool, &s).await.context("creating a schedule")?;
    }
    Ok(())
}
