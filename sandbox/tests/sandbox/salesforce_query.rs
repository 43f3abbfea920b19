//! SOQL over REST: locator paging (every record exactly once, snapshot semantics, batch sizes),
//! changed-since on `SystemModstamp`, `queryAll` and deletes, `deleted/` and `updated/`, cursor
//! expiry, and Salesforce-shaped query errors.

use crate::salesforce_support::{config, id_set, ids, start, strings};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const SYNC: &str =
    "SELECT Id, LastName, Email, SystemModstamp FROM Contact ORDER BY SystemModstamp ASC, Id ASC";

#[tokio::test]
async fn locator_paging_returns_every_record_exactly_once() {
    let env = start(config(500)).await;
    let pages = env.pages("query", SYNC, Some(200)).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p["records"].as_array().expect("records").len()).collect();
    assert_eq!(sizes, vec![200, 200, 100]);
    assert!(pages.iter().all(|p| p["totalSize"] == json!(500)));
    assert_eq!(pages[0]["done"], json!(false));
    assert_eq!(pages[2]["done"], json!(true));
    assert!(pages[2].get("nextRecordsUrl").is_none());
    let next = pages[0]["nextRecordsUrl"].as_str().expect("next");
    assert!(next.starts_with("/services/data/v62.0/query/01g") && next.ends_with("-200"), "{next}");
    let records: Vec<Value> =
        pages.iter().flat_map(|p| p["records"].as_array().expect("records").clone()).collect();
    let all = ids(&records);
    assert_eq!(id_set(&records).len(), 500, "no record twice");
    assert_eq!(all.len(), 500);
    // Ordered by (SystemModstamp, Id), with the attributes first and fields in SELECT order.
    let keys: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (r["SystemModstamp"].as_str().expect("ts").to_owned(), r["Id"].as_str().expect("id").to_owned())
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let raw = env.query(SYNC, Some(200)).await.text;
    assert!(
        raw.starts_with(
            "{\"totalSize\":500,\"done\":false,\"nextRecordsUrl\":\"/services/data/v62.0/query/01g"
        ),
        "{raw:.200}"
    );
    assert!(
        raw.contains("\"records\":[{\"attributes\":{\"type\":\"Contact\",\"url\":\"/services/data/v62.0/sobjects/Contact/003"),
        "attributes come first: {raw:.300}"
    );
    assert!(raw.contains("\"},\"Id\":\"003"), "then the fields in SELECT order: {raw:.300}");
    let ts = records[0]["SystemModstamp"].as_str().expect("ts");
    assert!(ts.ends_with(".000+0000") && ts.len() == 28, "Salesforce date-time format: {ts}");
    // The default batch is 2000, and a batch size below 200 is raised to 200.
    assert_eq!(env.pages("query", SYNC, None).await.len(), 1);
    assert_eq!(env.pages("query", SYNC, Some(50)).await.len(), 3);
    // Variable batch sizes: pages shrink, the union stays exact.
    env.settings(json!({"variable_batch_sizes": true})).await;
    let pages = env.pages("query", SYNC, Some(200)).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p["records"].as_array().expect("records").len()).collect();
    assert!(sizes.len() >= 3 && sizes.iter().all(|s| *s <= 200), "{sizes:?}");
    assert!(sizes.iter().any(|s| *s < 200 && *s >= 100), "some batch is short: {sizes:?}");
    let records: Vec<Value> =
        pages.iter().flat_map(|p| p["records"].as_array().expect("records").clone()).collect();
    assert_eq!(records.len(), 500);
    assert_eq!(id_set(&records).len(), 500);
}

#[tokio::test]
async fn a_cursor_is_a_snapshot_of_query_time() {
    let env = start(config(450)).await;
    let first = env.query(SYNC, Some(200)).await.json();
    let before: Vec<Value> = env.all(SYNC, None).await;
    // Changes land mid-scan: updates, creates and deletes of contacts.
    env.advance("5s").await;
    let log = env
        .mutate(json!({"seed": 1, "creates": 5, "updates": 40, "deletes": 5, "objects": ["Contact"]}))
        .await;
    assert_eq!(strings(&log["deleted"]["Contact"]).len(), 5);
    let mut records: Vec<Value> = first["records"].as_array().expect("records").clone();
    let mut next = first["nextRecordsUrl"].as_str().map(str::to_owned);
    while let Some(n) = next {
        let p = env.send("GET", &format!("{}{n}", env.instance), &env.access, None, None).await.json();
        records.extend(p["records"].as_array().expect("records").iter().cloned());
        next = p["nextRecordsUrl"].as_str().map(str::to_owned);
    }
    assert_eq!(records, before, "the batches show the rows as they were when the query ran");
}

