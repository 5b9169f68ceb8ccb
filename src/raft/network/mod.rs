//! The sending side of the Raft transport: openraft's network factory and
//! clients over tonic with mutual TLS ([`Network`], [`PeerClient`]),
//! forwarding of client writes to the leader ([`Network::forward`]), the
//! `Hello` handshake ([`hello`]) and a fault-injection seam ([`Faults`]).
//!
//! # Who is on the other end
//!
//! The CA alone does not decide: the server certificate must carry the
//! SPIFFE id `spiffe://{trust-domain}/node/{target}` of the node this client
//! was made for (checked during the TLS handshake, whatever host name the
//! address uses), and every reply must name the same node id and, when the
//! membership records one, the same data incarnation. A mismatch is
//! reported as [`RPCError::Unreachable`]: the answer of a node whose data
//! was wiped must never count as a vote or an acknowledgement.
//!
//! # Connections
//!
//! One lazily connected tonic `Channel` per `(node id, raft address)`,
//! shared by every client openraft creates and by [`Network::forward`].
//! tonic reconnects on its own after a peer restarts; until it is back,
//! calls fail fast as `Unreachable` and openraft backs off.
//!
//! # Layout
//!
//! This file holds [`Network`] itself: its connection cache, the one call
//! path every RPC takes ([`Network::call`]: faults, timeout, reply checks),
//! forwarding and pre-votes. Around it:
//!
//! - `peer`: openraft's `RaftNetworkFactory` and `RaftNetwork` ([`PeerClient`]);
//! - `read_client`: the follower's read-index client
//!   ([`Network::read_index_submit`] and its per-leader links);
//! - `connect`: client TLS material, endpoints, the server certificate
//!   verifier and the `Hello` handshake;
//! - `faults`: the fault-injection seam.

mod connect;
mod faults;
mod peer;
mod read_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, NetworkError, RPCError, RaftError, Timeout, Unreachable};
use openraft::network::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

pub(crate) use connect::cert_identity;
pub use connect::hello;
use connect::{endpoint, hello_with, raft_client, NodeCertVerifier, TlsMaterial};
pub use faults::Faults;
pub use peer::PeerClient;
pub use read_client::ReadIndexDone;
use read_client::ReadLinkSlot;

use super::pb::raft_service_client::RaftServiceClient;
use super::pb::RaftMessage;
use super::{
    codec, CodecError, Command, CommandResponse, NodeId, NodeInfo, INCARNATION_HEADER,
    NODE_ID_HEADER,
};
use crate::tls::{identity_from_cert, TlsError, TlsFiles};

/// Default timeout of one `InstallSnapshot` chunk.
pub const DEFAULT_SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Raft transport outside openraft's own RPC errors: setting
/// up the network and the `Hello` handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftNetError {
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node certificate does not carry the identity this node needs.
    #[error("{}: {reason}", .path.display())]
    Identity {
        /// The certificate file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An address is not a usable `host:port`.
    #[error("invalid Raft address {addr:?}: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The peer could not be reached or refused the call.
    #[error("{addr}: {status}")]
    Call {
        /// The peer's address.
        addr: String,
        /// tonic's status.
        status: tonic::Status,
    },
    /// The peer answered something inconsistent.
    #[error("{addr}: {reason}")]
    Protocol {
        /// The peer's address.
        addr: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a forwarded write failed. Only [`ForwardError::NotLeader`] and
/// [`ForwardError::Rejected`] say for certain that the write was not
/// applied; after any other error it may or may not have been (retry: every
/// revocation is idempotent).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The leader could not be reached, the connection broke, or its reply
    /// was lost or unusable. The write may or may not have been applied.
    #[error("leader {leader} unreachable: {reason} (the write may or may not have been applied)")]
    Unreachable {
        /// The node the write was sent to.
        leader: NodeId,
        /// What happened.
        reason: String,
    },
    /// No reply in time. The write may or may not have been applied.
    #[error(
        "no reply from leader {leader} within {timeout:?} (the write may or may not have been applied)"
    )]
    Timeout {
        /// The node the write was sent to.
        leader: NodeId,
        /// The time allowed.
        timeout: Duration,
    },
    /// The target is not the leader (any more); the write was not applied.
    #[error("the target is not the leader; leader: {}", match .leader { Some((id, _)) => id.to_string(), None => "unknown".into() })]
    NotLeader {
        /// The current leader as the target knows it.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The leader's Raft failed the write (it is shutting down or its
    /// storage failed). The write may or may not have been applied.
    #[error(
        "leader {leader} failed the write: {error} (the write may or may not have been applied)"
    )]
    Remote {
        /// The node the write was sent to.
        leader: NodeId,
        /// openraft's error.
        error: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
    },
    /// The leader refused the call before handling it (not a member, stale
    /// incarnation, malformed request); the write was not applied.
    #[error("leader {leader} refused the write: {code:?}: {message}")]
    Rejected {
        /// The node the write was sent to.
        leader: NodeId,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}
