//! The limiter precision benchmark behind `crm-bench-limits`: budgets enforced by crm-queue's
//! fetch (one Lua call admits a job only if every budget of its lane has room) with several
//! worker processes competing for them, on a dedicated Redis. It prints what was configured
//! next to what was achieved.
//!
//! Three scenarios, one after the other, each on a queue of its own:
//! * **quota**: the production set-up for HubSpot. The documented-quota seeds of
//!   `crm_jobs::limits::defaults()` (100 requests / 10 s per account, applied at 98 % with a
//!   burst of 2) and the production lanes of `crm_jobs::enqueue::lane` (breaker, pauses,
//!   provider, tenant and connection concurrency, account rate), `--accounts` accounts with a
//!   backlog each; handlers hold their job 50–150 ms (a provider call). Per account: achieved
//!   rate against the configured one, the most admissions in any 10 s window (the provider's
//!   rolling window) against the quota, and the same counted at handler start (what the
//!   provider would see).
//! * **slots**: one concurrency budget (`--slot-limit`, default 10) shared by 5 lanes, jobs of
//!   5–25 ms, so the budget is always contended: the most slots ever held (sampled from Redis
//!   every millisecond or so), the most handlers running at once (from their start and end
//!   times across processes), and the mean number of slots in use against the limit.
//! * **fast**: one rate budget of `--fast-rates` jobs/s with a burst of 1 (no tolerance for a
//!   token claimed late, as in the seeds of Close and Pipedrive) shared by 5 lanes, no-op jobs;
//!   one run per rate: 15/s (the Close seed) and 200/s (a token every 5 ms).
//!
//! Admission times are the lease start the fetch script stamps (the Redis clock, the one the
//! budgets run on); handler times are `CLOCK_MONOTONIC`, one clock for every process. Workers
//! are real apalis workers on `crm_queue::Consumer` (the same runtime as `crm-worker`), `--procs`
//! processes x `--concurrency`, released together after start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use crm_jobs::enqueue::Target as JobTarget;
use crm_jobs::providers::Provider;
use crm_queue::{JobHandle, Lane, Limit, NewJob, Priority, Queue, QueueConfig};
use serde::{Deserialize, Serialize};

use super::children::{Children, our_consumer, read_control, say, serve};
use super::infra::{Infra, RedisChoice, require_release, until_interrupted};
use super::payload::now_ns;
use super::report::fmt;

/// Key prefix of the benchmark's queues.
const PREFIX: &str = "crmbench";

/// Options of a run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LimitsArgs {
    /// Smoke run: every scenario for a few seconds.
    #[arg(long)]
    pub quick: bool,
    /// Run even from a debug build (its figures are not comparable).
    #[arg(long)]
    pub allow_debug: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub procs: usize,
    /// Jobs each worker process runs at once.
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// HubSpot accounts (tenants) in the quota scenario.
    #[arg(long, default_value_t = 3)]
    pub accounts: u32,
    /// Seconds of the quota scenario (the quota's window is 10 s).
    #[arg(long, default_value_t = 60.0)]
    pub quota_seconds: f64,
    /// Concurrency limit of the slots scenario.
    #[arg(long, default_value_t = 10)]
    pub slot_limit: u32,
    /// Seconds of the slots scenario.
    #[arg(long, default_value_t = 20.0)]
    pub slots_seconds: f64,
    /// Jobs per second of the fast scenario's budgets (burst 1), one run each: 15/s is the
    /// seed of a Close API key (16/s at 98 %), 200/s a token every 5 ms.
    #[arg(long, value_delimiter = ',', default_value = "15,200")]
    pub fast_rates: Vec<u32>,
    /// Seconds of each fast run.
    #[arg(long, default_value_t = 20.0)]
    pub fast_seconds: f64,
    /// Scenarios to skip, comma-separated: quota, slots, fast.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Server-level PostgreSQL URL the scratch database (for the consumers' dead letters) is
    /// created from.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// Where to write the results JSON.
    #[arg(long, default_value = "/tmp/crm-bench-limits/results.json")]
    pub out: PathBuf,
    /// Directory for worker logs and the Redis log.
    #[arg(long, default_value = "/tmp/crm-bench-limits/run")]
    pub run_dir: PathBuf,
}

