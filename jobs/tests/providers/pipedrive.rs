//! Pipedrive client against the Pipedrive imitation, over real HTTP: full and incremental syncs
//! (paging, resuming, archived and deleted records), every action read back through the control
//! plane, marker reconciliation after a lost answer, and a table test mapping each sandbox fault
//! knob to the error variant the client must return.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use crm_jobs::providers::pipedrive::PipedriveClient;
use crm_jobs::providers::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, Http, LogCall,
    ObjectKind, ProviderError, SyncCursor, SyncPage, ThrottleScope, UpdateDeal,
};
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};

use crate::support::{Control, Env};

/// A sandbox with one Pipedrive company and the credentials a connection would hold.
struct Pd {
    env: Env,
    company: String,
    api_base: String,
    api_token: String,
    access_token: String,
    marker_key: String,
}

impl Pd {
    async fn start(records: usize) -> Self {
        let env = Env::start(&[ProviderKind::Pipedrive], records).await;
        let accounts = env.control.get("pipedrive/accounts").await;
        let a = &accounts["accounts"][0];
        let s = |v: &Value| v.as_str().expect("string field").to_owned();
        let pd = Pd {
            company: s(&a["id"]),
            api_base: s(&a["credentials"]["api_domain"]),
            api_token: s(&a["credentials"]["api_token"]),
            access_token: s(&a["credentials"]["oauth"]["access_token"]),
            marker_key: s(&a["credentials"]["marker_field_key"]),
            env,
        };
        // The real numbers (40 requests per 2 s, 60,000 tokens a day) are exercised by the fault
        // table; lift them elsewhere.
        pd.quota(json!({"burst": 1_000_000, "search_burst": 1_000_000, "daily_budget": 1_000_000_000})).await;
        pd
    }

    /// Two records, the logical clock frozen at 2026-02-01 09:00 UTC (reconciliation tests move
    /// it by hand).
    async fn start_frozen() -> Self {
        let pd = Self::start(2).await;
        pd.ctl().post("clock", json!({"set": "2026-02-01T09:00:00Z", "mode": "frozen"})).await;
        pd
    }

    fn ctl(&self) -> &Control {
        &self.env.control
    }

    fn client(&self) -> &dyn CrmClient {
        self.env.clients.get(crm_jobs::providers::Provider::Pipedrive)
    }

    fn auth_with(&self, credential: Credential) -> Auth {
        Auth { credential, api_base: url::Url::parse(&self.api_base).expect("api_domain is a URL") }
    }

    /// API-token auth (`x-api-token`).
    fn auth(&self) -> Auth {
        self.auth_with(Credential::ApiTokenHeader(self.api_token.clone().into()))
    }

    /// OAuth auth (`Authorization: Bearer`).
    fn oauth(&self) -> Auth {
        self.auth_with(Credential::Bearer(self.access_token.clone().into()))
    }

    fn path(&self, tail: &str) -> String {
        format!("pipedrive/accounts/{}{tail}", self.company)
    }

    async fn quota(&self, patch: Value) {
        self.ctl().patch(&self.path(""), patch).await;
    }

    async fn record(&self, object: &str, id: &str) -> Value {
        self.ctl().get(&self.path(&format!("/objects/{object}/{id}"))).await
    }

    async fn created_with(&self, marker: &str) -> u64 {
        self.ctl().get(&self.path(&format!("/created?contains={marker}"))).await["count"]
            .as_u64()
            .expect("count")
    }

    async fn fault(&self, rule: Value) {
        self.ctl().fault("pipedrive", rule).await;
    }

