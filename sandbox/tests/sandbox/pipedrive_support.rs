//! Test harness for the Pipedrive imitation: a sandbox running only Pipedrive (frozen clock, port 0)
//! and the credentials of its first company, with helpers that talk to it as a Pipedrive client
//! would (API token in `x-api-token`, OAuth bearer tokens, cursor and offset paging).

use crate::support::{Resp, client, read};
use crm_sandbox::{ProviderKind, Sandbox, SandboxConfig, SandboxHandle};
use serde_json::{Value, json};

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
pub enum As<'a> {
    /// `x-api-token: …`
    ApiToken(&'a str),
    /// `Authorization: Bearer …`
    Bearer(&'a str),
    /// No credentials.
    Nobody,
}

/// A running sandbox plus the first company's credentials.
pub struct PdEnv {
    pub sb: SandboxHandle,
    pub http: reqwest::Client,
    pub control: String,
    pub api: String,
    pub token_url: String,
    pub authorize_url: String,
    pub revoke_url: String,
    pub company: String,
    pub api_token: String,
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub client_secret: String,
    pub marker_key: String,
}

/// Only Pipedrive, frozen clock, `records` per entity.
pub fn pd_config(records: usize) -> SandboxConfig {
    SandboxConfig::default()
        .with_providers([ProviderKind::Pipedrive])
        .with_records(records)
        .with_frozen_clock()
}

pub async fn start_pd(cfg: SandboxConfig) -> PdEnv {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let urls = sb.urls().pipedrive().expect("pipedrive urls");
    let http = client();
    let control = sb.urls().control.clone();
    let accounts: Value = http
        .get(format!("{control}/_sandbox/pipedrive/accounts"))
        .send()
        .await
        .expect("control plane answers")
        .json()
        .await
        .expect("accounts JSON");
    let a = &accounts["accounts"][0];
    let s = |v: &Value| v.as_str().expect("string field").to_owned();
    let c = &a["credentials"];
    assert_eq!(c["api_domain"], json!(urls.api_base), "credentials name the company domain");
    PdEnv {
        control,
        api: urls.api_base,
        token_url: urls.token_url,
        authorize_url: urls.authorize_url,
        revoke_url: urls.revoke_url,
        company: s(&a["id"]),
        api_token: s(&c["api_token"]),
        access: s(&c["oauth"]["access_token"]),
        refresh: s(&c["oauth"]["refresh_token"]),
        client_id: s(&c["client_id"]),
        client_secret: s(&c["client_secret"]),
        marker_key: s(&c["marker_field_key"]),
        http,
        sb,
    }
}

impl PdEnv {
    fn auth(&self, req: reqwest::RequestBuilder, who: As<'_>) -> reqwest::RequestBuilder {
        match who {
            As::ApiToken(t) => req.header("x-api-token", t),
            As::Bearer(t) => req.bearer_auth(t),
            As::Nobody => req,
        }
    }

    /// The default caller: the company's API token.
    pub fn token(&self) -> As<'_> {
        As::ApiToken(&self.api_token)
    }

    pub async fn send(&self, method: &str, path: &str, who: As<'_>, body: Option<&Value>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.auth(self.http.request(m, format!("{}{path}", self.api)), who);
        if let Some(b) = body {
            req = req.json(b);
        }
        read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, self.token(), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send("POST", path, self.token(), Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send("PATCH", path, self.token(), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, self.token(), None).await
    }

    /// A control-plane call that must succeed; returns its JSON (or Null for 204).
    pub async fn ctl(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.control));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = read(req.send().await.expect("control request sent")).await;
        assert!((200..300).contains(&r.status), "{method} {path} failed: {} {}", r.status, r.text);
        if r.text.is_empty() { Value::Null } else { r.json() }
    }

    pub fn account_path(&self, tail: &str) -> String {
        format!("/_sandbox/pipedrive/accounts/{}{tail}", self.company)
    }

    pub async fn advance(&self, by: &str) {
        self.ctl("POST", "/_sandbox/clock", Some(json!({"advance": by}))).await;
    }

    pub async fn set_clock(&self, at: &str) {
        self.ctl("POST", "/_sandbox/clock", Some(json!({"set": at}))).await;
    }

    pub async fn set_quota(&self, patch: Value) {
        self.ctl("PATCH", &self.account_path(""), Some(patch)).await;
    }

    pub async fn settings(&self, patch: Value) {
        self.ctl("PATCH", "/_sandbox/pipedrive/settings", Some(patch)).await;
    }

    pub async fn counters(&self) -> Value {
        self.ctl("GET", &self.account_path("/counters"), None).await
    }

    pub async fn mutate(&self, body: Value) -> Value {
        self.ctl("POST", &self.account_path("/mutations"), Some(body)).await
    }

    /// Lifts the limits so bulk tests are not throttled.
    pub async fn unthrottle(&self) {
        self.set_quota(json!({"burst": 1_000_000, "search_burst": 1_000_000, "daily_budget": 1_000_000_000}))
            .await;
    }

    /// Pages through a v2 listing (`path` already has its query), following `next_cursor`.
    pub async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let mut p = path.to_owned();
            if let Some(c) = &cursor {
                p.push(sep);
                p.push_str(&format!("cursor={c}"));
            }
            let r = self.get(&p).await;
            assert_eq!(r.status, 200, "list page failed: {}", r.text);
            let v = r.json();
            assert_eq!(v["success"], json!(true));
            out.extend(v["data"].as_array().expect("data").iter().cloned());
            match v["additional_data"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        out
    }
}

/// The `id` of each item.
pub fn ids(items: &[Value]) -> Vec<u64> {
    items.iter().map(|r| r["id"].as_u64().expect("numeric id")).collect()
}
