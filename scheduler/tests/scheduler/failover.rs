//! The acceptance test: three `crm-scheduler` replicas, the leader SIGKILLed every 10 s for
//! two minutes (and restarted), 50 schedules firing every 5 s. Every (connection, object,
//! tick) must be enqueued exactly once: none twice, none lost. The schedules use `run_once`
//! and `backfill`, under which a tick missed during a failover is fired by the next leader
//! (the late tolerance is tightened so that failovers do make ticks missed), so the expected
//! set is exact: every tick of every schedule from its creation to the end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use crm_jobs::providers::ObjectKind;
use crm_jobs::testing::http_client;
use uuid::Uuid;

use crate::support::{Env, Proc};

const SCHEDULES: usize = 50;
const KILL_EVERY: Duration = Duration::from_secs(10);
const RUN_FOR: Duration = Duration::from_secs(120);
/// A tight late tolerance: a tick that came due during a failover (late by the lock retry,
/// up to 500 ms, and the load) counts as missed, so the missed-tick policies do the work.
const TOLERANCE: &[(&str, &str)] = &[("CRM_FLEET_SCHEDULER_LATE_TOLERANCE", "100ms")];

async fn leader(procs: &[Proc], client: &reqwest::Client, patience: Duration) -> usize {
    let start = Instant::now();
    loop {
        for (i, p) in procs.iter().enumerate() {
            if p.is_leader(client).await {
                return i;
            }
        }
        assert!(start.elapsed() < patience, "no leader within {patience:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Multiples of 5 s in `(after, until]`.
fn every_5s(after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let first = (after.timestamp().div_euclid(5) + 1) * 5;
    (0..)
        .map(|k| first + 5 * k)
        .map(|s| DateTime::from_timestamp(s, 0).expect("instant"))
        .take_while(|t| *t <= until)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_every_10s_neither_duplicates_nor_loses_a_tick() {
    let env = Arc::new(Env::new().await);
    let client = http_client();
    let (seen, consumer) = env.consumer();
    let mut procs: Vec<Proc> = (0..3).map(|_| env.spawn_scheduler(TOLERANCE)).collect();
    leader(&procs, &client, Duration::from_secs(10)).await;

    // 50 schedules, each on its own connection, with 1 to 3 objects, half run_once and half
    // backfill, jitter up to a second.
    let mut schedules: Vec<(Uuid, Vec<ObjectKind>, DateTime<Utc>)> = Vec::new();
    for i in 0..SCHEDULES {
        let conn = env.connection().await;
        let objects: Vec<ObjectKind> = ObjectKind::ALL[..1 + i % 3].to_vec();
        let names: Vec<String> = objects.iter().map(|o| o.as_str().to_owned()).collect();
        let (missed, backfill) = if i % 2 == 0 { ("run_once", 1) } else { ("backfill", 3) };
        let created: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO schedules (connection_id, objects, cron, missed_policy, backfill_limit, jitter_ms) \
             VALUES ($1, $2, '*/5 * * * * *', $3, $4, $5) RETURNING created_at",
        )
        .bind(conn)
        .bind(&names)
        .bind(missed)
        .bind(backfill)
        .bind((i * 20) as i32)
        .fetch_one(env.pool())
        .await
        .expect("schedule");
        schedules.push((conn, objects, created));
    }

    // Kill the leader every 10 s or so; restart it as a new standby at once. Each kill lands
    // at another phase of the 5 s tick cycle (0, 0.45, 0.9 … s after a tick), so kills hit
    // a leader in the middle of pushing a tick (jitter spreads pushes over a second), just
    // after, and between ticks.
    let mut kills = 0;
    let mut last = Utc::now();
    for k in 0..(RUN_FOR.as_secs() / KILL_EVERY.as_secs()) as i64 {
        let phase = (k * 450) % 5000;
        let earliest = last + TimeDelta::milliseconds(7_500);
        let mut at = earliest.timestamp_millis() - earliest.timestamp_millis().rem_euclid(5000) + phase;
        if at < earliest.timestamp_millis() {
            at += 5000;
        }
        let wait = (at - Utc::now().timestamp_millis()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        last = Utc::now();
        let i = leader(&procs, &client, Duration::from_secs(5)).await;
        procs[i].kill();
        kills += 1;
        procs[i] = env.spawn_scheduler(TOLERANCE);
    }
    assert_eq!(kills, 12);

    // Let the last leader settle, then close the window: every tick up to the cut-off has
    // fired (jitter < 1 s, tolerance 1 s) and been drained.
    leader(&procs, &client, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cutoff = Utc::now() - TimeDelta::seconds(3);
    // Keep draining until every tick up to the cut-off has been seen (or 30 s pass): on a
    // loaded machine the last jobs of a tick can still be waiting for a concurrency slot of
    // their connection (seeded by the replicas' limits reload) when the window closes.
    let expected: Vec<(Uuid, ObjectKind, DateTime<Utc>)> = schedules
        .iter()
        .flat_map(|(c, objects, created)| {
            every_5s(*created, cutoff).into_iter().flat_map(move |t| objects.iter().map(move |o| (*c, *o, t)))
        })
        .collect();
    let settle = Instant::now() + Duration::from_secs(30);
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() < settle {
        let ticks = seen.ticks();
        if expected.iter().all(|k| ticks.contains_key(k)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    consumer.abort();
    for p in &mut procs {
        p.kill();
    }

    let ticks = seen.ticks();
    let twice: Vec<_> = ticks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "enqueued more than once: {twice:?}");
    let mut missing = Vec::new();
    let mut expected_total = 0;
    let by_conn: HashMap<Uuid, (Vec<ObjectKind>, DateTime<Utc>)> =
        schedules.iter().map(|(c, o, t)| (*c, (o.clone(), *t))).collect();
    for (conn, (objects, created)) in &by_conn {
        for tick in every_5s(*created, cutoff) {
            for o in objects {
                expected_total += 1;
                if !ticks.contains_key(&(*conn, *o, tick)) {
                    missing.push((*conn, *o, tick));
                }
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "{} of {expected_total} ticks lost: {missing:?}", missing.len());
    // Nothing that is not a tick of a schedule after its creation.
    let bogus: BTreeSet<_> = ticks
        .keys()
        .filter(|(c, o, t)| {
            by_conn.get(c).is_none_or(|(objects, created)| {
                !objects.contains(o) || t <= created || t.timestamp() % 5 != 0
            })
        })
        .collect();
    assert!(bogus.is_empty(), "unexpected jobs: {bogus:?}");
    eprintln!(
        "failover: {kills} kills, {expected_total} (connection, object, tick) expected up to the cut-off, {} drained, \
         none twice; logged by the replicas: {:?}",
        ticks.len(),
        env.logged.lock()
    );
}
