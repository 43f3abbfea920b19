//! Close client against the Close imitation over real HTTP: full and incremental sync of contacts,
//! companies (leads) and deals (opportunities), crash resume and expired search cursors, the
//! sequence and `_skip` caps, every action read back through the control plane, marker
//! reconciliation, and a table of sandbox faults mapped to error variants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crm_jobs::providers::close::{CloseClient, marker_token};
use crm_jobs::providers::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, CrmRecord,
    DeletedRecord, Http, LogCall, ObjectKind, Provider, ProviderError, SyncCursor, ThrottleScope, UpdateDeal,
};
use crm_sandbox::close::store::Kind;
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};

use crate::support::Env;

/// A sandbox running Close, the first organization's credentials as client `Auth`s.
struct Setup {
    env: Env,
    org: String,
    bearer: Auth,
    key: Auth,
    account: Value,
}

fn auth(credential: Credential, base: &str) -> Auth {
    Auth { credential, api_base: url::Url::parse(base).expect("api base") }
}

async fn setup(records: usize) -> Setup {
    let env = Env::start(&[ProviderKind::Close], records).await;
    let accounts = env.control.get("close/accounts").await;
    let account = accounts["accounts"][0].clone();
    let org = account["id"].as_str().expect("org").to_owned();
    // Bulk tests are about data, not limits; the limit tests set their own.
    env.control.patch(&format!("close/accounts/{org}"), json!({"limit": 1_000_000})).await;
    let base = env.sandbox.urls().close().expect("close urls").api_base;
    let s = |v: &Value| v.as_str().expect("credential").to_owned();
    let bearer = auth(Credential::Bearer(s(&account["credentials"]["oauth"]["access_token"]).into()), &base);
    let key = auth(Credential::BasicKey(s(&account["credentials"]["api_key"]).into()), &base);
    Setup { env, org, bearer, key, account }
}

impl Setup {
    fn client(&self) -> &dyn CrmClient {
        self.env.clients.get(Provider::Close)
    }

    /// Ids of live records of a kind, straight from the imitation.
    fn live(&self, kind: Kind) -> BTreeSet<String> {
        let close = self.env.sandbox.close().expect("close runs");
        let account = close.account_by_id(&self.org).expect("account");
        let d = account.data.read();
        d.table(kind).live.keys().cloned().collect()
    }

    fn live_updated(&self, kind: Kind) -> BTreeMap<String, i64> {
        let close = self.env.sandbox.close().expect("close runs");
        let account = close.account_by_id(&self.org).expect("account");
        let d = account.data.read();
        d.table(kind).live.values().map(|r| (r.id.clone(), r.updated_at)).collect()
    }

    async fn record(&self, object: &str, id: &str) -> Value {
        self.env.control.get(&format!("close/accounts/{}/objects/{object}/{id}", self.org)).await
    }

    async fn mutate(&self, body: Value) -> Value {
        self.env.control.post(&format!("close/accounts/{}/mutations", self.org), body).await
    }

    async fn fault(&self, rule: Value) {
        let mut rule = rule;
        rule["account"] = json!(self.org);
        self.env.control.fault("close", rule).await;
    }

    fn a_lead(&self) -> String {
        self.live(Kind::Lead).into_iter().next().expect("a lead")
    }

    /// A lead with at least one contact, and that contact.
    fn lead_with_contact(&self) -> (String, String) {
        let close = self.env.sandbox.close().expect("close runs");
        let account = close.account_by_id(&self.org).expect("account");
        let d = account.data.read();
        let c = d.table(Kind::Contact).live.values().next().expect("a contact");
        (c.lead_id().expect("lead").to_owned(), c.id.clone())
    }
}

