//! `crm-worker`: parse configuration, set up telemetry, build, log the bound address, run
//! until SIGTERM/SIGINT, drain within the grace period, exit. Everything else is in the library.

use clap::Parser;
use crm_jobs::config::EXIT_CONFIG;
use crm_worker::{App, WorkerArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match WorkerArgs::parse().validate() {
        Ok(c) => c,
        Err(problems) => {
            eprint!("crm-worker: {problems}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    crm_jobs::telemetry::init_logging(config.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = App::build(config).await?;
    tracing::info!(message = "crm-worker listening", metrics = %format!("http://{}/metrics", app.metrics_addr()),
        worker_id = %app.worker_id());
    app.run_until(crm_jobs::telemetry::shutdown_signal()).await
}
