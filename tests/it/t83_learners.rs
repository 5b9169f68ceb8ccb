//! Read replicas: learners added with `AddLearner` and never promoted.
//! They answer linearizable `Introspect` and `ExchangeToken` (a read index
//! from the leader, then their own applied state), serve the revocation
//! stream, and report honest health; the write quorum stays the voters
//! (`docs/SCALING.md`).

use std::collections::BTreeSet;
use std::time::Duration;

use tessera::pb;
use tessera::pb::revocation_service_client::RevocationServiceClient;
use tessera::pb::watch_event::Kind;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cluster::*;
use crate::t82_consistency::{health, wait_health};

/// Adds node `i` (already started) as a learner through the leader, and
/// does not promote it.
async fn add_learner(c: &TestCluster, leader: u64, i: u64) -> pb::ClusterStatusResponse {
    c.admin(leader)
        .await
        .add_learner(pb::AddLearnerRequest {
            raft_addr: c.raft_addr(i),
            timeout_seconds: WAIT.as_secs(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The voter ids in node `i`'s membership.
fn voters(c: &TestCluster, i: u64) -> BTreeSet<u64> {
    c.node(i)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// A token for `orders`, issued on node `on`, with its jti.
async fn issue(c: &TestCluster, on: u64) -> (String, String) {
    let t = c
        .tokens_on(on, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let r = c
        .tokens_on(on, "orders")
        .await
        .introspect(introspect_req(&t))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active && r.linearizable);
    (t, r.jti)
}

/// Revokes token `t` through node `via` as the `frontend` caller.
async fn revoke_token(
    c: &TestCluster,
    via: u64,
    t: &str,
) -> Result<tonic::Response<pb::RevokeResponse>, tonic::Status> {
    c.tokens_on(via, "frontend")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t.to_string())),
        })
        .await
}

/// The jtis of the `Revoked` events read from `stream` until every one of
/// `want` has arrived (bounded).
async fn read_revoked(stream: &mut tonic::Streaming<pb::WatchEvent>, want: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    let read = async {
        while !want.is_subset(&seen) {
            let e = stream
                .message()
                .await
                .expect("stream failed")
                .expect("stream ended");
            if let Some(Kind::Revoked(rs)) = e.kind {
                for r in rs.revocations {
                    if let Some(pb::revocation::Target::Jti(j)) = r.target {
                        seen.insert(j);
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the learner's stream never delivered {want:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_serves_linearizable_reads_exchanges_and_streams_without_promotion() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();

    // Started but not added: it holds nothing it can vouch for.
    c.add_node(4, false).await;
    assert_eq!(health(&c, 4).await, ServingStatus::NotServing as i32);
    let s = c
        .admin(4)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.leader_known, "{s:?}");
    let (t0, _) = issue(&c, leader).await;
    let e = c
        .tokens_on(4, "orders")
        .await
        .introspect(introspect_req(&t0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = RevocationServiceClient::new(c.channel_as(4, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Added, never promoted: a learner, and the quorum is still 1, 2, 3.
    let s = add_learner(&c, leader, 4).await;
    let n4 = s
        .nodes
        .iter()
        .find(|n| n.node_id == 4)
        .expect("node 4 listed");
    assert_eq!(n4.role, "learner");
    assert_eq!(voters(&c, leader), BTreeSet::from([1, 2, 3]));
    wait_health(&c, 4, ServingStatus::Serving).await;
    let s = c
        .admin(4)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.leader_known, "{s:?}");
    assert_eq!(s.state, "learner");
    assert_eq!(s.leader_id, leader);
    let me = s.nodes.iter().find(|n| n.node_id == 4).unwrap();
    assert_eq!(me.role, "learner");

    // A subscriber on the learner, from its current revision.
    let from = c.node(4).state().revision();
    let mut stream = RevocationServiceClient::new(c.channel_as(4, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: from,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Revoked on the leader (or through a follower): the learner says
    // inactive as soon as the revoke is acknowledged, and refuses to
    // exchange the token.
    let mut introspect = c.tokens_on(4, "orders").await;
    let mut exchange = c.tokens_on(4, "orders").await;
    let mut revoked = BTreeSet::new();
    for k in 0..12 {
        let via = if k % 2 == 0 { leader } else { follower };
        let (t, jti) = issue(&c, via).await;
        let ok = exchange
            .exchange_token(exchange_req(&t, "payments", &["payments:charge"]))
            .await;
        assert!(ok.is_ok(), "attempt {k}: a live token was refused: {ok:?}");
        let rev = revoke_token(&c, via, &t)
            .await
            .unwrap()
            .into_inner()
            .revision;
        let r = introspect
            .introspect(introspect_req(&t))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !r.active,
            "attempt {k}: the learner said active=true for a token revoked at {rev} (its revision {})",
            r.revision
        );
        assert!(r.linearizable);
        assert!(r.revision >= rev, "attempt {k}: {} < {rev}", r.revision);
        let e = exchange
            .exchange_token(exchange_req(&t, "payments", &["payments:charge"]))
            .await
            .expect_err(&format!(
                "attempt {k}: the learner exchanged a revoked token"
            ));
        assert_eq!(e.code(), Code::Unauthenticated, "attempt {k}: {e:?}");
        revoked.insert(jti);
    }
    read_revoked(&mut stream, &revoked).await;

    // Writes through the learner reach the leader.
    let (t, _) = issue(&c, 4).await;
    revoke_token(&c, 4, &t).await.unwrap();
    let r = c
        .tokens_on(leader, "orders")
        .await
        .introspect(introspect_req(&t))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active);
    assert_eq!(voters(&c, 4), BTreeSet::from([1, 2, 3]));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_voters_gets_no_quorum_from_its_learners() {
    let mut c = TestCluster::start(3).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    for i in [4, 5] {
        c.add_node(i, false).await;
        add_learner(&c, old, i).await;
        wait_health(&c, i, ServingStatus::Serving).await;
    }
    let (t, _) = issue(&c, old).await;

    // The leader still reaches both learners, but no other voter: two
    // learners are not a quorum, so it neither commits nor confirms reads.
    c.faults.isolate_from(old, majority.clone());
    wait_health(&c, old, ServingStatus::NotServing).await;
    let e = revoke_token(&c, old, &t).await;
    // Refused, or at most an unknown outcome: never acknowledged by a
    // quorum of learners.
    let e = e.expect_err("a leader cut off from every other voter acknowledged a write");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{e:?}"
    );

    // The majority elects a leader and revokes; the learners follow it
    // and never answer active=true from the old leader's word.
    let new = c.agreed_leader(&majority).await;
    assert_ne!(new, old);
    // A new leader may still be settling: retry UNAVAILABLE, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    let rev = loop {
        let r = revoke_token(&c, new, &t).await;
        match r {
            Ok(r) => break r.into_inner().revision,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                c.agreed_leader(&majority).await;
            }
            Err(s) => panic!("the majority did not acknowledge the revocation: {s:?}"),
        }
    };
    for i in [4, 5] {
        match c
            .tokens_on(i, "orders")
            .await
            .introspect(introspect_req(&t))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                assert!(
                    !r.active,
                    "learner {i} said active=true after revision {rev}"
                );
                assert!(r.linearizable && r.revision >= rev);
            }
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        }
    }
    let new = c.agreed_leader(&majority).await;
    for i in [4, 5] {
        c.node(i)
            .raft()
            .wait(Some(WAIT))
            .current_leader(new, "the learner follows the new leader")
            .await
            .unwrap();
        wait_health(&c, i, ServingStatus::Serving).await;
        let r = c
            .tokens_on(i, "orders")
            .await
            .introspect(introspect_req(&t))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.active && r.linearizable && r.revision >= rev);
    }
    assert_eq!(voters(&c, new), BTreeSet::from([1, 2, 3]));
    c.faults.heal();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_cut_off_from_the_leader_stops_serving_and_the_voters_write_on() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    c.add_node(4, false).await;
    add_learner(&c, leader, 4).await;
    wait_health(&c, 4, ServingStatus::Serving).await;
    let (t, _) = issue(&c, leader).await;

    c.faults.isolate(4);
    wait_health(&c, 4, ServingStatus::NotServing).await;
    // The voters do not wait for it.
    let rev = revoke_token(&c, leader, &t)
        .await
        .unwrap()
        .into_inner()
        .revision;
    // It cannot get a read index, so it refuses rather than answer from
    // state without the revocation.
    let e = c
        .tokens_on(4, "orders")
        .await
        .introspect(introspect_req(&t))
        .await
        .expect_err("a cut-off learner answered a linearizable read");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let s = c
        .admin(4)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.leader_known, "{s:?}");

    c.faults.heal();
    wait_health(&c, 4, ServingStatus::Serving).await;
    let r = c
        .tokens_on(4, "orders")
        .await
        .introspect(introspect_req(&t))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active && r.linearizable && r.revision >= rev);
    c.stop().await;
}

/// A member restarted with its data at another Raft address could not be
/// added back: `AddLearner` saw the same id and data incarnation, kept the
/// old address in the membership, and timed out waiting for a catch-up
/// the leader kept sending to the old address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_at_another_address_could_not_be_added_back() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let moved = (1..=3).find(|&i| i != leader).unwrap();
    let old = c.raft_addr(moved);
    c.stop_node(moved).await;
    c.move_raft_addr(moved);
    c.start_node(moved).await;
    let new = c.raft_addr(moved);
    assert_ne!(old, new);
    // Written while the moved node cannot be reached where it was.
    let (t, _) = issue(&c, leader).await;
    let rev = revoke_token(&c, leader, &t)
        .await
        .unwrap()
        .into_inner()
        .revision;

    let s = add_learner(&c, leader, moved).await;
    let m = s
        .nodes
        .iter()
        .find(|n| n.node_id == moved)
        .expect("the moved node is a member");
    assert_eq!(m.raft_addr, new, "{s:?}");
    assert_eq!(m.role, "voter", "it stays a voter: {s:?}");
    wait_health(&c, moved, ServingStatus::Serving).await;
    let r = c
        .tokens_on(moved, "orders")
        .await
        .introspect(introspect_req(&t))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active && r.linearizable && r.revision >= rev, "{r:?}");
    c.stop().await;
}

