//! Mutual TLS at the door: no certificate, an untrusted CA or an expired
//! certificate gets no answer; the identity comes from the certificate.

use std::time::{Duration, SystemTime};

use tessera::certs::{issue_leaf, LeafSpec};
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::tls::TlsFiles;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::cluster::*;

async fn call_with(c: &TestCluster, tls: ClientTlsConfig) -> Result<(), String> {
    let ep = Endpoint::from_shared(format!("https://{}", c.node(1).api_addr()))
        .unwrap()
        .tls_config(tls.domain_name("localhost"))
        .unwrap();
    let ch = ep.connect().await.map_err(|e| e.to_string())?;
    TokenServiceClient::new(ch)
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .map(|_| ())
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

fn write_pair(
    dir: &std::path::Path,
    name: &str,
    (cert, key): (String, String),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let c = dir.join(format!("{name}.pem"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_good_certificate_are_refused() {
    let c = TestCluster::start(1).await;
    let ca = Certificate::from_pem(std::fs::read(&c.pki.ca_cert).unwrap());

    // Control: the right certificate works.
    let good = c.files("frontend");
    let id_pem = tonic::transport::Identity::from_pem(
        std::fs::read(&good.cert).unwrap(),
        std::fs::read(&good.key).unwrap(),
    );
    call_with(
        &c,
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(id_pem),
    )
    .await
    .unwrap();

    // No client certificate.
    assert!(
        call_with(&c, ClientTlsConfig::new().ca_certificate(ca.clone()))
            .await
            .is_err()
    );

    // A certificate from another CA with a plausible identity.
    let (other_ca, other_key) = tessera::certs::self_signed_ca("evil CA").unwrap();
    let spec = LeafSpec {
        uris: vec![id("frontend")],
        client_auth: true,
        ..LeafSpec::new("frontend")
    };
    let (cert, key) = write_pair(
        c.dir.path(),
        "evil",
        issue_leaf(&other_ca, &other_key, &spec).unwrap(),
    );
    let ident = tonic::transport::Identity::from_pem(
        std::fs::read(&cert).unwrap(),
        std::fs::read(&key).unwrap(),
    );
    assert!(call_with(
        &c,
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(ident)
    )
    .await
    .is_err());

    // An expired certificate from the right CA.
    let ca_pem = std::fs::read_to_string(&c.pki.ca_cert).unwrap();
    let ca_key = std::fs::read_to_string(&c.pki.ca_key).unwrap();
    let day = Duration::from_secs(86_400);
    let spec = LeafSpec {
        uris: vec![id("frontend")],
        client_auth: true,
        ..LeafSpec::new("frontend")
    }
    .valid_between(SystemTime::now() - 30 * day, SystemTime::now() - day);
    let (cert, key) = write_pair(
        c.dir.path(),
        "expired",
        issue_leaf(&ca_pem, &ca_key, &spec).unwrap(),
    );
    let ident = tonic::transport::Identity::from_pem(
        std::fs::read(&cert).unwrap(),
        std::fs::read(&key).unwrap(),
    );
    assert!(call_with(
        &c,
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(ident)
    )
    .await
    .is_err());

    // A fresh certificate from the right CA for a new identity works, and
    // that identity is what policy sees (no policy for it: denied).
    let spec = LeafSpec {
        uris: vec![format!("{TD}/svc/stranger")],
        client_auth: true,
        ..LeafSpec::new("stranger")
    };
    let (cert, key) = write_pair(
        c.dir.path(),
        "stranger",
        issue_leaf(&ca_pem, &ca_key, &spec).unwrap(),
    );
    let files = TlsFiles {
        ca: c.pki.ca_cert.clone(),
        cert,
        key,
    };
    let mut stranger = TokenServiceClient::new(c.channel_as(1, &files).await);
    let e = stranger
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    c.stop().await;
}

/// DESIGN: the Raft listener "accepts only cluster members". Any holder of
/// a certificate of the cluster CA (every service has one) could open a
/// unary Raft call and have the node read its body — up to the Raft
/// transport's 64 MiB per message, with no deadline and no cap on streams
/// per connection — before the membership check ran in the handler. Here
/// `frontend` announces a 48 MiB `AppendEntries`, sends 1 MiB of it and
/// waits: a member-only port refuses at the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_certificate_had_its_raft_call_body_read_before_refusal() {
    use std::convert::Infallible;

    use http_body_util::StreamBody;
    use hyper::body::{Bytes, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use crate::t44_https::{client_tls, tls_connect};

    let c = TestCluster::start(1).await;
    c.wait_ready(&[1]).await;
    let addr: std::net::SocketAddr = c.raft_addr(1).parse().unwrap();
    let files = c.files("frontend");
    let stream = tls_connect(addr, client_tls(&files.ca, Some(&files), b"h2")).await;
    type Body =
        StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    // Control: a complete (empty) call with the same certificate is refused
    // at once.
    let call = |body: Body| {
        http::Request::post(format!(
            "https://{addr}/tessera.raft.v1.RaftService/AppendEntries"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
    };
    let grpc_status = |r: &http::Response<hyper::body::Incoming>| {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))))
            .await
            .unwrap();
        drop(tx);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::time::timeout(WAIT, sender.ready())
            .await
            .unwrap()
            .unwrap();
        let reply = tokio::time::timeout(WAIT, sender.send_request(call(body)))
            .await
            .expect("a complete call is answered")
            .unwrap();
        assert_eq!(grpc_status(&reply).as_deref(), Some("7"), "{reply:?}");
    }

    // A 48 MiB message, of which 1 MiB is sent; the sender stays open.
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    let declared: u32 = 48 << 20;
    let mut head = vec![0u8];
    head.extend_from_slice(&declared.to_be_bytes());
    tx.try_send(Ok(Frame::data(Bytes::from(head)))).unwrap();
    for _ in 0..16 {
        tx.try_send(Ok(Frame::data(Bytes::from(vec![0x5a; 64 << 10]))))
            .unwrap();
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::time::timeout(WAIT, sender.ready())
        .await
        .unwrap()
        .unwrap();
    let reply =
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(call(body))).await;
    match reply {
        Ok(Ok(r)) => assert_eq!(grpc_status(&r).as_deref(), Some("7"), "{r:?}"),
        Ok(Err(e)) => panic!("the call failed without an answer: {e}"),
        Err(_) => panic!(
            "no answer within 10 s: the node is reading a 48 MiB Raft message from \
             spiffe://tessera.dev/svc/frontend, a service, before refusing it"
        ),
    }
    drop(tx);
    c.stop().await;
}
