//! Salesforce limits: `Sforce-Limit-Info` on every response but the version list, the rolling
//! 24-hour allocation refusing exactly at the quota with the documented 403, the long-running
//! request cap, injected faults in Salesforce's shapes, and what the counters report.

use crate::salesforce_support::{config, start};
use crate::support::read;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn usage_header_on_every_response_except_the_version_list() {
    let env = start(config(1)).await;
    let versions =
        read(env.http.get(format!("{}/services/data/", env.instance)).send().await.expect("sent")).await;
    assert_eq!(versions.status, 200);
    assert!(versions.header("sforce-limit-info").is_none());
    let list = versions.json();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|v| v == &json!({"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"}))
    );
    let r = env.get("/limits", &env.access).await;
    assert_eq!(
        r.header("sforce-limit-info").as_deref(),
        Some("api-usage=1/110000"),
        "Enterprise, 10 licences"
    );
    let b = r.json();
    assert_eq!(b["DailyApiRequests"], json!({"Max": 110000, "Remaining": 109999}));
    let nf = env.get("/sobjects/Contact/003000000000000AAA", &env.access).await;
    assert_eq!(nf.status, 404);
    assert_eq!(nf.header("sforce-limit-info").as_deref(), Some("api-usage=2/110000"));
    assert!(
        r.header("date").is_some_and(|d| d == "Mon, 05 Jan 2026 09:00:00 GMT"),
        "Date is the logical server time"
    );
    // Unknown versions are 404 before authentication and count nothing.
    let v = read(
        env.http.get(format!("{}/services/data/v99.0/limits", env.instance)).send().await.expect("sent"),
    )
    .await;
    assert_eq!(v.status, 404);
    assert_eq!(
        env.get("/limits", &env.access).await.header("sforce-limit-info").as_deref(),
        Some("api-usage=3/110000")
    );
}

#[tokio::test]
async fn the_allocation_refuses_exactly_at_the_quota_with_the_documented_403() {
    let env = start(config(1)).await;
    // A day-long session, so the token outlives the 24-hour wait below.
    env.settings(json!({"session_timeout_secs": 200_000})).await;
    env.set_quota(json!({"daily": 5})).await;
    for i in 1..=5 {
        let r = env.get("/limits", &env.access).await;
        assert_eq!(r.status, 200, "request {i} is within the allocation");
        assert_eq!(r.header("sforce-limit-info"), Some(format!("api-usage={i}/5")));
    }
    let r = env.get("/limits", &env.access).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!(r.header("sforce-limit-info").as_deref(), Some("api-usage=5/5"));
    assert!(r.header("retry-after").is_none(), "Salesforce sends no Retry-After");
    // Queries and writes are refused alike; the window rolls over 24 hours.
    assert_eq!(env.query("SELECT Id FROM Contact", None).await.status, 403);
    env.advance("23h").await;
    assert_eq!(env.get("/limits", &env.access).await.status, 403);
    env.advance("1h").await;
    assert_eq!(env.get("/limits", &env.access).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(3));
    assert_eq!(c["by_status"]["403"], json!(3));
    assert_eq!(c["by_operation"]["throttled.TotalRequests"], json!(3));
    assert_eq!(c["by_operation"]["limits"], json!(6));
    // Pre-consuming the budget and a configurable message.
    env.set_quota(json!({"daily": 100, "daily_used": 100})).await;
    env.settings(json!({"total_requests_message": "TotalRequests Limit exceeded"})).await;
    let r = env.get("/limits", &env.access).await;
    assert_eq!(r.json()[0]["message"], json!("TotalRequests Limit exceeded"));
    let org = env.ctl_ok("GET", &env.org_path(""), None).await;
    assert_eq!(org["usage"]["api_requests_used"], json!(100));
}

#[tokio::test]
async fn long_running_requests_hit_the_concurrency_cap() {
    let env = start(config(1)).await;
    env.set_quota(
        json!({"concurrent_long_requests": 2, "slow_requests": {"ms": 3000, "path": "*/query", "times": 2}}),
    )
    .await;
    let slow = futures::future::join(
        env.query("SELECT Id FROM Account", None),
        env.query("SELECT Id FROM Account", None),
    );
    let probe = async {
        // Bounded wait until both held queries are in flight, then let 20 s of logical time pass.
        let mut in_flight = 0;
        for _ in 0..250 {
            in_flight =
                env.ctl_ok("GET", &env.org_path(""), None).await["usage"]["in_flight"].as_u64().unwrap_or(0);
            if in_flight >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(in_flight, 2, "both slow queries are in flight");
        let short = env.get("/limits", &env.access).await;
        env.advance("20s").await;
        (short, env.get("/limits", &env.access).await)
    };
    let ((a, b), (short, refused)) = futures::future::join(slow, probe).await;
    assert_eq!(short.status, 200, "requests under 20 s do not count against the cap");
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        json!([{"message": "ConcurrentRequests (Concurrent API Requests) Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!((a.status, b.status), (200, 200), "the long requests themselves complete");
    assert_eq!(env.get("/limits", &env.access).await.status, 200, "room again once they finished");
    let c = env.counters().await;
    assert_eq!(c["by_operation"]["throttled.ConcurrentRequests"], json!(1));
    assert!(c["max_in_flight"].as_u64().is_some_and(|m| m >= 3));
}

#[tokio::test]
async fn injected_faults_use_salesforce_shapes() {
    let env = start(config(1)).await;
    let fault = |action: serde_json::Value| {
        env.ctl_ok("POST", "/_sandbox/salesforce/faults", Some(json!({"times": 1, "action": action})))
    };
    fault(json!({"type": "throttle"})).await;
    let r = env.get("/limits", &env.access).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()[0]["message"], json!("TotalRequests Limit exceeded."));
    assert!(r.header("sforce-limit-info").is_some());
    fault(json!({"type": "throttle", "policy": "concurrency"})).await;
    assert_eq!(
        env.get("/limits", &env.access).await.json()[0]["message"],
        json!("ConcurrentRequests (Concurrent API Requests) Limit exceeded.")
    );
    fault(json!({"type": "status", "status": 503})).await;
    let r = env.get("/limits", &env.access).await;
    assert_eq!(
        (r.status, r.json()),
        (503, json!([{"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}]))
    );
    fault(json!({"type": "status", "status": 401})).await;
    assert_eq!(env.get("/limits", &env.access).await.json()[0]["errorCode"], json!("INVALID_SESSION_ID"));
    fault(json!({"type": "status", "status": 400, "kind": "UNABLE_TO_LOCK_ROW"})).await;
    assert_eq!(env.get("/limits", &env.access).await.json()[0]["errorCode"], json!("UNABLE_TO_LOCK_ROW"));
    fault(json!({"type": "status", "status": 403, "kind": "concurrency"})).await;
    assert_eq!(env.get("/limits", &env.access).await.status, 403);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(3), "throttle faults and 403 REQUEST_LIMIT_EXCEEDED count as throttles");
    assert_eq!(env.get("/limits", &env.access).await.status, 200);
}
