//! Test support shared by the crates' integration tests (feature `testing`): a fresh
//! PostgreSQL database per test (created, migrated, dropped on drop), a unique Redis key
//! prefix, free ports, and bounded polling. Never used by the binaries.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgPool};

/// The shared Redis the tests isolate themselves on (by key prefix).
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The server-level database URL tests create their databases from
/// (`CRM_FLEET_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
pub fn admin_database_url() -> String {
    std::env::var("CRM_FLEET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A unique short id for names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A database of its own for one test; dropped (with its connections) on drop.
pub struct TestDb {
    /// Connection URL of the test database.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Self {
        let name = unique("crm_test_");
        let admin = admin_database_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("postgres reachable for tests");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{name}", &admin[..i]),
            None => format!("{admin}/{name}"),
        };
        let pool = crate::storage::connect(&url, 5, Duration::from_secs(10)).await.expect("connect test db");
        crate::storage::migrate(&pool).await.expect("migrate test db");
        Self { url, pool, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The test's runtime may be blocked by this very drop: clean up on a fresh one.
        let name = self.name.clone();
        let admin = admin_database_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Deletes every key under a test prefix (on a fresh runtime, for use in `Drop`).
pub fn purge_redis_prefix(prefix: &str) {
    let pattern = format!("{prefix}:*");
    let _ = std::thread::spawn(move || {
        let Ok(client) = redis::Client::open(REDIS_URL) else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    })
    .join();
}

/// Polls `cond` every 25 ms until it holds; panics with `what` after `patience`.
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

/// An HTTP client for tests (installs the ring TLS provider first, as the binaries do).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("http client")
}

/// A binary of this workspace, next to the test executables' directory (`target/<profile>/`),
/// built with `cargo build -p <package> --bin <name>` if missing. After building one package's
/// tests alone it may be stale: build the workspace first.
pub fn workspace_bin(package: &str, name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", package, "--bin", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}
