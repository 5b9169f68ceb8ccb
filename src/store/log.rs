//! The Raft log and vote: openraft's [`RaftLogStorage`] over sled.
//!
//! Entries live in their own tree keyed by big-endian index; the vote, the
//! committed log id and the last purged log id in a small meta tree. Every
//! write that Raft relies on having survived a crash (append, vote,
//! truncate, purge) ends with [`Db::durable_flush`] before it is
//! acknowledged. Entries are stored in the format of [`super::entry_format`].
//!
//! Small appends and small reads run on the calling (runtime) thread, an
//! exception to "sled calls go to `spawn_blocking`": a sled insert or read
//! of a few recent entries touches only its page cache (sled writes its log
//! buffers from its own threads), and the write path used to pay a thread
//! hand-off for each of them, two or three per revocation batch on the
//! leader (docs/BENCHMARKS.md). What can wait for the disk (the flush +
//! fsync, truncation, purge) and large reads and writes stay off the
//! runtime.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::db::{self, blocking, Db};
use super::StoreError;
use super::{chunk, entry_format};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_LAST_PURGED: &str = "last_purged";

/// Most entries one `limited_get_log_entries` call returns, so that one
/// replication message stays bounded however far a follower lags.
const MAX_ENTRIES_PER_READ: usize = 512;

/// Appends of at most this many entries are encoded on the calling thread,
/// and written there too if they come to at most [`INLINE_WRITE_BYTES`].
const INLINE_WRITE_ENTRIES: usize = 64;
/// Largest encoded append written on the calling thread.
const INLINE_WRITE_BYTES: usize = 256 * 1024;
/// Reads of a bounded range of at most this many entries run on the
/// calling thread: replication and apply read the entries just appended,
/// which sled holds in memory.
const INLINE_READ_ENTRIES: u64 = 64;

/// The Raft log store of one node. openraft serialises calls to it (every
/// method takes `&mut self` and completes its write before returning).
///
/// Appends are acknowledged by a group commit: `append` writes the entries
/// (readable at once) and hands the acknowledgement to the flusher thread,
/// which makes everything written so far durable with one flush + fsync and
/// then acknowledges every append it covered, in order. openraft 0.9.25's
/// core does wait for that acknowledgement (`append_to_log` awaits it)
/// before it runs its next command, replication to the followers included,
/// so a leader's fsync and its followers' are in series
/// (docs/BENCHMARKS.md); the flusher keeps the wait off the runtime's
/// threads, and the proposer's batching is what shares one fsync among
/// many writes.
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
    fn drop(&mut self) {
        self.flusher = None;
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
    }
}

