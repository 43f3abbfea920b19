//! Salesforce OAuth: token shape (no `expires_in`, `instance_url` on another host), the session as an
//! inactivity timer, refresh-token policies and rotation, the web-server flow, revocation, and the
//! instance migration toggle.

use crate::salesforce_support::{Sf, config, start};
use crate::support::read;
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn token_responses_have_no_expires_in_and_name_the_instance() {
    let env = start(config(2)).await;
    let accounts = env.ctl_ok("GET", "/_sandbox/salesforce/accounts", None).await;
    let oauth = &accounts["accounts"][0]["credentials"]["oauth"];
    assert_eq!(
        keys(oauth),
        vec![
            "access_token",
            "id",
            "instance_url",
            "issued_at",
            "refresh_token",
            "scope",
            "signature",
            "token_type"
        ]
    );
    assert_eq!(oauth["token_type"], json!("Bearer"));
    assert_eq!(oauth["scope"], json!("api refresh_token"));
    assert_eq!(env.org, "00D5g000000Gma8EAC", "org ids are deterministic 18-character ids");
    assert_eq!(env.instance, env.urls.instance_base);
    assert_ne!(env.instance, env.urls.login_base, "the instance is a different host from login");
    let id = oauth["id"].as_str().expect("id");
    assert_eq!(
        id,
        format!(
            "{}/id/{}/{}",
            env.urls.login_base,
            env.org,
            accounts["accounts"][0]["user_id"].as_str().expect("user")
        )
    );
    assert_eq!(oauth["issued_at"], json!("1767603600000"), "issued_at is epoch milliseconds as a string");
    assert_eq!(oauth["signature"].as_str().map(str::len), Some(44), "base64 of an HMAC-SHA256");
    assert!(env.access.starts_with(&env.org[..15]), "access tokens start with the org id: {}", env.access);
    // The refresh grant: no expires_in, no refresh_token (rotation is off), a working session.
    let r = env.refresh_grant(&env.refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(
        keys(&b),
        vec!["access_token", "id", "instance_url", "issued_at", "scope", "signature", "token_type"]
    );
    assert_eq!(b["instance_url"], json!(env.instance));
    let access = b["access_token"].as_str().expect("access");
    assert_ne!(access, env.access);
    assert_eq!(env.get("/limits", access).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(1), json!(0)));
    // The identity URL answers for the token's user.
    let who = read(env.http.get(id).bearer_auth(access).send().await.expect("sent")).await;
    assert_eq!(who.status, 200, "{}", who.text);
    assert_eq!(who.json()["organization_id"], json!(env.org));
}

#[tokio::test]
async fn the_session_is_an_inactivity_timer_and_expires_with_the_documented_401() {
    let env = start(config(1)).await;
    env.settings(json!({"session_timeout_secs": 600})).await;
    let fresh = env.fresh_tokens().await;
    let token = fresh["access_token"].as_str().expect("access");
    assert_eq!(env.get("/limits", token).await.status, 200);
    // Each call restarts the timer.
    env.advance("599s").await;
    assert_eq!(env.get("/limits", token).await.status, 200);
    env.advance("599s").await;
    assert_eq!(env.get("/limits", token).await.status, 200);
    env.advance("600s").await;
    let r = env.get("/limits", token).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text, r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Token"));
    assert!(r.header("sforce-limit-info").is_none(), "no usage header without a session");
    // Forced expiry through the control plane, unknown and missing tokens.
    let fresh = env.fresh_tokens().await;
    let token = fresh["access_token"].as_str().expect("access");
    assert_eq!(env.get("/limits", token).await.status, 200);
    env.ctl_ok("POST", &env.org_path("/expire-tokens"), None).await;
    assert_eq!(env.get("/limits", token).await.status, 401);
    assert_eq!(env.get("/limits", "00Dbogus!AQtoken").await.status, 401);
    let m = read(env.http.get(env.data("/limits")).send().await.expect("sent")).await;
    assert_eq!(m.status, 401);
    assert_eq!(m.json()[0]["errorCode"], json!("INVALID_SESSION_ID"));
}

