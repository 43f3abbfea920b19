//! Zoho: same seed → same data, credentials and change logs, byte for byte.

use crate::zoho_support::{ZEnv, zconfig, zstart};
use serde_json::json;

/// Every page of a full contacts and deals listing, with the sandbox's own base URL blanked out.
async fn listing(env: &ZEnv) -> String {
    env.unthrottle().await;
    let mut out = String::new();
    for (module, fields) in [
        ("Contacts", "First_Name,Last_Name,Email,Account_Name,Modified_Time"),
        ("Deals", "Deal_Name,Amount,Stage,Closing_Date"),
    ] {
        let mut page = 1;
        loop {
            let r = env
                .get(&format!("/crm/v7/{module}?fields={fields}&per_page=100&page={page}"), &env.access)
                .await;
            assert_eq!(r.status, 200);
            out.push_str(&r.text.replace(&env.api, "{api}"));
            let v = r.json();
            if v["info"]["more_records"] != json!(true) {
                break;
            }
            page += 1;
        }
    }
    out
}

async fn digest(env: &ZEnv) -> String {
    env.account().await["digest"].as_str().expect("digest").to_owned()
}

#[tokio::test]
async fn same_seed_gives_identical_data_and_mutations() {
    let a = zstart(zconfig(150).with_seed(7)).await;
    let b = zstart(zconfig(150).with_seed(7)).await;
    let c = zstart(zconfig(150).with_seed(8)).await;
    let (la, lb, lc) = (listing(&a).await, listing(&b).await, listing(&c).await);
    assert!(la.len() > 10_000);
    assert_eq!(la, lb, "same seed, same bytes");
    assert_ne!(la, lc, "another seed, other data");
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_ne!(digest(&a).await, digest(&c).await);
    assert_eq!(
        (a.org.clone(), a.access.clone(), a.client_id.clone()),
        (b.org.clone(), b.access.clone(), b.client_id.clone())
    );
    let req = json!({"seed": 5, "creates": 10, "updates": 30, "deletes": 5});
    let (ma, mb) = (a.mutate(req.clone()).await, b.mutate(req).await);
    assert_eq!(ma, mb);
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_eq!(listing(&a).await, listing(&b).await);
}
