//! `crm-bench-limits`: precision of the fleet-wide budgets crm-queue's fetch enforces, with
//! several worker processes competing on a dedicated Redis: achieved rate against the
//! configured one, the most admissions in any window, the most concurrency slots held against
//! the limit. See `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p crm-fleet-tests --bin crm-bench-limits              # full run (~2 min)
//! cargo run --release -p crm-fleet-tests --bin crm-bench-limits -- --quick   # smoke run
//! ```
//!
//! The hidden subcommand `worker` is the process the driver spawns (this same binary).

use clap::{Parser, Subcommand};
use crm_fleet_tests::bench::limits::{LimitsArgs, run, worker};

/// Limiter precision benchmark.
#[derive(Debug, Parser)]
#[command(name = "crm-bench-limits", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: LimitsArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A worker process (spawned by the driver).
    #[command(hide = true)]
    Worker {
        /// Redis URL of the dedicated server.
        #[arg(long)]
        redis_url: String,
        /// Queue name.
        #[arg(long)]
        queue: String,
        /// PostgreSQL URL for the consumer's dead letters.
        #[arg(long)]
        database_url: String,
        /// Jobs run at once.
        #[arg(long)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => run(cli.run).await,
        Some(Cmd::Worker { redis_url, queue, database_url, concurrency }) => {
            worker(&redis_url, &queue, &database_url, concurrency).await
        }
    }
}