    /// Waits until the first fault rule has matched `n` requests (a latency rule then holds
    /// the n-th), for at most 3 s.
    async fn wait_matched(&self, n: u64) {
        for _ in 0..300 {
            if self.ctl().get("faults").await["faults"][0]["matched"].as_u64() >= Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fault rule never matched {n} requests");
    }
}

/// Every page of a run from `cursor`, in order.
async fn run(client: &dyn CrmClient, auth: &Auth, kind: ObjectKind, cursor: SyncCursor) -> Vec<SyncPage> {
    let mut pages = Vec::new();
    let mut cursor = cursor;
    for _ in 0..1000 {
        let page = client.sync_page(auth, kind, &cursor).await.expect("sync page").value;
        cursor = page.next.clone();
        let done = !page.has_more;
        pages.push(page);
        if done {
            return pages;
        }
    }
    panic!("sync did not finish");
}

fn record_ids(pages: &[SyncPage]) -> Vec<String> {
    pages.iter().flat_map(|p| p.records.iter().map(|r| r.external_id.clone())).collect()
}

fn deleted_ids(pages: &[SyncPage]) -> Vec<String> {
    pages.iter().flat_map(|p| p.deleted.iter().map(|d| d.external_id.clone())).collect()
}

fn log_ids(log: &Value, kind: &str, object: &str) -> BTreeSet<String> {
    log[kind][object].as_array().into_iter().flatten().map(|v| v.as_str().expect("id").to_owned()).collect()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[tokio::test]
async fn full_sync_returns_every_record_exactly_once_and_resumes_after_any_page() {
    let pd = Pd::start(1_100).await;
    let counts = pd.ctl().get(&pd.path("")).await["counts"].clone();
    for (kind, object, auth) in [
        (ObjectKind::Contact, "persons", pd.auth()),
        (ObjectKind::Company, "organizations", pd.oauth()),
        (ObjectKind::Deal, "deals", pd.auth()),
    ] {
        let pages = run(pd.client(), &auth, kind, SyncCursor::full()).await;
        let ids = record_ids(&pages);
        let expected = counts[object]["live"].as_u64().expect("live")
            + counts[object]["archived"].as_u64().expect("archived");
        assert_eq!(ids.len() as u64, expected, "{object}: every record");
        assert_eq!(set(&ids).len(), ids.len(), "{object}: no record twice");
        assert!(pages.len() >= 3, "{object}: 1,100 records span several pages of 500");
        assert!(deleted_ids(&pages).is_empty(), "{object}: nothing is deleted yet");
        let last = pages.last().expect("a page");
        // The first phase (the default listing; not archived deals) sets the next lower bound.
        let max = pages
            .iter()
            .flat_map(|p| &p.records)
            .filter(|r| r.raw["is_archived"] != json!(true))
            .map(|r| r.remote_updated_at)
            .max();
        assert_eq!(last.next.since, max, "{object}: the next run starts at the highest update_time");
        assert!(last.next.at_start());
        if kind == ObjectKind::Deal {
            let archived =
                pages.iter().flat_map(|p| &p.records).filter(|r| r.raw["is_archived"] == json!(true)).count();
            assert_eq!(
                archived as u64,
                counts["deals"]["archived"].as_u64().expect("archived"),
                "archived deals are included"
            );
        }
        // A crash after page k resumes from the stored cursor: the rest comes exactly once.
        for k in 0..pages.len() - 1 {
            let resumed = run(pd.client(), &auth, kind, pages[k].next.clone()).await;
            assert_eq!(record_ids(&resumed), record_ids(&pages[k + 1..]), "{object}: resume after page {k}");
        }
    }
    // One list request per page, nothing else.
    let c = pd.ctl().get(&pd.path("/counters")).await;
    assert!(c["by_operation"].get("recents.list").is_none(), "a full sync reads no recents");
}

#[tokio::test]
async fn incremental_sync_returns_exactly_the_changes_of_a_mutation_batch() {
    let pd = Pd::start(120).await;
    let auth = pd.auth();
    let mut cursors = Vec::new();
    for kind in ObjectKind::ALL {
        let pages = run(pd.client(), &auth, kind, SyncCursor::full()).await;
        cursors.push(pages.last().expect("page").next.clone());
    }
    pd.env.control.advance("1h").await;
    let log = pd
        .ctl()
        .post(
            &pd.path("/mutations"),
            json!({"seed": 7, "creates": 9, "updates": 30, "deletes": 9, "objects": ["persons", "organizations", "deals"]}),
        )
        .await;
    for (i, (kind, object)) in [
        (ObjectKind::Contact, "persons"),
        (ObjectKind::Company, "organizations"),
        (ObjectKind::Deal, "deals"),
    ]
    .into_iter()
    .enumerate()
    {
        let (created, updated, deleted) = (
            log_ids(&log, "created", object),
            log_ids(&log, "updated", object),
            log_ids(&log, "deleted", object),
        );
        let pages = run(pd.client(), &auth, kind, cursors[i].clone()).await;
        let ids = record_ids(&pages);
        let expected: BTreeSet<String> =
            created.union(&updated).filter(|id| !deleted.contains(*id)).cloned().collect();
        assert_eq!(set(&ids), expected, "{object}: exactly the created and updated records that still exist");
        assert_eq!(ids.len(), expected.len(), "{object}: each once");
        let gone = deleted_ids(&pages);
        assert_eq!(set(&gone), deleted, "{object}: exactly the deletions");
        assert_eq!(gone.len(), deleted.len());
        for d in pages.iter().flat_map(|p| &p.deleted) {
            assert_eq!(
                d.deleted_at,
                Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).single(),
                "{object}: deletion time"
            );
        }
        // Nothing changed since: the next run returns nothing (boundary re-reads are dropped).
        let final_cursor = pages.last().expect("page").next.clone();
        assert_eq!(final_cursor.since, Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).single());
        let again = run(pd.client(), &auth, kind, final_cursor.clone()).await;
        assert!(record_ids(&again).is_empty(), "{object}: {:?}", record_ids(&again));
        assert!(deleted_ids(&again).is_empty(), "{object}: {:?}", deleted_ids(&again));
        cursors[i] = again.last().expect("page").next.clone();
    }
    // A change at the very second of the lower bound is still seen, with its new content.
    let person = log_ids(&log, "updated", "persons")
        .into_iter()
        .find(|id| !log_ids(&log, "deleted", "persons").contains(id))
        .expect("a live updated person");
    pd.ctl().patch(&pd.path(&format!("/objects/persons/{person}")), json!({"name": "Same Second"})).await;
    let pages = run(pd.client(), &auth, ObjectKind::Contact, cursors[0].clone()).await;
    let recs: Vec<_> = pages.iter().flat_map(|p| &p.records).collect();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].external_id, person);
    assert_eq!(recs[0].name.as_deref(), Some("Same Second"));
}

