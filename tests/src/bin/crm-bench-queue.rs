//! `crm-bench-queue`: the queue benchmark. Measures no-op job throughput (W1 enqueue, W2
//! processing), enqueue→start latency (W3), peak worker RSS and Redis/CPU cost per job for our
//! `crm-queue` and for stock apalis-redis 1.0 in the same run, on a dedicated Redis it starts
//! itself, and prints the figures and their ratios. See `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p crm-fleet-tests --bin crm-bench-queue              # full run
//! cargo run --release -p crm-fleet-tests --bin crm-bench-queue -- --quick   # smoke run
//! ```
//!
//! The hidden subcommands `worker`, `enqueue` and `produce` are the processes the driver
//! spawns (this same binary).

use clap::{Parser, Subcommand};
use crm_fleet_tests::bench;

use bench::client::Kind;
use bench::driver::RunArgs;
use bench::systems::{System, Target};

/// Queue benchmark: crm-queue vs apalis-redis 1.0 (no-op jobs).
#[derive(Debug, Parser)]
#[command(name = "crm-bench-queue", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark (the default).
    Run(RunArgs),
    /// A worker process (spawned by the driver).
    #[command(hide = true)]
    Worker {
        /// System under test.
        #[arg(long)]
        system: System,
        #[command(flatten)]
        target: Target,
        /// PostgreSQL URL for our dead letters.
        #[arg(long)]
        database_url: String,
        /// Jobs run at once.
        #[arg(long, default_value_t = 25)]
        concurrency: usize,
        /// Record every job's latency.
        #[arg(long)]
        latency: bool,
    },
    /// A W1 client process (spawned by the driver).
    #[command(hide = true)]
    Enqueue {
        /// System under test.
        #[arg(long)]
        system: System,
        #[command(flatten)]
        target: Target,
        /// Jobs to enqueue.
        #[arg(long)]
        n: u64,
        /// One job per call or 1,000.
        #[arg(long)]
        kind: Kind,
    },
    /// A W3 producer process (spawned by the driver).
    #[command(hide = true)]
    Produce {
        /// System under test.
        #[arg(long)]
        system: System,
        #[command(flatten)]
        target: Target,
        /// Jobs per second.
        #[arg(long)]
        rate: f64,
        /// Seconds.
        #[arg(long)]
        duration: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => bench::driver::run(cli.run).await,
        Some(Cmd::Run(args)) => bench::driver::run(args).await,
        Some(Cmd::Worker { system, target, database_url, concurrency, latency }) => {
            bench::worker::run(system, &target, &database_url, concurrency, latency).await
        }
        Some(Cmd::Enqueue { system, target, n, kind }) => {
            let rep = bench::client::enqueue(system, &target, n, kind).await?;
            println!("{}", serde_json::to_string(&rep)?);
            Ok(())
        }
        Some(Cmd::Produce { system, target, rate, duration }) => {
            let rep = bench::client::produce(system, &target, rate, duration).await?;
            println!("{}", serde_json::to_string(&rep)?);
            Ok(())
        }
    }
}
