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
/// as a change even within the same second; a later purge time counts too
/// (within one batch entry the revision stays), or the event would carry an
/// earlier `until` than the state and a snapshot.
fn raise_cutoff(map: &mut BTreeMap<String, Cutoff>, key: &str, new: Cutoff) -> bool {
    match map.get_mut(key) {
        Some(c) => {
            let moved = new.cutoff > c.cutoff || new.revision > c.revision || new.until > c.until;
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
mod tests;
