//! The results of a run (every figure of every repetition, written as JSON) and the Markdown
//! tables printed from them: the peers' main table and cost table layout, the ratios of our
//! queue to each apalis-redis variant, and the Redis commands each system runs per job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::client::{EnqueueReport, ProduceReport};

/// Redis work during a measured window, from `INFO commandstats` / `INFO cpu` diffs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisDelta {
    /// Commands per job, including those run inside Lua scripts (`INFO` itself excluded).
    pub cmds_per_job: f64,
    /// Script calls (`EVALSHA`, `EVAL`, `FCALL`) per job.
    pub scripts_per_job: f64,
    /// Redis CPU (user + system) per job, µs.
    pub cpu_us_per_job: f64,
    /// Redis CPU over the window, s.
    pub cpu_s: f64,
    /// Every command's calls per job, most frequent first.
    pub per_job: Vec<(String, f64)>,
    /// Connections Redis accepted during the window (the benchmark's own processes open a few;
    /// many more mean another client used the server and the window's figures are suspect).
    #[serde(default)]
    pub new_connections: u64,
}

/// One W1 run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct W1 {
    /// What the enqueue process reported.
    #[serde(flatten)]
    pub client: EnqueueReport,
    /// Client CPU per job, µs.
    pub client_cpu_us_per_job: f64,
    /// Redis work.
    pub redis: RedisDelta,
    /// Share of the machine's CPU other processes used during the run.
    pub noise: Option<f64>,
}

/// One W2 run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct W2 {
    /// Jobs handled.
    pub n: u64,
    /// Whether every job was handled before the timeout.
    pub complete: bool,
    /// Last handler end minus first handler start, s.
    pub seconds: f64,
    /// Jobs per second over that span.
    pub rate: f64,
    /// Go signal to first handler start, ms.
    pub go_to_first_ms: f64,
    /// Jobs handled per worker process.
    pub per_proc_counts: Vec<u64>,
    /// Peak RSS (`VmHWM`) per worker process, MiB.
    pub peak_rss_mib: Vec<f64>,
    /// Worker CPU (all processes) from go to the last completion seen, s.
    pub worker_cpu_s: f64,
    /// Worker CPU per job, µs.
    pub worker_cpu_us_per_job: f64,
    /// Jobs still in the queue after the run (must be 0).
    pub remaining: u64,
    /// Redis work.
    pub redis: RedisDelta,
    /// Share of the machine's CPU other processes used during the run.
    pub noise: Option<f64>,
}

/// One W3 run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct W3 {
    /// Jobs the producer was to send.
    pub expected: u64,
    /// Jobs handled.
    pub processed: u64,
    /// Whether every job was handled before the drain timeout.
    pub complete: bool,
    /// Latency percentiles, ms (enqueue call to handler start).
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile, ms.
    pub p999_ms: Option<f64>,
    /// Worst latency, ms.
    pub max_ms: Option<f64>,
    /// What the producer reported.
    pub producer: ProduceReport,
    /// Peak RSS per worker process, MiB.
    pub peak_rss_mib: Vec<f64>,
    /// Worker CPU per job, µs.
    pub worker_cpu_us_per_job: f64,
    /// Jobs still in the queue after the run.
    pub remaining: u64,
    /// Redis work.
    pub redis: RedisDelta,
    /// Share of the machine's CPU other processes used during the run.
    pub noise: Option<f64>,
}

/// Every run of one system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemResults {
    /// Table label.
    pub label: String,
    /// Settings, in words.
    pub settings: String,
    /// W1 single runs.
    pub w1_single: Vec<W1>,
    /// W1 bulk runs.
    pub w1_bulk: Vec<W1>,
    /// W2 runs.
    pub w2: Vec<W2>,
    /// W3 runs.
    pub w3: Vec<W3>,
}

/// A quiet-machine check before a measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QuietCheck {
    /// What was about to run.
    pub when: String,
    /// Share of the machine busy when the wait ended.
    pub busy: f64,
    /// Seconds waited.
    pub waited_s: f64,
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Machine and software.
    pub env: BTreeMap<String, String>,
    /// The options of the run.
    pub config: serde_json::Value,
    /// Results per system name (`ours`, `apalis-redis`, ...).
    pub systems: BTreeMap<String, SystemResults>,
    /// Quiet-machine checks.
    pub background_cpu: Vec<QuietCheck>,
    /// Medians per system (filled at the end; what `scripts/bench-all.sh` reads).
    #[serde(default)]
    pub medians: serde_json::Value,
}

