//! The Raft log and vote: openraft's [`RaftLogStorage`].
//!
//! Entries live in segment files of Tessera's own ([`super::seglog`]), and
//! so does the committed log id (a commit record written with the next
//! append); the vote and the last purged log id in sled's small meta tree.
//! Every write that Raft relies on having survived a crash (append, vote,
//! truncate, purge) is fsynced before it is acknowledged.
//! A log that an earlier version kept in sled's `log` tree is moved into
//! segment files when the store opens ([`open_segments`]).
//!
//! Small appends and small reads run on the calling (runtime) thread, an
//! exception to "file calls go to `spawn_blocking`": an append is one
//! `pwrite` into the page cache and a read of recent entries one `pread`
//! from it, and a thread hand-off for each used to cost more than the call
//! (docs/BENCHMARKS.md). What waits for the disk (the fdatasync,
//! truncation, purge, an append that starts a new segment file) and large
//! reads and writes stay off the runtime.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::db::{self, blocking, Db};
use super::seglog::{self, SegLog};
use super::StoreError;
use super::{chunk, entry_format};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_LAST_PURGED: &str = "last_purged";

/// Most entries one `limited_get_log_entries` call returns, so that one
/// replication message stays bounded however far a follower lags.
const MAX_ENTRIES_PER_READ: usize = 512;
/// Most bytes of records one `limited_get_log_entries` call returns (a
/// larger first entry comes alone). openraft 0.9 sends what it returns as
/// one `AppendEntries` and gives up on it after one heartbeat interval
/// (100 ms by default), then sends the same again: a follower that lagged
/// behind a few large entries (policies of up to 1 MiB) was sent tens of
/// MiB at once, over and over, and never caught up.
pub(crate) const MAX_BYTES_PER_READ: u64 = 1024 * 1024;

/// Appends of at most this many entries are encoded on the calling thread,
/// and written there too if they come to at most [`INLINE_WRITE_BYTES`].
const INLINE_WRITE_ENTRIES: usize = 64;
/// Largest encoded append written on the calling thread.
const INLINE_WRITE_BYTES: usize = 256 * 1024;
/// Reads of a bounded range of at most this many entries run on the
/// calling thread: replication and apply read the entries just appended,
/// which the page cache holds.
const INLINE_READ_ENTRIES: u64 = 64;

/// The Raft log store of one node. openraft serialises calls to it (every
/// method takes `&mut self` and completes its write before returning).
///
/// Appends are acknowledged by a group commit: `append` writes the entries
/// (readable at once) and hands the acknowledgement to the flusher thread,
/// which fdatasyncs the segment files written so far once and then
/// acknowledges every append it covered, in order. openraft 0.9.25's core
/// does wait for that acknowledgement (`append_to_log` awaits it) before it
/// runs its next command, replication to the followers included, so a
/// leader's fsync and its followers' are in series (docs/BENCHMARKS.md);
/// the flusher keeps the wait off the runtime's threads, and the
/// proposer's batching is what shares one fsync among many writes.
pub struct LogStore {
    db: Arc<Db>,
    /// `None` only while dropping.
    flusher: Option<std::sync::mpsc::SyncSender<Ack>>,
    flusher_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogStore {
    // Closing the channel ends the flusher after its last round; joining it
    // means that once the log store is gone, so is its database handle (a
    // reopen right after never finds the file locked).
    // The committed id no append has carried yet is written last (see
    // `save_committed`).
    fn drop(&mut self) {
        self.flusher = None;
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self
            .db
            .check_write()
            .and_then(|()| self.db.raftlog.write_pending_commit())
        {
            tracing::warn!(error = %e, "cannot write the committed log id at close");
        }
    }
}

/// An append's acknowledgement, waiting for the fdatasync of the file its
/// entries went to.
struct Ack {
    file: Arc<File>,
    done: Box<dyn FnOnce(io::Result<()>) + Send>,
}

/// Most acknowledgements one fsync covers (bounds the work per round), and
/// most waiting for the flusher (openraft has one append outstanding at a
/// time, so the bound is never reached in practice).
const MAX_GROUP: usize = 4096;

/// The flusher thread: owns a handle on the database until the log store
/// is dropped (its channel closes), so the database closes after it.
fn flusher(db: Arc<Db>, rx: std::sync::mpsc::Receiver<Ack>) {
    let mut group: Vec<Ack> = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(ack) => group.push(ack),
                Err(_) => break,
            }
        }
        // Every entry of every append in `group` was written before its
        // acknowledgement was queued, so syncing the files they name (one,
        // or two across a new segment) covers them all.
        let result = sync_files(&db, &group);
        for ack in group.drain(..) {
            (ack.done)(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            });
        }
    }
}

