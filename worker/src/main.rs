//! `crm-worker`: parse configuration, set up telemetry, build, log the bound address, run
//! until SIGTERM/SIGINT, drain within the grace period, exit. Everything else is in the library.

use crm_jobs::config::EXIT_CONFIG;
use crm_worker::{App, WorkerArgs};

fn main() -> anyhow::Result<()> {
    let config = match crm_jobs::config::parse_args::<WorkerArgs>().validate() {
        Ok(c) => c,
        Err(problems) => {
            eprint!("crm-worker: {problems}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // TLS provider, then telemetry, both outside the runtime: the OTLP exporter owns a blocking
    // HTTPS client that must not be created (or dropped) on a runtime thread.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry =
        crm_jobs::telemetry::init("crm-worker", config.log_format, config.otel_endpoint.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let app = App::build(config).await?;
        tracing::info!(message = "crm-worker listening", metrics = %format!("http://{}/metrics", app.metrics_addr()),
            worker_id = %app.worker_id());
        app.run_until(crm_jobs::telemetry::shutdown_signal()).await
    });
    drop(runtime);
    telemetry.shutdown();
    result
}
