//! Test support: a fresh database and Redis prefix per test, tenants and connections, the
//! scheduler in-process or as real `crm-scheduler` processes, and a queue consumer that
//! records every sync job it drains.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_jobs::job::CrmJob;
use crm_jobs::providers::ObjectKind;
use crm_jobs::testing::{REDIS_URL, TestDb, purge_redis_prefix, unique};
use crm_queue::{Queue, QueueConfig};
use crm_scheduler::server::{Scheduler, SchedulerConfig};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use uuid::Uuid;

pub struct Env {
    pub db: TestDb,
    /// Token encryption key (base64) the schedulers run with.
    pub token_key: String,
    pub prefix: String,
    pub queue: Queue,
    /// Sums of the numeric fields of every `tick` log line of the spawned processes, and
    /// `leaderships`: how many times one became the leader.
    pub logged: Arc<Mutex<HashMap<String, u64>>>,
}

impl Env {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let prefix = unique("crmtest-");
        let queue =
            Queue::connect(QueueConfig::new(REDIS_URL, crm_jobs::job::DEFAULT_QUEUE).with_prefix(&prefix))
                .await
                .expect("redis");
        let token_key = crm_jobs::auth::Keyring::generate_base64();
        Self { db, token_key, prefix, queue, logged: Arc::default() }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// A tenant with one HubSpot connection; returns the connection id.
    pub async fn connection(&self) -> Uuid {
        let tenant = unique("t");
        sqlx::query("INSERT INTO tenants (id) VALUES ($1)")
            .bind(&tenant)
            .execute(self.pool())
            .await
            .expect("tenant");
        sqlx::query_scalar(
            "INSERT INTO connections (tenant_id, provider, auth_kind, account_id, api_base, key_id) \
             VALUES ($1, 'hubspot', 'static_token', $2, 'http://127.0.0.1:9', 'k1') RETURNING id",
        )
        .bind(&tenant)
        .bind(unique("acct"))
        .fetch_one(self.pool())
        .await
        .expect("connection")
    }

    /// A schedule straight in SQL; returns its id.
    pub async fn schedule(
        &self,
        connection: Uuid,
        cron: &str,
        objects: &[&str],
        missed: &str,
        backfill: i32,
    ) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO schedules (connection_id, objects, cron, missed_policy, backfill_limit) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(connection)
        .bind(objects.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .bind(cron)
        .bind(missed)
        .bind(backfill)
        .fetch_one(self.pool())
        .await
        .expect("schedule")
    }

    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig::local(
            &self.db.url,
            REDIS_URL,
            &self.prefix,
            Arc::new(crm_jobs::auth::Keyring::from_base64(&self.token_key, &[]).expect("token key")),
        )
    }

    /// An HTTP client that sends a fresh API key with the `admin` scope.
    pub async fn admin_client(&self) -> reqwest::Client {
        use crm_scheduler::api::keys::{Scope, create};
        let (key, _) = create(self.pool(), "scheduler-tests", &[Scope::Admin]).await.expect("api key");
        let mut headers = reqwest::header::HeaderMap::new();
        headers
            .insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header value"));
        reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// A scheduler in this process, serving on a free port.
    pub async fn start_scheduler(&self) -> InProcess {
        let scheduler = Scheduler::build(self.scheduler_config()).await.expect("build scheduler");
        let base = format!("http://{}", scheduler.api_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            scheduler
                .run_until(async move {
                    let _ = rx.await;
                })
                .await
        });
        InProcess { base, stop: Some(tx), task: Some(task) }
    }

    /// A real `crm-scheduler` process on this test's database and prefix.
    pub fn spawn_scheduler(&self, extra: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm-scheduler"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", REDIS_URL)
            .env("CRM_FLEET_REDIS_PREFIX", &self.prefix)
            .env("CRM_FLEET_API_ADDR", "127.0.0.1:0")
            .env("CRM_FLEET_TOKEN_KEY", &self.token_key)
            .env("CRM_FLEET_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,sqlx=warn,crm_scheduler::schedule::engine=debug");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child =
            cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn crm-scheduler");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines.next().expect("scheduler log line").expect("read");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "crm-scheduler listening"
            {
                break v["api"].as_str().expect("api url").to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe; sum what it logs.
        let logged = self.logged.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let mut sums = logged.lock();
                match v["message"].as_str() {
                    Some("tick") => {
                        for k in ["jobs", "enqueued", "duplicate", "skipped", "catch_up"] {
                            *sums.entry(k.to_owned()).or_default() += v[k].as_u64().unwrap_or(0);
                        }
                    }
                    Some("became the scheduler leader") => {
                        *sums.entry("leaderships".to_owned()).or_default() += 1
                    }
                    _ => {}
                }
            }
        });
        Proc { child, base }
    }

    /// `crmctl` with this test's database and prefix.
    pub fn crmctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_crmctl"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", REDIS_URL)
            .env("CRM_FLEET_REDIS_PREFIX", &self.prefix)
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("run crmctl")
    }

    /// Drains the queue once: leases every ready job, records it, acks it.
    pub async fn drain(&self, seen: &Seen) -> usize {
        let jobs = self.queue.fetch("test-consumer", 1000).await.expect("fetch");
        let n = jobs.len();
        if n == 0 {
            return 0;
        }
        let mut leases = Vec::with_capacity(n);
        {
            let mut s = seen.0.lock();
            for j in jobs {
                if let Ok(CrmJob::Sync(sync)) = serde_json::from_slice::<CrmJob>(&j.payload) {
                    s.push(Record {
                        connection: sync.connection_id,
                        object: sync.object,
                        tick: sync.tick,
                        mode: sync.mode,
                    });
                }
                leases.push(j.lease);
            }
        }
        self.queue.ack(&leases).await.expect("ack");
        n
    }

    /// A background consumer that drains every 20 ms until dropped.
    pub fn consumer(self: &Arc<Self>) -> (Seen, tokio::task::JoinHandle<()>) {
        let seen = Seen::default();
        let (env, s) = (self.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                if env.drain(&s).await == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        (seen, task)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

/// A drained sync job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub connection: Uuid,
    pub object: ObjectKind,
    pub tick: Option<DateTime<Utc>>,
    pub mode: crm_jobs::job::SyncMode,
}

/// Every sync job drained so far.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<Record>>>);

impl Seen {
    pub fn all(&self) -> Vec<Record> {
        self.0.lock().clone()
    }

    /// Scheduled jobs: (connection, object, tick) → times seen.
    pub fn ticks(&self) -> HashMap<(Uuid, ObjectKind, DateTime<Utc>), usize> {
        let mut out = HashMap::new();
        for r in self.0.lock().iter() {
            if let Some(t) = r.tick {
                *out.entry((r.connection, r.object, t)).or_default() += 1;
            }
        }
        out
    }
}

pub struct InProcess {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Shuts down gracefully.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("scheduler ran cleanly");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether `/metrics` says this process leads.
    pub async fn is_leader(&self, client: &reqwest::Client) -> bool {
        let Ok(r) = client.get(format!("{}/metrics", self.base)).timeout(Duration::from_secs(2)).send().await
        else {
            return false;
        };
        let body = r.text().await.unwrap_or_default();
        body.lines().any(|l| l.starts_with("crm_fleet_scheduler_is_leader") && l.trim_end().ends_with(" 1"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command's JSON output, after checking it succeeded.
pub fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}
