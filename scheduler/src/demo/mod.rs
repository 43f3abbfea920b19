//! `crmctl demo`: the whole fleet on one machine, in one command.
//!
//! 1. Redis and PostgreSQL: the given ones when reachable, else private ones ([`services`]).
//! 2. A fresh demo database (migrated) and Redis prefix ([`setup`]).
//! 3. `crm-sandbox` with three seeded accounts per CRM; the demo tenants connected to them on
//!    all five providers; a schedule per connection every few seconds; change generators; a
//!    few faults (HubSpot 503s, Pipedrive throttles) and, later, one revoked connection, so
//!    retries, throttling and dead letters show.
//! 4. `crm-scheduler` (API + scheduling) and two `crm-worker`s as child processes, from the
//!    binaries next to `crmctl`.
//! 5. Actions posted to the API at `--rate`; live progress ([`progress`]).
//! 6. Ctrl-C (or SIGTERM, or `--duration`): traffic stops, then the workers (they drain), the
//!    scheduler, the sandbox and any private server get SIGTERM in that order, each with a
//!    grace period before SIGKILL ([`procs`]); the temporary directory is removed.
//!
//! Invariant: every process the demo starts is stopped before it returns, on every path
//! (a failed start included): each is a [`procs::Proc`] that is stopped or, if dropped, killed.

mod procs;
pub mod progress;
mod services;
mod setup;
mod traffic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use procs::{Proc, Spawn};
use services::{Services, free_port};

/// `crmctl demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Redis to use; a private one is started when it does not answer.
    #[arg(long = "demo-redis-url", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PostgreSQL server to create the demo database on; a private one is started when it
    /// does not answer.
    #[arg(long = "postgres-url", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// The demo database (dropped and recreated at start, kept at exit for inspection).
    #[arg(long, default_value = "crm_fleet_demo")]
    pub database: String,
    /// The demo's Redis key prefix (cleared at start).
    #[arg(long, default_value = "crm-fleet-demo")]
    pub prefix: String,
    /// The API address (a free port is used when it is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_addr: String,
    /// Actions posted per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Seconds between scheduled syncs of each connection.
    #[arg(long, default_value_t = 5)]
    pub sync_every: u32,
    /// Records per object type in each sandbox account.
    #[arg(long, default_value_t = 200)]
    pub records: usize,
    /// Stop by itself after this long (e.g. 60s); default: run until Ctrl-C.
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Where the binaries are (default: next to crmctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The demo's temporary directory: logs and private servers' data; removed on exit unless
/// the demo failed (the logs then tell why).
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("crm-fleet-demo-{}", std::process::id()));
        std::fs::create_dir_all(path.join("logs")).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "{name} is not in {} (crmctl demo runs the binaries next to it): build them all with `cargo build --release` and run target/release/crmctl demo",
        dir.display()
    )
}

/// Runs the demo until Ctrl-C / SIGTERM / `--duration`; returns the exit code.
pub async fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(Path::to_path_buf).context("crmctl's directory")?,
    };
    let bins = Bins {
        sandbox: binary(&bin_dir, "crm-sandbox")?,
        scheduler: binary(&bin_dir, "crm-scheduler")?,
        worker: binary(&bin_dir, "crm-worker")?,
    };
    let mut tmp = TempDir::new()?;
    let logs = tmp.path.join("logs");
    println!("crm-fleet demo: starting (logs in {})", logs.display());
    let mut services = Services::resolve(&args.redis_url, &args.postgres_url, &tmp.path, &logs).await?;
    let mut procs: Vec<Proc> = Vec::new();
    let outcome = run_fleet(args, &bins, &services, &logs, &mut procs).await;
    // Stop in order: workers drain first, then the scheduler, then the sandbox, then the
    // private servers.
    println!("\nstopping: {}", procs.iter().rev().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "));
    for p in procs.iter_mut().rev() {
        let status = p.stop(Duration::from_secs(20)).await;
        println!("  {:<11} pid {:<7} {}", p.name, p.pid, status.map_or("gone".to_owned(), |s| s.to_string()));
    }
    services.stop().await;
    if let Err(e) = &outcome {
        eprintln!("crm-fleet demo failed: {e:#}");
        eprintln!("the processes' logs are kept in {}", logs.display());
        tmp.keep = true;
    }
    drop(tmp);
    println!("all demo processes stopped.");
    outcome.map(|()| 0)
}

