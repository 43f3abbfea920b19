//! `crm-bench-sync`: records/s of a full sync of 100,000 contacts from the in-process sandbox
//! into a scratch PostgreSQL database through the real sync engine, and of its fetch and
//! ingest halves on their own. See `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p crm-fleet-tests --bin crm-bench-sync              # full run
//! cargo run --release -p crm-fleet-tests --bin crm-bench-sync -- --quick   # smoke run
//! ```

use clap::Parser as _;
use crm_fleet_tests::bench::sync::{SyncArgs, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(SyncArgs::parse()).await
}
