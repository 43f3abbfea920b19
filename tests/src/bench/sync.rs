//! The sync ingest benchmark behind `crm-bench-sync`: records/s of a full sync of one object
//! (contacts by default) from the in-process sandbox into PostgreSQL, through the real sync
//! engine (`crm_jobs::sync::run`: provider client over loopback HTTP, one transaction per page
//! with the cursor), and the two halves of that path on their own:
//!
//! * **end to end**: `crm_jobs::sync::run` of a full sync into empty tables;
//! * **fetch only**: the same pages through the provider client (HTTP, JSON decoding, the
//!   provider's windowing and cursors), nothing written;
//! * **ingest only**: the pages the fetch returned, written with `crm_jobs::sync::store::apply_page`
//!   in one transaction per page (the engine's upsert), no HTTP.
//!
//! Everything runs in this one process: the sandbox (all listeners on port 0), a scratch
//! PostgreSQL database, and a dedicated `redis-server` (the engine takes a rate token and feeds
//! the circuit breaker on every page; no limits are set, so neither ever waits). Repetitions
//! are interleaved (end to end, fetch, ingest; then again), and the tables are emptied before
//! every end-to-end and ingest run, so each writes the same rows into empty tables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crm_jobs::auth::{Keyring, Store, TokenManager};
use crm_jobs::job::{SyncJob, SyncMode};
use crm_jobs::ops::JobContext;
use crm_jobs::providers::{Clients, Http, ObjectKind, Provider, SyncCursor, SyncPage};
use crm_jobs::sync::engine::AttemptInfo;
use crm_jobs::sync::store::{Scope, apply_page, begin_page};
use crm_queue::{Queue, QueueConfig};
use crm_sandbox::config::ProviderKind;
use crm_sandbox::{Sandbox, SandboxConfig};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::infra::{Infra, RedisChoice, require_release, until_interrupted};
use super::report::{fmt, median};

/// Options of a run.
#[derive(Debug, Clone, clap::Parser, Serialize)]
#[command(name = "crm-bench-sync")]
pub struct SyncArgs {
    /// Provider whose imitation and client are measured.
    #[arg(long, default_value = "hubspot")]
    pub provider: Provider,
    /// Contacts seeded in the sandbox account.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Repetitions of each phase (interleaved).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Smoke run: 10,000 records, 1 repetition.
    #[arg(long)]
    pub quick: bool,
    /// Run even from a debug build (its figures are not comparable).
    #[arg(long)]
    pub allow_debug: bool,
    /// Server-level PostgreSQL URL the scratch database is created from (and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// PostgreSQL connections of the engine's pool.
    #[arg(long, default_value_t = 5)]
    pub pool: u32,
    /// A server setting for the engine's connections, `name=value` (repeatable), e.g.
    /// `plan_cache_mode=force_custom_plan` or `synchronous_commit=off`, to find what bounds
    /// the ingest. None by default: the path as shipped.
    #[arg(long = "pg-setting", value_name = "NAME=VALUE")]
    pub pg_settings: Vec<String>,
    /// Where to write the results JSON.
    #[arg(long, default_value = "/tmp/crm-bench-sync/results.json")]
    pub out: PathBuf,
    /// Directory for the Redis log.
    #[arg(long, default_value = "/tmp/crm-bench-sync/run")]
    pub run_dir: PathBuf,
}

/// One measured pass.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// `e2e`, `fetch` or `ingest`.
    pub phase: String,
    /// Repetition (1-based).
    pub rep: usize,
    /// Records handled.
    pub records: u64,
    /// Pages.
    pub pages: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Records per second.
    pub rate: f64,
    /// CPU seconds of this process (sandbox, client and engine together) over the pass.
    pub cpu_s: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SyncResults {
    /// Machine and software.
    pub env: std::collections::BTreeMap<String, String>,
    /// The options.
    pub config: SyncArgs,
    /// Seconds the sandbox took to create the account's records.
    pub seed_seconds: f64,
    /// Every pass.
    pub passes: Vec<Pass>,
    /// Median records/s per phase.
    pub medians: std::collections::BTreeMap<String, f64>,
}

/// The target for a sync of 100,000 contacts (issue 5).
pub const TARGET_RECORDS_PER_S: f64 = 50_000.0;

