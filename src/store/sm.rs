//! The state machine: openraft's [`RaftStateMachine`] and snapshots.
//!
//! The applied state is kept whole in memory (for fast reads through
//! [`StateView`](super::StateView)) and mirrored in sled: each applied batch
//! is one sled transaction over the state-machine trees, `last_applied`
//! included, so after a crash sled holds the state as of some batch and the
//! log re-applies the rest. Snapshots are the serialized state, streamed
//! to and from files (see [`snapfile`](super::snapfile)) that the snapshot
//! tree points to.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::chunk;
use super::db::{self, blocking, Db};
use super::feed::Feed;
use super::snapfile::{self, SnapDir};
use super::state::{State, Touched};
use super::{StateView, StoreError};
use crate::raft::{
    CommandResponse, Entry, LogId, NodeId, Snapshot, StorageError, StoredMembership, TypeConfig,
};

const K_SNAP_META: &str = "meta";
/// The snapshot's file name in the snapshot directory.
const K_SNAP_FILE: &str = "file";
/// Where snapshots used to be stored, in chunks; migrated at open.
const K_SNAP_DATA: &str = "data";

/// Buffer size of snapshot file reads and writes.
const IO_BUF: usize = 256 * 1024;

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
    /// The file a snapshot is being received into, if any.
    receiving: Option<PathBuf>,
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
        let stored = read_pointer(&db)?;
        db.snaps
            .remove_all_but(stored.as_ref().map(|(_, name)| name.as_str()));
        if let Some((meta, name)) = stored {
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
                let path = db.snaps.path(&name);
                let file = File::open(&path).map_err(|source| StoreError::Io { path, source })?;
                let restored = decode_snapshot(&meta, &file)?;
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
            receiving: None,
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

/// The stored snapshot's meta and file name, if any. Blocking.
fn read_pointer(db: &Db) -> Result<Option<(Meta, String)>, StoreError> {
    let meta: Option<Meta> = db::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_META)?;
    let file: Option<String> = db::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_FILE)?;
    match (meta, file) {
        (Some(meta), Some(file)) => Ok(Some((meta, file))),
        (None, None) => Ok(None),
        (Some(meta), None) => {
            // Before snapshots were files they were chunks in this tree.
            match chunk::get(&db.snapshot, db::T_SNAPSHOT, K_SNAP_DATA.as_bytes())? {
                Some(data) => {
                    let name = migrate(db, &meta, &data)?;
                    Ok(Some((meta, name)))
                }
                None => Err(corrupt("snapshot meta without data")),
            }
        }
        (None, Some(_)) => Err(corrupt("snapshot file without meta")),
    }
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt {
        tree: db::T_SNAPSHOT,
        reason: reason.into(),
    }
}

/// Moves a snapshot stored the old way (chunks in the snapshot tree) into
/// a file. Blocking; at open only.
fn migrate(db: &Db, meta: &Meta, data: &[u8]) -> Result<String, StoreError> {
    let (tmp, mut file) = db.snaps.temp("migrate")?;
    std::io::Write::write_all(&mut file, data).map_err(|source| StoreError::Io {
        path: tmp.clone(),
        source,
    })?;
    let name = SnapDir::final_name(&meta.snapshot_id);
    db.snaps.commit(&tmp, &file, &name)?;
    db.snapshot.apply_batch(pointer_batch(db, meta, &name)?)?;
    db.durable_flush()?;
    tracing::info!(snapshot = %meta.snapshot_id, "snapshot moved to its own file");
    Ok(name)
}

/// The writes that make `meta` and the file `name` the stored snapshot,
/// removing any snapshot stored the old way. Blocking; call it under
/// `snapshot_lock`, once the file is durable.
fn pointer_batch(db: &Db, meta: &Meta, name: &str) -> Result<sled::Batch, StoreError> {
    let key = K_SNAP_DATA.as_bytes();
    let legacy = chunk::stored_chunks(&db.snapshot, key)?;
    let mut b = sled::Batch::default();
    b.insert(K_SNAP_META, db::encode(meta)?);
    b.insert(K_SNAP_FILE, db::encode(name)?);
    chunk::remove(&mut b, key, legacy);
    Ok(b)
}

