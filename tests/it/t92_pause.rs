//! The real binary, three processes: a leader paused (`SIGSTOP`) for longer
//! than the election timeout, a token revoked on the others meanwhile, then
//! the leader resumed (`SIGCONT`). Neither a request queued while it was
//! stopped nor one sent right after it resumes may get `active=true`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tessera::pb;
use tessera::pb::token_service_client::TokenServiceClient;

use crate::cluster::*;
use crate::t90_kill9::{admin, files, spawn, Proc};

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn tokens(
    dir: &std::path::Path,
    addr: &str,
    who: &str,
) -> TokenServiceClient<tonic::transport::Channel> {
    TokenServiceClient::new(
        tessera::client::connect(addr, &files(dir, who))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_answers_active_for_a_token_revoked_while_it_slept() {
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
    assert!(leader > 0, "{s:?}");
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();

    // A token, issued once the leader has written keys and policy.
    let mut fe = tokens(&dir, &procs[&leader].api, "frontend").await;
    let mut attempts = 0;
    let t = loop {
        match fe.issue_token(issue_req("orders", &["orders:write"])).await {
            Ok(t) => break t.into_inner(),
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::PermissionDenied
                    ),
                    "{s}"
                );
                attempts += 1;
                assert!(attempts < 10_000, "no token: {s}");
            }
        }
    };
    let mut on_leader = tokens(&dir, &procs[&leader].api, "orders").await;
    // The connection is up before the pause.
    assert!(
        on_leader
            .introspect(introspect_req(&t.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    signal(&procs[&leader], "-STOP");
    // Revoke through the others: they elect a new leader, then acknowledge.
    let mut revision = None;
    'outer: for _ in 0..1_000 {
        for i in &others {
            let mut c = tokens(&dir, &procs[i].api, "frontend").await;
            match c
                .revoke(pb::RevokeRequest {
                    target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
                })
                .await
            {
                Ok(r) => {
                    revision = Some(r.into_inner().revision);
                    break 'outer;
                }
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s}"),
            }
        }
    }
    let revision = revision.expect("the majority acknowledged the revocation");

    // A request queued while the leader is stopped...
    let queued = {
        let mut c = on_leader.clone();
        let token = t.access_token.clone();
        tokio::spawn(async move { c.introspect(introspect_req(&token)).await })
    };
    // ...is sent before the process runs again: wait until the request has
    // left this process (its connection is already established, so the
    // bytes sit in the stopped leader's socket buffer).
    tokio::task::yield_now().await;
    signal(&procs[&leader], "-CONT");
    let mut answers = vec![queued.await.unwrap()];
    for _ in 0..20 {
        answers.push(on_leader.introspect(introspect_req(&t.access_token)).await);
    }
    for a in &answers {
        match a {
            Ok(r) => {
                let r = r.get_ref();
                assert!(
                    !r.active,
                    "the resumed leader said active=true at revision {}",
                    r.revision
                );
                assert!(r.revision >= revision);
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s}"),
        }
    }
    // And it catches up: a linearizable answer, inactive.
    let mut done = false;
    for _ in 0..1_000 {
        if let Ok(r) = on_leader.introspect(introspect_req(&t.access_token)).await {
            assert!(!r.get_ref().active);
            done = true;
            break;
        }
    }
    assert!(done, "the resumed node never answered again");
}