#[tokio::test]
async fn every_action_works_and_lands_in_the_sandbox() {
    let pd = Pd::start(5).await;
    let auth = pd.oauth();
    let c = pd.client();
    let org = pd.ctl().get(&pd.path("/objects/organizations/1")).await["id"].to_string();
    // create_contact
    let created = c
        .create_contact(
            &auth,
            &ContactInput {
                email: Some("jane.doe@example.org".into()),
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                phone: Some("+358 40 1234567".into()),
                company_id: Some(org.clone()),
                title: Some("CTO".into()),
                marker: "act-contact-1".into(),
            },
        )
        .await
        .expect("create_contact");
    assert!(created.value.created);
    assert!(created.quota.as_ref().is_some_and(|q| q.daily_remaining.is_some()), "quota headers are parsed");
    let pid = created.value.id.clone();
    let p = pd.record("persons", &pid).await;
    assert_eq!(p["name"], json!("Jane Doe"));
    assert_eq!(p["emails"], json!([{"value": "jane.doe@example.org", "primary": true, "label": "work"}]));
    assert_eq!(p["org_id"].to_string(), org);
    assert_eq!(
        p["custom_field_values"].as_object().expect("custom").values().next(),
        Some(&json!("act-contact-1"))
    );
    // update_contact
    let updated = c
        .update_contact(
            &auth,
            &pid,
            &ContactInput {
                email: None,
                first_name: None,
                last_name: None,
                phone: Some("+1 555 0100".into()),
                company_id: None,
                title: None,
                marker: String::new(),
            },
        )
        .await
        .expect("update_contact");
    assert!(!updated.value.created);
    let p = pd.record("persons", &pid).await;
    assert_eq!(p["phones"], json!([{"value": "+1 555 0100", "primary": true, "label": "work"}]));
    assert_eq!(p["name"], json!("Jane Doe"), "fields not given stay");
    // search_contact_by_email, get
    let found =
        c.search_contact_by_email(&auth, "JANE.DOE@example.org").await.expect("search").value.expect("found");
    assert_eq!(found.external_id, pid);
    assert_eq!(found.email.as_deref(), Some("jane.doe@example.org"));
    assert!(c.search_contact_by_email(&auth, "nobody@example.org").await.expect("search").value.is_none());
    let got = c.get(&auth, ObjectKind::Contact, &pid).await.expect("get").value.expect("exists");
    assert_eq!((got.first_name.as_deref(), got.last_name.as_deref()), (Some("Jane"), Some("Doe")));
    assert_eq!(got.phone.as_deref(), Some("+1 555 0100"));
    assert!(c.get(&auth, ObjectKind::Deal, "999999").await.expect("get").value.is_none());
    // create_task
    let deal = "1".to_owned();
    let task = c
        .create_task(
            &auth,
            &CreateTask {
                subject: "Send the proposal".into(),
                body: Some("Pricing for 20 seats".into()),
                due_at: Utc.with_ymd_and_hms(2026, 1, 20, 14, 30, 0).single(),
                contact_id: Some(pid.clone()),
                deal_id: Some(deal.clone()),
                company_id: None,
                priority: Some("high".into()),
                owner_id: None,
                marker: "act-task-1".into(),
            },
        )
        .await
        .expect("create_task");
    let t = pd.record("activities", &task.value.id).await;
    assert_eq!(
        (
            t["type"].clone(),
            t["subject"].clone(),
            t["done"].clone(),
            t["due_date"].clone(),
            t["due_time"].clone()
        ),
        (json!("task"), json!("Send the proposal"), json!(false), json!("2026-01-20"), json!("14:30"))
    );
    assert_eq!(t["participants"], json!([{"person_id": pid.parse::<u64>().expect("id"), "primary": true}]));
    assert_eq!(t["deal_id"], json!(1));
    assert_eq!(t["note"], json!("Pricing for 20 seats"));
    // log_call
    let call = c
        .log_call(
            &auth,
            &LogCall {
                subject: "Discovery call".into(),
                body: Some("<p>Went well</p>".into()),
                direction: "outbound".into(),
                duration_secs: 301,
                occurred_at: Utc.with_ymd_and_hms(2026, 1, 5, 8, 15, 0).single().expect("time"),
                contact_id: Some(pid.clone()),
                deal_id: None,
                company_id: Some(org.clone()),
                marker: "act-call-1".into(),
            },
        )
        .await
        .expect("log_call");
    let l = pd.record("activities", &call.value.id).await;
    assert_eq!(
        (l["type"].clone(), l["done"].clone(), l["duration"].clone(), l["due_time"].clone()),
        (json!("call"), json!(true), json!("00:06"), json!("08:15"))
    );
    assert_eq!(l["org_id"].to_string(), org);
    // create_note
    let note = c
        .create_note(
            &auth,
            &CreateNote {
                body: "<p>Met at the fair</p>".into(),
                title: None,
                contact_id: Some(pid.clone()),
                deal_id: Some(deal.clone()),
                company_id: None,
                marker: "act-note-1".into(),
            },
        )
        .await
        .expect("create_note");
    let n = pd.record("notes", &note.value.id).await;
    assert_eq!(n["content"], json!("<p>Met at the fair</p>"));
    assert_eq!(n["person_id"].to_string(), pid);
    assert_eq!(
        n["custom_field_values"].as_object().expect("custom").values().next(),
        Some(&json!("act-note-1"))
    );
    // update_deal
    c.update_deal(
        &auth,
        &UpdateDeal {
            deal_id: deal.clone(),
            stage: Some("7".into()),
            amount: Some(12_345.5),
            close_date: NaiveDate::from_ymd_opt(2026, 3, 31),
        },
    )
    .await
    .expect("update_deal");
    let d = pd.record("deals", &deal).await;
    assert_eq!((d["stage_id"].clone(), d["pipeline_id"].clone()), (json!(7), json!(2)));
    assert_eq!(
        (d["value"].clone(), d["expected_close_date"].clone()),
        (json!(12_345.5), json!("2026-03-31"))
    );
    // find_by_marker finds each created object; unknown markers find nothing.
    for (kind, marker, id) in [
        (ActionObject::Contact, "act-contact-1", &pid),
        (ActionObject::Task, "act-task-1", &task.value.id),
        (ActionObject::Call, "act-call-1", &call.value.id),
        (ActionObject::Note, "act-note-1", &note.value.id),
    ] {
        let f = c.find_by_marker(&auth, kind, marker).await.expect("find_by_marker").value;
        assert_eq!(f.map(|r| (r.id, r.created)), Some((id.clone(), false)), "{kind:?}");
        assert!(c.find_by_marker(&auth, kind, "act-missing").await.expect("find").value.is_none());
    }
    // Exactly one object per marker.
    for m in ["act-contact-1", "act-task-1", "act-call-1", "act-note-1"] {
        assert_eq!(pd.created_with(m).await, 1, "{m}");
    }
    // The marker field is looked up once per entity and connection, then cached.
    let counters = pd.ctl().get(&pd.path("/counters")).await;
    for op in ["personFields.list", "activityFields.list", "noteFields.list"] {
        assert_eq!(counters["by_operation"][op], json!(1), "{op}");
    }
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_found_by_its_marker_not_duplicated() {
    let pd = Pd::start(3).await;
    let auth = pd.auth();
    let c = pd.client();
    for (path, kind, marker) in [
        ("/api/v2/activities", ActionObject::Task, "act-lost-task"),
        ("/api/v2/persons", ActionObject::Contact, "act-lost-contact"),
        ("/v1/notes", ActionObject::Note, "act-lost-note"),
    ] {
        pd.fault(
            json!({"method": "POST", "path": path, "action": {"type": "drop_after_commit"}, "times": 1}),
        )
        .await;
        let err = match kind {
            ActionObject::Task => c
                .create_task(
                    &auth,
                    &CreateTask {
                        subject: "Follow up".into(),
                        body: None,
                        due_at: None,
                        contact_id: None,
                        deal_id: Some("1".into()),
                        company_id: None,
                        priority: None,
                        owner_id: None,
                        marker: marker.into(),
                    },
                )
                .await
                .expect_err("the answer is lost"),
            ActionObject::Contact => c
                .create_contact(
                    &auth,
                    &ContactInput {
                        email: Some("lost@example.org".into()),
                        first_name: Some("Lost".into()),
                        last_name: None,
                        phone: None,
                        company_id: None,
                        title: None,
                        marker: marker.into(),
                    },
                )
                .await
                .expect_err("the answer is lost"),
            _ => c
                .create_note(&auth, &crate::support::deal_note("hello", "1", marker))
                .await
                .expect_err("the answer is lost"),
        };
        assert!(matches!(err, ProviderError::OutcomeUnknown { .. }), "{kind:?}: {err:?}");
        // Reconciliation finds the committed object, so the executor adopts it instead of
        // creating again.
        let found = c.find_by_marker(&auth, kind, marker).await.expect("find").value.expect("committed");
        assert!(!found.created);
        assert_eq!(pd.created_with(marker).await, 1, "{kind:?}: exists exactly once");
    }
}

#[tokio::test]
async fn a_remembered_marker_field_skips_the_lookup() {
    let pd = Pd::start(2).await;
    let client = PipedriveClient::new(Http::new().expect("http"));
    let auth = pd.auth();
    client.remember_marker_field(&auth, &pd.marker_key);
    let task = CreateTask {
        subject: "Remembered".into(),
        body: None,
        due_at: None,
        contact_id: None,
        deal_id: Some("1".into()),
        company_id: None,
        priority: None,
        owner_id: None,
        marker: "act-remembered".into(),
    };
    let created = client.create_task(&auth, &task).await.expect("create_task");
    let t = pd.record("activities", &created.value.id).await;
    assert_eq!(t["custom_field_values"][&pd.marker_key], json!("act-remembered"));
    let c = pd.ctl().get(&pd.path("/counters")).await;
    assert!(c["by_operation"].get("activityFields.list").is_none(), "no lookup: {c}");
    assert_eq!(c["requests"], json!(1), "one request per call");
}

/// What a fault-table row calls.
#[derive(Clone, Copy, Debug)]
enum Call {
    SyncContacts,
    SyncDealsOAuth,
    GetDeal,
    CreateTask,
    CreateContactBadEmail,
    UpdateDealMissing,
    UpdateDealBadStage,
    Search,
}

async fn call(pd: &Pd, client: &PipedriveClient, c: Call) -> Result<(), ProviderError> {
    let auth = pd.auth();
    match c {
        Call::SyncContacts => {
            client.sync_page(&auth, ObjectKind::Contact, &SyncCursor::full()).await.map(|_| ())
        }
        Call::SyncDealsOAuth => {
            client.sync_page(&pd.oauth(), ObjectKind::Deal, &SyncCursor::full()).await.map(|_| ())
        }
        Call::GetDeal => client.get(&auth, ObjectKind::Deal, "1").await.map(|_| ()),
        Call::CreateTask => client
            .create_task(
                &auth,
                &CreateTask {
                    subject: "Table task".into(),
                    body: None,
                    due_at: None,
                    contact_id: None,
                    deal_id: Some("1".into()),
                    company_id: None,
                    priority: None,
                    owner_id: None,
                    marker: format!("act-table-{}", Utc::now().timestamp_nanos_opt().unwrap_or_default()),
                },
            )
            .await
            .map(|_| ()),
        Call::CreateContactBadEmail => client
            .create_contact(
                &auth,
                &ContactInput {
                    email: Some("not-an-email".into()),
                    first_name: Some("X".into()),
                    last_name: None,
                    phone: None,
                    company_id: None,
                    title: None,
                    marker: String::new(),
                },
            )
            .await
            .map(|_| ()),
        Call::UpdateDealMissing => client
            .update_deal(
                &auth,
                &UpdateDeal { deal_id: "999999".into(), stage: None, amount: Some(1.0), close_date: None },
            )
            .await
            .map(|_| ()),
        Call::UpdateDealBadStage => client
            .update_deal(
                &auth,
                &UpdateDeal { deal_id: "1".into(), stage: Some("99".into()), amount: None, close_date: None },
            )
            .await
            .map(|_| ()),
        Call::Search => client.search_contact_by_email(&auth, "someone@example.org").await.map(|_| ()),
    }
}

type Check = fn(&ProviderError) -> bool;

/// One row of the fault table: name, fault rule, quota patch, call, expected error.
type Row = (&'static str, Option<Value>, Option<Value>, Call, Check);

#[tokio::test]
async fn fault_table_maps_each_sandbox_knob_to_the_right_error() {
    let pd = Pd::start(3).await;
    // A short timeout so a hung connection shows up in a second.
    let client = PipedriveClient::new(Http::with_timeout(Duration::from_secs(1)).expect("http"));
    let rows: Vec<Row> = vec![
        (
            "burst throttle with Retry-After",
            Some(
                json!({"path": "/api/v2/persons", "action": {"type": "throttle", "retry_after_secs": 7}, "times": 1}),
            ),
            None,
            Call::SyncContacts,
            |e| matches!(e, ProviderError::Throttled { scope: ThrottleScope::Burst, retry_after: Some(d), status: 429, .. } if *d == Duration::from_secs(7)),
        ),
        (
            "burst quota exhausted (x-ratelimit-reset)",
            None,
            Some(json!({"api_token_burst": 0, "reset_windows": true})),
            Call::GetDeal,
            |e| matches!(e, ProviderError::Throttled { scope: ThrottleScope::Burst, retry_after: Some(d), .. } if *d == Duration::from_secs(2)),
        ),
        (
            "daily token budget exhausted",
            None,
            Some(json!({"api_token_burst": 1_000_000, "daily_budget": 100, "daily_used": 100})),
            Call::GetDeal,
            |e| {
                matches!(
                    e,
                    ProviderError::Throttled {
                        scope: ThrottleScope::Daily,
                        retry_after: Some(_),
                        status: 429,
                        ..
                    }
                )
            },
        ),
        (
            "daily exhaustion injected",
            Some(
                json!({"path": "/api/v2/deals/*", "action": {"type": "throttle", "policy": "daily"}, "times": 1}),
            ),
            Some(json!({"daily_budget": 1_000_000_000, "daily_used": 0})),
            Call::GetDeal,
            |e| matches!(e, ProviderError::Throttled { scope: ThrottleScope::Daily, .. }),
        ),
        ("search limit", None, Some(json!({"search_burst": 0, "reset_windows": true})), Call::Search, |e| {
            matches!(e, ProviderError::Throttled { scope: ThrottleScope::Search, .. })
        }),
        (
            "Cloudflare abuse page (403 HTML): stop hammering",
            Some(
                json!({"path": "/api/v2/deals/*", "action": {"type": "status", "status": 403, "kind": "abuse"}, "times": 1}),
            ),
            Some(json!({"search_burst": 1_000_000})),
            Call::GetDeal,
            |e| matches!(e, ProviderError::Throttled { status: 403, retry_after: Some(d), .. } if *d >= Duration::from_secs(600)),
        ),
        (
            "OAuth scope mismatch (403 JSON)",
            Some(json!({"path": "/api/v2/deals/*", "action": {"type": "status", "status": 403}, "times": 1})),
            None,
            Call::GetDeal,
            |e| matches!(e, ProviderError::Forbidden { code: Some(c), .. } if c == "scope_mismatch"),
        ),
        (
            "5xx outage",
            Some(json!({"path": "/api/v2/persons", "action": {"type": "status", "status": 503}, "times": 1})),
            None,
            Call::SyncContacts,
            |e| matches!(e, ProviderError::Transient { status: Some(503), .. }),
        ),
        (
            "502 HTML gateway page",
            Some(json!({"path": "/api/v2/deals/*", "action": {"type": "status", "status": 502}, "times": 1})),
            None,
            Call::GetDeal,
            |e| matches!(e, ProviderError::Transient { status: Some(502), .. }),
        ),
        ("404 on update", None, None, Call::UpdateDealMissing, |e| {
            matches!(e, ProviderError::NotFound { .. })
        }),
        (
            "validation error names the field (email)",
            None,
            None,
            Call::CreateContactBadEmail,
            |e| matches!(e, ProviderError::Rejected { field: Some(f), status: 400, .. } if f == "emails"),
        ),
        (
            "validation error names the field (stage)",
            None,
            None,
            Call::UpdateDealBadStage,
            |e| matches!(e, ProviderError::Rejected { field: Some(f), status: 400, .. } if f == "stage_id"),
        ),
        (
            "conflict",
            Some(
                json!({"method": "POST", "path": "/api/v2/activities", "action": {"type": "status", "status": 409}, "times": 1}),
            ),
            None,
            Call::CreateTask,
            |e| matches!(e, ProviderError::Conflict { .. }),
        ),
        (
            "410 gone",
            Some(json!({"path": "/api/v2/deals/*", "action": {"type": "status", "status": 410}, "times": 1})),
            None,
            Call::GetDeal,
            |e| matches!(e, ProviderError::Rejected { status: 410, .. }),
        ),
        (
            "drop after commit on a create",
            Some(
                json!({"method": "POST", "path": "/api/v2/activities", "action": {"type": "drop_after_commit"}, "times": 1}),
            ),
            None,
            Call::CreateTask,
            |e| matches!(e, ProviderError::OutcomeUnknown { .. }),
        ),
        (
            "hung connection on a GET",
            Some(
                json!({"method": "GET", "path": "/api/v2/deals/*", "action": {"type": "hang", "ms": 3000}, "times": 1}),
            ),
            None,
            Call::GetDeal,
            |e| matches!(e, ProviderError::Transient { status: None, .. }),
        ),
        (
            "hung connection on a POST",
            Some(
                json!({"method": "POST", "path": "/api/v2/activities", "action": {"type": "hang", "ms": 3000}, "times": 1}),
            ),
            None,
            Call::CreateTask,
            |e| matches!(e, ProviderError::OutcomeUnknown { .. }),
        ),
        (
            "dropped connection on a GET",
            Some(json!({"method": "GET", "path": "/api/v2/deals/*", "action": {"type": "drop"}, "times": 1})),
            None,
            Call::GetDeal,
            |e| matches!(e, ProviderError::Transient { .. }),
        ),
    ];
    for (name, fault, quota, c, check) in rows {
        if let Some(q) = quota {
            pd.quota(q).await;
        }
        if let Some(f) = fault {
            pd.fault(f).await;
        }
        let err = call(&pd, &client, c).await.expect_err(name);
        assert!(check(&err), "{name}: got {err:?}");
        pd.ctl().clear_faults().await;
        // Without the fault (and with room in the quotas) the same call works again, except the
        // rows whose request itself is invalid.
        if !matches!(c, Call::CreateContactBadEmail | Call::UpdateDealMissing | Call::UpdateDealBadStage)
            && !name.starts_with("daily token")
            && !name.starts_with("burst quota")
            && name != "search limit"
        {
            call(&pd, &client, c).await.unwrap_or_else(|e| panic!("{name}: the call works again: {e:?}"));
        }
    }
    // Expired and revoked credentials.
    pd.quota(json!({"search_burst": 1_000_000, "api_token_burst": 1_000_000, "daily_budget": 1_000_000_000, "daily_used": 0})).await;
    call(&pd, &client, Call::SyncDealsOAuth).await.expect("OAuth works");
    pd.ctl().post(&pd.path("/expire-tokens"), json!({})).await;
    let err = call(&pd, &client, Call::SyncDealsOAuth).await.expect_err("expired");
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "expired token: {err:?}");
    call(&pd, &client, Call::GetDeal).await.expect("the API token still works");
    pd.ctl().post(&pd.path("/revoke"), json!({})).await;
    let err = call(&pd, &client, Call::GetDeal).await.expect_err("revoked");
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "revoked credentials: {err:?}");
    // Tasks committed by the table: the retry after the 409, the dropped-after-commit create and
    // its retry, the retry after the hang (a hung request is never served).
    assert_eq!(pd.created_with("act-table-").await, 4);
}

