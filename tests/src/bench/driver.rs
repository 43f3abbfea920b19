//! The driver (`crm-bench-queue` / `crm-bench-queue run`): owns the dedicated Redis and the
//! scratch PostgreSQL database, runs every workload for every system with interleaved
//! repetitions, measures, and writes the results.
//!
//! Methodology (mirrors `/work/shared/bench/peers`, see its README):
//! * **W1** one `enqueue` process puts `n` jobs into an empty queue, one per call (`single`)
//!   or 1,000 per call (`bulk`); the bulk run's jobs are left for W2.
//! * **W2** `procs` worker processes x `concurrency` connect and report ready, are released at
//!   one instant, and drain the `n` jobs; jobs/s = n / (last handler end - first handler start).
//!   apalis-redis crashes when more than 7,999 jobs are due at its first fetch (every push
//!   lands in its `:scheduled` set and `fetch_next.lua` promotes them all in one `unpack`), so
//!   before its workers start the driver promotes the bulk run's jobs to `:active` in chunks of
//!   1,000 (outside the measured window, like the research probe's "prefilled + hand-promoted").
//! * **W3** workers idle and ready, then one `produce` process enqueues at an open-loop
//!   `w3_rate` jobs/s for `w3_duration` s; latency = handler start - enqueue time (payload).
//! * Around every window: `INFO commandstats` and `INFO cpu` of the dedicated Redis (commands
//!   and Redis CPU per job), `/proc` CPU time of the worker processes (CPU per job), and
//!   `VmHWM` of every worker process at the end (peak RSS).
//! * Before each measurement the driver waits (bounded) for other processes to leave the
//!   machine mostly idle, and records the CPU share they used during every window (`noise`).
//!
//! Keys are deleted between runs with SCAN + UNLINK of this benchmark's patterns only
//! (`crmbench*`, and apalis-redis' global `core:apalis:*` registry); never FLUSHALL, and port
//! 6379 (the shared Redis) is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::aio::MultiplexedConnection;
use serde::de::DeserializeOwned;
use tokio::process::Command;

use super::children::Children;
use super::client::{EnqueueReport, Kind, ProduceReport};
use super::infra::{Infra, RedisChoice, require_release, until_interrupted};
use super::payload::now;
use super::procs;
use super::report::{QuietCheck, RedisDelta, Results, SystemResults, W1, W2, W3, medians_json, render};
use super::systems::{Poller, System, Target, Tuning};
use super::worker::WorkerFinal;

/// Options of a benchmark run.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct RunArgs {
    /// Smoke run: 5,000 jobs, 1 repetition, W3 for 5 s.
    #[arg(long)]
    pub quick: bool,
    /// Run even from a debug build (its figures are not comparable).
    #[arg(long)]
    pub allow_debug: bool,
    /// Repetitions of every workload (interleaved across systems).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Jobs in W1 and W2.
    #[arg(long, default_value_t = 100_000)]
    pub n: u64,
    /// W3 offered rate, jobs/s.
    #[arg(long, default_value_t = 1_000.0)]
    pub w3_rate: f64,
    /// W3 duration, s.
    #[arg(long, default_value_t = 20.0)]
    pub w3_duration: f64,
    /// Seconds W3 waits for the backlog after the producer ends.
    #[arg(long, default_value_t = 30.0)]
    pub w3_drain_timeout: f64,
    /// Seconds W2 may take.
    #[arg(long, default_value_t = 300.0)]
    pub w2_timeout: f64,
    /// Systems to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ours,apalis-redis,apalis-redis-nolock")]
    pub systems: Vec<System>,
    /// Workloads to skip, comma-separated: w1, w2, w3.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Use this (dedicated!) Redis instead of starting one. Port 6379 is refused.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Port for the Redis this driver starts (default: the first free port from 6391).
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// PostgreSQL URL used to create (and at the end drop) a scratch database for our dead letters.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// Worker processes in W2 and W3.
    #[arg(long, default_value_t = 2)]
    pub procs: usize,
    /// Concurrency per worker process.
    #[arg(long, default_value_t = 25)]
    pub concurrency: usize,
    /// How the systems are set up.
    #[command(flatten)]
    #[serde(flatten)]
    pub tuning: Tuning,
    /// Before each measurement wait until other processes use less than this share of the CPU.
    #[arg(long, default_value_t = 0.15)]
    pub quiet_threshold: f64,
    /// ...but at most this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub quiet_max_wait: f64,
    /// Where to write the results JSON (the Markdown table goes next to it as table.md).
    #[arg(long, default_value = "/tmp/crm-bench-queue/results.json")]
    pub out: PathBuf,
    /// Directory for worker logs and the Redis log.
    #[arg(long, default_value = "/tmp/crm-bench-queue/run")]
    pub run_dir: PathBuf,
}

