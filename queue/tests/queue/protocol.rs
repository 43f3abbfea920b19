//! The queue protocol driven directly through `Queue`: push, fetch, fencing, unique keys,
//! lanes and admission, delayed promotion.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crm_queue::{AttemptRecord, DeadReason, InJobToken, Lane, Limit, NewJob, Priority, PushOutcome};

use crate::support::{LossyProxy, TestEnv, eventually};

fn lane(tenant: &str) -> Lane {
    Lane::new("hubspot", tenant, Priority::Normal)
}

fn job(tenant: &str) -> NewJob {
    NewJob::new("noop", lane(tenant), br#"{"op":"noop"}"#.to_vec())
}

fn record(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        attempt,
        started_at: 1,
        finished_at: 2,
        worker: "test".into(),
        outcome: "dead".into(),
        error_class: "rejected".into(),
        message: "no".into(),
        provider_status: Some(400),
        provider_code: Some("VALIDATION_ERROR".into()),
    }
}

#[tokio::test]
async fn push_fetch_ack_round_trip_leaves_nothing_behind() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let pushed = q.push_bulk((0..50).map(|i| job(&format!("t{}", i % 5))).collect()).await.expect("push");
    assert_eq!(pushed.len(), 50);
    assert!(pushed.iter().all(|p| !p.is_duplicate()));
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.active_lanes), (50, 5));

    let mut seen = HashSet::new();
    loop {
        let batch = q.fetch("w1", 7).await.expect("fetch");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        for j in &batch {
            assert_eq!(j.attempt, 1);
            assert!(seen.insert(j.lease.job), "job handed out twice");
        }
        let leases: Vec<_> = batch.iter().map(|j| j.lease.clone()).collect();
        assert!(q.ack(&leases).await.expect("ack").into_iter().all(|ok| ok));
    }
    assert_eq!(seen.len(), 50);
    let expected: HashSet<_> = pushed.iter().map(PushOutcome::id).collect();
    assert_eq!(seen, expected);

    // Finished jobs are trimmed: only bookkeeping keys of the queue remain, no job hashes.
    let mut conn = q.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}job:*", q.keys().base()))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.is_empty(), "job hashes left: {}", keys.len());
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased, stats.delayed), (0, 0, 0));
}

/// A tick writes 100,000 job hashes, so a new one holds only what differs from the defaults;
/// every reader takes an absent count as zero and an absent unique key or meta as none.
#[tokio::test]
async fn a_new_job_stores_no_default_fields_and_reads_as_untried() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let plain = q.push(job("t1")).await.expect("push").id();
    let full = q.push(job("t2").unique_key("u2").meta("traceparent", "00-x")).await.expect("push").id();
    let conn = q.connection();
    let fields = |id: crm_queue::JobId| {
        let key = q.keys().job(&id.to_string());
        let mut conn = conn.clone();
        async move {
            let mut f: Vec<String> =
                redis::cmd("HKEYS").arg(key).query_async(&mut conn).await.expect("hkeys");
            f.sort();
            f
        }
    };
    assert_eq!(fields(plain).await, ["e", "l", "m", "p", "s", "t"]);
    assert_eq!(fields(full).await, ["e", "l", "m", "meta", "p", "s", "t", "u"]);
    let info = q.job(plain).await.expect("job").expect("live");
    assert_eq!((info.state.as_str(), info.attempts, info.orphans), ("ready", 0, 0));

    let leased = q.fetch("w1", 2).await.expect("fetch");
    assert_eq!(leased.len(), 2);
    for j in &leased {
        assert_eq!((j.attempt, j.orphans), (1, 0));
    }
    let with_meta = leased.iter().find(|j| j.lease.job == full).expect("the job with meta");
    assert_eq!(with_meta.meta.get("traceparent").map(String::as_str), Some("00-x"));
}

#[tokio::test]
async fn a_stale_lease_can_neither_ack_nor_retry() {
    let env = TestEnv::with(|c| c.with_lease_ttl(Duration::from_millis(300))).await;
    let q = &env.queue;
    q.push(job("t")).await.expect("push");
    let first = q.fetch("w1", 1).await.expect("fetch").pop().expect("a job");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reaped = q.reap("w2", 10).await.expect("reap");
    assert_eq!(reaped.requeued, 1);

    let second = q.fetch("w2", 1).await.expect("fetch").pop().expect("the job again");
    assert_eq!(second.lease.job, first.lease.job);
    assert_ne!(second.lease.id, first.lease.id);
    assert_eq!(second.attempt, 2, "the orphaned attempt counts");

    assert_eq!(q.ack(std::slice::from_ref(&first.lease)).await.expect("ack"), vec![false]);
    assert!(!q.retry(&first.lease, Duration::ZERO, None, false, false).await.expect("retry"));
    assert!(q.dead_letter(&first.lease, &record(1), DeadReason::Permanent).await.expect("dead").is_none());
    assert_eq!(
        q.heartbeat("w1", std::slice::from_ref(&first.lease)).await.expect("hb"),
        vec![first.lease.job]
    );

    let info = q.job(second.lease.job).await.expect("info").expect("live");
    assert_eq!(info.state, "leased");
    assert_eq!(info.history.len(), 1);
    assert_eq!(info.history[0].outcome, "orphaned");
    assert_eq!(q.ack(std::slice::from_ref(&second.lease)).await.expect("ack"), vec![true]);
}

