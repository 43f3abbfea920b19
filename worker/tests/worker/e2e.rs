//! The actions issue end to end: the real API (a `crm-scheduler` process) takes POSTs, real
//! `crm-worker` processes run them against the sandbox CRMs, and `GET /v1/jobs/{id}` reports
//! the result — for every provider and every action; then the SIGKILL chaos run.

use std::collections::HashSet;
use std::time::Duration;

use crm_jobs::providers::{ObjectKind, Provider};
use crm_jobs::testing::eventually;
use crm_sandbox::config::ProviderKind;
use crm_scheduler::api::keys::{self, Scope};
use serde_json::{Value, json};

use crate::fleet::Fleet;

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) key: String,
    _process: crate::fleet::SchedulerProc,
}

/// The real `crm-scheduler` process serving the API (verbose logs, checked for secrets).
pub(crate) async fn serve_api(f: &Fleet) -> Api {
    let process = f.spawn_scheduler(&[("RUST_LOG", crate::fleet::VERBOSE_LOGS)]);
    let (key, _) = keys::create(&f.env.db.pool, "e2e", &[Scope::Enqueue]).await.expect("key");
    f.secrets.lock().push(key.clone());
    Api { base: process.base.clone(), key, _process: process }
}

impl Api {
    pub(crate) async fn post(
        &self,
        f: &Fleet,
        tenant: &str,
        provider: Provider,
        action: &str,
        params: Value,
    ) -> String {
        let resp = f
            .http
            .post(format!("{}/v1/actions", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({ "tenant_id": tenant, "provider": provider, "action": action, "params": params }))
            .send()
            .await
            .expect("post");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, 202, "{provider} {action}: {body}");
        body["job_id"].as_str().expect("job id").to_owned()
    }

    pub(crate) async fn job(&self, f: &Fleet, id: &str) -> Value {
        f.http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }
}