/// Reconciliation is bounded by the action's age, read against Pipedrive's own timestamps, and
/// never takes a hidden object for an absent one. The sandbox's clock is set months behind ours
/// (as a real provider's never is; the fleet tests' frozen sandbox clock is): a bound that
/// compared our clock with Pipedrive's would stop at the first page and say "not found".
/// 5,500 activities and notes updated a day after a marked task and note hide them from the
/// scan of the newest 5,000, which says "not found" (a second create would follow); the
/// age-bounded scan cannot reach back to the action either and says "outcome unknown" instead.
/// Objects older than an action's age end its scan, so a recent action's "not found" is quick.
#[tokio::test]
async fn reconciliation_never_takes_a_hidden_object_for_an_absent_one() {
    let pd = Pd::start_frozen().await;
    let c = pd.client();
    let auth = pd.auth();
    let task = crate::support::task("Call back", "act-buried");
    let id = c.create_task(&auth, &task).await.expect("create_task").value.id;
    let note = crate::support::deal_note("Buried", "1", "act-buried-note");
    let note_id = c.create_note(&auth, &note).await.expect("create_note").value.id;
    let recent = Duration::from_secs(5);
    let objects =
        [(ActionObject::Task, "act-buried", &id), (ActionObject::Note, "act-buried-note", &note_id)];
    for (kind, marker, id) in objects {
        let found = c.find_by_marker_within(&auth, kind, marker, recent).await.expect("scan").value;
        assert_eq!(found.map(|f| f.id).as_ref(), Some(id), "{kind:?}: a recent action's object is found");
    }
    pd.env.control.advance("1d").await;
    for object in ["activities", "notes"] {
        pd.ctl()
            .post(&pd.path("/mutations"), json!({"seed": 3, "creates": 5_500, "objects": [object]}))
            .await;
    }
    let two_days = Duration::from_secs(2 * 24 * 3600);
    for (kind, marker, _) in objects {
        let unbounded = c.find_by_marker(&auth, kind, marker).await.expect("scan").value;
        assert_eq!(unbounded, None, "{kind:?}: the newest 5,000 hide it (the hazard)");
        let bounded = c.find_by_marker_within(&auth, kind, marker, two_days).await;
        assert!(
            matches!(bounded, Err(ProviderError::OutcomeUnknown { .. })),
            "{kind:?}: a scan that cannot reach the action's creation does not say \"not found\": {bounded:?}"
        );
    }
    // A day later still, a few newer activities; a recent action's marker that was never used:
    // the objects older than its age end the scan at the first page.
    pd.env.control.advance("1d").await;
    pd.ctl().post(&pd.path("/mutations"), json!({"seed": 4, "creates": 10, "objects": ["activities"]})).await;
    let none =
        c.find_by_marker_within(&auth, ActionObject::Task, "act-never", recent).await.expect("scan").value;
    assert_eq!(none, None);
}

