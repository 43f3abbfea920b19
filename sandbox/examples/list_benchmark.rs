//! Benchmark (not a test): how fast the sandbox serves a full HubSpot contacts listing.
//!
//! Seeds one HubSpot account with 100,000 contacts (no other objects), lifts its burst and daily
//! quotas (at HubSpot's real 100 requests per 10 s the listing would take 17 minutes; this measures the
//! server, not the quota), then pages through `GET /crm/v3/objects/contacts?limit=100` with a reqwest
//! client, checking every record arrives exactly once, and prints records per second.
//!
//! ```text
//! cargo run --release -p crm-sandbox --example list_benchmark
//! cargo run --release -p crm-sandbox --example list_benchmark -- --records 100000 --runs 5
//! cargo run --release -p crm-sandbox --example list_benchmark -- --control http://127.0.0.1:4000
//! ```
//!
//! With `--control` it benchmarks an already running `crm-sandbox` process instead of an in-process
//! one.

use anyhow::{Context, bail};
use crm_sandbox::{Sandbox, SandboxConfig};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::time::Instant;

#[derive(Deserialize)]
struct Page {
    results: Vec<Rec>,
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Rec {
    id: String,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<Next>,
}

#[derive(Deserialize)]
struct Next {
    after: String,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let records: usize = arg("--records").map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let runs: usize = arg("--runs").map(|s| s.parse()).transpose()?.unwrap_or(3);
    let http = reqwest::Client::builder().build()?;

    let (_sandbox, control) = match arg("--control") {
        Some(c) => (None, c),
        None => {
            let sb = Sandbox::start(SandboxConfig::default().with_accounts(0)).await?;
            let c = sb.urls().control.clone();
            (Some(sb), c)
        }
    };
    let urls: serde_json::Value = http.get(format!("{control}/_sandbox/urls")).send().await?.json().await?;
    let api = urls["hubspot"]["api_base"].as_str().context("the sandbox does not run HubSpot")?.to_owned();

    let seeded = Instant::now();
    let account: serde_json::Value = http
        .post(format!("{control}/_sandbox/hubspot/accounts"))
        .json(&json!({
            "records": 0,
            "objects": {"contacts": records},
            "quota": {"burst": 1_000_000_000u64, "daily": 1_000_000_000u64}
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token =
        account["credentials"]["private_app_token"].as_str().context("no private app token")?.to_owned();
    eprintln!(
        "seeded {records} contacts in {:.2} s (hub {})",
        seeded.elapsed().as_secs_f64(),
        account["hub_id"]
    );

    let mut rates = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let mut seen = HashSet::with_capacity(records);
        let mut pages = 0usize;
        let mut after: Option<String> = None;
        loop {
            let mut req = http
                .get(format!("{api}/crm/v3/objects/contacts"))
                .bearer_auth(&token)
                .query(&[("limit", "100")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a.as_str())]);
            }
            let resp = req.send().await?;
            if !resp.status().is_success() {
                bail!("page {pages} failed: {}", resp.status());
            }
            let page: Page = serde_json::from_slice(&resp.bytes().await?)?;
            pages += 1;
            for r in page.results {
                if !seen.insert(r.id) {
                    bail!("a record was listed twice");
                }
            }
            match page.paging.and_then(|p| p.next) {
                Some(n) => after = Some(n.after),
                None => break,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if seen.len() != records {
            bail!("listed {} records, expected {records}", seen.len());
        }
        let rate = records as f64 / secs;
        rates.push(rate);
        println!("run {run}: {records} records in {pages} pages, {secs:.3} s, {rate:.0} records/s");
    }
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or_default();
    println!("median: {median:.0} records/s (target: >= 20000)");
    Ok(())
}
