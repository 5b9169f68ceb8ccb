//! What a follower knows of its leader's commit index, and since when.
//!
//! openraft 0.9's metrics give a follower its own log and applied index,
//! not the leader's commit, so a follower restarting far behind (or
//! catching up after a partition) could not tell that it is behind. Every
//! `AppendEntries` (heartbeats included) carries the leader's commit index;
//! the Raft service records it here as it arrives.
//!
//! Two questions are answered from it:
//! - *how far behind am I?* — the highest commit heard minus the applied
//!   index (readiness: a follower too far behind reports `NOT_SERVING`);
//! - *since when is my applied state known to be current?* — the arrival
//!   of the latest message whose commit this node has applied. (`LOCAL`
//!   staleness is counted from read-index rounds its leader answered
//!   instead, recorded in a second `CommitsHeard` by
//!   `super::read_index`: a leader cut off from the voters still sends
//!   messages, so they prove nothing on their own.) A leader sends its
//!   messages to a follower one at a time, so once a message with a commit
//!   above the applied index arrived, no later message can move that
//!   instant forward until the node applies more.
//!
//! Bounded: at most [`MAX_HEARD`] records; when full, the oldest record
//! after the first is dropped, which can only make staleness look larger,
//! never smaller.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// Most distinct commit indexes remembered (a follower held behind hears a
/// new one per leader commit).
pub const MAX_HEARD: usize = 64;

/// Commit indexes heard from leaders, each with the latest instant it was
/// heard. Indexes only grow: a new leader may announce a lower commit than
/// the previous one did (it does not know the old leader's yet), but what
/// was committed stays committed, so the highest heard is kept.
#[derive(Debug, Default)]
pub struct CommitsHeard {
    // A std lock: held for a few deque operations, never across an await.
    heard: Mutex<VecDeque<(u64, Instant)>>,
}

impl CommitsHeard {
    fn heard(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Instant)>> {
        // A poisoned deque is still a valid deque.
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a leader announced `commit` now.
    pub fn record(&self, commit: u64) {
        self.record_at(commit, Instant::now());
    }

    /// Records that `commit` was current at `at` (see [`CommitsHeard`]'s
    /// other use, rounds a leader answered: `super::read_index`).
    pub fn record_at(&self, commit: u64, at: Instant) {
        let mut heard = self.heard();
        match heard.back_mut() {
            // The same index again: known current as of this later instant.
            Some((last, t)) if commit <= *last => *t = at,
            _ => {
                if heard.len() >= MAX_HEARD {
                    heard.remove(1);
                }
                heard.push_back((commit, at));
            }
        }
    }

    /// The highest commit index heard since this node started (`None`:
    /// no leader message yet).
    pub fn leader_commit(&self) -> Option<u64> {
        self.heard().back().map(|(c, _)| *c)
    }

    /// When this node last heard a leader commit it has applied: its state
    /// was current then (`None`: no such message since it started).
    /// Forgets the records this answer supersedes (`applied` only grows).
    pub fn current_since(&self, applied: u64) -> Option<Instant> {
        let mut heard = self.heard();
        let covered = heard.iter().take_while(|(c, _)| *c <= applied).count();
        if covered == 0 {
            return None;
        }
        heard.drain(..covered - 1);
        heard.front().map(|(_, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nothing_heard_means_nothing_known() {
        let h = CommitsHeard::default();
        assert_eq!(h.leader_commit(), None);
        assert_eq!(h.current_since(100), None);
    }

    #[test]
    fn a_follower_behind_is_current_as_of_the_last_commit_it_applied() {
        let h = CommitsHeard::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        h.record_at(10, at(0));
        h.record_at(10, at(5)); // a heartbeat: same commit, later
        h.record_at(20, at(10));
        h.record_at(30, at(20));
        assert_eq!(h.leader_commit(), Some(30));
        // Applied 15: current as of the last message that said 10.
        assert_eq!(h.current_since(15), Some(at(5)));
        assert_eq!(h.current_since(9), None);
        assert_eq!(h.current_since(20), Some(at(10)));
        assert_eq!(h.current_since(30), Some(at(20)));
    }

    #[test]
    fn a_lower_commit_from_a_new_leader_keeps_the_highest() {
        let h = CommitsHeard::default();
        let t0 = Instant::now();
        h.record_at(50, t0);
        h.record_at(40, t0 + Duration::from_millis(1));
        assert_eq!(h.leader_commit(), Some(50));
        assert_eq!(h.current_since(45), None);
    }

    #[test]
    fn when_full_staleness_can_only_grow() {
        let h = CommitsHeard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_HEARD as u64 * 2) {
            h.record_at(i + 1, t0 + Duration::from_millis(i));
        }
        assert!(h.heard().len() <= MAX_HEARD);
        // The oldest record stays: never a later instant than the truth.
        assert!(h.current_since(5) <= Some(t0 + Duration::from_millis(4)));
        assert_eq!(h.current_since(1), Some(t0));
        assert_eq!(h.leader_commit(), Some(MAX_HEARD as u64 * 2));
    }
}
