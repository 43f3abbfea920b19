//! Test harness: starts a sandbox on port 0 and talks to it over HTTP like a client would.

use crm_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A running sandbox plus the credentials of its first HubSpot account.
pub struct Env {
    pub sb: SandboxHandle,
    pub http: reqwest::Client,
    pub control: String,
    pub api: String,
    pub authorize_url: String,
    pub hub: String,
    pub pat: String,
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub client_secret: String,
}

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii header").to_owned())
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("reqwest client")
}

pub async fn read(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("response body");
    Resp { status, headers, text }
}

/// Default test configuration: frozen clock, a few records.
pub fn config(records: usize) -> SandboxConfig {
    SandboxConfig::default().with_records(records).with_frozen_clock()
}

pub async fn start(cfg: SandboxConfig) -> Env {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let urls = sb.urls().hubspot().expect("hubspot urls");
    let http = client();
    let control = sb.urls().control.clone();
    let accounts: Value = http
        .get(format!("{control}/_sandbox/hubspot/accounts"))
        .send()
        .await
        .expect("control plane answers")
        .json()
        .await
        .expect("accounts JSON");
    let a = &accounts["accounts"][0];
    let s = |v: &Value| v.as_str().expect("string field").to_owned();
    Env {
        control,
        api: urls.api_base,
        authorize_url: urls.authorize_url,
        hub: s(&a["id"]),
        pat: s(&a["credentials"]["private_app_token"]),
        access: s(&a["credentials"]["oauth"]["access_token"]),
        refresh: s(&a["credentials"]["oauth"]["refresh_token"]),
        client_id: s(&a["credentials"]["client_id"]),
        client_secret: s(&a["credentials"]["client_secret"]),
        http,
        sb,
    }
}

impl Env {
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        read(self.http.get(format!("{}{path}", self.api)).bearer_auth(token).send().await.expect("GET sent"))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        read(
            self.http
                .post(format!("{}{path}", self.api))
                .bearer_auth(token)
                .json(body)
                .send()
                .await
                .expect("POST sent"),
        )
        .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Resp {
        read(
            self.http
                .patch(format!("{}{path}", self.api))
                .bearer_auth(token)
                .json(body)
                .send()
                .await
                .expect("PATCH sent"),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        read(
            self.http
                .delete(format!("{}{path}", self.api))
                .bearer_auth(token)
                .send()
                .await
                .expect("DELETE sent"),
        )
        .await
    }

    /// A control-plane call.
    pub async fn ctl(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{path}", self.control);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.expect("control request sent")).await
    }

    /// A control-plane call that must succeed; returns its JSON (or Null for 204).
    pub async fn ctl_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.ctl(method, path, body).await;
        assert!((200..300).contains(&r.status), "{method} {path} failed: {} {}", r.status, r.text);
        if r.text.is_empty() { Value::Null } else { r.json() }
    }

    pub async fn advance(&self, by: &str) {
        self.ctl_ok("POST", "/_sandbox/clock", Some(json!({"advance": by}))).await;
    }

    pub async fn set_quota(&self, patch: Value) {
        self.ctl_ok("PATCH", &format!("/_sandbox/hubspot/accounts/{}", self.hub), Some(patch)).await;
    }

    pub async fn counters(&self) -> Value {
        self.ctl_ok("GET", &format!("/_sandbox/hubspot/accounts/{}/counters", self.hub), None).await
    }

    /// Pages through a plain listing, returning every result.
    pub async fn list_all(&self, object: &str, token: &str, extra: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/crm/v3/objects/{object}?limit=100{extra}");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let r = self.get(&path, token).await;
            assert_eq!(r.status, 200, "list page failed: {}", r.text);
            let v = r.json();
            out.extend(v["results"].as_array().expect("results").iter().cloned());
            match v["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => break,
            }
        }
        out
    }

    /// Lifts the burst quota so bulk tests are not throttled.
    pub async fn unthrottle(&self) {
        self.set_quota(json!({"burst": 1_000_000, "search_per_second": 1_000_000})).await;
    }
}

pub fn ids(results: &[Value]) -> Vec<String> {
    results.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect()
}
