//! The control-plane API, served for real on port 0 against a fresh database and Redis prefix.

mod dlq;
mod parks;

use std::sync::Arc;

use crm_jobs::auth::{AuthKind, Keyring, Store};
use crm_jobs::providers::Provider;
use crm_jobs::testing::{REDIS_URL, TestDb, http_client, purge_redis_prefix, unique};
use crm_scheduler::api::keys::{self, Scope};
use crm_scheduler::server::{Scheduler, SchedulerConfig};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

pub(crate) struct App {
    pub(crate) base: String,
    pub(crate) db: TestDb,
    pub(crate) queue: crm_queue::Queue,
    pub(crate) enqueue_key: String,
    pub(crate) admin_key: String,
    pub(crate) prefix: String,
    pub(crate) http: reqwest::Client,
    pub(crate) keys: Arc<Keyring>,
    /// The token key, base64 (for `crmctl`).
    pub(crate) token_key: String,
}

impl Drop for App {
    fn drop(&mut self) {
        purge_redis_prefix(&self.prefix);
    }
}

pub(crate) async fn spawn_app() -> App {
    let db = TestDb::new().await;
    let prefix = unique("crmtest-");
    let token_key = Keyring::generate_base64();
    let keys = Arc::new(Keyring::from_base64(&token_key, &[]).expect("key"));
    let config = SchedulerConfig::local(&db.url, REDIS_URL, &prefix, keys.clone());
    let scheduler = Scheduler::build(config).await.expect("build");
    let base = format!("http://{}", scheduler.api_addr());
    let queue = scheduler.state().queue.clone();
    tokio::spawn(scheduler.run_until(std::future::pending()));
    let store = Store::new(db.pool.clone(), keys);
    store.ensure_tenant("acme", "Acme").await.expect("tenant");
    store.ensure_tenant("empty", "No connections").await.expect("tenant");
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
    let (enqueue_key, _) = keys::create(&db.pool, "svc", &[Scope::Enqueue]).await.expect("key");
    let (admin_key, _) = keys::create(&db.pool, "ops", &[Scope::Admin]).await.expect("key");
    App {
        base,
        db,
        queue,
        enqueue_key,
        admin_key,
        prefix,
        http: http_client(),
        keys: store.keys().clone(),
        token_key,
    }
}

