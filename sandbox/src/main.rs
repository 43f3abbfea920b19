//! `crm-sandbox`: runs the CRM imitations on loopback and prints their base URLs.
//!
//! 1. Parses flags (`--addr`, `--seed`, `--records`, `--accounts`, `--providers`, clock options); a bad
//!    value exits with code 64.
//! 2. Starts the sandbox: the control plane on `--addr`; providers on fixed offsets from its port (see
//!    `docs/sandbox.md`), or on port 0 when `--addr` has port 0 or `--ephemeral-provider-ports` is set.
//! 3. Prints the URLs as one JSON line on stdout (for a parent process) and a readable summary on
//!    stderr, then serves until SIGINT or SIGTERM and shuts down.

use clap::Parser;
use crm_sandbox::{ClockMode, PortPlan, ProviderKind, Sandbox, SandboxConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "crm-sandbox",
    about = "Loopback imitations of HubSpot, Salesforce, Pipedrive, Zoho CRM and Close"
)]
struct Args {
    /// Control-plane address; providers listen on fixed offsets from its port (port 0: all ephemeral).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Seed of all generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Records per object type in each seeded account.
    #[arg(long, default_value_t = 25)]
    records: usize,
    /// Accounts seeded per provider.
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Providers to run, comma-separated (`all` for every implemented one).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    providers: Vec<String>,
    /// Start with a frozen logical clock (advance it through the control plane).
    #[arg(long)]
    frozen_clock: bool,
    /// Logical start time (RFC 3339 or epoch ms); default 2026-01-05T09:00:00Z.
    #[arg(long)]
    clock_start: Option<String>,
    /// Put providers on ephemeral ports even when --addr has a fixed port.
    #[arg(long)]
    ephemeral_provider_ports: bool,
}

fn config(args: &Args) -> Result<SandboxConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut providers = Vec::new();
    for p in &args.providers {
        if p.trim().eq_ignore_ascii_case("all") {
            providers.extend(crm_sandbox::provider::implemented());
            continue;
        }
        match p.parse::<ProviderKind>() {
            Ok(k) if crm_sandbox::provider::registration(k).is_some() => providers.push(k),
            Ok(k) => problems.push(format!(
                "--providers: {k} is not implemented yet (implemented: {})",
                crm_sandbox::provider::implemented()
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => problems.push(format!("--providers: {e}")),
        }
    }
    let mut cfg = SandboxConfig::default()
        .with_seed(args.seed)
        .with_records(args.records)
        .with_accounts(args.accounts)
        .with_providers(providers)
        .with_control_addr(args.addr);
    if args.addr.port() != 0 && !args.ephemeral_provider_ports {
        cfg = cfg.with_ports(PortPlan::Base(args.addr.port()));
    }
    if args.frozen_clock {
        cfg = cfg.with_frozen_clock();
    }
    if let Some(s) = &args.clock_start {
        match crm_sandbox::clock::parse_time(s) {
            Some(ms) => cfg = cfg.with_clock_start(ms),
            None => problems.push(format!("--clock-start: not a time: {s:?}")),
        }
    }
    if problems.is_empty() { Ok(cfg) } else { Err(problems) }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("crm-sandbox: {p}");
            }
            return ExitCode::from(64);
        }
    };
    let records = cfg.records;
    let frozen = cfg.clock_mode == ClockMode::Frozen;
    let sandbox = match Sandbox::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crm-sandbox: {e}");
            return ExitCode::from(1);
        }
    };
    let urls = sandbox.urls().clone();
    let line = serde_json::to_string(&urls).unwrap_or_default();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    eprintln!("crm-sandbox: control plane {}/_sandbox/", urls.control);
    for (kind, map) in &urls.providers {
        for (name, url) in map {
            eprintln!("crm-sandbox: {kind} {name} {url}");
        }
    }
    for kind in urls.providers.keys() {
        if let Some(p) = sandbox.provider(*kind) {
            let accounts = p.list_accounts();
            let ids: Vec<String> = accounts["accounts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            x["id"]
                                .as_str()
                                .map(str::to_owned)
                                .or_else(|| x["id"].as_u64().map(|n| n.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "crm-sandbox: {kind} accounts {} ({records} records per object); credentials at {}/_sandbox/{kind}/accounts",
                ids.join(", "),
                urls.control
            );
        }
    }
    eprintln!(
        "crm-sandbox: logical clock {} ({}); Ctrl-C to stop",
        sandbox.clock().reading().now,
        if frozen { "frozen" } else { "running" }
    );
    wait_for_signal().await;
    eprintln!("crm-sandbox: shutting down");
    sandbox.shutdown().await;
    ExitCode::SUCCESS
}