/// A lease that lapsed while its worker stalled is not reaped at once, and meanwhile admission
/// trims its concurrency slot and may give it to another job. A late heartbeat takes the slot
/// back while the budget has room (the stall cost nothing), and reports the lease lost once
/// the budget is full: renewing then would run the job outside its budget.
#[tokio::test]
async fn a_late_heartbeat_does_not_renew_a_lease_whose_slot_was_given_away() {
    let env = TestEnv::with(|c| c.with_lease_ttl(Duration::from_millis(300))).await;
    let q = &env.queue;
    q.set_limit("c:x", Limit::Concurrency(2)).await.expect("limit");
    let limited = lane("t").budget("c:x");
    q.push_bulk((0..4).map(|_| NewJob::new("noop", limited.clone(), b"{}".to_vec())).collect())
        .await
        .expect("push");
    let first = q.fetch("w1", 1).await.expect("fetch").pop().expect("a job");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Admitting another job trims the lapsed slot; one slot is still free.
    q.fetch("w2", 1).await.expect("fetch").pop().expect("a second job");
    assert_eq!(q.slots_in_use("c:x").await.expect("slots"), 1, "the lapsed slot was trimmed");
    assert!(q.heartbeat("w1", std::slice::from_ref(&first.lease)).await.expect("hb").is_empty());
    assert_eq!(q.slots_in_use("c:x").await.expect("slots"), 2, "taken back");
    assert!(q.fetch("w3", 1).await.expect("fetch").is_empty(), "so the budget is full again");

    tokio::time::sleep(Duration::from_millis(400)).await;
    // A worker's promoter trims both lapsed slots and wakes the blocked lane; the two other
    // jobs take the budget.
    q.promote(100).await.expect("promote");
    assert_eq!(q.fetch("w4", 2).await.expect("fetch").len(), 2);
    assert_eq!(
        q.heartbeat("w1", std::slice::from_ref(&first.lease)).await.expect("hb"),
        vec![first.lease.job],
        "its slot went to another job"
    );
    assert_eq!(q.slots_in_use("c:x").await.expect("slots"), 2);
    // The reaper takes the lapsed jobs back; they wait for a slot like any other.
    assert_eq!(q.reap("w4", 10).await.expect("reap").requeued, 2);
    assert!(q.fetch("w5", 1).await.expect("fetch").is_empty(), "the budget is full");
}

/// The reaper dead-letters a poison pill (a job orphaned `poison_limit` times) by writing it to
/// PostgreSQL. With PostgreSQL unreachable (here: a port that accepts and never answers) that
/// write waits out the pool's acquire timeout; meanwhile leases that lapse must still be
/// reclaimed on time, or a stalled PostgreSQL would also stall recovery from crashed workers.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_dead_letter_write_does_not_hold_up_reaping() {
    let env = TestEnv::with(|c| c.with_lease_ttl(Duration::from_millis(300)).with_poison_limit(2)).await;
    let q = &env.queue;
    let poison = q.push(job("a")).await.expect("push").id();
    q.fetch("ghost", 1).await.expect("fetch").pop().expect("leased");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.reap("manual", 10).await.expect("reap").requeued, 1, "orphaned once");
    q.fetch("ghost", 1).await.expect("fetch").pop().expect("leased again");

    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = blackhole.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((sock, _)) = blackhole.accept().await {
            sockets.push(sock);
        }
    });
    let stalled = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(20))
        .connect_lazy(&format!("postgres://crm@{addr}/crm"))
        .expect("lazy pool");
    let consumer = crm_queue::Consumer::start(
        q.clone(),
        crm_queue::PgDeadLetters::new(stalled, "q"),
        crm_queue::ConsumerConfig::new("reaper", 1),
    );
    eventually(Duration::from_secs(5), "the poison pill is being dead-lettered", || async {
        q.job(poison).await.expect("job").is_some_and(|j| j.state == "dying")
    })
    .await;
    // The write of that dead letter now hangs. Another worker's lease lapses:
    let other = q.push(job("b")).await.expect("push").id();
    q.fetch("ghost", 1).await.expect("fetch").pop().expect("leased");
    eventually(Duration::from_secs(4), "the lapsed lease is reclaimed meanwhile", || async {
        q.job(other).await.expect("job").is_some_and(|j| j.state == "ready" && j.orphans == 1)
    })
    .await;
    assert_eq!(
        q.job(poison).await.expect("job").map(|j| j.state),
        Some("dying".to_owned()),
        "kept in the outbox"
    );
    consumer.shutdown().await;
    held.abort();
}

#[tokio::test]
async fn concurrent_pushers_of_one_unique_key_make_one_job() {
    let env = TestEnv::new().await;
    let q = env.queue.clone();
    let pushes = (0..20).map(|_| {
        let q = q.clone();
        tokio::spawn(async move { q.push(job("t").unique_key("sync:conn-1:contacts")).await })
    });
    let outcomes: Vec<PushOutcome> = futures::future::join_all(pushes)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("push"))
        .collect();
    let enqueued: Vec<_> = outcomes.iter().filter(|o| !o.is_duplicate()).collect();
    assert_eq!(enqueued.len(), 1, "{outcomes:?}");
    let winner = enqueued[0].id();
    assert!(outcomes.iter().all(|o| o.id() == winner), "duplicates report the existing job");
    assert_eq!(q.stats().await.expect("stats").ready, 1);

    // While it runs, the key still dedupes; after it finishes, the key is free again.
    let leased = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    assert!(q.push(job("t").unique_key("sync:conn-1:contacts")).await.expect("push").is_duplicate());
    q.ack(&[leased.lease]).await.expect("ack");
    let again = q.push(job("t").unique_key("sync:conn-1:contacts")).await.expect("push");
    assert!(!again.is_duplicate());
    assert_ne!(again.id(), winner);
}

#[tokio::test]
async fn dead_lettering_is_durable_then_finalized() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let pushed = q.push(job("t").unique_key("u1")).await.expect("push").id();
    let leased = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    let dying =
        q.dead_letter(&leased.lease, &record(1), DeadReason::Permanent).await.expect("dead").expect("record");
    assert_eq!(dying.id, pushed);
    assert_eq!(dying.history.len(), 1);
    assert_eq!(q.stats().await.expect("stats").dying, 1);
    // Not finalized yet: still visible, but its unique key is free (it will not run again, so
    // a replay or the next scheduled push must not be merged into it).
    let next = q.push(job("t").unique_key("u1")).await.expect("push");
    assert!(!next.is_duplicate(), "a dying job holds no unique key");

    let dlq = crm_queue::PgDeadLetters::new(env.pool.clone(), "q");
    let id = dlq.record(&dying).await.expect("record").expect("new row");
    assert!(dlq.record(&dying).await.expect("record again").is_none(), "idempotent on job id");
    assert_eq!(q.finalize(&[pushed]).await.expect("finalize"), 1);
    assert_eq!(q.stats().await.expect("stats").dying, 0);
    // Finalizing the dead job does not take the key from the job that holds it now.
    assert_eq!(
        q.push(job("t").unique_key("u1")).await.expect("push").id(),
        next.id(),
        "still held by the new job"
    );

    let (reason, class, status, attempts): (String, String, Option<i32>, i64) = sqlx::query_as(
        "SELECT d.reason, d.error_class, d.provider_status, (SELECT count(*) FROM dead_letter_attempts a WHERE a.dead_letter_id = d.id) \
         FROM dead_letters d WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert_eq!((reason.as_str(), class.as_str(), status, attempts), ("permanent", "rejected", Some(400), 1));
}

