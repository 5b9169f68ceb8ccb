//! `RevocationService.WatchRevocations`: every node streams what it has
//! applied. A subscriber starts from a replay of the retained window or from
//! a snapshot, then follows the live feed; heartbeats carry the node's
//! applied revision and whether it knows a leader.
//!
//! Each subscriber has a bounded buffer: the live feed keeps
//! [`WatchSettings::live_buffer`] events for it, and its HTTP/2 stream
//! holds at most what tonic's encoder gathers at once (32 KiB) and hyper's
//! per-stream send buffer (400 KiB) beyond its flow-control window (the
//! response body reads the feed itself, only when the stream has room). Its replay is read from the node's window a
//! message at a time as it is sent, up to the revision the node had when
//! it subscribed, never copied ahead ([`crate::store::WatchStart`]). One that
//! cannot keep up is ended with `ABORTED` and the revision to resume from
//! (message and `x-tessera-resume-from` metadata); the feed never waits for
//! it, so the others are not slowed. A snapshot it is being sent (a copy
//! of the whole revocation set, shared with the subscribers that start
//! meanwhile) is held for it for at most
//! [`WatchSettings::snapshot_deadline`], read or not.
//!
//! Coalescing: a subscriber that sets `WatchRequest.coalesce` gets, each
//! time its pump wakes, every event the live feed holds for it (up to
//! [`BATCH_EVENTS`] / [`BATCH_REVOCATIONS`]) in one `revoked_batch`
//! message, and its replay in such batches. A subscriber that keeps up
//! still gets one event per message; one that is behind (a replay, the
//! events of one Raft batch, a node busy fanning out) pays the per-message
//! cost — a wake-up, an HTTP/2 DATA frame, a TLS record — once per batch.
//! Subscribers that do not opt in get one `revoked` message per event, as
//! clients built before the field existed expect.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use super::watch_wire::Frame;
use super::{ApiError, AuditEvent, Shared};
use crate::pb::{self, watch_event::Kind};
use crate::store::{FeedEvent, FeedItem, Revocation, RevocationEvent, WatchStart};

/// Metadata key naming the revision a cut-off subscriber resumes from.
pub use tessera_proto::RESUME_METADATA;

/// Revocations per snapshot message.
const SNAPSHOT_CHUNK: usize = 1000;
/// Most events in one `revoked_batch` message.
pub const BATCH_EVENTS: usize = 256;
/// Most revocations in one `revoked_batch` message (a larger single event
/// still goes alone), like a snapshot chunk: a message stays far below
/// any client's decoding limit.
pub const BATCH_REVOCATIONS: usize = SNAPSHOT_CHUNK;

/// Limits of the watch service.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Most concurrent subscribers on this node.
    pub max_subscribers: usize,
    /// Most concurrent subscribers of one caller identity on this node,
    /// so that one caller cannot take every slot.
    pub max_per_identity: usize,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Events a subscriber may fall behind the live feed before it is cut
    /// off with a resumable status.
    pub live_buffer: usize,
    /// Longest a subscriber may take to receive its starting snapshot.
    /// Past it the node lets go of the copy held for that subscriber, even
    /// while its stream is stalled (a reader that stopped reading is not
    /// polled), and ends the stream with `ABORTED` when it reads again: a
    /// caller that never reads must not pin a copy of the whole revocation
    /// set (~90 MB at a million: ~56 B per entry plus its id).
    pub snapshot_deadline: Duration,
    /// Encode each event once per node and share the bytes with every
    /// stream (see `watch_wire`). Off only for same-binary A/B
    /// measurements (`TESSERA_WATCH_SHARED_ENCODING=0`, docs/BENCHMARKS.md).
    pub shared_encoding: bool,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            max_subscribers: 10_000,
            max_per_identity: 1_000,
            heartbeat: Duration::from_secs(1),
            live_buffer: crate::store::LIVE_BUFFER,
            snapshot_deadline: Duration::from_secs(300),
            shared_encoding: true,
        }
    }
}

/// The `RevocationService` implementation.
pub struct WatchApi {
    shared: Arc<Shared>,
    /// Shared with the other long-lived streams (health `Watch`,
    /// reflection): see [`super::stream_limit`].
    limits: Arc<super::stream_limit::StreamLimits>,
    settings: WatchSettings,
    stop: watch::Receiver<bool>,
}

