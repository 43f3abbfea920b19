//! Fleet tests: several real `crm-worker` processes against the in-process sandbox CRMs, with
//! the limits the scheduler would load. They check the limits issue's acceptance: in-flight
//! bounds, quota utilisation without throttles, honouring a Retry-After, and riding out an
//! outage without dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crm_jobs::actions::{Created, NewAction};
use crm_jobs::auth::{Connection, Keyring, Store};
use crm_jobs::providers::{ObjectKind, Provider};
use crm_jobs::testing::{eventually, http_client};
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Env, Worker, follow_logs};

pub(crate) struct Fleet {
    pub(crate) env: Env,
    pub(crate) _sandbox: crm_sandbox::SandboxHandle,
    pub(crate) urls: Value,
    pub(crate) control: String,
    pub(crate) http: reqwest::Client,
    pub(crate) store: Store,
    pub(crate) workers: Vec<Worker>,
    /// Credentials handed out in this test (sandbox accounts, API keys): none may be logged.
    pub(crate) secrets: parking_lot::Mutex<Vec<String>>,
}

/// Logging at debug for our crates (the no-secrets check reads it), quieter for libraries.
pub(crate) const VERBOSE_LOGS: &str =
    "debug,sqlx=warn,hyper=info,hyper_util=info,h2=info,reqwest=info,rustls=info,tower=info,redis=info";

/// A real `crm-scheduler` process.
pub(crate) struct SchedulerProc {
    pub(crate) child: std::process::Child,
    pub(crate) base: String,
}

impl Drop for SchedulerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fleet {
    pub(crate) async fn start(providers: &[ProviderKind]) -> Self {
        let env = Env::new().await;
        let sandbox = crm_sandbox::Sandbox::start(
            crm_sandbox::SandboxConfig::default().with_providers(providers.iter().copied()).with_records(5),
        )
        .await
        .expect("sandbox");
        let urls = serde_json::to_value(sandbox.urls()).expect("urls");
        let control = sandbox.urls().control.clone();
        let store =
            Store::new(env.db.pool.clone(), Arc::new(Keyring::from_base64(&env.key, &[]).expect("key")));
        // The limits the scheduler would load: the documented-quota seeds.
        crm_jobs::limits::seed(&env.db.pool).await.expect("seed");
        let rows = crm_jobs::limits::load(&env.db.pool).await.expect("load");
        crm_jobs::limits::apply(&env.queue, &rows).await.expect("apply");
        Self {
            env,
            _sandbox: sandbox,
            urls,
            control,
            http: http_client(),
            store,
            workers: Vec::new(),
            secrets: Default::default(),
        }
    }

