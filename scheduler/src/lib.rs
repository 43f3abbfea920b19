//! # crm-scheduler
//!
//! The scheduler process and the operator CLI as a library, so tests run the real wiring.
//! `crm-scheduler` reads per-tenant sync schedules from PostgreSQL, enqueues sync jobs, and
//! serves the control-plane HTTP API; `crmctl` is the operator's command line.

pub mod api;
pub mod cli;
pub mod demo;
pub mod schedule;
pub mod server;
