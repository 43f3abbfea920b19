//! The client against a real `crm-scheduler` API (in process, port 0) on a fresh database and
//! Redis prefix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crm_fleet_client::{Action, Client, Error};
use crm_jobs::auth::{AuthKind, Keyring, Store};
use crm_jobs::providers::Provider;
use crm_jobs::testing::{REDIS_URL, TestDb, purge_redis_prefix, unique};
use crm_scheduler::api::keys::{self, Scope};
use crm_scheduler::server::{Scheduler, SchedulerConfig};
use secrecy::SecretString;
use serde_json::json;

struct Api {
    base: String,
    db: TestDb,
    key: String,
    prefix: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

/// A database with tenant `acme` and its HubSpot connection, and an `enqueue` key.
async fn database() -> (TestDb, String) {
    let db = TestDb::new().await;
    let store = Store::new(
        db.pool.clone(),
        Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key")),
    );
    store.ensure_tenant("acme", "Acme").await.expect("tenant");
    store
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &SecretString::from("pat-na1-x".to_owned()),
            "http://127.0.0.1:9",
            "1",
        )
        .await
        .expect("connection");
    let (key, _) = keys::create(&db.pool, "svc", &[Scope::Enqueue]).await.expect("key");
    (db, key)
}

/// Serves the API on `addr` (port 0: any).
async fn serve(db: TestDb, key: String, addr: SocketAddr) -> Api {
    let prefix = unique("crmtest-");
    let keys = Arc::new(Keyring::from_base64(&Keyring::generate_base64(), &[]).expect("key"));
    let config =
        SchedulerConfig { api_addr: addr, ..SchedulerConfig::local(&db.url, REDIS_URL, &prefix, keys) };
    let scheduler = Scheduler::build(config).await.expect("build");
    let base = format!("http://{}", scheduler.api_addr());
    tokio::spawn(scheduler.run_until(std::future::pending()));
    Api { base, db, key, prefix }
}

fn task(subject: &str) -> Action {
    Action::new("acme", "hubspot", "create_task", json!({ "subject": subject }))
}

