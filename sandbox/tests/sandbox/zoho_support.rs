//! Zoho test harness: starts a sandbox with only the Zoho imitation (frozen clock, port 0) and talks
//! to it as a Zoho client would (`Authorization: Zoho-oauthtoken …`).

use crate::support::{Resp, client, read};
use crm_sandbox::config::ProviderKind;
use crm_sandbox::zoho::ZohoUrls;
use crm_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// A running sandbox plus the credentials of its first (US) org.
pub struct ZEnv {
    pub sb: SandboxHandle,
    pub http: reqwest::Client,
    pub control: String,
    pub urls: ZohoUrls,
    pub org: String,
    pub api: String,
    pub accounts: String,
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Default Zoho test configuration: only Zoho, frozen clock, `records` per module.
pub fn zconfig(records: usize) -> SandboxConfig {
    SandboxConfig::default().with_providers([ProviderKind::Zoho]).with_records(records).with_frozen_clock()
}

pub async fn zstart(cfg: SandboxConfig) -> ZEnv {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    let urls = sb.urls().zoho().expect("zoho urls");
    let http = client();
    let control = sb.urls().control.clone();
    let accounts: Value = http
        .get(format!("{control}/_sandbox/zoho/accounts"))
        .send()
        .await
        .expect("control plane answers")
        .json()
        .await
        .expect("accounts JSON");
    let a = &accounts["accounts"][0];
    let s = |v: &Value| v.as_str().expect("string field").to_owned();
    ZEnv {
        org: s(&a["id"]),
        api: s(&a["api_domain"]),
        accounts: s(&a["accounts_server"]),
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

impl ZEnv {
    fn auth(&self, req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
        req.header("Authorization", format!("Zoho-oauthtoken {token}"))
    }

    /// `GET {api}{path}`.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.get_at(&self.api, path, token, None).await
    }

    /// `GET {base}{path}` with an optional `If-Modified-Since`.
    pub async fn get_at(&self, base: &str, path: &str, token: &str, ims: Option<&str>) -> Resp {
        let mut req = self.auth(self.http.get(format!("{base}{path}")), token);
        if let Some(t) = ims {
            req = req.header("If-Modified-Since", t);
        }
        read(req.send().await.expect("GET sent")).await
    }

    /// `GET` with `If-Modified-Since`.
    pub async fn get_since(&self, path: &str, token: &str, ims: &str) -> Resp {
        self.get_at(&self.api, path, token, Some(ims)).await
    }

    pub async fn send(&self, method: &str, path: &str, token: &str, body: &Value) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        read(
            self.auth(self.http.request(m, format!("{}{path}", self.api)), token)
                .json(body)
                .send()
                .await
                .expect("sent"),
        )
        .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send("POST", path, token, body).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send("PUT", path, token, body).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        read(
            self.auth(self.http.delete(format!("{}{path}", self.api)), token)
                .send()
                .await
                .expect("DELETE sent"),
        )
        .await
    }

    /// `POST {accounts server}/oauth/v2/token` with a form body.
    pub async fn token_form(&self, server: &str, form: &[(&str, &str)]) -> Resp {
        read(self.http.post(format!("{server}/oauth/v2/token")).form(form).send().await.expect("token call"))
            .await
    }

    /// A refresh grant with the parameters in the query string (as Zoho's docs show it).
    pub async fn refresh_query(&self, server: &str, refresh: &str) -> Resp {
        let url = format!(
            "{server}/oauth/v2/token?refresh_token={refresh}&client_id={}&client_secret={}&grant_type=refresh_token",
            self.client_id, self.client_secret
        );
        read(self.http.post(url).send().await.expect("token call")).await
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

    /// A control-plane call that must succeed.
    pub async fn ctl_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.ctl(method, path, body).await;
        assert!((200..300).contains(&r.status), "{method} {path} failed: {} {}", r.status, r.text);
        if r.text.is_empty() { Value::Null } else { r.json() }
    }

    pub async fn advance(&self, by: &str) {
        self.ctl_ok("POST", "/_sandbox/clock", Some(json!({"advance": by}))).await;
    }

    pub async fn now(&self) -> String {
        self.ctl_ok("GET", "/_sandbox/clock", None).await["now"].as_str().expect("now").to_owned()
    }

    pub async fn set_quota(&self, patch: Value) -> Value {
        self.ctl_ok("PATCH", &format!("/_sandbox/zoho/accounts/{}", self.org), Some(patch)).await
    }

    pub async fn settings(&self, patch: Value) {
        self.ctl_ok("PATCH", "/_sandbox/zoho/settings", Some(patch)).await;
    }

    pub async fn counters(&self) -> Value {
        self.ctl_ok("GET", &format!("/_sandbox/zoho/accounts/{}/counters", self.org), None).await
    }

    pub async fn account(&self) -> Value {
        self.ctl_ok("GET", &format!("/_sandbox/zoho/accounts/{}", self.org), None).await
    }

    pub async fn mutate(&self, req: Value) -> Value {
        self.ctl_ok("POST", &format!("/_sandbox/zoho/accounts/{}/mutations", self.org), Some(req)).await
    }

    /// A fresh token pair for the org (the control plane's "user just connected").
    pub async fn fresh_tokens(&self) -> Value {
        self.ctl_ok("POST", &format!("/_sandbox/zoho/accounts/{}/tokens", self.org), None).await
    }

    /// Pages through `GET /crm/v7/{module}` with `page`, then `page_token` past 2,000 records.
    pub async fn list_all(&self, module: &str, query: &str, ims: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut page = 1;
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/crm/v7/{module}?{query}&page_token={t}"),
                None => format!("/crm/v7/{module}?{query}&page={page}"),
            };
            let r = self.get_at(&self.api, &path, &self.access, ims).await;
            if r.status == 204 || r.status == 304 {
                break;
            }
            assert_eq!(r.status, 200, "list page failed: {}", r.text);
            let v = r.json();
            let data = v["data"].as_array().expect("data").clone();
            let per_page = v["info"]["per_page"].as_u64().expect("per_page") as usize;
            out.extend(data);
            if v["info"]["more_records"] != json!(true) {
                break;
            }
            if (page + 1) * per_page > 2000 || token.is_some() {
                token = Some(v["info"]["next_page_token"].as_str().expect("next_page_token").to_owned());
            } else {
                page += 1;
            }
        }
        out
    }

    /// Lifts the credit and concurrency limits so bulk tests are not throttled.
    pub async fn unthrottle(&self) {
        self.set_quota(json!({"unlimited_credits": true, "concurrency": 1000, "sub_concurrency": 1000}))
            .await;
    }

    /// Waits (bounded) until the org has `n` calls of the OAuth app in flight.
    pub async fn wait_in_flight(&self, n: u64) {
        for _ in 0..500 {
            let a = self.account().await;
            if a["usage"]["in_flight"][&self.client_id]["all"].as_u64() == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {n} calls in flight");
    }
}

pub fn zids(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect()
}

pub fn id_set(rows: &[Value]) -> BTreeSet<String> {
    zids(rows).into_iter().collect()
}
