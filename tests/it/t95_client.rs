//! The client library against a real three-node cluster: the `Verifier`
//! with a live `RevocationCache`, the `TokenSource`'s renewal and
//! fail-over, and the cache following a burst and a lost node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tessera::client::{
    CacheConfig, RevocationCache, TokenSource, TokenSourceConfig, Verifier, VerifierConfig,
    VerifyError,
};

use crate::cluster::*;
use tessera::pb;

const ISSUER: &str = "https://tessera.dev";

fn endpoints(c: &TestCluster) -> Vec<String> {
    c.nodes.values().map(|n| n.api_addr().to_string()).collect()
}

/// The DER of `name`'s certificate, as a resource server's TLS layer would
/// hand it over.
fn cert_der(c: &TestCluster, name: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(c.files(name).cert)
        .unwrap()
        .as_ref()
        .to_vec()
}

fn cache_as(c: &TestCluster, name: &str) -> RevocationCache {
    let mut cfg = CacheConfig::new(endpoints(c), c.files(name));
    cfg.clock = c.clock.clone();
    RevocationCache::start(cfg).unwrap()
}

fn verifier_for(c: &TestCluster, name: &str, cache: &RevocationCache) -> Verifier {
    let mut cfg = VerifierConfig::new(endpoints(c), c.files(name), ISSUER, id(name));
    cfg.clock = c.clock.clone();
    Verifier::new(cfg, cache.clone()).unwrap()
}

/// `(jti, iat, exp)` of a token, read without verification.
fn times(token: &str) -> (String, u64, u64) {
    let payload = token.split('.').nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    (
        v["jti"].as_str().unwrap().to_string(),
        v["iat"].as_u64().unwrap(),
        v["exp"].as_u64().unwrap(),
    )
}