impl App {
    /// Runs the real `crmctl` against this app's database and Redis prefix: (exit code,
    /// stdout, stderr).
    pub(crate) fn crmctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmctl"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", REDIS_URL)
            .env("CRM_FLEET_REDIS_PREFIX", &self.prefix)
            .env("CRM_FLEET_TOKEN_KEY", &self.token_key)
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("crmctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `GET /v1/jobs/{id}`'s body.
    async fn job(&self, id: impl std::fmt::Display) -> Value {
        self.http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(&self.enqueue_key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// `GET /v1/jobs/{id}`'s state.
    async fn job_state(&self, id: uuid::Uuid) -> String {
        self.job(id).await["state"].as_str().unwrap_or_default().to_owned()
    }

    async fn post_action(&self, key: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req =
            self.http.post(format!("{}/v1/actions", self.base)).bearer_auth(&self.enqueue_key).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn task(subject: &str) -> Value {
    json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": {"subject": subject}})
}

#[tokio::test]
async fn an_action_is_accepted_and_its_job_is_visible() {
    let app = spawn_app().await;
    let (status, body) = app.post_action(Some("k1"), task("Call back")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["duplicate"], false);
    let id = body["job_id"].as_str().expect("id").to_owned();
    assert_eq!(app.queue.stats().await.expect("stats").ready, 1);
    let job = app.job(&id).await;
    assert_eq!((job["kind"].as_str(), job["state"].as_str()), (Some("action"), Some("queued")), "{job}");
    let missing = app
        .http
        .get(format!("{}/v1/jobs/{}", app.base, uuid::Uuid::new_v4()))
        .bearer_auth(&app.enqueue_key)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.expect("json")["field"], "id");
}

#[tokio::test]
async fn one_idempotency_key_posted_ten_times_concurrently_makes_one_job() {
    let app = spawn_app().await;
    let posts = (0..10).map(|_| app.post_action(Some("same-key"), task("Only once")));
    let results = futures::future::join_all(posts).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{b}");
            b["job_id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one job id");
    assert_eq!(results.iter().filter(|(_, b)| b["duplicate"] == false).count(), 1, "one original");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM actions").fetch_one(&app.db.pool).await.expect("count");
    assert_eq!(rows, 1);
    assert_eq!(app.queue.stats().await.expect("stats").ready, 1, "one queued job");
    let (status, body) = app.post_action(Some("same-key"), task("Something else")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (body["error"].as_str(), body["field"].as_str()),
        (Some("idempotency_key_reused"), Some("Idempotency-Key"))
    );
}

/// An action whose job died without the action learning it (its worker was killed until the
/// job was reaped as poison: the action row still says running) is not run again by a client
/// sending the request again: the answer says dead and nothing is pushed. Once an operator
/// replays it, the replay is the one job that runs it; a resend does not add a second.
#[tokio::test]
async fn a_resent_request_does_not_run_again_an_action_whose_job_died() {
    let app = spawn_app().await;
    let (status, body) = app.post_action(Some("dies"), task("Will die")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id: uuid::Uuid = body["job_id"].as_str().expect("id").parse().expect("uuid");
    sqlx::query("UPDATE actions SET state = 'running', attempts = 1 WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .expect("running");
    let leased = app.queue.fetch("w", 1).await.expect("fetch").pop().expect("the action's job");
    let record = crm_queue::AttemptRecord {
        attempt: 1,
        started_at: 1,
        finished_at: 2,
        worker: "w".into(),
        outcome: "orphaned".into(),
        error_class: "lease_expired".into(),
        message: "worker presumed dead".into(),
        provider_status: None,
        provider_code: None,
    };
    let dying = app
        .queue
        .dead_letter(&leased.lease, &record, crm_queue::DeadReason::Poison)
        .await
        .expect("dead")
        .expect("dying");
    let dead_letter = crm_queue::PgDeadLetters::new(app.db.pool.clone(), crm_jobs::job::DEFAULT_QUEUE)
        .record(&dying)
        .await
        .expect("write")
        .expect("row");
    app.queue.finalize(&[leased.lease.job]).await.expect("finalize");

    let action_state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM actions WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .expect("state")
    };
    assert_eq!(action_state().await, "failed", "the dead letter ends the action");
    assert_eq!(app.job_state(id).await, "dead");
    let (status, body) = app.post_action(Some("dies"), task("Will die")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!((body["state"].as_str(), body["duplicate"].as_bool()), (Some("dead"), Some(true)), "{body}");
    let stats = app.queue.stats().await.expect("stats");
    assert_eq!(stats.ready + stats.delayed + stats.leased, 0, "nothing pushed for a dead action");

    let req = crm_jobs::dlq::ReplayRequest {
        actor: "ops".into(),
        reason: "test".into(),
        changes: Default::default(),
    };
    let replayed =
        crm_jobs::dlq::replay_one(&app.db.pool, &app.queue, dead_letter, &req).await.expect("replay");
    let crm_jobs::dlq::ReplayOutcome::Enqueued { job_id: replay } = replayed else {
        panic!("not enqueued: {replayed:?}")
    };
    let (status, body) = app.post_action(Some("dies"), task("Will die")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "queued", "{body}");
    let stats = app.queue.stats().await.expect("stats");
    assert_eq!(stats.ready, 1, "only the replay's job");
    assert!(app.queue.job(crm_queue::JobId(replay)).await.expect("job").is_some());
    assert!(
        app.queue.job(crm_queue::JobId(id)).await.expect("job").is_none(),
        "no second job under the action's id"
    );
    assert_eq!(app.job_state(id).await, "queued", "the replay runs it");

    // The replay's own job dies too: the action is dead again, whichever link of the chain died.
    let leased = app.queue.fetch("w", 1).await.expect("fetch").pop().expect("the replay's job");
    assert_eq!(leased.lease.job.0, replay);
    let dying = app
        .queue
        .dead_letter(&leased.lease, &record, crm_queue::DeadReason::Poison)
        .await
        .expect("dead")
        .expect("dying");
    crm_queue::PgDeadLetters::new(app.db.pool.clone(), crm_jobs::job::DEFAULT_QUEUE)
        .record(&dying)
        .await
        .expect("write")
        .expect("row");
    app.queue.finalize(&[leased.lease.job]).await.expect("finalize");
    assert_eq!(action_state().await, "failed");
    assert_eq!(app.job_state(id).await, "dead");
    let (_, body) = app.post_action(Some("dies"), task("Will die")).await;
    assert_eq!(body["state"], "dead", "{body}");
    let stats = app.queue.stats().await.expect("stats");
    assert_eq!(stats.ready + stats.delayed + stats.leased, 0, "nothing pushed");

    // Even once every dead letter of it is deleted, a resend does not run it: it failed.
    sqlx::query("DELETE FROM dead_letters").execute(&app.db.pool).await.expect("delete");
    let (_, body) = app.post_action(Some("dies"), task("Will die")).await;
    assert_eq!(body["state"], "failed", "{body}");
    let stats = app.queue.stats().await.expect("stats");
    assert_eq!(stats.ready + stats.delayed + stats.leased, 0, "nothing pushed");
}

/// A tenant with two HubSpot portals: a throttle pause of one portal holds back that portal's
/// actions only, whichever was enqueued last (each connection has its own lane and budgets).
#[tokio::test]
async fn a_paused_account_holds_back_its_own_actions_not_the_other_accounts_of_its_tenant() {
    let app = spawn_app().await;
    let store = Store::new(app.db.pool.clone(), app.keys.clone());
    let first: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM connections WHERE tenant_id = 'acme' AND provider = 'hubspot'")
            .fetch_one(&app.db.pool)
            .await
            .expect("first connection");
    let second = store
        .save_key(
            "acme",
            Provider::Hubspot,
            AuthKind::StaticToken,
            &SecretString::from("pat-na1-y".to_owned()),
            "http://127.0.0.1:9",
            "2",
        )
        .await
        .expect("second connection")
        .id;
    app.queue
        .pause(
            &crm_jobs::enqueue::budget::account_pause(Provider::Hubspot, "1"),
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("pause portal 1");
    let mut jobs = Vec::new();
    for (key, connection) in [("on-1", first), ("on-2", second)] {
        let mut body = task(key);
        body["connection_id"] = json!(connection);
        let (status, body) = app.post_action(Some(key), body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        jobs.push(body["job_id"].as_str().expect("id").to_owned());
    }
    let fetched = app.queue.fetch("test", 10).await.expect("fetch");
    let ids: Vec<String> = fetched.iter().map(|j| j.lease.job.to_string()).collect();
    assert_eq!(ids, vec![jobs[1].clone()], "only portal 2's action is admitted");
    let stats = app.queue.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.sleeping_lanes), (1, 1), "portal 1's action waits in a sleeping lane");
}

#[tokio::test]
async fn every_invalid_request_gets_a_4xx_naming_the_field() {
    let app = spawn_app().await;
    let cases: Vec<(Option<&str>, Value, StatusCode, &str)> = vec![
        (None, task("x"), StatusCode::BAD_REQUEST, "Idempotency-Key"),
        (
            Some("a"),
            json!({"tenant_id": "acme", "provider": "hubspot", "action": "launch", "params": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "action",
        ),
        (
            Some("b"),
            json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": {"subject": 5}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "params.subject",
        ),
        (
            Some("c"),
            json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "params.subject",
        ),
        (
            Some("d"),
            json!({"tenant_id": "acme", "provider": "myspace", "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider",
        ),
        (
            Some("e"),
            json!({"tenant_id": "empty", "provider": "hubspot", "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider",
        ),
        (
            Some("f"),
            json!({"tenant_id": "nobody", "provider": "hubspot", "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::NOT_FOUND,
            "tenant_id",
        ),
        (
            Some("g"),
            json!({"provider": "hubspot", "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tenant_id",
        ),
        (
            Some("h"),
            json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": {"subject": "x"}, "colour": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            Some("i"),
            json!({"tenant_id": "acme", "provider": "hubspot", "connection_id": uuid::Uuid::new_v4(), "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "connection_id",
        ),
        (
            Some("j"),
            json!({"tenant_id": 5, "provider": "hubspot", "action": "create_task", "params": {"subject": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tenant_id",
        ),
        (
            // PostgreSQL cannot store NUL: a 422 naming the field, not a 503.
            Some("k"),
            json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": {"subject": "a\u{0}"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "params.subject",
        ),
    ];
    for (key, body, status, field) in cases {
        let (got, err) = app.post_action(key, body.clone()).await;
        assert_eq!(got, status, "{body} → {err}");
        assert_eq!(err["field"].as_str(), Some(field), "{body} → {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let big = json!({"tenant_id": "acme", "provider": "hubspot", "action": "create_note", "params": {"body": "x".repeat(100_000), "contact_id": "1"}});
    let (status, err) = app.post_action(Some("big"), big).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body")), "{err}");
    let not_json = app
        .http
        .post(format!("{}/v1/actions", app.base))
        .bearer_auth(&app.enqueue_key)
        .header("Idempotency-Key", "nj")
        .body("subject=x")
        .send()
        .await
        .expect("post");
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Path, route and method errors are JSON naming the field too.
    for (method, path, status, field) in [
        (reqwest::Method::GET, "/v1/jobs/%FF", StatusCode::BAD_REQUEST, "id"),
        (reqwest::Method::GET, "/v1/nothing-here", StatusCode::NOT_FOUND, "path"),
        (reqwest::Method::PUT, "/v1/actions", StatusCode::METHOD_NOT_ALLOWED, "method"),
    ] {
        let resp = app
            .http
            .request(method.clone(), format!("{}{path}", app.base))
            .bearer_auth(&app.enqueue_key)
            .send()
            .await
            .expect("call");
        assert_eq!(resp.status(), status, "{method} {path}");
        assert_eq!(resp.json::<Value>().await.expect("json")["field"], field, "{method} {path}");
    }
    assert_eq!(app.queue.stats().await.expect("stats").ready, 0, "nothing enqueued by bad requests");
}

#[tokio::test]
async fn keys_and_scopes_are_enforced() {
    let app = spawn_app().await;
    let none = app.http.post(format!("{}/v1/actions", app.base)).json(&task("x")).send().await.expect("post");
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.json::<Value>().await.expect("json")["field"], "Authorization");
    let bad = app
        .http
        .post(format!("{}/v1/actions", app.base))
        .bearer_auth("cf_deadbeef_nope")
        .json(&task("x"))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let admin = app
        .http
        .post(format!("{}/v1/actions", app.base))
        .bearer_auth(&app.admin_key)
        .header("Idempotency-Key", "adm")
        .json(&task("x"))
        .send()
        .await
        .expect("post");
    assert_eq!(admin.status(), StatusCode::ACCEPTED, "admin implies enqueue");

    // An operator lists the keys (never their secrets) and revokes a leaked one, pasted whole.
    let get_job = |key: &str| {
        app.http
            .get(format!("{}/v1/jobs/{}", app.base, uuid::Uuid::new_v4()))
            .bearer_auth(key.to_owned())
            .send()
    };
    assert_eq!(
        get_job(&app.enqueue_key).await.expect("get").status(),
        StatusCode::NOT_FOUND,
        "the key works"
    );
    let (code, out, err) = app.crmctl(&["api-keys", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    // `cf_<prefix>_<secret>`: the secret is URL-safe base64, which may itself hold `_`, so it is
    // everything after the second `_` (its last `_`-separated piece could be a character or
    // two that the listing holds by chance).
    let secret = app.enqueue_key.splitn(3, '_').nth(2).expect("secret");
    assert!(secret.len() >= 40, "{secret}");
    assert!(!out.contains(secret), "no secret listed");
    let listed: Value = serde_json::from_str(&out).expect("json");
    let svc =
        listed.as_array().expect("keys").iter().find(|k| k["name"] == "svc").expect("svc listed").clone();
    assert_eq!(svc["scopes"], json!(["enqueue"]));
    assert!(svc["last_used_at"].is_string(), "its use is recorded: {svc}");
    let (code, out, err) = app.crmctl(&["api-keys", "revoke", &app.enqueue_key]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("revoked") && !out.contains(&app.enqueue_key), "{out}");
    let refused = get_job(&app.enqueue_key).await.expect("get");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "refused from the next request on");
    let prefix = svc["prefix"].as_str().expect("prefix");
    assert_eq!(app.crmctl(&["api-keys", "revoke", prefix]).0, Some(0), "revoking twice is fine");
    assert_eq!(app.crmctl(&["api-keys", "revoke", "nosuchkey"]).0, Some(3));
    let names = |all: bool| {
        let mut args = vec!["api-keys", "list", "--json"];
        if all {
            args.push("--all");
        }
        let (_, out, _) = app.crmctl(&args);
        let v: Value = serde_json::from_str(&out).expect("json");
        v.as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["name"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert!(!names(false).contains(&"svc".to_owned()), "revoked keys are left out");
    assert!(names(true).contains(&"svc".to_owned()) && names(true).contains(&"ops".to_owned()));
}

#[tokio::test]
async fn the_openapi_document_describes_every_served_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    // Operation ids are unique, and every response link names one of them (as `operationId`).
    let ops: Vec<&Value> = paths.values().flat_map(|item| item.as_object().expect("item").values()).collect();
    let ids: std::collections::HashSet<&str> =
        ops.iter().map(|op| op["operationId"].as_str().expect("operationId")).collect();
    assert_eq!(ids.len(), ops.len(), "operation ids are unique");
    for op in &ops {
        for response in op["responses"].as_object().expect("responses").values() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                let target = link["operationId"].as_str().unwrap_or_default();
                assert!(ids.contains(target), "link {name} of {} names {target:?}", op["operationId"]);
            }
        }
    }
    for p in [
        "/v1/actions",
        "/v1/jobs/{id}",
        "/v1/schedules",
        "/v1/schedules/{id}",
        "/v1/connections/{id}/sync",
        "/v1/dead-letters",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} undocumented");
    }
    // Every documented operation answers with one of its documented statuses.
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            let url = format!("{}{}", app.base, path.replace("{id}", &uuid::Uuid::new_v4().to_string()));
            let req = match method.as_str() {
                "get" => app.http.get(&url),
                "post" => app.http.post(&url).header("Idempotency-Key", "doc").json(&json!({})),
                "patch" => app.http.patch(&url).json(&json!({})),
                "delete" => app.http.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let status = req.bearer_auth(&app.enqueue_key).send().await.expect("call").status();
            let documented = op["responses"].as_object().expect("responses");
            assert!(
                documented.contains_key(status.as_str()),
                "{method} {path} answered {status}, documented {:?}",
                documented.keys()
            );
        }
    }
    assert_eq!(
        app.http.get(format!("{}/readyz", app.base)).send().await.expect("ready").status(),
        StatusCode::OK
    );
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let _ = &app.admin_key;
}

/// A service asks for a connect link for one of its tenants; the link opens the provider's
/// consent page, and the authorize route opens for nothing else.
#[tokio::test]
async fn connect_links_are_made_for_known_tenants_and_open_the_consent_page() {
    let app = spawn_app().await;
    let store = Store::new(app.db.pool.clone(), app.keys.clone());
    store
        .save_app(&crm_jobs::auth::oauth::OAuthApp {
            provider: Provider::Hubspot,
            client_id: "client".into(),
            client_secret: SecretString::from("secret".to_owned()),
            authorize_url: "http://127.0.0.1:9/oauth/authorize".into(),
            token_url: "http://127.0.0.1:9/oauth/v1/token".into(),
            revoke_url: None,
            redirect_uri: format!("{}/v1/oauth/callback", app.base),
            scopes: "crm.objects.contacts.read".into(),
            api_base: None,
        })
        .await
        .expect("app");
    let post = |provider: &str, key: Option<&str>, body: Value| {
        let mut req = app.http.post(format!("{}/v1/oauth/{provider}/links", app.base)).json(&body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move {
            let resp = req.send().await.expect("post");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let key = Some(app.enqueue_key.as_str());

    assert_eq!(post("hubspot", None, json!({"tenant_id": "acme"})).await.0, 401);
    let (status, link) = post("hubspot", key, json!({"tenant_id": "acme", "expires_in": 600.0})).await;
    assert_eq!(status, 201, "{link}");
    let url = link["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/v1/oauth/hubspot/authorize?tenant_id=acme&", app.base)), "{url}");
    let expires_at: chrono::DateTime<chrono::Utc> =
        link["expires_at"].as_str().expect("expiry").parse().expect("time");
    let left = (expires_at - chrono::Utc::now()).num_seconds();
    assert!((590..=600).contains(&left), "expires in {left} s");

    let manual =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let consent = manual.get(url).send().await.expect("authorize");
    assert_eq!(consent.status(), 303);
    let location = consent.headers()["location"].to_str().expect("location").to_owned();
    assert!(
        location.starts_with("http://127.0.0.1:9/oauth/authorize?") && location.contains("state="),
        "{location}"
    );
    let bare = manual
        .get(format!("{}/v1/oauth/hubspot/authorize?tenant_id=acme", app.base))
        .send()
        .await
        .expect("bare");
    assert_eq!(bare.status(), 403);
    assert_eq!(bare.json::<Value>().await.expect("json")["error"], "link_required");

    for (provider, body, status, field) in [
        ("hubspot", json!({"tenant_id": "nobody"}), 404, "tenant_id"),
        ("nosuchcrm", json!({"tenant_id": "acme"}), 400, "provider"),
        ("salesforce", json!({"tenant_id": "acme"}), 404, "provider"),
        ("hubspot", json!({"tenant_id": "acme", "expires_in": 0}), 422, "expires_in"),
        ("hubspot", json!({"tenant_id": "acme", "expires_in": 604_801}), 422, "expires_in"),
        ("hubspot", json!({"tenant_id": "acme", "expires_in": 1.5}), 422, "expires_in"),
        ("hubspot", json!({"tenant_id": "acme", "expires_in": "1h"}), 422, "expires_in"),
    ] {
        let (got, err) = post(provider, key, body.clone()).await;
        assert_eq!((got, err["field"].as_str()), (status, Some(field)), "{provider} {body}: {err}");
    }

    // The same from the command line, for an operator connecting a tenant by hand.
    let crmctl = |args: &[&str]| app.crmctl(args);
    let (code, out, err) = crmctl(&["connections", "link", "--tenant", "acme", "--provider", "hubspot"]);
    assert_eq!(code, Some(0), "{err}");
    let consent = manual.get(out.trim()).send().await.expect("authorize");
    assert_eq!(consent.status(), 303, "the printed link works: {out}");
    let (code, out, _) = crmctl(&[
        "--json",
        "connections",
        "link",
        "--tenant",
        "acme",
        "--provider",
        "hubspot",
        "--expires-in",
        "2h",
    ]);
    assert_eq!(code, Some(0));
    let link: Value = serde_json::from_str(&out).expect("json");
    let expires_at: chrono::DateTime<chrono::Utc> =
        link["expires_at"].as_str().expect("expiry").parse().expect("time");
    assert!((expires_at - chrono::Utc::now()).num_minutes() >= 119);
    assert_eq!(crmctl(&["connections", "link", "--tenant", "nobody", "--provider", "hubspot"]).0, Some(3));
    let (code, _, err) =
        crmctl(&["connections", "link", "--tenant", "acme", "--provider", "hubspot", "--expires-in", "8d"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--expires-in"), "{err}");
    assert_eq!(crmctl(&["connections", "link", "--tenant", "acme", "--provider", "nosuchcrm"]).0, Some(64));

    // Request metrics label methods from a closed set, whatever a client sends.
    let brew = reqwest::Method::from_bytes(b"BREW").expect("method");
    app.http.request(brew, format!("{}/healthz", app.base)).send().await.expect("brew");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains("BREW"), "a client's method became a label");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("crm_fleet_http_requests_total") && l.contains("method=\"other\""))
    );
}