/// Pages until the run ends; returns records, deletions, the final cursor and the page count.
async fn run(
    client: &dyn CrmClient,
    auth: &Auth,
    kind: ObjectKind,
    start: SyncCursor,
) -> (Vec<CrmRecord>, Vec<DeletedRecord>, SyncCursor, usize) {
    let mut cursor = start;
    let (mut records, mut deleted, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = client
            .sync_page(auth, kind, &cursor)
            .await
            .unwrap_or_else(|e| panic!("{kind} page failed: {e}"))
            .value;
        pages += 1;
        assert!(pages < 1_000, "a run must end");
        records.extend(page.records);
        deleted.extend(page.deleted);
        cursor = page.next;
        if !page.has_more {
            return (records, deleted, cursor, pages);
        }
    }
}

fn ids(records: &[CrmRecord]) -> Vec<String> {
    records.iter().map(|r| r.external_id.clone()).collect()
}

fn kind_of(o: ObjectKind) -> Kind {
    match o {
        ObjectKind::Contact => Kind::Contact,
        ObjectKind::Company => Kind::Lead,
        ObjectKind::Deal => Kind::Opportunity,
    }
}

#[tokio::test]
async fn full_sync_spans_pages_and_returns_every_record_exactly_once() {
    let s = setup(250).await;
    for object in ObjectKind::ALL {
        let (records, deleted, last, pages) = run(s.client(), &s.bearer, object, SyncCursor::full()).await;
        let got = ids(&records);
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), 250, "{object}: every record");
        assert_eq!(unique, s.live(kind_of(object)), "{object}: exactly the live records");
        assert!(pages >= 4, "{object}: several pages ({pages})");
        assert!(deleted.is_empty());
        let newest = records.iter().map(|r| r.remote_updated_at).max();
        assert_eq!(last.since, newest, "{object}: the next run starts at the high water");
    }
    // Normalisation: deals in major units, contacts with their lead.
    let (deals, ..) = run(s.client(), &s.key, ObjectKind::Deal, SyncCursor::full()).await;
    let d = &deals[0];
    assert_eq!(d.amount, d.raw["value"].as_f64().map(|c| c / 100.0));
    assert!(d.stage.as_deref().is_some_and(|x| x.starts_with("stat_")));
    let page = s.client().sync_page(&s.bearer, ObjectKind::Contact, &SyncCursor::full()).await.expect("page");
    let q = page.quota.expect("RateLimit parsed");
    assert_eq!(q.limit, Some(1_000_000), "the per-key limit of the search group (patched)");
    assert!(q.remaining.is_some() && q.reset_after.is_some());
    let c = &page.value.records[0];
    assert!(c.company.as_deref().is_some_and(|l| l.starts_with("lead_")));
    assert!(c.email.is_some());
}

#[tokio::test]
async fn incremental_sync_returns_exactly_the_mutation_batch() {
    let s = setup(60).await;
    let mut cursors = BTreeMap::new();
    for object in ObjectKind::ALL {
        let (.., last, _) = run(s.client(), &s.bearer, object, SyncCursor::full()).await;
        cursors.insert(object, last);
    }
    let log = s.mutate(json!({"seed": 7, "creates": 9, "updates": 20, "deletes": 4})).await;
    for object in ObjectKind::ALL {
        let name = kind_of(object).name();
        let list = |k: &str| -> BTreeSet<String> {
            log[k][name]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().expect("id").to_owned())
                .collect()
        };
        let deleted = list("deleted");
        let changed: BTreeSet<String> =
            list("created").union(&list("updated")).filter(|i| !deleted.contains(*i)).cloned().collect();
        let (records, gone, last, _) = run(s.client(), &s.bearer, object, cursors[&object].clone()).await;
        let got: Vec<String> = ids(&records);
        assert_eq!(got.len(), got.iter().collect::<BTreeSet<_>>().len(), "{object}: no record twice");
        assert_eq!(
            got.into_iter().collect::<BTreeSet<_>>(),
            changed,
            "{object}: exactly the changed records"
        );
        let gone: BTreeSet<String> = gone.into_iter().map(|d| d.external_id).collect();
        assert_eq!(gone, deleted, "{object}: exactly the deleted records");
        // Nothing changed since: the next run delivers no record again.
        let (again, ..) = run(s.client(), &s.bearer, object, last).await;
        assert!(again.is_empty(), "{object}: {} records delivered twice", again.len());
    }
    assert!(
        !log["deleted"]["lead"].is_null() || !log["deleted"]["contact"].is_null(),
        "the batch deleted something"
    );
}

