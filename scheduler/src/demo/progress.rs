//! Live progress: per provider, the syncs finished and records synced, the actions done and in
//! flight, provider errors and throttles; in total, retries, jobs waiting on a budget, dead
//! letters and paused accounts. Read from PostgreSQL (sync runs, actions, dead letters) and
//! from the processes' own `/metrics` (what an operator's Prometheus would see).
//!
//! On a terminal it draws with indicatif; otherwise (a pipe, CI) it prints a plain block
//! every few seconds.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crm_jobs::providers::Provider;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// One reading of the fleet.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Per provider.
    pub providers: HashMap<Provider, ProviderStats>,
    /// Job attempts that will be retried (workers' `crm_fleet_jobs_completed_total{outcome="retry"}`).
    pub retries: f64,
    /// Jobs put back to wait on a budget or a pause (`outcome="deferred"`).
    pub deferred: f64,
    /// Dead letters not yet replayed.
    pub dead_letters: i64,
    /// Pauses in force (scheduler's `crm_fleet_limiter_paused`).
    pub paused: f64,
}

/// One provider's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProviderStats {
    /// Sync runs finished.
    pub syncs: i64,
    /// Records those runs processed.
    pub records: i64,
    /// Actions succeeded.
    pub actions_done: i64,
    /// Actions failed for good.
    pub actions_failed: i64,
    /// Actions queued or running.
    pub actions_pending: i64,
    /// 5xx and transport errors seen from the provider.
    pub errors: f64,
    /// Throttle responses seen from the provider.
    pub throttled: f64,
}

/// Sums the samples of `name` whose labels include every `(key, value)` of `want`.
pub fn sum_metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').map_or((series, ""), |(n, rest)| (n, rest));
            (n == name && want.iter().all(|(k, v)| labels.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .fold(0.0, |a, b| a + b)
}

/// Reads the figures.
pub async fn snapshot(
    pool: &sqlx::PgPool,
    http: &reqwest::Client,
    workers: &[String],
    scheduler: &str,
) -> Snapshot {
    let mut s = Snapshot::default();
    let runs: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT provider, count(*), COALESCE(sum(processed), 0)::bigint FROM sync_runs \
         WHERE status = 'succeeded' GROUP BY provider",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let actions: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT provider, state, count(*) FROM actions GROUP BY provider, state")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    s.dead_letters = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    let mut texts = Vec::new();
    for url in workers.iter().map(String::as_str).chain([scheduler]) {
        if let Ok(r) = http.get(format!("{url}/metrics")).timeout(Duration::from_secs(2)).send().await {
            texts.push(r.text().await.unwrap_or_default());
        }
    }
    let worker_texts = &texts[..texts.len().saturating_sub(1)];
    for p in Provider::ALL {
        let e = s.providers.entry(p).or_default();
        if let Some((_, n, records)) = runs.iter().find(|(name, ..)| name == p.as_str()) {
            e.syncs = *n;
            e.records = *records;
        }
        for (_, state, n) in actions.iter().filter(|(name, ..)| name == p.as_str()) {
            match state.as_str() {
                "succeeded" => e.actions_done += n,
                "failed" => e.actions_failed += n,
                _ => e.actions_pending += n,
            }
        }
        for t in worker_texts {
            let name = "crm_fleet_provider_requests_total";
            e.errors += sum_metric(t, name, &[("provider", p.as_str()), ("status", "5xx")])
                + sum_metric(t, name, &[("provider", p.as_str()), ("status", "error")]);
            e.throttled += sum_metric(t, "crm_fleet_provider_throttled_total", &[("provider", p.as_str())]);
        }
    }
    for t in worker_texts {
        s.retries += sum_metric(t, "crm_fleet_jobs_completed_total", &[("outcome", "retry")]);
        s.deferred += sum_metric(t, "crm_fleet_jobs_completed_total", &[("outcome", "deferred")]);
    }
    if let Some(t) = texts.last() {
        s.paused = sum_metric(t, "crm_fleet_limiter_paused", &[]);
    }
    s
}

fn provider_line(p: &ProviderStats) -> String {
    format!(
        "syncs {:>4} ({:>6} records)   actions {:>4} done {:>3} failed {:>3} in flight   provider 5xx {:>3}   throttled {:>3}",
        p.syncs, p.records, p.actions_done, p.actions_failed, p.actions_pending, p.errors, p.throttled
    )
}

fn total_line(s: &Snapshot) -> String {
    format!(
        "retries {:.0}   waiting on limits {:.0}   dead letters {}   pauses in force {:.0}",
        s.retries, s.deferred, s.dead_letters, s.paused
    )
}

/// The terminal's lines: one per provider and the fleet's.
struct Bars {
    _multi: MultiProgress,
    providers: Vec<(Provider, ProgressBar)>,
    total: ProgressBar,
}

/// Draws snapshots: bars on a terminal, plain blocks elsewhere.
pub struct Display {
    bars: Option<Bars>,
    last_plain: Option<Instant>,
}

impl Display {
    /// A display for stderr.
    pub fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bars: None, last_plain: None };
        }
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner:.green} {prefix:<11.bold} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = |prefix: &str| {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(prefix.to_owned());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        };
        let providers = Provider::ALL.iter().map(|p| (*p, bar(p.as_str()))).collect();
        let total = bar("fleet");
        Self { bars: Some(Bars { _multi: multi, providers, total }), last_plain: None }
    }

    /// Shows `s`.
    pub fn show(&mut self, s: &Snapshot) {
        match &self.bars {
            Some(Bars { providers, total, .. }) => {
                for (p, bar) in providers {
                    bar.set_message(provider_line(&s.providers.get(p).copied().unwrap_or_default()));
                }
                total.set_message(total_line(s));
            }
            None => {
                if self.last_plain.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                    return;
                }
                self.last_plain = Some(Instant::now());
                let mut out = String::from("progress\n");
                for p in Provider::ALL {
                    let stats = s.providers.get(&p).copied().unwrap_or_default();
                    out.push_str(&format!("  {:<11} {}\n", p.as_str(), provider_line(&stats)));
                }
                out.push_str(&format!("  {:<11} {}\n", "fleet", total_line(s)));
                eprint!("{out}");
            }
        }
    }

    /// Leaves the last figures on screen.
    pub fn finish(&mut self) {
        if let Some(Bars { providers, total, .. }) = self.bars.take() {
            for (_, b) in providers {
                b.finish();
            }
            total.finish();
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::sum_metric;

    #[test]
    fn sums_only_the_matching_series() {
        let text = "# HELP x y\n\
            crm_fleet_jobs_completed_total{job_type=\"sync\",outcome=\"retry\"} 3\n\
            crm_fleet_jobs_completed_total{job_type=\"action\",outcome=\"retry\"} 4\n\
            crm_fleet_jobs_completed_total{job_type=\"action\",outcome=\"success\"} 40\n\
            crm_fleet_jobs_completed_total_other{outcome=\"retry\"} 100\n\
            crm_fleet_limiter_paused 2\n";
        assert_eq!(sum_metric(text, "crm_fleet_jobs_completed_total", &[("outcome", "retry")]), 7.0);
        assert_eq!(
            sum_metric(text, "crm_fleet_jobs_completed_total", &[("outcome", "retry"), ("job_type", "sync")]),
            3.0
        );
        assert_eq!(sum_metric(text, "crm_fleet_limiter_paused", &[]), 2.0);
        assert_eq!(sum_metric(text, "crm_fleet_missing", &[]), 0.0);
    }
}
