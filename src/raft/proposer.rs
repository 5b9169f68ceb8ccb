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
//! node; followers put another in front of the forward RPC to the leader,
//! so a burst reaching a follower costs one RPC per batch, not per write.
//!
//! Only revocations are batched; any other operation is sent alone.

use std::future::Future;
use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

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

/// Batches commands for a write path. Cheap to clone.
pub struct Batcher<E> {
    tx: mpsc::Sender<Pending<E>>,
    stopped: fn() -> E,
}

impl<E> Clone for Batcher<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stopped: self.stopped,
        }
    }
}

impl<E> std::fmt::Debug for Batcher<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

fn batchable(op: &Op) -> bool {
    matches!(
        op,
        Op::RevokeJtis { .. } | Op::RevokeSubject { .. } | Op::RevokeClient { .. }
    )
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
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            rx,
            Arc::new(Semaphore::new(in_flight.max(1))),
            Arc::new(send),
        ));
        Self { tx, stopped }
    }

    /// Sends `cmd` (batched with concurrent ones) and waits for its answer.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, E> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| (self.stopped)())?;
        rx.await.map_err(|_| (self.stopped)())?
    }
}

async fn run<E, F, Fut>(mut rx: mpsc::Receiver<Pending<E>>, slots: Arc<Semaphore>, send: Arc<F>)
where
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
                dispatch(&slots, &send, std::mem::take(&mut group)).await;
            }
            dispatch(&slots, &send, vec![p]).await;
        }
        if !group.is_empty() {
            dispatch(&slots, &send, group).await;
        }
    }
}

/// Sends one command in its own task (holding a slot until it is answered)
/// and splits the answer among the callers.
async fn dispatch<E, F, Fut>(slots: &Arc<Semaphore>, send: &Arc<F>, mut group: Vec<Pending<E>>)
where
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
            (p.cmd, vec![p.reply])
        }
        _ => {
            let at = group.iter().map(|p| p.cmd.at).max().unwrap_or(0);
            let (ops, replies): (Vec<Op>, Vec<_>) =
                group.into_iter().map(|p| (p.cmd.op, p.reply)).unzip();
            (
                Command {
                    at,
                    op: Op::Batch { ops },
                },
                replies,
            )
        }
    };
    let fut = send(cmd);
    tokio::spawn(async move {
        let _slot = slot;
        match fut.await {
            Ok(resp) if replies.len() == 1 => {
                if let Some(r) = replies.into_iter().next() {
                    let _ = r.send(Ok(resp));
                }
            }
            Ok(resp) => {
                for (i, r) in replies.into_iter().enumerate() {
                    let _ = r.send(Ok(CommandResponse {
                        revision: resp.revision,
                        changed: resp.changed_each.get(i).copied().unwrap_or(0),
                        changed_each: Vec::new(),
                    }));
                }
            }
            Err(e) => {
                for r in replies {
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
        Batcher::start(IN_FLIGHT, stopped, move |cmd| {
            let raft = raft.clone();
            async move { raft.client_write(cmd).await.map(|r| r.data) }
        })
    }
}
