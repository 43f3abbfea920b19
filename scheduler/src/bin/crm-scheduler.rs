//! `crm-scheduler`: parse configuration, set up telemetry, build, log the bound address, serve
//! until SIGTERM/SIGINT.

use clap::Parser;
use crm_jobs::config::{ConfigProblems, EXIT_CONFIG, check_database_url, check_redis_url};
use crm_scheduler::server::{Scheduler, SchedulerConfig};

#[derive(Debug, Parser)]
#[command(name = "crm-scheduler", version, about = "Schedules CRM syncs and serves the control-plane API.")]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", default_value = "")]
    database_url: String,
    /// Redis URL, or a comma-separated list of Redis Cluster nodes.
    #[arg(long, env = "REDIS_URL", default_value = "")]
    redis_url: String,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, env = "CRM_FLEET_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: String,
    /// Queue name.
    #[arg(long, env = "CRM_FLEET_QUEUE", default_value = crm_jobs::job::DEFAULT_QUEUE)]
    queue: String,
    /// Redis key prefix.
    #[arg(long, env = "CRM_FLEET_REDIS_PREFIX", default_value = crm_queue::config::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// Do not apply database migrations at start.
    #[arg(long, env = "CRM_FLEET_NO_MIGRATE")]
    no_migrate: bool,
    /// How late a tick may fire and still be on time; later ticks count as missed and follow
    /// their schedule's missed-tick policy (e.g. 1s, 250ms).
    #[arg(long, env = "CRM_FLEET_SCHEDULER_LATE_TOLERANCE", default_value = "1s")]
    late_tolerance: String,
    /// Log format: text or json.
    #[arg(long, env = "CRM_FLEET_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn validate(a: Args) -> Result<(SchedulerConfig, crm_jobs::telemetry::LogFormat), ConfigProblems> {
    let mut p = ConfigProblems::new();
    if a.database_url.is_empty() {
        p.add("DATABASE_URL", "is required");
    } else {
        check_database_url(&mut p, "DATABASE_URL", &a.database_url);
    }
    if a.redis_url.is_empty() {
        p.add("REDIS_URL", "is required");
    } else {
        check_redis_url(&mut p, "REDIS_URL", &a.redis_url);
    }
    let api_addr = a.api_addr.parse().unwrap_or_else(|e| {
        p.add("CRM_FLEET_API_ADDR", format!("{:?} is not host:port ({e})", a.api_addr));
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let late_tolerance = humantime::parse_duration(&a.late_tolerance).unwrap_or_else(|e| {
        p.add(
            "CRM_FLEET_SCHEDULER_LATE_TOLERANCE",
            format!("{:?} is not a duration ({e})", a.late_tolerance),
        );
        crm_scheduler::schedule::engine::DEFAULT_LATE_TOLERANCE
    });
    let mut schedule = crm_scheduler::schedule::ScheduleConfig::new("");
    schedule.engine.late_tolerance = late_tolerance;
    let log_format = a.log_format.parse().unwrap_or_else(|e: String| {
        p.add("CRM_FLEET_LOG_FORMAT", e);
        crm_jobs::telemetry::LogFormat::Text
    });
    p.into_result()?;
    Ok((
        SchedulerConfig {
            database_url: a.database_url,
            redis_url: a.redis_url,
            api_addr,
            queue: a.queue,
            redis_prefix: a.redis_prefix,
            migrate: !a.no_migrate,
            schedule,
        },
        log_format,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, log_format) = match validate(Args::parse()) {
        Ok(c) => c,
        Err(problems) => {
            eprint!("crm-scheduler: {problems}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    crm_jobs::telemetry::init_logging(log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scheduler = Scheduler::build(config).await?;
    tracing::info!(message = "crm-scheduler listening", api = %format!("http://{}", scheduler.api_addr()));
    scheduler.run_until(crm_jobs::telemetry::shutdown_signal()).await
}
