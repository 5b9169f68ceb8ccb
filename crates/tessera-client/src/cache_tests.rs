//! Unit tests of the revocation cache: applying snapshots and events, the
//! server's revocation rules, staleness and readiness, purging.

use super::*;
use tessera_proto::revocation::Target;
use tessera_proto::watch_event::Kind;

const WAIT: Duration = Duration::from_secs(10);

fn jti(j: &str, until: u64) -> pb::Revocation {
    pb::Revocation {
        target: Some(Target::Jti(j.into())),
        cutoff: 0,
        until,
        cutoff_revision: 0,
    }
}

fn subject(s: &str, cutoff: u64, until: u64) -> pb::Revocation {
    pb::Revocation {
        target: Some(Target::Subject(s.into())),
        cutoff,
        until,
        cutoff_revision: 0,
    }
}

fn client(c: &str, cutoff: u64, until: u64) -> pb::Revocation {
    pb::Revocation {
        target: Some(Target::Client(c.into())),
        cutoff,
        until,
        cutoff_revision: 0,
    }
}

fn ev(revision: u64, kind: Kind) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        kind: Some(kind),
    }
}

fn revoked(revision: u64, rs: Vec<pb::Revocation>) -> pb::WatchEvent {
    ev(revision, Kind::Revoked(pb::Revocations { revocations: rs }))
}

fn chunk(revision: u64, rs: Vec<pb::Revocation>) -> pb::WatchEvent {
    ev(
        revision,
        Kind::Snapshot(pb::Revocations { revocations: rs }),
    )
}

fn end(revision: u64, count: u64) -> pb::WatchEvent {
    ev(revision, Kind::SnapshotEnd(pb::SnapshotEnd { count }))
}

fn heartbeat(revision: u64, leader_known: bool) -> pb::WatchEvent {
    ev(
        revision,
        Kind::Heartbeat(pb::Heartbeat {
            leader_known,
            leader_id: 1,
        }),
    )
}

fn jtis(st: &CacheState) -> BTreeSet<String> {
    st.entries.jtis.keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn snapshot_replaces_the_set_only_at_its_end() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.step(&mut st, chunk(5, vec![jti("a", 100)])).unwrap();
    s.step(&mut st, end(5, 1)).unwrap();
    assert_eq!((st.revision, jtis(&st)), (5, set(&["a"])));

    // A second snapshot: the old set serves until the marker.
    let mut s = Session::default();
    assert_eq!(
        s.step(&mut st, chunk(9, vec![jti("b", 100)])).unwrap(),
        Step::Nothing
    );
    s.step(&mut st, chunk(9, vec![jti("c", 100)])).unwrap();
    assert_eq!((st.revision, jtis(&st)), (5, set(&["a"])));
    assert!(st.entries.is_revoked(&["a"], "", &[""], 0, None));
    assert_eq!(s.step(&mut st, end(9, 2)).unwrap(), Step::Replaced(9));
    // "a" was purged on the server: gone here too.
    assert_eq!((st.revision, jtis(&st)), (9, set(&["b", "c"])));
}

#[test]
fn a_broken_snapshot_leaves_the_old_set() {
    let mut st = CacheState::default();
    Session::default()
        .step(&mut st, revoked(3, vec![jti("a", 100)]))
        .unwrap();
    // The stream ends mid-snapshot: its session is dropped.
    let mut s = Session::default();
    s.step(&mut st, chunk(8, vec![jti("b", 100)])).unwrap();
    drop(s);
    assert_eq!((st.revision, jtis(&st)), (3, set(&["a"])));
}

#[test]
fn an_empty_snapshot_empties_the_set() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.step(&mut st, revoked(3, vec![jti("a", 100)])).unwrap();
    let mut s = Session::default();
    assert_eq!(s.step(&mut st, end(7, 0)).unwrap(), Step::Replaced(7));
    assert_eq!((st.revision, st.entries.len()), (7, 0));
    assert!(st.synced);
}

#[test]
fn snapshot_count_must_match() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.step(&mut st, chunk(5, vec![jti("a", 100), jti("b", 100)]))
        .unwrap();
    assert_eq!(
        s.step(&mut st, end(5, 3)),
        Err(ProtocolError::SnapshotCount {
            announced: 3,
            received: 2
        })
    );
    assert_eq!((st.revision, st.entries.len()), (0, 0));
    assert!(!st.synced);
}

