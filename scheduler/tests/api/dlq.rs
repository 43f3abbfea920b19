//! Dead-letter operations through the API and the real `crmctl` binary.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use crm_jobs::auth::{AuthKind, Store};
use crm_jobs::dlq::{self, Filter, ReplayRequest};
use crm_jobs::providers::Provider;
use crm_queue::{AttemptRecord, DeadReason, DyingJob, JobId, JobMeta, Limit, PgDeadLetters};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{App, spawn_app};

/// A dead action job of `tenant` on `provider`, failed with `class`, `age` ago.
async fn dead_action(app: &App, tenant: &str, provider: Provider, class: &str, age: Duration) -> Uuid {
    let store = Store::new(app.db.pool.clone(), app.keys.clone());
    store.ensure_tenant(tenant, tenant).await.expect("tenant");
    let conn: Uuid = match sqlx::query_scalar::<_, Uuid>(
        "SELECT id FROM connections WHERE tenant_id = $1 AND provider = $2",
    )
    .bind(tenant)
    .bind(provider.as_str())
    .fetch_optional(&app.db.pool)
    .await
    .expect("lookup")
    {
        Some(id) => id,
        None => {
            store
                .save_key(
                    tenant,
                    provider,
                    AuthKind::ApiKey,
                    &SecretString::from("k".to_owned()),
                    "http://127.0.0.1:9",
                    &format!("acct-{tenant}"),
                )
                .await
                .expect("connection")
                .id
        }
    };
    let action = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO actions (id, tenant_id, connection_id, provider, action, params, idempotency_key, request_hash, state, attempts) \
         VALUES ($1, $2, $3, $4, 'create_task', '{\"subject\":\"Follow up\"}', $5, 'h', 'failed', 3)",
    )
    .bind(action)
    .bind(tenant)
    .bind(conn)
    .bind(provider.as_str())
    .bind(format!("key-{action}"))
    .execute(&app.db.pool)
    .await
    .expect("action");
    let dead_at = (Utc::now() - age).timestamp_millis();
    let job = DyingJob {
        id: JobId(action),
        payload: serde_json::to_vec(&json!({"type": "action", "action_id": action})).expect("json"),
        job_type: "action".into(),
        lane: format!("0:{provider}:{tenant}"),
        attempts: 3,
        max_attempts: 3,
        orphans: 0,
        enqueued_at_ms: dead_at - 60_000,
        unique_key: None,
        meta: JobMeta::new(),
        reason: DeadReason::MaxAttempts,
        dead_at_ms: dead_at,
        history: vec![AttemptRecord {
            attempt: 3,
            started_at: dead_at - 1000,
            finished_at: dead_at,
            worker: "w1".into(),
            outcome: "dead".into(),
            error_class: class.into(),
            message: format!("{class} from {provider}"),
            provider_status: Some(401),
            provider_code: None,
        }],
    };
    PgDeadLetters::new(app.db.pool.clone(), "crm").record(&job).await.expect("record").expect("new")
}

