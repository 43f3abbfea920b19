//! Search: changed-since, the 10,000-result cap, the search limiter, index lag.

use crate::support::{Env, config, start};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Runs a changed-since search (`modified >= since_ms`, ascending) to the end; returns the ids.
async fn changed_since(env: &Env, object: &str, prop: &str, since_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = "0".to_owned();
    loop {
        let r = env
            .post(
                &format!("/crm/v3/objects/{object}/search"),
                &env.access,
                &json!({
                    "filterGroups": [{"filters": [{"propertyName": prop, "operator": "GTE", "value": since_ms.to_string()}]}],
                    "sorts": [{"propertyName": prop, "direction": "ASCENDING"}],
                    "properties": [prop],
                    "limit": 200,
                    "after": after
                }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.header("x-hubspot-ratelimit-remaining").is_none(), "search has no rate-limit headers");
        let v = r.json();
        for x in v["results"].as_array().expect("results") {
            out.push(x["id"].as_str().expect("id").to_owned());
        }
        match v["paging"]["next"]["after"].as_str() {
            Some(a) => after = a.to_owned(),
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn changed_since_returns_exactly_the_changed_records() {
    let env = start(config(300)).await;
    env.unthrottle().await;
    env.advance("1s").await;
    let since = env.sb.clock().now_ms();
    let log = env
        .ctl_ok(
            "POST",
            &format!("/_sandbox/hubspot/accounts/{}/mutations", env.hub),
            Some(json!({"seed": 7, "creates": 15, "updates": 60, "deletes": 10, "objects": ["contacts"], "step_ms": 10})),
        )
        .await;
    let list = |k: &str| -> BTreeSet<String> {
        log[k]["contacts"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().expect("id").to_owned()).collect())
            .unwrap_or_default()
    };
    let deleted = list("deleted");
    let expected: BTreeSet<String> =
        list("created").union(&list("updated")).filter(|id| !deleted.contains(*id)).cloned().collect();
    assert!(expected.len() > 40, "the batch changed enough records: {}", expected.len());
    let got = changed_since(&env, "contacts", "lastmodifieddate", since).await;
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no duplicates across pages");
    assert_eq!(got_set, expected);
    // The deletes are visible in the archived listing.
    let archived: BTreeSet<String> =
        crate::support::ids(&env.list_all("contacts", &env.pat, "&archived=true").await)
            .into_iter()
            .collect();
    assert_eq!(archived, deleted);
    // Engagements use hs_lastmodifieddate.
    let log = env
        .ctl_ok(
            "POST",
            &format!("/_sandbox/hubspot/accounts/{}/mutations", env.hub),
            Some(json!({"updates": 5, "objects": ["tasks"]})),
        )
        .await;
    let mut want: Vec<String> = log["updated"]["tasks"]
        .as_array()
        .expect("updated")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    want.sort();
    want.dedup();
    let mut got = changed_since(&env, "tasks", "hs_lastmodifieddate", env.sb.clock().now_ms()).await;
    got.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn paging_past_ten_thousand_results_is_a_400() {
    let env = start(config(10_050)).await;
    env.unthrottle().await;
    let body = |after: &str| json!({"limit": 100, "after": after, "properties": ["email"]});
    let near = env.post("/crm/v3/objects/contacts/search", &env.pat, &body("9900")).await;
    assert_eq!(near.status, 200, "{}", near.text);
    let v = near.json();
    assert_eq!(v["total"], json!(10_050));
    assert_eq!(v["results"].as_array().expect("results").len(), 100);
    assert_eq!(v["paging"]["next"]["after"], json!("10000"));
    let past = env.post("/crm/v3/objects/contacts/search", &env.pat, &body("10000")).await;
    assert_eq!(past.status, 400);
    assert_eq!(past.json()["category"], json!("VALIDATION_ERROR"));
    // Moving the lower bound instead works: everything modified at or after the 9,000th record.
    let all = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.pat,
            &json!({"sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}], "limit": 1, "after": "9000", "properties": ["lastmodifieddate"]}),
        )
        .await
        .json();
    let bound = all["results"][0]["properties"]["lastmodifieddate"].as_str().expect("date").to_owned();
    let rest = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.pat,
            &json!({"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": bound}]}], "limit": 1}),
        )
        .await
        .json();
    let total = rest["total"].as_u64().expect("total");
    assert!((1_050..=1_100).contains(&total), "window total {total}");
}

#[tokio::test]
async fn search_limiter_is_five_per_second_with_the_documented_body() {
    let env = start(config(3)).await;
    let q = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}]});
    for i in 0..5 {
        let r = env.post("/crm/v3/objects/contacts/search", &env.pat, &q).await;
        assert_eq!(r.status, 200, "search {i}: {}", r.text);
        assert_eq!(r.json()["total"], json!(3));
    }
    let r = env.post("/crm/v3/objects/contacts/search", &env.pat, &q).await;
    assert_eq!(r.status, 429);
    let b = r.json();
    assert_eq!(b["message"], json!("You have reached your secondly limit."));
    assert_eq!(b["errorType"], json!("RATE_LIMIT"));
    assert!(r.header("x-hubspot-ratelimit-max").is_none());
    // Non-search calls are unaffected, and a second later search works again.
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 200);
    env.advance("1s").await;
    assert_eq!(env.post("/crm/v3/objects/contacts/search", &env.pat, &q).await.status, 200);
}

