//! Certificate reload without restart: renewed files are served to new
//! connections on every listener (API, Raft, HTTPS) and used by the Raft
//! client, established connections keep working, a bad renewal is refused
//! with the old certificate still in use, and an expiring certificate
//! turns health `NOT_SERVING`.

use std::time::{Duration, SystemTime};

use tessera::certs::{issue_leaf, LeafSpec};
use tessera::node::ReloadOutcome;
use tessera::tls::TlsFiles;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cluster::*;
use crate::t44_https::{get, served_leaf};
use crate::t82_consistency::wait_health;

/// The DER of the first certificate in a PEM file.
fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// A node certificate for node `i` like the development one, named `cn`,
/// valid until `not_after`: `(cert_pem, key_pem)`.
fn node_cert(c: &TestCluster, i: u64, cn: &str, not_after: SystemTime) -> (String, String) {
    node_cert_from(&c.pki, i, cn, not_after)
}

/// [`node_cert`] from the CA of `pki`.
fn node_cert_from(
    pki: &tessera::certs::DevPki,
    i: u64,
    cn: &str,
    not_after: SystemTime,
) -> (String, String) {
    let ca = std::fs::read_to_string(&pki.ca_cert).unwrap();
    let ca_key = std::fs::read_to_string(&pki.ca_key).unwrap();
    let now = SystemTime::now();
    let mut spec = LeafSpec::new(cn).valid_between(now - Duration::from_secs(300), not_after);
    spec.uris.push(format!("{TD}/node/{i}"));
    spec.dns_names = vec!["localhost".into(), format!("node{i}")];
    spec.ip_addresses = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    issue_leaf(&ca, &ca_key, &spec).unwrap()
}

fn in_days(days: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(days * 86_400)
}

/// Replaces node `i`'s certificate and key files (what a renewal tool does).
fn write_node_files(c: &TestCluster, i: u64, pair: &(String, String)) -> TlsFiles {
    let files = c.files(&format!("node{i}"));
    write_node_files_at(&files, pair);
    files
}

/// Reload only when the test says so: no periodic check racing it.
fn manual_reload(config: &mut tessera::node::Config) {
    config.tls_reload.check_interval = Duration::ZERO;
}

/// Revokes a fresh jti through node `via` (retrying while leadership
/// moves) and waits until every node has applied it: Raft traffic works.
async fn raft_round_trip(c: &TestCluster, via: u64, jti: &str) {
    let mut admin = c.tokens_on(via, "admin").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match admin.revoke(revoke_jti(jti)).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "revocation never acknowledged: {s:?}"
                );
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    c.wait_converged(&ids).await;
    for i in ids {
        assert!(c.revoked(i).contains(jti), "node {i} has not applied {jti}");
    }
}

