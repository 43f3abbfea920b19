//! Objects: listing, get, create, update, archive, batch, associations, validation.

use crate::support::{config, ids, start};
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[tokio::test]
async fn pagination_returns_every_record_exactly_once() {
    let env = start(config(237)).await;
    env.unthrottle().await;
    let all = env.list_all("contacts", &env.pat, "").await;
    let got = ids(&all);
    let unique: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), 237, "every record listed");
    assert_eq!(unique.len(), 237, "no record listed twice");
    // Default properties of contacts, all strings.
    let props = all[0]["properties"].as_object().expect("properties");
    let names: Vec<&str> = props.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec!["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"]
    );
    assert!(props.values().all(Value::is_string));
    assert_eq!(all[0]["archived"], json!(false));
}

#[tokio::test]
async fn paging_link_and_limit_cap() {
    let env = start(config(150)).await;
    let r = env.get("/crm/v3/objects/companies?limit=500&properties=name,domain", &env.pat).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["results"].as_array().expect("results").len(), 100, "limit is capped at 100");
    let link = v["paging"]["next"]["link"].as_str().expect("link");
    assert!(link.starts_with(&env.api), "link is absolute: {link}");
    let next =
        crate::support::read(env.http.get(link).bearer_auth(&env.pat).send().await.expect("follow link"))
            .await;
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["results"].as_array().expect("results").len(), 50);
    // Requested properties plus the always-returned ones; unset requested ones are null.
    let first = &v["results"][0]["properties"];
    let keys: Vec<&str> = first.as_object().expect("obj").keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"]);
    // Default page size is 10.
    let d = env.get("/crm/v3/objects/companies", &env.pat).await.json();
    assert_eq!(d["results"].as_array().expect("results").len(), 10);
}