impl RunArgs {
    fn skips(&self, w: &str) -> bool {
        self.skip.iter().any(|s| s == w)
    }
}

// ------------------------------------------------------------------------------------------
// Redis accounting and cleaning

#[derive(Debug, Clone)]
struct Snap {
    calls: HashMap<String, u64>,
    cpu_s: f64,
    /// `total_connections_received`: a window with more new connections than the benchmark's
    /// own processes open means something else used the "dedicated" server.
    connections: u64,
}

async fn snapshot(conn: &mut MultiplexedConnection) -> anyhow::Result<Snap> {
    let cs: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let stats: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    let connections = stats
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut calls = HashMap::new();
    for line in cs.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, stats)) = rest.split_once(':')
            && let Some(n) = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))
        {
            calls.insert(name.to_owned(), n.parse().unwrap_or(0));
        }
    }
    let mut cpu_s = 0.0;
    for line in cpu.lines() {
        if let Some((k, v)) = line.split_once(':')
            && (k == "used_cpu_sys" || k == "used_cpu_user")
        {
            cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(Snap { calls, cpu_s, connections })
}

fn delta(a: &Snap, b: &Snap, jobs: u64) -> RedisDelta {
    let jobs = jobs.max(1) as f64;
    let mut per: Vec<(String, f64)> = b
        .calls
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(a.calls.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d as f64 / jobs))
        })
        .collect();
    per.sort_by(|x, y| y.1.total_cmp(&x.1));
    let total: f64 = per.iter().map(|(_, v)| v).sum();
    let scripts: f64 = per
        .iter()
        .filter(|(k, _)| {
            matches!(k.as_str(), "evalsha" | "eval" | "fcall" | "evalsha_ro" | "eval_ro" | "fcall_ro")
        })
        .map(|(_, v)| v)
        .sum();
    let cpu_s = b.cpu_s - a.cpu_s;
    RedisDelta {
        cmds_per_job: total,
        scripts_per_job: scripts,
        cpu_us_per_job: cpu_s * 1e6 / jobs,
        cpu_s,
        per_job: per.into_iter().map(|(k, v)| (k, (v * 1000.0).round() / 1000.0)).collect(),
        new_connections: b.connections.saturating_sub(a.connections),
    }
}

/// Key patterns this benchmark owns.
const KEY_PATTERNS: [&str; 2] = ["crmbench*", "core:apalis:*"];

async fn clean(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let mut deleted = 0u64;
    for pattern in KEY_PATTERNS {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}

/// Moves every job of an apalis-redis queue's `:scheduled` set to `:active`, 1,000 at a time.
async fn promote_apalis(conn: &mut MultiplexedConnection, cfg: &apalis_redis::Config) -> anyhow::Result<u64> {
    let (scheduled, active) = (cfg.scheduled_jobs_set(), cfg.active_jobs_list());
    let mut moved = 0u64;
    loop {
        let ids: Vec<String> = redis::cmd("ZRANGE").arg(&scheduled).arg(0).arg(999).query_async(conn).await?;
        if ids.is_empty() {
            return Ok(moved);
        }
        let mut pipe = redis::pipe();
        pipe.atomic().rpush(&active, &ids).ignore().zrem(&scheduled, &ids).ignore();
        let _: () = pipe.query_async(conn).await?;
        moved += ids.len() as u64;
    }
}

async fn remaining(conn: &mut MultiplexedConnection, system: System, target: &Target) -> anyhow::Result<u64> {
    if system == System::Ours {
        let q = crm_queue::Queue::connect(target.our_config()).await?;
        let s = q.stats().await?;
        return Ok(s.ready + s.delayed + s.leased + s.dying);
    }
    let cfg = target.apalis_config(system);
    let active: u64 = redis::cmd("LLEN").arg(cfg.active_jobs_list()).query_async(conn).await?;
    let scheduled: u64 = redis::cmd("ZCARD").arg(cfg.scheduled_jobs_set()).query_async(conn).await?;
    let mut inflight = 0u64;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", cfg.inflight_jobs_set()))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for k in keys {
            let n: u64 = redis::cmd("SCARD").arg(&k).query_async(conn).await?;
            inflight += n;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(active + scheduled + inflight)
}

// ------------------------------------------------------------------------------------------
// Child processes

fn target_args(system: System, t: &Target) -> Vec<String> {
    let mut v = vec![
        "--system".into(),
        system.name().into(),
        "--redis-url".into(),
        t.redis_url.clone(),
        "--queue".into(),
        t.queue.clone(),
    ];
    v.extend(t.tuning.args());
    v
}

async fn run_json<T: DeserializeOwned>(exe: &Path, args: &[String], timeout: Duration) -> anyhow::Result<T> {
    let out = tokio::time::timeout(
        timeout,
        Command::new(exe).args(args).stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{} timed out after {timeout:?}", args.first().map_or("", |s| s.as_str())))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{:?} failed ({}): {}",
            args,
            out.status,
            err.chars().rev().take(3000).collect::<String>().chars().rev().collect::<String>()
        );
    }
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("no JSON line in output")?;
    Ok(serde_json::from_str(line)?)
}

