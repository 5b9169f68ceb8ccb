//! Elections without disruption: a pre-vote before every campaign.
//!
//! openraft 0.9 has no pre-vote. A follower cut off from the cluster times
//! out again and again, raising its term each time; when it returns, the
//! leader sees the higher term in a replication reply and steps down, and
//! the cluster takes no writes until a new election ends (0.5–1 s
//! measured). So nodes run with openraft's own elections switched off
//! (`enable_elect = false`) and the [`Campaigner`] decides instead:
//!
//! 1. a voter that has not heard from a leader for a randomized election
//!    timeout asks every other voter [`PreVoteRequest`]: *would you vote for
//!    me?* — without changing anyone's term;
//! 2. a voter grants it only if it has not heard from a leader for the
//!    maximum election timeout itself (openraft's vote lease) (a leader, only if it has lost its
//!    quorum) and the candidate's log is not behind its own (term, then
//!    index, as in the real vote: [`log_behind`]);
//! 3. with grants from a quorum (in every configuration of a joint
//!    membership) the node starts a real election (`trigger().elect()`),
//!    which openraft runs with its usual rules — unless it has heard a
//!    leader meanwhile ([`elect_unless_led`]: the leader's read lease
//!    counts on every voter that acknowledged it, this one included).
//!
//! A node that cannot reach a quorum therefore never raises its term, and
//! rejoins as a follower of the leader it left.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::network::Network;
use super::{LogId, NodeId, TypeConfig};

/// Reads this node's last log id from its log store (the Raft core keeps
/// its own copy private). Blocking: called on a blocking thread, once per
/// pre-vote asked or answered. An error is a message for the logs.
pub type LastLogId = Arc<dyn Fn() -> Result<Option<LogId>, String> + Send + Sync>;

/// [`LastLogId`] read on a blocking thread; a failed read (or a stopped
/// runtime) is an error.
pub(crate) async fn read_last_log(last_log: &LastLogId) -> Result<Option<LogId>, String> {
    let read = last_log.clone();
    tokio::task::spawn_blocking(move || read())
        .await
        .map_err(|e| format!("last log id task: {e}"))?
}

/// When this node last heard from a leader it accepts (an `AppendEntries`
/// or snapshot chunk that did not carry a stale term). Written by the Raft
/// service, read by the campaigner, the pre-vote decision and health.
#[derive(Debug)]
pub struct LeaderContact {
    last: Mutex<Instant>,
    /// The leader's commit index as heard (readiness and staleness).
    commits: super::commits_heard::CommitsHeard,
    /// Shared while the Raft service hands a leader's message to the core
    /// and records the contact; exclusive while [`elect_unless_led`]
    /// decides to start an election. So an election never starts between
    /// the core acknowledging a leader (perhaps the read round its lease
    /// rests on) and that contact being seen.
    gate: tokio::sync::RwLock<()>,
}

impl Default for LeaderContact {
    /// Starting counts as contact: a node that just started waits an
    /// election timeout for the leader before it campaigns.
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
            commits: Default::default(),
            gate: tokio::sync::RwLock::new(()),
        }
    }
}

impl LeaderContact {
    /// Held while a leader's message goes to the core and its contact is
    /// recorded (see `gate`).
    pub async fn hearing(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Records that the leader was heard now.
    pub fn heard(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = Instant::now();
        }
    }

    /// When the leader was last heard.
    pub fn last(&self) -> Instant {
        self.last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| Instant::now())
    }

    /// How long ago the leader was last heard.
    pub fn quiet_for(&self) -> Duration {
        self.last().elapsed()
    }

    /// Records the commit index a leader's message announced.
    pub fn heard_commit(&self, commit: u64) {
        self.commits.record(commit);
    }

    /// The highest leader commit index heard since this node started.
    pub fn leader_commit(&self) -> Option<u64> {
        self.commits.leader_commit()
    }

    /// When this node's state, with `applied` applied, was last known to
    /// hold everything its leader had committed (see
    /// [`super::commits_heard`]).
    pub fn current_since(&self, applied: u64) -> Option<Instant> {
        self.commits.current_since(applied)
    }
}