/// Streams the state to a new file and stores it as the snapshot `meta`
/// unless the stored one is newer (an install may have stored one while
/// this was being built). Returns the file, open for reading either way.
/// Blocking.
fn build_file(db: &Db, state: &RwLock<State>, seq: u64) -> Result<(Meta, File), StoreError> {
    db.check_write()?;
    let (tmp, file) = db.snaps.temp("build")?;
    let io = |source| StoreError::Io {
        path: tmp.clone(),
        source,
    };
    // Apply mutates memory under the write lock, so the read lock gives a
    // state as of a whole batch.
    let meta = {
        let st = read(state);
        let mut w = BufWriter::with_capacity(IO_BUF, &file);
        write_body(&mut w, &st)?;
        w.flush().map_err(io)?;
        drop(w);
        // Readers start at the beginning.
        (&file).seek(SeekFrom::Start(0)).map_err(io)?;
        let snapshot_id = match st.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        };
        Meta {
            last_log_id: st.last_applied,
            last_membership: st.last_membership.clone(),
            snapshot_id,
        }
    };
    let _g = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let current = read_pointer(db)?;
    if current
        .as_ref()
        .is_some_and(|(c, _)| c.last_log_id > meta.last_log_id)
    {
        // Still readable through `file` once unlinked.
        std::fs::remove_file(&tmp).map_err(io)?;
        return Ok((meta, file));
    }
    let name = SnapDir::final_name(&meta.snapshot_id);
    db.snaps.commit(&tmp, &file, &name)?;
    db.snapshot.apply_batch(pointer_batch(db, &meta, &name)?)?;
    db.durable_flush()?;
    if let Some((_, old)) = current {
        db.snaps.remove(&old, &name);
    }
    Ok((meta, file))
}

/// Opens the stored snapshot for reading. Blocking.
fn open_current(db: &Db) -> Result<Option<(Meta, File)>, StoreError> {
    // Under the lock: an install may otherwise remove the file between
    // reading its name and opening it.
    let _g = db
        .snapshot_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some((meta, name)) = read_pointer(db)? else {
        return Ok(None);
    };
    let path = db.snaps.path(&name);
    let file = File::open(&path).map_err(|source| StoreError::Io { path, source })?;
    Ok(Some((meta, file)))
}

/// Writes `state` in the snapshot encoding (also the body of a backup).
pub(crate) fn write_body(w: &mut impl Write, state: &State) -> Result<(), StoreError> {
    serde_json::to_writer(
        w,
        &SnapshotBodyRef {
            format: SNAPSHOT_FORMAT,
            state,
        },
    )
    .map_err(StoreError::Encode)
}

/// Reads a state in the snapshot encoding, streamed.
pub(crate) fn read_body(r: &mut impl std::io::Read) -> Result<State, StoreError> {
    let body: SnapshotBody = serde_json::from_reader(std::io::BufReader::with_capacity(IO_BUF, r))
        .map_err(|e| StoreError::Snapshot(e.to_string()))?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Snapshot(format!(
            "unknown snapshot format {}",
            body.format
        )));
    }
    Ok(body.state)
}

/// Decodes snapshot data, streamed from `file`, and checks it is the state
/// `meta` describes.
fn decode_snapshot(meta: &Meta, file: &File) -> Result<State, StoreError> {
    let mut r = file;
    r.seek(SeekFrom::Start(0))
        .map_err(|e| StoreError::Snapshot(e.to_string()))?;
    let state = read_body(&mut r)?;
    if state.last_applied != meta.last_log_id || state.last_membership != meta.last_membership {
        return Err(StoreError::Snapshot(format!(
            "snapshot {} does not hold the state its meta describes",
            meta.snapshot_id
        )));
    }
    Ok(state)
}

/// Writes `state` into the empty store `db` as if a snapshot of it had been
/// installed: the state-machine trees, a snapshot of it, and the log purged
/// up to its last applied entry (so Raft starts right after it). Blocking.
pub(crate) fn restore_into(db: &Db, state: &State) -> Result<(), StoreError> {
    let Some(last) = state.last_applied else {
        return Err(StoreError::Snapshot("no applied state to restore".into()));
    };
    let meta = Meta {
        last_log_id: state.last_applied,
        last_membership: state.last_membership.clone(),
        snapshot_id: format!("{}-{}-1", last.leader_id.term, last.index),
    };
    let (tmp, file) = db.snaps.temp("restore")?;
    let mut w = BufWriter::with_capacity(IO_BUF, &file);
    write_body(&mut w, state)?;
    w.flush().map_err(|source| StoreError::Io {
        path: tmp.clone(),
        source,
    })?;
    drop(w);
    let name = SnapDir::final_name(&meta.snapshot_id);
    db.snaps.commit(&tmp, &file, &name)?;
    let pointer = pointer_batch(db, &meta, &name)?;
    replace(db, &State::default(), state, Some(&pointer))?;
    super::log::purge_upto(db, last)
}