fn sync_files(db: &Db, group: &[Ack]) -> Result<(), StoreError> {
    db.check_write()?;
    let mut synced: Vec<&Arc<File>> = Vec::with_capacity(1);
    for ack in group {
        if synced.iter().any(|f| Arc::ptr_eq(f, &ack.file)) {
            continue;
        }
        ack.file.sync_data().map_err(|source| StoreError::Io {
            path: db.dir().join(seglog::DIR),
            source,
        })?;
        synced.push(&ack.file);
    }
    db.note_fsync();
    Ok(())
}

/// A read-only handle on the log, used by replication tasks.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Ack>(MAX_GROUP);
        let flusher_db = db.clone();
        // If the thread cannot start, acknowledgements fail (never lie).
        let thread = std::thread::Builder::new()
            .name("tessera-log-flush".into())
            .spawn(move || flusher(flusher_db, rx))
            .map_err(|e| tracing::error!(error = %e, "cannot start the log flusher thread"))
            .ok();
        LogStore {
            db,
            flusher: Some(tx),
            flusher_thread: thread,
        }
    }

    /// A signal for the owner: `changed()` on the receiver returns an error
    /// once every handle on the database is gone and its file lock is
    /// released, so the same directory can be opened again.
    pub fn closed_signal(&self) -> tokio::sync::watch::Receiver<()> {
        self.db.closed()
    }

    /// The incarnation of this node's data: a random non-zero number drawn
    /// when the database was created and kept across restarts. A node whose
    /// data was wiped has a new one, which is how its peers tell it apart
    /// from the node that made promises (votes, acknowledgements) before.
    pub fn incarnation(&self) -> u64 {
        self.db.incarnation
    }

    /// A reader of the last log id for the pre-vote (`raft::LastLogId`):
    /// the last entry's id, or the purge point's when the log is empty.
    /// Blocking.
    pub fn last_log_id_reader(&self) -> crate::raft::LastLogId {
        let db = self.db.clone();
        Arc::new(move || {
            log_state(&db)
                .map(|s| s.last_log_id)
                .map_err(|e| e.to_string())
        })
    }

    /// How many fsyncs of the database have completed since it was opened.
    /// Shared with the state machine (one database per node).
    pub fn fsync_count(&self) -> u64 {
        self.db.fsync_count()
    }

    /// Writes `entries` with one write, makes them durable, then calls
    /// `done` (never before the fdatasync has completed). Returns once the
    /// entries are readable.
    async fn append_then<F>(&mut self, entries: Vec<Entry>, done: F) -> Result<(), StorageError>
    where
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        // Starting a file costs three fsyncs: never on a runtime worker.
        let inline =
            entries.len() <= INLINE_WRITE_ENTRIES && !self.db.raftlog.next_append_starts_file();
        let written = if inline {
            match encode_entries(&entries) {
                Ok(enc)
                    if enc.iter().map(|(_, v)| v.len()).sum::<usize>() <= INLINE_WRITE_BYTES =>
                {
                    write_encoded(&self.db, &enc)
                }
                Ok(enc) => {
                    let db = self.db.clone();
                    blocking(move || write_encoded(&db, &enc)).await
                }
                Err(e) => Err(e),
            }
        } else {
            let db = self.db.clone();
            blocking(move || write_encoded(&db, &encode_entries(&entries)?)).await
        };
        let file = written.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // Written and readable; durability is reported through `done` by
        // the flusher, after the fdatasync that covers these entries.
        let ack = Ack {
            file,
            done: Box::new(done),
        };
        let unsent = match &self.flusher {
            Some(tx) => tx.send(ack).err().map(|e| e.0),
            None => Some(ack),
        };
        if let Some(ack) = unsent {
            (ack.done)(Err(io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }
}

/// An entry's index and stored bytes.
type Encoded = (u64, Vec<u8>);

/// Each entry's index and stored bytes.
fn encode_entries(entries: &[Entry]) -> Result<Vec<Encoded>, StoreError> {
    entries
        .iter()
        .map(|e| Ok((e.log_id.index, entry_format::encode(e)?)))
        .collect()
}

/// Writes entries (readable at once, durable once the returned file is
/// fdatasynced).
fn write_encoded(db: &Db, entries: &[Encoded]) -> Result<Arc<File>, StoreError> {
    db.check_write()?;
    db.raftlog.append(entries)
}

/// `[lo, hi)` of a range of indexes, `None` for `hi` meaning unbounded;
/// `None` overall when the range is empty.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let lo = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match hi {
        Some(hi) if hi <= lo => None,
        _ => Some((lo, hi)),
    }
}

