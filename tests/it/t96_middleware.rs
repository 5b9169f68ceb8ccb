//! The tower layers against a real cluster: the examples' `orders.v1.Orders`
//! service (examples/common) served over mutual TLS behind an `AuthLayer`,
//! called through a `TokenLayer` (or with a hand-set token, to present it
//! from the wrong place).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_client::{
    AuthLayer, CacheConfig, RevocationCache, SubjectToken, TokenLayer, TokenSource,
    TokenSourceConfig, Verifier, VerifierConfig,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::*;

#[path = "../../examples/common/mod.rs"]
mod orders;

const ISSUER: &str = "https://tessera.dev";

fn endpoints(c: &TestCluster) -> Vec<String> {
    c.nodes.values().map(|n| n.api_addr().to_string()).collect()
}

/// A resource server of the examples running as service `name`.
struct Resource {
    name: &'static str,
    addr: SocketAddr,
    cache: RevocationCache,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Resource {
    /// Serves as `name` (its certificate, audience `id(name)`), `Place`
    /// needing `place_scope`, refusing tokens when its revocation data is
    /// older than `max_staleness`. With `synced`, waits until the cache has
    /// its first snapshot.
    async fn start(
        c: &TestCluster,
        name: &'static str,
        place_scope: &str,
        max_staleness: Duration,
        cache_endpoints: Vec<String>,
        synced: bool,
    ) -> Self {
        let files = c.files(name);
        let mut cc = CacheConfig::new(cache_endpoints, files.clone());
        cc.clock = c.clock.clone();
        let cache = RevocationCache::start(cc).unwrap();
        let mut vc = VerifierConfig::new(endpoints(c), files.clone(), ISSUER, id(name));
        vc.clock = c.clock.clone();
        vc.max_staleness = max_staleness;
        let verifier = Arc::new(Verifier::new(vc, cache.clone()).unwrap());
        if synced {
            cache.wait_ready(WAIT).await.unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let auth = AuthLayer::new(verifier, orders::routes(place_scope));
        let task = tokio::spawn(async move {
            orders::serve(listener, &files, auth, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            name,
            addr,
            cache,
            stop: Some(stop),
            task,
        }
    }

    /// A channel to this server made with `caller`'s certificate.
    fn channel_as(&self, c: &TestCluster, caller: &str) -> Channel {
        tessera_client::endpoint(
            &self.addr.to_string(),
            &c.files(caller),
            Some(&format!("{}.tessera.dev", self.name)),
        )
        .unwrap()
        .connect_lazy()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
        self.cache.shutdown().await;
    }
}

fn source_as(c: &TestCluster, name: &str) -> Arc<TokenSource> {
    let mut cfg = TokenSourceConfig::new(endpoints(c), c.files(name));
    cfg.clock = c.clock.clone();
    Arc::new(TokenSource::new(cfg).unwrap())
}

/// Calls `path` with `authorization` set by hand (or not at all).
async fn call_raw(channel: Channel, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(orders::OrderRequest { item: "x".into() });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<orders::OrderRequest, orders::Receipt>::default();
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .unwrap_err()
}

/// Revokes `jti` as the admin; a leader that cannot confirm its quorum yet
/// answers `UNAVAILABLE`, then the next Raft metrics change is awaited and
/// the revocation tried again, within [`WAIT`] (as in t95_client).
async fn revoke(c: &TestCluster, jti: &str) -> u64 {
    let first = *c.nodes.keys().next().unwrap();
    let mut client = c.tokens_on(first, "admin").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.revoke(revoke_jti(jti)).await {
            Ok(r) => return r.into_inner().revision,
            Err(s) if s.code() == Code::Unavailable => {
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
async fn middleware_passes_claims_and_refuses_wrong_audience_scope_route_and_certificate() {
    let c = TestCluster::start(3).await;
    let orders_srv = Resource::start(&c, "orders", "orders:write", WAIT, endpoints(&c), true).await;
    let payments_srv =
        Resource::start(&c, "payments", "payments:charge", WAIT, endpoints(&c), true).await;
    let frontend = source_as(&c, "frontend");
    let tokens = TokenLayer::new(frontend.clone(), id("orders"), ["orders:write"]);
    let to_orders = orders_srv.channel_as(&c, "frontend");

    // A valid token: the handler sees the verified claims.
    let receipt = orders::call(to_orders.clone(), &tokens, orders::PLACE, "book", None)
        .await
        .unwrap();
    assert_eq!(receipt.item, "book");
    assert_eq!(receipt.subject, id("frontend"));
    assert_eq!(receipt.client_id, id("frontend"));
    assert_eq!(receipt.scope, "orders:write");
    assert!(receipt.chain.is_empty());
    // The token came from the source's cache the second time.
    let again = orders::call(to_orders.clone(), &tokens, orders::PLACE, "book", None)
        .await
        .unwrap();
    assert_eq!(again.jti, receipt.jti);

    // A method whose scope the token lacks.
    let s = orders::call(to_orders.clone(), &tokens, orders::REFUND, "book", None)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("orders:refund"), "{s:?}");

    // A path no rule names.
    let token = frontend
        .token(&id("orders"), &["orders:write"])
        .await
        .unwrap();
    let s = call_raw(to_orders.clone(), "/other.v1.Other/Get", Some(&token)).await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // No token at all.
    let s = call_raw(to_orders.clone(), orders::PLACE, None).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // Aimed at orders, presented to payments (by the right certificate).
    let to_payments = payments_srv.channel_as(&c, "frontend");
    let s = orders::call(to_payments, &tokens, orders::PLACE, "book", None)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("audience"), "{s:?}");

    // frontend's token presented over ledger's certificate.
    let s = call_raw(
        orders_srv.channel_as(&c, "ledger"),
        orders::PLACE,
        Some(&token),
    )
    .await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("another certificate"), "{s:?}");

    orders_srv.stop().await;
    payments_srv.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_refuses_a_delegated_token_once_its_ancestor_is_revoked() {
    let c = TestCluster::start(3).await;
    let payments_srv =
        Resource::start(&c, "payments", "payments:charge", WAIT, endpoints(&c), true).await;
    // frontend's token for orders; orders calls payments on its behalf.
    let t1 = source_as(&c, "frontend")
        .token(&id("orders"), &["orders:write", "payments:charge"])
        .await
        .unwrap();
    let tokens = TokenLayer::routes_only(source_as(&c, "orders")).route(
        format!("/{}/", orders::SERVICE),
        id("payments"),
        ["payments:charge"],
    );
    let to_payments = payments_srv.channel_as(&c, "orders");
    let on_behalf = || Some(SubjectToken(t1.clone()));

    let receipt = orders::call(
        to_payments.clone(),
        &tokens,
        orders::PLACE,
        "book",
        on_behalf(),
    )
    .await
    .unwrap();
    assert_eq!(receipt.subject, id("frontend"));
    assert_eq!(receipt.client_id, id("orders"));
    assert_eq!(receipt.chain.len(), 1);
    let t1_jti = receipt.chain[0].clone();

    // Revoke the ancestor; the exchanged token (still cached by the
    // caller) is refused once the server's cache has the event.
    let rev = revoke(&c, &t1_jti).await;
    payments_srv
        .cache
        .wait_for_revision(rev, WAIT)
        .await
        .unwrap();
    let s = orders::call(to_payments, &tokens, orders::PLACE, "book", on_behalf())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("revoked"), "{s:?}");

    payments_srv.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_refuses_while_revocation_data_is_stale_or_missing() {
    let c = TestCluster::start(3).await;
    let frontend = source_as(&c, "frontend");
    let tokens = TokenLayer::new(frontend, id("orders"), ["orders:write"]);

    // A bound of zero: any age of the cache's last message exceeds it, so
    // every token is refused as stale, without waiting for time to pass.
    let stale = Resource::start(
        &c,
        "orders",
        "orders:write",
        Duration::ZERO,
        endpoints(&c),
        true,
    )
    .await;
    let s = orders::call(
        stale.channel_as(&c, "frontend"),
        &tokens,
        orders::PLACE,
        "x",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("stale"), "{s:?}");
    stale.stop().await;

    // A cache that cannot reach the cluster never syncs: refused too.
    let unsynced = Resource::start(
        &c,
        "orders",
        "orders:write",
        WAIT,
        vec!["127.0.0.1:1".into()],
        false,
    )
    .await;
    let s = orders::call(
        unsynced.channel_as(&c, "frontend"),
        &tokens,
        orders::PLACE,
        "x",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("not synced"), "{s:?}");
    unsynced.stop().await;
    c.stop().await;
}
