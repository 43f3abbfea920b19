//! # crm-jobs
//!
//! Everything crm-fleet does with CRM data, as a library the binaries wire up: the job types
//! the queue carries, their handlers, and the storage they share. Provider clients, the OAuth
//! token lifecycle, the sync engine and the action executor live here as they are built.
//!
//! Invariants: job handlers never sleep or retry on their own (the queue owns retry policy);
//! every handler error is a [`crm_queue::JobError`] that carries its decision.

pub mod actions;
pub mod auth;
pub mod config;
pub mod dlq;
pub mod dlq_retention;
pub mod enqueue;
pub mod fleet_gauges;
pub mod job;
pub mod limits;
pub mod ops;
pub mod periodic;
pub mod providers;
pub mod sandbox_link;
pub mod storage;
pub mod sync;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
