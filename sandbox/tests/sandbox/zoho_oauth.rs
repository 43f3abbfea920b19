//! Zoho Accounts: multi-DC authorize, token exchange (query string or form), non-rotating refresh
//! tokens, the 10-per-10-minutes cap, the 20 refresh tokens and 30 live access tokens caps, revoke,
//! expiry, and the `Zoho-oauthtoken` scheme.

use crate::zoho_support::{zconfig, zstart};
use serde_json::json;

fn query_of(location: &str) -> Vec<(String, String)> {
    let q = location.split_once('?').expect("redirect has a query").1;
    url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn refresh_accepts_query_or_form_and_never_rotates() {
    let env = zstart(zconfig(1)).await;
    let r = env.refresh_query(&env.accounts, &env.refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["token_type"], json!("Bearer"));
    assert_eq!(b["expires_in"], json!(3600));
    assert_eq!(b["api_domain"], json!(env.api));
    assert!(b.get("refresh_token").is_none(), "a refresh answers no refresh token: {b}");
    let first = b["access_token"].as_str().expect("access").to_owned();
    assert!(first.starts_with("1000."));
    let form = env
        .token_form(
            &env.accounts,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &env.client_id),
                ("client_secret", &env.client_secret),
                ("refresh_token", &env.refresh),
            ],
        )
        .await;
    assert_eq!(form.status, 200);
    let second = form.json()["access_token"].as_str().expect("access").to_owned();
    assert_ne!(first, second);
    // Both access tokens work; the refresh token still works (no rotation).
    for t in [&first, &second, &env.access] {
        assert_eq!(env.get("/crm/v7/Contacts?fields=Last_Name", t).await.status, 200);
    }
    assert_eq!(env.refresh_query(&env.accounts, &env.refresh).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["token_refreshes"], json!(3));
    // Errors are 200 with an error key by default.
    let bad = env.refresh_query(&env.accounts, "1000.nope.nope").await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.json(), json!({"error": "invalid_code"}));
    let wrong_secret = env
        .token_form(
            &env.accounts,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &env.client_id),
                ("client_secret", "x"),
                ("refresh_token", &env.refresh),
            ],
        )
        .await;
    assert_eq!(wrong_secret.json(), json!({"error": "invalid_client_secret"}));
}

#[tokio::test]
async fn ten_access_tokens_per_refresh_token_per_ten_minutes() {
    let env = zstart(zconfig(1)).await;
    for i in 0..10 {
        let r = env.refresh_query(&env.accounts, &env.refresh).await;
        assert_eq!(r.status, 200, "refresh {i} is within the cap");
        env.advance("30s").await;
    }
    let r = env.refresh_query(&env.accounts, &env.refresh).await;
    assert_eq!(r.status, 400);
    let b = r.json();
    assert_eq!(b["error"], json!("Access Denied"));
    assert!(b["error_description"].as_str().expect("description").contains("too many requests continuously"));
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(10), json!(1)));
    // The first refresh happened 300 s ago: the window frees it at 600 s.
    env.advance("299s").await;
    assert_eq!(env.refresh_query(&env.accounts, &env.refresh).await.status, 400);
    env.advance("1s").await;
    assert_eq!(env.refresh_query(&env.accounts, &env.refresh).await.status, 200);
}

#[tokio::test]
async fn at_most_thirty_live_access_tokens_per_refresh_token() {
    let env = zstart(zconfig(1)).await;
    env.settings(json!({"tokens_per_refresh_window": 1000})).await;
    let mut minted = vec![env.access.clone()];
    for _ in 0..29 {
        let r = env.refresh_query(&env.accounts, &env.refresh).await;
        minted.push(r.json()["access_token"].as_str().expect("access").to_owned());
    }
    for t in &minted {
        assert_eq!(env.get("/crm/v7/Deals?fields=Deal_Name", t).await.status, 200, "30 live tokens all work");
    }
    let r = env.refresh_query(&env.accounts, &env.refresh).await;
    let newest = r.json()["access_token"].as_str().expect("access").to_owned();
    let oldest = env.get("/crm/v7/Deals?fields=Deal_Name", &minted[0]).await;
    assert_eq!(oldest.status, 401, "the 31st token invalidates the oldest");
    assert_eq!(oldest.json()["code"], json!("INVALID_TOKEN"));
    assert_eq!(env.get("/crm/v7/Deals?fields=Deal_Name", &minted[1]).await.status, 200);
    assert_eq!(env.get("/crm/v7/Deals?fields=Deal_Name", &newest).await.status, 200);
}