#[tokio::test]
async fn one_hundred_thousand_due_delayed_jobs_are_promoted_in_chunks() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let jobs: Vec<_> =
        (0..100_000).map(|i| job(&format!("t{}", i % 100)).delay(Duration::from_millis(200))).collect();
    q.push_bulk(jobs).await.expect("push");
    assert_eq!(q.stats().await.expect("stats").delayed, 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut promoted = 0;
    loop {
        let (moved, _, more) = q.promote(1_000).await.expect("promote");
        assert!(moved <= 1_000);
        promoted += moved;
        if !more {
            break;
        }
    }
    assert_eq!(promoted, 100_000);
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.delayed, stats.active_lanes), (100_000, 0, 100));
}

#[tokio::test]
async fn lanes_are_served_round_robin_and_by_weight() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    // Tenant A floods the queue first; B arrives later with one job.
    q.push_bulk((0..200).map(|_| job("A")).collect()).await.expect("push A");
    let b = q.push(job("B")).await.expect("push B").id();
    let mut before_b = 0;
    loop {
        let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
        q.ack(std::slice::from_ref(&j.lease)).await.expect("ack");
        if j.lease.job == b {
            break;
        }
        before_b += 1;
    }
    assert!(before_b <= 1, "B waited behind {before_b} of A's jobs");

    // Weights 3:1 under contention.
    q.set_limit("w:tenant:C", Limit::Weight(3)).await.expect("weight");
    let heavy = Lane::new("hubspot", "C", Priority::Normal).weight_key("tenant:C");
    let light = Lane::new("hubspot", "D", Priority::Normal).weight_key("tenant:D");
    let mut jobs = Vec::new();
    for _ in 0..400 {
        jobs.push(NewJob::new("noop", heavy.clone(), b"{}".to_vec()));
        jobs.push(NewJob::new("noop", light.clone(), b"{}".to_vec()));
    }
    q.push_bulk(jobs).await.expect("push");
    let mut served: HashMap<String, u32> = HashMap::new();
    for _ in 0..40 {
        for j in q.fetch("w", 10).await.expect("fetch") {
            *served.entry(j.lane.clone()).or_default() += 1;
            q.ack(&[j.lease]).await.expect("ack");
        }
    }
    let c = f64::from(served[&heavy.id()]);
    let d = f64::from(served[&light.id()]);
    let ratio = c / d;
    assert!((ratio - 3.0).abs() <= 0.3, "served {c}:{d} (ratio {ratio:.2})");
}

#[tokio::test]
async fn actions_go_before_syncs_but_syncs_age_in() {
    let env = TestEnv::with(|mut c| {
        c.sync_aging = Duration::from_millis(300);
        c
    })
    .await;
    let q = &env.queue;
    q.push(NewJob::new("sync", Lane::new("hubspot", "t", Priority::Normal), b"{}".to_vec()))
        .await
        .expect("sync");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A fresh sync lane has aged already (never served), so serve it once to start the clock.
    let first = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    q.ack(&[first.lease]).await.expect("ack");
    q.push(NewJob::new("sync", Lane::new("hubspot", "t", Priority::Normal), b"{}".to_vec()))
        .await
        .expect("sync");
    q.push_bulk(
        (0..5)
            .map(|_| NewJob::new("act", Lane::new("hubspot", "t", Priority::High), b"{}".to_vec()))
            .collect(),
    )
    .await
    .expect("actions");
    let order: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
            v.push(j.job_type.clone());
            q.ack(&[j.lease]).await.expect("ack");
        }
        v
    };
    assert_eq!(order, vec!["act", "act", "act", "act", "act", "sync"]);

    // Aging: with actions always waiting, a sync still runs once it waited the aging time.
    q.push_bulk(
        (0..50)
            .map(|_| NewJob::new("act", Lane::new("hubspot", "t", Priority::High), b"{}".to_vec()))
            .collect(),
    )
    .await
    .expect("actions");
    q.push(NewJob::new("sync", Lane::new("hubspot", "t", Priority::Normal), b"{}".to_vec()))
        .await
        .expect("sync");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    assert_eq!(j.job_type, "sync", "aged sync served before waiting actions");
}

#[tokio::test]
async fn a_full_concurrency_budget_blocks_its_lane_until_a_slot_frees() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    q.set_limit("c:provider:hubspot", Limit::Concurrency(2)).await.expect("limit");
    let limited = Lane::new("hubspot", "t1", Priority::Normal).budget("c:provider:hubspot");
    let other = Lane::new("close", "t2", Priority::Normal);
    q.push_bulk((0..5).map(|_| NewJob::new("noop", limited.clone(), b"{}".to_vec())).collect())
        .await
        .expect("push");
    q.push_bulk((0..3).map(|_| NewJob::new("noop", other.clone(), b"{}".to_vec())).collect())
        .await
        .expect("push");

    let batch = q.fetch("w", 10).await.expect("fetch");
    let hubspot: Vec<_> = batch.iter().filter(|j| j.lane == limited.id()).collect();
    assert_eq!(hubspot.len(), 2, "only two slots");
    assert_eq!(batch.len(), 5, "the other lane is not held back");
    assert_eq!(q.slots_in_use("c:provider:hubspot").await.expect("slots"), 2);
    assert!(q.fetch("w", 10).await.expect("fetch").is_empty(), "blocked lane skipped");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.blocked_budgets), (3, 1));

    q.ack(&[hubspot[0].lease.clone()]).await.expect("ack");
    let next = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(next.len(), 1, "one slot freed, one job admitted");
    assert_eq!(q.slots_in_use("c:provider:hubspot").await.expect("slots"), 2);
}

