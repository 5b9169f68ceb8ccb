//! The receiving side of the Raft transport: the internal gRPC service
//! (`tessera.raft.v1.RaftService`) that hands openraft's messages to the
//! local [`openraft::Raft`] and runs writes forwarded by followers.
//!
//! # Members only
//!
//! Every call is checked, rules 1 and 2 before its body is read (by
//! [`super::members_only`], in front of this service), and all three again
//! in the handler:
//!
//! 1. the caller's certificate must be a node certificate of this node's
//!    trust domain (`spiffe://{td}/node/{id}`); a service or admin
//!    certificate gets `PERMISSION_DENIED`;
//! 2. the node id must be in the current membership (voters and learners),
//!    else `PERMISSION_DENIED`. A node with no membership yet accepts any
//!    node of its trust domain: that is how a new node is first contacted;
//! 3. if the membership records a data incarnation for the caller, the
//!    request's `x-tessera-incarnation` must match, else
//!    `FAILED_PRECONDITION`: the caller's data was wiped and its votes and
//!    acknowledgements no longer speak for what it promised. (`Hello` skips
//!    this check: it only describes this node.)
//!
//! A Raft message must also come from the node it claims: the leader of an
//! `AppendEntries` or `InstallSnapshot`, the candidate of a `Vote`.
//!
//! Every reply, success or error, carries `x-tessera-node-id` and
//! `x-tessera-incarnation`, which the client checks.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::network::{cert_identity, RaftNetError};
use super::pb::raft_service_server::{self, RaftServiceServer};
use super::pb::{HelloReply, HelloRequest, RaftMessage};
use super::{
    codec, Command, CommandResponse, NodeId, NodeInfo, TypeConfig, INCARNATION_HEADER,
    MAX_MESSAGE_SIZE, NODE_ID_HEADER,
};
use crate::tls::{caller_identity, TlsFiles};

/// The SPIFFE trust domain of the certificate in `files.cert` (the node's
/// own), e.g. `tessera.dev` for `spiffe://tessera.dev/node/1`.
pub fn trust_domain_of(files: &TlsFiles) -> Result<String, RaftNetError> {
    cert_identity(&files.cert).map(|(td, _)| td)
}

/// The internal Raft service of one node. Reachable by cluster members
/// only (see the module docs).
pub struct RaftService {
    raft: Raft<TypeConfig>,
    id: NodeId,
    info: NodeInfo,
    trust_domain: Arc<str>,
    /// Re-stamps forwarded commands: the state machine's time is the
    /// leader's, whichever node the client talked to.
    clock: Option<Arc<dyn crate::clock::Clock>>,
    /// Batches forwarded writes with local ones.
    proposer: Option<super::Proposer>,
    /// Answers followers' read-index requests (batched with local reads).
    reads: Option<super::ReadIndex>,
    /// The read lease and the applied index it answers with.
    read_lease: Option<(std::time::Duration, tokio::sync::watch::Receiver<u64>)>,
    /// Records when the leader was last heard and answers pre-votes.
    election: Option<Election>,
    /// The node's stop signal: long-lived streams end when it turns true.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where a storage error the Raft core does not see is reported (the
    /// node stops on it), and the data directory to name in the report.
    failures: Option<(
        tokio::sync::mpsc::UnboundedSender<String>,
        std::path::PathBuf,
    )>,
}