    pub(crate) async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}/_sandbox/{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("control");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// A new sandbox account connected to `tenant`.
    pub(crate) async fn connect(&self, tenant: &str, provider: Provider, spec: Value) -> (Connection, Value) {
        let account = self.control(reqwest::Method::POST, &format!("{provider}/accounts"), spec).await;
        self.remember_secrets(&account);
        let conn = crm_jobs::sandbox_link::connect(&self.store, tenant, provider, &self.urls, &account)
            .await
            .expect("connect");
        (conn, account)
    }

    /// Records every credential-looking string in `v` (tokens, keys, secrets, passwords).
    pub(crate) fn remember_secrets(&self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let k = k.to_ascii_lowercase();
                    let secretish = ["token", "secret", "key", "password"].iter().any(|w| k.contains(w));
                    match v {
                        Value::String(s) if secretish && s.len() >= 8 => self.secrets.lock().push(s.clone()),
                        other => self.remember_secrets(other),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| self.remember_secrets(x)),
            _ => {}
        }
    }

    /// Fails if any log line of any spawned process contains a credential: the sandbox's issued
    /// access and refresh tokens and codes, the accounts' static keys and client secrets, the
    /// API keys, the token encryption key.
    pub(crate) fn assert_no_secrets_logged(&self) {
        let mut secrets = self._sandbox.state().tokens.issued_secrets();
        secrets.extend(self.secrets.lock().iter().cloned());
        secrets.push(self.env.key.clone());
        secrets.retain(|s| s.len() >= 8);
        let logs = self.env.logs.lock();
        assert!(!logs.is_empty(), "no log lines captured");
        assert!(secrets.len() > 1, "no secrets to look for");
        for line in logs.iter() {
            for s in &secrets {
                assert!(!line.contains(s.as_str()), "a secret ({}…) is in a log line: {line}", &s[..4]);
            }
        }
        eprintln!("no-secrets check: {} log lines, {} secrets", logs.len(), secrets.len());
    }

    /// A real `crm-scheduler` on this fleet's database and prefix, serving on a free port.
    pub(crate) fn spawn_scheduler(&self, extra: &[(&str, &str)]) -> SchedulerProc {
        let mut cmd =
            std::process::Command::new(crm_jobs::testing::workspace_bin("crm-scheduler", "crm-scheduler"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.env.db.url)
            .env("REDIS_URL", crm_jobs::testing::REDIS_URL)
            .env("CRM_FLEET_REDIS_PREFIX", &self.env.prefix)
            .env("CRM_FLEET_API_ADDR", "127.0.0.1:0")
            .env("CRM_FLEET_TOKEN_KEY", &self.env.key)
            .env("CRM_FLEET_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn crm-scheduler");
        let ready = follow_logs(&mut child, "crm-scheduler listening", &self.env.logs);
        let base = ready["api"].as_str().expect("api url").to_owned();
        SchedulerProc { child, base }
    }

    pub(crate) fn spawn_workers(&mut self, n: usize, extra: &[(&str, &str)]) {
        for _ in 0..n {
            self.workers.push(self.env.spawn(extra));
        }
    }

    pub(crate) async fn enqueue_action(&self, conn: &Connection, action: &str, params: Value) -> Uuid {
        let parsed = crm_jobs::actions::parse(action, &params).expect("valid action");
        let new = NewAction {
            tenant: conn.tenant_id.clone(),
            connection: conn.id,
            provider: conn.provider.as_str().into(),
            action: parsed,
            idempotency_key: Uuid::new_v4().to_string(),
            traceparent: None,
        };
        let Created::New(row) =
            crm_jobs::actions::store::create(&self.env.db.pool, &new).await.expect("create")
        else {
            panic!("fresh key")
        };
        let target =
            crm_jobs::enqueue::target(&self.env.db.pool, conn.id).await.expect("db").expect("target");
        let job = crm_jobs::enqueue::action_job(&target, row.id, crm_jobs::enqueue::ACTION_MAX_ATTEMPTS)
            .expect("job");
        self.env.queue.push(job).await.expect("push");
        row.id
    }

    pub(crate) async fn enqueue_sync(&self, conn: &Connection, object: ObjectKind) {
        let target =
            crm_jobs::enqueue::target(&self.env.db.pool, conn.id).await.expect("db").expect("target");
        let job = crm_jobs::enqueue::sync_job(&target, object, crm_jobs::job::SyncMode::Incremental, "test")
            .expect("job");
        self.env.queue.push(job).await.expect("push");
    }

    pub(crate) async fn succeeded(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM actions WHERE state = 'succeeded'")
            .fetch_one(&self.env.db.pool)
            .await
            .expect("count")
    }

    pub(crate) async fn drained(&self) -> bool {
        let s = self.env.queue.stats().await.expect("stats");
        s.ready + s.delayed + s.leased + s.dying == 0
    }

    pub(crate) async fn dead_letters(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&self.env.db.pool)
            .await
            .expect("count")
    }

    /// Requests the sandbox served for an account: (at ms, status).
    pub(crate) async fn requests(&self, account: &str) -> Vec<(i64, u64)> {
        let log = self
            .control(reqwest::Method::GET, &format!("requests?account={account}&limit=100000"), Value::Null)
            .await;
        log["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .map(|r| (r["at_ms"].as_i64().unwrap_or(0), r["status"].as_u64().unwrap_or(0)))
            .collect()
    }
}

