//! Fault injection at the network seam ([`Faults`]): directed links that
//! drop requests or replies, and followers whose log entries are held back.
//! A test seam, also usable for chaos drills; the sender applies it (see
//! [`super::Network`] and [`super::PeerClient`]).

use std::collections::HashSet;
use std::sync::Mutex;

use crate::raft::NodeId;

/// Node ids [`Faults::isolate`] cuts off from each other.
const ISOLATE_IDS: std::ops::RangeInclusive<NodeId> = 1..=16;

/// Blocked directed links between nodes: a test seam, also usable for
/// chaos drills. Shared through an `Arc` by every [`Network`] of an
/// in-process cluster.
///
/// The sender applies it: a request on a blocked link `from -> to` is never
/// sent (`Unreachable`); a reply on a blocked link `to -> from` is dropped
/// after the request was handled (a lost reply, `NetworkError`), which is
/// how one direction of traffic is lost.
#[derive(Debug, Default)]
pub struct Faults {
    // A std lock: held for a set lookup or update, never across an await.
    blocked: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Nodes to which no log entries are sent (heartbeats still are).
    held: Mutex<HashSet<NodeId>>,
}

impl Faults {
    /// No link blocked.
    pub fn new() -> Self {
        Self::default()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashSet<(NodeId, NodeId)>> {
        // A poisoned set is still a valid set.
        self.blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops traffic from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.links().insert((from, to));
    }

    /// Restores traffic from `from` to `to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.links().remove(&(from, to));
    }

    /// Cuts `id` off from nodes 1 to 16, both directions.
    pub fn isolate(&self, id: NodeId) {
        self.isolate_from(id, ISOLATE_IDS);
    }

    /// Cuts `id` off from `peers`, both directions.
    pub fn isolate_from(&self, id: NodeId, peers: impl IntoIterator<Item = NodeId>) {
        let mut links = self.links();
        for peer in peers.into_iter().filter(|p| *p != id) {
            links.insert((id, peer));
            links.insert((peer, id));
        }
    }

    /// Restores every link to and from `id`.
    pub fn rejoin(&self, id: NodeId) {
        self.links().retain(|(from, to)| *from != id && *to != id);
    }

    /// Restores every link, and releases every held node.
    pub fn heal(&self) {
        self.links().clear();
        self.held().clear();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `id` behind: `AppendEntries` carrying entries to it are not
    /// sent (`Unreachable`), while heartbeats (no entries) still are, so it
    /// keeps hearing its leader and the leader's commit index without
    /// receiving what was committed — a follower catching up, frozen.
    pub fn hold_entries(&self, id: NodeId) {
        self.held().insert(id);
    }

    /// Lets entries reach `id` again.
    pub fn release_entries(&self, id: NodeId) {
        self.held().remove(&id);
    }

    /// Whether entries to `id` are held back.
    pub fn entries_held(&self, id: NodeId) -> bool {
        self.held().contains(&id)
    }

    /// Whether traffic from `from` to `to` is dropped.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.links().contains(&(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_block_directed_links() {
        let f = Faults::new();
        assert!(!f.is_blocked(1, 2));
        f.block(1, 2);
        assert!(f.is_blocked(1, 2));
        assert!(!f.is_blocked(2, 1), "one direction only");
        f.unblock(1, 2);
        assert!(!f.is_blocked(1, 2));
        f.unblock(1, 2);
        assert!(!f.is_blocked(1, 2));
    }

    #[test]
    fn held_entries_are_per_node_and_heal_releases_them() {
        let f = Faults::new();
        f.hold_entries(2);
        assert!(f.entries_held(2));
        assert!(!f.entries_held(3));
        assert!(!f.is_blocked(1, 2), "heartbeats still flow");
        f.release_entries(2);
        assert!(!f.entries_held(2));
        f.hold_entries(3);
        f.heal();
        assert!(!f.entries_held(3));
    }

    #[test]
    fn isolate_cuts_both_directions_to_every_node() {
        let f = Faults::new();
        f.isolate(3);
        for other in (1..=16).filter(|n| *n != 3) {
            assert!(f.is_blocked(3, other), "3 -> {other}");
            assert!(f.is_blocked(other, 3), "{other} -> 3");
        }
        assert!(!f.is_blocked(3, 3));
        assert!(!f.is_blocked(1, 2));
        f.block(1, 2);
        f.rejoin(3);
        assert!(!f.is_blocked(3, 1) && !f.is_blocked(1, 3));
        assert!(f.is_blocked(1, 2), "rejoin leaves other links alone");
        f.isolate_from(7, [1, 2, 7]);
        assert!(f.is_blocked(7, 1) && f.is_blocked(2, 7));
        assert!(!f.is_blocked(7, 3));
        f.heal();
        assert!(!f.is_blocked(7, 1) && !f.is_blocked(1, 2));
    }
}