#[tokio::test]
async fn at_most_twenty_refresh_tokens_per_user() {
    let env = zstart(zconfig(1)).await;
    let mut refresh = vec![env.refresh.clone()];
    for _ in 0..19 {
        refresh.push(env.fresh_tokens().await["refresh_token"].as_str().expect("refresh").to_owned());
    }
    assert_eq!(env.refresh_query(&env.accounts, &refresh[0]).await.status, 200, "20 refresh tokens are fine");
    env.fresh_tokens().await;
    assert_eq!(
        env.refresh_query(&env.accounts, &refresh[0]).await.json(),
        json!({"error": "invalid_code"}),
        "the 21st deletes the oldest"
    );
    assert!(env.refresh_query(&env.accounts, &refresh[1]).await.json().get("access_token").is_some());
}

#[tokio::test]
async fn authorize_carries_location_and_accounts_server_and_honours_offline_consent() {
    let env = zstart(zconfig(1)).await;
    let eu = env.ctl_ok("POST", "/_sandbox/zoho/accounts", Some(json!({"dc": "eu", "records": 2}))).await;
    let eu_org = eu["id"].as_str().expect("org").to_owned();
    assert_eq!(eu["api_domain"], json!(env.urls.eu.api_domain));
    let authorize = |org: &str, extra: &str| {
        format!(
            "{}?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=ZohoCRM.modules.ALL,ZohoCRM.coql.READ&state=s1&org_id={org}{extra}",
            env.urls.authorize_url, env.client_id
        )
    };
    let code_for = |resp: &crate::support::Resp| {
        assert_eq!(resp.status, 302, "{}", resp.text);
        query_of(&resp.header("location").expect("location"))
    };
    // An EU user authorizes through the US accounts server: the redirect names the EU server.
    let r = crate::support::read(
        env.http.get(authorize(&eu_org, "&access_type=offline")).send().await.expect("auth"),
    )
    .await;
    let q = code_for(&r);
    assert_eq!(param(&q, "state"), Some("s1"));
    assert_eq!(param(&q, "location"), Some("eu"));
    assert_eq!(param(&q, "accounts-server"), Some(env.urls.eu.accounts_server.as_str()));
    let code = param(&q, "code").expect("code").to_owned();
    let exchange = |server: String, code: String| {
        let env = &env;
        async move {
            env.token_form(
                &server,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", &env.client_id),
                    ("client_secret", &env.client_secret),
                    ("redirect_uri", "https://app.example/cb"),
                    ("code", &code),
                ],
            )
            .await
        }
    };
    let wrong_dc = exchange(env.urls.us.accounts_server.clone(), code.clone()).await;
    assert_eq!(wrong_dc.json(), json!({"error": "invalid_code"}), "codes only work at their own DC");
    let ok = exchange(env.urls.eu.accounts_server.clone(), code.clone()).await.json();
    assert_eq!(ok["api_domain"], json!(env.urls.eu.api_domain));
    let eu_access = ok["access_token"].as_str().expect("access").to_owned();
    assert!(ok["refresh_token"].is_string(), "first offline grant gets a refresh token");
    assert_eq!(
        exchange(env.urls.eu.accounts_server.clone(), code).await.json(),
        json!({"error": "invalid_code"}),
        "codes are single use"
    );
    // The EU org is invisible from the US API domain.
    let us = env.get_at(&env.urls.us.api_domain, "/crm/v7/Contacts?fields=Last_Name", &eu_access, None).await;
    assert_eq!(us.status, 401);
    assert_eq!(us.json()["code"], json!("INVALID_TOKEN"));
    let eu_list =
        env.get_at(&env.urls.eu.api_domain, "/crm/v7/Contacts?fields=Last_Name", &eu_access, None).await;
    assert_eq!(eu_list.status, 200);
    // A second offline grant without prompt=consent gets no refresh token; with it, one.
    let again = code_for(
        &crate::support::read(
            env.http.get(authorize(&eu_org, "&access_type=offline")).send().await.expect("auth"),
        )
        .await,
    );
    let body = exchange(env.urls.eu.accounts_server.clone(), param(&again, "code").expect("code").to_owned())
        .await
        .json();
    assert!(body.get("refresh_token").is_none(), "{body}");
    let consent = code_for(
        &crate::support::read(
            env.http
                .get(authorize(&eu_org, "&access_type=offline&prompt=consent"))
                .send()
                .await
                .expect("auth"),
        )
        .await,
    );
    let body =
        exchange(env.urls.eu.accounts_server.clone(), param(&consent, "code").expect("code").to_owned())
            .await
            .json();
    assert!(body["refresh_token"].is_string(), "{body}");
    // Online access never gets a refresh token; codes expire after two minutes.
    let online = code_for(
        &crate::support::read(env.http.get(authorize(&env.org, "")).send().await.expect("auth")).await,
    );
    assert_eq!(param(&online, "location"), Some("us"));
    env.advance("120s").await;
    let late =
        exchange(env.urls.us.accounts_server.clone(), param(&online, "code").expect("code").to_owned()).await;
    assert_eq!(late.json(), json!({"error": "invalid_code"}));
}

