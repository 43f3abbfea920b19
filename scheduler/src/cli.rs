//! `crmctl`, the operator CLI. Each subcommand is a function over typed arguments; output is a
//! table by default and JSON with `--json`. Exit codes: 0 success, 1 a failed operation,
//! 64 bad configuration or usage.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crm_jobs::config::EXIT_CONFIG;
use crm_jobs::job::SyncMode;
use uuid::Uuid;

use crate::schedule::model::{FieldError, NewSchedule, Schedule, SchedulePatch, parse_objects};
use crate::schedule::store::{self, StoreError};
use crate::schedule::trigger::{self, TriggerError};

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
    /// Trigger syncs.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Manage sync schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
}

/// `crmctl sync …`
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Enqueue a sync of a connection now (one job per object; an object whose sync is
    /// already queued or running is reported as a duplicate).
    Now {
        /// The connection.
        #[arg(long)]
        connection: Uuid,
        /// Object to sync (repeatable): contact, company, deal. Default: all three.
        #[arg(long = "object")]
        objects: Vec<String>,
        /// A full sync instead of an incremental one.
        #[arg(long)]
        full: bool,
    },
}

/// `crmctl schedules …`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List schedules.
    List {
        /// Only this connection's.
        #[arg(long)]
        connection: Option<Uuid>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Create a schedule.
    Add(AddArgs),
    /// Change a schedule.
    Set(SetArgs),
    /// Disable a schedule (`set ID --enable` turns it back on).
    Disable {
        /// The schedule.
        id: Uuid,
    },
}

/// `crmctl schedules add`
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The connection to sync.
    #[arg(long)]
    pub connection: Uuid,
    /// Cron expression: 5 fields, or 6 with seconds first (quote it).
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[arg(long = "tz", default_value = "UTC")]
    pub time_zone: String,
    /// Object to sync (repeatable). Default: contact, company and deal.
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// While a sync is queued or running: skip | buffer_one.
    #[arg(long, default_value = "skip")]
    pub overlap: String,
    /// Ticks missed while no scheduler ran: skip | run_once | backfill.
    #[arg(long, default_value = "run_once")]
    pub missed: String,
    /// Ticks replayed at most under --missed backfill.
    #[arg(long, default_value_t = crate::schedule::model::DEFAULT_BACKFILL_LIMIT)]
    pub backfill_limit: u32,
    /// Spread: each tick fires up to this late (e.g. 30s, 500ms), fixed per schedule.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
}

/// `crmctl schedules set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The schedule.
    pub id: Uuid,
    /// New cron expression.
    #[arg(long)]
    pub cron: Option<String>,
    /// New time zone.
    #[arg(long = "tz")]
    pub time_zone: Option<String>,
    /// New objects (repeatable; replaces the list).
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// New overlap policy.
    #[arg(long)]
    pub overlap: Option<String>,
    /// New missed-tick policy.
    #[arg(long)]
    pub missed: Option<String>,
    /// New backfill limit.
    #[arg(long)]
    pub backfill_limit: Option<u32>,
    /// New jitter.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// Enable it.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable it.
    #[arg(long)]
    pub disable: bool,
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

