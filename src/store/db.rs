//! The sled database shared by the log store and the state machine: tree
//! names, key encoding, the JSON codec and the one place where writes are
//! made durable ([`Db::durable_flush`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{StoreError, StoreFaults};

/// Where earlier versions kept the Raft log's entries, keyed by big-endian
/// log index (moved into [`super::seglog`] files when the store opens).
pub(crate) const T_LOG: &str = "log";
/// Vote, committed log id and last purged log id.
pub(crate) const T_LOG_META: &str = "log_meta";
/// Revoked jtis: jti -> until.
pub(crate) const T_SM_JTIS: &str = "sm_jtis";
/// Subject cut-offs: subject -> cut-off.
pub(crate) const T_SM_SUBJECTS: &str = "sm_subjects";
/// Client cut-offs: client -> cut-off.
pub(crate) const T_SM_CLIENTS: &str = "sm_clients";
/// Signing keys: kid -> key record.
pub(crate) const T_SM_KEYS: &str = "sm_keys";
/// The current policy document.
pub(crate) const T_SM_POLICY: &str = "sm_policy";
/// Last applied log id, last membership, key ring version.
pub(crate) const T_SM_META: &str = "sm_meta";
/// The current snapshot: its meta and the name of its file.
pub(crate) const T_SNAPSHOT: &str = "snapshot";
/// Key of the node's data incarnation in [`T_LOG_META`].
pub(crate) const K_INCARNATION: &str = "incarnation";

/// One node's sled database and its trees.
pub(crate) struct Db {
    db: sled::Db,
    /// sled's data file: the file `durable_flush` fsyncs.
    data_file: PathBuf,
    /// An open handle on it, so an fsync costs no `open`.
    data: File,
    /// The data directory.
    dir: PathBuf,
    /// The Raft log's entries.
    pub(crate) raftlog: super::seglog::SegLog,
    pub(crate) log_meta: sled::Tree,
    pub(crate) sm_jtis: sled::Tree,
    pub(crate) sm_subjects: sled::Tree,
    pub(crate) sm_clients: sled::Tree,
    pub(crate) sm_keys: sled::Tree,
    pub(crate) sm_policy: sled::Tree,
    pub(crate) sm_meta: sled::Tree,
    pub(crate) snapshot: sled::Tree,
    /// Serialises read-compare-write of the snapshot tree: a snapshot build
    /// runs concurrently with apply and install, and must never replace a
    /// newer stored snapshot with an older one.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Where snapshot files live.
    pub(crate) snaps: super::snapfile::SnapDir,
    /// The random, non-zero number drawn when this database was created.
    pub(crate) incarnation: u64,
    /// Completed fsyncs, so tests can show an acknowledgement follows one.
    fsyncs: AtomicU64,
    /// Injected write errors (tests only ever switch them on).
    faults: StoreFaults,
    /// Dropped last (fields drop in order), after every sled handle: its
    /// receivers learn that the database, and its file lock, are released.
    closed: tokio::sync::watch::Sender<()>,
}

