//! The revocation stream: resume across nodes, snapshot fallback, slow
//! subscribers, fan-out to a thousand subscribers, limits, heartbeats.

use std::collections::BTreeSet;
use std::time::Duration;

use tessera::pb::revocation_service_client::RevocationServiceClient;
use tessera::pb::{self, revocation, watch_event::Kind};
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::*;

type Stream = tonic::Streaming<pb::WatchEvent>;

/// The revision a resumable end says to resume from.
fn resume_from(end: &tonic::Status) -> u64 {
    end.metadata()
        .get(tessera::api::RESUME_METADATA)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn watch_on(c: &TestCluster, i: u64, from: u64) -> Stream {
    let ch = c.channel_as(i, &c.files("ledger")).await;
    watch_with(ch, from).await
}

/// A `ledger` channel to node `i` with a 4 KiB HTTP/2 stream window: the
/// node can send only a few KiB beyond what the subscriber has read.
async fn small_window_channel(c: &TestCluster, i: u64) -> Channel {
    tessera::client::endpoint(&c.node(i).api_addr().to_string(), &c.files("ledger"), None)
        .unwrap()
        .initial_stream_window_size(4 * 1024)
        .connect()
        .await
        .unwrap()
}

async fn watch_with(ch: Channel, from: u64) -> Stream {
    RevocationServiceClient::new(ch)
        .watch_revocations(pb::WatchRequest {
            from_revision: from,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Subscribes from `from`, retrying while the node says UNAVAILABLE (it
/// cannot vouch for its state yet), with a short backoff, as a client
/// would; bounded.
async fn resume_with(ch: &Channel, from: u64) -> Stream {
    let mut attempts = 0;
    loop {
        match RevocationServiceClient::new(ch.clone())
            .watch_revocations(pb::WatchRequest {
                from_revision: from,
                ..Default::default()
            })
            .await
        {
            Ok(s) => return s.into_inner(),
            Err(e) => {
                // Not serving yet, or a thousand resubscribing at once
                // meet the per-caller rate limit: both say to retry.
                assert!(
                    matches!(e.code(), Code::Unavailable | Code::ResourceExhausted),
                    "{e:?}"
                );
                attempts += 1;
                assert!(attempts < 600, "never subscribed again: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// (revision, jti) of every revoked event, in arrival order.
    events: Vec<(u64, String)>,
    /// The snapshot's revision and contents, if one came.
    snapshot: Option<(u64, BTreeSet<String>)>,
    heartbeats: Vec<pb::WatchEvent>,
}

impl Seen {
    fn jtis(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.events.iter().map(|(_, j)| j.clone()).collect();
        if let Some((_, s)) = &self.snapshot {
            all.extend(s.iter().cloned());
        }
        all
    }

    fn last_revision(&self) -> u64 {
        self.events
            .last()
            .map(|(r, _)| *r)
            .or(self.snapshot.as_ref().map(|(r, _)| *r))
            .unwrap_or(0)
    }

    /// Events strictly increasing in revision, and none at or below the
    /// snapshot's revision.
    fn assert_ordered(&self) {
        let mut prev = self.snapshot.as_ref().map(|(r, _)| *r).unwrap_or(0);
        let mut prev_jti_rev = 0;
        for (r, _) in &self.events {
            // Several jtis of one command share a revision.
            assert!(
                *r > prev || *r == prev_jti_rev,
                "revision {r} after {prev}: out of order or duplicate"
            );
            prev_jti_rev = *r;
            prev = *r;
        }
    }
}

fn jti_of(r: &pb::Revocation) -> Option<String> {
    match &r.target {
        Some(revocation::Target::Jti(j)) => Some(j.clone()),
        _ => None,
    }
}

/// Reads `stream` until `done(seen)` or the stream ends. Returns what was
/// seen and how it ended (None: `done` became true).
async fn read_until(
    stream: &mut Stream,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) -> Option<tonic::Status> {
    let mut pending_snapshot: BTreeSet<String> = BTreeSet::new();
    let read = async {
        loop {
            if done(seen) {
                return None;
            }
            match stream.message().await {
                Ok(Some(e)) => match e.kind {
                    Some(Kind::Revoked(rs)) => {
                        for r in rs.revocations.iter().filter_map(jti_of) {
                            seen.events.push((e.revision, r));
                        }
                    }
                    Some(Kind::Snapshot(rs)) => {
                        pending_snapshot.extend(rs.revocations.iter().filter_map(jti_of))
                    }
                    Some(Kind::SnapshotEnd(end)) => {
                        assert_eq!(end.count as usize, pending_snapshot.len());
                        seen.snapshot = Some((e.revision, std::mem::take(&mut pending_snapshot)));
                    }
                    Some(Kind::Heartbeat(_)) => seen.heartbeats.push(e),
                    // These subscribers do not opt in to coalescing.
                    Some(Kind::RevokedBatch(_)) => {
                        panic!("a batch sent to an old-style subscriber")
                    }
                    None => panic!("empty event"),
                },
                Ok(None) => return Some(tonic::Status::ok("ended")),
                Err(s) => return Some(s),
            }
        }
    };
    // The whole read may cover hundreds of sequential commits (each an
    // fsync): bound it generously; a stall shows as no progress at all.
    tokio::time::timeout(4 * WAIT, read)
        .await
        .expect("stream stalled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_another_node_without_gap_or_duplicate() {
    let c = TestCluster::start(3).await;
    let mut s1 = watch_on(&c, 1, 0).await;
    let mut seen = Seen::default();
    // From scratch: a snapshot (empty) first.
    read_until(&mut s1, &mut seen, |s| s.snapshot.is_some()).await;
    let first = revoke_burst(&c, "a", 40, 4, &[1, 2, 3]).await;
    assert!(first.failed.is_empty());
    // Disconnect mid-stream, after 25 events.
    read_until(&mut s1, &mut seen, |s| s.events.len() >= 25).await;
    drop(s1);
    let cursor = seen.last_revision();
    let second = revoke_burst(&c, "b", 40, 4, &[1, 2, 3]).await;
    assert!(second.failed.is_empty());
    // Resume on node 3 from the last revision received.
    let mut s3 = watch_on(&c, 3, cursor).await;
    let mut all = first.acked_set();
    all.extend(second.acked_set());
    let want = all.clone();
    read_until(&mut s3, &mut seen, |s| s.jtis().is_superset(&want)).await;
    assert!(seen.snapshot.as_ref().unwrap().1.is_empty());
    seen.assert_ordered();
    let jtis: Vec<&String> = seen.events.iter().map(|(_, j)| j).collect();
    let unique: BTreeSet<&String> = jtis.iter().copied().collect();
    assert_eq!(jtis.len(), unique.len(), "a duplicate was delivered");
    assert_eq!(seen.jtis(), all);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_window_gets_a_snapshot_then_live_events() {
    let c = TestCluster::start_with(3, |cfg| cfg.watch_window = 10).await;
    let old = revoke_burst(&c, "old", 40, 4, &[1, 2, 3]).await;
    assert!(old.failed.is_empty());
    c.wait_converged(&[1, 2, 3]).await;
    let early = old.acked.iter().map(|(_, r)| *r).min().unwrap();
    let window_start = c.node(2).state().watch_window_start();
    assert!(
        early < window_start,
        "the burst overflowed the 10-event window"
    );
    let mut s = watch_on(&c, 2, early).await;
    let mut seen = Seen::default();
    read_until(&mut s, &mut seen, |s| s.snapshot.is_some()).await;
    assert_eq!(seen.snapshot.as_ref().unwrap().1, old.acked_set());
    let live = revoke_burst(&c, "live", 20, 2, &[1, 2, 3]).await;
    let want = live.acked_set();
    read_until(&mut s, &mut seen, |s| s.jtis().is_superset(&want)).await;
    seen.assert_ordered();
    assert_eq!(
        seen.jtis(),
        c.revoked(2),
        "the subscriber ends with the server's set"
    );
    c.stop().await;
}

// Subscribers that start from a snapshot share one copy of the state while
// any of them is still sending it (every one used to copy the whole state).
// A later subscriber then gets that older copy and every event after it:
// nothing is missing and nothing goes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_shared_with_an_earlier_subscriber_is_followed_by_every_later_event() {
    let c = TestCluster::start(3).await;
    let old = revoke_burst(&c, "old", 30, 4, &[1, 2, 3]).await;
    assert!(old.failed.is_empty());
    c.wait_converged(&[1, 2, 3]).await;
    // An earlier subscriber still sending its snapshot holds the copy.
    let held = c.node(2).state().watch(0);
    let held_revision = match &held.start {
        tessera::store::WatchStart::Snapshot { revision, .. } => *revision,
        other => panic!("{other:?}"),
    };
    let mid = revoke_burst(&c, "mid", 20, 2, &[1, 2, 3]).await;
    assert!(mid.failed.is_empty());
    c.wait_converged(&[1, 2, 3]).await;
    let mut want = old.acked_set();
    want.extend(mid.acked_set());

    let mut s = watch_on(&c, 2, 0).await;
    let mut seen = Seen::default();
    read_until(&mut s, &mut seen, |s| {
        s.snapshot.is_some() && s.jtis().is_superset(&want)
    })
    .await;
    let (revision, snapshot) = seen.snapshot.clone().unwrap();
    assert_eq!(revision, held_revision, "the copy was shared");
    assert_eq!(snapshot, old.acked_set());
    let events: BTreeSet<String> = seen.events.iter().map(|(_, j)| j.clone()).collect();
    assert_eq!(events, mid.acked_set(), "then every event after the copy");
    seen.assert_ordered();

    // Once nobody holds it, a new subscriber gets a copy of its own.
    drop(held);
    let mut s = watch_on(&c, 2, 0).await;
    let mut fresh = Seen::default();
    read_until(&mut s, &mut fresh, |s| s.snapshot.is_some()).await;
    let (revision, snapshot) = fresh.snapshot.unwrap();
    assert!(revision > held_revision);
    assert_eq!(snapshot, want);
    c.stop().await;
}

/// A subscriber replaying from a cursor inside the window was handed its
/// own copy of every event after the cursor when it subscribed, and one
/// that stopped reading held that copy (and kept alive events the window
/// had dropped) for as long as its connection lived: a thousand such
/// streams held gigabytes. It now reads the window as it sends: one whose
/// events have left the window by the time it reads on is cut off,
/// resumable exactly after what it received, and resumes with a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replay_held_a_copy_of_every_event_after_its_cursor() {
    // A window of 2,000 revocations of 460-byte jtis: its replay (about
    // 920 KB of messages) is twice what a stalled stream can take in (its
    // 4 KiB window, the gRPC encoder's 32 KiB, hyper's 400 KiB send buffer).
    let c = TestCluster::start_with(1, |cfg| cfg.watch_window = 2_000).await;
    let long = format!("old-{}", "x".repeat(450));
    let old = revoke_burst(&c, &long, 2_400, 16, &[1]).await;
    assert!(old.failed.is_empty());
    // A cursor inside the window (0 would ask for a snapshot).
    let cursor = c.node(1).state().watch_window_start();
    assert!(cursor > 0);
    let mut stuck = watch_with(small_window_channel(&c, 1).await, cursor).await;
    // The window moves past every old event while it reads nothing.
    let new = revoke_burst(&c, "new", 2_400, 16, &[1]).await;
    assert!(new.failed.is_empty());
    assert!(
        c.node(1).state().watch_window_start() > old.acked.iter().map(|(_, r)| *r).max().unwrap()
    );

    let mut seen = Seen::default();
    let end = read_until(&mut stuck, &mut seen, |_| false)
        .await
        .expect("the stream ends");
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    assert!(end.message().contains("window"), "{end:?}");
    assert!(
        !seen.events.is_empty()
            && seen.events.iter().all(|(r, _)| *r > cursor)
            && seen.jtis().is_subset(&old.acked_set()),
        "what was already on its way, all from the replay"
    );
    seen.assert_ordered();
    let resume = resume_from(&end);
    assert_eq!(resume, seen.last_revision(), "resume exactly after it");
    // From there: a snapshot (the cursor left the window) with the rest.
    let mut s = watch_on(&c, 1, resume).await;
    let mut after = Seen::default();
    read_until(&mut s, &mut after, |s| s.snapshot.is_some()).await;
    let mut all = old.acked_set();
    all.extend(new.acked_set());
    assert_eq!(after.snapshot.unwrap().1, all);
    c.stop().await;
}

// A subscriber that stopped reading in the middle of its snapshot pinned
// that copy of the whole revocation set for as long as its connection
// stayed open (the node does not poll a stream whose reader is not
// reading). Past the snapshot deadline the node lets go of the copy, and
// the stream ends with a resumable ABORTED once the subscriber reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_its_snapshot_releases_it_at_the_deadline() {
    // The steps from subscribing to the check that the copy is still
    // held (one write, then convergence) take about 20 ms alone.
    const DEADLINE: Duration = Duration::from_secs(10);
    let c = TestCluster::start_with(3, |cfg| cfg.watch.snapshot_deadline = DEADLINE).await;
    // Five snapshot messages (1,000 revocations each).
    let old = revoke_burst(&c, "old", 5_000, 32, &[1, 2, 3]).await;
    assert!(old.failed.is_empty());
    c.wait_converged(&[1, 2, 3]).await;
    // A 4 KiB stream window and a subscriber that reads nothing: the node
    // sends 4 KiB, then has to wait (a read would open the window).
    let mut stuck = watch_with(small_window_channel(&c, 2).await, 0).await;
    let snapshot_revision = || match c.node(2).state().watch(0).start {
        tessera::store::WatchStart::Snapshot { revision, .. } => revision,
        other => panic!("{other:?}"),
    };
    let held = snapshot_revision();
    // One more write: a copy made from now on is at a later revision.
    let more = revoke_burst(&c, "more", 1, 1, &[2]).await;
    assert!(more.failed.is_empty());
    c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(
        snapshot_revision(),
        held,
        "the stalled subscriber holds its copy (a new watcher shares it)"
    );

    // It still reads nothing; past the deadline the copy is gone.
    let until = tokio::time::Instant::now() + DEADLINE + WAIT;
    while snapshot_revision() == held {
        assert!(
            tokio::time::Instant::now() < until,
            "the copy is still held long after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Reading at last: what was already on its way, then a resumable end.
    let status = loop {
        match tokio::time::timeout(WAIT, stuck.message())
            .await
            .expect("stream stalled")
        {
            Ok(Some(e)) => assert!(matches!(e.kind, Some(Kind::Snapshot(_))), "{e:?}"),
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("snapshot"), "{status:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_while_a_hundred_others_get_everything() {
    // A subscriber may fall 32 events behind (1,024 by default).
    let c = TestCluster::start_with(3, |cfg| cfg.watch.live_buffer = 32).await;
    // The slow one reads one message for every ten revocations: it falls
    // behind until the server cuts it off. (A subscriber that never reads
    // at all is cut off by its own HTTP/2 client instead, which limits how
    // many small frames it buffers.) Its small stream window makes the
    // server feel it within a few dozen events.
    let mut slow = watch_with(small_window_channel(&c, 1).await, 0).await;
    let mut slow_seen = Seen::default();
    read_until(&mut slow, &mut slow_seen, |s| s.snapshot.is_some()).await;
    // A hundred readers, spread over the nodes, on a few connections.
    let mut readers = Vec::new();
    let mut chans = Vec::new();
    for i in 1..=3u64 {
        for _ in 0..3 {
            chans.push(c.channel_as(i, &c.files("ledger")).await);
        }
    }
    // Sequential commits, each fsynced: about 20 s alone for 600 on these
    // machines, so 400 keeps the whole read within a fifth of its bound.
    const N: usize = 400;
    const READERS: usize = 100;
    for k in 0..READERS {
        let mut s = watch_with(chans[k % chans.len()].clone(), 0).await;
        readers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let end = read_until(&mut s, &mut seen, |s| s.events.len() >= N).await;
            assert!(end.is_none(), "reader {k} was cut off: {end:?}");
            seen.assert_ordered();
            seen
        }));
    }
    // One writer: one log entry, so one event, per revocation (concurrent
    // writers would be batched into few, large events).
    let mut admin = c.tokens_on(1, "admin").await;
    let mut acked = BTreeSet::new();
    let mut slow_end = None;
    let messages = |s: &Seen| s.events.len() + s.heartbeats.len();
    for k in 0..N {
        let jti = format!("slow-{k}");
        // A loaded machine may see a leader change: retry (idempotent).
        let mut attempts = 0;
        while let Err(e) = admin.revoke(revoke_jti(&jti)).await {
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            attempts += 1;
            assert!(attempts < 100, "{jti} never acknowledged: {e:?}");
        }
        acked.insert(jti);
        if k % 10 == 9 && slow_end.is_none() {
            let before = messages(&slow_seen);
            slow_end = read_until(&mut slow, &mut slow_seen, |s| messages(s) > before).await;
        }
    }
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen.jtis(), acked);
    }
    // The slow one got some events, then ABORTED with where to resume.
    let mut seen = slow_seen;
    let end = match slow_end {
        Some(end) => end,
        None => read_until(&mut slow, &mut seen, |_| false).await.unwrap(),
    };
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    let resume = resume_from(&end);
    assert_eq!(
        resume,
        seen.last_revision(),
        "resume exactly after the last delivered event"
    );
    assert!(seen.events.len() < N);
    // Resuming from there completes the set without a gap.
    let mut again = watch_on(&c, 2, resume).await;
    let want = acked;
    read_until(&mut again, &mut seen, |s| s.jtis().is_superset(&want)).await;
    seen.assert_ordered();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_over_three_nodes_get_every_event_in_order() {
    // Three nodes and a thousand streams share this process's two worker
    // threads: on a loaded machine they delay each other's heartbeats by
    // seconds, which real nodes (separate processes) do not. This test is
    // about fan-out, not liveness: give contact a generous bound.
    let c = TestCluster::start_with(3, |cfg| cfg.raft.contact_timeout_ms = 30_000).await;
    let mut chans = Vec::new();
    for i in 1..=3u64 {
        for _ in 0..8 {
            chans.push(c.channel_as(i, &c.files("ledger")).await);
        }
    }
    const N: usize = 200;
    let mut readers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1000);
    for k in 0..1000 {
        let ch = chans[k % chans.len()].clone();
        let ready = ready_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut s = resume_with(&ch, 0).await;
            let mut seen = Seen::default();
            read_until(&mut s, &mut seen, |s| s.snapshot.is_some()).await;
            ready.send(()).await.unwrap();
            // A node that cannot vouch for its state for a while (on a
            // loaded machine, an election) ends its streams with a
            // resumable UNAVAILABLE: resume where it said, as clients do.
            let mut resumes = 0;
            while let Some(end) = read_until(&mut s, &mut seen, |s| s.events.len() >= N).await {
                assert_eq!(
                    end.code(),
                    Code::Unavailable,
                    "subscriber {k} ended: {end:?}"
                );
                let from: u64 = end
                    .metadata()
                    .get(tessera::api::RESUME_METADATA)
                    .expect("resumable")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    from,
                    seen.last_revision(),
                    "resume exactly after what was delivered"
                );
                resumes += 1;
                assert!(resumes < 50, "subscriber {k} keeps being cut off");
                s = resume_with(&ch, from).await;
            }
            seen.assert_ordered();
            seen
        }));
    }
    // A reader that failed drops its sender: the count never completes and
    // the bound names the failure instead of hanging.
    drop(ready_tx);
    for k in 0..1000 {
        tokio::time::timeout(4 * WAIT, ready_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {k} of 1000 subscribers got their snapshot"))
            .unwrap_or_else(|| panic!("a subscriber failed after {k} were ready"));
    }
    let b = revoke_burst(&c, "fan", N, 16, &[1, 2, 3]).await;
    // On a loaded machine some writes time out or meet a leader change
    // (UNAVAILABLE: outcome unknown). A client retries them, as it would
    // in production (revocations are idempotent); every one of the N must
    // then reach every subscriber exactly once.
    let mut acked = b.acked_set();
    let mut retry = c.tokens_on(1, "admin").await;
    for (jti, code) in &b.failed {
        assert_eq!(*code, Code::Unavailable, "{jti}");
        let mut attempts = 0;
        while let Err(s) = retry.revoke(revoke_jti(jti)).await {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            attempts += 1;
            assert!(attempts < 100, "{jti} never acknowledged: {s:?}");
        }
        acked.insert(jti.clone());
    }
    assert_eq!(acked.len(), N);
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen.jtis(), acked);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_limit_and_heartbeats_without_a_leader() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.watch.max_subscribers = 2;
        cfg.watch.heartbeat = Duration::from_millis(100);
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let f = if leader == 1 { 2 } else { 1 };
    let mut a = watch_on(&c, f, 0).await;
    let _b = watch_on(&c, f, 0).await;
    let ch = c.channel_as(f, &c.files("ledger")).await;
    let e = RevocationServiceClient::new(ch)
        .watch_revocations(pb::WatchRequest {
            from_revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);

    // Heartbeats carry the applied revision and leader knowledge.
    let mut seen = Seen::default();
    read_until(&mut a, &mut seen, |s| !s.heartbeats.is_empty()).await;
    let hb = &seen.heartbeats[0];
    assert!(
        matches!(&hb.kind, Some(Kind::Heartbeat(h)) if h.leader_known && h.leader_id == leader)
    );
    assert_eq!(hb.revision, c.node(f).state().revision());
    // Cut the node off: it keeps streaming and says it knows no leader.
    c.faults.isolate(f);
    read_until(&mut a, &mut seen, |s| {
        s.heartbeats
            .iter()
            .any(|h| matches!(&h.kind, Some(Kind::Heartbeat(h)) if !h.leader_known))
    })
    .await;
    c.faults.heal();
    c.stop().await;
}