#[test]
fn events_inside_a_snapshot_are_a_protocol_error() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.step(&mut st, chunk(5, vec![jti("a", 100)])).unwrap();
    assert_eq!(
        s.step(&mut st, revoked(6, vec![jti("b", 100)])),
        Err(ProtocolError::EventDuringSnapshot)
    );
    assert_eq!(st.entries.len(), 0);
}

#[test]
fn duplicates_and_the_past_are_ignored() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    assert_eq!(
        s.step(&mut st, revoked(4, vec![jti("a", 100)])).unwrap(),
        Step::Applied(4)
    );
    assert_eq!(
        s.step(&mut st, revoked(4, vec![jti("dup", 100)])).unwrap(),
        Step::Nothing
    );
    assert_eq!(
        s.step(&mut st, revoked(2, vec![jti("old", 100)])).unwrap(),
        Step::Nothing
    );
    assert_eq!(
        s.step(&mut st, revoked(6, vec![jti("b", 100)])).unwrap(),
        Step::Applied(6)
    );
    assert_eq!((st.revision, jtis(&st)), (6, set(&["a", "b"])));

    // Resuming on a node that is behind: its older snapshot is ignored,
    // and so are its events up to our revision.
    let mut s = Session::default();
    s.step(&mut st, chunk(5, vec![jti("a", 100)])).unwrap();
    assert_eq!(s.step(&mut st, end(5, 1)).unwrap(), Step::Nothing);
    assert_eq!(
        s.step(&mut st, revoked(6, vec![jti("b", 100)])).unwrap(),
        Step::Nothing
    );
    assert_eq!(
        s.step(&mut st, revoked(7, vec![jti("c", 100)])).unwrap(),
        Step::Applied(7)
    );
    assert_eq!((st.revision, jtis(&st)), (7, set(&["a", "b", "c"])));

    // A snapshot at our own revision is the same state: taken.
    let mut s = Session::default();
    s.step(&mut st, chunk(7, vec![jti("a", 100), jti("b", 100)]))
        .unwrap();
    s.step(&mut st, chunk(7, vec![jti("c", 100)])).unwrap();
    assert_eq!(s.step(&mut st, end(7, 3)).unwrap(), Step::Replaced(7));
}

#[test]
fn heartbeats_do_not_move_the_revision() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    assert_eq!(
        s.step(&mut st, heartbeat(40, true)).unwrap(),
        Step::Heartbeat {
            revision: 40,
            leader_known: true,
            caught_up: true,
        }
    );
    assert_eq!(st.revision, 0);
    assert!(!st.synced);
}

#[test]
fn the_revocation_rules() {
    let mut e = Entries::default();
    e.add(jti("root", 100), 0).unwrap();
    e.add(subject("alice", 50, 100), 0).unwrap();
    e.add(client("svc", 60, 100), 0).unwrap();
    // A newer server's kind is not skipped: it is an error.
    assert!(e
        .add(
            pb::Revocation {
                target: None,
                cutoff: 1,
                until: 1,
                cutoff_revision: 1,
            },
            0,
        )
        .is_err());
    assert_eq!(e.len(), 3);
    // Any jti of the chain.
    assert!(e.is_revoked(&["root", "child"], "bob", &["other"], 99, None));
    assert!(e.is_revoked(&["child", "root"], "bob", &["other"], 99, None));
    assert!(!e.is_revoked(&["child"], "bob", &["other"], 99, None));
    assert!(!e.is_revoked(&[], "bob", &["other"], 0, None));
    // Subject cut-off: at or after iat.
    assert!(e.is_revoked(&["x"], "alice", &["other"], 49, None));
    assert!(e.is_revoked(&["x"], "alice", &["other"], 50, None));
    assert!(!e.is_revoked(&["x"], "alice", &["other"], 51, None));
    // Client cut-off.
    assert!(e.is_revoked(&["x"], "bob", &["svc"], 60, None));
    assert!(!e.is_revoked(&["x"], "bob", &["svc"], 61, None));
    // A subject is not a client and the other way round.
    assert!(!e.is_revoked(&["x"], "svc", &["alice"], 61, None));
}