impl WatchApi {
    pub(super) fn new(
        shared: Arc<Shared>,
        settings: WatchSettings,
        limits: Arc<super::stream_limit::StreamLimits>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            limits,
            settings,
            stop,
        }
    }
}

/// A `Status` that tells the subscriber where to resume.
pub fn resumable(code: tonic::Code, why: &str, resume_from: u64) -> Status {
    let mut s = Status::new(code, format!("{why}; resume from revision {resume_from}"));
    s.metadata_mut().insert(RESUME_METADATA, resume_from.into());
    s
}

fn to_pb(r: &Revocation) -> pb::Revocation {
    use pb::revocation::Target;
    match r {
        Revocation::Jti { jti, until } => pb::Revocation {
            target: Some(Target::Jti(jti.clone())),
            cutoff: 0,
            until: *until,
            cutoff_revision: 0,
        },
        Revocation::Subject {
            subject,
            cutoff,
            until,
            revision,
        } => pb::Revocation {
            target: Some(Target::Subject(subject.clone())),
            cutoff: *cutoff,
            until: *until,
            cutoff_revision: *revision,
        },
        Revocation::Client {
            client,
            cutoff,
            until,
            revision,
        } => pb::Revocation {
            target: Some(Target::Client(client.clone())),
            cutoff: *cutoff,
            until: *until,
            cutoff_revision: *revision,
        },
    }
}

/// One event as a `revoked` message.
pub(super) fn event_msg(e: &RevocationEvent) -> pb::WatchEvent {
    pb::WatchEvent {
        revision: e.revision,
        kind: Some(Kind::Revoked(pb::Revocations {
            revocations: e.revocations.iter().map(to_pb).collect(),
        })),
    }
}

/// Consecutive events as one `revoked_batch` message.
pub(super) fn batch_msg(events: &[Arc<FeedEvent>]) -> pb::WatchEvent {
    pb::WatchEvent {
        revision: events.last().map_or(0, |e| e.revision),
        kind: Some(Kind::RevokedBatch(pb::RevokedBatch {
            events: events
                .iter()
                .map(|e| pb::RevokedEvent {
                    revision: e.revision,
                    revocations: e.revocations.iter().map(to_pb).collect(),
                })
                .collect(),
        })),
    }
}

/// Events gathered for one `revoked_batch` message, within its bounds.
#[derive(Default)]
struct Batch {
    events: Vec<Arc<FeedEvent>>,
    revocations: usize,
}

impl Batch {
    /// Adds `e` if it fits (the first event always does); gives it back
    /// otherwise.
    fn offer(&mut self, e: Arc<FeedEvent>) -> Result<(), Arc<FeedEvent>> {
        let n = e.revocations.len();
        if !self.events.is_empty()
            && (self.events.len() >= BATCH_EVENTS || self.revocations + n > BATCH_REVOCATIONS)
        {
            return Err(e);
        }
        self.revocations += n;
        self.events.push(e);
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.events.len() >= BATCH_EVENTS || self.revocations >= BATCH_REVOCATIONS
    }
}

/// A subscriber's stream of messages.
pub(super) type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<Frame, Status>> + Send>>;