#[tokio::test]
async fn changes_during_a_scan_are_not_lost() {
    let s = setup(230).await;
    for object in [ObjectKind::Contact, ObjectKind::Deal] {
        let mut cursor = SyncCursor::full();
        let mut latest: BTreeMap<String, i64> = BTreeMap::new();
        let mut batch = 0;
        loop {
            let page = s.client().sync_page(&s.key, object, &cursor).await.expect("page").value;
            for r in &page.records {
                latest.insert(r.external_id.clone(), r.remote_updated_at.timestamp_millis());
            }
            for d in &page.deleted {
                latest.remove(&d.external_id);
            }
            cursor = page.next;
            if !page.has_more {
                break;
            }
            batch += 1;
            // Another user edits records while the scan runs; the clock moves a little.
            s.mutate(json!({"seed": 100 + batch, "creates": 2, "updates": 6, "objects": [kind_of(object).name()], "step_ms": 10})).await;
        }
        let (records, deleted, ..) = run(s.client(), &s.key, object, cursor).await;
        for r in &records {
            latest.insert(r.external_id.clone(), r.remote_updated_at.timestamp_millis());
        }
        for d in &deleted {
            latest.remove(&d.external_id);
        }
        assert_eq!(latest, s.live_updated(kind_of(object)), "{object}: the local copy converges to the CRM");
    }
}

#[tokio::test]
async fn a_crash_resumes_from_the_stored_cursor_even_after_it_expired() {
    let s = setup(250).await;
    let first = s
        .client()
        .sync_page(&s.bearer, ObjectKind::Contact, &SyncCursor::full())
        .await
        .expect("page 1")
        .value;
    let stored = first.next.clone();
    let second = s.client().sync_page(&s.bearer, ObjectKind::Contact, &stored).await.expect("page 2").value;
    // The worker crashed before committing page 2: it resumes from the same stored cursor.
    let replay =
        s.client().sync_page(&s.bearer, ObjectKind::Contact, &stored).await.expect("page 2 again").value;
    assert_eq!(ids(&second.records), ids(&replay.records), "resuming yields the same page, nothing skipped");
    // Much later the server has forgotten the cursor; the client restarts at the stored boundary.
    s.env.control.advance("31s").await;
    let (rest, ..) = run(s.client(), &s.bearer, ObjectKind::Contact, stored).await;
    let mut all = ids(&first.records);
    all.extend(ids(&rest));
    assert_eq!(all.len(), 250, "nothing skipped or repeated across the expired cursor");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), s.live(Kind::Contact));
    let log = s.env.control.get("requests?provider=close&path=/api/v1/data/search/&status=400").await;
    assert_eq!(log["count"], json!(1), "exactly one expired-cursor answer");
}