/// The flag a validation error is about.
fn flag(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    match base {
        "time_zone" => "--tz".to_owned(),
        "objects" => "--object".to_owned(),
        "overlap_policy" => "--overlap".to_owned(),
        "missed_policy" => "--missed".to_owned(),
        "jitter_ms" => "--jitter".to_owned(),
        "connection_id" => "--connection".to_owned(),
        "body" => "arguments".to_owned(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// A usage error: printed, exit 64.
fn usage(e: &FieldError) -> i32 {
    eprintln!("crmctl: {}: {}", flag(&e.field), e.message);
    EXIT_CONFIG
}

fn jitter_ms(jitter: Option<Duration>) -> Result<Option<u32>, FieldError> {
    jitter
        .map(|d| u32::try_from(d.as_millis()).map_err(|_| FieldError::new("jitter_ms", "too long")))
        .transpose()
}

fn parsed<T: std::str::FromStr<Err = String>>(field: &str, v: &str) -> Result<T, FieldError> {
    v.parse().map_err(|e| FieldError::new(field, e))
}

async fn pool(cli: &Cli) -> anyhow::Result<sqlx::PgPool> {
    require(&cli.database_url, "DATABASE_URL")?;
    Ok(crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?)
}

fn print_schedules(json: bool, schedules: &[Schedule]) {
    if json {
        println!("{}", serde_json::json!(schedules));
        return;
    }
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "{:<36}  {:<36}  {:<20}  {:<16}  {:<16}  {:<3}  {:<10}  {:<12}  {:<19}  {:<19}",
        "ID",
        "CONNECTION",
        "OBJECTS",
        "CRON",
        "TZ",
        "ON",
        "OVERLAP",
        "MISSED",
        "LAST TICK (UTC)",
        "NEXT TICK (UTC)"
    );
    for s in schedules {
        let missed = match s.missed_policy {
            crate::schedule::model::MissedPolicy::Backfill => format!("backfill:{}", s.backfill_limit),
            m => m.as_str().to_owned(),
        };
        println!(
            "{:<36}  {:<36}  {:<20}  {:<16}  {:<16}  {:<3}  {:<10}  {:<12}  {:<19}  {:<19}",
            s.id,
            s.connection_id,
            s.objects.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(","),
            s.cron,
            s.time_zone,
            if s.enabled { "yes" } else { "no" },
            s.overlap_policy.as_str(),
            missed,
            time(s.last_tick_at),
            time(s.next_tick_at),
        );
    }
}

/// Maps a store error to an exit code, printing it.
fn store_failure(e: StoreError) -> anyhow::Result<i32> {
    match e {
        StoreError::Invalid(f) => Ok(usage(&f)),
        StoreError::ConnectionNotFound => Ok(usage(&FieldError::new("connection_id", "no such connection"))),
        StoreError::ScheduleNotFound => {
            eprintln!("crmctl: no such schedule");
            Ok(1)
        }
        StoreError::Db(e) => Err(e).context("database"),
    }
}

async fn schedules(cli: &Cli, command: &SchedulesCommand) -> anyhow::Result<i32> {
    let pool = pool(cli).await?;
    let result = match command {
        SchedulesCommand::List { connection, limit } => {
            let list = match store::list(&pool, *connection, None, *limit).await {
                Ok(l) => l,
                Err(e) => return store_failure(e),
            };
            print_schedules(cli.json, &list);
            return Ok(0);
        }
        SchedulesCommand::Add(a) => {
            let new = (|| -> Result<NewSchedule, FieldError> {
                let objects = if a.objects.is_empty() {
                    crm_jobs::providers::ObjectKind::ALL.to_vec()
                } else {
                    parse_objects("objects", &a.objects)?
                };
                NewSchedule {
                    connection_id: a.connection,
                    objects,
                    cron: a.cron.clone(),
                    time_zone: a.time_zone.clone(),
                    enabled: !a.disabled,
                    overlap_policy: parsed("overlap_policy", &a.overlap)?,
                    missed_policy: parsed("missed_policy", &a.missed)?,
                    backfill_limit: a.backfill_limit,
                    jitter_ms: jitter_ms(a.jitter)?.unwrap_or(0),
                }
                .validated()
            })();
            match new {
                Ok(new) => store::create(&pool, &new).await,
                Err(e) => return Ok(usage(&e)),
            }
        }
        SchedulesCommand::Set(a) => {
            let patch = (|| -> Result<SchedulePatch, FieldError> {
                let patch = SchedulePatch {
                    objects: if a.objects.is_empty() {
                        None
                    } else {
                        Some(parse_objects("objects", &a.objects)?)
                    },
                    cron: a.cron.clone(),
                    time_zone: a.time_zone.clone(),
                    enabled: if a.enable {
                        Some(true)
                    } else if a.disable {
                        Some(false)
                    } else {
                        None
                    },
                    overlap_policy: a.overlap.as_deref().map(|v| parsed("overlap_policy", v)).transpose()?,
                    missed_policy: a.missed.as_deref().map(|v| parsed("missed_policy", v)).transpose()?,
                    backfill_limit: a.backfill_limit,
                    jitter_ms: jitter_ms(a.jitter)?,
                };
                if patch.is_empty() {
                    return Err(FieldError::new("body", "nothing to change (give at least one option)"));
                }
                Ok(patch)
            })();
            match patch {
                Ok(patch) => store::update(&pool, a.id, &patch).await,
                Err(e) => return Ok(usage(&e)),
            }
        }
        SchedulesCommand::Disable { id } => {
            store::update(&pool, *id, &SchedulePatch { enabled: Some(false), ..SchedulePatch::default() })
                .await
        }
    };
    match result {
        Ok(s) => {
            print_schedules(cli.json, std::slice::from_ref(&s));
            Ok(0)
        }
        Err(e) => store_failure(e),
    }
}

async fn sync_now(cli: &Cli, connection: Uuid, objects: &[String], full: bool) -> anyhow::Result<i32> {
    let objects = if objects.is_empty() {
        crm_jobs::providers::ObjectKind::ALL.to_vec()
    } else {
        match parse_objects("objects", objects) {
            Ok(o) => o,
            Err(e) => return Ok(usage(&e)),
        }
    };
    let pool = pool(cli).await?;
    require(&cli.redis_url, "REDIS_URL")?;
    let queue = crm_queue::Queue::connect(
        crm_queue::QueueConfig::new(&cli.redis_url, &cli.queue).with_prefix(&cli.redis_prefix),
    )
    .await?;
    let mode = if full { SyncMode::Full } else { SyncMode::Incremental };
    let jobs = match trigger::sync_now(&pool, &queue, connection, &objects, mode, "cli").await {
        Ok(jobs) => jobs,
        Err(TriggerError::NotFound) => {
            eprintln!("crmctl: no such connection {connection}");
            return Ok(1);
        }
        Err(e @ (TriggerError::Disabled | TriggerError::UnknownProvider)) => {
            eprintln!("crmctl: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        println!("{}", serde_json::json!({ "connection_id": connection, "mode": mode, "jobs": jobs }));
    } else {
        println!("{:<8}  {:<36}  STATUS", "OBJECT", "JOB");
        for j in &jobs {
            let status = if j.duplicate { "already queued or running" } else { "enqueued" };
            println!("{:<8}  {:<36}  {status}", j.object.as_str(), j.job_id);
        }
    }
    Ok(0)
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Sync(SyncCommand::Now { connection, objects, full }) => {
            return sync_now(&cli, *connection, objects, *full).await;
        }
        Command::Schedules(command) => return schedules(&cli, command).await,
        Command::Migrate | Command::Queues => {}
    }
    match cli.command {
        Command::Sync(_) | Command::Schedules(_) => Ok(0),
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
