//! OAuth: authorize, token exchange, refresh (with and without rotation), expiry, revocation, scopes.

use crate::support::{Env, config, read, start};
use serde_json::{Value, json};

async fn refresh(env: &Env, url: &str, refresh_token: &str) -> crate::support::Resp {
    read(
        env.http
            .post(url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .expect("token request sent"),
    )
    .await
}

fn v1(env: &Env) -> String {
    format!("{}/oauth/v1/token", env.api)
}

fn v3(env: &Env) -> String {
    format!("{}/oauth/v3/token", env.api)
}

#[tokio::test]
async fn expired_token_gets_the_documented_401() {
    let env = start(config(2)).await;
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.access).await.status, 200);
    env.advance("1807s").await;
    let r = env.get("/crm/v3/objects/contacts", &env.access).await;
    assert_eq!(r.status, 401);
    let b = r.json();
    assert_eq!(b["status"], json!("error"));
    assert_eq!(b["category"], json!("EXPIRED_AUTHENTICATION"));
    assert_eq!(b["message"], json!("The OAuth token used to make this call expired 7 second(s) ago."));
    // Static tokens never expire.
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.pat).await.status, 200);
    // Unknown and missing tokens.
    let u = env.get("/crm/v3/objects/contacts", "CNot-a-token").await;
    assert_eq!(u.status, 401);
    assert_eq!(u.json()["category"], json!("INVALID_AUTHENTICATION"));
    let m =
        read(env.http.get(format!("{}/crm/v3/objects/contacts", env.api)).send().await.expect("sent")).await;
    assert_eq!(m.status, 401);
}

#[tokio::test]
async fn refresh_returns_the_documented_shape_and_counts_exactly_once() {
    let env = start(config(1)).await;
    env.advance("1801s").await;
    let r = refresh(&env, &v1(&env), &env.refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let mut keys: Vec<&str> = b.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["access_token", "expires_in", "hub_id", "refresh_token", "scopes", "token_type", "user_id"]
    );
    assert_eq!(b["token_type"], json!("bearer"));
    assert_eq!(b["expires_in"], json!(1800));
    assert_eq!(b["refresh_token"], json!(env.refresh), "no rotation by default");
    assert_eq!(b["hub_id"].to_string(), env.hub);
    let access = b["access_token"].as_str().expect("access");
    assert_ne!(access, env.access);
    assert_eq!(env.get("/crm/v3/objects/contacts", access).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["token_refreshes"], json!(1));
    assert_eq!(c["token_refresh_failures"], json!(0));
    // The same refresh token keeps working.
    assert_eq!(refresh(&env, &v3(&env), &env.refresh).await.status, 200);
    assert_eq!(env.counters().await["token_refreshes"], json!(2));
    // The in-process accessor agrees.
    assert_eq!(env.sb.counters(crm_sandbox::ProviderKind::HubSpot, &env.hub).token_refreshes, 2);
    // Token lifetimes are configurable.
    env.ctl_ok("PATCH", "/_sandbox/hubspot/settings", Some(json!({"access_token_ttl_secs": 60}))).await;
    let short = refresh(&env, &v1(&env), &env.refresh).await.json();
    assert_eq!(short["expires_in"], json!(60));
    let token = short["access_token"].as_str().expect("access");
    env.advance("61s").await;
    assert_eq!(
        env.get("/crm/v3/objects/contacts", token).await.json()["message"],
        json!("The OAuth token used to make this call expired 1 second(s) ago.")
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_stops_working() {
    let env = start(config(1)).await;
    env.ctl_ok("PATCH", "/_sandbox/hubspot/settings", Some(json!({"rotate_refresh_tokens": true}))).await;
    let r = refresh(&env, &v1(&env), &env.refresh).await;
    assert_eq!(r.status, 200);
    let new_rt = r.json()["refresh_token"].as_str().expect("rt").to_owned();
    assert_ne!(new_rt, env.refresh);
    let old = refresh(&env, &v1(&env), &env.refresh).await;
    assert_eq!(old.status, 400);
    assert_eq!(old.json()["status"], json!("BAD_REFRESH_TOKEN"));
    assert_eq!(refresh(&env, &v1(&env), &new_rt).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(2), json!(1)));
}

#[tokio::test]
async fn concurrent_rotating_refreshes_let_exactly_one_win() {
    let env = start(config(1)).await;
    env.ctl_ok("PATCH", "/_sandbox/hubspot/settings", Some(json!({"rotate_refresh_tokens": true}))).await;
    let url = v3(&env);
    let futs: Vec<_> = (0..5).map(|_| refresh(&env, &url, &env.refresh)).collect();
    let results = futures::future::join_all(futs).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one concurrent refresh with the same rotating token succeeds");
    assert_eq!(env.counters().await["token_refreshes"], json!(1));
}

#[tokio::test]
async fn authorization_code_flow_with_pkce() {
    let env = start(config(1)).await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let redirect = "http://localhost:9/callback";
    let r = read(
        env.http
            .get(&env.authorize_url)
            .query(&[
                ("client_id", env.client_id.as_str()),
                ("scope", "crm.objects.contacts.read crm.objects.contacts.write"),
                ("optional_scope", "crm.objects.deals.read"),
                ("redirect_uri", redirect),
                ("state", "s-123"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
            .send()
            .await
            .expect("authorize sent"),
    )
    .await;
    assert_eq!(r.status, 302);
    let location = url::Url::parse(&r.header("location").expect("location")).expect("url");
    assert!(location.as_str().starts_with(redirect));
    let q: std::collections::HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("s-123"));
    let code = q.get("code").expect("code").clone();
    let exchange = |verifier: &'static str, code: String| {
        let env = &env;
        async move {
            read(
                env.http
                    .post(v3(env))
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("client_id", env.client_id.as_str()),
                        ("client_secret", env.client_secret.as_str()),
                        ("redirect_uri", redirect),
                        ("code", code.as_str()),
                        ("code_verifier", verifier),
                    ])
                    .send()
                    .await
                    .expect("exchange sent"),
            )
            .await
        }
    };
    let bad = exchange("wrong-verifier", code.clone()).await;
    assert_eq!(bad.status, 400);
    let good = exchange(verifier, code.clone()).await;
    assert_eq!(good.status, 200, "{}", good.text);
    let t = good.json();
    assert_eq!(
        t["scopes"],
        json!(["crm.objects.contacts.read", "crm.objects.contacts.write", "crm.objects.deals.read"])
    );
    let access = t["access_token"].as_str().expect("access").to_owned();
    assert_eq!(env.get("/crm/v3/objects/contacts", &access).await.status, 200);
    assert_eq!(env.get("/crm/v3/objects/deals", &access).await.status, 200);
    // Missing scope → 403.
    let denied = env.get("/crm/v3/objects/companies", &access).await;
    assert_eq!(denied.status, 403);
    assert!(denied.json()["message"].as_str().expect("msg").contains("crm.objects.companies.read"));
    // A code works once.
    let again = exchange(verifier, code).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["status"], json!("BAD_AUTH_CODE"));
    // Introspection.
    let info = env.get(&format!("/oauth/v1/access-tokens/{access}"), "").await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["token_type"], json!("access"));
    assert_eq!(info.json()["expires_in"], json!(1800));
}

