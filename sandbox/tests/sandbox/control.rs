//! The control plane: clock, faults, request log, counters, accounts, mutations, generator.

use crate::support::{config, start};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn clock_can_be_read_set_advanced_and_frozen() {
    let env = start(config(1)).await;
    let c = env.ctl_ok("GET", "/_sandbox/clock", None).await;
    assert_eq!(c["now"], json!("2026-01-05T09:00:00.000Z"));
    assert_eq!(c["mode"], json!("frozen"));
    let c = env.ctl_ok("POST", "/_sandbox/clock", Some(json!({"advance": "90m"}))).await;
    assert_eq!(c["now"], json!("2026-01-05T10:30:00.000Z"));
    let c = env.ctl_ok("POST", "/_sandbox/clock", Some(json!({"set": "2026-02-01T00:00:00Z"}))).await;
    assert_eq!(c["now_ms"], json!(1_769_904_000_000i64));
    let c = env.ctl_ok("POST", "/_sandbox/clock", Some(json!({"mode": "running"}))).await;
    assert_eq!(c["mode"], json!("running"));
    assert_eq!(env.ctl("POST", "/_sandbox/clock", Some(json!({"advance": "soon"}))).await.status, 400);
    // Writes are stamped with the logical clock.
    env.ctl_ok("POST", "/_sandbox/clock", Some(json!({"mode": "frozen", "set": "2026-03-01T12:00:00Z"})))
        .await;
    let r = env
        .post("/crm/v3/objects/contacts", &env.pat, &json!({"properties": {"email": "t@x.com"}}))
        .await
        .json();
    assert_eq!(r["createdAt"], json!("2026-03-01T12:00:00.000Z"));
    assert_eq!(r["properties"]["lastmodifieddate"], json!("2026-03-01T12:00:00.000Z"));
    // The in-process accessors mirror the control plane.
    assert_eq!(env.sb.clock().now_ms(), 1_772_366_400_000);
    let hs = env.sb.hubspot().expect("hubspot is running");
    assert_eq!(hs.accounts().len(), 1);
    assert_eq!(hs.accounts()[0].private_app_token(), env.pat);
}

#[tokio::test]
async fn next_n_requests_fail_then_recover() {
    let env = start(config(1)).await;
    let rule = env
        .ctl_ok(
            "POST",
            "/_sandbox/hubspot/faults",
            Some(json!({"account": env.hub, "method": "GET", "path": "/crm/v3/objects/*", "times": 2,
                        "action": {"type": "status", "status": 503}})),
        )
        .await;
    assert_eq!(rule["id"], json!(1));
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(env.get("/crm/v3/objects/contacts", &env.pat).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![503, 503, 200]);
    let faults = env.ctl_ok("GET", "/_sandbox/faults", None).await;
    assert_eq!(faults["faults"][0]["fired"], json!(2));
    // Injected 477 carries Retry-After; injected 423 uses HubSpot's body.
    env.ctl_ok(
        "POST",
        "/_sandbox/faults",
        Some(json!({"provider": "hubspot", "times": 1, "action": {"type": "status", "status": 477, "retry_after_secs": 30}})),
    )
    .await;
    let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
    assert_eq!(r.status, 477);
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));
    // An outage window on the logical clock: 502s for one minute.
    env.ctl_ok(
        "POST",
        "/_sandbox/faults",
        Some(json!({"provider": "hubspot", "duration": "60s", "action": {"type": "status", "status": 502}})),
    )
    .await;
    let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
    assert_eq!(r.status, 502);
    assert!(r.text.contains("502 Bad Gateway"), "gateway errors are HTML: {}", r.text);
    env.advance("60s").await;
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 200);
    // Clearing.
    env.ctl_ok("DELETE", "/_sandbox/faults", None).await;
    assert_eq!(env.ctl_ok("GET", "/_sandbox/faults", None).await["faults"], json!([]));
}

#[tokio::test]
async fn forced_throttling_uses_the_provider_body_and_retry_after() {
    let env = start(config(1)).await;
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"times": 1, "action": {"type": "throttle", "retry_after_secs": 7}})),
    )
    .await;
    let r = env.get("/crm/v3/objects/deals", &env.pat).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("7"));
    assert_eq!(r.json()["policyName"], json!("TEN_SECONDLY_ROLLING"));
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"times": 1, "action": {"type": "throttle", "policy": "DAILY"}})),
    )
    .await;
    assert_eq!(env.get("/crm/v3/objects/deals", &env.pat).await.json()["policyName"], json!("DAILY"));
    assert_eq!(env.counters().await["throttled"], json!(2));
}