/// The job: which group (account or lane) it belongs to and how long its handler holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitJob {
    /// Sequence number.
    pub seq: u64,
    /// Account (quota) or lane (slots, fast) index.
    pub group: u32,
    /// Milliseconds the handler holds the job.
    pub hold_ms: u32,
}

/// One job as a worker saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rec {
    /// Group.
    pub g: u32,
    /// Admission (lease start), ms on the Redis clock.
    pub a: i64,
    /// Handler start, ns on `CLOCK_MONOTONIC`.
    pub s: u64,
    /// Handler end, ns on `CLOCK_MONOTONIC`.
    pub e: u64,
}

/// What a worker process reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimitsFinal {
    /// Every job it ran.
    pub records: Vec<Rec>,
}

// ------------------------------------------------------------------------------------------
// Worker process

#[derive(Debug, Default)]
struct Recorder {
    count: Arc<std::sync::atomic::AtomicU64>,
    records: Mutex<Vec<Rec>>,
}

async fn handle(job: LimitJob, lease: JobHandle, rec: Data<Arc<Recorder>>) -> Result<(), BoxDynError> {
    let s = now_ns();
    if job.hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(job.hold_ms))).await;
    }
    let e = now_ns();
    if let Ok(mut v) = rec.records.lock() {
        v.push(Rec { g: job.group, a: lease.0.started_at_ms, s, e });
    }
    rec.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok(())
}

