//! `crm-worker` configuration: flags mirror the environment (`DATABASE_URL`, `REDIS_URL`,
//! `CRM_FLEET_METRICS_ADDR`, …). Values are read as text and validated together, so every
//! problem is reported at once (exit code 64), not the first one clap trips on.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use crm_jobs::config::{ConfigProblems, check_database_url, check_redis_url};
use crm_jobs::telemetry::LogFormat;

/// Raw command line / environment. No `Debug`: it holds the token keys.
#[derive(Clone, Parser)]
#[command(name = "crm-worker", version, about = "Runs crm-fleet jobs from the Redis queue.")]
pub struct WorkerArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", default_value = "")]
    pub database_url: String,
    /// Redis URL, or a comma-separated list of Redis Cluster nodes.
    #[arg(long, env = "REDIS_URL", default_value = "")]
    pub redis_url: String,
    /// Address of the /metrics, /healthz and /readyz listener (port 0 picks a free port).
    #[arg(long, env = "CRM_FLEET_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Queue to consume.
    #[arg(long, env = "CRM_FLEET_QUEUE", default_value = crm_jobs::job::DEFAULT_QUEUE)]
    pub queue: String,
    /// Redis key prefix.
    #[arg(long, env = "CRM_FLEET_REDIS_PREFIX", default_value = crm_queue::config::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Jobs this process runs at once.
    #[arg(long, env = "CRM_FLEET_CONCURRENCY", default_value = "32")]
    pub concurrency: String,
    /// How long in-flight jobs may keep running after SIGTERM before they are released.
    #[arg(long, env = "CRM_FLEET_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: String,
    /// Lease time-to-live without heartbeat.
    #[arg(long, env = "CRM_FLEET_LEASE_TTL", default_value = "20s")]
    pub lease_ttl: String,
    /// Do not apply database migrations at start.
    #[arg(long, env = "CRM_FLEET_NO_MIGRATE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_migrate: bool,
    /// Log format: text or json.
    #[arg(long, env = "CRM_FLEET_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Token encryption key: base64 of 32 bytes (`crmctl keys generate` makes one).
    #[arg(long, env = "CRM_FLEET_TOKEN_KEY", default_value = "", hide_env_values = true)]
    pub token_key: String,
    /// Previous token keys, comma-separated, still accepted for decryption during a rotation.
    #[arg(long, env = "CRM_FLEET_TOKEN_KEYS_PREVIOUS", default_value = "", hide_env_values = true)]
    pub token_keys_previous: String,
    /// OTLP/HTTP collector base URL; traces are exported when set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "")]
    pub otel_endpoint: String,
}

/// Validated settings.
#[derive(Clone)]
pub struct WorkerConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL(s).
    pub redis_url: String,
    /// Metrics listener.
    pub metrics_addr: SocketAddr,
    /// Queue name.
    pub queue: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Concurrency.
    pub concurrency: usize,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Apply migrations at start.
    pub migrate: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Token keys.
    pub keys: std::sync::Arc<crm_jobs::auth::Keyring>,
    /// OTLP endpoint, if traces are exported.
    pub otel_endpoint: Option<String>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("metrics_addr", &self.metrics_addr)
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

fn duration(problems: &mut ConfigProblems, name: &str, raw: &str) -> Duration {
    match humantime::parse_duration(raw) {
        Ok(d) => d,
        Err(e) => {
            problems.add(name, format!("{raw:?} is not a duration like 30s or 2m ({e})"));
            Duration::ZERO
        }
    }
}

impl WorkerArgs {
    /// Validates everything and returns every problem at once.
    pub fn validate(self) -> Result<WorkerConfig, ConfigProblems> {
        let mut p = ConfigProblems::new();
        if self.database_url.is_empty() {
            p.add("DATABASE_URL", "is required");
        } else {
            check_database_url(&mut p, "DATABASE_URL", &self.database_url);
        }
        if self.redis_url.is_empty() {
            p.add("REDIS_URL", "is required");
        } else {
            check_redis_url(&mut p, "REDIS_URL", &self.redis_url);
        }
        let metrics_addr = self.metrics_addr.parse::<SocketAddr>().unwrap_or_else(|e| {
            p.add("CRM_FLEET_METRICS_ADDR", format!("{:?} is not host:port ({e})", self.metrics_addr));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let concurrency = match self.concurrency.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                p.add(
                    "CRM_FLEET_CONCURRENCY",
                    format!("{:?} is not a number from 1 to 10000", self.concurrency),
                );
                1
            }
        };
        let shutdown_grace = duration(&mut p, "CRM_FLEET_SHUTDOWN_GRACE", &self.shutdown_grace);
        let lease_ttl = duration(&mut p, "CRM_FLEET_LEASE_TTL", &self.lease_ttl);
        if !lease_ttl.is_zero() && lease_ttl < Duration::from_secs(1) {
            p.add("CRM_FLEET_LEASE_TTL", "must be at least 1s");
        }
        let log_format = self.log_format.parse().unwrap_or_else(|e: String| {
            p.add("CRM_FLEET_LOG_FORMAT", e);
            LogFormat::Text
        });
        let previous: Vec<String> = self
            .token_keys_previous
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        let keys = if self.token_key.is_empty() {
            p.add(
                "CRM_FLEET_TOKEN_KEY",
                "is required (base64 of 32 bytes; `crmctl keys generate` prints one)",
            );
            None
        } else {
            match crm_jobs::auth::Keyring::from_base64(&self.token_key, &previous) {
                Ok(k) => Some(k),
                Err(e) => {
                    p.add("CRM_FLEET_TOKEN_KEY", e);
                    None
                }
            }
        };
        let queue_config =
            crm_queue::QueueConfig::new(&self.redis_url, &self.queue).with_prefix(&self.redis_prefix);
        if let Err(problems) = queue_config.validate() {
            p.extend(problems);
        }
        p.into_result()?;
        let keys = std::sync::Arc::new(keys.ok_or_else(|| {
            let mut p = ConfigProblems::new();
            p.add("CRM_FLEET_TOKEN_KEY", "is required");
            p
        })?);
        Ok(WorkerConfig {
            database_url: self.database_url,
            redis_url: self.redis_url,
            metrics_addr,
            queue: self.queue,
            redis_prefix: self.redis_prefix,
            concurrency,
            shutdown_grace,
            lease_ttl,
            migrate: !self.no_migrate,
            log_format,
            keys,
            otel_endpoint: (!self.otel_endpoint.is_empty()).then_some(self.otel_endpoint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_problems_are_reported_together() {
        let args = WorkerArgs::parse_from([
            "crm-worker",
            "--database-url",
            "mysql://nope",
            "--metrics-addr",
            "nowhere",
            "--concurrency",
            "0",
            "--shutdown-grace",
            "soon",
        ]);
        let problems = args.validate().expect_err("invalid");
        let text = problems.to_string();
        for name in [
            "DATABASE_URL",
            "REDIS_URL",
            "CRM_FLEET_METRICS_ADDR",
            "CRM_FLEET_CONCURRENCY",
            "CRM_FLEET_SHUTDOWN_GRACE",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
