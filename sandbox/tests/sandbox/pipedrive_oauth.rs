//! Pipedrive OAuth and credentials: authorize, token exchange with Basic client auth, refresh
//! (idle expiry, rotation), revoke, the gateway 401, scopes, API tokens.

use crate::pipedrive_support::{As, PdEnv, pd_config, start_pd};
use crate::support::{Resp, read};
use serde_json::{Value, json};

async fn token_call(env: &PdEnv, form: &[(&str, &str)], basic: bool) -> Resp {
    let mut req = env.http.post(&env.token_url).form(form);
    if basic {
        req = req.basic_auth(&env.client_id, Some(&env.client_secret));
    }
    read(req.send().await.expect("token request sent")).await
}

async fn refresh(env: &PdEnv, rt: &str) -> Resp {
    token_call(env, &[("grant_type", "refresh_token"), ("refresh_token", rt)], true).await
}

#[tokio::test]
async fn authorization_code_flow_with_basic_client_auth() {
    let env = start_pd(pd_config(2)).await;
    let redirect = "https://app.example/callback";
    let auth = read(
        env.http
            .get(&env.authorize_url)
            .query(&[("client_id", env.client_id.as_str()), ("redirect_uri", redirect), ("state", "s1")])
            .send()
            .await
            .expect("authorize"),
    )
    .await;
    assert_eq!(auth.status, 302);
    let location = url::Url::parse(&auth.header("location").expect("location")).expect("url");
    assert!(location.as_str().starts_with(redirect));
    let q: std::collections::BTreeMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("s1"));
    let code = q.get("code").expect("code").clone();
    let form = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", redirect)];
    let no_basic = token_call(&env, &form, false).await;
    assert_eq!(no_basic.status, 401);
    assert_eq!(no_basic.json()["error"], json!("invalid_client"));
    let r = token_call(&env, &form, true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let mut keys: Vec<&str> = b.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["access_token", "api_domain", "expires_in", "refresh_token", "scope", "token_type"]
    );
    assert_eq!(b["token_type"], json!("Bearer"));
    assert_eq!(b["expires_in"], json!(3599));
    assert_eq!(b["api_domain"], json!(env.api));
    let access = b["access_token"].as_str().expect("access");
    assert!(access.starts_with(&format!("{}:", env.company)), "{access}");
    let me = env.send("GET", "/v1/users/me", As::Bearer(access), None).await;
    assert_eq!(me.status, 200);
    let again = token_call(&env, &form, true).await;
    assert_eq!(again.status, 400, "codes are single use");
    assert_eq!(again.json()["error"], json!("invalid_grant"));
    assert_eq!(env.counters().await["code_exchanges"], json!(1));
    // Denial.
    env.settings(json!({"authorize_deny": true})).await;
    let denied = read(
        env.http
            .get(&env.authorize_url)
            .query(&[("client_id", env.client_id.as_str()), ("redirect_uri", redirect)])
            .send()
            .await
            .expect("authorize"),
    )
    .await;
    assert!(denied.header("location").expect("location").contains("error=user_denied"));
}

#[tokio::test]
async fn expired_and_unknown_tokens_get_the_gateway_401() {
    let env = start_pd(pd_config(2)).await;
    assert_eq!(env.send("GET", "/api/v2/persons", As::Bearer(&env.access), None).await.status, 200);
    env.advance("3599s").await;
    let r = env.send("GET", "/api/v2/persons", As::Bearer(&env.access), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"success": false, "error": "unauthorized access", "errorCode": 401, "error_info": "Please check developers.pipedrive.com"})
    );
    assert_eq!(r.header("x-401-by-gw").as_deref(), Some("true"));
    assert_eq!(env.get("/api/v2/persons").await.status, 200, "API tokens do not expire");
    for who in [As::Bearer("1:2:nope"), As::ApiToken("0123"), As::Nobody] {
        let u = env.send("GET", "/api/v2/persons", who, None).await;
        assert_eq!(u.status, 401, "{who:?}");
        assert_eq!(u.header("x-401-by-gw").as_deref(), Some("true"));
    }
    // The control plane's expire-tokens does the same without moving the clock.
    let fresh = env.ctl("POST", &env.account_path("/tokens"), None).await;
    let t = fresh["access_token"].as_str().expect("token");
    assert_eq!(env.send("GET", "/api/v2/deals", As::Bearer(t), None).await.status, 200);
    env.ctl("POST", &env.account_path("/expire-tokens"), None).await;
    assert_eq!(env.send("GET", "/api/v2/deals", As::Bearer(t), None).await.status, 401);
}

#[tokio::test]
async fn refresh_keeps_the_token_by_default_and_counts_exactly_once() {
    let env = start_pd(pd_config(1)).await;
    env.advance("3600s").await;
    let r = refresh(&env, &env.refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["refresh_token"], json!(env.refresh), "no rotation by default");
    assert_eq!(b["api_domain"], json!(env.api), "api_domain comes with every refresh");
    let access = b["access_token"].as_str().expect("access");
    assert_eq!(env.send("GET", "/api/v2/persons", As::Bearer(access), None).await.status, 200);
    let bad = refresh(&env, "13000001:1:unknown").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"success": false, "error": "invalid_grant", "message": "Invalid refresh token"})
    );
    assert_eq!(refresh(&env, &env.refresh).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(2), json!(0)));
}

