//! What every benchmark owns for the length of its run and removes at the end: a dedicated
//! `redis-server` on a free loopback port (never the shared Redis on 6379), and a scratch
//! PostgreSQL database (created, migrated, dropped).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A `redis-server` this benchmark started: loopback only, no persistence, a password of the
/// run's own. Stopped by its pid ([`RedisServer::stop`]) or killed when dropped.
pub struct RedisServer {
    child: Child,
    /// URL with the password.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
}

/// Whether nothing listens on `port` on 127.0.0.1 (and we may bind it).
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(100),
        )
        .is_err()
}

impl RedisServer {
    /// Starts a server on `port`, or on the first free port from 6391 (the peer benchmark uses
    /// 6390, the shared Redis 6379; both are refused). Its log goes to `run_dir`.
    pub async fn start(port: Option<u16>, run_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let port = match port {
            Some(p) => p,
            None => (6391..6500).find(|p| port_free(*p)).context("no free port in 6391..6500")?,
        };
        if port == 6379 || port == 6390 {
            bail!("refusing port {port} (6379 is the shared Redis, 6390 the peer benchmark's)");
        }
        if !port_free(port) {
            bail!("port {port} is in use");
        }
        let log = run_dir.join(format!("redis-{port}.log"));
        // A password of the run's own keeps the server dedicated: another program that finds a
        // Redis on this port cannot run commands on it and skew the per-job accounting.
        let password = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", &password])
            .arg("--dir")
            .arg(run_dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server (is it installed?)")?;
        let url = format!("redis://:{password}@127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..100 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                eprintln!(
                    "[bench] redis-server pid {} on 127.0.0.1:{port} (no RDB, no AOF, password of this run)",
                    child.id().unwrap_or(0)
                );
                return Ok(Self { child, url, port });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("redis-server did not answer on port {port}; see {}", log.display())
    }

    /// Stops the server (SIGTERM to its pid, SIGKILL after 10 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// A scratch database: created and migrated by [`ScratchDb::create`], dropped by
/// [`ScratchDb::drop_db`].
pub struct ScratchDb {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL of the scratch database.
    pub url: String,
}

/// `url` with its database replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").context("database URL without scheme")? + 3;
    let host_part = &base[scheme_end..];
    let root = match host_part.find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(format!("{root}/{name}{query}"))
}

impl ScratchDb {
    /// Creates `<prefix>_<pid>` on the server of `admin_url` and applies the migrations.
    pub async fn create(admin_url: &str, prefix: &str) -> anyhow::Result<Self> {
        if !prefix.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            bail!("scratch database prefix {prefix:?}: lowercase letters and '_' only");
        }
        // Only the checked prefix and digits are interpolated into the SQL below.
        let name = format!("{prefix}_{}", std::process::id());
        let url = with_database(admin_url, &name)?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .with_context(|| format!("connect {admin_url}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&admin)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        admin.close().await;
        let db = Self { admin_url: admin_url.to_owned(), name, url };
        let migrated = async {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.url).await?;
            crm_jobs::storage::migrate(&pool).await.context("migrate the scratch database")?;
            pool.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = migrated {
            db.drop_db().await;
            return Err(e);
        }
        eprintln!("[bench] scratch database {}", db.name);
        Ok(db)
    }

    /// Drops the database (and its connections).
    pub async fn drop_db(self) {
        let res = async {
            let admin =
                sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&self.admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&admin)
                .await?;
            admin.close().await;
            anyhow::Ok(())
        }
        .await;
        match res {
            Ok(()) => eprintln!("[bench] dropped scratch database {}", self.name),
            Err(e) => eprintln!("[bench] could not drop scratch database {}: {e:#}", self.name),
        }
    }
}

/// Copies the running executable to `dir` for the child processes a benchmark spawns: a
/// concurrent `cargo build --release` of the workspace must not swap the code mid-run.
fn private_exe(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let own = std::env::current_exe().context("own executable")?;
    let exe = dir.join(format!("{name}-{}", std::process::id()));
    std::fs::copy(&own, &exe).context("copy own executable")?;
    Ok(exe)
}

/// Where a benchmark gets its Redis.
#[derive(Debug, Clone, Copy)]
pub enum RedisChoice<'a> {
    /// Start a `redis-server` (on this port, or the first free one from 6391).
    Start(Option<u16>),
    /// Use this dedicated server (never the shared one on 6379 or the peers' on 6390).
    Use(&'a str),
}

/// Everything a benchmark run owns: its Redis, its scratch database and, for benchmarks that
/// spawn worker processes, a private copy of the executable. [`Infra::stop`] removes them all.
pub struct Infra {
    server: Option<RedisServer>,
    /// URL of the benchmark's Redis.
    pub redis_url: String,
    /// The scratch database.
    pub db: ScratchDb,
    /// The private executable for child processes, if asked for.
    pub exe: Option<std::path::PathBuf>,
}

impl Infra {
    /// Starts (or checks) the Redis, creates the scratch database `<db_prefix>_<pid>` on the
    /// server of `admin_url`, and copies this executable as `exe_name` into `run_dir` when given.
    /// On failure, whatever was already set up is removed again.
    pub async fn start(
        redis: RedisChoice<'_>,
        run_dir: &Path,
        admin_url: &str,
        db_prefix: &str,
        exe_name: Option<&str>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let (server, redis_url) = match redis {
            RedisChoice::Use(url) => {
                if url.contains(":6379") || url.contains(":6390") {
                    bail!("refusing the shared Redis (6379) and the peers' (6390): use a dedicated server");
                }
                (None, url.to_owned())
            }
            RedisChoice::Start(port) => {
                let s = RedisServer::start(port, run_dir).await?;
                let url = s.url.clone();
                (Some(s), url)
            }
        };
        let db = match ScratchDb::create(admin_url, db_prefix).await {
            Ok(db) => db,
            Err(e) => {
                if let Some(s) = server {
                    s.stop().await;
                }
                return Err(e);
            }
        };
        let mut infra = Self { server, redis_url, db, exe: None };
        if let Some(name) = exe_name {
            match private_exe(run_dir, name) {
                Ok(exe) => infra.exe = Some(exe),
                Err(e) => {
                    infra.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(infra)
    }

    /// The private executable (an error if none was asked for).
    pub fn exe(&self) -> anyhow::Result<&Path> {
        self.exe.as_deref().context("no private executable")
    }

    /// Drops the database, stops the Redis this run started, removes the private executable.
    pub async fn stop(self) {
        self.db.drop_db().await;
        if let Some(s) = self.server {
            s.stop().await;
        }
        if let Some(exe) = self.exe {
            let _ = std::fs::remove_file(exe);
        }
    }
}

/// Runs `work` until it ends or the process gets Ctrl-C or SIGTERM, so that the caller can
/// still clean up (stop its Redis, drop its database) when interrupted. Dropping `work` kills
/// the worker processes it spawned (they are spawned with `kill_on_drop`).
pub async fn until_interrupted<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    }
}

/// Refuses a debug build unless allowed: figures of a debug build mean nothing.
pub fn require_release(allow_debug: bool) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        if !allow_debug {
            bail!("debug build: measure with `cargo run --release` (or pass --allow-debug for a smoke run)");
        }
        eprintln!("[bench] WARNING: debug build; these figures are not comparable");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x").ok().as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/x")
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x").ok().as_deref(),
            Some("postgres://u:p@h/x?sslmode=disable")
        );
        assert_eq!(with_database("postgres://h:1", "x").ok().as_deref(), Some("postgres://h:1/x"));
    }
}