#[test]
fn cutoffs_compare_revisions_like_the_server() {
    let mut s = Session::default();
    let mut st = CacheState::default();
    let with_rev = |mut r: pb::Revocation, rev| {
        r.cutoff_revision = rev;
        r
    };
    // A snapshot entry carries its cut-off revision...
    for e in [
        chunk(9, vec![with_rev(subject("alice", 100, 900), 7)]),
        end(9, 1),
    ] {
        s.step(&mut st, e).unwrap();
    }
    // ...and so does a live event (here from a server that left the
    // field out: the event's revision stands in).
    s.step(&mut st, revoked(12, vec![client("svc", 100, 900)]))
        .unwrap();
    let e = &st.entries;
    // Below the cut-off revision: revoked, whatever the iat.
    assert!(e.is_revoked(&["x"], "alice", &["o"], 5_000, Some(6)));
    assert!(e.is_revoked(&["x"], "bob", &["svc"], 5_000, Some(11)));
    // At or above: valid, whatever the iat.
    assert!(!e.is_revoked(&["x"], "alice", &["o"], 1, Some(7)));
    assert!(!e.is_revoked(&["x"], "bob", &["svc"], 1, Some(12)));
    // No claim: the iat rule.
    assert!(e.is_revoked(&["x"], "alice", &["o"], 100, None));
    assert!(!e.is_revoked(&["x"], "alice", &["o"], 101, None));
}

#[test]
fn entries_only_grow() {
    let mut e = Entries::default();
    e.add(subject("alice", 50, 100), 0).unwrap();
    e.add(subject("alice", 40, 90), 0).unwrap();
    assert_eq!(
        e.subjects["alice"],
        Cutoff {
            cutoff: 50,
            until: 100,
            revision: 0,
        }
    );
    e.add(subject("alice", 70, 200), 0).unwrap();
    assert_eq!(
        e.subjects["alice"],
        Cutoff {
            cutoff: 70,
            until: 200,
            revision: 0,
        }
    );
    e.add(jti("a", 100), 0).unwrap();
    e.add(jti("a", 80), 0).unwrap();
    assert_eq!(e.jtis["a"], 100);
}

#[test]
fn expired_entries_are_forgotten() {
    let mut e = Entries::default();
    e.add(jti("a", 100), 0).unwrap();
    e.add(jti("b", 200), 0).unwrap();
    e.add(subject("alice", 50, 100), 0).unwrap();
    e.add(client("svc", 60, 300), 0).unwrap();
    // `until` itself is still kept (the server purges `until < at`).
    assert_eq!(e.purge(100), 0);
    assert_eq!(e.purge(101), 2);
    assert_eq!(e.jtis.keys().collect::<Vec<_>>(), ["b"]);
    assert!(e.subjects.is_empty());
    assert_eq!(e.purge(301), 2);
    assert_eq!(e.len(), 0);
}

#[tokio::test]
async fn waits_are_event_driven_and_bounded() {
    let cache = RevocationCache::detached(Arc::new(tessera_token::clock::ManualClock::new(0)));
    assert_eq!(cache.staleness(), Duration::MAX);
    let short = Duration::from_millis(20);
    assert!(matches!(
        cache.wait_ready(short).await,
        Err(ClientError::Timeout { .. })
    ));
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache.wait_ready(WAIT).await?;
            cache.wait_for_revision(9, WAIT).await
        })
    };
    cache.apply_for_tests(vec![chunk(4, vec![jti("a", 10)]), end(4, 1)]);
    cache.apply_for_tests(vec![revoked(9, vec![jti("b", 10)])]);
    waiter.await.unwrap().unwrap();
    assert_eq!(cache.revision(), 9);
    assert!(cache.staleness() < WAIT);
    assert!(matches!(
        cache.wait_for_revision(10, short).await,
        Err(ClientError::Timeout { .. })
    ));
    // A heartbeat from a node without a leader is not fresh news.
    cache.make_stale_for_tests(Duration::from_secs(60));
    cache.apply_for_tests(vec![heartbeat(12, false)]);
    assert!(cache.staleness() >= Duration::from_secs(60));
    assert_eq!(cache.status().node_revision, 12);
    assert!(!cache.status().leader_known);
    cache.apply_for_tests(vec![heartbeat(12, true)]);
    assert!(cache.staleness() < Duration::from_secs(60));
    assert_eq!(cache.revision(), 9);
    // Nor is one from a node behind the cache.
    cache.make_stale_for_tests(Duration::from_secs(60));
    cache.apply_for_tests(vec![heartbeat(8, true)]);
    assert!(cache.staleness() >= Duration::from_secs(60));
}

