//! Salesforce client against the Salesforce imitation over real HTTP: full and incremental syncs
//! (locator paging, crash resume, deletes through `deleted/`), every action read back through the
//! control plane, marker reconciliation, and a table over the sandbox's fault knobs.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use crm_jobs::providers::salesforce::{MARKER_FIELD, SalesforceClient};
use crm_jobs::providers::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, CrmRecord,
    DeletedRecord, Http, LogCall, ObjectKind, Provider, ProviderError, SyncCursor, ThrottleScope, UpdateDeal,
};
use crm_sandbox::config::ProviderKind;
use serde_json::{Value, json};

use crate::support::Env;

/// A sandbox running Salesforce, its first org, and an `Auth` built from the org's token response.
struct Org {
    env: Env,
    id: String,
    auth: Auth,
}

fn auth_from(oauth: &Value) -> Auth {
    Auth {
        credential: Credential::Bearer(
            oauth["access_token"].as_str().expect("access token").to_owned().into(),
        ),
        api_base: url::Url::parse(oauth["instance_url"].as_str().expect("instance_url"))
            .expect("instance url"),
    }
}

async fn org(records: usize) -> Org {
    let env = Env::start(&[ProviderKind::Salesforce], records).await;
    let accounts = env.control.get("salesforce/accounts").await;
    let a = &accounts["accounts"][0];
    let auth = auth_from(&a["credentials"]["oauth"]);
    assert_ne!(
        auth.api_base.as_str().trim_end_matches('/'),
        env.sandbox.urls().salesforce().expect("urls").login_base,
        "the API base is the instance, not the login host"
    );
    Org { id: a["id"].as_str().expect("org id").to_owned(), auth, env }
}

impl Org {
    fn client(&self) -> &dyn CrmClient {
        self.env.clients.get(Provider::Salesforce)
    }

    fn path(&self, rest: &str) -> String {
        format!("salesforce/accounts/{}{rest}", self.id)
    }

    async fn record(&self, object: &str, id: &str) -> Value {
        self.env.control.get(&self.path(&format!("/objects/{object}/{id}"))).await
    }

    async fn created(&self, object: &str, marker: &str) -> u64 {
        self.env.control.get(&self.path(&format!("/created?object={object}&contains={marker}"))).await["count"]
            .as_u64()
            .expect("count")
    }

    async fn mutate(&self, req: Value) -> Value {
        self.env.control.post(&self.path("/mutations"), req).await
    }

    async fn fault(&self, rule: Value) {
        let mut rule = rule;
        rule["account"] = json!(self.id);
        self.env.control.fault("salesforce", rule).await;
    }

    /// The id of some live record of `object`, through a plain query.
    async fn some_id(&self, kind: ObjectKind) -> String {
        let (records, _, _, _) = sync_all(self.client(), &self.auth, kind, SyncCursor::full()).await;
        records.first().expect("a record").external_id.clone()
    }
}

/// Runs a sync to the end: records, deletions, the final cursor and the number of pages.
async fn sync_all(
    client: &dyn CrmClient,
    auth: &Auth,
    kind: ObjectKind,
    start: SyncCursor,
) -> (Vec<CrmRecord>, Vec<DeletedRecord>, SyncCursor, usize) {
    let mut cursor = start;
    let (mut records, mut deleted) = (Vec::new(), Vec::new());
    for pages in 1..100 {
        let page = client.sync_page(auth, kind, &cursor).await.expect("sync page").value;
        records.extend(page.records);
        deleted.extend(page.deleted);
        cursor = page.next;
        if !page.has_more {
            return (records, deleted, cursor, pages);
        }
    }
    panic!("sync did not finish");
}

