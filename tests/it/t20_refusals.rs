//! Refusals: each with its stable code, and nothing issued.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use tonic::Code;

use crate::cluster::*;
use tessera::pb;
use tessera::token::{Audience, Claims, Confirmation};

fn b64json(v: &serde_json::Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

async fn exchange_err(c: &TestCluster, who: &str, req: pb::ExchangeTokenRequest) -> tonic::Status {
    match c.tokens(who).await.exchange_token(req).await {
        Ok(r) => panic!(
            "exchange unexpectedly succeeded: jti {}",
            r.into_inner().jti
        ),
        Err(e) => e,
    }
}

async fn exchange_code(c: &TestCluster, who: &str, req: pb::ExchangeTokenRequest) -> Code {
    exchange_err(c, who, req).await.code()
}

/// Claims like the ones `frontend` would get, signed by the cluster's key,
/// for forging variations.
fn frontend_claims(c: &TestCluster, thumbprint: &str) -> Claims {
    let now = c.now();
    Claims {
        iss: "https://tessera.dev".into(),
        sub: id("frontend"),
        aud: Audience::one(id("orders")),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: "forged-1".into(),
        scope: "orders:write payments:charge ledger:write".into(),
        client_id: id("frontend"),
        act: None,
        cnf: Some(Confirmation {
            x5t_s256: thumbprint.into(),
        }),
        may_act: None,
        chain: vec![],
        rev: None,
        ancestor_clients: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_rules_refuse_with_the_right_code() {
    let c = TestCluster::start(1).await;
    let (t1, t2, t3) = chain_of_three(&c).await;

    let _ = (&t2, &t3);
    // Scope widening: orders asks for a scope the subject token lacks.
    let req = exchange_req(&t1.access_token, "payments", &["payments:refund"]);
    let e = exchange_err(&c, "orders", req).await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("exceeds the subject token's scopes"),
        "{}",
        e.message()
    );
    // Audience not allowed by policy (orders may not aim at admin).
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.audience = vec![id("admin")];
    let e = exchange_err(&c, "orders", req).await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().starts_with("policy (exchange)"),
        "{}",
        e.message()
    );
    // Bound token from another certificate: ledger is neither the holder nor an audience of t1.
    assert_eq!(
        exchange_code(
            &c,
            "ledger",
            exchange_req(&t1.access_token, "payments", &["payments:charge"])
        )
        .await,
        Code::Unauthenticated
    );
    // Actor not the caller: orders presents an actor token that is frontend's.
    let mut req = exchange_req(&t1.access_token, "payments", &["payments:charge"]);
    req.actor_token = t1.access_token.clone();
    req.actor_token_type = AT.into();
    assert_eq!(
        exchange_code(&c, "orders", req).await,
        Code::Unauthenticated
    );
    // Empty scope request is not "all".
    assert_eq!(
        exchange_code(
            &c,
            "orders",
            exchange_req(&t1.access_token, "payments", &[])
        )
        .await,
        Code::InvalidArgument
    );

    // may_act: a token that names only payments as a permitted actor,
    // presented by orders.
    let ring = c.key_ring();
    let frontend_tp = {
        let r = c
            .tokens("admin")
            .await
            .introspect(introspect_req(&t1.access_token))
            .await
            .unwrap()
            .into_inner();
        r.cnf_x5t_s256
    };
    let mut claims = frontend_claims(&c, &frontend_tp);
    claims.jti = "may-act-1".into();
    claims.may_act = Some(tessera::token::MayAct {
        sub: vec![id("payments")],
    });
    let tok = ring.signer().unwrap().sign(&claims).unwrap();
    assert_eq!(
        exchange_code(
            &c,
            "orders",
            exchange_req(&tok, "payments", &["payments:charge"])
        )
        .await,
        Code::PermissionDenied
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_beyond_the_limit_is_refused() {
    // Allow one exchange only: the chain's second exchange is one too deep.
    let c = TestCluster::start_with(1, |cfg| cfg.token.max_depth = 1).await;
    let t1 = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["payments:charge", "ledger:write"]))
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
    let e = exchange_err(
        &c,
        "payments",
        exchange_req(&t2.access_token, "ledger", &["ledger:write"]),
    )
    .await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("depth"), "{}", e.message());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_unauthenticated_and_inactive() {
    let c = TestCluster::start(1).await;
    let (t1, _, _) = chain_of_three(&c).await;
    let ring = c.key_ring();
    let signer = ring.signer().unwrap();
    let tp = c
        .tokens("admin")
        .await
        .introspect(introspect_req(&t1.access_token))
        .await
        .unwrap()
        .into_inner()
        .cnf_x5t_s256;
    let kid = signer.kid().to_string();
    let good = frontend_claims(&c, &tp);
    let payload = b64json(&serde_json::to_value(&good).unwrap());

    let mut forged: Vec<(&str, String)> = Vec::new();
    // Wrong issuer.
    let mut cl = good.clone();
    cl.iss = "https://evil.example".into();
    forged.push(("wrong issuer", signer.sign(&cl).unwrap()));
    // Expired (beyond leeway).
    let mut cl = good.clone();
    cl.exp = c.now() - 120;
    cl.iat = c.now() - 600;
    cl.nbf = cl.iat;
    forged.push(("expired", signer.sign(&cl).unwrap()));
    // Not yet valid.
    let mut cl = good.clone();
    cl.nbf = c.now() + 600;
    forged.push(("nbf in the future", signer.sign(&cl).unwrap()));
    // alg none.
    forged.push((
        "alg none",
        format!(
            "{}.{}.",
            b64json(&serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid})),
            payload
        ),
    ));
    // HS256 keyed with our public key (the classic confusion attack).
    {
        let header = b64json(&serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid}));
        let input = format!("{header}.{payload}");
        let jwks = c
            .keys("ledger")
            .await
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner();
        let v: serde_json::Value = serde_json::from_str(&jwks.jwks_json).unwrap();
        let public = B64.decode(v["keys"][0]["x"].as_str().unwrap()).unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        forged.push((
            "HS256 with the public key",
            format!("{input}.{}", B64.encode(tag.as_ref())),
        ));
    }
    // Unknown kid: re-sign header with another kid (signature stays ours but kid unknown).
    {
        let parts: Vec<&str> = t1.access_token.split('.').collect();
        let header =
            b64json(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"no-such-key"}));
        forged.push(("unknown kid", format!("{header}.{}.{}", parts[1], parts[2])));
    }
    // A crit header.
    {
        let parts: Vec<&str> = t1.access_token.split('.').collect();
        let header =
            b64json(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":kid,"crit":["exp"]}));
        forged.push(("crit header", format!("{header}.{}.{}", parts[1], parts[2])));
    }
    // A jwk header (key from the token).
    {
        let parts: Vec<&str> = t1.access_token.split('.').collect();
        let header = b64json(
            &serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":kid,"jwk":{"kty":"OKP"}}),
        );
        forged.push(("jwk header", format!("{header}.{}.{}", parts[1], parts[2])));
    }
    // Tampered payload.
    {
        let parts: Vec<&str> = t1.access_token.split('.').collect();
        let mut cl = good.clone();
        cl.scope = "orders:write admin:everything".into();
        forged.push((
            "tampered",
            format!(
                "{}.{}.{}",
                parts[0],
                b64json(&serde_json::to_value(&cl).unwrap()),
                parts[2]
            ),
        ));
    }
    // A 1 MB token and a million dots.
    forged.push(("1 MB", "a".repeat(1024 * 1024)));
    forged.push(("a million dots", ".".repeat(1_000_000)));

    let mut ledger = c.tokens("admin").await;
    for (what, tok) in &forged {
        let mut req = exchange_req(tok, "payments", &["payments:charge"]);
        req.subject_token = tok.clone();
        let code = exchange_code(&c, "orders", req).await;
        assert_eq!(code, Code::Unauthenticated, "exchange of {what}");
        let r = ledger
            .introspect(introspect_req(tok))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.active, "introspection of {what}");
        assert_eq!(r.sub, "", "inactive answers carry no claims ({what})");
    }
    // Sanity: the untampered forging path does produce an acceptable token,
    // so the refusals above are about what was changed.
    let ok = signer.sign(&good).unwrap();
    assert!(
        ledger
            .introspect(introspect_req(&ok))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_follows_the_clock() {
    let c = TestCluster::start(1).await;
    let t1 = c
        .tokens("frontend")
        .await
        .issue_token(pb::IssueTokenRequest {
            lifetime_seconds: 60,
            ..issue_req("orders", &["orders:write"])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t1.expires_in, 60);
    let mut ledger = c.tokens("admin").await;
    assert!(
        ledger
            .introspect(introspect_req(&t1.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    c.clock.advance(60 + 31); // past exp and the 30 s leeway
    assert!(
        !ledger
            .introspect(introspect_req(&t1.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    assert_eq!(
        exchange_code(
            &c,
            "orders",
            exchange_req(&t1.access_token, "payments", &["orders:write"])
        )
        .await,
        Code::Unauthenticated
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument() {
    let c = TestCluster::start(1).await;
    let mut fe = c.tokens("frontend").await;
    let e = fe
        .issue_token(pb::IssueTokenRequest {
            audience: vec![],
            scope: vec!["orders:write".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = fe.issue_token(issue_req("orders", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = fe.introspect(introspect_req("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = fe
        .revoke(pb::RevokeRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut req = exchange_req("x.y.z", "payments", &["a"]);
    req.grant_type = "password".into();
    assert_eq!(
        fe.exchange_token(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Policy: frontend may not issue for the admin audience.
    let e = fe
        .issue_token(issue_req("admin", &["orders:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nobody may revoke another service's subject except admin.
    let e = fe
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Subject(id("orders"))),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    c.stop().await;
}

/// A call that runs out of its deadline (`grpc-timeout`) ends with
/// `DEADLINE_EXCEEDED`. tonic's server timeout answered `CANCELLED`
/// ("Timeout expired"): a code the API's table does not list, and the one
/// the metrics count as "the client left". Sent with a raw HTTP/2 client,
/// so that only the server's answer is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_was_answered_cancelled() {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use prost::Message as _;

    use crate::t44_https::{client_tls, tls_connect};
    let c = TestCluster::start(1).await;
    c.wait_ready(&[1]).await;
    let addr = c.node(1).api_addr();
    let files = c.files("orders");
    let stream = tls_connect(addr, client_tls(&files.ca, Some(&files), b"h2")).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // A revision far ahead: the handler would wait (up to its own bound,
    // 5 s) longer than the caller's 300 ms.
    let msg = pb::IntrospectRequest {
        min_revision: u64::MAX,
        ..introspect_req("any-token")
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{addr}/tessera.v1.TokenService/Introspect"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(hyper::body::Bytes::from(framed)))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    conn.abort();
    assert_eq!(
        field("grpc-status").as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED; grpc-message: {:?}",
        field("grpc-message")
    );
    c.stop().await;
}

/// A node signed tokens larger than the size every verifier (itself
/// included) accepts: with long identities and a deep delegation chain an
/// exchange succeeded and handed out a token nothing would take. It now
/// refuses to mint one, with a clear status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_minted_tokens_too_large_for_any_verifier() {
    let c = TestCluster::start_with(1, |cfg| cfg.token.max_token_len = 512).await;
    let e = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("512 bytes"), "{e:?}");
    c.stop().await;
}

/// A revocation of a token that does not verify is RFC 7009's success with
/// nothing changed, and it used to leave no audit record: a caller probing
/// with forged tokens was invisible but for the rate-limit counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_of_a_forged_token_left_no_audit_record() {
    use pb::revoke_request::Target;
    let c = TestCluster::start(1).await;
    let (t1, _, _) = chain_of_three(&c).await;
    let parts: Vec<&str> = t1.access_token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "orders:write admin:everything".into();
    let tampered = format!("{}.{}.{}", parts[0], b64json(&claims), parts[2]);
    let unknown_kid = format!(
        "{}.{}.{}",
        b64json(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"no-such-key"})),
        parts[1],
        parts[2]
    );
    let mut admin = c.tokens("admin").await;
    for target in [
        Target::Token(tampered.clone()),
        Target::ChainOfToken(unknown_kid.clone()),
    ] {
        let r = admin
            .revoke(pb::RevokeRequest {
                target: Some(target),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.changed && r.revision == 0 && r.jtis.is_empty(), "{r:?}");
    }
    // The genuine token was not touched by either.
    let r = admin
        .introspect(introspect_req(&t1.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active);
    c.stop_audit_and_read(|text| {
        assert!(!text.contains(&tampered) && !text.contains(&unknown_kid));
        assert!(
            !text.contains(parts[2]),
            "a signature reached the audit log"
        );
        let refused: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["op"] == "revoke")
            .collect();
        assert_eq!(refused.len(), 2, "{text}");
        for l in &refused {
            assert_eq!(l["caller"], id("admin"));
            assert_eq!(l["decision"], "allow", "answered, as RFC 7009 asks");
            assert!(l.get("revision").is_none() && l.get("subject_jti").is_none());
            let reason = l["reason"].as_str().unwrap();
            assert!(reason.starts_with("nothing to revoke: "), "{reason}");
        }
    })
    .await;
}
