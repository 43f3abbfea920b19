//! The queues under test and how a producer talks to each: our `crm-queue` and stock
//! apalis-redis 1.0, with the settings each is benchmarked with.
//!
//! * **ours**: `crm_queue::Queue`, key prefix `crmbench`, default timings (lease 20 s,
//!   heartbeat 5 s, reap 1 s, promote 200 ms), no budgets, jobs spread over `--lanes` lanes
//!   (default 50: the payloads' 1,000 tenants, one lane per 20 tenants), priority `High`
//!   (the payload is an outbound action), job type `crm.create_task`, max attempts 10.
//! * **apalis-redis**: `RedisStorage<Payload>` over a `ConnectionManager` with a 5 s response
//!   timeout (the stock 500 ms kills workers on a stall; see `/work/shared/research/apalis.md`),
//!   `batch_size` from `--apalis-batch`, default heartbeat, `lock_tasks`, `persist_results` and
//!   `emit_events` left on (turning `persist_results` off re-runs completed jobs, a known bug).
//!   Workers poll every `--apalis-poll-ms` and run under `ConcurrencyLimitLayer(concurrency)`
//!   (what `apalis::WorkerBuilder::concurrency` adds). The poll strategy is apalis-core's
//!   interval strategy with one fix (`--apalis-poller fixed`, see `worker::RearmingInterval`):
//!   the stock `poll_with_interval` loses its wake-up and leaves idle workers asleep until the
//!   next heartbeat; `--apalis-poller stock` measures it as shipped.
//! * **apalis-redis-nolock**: the same with `lock_tasks(false)`, the fastest setting the
//!   research probe found. With locking on, every job runs `acquire_leases.lua`, which marks
//!   its metadata `Running` and does `LREM <queue>:active 1 <id>`: the id already left that list
//!   at fetch (`LTRIM`), so the LREM scans the whole backlog for nothing, O(backlog) per job.
//!   Without locking the job stays in the worker's in-flight set (its lease for orphan
//!   recovery) but its metadata says `Pending` while it runs.

use std::time::Duration;

use anyhow::Context as _;
use apalis_core::backend::TaskSink;
use apalis_redis::RedisStorage;
use clap::ValueEnum;
use crm_queue::{Lane, NewJob, Priority, Queue, QueueConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::payload::{ACTION, PROVIDER, Payload, TENANTS};

/// Key prefix of our queue's keys (`crmbench:{queue}:...`).
pub const OUR_PREFIX: &str = "crmbench";
/// Prefix of apalis-redis queue names (`crmbench-apalis...:active`, ...).
pub const APALIS_PREFIX: &str = "crmbench-apalis";
/// Response timeout of the apalis-redis connections.
const APALIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A queue implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Serialize)]
pub enum System {
    /// Our crm-queue.
    #[value(name = "ours")]
    Ours,
    /// Stock apalis-redis 1.0.
    #[value(name = "apalis-redis")]
    ApalisRedis,
    /// apalis-redis 1.0 with `lock_tasks(false)`.
    #[value(name = "apalis-redis-nolock")]
    ApalisRedisNoLock,
}

impl System {
    /// The name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::ApalisRedis => "apalis-redis",
            Self::ApalisRedisNoLock => "apalis-redis-nolock",
        }
    }

    /// The label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "crm-queue (ours)",
            Self::ApalisRedis => "apalis-redis 1.0",
            Self::ApalisRedisNoLock => "apalis-redis 1.0, lock_tasks=false",
        }
    }

    /// The queue name this system's runs use.
    pub fn queue_name(self) -> String {
        match self {
            Self::Ours => "bench".to_owned(),
            Self::ApalisRedis => APALIS_PREFIX.to_owned(),
            Self::ApalisRedisNoLock => format!("{APALIS_PREFIX}-nolock"),
        }
    }

    /// Whether this is one of the apalis-redis variants.
    pub fn is_apalis(self) -> bool {
        !matches!(self, Self::Ours)
    }
}

/// How the systems are set up, the same for every process of a run (the driver's options,
/// passed on to every worker, enqueue and produce process).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Tuning {
    /// Lanes our jobs are spread over (the payloads cycle through 1,000 tenants; 50 = one lane
    /// per 20 tenants).
    #[arg(long, default_value_t = 50)]
    pub lanes: u64,
    /// apalis-redis `batch_size` (jobs per fetch).
    #[arg(long, default_value_t = 100)]
    pub apalis_batch: usize,
    /// apalis-redis poll interval, milliseconds.
    #[arg(long, default_value_t = 10)]
    pub apalis_poll_ms: u64,
    /// apalis-redis poll strategy: `fixed` (the interval strategy with its lost wake-up fixed)
    /// or `stock` (`poll_with_interval` as shipped).
    #[arg(long, value_enum, default_value_t = Poller::Fixed)]
    pub apalis_poller: Poller,
}

