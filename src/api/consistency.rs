//! What an answer guarantees: whether this node may serve at all
//! ([`Readiness`]), and the read barrier that makes decisions linearizable.
//!
//! Every decision that depends on revocations, keys or policy (introspect,
//! exchange, issue, revoke) first passes [`Shared::read_barrier`]: a batched
//! read index from the leader (see [`crate::raft::read_index`]), then a wait
//! until this node has applied it. A node that cannot confirm within
//! [`READ_CONFIRM_BUDGET`] answers `UNAVAILABLE` with the leader hint, never
//! from state it cannot vouch for. `docs/CONSISTENCY.md` has the contract.

use std::time::{Duration, Instant};

use super::{ApiError, Shared, MAX_APPLY_LAG};
use crate::raft::{NodeId, NodeInfo, ReadIndexError};

/// Longest a read waits for its read index and for this node to apply it
/// (it may be shorter: the node's `read_wait_max`).
pub const READ_CONFIRM_BUDGET: Duration = Duration::from_secs(3);

/// Why a node may not serve: every state in which its answers, streams or
/// key set could be stale or empty without it knowing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The Raft core stopped (a storage error, or shutdown).
    #[error("the Raft core has stopped")]
    Stopped,
    /// This node is not in the membership it holds: it never received the
    /// cluster's state, or its data was wiped.
    #[error("this node is not a member of the cluster it knows (no state received, or its data was wiped: remove and re-add it)")]
    NotMember,
    /// The membership records another data incarnation for this node.
    #[error("the cluster records another data incarnation for this node (its data was wiped: remove and re-add it)")]
    IncarnationRefused,
    /// Nothing was ever applied.
    #[error("this node has never received state")]
    NoState,
    /// No leader is known.
    #[error("no leader is known")]
    NoLeader,
    /// This node leads but has not heard from a quorum within the lease.
    #[error("this leader has lost contact with a quorum")]
    LostQuorum,
    /// This node leads but no quorum has acknowledged it in this term yet:
    /// just elected, or restored as leader when it started (it may have
    /// been deposed meanwhile).
    #[error("this leader has not heard from a quorum in its term yet")]
    LeadershipUnconfirmed,
    /// This node leads but has not applied its log as it stood when it
    /// took the lead (`crate::raft::read_index`, "A leader's floor"): after
    /// a crash it may lack writes it acknowledged before.
    #[error("this leader has applied {applied} of the {floor} entries it leads with")]
    LeaderApplying {
        /// This node's applied index.
        applied: u64,
        /// Its last log index when it first saw itself leading the term.
        floor: u64,
    },
    /// This node follows (or learns from) a leader that has not answered
    /// it a read index within the contact timeout: its messages alone do
    /// not prove a quorum still follows it.
    #[error("the leader has not confirmed a read index for {}", for_how_long(.0))]
    LeaderUnconfirmed(Option<Duration>),
    /// This node follows a leader it has not heard from within the lease.
    #[error("the leader has not been heard from for {0:?}")]
    LeaderSilent(Duration),
    /// The applied state is far behind the log.
    #[error("applied state is {0} entries behind the log")]
    Behind(u64),
    /// This follower has not heard its leader's commit index since it
    /// started, so it cannot tell how far behind it is.
    #[error("catching up: the leader's commit index is not known yet")]
    LeaderCommitUnknown,
    /// This follower's applied state is more than the configured lag
    /// (`raft.catch_up_lag`) behind the leader's commit index it last
    /// heard of.
    #[error("catching up: applied {applied} of the leader's commit {leader_commit}")]
    CatchingUp {
        /// This node's applied index.
        applied: u64,
        /// The highest commit index its leader announced.
        leader_commit: u64,
    },
    /// This node's own TLS certificate expires within the configured
    /// margin (zero: it has expired): peers will soon refuse it. Reported
    /// by health ([`Shared::health`]) only, so that load balancers move
    /// traffic away while the node still answers.
    #[error("this node's TLS certificate expires in {0:?}: renew it (docs/OPERATIONS.md, certificate renewal)")]
    CertificateExpiring(Duration),
}