#[tokio::test]
async fn commit_then_drop_creates_the_record_but_the_client_sees_an_error() {
    let env = start(config(1)).await;
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"method": "POST", "path": "/crm/v3/objects/tasks", "times": 1, "action": {"type": "drop_after_commit"}})),
    )
    .await;
    let body = json!({"properties": {"hs_timestamp": "2026-01-10T10:00:00Z", "hs_task_subject": "Call back [m-77]", "crm_fleet_action_id": "m-77"}});
    let sent = env
        .http
        .post(format!("{}/crm/v3/objects/tasks", env.api))
        .bearer_auth(&env.pat)
        .json(&body)
        .send()
        .await;
    let failed = match sent {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "the client must see a transport error");
    let created = env
        .ctl_ok("GET", &format!("/_sandbox/hubspot/accounts/{}/created?contains=m-77", env.hub), None)
        .await;
    assert_eq!(created["count"], json!(1), "the write happened");
    // The retry is caught by the unique property: no duplicate.
    let retry = env.post("/crm/v3/objects/tasks", &env.pat, &body).await;
    assert_eq!(retry.status, 409);
    let created = env
        .ctl_ok("GET", &format!("/_sandbox/hubspot/accounts/{}/created?contains=m-77", env.hub), None)
        .await;
    assert_eq!(created["count"], json!(1));
    let log = env.ctl_ok("GET", "/_sandbox/requests?path=/crm/v3/objects/tasks&method=POST", None).await;
    let statuses: Vec<_> =
        log["requests"].as_array().expect("requests").iter().map(|e| e["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(0), json!(409)]);
    assert_eq!(log["requests"][0]["dropped"], json!(true));
}

#[tokio::test]
async fn hung_connections_time_out_the_client() {
    let env = start(config(1)).await;
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"times": 1, "action": {"type": "hang", "ms": 5000}})),
    )
    .await;
    let started = std::time::Instant::now();
    let r = env
        .http
        .get(format!("{}/crm/v3/objects/contacts", env.api))
        .bearer_auth(&env.pat)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()), "the client times out");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_and_their_maximum_are_counted() {
    let env = start(config(1)).await;
    env.ctl_ok(
        "POST",
        "/_sandbox/faults",
        Some(json!({"provider": "hubspot", "account": env.hub, "action": {"type": "latency", "ms": 300}})),
    )
    .await;
    let futs: Vec<_> = (0..4).map(|_| env.get("/crm/v3/objects/contacts", &env.pat)).collect();
    let results = futures::future::join_all(futs).await;
    assert!(results.iter().all(|r| r.status == 200));
    let c = env.counters().await;
    assert_eq!(c["max_in_flight"], json!(4));
    assert_eq!(c["in_flight"], json!(0));
    assert_eq!(c["by_operation"]["contacts.list"], json!(4));
    // Reset.
    env.ctl_ok("DELETE", &format!("/_sandbox/hubspot/accounts/{}/counters", env.hub), None).await;
    let c = env.counters().await;
    assert_eq!((c["max_in_flight"].clone(), c["requests"].clone()), (json!(0), json!(0)));
}

#[tokio::test]
async fn request_log_is_queryable() {
    let env = start(config(2)).await;
    env.get("/crm/v3/objects/contacts", &env.pat).await;
    env.get("/crm/v3/objects/companies", &env.access).await;
    env.get("/crm/v3/objects/companies", "bogus").await;
    let all = env.ctl_ok("GET", "/_sandbox/requests", None).await;
    assert_eq!(all["count"], json!(3));
    let e = &all["requests"][0];
    assert_eq!(e["method"], json!("GET"));
    assert_eq!(e["path"], json!("/crm/v3/objects/contacts"));
    assert_eq!(e["account"], json!(env.hub));
    assert_eq!(e["status"], json!(200));
    assert_eq!(e["operation"], json!("contacts.list"));
    assert_eq!(e["at"], json!("2026-01-05T09:00:00.000Z"));
    let mine = env
        .ctl_ok("GET", &format!("/_sandbox/requests?account={}&operation=companies.list", env.hub), None)
        .await;
    assert_eq!(mine["count"], json!(1));
    let unauth = env.ctl_ok("GET", "/_sandbox/requests?status=401", None).await;
    assert_eq!(unauth["count"], json!(1));
    assert!(unauth["requests"][0].get("account").is_none());
    env.ctl_ok("DELETE", "/_sandbox/requests", None).await;
    assert_eq!(env.ctl_ok("GET", "/_sandbox/requests", None).await["count"], json!(0));
}

