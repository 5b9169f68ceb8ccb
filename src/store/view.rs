//! [`StateView`]: the read side of the applied state for the services.
//! Reads come from memory and never touch sled.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::feed::{Feed, Watch};
use super::sm::{read, ApplyCounters};
use super::state::State;
use crate::raft::KeyRecord;

/// A cheap, cloneable read handle on the applied state.
#[derive(Clone)]
pub struct StateView {
    state: Arc<RwLock<State>>,
    revision: watch::Receiver<u64>,
    feed: Arc<Feed>,
    counters: Arc<ApplyCounters>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl StateView {
    pub(crate) fn new(
        state: Arc<RwLock<State>>,
        revision: watch::Receiver<u64>,
        feed: Arc<Feed>,
        counters: Arc<ApplyCounters>,
    ) -> Self {
        StateView {
            state,
            revision,
            feed,
            counters,
        }
    }

    /// The state itself, for the store's own readers (backups).
    pub(crate) fn state(&self) -> &RwLock<State> {
        &self.state
    }

    /// What this node's state machine has applied since it started
    /// (revocations added and purged), for metrics.
    pub fn apply_counters(&self) -> &ApplyCounters {
        &self.counters
    }

    /// Starts a revocation watcher after `from_revision`: a replay when the
    /// cursor is inside the retained window, else a snapshot of every active
    /// revocation; then the live feed, continuing exactly where the start
    /// ends.
    pub fn watch(&self, from_revision: u64) -> Watch {
        let st = read(&self.state);
        self.feed.watch(&st, from_revision)
    }

    /// The events after `revision` (up to `until`) a watcher sends next,
    /// one message's worth (see [`Feed::after`]); [`LeftWindow`](super::LeftWindow) if
    /// some have left the retained window.
    pub fn watch_after(
        &self,
        revision: u64,
        until: u64,
        max_events: usize,
        max_revocations: usize,
    ) -> Result<Vec<Arc<super::FeedEvent>>, super::LeftWindow> {
        self.feed
            .after(revision, until, max_events, max_revocations)
    }

    /// The oldest cursor a watcher can resume from without a snapshot.
    pub fn watch_window_start(&self) -> u64 {
        self.feed.window_start()
    }

    /// Watchers subscribed to the live feed.
    pub fn watchers(&self) -> usize {
        self.feed.subscribers()
    }

    /// The last applied log index; 0 before anything was applied.
    pub fn revision(&self) -> u64 {
        read(&self.state).revision()
    }

    /// A receiver of the applied revision, updated after each applied batch
    /// (or once an installed snapshot is durable).
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }

    /// True if any of `jtis` (a token's own and its ancestors') is revoked,
    /// or `subject`'s or one of `clients`' (the token's own and its
    /// ancestors', [`crate::token::Claims::clients`]) revocation cut-off
    /// revokes a token minted at revision `rev` (its `tsr_rev` claim) or,
    /// for a token without one, at `iat`: see
    /// [`crate::token::cutoff_revokes`].
    pub fn is_revoked(
        &self,
        jtis: &[&str],
        subject: &str,
        clients: &[&str],
        iat: u64,
        rev: Option<u64>,
    ) -> bool {
        read(&self.state).is_revoked(jtis, subject, clients, iat, rev)
    }

    /// The key ring, ordered by `kid`.
    pub fn keys(&self) -> Vec<KeyRecord> {
        read(&self.state).keys.values().cloned().collect()
    }

    /// Log index of the last change to the key ring (0 if none): callers
    /// cache what they derive from [`keys`](Self::keys) by this version.
    pub fn keys_version(&self) -> u64 {
        read(&self.state).keys_version
    }

    /// The current policy document and its version (the log index it was
    /// put at), if any was put.
    pub fn policy(&self) -> Option<(u64, String)> {
        read(&self.state)
            .policy
            .as_ref()
            .map(|p| (p.version, p.text.clone()))
    }

    /// The version of the current policy (0 if none): cheap, so callers
    /// can check their cached engine without copying the text.
    pub fn policy_version(&self) -> u64 {
        read(&self.state).policy.as_ref().map_or(0, |p| p.version)
    }

    /// Every revoked `jti` held (for comparing replicas).
    pub fn revoked_jtis(&self) -> std::collections::BTreeSet<String> {
        read(&self.state).jtis.iter().map(|(jti, _)| jti).collect()
    }

    /// How many revocation entries (jtis, subject and client cut-offs) are
    /// held.
    pub fn revocation_count(&self) -> usize {
        read(&self.state).revocation_count()
    }
}
