//! The revocation feed: what each applied command revoked, kept for a
//! bounded window of recent revisions and broadcast live, so that watchers
//! can resume from a cursor or start from a snapshot without a gap.
//!
//! The feed is updated while the state machine holds its write lock, and a
//! watcher starts (replay or snapshot, plus its live subscription) under the
//! read lock: the start and the live events meet exactly, with no revision
//! missing and none twice.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use prost::bytes::Bytes;

use tokio::sync::broadcast;

use super::state::State;

/// Default number of recent events kept for resuming watchers.
pub const DEFAULT_WINDOW: usize = 100_000;
/// Events a watcher may fall behind the live feed before it is cut off
/// (with a resumable status): the per-subscriber buffer bound.
pub const LIVE_BUFFER: usize = 1024;

/// Sizes of a feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedSizes {
    /// Recent events kept for watchers that resume; also the most
    /// revocations those events may carry together (batch entries carry
    /// many: without this bound a million revocations in 100k-event
    /// window would all be held twice, in the state and here).
    pub window: usize,
    /// Events a watcher may fall behind before it is cut off.
    pub live_buffer: usize,
}

impl Default for FeedSizes {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            live_buffer: LIVE_BUFFER,
        }
    }
}

/// One revocation entry as held in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A revoked token id (and so every token exchanged from it).
    Jti {
        /// The token id.
        jti: String,
        /// When the entry may be forgotten.
        until: u64,
    },
    /// A subject cut-off.
    Subject {
        /// The subject.
        subject: String,
        /// Tokens without a `tsr_rev` claim and with `iat <= cutoff` are
        /// revoked.
        cutoff: u64,
        /// When the entry may be forgotten.
        until: u64,
        /// Revision the cut-off was applied at: tokens with `tsr_rev` below
        /// it are revoked (see [`crate::token::cutoff_revokes`]).
        revision: u64,
    },
    /// A client cut-off.
    Client {
        /// The client identity.
        client: String,
        /// Tokens without a `tsr_rev` claim and with `iat <= cutoff` are
        /// revoked.
        cutoff: u64,
        /// When the entry may be forgotten.
        until: u64,
        /// Revision the cut-off was applied at: tokens with `tsr_rev` below
        /// it are revoked (see [`crate::token::cutoff_revokes`]).
        revision: u64,
    },
}

/// What one applied command revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEvent {
    /// The log index the command was applied at.
    pub revision: u64,
    /// The entries it added or extended.
    pub revocations: Vec<Revocation>,
}

/// An event as the feed keeps and broadcasts it: the event itself, plus
/// encodings of it that the stream layer derives once and shares with every
/// watcher it sends the event to (a node fans one event out to a thousand
/// streams: encoding it once instead of once per stream). The bytes are
/// opaque here; the store knows no wire format.
#[derive(Debug)]
pub struct FeedEvent {
    event: RevocationEvent,
    /// Filled at most once each, by whoever sends the event first.
    encoded: [OnceLock<Bytes>; 2],
}

impl FeedEvent {
    /// An event with nothing encoded yet.
    pub fn new(event: RevocationEvent) -> Self {
        Self {
            event,
            encoded: Default::default(),
        }
    }

    /// Encoding number `slot` (0 or 1; the stream layer says which is
    /// what) of this event, computed by `encode` on first use.
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&RevocationEvent) -> Bytes) -> Bytes {
        self.encoded[slot]
            .get_or_init(|| encode(&self.event))
            .clone()
    }
}

impl Deref for FeedEvent {
    type Target = RevocationEvent;

    fn deref(&self) -> &RevocationEvent {
        &self.event
    }
}

/// What the live feed carries.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An applied revocation command.
    Event(Arc<FeedEvent>),
    /// The whole state was replaced by a snapshot at `revision` (a follower
    /// that fell too far behind): watchers must resume, and will get a
    /// snapshot.
    Reset {
        /// The snapshot's revision.
        revision: u64,
    },
}

/// How a watcher starts. Either way the events after the start's revision
/// are read from the window as they are sent ([`Feed::after`]), not copied
/// at the start: a subscriber that stops reading holds no copy of the
/// window (found by review: a stalled replay held O(window) pointers per
/// stream, gigabytes for a thousand streams).
#[derive(Debug)]
pub enum WatchStart {
    /// The cursor is inside the window: every event after it, in order.
    Replay,
    /// The cursor is outside the window (or 0): all active revocations as
    /// of `revision`, then every event after it.
    Snapshot {
        /// The revision the snapshot reflects.
        revision: u64,
        /// Every active revocation, as of `revision`. Shared by the
        /// watchers that start while it is being sent (see [`Feed::watch`]).
        revocations: Arc<Vec<Revocation>>,
    },
}