async fn first_id(f: &Fleet, table: &str, tenant: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT external_id FROM {table} WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY external_id LIMIT 1"
    )))
    .bind(tenant)
    .fetch_one(&f.env.db.pool)
    .await
    .unwrap_or_else(|e| panic!("a synced {table} row for {tenant}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_on_every_provider_runs_and_reports_its_external_id() {
    let all = [
        ProviderKind::HubSpot,
        ProviderKind::Salesforce,
        ProviderKind::Pipedrive,
        ProviderKind::Zoho,
        ProviderKind::Close,
    ];
    let mut f = Fleet::start(&all).await;
    let api = serve_api(&f).await;
    f.spawn_workers(2, &[("CRM_FLEET_CONCURRENCY", "8"), ("RUST_LOG", crate::fleet::VERBOSE_LOGS)]);
    let providers =
        [Provider::Hubspot, Provider::Salesforce, Provider::Pipedrive, Provider::Zoho, Provider::Close];
    let mut conns = Vec::new();
    for p in providers {
        let tenant = format!("t-{p}");
        let (conn, account) =
            f.connect(&tenant, p, json!({ "records": 8, "quota": crate::fleet::unlimited(p) })).await;
        for object in ObjectKind::ALL {
            f.enqueue_sync(&conn, object).await;
        }
        conns.push((p, tenant, conn, account));
    }
    eventually(Duration::from_secs(120), "initial syncs done", || async { f.drained().await }).await;
    // Expire the OAuth providers' access tokens: the actions below refresh them first (and the
    // refreshed tokens, too, must stay out of the logs).
    for (p, _, _, account) in &conns {
        let acc = account["id"].as_str().map(str::to_owned).unwrap_or_else(|| account["id"].to_string());
        let _ = f.http.post(format!("{}/_sandbox/{p}/accounts/{acc}/expire-tokens", f.control)).send().await;
    }

    for (p, tenant, _conn, account) in &conns {
        let p = *p;
        let contact = first_id(&f, "crm_contacts", tenant).await;
        let deal = first_id(&f, "crm_deals", tenant).await;
        let company = if p == Provider::Close {
            // Close files activities under a lead, which must be the contact's own.
            sqlx::query_scalar::<_, String>(
                "SELECT company FROM crm_contacts WHERE tenant_id = $1 AND external_id = $2",
            )
            .bind(tenant)
            .bind(&contact)
            .fetch_one(&f.env.db.pool)
            .await
            .expect("the contact's lead")
        } else {
            first_id(&f, "crm_companies", tenant).await
        };
        let tag = format!("e2e-{p}");
        let mut task = json!({ "subject": format!("{tag} task"), "contact_id": contact });
        let mut call = json!({ "subject": format!("{tag} call"), "occurred_at": "2026-01-05T10:00:00Z", "duration_secs": 90, "contact_id": contact });
        let mut note = json!({ "body": format!("{tag} note"), "contact_id": contact });
        if p == Provider::Close {
            // Close attaches activities to a lead (our `company`).
            for v in [&mut task, &mut call, &mut note] {
                v["company_id"] = json!(company);
            }
        }
        let email = format!("{tag}@example.com");
        let mut new_contact = json!({ "email": email, "first_name": "Ada", "last_name": "E2E" });
        if p == Provider::Close {
            new_contact["company_id"] = json!(company);
        }
        let cases = [
            ("create_task", task, format!("{tag} task")),
            ("log_call", call, format!("{tag} call")),
            ("create_note", note, format!("{tag} note")),
            ("create_contact", new_contact, email.clone()),
            (
                "update_deal",
                json!({ "deal_id": deal, "amount": 4242, "close_date": "2026-06-30" }),
                String::new(),
            ),
            ("update_contact", json!({ "contact_id": contact, "phone": "+15550100" }), String::new()),
        ];
        for (action, params, marker_text) in cases {
            let id = api.post(&f, tenant, p, action, params).await;
            eventually(Duration::from_secs(60), &format!("{p} {action} done"), || async {
                let j = api.job(&f, &id).await;
                j["state"] == "succeeded" || j["state"] == "failed" || j["state"] == "dead"
            })
            .await;
            let job = api.job(&f, &id).await;
            assert_eq!(job["state"], "succeeded", "{p} {action}: {job}");
            let external = job["result"]["external_id"].as_str().unwrap_or_default().to_owned();
            assert!(!external.is_empty(), "{p} {action}: no external id in {job}");
            if !marker_text.is_empty() {
                let acc =
                    account["id"].as_str().map(str::to_owned).unwrap_or_else(|| account["id"].to_string());
                let created = f
                    .control(
                        reqwest::Method::GET,
                        &format!("{p}/accounts/{acc}/created?contains={}", urlencode(&marker_text)),
                        Value::Null,
                    )
                    .await;
                assert_eq!(
                    created["count"], 1,
                    "{p} {action}: exactly one object with {marker_text:?}: {created}"
                );
                let ids: HashSet<&str> = created["objects"]
                    .as_array()
                    .expect("objects")
                    .iter()
                    .filter_map(|o| o["id"].as_str())
                    .collect();
                assert!(
                    ids.contains(external.as_str()),
                    "{p} {action}: the job's external id {external} is the created object {ids:?}"
                );
            }
        }
        let search = api.post(&f, tenant, p, "search_contact_by_email", json!({ "email": email })).await;
        eventually(Duration::from_secs(60), "search done", || async {
            api.job(&f, &search).await["state"] == "succeeded"
        })
        .await;
        let job = api.job(&f, &search).await;
        assert_eq!(job["result"]["found"], true, "{p} search: {job}");
    }
    // The updated deals carry the new amount in the CRM.
    for (p, tenant, conn, _) in &conns {
        let deal = first_id(&f, "crm_deals", tenant).await;
        let tokens = crm_jobs::auth::TokenManager::new(f.store.clone(), crm_jobs::testing::http_client());
        let clients = crm_jobs::providers::Clients::new(crm_jobs::providers::Http::new().expect("http"));
        let client = clients.get(*p);
        let rec = crm_jobs::auth::call(&tokens, conn.id, |auth| {
            let deal = deal.clone();
            async move { client.get(&auth, ObjectKind::Deal, &deal).await }
        })
        .await
        .expect("get deal")
        .value
        .expect("deal exists");
        assert_eq!(rec.amount, Some(4242.0), "{p}: deal amount updated");
    }
    let refreshes = f.env.logs.lock().iter().filter(|l| l.contains("\"token refreshed\"")).count();
    assert!(refreshes >= 2, "the expired OAuth tokens were refreshed ({refreshes} logged)");
    f.assert_no_secrets_logged();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_tasks_survive_workers_sigkilled_every_two_seconds_without_a_duplicate() {
    for (kind, provider) in
        [(ProviderKind::HubSpot, Provider::Hubspot), (ProviderKind::Pipedrive, Provider::Pipedrive)]
    {
        let mut f = Fleet::start(&[kind]).await;
        let (conn, account) = f
            .connect("chaos", provider, json!({ "records": 1, "quota": crate::fleet::unlimited(provider) }))
            .await;
        f.control(
            reqwest::Method::POST,
            &format!("{provider}/faults"),
            json!({ "action": { "type": "latency", "ms": 5 } }),
        )
        .await;
        let n = 2000;
        for i in 0..n {
            f.enqueue_action(&conn, "create_task", json!({ "subject": format!("chaos-{provider} #{i:04}") }))
                .await;
        }
        let env = [
            ("CRM_FLEET_CONCURRENCY", "16"),
            ("CRM_FLEET_LEASE_TTL", "3s"),
            ("CRM_FLEET_SHUTDOWN_GRACE", "1s"),
        ];
        f.spawn_workers(3, &env);
        let mut seed = 0x9E3779B97F4A7C15u64;
        let started = std::time::Instant::now();
        let mut kills = 0;
        while f.succeeded().await < n as i64 {
            assert!(started.elapsed() < Duration::from_secs(420), "{provider}: chaos run did not finish");
            tokio::time::sleep(Duration::from_secs(2)).await;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let victim = (seed % f.workers.len() as u64) as usize;
            let _ = f.workers[victim].child.kill();
            let _ = f.workers[victim].child.wait();
            f.workers[victim] = f.env.spawn(&env);
            kills += 1;
        }
        let acc = account["id"].as_str().map(str::to_owned).unwrap_or_else(|| account["id"].to_string());
        let created = f
            .control(
                reqwest::Method::GET,
                &format!("{provider}/accounts/{acc}/created?contains=chaos-{provider}"),
                Value::Null,
            )
            .await;
        eprintln!(
            "{provider}: {n} tasks with {kills} SIGKILLs in {:?}; sandbox holds {}",
            started.elapsed(),
            created["count"]
        );
        assert_eq!(created["count"], n, "{provider}: exactly {n} tasks in the CRM after {kills} kills");
        assert_eq!(f.dead_letters().await, 0);
        f.assert_no_secrets_logged();
        f.workers.clear();
    }
}
