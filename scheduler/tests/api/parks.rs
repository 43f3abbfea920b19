//! Connection parks: lifted by the scheduler once the connection is re-authorised.

use crm_jobs::auth::{AuthKind, Store};
use crm_jobs::providers::Provider;
use secrecy::SecretString;
use uuid::Uuid;

use crate::spawn_app;

#[tokio::test]
async fn a_re_authorised_connection_is_unparked_within_seconds_and_one_still_needing_auth_is_not() {
    let app = spawn_app().await;
    let store = Store::new(app.db.pool.clone(), app.keys.clone());
    store.ensure_tenant("acme", "acme").await.expect("tenant");
    let mut ids = Vec::new();
    for account in ["a-1", "a-2"] {
        let c = store
            .save_key(
                "acme",
                Provider::Close,
                AuthKind::ApiKey,
                &SecretString::from("k".to_owned()),
                "http://127.0.0.1:9",
                account,
            )
            .await
            .expect("connection");
        ids.push(c.id);
    }
    let (reauthorised, still_revoked) = (ids[0], ids[1]);
    sqlx::query("UPDATE connections SET status = 'needs_reauth' WHERE id = $1")
        .bind(still_revoked)
        .execute(&app.db.pool)
        .await
        .expect("status");
    for id in &ids {
        app.queue
            .pause(&crm_jobs::enqueue::budget::connection_pause(*id), std::time::Duration::from_secs(3600))
            .await
            .expect("park");
    }
    let parked = |id: Uuid| {
        let queue = app.queue.clone();
        async move {
            queue
                .pauses()
                .await
                .expect("pauses")
                .contains_key(&crm_jobs::enqueue::budget::connection_pause(id))
        }
    };
    let lifted = async {
        while parked(reauthorised).await {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), lifted)
        .await
        .expect("the scheduler lifts the park of an active connection within seconds");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(parked(still_revoked).await, "a connection that still needs re-authorisation stays parked");
}