/// The election timeouts (openraft's `election_timeout_min/max`).
#[derive(Debug, Clone, Copy)]
pub struct ElectionTimes {
    /// Shortest election timeout.
    pub min: Duration,
    /// Longest election timeout; also openraft's vote lease: a voter that
    /// heard a leader this recently refuses a pre-vote. A node campaigns
    /// after `max` plus a wait drawn between `min` and `max`.
    pub max: Duration,
    /// How often the campaigner looks.
    pub tick: Duration,
}

/// "Would you vote for me?"
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The node that would campaign.
    pub candidate: NodeId,
    /// Its current term (a real campaign would use the next one).
    pub term: u64,
    /// Its last log index (all a node of 2026-12-01 or before sends).
    pub last_log_index: Option<u64>,
    /// Its last log id: the term decides before the index, as in the real
    /// vote. Absent from an older node's request.
    #[serde(default)]
    pub last_log: Option<LogId>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreVoteReply {
    /// Whether the voter would vote.
    pub granted: bool,
    /// Why not, for logs.
    pub reason: String,
}

/// The voter's side: grants only if this node has no live leader and the
/// candidate's log is not behind this node's (`mine`, its last log id).
pub fn decide(
    raft: &openraft::Raft<TypeConfig>,
    contact: &LeaderContact,
    times: ElectionTimes,
    req: &PreVoteRequest,
    mine: Option<LogId>,
) -> PreVoteReply {
    let refuse = |reason: String| PreVoteReply {
        granted: false,
        reason,
    };
    let m = raft.metrics().borrow().clone();
    if m.current_leader == Some(m.id) {
        // A leader grants only once it has not heard from a quorum for an
        // election timeout (it is probably the one cut off).
        let fresh = m
            .millis_since_quorum_ack
            .is_some_and(|ms| Duration::from_millis(ms) < times.min);
        if fresh || m.membership_config.membership().voter_ids().count() <= 1 {
            return refuse(format!("node {} leads with a live quorum", m.id));
        }
    } else if contact.quiet_for() < times.max {
        // Also right after a start (which counts as contact): a voter that
        // restarted must not help elect a new leader while the one it may
        // have acknowledged just before still holds its read lease
        // (`super::read_index`).
        return refuse(format!(
            "node {} heard from a leader (or started) {:?} ago",
            m.id,
            contact.quiet_for()
        ));
    }
    if let Some(behind) = log_behind(req, mine) {
        return refuse(behind);
    }
    PreVoteReply {
        granted: true,
        reason: String::new(),
    }
}

/// Why the candidate's log is behind `mine`, if it is: by the real vote's
/// rule (openraft's `LogId` order: the leader's term, then the index), so
/// a pre-vote is granted exactly when the vote would be. Comparing the
/// index alone both granted a pre-vote the vote then refused (a term raised
/// for nothing) and refused one the vote would have granted: with one of
/// three voters down, a node holding an old term's uncommitted tail could
/// then win every pre-vote and lose every vote, and the node with the newer
/// log never won a pre-vote, so no leader was elected until the third came
/// back. An older candidate sends only its index, compared as before.
pub fn log_behind(req: &PreVoteRequest, mine: Option<LogId>) -> Option<String> {
    let behind = match req.last_log {
        Some(theirs) => Some(theirs) < mine,
        None if req.last_log_index.is_some() => req.last_log_index < mine.map(|id| id.index),
        // An empty log, or an older node's: only an empty one is not behind
        // an empty one.
        None => mine.is_some(),
    };
    behind.then(|| {
        format!(
            "candidate log {:?} (index {:?}) is behind {:?}",
            req.last_log, req.last_log_index, mine
        )
    })
}

/// Counters of the campaigner, for tests and metrics.
#[derive(Debug)]
pub struct CampaignStats {
    /// Pre-vote rounds finished (won or lost); also a watch channel, so a
    /// test can wait for the next one instead of sleeping.
    pre_votes: watch::Sender<u64>,
    /// Real elections started (pre-vote won).
    pub elections: AtomicU64,
}

impl Default for CampaignStats {
    fn default() -> Self {
        Self {
            pre_votes: watch::channel(0).0,
            elections: AtomicU64::new(0),
        }
    }
}

