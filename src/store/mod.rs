//! The Raft storage of one node: the log and vote ([`LogStore`]), the
//! replicated state machine ([`StateMachine`]) and a read handle on its
//! applied state for the services ([`StateView`]).
//!
//! # On disk
//!
//! The log's entries in segment files under `raftlog/` ([`seglog`]); a
//! small sled database with the log's meta (vote, committed, last purged,
//! and the data's incarnation: a random number drawn when the database is
//! created, see [`LogStore::incarnation`]) and a pointer to the current
//! snapshot, whose bytes are a file in `snapshots/` ([`snapfile`]). sled
//! 0.34 writes values above ~128 KiB to blob files it never fsyncs, so
//! nothing large is stored in it (older versions stored large values in
//! chunks, which are still read, see [`chunk`]). The applied state is not
//! in sled: it is the snapshot plus the log after it (older nodes mirrored
//! it in per-revocation trees, and kept the log in a sled tree; both are
//! migrated once at open, see [`sm`] and [`log`]).
//!
//! # Durability
//!
//! Every write Raft must find after a crash is on disk before it is
//! acknowledged: appended entries by an fdatasync of their segment file,
//! truncation by one of the cut file, the vote, the purge point and a
//! snapshot's pointer by a sled flush *and* an fsync of sled's data file
//! (sled 0.34's `flush()` alone does not reach the disk); a snapshot file is
//! fsynced, renamed and its directory fsynced before the pointer names it.
//! Applying entries writes nothing: at open the state is decoded from the
//! snapshot and the log after it is re-applied up to the saved committed
//! id (the log is never purged beyond the durable snapshot). The restart cost is bounded by the snapshot policy
//! (`snapshot_every` entries at most after the snapshot).
//!
//! Most sled and file work runs on tokio's blocking pool; small log
//! appends and reads run inline (see [`log`]).

pub mod backup;
mod chunk;
mod db;
mod entry_format;
mod faults;
mod feed;
mod log;
mod seglog;
mod sm;
mod snapfile;
mod state;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::faults::{StoreFaults, INJECTED_ENOSPC};
pub use self::feed::{
    FeedEvent, FeedItem, FeedSizes, LeftWindow, Revocation, RevocationEvent, Watch, WatchStart,
    DEFAULT_WINDOW, LIVE_BUFFER,
};
pub use self::log::{LogReader, LogStore};
pub use self::sm::{ApplyCounters, SnapshotBuilder, StateMachine};
pub use self::view::StateView;

/// Errors opening or operating the store. Inside openraft's traits they are
/// reported as `openraft::StorageError`, which stops the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled could not open the database.
    #[error("cannot open the database at {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// sled's reason.
        source: sled::Error,
    },
    /// A backup file is damaged, or does not fit where it is restored.
    #[error("backup: {0}")]
    Backup(String),
    /// A file-system operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A sled read or write failed.
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// A value could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in tree {tree}: {reason}")]
    Corrupt {
        /// The tree holding the record.
        tree: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Snapshot data is unreadable or does not match its meta.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
    /// A log entry could not be encoded (a bug: entries are plain data).
    #[error("cannot encode a log entry: {0}")]
    EncodeEntry(#[source] crate::raft::CodecError),
}

/// Opens (or creates) the node's database in the directory `path` and loads
/// the state machine from it. Blocking: call it at start-up or from
/// `spawn_blocking`.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine, StateView), StoreError> {
    open_with(path, FeedSizes::default(), StoreFaults::default())
}

/// [`open`] with the sizes of the revocation feed: the recent events kept
/// for watchers that resume (the retained window) and how far a watcher may
/// fall behind; and `faults`, switches that inject write errors in tests
/// (`StoreFaults::default()` never fails).
pub fn open_with(
    path: &Path,
    feed: FeedSizes,
    faults: StoreFaults,
) -> Result<(LogStore, StateMachine, StateView), StoreError> {
    let db = Arc::new(db::Db::open_with(path, faults)?);
    let (mut sm, view) = StateMachine::load(db.clone(), feed)?;
    let replayed = sm.replay_committed()?;
    tracing::info!(
        path = %path.display(),
        replayed,
        applied = view.revision(),
        "store opened"
    );
    Ok((LogStore::new(db), sm, view))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