/// What the service needs to record leader contact and answer pre-votes.
struct Election {
    contact: Arc<super::LeaderContact>,
    times: super::ElectionTimes,
    last_log: super::LastLogId,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("id", &self.id)
            .field("info", &self.info)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl RaftService {
    /// The service of node `id` (described by `info`) in `trust_domain`
    /// (see [`trust_domain_of`]).
    pub fn new(raft: Raft<TypeConfig>, id: NodeId, info: NodeInfo, trust_domain: &str) -> Self {
        Self {
            raft,
            id,
            info,
            trust_domain: trust_domain.into(),
            clock: None,
            proposer: None,
            reads: None,
            read_lease: None,
            election: None,
            stop: None,
            failures: None,
        }
    }

    /// Streams served (followers' read-index links) end when `stop` turns
    /// true, so that the server's graceful shutdown does not wait for them.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Storage errors met while receiving a snapshot go to `failures`,
    /// naming `data_dir`: openraft writes the chunks outside its core,
    /// hands the error back to the leader as the answer, and its core never
    /// stops, so the node would go on answering from a frozen state while
    /// the leader retried for ever.
    pub fn with_failures(
        mut self,
        failures: tokio::sync::mpsc::UnboundedSender<String>,
        data_dir: std::path::PathBuf,
    ) -> Self {
        self.failures = Some((failures, data_dir));
        self
    }

    /// Followers' read-index requests are served by `reads`.
    pub fn with_reads(mut self, reads: super::ReadIndex) -> Self {
        self.reads = Some(reads);
        self
    }

    /// As leader, answers a follower's `ReadIndex` from `applied` (the
    /// state machine's applied index, announced before each apply returns,
    /// so before any write it applied is acknowledged) while its read lease
    /// holds (see [`super::read_index`]), instead of running a round.
    pub fn with_read_lease(
        mut self,
        lease: std::time::Duration,
        applied: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        self.read_lease = Some((lease, applied));
        self
    }

    /// Accepted leader messages are recorded in `contact`, and pre-votes
    /// are decided with it, `times` and this node's last log id as
    /// `last_log` reads it (see [`super::election`]).
    pub fn with_election(
        mut self,
        contact: Arc<super::LeaderContact>,
        times: super::ElectionTimes,
        last_log: super::LastLogId,
    ) -> Self {
        self.election = Some(Election {
            contact,
            times,
            last_log,
        });
        self
    }

    fn answerer(&self) -> super::read_link::Answerer {
        super::read_link::Answerer {
            raft: self.raft.clone(),
            reads: self.reads.clone(),
            read_lease: self.read_lease.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Held while a leader's message is handed to the core and recorded:
    /// no election starts in between (`election::elect_unless_led`).
    async fn hearing(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        match &self.election {
            Some(e) => Some(e.contact.hearing().await),
            None => None,
        }
    }

    /// Records an accepted leader message, and the commit index it
    /// announced if that proves this node current (readiness compares it
    /// with what this node applied).
    fn heard_leader(&self, commit: Option<u64>) {
        if let Some(Election { contact, .. }) = &self.election {
            contact.heard();
            if let Some(c) = commit {
                contact.heard_commit(c);
            }
        }
    }

    /// Forwarded writes go through `proposer` (batched with the others)
    /// instead of one `client_write` each.
    pub fn with_proposer(mut self, proposer: super::Proposer) -> Self {
        self.proposer = Some(proposer);
        self
    }

    /// Forwarded commands get their time from `clock` (the leader's) rather
    /// than from the follower that forwarded them.
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Adds this node's id and incarnation to reply metadata.
    fn stamp(&self, meta: &mut tonic::metadata::MetadataMap) {
        meta.insert(NODE_ID_HEADER, MetadataValue::from(self.id));
        meta.insert(
            INCARNATION_HEADER,
            MetadataValue::from(self.info.incarnation),
        );
    }

    fn stamped<T>(&self, result: Result<T, Status>) -> Result<Response<T>, Status> {
        match result {
            Ok(body) => {
                let mut response = Response::new(body);
                self.stamp(response.metadata_mut());
                Ok(response)
            }
            Err(mut status) => {
                self.stamp(status.metadata_mut());
                Err(status)
            }
        }
    }

    /// The caller's node id, if it may talk to this node (see the module
    /// docs). `check_incarnation` is false only for `Hello`.
    fn authorize<T>(&self, req: &Request<T>, check_incarnation: bool) -> Result<NodeId, Status> {
        // Memoized per certificate (`crate::tls::identity_cache`): every
        // Raft message and forwarded write is authorized this way.
        let peer = caller_identity(req)?;
        let (caller, recorded) = member(&self.raft, &self.trust_domain, &peer)?;
        let incarnation: u64 = req
            .metadata()
            .get(INCARNATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if check_incarnation && recorded != 0 && recorded != incarnation {
            tracing::warn!(
                caller,
                recorded = format_args!("{recorded:016x}"),
                presented = format_args!("{incarnation:016x}"),
                "raft service: stale incarnation"
            );
            return Err(Status::failed_precondition(format!(
                "node {caller}: stale incarnation {incarnation:016x} (membership records {recorded:016x}): data was wiped; remove and re-add the node"
            )));
        }
        Ok(caller)
    }
}

/// Rules 1 and 2 of the module docs: the node id of `peer` and the data
/// incarnation the membership records for it (0: none, or no membership
/// yet), if it is a node of `trust_domain` in the current membership.
/// Also run by [`super::members_only`] before a call's body is read.
pub(super) fn member(
    raft: &Raft<TypeConfig>,
    trust_domain: &str,
    peer: &crate::tls::PeerIdentity,
) -> Result<(NodeId, u64), Status> {
    let Some(caller) = peer.node_id(trust_domain) else {
        tracing::debug!(caller = %peer.id, "raft service: not a node identity");
        return Err(Status::permission_denied(format!(
            "{} is not a node of trust domain {trust_domain}: the Raft service is for cluster members only",
            peer.id
        )));
    };
    // Read the membership without holding the metrics borrow any longer
    // than this: it blocks openraft's metrics updates.
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.nodes().next().is_none() {
        return Ok((caller, 0));
    }
    match membership.get_node(&caller) {
        Some(info) => Ok((caller, info.incarnation)),
        None => {
            tracing::debug!(caller, "raft service: not a member");
            Err(Status::permission_denied(format!(
                "node {caller} is not a member of this cluster"
            )))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: &Request<RaftMessage>) -> Result<T, Status> {
    codec::decode(&req.get_ref().payload)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(reply: &T) -> Result<RaftMessage, Status> {
    codec::encode(reply)
        .map(|payload| RaftMessage { payload })
        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
}

fn check_sender(caller: NodeId, claimed: NodeId, role: &str) -> Result<(), Status> {
    if caller == claimed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {caller} sent a message as {role} {claimed}"
        )))
    }
}

/// The commit index a leader's message announces, if it proves that a
/// follower which applied it holds every acknowledged write: only once the
/// leader has committed an entry of its own term. A new leader may announce
/// less than its predecessor acknowledged (Raft §6.4), and recording that
/// would make a LOCAL read on a follower report itself current while
/// missing those writes (found by review).
fn commit_proving_current(
    commit: Option<super::LogId>,
    vote: &openraft::Vote<NodeId>,
) -> Option<u64> {
    commit
        .filter(|c| c.leader_id.term == vote.leader_id.term)
        .map(|c| c.index)
}

#[tonic::async_trait]
impl raft_service_server::RaftService for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            let caller = self.authorize(&request, true)?;
            let req: AppendEntriesRequest<TypeConfig> = decode(&request)?;
            check_sender(caller, req.vote.leader_id.node_id, "leader")?;
            let commit = commit_proving_current(req.leader_commit, &req.vote);
            let _hearing = self.hearing().await;
            let reply = self.raft.append_entries(req).await;
            if matches!(&reply, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                self.heard_leader(commit);
            }
            encode(&reply)
        }
        .await;
        self.stamped(result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            let caller = self.authorize(&request, true)?;
            let req: VoteRequest<NodeId> = decode(&request)?;
            check_sender(caller, req.vote.leader_id.node_id, "candidate")?;
            encode(&self.raft.vote(req).await)
        }
        .await;
        self.stamped(result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            let caller = self.authorize(&request, true)?;
            let req: InstallSnapshotRequest<TypeConfig> = decode(&request)?;
            check_sender(caller, req.vote.leader_id.node_id, "leader")?;
            // Everything a snapshot covers is committed.
            let commit = commit_proving_current(req.meta.last_log_id, &req.vote);
            let _hearing = self.hearing().await;
            let reply = self.raft.install_snapshot(req).await;
            if matches!(&reply, Ok(r) if r.vote.leader_id().node_id == caller) {
                self.heard_leader(commit);
            }
            if let (
                Err(openraft::error::RaftError::Fatal(openraft::error::Fatal::StorageError(e))),
                Some((failures, dir)),
            ) = (&reply, &self.failures)
            {
                let _ = failures.send(format!(
                    "storage failure under {} while receiving a snapshot: {e}",
                    dir.display()
                ));
            }
            encode(&reply)
        }
        .await;
        self.stamped(result)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        use tracing::Instrument as _;
        // The follower's trace continues here (a new hop of it); the span
        // puts its id on every line logged while the write is handled.
        let trace = crate::trace::TraceContext::from_metadata(request.metadata())
            .map(|t| t.child())
            .unwrap_or_else(crate::trace::TraceContext::generate);
        let span = tracing::info_span!(
            "forwarded",
            trace_id = %trace.trace_id(),
            node = self.id,
            from = tracing::field::Empty,
        );
        let result = async {
            let caller = self.authorize(&request, true)?;
            tracing::Span::current().record("from", caller);
            let mut cmd: Command = decode(&request)?;
            if let Some(clock) = &self.clock {
                cmd.at = clock.now();
            }
            tracing::debug!(caller, "raft service: forwarded write");
            let reply: Result<
                CommandResponse,
                RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
            > = match &self.proposer {
                Some(p) => p.propose(cmd).await,
                None => self.raft.client_write(cmd).await.map(|r| r.data),
            };
            if let Ok(r) = &reply {
                tracing::debug!(
                    target: crate::trace::LOG_TARGET,
                    trace_id = %trace.trace_id(),
                    node = self.id,
                    from = caller,
                    revision = r.revision,
                    "forwarded write committed"
                );
            }
            encode(&reply)
        };
        let result = crate::trace::scope(trace, result.instrument(span)).await;
        self.stamped(result)
    }