// ------------------------------------------------------------------------------------------
// Workloads

struct Bench {
    args: RunArgs,
    exe: PathBuf,
    redis_url: String,
    db_url: String,
    conn: MultiplexedConnection,
    results: Results,
    stamp: String,
}

fn pct(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    Some(sorted[i] as f64 / 1000.0)
}

impl Bench {
    /// Spawns the worker processes of a W2 or W3 run (not yet released).
    fn workers(
        &self,
        system: System,
        target: &Target,
        latency: bool,
        dir: &Path,
    ) -> anyhow::Result<Children<WorkerFinal>> {
        let mut argv = vec!["worker".to_owned()];
        argv.extend(target_args(system, target));
        argv.extend(["--database-url".into(), self.db_url.clone()]);
        argv.extend(["--concurrency".into(), self.args.concurrency.to_string()]);
        if latency {
            argv.push("--latency".into());
        }
        Children::start(&self.exe, &argv, self.args.procs, dir)
    }

    fn target(&self, system: System) -> Target {
        Target {
            redis_url: self.redis_url.clone(),
            queue: system.queue_name(),
            tuning: self.args.tuning.clone(),
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.args.out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.args.out, serde_json::to_vec_pretty(&self.results)?)?;
        Ok(())
    }

    async fn wait_quiet(&mut self, when: String) {
        let start = Instant::now();
        let max = Duration::from_secs_f64(self.args.quiet_max_wait.max(0.0));
        let mut busy = procs::busy_share(Duration::from_secs(1)).await;
        while busy > self.args.quiet_threshold && start.elapsed() < max {
            busy = procs::busy_share(Duration::from_secs(2)).await;
        }
        if busy > self.args.quiet_threshold {
            eprintln!(
                "[bench] machine still {:.0}% busy with other work; measuring anyway ({when})",
                busy * 100.0
            );
        }
        self.results.background_cpu.push(QuietCheck { when, busy, waited_s: start.elapsed().as_secs_f64() });
    }

    async fn w1(&mut self, system: System, kind: Kind) -> anyhow::Result<W1> {
        clean(&mut self.conn).await?;
        let n = self.args.n;
        let mut argv = vec!["enqueue".to_owned()];
        argv.extend(target_args(system, &self.target(system)));
        argv.extend(["--n".into(), n.to_string(), "--kind".into(), format!("{kind:?}").to_lowercase()]);
        let a = snapshot(&mut self.conn).await?;
        let (m0, _) = procs::machine_cpu_s();
        let t0 = Instant::now();
        let rep: EnqueueReport = run_json(&self.exe, &argv, Duration::from_secs(600)).await?;
        let secs = t0.elapsed().as_secs_f64();
        let (m1, _) = procs::machine_cpu_s();
        let b = snapshot(&mut self.conn).await?;
        let redis = delta(&a, &b, n);
        let noise = procs::noise_share(m0, m1, rep.client_cpu_s + redis.cpu_s, secs);
        Ok(W1 { client_cpu_us_per_job: rep.client_cpu_s * 1e6 / n.max(1) as f64, client: rep, redis, noise })
    }

