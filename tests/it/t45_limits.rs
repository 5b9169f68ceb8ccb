//! Hostile callers at the transport and rate level: per-caller rate
//! limits, the per-identity share of watch slots, both reflection versions,
//! and connections that complete TLS but never speak HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tessera::api::RETRY_AFTER_METADATA;
use tessera::pb::{self, revocation_service_client::RevocationServiceClient};
use tokio::io::AsyncReadExt as _;
use tonic::Code;

use crate::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_could_issue_without_any_rate_limit() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.limits.rate.apply("issue=1/3").unwrap();
    })
    .await;
    let mut frontend = c.tokens("frontend").await;
    let req = || issue_req("orders", &["orders:write"]);
    let first = frontend.issue_token(req()).await.unwrap().into_inner();
    for _ in 0..2 {
        frontend.issue_token(req()).await.unwrap();
    }
    // The burst is spent; at one per second the next call is refused (on a
    // slow machine a second may have passed and refilled one: a few tries).
    let mut refused = None;
    for _ in 0..10 {
        if let Err(s) = frontend.issue_token(req()).await {
            refused = Some(s);
            break;
        }
    }
    let refused = refused.expect("a flood of IssueToken was never refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("issue"), "{}", refused.message());
    let retry_ms: u64 = refused
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .expect("retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_ms > 0 && retry_ms <= 1000, "{retry_ms}");
    // Counted, for the metrics.
    let limiter = c.node(1).rate_limiter();
    assert!(limiter.refusals(tessera::api::RpcClass::Issue) >= 1);
    assert_eq!(limiter.refusals(tessera::api::RpcClass::Introspect), 0);

    // Other classes of the same caller, and other callers, are not touched:
    // their calls reach the handlers (here: policy says no to `orders`).
    frontend
        .introspect(introspect_req(&first.access_token))
        .await
        .unwrap();
    let other = c
        .tokens("orders")
        .await
        .issue_token(req())
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_could_take_every_watch_slot() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.watch.max_per_identity = 2;
    })
    .await;
    let watch = |name: &'static str| {
        let c = &c;
        async move {
            let ch = c.channel_as(1, &c.files(name)).await;
            RevocationServiceClient::new(ch)
                .watch_revocations(pb::WatchRequest {
                    from_revision: 0,
                    ..Default::default()
                })
                .await
        }
    };
    let _a = watch("ledger").await.unwrap();
    let b = watch("ledger").await.unwrap();
    let e = watch("ledger").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another identity still gets a slot.
    let _other = watch("admin").await.unwrap();
    // A slot given back is free again (the server notices the dropped
    // stream asynchronously: retry, bounded).
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match watch("ledger").await {
            Ok(_s) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    c.stop().await;
}

/// The services a reflection client lists, per protocol version.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::once(req))
            .await
            .map_err(|s| s.code())?
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        match resp.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
                names.sort();
                Ok::<_, Code>(names)
            }
            other => panic!("{other:?}"),
        }
    }};
}

async fn services_v1(ch: tonic::transport::Channel) -> Result<Vec<String>, Code> {
    list_services!(v1, ch)
}

async fn services_v1alpha(ch: tonic::transport::Channel) -> Result<Vec<String>, Code> {
    list_services!(v1alpha, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_was_unimplemented_and_health_unlisted() {
    let c = TestCluster::start(1).await;
    let ch = c.channel_as(1, &c.files("orders")).await;
    let want = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tessera.v1.AdminService",
        "tessera.v1.KeyService",
        "tessera.v1.RevocationService",
        "tessera.v1.TokenService",
    ];
    assert_eq!(services_v1(ch.clone()).await.unwrap(), want);
    assert_eq!(services_v1alpha(ch).await.unwrap(), want);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_silent_after_tls_kept_its_connection() {
    let bound = Duration::from_secs(1);
    let c = TestCluster::start_with(1, move |cfg| {
        cfg.limits.accept.preface_timeout = bound;
    })
    .await;
    let addr = c.node(1).api_addr();
    let tls = tessera::tls::client_config(&c.files("orders")).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut silent = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // A normal client is served meanwhile.
    let mut frontend = c.tokens("frontend").await;
    frontend
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap();
    // The silent one is closed: EOF (or a reset) within 5x the bound.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(5 * bound, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection still open after {:?}",
        5 * bound
    );
    // And the normal client still works.
    frontend
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap();
    c.stop().await;
}

/// `grpc.health.v1.Health/Watch` never ends by itself and is not rate
/// limited (probes must get answers); it used to be bounded by nothing,
/// so one caller could hold as many as every HTTP/2 stream slot of every
/// connection it may open (~6 KiB of node memory each). Such streams now
/// take the same slots as `WatchRevocations`, and give them back when they
/// end; `Health/Check` (what probes call) is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_held_health_watch_streams_without_any_bound() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    // Health streams: a pool of a tenth of these, at least one each.
    let c = TestCluster::start_with(1, |cfg| {
        cfg.watch.max_per_identity = 20;
        cfg.watch.max_subscribers = 30;
    })
    .await;
    c.wait_ready(&[1]).await;
    let orders = c.channel_as(1, &c.files("orders")).await;
    let watch = |ch: &tonic::transport::Channel| {
        let mut h = HealthClient::new(ch.clone());
        async move {
            tokio::time::timeout(
                WAIT,
                h.watch(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            .expect("answered")
            .map(tonic::Response::into_inner)
        }
    };
    let first = watch(&orders).await.unwrap();
    let _second = watch(&orders).await.unwrap();
    let e = watch(&orders).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Node-wide: three in all.
    let ledger = c.channel_as(1, &c.files("ledger")).await;
    let _third = watch(&ledger).await.unwrap();
    let e = watch(&ledger).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("at most 3"), "{e:?}");
    // Health streams crowd out no revocation subscriber: ledger still opens
    // its whole share of those.
    let mut watchers = Vec::new();
    for _ in 0..20 {
        watchers.push(
            RevocationServiceClient::new(ledger.clone())
                .watch_revocations(pb::WatchRequest::default())
                .await
                .unwrap(),
        );
    }
    // Probes are never refused.
    let check = HealthClient::new(orders.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().status, 1, "SERVING");
    // A stream that ends gives its slot back.
    drop(first);
    let again = tokio::time::timeout(WAIT, async {
        loop {
            match watch(&orders).await {
                Ok(s) => return s,
                // The server notices the reset asynchronously.
                Err(e) if e.code() == Code::ResourceExhausted => tokio::task::yield_now().await,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("the ended stream's slot is given back");
    drop(again);
    c.stop().await;
}

/// DESIGN: idle connections are closed. A client that opened a connection
/// and then only answered the node's pings held its slot forever (the
/// connection caps then filled for good). Connections are now drained at
/// a maximum age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_was_kept_forever() {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use crate::t44_https::{client_tls, tls_connect};
    let c = TestCluster::start_with(1, |cfg| {
        cfg.limits.http2.max_connection_age = Duration::from_secs(1);
        cfg.limits.http2.max_connection_age_grace = Duration::from_secs(1);
    })
    .await;
    c.wait_ready(&[1]).await;
    let files = c.files("orders");
    let stream = tls_connect(
        c.node(1).api_addr(),
        client_tls(&files.ca, Some(&files), b"h2"),
    )
    .await;
    let (sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<hyper::body::Bytes>,
    >(TokioExecutor::new(), TokioIo::new(stream))
    .await
    .unwrap();
    // The client keeps its end open and answers pings; only the server can
    // end the connection.
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the node closed the idle connection")
        .ok();
    drop(sender);
    // And the node still serves new connections.
    c.tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap();
    c.stop().await;
}
