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
