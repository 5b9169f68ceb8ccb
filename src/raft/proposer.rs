//! Batching writes into single log entries.
//!
//! openraft 0.9 handles one client write at a time on the leader, each as
//! its own log append followed by a flush the core waits for, so N
//! concurrent revocations would cost N fsyncs in series. A [`Batcher`] sits
//! in front of a write path: whatever writes arrive while its previous
//! batches are in flight are drained together (up to [`MAX_BATCH`]) and
//! sent as one [`Op::Batch`] command, and each caller gets its own answer
//! from that command's response. At most `in_flight` batches are out at a
//! time: while they commit, new writes queue up and form the next batch.
//!
//! The [`Proposer`] is the batcher in front of `Raft::client_write` on every
//! node; writes forwarded by followers reach the leader's proposer and join
//! its batches (a batch forwarded as one command is flattened into them).
//!
//! Only revocations are batched; any other operation is sent alone.
//!
//! Policy writes also pass one lock per node ([`Batcher::policy_writes`]):
//! a compare-and-set of the policy, run on the leader, holds it from its
//! check of the applied version until its own write is applied, so no
//! other policy write proposed by this leader — its own, or one a follower
//! forwarded — lands in between.

use std::future::Future;
use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard, Semaphore};

use super::{Command, CommandResponse, NodeId, NodeInfo, Op, TypeConfig};

/// Most writes in one command.
pub const MAX_BATCH: usize = 512;
/// Writes waiting to be sent (bounded: callers wait when it is full).
const QUEUE: usize = 4096;
/// Entries proposed to Raft and not yet applied.
pub const IN_FLIGHT: usize = 2;

/// The error a write answers: openraft's, so that callers can see a
/// `ForwardToLeader` with the leader's address.
pub type WriteError = openraft::error::RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

struct Pending<E> {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResponse, E>>,
}

/// Told the number of writes in each command that committed (metrics).
pub type BatchObserver = Arc<dyn Fn(usize) + Send + Sync>;

/// Batches commands for a write path. Cheap to clone.
pub struct Batcher<E> {
    tx: mpsc::Sender<Pending<E>>,
    stopped: fn() -> E,
    policy: Arc<Mutex<()>>,
}

impl<E> Clone for Batcher<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stopped: self.stopped,
            policy: self.policy.clone(),
        }
    }
}

/// Held while a policy write is checked and proposed (see the module docs).
pub struct PolicyWrites {
    _held: OwnedMutexGuard<()>,
}

impl<E> std::fmt::Debug for Batcher<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// Whether `op` writes the policy (a forwarded batch is looked into: no
/// honest node builds one with a policy, but one would bypass the lock).
fn writes_policy(op: &Op) -> bool {
    match op {
        Op::PutPolicy { .. } => true,
        Op::Batch { ops } => ops.iter().any(writes_policy),
        _ => false,
    }
}

fn batchable(op: &Op) -> bool {
    match op {
        Op::RevokeJtis { .. } | Op::RevokeSubject { .. } | Op::RevokeClient { .. } => true,
        // A batch a follower forwarded joins the leader's batch.
        Op::Batch { ops } => ops
            .iter()
            .all(|o| batchable(o) && !matches!(o, Op::Batch { .. })),
        _ => false,
    }
}

impl<E: Clone + Send + 'static> Batcher<E> {
    /// Starts the batcher's task; `send` performs one (possibly batched)
    /// write. The task ends when every handle is dropped. `stopped` is the
    /// error callers get once it has ended.
    pub fn start<F, Fut>(in_flight: usize, stopped: fn() -> E, send: F) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
    {
        Self::start_observed(in_flight, stopped, None, send)
    }

    /// Like [`start`](Self::start); `observe` is told the number of writes
    /// in each command that committed.
    pub fn start_observed<F, Fut>(
        in_flight: usize,
        stopped: fn() -> E,
        observe: Option<BatchObserver>,
        send: F,
    ) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            rx,
            Arc::new(Semaphore::new(in_flight.max(1))),
            Arc::new(send),
            observe,
        ));
        Self {
            tx,
            stopped,
            policy: Arc::default(),
        }
    }

    /// Sends `cmd` (batched with concurrent ones) and waits for its answer.
    /// A policy write waits for [`Batcher::policy_writes`] first.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, E> {
        if writes_policy(&cmd.op) {
            let held = self.policy_writes().await;
            return self.propose_holding(cmd, held).await;
        }
        self.send(cmd).await
    }

    /// The lock every policy write on this node passes: held from a
    /// compare-and-set's check until its write is applied.
    pub async fn policy_writes(&self) -> PolicyWrites {
        PolicyWrites {
            _held: self.policy.clone().lock_owned().await,
        }
    }

    /// Like [`Batcher::propose`], for a policy write whose caller holds the
    /// lock. The lock goes with the write: it is let go once the write is
    /// answered (applied, or refused), even if the caller stops waiting
    /// first (found by review: a caller's timeout or a client's reset let
    /// another compare-and-set check a version the pending write was about
    /// to replace).
    pub async fn propose_holding(
        &self,
        cmd: Command,
        held: PolicyWrites,
    ) -> Result<CommandResponse, E> {
        let this = self.clone();
        let write = tokio::spawn(async move {
            let answer = this.send(cmd).await;
            drop(held);
            answer
        });
        write.await.unwrap_or_else(|_| Err((self.stopped)()))
    }

    async fn send(&self, cmd: Command) -> Result<CommandResponse, E> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| (self.stopped)())?;
        rx.await.map_err(|_| (self.stopped)())?
    }
}

