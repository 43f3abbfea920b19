//! The leader lease between replicas in one process: one leader at a time, handed over when
//! the leader stops, and recorded in `scheduler_leader`.

use std::time::Duration;

use crm_jobs::testing::{TestDb, eventually};
use crm_scheduler::schedule::{Lease, LeaseConfig};

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_at_a_time_and_a_quick_handover() {
    let db = TestDb::new().await;
    let a = Lease::start(LeaseConfig::new(&db.url));
    let b = Lease::start(LeaseConfig::new(&db.url));
    eventually(Duration::from_secs(5), "a leader", || async { a.is_leader() || b.is_leader() }).await;
    // Several renewals later there is still exactly one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
    let (leader, standby) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
    let holder: String = sqlx::query_scalar("SELECT holder FROM scheduler_leader")
        .fetch_one(&db.pool)
        .await
        .expect("leader row");
    assert_eq!(holder, leader.instance());

    let mut follow = standby.subscribe();
    leader.stop().await;
    leader.stop().await; // a second stop is harmless
    assert!(!leader.is_leader());
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), follow.wait_for(|l| l.is_some()))
        .await
        .expect("handover")
        .expect("open");
    assert!(started.elapsed() < Duration::from_millis(1500), "handover took {:?}", started.elapsed());
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_session_loses_the_lease_at_once() {
    let db = TestDb::new().await;
    let a = Lease::start(LeaseConfig::new(&db.url));
    let mut state = a.subscribe();
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|l| l.is_some()))
        .await
        .expect("leader")
        .expect("open");
    // The server ends the leader's session (as when its host vanishes and TCP gives up).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name LIKE 'crm-scheduler lease%' AND datname = current_database()",
    )
    .execute(&db.pool)
    .await
    .expect("terminate");
    tokio::time::timeout(Duration::from_secs(2), state.wait_for(|l| l.is_none()))
        .await
        .expect("lost")
        .expect("open");
    // It competes again and, alone, wins again with a new epoch.
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|l| *l == Some(2)))
        .await
        .expect("again")
        .expect("open");
    a.stop().await;
}
