//! The applied state in memory and the rules that change it.
//!
//! Everything here is pure: applying an entry reads time only from the
//! command, so every replica computes the same state. The state lives only
//! in memory; what survives a restart is its latest snapshot (see
//! [`body`] for the encoding) plus the Raft log after it, re-applied at
//! start-up (see the [`store`](super) module docs). Revoked jtis, the bulk
//! of it, are held compactly ([`jtis`]).

use std::collections::BTreeMap;

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

pub(crate) mod body;
mod jtis;
mod keys;
pub(crate) mod legacy;

#[cfg(test)]
pub(crate) use self::jtis::encode_id;
pub(crate) use self::jtis::Jtis;
use self::jtis::Raised;
use super::feed::Revocation;
use crate::raft::{CommandResponse, Entry, KeyRecord, LogId, Op, StoredMembership};
use crate::token::cutoff_revokes;

/// A subject's or client's revocation cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cutoff {
    /// Tokens without a `tsr_rev` claim and with `iat <= cutoff` are
    /// inactive.
    pub(crate) cutoff: u64,
    /// When the entry may be purged.
    pub(crate) until: u64,
    /// Log index of the last revocation that raised this cut-off: tokens
    /// minted by a node that had applied less (`tsr_rev < revision`) are
    /// inactive. 0 for a cut-off stored before cut-offs recorded it (then
    /// only the `iat` rule applies); the serde default reads such state.
    #[serde(default)]
    pub(crate) revision: u64,
}

/// A policy document and the log index it was put at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Policy {
    /// Log index of the `PutPolicy` command.
    pub(crate) version: u64,
    /// Cedar policy text.
    pub(crate) text: String,
}

/// The whole replicated state. Subjects, clients and keys are few and kept
/// ordered; jtis are many and kept in hash maps ([`Jtis`]), sorted only
/// when a snapshot is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
    pub(crate) jtis: Jtis,
    pub(crate) subjects: BTreeMap<String, Cutoff>,
    pub(crate) clients: BTreeMap<String, Cutoff>,
    pub(crate) keys: BTreeMap<String, KeyRecord>,
    /// Log index of the last change to `keys`; 0 if never changed.
    pub(crate) keys_version: u64,
    pub(crate) policy: Option<Policy>,
    /// Names this cluster in backups: derived from the first signing key
    /// ever added (a random `kid`), so every node derives the same id.
    pub(crate) cluster_id: String,
}

/// What applying entries produced besides their responses.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// What each applied command revoked, for the watch feed.
    pub(crate) events: Vec<super::feed::RevocationEvent>,
}

impl Touched {
    /// Records revocations of the entry at `revision`: one event per log
    /// entry, however many operations a batch entry carries. An
    /// idempotent repeat changed nothing, and still gets its (empty) event:
    /// its caller is answered this revision, and a subscriber's stream must
    /// reach it for read-your-writes (`wait_for_revision`).
    fn event(&mut self, revision: u64, revocations: Vec<Revocation>) {
        match self.events.last_mut() {
            Some(last) if last.revision == revision => last.revocations.extend(revocations),
            _ => self.events.push(super::feed::RevocationEvent {
                revision,
                revocations,
            }),
        }
    }
}

