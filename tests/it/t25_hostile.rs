//! Hostile callers: each test is named after what broke (issue 8) and
//! asserts the exact status, and that nothing was issued or changed.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::cluster::*;
use tessera::pb;
use tessera::pb::revoke_request::Target;

/// Far above the few milliseconds a refusal takes, far below the minute
/// the quadratic de-duplication took: a bound, not a measurement.
const REFUSAL_BOUND: Duration = Duration::from_secs(5);

/// `n` distinct short names.
fn many(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_scopes_or_audiences_stalled_the_node() {
    let c = TestCluster::start(1).await;
    // Any certificate will do; ledger may issue nothing at all.
    let mut attacker = c.tokens("ledger").await;
    let mut other = c.tokens("frontend").await;
    let big_scopes = pb::IssueTokenRequest {
        audience: vec![id("orders")],
        scope: many("s", 100_000),
        ..Default::default()
    };
    let big_audiences = pb::ExchangeTokenRequest {
        subject_token: "x.y.z".into(),
        subject_token_type: AT.into(),
        audience: many("a", 100_000),
        scope: vec!["payments:charge".into()],
        ..Default::default()
    };
    let big_scope_exchange = pb::ExchangeTokenRequest {
        audience: vec![id("payments")],
        scope: many("s", 100_000),
        ..big_audiences.clone()
    };
    // Another client's IssueToken keeps being answered meanwhile.
    let others = async {
        for _ in 0..5 {
            let t = other
                .issue_token(issue_req("orders", &["orders:write"]))
                .await
                .expect("the other client is answered");
            assert!(!t.into_inner().access_token.is_empty());
        }
    };
    let attacks = async {
        let started = Instant::now();
        let e = attacker.issue_token(big_scopes).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert_eq!(e.message(), "too many scope entries (at most 64)");
        let e = attacker
            .exchange_token(big_audiences.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert_eq!(e.message(), "too many audience entries (at most 16)");
        let e = attacker
            .exchange_token(big_scope_exchange)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        // The same 100k audiences as RFC 8707 resources.
        let e = attacker
            .exchange_token(pb::ExchangeTokenRequest {
                audience: vec![],
                resource: many("r", 100_000),
                ..big_audiences
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        started.elapsed()
    };
    let ((), took) = tokio::join!(others, attacks);
    eprintln!("four 100k-item refusals took {took:?}");
    assert!(took < REFUSAL_BOUND, "four refusals took {took:?}");
    // Nothing was issued to the attacker.
    c.stop_audit_and_read(|audit| {
        let ledger = id("ledger");
        for l in audit.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(
                !(v["caller"] == ledger.as_str() && v["issued_jti"].is_string()),
                "{l}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_was_out_of_range_and_bad_protobuf_was_internal() {
    let c = TestCluster::start(1).await;
    let mut fe = c.tokens("frontend").await;
    // 3 MiB, above the 2 MiB limit.
    let e = fe
        .issue_token(pb::IssueTokenRequest {
            audience: vec!["a".repeat(3 << 20)],
            scope: vec!["orders:write".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("limit"), "{}", e.message());

    // Bytes that are not an IssueTokenRequest: field 1 claims 100 bytes.
    let ch = c.channel_as(1, &c.files("frontend")).await;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<Vec<u8>, pb::TokenResponse, _>(
            tonic::Request::new(vec![0x0a, 100, b'x']),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/tessera.v1.TokenService/IssueToken",
            ),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("malformed protobuf"),
        "{}",
        e.message()
    );

    // The connection and the node are fine afterwards.
    fe.issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subject_token_type_was_accepted() {
    let c = TestCluster::start(1).await;
    let (t1, _, _) = chain_of_three(&c).await;
    let mut orders = c.tokens("orders").await;
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.subject_token_type = String::new();
    let e = orders.exchange_token(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "subject_token_type is required");
    // An actor token without its type (RFC 8693 §2.1 requires it).
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.actor_token = t1.access_token.clone();
    let e = orders.exchange_token(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Missing subject token.
    let e = orders
        .exchange_token(exchange_req("", "payments", &["payments:charge"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.stop_audit_and_read(|audit| {
        // Refused before any work: not even an audit record of an exchange
        // beyond the chain's two.
        let n = audit
            .lines()
            .filter(|l| l.contains("\"op\":\"exchange\""))
            .count();
        assert_eq!(n, 2, "{audit}");
    })
    .await;
}

async fn is_active(
    admin: &mut pb::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    t: &pb::TokenResponse,
) -> bool {
    admin
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner()
        .active
}

fn chain_of(t: &pb::TokenResponse) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(Target::ChainOfToken(t.access_token.clone())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_chain_revocation_revoked_the_upstream_root() {
    let c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;
    // A sibling branch: orders exchanges frontend's root a second time.
    let sibling = c
        .tokens("orders")
        .await
        .exchange_token(exchange_req(
            &t1.access_token,
            "payments",
            &["payments:charge"],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut admin = c.tokens("admin").await;

    // ledger owns nothing in the chain: refused, nothing changed.
    let before = c.revoked(1);
    let e = c
        .tokens("ledger")
        .await
        .revoke(chain_of(&t3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(c.revoked(1), before);

    // payments revokes the chain of its own token: only that token.
    let r = c
        .tokens("payments")
        .await
        .revoke(chain_of(&t3))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.jtis, vec![t3.jti.clone()]);
    assert!(!is_active(&mut admin, &t3).await);
    assert!(is_active(&mut admin, &t1).await, "frontend's root survives");
    assert!(is_active(&mut admin, &t2).await, "orders' token survives");
    assert!(
        is_active(&mut admin, &sibling).await,
        "the sibling branch survives"
    );

    // frontend is the chain's subject: it owns every ancestor.
    let r = c
        .tokens("frontend")
        .await
        .revoke(chain_of(&t2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.jtis, vec![t1.jti.clone(), t2.jti.clone()]);
    for t in [&t1, &t2, &sibling] {
        assert!(!is_active(&mut admin, t).await, "{}", t.jti);
    }

    // The admin revokes whole chains whoever owns them.
    let (u1, u2, u3) = chain_of_three(&c).await;
    let r = admin.revoke(chain_of(&u3)).await.unwrap().into_inner();
    assert_eq!(r.jtis, vec![u1.jti.clone(), u2.jti.clone(), u3.jti.clone()]);
    for t in [&u1, &u2, &u3] {
        assert!(!is_active(&mut admin, t).await, "{}", t.jti);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_service_could_read_any_token() {
    let c = TestCluster::start(1).await;
    let (t1, _t2, t3) = chain_of_three(&c).await;
    let inactive = |r: &pb::IntrospectResponse| pb::IntrospectResponse {
        active: false,
        revision: r.revision,
        linearizable: true,
        ..Default::default()
    };
    // ledger is not an audience of frontend's token: it learns nothing.
    let r = c
        .tokens("ledger")
        .await
        .introspect(introspect_req(&t1.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, inactive(&r));
    // Nor does payments, the holder of t3, which is aimed at ledger.
    let r = c
        .tokens("payments")
        .await
        .introspect(introspect_req(&t3.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, inactive(&r));
    // The audience does, and so does the admin.
    for who in ["orders", "admin"] {
        let r = c
            .tokens(who)
            .await
            .introspect(introspect_req(&t1.access_token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.active, "{who}");
        assert_eq!(r.sub, id("frontend"));
    }
    let r = c
        .tokens("ledger")
        .await
        .introspect(introspect_req(&t3.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active);
    assert_eq!(r.act.unwrap().sub, id("payments"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_above_the_maximum_was_silently_clamped() {
    // The cluster allows two hours; the example policy one.
    let c = TestCluster::start_with(1, |cfg| cfg.token.max_lifetime = 7200).await;
    let mut fe = c.tokens("frontend").await;
    let with = |l: u64| pb::IssueTokenRequest {
        lifetime_seconds: l,
        ..issue_req("orders", &["orders:write"])
    };
    let e = fe.issue_token(with(5000)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().ends_with("forbidden by limit-lifetime"),
        "{}",
        e.message()
    );
    let e = fe.issue_token(with(7201)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "lifetime_seconds 7201 is above this cluster's maximum of 7200"
    );
    assert_eq!(
        fe.issue_token(with(3600))
            .await
            .unwrap()
            .into_inner()
            .expires_in,
        3600
    );
    let t1 = fe
        .issue_token(issue_req("orders", &["payments:charge"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t1.expires_in, 300, "the default when none is asked for");

    // Exchange: the same rule applies to the requested lifetime.
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.lifetime_seconds = 5000;
    let e = c
        .tokens("orders")
        .await
        .exchange_token(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("limit-lifetime"), "{}", e.message());
    // Within the limits, shortened only to the subject's remaining lifetime.
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.lifetime_seconds = 3600;
    let t2 = c.tokens("orders").await.exchange_token(req).await.unwrap();
    assert_eq!(t2.into_inner().expires_in, 300);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_could_not_set_may_act() {
    let c = TestCluster::start(1).await;
    let mut fe = c.tokens("frontend").await;
    let with = |may_act: &[&str]| pb::IssueTokenRequest {
        may_act: may_act.iter().map(|n| id(n)).collect(),
        ..issue_req("orders", &["payments:charge", "ledger:write"])
    };
    // Only orders may act: orders' exchange works, payments' next hop not.
    let t1 = fe
        .issue_token(with(&["orders"]))
        .await
        .unwrap()
        .into_inner();
    let t2 = c
        .tokens("orders")
        .await
        .exchange_token(exchange_req(
            &t1.access_token,
            "payments",
            &["ledger:write"],
        ))
        .await
        .unwrap()
        .into_inner();
    let e = c
        .tokens("payments")
        .await
        .exchange_token(exchange_req(&t2.access_token, "ledger", &["ledger:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("may_act"), "{}", e.message());
    // Naming the whole chain lets it through.
    let t1 = fe
        .issue_token(with(&["orders", "payments"]))
        .await
        .unwrap()
        .into_inner();
    let t2 = c
        .tokens("orders")
        .await
        .exchange_token(exchange_req(
            &t1.access_token,
            "payments",
            &["ledger:write"],
        ))
        .await
        .unwrap()
        .into_inner();
    c.tokens("payments")
        .await
        .exchange_token(exchange_req(&t2.access_token, "ledger", &["ledger:write"]))
        .await
        .unwrap();

    // Policy sees may_act: require frontend's tokens to name orders.
    let policy = format!(
        "{POLICY}\n@id(\"frontend-names-orders\")\nforbid (principal == Tessera::Service::\"{}\", action == Tessera::Action::\"issue\", resource)\nunless {{ context.may_act.contains(\"{}\") }};\n",
        id("frontend"),
        id("orders")
    );
    c.admin(1)
        .await
        .put_policy(pb::PutPolicyRequest {
            text: policy,
            expected_version: None,
        })
        .await
        .unwrap();
    let e = fe.issue_token(with(&[])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().ends_with("forbidden by frontend-names-orders"),
        "{}",
        e.message()
    );
    fe.issue_token(with(&["orders"])).await.unwrap();
    // Too many or malformed may_act entries are refused before policy.
    let e = fe
        .issue_token(pb::IssueTokenRequest {
            may_act: (0..17).map(|i| format!("{}{i}", id("x"))).collect(),
            ..issue_req("orders", &["orders:write"])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.stop().await;
}

/// Sends bytes as they are and decodes replies with prost.
#[derive(Clone, Copy)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::TokenResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = pb::TokenResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::TokenResponse>, tonic::Status> {
        use prost::Message;
        pb::TokenResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}
