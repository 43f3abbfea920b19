//! Benchmark: one tick of 100,000 schedules.
//!
//! Creates a scratch database with 100,000 tenants, connections and schedules (one object
//! each) all due at the same instant, starts a real `crm-scheduler` process on it with a
//! scratch Redis prefix, lets it become the leader and load the schedules, and reads the
//! figures of the tick from its log: planning, the tick-time database reads and the push of
//! 100,000 jobs (overlapped, chunk by chunk), recording `last_tick_at`; then the process's
//! peak RSS (`VmHWM`). Figures are printed, not asserted (targets: tick ≤ 2 s, RSS ≤ 200 MB).
//!
//! `cargo bench -p crm-scheduler --bench tick` (needs PostgreSQL and Redis as the tests do;
//! `CRM_FLEET_BENCH_SCHEDULES` changes the count, `CRM_FLEET_BENCH_REDIS_URL` the Redis).

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

    let mut child = Command::new(env!("CARGO_BIN_EXE_crm-scheduler"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
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
    let tick = loop {
        let (at, v) = rx.recv_timeout(Duration::from_secs(120)).expect("scheduler log");
        match v["message"].as_str() {
            Some("schedules loaded") => {
                loaded = Some(at - started);
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
        "tick wall time: plan {} ms + database read and push {} ms (the read overlaps the pushes; its last rows taken at {} ms) = {} ms; then last_tick_at recorded in {} ms",
        ms("plan_ms"),
        ms("enqueue_ms"),
        ms("read_ms"),
        ms("plan_ms") + ms("enqueue_ms"),
        ms("record_ms"),
    );
    println!(
        "redis: {} script calls, {:.0} ms of server time during the run (shared server: approximate)",
        redis_after.0 - redis_before.0,
        (redis_after.1 - redis_before.1) as f64 / 1000.0
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
