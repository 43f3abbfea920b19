//! Actions end to end at the executor level against the HubSpot imitation: every action lands,
//! idempotency keys, outcome-unknown reconciliation, duplicate adoption.

use std::sync::Arc;
use std::time::Duration;

use crm_jobs::actions::{Created, NewAction, parse, store};
use crm_jobs::auth::{AuthKind, Keyring, Store};
use crm_jobs::ops::JobContext;
use crm_jobs::providers::Provider;
use crm_jobs::testing::{TestDb, purge_redis_prefix};
use crm_queue::FailureKind;
use crm_sandbox::config::ProviderKind;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::Env;

const HUB: &str = "20000001";

struct A {
    env: Env,
    db: TestDb,
    ctx: JobContext,
    connection: Uuid,
    prefix: String,
}

impl Drop for A {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

async fn setup() -> A {
    let env = Env::start(&[ProviderKind::HubSpot], 5).await;
    env.control
        .patch(&format!("hubspot/accounts/{HUB}"), json!({ "search_per_second": 100000, "burst": 100000 }))
        .await;
    let account = env.control.get(&format!("hubspot/accounts/{HUB}")).await;
    let db = TestDb::new().await;
    let store = Store::new(
        db.pool.clone(),
        Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key")),
    );
    store.ensure_tenant("acme", "Acme").await.expect("tenant");
    let token = account["credentials"]["private_app_token"].as_str().expect("pat").to_owned();
    let connection = store
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &SecretString::from(token),
            &env.sandbox.urls().hubspot().expect("urls").api_base,
            HUB,
        )
        .await
        .expect("connection")
        .id;
    let (ctx, prefix) = crate::support::job_context(store, &env.clients).await;
    A { env, db, ctx, connection, prefix }
}

impl A {
    async fn create(&self, key: &str, action: &str, params: Value) -> Created {
        let parsed = parse(action, &params).expect("valid");
        store::create(
            &self.db.pool,
            &NewAction {
                tenant: "acme".into(),
                connection: self.connection,
                provider: "hubspot".into(),
                action: parsed,
                idempotency_key: key.into(),
                traceparent: None,
            },
        )
        .await
        .expect("create")
    }

    async fn new_action(&self, key: &str, action: &str, params: Value) -> Uuid {
        match self.create(key, action, params).await {
            Created::New(row) => row.id,
            other => panic!("expected a new action: {other:?}"),
        }
    }

    async fn run(&self, id: Uuid, attempt: u32) -> Result<(), crm_queue::JobError> {
        crm_jobs::actions::exec::run(&self.ctx, id, attempt, 10).await
    }

    /// A dead letter of the action's own job, as the queue writes one (the trigger marks the
    /// action failed), `replayed` or waiting.
    async fn dead_letter(&self, id: Uuid, replayed: bool) {
        sqlx::query(
            "INSERT INTO dead_letters (job_id, queue, job_type, lane, provider, tenant, priority, payload, payload_json, \
               reason, error_class, last_error, attempts, max_attempts, orphans, enqueued_at, dead_at, replayed_at) \
             VALUES ($1, 'crm', 'action', 'l', 'hubspot', 'acme', 'high', '\\x00', $2, 'permanent', 'rejected', 'no', \
               1, 10, 0, now(), now(), CASE WHEN $3 THEN now() END)",
        )
        .bind(id)
        .bind(json!({ "type": "action", "action_id": id }))
        .bind(replayed)
        .execute(&self.db.pool)
        .await
        .expect("dead letter");
    }

    async fn row(&self, id: Uuid) -> store::ActionRow {
        store::get(&self.db.pool, id).await.expect("get").expect("row")
    }
}

