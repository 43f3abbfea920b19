//! Sync freshness: which scheduled syncs count as stale, as `crmctl sync stale` lists them and
//! as the scheduler's `crm_fleet_syncs_stale` gauge counts them.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use crm_scheduler::schedule::freshness::{Filter, counts, stale_syncs, with_last_runs};
use uuid::Uuid;

use crate::support::{Env, json};

const GRACE: Duration = Duration::from_secs(30 * 60);

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, h, m, 0).single().expect("instant")
}

impl Env {
    async fn set_schedule(&self, id: Uuid, sql_set: &str, since: DateTime<Utc>) {
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE schedules SET {sql_set} WHERE id = $1")))
            .bind(id)
            .execute(self.pool())
            .await
            .expect("update schedule");
        // Written last, directly: the trigger moves these on definition changes.
        sqlx::query(
            "UPDATE schedules SET updated_at = $2, created_at = $2, ticking_since = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(since)
        .execute(self.pool())
        .await
        .expect("backdate schedule");
    }

    async fn succeeded(&self, connection: Uuid, object: &str, at: DateTime<Utc>) {
        sqlx::query(
            "INSERT INTO sync_state (connection_id, object, cursor, last_success_at) VALUES ($1, $2, '{}', $3)",
        )
        .bind(connection)
        .bind(object)
        .bind(at)
        .execute(self.pool())
        .await
        .expect("sync_state");
    }

    /// A finished sync run (started and finished at `at`).
    async fn ran(
        &self,
        connection: Uuid,
        object: &str,
        status: &str,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) {
        sqlx::query(
            "INSERT INTO sync_runs (id, connection_id, tenant_id, provider, object, mode, status, started_at, finished_at, error) \
             VALUES ($1, $2, 't', 'hubspot', $3, 'incremental', $4, $5, $5, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(connection)
        .bind(object)
        .bind(status)
        .bind(at)
        .bind(error)
        .execute(self.pool())
        .await
        .expect("run");
    }

    async fn connection_status(&self, connection: Uuid, status: &str) {
        sqlx::query("UPDATE connections SET status = $2 WHERE id = $1")
            .bind(connection)
            .bind(status)
            .execute(self.pool())
            .await
            .expect("connection status");
    }
}

fn keys(stale: &[crm_scheduler::schedule::freshness::StaleSync]) -> Vec<(Uuid, &str, DateTime<Utc>)> {
    stale.iter().map(|s| (s.connection_id, s.object.as_str(), s.due_at)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_is_stale_once_a_tick_fired_past_the_grace_with_no_success_since() {
    let env = Env::new().await;
    // Hourly, three objects, defined since 07:20: contact synced at 12:10, company at 09:20,
    // deal never.
    let hourly_conn = env.connection().await;
    let hourly =
        env.schedule(hourly_conn, "0 * * * *", &["contact", "company", "deal"], "run_once", 10).await;
    env.set_schedule(hourly, "enabled = true", at(7, 20)).await;
    env.succeeded(hourly_conn, "contact", at(12, 10)).await;
    env.succeeded(hourly_conn, "company", at(9, 20)).await;
    // Daily at 09:00 New York (14:00 UTC in November) on a connection needing consent, last
    // synced after yesterday's tick.
    let daily_conn = env.connection().await;
    let daily = env.schedule(daily_conn, "0 9 * * *", &["contact"], "run_once", 10).await;
    env.set_schedule(daily, "time_zone = 'America/New_York'", at(7, 0) - chrono::Duration::days(3)).await;
    env.succeeded(daily_conn, "contact", at(15, 0) - chrono::Duration::days(1)).await;
    env.connection_status(daily_conn, "needs_reauth").await;
    // A second schedule of the deal, every half hour: the deal is listed once, behind since
    // that schedule's first tick (07:30).
    let half_hourly = env.schedule(hourly_conn, "*/30 * * * *", &["deal"], "run_once", 10).await;
    env.set_schedule(half_hourly, "enabled = true", at(7, 20)).await;
    // Never synced, but nobody expects it to: a disabled schedule, a disabled connection.
    let off = env.schedule(hourly_conn, "*/5 * * * *", &["deal"], "run_once", 10).await;
    env.set_schedule(off, "enabled = false", at(1, 0)).await;
    let disabled_conn = env.connection().await;
    let on_disabled = env.schedule(disabled_conn, "*/5 * * * *", &["contact"], "run_once", 10).await;
    env.set_schedule(on_disabled, "enabled = true", at(1, 0)).await;
    env.connection_status(disabled_conn, "disabled").await;

    let all = Filter::default();
    let stale = stale_syncs(env.pool(), at(12, 20), GRACE, &all).await.expect("stale");
    // The oldest unanswered tick first: deal since 07:30 (the half-hourly schedule's first
    // tick after 07:20; the hourly one's, 08:00, is not listed again), company since 10:00
    // (after 09:20). The contact's 13:00 tick has not fired; the daily one's next tick is
    // 14:00 UTC.
    assert_eq!(keys(&stale), vec![(hourly_conn, "deal", at(7, 30)), (hourly_conn, "company", at(10, 0))]);
    assert_eq!(stale[0].schedule_id, half_hourly);
    assert_eq!(stale[1].last_success_at, Some(at(9, 20)));
    assert_eq!(stale[0].last_success_at, None);

    // The daily tick at 14:00 UTC counts once more than the grace has passed.
    let past_grace = at(14, 30) + chrono::Duration::seconds(1);
    let before = stale_syncs(env.pool(), at(14, 30), GRACE, &all).await.expect("stale");
    assert!(!before.iter().any(|s| s.connection_id == daily_conn), "{before:?}");
    let after = stale_syncs(env.pool(), past_grace, GRACE, &all).await.expect("stale");
    let daily_stale: Vec<_> = after.iter().filter(|s| s.connection_id == daily_conn).collect();
    assert_eq!(daily_stale.len(), 1, "{after:?}");
    assert_eq!(
        (daily_stale[0].due_at, daily_stale[0].connection_status.as_str()),
        (at(14, 0), "needs_reauth")
    );
    // By then the contact's 13:00 tick is unanswered too; disabled ones never show.
    assert!(
        after
            .iter()
            .any(|s| s.connection_id == hourly_conn && s.object == "contact" && s.due_at == at(13, 0))
    );
    assert!(!after.iter().any(|s| s.connection_id == disabled_conn || s.schedule_id == off), "{after:?}");
    // The gauge counts active connections only: the contact of the connection needing consent
    // is listed, not counted.
    let contacts = counts(&after)
        .into_iter()
        .find(|(p, o, _)| p.as_str() == "hubspot" && o.as_str() == "contact")
        .map(|(_, _, n)| n);
    assert_eq!(contacts, Some(1), "{after:?}");

    // A success after the tick answers it.
    env.succeeded(hourly_conn, "deal", at(12, 5)).await;
    let stale = stale_syncs(env.pool(), at(12, 20), GRACE, &all).await.expect("stale");
    assert_eq!(keys(&stale), vec![(hourly_conn, "company", at(10, 0))]);
    // An edit of a policy does not hide it (through the real trigger)...
    let schedule_sql = |sql: &'static str| sqlx::query(sql).bind(hourly).execute(env.pool());
    schedule_sql("UPDATE schedules SET backfill_limit = 5, overlap_policy = 'buffer_one' WHERE id = $1")
        .await
        .expect("edit");
    let stale = stale_syncs(env.pool(), at(12, 20), GRACE, &all).await.expect("stale");
    assert_eq!(keys(&stale), vec![(hourly_conn, "company", at(10, 0))]);
    // ...while disabling and re-enabling it restarts the count: not behind before its first
    // tick plus the grace.
    schedule_sql("UPDATE schedules SET enabled = false WHERE id = $1").await.expect("disable");
    schedule_sql("UPDATE schedules SET enabled = true WHERE id = $1").await.expect("enable");
    let restarted: DateTime<Utc> = sqlx::query_scalar("SELECT ticking_since FROM schedules WHERE id = $1")
        .bind(hourly)
        .fetch_one(env.pool())
        .await
        .expect("ticking_since");
    assert!(restarted > at(7, 20), "re-enabling moves ticking_since: {restarted}");
    let this_connection = Filter { connection: Some(hourly_conn), ..Filter::default() };
    let soon_after = restarted + chrono::Duration::minutes(5);
    let stale = stale_syncs(env.pool(), soon_after, GRACE, &this_connection).await.expect("stale");
    assert!(!stale.iter().any(|s| s.schedule_id == hourly), "{stale:?}");

    // Filters.
    let tenant: String = sqlx::query_scalar("SELECT tenant_id FROM connections WHERE id = $1")
        .bind(daily_conn)
        .fetch_one(env.pool())
        .await
        .expect("tenant");
    let only = Filter { tenant: Some(tenant), ..Filter::default() };
    let mut of_tenant = stale_syncs(env.pool(), past_grace, GRACE, &only).await.expect("stale");
    assert_eq!(keys(&of_tenant), vec![(daily_conn, "contact", at(14, 0))]);
    let other_provider = Filter { provider: Some("close".into()), ..Filter::default() };
    assert!(stale_syncs(env.pool(), past_grace, GRACE, &other_provider).await.expect("stale").is_empty());

    // The latest run comes with it.
    for (started, status, error) in
        [(at(13, 0), "failed", Some("unauthorized: token revoked")), (at(12, 0), "succeeded", None)]
    {
        env.ran(daily_conn, "contact", status, started, error).await;
    }
    with_last_runs(env.pool(), &mut of_tenant).await.expect("runs");
    let run = of_tenant[0].last_run.as_ref().expect("latest run");
    assert_eq!((run.status.as_str(), run.error.as_deref()), ("failed", Some("unauthorized: token revoked")));
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_find_stale_syncs_with_crmctl_and_the_scheduler_counts_them() {
    let env = Env::new().await;
    let now = Utc::now();
    let behind = env.connection().await;
    let s = env.schedule(behind, "*/5 * * * *", &["contact", "deal"], "run_once", 10).await;
    env.set_schedule(s, "enabled = true", now - chrono::Duration::hours(3)).await;
    env.succeeded(behind, "deal", now - chrono::Duration::minutes(1)).await;
    env.ran(behind, "contact", "failed", now, Some("rate limited for 2h")).await;
    let fresh = env.connection().await;
    let f = env.schedule(fresh, "*/5 * * * *", &["contact"], "run_once", 10).await;
    env.set_schedule(f, "enabled = true", now - chrono::Duration::hours(3)).await;
    env.succeeded(fresh, "contact", now - chrono::Duration::minutes(2)).await;

    let listed = json(&env.crmctl(&["sync", "stale", "--json"]));
    assert_eq!(
        (listed["total"].as_u64(), listed["after_seconds"].as_u64()),
        (Some(1), Some(1800)),
        "{listed}"
    );
    let row = &listed["stale"][0];
    assert_eq!(
        (row["connection_id"].as_str(), row["object"].as_str(), row["last_run"]["error"].as_str()),
        (Some(behind.to_string().as_str()), Some("contact"), Some("rate limited for 2h")),
        "{row}"
    );
    let table = env.crmctl(&["sync", "stale"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("failed") && text.contains("rate limited for 2h"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("1 stale")), "{text}");
    let capped = json(&env.crmctl(&["sync", "stale", "--limit", "0", "--json"]));
    assert_eq!((capped["total"].as_u64(), capped["stale"].as_array().map(Vec::len)), (Some(1), Some(0)));
    // A longer grace than the whole outage: nothing is stale.
    let lenient = json(&env.crmctl(&["sync", "stale", "--after", "4h", "--json"]));
    assert_eq!(lenient["total"], 0, "{lenient}");
    let none = env.crmctl(&["sync", "stale", "--after", "4h"]);
    assert!(String::from_utf8_lossy(&none.stdout).starts_with("no stale syncs"));
    let bad = env.crmctl(&["sync", "stale", "--provider", "myspace"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--provider"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The scheduler's gauge counts it from its first sample, at start.
    let scheduler = env.spawn_scheduler(&[]);
    let http = crm_jobs::testing::http_client();
    let value = |text: &str, object: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("crm_fleet_syncs_stale{")
                    && l.contains("provider=\"hubspot\"")
                    && l.contains(&format!("object=\"{object}\""))
            })
            .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
    };
    // Every replica reports 0 until its first count as leader: wait for the count.
    let metrics = scrape_until(&http, &scheduler.base, |text| value(text, "contact") == Some(1.0)).await;
    assert_eq!(value(&metrics, "contact"), Some(1.0), "{metrics}");
    assert_eq!(value(&metrics, "deal"), Some(0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_reads_where_a_connections_syncs_stand() {
    let env = Env::new().await;
    let now = Utc::now();
    let conn = env.connection().await;
    let s = env.schedule(conn, "*/5 * * * *", &["contact", "deal"], "run_once", 10).await;
    env.set_schedule(s, "enabled = true", now - chrono::Duration::hours(3)).await;
    env.succeeded(conn, "contact", now - chrono::Duration::minutes(1)).await;
    for (object, status, error) in [("contact", "succeeded", None), ("deal", "failed", Some("invalid_grant"))]
    {
        env.ran(conn, object, status, now, error).await;
    }
    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let get = |url: String| {
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.expect("request");
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = get(format!("{}/v1/connections/{conn}/sync", app.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["provider"].as_str(), body["stale_after_seconds"].as_u64()),
        (Some("hubspot"), Some(1800))
    );
    let objects = body["objects"].as_array().expect("objects");
    type View<'a> = (&'a str, bool, bool, Option<&'a str>, Option<&'a str>);
    let view: Vec<View> = objects
        .iter()
        .map(|o| {
            (
                o["object"].as_str().unwrap_or_default(),
                o["scheduled"].as_bool().unwrap_or_default(),
                o["stale"].as_bool().unwrap_or_default(),
                o["latest_run"]["status"].as_str(),
                o["latest_run"]["error"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            ("contact", true, false, Some("succeeded"), None),
            ("company", false, false, None, None),
            ("deal", true, true, Some("failed"), Some("invalid_grant")),
        ],
        "{body}"
    );
    assert!(objects[0]["last_success_at"].is_string() && objects[2]["last_success_at"].is_null(), "{body}");
    assert!(objects[2]["due_at"].is_string() && objects[0]["due_at"].is_null(), "{body}");

    let (status, body) = get(format!("{}/v1/connections/{}/sync", app.base, Uuid::new_v4())).await;
    assert_eq!((status, body["field"].as_str()), (404, Some("id")), "{body}");
    let (status, body) = get(format!("{}/v1/connections/nope/sync", app.base)).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("id")), "{body}");
    let (_, doc) = get(format!("{}/openapi.json", app.base)).await;
    assert!(doc["paths"]["/v1/connections/{id}/sync"]["get"].is_object(), "documented");
    assert!(doc["components"]["schemas"]["ConnectionSync"].is_object(), "schema documented");
    app.shutdown().await;
}

/// `crm_fleet_circuit_open` comes from the breaker's state in Redis, sampled by the scheduler:
/// it says 1 for the provider whose breaker is open whichever worker opened it, and 0 for the
/// others (a worker's own last event could stay 1 for ever).
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_reports_open_breakers_from_their_shared_state() {
    let env = Env::new().await;
    for _ in 0..crm_jobs::limits::breaker::MIN_REQUESTS {
        crm_jobs::limits::breaker::record(&env.queue, crm_jobs::providers::Provider::Hubspot, true).await;
    }
    assert!(crm_jobs::limits::breaker::tripped(&env.queue, crm_jobs::providers::Provider::Hubspot).await);
    let scheduler = env.spawn_scheduler(&[]);
    let http = crm_jobs::testing::http_client();
    let value = |text: &str, provider: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("crm_fleet_circuit_open{") && l.contains(&format!("provider=\"{provider}\""))
            })
            .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
    };
    let metrics = scrape_until(&http, &scheduler.base, |text| value(text, "hubspot") == Some(1.0)).await;
    assert_eq!(value(&metrics, "hubspot"), Some(1.0), "{metrics}");
    assert_eq!(value(&metrics, "salesforce"), Some(0.0), "{metrics}");
}

/// The scheduler's `/metrics` once `ready` holds of it, or the last scrape after 20 s.
async fn scrape_until(http: &reqwest::Client, base: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text =
            http.get(format!("{base}/metrics")).send().await.expect("scrape").text().await.expect("body");
        if ready(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
