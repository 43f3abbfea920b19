//! Test support: an isolated queue (random key prefix on the shared Redis) and an isolated
//! PostgreSQL database (created per test, migrated, dropped on drop), plus spawning the real
//! test worker process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crm_queue::{Queue, QueueConfig};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn admin_database_url() -> String {
    std::env::var("CRM_FLEET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}/{db}", &url[..i]),
        None => format!("{url}/{db}"),
    }
}

/// Polls `cond` until it holds or `patience` runs out.
pub async fn eventually<F, Fut>(patience: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(start.elapsed() < patience, "not within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub struct TestEnv {
    pub queue: Queue,
    pub pool: PgPool,
    pub database_url: String,
    pub prefix: String,
    db_name: String,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(|c| c).await
    }

    pub async fn with(tweak: impl FnOnce(QueueConfig) -> QueueConfig) -> Self {
        Self::on(REDIS_URL, tweak).await
    }

    /// An environment on a given Redis (a private server for tests that disturb Redis itself).
    pub async fn on(redis_url: &str, tweak: impl FnOnce(QueueConfig) -> QueueConfig) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("crmtest-{}", &id[..12]);
        let config = tweak(QueueConfig::new(redis_url, "q").with_prefix(prefix.clone()));
        let queue = Queue::connect(config).await.expect("redis reachable");
        let db_name = format!("crm_test_{}", &id[..16]);
        let admin = admin_database_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("postgres reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut conn)
            .await
            .expect("create db");
        conn.close().await.ok();
        let database_url = with_database(&admin, &db_name);
        let pool =
            PgPoolOptions::new().max_connections(5).connect(&database_url).await.expect("connect test db");
        sqlx::migrate!("../migrations").run(&pool).await.expect("migrate");
        Self { queue, pool, database_url, prefix, db_name }
    }

    pub fn record_key(&self) -> String {
        self.queue.keys().key("runs")
    }

    /// Execution log entries ("start <id> <attempt> <worker> <ms>", "done …").
    pub async fn runs(&self) -> Vec<String> {
        let mut conn = self.queue.connection();
        redis::cmd("LRANGE")
            .arg(self.record_key())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("lrange")
    }

    pub fn worker(&self, extra: &[(&str, &str)]) -> WorkerProc {
        self.spawn_worker(extra, Stdio::inherit(), None)
    }

    /// A worker that logs (at `warn`) to `stderr`, e.g. `Stdio::piped()` to read it.
    pub fn worker_logging_to(&self, extra: &[(&str, &str)], stderr: Stdio) -> WorkerProc {
        self.spawn_worker(extra, stderr, Some("warn"))
    }

    fn spawn_worker(&self, extra: &[(&str, &str)], stderr: Stdio, log: Option<&str>) -> WorkerProc {
        let c = self.queue.config();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm-queue-testworker"));
        cmd.args([
            "--redis",
            &c.redis_url,
            "--database-url",
            &self.database_url,
            "--prefix",
            &self.prefix,
            "--queue",
            &c.name,
        ]);
        for (k, v) in extra {
            cmd.arg(format!("--{k}")).arg(v);
        }
        if let Some(level) = log {
            cmd.env("RUST_LOG", level);
        }
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let child = cmd.spawn().expect("spawn test worker");
        WorkerProc { child }
    }

    pub async fn dead_letter_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&self.pool).await.expect("count")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The test's runtime may be blocked by this very drop, so clean up on a fresh runtime
        // with fresh connections (the existing ones are driven by the test's runtime).
        let config = self.queue.config().clone();
        let db = self.db_name.clone();
        let admin = admin_database_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(queue) = Queue::connect(config).await {
                    let _ = queue.destroy().await;
                }
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct WorkerProc {
    pub child: Child,
}

impl WorkerProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status =
            Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit up to `patience`; returns the wait time or None.
    pub async fn wait_exit(&mut self, patience: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < patience {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server of a test's own, on a free port, stopped on drop: for tests that pause or
/// restart Redis, which must not disturb the tests sharing the machine's Redis.
pub struct PrivateRedis {
    child: Child,
    pub port: u16,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        Self::start_on(port).await
    }

    /// Stops the server (its data is gone: no persistence) until [`PrivateRedis::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        *self = Self::start_on(self.port).await;
    }

    async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}");
        eventually(Duration::from_secs(10), "private redis up", || {
            let url = url.clone();
            async move {
                let Ok(c) = redis::Client::open(url.as_str()) else { return false };
                c.get_multiplexed_async_connection().await.is_ok()
            }
        })
        .await;
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to the test Redis that can lose a reply, as a dropped connection does: told
/// to ([`LossyProxy::lose_next_reply`]), it closes the client's connection instead of passing on
/// the next bytes Redis sends, so Redis has run the request and the client never hears of it.
pub struct LossyProxy {
    pub url: String,
    lose: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let lose = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lose.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else { return };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if flag.swap(false, Ordering::SeqCst) || to_client.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                    // Both halves of the client's socket go: it sees the connection closed.
                    up.abort();
                });
            }
        });
        Self { url: format!("redis://{addr}"), lose, task }
    }

    pub fn lose_next_reply(&self) {
        self.lose.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
