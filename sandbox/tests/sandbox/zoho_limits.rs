//! Zoho limits: rolling 24 h credits (per-operation costs, headers, 429 body) and the per-app
//! concurrency and sub-concurrency slots, plus counters.

use crate::zoho_support::{zconfig, zstart};
use serde_json::{Value, json};
use std::sync::Arc;

#[tokio::test]
async fn credits_throttle_exactly_at_the_quota_with_headers_and_body() {
    let env = zstart(zconfig(3)).await;
    let a = env.set_quota(json!({"credits": 5})).await;
    assert_eq!(a["quota"]["credits"], json!(5));
    for i in 0..5u64 {
        let r = env.get("/crm/v7/Contacts?fields=Last_Name", &env.access).await;
        assert_eq!(r.status, 200, "call {i} is within the quota");
        assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some((4 - i).to_string()));
        assert_eq!(
            r.header("x-ratelimit-reset").as_deref(),
            Some("86400"),
            "the oldest credit leaves in a day"
        );
    }
    let r = env.get("/crm/v7/Contacts?fields=Last_Name", &env.access).await;
    assert_eq!(r.status, 429);
    let b = r.json();
    assert_eq!(b["code"], json!("TOO_MANY_REQUESTS"));
    assert_eq!(b["status"], json!("error"));
    assert!(b["message"].as_str().expect("message").contains("API credits"));
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert!(r.header("retry-after").is_none(), "no documented Retry-After");
    // A day after the first call its credit frees; one more call fits.
    env.advance("86399s").await;
    let fresh = env.fresh_tokens().await["access_token"].as_str().expect("access").to_owned();
    assert_eq!(env.get("/crm/v7/Contacts?fields=Last_Name", &fresh).await.status, 429);
    env.advance("1s").await;
    assert_eq!(env.get("/crm/v7/Contacts?fields=Last_Name", &fresh).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["throttled"], json!(2));
    assert_eq!(c["by_status"]["429"], json!(2));
    assert_eq!(c["by_status"]["200"], json!(6));
    assert_eq!(c["by_operation"]["Contacts.list"], json!(6));
    assert_eq!(c["by_operation"]["throttled.credits"], json!(2));
    // The alternative body code and Retry-After toggles.
    env.set_quota(json!({"credits": 1})).await;
    env.settings(json!({"throttle_code": "RATE_LIMIT_EXCEEDED", "retry_after": true})).await;
    let r = env.get("/crm/v7/Contacts?fields=Last_Name", &fresh).await;
    assert_eq!(r.json()["code"], json!("RATE_LIMIT_EXCEEDED"));
    assert_eq!(r.header("retry-after").as_deref(), Some("86400"), "the one counted credit frees in a day");
}

#[tokio::test]
async fn writes_cost_one_credit_per_ten_records() {
    let env = zstart(zconfig(1)).await;
    env.set_quota(json!({"credits": 100})).await;
    let records: Vec<Value> = (0..11).map(|i| json!({"Last_Name": format!("w{i}")})).collect();
    let r = env.post("/crm/v7/Contacts", &env.access, &json!({"data": records})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("98"), "11 records cost 2 credits");
    let r = env.post("/crm/v7/Contacts", &env.access, &json!({"data": [{"Last_Name": "one"}]})).await;
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("97"));
    // Pre-consumed credits count; an insufficient balance refuses a costly write but not a cheap read.
    env.set_quota(json!({"credits_used": 96})).await;
    let r = env.post("/crm/v7/Contacts", &env.access, &json!({"data": records})).await;
    assert_eq!(r.status, 429);
    assert_eq!(env.get("/crm/v7/Contacts?fields=Last_Name", &env.access).await.status, 200);
    let a = env.account().await;
    assert_eq!(a["usage"]["credits_used"], json!(100));
}

#[tokio::test]
async fn concurrency_slots_per_app_with_a_heavy_sub_limit() {
    let env = Arc::new(zstart(zconfig(3)).await);
    env.set_quota(json!({"concurrency": 2, "sub_concurrency": 1, "hold": true})).await;
    let spawn = |path: &'static str| {
        let env = env.clone();
        tokio::spawn(async move { env.get(path, &env.access).await.status })
    };
    let first = spawn("/crm/v7/Contacts/search?word=Le");
    env.wait_in_flight(1).await;
    // The search holds the only heavy slot: another heavy call is refused at once.
    let heavy = env.get("/crm/v7/Contacts?fields=Last_Name&sort_by=Modified_Time", &env.access).await;
    assert_eq!(heavy.status, 429);
    assert!(heavy.json()["message"].as_str().expect("message").contains("concurrent"));
    let second = spawn("/crm/v7/Contacts?fields=Last_Name");
    env.wait_in_flight(2).await;
    let third = env.get("/crm/v7/Deals?fields=Deal_Name", &env.access).await;
    assert_eq!(third.status, 429, "the third concurrent call exceeds the limit of 2");
    // Another OAuth app (a different client) has its own slots: not applicable here, one app per
    // sandbox. Releasing the hold lets the held calls finish.
    env.set_quota(json!({"hold": false})).await;
    assert_eq!(first.await.expect("task"), 200);
    assert_eq!(second.await.expect("task"), 200);
    env.wait_in_flight(0).await;
    assert_eq!(env.get("/crm/v7/Deals?fields=Deal_Name", &env.access).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["by_operation"]["throttled.concurrency"], json!(2));
    assert_eq!(c["max_in_flight"], json!(3), "the gate saw the refused call in flight too");
}

#[tokio::test]
async fn editions_set_the_documented_numbers() {
    let env = zstart(zconfig(1)).await;
    let a = env.account().await;
    assert_eq!(
        a["quota"],
        json!({"edition": "enterprise", "users": 10, "add_on_credits": 0, "credits": 60000, "concurrency": 20, "sub_concurrency": 10})
    );
    let a = env.set_quota(json!({"edition": "standard", "users": 10})).await;
    assert_eq!((a["quota"]["credits"].clone(), a["quota"]["concurrency"].clone()), (json!(52500), json!(10)));
    let a = env.set_quota(json!({"edition": "ultimate"})).await;
    assert_eq!(a["quota"]["credits"], json!(null));
    let r = env.get("/crm/v7/Deals?fields=Deal_Name", &env.access).await;
    assert!(r.header("x-ratelimit-limit").is_none(), "unlimited credits: no limit header");
    let a = env.set_quota(json!({"edition": "free"})).await;
    assert_eq!((a["quota"]["credits"].clone(), a["quota"]["concurrency"].clone()), (json!(5000), json!(5)));
    env.settings(json!({"rate_limit_headers": false})).await;
    let r = env.get("/crm/v7/Deals?fields=Deal_Name", &env.access).await;
    assert!(r.header("x-ratelimit-remaining").is_none());
    assert_eq!(
        env.ctl("PATCH", &format!("/_sandbox/zoho/accounts/{}", env.org), Some(json!({"bogus": 1})))
            .await
            .status,
        400
    );
}