impl Tuning {
    /// The command-line arguments that reproduce these settings.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--lanes".into(),
            self.lanes.to_string(),
            "--apalis-batch".into(),
            self.apalis_batch.to_string(),
            "--apalis-poll-ms".into(),
            self.apalis_poll_ms.to_string(),
            "--apalis-poller".into(),
            match self.apalis_poller {
                Poller::Fixed => "fixed",
                Poller::Stock => "stock",
            }
            .into(),
        ]
    }
}

/// Where a system's queue lives and how it is configured; passed from the driver to every
/// worker, enqueue and produce process.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Target {
    /// Redis URL of the dedicated benchmark server.
    #[arg(long)]
    pub redis_url: String,
    /// Queue name.
    #[arg(long)]
    pub queue: String,
    /// The settings of the run.
    #[command(flatten)]
    #[serde(flatten)]
    pub tuning: Tuning,
}

/// How apalis-redis workers poll an empty queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Poller {
    /// An interval strategy that re-arms its timer correctly (see `worker::RearmingInterval`).
    Fixed,
    /// apalis-core's `poll_with_interval` as shipped (loses wake-ups; stalls until heartbeat).
    Stock,
}

impl Target {
    /// Our queue's configuration.
    pub fn our_config(&self) -> QueueConfig {
        QueueConfig::new(self.redis_url.clone(), self.queue.clone()).with_prefix(OUR_PREFIX)
    }

    /// apalis-redis configuration for `system`.
    pub fn apalis_config(&self, system: System) -> apalis_redis::Config {
        apalis_redis::Config::default()
            .queue(&self.queue)
            .batch_size(self.tuning.apalis_batch.max(1))
            .lock_tasks(system != System::ApalisRedisNoLock)
    }

    /// A connection for apalis-redis: a `ConnectionManager` with a 5 s response timeout.
    pub async fn apalis_connection(&self) -> anyhow::Result<ConnectionManager> {
        let client = redis::Client::open(self.redis_url.as_str()).context("apalis-redis: Redis URL")?;
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(APALIS_RESPONSE_TIMEOUT));
        client.get_connection_manager_with_config(config).await.context("apalis-redis: connect to Redis")
    }
}

/// Our job for a payload: lane `tg-NNNN` = tenant group of `TENANTS / lanes` tenants.
pub fn our_job(p: &Payload, lanes: u64) -> anyhow::Result<NewJob> {
    let group = (p.seq % TENANTS) * lanes.clamp(1, TENANTS) / TENANTS;
    let lane = Lane::new(PROVIDER, format!("tg-{group:04}"), Priority::High);
    Ok(NewJob::json(ACTION, lane, p)?)
}

/// The enqueuing side of a system.
pub enum Producer {
    /// Our queue.
    Ours {
        /// The queue handle.
        queue: Queue,
        /// Lanes to spread jobs over.
        lanes: u64,
    },
    /// apalis-redis (boxed: the storage is large next to our handle).
    Apalis(Box<RedisStorage<Payload>>),
}

impl Producer {
    /// Connects a producer of `system` to `target`.
    pub async fn connect(system: System, target: &Target) -> anyhow::Result<Self> {
        Ok(match system {
            System::Ours => Self::Ours {
                queue: Queue::connect(target.our_config()).await.context("connect our queue")?,
                lanes: target.tuning.lanes,
            },
            System::ApalisRedis | System::ApalisRedisNoLock => {
                let conn = target.apalis_connection().await?;
                Self::Apalis(Box::new(RedisStorage::new(conn).with_config(target.apalis_config(system))))
            }
        })
    }

    /// Enqueues one job with the system's single-job call.
    pub async fn push_one(&mut self, p: Payload) -> anyhow::Result<()> {
        match self {
            Self::Ours { queue, lanes } => {
                queue.push(our_job(&p, *lanes)?).await?;
            }
            Self::Apalis(storage) => {
                storage.push(p).await.map_err(|e| anyhow::anyhow!("apalis push: {e}"))?
            }
        }
        Ok(())
    }

    /// Enqueues a batch with the system's bulk call.
    pub async fn push_many(&mut self, ps: Vec<Payload>) -> anyhow::Result<()> {
        match self {
            Self::Ours { queue, lanes } => {
                let jobs = ps.iter().map(|p| our_job(p, *lanes)).collect::<anyhow::Result<Vec<_>>>()?;
                queue.push_bulk(jobs).await?;
            }
            Self::Apalis(storage) => {
                storage.push_bulk(ps).await.map_err(|e| anyhow::anyhow!("apalis push_bulk: {e}"))?
            }
        }
        Ok(())
    }
}