/// Runs a worker process (`crm-bench-limits worker`): a consumer of `queue` with
/// `concurrency` slots, released by the driver's `go`.
pub async fn worker(
    redis_url: &str,
    queue: &str,
    database_url: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let rec = Arc::new(Recorder::default());
    let control = read_control();
    let queue = Queue::connect(QueueConfig::new(redis_url, queue).with_prefix(PREFIX)).await?;
    let consumer = our_consumer(queue, database_url, "bench-limits", concurrency).await?;
    let (c, r) = (consumer.clone(), rec.clone());
    let monitor = Monitor::new().register(move |_run| {
        WorkerBuilder::new(c.worker_id()).backend(c.backend::<LimitJob>()).data(r.clone()).build(handle)
    });
    serve(monitor, control, rec.count.clone(), Some(consumer)).await;
    let records = rec.records.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
    say(&serde_json::to_string(&LimitsFinal { records })?);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Analysis

/// The most points of `sorted` in any half-open window `[t, t + w)`.
pub fn max_in_window(sorted: &[f64], w: f64) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..sorted.len() {
        if j < i {
            j = i;
        }
        while j < sorted.len() && sorted[j] < sorted[i] + w {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// The most intervals open at once (an interval is `[start, end)`).
pub fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::with_capacity(intervals.len() * 2);
    for &(s, e) in intervals {
        events.push((s, 1));
        events.push((e, -1));
    }
    // Ends before starts at the same instant.
    events.sort_unstable();
    let (mut open, mut best) = (0i64, 0i64);
    for (_, d) in events {
        open += i64::from(d);
        best = best.max(open);
    }
    best.max(0) as usize
}

/// Rate of a series of admissions: (n - 1) / (last - first), per second.
fn rate_of(sorted_s: &[f64]) -> Option<f64> {
    let (first, last) = (sorted_s.first()?, sorted_s.last()?);
    (sorted_s.len() > 1 && last > first).then(|| (sorted_s.len() - 1) as f64 / (last - first))
}

/// Admission and handler-start times of a group, seconds, sorted.
fn times(recs: &[&Rec]) -> (Vec<f64>, Vec<f64>) {
    let mut adm: Vec<f64> = recs.iter().map(|r| r.a as f64 / 1e3).collect();
    let mut start: Vec<f64> = recs.iter().map(|r| r.s as f64 / 1e9).collect();
    adm.sort_by(f64::total_cmp);
    start.sort_by(f64::total_cmp);
    (adm, start)
}

/// Figures of one rate budget.
#[derive(Debug, Clone, Serialize)]
pub struct RateFigures {
    /// Budget.
    pub budget: String,
    /// Configured limit (`count/per/burst`).
    pub configured: String,
    /// Configured jobs/s.
    pub configured_rate: f64,
    /// Jobs admitted.
    pub admitted: usize,
    /// Achieved jobs/s, (n - 1) / (last - first admission).
    pub achieved_rate: f64,
    /// Achieved / configured.
    pub ratio: f64,
    /// The window the maximum is taken over, s.
    pub window_s: f64,
    /// The most admissions the limiter allows in any window (`count + burst - 1`).
    pub bound: u32,
    /// The provider's limit per window, when there is one (quota scenario).
    pub quota: Option<u32>,
    /// Achieved rate / the provider's quota rate (utilisation of the quota).
    pub quota_share: Option<f64>,
    /// Most admissions in any window (Redis clock).
    pub max_in_window: usize,
    /// Most handler starts in any window (monotonic clock; what the provider would see).
    pub max_starts_in_window: usize,
    /// Most admissions in any tenth of the window (how smoothly tokens are spread).
    pub max_in_tenth: usize,
}

/// Figures of one concurrency budget.
#[derive(Debug, Clone, Serialize)]
pub struct SlotFigures {
    /// Budget.
    pub budget: String,
    /// Limit.
    pub limit: u32,
    /// Jobs run.
    pub jobs: usize,
    /// Jobs/s.
    pub jobs_per_s: f64,
    /// Most slots held at once, sampled from Redis.
    pub max_sampled: u64,
    /// Samples taken.
    pub samples: u64,
    /// Most handlers running at once.
    pub max_running: usize,
    /// Mean handlers running (handler time / span).
    pub mean_running: f64,
    /// Mean slots held in the samples.
    pub mean_sampled: f64,
}

fn rate_figures(budget: &str, limit: Limit, quota: Option<u32>, recs: &[&Rec]) -> Option<RateFigures> {
    let Limit::Rate { count, per, burst } = limit else { return None };
    let (adm, start) = times(recs);
    let configured_rate = f64::from(count) / per.as_secs_f64();
    let achieved = rate_of(&adm)?;
    let w = per.as_secs_f64();
    Some(RateFigures {
        budget: budget.to_owned(),
        configured: format!("{count} / {} s, burst {burst}", per.as_secs_f64()),
        configured_rate,
        admitted: adm.len(),
        achieved_rate: achieved,
        ratio: achieved / configured_rate,
        window_s: w,
        bound: count + burst.max(1) - 1,
        quota,
        quota_share: quota.map(|q| achieved / (f64::from(q) / w)),
        max_in_window: max_in_window(&adm, w),
        max_starts_in_window: max_in_window(&start, w),
        max_in_tenth: max_in_window(&adm, w / 10.0),
    })
}

// ------------------------------------------------------------------------------------------
// Driver

/// Results of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitsResults {
    /// Machine and software.
    pub env: BTreeMap<String, String>,
    /// Options.
    pub config: serde_json::Value,
    /// Rate budgets measured (quota and fast scenarios).
    pub rates: Vec<RateFigures>,
    /// Concurrency budgets measured.
    pub slots: Vec<SlotFigures>,
    /// Scenario wall times and job counts.
    pub scenarios: Vec<serde_json::Value>,
}

struct Run<'a> {
    args: &'a LimitsArgs,
    exe: &'a Path,
    redis_url: &'a str,
    db_url: &'a str,
}

/// Deterministic pseudo-random holds (xorshift), so every run offers the same work.
fn holds(seed: u64) -> impl FnMut(u32, u32) -> u32 {
    let mut x = seed | 1;
    move |lo, hi| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lo + (x % u64::from(hi - lo + 1)) as u32
    }
}

