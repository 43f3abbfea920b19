//! Zoho search (`criteria`, `email`, `word`; contains semantics of `equals`; index lag) and COQL.

use crate::zoho_support::{id_set, zconfig, zstart};
use serde_json::json;

#[tokio::test]
async fn search_by_email_criteria_and_word() {
    let env = zstart(zconfig(5)).await;
    for (last, email) in
        [("Lee", "ann.lee@acme.example"), ("Leeds", "bob@acme.example"), ("Kim", "kim@other.example")]
    {
        let r = env
            .post("/crm/v7/Contacts", &env.access, &json!({"data": [{"Last_Name": last, "Email": email}]}))
            .await;
        assert_eq!(r.status, 201);
    }
    // Email search matches substrings, like the real one: the client must compare exactly.
    let by_email = env.get("/crm/v7/Contacts/search?email=lee@acme.example", &env.access).await;
    assert_eq!(by_email.status, 200, "{}", by_email.text);
    let rows = by_email.json()["data"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Email"], json!("ann.lee@acme.example"));
    assert_eq!(rows[0]["Full_Name"], json!("Lee"));
    // `equals` on text is a contains; starts_with; and/or with parentheses; escapes.
    let eq = env.get("/crm/v7/Contacts/search?criteria=(Last_Name:equals:lee)", &env.access).await.json();
    let names: Vec<&str> =
        eq["data"].as_array().expect("rows").iter().filter_map(|r| r["Last_Name"].as_str()).collect();
    assert!(names.contains(&"Lee") && names.contains(&"Leeds"), "{names:?}");
    let both = env
        .get(
            "/crm/v7/Contacts/search?criteria=((Last_Name:starts_with:Le)and(Email:equals:bob%40acme.example))",
            &env.access,
        )
        .await
        .json();
    assert_eq!(both["data"].as_array().expect("rows").len(), 1);
    assert_eq!(both["info"]["count"], json!(1));
    let none = env.get("/crm/v7/Contacts/search?email=nobody@nowhere.example", &env.access).await;
    assert_eq!(none.status, 204);
    let word = env.get("/crm/v7/Contacts/search?word=Leeds", &env.access).await.json();
    assert_eq!(word["data"][0]["Last_Name"], json!("Leeds"));
    let missing = env.get("/crm/v7/Contacts/search", &env.access).await;
    assert_eq!(missing.json()["code"], json!("EXPECTED_PARAM_MISSING"));
    let bad_field = env.get("/crm/v7/Contacts/search?criteria=(Nope:equals:x)", &env.access).await;
    assert_eq!(bad_field.json()["code"], json!("INVALID_QUERY"));
    let too_many = (0..11).map(|i| format!("(Last_Name:equals:x{i})")).collect::<Vec<_>>().join("or");
    let r = env.get(&format!("/crm/v7/Contacts/search?criteria=({too_many})"), &env.access).await;
    assert_eq!(r.json()["code"], json!("LIMIT_EXCEEDED"));
    let far = env.get("/crm/v7/Contacts/search?word=ee&page=11&per_page=200", &env.access).await;
    assert_eq!(far.json()["code"], json!("LIMIT_REACHED"));
}

#[tokio::test]
async fn search_index_lag_hides_new_records_but_coql_sees_them() {
    let env = zstart(zconfig(2)).await;
    env.settings(json!({"search_index_lag_ms": 5000})).await;
    let r = env
        .post(
            "/crm/v7/Tasks",
            &env.access,
            &json!({"data": [{"Subject": "Lagged", "CrmFleet_Action_Id": "m-9"}]}),
        )
        .await;
    let id = r.json()["data"][0]["details"]["id"].as_str().expect("id").to_owned();
    let search = env.get("/crm/v7/Tasks/search?criteria=(CrmFleet_Action_Id:equals:m-9)", &env.access).await;
    assert_eq!(search.status, 204, "not indexed yet");
    let q = json!({"select_query": "select id, CrmFleet_Action_Id from Tasks where CrmFleet_Action_Id = 'm-9' limit 1"});
    let coql = env.post("/crm/v7/coql", &env.access, &q).await;
    assert_eq!(coql.status, 200, "{}", coql.text);
    let b = coql.json();
    assert_eq!(b["data"][0]["id"], json!(id));
    assert_eq!(b["data"][0]["CrmFleet_Action_Id"], json!("m-9"));
    assert_eq!(b["info"], json!({"count": 1, "more_records": false}));
    env.advance("5s").await;
    assert_eq!(
        env.get("/crm/v7/Tasks/search?criteria=(CrmFleet_Action_Id:equals:m-9)", &env.access).await.status,
        200
    );
}

#[tokio::test]
async fn coql_filters_orders_limits_and_reports_errors() {
    let env = zstart(zconfig(30)).await;
    env.unthrottle().await;
    let all = env.list_all("Deals", "fields=Deal_Name,Amount", None).await;
    let big: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|d| d["Amount"].as_f64().is_some_and(|a| a >= 20_000.0))
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    let q = json!({"select_query": "select Deal_Name, Amount from Deals where Amount >= 20000 order by Amount desc limit 0, 200"});
    let r = env.post("/crm/v7/coql", &env.access, &q).await.json();
    let rows = r["data"].as_array().expect("rows").clone();
    assert_eq!(id_set(&rows), big);
    let amounts: Vec<f64> = rows.iter().map(|d| d["Amount"].as_f64().expect("amount")).collect();
    assert!(amounts.windows(2).all(|w| w[0] >= w[1]), "ordered by Amount desc");
    let page = env
        .post(
            "/crm/v7/coql",
            &env.access,
            &json!({"select_query": "select Deal_Name from Deals limit 5 offset 0"}),
        )
        .await
        .json();
    assert_eq!(page["info"], json!({"count": 5, "more_records": true}));
    let since = env
        .post(
            "/crm/v7/coql",
            &env.access,
            &json!({"select_query": "select Last_Name from Contacts where Modified_Time >= '2030-01-01T00:00:00+00:00'"}),
        )
        .await;
    assert_eq!(since.status, 204);
    let syntax = env.post("/crm/v7/coql", &env.access, &json!({"select_query": "select from Deals"})).await;
    assert_eq!(
        syntax.json(),
        json!({"code": "SYNTAX_ERROR", "details": {"near": "from"}, "message": "error occured while parsing the query", "status": "error"})
    );
    let col = env.post("/crm/v7/coql", &env.access, &json!({"select_query": "select Nope from Deals"})).await;
    assert_eq!(col.json()["details"], json!({"column_name": "Nope"}));
    // COQL needs its own scope.
    let org = env
        .ctl_ok(
            "POST",
            "/_sandbox/zoho/accounts",
            Some(json!({"dc": "us", "records": 1, "scopes": ["ZohoCRM.modules.ALL"]})),
        )
        .await;
    let token = org["credentials"]["oauth"]["access_token"].as_str().expect("access");
    let denied =
        env.post("/crm/v7/coql", token, &json!({"select_query": "select Deal_Name from Deals"})).await;
    assert_eq!((denied.status, denied.json()["code"].clone()), (401, json!("OAUTH_SCOPE_MISMATCH")));
}
