//! Answers a client can trust: a node answers `active=true` only from state
//! that includes every acknowledged revocation, or says it cannot vouch for
//! its state (`UNAVAILABLE`, `NOT_SERVING`, `leader_known=false`). One test
//! per situation the black-box run found (the paused leader is in
//! `t92_pause`, with real processes).

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cluster::*;
use tessera::pb;
use tessera::pb::revocation_service_client::RevocationServiceClient;

/// Waits (bounded) until node `i`'s health reports `want`.
pub(crate) async fn wait_health(c: &TestCluster, i: u64, want: ServingStatus) {
    let mut h = HealthClient::new(c.channel_as(i, &c.files("ledger")).await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, async {
        while let Some(r) = watch.message().await.unwrap() {
            if r.status == want as i32 {
                return;
            }
        }
        panic!("health stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("node {i} health never became {want:?}"));
}

/// Node `i`'s health right now.
pub(crate) async fn health(c: &TestCluster, i: u64) -> i32 {
    HealthClient::new(c.channel_as(i, &c.files("ledger")).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Whether node `i`'s health says `SERVING` now.
async fn serving(c: &TestCluster, i: u64) -> bool {
    health(c, i).await == ServingStatus::Serving as i32
}

/// Revokes `token` through any of `via`, retrying while leadership moves;
/// returns the acknowledged revision.
async fn revoke_acknowledged(c: &TestCluster, via: &[u64], token: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for i in via {
            let r = c
                .tokens_on(*i, "frontend")
                .await
                .revoke(pb::RevokeRequest {
                    target: Some(pb::revoke_request::Target::Token(token.to_string())),
                })
                .await;
            match r {
                Ok(r) => return r.into_inner().revision,
                Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no revocation acknowledged"
        );
        // The majority is electing a leader: wait for one to be agreed.
        c.agreed_leader(via).await;
    }
}

/// Introspects on node `i` with the default (linearizable) consistency and
/// checks the answer is never `active=true`; returns the status code of a
/// refusal, if refused.
async fn never_active(c: &TestCluster, i: u64, token: &str) -> Option<Code> {
    never_active_or(c, i, token)
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}"))
}

/// Like [`never_active`], with what is wrong (an `active=true` answer, or
/// one not marked linearizable) as an error to report.
async fn never_active_or(c: &TestCluster, i: u64, token: &str) -> Result<Option<Code>, String> {
    match c
        .tokens_on(i, "orders")
        .await
        .introspect(introspect_req(token))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            if r.active || !r.linearizable {
                return Err(format!(
                    "linearizable: active={} (linearizable={}) at revision {} for a revoked token",
                    r.active, r.linearizable, r.revision
                ));
            }
            Ok(None)
        }
        Err(s) => Ok(Some(s.code())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_never_answers_active_for_a_token_revoked_on_the_majority() {
    let c = TestCluster::start(3).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let t = c.issue_on(old).await;
    // Active before: the audience is told so (the checks below can fail).
    let before = c
        .tokens_on(old, "orders")
        .await
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(before.active && before.linearizable);
    // A subscriber on the old leader, before the partition.
    let mut sub = RevocationServiceClient::new(c.channel_as(old, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    c.faults.isolate(old);
    let rev = revoke_acknowledged(&c, &majority, &t.access_token).await;

    // For the whole partition, the old leader never says active=true.
    for _ in 0..3 {
        let code = never_active(&c, old, &t.access_token).await;
        assert_eq!(code, Some(Code::Unavailable));
    }
    wait_health(&c, old, ServingStatus::NotServing).await;
    let s = c
        .admin(old)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.leader_known, "{s:?}");
    assert_eq!(s.leader_id, 0);
    assert!(s.not_serving_reason.contains("quorum"), "{s:?}");
    // Its stream ends with a resumable UNAVAILABLE instead of streaming on
    // from a state that misses the revocation.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match sub.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended without a status"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("the old leader ends its streams");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended
        .metadata()
        .get(tessera::api::RESUME_METADATA)
        .is_some());
    // New subscribers and JWKS requests are refused.
    let refused = RevocationServiceClient::new(c.channel_as(old, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let jwks = tessera::pb::key_service_client::KeyServiceClient::new(
        c.channel_as(old, &c.files("ledger")).await,
    )
    .get_jwks(pb::GetJwksRequest {})
    .await
    .unwrap_err();
    assert_eq!(jwks.code(), Code::Unavailable);
    // The majority answers, linearizably.
    for i in &majority {
        assert_eq!(never_active(&c, *i, &t.access_token).await, None);
    }

    c.faults.heal();
    // The old leader steps down when it hears the new term.
    let new = c.agreed_leader(&majority).await;
    c.node(old)
        .raft()
        .wait(Some(WAIT))
        .current_leader(new, "the old leader follows the new one")
        .await
        .unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    for i in [1, 2, 3] {
        assert_eq!(never_active(&c, i, &t.access_token).await, None);
        assert!(c.node(i).state().revision() >= rev);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_the_leader_cannot_be_exchanged_on_a_follower_a_moment_later() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut issuer = c.tokens_on(leader, "frontend").await;
    let mut exchanger = c.tokens_on(follower, "orders").await;
    for k in 0..40 {
        let t = issuer
            .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
            .await
            .unwrap()
            .into_inner();
        issuer
            .revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Token(t.access_token.clone())),
            })
            .await
            .unwrap();
        // At once, on another node: the revocation is acknowledged, so the
        // exchange must see it.
        let e = exchanger
            .exchange_token(exchange_req(
                &t.access_token,
                "payments",
                &["payments:charge"],
            ))
            .await
            .expect_err(&format!("attempt {k}: a revoked token was exchanged"));
        assert_eq!(e.code(), Code::Unauthenticated, "attempt {k}: {e:?}");
        assert!(e.message().contains("revoked"), "{}", e.message());
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_serves_no_empty_state_before_it_is_re_added() {
    let mut c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let wiped = if leader == 3 { 2 } else { 3 };
    let t = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner();
    revoke_acknowledged(&c, &[leader], &t.access_token).await;
    assert_eq!(never_active(&c, wiped, &t.access_token).await, None);

    c.stop_node(wiped).await;
    std::fs::remove_dir_all(c.data_dir(wiped)).unwrap();
    c.start_node(wiped).await;
    // Give it every chance to hear the leader: a few more writes.
    let b = revoke_burst(&c, "after-wipe", 10, 2, &[leader]).await;
    assert!(b.failed.is_empty(), "{:?}", b.failed);

    let mut h = HealthClient::new(c.channel_as(wiped, &c.files("ledger")).await);
    let status = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let s = c
        .admin(wiped)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.leader_known, "{s:?}");
    let w = RevocationServiceClient::new(c.channel_as(wiped, &c.files("ledger")).await)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(w.code(), Code::Unavailable, "{w:?}");
    let jwks = tessera::pb::key_service_client::KeyServiceClient::new(
        c.channel_as(wiped, &c.files("ledger")).await,
    )
    .get_jwks(pb::GetJwksRequest {})
    .await
    .unwrap_err();
    assert_eq!(jwks.code(), Code::Unavailable);
    assert_eq!(
        never_active(&c, wiped, &t.access_token).await,
        Some(Code::Unavailable)
    );
    // Even a LOCAL read refuses: an empty state is not a stale one.
    let local = c
        .tokens_on(wiped, "orders")
        .await
        .introspect(pb::IntrospectRequest {
            consistency: pb::Consistency::Local as i32,
            ..introspect_req(&t.access_token)
        })
        .await
        .unwrap_err();
    assert_eq!(local.code(), Code::Unavailable);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_rejoins_without_deposing_the_leader() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 3 { 2 } else { 3 };
    let term = c.node(leader).raft().metrics().borrow().current_term;

    c.faults.isolate(follower);
    // Wait until it has tried (and failed) to win a pre-vote three times:
    // without pre-vote each of those would have raised its term.
    let mut tries = c.node(follower).campaign_stats().watch_pre_votes();
    tokio::time::timeout(WAIT, tries.wait_for(|n| *n >= 3))
        .await
        .expect("the isolated follower keeps asking")
        .unwrap();
    assert_eq!(
        c.node(follower).raft().metrics().borrow().current_term,
        term,
        "an isolated follower must not raise its term"
    );

    // Writes keep flowing through the heal; record the longest gap.
    let writer = {
        let mut client = c.tokens_on(leader, "admin").await;
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut last = tokio::time::Instant::now();
            for k in 0..60 {
                client
                    .revoke(revoke_jti(&format!("heal-{k}")))
                    .await
                    .expect("writes continue while the follower rejoins");
                longest = longest.max(last.elapsed());
                last = tokio::time::Instant::now();
            }
            longest
        })
    };
    c.faults.heal();
    let longest = writer.await.unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    let m = c.node(leader).raft().metrics().borrow().clone();
    assert_eq!(m.current_leader, Some(leader), "the leader was deposed");
    assert_eq!(m.current_term, term, "the term changed");
    eprintln!("longest gap between acknowledged writes while the follower rejoined: {longest:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_serving_and_recovers_after_a_restart() {
    let faults = tessera::store::StoreFaults::new();
    let injected = faults.clone();
    let mut c = TestCluster::start_with(3, move |cfg| {
        if cfg.node_id == 3 {
            cfg.store_faults = injected.clone();
        }
    })
    .await;
    c.agreed_leader(&[1, 2, 3]).await;
    let t = c.issue_on(1).await;
    let before = c
        .tokens_on(3, "orders")
        .await
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        before.active,
        "node 3 knows the token before the disk fills"
    );
    let api3 = c.node(3).api_addr().to_string();

    // Node 3's disk is full: its next write fails (leader or follower).
    faults.fail_writes(true);
    let rev = revoke_acknowledged(&c, &[1, 2], &t.access_token).await;
    let message = tokio::time::timeout(WAIT, c.node(3).failed())
        .await
        .expect("node 3 stops itself on the failed write");
    assert!(
        message.contains("No space left on device (injected)"),
        "{message}"
    );
    assert!(
        message.contains(&c.data_dir(3).display().to_string()),
        "{message}"
    );
    // It no longer answers: not from its frozen state, not at all.
    if let Ok(ch) = tessera::client::connect(&api3, &c.files("orders")).await {
        let r = tessera::pb::token_service_client::TokenServiceClient::new(ch)
            .introspect(introspect_req(&t.access_token))
            .await;
        assert!(r.is_err() || !r.unwrap().into_inner().active);
    }
    // The others carry on.
    let b = revoke_burst(&c, "disk-full", 20, 2, &[1, 2]).await;
    assert!(b.failed.is_empty(), "{:?}", b.failed);

    // Space freed, the supervisor restarts it: it recovers from its disk
    // and catches up with everything acknowledged meanwhile.
    faults.fail_writes(false);
    let failed = c.nodes.remove(&3).unwrap();
    let _ = failed.shutdown().await;
    c.start_node(3).await;
    c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(never_active(&c, 3, &t.access_token).await, None);
    assert!(c.node(3).state().revision() >= rev);
    let revoked = c.revoked(3);
    for (jti, _) in &b.acked {
        assert!(revoked.contains(jti), "node 3 lacks {jti}");
    }
    c.stop().await;
}

/// A voter's vote for itself is not subject to openraft's vote lease: a
/// node whose pre-vote was granted before it heard the leader again (and
/// acknowledged the round the leader's read lease rests on) could be
/// elected inside that lease, while the old leader, cut off, still
/// answered `active=true` from its own state (found by review). The
/// election starts only if no leader was heard for the longest election
/// timeout, checked atomically with the Raft service recording contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_heard_the_leader_is_not_elected_inside_its_lease() {
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let v = if leader == 1 { 2 } else { 1 };
    let t = c.issue_on(leader).await;
    // A linearizable read on the leader (a confirmed round or its lease),
    // and v caught up with it: v heard the leader just now.
    let r = c
        .tokens_on(leader, "orders")
        .await
        .introspect(introspect_req(&t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active && r.linearizable);
    c.wait_converged(&[1, 2, 3]).await;
    let term = c.node(v).raft().metrics().borrow().current_term;
    assert!(
        !c.node(v).elect_unless_led().await.unwrap(),
        "node {v} started an election although it had just heard leader {leader}"
    );
    assert_eq!(c.node(v).raft().metrics().borrow().current_term, term);
    // The leader stays, and answers for what is acknowledged through v.
    revoke_acknowledged(&c, &[v], &t.access_token).await;
    assert_eq!(c.agreed_leader(&[1, 2, 3]).await, leader);
    for i in [leader, v] {
        assert_eq!(never_active(&c, i, &t.access_token).await, None);
    }
    c.stop().await;
}

/// A leader stopped, deposed while down (the others elect a leader and
/// acknowledge a revocation), and started again cut off from them. openraft
/// 0.9 restores a node whose saved vote is its own committed vote as
/// leader of its old term at once; it had heard from no quorum, yet it
/// reported itself the live leader (health `SERVING`, `leader_known`) and
/// answered a `LOCAL` read that missed the acknowledged revocation with a
/// `max_staleness_ms` counted from its own start (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_restarted_cut_off_claimed_a_quorum_and_fresh_state() {
    let mut c = TestCluster::start(3).await;
    let old = c.agreed_leader(&[1, 2, 3]).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let t = c.issue_on(old).await;
    c.wait_converged(&[1, 2, 3]).await;

    c.stop_node(old).await;
    let rev = revoke_acknowledged(&c, &majority, &t.access_token).await;
    let acked = std::time::Instant::now();
    // Let time pass (not a synchronisation: nothing is awaited), so that a
    // staleness counted from the restart is visibly smaller than the truth.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back on its data, cut off from the voters that deposed it: openraft
    // restores it as leader of its old term.
    c.faults.isolate(old);
    c.start_node(old).await;
    assert_eq!(
        c.node(old).raft().metrics().borrow().current_leader,
        Some(old),
        "the scenario needs the restarted node to lead its old term"
    );

    let mut wrong = Vec::new();
    let sent = std::time::Instant::now();
    let r = c
        .tokens_on(old, "orders")
        .await
        .introspect(pb::IntrospectRequest {
            consistency: pb::Consistency::Local as i32,
            ..introspect_req(&t.access_token)
        })
        .await;
    let at_least = sent.duration_since(acked).as_millis() as u64;
    match r {
        Ok(r) => {
            wrong.extend(too_fresh(&r.into_inner(), rev, at_least));
        }
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
    }
    if serving(&c, old).await {
        wrong.push("health: SERVING".into());
    }
    let s = c
        .admin(old)
        .await
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    if s.leader_known {
        wrong.push(format!(
            "ClusterStatus: leader_known=true, leader_id={}, state={}",
            s.leader_id, s.state
        ));
    }
    assert!(
        wrong.is_empty(),
        "node {old}, restarted after being deposed and cut off from every voter:\n  {}",
        wrong.join("\n  ")
    );
    // Linearizable reads are refused there.
    assert_eq!(
        never_active(&c, old, &t.access_token).await,
        Some(Code::Unavailable)
    );
    c.faults.heal();
    c.stop().await;
}

/// Found by review: openraft restores a node whose saved vote is its own as
/// leader of that term, with a read index of its saved commit, which is
/// saved lazily; its state is replayed only that far. A leader that crashed
/// just after acknowledging a revocation, back before anyone else stood,
/// had a quorum confirm a read index below that revocation and answered
/// `active=true`, from a lease too, with LOCAL answers claiming freshness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_after_a_crash_answered_from_before_what_it_had_acknowledged() {
    let faults: Vec<tessera::store::StoreFaults> =
        (0..3).map(|_| tessera::store::StoreFaults::new()).collect();
    let injected = faults.clone();
    // Followers wait long before they stand: the restarted node must come
    // back as the leader of its term (the scenario).
    let mut c = TestCluster::start_with(3, move |cfg| {
        cfg.store_faults = injected[(cfg.node_id - 1) as usize].clone();
        cfg.raft.election_timeout_ms = 10_000;
        cfg.raft.contact_timeout_ms = 20_000;
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let t = c.issue_on(leader).await;
    // Everything before the revocation that matters is committed when it
    // is appended, so the commit saved with it covers all of that.
    revoke_on(
        &c,
        leader,
        pb::revoke_request::Target::Jti("earlier".into()),
    )
    .await;
    let rev = revoke_acknowledged(&c, &[leader], &t.access_token).await;
    let acked = std::time::Instant::now();
    let term = c.node(leader).raft().metrics().borrow().current_term;
    c.wait_converged(&[1, 2, 3]).await;

    // A crash: nothing more reaches its disk, so the commit index it holds
    // only in memory (saved with the next append, or at a clean close) is
    // lost, as with a kill -9 or a power cut.
    let disk = &faults[(leader - 1) as usize];
    disk.fail_writes(true);
    let crashed = c.nodes.remove(&leader).unwrap();
    let _ = crashed.shutdown().await;
    c.hold_raft_addr(leader).await;
    disk.fail_writes(false);

    // Back at once, before a follower stands. The followers answer its
    // heartbeats (so a quorum confirms its rounds), but the entries it
    // sends them are held: it cannot learn that the revocation is committed.
    for f in &followers {
        c.faults.hold_entries(*f);
    }
    c.start_node(leader).await;
    let m = c.node(leader).raft().metrics().borrow().clone();
    assert_eq!(
        (m.current_leader, m.current_term),
        (Some(leader), term),
        "the scenario needs the restarted node to lead its old term"
    );
    assert!(
        m.last_applied.map_or(0, |l| l.index) < rev,
        "the scenario needs the restarted node's state to lack the revocation ({:?}, revision {rev})",
        m.last_applied
    );

    let mut wrong = Vec::new();
    match never_active_or(&c, leader, &t.access_token).await {
        Ok(None) | Ok(Some(Code::Unavailable)) => {}
        Ok(Some(code)) => wrong.push(format!("linearizable read refused with {code:?}")),
        Err(e) => wrong.push(e),
    }
    let sent = std::time::Instant::now();
    let r = c
        .tokens_on(leader, "orders")
        .await
        .introspect(pb::IntrospectRequest {
            consistency: pb::Consistency::Local as i32,
            ..introspect_req(&t.access_token)
        })
        .await
        .unwrap()
        .into_inner();
    wrong.extend(too_fresh(
        &r,
        rev,
        sent.duration_since(acked).as_millis() as u64,
    ));
    if serving(&c, leader).await {
        wrong.push("health: SERVING".into());
    }
    assert!(
        wrong.is_empty(),
        "node {leader}, restarted after a crash as leader of its term:\n  {}",
        wrong.join("\n  ")
    );

    // Entries flow again: the revocation is committed, and every node
    // answers it.
    for f in &followers {
        c.faults.release_entries(*f);
    }
    c.wait_converged(&[1, 2, 3]).await;
    for i in [1, 2, 3] {
        assert_eq!(never_active(&c, i, &t.access_token).await, None, "node {i}");
    }
    c.stop().await;
}
