//! Rate limits: the ten-secondly burst, the daily cap, headers and 429 bodies.

use crate::support::{config, start};
use serde_json::json;

#[tokio::test]
async fn burst_throttling_starts_exactly_at_the_quota() {
    let env = start(config(3)).await;
    env.set_quota(json!({"burst": 5})).await;
    for i in 0..5u64 {
        let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
        assert_eq!(r.status, 200, "request {i} is within the quota");
        assert_eq!(r.header("x-hubspot-ratelimit-max").as_deref(), Some("5"));
        assert_eq!(r.header("x-hubspot-ratelimit-remaining"), Some((4 - i).to_string()));
        assert_eq!(r.header("x-hubspot-ratelimit-interval-milliseconds").as_deref(), Some("10000"));
        assert!(r.header("x-hubspot-ratelimit-daily").is_some(), "private-app calls carry daily headers");
    }
    let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
    assert_eq!(r.status, 429, "request 6 is throttled");
    let b = r.json();
    assert_eq!(b["status"], json!("error"));
    assert_eq!(b["message"], json!("You have reached your ten_secondly_rolling limit."));
    assert_eq!(b["errorType"], json!("RATE_LIMIT"));
    assert_eq!(b["policyName"], json!("TEN_SECONDLY_ROLLING"));
    assert!(b["correlationId"].is_string() && b["requestId"].is_string());
    assert_eq!(r.header("x-hubspot-ratelimit-remaining").as_deref(), Some("0"));
    assert!(r.header("retry-after").is_none(), "Retry-After is off by default");
    // 9.999 s later still throttled; at 10 s the window has rolled.
    env.advance("9999ms").await;
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 429);
    env.advance("1ms").await;
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(2));
    assert_eq!(c["by_status"]["429"], json!(2));
    assert_eq!(c["by_status"]["200"], json!(6));
}

#[tokio::test]
async fn retry_after_toggle_and_error_key_variant() {
    let env = start(config(1)).await;
    env.set_quota(json!({"burst": 1})).await;
    env.ctl_ok(
        "PATCH",
        "/_sandbox/hubspot/settings",
        Some(json!({"retry_after": true, "rate_limit_error_key": "category"})),
    )
    .await;
    assert_eq!(env.get("/crm/v3/objects/deals", &env.pat).await.status, 200);
    env.advance("4s").await;
    let r = env.get("/crm/v3/objects/deals", &env.pat).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("6"));
    let b = r.json();
    assert_eq!(b["category"], json!("RATE_LIMITS"));
    assert!(b.get("errorType").is_none());
}

#[tokio::test]
async fn daily_cap_for_private_apps_resets_at_local_midnight() {
    let env = start(config(1)).await;
    // 2026-01-05T09:00Z is 04:00 in New York; set the clock to 23:59:30 local.
    env.ctl_ok("POST", "/_sandbox/clock", Some(json!({"set": "2026-01-06T04:59:30Z"}))).await;
    env.set_quota(json!({"daily": 3, "daily_used": 1})).await;
    for left in ["1", "0"] {
        let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-hubspot-ratelimit-daily").as_deref(), Some("3"));
        assert_eq!(r.header("x-hubspot-ratelimit-daily-remaining").as_deref(), Some(left));
    }
    let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
    assert_eq!(r.status, 429);
    let b = r.json();
    assert_eq!(b["policyName"], json!("DAILY"));
    assert_eq!(b["message"], json!("You have reached your daily limit."));
    // OAuth calls have no daily cap and no daily headers (a fresh token: the seeded one has expired).
    let fresh = env.ctl_ok("POST", &format!("/_sandbox/hubspot/accounts/{}/tokens", env.hub), None).await;
    let o = env.get("/crm/v3/objects/contacts", fresh["access_token"].as_str().expect("access")).await;
    assert_eq!(o.status, 200);
    assert!(o.header("x-hubspot-ratelimit-daily").is_none());
    assert_eq!(o.header("x-hubspot-ratelimit-max").as_deref(), Some("110"));
    // Midnight in America/New_York.
    env.advance("30s").await;
    let r = env.get("/crm/v3/objects/contacts", &env.pat).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-hubspot-ratelimit-daily-remaining").as_deref(), Some("2"));
}

#[tokio::test]
async fn oauth_burst_is_110_per_account_and_separate_from_the_private_app() {
    let env = start(config(1)).await;
    for _ in 0..110 {
        assert_eq!(env.get("/crm/v3/objects/notes", &env.access).await.status, 200);
    }
    let r = env.get("/crm/v3/objects/notes", &env.access).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["policyName"], json!("TEN_SECONDLY_ROLLING"));
    let p = env.get("/crm/v3/objects/notes", &env.pat).await;
    assert_eq!(p.status, 200, "the private app has its own window");
    assert_eq!(p.header("x-hubspot-ratelimit-remaining").as_deref(), Some("99"));
}