/// A quota patch that takes each provider's limits out of the way (tests of our own limits).
pub(crate) fn unlimited(p: Provider) -> Value {
    match p {
        Provider::Hubspot => json!({ "burst": 1000000, "search_per_second": 1000000 }),
        Provider::Salesforce => json!({ "daily": 100000000 }),
        Provider::Pipedrive => {
            json!({ "burst": 1000000, "search_burst": 1000000, "daily_budget": 100000000 })
        }
        Provider::Zoho => json!({ "unlimited_credits": true, "concurrency": 1000, "sub_concurrency": 1000 }),
        Provider::Close => json!({ "limit": 1000000 }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_retry_after_of_30_s_stops_requests_to_that_account_and_resumes_within_a_second() {
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let (conn, account) =
        f.connect("acme", Provider::Hubspot, json!({ "records": 1, "quota": { "burst": 100000 } })).await;
    let hub = account["id"].as_str().expect("id").to_owned();
    f.control(
        reqwest::Method::POST,
        "hubspot/faults",
        json!({ "account": hub, "after": 5, "times": 1, "action": { "type": "throttle", "policy": "TEN_SECONDLY_ROLLING", "retry_after_secs": 30 } }),
    )
    .await;
    for i in 0..60 {
        f.enqueue_action(&conn, "create_task", json!({ "subject": format!("task {i}") })).await;
    }
    f.spawn_workers(2, &[("CRM_FLEET_CONCURRENCY", "4")]);
    eventually(Duration::from_secs(90), "all 60 tasks created", || async { f.succeeded().await == 60 }).await;
    let log = f.requests(&hub).await;
    let throttled_at = log.iter().find(|(_, s)| *s == 429).map(|(t, _)| *t).expect("a 429");
    let after: Vec<i64> =
        log.iter().filter(|(t, _)| *t > throttled_at + 100).map(|(t, _)| t - throttled_at).collect();
    // Requests admitted before the 429 came back may still reach the provider just after it
    // (at most one per worker slot: 2 workers × 4, and within moments); nothing is admitted
    // after it until the Retry-After ends.
    let stragglers: Vec<i64> = after.iter().copied().filter(|t| *t < 30_000).collect();
    assert!(
        stragglers.len() <= 8 && stragglers.iter().all(|t| *t < 2_000),
        "requests inside the 30 s Retry-After beyond those already in flight: {stragglers:?} ms after the throttle"
    );
    let first = *after.iter().filter(|t| **t >= 2_000).min().expect("requests resumed");
    assert!(first >= 30_000, "a request {first} ms after the throttle, inside the 30 s Retry-After");
    assert!(first <= 31_000, "resumed {first} ms after the throttle (more than 1 s late)");
    assert_eq!(f.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60_s_provider_outage_dead_letters_nothing_and_everything_completes_after() {
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let (conn, account) =
        f.connect("acme", Provider::Hubspot, json!({ "records": 1, "quota": { "burst": 100000 } })).await;
    let hub = account["id"].as_str().expect("id").to_owned();
    f.control(
        reqwest::Method::POST,
        "hubspot/faults",
        json!({ "account": hub, "duration": "60s", "action": { "type": "status", "status": 503 } }),
    )
    .await;
    for i in 0..120 {
        f.enqueue_action(&conn, "create_task", json!({ "subject": format!("during outage {i}") })).await;
    }
    f.spawn_workers(2, &[("CRM_FLEET_CONCURRENCY", "8")]);
    eventually(Duration::from_secs(150), "all 120 tasks created after the outage", || async {
        f.succeeded().await == 120
    })
    .await;
    assert_eq!(f.dead_letters().await, 0, "the outage dead-lettered nothing");
    let log = f.requests(&hub).await;
    let failed = log.iter().filter(|(_, s)| *s == 503).count();
    assert!(failed > 0, "the outage happened");
    let created = f
        .control(
            reqwest::Method::GET,
            &format!("hubspot/accounts/{hub}/created?contains=during%20outage"),
            Value::Null,
        )
        .await;
    assert_eq!(created["count"], 120, "exactly one task per action");
}

/// Runs `jobs` task creations against one HubSpot account limited to `quota` requests per
/// `window_ms`, with 3 workers; returns (requests, throttled after the first window, utilisation).
async fn quota_run(jobs: i64, quota: u64, window_ms: u64) -> (usize, f64, f64) {
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let (conn, account) = f
        .connect(
            "acme",
            Provider::Hubspot,
            json!({ "records": 1, "quota": { "burst": quota, "window_ms": window_ms } }),
        )
        .await;
    let hub = account["id"].as_str().expect("id").to_owned();
    // The quota, not concurrency, must be the binding constraint here.
    for b in ["c:conn:*", "c:tenant:hubspot:*"] {
        crm_jobs::limits::set(&f.env.db.pool, b, crm_queue::Limit::Concurrency(64), "test")
            .await
            .expect("limit");
    }
    let rows = crm_jobs::limits::load(&f.env.db.pool).await.expect("load");
    crm_jobs::limits::apply(&f.env.queue, &rows).await.expect("apply");
    for i in 0..jobs {
        f.enqueue_action(&conn, "create_task", json!({ "subject": format!("q{i}") })).await;
    }
    f.spawn_workers(3, &[("CRM_FLEET_CONCURRENCY", "16")]);
    let patience = Duration::from_millis(jobs as u64 * window_ms / quota * 2 + 60_000);
    eventually(patience, "all tasks created", || async { f.succeeded().await == jobs }).await;
    let mut log = f.requests(&hub).await;
    log.sort();
    let w = window_ms as i64;
    let start = log.first().map(|r| r.0).expect("requests");
    let end = log.last().map(|r| r.0).expect("requests");
    let steady: Vec<&(i64, u64)> = log.iter().filter(|(t, _)| *t >= start + w).collect();
    let throttled = steady.iter().filter(|(_, s)| *s == 429).count();
    let share = throttled as f64 / steady.len().max(1) as f64;
    let served = steady.iter().filter(|(_, s)| *s != 429).count();
    let utilisation = served as f64 / ((end - start - w).max(1) as f64 / window_ms as f64 * quota as f64);
    // Where unused quota went: long silences (a pause) versus a slow steady rate.
    let gaps: Vec<i64> = steady.windows(2).map(|p| p[1].0 - p[0].0).collect();
    let interval = window_ms as i64 / quota as i64;
    let silent: i64 = gaps.iter().filter(|g| **g > 5 * interval).map(|g| g - interval).sum();
    // Pauses taken because an answer said the quota was used up (not throttled).
    let used_up: Vec<u64> = f
        .env
        .logs
        .lock()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "provider quota used up; account paused fleet-wide")
        .filter_map(|v| v["pause_ms"].as_u64())
        .collect();
    eprintln!(
        "quota {quota}/{window_ms} ms, {jobs} jobs, 3 workers: {} requests, {throttled} throttled after the first window \
         ({:.2}%), utilisation {:.1}% of the quota; longest gap {} ms, {} ms in gaps over 5 intervals; \
         {} pauses on a used-up quota ({} ms in all)",
        log.len(),
        share * 100.0,
        utilisation * 100.0,
        gaps.iter().max().copied().unwrap_or(0),
        silent,
        used_up.len(),
        used_up.iter().sum::<u64>()
    );
    (log.len(), share, utilisation)
}

/// The hard property: at most 1 % throttled after the first window (we never overrun a quota),
/// at 50 requests per 1 s (a rate debug builds sustain on two shared cores with room to spare).
/// Utilisation is a throughput figure, so this noisy shared machine only checks a floor that
/// catches gross regressions; the ≥ 95 % figure is measured by
/// `a_quota_of_100_per_10_s_is_used_fully_at_full_scale` on a quiet machine.
#[tokio::test(flavor = "multi_thread")]
async fn a_quota_is_never_overrun_and_mostly_used() {
    let (_, share, utilisation) = quota_run(750, 50, 1000).await;
    assert!(share <= 0.01, "throttled share {share:.3} after the first window");
    assert!(utilisation >= 0.5, "utilisation {utilisation:.3}: far below the quota");
}

/// The acceptance figure at full scale (100 requests / 10 s, 5,000 jobs, ~9 minutes):
/// `cargo test -p crm-worker --test worker -- --ignored full_scale --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "nine minutes; run for the figures (just accept-limits)"]
async fn a_quota_of_100_per_10_s_is_used_fully_at_full_scale() {
    let (_, share, utilisation) = quota_run(5000, 100, 10_000).await;
    assert!(share <= 0.01, "throttled share {share:.3} after the first window");
    assert!(utilisation >= 0.95, "utilisation {utilisation:.3} of the quota");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_requests_per_connection_never_exceed_the_limit_with_1_3_and_6_workers() {
    // Whether two requests of one connection ever overlapped, by worker count: the bound must
    // have bound somewhere for the test to mean anything. One worker may never get there on a
    // loaded machine (its 8 slots are spread over 10 lanes, one job per lane, until lanes run
    // dry), so this is asserted over the three runs, not each.
    let mut reached: Vec<(usize, HashMap<String, u64>)> = Vec::new();
    for workers in [1usize, 3, 6] {
        let mut f = Fleet::start(&[
            ProviderKind::HubSpot,
            ProviderKind::Pipedrive,
            ProviderKind::Close,
            ProviderKind::Zoho,
        ])
        .await;
        crm_jobs::limits::set(&f.env.db.pool, "c:conn:*", crm_queue::Limit::Concurrency(2), "test")
            .await
            .expect("limit");
        let rows = crm_jobs::limits::load(&f.env.db.pool).await.expect("load");
        crm_jobs::limits::apply(&f.env.queue, &rows).await.expect("apply");
        let mut accounts: Vec<(Provider, String)> = Vec::new();
        let mut conns = Vec::new();
        let providers = [Provider::Hubspot, Provider::Pipedrive, Provider::Close, Provider::Zoho];
        for t in 0..10 {
            let p = providers[t % providers.len()];
            let spec = json!({ "records": 60, "quota": unlimited(p) });
            let (conn, account) = f.connect(&format!("tenant{t}"), p, spec).await;
            accounts.push((
                p,
                account["id"].as_str().map(str::to_owned).unwrap_or_else(|| account["id"].to_string()),
            ));
            conns.push(conn);
        }
        for p in providers {
            f.control(
                reqwest::Method::POST,
                &format!("{p}/faults"),
                json!({ "action": { "type": "latency", "ms": 15 } }),
            )
            .await;
        }
        // A random mix: syncs of every object, and tasks where the provider needs no related record.
        let mut rng_state = 0x2545F4914F6CDD1Du64 ^ workers as u64;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for conn in &conns {
            for object in ObjectKind::ALL {
                f.enqueue_sync(conn, object).await;
            }
            if matches!(conn.provider, Provider::Hubspot | Provider::Pipedrive | Provider::Zoho) {
                for i in 0..(5 + next() % 10) {
                    f.enqueue_action(conn, "create_task", json!({ "subject": format!("mix {i}") })).await;
                }
            }
        }
        f.spawn_workers(workers, &[("CRM_FLEET_CONCURRENCY", "8")]);
        eventually(Duration::from_secs(180), "the mix drained", || async { f.drained().await }).await;
        let mut max: HashMap<String, u64> = HashMap::new();
        for (p, account) in &accounts {
            let c = f
                .control(reqwest::Method::GET, &format!("{p}/accounts/{account}/counters"), Value::Null)
                .await;
            let m = c["max_in_flight"].as_u64().expect("max_in_flight");
            max.insert(format!("{p}/{account}"), m);
            assert!(m <= 2, "{workers} workers: {p} account {account} saw {m} requests in flight (limit 2)");
        }
        reached.push((workers, max));
        assert_eq!(f.dead_letters().await, 0);
        f.workers.clear();
    }
    assert!(
        reached.iter().any(|(_, max)| max.values().any(|m| *m == 2)),
        "the limit was reached somewhere ({reached:?})"
    );
}
