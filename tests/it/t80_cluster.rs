//! Three nodes in this process: replication, forwarding, partitions,
//! snapshots, wiped data, membership changes, full restarts. Each test
//! drives revocations and then checks, on every node, that every
//! acknowledged revocation is present and nothing else appeared.

use std::collections::BTreeSet;

use tonic::Code;

use crate::cluster::*;
use tessera::pb;

/// Checks the revocation sets of `ids`: all equal, containing every
/// acknowledged jti and nothing outside `possible`.
fn check_sets(c: &TestCluster, ids: &[u64], acked: &BTreeSet<String>, possible: &BTreeSet<String>) {
    let first = c.revoked(ids[0]);
    for i in ids {
        let set = c.revoked(*i);
        assert_eq!(set, first, "node {i} differs from node {}", ids[0]);
        let missing: Vec<_> = acked.difference(&set).collect();
        assert!(
            missing.is_empty(),
            "node {i} lost acknowledged revocations: {missing:?}"
        );
        let extra: Vec<_> = set.difference(possible).collect();
        assert!(
            extra.is_empty(),
            "node {i} has revocations nobody asked for: {extra:?}"
        );
    }
}

fn names(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_any_node_and_read_your_writes() {
    let c = TestCluster::start(3).await;
    let b = revoke_burst(&c, "rw", 60, 6, &[1, 2, 3]).await;
    assert!(b.failed.is_empty(), "{:?}", b.failed);
    c.wait_converged(&[1, 2, 3]).await;
    check_sets(&c, &[1, 2, 3], &b.acked_set(), &names("rw", 60));

    // Revoke on one node, read with min_revision on another.
    let t = c
        .tokens_on(2, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let writer = if leader == 1 { 2 } else { 1 };
    let reader = 6 - leader - writer;
    let rev = c
        .tokens_on(writer, "frontend")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    let r = c
        .tokens_on(reader, "admin")
        .await
        .introspect(pb::IntrospectRequest {
            token: t.access_token.clone(),
            min_revision: rev.revision,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active);
    assert!(r.revision >= rev.revision);

    // Cluster status from a follower names the leader and the members.
    let s = c
        .admin(reader)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.leader_id, leader);
    assert_eq!(s.nodes.len(), 3);
    assert!(s.nodes.iter().all(|n| n.role == "voter"));
    let s = c
        .admin(leader)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.lag_known);
    assert!(s.commit_index >= rev.revision);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_refuses_writes_and_converges_after_healing() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let minority = if leader == 3 { 2 } else { 3 };
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != minority).collect();
    c.faults.isolate(minority);

    // The minority cannot commit: forwarding fails, no quorum.
    let mut m = c.tokens_on(minority, "admin").await;
    let e = m.revoke(revoke_jti("minority-0")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());

    // The majority keeps serving.
    let b = revoke_burst(&c, "major", 40, 4, &majority).await;
    assert!(b.failed.is_empty(), "{:?}", b.failed);

    c.faults.heal();
    c.wait_converged(&[1, 2, 3]).await;
    let mut possible = names("major", 40);
    possible.insert("minority-0".into());
    check_sets(&c, &[1, 2, 3], &b.acked_set(), &possible);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_acknowledging_and_a_retry_lands_once() {
    let c = TestCluster::start(3).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let before = revoke_burst(&c, "before", 10, 2, &[1, 2, 3]).await;
    assert!(before.failed.is_empty());

    c.faults.isolate(old);
    // The write in flight on the old leader cannot commit: it fails.
    let e = c
        .tokens_on(old, "admin")
        .await
        .revoke(revoke_jti("retry-me"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    // The others elect a new leader; the retry lands there.
    let new = c.agreed_leader(&others).await;
    assert_ne!(new, old);
    let r = c
        .tokens_on(others[0], "admin")
        .await
        .revoke(revoke_jti("retry-me"))
        .await
        .unwrap()
        .into_inner();
    // The isolated node acknowledges nothing more.
    let e = c
        .tokens_on(old, "admin")
        .await
        .revoke(revoke_jti("never"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    c.faults.heal();
    // The old leader steps down and follows the new one.
    c.node(old)
        .raft()
        .wait(Some(WAIT))
        .current_leader(new, "old leader follows")
        .await
        .unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    let mut acked = before.acked_set();
    acked.insert("retry-me".into());
    let mut possible = names("before", 10);
    possible.insert("retry-me".into());
    possible.insert("never".into());
    check_sets(&c, &[1, 2, 3], &acked, &possible);
    // Exactly once: a repeat changes nothing.
    let again = c
        .tokens_on(new, "admin")
        .await
        .revoke(revoke_jti("retry-me"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert!(again.revision > r.revision);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_purged_log_installs_a_snapshot() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.raft.snapshot_every = 20;
        cfg.raft.keep_logs = 5;
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    // The leader purges the log the lagging node would need.
    let (b, lag_last) = c
        .leave_behind_a_purged_log(leader, lagging, "snap", 120)
        .await;
    c.faults.heal();
    c.wait_converged(&[1, 2, 3]).await;
    let snap = c.node(lagging).raft().metrics().borrow().snapshot;
    assert!(
        snap.is_some_and(|s| s.index > lag_last),
        "the lagging node installed a snapshot: {snap:?}"
    );
    check_sets(&c, &[1, 2, 3], &b.acked_set(), &names("snap", 120));
    assert_eq!(
        c.node(lagging).state().keys(),
        c.node(leader).state().keys()
    );
    assert_eq!(
        c.node(lagging).state().policy(),
        c.node(leader).state().policy()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_as_a_fresh_learner() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let wiped = if leader == 3 { 2 } else { 3 };
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != wiped).collect();
    let b1 = revoke_burst(&c, "w1", 30, 3, &[1, 2, 3]).await;
    assert!(b1.failed.is_empty());

    c.stop_node(wiped).await;
    std::fs::remove_dir_all(c.data_dir(wiped)).unwrap();
    c.start_node(wiped).await;
    // Its old self is still a voter in the membership, but the others
    // refuse its new incarnation: it gets nothing, votes for nothing, and
    // can never lead from its empty state.
    let b2 = revoke_burst(&c, "w2", 30, 3, &rest).await;
    assert!(b2.failed.is_empty(), "{:?}", b2.failed);
    let m = c.node(wiped).raft().metrics().borrow().clone();
    assert_ne!(m.current_leader, Some(wiped));
    assert_eq!(
        m.last_applied, None,
        "a wiped node must not take entries before it is re-added"
    );

    // The operator replaces it: remove, add as learner, promote.
    let mut admin = c.admin(leader).await;
    admin
        .remove_node(pb::NodeRequest { node_id: wiped })
        .await
        .unwrap();
    admin
        .add_learner(pb::AddLearnerRequest {
            raft_addr: c.raft_addr(wiped),
            timeout_seconds: 30,
        })
        .await
        .unwrap();
    admin
        .promote(pb::NodeRequest { node_id: wiped })
        .await
        .unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    let mut acked = b1.acked_set();
    acked.extend(b2.acked_set());
    let mut possible = names("w1", 30);
    possible.extend(names("w2", 30));
    check_sets(&c, &[1, 2, 3], &acked, &possible);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    let mut c = TestCluster::start(3).await;
    c.add_node(4, false).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;

    // A burst runs while node 4 joins.
    let load = {
        let handles: Vec<u64> = vec![1, 2, 3];
        let c = &c;
        async move { revoke_burst(c, "load", 150, 4, &handles).await }
    };
    let join = async {
        let mut admin = c.admin(leader).await;
        admin
            .add_learner(pb::AddLearnerRequest {
                raft_addr: c.raft_addr(4),
                timeout_seconds: 30,
            })
            .await
            .unwrap();
        // Caught up before it votes: it holds the leader's log; once it has
        // applied it (the commit index reaches a learner with the next
        // heartbeat), its keys and policy are the leader's.
        let applied = c.node(leader).raft().metrics().borrow().last_applied;
        c.node(4)
            .raft()
            .wait(Some(WAIT))
            .applied_index_at_least(applied.map(|l| l.index), "learner applied")
            .await
            .unwrap();
        let leader_state = c.node(leader).state();
        let n4 = c.node(4).state();
        assert_eq!(n4.keys(), leader_state.keys());
        assert_eq!(n4.policy(), leader_state.policy());
        let promoted_at = c
            .node(leader)
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        admin.promote(pb::NodeRequest { node_id: 4 }).await.unwrap();
        promoted_at
    };
    let (b, promoted_at) = tokio::join!(load, join);
    assert!(b.failed.is_empty(), "{:?}", b.failed);
    assert!(promoted_at > 0);
    let s = c
        .admin(leader)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.nodes.iter().filter(|n| n.role == "voter").count(), 4);
    c.wait_converged(&[1, 2, 3, 4]).await;
    check_sets(&c, &[1, 2, 3, 4], &b.acked_set(), &names("load", 150));

    // And out again.
    c.admin(leader)
        .await
        .remove_node(pb::NodeRequest { node_id: 4 })
        .await
        .unwrap();
    let s = c
        .admin(leader)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.nodes.len(), 3);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_all_nodes_keeps_the_state() {
    let mut c = TestCluster::start(3).await;
    let b = revoke_burst(&c, "full", 50, 5, &[1, 2, 3]).await;
    assert!(b.failed.is_empty());
    let (t1, _, _) = chain_of_three(&c).await;
    c.wait_converged(&[1, 2, 3]).await;
    let before = c.revoked(1);
    for i in [1, 2, 3] {
        c.stop_node(i).await;
    }
    for i in [1, 2, 3] {
        c.start_node(i).await;
    }
    c.wait_ready(&[1, 2, 3]).await;
    c.wait_converged(&[1, 2, 3]).await;
    for i in [1, 2, 3] {
        assert_eq!(c.revoked(i), before, "node {i}");
    }
    check_sets(&c, &[1, 2, 3], &b.acked_set(), &names("full", 50));
    // Tokens signed before the restart still verify everywhere.
    for i in [1, 2, 3] {
        let r = c
            .tokens_on(i, "admin")
            .await
            .introspect(introspect_req(&t1.access_token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.active, "node {i}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_leadership() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    c.wait_ready(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let c = &c;
    let health = |i: u64| async move {
        let ch = c.channel_as(i, &c.files("ledger")).await;
        HealthClient::new(ch)
    };
    let mut h = health(follower).await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(
        h.check(HealthCheckRequest {
            service: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .status,
        serving
    );
    // An isolated leader soon stops claiming to serve.
    c.faults.isolate(leader);
    let mut h = health(leader).await;
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(r)) = watch.message().await.transpose() {
            if r.status == not_serving {
                return;
            }
        }
        panic!("health stream ended");
    })
    .await
    .expect("NOT_SERVING while isolated");
    c.faults.heal();
}

/// A load balancer's health `Watch` stream used to hold a node's graceful
/// shutdown forever: the stream ends only when its status is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_hold_up_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let mut health = HealthClient::new(c.channel_as(leader, &c.files("ledger")).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    health.message().await.unwrap().expect("the current status");

    tokio::time::timeout(std::time::Duration::from_secs(60), c.stop_node(leader))
        .await
        .expect("the node shut down with a health watch open");
    // The watcher was told NOT_SERVING before its stream ended.
    let mut last = None;
    while let Ok(Some(h)) = health.message().await {
        last = Some(h.status);
    }
    assert_eq!(last, Some(ServingStatus::NotServing as i32));
    c.stop().await;
}
