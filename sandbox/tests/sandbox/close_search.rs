//! The Advanced Filtering API (cursor paging, changed-since, email search, cursor expiry, the
//! 10,000-result sequence cap) and the event log (deletes, newest first, cursors, filter
//! combinations, retention, consolidation).

use crate::close_support::{changed_since, config, ids, start};
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test]
async fn cursor_paging_returns_every_contact_exactly_once_in_date_order() {
    let env = start(config(230)).await;
    env.unthrottle().await;
    let all = env.search_all(changed_since("contact", None, &["id", "date_updated", "emails"], 50)).await;
    let got = ids(&all);
    assert_eq!(got.len(), 230);
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 230);
    let times: Vec<&str> = all.iter().map(|c| c["date_updated"].as_str().expect("date")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ascending by date_updated");
    assert_eq!(all[0]["__object_type"], json!("contact"));
    assert_eq!(all[0].as_object().expect("obj").len(), 4, "only _fields plus __object_type");
    // Leads too; without _fields only id and __object_type come back.
    let mut body = changed_since("lead", None, &[], 100);
    body.as_object_mut().expect("obj").remove("_fields");
    let leads = env.search_all(body).await;
    assert_eq!(leads.len(), 230);
    assert_eq!(leads[0].as_object().expect("obj").len(), 2);
}

#[tokio::test]
async fn changed_since_returns_exactly_the_changed_contacts() {
    let env = start(config(80)).await;
    env.unthrottle().await;
    let now = env.ctl("GET", "/_sandbox/clock", None).await["now"].as_str().expect("now").to_owned();
    let log = env
        .mutate(json!({"seed": 9, "creates": 5, "updates": 12, "deletes": 3, "objects": ["contact"]}))
        .await;
    let mut expected = BTreeSet::new();
    for k in ["created", "updated"] {
        for id in log[k]["contact"].as_array().into_iter().flatten() {
            expected.insert(id.as_str().expect("id").to_owned());
        }
    }
    for id in log["deleted"]["contact"].as_array().into_iter().flatten() {
        expected.remove(id.as_str().expect("id"));
    }
    let changed = env.search_all(changed_since("contact", Some(&now), &["id", "date_updated"], 4)).await;
    let got: BTreeSet<String> = ids(&changed).into_iter().collect();
    assert_eq!(got, expected);
    // A local-date bound honours x-tz-offset: midnight of 2026-01-05 at UTC-9 is 09:00Z, the
    // mutation time.
    let body = json!({"query": {"type": "and", "queries": [
        {"type": "object_type", "object_type": "contact"},
        {"type": "field_condition", "field": {"type": "regular_field", "object_type": "contact", "field_name": "date_updated"},
         "condition": {"type": "moment_range", "on_or_after": {"type": "fixed_local_date", "value": "2026-01-05", "which": "start"}}}]},
        "_limit": 200, "include_counts": true});
    let r = env
        .http
        .post(format!("{}/api/v1/data/search/", env.api))
        .basic_auth(&env.api_key, Some(""))
        .header("x-tz-offset", "-9")
        .json(&body)
        .send()
        .await
        .expect("sent");
    let r: serde_json::Value = r.json().await.expect("json");
    assert_eq!(r["count"]["total"].as_u64().expect("total") as usize, expected.len());
}

#[tokio::test]
async fn email_search_through_has_related_contact_email() {
    let env = start(config(20)).await;
    let contact = env.get("/api/v1/contact/?_limit=1", &env.key).await.json()["data"][0].clone();
    let email = contact["emails"][0]["email"].as_str().expect("email").to_owned();
    let body = json!({
        "query": {"type": "and", "queries": [
            {"type": "object_type", "object_type": "contact"},
            {"type": "has_related", "this_object_type": "contact", "related_object_type": "contact_email",
             "related_query": {"type": "field_condition",
                "field": {"type": "regular_field", "object_type": "contact_email", "field_name": "email"},
                "condition": {"type": "text", "mode": "phrase", "value": email}}}]},
        "_fields": {"contact": ["id", "name", "emails"]}, "_limit": 10});
    let r = env.post("/api/v1/data/search/", &env.key, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.json()["data"].as_array().expect("data").clone();
    assert_eq!(ids(&data), vec![contact["id"].as_str().expect("id").to_owned()]);
    assert_eq!(r.json()["cursor"], json!(null));
    // Negation and unknown grammar.
    let mut neg = body.clone();
    neg["query"]["queries"][1]["negate"] = json!(true);
    let n = env.post("/api/v1/data/search/", &env.key, &neg).await.json();
    assert_eq!(n["data"].as_array().expect("data").len(), 10);
    let bad = env
        .post("/api/v1/data/search/", &env.key, &json!({"query": {"type": "and", "queries": [{"type": "object_type", "object_type": "contact"}, {"type": "sorcery"}]}}))
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["field-errors"]["query"].is_string());
    let no_type =
        env.post("/api/v1/data/search/", &env.key, &json!({"query": {"type": "text", "value": "x"}})).await;
    assert_eq!(no_type.status, 400);
    let too_big = env
        .post(
            "/api/v1/data/search/",
            &env.key,
            &json!({"query": {"type": "object_type", "object_type": "lead"}, "_limit": 201}),
        )
        .await;
    assert_eq!(too_big.status, 400);
}

