//! `RevocationService.WatchRevocations`: every node streams what it has
//! applied. A subscriber starts from a replay of the retained window or from
//! a snapshot, then follows the live feed; heartbeats carry the node's
//! applied revision and whether it knows a leader.
//!
//! Each subscriber has a bounded buffer: the live feed keeps
//! [`WatchSettings::live_buffer`] events for it, and its own
//! outgoing queue is small. One that cannot keep up is ended with `ABORTED`
//! and the revision to resume from (message and `x-tessera-resume-from`
//! metadata); the feed never waits for it, so the others are not slowed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::{ApiError, AuditEvent, Shared};
use crate::pb::{self, watch_event::Kind};
use crate::store::{FeedItem, Revocation, RevocationEvent, WatchStart};

/// Metadata key naming the revision a cut-off subscriber resumes from.
pub use tessera_proto::RESUME_METADATA;

/// Revocations per snapshot message.
const SNAPSHOT_CHUNK: usize = 1000;
/// Messages queued for one subscriber before the pump waits for it.
const QUEUE: usize = 64;

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
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            max_subscribers: 10_000,
            max_per_identity: 1_000,
            heartbeat: Duration::from_secs(1),
            live_buffer: crate::store::LIVE_BUFFER,
        }
    }
}

/// The `RevocationService` implementation.
pub struct WatchApi {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    slots: Arc<super::limits::WatchSlots>,
    settings: WatchSettings,
    stop: watch::Receiver<bool>,
}

impl WatchApi {
    pub(super) fn new(
        shared: Arc<Shared>,
        settings: WatchSettings,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            permits: Arc::new(Semaphore::new(settings.max_subscribers)),
            slots: super::limits::WatchSlots::new(settings.max_per_identity),
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

fn event_msg(e: &RevocationEvent) -> pb::WatchEvent {
    pb::WatchEvent {
        revision: e.revision,
        kind: Some(Kind::Revoked(pb::Revocations {
            revocations: e.revocations.iter().map(to_pb).collect(),
        })),
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::revocation_service_server::RevocationService for WatchApi {
    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let caller = crate::tls::caller_identity(&req)?;
        // Watching is reading revocations: the introspect permission.
        let decision = self
            .shared
            .policy()?
            .ok_or_else(|| ApiError::PermissionDenied("no policy is installed".into()))?
            .authorize(&crate::policy::Request::introspect(caller.id.clone()));
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
        let slot = self.slots.acquire(&caller.id)?;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node serves at most {} watchers; try another node",
                self.settings.max_subscribers
            ))
        })?;
        let from = req.into_inner().from_revision;
        let (tx, rx) = mpsc::channel(QUEUE);
        let pump = Pump {
            shared: self.shared.clone(),
            tx,
            heartbeat: self.settings.heartbeat,
            stop: self.stop.clone(),
            _permit: (permit, slot),
        };
        tokio::spawn(
            pump.run(from)
                .instrument(tracing::debug_span!("watcher", caller = %caller.id, from)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Completes once the node is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Feeds one subscriber. Ends when the subscriber goes away, falls behind,
/// the node's state is replaced, or the node stops.
struct Pump {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    heartbeat: Duration,
    stop: watch::Receiver<bool>,
    /// The node-wide and the per-identity subscriber slots, given back
    /// when the subscriber ends.
    _permit: (OwnedSemaphorePermit, super::limits::WatchSlot),
}

impl Pump {
    /// Queues a message; false if the subscriber is gone or the node is
    /// stopping (a subscriber that does not read never holds up shutdown).
    async fn send(&mut self, m: Result<pb::WatchEvent, Status>) -> bool {
        tokio::select! {
            sent = self.tx.send(m) => sent.is_ok(),
            _ = stopped(&mut self.stop) => false,
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

    async fn run(mut self, from: u64) {
        let watch = self.shared.state.watch(from);
        let mut live = watch.live;
        // The last revision this subscriber has: it resumes from here.
        let mut last = from;
        match watch.start {
            WatchStart::Replay(events) => {
                for e in events {
                    if !self.send(Ok(event_msg(&e))).await {
                        return;
                    }
                    self.shared.metrics.watch_events_sent(1);
                    last = e.revision;
                }
            }
            WatchStart::Snapshot {
                revision,
                revocations,
            } => {
                let count = revocations.len() as u64;
                for chunk in revocations.chunks(SNAPSHOT_CHUNK) {
                    let m = pb::WatchEvent {
                        revision,
                        kind: Some(Kind::Snapshot(pb::Revocations {
                            revocations: chunk.iter().map(to_pb).collect(),
                        })),
                    };
                    if !self.send(Ok(m)).await {
                        return;
                    }
                }
                let end = pb::WatchEvent {
                    revision,
                    kind: Some(Kind::SnapshotEnd(pb::SnapshotEnd { count })),
                };
                if !self.send(Ok(end)).await {
                    return;
                }
                last = last.max(revision);
            }
        }
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        let mut ready_before = true;
        loop {
            tokio::select! {
                item = live.recv() => match item {
                    Ok(FeedItem::Event(e)) => {
                        // At or below the cursor: already delivered (a
                        // cursor ahead of this node, or the start overlap).
                        if e.revision <= last {
                            continue;
                        }
                        if !self.send(Ok(event_msg(&e))).await {
                            return;
                        }
                        self.shared.metrics.watch_events_sent(1);
                        last = e.revision;
                    }
                    Ok(FeedItem::Reset { revision }) => {
                        tracing::info!(last, revision, "state replaced by a snapshot; watcher must resume");
                        self.shared.metrics.watch_cut("reset");
                        let _ = self.send(Err(resumable(
                            tonic::Code::Aborted,
                            "this node's state was replaced by a snapshot",
                            last,
                        ))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(last, behind = n, "watcher too slow; cut off");
                        self.shared.metrics.watch_cut("slow");
                        let _ = self.send(Err(resumable(
                            tonic::Code::Aborted,
                            "subscriber too slow to keep up",
                            last,
                        ))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = self.send(Err(resumable(tonic::Code::Unavailable, "node stopping", last))).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    // Two ticks in a row, so that one blip (a busy moment,
                    // an election) does not end every stream.
                    let ready = self.shared.readiness();
                    let was_ready = std::mem::replace(&mut ready_before, ready.is_ok());
                    if let (Err(e), false) = (ready, was_ready) {
                        // This node can no longer vouch for what it streams:
                        // the subscriber resumes on another node.
                        tracing::info!(last, reason = %e, "node not ready; ending watcher");
                        self.shared.metrics.watch_cut("not_ready");
                        let _ = self.send(Err(resumable(
                            tonic::Code::Unavailable,
                            &format!("this node cannot vouch for its state ({e})"),
                            last,
                        ))).await;
                        return;
                    }
                    let hb = self.heartbeat_msg();
                    if !self.send(Ok(hb)).await {
                        return;
                    }
                }
                _ = stopped(&mut stop) => {
                    let _ = self.tx.try_send(Err(resumable(tonic::Code::Unavailable, "node stopping", last)));
                    return;
                }
            }
        }
    }
}