/// The cluster id derived from the first key's `kid`: 16 hex digits.
pub(crate) fn cluster_id_from(kid: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kid.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    /// Applies one entry, recording the revocation events it made.
    pub(crate) fn apply(&mut self, entry: &Entry, touched: &mut Touched) -> CommandResponse {
        let index = entry.log_id.index;
        self.last_applied = Some(entry.log_id);
        let changed = match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Membership(m) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                0
            }
            EntryPayload::Normal(cmd) => match &cmd.op {
                Op::Batch { ops } => {
                    let each: Vec<u64> = ops
                        .iter()
                        .map(|op| self.apply_op(index, cmd.at, op, touched))
                        .collect();
                    return CommandResponse {
                        revision: index,
                        changed: each.iter().sum(),
                        changed_each: each,
                    };
                }
                op => self.apply_op(index, cmd.at, op, touched),
            },
        };
        CommandResponse {
            revision: index,
            changed,
            changed_each: Vec::new(),
        }
    }

    fn apply_op(&mut self, index: u64, at: u64, op: &Op, touched: &mut Touched) -> u64 {
        match op {
            Op::RevokeJtis { jtis } => {
                let mut new = 0;
                let mut event: Vec<Revocation> = Vec::new();
                for r in jtis {
                    match self.jtis.raise(&r.jti, r.until) {
                        Raised::Unchanged => continue,
                        Raised::New => new += 1,
                        Raised::Later => {}
                    }
                    // A jti listed twice in one command: one entry, latest
                    // until (raise only moves it forward).
                    event.retain(|e| !matches!(e, Revocation::Jti { jti, .. } if *jti == r.jti));
                    event.push(Revocation::Jti {
                        jti: r.jti.clone(),
                        until: r.until,
                    });
                }
                touched.event(index, event);
                new
            }
            Op::RevokeSubject {
                subject,
                cutoff,
                until,
            } => {
                let new = Cutoff {
                    cutoff: *cutoff,
                    until: *until,
                    revision: index,
                };
                let moved = raise_cutoff(&mut self.subjects, subject, new);
                if !moved {
                    touched.event(index, Vec::new());
                }
                if moved {
                    if let Some(c) = self.subjects.get(subject) {
                        let r = Revocation::Subject {
                            subject: subject.clone(),
                            cutoff: c.cutoff,
                            until: c.until,
                            revision: c.revision,
                        };
                        touched.event(index, vec![r]);
                    }
                }
                u64::from(moved)
            }
            Op::RevokeClient {
                client,
                cutoff,
                until,
            } => {
                let new = Cutoff {
                    cutoff: *cutoff,
                    until: *until,
                    revision: index,
                };
                let moved = raise_cutoff(&mut self.clients, client, new);
                if !moved {
                    touched.event(index, Vec::new());
                }
                if moved {
                    if let Some(c) = self.clients.get(client) {
                        let r = Revocation::Client {
                            client: client.clone(),
                            cutoff: c.cutoff,
                            until: c.until,
                            revision: c.revision,
                        };
                        touched.event(index, vec![r]);
                    }
                }
                u64::from(moved)
            }
            Op::PutPolicy { text } => {
                self.policy = Some(Policy {
                    version: index,
                    text: text.clone(),
                });
                1
            }
            Op::AddKey { key } => {
                if self.keys.contains_key(&key.kid) {
                    return 0;
                }
                self.keys.insert(key.kid.clone(), key.clone());
                self.keys_version = index;
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id_from(&key.kid);
                }
                1
            }
            Op::SetKeyState { kid, state } => match self.keys.get_mut(kid) {
                Some(key) if key.state != *state => {
                    key.state = *state;
                    self.keys_version = index;
                    1
                }
                // Same state again, or a kid this ring never had: an
                // idempotent no-op rather than an error, so a retried or
                // raced command cannot wedge the log.
                _ => 0,
            },
            Op::AddPendingKey { .. }
            | Op::ActivateKey { .. }
            | Op::RemoveKey { .. }
            | Op::ResealKeys { .. } => keys::apply(self, index, at, op),
            // The proposer never nests batches; one would change nothing.
            Op::Batch { .. } => 0,
            Op::Purge => {
                let before = self.subjects.len() + self.clients.len();
                self.subjects.retain(|_, c| c.until >= at);
                self.clients.retain(|_, c| c.until >= at);
                let cutoffs = before - self.subjects.len() - self.clients.len();
                self.jtis.purge(at) + cutoffs as u64
            }
        }
    }

    /// True if any of `jtis` is revoked, or the subject's or one of the
    /// `clients`' cut-off (the token's own and its ancestors') revokes a
    /// token minted at revision `rev` (or, without one, at `iat`): see
    /// [`cutoff_revokes`].
    pub(crate) fn is_revoked(
        &self,
        jtis: &[&str],
        subject: &str,
        clients: &[&str],
        iat: u64,
        rev: Option<u64>,
    ) -> bool {
        let hit = |c: &Cutoff| cutoff_revokes(c.cutoff, c.revision, iat, rev);
        jtis.iter().any(|j| self.jtis.contains(j))
            || self.subjects.get(subject).is_some_and(hit)
            || clients
                .iter()
                .any(|client| self.clients.get(*client).is_some_and(hit))
    }

    /// Every active revocation entry, for a watcher's snapshot: jtis in no
    /// particular order, then subject and client cut-offs by name.
    pub(crate) fn revocations(&self) -> Vec<Revocation> {
        let mut out = Vec::with_capacity(self.revocation_count());
        out.extend(
            self.jtis
                .iter()
                .map(|(jti, until)| Revocation::Jti { jti, until }),
        );
        out.extend(self.subjects.iter().map(|(s, c)| Revocation::Subject {
            subject: s.clone(),
            cutoff: c.cutoff,
            until: c.until,
            revision: c.revision,
        }));
        out.extend(self.clients.iter().map(|(s, c)| Revocation::Client {
            client: s.clone(),
            cutoff: c.cutoff,
            until: c.until,
            revision: c.revision,
        }));
        out
    }

    /// Number of revocation entries of every kind.
    pub(crate) fn revocation_count(&self) -> usize {
        self.jtis.len() + self.subjects.len() + self.clients.len()
    }

    /// The applied revision: last applied log index, 0 if none.
    pub(crate) fn revision(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

/// Raises `key`'s cut-off time, revision and purge time to `new`'s (each
/// only ever moves forward). Returns whether the cut-off moved: a later
/// revocation revokes the tokens minted since the earlier one, so it counts
/// as a change even within the same second.
fn raise_cutoff(map: &mut BTreeMap<String, Cutoff>, key: &str, new: Cutoff) -> bool {
    match map.get_mut(key) {
        Some(c) => {
            let moved = new.cutoff > c.cutoff || new.revision > c.revision;
            c.cutoff = c.cutoff.max(new.cutoff);
            c.until = c.until.max(new.until);
            c.revision = c.revision.max(new.revision);
            moved
        }
        None => {
            map.insert(key.to_owned(), new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn subject_and_client_cutoffs_only_move_forward() {
        for client in [false, true] {
            let op = |cutoff, until| {
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
            };
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
}