#[tokio::test]
async fn purge_uses_the_injected_clock() {
    let clock = Arc::new(tessera_token::clock::ManualClock::new(100));
    let cache = RevocationCache::detached(clock.clone());
    cache.apply_for_tests(vec![
        chunk(3, vec![jti("a", 150), jti("b", 300)]),
        end(3, 2),
    ]);
    cache.purge_expired();
    assert_eq!(cache.len(), 2);
    clock.advance(51);
    cache.purge_expired();
    assert_eq!(cache.revoked_jtis(), set(&["b"]));
    assert!(!cache.is_revoked(&["a"], "", "", 0, None));
    assert!(cache.is_revoked(&["a", "b"], "", "", 0, None));
}

fn test_config() -> CacheConfig {
    let dir = std::env::temp_dir();
    CacheConfig::new(
        vec!["127.0.0.1:1".into()],
        TlsFiles {
            ca: dir.join("tessera-no-such-ca.pem"),
            cert: dir.join("tessera-no-such.pem"),
            key: dir.join("tessera-no-such.key"),
        },
    )
}

#[tokio::test]
async fn start_refuses_bad_config() {
    let mut c = test_config();
    c.endpoints.clear();
    assert!(matches!(
        RevocationCache::start(c),
        Err(ClientError::NoEndpoints)
    ));
    let mut c = test_config();
    c.backoff_max = Duration::from_millis(1);
    assert!(matches!(
        RevocationCache::start(c),
        Err(ClientError::InvalidConfig(_))
    ));
    assert!(matches!(
        RevocationCache::start(test_config()),
        Err(ClientError::Read { .. })
    ));
}

/// `Instant::now() + idle_timeout` panicked the subscription task at its
/// first message for a timeout too large to add (`Duration::MAX`, meant as
/// "never idle").
#[tokio::test(start_paused = true)]
async fn an_idle_timeout_too_large_to_add_panicked_the_subscription() {
    let now = Instant::now();
    assert!(idle_deadline(Duration::MAX) >= now + Duration::from_secs(10 * 365 * 24 * 3600));
    assert_eq!(
        idle_deadline(Duration::from_secs(10)),
        now + Duration::from_secs(10)
    );
}

#[test]
fn start_needs_a_runtime() {
    assert!(matches!(
        RevocationCache::start(test_config()),
        Err(ClientError::InvalidConfig(_))
    ));
}

fn unknown_target() -> pb::Revocation {
    pb::Revocation {
        target: None,
        cutoff: 1,
        until: 100,
        cutoff_revision: 0,
    }
}

fn unknown_kind(revision: u64) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        kind: None,
    }
}

/// A revocation of a kind this client does not know (a newer server's)
/// used to be skipped, and the cache went on vouching for the tokens it
/// revoked: it failed open.
#[test]
fn a_revocation_of_a_kind_this_client_does_not_know_was_skipped() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.step(&mut st, chunk(5, vec![jti("a", 100)])).unwrap();
    assert_eq!(s.step(&mut st, end(5, 1)).unwrap(), Step::Replaced(5));

    // Not applied at all, not even its readable entries; recorded.
    assert_eq!(
        s.step(&mut st, revoked(6, vec![jti("b", 100), unknown_target()])),
        Err(ProtocolError::Unreadable { revision: 6 })
    );
    assert_eq!((st.revision, st.unreadable), (5, Some(6)));
    assert_eq!(jtis(&st), set(&["a"]));
    // A message of an unknown kind above the cache's revision is the same;
    // the highest unreadable revision is kept (only a snapshot at or above
    // it can be free of both).
    assert_eq!(
        s.step(&mut st, unknown_kind(7)),
        Err(ProtocolError::Unreadable { revision: 7 })
    );
    assert_eq!(st.unreadable, Some(7));
    // At or below it, it cannot change what was applied.
    assert_eq!(s.step(&mut st, unknown_kind(5)).unwrap(), Step::Nothing);

    // A complete snapshot below the unreadable revision does not clear it
    // (6 lies between the cache's 5 and the unreadable 7); one at or above
    // it does: every active revocation, all readable.
    let mut s = Session::default();
    s.step(&mut st, chunk(6, vec![jti("a", 100)])).unwrap();
    assert_eq!(s.step(&mut st, end(6, 1)).unwrap(), Step::Replaced(6));
    assert_eq!(st.unreadable, Some(7));
    s.step(&mut st, chunk(8, vec![jti("a", 100), jti("c", 100)]))
        .unwrap();
    assert_eq!(s.step(&mut st, end(8, 2)).unwrap(), Step::Replaced(8));
    assert_eq!((st.revision, st.unreadable), (8, None));

    // In a snapshot being received: the stream is dropped, the set kept.
    let mut s = Session::default();
    assert_eq!(
        s.step(&mut st, chunk(9, vec![jti("d", 100), unknown_target()])),
        Err(ProtocolError::Unreadable { revision: 9 })
    );
    assert_eq!((st.revision, st.unreadable), (8, Some(9)));
    assert_eq!(jtis(&st), set(&["a", "c"]));
    // A snapshot older than the cache's set is ignored anyway: not recorded.
    let mut st2 = CacheState {
        revision: 8,
        synced: true,
        ..Default::default()
    };
    assert!(Session::default()
        .step(&mut st2, chunk(7, vec![unknown_target()]))
        .is_err());
    assert_eq!(st2.unreadable, None);
}

