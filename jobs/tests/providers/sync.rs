//! The sync engine against the HubSpot imitation and a real PostgreSQL and Redis.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crm_jobs::auth::{AuthKind, Keyring, Store};
use crm_jobs::job::{SyncJob, SyncMode};
use crm_jobs::ops::JobContext;
use crm_jobs::providers::{ObjectKind, Provider};
use crm_jobs::sync::engine::AttemptInfo;
use crm_jobs::testing::{TestDb, purge_redis_prefix};
use crm_queue::FailureKind;
use crm_sandbox::config::ProviderKind;
use crm_sandbox::hubspot::schema::ObjectType;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::Env;

struct SyncEnv {
    env: Env,
    db: TestDb,
    ctx: JobContext,
    connection: Uuid,
    hub: u64,
    prefix: String,
}

impl Drop for SyncEnv {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

async fn setup(contacts: usize, others: usize) -> SyncEnv {
    let env = Env::start(&[ProviderKind::HubSpot], 1).await;
    let account = env
        .control
        .post(
            "hubspot/accounts",
            json!({ "objects": { "contacts": contacts, "companies": others, "deals": others, "tasks": 0, "calls": 0, "notes": 0 },
                    "quota": { "search_per_second": 1000000, "burst": 1000000 } }),
        )
        .await;
    let hub = account["hub_id"].as_u64().expect("hub id");
    let db = TestDb::new().await;
    let keys = Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key"));
    let store = Store::new(db.pool.clone(), keys);
    store.ensure_tenant("acme", "Acme").await.expect("tenant");
    let token = account["credentials"]["private_app_token"].as_str().expect("pat").to_owned();
    let api_base = env.sandbox.urls().hubspot().expect("urls").api_base;
    let connection = store
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &SecretString::from(token),
            &api_base,
            &hub.to_string(),
        )
        .await
        .expect("connection")
        .id;
    let (ctx, prefix) = crate::support::job_context(store, &env.clients).await;
    SyncEnv { env, db, ctx, connection, hub, prefix }
}

fn info() -> AttemptInfo {
    AttemptInfo { job_id: None, attempt: 1, max_attempts: 8 }
}

impl SyncEnv {
    fn job(&self, object: ObjectKind, mode: SyncMode) -> SyncJob {
        SyncJob { connection_id: self.connection, object, mode, trigger: "test".into(), tick: None }
    }

    async fn sync(&self, object: ObjectKind) -> Result<crm_jobs::sync::RunSummary, crm_queue::JobError> {
        crm_jobs::sync::run(&self.ctx, &self.job(object, SyncMode::Incremental), info(), || None).await
    }

    /// Live records in our table: id → email (contacts) or name.
    async fn local(&self, object: ObjectKind) -> BTreeMap<String, Option<String>> {
        let (table, col) = match object {
            ObjectKind::Contact => ("crm_contacts", "email"),
            ObjectKind::Company => ("crm_companies", "name"),
            ObjectKind::Deal => ("crm_deals", "name"),
        };
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT external_id, {col} FROM {table} WHERE deleted_at IS NULL"
        )))
        .fetch_all(&self.db.pool)
        .await
        .expect("rows");
        rows.into_iter().collect()
    }

    /// Live records at the sandbox: id → email or name.
    fn remote(&self, object: ObjectKind) -> BTreeMap<String, Option<String>> {
        let hs = self.env.sandbox.hubspot().expect("hubspot");
        let account = hs.account_by_id(self.hub).expect("account");
        let data = account.data.read();
        let (t, prop) = match object {
            ObjectKind::Contact => (ObjectType::Contacts, "email"),
            ObjectKind::Company => (ObjectType::Companies, "name"),
            ObjectKind::Deal => (ObjectType::Deals, "dealname"),
        };
        data.table(t).active.values().map(|r| (r.id.to_string(), r.props.get(prop).cloned())).collect()
    }

    async fn last_run(&self, object: ObjectKind) -> (String, i32, i32, i32, i32, i32) {
        sqlx::query_as(
            "SELECT status, pages, created, updated, deleted, unchanged FROM sync_runs \
             WHERE connection_id = $1 AND object = $2 ORDER BY started_at DESC LIMIT 1",
        )
        .bind(self.connection)
        .bind(object.as_str())
        .fetch_one(&self.db.pool)
        .await
        .expect("run")
    }

    async fn cursor(&self, object: ObjectKind) -> Value {
        sqlx::query_scalar("SELECT cursor FROM sync_state WHERE connection_id = $1 AND object = $2")
            .bind(self.connection)
            .bind(object.as_str())
            .fetch_one(&self.db.pool)
            .await
            .expect("cursor")
    }

    /// Someone changes a contact's email at the CRM.
    async fn set_remote_email(&self, contact: &str, email: &str) {
        self.env
            .control
            .patch(
                &format!("hubspot/accounts/{}/objects/contacts/{contact}", self.hub),
                json!({ "properties": { "email": email } }),
            )
            .await;
    }

    /// Runs an `update_contact` action (through the action executor) setting `email`.
    async fn update_email(&self, key: &str, contact: &str, email: &str) {
        let action =
            crm_jobs::actions::parse("update_contact", &json!({ "contact_id": contact, "email": email }))
                .expect("valid action");
        let created = crm_jobs::actions::store::create(
            &self.db.pool,
            &crm_jobs::actions::NewAction {
                tenant: "acme".into(),
                connection: self.connection,
                provider: "hubspot".into(),
                action,
                idempotency_key: key.into(),
                traceparent: None,
            },
        )
        .await
        .expect("create action");
        let crm_jobs::actions::Created::New(row) = created else { panic!("a new action: {created:?}") };
        crm_jobs::actions::exec::run(&self.ctx, row.id, 1, 10).await.expect("update_contact");
    }

    async fn pending(&self, contact: &str) -> Option<Value> {
        sqlx::query_scalar("SELECT local_pending FROM crm_contacts WHERE external_id = $1")
            .bind(contact)
            .fetch_one(&self.db.pool)
            .await
            .expect("contact")
    }

    async fn conflicts(&self, contact: &str) -> Vec<(String, Option<String>, Option<String>)> {
        sqlx::query_as("SELECT field, local_value, remote_value FROM sync_conflicts WHERE external_id = $1")
            .bind(contact)
            .fetch_all(&self.db.pool)
            .await
            .expect("conflicts")
    }

    async fn search_requests(&self) -> usize {
        let log = self.env.control.get(&format!("requests?account={}&limit=100000", self.hub)).await;
        log["requests"]
            .as_array()
            .map(|a| a.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/search"))).count())
            .unwrap_or(0)
    }
}

