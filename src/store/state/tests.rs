//! Unit tests of the replicated state: apply, events, cut-offs, purge,
//! snapshots.

use std::collections::BTreeSet;

use openraft::entry::RaftEntry;
use openraft::testing::log_id;
use openraft::Membership;

use crate::raft::Command;

use super::*;
use crate::raft::{KeyState, RevokedJti};

fn entry(index: u64, at: u64, op: Op) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Command { at, op }),
    }
}

fn apply(state: &mut State, index: u64, at: u64, op: Op) -> u64 {
    let mut t = Touched::default();
    let r = state.apply(&entry(index, at, op), &mut t);
    assert_eq!(r.revision, index);
    r.changed
}

fn jtis(list: &[(&str, u64)]) -> Op {
    Op::RevokeJtis {
        jtis: list
            .iter()
            .map(|(j, u)| RevokedJti {
                jti: (*j).to_owned(),
                until: *u,
            })
            .collect(),
    }
}

pub(crate) fn key(kid: &str, state: KeyState) -> KeyRecord {
    KeyRecord {
        kid: kid.to_owned(),
        alg: "EdDSA".into(),
        public_key: vec![1; 32],
        sealed_private_key: vec![2; 60],
        kek_id: "kek1".into(),
        state,
        created_at: 10,
        times: Default::default(),
    }
}

#[test]
fn a_batch_answers_each_operation_and_makes_one_event() {
    let mut s = State::default();
    let mut t = Touched::default();
    s.apply(&entry(1, 10, jtis(&[("a", 100)])), &mut t);
    let batch = Op::Batch {
        ops: vec![
            jtis(&[("a", 100)]),
            jtis(&[("b", 100)]),
            Op::RevokeSubject {
                subject: "s".into(),
                cutoff: 10,
                until: 200,
            },
        ],
    };
    let mut t = Touched::default();
    let r = s.apply(&entry(2, 10, batch), &mut t);
    assert_eq!(r.revision, 2);
    assert_eq!(r.changed_each, vec![0, 1, 1], "a repeat changes nothing");
    assert_eq!(r.changed, 2);
    assert_eq!(t.events.len(), 1, "one event per log entry");
    assert_eq!(t.events[0].revision, 2);
    assert_eq!(t.events[0].revocations.len(), 2);
    assert!(s.is_revoked(&["b"], "x", &["y"], 0, None));
    assert!(s.is_revoked(&[], "s", &["y"], 10, None));
}

#[test]
fn revoke_jtis_counts_new_and_keeps_max_until() {
    let mut s = State::default();
    assert_eq!(apply(&mut s, 1, 0, jtis(&[("a", 100), ("b", 50)])), 2);
    // Repeat: nothing new; a later until is kept, an earlier one ignored.
    assert_eq!(apply(&mut s, 2, 0, jtis(&[("a", 200), ("b", 10)])), 0);
    assert_eq!(s.jtis.get("a"), Some(200));
    assert_eq!(s.jtis.get("b"), Some(50));
    // A duplicate inside one command counts once.
    assert_eq!(
        apply(&mut s, 3, 0, jtis(&[("c", 1), ("c", 5), ("a", 1)])),
        1
    );
    assert_eq!(s.jtis.get("c"), Some(5));
    assert_eq!(apply(&mut s, 4, 0, jtis(&[])), 0);
    assert_eq!(s.revocation_count(), 3);
}

/// A cut-off of client (or subject) `c1`.
fn cutoff_op(client: bool, cutoff: u64, until: u64) -> Op {
    if client {
        Op::RevokeClient {
            client: "c1".into(),
            cutoff,
            until,
        }
    } else {
        Op::RevokeSubject {
            subject: "c1".into(),
            cutoff,
            until,
        }
    }
}

#[test]
fn subject_and_client_cutoffs_only_move_forward() {
    for client in [false, true] {
        let op = |cutoff, until| cutoff_op(client, cutoff, until);
        let get = |s: &State| {
            *if client { &s.clients } else { &s.subjects }
                .get("c1")
                .unwrap()
        };
        let cut = |cutoff, until, revision| Cutoff {
            cutoff,
            until,
            revision,
        };
        let mut s = State::default();
        assert_eq!(apply(&mut s, 1, 0, op(100, 500)), 1);
        assert_eq!(get(&s), cut(100, 500, 1));
        // Same cut-off time, later revision: revokes the tokens minted
        // since revision 1, so it counts.
        assert_eq!(apply(&mut s, 2, 0, op(100, 500)), 1);
        assert_eq!(get(&s), cut(100, 500, 2));
        // Earlier time, later until: time stays, until and revision grow.
        assert_eq!(apply(&mut s, 3, 0, op(50, 900)), 1);
        assert_eq!(get(&s), cut(100, 900, 3));
        // Later time with earlier until: until stays max.
        assert_eq!(apply(&mut s, 4, 0, op(150, 600)), 1);
        assert_eq!(get(&s), cut(150, 900, 4));
        assert_eq!(s.revocation_count(), 1);
    }
}

