//! What the benchmark reads from `/proc`: CPU time of a process (all its threads), its peak
//! resident set (`VmHWM`), and how busy the whole machine is (to wait for a quiet machine and
//! to report how much CPU other processes used during a measurement).
//!
//! CPU times come in clock ticks (`USER_HZ`, 100 per second on Linux): 10 ms resolution, which
//! is fine for runs of seconds and many thousands of jobs. The peers' driver reads the same
//! fields.

use std::time::Duration;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat` and `/proc/stat`. It is 100 on
/// every Linux architecture the project runs on (the kernel ABI fixes it for user space).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, all threads) a live process has used; 0 if it is gone.
pub fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after it are well-formed.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11) + get(12)) as f64 / TICKS_PER_SECOND
}

/// CPU seconds this process has used so far.
pub fn self_cpu_s() -> f64 {
    process_cpu_s(std::process::id())
}

/// Peak resident set size of a live process in MiB (`VmHWM`), if readable.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// (busy, total) CPU seconds of the whole machine since boot, summed over CPUs.
pub fn machine_cpu_s() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = stat.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    ((total - idle) as f64 / TICKS_PER_SECOND, total as f64 / TICKS_PER_SECOND)
}

/// Logical CPUs of the machine.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Share of the machine's CPU that was busy over `window` (while this benchmark idles, this is
/// other processes' load).
pub async fn busy_share(window: Duration) -> f64 {
    let (b0, t0) = machine_cpu_s();
    tokio::time::sleep(window).await;
    let (b1, t1) = machine_cpu_s();
    if t1 <= t0 { 0.0 } else { ((b1 - b0) / (t1 - t0)).clamp(0.0, 1.0) }
}

/// Share of the machine's CPU used by processes other than the benchmark's during a window:
/// machine busy time minus `ours_s`, over `seconds` of `cpus()` CPUs.
pub fn noise_share(busy0: f64, busy1: f64, ours_s: f64, seconds: f64) -> Option<f64> {
    if seconds <= 0.0 {
        return None;
    }
    Some(((busy1 - busy0) - ours_s).max(0.0) / (seconds * cpus() as f64))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_owned()
}

/// The machine a run measured: date, kernel, CPUs, memory, and this process's nice value and
/// CFS autogroup (the priority `scripts/bench-all.sh` gives the benchmarks).
pub fn machine() -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("date".into(), chrono::Local::now().to_rfc3339());
    env.insert("kernel".into(), read("/proc/sys/kernel/osrelease"));
    env.insert("cpus".into(), cpus().to_string());
    let cpuinfo = read("/proc/cpuinfo");
    if let Some(m) = cpuinfo.lines().find(|l| l.starts_with("model name")) {
        env.insert("cpu_model".into(), m.split_once(':').map(|x| x.1.trim()).unwrap_or("").to_owned());
    }
    if let Some(m) = read("/proc/meminfo").lines().next() {
        env.insert("mem_total".into(), m.split_once(':').map(|x| x.1.trim()).unwrap_or("").to_owned());
    }
    let stat = read("/proc/self/stat");
    if let Some((_, rest)) = stat.rsplit_once(')') {
        // Field 19 (nice) is the 17th after the command name.
        env.insert("nice".into(), rest.split_whitespace().nth(16).unwrap_or("").to_owned());
    }
    env.insert("autogroup".into(), read("/proc/self/autogroup"));
    env.insert("git_head".into(), git(&["rev-parse", "--short", "HEAD"]));
    env.insert("profile".into(), if cfg!(debug_assertions) { "debug" } else { "release" }.to_owned());
    env
}

/// The output of `git <args>` in the workspace this binary was built from (empty on failure).
pub fn git(args: &[&str]) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(self_cpu_s() >= 0.0);
        assert!(peak_rss_mib(std::process::id()).is_some_and(|m| m > 0.0));
        let (busy, total) = machine_cpu_s();
        assert!(total >= busy && total > 0.0);
    }
}