#[tokio::test]
async fn deep_windows_never_hit_the_skip_cap_or_the_sequence_cap() {
    let s = setup(3).await;
    // 10,150 contacts: more than one 10,000-object search sequence.
    let big = s
        .env
        .control
        .post(
            "close/accounts",
            json!({"records": 3, "objects": {"contact": 10_150}, "quota": {"limit": 1_000_000}}),
        )
        .await;
    let org = big["id"].as_str().expect("org").to_owned();
    let key = auth(
        Credential::BasicKey(big["credentials"]["api_key"].as_str().expect("key").to_owned().into()),
        s.key.api_base.as_str(),
    );
    let (contacts, ..) = run(s.client(), &key, ObjectKind::Contact, SyncCursor::full()).await;
    assert_eq!(contacts.len(), 10_150);
    assert_eq!(ids(&contacts).into_iter().collect::<BTreeSet<_>>().len(), 10_150);
    let restarts = s
        .env
        .control
        .get(&format!("requests?provider=close&account={org}&path=/api/v1/data/search/&limit=200"))
        .await;
    assert!(restarts["count"].as_u64().expect("count") >= 102);
    // Opportunities with a tiny _skip cap: the window moves instead.
    s.env.control.patch("close/settings", json!({"max_skip": {"opportunity": 30}})).await;
    let many = s
        .env
        .control
        .post(
            "close/accounts",
            json!({"records": 3, "objects": {"opportunity": 450}, "quota": {"limit": 1_000_000}}),
        )
        .await;
    let key = auth(
        Credential::BasicKey(many["credentials"]["api_key"].as_str().expect("key").to_owned().into()),
        s.key.api_base.as_str(),
    );
    let (deals, ..) = run(s.client(), &key, ObjectKind::Deal, SyncCursor::full()).await;
    assert_eq!(ids(&deals).into_iter().collect::<BTreeSet<_>>().len(), 450);
    assert_eq!(deals.len(), 450);
}