/// openraft's network factory for this node: creates a [`PeerClient`] per
/// target and caches the underlying connections. Cheap to clone (shared
/// state).
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
    snapshot_chunk_timeout: Duration,
}

struct Inner {
    self_id: NodeId,
    self_incarnation: u64,
    trust_domain: String,
    /// Replaced by [`Network::install_tls`] when certificates are renewed.
    // A std lock: held to clone or replace an `Arc`, never across an await.
    tls: std::sync::RwLock<Arc<TlsMaterial>>,
    faults: Option<Arc<Faults>>,
    // A std lock: held to look up or insert a channel, never across an
    // await. Bounded by the number of distinct (node, address) pairs the
    // membership ever named.
    channels: Mutex<HashMap<(NodeId, String), RaftServiceClient<Channel>>>,
    /// Read-index links to leaders (see [`super::read_link`]), by leader
    /// and the address the link goes to; bounded by the membership's nodes.
    read_links: Mutex<HashMap<NodeId, (String, ReadLinkSlot)>>,
    /// Read-index streams opened, for the metrics.
    read_links_opened: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("self_id", &self.inner.self_id)
            .field("trust_domain", &self.inner.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The network of node `self_id`, whose data is `self_incarnation`,
    /// authenticating with `tls` (the node's own certificate, which must
    /// carry `spiffe://{trust-domain}/node/{self_id}`). `faults`, if given,
    /// is applied to every call this node sends.
    pub fn new(
        self_id: NodeId,
        self_incarnation: u64,
        tls: TlsFiles,
        faults: Option<Arc<Faults>>,
    ) -> Result<Self, RaftNetError> {
        let (trust_domain, cert_node) = cert_identity(&tls.cert)?;
        if cert_node != Some(self_id) {
            return Err(RaftNetError::Identity {
                path: tls.cert.clone(),
                reason: format!(
                    "the certificate is not the one of node {self_id} (expected the SPIFFE id spiffe://{trust_domain}/node/{self_id})"
                ),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                self_id,
                self_incarnation,
                trust_domain,
                tls: std::sync::RwLock::new(Arc::new(TlsMaterial::load(&tls)?)),
                faults,
                channels: Mutex::new(HashMap::new()),
                read_links: Mutex::new(HashMap::new()),
                read_links_opened: Default::default(),
            }),
            snapshot_chunk_timeout: DEFAULT_SNAPSHOT_CHUNK_TIMEOUT,
        })
    }

    /// Sets the timeout of one `InstallSnapshot` chunk (default
    /// [`DEFAULT_SNAPSHOT_CHUNK_TIMEOUT`]). openraft also bounds each chunk
    /// by its `install_snapshot_timeout`, so the shorter of the two applies.
    pub fn with_snapshot_chunk_timeout(mut self, timeout: Duration) -> Self {
        self.snapshot_chunk_timeout = timeout;
        self
    }

    /// This node's id.
    pub fn self_id(&self) -> NodeId {
        self.inner.self_id
    }

