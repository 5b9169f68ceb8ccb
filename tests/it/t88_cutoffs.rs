//! Subject and client cut-offs on a cluster whose nodes' clocks disagree:
//! a cut-off compares the revision a token was minted at, so a token minted
//! before the cut-off by a node whose clock runs ahead is revoked, and one
//! minted after it by a node whose clock runs behind stays valid, on every
//! node and in the client library's `Verifier`.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use tessera::client::{CacheConfig, RevocationCache, Verifier, VerifierConfig, VerifyError};
use tessera::clock::ManualClock;
use tessera::pb;

use crate::cluster::*;

/// Node 2's clock runs this far ahead of node 1's, node 3's this far
/// behind: pairwise at most twice this, within the 30 s leeway, so every
/// token still verifies everywhere.
const SKEW: u64 = 10;

/// A three-node cluster with a clock per node (node 1 at `T0`).
async fn skewed_cluster() -> TestCluster {
    let clocks: BTreeMap<u64, Arc<ManualClock>> = [(1, T0), (2, T0 + SKEW), (3, T0 - SKEW)]
        .into_iter()
        .map(|(i, t)| (i, Arc::new(ManualClock::new(t))))
        .collect();
    TestCluster::start_with(3, move |cfg| cfg.clock = clocks[&cfg.node_id].clone()).await
}

/// The `tsr_rev` claim of a token, read without verification.
fn minted_at(token: &str) -> u64 {
    let payload = token.split('.').nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    v["tsr_rev"].as_u64().expect("tokens carry tsr_rev")
}

/// A token's claims, read without verification.
fn decoded(token: &str) -> tessera::token::Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// Whether node `i`, once it has applied `revision`, says `token` is active.
async fn active_on(c: &TestCluster, i: u64, token: &str, revision: u64) -> bool {
    let mut req = introspect_req(token);
    req.min_revision = revision;
    // The admin sees every token's claims (the audience-only disclosure
    // rule would hide some of them and make `false` meaningless).
    c.tokens_on(i, "admin")
        .await
        .introspect(req)
        .await
        .unwrap()
        .into_inner()
        .active
}

/// Waits (bounded) until node `i` has applied `revision`.
async fn applied(c: &TestCluster, i: u64, revision: u64) {
    let mut rx = c.node(i).state().watch_revision();
    tokio::time::timeout(WAIT, rx.wait_for(|r| *r >= revision))
        .await
        .expect("revision applied")
        .unwrap();
}