#[tokio::test]
async fn every_action_lands_in_the_sandbox_with_the_right_fields() {
    let s = setup(5).await;
    let c = s.client();
    let (lead, contact) = s.lead_with_contact();
    let due = chrono::DateTime::parse_from_rfc3339("2026-01-31T17:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let task = CreateTask {
        subject: "Follow up".into(),
        body: Some("About pricing".into()),
        due_at: Some(due),
        contact_id: Some(contact.clone()),
        deal_id: None,
        company_id: Some(lead.clone()),
        priority: Some("high".into()),
        owner_id: None,
        marker: "act-task-1".into(),
    };
    let t = c.create_task(&s.bearer, &task).await.expect("task").value;
    assert!(t.created && t.id.starts_with("task_"));
    let rec = s.record("task", &t.id).await;
    assert_eq!(rec["text"], json!("Follow up\n\nAbout pricing [crm-fleet:act-task-1]"));
    assert_eq!((rec["lead_id"].clone(), rec["contact_id"].clone()), (json!(lead), json!(contact)));
    assert_eq!(rec["date"], json!("2026-01-31T17:00:00.000000+00:00"));

    let deal = s.live(Kind::Opportunity).into_iter().next().expect("deal");
    let won = s.account["statuses"]["opportunity"][1]["id"].as_str().expect("won").to_owned();
    let upd = UpdateDeal {
        deal_id: deal.clone(),
        stage: Some(won.clone()),
        amount: Some(1234.5),
        close_date: chrono::NaiveDate::from_ymd_opt(2026, 3, 1),
    };
    assert!(!c.update_deal(&s.key, &upd).await.expect("deal").value.created);
    let rec = s.record("opportunity", &deal).await;
    assert_eq!(
        (rec["value"].clone(), rec["date_won"].clone(), rec["status_id"].clone()),
        (json!(123450), json!("2026-03-01"), json!(won))
    );
    let got = c.get(&s.key, ObjectKind::Deal, &deal).await.expect("get").value.expect("deal exists");
    assert_eq!((got.amount, got.stage.as_deref()), (Some(1234.5), Some(won.as_str())));

    let call = LogCall {
        subject: "Discovery call".into(),
        body: Some("Went well".into()),
        direction: "inbound".into(),
        duration_secs: 120,
        occurred_at: due,
        contact_id: Some(contact.clone()),
        deal_id: None,
        company_id: Some(lead.clone()),
        marker: "act-call-1".into(),
    };
    let k = c.log_call(&s.bearer, &call).await.expect("call").value;
    let rec = s.record("call", &k.id).await;
    assert_eq!(
        (rec["direction"].clone(), rec["duration"].clone(), rec["status"].clone()),
        (json!("inbound"), json!(120), json!("completed"))
    );
    assert!(rec["note"].as_str().expect("note").ends_with(&marker_token("act-call-1")));

    let input = ContactInput {
        email: Some("Ada.Lovelace@Example.com".into()),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        phone: Some("+441234567890".into()),
        company_id: Some(lead.clone()),
        title: Some("Analyst".into()),
        marker: "act-contact-1".into(),
    };
    let created = c.create_contact(&s.bearer, &input).await.expect("contact").value;
    let rec = s.record("contact", &created.id).await;
    let marker_field = s.account["credentials"]["marker_field"].as_str().expect("marker field");
    assert_eq!(rec[marker_field], json!("act-contact-1"));
    assert_eq!(rec["name"], json!("Ada Lovelace"));
    assert_eq!(rec["emails"][0]["email"], json!("ada.lovelace@example.com"));
    let patch = ContactInput {
        email: None,
        first_name: None,
        last_name: None,
        phone: None,
        company_id: None,
        title: Some("CTO".into()),
        marker: String::new(),
    };
    c.update_contact(&s.key, &created.id, &patch).await.expect("update");
    let rec = s.record("contact", &created.id).await;
    assert_eq!((rec["title"].clone(), rec["name"].clone()), (json!("CTO"), json!("Ada Lovelace")));

    let note = CreateNote {
        body: "Met at the fair".into(),
        title: Some("Fair".into()),
        contact_id: None,
        deal_id: None,
        company_id: Some(lead.clone()),
        marker: "act-note-1".into(),
    };
    let n = c.create_note(&s.key, &note).await.expect("note").value;
    let rec = s.record("note", &n.id).await;
    assert_eq!(
        (rec["note"].clone(), rec["title"].clone()),
        (json!("Met at the fair [crm-fleet:act-note-1]"), json!("Fair"))
    );

    let found = c
        .search_contact_by_email(&s.bearer, "ada.lovelace@example.com")
        .await
        .expect("search")
        .value
        .expect("found");
    assert_eq!(found.external_id, created.id);
    assert!(
        c.search_contact_by_email(&s.bearer, "ada@example.com").await.expect("search").value.is_none(),
        "exact matches only"
    );
    let lead_rec = c.get(&s.bearer, ObjectKind::Company, &lead).await.expect("get lead").value.expect("lead");
    assert_eq!(lead_rec.external_id, lead);
    assert!(c.get(&s.bearer, ObjectKind::Contact, "cont_missing").await.expect("get").value.is_none());

    for (kind, marker, id) in [
        (ActionObject::Task, "act-task-1", &t.id),
        (ActionObject::Call, "act-call-1", &k.id),
        (ActionObject::Note, "act-note-1", &n.id),
        (ActionObject::Contact, "act-contact-1", &created.id),
    ] {
        let hit = c.find_by_marker(&s.key, kind, marker).await.expect("reconcile").value;
        assert_eq!(hit.map(|h| h.id), Some(id.clone()), "{kind:?} found by marker");
        assert!(c.find_by_marker(&s.key, kind, "act-unknown").await.expect("reconcile").value.is_none());
    }
    // Without the lead Close cannot file a note: rejected before any request.
    let orphan = CreateNote { company_id: None, ..note.clone() };
    assert!(
        matches!(c.create_note(&s.key, &orphan).await, Err(ProviderError::Rejected { field: Some(f), .. }) if f == "lead_id")
    );
}