/// A fetch whose reply is lost (the connection dropped after Redis ran it) has leased jobs all
/// the same. The worker's next fetch gets those leases back, their attempt unchanged, instead
/// of leaving them to lapse and be reaped as orphans (a third time, as poison).
/// (Multi-threaded: the environment's cleanup at drop blocks this thread and goes through the
/// proxy, whose tasks must go on running.)
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_whose_reply_was_lost_is_answered_by_the_next_one() {
    let proxy = LossyProxy::start().await;
    let env = TestEnv::on(&proxy.url, |c| c).await;
    let q = &env.queue;
    assert!(q.fetch("w", 10).await.expect("warm-up: the script is loaded").is_empty());
    q.push_bulk((0..3).map(|i| job(&format!("t{i}"))).collect()).await.expect("push");
    proxy.lose_next_reply();
    q.fetch("w", 10).await.expect_err("the reply was lost");
    eventually(Duration::from_secs(5), "the queue reachable again", || async { q.stats().await.is_ok() })
        .await;
    assert_eq!(q.stats().await.expect("stats").leased, 3, "Redis ran the fetch whose reply was lost");
    let leased_until = || async {
        let mut conn = q.connection();
        let until: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(q.keys().key("leased"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .expect("leased");
        until.into_iter().map(|(_, at)| at).max().expect("leased jobs")
    };
    let before = leased_until().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(again.len(), 3, "the lost fetch's leases, answered again");
    assert!(leased_until().await > before, "renewed: the retry may come late in the lease");
    assert!(again.iter().all(|j| j.lease_expiry_ms > before), "{again:?}");
    assert!(again.iter().all(|j| j.attempt == 1), "no attempt spent twice");
    assert!(q.fetch("w", 10).await.expect("fetch").is_empty(), "answered once, nothing new leased");
    let leases: Vec<_> = again.iter().map(|j| j.lease.clone()).collect();
    assert_eq!(q.ack(&leases).await.expect("ack"), vec![true; 3], "live leases");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased), (0, 0));
}

/// Ready jobs held by admission are told apart from those a worker could take: a lane blocked
/// on a full concurrency budget and lanes asleep on a pause count as held, with all their jobs
/// (also those pushed after the lane was set aside); the others are runnable. What KEDA scales
/// on: adding workers for held jobs only adds polling.
#[tokio::test]
async fn held_jobs_are_those_of_blocked_and_sleeping_lanes() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    q.set_limit("c:provider:hubspot", Limit::Concurrency(1)).await.expect("limit");
    let full = Lane::new("hubspot", "t1", Priority::Normal).budget("c:provider:hubspot");
    let paused = |t: &str| Lane::new("close", t, Priority::Normal).budget("x:provider:close");
    let free = Lane::new("pipedrive", "t4", Priority::Normal);
    let jobs =
        |lane: &Lane, n: usize| (0..n).map(|_| NewJob::new("noop", lane.clone(), b"{}".to_vec())).collect();
    q.push_bulk(jobs(&full, 4)).await.expect("push");
    q.push_bulk(jobs(&paused("t2"), 2)).await.expect("push");
    q.push_bulk(jobs(&paused("t3"), 3)).await.expect("push");
    q.push_bulk(jobs(&free, 5)).await.expect("push");
    let before = q.held(1_000).await.expect("held");
    assert_eq!((before.ready, before.runnable(), before.complete), (14, 14, true), "nothing set aside yet");

    q.pause("x:provider:close", Duration::from_secs(60)).await.expect("pause");
    let taken = q.fetch("w", 20).await.expect("fetch");
    assert_eq!(taken.len(), 6, "one hubspot job (one slot) and the five free ones");
    q.push_bulk(jobs(&paused("t2"), 1)).await.expect("pushed into a sleeping lane");
    let held = q.held(1_000).await.expect("held");
    assert_eq!(
        held,
        crm_queue::Held {
            ready: 9,
            blocked_lanes: 1,
            blocked_jobs: 3,
            sleeping_lanes: 2,
            sleeping_jobs: 6,
            complete: true
        }
    );
    assert_eq!(held.runnable(), 0);

    let partial = q.held(1).await.expect("held");
    assert!(!partial.complete, "stopped at the lane limit");
    assert!(partial.runnable() > 0, "uncounted lanes count as runnable: {partial:?}");

    q.pause("x:provider:close", Duration::ZERO).await.expect("lift");
    let lifted = q.held(1_000).await.expect("held");
    assert_eq!((lifted.sleeping_jobs, lifted.runnable()), (0, 6), "the lifted pause woke its lanes");
}

#[tokio::test]
async fn a_paused_budget_sleeps_its_lanes_until_the_pause_ends() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let l = Lane::new("hubspot", "t1", Priority::Normal).budget("x:account:hubspot:42");
    q.push(NewJob::new("noop", l.clone(), b"{}".to_vec())).await.expect("push");
    q.pause("x:account:hubspot:42", Duration::from_millis(400)).await.expect("pause");
    assert!(q.fetch("w", 1).await.expect("fetch").is_empty());
    assert_eq!(q.stats().await.expect("stats").sleeping_lanes, 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    q.promote(100).await.expect("promote");
    let j = q.fetch("w", 1).await.expect("fetch");
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].attempt, 1, "waiting on a pause spends no attempt");
}