#[tokio::test]
async fn every_action_lands_and_records_its_result() {
    let a = setup().await;
    let contact = a
        .new_action(
            "k-contact",
            "create_contact",
            json!({"email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper"}),
        )
        .await;
    a.run(contact, 1).await.expect("create_contact");
    let row = a.row(contact).await;
    assert_eq!(row.state, "succeeded");
    let contact_id = row.external_id.clone().expect("external id");
    let stored = a.env.control.get(&format!("hubspot/accounts/{HUB}/objects/contacts/{contact_id}")).await;
    assert_eq!(stored["properties"]["email"], "grace@example.com");

    let cases = [
        (
            "create_task",
            json!({"subject": "Follow up", "contact_id": contact_id, "due_at": "2026-02-01T09:00:00Z"}),
            "tasks",
            "hs_task_subject",
            "Follow up",
        ),
        (
            "log_call",
            json!({"subject": "Intro call", "occurred_at": "2026-01-05T10:00:00Z", "duration_secs": 60, "contact_id": contact_id}),
            "calls",
            "hs_call_title",
            "Intro call",
        ),
        (
            "create_note",
            json!({"body": "Met at the expo", "contact_id": contact_id}),
            "notes",
            "hs_note_body",
            "Met at the expo",
        ),
    ];
    for (i, (action, params, object, prop, expected)) in cases.into_iter().enumerate() {
        let id = a.new_action(&format!("k-{i}"), action, params).await;
        a.run(id, 1).await.unwrap_or_else(|e| panic!("{action}: {e}"));
        let row = a.row(id).await;
        assert_eq!(row.state, "succeeded", "{action}");
        let ext = row.external_id.expect("external id");
        let stored = a.env.control.get(&format!("hubspot/accounts/{HUB}/objects/{object}/{ext}")).await;
        assert_eq!(stored["properties"][prop], expected, "{action}: {stored}");
        assert_eq!(
            stored["properties"]["crm_fleet_action_id"],
            id.to_string(),
            "{action} carries its marker"
        );
    }

    let update = a
        .new_action("k-upd", "update_contact", json!({"contact_id": contact_id, "phone": "+15550199"}))
        .await;
    a.run(update, 1).await.expect("update_contact");
    let stored = a.env.control.get(&format!("hubspot/accounts/{HUB}/objects/contacts/{contact_id}")).await;
    assert_eq!(stored["properties"]["phone"], "+15550199");

    let search =
        a.new_action("k-search", "search_contact_by_email", json!({"email": "grace@example.com"})).await;
    a.run(search, 1).await.expect("search");
    let row = a.row(search).await;
    assert_eq!(row.result.expect("result")["contact"]["external_id"], contact_id);
}