#[tokio::test]
async fn bearer_scheme_expiry_and_revocation_give_invalid_token() {
    let env = zstart(zconfig(1)).await;
    let path = "/crm/v7/Accounts?fields=Account_Name";
    let bearer = crate::support::read(
        env.http.get(format!("{}{path}", env.api)).bearer_auth(&env.access).send().await.expect("sent"),
    )
    .await;
    assert_eq!(bearer.status, 401);
    assert_eq!(
        bearer.json(),
        json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"})
    );
    let none =
        crate::support::read(env.http.get(format!("{}{path}", env.api)).send().await.expect("sent")).await;
    assert_eq!(none.json()["code"], json!("AUTHENTICATION_FAILURE"));
    // Expiry on the logical clock.
    env.advance("3599s").await;
    assert_eq!(env.get(path, &env.access).await.status, 200);
    env.advance("1s").await;
    let expired = env.get(path, &env.access).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.json()["code"], json!("INVALID_TOKEN"));
    // Refresh still works; the control plane can expire tokens at once.
    let fresh = env.refresh_query(&env.accounts, &env.refresh).await.json()["access_token"]
        .as_str()
        .expect("a")
        .to_owned();
    assert_eq!(env.get(path, &fresh).await.status, 200);
    env.ctl_ok("POST", &format!("/_sandbox/zoho/accounts/{}/expire-tokens", env.org), None).await;
    assert_eq!(env.get(path, &fresh).await.status, 401);
    // Revoking the refresh token kills it and its access tokens.
    let fresh = env.refresh_query(&env.accounts, &env.refresh).await.json()["access_token"]
        .as_str()
        .expect("a")
        .to_owned();
    let revoke = crate::support::read(
        env.http.post(format!("{}?token={}", env.urls.revoke_url, env.refresh)).send().await.expect("revoke"),
    )
    .await;
    assert_eq!(revoke.status, 200);
    assert_eq!(revoke.json(), json!({"status": "success"}));
    assert_eq!(env.get(path, &fresh).await.status, 401);
    assert_eq!(env.refresh_query(&env.accounts, &env.refresh).await.json(), json!({"error": "invalid_code"}));
    let again = crate::support::read(
        env.http.post(format!("{}?token={}", env.urls.revoke_url, env.refresh)).send().await.expect("revoke"),
    )
    .await;
    assert_eq!(again.status, 400);
    // "User disconnected the app": every credential stops working.
    let pair = env.fresh_tokens().await;
    env.ctl_ok("POST", &format!("/_sandbox/zoho/accounts/{}/revoke", env.org), None).await;
    assert_eq!(env.get(path, pair["access_token"].as_str().expect("a")).await.status, 401);
}

#[tokio::test]
async fn five_refresh_tokens_per_minute_through_the_code_flow() {
    let env = zstart(zconfig(1)).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let url = format!(
            "{}?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=ZohoCRM.modules.ALL&access_type=offline&prompt=consent",
            env.urls.authorize_url, env.client_id
        );
        let r = crate::support::read(env.http.get(url).send().await.expect("auth")).await;
        let q = query_of(&r.header("location").expect("location"));
        let t = env
            .token_form(
                &env.accounts,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", &env.client_id),
                    ("client_secret", &env.client_secret),
                    ("redirect_uri", "https://app.example/cb"),
                    ("code", param(&q, "code").expect("code")),
                ],
            )
            .await;
        statuses.push((t.status, t.json().get("refresh_token").is_some()));
    }
    assert_eq!(statuses[..5], [(200, true); 5]);
    assert_eq!(statuses[5], (400, false));
    let c = env.counters().await;
    assert_eq!(c["code_exchanges"], json!(6));
}