/// A job running when its account is paused goes back to the head of its lane (what the
/// workers do with an in-job `InJobToken::Paused`: defer 0, refunded, front): the lane sleeps
/// on the pause, and an operator who lifts it early (`crmctl limits resume`, a pause of 0)
/// gets the job running at once, not when the original pause would have ended.
#[tokio::test]
async fn a_job_sent_back_by_a_pause_runs_as_soon_as_the_pause_is_lifted() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let pause = "x:account:hubspot:43";
    let l = Lane::new("hubspot", "t1", Priority::Normal).budget(pause);
    q.push(NewJob::new("noop", l, b"{}".to_vec())).await.expect("push");
    let job = q.fetch("w", 1).await.expect("fetch").pop().expect("admitted before the pause");
    q.pause(pause, Duration::from_secs(3600)).await.expect("pause");
    let got = q.take_token_unless_paused(pause, &[]).await.expect("take");
    assert!(matches!(got, InJobToken::Paused(d) if d > Duration::from_secs(3500)), "{got:?}");
    assert!(q.retry(&job.lease, Duration::ZERO, None, true, true).await.expect("retry"));
    assert!(q.fetch("w", 1).await.expect("fetch").is_empty(), "the lane sleeps on the pause");
    assert_eq!(q.stats().await.expect("stats").sleeping_lanes, 1);
    q.pause(pause, Duration::ZERO).await.expect("lift the pause");
    let again = q.fetch("w", 1).await.expect("fetch");
    assert_eq!(again.len(), 1, "runs as soon as the pause is lifted");
    assert_eq!(again[0].attempt, 1, "the paused attempt was refunded");
}

#[tokio::test]
async fn partitions_of_one_tenant_keep_their_own_budgets() {
    // One tenant, two accounts at one provider: account 1 is paused, account 2 is not. Pushed
    // in that order, account 1's job must still wait on account 1's pause (a lane keyed by
    // tenant alone would carry the last push's budgets and admit it).
    let env = TestEnv::new().await;
    let q = &env.queue;
    let a = Lane::new("hubspot", "t:1", Priority::Normal).partition("conn-a").budget("x:account:hubspot:1");
    let b = Lane::new("hubspot", "t:1", Priority::Normal).partition("conn-b").budget("x:account:hubspot:2");
    assert_ne!(a.id(), b.id());
    q.pause("x:account:hubspot:1", Duration::from_secs(30)).await.expect("pause");
    let paused = q.push(NewJob::new("noop", a.clone(), b"{}".to_vec())).await.expect("push a").id();
    let free = q.push(NewJob::new("noop", b.clone(), b"{}".to_vec())).await.expect("push b").id();

    let fetched = q.fetch("w", 10).await.expect("fetch");
    let ids: Vec<_> = fetched.iter().map(|j| j.lease.job).collect();
    assert_eq!(ids, vec![free], "only the unpaused account's job is admitted");
    assert_eq!(fetched[0].lane, b.id());
    assert_eq!(q.stats().await.expect("stats").sleeping_lanes, 1, "the paused account's lane sleeps");
    assert_eq!(q.job(paused).await.expect("job").expect("live").state, "ready");

    q.pause("x:account:hubspot:1", Duration::ZERO).await.expect("resume");
    eventually(Duration::from_secs(3), "the resumed account's job is admitted", || async {
        q.promote(100).await.expect("promote");
        q.fetch("w", 10).await.expect("fetch").iter().any(|j| j.lease.job == paused)
    })
    .await;
}

#[test]
fn a_lane_id_splits_back_into_its_labels() {
    use crm_queue::job::parse_lane_id;
    let plain = Lane::new("hubspot", "acme:eu", Priority::High);
    let parted = Lane::new("close", "acme:eu", Priority::Normal).partition("0b6c");
    assert_eq!(plain.id(), "0:hubspot:acme:eu");
    assert_eq!(parted.id(), "1:close/0b6c:acme:eu");
    for lane in [plain, parted] {
        let id = lane.id();
        let labels = parse_lane_id(&id).expect("parses");
        assert_eq!(labels.to_lane(), lane, "{id}");
    }
    assert!(parse_lane_id("2:hubspot:t").is_none(), "unknown class");
    assert!(parse_lane_id("1:hubspot").is_none(), "no tenant");
}

