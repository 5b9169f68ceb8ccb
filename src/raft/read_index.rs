//! Linearizable reads: the read index, batched.
//!
//! A read is linearizable when it is answered from state that includes
//! every write acknowledged before the read arrived. The classic way
//! (Raft thesis §6.4) is a *read index*: the leader confirms with a quorum
//! that it still leads (so no other leader can have acknowledged a write it
//! does not know of), takes its commit index as the read index, and the
//! reader waits until its own applied index reaches it. A follower asks the
//! leader for the read index and waits for its own state machine.
//!
//! Confirming leadership costs one round of heartbeats to every voter, so
//! rounds are **batched** and **pipelined**: a round starts as soon as a
//! read waits and fewer than `PIPELINE` (4) rounds are in flight, and serves
//! every read waiting at that moment; reads that arrive while all slots
//! are taken wait for the next free one. A round always starts after each
//! read it serves arrived, which is what makes the answer valid for that
//! read. Under load one round (one quorum heartbeat, or one RPC from a
//! follower to the leader) serves dozens of reads, and a read waits about
//! one round trip rather than the rest of the round in flight plus its own.
//! A follower sends its rounds over one long-lived stream to the leader
//! (`super::read_link`), so a round costs a message each way, not a call.
//!
//! **Leader lease.** A round that a quorum confirmed proves that no other
//! leader can be elected for a while: the voters that acknowledged it heard
//! from this leader after the round started, and a voter refuses pre-votes
//! (`super::election::decide`) for `election_timeout_max` after it last heard
//! from a leader — or after it started, so a voter that restarts does not
//! forget. Elections start only after a pre-vote won (openraft's own
//! elections are off). So for [`ReadIndex::lease_holds`]'s `lease` (shorter
//! than the shortest election timeout, for clock-rate drift and scheduling)
//! after a confirmed round *started*, in the same term, the leader's own
//! applied state includes every write acknowledged anywhere: those it
//! acknowledged were applied before their answer, and those of earlier
//! leaders were committed before the first entry of its term, which it must
//! have applied. Reads inside the lease need no round; a paused or cut-off
//! leader's lease runs out on the monotonic clock, whatever its metrics
//! still say.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::network::Network;
use super::{NodeId, NodeInfo, TypeConfig};

/// Reads waiting for a round, at most. A full queue refuses at once.
const QUEUE: usize = 16 * 1024;
/// Rounds in flight at once, at most. One at a time, a read arriving
/// during a round waits for it to end and then for the next one (1.5 round
/// trips on average); with several, the next round starts at once, and a
/// read waits little more than one round trip. The bound keeps a leader
/// that cannot confirm from piling up rounds.
const PIPELINE: usize = 4;
/// Longest one round may take: a leader confirming itself with a quorum, or
/// a follower's request to the leader.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no read index could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReadIndexError {
    /// No leader is known (an election is under way, or no quorum).
    #[error("no leader is known (election under way or no quorum)")]
    NoLeader,
    /// The node asked is not the leader.
    #[error("not the leader; leader: {}", match .leader { Some((id, _)) => id.to_string(), None => "unknown".into() })]
    NotLeader {
        /// The leader as that node knows it.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The leader could not confirm its leadership with a quorum, or could
    /// not be reached.
    #[error("leadership not confirmed: {0}")]
    Unconfirmed(String),
    /// No answer within [`ROUND_TIMEOUT`].
    #[error("read index not confirmed within {ROUND_TIMEOUT:?}")]
    Timeout,
    /// Too many reads are waiting.
    #[error("too many reads waiting for a read index")]
    Overloaded,
    /// The node is stopping or its Raft core stopped.
    #[error("the node is stopping")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<u64, ReadIndexError>>;

/// A handle on this node's read-index batcher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
    /// When the last round this node ran *as leader* started, if it was
    /// confirmed by a quorum, and in which term: proof of contact at that
    /// instant.
    confirmed: Arc<Mutex<Option<(u64, Instant)>>>,
    stats: Arc<RoundStats>,
    network: Network,
}

/// Counts for [`ReadIndex::rounds`].
#[derive(Debug, Default)]
struct RoundStats {
    rounds: AtomicU64,
    reads: AtomicU64,
}

