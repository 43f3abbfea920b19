//! sObject REST: create, read, update, delete, validation errors, External ID upsert (201/200/300,
//! `updateOnly`), `composite/sobjects` with `allOrNone`, duplicate handling, and created counters.

use crate::salesforce_support::{V, config, start};
use serde_json::{Value, json};

fn valid_suffix(id: &str) -> bool {
    const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let b = id.as_bytes();
    id.len() == 18
        && (0..3).all(|chunk| {
            let flags: usize = (0..5).filter(|j| b[chunk * 5 + j].is_ascii_uppercase()).map(|j| 1 << j).sum();
            b[15 + chunk] == SUFFIX[flags]
        })
}

#[tokio::test]
async fn create_read_update_delete_a_contact() {
    let env = start(config(3)).await;
    let account =
        env.all("SELECT Id FROM Account LIMIT 1", None).await[0]["Id"].as_str().expect("id").to_owned();
    let r = env
        .post(
            "/sobjects/Contact",
            &env.access,
            &json!({"FirstName": "Jane", "LastName": "Doe", "Email": "jane@x.com", "AccountId": account}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let b = r.json();
    assert_eq!((b["success"].clone(), b["errors"].clone()), (json!(true), json!([])));
    let id = b["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("003") && valid_suffix(&id), "{id}");
    let got = env.get(&format!("/sobjects/Contact/{id}"), &env.access).await.json();
    assert_eq!(got["Name"], json!("Jane Doe"), "Name is derived");
    assert_eq!(got["AccountId"], json!(account));
    assert_eq!(got["CreatedDate"], json!("2026-01-05T09:00:00.000+0000"));
    assert_eq!(got["attributes"]["url"], json!(format!("/services/data/{V}/sobjects/Contact/{id}")));
    // The 15-character form works too, and ?fields= narrows the answer.
    let short =
        env.get(&format!("/sobjects/Contact/{}?fields=Email,LastName", &id[..15]), &env.access).await.json();
    assert_eq!(short, json!({"attributes": got["attributes"], "Email": "jane@x.com", "LastName": "Doe"}));
    env.advance("90s").await;
    let p = env
        .patch(
            &format!("/sobjects/Contact/{id}"),
            &env.access,
            &json!({"Phone": "+1-555-0100", "Title": null}),
        )
        .await;
    assert_eq!(p.status, 204);
    assert!(p.text.is_empty());
    let got = env.get(&format!("/sobjects/Contact/{id}"), &env.access).await.json();
    assert_eq!(got["Phone"], json!("+1-555-0100"));
    assert_eq!(got["SystemModstamp"], json!("2026-01-05T09:01:30.000+0000"));
    assert_eq!(got["LastModifiedDate"], json!("2026-01-05T09:01:30.000+0000"));
    let d = env.delete(&format!("/sobjects/Contact/{id}"), &env.access).await;
    assert_eq!(d.status, 204);
    let gone = env.get(&format!("/sobjects/Contact/{id}"), &env.access).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.json(),
        json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}])
    );
    let again = env.patch(&format!("/sobjects/Contact/{id}"), &env.access, &json!({"Phone": "1"})).await;
    assert_eq!((again.status, again.json()[0]["errorCode"].clone()), (404, json!("ENTITY_IS_DELETED")));
    let wrong_type = env.get(&format!("/sobjects/Account/{id}"), &env.access).await;
    assert_eq!(wrong_type.status, 404);
    // The control plane reads the record as stored (deleted ones too).
    let stored = env.ctl_ok("GET", &env.org_path(&format!("/objects/Contact/{id}")), None).await;
    assert_eq!(stored["IsDeleted"], json!(true));
    assert_eq!(env.counters().await["created"]["Contact"], json!(1));
}