#[tokio::test]
async fn listing_during_concurrent_changes_loses_and_repeats_nothing() {
    let env = start(config(120)).await;
    env.unthrottle().await;
    let before = ids(&env.list_all("deals", &env.pat, "").await);
    // Scan page by page, changing data "as another user" between pages.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut deleted = Vec::new();
    loop {
        let mut path = "/crm/v3/objects/deals?limit=25".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let v = env.get(&path, &env.pat).await.json();
        seen.extend(ids(v["results"].as_array().expect("results")));
        let log = env
            .ctl_ok(
                "POST",
                &format!("/_sandbox/hubspot/accounts/{}/mutations", env.hub),
                Some(json!({"creates": 2, "updates": 3, "deletes": 1, "objects": ["deals"]})),
            )
            .await;
        for id in log["deleted"]["deals"].as_array().into_iter().flatten() {
            deleted.push(id.as_str().expect("id").to_owned());
        }
        match v["paging"]["next"]["after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no deal listed twice");
    for id in before.iter().filter(|i| !deleted.contains(i)) {
        assert!(unique.contains(id), "deal {id} live throughout the scan was missed");
    }
}

#[tokio::test]
async fn duplicate_contact_email_is_409_with_the_existing_id() {
    let env = start(config(3)).await;
    let r = env
        .post(
            "/crm/v3/objects/contacts",
            &env.access,
            &json!({"properties": {"email": "jane@x.com", "firstname": "Jane", "lastname": "Doe"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["properties"]["email"], json!("jane@x.com"));
    assert_eq!(created["properties"]["hs_object_id"], json!(id));
    let dup = env
        .post("/crm/v3/objects/contacts", &env.access, &json!({"properties": {"email": "JANE@x.com"}}))
        .await;
    assert_eq!(dup.status, 409);
    let body = dup.json();
    assert_eq!(body["status"], json!("error"));
    assert_eq!(body["category"], json!("CONFLICT"));
    assert_eq!(body["message"], json!(format!("Contact already exists. Existing ID: {id}")));
    assert!(body["correlationId"].is_string());
    assert_eq!(dup.header("content-type").as_deref(), Some("application/json;charset=utf-8"));
}

#[tokio::test]
async fn unique_action_id_property_rejects_a_second_create() {
    let env = start(config(3)).await;
    let contact = env.get("/crm/v3/objects/contacts?limit=1", &env.pat).await.json()["results"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let body = json!({
        "properties": {
            "hs_timestamp": "2026-01-31T17:00:00Z",
            "hs_task_subject": "Follow up [act-42]",
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hs_task_type": "TODO",
            "crm_fleet_action_id": "act-42"
        },
        "associations": [{"to": {"id": contact}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}]}]
    });
    let first = env.post("/crm/v3/objects/tasks", &env.pat, &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(first.json()["properties"]["hs_timestamp"], json!("2026-01-31T17:00:00.000Z"));
    let second = env.post("/crm/v3/objects/tasks", &env.pat, &body).await;
    assert_eq!(second.status, 409);
    assert!(
        second.json()["message"].as_str().expect("message").ends_with(&format!("Existing ID: {id}")),
        "{}",
        second.text
    );
    // The association is visible from the task.
    let got = env.get(&format!("/crm/v3/objects/tasks/{id}?associations=contacts"), &env.pat).await.json();
    assert_eq!(
        got["associations"]["contacts"]["results"],
        json!([{"id": contact, "type": "task_to_contact"}])
    );
    // The control plane saw exactly one object with the marker.
    let created = env
        .ctl_ok("GET", &format!("/_sandbox/hubspot/accounts/{}/created?contains=act-42", env.hub), None)
        .await;
    assert_eq!(created["count"], json!(1));
}

#[tokio::test]
async fn invalid_writes_get_validation_errors() {
    let env = start(config(2)).await;
    let unknown = env
        .post("/crm/v3/objects/contacts", &env.pat, &json!({"properties": {"favourite_colour": "red"}}))
        .await;
    assert_eq!(unknown.status, 400);
    let b = unknown.json();
    assert_eq!(b["category"], json!("VALIDATION_ERROR"));
    assert_eq!(b["errors"][0]["code"], json!("PROPERTY_DOESNT_EXIST"));
    assert!(b["message"].as_str().expect("message").starts_with("Property values were not valid"));

    let missing =
        env.post("/crm/v3/objects/tasks", &env.pat, &json!({"properties": {"hs_task_subject": "x"}})).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["errors"][0]["code"], json!("REQUIRED_PROPERTY"));

    let bad_option = env
        .post(
            "/crm/v3/objects/tasks",
            &env.pat,
            &json!({"properties": {"hs_timestamp": "2026-01-01T00:00:00Z", "hs_task_status": "DONE"}}),
        )
        .await;
    assert_eq!(bad_option.status, 400);
    assert_eq!(bad_option.json()["errors"][0]["code"], json!("INVALID_OPTION"));

    let bad_assoc = env
        .post(
            "/crm/v3/objects/notes",
            &env.pat,
            &json!({"properties": {"hs_timestamp": "2026-01-01T00:00:00Z", "hs_note_body": "x"},
                    "associations": [{"to": {"id": "100001"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 999}]}]}),
        )
        .await;
    assert_eq!(bad_assoc.status, 400, "{}", bad_assoc.text);
    assert_eq!(bad_assoc.json()["category"], json!("VALIDATION_ERROR"));

    let bad_json = crate::support::read(
        env.http
            .post(format!("{}/crm/v3/objects/notes", env.api))
            .bearer_auth(&env.pat)
            .header("content-type", "application/json")
            .body("{\"properties\": ")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(bad_json.status, 400);
    assert!(bad_json.json()["message"].as_str().expect("msg").starts_with("Invalid input JSON"));

    let unknown_type = env.get("/crm/v3/objects/widgets", &env.pat).await;
    assert_eq!(unknown_type.status, 400);
}

#[tokio::test]
async fn get_by_email_update_and_not_found() {
    let env = start(config(2)).await;
    let created = env
        .post(
            "/crm/v3/objects/contacts",
            &env.pat,
            &json!({"properties": {"email": "ann@y.org", "firstname": "Ann"}}),
        )
        .await
        .json();
    let id = created["id"].as_str().expect("id");
    let by_email = env.get("/crm/v3/objects/contacts/ann@y.org?idProperty=email", &env.pat).await;
    assert_eq!(by_email.status, 200);
    assert_eq!(by_email.json()["id"], json!(id));
    let patched = env
        .patch(
            "/crm/v3/objects/contacts/ann@y.org?idProperty=email",
            &env.pat,
            &json!({"properties": {"phone": "+358 40 123"}}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let p = patched.json();
    assert_eq!(p["properties"]["phone"], json!("+358 40 123"));
    assert_eq!(p["properties"]["firstname"], json!("Ann"));
    let missing = env.get("/crm/v3/objects/contacts/nobody@y.org?idProperty=email", &env.pat).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], json!("resource not found"));
    let bad_id_prop = env.get("/crm/v3/objects/contacts/x?idProperty=firstname", &env.pat).await;
    assert_eq!(bad_id_prop.status, 400);
}

#[tokio::test]
async fn deletes_are_visible_through_archived_true() {
    let env = start(config(5)).await;
    let first = env.get("/crm/v3/objects/contacts?limit=1", &env.pat).await.json();
    let id = first["results"][0]["id"].as_str().expect("id").to_owned();
    let del = env.delete(&format!("/crm/v3/objects/contacts/{id}"), &env.pat).await;
    assert_eq!(del.status, 204);
    assert_eq!(env.get(&format!("/crm/v3/objects/contacts/{id}"), &env.pat).await.status, 404);
    let live = ids(&env.list_all("contacts", &env.pat, "").await);
    assert!(!live.contains(&id));
    assert_eq!(live.len(), 4);
    let archived = env.list_all("contacts", &env.pat, "&archived=true").await;
    assert_eq!(ids(&archived), vec![id.clone()]);
    assert_eq!(archived[0]["archived"], json!(true));
    assert_eq!(archived[0]["archivedAt"], json!(env.sb.clock().reading().now));
    let one = env.get(&format!("/crm/v3/objects/contacts/{id}?archived=true"), &env.pat).await;
    assert_eq!(one.status, 200);
    // Its email is free again.
    let email = env
        .ctl_ok("GET", &format!("/_sandbox/hubspot/accounts/{}/objects/contacts/{id}", env.hub), None)
        .await["properties"]["email"]
        .clone();
    let again =
        env.post("/crm/v3/objects/contacts", &env.pat, &json!({"properties": {"email": email}})).await;
    assert_eq!(again.status, 201);
}

#[tokio::test]
async fn batch_endpoints() {
    let env = start(config(3)).await;
    // Multi-status create: every input carries an objectWriteTraceId.
    env.post("/crm/v3/objects/contacts", &env.pat, &json!({"properties": {"email": "taken@z.com"}})).await;
    let r = env
        .post(
            "/crm/v3/objects/contacts/batch/create",
            &env.pat,
            &json!({"inputs": [
                {"properties": {"email": "new1@z.com"}, "objectWriteTraceId": "t1"},
                {"properties": {"email": "taken@z.com"}, "objectWriteTraceId": "t2"},
                {"properties": {"email": "new2@z.com"}, "objectWriteTraceId": "t3"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 207, "{}", r.text);
    let b = r.json();
    assert_eq!(b["numErrors"], json!(1));
    assert_eq!(b["errors"][0]["category"], json!("CONFLICT"));
    assert_eq!(b["errors"][0]["context"]["objectWriteTraceId"], json!(["t2"]));
    assert_eq!(b["results"].as_array().expect("results").len(), 2);
    assert_eq!(b["status"], json!("COMPLETE"));

    // Without trace ids the batch is all-or-nothing.
    let r = env
        .post(
            "/crm/v3/objects/contacts/batch/create",
            &env.pat,
            &json!({"inputs": [{"properties": {"email": "new3@z.com"}}, {"properties": {"email": "taken@z.com"}}]}),
        )
        .await;
    assert_eq!(r.status, 409);
    let none = env.get("/crm/v3/objects/contacts/new3@z.com?idProperty=email", &env.pat).await;
    assert_eq!(none.status, 404, "nothing of a failed batch is created");

    // Upsert by email: one update, one create.
    let r = env
        .post(
            "/crm/v3/objects/contacts/batch/upsert",
            &env.pat,
            &json!({"inputs": [
                {"idProperty": "email", "id": "taken@z.com", "properties": {"firstname": "Tak"}},
                {"idProperty": "email", "id": "fresh@z.com", "properties": {"firstname": "Fre"}}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let flags: Vec<(Value, Value)> = b["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| (x["properties"]["email"].clone(), x["new"].clone()))
        .collect();
    assert_eq!(flags, vec![(json!("taken@z.com"), json!(false)), (json!("fresh@z.com"), json!(true))]);

    // Read with a missing id → 207 with OBJECT_NOT_FOUND.
    let r = env
        .post(
            "/crm/v3/objects/contacts/batch/read",
            &env.pat,
            &json!({"inputs": [{"id": "fresh@z.com"}, {"id": "ghost@z.com"}], "idProperty": "email", "properties": ["firstname"]}),
        )
        .await;
    assert_eq!(r.status, 207);
    assert_eq!(r.json()["errors"][0]["context"]["ids"], json!(["ghost@z.com"]));

    // Update with a missing id → 207.
    let r = env
        .post(
            "/crm/v3/objects/contacts/batch/update",
            &env.pat,
            &json!({"inputs": [{"id": "999999999", "properties": {"firstname": "X"}, "objectWriteTraceId": "u1"}]}),
        )
        .await;
    assert_eq!(r.status, 207);
    assert_eq!(r.json()["errors"][0]["context"]["objectWriteTraceId"], json!(["u1"]));

    // More than 100 inputs → 400.
    let inputs: Vec<Value> = (0..101).map(|i| json!({"id": i.to_string()})).collect();
    let r = env.post("/crm/v3/objects/contacts/batch/archive", &env.pat, &json!({"inputs": inputs})).await;
    assert_eq!(r.status, 400);
    let r = env
        .post("/crm/v3/objects/contacts/batch/archive", &env.pat, &json!({"inputs": [{"id": "100001"}]}))
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn deals_respect_pipelines_and_values_are_strings() {
    let env = start(config(2)).await;
    let pipelines = env.get("/crm/v3/pipelines/deals", &env.pat).await.json();
    let stages: Vec<String> = pipelines["results"][0]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(stages.contains(&"closedwon".to_owned()));
    let deal = env
        .post(
            "/crm/v3/objects/deals",
            &env.pat,
            &json!({"properties": {"dealname": "Big", "dealstage": "appointmentscheduled", "amount": 5000}}),
        )
        .await;
    assert_eq!(deal.status, 201, "{}", deal.text);
    let d = deal.json();
    assert_eq!(d["properties"]["amount"], json!("5000"));
    assert_eq!(d["properties"]["pipeline"], json!("default"));
    let id = d["id"].as_str().expect("id");
    let wrong = env
        .patch(
            &format!("/crm/v3/objects/deals/{id}"),
            &env.pat,
            &json!({"properties": {"dealstage": "75650211"}}),
        )
        .await;
    assert_eq!(wrong.status, 400, "a stage of another pipeline is rejected");
    let ok = env
        .patch(
            &format!("/crm/v3/objects/deals/{id}"),
            &env.pat,
            &json!({"properties": {"dealstage": "closedwon", "closedate": "2026-02-01T00:00:00Z", "amount": "7500"}}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["properties"]["dealstage"], json!("closedwon"));
    // The same handlers serve the date-versioned path.
    let v = env.get(&format!("/crm/objects/2026-03/deals/{id}"), &env.pat).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["properties"]["amount"], json!("7500"));
}
