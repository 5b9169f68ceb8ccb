//! A follower behind its leader's commit says so: `NOT_SERVING`
//! ("catching up"), `leader_known = false` in `ClusterStatus`, and a
//! `LOCAL` staleness counted from when it was last current — never
//! `SERVING` with a staleness measured from its last heartbeat.
//!
//! The follower is held behind with `Faults::hold_entries` (heartbeats, and
//! with them the leader's commit index, still reach it; entries do not), so
//! nothing depends on how fast it would otherwise catch up.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cluster::*;
use crate::t82_consistency::wait_health;
use tessera::pb;

/// Entries a follower may trail its leader's commit and still serve.
const LAG: u64 = 2;
/// Writes made while the follower is held: well past [`LAG`].
const WRITES: usize = 6;

/// A three-node cluster with a small catch-up lag, its leader and one
/// follower.
async fn cluster() -> (TestCluster, u64, u64) {
    let c = TestCluster::start_with(3, |cfg| cfg.raft.catch_up_lag = LAG).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    (c, leader, follower)
}

/// Revokes `n` made-up jtis through `leader`; returns the last revision.
async fn writes(c: &TestCluster, leader: u64, prefix: &str, n: usize) -> u64 {
    let mut admin = c.tokens_on(leader, "admin").await;
    let mut last = 0;
    for k in 0..n {
        last = admin
            .revoke(revoke_jti(&format!("{prefix}-{k}")))
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    last
}

/// Waits (bounded) until node `i` has heard of its leader's commit
/// `commit` (its `ClusterStatus` reports it).
async fn wait_heard_commit(c: &TestCluster, i: u64, commit: u64) -> pb::ClusterStatusResponse {
    let mut admin = c.admin(i).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Heartbeats carry the commit index; they change no metric on a node
    // held behind, so look again at a steady pace (admin calls are rate
    // limited).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {i} never heard of commit {commit}"
        );
        tick.tick().await;
        let s = match admin.cluster_status(pb::ClusterStatusRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == Code::ResourceExhausted => continue,
            Err(e) => panic!("{e:?}"),
        };
        if s.commit_index >= commit {
            return s;
        }
    }
}

/// Asserts that node `i` says it is catching up, everywhere it reports
/// its state.
async fn assert_catching_up(c: &TestCluster, i: u64) {
    let s = c
        .admin(i)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.leader_known, "{s:?}");
    assert!(s.not_serving_reason.contains("catching up"), "{s:?}");
    assert!(s.applied_index + LAG < s.commit_index, "{s:?}");
    let health = HealthClient::new(c.channel_as(i, &c.files("ledger")).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::NotServing as i32);
    // New subscribers are refused rather than fed a state this far behind.
    let watch = pb::revocation_service_client::RevocationServiceClient::new(
        c.channel_as(i, &c.files("ledger")).await,
    )
    .watch_revocations(pb::WatchRequest::default())
    .await;
    let refused = match watch {
        Err(s) => s,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
}

