//! Same seed → the same Salesforce orgs, byte for byte: records, ids, credentials, query pages and
//! mutation batches.

use crate::salesforce_support::{Sf, config, start};
use serde_json::json;

/// Every page of a paged query, concatenated, with the sandbox's own base URL blanked out (ports
/// differ between sandboxes; the data must not).
async fn listing(env: &Sf) -> String {
    let soql = "SELECT Id, FirstName, LastName, Email, AccountId, OwnerId, CreatedDate, SystemModstamp FROM Contact ORDER BY SystemModstamp ASC, Id ASC";
    let pages = env.pages("query", soql, Some(200)).await;
    pages
        .iter()
        .map(|p| serde_json::to_string(p).expect("json").replace(&env.instance, "{instance}"))
        .collect()
}

async fn digest(env: &Sf) -> String {
    env.ctl_ok("GET", &env.org_path(""), None).await["digest"].as_str().expect("digest").to_owned()
}

#[tokio::test]
async fn same_seed_gives_identical_orgs_pages_and_mutations() {
    let a = start(config(300).with_seed(99)).await;
    let b = start(config(300).with_seed(99)).await;
    let c = start(config(300).with_seed(100)).await;
    let (la, lb, lc) = (listing(&a).await, listing(&b).await, listing(&c).await);
    assert!(la.len() > 20_000);
    assert_eq!(la, lb, "same seed, same bytes");
    assert_ne!(la, lc, "another seed, other data");
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_ne!(digest(&a).await, digest(&c).await);
    assert_eq!(
        (a.org.clone(), a.access.clone(), a.client_id.clone()),
        (b.org.clone(), b.access.clone(), b.client_id.clone())
    );
    let req = json!({"seed": 5, "creates": 10, "updates": 30, "deletes": 5});
    let ma = a.mutate(req.clone()).await;
    let mb = b.mutate(req).await;
    assert_eq!(ma, mb);
    assert_eq!(ma["changes"].as_array().map(Vec::len), Some(45));
    assert_eq!(digest(&a).await, digest(&b).await);
    assert_eq!(listing(&a).await, listing(&b).await);
}
