//! Shared test support: an in-process sandbox per test (frozen logical clock, port 0) and a
//! small client for its control plane.

#![allow(dead_code)]

use crm_jobs::auth::{Store, TokenManager};
use crm_jobs::ops::JobContext;
use crm_jobs::providers::{Clients, CreateNote, CreateTask, Http};
use crm_jobs::testing::{REDIS_URL, unique};
use crm_queue::{Queue, QueueConfig};
use crm_sandbox::config::ProviderKind;
use crm_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use serde_json::{Value, json};

/// A running sandbox with the given providers and a control-plane client.
pub struct Env {
    pub sandbox: SandboxHandle,
    pub control: Control,
    pub clients: Clients,
}

impl Env {
    /// Starts `providers` with `records` seeded records per object and a frozen clock.
    pub async fn start(providers: &[ProviderKind], records: usize) -> Self {
        let config = SandboxConfig::default()
            .with_providers(providers.iter().copied())
            .with_records(records)
            .with_frozen_clock();
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        let control =
            Control { base: sandbox.urls().control.clone(), http: crm_jobs::testing::http_client() };
        let clients = Clients::new(Http::new().expect("http client"));
        Self { sandbox, control, clients }
    }
}

/// A job context over `store`'s database and the sandbox `clients`, with a queue on a fresh
/// Redis prefix (returned: the caller purges it with `purge_redis_prefix`).
pub async fn job_context(store: Store, clients: &Clients) -> (JobContext, String) {
    let prefix = unique("crmtest-");
    let queue = Queue::connect(QueueConfig::new(REDIS_URL, "crm").with_prefix(&prefix)).await.expect("redis");
    let ctx = JobContext {
        pool: store.pool().clone(),
        queue,
        tokens: TokenManager::new(store, crm_jobs::testing::http_client()),
        clients: clients.clone(),
    };
    (ctx, prefix)
}

/// A task with only a subject and a marker.
pub fn task(subject: &str, marker: &str) -> CreateTask {
    CreateTask {
        subject: subject.into(),
        body: None,
        due_at: None,
        contact_id: None,
        deal_id: None,
        company_id: None,
        priority: None,
        owner_id: None,
        marker: marker.into(),
    }
}

/// A note on a deal, with only a body and a marker.
pub fn deal_note(body: &str, deal: &str, marker: &str) -> CreateNote {
    CreateNote {
        body: body.into(),
        title: None,
        contact_id: None,
        deal_id: Some(deal.into()),
        company_id: None,
        marker: marker.into(),
    }
}

/// The sandbox control plane over HTTP.
pub struct Control {
    pub base: String,
    pub http: reqwest::Client,
}

impl Control {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}/_sandbox/{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control plane reachable");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Value {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Installs a fault rule for `provider` (see docs/sandbox.md "Fault knobs").
    pub async fn fault(&self, provider: &str, rule: Value) -> Value {
        self.post(&format!("{provider}/faults"), rule).await
    }

    /// Removes every fault rule.
    pub async fn clear_faults(&self) {
        self.delete("faults").await;
    }

    /// Advances the logical clock.
    pub async fn advance(&self, by: &str) {
        self.post("clock", json!({ "advance": by })).await;
    }
}
