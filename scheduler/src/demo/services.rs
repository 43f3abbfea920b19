//! Redis and PostgreSQL for the demo: the given servers when they answer, otherwise private
//! ones started from the installed `redis-server` / PostgreSQL binaries in the demo's
//! temporary directory, on free loopback ports, and stopped on exit.
//!
//! PostgreSQL refuses to run as root; as root the private server runs as the `postgres` user
//! (`runuser`), which Debian's package creates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{Proc, Spawn};

/// The servers the demo uses, and the private ones it runs.
pub struct Services {
    /// Redis URL.
    pub redis_url: String,
    /// PostgreSQL URL of a database the demo may create databases from.
    pub admin_url: String,
    /// Private servers, stopped last.
    pub private: Vec<Proc>,
}

/// Whether Redis answers PING at `url`.
async fn redis_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
}

/// Whether PostgreSQL accepts a connection at `url`.
async fn pg_ok(url: &str) -> bool {
    crm_jobs::storage::connect(url, 1, Duration::from_secs(2)).await.is_ok()
}

/// A free loopback port (bound and released; the race with another process is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// `initdb` and `postgres`: on `PATH`, or Debian's newest `/usr/lib/postgresql/<v>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(p) = which("postgres") {
        return p.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

async fn wait_until<F, Fut>(what: &str, proc: &mut Proc, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if ready().await {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!("{what} exited ({status}) while starting; see {}", proc.log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what} did not become ready in 30 s; see {}", proc.log.display())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `program args` (as `postgres` when we are root), failing with its output.
fn run_as_postgres(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<()> {
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    let out = cmd.args(args).output().with_context(|| format!("running {}", program.display()))?;
    std::fs::write(log, [out.stdout.as_slice(), out.stderr.as_slice()].concat())?;
    if !out.status.success() {
        bail!("{} failed ({}); see {}", program.display(), out.status, log.display());
    }
    Ok(())
}

impl Services {
    /// Uses `redis_url` and `admin_url` when they answer; starts private servers in `dir`
    /// where they do not.
    pub async fn resolve(redis_url: &str, admin_url: &str, dir: &Path, logs: &Path) -> anyhow::Result<Self> {
        let mut s =
            Self { redis_url: redis_url.to_owned(), admin_url: admin_url.to_owned(), private: vec![] };
        if redis_ok(redis_url).await {
            println!("  Redis       {redis_url} (reachable)");
        } else {
            let program = which("redis-server").with_context(|| {
                format!("Redis is not reachable at {redis_url} and redis-server is not installed (apt-get install redis-server, or pass --redis-url)")
            })?;
            let port = free_port()?;
            let data = dir.join("redis");
            std::fs::create_dir_all(&data)?;
            let (mut proc, _) = Proc::spawn(
                Spawn {
                    name: "redis",
                    program: &program,
                    args: [
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        &data.to_string_lossy(),
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                    env: vec![],
                    capture_stdout: false,
                },
                logs,
            )?;
            s.redis_url = format!("redis://127.0.0.1:{port}");
            let url = s.redis_url.clone();
            wait_until("redis-server", &mut proc, || redis_ok(&url)).await?;
            println!("  Redis       {} (private, pid {}; {redis_url} did not answer)", s.redis_url, proc.pid);
            s.private.push(proc);
        }
        if pg_ok(admin_url).await {
            println!("  PostgreSQL  {} (reachable)", redact(admin_url));
        } else {
            let bin = postgres_bin().with_context(|| {
                format!("PostgreSQL is not reachable at {} and its server is not installed (apt-get install postgresql, or pass --postgres-url)", redact(admin_url))
            })?;
            let port = free_port()?;
            let data = dir.join("pgdata");
            if is_root() {
                // The private server runs as `postgres`: it must own its directory.
                let status =
                    std::process::Command::new("chown").args(["postgres:postgres"]).arg(dir).status()?;
                if !status.success() {
                    bail!("cannot hand {} to the postgres user (is there one?)", dir.display());
                }
            }
            let data_s = data.to_string_lossy().into_owned();
            run_as_postgres(
                &bin.join("initdb"),
                &["-D", &data_s, "-U", "postgres", "-A", "trust", "--no-sync"],
                &logs.join("initdb.log"),
            )?;
            let program = if is_root() { PathBuf::from("runuser") } else { bin.join("postgres") };
            let mut args: Vec<String> = vec![];
            if is_root() {
                args.extend(["-u", "postgres", "--"].map(str::to_owned));
                args.push(bin.join("postgres").to_string_lossy().into_owned());
            }
            let dir_s = dir.to_string_lossy().into_owned();
            args.extend(
                [
                    "-D",
                    &data_s,
                    "-p",
                    &port.to_string(),
                    "-k",
                    &dir_s,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                ]
                .map(str::to_owned),
            );
            let (mut proc, _) = Proc::spawn(
                Spawn { name: "postgres", program: &program, args, env: vec![], capture_stdout: false },
                logs,
            )?;
            s.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let url = s.admin_url.clone();
            wait_until("postgres", &mut proc, || pg_ok(&url)).await?;
            println!(
                "  PostgreSQL  {} (private, pid {}; {} did not answer)",
                s.admin_url,
                proc.pid,
                redact(admin_url)
            );
            s.private.push(proc);
        }
        Ok(s)
    }

    /// Stops the private servers.
    pub async fn stop(&mut self) {
        for p in self.private.iter_mut().rev() {
            p.stop(Duration::from_secs(10)).await;
        }
    }
}

/// A URL with its password (if any) replaced, for printing.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
