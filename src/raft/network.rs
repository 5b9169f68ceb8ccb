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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

use super::pb::raft_service_client::RaftServiceClient;
use super::pb::{HelloRequest, RaftMessage};
use super::{
    codec, CodecError, Command, CommandResponse, NodeId, NodeInfo, TypeConfig, INCARNATION_HEADER,
    MAX_MESSAGE_SIZE, NODE_ID_HEADER,
};
use crate::tls::{identity_from_cert, TlsError, TlsFiles};

/// Time allowed to establish a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle connections, so a peer that vanished without a FIN
/// (power loss, partition) is noticed and the connection re-established.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a keep-alive ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of one `InstallSnapshot` chunk.
pub const DEFAULT_SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a `Hello` call.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Node ids [`Faults::isolate`] cuts off from each other.
const ISOLATE_IDS: std::ops::RangeInclusive<NodeId> = 1..=16;

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

/// Blocked directed links between nodes: a test seam, also usable for
/// chaos drills. Shared through an `Arc` by every [`Network`] of an
/// in-process cluster.
///
/// The sender applies it: a request on a blocked link `from -> to` is never
/// sent (`Unreachable`); a reply on a blocked link `to -> from` is dropped
/// after the request was handled (a lost reply, `NetworkError`), which is
/// how one direction of traffic is lost.
#[derive(Debug, Default)]
pub struct Faults {
    // A std lock: held for a set lookup or update, never across an await.
    blocked: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Nodes to which no log entries are sent (heartbeats still are).
    held: Mutex<HashSet<NodeId>>,
}

impl Faults {
    /// No link blocked.
    pub fn new() -> Self {
        Self::default()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashSet<(NodeId, NodeId)>> {
        // A poisoned set is still a valid set.
        self.blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops traffic from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.links().insert((from, to));
    }

    /// Restores traffic from `from` to `to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.links().remove(&(from, to));
    }

    /// Cuts `id` off from nodes 1 to 16, both directions.
    pub fn isolate(&self, id: NodeId) {
        self.isolate_from(id, ISOLATE_IDS);
    }

    /// Cuts `id` off from `peers`, both directions.
    pub fn isolate_from(&self, id: NodeId, peers: impl IntoIterator<Item = NodeId>) {
        let mut links = self.links();
        for peer in peers.into_iter().filter(|p| *p != id) {
            links.insert((id, peer));
            links.insert((peer, id));
        }
    }

    /// Restores every link to and from `id`.
    pub fn rejoin(&self, id: NodeId) {
        self.links().retain(|(from, to)| *from != id && *to != id);
    }

    /// Restores every link, and releases every held node.
    pub fn heal(&self) {
        self.links().clear();
        self.held().clear();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `id` behind: `AppendEntries` carrying entries to it are not
    /// sent (`Unreachable`), while heartbeats (no entries) still are, so it
    /// keeps hearing its leader and the leader's commit index without
    /// receiving what was committed — a follower catching up, frozen.
    pub fn hold_entries(&self, id: NodeId) {
        self.held().insert(id);
    }

    /// Lets entries reach `id` again.
    pub fn release_entries(&self, id: NodeId) {
        self.held().remove(&id);
    }

    /// Whether entries to `id` are held back.
    pub fn entries_held(&self, id: NodeId) -> bool {
        self.held().contains(&id)
    }

    /// Whether traffic from `from` to `to` is dropped.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.links().contains(&(from, to))
    }
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

/// What a follower's read-index round does with its answer; called once.
pub type ReadIndexDone = Box<dyn FnOnce(Result<u64, super::ReadIndexError>) + Send>;

/// How this node asks one leader for read indexes.
enum ReadLinkSlot {
    /// Over a stream.
    Stream(super::read_link::Link),
    /// With unary calls, since this instant: the leader did not know the
    /// stream. Tried again after [`UNARY_RETRY`].
    Unary(std::time::Instant),
}

/// How long a follower keeps using unary read-index calls with a leader
/// that did not know the stream (an older binary) before it tries again.
const UNARY_RETRY: Duration = Duration::from_secs(60);

/// The client side TLS of a node: its identity (for tonic) and the roots it
/// verifies servers against (for our verifier).
#[derive(Clone)]
struct TlsMaterial {
    identity: Identity,
    roots: Arc<RootCertStore>,
    ca_path: std::path::PathBuf,
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