/// The median of the values present.
pub fn median(vals: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = vals.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

fn group(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// Formats a number: thousands-grouped integers, or `decimals` places.
pub fn fmt(x: f64, decimals: usize) -> String {
    if decimals == 0 { group(x) } else { format!("{x:.decimals$}") }
}

/// `min / median / max`, or `n/a`.
fn mmm(vals: &[f64], decimals: usize) -> String {
    let v: Vec<f64> = vals.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "n/a".to_owned();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let med = median(&v).unwrap_or(min);
    format!("{} / {} / {}", fmt(min, decimals), fmt(med, decimals), fmt(max, decimals))
}

/// The medians the ratio table and the combined table compare.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Medians {
    /// W1 single, jobs/s.
    pub w1_single: Option<f64>,
    /// W1 bulk, jobs/s.
    pub w1_bulk: Option<f64>,
    /// W2, jobs/s.
    pub w2: Option<f64>,
    /// W3 p50, ms.
    pub w3_p50: Option<f64>,
    /// W3 p99, ms.
    pub w3_p99: Option<f64>,
    /// W3 offered rate, jobs/s.
    pub w3_offered: Option<f64>,
    /// Peak RSS per worker process in W2 (largest process), MiB.
    pub rss_mib: Option<f64>,
    /// W2 Redis commands per job.
    pub w2_cmds: Option<f64>,
    /// W2 Lua script calls per job.
    pub w2_scripts: Option<f64>,
    /// W2 Redis CPU per job, µs.
    pub w2_redis_cpu: Option<f64>,
    /// W2 worker CPU per job, µs.
    pub w2_worker_cpu: Option<f64>,
    /// W1 single client CPU per job, µs.
    pub w1_client_cpu: Option<f64>,
    /// W1 single Redis commands per job.
    pub w1_cmds: Option<f64>,
    /// W1 single Redis CPU per job, µs.
    pub w1_redis_cpu: Option<f64>,
    /// W3 Redis commands per job.
    pub w3_cmds: Option<f64>,
    /// W3 Redis CPU per job, µs.
    pub w3_redis_cpu: Option<f64>,
}

impl SystemResults {
    /// Medians over repetitions.
    pub fn medians(&self) -> Medians {
        let m = |v: Vec<f64>| median(&v);
        Medians {
            w1_single: m(self.w1_single.iter().map(|x| x.client.rate).collect()),
            w1_bulk: m(self.w1_bulk.iter().map(|x| x.client.rate).collect()),
            w2: m(self.w2.iter().map(|x| x.rate).collect()),
            w3_p50: m(self.w3.iter().filter_map(|x| x.p50_ms).collect()),
            w3_p99: m(self.w3.iter().filter_map(|x| x.p99_ms).collect()),
            w3_offered: m(self.w3.iter().map(|x| x.producer.achieved_rate).collect()),
            rss_mib: m(self
                .w2
                .iter()
                .filter_map(|x| x.peak_rss_mib.iter().copied().reduce(f64::max))
                .collect()),
            w2_cmds: m(self.w2.iter().map(|x| x.redis.cmds_per_job).collect()),
            w2_scripts: m(self.w2.iter().map(|x| x.redis.scripts_per_job).collect()),
            w2_redis_cpu: m(self.w2.iter().map(|x| x.redis.cpu_us_per_job).collect()),
            w2_worker_cpu: m(self.w2.iter().map(|x| x.worker_cpu_us_per_job).collect()),
            w1_client_cpu: m(self.w1_single.iter().map(|x| x.client_cpu_us_per_job).collect()),
            w1_cmds: m(self.w1_single.iter().map(|x| x.redis.cmds_per_job).collect()),
            w1_redis_cpu: m(self.w1_single.iter().map(|x| x.redis.cpu_us_per_job).collect()),
            w3_cmds: m(self.w3.iter().map(|x| x.redis.cmds_per_job).collect()),
            w3_redis_cpu: m(self.w3.iter().map(|x| x.redis.cpu_us_per_job).collect()),
        }
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| fmt(x, decimals)).unwrap_or_else(|| "n/a".to_owned())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_owned(),
    }
}

