//! The scheduling API over HTTP: validation names the field, schedules round-trip, manual
//! syncs report duplicates of a queued sync.

use serde_json::{Value, json};

use crate::support::Env;

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_name_the_field() {
    let env = Env::new().await;
    let conn = env.connection().await;
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let url = format!("{}/v1/schedules", app.base);
    let missing = uuid::Uuid::new_v4();
    let cases: Vec<(Value, &str, u16)> = vec![
        (json!({"cron": "* * * * *"}), "connection_id", 422),
        (json!({"connection_id": "nope", "cron": "* * * * *"}), "connection_id", 422),
        (json!({"connection_id": missing, "cron": "* * * * *"}), "connection_id", 422),
        (json!({"connection_id": conn}), "cron", 422),
        (json!({"connection_id": conn, "cron": "*/5 * * *"}), "cron", 422),
        (json!({"connection_id": conn, "cron": "0 0 30 2 *"}), "cron", 422),
        (
            json!({"connection_id": conn, "cron": "* * * * *", "time_zone": "Europe/Atlantis"}),
            "time_zone",
            422,
        ),
        (
            json!({"connection_id": conn, "cron": "* * * * *", "objects": ["contact", "lead"]}),
            "objects[1]",
            422,
        ),
        (
            json!({"connection_id": conn, "cron": "* * * * *", "overlap_policy": "queue"}),
            "overlap_policy",
            422,
        ),
        (
            json!({"connection_id": conn, "cron": "* * * * *", "missed_policy": "everything"}),
            "missed_policy",
            422,
        ),
        (json!({"connection_id": conn, "cron": "* * * * *", "backfill_limit": 5000}), "backfill_limit", 422),
        (json!({"connection_id": conn, "cron": "* * * * *", "jitter_ms": "1s"}), "jitter_ms", 422),
        (json!({"connection_id": conn, "cron": "* * * * *", "priority": 1}), "priority", 422),
    ];
    for (body, field, status) in cases {
        let (got, reply) = send(&client, reqwest::Method::POST, url.clone(), Some(body.clone())).await;
        assert_eq!(got, status, "{body} → {reply}");
        assert_eq!(reply["field"], field, "{body} → {reply}");
        assert!(reply["error"].is_string() && reply["message"].is_string(), "{reply}");
    }
    // Malformed JSON.
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.expect("json")["field"], "body");
    // Path and query parameters.
    let (got, reply) =
        send(&client, reqwest::Method::PATCH, format!("{url}/xyz"), Some(json!({"enabled": false}))).await;
    assert_eq!(
        (got, reply["field"].as_str(), reply["error"].as_str()),
        (400, Some("id"), Some("invalid_id"))
    );
    let (got, reply) =
        send(&client, reqwest::Method::PATCH, format!("{url}/{missing}"), Some(json!({"enabled": false})))
            .await;
    assert_eq!((got, reply["field"].as_str()), (404, Some("id")));
    let (got, reply) = send(&client, reqwest::Method::GET, format!("{url}?connection_id=abc"), None).await;
    assert_eq!((got, reply["field"].as_str()), (400, Some("connection_id")));
    let (got, reply) = send(&client, reqwest::Method::GET, format!("{url}?colour=red"), None).await;
    assert_eq!((got, reply["field"].as_str()), (400, Some("colour")));
    let (got, reply) = send(&client, reqwest::Method::GET, format!("{url}?limit=0"), None).await;
    assert_eq!((got, reply["field"].as_str()), (422, Some("limit")));
    let sync = format!("{}/v1/connections/{conn}/sync", app.base);
    let (got, reply) =
        send(&client, reqwest::Method::POST, sync.clone(), Some(json!({"mode": "partial"}))).await;
    assert_eq!((got, reply["field"].as_str()), (422, Some("mode")));
    let (got, reply) =
        send(&client, reqwest::Method::POST, sync, Some(json!({"objects": ["deal", 3]}))).await;
    assert_eq!((got, reply["field"].as_str()), (422, Some("objects[1]")));
    let (got, reply) =
        send(&client, reqwest::Method::POST, format!("{}/v1/connections/{missing}/sync", app.base), None)
            .await;
    assert_eq!((got, reply["field"].as_str()), (404, Some("id")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_round_trip() {
    let env = Env::new().await;
    let (a, b) = (env.connection().await, env.connection().await);
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let url = format!("{}/v1/schedules", app.base);
    let (status, created) = send(
        &client,
        reqwest::Method::POST,
        url.clone(),
        Some(json!({
            "connection_id": a, "objects": ["deal", "contact"], "cron": "0 9 * * MON-FRI",
            "time_zone": "Europe/Paris", "missed_policy": "backfill", "backfill_limit": 3, "jitter_ms": 30000
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["objects"], json!(["deal", "contact"]));
    assert_eq!(created["missed_policy"], "backfill");
    assert_eq!(created["overlap_policy"], "skip");
    assert!(created["next_tick_at"].is_string(), "{created}");
    let (status, _) = send(
        &client,
        reqwest::Method::POST,
        url.clone(),
        Some(json!({"connection_id": b, "cron": "*/10 * * * * *"})),
    )
    .await;
    assert_eq!(status, 201);

    let (_, all) = send(&client, reqwest::Method::GET, url.clone(), None).await;
    assert_eq!(all["schedules"].as_array().map(Vec::len), Some(2));
    let (_, only_a) = send(&client, reqwest::Method::GET, format!("{url}?connection_id={a}"), None).await;
    assert_eq!(only_a["schedules"].as_array().map(Vec::len), Some(1));
    let (_, page) = send(&client, reqwest::Method::GET, format!("{url}?limit=1"), None).await;
    assert!(page["next_after"].is_string(), "{page}");

    let id = created["id"].as_str().expect("id");
    let (status, patched) = send(
        &client,
        reqwest::Method::PATCH,
        format!("{url}/{id}"),
        Some(json!({"enabled": false, "overlap_policy": "buffer_one"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (patched["enabled"].as_bool(), patched["overlap_policy"].as_str()),
        (Some(false), Some("buffer_one"))
    );
    assert!(patched["next_tick_at"].is_null(), "a disabled schedule has no next tick");
    assert_eq!(patched["cron"], "0 9 * * MON-FRI", "untouched fields stay");
    // A patch is validated against the stored row: a cron that needs the new time zone.
    let (status, reply) =
        send(&client, reqwest::Method::PATCH, format!("{url}/{id}"), Some(json!({"cron": "61 * * * *"})))
            .await;
    assert_eq!((status, reply["field"].as_str()), (422, Some("cron")));
    let (status, shown) = send(&client, reqwest::Method::GET, format!("{url}/{id}"), None).await;
    assert_eq!((status, shown["overlap_policy"].as_str()), (200, Some("buffer_one")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_sync_reports_duplicates_of_a_queued_sync() {
    let env = Env::new().await;
    let conn = env.connection().await;
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let url = format!("{}/v1/connections/{conn}/sync", app.base);
    let (status, first) = send(
        &client,
        reqwest::Method::POST,
        url.clone(),
        Some(json!({"objects": ["contact"], "mode": "full"})),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["jobs"][0]["object"], "contact");
    assert_eq!(first["jobs"][0]["duplicate"], false);
    // All objects: the contact sync is still queued, the others are new.
    let (status, second) = send(&client, reqwest::Method::POST, url.clone(), None).await;
    assert_eq!(status, 202, "{second}");
    let jobs = second["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3);
    for j in jobs {
        let dup = j["object"] == "contact";
        assert_eq!(j["duplicate"], dup, "{second}");
        if dup {
            assert_eq!(j["job_id"], first["jobs"][0]["job_id"], "the queued sync's id");
        }
    }
    let seen = crate::support::Seen::default();
    // Several drains: the connection's concurrency budget (seeded by the scheduler's limits
    // reload) may admit fewer than three at once; each ack frees a slot.
    let mut drained = 0;
    for _ in 0..100 {
        drained += env.drain(&seen).await;
        if drained >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(drained, 3, "three sync jobs: contact once, company, deal");
    assert_eq!(env.drain(&seen).await, 0, "and no more");
    let full = seen
        .all()
        .into_iter()
        .find(|r| r.object == crm_jobs::providers::ObjectKind::Contact)
        .expect("contact");
    assert_eq!(full.mode, crm_jobs::job::SyncMode::Full);
    assert_eq!(full.tick, None);
    // Disabled connections are refused.
    sqlx::query("UPDATE connections SET status = 'disabled' WHERE id = $1")
        .bind(conn)
        .execute(env.pool())
        .await
        .expect("disable");
    let (status, reply) = send(&client, reqwest::Method::POST, url, None).await;
    assert_eq!((status, reply["error"].as_str()), (409, Some("connection_disabled")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_schedule_is_gone() {
    let env = Env::new().await;
    let conn = env.connection().await;
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let url = format!("{}/v1/schedules", app.base);
    // Yearly: the in-process engine has nothing to tick meanwhile.
    let (status, created) = send(
        &client,
        reqwest::Method::POST,
        url.clone(),
        Some(json!({"connection_id": conn, "cron": "0 0 1 1 *"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, body) = send(&client, reqwest::Method::DELETE, format!("{url}/{id}"), None).await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = send(&client, reqwest::Method::GET, format!("{url}/{id}"), None).await;
    assert_eq!((status, body["field"].as_str()), (404, Some("id")), "{body}");
    let (status, body) = send(&client, reqwest::Method::DELETE, format!("{url}/{id}"), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = send(&client, reqwest::Method::DELETE, format!("{url}/nope"), None).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("id")), "{body}");
    let (status, listed) =
        send(&client, reqwest::Method::GET, format!("{url}?connection_id={conn}"), None).await;
    assert_eq!((status, listed["schedules"].as_array().map(Vec::len)), (200, Some(0)), "{listed}");
    app.shutdown().await;
}
