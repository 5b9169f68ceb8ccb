//! The receiving side of the Raft transport: the internal gRPC service
//! (`tessera.raft.v1.RaftService`) that hands openraft's messages to the
//! local [`openraft::Raft`] and runs writes forwarded by followers.
//!
//! # Members only
//!
//! Every call is checked before it is decoded:
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
        }
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
        let peer = caller_identity(req)?;
        let Some(caller) = peer.node_id(&self.trust_domain) else {
            tracing::debug!(caller = %peer.id, "raft service: not a node identity");
            return Err(Status::permission_denied(format!(
                "{} is not a node of trust domain {}: the Raft service is for cluster members only",
                peer.id, self.trust_domain
            )));
        };
        let incarnation: u64 = req
            .metadata()
            .get(INCARNATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Read the membership without holding the metrics borrow any
        // longer than this block: it blocks openraft's metrics updates.
        let recorded = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            if membership.nodes().next().is_none() {
                return Ok(caller);
            }
            match membership.get_node(&caller) {
                Some(info) => info.incarnation,
                None => {
                    tracing::debug!(caller, "raft service: not a member");
                    return Err(Status::permission_denied(format!(
                        "node {caller} is not a member of this cluster"
                    )));
                }
            }
        };
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
            encode(&self.raft.append_entries(req).await)
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
            encode(&self.raft.install_snapshot(req).await)
        }
        .await;
        self.stamped(result)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let result = async {
            let caller = self.authorize(&request, true)?;
            let cmd: Command = decode(&request)?;
            tracing::debug!(caller, "raft service: forwarded write");
            let reply: Result<
                CommandResponse,
                RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
            > = self.raft.client_write(cmd).await.map(|r| r.data);
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
) -> RaftServiceServer<RaftService> {
    RaftServiceServer::new(RaftService::new(raft, id, info, trust_domain))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