/// How long, in [`NotReady::LeaderUnconfirmed`]'s words.
fn for_how_long(age: &Option<Duration>) -> String {
    match age {
        Some(d) => format!("{d:?}"),
        None => "as long as this node has run".into(),
    }
}

/// A leader's contact with a quorum in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QuorumContact {
    /// This node does not lead.
    NotLeader,
    /// The only voter: its own word is a quorum.
    Alone,
    /// A quorum acknowledged it (or confirmed a read round that started)
    /// at this instant, within the contact timeout.
    Held(Instant),
    /// It has led for less than the contact timeout and heard from no
    /// quorum yet in this term: just elected, or restored as leader at
    /// start-up (see `health::Lease`).
    NotYet,
    /// No quorum's word within the contact timeout.
    Lost,
}

impl Shared {
    /// Records what a metrics update says about the last quorum
    /// acknowledgement.
    pub(super) fn observe(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) {
        if m.current_leader == Some(m.id) {
            if let Ok(mut lease) = self.lease.lock() {
                lease.observe(m);
            }
        }
    }

    /// This leader's contact with a quorum in its current term (see
    /// [`QuorumContact`]).
    fn leader_contact(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> QuorumContact {
        if m.current_leader != Some(m.id) {
            return QuorumContact::NotLeader;
        }
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return QuorumContact::Alone;
        }
        let Ok(mut lease) = self.lease.lock() else {
            return QuorumContact::Lost;
        };
        let contact = if let Some(reads) = &self.reads {
            // Contact is either a quorum acknowledgement seen in *fresh*
            // metrics (recorded by `observe` as each update arrives; never
            // recomputed here from metrics that may be old: an age read late
            // makes a lost quorum look fresh, and a leader cut off from
            // everyone gets no new metrics) or a confirmed read-index round
            // of this term (its start, measured here).
            lease.observe_term(m);
            reads.confirmed_at(m.current_term).max(lease.last_contact())
        } else {
            lease.observe(m);
            lease.last_contact()
        };
        match contact {
            Some(at) if at.elapsed() <= self.contact_timeout => QuorumContact::Held(at),
            Some(_) => QuorumContact::Lost,
            None if lease.leading_for() <= self.contact_timeout => QuorumContact::NotYet,
            None => QuorumContact::Lost,
        }
    }

    /// Whether this node may act as leader: it is one and a quorum (or it
    /// alone, as the only voter) acknowledged it within the contact
    /// timeout, or it has led for less than that and may still hear from
    /// one (a write needs a quorum anyway). True for non-leaders, which
    /// forward instead.
    pub(super) fn lease_holds(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> bool {
        !matches!(self.leader_contact(m), QuorumContact::Lost)
    }
}

impl Shared {
    /// Whether this node may serve, and if not, why. Health (`SERVING`),
    /// `ClusterStatus.leader_known` and stream heartbeats all report this.
    pub fn readiness(&self) -> Result<(), NotReady> {
        // Borrowed, not cloned: this runs on every request, and a clone of
        // openraft's metrics copies the membership and replication maps.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.running_state.is_err() {
            return Err(NotReady::Stopped);
        }
        let membership = m.membership_config.membership();
        let Some(me) = membership.get_node(&m.id) else {
            return Err(NotReady::NotMember);
        };
        if self.incarnation != 0 && me.incarnation != 0 && me.incarnation != self.incarnation {
            return Err(NotReady::IncarnationRefused);
        }
        if m.last_applied.is_none() {
            return Err(NotReady::NoState);
        }
        let Some(leader) = m.current_leader else {
            return Err(NotReady::NoLeader);
        };
        if leader == m.id {
            match self.leader_contact(&m) {
                QuorumContact::Lost => return Err(NotReady::LostQuorum),
                QuorumContact::NotYet => return Err(NotReady::LeadershipUnconfirmed),
                QuorumContact::NotLeader | QuorumContact::Alone | QuorumContact::Held(_) => {}
            }
            if let Some(floor) = self.reads.as_ref().and_then(|r| r.leader_floor(&m)) {
                let applied = m.last_applied.map_or(0, |l| l.index);
                if applied < floor {
                    return Err(NotReady::LeaderApplying { applied, floor });
                }
            }
        } else if let Some(contact) = &self.contact {
            let quiet = contact.quiet_for();
            if quiet > self.contact_timeout {
                return Err(NotReady::LeaderSilent(quiet));
            }
            // Its own log says nothing of what it has not received yet:
            // judge a follower against the leader's commit.
            let applied = m.last_applied.map_or(0, |l| l.index);
            let Some(leader_commit) = contact.leader_commit() else {
                return Err(NotReady::LeaderCommitUnknown);
            };
            if leader_commit.saturating_sub(applied) > self.catch_up_lag {
                return Err(NotReady::CatchingUp {
                    applied,
                    leader_commit,
                });
            }
            if let Some(reads) = &self.reads {
                let age = reads.answered_at().map(|at| at.elapsed());
                if age.is_none_or(|a| a > self.contact_timeout) {
                    return Err(NotReady::LeaderUnconfirmed(age));
                }
            }
        }
        let behind = m
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(m.last_applied.map_or(0, |l| l.index));
        if behind > MAX_APPLY_LAG {
            return Err(NotReady::Behind(behind));
        }
        Ok(())
    }