    /// The SPIFFE trust domain of this node's certificate.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    fn tls(&self) -> Arc<TlsMaterial> {
        self.inner
            .tls
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks that renewed TLS material is still this node's identity (the
    /// SPIFFE id `spiffe://{trust-domain}/node/{self_id}`): a certificate
    /// for another name would make every peer refuse this node.
    pub fn check_tls(&self, m: &crate::tls::LoadedTls) -> Result<(), RaftNetError> {
        let path = &m.files().cert;
        let identity = identity_from_cert(&m.chain()[0]).map_err(|e| RaftNetError::Identity {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if identity.node_id(&self.inner.trust_domain) != Some(self.inner.self_id) {
            return Err(RaftNetError::Identity {
                path: path.clone(),
                reason: format!(
                    "the new certificate names {:?}, not spiffe://{}/node/{}",
                    identity.id, self.inner.trust_domain, self.inner.self_id
                ),
            });
        }
        Ok(())
    }

    /// Uses renewed TLS material (checked with [`Network::check_tls`]) for
    /// every connection made from now on. Cached connections are dropped
    /// from the cache: calls in flight finish on them, and the next call to
    /// each peer connects, and handshakes, afresh.
    pub fn install_tls(&self, m: &crate::tls::LoadedTls) {
        let material = Arc::new(TlsMaterial::from_loaded(m));
        *self
            .inner
            .tls
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = material;
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        self.inner
            .read_links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// The cached client for `(target, addr)`, created (without connecting)
    /// on first use.
    fn client(&self, target: NodeId, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        let key = (target, addr.to_owned());
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = channels.get(&key) {
            return Ok(client.clone());
        }
        let tls = self.tls();
        let verifier = NodeCertVerifier::new(
            tls.roots.clone(),
            self.inner.trust_domain.clone(),
            Some(target),
        );
        let channel = endpoint(addr, &tls, verifier)
            .map_err(|e| e.to_string())?
            .connect_lazy();
        let client = raft_client(channel);
        channels.insert(key, client.clone());
        Ok(client)
    }

    /// Sends `payload` to `target` at `node.raft_addr` with `method`,
    /// applying faults, the timeout and the reply checks.
    async fn call<Req, Resp>(
        &self,
        target: NodeId,
        node: &NodeInfo,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let self_id = self.inner.self_id;
        let faults = self.inner.faults.as_deref();
        if faults.is_some_and(|f| f.is_blocked(self_id, target)) {
            return Err(CallError::Unreachable(format!(
                "link {self_id} -> {target} is blocked by fault injection"
            )));
        }
        let mut client = self
            .client(target, &node.raft_addr)
            .map_err(CallError::Unreachable)?;
        let payload = codec::encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(timeout);
        request.metadata_mut().insert(
            INCARNATION_HEADER,
            tonic::metadata::MetadataValue::from(self.inner.self_incarnation),
        );
        // A forwarded write continues the caller's trace on the leader.
        if let (Method::Forward, Some(t)) = (method, crate::trace::current()) {
            t.inject(request.metadata_mut());
        }
        let call = async {
            match method {
                Method::AppendEntries => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::InstallSnapshot => client.install_snapshot(request).await,
                Method::Forward => client.forward(request).await,
                Method::ReadIndex => client.read_index(request).await,
                Method::PreVote => client.pre_vote(request).await,
            }
        };
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_elapsed) => return Err(CallError::Timeout(timeout)),
            Ok(Err(status)) => return Err(CallError::Status(status)),
            Ok(Ok(response)) => response,
        };
        if faults.is_some_and(|f| f.is_blocked(target, self_id)) {
            return Err(CallError::Network(format!(
                "reply lost: link {target} -> {self_id} is blocked by fault injection"
            )));
        }
        check_reply_metadata(response.metadata(), target, node.incarnation)
            .map_err(CallError::Unreachable)?;
        codec::decode(&response.get_ref().payload)
            .map_err(|e| CallError::Network(format!("node {target}: undecodable reply: {e}")))
    }

    /// Sends a client write to `leader` (reachable at `node.raft_addr`),
    /// which proposes it and answers once it is applied. Waits at most
    /// `timeout`.
    ///
    /// After [`ForwardError::Unreachable`], [`ForwardError::Timeout`] or
    /// [`ForwardError::Remote`] the write may or may not have been applied;
    /// retrying a revocation is safe.
    pub async fn forward(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResponse, ForwardError> {
        type Reply = Result<CommandResponse, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>;
        let reply: Reply = self
            .call(leader, node, Method::Forward, &cmd, timeout)
            .await
            .map_err(|e| match e {
                CallError::Timeout(timeout) => ForwardError::Timeout { leader, timeout },
                CallError::Unreachable(reason) | CallError::Network(reason) => {
                    ForwardError::Unreachable { leader, reason }
                }
                CallError::Status(status) => forward_status_error(leader, status),
            })?;
        match reply {
            Ok(resp) => Ok(resp),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Err(error) => Err(ForwardError::Remote { leader, error }),
        }
    }
    /// Asks `target` whether it would vote for this node (see
    /// [`super::election`]). Waits at most `timeout`.
    pub async fn pre_vote(
        &self,
        target: NodeId,
        node: &NodeInfo,
        req: &super::PreVoteRequest,
        timeout: Duration,
    ) -> Result<super::PreVoteReply, String> {
        self.call(target, node, Method::PreVote, req, timeout)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// Asks the node at the Raft address `addr` who it is, with this node's
    /// identity (see [`hello`]).
    pub async fn hello(&self, addr: &str) -> Result<(NodeId, NodeInfo), RaftNetError> {
        hello_with(
            addr,
            &self.tls(),
            &self.inner.trust_domain,
            Some(self.inner.self_incarnation),
        )
        .await
    }
}

/// Which RPC [`Network::call`] sends.
#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
    PreVote,
}

/// A failed call, before it is mapped to openraft's or the forwarder's
/// error.
#[derive(Debug)]
enum CallError {
    /// Not sent, or the peer is not who it must be.
    Unreachable(String),
    /// Sent, but the reply was lost or unusable.
    Network(String),
    /// No reply in time.
    Timeout(Duration),
    /// The peer (or tonic) answered with an error status.
    Status(tonic::Status),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(
        self,
        action: RPCTypes,
        from: NodeId,
        target: NodeId,
    ) -> RPCError<NodeId, NodeInfo, E> {
        match self {
            CallError::Unreachable(reason) => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
            }
            CallError::Network(reason) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(reason)))
            }
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: from,
                target,
                timeout,
            }),
            CallError::Status(status) => {
                let reason = format!("node {target}: {:?}: {}", status.code(), status.message());
                let err = std::io::Error::other(reason);
                match status.code() {
                    // Connection refused or broken, TLS refused, peer down;
                    // and the peer refusing us: retrying at once would not
                    // help, so openraft should back off.
                    tonic::Code::Unavailable
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::FailedPrecondition => {
                        RPCError::Unreachable(Unreachable::new(&err))
                    }
                    _ => RPCError::Network(NetworkError::new(&err)),
                }
            }
        }
    }
}