#[tokio::test]
async fn renewed_certificates_serve_new_connections_while_old_ones_keep_working() {
    let c = TestCluster::start_with(3, manual_reload).await;
    let frontend = c.files("frontend");
    let n1 = c.node(1);
    let old = served_leaf(n1.api_addr(), &frontend).await;
    assert_eq!(old, leaf_der(&c.files("node1").cert));

    // A connection made before the renewal.
    let mut before = c.tokens_on(1, "frontend").await;
    before
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();

    // Renew every node's certificate on disk, then reload.
    for i in 1..=3 {
        let renewed = node_cert(&c, i, &format!("tessera node{i} renewed"), in_days(90));
        let files = write_node_files(&c, i, &renewed);
        match c.node(i).reload_tls().await.unwrap() {
            ReloadOutcome::Reloaded(info) => {
                assert!(info.subject.contains("renewed"), "{info:?}");
                assert_eq!(info, c.node(i).certificate());
            }
            other => panic!("node {i}: {other:?}"),
        }
        // New connections on every listener see the new certificate.
        let new = leaf_der(&files.cert);
        assert_ne!(new, old);
        let node = c.node(i);
        assert_eq!(
            served_leaf(node.api_addr(), &frontend).await,
            new,
            "API of node {i}"
        );
        let peer = c.files(&format!("node{}", i % 3 + 1));
        assert_eq!(
            served_leaf(node.raft_addr(), &peer).await,
            new,
            "Raft of node {i}"
        );
        assert_eq!(
            served_leaf(node.http_addr().unwrap(), &frontend).await,
            new,
            "HTTPS of node {i}"
        );
        // Nothing changed on disk since: a second reload does nothing.
        assert_eq!(
            c.node(i).reload_tls().await.unwrap(),
            ReloadOutcome::Unchanged
        );
    }

    // The connection made before still works; so does a new one.
    before
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();
    c.tokens_on(1, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();
    let jwks = get(
        c.node(2).http_addr().unwrap(),
        &frontend.ca,
        "/.well-known/jwks.json",
    )
    .await;
    assert_eq!(jwks.status, http::StatusCode::OK);

    // Raft traffic (new client connections with the new certificates)
    // keeps working from every node.
    for i in 1..=3 {
        raft_round_trip(&c, i, &format!("after-reload-{i}")).await;
    }
    c.stop().await;
}

#[tokio::test]
async fn corrupt_or_foreign_certificate_is_refused_and_the_old_one_stays() {
    let c = TestCluster::start_with(1, manual_reload).await;
    let frontend = c.files("frontend");
    let node = c.node(1);
    let files = c.files("node1");
    let good_cert = std::fs::read_to_string(&files.cert).unwrap();
    let good_key = std::fs::read_to_string(&files.key).unwrap();
    let old = served_leaf(node.api_addr(), &frontend).await;
    let old_info = node.certificate();

    let other_pki = tempfile::tempdir().unwrap();
    let foreign = tessera::certs::init_dev_pki(other_pki.path(), &Default::default()).unwrap();
    let fresh = node_cert(&c, 1, "tessera node1 fresh", in_days(30));
    let bad: Vec<(&str, String, String)> = vec![
        (
            "garbage certificate",
            "not a certificate".into(),
            good_key.clone(),
        ),
        (
            "truncated certificate",
            good_cert[..good_cert.len() / 2].to_string(),
            good_key.clone(),
        ),
        (
            "key of another certificate",
            fresh.0.clone(),
            good_key.clone(),
        ),
        (
            "certificate of another CA",
            std::fs::read_to_string(&foreign.nodes[0].cert).unwrap(),
            std::fs::read_to_string(&foreign.nodes[0].key).unwrap(),
        ),
        (
            "another node's certificate",
            std::fs::read_to_string(c.files("node2").cert).unwrap(),
            std::fs::read_to_string(c.files("node2").key).unwrap(),
        ),
    ];
    let expired = node_cert(&c, 1, "old", SystemTime::now() - Duration::from_secs(60));
    let mut bad = bad;
    bad.push(("expired certificate", expired.0, expired.1));
    for (what, cert, key) in bad {
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        let err = node.reload_tls().await;
        assert!(err.is_err(), "{what}: accepted: {err:?}");
        assert_eq!(node.certificate(), old_info, "{what}");
        assert_eq!(served_leaf(node.api_addr(), &frontend).await, old, "{what}");
        assert_eq!(
            served_leaf(node.http_addr().unwrap(), &frontend).await,
            old,
            "{what}"
        );
        c.tokens("frontend")
            .await
            .issue_token(issue_req("orders", &["orders:read"]))
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
    }

    // A good renewal after the bad ones is taken.
    write_node_files(&c, 1, &fresh);
    assert!(matches!(
        node.reload_tls().await.unwrap(),
        ReloadOutcome::Reloaded(_)
    ));
    assert_eq!(
        served_leaf(node.api_addr(), &frontend).await,
        leaf_der(&files.cert)
    );
    c.stop().await;
}

#[tokio::test]
async fn renewed_files_are_picked_up_by_the_periodic_check() {
    let c = TestCluster::start_with(1, |config| {
        config.tls_reload.check_interval = Duration::from_millis(100);
    })
    .await;
    let before = c.node(1).certificate();
    let files = write_node_files(
        &c,
        1,
        &node_cert(&c, 1, "tessera node1 polled", in_days(30)),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    // Bounded poll of the node's state (the check runs on its own timer).
    while c.node(1).certificate() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewal not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.node(1).certificate().subject.contains("polled"));
    assert_eq!(
        served_leaf(c.node(1).api_addr(), &c.files("frontend")).await,
        leaf_der(&files.cert)
    );
    c.stop().await;
}

#[tokio::test]
async fn expiring_certificate_turns_health_not_serving_until_renewed() {
    let c = TestCluster::start_with(1, manual_reload).await;
    wait_health(&c, 1, ServingStatus::Serving).await;
    // Valid for 30 more minutes: inside the default one-hour margin.
    write_node_files(
        &c,
        1,
        &node_cert(
            &c,
            1,
            "short",
            SystemTime::now() + Duration::from_secs(1800),
        ),
    );
    c.node(1).reload_tls().await.unwrap();
    wait_health(&c, 1, ServingStatus::NotServing).await;
    let status = c
        .admin(1)
        .await
        .cluster_status(tessera::pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.not_serving_reason.contains("certificate"),
        "{status:?}"
    );
    // Still answering: the margin is for draining, not for refusing.
    c.tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();
    // Renewed: serving again.
    write_node_files(&c, 1, &node_cert(&c, 1, "long", in_days(90)));
    c.node(1).reload_tls().await.unwrap();
    wait_health(&c, 1, ServingStatus::Serving).await;
    c.stop().await;
}

/// A service certificate like the development one (`admin`: `TD/admin`,
/// others `TD/svc/{name}`), from the CA now in the cluster's CA files.
fn service_cert(c: &TestCluster, name: &str) -> (String, String) {
    let ca = std::fs::read_to_string(&c.pki.ca_cert).unwrap();
    let ca_key = std::fs::read_to_string(&c.pki.ca_key).unwrap();
    let mut spec = LeafSpec::new(name);
    spec.uris.push(id(name));
    issue_leaf(&ca, &ca_key, &spec).unwrap()
}

/// A new CA replaces the old one outright: only material reloaded on both
/// ends of a Raft connection can connect, so Raft working afterwards means
/// the Raft client side reloaded its certificate and trust anchors too.
#[tokio::test]
async fn raft_client_reconnects_with_a_renewed_ca_and_certificates() {
    let c = TestCluster::start_with(3, manual_reload).await;
    let mut before = c.tokens_on(1, "frontend").await;
    before
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();

    let (ca, ca_key) = tessera::certs::self_signed_ca("Tessera renewed CA").unwrap();
    std::fs::write(&c.pki.ca_key, ca_key).unwrap();
    std::fs::write(&c.pki.ca_cert, ca).unwrap();
    for name in ["admin", "frontend"] {
        let files = c.files(name);
        let (cert, key) = service_cert(&c, name);
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
    }
    for i in 1..=3 {
        write_node_files(
            &c,
            i,
            &node_cert(&c, i, &format!("node{i} new CA"), in_days(90)),
        );
        assert!(matches!(
            c.node(i).reload_tls().await.unwrap(),
            ReloadOutcome::Reloaded(_)
        ));
    }
    for i in 1..=3 {
        raft_round_trip(&c, i, &format!("new-ca-{i}")).await;
    }
    // Sessions negotiated under the old CA stay up.
    before
        .issue_token(issue_req("orders", &["orders:read"]))
        .await
        .unwrap();
    c.stop().await;
}

/// The real binary: `tessera serve` reloads its certificate on SIGHUP (no
/// periodic check), on the API and the HTTPS listener, and names the HTTPS
/// address on its ready line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_a_running_server() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = tessera::certs::init_dev_pki(&certs, &Default::default()).unwrap();
    let node1 = pki.tls_files("node1").unwrap();
    let frontend = pki.tls_files("frontend").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--node-id", "1", "--bootstrap"])
        .args(["--listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--tls-reload-interval", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ca")
        .arg(&node1.ca)
        .arg("--cert")
        .arg(&node1.cert)
        .arg("--key")
        .arg(&node1.key)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("TESSERA_KEK", KEK)
        .env("TESSERA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _guard = Kill(child);
    let mut lines = BufReader::new(stderr).lines();
    // tessera node 1 listening on API raft RAFT http HTTP
    let (api, http): (std::net::SocketAddr, std::net::SocketAddr) = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.split(" listening on ").nth(1) {
            let w: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!((w[1], w[3]), ("raft", "http"), "{line}");
            break (w[0].parse().unwrap(), w[4].parse().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let old = served_leaf(api, &frontend).await;
    assert_eq!(served_leaf(http, &frontend).await, old);
    write_node_files_at(
        &node1,
        &node_cert_from(&pki, 1, "node1 after SIGHUP", in_days(30)),
    );
    let new = leaf_der(&node1.cert);
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The signal is handled asynchronously: new connections until one is
    // served the new certificate (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_leaf(api, &frontend).await != new {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_leaf(http, &frontend).await, new);
    let jwks = get(http, &frontend.ca, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, http::StatusCode::OK);
}

fn write_node_files_at(files: &TlsFiles, (cert, key): &(String, String)) {
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
}