/// The systems of a run, ours first.
fn ordered(res: &Results) -> Vec<(&String, &SystemResults)> {
    let mut v: Vec<(&String, &SystemResults)> = res.systems.iter().collect();
    v.sort_by_key(|(k, _)| (k.as_str() != "ours", k.as_str()));
    v
}

/// The Markdown report of a run.
pub fn render(res: &Results) -> String {
    let mut out = Vec::new();
    out.push("| Queue | W1 single enqueue, jobs/s | W1 bulk enqueue, jobs/s | W2 process, jobs/s | W3 p50 ms | W3 p99 ms | W3 offered, jobs/s | Peak RSS per worker proc, MiB (W2, median) | Redis cmds/job (W2) | CPU µs/job W2: workers + Redis |".to_owned());
    out.push("|---|---|---|---|---|---|---|---|---|---|".to_owned());
    for (_, sr) in ordered(res) {
        let med = sr.medians();
        let mut notes = Vec::new();
        if sr.w2.iter().any(|x| !x.complete) {
            notes.push("W2 incomplete");
        }
        if sr.w3.iter().any(|x| !x.complete) {
            notes.push("W3 backlog not drained");
        }
        let rss_all = median(&sr.w2.iter().map(|x| x.peak_rss_mib.iter().sum()).collect::<Vec<f64>>());
        let procs = sr.w2.first().map(|x| x.peak_rss_mib.len()).unwrap_or(0);
        out.push(format!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sr.label,
            if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) },
            mmm(&sr.w1_single.iter().map(|x| x.client.rate).collect::<Vec<_>>(), 0),
            mmm(&sr.w1_bulk.iter().map(|x| x.client.rate).collect::<Vec<_>>(), 0),
            mmm(&sr.w2.iter().map(|x| x.rate).collect::<Vec<_>>(), 0),
            mmm(&sr.w3.iter().filter_map(|x| x.p50_ms).collect::<Vec<_>>(), 2),
            mmm(&sr.w3.iter().filter_map(|x| x.p99_ms).collect::<Vec<_>>(), 2),
            mmm(&sr.w3.iter().map(|x| x.producer.achieved_rate).collect::<Vec<_>>(), 0),
            match (med.rss_mib, rss_all) {
                (Some(r), Some(all)) => format!("{r:.0} (all {procs} procs: {all:.0})"),
                _ => "n/a".to_owned(),
            },
            opt(med.w2_cmds, 1),
            match (med.w2_worker_cpu, med.w2_redis_cpu) {
                (Some(w), Some(r)) => format!("{w:.0} + {r:.0}"),
                _ => "n/a".to_owned(),
            },
        ));
    }
    let cfg = &res.config;
    out.push(String::new());
    out.push(format!(
        "Cells are min / median / max over {} repetition(s). W1/W2 n={} jobs, W2 {} worker processes x concurrency {}; W3 offered {} jobs/s for {} s, latency = enqueue call to handler start. Other processes' CPU share during the measured windows: {}.",
        cfg["reps"],
        cfg["n"].as_u64().map(|n| fmt(n as f64, 0)).unwrap_or_default(),
        cfg["procs"],
        cfg["concurrency"],
        cfg["w3_rate"],
        cfg["w3_duration"],
        noise_summary(res),
    ));
    out.push(String::new());
    out.push("| Queue | W1 single: client CPU µs/job | W1 single: Redis cmds/job | W1 single: Redis CPU µs/job | W2: worker CPU µs/job | W2: Redis CPU µs/job | W2: Redis cmds/job (Lua scripts/job) | W3: Redis cmds/job | W3: Redis CPU µs/job |".to_owned());
    out.push("|---|---|---|---|---|---|---|---|---|".to_owned());
    for (_, sr) in ordered(res) {
        let m = sr.medians();
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |",
            sr.label,
            opt(m.w1_client_cpu, 0),
            opt(m.w1_cmds, 1),
            opt(m.w1_redis_cpu, 1),
            opt(m.w2_worker_cpu, 0),
            opt(m.w2_redis_cpu, 1),
            opt(m.w2_cmds, 1),
            opt(m.w2_scripts, 2),
            opt(m.w3_cmds, 1),
            opt(m.w3_redis_cpu, 1),
        ));
    }
    if let Some(ours) = res.systems.get("ours") {
        let others: Vec<(&String, &SystemResults)> =
            res.systems.iter().filter(|(k, _)| *k != "ours").collect();
        if !others.is_empty() {
            let o = ours.medians();
            out.push(String::new());
            let mut head = "| Median | ours".to_owned();
            let mut sep = "|---|---".to_owned();
            for (_, sr) in &others {
                head.push_str(&format!(" | {} | ours / {}", sr.label, sr.label));
                sep.push_str("|---|---");
            }
            out.push(head + " |");
            out.push(sep + "|");
            type Get = fn(&Medians) -> Option<f64>;
            let rows: [(&str, Get, usize); 12] = [
                ("W1 single enqueue, jobs/s (higher is better)", |m| m.w1_single, 0),
                ("W1 bulk enqueue, jobs/s (higher is better)", |m| m.w1_bulk, 0),
                ("W2 process, jobs/s (higher is better)", |m| m.w2, 0),
                ("W3 p50 ms (lower is better)", |m| m.w3_p50, 2),
                ("W3 p99 ms (lower is better)", |m| m.w3_p99, 2),
                ("Peak RSS per worker process, MiB", |m| m.rss_mib, 0),
                ("W2 Redis cmds/job", |m| m.w2_cmds, 1),
                ("W2 Redis CPU µs/job", |m| m.w2_redis_cpu, 1),
                ("W2 worker CPU µs/job", |m| m.w2_worker_cpu, 0),
                ("W1 single client CPU µs/job", |m| m.w1_client_cpu, 0),
                ("W1 single Redis cmds/job", |m| m.w1_cmds, 1),
                ("W1 single Redis CPU µs/job", |m| m.w1_redis_cpu, 1),
            ];
            for (name, get, d) in rows {
                let mut line = format!("| {name} | {}", opt(get(&o), d));
                for (_, sr) in &others {
                    let m = sr.medians();
                    line.push_str(&format!(" | {} | {}", opt(get(&m), d), ratio(get(&o), get(&m))));
                }
                out.push(line + " |");
            }
        }
    }
    out.push(String::new());
    out.push(
        "Redis commands per job in W2 (median run by jobs/s; commands inside Lua scripts included):"
            .to_owned(),
    );
    out.push(String::new());
    for (_, sr) in ordered(res) {
        let mut runs: Vec<&W2> = sr.w2.iter().collect();
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        if let Some(run) = runs.get(runs.len() / 2) {
            let top: Vec<String> = run
                .redis
                .per_job
                .iter()
                .filter(|(_, v)| *v >= 0.05)
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            out.push(format!("- {}: {:.1} in all; {}", sr.label, run.redis.cmds_per_job, top.join(", ")));
        }
    }
    out.push(String::new());
    out.push("Settings:".to_owned());
    out.push(String::new());
    for (_, sr) in ordered(res) {
        out.push(format!("- {}: {}", sr.label, sr.settings));
    }
    out.join("\n")
}

fn noise_summary(res: &Results) -> String {
    let mut v = Vec::new();
    for sr in res.systems.values() {
        v.extend(sr.w1_single.iter().chain(sr.w1_bulk.iter()).filter_map(|x| x.noise));
        v.extend(sr.w2.iter().filter_map(|x| x.noise));
        v.extend(sr.w3.iter().filter_map(|x| x.noise));
    }
    match median(&v) {
        Some(m) => {
            format!("median {:.0}%, max {:.0}%", 100.0 * m, 100.0 * v.iter().copied().fold(0.0, f64::max))
        }
        None => "n/a".to_owned(),
    }
}

/// The medians of a finished run, for scripts (`--medians` / the combined table).
pub fn medians_json(res: &Results) -> serde_json::Value {
    let map: BTreeMap<&String, Medians> = res.systems.iter().map(|(k, v)| (k, v.medians())).collect();
    serde_json::to_value(map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formatting() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median(&[]), None);
        assert_eq!(fmt(1234567.4, 0), "1,234,567");
        assert_eq!(fmt(999.0, 0), "999");
        assert_eq!(mmm(&[1.0, 3.0, 2.0], 1), "1.0 / 2.0 / 3.0");
    }
}
