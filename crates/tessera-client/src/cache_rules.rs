//! What a revocation stream's messages do to the cached set: the entries
//! and the server's revocation rules over them, the applied revision, and
//! the per-stream rules (snapshots replace the set only at their end,
//! nothing goes back in time, and nothing unreadable passes for nothing).
//! No I/O: [`super`] owns the subscription and feeds each message to
//! [`Session::step`].

use std::collections::HashMap;

use tessera_proto as pb;
use tessera_proto::revocation::Target;
use tessera_proto::watch_event::Kind;
use tessera_token::cutoff_revokes;

/// A subject or client cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cutoff {
    /// Cut-off time, for tokens without `tsr_rev`.
    pub(super) cutoff: u64,
    pub(super) until: u64,
    /// Revision the cut-off was applied at; 0 if the server did not say.
    pub(super) revision: u64,
}

/// A set of revocation entries, as the server's state holds them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Entries {
    pub(super) jtis: HashMap<String, u64>,
    pub(super) subjects: HashMap<String, Cutoff>,
    pub(super) clients: HashMap<String, Cutoff>,
}

impl Entries {
    /// Adds or raises an entry. The server sends the entry's resulting
    /// values; taking the maximum keeps the set monotonic whatever the order.
    /// An entry without a target this client knows (a newer server's kind)
    /// is [`Unreadable`]: skipping it would let the tokens it revokes pass.
    ///
    /// `event_revision` is the revision of the live event carrying the entry
    /// (0 for a snapshot entry): a cut-off in a live event was applied at
    /// that revision, which stands in for `cutoff_revision` if a server too
    /// old to send it did not.
    pub(super) fn add(&mut self, r: pb::Revocation, event_revision: u64) -> Result<(), Unreadable> {
        fn raise(map: &mut HashMap<String, Cutoff>, key: String, new: Cutoff) {
            let e = map.entry(key).or_insert(new);
            e.cutoff = e.cutoff.max(new.cutoff);
            e.until = e.until.max(new.until);
            e.revision = e.revision.max(new.revision);
        }
        let cut = Cutoff {
            cutoff: r.cutoff,
            until: r.until,
            revision: match r.cutoff_revision {
                0 => event_revision,
                rev => rev,
            },
        };
        match r.target {
            Some(Target::Jti(jti)) => {
                let until = self.jtis.entry(jti).or_insert(r.until);
                *until = (*until).max(r.until);
            }
            Some(Target::Subject(s)) => raise(&mut self.subjects, s, cut),
            Some(Target::Client(c)) => raise(&mut self.clients, c, cut),
            None => return Err(Unreadable),
        }
        Ok(())
    }

    /// Forgets entries whose `until` is before `now`, as the cluster's purge
    /// does. Returns how many.
    pub(super) fn purge(&mut self, now: u64) -> usize {
        let before = self.len();
        self.jtis.retain(|_, until| *until >= now);
        self.subjects.retain(|_, c| c.until >= now);
        self.clients.retain(|_, c| c.until >= now);
        before - self.len()
    }

    pub(super) fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len() + self.clients.len()
    }

    /// The server's rule: any of the token's jtis (its own and its
    /// ancestors') is revoked, or its subject's or client's cut-off revokes
    /// it ([`cutoff_revokes`]: by revision, or by `iat` for a token or entry
    /// without one).
    pub(super) fn is_revoked(
        &self,
        jtis: &[&str],
        subject: &str,
        clients: &[&str],
        iat: u64,
        rev: Option<u64>,
    ) -> bool {
        let hit = |c: &Cutoff| cutoff_revokes(c.cutoff, c.revision, iat, rev);
        jtis.iter().any(|j| self.jtis.contains_key(*j))
            || self.subjects.get(subject).is_some_and(hit)
            || clients
                .iter()
                .any(|client| self.clients.get(*client).is_some_and(hit))
    }
}

/// A revocation whose target this client does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unreadable;

/// The applied set and its revision.
#[derive(Debug, Default)]
pub(super) struct CacheState {
    pub(super) revision: u64,
    /// A complete set has been received (a snapshot or a replay from 0):
    /// until then the cache knows nothing and is infinitely stale.
    pub(super) synced: bool,
    /// Snapshots that replaced a synced set: each may come from a cluster
    /// whose history differs from what the cache had (a restore), so keys
    /// fetched before it may be stale too.
    pub(super) snapshots: u64,
    pub(super) entries: Entries,
    /// The revision of a message above the cache's that held something
    /// this client cannot read (a revocation of a kind newer than it, or a
    /// message of a kind it does not know). The set may lack revocations,
    /// so the cache vouches for no token until a complete snapshot at or
    /// above this revision replaces it, or until it applies the events up
    /// to it (once what blocked them has expired).
    pub(super) unreadable: Option<u64>,
}

/// Per-stream progress: a snapshot being received is kept here, apart from
/// the serving set, and dropped with the stream if it breaks half-way.
#[derive(Debug, Default)]
pub(super) struct Session {
    snapshot: Option<(Entries, u64)>,
    /// Unix seconds on the cache's clock, set before each message: an
    /// unreadable entry whose `until` has passed can revoke no valid token,
    /// so it blocks nothing (the rule [`Entries::purge`] keeps).
    pub(super) now: u64,
}

