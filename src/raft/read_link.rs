//! Read-index requests from a follower to the leader over one long-lived
//! gRPC stream (`RaftService.ReadIndexStream`).
//!
//! A follower's linearizable reads need one read-index round trip to the
//! leader per batch (see [`super::read_index`]). As a unary call each round
//! paid for a new HTTP/2 stream, its headers both ways, a task on the
//! leader and the per-call layers on both nodes: under load, rounds serve
//! only a handful of reads each, so that cost came back for every few
//! reads. Over a stream a round is one small message each way.
//!
//! # Protocol
//! The follower sends one message per round; the leader answers every
//! message with one reply, **in order**, so replies are matched to rounds
//! first in, first out. Each request is answered exactly as the unary
//! `ReadIndex` would be ([`answer`]): from the leader's lease, or by a
//! round of its own that starts after the request arrived, which is what
//! makes the index valid for the follower's reads waiting on it.
//!
//! The stream is checked once, when it opens: the caller's certificate and
//! data incarnation on the leader (as every Raft call), and the leader's
//! node id and incarnation in the response headers on the follower. Fault
//! injection (tests' partitions) is applied to every round, as it is to
//! every call. A link that fails ends, failing the rounds waiting on it;
//! the next round opens a new one. A link idle for [`IDLE`] closes: the
//! leader it went to may no longer lead.
//!
//! A leader that does not know the method (an older binary during a
//! rolling upgrade) answers `UNIMPLEMENTED`; the follower then uses the
//! unary call for the rest of that link's life.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::pb::raft_service_client::RaftServiceClient;
use super::pb::RaftMessage;
use super::read_index::ReadIndexError;
use super::{codec, NodeId, TypeConfig};

/// A link with no round for this long closes.
const IDLE: Duration = Duration::from_secs(30);
/// Rounds one link (and one stream on the leader) has in flight, at most:
/// the follower's batcher runs a few at a time; more wait for a slot.
pub(super) const IN_FLIGHT: usize = 8;

/// The answer to one round, as the leader encodes it.
pub(super) type Reply = Result<u64, ReadIndexError>;

/// What the leader needs to answer read-index requests.
#[derive(Clone)]
pub(super) struct Answerer {
    pub raft: openraft::Raft<TypeConfig>,
    pub reads: Option<super::ReadIndex>,
    pub read_lease: Option<(Duration, tokio::sync::watch::Receiver<u64>)>,
}

/// Answers one read-index request on this node: refused unless it leads;
/// from its applied index while its lease holds; else from a round of its
/// own batcher (shared with its own reads), started after this call.
pub(super) async fn answer(a: &Answerer) -> Reply {
    let Some(reads) = &a.reads else {
        return Err(ReadIndexError::Stopped);
    };
    let (me, leader) = {
        let m = a.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| (l, n.clone()))
        });
        (m.id, leader)
    };
    match leader {
        Some((l, _)) if l == me => match &a.read_lease {
            Some((lease, applied)) if reads.lease_holds(&a.raft, *lease) => Ok(*applied.borrow()),
            _ => reads.get().await,
        },
        other => Err(ReadIndexError::NotLeader { leader: other }),
    }
}