#[tokio::test]
async fn writes_are_validated_like_the_real_api() {
    let env = start(config(2)).await;
    let contact =
        env.all("SELECT Id FROM Contact LIMIT 1", None).await[0]["Id"].as_str().expect("id").to_owned();
    let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        ("/sobjects/Contact", json!({"FirstName": "No"}), "REQUIRED_FIELD_MISSING", Some("LastName")),
        (
            "/sobjects/Contact",
            json!({"LastName": "X", "Email": "not-an-email"}),
            "INVALID_EMAIL_ADDRESS",
            Some("Email"),
        ),
        ("/sobjects/Contact", json!({"LastName": "X", "Nope__c": 1}), "INVALID_FIELD", None),
        ("/sobjects/Contact", json!({"LastName": "X", "Id": contact}), "INVALID_FIELD", None),
        (
            "/sobjects/Contact",
            json!({"LastName": "X", "Name": "Y"}),
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            Some("Name"),
        ),
        (
            "/sobjects/Contact",
            json!({"LastName": "X", "AccountId": contact}),
            "FIELD_INTEGRITY_EXCEPTION",
            Some("AccountId"),
        ),
        (
            "/sobjects/Opportunity",
            json!({"Name": "D", "StageName": "Nope", "CloseDate": "2026-02-01"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            Some("StageName"),
        ),
        (
            "/sobjects/Opportunity",
            json!({"Name": "D", "StageName": "Prospecting"}),
            "REQUIRED_FIELD_MISSING",
            Some("CloseDate"),
        ),
        (
            "/sobjects/Opportunity",
            json!({"Name": "D", "StageName": "Prospecting", "CloseDate": "2026-02-01", "Amount": "lots"}),
            "JSON_PARSER_ERROR",
            None,
        ),
        (
            "/sobjects/Note",
            json!({"Title": "t".repeat(81), "ParentId": contact}),
            "STRING_TOO_LONG",
            Some("Title"),
        ),
    ];
    for (path, body, code, field) in cases {
        let r = env.post(path, &env.access, &body).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text);
        let e = &r.json()[0];
        assert_eq!(e["errorCode"], json!(code), "{body}: {}", r.text);
        if let Some(f) = field {
            assert_eq!(e["fields"], json!([f]), "{body}");
        }
    }
    let r = env.send("POST", &env.data("/sobjects/Contact"), &env.access, None, None).await;
    assert_eq!(r.json()[0]["errorCode"], json!("JSON_PARSER_ERROR"));
    let r = env.post("/sobjects/Widget", &env.access, &json!({})).await;
    assert_eq!(r.status, 404);
    // Nothing was written.
    assert_eq!(env.counters().await["created"], json!({}));
}

#[tokio::test]
async fn external_id_upsert_creates_once_then_updates() {
    let env = start(config(2)).await;
    let contact =
        env.all("SELECT Id FROM Contact LIMIT 1", None).await[0]["Id"].as_str().expect("id").to_owned();
    let path = "/sobjects/Task/CrmFleet_Action_Id__c/act-1";
    let body =
        json!({"Subject": "Follow up", "WhoId": contact, "ActivityDate": "2026-01-31", "Priority": "High"});
    let first = env.patch(path, &env.access, &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(first.json(), json!({"id": id, "success": true, "errors": [], "created": true}));
    let second = env.patch(path, &env.access, &body).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json(), json!({"id": id, "success": true, "errors": [], "created": false}));
    let tasks = env
        .all("SELECT Id, Status, CrmFleet_Action_Id__c FROM Task WHERE CrmFleet_Action_Id__c = 'ACT-1'", None)
        .await;
    assert_eq!(tasks.len(), 1, "a retried upsert never duplicates; matching is case-insensitive");
    assert_eq!(tasks[0]["Status"], json!("Not Started"), "defaults apply on create");
    let by_ext = env.get(path, &env.access).await;
    assert_eq!(by_ext.json()["Id"], json!(id));
    // Older API versions answer 204 on the update path.
    let old = env
        .send("PATCH", &format!("{}/services/data/v45.0{path}", env.instance), &env.access, Some(&body), None)
        .await;
    assert_eq!(old.status, 204);
    // updateOnly never creates; unknown external-id fields are 404.
    let r = env.patch("/sobjects/Task/CrmFleet_Action_Id__c/act-2?updateOnly=true", &env.access, &body).await;
    assert_eq!(r.status, 404);
    let r = env.patch("/sobjects/Task/Nope__c/act-2", &env.access, &body).await;
    assert_eq!(
        r.json(),
        json!([{"message": "Provided external ID field does not exist or is not accessible: Nope__c", "errorCode": "NOT_FOUND"}])
    );
    // A plain create with a taken External ID value names the holder.
    let dup = env
        .post("/sobjects/Task", &env.access, &json!({"Subject": "x", "CrmFleet_Action_Id__c": "act-1"}))
        .await;
    assert_eq!(dup.status, 400);
    assert_eq!(
        dup.json(),
        json!([{"message": format!("duplicate value found: CrmFleet_Action_Id__c duplicates value on record with id: {id}"), "errorCode": "DUPLICATE_VALUE"}])
    );
    // Create-only fields are refused when the upsert turns into an update.
    let note = json!({"Title": "Call notes", "Body": "text", "ParentId": contact});
    assert_eq!(env.patch("/sobjects/Note/CrmFleet_Action_Id__c/n-1", &env.access, &note).await.status, 201);
    let r = env.patch("/sobjects/Note/CrmFleet_Action_Id__c/n-1", &env.access, &note).await;
    assert_eq!((r.status, r.json()[0]["errorCode"].clone()), (400, json!("INVALID_FIELD_FOR_INSERT_UPDATE")));
    // Without uniqueness two records can share a value: the upsert is ambiguous (300).
    env.settings(json!({"unique_external_ids": false})).await;
    for _ in 0..2 {
        assert_eq!(
            env.post(
                "/sobjects/Task",
                &env.access,
                &json!({"Subject": "y", "CrmFleet_Action_Id__c": "act-9"})
            )
            .await
            .status,
            201
        );
    }
    let r =
        env.patch("/sobjects/Task/CrmFleet_Action_Id__c/act-9", &env.access, &json!({"Subject": "z"})).await;
    assert_eq!(r.status, 300);
    assert_eq!(r.json().as_array().map(Vec::len), Some(2));
    // The org toggle that removes the field from Note.
    env.settings(json!({"note_external_id": false})).await;
    assert_eq!(env.patch("/sobjects/Note/CrmFleet_Action_Id__c/n-2", &env.access, &note).await.status, 404);
    let c = env.counters().await;
    assert_eq!(c["created"], json!({"Note": 1, "Task": 3}));
}