    /// What health reports: [`Shared::readiness`], and then whether this
    /// node's certificate is about to expire.
    ///
    /// The certificate is judged here and not in `readiness`: a node whose
    /// certificate expires soon still holds state it can vouch for, and
    /// refusing JWKS or streams on every node of a cluster whose
    /// certificates were issued together would cause the outage the margin
    /// is there to prevent. Health drains the node instead.
    pub fn health(&self) -> Result<(), NotReady> {
        self.readiness()?;
        if let Some((expiry, margin)) = &self.cert_expiry {
            if let Some(left) = expiry.remaining() {
                if left <= *margin {
                    return Err(NotReady::CertificateExpiring(left));
                }
            }
        }
        Ok(())
    }

    /// `UNAVAILABLE` with the leader hint unless [`Shared::readiness`] holds.
    pub fn ensure_ready(&self) -> Result<(), ApiError> {
        self.readiness().map_err(|e| ApiError::Unavailable {
            reason: format!("this node cannot vouch for its state: {e}"),
            leader: self.leader_hint(),
        })
    }

    /// For LOCAL reads: refuses only a node that holds no state of the
    /// cluster at all (never received it, wiped, or stopped) — an empty
    /// state would answer `active=true` for every revoked token.
    pub fn ensure_started(&self) -> Result<(), ApiError> {
        match self.readiness() {
            Err(
                e @ (NotReady::Stopped
                | NotReady::NotMember
                | NotReady::IncarnationRefused
                | NotReady::NoState),
            ) => Err(ApiError::Unavailable {
                reason: format!("this node holds no state it can vouch for: {e}"),
                leader: self.leader_hint(),
            }),
            _ => Ok(()),
        }
    }

    /// For LOCAL reads: how stale this node's applied state may be, that
    /// is, how long ago it last had a quorum's leader's word that it held
    /// everything committed (`None`: no such word since it started). On a
    /// follower or learner that is the start of the latest read-index round
    /// its leader answered with an index it has applied (a leader's
    /// messages alone do not prove it still has a quorum): a follower
    /// catching up reports the time since it was last current, not since
    /// its last heartbeat.
    pub fn staleness(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.running_state.is_err() || m.last_applied.is_none() {
            return None;
        }
        if m.current_leader == Some(m.id) {
            // A new leader holds every acknowledged write only once it has
            // applied an entry of its own term.
            if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
                return None;
            }
            // Nor, after a crash, before it has applied what it had
            // acknowledged (its floor).
            let floor = self.reads.as_ref().and_then(|r| r.leader_floor(&m));
            if floor.is_some_and(|f| m.last_applied.is_none_or(|l| l.index < f)) {
                return None;
            }
            return match self.leader_contact(&m) {
                QuorumContact::Alone => Some(Duration::ZERO),
                QuorumContact::Held(at) => Some(at.elapsed()),
                QuorumContact::Lost | QuorumContact::NotYet | QuorumContact::NotLeader => None,
            };
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        // A leader's messages do not prove it still has a quorum (one cut
        // off from the voters keeps talking to the nodes on its side): only
        // a read index it answered does.
        if let Some(reads) = &self.reads {
            return reads.answered_since(applied).map(|at| at.elapsed());
        }
        let contact = self.contact.as_ref()?;
        let since = contact.current_since(applied)?;
        Some(since.elapsed().max(contact.quiet_for()))
    }

