//! The first initialisation of the cluster through node 1's
//! `AdminService` ([`Supervisor::ensure_cluster`]), and the wait for a
//! leader that every start ends with.

use std::time::Duration;

use anyhow::Context as _;
use tessera::pb::{self, admin_service_client::AdminServiceClient};
use tessera::tls::TlsFiles;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::supervisor::Supervisor;
use super::{Signals, Stop};

/// Interval between ClusterStatus polls while waiting for a leader: an
/// interactive command, so a short poll is simpler than a watch stream.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest single admin RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Initialises the cluster if node 1 knows no members yet, then waits
    /// for a leader (and, after a fresh initialisation, for every node to
    /// be a voter). Returns the last status and whether it initialised.
    pub(super) async fn ensure_cluster(
        &mut self,
        sig: &mut Signals,
        deadline: Instant,
    ) -> Result<(pb::ClusterStatusResponse, bool), Stop> {
        let certs = self.dir.join("certs");
        let admin = TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin.key"),
        };
        let api1 = self.nodes[0]
            .api
            .clone()
            .context("node 1 has no address (a bug)")?;
        let channel = tessera::client::connect(&api1, &admin)
            .await
            .with_context(|| format!("connecting to node 1 at {api1} as admin"))?;
        let mut client = AdminServiceClient::new(channel);
        let mut last_err = String::new();
        let mut initialised = false;
        let mut asked_init = false;
        loop {
            if Instant::now() >= deadline {
                return Err(Stop::Failed(anyhow::anyhow!(
                    "the cluster has no leader after --timeout ({})",
                    if last_err.is_empty() {
                        "no error reported".to_string()
                    } else {
                        last_err
                    }
                )));
            }
            match status(&mut client).await {
                Ok(s) if !asked_init && s.leader_id == 0 && s.nodes.is_empty() => {
                    asked_init = true;
                    let raft_addrs: Vec<String> = self
                        .nodes
                        .iter()
                        .take(self.layout.voters() as usize)
                        .filter_map(|n| n.raft.clone())
                        .collect();
                    eprintln!("initialising the cluster with {} members", raft_addrs.len());
                    let req = pb::InitClusterRequest { raft_addrs };
                    // InitCluster returns once a leader has written the
                    // first signing key and the policy, which can take a
                    // while on a busy machine: bounded by the overall
                    // deadline, not by RPC_TIMEOUT.
                    let reply = tokio::select! {
                        r = tokio::time::timeout_at(deadline, client.init_cluster(req)) => r,
                        _ = sig.int.recv() => return Err(Stop::Interrupted),
                        _ = sig.term.recv() => return Err(Stop::Interrupted),
                    };
                    match reply {
                        Ok(Ok(_)) => initialised = true,
                        Ok(Err(s)) => {
                            return Err(Stop::Failed(anyhow::anyhow!(
                                "initialising the cluster on node 1: {:?}: {}",
                                s.code(),
                                s.message()
                            )))
                        }
                        Err(_) => last_err = "InitCluster did not return in time".into(),
                    }
                    continue;
                }
                Ok(s) if cluster_done(&s, self.layout.voters(), initialised) => {
                    return Ok((s, initialised));
                }
                Ok(s) => {
                    last_err = format!(
                        "leader {}, {} member(s)",
                        if s.leader_id == 0 {
                            "unknown".to_string()
                        } else {
                            s.leader_id.to_string()
                        },
                        s.nodes.len()
                    );
                }
                Err(e) => last_err = e,
            }
            self.pause(sig, POLL_INTERVAL, deadline).await?;
        }
    }
}

/// Whether the cluster is ready: a leader is known, and after a fresh
/// initialisation every one of the `n` nodes is a voter.
fn cluster_done(s: &pb::ClusterStatusResponse, n: u32, initialised: bool) -> bool {
    if s.leader_id == 0 {
        return false;
    }
    if !initialised {
        return true;
    }
    (1..=u64::from(n)).all(|id| s.nodes.iter().any(|m| m.node_id == id && m.role == "voter"))
}

pub(super) async fn status(
    client: &mut AdminServiceClient<Channel>,
) -> Result<pb::ClusterStatusResponse, String> {
    match tokio::time::timeout(
        RPC_TIMEOUT,
        client.cluster_status(pb::ClusterStatusRequest {}),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("ClusterStatus: {:?}: {}", s.code(), s.message())),
        Err(_) => Err("ClusterStatus timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str) -> pb::NodeStatus {
        pb::NodeStatus {
            node_id: id,
            role: role.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_is_done_with_a_leader_and_all_voters() {
        let mut s = pb::ClusterStatusResponse {
            leader_id: 0,
            nodes: vec![member(1, "voter"), member(2, "voter"), member(3, "voter")],
            ..Default::default()
        };
        assert!(!cluster_done(&s, 3, true));
        assert!(!cluster_done(&s, 3, false));
        s.leader_id = 2;
        assert!(cluster_done(&s, 3, true));
        s.nodes[2] = member(3, "learner");
        assert!(!cluster_done(&s, 3, true));
        // A restarted cluster needs only a leader; membership is the
        // operator's business then.
        assert!(cluster_done(&s, 3, false));
        s.nodes.pop();
        assert!(!cluster_done(&s, 3, true));
    }
}
