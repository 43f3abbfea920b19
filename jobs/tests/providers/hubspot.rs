//! HubSpot client against the HubSpot imitation: sync semantics, every action, and the fault
//! table.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use crm_jobs::providers::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, Credential, CrmClient, Http, LogCall,
    ObjectKind, ProviderError, SyncCursor, ThrottleScope, UpdateDeal,
};
use crm_sandbox::config::ProviderKind;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::Env;

const HUB: &str = "20000001";

async fn env(records: usize) -> (Env, Auth) {
    let env = Env::start(&[ProviderKind::HubSpot], records).await;
    // Searches are limited to 5 per second per account and the test clock is frozen.
    env.control
        .patch(&format!("hubspot/accounts/{HUB}"), json!({ "search_per_second": 100000, "burst": 100000 }))
        .await;
    let account = env.control.get(&format!("hubspot/accounts/{HUB}")).await;
    let auth = auth_from(&env, &account);
    (env, auth)
}

fn auth_from(env: &Env, account: &Value) -> Auth {
    let token = account["credentials"]["private_app_token"].as_str().expect("private app token").to_owned();
    let api_base = env.sandbox.urls().hubspot().expect("hubspot urls").api_base;
    Auth {
        credential: Credential::Bearer(SecretString::from(token)),
        api_base: api_base.parse().expect("url"),
    }
}

fn oauth_auth(env: &Env, account: &Value) -> Auth {
    let token = account["credentials"]["oauth"]["access_token"].as_str().expect("oauth token").to_owned();
    Auth { credential: Credential::Bearer(SecretString::from(token)), ..auth_from(env, account) }
}

async fn sync_all(
    client: &dyn CrmClient,
    auth: &Auth,
    object: ObjectKind,
    start: SyncCursor,
) -> (Vec<String>, Vec<String>, SyncCursor, usize) {
    let mut cursor = start;
    let (mut ids, mut deleted, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = client.sync_page(auth, object, &cursor).await.expect("sync page").value;
        pages += 1;
        ids.extend(page.records.iter().map(|r| r.external_id.clone()));
        deleted.extend(page.deleted.iter().map(|d| d.external_id.clone()));
        cursor = page.next;
        if !page.has_more {
            return (ids, deleted, cursor, pages);
        }
        assert!(pages < 10_000, "sync does not end");
    }
}

fn unique(ids: &[String]) -> HashSet<String> {
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a record came twice");
    set
}

fn strings(v: &Value) -> HashSet<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[tokio::test]
async fn full_then_incremental_sync_returns_exactly_the_records_and_changes() {
    let (env, auth) = env(450).await;
    let client = env.clients.get(crm_jobs::providers::Provider::Hubspot);
    let mut finals = Vec::new();
    for object in ObjectKind::ALL {
        let (ids, deleted, cursor, pages) = sync_all(client, &auth, object, SyncCursor::full()).await;
        assert_eq!(unique(&ids).len(), 450, "{object}: every record once");
        assert!(deleted.is_empty());
        assert!(pages >= 3, "{object}: several pages ({pages})");
        assert!(cursor.since.is_some() && cursor.at_start(), "final cursor starts the next run");
        finals.push((object, cursor));
    }

    let changes = env
        .control
        .post(
            &format!("hubspot/accounts/{HUB}/mutations"),
            json!({ "seed": 7, "creates": 12, "updates": 30, "deletes": 6, "objects": ["contacts", "deals"], "step_ms": 1000 }),
        )
        .await;
    for (object, cursor) in finals {
        let key = match object {
            ObjectKind::Contact => "contacts",
            ObjectKind::Company => "companies",
            ObjectKind::Deal => "deals",
        };
        let (ids, deleted, _, _) = sync_all(client, &auth, object, cursor).await;
        let mut expected = strings(&changes["created"][key]);
        expected.extend(strings(&changes["updated"][key]));
        let removed = strings(&changes["deleted"][key]);
        expected.retain(|id| !removed.contains(id));
        assert_eq!(unique(&ids), expected, "{object}: exactly the created and updated records");
        assert_eq!(unique(&deleted), removed, "{object}: exactly the deleted records");
    }
}