#[tokio::test]
async fn search_by_email_filters_sorts_and_limits() {
    let env = start(config(20)).await;
    env.unthrottle().await;
    env.post(
        "/crm/v3/objects/contacts",
        &env.pat,
        &json!({"properties": {"email": "jane@x.com", "firstname": "Jane"}}),
    )
    .await;
    let r = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.access,
            &json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "Jane@X.com"}]}]}),
        )
        .await
        .json();
    assert_eq!(r["total"], json!(1));
    assert_eq!(r["results"][0]["properties"]["firstname"], json!("Jane"));
    // String sort form, descending.
    let r = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.pat,
            &json!({"sorts": ["-createdate"], "limit": 3, "properties": ["createdate"]}),
        )
        .await
        .json();
    let dates: Vec<&str> = r["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| x["properties"]["createdate"].as_str().expect("date"))
        .collect();
    let mut sorted = dates.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(dates, sorted);
    // Limits on the request.
    let groups: Vec<Value> =
        (0..6).map(|_| json!({"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]})).collect();
    let r = env.post("/crm/v3/objects/contacts/search", &env.pat, &json!({"filterGroups": groups})).await;
    assert_eq!(r.status, 400);
    let r = env.post("/crm/v3/objects/contacts/search", &env.pat, &json!({"limit": 201})).await;
    assert_eq!(r.status, 400);
    let r = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.pat,
            &json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]}]}),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn index_lag_hides_fresh_changes_until_it_passes() {
    let env = start(config(2)).await;
    env.ctl_ok("PATCH", "/_sandbox/hubspot/settings", Some(json!({"search_index_lag_ms": 5000}))).await;
    let created =
        env.post("/crm/v3/objects/contacts", &env.pat, &json!({"properties": {"email": "lag@x.com"}})).await;
    assert_eq!(created.status, 201);
    let q = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "lag@x.com"}]}]});
    assert_eq!(env.post("/crm/v3/objects/contacts/search", &env.pat, &q).await.json()["total"], json!(0));
    // The record itself is readable at once.
    assert_eq!(env.get("/crm/v3/objects/contacts/lag@x.com?idProperty=email", &env.pat).await.status, 200);
    env.advance("5s").await;
    assert_eq!(env.post("/crm/v3/objects/contacts/search", &env.pat, &q).await.json()["total"], json!(1));
}

/// One page of a contacts search sorted by modification time, ascending.
async fn by_modification_time(env: &Env, groups: Value, after: usize, limit: usize) -> Value {
    let r = env
        .post(
            "/crm/v3/objects/contacts/search",
            &env.access,
            &json!({
                "filterGroups": groups,
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["lastmodifieddate"],
                "limit": limit,
                "after": after.to_string()
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// A windowing search (filters on the modification time and id only) is answered from the
/// time index without reading records; adding a filter that every record passes but that
/// needs the record (`createdate` present) takes the general path. Both must agree on every
/// page: results, order, total and paging, including ties on the modification time.
#[tokio::test]
async fn windowing_fast_path_agrees_with_the_general_path() {
    let env = start(config(300)).await;
    env.unthrottle().await;
    env.advance("1s").await;
    let since = env.sb.clock().now_ms();
    // step_ms 0: many records share a modification time, so the id tie-break matters.
    env.ctl_ok(
        "POST",
        &format!("/_sandbox/hubspot/accounts/{}/mutations", env.hub),
        Some(json!({"seed": 3, "creates": 40, "updates": 120, "objects": ["contacts"], "step_ms": 0})),
    )
    .await;
    env.advance("1s").await;
    let boundary = since.to_string();
    let window = |extra: bool| {
        let mut gt = vec![
            json!({"propertyName": "lastmodifieddate", "operator": "GT", "value": (since - 1).to_string()}),
        ];
        let mut eq = vec![
            json!({"propertyName": "lastmodifieddate", "operator": "EQ", "value": boundary}),
            json!({"propertyName": "hs_object_id", "operator": "NOT_IN", "values": ["1", "2", "3"]}),
        ];
        if extra {
            gt.push(json!({"propertyName": "createdate", "operator": "HAS_PROPERTY"}));
            eq.push(json!({"propertyName": "createdate", "operator": "HAS_PROPERTY"}));
        }
        json!([{"filters": gt}, {"filters": eq}])
    };
    for (after, limit) in [(0, 7), (7, 7), (150, 7), (0, 200), (155, 10), (10_000 - 3, 5)] {
        let mut pages = Vec::new();
        for extra in [false, true] {
            pages.push(by_modification_time(&env, window(extra), after, limit).await);
        }
        assert!(pages[0]["total"].as_u64().is_some_and(|t| t >= 120), "{}", pages[0]);
        assert_eq!(pages[0], pages[1], "after={after} limit={limit}");
    }
    // A change between two pages of the same window (the fast path remembers the window's
    // total): the next page sees it, as the general path does.
    let first = by_modification_time(&env, window(false), 0, 7).await;
    env.ctl_ok(
        "POST",
        &format!("/_sandbox/hubspot/accounts/{}/mutations", env.hub),
        Some(json!({"seed": 4, "creates": 5, "objects": ["contacts"], "step_ms": 0})),
    )
    .await;
    let fast = by_modification_time(&env, window(false), 7, 7).await;
    assert_eq!(fast, by_modification_time(&env, window(true), 7, 7).await);
    assert_eq!(fast["total"].as_u64(), first["total"].as_u64().map(|t| t + 5), "{fast}");
    // A full sync's first window: no filter at all, sorted by modification time.
    for (after, limit) in [(0, 7), (150, 200), (290, 20)] {
        let mut pages = Vec::new();
        for groups in
            [json!([]), json!([{"filters": [{"propertyName": "createdate", "operator": "HAS_PROPERTY"}]}])]
        {
            pages.push(by_modification_time(&env, groups, after, limit).await);
        }
        assert!(pages[0]["total"].as_u64().is_some_and(|t| t >= 300), "{}", pages[0]);
        assert_eq!(pages[0], pages[1], "no filter: after={after} limit={limit}");
    }
}
