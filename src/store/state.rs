//! The applied state in memory and the rules that change it.
//!
//! Everything here is pure: applying an entry reads time only from the
//! command, so every replica computes the same state. The caller records the
//! keys an entry touched ([`Touched`]) so that only those are written to sled.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

mod keys;

use super::chunk;
use super::db::{self, Db};
use super::feed::Revocation;
use super::StoreError;
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

/// The whole replicated state. `BTreeMap`s keep snapshots byte-for-byte
/// deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
    pub(crate) jtis: BTreeMap<String, u64>,
    pub(crate) subjects: BTreeMap<String, Cutoff>,
    pub(crate) clients: BTreeMap<String, Cutoff>,
    pub(crate) keys: BTreeMap<String, KeyRecord>,
    /// Log index of the last change to `keys`; 0 if never changed.
    pub(crate) keys_version: u64,
    pub(crate) policy: Option<Policy>,
    /// Names this cluster in backups: derived from the first signing key
    /// ever added (a random `kid`), so every node derives the same id.
    #[serde(default)]
    pub(crate) cluster_id: String,
}

/// The keys of each tree that applying entries changed.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// What each applied command revoked, for the watch feed.
    pub(crate) events: Vec<super::feed::RevocationEvent>,
    jtis: BTreeSet<String>,
    subjects: BTreeSet<String>,
    clients: BTreeSet<String>,
    keys: BTreeSet<String>,
    policy: bool,
}

impl Touched {
    /// Records revocations of the entry at `revision`: one event per log
    /// entry, however many operations a batch entry carries.
    fn event(&mut self, revision: u64, revocations: Vec<Revocation>) {
        if revocations.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(last) if last.revision == revision => last.revocations.extend(revocations),
            _ => self.events.push(super::feed::RevocationEvent {
                revision,
                revocations,
            }),
        }
    }

    /// Every key present in `state`: with the keys of the state being
    /// replaced, this rewrites a tree completely.
    pub(crate) fn add_all(&mut self, state: &State) {
        self.jtis.extend(state.jtis.keys().cloned());
        self.subjects.extend(state.subjects.keys().cloned());
        self.clients.extend(state.clients.keys().cloned());
        self.keys.extend(state.keys.keys().cloned());
        self.policy = true;
    }
}

// Keys of the meta and policy trees.
const K_LAST_APPLIED: &str = "last_applied";
const K_LAST_MEMBERSHIP: &str = "last_membership";
const K_KEYS_VERSION: &str = "keys_version";
const K_CLUSTER_ID: &str = "cluster_id";

/// The cluster id derived from the first key's `kid`: 16 hex digits.
pub(crate) fn cluster_id_from(kid: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kid.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}
const K_POLICY: &str = "current";

impl State {
    /// Applies one entry, recording what it changed in `touched`.
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
                    let until = match self.jtis.get_mut(&r.jti) {
                        Some(until) if r.until > *until => {
                            *until = r.until;
                            *until
                        }
                        Some(_) => continue,
                        None => {
                            self.jtis.insert(r.jti.clone(), r.until);
                            new += 1;
                            r.until
                        }
                    };
                    touched.jtis.insert(r.jti.clone());
                    // A jti listed twice in one command: one entry, latest until.
                    event.retain(|e| !matches!(e, Revocation::Jti { jti, .. } if *jti == r.jti));
                    event.push(Revocation::Jti {
                        jti: r.jti.clone(),
                        until,
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
                let moved = raise_cutoff(
                    &mut self.subjects,
                    subject,
                    Cutoff {
                        cutoff: *cutoff,
                        until: *until,
                        revision: index,
                    },
                    &mut touched.subjects,
                );
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
                let moved = raise_cutoff(
                    &mut self.clients,
                    client,
                    Cutoff {
                        cutoff: *cutoff,
                        until: *until,
                        revision: index,
                    },
                    &mut touched.clients,
                );
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
                touched.policy = true;
                1
            }
            Op::AddKey { key } => {
                if self.keys.contains_key(&key.kid) {
                    return 0;
                }
                self.keys.insert(key.kid.clone(), key.clone());
                touched.keys.insert(key.kid.clone());
                self.keys_version = index;
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id_from(&key.kid);
                }
                1
            }
            Op::SetKeyState { kid, state } => match self.keys.get_mut(kid) {
                Some(key) if key.state != *state => {
                    key.state = *state;
                    touched.keys.insert(kid.clone());
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
            | Op::ResealKeys { .. } => keys::apply(self, index, at, op, &mut touched.keys),
            // The proposer never nests batches; one would change nothing.
            Op::Batch { .. } => 0,
            Op::Purge => {
                let mut removed = 0;
                removed += purge_map(&mut self.jtis, |until| *until < at, &mut touched.jtis);
                removed += purge_map(&mut self.subjects, |c| c.until < at, &mut touched.subjects);
                removed += purge_map(&mut self.clients, |c| c.until < at, &mut touched.clients);
                removed
            }
        }
    }