#[tokio::test]
async fn a_lane_label_that_would_make_its_id_ambiguous_is_refused() {
    let env = TestEnv::new().await;
    for (lane, field) in [
        (Lane::new("hub/spot", "t", Priority::Normal), "lane.provider"),
        (Lane::new("hubspot", "t", Priority::Normal).partition("a/b"), "lane.partition"),
        (Lane::new("hubspot", "t", Priority::Normal).partition("a:b"), "lane.partition"),
        (Lane::new("hubspot", "t", Priority::Normal).partition(""), "lane.partition"),
    ] {
        let err = env.queue.push(NewJob::new("noop", lane, vec![])).await.expect_err("refused");
        assert!(
            matches!(err, crm_queue::QueueError::InvalidJob { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

/// A concurrency budget holding something that is not a number (set by hand) is not
/// enforced: before, every fetch meeting it failed, and with it the whole queue.
#[tokio::test]
async fn a_malformed_concurrency_limit_is_ignored_rather_than_failing_every_fetch() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let mut conn = q.connection();
    let _: () = redis::cmd("HSET")
        .arg(q.keys().key("limits"))
        .arg("c:provider:hubspot")
        .arg("10/1000/1")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let lane = Lane::new("hubspot", "t1", Priority::Normal).budget("c:provider:hubspot");
    q.push(NewJob::new("noop", lane, b"{}".to_vec())).await.expect("push");
    let leased = q.fetch("w1", 5).await.expect("fetch works despite the malformed limit");
    assert_eq!(leased.len(), 1);
    let acks = q.ack(&[leased[0].lease.clone()]).await.expect("ack releases the slot");
    assert_eq!(acks, [true]);
    // Through the queue's own API such a value cannot be set.
    let rate = Limit::Rate { count: 10, per: Duration::from_secs(1), burst: 1 };
    let refused = q.set_limit("c:provider:hubspot", rate).await.expect_err("a rate under c: is refused");
    assert!(matches!(refused, crm_queue::QueueError::Config(_)), "{refused}");
    assert!(q.set_limit("c:provider:hubspot", Limit::Concurrency(3)).await.is_ok());
}

#[tokio::test]
async fn a_rate_budget_admits_at_its_rate() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    q.set_limit("r:account:hubspot:1", Limit::Rate { count: 10, per: Duration::from_secs(1), burst: 2 })
        .await
        .expect("limit");
    let l = Lane::new("hubspot", "t1", Priority::Normal).budget("r:account:hubspot:1");
    q.push_bulk((0..20).map(|_| NewJob::new("noop", l.clone(), b"{}".to_vec())).collect())
        .await
        .expect("push");
    let first = q.fetch("w", 20).await.expect("fetch");
    assert_eq!(first.len(), 2, "burst of two");
    eventually(Duration::from_secs(3), "a third job after one emission interval", || async {
        q.promote(100).await.expect("promote");
        !q.fetch("w", 20).await.expect("fetch").is_empty()
    })
    .await;
}

#[tokio::test]
async fn retry_schedules_exactly_and_refund_does_not_count() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let id = q.push(job("t")).await.expect("push").id();
    let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    assert!(q.retry(&j.lease, Duration::from_millis(300), None, false, false).await.expect("retry"));
    assert_eq!(q.job(id).await.expect("job").expect("live").state, "delayed");
    q.promote(10).await.expect("promote");
    assert!(q.fetch("w", 1).await.expect("fetch").is_empty(), "not before its time");
    tokio::time::sleep(Duration::from_millis(350)).await;
    q.promote(10).await.expect("promote");
    let j = q.fetch("w", 1).await.expect("fetch").pop().expect("due now");
    assert_eq!(j.attempt, 2);
    assert!(q.retry(&j.lease, Duration::ZERO, None, true, true).await.expect("defer"));
    let j = q.fetch("w", 1).await.expect("fetch").pop().expect("immediately");
    assert_eq!(j.attempt, 2, "a deferred attempt is refunded");
}

#[tokio::test]
async fn invalid_jobs_are_refused_with_the_field_named() {
    let env = TestEnv::new().await;
    let bad = NewJob::new("noop", Lane::new("hub:spot", "t", Priority::Normal), vec![]);
    let err = env.queue.push(bad).await.expect_err("invalid");
    assert!(err.to_string().contains("lane.provider"), "{err}");
    let bad = NewJob::new("noop", lane("t"), vec![]).max_attempts(0);
    let err = env.queue.push(bad).await.expect_err("invalid");
    assert!(err.to_string().contains("max_attempts"), "{err}");
}

/// A bulk push is all or nothing on bad input: a dedupe TTL under a millisecond (Redis would
/// refuse it as `PX 0` after the jobs before it were written) is refused before any write.
#[tokio::test]
async fn a_bulk_push_with_one_bad_job_writes_nothing() {
    let env = TestEnv::new().await;
    let good = job("t1").dedupe_key("tick:s1:contact:1", Duration::from_secs(60));
    let bad = job("t2").dedupe_key("tick:s2:contact:1", Duration::from_micros(500));
    let err = env.queue.push_bulk(vec![good, bad]).await.expect_err("refused");
    assert!(err.to_string().contains("dedupe"), "names the field: {err}");
    let stats = env.queue.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.delayed, stats.active_lanes), (0, 0, 0), "nothing written: {stats:?}");
    // The first job's dedupe key was not taken either: it can be pushed on its own.
    let again = job("t1").dedupe_key("tick:s1:contact:1", Duration::from_secs(60));
    assert!(!env.queue.push(again).await.expect("push").is_duplicate());
}