#[tokio::test]
async fn a_rotated_refresh_token_stops_working() {
    let env = start(config(1)).await;
    env.settings(json!({"rotate_refresh_tokens": true})).await;
    let r = env.refresh_grant(&env.refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new_rt = r.json()["refresh_token"].as_str().expect("a rotated refresh token").to_owned();
    assert_ne!(new_rt, env.refresh);
    let old = env.refresh_grant(&env.refresh).await;
    assert_eq!(old.status, 400);
    assert_eq!(
        old.json(),
        json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})
    );
    assert_eq!(env.refresh_grant(&new_rt).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(2), json!(1)));
}

#[tokio::test]
async fn connected_app_refresh_policies_apply_at_use() {
    let env = start(config(1)).await;
    // Expire after one hour from issue.
    env.settings(json!({"refresh_token_policy": "expire_after", "refresh_token_ttl_secs": 3600})).await;
    assert_eq!(env.refresh_grant(&env.refresh).await.status, 200);
    env.advance("3599s").await;
    assert_eq!(env.refresh_grant(&env.refresh).await.status, 200, "use does not extend an absolute TTL");
    env.advance("1s").await;
    assert_eq!(env.refresh_grant(&env.refresh).await.status, 400);
    // Expire when idle for ten minutes: each use restarts the idle timer.
    env.settings(json!({"refresh_token_policy": "expire_if_idle", "refresh_token_ttl_secs": 600})).await;
    let rt = env.fresh_tokens().await["refresh_token"].as_str().expect("rt").to_owned();
    env.advance("599s").await;
    assert_eq!(env.refresh_grant(&rt).await.status, 200);
    env.advance("599s").await;
    assert_eq!(env.refresh_grant(&rt).await.status, 200);
    env.advance("600s").await;
    assert_eq!(env.refresh_grant(&rt).await.status, 400);
    // Immediately expire; and back to valid-until-revoked, which revives nothing revoked.
    env.settings(json!({"refresh_token_policy": "immediately_expire"})).await;
    let rt = env.fresh_tokens().await["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(env.refresh_grant(&rt).await.status, 400);
    env.settings(json!({"refresh_token_policy": "valid_until_revoked"})).await;
    assert_eq!(env.refresh_grant(&rt).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["token_refresh_failures"], json!(3));
}

#[tokio::test]
async fn web_server_flow_with_pkce_and_token_errors() {
    let env = start(config(1)).await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let redirect = "http://localhost:9/callback";
    let authorize = |env: &Sf| {
        let req = env.http.get(&env.urls.authorize_url).query(&[
            ("response_type", "code"),
            ("client_id", env.client_id.as_str()),
            ("redirect_uri", redirect),
            ("scope", "api refresh_token"),
            ("state", "s-1"),
            ("code_challenge", challenge),
        ]);
        async move { read(req.send().await.expect("authorize sent")).await }
    };
    let code_of = |r: &crate::support::Resp| {
        let loc = url::Url::parse(&r.header("location").expect("location")).expect("url");
        let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
        assert_eq!(q.get("state").map(String::as_str), Some("s-1"));
        q.get("code").cloned().expect("code")
    };
    let r = authorize(&env).await;
    assert_eq!(r.status, 302);
    let code = code_of(&r);
    let exchange = |code: String, verifier: &'static str| {
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_id", env.client_id.clone()),
            ("client_secret", env.client_secret.clone()),
            ("redirect_uri", redirect.to_owned()),
            ("code", code),
            ("code_verifier", verifier.to_owned()),
        ];
        let req = env.http.post(&env.urls.token_url).form(&form);
        async move { read(req.send().await.expect("exchange sent")).await }
    };
    let bad = exchange(code, "wrong-verifier").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], json!("invalid_grant"));
    let code = code_of(&authorize(&env).await);
    let ok = exchange(code.clone(), verifier).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let b = ok.json();
    assert!(b.get("expires_in").is_none());
    assert!(b["refresh_token"].is_string(), "the refresh_token scope yields a refresh token");
    assert_eq!(b["instance_url"], json!(env.instance));
    assert_eq!(env.counters().await["code_exchanges"], json!(1));
    let again = exchange(code, verifier).await;
    assert_eq!(
        again.json(),
        json!({"error": "invalid_grant", "error_description": "invalid authorization code"})
    );
    // Client and grant errors.
    let wrong_secret = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("client_id", &env.client_id),
            ("client_secret", "nope"),
            ("refresh_token", &env.refresh),
        ])
        .await;
    assert_eq!(
        wrong_secret.json(),
        json!({"error": "invalid_client", "error_description": "invalid client credentials"})
    );
    let wrong_client = env
        .token(&[("grant_type", "refresh_token"), ("client_id", "x"), ("refresh_token", &env.refresh)])
        .await;
    assert_eq!(wrong_client.json()["error"], json!("invalid_client_id"));
    let wrong_grant = env.token(&[("grant_type", "password")]).await;
    assert_eq!(
        wrong_grant.json(),
        json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"})
    );
    // Denial redirects with access_denied.
    env.settings(json!({"authorize_deny": true})).await;
    let denied = authorize(&env).await;
    assert_eq!(denied.status, 302);
    assert!(denied.header("location").expect("location").contains("error=access_denied"));
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_sessions() {
    let env = start(config(1)).await;
    let revoke = |token: String| {
        let req = env.http.post(&env.urls.revoke_url).form(&[("token", token)]);
        async move { read(req.send().await.expect("revoke sent")).await }
    };
    // An access token alone.
    let fresh = env.fresh_tokens().await;
    let single = fresh["access_token"].as_str().expect("access").to_owned();
    assert_eq!(revoke(single.clone()).await.status, 200);
    assert_eq!(env.get("/limits", &single).await.status, 401);
    assert_eq!(
        env.refresh_grant(fresh["refresh_token"].as_str().expect("rt")).await.status,
        200,
        "its refresh token lives on"
    );
    // A refresh token: its sessions end with it.
    assert_eq!(env.get("/limits", &env.access).await.status, 200);
    assert_eq!(revoke(env.refresh.clone()).await.status, 200);
    assert_eq!(env.get("/limits", &env.access).await.status, 401);
    assert_eq!(env.refresh_grant(&env.refresh).await.json()["error"], json!("invalid_grant"));
    let unknown = revoke("nope".into()).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json(), json!({"error": "invalid_token", "error_description": "invalid token"}));
    // The control plane's revoke: the user disconnected the app.
    let fresh = env.fresh_tokens().await;
    env.ctl_ok("POST", &env.org_path("/revoke"), None).await;
    assert_eq!(env.get("/limits", fresh["access_token"].as_str().expect("access")).await.status, 401);
    assert_eq!(env.refresh_grant(fresh["refresh_token"].as_str().expect("rt")).await.status, 400);
}

