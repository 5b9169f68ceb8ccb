//! `AdminService`: cluster status and membership, policy versions, and
//! signing-key and KEK rotation.
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
use crate::token::Alg;

/// How long InitCluster waits for the new cluster to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(15);
/// Default wait for a learner to catch up.
/// How long `InitCluster` keeps trying to reach a member that is not up.
const HELLO_RETRY: Duration = Duration::from_secs(15);
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// The `AdminService` implementation.
pub struct AdminApi {
    shared: Arc<Shared>,
    /// One backup at a time per node: each holds a copy of the state in a
    /// temporary file.
    backups: Arc<tokio::sync::Semaphore>,
}

pub use super::backup_stream::BackupStream;

impl AdminApi {
    /// A compare-and-set of the policy, decided on the leader (elsewhere
    /// `UNAVAILABLE` with its address): under the node's policy-write lock
    /// (`crate::raft::proposer`), after a read barrier (so every policy
    /// acknowledged anywhere is applied here, earlier leaders' included),
    /// the applied version must be `expected`; the put is then proposed
    /// and applied before the lock is let go. No new log command: a node
    /// of an earlier release replicates it as any other put. Putting the
    /// text the policy already holds succeeds with its version, so a retry
    /// after a lost answer does not report a conflict with itself.
    async fn put_policy_if(&self, text: String, expected: u64) -> Result<u64, ApiError> {
        let shared = &self.shared;
        shared.ensure_leader_for("a conditional policy put")?;
        let decided = async {
            let held = shared.proposer.policy_writes().await;
            shared.read_barrier().await?;
            match shared.state.policy() {
                // The text already stored: nothing to write, whether this
                // is a retry whose write landed or a document put back
                // unchanged (it would otherwise take a new version).
                Some((version, current)) if current == text => {
                    return Ok(version);
                }
                current => {
                    let version = current.map_or(0, |(v, _)| v);
                    if version != expected {
                        return Err(ApiError::FailedPrecondition(format!(
                            "the policy is no longer at version {expected} but at {version}: read it, merge, and put again with its version"
                        )));
                    }
                }
            }
            let cmd = crate::raft::Command {
                at: shared.clock.now(),
                op: Op::PutPolicy { text },
            };
            Ok(shared.proposer.propose_holding(cmd, held).await?.revision)
        };
        match tokio::time::timeout(super::WRITE_TIMEOUT, decided).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable {
                reason: format!(
                    "conditional policy put not confirmed within {:?}; it may still be applied: read the policy before retrying",
                    super::WRITE_TIMEOUT
                ),
                leader: None,
            }),
        }
    }

    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Authorises `operation` for the caller on the cluster's current
    /// policy; audits the decision. A read barrier comes first: a node
    /// behind its leader must not decide on a policy the cluster has
    /// already replaced (an admin whose rights were withdrawn could put
    /// them back through it).
    async fn admit<T>(&self, req: &Request<T>, operation: &'static str) -> Result<String, Status> {
        self.shared.read_barrier().await?;
        self.admit_local(req, operation).await
    }

    /// [`admit`](Self::admit) on this node's applied policy, without the
    /// barrier: only for the calls that must answer without a quorum
    /// (`ClusterStatus`, to diagnose one; `InitCluster`, before there is a
    /// cluster; `GetPolicy`, whose text a survivor of a lost majority must
    /// hand out) or that read no state (`ValidatePolicy`).
    async fn admit_local<T>(
        &self,
        req: &Request<T>,
        operation: &'static str,
    ) -> Result<String, Status> {
        let caller = crate::tls::caller_identity(req)?;
        let now = self.shared.clock.now();
        let mut refused = AuditEvent::new(now, "admin", "deny", &caller.id);
        refused.reason = Some(operation.to_string());
        let policy = self.shared.policy_for(&refused).await?;
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
        // A follower knows its leader's commit from what the leader last
        // announced: a better bound than its own applied index.
        if let (false, Some(commit)) = (
            s.lag_known,
            self.shared.contact.as_ref().and_then(|c| c.leader_commit()),
        ) {
            s.commit_index = s.commit_index.max(commit);
        }
        match self.shared.readiness() {
            Ok(()) => {
                s.leader_known = true;
                // Serving consensus-wise, but health may still say no (an
                // expiring certificate): say why.
                if let Err(e) = self.shared.health() {
                    s.not_serving_reason = e.to_string();
                }
            }
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
        self.admit_local(&req, "cluster_status").await?;
        Ok(Response::new(self.status()))
    }

    async fn init_cluster(
        &self,
        req: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.admit_local(&req, "init_cluster").await?;
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
            // A member that is still starting (or a loaded machine) can miss
            // one connect bound: retry for a while before giving up.
            let deadline = tokio::time::Instant::now() + HELLO_RETRY;
            let (id, info) = loop {
                match self.shared.peers.hello(addr).await {
                    Ok(r) => break r,
                    Err(e @ ApiError::Unavailable { .. })
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tracing::info!(addr = %addr, error = %e, "member not reachable yet; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
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
            Some(n) if n.incarnation == info.incarnation && n.raft_addr == r.raft_addr => {}
            Some(n) if n.incarnation == info.incarnation => {
                // The same member (its certificate names the id, and its
                // data is the incarnation recorded) now at another address:
                // record where it is, or the leader keeps dialling the old
                // one and the wait below times out. Only the address `hello`
                // just reached is recorded, and only if the node advertises
                // it too (a node advertising an address it cannot be reached
                // at would be cut off); every dial checks the node's
                // certificate, so this cannot point the id at another node
                // (openraft's `SetNodes` warning).
                if info.raft_addr != r.raft_addr {
                    return Err(Status::failed_precondition(format!(
                        "node {id} was reached at {} but advertises {}: fix its --raft-advertise first",
                        r.raft_addr, info.raft_addr
                    )));
                }
                tracing::info!(node = id, from = %n.raft_addr, to = %info.raft_addr, "member's addresses updated");
                self.shared
                    .raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, info)])), false)
                    .await
                    .map_err(ApiError::from)?;
            }
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
        let pb::PutPolicyRequest {
            text,
            expected_version,
        } = req.into_inner();
        super::validate::policy_text(&text)?;
        PolicyEngine::validate(&text).map_err(ApiError::from)?;
        let version = match expected_version {
            Some(expected) => self.put_policy_if(text, expected).await?,
            None => self.shared.write(Op::PutPolicy { text }).await?.revision,
        };
        Ok(Response::new(pb::PutPolicyResponse { version }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        // This node's applied policy, with its version: it must answer on
        // the survivor of a lost majority, the one place its text is left.
        // `min_revision` gives read-your-writes where the caller asks.
        self.admit_local(&req, "get_policy").await?;
        let min = req.get_ref().min_revision;
        if min > 0 {
            self.shared.wait_applied(min).await?;
        }
        let (version, text) = self.shared.state.policy().unwrap_or_default();
        Ok(Response::new(pb::GetPolicyResponse { text, version }))
    }

    type BackupStream = BackupStream;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        // Everything acknowledged before this call is in the backup:
        // `admit` passes a read barrier.
        let caller = self.admit(&req, "backup").await?;
        let permit = self.backups.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "a backup is already running on this node; retry when it ends",
            )
        })?;
        let state = self.shared.state.clone();
        let node_id = self.shared.raft.metrics().borrow().id;
        let now = self.shared.clock.now();
        let (header, file) = tokio::task::spawn_blocking(move || {
            let mut file = tempfile::tempfile()
                .map_err(|e| ApiError::Internal(format!("backup: temporary file: {e}")))?;
            let header = state
                .write_backup(&mut file, node_id, now)
                .map_err(|e| ApiError::Internal(format!("backup: {e}")))?;
            Ok::<_, ApiError>((header, file))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("backup task: {e}")))??;
        tracing::info!(
            caller = %caller,
            revision = header.revision,
            bytes = header.length,
            "backup started"
        );
        let first = pb::BackupChunk {
            part: Some(pb::backup_chunk::Part::Header(pb::BackupHeader {
                cluster_id: header.cluster_id,
                revision: header.revision,
                node_id: header.node_id,
                created_at: header.created_at,
                length: header.length,
                sha256: header.sha256,
                revocations: header.revocations,
                keys: header.keys,
            })),
        };
        Ok(Response::new(super::backup_stream::stream(
            file,
            first,
            permit,
            super::backup_stream::BACKUP_STALL,
        )))
    }

    async fn validate_policy(
        &self,
        req: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        self.admit_local(&req, "validate_policy").await?;
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

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        self.admit(&req, "rotate_signing_key").await?;
        let r = req.into_inner();
        let alg = match r.algorithm.as_str() {
            "" => None,
            "EdDSA" => Some(Alg::EdDSA),
            "ES256" => Some(Alg::ES256),
            other => {
                return Err(Status::invalid_argument(format!(
                    "algorithm must be EdDSA or ES256, not {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        let rot = self.shared.rotate_signing_key(alg, r.now).await?;
        let publish = self.shared.key_settings().publish_ahead.as_secs();
        let skew = self.shared.activation_delay().saturating_sub(publish);
        let message = match (rot.created, rot.activated) {
            (_, true) => format!(
                "key {} signs now, without the {publish} s publish-ahead window: verifiers holding a cached JWKS refuse its tokens until they refresh (on the unknown kid, or when their cache expires)",
                rot.key.kid
            ),
            (true, false) => format!(
                "key {} is published and signs from {} (after the {publish} s publish-ahead window and the {skew} s clock skew tolerated between nodes)",
                rot.key.kid, rot.key.times.activate_after
            ),
            (false, false) => format!(
                "a rotation is already in progress: key {} ({}) signs from {}",
                rot.key.kid, rot.key.alg, rot.key.times.activate_after
            ),
        };
        let mut key = rot.key;
        if rot.activated {
            key.state = crate::raft::KeyState::Active;
        }
        Ok(Response::new(pb::RotateSigningKeyResponse {
            key: Some(key_info(&key)),
            created: rot.created,
            activated: rot.activated,
            message,
            revision: rot.revision,
        }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.admit(&req, "list_keys").await?;
        let (keys, revision) = self.shared.list_keys().await?;
        let s = self.shared.key_settings();
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(key_info).collect(),
            revision,
            publish_ahead_seconds: s.publish_ahead.as_secs(),
            rotation_period_seconds: s.rotation_period.map_or(0, |p| p.as_secs()),
            retire_grace_seconds: self.shared.retire_grace(),
            kek_ids: self.shared.kek_ids(),
        }))
    }

    async fn rotate_kek(
        &self,
        req: Request<pb::RotateKekRequest>,
    ) -> Result<Response<pb::RotateKekResponse>, Status> {
        self.admit(&req, "rotate_kek").await?;
        let expected = req.into_inner().expected_kek_id;
        let current = self.shared.kek_ids().into_iter().next().unwrap_or_default();
        if !expected.is_empty() && expected != current {
            return Err(Status::failed_precondition(format!(
                "this node's current KEK has id {current}, not {:?}: configure the new KEK as kek_file (and the old one as previous_kek_file) on every node, restart them one by one, then retry",
                expected.chars().take(64).collect::<String>()
            )));
        }
        let (resealed, revision) = self.shared.reseal_keys().await?;
        Ok(Response::new(pb::RotateKekResponse {
            resealed,
            kek_id: current,
            revision,
        }))
    }
}

/// A key record as the admin API shows it (never the sealed key).
fn key_info(k: &crate::raft::KeyRecord) -> pb::KeyInfo {
    use crate::raft::KeyState;
    pb::KeyInfo {
        kid: k.kid.clone(),
        algorithm: k.alg.clone(),
        state: match k.state {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
        .into(),
        created_at: k.created_at,
        activate_after: k.times.activate_after,
        activated_at: k.times.activated_at.unwrap_or(0),
        retired_at: k.times.retired_at.unwrap_or(0),
        remove_after: k.times.remove_after.unwrap_or(0),
        kek_id: k.kek_id.clone(),
    }
}