impl ReadIndex {
    /// Starts the batcher of node `raft`, which reaches the leader through
    /// `network`. It ends when `stop` turns true.
    pub fn spawn(
        raft: openraft::Raft<TypeConfig>,
        network: Network,
        mut stop: watch::Receiver<bool>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        let id = network.self_id();
        let confirmed: Arc<Mutex<Option<(u64, Instant)>>> = Arc::default();
        let stats: Arc<RoundStats> = Arc::default();
        let (record, counts) = (confirmed.clone(), stats.clone());
        let handle_network = network.clone();
        let task = tokio::spawn(
            async move {
                // Leader rounds run as tasks here; a follower's rounds live
                // on its read-index link until answered. Both hold a slot.
                let mut rounds = JoinSet::new();
                let slots = Arc::new(Semaphore::new(PIPELINE));
                loop {
                    // A new round starts as soon as a read waits and fewer
                    // than PIPELINE rounds are in flight; it serves every
                    // read waiting at that moment.
                    let slot = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        Some(_) = rounds.join_next(), if !rounds.is_empty() => continue,
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    let first = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        Some(_) = rounds.join_next(), if !rounds.is_empty() => continue,
                        w = rx.recv() => match w {
                            Some(w) => w,
                            None => break,
                        },
                    };
                    let mut batch = vec![first];
                    while let Ok(w) = rx.try_recv() {
                        batch.push(w);
                    }
                    // Readers that gave up are not worth a round.
                    batch.retain(|w| !w.is_closed());
                    if batch.is_empty() {
                        continue;
                    }
                    counts.rounds.fetch_add(1, Ordering::Relaxed);
                    counts
                        .reads
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    let reply = move |result: Result<u64, ReadIndexError>| {
                        tracing::trace!(reads = batch.len(), ?result, "read index round");
                        for w in batch {
                            let _ = w.send(result.clone());
                        }
                        drop(slot);
                    };
                    match who_leads(&raft) {
                        Err(e) => reply(Err(e)),
                        Ok(Leads::Other(leader, node)) => network.read_index_submit(
                            leader,
                            &node,
                            Instant::now() + ROUND_TIMEOUT,
                            Box::new(reply),
                        ),
                        Ok(Leads::Me) => {
                            let (raft, record) = (raft.clone(), record.clone());
                            rounds.spawn(
                                async move {
                                    // Taken before the round: the lease
                                    // never starts later than the
                                    // heartbeats that confirm it.
                                    let started = Instant::now();
                                    let term = raft.metrics().borrow().current_term;
                                    let result =
                                        tokio::time::timeout(ROUND_TIMEOUT, leader_round(&raft))
                                            .await
                                            .unwrap_or(Err(ReadIndexError::Timeout));
                                    if result.is_ok() {
                                        if let Ok(mut c) = record.lock() {
                                            *c = Some(match *c {
                                                Some((t, at)) if t == term => {
                                                    (term, at.max(started))
                                                }
                                                _ => (term, started),
                                            });
                                        }
                                    }
                                    reply(result);
                                }
                                .in_current_span(),
                            );
                        }
                    }
                }
                // Leader rounds in flight end with the batcher; their
                // readers see `Stopped`. A follower's rounds end with
                // their link's answer or deadline.
                rounds.shutdown().await;
            }
            .instrument(tracing::info_span!("read-index", node = id)),
        );
        (
            Self {
                tx,
                confirmed,
                stats,
                network: handle_network,
            },
            task,
        )
    }

    /// Rounds this node has run (as leader: quorum confirmations; as a
    /// follower: calls to the leader), and the reads they served. Reads
    /// inside the leader's lease run none.
    pub fn rounds(&self) -> (u64, u64) {
        (
            self.stats.rounds.load(Ordering::Relaxed),
            self.stats.reads.load(Ordering::Relaxed),
        )
    }

    /// Read-index streams this node opened to a leader (see
    /// `super::read_link`): a follower keeps one open per leader.
    pub fn streams_opened(&self) -> u64 {
        self.network.read_links_opened()
    }

    /// When the last quorum-confirmed round as leader started.
    pub fn confirmed_at(&self) -> Option<Instant> {
        self.confirmed.lock().ok().and_then(|c| c.map(|(_, at)| at))
    }

    /// True while this node may answer a linearizable read from its own
    /// applied state without a round (see the module docs): it leads, has
    /// applied an entry of its own term, and a round it ran in this term
    /// started less than `lease` ago and was confirmed by a quorum.
    pub fn lease_holds(&self, raft: &openraft::Raft<TypeConfig>, lease: Duration) -> bool {
        let Some((term, at)) = self.confirmed.lock().ok().and_then(|c| *c) else {
            return false;
        };
        if at.elapsed() >= lease {
            return false;
        }
        let m = raft.metrics();
        let m = m.borrow();
        m.running_state.is_ok()
            && m.current_leader == Some(m.id)
            && m.current_term == term
            && m.last_applied.is_some_and(|l| l.leader_id.term == term)
    }

    /// The read index of a round that starts after this call: once this
    /// node has applied it, its state includes every write acknowledged
    /// before the call.
    pub async fn get(&self) -> Result<u64, ReadIndexError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(tx).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReadIndexError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ReadIndexError::Stopped,
        })?;
        rx.await.unwrap_or(Err(ReadIndexError::Stopped))
    }
}

/// Who a round asks: this node, as leader, or the leader it knows.
enum Leads {
    Me,
    Other(NodeId, NodeInfo),
}

fn who_leads(raft: &openraft::Raft<TypeConfig>) -> Result<Leads, ReadIndexError> {
    let m = raft.metrics();
    let m = m.borrow();
    if m.running_state.is_err() {
        return Err(ReadIndexError::Stopped);
    }
    match m.current_leader {
        Some(l) if l == m.id => Ok(Leads::Me),
        Some(l) => match m.membership_config.membership().get_node(&l) {
            Some(node) => Ok(Leads::Other(l, node.clone())),
            None => Err(ReadIndexError::NoLeader),
        },
        None => Err(ReadIndexError::NoLeader),
    }
}

/// This node's read index as leader: openraft sends a heartbeat to every
/// voter and answers once a quorum acknowledged this term's leadership.
pub async fn leader_round(raft: &openraft::Raft<TypeConfig>) -> Result<u64, ReadIndexError> {
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ReadIndexError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
            Err(ReadIndexError::Unconfirmed(q.to_string()))
        }
        Err(RaftError::Fatal(_)) => Err(ReadIndexError::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        let e = ReadIndexError::NotLeader {
            leader: Some((
                2,
                NodeInfo {
                    raft_addr: "r".into(),
                    api_addr: "a".into(),
                    incarnation: 7,
                },
            )),
        };
        let r: Result<u64, ReadIndexError> = Err(e.clone());
        let back: Result<u64, ReadIndexError> =
            super::super::codec::decode(&super::super::codec::encode(&r).unwrap()).unwrap();
        assert_eq!(back, Err(e));
        assert!(ReadIndexError::Timeout.to_string().contains("2s"));
    }
}
