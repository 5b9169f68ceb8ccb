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
///
/// Leading is no proof of contact: openraft restores a node whose saved
/// vote is its own as leader of that term at once when it starts, even if
/// the others elected a leader of a later term meanwhile and it cannot
/// reach them. Only acknowledgements (and confirmed read rounds) count.
#[derive(Debug)]
pub(super) struct Lease {
    term: u64,
    /// When this node was first seen leading in `term`.
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

    /// The latest quorum acknowledgement seen in this term (`None`: none).
    pub(super) fn last_contact(&self) -> Option<std::time::Instant> {
        self.ack
    }

    /// How long this node has been seen leading in its current term.
    pub(super) fn leading_for(&self) -> Duration {
        self.since.elapsed()
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
            // Borrowed, not cloned: under a write load this runs thousands
            // of times a second, and a clone copies the membership and the
            // replication map.
            shared.observe(&metrics.borrow_and_update());
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

/// Runs a read-index round whenever no read did for a while, so that
/// health, the lease and `LOCAL` staleness reflect real contact with a
/// quorum even when no reads arrive: on the leader, a confirmation every
/// third of the contact timeout; on a follower or learner, a read index
/// from its leader every [`FOLLOWER_CONFIRM_PERIOD`] (a leader's messages
/// do not prove that a quorum still follows it). A failed round is tried
/// again after [`RETRY`], doubled after each failure up to [`RETRY_MAX`]
/// (a removed, wiped or stopped node fails every time).
pub(super) async fn lease_keeper(shared: Arc<Shared>) {
    let Some(reads) = shared.reads.clone() else {
        return;
    };
    let leader_period = shared.contact_timeout / 3;
    let follower_period = FOLLOWER_CONFIRM_PERIOD.min(leader_period);
    let metrics = shared.raft.metrics();
    // Only the vote, role, leader and membership: under a write load the
    // full metrics change thousands of times a second.
    let mut server = shared.raft.server_metrics();
    let mut seen = None;
    let mut wait = Duration::ZERO;
    let mut retry = RETRY;
    loop {
        // A new leader is confirmed at once: until then this node is not
        // ready.
        let next = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                changed = server.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // The term too: a leader re-elected for a new term must
                    // confirm its lease in that term, and the updates for
                    // the lost term and the new one may arrive merged.
                    let s = server.borrow_and_update();
                    if Some((s.current_leader, s.vote.leader_id().term)) != seen {
                        break;
                    }
                }
            }
        }
        // Role and term from the server metrics that woke us: openraft
        // sends them before the full metrics, which may still show the
        // previous report for a moment (found by review).
        let (leading, term) = {
            let s = server.borrow_and_update();
            let term = s.vote.leader_id().term;
            seen = Some((s.current_leader, term));
            (s.current_leader == Some(s.id), term)
        };
        {
            let m = metrics.borrow();
            // A leader's floor, recorded as early as this node sees itself
            // lead (`crate::raft::read_index`), from metrics of this term.
            if m.current_term == term {
                reads.leader_floor(&m);
            }
        }
        let (last, period) = if leading {
            (reads.confirmed_at(term), leader_period)
        } else {
            (reads.answered_at(), follower_period)
        };
        let age = last.map(|c| c.elapsed());
        wait = match age {
            Some(age) if age < period => period - age,
            _ => match tokio::time::timeout(ROUND_WAIT_MAX, reads.get()).await {
                Ok(Ok(_)) => {
                    retry = RETRY;
                    period
                }
                Ok(Err(_)) | Err(_) => {
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            },
        };
    }
}

/// How often a follower or learner with no reads asks its leader for a read
/// index: the bound on an idle node's `LOCAL` staleness, at one small
/// message each way.
pub(super) const FOLLOWER_CONFIRM_PERIOD: Duration = Duration::from_millis(250);

/// When a keeper's round failed (no leader, no quorum), the next try.
const RETRY: Duration = Duration::from_millis(100);
/// The longest wait between failed tries.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest the keeper waits for one round: a round ends by its own deadline
/// (`raft::read_index::ROUND_TIMEOUT`, 2 s); this is the backstop.
const ROUND_WAIT_MAX: Duration = Duration::from_secs(3);
