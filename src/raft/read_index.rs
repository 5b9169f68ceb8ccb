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
//! read waits and no other round is in flight, and serves every read
//! waiting at that moment. While rounds are in flight, up to `PIPELINE` (4)
//! at once, the next one **gathers** until `GATHER` (8) reads wait or a
//! round ends: a round of two reads costs the leader a message and a
//! wake-up nearly as dear as one of twenty, and a read gathered this way
//! waits at most until the round in flight ends, as it would with one
//! round at a time. Reads that arrive while all slots are taken wait for
//! the next free one. A round always starts after each read it serves
//! arrived, which is what makes the answer valid for that read; waiting
//! longer before starting it only makes it later. Under load one round
//! (one quorum heartbeat, or one message from a follower to the leader)
//! serves dozens of reads.
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
//!
//! **A leader's floor.** openraft restores a node whose saved vote is its
//! own as leader of that term at start-up, with the read index
//! `max(first entry of its term, saved commit)`. The commit index is saved
//! lazily (with the next append), so after a crash it can be below writes
//! this node acknowledged before it went down, and its applied state is
//! replayed only up to it. Every write it acknowledged is in its log,
//! though (appended and flushed before it was replicated). So the first
//! time this process sees itself leading a term it records its last log
//! index as the term's *floor*: its read indexes are never below it, and
//! its lease and its claims of freshness hold only once it has applied it.
//! For a leader just elected the floor is its first entry or a little
//! more, which it commits and applies at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::commits_heard::CommitsHeard;
use super::network::Network;
use super::{NodeId, NodeInfo, TypeConfig};

/// Reads waiting for a round, at most. A full queue refuses at once.
const QUEUE: usize = 16 * 1024;
/// Rounds in flight at once, at most. One at a time, a read arriving
/// during a round waits for it to end and then for the next one (1.5 round
/// trips on average); with several, the next round starts once `GATHER`
/// reads wait, and a busy node's reads wait little more than one round
/// trip. The bound keeps a leader that cannot confirm from piling up
/// rounds.
const PIPELINE: usize = 4;
/// Reads a round gathers before it starts while another round is in
/// flight; it starts with fewer when a round ends, or after
/// [`GATHER_WAIT_MAX`]. Measured on a follower at 64 reads in flight
/// (docs/BENCHMARKS.md, "Gathered read rounds"): linearizable throughput
/// 0.92× LOCAL's against 0.87× without gathering, in one run; 16 and 32
/// were no better.
const GATHER: usize = 8;
/// Longest a round gathers. Under load 8 reads or a round's end come far
/// sooner; this bounds the wait behind rounds sent to a leader that is
/// gone (they end at their deadline, [`ROUND_TIMEOUT`]).
const GATHER_WAIT_MAX: Duration = Duration::from_millis(5);
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
    /// The term this node last led, its floor, and when its last
    /// quorum-confirmed round as leader started.
    leading: Arc<Leading>,
    /// Rounds a leader answered while this node followed (or learned).
    answered: Arc<Answered>,
    stats: Arc<RoundStats>,
    network: Network,
}

/// What this process knows of the last term it led (see the module docs,
/// "A leader's floor").
#[derive(Debug, Default)]
struct Leading(Mutex<Option<Term>>);

#[derive(Debug, Clone, Copy)]
struct Term {
    term: u64,
    /// Its last log index when this process first saw itself leading the
    /// term: every write it acknowledged in the term, before a crash too.
    floor: u64,
    /// When its latest quorum-confirmed round in the term started.
    confirmed: Option<Instant>,
}