fn ids(records: &[CrmRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.external_id.clone()).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[tokio::test]
async fn full_sync_pages_through_every_record_exactly_once() {
    let o = org(2_300).await;
    for (kind, object) in [
        (ObjectKind::Contact, "Contact"),
        (ObjectKind::Company, "Account"),
        (ObjectKind::Deal, "Opportunity"),
    ] {
        let (records, deleted, last, pages) = sync_all(o.client(), &o.auth, kind, SyncCursor::full()).await;
        assert_eq!(records.len(), 2_300, "{object}");
        assert_eq!(ids(&records).len(), 2_300, "{object}: no record twice");
        assert!(deleted.is_empty());
        assert_eq!(pages, 3, "{object}: two locator batches of up to 2000, then deletions");
        let high = records.iter().map(|r| r.remote_updated_at).max();
        assert_eq!(last.since, high, "{object}: the next run starts at the high-water mark");
        assert!(last.phase.is_empty() && last.token.is_none());
        assert!(records.iter().all(|r| r.object == kind && r.raw["attributes"]["type"] == json!(object)));
    }
    let counts = o.env.control.get(&o.path("")).await["counts"].clone();
    assert_eq!(counts["Contact"], json!(2_300));
    let contact = o.some_id(ObjectKind::Contact).await;
    let full =
        o.client().get(&o.auth, ObjectKind::Contact, &contact).await.expect("get").value.expect("exists");
    assert!(full.email.is_some() && full.last_name.is_some() && full.name.is_some());
}

#[tokio::test]
async fn a_resumed_sync_continues_exactly_after_the_stored_page() {
    let o = org(2_300).await;
    let c = o.client();
    let first = c.sync_page(&o.auth, ObjectKind::Contact, &SyncCursor::full()).await.expect("page 1").value;
    assert_eq!(first.records.len(), 2_000);
    assert!(first.next.token.as_deref().is_some_and(|t| t.contains("/query/01g")), "the locator is stored");
    // A crash after fetching page 2 but before storing it: page 2 is fetched again, identically.
    let second = c.sync_page(&o.auth, ObjectKind::Contact, &first.next).await.expect("page 2").value;
    let again = c.sync_page(&o.auth, ObjectKind::Contact, &first.next).await.expect("page 2 again").value;
    assert_eq!(ids(&second.records), ids(&again.records));
    assert_eq!(second.records.len(), 300);
    let mut all = ids(&first.records);
    all.extend(ids(&second.records));
    assert_eq!(all.len(), 2_300, "pages 1 and 2 partition the records");
    // The locator expires after 15 idle minutes: the resumed page falls back to the stored keyset.
    o.env.control.advance("16m").await;
    let late =
        c.sync_page(&o.auth, ObjectKind::Contact, &first.next).await.expect("page 2 after expiry").value;
    assert_eq!(ids(&late.records), ids(&second.records), "same records, via SystemModstamp/Id keyset");
    let (rest, _, _, _) = sync_all(c, &o.auth, ObjectKind::Contact, late.next).await;
    assert!(rest.is_empty());
    let log = o.env.control.get("requests?provider=salesforce&operation=query.more.Contact").await;
    assert_eq!(log["count"], json!(2), "the live locator was used twice, the expired one refused");
}

#[tokio::test]
async fn incremental_sync_returns_exactly_the_mutations() {
    let o = org(80).await;
    let c = o.client();
    let mut cursors = Vec::new();
    for kind in ObjectKind::ALL {
        let (_, _, last, _) = sync_all(c, &o.auth, kind, SyncCursor::full()).await;
        cursors.push(last);
    }
    o.env.control.advance("5m").await;
    let log = o.mutate(json!({"seed": 11, "creates": 9, "updates": 15, "deletes": 6, "objects": ["Contact", "Account", "Opportunity"]})).await;
    // Deletions are reported for whole minutes that have passed.
    o.env.control.advance("1m").await;
    for (kind, cursor) in ObjectKind::ALL.into_iter().zip(cursors) {
        let object = match kind {
            ObjectKind::Contact => "Contact",
            ObjectKind::Company => "Account",
            ObjectKind::Deal => "Opportunity",
        };
        let created = strings(&log["created"][object]);
        let updated = strings(&log["updated"][object]);
        let deleted = strings(&log["deleted"][object]);
        let changed: BTreeSet<String> =
            created.union(&updated).filter(|id| !deleted.contains(*id)).cloned().collect();
        let (records, gone, next, _) = sync_all(c, &o.auth, kind, cursor).await;
        assert_eq!(ids(&records), changed, "{object}: exactly the created and updated records");
        assert_eq!(records.len(), changed.len(), "{object}: each once");
        let gone_ids: BTreeSet<String> = gone.iter().map(|d| d.external_id.clone()).collect();
        assert_eq!(gone_ids, deleted, "{object}: exactly the deleted records");
        assert!(gone.iter().all(|d| d.deleted_at == Some(Utc.with_ymd_and_hms(2026, 1, 5, 9, 5, 0).single().expect("t"))));
        // Nothing changed since: the next run returns nothing (the boundary second is not re-read).
        o.env.control.advance("3m").await;
        let (records, gone, _, _) = sync_all(c, &o.auth, kind, next).await;
        assert!(records.is_empty() && gone.is_empty(), "{object}: {records:?} {gone:?}");
    }
}

#[tokio::test]
async fn changes_during_a_scan_are_picked_up_by_the_next_run() {
    let o = org(2_300).await;
    let c = o.client();
    let first = c.sync_page(&o.auth, ObjectKind::Contact, &SyncCursor::full()).await.expect("page 1").value;
    o.env.control.advance("10s").await;
    let log = o.mutate(json!({"seed": 4, "updates": 40, "creates": 3, "objects": ["Contact"]})).await;
    let (rest, _, last, _) = sync_all(c, &o.auth, ObjectKind::Contact, first.next).await;
    let mut all = ids(&first.records);
    all.extend(ids(&rest));
    assert_eq!(all.len(), 2_300, "the scan itself is a snapshot");
    o.env.control.advance("1m").await;
    let (records, _, _, _) = sync_all(c, &o.auth, ObjectKind::Contact, last).await;
    let changed: BTreeSet<String> =
        strings(&log["created"]["Contact"]).union(&strings(&log["updated"]["Contact"])).cloned().collect();
    assert_eq!(ids(&records), changed, "nothing modified mid-scan is lost");
}

#[tokio::test]
async fn every_action_lands_in_the_org() {
    let o = org(5).await;
    let c = o.client();
    let contact = o.some_id(ObjectKind::Contact).await;
    let deal = o.some_id(ObjectKind::Deal).await;
    let account = o.some_id(ObjectKind::Company).await;
    // create_task: an upsert on the marker; a retry adopts the first.
    let task = CreateTask {
        subject: "Follow up on pricing".into(),
        body: Some("Send the revised quote".into()),
        due_at: Some(Utc.with_ymd_and_hms(2026, 1, 20, 17, 0, 0).single().expect("t")),
        contact_id: Some(contact.clone()),
        deal_id: Some(deal.clone()),
        company_id: None,
        priority: Some("high".into()),
        owner_id: None,
        marker: "act-task-1".into(),
    };
    let r = c.create_task(&o.auth, &task).await.expect("task");
    assert!(r.value.created);
    assert_eq!(r.quota.as_ref().and_then(|q| q.daily_limit), Some(110_000));
    let t = o.record("Task", &r.value.id).await;
    assert_eq!(t["Subject"], json!("Follow up on pricing"));
    assert_eq!(t["WhoId"], json!(contact));
    assert_eq!(t["WhatId"], json!(deal));
    assert_eq!(t["Priority"], json!("High"));
    assert_eq!(t["ActivityDate"], json!("2026-01-20"));
    assert_eq!(t["Status"], json!("Not Started"));
    assert_eq!(t[MARKER_FIELD], json!("act-task-1"));
    let again = c.create_task(&o.auth, &task).await.expect("retried task").value;
    assert_eq!((again.id.clone(), again.created), (r.value.id.clone(), false));
    assert_eq!(o.created("Task", "act-task-1").await, 1);
    let found = c.find_by_marker(&o.auth, ActionObject::Task, "act-task-1").await.expect("find").value;
    assert_eq!(found.map(|f| f.id), Some(r.value.id.clone()));
    // log_call: a completed Task with call fields.
    let call = LogCall {
        subject: "Discovery call".into(),
        body: Some("Talked budget".into()),
        direction: "outbound".into(),
        duration_secs: 420,
        occurred_at: Utc.with_ymd_and_hms(2026, 1, 5, 8, 30, 0).single().expect("t"),
        contact_id: Some(contact.clone()),
        deal_id: None,
        company_id: Some(account.clone()),
        marker: "act-call-1".into(),
    };
    let call_ref = c.log_call(&o.auth, &call).await.expect("call").value;
    let t = o.record("Task", &call_ref.id).await;
    assert_eq!(
        (t["CallType"].clone(), t["CallDurationInSeconds"].clone(), t["Status"].clone(), t["WhatId"].clone()),
        (json!("Outbound"), json!(420), json!("Completed"), json!(account))
    );
    assert_eq!(t["ActivityDate"], json!("2026-01-05"));
    assert!(!c.log_call(&o.auth, &call).await.expect("retried call").value.created);
    assert_eq!(
        c.find_by_marker(&o.auth, ActionObject::Call, "act-call-1").await.expect("find").value.map(|f| f.id),
        Some(call_ref.id)
    );
    // create_contact, update_contact, search by email.
    let input = ContactInput {
        email: Some("Jane.Roe@Example.com".into()),
        first_name: Some("Jane".into()),
        last_name: Some("Roe".into()),
        phone: None,
        company_id: Some(account.clone()),
        title: Some("CTO".into()),
        marker: "act-contact-1".into(),
    };
    let created = c.create_contact(&o.auth, &input).await.expect("contact").value;
    assert!(created.created);
    assert!(!c.create_contact(&o.auth, &input).await.expect("retried contact").value.created);
    assert_eq!(o.created("Contact", "act-contact-1").await, 1);
    let rec = o.record("Contact", &created.id).await;
    assert_eq!(
        (rec["Name"].clone(), rec["AccountId"].clone(), rec["Title"].clone()),
        (json!("Jane Roe"), json!(account), json!("CTO"))
    );
    let patch = ContactInput {
        email: None,
        first_name: None,
        last_name: None,
        phone: Some("+1-555-0199".into()),
        company_id: None,
        title: None,
        marker: String::new(),
    };
    let u = c.update_contact(&o.auth, &created.id, &patch).await.expect("update contact").value;
    assert_eq!((u.id.clone(), u.created), (created.id.clone(), false));
    assert_eq!(o.record("Contact", &created.id).await["Phone"], json!("+1-555-0199"));
    let hit = c
        .search_contact_by_email(&o.auth, "jane.roe@example.com")
        .await
        .expect("search")
        .value
        .expect("found");
    assert_eq!(hit.external_id, created.id);
    assert_eq!(hit.phone.as_deref(), Some("+1-555-0199"));
    assert!(
        c.search_contact_by_email(&o.auth, "o'nobody@example.com").await.expect("search").value.is_none()
    );
    assert_eq!(
        c.find_by_marker(&o.auth, ActionObject::Contact, "act-contact-1")
            .await
            .expect("find")
            .value
            .map(|f| f.id),
        Some(created.id.clone())
    );
    // update_deal.
    let close = NaiveDate::from_ymd_opt(2026, 3, 31).expect("date");
    let d = UpdateDeal {
        deal_id: deal.clone(),
        stage: Some("Negotiation/Review".into()),
        amount: Some(12_500.0),
        close_date: Some(close),
    };
    c.update_deal(&o.auth, &d).await.expect("update deal");
    let rec = o.record("Opportunity", &deal).await;
    assert_eq!(
        (rec["StageName"].clone(), rec["Amount"].clone(), rec["CloseDate"].clone()),
        (json!("Negotiation/Review"), json!(12_500.0), json!("2026-03-31"))
    );
    let got = c.get(&o.auth, ObjectKind::Deal, &deal).await.expect("get deal").value.expect("exists");
    assert_eq!(
        (got.stage.as_deref(), got.amount, got.close_date),
        (Some("Negotiation/Review"), Some(12_500.0), Some(close))
    );
    // create_note: a POST carrying the marker; a retry learns the first note's id from the uniqueness error.
    let note = CreateNote {
        body: "Customer wants SSO.\nFollow up next week.".into(),
        title: None,
        contact_id: Some(contact.clone()),
        deal_id: None,
        company_id: None,
        marker: "act-note-1".into(),
    };
    let n = c.create_note(&o.auth, &note).await.expect("note").value;
    assert!(n.created);
    let rec = o.record("Note", &n.id).await;
    assert_eq!(
        (rec["ParentId"].clone(), rec["Title"].clone(), rec[MARKER_FIELD].clone()),
        (json!(contact), json!("Customer wants SSO."), json!("act-note-1"))
    );
    let retry = c.create_note(&o.auth, &note).await.expect("retried note").value;
    assert_eq!((retry.id.clone(), retry.created), (n.id.clone(), false));
    assert_eq!(o.created("Note", "act-note-1").await, 1);
    assert_eq!(
        c.find_by_marker(&o.auth, ActionObject::Note, "act-note-1").await.expect("find").value.map(|f| f.id),
        Some(n.id)
    );
    assert!(c.find_by_marker(&o.auth, ActionObject::Note, "act-nope").await.expect("find").value.is_none());
    // get of a missing record.
    assert!(c.get(&o.auth, ObjectKind::Contact, "0035g0000000000AAA").await.expect("get").value.is_none());
}

fn expect_err<T: std::fmt::Debug>(case: &str, r: Result<T, ProviderError>) -> ProviderError {
    match r {
        Ok(v) => panic!("{case}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn fault_knobs_map_to_the_right_error_variants() {
    let o = org(3).await;
    let c = o.client();
    let contact = o.some_id(ObjectKind::Contact).await;
    let get = |_case: &'static str| c.get(&o.auth, ObjectKind::Contact, &contact);
    let api = "/services/data/*";

    // Concurrency throttle with Retry-After → Throttled { Concurrency } honouring it.
    o.fault(json!({"path": api, "times": 1, "action": {"type": "throttle", "policy": "concurrency", "retry_after_secs": 7}})).await;
    let e = expect_err("concurrency", get("concurrency").await.map(|r| r.value));
    assert_eq!(
        e,
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(7)),
            scope: ThrottleScope::Concurrency,
            status: 403,
            code: Some("REQUEST_LIMIT_EXCEEDED".into())
        }
    );
    // A 429 burst (Connect API style) with Retry-After.
    o.fault(
        json!({"path": api, "times": 1, "action": {"type": "status", "status": 429, "retry_after_secs": 3}}),
    )
    .await;
    let e = expect_err("burst", get("burst").await.map(|r| r.value));
    assert!(
        matches!(e, ProviderError::Throttled { scope: ThrottleScope::Burst, retry_after: Some(d), .. } if d == Duration::from_secs(3)),
        "{e:?}"
    );
    // The 24-hour allocation, exhausted for real.
    o.env.control.patch(&o.path(""), json!({"daily": 1000, "daily_used": 1000})).await;
    let e = expect_err("daily", get("daily").await.map(|r| r.value));
    assert!(
        matches!(e, ProviderError::Throttled { scope: ThrottleScope::Daily, status: 403, retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{e:?}"
    );
    o.env.control.patch(&o.path(""), json!({"reset_usage": true})).await;
    // 5xx outages.
    for status in [500, 503] {
        o.fault(json!({"path": api, "times": 1, "action": {"type": "status", "status": status}})).await;
        let e = expect_err("outage", get("outage").await.map(|r| r.value));
        assert!(
            matches!(e, ProviderError::Transient { status: Some(s), .. } if s == status),
            "{status}: {e:?}"
        );
    }
    // Row lock contention is transient.
    o.fault(json!({"path": api, "times": 1, "action": {"type": "status", "status": 400, "kind": "UNABLE_TO_LOCK_ROW"}})).await;
    assert!(matches!(
        expect_err("lock", get("lock").await.map(|r| r.value)),
        ProviderError::Transient { status: Some(400), .. }
    ));
    // 404 on a write.
    let patch = ContactInput {
        email: None,
        first_name: None,
        last_name: None,
        phone: Some("1".into()),
        company_id: None,
        title: None,
        marker: String::new(),
    };
    let e = expect_err("404", c.update_contact(&o.auth, "0035g0000000000AAA", &patch).await.map(|r| r.value));
    assert!(matches!(e, ProviderError::NotFound { .. }), "{e:?}");
    // Validation, with the field named.
    let nameless = ContactInput {
        email: Some("x@y.com".into()),
        first_name: Some("X".into()),
        last_name: None,
        phone: None,
        company_id: None,
        title: None,
        marker: "act-invalid".into(),
    };
    let e = expect_err("validation", c.create_contact(&o.auth, &nameless).await.map(|r| r.value));
    assert_eq!(
        e,
        ProviderError::Rejected {
            field: Some("LastName".into()),
            reason: "Required fields are missing: [LastName]".into(),
            code: Some("REQUIRED_FIELD_MISSING".into()),
            status: 400
        }
    );
    // A duplicate rule: the conflict names the existing contact.
    o.env.control.patch("salesforce/settings", json!({"contact_duplicate_rule": true})).await;
    let email = o.record("Contact", &contact).await["Email"].as_str().expect("email").to_owned();
    let dup = ContactInput {
        email: Some(email),
        first_name: None,
        last_name: Some("Dup".into()),
        phone: None,
        company_id: None,
        title: None,
        marker: "act-dup".into(),
    };
    let e = expect_err("duplicate", c.create_contact(&o.auth, &dup).await.map(|r| r.value));
    assert!(matches!(&e, ProviderError::Conflict { existing_id: Some(id), .. } if *id == contact), "{e:?}");
    o.env.control.patch("salesforce/settings", json!({"contact_duplicate_rule": false})).await;
    // Drop after commit on a create: outcome unknown, the task exists once, a retry adopts it.
    let task = crate::support::task("Dropped", "act-drop");
    o.fault(json!({"method": "PATCH", "path": "/services/data/*/sobjects/Task/*", "times": 1, "action": {"type": "drop_after_commit"}})).await;
    let e = expect_err("drop", c.create_task(&o.auth, &task).await.map(|r| r.value));
    assert!(matches!(e, ProviderError::OutcomeUnknown { .. }), "{e:?}");
    assert_eq!(o.created("Task", "act-drop").await, 1);
    let found = c
        .find_by_marker(&o.auth, ActionObject::Task, "act-drop")
        .await
        .expect("reconcile")
        .value
        .expect("found");
    let retried = c.create_task(&o.auth, &task).await.expect("retry").value;
    assert_eq!((retried.id, retried.created), (found.id, false));
    assert_eq!(o.created("Task", "act-drop").await, 1);
    // Hung connections with a 1 s client timeout: a read is transient, writes are outcome-unknown.
    let slow = SalesforceClient::new(Http::with_timeout(Duration::from_secs(1)).expect("http"));
    o.fault(json!({"method": "GET", "path": api, "times": 1, "action": {"type": "hang", "ms": 5000}})).await;
    let e = expect_err("hung GET", slow.get(&o.auth, ObjectKind::Contact, &contact).await.map(|r| r.value));
    assert!(matches!(e, ProviderError::Transient { status: None, .. }), "{e:?}");
    o.fault(json!({"method": "POST", "path": api, "times": 1, "action": {"type": "hang", "ms": 5000}})).await;
    let unmarked = ContactInput {
        email: None,
        first_name: None,
        last_name: Some("Hung".into()),
        phone: None,
        company_id: None,
        title: None,
        marker: String::new(),
    };
    let e = expect_err("hung POST", slow.create_contact(&o.auth, &unmarked).await.map(|r| r.value));
    assert!(matches!(e, ProviderError::OutcomeUnknown { .. }), "{e:?}");
    o.fault(json!({"method": "PATCH", "path": api, "times": 1, "action": {"type": "hang", "ms": 5000}}))
        .await;
    let hung_task = CreateTask { marker: "act-hung".into(), ..task.clone() };
    let e = expect_err("hung upsert", slow.create_task(&o.auth, &hung_task).await.map(|r| r.value));
    assert!(matches!(e, ProviderError::OutcomeUnknown { .. }), "{e:?}");
    // An expired session (logical clock) and revoked credentials are both 401 INVALID_SESSION_ID.
    o.env.control.advance("2h").await;
    let e = expect_err("expired", get("expired").await.map(|r| r.value));
    assert_eq!(
        e,
        ProviderError::Unauthorized {
            code: Some("INVALID_SESSION_ID".into()),
            message: "Session expired or invalid".into()
        }
    );
    let fresh = o.env.control.post(&o.path("/tokens"), json!({})).await;
    let fresh_auth = auth_from(&fresh);
    assert!(c.get(&fresh_auth, ObjectKind::Contact, &contact).await.is_ok());
    o.env.control.post(&o.path("/expire-tokens"), json!({})).await;
    assert!(matches!(
        expect_err("expire-tokens", c.get(&fresh_auth, ObjectKind::Contact, &contact).await.map(|r| r.value)),
        ProviderError::Unauthorized { .. }
    ));
    let fresh = auth_from(&o.env.control.post(&o.path("/tokens"), json!({})).await);
    o.env.control.post(&o.path("/revoke"), json!({})).await;
    assert!(matches!(
        expect_err("revoked", c.get(&fresh, ObjectKind::Contact, &contact).await.map(|r| r.value)),
        ProviderError::Unauthorized { .. }
    ));
}
