//! Zoho CRM client against the Zoho imitation over real HTTP: full and incremental syncs (pages,
//! resumption, mid-scan changes, more than 2,000 changes in one second), every action read back
//! through the control plane, marker reconciliation, and a table of fault knobs → error variants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::Env;
use chrono::{TimeZone, Utc};
use crm_jobs::providers::zoho::ZohoClient;
use crm_jobs::providers::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, CrmRecord,
    DeletedRecord, Http, LogCall, ObjectKind, Provider, ProviderError, SyncCursor, ThrottleScope, UpdateDeal,
};
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};

/// A sandbox with the Zoho imitation and its first (US) org's credentials.
struct Zoho {
    env: Env,
    org: String,
    api: String,
    access: String,
}

async fn start(records: usize) -> Zoho {
    let env = Env::start(&[ProviderKind::Zoho], records).await;
    let a = env.control.get("zoho/accounts").await["accounts"][0].clone();
    let s = |v: &Value| v.as_str().expect("string").to_owned();
    Zoho {
        org: s(&a["id"]),
        api: s(&a["credentials"]["api_domain"]),
        access: s(&a["credentials"]["oauth"]["access_token"]),
        env,
    }
}

/// One run of a sync: every page, in order.
struct Run {
    pages: Vec<(Vec<CrmRecord>, Vec<DeletedRecord>, SyncCursor)>,
    end: SyncCursor,
}

impl Run {
    fn records(&self) -> Vec<String> {
        self.pages.iter().flat_map(|(r, _, _)| r.iter().map(|x| x.external_id.clone())).collect()
    }

    fn deleted(&self) -> BTreeSet<String> {
        self.pages.iter().flat_map(|(_, d, _)| d.iter().map(|x| x.external_id.clone())).collect()
    }
}

impl Zoho {
    fn auth(&self) -> Auth {
        Auth {
            credential: Credential::ZohoOauth(secrecy::SecretString::from(self.access.clone())),
            api_base: url::Url::parse(&self.api).expect("api domain"),
        }
    }

    fn client(&self) -> &dyn CrmClient {
        self.env.clients.get(Provider::Zoho)
    }

    fn path(&self, rest: &str) -> String {
        format!("zoho/accounts/{}{rest}", self.org)
    }

    /// Runs a sync from `cursor` until `has_more` is false.
    async fn sync(&self, kind: ObjectKind, cursor: SyncCursor) -> Run {
        let mut cursor = cursor;
        let mut pages = Vec::new();
        for _ in 0..1000 {
            let page = self.client().sync_page(&self.auth(), kind, &cursor).await.expect("sync page").value;
            pages.push((page.records, page.deleted, page.next.clone()));
            cursor = page.next;
            if !page.has_more {
                return Run { pages, end: cursor };
            }
        }
        panic!("sync did not finish");
    }

    async fn object(&self, module: &str, id: &str) -> Value {
        self.env.control.get(&self.path(&format!("/objects/{module}/{id}"))).await
    }

    async fn created_with(&self, marker: &str) -> u64 {
        self.env.control.get(&self.path(&format!("/created?contains={marker}"))).await["count"]
            .as_u64()
            .expect("count")
    }

    async fn mutate(&self, req: Value) -> Value {
        self.env.control.post(&self.path("/mutations"), req).await
    }

    async fn quota(&self, patch: Value) {
        self.env.control.patch(&self.path(""), patch).await;
    }

    async fn new_token(&mut self) {
        let t = self.env.control.post(&self.path("/tokens"), json!({})).await;
        self.access = t["access_token"].as_str().expect("access").to_owned();
    }

    async fn count(&self, module: &str) -> usize {
        self.env.control.get(&self.path("")).await["counts"][module].as_u64().expect("count") as usize
    }
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().map(|x| x.as_str().expect("id").to_owned()).collect()
}