    async fn w2(&mut self, system: System, dir: &Path) -> anyhow::Result<W2> {
        let n = self.args.n;
        let target = self.target(system);
        if system.is_apalis() {
            let moved = promote_apalis(&mut self.conn, &target.apalis_config(system)).await?;
            if moved != n {
                eprintln!("[bench] {}: promoted {moved} of {n} jobs to :active", system.name());
            }
        }
        let mut ws = self.workers(system, &target, false, dir)?;
        let res = async {
            ws.wait_ready(Duration::from_secs(120)).await?;
            let a = snapshot(&mut self.conn).await?;
            let c0 = ws.cpu_s();
            let (m0, _) = procs::machine_cpu_s();
            let t_go = ws.go().await?;
            let complete = ws.wait_count(n, Duration::from_secs_f64(self.args.w2_timeout)).await?;
            let c1 = ws.cpu_s();
            let (m1, _) = procs::machine_cpu_s();
            let t_end = now();
            let b = snapshot(&mut self.conn).await?;
            anyhow::Ok((a, b, c1 - c0, m0, m1, t_go, t_end, complete, ws.peak_rss_mib()))
        }
        .await;
        let finals = ws.stop().await;
        let (a, b, cpu, m0, m1, t_go, t_end, complete, rss) = res?;
        let total: u64 = finals.iter().map(|f| f.count).sum();
        let first = finals.iter().map(|f| f.first).filter(|f| *f > 0.0).fold(f64::INFINITY, f64::min);
        let last = finals.iter().map(|f| f.last).fold(0.0, f64::max);
        let seconds = (last - first).max(1e-9);
        let redis = delta(&a, &b, total);
        let noise = procs::noise_share(m0, m1, cpu + redis.cpu_s, t_end - t_go);
        Ok(W2 {
            n: total,
            complete,
            seconds,
            rate: total as f64 / seconds,
            go_to_first_ms: (first - t_go) * 1e3,
            per_proc_counts: finals.iter().map(|f| f.count).collect(),
            peak_rss_mib: rss,
            worker_cpu_s: cpu,
            worker_cpu_us_per_job: cpu * 1e6 / total.max(1) as f64,
            remaining: remaining(&mut self.conn, system, &target).await?,
            redis,
            noise,
        })
    }

    async fn w3(&mut self, system: System, dir: &Path) -> anyhow::Result<W3> {
        clean(&mut self.conn).await?;
        let target = self.target(system);
        let expected = (self.args.w3_rate * self.args.w3_duration).round() as u64;
        let mut argv = vec!["produce".to_owned()];
        argv.extend(target_args(system, &target));
        argv.extend([
            "--rate".into(),
            self.args.w3_rate.to_string(),
            "--duration".into(),
            self.args.w3_duration.to_string(),
        ]);
        let mut ws = self.workers(system, &target, true, dir)?;
        let res = async {
            ws.wait_ready(Duration::from_secs(120)).await?;
            ws.go().await?;
            // Let every worker register and go idle before the load starts.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let a = snapshot(&mut self.conn).await?;
            let c0 = ws.cpu_s();
            let (m0, _) = procs::machine_cpu_s();
            let t0 = Instant::now();
            let timeout = Duration::from_secs_f64(self.args.w3_duration * 3.0 + 60.0);
            let prod: ProduceReport = run_json(&self.exe, &argv, timeout).await?;
            let complete =
                ws.wait_count(expected, Duration::from_secs_f64(self.args.w3_drain_timeout)).await?;
            let c1 = ws.cpu_s();
            let (m1, _) = procs::machine_cpu_s();
            let secs = t0.elapsed().as_secs_f64();
            let b = snapshot(&mut self.conn).await?;
            anyhow::Ok((a, b, c1 - c0, m0, m1, secs, prod, complete, ws.peak_rss_mib()))
        }
        .await;
        let finals = ws.stop().await;
        let (a, b, cpu, m0, m1, secs, prod, complete, rss) = res?;
        let mut lat: Vec<u32> = finals.iter().flat_map(|f| f.lat_us.iter().copied()).collect();
        lat.sort_unstable();
        let processed: u64 = finals.iter().map(|f| f.count).sum();
        let redis = delta(&a, &b, processed);
        let noise = procs::noise_share(m0, m1, cpu + prod.client_cpu_s + redis.cpu_s, secs);
        Ok(W3 {
            expected,
            processed,
            complete,
            p50_ms: pct(&lat, 0.50),
            p90_ms: pct(&lat, 0.90),
            p99_ms: pct(&lat, 0.99),
            p999_ms: pct(&lat, 0.999),
            max_ms: lat.last().map(|v| *v as f64 / 1000.0),
            producer: prod,
            peak_rss_mib: rss,
            worker_cpu_us_per_job: cpu * 1e6 / processed.max(1) as f64,
            remaining: remaining(&mut self.conn, system, &target).await?,
            redis,
            noise,
        })
    }