struct Bins {
    sandbox: PathBuf,
    scheduler: PathBuf,
    worker: PathBuf,
}

async fn run_fleet(
    args: &DemoArgs,
    bins: &Bins,
    services: &Services,
    logs: &Path,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let database_url = setup::fresh_database(&services.admin_url, &args.database).await?;
    setup::clear_queue(&services.redis_url, &args.prefix).await?;
    let pool = crm_jobs::storage::connect(&database_url, 4, Duration::from_secs(10)).await?;
    crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
    println!("  database    {} (migrated)   Redis prefix {}", services::redact(&database_url), args.prefix);

    // The sandbox, and what it prints: its URLs as one JSON line.
    let (sandbox, stdout) = Proc::spawn(
        Spawn {
            name: "sandbox",
            program: &bins.sandbox,
            args: [
                "--addr",
                "127.0.0.1:0",
                "--accounts",
                "3",
                "--seed",
                "7",
                "--records",
                &args.records.to_string(),
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![],
            capture_stdout: true,
        },
        logs,
    )?;
    procs.push(sandbox);
    let mut lines = tokio::io::BufReader::new(stdout.context("the sandbox's stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the sandbox did not print its URLs in 30 s")??
        .context("the sandbox exited before printing its URLs")?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let sandbox =
        setup::Sandbox::new(serde_json::from_str(&first).context("the sandbox's URL line")?, http.clone())?;
    println!(
        "  sandbox     {} (HubSpot, Salesforce, Pipedrive, Zoho CRM, Close; 3 accounts each)",
        sandbox.control
    );

    let token_key = crm_jobs::auth::Keyring::generate_base64();
    let keys = std::sync::Arc::new(crm_jobs::auth::Keyring::from_base64(&token_key, &[])?);
    let store = crm_jobs::auth::Store::new(pool.clone(), keys);
    let conns = sandbox.connect_tenants(&store).await?;
    setup::schedule_syncs(&pool, &conns, args.sync_every).await?;
    sandbox.generate_changes(&conns, 1.0).await?;
    sandbox.install_faults().await?;
    println!(
        "  tenants     {} — each connected to all five CRMs ({} connections, synced every {} s)",
        setup::TENANTS.join(", "),
        conns.len(),
        args.sync_every
    );

    let api_addr = match std::net::TcpListener::bind(&args.api_addr) {
        Ok(l) => l.local_addr()?.to_string(),
        Err(_) => format!("127.0.0.1:{}", free_port()?),
    };
    let common = |extra: &[(&str, String)]| {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.clone()),
            ("REDIS_URL".into(), services.redis_url.clone()),
            ("CRM_FLEET_REDIS_PREFIX".into(), args.prefix.clone()),
            ("CRM_FLEET_TOKEN_KEY".into(), token_key.clone()),
            ("CRM_FLEET_NO_MIGRATE".into(), "true".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let (scheduler, _) = Proc::spawn(
        Spawn {
            name: "scheduler",
            program: &bins.scheduler,
            args: vec![],
            env: common(&[("CRM_FLEET_API_ADDR", api_addr.clone())]),
            capture_stdout: false,
        },
        logs,
    )?;
    procs.push(scheduler);
    let api = format!("http://{api_addr}");
    let mut worker_urls = Vec::new();
    for i in 1..=2 {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let (w, _) = Proc::spawn(
            Spawn {
                name: &format!("worker-{i}"),
                program: &bins.worker,
                args: vec![],
                env: common(&[
                    ("CRM_FLEET_METRICS_ADDR", metrics.clone()),
                    ("CRM_FLEET_CONCURRENCY", "16".into()),
                    ("CRM_FLEET_SHUTDOWN_GRACE", "5s".into()),
                ]),
                capture_stdout: false,
            },
            logs,
        )?;
        procs.push(w);
        worker_urls.push(format!("http://{metrics}"));
    }
    wait_ready(&http, &api, procs).await?;
    for u in &worker_urls {
        wait_ready(&http, u, procs).await?;
    }
    let (enqueue_key, _) =
        crate::api::keys::create(&pool, "demo-traffic", &[crate::api::keys::Scope::Enqueue]).await?;
    let (admin_key, _) =
        crate::api::keys::create(&pool, "demo-operator", &[crate::api::keys::Scope::Admin]).await?;

    println!(
        "  processes   {}",
        procs.iter().map(|p| format!("{} (pid {})", p.name, p.pid)).collect::<Vec<_>>().join(", ")
    );
    println!("\nThe fleet is running.");
    println!("  API         {api}   (OpenAPI: {api}/openapi.json)");
    println!("              admin key for this demo: {admin_key}");
    println!("              curl -H 'Authorization: Bearer {admin_key}' {api}/v1/dead-letters");
    println!(
        "  metrics     {api}/metrics (scheduler), {}",
        worker_urls.iter().map(|u| format!("{u}/metrics")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  operate     DATABASE_URL={} REDIS_URL={} CRM_FLEET_REDIS_PREFIX={} crmctl queues | dlq list | limits show",
        services::redact(&database_url),
        services.redis_url,
        args.prefix
    );
    println!(
        "  happening   actions at {}/s; HubSpot answers some writes with 503 (retried), Pipedrive throttles some \
         requests (the account pauses fleet-wide), a few actions target deals deleted in the CRM (they dead-letter: \
         crmctl dlq list); in 30 s initech revokes its Close API key (the connection turns needs_reauth and its \
         jobs wait, spending no attempts, until it is re-authorised).",
        args.rate
    );
    println!("Ctrl-C stops everything.\n");

    let stop = CancellationToken::new();
    let revoke = conns
        .iter()
        .position(|c| c.tenant == "initech" && c.provider == crm_jobs::providers::Provider::Close);
    let revoked_conn = revoke.map(|i| &conns[i]);
    let traffic = traffic::Traffic { api: api.clone(), key: enqueue_key, rate: args.rate };
    let traffic = tokio::spawn(traffic.run(http.clone(), pool.clone(), conns.clone(), stop.clone()));

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + *d);
    let mut display = progress::Display::new();
    let mut revoked = false;
    let signal = crm_jobs::telemetry::shutdown_signal();
    tokio::pin!(signal);
    let result = loop {
        let snap = progress::snapshot(&pool, &http, &worker_urls, &api).await;
        display.show(&snap);
        if !revoked && started.elapsed() > Duration::from_secs(30) {
            revoked = true;
            if let Some(c) = revoked_conn {
                sandbox.revoke(c).await?;
            }
        }
        if let Some(exit) = first_exit(procs) {
            break Err(anyhow::anyhow!("{exit} unexpectedly"));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        tokio::select! {
            _ = &mut signal => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    stop.cancel();
    let accepted = traffic.await.unwrap_or(0);
    let last = progress::snapshot(&pool, &http, &worker_urls, &api).await;
    display.show(&last);
    display.finish();
    let synced: i64 = last.providers.values().map(|p| p.records).sum();
    let done: i64 = last.providers.values().map(|p| p.actions_done).sum();
    println!(
        "\nin {:.0} s: {} sync runs ({synced} records), {accepted} actions accepted, {done} done, {} dead letters.",
        started.elapsed().as_secs_f64(),
        last.providers.values().map(|p| p.syncs).sum::<i64>(),
        last.dead_letters
    );
    pool.close().await;
    result
}

/// The first child that has exited, as `<name> exited (<status>; its log: <path>)`.
fn first_exit(procs: &mut [Proc]) -> Option<String> {
    procs.iter_mut().find_map(|p| {
        p.exited().map(|status| format!("{} exited ({status}; its log: {})", p.name, p.log.display()))
    })
}

/// Waits for `{base}/readyz`, failing early if a process exits.
async fn wait_ready(http: &reqwest::Client, base: &str, procs: &mut [Proc]) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(exit) = first_exit(procs) {
            bail!("{exit} while starting");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{base}/readyz did not answer in 30 s")
}
