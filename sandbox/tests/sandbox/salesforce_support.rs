//! Test harness for the Salesforce imitation: a sandbox running only Salesforce, the first org's
//! credentials, and helpers that talk to it as a REST client following Salesforce's documentation
//! would (instance URL from the token response, `Sforce-Query-Options`, `nextRecordsUrl`).

use crate::support::{Resp, client, read};
use crm_sandbox::config::ProviderKind;
use crm_sandbox::salesforce::SalesforceUrls;
use crm_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The API version the tests speak.
pub const V: &str = "v62.0";

/// A running Salesforce-only sandbox and its first org.
pub struct Sf {
    /// Keeps the servers alive.
    #[allow(dead_code)]
    pub sb: SandboxHandle,
    pub http: reqwest::Client,
    pub control: String,
    pub urls: SalesforceUrls,
    pub org: String,
    /// `instance_url` of the pre-issued token response.
    pub instance: String,
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Frozen clock, `records` records per type, Salesforce only.
pub fn config(records: usize) -> SandboxConfig {
    SandboxConfig::default()
        .with_records(records)
        .with_frozen_clock()
        .with_providers([ProviderKind::Salesforce])
}

pub async fn start(cfg: SandboxConfig) -> Sf {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let urls = sb.urls().salesforce().expect("salesforce urls");
    let http = client();
    let control = sb.urls().control.clone();
    let accounts: Value = http
        .get(format!("{control}/_sandbox/salesforce/accounts"))
        .send()
        .await
        .expect("control plane answers")
        .json()
        .await
        .expect("accounts JSON");
    let a = &accounts["accounts"][0];
    let s = |v: &Value| v.as_str().expect("string field").to_owned();
    Sf {
        org: s(&a["id"]),
        instance: s(&a["credentials"]["oauth"]["instance_url"]),
        access: s(&a["credentials"]["oauth"]["access_token"]),
        refresh: s(&a["credentials"]["oauth"]["refresh_token"]),
        client_id: s(&a["credentials"]["client_id"]),
        client_secret: s(&a["credentials"]["client_secret"]),
        control,
        urls,
        http,
        sb,
    }
}

impl Sf {
    /// `{instance}/services/data/v62.0{path}`.
    pub fn data(&self, path: &str) -> String {
        format!("{}/services/data/{V}{path}", self.instance)
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        token: &str,
        body: Option<&Value>,
        batch: Option<usize>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(n) = batch {
            req = req.header("Sforce-Query-Options", format!("batchSize={n}"));
        }
        read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.send("GET", &self.data(path), token, None, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send("POST", &self.data(path), token, Some(body), None).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send("PATCH", &self.data(path), token, Some(body), None).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send("DELETE", &self.data(path), token, None, None).await
    }

    /// `GET …/query?q=` with an optional batch size.
    pub async fn query(&self, soql: &str, batch: Option<usize>) -> Resp {
        self.query_at("query", soql, batch).await
    }

    pub async fn query_at(&self, resource: &str, soql: &str, batch: Option<usize>) -> Resp {
        let q: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        self.send("GET", &self.data(&format!("/{resource}?q={q}")), &self.access, None, batch).await
    }

    /// Follows `nextRecordsUrl` to the end; returns every page's JSON.
    pub async fn pages(&self, resource: &str, soql: &str, batch: Option<usize>) -> Vec<Value> {
        let first = self.query_at(resource, soql, batch).await;
        assert_eq!(first.status, 200, "query failed: {}", first.text);
        let mut pages = vec![first.json()];
        while let Some(next) = pages.last().and_then(|p| p["nextRecordsUrl"].as_str()).map(str::to_owned) {
            let r = self.send("GET", &format!("{}{next}", self.instance), &self.access, None, batch).await;
            assert_eq!(r.status, 200, "locator page failed: {}", r.text);
            pages.push(r.json());
        }
        pages
    }

    /// Every record of a paged query.
    pub async fn all(&self, soql: &str, batch: Option<usize>) -> Vec<Value> {
        self.pages("query", soql, batch)
            .await
            .into_iter()
            .flat_map(|p| p["records"].as_array().expect("records").clone())
            .collect()
    }

    /// A form POST to the login host's token endpoint.
    pub async fn token(&self, form: &[(&str, &str)]) -> Resp {
        read(self.http.post(&self.urls.token_url).form(form).send().await.expect("token request sent")).await
    }

    pub async fn refresh_grant(&self, refresh_token: &str) -> Resp {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// A control-plane call.
    pub async fn ctl(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.control));
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.expect("control request sent")).await
    }

    /// A control-plane call that must succeed; its JSON (Null for 204).
    pub async fn ctl_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.ctl(method, path, body).await;
        assert!((200..300).contains(&r.status), "{method} {path} failed: {} {}", r.status, r.text);
        if r.text.is_empty() { Value::Null } else { r.json() }
    }

    pub fn org_path(&self, rest: &str) -> String {
        format!("/_sandbox/salesforce/accounts/{}{rest}", self.org)
    }

    pub async fn advance(&self, by: &str) {
        self.ctl_ok("POST", "/_sandbox/clock", Some(json!({"advance": by}))).await;
    }

    pub async fn now(&self) -> String {
        self.ctl_ok("GET", "/_sandbox/clock", None).await["now"].as_str().expect("now").to_owned()
    }

    pub async fn set_quota(&self, patch: Value) -> Value {
        self.ctl_ok("PATCH", &self.org_path(""), Some(patch)).await
    }

    pub async fn settings(&self, patch: Value) {
        self.ctl_ok("PATCH", "/_sandbox/salesforce/settings", Some(patch)).await;
    }

    pub async fn counters(&self) -> Value {
        self.ctl_ok("GET", &self.org_path("/counters"), None).await
    }

    pub async fn mutate(&self, req: Value) -> Value {
        self.ctl_ok("POST", &self.org_path("/mutations"), Some(req)).await
    }

    /// A fresh token pair issued through the control plane.
    pub async fn fresh_tokens(&self) -> Value {
        self.ctl_ok("POST", &self.org_path("/tokens"), None).await
    }
}

pub fn ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["Id"].as_str().expect("Id").to_owned()).collect()
}

pub fn id_set(records: &[Value]) -> BTreeSet<String> {
    ids(records).into_iter().collect()
}

pub fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}