const KINDS: [(ObjectKind, &str); 3] =
    [(ObjectKind::Contact, "Contacts"), (ObjectKind::Company, "Accounts"), (ObjectKind::Deal, "Deals")];

#[tokio::test]
async fn full_sync_spans_pages_returns_every_record_once_and_resumes_exactly() {
    let z = start(450).await;
    for (kind, module) in KINDS {
        let run = z.sync(kind, SyncCursor::full()).await;
        let got = run.records();
        assert_eq!(got.len(), z.count(module).await, "{module}: every record");
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), got.len(), "{module}: exactly once");
        assert!(run.pages.len() >= 4, "{module}: 450 records span several pages and the deleted phase");
        assert!(run.end.since.is_some() && run.end.phase.is_empty() && run.end.token.is_none());
        // A crash after page 1 resumes from its stored cursor: the rest of the run is identical.
        let resumed = z.sync(kind, run.pages[0].2.clone()).await;
        let rest: Vec<String> =
            run.pages[1..].iter().flat_map(|(r, _, _)| r.iter().map(|x| x.external_id.clone())).collect();
        assert_eq!(resumed.records(), rest, "{module}: no page fetched twice, none skipped");
        assert_eq!(resumed.end, run.end);
    }
    // Contacts are normalised.
    let run = z.sync(ObjectKind::Contact, SyncCursor::full()).await;
    let c = &run.pages[0].0[0];
    assert!(c.email.is_some() && c.last_name.is_some() && c.name.is_some() && c.owner.is_some());
}

#[tokio::test]
async fn records_changed_during_a_scan_are_not_lost() {
    let z = start(500).await;
    let kind = ObjectKind::Contact;
    let first = z.client().sync_page(&z.auth(), kind, &SyncCursor::full()).await.expect("page 1").value;
    // Another user edits 40 contacts (some already read, most not) and deletes 5 between pages.
    let log = z
        .mutate(json!({"seed": 11, "updates": 40, "deletes": 5, "objects": ["Contacts"], "step_ms": 1000}))
        .await;
    let rest = z.sync(kind, first.next.clone()).await;
    let mut seen: Vec<String> = first.records.iter().map(|r| r.external_id.clone()).collect();
    seen.extend(rest.records());
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    let updated = ids(&log["updated"]["Contacts"]);
    let deleted = ids(&log["deleted"]["Contacts"]);
    let live = z.count("Contacts").await;
    assert_eq!(
        unique.iter().filter(|i| !deleted.contains(*i)).count(),
        live,
        "every live record was delivered"
    );
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for i in &seen {
        *counts.entry(i).or_default() += 1;
    }
    for (id, n) in counts {
        assert!(n == 1 || updated.contains(id), "{id} delivered {n} times without changing");
    }
    assert_eq!(rest.deleted(), deleted, "a full sync's deleted phase lists every deletion");
}

