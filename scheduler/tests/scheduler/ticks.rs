//! The tick engine against real PostgreSQL and Redis: missed-tick policies, overlap
//! policies, re-pushed ticks after a failover, disabled connections, and changes applying
//! within a second.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use crm_jobs::providers::ObjectKind;
use crm_scheduler::schedule::{EngineConfig, Ticker, tick_read_pool};
use serde_json::json;

use crate::support::{Env, Seen};

/// An aligned instant well in the past, so that `now` values handed to the ticker are ours.
fn epoch() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::minutes(30)).duration_trunc(TimeDelta::minutes(1)).expect("trunc")
}

fn secs(t: DateTime<Utc>, s: f64) -> DateTime<Utc> {
    t + TimeDelta::milliseconds((s * 1000.0) as i64)
}

async fn handled_from(env: &Env, t0: DateTime<Utc>) {
    sqlx::query("UPDATE schedules SET last_tick_at = $1")
        .bind(t0)
        .execute(env.pool())
        .await
        .expect("set last tick");
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_ticks_follow_each_policy_and_a_replay_is_all_duplicates() {
    let env = Env::new().await;
    let c_skip = env.connection().await;
    let c_once = env.connection().await;
    let c_back = env.connection().await;
    let c_buf = env.connection().await;
    let every5 = "*/5 * * * * *";
    let s_skip = env.schedule(c_skip, every5, &["contact"], "skip", 1).await;
    env.schedule(c_once, every5, &["contact", "deal"], "run_once", 1).await;
    env.schedule(c_back, every5, &["contact"], "backfill", 3).await;
    let s_buf = env.schedule(c_buf, every5, &["deal"], "backfill", 3).await;
    sqlx::query("UPDATE schedules SET overlap_policy = 'buffer_one' WHERE id = $1")
        .bind(s_buf)
        .execute(env.pool())
        .await
        .expect("buffer_one");
    let t0 = epoch();
    handled_from(&env, t0).await;

    // A minute and 2.5 s without a leader: ticks t0+5 … t0+60 are due, all missed.
    let now = secs(t0, 62.5);
    let mut ticker = Ticker::new(
        EngineConfig::default(),
        env.pool().clone(),
        tick_read_pool(env.pool()),
        env.queue.clone(),
    );
    assert_eq!(ticker.load().await.expect("load"), 4);
    let report = ticker.fire_due(now).await.expect("tick");
    assert_eq!(report.schedules, 4);
    // run_once: 2 jobs; backfill 3 (two schedules): 3 pushes each, the first enqueued, the
    // next two refused by the overlap key (the first is still queued).
    assert_eq!(report.jobs, 2 + 3 + 3);
    assert_eq!(report.enqueued, 4);
    assert_eq!(report.duplicate, 0);
    // skip: 12 dropped; run_once: 11 × 2 dropped; backfill: 9 dropped + 2 overlapped, twice.
    assert_eq!(report.skipped, 12 + 22 + 11 + 11);
    assert_eq!(report.reruns, 1, "buffer_one asked the queued sync to run again");

    let seen = Seen::default();
    env.drain(&seen).await;
    let mut got: Vec<(uuid::Uuid, ObjectKind, DateTime<Utc>)> =
        seen.all().into_iter().map(|r| (r.connection, r.object, r.tick.expect("tick"))).collect();
    got.sort();
    let mut want = vec![
        (c_once, ObjectKind::Contact, secs(t0, 60.0)),
        (c_once, ObjectKind::Deal, secs(t0, 60.0)),
        (c_back, ObjectKind::Contact, secs(t0, 50.0)),
        (c_buf, ObjectKind::Deal, secs(t0, 50.0)),
    ];
    want.sort();
    assert_eq!(got, want);
    let rerun: bool = sqlx::query_scalar(
        "SELECT rerun_requested FROM sync_state WHERE connection_id = $1 AND object = 'deal'",
    )
    .bind(c_buf)
    .fetch_one(env.pool())
    .await
    .expect("sync_state");
    assert!(rerun);
    // Every schedule is handled through t0+60, skip included.
    let last: DateTime<Utc> = sqlx::query_scalar("SELECT last_tick_at FROM schedules WHERE id = $1")
        .bind(s_skip)
        .fetch_one(env.pool())
        .await
        .expect("last");
    assert_eq!(last, secs(t0, 60.0));
    assert_eq!(ticker.next_fire(), Some(secs(t0, 65.0)));

    // A new leader that finds the same ticks unrecorded (its predecessor died after the push)
    // re-pushes them: every one comes back as a duplicate, nothing is enqueued twice.
    handled_from(&env, t0).await;
    let mut successor = Ticker::new(
        EngineConfig::default(),
        env.pool().clone(),
        tick_read_pool(env.pool()),
        env.queue.clone(),
    );
    successor.load().await.expect("load");
    let replay = successor.fire_due(now).await.expect("tick");
    assert_eq!((replay.enqueued, replay.jobs), (0, 8));
    assert_eq!(replay.duplicate, 8, "{replay:?}");
    assert_eq!(env.drain(&seen).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_time_ticks_fire_and_disabled_things_do_not() {
    let env = Env::new().await;
    let (a, b, c) = (env.connection().await, env.connection().await, env.connection().await);
    let every5 = "*/5 * * * * *";
    env.schedule(a, every5, &["company"], "skip", 1).await;
    let sb = env.schedule(b, every5, &["company"], "skip", 1).await;
    env.schedule(c, every5, &["company"], "skip", 1).await;
    let t0 = epoch();
    handled_from(&env, t0).await;
    let mut ticker = Ticker::new(
        EngineConfig::default(),
        env.pool().clone(),
        tick_read_pool(env.pool()),
        env.queue.clone(),
    );
    ticker.load().await.expect("load");
    // After loading: schedule b is disabled, connection c is disabled.
    sqlx::query("UPDATE schedules SET enabled = false WHERE id = $1")
        .bind(sb)
        .execute(env.pool())
        .await
        .expect("disable");
    sqlx::query("UPDATE connections SET status = 'disabled' WHERE id = $1")
        .bind(c)
        .execute(env.pool())
        .await
        .expect("disable");
    // 300 ms after the first tick: on time even under `skip`.
    let report = ticker.fire_due(secs(t0, 5.3)).await.expect("tick");
    assert_eq!((report.schedules, report.enqueued, report.skipped), (3, 1, 1), "{report:?}");
    let seen = Seen::default();
    env.drain(&seen).await;
    let got: Vec<_> = seen.all().into_iter().map(|r| (r.connection, r.tick)).collect();
    assert_eq!(got, [(a, Some(secs(t0, 5.0)))]);
    // The disabled schedule left memory; the other two wait for t0+10.
    assert_eq!(ticker.len(), 2);
    assert_eq!(ticker.next_fire(), Some(secs(t0, 10.0)));
    assert_eq!(ticker.fire_due(secs(t0, 9.9)).await.expect("tick").schedules, 0, "not due yet");
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_apply_within_a_second() {
    let env = Arc::new(Env::new().await);
    let conn = env.connection().await;
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let (seen, consumer) = env.consumer();
    crm_jobs::testing::eventually(Duration::from_secs(10), "a leader", || async {
        let body = client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        body.lines().any(|l| l.starts_with("crm_fleet_scheduler_is_leader") && l.ends_with(" 1"))
    })
    .await;

    // Created while the scheduler runs, firing every second: the first job comes within
    // the reload interval plus a tick.
    let resp = client
        .post(format!("{}/v1/schedules", app.base))
        .json(&json!({"connection_id": conn, "objects": ["contact"], "cron": "* * * * * *"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);
    let created_at = Utc::now();
    let id = resp.json::<serde_json::Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    crm_jobs::testing::eventually(Duration::from_secs(5), "first tick", || async {
        !seen.ticks().is_empty()
    })
    .await;
    let first = seen.ticks().keys().map(|k| k.2).min().expect("tick");
    assert!(
        first <= created_at + TimeDelta::seconds(2),
        "first tick {first} for a schedule created at {created_at}"
    );

    // Changed to once a year: no tick after the change has applied (within a second).
    let resp = client
        .patch(format!("{}/v1/schedules/{id}", app.base))
        .json(&json!({"cron": "0 0 1 1 *"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 200);
    let changed_at = Utc::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let last = seen.ticks().keys().map(|k| k.2).max().expect("tick");
    assert!(last <= changed_at + TimeDelta::seconds(1), "tick {last} after a change at {changed_at}");

    // Back to every second, then disabled: disabling applies at the very next tick.
    client
        .patch(format!("{}/v1/schedules/{id}", app.base))
        .json(&json!({"cron": "* * * * * *"}))
        .send()
        .await
        .expect("patch");
    let back_at = Utc::now();
    crm_jobs::testing::eventually(Duration::from_secs(3), "ticking again", || async {
        seen.ticks().keys().any(|k| k.2 > back_at)
    })
    .await;
    client
        .patch(format!("{}/v1/schedules/{id}", app.base))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .expect("patch");
    let disabled_at = Utc::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let last = seen.ticks().keys().map(|k| k.2).max().expect("tick");
    assert!(last <= disabled_at + TimeDelta::seconds(1), "tick {last} after disabling at {disabled_at}");
    // No (connection, object, tick) twice.
    assert!(seen.ticks().values().all(|n| *n == 1));
    let metrics = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "crm_fleet_scheduler_ticks_total{outcome=\"enqueued\"}",
        "crm_fleet_scheduler_ticks_total{outcome=\"duplicate\"}",
        "crm_fleet_scheduler_ticks_total{outcome=\"skipped\"}",
        "crm_fleet_scheduler_lag_seconds_bucket",
        "crm_fleet_scheduler_is_leader",
        "crm_fleet_jobs_enqueued_total",
    ] {
        assert!(metrics.contains(name), "{name} not served:\n{metrics}");
    }
    consumer.abort();
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_schedule_stops_ticking_and_leaves_no_tick_series() {
    let env = Env::new().await;
    let conn = env.connection().await;
    let s = env.schedule(conn, "*/5 * * * * *", &["contact", "deal"], "run_once", 1).await;
    let t0 = epoch();
    handled_from(&env, t0).await;
    let mut ticker = Ticker::new(
        EngineConfig::default(),
        env.pool().clone(),
        tick_read_pool(env.pool()),
        env.queue.clone(),
    );
    assert_eq!(ticker.load().await.expect("load"), 1);
    let report = ticker.fire_due(secs(t0, 5.5)).await.expect("tick");
    assert_eq!(report.enqueued, 2);
    let series: Vec<String> = [ObjectKind::Contact, ObjectKind::Deal]
        .iter()
        .map(|o| crm_jobs::enqueue::tick_series(s, *o))
        .collect();
    let marks = env.queue.marks(&series).await.expect("marks");
    assert!(marks.iter().all(Option::is_some), "each object's ticks are a series: {marks:?}");

    crm_scheduler::schedule::delete_schedule(env.pool(), &env.queue, s).await.expect("delete");
    assert_eq!(env.queue.marks(&series).await.expect("marks"), vec![None, None], "series forgotten");
    // The engine still has its timer: at the next tick it finds the schedule gone.
    let report = ticker.fire_due(secs(t0, 10.5)).await.expect("tick");
    assert_eq!((report.jobs, report.enqueued), (0, 0));
    assert_eq!(env.queue.marks(&series).await.expect("marks"), vec![None, None], "nothing pushed");
    let again = crm_scheduler::schedule::delete_schedule(env.pool(), &env.queue, s).await;
    assert!(matches!(again, Err(crm_scheduler::schedule::store::StoreError::ScheduleNotFound)), "{again:?}");
}
