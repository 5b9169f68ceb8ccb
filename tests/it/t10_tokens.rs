//! The happy path: issue, exchange twice, introspect the chain, revoke the
//! middle token, and the revocation kinds.

use tonic::Code;

use crate::cluster::*;
use tessera::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_three_then_revoke_the_middle() {
    let c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;
    assert_eq!(
        t1.scope,
        vec!["orders:write", "payments:charge", "ledger:write"]
    );
    assert_eq!(t2.scope, vec!["payments:charge", "ledger:write"]);
    assert_eq!(t3.scope, vec!["ledger:write"]);

    let mut ledger = c.tokens("ledger").await;
    let i3 = ledger
        .introspect(introspect_req(&t3.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(i3.active);
    assert_eq!(i3.sub, id("frontend"));
    assert_eq!(i3.client_id, id("payments"));
    assert_eq!(i3.aud, vec![id("ledger")]);
    assert_eq!(i3.chain, vec![t1.jti.clone(), t2.jti.clone()]);
    // RFC 8693 §4.1: the current actor outermost, the previous one nested.
    let act = i3.act.clone().unwrap();
    assert_eq!(act.sub, id("payments"));
    assert_eq!(act.act.as_ref().unwrap().sub, id("orders"));
    assert!(act.act.as_ref().unwrap().act.is_none());
    assert!(!i3.cnf_x5t_s256.is_empty());
    // Lifetimes never grow along the chain.
    assert!(i3.exp <= t1.expires_in + i3.iat);

    // Revoke the middle token: it and its descendant die, the root lives.
    let mut orders = c.tokens("orders").await;
    let rev = orders
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t2.access_token.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rev.changed);
    assert!(rev.revision > i3.revision);

    // The admin sees every token's claims (the others only their own audience's).
    let admin = c.tokens("admin").await;
    let active = |t: &str| {
        let t = t.to_string();
        let mut ledger = admin.clone();
        async move {
            let r = ledger
                .introspect(introspect_req(&t))
                .await
                .unwrap()
                .into_inner();
            assert!(r.revision >= rev.revision);
            if !r.active {
                // Inactive answers are bare.
                assert_eq!(
                    r,
                    pb::IntrospectResponse {
                        active: false,
                        revision: r.revision,
                        linearizable: true,
                        ..Default::default()
                    }
                );
            }
            r.active
        }
    };
    assert!(active(&t1.access_token).await);
    assert!(!active(&t2.access_token).await);
    assert!(!active(&t3.access_token).await);

    // A revoked token cannot be exchanged any more.
    let err = c
        .tokens("payments")
        .await
        .exchange_token(exchange_req(&t2.access_token, "ledger", &["ledger:write"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Idempotent: revoking again changes nothing and still answers a revision.
    let again = orders
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Jti(t2.jti.clone())),
        })
        .await;
    // orders may not revoke by bare jti under the example policy; the
    // token form is the owner's way and is idempotent:
    let again = match again {
        Ok(r) => r.into_inner(),
        Err(e) => {
            assert_eq!(e.code(), Code::PermissionDenied);
            orders
                .revoke(pb::RevokeRequest {
                    target: Some(pb::revoke_request::Target::Token(t2.access_token.clone())),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(!again.changed);
    assert!(again.revision > rev.revision);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_by_subject_and_client_and_min_revision() {
    let c = TestCluster::start(1).await;
    let (t1, t2, _t3) = chain_of_three(&c).await;
    let mut admin = c.tokens("admin").await;
    // Every token whose subject is frontend and issued up to now.
    let rev = admin
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Subject(id("frontend"))),
        })
        .await
        .unwrap()
        .into_inner();
    let mut ledger = c.tokens("admin").await;
    let r = ledger
        .introspect(pb::IntrospectRequest {
            token: t1.access_token.clone(),
            min_revision: rev.revision,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active);
    assert!(r.revision >= rev.revision);
    let r = ledger
        .introspect(introspect_req(&t2.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !r.active,
        "subject cut-off covers delegated tokens of the same subject"
    );

    // A token issued later (the clock moved on) is not affected.
    c.clock.advance(2);
    let fresh = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        ledger
            .introspect(introspect_req(&fresh.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // Client cut-off: tokens issued to orders (client_id = orders) die.
    let rev2 = admin
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Client(id("frontend"))),
        })
        .await
        .unwrap()
        .into_inner();
    let r = ledger
        .introspect(pb::IntrospectRequest {
            token: fresh.access_token.clone(),
            min_revision: rev2.revision,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active);

    // A revision far in the future: bounded wait, then DEADLINE_EXCEEDED.
    let err = ledger
        .introspect(pb::IntrospectRequest {
            token: fresh.access_token.clone(),
            min_revision: rev2.revision + 1_000_000,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_publishes_the_signing_key() {
    let c = TestCluster::start(1).await;
    let jwks = c
        .keys("ledger")
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&jwks.jwks_json).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert!(keys[0].get("d").is_none(), "no private part");
    let (t1, _, _) = chain_of_three(&c).await;
    let header = t1.access_token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], keys[0]["kid"]);
    assert_eq!(header["typ"], "at+jwt");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_has_decisions_and_no_tokens() {
    let c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;
    c.stop_audit_and_read(|text| {
        for t in [&t1, &t2, &t3] {
            assert!(
                !text.contains(&t.access_token),
                "a token leaked into the audit log"
            );
            assert!(text.contains(&t.jti));
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let exchanges: Vec<_> = lines.iter().filter(|l| l["op"] == "exchange").collect();
        assert_eq!(exchanges.len(), 2);
        assert!(exchanges
            .iter()
            .all(|l| l["decision"] == "allow" && !l["policy_ids"].as_array().unwrap().is_empty()));
    })
    .await;
}
