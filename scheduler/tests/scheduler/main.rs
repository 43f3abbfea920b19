//! Integration tests of crm-scheduler (one binary, modules per area) against real
//! PostgreSQL and Redis; the failover test runs real `crm-scheduler` processes.

mod api;
mod cli;
mod conflicts;
mod failover;
mod freshness;
mod lease;
mod support;
mod ticks;
