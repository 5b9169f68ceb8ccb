//! Crash safety of the real binary: an acknowledged revocation survives
//! `kill -9`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use tessera::pb;
use tessera::pb::token_service_client::TokenServiceClient;

use crate::cluster::*;

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tessera serve` on port 0 and waits for the line that names the
/// bound address (an event, not a sleep).
fn spawn(dir: &std::path::Path, certs: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--bootstrap",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("node1.pem"))
        .arg("--key")
        .arg(certs.join("node1.key"))
        .arg("--policy")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/policy/example.cedar"
        ))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .env("TESSERA_KEK", KEK)
        .env("TESSERA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.split(" listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_revocations_survive_kill_9() {
    init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let pki = tessera::certs::init_dev_pki(&certs, &Default::default()).unwrap();
    let files = |n: &str| pki.tls_files(n).unwrap();

    let p = spawn(dir.path(), &certs);
    let connect = |addr: String, who: &str| {
        let f = files(who);
        async move { TokenServiceClient::new(tessera::client::connect(&addr, &f).await.unwrap()) }
    };
    let mut frontend = connect(p.addr.clone(), "frontend").await;
    let mut admin = connect(p.addr.clone(), "admin").await;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(
            frontend
                .issue_token(issue_req("orders", &["orders:write"]))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let mut acknowledged = Vec::new();
    for t in tokens.iter().step_by(2) {
        let r = admin
            .revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Jti(t.jti.clone())),
            })
            .await
            .unwrap()
            .into_inner();
        acknowledged.push((t.jti.clone(), r.revision));
    }
    let last_revision = acknowledged.last().unwrap().1;
    drop(p); // SIGKILL, no goodbye

    let p = spawn(dir.path(), &certs);
    let mut ledger = connect(p.addr.clone(), "orders").await;
    for (i, t) in tokens.iter().enumerate() {
        let r = ledger
            .introspect(pb::IntrospectRequest {
                token: t.access_token.clone(),
                min_revision: last_revision,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.active, i % 2 == 1, "token {i} after the crash");
    }
}
