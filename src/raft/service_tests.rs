//! Unit tests of the Raft gRPC service: who may call it, what it stamps on
//! replies, forwarded writes, read-index answers and the commit that proves
//! a follower current.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::VoteRequest;
use openraft::{Raft, Vote};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use super::*;
use crate::certs::{init_dev_pki, DevPki, DevPkiOptions};
use crate::raft::network::{Faults, ForwardError, Network};
use crate::raft::pb::raft_service_client::RaftServiceClient;
use crate::raft::{Op, RevokedJti};

const WAIT: Duration = Duration::from_secs(30);

struct TestNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    net: Network,
    info: NodeInfo,
    stop: Option<oneshot::Sender<()>>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    pki: DevPki,
    faults: Arc<Faults>,
    nodes: Vec<TestNode>,
}

fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        ..Default::default()
    }
}

async fn start(n: u64) -> Cluster {
    start_with(n, raft_config()).await
}

/// Starts nodes 1..=n (uninitialised) with a PKI that also has a
/// certificate for node n+1, which is never started.
async fn start_with(n: u64, config: openraft::Config) -> Cluster {
    let config = Arc::new(config.validate().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let opts = DevPkiOptions {
        nodes: n as u32 + 1,
        ..DevPkiOptions::default()
    };
    let pki = init_dev_pki(&dir.path().join("pki"), &opts).unwrap();
    let faults = Arc::new(Faults::new());
    let mut nodes = Vec::new();
    for id in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let files = pki.tls_files(&format!("node{id}")).unwrap();
        let data = dir.path().join(format!("node{id}"));
        let (log, sm, _view) = tokio::task::spawn_blocking(move || crate::store::open(&data))
            .await
            .unwrap()
            .unwrap();
        let info = NodeInfo {
            raft_addr: listener.local_addr().unwrap().to_string(),
            api_addr: format!("api.node{id}:443"),
            incarnation: log.incarnation(),
        };
        let net = Network::new(id, info.incarnation, files.clone(), Some(faults.clone())).unwrap();
        let raft = Raft::new(id, config.clone(), net.clone(), log, sm)
            .await
            .unwrap();
        let td = trust_domain_of(&files).unwrap();
        assert_eq!(td, "tessera.dev");
        let service = server(
            raft.clone(),
            id,
            info.clone(),
            &td,
            Arc::new(crate::clock::SystemClock),
            crate::raft::Proposer::for_raft(raft.clone()),
        );
        let incoming =
            crate::tls::tls_incoming(listener, crate::tls::server_config(&files).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        nodes.push(TestNode {
            id,
            raft,
            net,
            info,
            stop: Some(stop),
        });
    }
    Cluster {
        _dir: dir,
        pki,
        faults,
        nodes,
    }
}

impl Cluster {
    fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[id as usize - 1]
    }

    /// Initialises the cluster with every node, learning each node's
    /// identity through `Hello`, and returns the leader's id.
    async fn initialize(&self) -> NodeId {
        let first = &self.nodes[0];
        let mut members = BTreeMap::new();
        for n in &self.nodes {
            let (id, info) = first.net.hello(&n.info.raft_addr).await.unwrap();
            assert_eq!(id, n.id);
            assert_eq!(info, n.info);
            members.insert(id, info);
        }
        first.raft.initialize(members).await.unwrap();
        self.leader_among(&self.nodes.iter().map(|n| n.id).collect::<Vec<_>>())
            .await
    }

    /// Waits until every node of `ids` sees the same leader, one of
    /// `ids`, and returns it.
    async fn leader_among(&self, ids: &[NodeId]) -> NodeId {
        let m = self
            .node(ids[0])
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| ids.contains(&l)),
                "a leader among the nodes",
            )
            .await
            .unwrap();
        let leader = m.current_leader.unwrap();
        for id in ids {
            self.node(*id)
                .raft
                .wait(Some(WAIT))
                .current_leader(leader, "same leader")
                .await
                .unwrap();
        }
        leader
    }

    async fn wait_applied(&self, ids: &[NodeId], index: u64) {
        for id in ids {
            self.node(*id)
                .raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
                .await
                .unwrap();
        }
    }

    async fn stop(mut self) {
        for n in &mut self.nodes {
            n.raft.shutdown().await.unwrap();
            if let Some(stop) = n.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// A raw Raft service client authenticating as `name` (a file stem
    /// of the PKI) to node `id`.
    async fn raw_client(&self, name: &str, id: NodeId) -> RaftServiceClient<Channel> {
        let files = self.pki.tls_files(name).unwrap();
        let tls = crate::tls::tonic_client_tls(&files)
            .unwrap()
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", self.node(id).info.raft_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        RaftServiceClient::new(channel)
    }
}

fn revoke(jti: &str) -> Command {
    Command {
        at: 100,
        op: Op::RevokeJtis {
            jtis: vec![RevokedJti {
                jti: jti.into(),
                until: 1000,
            }],
        },
    }
}

fn with_incarnation<T>(body: T, incarnation: u64) -> Request<T> {
    let mut req = Request::new(body);
    req.metadata_mut()
        .insert(INCARNATION_HEADER, MetadataValue::from(incarnation));
    req
}

fn others(leader: NodeId) -> Vec<NodeId> {
    (1..=3).filter(|id| *id != leader).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_replicate_and_followers_forward_to_the_leader() {
    let c = start(3).await;
    let leader = c.initialize().await;
    let l = c.node(leader);
    let mut last = 0;
    for i in 0..5 {
        let r = l.raft.client_write(revoke(&format!("j{i}"))).await.unwrap();
        assert_eq!(r.data.changed, 1);
        last = r.data.revision;
    }
    c.wait_applied(&[1, 2, 3], last).await;

    // A follower forwards a write to the leader; it is applied everywhere.
    let follower = c.node(others(leader)[0]);
    let resp = follower
        .net
        .forward(
            leader,
            &l.info,
            revoke("forwarded"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(resp.changed, 1);
    assert!(resp.revision > last);
    c.wait_applied(&[1, 2, 3], resp.revision).await;
    // Retrying is harmless: the same revocation changes nothing.
    let again = follower
        .net
        .forward(
            leader,
            &l.info,
            revoke("forwarded"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(again.changed, 0);

    // Forwarding to a follower says who leads.
    let other = c.node(others(leader)[1]);
    match l
        .net
        .forward(other.id, &other.info, revoke("x"), Duration::from_secs(10))
        .await
    {
        Err(ForwardError::NotLeader {
            leader: Some((id, info)),
        }) => {
            assert_eq!(id, leader);
            assert_eq!(info, l.info);
        }
        other => panic!("unexpected {other:?}"),
    }

    // One direction lost: the leader's reply to the follower is dropped,
    // but the write reached the leader and is applied.
    c.faults.block(leader, follower.id);
    match follower
        .net
        .forward(
            leader,
            &l.info,
            revoke("reply-lost"),
            Duration::from_secs(10),
        )
        .await
    {
        Err(ForwardError::Unreachable { leader: to, reason }) => {
            assert_eq!(to, leader);
            assert!(reason.contains("reply lost"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    c.faults.heal();
    let r = l.raft.client_write(revoke("reply-lost")).await.unwrap();
    assert_eq!(r.data.changed, 0, "the forwarded write was applied");
    c.wait_applied(&[1, 2, 3], r.data.revision).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_raft_service_admits_only_current_members() {
    let c = start(3).await;

    // Fresh (no membership): any node of the trust domain is admitted,
    // even one that will never be a member; services never are.
    let mut node4 = c.raw_client("node4", 1).await;
    let hello = node4.hello(HelloRequest {}).await.unwrap();
    assert_eq!(
        hello
            .metadata()
            .get(NODE_ID_HEADER)
            .unwrap()
            .to_str()
            .unwrap(),
        "1"
    );
    assert_eq!(hello.get_ref().node_id, 1);
    assert_eq!(hello.get_ref().incarnation, c.node(1).info.incarnation);
    let mut orders = c.raw_client("orders", 1).await;
    let denied = orders.hello(HelloRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("svc/orders"),
        "{}",
        denied.message()
    );

    let leader = c.initialize().await;
    let target = others(leader)[0];
    c.wait_applied(&[target], 1).await;
    let mut node4 = c.raw_client("node4", target).await;
    let mut orders = c.raw_client("orders", target).await;
    let member = others(target)
        .into_iter()
        .find(|id| *id != leader)
        .unwrap_or(leader);
    let member_name = format!("node{member}");
    let mut as_member = c.raw_client(&member_name, target).await;
    let good = c.node(member).info.incarnation;
    let vote = codec::encode(&VoteRequest::<NodeId>::new(Vote::new(1, member), None)).unwrap();
    let msg = |payload: &[u8]| RaftMessage {
        payload: payload.to_vec(),
    };

    // A service certificate: denied on every method.
    for status in [
        orders.hello(HelloRequest {}).await.unwrap_err(),
        orders
            .vote(with_incarnation(msg(&vote), good))
            .await
            .unwrap_err(),
        orders
            .append_entries(with_incarnation(msg(&vote), good))
            .await
            .unwrap_err(),
        orders
            .install_snapshot(with_incarnation(msg(&vote), good))
            .await
            .unwrap_err(),
        orders
            .forward(with_incarnation(msg(&vote), good))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get(NODE_ID_HEADER)
                .unwrap()
                .to_str()
                .unwrap(),
            target.to_string()
        );
    }

    // A node that is not a member: denied, by name.
    for status in [
        node4.hello(HelloRequest {}).await.unwrap_err(),
        node4
            .vote(with_incarnation(msg(&vote), 4))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("node 4"), "{}", status.message());
    }

    // A member with the wrong (or no) incarnation: its data was wiped.
    for req in [
        with_incarnation(msg(&vote), good ^ 1),
        Request::new(msg(&vote)),
    ] {
        let status = as_member.vote(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("stale incarnation"),
            "{}",
            status.message()
        );
    }
    // ... but it may still ask who this node is.
    as_member.hello(HelloRequest {}).await.unwrap();

    // A member speaking for another node.
    let forged = codec::encode(&VoteRequest::<NodeId>::new(Vote::new(1, leader), None)).unwrap();
    let status = as_member
        .vote(with_incarnation(msg(&forged), good))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Malformed payloads never reach Raft.
    for method in 0..4 {
        let req = with_incarnation(msg(b"\xc1 not msgpack"), good);
        let status = match method {
            0 => as_member.vote(req).await,
            1 => as_member.append_entries(req).await,
            2 => as_member.install_snapshot(req).await,
            _ => as_member.forward(req).await,
        }
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // Client side: a peer answering with another incarnation than the
    // membership records is unreachable, and so is one whose certificate
    // names another node than the one meant.
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let mut net = c.node(leader).net.clone();
    let stale = NodeInfo {
        incarnation: c.node(target).info.incarnation ^ 1,
        ..c.node(target).info.clone()
    };
    let mut client = net.new_client(target, &stale).await;
    let req = VoteRequest::<NodeId>::new(Vote::new(0, leader), None);
    match client.vote(req.clone(), RPCOption::new(WAIT)).await {
        Err(RPCError::Unreachable(e)) => {
            assert!(e.to_string().contains("data was wiped"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut client = net.new_client(4, &c.node(target).info).await;
    assert!(matches!(
        client.vote(req.clone(), RPCOption::new(WAIT)).await,
        Err(RPCError::Unreachable(_))
    ));
    // With the right identity, the (outdated) vote is answered.
    let mut client = net.new_client(target, &c.node(target).info).await;
    let resp = client.vote(req, RPCOption::new(WAIT)).await.unwrap();
    assert!(!resp.vote_granted);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_leader_commits_nothing_and_the_majority_moves_on() {
    let c = start(3).await;
    let old = c.initialize().await;
    let first = c
        .node(old)
        .raft
        .client_write(revoke("before"))
        .await
        .unwrap();
    c.wait_applied(&[1, 2, 3], first.data.revision).await;

    c.faults.isolate(old);
    let raft = c.node(old).raft.clone();
    let stuck = tokio::spawn(async move { raft.client_write(revoke("isolated")).await });

    let majority = others(old);
    let new = c.leader_among(&majority).await;
    assert_ne!(new, old);
    let r = c
        .node(new)
        .raft
        .client_write(revoke("majority"))
        .await
        .unwrap();
    c.wait_applied(&majority, r.data.revision).await;
    assert!(
        !stuck.is_finished(),
        "an isolated leader must not acknowledge a write"
    );

    c.faults.heal();
    c.wait_applied(&[old], r.data.revision).await;
    let outcome = tokio::time::timeout(WAIT, stuck).await.unwrap().unwrap();
    match outcome {
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            assert_eq!(f.leader_id, Some(new))
        }
        other => panic!("unexpected {other:?}"),
    }
    // The write the isolated leader took was lost, not applied.
    let again = c
        .node(new)
        .raft
        .client_write(revoke("isolated"))
        .await
        .unwrap();
    assert_eq!(again.data.changed, 1);
    c.wait_applied(&[1, 2, 3], again.data.revision).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_a_purged_log_installs_a_snapshot_in_chunks() {
    let config = openraft::Config {
        // Many chunks for a small snapshot.
        snapshot_max_chunk_size: 256,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..raft_config()
    };
    let c = start_with(3, config).await;
    let leader = c.initialize().await;
    let lagging = others(leader)[1];
    let majority = others(lagging);
    c.faults.isolate(lagging);
    let l = c.node(leader);
    let mut last = 0;
    for i in 0..40 {
        last = l
            .raft
            .client_write(revoke(&format!("snap-{i}")))
            .await
            .unwrap()
            .data
            .revision;
    }
    c.wait_applied(&majority, last).await;
    l.raft.trigger().snapshot().await.unwrap();
    l.raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot built",
        )
        .await
        .unwrap();
    l.raft.trigger().purge_log(last).await.unwrap();
    l.raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .unwrap();

    c.faults.heal();
    let m = c
        .node(lagging)
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot installed",
        )
        .await
        .unwrap();
    assert!(m.last_applied.is_some_and(|a| a.index >= last));
    // And it keeps replicating from there.
    let r = l.raft.client_write(revoke("after")).await.unwrap();
    c.wait_applied(&[1, 2, 3], r.data.revision).await;
    c.stop().await;
}

#[test]
fn only_a_commit_of_the_leaders_own_term_proves_a_follower_current() {
    use openraft::testing::log_id;
    let vote = Vote::new_committed(3, 2);
    assert_eq!(
        super::commit_proving_current(Some(log_id(3, 2, 40)), &vote),
        Some(40)
    );
    // A new leader announcing what it learned from the old one (less,
    // or as much as, the old one acknowledged): no proof.
    assert_eq!(
        super::commit_proving_current(Some(log_id(2, 1, 50)), &vote),
        None
    );
    assert_eq!(super::commit_proving_current(None, &vote), None);
}
