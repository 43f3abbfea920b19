//! Close auth: API keys over HTTP Basic, the OAuth authorize → token flow (client credentials in
//! the body), rotating refresh tokens and the rotation race, expiry, revocation.

use crate::close_support::{CloseEnv, Cred, config, start};
use crate::support::{Resp, read};
use serde_json::json;

async fn refresh(env: &CloseEnv, token: &str) -> Resp {
    read(
        env.http
            .post(&env.token_url)
            .form(&[
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
            ])
            .send()
            .await
            .expect("token request sent"),
    )
    .await
}

#[tokio::test]
async fn api_keys_authenticate_with_basic_and_an_empty_password() {
    let env = start(config(2)).await;
    let me = env.get("/api/v1/me/", &env.key).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["organizations"][0]["id"], json!(env.org));
    assert!(me.header("ratelimit").expect("RateLimit").starts_with("limit=160, remaining=159, reset="));
    let bad = env.get("/api/v1/me/", &Cred::Key("api_nope".into())).await;
    assert_eq!((bad.status, bad.json()), (401, json!({"error": "Unauthorized"})));
    let none = read(env.http.get(format!("{}/api/v1/lead/", env.api)).send().await.expect("sent")).await;
    assert_eq!(none.status, 401);
    // A non-empty password is accepted unless the setting says otherwise (UNCONFIRMED).
    let with_pw = read(
        env.http
            .get(format!("{}/api/v1/me/", env.api))
            .basic_auth(&env.api_key, Some("x"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(with_pw.status, 200);
    env.settings(json!({"reject_basic_password": true})).await;
    let with_pw = read(
        env.http
            .get(format!("{}/api/v1/me/", env.api))
            .basic_auth(&env.api_key, Some("x"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(with_pw.status, 401);
    // Revoking the account's credentials rotates the API key.
    let rev = env.ctl("POST", &format!("/_sandbox/close/accounts/{}/revoke", env.org), None).await;
    assert_eq!(env.get("/api/v1/me/", &env.key).await.status, 401);
    let fresh = Cred::Key(rev["api_key"].as_str().expect("new key").to_owned());
    assert_eq!(env.get("/api/v1/me/", &fresh).await.status, 200);
    assert_eq!(env.get("/api/v1/me/", &Cred::Bearer(env.access.clone())).await.status, 401);
}

#[tokio::test]
async fn authorize_then_exchange_the_code_with_client_credentials_in_the_body() {
    let env = start(config(1)).await;
    let r = read(
        env.http
            .get(format!("{}?client_id={}&response_type=code&state=xyz", env.authorize_url, env.client_id))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(r.status, 302);
    let location = r.header("location").expect("location");
    assert!(location.starts_with(&env.redirect_uri), "{location}");
    let url = url::Url::parse(&location).expect("url");
    let code = url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");
    assert!(url.query_pairs().any(|(k, v)| k == "state" && v == "xyz"));
    // Client credentials in a Basic header are refused.
    let basic = read(
        env.http
            .post(&env.token_url)
            .basic_auth(&env.client_id, Some(&env.client_secret))
            .form(&[("grant_type", "authorization_code"), ("code", code.as_str())])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!((basic.status, basic.json()), (401, json!({"error": "invalid_client"})));
    let ok = read(
        env.http
            .post(&env.token_url)
            .form(&[
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
            ])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let b = ok.json();
    let mut keys: Vec<&str> = b.as_object().expect("obj").keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "access_token",
            "expires_in",
            "organization_id",
            "refresh_token",
            "scope",
            "token_type",
            "user_id"
        ]
    );
    assert_eq!(b["token_type"], json!("Bearer"));
    assert_eq!(b["expires_in"], json!(3600));
    assert_eq!(b["scope"], json!("all.full_access offline_access"));
    assert_eq!(b["organization_id"], json!(env.org));
    assert!(b["user_id"].as_str().expect("user").starts_with("user_"));
    let token = Cred::Bearer(b["access_token"].as_str().expect("access").to_owned());
    assert_eq!(env.get("/api/v1/me/", &token).await.status, 200);
    let c = env.counters().await;
    assert_eq!(c["code_exchanges"], json!(1));
    // A code works once.
    let again = read(
        env.http
            .post(&env.token_url)
            .form(&[
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
            ])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!((again.status, again.json()), (400, json!({"error": "invalid_grant"})));
}

#[tokio::test]
async fn expired_access_token_gets_401_and_every_refresh_rotates() {
    let env = start(config(1)).await;
    let bearer = Cred::Bearer(env.access.clone());
    assert_eq!(env.get("/api/v1/lead/", &bearer).await.status, 200);
    env.advance("3600s").await;
    let r = env.get("/api/v1/lead/", &bearer).await;
    assert_eq!((r.status, r.json()), (401, json!({"error": "Unauthorized"})));
    assert!(r.header("ratelimit").is_none(), "unauthenticated answers carry no RateLimit");
    assert_eq!(env.get("/api/v1/lead/", &env.key).await.status, 200, "API keys do not expire");
    let first = refresh(&env, &env.refresh).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let b = first.json();
    let rt2 = b["refresh_token"].as_str().expect("rt").to_owned();
    assert_ne!(rt2, env.refresh, "a new refresh token on every refresh");
    assert_eq!(
        env.get("/api/v1/lead/", &Cred::Bearer(b["access_token"].as_str().expect("at").to_owned()))
            .await
            .status,
        200
    );
    // The used refresh token is revoked at once.
    let reuse = refresh(&env, &env.refresh).await;
    assert_eq!((reuse.status, reuse.json()), (400, json!({"error": "invalid_grant"})));
    assert_eq!(refresh(&env, &rt2).await.status, 200);
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(2), json!(1)));
    let acct = env.ctl("GET", &format!("/_sandbox/close/accounts/{}", env.org), None).await;
    assert_eq!(acct["refresh_reuse_detected"], json!(1));
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_let_exactly_one_win() {
    let env = start(config(1)).await;
    let futs: Vec<_> = (0..5).map(|_| refresh(&env, &env.refresh)).collect();
    let results = futures::future::join_all(futs).await;
    let winners: Vec<&Resp> = results.iter().filter(|r| r.status == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one concurrent refresh succeeds");
    assert!(
        results.iter().filter(|r| r.status != 200).all(|r| r.json() == json!({"error": "invalid_grant"}))
    );
    let acct = env.ctl("GET", &format!("/_sandbox/close/accounts/{}", env.org), None).await;
    assert_eq!(acct["refresh_reuse_detected"], json!(4), "the race is observable");
    let c = env.counters().await;
    assert_eq!((c["token_refreshes"].clone(), c["token_refresh_failures"].clone()), (json!(1), json!(4)));
    // With reuse detection on, replaying the old token also kills the winner's new one.
    env.settings(json!({"revoke_family_on_reuse": true})).await;
    let new_rt = winners[0].json()["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(refresh(&env, &env.refresh).await.status, 400);
    assert_eq!(refresh(&env, &new_rt).await.status, 400, "the family is revoked");
}

#[tokio::test]
async fn revoke_endpoint_kills_the_refresh_token_and_its_access_tokens() {
    let env = start(config(1)).await;
    let r = refresh(&env, &env.refresh).await.json();
    let (at, rt) = (
        r["access_token"].as_str().expect("at").to_owned(),
        r["refresh_token"].as_str().expect("rt").to_owned(),
    );
    let rev = read(
        env.http
            .post(&env.revoke_url)
            .form(&[
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("token", rt.as_str()),
            ])
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(rev.status, 200);
    assert_eq!(env.get("/api/v1/me/", &Cred::Bearer(at)).await.status, 401);
    assert_eq!(refresh(&env, &rt).await.status, 400);
    let bad_client =
        read(env.http.post(&env.revoke_url).form(&[("token", rt.as_str())]).send().await.expect("sent"))
            .await;
    assert_eq!(bad_client.status, 401);
}