async fn issue_on(c: &TestCluster, i: u64) -> pb::TokenResponse {
    c.tokens_on(i, "frontend")
        .await
        .issue_token(issue_req(
            "orders",
            &["orders:write", "payments:charge", "ledger:write"],
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn exchange_on(c: &TestCluster, i: u64, token: &str) -> pb::TokenResponse {
    c.tokens_on(i, "orders")
        .await
        .exchange_token(exchange_req(token, "payments", &["payments:charge"]))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutoff_revokes_a_token_minted_on_a_node_whose_clock_is_ahead() {
    let c = skewed_cluster().await;
    let mut cache_cfg = CacheConfig::new(
        c.nodes.values().map(|n| n.api_addr().to_string()).collect(),
        c.files("orders"),
    );
    cache_cfg.clock = c.clock.clone();
    let cache = RevocationCache::start(cache_cfg).unwrap();
    let mut vcfg = VerifierConfig::new(
        c.nodes.values().map(|n| n.api_addr().to_string()).collect(),
        c.files("orders"),
        "https://tessera.dev",
        id("orders"),
    );
    vcfg.clock = c.clock.clone();
    // The tokens here are checked as they stand, not as presented by
    // their holder.
    vcfg.danger_skip_certificate_binding();
    let verifier = Verifier::new(vcfg, cache.clone()).unwrap();
    cache.wait_ready(WAIT).await.unwrap();

    // Minted before the cut-off on node 2, whose clock is ahead: its iat
    // is after the cut-off time node 1 stamps, but its revision is below.
    let early = issue_on(&c, 2).await;
    let early_child = exchange_on(&c, 2, &early.access_token).await;
    assert!(verifier.verify(&early.access_token, None).await.is_ok());

    let cut = revoke_on(&c, 1, pb::revoke_request::Target::Subject(id("frontend"))).await;
    assert!(minted_at(&early.access_token) < cut);
    assert!(minted_at(&early_child.access_token) < cut);
    for i in [1, 2, 3] {
        assert!(
            !active_on(&c, i, &early.access_token, cut).await,
            "node {i} says a token minted before the cut-off is active"
        );
        assert!(
            !active_on(&c, i, &early_child.access_token, cut).await,
            "node {i} says an exchanged token minted before the cut-off is active"
        );
    }
    cache.wait_for_revision(cut, WAIT).await.unwrap();
    assert!(matches!(
        verifier.verify(&early.access_token, None).await,
        Err(VerifyError::Revoked)
    ));
    // The exchanged token is aimed at payments; the cache's rule alone.
    assert!(cache.is_token_revoked(&decoded(&early_child.access_token)));

    // Minted after the cut-off on node 3, whose clock is behind: its iat
    // is before the cut-off time, but its revision is not below: valid,
    // and so is what it is exchanged for.
    applied(&c, 3, cut).await;
    let late = issue_on(&c, 3).await;
    assert!(minted_at(&late.access_token) >= cut);
    let late_child = exchange_on(&c, 3, &late.access_token).await;
    for i in [1, 2, 3] {
        assert!(
            active_on(&c, i, &late.access_token, cut).await,
            "node {i} says a token minted after the cut-off is revoked"
        );
        assert!(active_on(&c, i, &late_child.access_token, cut).await);
    }
    let ok = verifier.verify(&late.access_token, None).await.unwrap();
    assert_eq!(ok.claims.rev, Some(minted_at(&late.access_token)));

    // The same rule for a client cut-off taken by the node that is behind:
    // tokens issued to frontend on the node ahead before it die, those
    // after it live.
    let before = issue_on(&c, 2).await;
    let cut2 = revoke_on(&c, 3, pb::revoke_request::Target::Client(id("frontend"))).await;
    applied(&c, 2, cut2).await;
    let after = issue_on(&c, 2).await;
    for i in [1, 2, 3] {
        assert!(!active_on(&c, i, &before.access_token, cut2).await);
        assert!(active_on(&c, i, &after.access_token, cut2).await);
    }
    cache.wait_for_revision(cut2, WAIT).await.unwrap();
    assert!(matches!(
        verifier.verify(&before.access_token, None).await,
        Err(VerifyError::Revoked)
    ));
    assert!(verifier.verify(&after.access_token, None).await.is_ok());

    // A watcher starting from scratch gets the cut-off revisions in its
    // snapshot, not only in live events.
    let fresh = RevocationCache::start({
        let mut cfg = CacheConfig::new(vec![c.node(3).api_addr().to_string()], c.files("orders"));
        cfg.clock = c.clock.clone();
        cfg
    })
    .unwrap();
    fresh.wait_for_revision(cut2, WAIT).await.unwrap();
    let rev = |t: &pb::TokenResponse| Some(minted_at(&t.access_token));
    assert!(fresh.is_revoked(&["x"], &id("frontend"), "", 0, rev(&early)));
    assert!(!fresh.is_revoked(&["x"], &id("frontend"), "", 0, rev(&late)));
    assert!(fresh.is_revoked(&["x"], "", &id("frontend"), 0, rev(&before)));
    assert!(!fresh.is_revoked(&["x"], "", &id("frontend"), 0, rev(&after)));
    fresh.shutdown().await;
    cache.shutdown().await;
    c.stop().await;
}

/// DESIGN: a token is inactive if it *or any ancestor* is revoked. A
/// client cut-off used to reach only tokens whose own `client_id` was the
/// client: after cutting off a compromised `orders`, the token `payments`
/// had exchanged from an `orders` token stayed active (and exchangeable)
/// on every node and in the client library, until it expired. The
/// ancestors' clients (named by `sub`, `act` and `tsr_clients`) now count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cutoff_left_tokens_delegated_from_that_clients_tokens_active() {
    let c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;
    let frontend = id("frontend");
    let orders = id("orders");
    let payments = id("payments");
    assert_eq!(
        decoded(&t3.access_token).clients(),
        [payments.as_str(), frontend.as_str(), orders.as_str()],
        "its own client, then the ancestors' (from sub and act)"
    );
    let mut cache_cfg = CacheConfig::new(
        c.nodes.values().map(|n| n.api_addr().to_string()).collect(),
        c.files("ledger"),
    );
    cache_cfg.clock = c.clock.clone();
    let cache = RevocationCache::start(cache_cfg).unwrap();
    cache.wait_ready(WAIT).await.unwrap();

    let cut = revoke_on(&c, 1, pb::revoke_request::Target::Client(id("orders"))).await;
    assert!(
        active_on(&c, 1, &t1.access_token, cut).await,
        "an ancestor stays"
    );
    assert!(
        !active_on(&c, 1, &t2.access_token, cut).await,
        "orders' own"
    );
    assert!(
        !active_on(&c, 1, &t3.access_token, cut).await,
        "exchanged from a token of the cut-off client, before the cut-off"
    );
    let e = c
        .tokens("ledger")
        .await
        .exchange_token(exchange_req(&t3.access_token, "ledger", &["ledger:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    cache.wait_for_revision(cut, WAIT).await.unwrap();
    assert!(cache.is_token_revoked(&decoded(&t3.access_token)));
    assert!(!cache.is_token_revoked(&decoded(&t1.access_token)));

    // A chain started after the cut-off through the same clients is valid.
    let (_, n2, n3) = chain_of_three(&c).await;
    assert!(active_on(&c, 1, &n2.access_token, cut).await);
    assert!(active_on(&c, 1, &n3.access_token, cut).await);
    assert!(!cache.is_token_revoked(&decoded(&n3.access_token)));
    cache.shutdown().await;
    c.stop().await;
}

/// Lowering `max_lifetime` (3600 → 600 s, every node restarted) made a
/// subject cut-off taken afterwards purgeable after ~12 minutes, while the
/// subject's one-hour tokens minted before the change verified for ~48
/// more: the purge time was computed from the lowered setting alone. Each
/// node now remembers its previous run's larger values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_lifetime_purged_a_cutoff_that_still_matched_live_tokens() {
    use pb::revoke_request::Target;
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.token.max_lifetime = 3600;
        cfg.purge_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let mut req = issue_req("orders", &["orders:read"]);
    req.lifetime_seconds = 3600;
    let long = c
        .tokens_on(1, "frontend")
        .await
        .issue_token(req)
        .await
        .unwrap()
        .into_inner();
    for i in 1..=3 {
        c.config_mut(i).token.max_lifetime = 600;
        c.config_mut(i).token.default_lifetime = 600;
        c.restart(i).await;
        c.wait_ready(&[1, 2, 3]).await;
    }
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let cut = revoke_on(&c, leader, Target::Subject(id("frontend"))).await;
    // A marker the purge must take: a one-minute token revoked by value.
    let mut req = issue_req("orders", &["orders:read"]);
    req.lifetime_seconds = 60;
    let short = c
        .tokens_on(leader, "frontend")
        .await
        .issue_token(req)
        .await
        .unwrap()
        .into_inner();
    let marker = revoke_on(&c, leader, Target::Token(short.access_token.clone())).await;
    let marker_jti = decoded(&short.access_token).jti;
    for i in 1..=3 {
        applied(&c, i, marker.max(cut)).await;
        assert!(!active_on(&c, i, &long.access_token, cut).await);
    }
    // Twelve minutes on: past the horizon the lowered setting alone gives,
    // well inside the one-hour token's life.
    c.clock.advance(12 * 60);
    for i in 1..=3 {
        let mut rx = c.node(i).state().watch_revision();
        let purged = rx.wait_for(|_| !c.revoked(i).contains(&marker_jti));
        tokio::time::timeout(WAIT, purged)
            .await
            .expect("the marker purged in time")
            .unwrap();
        assert!(
            !active_on(&c, i, &long.access_token, 0).await,
            "node {i}: the cut-off was purged while a token it revokes still verifies"
        );
    }
    c.stop().await;
}
