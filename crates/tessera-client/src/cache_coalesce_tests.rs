//! Tests of the cache's handling of coalesced (`revoked_batch`) messages:
//! each event of a batch is applied as if it had come alone.

use std::collections::BTreeSet;

use super::*;
use tessera_proto::revocation::Target;
use tessera_proto::watch_event::Kind;

fn jti(j: &str) -> pb::Revocation {
    pb::Revocation {
        target: Some(Target::Jti(j.into())),
        cutoff: 0,
        until: 100,
        cutoff_revision: 0,
    }
}

fn subject(s: &str, cutoff: u64) -> pb::Revocation {
    pb::Revocation {
        target: Some(Target::Subject(s.into())),
        cutoff,
        until: 900,
        cutoff_revision: 0,
    }
}

fn event(revision: u64, revocations: Vec<pb::Revocation>) -> pb::RevokedEvent {
    pb::RevokedEvent {
        revision,
        revocations,
    }
}

fn batch(events: Vec<pb::RevokedEvent>) -> pb::WatchEvent {
    pb::WatchEvent {
        revision: events.last().map_or(0, |e| e.revision),
        kind: Some(Kind::RevokedBatch(pb::RevokedBatch { events })),
    }
}

fn single(revision: u64, rs: Vec<pb::Revocation>) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        kind: Some(Kind::Revoked(pb::Revocations { revocations: rs })),
    }
}

fn jtis(st: &CacheState) -> BTreeSet<String> {
    st.entries.jtis.keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_batch_applies_each_event_at_its_own_revision() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    let b = batch(vec![
        event(3, vec![jti("a")]),
        // A cut-off from a server that leaves `cutoff_revision` out: its
        // own event's revision stands in, not the batch's last.
        event(4, vec![subject("alice", 50)]),
        event(5, vec![jti("b"), jti("c")]),
    ]);
    assert_eq!(s.step(&mut st, b).unwrap(), Step::Applied(5));
    assert_eq!((st.revision, jtis(&st)), (5, set(&["a", "b", "c"])));
    assert!(st.synced);
    let e = &st.entries;
    assert!(e.is_revoked(&["x"], "alice", &["o"], 5_000, Some(3)));
    assert!(!e.is_revoked(&["x"], "alice", &["o"], 1, Some(4)));
}

#[test]
fn a_batch_skips_what_the_cache_has_and_mixes_with_single_events() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    assert_eq!(
        s.step(&mut st, single(4, vec![jti("a")])).unwrap(),
        Step::Applied(4)
    );
    // Resumed on a node that replays from an older cursor: 3 and 4 are
    // already here.
    let b = batch(vec![
        event(3, vec![jti("old")]),
        event(4, vec![jti("dup")]),
        event(6, vec![jti("b")]),
        event(7, vec![jti("c")]),
    ]);
    assert_eq!(s.step(&mut st, b).unwrap(), Step::Applied(7));
    assert_eq!((st.revision, jtis(&st)), (7, set(&["a", "b", "c"])));
    // All old: nothing moves.
    let b = batch(vec![event(6, vec![jti("x")]), event(7, vec![jti("y")])]);
    assert_eq!(s.step(&mut st, b).unwrap(), Step::Nothing);
    assert_eq!(s.step(&mut st, batch(vec![])).unwrap(), Step::Nothing);
    assert_eq!(
        s.step(&mut st, single(8, vec![jti("d")])).unwrap(),
        Step::Applied(8)
    );
    assert_eq!((st.revision, jtis(&st)), (8, set(&["a", "b", "c", "d"])));
}

#[test]
fn a_batch_inside_a_snapshot_is_a_protocol_error() {
    let mut st = CacheState::default();
    let mut s = Session::default();
    let chunk = pb::WatchEvent {
        revision: 5,
        kind: Some(Kind::Snapshot(pb::Revocations {
            revocations: vec![jti("a")],
        })),
    };
    s.step(&mut st, chunk).unwrap();
    assert_eq!(
        s.step(&mut st, batch(vec![event(6, vec![jti("b")])])),
        Err(ProtocolError::EventDuringSnapshot)
    );
    assert_eq!(st.entries.len(), 0);
}

#[tokio::test]
async fn waiters_see_the_last_revision_of_a_batch() {
    let cache = RevocationCache::detached(Arc::new(SystemClock));
    cache.apply_for_tests(vec![batch(vec![
        event(10, vec![jti("a")]),
        event(11, vec![jti("b")]),
    ])]);
    cache
        .wait_for_revision(11, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(cache.revision(), 11);
    assert!(cache.is_revoked(&["b"], "s", "c", 1, None));
}

/// The events of a batch before an unreadable one are applied (and their
/// waiters woken); the unreadable one and those after it are not.
#[tokio::test]
async fn a_batch_stops_at_an_unreadable_event() {
    let cache = RevocationCache::detached(Arc::new(SystemClock));
    cache.apply_for_tests(vec![single(2, vec![jti("a")])]);
    let unknown = pb::Revocation {
        target: None,
        cutoff: 0,
        until: u64::MAX,
        cutoff_revision: 0,
    };
    assert!(cache
        .try_apply_for_tests(batch(vec![
            event(3, vec![jti("b")]),
            event(4, vec![unknown]),
            event(5, vec![jti("c")]),
        ]))
        .is_err());
    assert_eq!(cache.revision(), 3);
    assert_eq!(cache.revoked_jtis(), set(&["a", "b"]));
    assert_eq!(cache.unreadable_revision(), Some(4));
    // The progress watch moved to 3: a waiter for it returns.
    cache
        .wait_for_revision(3, Duration::from_secs(10))
        .await
        .unwrap();
}