#[tokio::test]
async fn enqueues_once_per_key_and_reports_the_apis_errors_by_field() {
    let (db, key) = database().await;
    let api = serve(db, key, "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&api.base, &api.key).expect("client");

    let first = client.enqueue("order-1042", &task("Call back")).await.expect("enqueued");
    assert!(!first.duplicate);
    let again = client.enqueue("order-1042", &task("Call back")).await.expect("repeat");
    assert_eq!((again.job_id, again.duplicate), (first.job_id, true), "the same job");
    let job = client.job(first.job_id).await.expect("job");
    assert_eq!((job.id, job.kind.as_str(), job.state.as_str()), (first.job_id, "action", "queued"));
    assert!(!job.is_finished() && job.external_id().is_none());

    let reused = client.enqueue("order-1042", &task("Something else")).await.expect_err("another body");
    assert!(
        matches!(&reused, Error::Api { status: 422, error, field: Some(f), .. } if error == "idempotency_key_reused" && f == "Idempotency-Key"),
        "{reused}"
    );
    assert!(!reused.is_transient());
    let invalid = client
        .enqueue("k2", &Action::new("acme", "hubspot", "create_task", json!({ "subject": 5 })))
        .await
        .expect_err("bad params");
    assert!(
        matches!(&invalid, Error::Api { status: 422, field: Some(f), .. } if f.starts_with("params")),
        "{invalid}"
    );
    let tenant = client
        .enqueue("k3", &Action::new("nobody", "hubspot", "create_task", json!({ "subject": "x" })))
        .await;
    assert!(
        matches!(tenant, Err(Error::Api { status: 404, ref field, .. }) if field.as_deref() == Some("tenant_id"))
    );
    let unknown = client.job(uuid::Uuid::new_v4()).await.expect_err("no such job");
    assert!(matches!(unknown, Error::Api { status: 404, .. }), "{unknown}");

    let unsendable = client.enqueue("line\nbreak", &task("x")).await.expect_err("a key no header can carry");
    assert!(matches!(unsendable, Error::Config(_)) && !unsendable.is_transient(), "{unsendable}");

    let stranger = Client::new(&api.base, "cf_deadbeef_nope").expect("client");
    let refused = stranger.enqueue("k4", &task("x")).await.expect_err("bad key");
    assert!(matches!(&refused, Error::Api { status: 401, .. }), "{refused}");
    assert!(!format!("{client:?}").contains(&api.key), "no key in Debug");

    // Waiting: the job finishes when a worker records it (done here by hand: no worker runs).
    let waited = client.wait_for(first.job_id, Duration::from_millis(300), Duration::from_millis(100)).await;
    assert!(matches!(&waited, Err(Error::Timeout(job)) if job.state == "queued"), "{waited:?}");
    sqlx::query("UPDATE actions SET state = 'succeeded', result = '{\"external_id\": \"42\"}', completed_at = now() WHERE id = $1")
        .bind(first.job_id)
        .execute(&api.db.pool)
        .await
        .expect("finish");
    let done = client
        .wait_for(first.job_id, Duration::from_secs(5), Duration::from_millis(50))
        .await
        .expect("finished");
    assert_eq!((done.state.as_str(), done.external_id()), ("succeeded", Some("42")));
}

/// The API is down when the enqueue starts and comes up a moment later: the client tries
/// again under the same key, and exactly one action exists.
#[tokio::test]
async fn an_enqueue_sent_while_the_api_is_down_is_retried_and_made_once() {
    let (db, key) = database().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr");
    let client = Client::new(&format!("http://{addr}"), &key)
        .expect("client")
        .with_retries(8, Duration::from_millis(100));
    let enqueue = tokio::spawn({
        let client = client.clone();
        async move { client.enqueue("retry-me", &task("Retry")).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let api = serve(db, key, addr).await;
    let accepted = enqueue.await.expect("task").expect("enqueued after retries");
    assert!(!accepted.duplicate);
    let actions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM actions").fetch_one(&api.db.pool).await.expect("count");
    assert_eq!(actions, 1);

    // With no retries left, the failure says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let once =
        Client::new(&format!("http://{closed}"), "cf_x_y").expect("client").with_retries(1, Duration::ZERO);
    let err = once.enqueue("k", &task("x")).await.expect_err("nothing listens");
    assert!(matches!(err, Error::Transport(_)) && err.is_transient(), "{err}");
}

/// A server that is briefly unavailable says when to come back: the client waits that long
/// (not its own shorter backoff) and sends the same request again, key included.
#[tokio::test]
async fn a_503_with_retry_after_is_obeyed_and_the_same_key_sent_again() {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<(std::time::Instant, String)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/actions",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let n = {
                        let mut seen = seen.lock().expect("lock");
                        seen.push((std::time::Instant::now(), key));
                        seen.len()
                    };
                    if n == 1 {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "1")],
                            axum::Json(json!({"error": "unavailable", "field": null, "message": "the database is unavailable; retry"})),
                        )
                    } else {
                        (
                            axum::http::StatusCode::ACCEPTED,
                            [("retry-after", "0")],
                            axum::Json(json!({"job_id": uuid::Uuid::nil(), "state": "queued", "duplicate": false})),
                        )
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(&base, "cf_x_y").expect("client").with_retries(3, Duration::from_millis(10));
    let accepted = client.enqueue("same-key", &task("x")).await.expect("accepted on the second try");
    assert_eq!(accepted.job_id, uuid::Uuid::nil());
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), vec!["same-key", "same-key"]);
    let waited = seen[1].0 - seen[0].0;
    assert!(waited >= Duration::from_millis(990), "waited {waited:?}, as Retry-After said, not 10 ms");
}

/// A server that keeps answering 503 with `Retry-After` gets the number of tries the client
/// was given, then the error: not one more.
#[tokio::test]
async fn retries_stop_after_the_tries_given_even_when_the_server_says_come_back() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/v1/actions",
        axum::routing::post({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "0")],
                        axum::Json(json!({"error": "unavailable", "field": null, "message": "retry"})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(&base, "cf_x_y").expect("client").with_retries(3, Duration::from_millis(1));
    let err = tokio::time::timeout(Duration::from_secs(10), client.enqueue("k", &task("x")))
        .await
        .expect("gives up")
        .expect_err("unavailable");
    assert!(matches!(&err, Error::Api { status: 503, .. }) && err.is_transient(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
