//! Hands a follower's Raft core the leader's commit index before the
//! entries that came with it.
//!
//! openraft 0.9's core handles an `AppendEntries` in order: it appends the
//! new entries and *waits for their flush* before it moves its commit index
//! to the leader's and applies. Under a steady stream of writes the commit
//! a follower learns always rides on the next batch of entries, so every
//! write reached a follower's state machine (its subscribers, its
//! linearizable reads) one follower fsync later than it had to: the
//! followers' subscribers saw events ~10 ms later than the leader's at
//! 200 revocations/s (docs/BENCHMARKS.md).
//!
//! The commit does not depend on the new entries: a leader may always send
//! an `AppendEntries` without entries (a heartbeat) with the same vote, the
//! same `prev_log_id` and its commit, and the follower commits at most up
//! to the `prev_log_id` it has verified matches the leader's log (Raft's
//! log matching; openraft caps the commit at the accepted log id). So the
//! Raft service splits such a message in two, in order: that heartbeat,
//! then the original. If the heartbeat is refused (a conflict, a higher
//! vote) the original gets the same answer, which is the one returned.
//!
//! Only worth a second trip through the core when the commit would move:
//! [`CommitAhead`] remembers the highest commit it handed over ahead and
//! skips messages that cannot raise it. `TESSERA_COMMIT_AHEAD=0` turns the
//! split off (same-binary A/B runs).

use std::sync::atomic::{AtomicU64, Ordering};

use openraft::raft::AppendEntriesRequest;

use super::TypeConfig;

/// Decides which `AppendEntries` are preceded by a commit-only heartbeat.
#[derive(Debug)]
pub struct CommitAhead {
    enabled: bool,
    /// The highest commit index handed to the core ahead of its entries
    /// (capped at the message's `prev_log_id`). Commits only grow, across
    /// leaders too, so a lower one can be skipped.
    handed: AtomicU64,
}

impl CommitAhead {
    /// A splitter; `enabled = false` never splits.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            handed: AtomicU64::new(0),
        }
    }

    /// Enabled unless `TESSERA_COMMIT_AHEAD=0`.
    pub fn from_env() -> Self {
        Self::new(std::env::var("TESSERA_COMMIT_AHEAD").map_or(true, |v| v != "0"))
    }

    /// The heartbeat to hand the core before `req`, if `req` carries
    /// entries and a commit that can move this follower's commit index.
    pub fn ahead_of(
        &self,
        req: &AppendEntriesRequest<TypeConfig>,
    ) -> Option<AppendEntriesRequest<TypeConfig>> {
        if !self.enabled || req.entries.is_empty() {
            return None;
        }
        let prev = req.prev_log_id?;
        let commit = req.leader_commit?;
        // The follower can commit no further than what it verifies.
        let reachable = commit.index.min(prev.index);
        if reachable == 0 || self.handed.fetch_max(reachable, Ordering::Relaxed) >= reachable {
            return None;
        }
        Some(AppendEntriesRequest {
            vote: req.vote,
            prev_log_id: Some(prev),
            leader_commit: Some(commit),
            entries: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Entry, LogId, NodeId};
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1 as NodeId), index)
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: log_id(2, index),
            payload: EntryPayload::Blank,
        }
    }

    fn req(
        prev: Option<u64>,
        commit: Option<u64>,
        entries: &[u64],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: prev.map(|i| log_id(2, i)),
            leader_commit: commit.map(|i| log_id(2, i)),
            entries: entries.iter().copied().map(entry).collect(),
        }
    }

    #[test]
    fn a_commit_riding_on_entries_goes_ahead_of_them_once() {
        let ahead = CommitAhead::new(true);
        let first = req(Some(10), Some(9), &[11, 12]);
        let hb = ahead
            .ahead_of(&first)
            .expect("a commit that can move goes ahead");
        assert!(hb.entries.is_empty());
        assert_eq!(hb.vote, first.vote);
        assert_eq!(hb.prev_log_id, first.prev_log_id);
        assert_eq!(hb.leader_commit, first.leader_commit);
        // The same commit again (a retry, or the next batch before the
        // leader committed more) is not worth a second trip.
        assert!(ahead.ahead_of(&req(Some(12), Some(9), &[13])).is_none());
        assert!(ahead.ahead_of(&req(Some(12), Some(12), &[13])).is_some());
    }

    #[test]
    fn heartbeats_first_entries_and_disabled_splitters_are_left_alone() {
        let ahead = CommitAhead::new(true);
        assert!(ahead.ahead_of(&req(Some(10), Some(10), &[])).is_none());
        assert!(ahead.ahead_of(&req(None, Some(3), &[1])).is_none());
        assert!(ahead.ahead_of(&req(Some(3), None, &[4])).is_none());
        let off = CommitAhead::new(false);
        assert!(off.ahead_of(&req(Some(10), Some(9), &[11])).is_none());
    }

    #[test]
    fn the_commit_handed_ahead_is_capped_at_what_the_follower_can_verify() {
        let ahead = CommitAhead::new(true);
        // A leader re-sending from index 5 while its commit is at 9: the
        // heartbeat can commit only up to 5 on this follower.
        assert!(ahead.ahead_of(&req(Some(5), Some(9), &[6, 7])).is_some());
        assert!(ahead.ahead_of(&req(Some(7), Some(9), &[8])).is_some());
        assert!(ahead.ahead_of(&req(Some(7), Some(9), &[8])).is_none());
    }
}