#[tokio::test]
async fn a_window_of_25_000_contacts_is_read_past_the_10_000_search_cap() {
    let env = Env::start(&[ProviderKind::HubSpot], 1).await;
    let account = env
        .control
        .post("hubspot/accounts", json!({ "objects": { "contacts": 25000, "companies": 0, "deals": 0, "tasks": 0, "calls": 0, "notes": 0 },
            "quota": { "search_per_second": 1000000, "burst": 1000000 } }))
        .await;
    let auth = auth_from(&env, &account);
    let client = env.clients.get(crm_jobs::providers::Provider::Hubspot);
    let (ids, _, _, pages) = sync_all(client, &auth, ObjectKind::Contact, SyncCursor::full()).await;
    assert_eq!(unique(&ids).len(), 25_000);
    assert!(pages >= 125, "{pages} pages");
    let counters = env.control.get(&format!("hubspot/accounts/{}/counters", account["hub_id"])).await;
    assert_eq!(counters["by_status"]["400"].as_u64().unwrap_or(0), 0, "no request hit the cap: {counters}");
}

#[tokio::test]
async fn every_action_lands_in_the_crm_with_its_fields() {
    let (env, auth) = env(5).await;
    let client = env.clients.get(crm_jobs::providers::Provider::Hubspot);
    let contact = client
        .create_contact(
            &auth,
            &ContactInput {
                email: Some("ada@example.com".into()),
                first_name: Some("Ada".into()),
                last_name: Some("Lovelace".into()),
                phone: None,
                company_id: None,
                title: Some("CTO".into()),
                marker: "act-contact-1".into(),
            },
        )
        .await
        .expect("create contact")
        .value;
    assert!(contact.created);
    let stored = env.control.get(&format!("hubspot/accounts/{HUB}/objects/contacts/{}", contact.id)).await;
    assert_eq!(stored["properties"]["email"], "ada@example.com", "{stored}");

    // Duplicate email: a conflict naming the existing contact.
    let dup = client
        .create_contact(
            &auth,
            &ContactInput {
                email: Some("ada@example.com".into()),
                first_name: None,
                last_name: None,
                phone: None,
                company_id: None,
                title: None,
                marker: "act-contact-2".into(),
            },
        )
        .await
        .expect_err("duplicate");
    assert_eq!(
        dup,
        ProviderError::Conflict {
            existing_id: Some(contact.id.clone()),
            message: format!("Contact already exists. Existing ID: {}", contact.id)
        }
    );

    let updated = client
        .update_contact(
            &auth,
            &contact.id,
            &ContactInput {
                email: None,
                first_name: None,
                last_name: None,
                phone: Some("+15550100".into()),
                company_id: None,
                title: None,
                marker: String::new(),
            },
        )
        .await
        .expect("update contact");
    assert_eq!(updated.value.id, contact.id);
    let found =
        client.search_contact_by_email(&auth, "ada@example.com").await.expect("search").value.expect("found");
    assert_eq!(found.external_id, contact.id);
    assert_eq!(found.phone.as_deref(), Some("+15550100"));
    assert!(
        client.search_contact_by_email(&auth, "nobody@example.com").await.expect("search").value.is_none()
    );

    let task = client
        .create_task(
            &auth,
            &CreateTask {
                subject: "Follow up".into(),
                body: Some("Call back about renewal".into()),
                due_at: Some(Utc.with_ymd_and_hms(2026, 2, 1, 9, 0, 0).single().expect("date")),
                contact_id: Some(contact.id.clone()),
                deal_id: None,
                company_id: None,
                priority: Some("high".into()),
                owner_id: None,
                marker: "act-task-1".into(),
            },
        )
        .await
        .expect("create task")
        .value;
    let stored = env.control.get(&format!("hubspot/accounts/{HUB}/objects/tasks/{}", task.id)).await;
    assert_eq!(stored["properties"]["hs_task_subject"], "Follow up", "{stored}");
    assert_eq!(stored["properties"]["hs_task_priority"], "HIGH");
    assert_eq!(stored["properties"]["crm_fleet_action_id"], "act-task-1");
    let by_marker = client.find_by_marker(&auth, ActionObject::Task, "act-task-1").await.expect("find").value;
    assert_eq!(by_marker.map(|r| r.id), Some(task.id.clone()));

    let call = client
        .log_call(
            &auth,
            &LogCall {
                subject: "Discovery call".into(),
                body: Some("Went well".into()),
                direction: "outbound".into(),
                duration_secs: 120,
                occurred_at: Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).single().expect("date"),
                contact_id: Some(contact.id.clone()),
                deal_id: None,
                company_id: None,
                marker: "act-call-1".into(),
            },
        )
        .await
        .expect("log call")
        .value;
    let stored = env.control.get(&format!("hubspot/accounts/{HUB}/objects/calls/{}", call.id)).await;
    assert_eq!(stored["properties"]["hs_call_duration"], "120000", "{stored}");

    let note = client
        .create_note(
            &auth,
            &CreateNote {
                body: "Met at the fair".into(),
                title: None,
                contact_id: Some(contact.id.clone()),
                deal_id: None,
                company_id: None,
                marker: "act-note-1".into(),
            },
        )
        .await
        .expect("create note")
        .value;
    let stored = env.control.get(&format!("hubspot/accounts/{HUB}/objects/notes/{}", note.id)).await;
    assert_eq!(stored["properties"]["hs_note_body"], "Met at the fair");

    // Deals: move a seeded deal to a stage of its pipeline.
    let (deal_ids, ..) = sync_all(client, &auth, ObjectKind::Deal, SyncCursor::full()).await;
    let deal = client.get(&auth, ObjectKind::Deal, &deal_ids[0]).await.expect("get").value.expect("deal");
    let stage = if deal.stage.as_deref() == Some("closedwon") { "closedlost" } else { "closedwon" };
    let pipeline = deal.raw["properties"]["pipeline"].as_str().unwrap_or("default");
    let stage = if pipeline == "default" {
        stage.to_owned()
    } else {
        env.control.get(&format!("hubspot/accounts/{HUB}/objects/deals/{}", deal.external_id)).await["properties"]["dealstage"].as_str().expect("stage").to_owned()
    };
    client
        .update_deal(
            &auth,
            &UpdateDeal {
                deal_id: deal.external_id.clone(),
                stage: Some(stage.clone()),
                amount: Some(5000.0),
                close_date: chrono::NaiveDate::from_ymd_opt(2026, 3, 31),
            },
        )
        .await
        .expect("update deal");
    let after =
        client.get(&auth, ObjectKind::Deal, &deal.external_id).await.expect("get").value.expect("deal");
    assert_eq!(after.amount, Some(5000.0));
    assert_eq!(after.stage.as_deref(), Some(stage.as_str()));
    assert_eq!(after.close_date, chrono::NaiveDate::from_ymd_opt(2026, 3, 31));
    assert!(client.get(&auth, ObjectKind::Deal, "999999999").await.expect("get").value.is_none());
}