#[tokio::test]
async fn incremental_sync_returns_exactly_the_changes_of_a_mutation_batch() {
    let z = start(120).await;
    let mut ends = BTreeMap::new();
    for (kind, _) in KINDS {
        ends.insert(kind, z.sync(kind, SyncCursor::full()).await.end);
    }
    z.env.control.advance("10s").await;
    let log = z.mutate(json!({"seed": 7, "creates": 12, "updates": 20, "deletes": 8, "objects": ["Contacts", "Accounts", "Deals"]})).await;
    let mut second_ends = BTreeMap::new();
    for (kind, module) in KINDS {
        let deleted = ids(&log["deleted"][module]);
        let mut expected: BTreeSet<String> = ids(&log["created"][module]);
        expected.extend(ids(&log["updated"][module]));
        let expected: BTreeSet<String> = expected.difference(&deleted).cloned().collect();
        let run = z.sync(kind, ends[&kind].clone()).await;
        let got = run.records();
        assert_eq!(
            got.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{module}: exactly the changed records"
        );
        assert_eq!(got.len(), expected.len(), "{module}: each once");
        assert_eq!(run.deleted(), deleted, "{module}: exactly the deletions");
        assert_eq!(
            run.end.since.map(|t| t.timestamp()),
            Some(1_767_603_610),
            "{module}: the next run starts at the change"
        );
        second_ends.insert(kind, run.end);
    }
    // A second batch in the very same second: only its own changes come back (the first batch's
    // records at that second were already delivered).
    let log2 = z.mutate(json!({"seed": 8, "creates": 6, "deletes": 3, "objects": ["Contacts"]})).await;
    let run = z.sync(ObjectKind::Contact, second_ends[&ObjectKind::Contact].clone()).await;
    let deleted2 = ids(&log2["deleted"]["Contacts"]);
    let expected: BTreeSet<String> =
        ids(&log2["created"]["Contacts"]).difference(&deleted2).cloned().collect();
    assert_eq!(run.records().into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(run.deleted().is_superset(&deleted2));
    // Nothing changed since: no records (the If-Modified-Since page is a 304 or only seen ids).
    let quiet = z.sync(ObjectKind::Deal, second_ends[&ObjectKind::Deal].clone()).await;
    assert!(quiet.records().is_empty());
}

#[tokio::test]
async fn more_than_two_thousand_changes_in_one_second_switch_to_page_token() {
    let z = start(20).await;
    z.quota(json!({"unlimited_credits": true})).await;
    let end = z.sync(ObjectKind::Contact, SyncCursor::full()).await.end;
    z.env.control.advance("5s").await;
    let log = z.mutate(json!({"seed": 3, "creates": 2300, "objects": ["Contacts"]})).await;
    let created = ids(&log["created"]["Contacts"]);
    assert_eq!(created.len(), 2300);
    let run = z.sync(ObjectKind::Contact, end).await;
    let got = run.records();
    assert_eq!(got.len(), 2300, "each change exactly once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), created);
    let log = z.env.control.get("requests?provider=zoho&path=/crm/v7/Contacts&limit=100").await;
    let queries: Vec<String> = log["requests"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|r| r["query"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.iter().any(|q| q.contains("page=10")), "pages up to 10 within the crowded second");
    assert!(queries.iter().any(|q| q.contains("page_token=")), "then the page token");
    assert!(!queries.iter().any(|q| q.contains("page=11")), "never page 11: {queries:?}");
    // A crash on a page-token page, resumed after the token expired: the crowded second starts over
    // (records may repeat, none is lost).
    let at_token =
        run.pages.iter().position(|(_, _, next)| next.token.is_some()).expect("a page-token cursor");
    let stored = run.pages[at_token].2.clone();
    let before: BTreeSet<String> =
        run.pages[..=at_token].iter().flat_map(|(r, _, _)| r.iter().map(|x| x.external_id.clone())).collect();
    let mut z = z;
    z.env.control.advance("1d").await;
    z.new_token().await;
    let resumed = z.sync(ObjectKind::Contact, stored).await;
    assert!(
        resumed.pages[0].0.is_empty() && resumed.pages[0].2.token.is_none(),
        "the expired token restarts the window"
    );
    let mut all = before;
    all.extend(resumed.records());
    assert_eq!(all, created, "nothing lost across the restart");
}

#[tokio::test]
async fn every_action_works_and_lands_with_the_right_fields() {
    let z = start(5).await;
    let c = z.client();
    let auth = z.auth();
    let contact = z.sync(ObjectKind::Contact, SyncCursor::full()).await.pages[0].0[0].clone();
    let deal = z.sync(ObjectKind::Deal, SyncCursor::full()).await.pages[0].0[0].clone();
    let due = Utc.with_ymd_and_hms(2026, 1, 31, 17, 0, 0).single().expect("time");
    let task = CreateTask {
        subject: "Follow up".into(),
        body: Some("Send the proposal".into()),
        due_at: Some(due),
        contact_id: Some(contact.external_id.clone()),
        deal_id: Some(deal.external_id.clone()),
        company_id: None,
        priority: Some("high".into()),
        owner_id: None,
        marker: "act-task-1".into(),
    };
    let t = c.create_task(&auth, &task).await.expect("task");
    assert!(t.value.created);
    assert!(
        t.quota.as_ref().and_then(|q| q.daily_remaining).is_some(),
        "every response carries the credit headers"
    );
    let stored = z.object("Tasks", &t.value.id).await;
    assert_eq!(stored["Subject"], json!("Follow up"));
    assert_eq!(stored["Description"], json!("Send the proposal"));
    assert_eq!(stored["Due_Date"], json!("2026-01-31"));
    assert_eq!(stored["Priority"], json!("High"));
    assert_eq!(stored["Status"], json!("Not Started"));
    assert_eq!(stored["Who_Id"]["id"], json!(contact.external_id));
    assert_eq!(
        (stored["What_Id"]["id"].clone(), stored["$se_module"].clone()),
        (json!(deal.external_id), json!("Deals"))
    );
    assert_eq!(stored["CrmFleet_Action_Id"], json!("act-task-1"));
    // A retried create updates the first record instead of duplicating it.
    let again = c.create_task(&auth, &task).await.expect("retry").value;
    assert_eq!((again.id.clone(), again.created), (t.value.id.clone(), false));
    assert_eq!(z.created_with("act-task-1").await, 1);
    assert_eq!(
        c.find_by_marker(&auth, ActionObject::Task, "act-task-1").await.expect("find").value.map(|r| r.id),
        Some(t.value.id.clone())
    );
    assert_eq!(c.find_by_marker(&auth, ActionObject::Task, "act-nope").await.expect("find").value, None);

    let close = chrono::NaiveDate::from_ymd_opt(2026, 3, 31).expect("date");
    let u = c
        .update_deal(
            &auth,
            &UpdateDeal {
                deal_id: deal.external_id.clone(),
                stage: Some("Negotiation/Review".into()),
                amount: Some(12500.5),
                close_date: Some(close),
            },
        )
        .await
        .expect("update deal");
    assert_eq!((u.value.id.clone(), u.value.created), (deal.external_id.clone(), false));
    let d = c.get(&auth, ObjectKind::Deal, &deal.external_id).await.expect("get").value.expect("deal exists");
    assert_eq!(
        (d.stage.as_deref(), d.amount, d.close_date),
        (Some("Negotiation/Review"), Some(12500.5), Some(close))
    );
    assert_eq!(z.object("Deals", &deal.external_id).await["Probability"], json!(90));

    let call = LogCall {
        subject: "Discovery call".into(),
        body: Some("Talked pricing".into()),
        direction: "inbound".into(),
        duration_secs: 754,
        occurred_at: Utc.with_ymd_and_hms(2026, 1, 5, 8, 30, 0).single().expect("time"),
        contact_id: Some(contact.external_id.clone()),
        deal_id: None,
        company_id: contact.company.clone(),
        marker: "act-call-1".into(),
    };
    let lc = c.log_call(&auth, &call).await.expect("call").value;
    let stored = z.object("Calls", &lc.id).await;
    assert_eq!(
        (stored["Call_Type"].clone(), stored["Call_Duration"].clone()),
        (json!("Inbound"), json!("12:34"))
    );
    assert_eq!(stored["Call_Duration_in_seconds"], json!(754));
    assert_eq!(stored["Call_Start_Time"], json!("2026-01-05T00:30:00-08:00"));
    assert_eq!(
        stored["$se_module"],
        json!(if contact.company.is_some() { json!("Accounts") } else { Value::Null })
    );
    assert_eq!(
        c.find_by_marker(&auth, ActionObject::Call, "act-call-1").await.expect("find").value.map(|r| r.id),
        Some(lc.id)
    );

    let new_contact = ContactInput {
        email: Some("jane.doe@newco.example".into()),
        first_name: Some("Jane".into()),
        last_name: Some("Doe".into()),
        phone: Some("+1 555 0100".into()),
        company_id: contact.company.clone(),
        title: Some("CTO".into()),
        marker: "act-contact-1".into(),
    };
    let nc = c.create_contact(&auth, &new_contact).await.expect("contact").value;
    assert!(nc.created);
    let stored = z.object("Contacts", &nc.id).await;
    assert_eq!((stored["Full_Name"].clone(), stored["Title"].clone()), (json!("Jane Doe"), json!("CTO")));
    let found = c
        .search_contact_by_email(&auth, "JANE.DOE@newco.example")
        .await
        .expect("search")
        .value
        .expect("found");
    assert_eq!(found.external_id, nc.id);
    assert_eq!(
        c.search_contact_by_email(&auth, "doe@newco.example").await.expect("search").value,
        None,
        "substring hits are not matches"
    );
    let upd = ContactInput {
        phone: Some("+1 555 0199".into()),
        title: None,
        first_name: None,
        last_name: None,
        email: None,
        company_id: None,
        marker: String::new(),
    };
    c.update_contact(&auth, &nc.id, &upd).await.expect("update contact");
    let got = c.get(&auth, ObjectKind::Contact, &nc.id).await.expect("get").value.expect("exists");
    assert_eq!(
        (got.phone.as_deref(), got.email.as_deref()),
        (Some("+1 555 0199"), Some("jane.doe@newco.example"))
    );
    assert_eq!(
        c.find_by_marker(&auth, ActionObject::Contact, "act-contact-1")
            .await
            .expect("find")
            .value
            .map(|r| r.id),
        Some(nc.id.clone())
    );

    let note = CreateNote {
        body: "Wants a pilot in March".into(),
        title: Some("Pilot".into()),
        contact_id: Some(nc.id.clone()),
        deal_id: None,
        company_id: None,
        marker: "act-note-1".into(),
    };
    let n = c.create_note(&auth, &note).await.expect("note").value;
    let stored = z.object("Notes", &n.id).await;
    assert_eq!(
        (stored["Note_Title"].clone(), stored["Note_Content"].clone()),
        (json!("Pilot"), json!("Wants a pilot in March"))
    );
    assert_eq!(stored["Parent_Id"]["id"], json!(nc.id));
    assert_eq!(stored["Parent_Id"]["module"]["api_name"], json!("Contacts"));
    assert_eq!(c.create_note(&auth, &note).await.expect("retry").value, n.clone().with_created(false));
    assert_eq!(z.created_with("act-note-1").await, 1);
    assert_eq!(
        c.find_by_marker(&auth, ActionObject::Note, "act-note-1").await.expect("find").value.map(|r| r.id),
        Some(n.id)
    );
    assert_eq!(c.get(&auth, ObjectKind::Company, "4150868000009999999").await.expect("get").value, None);
}

trait WithCreated {
    fn with_created(self, created: bool) -> Self;
}

impl WithCreated for crm_jobs::providers::ExternalRef {
    fn with_created(mut self, created: bool) -> Self {
        self.created = created;
        self
    }
}

/// Reads one deal; `Ok(true)` when it exists.
async fn get_deal(z: &Zoho, deal: &str) -> Result<bool, ProviderError> {
    z.client().get(&z.auth(), ObjectKind::Deal, deal).await.map(|r| r.value.is_some())
}

/// What a fault case expects.
#[derive(Debug)]
enum Expect {
    Throttled(ThrottleScope, Option<Duration>),
    Unauthorized,
    Forbidden,
    Transient(Option<u16>),
    NotFound,
    Rejected(&'static str),
    Conflict,
    OutcomeUnknown,
}

fn check(case: &str, got: &ProviderError, want: &Expect) {
    let ok = match (want, got) {
        (Expect::Throttled(s, d), ProviderError::Throttled { scope, retry_after, status: 429, .. }) => {
            s == scope && (d.is_none() || d == retry_after)
        }
        (Expect::Unauthorized, ProviderError::Unauthorized { .. }) => true,
        (Expect::Forbidden, ProviderError::Forbidden { .. }) => true,
        (Expect::Transient(s), ProviderError::Transient { status, .. }) => s == status,
        (Expect::NotFound, ProviderError::NotFound { .. }) => true,
        (Expect::Rejected(f), ProviderError::Rejected { field: Some(field), .. }) => field == f,
        (Expect::Conflict, ProviderError::Conflict { existing_id: Some(_), .. }) => true,
        (Expect::OutcomeUnknown, ProviderError::OutcomeUnknown { .. }) => true,
        _ => false,
    };
    assert!(ok, "{case}: expected {want:?}, got {got:?}");
}

#[tokio::test]
async fn fault_knobs_map_to_the_right_error_variants() {
    let mut z = start(3).await;
    let deal = z.sync(ObjectKind::Deal, SyncCursor::full()).await.pages[0].0[0].external_id.clone();
    let contact = z.sync(ObjectKind::Contact, SyncCursor::full()).await.pages[0].0[0].clone();
    let update = |stage: &str| UpdateDeal {
        deal_id: deal.clone(),
        stage: Some(stage.into()),
        amount: None,
        close_date: None,
    };

    // Injected statuses and throttles, each on the next matching request only.
    let injected: Vec<(&str, Value, Expect)> = vec![
        (
            "burst throttle with Retry-After",
            json!({"type": "throttle", "retry_after_secs": 7}),
            Expect::Throttled(ThrottleScope::Concurrency, Some(Duration::from_secs(7))),
        ),
        ("injected 401", json!({"type": "status", "status": 401}), Expect::Unauthorized),
        ("scope mismatch", json!({"type": "status", "status": 401, "kind": "scope"}), Expect::Forbidden),
        ("5xx outage", json!({"type": "status", "status": 503}), Expect::Transient(Some(503))),
        ("500", json!({"type": "status", "status": 500}), Expect::Transient(Some(500))),
        ("404", json!({"type": "status", "status": 404}), Expect::NotFound),
        (
            "record locked",
            json!({"type": "status", "status": 400, "kind": "locked"}),
            Expect::Transient(Some(400)),
        ),
    ];
    for (case, action, want) in injected {
        z.env.control.fault("zoho", json!({"account": z.org, "times": 1, "action": action})).await;
        let err = get_deal(&z, &deal).await.expect_err(case);
        check(case, &err, &want);
    }
    assert!(get_deal(&z, &deal).await.expect("faults are spent"));

    // A 5xx outage window on the logical clock.
    z.env
        .control
        .fault(
            "zoho",
            json!({"account": z.org, "duration": "60s", "action": {"type": "status", "status": 502}}),
        )
        .await;
    check("outage", &get_deal(&z, &deal).await.expect_err("outage"), &Expect::Transient(Some(502)));
    z.env.control.advance("60s").await;
    assert!(get_deal(&z, &deal).await.expect("outage over"));

    // Credits exhausted: the rolling 24 h allocation.
    z.quota(json!({"credits": 1, "reset_windows": true})).await;
    assert!(get_deal(&z, &deal).await.expect("the last credit"));
    check(
        "credits",
        &get_deal(&z, &deal).await.expect_err("credits"),
        &Expect::Throttled(ThrottleScope::Daily, Some(Duration::from_secs(86_400))),
    );
    z.quota(json!({"unlimited_credits": true, "reset_windows": true})).await;

    // Expired token (clock and control plane), then revoked credentials.
    z.env.control.advance("3600s").await;
    check("expired by the clock", &get_deal(&z, &deal).await.expect_err("expired"), &Expect::Unauthorized);
    z.new_token().await;
    z.env.control.post(&z.path("/expire-tokens"), json!({})).await;
    check(
        "expired by the control plane",
        &get_deal(&z, &deal).await.expect_err("expired"),
        &Expect::Unauthorized,
    );
    z.new_token().await;
    z.env.control.post(&z.path("/revoke"), json!({})).await;
    check("revoked", &get_deal(&z, &deal).await.expect_err("revoked"), &Expect::Unauthorized);
    z.new_token().await;
    assert!(get_deal(&z, &deal).await.expect("a new consent works"));

    // Validation (the field is named), duplicates (with the existing id), unknown ids.
    let c = z.client();
    let auth = z.auth();
    check(
        "bad stage",
        &c.update_deal(&auth, &update("Won")).await.expect_err("stage"),
        &Expect::Rejected("Stage"),
    );
    let nameless = ContactInput {
        email: Some("x@y.example".into()),
        first_name: None,
        last_name: None,
        phone: None,
        company_id: None,
        title: None,
        marker: "m-nameless".into(),
    };
    check(
        "mandatory",
        &c.create_contact(&auth, &nameless).await.expect_err("mandatory"),
        &Expect::Rejected("Last_Name"),
    );
    let dup = ContactInput {
        email: contact.email.clone(),
        last_name: Some("Twin".into()),
        first_name: None,
        phone: None,
        company_id: None,
        title: None,
        marker: "m-dup".into(),
    };
    let err = c.create_contact(&auth, &dup).await.expect_err("duplicate");
    check("duplicate email", &err, &Expect::Conflict);
    assert!(
        matches!(&err, ProviderError::Conflict { existing_id: Some(id), .. } if *id == contact.external_id)
    );
    let gone = UpdateDeal {
        deal_id: "4150868000009999999".into(),
        stage: None,
        amount: Some(1.0),
        close_date: None,
    };
    check("unknown id", &c.update_deal(&auth, &gone).await.expect_err("unknown"), &Expect::NotFound);

    // Commit then drop the connection: the task exists once, reconciliation finds it, a retry adopts it.
    z.env.control.fault("zoho", json!({"account": z.org, "method": "POST", "path": "/crm/v7/Tasks/upsert", "times": 1, "action": {"type": "drop_after_commit"}})).await;
    let task = crate::support::task("Dropped", "m-drop");
    check(
        "drop after commit",
        &c.create_task(&auth, &task).await.expect_err("dropped"),
        &Expect::OutcomeUnknown,
    );
    assert_eq!(z.created_with("m-drop").await, 1, "the write happened once");
    let found =
        c.find_by_marker(&auth, ActionObject::Task, "m-drop").await.expect("find").value.expect("reconciled");
    let retry = c.create_task(&auth, &task).await.expect("retry").value;
    assert_eq!((retry.id, retry.created), (found.id, false));
    assert_eq!(z.created_with("m-drop").await, 1, "no duplicate");

    // Hung connections: a read is transient, a write's outcome is unknown.
    let slow = ZohoClient::new(Http::with_timeout(Duration::from_secs(1)).expect("http"));
    z.env
        .control
        .fault(
            "zoho",
            json!({"account": z.org, "method": "GET", "times": 1, "action": {"type": "hang", "ms": 5000}}),
        )
        .await;
    let err = slow.get(&auth, ObjectKind::Deal, &deal).await.expect_err("hung GET");
    check("hung GET", &err, &Expect::Transient(None));
    z.env
        .control
        .fault(
            "zoho",
            json!({"account": z.org, "method": "POST", "times": 1, "action": {"type": "hang", "ms": 5000}}),
        )
        .await;
    let note = CreateNote {
        body: "Hung".into(),
        title: None,
        contact_id: Some(contact.external_id.clone()),
        deal_id: None,
        company_id: None,
        marker: "m-hang".into(),
    };
    check(
        "hung POST",
        &slow.create_note(&auth, &note).await.expect_err("hung POST"),
        &Expect::OutcomeUnknown,
    );
}