fn provider_kind(p: Provider) -> ProviderKind {
    match p {
        Provider::Hubspot => ProviderKind::HubSpot,
        Provider::Salesforce => ProviderKind::Salesforce,
        Provider::Pipedrive => ProviderKind::Pipedrive,
        Provider::Zoho => ProviderKind::Zoho,
        Provider::Close => ProviderKind::Close,
    }
}

/// The control-plane spec of an account with `n` contacts, a few of everything else, and no
/// quota that could throttle the benchmark (the figures of `worker/tests`' `unlimited`).
fn account_spec(p: Provider, n: usize) -> Value {
    match p {
        Provider::Hubspot => json!({ "records": 10, "objects": { "contacts": n },
            "quota": { "burst": 1_000_000, "search_per_second": 1_000_000, "daily": 100_000_000 } }),
        Provider::Salesforce => {
            json!({ "records": 10, "objects": { "Contact": n }, "quota": { "daily": 100_000_000 } })
        }
        Provider::Pipedrive => json!({ "records": 10, "objects": { "persons": n },
            "quota": { "burst": 1_000_000, "search_burst": 1_000_000, "daily_budget": 100_000_000 } }),
        Provider::Zoho => json!({ "dc": "us", "records": 10, "modules": { "Contacts": n },
            "quota": { "unlimited_credits": true, "concurrency": 1000, "sub_concurrency": 1000 } }),
        Provider::Close => {
            json!({ "records": 10, "objects": { "contact": n }, "quota": { "limit": 1_000_000 } })
        }
    }
}

/// `url` with `options[name]=value` for each setting (libpq's `options`, as sqlx parses it).
fn with_settings(url: &str, settings: &[String]) -> anyhow::Result<String> {
    let mut url = url.to_owned();
    for s in settings {
        let (k, v) = s.split_once('=').with_context(|| format!("--pg-setting {s:?}: expected name=value"))?;
        let ok = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok(k) || !ok(v) {
            bail!("--pg-setting {s:?}: letters, digits, '_', '.' and '-' only");
        }
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("options[{k}]={v}"));
    }
    Ok(url)
}

/// How a run departs from the path as shipped, in words (empty: as shipped).
fn variant(a: &SyncArgs) -> String {
    let mut v = Vec::new();
    if !a.pg_settings.is_empty() {
        v.push(format!("engine connections with {}", a.pg_settings.join(", ")));
    }
    if v.is_empty() { String::new() } else { format!(" ({})", v.join("; ")) }
}

fn cpu_s() -> f64 {
    super::procs::self_cpu_s()
}

struct Env {
    ctx: JobContext,
    connection: Uuid,
    tenant: String,
    provider: Provider,
}

impl Env {
    async fn empty_tables(&self) -> anyhow::Result<()> {
        sqlx::query("TRUNCATE crm_contacts, crm_companies, crm_deals, sync_conflicts, sync_runs, sync_state")
            .execute(&self.ctx.pool)
            .await
            .context("empty the sync tables")?;
        Ok(())
    }

