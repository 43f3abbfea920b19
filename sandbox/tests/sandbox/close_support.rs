//! Test harness for the Close imitation: a sandbox running only Close, the first organization's
//! credentials, and helpers that talk to it as a Close client would (HTTP Basic with the API key, or
//! an OAuth Bearer token).

use crate::support::{Resp, client, read};
use crm_sandbox::{ProviderKind, Sandbox, SandboxConfig, SandboxHandle};
use serde_json::{Value, json};

/// How a request authenticates.
#[derive(Clone, Debug)]
pub enum Cred {
    /// HTTP Basic with the API key as the user and an empty password.
    Key(String),
    /// OAuth access token.
    Bearer(String),
}

/// A running Close sandbox and its first organization.
pub struct CloseEnv {
    pub sb: SandboxHandle,
    pub http: reqwest::Client,
    pub control: String,
    pub api: String,
    pub authorize_url: String,
    pub token_url: String,
    pub revoke_url: String,
    pub org: String,
    pub key: Cred,
    pub api_key: String,
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub marker_field: String,
    pub account: Value,
}

/// Frozen clock, only Close, `records` per kind.
pub fn config(records: usize) -> SandboxConfig {
    SandboxConfig::default().with_providers([ProviderKind::Close]).with_records(records).with_frozen_clock()
}

pub async fn start(cfg: SandboxConfig) -> CloseEnv {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let urls = sb.urls().close().expect("close urls");
    let http = client();
    let control = sb.urls().control.clone();
    let accounts: Value = http
        .get(format!("{control}/_sandbox/close/accounts"))
        .send()
        .await
        .expect("control plane answers")
        .json()
        .await
        .expect("accounts JSON");
    let a = accounts["accounts"][0].clone();
    let s = |v: &Value| v.as_str().expect("string field").to_owned();
    let api_key = s(&a["credentials"]["api_key"]);
    CloseEnv {
        control,
        api: urls.api_base,
        authorize_url: urls.authorize_url,
        token_url: urls.token_url,
        revoke_url: urls.revoke_url,
        org: s(&a["id"]),
        key: Cred::Key(api_key.clone()),
        api_key,
        access: s(&a["credentials"]["oauth"]["access_token"]),
        refresh: s(&a["credentials"]["oauth"]["refresh_token"]),
        client_id: s(&a["credentials"]["client_id"]),
        client_secret: s(&a["credentials"]["client_secret"]),
        redirect_uri: s(&a["credentials"]["redirect_uri"]),
        marker_field: s(&a["credentials"]["marker_custom_field_id"]),
        account: a,
        http,
        sb,
    }
}

impl CloseEnv {
    fn auth(&self, req: reqwest::RequestBuilder, cred: &Cred) -> reqwest::RequestBuilder {
        match cred {
            Cred::Key(k) => req.basic_auth(k, Some("")),
            Cred::Bearer(t) => req.bearer_auth(t),
        }
    }

    pub async fn get(&self, path: &str, cred: &Cred) -> Resp {
        let req = self.auth(self.http.get(format!("{}{path}", self.api)), cred);
        read(req.send().await.expect("GET sent")).await
    }

    pub async fn post(&self, path: &str, cred: &Cred, body: &Value) -> Resp {
        let req = self.auth(self.http.post(format!("{}{path}", self.api)), cred).json(body);
        read(req.send().await.expect("POST sent")).await
    }

    pub async fn put(&self, path: &str, cred: &Cred, body: &Value) -> Resp {
        let req = self.auth(self.http.put(format!("{}{path}", self.api)), cred).json(body);
        read(req.send().await.expect("PUT sent")).await
    }

    pub async fn delete(&self, path: &str, cred: &Cred) -> Resp {
        let req = self.auth(self.http.delete(format!("{}{path}", self.api)), cred);
        read(req.send().await.expect("DELETE sent")).await
    }

    /// A control-plane call that must succeed; returns its JSON (or Null for an empty body).
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

    pub async fn advance(&self, by: &str) {
        self.ctl("POST", "/_sandbox/clock", Some(json!({"advance": by}))).await;
    }

    pub async fn set_quota(&self, patch: Value) {
        self.ctl("PATCH", &format!("/_sandbox/close/accounts/{}", self.org), Some(patch)).await;
    }

    pub async fn settings(&self, patch: Value) {
        self.ctl("PATCH", "/_sandbox/close/settings", Some(patch)).await;
    }

    pub async fn counters(&self) -> Value {
        self.ctl("GET", &format!("/_sandbox/close/accounts/{}/counters", self.org), None).await
    }

    pub async fn mutate(&self, body: Value) -> Value {
        self.ctl("POST", &format!("/_sandbox/close/accounts/{}/mutations", self.org), Some(body)).await
    }

    /// Lifts every rate limit so bulk tests are not throttled.
    pub async fn unthrottle(&self) {
        self.set_quota(json!({"limit": 1_000_000})).await;
    }

    /// Every record of an offset-paged listing (`_skip`/`_limit` until `has_more` is false).
    pub async fn list_all(&self, resource: &str, extra: &str, page: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut skip = 0;
        loop {
            let r =
                self.get(&format!("/api/v1/{resource}/?_skip={skip}&_limit={page}{extra}"), &self.key).await;
            assert_eq!(r.status, 200, "list page failed: {}", r.text);
            let v = r.json();
            let data = v["data"].as_array().expect("data").clone();
            skip += data.len();
            out.extend(data);
            if !v["has_more"].as_bool().expect("has_more") {
                break;
            }
        }
        out
    }

    /// Every result of an Advanced Filtering query, following the body cursor.
    pub async fn search_all(&self, mut body: Value) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let r = self.post("/api/v1/data/search/", &self.key, &body).await;
            assert_eq!(r.status, 200, "search page failed: {}", r.text);
            let v = r.json();
            out.extend(v["data"].as_array().expect("data").iter().cloned());
            match v["cursor"].as_str() {
                Some(c) => body["cursor"] = json!(c),
                None => break,
            }
        }
        out
    }
}

/// The `id` of every object.
pub fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect()
}

/// The documented incremental query for `object_type` with an optional `on_or_after` bound.
pub fn changed_since(object_type: &str, since: Option<&str>, fields: &[&str], limit: usize) -> Value {
    let mut queries = vec![json!({"type": "object_type", "object_type": object_type})];
    if let Some(s) = since {
        queries.push(json!({
            "type": "field_condition",
            "field": {"type": "regular_field", "object_type": object_type, "field_name": "date_updated"},
            "condition": {"type": "moment_range", "on_or_after": {"type": "fixed_utc", "value": s}},
        }));
    }
    json!({
        "query": {"type": "and", "queries": queries},
        "sort": [{"direction": "asc", "field": {"type": "regular_field", "object_type": object_type, "field_name": "date_updated"}}],
        "_fields": {object_type: fields},
        "_limit": limit,
        "cursor": null,
    })
}
