//! The state machine: openraft's [`RaftStateMachine`] and snapshots.
//!
//! The applied state lives in memory only (for fast reads through
//! [`StateView`](super::StateView)); applying a batch writes nothing to
//! disk. What survives a restart is the current snapshot, a file (see
//! [`snapfile`](super::snapfile)) that is durable before sled's pointer
//! to it is written, plus the Raft log after it: at open the state is
//! decoded from the snapshot and the log after it is re-applied up to the
//! saved committed id ([`StateMachine::replay_committed`]; openraft would
//! do the same from [`RaftStateMachine::applied_state`], but the node reads
//! the state before Raft starts). Raft purges the log only up to a snapshot
//! it was handed (built or installed, so already durable), so the entries
//! after the snapshot are always there. The committed id is saved without
//! an fsync of its own: after a crash it may be older, and the rest is
//! applied once the leader says it is committed, as on any follower.
//!
//! Data directories of older nodes mirrored the state in sled trees, one
//! key per revocation; their state is read once at open, written as a
//! snapshot and the trees are cleared ([`legacy`]).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::chunk;
use super::db::{self, blocking, Db};
use super::feed::Feed;
use super::snapfile::{self, SnapDir};
use super::state::body::{self, Export};
use super::state::{legacy, State, Touched};
use super::{StateView, StoreError};
use crate::raft::{
    CommandResponse, Entry, LogId, NodeId, Snapshot, StorageError, StoredMembership, TypeConfig,
};

const K_SNAP_META: &str = "meta";
/// The snapshot's file name in the snapshot directory.
const K_SNAP_FILE: &str = "file";
/// Where snapshots used to be stored, in chunks; migrated at open.
const K_SNAP_DATA: &str = "data";

/// Buffer size of snapshot file writes.
const IO_BUF: usize = 256 * 1024;

/// Log entries read at a time when re-applying the log at open.
const REPLAY_CHUNK: u64 = 512;

/// Snapshot meta for this type configuration.
type Meta = SnapshotMeta<NodeId, crate::raft::NodeInfo>;