    /// True if any of `jtis` is revoked, or the subject's or the client's
    /// cut-off revokes a token minted at revision `rev` (or, without one, at
    /// `iat`): see [`cutoff_revokes`].
    pub(crate) fn is_revoked(
        &self,
        jtis: &[&str],
        subject: &str,
        client: &str,
        iat: u64,
        rev: Option<u64>,
    ) -> bool {
        let hit = |c: &Cutoff| cutoff_revokes(c.cutoff, c.revision, iat, rev);
        jtis.iter().any(|j| self.jtis.contains_key(*j))
            || self.subjects.get(subject).is_some_and(hit)
            || self.clients.get(client).is_some_and(hit)
    }

    /// Every active revocation entry, for a watcher's snapshot.
    pub(crate) fn revocations(&self) -> Vec<Revocation> {
        let mut out = Vec::with_capacity(self.revocation_count());
        out.extend(self.jtis.iter().map(|(jti, until)| Revocation::Jti {
            jti: jti.clone(),
            until: *until,
        }));
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

    /// sled batches for the state-machine trees that write the `touched`
    /// keys from this state (present: insert, absent: remove) and the meta.
    pub(crate) fn batches(&self, touched: &Touched) -> Result<SmBatches, StoreError> {
        Ok(SmBatches {
            jtis: map_batch(&self.jtis, &touched.jtis)?,
            subjects: map_batch(&self.subjects, &touched.subjects)?,
            clients: map_batch(&self.clients, &touched.clients)?,
            keys: map_batch(&self.keys, &touched.keys)?,
            policy: {
                let mut b = sled::Batch::default();
                if touched.policy {
                    match &self.policy {
                        // Chunked: a policy can exceed sled's blob threshold.
                        Some(p) => chunk::put(
                            &mut b,
                            K_POLICY.as_bytes(),
                            &db::encode(p)?,
                            chunk::SWEEP_CHUNKS,
                        ),
                        None => chunk::remove(&mut b, K_POLICY.as_bytes(), chunk::SWEEP_CHUNKS),
                    }
                }
                b
            },
            meta: {
                let mut b = sled::Batch::default();
                b.insert(K_LAST_APPLIED, db::encode(&self.last_applied)?);
                b.insert(K_LAST_MEMBERSHIP, db::encode(&self.last_membership)?);
                b.insert(K_KEYS_VERSION, db::encode(&self.keys_version)?);
                b.insert(K_CLUSTER_ID, db::encode(&self.cluster_id)?);
                b
            },
        })
    }

    /// Loads the state persisted in the state-machine trees. Blocking.
    pub(crate) fn load(db: &Db) -> Result<State, StoreError> {
        let mut st = State {
            last_applied: db::get(&db.sm_meta, db::T_SM_META, K_LAST_APPLIED)?.flatten(),
            last_membership: db::get(&db.sm_meta, db::T_SM_META, K_LAST_MEMBERSHIP)?
                .unwrap_or_default(),
            keys_version: db::get(&db.sm_meta, db::T_SM_META, K_KEYS_VERSION)?.unwrap_or(0),
            jtis: load_map(&db.sm_jtis, db::T_SM_JTIS)?,
            subjects: load_map(&db.sm_subjects, db::T_SM_SUBJECTS)?,
            clients: load_map(&db.sm_clients, db::T_SM_CLIENTS)?,
            keys: load_map(&db.sm_keys, db::T_SM_KEYS)?,
            policy: chunk::get(&db.sm_policy, db::T_SM_POLICY, K_POLICY.as_bytes())?
                .map(|bytes| db::decode(db::T_SM_POLICY, &bytes))
                .transpose()?,
            cluster_id: db::get(&db.sm_meta, db::T_SM_META, K_CLUSTER_ID)?.unwrap_or_default(),
        };
        if st.cluster_id.is_empty() {
            // State written before cluster ids: the oldest key stands in for
            // the first one (every node holds the same keys).
            if let Some(first) = st
                .keys
                .values()
                .min_by_key(|k| (k.created_at, k.kid.clone()))
            {
                st.cluster_id = cluster_id_from(&first.kid);
            }
        }
        Ok(st)
    }
}

/// Writes for the state-machine trees, applied together in one transaction
/// so that the state and its `last_applied` always move together.
pub(crate) struct SmBatches {
    jtis: sled::Batch,
    subjects: sled::Batch,
    clients: sled::Batch,
    keys: sled::Batch,
    policy: sled::Batch,
    meta: sled::Batch,
}

impl SmBatches {
    /// Applies the batches atomically, plus `snapshot` on the snapshot tree
    /// (used by snapshot install). Blocking; not durable on its own.
    pub(crate) fn commit(self, db: &Db, snapshot: Option<&sled::Batch>) -> Result<(), StoreError> {
        let empty = sled::Batch::default();
        let trees = [
            &db.sm_jtis,
            &db.sm_subjects,
            &db.sm_clients,
            &db.sm_keys,
            &db.sm_policy,
            &db.sm_meta,
            &db.snapshot,
        ];
        let batches = [
            &self.jtis,
            &self.subjects,
            &self.clients,
            &self.keys,
            &self.policy,
            &self.meta,
            snapshot.unwrap_or(&empty),
        ];
        use sled::Transactional;
        trees
            .as_slice()
            .transaction(|views| {
                for (view, batch) in views.iter().zip(batches) {
                    view.apply_batch(batch)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<Infallible>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(never) => match never {},
            })
    }
}

/// Raises `key`'s cut-off time, revision and purge time to `new`'s (each
/// only ever moves forward). Returns whether the cut-off moved: a later
/// revocation revokes the tokens minted since the earlier one, so it counts
/// as a change even within the same second.
fn raise_cutoff(
    map: &mut BTreeMap<String, Cutoff>,
    key: &str,
    new: Cutoff,
    touched: &mut BTreeSet<String>,
) -> bool {
    match map.get_mut(key) {
        Some(c) => {
            let moved = new.cutoff > c.cutoff || new.revision > c.revision;
            if moved || new.until > c.until {
                c.cutoff = c.cutoff.max(new.cutoff);
                c.until = c.until.max(new.until);
                c.revision = c.revision.max(new.revision);
                touched.insert(key.to_owned());
            }
            moved
        }
        None => {
            map.insert(key.to_owned(), new);
            touched.insert(key.to_owned());
            true
        }
    }
}

/// Removes the entries matching `expired`; returns how many.
fn purge_map<V>(
    map: &mut BTreeMap<String, V>,
    expired: impl Fn(&V) -> bool,
    touched: &mut BTreeSet<String>,
) -> u64 {
    let before = map.len();
    map.retain(|k, v| {
        if expired(v) {
            touched.insert(k.clone());
            false
        } else {
            true
        }
    });
    (before - map.len()) as u64
}

fn map_batch<V: Serialize>(
    map: &BTreeMap<String, V>,
    keys: &BTreeSet<String>,
) -> Result<sled::Batch, StoreError> {
    let mut b = sled::Batch::default();
    for k in keys {
        match map.get(k) {
            Some(v) => b.insert(k.as_bytes(), db::encode(v)?),
            None => b.remove(k.as_bytes()),
        }
    }
    Ok(b)
}

fn load_map<V: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<BTreeMap<String, V>, StoreError> {
    let mut map = BTreeMap::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        let k = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
            tree: name,
            reason: "key is not UTF-8".into(),
        })?;
        map.insert(k, db::decode(name, &v)?);
    }
    Ok(map)
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
        assert!(s.is_revoked(&["b"], "x", "y", 0, None));
        assert!(s.is_revoked(&[], "s", "y", 10, None));
    }

    #[test]
    fn revoke_jtis_counts_new_and_keeps_max_until() {
        let mut s = State::default();
        assert_eq!(apply(&mut s, 1, 0, jtis(&[("a", 100), ("b", 50)])), 2);
        // Repeat: nothing new; a later until is kept, an earlier one ignored.
        assert_eq!(apply(&mut s, 2, 0, jtis(&[("a", 200), ("b", 10)])), 0);
        assert_eq!(s.jtis.get("a"), Some(&200));
        assert_eq!(s.jtis.get("b"), Some(&50));
        // A duplicate inside one command counts once.
        assert_eq!(
            apply(&mut s, 3, 0, jtis(&[("c", 1), ("c", 5), ("a", 1)])),
            1
        );
        assert_eq!(s.jtis.get("c"), Some(&5));
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
        assert!(s.is_revoked(&[], "alice", "x", 5_000, Some(6)));
        assert!(s.is_revoked(&[], "bob", "svc", 5_000, Some(8)));
        // ...and one minted at or above it is valid whatever its iat (a
        // minting clock behind).
        assert!(!s.is_revoked(&[], "alice", "x", 1, Some(7)));
        assert!(!s.is_revoked(&[], "alice", "x", 1, Some(8)));
        assert!(!s.is_revoked(&[], "bob", "svc", 1, Some(9)));
        // No claim: the iat rule.
        assert!(s.is_revoked(&[], "alice", "x", 100, None));
        assert!(!s.is_revoked(&[], "alice", "x", 101, None));
        // A cut-off held before revisions were recorded (read from old state
        // with the serde default) uses the iat rule even for new tokens.
        let old: Cutoff = serde_json::from_str(r#"{"cutoff":100,"until":200}"#).unwrap();
        assert_eq!(old.revision, 0);
        s.subjects.insert("carol".into(), old);
        assert!(s.is_revoked(&[], "carol", "x", 100, Some(1_000)));
        assert!(!s.is_revoked(&[], "carol", "x", 101, Some(1)));
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
        assert_eq!(s.jtis.keys().collect::<Vec<_>>(), ["edge", "new"]);
        assert_eq!(s.subjects.keys().collect::<Vec<_>>(), ["s-edge"]);
        assert!(s.clients.is_empty());
        assert_eq!(t.jtis, BTreeSet::from(["old".to_owned()]));
        assert_eq!(t.subjects, BTreeSet::from(["s-old".to_owned()]));
        assert_eq!(t.clients, BTreeSet::from(["c-old".to_owned()]));
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
        assert!(s.is_revoked(&["j1"], "bob", "other", 999, None));
        assert!(s.is_revoked(&["x", "j1"], "bob", "other", 999, None));
        assert!(!s.is_revoked(&["x", "y"], "bob", "other", 999, None));
        assert!(!s.is_revoked(&[], "bob", "other", 0, None));
        // Subject cut-off: iat <= cutoff is revoked.
        assert!(s.is_revoked(&[], "alice", "other", 50, None));
        assert!(s.is_revoked(&[], "alice", "other", 0, None));
        assert!(!s.is_revoked(&[], "alice", "other", 51, None));
        // Client cut-off likewise; subject and client are not interchangeable.
        assert!(s.is_revoked(&[], "bob", "svc", 60, None));
        assert!(!s.is_revoked(&[], "bob", "svc", 61, None));
        assert!(!s.is_revoked(&[], "svc", "alice", 1, None));
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
        assert_eq!(
            serde_json::to_vec(&run()).unwrap(),
            serde_json::to_vec(&run()).unwrap()
        );
    }
}