#[tokio::test]
async fn changed_since_returns_exactly_the_changed_records_and_query_all_shows_deletes() {
    let env = start(config(120)).await;
    let full = env.all(SYNC, None).await;
    let high = full.last().expect("records")["SystemModstamp"].as_str().expect("ts").to_owned();
    env.advance("60s").await;
    let log = env
        .mutate(json!({"seed": 9, "creates": 6, "updates": 12, "deletes": 4, "objects": ["Contact"]}))
        .await;
    let created = strings(&log["created"]["Contact"]);
    let updated = strings(&log["updated"]["Contact"]);
    let deleted = strings(&log["deleted"]["Contact"]);
    assert_eq!(created.len(), 6);
    assert_eq!(deleted.len(), 4);
    // SOQL date-times are unquoted; the `+0000` form needs a colon in SOQL, so use Z.
    let since = format!("{}Z", &high[..19]);
    let changed = env
        .all(
            &format!(
                "SELECT Id FROM Contact WHERE SystemModstamp > {since} ORDER BY SystemModstamp ASC, Id ASC"
            ),
            None,
        )
        .await;
    let expected: BTreeSet<String> =
        created.union(&updated).filter(|id| !deleted.contains(*id)).cloned().collect();
    assert_eq!(id_set(&changed), expected);
    // queryAll also returns the deleted rows, flagged IsDeleted.
    let all = env
        .pages("queryAll", &format!("SELECT Id, IsDeleted FROM Contact WHERE SystemModstamp > {since}"), None)
        .await;
    let rows: Vec<Value> =
        all.iter().flat_map(|p| p["records"].as_array().expect("records").clone()).collect();
    let gone: BTreeSet<String> = rows
        .iter()
        .filter(|r| r["IsDeleted"] == json!(true))
        .map(|r| r["Id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(gone, deleted);
    let still = env.all("SELECT Id FROM Contact", None).await;
    assert_eq!(still.len(), 120 + 6 - 4);
    assert!(id_set(&still).is_disjoint(&deleted));
}

#[tokio::test]
async fn deleted_and_updated_cover_a_minute_granular_window_of_15_and_30_days() {
    let env = start(config(30)).await;
    let start_at = env.now().await;
    env.advance("2m").await;
    let log = env.mutate(json!({"seed": 3, "updates": 3, "deletes": 3, "objects": ["Contact"]})).await;
    let deleted = strings(&log["deleted"]["Contact"]);
    let updated = strings(&log["updated"]["Contact"]);
    env.advance("3m").await;
    let end = "2026-01-05T09:20:00Z";
    let q = |path: &str, s: &str, e: &str| {
        let enc = |t: &str| url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
        format!("/sobjects/Contact/{path}/?start={}&end={}", enc(s), enc(e))
    };
    let r = env.get(&q("deleted", &start_at, end), &env.access).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let got: BTreeSet<String> = b["deletedRecords"]
        .as_array()
        .expect("records")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got, deleted);
    assert_eq!(b["deletedRecords"][0]["deletedDate"], json!("2026-01-05T09:02:00.000+0000"));
    assert_eq!(
        b["latestDateCovered"],
        json!("2026-01-05T09:05:00.000+0000"),
        "now, to the minute (the end is in the future)"
    );
    assert!(b["earliestDateAvailable"].is_string());
    let u = env.get(&q("updated", &start_at, end), &env.access).await.json();
    let live_updates: BTreeSet<String> = updated.difference(&deleted).cloned().collect();
    assert_eq!(strings(&u["ids"]), live_updates, "{u}");
    assert_eq!(u["latestDateCovered"], json!("2026-01-05T09:05:00.000+0000"));
    // A later window starting at latestDateCovered sees nothing new.
    let again = env.get(&q("deleted", "2026-01-05T09:05:00Z", end), &env.access).await.json();
    assert_eq!(again["deletedRecords"], json!([]));
    // Windows of a minute or less, and starts beyond the retention, are refused.
    let short = env.get(&q("deleted", "2026-01-05T09:00:00Z", "2026-01-05T09:00:59Z"), &env.access).await;
    assert_eq!(short.status, 400);
    assert_eq!(short.json()[0]["errorCode"], json!("INVALID_REPLICATION_DATE"));
    env.advance("16d").await;
    let token = env.fresh_tokens().await["access_token"].as_str().expect("access").to_owned();
    let old = env.get(&q("deleted", &start_at, "2026-01-21T09:00:00Z"), &token).await;
    assert_eq!(old.status, 400);
    assert_eq!(old.json()[0]["errorCode"], json!("INVALID_REPLICATION_DATE"));
    // After 15 days the Recycle Bin is purged: queryAll no longer shows the rows.
    let soql: String =
        url::form_urlencoded::byte_serialize(b"SELECT Id FROM Contact WHERE IsDeleted = true").collect();
    let rows = env.get(&format!("/queryAll?q={soql}"), &token).await;
    assert_eq!(rows.json()["totalSize"], json!(0), "{}", rows.text);
}

#[tokio::test]
async fn query_errors_are_salesforce_shaped() {
    let env = start(config(2)).await;
    let r = env.query("SELECT Id FROM Contact WHERE", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!([{"message": "\nSELECT Id FROM Contact WHERE\n                            ^\nERROR at Row:1:Column:29\nunexpected token: <EOF>", "errorCode": "MALFORMED_QUERY"}])
    );
    assert!(r.header("sforce-limit-info").is_some(), "errors after authentication carry the usage header");
    let codes = [
        ("SELECT Id, Nope FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Widget", "INVALID_TYPE"),
        ("SELECT Id FROM Contact WHERE SystemModstamp > '2025-01-01T00:00:00Z'", "INVALID_FIELD"),
        ("SELECT Id FROM Contact WHERE SystemModstamp > 2025-01-01", "INVALID_FIELD"),
        ("SELECT Id FROM Contact ORDER BY", "MALFORMED_QUERY"),
    ];
    for (q, code) in codes {
        let r = env.query(q, None).await;
        assert_eq!((r.status, r.json()[0]["errorCode"].clone()), (400, json!(code)), "{q}: {}", r.text);
    }
    let missing = env.get("/query", &env.access).await;
    assert_eq!(missing.json()[0]["errorCode"], json!("MALFORMED_QUERY"));
    // Email lookups as a client would write them: quoted, escaped, case-insensitive.
    let email = env.all("SELECT Email FROM Contact LIMIT 1", None).await[0]["Email"]
        .as_str()
        .expect("email")
        .to_uppercase();
    let found = env.all(&format!("SELECT Id FROM Contact WHERE Email = '{email}' LIMIT 10"), None).await;
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn cursors_expire_after_15_idle_minutes_and_ten_per_user() {
    let env = start(config(450)).await;
    let first = env.query(SYNC, Some(200)).await.json();
    let next = first["nextRecordsUrl"].as_str().expect("next").to_owned();
    let env = &env;
    let get = |n: String| {
        let url = format!("{}{n}", env.instance);
        async move { env.send("GET", &url, &env.access, None, None).await }
    };
    env.advance("14m").await;
    assert_eq!(get(next.clone()).await.status, 200, "use keeps it open");
    assert_eq!(get(next.clone()).await.status, 200, "a batch can be fetched again (client retries)");
    env.advance("15m").await;
    let r = get(next).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!([{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]));
    // Opening an 11th cursor releases the oldest.
    let mut locators = Vec::new();
    for _ in 0..11 {
        locators.push(
            env.query(SYNC, Some(200)).await.json()["nextRecordsUrl"].as_str().expect("next").to_owned(),
        );
    }
    assert_eq!(get(locators[0].clone()).await.status, 400);
    assert_eq!(get(locators[1].clone()).await.status, 200);
    assert_eq!(get(locators[10].clone()).await.status, 200);
}
