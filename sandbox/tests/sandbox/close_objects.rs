//! Close objects: offset paging (`_skip`/`_limit`, `has_more`, per-resource maxima), opportunity
//! date windows, creates (200, prefixed ids, cents), patch-like PUT, validation and error bodies,
//! counters and determinism.

use crate::close_support::{config, ids, start};
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[tokio::test]
async fn offset_paging_returns_every_lead_and_contact_exactly_once() {
    let env = start(config(237)).await;
    env.unthrottle().await;
    for resource in ["lead", "contact", "opportunity"] {
        let all = env.list_all(resource, "", 100).await;
        let got = ids(&all);
        let unique: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(got.len(), 237, "every {resource} listed");
        assert_eq!(unique.len(), 237, "no {resource} listed twice");
        let prefix = match resource {
            "lead" => "lead_",
            "contact" => "cont_",
            _ => "oppo_",
        };
        assert!(got.iter().all(|i| i.starts_with(prefix)), "{resource} ids carry {prefix}");
    }
    // Leads embed their contacts and opportunities; contacts name their lead.
    let leads = env.list_all("lead", "", 100).await;
    let embedded: usize = leads.iter().map(|l| l["contacts"].as_array().expect("contacts").len()).sum();
    assert_eq!(embedded, 237);
    // _fields keeps only the named fields.
    let r = env.get("/api/v1/contact/?_limit=2&_fields=id,lead_id,emails", &env.key).await.json();
    let keys: Vec<&str> = r["data"][0].as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["emails", "id", "lead_id"]);
    assert_eq!(r["has_more"], json!(true));
}

#[tokio::test]
async fn skip_and_limit_past_the_resource_maximum_are_400() {
    let env = start(config(5)).await;
    let r = env.get("/api/v1/lead/?_limit=101", &env.key).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["field-errors"]["_limit"].is_string(), "{}", r.text);
    let r = env.get("/api/v1/opportunity/?_skip=10001", &env.key).await;
    assert_eq!(r.status, 400);
    let b = r.json();
    assert!(b["field-errors"]["_skip"].as_str().expect("message").contains("10000"));
    assert!(b["errors"].is_array() && b["error"].is_string());
    // The maxima are settings per resource.
    env.settings(json!({"max_skip": {"opportunity": 3}})).await;
    assert_eq!(env.get("/api/v1/opportunity/?_skip=3", &env.key).await.status, 200);
    assert_eq!(env.get("/api/v1/opportunity/?_skip=4", &env.key).await.status, 400);
    assert_eq!(env.get("/api/v1/lead/?_skip=4", &env.key).await.status, 200, "other resources keep theirs");
    // Unknown filters and the event log's _skip are rejected too.
    assert_eq!(env.get("/api/v1/contact/?date_updated__gte=2025-01-01", &env.key).await.status, 400);
    assert_eq!(env.get("/api/v1/event/?_skip=10", &env.key).await.status, 400);
}

#[tokio::test]
async fn opportunity_windows_by_date_updated_return_exactly_the_changed_records() {
    let env = start(config(60)).await;
    env.unthrottle().await;
    let before = env.list_all("opportunity", "&_order_by=date_updated", 25).await;
    let times: Vec<&str> = before.iter().map(|o| o["date_updated"].as_str().expect("date")).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "_order_by=date_updated is ascending");
    let now = env.ctl("GET", "/_sandbox/clock", None).await["now"].as_str().expect("now").to_owned();
    let log = env
        .mutate(json!({"seed": 1, "creates": 4, "updates": 6, "deletes": 2, "objects": ["opportunity"]}))
        .await;
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for k in ["created", "updated"] {
        for id in log[k]["opportunity"].as_array().into_iter().flatten() {
            expected.insert(id.as_str().expect("id").to_owned());
        }
    }
    for id in log["deleted"]["opportunity"].as_array().into_iter().flatten() {
        expected.remove(id.as_str().expect("id"));
    }
    let since = url_encode(&now);
    let changed =
        env.list_all("opportunity", &format!("&_order_by=date_updated&date_updated__gte={since}"), 3).await;
    let got: BTreeSet<String> = ids(&changed).into_iter().collect();
    assert_eq!(got, expected, "exactly the created and updated opportunities");
    // Aggregates come with every page; value is in cents.
    let page = env.get("/api/v1/opportunity/?_limit=1", &env.key).await.json();
    assert_eq!(page["total_results"], json!(60 + 4 - 2));
    let o = &page["data"][0];
    let cents = o["value"].as_i64().expect("cents");
    assert_eq!(cents % 10_000, 0);
    assert!(o["value_formatted"].as_str().expect("formatted").starts_with('$'));
    assert!(o["status_id"].as_str().expect("status").starts_with("stat_"));
}

