//! `crm-scheduler`: parse configuration, set up telemetry, build, log the bound address, serve
//! until SIGTERM/SIGINT.

use clap::Parser;
use crm_jobs::config::{ConfigProblems, EXIT_CONFIG, check_database_url, check_redis_url};
use crm_scheduler::server::{Scheduler, SchedulerConfig};

/// The command line. No `Debug`: it holds the token keys.
#[derive(Parser)]
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
    #[arg(long, env = "CRM_FLEET_NO_MIGRATE", value_parser = clap::builder::FalseyValueParser::new())]
    no_migrate: bool,
    /// How late a tick may fire and still be on time; later ticks count as missed and follow
    /// their schedule's missed-tick policy (e.g. 1s, 250ms).
    #[arg(long, env = "CRM_FLEET_SCHEDULER_LATE_TOLERANCE", default_value = "1s")]
    late_tolerance: String,
    /// Dead letters older than this are purged hourly (audited and counted); `off` keeps them
    /// forever (e.g. 30d, 72h).
    #[arg(long, env = "CRM_FLEET_DLQ_RETENTION", default_value = "30d")]
    dlq_retention: String,
    /// A scheduled sync counts as stale (`crm_fleet_syncs_stale`, `crmctl sync stale`) once a
    /// tick fired more than this long ago with no successful sync since (e.g. 30m, 2h).
    #[arg(long, env = "CRM_FLEET_SYNC_STALE_AFTER", default_value = "30m")]
    sync_stale_after: String,
    /// Log format: text or json.
    #[arg(long, env = "CRM_FLEET_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Token encryption key: base64 of 32 bytes.
    #[arg(long, env = "CRM_FLEET_TOKEN_KEY", default_value = "", hide_env_values = true)]
    token_key: String,
    /// Previous token keys, comma-separated (decryption only, during a rotation).
    #[arg(long, env = "CRM_FLEET_TOKEN_KEYS_PREVIOUS", default_value = "", hide_env_values = true)]
    token_keys_previous: String,
    /// OTLP/HTTP collector base URL; traces are exported when set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "")]
    otel_endpoint: String,
}

fn validate(
    a: Args,
) -> Result<(SchedulerConfig, crm_jobs::telemetry::LogFormat, Option<String>), ConfigProblems> {
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
    let dlq_retention = match a.dlq_retention.as_str() {
        "off" | "never" => None,
        s => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                p.add("CRM_FLEET_DLQ_RETENTION", "must be positive, or `off`");
                None
            }
            Err(e) => {
                p.add("CRM_FLEET_DLQ_RETENTION", format!("{s:?} is not a duration or `off` ({e})"));
                None
            }
        },
    };
    let stale_after = match humantime::parse_duration(&a.sync_stale_after) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            p.add("CRM_FLEET_SYNC_STALE_AFTER", "must be positive");
            crm_scheduler::schedule::freshness::DEFAULT_GRACE
        }
        Err(e) => {
            p.add("CRM_FLEET_SYNC_STALE_AFTER", format!("{:?} is not a duration ({e})", a.sync_stale_after));
            crm_scheduler::schedule::freshness::DEFAULT_GRACE
        }
    };
    let mut schedule = crm_scheduler::schedule::ScheduleConfig::new("");
    schedule.engine.late_tolerance = late_tolerance;
    schedule.stale_after = stale_after;
    let log_format = a.log_format.parse().unwrap_or_else(|e: String| {
        p.add("CRM_FLEET_LOG_FORMAT", e);
        crm_jobs::telemetry::LogFormat::Text
    });
    let previous: Vec<String> = a
        .token_keys_previous
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let keys = match crm_jobs::auth::Keyring::from_base64(&a.token_key, &previous) {
        Ok(k) => Some(std::sync::Arc::new(k)),
        Err(e) => {
            if a.token_key.is_empty() {
                p.add(
                    "CRM_FLEET_TOKEN_KEY",
                    "is required (base64 of 32 bytes; `crmctl keys generate` prints one)",
                );
            } else {
                p.add("CRM_FLEET_TOKEN_KEY", e);
            }
            None
        }
    };
    p.into_result()?;
    let Some(keys) = keys else {
        let mut p = ConfigProblems::new();
        p.add("CRM_FLEET_TOKEN_KEY", "is required");
        return Err(p);
    };
    let otel = (!a.otel_endpoint.is_empty()).then_some(a.otel_endpoint.clone());
    Ok((
        SchedulerConfig {
            database_url: a.database_url,
            redis_url: a.redis_url,
            api_addr,
            queue: a.queue,
            redis_prefix: a.redis_prefix,
            migrate: !a.no_migrate,
            keys,
            schedule,
            dlq_retention,
        },
        log_format,
        otel,
    ))
}

fn main() -> anyhow::Result<()> {
    let (config, log_format, otel) = match validate(crm_jobs::config::parse_args::<Args>()) {
        Ok(c) => c,
        Err(problems) => {
            eprint!("crm-scheduler: {problems}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // TLS provider, then telemetry, both outside the runtime: the OTLP exporter owns a blocking
    // HTTPS client that must not be created (or dropped) on a runtime thread.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = crm_jobs::telemetry::init("crm-scheduler", log_format, otel.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let scheduler = Scheduler::build(config).await?;
        tracing::info!(message = "crm-scheduler listening", api = %format!("http://{}", scheduler.api_addr()));
        scheduler.run_until(crm_jobs::telemetry::shutdown_signal()).await
    });
    drop(runtime);
    telemetry.shutdown();
    result
}
