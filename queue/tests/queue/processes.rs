//! The queue under real worker processes (`crm-queue-testworker`): bulk processing across
//! processes, SIGKILL recovery, poison pills, retries and dead letters, Redis stalls and
//! graceful shutdown.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use crm_queue::{Lane, NewJob, Priority};
use serde_json::json;

use crate::support::{PrivateRedis, TestEnv, WorkerProc, eventually};

fn lane(tenant: &str) -> Lane {
    Lane::new("hubspot", tenant, Priority::Normal)
}

fn job(env: &TestEnv, tenant: &str, body: serde_json::Value) -> NewJob {
    let mut body = body;
    body["record"] = json!(env.record_key());
    NewJob::json("test", lane(tenant), &body).expect("json")
}

/// Waits for the worker's `ready` line.
fn wait_ready(w: &mut WorkerProc) -> String {
    let stdout = w.child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready "), "unexpected: {line}");
    line.trim().trim_start_matches("ready ").to_owned()
}

fn starts_by_job(runs: &[String]) -> HashMap<String, Vec<(u32, String, i64)>> {
    let mut out: HashMap<String, Vec<(u32, String, i64)>> = HashMap::new();
    for r in runs {
        let f: Vec<&str> = r.split(' ').collect();
        if f[0] == "start" {
            out.entry(f[1].to_owned()).or_default().push((
                f[2].parse().unwrap_or(0),
                f[3].to_owned(),
                f[4].parse().unwrap_or(0),
            ));
        }
    }
    out
}

