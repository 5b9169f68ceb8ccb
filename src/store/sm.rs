//! The state machine: openraft's [`RaftStateMachine`] and snapshots.
//!
//! The applied state is kept whole in memory (for fast reads through
//! [`StateView`](super::StateView)) and mirrored in sled: each applied batch
//! is one sled transaction over the state-machine trees, `last_applied`
//! included, so after a crash sled holds the state as of some batch and the
//! log re-applies the rest. Snapshots are the serialized state, stored
//! durably in their own tree.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::chunk;
use super::db::{self, blocking, Db};
use super::feed::Feed;
use super::state::{State, Touched};
use super::{StateView, StoreError};
use crate::raft::{
    CommandResponse, Entry, LogId, NodeId, Snapshot, StorageError, StoredMembership, TypeConfig,
};

const K_SNAP_META: &str = "meta";
const K_SNAP_DATA: &str = "data";

/// Version of the snapshot encoding; a node refuses a snapshot it cannot read.
const SNAPSHOT_FORMAT: u32 = 1;

/// Snapshot meta for this type configuration.
type Meta = SnapshotMeta<NodeId, crate::raft::NodeInfo>;

#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    format: u32,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotBody {
    format: u32,
    state: State,
}

/// The Raft state machine of one node.
pub struct StateMachine {
    db: Arc<Db>,
    state: Arc<RwLock<State>>,
    feed: Arc<Feed>,
    /// Announces the applied revision once a batch is persisted.
    revision: watch::Sender<u64>,
    snapshot_seq: Arc<AtomicU64>,
    /// Revocation entries applied and purged (metrics).
    counters: Arc<ApplyCounters>,
}

/// Counts of what this node's state machine applied, since it started.
#[derive(Debug, Default)]
pub struct ApplyCounters {
    revoked: AtomicU64,
    purged: AtomicU64,
}

impl ApplyCounters {
    /// Revocation entries added or raised by applied commands.
    pub fn revoked(&self) -> u64 {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Revocation entries removed by applied purge commands.
    pub fn purged(&self) -> u64 {
        self.purged.load(Ordering::Relaxed)
    }

    fn count(&self, entries: &[Entry], responses: &[CommandResponse]) {
        use crate::raft::Op;
        for (e, r) in entries.iter().zip(responses) {
            if let openraft::EntryPayload::Normal(cmd) = &e.payload {
                let counter = match cmd.op {
                    Op::RevokeJtis { .. }
                    | Op::RevokeSubject { .. }
                    | Op::RevokeClient { .. }
                    | Op::Batch { .. } => &self.revoked,
                    Op::Purge => &self.purged,
                    _ => continue,
                };
                counter.fetch_add(r.changed, Ordering::Relaxed);
            }
        }
    }
}

/// Builds snapshots of the state machine, concurrently with apply.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    state: Arc<RwLock<State>>,
    snapshot_seq: Arc<AtomicU64>,
}

