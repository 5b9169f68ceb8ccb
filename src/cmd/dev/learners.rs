//! `tessera dev --learners N`: the last N nodes join as non-voting learners
//! (read replicas), the way an operator adds one with `tessera cluster add`
//! and no `promote`. They serve reads and revocation streams; the write
//! quorum stays the voters.

use anyhow::Context as _;
use tessera::pb::{self, admin_service_client::AdminServiceClient};
use tessera::tls::TlsFiles;
use tokio::time::Instant;

use super::init::{status, POLL_INTERVAL};
use super::supervisor::Supervisor;
use super::Stop;

impl Supervisor {
    /// The admin certificate of the development directory.
    fn admin_files(&self) -> TlsFiles {
        let certs = self.dir.join("certs");
        TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin.key"),
        }
    }

    /// Adds every learner node that is not a member yet (a fresh cluster,
    /// or a restart after an add that did not finish), through the leader,
    /// each call bounded by `deadline`. Returns the status afterwards.
    pub(super) async fn ensure_learners(
        &mut self,
        mut s: pb::ClusterStatusResponse,
        sig: &mut super::Signals,
        deadline: Instant,
    ) -> Result<pb::ClusterStatusResponse, Stop> {
        let first = self.layout.voters() + 1;
        for i in first..=self.layout.nodes {
            if s.nodes.iter().any(|m| m.node_id == u64::from(i)) {
                continue;
            }
            let raft_addr = self.nodes[i as usize - 1]
                .raft
                .clone()
                .context("a learner has no Raft address (a bug)")?;
            eprintln!("adding node {i} as a learner (read replica)");
            self.add_learner(&s, &raft_addr, sig, deadline).await?;
            s = self.leader_status(&s, sig, deadline).await?;
        }
        Ok(s)
    }

    /// One `AddLearner` on the leader; retried (bounded by `deadline`)
    /// while leadership moves.
    async fn add_learner(
        &mut self,
        s: &pb::ClusterStatusResponse,
        raft_addr: &str,
        sig: &mut super::Signals,
        deadline: Instant,
    ) -> Result<(), Stop> {
        let mut target = s.leader_api_addr.clone();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stop::Failed(anyhow::anyhow!(
                    "learner at {raft_addr} not added within --timeout"
                )));
            }
            let files = self.admin_files();
            let call = async {
                let ch = tessera::client::connect(&target, &files).await?;
                let r = AdminServiceClient::new(ch)
                    .add_learner(pb::AddLearnerRequest {
                        raft_addr: raft_addr.to_string(),
                        timeout_seconds: left.as_secs().max(1),
                    })
                    .await;
                anyhow::Ok(r)
            };
            let reply = tokio::select! {
                r = tokio::time::timeout_at(deadline, call) => r,
                _ = sig.int.recv() => return Err(Stop::Interrupted),
                _ = sig.term.recv() => return Err(Stop::Interrupted),
            };
            match reply {
                Ok(Ok(Ok(_))) => return Ok(()),
                Ok(Ok(Err(st))) if st.code() == tonic::Code::Unavailable => {
                    // Not (or no longer) the leader: follow the hint.
                    if let Some(hint) = st
                        .metadata()
                        .get(tessera::api::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                    {
                        target = hint.to_string();
                    }
                }
                Ok(Ok(Err(st))) => {
                    return Err(Stop::Failed(anyhow::anyhow!(
                        "adding the learner at {raft_addr}: {:?}: {}",
                        st.code(),
                        st.message()
                    )))
                }
                Ok(Err(e)) => eprintln!("adding the learner at {raft_addr}: {e:#}; retrying"),
                Err(_) => {}
            }
            self.pause(sig, POLL_INTERVAL, deadline).await?;
        }
    }

    /// The leader's status (its view has every member's lag).
    async fn leader_status(
        &mut self,
        s: &pb::ClusterStatusResponse,
        sig: &mut super::Signals,
        deadline: Instant,
    ) -> Result<pb::ClusterStatusResponse, Stop> {
        let files = self.admin_files();
        loop {
            let got = async {
                let ch = tessera::client::connect(&s.leader_api_addr, &files).await?;
                status(&mut AdminServiceClient::new(ch))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
            }
            .await;
            match got {
                Ok(s) if s.leader_id != 0 => return Ok(s),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => return Err(Stop::Failed(e)),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Stop::Failed(anyhow::anyhow!(
                    "no leader after adding a learner (see --timeout)"
                )));
            }
            self.pause(sig, POLL_INTERVAL, deadline).await?;
        }
    }
}