    fn sys(&mut self, system: System) -> &mut SystemResults {
        self.results.systems.entry(system.name().to_owned()).or_default()
    }

    async fn run_all(&mut self) -> anyhow::Result<()> {
        let systems = self.args.systems.clone();
        for rep in 1..=self.args.reps {
            for &system in &systems {
                let name = system.name();
                if self.args.skips("w1") && self.args.skips("w2") {
                    continue;
                }
                self.wait_quiet(format!("w1w2 {name} rep {rep}")).await;
                if !self.args.skips("w1") {
                    let x = self.w1(system, Kind::Single).await?;
                    eprintln!(
                        "[bench] {name:<20} rep {rep} W1 single: {:>9} jobs/s ({:.1} s, {:.1} cmds/job, client {:.0} µs/job)",
                        super::report::fmt(x.client.rate, 0),
                        x.client.seconds,
                        x.redis.cmds_per_job,
                        x.client_cpu_us_per_job
                    );
                    self.sys(system).w1_single.push(x);
                }
                let x = self.w1(system, Kind::Bulk).await?;
                eprintln!(
                    "[bench] {name:<20} rep {rep} W1 bulk:   {:>9} jobs/s ({:.1} s)",
                    super::report::fmt(x.client.rate, 0),
                    x.client.seconds
                );
                if !self.args.skips("w1") {
                    self.sys(system).w1_bulk.push(x);
                }
                if !self.args.skips("w2") {
                    let dir = self.args.run_dir.join(format!("{}-{name}-w2-r{rep}", self.stamp));
                    let x = self.w2(system, &dir).await?;
                    eprintln!(
                        "[bench] {name:<20} rep {rep} W2:        {:>9} jobs/s ({} jobs in {:.2} s, complete={}, remaining={}, {:.1} cmds/job, {:.1} scripts/job, redis {:.1} µs/job, workers {:.0} µs/job, rss {:?} MiB, +{} redis connections)",
                        super::report::fmt(x.rate, 0),
                        x.n,
                        x.seconds,
                        x.complete,
                        x.remaining,
                        x.redis.cmds_per_job,
                        x.redis.scripts_per_job,
                        x.redis.cpu_us_per_job,
                        x.worker_cpu_us_per_job,
                        x.peak_rss_mib.iter().map(|v| v.round()).collect::<Vec<_>>(),
                        x.redis.new_connections
                    );
                    self.sys(system).w2.push(x);
                }
                clean(&mut self.conn).await?;
                self.save()?;
            }
        }
        if !self.args.skips("w3") {
            for rep in 1..=self.args.reps {
                for &system in &systems {
                    let name = system.name();
                    self.wait_quiet(format!("w3 {name} rep {rep}")).await;
                    let dir = self.args.run_dir.join(format!("{}-{name}-w3-r{rep}", self.stamp));
                    let x = self.w3(system, &dir).await?;
                    eprintln!(
                        "[bench] {name:<20} rep {rep} W3: p50 {:.2} ms p99 {:.2} ms max {:.1} ms ({}/{}, producer {:.0}/s, {:.1} cmds/job, +{} redis connections)",
                        x.p50_ms.unwrap_or(-1.0),
                        x.p99_ms.unwrap_or(-1.0),
                        x.max_ms.unwrap_or(-1.0),
                        x.processed,
                        x.expected,
                        x.producer.achieved_rate,
                        x.redis.cmds_per_job,
                        x.redis.new_connections
                    );
                    self.sys(system).w3.push(x);
                    clean(&mut self.conn).await?;
                    self.save()?;
                }
            }
        }
        Ok(())
    }
}

