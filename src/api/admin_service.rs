//! `AdminService`: cluster status and membership, and policy versions.
//! Every call is an `admin` decision of the policy, with the method name as
//! `context.operation`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::{ApiError, AuditEvent, Shared};
use crate::pb;
use crate::policy::PolicyEngine;
use crate::raft::{NodeId, NodeInfo, Op};

/// How long InitCluster waits for the new cluster to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(15);
/// Default wait for a learner to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// The `AdminService` implementation.
pub struct AdminApi {
    shared: Arc<Shared>,
}

impl AdminApi {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Authorises `operation` for the caller; audits the decision.
    async fn admit<T>(&self, req: &Request<T>, operation: &'static str) -> Result<String, Status> {
        let caller = crate::tls::caller_identity(req)?;
        let now = self.shared.clock.now();
        let policy = self
            .shared
            .policy()?
            .ok_or_else(|| ApiError::PermissionDenied("no policy is installed".into()))?;
        let d = policy.authorize(&crate::policy::Request::admin(caller.id.clone(), operation));
        let mut ev = AuditEvent::new(
            now,
            "admin",
            if d.allowed { "allow" } else { "deny" },
            &caller.id,
        );
        ev.policy_ids = d.policy_ids;
        ev.reason = Some(operation.to_string());
        self.shared.record(ev).await;
        if !d.allowed {
            return Err(ApiError::PermissionDenied(format!(
                "policy (admin): {operation} not allowed"
            ))
            .into());
        }
        tracing::info!(caller = %caller.id, operation, "admin operation");
        Ok(caller.id)
    }

    fn status(&self) -> pb::ClusterStatusResponse {
        let mut s = cluster_status(&self.shared.raft);
        match self.shared.readiness() {
            Ok(()) => s.leader_known = true,
            Err(e) => {
                // A leader that lost its quorum, or a follower whose leader
                // went silent, does not know a leader it can vouch for.
                s.leader_known = false;
                s.not_serving_reason = e.to_string();
                s.leader_id = 0;
                s.leader_api_addr.clear();
            }
        }
        s
    }

    /// Waits until `id`'s replicated index reaches the leader's last log
    /// index as it was when the wait began.
    async fn wait_caught_up(&self, id: NodeId, timeout: Duration) -> Result<(), ApiError> {
        let target = self
            .shared
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        let res = self
            .shared
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .and_then(|l| l.as_ref())
                        .is_some_and(|l| l.index >= target)
                },
                "learner caught up",
            )
            .await;
        res.map(|_| ()).map_err(|e| {
            ApiError::DeadlineExceeded(format!(
                "node {id} has not caught up with index {target} within {timeout:?}: {e}"
            ))
        })
    }
}

