//! The proposer: batches concurrent writes into single log entries.
//!
//! openraft 0.9 handles one client write at a time on the leader, each as
//! its own log append followed by a flush the core waits for, so N
//! concurrent revocations would cost N fsyncs in series. The proposer sits
//! in front of `client_write`: whatever writes arrive while the previous
//! proposal is being handed to Raft are drained together (up to
//! [`MAX_BATCH`]) and proposed as one [`Op::Batch`] entry, and each caller
//! gets its own answer from that entry's response. At most
//! [`IN_FLIGHT`] entries are between proposal and application at a time:
//! while they commit, new writes queue up and form the next batch (without
//! that bound every write would be handed to Raft alone, and pay its own
//! fsync in series), and two in flight let one append while the other
//! replicates.
//!
//! Only revocations are batched; any other operation is proposed alone, in
//! order, so a batch never reorders writes.

use tokio::sync::{mpsc, oneshot};

use openraft::error::ClientWriteError;

use super::{Command, CommandResponse, NodeId, NodeInfo, Op, TypeConfig};

/// Most writes in one log entry.
pub const MAX_BATCH: usize = 512;
/// Writes waiting to be proposed (bounded: callers wait when it is full).
const QUEUE: usize = 4096;
/// Entries proposed and not yet applied.
pub const IN_FLIGHT: usize = 2;

/// The error a write answers: openraft's, so that callers can see a
/// `ForwardToLeader` with the leader's address.
pub type WriteError = openraft::error::RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResponse, WriteError>>,
}

/// Batching front of `Raft::client_write`. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

fn stopped() -> WriteError {
    openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped)
}

fn batchable(op: &Op) -> bool {
    matches!(
        op,
        Op::RevokeJtis { .. } | Op::RevokeSubject { .. } | Op::RevokeClient { .. }
    )
}

impl Proposer {
    /// Starts the proposer's task; it ends when every handle is dropped
    /// (or Raft stops).
    pub fn start(raft: openraft::Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `cmd` and waits until it is applied (or refused).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(raft: openraft::Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut drained: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for a slot first: writes arriving meanwhile join the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut drained, MAX_BATCH).await == 0 {
            return;
        }
        drop(slot);
        // Consecutive revocations form one entry; anything else goes alone.
        let mut group: Vec<Pending> = Vec::new();
        for p in drained.drain(..) {
            if batchable(&p.cmd.op) {
                group.push(p);
                continue;
            }
            if !group.is_empty() {
                submit(&raft, &slots, std::mem::take(&mut group)).await;
            }
            submit(&raft, &slots, vec![p]).await;
        }
        if !group.is_empty() {
            submit(&raft, &slots, group).await;
        }
    }
}

/// Hands one entry to Raft and spawns the wait for its result, so the next
/// batch can be formed while this one commits.
async fn submit(
    raft: &openraft::Raft<TypeConfig>,
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
    mut group: Vec<Pending>,
) {
    // Held until the entry is applied (or refused).
    let Ok(slot) = slots.clone().acquire_owned().await else {
        for p in group {
            let _ = p.reply.send(Err(stopped()));
        }
        return;
    };
    let (cmd, replies): (Command, Vec<_>) = if group.len() == 1 {
        let p = group.pop().expect("one element");
        (p.cmd, vec![p.reply])
    } else {
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
    };
    let single = replies.len() == 1;
    match raft.client_write_ff(cmd).await {
        Err(fatal) => {
            for r in replies {
                let _ = r.send(Err(openraft::error::RaftError::Fatal(fatal.clone())));
            }
        }
        Ok(pending) => {
            tokio::spawn(async move {
                let _slot = slot;
                let outcome = match pending.await {
                    Ok(Ok(resp)) => Ok(resp.data),
                    Ok(Err(e)) => Err(openraft::error::RaftError::APIError(e)),
                    Err(_) => Err(stopped()),
                };
                match outcome {
                    Ok(resp) if single => {
                        if let Some(r) = replies.into_iter().next() {
                            let _ = r.send(Ok(resp));
                        }
                    }
                    Ok(resp) => {
                        for (i, r) in replies.into_iter().enumerate() {
                            let changed = resp.changed_each.get(i).copied().unwrap_or(0);
                            let _ = r.send(Ok(CommandResponse {
                                revision: resp.revision,
                                changed,
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
    }
}