#[test]
fn a_cutoff_revokes_by_revision_not_by_clock() {
    let mut s = State::default();
    let subject = |cutoff| Op::RevokeSubject {
        subject: "alice".into(),
        cutoff,
        until: 10_000,
    };
    let client = |cutoff| Op::RevokeClient {
        client: "svc".into(),
        cutoff,
        until: 10_000,
    };
    // Cut-offs applied at revisions 7 and 9, stamped at time 100.
    apply(&mut s, 7, 100, subject(100));
    apply(&mut s, 9, 100, client(100));
    // A token minted below the cut-off's revision is revoked whatever
    // its iat (a minting clock ahead of the revoking node's)...
    assert!(s.is_revoked(&[], "alice", &["x"], 5_000, Some(6)));
    assert!(s.is_revoked(&[], "bob", &["svc"], 5_000, Some(8)));
    // ...and one minted at or above it is valid whatever its iat (a
    // minting clock behind).
    assert!(!s.is_revoked(&[], "alice", &["x"], 1, Some(7)));
    assert!(!s.is_revoked(&[], "alice", &["x"], 1, Some(8)));
    assert!(!s.is_revoked(&[], "bob", &["svc"], 1, Some(9)));
    // No claim: the iat rule.
    assert!(s.is_revoked(&[], "alice", &["x"], 100, None));
    assert!(!s.is_revoked(&[], "alice", &["x"], 101, None));
    // A cut-off held before revisions were recorded (read from old state
    // with the serde default) uses the iat rule even for new tokens.
    let old: Cutoff = serde_json::from_str(r#"{"cutoff":100,"until":200}"#).unwrap();
    assert_eq!(old.revision, 0);
    s.subjects.insert("carol".into(), old);
    assert!(s.is_revoked(&[], "carol", &["x"], 100, Some(1_000)));
    assert!(!s.is_revoked(&[], "carol", &["x"], 101, Some(1)));
    // The watch feed and a watcher's snapshot carry the revision.
    let revs: Vec<u64> = s
        .revocations()
        .iter()
        .filter_map(|r| match r {
            Revocation::Subject { revision, .. } | Revocation::Client { revision, .. } => {
                Some(*revision)
            }
            Revocation::Jti { .. } => None,
        })
        .collect();
    assert_eq!(revs, [7, 0, 9]);
}

/// Two revocations of the same subject in one batch entry (two nodes'
/// requests joined by the leader's proposer), the second with the same
/// cut-off time but a later `until` (a node with longer token settings).
/// The state kept the later `until`, the event the earlier one: a
/// subscriber following the stream forgot the cut-off before the
/// cluster did, while one that started from a snapshot kept it.
#[test]
fn a_batched_cutoff_whose_until_grew_was_streamed_with_the_earlier_until() {
    for client in [false, true] {
        let op = |cutoff, until| cutoff_op(client, cutoff, until);
        let mut s = State::default();
        let mut t = Touched::default();
        let batch = Op::Batch {
            ops: vec![op(100, 3_800), op(100, 7_400)],
        };
        s.apply(&entry(5, 100, batch), &mut t);
        let held = if client {
            s.clients["c1"]
        } else {
            s.subjects["c1"]
        };
        assert_eq!(held.until, 7_400, "the state keeps the later until");
        // What a subscriber following the stream holds: the entries of
        // every event, each raised to the maximum (as the client cache does).
        let streamed_until = t
            .events
            .iter()
            .flat_map(|e| e.revocations.iter())
            .filter_map(|r| match r {
                Revocation::Subject { until, .. } | Revocation::Client { until, .. } => {
                    Some(*until)
                }
                Revocation::Jti { .. } => None,
            })
            .max();
        // What a subscriber starting from a snapshot holds.
        let snapshot_until = s.revocations().iter().find_map(|r| match r {
            Revocation::Subject { until, .. } | Revocation::Client { until, .. } => Some(*until),
            Revocation::Jti { .. } => None,
        });
        assert_eq!(
            streamed_until, snapshot_until,
            "client={client}: the stream and a snapshot disagree on when the cut-off may be forgotten"
        );
    }
}

/// A differential check. A subscriber that follows every event (raising
/// entries to the maximum, as the client cache does, and purging with
/// each Purge's time) holds exactly what a snapshot of the state holds,
/// and a node that installed that snapshot holds the same state as the
/// one that applied the log.
#[test]
fn the_stream_a_snapshot_and_the_log_agree_on_random_histories() {
    use std::collections::BTreeMap as M;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..300 {
        let mut s = State::default();
        // key -> (cutoff, until, revision); jti -> until
        let mut cuts: M<(bool, String), (u64, u64, u64)> = M::new();
        let mut jt: M<String, u64> = M::new();
        let mut now = 1_000;
        for index in 1..40u64 {
            now += rnd(30);
            let one = |rnd: &mut dyn FnMut(u64) -> u64| -> Op {
                let name = format!("n{}", rnd(3));
                let cutoff = now - rnd(5);
                let until = cutoff + 100 + rnd(200);
                match rnd(3) {
                    0 => Op::RevokeSubject {
                        subject: name,
                        cutoff,
                        until,
                    },
                    1 => Op::RevokeClient {
                        client: name,
                        cutoff,
                        until,
                    },
                    _ => jtis(&[(name.as_str(), until), ("j", now + rnd(300))]),
                }
            };
            let op = match rnd(4) {
                0 => Op::Purge,
                1 => Op::Batch {
                    ops: (0..1 + rnd(4)).map(|_| one(&mut rnd)).collect(),
                },
                _ => one(&mut rnd),
            };
            let mut t = Touched::default();
            s.apply(&entry(index, now, op.clone()), &mut t);
            if matches!(op, Op::Purge) {
                cuts.retain(|_, c| c.1 >= now);
                jt.retain(|_, u| *u >= now);
            }
            for ev in &t.events {
                for r in &ev.revocations {
                    match r {
                        Revocation::Jti { jti, until } => {
                            let u = jt.entry(jti.clone()).or_insert(*until);
                            *u = (*u).max(*until);
                        }
                        Revocation::Subject {
                            subject: n,
                            cutoff,
                            until,
                            revision,
                        }
                        | Revocation::Client {
                            client: n,
                            cutoff,
                            until,
                            revision,
                        } => {
                            let k = (matches!(r, Revocation::Client { .. }), n.clone());
                            let c = cuts.entry(k).or_insert((*cutoff, *until, *revision));
                            *c = (c.0.max(*cutoff), c.1.max(*until), c.2.max(*revision));
                        }
                    }
                }
            }
        }
        let mut snap_cuts: M<(bool, String), (u64, u64, u64)> = M::new();
        let mut snap_jt: M<String, u64> = M::new();
        for r in s.revocations() {
            match r {
                Revocation::Jti { jti, until } => {
                    snap_jt.insert(jti, until);
                }
                Revocation::Subject {
                    subject,
                    cutoff,
                    until,
                    revision,
                } => {
                    snap_cuts.insert((false, subject), (cutoff, until, revision));
                }
                Revocation::Client {
                    client,
                    cutoff,
                    until,
                    revision,
                } => {
                    snap_cuts.insert((true, client), (cutoff, until, revision));
                }
            }
        }
        assert_eq!(jt, snap_jt, "round {round}: jtis");
        assert_eq!(
            cuts, snap_cuts,
            "round {round}: cut-offs (stream vs snapshot)"
        );
        let mut bytes = Vec::new();
        s.export().write(&mut bytes).unwrap();
        let back = body::read(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, s, "round {round}: installed snapshot vs applied log");
    }
}

#[test]
fn put_policy_versions_by_index() {
    let mut s = State::default();
    assert_eq!(s.policy, None);
    assert_eq!(apply(&mut s, 7, 0, Op::PutPolicy { text: "p1".into() }), 1);
    assert_eq!(
        s.policy,
        Some(Policy {
            version: 7,
            text: "p1".into()
        })
    );
    assert_eq!(apply(&mut s, 9, 0, Op::PutPolicy { text: "p1".into() }), 1);
    assert_eq!(s.policy.as_ref().map(|p| p.version), Some(9));
}

#[test]
fn keys_add_is_idempotent_and_set_state_tolerates_unknown() {
    let mut s = State::default();
    assert_eq!(
        apply(
            &mut s,
            2,
            0,
            Op::AddKey {
                key: key("k1", KeyState::Pending)
            }
        ),
        1
    );
    assert_eq!(s.keys_version, 2);
    // Re-adding (even with different content) changes nothing.
    assert_eq!(
        apply(
            &mut s,
            3,
            0,
            Op::AddKey {
                key: key("k1", KeyState::Active)
            }
        ),
        0
    );
    assert_eq!(s.keys["k1"].state, KeyState::Pending);
    assert_eq!(s.keys_version, 2);
    let set = |kid: &str, state| Op::SetKeyState {
        kid: kid.into(),
        state,
    };
    assert_eq!(apply(&mut s, 4, 0, set("k1", KeyState::Active)), 1);
    assert_eq!(s.keys["k1"].state, KeyState::Active);
    assert_eq!(s.keys_version, 4);
    assert_eq!(apply(&mut s, 5, 0, set("k1", KeyState::Active)), 0);
    assert_eq!(apply(&mut s, 6, 0, set("nope", KeyState::Retired)), 0);
    assert_eq!(s.keys_version, 4);
    assert_eq!(s.keys.len(), 1);
}

#[test]
fn purge_removes_entries_strictly_before_at() {
    let mut s = State::default();
    apply(
        &mut s,
        1,
        0,
        jtis(&[("old", 99), ("edge", 100), ("new", 101)]),
    );
    for (i, (subject, until)) in [("s-old", 50), ("s-edge", 100)].into_iter().enumerate() {
        apply(
            &mut s,
            2 + i as u64,
            0,
            Op::RevokeSubject {
                subject: subject.into(),
                cutoff: 1,
                until,
            },
        );
    }
    apply(
        &mut s,
        4,
        0,
        Op::RevokeClient {
            client: "c-old".into(),
            cutoff: 1,
            until: 10,
        },
    );
    let mut t = Touched::default();
    let r = s.apply(&entry(5, 100, Op::Purge), &mut t);
    assert_eq!(r.changed, 3);
    let mut left: Vec<String> = s.jtis.iter().map(|(j, _)| j).collect();
    left.sort();
    assert_eq!(left, ["edge", "new"]);
    assert_eq!(s.subjects.keys().collect::<Vec<_>>(), ["s-edge"]);
    assert!(s.clients.is_empty());
    assert!(t.events.is_empty(), "a purge is no revocation event");
    // Purging again removes nothing.
    assert_eq!(apply(&mut s, 6, 100, Op::Purge), 0);
}

#[test]
fn blank_and_membership_entries_answer_with_their_index() {
    let mut s = State::default();
    let mut t = Touched::default();
    let r = s.apply(&Entry::new_blank(log_id(1, 1, 1)), &mut t);
    assert_eq!(
        r,
        CommandResponse {
            revision: 1,
            changed: 0,
            ..Default::default()
        }
    );
    let m = Membership::new(vec![BTreeSet::from([1, 2])], None);
    let r = s.apply(&Entry::new_membership(log_id(2, 1, 2), m.clone()), &mut t);
    assert_eq!(
        r,
        CommandResponse {
            revision: 2,
            changed: 0,
            ..Default::default()
        }
    );
    assert_eq!(s.last_applied, Some(log_id(2, 1, 2)));
    assert_eq!(
        s.last_membership,
        StoredMembership::new(Some(log_id(2, 1, 2)), m)
    );
    assert_eq!(s.revision(), 2);
}

#[test]
fn is_revoked_rules() {
    let mut s = State::default();
    apply(&mut s, 1, 0, jtis(&[("j1", 100)]));
    apply(
        &mut s,
        2,
        0,
        Op::RevokeSubject {
            subject: "alice".into(),
            cutoff: 50,
            until: 100,
        },
    );
    apply(
        &mut s,
        3,
        0,
        Op::RevokeClient {
            client: "svc".into(),
            cutoff: 60,
            until: 100,
        },
    );
    // Own jti or any ancestor.
    assert!(s.is_revoked(&["j1"], "bob", &["other"], 999, None));
    assert!(s.is_revoked(&["x", "j1"], "bob", &["other"], 999, None));
    assert!(!s.is_revoked(&["x", "y"], "bob", &["other"], 999, None));
    assert!(!s.is_revoked(&[], "bob", &["other"], 0, None));
    // Subject cut-off: iat <= cutoff is revoked.
    assert!(s.is_revoked(&[], "alice", &["other"], 50, None));
    assert!(s.is_revoked(&[], "alice", &["other"], 0, None));
    assert!(!s.is_revoked(&[], "alice", &["other"], 51, None));
    // Client cut-off likewise; subject and client are not interchangeable.
    assert!(s.is_revoked(&[], "bob", &["svc"], 60, None));
    assert!(!s.is_revoked(&[], "bob", &["svc"], 61, None));
    assert!(!s.is_revoked(&[], "svc", &["alice"], 1, None));
    // An ancestor's client is cut off: the token is too.
    assert!(s.is_revoked(&[], "bob", &["other", "svc"], 60, None));
    assert!(!s.is_revoked(&[], "bob", &["other", "svc"], 61, None));
}

#[test]
fn apply_is_deterministic() {
    let ops = [
        jtis(&[("a", 5), ("b", 50)]),
        Op::AddKey {
            key: key("k", KeyState::Pending),
        },
        Op::Purge,
        Op::PutPolicy { text: "p".into() },
    ];
    let run = || {
        let mut s = State::default();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut s, i as u64 + 1, 10, op.clone());
        }
        s
    };
    assert_eq!(run(), run());
    let bytes = |s: State| {
        let mut out = Vec::new();
        s.export().write(&mut out).unwrap();
        out
    };
    assert_eq!(bytes(run()), bytes(run()));
}