    async fn rows(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM crm_contacts WHERE deleted_at IS NULL")
            .fetch_one(&self.ctx.pool)
            .await?)
    }

    /// The engine, end to end: a full sync of contacts.
    async fn e2e(&self, rep: usize) -> anyhow::Result<Pass> {
        self.empty_tables().await?;
        let job = SyncJob {
            connection_id: self.connection,
            object: ObjectKind::Contact,
            mode: SyncMode::Full,
            trigger: "bench".into(),
            tick: None,
        };
        let info = AttemptInfo { job_id: None, attempt: 1, max_attempts: 8 };
        let (c0, t0) = (cpu_s(), Instant::now());
        let summary = crm_jobs::sync::run(&self.ctx, &job, info, || None)
            .await
            .map_err(|e| anyhow::anyhow!("sync failed: {} ({})", e.message, e.class))?;
        let seconds = t0.elapsed().as_secs_f64();
        let records = summary.counts.processed as u64;
        if summary.counts.created != records as i64 || self.rows().await? != records as i64 {
            bail!("end-to-end sync wrote {} of {records} records", summary.counts.created);
        }
        Ok(Pass {
            phase: "e2e".into(),
            rep,
            records,
            pages: summary.pages as u64,
            seconds,
            rate: records as f64 / seconds,
            cpu_s: cpu_s() - c0,
        })
    }

    /// The provider client alone: every page of a full sync, kept for the ingest pass.
    async fn fetch(&self, rep: usize) -> anyhow::Result<(Pass, Vec<SyncPage>)> {
        let client = self.ctx.clients.get(self.provider);
        let mut cursor = SyncCursor::full();
        let mut pages = Vec::new();
        let (c0, t0) = (cpu_s(), Instant::now());
        loop {
            let reply = crm_jobs::auth::call(&self.ctx.tokens, self.connection, |auth| {
                let cursor = cursor.clone();
                async move { client.sync_page(&auth, ObjectKind::Contact, &cursor).await }
            })
            .await
            .map_err(|e| anyhow::anyhow!("fetch failed: {e}"))?;
            let page = reply.value;
            cursor = page.next.clone();
            let more = page.has_more;
            pages.push(page);
            if !more {
                break;
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let records: u64 = pages.iter().map(|p| p.records.len() as u64).sum();
        let pass = Pass {
            phase: "fetch".into(),
            rep,
            records,
            pages: pages.len() as u64,
            seconds,
            rate: records as f64 / seconds,
            cpu_s: cpu_s() - c0,
        };
        Ok((pass, pages))
    }

    /// The engine's page write alone: `apply_page` in one transaction per page.
    async fn ingest(&self, rep: usize, pages: &[SyncPage]) -> anyhow::Result<Pass> {
        self.empty_tables().await?;
        // Owned copies first, so the timed loop only writes.
        let pages: Vec<SyncPage> = pages.to_vec();
        let scope = Scope {
            tenant: &self.tenant,
            provider: self.provider.as_str(),
            connection: self.connection,
            run: Uuid::now_v7(),
        };
        let n = pages.len() as u64;
        let (c0, t0) = (cpu_s(), Instant::now());
        let mut records = 0u64;
        for page in pages {
            let mut tx =
                begin_page(&self.ctx.pool, &self.tenant, self.provider.as_str(), ObjectKind::Contact, None)
                    .await?;
            let counts =
                apply_page(&mut tx, &scope, ObjectKind::Contact, page.records, &page.deleted).await?;
            tx.commit().await?;
            records += counts.processed as u64;
        }
        let seconds = t0.elapsed().as_secs_f64();
        if self.rows().await? != records as i64 {
            bail!("ingest wrote {} rows for {records} records", self.rows().await?);
        }
        Ok(Pass {
            phase: "ingest".into(),
            rep,
            records,
            pages: n,
            seconds,
            rate: records as f64 / seconds,
            cpu_s: cpu_s() - c0,
        })
    }
}

async fn control(http: &reqwest::Client, base: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let resp = http
        .post(format!("{base}/_sandbox/{path}"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("sandbox control plane: POST {path}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("sandbox control plane: POST {path}: {status} {v}");
    }
    Ok(v)
}

/// Runs the benchmark and prints its table.
pub async fn run(mut args: SyncArgs) -> anyhow::Result<()> {
    if args.quick {
        args.records = 10_000;
        args.reps = 1;
    }
    require_release(args.allow_debug)?;
    let infra =
        Infra::start(RedisChoice::Start(None), &args.run_dir, &args.database_url, "crm_bench_sync", None)
            .await?;
    let outcome = until_interrupted(measure(&args, &infra.redis_url, &infra.db.url)).await;
    infra.stop().await;
    let results = outcome?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)?;
    println!("{}", render(&results));
    eprintln!("[bench] results: {}", args.out.display());
    Ok(())
}

async fn measure(args: &SyncArgs, redis_url: &str, db_url: &str) -> anyhow::Result<SyncResults> {
    let provider = args.provider;
    let sandbox = Sandbox::start(
        SandboxConfig::default()
            .with_providers([provider_kind(provider)])
            .with_records(1)
            .with_frozen_clock(),
    )
    .await
    .context("start the sandbox")?;
    let http = Http::new().context("http client")?;
    let clients = Clients::new(http);
    let plain = reqwest::Client::builder().build().context("http client")?;
    let base = sandbox.urls().control.clone();
    let t0 = Instant::now();
    let account =
        control(&plain, &base, &format!("{provider}/accounts"), account_spec(provider, args.records)).await?;
    let seed_seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "[bench] sandbox {provider} account with {} contacts ({seed_seconds:.1} s)",
        fmt(args.records as f64, 0)
    );

    let pool = crm_jobs::storage::connect(
        &with_settings(db_url, &args.pg_settings)?,
        args.pool,
        Duration::from_secs(10),
    )
    .await?;
    let keys = Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[])?);
    let store = Store::new(pool.clone(), keys);
    let urls = serde_json::to_value(sandbox.urls())?;
    let tenant = "bench".to_owned();
    let connection = crm_jobs::sandbox_link::connect(&store, &tenant, provider, &urls, &account)
        .await
        .map_err(|e| anyhow::anyhow!("connect the sandbox account: {e}"))?
        .id;
    let queue = Queue::connect(QueueConfig::new(redis_url, "bench").with_prefix("crmbench")).await?;
    let env = Env {
        ctx: JobContext { pool, queue, tokens: TokenManager::new(store, plain), clients },
        connection,
        tenant,
        provider,
    };

    let mut passes = Vec::new();
    for rep in 1..=args.reps {
        let e2e = env.e2e(rep).await?;
        say(&e2e);
        let (fetch, pages) = env.fetch(rep).await?;
        say(&fetch);
        let ingest = env.ingest(rep, &pages).await?;
        say(&ingest);
        passes.extend([e2e, fetch, ingest]);
    }
    env.empty_tables().await?;
    env.ctx.pool.close().await;
    sandbox.shutdown().await;

    let medians = ["e2e", "fetch", "ingest"]
        .into_iter()
        .filter_map(|p| {
            let v: Vec<f64> = passes.iter().filter(|x| x.phase == p).map(|x| x.rate).collect();
            Some((p.to_owned(), median(&v)?))
        })
        .collect();
    Ok(SyncResults { env: super::procs::machine(), config: args.clone(), seed_seconds, passes, medians })
}

