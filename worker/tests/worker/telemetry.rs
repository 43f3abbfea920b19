//! The metric catalogue of `docs/telemetry.md` is a specification: a real scheduler and two real
//! workers run a workload (a sync, actions, a dead letter), then every `/metrics` is scraped and
//! checked against the catalogue and by `promtool check metrics`. A second test has a real
//! Prometheus server scrape the three processes and answer
//! `sum(rate(crm_fleet_jobs_completed_total[1m]))` for a steady workload.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crm_jobs::providers::{ObjectKind, Provider};
use crm_jobs::testing::eventually;
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};

use crate::e2e::serve_api;
use crate::fleet::Fleet;

/// One row of the catalogue.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
    served_by: Vec<String>,
    always: bool,
}

/// Parses the metric table of `docs/telemetry.md`.
fn catalogue() -> BTreeMap<String, Documented> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/telemetry.md");
    let text = std::fs::read_to_string(path).expect("docs/telemetry.md");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `crm_fleet_")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "a catalogue row has 6 cells: {line}");
        let name = cells[0].trim_matches('`').to_owned();
        let kind = cells[1].split_whitespace().next().unwrap_or_default().to_owned();
        // Label names are the backticked words outside the parenthesised value lists.
        let mut depth = 0;
        let mut outside = String::new();
        for c in cells[2].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        let labels = outside.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        let served_by = cells[3].split(',').map(|s| s.trim().to_owned()).collect();
        out.insert(name, Documented { kind, labels, served_by, always: cells[4] == "always" });
    }
    assert!(out.len() >= 20, "catalogue parsed: {}", out.len());
    out
}

/// A scrape: metric family → (type, label names seen, sample count).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    samples: usize,
}

