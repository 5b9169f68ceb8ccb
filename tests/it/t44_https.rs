//! The HTTPS discovery listener, fetched the way off-the-shelf software
//! does: a plain HTTP client (hyper) over server-authenticated TLS, no
//! client certificate. The JWKS and RFC 8414 metadata it serves verify a
//! real token with an independent JOSE library (jsonwebtoken).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tessera::tls::TlsFiles;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cluster::*;

/// A TLS client trusting `ca`, presenting `client` if given, offering
/// `alpn`.
pub fn client_tls(
    ca: &std::path::Path,
    client: Option<&TlsFiles>,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    init_crypto();
    let mut config = match client {
        Some(files) => (*tessera::tls::client_config(files).unwrap()).clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(ca).unwrap();
            for cert in rustls_pemfile_certs(&pem) {
                roots.add(cert).unwrap();
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Connects with TLS to `addr` (server name `localhost`, on every node
/// certificate).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

/// The leaf certificate (DER) a new TLS connection to `addr` is served,
/// authenticating with `files` (every Tessera port accepts a trusted
/// client).
pub async fn served_leaf(addr: SocketAddr, files: &TlsFiles) -> Vec<u8> {
    let s = tls_connect(addr, client_tls(&files.ca, Some(files), b"h2")).await;
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One request over a new HTTP/1.1 connection without a client certificate.
pub async fn https(
    addr: SocketAddr,
    ca: &std::path::Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Reply {
    https_as(addr, ca, None, method, path, body).await
}

/// One request over a new HTTP/1.1 connection, presenting `client` if
/// given.
pub async fn https_as(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<&TlsFiles>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(body))
        .unwrap();
    send_http1(addr, ca, client, req).await
}

/// Sends `req` over a new HTTP/1.1 connection, presenting `client` if
/// given, and reads the whole reply.
pub async fn send_http1(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<&TlsFiles>,
    req: Request<Full<Bytes>>,
) -> Reply {
    let stream = tls_connect(addr, client_tls(ca, client, b"http/1.1")).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let reply = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("HTTP reply in time")
        .unwrap();
    let status = reply.status();
    let headers = reply.headers().clone();
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    conn.abort();
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET path` over HTTP/1.1.
pub async fn get(addr: SocketAddr, ca: &std::path::Path, path: &str) -> Reply {
    https(addr, ca, Method::GET, path, Bytes::new()).await
}

/// `GET path` over a new HTTP/2 connection.
async fn get_h2(addr: SocketAddr, ca: &std::path::Path, path: &str) -> Reply {
    let stream = tls_connect(addr, client_tls(ca, None, b"h2")).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("HTTP/2 reply in time")
        .unwrap();
    let status = reply.status();
    let headers = reply.headers().clone();
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    conn.abort();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn https_jwks_and_metadata_verify_a_real_token() {
    let c = TestCluster::start(1).await;
    let addr = c.node(1).http_addr().expect("HTTPS listener");
    let ca = c.files("frontend").ca;

    // A real token, issued over gRPC.
    let token = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap()
        .into_inner()
        .access_token;

    // Metadata (RFC 8414), with no client certificate.
    let meta = get(addr, &ca, "/.well-known/oauth-authorization-server").await;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(meta.headers[header::CONTENT_TYPE], "application/json");
    let meta = meta.json();
    let base = format!("https://{addr}");
    let issuer = meta["issuer"].as_str().unwrap().to_string();
    assert_eq!(meta["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    assert_eq!(meta["token_endpoint"], format!("{base}/oauth2/token"));
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{base}/oauth2/introspect")
    );
    assert_eq!(meta["revocation_endpoint"], format!("{base}/oauth2/revoke"));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        serde_json::json!(["tls_client_auth"])
    );
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    let grants: Vec<&str> = meta["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(grants.contains(&"urn:ietf:params:oauth:grant-type:token-exchange"));
    assert!(meta["token_types_supported"]
        .as_array()
        .unwrap()
        .contains(&Value::from(AT)));

    // The key set at jwks_uri's path, cacheable for the advertised time.
    let jwks = get(addr, &ca, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.headers[header::CACHE_CONTROL], "public, max-age=600");
    // The same document as gRPC's GetJwks.
    let grpc = c
        .keys("frontend")
        .await
        .get_jwks(tessera::pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        jwks.json(),
        serde_json::from_str::<Value>(&grpc.jwks_json).unwrap()
    );
    // HTTP/2 serves it too.
    let h2 = get_h2(addr, &ca, "/.well-known/jwks.json").await;
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.json(), jwks.json());

    // Verify the token with an independent library and the fetched key.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("the token's key is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[&issuer]);
    validation.set_audience(&[id("orders")]);
    // The cluster runs on a manual clock; times are checked against it.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["iss"], Value::from(issuer));
    assert!(data.claims["exp"].as_u64().unwrap() > c.now());

    // A tampered token fails with the same key.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &key, &validation).is_err());
    c.stop().await;
}

#[tokio::test]
async fn https_answers_404_405_and_413() {
    let c = TestCluster::start(1).await;
    let addr = c.node(1).http_addr().unwrap();
    let ca = c.files("frontend").ca;

    let r = get(addr, &ca, "/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "not_found");

    let r = https(
        addr,
        &ca,
        Method::POST,
        "/.well-known/jwks.json",
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers[header::ALLOW].to_str().unwrap().contains("GET"));

    let big = Bytes::from(vec![b'x'; 65 * 1024]);
    let r = https(addr, &ca, Method::POST, "/.well-known/jwks.json", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A client certificate is accepted too (optional, not required).
    let files = c.files("frontend");
    let s = tls_connect(addr, client_tls(&files.ca, Some(&files), b"http/1.1")).await;
    assert!(s.get_ref().1.peer_certificates().is_some());
    c.stop().await;
}

#[tokio::test]
async fn https_jwks_on_a_node_that_is_not_ready_is_503() {
    let mut c = TestCluster::start(1).await;
    // A fresh node that was never added to a cluster holds no state.
    c.add_node(2, false).await;
    let addr = c.node(2).http_addr().unwrap();
    let ca = c.files("frontend").ca;
    let r = get(addr, &ca, "/.well-known/jwks.json").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Metadata does not depend on state.
    let r = get(addr, &ca, "/.well-known/oauth-authorization-server").await;
    assert_eq!(r.status, StatusCode::OK);
    c.stop().await;
}

/// Reads until the server closes the connection (or errors it).
async fn closed_by_server(s: &mut TlsStream<TcpStream>) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// The HTTPS listener gives a connection `header_read_timeout` to send a
/// request's headers; hyper starts that timer only once it knows the
/// protocol. A client that sent the first byte of the HTTP/2 preface and
/// went silent was held until the connection's maximum age (600 s): 64
/// such sockets per address starved the listener (JWKS, OAuth) at no
/// cost to their sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_inside_the_http2_preface_held_its_connection_ten_minutes() {
    use tokio::io::AsyncWriteExt as _;
    let header_timeout = Duration::from_secs(1);
    let c = TestCluster::start_with(1, move |cfg| {
        cfg.http.header_read_timeout = header_timeout;
        cfg.http.accept.preface_timeout = header_timeout;
    })
    .await;
    c.wait_ready(&[1]).await;
    let addr = c.node(1).http_addr().expect("HTTPS listener");
    let ca = c.files("orders").ca;
    // A stalled HTTP/1.1 request head, and one byte of the HTTP/2 preface.
    for (alpn, sent) in [
        (
            &b"http/1.1"[..],
            &b"GET /.well-known/jwks.json HTTP/1.1\r\n"[..],
        ),
        (&b"h2"[..], &b"P"[..]),
    ] {
        let mut s = tls_connect(addr, client_tls(&ca, None, alpn)).await;
        s.write_all(sent).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::timeout(WAIT, closed_by_server(&mut s))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} still holds its connection after {WAIT:?} (header deadline {header_timeout:?})",
                    String::from_utf8_lossy(alpn)
                )
            });
    }
    // A client that sends its request in time is served.
    let jwks = get(addr, &ca, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    c.stop().await;
}
