//! The Raft network of a one-node cluster.
//!
//! A single voter never sends Raft RPCs, so every call here reports the
//! target unreachable. The multi-node transport (tonic over its own mTLS
//! listener) replaces this type when the cluster grows beyond one node.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use crate::raft::NodeInfo as BasicNode;

use crate::raft::{NodeId, TypeConfig};

/// Factory of [`SoloNetwork`] clients.
#[derive(Debug, Default, Clone)]
pub struct SoloNetwork;

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    let err = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("node {target}: this node runs a one-node cluster and has no Raft transport"),
    );
    RPCError::Unreachable(Unreachable::new(&err))
}

impl RaftNetworkFactory<TypeConfig> for SoloNetwork {
    type Network = SoloClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        SoloClient { target }
    }
}

/// A client that cannot reach anyone.
#[derive(Debug)]
pub struct SoloClient {
    target: NodeId,
}

impl RaftNetwork<TypeConfig> for SoloClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }
}