async fn drained(env: &TestEnv) -> bool {
    let s = env.queue.stats().await.expect("stats");
    s.ready + s.delayed + s.leased + s.dying == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_jobs_run_once_each_across_three_processes() {
    let env = TestEnv::new().await;
    let jobs: Vec<_> =
        (0..10_000).map(|i| job(&env, &format!("t{}", i % 20), json!({"op": "noop"}))).collect();
    let ids: Vec<String> =
        env.queue.push_bulk(jobs).await.expect("push").iter().map(|o| o.id().to_string()).collect();
    let mut workers: Vec<WorkerProc> = (0..3).map(|_| env.worker(&[("concurrency", "32")])).collect();
    for w in &mut workers {
        wait_ready(w);
    }
    eventually(Duration::from_secs(120), "all 10,000 jobs processed", || drained(&env)).await;
    let runs = env.runs().await;
    let starts = starts_by_job(&runs);
    assert_eq!(starts.len(), 10_000, "every job ran");
    for id in &ids {
        let s = &starts[id];
        assert_eq!(s.len(), 1, "job {id} ran {} times: {s:?}", s.len());
    }
    let per_worker = starts.values().fold(HashMap::<&str, u32>::new(), |mut m, s| {
        *m.entry(s[0].1.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_worker.len(), 3, "all three processes took work: {per_worker:?}");
    assert_eq!(env.dead_letter_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_workers_job_completes_elsewhere_within_lease_plus_five_seconds() {
    let env = TestEnv::with(|c| c.with_lease_ttl(Duration::from_secs(3))).await;
    let lease = Duration::from_secs(3);
    let id = env
        .queue
        .push(job(&env, "t", json!({"op": "sleep", "ms": 1500})))
        .await
        .expect("push")
        .id()
        .to_string();
    let mut a = env.worker(&[("lease-ms", "3000")]);
    wait_ready(&mut a);
    eventually(Duration::from_secs(10), "job started on A", || async { !env.runs().await.is_empty() }).await;
    a.signal("KILL");
    let killed_at = Instant::now();
    let mut b = env.worker(&[("lease-ms", "3000")]);
    wait_ready(&mut b);
    eventually(lease + Duration::from_secs(5), "job done on B", || async {
        env.runs().await.iter().any(|r| r.starts_with(&format!("done {id} ")))
    })
    .await;
    let took = killed_at.elapsed();
    let starts = starts_by_job(&env.runs().await);
    let s = &starts[&id];
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].0, s[1].0), (1, 2), "attempt incremented");
    assert_ne!(s[0].1, s[1].1, "different workers");
    assert!(took <= lease + Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_every_time_is_dead_lettered_as_poison() {
    let env = TestEnv::with(|c| c.with_lease_ttl(Duration::from_millis(1200)).with_poison_limit(2)).await;
    let id = env.queue.push(job(&env, "t", json!({"op": "crash"}))).await.expect("push").id();
    // A supervisor restarts the crashing worker, as Kubernetes would.
    let deadline = Instant::now() + Duration::from_secs(40);
    while env.dead_letter_count().await == 0 {
        assert!(Instant::now() < deadline, "poison job not dead-lettered");
        let mut w = env.worker(&[("lease-ms", "1200"), ("poison", "2"), ("reap-ms", "200")]);
        wait_ready(&mut w);
        // Either it crashes on the job, or it reaps and buries the job; give it a moment.
        let _ = w.wait_exit(Duration::from_secs(3)).await;
    }
    let (reason, attempts, orphans): (String, i32, i32) =
        sqlx::query_as("SELECT reason, attempts, orphans FROM dead_letters WHERE job_id = $1")
            .bind(id.0)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(reason, "poison");
    assert_eq!(orphans, 2);
    assert_eq!(attempts, 2);
    let history: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.outcome, a.error_class FROM dead_letter_attempts a JOIN dead_letters d ON d.id = a.dead_letter_id \
         WHERE d.job_id = $1 ORDER BY a.seq",
    )
    .bind(id.0)
    .fetch_all(&env.pool)
    .await
    .expect("history");
    assert_eq!(history, vec![("orphaned".into(), "lease_expired".into()); 2]);
    eventually(Duration::from_secs(5), "job gone from redis", || drained(&env)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_back_off_within_bounds_then_dead_letter_with_history() {
    let env = TestEnv::new().await;
    let ok = env
        .queue
        .push(job(&env, "a", json!({"op": "fail_times", "times": 3})).max_attempts(5))
        .await
        .expect("push")
        .id()
        .to_string();
    let dead = env
        .queue
        .push(job(&env, "b", json!({"op": "fail_times", "times": 10})).max_attempts(3))
        .await
        .expect("push")
        .id();
    let permanent = env.queue.push(job(&env, "c", json!({"op": "permanent"}))).await.expect("push").id();
    let garbage =
        env.queue.push(NewJob::new("test", lane("d"), b"\xff not json".to_vec())).await.expect("push").id();
    let mut w = env.worker(&[
        ("retry-base-ms", "200"),
        ("retry-max-ms", "5000"),
        ("jitter", "equal"),
        ("reap-ms", "200"),
    ]);
    wait_ready(&mut w);
    eventually(Duration::from_secs(30), "all settled", || drained(&env)).await;

    // 3 failures then success: 4 attempts, delays within [cap/2, cap] and growing.
    let starts = starts_by_job(&env.runs().await);
    let s = &starts[&ok];
    assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let gaps: Vec<i64> = s.windows(2).map(|w| w[1].2 - w[0].2).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let cap = 200i64 << i;
        // Promotion runs every 200 ms, so a retry may start up to one tick late.
        assert!(*gap >= cap / 2 && *gap <= cap + 400, "gap {i} = {gap} ms, cap {cap} ms: {gaps:?}");
    }
    assert!(gaps.windows(2).all(|w| w[1] >= w[0] - 200), "growing: {gaps:?}");

    let rows: Vec<(uuid::Uuid, String, String, i32, i64)> = sqlx::query_as(
        "SELECT d.job_id, d.reason, d.error_class, d.attempts, \
         (SELECT count(*) FROM dead_letter_attempts a WHERE a.dead_letter_id = d.id) FROM dead_letters d",
    )
    .fetch_all(&env.pool)
    .await
    .expect("rows");
    let by_id: HashMap<uuid::Uuid, _> = rows.into_iter().map(|r| (r.0, (r.1, r.2, r.3, r.4))).collect();
    assert_eq!(by_id.len(), 3, "{by_id:?}");
    assert_eq!(by_id[&dead.0], ("max_attempts".into(), "transient".into(), 3, 3));
    assert_eq!(by_id[&permanent.0], ("permanent".into(), "rejected".into(), 1, 1));
    assert_eq!(by_id[&garbage.0].0, "undecodable");
    let raw: Vec<u8> = sqlx::query_scalar("SELECT payload FROM dead_letters WHERE job_id = $1")
        .bind(garbage.0)
        .fetch_one(&env.pool)
        .await
        .expect("payload");
    assert_eq!(raw, b"\xff not json".to_vec(), "raw bytes kept");
    assert!(w.is_running(), "bad payloads and failures never stop the worker");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_is_honoured_exactly() {
    let env = TestEnv::new().await;
    let id = env
        .queue
        .push(job(&env, "a", json!({"op": "fail_times", "times": 1, "retry_after_ms": 1500})))
        .await
        .expect("push")
        .id()
        .to_string();
    let mut w = env.worker(&[]);
    wait_ready(&mut w);
    eventually(Duration::from_secs(10), "done", || drained(&env)).await;
    let s = &starts_by_job(&env.runs().await)[&id];
    let gap = s[1].2 - s[0].2;
    assert!((1500..1500 + 450).contains(&gap), "retried after {gap} ms, asked 1500");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_client_pause_makes_workers_wait_not_exit() {
    // A private Redis: pausing the shared one would stall every other test.
    let redis = PrivateRedis::start().await;
    let env = TestEnv::on(&redis.url(), |c| c).await;
    let jobs: Vec<_> =
        (0..3_000).map(|i| job(&env, &format!("t{}", i % 10), json!({"op": "sleep", "ms": 2}))).collect();
    env.queue.push_bulk(jobs).await.expect("push");
    let mut workers: Vec<WorkerProc> = (0..2).map(|_| env.worker(&[("concurrency", "8")])).collect();
    for w in &mut workers {
        wait_ready(w);
    }
    eventually(Duration::from_secs(30), "some progress", || async { env.runs().await.len() > 200 }).await;
    let mut conn = env.queue.connection();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).query_async(&mut conn).await.expect("pause");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    eventually(Duration::from_secs(60), "all done after the pause", || drained(&env)).await;
    for w in &mut workers {
        assert!(w.is_running(), "a worker exited during the Redis pause");
    }
    let starts = starts_by_job(&env.runs().await);
    assert_eq!(starts.len(), 3_000);
    assert!(starts.values().all(|s| s.len() == 1), "no job ran twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_within_the_grace_period_and_keeps_the_long_job() {
    let env = TestEnv::new().await;
    let id = env.queue.push(job(&env, "t", json!({"op": "sleep", "ms": 60_000}))).await.expect("push").id();
    let mut w = env.worker(&[("grace-ms", "1500")]);
    wait_ready(&mut w);
    eventually(Duration::from_secs(10), "started", || async { !env.runs().await.is_empty() }).await;
    w.signal("TERM");
    let exited = w.wait_exit(Duration::from_secs(6)).await.expect("exited");
    assert!(exited <= Duration::from_millis(1500 + 2000), "took {exited:?}");
    let info = env.queue.job(id).await.expect("info").expect("job still in the queue");
    assert_eq!(info.state, "ready", "released back to its lane");
    assert_eq!(info.attempts, 0, "interrupted attempt not counted");
    assert_eq!(info.history.last().map(|h| h.outcome.as_str()), Some("released"));
    // Another worker picks it up right away.
    let short = env.worker(&[]);
    drop(short);
}

/// A job that finished while Redis was gone leaves an ack the worker cannot write. SIGTERM must
/// still end the process: the ack is retried for a bounded time (`ACK_FLUSH`), then given up
/// (its lease expires and the job runs again elsewhere), instead of holding the exit forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_exits_on_sigterm_while_redis_is_gone_with_an_ack_pending() {
    let mut redis = PrivateRedis::start().await;
    let env = TestEnv::on(&redis.url(), |c| c).await;
    env.queue.push(job(&env, "t", json!({"op": "sleep", "ms": 1_000}))).await.expect("push");
    let mut w = env.worker_logging_to(&[("grace-ms", "1000")], std::process::Stdio::piped());
    wait_ready(&mut w);
    eventually(Duration::from_secs(10), "started", || async { !env.runs().await.is_empty() }).await;
    redis.kill();
    // The job ends meanwhile; its ack now retries against a Redis that is not there.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    w.signal("TERM");
    let limit = crm_queue::ACK_FLUSH + Duration::from_secs(15);
    let exited = w.wait_exit(limit).await;
    // A server again, so the environment can clean up after itself.
    redis.restart().await;
    assert!(exited.is_some(), "still running {limit:?} after SIGTERM");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut w.child.stderr.take().expect("stderr"), &mut log).expect("log");
    assert!(
        log.contains("acks not flushed at shutdown; giving them up"),
        "the given-up ack is named:\n{log}"
    );
    assert!(!log.contains("lease lost"), "not mistaken for a lost lease:\n{log}");
}

/// The settings that can lose jobs are named at start: a server without AOF, and one that
/// evicts keys under memory pressure (a private Redis: the shared one's settings are not ours).
#[tokio::test]
async fn redis_settings_that_can_lose_jobs_are_reported() {
    let redis = PrivateRedis::start().await;
    let q =
        crm_queue::Queue::connect(crm_queue::QueueConfig::new(redis.url(), "warn")).await.expect("connect");
    let warnings = q.server_warnings().await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("appendonly is no"), "{warnings:?}");
    let mut conn = q.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .expect("config set");
    let warnings = q.server_warnings().await;
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("maxmemory-policy is allkeys-lru")), "{warnings:?}");
}