#[tokio::test]
async fn composite_sobjects_all_or_none() {
    let env = start(config(2)).await;
    let before = env.ctl_ok("GET", &env.org_path(""), None).await;
    let records = json!([
        {"attributes": {"type": "Contact"}, "LastName": "One"},
        {"attributes": {"type": "Contact"}, "FirstName": "Missing"},
        {"attributes": {"type": "Account"}, "Name": "Acme"},
    ]);
    let r =
        env.post("/composite/sobjects", &env.access, &json!({"allOrNone": true, "records": records})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b[1]["errors"][0]["statusCode"], json!("REQUIRED_FIELD_MISSING"));
    assert_eq!(b[0]["errors"][0]["statusCode"], json!("ALL_OR_NONE_OPERATION_ROLLED_BACK"));
    assert_eq!(b[2]["success"], json!(false));
    let after = env.ctl_ok("GET", &env.org_path(""), None).await;
    assert_eq!(after["digest"], before["digest"], "nothing written");
    assert_eq!(after["journal_last_seq"], before["journal_last_seq"]);
    let r = env
        .post("/composite/sobjects", &env.access, &json!({"allOrNone": false, "records": records}))
        .await
        .json();
    assert_eq!(
        r.as_array().map(|a| a.iter().map(|x| x["success"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(true), json!(false), json!(true)])
    );
    assert!(r[0]["id"].as_str().is_some_and(|i| i.starts_with("003")));
    assert!(r[2]["id"].as_str().is_some_and(|i| i.starts_with("001")));
    // Updates carry Id; over 200 records is refused.
    let id = r[0]["id"].as_str().expect("id");
    let u = env
        .patch(
            "/composite/sobjects",
            &env.access,
            &json!({"records": [{"attributes": {"type": "Contact"}, "Id": id, "Title": "CEO"}]}),
        )
        .await
        .json();
    assert_eq!(u, json!([{"id": id, "success": true, "errors": []}]));
    let many: Vec<Value> =
        (0..201).map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("A{i}")})).collect();
    assert_eq!(env.post("/composite/sobjects", &env.access, &json!({"records": many})).await.status, 400);
    assert_eq!(env.counters().await["created"], json!({"Account": 1, "Contact": 1}));
}

#[tokio::test]
async fn the_contact_duplicate_rule_names_the_existing_record() {
    let env = start(config(2)).await;
    env.settings(json!({"contact_duplicate_rule": true})).await;
    let existing = env.all("SELECT Id, Email FROM Contact LIMIT 1", None).await[0].clone();
    let r = env
        .post("/sobjects/Contact", &env.access, &json!({"LastName": "Dup", "Email": existing["Email"]}))
        .await;
    assert_eq!(r.status, 400);
    let e = &r.json()[0];
    assert_eq!(e["errorCode"], json!("DUPLICATES_DETECTED"));
    assert_eq!(e["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]["Id"], existing["Id"]);
}
