//! The follower's read-index client: how this node asks a leader for a
//! read index ([`Network::read_index_submit`]), over a read-index stream
//! ([`crate::raft::read_link`]) kept per leader in the network's
//! `read_links` map, or with unary calls to a leader that does not know the
//! stream.

use std::time::Duration;

use super::{check_reply_metadata, CallError, Method, Network};
use crate::raft::{NodeId, NodeInfo};

/// What a follower's read-index round does with its answer; called once.
pub type ReadIndexDone = Box<dyn FnOnce(Result<u64, crate::raft::ReadIndexError>) + Send>;

/// How this node asks one leader for read indexes.
pub(super) enum ReadLinkSlot {
    /// Over a stream.
    Stream(crate::raft::read_link::Link),
    /// With unary calls, since this instant: the leader did not know the
    /// stream. Tried again after [`UNARY_RETRY`].
    Unary(std::time::Instant),
}

/// How long a follower keeps using unary read-index calls with a leader
/// that did not know the stream (an older binary) before it tries again.
const UNARY_RETRY: Duration = Duration::from_secs(60);

impl Network {
    /// Asks `leader` for a read index (see [`crate::raft::read_index`]): it
    /// confirms its leadership with a quorum and answers the log index a
    /// linearizable read must wait for. Returns at once; `done` gets the
    /// answer (on the link's task, or a task of its own for a unary call)
    /// by `deadline` or shortly after.
    pub fn read_index_submit(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        deadline: std::time::Instant,
        done: ReadIndexDone,
    ) {
        use crate::raft::read_link::{LinkError, Pending};
        use crate::raft::ReadIndexError;
        let self_id = self.inner.self_id;
        if self.blocked(self_id, leader) {
            return done(Err(ReadIndexError::Unconfirmed(format!(
                "leader {leader}: link {self_id} -> {leader} is blocked by fault injection"
            ))));
        }
        let link = match self.read_link(leader, node) {
            Err(e) => return done(Err(e)),
            Ok(None) => return self.read_index_unary_then(leader, node, deadline, done),
            Ok(Some(link)) => link,
        };
        let net = self.clone();
        let node = node.clone();
        let round = Pending {
            deadline,
            done: Box::new(move |answer| {
                match answer {
                Ok(_) if net.blocked(leader, self_id) => done(Err(ReadIndexError::Unconfirmed(
                    format!("leader {leader}: reply lost: link {leader} -> {self_id} is blocked by fault injection"),
                ))),
                Ok(reply) => done(reply),
                Err(LinkError::TimedOut) => done(Err(ReadIndexError::Timeout)),
                Err(LinkError::Failed(reason)) => done(Err(ReadIndexError::Unconfirmed(reason))),
                Err(LinkError::Unsupported) => {
                    net.inner
                        .read_links
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(
                            leader,
                            (node.raft_addr.clone(), ReadLinkSlot::Unary(std::time::Instant::now())),
                        );
                    net.read_index_unary_then(leader, &node, deadline, done);
                }
            }
            }),
        };
        if let Err(round) = link.submit(round) {
            (round.done)(Err(LinkError::Failed(format!(
                "leader {leader}: the read-index link closed"
            ))));
        }
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.inner
            .faults
            .as_deref()
            .is_some_and(|f| f.is_blocked(from, to))
    }

    /// The open read-index link to `leader`, opened if there is none; or
    /// `None` while unary calls are to be used with it.
    fn read_link(
        &self,
        leader: NodeId,
        node: &NodeInfo,
    ) -> Result<Option<crate::raft::read_link::Link>, crate::raft::ReadIndexError> {
        let mut links = self
            .inner
            .read_links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match links.get(&leader) {
            Some((addr, ReadLinkSlot::Stream(link)))
                if *addr == node.raft_addr && link.is_open() =>
            {
                return Ok(Some(link.clone()))
            }
            Some((addr, ReadLinkSlot::Unary(since)))
                if *addr == node.raft_addr && since.elapsed() < UNARY_RETRY =>
            {
                return Ok(None)
            }
            _ => {}
        }
        let client = self.client(leader, &node.raft_addr).map_err(|reason| {
            crate::raft::ReadIndexError::Unconfirmed(format!("leader {leader}: {reason}"))
        })?;
        let expected_incarnation = node.incarnation;
        let link = crate::raft::read_link::Link::open(crate::raft::read_link::Opening {
            client,
            target: leader,
            self_incarnation: self.inner.self_incarnation,
            check: Box::new(move |meta| check_reply_metadata(meta, leader, expected_incarnation)),
            open_timeout: crate::raft::read_index::ROUND_TIMEOUT,
        });
        links.insert(
            leader,
            (node.raft_addr.clone(), ReadLinkSlot::Stream(link.clone())),
        );
        self.inner
            .read_links_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(link))
    }

    /// Read-index streams this node opened to a leader: one per leader it
    /// read through, plus one per failure or idle close.
    pub fn read_links_opened(&self) -> u64 {
        self.inner
            .read_links_opened
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A read-index round as one unary call on a task of its own, for a
    /// leader that does not know the stream.
    fn read_index_unary_then(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        deadline: std::time::Instant,
        done: ReadIndexDone,
    ) {
        use crate::raft::ReadIndexError;
        let (net, node) = (self.clone(), node.clone());
        tokio::spawn(async move {
            let timeout = deadline.saturating_duration_since(std::time::Instant::now());
            let reply: Result<Result<u64, ReadIndexError>, _> = net
                .call(leader, &node, Method::ReadIndex, &(), timeout)
                .await;
            done(match reply {
                Ok(reply) => reply,
                Err(CallError::Timeout(_)) => Err(ReadIndexError::Timeout),
                Err(CallError::Unreachable(reason) | CallError::Network(reason)) => Err(
                    ReadIndexError::Unconfirmed(format!("leader {leader}: {reason}")),
                ),
                Err(CallError::Status(status)) => Err(ReadIndexError::Unconfirmed(format!(
                    "leader {leader}: {:?}: {}",
                    status.code(),
                    status.message()
                ))),
            });
        });
    }
}