fn say(p: &Pass) {
    eprintln!(
        "[bench] rep {} {:<6} {:>9} records/s ({} records, {} pages, {:.2} s, {:.0} µs CPU/record)",
        p.rep,
        p.phase,
        fmt(p.rate, 0),
        p.records,
        p.pages,
        p.seconds,
        p.cpu_s * 1e6 / p.records.max(1) as f64
    );
}

/// The Markdown table of a run.
pub fn render(res: &SyncResults) -> String {
    let mut out = vec![
        "| Phase | records/s min / median / max | seconds (median) | pages | CPU µs/record (median, whole process) |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    for (phase, what) in [
        ("e2e", "end to end: `crm_jobs::sync::run`, full sync into empty tables"),
        ("fetch", "fetch only: provider client over loopback HTTP"),
        ("ingest", "ingest only: `apply_page`, one transaction per page"),
    ] {
        let runs: Vec<&Pass> = res.passes.iter().filter(|p| p.phase == phase).collect();
        let rates: Vec<f64> = runs.iter().map(|p| p.rate).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let secs = median(&runs.iter().map(|p| p.seconds).collect::<Vec<_>>()).unwrap_or(0.0);
        let cpu = median(&runs.iter().map(|p| p.cpu_s * 1e6 / p.records.max(1) as f64).collect::<Vec<_>>())
            .unwrap_or(0.0);
        out.push(format!(
            "| {what} | {} / {} / {} | {secs:.2} | {} | {cpu:.1} |",
            fmt(lo, 0),
            fmt(median(&rates).unwrap_or(0.0), 0),
            fmt(hi, 0),
            runs.first().map(|p| p.pages).unwrap_or(0)
        ));
    }
    let e2e = res.medians.get("e2e").copied().unwrap_or(0.0);
    out.push(String::new());
    out.push(format!(
        "{} contacts from the {} imitation, {} repetition(s){}. Target (issue 5): ≥ {} records/s end to end: {} ({:.0}% of it).",
        fmt(res.config.records as f64, 0),
        res.config.provider,
        res.config.reps,
        variant(&res.config),
        fmt(TARGET_RECORDS_PER_S, 0),
        if e2e >= TARGET_RECORDS_PER_S { "met" } else { "not met" },
        100.0 * e2e / TARGET_RECORDS_PER_S
    ));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_connect_options() {
        let url = "postgres://u@h/db";
        assert_eq!(with_settings(url, &[]).ok().as_deref(), Some(url));
        assert_eq!(
            with_settings(
                url,
                &["plan_cache_mode=force_custom_plan".into(), "synchronous_commit=off".into()]
            )
            .ok()
            .as_deref(),
            Some(
                "postgres://u@h/db?options[plan_cache_mode]=force_custom_plan&options[synchronous_commit]=off"
            )
        );
        assert!(with_settings(url, &["x=1 2".into()]).is_err());
        assert!(with_settings(url, &["nope".into()]).is_err());
    }
}