/// The same holds for a caller that bypasses the client: `push.lua` checks every job's
/// arguments before its first write.
#[tokio::test]
async fn the_push_script_refuses_malformed_arguments_before_writing() {
    let env = TestEnv::new().await;
    let script = redis::Script::new(&format!(
        "{}\n{}",
        include_str!("../../lua/common.lua"),
        include_str!("../../lua/push.lua")
    ));
    let keys = env.queue.keys();
    let job = |id: &str, tenant: &str, ttl: &str| -> Vec<String> {
        [
            id,
            "noop",
            &format!("1:hubspot:{tenant}"),
            "",
            "",
            "1",
            "{}",
            "3",
            "",
            "0",
            "",
            &format!("tick:{id}"),
            ttl,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut conn = redis::Client::open(crate::support::REDIS_URL)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (label, args) in [
        ("a TTL of 0", [vec!["2".to_owned()], job("a", "t1", "60000"), job("b", "t2", "0")].concat()),
        ("a fractional TTL", [vec!["2".to_owned()], job("a", "t1", "60000"), job("b", "t2", "0.5")].concat()),
        ("too few arguments", [vec!["2".to_owned()], job("a", "t1", "60000")].concat()),
    ]
    .into_iter()
    .chain(["6e4", "60000.0", " 60000", "0x10", "@", "@x", "@1.5", "@inf", "@1234567890123456"].map(|rule| {
        (
            "a malformed dedupe rule",
            [vec!["2".to_owned()], job("a", "t1", "60000"), job("b", "t2", rule)].concat(),
        )
    })) {
        let mut inv = script.key(keys.route());
        inv.arg(keys.base());
        for a in &args {
            inv.arg(a);
        }
        let reply: redis::RedisResult<redis::Value> = inv.invoke_async(&mut conn).await;
        assert!(reply.is_err(), "{label}: refused, got {reply:?}");
        let written: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", keys.base())).query_async(&mut conn).await.expect("keys");
        assert!(written.is_empty(), "{label}: nothing written, found {written:?}");
    }
}

#[tokio::test]
async fn a_dedupe_key_outlives_its_job() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let tick = || job("t").dedupe_key("tick:s1:contact:1700000000", Duration::from_secs(60));
    let first = q.push(tick()).await.expect("push");
    assert!(!first.is_duplicate());
    assert_eq!(q.push(tick()).await.expect("push"), crm_queue::PushOutcome::Duplicate(first.id()));
    let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    q.ack(&[j.lease]).await.expect("ack");
    // Finished and trimmed, yet the same tick is still refused.
    assert!(q.push(tick()).await.expect("push").is_duplicate());
    // A different tick goes through.
    assert!(
        !q.push(job("t").dedupe_key("tick:s1:contact:1700000005", Duration::from_secs(60)))
            .await
            .expect("push")
            .is_duplicate()
    );
}

/// A bulk push decides each job as a push of that job alone would, in order: a job must see
/// the ids, dedupe keys and unique keys taken by the jobs before it in the same call. The same
/// sequence — repeated ids, dedupe keys and unique keys, within the call and from an earlier
/// call, several jobs on one lane, a delayed job — goes to one queue in one `push_bulk` and to
/// another one job at a time; outcomes, depth and the order jobs are fetched in must agree.
#[tokio::test]
async fn a_bulk_push_decides_each_job_as_pushing_it_alone_would() {
    let env = TestEnv::new().await;
    let bulk = env.queue.clone();
    let alone = crm_queue::Queue::connect(
        crm_queue::QueueConfig::new(crate::support::REDIS_URL, "q-alone").with_prefix(env.prefix.clone()),
    )
    .await
    .expect("redis");
    let id = |n: u128| crm_queue::JobId(uuid::Uuid::from_u128(n));
    let ttl = Duration::from_secs(60);
    let earlier = || {
        vec![
            job("t9").with_id(id(90)).dedupe_key("tick:early", ttl).unique_key("sync:early"),
            job("t9").with_id(id(91)).dedupe_up_to("series:early", 50).unique_key("sync:early"),
        ]
    };
    let jobs = || {
        vec![
            job("t1").with_id(id(1)),
            job("t1").with_id(id(1)), // same id in the call
            job("t1").with_id(id(2)).dedupe_key("tick:a", ttl),
            job("t2").with_id(id(3)).dedupe_key("tick:a", ttl), // dedupe key in the call
            job("t2").with_id(id(4)).unique_key("sync:x"),
            job("t3").with_id(id(5)).unique_key("sync:x"), // unique key in the call
            job("t3").with_id(id(6)).dedupe_key("tick:b", ttl).unique_key("sync:x"), // takes tick:b
            job("t3").with_id(id(7)).dedupe_key("tick:b", ttl), // ... so this is a duplicate
            job("t4").with_id(id(8)).dedupe_key("tick:early", ttl), // from the earlier call
            job("t4").with_id(id(9)).unique_key("sync:early"), // held by the earlier job
            job("t4").with_id(id(90)),                     // the earlier job's id
            job("t1").with_id(id(10)),
            job("t5").with_id(id(11)).delay(Duration::from_secs(3600)),
            job("t5").with_id(id(12)),
            job("t6").with_id(id(13)).dedupe_up_to("series:a", 7),
            job("t6").with_id(id(14)).dedupe_up_to("series:a", 7), // stamp reached in the call
            job("t6").with_id(id(15)).dedupe_up_to("series:a", 3), // ... and passed
            job("t6").with_id(id(16)).dedupe_up_to("series:a", 8).unique_key("sync:y"), // takes 8
            job("t7").with_id(id(17)).dedupe_up_to("series:a", 9).unique_key("sync:y"), // unique held
            job("t7").with_id(id(18)).dedupe_up_to("series:a", 9), // ... but 9 was decided
            job("t7").with_id(id(19)).dedupe_up_to("series:early", 50), // from the earlier call
            job("t7").with_id(id(20)).dedupe_up_to("series:early", 51),
        ]
    };
    bulk.push_bulk(earlier()).await.expect("earlier");
    alone.push_bulk(earlier()).await.expect("earlier");
    let from_bulk = bulk.push_bulk(jobs()).await.expect("bulk push");
    let mut from_alone = Vec::new();
    for j in jobs() {
        from_alone.push(alone.push(j).await.expect("push"));
    }
    assert_eq!(from_bulk, from_alone);
    let enqueued: Vec<u128> =
        from_bulk.iter().filter(|o| !o.is_duplicate()).map(|o| o.id().0.as_u128()).collect();
    assert_eq!(enqueued, vec![1, 2, 4, 10, 11, 12, 13, 16, 20], "{from_bulk:?}");
    assert_eq!(from_bulk[15], PushOutcome::Duplicate(id(14)), "a reached stamp is a duplicate of itself");
    assert_eq!(from_bulk[18], PushOutcome::Duplicate(id(16)), "the unique key's holder");
    let series = ["series:a".to_owned(), "series:early".to_owned(), "series:none".to_owned()];
    assert_eq!(bulk.marks(&series).await.expect("marks"), vec![Some(9), Some(51), None]);
    assert_eq!(alone.marks(&series).await.expect("marks"), vec![Some(9), Some(51), None]);
    let (sb, sa) = (bulk.stats().await.expect("stats"), alone.stats().await.expect("stats"));
    assert_eq!((sb.ready, sb.delayed), (sa.ready, sa.delayed));
    assert_eq!((sb.ready, sb.delayed), (9, 1), "the earlier job, eight ready now and one delayed");
    let order = |q: crm_queue::Queue| async move {
        let mut out = Vec::new();
        while let Some(j) = q.fetch("w", 1).await.expect("fetch").pop() {
            out.push((j.lane.clone(), j.lease.job.0.as_u128()));
            q.ack(&[j.lease]).await.expect("ack");
        }
        out
    };
    let (ob, oa) = (order(bulk.clone()).await, order(alone.clone()).await);
    assert_eq!(ob.len(), 9);
    assert_eq!(ob, oa, "fetch order (lanes and their FIFO)");
    let _ = alone.destroy().await;
}

/// A dedupe key is remembered for its TTL, not less, and then forgotten.
#[tokio::test]
async fn a_dedupe_key_is_remembered_for_at_least_its_ttl_then_forgotten() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let ttl = Duration::from_millis(500);
    let tick = || job("t").dedupe_key("tick:s1:contact:1", ttl);
    let pushed = std::time::Instant::now();
    let first = q.push(tick()).await.expect("push");
    assert!(!first.is_duplicate());
    let forgotten = loop {
        let outcome = q.push(tick()).await.expect("push");
        if !outcome.is_duplicate() {
            break pushed.elapsed();
        }
        assert_eq!(outcome, PushOutcome::Duplicate(first.id()));
        assert!(pushed.elapsed() < Duration::from_secs(10), "the key was never forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(forgotten >= ttl, "forgotten after {forgotten:?}, before its TTL");
    println!("forgotten after {forgotten:?} (ttl {ttl:?})");
}

/// A series stamp (a schedule's ticks) is remembered for good, one field per series: a push at
/// or before the highest stamp decided is a duplicate of itself, long after its job is gone,
/// until the series is forgotten.
#[tokio::test]
async fn a_series_refuses_every_stamp_up_to_the_highest_pushed_until_forgotten() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let tick = |stamp: i64| job("t").dedupe_up_to("tick:s1:contact", stamp);
    let first = q.push(tick(1_700_000_000_000)).await.expect("push");
    assert!(!first.is_duplicate());
    while let Some(j) = q.fetch("w", 1).await.expect("fetch").pop() {
        q.ack(&[j.lease]).await.expect("ack");
    }
    for stamp in [1_700_000_000_000, 1_699_999_999_999] {
        let again = tick(stamp);
        let own = again.id;
        assert_eq!(q.push(again).await.expect("push"), PushOutcome::Duplicate(own), "{stamp}");
    }
    assert!(!q.push(tick(1_700_000_000_001)).await.expect("push").is_duplicate());
    let key = vec!["tick:s1:contact".to_owned()];
    assert_eq!(q.marks(&key).await.expect("marks"), vec![Some(1_700_000_000_001)]);
    assert_eq!(q.forget_marks(&key).await.expect("forget"), 1);
    assert!(!q.push(tick(1_700_000_000_000)).await.expect("push").is_duplicate(), "forgotten");
    for bad in [job("t").dedupe_up_to("", 1), job("t").dedupe_up_to("k", i64::MAX)] {
        assert!(q.push(bad).await.expect_err("refused").to_string().contains("dedupe"));
    }
}

#[tokio::test]
async fn in_job_requests_take_rate_tokens_and_respect_pauses() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let b = "r:account:hubspot:9";
    assert_eq!(q.take_token(b).await.expect("take"), None, "no limit: go");
    q.set_limit(b, Limit::Rate { count: 2, per: Duration::from_secs(10), burst: 2 }).await.expect("limit");
    assert_eq!(q.take_token(b).await.expect("take"), None);
    assert_eq!(q.take_token(b).await.expect("take"), None);
    let wait = q.take_token(b).await.expect("take").expect("must wait");
    assert!(wait > Duration::from_secs(4) && wait <= Duration::from_secs(5), "{wait:?}");
    q.pause("x:account:hubspot:9", Duration::from_secs(30)).await.expect("pause");
    let wait = q.take_token("x:account:hubspot:9").await.expect("take").expect("paused");
    assert!(wait > Duration::from_secs(29), "{wait:?}");
    // A pause named beside a rate budget stops the request and takes nothing from the budget;
    // the longest pause in force answers, as a pause (not a rate wait).
    let other = "r:account:hubspot:10";
    q.set_limit(other, Limit::Rate { count: 1, per: Duration::from_secs(10), burst: 1 })
        .await
        .expect("limit");
    q.pause("x:provider:close", Duration::from_secs(5)).await.expect("pause");
    let got =
        q.take_token_unless_paused(other, &["x:provider:close", "x:account:hubspot:9"]).await.expect("take");
    assert!(matches!(got, InJobToken::Paused(d) if d > Duration::from_secs(29)), "{got:?}");
    let got = q.take_token_unless_paused(other, &["x:provider:pipedrive"]).await.expect("take");
    assert_eq!(got, InJobToken::Taken, "untouched until then");
    let got = q.take_token_unless_paused(other, &[]).await.expect("take");
    assert!(matches!(got, InJobToken::Wait(_)), "and now spent: a rate wait, not a pause: {got:?}");
}