impl CampaignStats {
    /// Pre-vote rounds finished so far.
    pub fn pre_votes(&self) -> u64 {
        *self.pre_votes.borrow()
    }

    /// A receiver of the number of finished pre-vote rounds.
    pub fn watch_pre_votes(&self) -> watch::Receiver<u64> {
        self.pre_votes.subscribe()
    }
}

/// Runs pre-votes and elections for one node (see the module docs).
pub struct Campaigner {
    raft: openraft::Raft<TypeConfig>,
    network: Network,
    contact: Arc<LeaderContact>,
    times: ElectionTimes,
    last_log: LastLogId,
    stats: Arc<CampaignStats>,
}

impl Campaigner {
    /// A campaigner for node `raft`, reaching the other voters through
    /// `network`; its log's last id is read with `last_log`.
    pub fn new(
        raft: openraft::Raft<TypeConfig>,
        network: Network,
        contact: Arc<LeaderContact>,
        times: ElectionTimes,
        last_log: LastLogId,
    ) -> Self {
        Self {
            raft,
            network,
            contact,
            times,
            last_log,
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<CampaignStats> {
        self.stats.clone()
    }

    /// Runs until `stop` turns true.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let id = self.network.self_id();
        tokio::spawn(
            async move {
                let mut since = self.contact.last();
                let mut deadline = since + self.wait();
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(self.times.tick) => {}
                    }
                    let last = self.contact.last();
                    if last > since {
                        since = last;
                        deadline = since + self.wait();
                    }
                    if Instant::now() < deadline {
                        continue;
                    }
                    match self.attempt().await {
                        Attempt::Stop => return,
                        Attempt::Done => {}
                    }
                    since = Instant::now();
                    deadline = since + self.wait();
                }
            }
            .instrument(tracing::info_span!("campaigner", node = id)),
        )
    }

    /// How long after the leader was last heard (or the last attempt) a
    /// node campaigns: openraft's own rule when elections are on — the
    /// leader's lease (`election_timeout_max`, during which voters refuse
    /// anyway) plus an election timeout drawn between min and max — so
    /// that a busy machine's late heartbeats do not start elections.
    fn wait(&self) -> Duration {
        self.times.max + self.draw()
    }

    /// A wait drawn uniformly between the two election timeouts.
    fn draw(&self) -> Duration {
        let span = self.times.max.saturating_sub(self.times.min);
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let extra = if span.is_zero() {
            0
        } else {
            r % (span.as_millis() as u64).max(1)
        };
        self.times.min + Duration::from_millis(extra)
    }

    async fn attempt(&self) -> Attempt {
        let m = self.raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return Attempt::Stop;
        }
        let membership = m.membership_config.membership().clone();
        if m.current_leader == Some(m.id) || !membership.voter_ids().any(|v| v == m.id) {
            return Attempt::Done;
        }
        let configs = membership.get_joint_config().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut granted = BTreeSet::from([m.id]);
        if voters.len() > 1 {
            let last_log = match read_last_log(&self.last_log).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last log id; not campaigning");
                    return Attempt::Done;
                }
            };
            let req = PreVoteRequest {
                candidate: m.id,
                term: m.current_term,
                last_log_index: last_log.map(|id| id.index),
                last_log,
            };
            let asks = voters.iter().filter(|v| **v != m.id).filter_map(|v| {
                let node = membership.get_node(v)?.clone();
                let net = self.network.clone();
                let req = req.clone();
                let timeout = self.times.min;
                let v = *v;
                Some(async move { (v, net.pre_vote(v, &node, &req, timeout).await) })
            });
            for (v, reply) in futures_util::future::join_all(asks).await {
                match reply {
                    Ok(r) if r.granted => {
                        granted.insert(v);
                    }
                    Ok(r) => tracing::debug!(voter = v, reason = %r.reason, "pre-vote refused"),
                    Err(e) => tracing::debug!(voter = v, error = %e, "pre-vote not answered"),
                }
            }
            self.stats.pre_votes.send_modify(|n| *n += 1);
        }
        let quorum = configs
            .iter()
            .all(|c| c.iter().filter(|v| granted.contains(v)).count() * 2 > c.len());
        if !quorum {
            tracing::debug!(granted = ?granted, "pre-vote lost; not campaigning");
            return Attempt::Done;
        }
        match elect_unless_led(&self.raft, &self.contact, self.times.max).await {
            Ok(true) => {
                tracing::info!(term = m.current_term, granted = ?granted, "pre-vote won; starting an election");
                self.stats.elections.fetch_add(1, Ordering::Relaxed);
                Attempt::Done
            }
            Ok(false) => {
                tracing::debug!("a leader was heard during the pre-vote; not campaigning");
                Attempt::Done
            }
            Err(_) => Attempt::Stop,
        }
    }
}