async fn fault(env: &Env, rule: Value) {
    env.control.clear_faults().await;
    env.control.fault("hubspot", rule).await;
}

#[tokio::test]
async fn each_fault_maps_to_its_error_variant() {
    let (env, auth) = env(5).await;
    let client = env.clients.get(crm_jobs::providers::Provider::Hubspot);
    let get = || client.get(&auth, ObjectKind::Contact, "1");

    fault(&env, json!({ "times": 1, "action": { "type": "throttle", "policy": "TEN_SECONDLY_ROLLING", "retry_after_secs": 7 } })).await;
    assert_eq!(
        get().await.expect_err("throttled"),
        ProviderError::Throttled {
            retry_after: Some(Duration::from_secs(7)),
            scope: ThrottleScope::Burst,
            status: 429,
            code: Some("TEN_SECONDLY_ROLLING".into())
        }
    );
    fault(&env, json!({ "times": 1, "action": { "type": "status", "status": 429, "kind": "DAILY" } })).await;
    assert!(matches!(get().await, Err(ProviderError::Throttled { scope: ThrottleScope::Daily, .. })));
    fault(&env, json!({ "times": 1, "action": { "type": "status", "status": 503 } })).await;
    assert!(matches!(get().await, Err(ProviderError::Transient { status: Some(503), .. })));
    fault(&env, json!({ "times": 1, "action": { "type": "status", "status": 502 } })).await;
    assert!(matches!(get().await, Err(ProviderError::Transient { status: Some(502), .. })));
    fault(&env, json!({ "times": 1, "action": { "type": "status", "status": 423 } })).await;
    assert!(matches!(
        get().await,
        Err(ProviderError::Transient { status: Some(423), retry_after: Some(_), .. })
    ));
    env.control.clear_faults().await;

    // Real quota exhaustion: a burst of 3.
    env.control.patch(&format!("hubspot/accounts/{HUB}"), json!({ "burst": 3, "reset_windows": true })).await;
    for _ in 0..3 {
        get().await.expect("within quota");
    }
    let err = get().await.expect_err("over quota");
    assert!(matches!(err, ProviderError::Throttled { scope: ThrottleScope::Burst, .. }), "{err:?}");
    env.control
        .patch(&format!("hubspot/accounts/{HUB}"), json!({ "burst": 100000, "reset_windows": true }))
        .await;

    // Expired OAuth token → Unauthorized; revoked credentials → Unauthorized.
    let account = env.control.get(&format!("hubspot/accounts/{HUB}")).await;
    let oauth = oauth_auth(&env, &account);
    client.get(&oauth, ObjectKind::Contact, "1").await.expect("fresh token works");
    env.control.post(&format!("hubspot/accounts/{HUB}/expire-tokens"), json!({})).await;
    assert!(matches!(
        client.get(&oauth, ObjectKind::Contact, "1").await,
        Err(ProviderError::Unauthorized { .. })
    ));
    env.control.post(&format!("hubspot/accounts/{HUB}/revoke"), json!({})).await;
    assert!(matches!(
        client.get(&auth, ObjectKind::Contact, "1").await,
        Err(ProviderError::Unauthorized { .. })
    ));
    let account = env.control.get(&format!("hubspot/accounts/{HUB}")).await;
    let auth = auth_from(&env, &account);

    // Not found and validation.
    let missing = client
        .update_deal(
            &auth,
            &UpdateDeal { deal_id: "424242".into(), stage: None, amount: Some(1.0), close_date: None },
        )
        .await;
    assert!(matches!(missing, Err(ProviderError::NotFound { .. })), "{missing:?}");
    let invalid = client
        .create_contact(
            &auth,
            &ContactInput {
                email: Some("not-an-email".into()),
                first_name: None,
                last_name: None,
                phone: None,
                company_id: None,
                title: None,
                marker: "m-invalid".into(),
            },
        )
        .await
        .expect_err("invalid");
    assert!(
        matches!(&invalid, ProviderError::Rejected { field: Some(f), status: 400, .. } if f == "email"),
        "{invalid:?}"
    );

    // A create whose answer is lost: outcome unknown, and exactly one object exists.
    fault(&env, json!({ "times": 1, "method": "POST", "path": "/crm/v3/objects/tasks", "action": { "type": "drop_after_commit" } })).await;
    let task = crate::support::task("Lost answer", "act-lost-1");
    assert!(matches!(client.create_task(&auth, &task).await, Err(ProviderError::OutcomeUnknown { .. })));
    let found = client.find_by_marker(&auth, ActionObject::Task, "act-lost-1").await.expect("find").value;
    assert!(found.is_some(), "the lost create happened");
    let created = env.control.get(&format!("hubspot/accounts/{HUB}/created?contains=act-lost-1")).await;
    assert_eq!(created["count"], 1);
    // Retrying the create is refused as a duplicate, never a second task.
    assert!(matches!(client.create_task(&auth, &task).await, Err(ProviderError::Conflict { .. })));

    // A hung connection: a read is transient, a write is outcome-unknown.
    let slow = crm_jobs::providers::Clients::new(Http::with_timeout(Duration::from_secs(1)).expect("http"));
    let slow = slow.get(crm_jobs::providers::Provider::Hubspot);
    fault(&env, json!({ "times": 2, "action": { "type": "hang", "ms": 5000 } })).await;
    assert!(matches!(
        slow.get(&auth, ObjectKind::Contact, "1").await,
        Err(ProviderError::Transient { status: None, .. })
    ));
    let hung = CreateTask { marker: "act-hung".into(), ..task };
    assert!(matches!(slow.create_task(&auth, &hung).await, Err(ProviderError::OutcomeUnknown { .. })));
    env.control.clear_faults().await;
}
