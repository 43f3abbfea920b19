//! A worker process for the queue's own integration tests and benchmarks: it runs real apalis
//! workers on our backend with job behaviours chosen by the payload (succeed, sleep, fail N
//! times, crash the process, panic), and records every execution start in a Redis list so
//! tests can count runs per job. Not shipped; `crm-worker` is the product binary.
//!
//! Usage: `crm-queue-testworker --redis URL --database-url URL --prefix P --queue Q
//!         [--concurrency N] [--lease-ms N] [--grace-ms N] [--poison N] [--retry-base-ms N]
//!         [--retry-max-ms N] [--jitter full|equal|none]`
//! It prints `ready <worker id>` on stdout once consuming, and exits 0 after SIGTERM/SIGINT.

use std::collections::HashMap;
use std::time::Duration;

use apalis_core::monitor::Monitor;
use apalis_core::task::attempt::Attempt;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::builder::WorkerBuilder;
use crm_queue::{
    Consumer, ConsumerConfig, Jitter, JobError, PgDeadLetters, Queue, QueueConfig, RetryPolicies, RetryPolicy,
};
use redis::aio::ConnectionManager;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum TestJob {
    Noop { record: Option<String> },
    Sleep { ms: u64, record: Option<String> },
    FailTimes { times: u32, record: Option<String>, retry_after_ms: Option<u64> },
    Permanent { record: Option<String> },
    Crash { record: Option<String> },
    Panic { record: Option<String> },
}

impl TestJob {
    fn record_key(&self) -> Option<&str> {
        match self {
            Self::Noop { record }
            | Self::Sleep { record, .. }
            | Self::FailTimes { record, .. }
            | Self::Permanent { record }
            | Self::Crash { record }
            | Self::Panic { record } => record.as_deref(),
        }
    }
}

#[derive(Clone)]
struct Ctx {
    redis: ConnectionManager,
    worker: String,
}

async fn handle(job: TestJob, id: TaskId, attempt: Attempt, ctx: Data<Ctx>) -> Result<(), JobError> {
    let attempt = attempt.current();
    if let Some(key) = job.record_key() {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = ctx.redis.clone();
        let entry = format!("start {id} {attempt} {} {now}", ctx.worker);
        let _: Result<(), _> = redis::cmd("RPUSH").arg(key).arg(entry).query_async(&mut conn).await;
    }
    match &job {
        TestJob::Noop { .. } => {}
        TestJob::Sleep { ms, .. } => tokio::time::sleep(Duration::from_millis(*ms)).await,
        TestJob::FailTimes { times, retry_after_ms, .. } => {
            if attempt as u32 <= *times {
                return Err(match retry_after_ms {
                    Some(ms) => {
                        JobError::retry_after(Duration::from_millis(*ms), "throttled", "told to wait")
                    }
                    None => JobError::transient("transient", format!("planned failure {attempt} of {times}")),
                });
            }
        }
        TestJob::Permanent { .. } => {
            return Err(JobError::permanent("rejected", "planned permanent failure"));
        }
        TestJob::Crash { .. } => std::process::abort(),
        TestJob::Panic { .. } => panic!("planned panic"),
    }
    if let Some(key) = job.record_key() {
        let mut conn = ctx.redis.clone();
        let _: Result<(), _> = redis::cmd("RPUSH")
            .arg(key)
            .arg(format!("done {id} {attempt} {}", ctx.worker))
            .query_async(&mut conn)
            .await;
    }
    Ok(())
}

fn args() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if let (Some(name), Some(v)) = (k.strip_prefix("--"), it.next()) {
            out.insert(name.to_owned(), v);
        }
    }
    out
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber_init();
    let a = args();
    let get = |k: &str| a.get(k).cloned().ok_or_else(|| format!("missing --{k}"));
    let num = |k: &str, d: u64| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut config = QueueConfig::new(get("redis")?, get("queue")?).with_prefix(get("prefix")?);
    config = config.with_lease_ttl(Duration::from_millis(num("lease-ms", 20_000)));
    config.reap_interval = Duration::from_millis(num("reap-ms", 500));
    config.poison_limit = num("poison", 3) as u32;
    config.dying_grace = Duration::from_millis(num("dying-grace-ms", 5_000));
    let grace = Duration::from_millis(num("grace-ms", 10_000));
    let queue = Queue::connect(config).await?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&get("database-url")?).await?;
    let target = redis::Client::open(get("redis")?.split(',').next().unwrap_or_default())?;
    let redis = target.get_connection_manager().await?;
    let mut consumer_config = ConsumerConfig::new("testworker", num("concurrency", 10) as usize);
    let jitter = match a.get("jitter").map(String::as_str) {
        Some("equal") => Jitter::Equal,
        Some("none") => Jitter::None,
        _ => Jitter::Full,
    };
    consumer_config.retry = RetryPolicies::new(RetryPolicy {
        base: Duration::from_millis(num("retry-base-ms", 1_000)),
        max: Duration::from_millis(num("retry-max-ms", 600_000)),
        jitter,
    });
    let consumer = Consumer::start(
        queue.clone(),
        PgDeadLetters::new(pool, queue.config().name.clone()),
        consumer_config,
    );
    let ctx = Ctx { redis, worker: consumer.worker_id().to_owned() };
    println!("ready {}", consumer.worker_id());
    let c = consumer.clone();
    let monitor = Monitor::new()
        .register(move |_run| {
            WorkerBuilder::new(c.worker_id()).backend(c.backend::<TestJob>()).data(ctx.clone()).build(handle)
        })
        .shutdown_timeout(grace);
    if let Err(error) = monitor.run_with_signal(shutdown_signal()).await {
        eprintln!("monitor: {error}");
    }
    consumer.shutdown().await;
    Ok(())
}

fn tracing_subscriber_init() {
    // The test worker logs to stderr only when asked (RUST_LOG), to keep test output small.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).try_init();
    }
}