fn forward_status_error(leader: NodeId, status: tonic::Status) -> ForwardError {
    match status.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::FailedPrecondition
        | tonic::Code::InvalidArgument => ForwardError::Rejected {
            leader,
            code: status.code(),
            message: status.message().to_owned(),
        },
        tonic::Code::DeadlineExceeded => ForwardError::Unreachable {
            leader,
            reason: format!("deadline exceeded: {}", status.message()),
        },
        code => ForwardError::Unreachable {
            leader,
            reason: format!("{code:?}: {}", status.message()),
        },
    }
}

/// Checks the responder's node id and incarnation in reply metadata against
/// what the client expects (`expected_incarnation == 0`: not recorded).
fn check_reply_metadata(
    meta: &tonic::metadata::MetadataMap,
    target: NodeId,
    expected_incarnation: u64,
) -> Result<(), String> {
    let read = |name: &str| -> Option<u64> { meta.get(name)?.to_str().ok()?.parse().ok() };
    match read(NODE_ID_HEADER) {
        Some(id) if id == target => {}
        Some(id) => {
            return Err(format!(
                "expected node {target} but node {id} answered: the address now belongs to another node"
            ))
        }
        None => return Err(format!("node {target}: the reply does not name its node")),
    }
    if expected_incarnation != 0 {
        let got = read(INCARNATION_HEADER).unwrap_or(0);
        if got != expected_incarnation {
            return Err(format!(
                "node {target} answered with data incarnation {got:016x} but the membership records {expected_incarnation:016x}: its data was wiped; remove it and add it again as a learner"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::*;

    fn meta(node: Option<&str>, incarnation: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(n) = node {
            m.insert(NODE_ID_HEADER, MetadataValue::try_from(n).unwrap());
        }
        if let Some(i) = incarnation {
            m.insert(INCARNATION_HEADER, MetadataValue::try_from(i).unwrap());
        }
        m
    }

    #[test]
    fn reply_metadata_must_name_the_target_and_its_incarnation() {
        assert!(check_reply_metadata(&meta(Some("2"), Some("77")), 2, 77).is_ok());
        // Incarnation not recorded: anything goes.
        assert!(check_reply_metadata(&meta(Some("2"), None), 2, 0).is_ok());
        let err = check_reply_metadata(&meta(Some("3"), Some("77")), 2, 77).unwrap_err();
        assert!(err.contains("node 3 answered"), "{err}");
        let err = check_reply_metadata(&meta(None, Some("77")), 2, 77).unwrap_err();
        assert!(err.contains("does not name"), "{err}");
        let err = check_reply_metadata(&meta(Some("x"), Some("77")), 2, 77).unwrap_err();
        assert!(err.contains("does not name"), "{err}");
        for wrong in [Some("78"), None, Some("-1"), Some("0x4d")] {
            let err = check_reply_metadata(&meta(Some("2"), wrong), 2, 77).unwrap_err();
            assert!(err.contains("data was wiped"), "{err}");
        }
    }

    #[test]
    fn call_errors_map_to_openraft_errors() {
        type E = RPCError<NodeId, NodeInfo, RaftError<NodeId>>;
        let map = |e: CallError| -> E { e.into_rpc(RPCTypes::Vote, 1, 2) };
        assert!(matches!(
            map(CallError::Unreachable("x".into())),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(
            map(CallError::Network("x".into())),
            RPCError::Network(_)
        ));
        match map(CallError::Timeout(Duration::from_millis(5))) {
            RPCError::Timeout(t) => {
                assert_eq!((t.action, t.id, t.target), (RPCTypes::Vote, 1, 2));
                assert_eq!(t.timeout, Duration::from_millis(5));
            }
            other => panic!("unexpected {other:?}"),
        }
        for (code, unreachable) in [
            (tonic::Code::Unavailable, true),
            (tonic::Code::PermissionDenied, true),
            (tonic::Code::Unauthenticated, true),
            (tonic::Code::FailedPrecondition, true),
            (tonic::Code::InvalidArgument, false),
            (tonic::Code::Internal, false),
            (tonic::Code::Unknown, false),
            (tonic::Code::Cancelled, false),
        ] {
            let e = map(CallError::Status(tonic::Status::new(code, "m")));
            assert_eq!(
                matches!(e, RPCError::Unreachable(_)),
                unreachable,
                "{code:?}"
            );
            assert_eq!(matches!(e, RPCError::Network(_)), !unreachable, "{code:?}");
        }
    }

    #[test]
    fn forward_refusals_are_told_apart_from_unknown_outcomes() {
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::FailedPrecondition,
            tonic::Code::InvalidArgument,
        ] {
            assert!(matches!(
                forward_status_error(3, tonic::Status::new(code, "m")),
                ForwardError::Rejected { leader: 3, code: c, .. } if c == code
            ));
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
            tonic::Code::Internal,
        ] {
            assert!(matches!(
                forward_status_error(3, tonic::Status::new(code, "m")),
                ForwardError::Unreachable { leader: 3, .. }
            ));
        }
        let e = ForwardError::Timeout {
            leader: 1,
            timeout: Duration::from_secs(1),
        };
        assert!(e.to_string().contains("may or may not"));
    }

    #[test]
    fn network_requires_this_nodes_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::certs::init_dev_pki(dir.path(), &Default::default()).unwrap();
        let node2 = pki.tls_files("node2").unwrap();
        let net = Network::new(2, 5, node2.clone(), None).unwrap();
        assert_eq!(net.self_id(), 2);
        assert_eq!(net.trust_domain(), "tessera.dev");
        assert!(matches!(
            Network::new(1, 5, node2, None),
            Err(RaftNetError::Identity { .. })
        ));
        assert!(matches!(
            Network::new(1, 5, pki.tls_files("orders").unwrap(), None),
            Err(RaftNetError::Identity { .. })
        ));
        let missing = crate::tls::TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..pki.tls_files("node1").unwrap()
        };
        assert!(Network::new(1, 5, missing, None).is_err());
    }
}