#[tokio::test]
async fn accounts_can_be_created_with_records_and_quotas() {
    let env = start(config(1)).await;
    let r = env
        .ctl(
            "POST",
            "/_sandbox/hubspot/accounts",
            Some(json!({"records": 40, "tier": "professional", "time_zone": "Europe/Helsinki", "quota": {"burst": 3}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = r.json();
    assert_eq!(a["hub_id"], json!(20_000_002));
    assert_eq!(a["counts"]["tasks"], json!(40));
    assert_eq!(a["quota"]["daily"], json!(625_000));
    assert_eq!(a["quota"]["private_app_burst"], json!(3));
    let pat = a["credentials"]["private_app_token"].as_str().expect("pat");
    let all = env.list_all("tasks", pat, "").await;
    assert_eq!(all.len(), 40);
    for _ in 0..2 {
        assert_eq!(env.get("/crm/v3/objects/tasks", pat).await.status, 200);
    }
    let r = env.get("/crm/v3/objects/tasks", pat).await;
    assert_eq!(r.status, 429, "the fourth call exceeds the burst of 3");
    assert_eq!(env.ctl("POST", "/_sandbox/hubspot/accounts", Some(json!({"bogus": 1}))).await.status, 400);
    assert_eq!(env.ctl("GET", "/_sandbox/myspace/accounts", None).await.status, 404, "an unknown provider");
}

#[tokio::test]
async fn mutations_and_direct_edits_land_in_the_journal() {
    let env = start(config(10)).await;
    let base = format!("/_sandbox/hubspot/accounts/{}", env.hub);
    let log = env
        .ctl_ok(
            "POST",
            &format!("{base}/mutations"),
            Some(json!({"creates": 3, "updates": 2, "deletes": 1, "objects": ["companies"]})),
        )
        .await;
    assert_eq!(log["changes"].as_array().expect("changes").len(), 6);
    assert_eq!(log["created"]["companies"].as_array().expect("created").len(), 3);
    // All stamped at the frozen now.
    assert!(
        log["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .all(|c| c["at"] == json!("2026-01-05T09:00:00.000Z"))
    );
    let id = log["created"]["companies"][0].as_str().expect("id");
    let edited = env
        .ctl_ok(
            "PATCH",
            &format!("{base}/objects/companies/{id}"),
            Some(json!({"properties": {"name": "Renamed Oy"}})),
        )
        .await;
    assert_eq!(edited["properties"]["name"], json!("Renamed Oy"));
    let got = env.get(&format!("/crm/v3/objects/companies/{id}"), &env.pat).await.json();
    assert_eq!(got["properties"]["name"], json!("Renamed Oy"));
    env.ctl_ok("DELETE", &format!("{base}/objects/companies/{id}"), None).await;
    assert_eq!(env.get(&format!("/crm/v3/objects/companies/{id}"), &env.pat).await.status, 404);
    let journal = env.ctl_ok("GET", &format!("{base}/changes?since=6"), None).await;
    let ops: Vec<_> = journal["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| (c["op"].clone(), c["source"].clone()))
        .collect();
    assert_eq!(ops, vec![(json!("update"), json!("control")), (json!("delete"), json!("control"))]);
}

#[tokio::test]
async fn background_generator_changes_records_until_stopped() {
    let env = start(config(10)).await;
    let base = format!("/_sandbox/hubspot/accounts/{}", env.hub);
    env.ctl_ok(
        "POST",
        &format!("{base}/generator"),
        Some(json!({"per_second": 200, "creates": 1, "updates": 2, "deletes": 1})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = env.ctl_ok("DELETE", &format!("{base}/generator"), None).await;
    assert_eq!(stopped["stopped"], json!(true));
    let n = env.ctl_ok("GET", &format!("{base}/changes"), None).await["count"].as_u64().expect("count");
    assert!(n >= 5, "the generator made changes: {n}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = env.ctl_ok("GET", &format!("{base}/changes"), None).await["count"].as_u64().expect("count");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let k = env.ctl_ok("GET", &format!("{base}/changes"), None).await["count"].as_u64().expect("count");
    assert_eq!(m, k, "no changes after stop");
}

#[tokio::test]
async fn dropped_requests_never_reach_the_provider_and_error_rates_apply() {
    let env = start(config(1)).await;
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"method": "POST", "times": 1, "action": {"type": "drop"}})),
    )
    .await;
    let body = json!({"properties": {"email": "dropped@x.com"}});
    let sent = env
        .http
        .post(format!("{}/crm/v3/objects/contacts", env.api))
        .bearer_auth(&env.pat)
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "the connection was dropped");
    let missing = env.get("/crm/v3/objects/contacts/dropped@x.com?idProperty=email", &env.pat).await;
    assert_eq!(missing.status, 404, "a dropped request writes nothing");
    // A 50% error rate on one path: over 200 calls, roughly half fail, reproducibly from the seed.
    env.unthrottle().await;
    env.ctl_ok(
        "POST",
        "/_sandbox/hubspot/faults",
        Some(json!({"path": "/crm/v3/objects/notes", "probability": 0.5, "action": {"type": "status", "status": 500}})),
    )
    .await;
    let mut failures = 0;
    for _ in 0..200 {
        if env.get("/crm/v3/objects/notes", &env.pat).await.status == 500 {
            failures += 1;
        }
    }
    assert!((70..=130).contains(&failures), "failures {failures}");
    assert_eq!(env.get("/crm/v3/objects/deals", &env.pat).await.status, 200, "other paths unaffected");
}