#[tokio::test]
async fn the_same_key_returns_the_same_action_and_a_different_body_conflicts() {
    let a = setup().await;
    let params = json!({"subject": "Once"});
    let first = a.new_action("dup-key", "create_task", params.clone()).await;
    match a.create("dup-key", "create_task", params).await {
        Created::Existing(row) => assert_eq!(row.id, first),
        other => panic!("{other:?}"),
    }
    match a.create("dup-key", "create_task", json!({"subject": "Twice"})).await {
        Created::Conflict(row) => assert_eq!(row.id, first),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_outcome_unknown_create_is_reconciled_not_repeated() {
    let a = setup().await;
    let id = a.new_action("k-lost", "create_task", json!({"subject": "Lost answer"})).await;
    a.env.control.fault("hubspot", json!({"times": 1, "method": "POST", "path": "/crm/v3/objects/tasks", "action": {"type": "drop_after_commit"}})).await;
    let err = a.run(id, 1).await.expect_err("answer lost");
    assert_eq!((err.kind.clone(), err.class.as_str()), (FailureKind::Transient, "outcome_unknown"));
    let row = a.row(id).await;
    assert!(row.intent_at.is_some() && row.external_id.is_none(), "intent without result");
    a.run(id, 2).await.expect("reconciled");
    let row = a.row(id).await;
    assert_eq!((row.state.as_str(), row.reconciled), ("succeeded", true));
    let created = a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await;
    assert_eq!(created["count"], 1, "exactly one task");
    // A duplicate job for the same action does nothing.
    a.run(id, 1).await.expect("already done");
    assert_eq!(a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await["count"], 1);
}

/// A dead-letter replay sets its action back to `queued` and pushes the replay job before it
/// commits; a worker can fetch that job at once. The run waits for the replay's transaction
/// (it reads the row `FOR SHARE`) and then runs the action, instead of reading the committed
/// `failed`, ending the job without running it and leaving the action `queued` for ever.
#[tokio::test]
async fn a_run_waits_for_a_replay_that_is_setting_its_action_back_to_queued() {
    let a = setup().await;
    let id = a.new_action("k-replayed", "create_task", json!({"subject": "Replayed"})).await;
    sqlx::query("UPDATE actions SET state = 'failed' WHERE id = $1")
        .bind(id)
        .execute(&a.db.pool)
        .await
        .expect("failed");
    // The replay's transaction, as `dlq::replay_one` holds it while it pushes.
    let mut replay = a.db.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM actions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *replay)
        .await
        .expect("lock");
    sqlx::query("UPDATE actions SET state = 'queued', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *replay)
        .await
        .expect("queued");
    let run = {
        let ctx = a.ctx.clone();
        tokio::spawn(async move { crm_jobs::actions::exec::run(&ctx, id, 1, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished(), "the run must wait for the replay to commit");
    replay.commit().await.expect("commit");
    run.await.expect("join").expect("runs");
    assert_eq!(a.row(id).await.state, "succeeded");
    assert_eq!(a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await["count"], 1);
}

/// An action recorded `failed` whose job was never dead-lettered (its worker stopped in between,
/// and the job came back reaped) is dead-lettered now, so that it can be replayed; one whose
/// dead letter waits does nothing more.
#[tokio::test]
async fn a_failed_action_whose_job_was_not_dead_lettered_is_dead_lettered_now() {
    let a = setup().await;
    let id = a.new_action("k-failed-alone", "create_task", json!({"subject": "Failed alone"})).await;
    sqlx::query("UPDATE actions SET state = 'failed', last_error_class = 'rejected', last_error = 'bad' WHERE id = $1")
        .bind(id)
        .execute(&a.db.pool)
        .await
        .expect("failed");
    let err = a.run(id, 2).await.expect_err("dead-lettered");
    assert_eq!((err.kind.clone(), err.class.as_str()), (FailureKind::Permanent, "rejected"), "{err:?}");
    a.dead_letter(id, false).await;
    a.run(id, 3).await.expect("its dead letter waits: nothing to do");
    assert_eq!(a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await["count"], 0);
}

/// An attempt whose worker stalled (or lost the queue) after recording its intent may still be
/// sending when its lease goes to another worker. That one must not reconcile yet (the lookup
/// could miss the object about to be created, and it would create a second one): it defers
/// until the first request must have ended, spending no attempt. The first then finishes the
/// action alone.
#[tokio::test]
async fn an_attempt_waits_while_an_earlier_ones_request_may_be_in_flight() {
    let a = setup().await;
    let id = a.new_action("k-slow", "create_task", json!({"subject": "Slow CRM"})).await;
    a.env.control.fault("hubspot", json!({"times": 1, "method": "POST", "path": "/crm/v3/objects/tasks", "action": {"type": "latency", "ms": 8000}})).await;
    let first = {
        let ctx = a.ctx.clone();
        tokio::spawn(async move { crm_jobs::actions::exec::run(&ctx, id, 1, 10).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.row(id).await.intent_at.is_none() {
        assert!(std::time::Instant::now() < deadline, "the first attempt recorded no intent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = a.run(id, 2).await.expect_err("deferred while the first request is in flight");
    assert_eq!(err.class, "in_flight", "{err:?}");
    match err.kind {
        FailureKind::Defer(wait) => assert!(
            wait > crm_jobs::actions::exec::IN_FLIGHT_BOUND - Duration::from_secs(15)
                && wait <= crm_jobs::actions::exec::IN_FLIGHT_BOUND,
            "waits for the rest of the bound: {wait:?}"
        ),
        other => panic!("expected a defer, got {other:?}"),
    }
    first.await.expect("join").expect("the first attempt lands");
    assert_eq!(a.row(id).await.state, "succeeded");
    assert_eq!(a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await["count"], 1);
    // Its outcome recorded, a later run has nothing to wait for.
    a.run(id, 3).await.expect("already done");
}

/// A create the provider refused (here throttled) created nothing: its intent is cleared, so
/// the next attempt sends at once instead of reconciling first (a reconciliation hours later,
/// after a daily limit, can be inconclusive and dead-letter an action that was never sent).
#[tokio::test]
async fn a_refused_create_is_sent_again_without_reconciling() {
    let a = setup().await;
    let id = a.new_action("k-throttled", "create_task", json!({"subject": "Throttled once"})).await;
    a.env.control.fault("hubspot", json!({"times": 1, "method": "POST", "path": "/crm/v3/objects/tasks", "action": {"type": "throttle"}})).await;
    let err = a.run(id, 1).await.expect_err("throttled");
    assert!(matches!(err.kind, FailureKind::Defer(_)), "{err:?}");
    let row = a.row(id).await;
    assert!(row.intent_at.is_none(), "a refused request leaves no intent");
    let pause = crm_jobs::enqueue::budget::account_pause(Provider::Hubspot, HUB);
    a.ctx.queue.pause(&pause, Duration::ZERO).await.expect("lift");
    let requests = || async {
        a.env.control.get(&format!("hubspot/accounts/{HUB}/counters")).await["requests"].as_u64().unwrap_or(0)
    };
    let before = requests().await;
    a.run(id, 2).await.expect("sent");
    assert_eq!(requests().await - before, 1, "one create, no lookup before it");
    assert_eq!(a.row(id).await.state, "succeeded");
    assert_eq!(a.env.control.get(&format!("hubspot/accounts/{HUB}/created?contains={id}")).await["count"], 1);
}

/// The API commits an action's row and then pushes its job; a Redis error (or the client going
/// away) in between leaves the row with no job. The sweep pushes such an action again, once,
/// and leaves alone an action whose job is queued, one that ended, one whose job was
/// dead-lettered (the dead-letter queue's to replay) and one changed too recently.
#[tokio::test]
async fn an_action_left_without_a_job_is_pushed_again_by_the_sweep() {
    use crm_jobs::actions::repush;
    use crm_queue::JobId;
    let a = setup().await;
    let subject = |s: &str| json!({ "subject": s });
    let lost = a.new_action("k-lost-job", "create_task", subject("Lost push")).await;
    let queued = a.new_action("k-queued", "create_task", subject("Queued")).await;
    let target =
        crm_jobs::enqueue::target(&a.db.pool, a.connection).await.expect("target").expect("connection");
    a.ctx.queue.push(crm_jobs::enqueue::action_job(&target, queued, 10).expect("job")).await.expect("push");
    let done = a.new_action("k-done", "create_task", subject("Done")).await;
    sqlx::query("UPDATE actions SET state = 'succeeded' WHERE id = $1")
        .bind(done)
        .execute(&a.db.pool)
        .await
        .expect("done");
    // Dead-lettered (the trigger marks it failed), then replayed: queued again, under the replay's job id.
    let replayed = a.new_action("k-replayed", "create_task", subject("Replayed")).await;
    a.dead_letter(replayed, true).await;
    sqlx::query("UPDATE actions SET state = 'queued' WHERE id = $1")
        .bind(replayed)
        .execute(&a.db.pool)
        .await
        .expect("replayed");
    let fresh = a.new_action("k-fresh", "create_task", subject("Fresh")).await;
    sqlx::query("UPDATE actions SET updated_at = now() - interval '10 minutes' WHERE id = ANY($1)")
        .bind(vec![lost, queued, done, replayed])
        .execute(&a.db.pool)
        .await
        .expect("age");

    assert_eq!(
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, None, 500).await.expect("sweep"),
        (1, None)
    );
    let in_queue = |id: Uuid| {
        let q = a.ctx.queue.clone();
        async move { q.job(JobId(id)).await.expect("job").is_some() }
    };
    assert!(in_queue(lost).await, "the action without a job has one now");
    assert!(in_queue(queued).await);
    for (id, what) in [(done, "ended"), (replayed, "dead-lettered"), (fresh, "recent")] {
        assert!(!in_queue(id).await, "the {what} action was not pushed");
    }
    assert_eq!(
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, None, 500).await.expect("again").0,
        0
    );
    a.run(lost, 1).await.expect("runs");
    assert_eq!(a.row(lost).await.state, "succeeded");

    // Sweeps page on through a backlog: two more lost behind the queued one, one a sweep.
    let more = [
        a.new_action("k-lost-2", "create_task", subject("Lost 2")).await,
        a.new_action("k-lost-3", "create_task", subject("Lost 3")).await,
    ];
    sqlx::query("UPDATE actions SET updated_at = now() - interval '9 minutes' WHERE id = ANY($1)")
        .bind(more.to_vec())
        .execute(&a.db.pool)
        .await
        .expect("age");
    let (first, after) =
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, None, 1).await.expect("1");
    assert_eq!(first, 0, "the oldest open action is the queued one, whose job is there");
    let (second, after) =
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, after, 1).await.expect("2");
    let (third, after) =
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, after, 1).await.expect("3");
    assert_eq!((second, third), (1, 1), "each sweep goes on after the last");
    assert!(in_queue(more[0]).await && in_queue(more[1]).await);
    let (fourth, after) =
        repush::sweep(&a.db.pool, &a.ctx.queue, repush::DEFAULT_STALE, after, 1).await.expect("4");
    assert_eq!((fourth, after), (0, None), "the end: the next sweep starts over");
}

/// A job admitted before the account was paused (a throttle another worker saw) does not send:
/// it defers for the pause, records no intent and spends no attempt; once the pause is lifted
/// it runs.
#[tokio::test]
async fn an_action_admitted_before_a_pause_waits_it_out_without_sending() {
    let a = setup().await;
    let id = a.new_action("k-paused", "create_task", json!({"subject": "After the pause"})).await;
    let pause = crm_jobs::enqueue::budget::account_pause(Provider::Hubspot, HUB);
    a.ctx.queue.pause(&pause, Duration::from_secs(30)).await.expect("pause");
    let before = a.env.control.get(&format!("hubspot/accounts/{HUB}/counters")).await["requests"].as_u64();
    let err = a.run(id, 1).await.expect_err("deferred");
    assert_eq!(
        (err.kind.clone(), err.class.as_str()),
        (FailureKind::Defer(Duration::ZERO), "paused"),
        "{err:?}"
    );
    let after = a.env.control.get(&format!("hubspot/accounts/{HUB}/counters")).await["requests"].as_u64();
    assert_eq!(before, after, "no request to the paused account");
    assert!(a.row(id).await.intent_at.is_none(), "no intent recorded");
    a.ctx.queue.pause(&pause, Duration::ZERO).await.expect("lift");
    a.run(id, 1).await.expect("runs after the pause");
    assert_eq!(a.row(id).await.state, "succeeded");
}

/// The pause above, through the queue, for a tenant with a second HubSpot portal whose job was
/// pushed last: the stopped job goes back to its own lane, which sleeps on its own portal's
/// pause (a lane shared by both portals named only the last push's budgets, so the job was
/// admitted again at once, in a loop), and runs as soon as the pause is lifted.
#[tokio::test]
async fn a_paused_action_waits_in_its_own_lane_though_its_tenant_has_another_portal() {
    let a = setup().await;
    // The second portal is never called: its token is sealed with a key of its own.
    let keys = Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key"));
    let other = Store::new(a.db.pool.clone(), keys)
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &SecretString::from("pat-other".to_owned()),
            "http://127.0.0.1:9",
            "20000002",
        )
        .await
        .expect("second portal")
        .id;
    let id = a.new_action("k-lane", "create_task", json!({"subject": "Own lane"})).await;
    let q = &a.ctx.queue;
    for (connection, action) in [(a.connection, id), (other, Uuid::now_v7())] {
        let target = crm_jobs::enqueue::target(&a.db.pool, connection).await.expect("db").expect("target");
        q.push(crm_jobs::enqueue::action_job(&target, action, 10).expect("job")).await.expect("push");
    }
    let leased = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(leased.len(), 2, "both admitted before the pause");
    let mine = leased.iter().find(|j| j.lease.job.0 == id).expect("this portal's job");

    let pause = crm_jobs::enqueue::budget::account_pause(Provider::Hubspot, HUB);
    q.pause(&pause, Duration::from_secs(3600)).await.expect("pause");
    let err = a.run(id, mine.attempt).await.expect_err("deferred");
    assert_eq!(err.kind, FailureKind::Defer(Duration::ZERO), "{err:?}");
    assert!(q.retry(&mine.lease, Duration::ZERO, None, true, true).await.expect("defer"));
    assert!(q.fetch("w", 10).await.expect("fetch").is_empty(), "not admitted again while paused");
    assert_eq!(q.stats().await.expect("stats").sleeping_lanes, 1);

    q.pause(&pause, Duration::ZERO).await.expect("lift");
    let again = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(again.iter().map(|j| j.lease.job.0).collect::<Vec<_>>(), vec![id], "back at once");
    assert_eq!(again[0].attempt, mine.attempt, "the deferral spent no attempt");
    a.run(id, again[0].attempt).await.expect("runs after the pause");
    assert_eq!(a.row(id).await.state, "succeeded");
}

#[tokio::test]
async fn a_duplicate_contact_is_adopted_and_a_rejection_fails_the_action() {
    let a = setup().await;
    let first = a.new_action("c1", "create_contact", json!({"email": "dup@example.com"})).await;
    a.run(first, 1).await.expect("first");
    let existing = a.row(first).await.external_id.expect("id");
    let second = a
        .new_action("c2", "create_contact", json!({"email": "dup@example.com", "first_name": "Again"}))
        .await;
    a.run(second, 1).await.expect("adopted");
    let row = a.row(second).await;
    assert_eq!(row.external_id.as_deref(), Some(existing.as_str()));
    assert_eq!(row.result.expect("result")["created"], false);

    let bad = a.new_action("d1", "update_deal", json!({"deal_id": "does-not-exist", "amount": 10})).await;
    let err = a.run(bad, 1).await.expect_err("rejected");
    assert_eq!(err.kind, FailureKind::Permanent);
    let row = a.row(bad).await;
    assert_eq!((row.state.as_str(), row.last_error_class.as_deref()), ("failed", Some("not_found")));
}