async fn digest(e: &crate::close_support::CloseEnv) -> String {
    e.ctl("GET", &format!("/_sandbox/close/accounts/{}", e.org), None).await["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}

fn url_encode(s: &str) -> String {
    url_escape(s)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn creates_answer_200_and_put_is_a_patch() {
    let env = start(config(3)).await;
    let lead = env.get("/api/v1/lead/?_limit=1", &env.key).await.json()["data"][0]["id"]
        .as_str()
        .expect("lead")
        .to_owned();
    let r = env
        .post(
            "/api/v1/contact/",
            &env.key,
            &json!({"lead_id": lead, "name": "Jane Doe", "title": "CEO",
                    "emails": [{"email": "Jane@X.com", "type": "office"}], "phones": [{"phone": "+16041234567", "type": "mobile"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = r.json();
    let id = c["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("cont_"));
    assert_eq!(c["emails"], json!([{"type": "office", "email": "jane@x.com", "is_unsubscribed": false}]));
    assert_eq!(c["organization_id"], json!(env.org));
    let put = env.put(&format!("/api/v1/contact/{id}/"), &env.key, &json!({"title": "CTO"})).await;
    assert_eq!(put.status, 200);
    let p = put.json();
    assert_eq!(p["title"], json!("CTO"));
    assert_eq!(p["name"], json!("Jane Doe"), "PUT keeps the fields it does not name");
    assert!(p["date_updated"].as_str().expect("updated").ends_with("+00:00"));
    // A contact without lead_id gets a new lead named after it.
    let solo = env.post("/api/v1/contact/", &env.key, &json!({"name": "Solo Person"})).await.json();
    let new_lead =
        env.get(&format!("/api/v1/lead/{}/", solo["lead_id"].as_str().expect("lead")), &env.key).await.json();
    assert_eq!(new_lead["display_name"], json!("Solo Person"));
    // Opportunities: value in cents, won status sets date_won.
    let won = env.account["statuses"]["opportunity"][1]["id"].as_str().expect("won").to_owned();
    let o = env
        .post("/api/v1/opportunity/", &env.key, &json!({"lead_id": lead, "value": 300000, "confidence": 50}))
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let o = o.json();
    assert_eq!(o["value_formatted"], json!("$3,000"));
    assert_eq!(o["status_type"], json!("active"));
    let oid = o["id"].as_str().expect("id");
    let u =
        env.put(&format!("/api/v1/opportunity/{oid}/"), &env.key, &json!({"status_id": won})).await.json();
    assert_eq!(u["status_type"], json!("won"));
    assert_eq!(u["date_won"], json!("2026-01-05"));
    // Tasks, calls and notes need a lead.
    let note = env.post("/api/v1/activity/note/", &env.key, &json!({"lead_id": lead, "note": "hello"})).await;
    assert_eq!(note.status, 200);
    assert!(note.json()["id"].as_str().expect("id").starts_with("acti_"));
    let task = env
        .post("/api/v1/task/", &env.key, &json!({"lead_id": lead, "text": "Call back", "date": "2026-01-31"}))
        .await;
    assert_eq!(task.status, 200, "{}", task.text);
    assert_eq!(task.json()["_type"], json!("lead"));
    // The marker custom field is writable and searchable through the control plane.
    let marked = env
        .post(
            "/api/v1/contact/",
            &env.key,
            &json!({"lead_id": lead, "name": "Marked", format!("custom.{}", env.marker_field): "act-77"}),
        )
        .await;
    assert_eq!(marked.status, 200, "{}", marked.text);
    assert_eq!(marked.json()[format!("custom.{}", env.marker_field)], json!("act-77"));
    let found =
        env.ctl("GET", &format!("/_sandbox/close/accounts/{}/created?contains=act-77", env.org), None).await;
    assert_eq!(found["count"], json!(1));
    let c = env.counters().await;
    assert_eq!(c["created"]["contact"], json!(3));
    assert_eq!(env.sb.counters(crm_sandbox::ProviderKind::Close, &env.org).created.get("contact"), Some(&3));
    assert_eq!(c["created"]["lead"], json!(1), "the implicit lead counts as created");
    assert_eq!(c["created"]["opportunity"], json!(1));
}

#[tokio::test]
async fn validation_not_found_and_plan_limit_bodies() {
    let env = start(config(2)).await;
    let r = env.post("/api/v1/activity/note/", &env.key, &json!({"note": "orphan"})).await;
    assert_eq!(r.status, 400);
    let b = r.json();
    assert_eq!(b["field-errors"]["lead_id"], json!("This field is required."));
    assert_eq!(b["errors"], json!([]));
    let r = env
        .post("/api/v1/contact/", &env.key, &json!({"name": "X", "emails": [{"email": "not-an-email"}]}))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["field-errors"]["emails"].is_string());
    let r = env.post("/api/v1/contact/", &env.key, &json!({"name": "X", "bogus": 1})).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["field-errors"]["bogus"].is_string(), "unknown fields are rejected");
    let r = env.post("/api/v1/opportunity/", &env.key, &json!({"value": 12.5})).await;
    assert_eq!(r.status, 400, "value is integer cents");
    let r = env.get("/api/v1/lead/lead_doesnotexist/", &env.key).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error": "Empty query: Lead matching query does not exist."}));
    assert!(r.header("ratelimit").is_some(), "authenticated errors carry RateLimit");
    env.set_quota(json!({"record_limit": 6})).await;
    let r = env.post("/api/v1/lead/", &env.key, &json!({"name": "One too many"})).await;
    assert_eq!(r.status, 402);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn deleting_a_lead_deletes_its_children_and_the_control_plane_sees_it() {
    let env = start(config(4)).await;
    let leads = env.get("/api/v1/lead/", &env.key).await.json();
    let lead = leads["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|l| !l["contacts"].as_array().expect("c").is_empty())
        .cloned();
    let lead = lead.expect("a lead with contacts");
    let lead_id = lead["id"].as_str().expect("id");
    let contact = lead["contacts"][0]["id"].as_str().expect("contact").to_owned();
    let r = env.delete(&format!("/api/v1/lead/{lead_id}/"), &env.key).await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert_eq!(env.get(&format!("/api/v1/contact/{contact}/"), &env.key).await.status, 404);
    let rec = env
        .ctl("GET", &format!("/_sandbox/close/accounts/{}/objects/contact/{contact}", env.org), None)
        .await;
    assert_eq!(rec["deleted"], json!(true));
    assert_eq!(env.delete(&format!("/api/v1/lead/{lead_id}/"), &env.key).await.status, 404);
}

#[tokio::test]
async fn same_seed_gives_identical_data() {
    let a = start(config(40).with_seed(5)).await;
    let b = start(config(40).with_seed(5)).await;
    let c = start(config(40).with_seed(6)).await;
    assert_eq!(a.org, b.org);
    assert_eq!(a.api_key, b.api_key);
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_ne!(digest(&a).await, digest(&c).await);
    let la: Vec<Value> = a.list_all("contact", "", 100).await;
    let lb: Vec<Value> = b.list_all("contact", "", 100).await;
    assert_eq!(la, lb);
    let req = json!({"seed": 3, "creates": 5, "updates": 10, "deletes": 3});
    assert_eq!(a.mutate(req.clone()).await, b.mutate(req).await);
    assert_eq!(digest(&a).await, digest(&b).await);
}