/// sled's page cache. Its default (1 GiB) let a node's resident memory grow
/// with the log it had written; sled now holds only the log, Raft's meta and
/// the snapshot pointer (the applied state lives in memory and in the
/// snapshot file), and the log is read back mostly right after it is
/// written, for replication.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Db {
    /// Opens (or creates) the database in `dir`. Blocking.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreFaults::default())
    }

    /// [`Db::open`] with injectable write errors. Blocking.
    pub(crate) fn open_with(dir: &Path, faults: StoreFaults) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(StoreError::from);
        let log_meta = tree(T_LOG_META)?;
        let raftlog = super::log::open_segments(dir, &tree(T_LOG)?, &log_meta)?;
        let mut this = Db {
            data: File::open(dir.join("db")).map_err(|source| StoreError::Io {
                path: dir.join("db"),
                source,
            })?,
            data_file: dir.join("db"),
            dir: dir.to_path_buf(),
            raftlog,
            log_meta,
            sm_jtis: tree(T_SM_JTIS)?,
            sm_subjects: tree(T_SM_SUBJECTS)?,
            sm_clients: tree(T_SM_CLIENTS)?,
            sm_keys: tree(T_SM_KEYS)?,
            sm_policy: tree(T_SM_POLICY)?,
            sm_meta: tree(T_SM_META)?,
            snapshot: tree(T_SNAPSHOT)?,
            snapshot_lock: Mutex::new(()),
            snaps: super::snapfile::SnapDir::open(dir)?,
            incarnation: 0,
            fsyncs: AtomicU64::new(0),
            faults,
            closed: tokio::sync::watch::Sender::new(()),
            db,
        };
        this.incarnation = load_or_draw_incarnation(&this.log_meta)?;
        // sled writes its `conf` file (segment size, format) when it creates
        // the database and never syncs it; without it sled refuses to open.
        // The durability audit (scripts/durability-audit.sh) found it.
        let conf = dir.join("conf");
        File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(|source| StoreError::Io { path: conf, source })?;
        // A freshly created data file is only durable once its directory
        // entry is: fsync the directory once, now that sled has created it.
        this.durable_flush()?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        // The directory itself may just have been created. Best effort: the
        // parent may not be ours to open.
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
            tracing::warn!(path = %parent.display(), error = %e, "cannot fsync the data directory's parent");
        }
        Ok(this)
    }

    /// A receiver whose `changed()` fails once this database is closed.
    pub(crate) fn closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.closed.subscribe()
    }

    /// Makes every write issued so far durable. Blocking.
    ///
    /// sled 0.34's `flush()` ends in `sync_file_range`, which writes the
    /// pages but neither the file's metadata nor the disk cache: it is not a
    /// durability guarantee. An fsync of sled's data file through any file
    /// descriptor syncs the inode, so it completes the flush.
    pub(crate) fn durable_flush(&self) -> Result<(), StoreError> {
        self.check_write()?;
        self.db.flush()?;
        // fdatasync: the data and what is needed to read it back (the size).
        self.data.sync_data().map_err(|source| StoreError::Io {
            path: self.data_file.clone(),
            source,
        })?;
        self.fsyncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Fails with the injected error while [`StoreFaults::fail_writes`] is
    /// on; called before every write.
    pub(crate) fn check_write(&self) -> Result<(), StoreError> {
        self.faults.check_write().map_err(|source| StoreError::Io {
            path: self.data_file.clone(),
            source,
        })
    }

    /// The file a snapshot being received is written to: `file`, or while
    /// [`StoreFaults::fail_writes`] is on, `/dev/full`, where every write
    /// fails as on a full disk (openraft writes the chunks, out of the
    /// reach of [`check_write`](Self::check_write)).
    pub(crate) fn receiving_file(&self, file: std::fs::File) -> Result<std::fs::File, StoreError> {
        if !self.faults.writes_fail() {
            return Ok(file);
        }
        let full = Path::new("/dev/full");
        std::fs::OpenOptions::new()
            .write(true)
            .open(full)
            .map_err(|source| StoreError::Io {
                path: full.to_path_buf(),
                source,
            })
    }

    /// The names of every tree, sled's default tree included (tests).
    #[cfg(test)]
    pub(crate) fn db_tree_names(&self) -> Vec<sled::IVec> {
        self.db.tree_names()
    }

    /// The tree called `name` (tests).
    #[cfg(test)]
    pub(crate) fn tree(&self, name: &[u8]) -> sled::Tree {
        self.db.open_tree(name).expect("open tree")
    }

    /// How many fsyncs (of sled's data file or of the log's segments) have
    /// completed since open.
    pub(crate) fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }

    /// Counts an fsync of the log's segments.
    pub(crate) fn note_fsync(&self) {
        self.fsyncs.fetch_add(1, Ordering::SeqCst);
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the incarnation from `log_meta`, or draws and stores one if this
/// database has none yet (it was just created). Made durable by the flush
/// that ends [`Db::open`].
fn load_or_draw_incarnation(log_meta: &sled::Tree) -> Result<u64, StoreError> {
    if let Some(n) = get::<u64>(log_meta, T_LOG_META, K_INCARNATION)? {
        if n != 0 {
            return Ok(n);
        }
    }
    let n = random_nonzero_u64()?;
    // Compare-and-swap: two opens cannot race (sled locks the directory),
    // but it costs nothing to never replace an incarnation once written.
    match log_meta.compare_and_swap(K_INCARNATION, None::<&[u8]>, Some(encode(&n)?))? {
        Ok(()) => Ok(n),
        Err(_) => get::<u64>(log_meta, T_LOG_META, K_INCARNATION)?
            .filter(|n| *n != 0)
            .ok_or_else(|| StoreError::Corrupt {
                tree: T_LOG_META,
                reason: "the incarnation is zero".into(),
            }),
    }
}

/// A random non-zero u64 from the operating system's generator: zero means
/// "unknown" in membership records.
fn random_nonzero_u64() -> Result<u64, StoreError> {
    loop {
        let mut buf = [0u8; 8];
        aws_lc_rs::rand::fill(&mut buf)
            .map_err(|_| StoreError::Task("the system random generator failed".into()))?;
        let n = u64::from_le_bytes(buf);
        if n != 0 {
            return Ok(n);
        }
    }
}

/// The key of the log entry at `index`.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Encodes a value for storage.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

/// Decodes a value read from `tree`.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

/// Reads and decodes `key` of `tree`.
pub(crate) fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(bytes) => decode(name, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Runs blocking sled or file work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