/// The leader's side of one stream: answers each request in order, with
/// at most [`IN_FLIGHT`] being answered at once (more are not read from
/// the stream until one is done, so a peer cannot queue unbounded work).
/// Returns the stream of replies.
pub(super) fn serve(
    a: Answerer,
    mut inbound: Streaming<RaftMessage>,
) -> ReceiverStream<Result<RaftMessage, Status>> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let a = std::sync::Arc::new(a);
    tokio::spawn(async move {
        let mut answering = FuturesOrdered::new();
        let mut open = true;
        while open || !answering.is_empty() {
            tokio::select! {
                m = inbound.message(), if open && answering.len() < IN_FLIGHT => match m {
                    Ok(Some(m)) => {
                        if let Err(e) = codec::decode::<()>(&m.payload) {
                            let _ = tx
                                .send(Err(Status::invalid_argument(format!(
                                    "malformed read-index request: {e}"
                                ))))
                                .await;
                            return;
                        }
                        let a = a.clone();
                        answering.push_back(async move { answer(&a).await });
                    }
                    // The follower closed its side, or the stream broke:
                    // answer what was asked, then end.
                    Ok(None) | Err(_) => open = false,
                },
                Some(reply) = answering.next(), if !answering.is_empty() => {
                    let msg = codec::encode(&reply)
                        .map(|payload| RaftMessage { payload })
                        .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Why a link could not serve a round.
#[derive(Debug)]
pub(super) enum LinkError {
    /// The leader does not know `ReadIndexStream`: use the unary call.
    Unsupported,
    /// The link failed or closed; the message says why.
    Failed(String),
}

type Pending = oneshot::Sender<Result<Reply, LinkError>>;

/// The follower's end of one stream to one leader. Cheap to clone; the
/// stream closes when every handle is dropped, on an error, or when idle.
#[derive(Clone, Debug)]
pub(super) struct Link {
    tx: mpsc::Sender<Pending>,
}

/// Checks a reply's headers; the error says why they are refused.
pub(super) type HeaderCheck =
    Box<dyn Fn(&tonic::metadata::MetadataMap) -> Result<(), String> + Send>;

/// How to open a link: the client for the leader's address and the
/// checks of its reply headers.
pub(super) struct Opening {
    pub client: RaftServiceClient<Channel>,
    pub target: NodeId,
    pub self_incarnation: u64,
    /// Checks the leader's response headers (node id and incarnation).
    pub check: HeaderCheck,
    pub open_timeout: Duration,
}

impl Link {
    /// Starts a link; it opens the stream in the background, and rounds
    /// asked meanwhile wait for it.
    pub(super) fn open(opening: Opening) -> Self {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        tokio::spawn(run(opening, rx));
        Self { tx }
    }

    /// False once the link ended: a new one is needed.
    pub(super) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// One round over this link. The caller bounds the wait.
    pub(super) async fn round(&self) -> Result<Reply, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| LinkError::Failed("the read-index link closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(LinkError::Failed("the read-index link closed".into())))
    }
}

async fn run(opening: Opening, mut rounds: mpsc::Receiver<Pending>) {
    let Opening {
        mut client,
        target,
        self_incarnation,
        check,
        open_timeout,
    } = opening;
    let (out, out_rx) = mpsc::channel::<RaftMessage>(IN_FLIGHT);
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    request.metadata_mut().insert(
        super::INCARNATION_HEADER,
        tonic::metadata::MetadataValue::from(self_incarnation),
    );
    // No grpc-timeout on the request: it would bound the whole stream.
    let opened = match tokio::time::timeout(open_timeout, client.read_index_stream(request)).await {
        Err(_) => Err(LinkError::Failed(format!(
            "leader {target}: read-index stream not opened within {open_timeout:?}"
        ))),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            Err(LinkError::Unsupported)
        }
        Ok(Err(status)) => Err(LinkError::Failed(format!(
            "leader {target}: {:?}: {}",
            status.code(),
            status.message()
        ))),
        Ok(Ok(response)) => match check(response.metadata()) {
            Ok(()) => Ok(response.into_inner()),
            Err(reason) => Err(LinkError::Failed(reason)),
        },
    };
    let mut inbound = match opened {
        Ok(inbound) => inbound,
        Err(e) => {
            // Rounds already waiting learn why; later ones find the link
            // closed and open another.
            rounds.close();
            let unsupported = matches!(e, LinkError::Unsupported);
            while let Some(p) = rounds.recv().await {
                let _ = p.send(Err(if unsupported {
                    LinkError::Unsupported
                } else {
                    LinkError::Failed(format!("{e:?}"))
                }));
            }
            return;
        }
    };
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    // One timer, pushed back on every round, not one per loop turn.
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let failure = loop {
        tokio::select! {
            p = rounds.recv(), if waiting.len() < IN_FLIGHT => match p {
                None => break None,
                Some(p) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                    let payload = match codec::encode(&()) {
                        Ok(payload) => payload,
                        Err(e) => break Some(format!("cannot encode a request: {e}")),
                    };
                    if out.send(RaftMessage { payload }).await.is_err() {
                        let _ = p.send(Err(LinkError::Failed("the read-index stream closed".into())));
                        break Some("the read-index stream closed".into());
                    }
                    waiting.push_back(p);
                }
            },
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    let reply = codec::decode::<Reply>(&m.payload).map_err(|e| {
                        LinkError::Failed(format!("leader {target}: undecodable reply: {e}"))
                    });
                    match waiting.pop_front() {
                        Some(p) => { let _ = p.send(reply); }
                        None => break Some(format!("leader {target}: a reply to no request")),
                    }
                }
                Ok(None) => break Some(format!("leader {target} ended the read-index stream")),
                Err(status) => break Some(format!("leader {target}: {:?}: {}", status.code(), status.message())),
            },
            () = &mut idle, if waiting.is_empty() => break None,
        }
    };
    rounds.close();
    let why = failure.unwrap_or_else(|| "the read-index link closed".into());
    for p in waiting {
        let _ = p.send(Err(LinkError::Failed(why.clone())));
    }
    while let Ok(p) = rounds.try_recv() {
        let _ = p.send(Err(LinkError::Failed(why.clone())));
    }
}
