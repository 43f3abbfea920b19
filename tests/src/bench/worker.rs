//! The worker process (`crm-bench-queue worker`, hidden): real apalis workers on one system's
//! backend with a no-op handler that only records timestamps.
//!
//! It follows the protocol of [`super::children`]: the worker connects everything (Redis,
//! PostgreSQL for our dead letters; the apalis worker and backend are built but not run) and
//! says `ready`; only on `go` does the apalis `Monitor` run, so start-up is not measured. Its
//! final report ([`WorkerFinal`]) holds the count, the first handler start, the last handler end
//! and, when asked, every job's latency (handler start minus the enqueue time in the payload).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, PollSnapshot, PollStrategy};
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_redis::RedisStorage;
use crm_queue::Queue;
use serde::{Deserialize, Serialize};
use tower::limit::ConcurrencyLimitLayer;

use super::children::{our_consumer, read_control, say, serve};
use super::payload::{Payload, now_ns};
use super::systems::{Poller, System, Target};

/// Handler-side statistics of one worker process.
#[derive(Debug, Default)]
pub struct Stats {
    count: Arc<AtomicU64>,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// Latency samples in microseconds (W3 only). A std mutex: the handler holds it for one
    /// push, negligible next to a Redis round trip.
    latencies_us: Option<Mutex<Vec<u32>>>,
}

impl Stats {
    fn new(latency: bool) -> Self {
        Self { latencies_us: latency.then(Default::default), ..Default::default() }
    }

    /// Called first thing in the handler with the payload's enqueue time.
    fn start(&self, enqueued_s: f64) {
        let t = now_ns();
        let _ = self.first_ns.compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire);
        if let Some(lat) = &self.latencies_us {
            let us = (t as f64 / 1e3 - enqueued_s * 1e6).max(0.0);
            if let Ok(mut v) = lat.lock() {
                v.push(us.min(u32::MAX as f64) as u32);
            }
        }
    }

    /// Called last thing in the handler.
    fn end(&self) {
        self.last_ns.fetch_max(now_ns(), Ordering::AcqRel);
        self.count.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a worker reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerFinal {
    /// Jobs handled.
    pub count: u64,
    /// First handler start, seconds on `CLOCK_MONOTONIC` (0 if none).
    pub first: f64,
    /// Last handler end, seconds on `CLOCK_MONOTONIC`.
    pub last: f64,
    /// Latency samples, microseconds (W3 only).
    pub lat_us: Vec<u32>,
    /// The worker's id or name.
    pub worker: String,
}

/// The no-op job: records its start and end, nothing else.
async fn handle(job: Payload, stats: Data<Arc<Stats>>) -> Result<(), BoxDynError> {
    stats.start(job.ts);
    stats.end();
    Ok(())
}

/// apalis-core's `IntervalStrategy` with its lost wake-up fixed. The stock strategy replaces
/// its expired timer with a new one but does not poll it, so nothing registers a waker; when
/// the fetch the expiry triggered completes in the same poll (and finds nothing), the worker
/// sleeps until its next heartbeat (30 s by default): in our W3 runs with the stock strategy
/// almost every job waited ~27 s. This strategy polls the new timer at once, which is the
/// whole difference. Selected with `--apalis-poller fixed` (the default); `stock` uses
/// `BackendExt::poll_with_interval` as shipped.
#[derive(Debug)]
pub struct RearmingInterval {
    interval: Duration,
    delay: Option<apalis_core::timer::Delay>,
}

impl RearmingInterval {
    /// Polls every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, delay: None }
    }
}

impl PollStrategy for RearmingInterval {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let interval = self.interval;
        let delay = self.delay.get_or_insert_with(|| apalis_core::timer::Delay::new(interval));
        match Pin::new(delay).poll(cx) {
            Poll::Ready(()) => {
                let mut next = apalis_core::timer::Delay::new(interval);
                // Register the waker now: this is what the stock strategy misses.
                let _ = Pin::new(&mut next).poll(cx);
                self.delay = Some(next);
                Poll::Ready(Some(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The poll strategy of an apalis-redis worker: apalis-core's `IntervalStrategy` as shipped
/// (what `poll_with_interval` uses) or [`RearmingInterval`].
#[derive(Debug)]
pub enum BenchPoll {
    /// As shipped.
    Stock(IntervalStrategy),
    /// With the lost wake-up fixed.
    Fixed(RearmingInterval),
}

impl BenchPoll {
    /// The strategy `poller` names, polling every `interval`.
    pub fn new(poller: Poller, interval: Duration) -> Self {
        match poller {
            Poller::Stock => Self::Stock(IntervalStrategy::new(interval)),
            Poller::Fixed => Self::Fixed(RearmingInterval::new(interval)),
        }
    }
}

impl PollStrategy for BenchPoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, snapshot: &PollSnapshot) -> Poll<Option<()>> {
        match self {
            Self::Stock(s) => s.poll_drive(cx, snapshot),
            Self::Fixed(s) => s.poll_drive(cx, snapshot),
        }
    }
}

/// Runs a worker process of `system` with `concurrency` jobs at once.
pub async fn run(
    system: System,
    target: &Target,
    database_url: &str,
    concurrency: usize,
    latency: bool,
) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::new(latency));
    let control = read_control();
    let s = stats.clone();
    let worker_name = match system {
        System::Ours => {
            let queue = Queue::connect(target.our_config()).await.context("connect our queue")?;
            let consumer = our_consumer(queue, database_url, "bench", concurrency).await?;
            let c = consumer.clone();
            let monitor = Monitor::new().register(move |_run| {
                WorkerBuilder::new(c.worker_id())
                    .backend(c.backend::<Payload>())
                    .data(s.clone())
                    .build(handle)
            });
            let name = consumer.worker_id().to_owned();
            serve(monitor, control, stats.count.clone(), Some(consumer)).await;
            name
        }
        System::ApalisRedis | System::ApalisRedisNoLock => {
            let conn = target.apalis_connection().await?;
            let storage = RedisStorage::<Payload>::new(conn).with_config(target.apalis_config(system));
            let poll = Duration::from_millis(target.tuning.apalis_poll_ms.max(1));
            let poller = target.tuning.apalis_poller;
            // A unique name per process: apalis-redis refuses a name that heartbeated recently.
            let name = format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>());
            let n = name.clone();
            let monitor = Monitor::new().register(move |run| {
                WorkerBuilder::new(format!("{n}-{run}"))
                    .backend(storage.clone().poll_with_strategy(BenchPoll::new(poller, poll)))
                    .data(s.clone())
                    .layer(ConcurrencyLimitLayer::new(concurrency))
                    .build(handle)
            });
            serve(monitor, control, stats.count.clone(), None).await;
            name
        }
    };
    let fin = WorkerFinal {
        count: stats.count.load(Ordering::Acquire),
        first: stats.first_ns.load(Ordering::Acquire) as f64 / 1e9,
        last: stats.last_ns.load(Ordering::Acquire) as f64 / 1e9,
        lat_us: stats
            .latencies_us
            .as_ref()
            .and_then(|l| l.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default(),
        worker: worker_name,
    };
    say(&serde_json::to_string(&fin)?);
    Ok(())
}