/// The entries of `lo..hi` that the log holds, at most `limit`.
pub(crate) fn read_entries(
    db: &Db,
    lo: u64,
    hi: Option<u64>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    db.raftlog.read(lo, hi, limit)
}

/// At most `limit` entries of `range`, and no more than `max_bytes` of
/// them beyond the first.
async fn get_entries<RB: RangeBounds<u64>>(
    db: &Arc<Db>,
    range: RB,
    limit: usize,
    max_bytes: u64,
) -> Result<Vec<Entry>, StorageError> {
    let Some((lo, hi)) = index_bounds(&range) else {
        return Ok(Vec::new());
    };
    let read = if hi.is_some_and(|hi| hi - lo <= INLINE_READ_ENTRIES) {
        db.raftlog.read_within(lo, hi, limit, max_bytes)
    } else {
        let db = db.clone();
        blocking(move || db.raftlog.read_within(lo, hi, limit, max_bytes)).await
    };
    read.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

/// The log id of the last entry the log holds.
fn last_log_id(db: &Db) -> Result<Option<LogId>, StoreError> {
    let Some(last) = db.raftlog.last_index()? else {
        return Ok(None);
    };
    Ok(read_entries(db, last, Some(last + 1), 1)?
        .first()
        .map(|e| e.log_id))
}

fn log_state(db: &Db) -> Result<LogState<TypeConfig>, StoreError> {
    let last_purged: Option<LogId> = db::get(&db.log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    let last = last_log_id(db)?.or(last_purged);
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    })
}