#[test]
fn an_unreadable_revocation_makes_the_cache_infinitely_stale() {
    let cache = RevocationCache::detached(Arc::new(tessera_token::clock::ManualClock::new(0)));
    cache.apply_for_tests(vec![chunk(4, vec![jti("a", 10)]), end(4, 1)]);
    assert!(cache.staleness() < Duration::from_secs(60));
    assert_eq!(cache.unreadable_revision(), None);
    let err = cache
        .try_apply_for_tests(revoked(5, vec![unknown_target()]))
        .unwrap_err();
    assert!(err.contains("upgrade tessera-client"), "{err}");
    assert_eq!(cache.unreadable_revision(), Some(5));
    assert_eq!(cache.status().unreadable_revision, Some(5));
    assert_eq!(cache.staleness(), Duration::MAX);
    assert!(
        cache.is_synced(),
        "the set it has is still complete up to 4"
    );
    // A later complete snapshot without it lifts the block.
    cache.apply_for_tests(vec![chunk(6, vec![jti("a", 10)]), end(6, 1)]);
    assert_eq!(cache.unreadable_revision(), None);
    assert!(cache.staleness() < Duration::from_secs(60));
}

/// An unreadable entry whose `until` has passed can revoke no valid token:
/// a node replays it for as long as it is in its window, and it must not
/// block the cache all that time.
#[test]
fn an_expired_unreadable_revocation_blocks_nothing() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    s.now = 50;
    let expired = pb::Revocation {
        until: 49,
        ..unknown_target()
    };
    s.step(&mut st, chunk(5, vec![jti("a", 100), expired.clone()]))
        .unwrap();
    // Counted with the snapshot, not kept.
    assert_eq!(s.step(&mut st, end(5, 2)).unwrap(), Step::Replaced(5));
    assert_eq!((jtis(&st), st.entries.len()), (set(&["a"]), 1));
    assert_eq!(
        s.step(&mut st, revoked(6, vec![jti("b", 100), expired]))
            .unwrap(),
        Step::Applied(6)
    );
    assert_eq!(jtis(&st), set(&["a", "b"]));
    assert_eq!(st.unreadable, None);
    // Valid until now (inclusive, as the purge keeps it): it blocks.
    let live = pb::Revocation {
        until: 50,
        ..unknown_target()
    };
    assert!(s.step(&mut st, revoked(7, vec![live.clone()])).is_err());
    assert_eq!(st.unreadable, Some(7));
    // Once it has expired, the node's replay of the same event is applied
    // and lifts the block: no snapshot needs to come.
    s.now = 51;
    assert_eq!(
        s.step(&mut st, revoked(7, vec![live])).unwrap(),
        Step::Applied(7)
    );
    assert_eq!(st.unreadable, None);
}

#[tokio::test(start_paused = true)]
async fn a_first_snapshot_it_cannot_read_says_why_it_is_not_ready() {
    let cache = RevocationCache::detached(Arc::new(tessera_token::clock::ManualClock::new(0)));
    assert!(cache
        .try_apply_for_tests(chunk(3, vec![unknown_target()]))
        .is_err());
    assert!(!cache.is_synced());
    let err = cache.wait_ready(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::BadResponse(m) if m.contains("upgrade tessera-client")),
        "{err}"
    );
}
