//! End-to-end tests of the real `crm-worker` binary: configuration errors, processing jobs,
//! serving metrics and readiness, and the graceful shutdown sequence.

mod e2e;
mod fleet;
mod telemetry;
mod traces;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crm_jobs::job::{CrmJob, ProbeJob};
use crm_jobs::testing::{REDIS_URL, TestDb, eventually, http_client, purge_redis_prefix, unique};
use crm_queue::{Lane, NewJob, Priority, Queue, QueueConfig};

pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) metrics: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Env {
    pub(crate) db: TestDb,
    pub(crate) prefix: String,
    pub(crate) queue: Queue,
    pub(crate) key: String,
    /// Every log line the spawned processes wrote (stderr), for the no-secrets check.
    pub(crate) logs: Logs,
}

/// Log lines of spawned processes.
pub(crate) type Logs = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

/// Reads `child`'s stderr until a JSON line whose `message` is `ready`, returning that line;
/// keeps every line in `logs` and drains the rest in the background, so the child never blocks
/// on a full pipe.
pub(crate) fn follow_logs(child: &mut Child, ready: &str, logs: &Logs) -> serde_json::Value {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let found = loop {
        let line = lines.next().unwrap_or_else(|| panic!("process exited before {ready:?}")).expect("read");
        logs.lock().push(line.clone());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == ready
        {
            break v;
        }
    };
    let logs = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            logs.lock().push(line);
        }
    });
    found
}

impl Env {
    pub(crate) async fn new() -> Self {
        let db = TestDb::new().await;
        let prefix = unique("crmtest-");
        let queue =
            Queue::connect(QueueConfig::new(REDIS_URL, "crm").with_prefix(&prefix)).await.expect("redis");
        Self { db, prefix, queue, key: crm_jobs::auth::Keyring::generate_base64(), logs: Logs::default() }
    }

    pub(crate) fn spawn(&self, extra: &[(&str, &str)]) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm-worker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", REDIS_URL)
            .env("CRM_FLEET_REDIS_PREFIX", &self.prefix)
            .env("CRM_FLEET_METRICS_ADDR", "127.0.0.1:0")
            .env("CRM_FLEET_LOG_FORMAT", "json")
            .env("CRM_FLEET_TOKEN_KEY", &self.key)
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn crm-worker");
        let ready = follow_logs(&mut child, "crm-worker listening", &self.logs);
        let metrics = ready["metrics"].as_str().expect("metrics url").to_owned();
        Worker { child, metrics }
    }

    async fn push_probe(&self, probe: ProbeJob) -> crm_queue::JobId {
        let job = NewJob::json("probe", Lane::new("probe", "t1", Priority::Normal), &CrmJob::Probe(probe))
            .expect("json");
        self.queue.push(job).await.expect("push").id()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_crm-worker"))
        .env_clear()
        .env("REDIS_URL", "http://wrong")
        .env("CRM_FLEET_CONCURRENCY", "lots")
        .env("CRM_FLEET_SHUTDOWN_GRACE", "never")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["DATABASE_URL", "REDIS_URL", "CRM_FLEET_CONCURRENCY", "CRM_FLEET_SHUTDOWN_GRACE"] {
        assert!(err.contains(name), "{name} not reported:\n{err}");
    }
}