#[tokio::test]
async fn a_retried_create_after_a_lost_answer_is_reconciled_not_duplicated() {
    let s = setup(3).await;
    let lead = s.a_lead();
    for (path, kind) in [
        ("/api/v1/task/", ActionObject::Task),
        ("/api/v1/contact/", ActionObject::Contact),
        ("/api/v1/activity/call/", ActionObject::Call),
    ] {
        s.fault(json!({"method": "POST", "path": path, "action": {"type": "drop_after_commit"}, "times": 1}))
            .await;
        let marker = format!("act-lost-{kind:?}");
        let attempt = match kind {
            ActionObject::Task => s
                .client()
                .create_task(
                    &s.key,
                    &CreateTask {
                        subject: "Lost".into(),
                        body: None,
                        due_at: None,
                        contact_id: None,
                        deal_id: None,
                        company_id: Some(lead.clone()),
                        priority: None,
                        owner_id: None,
                        marker: marker.clone(),
                    },
                )
                .await
                .map(|r| r.value),
            ActionObject::Contact => s
                .client()
                .create_contact(
                    &s.key,
                    &ContactInput {
                        email: Some("lost@example.com".into()),
                        first_name: Some("Lost".into()),
                        last_name: None,
                        phone: None,
                        company_id: Some(lead.clone()),
                        title: None,
                        marker: marker.clone(),
                    },
                )
                .await
                .map(|r| r.value),
            _ => s
                .client()
                .log_call(
                    &s.key,
                    &LogCall {
                        subject: "Lost call".into(),
                        body: None,
                        direction: "outbound".into(),
                        duration_secs: 5,
                        occurred_at: chrono::Utc::now(),
                        contact_id: None,
                        deal_id: None,
                        company_id: Some(lead.clone()),
                        marker: marker.clone(),
                    },
                )
                .await
                .map(|r| r.value),
        };
        assert!(matches!(attempt, Err(ProviderError::OutcomeUnknown { .. })), "{kind:?}: {attempt:?}");
        // The executor reconciles before creating again: the first attempt is found.
        let found =
            s.client().find_by_marker(&s.key, kind, &marker).await.expect("reconcile").value.expect("found");
        let created = s.env.control.get(&format!("close/accounts/{}/created?contains={marker}", s.org)).await;
        assert_eq!(created["count"], json!(1), "{kind:?}: exactly one object");
        assert_eq!(created["objects"][0]["id"], json!(found.id));
    }
}

/// Close has no unique field for tasks, so reconciliation scans the newest tasks for the
/// marker. A busy organization creates more than one page of them between a lost attempt and
/// its retry: the scan bounded by the action's age reads on past the first page and finds it,
/// where reading only the newest 100 answered "not created" and the retry made a duplicate.
#[tokio::test]
async fn reconciliation_reads_past_the_newest_page_of_a_busy_organization() {
    let s = setup(3).await;
    let lead = s.a_lead();
    let task = |subject: String, marker: String| CreateTask {
        subject,
        body: None,
        due_at: None,
        contact_id: None,
        deal_id: None,
        company_id: Some(lead.clone()),
        priority: None,
        owner_id: None,
        marker,
    };
    s.fault(json!({"method": "POST", "path": "/api/v1/task/", "action": {"type": "drop_after_commit"}, "times": 1}))
        .await;
    let marker = "act-busy-org".to_owned();
    let lost = s.client().create_task(&s.key, &task("Lost".into(), marker.clone())).await;
    assert!(matches!(lost, Err(ProviderError::OutcomeUnknown { .. })), "{lost:?}");
    // The others come later: the lost one is not among the newest 100.
    s.env.control.advance("1m").await;
    for i in 0..150 {
        s.client()
            .create_task(&s.key, &task(format!("Busy #{i}"), format!("act-busy-{i}")))
            .await
            .expect("task");
    }
    let hour = Duration::from_secs(3600);
    let found = s
        .client()
        .find_by_marker_within(&s.key, ActionObject::Task, &marker, hour)
        .await
        .expect("reconcile")
        .value
        .expect("found past the first page");
    let created = s.env.control.get(&format!("close/accounts/{}/created?contains={marker}", s.org)).await;
    assert_eq!(created["objects"][0]["id"], json!(found.id));
    // A marker never created: the scan reaches the end of the list and answers "not created".
    let none = s.client().find_by_marker_within(&s.key, ActionObject::Task, "act-never", hour).await;
    assert!(none.expect("conclusive").value.is_none());
}

