//! Pipedrive objects: v2 listings (cursor paging, changed-since, sorting, filters), deletes and
//! purging, writes and validation, the marker custom field, person search, v1 notes, recents,
//! fields, and determinism.

use crate::pipedrive_support::{As, PdEnv, ids, pd_config, start_pd};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn set(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

fn log_ids(log: &Value, kind: &str, object: &str) -> BTreeSet<u64> {
    log[kind][object]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("id string").parse::<u64>().expect("numeric id"))
        .collect()
}

#[tokio::test]
async fn pagination_returns_every_record_exactly_once_in_every_sort() {
    let env = start_pd(pd_config(237)).await;
    env.unthrottle().await;
    for query in [
        "limit=50",
        "limit=50&sort_by=update_time&sort_direction=asc",
        "limit=33&sort_by=update_time&sort_direction=desc",
        "limit=500&sort_by=add_time",
        "sort_by=id&sort_direction=desc&limit=7",
    ] {
        let all = env.list_all(&format!("/api/v2/persons?{query}")).await;
        let got = ids(&all);
        assert_eq!(got.len(), 237, "{query}: every person listed");
        assert_eq!(set(&got).len(), 237, "{query}: no person listed twice");
    }
    // Order follows the sort, ties broken by id.
    let by_update = env.list_all("/api/v2/persons?limit=500&sort_by=update_time").await;
    let keys: Vec<(String, u64)> = by_update
        .iter()
        .map(|p| (p["update_time"].as_str().expect("time").to_owned(), p["id"].as_u64().expect("id")))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    // The documented v2 person shape.
    let p = &by_update[0];
    let mut names: Vec<&str> = p.as_object().expect("object").keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "add_time",
            "custom_fields",
            "emails",
            "first_name",
            "id",
            "is_deleted",
            "label_ids",
            "last_name",
            "name",
            "org_id",
            "owner_id",
            "phones",
            "picture_id",
            "update_time",
            "visible_to"
        ]
    );
    assert!(p["custom_fields"].as_object().expect("custom fields").contains_key(&env.marker_key));
    assert_eq!(
        p["update_time"].as_str().map(str::len),
        Some(20),
        "second precision RFC 3339: {}",
        p["update_time"]
    );
    // Default and maximum page sizes.
    let d = env.get("/api/v2/persons").await.json();
    assert_eq!(d["data"].as_array().expect("data").len(), 100);
    let over = env.get("/api/v2/persons?limit=501").await;
    assert_eq!(over.status, 400);
    assert_eq!(over.json()["error"], json!("Validation failed: limit: must be between 1 and 500"));
}