/// The Raft state machine of one node.
pub struct StateMachine {
    db: Arc<Db>,
    state: Arc<RwLock<State>>,
    feed: Arc<Feed>,
    /// Announces the applied revision once a batch is applied.
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
    /// Loads the state machine from `db`: the stored snapshot's state (the
    /// log after it is re-applied by openraft), or the state an older node
    /// mirrored in sled trees if that is newer, which is then written as a
    /// snapshot and removed from the trees. Blocking.
    pub(crate) fn load(
        db: Arc<Db>,
        feed: super::feed::FeedSizes,
    ) -> Result<(Self, StateView), StoreError> {
        let stored = read_pointer(&db)?;
        db.snaps
            .remove_all_but(stored.as_ref().map(|(_, name)| name.as_str()));
        let mut seq = 0;
        let mut state = State::default();
        if let Some((meta, name)) = stored {
            seq = meta
                .snapshot_id
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let path = db.snaps.path(&name);
            let file = File::open(&path).map_err(|source| StoreError::Io { path, source })?;
            state = decode_snapshot(&meta, &file)?;
        }
        if legacy::present(&db) {
            let old = legacy::load(&db)?;
            if old.last_applied > state.last_applied {
                tracing::info!(
                    applied = old.revision(),
                    revocations = old.revocation_count(),
                    "moving the state out of the old per-revocation sled trees into a snapshot"
                );
                seq += 1;
                write_snapshot(&db, old.export(), seq)?;
                state = old;
            }
            legacy::clear(&db)?;
            db.durable_flush()?;
        }
        tracing::info!(
            applied = state.revision(),
            revocations = state.revocation_count(),
            keys = state.keys.len(),
            "state machine loaded from its snapshot"
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

    /// Re-applies the log after the snapshot up to the saved committed id,
    /// so that the state is whole when the store opens (start-up checks,
    /// such as the node's KEK check, read it before Raft runs; openraft
    /// then finds nothing left to re-apply). Returns how many entries it
    /// applied. Blocking.
    pub(crate) fn replay_committed(&mut self) -> Result<u64, StoreError> {
        let Some(committed) = super::log::saved_committed(&self.db)? else {
            return Ok(0);
        };
        let mut st = write(&self.state);
        let mut next = st.last_applied.map_or(0, |l| l.index + 1);
        let mut applied = 0;
        while next <= committed.index {
            let hi = committed.index.saturating_add(1).min(next + REPLAY_CHUNK);
            let entries = super::log::read_entries(&self.db, next, Some(hi), usize::MAX)?;
            let whole = entries.len() as u64 == hi - next
                && entries.iter().zip(next..).all(|(e, i)| e.log_id.index == i);
            if !whole {
                return Err(StoreError::Corrupt {
                    tree: db::T_LOG,
                    reason: format!(
                        "committed entries {next}..{hi} are not all in the log (committed {committed})"
                    ),
                });
            }
            apply_to(&mut st, &self.feed, &entries);
            applied += entries.len() as u64;
            next = hi;
        }
        let revision = st.revision();
        drop(st);
        self.revision.send_replace(revision);
        Ok(applied)
    }

    /// How many fsyncs of the database have completed since it was opened.
    pub fn fsync_count(&self) -> u64 {
        self.db.fsync_count()
    }
}

/// Applies `entries` to `st` and records their events in `feed`; returns
/// the responses and the revision reached. Call with the write lock held:
/// watchers starting now see either the state before this batch and its
/// events live, or both after it.
fn apply_to(st: &mut State, feed: &Feed, entries: &[Entry]) -> (Vec<CommandResponse>, u64) {
    let mut touched = Touched::default();
    let responses: Vec<CommandResponse> =
        entries.iter().map(|e| st.apply(e, &mut touched)).collect();
    // An event's list grew by doubling while a batch was applied; the feed
    // window holds ~100k revocations for minutes, so keep only what is used.
    for ev in &mut touched.events {
        ev.revocations.shrink_to_fit();
    }
    feed.push(std::mem::take(&mut touched.events));
    (responses, st.revision())
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

/// Streams `state` into a temporary file, rewound for reading. Blocking.
fn write_temp(db: &Db, kind: &str, state: Export) -> Result<(PathBuf, File), StoreError> {
    let (tmp, file) = db.snaps.temp(kind)?;
    let io = |source| StoreError::Io {
        path: tmp.clone(),
        source,
    };
    let mut w = BufWriter::with_capacity(IO_BUF, &file);
    state.write(&mut w)?;
    w.flush().map_err(io)?;
    drop(w);
    (&file).seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((tmp, file))
}

/// Writes `state` to a new file and stores it as the snapshot (number
/// `seq`) unless the stored one is newer (an install may have stored one
/// while this was being built). Returns the file, open for reading either
/// way. Blocking.
fn write_snapshot(db: &Db, state: Export, seq: u64) -> Result<(Meta, File), StoreError> {
    let snapshot_id = match state.last_applied() {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
        None => format!("0-0-{seq}"),
    };
    let meta = Meta {
        last_log_id: state.last_applied(),
        last_membership: state.last_membership().clone(),
        snapshot_id,
    };
    let (tmp, file) = write_temp(db, "build", state)?;
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
        std::fs::remove_file(&tmp).map_err(|source| StoreError::Io { path: tmp, source })?;
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

/// Snapshots the state: a copy under the read lock (apply waits only for
/// the copy), then [`write_snapshot`]. Blocking.
fn build_file(db: &Db, state: &RwLock<State>, seq: u64) -> Result<(Meta, File), StoreError> {
    db.check_write()?;
    let export = read(state).export();
    write_snapshot(db, export, seq)
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

/// Decodes snapshot data, streamed from `file`, and checks it is the state
/// `meta` describes.
fn decode_snapshot(meta: &Meta, file: &File) -> Result<State, StoreError> {
    let mut r = file;
    r.seek(SeekFrom::Start(0))
        .map_err(|e| StoreError::Snapshot(e.to_string()))?;
    let state = body::read(&mut r)?;
    if state.last_applied != meta.last_log_id || state.last_membership != meta.last_membership {
        return Err(StoreError::Snapshot(format!(
            "snapshot {} does not hold the state its meta describes",
            meta.snapshot_id
        )));
    }
    Ok(state)
}

/// Writes `state` into the empty store `db` as if a snapshot of it had been
/// installed: a snapshot of it, and the log purged up to its last applied
/// entry (so Raft starts right after it). Blocking.
pub(crate) fn restore_into(db: &Db, state: &State) -> Result<(), StoreError> {
    let Some(last) = state.last_applied else {
        return Err(StoreError::Snapshot("no applied state to restore".into()));
    };
    let meta = Meta {
        last_log_id: state.last_applied,
        last_membership: state.last_membership.clone(),
        snapshot_id: format!("{}-{}-1", last.leader_id.term, last.index),
    };
    let (tmp, file) = write_temp(db, "restore", state.export())?;
    let name = SnapDir::final_name(&meta.snapshot_id);
    db.snaps.commit(&tmp, &file, &name)?;
    db.snapshot.apply_batch(pointer_batch(db, &meta, &name)?)?;
    db.durable_flush()?;
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
        // Memory only: applied here unless a reader holds the lock long
        // (a watcher's full snapshot, a state copy for a snapshot or a
        // backup); then on a blocking thread, so the runtime never waits.
        let inline = match self.state.try_write() {
            Ok(mut st) => Some(apply_to(&mut st, &self.feed, &entries)),
            Err(TryLockError::Poisoned(p)) => {
                Some(apply_to(&mut p.into_inner(), &self.feed, &entries))
            }
            Err(TryLockError::WouldBlock) => None,
        };
        let (entries, (responses, revision)) = match inline {
            Some(done) => (entries, done),
            None => {
                let state = self.state.clone();
                let feed = self.feed.clone();
                blocking(move || {
                    let done = apply_to(&mut write(&state), &feed, &entries);
                    Ok((entries, done))
                })
                .await
                .map_err(|e| StorageIOError::apply(last, AnyError::new(&e)))?
            }
        };
        self.counters.count(&entries, &responses);
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
            let (path, file) = db.snaps.temp("recv")?;
            Ok::<_, StoreError>((path, db.receiving_file(file)?))
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
            // The file is the state: durable (file, rename, directory, then
            // sled's pointer) before the state is swapped in and reported.
            let _g = db
                .snapshot_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let old = read_pointer(&db)?;
            let name = SnapDir::final_name(&meta.snapshot_id);
            db.snaps.commit(&tmp, &file, &name)?;
            db.snapshot.apply_batch(pointer_batch(&db, &meta, &name)?)?;
            db.durable_flush()?;
            if let Some((_, old)) = old {
                db.snaps.remove(&old, &name);
            }
            let revision = new_state.revision();
            let replaced = {
                let mut st = write(&state);
                feed.reset(revision);
                std::mem::replace(&mut *st, new_state)
            };
            // Freed outside the lock: millions of entries take a while.
            drop(replaced);
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
        let seq = self
            .snapshot_seq
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
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
        let mut built = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut built).unwrap();
        assert!(built.starts_with(body::MAGIC), "{built:?}");
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