#[tokio::test]
async fn an_instance_migration_moves_the_org_on_the_next_refresh() {
    let env = start(config(1)).await;
    env.settings(json!({"migrate_instance_on_next_refresh": true})).await;
    let r = env.refresh_grant(&env.refresh).await.json();
    let moved = r["instance_url"].as_str().expect("instance_url");
    assert_eq!(moved, env.urls.instance_base_alt);
    let token = r["access_token"].as_str().expect("access");
    let on = |base: &str, token: &str| {
        let req = env.http.get(format!("{base}/services/data/v62.0/limits")).bearer_auth(token);
        async move { read(req.send().await.expect("sent")).await.status }
    };
    assert_eq!(on(moved, token).await, 200);
    assert_eq!(on(&env.instance, token).await, 401, "the old instance no longer serves the org");
    assert_eq!(on(&env.instance, &env.access).await, 401);
    // The toggle is one-shot: the next refresh stays on the new instance.
    assert_eq!(env.refresh_grant(&env.refresh).await.json()["instance_url"], json!(moved));
    let settings = env.ctl_ok("GET", "/_sandbox/salesforce/settings", None).await;
    assert_eq!(settings["migrate_instance_on_next_refresh"], json!(false));
}

#[tokio::test]
async fn a_session_without_the_api_scope_cannot_use_rest() {
    let env = start(config(1)).await;
    let org = env
        .ctl_ok(
            "POST",
            "/_sandbox/salesforce/accounts",
            Some(json!({"records": 1, "scopes": ["id", "refresh_token"]})),
        )
        .await;
    let token = org["credentials"]["oauth"]["access_token"].as_str().expect("access");
    let r = env.get("/limits", token).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()[0]["message"], json!("This session is not valid for use with the REST API"));
}