/// A marked activity or note updated while a reconciliation scan runs moves to the front of
/// the listing, behind the scan (activities page by keyset cursor, notes by offset): the scan
/// reads the front again before it answers "not found". The scan's second page is held back
/// by a latency fault until the object has been updated, so the race is made to happen.
#[tokio::test]
async fn an_object_updated_while_the_scan_runs_is_still_found() {
    let pd = Pd::start_frozen().await;
    let c = pd.client();
    let auth = pd.auth();
    let task =
        c.create_task(&auth, &crate::support::task("Moves", "act-moving")).await.expect("task").value.id;
    let note = crate::support::deal_note("Moves", "1", "act-moving-note");
    let note = c.create_note(&auth, &note).await.expect("note").value.id;
    pd.env.control.advance("1m").await;
    for object in ["activities", "notes"] {
        pd.ctl()
            .post(&pd.path("/mutations"), json!({"seed": 5, "creates": 1_200, "objects": [object]}))
            .await;
    }
    let http = reqwest::Client::new();
    let cases = [
        (ActionObject::Task, "act-moving", &task, "/api/v2/activities", "PATCH", json!({"subject": "Moved"})),
        (ActionObject::Note, "act-moving-note", &note, "/v1/notes", "PUT", json!({"content": "Moved"})),
    ];
    for (kind, marker, id, list, method, change) in cases {
        pd.ctl().clear_faults().await;
        pd.fault(json!({"method": "GET", "path": list, "after": 1, "times": 1, "action": {"type": "latency", "ms": 3000}}))
            .await;
        let scan = c.find_by_marker_within(&auth, kind, marker, Duration::from_secs(3600));
        let update = async {
            // Once the second page is held, the object is updated: it moves to the front.
            pd.wait_matched(2).await;
            pd.env.control.advance("1m").await;
            let url = format!("{}{list}/{id}", pd.api_base);
            let resp = http
                .request(method.parse().expect("method"), url)
                .header("x-api-token", &pd.api_token)
                .json(&change)
                .send()
                .await
                .expect("update");
            let status = resp.status();
            assert!(
                status.is_success(),
                "{kind:?}: update: {status} {}",
                resp.text().await.unwrap_or_default()
            );
        };
        let (found, ()) = tokio::join!(scan, update);
        assert_eq!(
            found.expect("scan").value.map(|f| f.id).as_ref(),
            Some(id),
            "{kind:?}: found after it moved"
        );
    }
}

