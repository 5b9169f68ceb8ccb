//! Coalesced revocation streams: a subscriber that opts in and is behind
//! gets several events per message, in order, each with its revision; an
//! old-style subscriber (one that does not set `coalesce`, as every client
//! built before the field) still gets one event per message.

use tessera::pb::revocation_service_client::RevocationServiceClient;
use tessera::pb::{self, revocation, watch_event::Kind};
use tonic::transport::Channel;

use crate::cluster::*;

type Stream = tonic::Streaming<pb::WatchEvent>;

async fn subscribe(ch: Channel, from: u64, coalesce: bool) -> Stream {
    RevocationServiceClient::new(ch)
        .watch_revocations(pb::WatchRequest {
            from_revision: from,
            coalesce,
        })
        .await
        .unwrap()
        .into_inner()
}

fn jtis(rs: &[pb::Revocation]) -> Vec<String> {
    rs.iter()
        .filter_map(|r| match &r.target {
            Some(revocation::Target::Jti(j)) => Some(j.clone()),
            _ => None,
        })
        .collect()
}

/// One event: its revision and its jtis.
type Event = (u64, Vec<String>);
/// One message: whether it is a batch, and its events.
type Message = (bool, Vec<Event>);

/// The revocation messages of `s` until `n` events arrived, heartbeats
/// left out: for each message, its kind (`true`: a batch) and its events
/// as (revision, jtis).
async fn messages(s: &mut Stream, n: usize) -> Vec<Message> {
    let read = async {
        let mut out: Vec<Message> = Vec::new();
        while out.iter().map(|(_, evs)| evs.len()).sum::<usize>() < n {
            let e = s.message().await.unwrap().expect("stream ended");
            match e.kind {
                Some(Kind::Revoked(rs)) => {
                    out.push((false, vec![(e.revision, jtis(&rs.revocations))]))
                }
                Some(Kind::RevokedBatch(b)) => {
                    let last = b.events.last().map(|ev| ev.revision);
                    assert_eq!(last, Some(e.revision), "a batch is at its last event");
                    let evs = b
                        .events
                        .iter()
                        .map(|ev| (ev.revision, jtis(&ev.revocations)))
                        .collect();
                    out.push((true, evs));
                }
                Some(Kind::Heartbeat(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("stream stalled")
}

/// Every event of `msgs`, in arrival order.
fn flat(msgs: &[Message]) -> Vec<Event> {
    msgs.iter()
        .flat_map(|(_, evs)| evs.iter().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_is_behind_gets_several_events_per_message_in_order() {
    let c = TestCluster::start(1).await;
    let mut admin = c.tokens_on(1, "admin").await;
    let cursor = admin
        .revoke(revoke_jti("before"))
        .await
        .unwrap()
        .into_inner()
        .revision;
    // Two subscribers that do not read while the revocations are made, on
    // connections with a tiny stream window: the node can send each only
    // a dozen small messages before it has to wait for them, so it falls
    // behind by design.
    let small = || async {
        tessera::client::endpoint(&c.node(1).api_addr().to_string(), &c.files("ledger"), None)
            .unwrap()
            .initial_stream_window_size(512)
            .connect()
            .await
            .unwrap()
    };
    let mut coalesced = subscribe(small().await, cursor, true).await;
    let mut old_style = subscribe(small().await, cursor, false).await;
    // One writer, so one log entry and one event per revocation.
    const N: usize = 60;
    let mut want = Vec::new();
    for k in 0..N {
        let jti = format!("behind-{k:02}");
        let r = admin.revoke(revoke_jti(&jti)).await.unwrap().into_inner();
        want.push((r.revision, vec![jti]));
    }

    let got = messages(&mut coalesced, N).await;
    assert_eq!(flat(&got), want, "every event, in order, at its revision");
    assert!(
        got.iter().all(|(batch, _)| *batch),
        "opted in: batches only"
    );
    assert!(
        got.iter().any(|(_, evs)| evs.len() > 1),
        "behind, yet never several events in a message: {:?}",
        got.iter().map(|(_, evs)| evs.len()).collect::<Vec<_>>()
    );
    assert!(got.len() < N);

    let got = messages(&mut old_style, N).await;
    assert_eq!(flat(&got), want);
    assert_eq!(got.len(), N, "one message per event");
    assert!(got.iter().all(|(batch, evs)| !batch && evs.len() == 1));

    // Resuming from the cursor: the replay, all in one message for the
    // subscriber that opts in, one message per event for the other.
    let ch = c.channel_as(1, &c.files("ledger")).await;
    let mut s = subscribe(ch.clone(), cursor, true).await;
    let got = messages(&mut s, N).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(flat(&got), want);
    let mut s = subscribe(ch, cursor, false).await;
    let got = messages(&mut s, N).await;
    assert_eq!(got.len(), N);
    assert_eq!(flat(&got), want);

    // Both keep following live events.
    let r = admin.revoke(revoke_jti("live")).await.unwrap().into_inner();
    let live = vec![(r.revision, vec!["live".to_string()])];
    assert_eq!(flat(&messages(&mut coalesced, 1).await), live);
    assert_eq!(flat(&messages(&mut old_style, 1).await), live);
    c.stop().await;
}