/// `CRM_FLEET_NO_MIGRATE=1` (or `yes`) means set, as an operator would expect, and a flag the
/// binary does not know is a configuration error like the others (64, not clap's 2).
#[test]
fn no_migrate_takes_any_usual_true_and_unknown_flags_exit_64() {
    for set in ["1", "yes", "true"] {
        let out = Command::new(env!("CARGO_BIN_EXE_crm-worker"))
            .env_clear()
            .env("CRM_FLEET_NO_MIGRATE", set)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{set}: {err}");
        assert!(err.contains("DATABASE_URL") && !err.contains("NO_MIGRATE"), "{set} accepted:\n{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_crm-worker"))
        .env_clear()
        .arg("--no-such-flag")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_jobs_and_serves_metrics_and_readiness() {
    let env = Env::new().await;
    let _worker = env.spawn(&[]);
    let _w = &_worker;
    for _ in 0..20 {
        env.push_probe(ProbeJob::default()).await;
    }
    env.push_probe(ProbeJob { fail_times: 1, ..ProbeJob::default() }).await;
    eventually(Duration::from_secs(30), "queue drained", || async {
        let s = env.queue.stats().await.expect("stats");
        s.ready + s.leased + s.delayed == 0
    })
    .await;
    let client = http_client();
    let base = _worker.metrics.trim_end_matches("/metrics").to_owned();
    let ready = client.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let body = client.get(&_worker.metrics).send().await.expect("metrics").text().await.expect("text");
    let success: f64 = body
        .lines()
        .find(|l| l.starts_with("crm_fleet_jobs_completed_total") && l.contains("outcome=\"success\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("success counter");
    assert_eq!(success, 21.0, "{body}");
    assert!(body.contains("outcome=\"retry\""), "the planned failure was retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_within_the_grace_period_and_releases_the_rest() {
    let env = Env::new().await;
    let mut worker = env.spawn(&[("CRM_FLEET_SHUTDOWN_GRACE", "1s")]);
    let quick = env.push_probe(ProbeJob { sleep_ms: 300, ..ProbeJob::default() }).await;
    let long = env.push_probe(ProbeJob { sleep_ms: 60_000, ..ProbeJob::default() }).await;
    eventually(Duration::from_secs(10), "both running", || async {
        env.queue.stats().await.expect("stats").leased == 2
    })
    .await;
    let status = Command::new("kill").arg("-TERM").arg(worker.child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(code) = worker.child.try_wait().expect("wait") {
            break code;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "did not exit within grace + 4s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code:?}");
    assert!(start.elapsed() < Duration::from_millis(1000 + 2000), "took {:?}", start.elapsed());
    assert!(env.queue.job(quick).await.expect("job").is_none(), "the short job finished within the grace");
    let info = env.queue.job(long).await.expect("job").expect("long job kept");
    assert_eq!(info.state, "ready");
    assert_eq!(info.attempts, 0);
}

/// A HubSpot account of 4,000 contacts on a sandbox whose search pages each take `latency_ms`,
/// connected for tenant `acme`, and a sync of its contacts pushed: 20 pages of 200. Returns
/// the sandbox (keep it alive), its control URL, the account's hub id and the job's id.
async fn slow_hubspot_sync(
    env: &Env,
    latency_ms: u64,
) -> (crm_sandbox::SandboxHandle, String, u64, crm_queue::JobId) {
    use crm_jobs::auth::{AuthKind, Keyring, Store};
    use crm_jobs::providers::{ObjectKind, Provider};
    use serde_json::json;

    let sandbox = crm_sandbox::Sandbox::start(
        crm_sandbox::SandboxConfig::default()
            .with_providers([crm_sandbox::config::ProviderKind::HubSpot])
            .with_records(1)
            .with_frozen_clock(),
    )
    .await
    .expect("sandbox");
    let control = sandbox.urls().control.clone();
    let http = http_client();
    let account: serde_json::Value = http
        .post(format!("{control}/_sandbox/hubspot/accounts"))
        .json(&json!({ "objects": { "contacts": 4000, "companies": 0, "deals": 0, "tasks": 0, "calls": 0, "notes": 0 },
                       "quota": { "search_per_second": 1000000, "burst": 1000000 } }))
        .send()
        .await
        .expect("account")
        .json()
        .await
        .expect("json");
    let hub = account["hub_id"].as_u64().expect("hub");
    // Slow pages, so that what the test does lands mid-run.
    http.post(format!("{control}/_sandbox/hubspot/faults"))
        .json(&json!({ "path": "*/search", "action": { "type": "latency", "ms": latency_ms } }))
        .send()
        .await
        .expect("fault");
    let store = Store::new(
        env.db.pool.clone(),
        std::sync::Arc::new(Keyring::from_base64(&env.key, &[]).expect("key")),
    );
    store.ensure_tenant("acme", "Acme").await.expect("tenant");
    let token = account["credentials"]["private_app_token"].as_str().expect("pat").to_owned();
    let conn = store
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &secrecy::SecretString::from(token),
            &sandbox.urls().hubspot().expect("urls").api_base,
            &hub.to_string(),
        )
        .await
        .expect("connection");
    let target = crm_jobs::enqueue::target(&env.db.pool, conn.id).await.expect("db").expect("target");
    let job = crm_jobs::enqueue::sync_job(
        &target,
        ObjectKind::Contact,
        crm_jobs::job::SyncMode::Incremental,
        "test",
    )
    .expect("job");
    let id = env.queue.push(job).await.expect("push").id();
    (sandbox, control, hub, id)
}

/// Pages the (one) sync run has committed.
async fn committed_pages(env: &Env) -> i32 {
    sqlx::query_scalar::<_, i32>("SELECT coalesce(max(pages), 0) FROM sync_runs")
        .fetch_one(&env.db.pool)
        .await
        .expect("pages")
}

/// Whether the (one) sync run succeeded.
async fn sync_succeeded(env: &Env) -> bool {
    sqlx::query_scalar::<_, String>("SELECT status FROM sync_runs LIMIT 1")
        .fetch_one(&env.db.pool)
        .await
        .is_ok_and(|s| s == "succeeded")
}

/// Successful search requests the sandbox served for account `hub`.
async fn searches(control: &str, hub: u64) -> i64 {
    let log: serde_json::Value = http_client()
        .get(format!("{control}/_sandbox/requests?account={hub}&limit=100000"))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    log["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/search")) && r["status"] == 200)
        .count() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_sync_resumes_from_the_last_committed_page() {
    let env = Env::new().await;
    let (_sandbox, control, hub, _) = slow_hubspot_sync(&env, 250).await;

    let pages = || committed_pages(&env);
    let mut first = env.spawn(&[("CRM_FLEET_LEASE_TTL", "2s")]);
    eventually(Duration::from_secs(30), "three pages committed", || async { pages().await >= 3 }).await;
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    let at_kill = pages().await;
    assert!(at_kill < 21, "killed mid-run, not after it");
    // The sandbox serves to its end a search the killed worker had in flight (as a real CRM
    // does): let those land before counting what the first worker fetched.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let searched_by_first = searches(&control, hub).await;

    let _second = env.spawn(&[("CRM_FLEET_LEASE_TTL", "2s")]);
    eventually(Duration::from_secs(60), "the run finished", || sync_succeeded(&env)).await;
    let (runs, total_pages, created): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), sum(pages)::bigint, sum(created)::bigint FROM sync_runs")
            .fetch_one(&env.db.pool)
            .await
            .expect("runs");
    assert_eq!(runs, 1, "the retried job resumed the same run");
    assert_eq!(created, 4000, "no record lost, none counted twice");
    let local: i64 =
        sqlx::query_scalar("SELECT count(*) FROM crm_contacts").fetch_one(&env.db.pool).await.expect("count");
    assert_eq!(local, 4000);
    // 20 pages of 200 and the last one. The second worker fetches exactly the pages after the
    // last committed one: none committed before the kill is fetched again (pages
    // fetched but not yet committed at the kill are).
    assert_eq!(total_pages, 21);
    let by_second = searches(&control, hub).await - searched_by_first;
    // (The 21st page, the window's end, takes no search.)
    let left = 20 - i64::from(at_kill);
    assert_eq!(
        by_second, left,
        "{by_second} searches for {left} pages of records: a committed page was fetched again"
    );
}

/// A worker that stalled past its lease (here: the lease taken from under it) learns it from
/// its next heartbeat, and its sync stops before the next page instead of fetching and
/// writing the rest beside the run that takes the job over once the lease expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_whose_lease_is_lost_stops_before_its_next_page() {
    let env = Env::new().await;
    let (_sandbox, control, hub, id) = slow_hubspot_sync(&env, 300).await;
    let pages = || committed_pages(&env);
    let _worker = env.spawn(&[("CRM_FLEET_LEASE_TTL", "2s")]);
    eventually(Duration::from_secs(30), "two pages committed", || async { pages().await >= 2 }).await;
    // What a reclaim and another worker's fetch leave: the job's lease is someone else's.
    let mut conn = env.queue.connection();
    let _: () = redis::cmd("HSET")
        .arg(env.queue.keys().job(&id.to_string()))
        .arg("k")
        .arg("another-worker")
        .query_async(&mut conn)
        .await
        .expect("take the lease");
    let at_theft = pages().await;
    assert!(at_theft < 18, "the lease was taken mid-run ({at_theft} pages in)");

    // The lease is no longer renewed, so it expires and the job is reaped and run again; the
    // new run resumes from the committed cursor and finishes.
    eventually(Duration::from_secs(60), "the run finished", || sync_succeeded(&env)).await;
    let (runs, created): (i64, i64) = sqlx::query_as("SELECT count(*), sum(created)::bigint FROM sync_runs")
        .fetch_one(&env.db.pool)
        .await
        .expect("runs");
    assert_eq!((runs, created), (1, 4000), "one run, every record once");
    // Had the stale run gone on, it and the new run would both have fetched the pages after
    // the reclaim.
    let searches = searches(&control, hub).await;
    assert!(
        searches <= 20 + 1,
        "{searches} searches for 20 pages: the stale run went on after losing its lease"
    );
}