/// The events a watcher still needed have left the window: it must resume
/// (from its cursor, which now asks for a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftWindow {
    /// The oldest cursor the window can resume from now.
    pub window_start: u64,
}

/// A watcher's start and its live subscription, which continues exactly
/// where the start ends (the caller skips anything at or below the start's
/// last revision, which can only happen for a cursor ahead of this node).
#[derive(Debug)]
pub struct Watch {
    /// Replay or snapshot.
    pub start: WatchStart,
    /// The state's revision when the watcher started: the replay (or the
    /// events after the snapshot) ends here, and everything after it comes
    /// on `live`. Without this end a replay that kept pace with new events
    /// would chase the newest one for ever, through the window instead of
    /// the live feed, unchecked (found by review).
    pub replay_until: u64,
    /// Live items after the start.
    pub live: broadcast::Receiver<FeedItem>,
}

pub(crate) struct Feed {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<FeedItem>,
}

struct Inner {
    /// Every event with a revision above `window_start`, oldest first.
    ring: VecDeque<Arc<FeedEvent>>,
    window_start: u64,
    capacity: usize,
    /// Revocations the events in `ring` carry together.
    held: usize,
    /// The last snapshot copy handed to a watcher, and its revision, for
    /// as long as some watcher still holds it.
    snapshot: Option<(u64, Weak<Vec<Revocation>>)>,
}