#[tokio::test]
async fn v1_accepts_query_parameters_v3_does_not() {
    let env = start(config(1)).await;
    let params = vec![
        ("grant_type", "refresh_token"),
        ("client_id", env.client_id.as_str()),
        ("client_secret", env.client_secret.as_str()),
        ("refresh_token", env.refresh.as_str()),
    ];
    let via_query = |url: String| {
        let p = params.clone();
        let env = &env;
        async move { read(env.http.post(url).query(&p).send().await.expect("sent")).await }
    };
    assert_eq!(via_query(v1(&env)).await.status, 200);
    let r = via_query(v3(&env)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], json!("BAD_GRANT_TYPE"));
    // Wrong client secret.
    let r = read(
        env.http
            .post(v1(&env))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", env.client_id.as_str()),
                ("client_secret", "nope"),
                ("refresh_token", env.refresh.as_str()),
            ])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], json!("BAD_CLIENT_SECRET"));
}

#[tokio::test]
async fn revoking_a_refresh_token_leaves_access_tokens_working() {
    let env = start(config(1)).await;
    let del = env.delete(&format!("/oauth/v1/refresh-tokens/{}", env.refresh), "").await;
    assert_eq!(del.status, 204);
    assert_eq!(refresh(&env, &v1(&env), &env.refresh).await.status, 400);
    assert_eq!(env.get("/crm/v3/objects/contacts", &env.access).await.status, 200);
    let info = env.get(&format!("/oauth/v1/refresh-tokens/{}", env.refresh), "").await;
    assert_eq!(info.status, 404);
}

#[tokio::test]
async fn control_plane_revocation_kills_every_credential() {
    let env = start(config(1)).await;
    let out: Value =
        env.ctl_ok("POST", &format!("/_sandbox/hubspot/accounts/{}/revoke", env.hub), None).await;
    let new_pat = out["private_app_token"].as_str().expect("new pat");
    for token in [env.access.as_str(), env.pat.as_str()] {
        let r = env.get("/crm/v3/objects/contacts", token).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["category"], json!("INVALID_AUTHENTICATION"));
    }
    assert_eq!(refresh(&env, &v1(&env), &env.refresh).await.status, 400);
    assert_eq!(env.get("/crm/v3/objects/contacts", new_pat).await.status, 200);
    // A fresh grant through the control plane works.
    let fresh = env.ctl_ok("POST", &format!("/_sandbox/hubspot/accounts/{}/tokens", env.hub), None).await;
    let access = fresh["access_token"].as_str().expect("access");
    assert_eq!(env.get("/crm/v3/objects/contacts", access).await.status, 200);
    // expire-tokens makes every live access token expired now.
    env.ctl_ok("POST", &format!("/_sandbox/hubspot/accounts/{}/expire-tokens", env.hub), None).await;
    let r = env.get("/crm/v3/objects/contacts", access).await;
    assert_eq!(r.json()["message"], json!("The OAuth token used to make this call expired 0 second(s) ago."));
}

#[tokio::test]
async fn authorize_can_deny() {
    let env = start(config(1)).await;
    env.ctl_ok("PATCH", "/_sandbox/hubspot/settings", Some(json!({"authorize_deny": true}))).await;
    let r = read(
        env.http
            .get(&env.authorize_url)
            .query(&[
                ("client_id", env.client_id.as_str()),
                ("scope", "crm.objects.contacts.read"),
                ("redirect_uri", "http://localhost:9/cb"),
                ("state", "abc"),
            ])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").expect("location");
    assert!(loc.contains("error=access_denied") && loc.contains("state=abc"), "{loc}");
    let bad = read(
        env.http
            .get(&env.authorize_url)
            .query(&[("client_id", "nope"), ("scope", "oauth"), ("redirect_uri", "http://x/cb")])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(bad.status, 400);
}