impl Leading {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The floor of the term `m` shows this node leading, recorded now if
    /// this is the first sight of it (`None`: `m` shows it not leading).
    fn floor(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> Option<u64> {
        if m.current_leader != Some(m.id) {
            return None;
        }
        let mut t = self.lock();
        match *t {
            Some(t) if t.term == m.current_term => Some(t.floor),
            _ => {
                let floor = m.last_log_index.unwrap_or(0);
                *t = Some(Term {
                    term: m.current_term,
                    floor,
                    confirmed: None,
                });
                Some(floor)
            }
        }
    }

    /// A round of `term` that started at `started` was confirmed.
    fn confirmed(&self, term: u64, started: Instant) {
        let mut t = self.lock();
        if let Some(t) = t.as_mut().filter(|t| t.term == term) {
            t.confirmed = Some(t.confirmed.map_or(started, |at| at.max(started)));
        }
    }

    fn confirmed_at(&self, term: u64) -> Option<Instant> {
        self.lock()
            .and_then(|t| (t.term == term).then_some(t.confirmed).flatten())
    }
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
        let leading: Arc<Leading> = Arc::default();
        let stats: Arc<RoundStats> = Arc::default();
        let answered: Arc<Answered> = Arc::default();
        let (record, counts) = (leading.clone(), stats.clone());
        let heard = answered.clone();
        let handle_network = network.clone();
        let task = tokio::spawn(
            async move {
                // Leader rounds run as tasks here; a follower's rounds live
                // on its read-index link until answered. Both hold a slot.
                let mut rounds = JoinSet::new();
                let pipeline = Pipeline::new(PIPELINE);
                loop {
                    // A new round takes a free slot and a waiting read,
                    // then gathers the reads it serves (`Pipeline::gather`).
                    let slot = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        Some(_) = rounds.join_next(), if !rounds.is_empty() => continue,
                        slot = pipeline.slot() => slot,
                    };
                    let first = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        Some(_) = rounds.join_next(), if !rounds.is_empty() => continue,
                        w = rx.recv() => match w {
                            Some(w) => w,
                            None => break,
                        },
                    };
                    let mut batch = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        batch = pipeline.gather(&mut rx, first) => batch,
                    };
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
                        Ok(Leads::Other(leader, node)) => {
                            // Taken before the request leaves: the answer
                            // covers every write acknowledged before it.
                            let started = Instant::now();
                            let heard = heard.clone();
                            network.read_index_submit(
                                leader,
                                &node,
                                started + ROUND_TIMEOUT,
                                Box::new(move |result: Result<u64, ReadIndexError>| {
                                    if let Ok(index) = &result {
                                        heard.record(*index, started);
                                    }
                                    reply(result);
                                }),
                            )
                        }
                        Ok(Leads::Me) => {
                            let (raft, record) = (raft.clone(), record.clone());
                            rounds.spawn(
                                async move {
                                    // Taken before the round: the lease
                                    // never starts later than the
                                    // heartbeats that confirm it.
                                    let started = Instant::now();
                                    let (term, floor) = {
                                        let m = raft.metrics();
                                        let m = m.borrow();
                                        (m.current_term, record.floor(&m))
                                    };
                                    let result =
                                        tokio::time::timeout(ROUND_TIMEOUT, leader_round(&raft))
                                            .await
                                            .unwrap_or(Err(ReadIndexError::Timeout));
                                    if result.is_ok() {
                                        record.confirmed(term, started);
                                    }
                                    // Never below what this node may have
                                    // acknowledged in its term before a
                                    // crash (module docs).
                                    reply(result.map(|i| i.max(floor.unwrap_or(0))));
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
                leading,
                answered,
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

    /// When the last quorum-confirmed round this node ran as leader of
    /// `term` started (`None`: none in that term).
    pub fn confirmed_at(&self, term: u64) -> Option<Instant> {
        self.leading.confirmed_at(term)
    }

    /// The floor of the term `m` shows this node leading (see the module
    /// docs): until it has applied that index, its applied state may lack
    /// writes it acknowledged before a crash. `None` when `m` shows it not
    /// leading.
    pub fn leader_floor(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> Option<u64> {
        self.leading.floor(m)
    }

    /// When the latest round a leader answered this node (as follower or
    /// learner) started: the last time this node knew of a leader that a
    /// quorum stood behind. A leader's messages alone do not say that: a
    /// leader cut off from the voters keeps sending them to the nodes on
    /// its side.
    pub fn answered_at(&self) -> Option<Instant> {
        *self
            .answered
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Since when this node's applied state (`applied`) is known to hold
    /// every acknowledged write: the start of the latest round a leader
    /// answered with an index it has applied (`None`: no such round).
    pub fn answered_since(&self, applied: u64) -> Option<Instant> {
        self.answered.indexes.current_since(applied)
    }

    /// True while this node may answer a linearizable read from its own
    /// applied state without a round (see the module docs): it leads, has
    /// applied an entry of its own term and its floor, and a round it ran
    /// in this term started less than `lease` ago and was confirmed by a
    /// quorum.
    pub fn lease_holds(&self, raft: &openraft::Raft<TypeConfig>, lease: Duration) -> bool {
        let m = raft.metrics();
        let m = m.borrow();
        let Some(floor) = self.leading.floor(&m) else {
            return false;
        };
        let term = m.current_term;
        if self
            .leading
            .confirmed_at(term)
            .is_none_or(|at| at.elapsed() >= lease)
        {
            return false;
        }
        m.running_state.is_ok()
            && m.last_applied
                .is_some_and(|l| l.leader_id.term == term && l.index >= floor)
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

/// Read indexes leaders answered this node, each with the start of its
/// round: once this node has applied the index, its state held every write
/// acknowledged before that instant.
#[derive(Debug, Default)]
struct Answered {
    indexes: CommitsHeard,
    latest: Mutex<Option<Instant>>,
}

impl Answered {
    fn record(&self, index: u64, started: Instant) {
        self.indexes.record_at(index, started);
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = Some(latest.map_or(started, |l| l.max(started)));
    }
}

/// The rounds in flight, and how the next one gathers its reads.
struct Pipeline {
    slots: Arc<Semaphore>,
    capacity: usize,
    /// Told when a round leaves the pipeline.
    ended: Arc<Notify>,
}

/// A round's place in the pipeline. Freeing it, when the round is answered
/// or dropped unanswered, ends the gathering of the next round.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    ended: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The place first, then the word: a gathering round that starts
        // listening after the word finds the place free (found by review:
        // the other order could leave it waiting for a round that had
        // ended, on an idle node for ever).
        drop(self.permit.take());
        self.ended.notify_waiters();
    }
}

impl Pipeline {
    fn new(rounds: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(rounds)),
            capacity: rounds,
            ended: Arc::default(),
        }
    }

    /// Waits for a free place in the pipeline.
    async fn slot(&self) -> Slot {
        let permit = self.slots.clone().acquire_owned().await;
        Slot {
            permit: Some(permit.expect("the pipeline's semaphore is never closed")),
            ended: self.ended.clone(),
        }
    }

    /// The reads of the round that holds the one slot just taken, `first`
    /// among them: every read waiting now if no other round is in flight,
    /// else those waiting once [`GATHER`] of them do or a round ends.
    async fn gather<T>(&self, rx: &mut mpsc::Receiver<T>, first: T) -> Vec<T> {
        let mut batch = vec![first];
        // Listening before looking, once: a round that ends after this is
        // heard; one that ended before has freed its place already.
        let ended = self.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        // Rounds in flight to a leader that is gone end only at their
        // deadline: gathering stops well before.
        let give_up = tokio::time::sleep(GATHER_WAIT_MAX);
        tokio::pin!(give_up);
        loop {
            while let Ok(w) = rx.try_recv() {
                batch.push(w);
            }
            // Ours is the only slot taken: no other round in flight.
            let alone = self.slots.available_permits() + 1 >= self.capacity;
            if alone || batch.len() >= GATHER {
                return batch;
            }
            tokio::select! {
                () = &mut ended => break,
                () = &mut give_up => break,
                w = rx.recv() => match w {
                    Some(w) => batch.push(w),
                    None => return batch,
                },
            }
        }
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        batch
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

    use futures_util::FutureExt as _;

    #[test]
    fn a_leaders_floor_is_its_last_log_index_when_it_first_saw_itself_leading() {
        let leading = Leading::default();
        let mut m = openraft::RaftMetrics::<NodeId, NodeInfo>::new_initial(1);
        m.current_term = 3;
        m.last_log_index = Some(7);
        assert_eq!(leading.floor(&m), None, "not leading");
        m.current_leader = Some(1);
        assert_eq!(leading.floor(&m), Some(7));
        m.last_log_index = Some(9);
        assert_eq!(leading.floor(&m), Some(7), "kept for the term");
        let at = Instant::now();
        leading.confirmed(3, at);
        leading.confirmed(2, at + Duration::from_secs(1));
        assert_eq!(leading.confirmed_at(3), Some(at));
        m.current_term = 4;
        assert_eq!(leading.floor(&m), Some(9), "a new term, a new floor");
        assert_eq!(leading.confirmed_at(4), None);
        assert_eq!(leading.confirmed_at(3), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_gathers_reads_only_while_another_is_in_flight() {
        let pipeline = Pipeline::new(PIPELINE);
        let (tx, mut rx) = mpsc::channel(64);

        // Alone in the pipeline: every read waiting now, at once.
        let ours = pipeline.slot().await;
        tx.try_send(2).unwrap();
        let batch = pipeline.gather(&mut rx, 1).now_or_never();
        assert_eq!(batch, Some(vec![1, 2]));
        drop(ours);

        // Behind a round in flight: until GATHER reads wait.
        let in_flight = pipeline.slot().await;
        let ours = pipeline.slot().await;
        {
            let gather = pipeline.gather(&mut rx, 0);
            tokio::pin!(gather);
            assert!(gather.as_mut().now_or_never().is_none());
            for i in 1..GATHER {
                tx.try_send(i).unwrap();
            }
            let batch = gather.now_or_never().expect("GATHER reads wait");
            assert_eq!(batch, (0..GATHER).collect::<Vec<_>>());
        }

        // ... or until a round ends, even one that ended unanswered; the
        // end of an earlier round does not cut a later gathering short.
        drop(ours);
        let ours = pipeline.slot().await;
        {
            let gather = pipeline.gather(&mut rx, 0);
            tokio::pin!(gather);
            assert!(gather.as_mut().now_or_never().is_none());
            tx.try_send(1).unwrap();
            assert!(gather.as_mut().now_or_never().is_none());
            drop(in_flight);
            assert_eq!(gather.now_or_never(), Some(vec![0, 1]));
        }
        drop(ours);

        // A round that ended before the gathering began has freed its
        // place: nothing to wait for. (Its place is freed before its end
        // is announced; the other order, found by review, could leave a
        // gathering that began between the two waiting for it. That
        // interleaving needs two threads; the bound below covers it.)
        let in_flight = pipeline.slot().await;
        let ours = pipeline.slot().await;
        drop(in_flight);
        assert_eq!(pipeline.gather(&mut rx, 0).now_or_never(), Some(vec![0]));
        drop(ours);

        // Behind a round that does not end (sent to a leader that is gone),
        // gathering stops after GATHER_WAIT_MAX.
        let _stuck = pipeline.slot().await;
        let _ours = pipeline.slot().await;
        let gather = pipeline.gather(&mut rx, 0);
        tokio::pin!(gather);
        assert!(gather.as_mut().now_or_never().is_none());
        tokio::time::advance(GATHER_WAIT_MAX).await;
        assert_eq!(gather.now_or_never(), Some(vec![0]));
    }

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
