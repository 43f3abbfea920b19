//! Zoho records: listing (`fields`, `page`, `page_token`, `If-Modified-Since`, 304/204), get, writes
//! with per-record results, upsert by the crm-fleet marker, deletes and `/deleted`, related notes.

use crate::zoho_support::{id_set, zconfig, zids, zstart};
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[tokio::test]
async fn listing_requires_fields_and_pages_every_record_once() {
    let env = zstart(zconfig(450)).await;
    env.unthrottle().await;
    let z = env.sb.zoho().expect("the typed accessor reaches the imitation");
    assert_eq!(z.accounts().len(), 1);
    assert_eq!(z.accounts()[0].org_id, env.org);
    let r = env.get("/crm/v7/Contacts", &env.access).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"code": "REQUIRED_PARAM_MISSING", "details": {"param_name": "fields"}, "message": "required param is missing", "status": "error"})
    );
    let first = env
        .get("/crm/v7/Contacts?fields=Last_Name,Email,Account_Name&per_page=200", &env.access)
        .await
        .json();
    let info = &first["info"];
    assert_eq!(
        (info["count"].clone(), info["page"].clone(), info["more_records"].clone()),
        (json!(200), json!(1), json!(true))
    );
    assert_eq!((info["sort_by"].clone(), info["sort_order"].clone()), (json!("id"), json!("desc")));
    assert!(info["next_page_token"].is_string() && info["page_token_expiry"].is_string());
    let row = &first["data"][0];
    assert_eq!(row.as_object().expect("object").len(), 4, "id plus the three fields: {row}");
    assert!(row["Account_Name"]["id"].is_string() && row["Account_Name"]["name"].is_string());
    let all = env.list_all("Contacts", "fields=Last_Name&sort_by=Modified_Time&sort_order=asc", None).await;
    assert_eq!(all.len(), 450);
    assert_eq!(id_set(&all).len(), 450, "every record exactly once");
    // Unknown fields and per_page above 200 are refused.
    assert_eq!(env.get("/crm/v7/Contacts?fields=Nope", &env.access).await.status, 400);
    assert_eq!(env.get("/crm/v7/Contacts?fields=Last_Name&per_page=201", &env.access).await.status, 400);
    // The v8 alias serves the same data.
    let v8 = env.get("/crm/v8/Contacts?fields=Last_Name&per_page=200", &env.access).await.json();
    assert_eq!(zids(v8["data"].as_array().expect("data")), zids(first["data"].as_array().expect("data")));
}

#[tokio::test]
async fn page_stops_at_two_thousand_and_page_tokens_continue() {
    let env = zstart(zconfig(0)).await;
    let org = env
        .ctl_ok(
            "POST",
            "/_sandbox/zoho/accounts",
            Some(json!({"dc": "us", "modules": {"Contacts": 2450}, "records": 0})),
        )
        .await;
    assert_eq!(org["counts"]["Contacts"], json!(2450));
    let env = crate::zoho_support::ZEnv {
        org: org["id"].as_str().expect("id").to_owned(),
        access: org["credentials"]["oauth"]["access_token"].as_str().expect("access").to_owned(),
        refresh: org["credentials"]["oauth"]["refresh_token"].as_str().expect("refresh").to_owned(),
        ..env
    };
    env.unthrottle().await;
    let q = "fields=Last_Name&sort_by=Modified_Time&sort_order=asc&per_page=200";
    let r = env.get(&format!("/crm/v7/Contacts?{q}&page=11"), &env.access).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], json!("DISCRETE_PAGINATION_LIMIT_EXCEEDED"));
    assert_eq!(r.json()["details"], json!({"limit": 2000}));
    let page10 = env.get(&format!("/crm/v7/Contacts?{q}&page=10"), &env.access).await.json();
    let token = page10["info"]["next_page_token"].as_str().expect("token").to_owned();
    // A token is bound to its parameters.
    let altered = env.get(&format!("/crm/v7/Contacts?fields=Email&sort_by=Modified_Time&sort_order=asc&per_page=200&page_token={token}"), &env.access).await;
    assert_eq!(altered.json()["code"], json!("TOKEN_BOUND_DATA_MISMATCH"));
    let both = env.get(&format!("/crm/v7/Contacts?{q}&page=2&page_token={token}"), &env.access).await;
    assert_eq!(both.json()["code"], json!("AMBIGUITY_DURING_PROCESSING"));
    let p11 = env.get(&format!("/crm/v7/Contacts?{q}&page_token={token}"), &env.access).await.json();
    assert_eq!(p11["info"]["page"], json!(11));
    assert_eq!(p11["info"]["count"], json!(200));
    let all = env
        .list_all(
            "Contacts",
            "fields=Last_Name,Modified_Time&sort_by=Modified_Time&sort_order=asc&per_page=200",
            None,
        )
        .await;
    assert_eq!(all.len(), 2450);
    assert_eq!(id_set(&all).len(), 2450);
    // Modified_Time ascending, ties by id.
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|r| {
            (r["Modified_Time"].as_str().expect("time").to_owned(), r["id"].as_str().expect("id").to_owned())
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by (Modified_Time, id)");
    // Tokens expire after a day.
    env.advance("1d").await;
    let fresh = env.fresh_tokens().await["access_token"].as_str().expect("access").to_owned();
    let late = env.get(&format!("/crm/v7/Contacts?{q}&page_token={token}"), &fresh).await;
    assert_eq!(late.json()["code"], json!("EXPIRED_VALUE"));
}

