//! `crmctl sync now` and `crmctl schedules …` as an operator runs them.

use crate::support::{Env, json};

#[tokio::test(flavor = "multi_thread")]
async fn schedules_and_sync_now_from_the_command_line() {
    let env = Env::new().await;
    let conn = env.connection().await.to_string();

    let added = json(&env.crmctl(&[
        "schedules",
        "add",
        "--connection",
        &conn,
        "--cron",
        "*/5 * * * *",
        "--tz",
        "Europe/Paris",
        "--object",
        "deal",
        "--jitter",
        "30s",
        "--json",
    ]));
    let id = added[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (added[0]["objects"][0].as_str(), added[0]["jitter_ms"].as_u64()),
        (Some("deal"), Some(30_000))
    );

    let bad = env.crmctl(&["schedules", "add", "--connection", &conn, "--cron", "every minute"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--cron"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad =
        env.crmctl(&["schedules", "add", "--connection", &conn, "--cron", "* * * * *", "--tz", "Nowhere"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tz"));
    let bad = env.crmctl(&[
        "schedules",
        "add",
        "--connection",
        &uuid::Uuid::new_v4().to_string(),
        "--cron",
        "* * * * *",
    ]);
    assert_eq!(bad.status.code(), Some(3), "an unknown connection, as for sync now");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--connection"));
    let typo = env.crmctl(&[
        "connections",
        "add-key",
        "--tenant",
        "t",
        "--provider",
        "hubspt",
        "--api-base",
        "http://x",
        "--account",
        "1",
    ]);
    assert_eq!(typo.status.code(), Some(64), "{}", String::from_utf8_lossy(&typo.stderr));

    let table = env.crmctl(&["schedules", "list"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID") && text.contains(&id) && text.contains("Europe/Paris"), "{text}");
    let page = env.crmctl(&["schedules", "list", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&page.stderr).contains(&format!("more: --after {id}")), "a full page");
    let after = json(&env.crmctl(&["schedules", "list", "--after", &id, "--json"]));
    assert_eq!(after.as_array().map(Vec::len), Some(0), "nothing after the only schedule: {after}");

    let set = json(&env.crmctl(&[
        "schedules",
        "set",
        &id,
        "--missed",
        "backfill",
        "--backfill-limit",
        "5",
        "--json",
    ]));
    assert_eq!(
        (set[0]["missed_policy"].as_str(), set[0]["backfill_limit"].as_u64()),
        (Some("backfill"), Some(5))
    );
    let off = json(&env.crmctl(&["schedules", "disable", &id, "--json"]));
    assert_eq!(off[0]["enabled"], false);
    let listed = json(&env.crmctl(&["schedules", "list", "--connection", &conn, "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let missing = env.crmctl(&["schedules", "disable", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(missing.status.code(), Some(3), "an unknown id");
    let deleted = json(&env.crmctl(&["schedules", "delete", &id, "--json"]));
    assert_eq!((deleted["id"].as_str(), deleted["deleted"].as_bool()), (Some(id.as_str()), Some(true)));
    let listed = json(&env.crmctl(&["schedules", "list", "--connection", &conn, "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(0));
    let again = env.crmctl(&["schedules", "delete", &id]);
    assert_eq!(again.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such schedule"));

    let first =
        json(&env.crmctl(&["sync", "now", "--connection", &conn, "--object", "contact", "--full", "--json"]));
    assert_eq!(
        (first["jobs"][0]["duplicate"].as_bool(), first["mode"].as_str()),
        (Some(false), Some("full"))
    );
    let again = env.crmctl(&["sync", "now", "--connection", &conn, "--object", "contact"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already queued or running"));
    let bad = env.crmctl(&["sync", "now", "--connection", &conn, "--object", "ticket"]);
    assert_eq!(bad.status.code(), Some(64));
    let none = env.crmctl(&["sync", "now", "--connection", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(none.status.code(), Some(3));
    let unknown = env.crmctl(&["connections", "set-status", &uuid::Uuid::new_v4().to_string(), "disabled"]);
    assert_eq!(unknown.status.code(), Some(3));
    let usage = env.crmctl(&["connections", "set-status", &conn, "sleeping"]);
    assert_eq!(usage.status.code(), Some(64));
    for status in ["disabled", "active"] {
        let set = json(&env.crmctl(&["connections", "set-status", &conn, status, "--json"]));
        assert_eq!(
            (set["id"].as_str(), set["status"].as_str()),
            (Some(conn.as_str()), Some(status)),
            "{set}"
        );
    }
    // Missing configuration is a usage error naming the variable and the flag that give it.
    let bare = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_crmctl"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("run crmctl")
    };
    let no_db = bare(&["schedules", "list"]);
    assert_eq!(no_db.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&no_db.stderr)
            .contains("DATABASE_URL is required (environment DATABASE_URL or flag --database-url)")
    );
    let no_key = bare(&[
        "--database-url",
        &env.db.url,
        "connections",
        "link",
        "--tenant",
        "t",
        "--provider",
        "hubspot",
    ]);
    assert_eq!(no_key.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&no_key.stderr).contains("flag --token-key"),
        "{}",
        String::from_utf8_lossy(&no_key.stderr)
    );
    // The existing subcommands still work.
    // (`limits set` stores it in PostgreSQL for the fleet to apply; here straight into Redis.)
    let rate = crm_queue::Limit::Rate { count: 100, per: std::time::Duration::from_secs(10), burst: 2 };
    env.queue.set_limit("r:account:hubspot:cli-test", rate).await.expect("limit");
    let queues = json(&env.crmctl(&["queues", "--json"]));
    assert_eq!(queues["stats"]["ready"], 1);
    assert_eq!(
        queues["limits"]["r:account:hubspot:cli-test"], "100 per 10s (burst 2)",
        "as `limits show` says it"
    );
    // Redis settings that can lose jobs are named: whether AOF is off decides one of them.
    let aof = std::process::Command::new("redis-cli")
        .args(["config", "get", "appendonly"])
        .output()
        .expect("redis-cli");
    let aof_off = String::from_utf8_lossy(&aof.stdout).lines().nth(1) == Some("no");
    let warnings = queues["redis_warnings"].as_array().expect("redis_warnings");
    assert_eq!(
        warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains("appendonly is no"))),
        aof_off,
        "{warnings:?}"
    );
}

#[test]
fn bad_scheduler_configuration_lists_every_problem_and_exits_64() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crm-scheduler"))
        .env_clear()
        .env("REDIS_URL", "http://wrong")
        .env("CRM_FLEET_API_ADDR", "nowhere")
        .env("CRM_FLEET_SCHEDULER_LATE_TOLERANCE", "soon")
        .env("CRM_FLEET_SYNC_STALE_AFTER", "0s")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "CRM_FLEET_API_ADDR",
        "CRM_FLEET_SCHEDULER_LATE_TOLERANCE",
        "CRM_FLEET_SYNC_STALE_AFTER",
    ] {
        assert!(err.contains(name), "{name} not reported:\n{err}");
    }
}

/// `crmctl limits resume x:provider:<p>` closes the breaker, not only its pause: left open it
/// would still read as open (gauge and alert) and, half-open, re-open on the first failure.
#[tokio::test(flavor = "multi_thread")]
async fn resuming_a_provider_closes_its_circuit_breaker() {
    use crm_jobs::limits::breaker;
    use crm_jobs::providers::Provider;

    let env = Env::new().await;
    let q = &env.queue;
    let mut opened = false;
    for _ in 0..breaker::MIN_REQUESTS {
        opened = breaker::record(q, Provider::Hubspot, true).await;
    }
    assert!(opened && breaker::tripped(q, Provider::Hubspot).await, "twenty failures open the breaker");
    assert!(q.pauses().await.expect("pauses").contains_key("x:provider:hubspot"));

    let out = json(&env.crmctl(&["limits", "resume", "x:provider:hubspot", "--json"]));
    assert_eq!((out["resumed"].as_bool(), out["breaker_closed"].as_bool()), (Some(true), Some(true)));
    assert!(!breaker::tripped(q, Provider::Hubspot).await, "the breaker is closed");
    assert!(!q.pauses().await.expect("pauses").contains_key("x:provider:hubspot"), "the pause is lifted");
    // Closed, not half-open: one failure does not re-open it; fresh failures must add up again.
    assert!(!breaker::record(q, Provider::Hubspot, true).await);
    assert!(!breaker::tripped(q, Provider::Hubspot).await);

    // Any other budget's pause is lifted as before.
    q.pause("x:account:hubspot:42", std::time::Duration::from_secs(60)).await.expect("pause");
    let out = json(&env.crmctl(&["limits", "resume", "x:account:hubspot:42", "--json"]));
    assert_eq!(out["breaker_closed"].as_bool(), Some(false));
    assert!(!q.pauses().await.expect("pauses").contains_key("x:account:hubspot:42"));
}

/// A database a later version migrated (a rolling upgrade restarts old pods after new ones
/// ran their init container's `crmctl migrate`; a rollback starts only old ones): this
/// version's `crmctl migrate` must leave the newer migration alone and succeed, not refuse
/// to start the process.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_leaves_a_later_versions_migrations_alone() {
    let env = Env::new().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000000, 'from a later version', true, '\\x00'::bytea, 1)",
    )
    .execute(&env.db.pool)
    .await
    .expect("a later version's migration");
    let out = env.crmctl(&["migrate", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["applied"], 0, "nothing of this version was missing");
}