// A poisoned lock means a panic elsewhere; the state itself is only ever
// replaced whole or mutated by code that does not panic, so keep serving.
pub(crate) fn read(lock: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl StateMachine {
    /// Loads the state machine from `db`, restoring from the stored snapshot
    /// if it is newer than the persisted state (a crash between storing a
    /// snapshot and persisting the state it came from). Blocking.
    pub(crate) fn load(
        db: Arc<Db>,
        feed: super::feed::FeedSizes,
    ) -> Result<(Self, StateView), StoreError> {
        let mut state = State::load(&db)?;
        let mut seq = 0;
        if let Some((meta, data)) = read_snapshot(&db)? {
            seq = meta
                .snapshot_id
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if meta.last_log_id > state.last_applied {
                tracing::warn!(
                    snapshot = %meta.snapshot_id,
                    applied = state.revision(),
                    "stored state is behind the stored snapshot; restoring from the snapshot"
                );
                let restored = decode_snapshot(&meta, &data)?;
                replace(&db, &state, &restored, None)?;
                state = restored;
            }
        }
        tracing::info!(
            applied = state.revision(),
            revocations = state.revocation_count(),
            keys = state.keys.len(),
            "state machine loaded"
        );
        let (tx, rx) = watch::channel(state.revision());
        let feed = Arc::new(Feed::new(state.revision(), feed));
        let state = Arc::new(RwLock::new(state));
        let counters = Arc::new(ApplyCounters::default());
        let sm = StateMachine {
            db,
            state: state.clone(),
            feed: feed.clone(),
            revision: tx,
            snapshot_seq: Arc::new(AtomicU64::new(seq)),
            counters: counters.clone(),
        };
        Ok((sm, StateView::new(state, rx, feed, counters)))
    }

    /// How many fsyncs of the database have completed since it was opened.
    pub fn fsync_count(&self) -> u64 {
        self.db.fsync_count()
    }
}

/// Writes `new` over the persisted `old` state in one transaction (with the
/// snapshot tree's `snapshot` writes, if any) and makes it durable. Blocking.
fn replace(
    db: &Db,
    old: &State,
    new: &State,
    snapshot: Option<&sled::Batch>,
) -> Result<(), StoreError> {
    let mut touched = Touched::default();
    // Every key of the old state: those absent from the new one are removed.
    touched.add_all(old);
    touched.add_all(new);
    new.batches(&touched)?.commit(db, snapshot)?;
    db.durable_flush()
}

fn read_snapshot(db: &Db) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
    let meta: Option<Meta> = db::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_META)?;
    let data = chunk::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_DATA.as_bytes())?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some((meta, data))),
        (None, None) => Ok(None),
        _ => Err(StoreError::Corrupt {
            tree: db::T_SNAPSHOT,
            reason: "snapshot meta without data or data without meta".into(),
        }),
    }
}

/// The writes that replace the stored snapshot with `meta` and `data`:
/// the data in chunks below sled's blob threshold (see [`chunk`]), the
/// previous snapshot's surplus chunks removed, all in one batch. Blocking;
/// call it under `snapshot_lock`.
fn snapshot_batch(db: &Db, meta: &Meta, data: &[u8]) -> Result<sled::Batch, StoreError> {
    let key = K_SNAP_DATA.as_bytes();
    let stale = chunk::stored_chunks(&db.snapshot, key)?;
    let mut b = sled::Batch::default();
    b.insert(K_SNAP_META, db::encode(meta)?);
    chunk::put(&mut b, key, data, stale);
    Ok(b)
}

/// Stores a built snapshot durably unless the stored one is newer (an
/// install may have stored one while this was being built). Returns whether
/// it was stored. Blocking.
fn store_if_not_older(db: &Db, meta: &Meta, data: &[u8]) -> Result<bool, StoreError> {
    let _g = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let current: Option<Meta> = db::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_META)?;
    if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
        return Ok(false);
    }
    db.snapshot.apply_batch(snapshot_batch(db, meta, data)?)?;
    db.durable_flush()?;
    Ok(true)
}