/// Starts a real election (openraft's `trigger().elect()`) unless this
/// node heard a leader within `max`; returns whether it did.
///
/// A pre-vote can take an election timeout, and the leader may be heard
/// meanwhile: this node may even have acknowledged the round a leader's
/// read lease rests on. A node's vote for itself is not subject to
/// openraft's vote lease, so without this check it could be elected, with
/// one voter that had not heard the leader, inside that lease, while the
/// old leader still answered reads from its own state. Checked under the
/// exclusive side of the contact gate, and the election is queued to the
/// core before the gate opens: a leader's message either reached the core
/// and was recorded before the check, or reaches the core after the
/// election (and is refused, its term being lower).
pub async fn elect_unless_led(
    raft: &openraft::Raft<TypeConfig>,
    contact: &LeaderContact,
    max: Duration,
) -> Result<bool, openraft::error::Fatal<NodeId>> {
    let _gate = contact.gate.write().await;
    if contact.quiet_for() < max {
        return Ok(false);
    }
    raft.trigger().elect().await?;
    Ok(true)
}

enum Attempt {
    Done,
    Stop,
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;

    fn req(last_log: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            term: 3,
            last_log_index: last_log.map(|id| id.index),
            last_log,
        }
    }

    #[test]
    fn a_pre_vote_compares_the_term_before_the_index_as_the_vote_does() {
        // The newer term wins over a longer tail of an older one.
        assert!(log_behind(&req(Some(log_id(3, 1, 10))), Some(log_id(2, 2, 12))).is_none());
        assert!(log_behind(&req(Some(log_id(2, 2, 12))), Some(log_id(3, 1, 10))).is_some());
        // Same term: the index decides; equal is not behind.
        assert!(log_behind(&req(Some(log_id(3, 1, 9))), Some(log_id(3, 1, 10))).is_some());
        assert!(log_behind(&req(Some(log_id(3, 1, 10))), Some(log_id(3, 1, 10))).is_none());
        // An empty log is behind any other, and not behind an empty one.
        assert!(log_behind(&req(None), Some(log_id(1, 1, 1))).is_some());
        assert!(log_behind(&req(None), None).is_none());
        assert!(log_behind(&req(Some(log_id(1, 1, 1))), None).is_none());
    }

    #[test]
    fn an_older_nodes_pre_vote_is_decoded_and_compared_by_index() {
        #[derive(Serialize)]
        struct Older {
            candidate: NodeId,
            term: u64,
            last_log_index: Option<u64>,
        }
        let bytes = super::super::codec::encode(&Older {
            candidate: 2,
            term: 3,
            last_log_index: Some(10),
        })
        .unwrap();
        let older: PreVoteRequest = super::super::codec::decode(&bytes).unwrap();
        assert_eq!(older.last_log, None);
        assert!(log_behind(&older, Some(log_id(1, 1, 10))).is_none());
        assert!(log_behind(&older, Some(log_id(1, 1, 11))).is_some());
        // And an older node reads a newer request (unknown fields ignored).
        #[derive(Deserialize)]
        struct OlderReads {
            last_log_index: Option<u64>,
        }
        let newer = super::super::codec::encode(&req(Some(log_id(3, 1, 10)))).unwrap();
        let read: OlderReads = super::super::codec::decode(&newer).unwrap();
        assert_eq!(read.last_log_index, Some(10));
    }
}
