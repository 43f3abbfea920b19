//! # crm-queue
//!
//! A durable, fleet-safe Redis backend for [apalis-core](apalis_core) workers. It knows nothing
//! of CRMs: jobs are opaque payloads in lanes named (queue, provider, partition, tenant); all
//! jobs of one lane need the same budgets.
//!
//! * **Lanes and admission.** Ready jobs wait per lane. One fetch script serves lanes in
//!   weighted round-robin (stride scheduling) and hands out a job only if every budget its
//!   lane names has room (fleet-wide concurrency slots, GCRA rate tokens, pauses). A blocked
//!   lane leaves the ready set until a slot frees or its pause ends: no polling churn, no
//!   worker slot held, no attempt spent.
//! * **Leases with fencing.** A fetched job carries a lease id renewed by heartbeat; ack,
//!   retry and dead-letter present it, and a stale one is refused. Expired leases are reaped
//!   by any live worker, the attempt counted; a job orphaned too often is a poison pill.
//! * **Duplicates refused at push**: an id already queued, a unique key held by a queued or
//!   running job, or a dedupe decided before (a key within its TTL, or a stamp at or below its
//!   series' highest: a scheduler's ticks).
//! * **Retries** with exponential backoff and full jitter per job type; a Retry-After is
//!   honoured exactly; a deferral spends no attempt.
//! * **Dead letters** go to PostgreSQL with payload and every attempt, through a `dying`
//!   outbox, so a crash between Redis and PostgreSQL loses nothing.
//! * **Cluster-ready.** Every key carries the queue's hash tag; there are no global keys.
//!
//! See `docs/ARCHITECTURE.md` for the key layout and the job state machine.

pub mod backend;
pub mod client;
pub mod completion;
pub mod config;
pub mod conn;
pub mod consumer;
pub mod dead_letter;
pub mod error;
pub mod held;
pub mod job;
pub mod keys;
mod maintenance;
mod reply;
pub mod retry;
mod scripts;

pub use backend::{JobHandle, RedisBackend};
pub use client::{InJobToken, JobInfo, Limit, Queue, QueueStats, ReapReport};
pub use config::QueueConfig;
pub use conn::{RedisConn, RedisTarget};
pub use consumer::{ACK_FLUSH, Completion, Consumer, ConsumerConfig, worker_id};
pub use dead_letter::PgDeadLetters;
pub use error::{FailureKind, JobError, QueueError};
pub use held::Held;
pub use job::{
    AttemptRecord, DeadReason, Dedupe, DyingJob, JobId, JobMeta, Lane, Lease, LeasedJob, NewJob, Priority,
    PushOutcome,
};
pub use retry::{Jitter, RetryPolicies, RetryPolicy};