/// Revokes `jti` as the admin through the first running node. Right after
/// a member stopped, the leader may refuse (`UNAVAILABLE`) until its next
/// quorum acknowledgement: then it waits for the node's next Raft metrics
/// change and tries again, within [`WAIT`].
async fn revoke(c: &TestCluster, jti: &str) -> u64 {
    let first = *c.nodes.keys().next().unwrap();
    let mut client = c.tokens_on(first, "admin").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.revoke(revoke_jti(jti)).await {
            Ok(r) => return r.into_inner().revision,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "{s:?}");
                let mut m = c.node(first).raft().metrics();
                m.borrow_and_update();
                let _ = tokio::time::timeout_at(deadline, m.changed()).await;
            }
            Err(s) => panic!("revoke {jti}: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_rejects_revoked_ancestors_and_foreign_certificates() {
    let c = TestCluster::start(3).await;
    let cache = cache_as(&c, "ledger");
    let ledger = verifier_for(&c, "ledger", &cache);
    let orders = verifier_for(&c, "orders", &cache);
    cache.wait_ready(WAIT).await.unwrap();
    let (t1, t2, t3) = chain_of_three(&c).await;
    let payments_cert = cert_der(&c, "payments");
    let frontend_cert = cert_der(&c, "frontend");

    let ok = ledger
        .verify(&t3.access_token, Some(&payments_cert))
        .await
        .unwrap();
    assert_eq!(ok.claims.jti, t3.jti);
    assert_eq!(ok.claims.chain, [t1.jti.clone(), t2.jti.clone()]);
    orders
        .verify(&t1.access_token, Some(&frontend_cert))
        .await
        .unwrap();

    // Bound to payments' certificate: presented by another service, refused.
    let ledger_cert = cert_der(&c, "ledger");
    assert!(matches!(
        ledger.verify(&t3.access_token, Some(&ledger_cert)).await,
        Err(VerifyError::BindingMismatch)
    ));
    // Aimed at ledger, not at orders.
    assert!(matches!(
        orders.verify(&t3.access_token, Some(&payments_cert)).await,
        Err(VerifyError::Invalid(
            tessera::token::TokenError::WrongAudience
        ))
    ));

    // Revoke the middle token; once the event is in, its descendant is
    // refused and the root is not.
    let rev = revoke(&c, &t2.jti).await;
    cache.wait_for_revision(rev, WAIT).await.unwrap();
    assert!(matches!(
        ledger.verify(&t3.access_token, Some(&payments_cert)).await,
        Err(VerifyError::Revoked)
    ));
    let root = orders
        .verify(&t1.access_token, Some(&frontend_cert))
        .await
        .unwrap();
    assert!(root.revision >= rev);
    assert!(cache.status().connected_to.is_some());
    cache.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_accepted_tokens_before_its_revocation_cache_synced() {
    let c = TestCluster::start(1).await;
    // The cache's only endpoint refuses connections: it never syncs.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let mut cfg = CacheConfig::new(vec![dead_addr], c.files("ledger"));
    cfg.clock = c.clock.clone();
    let cache = RevocationCache::start(cfg).unwrap();
    // The verifier's keys come from the live node.
    let ledger = verifier_for(&c, "ledger", &cache);
    assert!(ledger.refresh_keys().await.unwrap() >= 1);
    let (_, _, t3) = chain_of_three(&c).await;
    let payments_cert = cert_der(&c, "payments");
    assert!(matches!(
        ledger.verify(&t3.access_token, Some(&payments_cert)).await,
        Err(VerifyError::NotSynced)
    ));
    // A cache that syncs lets the same token through.
    let live = cache_as(&c, "ledger");
    let ledger = verifier_for(&c, "ledger", &live);
    live.wait_ready(WAIT).await.unwrap();
    ledger
        .verify(&t3.access_token, Some(&payments_cert))
        .await
        .unwrap();
    // And without the presenting certificate, refused.
    assert!(matches!(
        ledger.verify(&t3.access_token, None).await,
        Err(VerifyError::NoCertificate)
    ));
    cache.shutdown().await;
    live.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_source_renews_before_expiry_and_never_hands_out_an_expired_token() {
    let c = TestCluster::start(3).await;
    let mut cfg = TokenSourceConfig::new(endpoints(&c), c.files("frontend"));
    cfg.clock = c.clock.clone();
    cfg.lifetime = Some(Duration::from_secs(60));
    let source = TokenSource::new(cfg).unwrap();
    let orders = id("orders");

    let first = source.token(&orders, &["orders:write"]).await.unwrap();
    let (jti1, iat1, exp1) = times(&first);
    assert_eq!(exp1 - iat1, 60);
    // Cached, in any scope order.
    assert_eq!(
        source.token(&orders, &["orders:write"]).await.unwrap(),
        first
    );

    // The renewal point is at 80% ± 10% of the lifetime: before 54 s.
    c.clock.advance(55);
    let second = source.token(&orders, &["orders:write"]).await.unwrap();
    let (jti2, iat2, exp2) = times(&second);
    assert_ne!(jti2, jti1);
    assert!(iat2 >= c.now() - 1 && exp2 > c.now());
    assert_eq!(
        source.token(&orders, &["orders:write"]).await.unwrap(),
        second
    );

    // Whatever the clock does, what comes out is valid.
    let mut seen = BTreeSet::from([jti1, jti2]);
    for step in [7, 13, 29, 41, 59, 61, 120] {
        c.clock.advance(step);
        let t = source.token(&orders, &["orders:write"]).await.unwrap();
        let (jti, _, exp) = times(&t);
        assert!(exp > c.now(), "expired token handed out after +{step}s");
        seen.insert(jti);
    }
    assert!(seen.len() >= 5, "{seen:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_source_survives_the_loss_of_its_node() {
    let mut c = TestCluster::start(3).await;
    let mut cfg = TokenSourceConfig::new(endpoints(&c), c.files("orders"));
    cfg.clock = c.clock.clone();
    let source = Arc::new(TokenSource::new(cfg).unwrap());
    let frontend = {
        let mut cfg = TokenSourceConfig::new(endpoints(&c), c.files("frontend"));
        cfg.clock = c.clock.clone();
        TokenSource::new(cfg).unwrap()
    };
    let subject = frontend
        .token(
            &id("orders"),
            &["orders:write", "payments:charge", "ledger:write"],
        )
        .await
        .unwrap();
    // The first endpoint answers while it is up.
    let exchanged = source
        .exchange(&subject, &id("payments"), &["payments:charge"])
        .await
        .unwrap();
    assert_eq!(
        source
            .exchange(&subject, &id("payments"), &["payments:charge"])
            .await
            .unwrap(),
        exchanged
    );

    c.stop_node(1).await;
    // A new exchange (a new scope set) must go to the network: node 1 is
    // gone, another node answers.
    let other = source
        .exchange(
            &subject,
            &id("payments"),
            &["payments:charge", "ledger:write"],
        )
        .await
        .unwrap();
    let (jti, _, exp) = times(&other);
    assert!(exp > c.now());
    assert_ne!(jti, times(&exchanged).0);
    // And renewal, past the renewal point, too.
    c.clock.advance(280);
    let renewed = source
        .exchange(&subject, &id("payments"), &["payments:charge"])
        .await
        .unwrap();
    assert_ne!(times(&renewed).0, times(&exchanged).0);
    assert!(times(&renewed).2 > c.now());
    c.stop().await;
}

/// Revokes one more jti and waits until the cache and node `i` both have
/// it: by log order, every earlier revocation is then in both.
async fn settle(c: &TestCluster, cache: &RevocationCache, i: u64, marker: &str) -> u64 {
    let rev = revoke(c, marker).await;
    cache.wait_for_revision(rev, WAIT).await.unwrap();
    let mut rx = c.node(i).state().watch_revision();
    tokio::time::timeout(WAIT, rx.wait_for(|r| *r >= rev))
        .await
        .unwrap()
        .unwrap();
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cache_follows_a_burst_to_the_servers_set() {
    let c = TestCluster::start(3).await;
    let cache = cache_as(&c, "ledger");
    let burst = revoke_burst(&c, "burst", 400, 8, &[1, 2, 3]).await;
    // Failed calls have an unknown outcome: the comparison below is with
    // the server's set, whatever it holds.
    assert!(burst.acked.len() > 300, "{:?}", burst.failed);
    let last = burst.acked.iter().map(|(_, r)| *r).max().unwrap();
    cache.wait_for_revision(last, WAIT).await.unwrap();
    assert!(cache.revoked_jtis().is_superset(&burst.acked_set()));

    settle(&c, &cache, 1, "marker").await;
    assert_eq!(cache.revoked_jtis(), c.revoked(1));
    assert_eq!(cache.len(), c.revoked(1).len());
    cache.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cache_resumes_on_another_node_when_its_node_stops() {
    let mut c = TestCluster::start(3).await;
    let cache = cache_as(&c, "ledger");
    let first = revoke_burst(&c, "before", 100, 4, &[1, 2, 3]).await;
    let last = first.acked.iter().map(|(_, r)| *r).max().unwrap();
    cache.wait_for_revision(last, WAIT).await.unwrap();
    let status = cache.status();
    let addr = status.connected_to.clone().expect("connected");
    let node = *c
        .nodes
        .iter()
        .find(|(_, n)| n.api_addr().to_string() == addr)
        .unwrap()
        .0;
    c.stop_node(node).await;
    let rest: Vec<u64> = c.nodes.keys().copied().collect();
    c.agreed_leader(&rest).await;
    revoke(&c, "after-stop").await;
    let second = revoke_burst(&c, "after", 100, 4, &rest).await;
    assert!(!second.acked.is_empty(), "{:?}", second.failed);
    settle(&c, &cache, rest[0], "marker").await;

    assert_eq!(cache.revoked_jtis(), c.revoked(rest[0]));
    assert!(cache.revoked_jtis().is_superset(&first.acked_set()));
    assert!(cache.revoked_jtis().is_superset(&second.acked_set()));
    let status = cache.status();
    assert!(status.subscriptions >= 2, "{status:?}");
    assert_ne!(status.connected_to.as_deref(), Some(addr.as_str()));
    assert!(cache.staleness() < WAIT);
    cache.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cache_forgets_expired_entries() {
    let c = TestCluster::start(3).await;
    let cache = cache_as(&c, "ledger");
    let rev = revoke(&c, "short-lived").await;
    cache.wait_for_revision(rev, WAIT).await.unwrap();
    assert!(cache.is_revoked(&["short-lived"], "", "", 0, None));
    // A revoked jti is kept until every token it can match has expired:
    // within the maximum lifetime plus leeway, well under a day.
    c.clock.advance(86_400);
    cache.purge_expired();
    assert!(!cache.is_revoked(&["short-lived"], "", "", 0, None));
    cache.shutdown().await;
    c.stop().await;
}

/// An idempotent repeat of a revocation committed a log entry and answered
/// its revision, but emitted no event: `wait_for_revision` on that
/// revision, the documented read-your-writes, timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_timed_out_after_an_idempotent_revoke() {
    let c = TestCluster::start(3).await;
    let cache = cache_as(&c, "ledger");
    cache.wait_ready(WAIT).await.unwrap();
    let first = revoke(&c, "twice").await;
    cache.wait_for_revision(first, WAIT).await.unwrap();
    let mut admin = c.tokens_on(1, "admin").await;
    let again = admin
        .revoke(revoke_jti("twice"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert!(again.revision > first, "{first} {again:?}");
    // Nothing after it moves the cache: only the repeat's own revision can.
    cache
        .wait_for_revision(again.revision, WAIT)
        .await
        .unwrap_or_else(|e| panic!("wait_for_revision({}): {e:?}", again.revision));
    assert!(cache.is_revoked(&["twice"], "", "", 0, None));
    // A token that is not the cluster's: nothing written, nothing to wait
    // for (RFC 7009 still answers success).
    let none = admin
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token("a.b.c".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((none.revision, none.changed), (0, false));
    cache.wait_for_revision(none.revision, WAIT).await.unwrap();
    cache.shutdown().await;
    c.stop().await;
}

/// Found by the second read of the restore fix: a resubscription that
/// resumes from a snapshot (a node restarted, the cache's cursor left its
/// window) made the `Verifier` refetch the JWKS, but through the refresh
/// limiter: within 5 s of its last fetch it refused every valid token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_resubscription_refused_valid_tokens_for_seconds() {
    let mut c = TestCluster::start_with(3, |cfg| cfg.watch_window = 10).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let mut ccfg = CacheConfig::new(
        followers
            .iter()
            .map(|i| c.node(*i).api_addr().to_string())
            .collect(),
        c.files("ledger"),
    );
    ccfg.clock = c.clock.clone();
    let cache = RevocationCache::start(ccfg).unwrap();
    // The default refresh interval (5 s): far longer than this test's
    // steps, so a refusal it causes shows.
    let ledger = verifier_for(&c, "ledger", &cache);
    cache.wait_ready(WAIT).await.unwrap();
    let (_, _, t3) = chain_of_three(&c).await;
    let cert = cert_der(&c, "payments");
    ledger.verify(&t3.access_token, Some(&cert)).await.unwrap();
    // The node the cache follows falls behind by more than its window and
    // stops: the cache resumes on the other follower from a snapshot.
    let on_addr = cache.status().connected_to.unwrap();
    let on = *followers
        .iter()
        .find(|i| on_addr.contains(&c.node(**i).api_addr().to_string()))
        .unwrap_or_else(|| panic!("{on_addr} {followers:?}"));
    c.faults.hold_entries(on);
    let burst = revoke_burst(&c, "r", 20, 2, &[leader]).await;
    assert!(burst.failed.is_empty(), "{:?}", burst.failed);
    let last = burst.acked.iter().map(|(_, r)| *r).max().unwrap();
    c.stop_node(on).await;
    cache.wait_for_revision(last, WAIT).await.unwrap();
    assert!(
        cache.snapshots_applied() >= 1,
        "the cache resumed from a snapshot"
    );
    let r = ledger.verify(&t3.access_token, Some(&cert)).await;
    assert!(
        r.is_ok(),
        "a valid token was refused after an ordinary resubscription: {:?}",
        r.err()
    );
    cache.shutdown().await;
    c.stop().await;
}
