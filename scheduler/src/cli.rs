//! `crmctl`, the operator CLI. Each subcommand is a function over typed arguments; output is a
//! table by default and JSON with `--json`. Exit codes: 0 success, 1 a failed operation,
//! 64 bad configuration or usage.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "crmctl", version, about = "Operate a crm-fleet deployment.")]
pub struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true, default_value = "")]
    pub database_url: String,
    /// Redis URL, or a comma-separated list of Redis Cluster nodes.
    #[arg(long, env = "REDIS_URL", global = true, default_value = "")]
    pub redis_url: String,
    /// Queue name.
    #[arg(long, env = "CRM_FLEET_QUEUE", global = true, default_value = crm_jobs::job::DEFAULT_QUEUE)]
    pub queue: String,
    /// Redis key prefix.
    #[arg(long, env = "CRM_FLEET_REDIS_PREFIX", global = true, default_value = crm_queue::config::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Show queue depth, age, workers, limits and pauses.
    Queues,
}

fn require(value: &str, name: &str) -> anyhow::Result<()> {
    if value.is_empty() {
        anyhow::bail!(
            "{name} is required (flag --{} or environment {name})",
            name.to_lowercase().replace('_', "-")
        );
    }
    Ok(())
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Migrate => {
            require(&cli.database_url, "DATABASE_URL")?;
            let pool = crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?;
            let n = crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
            if cli.json {
                println!("{}", serde_json::json!({ "applied": n }));
            } else {
                println!("migrations applied: {n}");
            }
            Ok(0)
        }
        Command::Queues => {
            require(&cli.redis_url, "REDIS_URL")?;
            let queue = crm_queue::Queue::connect(
                crm_queue::QueueConfig::new(&cli.redis_url, &cli.queue).with_prefix(&cli.redis_prefix),
            )
            .await?;
            let stats = queue.stats().await?;
            let workers = queue.workers().await?;
            let limits = queue.limits().await?;
            let pauses = queue.pauses().await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "queue": cli.queue, "stats": stats,
                        "workers": workers.iter().map(|(w, t)| serde_json::json!({"id": w, "last_seen_ms": t})).collect::<Vec<_>>(),
                        "limits": limits.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<std::collections::BTreeMap<_, _>>(),
                        "pauses": pauses,
                    })
                );
            } else {
                println!("queue {}", cli.queue);
                println!(
                    "  ready {:>10}   oldest ready {:>8.1}s",
                    stats.ready,
                    stats.oldest_ready_age_ms as f64 / 1000.0
                );
                println!(
                    "  delayed {:>8}   leased {:>10}   dying {:>6}",
                    stats.delayed, stats.leased, stats.dying
                );
                println!(
                    "  lanes: {} active, {} sleeping; {} budgets with blocked lanes",
                    stats.active_lanes, stats.sleeping_lanes, stats.blocked_budgets
                );
                println!("  workers ({}):", workers.len());
                for (w, t) in workers {
                    println!("    {w}  last seen {t}");
                }
                if !limits.is_empty() {
                    println!("  limits:");
                    let mut l: Vec<_> = limits.into_iter().collect();
                    l.sort_by(|a, b| a.0.cmp(&b.0));
                    for (k, v) in l {
                        println!("    {k:<40} {v:?}");
                    }
                }
                for (k, until) in pauses {
                    println!("  paused {k} until {until}");
                }
            }
            Ok(0)
        }
    }
}
