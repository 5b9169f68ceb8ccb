//! The real binary, three processes, `kill -9` of the leader in the middle
//! of a burst of revocations: every acknowledged revocation is on all three
//! nodes after recovery; each unacknowledged one is on all or none.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tessera::pb;
use tessera::pb::admin_service_client::AdminServiceClient;
use tessera::pb::token_service_client::TokenServiceClient;
use tessera::tls::TlsFiles;

use crate::cluster::*;

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) api: String,
    pub(crate) raft: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `i`; waits for its ready line (an event, not a sleep).
pub(crate) fn spawn(dir: &Path, i: u64, api: &str, raft: &str) -> Proc {
    let certs = dir.join("certs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--node-id",
            &i.to_string(),
            "--listen",
            api,
            "--raft-listen",
            raft,
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("node{i}")))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("node{i}.pem")))
        .arg("--key")
        .arg(certs.join(format!("node{i}.key")))
        .arg("--policy")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/policy/example.cedar"
        ))
        .arg("--audit-log")
        .arg(dir.join(format!("audit{i}.jsonl")))
        .env("TESSERA_KEK", KEK)
        .env("TESSERA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (api, raft) = loop {
        let line = lines.next().expect("node exited before listening").unwrap();
        if let Some(rest) = line.split(" listening on ").nth(1) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            break (words[0].to_string(), words[2].to_string());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Proc { child, api, raft }
}

pub(crate) fn files(dir: &Path, name: &str) -> TlsFiles {
    let c = dir.join("certs");
    TlsFiles {
        ca: c.join("ca.pem"),
        cert: c.join(format!("{name}.pem")),
        key: c.join(format!("{name}.key")),
    }
}

pub(crate) async fn admin(dir: &Path, addr: &str) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::new(
        tessera::client::connect(addr, &files(dir, "admin"))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_leader_in_the_middle_of_a_burst() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_path_buf();
    tessera::certs::init_dev_pki(&dir.join("certs"), &Default::default()).unwrap();
    let mut procs: BTreeMap<u64, Proc> = BTreeMap::new();
    for i in 1..=3 {
        procs.insert(i, spawn(&dir, i, "127.0.0.1:0", "127.0.0.1:0"));
    }
    let raft_addrs: Vec<String> = procs.values().map(|p| p.raft.clone()).collect();
    let s = admin(&dir, &procs[&1].api)
        .await
        .init_cluster(pb::InitClusterRequest { raft_addrs })
        .await
        .unwrap()
        .into_inner();
    let leader = s.leader_id;
    assert!(leader > 0);

    // Tokens to revoke (so that every node can be asked about each one)
    // and a control group nobody revokes.
    let mut fe = TokenServiceClient::new(
        tessera::client::connect(&procs[&leader].api, &files(&dir, "frontend"))
            .await
            .unwrap(),
    );
    let mut tokens = Vec::new();
    // Keys and policy are written by the new leader right after init: the
    // first issue waits for them (bounded retries, each a round trip).
    let mut attempts = 0;
    while tokens.len() < 160 {
        match fe.issue_token(issue_req("orders", &["orders:write"])).await {
            Ok(t) => tokens.push(t.into_inner()),
            Err(s) if tokens.is_empty() && attempts < 10_000 => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::PermissionDenied
                    ),
                    "{s}"
                );
                attempts += 1;
            }
            Err(s) => panic!("{s}"),
        }
    }
    let (to_revoke, control) = tokens.split_at(120);

    // The burst: 4 workers per surviving node; the leader is killed after
    // the first 30 acknowledgements.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let unacked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    // Acknowledgements so far, as an event the killer can wait on.
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut workers = Vec::new();
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    for (w, node) in followers.iter().cycle().take(8).enumerate() {
        let addr = procs[node].api.clone();
        let f = files(&dir, "admin");
        let items: Vec<(String, String)> = to_revoke
            .iter()
            .map(|t| (t.jti.clone(), t.access_token.clone()))
            .collect();
        let (acked, unacked, next, count_tx) = (
            acked.clone(),
            unacked.clone(),
            next.clone(),
            count_tx.clone(),
        );
        let _ = w;
        workers.push(tokio::spawn(async move {
            let mut c = TokenServiceClient::new(tessera::client::connect(&addr, &f).await.unwrap());
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((jti, _)) = items.get(k) else { return };
                match c.revoke(revoke_jti(jti)).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .push((jti.clone(), r.into_inner().revision));
                        count_tx.send_modify(|n| *n += 1);
                    }
                    Err(_) => unacked.lock().unwrap().push(jti.clone()),
                }
            }
        }));
    }
    let killer = {
        let mut victim = procs.remove(&leader).unwrap();
        tokio::spawn(async move {
            // The burst is a third through when 30 are acknowledged.
            let _ = count_rx.wait_for(|n| *n >= 30).await;
            victim.child.kill().unwrap(); // SIGKILL
            victim.child.wait().unwrap();
            let _ = killed_tx.send(true);
            (victim.api.clone(), victim.raft.clone())
        })
    };
    for w in workers {
        w.await.unwrap();
    }
    let (api, raft) = killer.await.unwrap();
    assert!(*killed_rx.borrow());

    // Bring the old leader back on its old addresses.
    procs.insert(leader, spawn(&dir, leader, &api, &raft));
    let acked = acked.lock().unwrap().clone();
    let unacked = unacked.lock().unwrap().clone();
    let max_rev = acked.iter().map(|(_, r)| *r).max().unwrap();
    let revoked: BTreeMap<String, String> = to_revoke
        .iter()
        .map(|t| (t.jti.clone(), t.access_token.clone()))
        .collect();

    for (i, p) in &procs {
        let mut c = TokenServiceClient::new(
            tessera::client::connect(&p.api, &files(&dir, "orders"))
                .await
                .unwrap(),
        );
        let ask = |tok: String| {
            let mut c = c.clone();
            async move {
                c.introspect(pb::IntrospectRequest {
                    token: tok,
                    min_revision: max_rev,
                    consistency: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .active
            }
        };
        for (jti, _) in &acked {
            assert!(
                !ask(revoked[jti].clone()).await,
                "node {i} lost acknowledged revocation {jti}"
            );
        }
        for t in control {
            assert!(
                ask(t.access_token.clone()).await,
                "node {i} revoked {} that nobody revoked",
                t.jti
            );
        }
        let _ = &mut c;
    }
    // Each unacknowledged one: on all nodes or none (after convergence:
    // wait until every node has applied what node 1's leader has).
    let mut answers: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    let status = admin(&dir, &procs[&followers[0]].api)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let new_leader = status.leader_id;
    let last = admin(&dir, &procs[&new_leader].api)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_log_index;
    for p in procs.values() {
        let mut c = TokenServiceClient::new(
            tessera::client::connect(&p.api, &files(&dir, "orders"))
                .await
                .unwrap(),
        );
        for jti in &unacked {
            let r = c
                .introspect(pb::IntrospectRequest {
                    token: revoked[jti].clone(),
                    min_revision: last,
                    consistency: 0,
                })
                .await
                .unwrap()
                .into_inner();
            answers.entry(jti.clone()).or_default().push(r.active);
        }
    }
    for (jti, a) in answers {
        assert!(
            a.iter().all(|x| *x == a[0]),
            "unacknowledged {jti} is on some nodes only: {a:?}"
        );
    }
}