#[tokio::test]
async fn if_modified_since_returns_exactly_the_changed_records_then_304() {
    let env = zstart(zconfig(60)).await;
    env.unthrottle().await;
    let before = env.now().await;
    let fields = "fields=Last_Name,Modified_Time&sort_by=Modified_Time&sort_order=asc";
    let unchanged = env.get_since(&format!("/crm/v7/Contacts?{fields}"), &env.access, &before).await;
    assert_eq!(unchanged.status, 304, "nothing changed since now");
    assert!(unchanged.text.is_empty());
    env.advance("5s").await;
    let log = env
        .mutate(json!({"seed": 3, "creates": 5, "updates": 7, "deletes": 4, "objects": ["Contacts"]}))
        .await;
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for key in ["created", "updated"] {
        for id in log[key]["Contacts"].as_array().into_iter().flatten() {
            expected.insert(id.as_str().expect("id").to_owned());
        }
    }
    let deleted: BTreeSet<String> = log["deleted"]["Contacts"]
        .as_array()
        .expect("deletes")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    for d in &deleted {
        expected.remove(d);
    }
    let changed = env.list_all("Contacts", fields, Some(&before)).await;
    assert_eq!(id_set(&changed), expected);
    // Every returned record carries the mutation time with the org's offset, second precision.
    let stamp = changed[0]["Modified_Time"].as_str().expect("time");
    assert!(stamp.ends_with("-08:00") && stamp.len() == 25, "{stamp}");
    // The same second is excluded (strictly after), unless the setting says otherwise.
    let at = chrono::DateTime::parse_from_rfc3339(stamp).expect("time");
    let after = env.get_since(&format!("/crm/v7/Contacts?{fields}"), &env.access, stamp).await;
    assert_eq!(after.status, 304);
    env.settings(json!({"if_modified_since_inclusive": true})).await;
    let inclusive = env.list_all("Contacts", fields, Some(&at.to_rfc3339())).await;
    assert_eq!(id_set(&inclusive), expected);
    // Deletions show in /deleted, newest first, with If-Modified-Since.
    let del = env.get_since("/crm/v7/Contacts/deleted?type=all", &env.access, &before).await;
    assert_eq!(del.status, 200, "{}", del.text);
    let rows = del.json()["data"].as_array().expect("rows").clone();
    assert_eq!(id_set(&rows), deleted);
    assert!(rows.iter().all(|r| r["type"] == json!("recycle")
        && r["deleted_by"]["id"].is_string()
        && r["display_name"].is_string()));
    assert_eq!(env.get("/crm/v7/Contacts/deleted?type=permanent", &env.access).await.status, 204);
    // An empty module answers 204.
    for id in zids(&env.list_all("Notes", "fields=Note_Title", None).await) {
        env.ctl_ok("DELETE", &format!("/_sandbox/zoho/accounts/{}/objects/Notes/{id}", env.org), None).await;
    }
    assert_eq!(env.get("/crm/v7/Notes?fields=Note_Title", &env.access).await.status, 204);
    env.advance("60d").await;
    let fresh = env.fresh_tokens().await["access_token"].as_str().expect("a").to_owned();
    let permanent = env.get("/crm/v7/Contacts/deleted?type=permanent", &fresh).await.json();
    assert_eq!(
        id_set(permanent["data"].as_array().expect("rows")),
        deleted,
        "after the retention they are permanent"
    );
    assert!(permanent["data"][0]["display_name"].is_null());
}