/// The status of the cluster as `raft` sees it.
pub fn cluster_status(raft: &super::Raft) -> pb::ClusterStatusResponse {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let leader_api_addr = m
        .current_leader
        .and_then(|l| membership.get_node(&l))
        .map(|n| n.api_addr.clone())
        .unwrap_or_default();
    let replication = m.replication.as_ref();
    let matched = |id: &NodeId| -> u64 {
        if Some(*id) == m.current_leader && m.current_leader == Some(m.id) {
            return last;
        }
        replication
            .and_then(|r| r.get(id))
            .and_then(|l| l.as_ref())
            .map(|l| l.index)
            .unwrap_or(0)
    };
    let nodes: Vec<pb::NodeStatus> = membership
        .nodes()
        .map(|(id, n)| {
            let mi = matched(id);
            pb::NodeStatus {
                node_id: *id,
                raft_addr: n.raft_addr.clone(),
                api_addr: n.api_addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                matched_index: mi,
                lag: last.saturating_sub(mi),
                is_leader: m.current_leader == Some(*id),
            }
        })
        .collect();
    let lag_known = replication.is_some();
    // The commit index is what a quorum of voters holds: known exactly on
    // the leader; elsewhere the applied index is the best lower bound.
    let commit_index = if lag_known {
        let mut held: Vec<u64> = voters.iter().map(&matched).collect();
        held.sort_unstable();
        held.get(held.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
    } else {
        m.last_applied.map(|l| l.index).unwrap_or(0)
    };
    pb::ClusterStatusResponse {
        node_id: m.id,
        leader_id: m.current_leader.unwrap_or(0),
        leader_api_addr,
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: last,
        state: format!("{:?}", m.state).to_lowercase(),
        nodes,
        lag_known,
        leader_known: m.current_leader.is_some(),
        not_serving_reason: String::new(),
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit(&req, "cluster_status").await?;
        Ok(Response::new(self.status()))
    }

    async fn init_cluster(
        &self,
        req: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit(&req, "init_cluster").await?;
        let addrs = req.into_inner().raft_addrs;
        super::validate::raft_addrs(&addrs)?;
        let raft = &self.shared.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            return Err(Status::failed_precondition(
                "this node already belongs to a cluster",
            ));
        }
        let mut members: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
        for addr in &addrs {
            let (id, info) = self.shared.peers.hello(addr).await?;
            if members.insert(id, info).is_some() {
                return Err(Status::invalid_argument(format!(
                    "node id {id} appears twice"
                )));
            }
        }
        let me = raft.metrics().borrow().id;
        if !members.contains_key(&me) {
            return Err(Status::invalid_argument(format!(
                "the members must include this node ({me})"
            )));
        }
        raft.initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(format!("initialize: {e}")))?;
        raft.wait(Some(ELECTION_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| Status::deadline_exceeded(format!("no leader elected: {e}")))?;
        // The new leader writes the first signing key (and the initial
        // policy); the cluster is ready to serve once this node has them.
        let state = self.shared.state.clone();
        let mut rx = state.watch_revision();
        let ready = async move {
            rx.wait_for(|_| !state.keys().is_empty() && state.policy().is_some())
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(ELECTION_WAIT, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("node is shutting down")),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "the cluster has a leader but no signing key or policy yet (was the leader started with --policy?)",
                ))
            }
        }
        Ok(Response::new(self.status()))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit(&req, "add_learner").await?;
        let r = req.into_inner();
        super::validate::raft_addr(&r.raft_addr)?;
        let timeout = match r.timeout_seconds {
            0 => CATCH_UP_WAIT,
            s => Duration::from_secs(s.min(3600)),
        };
        self.shared.ensure_leader()?;
        let (id, info) = self.shared.peers.hello(&r.raft_addr).await?;
        let existing = self
            .shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        match existing {
            Some(n) if n.incarnation == info.incarnation => {}
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "node {id} is a member with another data incarnation (its data was replaced): remove it first"
                )))
            }
            None => {
                // Non-blocking: openraft's blocking add can wait forever;
                // the catch-up wait below is bounded.
                self.shared
                    .raft
                    .add_learner(id, info, false)
                    .await
                    .map_err(ApiError::from)?;
            }
        }
        self.wait_caught_up(id, timeout).await?;
        Ok(Response::new(self.status()))
    }

    async fn promote(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit(&req, "promote").await?;
        let id = req.into_inner().node_id;
        self.shared.ensure_leader()?;
        let is_node = self
            .shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if !is_node {
            return Err(Status::not_found(format!(
                "node {id} is not in the cluster; add it first"
            )));
        }
        // It votes only once it holds everything the leader has.
        self.wait_caught_up(id, CATCH_UP_WAIT).await?;
        self.shared
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.status()))
    }

    async fn remove_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit(&req, "remove_node").await?;
        let id = req.into_inner().node_id;
        self.shared.ensure_leader()?;
        let (is_voter, is_node, voters) = {
            let m = self.shared.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
            (
                voters.contains(&id),
                mem.get_node(&id).is_some(),
                voters.len(),
            )
        };
        let change = if is_voter {
            if voters <= 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if is_node {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(Status::not_found(format!(
                "node {id} is not in the cluster"
            )));
        };
        self.shared
            .raft
            .change_membership(change, false)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.status()))
    }

    async fn put_policy(
        &self,
        req: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::PutPolicyResponse>, Status> {
        self.admit(&req, "put_policy").await?;
        let text = req.into_inner().text;
        super::validate::policy_text(&text)?;
        PolicyEngine::validate(&text).map_err(ApiError::from)?;
        let r = self.shared.write(Op::PutPolicy { text }).await?;
        Ok(Response::new(pb::PutPolicyResponse {
            version: r.revision,
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.admit(&req, "get_policy").await?;
        let (version, text) = self.shared.state.policy().unwrap_or_default();
        Ok(Response::new(pb::GetPolicyResponse { text, version }))
    }

    async fn validate_policy(
        &self,
        req: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        self.admit(&req, "validate_policy").await?;
        Ok(Response::new(
            match PolicyEngine::validate(&req.into_inner().text) {
                Ok(()) => pb::ValidatePolicyResponse {
                    valid: true,
                    message: String::new(),
                },
                Err(e) => pb::ValidatePolicyResponse {
                    valid: false,
                    message: e.to_string(),
                },
            },
        ))
    }
}