/// A NUL in an error message or payload (a provider's error body may hold one) would make
/// PostgreSQL refuse the dead letter, and the job would stay dying for good: it is written with
/// U+FFFD instead, and the raw payload bytes stay exact.
#[tokio::test]
async fn a_nul_in_an_error_or_payload_is_dead_lettered_not_stuck() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let payload = br#"{"op":"noop","note":"a\u0000b"}"#.to_vec();
    let pushed =
        q.push(NewJob::new("noop", lane("t"), payload.clone()).unique_key("un")).await.expect("push").id();
    let leased = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
    let mut rec = record(1);
    rec.message = "provider said: bad\0body".into();
    rec.provider_code = Some("E\0".into());
    let dying =
        q.dead_letter(&leased.lease, &rec, DeadReason::Permanent).await.expect("dead").expect("record");
    let dlq = crm_queue::PgDeadLetters::new(env.pool.clone(), "q");
    let id = dlq.record(&dying).await.expect("a NUL does not fail the write").expect("new row");
    assert_eq!(q.finalize(&[pushed]).await.expect("finalize"), 1);
    let (last, note, raw, message, code): (String, String, Vec<u8>, String, String) = sqlx::query_as(
        "SELECT d.last_error, d.payload_json->>'note', d.payload, a.message, a.provider_code \
         FROM dead_letters d JOIN dead_letter_attempts a ON a.dead_letter_id = d.id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert_eq!(last, "provider said: bad\u{FFFD}body");
    assert_eq!(message, last);
    assert_eq!(code, "E\u{FFFD}");
    assert_eq!(note, "a\u{FFFD}b");
    assert_eq!(raw, payload, "the raw bytes are kept exactly");
}

/// The sweeper takes the oldest dying records first; one it collected goes behind the others,
/// so records whose write keeps failing cannot hold every sweep.
#[tokio::test]
async fn a_collected_dying_record_goes_behind_the_others() {
    let env = TestEnv::new().await;
    let q = &env.queue;
    let mut ids = Vec::new();
    for t in ["a", "b", "c"] {
        ids.push(q.push(job(t)).await.expect("push").id());
        let leased = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
        q.dead_letter(&leased.lease, &record(1), DeadReason::Permanent).await.expect("dead").expect("record");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let got = q.collect_dying(Duration::ZERO, 1).await.expect("collect");
        assert_eq!(got.len(), 1);
        order.push(got[0].id);
    }
    assert_eq!(order, vec![ids[0], ids[1], ids[2], ids[0]], "oldest first, then round the outbox");
    assert_eq!(q.stats().await.expect("stats").dying, 3, "collecting removes nothing");
}