impl WatchApi {
    /// `WatchRevocations` (served by [`super::watch_wire::WatchServer`]).
    pub(super) async fn watch_revocations(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = crate::tls::caller_identity(&req)?;
        // Decided on the cluster's current policy, not on one this node
        // has not caught up with.
        self.shared.read_barrier().await?;
        // Watching is reading revocations: the introspect permission.
        let refused = AuditEvent::new(self.shared.clock.now(), "watch", "deny", &caller.id);
        let policy = self.shared.policy_for(&refused).await?;
        let decision = policy.authorize(&crate::policy::Request::introspect(caller.id.clone()));
        let mut ev = AuditEvent::new(
            self.shared.clock.now(),
            "watch",
            if decision.allowed { "allow" } else { "deny" },
            &caller.id,
        );
        ev.policy_ids = decision.policy_ids;
        self.shared.record(ev).await;
        if !decision.allowed {
            return Err(ApiError::PermissionDenied(
                "policy (introspect): not allowed to watch".into(),
            )
            .into());
        }
        // Never an empty or frozen snapshot presented as current.
        self.shared.ensure_ready()?;
        let slot = self.limits.acquire(&caller.id)?;
        let req = req.into_inner();
        let (from, coalesce) = (req.from_revision, req.coalesce);
        tracing::debug!(caller = %caller.id, from, coalesce, "watcher starts");
        let watch = self.shared.state.watch(from);
        let start = match watch.start {
            WatchStart::Replay => Start::Replay,
            WatchStart::Snapshot {
                revision,
                revocations,
            } => Start::Snapshot {
                revision,
                revocations: HeldSnapshot::new(revocations, self.settings.snapshot_deadline),
                sent: 0,
            },
        };
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pump = Pump {
            shared: self.shared.clone(),
            coalesce,
            shared_encoding: self.settings.shared_encoding,
            stop: self.stop.clone(),
            live: watch.live,
            start,
            replay_until: watch.replay_until,
            last: from,
            tick,
            ready_before: true,
            held: None,
            done: false,
            caller: caller.id,
            policy_version: policy.version(),
            _slot: slot,
        };
        // The response body itself runs the pump: an event goes from the
        // feed to the HTTP/2 stream in the task that writes the stream,
        // with no task and queue of its own in between (one wake-up per
        // subscriber and event instead of two, and no copy queued twice).
        let stream = futures_util::stream::unfold(pump, |mut p| async move {
            let m = p.next().await?;
            Some((m, p))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Completes once the node is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Where a subscriber's start (before the live feed) stands.
enum Start {
    /// Replaying the events after the cursor from the node's window, read
    /// one message's worth at a time as the subscriber takes them (the
    /// stream holds none of them meanwhile; one whose events have left the
    /// window by then must resume).
    Replay,
    /// A snapshot, of which `sent` revocations went out so far; the end
    /// marker follows the last chunk, then the replay from its revision.
    Snapshot {
        revision: u64,
        revocations: HeldSnapshot,
        sent: usize,
    },
    /// Done: live events.
    Live,
}

/// The snapshot copy one subscriber is being sent, until its deadline
/// ([`WatchSettings::snapshot_deadline`]). A timer task takes the copy away
/// at the deadline: the pump cannot, since a subscriber that stopped
/// reading is not polled. Dropping the hold (the snapshot was sent, or the
/// stream ended) stops the timer.
struct HeldSnapshot {
    copy: Arc<Mutex<Option<Arc<Vec<Revocation>>>>>,
    timer: tokio::task::AbortHandle,
}

impl HeldSnapshot {
    fn new(revocations: Arc<Vec<Revocation>>, deadline: Duration) -> Self {
        let copy = Arc::new(Mutex::new(Some(revocations)));
        let held = Arc::downgrade(&copy);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if let Some(held) = held.upgrade() {
                let taken = held.lock().unwrap_or_else(|p| p.into_inner()).take();
                if taken.is_some() {
                    tracing::info!(
                        ?deadline,
                        "watcher did not take its snapshot in time; its copy is released"
                    );
                }
            }
        })
        .abort_handle();
        Self { copy, timer }
    }

    /// The copy, unless the deadline took it.
    fn get(&self) -> Option<Arc<Vec<Revocation>>> {
        self.copy.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HeldSnapshot {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

/// Feeds one subscriber: each call of [`Pump::next`] gives its next
/// message. The stream ends after a terminal status: the subscriber fell
/// behind, the node's state was replaced, the node is not ready or stops.
/// It is polled only while the subscriber's HTTP/2 window has room, so a
/// subscriber that does not read falls behind the live feed and is cut off.
struct Pump {
    shared: Arc<Shared>,
    /// The subscriber accepts `revoked_batch` messages.
    coalesce: bool,
    /// Events go out as their shared encodings ([`Frame::Event`],
    /// [`Frame::Batch`]), not as messages built for this stream.
    shared_encoding: bool,
    stop: watch::Receiver<bool>,
    live: broadcast::Receiver<FeedItem>,
    start: Start,
    /// Where the start's replay ends and `live` takes over.
    replay_until: u64,
    /// The last revision this subscriber has: it resumes from here.
    last: u64,
    tick: tokio::time::Interval,
    ready_before: bool,
    /// A feed item taken while gathering a batch that did not go in it.
    held: Option<Result<FeedItem, broadcast::error::RecvError>>,
    /// A terminal status went out: the stream ends.
    done: bool,
    /// The subscriber, and the policy version it was last allowed by: a
    /// new policy is asked again before anything more is sent.
    caller: String,
    policy_version: u64,
    /// The node-wide and the per-identity subscriber slots, given back
    /// when the subscriber ends.
    _slot: super::stream_limit::StreamSlot,
}

impl Pump {
    /// Consecutive events as one message: a batch for a coalescing
    /// subscriber (the caller keeps them within the bounds), else a single
    /// event (the caller gives one).
    fn events_msg(&mut self, mut events: Vec<Arc<FeedEvent>>) -> Option<Frame> {
        let last = events.last()?.revision;
        let n = events.len() as u64;
        let m = match (self.coalesce, self.shared_encoding) {
            (true, true) => Frame::Batch(events),
            (true, false) => Frame::Msg(batch_msg(&events)),
            (false, true) => Frame::Event(events.swap_remove(0)),
            (false, false) => Frame::Msg(event_msg(events.first()?)),
        };
        self.shared.metrics.watch_events_sent(n);
        self.last = last;
        Some(m)
    }

    /// One event, for a subscriber that does not coalesce.
    fn event_frame(&mut self, e: Arc<FeedEvent>) -> Frame {
        self.shared.metrics.watch_events_sent(1);
        self.last = e.revision;
        if self.shared_encoding {
            Frame::Event(e)
        } else {
            Frame::Msg(event_msg(&e))
        }
    }

    /// The next message of the start, if any is left; a terminal status
    /// when the snapshot's deadline passed.
    fn next_start(&mut self) -> Option<Result<Frame, Status>> {
        loop {
            match &mut self.start {
                Start::Replay => {
                    let (events, revocations) = if self.coalesce {
                        (BATCH_EVENTS, BATCH_REVOCATIONS)
                    } else {
                        (1, usize::MAX)
                    };
                    match self.shared.state.watch_after(
                        self.last,
                        self.replay_until,
                        events,
                        revocations,
                    ) {
                        Ok(g) if g.is_empty() => self.start = Start::Live,
                        Ok(g) => return self.events_msg(g).map(Ok),
                        Err(left) => {
                            self.start = Start::Live;
                            tracing::info!(
                                last = self.last,
                                window_start = left.window_start,
                                "watcher replayed too slowly: its events left the window; cut off"
                            );
                            self.shared.metrics.watch_cut("slow");
                            return Some(self.end(
                                tonic::Code::Aborted,
                                "subscriber too slow to keep up: the events after its cursor left this node's window",
                            ));
                        }
                    }
                }
                Start::Snapshot {
                    revision,
                    revocations: held,
                    sent,
                } => {
                    let revision = *revision;
                    // The events between the snapshot and the start are
                    // replayed from the window after it: once they have
                    // left it, sending the rest of the snapshot is wasted
                    // (the subscriber would resume with another).
                    if revision < self.replay_until
                        && self.shared.state.watch_window_start() > revision
                    {
                        self.start = Start::Live;
                        self.shared.metrics.watch_cut("slow");
                        return Some(self.end(
                            tonic::Code::Aborted,
                            "subscriber too slow to keep up: the events after its snapshot left this node's window",
                        ));
                    }
                    let Some(revocations) = held.get() else {
                        self.start = Start::Live;
                        self.shared.metrics.watch_cut("snapshot_deadline");
                        return Some(self.end(
                            tonic::Code::Aborted,
                            "the snapshot was not read within the node's deadline",
                        ));
                    };
                    if *sent < revocations.len() {
                        let chunk =
                            &revocations[*sent..(*sent + SNAPSHOT_CHUNK).min(revocations.len())];
                        *sent += chunk.len();
                        return Some(Ok(Frame::Msg(pb::WatchEvent {
                            revision,
                            kind: Some(Kind::Snapshot(pb::Revocations {
                                revocations: chunk.iter().map(to_pb).collect(),
                            })),
                        })));
                    }
                    let count = revocations.len() as u64;
                    self.start = Start::Replay;
                    self.last = self.last.max(revision);
                    return Some(Ok(Frame::Msg(pb::WatchEvent {
                        revision,
                        kind: Some(Kind::SnapshotEnd(pb::SnapshotEnd { count })),
                    })));
                }
                Start::Live => return None,
            }
        }
    }

    fn heartbeat_msg(&self) -> pb::WatchEvent {
        let ready = self.shared.readiness().is_ok();
        let leader = self.shared.raft.metrics().borrow().current_leader;
        pb::WatchEvent {
            revision: self.shared.state.revision(),
            kind: Some(Kind::Heartbeat(pb::Heartbeat {
                leader_known: ready && leader.is_some(),
                leader_id: if ready { leader.unwrap_or(0) } else { 0 },
            })),
        }
    }

    /// A terminal status: the stream ends after it.
    fn end(&mut self, code: tonic::Code, why: &str) -> Result<Frame, Status> {
        self.done = true;
        Err(resumable(code, why, self.last))
    }

    /// The subscriber's next message; None once the stream has ended.
    /// A subscriber that a newer policy no longer allows to watch gets
    /// `PERMISSION_DENIED` instead, and nothing more: the check runs after
    /// the message was taken, so the policy read is at least as new as
    /// every event in it.
    async fn next(&mut self) -> Option<Result<Frame, Status>> {
        let m = self.next_message().await?;
        if m.is_ok() && !self.still_allowed().await {
            self.done = true;
            return Some(Err(Status::permission_denied(
                "policy (introspect): no longer allowed to watch",
            )));
        }
        Some(m)
    }

    /// Whether the subscriber may still watch: asked again whenever the
    /// applied policy changed since it was last allowed. A refusal is
    /// audited.
    async fn still_allowed(&mut self) -> bool {
        let version = self.shared.state.policy_version();
        if version == self.policy_version {
            return true;
        }
        let decision = match self.shared.policy() {
            Ok(Some(p)) => {
                self.policy_version = p.version();
                p.authorize(&crate::policy::Request::introspect(self.caller.clone()))
            }
            _ => return false,
        };
        if !decision.allowed {
            let mut ev = AuditEvent::new(self.shared.clock.now(), "watch", "deny", &self.caller);
            ev.policy_ids = decision.policy_ids;
            ev.reason = Some("policy changed during the stream".into());
            self.shared.record(ev).await;
        }
        decision.allowed
    }

    /// [`next`](Self::next) before the permission check.
    async fn next_message(&mut self) -> Option<Result<Frame, Status>> {
        if self.done {
            return None;
        }
        if let Some(m) = self.next_start() {
            return Some(m);
        }
        loop {
            let wake = match self.held.take() {
                Some(item) => Wake::Item(item),
                None => tokio::select! {
                    item = self.live.recv() => Wake::Item(item),
                    _ = self.tick.tick() => Wake::Tick,
                    _ = stopped(&mut self.stop) => Wake::Stop,
                },
            };
            match wake {
                Wake::Item(item) => match item {
                    Ok(FeedItem::Event(e)) => {
                        // At or below the cursor: already delivered (a
                        // cursor ahead of this node, or the start overlap).
                        if e.revision <= self.last {
                            continue;
                        }
                        if !self.coalesce {
                            return Some(Ok(self.event_frame(e)));
                        }
                        let events = gather(&mut self.live, e, &mut self.held);
                        if let Some(m) = self.events_msg(events) {
                            return Some(Ok(m));
                        }
                    }
                    Ok(FeedItem::Reset { revision }) => {
                        tracing::info!(
                            last = self.last,
                            revision,
                            "state replaced by a snapshot; watcher must resume"
                        );
                        self.shared.metrics.watch_cut("reset");
                        return Some(self.end(
                            tonic::Code::Aborted,
                            "this node's state was replaced by a snapshot",
                        ));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(last = self.last, behind = n, "watcher too slow; cut off");
                        self.shared.metrics.watch_cut("slow");
                        return Some(
                            self.end(tonic::Code::Aborted, "subscriber too slow to keep up"),
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Some(self.end(tonic::Code::Unavailable, "node stopping"));
                    }
                },
                Wake::Tick => {
                    // Two ticks in a row, so that one blip (a busy moment,
                    // an election) does not end every stream.
                    let ready = self.shared.readiness();
                    let was_ready = std::mem::replace(&mut self.ready_before, ready.is_ok());
                    if let (Err(e), false) = (ready, was_ready) {
                        // This node can no longer vouch for what it streams:
                        // the subscriber resumes on another node.
                        tracing::info!(last = self.last, reason = %e, "node not ready; ending watcher");
                        self.shared.metrics.watch_cut("not_ready");
                        return Some(self.end(
                            tonic::Code::Unavailable,
                            &format!("this node cannot vouch for its state ({e})"),
                        ));
                    }
                    return Some(Ok(Frame::Msg(self.heartbeat_msg())));
                }
                Wake::Stop => {
                    return Some(self.end(tonic::Code::Unavailable, "node stopping"));
                }
            }
        }
    }
}

/// Why a pump woke up.
enum Wake {
    Item(Result<FeedItem, broadcast::error::RecvError>),
    Tick,
    Stop,
}

/// `first` and every later event the live feed already holds, within the
/// batch bounds. Whatever else is taken (an event that does not fit, a
/// reset, a lag, the end) goes to `held`, handled after the batch is sent.
fn gather(
    live: &mut broadcast::Receiver<FeedItem>,
    first: Arc<FeedEvent>,
    held: &mut Option<Result<FeedItem, broadcast::error::RecvError>>,
) -> Vec<Arc<FeedEvent>> {
    use broadcast::error::{RecvError, TryRecvError};
    let mut batch = Batch::default();
    let _ = batch.offer(first);
    while !batch.is_full() {
        match live.try_recv() {
            Ok(FeedItem::Event(e)) => {
                if let Err(e) = batch.offer(e) {
                    *held = Some(Ok(FeedItem::Event(e)));
                    break;
                }
            }
            Ok(other) => {
                *held = Some(Ok(other));
                break;
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(n)) => {
                *held = Some(Err(RecvError::Lagged(n)));
                break;
            }
            Err(TryRecvError::Closed) => {
                *held = Some(Err(RecvError::Closed));
                break;
            }
        }
    }
    batch.events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: u64, n: usize) -> Arc<FeedEvent> {
        Arc::new(FeedEvent::new(RevocationEvent {
            revision,
            revocations: (0..n)
                .map(|i| Revocation::Jti {
                    jti: format!("j{revision}-{i}"),
                    until: 100,
                })
                .collect(),
        }))
    }

    fn revisions(events: &[Arc<FeedEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn batch_message_carries_each_revision_and_the_last_as_its_own() {
        let m = batch_msg(&[ev(7, 1), ev(9, 2)]);
        assert_eq!(m.revision, 9);
        let Some(Kind::RevokedBatch(b)) = m.kind else {
            panic!("{m:?}")
        };
        assert_eq!(
            b.events
                .iter()
                .map(|e| (e.revision, e.revocations.len()))
                .collect::<Vec<_>>(),
            vec![(7, 1), (9, 2)]
        );
    }

    #[test]
    fn gather_takes_what_is_queued_and_holds_what_follows() {
        let (tx, mut rx) = broadcast::channel(16);
        for r in 2..=4 {
            tx.send(FeedItem::Event(ev(r, 1))).unwrap();
        }
        tx.send(FeedItem::Reset { revision: 9 }).unwrap();
        tx.send(FeedItem::Event(ev(10, 1))).unwrap();
        let mut held = None;
        let got = gather(&mut rx, ev(1, 1), &mut held);
        assert_eq!(revisions(&got), vec![1, 2, 3, 4]);
        assert!(matches!(held, Some(Ok(FeedItem::Reset { revision: 9 }))));

        // Nothing queued: the first event alone, nothing held.
        let (_tx, mut rx) = broadcast::channel::<FeedItem>(4);
        let mut held = None;
        assert_eq!(revisions(&gather(&mut rx, ev(1, 1), &mut held)), vec![1]);
        assert!(held.is_none());

        // An event that does not fit waits for the next batch.
        let (tx, mut rx) = broadcast::channel(4);
        tx.send(FeedItem::Event(ev(2, BATCH_REVOCATIONS))).unwrap();
        let mut held = None;
        assert_eq!(revisions(&gather(&mut rx, ev(1, 1), &mut held)), vec![1]);
        assert!(matches!(&held, Some(Ok(FeedItem::Event(e))) if e.revision == 2));

        // A lag is reported after the batch of what was still there.
        let (tx, mut rx) = broadcast::channel(2);
        for r in 2..=5 {
            tx.send(FeedItem::Event(ev(r, 1))).unwrap();
        }
        let mut held = None;
        assert_eq!(revisions(&gather(&mut rx, ev(1, 1), &mut held)), vec![1]);
        assert!(matches!(
            held,
            Some(Err(broadcast::error::RecvError::Lagged(2)))
        ));
    }
}
