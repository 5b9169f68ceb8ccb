//! Snapshot files: where a snapshot's bytes live, and the one way they
//! become durable.
//!
//! A snapshot is streamed to (or received into) a temporary file in the
//! `snapshots` directory next to sled's files, never held whole in memory.
//! Before sled's pointer to it is written, the file is fsynced, renamed to
//! its final name and the directory fsynced (the durability audit,
//! `scripts/durability-audit.sh`, checks exactly this), so a pointer that
//! survived a crash always names a whole file. The previous file is removed
//! only after the pointer has moved; files no pointer names (an interrupted
//! build or transfer) are removed when the store opens.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// The directory, under the store's directory.
pub(crate) const DIR: &str = "snapshots";
const TMP_PREFIX: &str = "tmp-";
const SUFFIX: &str = ".snap";

/// The snapshot directory of one store.
pub(crate) struct SnapDir {
    dir: PathBuf,
    /// Makes temporary names unique within this process.
    seq: AtomicU64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory, so that entries created, renamed or removed in it
/// are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl SnapDir {
    /// Creates the directory under `store_dir` if needed (and makes its
    /// entry durable). Blocking.
    pub(crate) fn open(store_dir: &Path) -> Result<Self, StoreError> {
        let dir = store_dir.join(DIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            sync_dir(store_dir)?;
        }
        Ok(SnapDir {
            dir,
            seq: AtomicU64::new(0),
        })
    }

    /// The path of the file named `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a new temporary file, open for reading and writing. `kind`
    /// says what it is for (in its name, for whoever lists the directory).
    pub(crate) fn temp(&self, kind: &str) -> Result<(PathBuf, File), StoreError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{TMP_PREFIX}{kind}-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok((path, file))
    }

    /// The final file name of the snapshot `snapshot_id`. Ids come from the
    /// leader, and two ids must never share a name (an install would
    /// replace the current file before its pointer moved). Our own ids
    /// (`{term}-{index}-{n}`) are used as they are; any other id is
    /// hex-encoded behind `x` (up to 64 bytes) or named by its SHA-256
    /// behind `h`: the three kinds start differently, so they cannot
    /// collide, and no name leaves the directory.
    pub(crate) fn final_name(snapshot_id: &str) -> String {
        let plain = snapshot_id.len() <= 64
            && snapshot_id.starts_with(|c: char| c.is_ascii_digit())
            && snapshot_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        if plain {
            format!("{snapshot_id}{SUFFIX}")
        } else if snapshot_id.len() <= 64 {
            format!("x{}{SUFFIX}", hex(snapshot_id.as_bytes()))
        } else {
            let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, snapshot_id.as_bytes());
            format!("h{}{SUFFIX}", hex(sum.as_ref()))
        }
    }

    /// Makes the temporary file `tmp` durable under `name`: fsync the file,
    /// rename it, fsync the directory. Blocking.
    pub(crate) fn commit(
        &self,
        tmp: &Path,
        file: &File,
        name: &str,
    ) -> Result<PathBuf, StoreError> {
        file.sync_all().map_err(io(tmp))?;
        let path = self.dir.join(name);
        std::fs::rename(tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Removes the file `name`, if it is not `keep`. Best effort: a file
    /// left behind is removed at the next open.
    pub(crate) fn remove(&self, name: &str, keep: &str) {
        if name != keep {
            let path = self.dir.join(name);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
                }
            }
        }
    }

    /// Removes every file but `keep` (at open, when no build or transfer
    /// runs). Best effort.
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if Some(name.as_ref()) != keep {
                self.remove(&name, "");
            }
        }
    }
}

/// Whether two open files are the same file (same device and inode).
pub(crate) fn same_file(a: &File, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_directory() {
        assert_eq!(SnapDir::final_name("3-120-7"), "3-120-7.snap");
        for hostile in ["../../etc/passwd", "a/b", "", ".", "..", "x\0y"] {
            let name = SnapDir::final_name(hostile);
            assert!(!name.contains('/') && !name.contains('\0'), "{name}");
            assert!(name.starts_with('x') && name.ends_with(SUFFIX), "{name}");
        }
        assert!(SnapDir::final_name(&"9".repeat(500)).len() <= 2 * 64 + 6);
    }

    #[test]
    fn two_ids_never_share_a_name() {
        // A plain id that spells another's encoding, and long ids that
        // share their first 64 bytes, once mapped to one file (found by
        // review).
        let long = "9".repeat(64);
        let ids = [
            "..".to_string(),
            "x2e2e".to_string(),
            "3-120-7".to_string(),
            format!("{long}a"),
            format!("{long}b"),
            long.clone(),
            format!("x{long}"),
        ];
        let names: std::collections::BTreeSet<String> =
            ids.iter().map(|i| SnapDir::final_name(i)).collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
    }

    #[test]
    fn commit_renames_and_open_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapDir::open(dir.path()).unwrap();
        let (tmp, file) = snaps.temp("build").unwrap();
        std::io::Write::write_all(&mut &file, b"hello").unwrap();
        let path = snaps.commit(&tmp, &file, "1-2-3.snap").unwrap();
        assert!(same_file(&file, &path));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        let (_stale, _f) = snaps.temp("recv").unwrap();
        snaps.remove_all_but(Some("1-2-3.snap"));
        let left: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["1-2-3.snap".to_string()]);
    }
}