#[tokio::test]
async fn a_rotated_refresh_token_stops_working() {
    let env = start_pd(pd_config(1)).await;
    env.settings(json!({"rotate_refresh_tokens": true})).await;
    let r = refresh(&env, &env.refresh).await;
    assert_eq!(r.status, 200);
    let new_rt = r.json()["refresh_token"].as_str().expect("rt").to_owned();
    assert_ne!(new_rt, env.refresh);
    let old = refresh(&env, &env.refresh).await;
    assert_eq!(old.status, 400);
    assert_eq!(old.json()["error"], json!("invalid_grant"));
    assert_eq!(refresh(&env, &new_rt).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(2), json!(1)));
}

#[tokio::test]
async fn refresh_tokens_expire_after_sixty_days_unused() {
    let env = start_pd(pd_config(1)).await;
    env.advance("59d").await;
    assert_eq!(refresh(&env, &env.refresh).await.status, 200, "used within 60 days");
    env.advance("59d").await;
    assert_eq!(refresh(&env, &env.refresh).await.status, 200, "the idle timer restarted");
    env.advance("60d").await;
    let r = refresh(&env, &env.refresh).await;
    assert_eq!(r.status, 400, "60 days unused");
    assert_eq!(env.counters().await["token_refresh_failures"], json!(1));
}

#[tokio::test]
async fn revoke_endpoint_and_control_plane_revocation() {
    let env = start_pd(pd_config(1)).await;
    let r = read(
        env.http
            .post(&env.revoke_url)
            .basic_auth(&env.client_id, Some(&env.client_secret))
            .form(&[("token", env.refresh.as_str()), ("token_type_hint", "refresh_token")])
            .send()
            .await
            .expect("revoke"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(refresh(&env, &env.refresh).await.status, 400);
    assert_eq!(
        env.send("GET", "/api/v2/persons", As::Bearer(&env.access), None).await.status,
        401,
        "its access tokens go too"
    );
    env.settings(json!({"revoke_endpoint": false})).await;
    let off =
        read(env.http.post(&env.revoke_url).form(&[("token", "x")]).send().await.expect("revoke")).await;
    assert_eq!(off.status, 404);
    // The user disconnects: OAuth tokens die and the API token is regenerated.
    let out = env.ctl("POST", &env.account_path("/revoke"), None).await;
    let new_token = out["api_token"].as_str().expect("new api token").to_owned();
    assert_ne!(new_token, env.api_token);
    assert_eq!(env.get("/api/v2/persons").await.status, 401);
    assert_eq!(env.send("GET", "/api/v2/persons", As::ApiToken(&new_token), None).await.status, 200);
}

#[tokio::test]
async fn oauth_scopes_are_enforced_with_scope_and_url_mismatch() {
    let env = start_pd(pd_config(2)).await;
    let a = env
        .ctl(
            "POST",
            "/_sandbox/pipedrive/accounts",
            Some(json!({"records": 2, "scopes": ["base", "contacts:read"]})),
        )
        .await;
    let token = a["credentials"]["oauth"]["access_token"].as_str().expect("token");
    assert_eq!(a["credentials"]["oauth"]["scope"], json!("base,contacts:read"));
    assert_eq!(env.send("GET", "/api/v2/persons", As::Bearer(token), None).await.status, 200);
    let deals = env.send("GET", "/api/v2/deals", As::Bearer(token), None).await;
    assert_eq!(deals.status, 403);
    assert_eq!(
        deals.json(),
        json!({"success": false, "error": "Scope and URL mismatch", "errorCode": 403, "error_info": "Please check developers.pipedrive.com"})
    );
    let write = env.send("POST", "/api/v2/persons", As::Bearer(token), Some(&json!({"name": "X"}))).await;
    assert_eq!(write.status, 403);
    assert_eq!(env.send("GET", "/v1/users/me", As::Bearer(token), None).await.status, 200, "base suffices");
    let other: Value = env.send("GET", "/v1/users/me", As::Bearer(token), None).await.json();
    assert_ne!(other["data"]["company_id"].to_string(), env.company, "tokens resolve to their own company");
}

#[tokio::test]
async fn legacy_query_api_token_only_on_v1_and_only_when_enabled() {
    let env = start_pd(pd_config(1)).await;
    let path = format!("/v1/users/me?api_token={}", env.api_token);
    assert_eq!(env.send("GET", &path, As::Nobody, None).await.status, 401);
    env.settings(json!({"legacy_api_token_query": true})).await;
    assert_eq!(env.send("GET", &path, As::Nobody, None).await.status, 200);
    let v2 = format!("/api/v2/persons?api_token={}", env.api_token);
    assert_eq!(env.send("GET", &v2, As::Nobody, None).await.status, 401, "v2 takes the header only");
}