/// Decodes snapshot data and checks it is the state `meta` describes.
fn decode_snapshot(meta: &Meta, data: &[u8]) -> Result<State, StoreError> {
    let body: SnapshotBody =
        serde_json::from_slice(data).map_err(|e| StoreError::Snapshot(e.to_string()))?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Snapshot(format!(
            "unknown snapshot format {}",
            body.format
        )));
    }
    if body.state.last_applied != meta.last_log_id
        || body.state.last_membership != meta.last_membership
    {
        return Err(StoreError::Snapshot(format!(
            "snapshot {} does not hold the state its meta describes",
            meta.snapshot_id
        )));
    }
    Ok(body.state)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = read(&self.state);
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        let state = self.state.clone();
        let feed = self.feed.clone();
        let counters = self.counters.clone();
        // The write lock is taken on a blocking thread too: a snapshot being
        // serialized under the read lock must not stall the async runtime.
        let (responses, revision) = blocking(move || {
            // Before the state changes in memory: a failed write must leave
            // memory as it was.
            db.check_write()?;
            let (responses, batches, revision) = {
                let mut st = write(&state);
                let mut touched = Touched::default();
                let responses: Vec<CommandResponse> =
                    entries.iter().map(|e| st.apply(e, &mut touched)).collect();
                // Under the write lock: watchers starting now see either
                // the state before this batch and its events live, or both
                // after it.
                feed.push(std::mem::take(&mut touched.events));
                (responses, st.batches(&touched), st.revision())
            };
            batches?.commit(&db, None)?;
            counters.count(&entries, &responses);
            Ok((responses, revision))
        })
        .await
        .map_err(|e| StorageIOError::apply(last, AnyError::new(&e)))?;
        self.revision.send_replace(revision);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, "installing snapshot");
        let data = snapshot.into_inner();
        let new_state = decode_snapshot(meta, &data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let db = self.db.clone();
        let state = self.state.clone();
        let feed = self.feed.clone();
        let meta = meta.clone();
        let sig = meta.signature();
        let revision = blocking(move || {
            let _g = db
                .snapshot_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let snap = snapshot_batch(&db, &meta, &data)?;
            // apply and install both take `&mut self`: nothing changes the
            // state between reading `old` here and swapping it below.
            replace(&db, &read(&state), &new_state, Some(&snap))?;
            let revision = new_state.revision();
            let mut st = write(&state);
            *st = new_state;
            feed.reset(revision);
            Ok(revision)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(sig), AnyError::new(&e)))?;
        self.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || read_snapshot(&db))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let state = self.state.clone();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (meta, data) = blocking(move || {
            // Apply mutates memory under the write lock, so the read lock
            // gives a state as of a whole batch.
            let (meta, data) = {
                let st = read(&state);
                let data = db::encode(&SnapshotBodyRef {
                    format: SNAPSHOT_FORMAT,
                    state: &st,
                })?;
                let snapshot_id = match st.last_applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
                    None => format!("0-0-{seq}"),
                };
                let meta = Meta {
                    last_log_id: st.last_applied,
                    last_membership: st.last_membership.clone(),
                    snapshot_id,
                };
                (meta, data)
            };
            store_if_not_older(&db, &meta, &data)?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;

    fn meta(index: u64, id: &str) -> Meta {
        Meta {
            last_log_id: Some(log_id(1, 1, index)),
            last_membership: StoredMembership::default(),
            snapshot_id: id.into(),
        }
    }

    #[test]
    fn a_built_snapshot_never_replaces_a_newer_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert!(store_if_not_older(&db, &meta(11, "1-11-1"), b"new").unwrap());
        assert!(!store_if_not_older(&db, &meta(10, "1-10-2"), b"old").unwrap());
        let (m, data) = read_snapshot(&db).unwrap().unwrap();
        assert_eq!(
            (m.snapshot_id.as_str(), data.as_slice()),
            ("1-11-1", &b"new"[..])
        );
        // Same point, later build: replaces.
        assert!(store_if_not_older(&db, &meta(11, "1-11-3"), b"again").unwrap());
        assert_eq!(read_snapshot(&db).unwrap().unwrap().0.snapshot_id, "1-11-3");
    }

    #[test]
    fn snapshot_counter_resumes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let mut m = meta(0, "0-0-41");
            m.last_log_id = None;
            store_if_not_older(&db, &m, br#"{"format":1,"state":{}}"#).unwrap();
        }
        let (sm, _) =
            StateMachine::load(Arc::new(Db::open(dir.path()).unwrap()), Default::default())
                .unwrap();
        assert_eq!(sm.snapshot_seq.load(Ordering::Relaxed), 41);
    }
}
