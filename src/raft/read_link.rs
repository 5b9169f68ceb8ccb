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
//! the next round opens a new one. A round not answered by its deadline
//! fails the link the same way (replies come in order, so every later
//! round is stuck behind it). A link idle for [`IDLE`] closes: the leader
//! it went to may no longer lead.
//!
//! The link's task hands each reply straight to the round's completion
//! (the batcher's readers), without a task per round in between: under
//! load a follower runs a thousand rounds a second, and every hand-off
//! between tasks is a wake-up on a machine the reads themselves need.
//!
//! A leader that does not know the method (an older binary during a
//! rolling upgrade) answers `UNIMPLEMENTED`; the follower then uses the
//! unary call for the rest of that link's life.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::mpsc;
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
    /// Turns true when the node stops: served links end then, instead of
    /// holding the server's graceful shutdown until the follower's side
    /// goes idle.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
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
    let mut stop = a.stop.clone();
    let a = std::sync::Arc::new(a);
    tokio::spawn(async move {
        let mut answering = FuturesOrdered::new();
        let mut open = true;
        let stopping = async move {
            match &mut stop {
                Some(stop) => {
                    let _ = stop.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopping);
        while open || !answering.is_empty() {
            tokio::select! {
                () = &mut stopping => {
                    // The follower's rounds in flight fail over; its link
                    // reconnects to whoever leads next.
                    let _ = tx.send(Err(Status::unavailable("node stopping"))).await;
                    return;
                }
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
#[derive(Debug, Clone)]
pub(super) enum LinkError {
    /// The leader does not know `ReadIndexStream`: use the unary call.
    Unsupported,
    /// The round was not answered by its deadline.
    TimedOut,
    /// The link failed or closed; the message says why.
    Failed(String),
}

/// What a round does with its outcome; called once, on the link's task.
pub(super) type Done = Box<dyn FnOnce(Result<Reply, LinkError>) + Send>;

/// One round handed to a link: answered by `deadline` or failed.
pub(super) struct Pending {
    pub deadline: Instant,
    pub done: Done,
}

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

    /// Hands one round to this link without waiting; its `done` is called
    /// with the answer, or with why there is none. Gives the round back
    /// when the link has ended or has [`IN_FLIGHT`] rounds queued.
    pub(super) fn submit(&self, round: Pending) -> Result<(), Pending> {
        self.tx.try_send(round).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        })
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
                (p.done)(Err(if unsupported {
                    LinkError::Unsupported
                } else {
                    LinkError::Failed(format!("{e:?}"))
                }));
            }
            return;
        }
    };
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    // One timer: the oldest unanswered round's deadline while rounds are
    // out, else the idle bound. Re-armed only when that changes.
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let failure = loop {
        tokio::select! {
            p = rounds.recv(), if waiting.len() < IN_FLIGHT => match p {
                None => break None,
                Some(p) => {
                    let payload = match codec::encode(&()) {
                        Ok(payload) => payload,
                        Err(e) => {
                            waiting.push_back(p);
                            break Some(LinkError::Failed(format!("cannot encode a request: {e}")));
                        }
                    };
                    if waiting.is_empty() {
                        idle.as_mut().reset(p.deadline.into());
                    }
                    waiting.push_back(p);
                    if out.send(RaftMessage { payload }).await.is_err() {
                        break Some(LinkError::Failed("the read-index stream closed".into()));
                    }
                }
            },
            m = inbound.message() => match m {
                Ok(Some(m)) => {
                    let reply = codec::decode::<Reply>(&m.payload).map_err(|e| {
                        LinkError::Failed(format!("leader {target}: undecodable reply: {e}"))
                    });
                    let Some(p) = waiting.pop_front() else {
                        break Some(LinkError::Failed(format!("leader {target}: a reply to no request")));
                    };
                    (p.done)(reply);
                    idle.as_mut().reset(match waiting.front() {
                        Some(next) => next.deadline.into(),
                        None => tokio::time::Instant::now() + IDLE,
                    });
                }
                Ok(None) => break Some(LinkError::Failed(format!("leader {target} ended the read-index stream"))),
                Err(status) => break Some(LinkError::Failed(format!("leader {target}: {:?}: {}", status.code(), status.message()))),
            },
            () = &mut idle => {
                if waiting.is_empty() {
                    break None;
                }
                // Replies come in order: everything behind the late one
                // is stuck too.
                break Some(LinkError::TimedOut);
            }
        }
    };
    rounds.close();
    let why = failure.unwrap_or_else(|| LinkError::Failed("the read-index link closed".into()));
    for p in waiting {
        (p.done)(Err(why.clone()));
    }
    while let Ok(p) = rounds.try_recv() {
        (p.done)(Err(why.clone()));
    }
}

#[cfg(test)]
mod tests {
    //! The link against a fake leader (plain HTTP/2 on 127.0.0.1:0): what
    //! the follower does with each kind of answer, and with none.
    use super::*;
    use crate::raft::pb::raft_service_server::{RaftService, RaftServiceServer};
    use crate::raft::pb::{HelloReply, HelloRequest};
    use tokio::sync::oneshot;
    use tonic::{Request, Response};

    /// How the fake leader treats `ReadIndexStream`.
    #[derive(Clone, Copy)]
    enum Fake {
        /// An older binary: the method does not exist.
        Unimplemented,
        /// Answers request k (from 1) with `Ok(k)`.
        Counts,
        /// Takes the stream and never answers.
        Silent,
    }

    #[tonic::async_trait]
    impl RaftService for Fake {
        async fn append_entries(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn install_snapshot(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn forward(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn read_index(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn pre_vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ReadIndexStreamStream = ReceiverStream<Result<RaftMessage, Status>>;
        async fn read_index_stream(
            &self,
            request: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Self::ReadIndexStreamStream>, Status> {
            let (tx, rx) = mpsc::channel(IN_FLIGHT);
            let mut inbound = request.into_inner();
            let kind = *self;
            match kind {
                Fake::Unimplemented => return Err(Status::unimplemented("no such method")),
                Fake::Counts | Fake::Silent => {}
            }
            tokio::spawn(async move {
                let mut k = 0u64;
                while let Ok(Some(_)) = inbound.message().await {
                    k += 1;
                    if let Fake::Counts = kind {
                        let payload = codec::encode(&Reply::Ok(k)).expect("encodes");
                        if tx.send(Ok(RaftMessage { payload })).await.is_err() {
                            return;
                        }
                    }
                }
                drop(tx);
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    async fn link_to(fake: Fake) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_lazy();
        Link::open(Opening {
            client: RaftServiceClient::new(channel),
            target: 1,
            self_incarnation: 7,
            check: Box::new(|_| Ok(())),
            open_timeout: Duration::from_secs(10),
        })
    }

    /// Submits one round due by `deadline`; the receiver gets its outcome.
    fn submit(link: &Link, deadline: Instant) -> oneshot::Receiver<Result<Reply, LinkError>> {
        let (tx, rx) = oneshot::channel();
        let round = Pending {
            deadline,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        assert!(link.submit(round).is_ok(), "the link takes the round");
        rx
    }

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn replies_reach_their_rounds_in_order() {
        let link = link_to(Fake::Counts).await;
        let far = Instant::now() + BOUND;
        let rounds: Vec<_> = (0..5).map(|_| submit(&link, far)).collect();
        for (k, r) in rounds.into_iter().enumerate() {
            let got = tokio::time::timeout(BOUND, r)
                .await
                .expect("answered")
                .expect("done called");
            assert!(
                matches!(got, Ok(Ok(n)) if n == k as u64 + 1),
                "round {k}: {got:?}"
            );
        }
        assert!(link.is_open());
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_says_unsupported_to_every_waiting_round() {
        let link = link_to(Fake::Unimplemented).await;
        let far = Instant::now() + BOUND;
        let (a, b) = (submit(&link, far), submit(&link, far));
        for r in [a, b] {
            let got = tokio::time::timeout(BOUND, r)
                .await
                .expect("answered")
                .expect("done called");
            assert!(matches!(got, Err(LinkError::Unsupported)), "{got:?}");
        }
    }

    #[tokio::test]
    async fn a_round_the_leader_never_answers_fails_at_its_deadline_and_ends_the_link() {
        let link = link_to(Fake::Silent).await;
        let first = submit(&link, Instant::now() + Duration::from_millis(200));
        let second = submit(&link, Instant::now() + BOUND);
        for r in [first, second] {
            let got = tokio::time::timeout(BOUND, r)
                .await
                .expect("answered")
                .expect("done called");
            assert!(matches!(got, Err(LinkError::TimedOut)), "{got:?}");
        }
        // A stuck stream is not reused: the link ended before it failed
        // its rounds, so the next round opens a new one.
        assert!(!link.is_open());
    }
}