fn ids(v: &Value) -> HashSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incremental_sync_matches_the_sandbox_exactly() {
    let s = setup(10_000, 2_000).await;
    for object in ObjectKind::ALL {
        let summary = s.sync(object).await.expect("full sync");
        assert_eq!(s.local(object).await, s.remote(object), "{object}: table matches the sandbox");
        let (status, _, created, updated, deleted, _) = s.last_run(object).await;
        assert_eq!(status, "succeeded");
        assert_eq!(created as usize, s.remote(object).len());
        assert_eq!((updated, deleted), (0, 0));
        assert!(summary.pages > 1);
    }

    let changes = s
        .env
        .control
        .post(
            &format!("hubspot/accounts/{}/mutations", s.hub),
            json!({ "seed": 11, "creates": 0, "updates": 500, "deletes": 50, "objects": ["contacts"], "step_ms": 5 }),
        )
        .await;
    let deleted = ids(&changes["deleted"]["contacts"]);
    let updated: HashSet<String> =
        ids(&changes["updated"]["contacts"]).difference(&deleted).cloned().collect();
    assert_eq!(deleted.len(), 50);
    s.sync(ObjectKind::Contact).await.expect("incremental sync");
    let (status, _, created, upd, del, unchanged) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(status, "succeeded");
    assert_eq!(
        (created, upd as usize, del as usize, unchanged),
        (0, updated.len(), 50, 0),
        "counts match the change log"
    );
    assert_eq!(
        s.local(ObjectKind::Contact).await,
        s.remote(ObjectKind::Contact),
        "content matches after the changes"
    );
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_contacts WHERE deleted_at IS NOT NULL")
        .fetch_one(&s.db.pool)
        .await
        .expect("count");
    assert_eq!(gone, 50);
    // Nothing changed since: an empty run.
    s.sync(ObjectKind::Contact).await.expect("quiet sync");
    let (_, _, c, u, d, _) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((c, u, d), (0, 0, 0));
}

/// Runs an incremental contact sync told to stop (`why`) before its fourth page.
async fn stopped_before_page_4(s: &SyncEnv, why: crm_jobs::sync::Stop) -> crm_queue::JobError {
    stopped_before_page_4_of(s, SyncMode::Incremental, info(), why).await
}