impl Run<'_> {
    async fn queue(&self, name: &str) -> anyhow::Result<Queue> {
        Ok(Queue::connect(QueueConfig::new(self.redis_url, name).with_prefix(PREFIX)).await?)
    }

    /// Runs the workers on `queue` for `seconds`, sampling `sample` (a concurrency budget)
    /// meanwhile; returns every record and the samples (max, mean, count).
    async fn drive(
        &self,
        queue: &Queue,
        seconds: f64,
        sample: Option<&str>,
    ) -> anyhow::Result<(Vec<Rec>, (u64, f64, u64), f64)> {
        let name = queue.config().name.clone();
        let argv: Vec<String> = vec![
            "worker".into(),
            "--redis-url".into(),
            self.redis_url.into(),
            "--queue".into(),
            name.clone(),
            "--database-url".into(),
            self.db_url.into(),
            "--concurrency".into(),
            self.args.concurrency.to_string(),
        ];
        let dir = self.args.run_dir.join(format!("{name}-{}", std::process::id()));
        let mut ws: Children<LimitsFinal> = Children::start(self.exe, &argv, self.args.procs, &dir)?;
        let res = async {
            ws.wait_ready(Duration::from_secs(60)).await?;
            ws.go().await?;
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs_f64(seconds);
            let (mut max, mut sum, mut n) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                match sample {
                    Some(b) => {
                        let v = queue.slots_in_use(b).await?;
                        max = max.max(v);
                        sum += v;
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            anyhow::Ok((
                (max, if n > 0 { sum as f64 / n as f64 } else { 0.0 }, n),
                t0.elapsed().as_secs_f64(),
            ))
        }
        .await;
        let finals = ws.stop().await;
        let (samples, secs) = res?;
        if finals.len() != self.args.procs {
            anyhow::bail!("{} of {} workers reported; see {}", finals.len(), self.args.procs, dir.display());
        }
        let recs: Vec<Rec> = finals.into_iter().flat_map(|f| f.records).collect();
        // Every record, for a closer look than the tables.
        std::fs::write(dir.join("records.json"), serde_json::to_vec(&recs)?)?;
        Ok((recs, samples, secs))
    }

    async fn quota(&self, out: &mut LimitsResults) -> anyhow::Result<()> {
        let queue = self.queue("quota").await?;
        let rows = crm_jobs::limits::defaults();
        crm_jobs::limits::apply(&queue, &rows).await?;
        let seeded = rows
            .iter()
            .find(|r| r.budget == "r:account:hubspot:*")
            .map(|r| r.limit)
            .context("no HubSpot seed")?;
        let Limit::Rate { count, per, .. } = seeded else { anyhow::bail!("HubSpot seed is not a rate") };
        let tenant_limit = match rows.iter().find(|r| r.budget == "c:tenant:hubspot:*").map(|r| r.limit) {
            Some(Limit::Concurrency(n)) => n,
            _ => anyhow::bail!("no HubSpot tenant concurrency seed"),
        };
        // A backlog that outlasts the run: 1.5 x what the rate admits, plus the burst.
        let per_account = (f64::from(count) / per.as_secs_f64() * self.args.quota_seconds * 1.5) as u64 + 20;
        let mut hold = holds(7);
        let mut targets = Vec::new();
        let mut jobs = Vec::new();
        for a in 0..self.args.accounts {
            let t = JobTarget {
                tenant: format!("tenant-{a}"),
                provider: Provider::Hubspot,
                connection: uuid::Uuid::new_v4(),
                account: format!("{}", 20_000_001 + a),
            };
            let lane = crm_jobs::enqueue::lane(&t, Priority::High);
            for i in 0..per_account {
                jobs.push(NewJob::json(
                    "crm.action",
                    lane.clone(),
                    &LimitJob { seq: i, group: a, hold_ms: hold(50, 150) },
                )?);
            }
            targets.push(t);
        }
        queue.push_bulk(jobs).await?;
        eprintln!(
            "[bench] quota: {} HubSpot accounts x {per_account} jobs, seed {:?}, {} s",
            self.args.accounts, seeded, self.args.quota_seconds
        );
        let (recs, _, secs) = self.drive(&queue, self.args.quota_seconds, None).await?;
        for (a, t) in targets.iter().enumerate() {
            let mine: Vec<&Rec> = recs.iter().filter(|r| r.g == a as u32).collect();
            let budget = crm_jobs::enqueue::budget::rate(t.provider, &t.account);
            if let Some(f) = rate_figures(&budget, seeded, Some(100), &mine) {
                out.rates.push(f);
            }
            // The tenant's concurrency budget as the provider would see it.
            let iv: Vec<(u64, u64)> = mine.iter().map(|r| (r.s, r.e)).collect();
            out.slots.push(SlotFigures {
                budget: crm_jobs::enqueue::budget::tenant(t.provider, &t.tenant),
                limit: tenant_limit,
                jobs: mine.len(),
                jobs_per_s: mine.len() as f64 / secs,
                max_sampled: 0,
                samples: 0,
                max_running: max_overlap(&iv),
                mean_running: iv.iter().map(|(s, e)| (e - s) as f64 / 1e9).sum::<f64>() / secs,
                mean_sampled: 0.0,
            });
        }
        out.scenarios.push(serde_json::json!({ "scenario": "quota", "seconds": secs, "jobs": recs.len() }));
        queue.destroy().await?;
        Ok(())
    }

    async fn slots(&self, out: &mut LimitsResults) -> anyhow::Result<()> {
        let queue = self.queue("slots").await?;
        let budget = "c:bench:slots";
        let limit = self.args.slot_limit;
        queue.set_limit(budget, Limit::Concurrency(limit)).await?;
        // ~15 ms per job on average: the backlog outlasts the run at 1.5 x the budget's pace.
        let n = (f64::from(limit) / 0.015 * self.args.slots_seconds * 1.5) as u64;
        let mut hold = holds(11);
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| {
                let g = (i % 5) as u32;
                let lane = Lane::new("bench", format!("lane-{g}"), Priority::Normal).budget(budget);
                NewJob::json("bench.slot", lane, &LimitJob { seq: i, group: g, hold_ms: hold(5, 25) })
            })
            .collect::<Result<_, _>>()?;
        queue.push_bulk(jobs).await?;
        eprintln!(
            "[bench] slots: {budget} limit {limit}, 5 lanes, {n} jobs of 5-25 ms, {} s",
            self.args.slots_seconds
        );
        let (recs, (max, mean, samples), secs) =
            self.drive(&queue, self.args.slots_seconds, Some(budget)).await?;
        let iv: Vec<(u64, u64)> = recs.iter().map(|r| (r.s, r.e)).collect();
        let span = match (iv.iter().map(|x| x.0).min(), iv.iter().map(|x| x.1).max()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => secs,
        };
        out.slots.push(SlotFigures {
            budget: budget.to_owned(),
            limit,
            jobs: recs.len(),
            jobs_per_s: recs.len() as f64 / span,
            max_sampled: max,
            samples,
            max_running: max_overlap(&iv),
            mean_running: iv.iter().map(|(s, e)| (e - s) as f64 / 1e9).sum::<f64>() / span,
            mean_sampled: mean,
        });
        out.scenarios.push(serde_json::json!({ "scenario": "slots", "seconds": secs, "jobs": recs.len() }));
        queue.destroy().await?;
        Ok(())
    }

    async fn fast(&self, rate: u32, out: &mut LimitsResults) -> anyhow::Result<()> {
        let queue = self.queue(&format!("fast{rate}")).await?;
        let budget = format!("r:bench:fast{rate}");
        let limit = Limit::Rate { count: rate, per: Duration::from_secs(1), burst: 1 };
        queue.set_limit(&budget, limit).await?;
        let n = (f64::from(rate) * self.args.fast_seconds * 1.5) as u64 + 10;
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| {
                let g = (i % 5) as u32;
                let lane = Lane::new("bench", format!("lane-{g}"), Priority::Normal).budget(&budget);
                NewJob::json("bench.fast", lane, &LimitJob { seq: i, group: g, hold_ms: 0 })
            })
            .collect::<Result<_, _>>()?;
        queue.push_bulk(jobs).await?;
        eprintln!("[bench] fast: {budget} {limit:?}, 5 lanes, {n} no-op jobs, {} s", self.args.fast_seconds);
        let (recs, _, secs) = self.drive(&queue, self.args.fast_seconds, None).await?;
        let all: Vec<&Rec> = recs.iter().collect();
        if let Some(f) = rate_figures(&budget, limit, None, &all) {
            out.rates.push(f);
        }
        out.scenarios.push(
            serde_json::json!({ "scenario": format!("fast{rate}"), "seconds": secs, "jobs": recs.len() }),
        );
        queue.destroy().await?;
        Ok(())
    }
}

