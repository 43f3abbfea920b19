//! Pipedrive rate limits: the 2-second burst per token, the daily token budget with per-endpoint
//! costs, search's own limit, the headers and bodies, and the abuse block.

use crate::pipedrive_support::{As, pd_config, start_pd};
use serde_json::json;

const BODY_429: &str = r#"{"success":false,"error":"Request over limit","errorCode":429,"error_info":"Please check developers.pipedrive.com"}"#;

#[tokio::test]
async fn burst_throttling_starts_exactly_at_the_quota() {
    let env = start_pd(pd_config(3)).await;
    env.set_quota(json!({"api_token_burst": 5})).await;
    for i in 0..5u64 {
        let r = env.get("/api/v2/persons").await;
        assert_eq!(r.status, 200, "request {i} is within the quota");
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some((4 - i).to_string()));
        assert_eq!(r.header("x-ratelimit-reset").as_deref(), Some("2"));
        assert!(r.header("x-daily-ratelimit-token-remaining").is_some());
        assert!(r.header("x-daily-requests-left").is_none(), "GETs do not carry the write counter");
    }
    let r = env.get("/api/v2/persons").await;
    assert_eq!(r.status, 429, "request 6 is throttled");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.text).expect("json"),
        serde_json::from_str::<serde_json::Value>(BODY_429).expect("json")
    );
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset").as_deref(), Some("2"));
    assert_ne!(r.header("x-daily-ratelimit-token-remaining").as_deref(), Some("0"), "burst, not daily");
    assert!(r.header("retry-after").is_none(), "Retry-After is off by default");
    // OAuth traffic has its own (4x larger) window.
    let o = env.send("GET", "/api/v2/persons", As::Bearer(&env.access), None).await;
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-ratelimit-limit").as_deref(), Some("160"), "Growth plan OAuth burst");
    // 1.999 s after the first request the window is still full; at 2 s it rolls.
    env.advance("1999ms").await;
    assert_eq!(env.get("/api/v2/persons").await.status, 429);
    env.advance("1ms").await;
    assert_eq!(env.get("/api/v2/persons").await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(2));
    assert_eq!(c["by_status"]["429"], json!(2));
    assert_eq!(c["by_status"]["200"], json!(7));
}

#[tokio::test]
async fn daily_budget_counts_endpoint_costs_and_resets_at_server_midnight() {
    let env = start_pd(pd_config(3)).await;
    // Europe/Tallinn is UTC+2 in January: 23:59:30 local.
    env.set_clock("2026-01-06T21:59:30Z").await;
    env.set_quota(json!({"daily_budget": 25})).await;
    let steps =
        [("/api/v2/persons", "15"), ("/api/v2/persons/1", "14"), ("/api/v2/deals", "4"), ("/v1/notes", "0")];
    for (path, left) in steps {
        let r = env.get(path).await;
        assert_eq!(r.status, 200, "{path} is served (the depleting request too)");
        assert_eq!(r.header("x-daily-ratelimit-token-limit").as_deref(), Some("25"));
        assert_eq!(r.header("x-daily-ratelimit-token-remaining").as_deref(), Some(left), "{path}");
    }
    let r = env.get("/api/v2/persons/1").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], json!("Request over limit"));
    assert_eq!(
        r.header("x-daily-ratelimit-token-remaining").as_deref(),
        Some("0"),
        "daily exhaustion is told apart by this header"
    );
    // The budget is per company: OAuth traffic is refused too (a fresh token: the seeded one expired).
    let fresh = env.ctl("POST", &env.account_path("/tokens"), None).await;
    let token = fresh["access_token"].as_str().expect("access token");
    let o = env.send("GET", "/api/v2/persons/1", As::Bearer(token), None).await;
    assert_eq!(o.status, 429);
    env.settings(json!({"retry_after": true})).await;
    assert_eq!(
        env.get("/api/v2/persons/1").await.header("retry-after").as_deref(),
        Some("30"),
        "until server midnight"
    );
    // Midnight in Europe/Tallinn.
    env.advance("30s").await;
    let r = env.get("/api/v2/persons").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-daily-ratelimit-token-remaining").as_deref(), Some("15"));
    let account = env.ctl("GET", &env.account_path(""), None).await;
    assert_eq!(account["usage"]["daily_used"], json!(10));
}

#[tokio::test]
async fn retry_after_and_optional_headers_are_switchable() {
    let env = start_pd(pd_config(2)).await;
    env.settings(json!({"retry_after": true})).await;
    env.set_quota(json!({"burst": 1})).await;
    assert_eq!(env.get("/api/v2/deals").await.status, 200);
    env.advance("500ms").await;
    let r = env.get("/api/v2/deals").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    env.advance("2s").await;
    // Daily-token headers go missing after an hour of inactivity (observed live).
    env.settings(json!({"daily_token_headers": "after_inactivity", "burst_headers": false})).await;
    env.advance("2h").await;
    let first = env.get("/api/v2/deals").await;
    assert_eq!(first.status, 200);
    assert!(first.header("x-daily-ratelimit-token-remaining").is_none());
    assert!(first.header("x-ratelimit-limit").is_none());
    env.advance("3s").await;
    let second = env.get("/api/v2/deals").await;
    assert!(second.header("x-daily-ratelimit-token-remaining").is_some());
    // The write counter appears on API-token writes only.
    env.advance("2s").await;
    let w = env.post("/api/v2/organizations", &json!({"name": "Acme"})).await;
    assert_eq!(w.status, 200);
    assert_eq!(w.header("x-daily-requests-left").as_deref(), Some("9999"));
    let fresh = env.ctl("POST", &env.account_path("/tokens"), None).await;
    let token = fresh["access_token"].as_str().expect("access token");
    let ow =
        env.send("POST", "/api/v2/organizations", As::Bearer(token), Some(&json!({"name": "Beta"}))).await;
    assert_eq!(ow.status, 200);
    assert!(ow.header("x-daily-requests-left").is_none());
}

#[tokio::test]
async fn search_has_its_own_ten_per_two_seconds_and_costs_twenty_tokens() {
    let env = start_pd(pd_config(5)).await;
    for _ in 0..10 {
        let r = env.get("/api/v2/persons/search?term=smith").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("10"));
    }
    let r = env.get("/api/v2/persons/search?term=smith").await;
    assert_eq!(r.status, 429);
    assert_eq!(env.get("/api/v2/persons").await.status, 200, "other endpoints have their own window");
    let account = env.ctl("GET", &env.account_path(""), None).await;
    assert_eq!(account["usage"]["daily_used"], json!(10 * 20 + 10));
}

#[tokio::test]
async fn an_api_token_that_keeps_hammering_gets_the_cloudflare_page() {
    let env = start_pd(pd_config(1)).await;
    env.settings(json!({"abuse_block_after": 2, "abuse_block_secs": 60})).await;
    env.set_quota(json!({"burst": 1})).await;
    assert_eq!(env.get("/api/v2/persons").await.status, 200);
    assert_eq!(env.get("/api/v2/persons").await.status, 429);
    assert_eq!(env.get("/api/v2/persons").await.status, 429);
    let blocked = env.get("/api/v2/persons").await;
    assert_eq!(blocked.status, 403);
    assert!(blocked.header("content-type").expect("content type").starts_with("text/html"));
    assert!(blocked.text.contains("Cloudflare"));
    env.advance("59s").await;
    assert_eq!(env.get("/api/v2/persons").await.status, 403);
    env.advance("1s").await;
    assert_eq!(env.get("/api/v2/persons").await.status, 200);
    assert_eq!(env.counters().await["throttled"], json!(4));
}