async fn stopped_before_page_4_of(
    s: &SyncEnv,
    mode: SyncMode,
    info: AttemptInfo,
    why: crm_jobs::sync::Stop,
) -> crm_queue::JobError {
    let checks = AtomicUsize::new(0);
    crm_jobs::sync::run(&s.ctx, &s.job(ObjectKind::Contact, mode), info, || {
        (checks.fetch_add(1, Ordering::SeqCst) >= 3).then_some(why)
    })
    .await
    .expect_err("stopped")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_sync_resumes_after_its_last_committed_page() {
    let s = setup(2_000, 0).await;
    // Stop before the fourth page: three pages committed.
    let err = stopped_before_page_4(&s, crm_jobs::sync::Stop::Shutdown).await;
    assert_eq!(err.kind, FailureKind::Defer(Duration::ZERO), "a stop spends no attempt");
    let (status, pages, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((status.as_str(), pages, created), ("running", 3, 600));
    let before = s.search_requests().await;
    assert_eq!(before, 3);
    s.sync(ObjectKind::Contact).await.expect("resumed");
    let (status, pages, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(
        (status.as_str(), pages as usize, created),
        ("succeeded", 2_000 / 200 + 1, 2_000),
        "same run continued"
    );
    assert_eq!(s.search_requests().await, 10, "no committed page fetched again");
    assert_eq!(s.local(ObjectKind::Contact).await, s.remote(ObjectKind::Contact));
}

/// A full sync (asked for by an operator, say) stopped part-way resumes on its job's next
/// attempt instead of starting over. A full sync of another job starts a run of its own from
/// the start, and the run it replaces is closed as failed rather than left `running`.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_sync_resumes_on_its_next_attempt() {
    let s = setup(2_000, 0).await;
    let full = s.job(ObjectKind::Contact, SyncMode::Full);
    let attempt =
        |job: u128, n| AttemptInfo { job_id: Some(Uuid::from_u128(job)), attempt: n, max_attempts: 8 };
    let stop = crm_jobs::sync::Stop::Shutdown;
    stopped_before_page_4_of(&s, SyncMode::Full, attempt(7, 1), stop).await;
    assert_eq!(s.search_requests().await, 3);
    crm_jobs::sync::run(&s.ctx, &full, attempt(7, 2), || None).await.expect("resumed");
    let (status, pages, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((status.as_str(), pages as usize, created), ("succeeded", 2_000 / 200 + 1, 2_000), "one run");
    assert_eq!(s.search_requests().await, 10, "no committed page fetched again");

    stopped_before_page_4_of(&s, SyncMode::Full, attempt(9, 1), stop).await;
    let (replaced, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(replaced, "running");
    crm_jobs::sync::run(&s.ctx, &full, attempt(8, 1), || None).await.expect("another full sync");
    let (status, pages, _, _, _, unchanged) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(
        (status.as_str(), pages as usize, unchanged),
        ("succeeded", 2_000 / 200 + 1, 2_000),
        "from the start"
    );
    assert_eq!(s.search_requests().await, 10 + 3 + 10);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM sync_runs ORDER BY started_at")
        .fetch_all(&s.db.pool)
        .await
        .expect("runs");
    assert_eq!(statuses, ["succeeded", "failed", "succeeded"], "the replaced run is closed");
}

/// A run told its lease is lost requests nothing more: the pages in flight are aborted rather
/// than awaited, no outcome is recorded (the run stays `running` for the run that took the
/// job over), and that run resumes from the last committed page and finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_lost_its_lease_requests_nothing_more_and_records_no_outcome() {
    let s = setup(2_000, 0).await;
    let err = stopped_before_page_4(&s, crm_jobs::sync::Stop::LeaseLost).await;
    assert_eq!((err.kind.clone(), err.class.as_str()), (FailureKind::Defer(Duration::ZERO), "lease_lost"));
    // (Whether the last pages in flight committed before the abort depends on timing: each
    // page is its own transaction, so either way the cursor matches what was written.)
    let (status, pages, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(status, "running", "no outcome recorded by the stale run");
    assert!((1..=3).contains(&pages), "{pages} pages committed");
    assert_eq!(s.search_requests().await, 3, "no page requested after the lease was lost");
    s.sync(ObjectKind::Contact).await.expect("taken over");
    let (status, _, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((status.as_str(), created), ("succeeded", 2_000));
    assert_eq!(s.local(ObjectKind::Contact).await, s.remote(ObjectKind::Contact));
}

/// An attempt whose lease was lost, and whose heartbeat has not said so yet, goes on while a
/// later attempt of the job takes the sync over and finishes it. The stale attempt's next
/// commit finds the sync claimed by the other: it stops, every page is committed exactly once
/// (the run counts 11, not more), and the cursor the finished run stored is not set back.
#[tokio::test(flavor = "multi_thread")]
async fn a_superseded_attempt_commits_nothing_beside_the_one_that_took_over() {
    let s = setup(2_000, 0).await;
    let checks = AtomicUsize::new(0);
    let finished_cursor = std::sync::Mutex::new(None);
    let err = crm_jobs::sync::run(&s.ctx, &s.job(ObjectKind::Contact, SyncMode::Incremental), info(), || {
        if checks.fetch_add(1, Ordering::SeqCst) == 3 {
            // Before the stale attempt's fourth page, another attempt takes over and finishes.
            let cursor = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    s.sync(ObjectKind::Contact).await.expect("the attempt that took over finishes");
                    s.cursor(ObjectKind::Contact).await
                })
            });
            *finished_cursor.lock().expect("lock") = Some(cursor);
        }
        None
    })
    .await
    .expect_err("superseded");
    assert_eq!((err.kind.clone(), err.class.as_str()), (FailureKind::Defer(Duration::ZERO), "superseded"));
    let (status, pages, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!(
        (status.as_str(), pages as usize, created),
        ("succeeded", 2_000 / 200 + 1, 2_000),
        "each page once"
    );
    let finished = finished_cursor.lock().expect("lock").take().expect("taken over");
    assert_eq!(s.cursor(ObjectKind::Contact).await, finished, "the cursor is not set back");
    assert_eq!(s.local(ObjectKind::Contact).await, s.remote(ObjectKind::Contact));
}

/// A throttle seen elsewhere pauses the account while this sync runs: its next page is not
/// requested (the first was admitted with the job), and the job goes back to its lane (which
/// sleeps on the pause) without spending an attempt, resuming after its committed page.
#[tokio::test(flavor = "multi_thread")]
async fn an_account_paused_during_a_run_stops_its_next_request() {
    let s = setup(1_000, 0).await;
    let pause = crm_jobs::enqueue::budget::account_pause(Provider::Hubspot, &s.hub.to_string());
    s.ctx.queue.pause(&pause, Duration::from_secs(30)).await.expect("pause");
    let err =
        crm_jobs::sync::run(&s.ctx, &s.job(ObjectKind::Contact, SyncMode::Incremental), info(), || None)
            .await
            .expect_err("deferred by the pause");
    assert_eq!(
        (err.kind.clone(), err.class.as_str()),
        (FailureKind::Defer(Duration::ZERO), "paused"),
        "back to its lane, which sleeps on the pause: {err:?}"
    );
    assert_eq!(s.search_requests().await, 1, "only the page admitted with the job was requested");
    let (status, pages, created, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((status.as_str(), pages, created), ("running", 1, 200), "the first page committed");
    s.ctx.queue.pause(&pause, Duration::ZERO).await.expect("lift");
    s.sync(ObjectKind::Contact).await.expect("resumed");
    assert_eq!(
        s.search_requests().await,
        1_000 / 200,
        "resumed after the committed page: each page requested once"
    );
    assert_eq!(s.local(ObjectKind::Contact).await, s.remote(ObjectKind::Contact));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_change_that_collides_with_a_local_pending_change_is_recorded() {
    let s = setup(20, 0).await;
    s.sync(ObjectKind::Contact).await.expect("full");
    let (id, _) = s.local(ObjectKind::Contact).await.into_iter().next().expect("a contact");
    let mut pending = serde_json::Map::new();
    pending.insert("email".into(), json!("mine@example.com"));
    crm_jobs::sync::store::mark_pending(&s.db.pool, "acme", "hubspot", ObjectKind::Contact, &id, &pending)
        .await
        .expect("pending");
    s.set_remote_email(&id, "theirs@example.com").await;
    s.sync(ObjectKind::Contact).await.expect("incremental");
    let (field, local, remote): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT field, local_value, remote_value FROM sync_conflicts WHERE external_id = $1")
            .bind(&id)
            .fetch_one(&s.db.pool)
            .await
            .expect("conflict recorded");
    assert_eq!(
        (field.as_str(), local.as_deref(), remote.as_deref()),
        ("email", Some("mine@example.com"), Some("theirs@example.com"))
    );
    assert_eq!(
        s.local(ObjectKind::Contact).await[&id].as_deref(),
        Some("mine@example.com"),
        "not silently overwritten"
    );
}

/// A page's conflict check and its upsert see one state of the pending marks. A mark, and a
/// conflict resolution, wait for the pages of those records being written (here a page that
/// has read the marks and holds no row of the record), and a page waits for a mark being made.
/// Without the records lock a mark could commit between a page's check and its upsert, and the
/// page wrote over it; a resolution could commit under a page that then wrote the mark back.
#[tokio::test(flavor = "multi_thread")]
async fn marks_and_resolutions_wait_for_the_pages_being_written_and_pages_wait_for_them() {
    use crm_jobs::sync::conflicts::{Keep, resolve};
    use crm_jobs::sync::store::{Scope, apply_page, begin_page, lock_records, mark_pending};
    const WAIT: Duration = Duration::from_millis(300);
    let s = setup(20, 0).await;
    s.sync(ObjectKind::Contact).await.expect("full");
    let (id, _) = s.local(ObjectKind::Contact).await.into_iter().next().expect("a contact");
    let scope = Scope { tenant: "acme", provider: "hubspot", connection: s.connection, run: Uuid::now_v7() };
    // A page being written (here an empty one: `begin_page` takes the lock, and the page
    // stays open until committed).
    let open_page = |pool: sqlx::PgPool| {
        let scope = scope.clone();
        async move {
            let mut page = begin_page(&pool, "acme", "hubspot", ObjectKind::Contact, None).await?;
            apply_page(&mut page, &scope, ObjectKind::Contact, vec![], &[]).await?;
            Ok::<_, sqlx::Error>(page)
        }
    };

    // A page has read the marks (none), and the mark comes.
    let page = open_page(s.db.pool.clone()).await.expect("page");
    let mark = tokio::spawn({
        let (pool, id) = (s.db.pool.clone(), id.clone());
        async move {
            let mut fields = serde_json::Map::new();
            fields.insert("email".into(), json!("mine@example.com"));
            mark_pending(&pool, "acme", "hubspot", ObjectKind::Contact, &id, &fields).await
        }
    });
    tokio::time::sleep(WAIT).await;
    assert!(!mark.is_finished(), "the mark waits for the page being written");
    page.commit().await.expect("page commits");
    assert!(mark.await.expect("task").expect("mark"), "marked once the page committed");

    // A mark being made (its lock held here), and a page comes.
    let mut marking = s.db.pool.begin().await.expect("begin");
    lock_records(&mut marking, "acme", "hubspot", ObjectKind::Contact).await.expect("lock");
    let page = tokio::spawn(open_page(s.db.pool.clone()));
    tokio::time::sleep(WAIT).await;
    assert!(!page.is_finished(), "the page waits for the mark being made");
    marking.commit().await.expect("mark commits");
    page.await.expect("task").expect("page begins").rollback().await.expect("rollback");
    // A lock of another tenant's records does not hold this one's pages.
    let mut other = s.db.pool.begin().await.expect("begin");
    lock_records(&mut other, "other", "hubspot", ObjectKind::Contact).await.expect("lock");
    let page = tokio::time::timeout(Duration::from_secs(10), open_page(s.db.pool.clone()))
        .await
        .expect("not held by another tenant's lock")
        .expect("page begins");
    page.rollback().await.expect("rollback");
    other.rollback().await.expect("rollback");

    // A conflict, and a resolution of it while a page is being written.
    s.set_remote_email(&id, "theirs@example.com").await;
    s.sync(ObjectKind::Contact).await.expect("incremental");
    let conflict: i64 =
        sqlx::query_scalar("SELECT id FROM sync_conflicts WHERE external_id = $1 AND resolved_at IS NULL")
            .bind(&id)
            .fetch_one(&s.db.pool)
            .await
            .expect("conflict recorded");
    let page = open_page(s.db.pool.clone()).await.expect("page");
    let resolution = tokio::spawn({
        let pool = s.db.pool.clone();
        async move { resolve(&pool, conflict, Keep::Remote, "test").await }
    });
    tokio::time::sleep(WAIT).await;
    assert!(!resolution.is_finished(), "the resolution waits for the page being written");
    page.commit().await.expect("page commits");
    let resolved = resolution.await.expect("task").expect("resolved");
    assert_eq!(resolved.value.as_deref(), Some("theirs@example.com"));
    let pending: Option<Value> =
        sqlx::query_scalar("SELECT local_pending FROM crm_contacts WHERE external_id = $1")
            .bind(&id)
            .fetch_one(&s.db.pool)
            .await
            .expect("record");
    assert_eq!(pending, None, "no longer pending");
}

/// An action's update of a contact's email is a local pending change: the local record shows
/// it at once; a sync that finds the CRM with it clears it; one that finds the CRM changed
/// since by someone else records the conflict (once, however often it re-reads the record) and
/// keeps our value.
#[tokio::test(flavor = "multi_thread")]
async fn an_actions_update_is_pending_until_a_sync_confirms_it_and_a_later_change_conflicts_once() {
    let s = setup(20, 0).await;
    s.sync(ObjectKind::Contact).await.expect("full");
    let mut ids = s.local(ObjectKind::Contact).await.into_keys();
    let (confirmed, contested) = (ids.next().expect("a contact"), ids.next().expect("another"));
    s.update_email("k1", &confirmed, "one@ours.example").await;
    s.update_email("k2", &contested, "two@ours.example").await;
    let local = s.local(ObjectKind::Contact).await;
    assert_eq!(
        (local[&confirmed].as_deref(), local[&contested].as_deref()),
        (Some("one@ours.example"), Some("two@ours.example")),
        "the local store shows our writes at once"
    );
    assert_eq!(s.pending(&confirmed).await, Some(json!({ "email": "one@ours.example" })));

    // Someone changes the contested contact at the CRM after our update.
    s.set_remote_email(&contested, "theirs@example.com").await;
    s.sync(ObjectKind::Contact).await.expect("incremental");
    assert_eq!(s.pending(&confirmed).await, None, "confirmed by the CRM: no longer pending");
    assert!(s.conflicts(&confirmed).await.is_empty());
    let conflict =
        ("email".to_owned(), Some("two@ours.example".to_owned()), Some("theirs@example.com".to_owned()));
    assert_eq!(s.conflicts(&contested).await, vec![conflict.clone()]);
    assert_eq!(s.local(ObjectKind::Contact).await[&contested].as_deref(), Some("two@ours.example"), "kept");
    // A full sync reads it again: the same conflict, not a second one.
    crm_jobs::sync::run(&s.ctx, &s.job(ObjectKind::Contact, SyncMode::Full), info(), || None)
        .await
        .expect("full again");
    assert_eq!(s.conflicts(&contested).await, vec![conflict.clone()]);
    assert_eq!(s.pending(&contested).await, Some(json!({ "email": "two@ours.example" })));
    // The CRM gets our value after all (stored as it likes: case and spaces aside, the same):
    // the next sync confirms it and closes the conflict.
    s.env.control.advance("1s").await;
    s.set_remote_email(&contested, " Two@Ours.example").await;
    s.sync(ObjectKind::Contact).await.expect("incremental");
    assert_eq!(s.pending(&contested).await, None, "confirmed");
    let closed: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT resolution, resolved_by FROM sync_conflicts WHERE external_id = $1")
            .bind(&contested)
            .fetch_all(&s.db.pool)
            .await
            .expect("conflicts");
    assert_eq!(closed, vec![(Some("confirmed".to_owned()), Some("sync".to_owned()))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttle_pauses_the_account_fleet_wide_and_defers_the_job() {
    let s = setup(1_000, 0).await;
    s.env.control.fault("hubspot", json!({ "after": 2, "times": 1, "action": { "type": "throttle", "policy": "TEN_SECONDLY_ROLLING", "retry_after_secs": 30 } })).await;
    let err = s.sync(ObjectKind::Contact).await.expect_err("throttled");
    assert_eq!((err.kind.clone(), err.class.as_str()), (FailureKind::Defer(Duration::ZERO), "throttled"));
    let pauses = s.ctx.queue.pauses().await.expect("pauses");
    let key = format!("x:account:hubspot:{}", s.hub);
    let until = pauses.get(&key).copied().expect("account paused");
    let left = until - chrono::Utc::now().timestamp_millis();
    assert!((25_000..=30_500).contains(&left), "paused for the Retry-After ({left} ms)");
    let (status, pages, ..) = s.last_run(ObjectKind::Contact).await;
    assert_eq!((status.as_str(), pages), ("running", 2), "progress kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_credentials_park_the_connection() {
    let s = setup(10, 0).await;
    s.env.control.post(&format!("hubspot/accounts/{}/revoke", s.hub), json!({})).await;
    let err = s.sync(ObjectKind::Contact).await.expect_err("parked");
    assert_eq!(err.class, "needs_reauth");
    assert!(matches!(err.kind, FailureKind::Defer(_)), "no attempt spent");
    let status: String = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
        .bind(s.connection)
        .fetch_one(&s.db.pool)
        .await
        .expect("status");
    assert_eq!(status, "needs_reauth");
    assert!(s.ctx.queue.pauses().await.expect("pauses").contains_key(&format!("x:conn:{}", s.connection)));
}

/// A token endpoint refusing the OAuth app's own credentials fails every job of the provider
/// alike: the job is deferred (no attempt spent, not dead-lettered) and the provider paused
/// fleet-wide for `APP_REFUSED_PAUSE`, the connection left active.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_oauth_app_pauses_the_provider_and_defers_the_job() {
    let s = setup(10, 0).await;
    let target = crm_jobs::enqueue::target(&s.db.pool, s.connection).await.expect("db").expect("target");
    let refused = crm_jobs::auth::call::CallError::Auth(crm_jobs::auth::AuthError::AppRefused(
        "BAD_CLIENT_SECRET".into(),
    ));
    let err = crm_jobs::limits::on_error(&s.ctx, &target, &refused).await;
    assert_eq!(err.class, "app_refused");
    assert!(matches!(err.kind, FailureKind::Defer(_)), "no attempt spent: {err:?}");
    let until = s
        .ctx
        .queue
        .pauses()
        .await
        .expect("pauses")
        .get("x:provider:hubspot")
        .copied()
        .expect("provider paused");
    let left = until - chrono::Utc::now().timestamp_millis();
    let pause = crm_jobs::limits::APP_REFUSED_PAUSE.as_millis() as i64;
    assert!((pause - 5_000..=pause).contains(&left), "paused for {left} ms");
    let status: String = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
        .bind(s.connection)
        .fetch_one(&s.db.pool)
        .await
        .expect("status");
    assert_eq!(status, "active");
}

/// Ordered page writes (`crm_jobs::sync::writer`), driven directly with pages made up here so
/// that the database can be made slow or failing at a chosen record (a trigger of this test's
/// own database): two pages are written at once, yet they commit in order.
mod ordered_writes {
    use super::*;
    use crm_jobs::enqueue::Target;
    use crm_jobs::providers::{CrmRecord, SyncCursor, SyncPage};
    use crm_jobs::sync::writer::{WriteError, Writer};

    /// The attempt the writers of these tests commit for.
    const OWNER: Uuid = Uuid::from_u128(0x5eed);

    /// A run row and a sync_state row for the connection, claimed by [`OWNER`], as `sync::run`
    /// makes them.
    async fn start_run(s: &SyncEnv) -> Uuid {
        let run = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO sync_runs (id, connection_id, tenant_id, provider, object, mode, status) \
             VALUES ($1, $2, 'acme', 'hubspot', 'contact', 'full', 'running')",
        )
        .bind(run)
        .bind(s.connection)
        .execute(&s.db.pool)
        .await
        .expect("run");
        sqlx::query(
            "INSERT INTO sync_state (connection_id, object, cursor, run_id, owner) VALUES ($1, 'contact', '{}', $2, $3)",
        )
        .bind(s.connection)
        .bind(run)
        .bind(OWNER)
        .execute(&s.db.pool)
        .await
        .expect("state");
        run
    }

    /// Records with these ids, changed at `minute`; the cursor after them names the page.
    fn page(name: &str, ids: &[&str], minute: u32) -> SyncPage {
        let at = chrono::DateTime::parse_from_rfc3339(&format!("2026-11-01T00:{minute:02}:00Z"))
            .expect("time")
            .to_utc();
        let records = ids
            .iter()
            .map(|id| {
                let mut r = CrmRecord::new(*id, ObjectKind::Contact, at);
                r.email = Some(format!("{id}.{minute}@example.com"));
                r.raw = json!({ "id": id, "minute": minute });
                r
            })
            .collect();
        let next = SyncCursor { token: Some(name.to_owned()), ..SyncCursor::full() };
        SyncPage { records, deleted: Vec::new(), next, has_more: true }
    }

    /// A trigger that sleeps `secs` before writing the record `id`, then fails if `fail`.
    async fn slow_at(s: &SyncEnv, id: &str, secs: f64, fail: bool) {
        let raise = if fail { "RAISE EXCEPTION 'refused by the test';" } else { "" };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.external_id = '{id}' THEN PERFORM pg_sleep({secs}); {raise} END IF; RETURN NEW; END $$"
        )))
        .execute(&s.db.pool)
        .await
        .expect("function");
        sqlx::query(
            "CREATE TRIGGER slow_write BEFORE INSERT ON crm_contacts FOR EACH ROW EXECUTE FUNCTION slow_write()",
        )
        .execute(&s.db.pool)
        .await
        .expect("trigger");
    }

    async fn stored(s: &SyncEnv) -> (Option<String>, i32, BTreeMap<String, Option<String>>) {
        let (token, pages): (Option<String>, i32) = sqlx::query_as(
            "SELECT s.cursor->>'token', r.pages FROM sync_state s JOIN sync_runs r ON r.id = s.run_id \
             WHERE s.connection_id = $1",
        )
        .bind(s.connection)
        .fetch_one(&s.db.pool)
        .await
        .expect("state");
        (token, pages, s.local(ObjectKind::Contact).await)
    }

    fn writer(s: &SyncEnv) -> Writer {
        let target = Target {
            tenant: "acme".into(),
            provider: Provider::Hubspot,
            connection: s.connection,
            account: s.hub.to_string(),
        };
        Writer::new(s.db.pool.clone(), target, ObjectKind::Contact, OWNER)
    }

    /// Another attempt claims the sync between two pages (this attempt's lease was lost and
    /// its heartbeat has not said so yet): the next page must not commit, or it would write
    /// beside the attempt that took over and set the cursor back behind it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_page_of_an_attempt_whose_claim_was_taken_rolls_back() {
        let s = setup(0, 0).await;
        let run = start_run(&s).await;
        let mut w = writer(&s);
        w.submit(run, page("p1", &["a"], 1), false).await.expect("page 1");
        w.drain().await.expect("page 1 commits");
        sqlx::query("UPDATE sync_state SET owner = $2 WHERE connection_id = $1")
            .bind(s.connection)
            .bind(Uuid::now_v7())
            .execute(&s.db.pool)
            .await
            .expect("claimed by another attempt");
        w.submit(run, page("p2", &["b"], 2), false).await.expect("page 2 submitted");
        let err = w.drain().await.expect_err("page 2 does not commit");
        assert!(matches!(err, WriteError::Superseded), "{err}");
        let (token, pages, rows) = stored(&s).await;
        assert_eq!((token.as_deref(), pages), (Some("p1"), 1), "cursor and counters stay after page 1");
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["a"], "page 2's row rolled back");
        let err = w.submit(run, page("p3", &["c"], 3), true).await.expect_err("no page after it");
        assert!(matches!(err, WriteError::Predecessor), "{err}");
    }

    /// Page 1 is slow to reach a record that page 2 also holds. Were page 2 to write it first
    /// and then wait for page 1 to commit, each would wait for the other; the writer sees the
    /// shared record and writes page 2 only after page 1 has committed.
    #[tokio::test(flavor = "multi_thread")]
    async fn pages_sharing_a_record_commit_in_order_without_deadlock() {
        let s = setup(0, 0).await;
        let run = start_run(&s).await;
        slow_at(&s, "a-slow", 1.0, false).await;
        let mut w = writer(&s);
        w.submit(run, page("p1", &["a-slow", "b-shared"], 1), false).await.expect("page 1");
        w.submit(run, page("p2", &["b-shared", "c"], 2), false).await.expect("page 2");
        let rest = tokio::time::timeout(Duration::from_secs(20), w.drain()).await.expect("no deadlock");
        rest.expect("both commit");
        let tokens: Vec<Option<String>> = w.take_committed().iter().map(|c| c.cursor.token.clone()).collect();
        assert_eq!(tokens, [Some("p1".to_owned()), Some("p2".to_owned())], "committed in page order");
        let (token, pages, rows) = stored(&s).await;
        assert_eq!((token.as_deref(), pages), (Some("p2"), 2));
        assert_eq!(
            rows.get("b-shared"),
            Some(&Some("b-shared.2@example.com".to_owned())),
            "the later page wins"
        );
        assert_eq!(rows.len(), 3);
    }

    /// Page 2 is written while page 1 is still open; page 1 then fails. Page 2 must roll back:
    /// committing it would store a cursor past page 1, whose records were never written.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_page_rolls_back_the_page_written_after_it() {
        let s = setup(0, 0).await;
        let run = start_run(&s).await;
        let mut w = writer(&s);
        w.submit(run, page("p1", &["a"], 1), false).await.expect("page 1");
        w.drain().await.expect("page 1 commits");
        assert_eq!(w.take_committed().len(), 1);
        slow_at(&s, "b-fails", 1.0, true).await;
        w.submit(run, page("p2", &["b-fails"], 2), false).await.expect("page 2 submitted");
        w.submit(run, page("p3", &["c"], 3), false).await.expect("page 3 submitted");
        assert!(w.take_committed().is_empty(), "page 3 went in while page 2 was still being written");
        let err = w.drain().await.expect_err("page 2 fails");
        assert!(matches!(err, WriteError::Db(_)), "page 2's own error comes first: {err}");
        let err = w.drain().await.expect_err("page 3 does not commit");
        assert!(matches!(err, WriteError::Predecessor), "page 3 rolled back for page 2: {err}");
        let err = w.submit(run, page("p4", &["d"], 4), false).await.expect_err("no page after a failure");
        assert!(matches!(err, WriteError::Predecessor), "{err}");
        let (token, pages, rows) = stored(&s).await;
        assert_eq!((token.as_deref(), pages), (Some("p1"), 1), "cursor and counters stay after page 1");
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["a"], "page 3's row rolled back");
    }

    /// Page 2's BEGIN waits longer than the writer gives a second connection (its lock is
    /// held here for a moment), so the writer gives up on it, waits for page 1 and begins page
    /// 2 again. The BEGIN it gave up on must not leave a pooled connection in an open
    /// transaction holding page 2's lock: the second BEGIN would wait for it forever, and
    /// whoever took that connection next would work inside a transaction nobody ends.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_begin_given_up_on_leaves_no_connection_in_a_transaction() {
        let s = setup(0, 0).await;
        let run = start_run(&s).await;
        slow_at(&s, "a-slow", 1.0, false).await;
        let mut holder = s.db.pool.begin().await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crm_jobs::sync::writer::lock_key(OWNER, 2))
            .execute(&mut *holder)
            .await
            .expect("page 2's lock");
        let mut w = writer(&s);
        w.submit(run, page("p1", &["a-slow"], 1), false).await.expect("page 1");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.rollback().await
        });
        let idle_in_transaction = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
            )
            .fetch_one(&s.db.pool)
            .await
            .expect("activity")
        };
        let writing = tokio::time::timeout(Duration::from_secs(20), async {
            w.submit(run, page("p2", &["b"], 2), false).await?;
            w.drain().await
        });
        // Sampled after the lock was released and while page 1 is still being written (its
        // trigger sleeps 1 s): the BEGIN given up on has finished by now.
        let sampled = async {
            tokio::time::sleep(Duration::from_millis(650)).await;
            idle_in_transaction().await
        };
        let (second, during) = tokio::join!(writing, sampled);
        second.expect("page 2 is not left waiting for a lock").expect("both pages commit");
        release.await.expect("task").expect("released");
        assert_eq!(during, 0, "no pooled connection left inside the abandoned BEGIN's transaction");
        assert_eq!(w.take_committed().len(), 2);
        assert_eq!(idle_in_transaction().await, 0);
    }

    /// A wait between two pages of one sync must be one PostgreSQL can see. Here another
    /// writer (a second connection of the same tenant and provider, whose ids collide) holds
    /// a row page 1 needs and waits for a row page 2 wrote, while page 2 waits for page 1:
    /// a cycle. PostgreSQL's deadlock detector must break it; were page 2's wait invisible
    /// to it (an in-process channel), all three would wait forever.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_cycle_through_another_writer_is_broken_by_postgresql() {
        let s = setup(0, 0).await;
        let run = start_run(&s).await;
        slow_at(&s, "01-slow", 1.5, false).await;
        let mut w = writer(&s);
        w.submit(run, page("p1", &["01-slow", "10"], 1), false).await.expect("page 1");
        w.submit(run, page("p2", &["20"], 2), false).await.expect("page 2");
        // Page 2 has written "20" and waits for page 1, which sleeps before writing "10".
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut other = s.db.pool.begin().await.expect("other writer");
        let upsert = "INSERT INTO crm_contacts (tenant_id, provider, external_id, connection_id, raw, remote_updated_at) \
                      VALUES ('acme', 'hubspot', $1, $2, '{}', now()) \
                      ON CONFLICT (tenant_id, provider, external_id) DO UPDATE SET raw = EXCLUDED.raw";
        sqlx::query(upsert).bind("10").bind(s.connection).execute(&mut *other).await.expect("takes 10 first");
        let blocked = tokio::spawn(async move {
            // Blocks on page 2's uncommitted "20".
            let r = sqlx::query(upsert).bind("20").bind(Uuid::nil()).execute(&mut *other).await;
            match r {
                Ok(_) => other.commit().await.map(|_| ()),
                Err(e) => Err(e),
            }
        });
        let writes =
            tokio::time::timeout(Duration::from_secs(20), w.drain()).await.expect("the cycle was broken");
        let other = tokio::time::timeout(Duration::from_secs(20), blocked).await.expect("other writer freed");
        let other = other.expect("task");
        // PostgreSQL chose a victim: either the other writer or one of the pages failed.
        assert!(writes.is_err() || other.is_err(), "someone was aborted: writes {writes:?}, other {other:?}");
        if let Err(e) = &writes {
            assert!(e.to_string().contains("deadlock") || matches!(e, WriteError::Predecessor), "{e}");
        }
    }
}