#[tokio::test]
async fn updated_since_is_inclusive_and_updated_until_exclusive() {
    let env = start_pd(pd_config(120)).await;
    env.unthrottle().await;
    let all = env.list_all("/api/v2/organizations?limit=500&sort_by=update_time").await;
    let pivot = all[60]["update_time"].as_str().expect("time").to_owned();
    let since = env
        .list_all(&format!("/api/v2/organizations?limit=500&sort_by=update_time&updated_since={pivot}"))
        .await;
    let until = env
        .list_all(&format!("/api/v2/organizations?limit=500&sort_by=update_time&updated_until={pivot}"))
        .await;
    let expect_since: Vec<u64> = all
        .iter()
        .filter(|o| o["update_time"].as_str() >= Some(pivot.as_str()))
        .map(|o| o["id"].as_u64().expect("id"))
        .collect();
    let expect_until: Vec<u64> = all
        .iter()
        .filter(|o| o["update_time"].as_str() < Some(pivot.as_str()))
        .map(|o| o["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids(&since), expect_since);
    assert_eq!(ids(&until), expect_until);
    assert_eq!(since.len() + until.len(), 120);
    assert!(since.iter().any(|o| o["update_time"] == json!(pivot)), "the bound itself is included");
    // Millisecond precision is rejected (third-party observation, on by default), as is junk.
    let ms = env.get("/api/v2/organizations?updated_since=2026-01-01T00:00:00.500Z").await;
    assert_eq!(ms.status, 400);
    assert_eq!(
        ms.json()["error"],
        json!("Validation failed: updated_since: must not have fractional seconds")
    );
    assert_eq!(env.get("/api/v2/organizations?updated_since=yesterday").await.status, 400);
    env.settings(json!({"reject_millisecond_timestamps": false})).await;
    assert_eq!(env.get("/api/v2/organizations?updated_since=2026-01-01T00:00:00.500Z").await.status, 200);
}

#[tokio::test]
async fn changed_since_returns_exactly_the_changes_of_a_mutation_batch() {
    let env = start_pd(pd_config(80)).await;
    env.unthrottle().await;
    env.advance("1h").await;
    let since = "2026-01-05T10:00:00Z";
    let log = env
        .mutate(json!({"seed": 3, "creates": 6, "updates": 12, "deletes": 4, "objects": ["persons"]}))
        .await;
    let (created, updated, deleted) = (
        log_ids(&log, "created", "persons"),
        log_ids(&log, "updated", "persons"),
        log_ids(&log, "deleted", "persons"),
    );
    assert_eq!(created.len(), 6);
    assert!(!deleted.is_empty());
    let changed =
        env.list_all(&format!("/api/v2/persons?updated_since={since}&sort_by=update_time&limit=500")).await;
    let expected: BTreeSet<u64> = created.union(&updated).copied().filter(|i| !deleted.contains(i)).collect();
    assert_eq!(set(&ids(&changed)), expected, "exactly the created and updated persons that still exist");
    assert_eq!(changed.len(), expected.len(), "each once");
    // Deletions: GET by id shows is_deleted, the listing does not, recents does.
    let gone = *deleted.iter().next().expect("a deleted person");
    let g = env.get(&format!("/api/v2/persons/{gone}")).await.json();
    assert_eq!(g["data"]["is_deleted"], json!(true));
    assert_eq!(g["data"]["update_time"], json!(since));
    let rec = env.get("/v1/recents?since_timestamp=2026-01-05%2010:00:00&items=person&limit=500").await;
    assert_eq!(rec.status, 200, "{}", rec.text);
    let rec = rec.json();
    let items = rec["data"].as_array().expect("recents");
    let inactive: BTreeSet<u64> = items
        .iter()
        .filter(|i| i["data"]["active_flag"] == json!(false))
        .map(|i| i["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(inactive, deleted);
    let active: BTreeSet<u64> = items
        .iter()
        .filter(|i| i["data"]["active_flag"] == json!(true))
        .map(|i| i["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(active, expected);
    assert_eq!(rec["additional_data"]["last_timestamp_on_page"], json!("2026-01-05 10:00:00"));
    // With the UNCONFIRMED toggle, updated_since listings carry the deleted rows too.
    env.settings(json!({"updated_since_includes_deleted": true})).await;
    let with_deleted = env.list_all(&format!("/api/v2/persons?updated_since={since}&limit=500")).await;
    let flagged: BTreeSet<u64> = with_deleted
        .iter()
        .filter(|p| p["is_deleted"] == json!(true))
        .map(|p| p["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(flagged, deleted);
}

#[tokio::test]
async fn deals_changes_span_open_archived_and_deleted_listings() {
    let env = start_pd(pd_config(60)).await;
    env.unthrottle().await;
    let live = env.list_all("/api/v2/deals?limit=500").await;
    let archived = env.list_all("/api/v2/deals/archived?limit=500").await;
    assert!(!archived.is_empty(), "seeded data has archived deals");
    assert!(archived.iter().all(|d| d["is_archived"] == json!(true)));
    assert!(live.iter().all(|d| d["is_archived"] == json!(false)));
    assert_eq!(live.len() + archived.len(), 60, "the default listing excludes archived deals");
    env.advance("1h").await;
    let log = env
        .mutate(json!({"seed": 11, "creates": 4, "updates": 25, "deletes": 5, "objects": ["deals"]}))
        .await;
    let (created, updated, deleted) = (
        log_ids(&log, "created", "deals"),
        log_ids(&log, "updated", "deals"),
        log_ids(&log, "deleted", "deals"),
    );
    let q = "updated_since=2026-01-05T10:00:00Z&sort_by=update_time&limit=500";
    let open = ids(&env.list_all(&format!("/api/v2/deals?{q}")).await);
    let arch = ids(&env.list_all(&format!("/api/v2/deals/archived?{q}")).await);
    let del = env.list_all(&format!("/api/v2/deals?status=deleted&{q}")).await;
    let expected: BTreeSet<u64> = created.union(&updated).copied().filter(|i| !deleted.contains(i)).collect();
    let mut seen = set(&open);
    seen.extend(arch.iter().copied());
    assert_eq!(seen, expected);
    assert_eq!(open.len() + arch.len(), expected.len());
    assert_eq!(set(&ids(&del)), deleted);
    assert!(del.iter().all(|d| d["is_deleted"] == json!(true)));
    // Status filters.
    let won = env.list_all("/api/v2/deals?status=won&limit=500").await;
    assert!(won.iter().all(|d| d["status"] == json!("won")));
    assert_eq!(env.get("/api/v2/deals?status=closed").await.status, 400);
}

#[tokio::test]
async fn soft_deleted_records_are_purged_after_thirty_days() {
    let env = start_pd(pd_config(5)).await;
    let first = env.get("/api/v2/deals?limit=1").await.json()["data"][0]["id"].as_u64().expect("id");
    let del = env.delete(&format!("/api/v2/deals/{first}")).await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json(), json!({"success": true, "data": {"id": first}}));
    assert_eq!(env.delete(&format!("/api/v2/deals/{first}")).await.status, 404, "already deleted");
    let got = env.get(&format!("/api/v2/deals/{first}")).await.json();
    assert_eq!(got["data"]["is_deleted"], json!(true));
    assert!(!ids(&env.list_all("/api/v2/deals?limit=500").await).contains(&first));
    assert!(ids(&env.list_all("/api/v2/deals?status=deleted").await).contains(&first));
    env.advance("29d").await;
    assert_eq!(env.get(&format!("/api/v2/deals/{first}")).await.status, 200);
    env.advance("1d").await;
    let purged = env.get(&format!("/api/v2/deals/{first}")).await;
    assert_eq!(purged.status, 404);
    assert_eq!(
        purged.json(),
        json!({"success": false, "error": "Deal not found", "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.", "data": null, "additional_data": null})
    );
    assert!(env.list_all("/api/v2/deals?status=deleted").await.is_empty());
    let rec = env.ctl("GET", &env.account_path(""), None).await;
    assert_eq!(rec["counts"]["deals"]["deleted"], json!(0));
}

#[tokio::test]
async fn listing_during_concurrent_changes_loses_and_repeats_nothing() {
    let env = start_pd(pd_config(120)).await;
    env.unthrottle().await;
    let before = ids(&env.list_all("/api/v2/activities?limit=500").await);
    let mut seen = Vec::new();
    let mut deleted = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v2/activities?limit=25".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let v = env.get(&path).await.json();
        seen.extend(ids(v["data"].as_array().expect("data")));
        let log =
            env.mutate(json!({"creates": 2, "updates": 3, "deletes": 1, "objects": ["activities"]})).await;
        deleted.extend(log_ids(&log, "deleted", "activities"));
        match v["additional_data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(set(&seen).len(), seen.len(), "no activity listed twice");
    for id in before.iter().filter(|i| !deleted.contains(i)) {
        assert!(seen.contains(id), "activity {id} live throughout the scan was missed");
    }
    // A cursor belongs to its query.
    let v = env.get("/api/v2/activities?limit=5&sort_by=update_time").await.json();
    let c = v["additional_data"]["next_cursor"].as_str().expect("cursor");
    let wrong = env.get(&format!("/api/v2/activities?limit=5&sort_by=id&cursor={c}")).await;
    assert_eq!(wrong.status, 400);
    assert_eq!(env.get("/api/v2/activities?cursor=not-a-cursor").await.status, 400);
}

#[tokio::test]
async fn writes_validate_fields_and_references_and_name_the_field() {
    let env = start_pd(pd_config(3)).await;
    let cases = [
        ("/api/v2/persons", json!({"emails": [{"value": "a@b.co"}]}), "Validation failed: name: is required"),
        (
            "/api/v2/persons",
            json!({"name": "X", "job_title": "CEO"}),
            "Validation failed: job_title: unknown field job_title",
        ),
        (
            "/api/v2/persons",
            json!({"name": "X", "emails": [{"value": "not-an-email"}]}),
            "Validation failed: emails: item 0: \"not-an-email\" is not a valid email address",
        ),
        (
            "/api/v2/persons",
            json!({"name": "X", "org_id": 999_999}),
            "Validation failed: org_id: Organization with id 999999 does not exist",
        ),
        (
            "/api/v2/persons",
            json!({"name": "X", "owner_id": 5}),
            "Validation failed: owner_id: user 5 does not exist",
        ),
        (
            "/api/v2/deals",
            json!({"title": "X", "value": "100"}),
            "Validation failed: value: must be a number",
        ),
        (
            "/api/v2/deals",
            json!({"title": "X", "stage_id": 99}),
            "Validation failed: stage_id: stage 99 does not exist",
        ),
        (
            "/api/v2/deals",
            json!({"title": "X", "expected_close_date": "31.01.2026"}),
            "Validation failed: expected_close_date: must be a date in the format YYYY-MM-DD",
        ),
        (
            "/api/v2/activities",
            json!({"subject": "X", "type": "telepathy"}),
            "Validation failed: type: must be the key_string of an existing activity type",
        ),
        (
            "/api/v2/activities",
            json!({"subject": "X", "due_time": "9:30"}),
            "Validation failed: due_time: must be a time in the format HH:MM",
        ),
    ];
    for (path, body, message) in cases {
        let r = env.post(path, &body).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text);
        let b = r.json();
        assert_eq!(b["success"], json!(false));
        assert_eq!(b["error"], json!(message), "{path} {body}");
        assert_eq!(b["data"], Value::Null);
    }
    // Unknown custom field keys are named with field_code.
    let r = env
        .post(
            "/api/v2/persons",
            &json!({"name": "X", "custom_fields": {"0000000000000000000000000000000000000000": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field_code"], json!("0000000000000000000000000000000000000000"));
    // Malformed JSON, unknown ids, unknown routes.
    let bad = crate::support::read(
        env.http
            .post(format!("{}/api/v2/persons", env.api))
            .header("x-api-token", &env.api_token)
            .header("content-type", "application/json")
            .body("{\"name\":")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(env.patch("/api/v2/persons/424242", &json!({"name": "Y"})).await.status, 404);
    assert_eq!(env.get("/api/v2/persons/abc").await.status, 400);
    let unknown = env.get("/api/v2/widgets").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], json!("Unknown method ."));
    // Nothing was created by the failed writes.
    assert_eq!(env.counters().await["created"], json!({}));
}

#[tokio::test]
async fn writes_round_trip_with_the_marker_custom_field() {
    let env = start_pd(pd_config(3)).await;
    let key = env.marker_key.clone();
    assert_eq!(key.len(), 40);
    let org = env.get("/api/v2/organizations?limit=1").await.json()["data"][0]["id"].as_u64().expect("org");
    let p = env
        .post(
            "/api/v2/persons",
            &json!({"name": "Jane Doe", "org_id": org, "emails": [{"value": "jane@x.com", "primary": true, "label": "work"}],
                    "phones": [{"value": "+358 40 123"}], "custom_fields": {&key: "act-1"}}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let person = p.json()["data"].clone();
    let pid = person["id"].as_u64().expect("id");
    assert_eq!(person["first_name"], json!("Jane"));
    assert_eq!(person["last_name"], json!("Doe"));
    assert_eq!(person["org_id"], json!(org));
    assert_eq!(person["phones"], json!([{"value": "+358 40 123", "primary": true, "label": "mobile"}]));
    assert_eq!(person["custom_fields"][&key], json!("act-1"));
    assert_eq!(person["add_time"], json!("2026-01-05T09:00:00Z"));
    env.advance("90s").await;
    let upd = env
        .patch(&format!("/api/v2/persons/{pid}"), &json!({"phones": [{"value": "+1 555"}], "org_id": null}))
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    let u = upd.json()["data"].clone();
    assert_eq!(u["org_id"], Value::Null);
    assert_eq!(u["name"], json!("Jane Doe"));
    assert_eq!(u["update_time"], json!("2026-01-05T09:01:30Z"));
    // Activities link persons through participants and carry the marker (sandbox extension).
    let deal = env.get("/api/v2/deals?limit=1").await.json()["data"][0]["id"].as_u64().expect("deal");
    let a = env
        .post(
            "/api/v2/activities",
            &json!({"subject": "Call Jane", "type": "call", "done": true, "due_date": "2026-01-05", "due_time": "09:30",
                    "duration": "00:05", "note": "<p>Talked</p>", "deal_id": deal,
                    "participants": [{"person_id": pid, "primary": true}], "custom_fields": {&key: "act-2"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let act = a.json()["data"].clone();
    assert_eq!(act["person_id"], json!(pid));
    assert_eq!(act["marked_as_done_time"], json!("2026-01-05T09:01:30Z"));
    assert_eq!(act["custom_fields"][&key], json!("act-2"));
    // v1 notes take custom fields as top-level keys and answer 201.
    let n = env.post("/v1/notes", &json!({"content": "<p>Hi</p>", "person_id": pid, &key: "act-3"})).await;
    assert_eq!(n.status, 201, "{}", n.text);
    let note = n.json()["data"].clone();
    assert_eq!(note[&key], json!("act-3"));
    assert_eq!(note["person"], json!({"name": "Jane Doe"}));
    assert_eq!(note["add_time"], json!("2026-01-05 09:01:30"));
    let unattached = env.post("/v1/notes", &json!({"content": "x"})).await;
    assert_eq!(unattached.status, 400);
    // Every field of an update is optional: the note keeps what it is attached to.
    let id = note["id"].as_u64().expect("note id");
    let edited = env
        .send("PUT", &format!("/v1/notes/{id}"), env.token(), Some(&json!({"content": "<p>Bye</p>"})))
        .await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    assert_eq!(edited.json()["data"]["person"], json!({"name": "Jane Doe"}));
    // Without the sandbox extension, activities reject custom fields like the v2 schema would.
    env.settings(json!({"activity_note_custom_fields": false})).await;
    let r = env.post("/api/v2/activities", &json!({"subject": "x", "custom_fields": {&key: "y"}})).await;
    assert_eq!(r.status, 400);
    env.settings(json!({"activity_note_custom_fields": true})).await;
    // The control plane sees each object once, with the marker in its text.
    for marker in ["act-1", "act-2", "act-3"] {
        let c = env.ctl("GET", &env.account_path(&format!("/created?contains={marker}")), None).await;
        assert_eq!(c["count"], json!(1), "{marker}");
    }
    let rec = env.ctl("GET", &env.account_path(&format!("/objects/persons/{pid}")), None).await;
    assert_eq!(rec["custom_fields"][&key], json!("act-1"));
}

#[tokio::test]
async fn person_search_by_email_and_by_custom_field() {
    let env = start_pd(pd_config(20)).await;
    let key = env.marker_key.clone();
    let created = env
        .post("/api/v2/persons", &json!({"name": "Ann Lee", "emails": [{"value": "Ann.Lee@Example.org"}], "custom_fields": {&key: "mk-77"}}))
        .await
        .json();
    let id = created["data"]["id"].as_u64().expect("id");
    let r = env.get("/api/v2/persons/search?term=ann.lee%40example.org&fields=email&exact_match=true").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let items = v["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["item"]["id"], json!(id));
    assert_eq!(items[0]["item"]["type"], json!("person"));
    assert_eq!(items[0]["item"]["emails"], json!(["Ann.Lee@Example.org"]));
    assert_eq!(v["additional_data"]["next_cursor"], Value::Null);
    let m = env.get("/api/v2/persons/search?term=mk-77&fields=custom_fields&exact_match=true").await.json();
    assert_eq!(m["data"]["items"][0]["item"]["id"], json!(id));
    assert_eq!(m["data"]["items"][0]["item"]["custom_fields"], json!(["mk-77"]));
    // Exact match is whole-value; partial search needs 2 characters.
    assert!(env.get("/api/v2/persons/search?term=mk-7&fields=custom_fields&exact_match=true").await.json()["data"]["items"]
        .as_array()
        .expect("items")
        .is_empty());
    assert_eq!(env.get("/api/v2/persons/search?term=a").await.status, 400);
    assert_eq!(env.get("/api/v2/persons/search?term=ann&limit=101").await.status, 400);
    // Deleted persons leave the index.
    env.delete(&format!("/api/v2/persons/{id}")).await;
    let after =
        env.get("/api/v2/persons/search?term=mk-77&fields=custom_fields&exact_match=true").await.json();
    assert!(after["data"]["items"].as_array().expect("items").is_empty());
    // Search index lag hides fresh changes.
    env.settings(json!({"search_index_lag_ms": 5000})).await;
    env.post("/api/v2/persons", &json!({"name": "Lagging Larry", "custom_fields": {&key: "mk-88"}})).await;
    let q = "/api/v2/persons/search?term=mk-88&fields=custom_fields&exact_match=true";
    assert!(env.get(q).await.json()["data"]["items"].as_array().expect("items").is_empty());
    env.advance("5s").await;
    assert_eq!(env.get(q).await.json()["data"]["items"].as_array().expect("items").len(), 1);
}

#[tokio::test]
async fn v1_notes_page_by_offset_and_filter_by_updated_since() {
    let env = start_pd(pd_config(45)).await;
    env.unthrottle().await;
    let mut seen = Vec::new();
    let mut start = 0;
    loop {
        let v = env.get(&format!("/v1/notes?start={start}&limit=20&sort=update_time%20ASC")).await.json();
        let data = v["data"].as_array().expect("data");
        seen.extend(ids(data));
        let p = &v["additional_data"]["pagination"];
        assert_eq!(p["start"], json!(start));
        assert_eq!(p["limit"], json!(20));
        if p["more_items_in_collection"] == json!(true) {
            start = p["next_start"].as_u64().expect("next_start") as usize;
        } else {
            assert!(p.get("next_start").is_none());
            break;
        }
    }
    assert_eq!(seen.len(), 45);
    assert_eq!(set(&seen).len(), 45);
    env.advance("1h").await;
    let log = env.mutate(json!({"seed": 2, "creates": 2, "updates": 3, "objects": ["notes"]})).await;
    let changed: BTreeSet<u64> =
        log_ids(&log, "created", "notes").union(&log_ids(&log, "updated", "notes")).copied().collect();
    let v = env.get("/v1/notes?updated_since=2026-01-05%2010:00:00&limit=500").await.json();
    assert_eq!(set(&ids(v["data"].as_array().expect("data"))), changed);
    // An empty page is data: null.
    let empty = env.get("/v1/notes?updated_since=2027-01-01%2000:00:00").await.json();
    assert_eq!(empty["data"], Value::Null);
    assert_eq!(empty["additional_data"]["pagination"]["more_items_in_collection"], json!(false));
}

#[tokio::test]
async fn v1_helpers_fields_and_retired_core_endpoints() {
    let env = start_pd(pd_config(2)).await;
    let me = env.get("/v1/users/me").await;
    assert_eq!(me.status, 200);
    let me = me.json();
    assert_eq!(me["data"]["company_id"].to_string(), env.company);
    assert_eq!(me["data"]["is_you"], json!(true));
    let types = env.get("/api/v1/activityTypes").await.json();
    let keys: Vec<&str> = types["data"]
        .as_array()
        .expect("types")
        .iter()
        .map(|t| t["key_string"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, vec!["call", "meeting", "task", "deadline", "email", "lunch"]);
    for endpoint in ["personFields", "activityFields", "noteFields"] {
        let f = env.get(&format!("/v1/{endpoint}?limit=500")).await.json();
        let marker = f["data"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|x| x["name"] == json!("crm-fleet action id"))
            .unwrap_or_else(|| panic!("{endpoint} lists the marker field"));
        assert_eq!(marker["key"], json!(env.marker_key));
        assert_eq!(marker["field_type"], json!("varchar"));
    }
    let deal_fields = env.get("/v1/dealFields?limit=500").await.json();
    assert!(
        !deal_fields["data"]
            .as_array()
            .expect("fields")
            .iter()
            .any(|x| x["name"] == json!("crm-fleet action id"))
    );
    let gone = env.get("/v1/persons?start=0").await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["success"], json!(false));
    assert_eq!(env.get("/api/v1/deals/5").await.status, 410);
    let stages = env.get("/api/v2/stages?pipeline_id=2").await.json();
    assert_eq!(stages["data"].as_array().expect("stages").len(), 3);
}

async fn listing_bytes(env: &PdEnv) -> String {
    env.unthrottle().await;
    let mut out = String::new();
    for path in [
        "/api/v2/persons?limit=500",
        "/api/v2/deals?limit=500",
        "/api/v2/activities?limit=500",
        "/v1/notes?limit=500",
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status, 200);
        out.push_str(&r.text);
    }
    out
}

async fn digest(env: &PdEnv) -> String {
    env.ctl("GET", &env.account_path(""), None).await["digest"].as_str().expect("digest").to_owned()
}

#[tokio::test]
async fn same_seed_gives_identical_data_and_credentials() {
    let a = start_pd(pd_config(150).with_seed(99)).await;
    let b = start_pd(pd_config(150).with_seed(99)).await;
    let c = start_pd(pd_config(150).with_seed(100)).await;
    let (la, lb, lc) = (listing_bytes(&a).await, listing_bytes(&b).await, listing_bytes(&c).await);
    assert!(la.len() > 50_000);
    assert_eq!(la, lb, "same seed, same bytes");
    assert_ne!(la, lc);
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_ne!(digest(&a).await, digest(&c).await);
    assert_eq!(
        (a.api_token.clone(), a.marker_key.clone(), a.client_id.clone()),
        (b.api_token.clone(), b.marker_key.clone(), b.client_id.clone())
    );
    let req = json!({"seed": 5, "creates": 10, "updates": 30, "deletes": 5});
    let (ma, mb) = (a.mutate(req.clone()).await, b.mutate(req).await);
    assert_eq!(ma, mb);
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_eq!(listing_bytes(&a).await, listing_bytes(&b).await);
}

#[tokio::test]
async fn counters_report_operations_and_creates() {
    let env = start_pd(pd_config(3)).await;
    env.get("/api/v2/persons").await;
    env.get("/api/v2/persons/1").await;
    env.post("/api/v2/organizations", &json!({"name": "Acme"})).await;
    env.send("GET", "/api/v2/persons", As::Nobody, None).await;
    let c = env.counters().await;
    assert_eq!(c["by_operation"]["persons.list"], json!(1));
    assert_eq!(c["by_operation"]["persons.get"], json!(1));
    assert_eq!(c["by_operation"]["organizations.create"], json!(1));
    assert_eq!(c["created"], json!({"organizations": 1}));
    assert_eq!(c["requests"], json!(3), "the unauthenticated request names no account");
    // The in-process accessors agree with the control plane.
    let counters = env.sb.counters(crm_sandbox::ProviderKind::Pipedrive, &env.company);
    assert_eq!(counters.created.get("organizations"), Some(&1));
    let pd = env.sb.pipedrive().expect("typed accessor");
    let company: u64 = env.company.parse().expect("numeric company id");
    let account = pd.account_by_id(company).expect("company");
    assert_eq!(account.api_token(), env.api_token);
    assert_eq!(account.marker_field_key, env.marker_key);
}
