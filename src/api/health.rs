//! The node's health as others see it: this leader's lease (its last
//! contact with a quorum, [`Lease`]), the loop that publishes
//! [`Shared::serving`] through the standard health service, and the lease
//! keeper that confirms leadership when no read does.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::raft::{NodeId, NodeInfo};

/// What this node knows about its own leadership's contact with a quorum.
/// Ages are measured here, from when metrics were seen: a leader cut off
/// from everyone gets no fresh acknowledgements, so its lease runs out.
#[derive(Debug)]
pub(super) struct Lease {
    term: u64,
    /// When this node was first seen leading in `term`: winning the
    /// election was a quorum's contact, so a new leader starts with a lease.
    since: std::time::Instant,
    /// The latest quorum acknowledgement seen in `term`.
    ack: Option<std::time::Instant>,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            term: 0,
            since: std::time::Instant::now(),
            ack: None,
        }
    }
}

impl Lease {
    pub(super) fn observe(&mut self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) {
        self.observe_term(m);
        let now = std::time::Instant::now();
        if let Some(t) = m
            .millis_since_quorum_ack
            .and_then(|ms| now.checked_sub(Duration::from_millis(ms)))
        {
            self.ack = Some(self.ack.map_or(t, |a| a.max(t)));
        }
    }

    /// Starts a new lease when a new term is seen.
    pub(super) fn observe_term(&mut self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) {
        if m.current_term != self.term {
            *self = Self {
                term: m.current_term,
                since: std::time::Instant::now(),
                ack: None,
            };
        }
    }

    pub(super) fn last_contact(&self) -> std::time::Instant {
        self.ack.map_or(self.since, |a| a.max(self.since))
    }
}

/// The services whose health is reported ("" is the whole node).
pub(super) const HEALTH_SERVICES: [&str; 5] = [
    "",
    "tessera.v1.TokenService",
    "tessera.v1.KeyService",
    "tessera.v1.AdminService",
    "tessera.v1.RevocationService",
];

/// Publishes [`Shared::serving`] through the standard health service and
/// keeps the leader lease up to date. A leader cut off from everyone sees no
/// metric change at all, so a tick re-checks the lease as well.
pub(super) async fn health_loop(
    shared: Arc<Shared>,
    reporter: tonic_health::server::HealthReporter,
) {
    use tonic_health::ServingStatus;
    let mut metrics = shared.raft.metrics();
    let mut last = None;
    let mut tick = tokio::time::interval(shared.contact_timeout / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fresh = true;
    loop {
        if fresh {
            // Only a new metrics value says anything new about quorum
            // contact: its age is measured from now, as it arrives.
            let m = metrics.borrow_and_update().clone();
            shared.observe(&m);
        }
        let status = if shared.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for s in HEALTH_SERVICES {
                reporter.set_service_status(s, status).await;
            }
            last = Some(status);
        }
        fresh = tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return } else { true },
            _ = tick.tick() => false,
        };
    }
}

/// On the leader, confirms leadership with a quorum (one read-index round)
/// whenever no read did so for a third of [`super::LEADER_LEASE`], so that
/// health and the lease reflect real contact even when no reads arrive.
pub(super) async fn lease_keeper(shared: Arc<Shared>) {
    let Some(reads) = shared.reads.clone() else {
        return;
    };
    let period = shared.contact_timeout / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leading = {
            let m = shared.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(m.id)
        };
        let fresh = reads.confirmed_at().is_some_and(|c| c.elapsed() < period);
        if leading && !fresh {
            let _ = reads.get().await;
        }
    }
}