    /// Waits until this node has applied revision `min`, up to
    /// `read_wait_max` (then `DEADLINE_EXCEEDED`).
    pub(super) async fn wait_applied(&self, min: u64) -> Result<(), ApiError> {
        let mut rx = self.state.watch_revision();
        let wait = async move { rx.wait_for(|r| *r >= min).await.map(|_| ()) };
        match tokio::time::timeout(self.read_wait_max, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable {
                reason: "node is shutting down".into(),
                leader: None,
            }),
            Err(_) => Err(ApiError::DeadlineExceeded(format!(
                "revision {min} not applied within {:?} (applied: {})",
                self.read_wait_max,
                self.state.revision()
            ))),
        }
    }

    /// Waits until this node's applied state includes every write
    /// acknowledged before the call, and returns the applied revision.
    /// `UNAVAILABLE` (with the leader hint) when that cannot be confirmed in
    /// time.
    pub async fn read_barrier(&self) -> Result<u64, ApiError> {
        let Some(reads) = &self.reads else {
            return Ok(self.state.revision());
        };
        // Definitive states answer at once; an election in progress is
        // worth waiting for.
        if let Err(
            e @ (NotReady::Stopped
            | NotReady::NotMember
            | NotReady::IncarnationRefused
            | NotReady::NoState
            | NotReady::LostQuorum),
        ) = self.readiness()
        {
            return Err(ApiError::Unavailable {
                reason: format!("cannot confirm a linearizable read: {e}"),
                leader: self.leader_hint(),
            });
        }
        // Inside the leader's lease its applied state already holds every
        // acknowledged write (`crate::raft::read_index`): no round.
        if let Some(lease) = self.read_lease {
            if reads.lease_holds(&self.raft, lease) {
                return Ok(self.state.revision());
            }
        }
        let deadline = Instant::now() + READ_CONFIRM_BUDGET.min(self.read_wait_max);
        let unavailable = |why: String| ApiError::Unavailable {
            reason: format!("cannot confirm a linearizable read: {why}"),
            leader: self.leader_hint(),
        };
        let mut backoff = Duration::from_millis(10);
        let index = loop {
            let why = match tokio::time::timeout_at(deadline.into(), reads.get()).await {
                Err(_) => return Err(unavailable("no read index in time".into())),
                Ok(Ok(index)) => break index,
                Ok(Err(ReadIndexError::Overloaded)) => {
                    return Err(ApiError::ResourceExhausted(
                        "too many reads are waiting for a read index".into(),
                    ))
                }
                Ok(Err(ReadIndexError::Stopped)) => {
                    return Err(unavailable("the node is stopping".into()))
                }
                Ok(Err(e)) => e.to_string(),
            };
            // Leadership is changing or a round was lost: try again, with
            // a short backoff, while the budget lasts.
            if Instant::now() + backoff >= deadline {
                return Err(unavailable(why));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        };
        // Usually applied already: no watch and no timer then.
        let revision = self.state.revision();
        if revision >= index {
            return Ok(revision);
        }
        let mut rx = self.state.watch_revision();
        let applied = tokio::time::timeout_at(deadline.into(), rx.wait_for(|r| *r >= index)).await;
        match applied {
            Ok(Ok(_)) => Ok(self.state.revision()),
            Ok(Err(_)) => Err(unavailable("the node is stopping".into())),
            Err(_) => Err(unavailable(format!(
                "read index {index} not applied in time (applied: {})",
                self.state.revision()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_way_out() {
        assert!(NotReady::NotMember.to_string().contains("re-add"));
        assert!(NotReady::IncarnationRefused.to_string().contains("wiped"));
        assert!(NotReady::LeaderSilent(Duration::from_secs(2))
            .to_string()
            .contains("2s"));
        let behind = NotReady::CatchingUp {
            applied: 7,
            leader_commit: 4000,
        }
        .to_string();
        assert!(behind.contains("catching up") && behind.contains("4000"));
        assert!(NotReady::CertificateExpiring(Duration::from_secs(60))
            .to_string()
            .contains("renew"));
    }
}