/// The committed log id last saved (see `save_committed`): the log's last
/// commit record, or else the id an earlier version kept in sled's meta
/// tree. Never past the last entry the log holds: sled's copy was saved
/// without an fsync of its own, so after a power loss it can be ahead of
/// what survived of the log (the rest is learnt again from the leader).
/// Blocking.
pub(crate) fn saved_committed(db: &Db) -> Result<Option<LogId>, StoreError> {
    let saved = match db.raftlog.committed()? {
        Some(bytes) => db::decode::<Option<LogId>>(seglog::DIR, &bytes)?,
        None => db::get::<Option<LogId>>(&db.log_meta, db::T_LOG_META, K_COMMITTED)?.flatten(),
    };
    let Some(saved) = saved else {
        return Ok(None);
    };
    let last_purged: Option<LogId> = db::get(&db.log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    let last = last_log_id(db)?.or(last_purged);
    Ok(match last {
        Some(last) if last.index < saved.index => Some(last),
        None => None,
        _ => Some(saved),
    })
}

/// Removes entries at and after `index`. Blocking.
fn truncate_from(db: &Db, index: u64) -> Result<(), StoreError> {
    db.check_write()?;
    db.raftlog.truncate_from(index)?;
    db.note_fsync();
    Ok(())
}

/// Removes entries up to and including `upto`. The last purged log id is
/// recorded (and made durable) first, so that a crash part-way leaves
/// entries at or below it, which nothing reads and the next open removes,
/// and never a hole above it. Blocking.
pub(crate) fn purge_upto(db: &Db, upto: LogId) -> Result<(), StoreError> {
    db.check_write()?;
    let prev: Option<LogId> = db::get(&db.log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    if prev.is_some_and(|p| p >= upto) {
        return Ok(());
    }
    db.log_meta
        .insert(K_LAST_PURGED, db::encode(&Some(upto))?)?;
    db.durable_flush()?;
    db.raftlog.purge(upto.index)?;
    Ok(())
}

/// Opens the log's segment files under `dir`, first moving the log out of
/// sled's `log` tree if an earlier version kept it there: its entries above
/// the purge point are written to a new segment directory (renamed into
/// place once fsynced), then the tree is emptied (made durable by the
/// caller's next flush; entries left there after a crash are simply
/// removed again). Blocking.
pub(crate) fn open_segments(
    dir: &Path,
    legacy: &sled::Tree,
    log_meta: &sled::Tree,
) -> Result<SegLog, StoreError> {
    let purged: Option<LogId> = db::get(log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    let purged = purged.map(|p| p.index);
    let seg_dir = dir.join(seglog::DIR);
    if !seg_dir.exists() {
        let lo = purged.map_or(0, |p| p + 1);
        let mut entries = Vec::new();
        for kv in legacy.range(db::index_key(lo)..) {
            let (k, v) = kv?;
            if k.len() != 8 {
                continue; // a chunk of the entry before it
            }
            let bytes = chunk::assemble(legacy, db::T_LOG, &k, v)?;
            let entry = entry_format::decode(&bytes)?;
            // Re-encoded: entries an older version stored as JSON move to
            // the current format.
            entries.push((entry.log_id.index, entry_format::encode(&entry)?));
        }
        if !entries.is_empty() {
            tracing::info!(
                entries = entries.len(),
                "moving the Raft log out of sled into segment files"
            );
        }
        seglog::create_with(&seg_dir, &entries)?;
    }
    if !legacy.is_empty() {
        legacy.clear()?;
    }
    SegLog::open(&seg_dir, purged)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, range, usize::MAX, u64::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(
            &self.db,
            start..end,
            MAX_ENTRIES_PER_READ,
            MAX_BYTES_PER_READ,
        )
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, range, usize::MAX, u64::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(
            &self.db,
            start..end,
            MAX_ENTRIES_PER_READ,
            MAX_BYTES_PER_READ,
        )
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || log_state(&db))
            .await
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            db: self.db.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            db.check_write()?;
            db.log_meta.insert(K_VOTE, db::encode(&vote)?)?;
            db.durable_flush()
        })
        .await
        .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || db::get(&db.log_meta, db::T_LOG_META, K_VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    // Written with the next append (or at a clean close), durable with its
    // entries: a committed id lost in a crash is only learnt again from the
    // leader; what is persisted lets a restarted node re-apply its
    // committed entries without waiting for one. No write of its own, so no
    // file is written that an acknowledgement has not synced.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = &self.db;
        let saved: Result<(), StoreError> = (|| {
            db.check_write()?;
            db.raftlog.set_committed(db::encode(&committed)?)
        })();
        saved.map_err(|e| StorageIOError::write(AnyError::new(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || saved_committed(&db))
            .await
            .map_err(|e| StorageIOError::read(AnyError::new(&e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.append_then(entries, move |r| callback.log_io_completed(r))
            .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating log");
        let db = self.db.clone();
        blocking(move || truncate_from(&db, log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging log");
        let db = self.db.clone();
        blocking(move || purge_upto(&db, log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
