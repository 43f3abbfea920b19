//! Benchmark: one tick of 100,000 schedules.
//!
//! Creates a scratch database with 100,000 tenants, connections and schedules (one object
//! each) all due at the same instant, starts a real `crm-scheduler` process on it with a
//! scratch Redis prefix, lets it become the leader and load the schedules, and reads the
//! figures of the tick from its log: the tick-time database read, planning and the push of
//! 100,000 jobs (overlapped, chunk by chunk), recording `last_tick_at`; then the process's
//! peak RSS (`VmHWM`). Figures are printed, not asserted (targets: tick ≤ 2 s, RSS ≤ 200 MB).
//!
//! `cargo bench -p crm-scheduler --bench tick` (needs PostgreSQL and Redis as the tests do;
//! `CRM_FLEET_BENCH_SCHEDULES` changes the count, `CRM_FLEET_BENCH_REDIS_URL` the Redis,
//! `CRM_FLEET_BENCH_SCHEDULER` the scheduler binary).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Timelike, Utc};
use crm_jobs::testing::{REDIS_URL, TestDb, unique};
use crm_queue::{Queue, QueueConfig};
use serde_json::Value;

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) end with ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user + system) the Redis server has used so far.
async fn redis_cpu(queue: &Queue) -> f64 {
    let mut conn = queue.connection();
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await.unwrap_or_default();
    info.lines()
        .filter_map(|l| l.strip_prefix("used_cpu_user:").or_else(|| l.strip_prefix("used_cpu_sys:")))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// Calls and server microseconds of EVALSHA so far (the queue's scripts). Redis is shared with
/// other users, so the difference around the tick is approximate.
async fn evalsha_stats(queue: &Queue) -> (u64, u64) {
    let mut conn = queue.connection();
    let info: String =
        redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap_or_default();
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else { return (0, 0) };
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// The Redis server's `used_memory` in bytes (server-wide: approximate on a shared server).
async fn used_memory(queue: &Queue) -> i64 {
    let mut conn = queue.connection();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok()).unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("tick benchmark: run with `cargo bench -p crm-scheduler --bench tick`");
        return;
    }
    let n: i64 =
        std::env::var("CRM_FLEET_BENCH_SCHEDULES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: i64) {
    let db = TestDb::new().await;
    let prefix = unique("crmbench-");
    // The shared test Redis by default; `CRM_FLEET_BENCH_REDIS_URL` points at another (a
    // private server measures the scheduler without other users' load).
    let redis_url = std::env::var("CRM_FLEET_BENCH_REDIS_URL").unwrap_or_else(|_| REDIS_URL.to_owned());
    let queue =
        Queue::connect(QueueConfig::new(&redis_url, crm_jobs::job::DEFAULT_QUEUE).with_prefix(&prefix))
            .await
            .expect("redis");

    let setup = Instant::now();
    for sql in [
        "INSERT INTO tenants (id) SELECT 'bench' || g FROM generate_series(1, $1) g",
        "INSERT INTO connections (tenant_id, provider, auth_kind, account_id, api_base, key_id) \
         SELECT 'bench' || g, 'hubspot', 'static_token', 'acct' || g, 'http://127.0.0.1:9', 'k1' \
         FROM generate_series(1, $1) g",
    ] {
        sqlx::query(sql).bind(n).execute(&db.pool).await.expect("setup");
    }
    // Every schedule fires once a day, at the same instant, a little from now.
    let fire = (Utc::now() + TimeDelta::seconds(20)).with_nanosecond(0).expect("whole second");
    let cron = format!("{} {} {} * * *", fire.second(), fire.minute(), fire.hour());
    sqlx::query("INSERT INTO schedules (connection_id, objects, cron) SELECT id, ARRAY['contact'], $1 FROM connections")
        .bind(&cron)
        .execute(&db.pool)
        .await
        .expect("schedules");
    sqlx::query("ANALYZE").execute(&db.pool).await.expect("analyze");
    println!(
        "setup: {n} tenants, connections and schedules in {:.1} s; all fire at {fire} (cron {cron:?}, UTC)",
        setup.elapsed().as_secs_f64()
    );

    // `CRM_FLEET_BENCH_SCHEDULER` runs another build of the scheduler (an earlier commit's,
    // say) under the same bench, for a before-and-after comparison in one session.
    let scheduler = std::env::var("CRM_FLEET_BENCH_SCHEDULER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_crm-scheduler").to_owned());
    println!("scheduler binary: {scheduler}");
    let mut child = Command::new(&scheduler)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        // The scratch database is migrated already (and an earlier build would not know its
        // newest migrations).
        .env("CRM_FLEET_NO_MIGRATE", "true")
        .env("REDIS_URL", &redis_url)
        .env("CRM_FLEET_REDIS_PREFIX", &prefix)
        .env("CRM_FLEET_API_ADDR", "127.0.0.1:0")
        .env("CRM_FLEET_LOG_FORMAT", "json")
        .env("CRM_FLEET_TOKEN_KEY", crm_jobs::auth::Keyring::generate_base64())
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crm-scheduler");
    let pid = child.id();
    let started = Instant::now();
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Value)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    let _ = tx.send((Instant::now(), v));
                }
                // Not a log line: a configuration error or a panic; show it.
                Err(_) => eprintln!("crm-scheduler: {line}"),
            }
        }
    });
    let redis_before = evalsha_stats(&queue).await;
    let memory_before = used_memory(&queue).await;
    let mut loaded = None;
    let mut cpu_before = (0.0, 0.0);
    let tick = loop {
        let (at, v) = rx.recv_timeout(Duration::from_secs(120)).expect("scheduler log");
        match v["message"].as_str() {
            Some("schedules loaded") => {
                loaded = Some(at - started);
                cpu_before = (cpu_seconds(pid), redis_cpu(&queue).await);
                println!(
                    "leader loaded {} schedules {:.2} s after start; RSS then {} MB",
                    v["schedules"],
                    (at - started).as_secs_f64(),
                    status_kb(pid, "VmRSS:").unwrap_or(0) / 1024
                );
            }
            Some("tick") => break v,
            Some(m) if v["level"] == "WARN" || v["level"] == "ERROR" => println!("scheduler: {m} {v}"),
            _ => {}
        }
    };
    let cpu_after = (cpu_seconds(pid), redis_cpu(&queue).await);
    let hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
    let rss = status_kb(pid, "VmRSS:").unwrap_or(0);
    let ms = |k: &str| tick[k].as_u64().unwrap_or(0);
    let stats = queue.stats().await.expect("stats");
    let redis_after = evalsha_stats(&queue).await;
    let memory_after = used_memory(&queue).await;
    let mut conn = queue.connection();
    let series_bytes: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(queue.keys().key("wm"))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap_or(None);
    println!(
        "tick: {} schedules due, {} jobs pushed, {} enqueued, {} duplicate",
        tick["schedules"], tick["jobs"], tick["enqueued"], tick["duplicate"]
    );
    println!(
        "tick wall time: {} ms to read, plan and push (overlapped: planning took {} ms of it, the read's last rows were taken at {} ms); then last_tick_at recorded in {} ms",
        ms("enqueue_ms"),
        ms("plan_ms"),
        ms("read_ms"),
        ms("record_ms"),
    );
    println!(
        "redis: {} script calls, {:.0} ms of server time during the run (shared server: approximate)",
        redis_after.0 - redis_before.0,
        (redis_after.1 - redis_before.1) as f64 / 1000.0
    );
    println!(
        "cpu from load to tick end: scheduler {:.2} s, redis server {:.2} s (server-wide) — two cores are shared by these, PostgreSQL and this bench",
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
    );
    println!(
        "redis memory: +{:.1} MB over the tick (server-wide), of which {:.1} MB stays after the jobs run: the tick dedupe series (`wm`)",
        (memory_after - memory_before) as f64 / 1e6,
        series_bytes.unwrap_or(0) as f64 / 1e6,
    );
    println!(
        "scheduler RSS: peak (VmHWM) {} MB, now {} MB; queue now holds {} ready jobs",
        hwm / 1024,
        rss / 1024,
        stats.ready
    );
    if loaded.is_none() {
        println!("(the load line was not seen)");
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = queue.destroy().await;
}