fn to_async(file: File) -> Box<tokio::fs::File> {
    Box::new(tokio::fs::File::from_std(file))
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let db = self.db.clone();
        let (path, file) = blocking(move || {
            db.check_write()?;
            db.snaps.temp("recv")
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        // openraft receives one snapshot at a time: one that was being
        // received before this is abandoned.
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(to_async(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, "installing snapshot");
        let sig = meta.signature();
        let err =
            |e: StoreError| StorageIOError::write_snapshot(Some(sig.clone()), AnyError::new(&e));
        let mut snapshot = *snapshot;
        snapshot
            .flush()
            .await
            .map_err(|e| err(StoreError::Snapshot(e.to_string())))?;
        let file = snapshot.into_std().await;
        let receiving = self.receiving.take();
        let db = self.db.clone();
        let state = self.state.clone();
        let feed = self.feed.clone();
        let meta = meta.clone();
        let revision = blocking(move || {
            db.check_write()?;
            // The file openraft hands back is normally the one this node
            // began receiving; anything else is copied into a file of ours.
            let (tmp, file) = match receiving {
                Some(path) if snapfile::same_file(&file, &path) => (path, file),
                other => {
                    if let Some(p) = other {
                        let _ = std::fs::remove_file(p);
                    }
                    let (tmp, mut copy) = db.snaps.temp("recv")?;
                    let io = |source| StoreError::Io {
                        path: tmp.clone(),
                        source,
                    };
                    let mut src = &file;
                    src.seek(SeekFrom::Start(0)).map_err(io)?;
                    std::io::copy(&mut src, &mut copy).map_err(io)?;
                    (tmp, copy)
                }
            };
            let new_state = match decode_snapshot(&meta, &file) {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let _g = db
                .snapshot_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let old = read_pointer(&db)?;
            let name = SnapDir::final_name(&meta.snapshot_id);
            db.snaps.commit(&tmp, &file, &name)?;
            let pointer = pointer_batch(&db, &meta, &name)?;
            // apply and install both take `&mut self`: nothing changes the
            // state between reading `old` here and swapping it below.
            replace(&db, &read(&state), &new_state, Some(&pointer))?;
            if let Some((_, old)) = old {
                db.snaps.remove(&old, &name);
            }
            let revision = new_state.revision();
            let mut st = write(&state);
            *st = new_state;
            feed.reset(revision);
            Ok(revision)
        })
        .await
        .map_err(err)?;
        self.revision.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || open_current(&db))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(stored.map(|(meta, file)| Snapshot {
            meta,
            snapshot: to_async(file),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let state = self.state.clone();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (meta, file) = blocking(move || build_file(&db, &state, seq))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: to_async(file),
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

    /// Stores `data` as the snapshot `meta`, as a build or install would.
    fn store(db: &Db, meta: &Meta, data: &[u8]) {
        let (tmp, mut file) = db.snaps.temp("test").unwrap();
        file.write_all(data).unwrap();
        let name = SnapDir::final_name(&meta.snapshot_id);
        db.snaps.commit(&tmp, &file, &name).unwrap();
        db.snapshot
            .apply_batch(pointer_batch(db, meta, &name).unwrap())
            .unwrap();
        db.durable_flush().unwrap();
    }

    fn state_at(index: u64) -> RwLock<State> {
        RwLock::new(State {
            last_applied: Some(log_id(1, 1, index)),
            ..Default::default()
        })
    }

    #[test]
    fn a_built_snapshot_never_replaces_a_newer_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        store(&db, &meta(11, "1-11-1"), b"new");
        let (m, file) = build_file(&db, &state_at(10), 2).unwrap();
        assert_eq!(m.snapshot_id, "1-10-2");
        // The caller can still read what it built...
        let mut built = String::new();
        std::io::Read::read_to_string(&mut &file, &mut built).unwrap();
        assert!(built.contains("\"format\":1"), "{built}");
        // ...but the stored snapshot is still the newer one, alone.
        let (cur, f) = open_current(&db).unwrap().unwrap();
        assert_eq!(cur.snapshot_id, "1-11-1");
        assert_eq!(std::fs::read(db.snaps.path("1-11-1.snap")).unwrap(), b"new");
        assert!(snapfile::same_file(&f, &db.snaps.path("1-11-1.snap")));
        // Same point, later build: replaces, and the old file goes.
        let (m, _) = build_file(&db, &state_at(11), 3).unwrap();
        assert_eq!(open_current(&db).unwrap().unwrap().0, m);
        assert!(!db.snaps.path("1-11-1.snap").exists());
    }

    #[test]
    fn a_snapshot_stored_in_chunks_moves_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let m = meta(5, "1-5-1");
        let data = vec![b'x'; 3 * chunk::CHUNK + 5];
        let mut b = sled::Batch::default();
        b.insert(K_SNAP_META, db::encode(&m).unwrap());
        chunk::put(&mut b, K_SNAP_DATA.as_bytes(), &data, 0);
        db.snapshot.apply_batch(b).unwrap();
        let (cur, mut f) = open_current(&db).unwrap().unwrap();
        assert_eq!(cur, m);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            chunk::stored_chunks(&db.snapshot, K_SNAP_DATA.as_bytes()).unwrap(),
            0
        );
        assert!(db.snapshot.get(K_SNAP_DATA).unwrap().is_none());
    }

    #[test]
    fn snapshot_counter_resumes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let mut m = meta(0, "0-0-41");
            m.last_log_id = None;
            store(&db, &m, br#"{"format":1,"state":{}}"#);
        }
        let (sm, _) =
            StateMachine::load(Arc::new(Db::open(dir.path()).unwrap()), Default::default())
                .unwrap();
        assert_eq!(sm.snapshot_seq.load(Ordering::Relaxed), 41);
    }
}
