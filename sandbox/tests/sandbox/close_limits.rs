//! Close rate limits: per endpoint group and API key, per organization at 3×, the `RateLimit`
//! header, 429 with `retry-after` and the legacy body (or an empty one), stricter endpoints, and
//! injected faults in Close's shapes.

use crate::close_support::{Cred, config, start};
use serde_json::json;

#[tokio::test]
async fn throttling_starts_exactly_at_the_key_limit_with_the_documented_headers() {
    let env = start(config(3)).await;
    env.set_quota(json!({"limit": 5})).await;
    for i in 0..5u64 {
        let r = env.get("/api/v1/lead/", &env.key).await;
        assert_eq!(r.status, 200, "request {i} is within the limit");
        let remaining = 4 - i;
        let reset = (5 - remaining) as f64 / 5.0;
        assert_eq!(r.header("ratelimit"), Some(format!("limit=5, remaining={remaining}, reset={reset:.3}")));
    }
    let r = env.get("/api/v1/lead/", &env.key).await;
    assert_eq!(r.status, 429, "request 6 is throttled");
    assert_eq!(r.header("ratelimit").as_deref(), Some("limit=5, remaining=0, reset=0.200"));
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        r.json(),
        json!({"error": {"message": "API call count exceeded for this period", "rate_reset": 0.2, "rate_limit": 5, "rate_window": 1.0, "rate_limit_type": "key"}})
    );
    // Another endpoint group has its own bucket.
    assert_eq!(env.get("/api/v1/contact/", &env.key).await.status, 200);
    // 199 ms later still empty; at 200 ms one token is back.
    env.advance("199ms").await;
    assert_eq!(env.get("/api/v1/lead/", &env.key).await.status, 429);
    env.advance("1ms").await;
    assert_eq!(env.get("/api/v1/lead/", &env.key).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(2));
    assert_eq!(c["by_status"]["429"], json!(2));
    assert_eq!(c["by_status"]["200"], json!(7));
}

#[tokio::test]
async fn the_organization_limit_is_three_times_the_key_limit() {
    let env = start(config(1)).await;
    let acct = env
        .ctl(
            "POST",
            "/_sandbox/close/accounts",
            Some(json!({"records": 1, "api_keys": 4, "quota": {"limit": 2}})),
        )
        .await;
    let keys: Vec<Cred> = acct["credentials"]["api_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| Cred::Key(k.as_str().expect("key").to_owned()))
        .collect();
    assert_eq!(keys.len(), 4);
    for k in &keys[..3] {
        for _ in 0..2 {
            assert_eq!(env.get("/api/v1/opportunity/", k).await.status, 200);
        }
        assert_eq!(env.get("/api/v1/opportunity/", k).await.json()["error"]["rate_limit_type"], json!("key"));
    }
    let r = env.get("/api/v1/opportunity/", &keys[3]).await;
    assert_eq!(r.status, 429, "a fourth key hits the organization limit");
    let b = r.json();
    assert_eq!(
        (b["error"]["rate_limit_type"].clone(), b["error"]["rate_limit"].clone()),
        (json!("org"), json!(6))
    );
    assert_eq!(r.header("ratelimit").as_deref(), Some("limit=6, remaining=0, reset=0.167"));
}

#[tokio::test]
async fn empty_body_toggle_and_stricter_endpoints() {
    let env = start(config(1)).await;
    env.set_quota(json!({"limits": {"search": 1}})).await;
    env.settings(json!({"rate_limit_legacy_body": false})).await;
    let q = json!({"query": {"type": "object_type", "object_type": "lead"}});
    assert_eq!(env.post("/api/v1/data/search/", &env.key, &q).await.status, 200);
    let r = env.post("/api/v1/data/search/", &env.key, &q).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text, "", "the deprecated body can be switched off");
    assert!(r.header("ratelimit").is_some() && r.header("retry-after").is_some());
    env.settings(json!({"rate_limit_legacy_body": true})).await;
    env.set_quota(json!({"stricter": {"write": 2}})).await;
    let lead =
        env.get("/api/v1/lead/", &env.key).await.json()["data"][0]["id"].as_str().expect("lead").to_owned();
    for _ in 0..2 {
        assert_eq!(
            env.put(&format!("/api/v1/lead/{lead}/"), &env.key, &json!({"description": "x"})).await.status,
            200
        );
    }
    let r = env.put(&format!("/api/v1/lead/{lead}/"), &env.key, &json!({"description": "y"})).await;
    assert_eq!(r.status, 429, "a stricter endpoint throttles inside the normal limit");
    assert!(r.header("ratelimit").is_none(), "only retry-after and rate_reset are set");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        r.json(),
        json!({"error": {"message": "API call count exceeded for this period", "rate_reset": 0.5}})
    );
}

#[tokio::test]
async fn injected_faults_use_close_shapes() {
    let env = start(config(1)).await;
    let rule = |status: u16, kind: Option<&str>| {
        let mut action = json!({"type": "status", "status": status});
        if let Some(k) = kind {
            action["kind"] = json!(k);
        }
        json!({"account": env.org, "path": "/api/v1/lead/", "action": action, "times": 1})
    };
    env.ctl("POST", "/_sandbox/close/faults", Some(rule(429, Some("org")))).await;
    let r = env.get("/api/v1/lead/", &env.key).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["rate_limit_type"], json!("org"));
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    env.ctl("POST", "/_sandbox/close/faults", Some(rule(502, None))).await;
    let r = env.get("/api/v1/lead/", &env.key).await;
    assert_eq!(r.status, 502);
    assert!(r.text.contains("502 Bad Gateway"));
    env.ctl("POST", "/_sandbox/close/faults", Some(rule(503, Some("json")))).await;
    let r = env.get("/api/v1/lead/", &env.key).await;
    assert_eq!((r.status, r.json()), (503, json!({"error": "Service Unavailable"})));
    env.ctl("POST", "/_sandbox/close/faults", Some(rule(402, None))).await;
    assert_eq!(env.get("/api/v1/lead/", &env.key).await.status, 402);
    env.ctl(
        "POST",
        "/_sandbox/close/faults",
        Some(json!({"account": env.org, "action": {"type": "throttle", "policy": "stricter", "retry_after_secs": 7}, "times": 1})),
    )
    .await;
    let r = env.get("/api/v1/lead/", &env.key).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("7"));
    assert!(r.header("ratelimit").is_none());
    assert_eq!(env.get("/api/v1/lead/", &env.key).await.status, 200, "every rule fired once");
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(2));
}