fn local(token: &str) -> pb::IntrospectRequest {
    pb::IntrospectRequest {
        consistency: pb::Consistency::Local as i32,
        ..introspect_req(token)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_held_behind_its_leaders_commit_reports_not_serving_and_its_real_staleness() {
    let (c, leader, f) = cluster().await;
    let t = c
        .tokens_on(leader, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    c.wait_converged(&[1, 2, 3]).await;
    wait_health(&c, f, ServingStatus::Serving).await;

    c.faults.hold_entries(f);
    let revoked = c
        .tokens_on(leader, "frontend")
        .await
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let last = writes(&c, leader, "held", WRITES).await;
    // Once the follower heard a commit it does not hold, its state stopped
    // being current no later than now.
    wait_heard_commit(&c, f, last).await;
    wait_health(&c, f, ServingStatus::NotServing).await;
    let behind_since = Instant::now();
    assert_catching_up(&c, f).await;

    // Let time pass (not a synchronisation: nothing is awaited), so that a
    // staleness counted from the last heartbeat — they keep arriving —
    // would be visibly smaller than the truth.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = Instant::now();
    let r = c
        .tokens_on(f, "orders")
        .await
        .introspect(local(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.revision < revoked, "the follower is held behind: {r:?}");
    assert!(!r.linearizable);
    let at_least = sent.duration_since(behind_since).as_millis() as u64;
    assert!(
        r.max_staleness_ms >= at_least,
        "a LOCAL answer from a node behind since {at_least} ms claimed {} ms",
        r.max_staleness_ms
    );
    assert_catching_up(&c, f).await;

    c.faults.release_entries(f);
    wait_health(&c, f, ServingStatus::Serving).await;
    // Serving again means within LAG of every commit it heard.
    assert!(c.node(f).state().revision() + LAG >= last);
    assert!(c.node(f).state().revision() >= revoked);
    let r = c
        .tokens_on(f, "orders")
        .await
        .introspect(local(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active, "{r:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarting_far_behind_never_reports_serving_until_it_caught_up() {
    let (mut c, leader, f) = cluster().await;
    c.wait_converged(&[1, 2, 3]).await;
    c.stop_node(f).await;
    let last = writes(&c, leader, "while-down", WRITES).await;

    // Back, but held behind: it hears the leader, not the entries.
    c.faults.hold_entries(f);
    c.start_node(f).await;
    let mut health = HealthClient::new(c.channel_as(f, &c.files("ledger")).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = wait_heard_commit(&c, f, last).await;
    assert!(s.applied_index < last, "{s:?}");
    wait_health(&c, f, ServingStatus::NotServing).await;
    assert_catching_up(&c, f).await;

    c.faults.release_entries(f);
    // Every status published since it started, up to the first SERVING:
    // it must hold (within LAG) everything committed while it was down.
    tokio::time::timeout(WAIT, async {
        while let Some(h) = health.message().await.unwrap() {
            if h.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("health stream ended");
    })
    .await
    .expect("the follower caught up");
    assert!(c.node(f).state().revision() + LAG >= last);
    // An open health watch would hold the node's graceful shutdown.
    drop(health);
    c.stop().await;
}

/// A follower whose disk was full while it received a snapshot went on
/// serving from its frozen state: openraft writes the chunks outside its
/// core and hands the error back to the leader as the answer, so the core
/// never stopped, health stayed `SERVING` and the leader retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_filled_while_receiving_a_snapshot_kept_serving() {
    let faults: Vec<tessera::store::StoreFaults> =
        (0..3).map(|_| tessera::store::StoreFaults::new()).collect();
    let injected = faults.clone();
    let mut c = TestCluster::start_with(3, move |cfg| {
        cfg.raft.snapshot_every = 20;
        cfg.raft.keep_logs = 5;
        cfg.store_faults = injected[(cfg.node_id - 1) as usize].clone();
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let (b, _) = c
        .leave_behind_a_purged_log(leader, lagging, "full", 120)
        .await;

    // Its disk is full when the snapshot it needs arrives.
    faults[(lagging - 1) as usize].fail_writes(true);
    c.faults.heal();
    let message = tokio::time::timeout(WAIT, c.node(lagging).failed())
        .await
        .expect("the node stops itself when it cannot store the snapshot");
    assert!(message.contains("receiving a snapshot"), "{message}");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        message.contains(&c.data_dir(lagging).display().to_string()),
        "{message}"
    );

    // Space freed, the supervisor restarts it: it installs the snapshot and
    // holds every acknowledged revocation.
    faults[(lagging - 1) as usize].fail_writes(false);
    let failed = c.nodes.remove(&lagging).unwrap();
    let _ = failed.shutdown().await;
    c.start_node(lagging).await;
    c.wait_converged(&[1, 2, 3]).await;
    let revoked = c.revoked(lagging);
    for (jti, _) in &b.acked {
        assert!(revoked.contains(jti), "node {lagging} lacks {jti}");
    }
    c.stop().await;
}

/// A follower held back while a few large entries were committed (here 70
/// of about 1 MiB, as 70 policies of the largest size allowed would be)
/// never caught up: openraft 0.9 sent it everything it missed in one
/// `AppendEntries` (bounded in entries, not bytes: ~70 MiB, over the
/// transport's 64 MiB message limit and far more than crosses in the one
/// heartbeat interval it waits), then the same message again, for ever
/// (found by review). The log's replication reads now stop at 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_few_large_entries_never_caught_up() {
    const ENTRIES: u64 = 70;
    const JTIS: usize = 1024;
    let (c, leader, follower) = cluster().await;
    c.faults.hold_entries(follower);
    let raft = c.node(leader).raft();
    let mut last = 0;
    for k in 0..ENTRIES {
        let jtis = (0..JTIS)
            .map(|j| tessera::raft::RevokedJti {
                jti: format!("{k:04}-{j:04}-{}", "x".repeat(1000)),
                until: u64::MAX / 2,
            })
            .collect();
        let written = raft
            .client_write(tessera::raft::Command {
                at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                op: tessera::raft::Op::RevokeJtis { jtis },
            })
            .await
            .unwrap_or_else(|e| panic!("large entry {k}: {e}"));
        last = written.log_id.index;
    }
    c.faults.release_entries(follower);
    let caught_up = c
        .node(follower)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index >= last),
            "the follower applied the large entries",
        )
        .await;
    let applied = c.node(follower).raft().metrics().borrow().last_applied;
    assert!(
        caught_up.is_ok(),
        "node {follower} never caught up with index {last} (applied: {applied:?})"
    );
    c.stop().await;
}