/// `cluster add` of a healthy member, at the address the membership
/// records, whose configuration now advertises another Raft address (a
/// typo, a rename not live yet): the first version of the address update
/// recorded the advertised address, which nothing had proved reachable,
/// and the leader lost the voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_adding_a_member_recorded_an_address_it_only_advertised() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let f = (1..=3).find(|&i| i != leader).unwrap();
    let good = c.raft_addr(f);
    c.stop_node(f).await;
    c.config_mut(f).raft_advertise_addr = "127.0.0.1:9".into();
    c.start_node(f).await;
    assert_eq!(c.raft_addr(f), good);
    revoke_on(&c, leader, pb::revoke_request::Target::Jti("before".into())).await;
    c.wait_converged(&[1, 2, 3]).await;

    let s = add_learner(&c, leader, f).await;
    let recorded = s.nodes.iter().find(|n| n.node_id == f).unwrap();
    assert_eq!(recorded.raft_addr, good, "{s:?}");
    revoke_on(&c, leader, pb::revoke_request::Target::Jti("after".into())).await;
    c.wait_converged(&[1, 2, 3]).await;
    c.stop().await;
}

/// The leader and a learner are cut off together from the other voters,
/// which elect a leader and acknowledge a revocation. openraft 0.9's old
/// leader does not step down for want of a quorum and keeps sending the
/// learner heartbeats, which the learner accepts (it never heard of the
/// new term). The learner went on saying a leader was live (health, status,
/// stream heartbeats) and answered `LOCAL` reads that missed the
/// revocation with a staleness of one heartbeat (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_left_with_a_deposed_leader_claimed_it_live_and_its_state_fresh() {
    let mut c = TestCluster::start(3).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    c.add_node(4, false).await;
    add_learner(&c, old, 4).await;
    wait_health(&c, 4, ServingStatus::Serving).await;
    let (t, _) = issue(&c, old).await;
    c.wait_converged(&[1, 2, 3, 4]).await;
    // A subscriber on the learner, before the partition.
    let mut sub = RevocationServiceClient::new(c.channel_as(4, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: c.node(4).state().revision(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut health = HealthClient::new(c.channel_as(4, &c.files("ledger")).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // {old leader, learner} | {the two other voters}.
    c.faults.isolate_from(old, majority.clone());
    c.faults.isolate_from(4, majority.clone());
    let new = c.agreed_leader(&majority).await;
    assert_ne!(new, old);
    let deadline = tokio::time::Instant::now() + WAIT;
    let rev = loop {
        match revoke_token(&c, new, &t).await {
            Ok(r) => break r.into_inner().revision,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                c.agreed_leader(&majority).await;
            }
            Err(s) => panic!("the majority did not acknowledge the revocation: {s:?}"),
        }
    };
    let acked = std::time::Instant::now();
    assert_eq!(
        c.node(4).raft().metrics().borrow().current_leader,
        Some(old),
        "the scenario needs the learner to follow the deposed leader"
    );

    // The learner must admit it within the contact timeout (3 s) and a
    // round (2 s); give it five times that.
    let mut wrong = Vec::new();
    let stopped_serving = tokio::time::timeout(Duration::from_secs(25), async {
        while let Ok(Some(r)) = health.message().await {
            if r.status != ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await;
    if stopped_serving != Ok(true) {
        wrong.push(format!(
            "health: still SERVING {:?} after the revocation was acknowledged",
            acked.elapsed()
        ));
    }
    let s = c
        .admin(4)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    if s.leader_known {
        wrong.push(format!(
            "ClusterStatus: leader_known=true, leader_id={} (the deposed leader is {old}, the live one {new})",
            s.leader_id
        ));
    }
    let sent = std::time::Instant::now();
    let r = c
        .tokens_on(4, "orders")
        .await
        .introspect(pb::IntrospectRequest {
            consistency: pb::Consistency::Local as i32,
            ..introspect_req(&t)
        })
        .await
        .unwrap()
        .into_inner();
    let at_least = sent.duration_since(acked).as_millis() as u64;
    wrong.extend(too_fresh(&r, rev, at_least));
    // The subscriber's stream ends (resumable) or its heartbeats stop
    // saying a leader is known (heartbeats sent before the node knew may
    // still be in flight).
    let admitted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sub.message().await {
                Ok(Some(e)) => {
                    if let Some(Kind::Heartbeat(hb)) = e.kind {
                        if !hb.leader_known {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    return;
                }
            }
        }
    })
    .await;
    if admitted.is_err() {
        wrong.push("watch: the stream goes on, its heartbeats say leader_known=true".into());
    }
    assert!(
        wrong.is_empty(),
        "learner 4, following deposed leader {old}:\n  {}",
        wrong.join("\n  ")
    );
    c.faults.heal();
    c.stop().await;
}