    /// Asks `leader` for a read index (see [`super::read_index`]): it
    /// confirms its leadership with a quorum and answers the log index a
    /// linearizable read must wait for. Returns at once; `done` gets the
    /// answer (on the link's task, or a task of its own for a unary call)
    /// by `deadline` or shortly after.
    pub fn read_index_submit(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        deadline: std::time::Instant,
        done: ReadIndexDone,
    ) {
        use super::read_link::{LinkError, Pending};
        use super::ReadIndexError;
        let self_id = self.inner.self_id;
        if self.blocked(self_id, leader) {
            return done(Err(ReadIndexError::Unconfirmed(format!(
                "leader {leader}: link {self_id} -> {leader} is blocked by fault injection"
            ))));
        }
        let link = match self.read_link(leader, node) {
            Err(e) => return done(Err(e)),
            Ok(None) => return self.read_index_unary_then(leader, node, deadline, done),
            Ok(Some(link)) => link,
        };
        let net = self.clone();
        let node = node.clone();
        let round = Pending {
            deadline,
            done: Box::new(move |answer| {
                match answer {
                Ok(_) if net.blocked(leader, self_id) => done(Err(ReadIndexError::Unconfirmed(
                    format!("leader {leader}: reply lost: link {leader} -> {self_id} is blocked by fault injection"),
                ))),
                Ok(reply) => done(reply),
                Err(LinkError::TimedOut) => done(Err(ReadIndexError::Timeout)),
                Err(LinkError::Failed(reason)) => done(Err(ReadIndexError::Unconfirmed(reason))),
                Err(LinkError::Unsupported) => {
                    net.inner
                        .read_links
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(
                            leader,
                            (node.raft_addr.clone(), ReadLinkSlot::Unary(std::time::Instant::now())),
                        );
                    net.read_index_unary_then(leader, &node, deadline, done);
                }
            }
            }),
        };
        if let Err(round) = link.submit(round) {
            (round.done)(Err(LinkError::Failed(format!(
                "leader {leader}: the read-index link closed"
            ))));
        }
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.inner
            .faults
            .as_deref()
            .is_some_and(|f| f.is_blocked(from, to))
    }

    /// The open read-index link to `leader`, opened if there is none; or
    /// `None` while unary calls are to be used with it.
    fn read_link(
        &self,
        leader: NodeId,
        node: &NodeInfo,
    ) -> Result<Option<super::read_link::Link>, super::ReadIndexError> {
        let mut links = self
            .inner
            .read_links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match links.get(&leader) {
            Some((addr, ReadLinkSlot::Stream(link)))
                if *addr == node.raft_addr && link.is_open() =>
            {
                return Ok(Some(link.clone()))
            }
            Some((addr, ReadLinkSlot::Unary(since)))
                if *addr == node.raft_addr && since.elapsed() < UNARY_RETRY =>
            {
                return Ok(None)
            }
            _ => {}
        }
        let client = self.client(leader, &node.raft_addr).map_err(|reason| {
            super::ReadIndexError::Unconfirmed(format!("leader {leader}: {reason}"))
        })?;
        let expected_incarnation = node.incarnation;
        let link = super::read_link::Link::open(super::read_link::Opening {
            client,
            target: leader,
            self_incarnation: self.inner.self_incarnation,
            check: Box::new(move |meta| check_reply_metadata(meta, leader, expected_incarnation)),
            open_timeout: super::read_index::ROUND_TIMEOUT,
        });
        links.insert(
            leader,
            (node.raft_addr.clone(), ReadLinkSlot::Stream(link.clone())),
        );
        self.inner
            .read_links_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(link))
    }