#[tokio::test]
async fn an_enqueue_key_gets_403_on_every_dead_letter_route() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let routes = [
        ("GET", "/v1/dead-letters".to_owned()),
        ("GET", format!("/v1/dead-letters/{id}")),
        ("POST", format!("/v1/dead-letters/{id}/replay")),
        ("POST", "/v1/dead-letters/replay".to_owned()),
        ("DELETE", format!("/v1/dead-letters/{id}")),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", app.base);
        let req = match method {
            "GET" => app.http.get(&url),
            "POST" => app.http.post(&url).json(&json!({"reason": "x"})),
            _ => app.http.delete(&url),
        };
        let resp = req.bearer_auth(&app.enqueue_key).send().await.expect("call");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let admin = match method {
            "GET" => app.http.get(&url),
            "POST" => app.http.post(&url).json(&json!({"reason": "x"})),
            _ => app.http.delete(&url),
        };
        assert_ne!(
            admin.bearer_auth(&app.admin_key).send().await.expect("call").status(),
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn listing_filters_and_pages_through_the_api() {
    let app = spawn_app().await;
    for i in 0..7 {
        dead_action(&app, &format!("t{i}"), Provider::Salesforce, "unauthorized", Duration::minutes(i)).await;
    }
    dead_action(&app, "other", Provider::Hubspot, "rejected", Duration::minutes(1)).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/dead-letters?provider=salesforce&error_class=auth&limit=3", app.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .http
            .get(&url)
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        for item in page["items"].as_array().expect("items") {
            assert_eq!(item["provider"], "salesforce");
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "no item twice across pages");
    let bad = app
        .http
        .get(format!("{}/v1/dead-letters?provider=myspace", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json::<Value>().await.expect("json")["field"], "provider");
    let detail: Value = app
        .http
        .get(format!("{}/v1/dead-letters/{}", app.base, seen[0]))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["attempts_history"].as_array().map(Vec::len), Some(1), "{detail}");
}

#[tokio::test]
async fn replaying_one_dead_letter_twice_makes_one_job_and_overlapping_bulk_replays_each_job_once() {
    let app = spawn_app().await;
    let one = dead_action(&app, "solo", Provider::Hubspot, "transient", Duration::minutes(5)).await;
    let req = |r: &str| ReplayRequest { actor: "test".into(), reason: r.into(), changes: Default::default() };
    let (first, second) = (req("first"), req("second"));
    let (a, b) = tokio::join!(
        dlq::replay_one(&app.db.pool, &app.queue, one, &first),
        dlq::replay_one(&app.db.pool, &app.queue, one, &second)
    );
    let outcomes = [a.expect("a"), b.expect("b")];
    let enqueued = outcomes.iter().filter(|o| matches!(o, dlq::ReplayOutcome::Enqueued { .. })).count();
    let again = outcomes.iter().filter(|o| matches!(o, dlq::ReplayOutcome::AlreadyReplayed { .. })).count();
    assert_eq!((enqueued, again), (1, 1), "{outcomes:?}");
    assert_eq!(app.queue.stats().await.expect("stats").ready, 1);

    for i in 0..300 {
        dead_action(
            &app,
            &format!("bulk{}", i % 30),
            Provider::Pipedrive,
            if i % 2 == 0 { "transient" } else { "throttled" },
            Duration::minutes(1),
        )
        .await;
    }
    let f1 = Filter { provider: vec!["pipedrive".into()], ..Filter::default() };
    let f2 = Filter { error_class: vec!["transient".into()], ..Filter::default() };
    let (r1, r2) = (req("bulk 1"), req("bulk 2"));
    let (x, y) = tokio::join!(
        dlq::replay_matching(&app.db.pool, &app.queue, &f1, &r1, false),
        dlq::replay_matching(&app.db.pool, &app.queue, &f2, &r2, false)
    );
    let (x, y) = (x.expect("x"), y.expect("y"));
    assert_eq!(x.enqueued + y.enqueued, 300, "each of the 300 exactly once: {x:?} {y:?}");
    assert_eq!(app.queue.stats().await.expect("stats").ready, 301);
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter_replays")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(audits, 301);
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM actions")
        .fetch_all(&app.db.pool)
        .await
        .expect("states");
    assert_eq!(states, vec!["queued".to_owned()], "replayed actions are queued again");
}

#[tokio::test]
async fn ten_thousand_dead_letters_are_replayed_into_lanes_that_respect_the_limits() {
    let app = spawn_app().await;
    let first = dead_action(&app, "big", Provider::Zoho, "transient", Duration::minutes(2)).await;
    // Clone the dead letter 9,999 times in SQL (each with its own action), as a backlog would be.
    sqlx::query(
        "WITH src AS (SELECT * FROM actions LIMIT 1), ids AS (SELECT gen_random_uuid() AS id, g FROM generate_series(1, 9999) g), \
         a AS (INSERT INTO actions (id, tenant_id, connection_id, provider, action, params, idempotency_key, request_hash, state) \
               SELECT ids.id, src.tenant_id, src.connection_id, src.provider, src.action, src.params, 'k' || ids.g, 'h', 'failed' \
               FROM ids, src RETURNING id) \
         INSERT INTO dead_letters (job_id, queue, job_type, lane, provider, tenant, priority, payload, payload_json, reason, \
               error_class, last_error, attempts, max_attempts, orphans, enqueued_at, dead_at) \
         SELECT a.id, 'crm', 'action', d.lane, d.provider, d.tenant, d.priority, \
               convert_to(json_build_object('type', 'action', 'action_id', a.id)::text, 'UTF8'), \
               json_build_object('type', 'action', 'action_id', a.id)::jsonb, d.reason, d.error_class, d.last_error, 3, 3, 0, now(), now() \
         FROM a, (SELECT * FROM dead_letters WHERE id = $1) d",
    )
    .bind(first)
    .execute(&app.db.pool)
    .await
    .expect("backlog");
    let req =
        ReplayRequest { actor: "test".into(), reason: "outage over".into(), changes: Default::default() };
    let f = Filter { provider: vec!["zoho".into()], ..Filter::default() };
    assert_eq!(
        dlq::replay_matching(&app.db.pool, &app.queue, &f, &req, true).await.expect("dry").matched,
        10_000
    );
    let started = std::time::Instant::now();
    let done = dlq::replay_matching(&app.db.pool, &app.queue, &f, &req, false).await.expect("replay");
    assert_eq!(done.enqueued, 10_000, "{done:?}");
    eprintln!("replayed 10,000 dead letters in {:?}", started.elapsed());
    // The replayed jobs sit in the tenant's lane with its budgets: a concurrency limit holds
    // (3: below the seeded Zoho per-org limit of 5, so this one binds).
    app.queue.set_limit("c:provider:zoho", Limit::Concurrency(3)).await.expect("limit");
    let batch = app.queue.fetch("w", 100).await.expect("fetch");
    assert_eq!(batch.len(), 3, "admission applies to replayed jobs");
}

#[tokio::test]
async fn one_command_lists_the_tenants_with_salesforce_auth_failures_in_the_last_hour_and_one_replays_them() {
    let app = spawn_app().await;
    dead_action(&app, "acme-sf", Provider::Salesforce, "unauthorized", Duration::minutes(10)).await;
    dead_action(&app, "globex-sf", Provider::Salesforce, "invalid_grant", Duration::minutes(30)).await;
    dead_action(&app, "globex-sf", Provider::Salesforce, "unauthorized", Duration::minutes(40)).await;
    let old = dead_action(&app, "initech-sf", Provider::Salesforce, "unauthorized", Duration::hours(3)).await;
    let other = dead_action(&app, "umbrella", Provider::Salesforce, "rejected", Duration::minutes(5)).await;
    let hub = dead_action(&app, "hooli", Provider::Hubspot, "unauthorized", Duration::minutes(5)).await;

    let crmctl = |args: &[&str]| app.crmctl(args);
    let (code, out, err) = crmctl(&[
        "dlq",
        "list",
        "--provider",
        "salesforce",
        "--error-class",
        "auth",
        "--since",
        "1h",
        "--group-by",
        "tenant",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Value = serde_json::from_str(&out).expect("json");
    let tenants: HashSet<&str> =
        rows.as_array().expect("rows").iter().map(|r| r["tenant"].as_str().expect("tenant")).collect();
    assert_eq!(tenants, HashSet::from(["acme-sf", "globex-sf"]));

    let (code, out, err) = crmctl(&[
        "dlq",
        "replay",
        "--filter",
        "--provider",
        "salesforce",
        "--error-class",
        "auth",
        "--since",
        "1h",
        "--reason",
        "connections re-authorised",
        "--yes",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("3 dead letters match"), "{err}");
    let result: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(result["enqueued"], 3);
    let replayed: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM dead_letters WHERE replayed_at IS NOT NULL")
        .fetch_all(&app.db.pool)
        .await
        .expect("ids");
    assert_eq!(replayed.len(), 3);
    for untouched in [old, other, hub] {
        assert!(!replayed.contains(&untouched), "only the matching ones");
    }
    let actors: Vec<String> = sqlx::query_scalar("SELECT DISTINCT reason FROM dead_letter_replays")
        .fetch_all(&app.db.pool)
        .await
        .expect("audit");
    assert_eq!(actors, vec!["connections re-authorised".to_owned()]);
    // Nothing left to replay: exit 3.
    let (code, ..) = crmctl(&[
        "dlq",
        "replay",
        "--filter",
        "--provider",
        "salesforce",
        "--error-class",
        "auth",
        "--since",
        "1h",
        "--reason",
        "again",
        "--yes",
    ]);
    assert_eq!(code, Some(3));
    // A dry run by ids checks each as a replay would, and changes nothing.
    let unknown = Uuid::new_v4();
    let (o, r, u) = (other.to_string(), replayed[0].to_string(), unknown.to_string());
    let (code, out, err) = crmctl(&["dlq", "replay", &o, &r, &u, "--reason", "look", "--dry-run", "--json"]);
    assert_eq!(code, Some(3), "an unknown id among them: {out}{err}");
    let preview: Value = serde_json::from_str(&out).expect("json");
    let outcome = |i: usize| preview[i]["result"]["outcome"].as_str().map(str::to_owned);
    assert_eq!(
        (outcome(0).as_deref(), outcome(1).as_deref(), preview[2]["error"].is_string()),
        (Some("replayable"), Some("already_replayed"), true),
        "{preview}"
    );
    let (code, ..) = crmctl(&["dlq", "replay", &o, "--reason", "look", "--dry-run"]);
    assert_eq!(code, Some(0));
    // An edit the action refuses is a usage error, reported with the id, as the replay does.
    let (code, out, err) =
        crmctl(&["dlq", "replay", &o, "--set", "subject=5", "--reason", "look", "--dry-run", "--json"]);
    assert_eq!(code, Some(64), "{out}{err}");
    assert!(out.contains("subject"), "{out}");
    let untouched: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT replayed_at FROM dead_letters WHERE id = $1")
            .bind(other)
            .fetch_one(&app.db.pool)
            .await
            .expect("row");
    assert_eq!(untouched, None, "a dry run replays nothing");
    // Unknown flags or values are usage errors.
    let (code, ..) = crmctl(&["dlq", "list", "--since", "yesterday-ish"]);
    assert_eq!(code, Some(64));
    let (code, ..) = crmctl(&["dlq", "list", "--group-by", "provider"]);
    assert_eq!(code, Some(64));
    let (code, _, err) = crmctl(&["dlq", "list", "--provider", "salesfroce"]);
    assert_eq!(code, Some(64), "{err}");
    let (code, _, err) = crmctl(&["dlq", "list", "--job-type", "Sync"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("job_type") && err.contains("probe, sync, action"), "{err}");
    let typo = app
        .http
        .get(format!("{}/v1/dead-letters?job_type=sync,acton", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("get");
    assert_eq!(typo.status(), 422);
    assert_eq!(typo.json::<Value>().await.expect("json")["field"], "job_type");
}

#[tokio::test]
async fn retention_purges_only_expired_dead_letters_and_audits_every_one_even_with_two_replicas() {
    let app = spawn_app().await;
    let mut expired = HashSet::new();
    for i in 0..6 {
        expired.insert(
            dead_action(&app, &format!("old{i}"), Provider::Hubspot, "transient", Duration::hours(3)).await,
        );
    }
    let recent = dead_action(&app, "new", Provider::Hubspot, "transient", Duration::minutes(10)).await;
    let keep = std::time::Duration::from_secs(3600);
    let every = std::time::Duration::from_millis(50);
    // Two scheduler replicas run retention at the same time.
    let mut a = crm_jobs::dlq_retention::Retention::start(app.db.pool.clone(), keep, every);
    let mut b = crm_jobs::dlq_retention::Retention::start(app.db.pool.clone(), keep, every);
    let remaining = async {
        loop {
            let ids: Vec<Uuid> =
                sqlx::query_scalar("SELECT id FROM dead_letters").fetch_all(&app.db.pool).await.expect("ids");
            if ids.len() == 1 {
                return ids;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let ids =
        tokio::time::timeout(std::time::Duration::from_secs(20), remaining).await.expect("purged in time");
    a.stop().await;
    b.stop().await;
    assert_eq!(ids, vec![recent], "only the dead letter younger than the retention is kept");
    let audited: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(count), 0)::bigint FROM dead_letter_purges WHERE actor = 'retention'",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("audit");
    assert_eq!(audited, expired.len() as i64, "every purged dead letter is in the audit, once");
}

/// Deleting a dead letter through the API is audited with the key that did it (name and
/// prefix, as replays are), so two keys of one name can be told apart.
#[tokio::test]
async fn a_deletion_is_audited_with_the_key_that_made_it() {
    let app = spawn_app().await;
    let id = dead_action(&app, "acme", Provider::Hubspot, "rejected", Duration::minutes(5)).await;
    let resp = app
        .http
        .delete(format!("{}/v1/dead-letters/{id}", app.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let actor: String = sqlx::query_scalar("SELECT actor FROM dead_letter_purges")
        .fetch_one(&app.db.pool)
        .await
        .expect("audited");
    let prefix = app.admin_key.split('_').nth(1).expect("prefix");
    assert_eq!(actor, format!("api-key:ops ({prefix})"));
}

/// The runbooks' "delete that dead letter": `crmctl dlq delete <id>…` removes exactly the named
/// ones, audited, and says which ids it did not know (exit 3).
#[tokio::test]
async fn crmctl_deletes_dead_letters_by_id_and_names_the_unknown_ones() {
    let app = spawn_app().await;
    let gone =
        dead_action(&app, "acme", Provider::Hubspot, "reconcile_inconclusive", Duration::minutes(5)).await;
    let kept = dead_action(&app, "acme", Provider::Hubspot, "rejected", Duration::minutes(6)).await;
    let unknown = Uuid::new_v4();
    let (code, out, err) = app.crmctl(&["dlq", "delete", &gone.to_string(), &unknown.to_string(), "--yes"]);
    assert_eq!(code, Some(3), "an unknown id: {out} {err}");
    assert!(out.contains(&format!("{gone} deleted")), "{out}");
    assert!(err.contains(&format!("no dead letter {unknown}")), "{err}");
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM dead_letters").fetch_all(&app.db.pool).await.expect("rows");
    assert_eq!(left, vec![kept], "only the named one deleted");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter_purges WHERE count = 1")
        .fetch_one(&app.db.pool)
        .await
        .expect("audit");
    assert_eq!(audited, 1);
    let (code, out, err) = app.crmctl(&["dlq", "delete", &kept.to_string()]);
    assert_eq!(code, Some(64), "not confirmed without a terminal: {out} {err}");
    let (code, _, err) = app.crmctl(&["dlq", "delete", &kept.to_string(), "--yes", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = app.crmctl(&["dlq", "delete"]);
    assert_eq!(code, Some(64), "ids are required: {err}");
}