/// Notes page by offset: a note deleted behind the scan shifts the unread ones forward by one,
/// so without overlapping pages the note at the next page's first place is skipped. Here the
/// marked note is the 1,501st newest, the scan's fourth page is held back while a note of the
/// first page is deleted, and the front re-read stops after two pages (older notes there).
#[tokio::test]
async fn a_note_deleted_behind_the_scan_does_not_hide_the_next_one() {
    let pd = Pd::start_frozen().await;
    let c = pd.client();
    let auth = pd.auth();
    let note = crate::support::deal_note("At a boundary", "1", "act-boundary");
    let id = c.create_note(&auth, &note).await.expect("note").value.id;
    for seed in 6..9 {
        pd.env.control.advance("1m").await;
        pd.ctl()
            .post(&pd.path("/mutations"), json!({"seed": seed, "creates": 500, "objects": ["notes"]}))
            .await;
    }
    let http = reqwest::Client::new();
    let newest: Value = http
        .get(format!("{}/v1/notes?start=0&limit=1&sort=update_time%20DESC", pd.api_base))
        .header("x-api-token", &pd.api_token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let victim = newest["data"][0]["id"].as_u64().expect("newest note");
    pd.fault(json!({"method": "GET", "path": "/v1/notes", "after": 3, "times": 1, "action": {"type": "latency", "ms": 3000}}))
        .await;
    let scan = c.find_by_marker_within(&auth, ActionObject::Note, "act-boundary", Duration::from_secs(3600));
    let delete = async {
        pd.wait_matched(4).await;
        let resp = http
            .delete(format!("{}/v1/notes/{victim}", pd.api_base))
            .header("x-api-token", &pd.api_token)
            .send()
            .await
            .expect("delete");
        assert!(resp.status().is_success(), "delete: {}", resp.status());
    };
    let (found, ()) = tokio::join!(scan, delete);
    assert_eq!(found.expect("scan").value.map(|f| f.id), Some(id), "the note at the boundary is found");
}

/// The action executor over a Pipedrive imitation: a database, a job context on its own Redis
/// prefix (purged on drop) and an API-token connection.
struct Exec {
    db: crm_jobs::testing::TestDb,
    ctx: crm_jobs::ops::JobContext,
    prefix: String,
    connection: uuid::Uuid,
}

impl Drop for Exec {
    fn drop(&mut self) {
        crm_jobs::testing::purge_redis_prefix(&self.prefix);
    }
}

impl Exec {
    async fn start(pd: &Pd) -> Self {
        use std::sync::Arc;

        use crm_jobs::auth::{AuthKind, Keyring, Store};
        use secrecy::SecretString;

        let db = crm_jobs::testing::TestDb::new().await;
        let store = Store::new(
            db.pool.clone(),
            Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key")),
        );
        store.ensure_tenant("acme", "Acme").await.expect("tenant");
        let connection = store
            .save_key(
                "acme",
                crm_jobs::providers::Provider::Pipedrive,
                AuthKind::ApiKey,
                &SecretString::from(pd.api_token.clone()),
                &pd.api_base,
                &pd.company,
            )
            .await
            .expect("connection")
            .id;
        let (ctx, prefix) = crate::support::job_context(store, &pd.env.clients).await;
        Self { db, ctx, prefix, connection }
    }

    async fn new_action(&self, key: &str, action: &str, params: Value) -> uuid::Uuid {
        use crm_jobs::actions::{Created, NewAction, parse, store};
        let action = NewAction {
            tenant: "acme".into(),
            connection: self.connection,
            provider: "pipedrive".into(),
            action: parse(action, &params).expect("valid"),
            idempotency_key: key.into(),
            traceparent: None,
        };
        let Created::New(row) = store::create(&self.db.pool, &action).await.expect("create") else {
            panic!("expected a new action")
        };
        row.id
    }

    async fn run(&self, id: uuid::Uuid, attempt: u32) -> Result<(), crm_queue::JobError> {
        crm_jobs::actions::exec::run(&self.ctx, id, attempt, 10).await
    }
}

/// The executor's side of an inconclusive reconciliation: a task whose create answer was lost,
/// then buried under 5,500 newer activities, is neither created again nor retried into the
/// same scan: the job fails for good (`reconcile_inconclusive`, dead-lettered for an operator),
/// and Pipedrive holds exactly one task with its marker.
#[tokio::test]
async fn an_inconclusive_reconciliation_fails_the_action_instead_of_creating_it_twice() {
    let pd = Pd::start_frozen().await;
    let x = Exec::start(&pd).await;
    let id = x.new_action("k-buried", "create_task", json!({"subject": "Lost answer"})).await;
    pd.fault(json!({"method": "POST", "path": "/api/v2/activities", "action": {"type": "drop_after_commit"}, "times": 1}))
        .await;
    let err = x.run(id, 1).await.expect_err("answer lost");
    assert_eq!(err.class, "outcome_unknown");
    assert_eq!(pd.created_with(&id.to_string()).await, 1, "the lost create landed");
    pd.env.control.advance("1d").await;
    pd.ctl()
        .post(&pd.path("/mutations"), json!({"seed": 5, "creates": 5_500, "objects": ["activities"]}))
        .await;
    let err = x.run(id, 2).await.expect_err("cannot tell");
    assert_eq!(
        (err.kind.clone(), err.class.as_str()),
        (crm_queue::FailureKind::Permanent, "reconcile_inconclusive"),
        "{err:?}"
    );
    assert_eq!(pd.created_with(&id.to_string()).await, 1, "not created a second time");
}

/// `persons/search` lags behind writes: a person whose create answer was lost can be missing
/// from it for a while. The next attempt does not take that "not found" as conclusive while
/// the person may be that young: it waits (no attempt spent) and looks again, and then finds
/// the person instead of creating a second one.
#[tokio::test]
async fn a_person_missing_from_a_lagging_search_is_looked_for_again_not_created_twice() {
    let pd = Pd::start_frozen().await;
    pd.ctl().patch("pipedrive/settings", json!({"search_index_lag_ms": 30_000})).await;
    let x = Exec::start(&pd).await;
    let id = x
        .new_action("k-person", "create_contact", json!({"email": "lag@example.com", "first_name": "Lag"}))
        .await;
    pd.fault(json!({"method": "POST", "path": "/api/v2/persons", "action": {"type": "drop_after_commit"}, "times": 1}))
        .await;
    let err = x.run(id, 1).await.expect_err("answer lost");
    assert_eq!(err.class, "outcome_unknown");
    assert_eq!(pd.created_with(&id.to_string()).await, 1, "the lost create landed");
    let err = x.run(id, 2).await.expect_err("not conclusive yet");
    assert_eq!(err.class, "reconcile_settling", "{err:?}");
    assert!(matches!(err.kind, crm_queue::FailureKind::Defer(_)), "{err:?}");
    assert_eq!(pd.created_with(&id.to_string()).await, 1, "not created a second time");
    // Time passes: the search index catches up, and the attempt is older than the lag.
    pd.env.control.advance("2m").await;
    sqlx::query(
        "UPDATE actions SET intent_at = intent_at - interval '2 minutes', \
           updated_at = updated_at - interval '2 minutes' WHERE id = $1",
    )
    .bind(id)
    .execute(&x.db.pool)
    .await
    .expect("age");
    x.run(id, 3).await.expect("found and adopted");
    let (state, reconciled): (String, bool) =
        sqlx::query_as("SELECT state, reconciled FROM actions WHERE id = $1")
            .bind(id)
            .fetch_one(&x.db.pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), reconciled), ("succeeded", true));
    assert_eq!(pd.created_with(&id.to_string()).await, 1, "exactly one person");
}

/// A task whose activity type someone changed after it was created (here to "meeting") is
/// still the one its action created: reconciliation matches the marker alone, so the action
/// adopts it instead of creating a second task.
#[tokio::test]
async fn a_marked_task_whose_type_was_changed_is_still_found() {
    let pd = Pd::start(2).await;
    let c = pd.client();
    let auth = pd.auth();
    let task = crate::support::task("Call back", "act-retyped");
    let id = c.create_task(&auth, &task).await.expect("create_task").value.id;
    let resp = reqwest::Client::new()
        .patch(format!("{}/api/v2/activities/{id}", pd.api_base.trim_end_matches('/')))
        .header("x-api-token", &pd.api_token)
        .json(&json!({"type": "meeting"}))
        .send()
        .await
        .expect("patch");
    assert!(resp.status().is_success(), "retyped: {}", resp.status());
    assert_eq!(pd.record("activities", &id).await["type"], "meeting");
    let found = c
        .find_by_marker_within(&auth, ActionObject::Task, "act-retyped", Duration::from_secs(5))
        .await
        .expect("scan")
        .value;
    assert_eq!(found.map(|f| f.id), Some(id));
}
