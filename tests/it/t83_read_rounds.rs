//! Read-index rounds: inside the leader's lease, linearizable reads run no
//! confirmation round, on the leader and for followers' `ReadIndex` calls;
//! a follower's concurrent reads share pipelined rounds. Counted with the
//! node's `tessera_read_index_rounds_total` metric, never with timings: the
//! election timeout is long (so is the lease, 3/4 of it), and the bounds
//! allow for a lease that runs out several times on a busy machine.

use crate::cluster::*;

/// Reads per phase.
const N: u64 = 100;

/// Node `i`'s counter `name`, from its metrics text.
fn counter(c: &TestCluster, i: u64, name: &str) -> u64 {
    let text = c.node(i).metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from the metrics:\n{text}"))
        .trim()
        .parse::<f64>()
        .expect("a number") as u64
}

/// Node `i`'s read-index rounds and the reads they served.
fn rounds(c: &TestCluster, i: u64) -> (u64, u64) {
    (
        counter(c, i, "tessera_read_index_rounds_total"),
        counter(c, i, "tessera_read_index_reads_total"),
    )
}

/// A three-node cluster with a long election timeout (so a long lease),
/// its leader, a follower, and a token the follower's reads introspect.
async fn long_lease_cluster() -> (TestCluster, u64, u64, String) {
    // A 7.5 s lease: a hundred reads outlast it only on a machine that
    // takes 75 ms per read, and even then run one round per lease.
    let c = TestCluster::start_with(3, |cfg| {
        cfg.raft.election_timeout_ms = 10_000;
        cfg.raft.contact_timeout_ms = 20_000;
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let token = c
        .tokens_on(leader, "frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    (c, leader, follower, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_the_leaders_lease_run_no_confirmation_round() {
    let (c, leader, follower, token) = long_lease_cluster().await;

    // On the leader, one after another: the first may run a round (no
    // lease yet), the rest are inside the lease it starts.
    let (before, _) = rounds(&c, leader);
    let mut client = c.tokens_on(leader, "orders").await;
    for k in 0..N {
        let r = client
            .introspect(introspect_req(&token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.active && r.linearizable, "read {k}: {r:?}");
    }
    let (after, _) = rounds(&c, leader);
    assert!(
        after - before <= N / 10,
        "{} rounds for {N} linearizable reads on the leader",
        after - before
    );

    // On a follower, all at once: each read still gets a read index from
    // a call that starts after it arrived (rounds run, at most one per
    // read), and the leader answers those calls from its lease.
    let (leader_before, _) = rounds(&c, leader);
    let (f_before, f_reads_before) = rounds(&c, follower);
    let client = c.tokens_on(follower, "orders").await;
    let reads = (0..N).map(|k| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            let r = client
                .introspect(introspect_req(&token))
                .await
                .unwrap()
                .into_inner();
            assert!(r.active && r.linearizable, "follower read {k}: {r:?}");
        }
    });
    futures_util::future::join_all(reads).await;
    let (f_after, f_reads_after) = rounds(&c, follower);
    let (leader_after, _) = rounds(&c, leader);
    // (More than N only if a round failed and a read retried.)
    assert!(
        f_reads_after - f_reads_before >= N,
        "every follower read ran in a round"
    );
    assert!(
        (1..=N).contains(&(f_after - f_before)),
        "{} follower rounds for {N} reads",
        f_after - f_before
    );
    assert!(
        leader_after - leader_before <= N / 10,
        "the leader ran {} rounds for {N} follower reads",
        leader_after - leader_before
    );
    c.stop().await;
}

/// Node `i`'s read-index streams opened to a leader.
fn streams_opened(c: &TestCluster, i: u64) -> u64 {
    counter(c, i, "tessera_read_index_streams_opened_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_rounds_share_one_stream_that_a_partition_fails_and_a_heal_reopens() {
    let (c, leader, follower, token) = long_lease_cluster().await;
    let client = c.tokens_on(follower, "orders").await;
    let read = |k: u64| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            let r = client
                .introspect(introspect_req(&token))
                .await
                .unwrap()
                .into_inner();
            assert!(r.active && r.linearizable, "follower read {k}: {r:?}");
        }
    };

    // Rounds one after another and all at once: one stream carries them.
    // A follower confirms its leader in the background too (readiness):
    // that round opened the stream, or none is open yet.
    assert!(
        streams_opened(&c, follower) <= 1,
        "before any read, at most the keeper's stream"
    );
    let (rounds_before, _) = rounds(&c, follower);
    for k in 0..N / 2 {
        read(k).await;
    }
    futures_util::future::join_all((N / 2..N).map(read)).await;
    let (rounds_after, _) = rounds(&c, follower);
    assert!(
        rounds_after - rounds_before >= N / 2,
        "a round per serial read"
    );
    assert_eq!(
        streams_opened(&c, follower),
        1,
        "{} rounds went over one stream",
        rounds_after - rounds_before
    );

    // Cut off from the leader, the follower cannot confirm a read: it
    // refuses rather than answer from its own state.
    c.faults.block(follower, leader);
    let mut cut = c.tokens_on(follower, "orders").await;
    let refused = cut
        .introspect(introspect_req(&token))
        .await
        .expect_err("no read index while the link to the leader is cut");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // Healed, reads are linearizable again.
    c.faults.heal();
    read(N).await;
    assert!(
        streams_opened(&c, follower) <= 2,
        "the stream is reused, or reopened once after the cut"
    );
    c.stop().await;
}

/// A leader's graceful shutdown waited for the read-index streams its
/// followers held open to it: they close only after 30 s idle, so stopping
/// a leader (a rolling restart, a test's cluster) took 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_shutdown_waited_thirty_seconds_for_its_followers_read_links() {
    let (mut c, leader, follower, token) = long_lease_cluster().await;
    let r = c
        .tokens_on(follower, "orders")
        .await
        .introspect(introspect_req(&token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active && r.linearizable);
    assert_eq!(streams_opened(&c, follower), 1, "the follower holds a link");
    // Half the links' idle time: far above a stop's milliseconds, far below
    // what waiting for the link took.
    tokio::time::timeout(std::time::Duration::from_secs(15), c.stop_node(leader))
        .await
        .expect("the leader stopped without waiting for its followers' links");
    c.stop().await;
}