impl Feed {
    pub(crate) fn new(revision: u64, sizes: FeedSizes) -> Self {
        let capacity = sizes.window;
        let (tx, _) = broadcast::channel(sizes.live_buffer.max(1));
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                window_start: revision,
                capacity: capacity.max(1),
                held: 0,
                snapshot: None,
            }),
            tx,
        }
    }

    /// Records the events of one applied batch. Call with the state's write
    /// lock held.
    pub(crate) fn push(&self, events: Vec<RevocationEvent>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for ev in events {
            let ev = Arc::new(FeedEvent::new(ev));
            inner.held += ev.revocations.len();
            inner.ring.push_back(ev.clone());
            // The newest event always stays, however many it carries.
            while inner.ring.len() > 1
                && (inner.ring.len() > inner.capacity || inner.held > inner.capacity)
            {
                if let Some(old) = inner.ring.pop_front() {
                    inner.held -= old.revocations.len();
                    inner.window_start = old.revision;
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(FeedItem::Event(ev));
        }
    }

    /// The state was replaced by a snapshot at `revision`. Call with the
    /// state's write lock held.
    pub(crate) fn reset(&self, revision: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.ring.clear();
        inner.held = 0;
        inner.window_start = revision;
        inner.snapshot = None;
        let _ = self.tx.send(FeedItem::Reset { revision });
    }

    /// Starts a watcher from `from_revision`. Call with the state's read
    /// lock held, `state` being what it guards.
    ///
    /// Watchers that need a snapshot share one copy of the revocations
    /// while any of them still holds it: a copy at revision `r` plus the
    /// events after `r` is as good as a fresh copy, as long as the window
    /// still holds every event after `r`. Without this, every watcher
    /// starting from 0 copied the whole state (~56 MB at 1M revocations)
    /// under the state's read lock, and a node whose subscribers all
    /// reconnected at once held one copy per subscriber.
    ///
    /// The state's read lock keeps [`Feed::push`] and [`Feed::reset`] out
    /// for the whole call, so a new copy is made outside the feed's own
    /// mutex: replaying watchers take that mutex for every message, and a
    /// copy of a million revocations under it would stall them all.
    pub(crate) fn watch(&self, state: &State, from_revision: u64) -> Watch {
        let replay_until = state.revision();
        let (live, shared) = {
            let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let live = self.tx.subscribe();
            if from_revision > 0 && from_revision >= inner.window_start {
                return Watch {
                    start: WatchStart::Replay,
                    replay_until,
                    live,
                };
            }
            let shared = inner
                .snapshot
                .as_ref()
                .filter(|(revision, _)| *revision >= inner.window_start)
                .and_then(|(revision, copy)| Some((*revision, copy.upgrade()?)));
            (live, shared)
        };
        let (revision, revocations) = shared.unwrap_or_else(|| {
            let copy = Arc::new(state.revocations());
            self.inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot = Some((replay_until, Arc::downgrade(&copy)));
            (replay_until, copy)
        });
        Watch {
            start: WatchStart::Snapshot {
                revision,
                revocations,
            },
            replay_until,
            live,
        }
    }

    /// The events after `revision` and up to `until`, oldest first: at
    /// most `max_events`, and after the first, no more than
    /// `max_revocations` revocations in all (one message's worth). Empty
    /// once `revision` has reached `until` (or the newest event).
    /// [`LeftWindow`] if some of them have left the window.
    pub(crate) fn after(
        &self,
        revision: u64,
        until: u64,
        max_events: usize,
        max_revocations: usize,
    ) -> Result<Vec<Arc<FeedEvent>>, LeftWindow> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if revision < inner.window_start {
            return Err(LeftWindow {
                window_start: inner.window_start,
            });
        }
        let first = inner.ring.partition_point(|e| e.revision <= revision);
        let mut out = Vec::new();
        let mut revocations = 0;
        for e in inner.ring.range(first..) {
            if e.revision > until {
                break;
            }
            let n = e.revocations.len();
            if !out.is_empty() && (out.len() >= max_events || revocations + n > max_revocations) {
                break;
            }
            revocations += n;
            out.push(e.clone());
        }
        Ok(out)
    }

    /// The oldest cursor this feed can resume from.
    pub(crate) fn window_start(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .window_start
    }

    /// Live subscribers right now.
    pub(crate) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed starting at `revision` whose window holds `window` events.
    fn feed(revision: u64, window: usize) -> Feed {
        Feed::new(
            revision,
            FeedSizes {
                window,
                live_buffer: LIVE_BUFFER,
            },
        )
    }

    /// An event at `revision` carrying `n` revocations.
    fn batch(revision: u64, n: usize) -> RevocationEvent {
        RevocationEvent {
            revision,
            revocations: (0..n)
                .map(|i| Revocation::Jti {
                    jti: format!("j{revision}-{i}"),
                    until: 1,
                })
                .collect(),
        }
    }

    fn ev(revision: u64, jti: &str) -> RevocationEvent {
        RevocationEvent {
            revision,
            revocations: vec![Revocation::Jti {
                jti: jti.into(),
                until: 100,
            }],
        }
    }

    // Batch entries carry many revocations each: the window bounds the
    // revocations held too, so the feed never holds a second copy of a
    // large state.
    #[test]
    fn the_window_bounds_revocations_not_only_events() {
        let feed = feed(10, 4);
        feed.push(vec![batch(11, 2), batch(12, 2)]);
        assert_eq!(feed.window_start(), 10);
        feed.push(vec![batch(13, 1)]);
        // 5 revocations > 4: the oldest event goes.
        assert_eq!(feed.window_start(), 11);
        // One event above the bound still stays, alone.
        feed.push(vec![batch(14, 9)]);
        assert_eq!(feed.window_start(), 13);
        assert!(matches!(
            feed.watch(&State::default(), 13).start,
            WatchStart::Replay
        ));
        assert_eq!(all_after(&feed, 13), Ok(vec![14]));
    }

    /// Every event after `revision`, read the way a replaying watcher
    /// does, one bounded read at a time.
    fn all_after(feed: &Feed, revision: u64) -> Result<Vec<u64>, LeftWindow> {
        let mut out = Vec::new();
        let mut last = revision;
        loop {
            let evs = feed.after(last, u64::MAX, 2, 3)?;
            let Some(e) = evs.last() else {
                return Ok(out);
            };
            last = e.revision;
            out.extend(evs.iter().map(|e| e.revision));
        }
    }

    #[test]
    fn replay_inside_the_window_snapshot_outside() {
        let feed = feed(10, 3);
        feed.push(vec![ev(11, "a"), ev(12, "b")]);
        feed.push(vec![ev(13, "c"), ev(14, "d")]);
        // The ring holds 12, 13, 14: complete above 11.
        assert_eq!(feed.window_start(), 11);
        let state = State::default();
        assert!(matches!(feed.watch(&state, 12).start, WatchStart::Replay));
        assert_eq!(all_after(&feed, 12), Ok(vec![13, 14]));
        assert!(matches!(feed.watch(&state, 11).start, WatchStart::Replay));
        assert_eq!(all_after(&feed, 11), Ok(vec![12, 13, 14]));
        assert!(matches!(
            feed.watch(&state, 10).start,
            WatchStart::Snapshot { .. }
        ));
        assert!(matches!(
            feed.watch(&state, 0).start,
            WatchStart::Snapshot { .. }
        ));
        // A cursor ahead of this node replays nothing.
        assert!(matches!(feed.watch(&state, 99).start, WatchStart::Replay));
        assert_eq!(all_after(&feed, 99), Ok(vec![]));
        // A replay that the window has moved past must resume.
        assert_eq!(all_after(&feed, 10), Err(LeftWindow { window_start: 11 }));
    }

    /// A replaying watcher used to get its own copy of every event after
    /// its cursor at the start: one that stopped reading held O(window)
    /// pointers, and kept evicted events alive, for as long as its
    /// connection lived. The start now holds no event at all.
    #[test]
    fn a_stalled_replay_held_a_copy_of_the_window() {
        let feed = feed(0, 4);
        let state = State::default();
        feed.push(vec![ev(1, "a"), ev(2, "b"), ev(3, "c")]);
        let replay = feed.watch(&state, 1);
        let snapshot = feed.watch(&state, 0);
        assert!(matches!(replay.start, WatchStart::Replay));
        assert!(matches!(snapshot.start, WatchStart::Snapshot { .. }));
        let inner = feed.inner.lock().unwrap();
        for e in &inner.ring {
            assert_eq!(Arc::strong_count(e), 1, "event {} held", e.revision);
        }
    }

    /// One read is one message's worth: the first event always, then
    /// within both bounds.
    #[test]
    fn after_reads_one_message_worth() {
        let feed = feed(0, 100);
        feed.push(vec![batch(1, 5), batch(2, 1), batch(3, 1), batch(4, 1)]);
        let revs = |v: Vec<Arc<FeedEvent>>| v.iter().map(|e| e.revision).collect::<Vec<_>>();
        // A first event above the revocation bound still goes, alone.
        let all = u64::MAX;
        assert_eq!(revs(feed.after(0, all, 10, 2).unwrap()), vec![1]);
        assert_eq!(revs(feed.after(1, all, 10, 2).unwrap()), vec![2, 3]);
        assert_eq!(revs(feed.after(1, all, 1, 100).unwrap()), vec![2]);
        assert_eq!(revs(feed.after(4, all, 10, 10).unwrap()), Vec::<u64>::new());
        // Never past `until`: what came after the watcher started is on
        // its live feed.
        assert_eq!(revs(feed.after(1, 3, 10, 100).unwrap()), vec![2, 3]);
        assert_eq!(revs(feed.after(3, 3, 10, 100).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn live_follows_the_start_and_reset_is_announced() {
        let feed = feed(0, 10);
        let state = State::default();
        let mut w = feed.watch(&state, 0);
        feed.push(vec![ev(1, "a")]);
        feed.reset(50);
        match w.live.try_recv().unwrap() {
            FeedItem::Event(e) => assert_eq!(e.revision, 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            w.live.try_recv().unwrap(),
            FeedItem::Reset { revision: 50 }
        ));
        assert_eq!(feed.window_start(), 50);
        assert!(matches!(
            feed.watch(&state, 1).start,
            WatchStart::Snapshot { .. }
        ));
    }

    /// The snapshot start's revision and copy, and the events after it as
    /// the watcher reads them.
    fn snapshot_of<'a>(feed: &Feed, w: &'a Watch) -> (u64, &'a Arc<Vec<Revocation>>, Vec<u64>) {
        match &w.start {
            WatchStart::Snapshot {
                revision,
                revocations,
            } => (*revision, revocations, all_after(feed, *revision).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    fn copy_of(w: &Watch) -> &Arc<Vec<Revocation>> {
        match &w.start {
            WatchStart::Snapshot { revocations, .. } => revocations,
            other => panic!("{other:?}"),
        }
    }

    // Every watcher starting from 0 used to get its own copy of the whole
    // state: a node whose thousand subscribers reconnected at once held a
    // thousand copies. They now share one, plus the events after it.
    #[test]
    fn snapshot_watchers_share_one_copy_and_get_the_events_after_it() {
        let feed = feed(0, 3);
        let state = State::default();
        let first = feed.watch(&state, 0);
        let (rev, copy, then) = snapshot_of(&feed, &first);
        assert_eq!((rev, then), (0, vec![]));
        feed.push(vec![ev(1, "a"), ev(2, "b")]);
        let second = feed.watch(&state, 0);
        let (rev2, copy2, then2) = snapshot_of(&feed, &second);
        assert!(Arc::ptr_eq(copy, copy2), "one copy shared");
        assert_eq!((rev2, then2), (0, vec![1, 2]));
        // A cursor older than the window shares it too.
        feed.push(vec![ev(3, "c")]);
        assert_eq!(feed.window_start(), 0);
        let weak = Arc::downgrade(copy);
        // Once the window no longer holds every event after the copy, a
        // new watcher gets a copy of its own.
        feed.push(vec![ev(4, "d")]);
        assert_eq!(feed.window_start(), 1);
        let third = feed.watch(&state, 0);
        assert!(!Arc::ptr_eq(copy, copy_of(&third)));
        // A copy nobody holds any more is gone, not kept for later.
        drop((first, second, third));
        assert!(weak.upgrade().is_none());
        // A reset (the state replaced) never hands out an older copy.
        let fourth = feed.watch(&state, 0);
        feed.reset(9);
        let fifth = feed.watch(&state, 0);
        assert!(!Arc::ptr_eq(copy_of(&fourth), copy_of(&fifth)));
    }

    /// Random histories of pushes (events of 1..6 revocations, gaps in
    /// revisions) and resets: every watch from every cursor gives
    /// exactly the events after the cursor (replay), or a snapshot at a
    /// revision at or above the window start with every event after it.
    #[test]
    fn every_cursor_gets_exactly_the_events_after_it_on_random_histories() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _round in 0..200 {
            let window = 1 + rnd(12) as usize;
            let start = rnd(5);
            let feed = feed(start, window);
            let mut state = State::default();
            let mut rev = start;
            // Every event since the last reset (or the start).
            let mut model: Vec<(u64, usize)> = Vec::new();
            let mut base = start;
            let mut keep = Vec::new();
            for _ in 0..60 {
                if rnd(15) == 0 {
                    rev += 1 + rnd(3);
                    feed.reset(rev);
                    model.clear();
                    base = rev;
                } else {
                    let mut evs = Vec::new();
                    for _ in 0..1 + rnd(3) {
                        rev += 1 + rnd(2);
                        let n = rnd(6) as usize;
                        model.push((rev, n));
                        evs.push(RevocationEvent {
                            revision: rev,
                            revocations: (0..n)
                                .map(|i| Revocation::Jti {
                                    jti: format!("{rev}-{i}"),
                                    until: 1,
                                })
                                .collect(),
                        });
                    }
                    feed.push(evs);
                }
                state.last_applied = Some(openraft::testing::log_id(1, 1, rev));
                let ws = feed.window_start();
                assert!(ws >= base, "window start {ws} below the reset/start {base}");
                for cursor in 0..=rev + 2 {
                    let w = feed.watch(&state, cursor);
                    let want_after = |r: u64| -> Vec<(u64, usize)> {
                        model.iter().copied().filter(|(v, _)| *v > r).collect()
                    };
                    // What a watcher reads after `r`, one message's
                    // worth at a time, with each event's size.
                    let got = |r: u64| -> Vec<(u64, usize)> {
                        let mut out = Vec::new();
                        let mut last = r;
                        loop {
                            let evs = feed
                                .after(last, w.replay_until, 1 + (last % 3) as usize, 4)
                                .unwrap();
                            let Some(e) = evs.last() else { return out };
                            last = e.revision;
                            out.extend(evs.iter().map(|e| (e.revision, e.revocations.len())));
                        }
                    };
                    match &w.start {
                        WatchStart::Replay => {
                            assert!(
                                cursor > 0 && cursor >= base,
                                "replay from {cursor} before base {base}"
                            );
                            assert_eq!(got(cursor), want_after(cursor), "replay from {cursor}");
                        }
                        WatchStart::Snapshot { revision, .. } => {
                            assert!(
                                cursor == 0 || cursor < ws,
                                "snapshot for {cursor}, window {ws}"
                            );
                            assert!(*revision >= cursor && *revision >= base && *revision <= rev);
                            assert_eq!(
                                got(*revision),
                                want_after(*revision),
                                "then after {revision}"
                            );
                        }
                    }
                    if rnd(4) == 0 {
                        keep.push(w);
                    }
                }
                if keep.len() > 20 {
                    keep.clear();
                }
            }
        }
    }

    #[test]
    fn a_watcher_that_falls_behind_the_live_buffer_lags() {
        let feed = feed(0, 10);
        let state = State::default();
        let mut w = feed.watch(&state, 0);
        for r in 1..=(LIVE_BUFFER as u64 + 5) {
            feed.push(vec![ev(r, "x")]);
        }
        assert!(matches!(
            w.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