/// What one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing changed (a duplicate, a snapshot chunk, an old snapshot, a
    /// message of an unknown kind at or below the cache's revision).
    Nothing,
    /// An event was applied; the cache is at this revision.
    Applied(u64),
    /// A snapshot replaced the set; the cache is at this revision.
    Replaced(u64),
    /// A heartbeat: the node's applied revision and leader knowledge, and
    /// whether the node has applied at least what the cache has (a node
    /// behind the cache is lagging, whatever it says about its leader).
    Heartbeat {
        revision: u64,
        leader_known: bool,
        caught_up: bool,
    },
}

/// A stream that broke the protocol; the cache drops it and subscribes
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ProtocolError {
    #[error("event inside a snapshot")]
    EventDuringSnapshot,
    #[error("snapshot announced {announced} entries, {received} received")]
    SnapshotCount { announced: u64, received: u64 },
    /// See [`CacheState::unreadable`]; the cache records it before the
    /// stream is dropped.
    #[error(
        "the message at revision {revision} holds a revocation or message kind this client does not know (a newer server): every token is refused until a snapshot without it; upgrade tessera-client"
    )]
    Unreadable { revision: u64 },
}

impl Session {
    pub(super) fn step(
        &mut self,
        st: &mut CacheState,
        ev: pb::WatchEvent,
    ) -> Result<Step, ProtocolError> {
        let revision = ev.revision;
        match ev.kind {
            Some(Kind::Revoked(rs)) => {
                if self.snapshot.is_some() {
                    return Err(ProtocolError::EventDuringSnapshot);
                }
                apply_event(st, self.now, revision, rs.revocations)
            }
            Some(Kind::RevokedBatch(batch)) => {
                if self.snapshot.is_some() {
                    return Err(ProtocolError::EventDuringSnapshot);
                }
                // Each event on its own, in order, exactly as if it had
                // come in its own message.
                let mut step = Step::Nothing;
                for e in batch.events {
                    let applied = apply_event(st, self.now, e.revision, e.revocations)?;
                    if let Step::Applied(_) = applied {
                        step = applied;
                    }
                }
                Ok(step)
            }
            Some(Kind::Snapshot(rs)) => {
                let (entries, received) = self.snapshot.get_or_insert_with(Default::default);
                *received += rs.revocations.len() as u64;
                for r in rs.revocations {
                    if blocks(&r, self.now) {
                        return Err(unreadable(st, revision, revision >= st.revision));
                    }
                    // An expired unreadable entry is counted, not kept.
                    let _expired = entries.add(r, 0);
                }
                Ok(Step::Nothing)
            }
            Some(Kind::SnapshotEnd(end)) => {
                let (entries, received) = self.snapshot.take().unwrap_or_default();
                if received != end.count {
                    return Err(ProtocolError::SnapshotCount {
                        announced: end.count,
                        received,
                    });
                }
                // A node behind the cache (after a fail-over) may answer with
                // an older snapshot: keeping the newer set is right, and the
                // node's live events up to our revision will be skipped.
                if st.synced && revision < st.revision {
                    return Ok(Step::Nothing);
                }
                st.snapshots += u64::from(st.synced);
                st.entries = entries;
                st.revision = revision;
                st.synced = true;
                // Every active revocation as of `revision`, all readable:
                // whatever was unreadable below it no longer applies.
                if st.unreadable.is_some_and(|u| u <= revision) {
                    st.unreadable = None;
                }
                Ok(Step::Replaced(revision))
            }
            Some(Kind::Heartbeat(hb)) => Ok(Step::Heartbeat {
                revision,
                leader_known: hb.leader_known,
                caught_up: revision >= st.revision,
            }),
            // A kind added after this client: it may carry revocations.
            // A server sends new kinds only to subscribers that ask for
            // them (as `coalesce` does), so this is a server that broke
            // that rule; anything at or below the cache's revision cannot
            // change what it has applied.
            None if revision > st.revision => Err(unreadable(st, revision, true)),
            None => Ok(Step::Nothing),
        }
    }
}

/// Whether `r` is unreadable (a target kind this client does not know) and
/// may still revoke a valid token at `now`.
fn blocks(r: &pb::Revocation, now: u64) -> bool {
    r.target.is_none() && r.until >= now
}

/// Records that the message at `revision` could not be read (if it `counts`:
/// it would have been applied) and returns the error that drops the stream.
/// The highest such revision is kept: only a snapshot at or above it can
/// hold none of them.
fn unreadable(st: &mut CacheState, revision: u64, counts: bool) -> ProtocolError {
    if counts {
        st.unreadable = Some(st.unreadable.map_or(revision, |u| u.max(revision)));
    }
    ProtocolError::Unreadable { revision }
}

/// Applies one revocation event unless the cache already has its revision.
/// An event with an unreadable entry that may still revoke something is not
/// applied at all; an expired one is left out.
fn apply_event(
    st: &mut CacheState,
    now: u64,
    revision: u64,
    revocations: Vec<pb::Revocation>,
) -> Result<Step, ProtocolError> {
    if revision <= st.revision {
        return Ok(Step::Nothing);
    }
    if revocations.iter().any(|r| blocks(r, now)) {
        return Err(unreadable(st, revision, true));
    }
    for r in revocations {
        // Only an expired unreadable entry is refused here (checked above).
        let _expired = st.entries.add(r, revision);
    }
    st.revision = revision;
    st.synced = true;
    // Every event up to the unreadable revision is now applied, in order:
    // what blocked it has expired since (a node replays it for as long as
    // it is in the node's window, and no snapshot need ever come).
    if st.unreadable.is_some_and(|u| u <= revision) {
        st.unreadable = None;
    }
    Ok(Step::Applied(revision))
}