    async fn read_index(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            self.authorize(&request, true)?;
            encode(&super::read_link::answer(&self.answerer()).await)
        }
        .await;
        self.stamped(result)
    }

    type ReadIndexStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<RaftMessage, Status>>;

    async fn read_index_stream(
        &self,
        request: Request<tonic::Streaming<RaftMessage>>,
    ) -> Result<Response<Self::ReadIndexStreamStream>, Status> {
        let result = self
            .authorize(&request, true)
            .map(|_| super::read_link::serve(self.answerer(), request.into_inner()));
        self.stamped(result)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            let caller = self.authorize(&request, true)?;
            let req: super::PreVoteRequest = decode(&request)?;
            check_sender(caller, req.candidate, "candidate")?;
            let reply = match &self.election {
                Some(e) => match super::election::read_last_log(&e.last_log).await {
                    Ok(mine) => {
                        super::election::decide(&self.raft, &e.contact, e.times, &req, mine)
                    }
                    Err(why) => super::PreVoteReply {
                        granted: false,
                        reason: format!("cannot read this node's last log id: {why}"),
                    },
                },
                None => super::PreVoteReply {
                    granted: false,
                    reason: "this node does not take part in pre-votes".into(),
                },
            };
            encode(&reply)
        }
        .await;
        self.stamped(result)
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let result = self.authorize(&request, false).map(|_| HelloReply {
            node_id: self.id,
            raft_addr: self.info.raft_addr.clone(),
            api_addr: self.info.api_addr.clone(),
            incarnation: self.info.incarnation,
        });
        self.stamped(result)
    }
}

/// The tonic service for node `id` (described by `info`) in
/// `trust_domain`, with message limits that fit a snapshot chunk.
pub fn server(
    raft: Raft<TypeConfig>,
    id: NodeId,
    info: NodeInfo,
    trust_domain: &str,
    clock: Arc<dyn crate::clock::Clock>,
    proposer: super::Proposer,
) -> RaftServiceServer<RaftService> {
    wrap(
        RaftService::new(raft, id, info, trust_domain)
            .with_clock(clock)
            .with_proposer(proposer),
    )
}

/// The tonic service around `service`, with message limits that fit a
/// snapshot chunk.
pub fn wrap(service: RaftService) -> RaftServiceServer<RaftService> {
    RaftServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