/// An append's acknowledgement, waiting for its fsync.
type Ack = Box<dyn FnOnce(io::Result<()>) + Send>;

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
        // acknowledgement was queued, so this flush covers them all.
        let result = db.durable_flush();
        for ack in group.drain(..) {
            ack(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            });
        }
    }
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

    /// How many fsyncs of the database have completed since it was opened.
    /// Shared with the state machine (one database per node).
    pub fn fsync_count(&self) -> u64 {
        self.db.fsync_count()
    }

    /// Writes `entries` as one batch, makes them durable, then calls `done`
    /// (never before the fsync has completed). Returns once the entries are
    /// readable.
    async fn append_then<F>(&mut self, entries: Vec<Entry>, done: F) -> Result<(), StorageError>
    where
        F: FnOnce(io::Result<()>) + Send + 'static,
    {
        let written = if entries.len() <= INLINE_WRITE_ENTRIES {
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
        written.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // Written and readable; durability is reported through `done` by
        // the flusher, after the fsync that covers these entries.
        let ack: Ack = Box::new(done);
        let unsent = match &self.flusher {
            Some(tx) => tx.send(ack).err().map(|e| e.0),
            None => Some(ack),
        };
        if let Some(ack) = unsent {
            ack(Err(io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }
}

/// An entry's key and stored bytes.
type Encoded = ([u8; 8], Vec<u8>);

/// Each entry's key and stored bytes.
fn encode_entries(entries: &[Entry]) -> Result<Vec<Encoded>, StoreError> {
    entries
        .iter()
        .map(|e| Ok((db::index_key(e.log_id.index), entry_format::encode(e)?)))
        .collect()
}

/// Appends of at most this many entries go without a sled batch when they
/// can (see [`write_encoded`]): a single write's path (one client, a quiet
/// cluster) is where the two extra io-buffer writes of a batch show.
/// Larger appends (a leader's batch under load, a follower catching up)
/// stay in one batch: inserted one by one, the follower that installed a
/// 1M snapshot and caught up ended at 237 MB of RSS against 181 MB.
const UNBATCHED_MAX: usize = 4;

/// Whether small appends may skip the sled batch (`TESSERA_UNBATCHED_APPENDS=0`
/// turns it off for same-binary A/B runs).
fn small_appends_unbatched() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TESSERA_UNBATCHED_APPENDS").map_or(true, |v| v != "0"))
}

/// Writes entries (readable at once, durable at the next flush).
///
/// An append of a few small entries, none of whose indexes holds chunks of
/// an earlier entry (openraft truncates a conflicting suffix before it
/// appends over it), is a few plain inserts in index order: sled logs one
/// thread's inserts in order and recovers a prefix of its log after a
/// crash, so a crash before the flush leaves a prefix of the entries,
/// never a hole, and nothing was acknowledged before the flush. A sled
/// batch rolls sled's io buffer before and after its manifest, so each
/// flush wrote three buffers, each followed by its own `sync_file_range`
/// wait (`strace`, docs/BENCHMARKS.md "Where one revocation's time goes").
/// Anything else goes in one batch, large entries in chunks (sled would
/// put them in an unsynced blob file).
fn write_encoded(db: &Db, entries: &[Encoded]) -> Result<(), StoreError> {
    db.check_write()?;
    let mut stale = Vec::with_capacity(entries.len());
    for (key, _) in entries {
        stale.push(chunk::stored_chunks(&db.log, key)?);
    }
    let plain = small_appends_unbatched()
        && entries.len() <= UNBATCHED_MAX
        && entries
            .iter()
            .all(|(_, v)| chunk::chunk_count(v.len()) == 0)
        && stale.iter().all(|s| *s == 0);
    if plain {
        for (key, value) in entries {
            db.log.insert(key, value.as_slice())?;
        }
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for ((key, value), stale) in entries.iter().zip(stale) {
        chunk::put(&mut batch, key, value, stale);
    }
    db.log.apply_batch(batch)?;
    Ok(())
}

/// Whether `key` of the log tree is an entry's own key (not a chunk's).
fn is_entry_key(key: &[u8]) -> bool {
    key.len() == 8
}

/// Decodes the entry stored under `key` (reassembling its chunks).
fn decode_entry(db: &Db, key: &[u8], stored: sled::IVec) -> Result<Entry, StoreError> {
    let bytes = chunk::assemble(&db.log, db::T_LOG, key, stored)?;
    entry_format::decode(&bytes)
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

pub(crate) fn read_entries(
    db: &Db,
    lo: u64,
    hi: Option<u64>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let start = db::index_key(lo);
    let iter = match hi {
        Some(hi) => db.log.range(start..db::index_key(hi)),
        None => db.log.range(start..),
    };
    let mut out = Vec::new();
    for kv in iter {
        if out.len() >= limit {
            break;
        }
        let (k, v) = kv?;
        if is_entry_key(&k) {
            out.push(decode_entry(db, &k, v)?);
        }
    }
    Ok(out)
}

async fn get_entries<RB: RangeBounds<u64>>(
    db: &Arc<Db>,
    range: RB,
    limit: usize,
) -> Result<Vec<Entry>, StorageError> {
    let Some((lo, hi)) = index_bounds(&range) else {
        return Ok(Vec::new());
    };
    let read = if hi.is_some_and(|hi| hi - lo <= INLINE_READ_ENTRIES) {
        read_entries(db, lo, hi, limit)
    } else {
        let db = db.clone();
        blocking(move || read_entries(&db, lo, hi, limit)).await
    };
    read.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

fn log_state(db: &Db) -> Result<LogState<TypeConfig>, StoreError> {
    let last_purged: Option<LogId> = db::get(&db.log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    // The last entry's own key: chunk keys sort after it.
    let mut last = last_purged;
    for kv in db.log.iter().rev() {
        let (k, v) = kv?;
        if is_entry_key(&k) {
            last = Some(decode_entry(db, &k, v)?.log_id);
            break;
        }
    }
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    })
}

/// The committed log id last saved (see `save_committed`). Blocking.
pub(crate) fn saved_committed(db: &Db) -> Result<Option<LogId>, StoreError> {
    Ok(db::get::<Option<LogId>>(&db.log_meta, db::T_LOG_META, K_COMMITTED)?.flatten())
}

/// Removes entries at and after `index`. Blocking.
fn truncate_from(db: &Db, index: u64) -> Result<(), StoreError> {
    db.check_write()?;
    let mut batch = sled::Batch::default();
    for kv in db.log.range(db::index_key(index)..) {
        let (k, _) = kv?;
        batch.remove(k);
    }
    db.log.apply_batch(batch)?;
    db.durable_flush()
}

/// Keys removed per sled batch when purging the log.
const PURGE_BATCH: usize = 256;

/// Removes entries up to and including `upto`. The last purged log id is
/// recorded (and made durable) first, so that a crash part-way leaves
/// entries at or below it, which nothing reads and the next purge removes,
/// and never a hole above it. The entries then go in batches of
/// [`PURGE_BATCH`] keys: one sled transaction over thousands of entries
/// (the previous way) read every value into its write set, tens of
/// megabytes at a time that the allocator then kept. Blocking.
pub(crate) fn purge_upto(db: &Db, upto: LogId) -> Result<(), StoreError> {
    db.check_write()?;
    let prev: Option<LogId> = db::get(&db.log_meta, db::T_LOG_META, K_LAST_PURGED)?;
    if prev.is_some_and(|p| p >= upto) {
        return Ok(());
    }
    db.log_meta
        .insert(K_LAST_PURGED, db::encode(&Some(upto))?)?;
    db.durable_flush()?;
    // Up to and including the chunks of the entry at `upto`.
    let end = chunk::chunk_key(&db::index_key(upto.index), u32::MAX);
    loop {
        let mut removes = sled::Batch::default();
        let mut n = 0;
        for kv in db.log.range(..=&end[..]).take(PURGE_BATCH) {
            let (k, _) = kv?;
            removes.remove(k);
            n += 1;
        }
        if n == 0 {
            break;
        }
        db.log.apply_batch(removes)?;
    }
    db.durable_flush()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, range, usize::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, start..end, MAX_ENTRIES_PER_READ).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, range, usize::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        get_entries(&self.db, start..end, MAX_ENTRIES_PER_READ).await
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

    // Not fsynced: a committed id lost in a crash is only learnt again from
    // the leader; what is persisted (by a later fsync) lets a restarted node
    // re-apply its committed entries without waiting for one.
    // One small insert, so on the calling thread (see the module docs).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = &self.db;
        let saved: Result<(), StoreError> = (|| {
            db.check_write()?;
            db.log_meta.insert(K_COMMITTED, db::encode(&committed)?)?;
            Ok(())
        })();
        saved.map_err(|e| StorageIOError::write(AnyError::new(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            Ok(db::get::<Option<LogId>>(&db.log_meta, db::T_LOG_META, K_COMMITTED)?.flatten())
        })
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
mod tests {

    use openraft::storage::RaftLogReaderExt;
    use openraft::testing::{blank_ent, log_id};

    use super::*;

    fn open(dir: &std::path::Path) -> LogStore {
        LogStore::new(Arc::new(Db::open(dir).unwrap()))
    }

    #[test]
    fn index_bounds_cover_every_bound_kind() {
        assert_eq!(index_bounds(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_bounds(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_bounds(&(3..3)), None);
        assert_eq!(
            index_bounds(&(Bound::Included(5), Bound::Excluded(3))),
            None
        );
        assert_eq!(index_bounds(&(..)), Some((0, None)));
        assert_eq!(index_bounds(&(0..=u64::MAX)), Some((0, None)));
        assert_eq!(
            index_bounds(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
        assert_eq!(
            index_bounds(&(Bound::Excluded(2), Bound::Included(2))),
            None
        );
    }

    // The acknowledgement of an append must never precede the fsync that
    // makes it durable: the callback records how many fsyncs had completed
    // when it ran, and a whole batch costs exactly one.
    #[tokio::test]
    async fn append_acknowledges_only_after_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let before = store.fsync_count();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let db = store.db.clone();
        let entries: Vec<Entry> = (1..=5).map(|i| blank_ent(1, 1, i)).collect();
        store
            .append_then(entries, move |r| {
                // The fsync count as the acknowledgement runs.
                let _ = tx.send(r.map(|_| db.fsync_count()));
            })
            .await
            .unwrap();
        let at_ack = rx.await.expect("callback ran").unwrap();
        assert_eq!(at_ack, before + 1, "acknowledged after exactly one fsync");
        assert_eq!(store.fsync_count(), before + 1);
        // Readable once append returned.
        let got = store.try_get_log_entries(1..=5).await.unwrap();
        assert_eq!(got.len(), 5);
    }

    #[tokio::test]
    async fn vote_and_truncate_and_purge_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let n = store.fsync_count();
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        assert_eq!(store.fsync_count(), n + 1);
        let entries: Vec<Entry> = (1..=4).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        store.truncate(log_id(1, 1, 4)).await.unwrap();
        store.purge(log_id(1, 1, 1)).await.unwrap();
        // A purge fsyncs its mark, then the removals.
        assert_eq!(store.fsync_count(), n + 5);
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 1)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 3)));
        // Purging backwards is a no-op.
        store.purge(log_id(0, 1, 0)).await.unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 1)));
    }

    #[tokio::test]
    async fn purging_thousands_of_entries_goes_in_bounded_batches_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let n = 3 * PURGE_BATCH as u64 + 7;
        let entries: Vec<Entry> = (1..=n).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        let upto = 2 * PURGE_BATCH as u64 + 3;
        store.purge(log_id(1, 1, upto)).await.unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, upto)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, n)));
        let got = store.try_get_log_entries(..).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, (upto + 1..=n).collect::<Vec<_>>());
    }

    // A crash between the purge mark and the removals leaves entries at or
    // below the mark: nothing reads them and the next purge removes them.
    #[tokio::test]
    async fn a_purge_cut_short_after_its_mark_leaves_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let entries: Vec<Entry> = (1..=6).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        // What a purge up to 3 leaves if it stops right after its mark.
        store
            .db
            .log_meta
            .insert(K_LAST_PURGED, db::encode(&Some(log_id(1, 1, 3))).unwrap())
            .unwrap();
        drop(store);
        let mut store = open(dir.path());
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 6)));
        let got = store.try_get_log_entries(4..).await.unwrap();
        assert_eq!(got.len(), 3);
        store.purge(log_id(1, 1, 4)).await.unwrap();
        let got = store.try_get_log_entries(..).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, [5, 6]);
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    // Small appends are plain sled inserts, not a batch (`write_encoded`):
    // that is safe only if whatever part of sled's log survives a crash
    // holds a prefix of the entries. A crash image is taken while the store
    // is open (as a power loss leaves it, no clean close), then its `db`
    // file is cut short, or has a page zeroed, at points across the region
    // the small appends wrote: every reopen must find entries 1..=k, never
    // a hole, and keep what was durable before that region.
    #[tokio::test]
    async fn a_log_torn_inside_its_small_appends_recovers_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let mut store = open(&live);
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .append_then((1..=8).map(|i| blank_ent(1, 1, i)).collect(), move |r| {
                let _ = tx.send(r);
            })
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        let db_file = live.join("db");
        let before = std::fs::metadata(&db_file).unwrap().len();
        let mut next = 9;
        for round in 0..12u64 {
            let n = 1 + round % UNBATCHED_MAX as u64;
            let entries: Vec<Entry> = (next..next + n).map(|i| blank_ent(1, 1, i)).collect();
            next += n;
            let (tx, rx) = tokio::sync::oneshot::channel();
            store
                .append_then(entries, move |r| {
                    let _ = tx.send(r);
                })
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
        }
        let last = next - 1;
        let image = dir.path().join("image");
        copy_dir(&live, &image);
        drop(store);
        let after = std::fs::metadata(image.join("db")).unwrap().len();
        assert!(after > before, "the small appends grew the file");
        {
            let whole = dir.path().join("whole");
            copy_dir(&image, &whole);
            let store = open(&whole);
            let got = read_entries(&store.db, 0, None, usize::MAX).unwrap();
            assert_eq!(
                got.len() as u64,
                last,
                "every flushed entry is in the image"
            );
        }
        let step = ((after - before) / 300).max(1);
        let mut cuts = 0;
        for cut in (before..=after).step_by(step as usize) {
            for zero_a_page in [false, true] {
                let trial = dir.path().join(format!("t{cut}-{zero_a_page}"));
                copy_dir(&image, &trial);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(trial.join("db"))
                    .unwrap();
                if zero_a_page {
                    use std::os::unix::fs::FileExt as _;
                    f.write_all_at(&[0u8; 4096], cut).unwrap();
                } else {
                    f.set_len(cut).unwrap();
                }
                drop(f);
                let store = open(&trial);
                let got = read_entries(&store.db, 0, None, usize::MAX).unwrap();
                let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
                let k = idx.len() as u64;
                assert_eq!(
                    idx,
                    (1..=k).collect::<Vec<_>>(),
                    "cut at {cut} (zeroed page: {zero_a_page}): not a prefix"
                );
                assert!(
                    (8..=last).contains(&k),
                    "cut at {cut} (zeroed page: {zero_a_page}): {k} entries"
                );
                drop(store);
                std::fs::remove_dir_all(&trial).unwrap();
                cuts += 1;
            }
        }
        assert!(cuts >= 300);
    }

    #[tokio::test]
    async fn limited_reads_are_bounded_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let n = MAX_ENTRIES_PER_READ as u64 + 10;
        let entries: Vec<Entry> = (1..=n).map(|i| blank_ent(1, 1, i)).collect();
        store.append_then(entries, |r| r.unwrap()).await.unwrap();
        let mut reader = store.get_log_reader().await;
        let got = reader.limited_get_log_entries(1, n + 1).await.unwrap();
        assert_eq!(got.len(), MAX_ENTRIES_PER_READ);
        assert_eq!(got[0].log_id.index, 1);
        let got = reader.limited_get_log_entries(n, n + 1).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            reader.try_get_log_entries(..).await.unwrap().len(),
            n as usize
        );
        assert_eq!(reader.get_log_id(n).await.unwrap(), log_id(1, 1, n));
    }

    #[test]
    fn incarnation_is_stable_across_reopen_and_fresh_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).incarnation();
        assert_ne!(first, 0);
        assert_eq!(open(dir.path()).incarnation(), first);
        let other = tempfile::tempdir().unwrap();
        let second = open(other.path()).incarnation();
        assert_ne!(second, 0);
        assert_ne!(second, first);
        // Wiping the data means a new incarnation.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let third = open(dir.path()).incarnation();
        assert_ne!(third, 0);
        assert_ne!(third, first);
    }

    // A node upgraded in place finds its log in JSON (the format before
    // `entry_format`): it must read those entries, including a chunked one,
    // next to the ones it appends afterwards.
    #[tokio::test]
    async fn log_written_as_json_before_the_upgrade_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = Entry {
            log_id: log_id(1, 1, 2),
            payload: openraft::EntryPayload::Normal(crate::raft::Command {
                at: 5,
                op: crate::raft::Op::RevokeJtis {
                    jtis: (0..400)
                        .map(|i| crate::raft::RevokedJti {
                            jti: format!("old-jti-{i:014}"),
                            until: 9,
                        })
                        .collect(),
                },
            }),
        };
        {
            let db = Db::open(dir.path()).unwrap();
            let mut batch = sled::Batch::default();
            for e in [blank_ent(1, 1, 1), big.clone()] {
                let json = serde_json::to_vec(&e).unwrap();
                chunk::put(&mut batch, &db::index_key(e.log_id.index), &json, 0);
            }
            db.log.apply_batch(batch).unwrap();
            assert!(chunk::stored_chunks(&db.log, &db::index_key(2)).unwrap() > 0);
            db.durable_flush().unwrap();
        }
        let mut store = open(dir.path());
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 2)));
        store
            .append_then(vec![blank_ent(1, 1, 3)], |r| r.unwrap())
            .await
            .unwrap();
        let got = store.try_get_log_entries(1..=3).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, [1, 2, 3]);
        assert_eq!(
            serde_json::to_value(&got[1]).unwrap(),
            serde_json::to_value(&big).unwrap()
        );
    }

    fn big_entry(index: u64, n: usize) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: openraft::EntryPayload::Normal(crate::raft::Command {
                at: 5,
                op: crate::raft::Op::RevokeJtis {
                    jtis: (0..n)
                        .map(|i| crate::raft::RevokedJti {
                            jti: format!("jti-{index}-{i:014}"),
                            until: 9,
                        })
                        .collect(),
                },
            }),
        }
    }

    // A chunked entry next to small ones reads back whole, before and
    // after a reopen.
    #[tokio::test]
    async fn a_chunked_entry_appended_next_to_small_ones_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let big = big_entry(2, 400);
        {
            let mut store = open(dir.path());
            let entries = vec![blank_ent(1, 1, 1), big.clone(), blank_ent(1, 1, 3)];
            store.append_then(entries, |r| r.unwrap()).await.unwrap();
            assert!(chunk::stored_chunks(&store.db.log, &db::index_key(2)).unwrap() > 1);
            let got = store.try_get_log_entries(2..=2).await.unwrap();
            assert_eq!(got, vec![big.clone()]);
        }
        let mut store = open(dir.path());
        let got = store.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], big);
    }

    // An index that still holds the chunks of an earlier, larger entry is
    // rewritten in one sled batch that clears them.
    #[tokio::test]
    async fn appending_over_a_chunked_entry_clears_its_stale_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store
            .append_then(vec![blank_ent(1, 1, 1), big_entry(2, 400)], |r| r.unwrap())
            .await
            .unwrap();
        let key = db::index_key(2);
        assert!(chunk::stored_chunks(&store.db.log, &key).unwrap() > 0);
        store
            .append_then(vec![blank_ent(2, 1, 2)], |r| r.unwrap())
            .await
            .unwrap();
        assert_eq!(chunk::stored_chunks(&store.db.log, &key).unwrap(), 0);
        let got = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(got, vec![blank_ent(1, 1, 1), blank_ent(2, 1, 2)]);
    }

    #[tokio::test]
    async fn reopen_keeps_log_vote_committed_and_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            let entries: Vec<Entry> = (1..=6).map(|i| blank_ent(2, 1, i)).collect();
            store.append_then(entries, |r| r.unwrap()).await.unwrap();
            store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
            store.save_committed(Some(log_id(2, 1, 5))).await.unwrap();
            store.purge(log_id(2, 1, 2)).await.unwrap();
        }
        let mut store = open(dir.path());
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 5)));
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(2, 1, 2)));
        assert_eq!(st.last_log_id, Some(log_id(2, 1, 6)));
        let got = store.try_get_log_entries(..).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, [3, 4, 5, 6]);
    }
}
