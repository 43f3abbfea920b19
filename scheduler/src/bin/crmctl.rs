//! `crmctl`: the operator CLI. See `crm_scheduler::cli`.

#[tokio::main]
async fn main() {
    let cli: crm_scheduler::cli::Cli = crm_jobs::config::parse_args();
    crm_jobs::telemetry::init_logging(crm_jobs::telemetry::LogFormat::Text);
    let _ = rustls::crypto::ring::default_provider().install_default();
    match crm_scheduler::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("crmctl: {error:#}");
            std::process::exit(crm_scheduler::cli::exit_code(&error));
        }
    }
}