/// Runs the benchmark and prints its tables.
pub async fn run(mut args: LimitsArgs) -> anyhow::Result<()> {
    if args.quick {
        args.quota_seconds = 20.0;
        args.slots_seconds = 5.0;
        args.fast_seconds = 5.0;
    }
    require_release(args.allow_debug)?;
    let infra = Infra::start(
        RedisChoice::Start(None),
        &args.run_dir,
        &args.database_url,
        "crm_bench_limits",
        Some("crm-bench-limits"),
    )
    .await?;
    let outcome = until_interrupted(async {
        let run = Run { args: &args, exe: infra.exe()?, redis_url: &infra.redis_url, db_url: &infra.db.url };
        let mut res = LimitsResults {
            env: super::procs::machine(),
            config: serde_json::to_value(&args)?,
            ..Default::default()
        };
        let skip = |s: &str| args.skip.iter().any(|x| x == s);
        if !skip("quota") {
            run.quota(&mut res).await?;
        }
        if !skip("slots") {
            run.slots(&mut res).await?;
        }
        if !skip("fast") {
            for &rate in &args.fast_rates {
                run.fast(rate, &mut res).await?;
            }
        }
        anyhow::Ok(res)
    })
    .await;
    infra.stop().await;
    let res = outcome?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&res)?)?;
    println!("{}", render(&res));
    eprintln!("[bench] results: {}", args.out.display());
    Ok(())
}

