//! Restarts: revocations, keys and policy survive.

use crate::cluster::*;
use tessera::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let mut c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;
    let kid_before = c.key_ring().signer().unwrap().kid().to_string();
    let policy_before = c.node(1).state().policy().unwrap();
    let rev = c
        .tokens("orders")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t2.access_token.clone())),
        })
        .await
        .unwrap()
        .into_inner();

    c.restart(1).await;

    let state = c.node(1).state();
    assert!(state.revision() >= rev.revision);
    assert_eq!(state.policy().unwrap(), policy_before);
    assert_eq!(c.key_ring().signer().unwrap().kid(), kid_before);
    let mut ledger = c.tokens("admin").await;
    let r1 = ledger
        .introspect(introspect_req(&t1.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r1.active, "tokens signed before the restart still verify");
    assert!(
        !ledger
            .introspect(introspect_req(&t2.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    assert!(
        !ledger
            .introspect(introspect_req(&t3.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    // And the node still issues with the same key.
    let t = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    let header = t.access_token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid_before.as_str());
    c.stop().await;
}
