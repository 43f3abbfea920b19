//! `crmctl`: the operator CLI. See `crm_scheduler::cli`.

use clap::Parser;
use crm_jobs::config::EXIT_CONFIG;

#[tokio::main]
async fn main() {
    let cli = match crm_scheduler::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
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