/// The Markdown tables of a run.
pub fn render(res: &LimitsResults) -> String {
    let mut out = vec![
        "| Rate budget | configured | admitted | achieved jobs/s | achieved / configured | window | most admitted in any window (Redis clock) | most handler starts in any window | limiter bound (count + burst - 1) | provider quota per window | achieved / quota | most in any tenth of the window |".to_owned(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for r in &res.rates {
        out.push(format!(
            "| `{}` | {} | {} | {:.3} | {:.3} | {} s | {} | {} | {} | {} | {} | {} |",
            r.budget,
            r.configured,
            fmt(r.admitted as f64, 0),
            r.achieved_rate,
            r.ratio,
            r.window_s,
            r.max_in_window,
            r.max_starts_in_window,
            r.bound,
            r.quota.map(|q| q.to_string()).unwrap_or_else(|| "—".into()),
            r.quota_share.map(|q| format!("{q:.3}")).unwrap_or_else(|| "—".into()),
            r.max_in_tenth,
        ));
    }
    out.push(String::new());
    out.push("| Concurrency budget | limit | jobs | jobs/s | most slots held (sampled from Redis) | samples | most handlers running at once | mean handlers running | mean slots held (samples) |".to_owned());
    out.push("|---|---|---|---|---|---|---|---|---|".to_owned());
    for s in &res.slots {
        let sampled = s.samples > 0;
        out.push(format!(
            "| `{}` | {} | {} | {:.1} | {} | {} | {} | {:.2} | {} |",
            s.budget,
            s.limit,
            fmt(s.jobs as f64, 0),
            s.jobs_per_s,
            if sampled { s.max_sampled.to_string() } else { "—".into() },
            if sampled { fmt(s.samples as f64, 0) } else { "—".into() },
            s.max_running,
            s.mean_running,
            if sampled { format!("{:.2}", s.mean_sampled) } else { "—".into() },
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_half_open() {
        let t = [0.0, 0.5, 1.0, 1.5, 2.0];
        assert_eq!(max_in_window(&t, 1.0), 2);
        assert_eq!(max_in_window(&t, 1.01), 3);
        assert_eq!(max_in_window(&[], 1.0), 0);
    }

    #[test]
    fn overlaps_count_touching_intervals_once() {
        assert_eq!(max_overlap(&[(0, 10), (10, 20), (5, 15)]), 2);
        assert_eq!(max_overlap(&[(0, 10), (1, 9), (2, 8)]), 3);
        assert_eq!(max_overlap(&[]), 0);
    }

    #[test]
    fn rates_span_first_to_last() {
        assert_eq!(rate_of(&[0.0, 1.0, 2.0]), Some(1.0));
        assert_eq!(rate_of(&[1.0]), None);
    }
}