async fn run<E, F, Fut>(
    mut rx: mpsc::Receiver<Pending<E>>,
    slots: Arc<Semaphore>,
    send: Arc<F>,
    observe: Option<BatchObserver>,
) where
    E: Clone + Send + 'static,
    F: Fn(Command) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
{
    let mut drained: Vec<Pending<E>> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for a free slot first: writes arriving meanwhile join the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut drained, MAX_BATCH).await == 0 {
            return;
        }
        drop(slot);
        // Consecutive revocations form one command; anything else goes alone.
        let mut group: Vec<Pending<E>> = Vec::new();
        for p in drained.drain(..) {
            if batchable(&p.cmd.op) {
                group.push(p);
                continue;
            }
            if !group.is_empty() {
                dispatch(&slots, &send, &observe, std::mem::take(&mut group)).await;
            }
            dispatch(&slots, &send, &observe, vec![p]).await;
        }
        if !group.is_empty() {
            dispatch(&slots, &send, &observe, group).await;
        }
    }
}

/// Sends one command in its own task (holding a slot until it is answered)
/// and splits the answer among the callers.
async fn dispatch<E, F, Fut>(
    slots: &Arc<Semaphore>,
    send: &Arc<F>,
    observe: &Option<BatchObserver>,
    mut group: Vec<Pending<E>>,
) where
    E: Clone + Send + 'static,
    F: Fn(Command) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
{
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let (cmd, replies): (Command, Vec<_>) = match group.len() {
        0 => return,
        1 => {
            let Some(p) = group.pop() else { return };
            (p.cmd, vec![(p.reply, None)])
        }
        _ => {
            let at = group.iter().map(|p| p.cmd.at).max().unwrap_or(0);
            let mut ops = Vec::new();
            let mut replies = Vec::with_capacity(group.len());
            for p in group {
                // Each caller's share of the flattened batch: one op, or
                // the ops of a batch it sent itself.
                match p.cmd.op {
                    Op::Batch { ops: inner } => {
                        replies.push((p.reply, Some(inner.len())));
                        ops.extend(inner);
                    }
                    op => {
                        replies.push((p.reply, None));
                        ops.push(op);
                    }
                }
            }
            (
                Command {
                    at,
                    op: Op::Batch { ops },
                },
                replies,
            )
        }
    };
    let single = replies.len() == 1;
    let writes = match &cmd.op {
        Op::Batch { ops } => ops.len(),
        _ => 1,
    };
    let observe = observe.clone();
    let fut = send(cmd);
    tokio::spawn(async move {
        let _slot = slot;
        let result = fut.await;
        if let (Ok(_), Some(observe)) = (&result, &observe) {
            observe(writes);
        }
        match result {
            Ok(resp) if single => {
                if let Some((r, _)) = replies.into_iter().next() {
                    let _ = r.send(Ok(resp));
                }
            }
            Ok(resp) => {
                let mut each = resp.changed_each.into_iter();
                for (r, share) in replies {
                    let answer = match share {
                        None => {
                            let changed = each.next().unwrap_or(0);
                            CommandResponse {
                                revision: resp.revision,
                                changed,
                                changed_each: Vec::new(),
                            }
                        }
                        Some(k) => {
                            let mine: Vec<u64> = each.by_ref().take(k).collect();
                            CommandResponse {
                                revision: resp.revision,
                                changed: mine.iter().sum(),
                                changed_each: mine,
                            }
                        }
                    };
                    let _ = r.send(Ok(answer));
                }
            }
            Err(e) => {
                for (r, _) in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    });
}

/// The batcher in front of `Raft::client_write`.
pub type Proposer = Batcher<WriteError>;

fn stopped() -> WriteError {
    openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped)
}

impl Batcher<WriteError> {
    /// The proposer of `raft`: batches of revocations become one log entry,
    /// with [`IN_FLIGHT`] entries between proposal and application.
    pub fn for_raft(raft: openraft::Raft<TypeConfig>) -> Self {
        Self::for_raft_observed(raft, None)
    }

    /// Like [`for_raft`](Self::for_raft); `observe` is told the number of
    /// writes in each command that committed.
    pub fn for_raft_observed(
        raft: openraft::Raft<TypeConfig>,
        observe: Option<BatchObserver>,
    ) -> Self {
        Batcher::start_observed(IN_FLIGHT, stopped, observe, move |cmd| {
            let raft = raft.clone();
            async move { raft.client_write(cmd).await.map(|r| r.data) }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::raft::RevokedJti;

    fn revoke(j: &str) -> Command {
        Command {
            at: 1,
            op: Op::RevokeJtis {
                jtis: vec![RevokedJti {
                    jti: j.into(),
                    until: 9,
                }],
            },
        }
    }

    /// A fake write path that holds its first call until released, answers
    /// a batch with each operation's index as its `changed`, and counts
    /// calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commands_and_get_their_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let (c2, g2, s2) = (calls.clone(), gate.clone(), started.clone());
        let b: Batcher<String> = Batcher::start(
            1,
            || "stopped".to_string(),
            move |cmd: Command| {
                let (calls, gate, started) = (c2.clone(), g2.clone(), s2.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        started.notify_one();
                        let _ = gate.acquire().await.map(|p| p.forget());
                    }
                    let changed_each = match &cmd.op {
                        Op::Batch { ops } => (0..ops.len() as u64).collect(),
                        _ => Vec::new(),
                    };
                    Ok(CommandResponse {
                        revision: 7,
                        changed: 1,
                        changed_each,
                    })
                }
            },
        );
        let mut tasks = Vec::new();
        // The first write occupies the only slot...
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.propose(revoke("first")).await })
        };
        // ...wait until it is in the write path, then queue 100 more.
        started.notified().await;
        let (queued_tx, mut queued_rx) = mpsc::channel::<()>(100);
        for i in 0..100 {
            let b = b.clone();
            let queued = queued_tx.clone();
            tasks.push(tokio::spawn(async move {
                let fut = b.propose(revoke(&format!("j{i}")));
                let _ = queued.send(()).await;
                fut.await
            }));
        }
        for _ in 0..100 {
            queued_rx.recv().await.unwrap();
        }
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().changed, 1);
        let mut answers = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.revision, 7);
            answers.push(r.changed);
        }
        // Far fewer writes than callers, and every caller a distinct answer
        // from its position in its batch.
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 10, "{n} writes for 101 callers");
        assert!(answers.iter().any(|c| *c > 0));
    }

    fn put_policy() -> Command {
        Command {
            at: 1,
            op: Op::PutPolicy { text: "p".into() },
        }
    }

    /// A batcher whose writes succeed, each once it takes a permit of
    /// `gate`.
    fn answering_when(gate: Arc<Semaphore>) -> Batcher<String> {
        Batcher::start(
            2,
            || "stopped".into(),
            move |_cmd: Command| {
                let gate = gate.clone();
                async move {
                    let _ = gate.acquire().await.map(|p| p.forget());
                    Ok(CommandResponse {
                        revision: 3,
                        changed: 1,
                        changed_each: Vec::new(),
                    })
                }
            },
        )
    }

    #[tokio::test]
    async fn a_policy_write_waits_while_a_compare_and_set_holds_the_lock() {
        use futures_util::FutureExt as _;
        let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let b = answering_when(gate);
        let put = put_policy();
        let held = b.policy_writes().await;
        let waiting = b.propose(put.clone());
        tokio::pin!(waiting);
        assert!(waiting.as_mut().now_or_never().is_none());
        assert!(b.propose(revoke("a")).await.is_ok(), "revocations pass");
        assert!(b.propose_holding(put, held).await.is_ok());
        assert!(waiting.await.is_ok());
    }

    /// Found by review: the lock lived in the caller's future, so a caller
    /// that stopped waiting (a timeout, a client's reset) let it go while
    /// its write was still on its way.
    #[tokio::test]
    async fn a_policy_write_keeps_the_lock_after_its_caller_stops_waiting() {
        use futures_util::FutureExt as _;
        let gate = Arc::new(Semaphore::new(0));
        let b = answering_when(gate.clone());
        let held = b.policy_writes().await;
        let mut first = Box::pin(b.propose_holding(put_policy(), held));
        assert!(first.as_mut().now_or_never().is_none());
        drop(first);
        let next = b.policy_writes();
        tokio::pin!(next);
        assert!(
            next.as_mut().now_or_never().is_none(),
            "the lock is still held by the write on its way"
        );
        gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the lock is let go once the write is answered");
        // A batch with a policy write in it waits for the lock too.
        assert!(writes_policy(&Op::Batch {
            ops: vec![Op::PutPolicy { text: "p".into() }]
        }));
    }

    #[tokio::test]
    async fn errors_reach_every_caller_of_the_batch() {
        let b: Batcher<String> = Batcher::start(
            2,
            || "stopped".into(),
            |_cmd: Command| async { Err::<CommandResponse, String>("no quorum".into()) },
        );
        let (r1, r2) = tokio::join!(b.propose(revoke("a")), b.propose(revoke("b")));
        assert_eq!(r1.unwrap_err(), "no quorum");
        assert_eq!(r2.unwrap_err(), "no quorum");
    }
}