fn settings(system: System, args: &RunArgs) -> String {
    match system {
        System::Ours => format!(
            "crm-queue from the working tree (commit and uncommitted queue/ changes in env.git_*); {} lanes (1,000 tenants, {} per lane), priority high, no budgets, default timings (lease 20 s, heartbeat 5 s, reap 1 s, promote 200 ms, idle BLPOP wake-up 500 ms); ConsumerConfig concurrency {} per process; dead letters in a scratch PostgreSQL database",
            args.tuning.lanes,
            1000 / args.tuning.lanes.clamp(1, 1000),
            args.concurrency
        ),
        System::ApalisRedis | System::ApalisRedisNoLock => format!(
            "apalis-redis 1.0.0 RedisStorage; batch_size {}, poll interval {} ms ({}), ConcurrencyLimitLayer({}) per process, lock_tasks {}, persist_results true, emit_events true, heartbeat 30 s (default); ConnectionManager with 5 s response timeout; W2's jobs promoted from :scheduled to :active in chunks of 1,000 before the workers start",
            args.tuning.apalis_batch,
            args.tuning.apalis_poll_ms,
            match args.tuning.apalis_poller {
                Poller::Fixed => "interval strategy with the lost wake-up fixed",
                Poller::Stock => "stock poll_with_interval",
            },
            args.concurrency,
            system != System::ApalisRedisNoLock
        ),
    }
}

async fn environment(
    conn: &mut MultiplexedConnection,
    args: &RunArgs,
) -> std::collections::BTreeMap<String, String> {
    let mut env = procs::machine();
    if let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(conn).await
        && let Some(v) = info.lines().find_map(|l| l.strip_prefix("redis_version:"))
    {
        env.insert("redis_version".into(), v.trim().to_owned());
    }
    env.insert("apalis_redis".into(), "1.0.0".into());
    // Which crm-queue was measured: the commit (in `machine`) and any uncommitted changes
    // under queue/ when the run started (the binary is built from the working tree).
    env.insert(
        "git_queue_changes".into(),
        procs::git(&["--no-optional-locks", "status", "--porcelain", "--", "queue"]).replace('\n', "; "),
    );
    env.insert(
        "w2_worker_setup".into(),
        format!("{} processes x concurrency {}", args.procs, args.concurrency),
    );
    env
}

/// Runs the benchmark.
pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    if args.quick {
        args.n = 5_000;
        args.reps = 1;
        args.w3_duration = 5.0;
    }
    require_release(args.allow_debug)?;
    let redis = match &args.redis_url {
        Some(url) => RedisChoice::Use(url),
        None => RedisChoice::Start(args.redis_port),
    };
    let infra =
        Infra::start(redis, &args.run_dir, &args.database_url, "crm_bench_queue", Some("crm-bench-queue"))
            .await?;
    let outcome = async {
        let redis_url = infra.redis_url.clone();
        let client = redis::Client::open(redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        clean(&mut conn).await?;
        let mut results = Results {
            env: environment(&mut conn, &args).await,
            config: serde_json::to_value(&args)?,
            ..Default::default()
        };
        for &s in &args.systems {
            results.systems.insert(
                s.name().to_owned(),
                SystemResults {
                    label: s.label().to_owned(),
                    settings: settings(s, &args),
                    ..Default::default()
                },
            );
        }
        let mut bench = Bench {
            args: args.clone(),
            exe: infra.exe()?.to_owned(),
            redis_url: redis_url.clone(),
            db_url: infra.db.url.clone(),
            conn,
            results,
            stamp: chrono::Local::now().format("%Y%m%d-%H%M%S").to_string(),
        };
        let res = until_interrupted(bench.run_all()).await;
        let _ = clean(&mut bench.conn).await;
        bench.results.medians = medians_json(&bench.results);
        bench.save()?;
        res?;
        let table = render(&bench.results);
        let md = args.out.with_file_name("table.md");
        std::fs::write(&md, format!("{table}\n"))?;
        println!("{table}");
        eprintln!("[bench] results: {} and {}", args.out.display(), md.display());
        anyhow::Ok(())
    }
    .await;
    infra.stop().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_deltas_count_script_commands_and_skip_info() {
        let a = Snap {
            calls: HashMap::from([("evalsha".into(), 10), ("info".into(), 5)]),
            cpu_s: 1.0,
            connections: 7,
        };
        let b = Snap {
            calls: HashMap::from([("evalsha".into(), 110), ("hset".into(), 300), ("info".into(), 9)]),
            cpu_s: 1.5,
            connections: 9,
        };
        let d = delta(&a, &b, 100);
        assert!((d.cmds_per_job - 4.0).abs() < 1e-9);
        assert!((d.scripts_per_job - 1.0).abs() < 1e-9);
        assert!((d.cpu_us_per_job - 5_000.0).abs() < 1e-6);
        assert_eq!(d.new_connections, 2);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(pct(&v, 0.5), Some(51.0));
        assert_eq!(pct(&v, 0.99), Some(99.0));
        assert_eq!(pct(&[], 0.5), None);
    }
}