fn parse_scrape(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
            out.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                sample.strip_suffix(s).filter(|f| out.get(*f).is_some_and(|x| x.kind == "histogram"))
            })
            .unwrap_or(sample)
            .to_owned();
        let entry = out.entry(family).or_default();
        entry.samples += 1;
        if let Some(open) = line.find('{') {
            let close = line.rfind('}').expect("closing brace");
            for pair in split_labels(&line[open + 1..close]) {
                if let Some((k, _)) = pair.split_once('=')
                    && k != "le"
                {
                    entry.labels.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        match c {
            '\\' if quoted && !escaped => {
                escaped = true;
                cur.push(c);
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        escaped = false;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn promtool_check(name: &str, scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool not runnable ({e}): install Debian's `prometheus` package (`just services` does)"
            )
        });
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics rejects the {name} scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fleet of a scheduler and two workers, with one HubSpot tenant, that has run a sync, ten
/// actions and one action that dead-letters.
async fn workload(f: &mut Fleet) -> crate::e2e::Api {
    let (conn, _) = f
        .connect(
            "acme",
            Provider::Hubspot,
            json!({ "records": 20, "quota": crate::fleet::unlimited(Provider::Hubspot) }),
        )
        .await;
    let api = serve_api(f).await;
    f.spawn_workers(2, &[]);
    let resp = f
        .http
        .post(format!("{}/v1/connections/{}/sync", api.base, conn.id))
        .bearer_auth(&api.key)
        .json(&json!({ "objects": [ObjectKind::Contact.as_str()] }))
        .send()
        .await
        .expect("sync now");
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    for i in 0..10 {
        api.post(f, "acme", Provider::Hubspot, "create_task", json!({ "subject": format!("metrics {i}") }))
            .await;
    }
    // A deal that does not exist: the CRM answers 404, a permanent failure.
    let dead = api
        .post(f, "acme", Provider::Hubspot, "update_deal", json!({ "deal_id": "999999999", "amount": 1 }))
        .await;
    eventually(Duration::from_secs(60), "workload done", || async {
        f.drained().await && api.job(f, &dead).await["state"] == "dead"
    })
    .await;
    api
}

#[tokio::test(flavor = "multi_thread")]
async fn every_served_metric_is_documented_and_promtool_accepts_the_scrapes() {
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let api = workload(&mut f).await;
    let doc = catalogue();
    // The dead letter shows in the scheduler's sampled gauge within a sampling period.
    let scheduler_metrics = format!("{}/metrics", api.base);
    eventually(Duration::from_secs(15), "dead letters gauge sampled", || async {
        let text = f.http.get(&scheduler_metrics).send().await.expect("scrape").text().await.expect("text");
        text.lines().any(|l| l.starts_with("crm_fleet_dead_letters{") && !l.ends_with(" 0"))
    })
    .await;
    let mut scrapes = vec![("scheduler".to_owned(), scheduler_metrics)];
    for (i, w) in f.workers.iter().enumerate() {
        scrapes.push((format!("worker {i}"), w.metrics.clone()));
    }
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, url) in &scrapes {
        let text = f.http.get(url).send().await.expect("scrape").text().await.expect("text");
        promtool_check(name, &text);
        for (family, seen) in parse_scrape(&text) {
            if !family.starts_with("crm_fleet_") {
                continue;
            }
            let d = doc
                .get(&family)
                .unwrap_or_else(|| panic!("{name} serves {family}, not in docs/telemetry.md"));
            assert_eq!(seen.kind, d.kind, "{name}: type of {family}");
            assert!(
                seen.labels.is_subset(&d.labels),
                "{name}: {family} has labels {:?}, documented {:?}",
                seen.labels,
                d.labels
            );
            let role = if name == "scheduler" { "scheduler" } else { "worker" };
            served.entry(family).or_default().insert(role.to_owned());
        }
    }
    for (family, d) in &doc {
        let by = served.get(family);
        if d.always {
            assert!(
                by.is_some_and(|roles| d.served_by.iter().any(|r| r == "all" || roles.contains(r))),
                "{family} (always, served by {:?}) missing; served: {by:?}",
                d.served_by
            );
        }
    }
    let all = f.http.get(&scrapes[0].1).send().await.expect("scrape").text().await.expect("text");
    assert!(
        !all.contains("acme"),
        "a tenant id is in a label value:\n{}",
        all.lines().filter(|l| l.contains("acme")).collect::<Vec<_>>().join("\n")
    );
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_fleet_and_reports_the_completion_rate() {
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let (conn, _) = f
        .connect(
            "acme",
            Provider::Hubspot,
            json!({ "records": 1, "quota": crate::fleet::unlimited(Provider::Hubspot) }),
        )
        .await;
    let api = serve_api(&f).await;
    f.spawn_workers(2, &[]);
    let targets: Vec<String> = std::iter::once(api.base.clone())
        .chain(f.workers.iter().map(|w| w.metrics.trim_end_matches("/metrics").to_owned()))
        .map(|u| format!("'{}'", u.trim_start_matches("http://")))
        .collect();
    let dir = std::env::temp_dir().join(format!("crm-prom-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: crm-fleet\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let port = free_port();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "prometheus not runnable ({e}): install Debian's `prometheus` package (`just services` does)"
            )
        });
    let _prometheus = Kill(prom, dir.clone());
    let prom_url = format!("http://127.0.0.1:{port}");
    let query = |q: &'static str| {
        let http = f.http.clone();
        let url = format!("{prom_url}/api/v1/query");
        async move {
            let v: Value = http.get(url).query(&[("query", q)]).send().await.ok()?.json().await.ok()?;
            v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok())
        }
    };
    eventually(Duration::from_secs(30), "all three targets up", || async {
        query("sum(up)").await == Some(3.0)
    })
    .await;
    // A steady 10 actions per second for 75 s: after a minute, the 1-minute rate is 10/s.
    let per_second = 10;
    let started = std::time::Instant::now();
    let mut sent = 0;
    let mut rates = Vec::new();
    while started.elapsed() < Duration::from_secs(75) {
        let due = (started.elapsed().as_secs_f64() * f64::from(per_second)) as u32;
        while sent < due {
            f.enqueue_action(&conn, "create_task", json!({ "subject": format!("rate {sent}") })).await;
            sent += 1;
        }
        if started.elapsed() > Duration::from_secs(68)
            && let Some(r) = query("sum(rate(crm_fleet_jobs_completed_total[1m]))").await
        {
            rates.push(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rates.sort_by(f64::total_cmp);
    let rate = rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN);
    // Every dashboard and alert expression is valid PromQL that this Prometheus evaluates.
    for expr in deploy_expressions() {
        let v: Value = f
            .http
            .get(format!("{prom_url}/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        assert_eq!(v["status"], "success", "{expr}: {v}");
        // The scaler's query has a value while the fleet runs: the scheduler's runnable jobs
        // (else KEDA would read nothing, and fall back).
        if expr.contains("crm_fleet_queue_runnable") {
            assert!(v["data"]["result"][0]["value"][1].as_str().is_some(), "{expr}: {v}");
        }
    }
    eprintln!("sent {sent} actions in {:?}; Prometheus says {rates:?} completions/s", started.elapsed());
    assert!(
        (rate - f64::from(per_second)).abs() <= f64::from(per_second) * 0.15,
        "sum(rate(crm_fleet_jobs_completed_total[1m])) = {rate}, expected {per_second}/s ± 15 %"
    );
}

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/crm-fleet.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml");
const SCALER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/base/worker-scaledobject.yaml");

/// Every PromQL expression of the Grafana dashboard, the alert rules and the KEDA scaler.
fn deploy_expressions() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard")).expect("json");
    let mut out: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let alerts = std::fs::read_to_string(ALERTS).expect("alerts");
    let lines: Vec<&str> = alerts.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        let Some(expr) = line.trim().strip_prefix("expr: ") else { continue };
        if expr != ">-" {
            out.push(expr.to_owned());
            continue;
        }
        // A folded block (a long expression over several lines): the lines indented deeper
        // than `expr:`, joined by spaces.
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|b| !b.trim().is_empty() && indent(b) > indent(line))
            .map(|b| b.trim())
            .collect();
        assert!(!body.is_empty(), "an empty folded expression after line {}", i + 1);
        out.push(body.join(" "));
    }
    let scaler = std::fs::read_to_string(SCALER).expect("scaler");
    out.extend(scaler.lines().filter_map(|l| l.trim().strip_prefix("query: ")).map(str::to_owned));
    out
}

#[test]
fn alert_rules_pass_promtool_and_dashboards_and_alerts_use_only_documented_metrics() {
    for args in [vec!["check", "rules", "alerts.yml"], vec!["test", "rules", "alerts_test.yml"]] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus"))
            .output()
            .unwrap_or_else(|e| panic!("promtool not runnable ({e}): install Debian's `prometheus` package"));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc = catalogue();
    let exprs = deploy_expressions();
    assert!(exprs.len() >= 25, "expressions found: {}", exprs.len());
    let mut used = BTreeSet::new();
    for e in &exprs {
        for (i, _) in e.match_indices("crm_fleet_") {
            let name: String =
                e[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|f| doc.get(*f).is_some_and(|d| d.kind == "histogram"))
                })
                .unwrap_or(&name)
                .to_owned();
            assert!(doc.contains_key(&family), "{e} uses {name}, which docs/telemetry.md does not list");
            used.insert(family);
        }
    }
    // The dashboard covers what on-call asks first.
    for needed in [
        "crm_fleet_queue_depth",
        "crm_fleet_queue_oldest_age_seconds",
        "crm_fleet_jobs_completed_total",
        "crm_fleet_job_wait_seconds",
        "crm_fleet_provider_throttled_total",
        "crm_fleet_limiter_paused",
        "crm_fleet_dead_letters",
        "crm_fleet_token_refreshes_total",
        "crm_fleet_scheduler_lag_seconds",
        "crm_fleet_scheduler_is_leader",
    ] {
        assert!(used.contains(needed), "no dashboard panel or alert uses {needed}");
    }
}