#[tokio::test]
async fn writes_answer_per_record_results() {
    let env = zstart(zconfig(3)).await;
    let r = env
        .post(
            "/crm/v7/Contacts",
            &env.access,
            &json!({"data": [{"Last_Name": "Lee", "First_Name": "Ann", "Email": "ann.lee@x.example", "Phone": "+1 555 0100"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let b = r.json();
    assert_eq!(b["data"][0]["code"], json!("SUCCESS"));
    assert_eq!(b["data"][0]["message"], json!("record added"));
    let id = b["data"][0]["details"]["id"].as_str().expect("id").to_owned();
    assert_eq!(b["data"][0]["details"]["Created_By"]["name"], json!("Patricia Boyle"));
    let got = env.get(&format!("/crm/v7/Contacts/{id}"), &env.access).await.json();
    assert_eq!(got["data"][0]["Full_Name"], json!("Ann Lee"));
    assert_eq!(got["data"][0]["Email"], json!("ann.lee@x.example"));
    // Mixed results: 207, with Zoho's per-record error shapes.
    let mixed = env
        .post(
            "/crm/v7/Contacts",
            &env.access,
            &json!({"data": [
                {"Last_Name": "Ok"},
                {"First_Name": "NoLast"},
                {"Last_Name": "Dup", "Email": "ANN.LEE@x.example"},
                {"Last_Name": "Bad", "Email_Opt_Out": "yes"},
                {"Last_Name": "Unknown", "Bogus_Field": 1},
            ]}),
        )
        .await;
    assert_eq!(mixed.status, 207);
    let d = mixed.json()["data"].clone();
    assert_eq!(d[0]["status"], json!("success"));
    assert_eq!(
        d[1],
        json!({"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"}, "message": "required field not found", "status": "error"})
    );
    assert_eq!(d[2]["code"], json!("DUPLICATE_DATA"));
    assert_eq!(d[2]["details"]["api_name"], json!("Email"));
    assert_eq!(d[2]["details"]["duplicate_record"]["id"], json!(id));
    assert_eq!(d[2]["details"]["duplicate_record"]["module"]["api_name"], json!("Contacts"));
    assert_eq!(d[3]["details"]["expected_data_type"], json!("boolean"));
    assert_eq!(d[4]["details"]["api_name"], json!("Bogus_Field"));
    // All failed: 400 with data[].
    let failed = env.post("/crm/v7/Contacts", &env.access, &json!({"data": [{"First_Name": "x"}]})).await;
    assert_eq!(failed.status, 400);
    assert_eq!(failed.json()["data"][0]["code"], json!("MANDATORY_NOT_FOUND"));
    // More than 100 records is a request-level error.
    let many: Vec<Value> = (0..101).map(|i| json!({"Last_Name": format!("n{i}")})).collect();
    let too_many = env.post("/crm/v7/Contacts", &env.access, &json!({"data": many})).await;
    assert_eq!(too_many.json()["code"], json!("LIMIT_EXCEEDED"));
    // Update by id; stages are a picklist; unknown ids are INVALID_DATA with the id.
    let deals = env.get("/crm/v7/Deals?fields=Deal_Name,Modified_Time", &env.access).await.json();
    let deal = deals["data"][0]["id"].as_str().expect("deal").to_owned();
    env.advance("10s").await;
    let bad_stage =
        env.put(&format!("/crm/v7/Deals/{deal}"), &env.access, &json!({"data": [{"Stage": "Won"}]})).await;
    assert_eq!(bad_stage.status, 400);
    assert_eq!(bad_stage.json()["data"][0]["details"]["api_name"], json!("Stage"));
    let upd = env
        .put(
            &format!("/crm/v7/Deals/{deal}"),
            &env.access,
            &json!({"data": [{"Stage": "Negotiation/Review", "Amount": 5000, "Closing_Date": "2026-02-01"}]}),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    assert_eq!(upd.json()["data"][0]["message"], json!("record updated"));
    let after = env.get(&format!("/crm/v7/Deals/{deal}"), &env.access).await.json()["data"][0].clone();
    assert_eq!(after["Stage"], json!("Negotiation/Review"));
    assert_eq!(after["Probability"], json!(90));
    assert_eq!(after["Amount"], json!(5000.0));
    assert_eq!(after["Closing_Date"], json!("2026-02-01"));
    let unknown =
        env.put("/crm/v7/Deals/4150868000009999999", &env.access, &json!({"data": [{"Amount": 1}]})).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(
        unknown.json()["data"][0],
        json!({"code": "INVALID_DATA", "details": {"id": "4150868000009999999"}, "message": "the id given seems to be invalid", "status": "error"})
    );
    let get_unknown = env.get("/crm/v7/Deals/4150868000009999999", &env.access).await;
    assert_eq!(get_unknown.status, 400);
    assert_eq!(get_unknown.json()["code"], json!("INVALID_DATA"));
    // Deletes.
    let del = env.delete(&format!("/crm/v7/Contacts/{id}"), &env.access).await;
    assert_eq!(
        del.json()["data"][0],
        json!({"code": "SUCCESS", "details": {"id": id}, "message": "record deleted", "status": "success"})
    );
    assert_eq!(env.get(&format!("/crm/v7/Contacts/{id}"), &env.access).await.status, 400);
    env.settings(json!({"get_unknown_id": "no_content"})).await;
    assert_eq!(env.get(&format!("/crm/v7/Contacts/{id}"), &env.access).await.status, 204);
    // Unknown module and URL.
    assert_eq!(env.get("/crm/v7/Leadz?fields=x", &env.access).await.json()["code"], json!("INVALID_MODULE"));
    let bad_url = env.get("/crm/v7/Contacts/1/2/3/4", &env.access).await;
    assert_eq!((bad_url.status, bad_url.json()["code"].clone()), (404, json!("INVALID_URL_PATTERN")));
}

#[tokio::test]
async fn upsert_on_the_marker_field_creates_once_then_updates() {
    let env = zstart(zconfig(3)).await;
    let contact = env.get("/crm/v7/Contacts?fields=Last_Name", &env.access).await.json()["data"][0]["id"]
        .as_str()
        .expect("contact")
        .to_owned();
    let deal = env.get("/crm/v7/Deals?fields=Deal_Name", &env.access).await.json()["data"][0]["id"]
        .as_str()
        .expect("deal")
        .to_owned();
    let body = json!({
        "data": [{
            "Subject": "Follow up", "Due_Date": "2026-01-31", "Status": "Not Started", "Priority": "High",
            "What_Id": {"id": deal}, "$se_module": "Deals", "Who_Id": {"id": contact},
            "CrmFleet_Action_Id": "act-1",
        }],
        "duplicate_check_fields": ["CrmFleet_Action_Id"],
    });
    let first = env.post("/crm/v7/Tasks/upsert", &env.access, &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let f = first.json()["data"][0].clone();
    assert_eq!(
        (f["action"].clone(), f["duplicate_field"].clone(), f["message"].clone()),
        (json!("insert"), json!(null), json!("record added"))
    );
    let second = env.post("/crm/v7/Tasks/upsert", &env.access, &body).await.json()["data"][0].clone();
    assert_eq!(
        (second["action"].clone(), second["duplicate_field"].clone()),
        (json!("update"), json!("CrmFleet_Action_Id"))
    );
    assert_eq!(second["details"]["id"], f["details"]["id"]);
    let task = env
        .get(&format!("/crm/v7/Tasks/{}", f["details"]["id"].as_str().expect("id")), &env.access)
        .await
        .json()["data"][0]
        .clone();
    assert_eq!(task["What_Id"]["id"], json!(deal));
    assert_eq!(task["$se_module"], json!("Deals"));
    assert_eq!(task["Who_Id"]["id"], json!(contact));
    assert_eq!(task["CrmFleet_Action_Id"], json!("act-1"));
    let created =
        env.ctl_ok("GET", &format!("/_sandbox/zoho/accounts/{}/created?contains=act-1", env.org), None).await;
    assert_eq!(created["count"], json!(1), "the second upsert did not create");
    // A plain create with the same marker is a duplicate.
    let dup = env
        .post(
            "/crm/v7/Tasks",
            &env.access,
            &json!({"data": [{"Subject": "x", "CrmFleet_Action_Id": "act-1"}]}),
        )
        .await;
    assert_eq!(dup.json()["data"][0]["code"], json!("DUPLICATE_DATA"));
    // Duplicate check fields must be unique fields.
    let bad = env
        .post(
            "/crm/v7/Tasks/upsert",
            &env.access,
            &json!({"data": [{"Subject": "x"}], "duplicate_check_fields": ["Subject"]}),
        )
        .await;
    assert_eq!(bad.status, 400);
    // Calls and notes upsert the same way; notes take the v7 Parent_Id shape.
    let call = env
        .post(
            "/crm/v7/Calls/upsert",
            &env.access,
            &json!({"data": [{"Subject": "Call", "Call_Type": "Outbound", "Call_Start_Time": "2026-01-05T10:00:00+00:00",
                "Call_Duration": "05:00", "Who_Id": {"id": contact}, "CrmFleet_Action_Id": "act-2"}],
                "duplicate_check_fields": ["CrmFleet_Action_Id"]}),
        )
        .await;
    assert_eq!(call.status, 200, "{}", call.text);
    let call_id = call.json()["data"][0]["details"]["id"].as_str().expect("id").to_owned();
    let c = env.get(&format!("/crm/v7/Calls/{call_id}"), &env.access).await.json()["data"][0].clone();
    assert_eq!(c["Call_Duration_in_seconds"], json!(300));
    assert_eq!(c["Call_Start_Time"], json!("2026-01-05T02:00:00-08:00"));
    let no_duration = env
        .post("/crm/v7/Calls", &env.access, &json!({"data": [{"Subject": "c", "Call_Type": "Inbound", "Call_Start_Time": "2026-01-05T10:00:00+00:00"}]}))
        .await;
    assert_eq!(no_duration.json()["data"][0]["details"]["api_name"], json!("Call_Duration"));
    let note = env
        .post(
            "/crm/v7/Notes/upsert",
            &env.access,
            &json!({"data": [{"Note_Title": "T", "Note_Content": "Body", "CrmFleet_Action_Id": "act-3",
                "Parent_Id": {"module": {"api_name": "Contacts"}, "id": contact}}],
                "duplicate_check_fields": ["CrmFleet_Action_Id"]}),
        )
        .await;
    assert_eq!(note.status, 200, "{}", note.text);
    let related = env.get(&format!("/crm/v7/Contacts/{contact}/Notes"), &env.access).await.json();
    let notes = related["data"].as_array().expect("notes");
    let ours = notes.iter().find(|n| n["CrmFleet_Action_Id"] == json!("act-3")).expect("our note is related");
    assert_eq!(ours["Parent_Id"]["module"]["api_name"], json!("Contacts"));
    assert_eq!(ours["$se_module"], json!("Contacts"));
    // POST /{module}/{id}/Notes sets the parent from the path.
    let rel = env
        .post(
            &format!("/crm/v7/Deals/{deal}/Notes"),
            &env.access,
            &json!({"data": [{"Note_Content": "On the deal"}]}),
        )
        .await;
    assert_eq!(rel.status, 201, "{}", rel.text);
    let rel_id = rel.json()["data"][0]["details"]["id"].as_str().expect("id").to_owned();
    let n = env.get(&format!("/crm/v7/Notes/{rel_id}"), &env.access).await.json()["data"][0].clone();
    assert_eq!(n["Parent_Id"]["id"], json!(deal));
    // The upsert-on-Notes toggle.
    env.settings(json!({"notes_upsert": false})).await;
    let off = env.post("/crm/v7/Notes/upsert", &env.access, &json!({"data": [{"Note_Content": "x"}]})).await;
    assert_eq!((off.status, off.json()["code"].clone()), (400, json!("NOT_SUPPORTED")));
}
