//! The benchmarks (`crm-bench-queue`, `crm-bench-sync`, `crm-bench-limits`; see
//! `docs/benchmarks.md`) and what they share.
//!
//! Queue benchmark (no-op job throughput, enqueue→start latency and per-job costs of our
//! `crm-queue` and of stock apalis-redis 1.0, measured in one run with the peer benchmark's
//! methodology, `/work/shared/bench/peers`):
//! * [`driver`]: the workloads and measurements;
//! * [`worker`], [`client`]: the worker and producer processes the driver spawns;
//! * [`systems`]: the queues under test and their settings;
//! * [`payload`]: the ~200-byte job and the shared monotonic clock;
//! * [`report`]: results and tables.
//!
//! The other benchmarks: [`sync`] (sync ingest records/s) and [`limits`] (limiter precision).
//!
//! Shared: [`infra`] (a dedicated `redis-server`, a scratch database), [`children`] (worker
//! processes and their line protocol), [`procs`] (CPU, memory and machine load from `/proc`).

pub mod children;
pub mod client;
pub mod driver;
pub mod infra;
pub mod limits;
pub mod payload;
pub mod procs;
pub mod report;
pub mod sync;
pub mod systems;
pub mod worker;