/// What a row expects.
enum Expect {
    Throttled(Option<u64>),
    Forbidden(&'static str),
    Unauthorized,
    Transient(u16),
    OutcomeUnknown,
    NotFound,
    Rejected(&'static str),
    Conflict,
}

fn check(name: &str, got: Result<(), ProviderError>, want: &Expect) {
    let err = got.expect_err(name);
    let ok = match (want, &err) {
        (
            Expect::Throttled(secs),
            ProviderError::Throttled { retry_after, scope: ThrottleScope::Burst, status: 429, .. },
        ) => secs.is_none_or(|s| *retry_after == Some(Duration::from_secs(s))),
        (Expect::Forbidden(code), ProviderError::Forbidden { code: c, .. }) => {
            code.is_empty() || c.as_deref() == Some(*code)
        }
        (Expect::Unauthorized, ProviderError::Unauthorized { .. }) => true,
        (Expect::Transient(s), ProviderError::Transient { status, .. }) => *s == 0 || *status == Some(*s),
        (Expect::OutcomeUnknown, ProviderError::OutcomeUnknown { .. }) => true,
        (Expect::NotFound, ProviderError::NotFound { .. }) => true,
        (Expect::Rejected(f), ProviderError::Rejected { field, .. }) => field.as_deref() == Some(*f),
        (Expect::Conflict, ProviderError::Conflict { .. }) => true,
        _ => false,
    };
    assert!(ok, "{name}: unexpected {err:?}");
}

#[tokio::test]
async fn sandbox_faults_map_to_the_right_error_variants() {
    let s = setup(3).await;
    let lead = s.a_lead();
    let contact = s.live(Kind::Contact).into_iter().next().expect("contact");
    let note = |marker: &str| CreateNote {
        body: "fault row".into(),
        title: None,
        contact_id: None,
        deal_id: None,
        company_id: Some(lead.clone()),
        marker: marker.into(),
    };
    let get = |a: Auth| {
        let contact = contact.clone();
        let client = CloseClient::new(Http::new().expect("http"));
        async move { client.get(&a, ObjectKind::Contact, &contact).await.map(|_| ()) }
    };
    let rule = |method: &str, path: &str, action: Value| json!({"method": method, "path": path, "action": action, "times": 1});
    let contact_path = format!("/api/v1/contact/{contact}/");

    // Burst throttle, real: a limit of 1 per second on the read group.
    s.env.control.patch(&format!("close/accounts/{}", s.org), json!({"limits": {"read": 1}})).await;
    get(s.key.clone()).await.expect("first read fits");
    check("burst throttle (RateLimit reset)", get(s.key.clone()).await, &Expect::Throttled(Some(1)));
    s.env
        .control
        .patch(&format!("close/accounts/{}", s.org), json!({"limit": 1_000_000, "reset_buckets": true}))
        .await;
    // Burst throttle with only Retry-After (a stricter endpoint).
    s.fault(rule(
        "GET",
        &contact_path,
        json!({"type": "throttle", "policy": "stricter", "retry_after_secs": 7}),
    ))
    .await;
    check("stricter throttle with Retry-After", get(s.key.clone()).await, &Expect::Throttled(Some(7)));
    // Quota exhaustion: Close has no daily quota; the plan limit (402) is the closest.
    s.fault(rule("GET", &contact_path, json!({"type": "status", "status": 402}))).await;
    check("plan limit (402)", get(s.key.clone()).await, &Expect::Forbidden("plan_limit"));
    s.env.control.patch(&format!("close/accounts/{}", s.org), json!({"record_limit": 1})).await;
    let plan = s
        .client()
        .create_contact(
            &s.key,
            &ContactInput {
                email: None,
                first_name: Some("Over".into()),
                last_name: None,
                phone: None,
                company_id: Some(lead.clone()),
                title: None,
                marker: String::new(),
            },
        )
        .await;
    check("record limit on create", plan.map(|_| ()), &Expect::Forbidden("plan_limit"));
    s.env.control.patch(&format!("close/accounts/{}", s.org), json!({"record_limit": null})).await;
    // 5xx: reads are transient, writes are outcome-unknown (except 503, which never ran).
    for (status, method, expect) in [
        (503, "GET", Expect::Transient(503)),
        (502, "GET", Expect::Transient(502)),
        (504, "GET", Expect::Transient(504)),
        (502, "POST", Expect::OutcomeUnknown),
        (504, "POST", Expect::OutcomeUnknown),
        (503, "POST", Expect::Transient(503)),
    ] {
        let path = if method == "GET" { contact_path.clone() } else { "/api/v1/activity/note/".to_owned() };
        s.fault(rule(method, &path, json!({"type": "status", "status": status}))).await;
        let got = if method == "GET" {
            get(s.key.clone()).await
        } else {
            s.client().create_note(&s.key, &note("fault-5xx")).await.map(|_| ())
        };
        check(&format!("{status} on {method}"), got, &expect);
    }
    // 404 and validation (the field is named), duplicate/conflict (injected: Close has no 409).
    let missing =
        UpdateDeal { deal_id: "oppo_missing".into(), stage: None, amount: Some(1.0), close_date: None };
    check("404", s.client().update_deal(&s.key, &missing).await.map(|_| ()), &Expect::NotFound);
    let bad = CreateNote { contact_id: Some("cont_nope".into()), ..note("bad") };
    check(
        "validation",
        s.client().create_note(&s.key, &bad).await.map(|_| ()),
        &Expect::Rejected("contact_id"),
    );
    s.fault(rule("POST", "/api/v1/activity/note/", json!({"type": "status", "status": 409}))).await;
    check("conflict", s.client().create_note(&s.key, &note("dup")).await.map(|_| ()), &Expect::Conflict);
    // Drop after commit on a create: outcome unknown, and the object exists once.
    s.fault(rule("POST", "/api/v1/activity/note/", json!({"type": "drop_after_commit"}))).await;
    check(
        "drop after commit",
        s.client().create_note(&s.key, &note("act-dropped")).await.map(|_| ()),
        &Expect::OutcomeUnknown,
    );
    let created = s
        .env
        .control
        .get(&format!("close/accounts/{}/created?object=note&contains=act-dropped", s.org))
        .await;
    assert_eq!(created["count"], json!(1));
    // Hung connections with a 1 s client timeout.
    let slow = CloseClient::new(Http::with_timeout(Duration::from_secs(1)).expect("http"));
    s.fault(rule("GET", &contact_path, json!({"type": "hang", "ms": 5000}))).await;
    check(
        "hung GET",
        slow.get(&s.key, ObjectKind::Contact, &contact).await.map(|_| ()),
        &Expect::Transient(0),
    );
    s.fault(rule("POST", "/api/v1/activity/note/", json!({"type": "hang", "ms": 5000}))).await;
    check("hung POST", slow.create_note(&s.key, &note("hung")).await.map(|_| ()), &Expect::OutcomeUnknown);
    // Expired token (OAuth), then revoked credentials (OAuth and API key).
    s.env.control.post(&format!("close/accounts/{}/expire-tokens", s.org), json!({})).await;
    check("expired token", get(s.bearer.clone()).await, &Expect::Unauthorized);
    get(s.key.clone()).await.expect("API keys do not expire");
    s.env.control.post(&format!("close/accounts/{}/revoke", s.org), json!({})).await;
    check("revoked API key", get(s.key.clone()).await, &Expect::Unauthorized);
    let fresh = s.env.control.post(&format!("close/accounts/{}/tokens", s.org), json!({})).await;
    let revoked_again = s.env.control.post(&format!("close/accounts/{}/revoke", s.org), json!({})).await;
    assert!(revoked_again["revoked"].as_u64().expect("revoked") >= 2);
    let old_bearer = auth(
        Credential::Bearer(fresh["access_token"].as_str().expect("token").to_owned().into()),
        s.key.api_base.as_str(),
    );
    check("revoked OAuth token", get(old_bearer).await, &Expect::Unauthorized);
}