    /// Read-index streams this node opened to a leader: one per leader it
    /// read through, plus one per failure or idle close.
    pub fn read_links_opened(&self) -> u64 {
        self.inner
            .read_links_opened
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A read-index round as one unary call on a task of its own, for a
    /// leader that does not know the stream.
    fn read_index_unary_then(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        deadline: std::time::Instant,
        done: ReadIndexDone,
    ) {
        use super::ReadIndexError;
        let (net, node) = (self.clone(), node.clone());
        tokio::spawn(async move {
            let timeout = deadline.saturating_duration_since(std::time::Instant::now());
            let reply: Result<Result<u64, ReadIndexError>, _> = net
                .call(leader, &node, Method::ReadIndex, &(), timeout)
                .await;
            done(match reply {
                Ok(reply) => reply,
                Err(CallError::Timeout(_)) => Err(ReadIndexError::Timeout),
                Err(CallError::Unreachable(reason) | CallError::Network(reason)) => Err(
                    ReadIndexError::Unconfirmed(format!("leader {leader}: {reason}")),
                ),
                Err(CallError::Status(status)) => Err(ReadIndexError::Unconfirmed(format!(
                    "leader {leader}: {:?}: {}",
                    status.code(),
                    status.message()
                ))),
            });
        });
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

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's client for one peer: sends `AppendEntries`, `Vote` and
/// `InstallSnapshot` chunks over the shared connection of its [`Network`].
pub struct PeerClient {
    net: Network,
    target: NodeId,
    node: NodeInfo,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("from", &self.net.inner.self_id)
            .field("target", &self.target)
            .field("node", &self.node)
            .finish()
    }
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        method: Method,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let self_id = self.net.inner.self_id;
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .net
            .call(self.target, &self.node, method, req, timeout)
            .await
            .map_err(|e| {
                tracing::debug!(target_node = self.target, ?method, error = ?e, "raft rpc failed");
                e.into_rpc(action, self_id, self.target)
            })?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        if !rpc.entries.is_empty()
            && (self.net.inner.faults.as_deref()).is_some_and(|f| f.entries_held(self.target))
        {
            return Err(CallError::Unreachable(format!(
                "entries to {} are held back by fault injection",
                self.target
            ))
            .into_rpc(RPCTypes::AppendEntries, self.net.inner.self_id, self.target));
        }
        self.send(
            Method::AppendEntries,
            RPCTypes::AppendEntries,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let timeout = self.net.snapshot_chunk_timeout;
        self.send(
            Method::InstallSnapshot,
            RPCTypes::InstallSnapshot,
            &rpc,
            timeout,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.send(Method::Vote, RPCTypes::Vote, &rpc, option.hard_ttl())
            .await
    }
}

/// Asks the node at the Raft address `addr` (`host:port`) for its node id,
/// addresses and data incarnation, authenticating with `tls` (a node
/// certificate of the cluster's trust domain). The server certificate must
/// be a node certificate of the same trust domain, and name the node id the
/// reply claims.
///
/// Used to learn a node's identity before initialising a cluster with it or
/// adding it as a learner.
pub async fn hello(addr: &str, tls: &TlsFiles) -> Result<(NodeId, NodeInfo), RaftNetError> {
    let (trust_domain, _) = cert_identity(&tls.cert)?;
    hello_with(addr, &TlsMaterial::load(tls)?, &trust_domain, None).await
}

async fn hello_with(
    addr: &str,
    tls: &TlsMaterial,
    trust_domain: &str,
    incarnation: Option<u64>,
) -> Result<(NodeId, NodeInfo), RaftNetError> {
    let verifier = NodeCertVerifier::new(tls.roots.clone(), trust_domain.to_owned(), None);
    let seen = verifier.seen.clone();
    // A fresh connection: the identity seen in its handshake is the one
    // this reply comes from.
    let channel = endpoint(addr, tls, verifier)?.connect_lazy();
    let mut client = raft_client(channel);
    let mut request = tonic::Request::new(HelloRequest {});
    request.set_timeout(HELLO_TIMEOUT);
    if let Some(incarnation) = incarnation {
        request.metadata_mut().insert(
            INCARNATION_HEADER,
            tonic::metadata::MetadataValue::from(incarnation),
        );
    }
    let call_error = |status| RaftNetError::Call {
        addr: addr.to_owned(),
        status,
    };
    let reply = tokio::time::timeout(HELLO_TIMEOUT, client.hello(request))
        .await
        .map_err(|_| {
            call_error(tonic::Status::deadline_exceeded(
                "no reply to Hello in time",
            ))
        })?
        .map_err(call_error)?
        .into_inner();
    let protocol = |reason: String| RaftNetError::Protocol {
        addr: addr.to_owned(),
        reason,
    };
    let cert_node = *seen.lock().unwrap_or_else(|p| p.into_inner());
    if cert_node != Some(reply.node_id) {
        return Err(protocol(format!(
            "the reply names node {} but the server certificate is the one of node {}",
            reply.node_id,
            cert_node.map_or_else(|| "?".to_owned(), |n| n.to_string())
        )));
    }
    if reply.incarnation == 0 {
        return Err(protocol("the node reports no data incarnation".into()));
    }
    Ok((
        reply.node_id,
        NodeInfo {
            raft_addr: reply.raft_addr,
            api_addr: reply.api_addr,
            incarnation: reply.incarnation,
        },
    ))
}

impl TlsMaterial {
    fn from_loaded(m: &crate::tls::LoadedTls) -> Self {
        Self {
            identity: Identity::from_pem(m.cert_pem(), m.key_pem()),
            roots: m.roots(),
            ca_path: m.files().ca.clone(),
        }
    }

    fn load(files: &TlsFiles) -> Result<Self, RaftNetError> {
        // Parses and checks everything (by file name) before tonic sees it.
        crate::tls::client_config(files)?;
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(&files.ca)? {
            roots.add(cert).map_err(|source| TlsError::InvalidCa {
                path: files.ca.clone(),
                source,
            })?;
        }
        Ok(Self {
            identity,
            roots: Arc::new(roots),
            ca_path: files.ca.clone(),
        })
    }
}

fn pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            reason: "cannot read certificates",
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The trust domain and, if it is a node certificate, the node id of the
/// leaf certificate in `path`.
pub(crate) fn cert_identity(
    path: &std::path::Path,
) -> Result<(String, Option<NodeId>), RaftNetError> {
    let certs = pem_certs(path)?;
    let identity = identity_from_cert(&certs[0]).map_err(|e| RaftNetError::Identity {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let trust_domain = identity
        .id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .filter(|td| !td.is_empty())
        .ok_or_else(|| RaftNetError::Identity {
            path: path.to_owned(),
            reason: format!("{:?} is not a SPIFFE id", identity.id),
        })?
        .to_owned();
    let node = identity.node_id(&trust_domain);
    Ok((trust_domain, node))
}

fn endpoint(
    addr: &str,
    tls: &TlsMaterial,
    verifier: NodeCertVerifier,
) -> Result<Endpoint, RaftNetError> {
    let bad = |reason: String| RaftNetError::Address {
        addr: addr.to_owned(),
        reason,
    };
    if addr.is_empty() || addr.contains('/') {
        return Err(bad("expected host:port".into()));
    }
    let tls_config = ClientTlsConfig::new()
        .identity(tls.identity.clone())
        .timeout(CONNECT_TIMEOUT);
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tls_config_with_verifier(tls_config, Arc::new(verifier))
        .map_err(|e| RaftNetError::Identity {
            path: tls.ca_path.clone(),
            reason: format!("cannot configure TLS: {e}"),
        })
}

fn raft_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Verifies a server certificate the way SPIFFE verifies an X.509-SVID:
/// the chain must lead to the cluster CA, and the identity is the SPIFFE
/// id, not the host name (nodes are addressed by IP as often as by name).
/// The id must be `spiffe://{trust_domain}/node/{n}` with `n` the expected
/// node, or any node when none is expected (`Hello`).
#[derive(Debug)]
struct NodeCertVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust_domain: String,
    expect: Option<NodeId>,
    /// The node id of the last certificate accepted.
    seen: Arc<Mutex<Option<NodeId>>>,
}

impl NodeCertVerifier {
    fn new(roots: Arc<RootCertStore>, trust_domain: String, expect: Option<NodeId>) -> Self {
        Self {
            roots,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            trust_domain,
            expect,
            seen: Arc::new(Mutex::new(None)),
        }
    }
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let refuse = |reason: String| {
            tracing::warn!(expected_node = ?self.expect, %reason, "refusing a Raft peer's certificate");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        };
        let identity = identity_from_cert(end_entity).map_err(|e| refuse(e.to_string()))?;
        match identity.node_id(&self.trust_domain) {
            Some(node) if self.expect.is_none_or(|want| want == node) => {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(node);
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(refuse(format!(
                "the server presents {:?}, not a node certificate of {} for the expected node",
                identity.id, self.trust_domain
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::*;

    #[test]
    fn faults_block_directed_links() {
        let f = Faults::new();
        assert!(!f.is_blocked(1, 2));
        f.block(1, 2);
        assert!(f.is_blocked(1, 2));
        assert!(!f.is_blocked(2, 1), "one direction only");
        f.unblock(1, 2);
        assert!(!f.is_blocked(1, 2));
        f.unblock(1, 2);
        assert!(!f.is_blocked(1, 2));
    }

    #[test]
    fn held_entries_are_per_node_and_heal_releases_them() {
        let f = Faults::new();
        f.hold_entries(2);
        assert!(f.entries_held(2));
        assert!(!f.entries_held(3));
        assert!(!f.is_blocked(1, 2), "heartbeats still flow");
        f.release_entries(2);
        assert!(!f.entries_held(2));
        f.hold_entries(3);
        f.heal();
        assert!(!f.entries_held(3));
    }

    #[test]
    fn isolate_cuts_both_directions_to_every_node() {
        let f = Faults::new();
        f.isolate(3);
        for other in (1..=16).filter(|n| *n != 3) {
            assert!(f.is_blocked(3, other), "3 -> {other}");
            assert!(f.is_blocked(other, 3), "{other} -> 3");
        }
        assert!(!f.is_blocked(3, 3));
        assert!(!f.is_blocked(1, 2));
        f.block(1, 2);
        f.rejoin(3);
        assert!(!f.is_blocked(3, 1) && !f.is_blocked(1, 3));
        assert!(f.is_blocked(1, 2), "rejoin leaves other links alone");
        f.isolate_from(7, [1, 2, 7]);
        assert!(f.is_blocked(7, 1) && f.is_blocked(2, 7));
        assert!(!f.is_blocked(7, 3));
        f.heal();
        assert!(!f.is_blocked(7, 1) && !f.is_blocked(1, 2));
    }

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

    #[tokio::test]
    async fn hello_to_nowhere_fails_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::certs::init_dev_pki(dir.path(), &Default::default()).unwrap();
        let node1 = pki.tls_files("node1").unwrap();
        // A port nothing listens on: bind, note it, close.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(matches!(
            hello(&addr, &node1).await,
            Err(RaftNetError::Call { .. })
        ));
        assert!(matches!(
            hello("not an address/", &node1).await,
            Err(RaftNetError::Address { .. })
        ));
    }
}