#[tokio::test]
async fn cursors_replay_within_30_seconds_then_expire_and_sequences_stop_at_the_cap() {
    let env = start(config(30)).await;
    let first =
        env.post("/api/v1/data/search/", &env.key, &changed_since("contact", None, &["id"], 10)).await.json();
    let cursor = first["cursor"].as_str().expect("cursor").to_owned();
    let mut body = changed_since("contact", None, &["id"], 10);
    body["cursor"] = json!(cursor);
    let a = env.post("/api/v1/data/search/", &env.key, &body).await.json();
    env.advance("29s").await;
    let b = env.post("/api/v1/data/search/", &env.key, &body).await.json();
    assert_eq!(a["data"], b["data"], "a cursor can be replayed while its snapshot lives");
    env.advance("31s").await;
    let r = env.post("/api/v1/data/search/", &env.key, &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field-errors"]["cursor"], json!("Invalid or expired cursor."));
    // The sequence cap (10,000 in Close) ends the sequence silently; include_counts shows it.
    env.settings(json!({"search_max_results": 25})).await;
    let mut capped = changed_since("contact", None, &["id"], 10);
    capped["include_counts"] = json!(true);
    let r = env.post("/api/v1/data/search/", &env.key, &capped).await.json();
    assert_eq!(r["count"], json!({"total": 30, "limited": 25}));
    capped.as_object_mut().expect("obj").remove("include_counts");
    assert_eq!(env.search_all(capped).await.len(), 25);
}

#[tokio::test]
async fn deletes_are_visible_in_the_event_log_newest_first() {
    let env = start(config(40)).await;
    env.unthrottle().await;
    let mut deleted = Vec::new();
    for i in 0..3 {
        let log = env.mutate(json!({"seed": i, "deletes": 2, "objects": ["contact"], "step_ms": 1000})).await;
        for id in log["deleted"]["contact"].as_array().into_iter().flatten() {
            deleted.push(id.as_str().expect("id").to_owned());
        }
    }
    assert_eq!(deleted.len(), 6);
    let mut seen = Vec::new();
    let mut path = "/api/v1/event/?object_type=contact&action=deleted&_limit=4".to_owned();
    loop {
        let r = env.get(&path, &env.key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        for e in v["data"].as_array().expect("data") {
            assert_eq!(e["action"], json!("deleted"));
            assert!(e["id"].as_str().expect("id").starts_with("ev_"));
            assert!(!e["date_updated"].as_str().expect("date").contains('+'), "event times are naive UTC");
            assert!(e["previous_data"]["emails"].is_array(), "deleted events carry the old record");
            seen.push(e["object_id"].as_str().expect("object").to_owned());
        }
        match v["cursor_next"].as_str() {
            Some(c) => {
                path = format!("/api/v1/event/?object_type=contact&action=deleted&_limit=4&_cursor={c}")
            }
            None => break,
        }
    }
    deleted.reverse();
    assert_eq!(seen, deleted, "every delete once, newest first");
    // date_updated bounds narrow it; _limit is capped at 50; bad combinations are 400.
    let recent = env
        .get(
            "/api/v1/event/?object_type=contact&action=deleted&date_updated__gte=2026-01-05T09:00:05Z",
            &env.key,
        )
        .await
        .json();
    assert_eq!(recent["data"].as_array().expect("data").len(), 2);
    let capped = env.get("/api/v1/event/?_limit=500", &env.key).await.json();
    assert!(capped["data"].as_array().expect("data").len() <= 50);
    assert_eq!(env.get("/api/v1/event/?action=deleted", &env.key).await.status, 400);
    // 30 days later they are gone.
    env.advance("31d").await;
    let gone = env.get("/api/v1/event/?object_type=contact&action=deleted", &env.key).await.json();
    assert_eq!(gone["data"], json!([]));
}

#[tokio::test]
async fn rapid_updates_consolidate_into_one_event() {
    let env = start(config(3)).await;
    let c = env.get("/api/v1/contact/?_limit=1", &env.key).await.json()["data"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for t in ["A", "B", "C"] {
        assert_eq!(
            env.put(&format!("/api/v1/contact/{c}/"), &env.key, &json!({"title": t})).await.status,
            200
        );
    }
    let ev = env.get(&format!("/api/v1/event/?object_type=contact&object_id={c}"), &env.key).await.json();
    let data = ev["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "three updates in one instant are one event");
    assert_eq!(data[0]["data"]["title"], json!("C"));
    env.settings(json!({"event_consolidation_ms": 0})).await;
    env.put(&format!("/api/v1/contact/{c}/"), &env.key, &json!({"title": "D"})).await;
    let ev = env.get(&format!("/api/v1/event/?object_type=contact&object_id={c}"), &env.key).await.json();
    assert_eq!(ev["data"].as_array().expect("data").len(), 2);
    assert_eq!(ev["data"][0]["changed_fields"], json!(["title", "date_updated"]));
}
