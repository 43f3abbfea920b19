//! Sync conflicts over the API and `crmctl`: listing with filters and pages, resolving for the
//! CRM's value (the record takes the newest remote value, nothing stays pending) or ours.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Env, json};

impl Env {
    /// A synced contact with a pending local change of `field`.
    async fn pending_contact(&self, connection: Uuid, tenant: &str, id: &str, field: &str, local: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO crm_contacts (tenant_id, provider, external_id, connection_id, {field}, raw, remote_updated_at, local_pending) \
             VALUES ($1, 'hubspot', $2, $3, $4, '{{}}', now(), jsonb_build_object($5::text, $4::text))"
        )))
        .bind(tenant)
        .bind(id)
        .bind(connection)
        .bind(local)
        .bind(field)
        .execute(self.pool())
        .await
        .expect("contact");
    }

    async fn conflict(&self, tenant: &str, id: &str, field: &str, local: &str, remote: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO sync_conflicts (tenant_id, provider, object, external_id, field, local_value, remote_value) \
             VALUES ($1, 'hubspot', 'contact', $2, $3, $4, $5) RETURNING id",
        )
        .bind(tenant)
        .bind(id)
        .bind(field)
        .bind(local)
        .bind(remote)
        .fetch_one(self.pool())
        .await
        .expect("conflict")
    }

    async fn contact(&self, id: &str) -> (Option<String>, Option<String>, Option<Value>) {
        sqlx::query_as("SELECT email, first_name, local_pending FROM crm_contacts WHERE external_id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await
            .expect("contact")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_are_listed_and_resolved_for_the_crms_value_or_ours() {
    let env = Env::new().await;
    let conn = env.connection().await;
    let tenant: String = sqlx::query_scalar("SELECT tenant_id FROM connections WHERE id = $1")
        .bind(conn)
        .fetch_one(env.pool())
        .await
        .expect("tenant");
    env.pending_contact(conn, &tenant, "c1", "email", "ours@example.com").await;
    env.pending_contact(conn, &tenant, "c2", "first_name", "Ann").await;
    // The same question asked twice by two syncs (the CRM's value changed in between).
    let older = env.conflict(&tenant, "c1", "email", "ours@example.com", "a@example.com").await;
    let newer = env.conflict(&tenant, "c1", "email", "ours@example.com", "b@example.com").await;
    let other = env.conflict(&tenant, "c2", "first_name", "Ann", "Anna").await;

    // The scheduler counts the open ones (a process of its own: the metrics are its alone).
    let process = env.spawn_scheduler(&[]);
    let http = crm_jobs::testing::http_client();
    let open_gauge = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("crm_fleet_sync_conflicts_open{") && l.contains("provider=\"hubspot\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let text = http
            .get(format!("{}/metrics", process.base))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        if open_gauge(&text) == Some(3.0) || std::time::Instant::now() > deadline {
            break open_gauge(&text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(seen, Some(3.0), "crm_fleet_sync_conflicts_open");
    drop(process);

    let app = env.start_scheduler().await;
    let client = env.admin_client().await;
    let base = format!("{}/v1/conflicts", app.base);
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.expect("request");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default())
        }
    };
    let post = |url: String, body: Value| {
        let client = client.clone();
        async move {
            let r = client.post(url).json(&body).send().await.expect("request");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default())
        }
    };
    let ids = |page: &Value| -> Vec<i64> {
        page["conflicts"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["id"].as_i64()).collect())
            .unwrap_or_default()
    };

    let (status, page) = get(format!("{base}?tenant_id={tenant}")).await;
    assert_eq!((status, ids(&page)), (200, vec![older, newer, other]), "{page}");
    let (_, first) = get(format!("{base}?tenant_id={tenant}&limit=2")).await;
    assert_eq!((ids(&first), first["next_after"].as_i64()), (vec![older, newer], Some(newer)));
    let (_, rest) = get(format!("{base}?tenant_id={tenant}&limit=2&after={newer}")).await;
    assert_eq!((ids(&rest), rest["next_after"].is_null()), (vec![other], true));
    let (_, deals) = get(format!("{base}?tenant_id={tenant}&object=deal")).await;
    assert!(ids(&deals).is_empty());
    for (query, field) in [("state=closed", "state"), ("provider=myspace", "provider"), ("limit=0", "limit")]
    {
        let (status, body) = get(format!("{base}?{query}")).await;
        assert_eq!((status, body["field"].as_str()), (422, Some(field)), "{query}: {body}");
    }

    // The CRM's value: the newest one read, and the field is no longer pending.
    let (status, done) = post(format!("{base}/{older}/resolve"), json!({ "keep": "remote" })).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["resolved"].as_u64(), done["value"].as_str()),
        (Some(2), Some("b@example.com")),
        "{done}"
    );
    assert_eq!(done["conflict"]["resolution"], "remote");
    assert!(done["conflict"]["resolved_by"].as_str().is_some_and(|b| b.starts_with("api-key:")), "{done}");
    assert_eq!(env.contact("c1").await, (Some("b@example.com".into()), None, None));
    let (status, again) = post(format!("{base}/{newer}/resolve"), json!({ "keep": "local" })).await;
    assert_eq!((status, again["error"].as_str()), (409, Some("already_resolved")), "{again}");
    let (status, bad) = post(format!("{base}/{other}/resolve"), json!({ "keep": "mine" })).await;
    assert_eq!((status, bad["field"].as_str()), (422, Some("keep")), "{bad}");
    let (status, _) = post(format!("{base}/999999999/resolve"), json!({ "keep": "remote" })).await;
    assert_eq!(status, 404);
    let (status, bad) = post(format!("{base}/abc/resolve"), json!({ "keep": "remote" })).await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("id")), "{bad}");
    app.shutdown().await;

    // Ours, from the command line: kept, and still pending until the CRM has it.
    let kept = json(&env.crmctl(&["conflicts", "resolve", &other.to_string(), "--keep", "local", "--json"]));
    assert_eq!((kept["resolved"].as_u64(), kept["value"].as_str()), (Some(1), Some("Ann")), "{kept}");
    assert_eq!(env.contact("c2").await, (None, Some("Ann".into()), Some(json!({ "first_name": "Ann" }))));
    let open = json(&env.crmctl(&["conflicts", "list", "--tenant", &tenant, "--json"]));
    assert_eq!(open.as_array().map(Vec::len), Some(0), "{open}");
    let all = json(&env.crmctl(&["conflicts", "list", "--tenant", &tenant, "--state", "all", "--json"]));
    let resolutions: Vec<&str> =
        all.as_array().expect("list").iter().filter_map(|c| c["resolution"].as_str()).collect();
    assert_eq!(resolutions, vec!["remote", "remote", "local"]);
    let table = env.crmctl(&["conflicts", "list", "--state", "all"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("kept local"));
    // Page by page: a full page says how to ask for the next.
    let ids: Vec<i64> = all.as_array().expect("list").iter().filter_map(|c| c["id"].as_i64()).collect();
    let first = env.crmctl(&["conflicts", "list", "--tenant", &tenant, "--state", "all", "--limit", "2"]);
    let hint = format!("more: --after {}", ids[1]);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains(&hint),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let rest = json(&env.crmctl(&[
        "conflicts",
        "list",
        "--tenant",
        &tenant,
        "--state",
        "all",
        "--after",
        &ids[1].to_string(),
        "--json",
    ]));
    let rest: Vec<i64> = rest.as_array().expect("list").iter().filter_map(|c| c["id"].as_i64()).collect();
    assert_eq!(rest, ids[2..].to_vec());
    let bad = env.crmctl(&["conflicts", "resolve", &other.to_string(), "--keep", "both"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--keep"));
    let twice = env.crmctl(&["conflicts", "resolve", &other.to_string(), "--keep", "remote"]);
    assert_eq!(twice.status.code(), Some(1));
}
