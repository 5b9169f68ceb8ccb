//! openraft's side of the network: the factory ([`Network`] implements
//! `RaftNetworkFactory`) and the per-peer client ([`PeerClient`]) that sends
//! `AppendEntries`, `Vote` and `InstallSnapshot` through
//! `Network::call`.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CallError, Method, Network};
use crate::raft::{NodeId, NodeInfo, TypeConfig};

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
